//! The OpenAI Responses door driven by the real clients against a real daemon, llama-server
//! and the real instruct model (SmolLM2-135M-Instruct, `orch_harness::chat_model`): the
//! official `openai` Python SDK (test-harness/openai-sdk/test_responses.py, virtualenv from
//! `bash test-harness/openai-sdk/setup.sh`) and the OpenAI Agents SDK running a one-tool
//! agent to completion (test-harness/openai-agents/test_agents.py, virtualenv from
//! `bash test-harness/openai-agents/setup.sh`). One daemon serves both scripts. Without a
//! setup the test fails naming its command.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use orch_harness::{chat_pool, engine, llama_pool, Daemon, DaemonOptions};

use crate::support::{bin, cache_dir, repo_root};

/// The config of a daemon with pool `chat` (the real instruct model, its own template) and
/// pool `tiny-tools`: the random-weight test model with the tool-rendering template
/// test-harness/openai-sdk/tool-template.jinja, as in the `openai_sdk` module. This llama-server
/// build forces no call for `tool_choice: required` with the instruct model's tokenizer
/// (docs/DECISIONS.md), so the tool round trips push the test model into a call with
/// `logit_bias` (sent through the SDKs' `extra_body`) and let the grammar write the rest.
fn config() -> String {
    let e = engine();
    let template = repo_root().join("test-harness/openai-sdk/tool-template.jinja");
    let tools_pool = llama_pool("tiny-tools", &e, 1, 1, 4096).replace(
        "flags: [\"-t\", \"1\"]",
        &format!(
            "flags: [\"-t\", \"1\", \"--chat-template-file\", \"{}\"]",
            template.display()
        ),
    );
    format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\n\
         model_aliases: {{ \"gpt-*\": chat }}\npools:\n{}{tools_pool}",
        chat_pool("chat", &e, 1, 4096)
    )
}

fn daemon(token: &str, data_dir: Option<PathBuf>) -> Daemon {
    Daemon::start(
        &bin(),
        DaemonOptions {
            config: config(),
            token: Some(token.into()),
            data_dir,
            ..Default::default()
        },
    )
}

/// Runs a script against `d`, asserts it printed `ok`, returns what it printed.
fn run_script(python: &PathBuf, script: &str, d: &Daemon, token: &str, ok: &str) -> String {
    let t0 = Instant::now();
    let out = Command::new(python)
        .arg(repo_root().join(script))
        .env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", token)
        .env("MODEL", "chat")
        .env("TOOLS_MODEL", "tiny-tools")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run the SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "--- {script} ({:?}) stdout:\n{stdout}\n--- stderr:\n{stderr}",
        t0.elapsed()
    );
    assert!(
        out.status.success() && stdout.contains(ok),
        "{script} failed ({:?}); daemon log:\n{}",
        out.status.code(),
        d.logs()
    );
    stdout.into_owned()
}

fn venv(name: &str, setup: &str) -> PathBuf {
    let python = cache_dir().join(name).join("bin/python");
    assert!(
        python.is_file(),
        "no virtualenv at {}: run `bash {setup}` first",
        python.display()
    );
    python
}

#[test]
fn responses_with_the_openai_sdk_and_the_agents_sdk() {
    let openai = venv("venv-openai", "test-harness/openai-sdk/setup.sh");
    let agents = venv("venv-openai-agents", "test-harness/openai-agents/setup.sh");
    let token = "responses-sdk-token";
    let mut d = daemon(token, None);
    let printed = run_script(
        &openai,
        "test-harness/openai-sdk/test_responses.py",
        &d,
        token,
        "RESPONSES SDK OK",
    );
    run_script(
        &agents,
        "test-harness/openai-agents/test_agents.py",
        &d,
        token,
        "AGENTS SDK OK",
    );
    // A stored response survives a restart: read and continued by a second daemon on the
    // same data directory.
    let kept = printed
        .lines()
        .find_map(|l| l.strip_prefix("KEPT "))
        .expect("the script names a kept response")
        .trim()
        .to_owned();
    d.terminate(std::time::Duration::from_secs(10));
    let d2 = daemon(token, Some(d.data_dir.clone()));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (status, body) = d2.get(&format!("/v1/responses/{kept}")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], kept.as_str());
        let (status, body) = d2
            .post(
                "/v1/responses",
                &serde_json::json!({"model": "chat", "previous_response_id": kept,
                    "input": "Thanks.", "max_output_tokens": 4}),
            )
            .await;
        assert_eq!(status, 200, "{body}\n{}", d2.logs());
        assert_eq!(body["previous_response_id"], kept.as_str());
    });
}
