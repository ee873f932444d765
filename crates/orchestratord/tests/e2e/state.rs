//! End-to-end tests of the persistent state (catalog, sessions, budgets, artifacts, outbound
//! policy): the real orchestratord binary, a real llama-server on the tiny model (CPU, via the
//! explicit dev setting), real HTTP, real SSE, and the data directory on disk.
//! One module per area; the helpers below are shared by them.

mod artifacts;
mod budgets;
mod catalog;
mod outbound;
mod restart;
mod sessions;
mod transcripts;

use std::time::{Duration, Instant};

use orch_harness::{llama_pool, Daemon, DaemonOptions, Engine, SseEvent};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::support::bin;

/// A daemon with one pool `tiny` (`slots` slots, 1024 context tokens each).
fn start_pool(e: &Engine, slots: u32, extra: &str, opts: DaemonOptions) -> Daemon {
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\n{extra}pools:\n{}",
        llama_pool("tiny", e, slots, 1, 1024)
    );
    Daemon::start(&bin(), DaemonOptions { config, ..opts })
}

/// A daemon without pools (fast: no engine to start).
fn start_bare(extra: &str, opts: DaemonOptions) -> Daemon {
    Daemon::start(
        &bin(),
        DaemonOptions {
            config: extra.to_owned(),
            ..opts
        },
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Any request; returns status, JSON body (Null when not JSON) and headers.
async fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = d.client().request(m, format!("{}{path}", d.base));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

/// Asserts an error envelope with `status` and `code`.
fn assert_err(got: &(u16, Value, reqwest::header::HeaderMap), status: u16, code: &str) {
    assert_eq!(
        got.0, status,
        "expected {status} {code}, got {} {}",
        got.0, got.1
    );
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| m.len() > 10),
        "actionable message expected: {}",
        got.1
    );
}

fn task(id: &str, model_ref: &str, prompt: &str, max_tokens: u32) -> Value {
    json!({
        "task_id": id, "model_ref": model_ref, "priority": "interactive",
        "prompt": prompt, "max_tokens": max_tokens, "seed": 7, "temperature": 0.0
    })
}

fn with(mut v: Value, extra: Value) -> Value {
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, x) in e {
            o.insert(k.clone(), x.clone());
        }
    }
    v
}

/// Submits and reads the stream to its end; panics unless admitted.
async fn run(d: &Daemon, body: Value) -> (reqwest::header::HeaderMap, Vec<SseEvent>) {
    let r = d.submit(&body).await;
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!(status, 202, "submit {body}: {v}");
    let events = d.stream(body["task_id"].as_str().unwrap()).await;
    (headers, events)
}

/// Waits until `GET /v1/tasks/{id}` links the transcript artifact.
async fn transcript_of(d: &Daemon, task_id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, v) = d.get(&format!("/v1/tasks/{task_id}")).await;
        if let Some(a) = v["transcript_artifact"].as_str() {
            return a.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no transcript for {task_id}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The llama-server endpoint of the pool's first replica.
async fn replica_endpoint(d: &Daemon) -> String {
    let (_, h) = d.get("/v1/pools/tiny/health").await;
    h["replicas"][0]["endpoint"].as_str().unwrap().to_owned()
}

/// Tokens the engine holds in `slot` (llama-server `/slots`, `n_prompt_tokens`; absent = 0).
async fn slot_tokens(endpoint: &str, slot: u64) -> u64 {
    let v: Value = reqwest::get(format!("{endpoint}/slots"))
        .await
        .expect("GET /slots")
        .json()
        .await
        .expect("slots JSON");
    let s = v
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_u64() == Some(slot))
        .unwrap_or_else(|| panic!("no slot {slot} in {v}"));
    s["n_prompt_tokens"].as_u64().unwrap_or(0)
}

const LONG_PROMPT: &str = "The old lighthouse keeper climbed the spiral stairs every evening, \
counting the steps and listening to the sea below, while the gulls circled the tower and the \
lamp waited for the dark to come in from the water.";
