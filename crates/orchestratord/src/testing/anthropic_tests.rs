//! The Anthropic Messages door (`/v1/messages`, `/v1/messages/count_tokens`) on the fake
//! engine: reply and event shapes, the queue headers, errors in Anthropic's shape (also
//! 401/404/405/413 under `/v1/messages*`) and `x-api-key`. The real proof is
//! tests/e2e/anthropic_sdk.rs (the `anthropic` SDK, a real llama-server and model).

use orch_engine_adapters::{AdapterError, Prompt};

use super::*;

fn cfg() -> String {
    yaml(
        "model_aliases: {\"claude-*\": p1}",
        &[pool("p1", 2, &["model: /models/qwen2.5-7b-q4.gguf"])],
    )
}

fn msg(extra: Value) -> Value {
    with(
        json!({"model": "p1", "max_tokens": 3, "system": "be brief",
               "messages": [{"role": "user", "content": "hi there"}]}),
        extra,
    )
}

/// Anthropic's error shape with `status` and `type`.
#[track_caller]
fn anth_error(r: &Resp, status: u16, kind: &str) {
    r.expect_status(status);
    assert_eq!(r.body["type"], "error", "{}", r.text);
    assert_eq!(r.body["error"]["type"], kind, "{}", r.text);
    assert!(r.body["error"]["message"].is_string(), "{}", r.text);
}

#[tokio::test]
async fn a_message_answers_with_text_usage_and_queue_headers() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["Par", "is", "\u{2028}!"]);
    let r = app
        .post("/v1/messages", msg(json!({"model": "claude-sonnet-4-5"})))
        .await;
    r.expect_status(200);
    let id = r.body["id"].as_str().expect("id");
    assert!(id.starts_with("msg_"), "{id}");
    assert_eq!(r.header("x-llorch-task-id"), Some(id));
    assert!(r.header("x-llorch-queue-position").is_some());
    assert!(r.header("x-llorch-predicted-start-ms").is_some());
    assert_eq!(r.body["type"], "message");
    assert_eq!(r.body["role"], "assistant");
    assert_eq!(r.body["model"], "claude-sonnet-4-5", "the model as asked");
    assert_eq!(
        r.body["content"],
        json!([{"type": "text", "text": "Paris\u{2028}!"}])
    );
    assert_eq!(r.body["stop_reason"], "max_tokens");
    assert_eq!(r.body["stop_sequence"], Value::Null);
    assert_eq!(r.body["usage"]["output_tokens"], 3);
    let st = app.status(id).await;
    assert_eq!(st["dialect"], "messages");
    let req = &app.engine("p1").requests()[0];
    assert_eq!(req.max_tokens, 3);
    match &req.prompt {
        Prompt::Chat(m) => {
            assert_eq!(m[0].role, "system");
            assert_eq!(m[1].content, "hi there");
        }
        other => panic!("not a chat prompt: {other:?}"),
    }
}

#[tokio::test]
async fn a_streamed_message_has_anthropics_events() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["a", "", "b\r"]);
    let s = app
        .post_stream("/v1/messages", msg(json!({"stream": true})))
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let task_id = s
        .headers
        .get("x-llorch-task-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-llorch-task-id")
        .to_owned();
    let ev = s.collect().await;
    let names: Vec<&str> = ev.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d: Vec<Value> = ev.iter().map(SseEvent::json).collect();
    for (e, v) in ev.iter().zip(&d) {
        assert_eq!(v["type"], e.event.as_str());
    }
    assert_eq!(d[0]["message"]["id"], task_id.as_str());
    let text: String = d
        .iter()
        .filter_map(|v| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "ab\r");
    assert_eq!(d[6]["delta"]["stop_reason"], "max_tokens");
    assert_eq!(d[6]["usage"]["output_tokens"], 3);
}

#[tokio::test]
async fn a_failure_mid_stream_is_an_error_event() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").fail_mid_stream(
        1,
        AdapterError::Engine {
            message: "boom".into(),
        },
    );
    let ev = app
        .post_stream("/v1/messages", msg(json!({"stream": true})))
        .await
        .collect()
        .await;
    let last = ev.last().expect("events");
    assert_eq!(last.event, "error");
    let v = last.json();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "api_error");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("boom")));
}

