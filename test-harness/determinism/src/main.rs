//! `cargo run --release -p determinism -- --config FILE`: the determinism suite on any machine
//! (e.g. a pool with `replicas: 2` on real GPUs). FILE is an ordinary `orchestratord` config;
//! its `bind` and `data_dir` are replaced by a free port and a fresh directory per run. Prints
//! the Markdown report (also to `--out FILE`); exits 1 on a violation.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use determinism::{config_for_harness, daemon_bin, fixed_seeds, run, Options};

/// llama-orch determinism suite (docs/ENGINES.md, "Determinism across replicas").
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// orchestratord config (YAML) with a pool of two or more replicas.
    #[arg(long)]
    config: PathBuf,
    /// Pool to test (default: the first with two ready replicas).
    #[arg(long)]
    pool: Option<String>,
    /// Number of fixed seeds.
    #[arg(long, default_value_t = 64)]
    seeds: usize,
    /// Tokens per task.
    #[arg(long, default_value_t = 16)]
    max_tokens: u32,
    /// Runs, each on a fresh daemon.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Prompt.
    #[arg(long)]
    prompt: Option<String>,
    /// orchestratord binary (default: built from this workspace; env ORCHESTRATORD_BIN).
    #[arg(long)]
    daemon: Option<PathBuf>,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    match main_inner(args).await {
        Ok(passed) => {
            if passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("determinism: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn main_inner(args: Args) -> anyhow::Result<bool> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", args.config.display()))?;
    let daemon = match args.daemon {
        Some(d) => d,
        None => daemon_bin()?,
    };
    let mut opts = Options::new(daemon, config_for_harness(&text)?);
    opts.pool = args.pool;
    opts.seeds = fixed_seeds(args.seeds);
    opts.max_tokens = args.max_tokens;
    opts.runs = args.runs;
    if let Some(p) = args.prompt {
        opts.prompt = p;
    }
    let report = run(&opts).await?;
    let text = report.render();
    println!("{text}");
    if let Some(p) = args.out {
        std::fs::write(&p, &text)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", p.display()))?;
    }
    Ok(report.passed())
}
