//! What the CLI's end-to-end tests share: where the binaries under test are.

use std::path::PathBuf;

/// The `llorch` binary cargo built for this test run.
pub fn llorch_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_llorch"))
}

/// The directory cargo put this test run's binaries in (llorch and orchestratord).
pub fn bin_dir() -> PathBuf {
    llorch_bin()
        .parent()
        .expect("llorch has a parent dir")
        .to_owned()
}

/// The daemon binary of this build (`orch_harness::daemon_bin`, `ORCHESTRATORD_BIN` overrides).
pub fn daemon_bin() -> PathBuf {
    orch_harness::daemon_bin().unwrap_or_else(|e| panic!("{e}"))
}
