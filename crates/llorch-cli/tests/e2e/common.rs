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

/// The daemon binary next to `llorch` in the target directory, or `ORCHESTRATORD_BIN`.
pub fn daemon_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("ORCHESTRATORD_BIN") {
        return PathBuf::from(p);
    }
    let p = bin_dir().join(format!("orchestratord{}", std::env::consts::EXE_SUFFIX));
    assert!(
        p.is_file(),
        "the orchestratord binary is missing at {}: build it with `cargo build -p orchestratord` \
         (`cargo test --workspace` builds it), or set ORCHESTRATORD_BIN",
        p.display()
    );
    p
}
