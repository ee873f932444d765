//! `cargo xtask regen-contracts`: rewrites `contracts/openapi.json` and
//! `contracts/config.schema.json` from the Rust types, by running the drift test in update mode
//! (the generator and the check are one piece of code).

use std::process::Command;

use anyhow::{bail, Context, Result};

/// Regenerates the committed contracts.
pub fn regen() -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(cargo)
        .args([
            "test",
            "--quiet",
            "-p",
            "orchestratord",
            "--test",
            "e2e",
            "contracts::",
        ])
        .env("UPDATE_CONTRACTS", "1")
        .status()
        .context("running the contracts test")?;
    if !st.success() {
        bail!("regenerating contracts failed ({st})");
    }
    eprintln!("[xtask] contracts/openapi.json and contracts/config.schema.json regenerated");
    Ok(())
}
