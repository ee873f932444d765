//! Determinism suite (docs/ENGINES.md, "Determinism across replicas"): through the real daemon,
//! the same request with the same seed gives a byte-identical token stream on every replica of
//! a pool (same engine, same model) and across runs (a fresh daemon and fresh engine processes
//! each run); and a table of latency statistics per replica and device.
//!
//! How both replicas get each seed: the dispatcher sends a task to the least-loaded replica
//! with a free slot, so the suite submits one copy of each seed's request per replica at the
//! same time; with the pool's slots full, the copies spread over the replicas. Which replica
//! served a copy is read from the stream's `started.replica_id`. A round whose copies did not
//! cover every replica (a slot freed late) is repeated, a bounded number of times.
//!
//! Two entry points: `tests/determinism.rs` (CI, CPU llama-server replicas, part of
//! `cargo test --workspace`) and `cargo run -p determinism -- --config FILE` (any machine, e.g.
//! both replicas on real GPUs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use orch_harness::{Daemon, DaemonOptions};
use serde_json::{json, Value};

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    /// `orchestratord` binary.
    pub daemon: PathBuf,
    /// Daemon config (YAML) without `bind` and `data_dir`, which the harness sets.
    pub config: String,
    /// Pool under test; `None`: the first pool with at least two replicas.
    pub pool: Option<String>,
    /// Seeds, each run once per replica per run.
    pub seeds: Vec<u64>,
    /// Tokens per task.
    pub max_tokens: u32,
    /// Prompt.
    pub prompt: String,
    /// Sampling temperature (> 0, so the seed matters).
    pub temperature: f32,
    /// Runs, each on a freshly started daemon.
    pub runs: usize,
    /// Rounds per seed and run before giving up on covering every replica.
    pub attempts: usize,
}

impl Options {
    /// The suite's defaults on `config`: 64 fixed seeds, 16 tokens, 2 runs.
    pub fn new(daemon: PathBuf, config: String) -> Self {
        Self {
            daemon,
            config,
            pool: None,
            seeds: fixed_seeds(64),
            max_tokens: 16,
            prompt: "Once upon a time, in a land far away,".into(),
            temperature: 0.8,
            runs: 2,
            attempts: 6,
        }
    }
}

/// `n` fixed, well-spread seeds (SplitMix64 of 0..n, folded into 31 bits so every engine takes
/// them).
pub fn fixed_seeds(n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| {
            let mut z = i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) & 0x7FFF_FFFF
        })
        .collect()
}

/// One finished task.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Run index.
    pub run: usize,
    /// Seed.
    pub seed: u64,
    /// `started.replica_id`.
    pub replica: String,
    /// `started.device`.
    pub device: String,
    /// `started.engine` and `engine_version`.
    pub engine: String,
    /// Token texts, in order, exactly as streamed.
    pub tokens: Vec<String>,
    /// Submit → first token, as the client sees it.
    pub ttft: Duration,
    /// Submit → `end`, as the client sees it.
    pub total: Duration,
    /// `end.decode_ms`: first token → done, measured by the daemon.
    pub decode_ms: u64,
    /// `end.finish_reason`.
    pub finish_reason: String,
}

impl Sample {
    /// End-to-end rate: tokens per second from submit to `end`.
    pub fn e2e_tokens_per_s(&self) -> Option<f64> {
        let s = self.total.as_secs_f64();
        (s > 0.0).then(|| self.tokens.len() as f64 / s)
    }
}

