//! Exact relay through a correct SSE codec, both ways.
//!
//! A labelled TEST DOUBLE engine (below) speaks llama-server's `/completion` stream protocol but
//! emits hostile token texts — U+2028, U+0085, lone CR, CRLF, blank lines, text that looks like
//! SSE fields — and writes its HTTP body in chunks split in the middle of multi-byte UTF-8
//! characters. The daemon must relay every token byte for byte. The real engine is proven in
//! `spine.rs`; this double exists only because a random-weights model cannot be made to emit
//! these exact strings.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::stream;
use orch_harness::{Daemon, DaemonOptions, SseEvent};
use serde_json::{json, Value};

use crate::support::bin;

const HOSTILE: &[&str] = &[
    "plain",
    "line\u{2028}separator",
    "next\u{0085}line",
    "lone\rcr",
    "crlf\r\n",
    "\n\n",
    "data: fake\n\nevent: end\ndata: {}",
    "é語🦀",
    ":comment-looking",
    "",
    " leading space",
    "tab\there",
    "\u{feff}bom",
];

fn body_bytes() -> Vec<u8> {
    let mut out = Vec::new();
    for (i, t) in HOSTILE.iter().enumerate() {
        let chunk = json!({"index":0,"content":t,"tokens":[i],"stop":false,"id_slot":-1});
        out.extend_from_slice(format!("data: {chunk}\n\n").as_bytes());
    }
    let last = json!({"content":"","stop":true,"stop_type":"limit","id_slot":0,
        "timings":{"prompt_n":1,"predicted_n":HOSTILE.len(),"predicted_ms":1.0}});
    out.extend_from_slice(format!("data: {last}\r\n\r\n").as_bytes());
    out
}

/// Splits `b` into 3-byte pieces: most multi-byte characters straddle two pieces.
fn split(b: Vec<u8>) -> Vec<Result<Bytes, Infallible>> {
    b.chunks(3).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
}

async fn start_double() -> String {
    let app = Router::new()
        .route("/health", get(|| async { Json(json!({"status":"ok"})) }))
        .route(
            "/props",
            get(|| async {
                Json(json!({"build_info":"test-double","total_slots":4,
                    "default_generation_settings":{"n_ctx":4096},"model_path":"double"}))
            }),
        )
        .route(
            "/completion",
            post(|| async {
                axum::response::Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from_stream(stream::iter(split(body_bytes()))))
                    .unwrap()
            }),
        );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_token_texts_are_relayed_byte_for_byte() {
    let endpoint = start_double().await;
    let config = format!("pools:\n  - id: double\n    engine: llamacpp\n    endpoint: \"{endpoint}\"\n    slots: 4\n");
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    );
    let r = d
        .submit(&json!({"task_id":"h","model_ref":"double","priority":"interactive","prompt":"x","max_tokens":32}))
        .await;
    assert_eq!(r.status(), 202);
    // Read the raw bytes too, in small pieces, to check the frames themselves.
    let resp = d
        .client()
        .get(format!("{}/v1/tasks/h/stream", d.base))
        .send()
        .await
        .unwrap();
    let events: Vec<SseEvent> = orch_harness::read_sse(resp).await;
    let tokens: Vec<String> = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["t"].as_str().unwrap().to_owned())
        .collect();
    let expected: Vec<String> = HOSTILE.iter().map(|s| s.to_string()).collect();
    assert_eq!(tokens, expected);
    let end = events.last().unwrap();
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["tokens_out"], HOSTILE.len() as u64);
    // No event other than ours was smuggled in by token text.
    assert!(events
        .iter()
        .all(|e| ["started", "token", "metrics", "end"].contains(&e.event.as_str())));
    let (_, status): (u16, Value) = d.get("/v1/tasks/h").await;
    assert_eq!(status["state"], "completed");
}
