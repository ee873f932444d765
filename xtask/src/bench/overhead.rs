//! `bench overhead` measures what orchestratord adds to a stream: the same requests go directly
//! to an engine (`POST /completion`) and through the daemon (`POST /v1/tasks`, then
//! `GET /v1/tasks/{id}/stream`), at several concurrencies, first against `engine-double` (a
//! benchmark double of llama-server that isolates our cost) and then against the real
//! llama-server (the whole). It builds nothing: it runs the release binaries that
//! `cargo build --release -p orchestratord -p engine-double` produced. Every process it starts
//! is killed when it returns, on error and on Ctrl-C included.

pub(super) mod doors;
mod procs;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::bench_util::{load_average, percentile, verdict};
use procs::*;

/// The release binaries a relay benchmark runs (`bench overhead`, `bench doors`).
#[derive(clap::Args)]
pub struct Binaries {
    /// orchestratord binary [default: <target>/release/orchestratord].
    #[arg(long)]
    pub orchestratord: Option<PathBuf>,
    /// engine-double binary [default: <target>/release/engine-double].
    #[arg(long)]
    pub double: Option<PathBuf>,
    /// loadgen binary, the load generator [default: <target>/release/loadgen].
    #[arg(long)]
    pub loadgen: Option<PathBuf>,
}

impl Binaries {
    /// `(orchestratord, engine-double, loadgen)`: those given, else the release builds.
    pub fn resolve(&self) -> Result<(PathBuf, PathBuf, PathBuf)> {
        Ok((
            release_binary(
                self.orchestratord.clone(),
                "orchestratord",
                "--orchestratord",
            )?,
            release_binary(self.double.clone(), "engine-double", "--double")?,
            release_binary(self.loadgen.clone(), "loadgen", "--loadgen")?,
        ))
    }
}

/// Arguments of `cargo xtask bench overhead`.
#[derive(clap::Args)]
pub struct OverheadArgs {
    #[command(flatten)]
    pub bins: Binaries,
    /// Skip the engine double (measure only the real llama-server).
    #[arg(long)]
    pub skip_double: bool,
    /// llama-server binary for the real-engine part (`cargo xtask provision-engine` prints it).
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// GGUF model for llama-server (`cargo xtask provision-engine` prints it).
    #[arg(long, env = "TEST_MODEL")]
    pub model: Option<PathBuf>,
    /// Only measure against the engine double.
    #[arg(long)]
    pub skip_real_engine: bool,
    /// Concurrent streams against the double, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8, 64, 256])]
    pub concurrency: Vec<usize>,
    /// Tokens per request against the double.
    #[arg(long, default_value_t = 64)]
    pub tokens: u32,
    /// The double's inter-token delay, µs.
    #[arg(long, default_value_t = 1000)]
    pub token_interval_us: u64,
    /// The double's delay before the first token, µs.
    #[arg(long, default_value_t = 0)]
    pub ttft_us: u64,
    /// Requests per stream in each measured phase...
    #[arg(long, default_value_t = 32)]
    pub rounds: usize,
    /// ...but at least this many per phase (percentiles need samples).
    #[arg(long, default_value_t = 128)]
    pub min_requests: usize,
    /// Segments each path's requests are split into, alternating direct and relayed.
    #[arg(long, default_value_t = 4)]
    pub segments: usize,
    /// Concurrent streams against llama-server, comma-separated (its slots: the largest).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pub real_concurrency: Vec<usize>,
    /// Tokens per request against llama-server.
    #[arg(long, default_value_t = 64)]
    pub real_tokens: u32,
    /// Requests per stream in each llama-server phase...
    #[arg(long, default_value_t = 32)]
    pub real_rounds: usize,
    /// ...but at least this many per phase.
    #[arg(long, default_value_t = 64)]
    pub real_min_requests: usize,
    /// llama-server's compute threads (`-t`) [default: llama-server's own choice].
    #[arg(long)]
    pub real_threads: Option<usize>,
    /// llama-server's `-ngl` (layers on the GPU): 0 runs on the CPU, 999 puts every layer on
    /// the GPU of a CUDA build.
    #[arg(long, default_value_t = 0)]
    pub real_ngl: u32,
    /// orchestratord's log filter (`RUST_LOG`) during the run; `info` is its default.
    #[arg(long, default_value = "info")]
    pub daemon_log: String,
}

