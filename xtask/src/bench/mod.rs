//! `cargo xtask bench <what>`: measurements that are not timed tests. Each benchmark is one
//! variant of [`Bench`], in its own module (`overhead` here; `pools`, `eta` and `swap` in the
//! `bench_*` modules, with what they share in `bench_util`).

mod overhead;

use anyhow::{bail, Context, Result};

/// Benchmarks, one subcommand each.
#[derive(clap::Subcommand)]
pub enum Bench {
    /// Added time-to-first-token and relayed tokens/s of orchestratord versus talking to the
    /// engine directly, with the engine double and with the real llama-server.
    Overhead(overhead::OverheadArgs),
    /// Pool reload time and crash-restart time (median of several runs).
    Pools(crate::bench_pools::PoolsArgs),
    /// How true `predicted_start_ms`, `predicted_end_ms` and `on_time_probability` are: FIFO
    /// and mixed-priority rounds of mixed-length tasks on the real llama-server.
    Eta(crate::bench_eta::EtaArgs),
    /// Models on demand: cold load, swap (evict one, load another) and the first token of a
    /// task at an unloaded pool, against the engine's load time alone.
    Swap(crate::bench_swap::SwapArgs),
    /// The daemon's CPU per relayed token on each agent door (Anthropic Messages, OpenAI
    /// Responses) against the Chat Completions door, on one engine in one run.
    Doors(overhead::doors::DoorsArgs),
}

/// Runs a benchmark on a multi-threaded tokio runtime; Ctrl-C stops it (and its processes).
pub fn run(cmd: Bench) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(async {
        // Dropping the benchmark future drops its process guards, which kill the processes.
        tokio::select! {
            r = async {
                match cmd {
                    Bench::Overhead(a) => overhead::run(a).await,
                    Bench::Pools(a) => crate::bench_pools::run(a).await,
                    Bench::Eta(a) => crate::bench_eta::run(a).await,
                    Bench::Swap(a) => crate::bench_swap::run(a).await,
                    Bench::Doors(a) => overhead::doors::run(a).await,
                }
            } => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        }
    })
}
