//! The OpenAI-compatible door: `/v1/models`, `/v1/chat/completions` and `/v1/completions`,
//! streamed and not, and its error shape; the same admission underneath.

use orch_engine_adapters::{AdapterError, Prompt};

use super::*;

fn cfg() -> String {
    yaml("", &[pool("p1", 2, &["model: /models/qwen2.5-7b-q4.gguf"])])
}

fn chat(extra: Value) -> Value {
    with(
        json!({"model": "p1", "max_tokens": 3,
               "messages": [{"role": "developer", "content": "be brief"},
                            {"role": "user", "content": "hi there"}]}),
        extra,
    )
}

/// OpenAI's error shape, with `status`, `type` and `code`.
#[track_caller]
fn oai_error(r: &Resp, status: u16, kind: &str, code: &str) {
    r.expect_status(status);
    let e = &r.body["error"];
    assert_eq!(e["type"], kind, "{}", r.text);
    assert_eq!(e["code"], code, "{}", r.text);
    assert!(
        e["message"].is_string() && e["param"].is_null(),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn models_lists_pool_ids_and_model_names() {
    let app = TestApp::start(&cfg()).await;
    let r = app.get("/v1/models").await;
    r.expect_status(200);
    assert_eq!(r.body["object"], "list");
    let ids: Vec<&str> = r.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["p1", "qwen2.5-7b-q4"]);
    let m = &r.body["data"][1];
    assert_eq!(m["object"], "model");
    assert_eq!(m["owned_by"], "llama-orch");
    assert_eq!(m["pool_id"], "p1");
    assert_eq!(m["ready"], true);
    let one = app.get("/v1/models/qwen2.5-7b-q4").await;
    one.expect_status(200);
    assert_eq!(one.body["id"], "qwen2.5-7b-q4");
    oai_error(
        &app.get("/v1/models/nope").await,
        404,
        "not_found_error",
        "model_not_found",
    );
}

#[tokio::test]
async fn chat_completion_answers_with_the_whole_text_and_usage() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["Hel", "lo", "\u{2028}!"]);
    let r = app.post("/v1/chat/completions", chat(json!({}))).await;
    r.expect_status(200);
    assert_eq!(r.body["object"], "chat.completion");
    assert_eq!(r.body["model"], "p1");
    let c = &r.body["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], "Hello\u{2028}!");
    assert_eq!(c["finish_reason"], "length");
    assert_eq!(
        r.body["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );
    let id = r.body["id"].as_str().expect("id");
    assert!(id.starts_with("chatcmpl-"), "{id}");
    assert_eq!(r.header("x-llorch-task-id"), Some(id));
    assert_eq!(r.header("x-llorch-pool"), Some("p1"));
    // `developer` is sent as `system`; the task is a normal task.
    assert_eq!(
        app.engine("p1").prompts(),
        ["system:be brief|user:hi there"]
    );
    assert_eq!(app.status(id).await["state"], "completed");
}

#[tokio::test]
async fn completion_answers_with_text_completion() {
    let app = TestApp::start(&cfg()).await;
    let r = app
        .post(
            "/v1/completions",
            json!({"model": "qwen2.5-7b-q4", "prompt": ["once upon"], "max_tokens": 2,
                   "seed": 5, "stop": "\n"}),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.body["object"], "text_completion");
    assert_eq!(r.body["choices"][0]["text"], "tok0 tok1 ");
    assert_eq!(r.body["usage"]["completion_tokens"], 2);
    assert!(r.body["id"]
        .as_str()
        .is_some_and(|i| i.starts_with("cmpl-")));
    let req = &app.engine("p1").requests()[0];
    assert_eq!(req.prompt, Prompt::Text("once upon".into()));
    assert_eq!(req.seed, Some(5));
    assert_eq!(req.stop, ["\n"]);
}

#[tokio::test]
async fn streamed_chat_sends_role_content_finish_usage_and_done() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["a", "", "b\r"]);
    let s = app
        .post_stream(
            "/v1/chat/completions",
            chat(json!({"stream": true, "stream_options": {"include_usage": true}})),
        )
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let task_id = s
        .headers
        .get("x-llorch-task-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-llorch-task-id")
        .to_owned();
    let ev = s.collect().await;
    let data: Vec<&str> = ev.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(data.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = ev
        .iter()
        .map(SseEvent::json)
        .filter(|v| !v.is_null())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == task_id.as_str()));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let content: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .skip(1)
        .collect();
    // The empty token sends no chunk.
    assert_eq!(content, ["a", "b\r"]);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "length");
    let usage = chunks.last().expect("a usage chunk");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);
}

#[tokio::test]
async fn streamed_completion_sends_text_chunks_and_done() {
    let app = TestApp::start(&cfg()).await;
    let s = app
        .post_stream(
            "/v1/completions",
            json!({"model": "p1", "prompt": "x", "max_tokens": 2, "stream": true}),
        )
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let ev = s.collect().await;
    let chunks: Vec<Value> = ev
        .iter()
        .map(SseEvent::json)
        .filter(|v| !v.is_null())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 ");
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(
        chunks.last().expect("a finish chunk")["choices"][0]["finish_reason"],
        "length"
    );
    assert_eq!(ev.last().map(|e| e.data.as_str()), Some("[DONE]"));
}

