//! End-to-end tests of the persistent state (catalog, sessions, budgets, artifacts, outbound
//! policy): the real orchestratord binary, a real llama-server on the tiny model (CPU, via the
//! explicit dev setting), real HTTP, real SSE, and the data directory on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use orch_harness::{engine, llama_pool, token_text, Daemon, DaemonOptions, Engine, SseEvent};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_orchestratord"))
}

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

fn last_event(events: &[SseEvent]) -> &SseEvent {
    events.last().expect("at least one event")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_crud_state_flows_and_bad_inputs() {
    let e = engine();
    let d = start_pool(&e, 2, "", DaemonOptions::default());
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());

    let reg = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v1", "ref": model, "digest": digest})),
    )
    .await;
    assert_eq!(reg.0, 201, "{}", reg.1);
    assert_eq!(reg.1["state"], "Active");
    assert_eq!(reg.1["digest"], digest);
    assert_eq!(reg.1["served_by"], json!(["tiny"]));
    assert_eq!(reg.2["location"], "/v1/catalog/models/tiny-v1");

    // Bad inputs: every one a 4xx envelope.
    let dup = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v1", "ref": model})),
    )
    .await;
    assert_err(&dup, 409, "CONFLICT");
    for body in [
        json!({"id": "bad/id", "ref": model}),
        json!({"id": "", "ref": model}),
        json!({"id": "rel", "ref": "models/x.gguf"}),
        json!({"id": "dg", "ref": model, "digest": "sha256:xyz"}),
        json!({"id": "unk", "ref": model, "colour": "red"}),
        json!({"id": "ftp", "ref": "ftp://host/x.gguf"}),
        json!({"ref": model}),
        json!({"id": "sig", "ref": model, "signature": "   "}),
    ] {
        let r = call(&d, "POST", "/v1/catalog/models", Some(body.clone())).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }
    let big_sbom = "x".repeat((1 << 20) + 1);
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "big", "ref": model, "sbom": big_sbom})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");

    // Read back.
    let (s, one, _) = call(&d, "GET", "/v1/catalog/models/tiny-v1", None).await;
    assert_eq!(s, 200);
    assert_eq!(one["ref"], model);
    let (s, all, _) = call(&d, "GET", "/v1/catalog/models", None).await;
    assert_eq!(s, 200);
    assert_eq!(all["models"].as_array().unwrap().len(), 1, "{all}");
    for (m, p) in [
        ("GET", "/v1/catalog/models/nope"),
        ("DELETE", "/v1/catalog/models/nope"),
        ("POST", "/v1/catalog/models/nope/verify"),
    ] {
        assert_err(&call(&d, m, p, None).await, 404, "NOT_FOUND");
    }
    assert_err(
        &call(
            &d,
            "POST",
            "/v1/catalog/models/nope/state",
            Some(json!({"state": "Retired"})),
        )
        .await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/bad%20id", None).await,
        400,
        "INVALID_PARAMS",
    );

    // Verify: the right digest passes with warnings for the missing signature and SBOM.
    let (s, v, _) = call(&d, "POST", "/v1/catalog/models/tiny-v1/verify", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["computed_digest"], digest);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("signature") && warnings.contains("SBOM"),
        "{v}"
    );

    // A wrong digest is 409 DIGEST_MISMATCH and remembered as a failed verification.
    let zeros = format!("sha256:{}", "0".repeat(64));
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-bad", "ref": model, "digest": zeros})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let r = call(&d, "POST", "/v1/catalog/models/tiny-bad/verify", None).await;
    assert_err(&r, 409, "DIGEST_MISMATCH");
    assert!(
        r.1["message"].as_str().unwrap().contains(&digest),
        "{}",
        r.1
    );
    let (_, v, _) = call(&d, "GET", "/v1/catalog/models/tiny-bad", None).await;
    assert_eq!(v["last_verified"]["ok"], false, "{v}");
    // A missing file is 404; a URL cannot be verified locally (400).
    call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "gone", "ref": "/nonexistent/llama-orch/none.gguf"})),
    )
    .await;
    assert_err(
        &call(&d, "POST", "/v1/catalog/models/gone/verify", None).await,
        404,
        "NOT_FOUND",
    );
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "remote", "ref": "https://models.example.org/x.gguf"})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_err(
        &call(&d, "POST", "/v1/catalog/models/remote/verify", None).await,
        409,
        "CONFLICT",
    );

    // Bad states.
    for body in [
        json!({"state": "Deprecated"}),
        json!({"state": "retired"}),
        json!({}),
    ] {
        let r = call(&d, "POST", "/v1/catalog/models/tiny-v1/state", Some(body)).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }

    // A task naming the catalog id routes to the pool serving its file.
    let (_, ev) = run(&d, task("cat-1", "tiny-v1", "Once upon a time", 4)).await;
    assert_eq!(last_event(&ev).event, "end", "{ev:?}");

    // Retire it: 409 MODEL_RETIRED naming the Active alternative.
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models/tiny-v1/state",
        Some(json!({"state": "Retired"})),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "Retired");
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v2", "ref": model})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let r = d
        .submit(&task("cat-2", "tiny-v1", "Once upon a time", 4))
        .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "MODEL_RETIRED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("`tiny-v2`"), "{v}");
    let m = d.metrics_text().await;
    assert!(
        m.contains("model_state{model_id=\"tiny-v1\",state=\"Retired\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("model_state{model_id=\"tiny-v1\",state=\"Active\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("model_state{model_id=\"tiny-v2\",state=\"Active\"} 1"),
        "{m}"
    );

    // Active again: admitted.
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models/tiny-v1/state",
        Some(json!({"state": "Active"})),
    )
    .await;
    assert_eq!(r.0, 200);
    let (_, ev) = run(&d, task("cat-3", "tiny-v1", "Once upon a time", 4)).await;
    assert_eq!(last_event(&ev).event, "end");

    // Delete.
    let r = call(&d, "DELETE", "/v1/catalog/models/tiny-bad", None).await;
    assert_eq!(r.0, 204);
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/tiny-bad", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "DELETE", "/v1/catalog/models/tiny-bad", None).await,
        404,
        "NOT_FOUND",
    );
    assert!(!d.metrics_text().await.contains("tiny-bad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_roundtrip_listing_url_and_bad_inputs() {
    let d = start_bare(
        "artifacts: { max_artifact_bytes: 4096 }\n",
        DaemonOptions::default(),
    );
    let (s, a, h) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "step 1: profit", "tags": ["b", "a"], "metadata": {"by": "test"}})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = sha256_hex(b"step 1: profit");
    assert_eq!(a["id"], id);
    assert_eq!(a["digest"], id);
    assert_eq!(a["kind"], "plan");
    assert_eq!(a["tags"], json!(["a", "b"]));
    assert_eq!(a["size"], 14);
    let url = a["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}/v1/artifacts/{id}/raw", d.base));
    assert_eq!(h["location"], url.as_str());

    // Same content, same id; tags merge.
    let (s, a2, _) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "step 1: profit", "tags": ["c"]})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(a2["id"], id);
    assert_eq!(a2["tags"], json!(["a", "b", "c"]));

    // JSON with content, the URL, and ?raw=1 give the bytes.
    let (s, g, _) = call(&d, "GET", &format!("/v1/artifacts/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(g["content"], "step 1: profit");
    assert_eq!(g["encoding"], "utf8");
    assert_eq!(g["metadata"], json!({"by": "test"}));
    let raw = d.client().get(&url).send().await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["etag"], format!("\"{id}\"").as_str());
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"step 1: profit");
    let raw = d
        .client()
        .get(format!("{}/v1/artifacts/{id}?raw=1", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"step 1: profit");

    // The URL follows the Host the caller used (e.g. an SSH tunnel on the developer box).
    let r = d
        .client()
        .get(format!("{}/v1/artifacts/{id}", d.base))
        .header(reqwest::header::HOST, "devbox.example:18080")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["url"],
        format!("http://devbox.example:18080/v1/artifacts/{id}/raw")
    );

    // Binary content round-trips through base64.
    let bin_bytes: Vec<u8> = vec![0, 159, 146, 150, 255, 10];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin_bytes);
    let (s, b, _) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "other", "content": b64, "encoding": "base64", "tags": ["bin"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let bid = b["id"].as_str().unwrap().to_owned();
    assert_eq!(bid, sha256_hex(&bin_bytes));
    let (_, g, _) = call(&d, "GET", &format!("/v1/artifacts/{bid}"), None).await;
    assert_eq!(g["encoding"], "base64");
    assert_eq!(g["content"], b64);
    let raw = d
        .client()
        .get(b["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), &bin_bytes[..]);

    // Listing by tag and kind.
    let (s, l, _) = call(&d, "GET", "/v1/artifacts?tag=a", None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = l["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts?kind=other", None).await;
    assert_eq!(l["artifacts"][0]["id"], bid);
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 1);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 2);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts?tag=zzz&kind=plan", None).await;
    assert_eq!(l["artifacts"], json!([]));
    assert_err(
        &call(&d, "GET", "/v1/artifacts?kind=bogus", None).await,
        400,
        "INVALID_PARAMS",
    );
    assert_err(
        &call(&d, "GET", "/v1/artifacts?limit=-1", None).await,
        400,
        "INVALID_PARAMS",
    );

    // Bad inputs.
    for body in [
        json!({"kind": "poem", "content": "x"}),
        json!({"kind": "plan"}),
        json!({"kind": "plan", "content": "x", "encoding": "base64"}),
        json!({"kind": "plan", "content": "x", "metadata": "not an object"}),
        json!({"kind": "plan", "content": "x", "parent": "nope"}),
        json!({"kind": "plan", "content": "x", "tags": [""]}),
        json!({"kind": "plan", "content": "x", "extra": 1}),
    ] {
        let r = call(&d, "POST", "/v1/artifacts", Some(body.clone())).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }
    let r = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "y".repeat(5000)})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");
    // A body far beyond any artifact is refused while reading it.
    let r = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "z".repeat(3 << 20)})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_err(
        &call(&d, "GET", "/v1/artifacts/abc", None).await,
        400,
        "INVALID_PARAMS",
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_err(
        &call(&d, "GET", &format!("/v1/artifacts/{unknown}"), None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", &format!("/v1/artifacts/{unknown}/raw"), None).await,
        404,
        "NOT_FOUND",
    );
    // Nothing was stored by the refused requests.
    let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_gc_keeps_total_bytes_under_the_limit() {
    let d = start_bare(
        "artifacts: { max_bytes: 2500, max_artifact_bytes: 4096 }\n",
        DaemonOptions::default(),
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let content = format!("{i}{}", "g".repeat(999));
        let (s, a, _) = call(
            &d,
            "POST",
            "/v1/artifacts",
            Some(json!({"kind": "trace", "content": content})),
        )
        .await;
        assert_eq!(s, 201, "{a}");
        ids.push(a["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
        let left: Vec<String> = l["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        if left.len() <= 2 {
            // The newest survive; the oldest are gone, also from disk.
            assert!(left.contains(&ids[4]), "{left:?}");
            assert_err(
                &call(&d, "GET", &format!("/v1/artifacts/{}", ids[0]), None).await,
                404,
                "NOT_FOUND",
            );
            let hex = ids[0].trim_start_matches("sha256:");
            let file = d
                .data_dir
                .join("artifacts/sha256")
                .join(&hex[..2])
                .join(&hex[2..]);
            assert!(!file.exists(), "{} still on disk", file.display());
            break;
        }
        assert!(Instant::now() < deadline, "GC did not run: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finished_task_leaves_a_linked_transcript() {
    let e = engine();
    let d = start_pool(&e, 1, "", DaemonOptions::default());
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-cat", "ref": model, "digest": digest})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);

    // Completed, with a secret in the prompt.
    let body = task(
        "tr-ok",
        "tiny-cat",
        "notes: api_key=sk-SECRET-4242 Once upon a time",
        6,
    );
    let (_, events) = run(&d, body).await;
    assert_eq!(last_event(&events).event, "end");
    let aid = transcript_of(&d, "tr-ok").await;
    let (s, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["kind"], "transcript");
    assert!(
        a["tags"].as_array().unwrap().contains(&json!("task:tr-ok")),
        "{a}"
    );
    let content = a["content"].as_str().unwrap();
    assert!(
        !content.contains("sk-SECRET-4242"),
        "secret leaked into the transcript"
    );
    let t: Value = serde_json::from_str(content).unwrap();
    assert_eq!(t["task_id"], "tr-ok");
    assert_eq!(t["state"], "completed");
    assert_eq!(t["engine"], "llamacpp");
    assert!(
        t["engine_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty() && v != "unknown"),
        "{t}"
    );
    assert_eq!(t["model"]["digest"], digest);
    assert_eq!(t["model"]["catalog_id"], "tiny-cat");
    assert_eq!(t["model"]["path"], model);
    assert_eq!(t["seed"], 7);
    let end = events.last().unwrap().json();
    assert_eq!(t["tokens_out"], end["tokens_out"]);
    assert_eq!(t["decode_ms"], end["decode_ms"]);
    assert!(
        t["request"]["prompt"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{}",
        t["request"]
    );
    // The transcript holds the stream exactly as a client saw it.
    let recorded: Vec<(String, Value)> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect();
    let seen: Vec<(String, Value)> = events.iter().map(|e| (e.event.clone(), e.json())).collect();
    assert_eq!(recorded, seen);

    // Failed: a prompt longer than the slot's context is refused by the engine.
    let long = "lighthouse ".repeat(2000);
    let r = d.submit(&task("tr-fail", "tiny", &long, 4)).await;
    assert_eq!(r.status(), 202);
    let ev = d.stream("tr-fail").await;
    assert_eq!(last_event(&ev).event, "error", "{ev:?}");
    let aid = transcript_of(&d, "tr-fail").await;
    let (_, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    let t: Value = serde_json::from_str(a["content"].as_str().unwrap()).unwrap();
    assert_eq!(t["state"], "failed", "{t}");
    assert!(t["error"]["code"].is_string(), "{t}");
    assert_eq!(
        t["events"].as_array().unwrap().last().unwrap()["event"],
        "error"
    );

    // Canceled while queued behind a long task (one slot).
    let r = d
        .submit(&task("tr-long", "tiny", "Once upon a time", 800))
        .await;
    assert_eq!(r.status(), 202);
    let r = d
        .submit(&task("tr-cancel", "tiny", "Once upon a time", 4))
        .await;
    assert_eq!(r.status(), 202);
    let (s, v) = d.post("/v1/tasks/tr-cancel/cancel", &json!({})).await;
    assert_eq!(s, 202, "{v}");
    let aid = transcript_of(&d, "tr-cancel").await;
    let (_, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    let t: Value = serde_json::from_str(a["content"].as_str().unwrap()).unwrap();
    assert_eq!(t["state"], "canceled", "{t}");
    assert_eq!(t["error"]["code"], "CANCELED");

    // Listing transcripts by tag.
    let (_, l, _) = call(
        &d,
        "GET",
        "/v1/artifacts?kind=transcript&tag=state:canceled",
        None,
    )
    .await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 1, "{l}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_pin_slot_warm_up_limit_turns_and_eviction_frees_the_slot() {
    let e = engine();
    let d = start_pool(
        &e,
        2,
        "sessions: { ttl_ms: 60000, max_turns: 3 }\n",
        DaemonOptions::default(),
    );
    let ep = replica_endpoint(&d).await;
    let sess =
        |id: &str, prompt: &str| with(task(id, "tiny", prompt, 8), json!({"session_id": "conv-1"}));

    let (_, ev1) = run(&d, sess("s-t1", LONG_PROMPT)).await;
    assert_eq!(last_event(&ev1).event, "end");
    let (s, v) = d.get("/v1/sessions/conv-1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["turns"], 1);
    assert_eq!(v["max_turns"], 3);
    assert_eq!(v["replica_id"], "tiny-r0");
    let slot = v["slot"].as_u64().expect("pinned slot");
    assert!(v["kv_bytes"].as_u64().unwrap() > 0, "{v}");
    let ttl = v["ttl_ms_remaining"].as_u64().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{v}");
    assert!(v.get("budget_remaining").is_none(), "{v}");
    let held = slot_tokens(&ep, slot).await;
    assert!(
        held > 20,
        "slot {slot} should hold the conversation, holds {held}"
    );

    // Turn 2 extends the conversation: same slot, prefix reused.
    let prompt2 = format!("{LONG_PROMPT}{} And then", token_text(&ev1));
    let (_, ev2) = run(&d, sess("s-t2", &prompt2)).await;
    assert_eq!(last_event(&ev2).event, "end");
    let warm = ev2
        .iter()
        .rev()
        .filter(|e| e.event == "metrics")
        .find_map(|e| e.json()["kv_warmth"].as_f64())
        .expect("kv_warmth in the final metrics frame");
    assert!(warm > 0.5, "prefix should be reused, kv_warmth {warm}");
    let (_, v) = d.get("/v1/sessions/conv-1").await;
    assert_eq!(v["turns"], 2);
    assert_eq!(v["slot"].as_u64(), Some(slot), "{v}");
    assert!(v["kv_warmth"].as_f64().unwrap() > 0.5, "{v}");

    // Turn 3 is the last; turn 4 is refused with a typed error.
    let (_, ev3) = run(&d, sess("s-t3", "Another turn")).await;
    assert_eq!(last_event(&ev3).event, "end");
    let r = d.submit(&sess("s-t4", "One too many")).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SESSION_TURNS_EXHAUSTED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("3 turns"), "{v}");

    // Eviction frees the engine slot.
    let slot = d.get("/v1/sessions/conv-1").await.1["slot"]
        .as_u64()
        .unwrap();
    assert!(slot_tokens(&ep, slot).await > 0);
    let r = call(&d, "DELETE", "/v1/sessions/conv-1", None).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["slot_erased"], true, "{}", r.1);
    assert_eq!(r.1["slot"].as_u64(), Some(slot));
    assert_eq!(
        slot_tokens(&ep, slot).await,
        0,
        "slot {slot} still holds KV after eviction"
    );
    assert_err(
        &call(&d, "GET", "/v1/sessions/conv-1", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "DELETE", "/v1/sessions/conv-1", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", "/v1/sessions/bad%20id", None).await,
        400,
        "INVALID_PARAMS",
    );

    // The id can start over.
    let (_, ev) = run(&d, sess("s-t5", "Fresh start")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-1").await.1["turns"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_queue_refuses_does_not_use_up_a_session_turn() {
    let e = engine();
    // A long context so the busy task cannot finish while the test fills the queue.
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\nqueue: {{ capacity: 1, full_policy: reject }}\nsessions: {{ ttl_ms: 60000, max_turns: 2 }}\npools:\n{}",
        llama_pool("tiny", &e, 1, 1, 32768)
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    );
    let sess = |id: &str| {
        with(
            task(id, "tiny", "Hello", 4),
            json!({"session_id": "conv-q"}),
        )
    };
    let (_, ev) = run(&d, sess("q-t1")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-q").await.1["turns"], 1);

    // The slot busy and the queue full: the session's second turn is refused with 429 …
    assert_eq!(
        d.submit(&task("q-busy", "tiny", "Busy", 30000))
            .await
            .status(),
        202
    );
    d.wait_state("q-busy", "running").await;
    assert_eq!(
        d.submit(&task("q-wait", "tiny", "Wait", 4)).await.status(),
        202
    );
    let r = d.submit(&sess("q-t2")).await;
    assert_eq!(r.status(), 429);
    // … and the turn it would have used is still there.
    let (_, v) = d.get("/v1/sessions/conv-q").await;
    assert_eq!(v["turns"], 1, "{v}");

    for id in ["q-busy", "q-wait"] {
        let r = call(
            &d,
            "POST",
            &format!("/v1/tasks/{id}/cancel"),
            Some(json!({})),
        )
        .await;
        assert_eq!(r.0, 202, "{}", r.1);
    }
    d.wait_state("q-busy", "canceled").await;
    let (_, ev) = run(&d, sess("q-t2")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-q").await.1["turns"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_frees_the_slot_and_reports_expired_once() {
    let e = engine();
    let d = start_pool(
        &e,
        2,
        "sessions: { ttl_ms: 1500, max_turns: 8 }\n",
        DaemonOptions::default(),
    );
    let ep = replica_endpoint(&d).await;
    let body = |id: &str| {
        with(
            task(id, "tiny", LONG_PROMPT, 8),
            json!({"session_id": "exp-1"}),
        )
    };
    let (_, ev) = run(&d, body("x-t1")).await;
    assert_eq!(last_event(&ev).event, "end");
    let (s, v) = d.get("/v1/sessions/exp-1").await;
    assert_eq!(s, 200, "{v}");
    let slot = v["slot"].as_u64().unwrap();
    assert!(slot_tokens(&ep, slot).await > 0);

    let deadline = Instant::now() + Duration::from_secs(15);
    while d.get("/v1/sessions/exp-1").await.0 != 404 {
        assert!(Instant::now() < deadline, "session never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot_tokens(&ep, slot).await != 0 {
        assert!(
            Instant::now() < deadline,
            "expired session's slot {slot} was not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = d.submit(&body("x-t2")).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SESSION_EXPIRED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("resubmit"), "{v}");
    // Reported once; then the id starts a new session (read at once: the TTL is short).
    let r = d.submit(&body("x-t3")).await;
    assert_eq!(r.status(), 202);
    let (s, v) = d.get("/v1/sessions/exp-1").await;
    assert_eq!((s, &v["turns"]), (200, &json!(1)), "{v}");
    let ev = d.stream("x-t3").await;
    assert_eq!(last_event(&ev).event, "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_enforced_before_enqueue_and_surfaced() {
    let e = engine();
    let d = start_pool(&e, 2, "", DaemonOptions::default());
    let sess = |id: &str, sid: &str, n: u32| {
        with(
            task(id, "tiny", "Once upon a time", n),
            json!({"session_id": sid}),
        )
    };
    let budget = json!({"tokens": 24, "time_ms": 600000, "cost": 5.0});

    let (h, ev) = run(&d, with(sess("b-1", "bud-1", 8), json!({"budget": budget}))).await;
    assert_eq!(h["x-budget-tokens-remaining"], "24");
    assert_eq!(h["x-budget-time-remaining-ms"], "600000");
    assert_eq!(h["x-budget-cost-remaining"], "5");
    assert_eq!(last_event(&ev).event, "end");
    let remaining: Vec<u64> = ev
        .iter()
        .filter(|e| e.event == "metrics")
        .filter_map(|e| e.json()["tokens_budget_remaining"].as_u64())
        .collect();
    assert!(
        !remaining.is_empty(),
        "metrics frames carry the budget: {ev:?}"
    );
    let tokens1 = last_event(&ev).json()["tokens_out"].as_u64().unwrap();
    assert_eq!(*remaining.last().unwrap(), 24 - tokens1);
    assert!(ev
        .iter()
        .any(|e| e.event == "metrics" && e.json()["cost_budget_remaining"].is_number()));
    assert!(ev
        .iter()
        .any(|e| e.event == "metrics" && e.json()["time_budget_remaining_ms"].is_number()));
    // The stream response carries the headers once too.
    let r = d
        .client()
        .get(format!("{}/v1/tasks/b-1/stream", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-budget-tokens-remaining"], "24");
    drop(r);

    let (_, v) = d.get("/v1/sessions/bud-1").await;
    let spent = v["spent"]["tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&spent), "{v}");
    assert_eq!(v["budget_remaining"]["tokens"].as_u64(), Some(24 - spent));
    assert_eq!(v["budget"]["tokens"], 24);
    assert!(v["spent"]["cost"].as_f64().unwrap() > 0.0, "{v}");

    let (h, ev) = run(&d, sess("b-2", "bud-1", 8)).await;
    assert_eq!(
        h["x-budget-tokens-remaining"],
        (24 - spent).to_string().as_str()
    );
    assert_eq!(last_event(&ev).event, "end");
    let (_, v) = d.get("/v1/sessions/bud-1").await;
    let left = v["budget_remaining"]["tokens"].as_u64().unwrap();
    assert!(left < 24 - spent, "{v}");

    // More than what is left: refused at the edge, with what remains.
    let r = d.submit(&sess("b-3", "bud-1", (left + 1) as u32)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "BUDGET_EXCEEDED", "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("tokens {left}")) && msg.contains("max_tokens"),
        "{v}"
    );
    assert_eq!(
        d.get("/v1/tasks/b-3").await.0,
        404,
        "a refused task is not admitted"
    );
    assert_eq!(
        d.get("/v1/sessions/bud-1").await.1["turns"],
        2,
        "a refused task takes no turn"
    );

    // A budget is fixed at creation, needs a session, and must fit the first task.
    let r = d
        .submit(&with(
            sess("b-4", "bud-1", 1),
            json!({"budget": {"tokens": 1000}}),
        ))
        .await;
    assert_eq!(r.status(), 400);
    let r = d
        .submit(&with(
            task("b-5", "tiny", "x", 1),
            json!({"budget": {"tokens": 10}}),
        ))
        .await;
    assert_eq!(r.status(), 400);
    let r = d
        .submit(&with(
            sess("b-6", "bud-2", 8),
            json!({"budget": {"tokens": 4}}),
        ))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        d.get("/v1/sessions/bud-2").await.0,
        404,
        "a refused first task creates no session"
    );
    let r = d
        .submit(&with(
            sess("b-7", "bud-2", 8),
            json!({"budget": {"tokens": 4, "colour": 1}}),
        ))
        .await;
    assert_eq!(r.status(), 400);

    // A time budget: the first task uses it up, the next is refused.
    let (_, ev) = run(
        &d,
        with(sess("b-8", "bud-3", 8), json!({"budget": {"time_ms": 1}})),
    )
    .await;
    assert_eq!(last_event(&ev).event, "end");
    let r = d.submit(&sess("b-9", "bud-3", 8)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("time"), "{v}");
}

/// Every file under the artifact tree.
fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_then_restart_keeps_catalog_budgets_and_artifacts() {
    let e = engine();
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().join("data");
    let opts = || DaemonOptions {
        data_dir: Some(data.clone()),
        ..DaemonOptions::default()
    };
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());

    let mut d1 = start_pool(&e, 2, "", opts());
    for body in [
        json!({"id": "tiny-cat", "ref": model, "digest": digest}),
        json!({"id": "tiny-old", "ref": model}),
    ] {
        let r = call(&d1, "POST", "/v1/catalog/models", Some(body)).await;
        assert_eq!(r.0, 201, "{}", r.1);
    }
    let r = call(
        &d1,
        "POST",
        "/v1/catalog/models/tiny-old/state",
        Some(json!({"state": "Retired"})),
    )
    .await;
    assert_eq!(r.0, 200);

    let sess = |id: &str, n: u32| {
        with(
            task(id, "tiny-cat", "Once upon a time", n),
            json!({"session_id": "dur-1"}),
        )
    };
    let (_, ev) = run(
        &d1,
        with(sess("d-1", 8), json!({"budget": {"tokens": 100000}})),
    )
    .await;
    assert_eq!(last_event(&ev).event, "end");
    let t1 = transcript_of(&d1, "d-1").await;
    let spent0 = d1.get("/v1/sessions/dur-1").await.1["spent"]["tokens"]
        .as_u64()
        .unwrap();
    assert!(spent0 > 0);

    // Artifacts stored before the burst.
    let stored: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let content = format!("before {i} {}", "b".repeat(i * 100));
        let (s, a, _) = call(
            &d1,
            "POST",
            "/v1/artifacts",
            Some(json!({"kind": "summary", "content": content})),
        )
        .await;
        assert_eq!(s, 201);
        stored
            .lock()
            .unwrap()
            .push((a["id"].as_str().unwrap().to_owned(), content));
    }

    // Burst: artifacts being written and session budgets being charged, then SIGKILL.
    let writer = {
        let (c, base, stored) = (d1.client(), d1.base.clone(), stored.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let content = format!("burst {i} {}", "x".repeat(20_000 + i));
                let r = c
                    .post(format!("{base}/v1/artifacts"))
                    .json(&json!({"kind": "trace", "content": content, "tags": ["burst"]}))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                stored
                    .lock()
                    .unwrap()
                    .push((v["id"].as_str().unwrap().to_owned(), content));
            }
        })
    };
    let tasks = {
        let (c, base) = (d1.client(), d1.base.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let mut body = with(
                    task(&format!("burst-{i}"), "tiny-cat", "Once upon a time", 16),
                    json!({"session_id": format!("burst-{}", i / 8)}),
                );
                if i % 8 == 0 {
                    body["budget"] = json!({"tokens": 1000, "time_ms": 3_600_000});
                }
                let Ok(r) = c.post(format!("{base}/v1/tasks")).json(&body).send().await else {
                    break;
                };
                if r.status() != 202 {
                    break;
                }
                let Ok(s) = c
                    .get(format!("{base}/v1/tasks/burst-{i}/stream"))
                    .send()
                    .await
                else {
                    break;
                };
                let _ = s.bytes().await;
            }
        })
    };
    // Kill once a burst task has been charged and artifacts are flowing, while more of both
    // are in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let charged = d1.get("/v1/sessions/burst-0").await.1["spent"]["tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0;
        if charged && stored.lock().unwrap().len() > 15 {
            break;
        }
        assert!(Instant::now() < deadline, "the burst made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    d1.kill9();
    let _ = writer.await;
    let _ = tasks.await;
    let acked = stored.lock().unwrap().clone();
    assert!(acked.len() > 10, "the burst wrote nothing before the kill");

    // Restart on the same data dir; the pool names the catalog id as its model.
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n  - id: tiny\n    engine: llamacpp\n    model: tiny-cat\n    engine_binary: \"{}\"\n    slots: 2\n    ctx: 1024\n    startup_timeout_s: 60\n",
        e.llama_server.display()
    );
    let d2 = Daemon::start(&bin(), DaemonOptions { config, ..opts() });
    assert!(
        d2.logs().contains("pool model resolved from the catalog"),
        "{}",
        d2.logs()
    );

    // No temp file survives, and every file in the tree is a listed artifact.
    let files = tree_files(&data.join("artifacts"));
    assert!(
        files.iter().all(|f| !f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-")),
        "{files:?}"
    );
    let (_, l, _) = call(&d2, "GET", "/v1/artifacts?limit=10000", None).await;
    let listed: Vec<String> = l["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    // Small contents live in their database rows (STATE.md): every file is a listed artifact.
    let file_ids: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let shard = f.parent()?.file_name()?.to_string_lossy().into_owned();
            Some(format!(
                "sha256:{shard}{}",
                f.file_name()?.to_string_lossy()
            ))
        })
        .collect();
    assert!(
        file_ids.iter().all(|f| listed.contains(f)),
        "files {file_ids:?} vs listed {listed:?}"
    );
    // Every listed artifact is whole.
    for id in &listed {
        let r = d2
            .client()
            .get(format!("{}/v1/artifacts/{id}/raw", d2.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        assert_eq!(&sha256_hex(&r.bytes().await.unwrap()), id);
    }
    // Every acknowledged artifact is there with its content.
    for (id, content) in &acked {
        let (s, a, _) = call(&d2, "GET", &format!("/v1/artifacts/{id}"), None).await;
        assert_eq!(s, 200, "acknowledged artifact {id} lost");
        assert_eq!(a["content"].as_str().unwrap(), content);
    }
    let (s, _, _) = call(&d2, "GET", &format!("/v1/artifacts/{t1}"), None).await;
    assert_eq!(s, 200, "transcript lost");

    // Catalog intact; the pool named by catalog id serves; Retired stays Retired.
    let (_, c, _) = call(&d2, "GET", "/v1/catalog/models/tiny-cat", None).await;
    assert_eq!(c["state"], "Active");
    assert_eq!(c["digest"], digest);
    assert_eq!(c["served_by"], json!(["tiny"]));
    let (_, c, _) = call(&d2, "GET", "/v1/catalog/models/tiny-old", None).await;
    assert_eq!(c["state"], "Retired");
    let r = d2.submit(&task("after-1", "tiny-old", "x", 2)).await;
    assert_eq!(r.status(), 409);

    // Budgets survived: the idle session exactly, the ones charged during the kill consistently.
    let (s, v) = d2.get("/v1/sessions/burst-0").await;
    assert_eq!(s, 200, "{v}");
    let burst_spent = v["spent"]["tokens"].as_u64().unwrap();
    assert!(burst_spent > 0 && burst_spent <= 1000, "{v}");
    assert_eq!(
        v["budget_remaining"]["tokens"].as_u64().unwrap() + burst_spent,
        1000
    );
    assert_eq!(v["budget"]["time_ms"], 3_600_000);
    let (s, v) = d2.get("/v1/sessions/dur-1").await;
    assert_eq!(s, 200, "{v}");
    let spent = v["spent"]["tokens"].as_u64().unwrap();
    assert_eq!(spent, spent0, "{v}");
    assert_eq!(v["budget"]["tokens"], 100000);
    assert_eq!(
        v["budget_remaining"]["tokens"].as_u64().unwrap() + spent,
        100000
    );
    let (h, ev) = run(&d2, sess("after-2", 4)).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(
        h["x-budget-tokens-remaining"],
        (100000 - spent).to_string().as_str()
    );
    let (_, v) = d2.get("/v1/sessions/dur-1").await;
    let spent2 = v["spent"]["tokens"].as_u64().unwrap();
    assert!(spent2 > spent, "{v}");

    // The documented online backup (docs/STATE.md), taken while d2 runs, restores on its own.
    let backup = keep.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    let sh = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    sh(std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))",
        ])
        .arg(data.join("state.db"))
        .arg(backup.join("state.db")));
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("artifacts"))
        .arg(&backup));
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("audit.jsonl"))
        .arg(&backup));
    let d3 = start_bare(
        "",
        DaemonOptions {
            data_dir: Some(backup.clone()),
            ..DaemonOptions::default()
        },
    );
    let (_, c, _) = call(&d3, "GET", "/v1/catalog/models", None).await;
    assert_eq!(c["models"].as_array().unwrap().len(), 2, "{c}");
    for (id, content) in &acked {
        let (s, a, _) = call(&d3, "GET", &format!("/v1/artifacts/{id}"), None).await;
        assert_eq!(s, 200, "{id} missing from the backup");
        assert_eq!(a["content"].as_str().unwrap(), content);
    }
    let (_, v) = d3.get("/v1/sessions/dur-1").await;
    assert_eq!(v["spent"]["tokens"].as_u64(), Some(spent2), "{v}");
}

fn audit_lines(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_policy_allows_denies_and_audits_with_secrets_redacted() {
    let d = start_bare(
        "policy: { outbound: { allow: [\"*.models.example.org\"], deny: [\"evil.models.example.org\"] } }\n",
        DaemonOptions::default(),
    );
    let reg = |id: &str, url: &str| json!({"id": id, "ref": url});
    let ok = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg(
            "m-ok",
            "https://cdn.models.example.org/m.gguf?api_key=SECRET-111",
        )),
    )
    .await;
    assert_eq!(ok.0, 201, "{}", ok.1);
    assert!(!ok.1.to_string().contains("SECRET-111"), "{}", ok.1);
    let denied = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg(
            "m-evil",
            "https://evil.models.example.org/m.gguf?token=SECRET-222",
        )),
    )
    .await;
    assert_err(&denied, 403, "POLICY_DENIED");
    assert!(!denied.1.to_string().contains("SECRET-222"));
    let other = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg("m-other", "http://other.example.net/m.gguf")),
    )
    .await;
    assert_err(&other, 403, "POLICY_DENIED");
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/m-evil", None).await,
        404,
        "NOT_FOUND",
    );
    // Local paths are not outbound: no decision, no audit line.
    let local = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg("m-local", "/models/local.gguf")),
    )
    .await;
    assert_eq!(local.0, 201);

    let lines = audit_lines(&d.data_dir);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let summary: Vec<(String, bool, String)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap().to_owned(),
                l["allowed"].as_bool().unwrap(),
                l["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "model_download".into(),
                true,
                "allow:*.models.example.org".into()
            ),
            (
                "model_download".into(),
                false,
                "deny:evil.models.example.org".into()
            ),
            ("model_download".into(), false, "default_deny".into()),
        ]
    );
    let raw = std::fs::read_to_string(d.data_dir.join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains("SECRET-111") && !raw.contains("SECRET-222"),
        "{raw}"
    );
    assert!(!d.logs().contains("SECRET-111") && !d.logs().contains("SECRET-222"));

    // no_downloads refuses every model URL.
    let d2 = start_bare(
        "policy: { outbound: { no_downloads: true } }\n",
        DaemonOptions::default(),
    );
    let r = call(
        &d2,
        "POST",
        "/v1/catalog/models",
        Some(reg("m", "https://cdn.models.example.org/m.gguf")),
    )
    .await;
    assert_err(&r, 403, "POLICY_DENIED");
    assert_eq!(audit_lines(&d2.data_dir)[0]["rule"], "no_downloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_endpoints_off_loopback_pass_the_policy_at_startup() {
    // Denied: the daemon refuses to start, naming the pool and the rule, and audits it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\npolicy: {{ outbound: {{ deny: [\"10.255.255.*\"] }} }}\npools:\n  - id: lan\n    engine: llamacpp\n    endpoint: http://10.255.255.1:9/\n",
            data.display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .arg("--config")
            .arg(&cfg)
            .env_remove("AUTH_TOKEN")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_CONFIG")
            .env_remove("LLORCH_MODEL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool `lan`") && err.contains("deny pattern '10.255.255.*'"),
        "{err}"
    );
    let lines = audit_lines(&data);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["action"], "engine_endpoint");
    assert_eq!(lines[0]["allowed"], false);

    // Allowed (default policy): it starts, and the decision is audited.
    let d = start_bare(
        "pools:\n  - id: lan\n    engine: llamacpp\n    endpoint: http://10.255.255.1:9/\n",
        DaemonOptions {
            no_wait_ready: true,
            ..DaemonOptions::default()
        },
    );
    let lines = audit_lines(&d.data_dir);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["action"], "engine_endpoint");
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[0]["url"], "http://10.255.255.1:9/");
}

