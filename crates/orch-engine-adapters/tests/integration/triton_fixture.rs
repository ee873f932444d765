//! The `triton` adapter against PROTOCOL FIXTURES (no Triton runs in CI): files in
//! `tests/fixtures/triton_fixture_*` written from Triton's generate-extension document and the
//! vLLM backend's request handling, served over real HTTP by a small axum server.

use crate::common::{fixture, FixtureServer, Reply};
use futures::StreamExt;
use orch_engine_adapters::{
    adapter_for, collect, AdapterError, EngineEvent, FinishReason, GenerateRequest, Prompt,
};

const STREAM: &str = "POST /v2/models/vllm_model/generate_stream";

fn req(seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text("What is machine learning?".into()),
        max_tokens: 16,
        seed: Some(seed),
        temperature: Some(0.0),
        ..Default::default()
    }
}

async fn server(generate: Reply, model_ready: Reply) -> FixtureServer {
    FixtureServer::start(vec![
        ("GET /v2/health/ready", Reply::Json(200, Vec::new())),
        ("GET /v2/models/vllm_model/ready", model_ready),
        (
            "GET /v2",
            Reply::Json(200, fixture("triton_fixture_server_metadata.json")),
        ),
        (STREAM, generate),
    ])
    .await
}

#[tokio::test]
async fn triton_fixture_health_and_info() {
    let f = server(Reply::Json(500, Vec::new()), Reply::Json(200, Vec::new())).await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    assert_eq!(a.engine(), "triton");
    a.health().await.unwrap();
    let info = a.info().await.unwrap();
    assert_eq!(info.version, "2.50.0");
    assert_eq!(info.model.as_deref(), Some("vllm_model"));
    assert_eq!(info.ctx_per_slot, None);
    // The model name comes from the pool config; without it there is no adapter.
    assert!(matches!(
        adapter_for("triton", &f.base, None).err(),
        Some(AdapterError::Unsupported(_))
    ));
}

#[tokio::test]
async fn triton_fixture_model_not_ready() {
    let f = server(
        Reply::Json(500, Vec::new()),
        Reply::Json(400, fixture("triton_fixture_model_not_ready.json")),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    match a.health().await {
        Err(AdapterError::Engine { message }) => {
            assert!(
                message.contains("vllm_model") && message.contains("not ready"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn triton_fixture_generate_stream() {
    let f = server(
        Reply::Sse(fixture("triton_fixture_generate_stream.sse")),
        Reply::Json(200, Vec::new()),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    let (toks, done) = collect(a.generate(req(11)).await.unwrap()).await.unwrap();
    assert_eq!(toks.concat(), " Machine learning is a field ✓\u{2028}");
    assert_eq!(toks.len(), 4);
    // No end marker in this protocol: the clean close is the end; no outputs, no counts.
    assert_eq!(done.finish_reason, None);
    let body = f.last_body(STREAM);
    assert_eq!(body["text_input"], "What is machine learning?");
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(body["stream"], true);
    assert_eq!(body["parameters"]["seed"], 11);
    assert_eq!(body["parameters"]["temperature"], 0.0);
}

#[tokio::test]
async fn triton_fixture_generate_stream_with_outputs() {
    let f = server(
        Reply::Sse(fixture("triton_fixture_generate_stream_with_outputs.sse")),
        Reply::Json(200, Vec::new()),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    let (toks, done) = collect(a.generate(req(1)).await.unwrap()).await.unwrap();
    assert_eq!(toks, vec![" Machine", " learning"]);
    assert_eq!(done.finish_reason, Some(FinishReason::Length));
    assert_eq!(done.tokens_out, Some(2));
    assert_eq!(done.tokens_in, Some(5));
}

#[tokio::test]
async fn triton_fixture_errors() {
    let f = server(
        Reply::Json(400, fixture("triton_fixture_bad_request.json")),
        Reply::Json(200, Vec::new()),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    match a.generate(req(1)).await {
        Err(AdapterError::Rejected { status, message }) => {
            assert_eq!(status, 400);
            assert!(message.contains("missing required input"), "{message}");
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a stream"),
    }
    // After a 200, an error arrives as an event.
    let f = server(
        Reply::Sse(fixture("triton_fixture_error_stream.sse")),
        Reply::Json(200, Vec::new()),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    let evs: Vec<_> = a.generate(req(1)).await.unwrap().collect().await;
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(matches!(&evs[0], Ok(EngineEvent::Token(t)) if t == " Machine"));
    assert!(
        matches!(&evs[1], Err(AdapterError::Engine { message }) if message == "An Error Occurred")
    );
}

#[tokio::test]
async fn triton_fixture_connection_broken_mid_stream() {
    let f = server(
        Reply::SseBreaks(fixture("triton_fixture_generate_stream.sse"), 100),
        Reply::Json(200, Vec::new()),
    )
    .await;
    let a = adapter_for("triton", &f.base, Some("vllm_model")).unwrap();
    let evs: Vec<_> = a.generate(req(1)).await.unwrap().collect().await;
    // A reset is not a clean close: no Done, StreamBroken.
    assert!(
        matches!(evs.last(), Some(Err(AdapterError::StreamBroken { .. }))),
        "{evs:?}"
    );
    assert!(!evs.iter().any(|e| matches!(e, Ok(EngineEvent::Done(_)))));
}
