//! `llorch pull` against a real orchestratord whose hub is a local fixture
//! (`orch_harness::hub`, the huggingface_hub layout; never a real hub): progress on stderr and
//! exit 0 for a good pull; non-zero with the reason for a digest mismatch.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use orch_harness::hub::{sha256_hex, test_bytes, HubFixture};
use orch_harness::{Daemon, DaemonOptions};
use serde_json::Value;

use crate::common::{daemon_bin, llorch_bin};

const TOKEN: &str = "cli-pull-token";

fn start(fx: &HubFixture) -> Daemon {
    Daemon::start(
        &daemon_bin(),
        DaemonOptions {
            token: Some(TOKEN.into()),
            env: vec![("HF_ENDPOINT".into(), fx.base.clone())],
            ..Default::default()
        },
    )
}

/// Runs `llorch ARGS` against `d` off the async threads (the fixture hub runs on them).
async fn llorch(d: &Daemon, args: &[&str]) -> Output {
    let mut c = Command::new(llorch_bin());
    let cfg_home = std::env::temp_dir().join("llorch-cli-test-no-config");
    c.env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", TOKEN)
        .env("XDG_CONFIG_HOME", cfg_home)
        .env_remove("LLORCH_CLI_CONFIG")
        .env_remove("AUTH_TOKEN")
        .args(args)
        .stdin(Stdio::null());
    let shown = args.join(" ");
    let t0 = Instant::now();
    let out = tokio::task::spawn_blocking(move || c.output().expect("run llorch"))
        .await
        .expect("join");
    eprintln!(
        "$ llorch {shown} -> {:?} in {:?}\n--- stderr:\n{}",
        out.status.code(),
        t0.elapsed(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_shows_progress_and_registers_then_fails_loudly_on_a_digest_mismatch() {
    let fx = HubFixture::start().await;
    let oid = fx.add_file("org/repo", "m-Q4_K_M.gguf", test_bytes(3 * 1024 * 1024, 21));
    // A link slow enough (48 chunks, 50 ms apart) for several progress lines.
    fx.chunk_delay(Duration::from_millis(50));
    let d = start(&fx);

    let out = llorch(&d, &["pull", "hf:org/repo:q4_k_m"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "m-Q4_K_M",
        "stdout is the catalog id"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("[pulling hf:org/repo:q4_k_m as m-Q4_K_M: 1 file, 3.0 MiB"),
        "{err}"
    );
    let progress: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("[pull m-Q4_K_M: downloading:"))
        .collect();
    assert!(!progress.is_empty(), "progress lines: {err}");
    assert!(
        progress
            .iter()
            .any(|l| l.contains(" / 3.0 MiB (") && l.contains("/s, ETA ")),
        "a progress line shows bytes, rate and ETA: {progress:?}"
    );
    assert!(err.contains(&format!("verified {oid}")), "{err}");

    // `--json` prints the registered model.
    let out = llorch(
        &d,
        &[
            "--json",
            "pull",
            "hf:org/repo/m-Q4_K_M.gguf",
            "--id",
            "again",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0));
    let m: Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(m["id"], "again");
    assert_eq!(m["digest"], oid.as_str());
    assert_eq!(m["state"], "Active");

    // A file whose bytes do not match the hub's lfs.oid: non-zero, and the reason.
    let bytes = test_bytes(256 * 1024, 22);
    let truth = format!("sha256:{}", sha256_hex(&bytes));
    let wrong = "cd".repeat(32);
    fx.add_file_with_oid("org/repo", "bad.gguf", bytes, &wrong);
    let out = llorch(&d, &["pull", "hf:org/repo/bad.gguf"]).await;
    assert_eq!(out.status.code(), Some(1), "a refused pull exits 1");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("DIGEST_MISMATCH"), "{err}");
    assert!(
        err.contains(&truth) && err.contains(&format!("sha256:{wrong}")),
        "both digests: {err}"
    );
    assert!(out.stdout.is_empty());

    // Refusals before the download (an unknown file) exit with their HTTP class.
    let out = llorch(&d, &["pull", "hf:org/repo/nope.gguf"]).await;
    assert_eq!(out.status.code(), Some(3), "not found");
}
