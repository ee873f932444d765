//! The `openai` adapter against a REAL engine: llama-server's OpenAI-compatible `/v1` API
//! (`/v1/models`, `/v1/completions`, `/v1/chat/completions`) on the tiny test model. The engine
//! comes from `cargo xtask provision-engine`; when it is missing these tests fail with that
//! command, they never skip.

use std::time::{Duration, Instant};

use crate::common::LlamaServer;
use futures::StreamExt;
use orch_engine_adapters::{
    adapter_for, collect, AdapterError, ChatTurn, EngineAdapter, EngineEvent, FinishReason,
    GenerateRequest, LlamaCppAdapter, OpenAiAdapter, Prompt,
};

fn text_req(max_tokens: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Text("Once upon a time".into()),
        max_tokens,
        seed: Some(seed),
        temperature: Some(0.8),
        ..Default::default()
    }
}

fn chat_req(max_tokens: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: Prompt::Chat(vec![
            ChatTurn::text("system", "You are terse."),
            ChatTurn::text("user", "Say something."),
        ]),
        ..text_req(max_tokens, seed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_health_info_against_llama_server() {
    let srv = LlamaServer::start(2, 512);
    // Through the factory, as the pool manager builds it; `/v1` on the URL is accepted.
    let a = adapter_for("openai", &format!("{}/v1", srv.base), None).unwrap();
    assert_eq!(a.engine(), "openai");
    assert_eq!(a.endpoint(), srv.base);
    a.health().await.unwrap();
    let info = a.info().await.unwrap();
    assert_eq!(info.ctx_per_slot, Some(512), "meta.n_ctx of /v1/models");
    assert!(
        info.model.as_deref().unwrap().ends_with(".gguf"),
        "{info:?}"
    );
    // llama-server has no /version; owned_by stands in.
    assert_eq!(info.version, "llamacpp");
    // llama-server has no vLLM metrics: no figure, no error.
    assert_eq!(a.kv_cache_usage().await.unwrap(), None);
    let v = adapter_for("vllm", &srv.base, Some("my-served-name")).unwrap();
    assert_eq!(v.engine(), "vllm");
    assert_eq!(
        v.info().await.unwrap().model.as_deref(),
        Some("my-served-name")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_completion_against_llama_server() {
    let srv = LlamaServer::start(2, 512);
    let a = OpenAiAdapter::new("openai", &srv.base, None).unwrap();
    let (toks, done) = collect(a.generate(text_req(12, 42)).await.unwrap())
        .await
        .unwrap();
    assert!(!toks.is_empty() && toks.iter().all(|t| !t.is_empty()));
    assert_eq!(done.finish_reason, Some(FinishReason::Length));
    assert_eq!(done.tokens_out, Some(12), "usage.completion_tokens");
    assert!(done.tokens_in.unwrap() >= 1, "usage.prompt_tokens");
    assert!(done.decode_ms.is_some(), "llama-server timings");

    // Seed passthrough: the same seed gives the same token stream, another seed another one.
    let (again, _) = collect(a.generate(text_req(12, 42)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(again, toks);
    let (other, _) = collect(a.generate(text_req(12, 43)).await.unwrap())
        .await
        .unwrap();
    assert_ne!(other.concat(), toks.concat());

    // And the same text as llama-server's native /completion with that seed: both adapters
    // drive the same sampler.
    let native = LlamaCppAdapter::new(&srv.base).unwrap();
    let (ntoks, _) = collect(native.generate(text_req(12, 42)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(ntoks.concat(), toks.concat());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_chat_against_llama_server() {
    let srv = LlamaServer::start(2, 512);
    let a = OpenAiAdapter::new("openai", &srv.base, None).unwrap();
    let (toks, done) = collect(a.generate(chat_req(10, 7)).await.unwrap())
        .await
        .unwrap();
    assert!(!toks.is_empty());
    assert_eq!(done.tokens_out, Some(10));
    // The chat template wraps the turns: many more prompt tokens than the raw text.
    assert!(done.tokens_in.unwrap() > 8, "{done:?}");
    let (again, _) = collect(a.generate(chat_req(10, 7)).await.unwrap())
        .await
        .unwrap();
    assert_eq!(again, toks, "same seed, same chat stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_against_llama_server() {
    let srv = LlamaServer::start(1, 256);
    let a = OpenAiAdapter::new("openai", &srv.base, None).unwrap();
    // A prompt beyond the context: llama-server answers 400 with an OpenAI error body.
    let long = GenerateRequest {
        prompt: Prompt::Text("hello ".repeat(2000)),
        ..text_req(4, 1)
    };
    match a.generate(long).await {
        Err(AdapterError::Rejected { status, message }) => {
            assert_eq!(status, 400);
            assert!(message.contains("context"), "{message}");
        }
        Err(e) => panic!("wanted Rejected, got {e:?}"),
        Ok(_) => panic!("wanted Rejected, got a stream"),
    }
    // Nothing listening: unreachable.
    let dead = OpenAiAdapter::new("openai", "http://127.0.0.1:9", None).unwrap();
    assert!(matches!(
        dead.health().await,
        Err(AdapterError::Unreachable { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_cancel_by_drop_frees_the_llama_server_slot() {
    let srv = LlamaServer::start(1, 2048);
    let a = OpenAiAdapter::new("openai", &srv.base, None).unwrap();
    let slots = LlamaCppAdapter::new(&srv.base).unwrap();
    let mut s = a.generate(text_req(2000, 5)).await.unwrap();
    let first = s.next().await.unwrap().unwrap();
    assert!(matches!(first, EngineEvent::Token(_)));
    assert!(slots.slots().await.unwrap()[0].busy, "generating");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slots.slots().await.unwrap()[0].busy {
        assert!(
            Instant::now() < deadline,
            "slot still busy after the stream was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_engine_killed_mid_stream_is_stream_broken() {
    let mut srv = LlamaServer::start(1, 2048);
    let a = OpenAiAdapter::new("openai", &srv.base, None).unwrap();
    let mut s = a.generate(text_req(2000, 5)).await.unwrap();
    assert!(matches!(s.next().await, Some(Ok(EngineEvent::Token(_)))));
    srv.kill();
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match s.next().await {
                Some(Ok(EngineEvent::Token(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after the engine dies");
    assert!(
        matches!(end, Some(Err(AdapterError::StreamBroken { .. }))),
        "{end:?}"
    );
    assert!(s.next().await.is_none(), "nothing after the error");
}
