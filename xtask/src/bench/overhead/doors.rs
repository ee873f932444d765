//! `cargo xtask bench doors`: the daemon's CPU per relayed token on each agent door against
//! the OpenAI Chat Completions door, with the same engine (the engine double, so the daemon's
//! own cost is what is measured) in one run. Each door streams the same prompt as one user
//! message; the requests of the doors alternate in segments (chat, messages, responses, then
//! the reverse), so drift in what else the machine does falls on every door alike. The doors
//! must also stream the same text (greedy sampling on one engine): a differing text hash is
//! reported as a failure.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Result};

use super::procs::{start_daemon, start_double};
use super::{progress, Phase, Setup, Spec, Target};
use crate::bench_util::load_average;

/// Arguments of `cargo xtask bench doors`.
#[derive(clap::Args)]
pub struct DoorsArgs {
    #[command(flatten)]
    pub bins: super::Binaries,
    /// Concurrent streams, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 8])]
    pub concurrency: Vec<usize>,
    /// Tokens per request.
    #[arg(long, default_value_t = 256)]
    pub tokens: u32,
    /// The double's inter-token delay, µs.
    #[arg(long, default_value_t = 1000)]
    pub token_interval_us: u64,
    /// Requests per door and concurrency...
    #[arg(long, default_value_t = 96)]
    pub requests: usize,
    /// ...split into this many segments per door.
    #[arg(long, default_value_t = 4)]
    pub segments: usize,
}

/// The doors, as loadgen's `--target` names them; the first is the baseline.
const DOORS: [&str; 3] = ["chat", "messages", "responses"];

const PROMPT: &str = "The quick brown fox jumps over the lazy dog. Once upon a time";

/// Runs the benchmark and prints its table.
pub async fn run(a: DoorsArgs) -> Result<()> {
    let (daemon_bin, double_bin, loadgen) = a.bins.resolve()?;
    if a.concurrency.contains(&0) || a.segments == 0 {
        bail!("a concurrency and --segments must be at least 1");
    }
    let dir = tempfile::Builder::new()
        .prefix("llorch-bench-doors-")
        .tempdir()?;
    let http = reqwest::Client::new();
    let load_before = load_average();
    let slots = a.concurrency.iter().copied().max().unwrap_or(1);
    let (double_proc, engine) =
        start_double(&double_bin, dir.path(), a.token_interval_us, 0, slots).await?;
    let (daemon_proc, daemon) =
        start_daemon(&http, &daemon_bin, dir.path(), &engine, slots, 4096, "info").await?;
    let setup = Setup {
        loadgen: &loadgen,
        name: "doors",
        engine: (engine, double_proc.child.id()),
        close: false,
        daemon: (daemon.clone(), daemon_proc.child.id()),
    };
    let spec = Spec {
        prompt: PROMPT,
        tokens: a.tokens,
    };
    let target = |door: &'static str| Target::Door(door, daemon.clone());
    for door in DOORS {
        let p = setup
            .phase(
                &target(door),
                &format!("warm-{door}"),
                2,
                4,
                Duration::ZERO,
                &spec,
            )
            .await;
        if let Some(e) = p.errors.first() {
            bail!("warm-up on the {door} door failed: {e}");
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>5} {:<10} | {:>9} | {:>10} | {:>14} | {:>8} | {:>6}",
        "conc", "door", "requests", "tokens/s", "daemon µs/tok", "vs chat", "errors"
    );
    let mut problems = Vec::new();
    for &c in &a.concurrency {
        let per_segment = (a.requests / a.segments).max(c);
        progress(format!(
            "{c} streams: {} requests per door in {} segments",
            per_segment * a.segments,
            a.segments
        ));
        let mut acc: Vec<Option<Phase>> = DOORS.iter().map(|_| None).collect();
        for seg in 0..a.segments {
            let mut order: Vec<usize> = (0..DOORS.len()).collect();
            if seg % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let label = format!("{}{c}-{seg}", DOORS[i]);
                let p = setup
                    .phase(
                        &target(DOORS[i]),
                        &label,
                        c,
                        per_segment,
                        Duration::ZERO,
                        &spec,
                    )
                    .await;
                match &mut acc[i] {
                    Some(a) => a.absorb(p),
                    slot => *slot = Some(p),
                }
            }
        }
        let phases: Vec<Phase> = acc.into_iter().flatten().collect();
        let base = phases.first().and_then(Phase::daemon_us_per_token);
        let base_text = phases
            .first()
            .and_then(|p| p.texts().next().map(str::to_owned));
        for (door, p) in DOORS.iter().zip(&phases) {
            let us = p.daemon_us_per_token();
            let ratio = us.zip(base).map(|(u, b)| u / b);
            let _ = writeln!(
                out,
                "{:>5} {:<10} | {:>9} | {:>10.0} | {:>14} | {:>8} | {:>6}",
                c,
                door,
                p.samples.len(),
                p.tokens_per_s(),
                us.map_or("?".into(), |u| format!("{u:.1}")),
                ratio.map_or("?".into(), |r| format!("{r:.3}")),
                p.errors.len()
            );
            problems.extend(p.errors.iter().take(3).cloned());
            if p.texts().any(|t| Some(t) != base_text.as_deref()) {
                problems.push(format!(
                    "{door} at {c} streams streamed another text than the chat door"
                ));
            }
        }
    }
    println!(
        "bench doors: engine double ({} µs/token), {} tokens per request, load average {load_before} → {}",
        a.token_interval_us,
        a.tokens,
        load_average()
    );
    print!("{out}");
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("[bench] problem: {p}");
        }
        bail!("{} problem(s); see above", problems.len());
    }
    Ok(())
}
