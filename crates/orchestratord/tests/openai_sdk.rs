//! The OpenAI-compatible door driven by the official `openai` Python SDK
//! (test-harness/openai-sdk/test_openai_sdk.py) against a real daemon and llama-server.
//! The SDK's virtualenv comes from `bash test-harness/openai-sdk/setup.sh` (cached under the
//! provisioning cache); without it this test fails with that command.

use std::path::PathBuf;
use std::process::Command;

use orch_harness::{engine, llama_pool, Daemon, DaemonOptions};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("llama-orch");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llama-orch")
}

#[test]
fn openai_python_sdk() {
    let python = cache_dir().join("venv-openai/bin/python");
    assert!(
        python.is_file(),
        "no OpenAI SDK virtualenv at {}: run `bash test-harness/openai-sdk/setup.sh` first",
        python.display()
    );
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\nqueue: {{ capacity: 1 }}\npools:\n{}",
        llama_pool("tiny", &e, 1, 1, 32768)
    );
    let token = "sdk-test-token";
    let d = Daemon::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_orchestratord")),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    );
    let script = repo_root().join("test-harness/openai-sdk/test_openai_sdk.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", token)
        .env("MODEL", "tiny")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run the OpenAI SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- script stdout:\n{stdout}\n--- script stderr:\n{stderr}");
    assert!(
        out.status.success() && stdout.contains("OPENAI SDK OK"),
        "the OpenAI SDK script failed ({:?}); daemon log:\n{}",
        out.status.code(),
        d.logs()
    );
}
