//! `cargo xtask bench eta`: how true the queue's predictions are, end to end through a real
//! orchestratord running a real llama-server (CPU, the tiny test model, dev setting).
//!
//! Rounds of 16 tasks of mixed length (`max_tokens` 32, 128 or 512) are submitted at once to a
//! pool of one replica with 2 slots, in two workloads: **fifo** (one priority) and **mixed**
//! (about half interactive, half batch, interleaved). For every task it records what the 202
//! predicted (`predicted_start_ms`, `predicted_end_ms`, `on_time_probability`), the waiting
//! task's `metrics` frames before `started`, the real wait (`started.queued_ms`) and the real
//! end (`finished_ms − submitted_ms` of `GET /v1/tasks/{id}`), all measured by the daemon.
//!
//! It reports, for tasks that waited over 300 ms, the median and p90 relative error
//! `|predicted − actual| / actual` of the start and the end: as the 202 predicted them, and as
//! the last `metrics` frame before `started` did (its `queued_ms + predicted_*_ms`, the
//! prediction from admission as last revised). With mixed priorities the 202 of a batch task
//! cannot know of the interactive tasks admitted after it; the last frame can. Each task gets
//! a deadline spread around a rough guess of its end (0.5–2×), and the calibration table
//! compares `on_time_probability` with how often the deadline was met.
//!
//! The first round (the "warm-up", not counted in the later-burst rows) is the **first burst on
//! a fresh data directory**: its 202s rest on the prior for the model file and the device
//! (`orch_core::prior`). After the measured rounds the daemon is stopped and started
//! again on the same data directory, and one more round is the **first burst after a restart**:
//! its 202s rest on the rates the first daemon learned and saved. Both get rows of their own.
//! Reliability tables compare `on_time_probability` (in the 202, in the last waiting frame,
//! and in a running task's first frame after `started`) with how often the deadline was met.
//!
//! A breakdown per round takes the 202s' start errors apart, from what each 202 rested on
//! (the daemon's `eta admit` debug line): the decode pace the model used against the one the
//! round ran at, the error had the model known the engine's pace while each task waited (what
//! is left is the model's own error), expected against real output, and the dispatch lag.
//!
//! It builds nothing; it runs `target/release/orchestratord` when it exists, else the debug
//! build.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::bench_util::{load_average, need_file, percentile, verdict, Daemon, EngineArgs};

/// Arguments of `cargo xtask bench eta`.
#[derive(clap::Args)]
pub struct EtaArgs {
    /// The daemon and the engine.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Measured rounds per workload.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Tasks submitted at once per round.
    #[arg(long, default_value_t = 16)]
    pub tasks: usize,
    /// Slots of the pool's one replica.
    #[arg(long, default_value_t = 2)]
    pub slots: u32,
    /// llama-server's compute threads (`-t`). One by default: with a thread per core on a
    /// small box, the engine's threads spin on each other whenever the client or the daemon
    /// takes a core, and its speed swings several-fold from one round to the next.
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
    /// Only waits longer than this count for the error statistics, ms.
    #[arg(long, default_value_t = 300)]
    pub min_wait_ms: u64,
    /// Also print every task: what it was told and what happened, with what its 202 rested on
    /// (`ms/t`: per-slot decode ms per token with every slot busy; `exp`: expected tokens).
    #[arg(long)]
    pub dump: bool,
    /// Run against this engine-double binary instead of llama-server (a BENCHMARK DOUBLE with
    /// exact, load-independent timing: checks the model itself, without the CPU's noise).
    #[arg(long)]
    pub engine_double: Option<PathBuf>,
    /// The double's inter-token delay, µs.
    #[arg(long, default_value_t = 5000)]
    pub double_token_us: u64,
    /// The double's delay before the first token, µs.
    #[arg(long, default_value_t = 20_000)]
    pub double_ttft_us: u64,
}

/// The engine the pool runs: llama-server launched by the daemon, or a double it points at.
#[derive(Clone, Copy)]
enum Engine<'a> {
    Llama {
        server: &'a Path,
        model: &'a Path,
        threads: u32,
    },
    Endpoint(&'a str),
}

