//! The OpenAI-compatible door driven by the official `openai` SDKs against a real daemon and
//! llama-server: Python (test-harness/openai-sdk/test_openai_sdk.py, virtualenv from
//! `bash test-harness/openai-sdk/setup.sh`, cached under the provisioning cache) and Node
//! (test-harness/openai-node/test_openai_node.mjs, `bash test-harness/openai-node/setup.sh`).
//! Without its setup a test fails naming that command.

use std::process::Command;

use orch_harness::{engine, llama_pool, Daemon, DaemonOptions};

use crate::support::{bin, cache_dir, repo_root};

/// `http.max_body_bytes` of the test daemon: small, so the 413 case sends little.
const MAX_BODY_BYTES: u32 = 65536;
/// The origin the test daemon allows (CORS).
const CORS_ORIGIN: &str = "http://localhost:5173";

/// A daemon with pool `tiny` (one slot, queue of 1) and pool `tiny-tools`: the same model with
/// a chat template that renders tools (test-harness/openai-sdk/tool-template.jinja).
fn daemon(token: &str) -> Daemon {
    let e = engine();
    let template = repo_root().join("test-harness/openai-sdk/tool-template.jinja");
    let tools_pool = llama_pool("tiny-tools", &e, 1, 1, 8192).replace(
        "flags: [\"-t\", \"1\"]",
        &format!(
            "flags: [\"-t\", \"1\", \"--chat-template-file\", \"{}\"]",
            template.display()
        ),
    );
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\nqueue: {{ capacity: 1 }}\n\
         http: {{ max_body_bytes: {MAX_BODY_BYTES}, cors: {{ allow_origins: [\"{CORS_ORIGIN}\"] }} }}\n\
         pools:\n{}{tools_pool}",
        llama_pool("tiny", &e, 1, 1, 32768)
    );
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    )
}

/// Runs an SDK script against `d` and asserts it printed `ok`.
fn run_script(mut cmd: Command, d: &Daemon, token: &str, ok: &str) {
    let out = cmd
        .env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", token)
        .env("MODEL", "tiny")
        .env("TOOLS_MODEL", "tiny-tools")
        .env("MAX_BODY_BYTES", MAX_BODY_BYTES.to_string())
        .env("CORS_ORIGIN", CORS_ORIGIN)
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run the OpenAI SDK script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- script stdout:\n{stdout}\n--- script stderr:\n{stderr}");
    assert!(
        out.status.success() && stdout.contains(ok),
        "the OpenAI SDK script failed ({:?}); daemon log:\n{}",
        out.status.code(),
        d.logs()
    );
}

#[test]
fn openai_python_sdk() {
    let python = cache_dir().join("venv-openai/bin/python");
    assert!(
        python.is_file(),
        "no OpenAI SDK virtualenv at {}: run `bash test-harness/openai-sdk/setup.sh` first",
        python.display()
    );
    let token = "sdk-test-token";
    let d = daemon(token);
    let mut cmd = Command::new(&python);
    cmd.arg(repo_root().join("test-harness/openai-sdk/test_openai_sdk.py"));
    run_script(cmd, &d, token, "OPENAI SDK OK");
}

#[test]
fn openai_node_sdk() {
    let dir = repo_root().join("test-harness/openai-node");
    assert!(
        dir.join("node_modules/openai/package.json").is_file(),
        "the openai Node SDK is missing: run `bash test-harness/openai-node/setup.sh` first"
    );
    let token = "node-sdk-test-token";
    let d = daemon(token);
    let mut cmd = Command::new("node");
    cmd.arg("test_openai_node.mjs").current_dir(&dir);
    run_script(cmd, &d, token, "OPENAI NODE SDK OK");
}

/// The agent doors' context rules on the real llama-server and the real chat model: an agent's
/// `max_tokens: 32000` is clamped to the context and the answer is real; a prompt longer than
/// the pool's context is refused before it is queued, counted by the engine's own tokenizer,
/// naming the pool that would hold it; a `model_aliases` glob routes an agent's model name.
#[tokio::test]
async fn agent_door_context_rules_on_a_real_engine() {
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\n\
         model_aliases: {{ \"claude-*\": smol }}\npools:\n{}{}",
        orch_harness::chat_pool("smol", &e, 1, 1024),
        llama_pool("roomy", &e, 1, 1, 8192)
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    );
    let url = format!("{}/v1/chat/completions", d.base);
    let r = d
        .client()
        .post(&url)
        .json(&serde_json::json!({"model": "claude-sonnet-4", "max_tokens": 32000, "temperature": 0,
            "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-llorch-pool"], "smol");
    let clamp = r.headers()["x-llorch-max-tokens-clamped"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(clamp.starts_with("32000->"), "{clamp}");
    let v: serde_json::Value = r.json().await.expect("JSON");
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap_or("");
    eprintln!("clamp {clamp}; answer {answer:?}");
    assert!(answer.contains("Paris"), "{v}");
    // ~3 000 tokens of text: over smol's 1024, within roomy's 8192.
    let long = "The quick brown fox jumps over the lazy dog. ".repeat(300);
    let r = d
        .client()
        .post(&url)
        .json(&serde_json::json!({"model": "smol", "max_tokens": 8,
            "messages": [{"role": "user", "content": long}]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.expect("JSON");
    let m = v["error"]["message"].as_str().unwrap_or("");
    eprintln!("{m}");
    assert!(
        m.contains("1024 tokens per slot") && m.contains("roomy (") && m.contains("the prompt is "),
        "{v}"
    );
    // The refused prompt was never queued: the status feed knows only the first task, and it
    // shows the door it came through.
    let (_, status) = d.get("/v1/status").await;
    let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
    assert_eq!(tasks.len(), 1, "{status}");
    assert_eq!(tasks[0]["dialect"], "chat_completions", "{status}");
}