// ---------------------------------------------------------------------------------------------
// Requests

/// What one request asks for; the same for both paths.
#[derive(Clone)]
struct Spec {
    prompt: &'static str,
    tokens: u32,
}

/// Where requests go.
#[derive(Clone)]
enum Target {
    /// llama-server's `POST /completion` stream at `base`. `close` sends `Connection: close`:
    /// llama-server closes the connection after every streamed response although it announces
    /// keep-alive, so a client that reuses it races the close and sometimes fails with
    /// "connection closed before message completed". The double keeps connections alive.
    Direct { base: String, close: bool },
    /// orchestratord at this base URL, model_ref `bench`.
    Relayed(String),
    /// One of orchestratord's agent doors (`chat`, `messages`, `responses`: loadgen's
    /// `--target`) at this base URL, model `bench`.
    Door(&'static str, String),
}

/// One finished request.
struct Sample {
    ttft: Duration,
    /// Request sent to last event.
    total: Duration,
    tokens: u64,
    /// A hash of the text streamed; identical requests must stream identical text on both
    /// paths.
    text: String,
}

/// Seed and greedy sampling: identical requests give identical (equally long) outputs.
const SEED: u64 = 42;

impl Sample {
    /// This request's decode rate: tokens after the first over the time after the first.
    fn stream_tokens_per_s(&self) -> Option<f64> {
        let decode = self.total.saturating_sub(self.ttft).as_secs_f64();
        (self.tokens > 1 && decode > 0.0).then(|| (self.tokens - 1) as f64 / decode)
    }
}

/// One phase: `total` requests, `conc` at a time (closed loop).
struct Phase {
    samples: Vec<Sample>,
    errors: Vec<String>,
    wall: Duration,
    /// Streams (workers) in the phase.
    conc: usize,
    /// Sum over streams of the time each was busy, from sending its first request to the end
    /// of its last: staggered starts and ends are not time at full concurrency.
    busy: Duration,
    /// CPU used during the phase, where known.
    cpu: Option<Cpu>,
}

impl Phase {
    fn ttft_ms(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .map(|s| s.ttft.as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, q)
    }

    /// Adds another segment of the same path: samples and errors, wall time and CPU.
    fn absorb(&mut self, o: Phase) {
        self.samples.extend(o.samples);
        self.errors.extend(o.errors);
        self.wall += o.wall;
        self.busy += o.busy;
        self.cpu = self.cpu.zip(o.cpu).map(|(a, b)| Cpu {
            client: a.client + b.client,
            engine: a.engine + b.engine,
            daemon: a.daemon + b.daemon,
        });
    }

    /// Aggregate tokens/s with all streams busy: streams × tokens per busy stream-second.
    fn tokens_per_s(&self) -> f64 {
        let n: u64 = self.samples.iter().map(|s| s.tokens).sum();
        self.conc as f64 * n as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    /// CPU used by (client, engine, daemon), in cores busy over the phase.
    fn cores(&self) -> Option<(f64, f64, f64)> {
        let w = self.wall.as_secs_f64().max(1e-9);
        self.cpu.map(|c| {
            (
                c.client.as_secs_f64() / w,
                c.engine.as_secs_f64() / w,
                c.daemon.as_secs_f64() / w,
            )
        })
    }

    /// Quantile `q` of the requests' own decode rates (tokens/s after the first token).
    fn stream_tokens_per_s(&self, q: f64) -> f64 {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter_map(Sample::stream_tokens_per_s)
            .collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, q)
    }

