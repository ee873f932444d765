//! `cargo xtask chaos`: the hardening harness (`test-harness/chaos`) in one command.
//!
//! Provisions the test engine and the schemathesis venv (both cached), builds orchestratord and
//! the harness in release mode, and runs the chosen profile. The short profile is also what
//! `cargo test -p chaos` runs in CI; the long one is for a local machine (tens of minutes).

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::provision::{self, ProvisionArgs};

/// Arguments of `cargo xtask chaos`.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// `short` (the CI profile) or `long`.
    #[arg(long, default_value = "long")]
    profile: String,
    /// Run only these scenarios (repeatable): engine-chaos, daemon-crash, overload,
    /// slow-clients, schema-fuzz, parser-fuzz, auth-matrix, secrets.
    #[arg(long)]
    only: Vec<String>,
    /// Also write the figures (Markdown) to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// Runs the harness; fails when a target was violated.
pub fn run(args: &ChaosArgs) -> Result<()> {
    let provision::Provisioned { server, model, .. } =
        provision::provision(&ProvisionArgs::defaults())?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("xtask has no parent directory")?;
    step(
        Command::new("bash")
            .arg("test-harness/chaos/setup-schemathesis.sh")
            .current_dir(root),
        "setting up schemathesis",
    )?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    step(
        Command::new(&cargo)
            .args(["build", "--release", "-p", "orchestratord", "-p", "chaos"])
            .current_dir(root),
        "building orchestratord and the chaos harness",
    )?;
    let release = root.join("target/release");
    let mut cmd = Command::new(release.join("chaos"));
    cmd.current_dir(root)
        .env("LLAMA_SERVER", &server)
        .env("TEST_MODEL", &model)
        .env("ORCHESTRATORD_BIN", release.join("orchestratord"))
        .args(["--profile", &args.profile]);
    for o in &args.only {
        cmd.args(["--only", o]);
    }
    if let Some(out) = &args.out {
        cmd.arg("--out").arg(out);
    }
    step(
        &mut cmd,
        "the chaos harness (it printed the violated targets above)",
    )
}

fn step(cmd: &mut Command, what: &str) -> Result<()> {
    eprintln!("[xtask] {what}");
    let status = cmd.status().with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