#[tokio::test]
async fn messages_errors_are_in_anthropics_shape() {
    let app = TestApp::start(&cfg()).await;
    let post = |body: Value| app.post("/v1/messages", body);
    anth_error(
        &post(json!({"model": "p1", "messages": [{"role": "user", "content": "x"}]})).await,
        400,
        "invalid_request_error",
    );
    anth_error(&post(json!([1])).await, 400, "invalid_request_error");
    anth_error(
        &post(msg(json!({"model": "gpt-4"}))).await,
        404,
        "not_found_error",
    );
    anth_error(
        &post(msg(
            json!({"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]}),
        ))
        .await,
        400,
        "invalid_request_error",
    );
    anth_error(
        &app.post("/v1/messages/batches", json!({})).await,
        404,
        "not_found_error",
    );
    anth_error(&app.get("/v1/messages").await, 405, "invalid_request_error");
    let big = msg(json!({"system": "x".repeat(3 << 20)}));
    anth_error(&post(big).await, 413, "request_too_large");
    assert!(app.engine("p1").requests().is_empty());
}

#[tokio::test]
async fn a_full_queue_is_529_overloaded_with_retry_after() {
    let app = TestApp::start(&yaml("queue: {capacity: 1}", &[pool("p1", 1, &[])])).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    let r = app.post("/v1/messages", msg(json!({}))).await;
    anth_error(&r, 529, "overloaded_error");
    assert!(r.header("retry-after").is_some() && r.header("x-backoff-ms").is_some());
    e.open();
}

#[tokio::test]
async fn x_api_key_authenticates_and_a_wrong_one_is_401_in_anthropics_shape() {
    let app = TestApp::start_with(
        &cfg(),
        Options {
            token: Some("s3cret".into()),
            ..Default::default()
        },
    )
    .await;
    let req = |key: Option<&str>| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/v1/messages")
            .header(header::CONTENT_TYPE, "application/json")
            .extension(ConnectInfo(SocketAddr::from(([10, 0, 0, 2], 4000))));
        if let Some(k) = key {
            b = b.header("x-api-key", k);
        }
        b.body(Body::from(msg(json!({})).to_string()))
            .expect("a request")
    };
    app.send(req(Some("s3cret"))).await.expect_status(200);
    anth_error(
        &app.send(req(Some("nope"))).await,
        401,
        "authentication_error",
    );
    anth_error(&app.send(req(None)).await, 401, "authentication_error");
}

#[tokio::test]
async fn count_tokens_counts_the_prompt_and_says_how() {
    let app = TestApp::start(&cfg()).await;
    let r = app
        .post(
            "/v1/messages/count_tokens",
            json!({"model": "claude-haiku", "system": "be brief",
                   "messages": [{"role": "user", "content": "hi there"}]}),
        )
        .await;
    r.expect_status(200);
    // The fake engine's tokenizer counts words: "be brief" and "hi there".
    assert_eq!(r.body["input_tokens"], 4, "{}", r.text);
    assert_eq!(r.header("x-llorch-token-count"), Some("exact"));
    assert!(app.engine("p1").requests().is_empty(), "nothing generated");
    anth_error(
        &app.post(
            "/v1/messages/count_tokens",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
        404,
        "not_found_error",
    );
    // The request's rules hold though nothing is generated.
    anth_error(
        &app.post(
            "/v1/messages/count_tokens",
            json!({"model": "p1", "messages": [{"role": "user", "content": "x"}],
                   "tool_choice": {"type": "any"}}),
        )
        .await,
        400,
        "invalid_request_error",
    );
}

#[tokio::test]
async fn max_tokens_is_clamped_and_priority_and_session_come_from_headers() {
    let app = TestApp::start(&cfg()).await;
    let mut req = app.request(
        Method::POST,
        "/v1/messages",
        Some(&msg(
            json!({"max_tokens": 32000, "metadata": {"user_id": "u1"}}),
        )),
    );
    req.headers_mut().insert(
        "x-llorch-priority",
        "batch".parse().expect("a header value"),
    );
    req.headers_mut().insert(
        "x-llorch-session",
        "anth-s1".parse().expect("a header value"),
    );
    let r = app.send(req).await;
    r.expect_status(200);
    let clamp = r.header("x-llorch-max-tokens-clamped").expect("clamped");
    assert!(clamp.starts_with("32000->"), "{clamp}");
    let id = r.header("x-llorch-task-id").expect("task id");
    assert_eq!(app.status(id).await["priority"], "batch");
    app.get("/v1/sessions/anth-s1").await.expect_status(200);
    let granted = app.engine("p1").requests()[0].max_tokens;
    assert!(granted < 256, "{granted}");
}
