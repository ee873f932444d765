//! The `llamacpp` adapter's tool calls, structured output and log probabilities against a REAL
//! llama-server on the tiny test model (from `cargo xtask provision-engine`; missing, these
//! tests fail with that command). The model has random weights: a logit bias makes it open a
//! tool call in test-harness/openai-sdk/tool-template.jinja, and llama-server's grammar forces
//! the rest. Structured output runs on the real instruct model (`CHAT_MODEL`): a JSON schema's
//! grammar forces the shape and the model fills in what it was asked.

use std::path::PathBuf;

use crate::common::LlamaServer;
use orch_engine_adapters::{
    collect, ChatTurn, EngineAdapter, EngineEvent, FinishReason, GenerateRequest, LlamaCppAdapter,
    Prompt, ResponseFormat,
};
use serde_json::{json, Value};

fn template() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../test-harness/openai-sdk/tool-template.jinja")
        .display()
        .to_string()
}

/// All events of a generation.
async fn events(a: &LlamaCppAdapter, req: GenerateRequest) -> Vec<EngineEvent> {
    use futures::StreamExt;
    let s = a.generate(req).await.expect("generate");
    s.map(|e| e.expect("event")).collect().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_come_back_from_the_chat_endpoint() {
    let t = template();
    let srv = LlamaServer::start_with(1, 2048, &["--chat-template-file", &t]);
    let a = LlamaCppAdapter::new(&srv.base).unwrap();
    let req = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatTurn::text(
            "user",
            "What is the weather in Paris?",
        )]),
        max_tokens: 64,
        seed: Some(42),
        temperature: Some(0.0),
        logit_bias: vec![("25380".into(), 100.0)],
        tools: vec![
            json!({"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris"]}},
                "required": ["city"]}}}),
        ],
        parallel_tool_calls: Some(false),
        ..Default::default()
    };
    let evs = events(&a, req).await;
    let (mut name, mut args, mut ids) = (None, String::new(), 0);
    for e in &evs {
        if let EngineEvent::Chunk(c) = e {
            for d in &c.tool_calls {
                assert_eq!(d.index, 0);
                ids += usize::from(d.id.is_some());
                name = name.or(d.name.clone());
                args.push_str(d.arguments.as_deref().unwrap_or_default());
            }
        }
    }
    assert_eq!(ids, 1, "one call, its id on the first piece: {evs:?}");
    assert_eq!(name.as_deref(), Some("get_weather"));
    let v: Value = serde_json::from_str(&args).unwrap();
    assert_eq!(v, json!({"city": "Paris"}));
    let Some(EngineEvent::Done(done)) = evs.last() else {
        panic!("no Done: {evs:?}")
    };
    assert_eq!(done.finish_reason, Some(FinishReason::ToolCalls));
    assert!(done.prompt_tokens.is_some_and(|n| n > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_schema_and_logprobs_on_completion() {
    // The schema on the real instruct model: its grammar forces the shape, and the model fills
    // it with what was asked (the tiny random model would only prove the shape).
    let chat = LlamaServer::start_model(&orch_harness::chat_model(), 1, 2048, &[]);
    let a = LlamaCppAdapter::new(&chat.base).unwrap();
    let schema = json!({"type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": false});
    let req = GenerateRequest {
        prompt: Prompt::Chat(vec![ChatTurn::text(
            "user",
            "Plan a trip to Rome for 3 days.",
        )]),
        max_tokens: 128,
        seed: Some(7),
        temperature: Some(0.0),
        response_format: Some(ResponseFormat::JsonSchema {
            name: "trip".into(),
            schema: Some(schema),
            strict: None,
        }),
        ..Default::default()
    };
    let (toks, done) = collect(a.generate(req).await.unwrap()).await.unwrap();
    let v: Value = serde_json::from_str(&toks.concat()).unwrap();
    assert_eq!(v["city"], "Rome", "{v}");
    assert_eq!(v["days"], 3, "{v}");
    assert_eq!(done.finish_reason, Some(FinishReason::Stop));
    drop(chat);

    // Log probabilities on the tiny model (a real model may give a token probability 1.0).
    let srv = LlamaServer::start(1, 2048);
    let a = LlamaCppAdapter::new(&srv.base).unwrap();

    let req = GenerateRequest {
        prompt: Prompt::Text("Once upon a time".into()),
        max_tokens: 4,
        seed: Some(3),
        logprobs: Some(2),
        ..Default::default()
    };
    let evs = events(&a, req).await;
    let mut n = 0;
    for e in &evs {
        if let EngineEvent::Chunk(c) = e {
            for l in &c.logprobs {
                n += 1;
                assert!(l.logprob < 0.0 && l.logprob.is_finite(), "{l:?}");
                assert_eq!(l.top.len(), 2, "{l:?}");
                assert!(l.bytes.is_some());
            }
        }
    }
    assert_eq!(n, 4, "one entry per generated token: {evs:?}");
    // `0` alternatives: the token's own log probability, no list.
    let req = GenerateRequest {
        prompt: Prompt::Text("Once upon a time".into()),
        max_tokens: 2,
        logprobs: Some(0),
        ..Default::default()
    };
    for e in events(&a, req).await {
        if let EngineEvent::Chunk(c) = e {
            assert!(c.logprobs.iter().all(|l| l.top.is_empty()));
        }
    }
}