    /// orchestratord's CPU per token of the phase, µs.
    fn daemon_us_per_token(&self) -> Option<f64> {
        let tokens: u64 = self.samples.iter().map(|s| s.tokens).sum();
        self.cpu
            .map(|c| c.daemon.as_secs_f64() * 1e6 / tokens.max(1) as f64)
    }

    /// The hashes of the texts the requests streamed.
    fn texts(&self) -> impl Iterator<Item = &str> {
        self.samples.iter().map(|s| s.text.as_str())
    }

    fn tokens_per_request(&self) -> f64 {
        let n: u64 = self.samples.iter().map(|s| s.tokens).sum();
        n as f64 / self.samples.len().max(1) as f64
    }
}

/// One phase: `total` requests, `conc` at a time (closed loop), run by the load generator (its
/// own release-built process; see `test-harness/loadgen`). Worker `j` starts after
/// `j × stagger`: with equally long requests, streams that all started together would stay in
/// lockstep and every request would arrive in a burst of `conc`; staggered, they arrive at a
/// steady rate, as independent clients do. Task ids must be unique within one daemon, so every
/// phase has its own label. The phase's `cpu.client` is the load generator's own CPU time.
async fn phase(
    loadgen: &Path,
    target: &Target,
    label: &str,
    conc: usize,
    total: usize,
    stagger: Duration,
    spec: &Spec,
) -> Phase {
    let mut cmd = tokio::process::Command::new(loadgen);
    match target {
        Target::Direct { base, close } => {
            cmd.args(["--target", "direct", "--base", base]);
            if *close {
                cmd.arg("--close");
            }
        }
        Target::Relayed(base) => {
            cmd.args(["--target", "relayed", "--base", base]);
        }
        Target::Door(door, base) => {
            cmd.args(["--target", door, "--base", base]);
        }
    }
    cmd.arg("--concurrency")
        .arg(conc.to_string())
        .arg("--requests")
        .arg(total.to_string())
        .arg("--stagger-us")
        .arg(stagger.as_micros().to_string())
        .arg("--tokens")
        .arg(spec.tokens.to_string())
        .arg("--prompt")
        .arg(spec.prompt)
        .arg("--label")
        .arg(format!("bench-{label}"))
        .arg("--seed")
        .arg(SEED.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let failed = |why: String| Phase {
        samples: Vec::new(),
        errors: vec![format!("{label}: {why}")],
        wall: Duration::ZERO,
        conc,
        busy: Duration::ZERO,
        cpu: None,
    };
    let out = match cmd.output().await {
        Ok(o) => o,
        Err(e) => return failed(format!("cannot run {}: {e}", loadgen.display())),
    };
    if !out.status.success() {
        return failed(format!(
            "loadgen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // `{wall_us, cpu_us, streams: [{busy_us, samples: [[ttft_us, total_us, tokens, hash]]}],
    // errors}`, as test-harness/loadgen prints it.
    let r: Value = match serde_json::from_slice(&out.stdout) {
        Ok(r) => r,
        Err(e) => return failed(format!("unreadable loadgen report: {e}")),
    };
    let micros = |v: &Value| Duration::from_micros(v.as_u64().unwrap_or(0));
    let streams = r["streams"].as_array().map_or(&[][..], Vec::as_slice);
    let samples = streams
        .iter()
        .flat_map(|st| st["samples"].as_array().map_or(&[][..], Vec::as_slice))
        .map(|x| Sample {
            ttft: micros(&x[0]),
            total: micros(&x[1]),
            tokens: x[2].as_u64().unwrap_or(0),
            text: x[3].as_str().unwrap_or_default().to_owned(),
        })
        .collect();
    let errors = r["errors"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .map(|e| format!("{label}: {}", e.as_str().unwrap_or_default()))
        .collect();
    Phase {
        samples,
        errors,
        wall: micros(&r["wall_us"]),
        conc,
        busy: streams.iter().map(|st| micros(&st["busy_us"])).sum(),
        cpu: r["cpu_us"].as_u64().map(|c| Cpu {
            client: Duration::from_micros(c),
            engine: Duration::ZERO,
            daemon: Duration::ZERO,
        }),
    }
}

/// Direct and relayed results at one concurrency.
struct Row {
    conc: usize,
    requests: usize,
    direct: Phase,
    relayed: Phase,
}

impl Row {
    fn added_ms(&self, q: f64) -> f64 {
        self.relayed.ttft_ms(q) - self.direct.ttft_ms(q)
    }

    fn ratio(&self) -> f64 {
        self.relayed.tokens_per_s() / self.direct.tokens_per_s()
    }

    /// orchestratord's CPU per relayed token, µs.
    fn daemon_us_per_token(&self) -> Option<f64> {
        self.relayed.daemon_us_per_token()
    }
}

/// One engine and the daemon in front of it.
struct Setup<'a> {
    /// The load generator binary.
    loadgen: &'a Path,
    /// Name in progress lines and task ids.
    name: &'a str,
    /// Engine base URL and pid.
    engine: (String, u32),
    /// Whether direct requests send `Connection: close` (see [`Target::Direct`]).
    close: bool,
    /// orchestratord base URL and pid.
    daemon: (String, u32),
}

impl Setup<'_> {
    /// CPU used so far by the engine and the daemon (the client's is the load generator's
    /// own, reported per phase).
    fn cpu(&self) -> Option<Cpu> {
        Some(Cpu {
            client: Duration::ZERO,
            engine: cpu_time(self.engine.1)?,
            daemon: cpu_time(self.daemon.1)?,
        })
    }

    /// [`phase`] with the CPU each process used during it.
    async fn phase(
        &self,
        t: &Target,
        label: &str,
        conc: usize,
        total: usize,
        stagger: Duration,
        spec: &Spec,
    ) -> Phase {
        let before = self.cpu();
        let mut p = phase(self.loadgen, t, label, conc, total, stagger, spec).await;
        let client = p.cpu.map(|c| c.client);
        p.cpu = self
            .cpu()
            .zip(before)
            .zip(client)
            .map(|((b, a), client)| Cpu {
                client,
                engine: b.engine.saturating_sub(a.engine),
                daemon: b.daemon.saturating_sub(a.daemon),
            });
        p
    }
}

/// How many requests each concurrency gets.
#[derive(Clone, Copy)]
struct Plan {
    /// Requests per stream...
    rounds: usize,
    /// ...but at least this many per path.
    min_requests: usize,
    /// Alternating direct/relayed segments the requests are split into.
    segments: usize,
}

/// Warms both paths up, then measures direct and relayed at each concurrency. The requests of
/// each path are split into segments that alternate (d r r d d r …), so that drift in what
/// else the machine is doing falls on both paths alike.
async fn measure(s: &Setup<'_>, concs: &[usize], plan: Plan, spec: &Spec) -> Result<Vec<Row>> {
    let (d, r) = (
        Target::Direct {
            base: s.engine.0.clone(),
            close: s.close,
        },
        Target::Relayed(s.daemon.0.clone()),
    );
    let name = s.name;
    let warm = concs.iter().copied().max().unwrap_or(1);
    progress(format!("{name}: warming up ({warm} streams per path)"));
    let mut request_time = Duration::ZERO;
    for (t, label) in [(&d, "warm-d"), (&r, "warm-r")] {
        let p = phase(
            s.loadgen,
            t,
            &format!("{name}-{label}"),
            warm,
            warm,
            Duration::ZERO,
            spec,
        )
        .await;
        if let Some(e) = p.errors.first() {
            bail!("{name}: warm-up request failed: {e}");
        }
        if matches!(t, Target::Direct { .. }) {
            let n = p.samples.len().max(1) as u32;
            request_time = p.samples.iter().map(|x| x.total).sum::<Duration>() / n;
        }
    }
    let mut rows = Vec::new();
    // The row index keeps task ids unique when a concurrency is listed twice.
    for (k, &c) in concs.iter().enumerate() {
        let per_segment = ((c * plan.rounds).max(plan.min_requests) / plan.segments.max(1)).max(c);
        let segments = plan.segments.max(1);
        // Spread the streams' starts over one direct request time.
        let stagger = request_time / c as u32;
        progress(format!(
            "{name}: {c} streams, {} requests per path in {segments} segments",
            per_segment * segments
        ));
        let mut direct: Option<Phase> = None;
        let mut relayed: Option<Phase> = None;
        for seg in 0..segments {
            let order = if seg % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            };
            for is_direct in order {
                let (t, acc, tag) = if is_direct {
                    (&d, &mut direct, "d")
                } else {
                    (&r, &mut relayed, "r")
                };
                let label = format!("{name}-{k}-{tag}{c}-{seg}");
                let p = s.phase(t, &label, c, per_segment, stagger, spec).await;
                match acc {
                    Some(a) => a.absorb(p),
                    None => *acc = Some(p),
                }
            }
        }
        rows.push(Row {
            conc: c,
            requests: per_segment * segments,
            direct: direct.expect("at least one segment"),
            relayed: relayed.expect("at least one segment"),
        });
    }
    Ok(rows)
}

fn progress(msg: String) {
    eprintln!("[bench] {msg}");
}

/// The tables, as printed and as recorded in docs/PERFORMANCE.md.
fn table(rows: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5} {:>5} | {:>21} | {:>21} | {:>15} | {:>9} {:>9} {:>6} | {:>7} {:>6}",
        "conc",
        "reqs",
        "TTFT p50 ms dir/rel",
        "TTFT p99 ms dir/rel",
        "added p50/p99",
        "dir tok/s",
        "rel tok/s",
        "ratio",
        "tok/req",
        "errors"
    );
    for r in rows {
        let errors = r.direct.errors.len() + r.relayed.errors.len();
        let _ = writeln!(
            s,
            "{:>5} {:>5} | {:>10.2} {:>10.2} | {:>10.2} {:>10.2} | {:>+7.2} {:>+7.2} | {:>9.0} {:>9.0} {:>6.3} | {:>7.1} {:>6}",
            r.conc,
            r.requests,
            r.direct.ttft_ms(0.5),
            r.relayed.ttft_ms(0.5),
            r.direct.ttft_ms(0.99),
            r.relayed.ttft_ms(0.99),
            r.added_ms(0.5),
            r.added_ms(0.99),
            r.direct.tokens_per_s(),
            r.relayed.tokens_per_s(),
            r.ratio(),
            r.relayed.tokens_per_request(),
            errors
        );
    }
    let _ = writeln!(
        s,
        "per-stream decode tokens/s (each request's tokens after its first, over that time): {:>5} | {:>17} | {:>17}",
        "conc", "p50 dir/rel", "p10 dir/rel"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>89} | {:>8.0} {:>8.0} | {:>8.0} {:>8.0}",
            r.conc,
            r.direct.stream_tokens_per_s(0.5),
            r.relayed.stream_tokens_per_s(0.5),
            r.direct.stream_tokens_per_s(0.1),
            r.relayed.stream_tokens_per_s(0.1)
        );
    }
    let _ = writeln!(
        s,
        "CPU busy, in cores (10 ms resolution): {:>5} | {:>19} | {:>26} | {:>13}",
        "conc", "direct client+engine", "relayed client+engine+daemon", "daemon µs/tok"
    );
    for r in rows {
        let fmt2 = |c: Option<(f64, f64, f64)>| {
            c.map_or("-".into(), |(a, b, _)| format!("{a:.2} + {b:.2}"))
        };
        let fmt3 = |c: Option<(f64, f64, f64)>| {
            c.map_or("-".into(), |(a, b, d)| format!("{a:.2} + {b:.2} + {d:.2}"))
        };
        let us = r
            .daemon_us_per_token()
            .map_or("-".into(), |u| format!("{u:.1}"));
        let _ = writeln!(
            s,
            "{:>44} | {:>20} | {:>28} | {:>13}",
            r.conc,
            fmt2(r.direct.cores()),
            fmt3(r.relayed.cores()),
            us
        );
    }
    s
}

