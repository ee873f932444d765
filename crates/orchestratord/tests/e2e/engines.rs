//! Mixed engines end to end: the real daemon serves one `llamacpp` pool it launches itself and
//! one `openai` pool whose `endpoint:` is a second, real llama-server started here (spoken to
//! through its OpenAI-compatible `/v1` API). Completion and chat on both; seeds pass through.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orch_harness::{engine, llama_pool, token_text, Daemon, DaemonOptions, Engine, SseEvent};
use serde_json::{json, Value};

use crate::support::bin;

/// A llama-server not launched by the daemon; killed on drop.
struct External {
    child: Child,
    base: String,
}

impl External {
    fn start(e: &Engine, slots: u32, ctx_per_slot: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&e.llama_server)
            .arg("-m")
            .arg(&e.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-c", &(slots * ctx_per_slot).to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn llama-server");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !healthy(&base) {
            assert!(
                Instant::now() < deadline,
                "external llama-server not healthy"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, base }
    }
}

impl Drop for External {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn healthy(base: &str) -> bool {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// A daemon whose only pool, `remote` (one slot), is `engine` at `endpoint`.
fn remote_daemon(engine: &str, endpoint: &str, ctx: u32) -> Daemon {
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n  - id: remote\n    engine: {engine}\n    endpoint: \"{endpoint}\"\n    slots: 1\n    ctx: {ctx}\n"
    );
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    )
}

fn completion(id: &str, pool: &str, seed: u64) -> Value {
    json!({
        "task_id": id, "model_ref": pool, "priority": "interactive",
        "prompt": "Once upon a time", "max_tokens": 16, "seed": seed, "temperature": 0.8
    })
}

fn chat(id: &str, pool: &str, seed: u64) -> Value {
    json!({
        "task_id": id, "model_ref": pool, "priority": "interactive", "workload": "chat",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Tell me a story."}
        ],
        "max_tokens": 12, "seed": seed, "temperature": 0.8
    })
}

/// Submits `body` and returns its whole stream.
async fn run(d: &Daemon, body: Value) -> Vec<SseEvent> {
    let id = body["task_id"].as_str().unwrap().to_owned();
    let r = d.submit(&body).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
    d.stream(&id).await
}

