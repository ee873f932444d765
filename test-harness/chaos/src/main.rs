//! `cargo run --release -p chaos -- --profile long`: runs every scenario (or `--only NAME`)
//! and prints the figures as Markdown (also written to `--out FILE`); exits 1 when a target
//! was violated.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use chaos::{run_named, Ctx, Outcome, Profile, SCENARIOS};
use clap::Parser;

/// llama-orch hardening harness.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// `short` (what CI runs) or `long`.
    #[arg(long, default_value = "long")]
    profile: String,
    /// Run only these scenarios (repeatable): engine-chaos, daemon-crash, overload,
    /// slow-clients, schema-fuzz, parser-fuzz, auth-matrix, secrets.
    #[arg(long)]
    only: Vec<String>,
    /// Also write the report here.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let Some(profile) = Profile::by_name(&args.profile) else {
        eprintln!("unknown profile `{}`; use short or long", args.profile);
        return ExitCode::from(2);
    };
    let names: Vec<&str> = if args.only.is_empty() {
        SCENARIOS.to_vec()
    } else {
        args.only.iter().map(String::as_str).collect()
    };
    let ctx = Arc::new(Ctx::new(profile.clone()));
    let t0 = Instant::now();
    let mut report = format!(
        "## Chaos run, profile `{}` ({})\n\n",
        profile.name,
        names.join(", ")
    );
    let mut failed = false;
    for name in names {
        eprintln!("[chaos] running {name} ({} profile)", profile.name);
        let o = run_named(name, ctx.clone()).await;
        eprintln!("{}", o.render());
        failed |= !o.passed();
        report.push_str(&o.render());
        report.push('\n');
    }
    // The secrets audit spans every daemon, body and data directory of the run.
    let mut secrets = Outcome::new("secrets audit (whole run)");
    ctx.audit.report(&mut secrets);
    failed |= !secrets.passed();
    report.push_str(&secrets.render());
    report.push_str(&format!(
        "\nTotal wall time: {:.0} s\n",
        t0.elapsed().as_secs_f64()
    ));
    println!("{report}");
    if let Some(p) = args.out {
        if let Err(e) = std::fs::write(&p, &report) {
            eprintln!("cannot write {}: {e}", p.display());
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
