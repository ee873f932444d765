//! The vLLM-specific parts of the OpenAI-compatible adapter against PROTOCOL FIXTURES (no vLLM
//! runs in CI): `/v1/models` with `max_model_len`, `/version`, `/metrics` KV usage, vLLM's
//! streams with their usage chunk, its older error shape, and a server refusing
//! `stream_options`. The adapter's OpenAI path itself is proven against a real llama-server in
//! `openai_llama_server.rs`.

use crate::common::{fixture, FixtureServer, Reply};
use orch_engine_adapters::{
    adapter_for, collect, AdapterError, ChatTurn, FinishReason, GenerateRequest, Prompt,
};

const MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

fn req() -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text("San Francisco is".into()),
        max_tokens: 3,
        seed: Some(1234),
        ..Default::default()
    }
}

async fn server(completions: Reply) -> FixtureServer {
    FixtureServer::start(vec![
        (
            "GET /v1/models",
            Reply::Json(200, fixture("vllm_fixture_models.json")),
        ),
        (
            "GET /version",
            Reply::Json(200, fixture("vllm_fixture_version.json")),
        ),
        (
            "GET /metrics",
            Reply::Text(fixture("vllm_fixture_metrics.txt")),
        ),
        ("POST /v1/completions", completions),
        (
            "POST /v1/chat/completions",
            Reply::Sse(fixture("vllm_fixture_chat_stream.sse")),
        ),
    ])
    .await
}

#[tokio::test]
async fn vllm_fixture_health_info_and_kv_usage() {
    let f = server(Reply::Json(500, Vec::new())).await;
    let a = adapter_for("vllm", &f.base, None).unwrap();
    a.health().await.unwrap();
    let info = a.info().await.unwrap();
    assert_eq!(info.version, "0.6.4.post1");
    assert_eq!(info.ctx_per_slot, Some(8192));
    assert_eq!(info.model.as_deref(), Some(MODEL));
    assert_eq!(a.kv_cache_usage().await.unwrap(), Some(0.0375));
}

#[tokio::test]
async fn vllm_fixture_completions_stream() {
    let f = server(Reply::Sse(fixture("vllm_fixture_completions_stream.sse"))).await;
    // No `model:` in the pool: the adapter names the one the server lists.
    let a = adapter_for("vllm", &f.base, None).unwrap();
    let (toks, done) = collect(a.generate(req()).await.unwrap()).await.unwrap();
    assert_eq!(toks, vec![" a", " city", " in"]);
    assert_eq!(done.finish_reason, Some(FinishReason::Length));
    assert_eq!(done.tokens_out, Some(3));
    assert_eq!(done.tokens_in, Some(5));
    let body = f.last_body("POST /v1/completions");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["prompt"], "San Francisco is");
    assert_eq!(body["seed"], 1234);
    assert_eq!(body["max_tokens"], 3);
    assert_eq!(body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn vllm_fixture_chat_stream() {
    let f = server(Reply::Json(500, Vec::new())).await;
    let a = adapter_for("vllm", &f.base, Some(MODEL)).unwrap();
    let chat = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatTurn::text("user", "Hi")]),
        ..req()
    };
    let (toks, done) = collect(a.generate(chat).await.unwrap()).await.unwrap();
    assert_eq!(toks, vec!["Hello", "!"]);
    assert_eq!(done.finish_reason, Some(FinishReason::Stop));
    assert_eq!(done.tokens_out, Some(2));
    assert_eq!(f.last_body("POST /v1/chat/completions")["model"], MODEL);
}

#[tokio::test]
async fn vllm_fixture_old_error_shape_is_rejected_with_its_message() {
    let f = server(Reply::Json(
        400,
        fixture("vllm_fixture_bad_request_v0.json"),
    ))
    .await;
    let a = adapter_for("vllm", &f.base, Some(MODEL)).unwrap();
    match a.generate(req()).await {
        Err(AdapterError::Rejected {
            status: 400,
            message,
        }) => {
            assert!(
                message.starts_with("This model's maximum context length"),
                "{message}"
            )
        }
        Err(e) => panic!("{e:?}"),
        Ok(_) => panic!("a stream"),
    }
}

#[tokio::test]
async fn vllm_fixture_stream_options_refused_then_retried_without() {
    let f = server(Reply::IfBodyHas(
        "stream_options",
        Box::new(Reply::Json(
            400,
            fixture("vllm_fixture_stream_options_refused.json"),
        )),
        Box::new(Reply::Sse(fixture("vllm_fixture_completions_stream.sse"))),
    ))
    .await;
    let a = adapter_for("openai", &f.base, Some(MODEL)).unwrap();
    let (toks, _) = collect(a.generate(req()).await.unwrap()).await.unwrap();
    assert_eq!(toks.concat(), " a city in");
    // Remembered: the next request goes without it at once.
    let (toks, _) = collect(a.generate(req()).await.unwrap()).await.unwrap();
    assert_eq!(toks.concat(), " a city in");
    let posts: Vec<_> = f
        .seen()
        .into_iter()
        .filter(|s| s.route == "POST /v1/completions")
        .collect();
    assert_eq!(posts.len(), 3, "refused once, then twice without the field");
    assert!(posts[1].body.get("stream_options").is_none());
    assert!(posts[2].body.get("stream_options").is_none());
}

#[tokio::test]
async fn vllm_fixture_no_metrics_means_no_figure() {
    let f = FixtureServer::start(vec![(
        "GET /v1/models",
        Reply::Json(200, fixture("vllm_fixture_models.json")),
    )])
    .await;
    let a = adapter_for("openai", &f.base, None).unwrap();
    assert_eq!(a.kv_cache_usage().await.unwrap(), None);
}