/// The first few failed requests and, with `check_text`, any response whose text differs from
/// the first direct one. Only the double is checked: llama-server's output may legitimately
/// vary with how requests happen to be batched together.
fn problems(rows: &[Row], check_text: bool) -> Vec<String> {
    let mut out: Vec<String> = rows
        .iter()
        .flat_map(|r| r.direct.errors.iter().chain(&r.relayed.errors))
        .take(3)
        .map(|e| format!("error: {e}"))
        .collect();
    for r in rows.iter().filter(|_| check_text) {
        let reference = r.direct.samples.first().map(|s| &s.text);
        let differs = r
            .direct
            .samples
            .iter()
            .chain(&r.relayed.samples)
            .filter(|s| Some(&s.text) != reference)
            .count();
        if differs > 0 {
            out.push(format!(
                "MISMATCH at {} stream(s): {differs} response(s) streamed other text than the first direct one",
                r.conc
            ));
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// bench overhead

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time";

pub async fn run(a: OverheadArgs) -> Result<()> {
    let (daemon_bin, double_bin, loadgen) = a.bins.resolve()?;
    let real = if a.skip_real_engine {
        None
    } else {
        match (&a.llama_server, &a.model) {
            (Some(s), Some(m)) if s.is_file() && m.is_file() => Some((s.clone(), m.clone())),
            _ => bail!(
                "the real-engine part needs llama-server and a model: run \
                 `eval \"$(cargo xtask provision-engine)\"` (sets LLAMA_SERVER and TEST_MODEL), \
                 pass --llama-server PATH --model PATH, or pass --skip-real-engine"
            ),
        }
    };
    if a.concurrency.contains(&0) || a.real_concurrency.contains(&0) {
        bail!("a concurrency must be at least 1");
    }
    let dir = tempfile::Builder::new().prefix("llorch-bench-").tempdir()?;
    // Enough idle connections for the widest phase; reqwest sets TCP_NODELAY by default.
    // Idle connections are dropped after 4 s, before llama-server's 5 s keep-alive ends them.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Other work on the machine skews the numbers; the table says how busy it was.
    let load_before = load_average();

    // Part 1: the engine double, which isolates orchestratord's own cost.
    let slots = a.concurrency.iter().copied().max().unwrap_or(1).max(64);
    let spec = Spec {
        prompt: PROMPT,
        tokens: a.tokens,
    };
    let double_rows = if a.skip_double {
        Vec::new()
    } else {
        let sub = dir.path().join("double");
        std::fs::create_dir_all(&sub)?;
        let (double_proc, engine) =
            start_double(&double_bin, &sub, a.token_interval_us, a.ttft_us, slots).await?;
        let (daemon_proc, daemon) = start_daemon(
            &http,
            &daemon_bin,
            &sub,
            &engine,
            slots,
            4096,
            &a.daemon_log,
        )
        .await?;
        let setup = Setup {
            loadgen: &loadgen,
            name: "double",
            engine: (engine, double_proc.child.id()),
            close: false,
            daemon: (daemon, daemon_proc.child.id()),
        };
        let plan = Plan {
            rounds: a.rounds,
            min_requests: a.min_requests,
            segments: a.segments,
        };
        measure(&setup, &a.concurrency, plan, &spec).await?
        // The guards drop here: the double and its daemon stop before llama-server starts.
    };

    // Part 2: the real llama-server, the whole.
    let real_rows = match &real {
        None => None,
        Some((server, model)) => {
            let sub = dir.path().join("real");
            std::fs::create_dir_all(&sub)?;
            let slots = a.real_concurrency.iter().copied().max().unwrap_or(1);
            let ctx = 512.max(a.real_tokens + 64);
            progress(format!("llama-server: starting with {slots} slots"));
            let (server_proc, engine) =
                start_llama_server(&http, server, model, &sub, slots, ctx, &a).await?;
            let (daemon_proc, daemon) =
                start_daemon(&http, &daemon_bin, &sub, &engine, slots, ctx, &a.daemon_log).await?;
            let spec = Spec {
                prompt: PROMPT,
                tokens: a.real_tokens,
            };
            let setup = Setup {
                loadgen: &loadgen,
                name: "llama-server",
                engine: (engine, server_proc.child.id()),
                close: true,
                daemon: (daemon, daemon_proc.child.id()),
            };
            let plan = Plan {
                rounds: a.real_rounds,
                min_requests: a.real_min_requests,
                segments: a.segments,
            };
            Some(measure(&setup, &a.real_concurrency, plan, &spec).await?)
        }
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "bench overhead: {cores} CPU core(s); load average before {load_before}, after {}; orchestratord log filter `{}`",
        load_average(),
        a.daemon_log
    );
    out.push_str("TTFT: client-side, from sending the request (relayed: the POST /v1/tasks) to the first token; added = relayed − direct\n");
    if a.skip_double {
        out.push_str("\nengine double: skipped (--skip-double)\n");
    } else {
        let _ = writeln!(
            out,
            "\nengine double (BENCHMARK DOUBLE): {} tokens/request, {} µs/token, TTFT {} µs, {slots} slots",
            a.tokens, a.token_interval_us, a.ttft_us
        );
        out.push_str(&table(&double_rows));
    }
    for r in double_rows.iter().filter(|r| r.conc >= 64) {
        let (p50, p99, ratio) = (r.added_ms(0.5), r.added_ms(0.99), r.ratio());
        let _ = writeln!(
            out,
            "targets at {} streams: added TTFT p50 {p50:+.2} ms (≤ 1 ms) {}; added TTFT p99 {p99:+.2} ms (≤ 5 ms) {}; relayed/direct tokens/s {ratio:.3} (≥ 0.95) {}",
            r.conc,
            verdict(p50 <= 1.0),
            verdict(p99 <= 5.0),
            verdict(ratio >= 0.95)
        );
    }
    let double_problems = problems(&double_rows, true);
    let mismatch = double_problems.iter().any(|p| p.starts_with("MISMATCH"));
    for p in double_problems {
        let _ = writeln!(out, "{p}");
    }
    match &real_rows {
        None => out.push_str("\nreal llama-server: skipped (--skip-real-engine)\n"),
        Some(rows) => {
            let model = real
                .as_ref()
                .and_then(|(_, m)| m.file_name())
                .map_or("?".into(), |f| f.to_string_lossy().into_owned());
            let _ = writeln!(
                out,
                "\nreal llama-server ({model}, -ngl {}): {} tokens/request, greedy, {} slots, {} compute threads",
                a.real_ngl,
                a.real_tokens,
                a.real_concurrency.iter().copied().max().unwrap_or(1),
                a.real_threads.map_or("default".into(), |t| t.to_string())
            );
            out.push_str(&table(rows));
            for r in rows {
                let _ = writeln!(
                    out,
                    "target at {} stream(s): relayed/direct tokens/s {:.3} (≥ 0.99) {}; added TTFT p50 {:+.2} ms",
                    r.conc,
                    r.ratio(),
                    verdict(r.ratio() >= 0.99),
                    r.added_ms(0.5)
                );
            }
            for p in problems(rows, false) {
                let _ = writeln!(out, "{p}");
            }
        }
    }
    print!("{out}");
    let failed: usize = double_rows
        .iter()
        .chain(real_rows.iter().flatten())
        .map(|r| r.direct.errors.len() + r.relayed.errors.len())
        .sum();
    if mismatch {
        bail!("the relay altered streamed text (MISMATCH above)");
    }
    if failed > 0 {
        bail!("{failed} request(s) failed; the numbers above exclude them");
    }
    Ok(())
}
