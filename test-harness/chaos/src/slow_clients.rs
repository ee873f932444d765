//! Slow and vanished clients: readers that never read, read slowly, or disconnect mid-stream.
//!
//! Targets: a normal reader keeps its speed (median tokens/s of a measured task with
//! [`Profile::stalled_readers`](crate::Profile) stalled readers attached, against the same
//! measurement without them, both with a second task decoding beside it), and the daemon's
//! RSS stays bounded over a soak in which every task gets stalled, slow, vanishing and normal
//! readers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::{median, rss_kib, task, wait_until, Api, Ctx, Outcome};

/// Opens `GET path` with the token on a socket with a tiny receive buffer, sends the request
/// and returns the socket unread.
async fn raw_open(base: &str, path: &str, token: &str) -> std::io::Result<TcpStream> {
    let host = base.trim_start_matches("http://");
    let addr: SocketAddr = host
        .parse()
        .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let mut s = sock.connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    Ok(s)
}

/// Reads 64 bytes every 200 ms until EOF or `stop`.
fn slow_reader(mut s: TcpStream, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let mut total = 0;
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => total += n,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        total
    })
}

/// Reads about `bytes` bytes, then closes abruptly (RST).
async fn vanish(base: String, path: String, token: String, bytes: usize) {
    if let Ok(mut s) = raw_open(&base, &path, &token).await {
        let mut buf = vec![0u8; 1024];
        let mut got = 0;
        while got < bytes {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => got += n,
                _ => break,
            }
        }
        // An abortive close (RST), like a client that vanished.
        use std::os::fd::AsRawFd;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on a socket we own, with a correctly sized `linger`.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        drop(s);
    }
}

