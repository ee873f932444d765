//! Helpers every module of the e2e binary shares (what is not daemon-specific lives in
//! `orch_harness`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch_harness::Daemon;
use serde_json::Value;

pub use orch_harness::cache_dir;

/// The `orchestratord` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orchestratord"))
}

/// The workspace root (contracts, dashboards, test-harness scripts live there).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `GET /v1/pools/{pool}/health`.
pub async fn health(d: &Daemon, pool: &str) -> Value {
    d.get(&format!("/v1/pools/{pool}/health")).await.1
}

/// Polls the pool's health until `ok` (two minutes at most, a generous bound for a loaded CI
/// box); logs how long it took.
pub async fn wait_health(d: &Daemon, pool: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    loop {
        let h = health(d, pool).await;
        if ok(&h) {
            eprintln!("{pool}: {what} after {:?}", t0.elapsed());
            return h;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "pool {pool}: {what} never happened after {:?}: {h}\nlog:\n{}",
            t0.elapsed(),
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sum of the samples of metric `name` whose lines contain every one of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
