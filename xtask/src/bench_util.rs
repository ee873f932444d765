//! What the engine benchmarks (`bench pools`, `bench swap`, `bench eta`) share.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// `p` if it names a file, else an error saying how to provision it.
pub fn need_file(p: Option<PathBuf>, what: &str) -> Result<PathBuf> {
    match p {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => bail!("{what} `{}` does not exist", p.display()),
        None => bail!(
            "no {what}: run `eval \"$(cargo xtask provision-engine)\"` (sets LLAMA_SERVER and TEST_MODEL) and `cargo xtask gen-model --seed 43`"
        ),
    }
}

/// Stops a child: SIGTERM (a daemon then stops its engines), SIGKILL after 15 s.
pub fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Median, minimum and maximum (sorts `v`; zeros when empty).
pub fn median_min_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    (
        median,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}