#[test]
fn openapi_documents_the_state_endpoints_and_types() {
    let doc: Value = serde_json::from_str(&orchestratord::openapi::openapi_json()).unwrap();
    for (path, method) in [
        ("/v1/catalog/models", "post"),
        ("/v1/catalog/models", "get"),
        ("/v1/catalog/models/{id}", "get"),
        ("/v1/catalog/models/{id}", "delete"),
        ("/v1/catalog/models/{id}/verify", "post"),
        ("/v1/catalog/models/{id}/state", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/artifacts", "post"),
        ("/v1/artifacts", "get"),
        ("/v1/artifacts/{id}", "get"),
        ("/v1/artifacts/{id}/raw", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for s in [
        "BudgetSpec",
        "BudgetRemaining",
        "SessionInfo",
        "SessionEvicted",
        "RegisterModelRequest",
        "CatalogModel",
        "CatalogList",
        "VerifyResponse",
        "SetModelStateRequest",
        "ArtifactCreate",
        "ArtifactMeta",
        "Artifact",
        "ArtifactList",
    ] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
    assert!(schemas["TaskRequest"]["properties"]["budget"].is_object());
    assert!(schemas["TaskStatus"]["properties"]["transcript_artifact"].is_object());
    let codes = schemas["ErrorCode"].to_string();
    for c in [
        "BUDGET_EXCEEDED",
        "SESSION_EXPIRED",
        "SESSION_TURNS_EXHAUSTED",
        "DIGEST_MISMATCH",
        "POLICY_DENIED",
        "PAYLOAD_TOO_LARGE",
        "CONFLICT",
    ] {
        assert!(codes.contains(c), "{c} missing from ErrorCode");
    }
}