/// What a run of the suite found.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Pool tested.
    pub pool: String,
    /// Replica ids of the pool.
    pub replicas: Vec<String>,
    /// Seeds.
    pub seeds: usize,
    /// Runs.
    pub runs: usize,
    /// Tokens per task.
    pub max_tokens: u32,
    /// Every finished task.
    pub samples: Vec<Sample>,
    /// Rounds repeated because their copies did not cover every replica.
    pub repeats: usize,
    /// Violations; empty means pass.
    pub failures: Vec<String>,
    /// Wall time.
    pub wall: Duration,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// No violation.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// Seeds whose streams were identical on every replica and in every run.
    pub fn identical_seeds(&self) -> usize {
        let mut by_seed: BTreeMap<u64, BTreeSet<&Vec<String>>> = BTreeMap::new();
        for s in &self.samples {
            by_seed.entry(s.seed).or_default().insert(&s.tokens);
        }
        by_seed.values().filter(|v| v.len() == 1).count()
    }

    /// The Markdown report: verdict, then latency per replica and device.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "## Determinism: pool `{}`, replicas {}, {} seeds × {} runs, {} tokens per task",
            self.pool,
            self.replicas.join(", "),
            self.seeds,
            self.runs,
            self.max_tokens
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "**{}**: {}/{} seeds byte-identical across replicas and runs; {} streams; {} round(s) repeated to cover every replica; {:.1} s",
            if self.passed() { "PASS" } else { "FAIL" },
            self.identical_seeds(),
            self.seeds,
            self.samples.len(),
            self.repeats,
            self.wall.as_secs_f64()
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| replica | device | engine | tasks | TTFT p50 ms | TTFT p95 ms | task p50 ms | decode tokens/s | end-to-end tokens/s p50 |"
        );
        let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|---:|---:|");
        let mut groups: BTreeMap<(&str, &str), Vec<&Sample>> = BTreeMap::new();
        for s in &self.samples {
            groups
                .entry((s.replica.as_str(), s.device.as_str()))
                .or_default()
                .push(s);
        }
        for ((replica, device), ss) in groups {
            let mut ttft: Vec<f64> = ss.iter().map(|s| s.ttft.as_secs_f64() * 1e3).collect();
            ttft.sort_by(f64::total_cmp);
            let mut total: Vec<f64> = ss.iter().map(|s| s.total.as_secs_f64() * 1e3).collect();
            total.sort_by(f64::total_cmp);
            let mut e2e: Vec<f64> = ss.iter().filter_map(|s| s.e2e_tokens_per_s()).collect();
            e2e.sort_by(f64::total_cmp);
            // Decode rate over all tasks: tokens after the first per daemon-measured decode
            // second (one task's decode is often under a millisecond on small models).
            let toks: usize = ss.iter().map(|s| s.tokens.len().saturating_sub(1)).sum();
            let ms: u64 = ss.iter().map(|s| s.decode_ms).sum();
            let decode = if ms > 0 {
                format!("{:.0}", toks as f64 * 1e3 / ms as f64)
            } else {
                "< 1 ms".to_owned()
            };
            let _ = writeln!(
                o,
                "| {replica} | {device} | {} | {} | {:.1} | {:.1} | {:.1} | {decode} | {:.0} |",
                ss[0].engine,
                ss.len(),
                percentile(&ttft, 50.0),
                percentile(&ttft, 95.0),
                percentile(&total, 50.0),
                percentile(&e2e, 50.0),
            );
        }
        if !self.failures.is_empty() {
            let _ = writeln!(o, "\nViolations:");
            for f in self.failures.iter().take(50) {
                let _ = writeln!(o, "- {f}");
            }
            if self.failures.len() > 50 {
                let _ = writeln!(o, "- … and {} more", self.failures.len() - 50);
            }
        }
        o
    }
}

/// Runs the suite.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let t0 = Instant::now();
    let mut rep = Report {
        seeds: opts.seeds.len(),
        runs: opts.runs,
        max_tokens: opts.max_tokens,
        ..Default::default()
    };
    for run in 0..opts.runs {
        let (bin, config) = (opts.daemon.clone(), opts.config.clone());
        let d = tokio::task::spawn_blocking(move || {
            Daemon::start(
                &bin,
                DaemonOptions {
                    config,
                    ..Default::default()
                },
            )
        })
        .await
        .context("starting the daemon")?;
        let result = run_once(&d, opts, run, &mut rep).await;
        // Stopping waits for the engines to exit: off the async threads.
        tokio::task::spawn_blocking(move || drop(d)).await?;
        result?;
    }
    compare(&mut rep, opts);
    rep.wall = t0.elapsed();
    Ok(rep)
}