/// Kills the engine double on drop.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the engine double with `slots`; returns it and its base URL.
fn start_double(
    bin: &Path,
    slots: u32,
    token_us: u64,
    ttft_us: u64,
) -> Result<(ChildGuard, String)> {
    let mut child = Command::new(bin)
        .args(["--port", "0", "--ctx", "4096"])
        .arg("--slots")
        .arg(slots.to_string())
        .arg("--token-interval-us")
        .arg(token_us.to_string())
        .arg("--ttft-us")
        .arg(ttft_us.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| anyhow!("unexpected first line from engine-double: {line}"))?;
    Ok((guard, format!("http://{addr}")))
}

/// Output lengths of a round, cycled (six of 32, five of 128, five of 512 per 16).
const LENGTHS: [u32; 16] = [
    512, 32, 128, 32, 512, 128, 128, 32, 512, 32, 128, 512, 32, 128, 32, 512,
];

/// What the daemon logged about each 202 (`eta admit`, at debug level): the rates it rested
/// on, by task id.
type AdmitLog = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Value>>>;

/// The daemon with one pool `bench` of `slots` on `engine`, in `dir` (a new one when `None`),
/// with what it logs about each 202 collected in `log`.
fn start_daemon(
    bin: &Path,
    engine: Engine<'_>,
    slots: u32,
    dir: Option<tempfile::TempDir>,
    log: &AdmitLog,
) -> Result<Daemon> {
    let dir = match dir {
        Some(d) => d,
        None => tempfile::tempdir().context("tempdir")?,
    };
    let source = match engine {
        Engine::Llama {
            server,
            model,
            threads,
        } => format!(
            "    model: \"{}\"\n    engine_binary: \"{}\"\n    flags: [\"-t\", \"{threads}\"]\n",
            model.display(),
            server.display()
        ),
        Engine::Endpoint(url) => format!("    endpoint: \"{url}\"\n    engine: llamacpp\n"),
    };
    let log = log.clone();
    Daemon::start_in(
        bin,
        dir,
        "warn,orchestratord=info,orchestratord::forecast=debug",
        |data| {
            format!(
                "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\ndev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n  - id: bench\n{source}    slots: {slots}\n    ctx: 1024\n    startup_timeout_s: 60\n",
                data.display(),
            )
        },
        move |line| {
            if line.contains("eta admit") {
                let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
                if let (Some(id), Ok(mut m)) = (v["fields"]["task_id"].as_str(), log.lock()) {
                    m.insert(id.to_owned(), v["fields"].clone());
                }
            }
        },
    )
}

