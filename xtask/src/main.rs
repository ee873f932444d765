//! Repository automation, run as `cargo xtask <command>`.
//!
//! Each command lives in its own module; this file only parses the command
//! line and dispatches.

mod bench;
mod bench_eta;
mod bench_pools;
mod bench_swap;
mod bench_util;
mod chaos;
mod contracts;
mod provision;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `cargo xtask` command line.
#[derive(Parser)]
#[command(name = "xtask", about = "llama-orch repository automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build (or reuse) a CPU-only llama-server, a tiny test model and fetch (or reuse) the
    /// real chat model; prints `LLAMA_SERVER=`, `TEST_MODEL=` and `CHAT_MODEL=<path>` on stdout.
    ProvisionEngine(provision::ProvisionArgs),
    /// Build (or reuse) a llama-server for this machine, with CUDA when a CUDA toolkit is
    /// found (`scripts/install.sh` uses it); prints `LLAMA_SERVER=<path>`.
    BuildEngine(provision::BuildEngineArgs),
    /// Write (or reuse) a tiny random-weight test model; prints its path.
    GenModel(provision::GenModelArgs),
    /// Regenerate contracts/openapi.json and contracts/config.schema.json from the code.
    RegenContracts,
    /// Benchmarks (not timed tests); see `cargo xtask bench --help`.
    #[command(subcommand)]
    Bench(Box<bench::Bench>),
    /// The hardening harness (chaos, fuzzing, overload, soak); `--profile short|long`.
    Chaos(chaos::ChaosArgs),
    // Further commands go here, one module each.
}

fn main() -> ExitCode {
    let result = match Cli::parse().cmd {
        Cmd::ProvisionEngine(args) => provision::provision_engine(&args),
        Cmd::BuildEngine(args) => provision::build_engine(&args),
        Cmd::GenModel(args) => provision::gen_model(&args),
        Cmd::RegenContracts => contracts::regen(),
        Cmd::Bench(b) => bench::run(*b),
        Cmd::Chaos(args) => chaos::run(&args),
    };
    // One-line error chain; anyhow's default `Debug` report would add a
    // backtrace whenever RUST_BACKTRACE is set, which is noise here.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
