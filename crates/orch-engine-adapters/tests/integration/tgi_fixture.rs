//! The `tgi` adapter against PROTOCOL FIXTURES (no TGI runs in CI): files in
//! `tests/fixtures/tgi_fixture_*` written from TGI's published OpenAPI document, served over
//! real HTTP by a small axum server so the adapter's whole client path runs.

use crate::common::{fixture, FixtureServer, Reply};
use futures::StreamExt;
use orch_engine_adapters::{
    adapter_for, collect, AdapterError, ChatTurn, EngineEvent, FinishReason, GenerateRequest,
    Prompt,
};

fn req(seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text("Why is the sky blue?".into()),
        max_tokens: 6,
        seed: Some(seed),
        temperature: Some(0.7),
        top_k: Some(40),
        stop: vec!["\n\n".into()],
        ..Default::default()
    }
}

async fn server(generate: Reply) -> FixtureServer {
    FixtureServer::start(vec![
        ("GET /health", Reply::Json(200, Vec::new())),
        (
            "GET /info",
            Reply::Json(200, fixture("tgi_fixture_info.json")),
        ),
        ("POST /generate_stream", generate),
        (
            "POST /v1/chat/completions",
            Reply::Sse(fixture("tgi_fixture_chat_stream.sse")),
        ),
    ])
    .await
}

#[tokio::test]
async fn tgi_fixture_health_and_info() {
    let f = server(Reply::Json(500, Vec::new())).await;
    let a = adapter_for("tgi", &format!("{}/", f.base), None).unwrap();
    assert_eq!(a.engine(), "tgi");
    a.health().await.unwrap();
    let info = a.info().await.unwrap();
    assert_eq!(info.version, "2.4.1");
    assert_eq!(info.ctx_per_slot, Some(4096));
    assert_eq!(info.slots, Some(128));
    assert_eq!(
        info.model.as_deref(),
        Some("mistralai/Mistral-7B-Instruct-v0.2")
    );
    assert_eq!(a.kv_cache_usage().await.unwrap(), None);
}

#[tokio::test]
async fn tgi_fixture_unhealthy_is_an_error() {
    let f = FixtureServer::start(vec![(
        "GET /health",
        Reply::Json(503, fixture("tgi_fixture_unhealthy.json")),
    )])
    .await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    match a.health().await {
        Err(AdapterError::Engine { message }) => {
            assert!(message.contains("unhealthy"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn tgi_fixture_generate_stream() {
    let f = server(Reply::Sse(fixture("tgi_fixture_generate_stream.sse"))).await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    let (toks, done) = collect(a.generate(req(42)).await.unwrap()).await.unwrap();
    // Text byte for byte, the special `</s>` left out, the last event's details as accounting.
    assert_eq!(
        toks,
        vec![" Ray", "le", "igh", " scattering", " é\u{2028}✓\n"]
    );
    assert_eq!(toks.concat(), " Rayleigh scattering é\u{2028}✓\n");
    assert_eq!(done.finish_reason, Some(FinishReason::Stop));
    assert_eq!(done.tokens_out, Some(6));
    assert_eq!(done.tokens_in, Some(7));
    // What the adapter asked for: TGI's parameter names, the seed passed through.
    let body = f.last_body("POST /generate_stream");
    assert_eq!(body["inputs"], "Why is the sky blue?");
    let p = &body["parameters"];
    assert_eq!(p["max_new_tokens"], 6);
    assert_eq!(p["seed"], 42);
    assert_eq!(p["top_k"], 40);
    assert_eq!(p["do_sample"], true);
    assert_eq!(p["details"], true);
    assert_eq!(p["stop"][0], "\n\n");
}

#[tokio::test]
async fn tgi_fixture_chat_uses_the_messages_api() {
    let f = server(Reply::Json(500, Vec::new())).await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    let chat = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatTurn::text("user", "What is deep learning?")]),
        ..req(3)
    };
    let (toks, done) = collect(a.generate(chat).await.unwrap()).await.unwrap();
    assert_eq!(toks.concat(), "Deep learning is");
    assert_eq!(done.finish_reason, Some(FinishReason::Length));
    assert_eq!(done.tokens_out, Some(3));
    let body = f.last_body("POST /v1/chat/completions");
    assert_eq!(body["messages"][0]["content"], "What is deep learning?");
    assert_eq!(body["seed"], 3);
    assert_eq!(body["stream"], true);
}

#[tokio::test]
async fn tgi_fixture_errors() {
    // 422 validation error before the stream: Rejected, with TGI's message.
    let f = server(Reply::Json(
        422,
        fixture("tgi_fixture_validation_error.json"),
    ))
    .await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    match a.generate(req(1)).await {
        Err(AdapterError::Rejected { status, message }) => {
            assert_eq!(status, 422);
            assert!(message.contains("max_new_tokens") && message.contains("validation"));
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a stream"),
    }
    // 429 overloaded: a 4xx, Rejected.
    let f = server(Reply::Json(429, fixture("tgi_fixture_overloaded.json"))).await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    assert!(matches!(
        a.generate(req(1)).await.err(),
        Some(AdapterError::Rejected { status: 429, .. })
    ));
    // An error event after tokens: the tokens, then an Engine error, then nothing.
    let f = server(Reply::Sse(fixture("tgi_fixture_error_stream.sse"))).await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    let evs: Vec<_> = a.generate(req(1)).await.unwrap().collect().await;
    assert!(matches!(&evs[0], Ok(EngineEvent::Token(t)) if t == " Ray"));
    assert!(
        matches!(&evs[1], Err(AdapterError::Engine { message }) if message.contains("CUDA out of memory"))
    );
    assert_eq!(evs.len(), 2);
}

#[tokio::test]
async fn tgi_fixture_connection_broken_mid_stream() {
    let full = fixture("tgi_fixture_generate_stream.sse");
    let f = server(Reply::SseBreaks(full, 250)).await;
    let a = adapter_for("tgi", &f.base, None).unwrap();
    let evs: Vec<_> = a.generate(req(1)).await.unwrap().collect().await;
    assert!(matches!(&evs[0], Ok(EngineEvent::Token(_))));
    assert!(
        matches!(evs.last(), Some(Err(AdapterError::StreamBroken { .. }))),
        "{evs:?}"
    );
}