async fn wait_ready(c: &reqwest::Client, base: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let h: Value = c
            .get(format!("{base}/v1/pools/bench/health"))
            .send()
            .await?
            .json()
            .await?;
        if h["replicas"][0]["state"] == "ready" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("pool not ready in 90 s: {h}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A deterministic generator (xorshift64*), so runs are repeatable without a crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What one task was told and what happened.
#[derive(Clone, Debug, Default)]
struct Outcome {
    id: String,
    round: String,
    max_tokens: u32,
    tokens: u64,
    interactive: bool,
    deadline_ms: u64,
    adm_start: u64,
    adm_end: u64,
    adm_p: Option<f64>,
    /// The last waiting frame: `(queued_ms, predicted_start_ms, predicted_end_ms, p)`.
    last_frame: Option<(u64, u64, u64, f64)>,
    /// `on_time_probability` of the first `metrics` frame after `started` (a running task's).
    running_p: Option<f64>,
    frames: usize,
    waited: u64,
    ended: u64,
    /// `submitted_ms` (wall clock) of the task's JSON.
    submitted: u64,
    /// The `end` event's `decode_ms` (first token to done).
    decode_ms: u64,
}

impl Outcome {
    fn on_time(&self) -> bool {
        self.ended <= self.deadline_ms
    }
}

/// Reads a task's stream to its end; then its JSON for the end time.
async fn follow(c: &reqwest::Client, base: &str, id: &str, mut o: Outcome) -> Result<Outcome> {
    let r = c.get(format!("{base}/v1/tasks/{id}/stream")).send().await?;
    if !r.status().is_success() {
        bail!("GET stream of {id}: HTTP {}", r.status());
    }
    let mut events = r.bytes_stream().eventsource();
    let mut started = false;
    let mut ended = false;
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        match ev.event.as_str() {
            "metrics" if started && o.running_p.is_none() => {
                o.running_p = v["on_time_probability"].as_f64();
            }
            "metrics" if started => {}
            "metrics" => {
                if let (Some(q), Some(s), Some(e)) = (
                    v["queued_ms"].as_u64(),
                    v["predicted_start_ms"].as_u64(),
                    v["predicted_end_ms"].as_u64(),
                ) {
                    let p = v["on_time_probability"].as_f64().unwrap_or(1.0);
                    o.last_frame = Some((q, s, e, p));
                    o.frames += 1;
                }
            }
            "started" => {
                started = true;
                o.waited = v["queued_ms"].as_u64().unwrap_or(0);
            }
            "end" => {
                ended = true;
                o.tokens = v["tokens_out"].as_u64().unwrap_or(0);
                o.decode_ms = v["decode_ms"].as_u64().unwrap_or(0);
                break;
            }
            "error" => bail!("task {id} failed: {}", ev.data),
            _ => {}
        }
    }
    if !ended {
        bail!("the stream of {id} ended without `end`");
    }
    let st: Value = c
        .get(format!("{base}/v1/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    let (sub, fin) = (st["submitted_ms"].as_u64(), st["finished_ms"].as_u64());
    o.ended = match (sub, fin) {
        (Some(s), Some(f)) => f.saturating_sub(s),
        _ => bail!("task {id} has no submitted/finished time: {st}"),
    };
    o.submitted = sub.unwrap_or(0);
    Ok(o)
}

/// One round: `n` tasks submitted back to back, then all streams read. `guess_ms_per_token`
/// (aggregate, from the warm-up) only places the deadlines around a plausible end.
async fn round(
    c: &reqwest::Client,
    base: &str,
    label: &str,
    n: usize,
    mixed: bool,
    rng: &mut Rng,
    guess_ms_per_token: f64,
) -> Result<Vec<Outcome>> {
    let mut readers = Vec::new();
    let mut cum_tokens = 0.0;
    for i in 0..n {
        let id = format!("{label}-{i}");
        let max_tokens = LENGTHS[i % LENGTHS.len()];
        let interactive = !mixed || rng.next() < 0.5;
        cum_tokens += f64::from(max_tokens);
        // Log-uniform in [0.5, 2] around a rough guess of this task's end.
        let factor = (0.5f64.ln() + rng.next() * 4.0f64.ln()).exp();
        let deadline_ms = ((cum_tokens * guess_ms_per_token * factor).ceil() as u64).max(1);
        let body = json!({
            "task_id": id,
            "model_ref": "bench",
            "priority": if interactive { "interactive" } else { "batch" },
            "prompt": "Once upon a time",
            "max_tokens": max_tokens,
            "seed": i,
            "temperature": 0.8,
            "deadline_ms": deadline_ms,
        });
        let r = c
            .post(format!("{base}/v1/tasks"))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("POST /v1/tasks {id}: HTTP {status}: {v}");
        }
        let o = Outcome {
            id: id.clone(),
            round: label.to_owned(),
            max_tokens,
            interactive,
            deadline_ms,
            adm_start: v["predicted_start_ms"].as_u64().unwrap_or(0),
            adm_end: v["predicted_end_ms"].as_u64().unwrap_or(0),
            adm_p: v["on_time_probability"].as_f64(),
            ..Outcome::default()
        };
        let (c, base) = (c.clone(), base.to_owned());
        readers.push(tokio::spawn(async move { follow(&c, &base, &id, o).await }));
    }
    let mut out = Vec::new();
    for r in readers {
        out.push(r.await.map_err(|e| anyhow!("reader panicked: {e}"))??);
    }
    Ok(out)
}

/// Median and p90 of the relative errors `|p − a| / a`, and the median signed error.
fn errors(pairs: &[(f64, f64)]) -> (f64, f64, f64, usize) {
    let mut abs: Vec<f64> = pairs.iter().map(|(p, a)| (p - a).abs() / a).collect();
    let mut signed: Vec<f64> = pairs.iter().map(|(p, a)| (p - a) / a).collect();
    abs.sort_by(f64::total_cmp);
    signed.sort_by(f64::total_cmp);
    (
        percentile(&abs, 0.5),
        percentile(&abs, 0.9),
        percentile(&signed, 0.5),
        pairs.len(),
    )
}

/// One row of the error table.
struct Row {
    name: String,
    waited: usize,
    all: usize,
    start_202: (f64, f64, f64, usize),
    end_202: (f64, f64, f64, usize),
    start_last: (f64, f64, f64, usize),
    end_last: (f64, f64, f64, usize),
}

fn row(name: &str, tasks: &[&Outcome], min_wait: u64) -> Row {
    let waited: Vec<&&Outcome> = tasks.iter().filter(|o| o.waited > min_wait).collect();
    let pairs = |f: &dyn Fn(&Outcome) -> Option<(f64, f64)>| -> Vec<(f64, f64)> {
        waited.iter().filter_map(|o| f(o)).collect()
    };
    Row {
        name: name.to_owned(),
        waited: waited.len(),
        all: tasks.len(),
        start_202: errors(&pairs(&|o| Some((o.adm_start as f64, o.waited as f64)))),
        end_202: errors(&pairs(&|o| Some((o.adm_end as f64, o.ended as f64)))),
        start_last: errors(&pairs(&|o| {
            o.last_frame
                .map(|(q, s, _, _)| ((q + s) as f64, o.waited as f64))
        })),
        end_last: errors(&pairs(&|o| {
            o.last_frame
                .map(|(q, _, e, _)| ((q + e) as f64, o.ended as f64))
        })),
    }
}

fn fmt_err(e: (f64, f64, f64, usize)) -> String {
    format!("{:.3} {:.3} {:+.3}", e.0, e.1, e.2)
}

/// Calibration bins of `(p, met)`.
fn calibration(out: &mut String, title: &str, samples: &[(f64, bool)]) {
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "{:>9} | {:>5} | {:>6} | {:>7}",
        "p range", "tasks", "mean p", "on time"
    );
    let bins = [
        (0.0, 0.2),
        (0.2, 0.4),
        (0.4, 0.6),
        (0.6, 0.8),
        (0.8, 1.0001),
    ];
    for (lo, hi) in bins {
        let b: Vec<&(f64, bool)> = samples
            .iter()
            .filter(|(p, _)| *p >= lo && *p < hi)
            .collect();
        if b.is_empty() {
            let _ = writeln!(
                out,
                "{:>4.1}–{:<4.1} | {:>5} | {:>6} | {:>7}",
                lo,
                hi.min(1.0),
                0,
                "-",
                "-"
            );
            continue;
        }
        let mean = b.iter().map(|(p, _)| p).sum::<f64>() / b.len() as f64;
        let rate = b.iter().filter(|(_, m)| *m).count() as f64 / b.len() as f64;
        let _ = writeln!(
            out,
            "{:>4.1}–{:<4.1} | {:>5} | {:>6.3} | {:>7.3}",
            lo,
            hi.min(1.0),
            b.len(),
            mean,
            rate
        );
    }
    let near: Vec<&(f64, bool)> = samples
        .iter()
        .filter(|(p, _)| (0.7..0.9).contains(p))
        .collect();
    if !near.is_empty() {
        let rate = near.iter().filter(|(_, m)| *m).count() as f64 / near.len() as f64;
        let _ = writeln!(
            out,
            "tasks given 0.7–0.9 (about 0.8): {} of them, {:.0} % met their deadline",
            near.len(),
            rate * 100.0
        );
    }
}

/// The rounds of `set`, in order.
fn by_round(set: &[Outcome]) -> Vec<Vec<&Outcome>> {
    let mut rounds: Vec<Vec<&Outcome>> = Vec::new();
    for o in set {
        match rounds.last_mut() {
            Some(r) if r[0].round == o.round => r.push(o),
            _ => rounds.push(vec![o]),
        }
    }
    rounds
}

/// The start error of the 202s taken apart, per FIFO round: how far the round's own decode
/// pace was from the one the daemon predicted with, and what the error would have been had it
/// known that pace; the expected against the real output; the dispatch lag.
fn why_off(
    out: &mut String,
    warm: &[Outcome],
    fifo: &[Outcome],
    restart: &[Outcome],
    admits: &std::collections::HashMap<String, Value>,
    min_wait: u64,
) {
    if admits.is_empty() {
        let _ = writeln!(
            out,
            "(no `eta admit` lines in the daemon's log: the start errors are not taken apart)"
        );
        return;
    }
    let _ = writeln!(
        out,
        "why the 202's start is off, per round (tasks that waited > {min_wait} ms): `model` is the per-slot decode ms/token with every slot busy that the round's 202s used (median), `round` the same measured in the round (its tasks' decode time over tokens, tasks that ended while every slot was busy), `ratio` round/model; the start error as it was, and as it would have been had the model known the engine's pace while each task waited (its 202's start × that pace / the pace it used); output expected/real; lag: a slot freed → the next task started (median/max)"
    );
    let _ = writeln!(
        out,
        "{:<10} | {:>5} {:>5} {:>5} | {:>17} | {:>17} | {:>7} | {:>9}",
        "round",
        "model",
        "round",
        "ratio",
        "start p90 (med±)",
        "pace in its wait",
        "out e/r",
        "lag ms"
    );
    let mut all_err = Vec::new();
    let mut all_fixed = Vec::new();
    let mut held = Vec::new();
    let mut held_rounds = 0;
    let rounds: Vec<Vec<&Outcome>> = by_round(warm)
        .into_iter()
        .chain(by_round(fifo))
        .chain(by_round(restart))
        .collect();
    for r in &rounds {
        let model: Vec<f64> = r
            .iter()
            .filter_map(|o| admits.get(&o.id)?["decode_ms_full"].as_f64())
            .collect();
        let mut sorted = model.clone();
        sorted.sort_by(f64::total_cmp);
        let model_ms = percentile(&sorted, 0.5);
        // Wall-clock start and end of each task.
        let span = |o: &Outcome| (o.submitted + o.waited, o.submitted + o.ended);
        let last_start = r.iter().map(|o| span(o).0).max().unwrap_or(0);
        let (mut dms, mut toks) = (0.0, 0.0);
        for o in r.iter().filter(|o| span(o).1 <= last_start && o.tokens > 1) {
            dms += o.decode_ms as f64;
            toks += (o.tokens - 1) as f64;
        }
        let round_ms = if toks > 0.0 { dms / toks } else { f64::NAN };
        let ratio = round_ms / model_ms;
        let waited: Vec<&&Outcome> = r.iter().filter(|o| o.waited > min_wait).collect();
        let pairs: Vec<(f64, f64)> = waited
            .iter()
            .map(|o| (o.adm_start as f64, o.waited as f64))
            .collect();
        // The engine's per-slot pace while a task waited: every task's decode (first token to
        // end, taken as even) that overlaps the wait, its slot time over its tokens there.
        let pace_in = |from: u64, to: u64| -> f64 {
            let (mut slot, mut toks) = (0.0, 0.0);
            for x in r.iter().filter(|x| x.tokens > 1) {
                let end = span(x).1;
                let first = end.saturating_sub(x.decode_ms);
                let (lo, hi) = (first.max(from), end.min(to));
                if hi > lo && end > first {
                    slot += (hi - lo) as f64;
                    toks += (hi - lo) as f64 / (end - first) as f64 * (x.tokens - 1) as f64;
                }
            }
            slot / toks
        };
        let fixed: Vec<(f64, f64)> = waited
            .iter()
            .filter_map(|o| {
                let model = admits.get(&o.id)?["decode_ms_full"].as_f64()?;
                let pace = pace_in(o.submitted, o.submitted + o.waited);
                let p = o.adm_start as f64 * pace / model;
                p.is_finite().then_some((p, o.waited as f64))
            })
            .collect();
        let is_fifo = r[0].round.starts_with("fifo");
        if is_fifo && ratio.is_finite() {
            all_err.extend(pairs.iter().copied());
            all_fixed.extend(fixed.iter().copied());
            if (ratio - 1.0).abs() <= 0.1 {
                held.extend(pairs.iter().copied());
                held_rounds += 1;
            }
        }
        let (e, f) = (errors(&pairs), errors(&fixed));
        let expected: f64 = r
            .iter()
            .filter_map(|o| admits.get(&o.id)?["tokens"].as_f64())
            .sum();
        let real: f64 = r.iter().map(|o| o.tokens as f64).sum();
        let mut lags: Vec<f64> = r
            .iter()
            .filter(|o| o.waited > 0)
            .filter_map(|o| {
                let start = span(o).0;
                // The slot it took freed at the last end before its start.
                let freed = r.iter().map(|x| span(x).1).filter(|e| *e <= start).max()?;
                Some((start - freed) as f64)
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        let _ = writeln!(
            out,
            "{:<10} | {:>5.2} {:>5.2} {:>5.2} | {:>6.3} ({:>+6.3}) | {:>6.3} ({:>+6.3}) | {:>7.3} | {:>4.0}/{:<4.0}",
            r[0].round,
            model_ms,
            round_ms,
            ratio,
            e.1,
            e.2,
            f.1,
            f.2,
            expected / real.max(1.0),
            percentile(&lags, 0.5),
            lags.last().copied().unwrap_or(0.0)
        );
    }
    let (e, f) = (errors(&all_err), errors(&all_fixed));
    let _ = writeln!(
        out,
        "later bursts (fifo): p90 start error (202) {:.3}; had the model known the engine's pace while each task waited {:.3} (what is left is the model's own error: lengths, prefill, dispatch, concurrency); in the {held_rounds} round(s) whose mean pace held within 10 % of the model's: {:.3} over {} tasks",
        e.1,
        f.1,
        errors(&held).1,
        held.len()
    );
}

/// Runs the benchmark and prints the results.
pub async fn run(a: EtaArgs) -> Result<()> {
    let bin = a.engine.daemon()?;
    if a.tasks == 0 || a.slots == 0 {
        bail!("--tasks and --slots must be at least 1");
    }
    let load_before = load_average();
    eprintln!(
        "[bench eta] daemon {} · {} rounds × {} tasks per workload",
        bin.display(),
        a.rounds,
        a.tasks
    );
    let double_bin = match &a.engine_double {
        Some(b) => Some(need_file(Some(b.clone()), "engine-double binary")?),
        None => None,
    };
    let (server, model) = match double_bin {
        Some(_) => (None, None),
        None => {
            let (s, m) = a.engine.engine()?;
            (Some(s), Some(m))
        }
    };
    let double = match &double_bin {
        Some(b) => Some(start_double(
            b,
            a.slots,
            a.double_token_us,
            a.double_ttft_us,
        )?),
        None => None,
    };
    let (engine, engine_name) = match (&double, &server, &model) {
        (Some((_, url)), _, _) => (
            Engine::Endpoint(url),
            format!(
                "engine-double (BENCHMARK DOUBLE: {} µs/token, TTFT {} µs, at any concurrency)",
                a.double_token_us, a.double_ttft_us
            ),
        ),
        (None, Some(server), Some(model)) => (
            Engine::Llama {
                server,
                model,
                threads: a.threads,
            },
            format!("llama-server (CPU, tiny test model, -t {})", a.threads),
        ),
        _ => bail!("no engine to run"),
    };
    let admit_log = AdmitLog::default();
    let d = start_daemon(&bin, engine, a.slots, None, &admit_log)?;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    wait_ready(&c, &d.base).await?;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);

    // Warm-up, the first burst on a fresh data directory: the daemon measures the engine; the
    // bench takes a rough aggregate rate for the deadlines it sets.
    eprintln!("[bench eta] warm-up round (first burst on a fresh data directory)");
    let t0 = Instant::now();
    let warm = round(&c, &d.base, "warm", a.tasks, false, &mut rng, 1.0).await?;
    let warm_tokens: f64 = (0..warm.len())
        .map(|i| f64::from(LENGTHS[i % LENGTHS.len()]))
        .sum();
    let guess = t0.elapsed().as_secs_f64() * 1000.0 / warm_tokens.max(1.0);

    let mut fifo = Vec::new();
    let mut mixed = Vec::new();
    for r in 0..a.rounds {
        eprintln!("[bench eta] round {}/{}", r + 1, a.rounds);
        fifo.extend(
            round(
                &c,
                &d.base,
                &format!("fifo{r}"),
                a.tasks,
                false,
                &mut rng,
                guess,
            )
            .await?,
        );
        mixed.extend(
            round(
                &c,
                &d.base,
                &format!("mixed{r}"),
                a.tasks,
                true,
                &mut rng,
                guess,
            )
            .await?,
        );
    }
    // The first burst after a restart on the same data directory, right after the last round:
    // the daemon writes what it learned on its way down.
    eprintln!("[bench eta] restart, then one more round");
    let d = start_daemon(&bin, engine, a.slots, Some(d.into_dir()?), &admit_log)?;
    wait_ready(&c, &d.base).await?;
    let restart = round(&c, &d.base, "restart", a.tasks, false, &mut rng, guess).await?;
    drop(d);

    let all_fifo: Vec<&Outcome> = fifo.iter().collect();
    let all_mixed: Vec<&Outcome> = mixed.iter().collect();
    let inter: Vec<&Outcome> = mixed.iter().filter(|o| o.interactive).collect();
    let batch: Vec<&Outcome> = mixed.iter().filter(|o| !o.interactive).collect();
    let all_warm: Vec<&Outcome> = warm.iter().collect();
    let all_restart: Vec<&Outcome> = restart.iter().collect();
    let rows = [
        row("fifo", &all_fifo, a.min_wait_ms),
        row("mixed", &all_mixed, a.min_wait_ms),
        row("mixed: interactive", &inter, a.min_wait_ms),
        row("mixed: batch", &batch, a.min_wait_ms),
        row("first burst, fresh", &all_warm, a.min_wait_ms),
        row("first burst, restart", &all_restart, a.min_wait_ms),
    ];

    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench eta: {cores} CPU core(s), load average before {load_before}, after {}; 1 replica × {} slots of {engine_name}; {} tasks at once per round (max_tokens 32/128/512), {} rounds per workload after 1 warm-up round; temperature 0.8",
        load_average(),
        a.slots,
        a.tasks,
        a.rounds
    );
    let _ = writeln!(
        out,
        "relative error |predicted − actual| / actual over tasks that waited > {} ms: median, p90, median signed (+ = predicted late)",
        a.min_wait_ms
    );
    let _ = writeln!(
        out,
        "{:<20} | {:>7} | {:>20} | {:>20} | {:>20} | {:>20}",
        "workload", "waited", "start (202)", "end (202)", "start (last frame)", "end (last frame)"
    );
    for r in &rows {
        let _ = writeln!(
            out,
            "{:<20} | {:>3}/{:<3} | {:>20} | {:>20} | {:>20} | {:>20}",
            r.name,
            r.waited,
            r.all,
            fmt_err(r.start_202),
            fmt_err(r.end_202),
            fmt_err(r.start_last),
            fmt_err(r.end_last)
        );
    }
    // The engine's own pace per round (a task's start to end over its tokens, averaged): how
    // much the machine's speed moved between rounds, which no prediction made a round earlier
    // can know.
    for (name, set) in [
        ("fifo", &fifo),
        ("mixed", &mixed),
        (
            "first-burst (fresh, restart)",
            &warm.iter().chain(&restart).cloned().collect(),
        ),
    ] {
        let mut rounds: Vec<(String, Vec<f64>)> = Vec::new();
        for o in set.iter().filter(|o| o.tokens > 0) {
            let pace = o.ended.saturating_sub(o.waited) as f64 / o.tokens as f64;
            match rounds.last_mut() {
                Some((r, v)) if *r == o.round => v.push(pace),
                _ => rounds.push((o.round.clone(), vec![pace])),
            }
        }
        let means: Vec<f64> = rounds
            .iter()
            .map(|(_, v)| v.iter().sum::<f64>() / v.len().max(1) as f64)
            .collect();
        let (lo, hi) = means.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), m| {
            (lo.min(*m), hi.max(*m))
        });
        let list: Vec<String> = means.iter().map(|m| format!("{m:.2}")).collect();
        let _ = writeln!(
            out,
            "engine pace per {name} round (ms per token, a task's start to end, mean over the round): {} (max/min {:.2})",
            list.join(" "),
            hi / lo
        );
    }
    let admits = admit_log.lock().map(|m| m.clone()).unwrap_or_default();
    why_off(&mut out, &warm, &fifo, &restart, &admits, a.min_wait_ms);
    let frames: usize = fifo.iter().chain(&mixed).map(|o| o.frames).sum();
    let waiting = fifo.iter().chain(&mixed).filter(|o| o.frames > 0).count();
    let _ = writeln!(
        out,
        "waiting frames: {frames} over {waiting} tasks that waited (metrics frames before `started`)"
    );
    let (f90, m90) = (rows[0].start_202.1, rows[1].start_last.1);
    let (fresh90, restart90) = (rows[4].start_202.1, rows[5].start_202.1);
    let _ = writeln!(
        out,
        "targets: later bursts (fifo) p90 start error (202) {f90:.3} (≤ 0.2) {}; mixed p90 start error (last frame before start) {m90:.3} (≤ 0.3) {}",
        verdict(f90 <= 0.2),
        verdict(m90 <= 0.3)
    );
    let _ = writeln!(
        out,
        "targets: first burst on a fresh data dir p90 start error (202) {fresh90:.3} (≤ 0.6) {}; first burst after a restart {restart90:.3} (≤ 0.3) {}",
        verdict(fresh90 <= 0.6),
        verdict(restart90 <= 0.3)
    );
    let adm: Vec<(f64, bool)> = fifo
        .iter()
        .chain(&mixed)
        .filter_map(|o| o.adm_p.map(|p| (p, o.on_time())))
        .collect();
    calibration(
        &mut out,
        "calibration, on_time_probability in the 202 against deadline met (all measured tasks):",
        &adm,
    );
    let last: Vec<(f64, bool)> = fifo
        .iter()
        .chain(&mixed)
        .filter_map(|o| o.last_frame.map(|(_, _, _, p)| (p, o.on_time())))
        .collect();
    calibration(
        &mut out,
        "calibration, on_time_probability in the last waiting frame (tasks that waited):",
        &last,
    );
    let running: Vec<(f64, bool)> = fifo
        .iter()
        .chain(&mixed)
        .filter_map(|o| o.running_p.map(|p| (p, o.on_time())))
        .collect();
    calibration(
        &mut out,
        "calibration, on_time_probability of a running task (its first frame after `started`):",
        &running,
    );
    if a.dump {
        let _ = writeln!(
            out,
            "{:<10} {:>4} {:>4} {:>3} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6} {:>3} {:>5} | {:>5} {:>5}",
            "task",
            "max",
            "out",
            "pri",
            "wait",
            "202",
            "last",
            "end",
            "202",
            "last",
            "frames",
            "p",
            "dl",
            "ms/t",
            "exp"
        );
        for o in warm.iter().chain(&fifo).chain(&mixed).chain(&restart) {
            let (ls, le, lp) = o
                .last_frame
                .map_or((0, 0, f64::NAN), |(q, s, e, p)| (q + s, q + e, p));
            let _ = writeln!(
                out,
                "{:<10} {:>4} {:>4} {:>3} | {:>7} {:>7} {:>7} | {:>7} {:>7} {:>7} | {:>6} {:>3.2}/{:.2} {:>5} | {:>5.2} {:>5.0}",
                o.id,
                o.max_tokens,
                o.tokens,
                if o.interactive { "int" } else { "bat" },
                o.waited,
                o.adm_start,
                ls,
                o.ended,
                o.adm_end,
                le,
                o.frames,
                o.adm_p.unwrap_or(f64::NAN),
                lp,
                o.deadline_ms,
                admits
                    .get(&o.id)
                    .and_then(|v| v["decode_ms_full"].as_f64())
                    .unwrap_or(f64::NAN),
                admits
                    .get(&o.id)
                    .and_then(|v| v["tokens"].as_f64())
                    .unwrap_or(f64::NAN)
            );
        }
    }
    print!("{out}");
    Ok(())
}
