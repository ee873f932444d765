//! The Anthropic Messages door driven by the official `anthropic` Python SDK
//! (test-harness/anthropic-sdk/test_anthropic_sdk.py, virtualenv from
//! `bash test-harness/anthropic-sdk/setup.sh`, cached under the provisioning cache) against a
//! real daemon, llama-server and the real instruct model ([`orch_harness::chat_model`]):
//! a real answer, a stream, a tool round trip, count_tokens, the max_tokens clamp and errors.
//! Without its setup the test fails naming that command.

use std::process::Command;
use std::time::Instant;

use orch_harness::{chat_pool, engine, Daemon, DaemonOptions};

use crate::support::{bin, cache_dir, repo_root};

#[test]
fn anthropic_python_sdk() {
    let python = cache_dir().join("venv-anthropic/bin/python");
    assert!(
        python.is_file(),
        "no Anthropic SDK virtualenv at {}: run `bash test-harness/anthropic-sdk/setup.sh` first",
        python.display()
    );
    let token = "anthropic-sdk-token";
    // SmolLM2's own template has no tools (llama-server would ignore them): the pool renders
    // them, and the calls, with a ChatML template in the Hermes style.
    let template = repo_root().join("test-harness/anthropic-sdk/chatml-tools.jinja");
    let pool = chat_pool("chat", &engine(), 1, 4096).replace(
        "flags: [\"-t\", \"1\"]",
        &format!(
            "flags: [\"-t\", \"1\", \"--chat-template-file\", \"{}\"]",
            template.display()
        ),
    );
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\n\
         model_aliases: {{ \"claude-*\": chat }}\npools:\n{pool}"
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    );
    let t0 = Instant::now();
    let out = Command::new(&python)
        .arg(repo_root().join("test-harness/anthropic-sdk/test_anthropic_sdk.py"))
        .env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", token)
        .env("MODEL", "claude-haiku-4-5")
        .env_remove("ANTHROPIC_BASE_URL")
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_AUTH_TOKEN")
        .output()
        .expect("run the Anthropic SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- script ({:.1}s) stdout:\n{stdout}\n--- script stderr:\n{stderr}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() && stdout.contains("ANTHROPIC SDK OK"),
        "the Anthropic SDK script failed ({:?}); daemon log:\n{}",
        out.status.code(),
        d.logs()
    );
}