/// Whether the other end closed `s` (TCP state CLOSE_WAIT or CLOSE), without reading from it.
fn peer_closed(s: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: a zeroed `tcp_info` is a valid value (plain integers).
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt(TCP_INFO) on a socket we own, into a buffer of `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // TCP_CLOSE = 7, TCP_CLOSE_WAIT = 8 (linux/tcp_states.h).
    rc == 0 && matches!(info.tcpi_state, 7 | 8)
}

/// CPU time a process has used (user + system), in milliseconds.
fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After `(comm) `: field 14 (utime) and 15 (stime) of proc(5) are at 11 and 12.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: plain libc query.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) * 1000.0 / hz
}

/// Samples the daemon's RSS every 250 ms until `stop`.
fn rss_sampler(
    pid: u32,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(f64, u64)>> {
    tokio::spawn(async move {
        let mut v = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib(pid) {
                v.push((t0.elapsed().as_secs_f64(), kib));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        v
    })
}

async fn wait_tokens(api: &Api, id: &str, n: u64) -> bool {
    wait_until(Duration::from_secs(30), || async {
        api.get(&format!("/v1/tasks/{id}"))
            .await
            .is_ok_and(|r| r.json()["tokens_out"].as_u64().unwrap_or(0) >= n)
    })
    .await
}

/// A measured task as its normal reader saw it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Tokens/s at the reader.
    client: f64,
    /// Reader tokens/s ÷ the daemon's own figure for the task (its last `metrics` frame,
    /// timed as the engine's tokens arrived): how well the relay kept up, whatever the engine's
    /// speed on a busy machine.
    relay: f64,
    /// Daemon CPU ms spent while the measured task ran.
    daemon_cpu_ms: f64,
}

/// One measured task (`MEASURED_TOKENS`) read by a normal reader; `stall` stalled readers are
/// attached to it first. Returns the sample and the stalled sockets (held by the caller).
async fn measure(
    o: &mut Outcome,
    api: &Api,
    token: &str,
    id: &str,
    stall: usize,
    daemon_pid: u32,
) -> (Option<Sample>, Vec<TcpStream>) {
    let mut held = Vec::new();
    match api.submit(&task(id, MEASURED_TOKENS, 3)).await {
        Ok(r) if r.status == 202 => {}
        other => {
            o.fail(format!("measured task {id}: {other:?}"));
            return (None, held);
        }
    }
    for _ in 0..stall {
        match raw_open(&api.base, &format!("/v1/tasks/{id}/stream"), token).await {
            Ok(s) => held.push(s),
            Err(e) => o.fail(format!("stalled reader on {id}: {e}")),
        }
    }
    let cpu0 = cpu_ms(daemon_pid);
    let s = api.follow(id, Duration::from_secs(120), None).await;
    let daemon_cpu_ms = cpu_ms(daemon_pid) - cpu0;
    o.check(s.terminal_name() == "end", || {
        format!(
            "measured task {id} with {stall} stalled readers: {}",
            s.summary()
        )
    });
    let daemon = s
        .events
        .iter()
        .rev()
        .find(|e| e.event == "metrics")
        .and_then(|e| e.json()["tokens_per_s"].as_f64())
        .filter(|r| *r > 0.0);
    let sample = s.tokens_per_s().zip(daemon).map(|(client, d)| Sample {
        client,
        relay: client / d,
        daemon_cpu_ms,
    });
    (sample, held)
}

/// Least relay ratio (reader tokens/s ÷ the daemon's tokens/s for the same task), median per
/// phase.
const MIN_RELAY: f64 = 0.85;

/// Pause between starting a measurement's neighbour task and the measured task, in every
/// phase (phase B attaches its readers first, so their buffers fill meanwhile).
const SETTLE: Duration = Duration::from_millis(500);

/// Tokens of each measured task.
const MEASURED_TOKENS: u32 = 1000;

/// The daemon's `write_stall_timeout_s` in this scenario: longer than a measured task, so
/// stalled readers stay attached while they are measured against.
const STALL_S: u64 = 5;

/// Readers that never read and never disconnect, on a long stream: the daemon must close them
/// about `STALL_S` after their buffers fill, while a normal reader of the same stream goes on.
async fn stalled_readers_are_closed(
    o: &mut Outcome,
    api: &Api,
    token: &str,
    daemon_logs: impl Fn() -> String,
) {
    let id = "stall-check";
    let started = api
        .submit(&task(id, 30000, 11))
        .await
        .is_ok_and(|r| r.status == 202)
        && wait_tokens(api, id, 3).await;
    o.check(started, || format!("task {id} did not start"));
    let path = format!("/v1/tasks/{id}/stream");
    let mut held = Vec::new();
    for _ in 0..5 {
        match raw_open(&api.base, &path, token).await {
            Ok(s) => held.push(s),
            Err(e) => o.fail(format!("stalled reader: {e}")),
        }
    }
    // The daemon's writes stall once its buffers for the socket are full (the kernel's send
    // buffer, fixed by the daemon, and hyper's): some hundreds of KiB of events, then
    // `STALL_S`. The readers still never read: the socket's TCP state tells when the daemon
    // closed it.
    // A reset the client's kernel never applied (an RST out of its zero window whose
    // challenge ACK went unanswered) leaves its socket looking open although the daemon is
    // done with it: the daemon's own log line for the reader's address counts as closed too.
    let closed_by_daemon = |s: &TcpStream, logs: &str| {
        s.local_addr().is_ok_and(|a| {
            logs.lines().any(|l| {
                l.contains("closing a connection that accepted no bytes")
                    && l.contains(&format!("\"peer\":\"{a}\""))
            })
        })
    };
    let t0 = Instant::now();
    let limit = Duration::from_secs(STALL_S + 60);
    let mut open: Vec<TcpStream> = held;
    let mut closed = 0;
    let mut closed_after = Vec::new();
    let mut only_logged = 0;
    while !open.is_empty() && t0.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = open.len();
        open.retain(|s| !peer_closed(s));
        for _ in open.len()..before {
            closed += 1;
            closed_after.push(t0.elapsed().as_secs());
        }
        // Give the client's kernel 10 s past the daemon's close before trusting the log.
        if t0.elapsed() > Duration::from_secs(STALL_S + 20) {
            let (before, logs) = (open.len(), daemon_logs());
            open.retain(|s| !closed_by_daemon(s, &logs));
            only_logged += before - open.len();
        }
    }
    closed += only_logged;
    let tokens_before = api
        .get(&format!("/v1/tasks/{id}"))
        .await
        .map(|r| r.json()["tokens_out"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    let still_running = wait_tokens(api, id, tokens_before + 10).await;
    o.fig(
        "readers that never read nor disconnect, on a 30 000-token stream: closed by the daemon (write_stall_timeout_s)",
        format!(
            "{closed} of 5, after {closed_after:?} s (timeout {STALL_S} s after the buffers fill){}; the stream went on for other readers: {still_running}",
            if only_logged > 0 {
                format!(", {only_logged} of them seen only in the daemon's log (the client's socket still looked open)")
            } else {
                String::new()
            }
        ),
    );
    o.check(closed == 5, || {
        format!(
            "{} stalled readers were still connected {} s after they stopped reading",
            5 - closed,
            limit.as_secs()
        )
    });
    o.check(still_running, || {
        format!("task {id} stopped when its stalled readers were closed")
    });
    let _ = api
        .post(&format!("/v1/tasks/{id}/cancel"), &serde_json::json!({}))
        .await;
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("slow and vanished clients");
    let p = &ctx.profile;
    let sut = ctx.start(
        "slow-clients",
        ctx.options(ctx.config(
            &format!("tasks: {{ retain_ms: 5000 }}\nwrite_stall_timeout_s: {STALL_S}\n"),
            &[ctx.pool("tiny", 2, 32768)],
        )),
    );
    let api = sut.api();
    let token = ctx.token.clone();
    let pid = sut.pid();
    let stop_rss = Arc::new(AtomicBool::new(false));
    let t_rss0 = Instant::now();
    let sampler = rss_sampler(pid, t_rss0, stop_rss.clone());

    // Rounds of three measurements, each beside a freshly started decoding neighbour task (a
    // long-running one would slow everything down as its context grows); phases are compared
    // within a round, and the order alternates between rounds:
    // A: nobody else reads; B: the noise stream has stalled readers (they receive until
    // their socket buffers fill, then cost nothing), slow readers and readers vanishing
    // mid-stream; C: the measured stream itself has stalled readers.
    let (mut a_v, mut b_v, mut c_v) = (Vec::new(), Vec::new(), Vec::new());
    let (mut rb, mut rc) = (Vec::new(), Vec::new());
    let mut relay: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    let (mut stalled_b, mut stalled_c, mut slow_bytes, mut vanished) = (0, 0, 0, 0);
    for round in 0..p.speed_samples {
        let mut phases = ['A', 'B', 'C'];
        if round % 2 == 1 {
            phases.reverse();
        }
        let (mut a, mut b, mut c) = (None, None, None);
        for phase in phases {
            let id = format!("{}-{round}", phase.to_ascii_lowercase());
            // A fresh neighbour for every measurement: its context, and so the engine's
            // speed, is the same in every phase.
            let noise = format!("noise-{round}-{}", phase.to_ascii_lowercase());
            let noise_path = format!("/v1/tasks/{noise}/stream");
            let started = api
                .submit(&task(&noise, 30000, 9))
                .await
                .is_ok_and(|r| r.status == 202)
                && wait_tokens(&api, &noise, 3).await;
            o.check(started, || format!("neighbour task {noise} did not start"));
            match phase {
                'A' => {
                    tokio::time::sleep(SETTLE).await;
                    a = measure(&mut o, &api, &token, &id, 0, pid).await.0;
                }
                'B' => {
                    let stop = Arc::new(AtomicBool::new(false));
                    let mut held = Vec::new();
                    for _ in 0..p.stalled_readers {
                        match raw_open(&api.base, &noise_path, &token).await {
                            Ok(s) => held.push(s),
                            Err(e) => o.fail(format!("stalled reader: {e}")),
                        }
                    }
                    stalled_b += held.len();
                    let mut slow = Vec::new();
                    for _ in 0..5 {
                        if let Ok(s) = raw_open(&api.base, &noise_path, &token).await {
                            slow.push(slow_reader(s, stop.clone()));
                        }
                    }
                    let churn = {
                        let (base, t, path, stop) = (
                            api.base.clone(),
                            token.clone(),
                            noise_path.clone(),
                            stop.clone(),
                        );
                        tokio::spawn(async move {
                            let mut n = 0usize;
                            while !stop.load(Ordering::Relaxed) {
                                vanish(base.clone(), path.clone(), t.clone(), 2048).await;
                                n += 1;
                                tokio::time::sleep(Duration::from_millis(100)).await;
                            }
                            n
                        })
                    };
                    // Let the stalled readers' buffers fill.
                    tokio::time::sleep(SETTLE).await;
                    b = measure(&mut o, &api, &token, &id, 0, pid).await.0;
                    stop.store(true, Ordering::Relaxed);
                    vanished += churn.await.unwrap_or(0);
                    for s in slow {
                        slow_bytes += s.await.unwrap_or(0);
                    }
                    drop(held);
                }
                _ => {
                    tokio::time::sleep(SETTLE).await;
                    let (r, held) =
                        measure(&mut o, &api, &token, &id, p.stalled_readers, pid).await;
                    stalled_c += held.len();
                    c = r;
                    drop(held);
                }
            }
            let _ = api
                .post(&format!("/v1/tasks/{noise}/cancel"), &serde_json::json!({}))
                .await;
        }
        if let (Some(a), Some(b), Some(c)) = (a, b, c) {
            a_v.push(a.client);
            b_v.push(b.client);
            c_v.push(c.client);
            rb.push(b.client / a.client);
            rc.push(c.client / a.client);
            relay[0].push(a.relay);
            relay[1].push(b.relay);
            relay[2].push(c.relay);
            cpu[0].push(a.daemon_cpu_ms);
            cpu[1].push(b.daemon_cpu_ms);
            cpu[2].push(c.daemon_cpu_ms);
        }
    }
    let (ratio_b, ratio_c) = (median(&rb), median(&rc));
    let relays = relay.iter().map(|v| median(v)).collect::<Vec<_>>();
    o.fig(
        "normal reader tokens/s per round (A alone / B another stream has stalled+slow+vanishing readers / C its own stream has stalled readers)",
        format!("A {a_v:.0?} / B {b_v:.0?} / C {c_v:.0?}"),
    );
    o.fig(
        "median ratio within rounds: B/A, C/A",
        format!("{ratio_b:.2}, {ratio_c:.2}"),
    );
    o.fig(
        "readers",
        format!(
            "B: {stalled_b} stalled (never read, {} per round) + 5 slow per round (64 B / 200 ms; {slow_bytes} B read) + {vanished} vanished mid-stream (RST); C: {stalled_c} stalled on the measured streams",
            p.stalled_readers
        ),
    );
    o.fig(
        "relay: reader tokens/s ÷ daemon tokens/s for the same task, median (A / B / C)",
        format!("{:.2} / {:.2} / {:.2}", relays[0], relays[1], relays[2]),
    );
    o.fig(
        "daemon CPU ms while a measured task ran, median (A / B / C)",
        format!(
            "{:.0} / {:.0} / {:.0}",
            median(&cpu[0]),
            median(&cpu[1]),
            median(&cpu[2])
        ),
    );
    o.check(rb.len() == p.speed_samples, || {
        format!("only {} of {} rounds measured", rb.len(), p.speed_samples)
    });
    o.check(ratio_b >= p.min_speed_ratio, || {
        format!(
            "a normal reader slowed down while another stream had stalled readers: B/A {ratio_b:.2} < {}",
            p.min_speed_ratio
        )
    });
    o.check(ratio_c >= p.min_speed_ratio, || {
        format!(
            "a normal reader slowed down with stalled readers on its own stream: C/A {ratio_c:.2} < {}",
            p.min_speed_ratio
        )
    });
    o.check(relays.iter().all(|r| *r >= MIN_RELAY), || {
        format!(
            "the relay fell behind the engine for a normal reader: {relays:.2?} (< {MIN_RELAY})"
        )
    });

    stalled_readers_are_closed(&mut o, &api, &token, || sut.logs()).await;

    // Soak: every task gets 3 stalled readers (held 10 s), 1 slow reader, 2 vanishing readers
    // and 1 normal reader; two tasks decode at a time.
    let soak_start = Instant::now();
    let soak_stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(Mutex::new((0usize, 0usize, 0usize)));
    let mut workers = Vec::new();
    for w in 0..2 {
        let (api, token, stop, stats) =
            (api.clone(), token.clone(), soak_stop.clone(), stats.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            let mut held: Vec<(Instant, TcpStream)> = Vec::new();
            let mut faults = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("soak-{w}-{n}");
                if !api
                    .submit(&task(&id, 200, n))
                    .await
                    .is_ok_and(|r| r.status == 202)
                {
                    faults.push(format!("{id}: not admitted"));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                let path = format!("/v1/tasks/{id}/stream");
                for _ in 0..3 {
                    if let Ok(s) = raw_open(&api.base, &path, &token).await {
                        held.push((Instant::now(), s));
                    }
                }
                let slow_stop = Arc::new(AtomicBool::new(false));
                let slow = match raw_open(&api.base, &path, &token).await {
                    Ok(s) => Some(slow_reader(s, slow_stop.clone())),
                    Err(_) => None,
                };
                for bytes in [512, 4096] {
                    tokio::spawn(vanish(api.base.clone(), path.clone(), token.clone(), bytes));
                }
                let s = api.follow(&id, Duration::from_secs(120), None).await;
                slow_stop.store(true, Ordering::Relaxed);
                if let Some(h) = slow {
                    let _ = h.await;
                }
                held.retain(|(at, _)| at.elapsed() < Duration::from_secs(10));
                let mut g = stats.lock().unwrap();
                g.0 += 1;
                if s.terminal_name() == "end" {
                    g.1 += 1;
                } else {
                    g.2 += 1;
                    faults.push(format!("{id}: {}", s.summary()));
                }
            }
            faults
        }));
    }
    // `CHAOS_SOAK_S` shortens or lengthens the soak (for experiments).
    let soak = std::env::var("CHAOS_SOAK_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(p.soak);
    tokio::time::sleep(soak).await;
    soak_stop.store(true, Ordering::Relaxed);
    for w in workers {
        for f in w.await.unwrap_or_default() {
            o.fail(format!("soak: {f}"));
        }
    }
    let soak_s = soak_start.elapsed().as_secs_f64();
    // Let retention (5 s) and the 5 s GC tick release the last transcripts.
    tokio::time::sleep(Duration::from_secs(12)).await;
    stop_rss.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap_or_default();
    let (tasks, ended, bad) = *stats.lock().unwrap();
    o.fig(
        "soak",
        format!("{soak_s:.0} s, {tasks} tasks, {ended} ended with `end`, {bad} not; each with 3 stalled + 1 slow + 2 vanishing + 1 normal reader"),
    );
    // Bounded: the peak of the soak's last quarter against the peak after its first quarter.
    let t_soak0 = soak_start.duration_since(t_rss0).as_secs_f64();
    let in_window = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= t_soak0 + from && *t <= t_soak0 + to)
            .map(|(_, k)| *k)
            .max()
            .unwrap_or(0)
    };
    let first = samples.first().map(|s| s.1).unwrap_or(0);
    let warm = in_window(0.0, soak_s * 0.25);
    let late = in_window(soak_s * 0.75, soak_s);
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let end = samples.last().map(|s| s.1).unwrap_or(0);
    o.fig(
        "daemon RSS MiB: start / peak of soak's first quarter / peak of last quarter / overall peak / end",
        format!(
            "{:.1} / {:.1} / {:.1} / {:.1} / {:.1} ({} samples)",
            first as f64 / 1024.0,
            warm as f64 / 1024.0,
            late as f64 / 1024.0,
            peak as f64 / 1024.0,
            end as f64 / 1024.0,
            samples.len()
        ),
    );
    let allowed = warm + (warm / 4).max(16 * 1024);
    o.check(warm > 0 && late <= allowed, || {
        format!(
            "RSS grew over the soak: {:.1} MiB after the first quarter, {:.1} MiB in the last (allowed {:.1})",
            warm as f64 / 1024.0,
            late as f64 / 1024.0,
            allowed as f64 / 1024.0
        )
    });
    drop(sut);
    o
}