/// The pool under test and its ready replicas. A pool is ready with one ready replica, so
/// this waits (up to two minutes) until the pool has at least two.
async fn pool_under_test(d: &Daemon, want: Option<&str>) -> anyhow::Result<(String, Vec<String>)> {
    let ready = |p: &Value| -> Vec<String> {
        p["health"]["replicas"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter(|r| r["state"] == "ready")
                    .filter_map(|r| r["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, pools) = d.get("/v1/pools").await;
        let list = pools["pools"].as_array().cloned().unwrap_or_default();
        if let Some(id) = want {
            if !list.iter().any(|p| p["id"] == id) {
                bail!("the config has no pool `{id}`");
            }
        }
        let found = list
            .iter()
            .filter(|p| want.is_none_or(|id| p["id"] == id))
            .find(|p| ready(p).len() >= 2);
        if let Some(p) = found {
            return Ok((p["id"].as_str().unwrap_or_default().to_owned(), ready(p)));
        }
        if Instant::now() > deadline {
            bail!(
                "no pool{} with two ready replicas after 120 s (give the pool `replicas: 2`); pools: {pools}",
                want.map(|w| format!(" `{w}`")).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run_once(d: &Daemon, opts: &Options, run: usize, rep: &mut Report) -> anyhow::Result<()> {
    let (pool, replicas) = pool_under_test(d, opts.pool.as_deref()).await?;
    if run == 0 {
        rep.pool = pool.clone();
        rep.replicas = replicas.clone();
    } else if rep.replicas != replicas {
        rep.failures.push(format!(
            "run {run}: replicas {replicas:?} differ from run 0's {:?}",
            rep.replicas
        ));
    }
    let client = client(d)?;
    for &seed in &opts.seeds {
        let mut covered = BTreeSet::new();
        for attempt in 0..opts.attempts.max(1) {
            if attempt > 0 {
                rep.repeats += 1;
                // Let the dispatcher see the previous round's slots free.
                tokio::time::sleep(Duration::from_millis(20 * attempt as u64)).await;
            }
            let handles: Vec<_> = (0..replicas.len())
                .map(|j| {
                    let body = json!({
                        "task_id": format!("det-r{run}-s{seed}-a{attempt}-{j}"),
                        "model_ref": pool, "priority": "interactive",
                        "prompt": opts.prompt, "max_tokens": opts.max_tokens,
                        "seed": seed, "temperature": opts.temperature, "determinism": "strict",
                    });
                    tokio::spawn(one_task(client.clone(), d.base.clone(), body))
                })
                .collect();
            for h in handles {
                match h.await? {
                    Ok(mut s) => {
                        s.run = run;
                        s.seed = seed;
                        covered.insert(s.replica.clone());
                        rep.samples.push(s);
                    }
                    Err(e) => rep
                        .failures
                        .push(format!("run {run}, seed {seed}: task failed: {e}")),
                }
            }
            if replicas.iter().all(|r| covered.contains(r)) {
                break;
            }
        }
        for r in replicas.iter().filter(|r| !covered.contains(*r)) {
            rep.failures.push(format!(
                "run {run}, seed {seed}: never served by replica {r} in {} rounds",
                opts.attempts
            ));
        }
    }
    Ok(())
}

/// An HTTP client for the daemon. No Nagle: a POST's body would otherwise wait for the ACK of
/// its headers (the server's delayed ACK, ~40 ms), which would show up as TTFT.
fn client(d: &Daemon) -> anyhow::Result<reqwest::Client> {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = &d.token {
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {t}")
                .parse()
                .context("token is not a header value")?,
        );
    }
    Ok(reqwest::Client::builder()
        .default_headers(h)
        .tcp_nodelay(true)
        .build()?)
}

/// Submits one task and reads its stream with timestamps.
async fn one_task(client: reqwest::Client, base: String, body: Value) -> Result<Sample, String> {
    let id = body["task_id"].as_str().unwrap_or_default().to_owned();
    let t0 = Instant::now();
    let r = client
        .post(format!("{base}/v1/tasks"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST /v1/tasks: {e}"))?;
    if r.status() != 202 {
        let st = r.status();
        return Err(format!(
            "{id}: HTTP {st}: {}",
            r.text().await.unwrap_or_default()
        ));
    }
    let r = client
        .get(format!("{base}/v1/tasks/{id}/stream"))
        .send()
        .await
        .map_err(|e| format!("GET stream: {e}"))?;
    let mut events = r.bytes_stream().eventsource();
    let mut s = Sample {
        run: 0,
        seed: 0,
        replica: String::new(),
        device: String::new(),
        engine: String::new(),
        tokens: Vec::new(),
        ttft: Duration::ZERO,
        total: Duration::ZERO,
        decode_ms: 0,
        finish_reason: String::new(),
    };
    let mut first = None;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| format!("{id}: stream: {e}"))?;
        let v: Value = serde_json::from_str(&ev.data).unwrap_or(Value::Null);
        match ev.event.as_str() {
            "started" => {
                s.replica = v["replica_id"].as_str().unwrap_or("?").to_owned();
                s.device = v["device"].as_str().unwrap_or("?").to_owned();
                s.engine = format!(
                    "{} {}",
                    v["engine"].as_str().unwrap_or("?"),
                    v["engine_version"].as_str().unwrap_or("?")
                );
            }
            "token" => {
                first.get_or_insert_with(Instant::now);
                s.tokens
                    .push(v["t"].as_str().unwrap_or_default().to_owned());
            }
            "end" => {
                s.finish_reason = v["finish_reason"].as_str().unwrap_or("?").to_owned();
                s.decode_ms = v["decode_ms"].as_u64().unwrap_or(0);
                s.total = t0.elapsed();
                s.ttft = first.map_or(s.total, |f| f - t0);
                return Ok(s);
            }
            "error" => return Err(format!("{id}: error event: {}", ev.data)),
            _ => {}
        }
    }
    Err(format!("{id}: stream ended without `end`"))
}

fn first_difference(a: &[String], b: &[String]) -> String {
    let i = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "first difference at token {i}: {:?} vs {:?}",
        a.get(i),
        b.get(i)
    )
}

/// Checks identity per seed across replicas and runs, and that seeds matter at all.
fn compare(rep: &mut Report, opts: &Options) {
    let mut by_seed: BTreeMap<u64, Vec<&Sample>> = BTreeMap::new();
    for s in &rep.samples {
        by_seed.entry(s.seed).or_default().push(s);
    }
    let mut failures = Vec::new();
    for (seed, ss) in &by_seed {
        let reference = ss[0];
        for s in &ss[1..] {
            if s.tokens != reference.tokens {
                failures.push(format!(
                    "seed {seed}: run {} on {} differs from run {} on {} ({})",
                    s.run,
                    s.replica,
                    reference.run,
                    reference.replica,
                    first_difference(&reference.tokens, &s.tokens)
                ));
            }
        }
        for s in ss {
            if s.tokens.is_empty() {
                failures.push(format!(
                    "seed {seed}: run {} on {} streamed no tokens",
                    s.run, s.replica
                ));
            }
        }
    }
    // Identity is only meaningful if the seed drives sampling: most seeds must differ.
    let distinct: BTreeSet<String> = by_seed.values().map(|ss| ss[0].tokens.concat()).collect();
    if opts.seeds.len() >= 4 && distinct.len() * 2 < by_seed.len() {
        failures.push(format!(
            "only {} distinct outputs for {} seeds: the seed does not seem to reach the sampler",
            distinct.len(),
            by_seed.len()
        ));
    }
    rep.failures.extend(failures);
}

/// The daemon binary of this build (`orch_harness::daemon_bin`: built when stale;
/// `ORCHESTRATORD_BIN` overrides).
pub fn daemon_bin() -> anyhow::Result<PathBuf> {
    orch_harness::daemon_bin().map_err(anyhow::Error::msg)
}

/// A daemon config file's text without `bind` and `data_dir`, which the harness sets (each run
/// gets a fresh data directory and a free port).
pub fn config_for_harness(text: &str) -> anyhow::Result<String> {
    let mut v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).context("config is not YAML")?;
    let Some(m) = v.as_mapping_mut() else {
        bail!("config is not a YAML mapping");
    };
    m.remove("bind");
    m.remove("data_dir");
    Ok(serde_yaml_ng::to_string(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_fixed_distinct_and_small() {
        let a = fixed_seeds(64);
        assert_eq!(a, fixed_seeds(64));
        assert_eq!(a.iter().collect::<BTreeSet<_>>().len(), 64);
        assert!(a.iter().all(|s| *s <= 0x7FFF_FFFF));
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn harness_config_drops_bind_and_data_dir() {
        let c = config_for_harness("bind: 0.0.0.0:80\ndata_dir: /x\npools:\n  - id: a\n").unwrap();
        assert!(!c.contains("bind") && !c.contains("data_dir") && c.contains("pools"));
    }

    fn sample(run: usize, seed: u64, replica: &str, toks: &[&str]) -> Sample {
        Sample {
            run,
            seed,
            replica: replica.into(),
            device: "cpu".into(),
            engine: "llamacpp b1".into(),
            tokens: toks.iter().map(|t| (*t).to_owned()).collect(),
            ttft: Duration::from_millis(5),
            total: Duration::from_millis(15),
            decode_ms: 10,
            finish_reason: "length".into(),
        }
    }

    #[test]
    fn compare_finds_a_differing_replica() {
        let mut rep = Report {
            samples: vec![
                sample(0, 1, "p-r0", &["a", "b"]),
                sample(0, 1, "p-r1", &["a", "c"]),
            ],
            ..Default::default()
        };
        compare(&mut rep, &Options::new(PathBuf::new(), String::new()));
        assert_eq!(rep.failures.len(), 1);
        assert!(rep.failures[0].contains("token 1"), "{:?}", rep.failures);
        assert!(rep.render().contains("FAIL"));
    }
}