#[tokio::test]
async fn openai_requests_are_refused_in_openai_shape() {
    let app = TestApp::start(&cfg()).await;
    let post = |body: Value| app.post("/v1/chat/completions", body);
    oai_error(
        &post(json!({"model": "p1"})).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    oai_error(
        &post(chat(json!({"n": 2}))).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    oai_error(
        &post(chat(json!({"tools": [{"type": "function"}]}))).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    oai_error(
        &post(chat(json!({"priority": "urgent"}))).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    oai_error(
        &post(chat(json!({"model": "gpt-4"}))).await,
        404,
        "not_found_error",
        "model_not_found",
    );
    oai_error(
        &post(chat(json!({"max_tokens": 0}))).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    oai_error(
        &app.post("/v1/completions", json!({"model": "p1"})).await,
        400,
        "invalid_request_error",
        "invalid_params",
    );
    assert!(app.engine("p1").requests().is_empty());
}

#[tokio::test]
async fn openai_queue_full_is_429_rate_limit_with_retry_after() {
    let app = TestApp::start(&yaml("queue: {capacity: 1}", &[pool("p1", 1, &[])])).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    let r = app.post("/v1/chat/completions", chat(json!({}))).await;
    oai_error(&r, 429, "rate_limit_error", "admission_reject");
    assert!(r.header("retry-after").is_some() && r.header("x-backoff-ms").is_some());
    e.open();
}

#[tokio::test]
async fn openai_engine_failure_is_an_openai_error() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").fail_next(AdapterError::Engine {
        message: "boom".into(),
    });
    let r = app.post("/v1/chat/completions", chat(json!({}))).await;
    oai_error(&r, 502, "server_error", "engine_error");
    assert!(r.body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("boom")));
}

#[tokio::test]
async fn openai_priority_session_and_default_max_tokens_map_to_the_task() {
    let app = TestApp::start(&cfg()).await;
    let mut req = app.request(
        Method::POST,
        "/v1/completions",
        Some(&json!({"model": "p1", "prompt": "x"})),
    );
    req.headers_mut().insert(
        "x-llorch-priority",
        "batch".parse().expect("a header value"),
    );
    req.headers_mut().insert(
        "x-llorch-session",
        "oai-s1".parse().expect("a header value"),
    );
    let r = app.send(req).await;
    r.expect_status(200);
    let id = r.header("x-llorch-task-id").expect("task id");
    let st = app.status(id).await;
    assert_eq!(st["priority"], "batch");
    // No max_tokens: 512 capped by the pool's 256-token context, then clamped to what the
    // prompt leaves (the fake engine cannot count: the bound of 1 byte + 32 template tokens).
    assert_eq!(app.engine("p1").requests()[0].max_tokens, 223);
    assert_eq!(r.header("x-llorch-max-tokens-clamped"), Some("256->223"));
    let s = app.get("/v1/sessions/oai-s1").await;
    s.expect_status(200);
    assert_eq!(s.body["turns"], 1);
}

/// The agent doors' context rules: an agent's own maximum `max_tokens` is clamped to what the
/// prompt leaves (said in a header); a prompt that fills the context is refused before it is
/// queued, with the numbers and the pool that would hold it; `model_aliases` map names no pool
/// serves. The native door keeps refusing a `max_tokens` over the context.
#[tokio::test]
async fn agent_doors_clamp_refuse_long_prompts_and_follow_aliases() {
    let cfg = yaml(
        "model_aliases: { \"claude-*\": p1, \"claude-big\": p2 }",
        &[
            pool("p1", 1, &["model: /models/small.gguf"]),
            pool("p2", 1, &["model: /models/big.gguf", "ctx: 1024"]),
        ],
    );
    let app = TestApp::start(&cfg).await;
    let r = app
        .post(
            "/v1/chat/completions",
            chat(json!({"max_tokens": 32000, "model": "claude-sonnet-4"})),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.header("x-llorch-pool"), Some("p1"));
    let clamped = r
        .header("x-llorch-max-tokens-clamped")
        .expect("clamp header");
    assert!(clamped.starts_with("32000->"), "{clamped}");
    let granted: u32 = clamped["32000->".len()..].parse().expect("a number");
    assert!(granted > 0 && granted < 256, "{clamped}");
    assert_eq!(app.engine("p1").requests()[0].max_tokens, granted);
    let r = app
        .post("/v1/chat/completions", chat(json!({"model": "claude-big"})))
        .await;
    assert_eq!(r.header("x-llorch-pool"), Some("p2"));
    oai_error(
        &app.post("/v1/chat/completions", chat(json!({"model": "gpt-5"})))
            .await,
        404,
        "not_found_error",
        "model_not_found",
    );
    // 300 words: the double counts 300 tokens, over p1's 256.
    let long = vec!["word"; 300].join(" ");
    let r = app
        .post(
            "/v1/chat/completions",
            json!({"model": "p1", "messages": [{"role": "user", "content": long}]}),
        )
        .await;
    oai_error(&r, 400, "invalid_request_error", "invalid_params");
    let m = r.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        m.contains("300 tokens")
            && m.contains("256 tokens per slot")
            && m.contains("p2 (big, 1024"),
        "{m}"
    );
    let native = app
        .post(
            "/v1/tasks",
            json!({"task_id": "n1", "model_ref": "p1", "priority": "interactive",
                   "prompt": "x", "max_tokens": 32000}),
        )
        .await;
    native.expect_error(400, "INVALID_PARAMS", "exceeds the context of 256 tokens");
}
