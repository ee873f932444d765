//! The OpenAI Responses door on the fake engine (labelled test double): the reply object and
//! its headers, the event stream, stored responses and their chaining, dropped tool types,
//! `input_tokens`, and its errors in OpenAI's shape. The real proof is
//! `tests/e2e/responses_sdk.rs` (the official SDKs, a real llama-server).

use axum::http::StatusCode;
use orch_engine_adapters::AdapterError;

use super::*;

fn cfg() -> String {
    yaml("", &[pool("p1", 2, &["model: /models/qwen2.5-7b-q4.gguf"])])
}

fn req(extra: Value) -> Value {
    with(
        json!({"model": "p1", "max_output_tokens": 3, "instructions": "be brief",
               "input": "hi there"}),
        extra,
    )
}

#[track_caller]
fn oai_error(r: &Resp, status: u16, kind: &str, message_part: &str) {
    r.expect_status(status);
    let e = &r.body["error"];
    assert_eq!(e["type"], kind, "{}", r.text);
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains(message_part)),
        "{}",
        r.text
    );
}

#[tokio::test]
async fn a_response_is_a_task_with_its_headers_stored_and_retrievable() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["Hel", "lo", "\u{2028}!"]);
    let r = app
        .post(
            "/v1/responses",
            req(json!({"metadata": {"k": "v"}, "temperature": 0.5})),
        )
        .await;
    r.expect_status(200);
    let id = r.body["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("resp_"), "{id}");
    assert_eq!(r.header("x-llorch-task-id"), Some(id.as_str()));
    assert_eq!(r.header("x-llorch-queue-position"), Some("0"));
    assert!(r.header("x-llorch-predicted-start-ms").is_some());
    assert_eq!(r.body["object"], "response");
    assert_eq!(r.body["status"], "incomplete", "3 of 3 tokens: cut");
    assert_eq!(
        r.body["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    let item = &r.body["output"][0];
    assert_eq!(item["type"], "message");
    assert_eq!(item["role"], "assistant");
    assert_eq!(item["content"][0]["type"], "output_text");
    assert_eq!(item["content"][0]["text"], "Hello\u{2028}!");
    assert_eq!(item["content"][0]["annotations"], json!([]));
    assert_eq!(r.body["usage"]["input_tokens"], 4);
    assert_eq!(r.body["usage"]["output_tokens"], 3);
    assert_eq!(r.body["usage"]["total_tokens"], 7);
    assert_eq!(r.body["metadata"], json!({"k": "v"}));
    assert_eq!(r.body["store"], true);
    assert_eq!(r.body["instructions"], "be brief");
    assert_eq!(r.body["text"], json!({"format": {"type": "text"}}));
    assert_eq!(
        app.engine("p1").prompts(),
        ["system:be brief|user:hi there"]
    );
    let t = app.status(&id).await;
    assert_eq!(t["state"], "completed");
    assert_eq!(t["dialect"], "responses");
    // Stored: GET returns the same object; DELETE removes it.
    let g = app.get(&format!("/v1/responses/{id}")).await;
    g.expect_status(200);
    assert_eq!(g.body, r.body);
    let d = app.delete(&format!("/v1/responses/{id}")).await;
    d.expect_status(200);
    assert_eq!(
        d.body,
        json!({"id": id, "object": "response", "deleted": true})
    );
    oai_error(
        &app.get(&format!("/v1/responses/{id}")).await,
        404,
        "not_found_error",
        "no stored response",
    );
    oai_error(
        &app.delete(&format!("/v1/responses/{id}")).await,
        404,
        "not_found_error",
        "no stored response",
    );
}

#[tokio::test]
async fn previous_response_id_chains_input_and_output_without_old_instructions() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["Paris"]);
    let first = app.post("/v1/responses", req(json!({}))).await;
    first.expect_status(200);
    let id1 = first.body["id"].as_str().expect("id").to_owned();
    app.engine("p1").set_tokens(["Lyon"]);
    let second = app
        .post(
            "/v1/responses",
            json!({"model": "p1", "max_output_tokens": 3, "previous_response_id": id1,
                   "instructions": "be kind", "input": [{"role": "user", "content": "and next?"}]}),
        )
        .await;
    second.expect_status(200);
    assert_eq!(second.body["previous_response_id"], id1.as_str());
    let id2 = second.body["id"].as_str().expect("id").to_owned();
    let third = app
        .post(
            "/v1/responses",
            json!({"model": "p1", "max_output_tokens": 3, "previous_response_id": id2,
                   "input": "last"}),
        )
        .await;
    third.expect_status(200);
    let p = app.engine("p1").prompts();
    assert_eq!(
        p[1],
        "system:be kind|user:hi there|assistant:Paris|user:and next?"
    );
    assert_eq!(
        p[2],
        "user:hi there|assistant:Paris|user:and next?|assistant:Lyon|user:last"
    );
    // `store: false` is not kept: it cannot be retrieved nor continued.
    let unstored = app
        .post("/v1/responses", req(json!({"store": false})))
        .await;
    unstored.expect_status(200);
    assert_eq!(unstored.body["store"], false);
    let uid = unstored.body["id"].as_str().expect("id");
    oai_error(
        &app.get(&format!("/v1/responses/{uid}")).await,
        404,
        "not_found_error",
        "no stored response",
    );
    oai_error(
        &app.post(
            "/v1/responses",
            json!({"model": "p1", "previous_response_id": uid, "input": "x"}),
        )
        .await,
        404,
        "not_found_error",
        "previous_response_id",
    );
}