/// The stream went `started`, tokens, `end` on `pool` with `engine`.
fn check(ev: &[SseEvent], pool: &str, engine: &str, max_tokens: u64) {
    assert_eq!(ev[0].event, "started", "{ev:?}");
    let st = ev[0].json();
    assert_eq!(st["pool_id"], pool);
    assert_eq!(st["engine"], engine);
    let end = ev.last().unwrap();
    assert_eq!(end.event, "end", "{ev:?}");
    assert_eq!(end.json()["finish_reason"], "length");
    assert_eq!(end.json()["tokens_out"], max_tokens);
    assert!(!token_text(ev).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_llamacpp_and_openai_pools_serve_completion_and_chat() {
    let e = engine();
    let ext = External::start(&e, 2, 1024);
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}  - id: remote\n    engine: openai\n    endpoint: \"{}/v1\"\n    slots: 2\n",
        llama_pool("local", &e, 2, 1, 1024),
        ext.base
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    );

    // Both pools are up, each with its engine.
    let (_, h) = d.get("/v1/pools/remote/health").await;
    assert_eq!(h["ready"], true, "{h}");
    assert_eq!(
        h["replicas"][0]["endpoint"].as_str(),
        Some(format!("{}/v1", ext.base).as_str()),
        "{h}"
    );

    // Completion and chat on both.
    let local = run(&d, completion("l1", "local", 42)).await;
    check(&local, "local", "llamacpp", 16);
    let remote = run(&d, completion("r1", "remote", 42)).await;
    check(&remote, "remote", "openai", 16);
    let local_chat = run(&d, chat("lc1", "local", 9)).await;
    check(&local_chat, "local", "llamacpp", 12);
    let remote_chat = run(&d, chat("rc1", "remote", 9)).await;
    check(&remote_chat, "remote", "openai", 12);

    // Seeds pass through the openai adapter: same seed, same text; another seed, other text.
    let again = run(&d, completion("r2", "remote", 42)).await;
    assert_eq!(token_text(&again), token_text(&remote));
    let other = run(&d, completion("r3", "remote", 43)).await;
    assert_ne!(token_text(&other), token_text(&remote));
    let chat_again = run(&d, chat("rc2", "remote", 9)).await;
    assert_eq!(token_text(&chat_again), token_text(&remote_chat));

    // Same model, same sampler, same seed: the OpenAI path (/v1/completions on the external
    // server) and the native path (/completion on the launched one) give the same text, and
    // so do the two chat paths (/v1/chat/completions vs /apply-template + /completion).
    assert_eq!(token_text(&remote), token_text(&local));
    assert_eq!(token_text(&remote_chat), token_text(&local_chat));

    // Capabilities list both engines.
    let (_, caps) = d.get("/v1/capabilities").await;
    let engines: Vec<String> = caps["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["engine"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        engines.contains(&"llamacpp".to_owned()) && engines.contains(&"openai".to_owned()),
        "{caps}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_pool_engine_error_maps_to_our_codes() {
    let e = engine();
    let ext = External::start(&e, 1, 256);
    let d = remote_daemon("openai", &ext.base, 8192);
    // The engine's context (256) is smaller than the pool claims: llama-server refuses the
    // prompt with a 400, which reaches the client as INVALID_PARAMS with the engine's words.
    let mut body = completion("big", "remote", 1);
    body["prompt"] = json!("hello ".repeat(1000));
    let ev = run(&d, body).await;
    let last = ev.last().unwrap();
    assert_eq!(last.event, "error", "{ev:?}");
    let err = last.json();
    assert_eq!(err["code"], "INVALID_PARAMS", "{err}");
    assert_eq!(err["engine"], "openai");
    assert!(
        err["message"].as_str().unwrap().contains("context"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_endpoint_engine_is_abandoned_and_readmitted_when_it_thaws() {
    // The daemon cannot kill an engine it did not launch; when one stops answering (SIGSTOP
    // here) its supervisor makes the running tasks give up, as a killed engine's would.
    let e = engine();
    let ext = External::start(&e, 1, 32768);
    let d = remote_daemon("llamacpp", &ext.base, 32768);
    let mut long = completion("frozen", "remote", 4);
    long["max_tokens"] = json!(20000);
    assert_eq!(d.submit(&long).await.status(), 202);
    d.wait_tokens("frozen", 3).await;
    let stream = d.spawn_stream("frozen");
    let pid = ext.child.id();
    orch_harness::signal(pid, SIGSTOP);
    let frozen_at = Instant::now();
    let ev = tokio::time::timeout(Duration::from_secs(90), stream)
        .await
        .expect("the stream of a frozen endpoint engine must end")
        .unwrap();
    let took = frozen_at.elapsed();
    let last = ev.last().unwrap();
    assert_eq!(last.event, "error", "{ev:?}");
    assert_eq!(last.json()["code"], "WORKER_RESET", "{:?}", last.json());
    assert!(
        last.json()["message"]
            .as_str()
            .unwrap_or("")
            .contains("abandoned"),
        "{:?}",
        last.json()
    );
    eprintln!("frozen endpoint → error event after {took:?}");
    let (_, h) = d.get("/v1/pools/remote/health").await;
    assert_eq!(h["ready"], false, "a frozen engine is not ready: {h}");

    // Thawed, it answers health checks again and takes work.
    orch_harness::signal(pid, SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, h) = d.get("/v1/pools/remote/health").await;
        if h["ready"] == true {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready again after SIGCONT: {h}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ev = run(&d, completion("after", "remote", 5)).await;
    assert_eq!(ev.last().unwrap().event, "end", "{ev:?}");
}

/// Signal numbers on Linux.
const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;