#[tokio::test]
async fn codex_tool_types_are_dropped_and_named_function_tools_reach_the_engine() {
    let app = TestApp::start(&cfg()).await;
    let r = app
        .post(
            "/v1/responses",
            req(json!({
                "tools": [
                    {"type": "function", "name": "shell", "description": "run a command",
                     "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
                     "strict": false},
                    {"type": "local_shell"}, {"type": "web_search"},
                    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}}
                ],
                "tool_choice": "auto", "parallel_tool_calls": false,
                "reasoning": {"effort": "high", "summary": "auto"},
                "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc",
                "service_tier": "auto", "truncation": "disabled", "store": false,
                "text": {"format": {"type": "json_schema", "name": "out",
                    "schema": {"type": "object"}, "strict": true}}
            })),
        )
        .await;
    r.expect_status(200);
    assert_eq!(
        r.header("x-llorch-dropped-tools"),
        Some("local_shell,web_search,custom")
    );
    assert_eq!(r.body["tools"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["parallel_tool_calls"], false);
    let g = &app.engine("p1").requests()[0];
    assert_eq!(g.tools.len(), 1);
    assert_eq!(g.tools[0]["function"]["name"], "shell");
    assert_eq!(g.tool_choice, Some(json!("auto")));
    assert_eq!(g.parallel_tool_calls, Some(false));
    assert!(g.response_format.is_some());
    // Only non-function tools: the request runs without tools.
    let r = app
        .post(
            "/v1/responses",
            req(json!({"tools": [{"type": "web_search"}], "tool_choice": "auto"})),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.header("x-llorch-dropped-tools"), Some("web_search"));
    assert!(app.engine("p1").requests()[1].tools.is_empty());
}

#[tokio::test]
async fn a_stream_sends_the_responses_events_and_stores_the_result() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").set_tokens(["a", "", "b\r"]);
    let s = app
        .post_stream(
            "/v1/responses",
            req(json!({"stream": true, "max_output_tokens": 5})),
        )
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let id = s
        .headers
        .get("x-llorch-task-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-llorch-task-id")
        .to_owned();
    let ev = s.collect().await;
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    let data: Vec<Value> = ev.iter().map(SseEvent::json).collect();
    for (n, (e, d)) in ev.iter().zip(&data).enumerate() {
        assert_eq!(d["type"], e.event.as_str());
        assert_eq!(d["sequence_number"], n as u64);
    }
    let deltas: String = data.iter().filter_map(|d| d["delta"].as_str()).collect();
    assert_eq!(deltas, "ab\r", "the text as the engine sent it");
    let done = data.last().expect("completed");
    assert_eq!(done["response"]["id"], id.as_str());
    assert_eq!(done["response"]["status"], "completed");
    assert_eq!(done["response"]["output"][0]["content"][0]["text"], "ab\r");
    // Stored before `response.completed` went out.
    let g = app.get(&format!("/v1/responses/{id}")).await;
    g.expect_status(200);
    assert_eq!(g.body, done["response"]);
}

#[tokio::test]
async fn a_task_failing_mid_stream_ends_with_response_failed() {
    let app = TestApp::start(&cfg()).await;
    app.engine("p1").fail_mid_stream(
        1,
        AdapterError::Engine {
            message: "boom".into(),
        },
    );
    let ev = app
        .post_stream("/v1/responses", req(json!({"stream": true})))
        .await
        .collect()
        .await;
    let last = ev.last().expect("events");
    assert_eq!(last.event, "response.failed");
    let d = last.json();
    assert_eq!(d["response"]["status"], "failed");
    assert!(d["response"]["error"]["message"].is_string(), "{d}");
    assert_eq!(d["response"]["output"][0]["content"][0]["text"], "tok0 ");
}

#[tokio::test]
async fn input_tokens_counts_the_translated_prompt() {
    let app = TestApp::start(&cfg()).await;
    let r = app
        .post(
            "/v1/responses/input_tokens",
            json!({"model": "p1", "instructions": "be brief", "input": "hi there",
                   "tools": [{"type": "web_search"}]}),
        )
        .await;
    r.expect_status(200);
    assert_eq!(r.body["object"], "response.input_tokens");
    assert!(
        r.body["input_tokens"].as_u64().is_some_and(|n| n > 0),
        "{}",
        r.text
    );
    assert!(matches!(
        r.header("x-llorch-token-count"),
        Some("exact" | "upper-bound")
    ));
    assert_eq!(r.header("x-llorch-dropped-tools"), Some("web_search"));
    assert!(app.engine("p1").requests().is_empty(), "nothing generated");
}

#[tokio::test]
async fn responses_errors_are_in_openai_shape() {
    let app = TestApp::start(&cfg()).await;
    let post = |body: Value| app.post("/v1/responses", body);
    oai_error(
        &post(json!({"input": "x"})).await,
        400,
        "invalid_request_error",
        "model",
    );
    oai_error(
        &post(json!({"model": "p1"})).await,
        400,
        "invalid_request_error",
        "`input` is required",
    );
    oai_error(
        &post(req(json!({"input": [{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:"}]}]})))
        .await,
        400,
        "invalid_request_error",
        "input[0].content[0]",
    );
    oai_error(
        &post(req(json!({"tool_choice": "required"}))).await,
        400,
        "invalid_request_error",
        "tool",
    );
    oai_error(
        &post(req(json!({"background": true}))).await,
        400,
        "invalid_request_error",
        "background",
    );
    oai_error(
        &post(req(json!({"model": "nope"}))).await,
        404,
        "not_found_error",
        "nope",
    );
    let r = app.get("/v1/responses").await;
    r.expect_status(405);
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert!(app.engine("p1").requests().is_empty());
}
