//! The Messages translation and event rendering, pure.

use axum::http::{HeaderMap, StatusCode};
use orch_api_types::{EndEvent, FunctionCallDelta, TokenEvent, ToolCallDelta};
use serde_json::{json, Value};

use super::stream::{reply, stop_reason, tool_input, Events};
use super::task::to_task;
use super::wire::MsgRequest;
use super::AnthropicError;
use crate::http::door::ErrorShape;

fn req(v: Value) -> MsgRequest {
    serde_json::from_value(v).unwrap()
}

fn task(v: Value) -> Result<Value, AnthropicError> {
    to_task(&req(v), &HeaderMap::new(), "msg_1", false)
        .map(|t| serde_json::to_value(t.req).unwrap())
}

fn refused(v: Value, part: &str) {
    let e = task(v).expect_err("refused");
    assert_eq!(e.status, StatusCode::BAD_REQUEST);
    assert!(e.message.contains(part), "{} lacks {part}", e.message);
}

#[test]
fn a_conversation_with_tools_becomes_a_chat_task() {
    let t = task(json!({
        "model": "claude-sonnet-4", "max_tokens": 32000,
        "system": [{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Be kind.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "x"},
                {"type": "text", "text": "Let me look."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "18C"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "sunny", "is_error": true},
                {"type": "text", "text": "Thanks"}]}],
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                  {"type": "web_search_20250305", "name": "web_search"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
        "stop_sequences": ["\n\nHuman:"], "temperature": 0.5, "top_p": 0.9, "top_k": 40,
        "metadata": {"user_id": "u-123"}, "thinking": {"type": "enabled", "budget_tokens": 1024},
        "service_tier": "auto", "stream": true
    }))
    .unwrap();
    assert_eq!(t["workload"], "chat");
    assert_eq!(t["model_ref"], "claude-sonnet-4");
    assert_eq!(t["max_tokens"], 32000);
    assert_eq!(t["priority"], "interactive");
    assert!(
        t["session_id"].is_null(),
        "metadata.user_id is not a session"
    );
    let m = t["messages"].as_array().unwrap();
    assert_eq!(
        m[0],
        json!({"role": "system", "content": "You are terse.\n\nBe kind."})
    );
    assert_eq!(
        m[1],
        json!({"role": "user", "content": "Weather in Paris?"})
    );
    assert_eq!(m[2]["role"], "assistant");
    assert_eq!(m[2]["content"], "Let me look.");
    assert_eq!(m[2]["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(m[2]["tool_calls"][0]["function"]["name"], "get_weather");
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather", "content": "18C"})
    );
    assert_eq!(
        m[4],
        json!({"role": "tool", "tool_call_id": "toolu_2", "content": "sunny"})
    );
    assert_eq!(m[5], json!({"role": "user", "content": "Thanks"}));
    assert_eq!(m.len(), 6);
    assert_eq!(t["tools"].as_array().unwrap().len(), 1);
    assert_eq!(t["tools"][0]["type"], "function");
    assert_eq!(
        t["tools"][0]["function"]["parameters"]["properties"]["city"]["type"],
        "string"
    );
    assert_eq!(t["tool_choice"], "required");
    assert_eq!(t["parallel_tool_calls"], false);
    assert_eq!(t["stop"], json!(["\n\nHuman:"]));
    assert_eq!(t["top_k"], 40);
    let dropped = to_task(
        &req(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "web_search_20250305", "name": "web_search"}]}),
        ),
        &HeaderMap::new(),
        "msg_1",
        false,
    )
    .unwrap();
    assert_eq!(dropped.dropped_tools, ["web_search"]);
    assert!(dropped.req.tools.is_none());
}

#[test]
fn tool_choice_maps_to_the_tasks() {
    let with = |c: Value| {
        task(
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}], "tool_choice": c}),
        )
        .unwrap()["tool_choice"]
            .clone()
    };
    assert_eq!(with(json!({"type": "auto"})), "auto");
    assert_eq!(with(json!({"type": "none"})), "none");
    assert_eq!(
        with(json!({"type": "tool", "name": "f"})),
        json!({"type": "function", "function": {"name": "f"}})
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f"}], "tool_choice": {"type": "tool"}}),
        "needs `name`",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f"}], "tool_choice": {"type": "sometimes"}}),
        "auto, any, tool or none",
    );
}

#[test]
fn bad_requests_are_refused_with_why() {
    let user = json!([{"role": "user", "content": "x"}]);
    refused(
        json!({"model": "m", "messages": user}),
        "`max_tokens` is required",
    );
    refused(
        json!({"model": "m", "max_tokens": 0, "messages": user}),
        "at least 1",
    );
    refused(
        json!({"model": " ", "max_tokens": 1, "messages": user}),
        "`model` is required",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": []}),
        "must not be empty",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "tool", "content": "x"}]}),
        "use `user`, `assistant` or `system`",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
        "does not belong in a `system` message",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}]}]}),
        "`image` blocks are not supported",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "document"}]}]}]}),
        "`document` blocks are not supported",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
        "does not belong in a `user` message",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
            {"type": "tool_result", "content": "x"}]}]}),
        "needs `tool_use_id`",
    );
    refused(
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": 5}]}),
        "must be a string or an array",
    );
    // count_tokens needs no max_tokens.
    let c = to_task(
        &req(json!({"model": "m", "messages": user})),
        &HeaderMap::new(),
        "c",
        true,
    );
    assert!(c.is_ok());
    let mut h = HeaderMap::new();
    h.insert("x-llorch-priority", "urgent".parse().unwrap());
    let e = to_task(
        &req(json!({"model": "m", "max_tokens": 1, "messages": user})),
        &h,
        "m",
        false,
    )
    .err()
    .expect("bad priority");
    assert!(e.message.contains("X-Llorch-Priority"));
}

#[test]
fn errors_have_anthropics_types_and_statuses() {
    use super::error::AnthropicShape;
    let shown = |s: u16, code: &str| {
        AnthropicShape::status(StatusCode::from_u16(s).unwrap(), code).as_u16()
    };
    assert_eq!(shown(429, "admission_reject"), 529);
    assert_eq!(shown(503, "pool_unavailable"), 529);
    assert_eq!(shown(429, "budget_exceeded"), 429);
    assert_eq!(shown(404, "model_not_found"), 404);
    for (status, ty) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (529, "overloaded_error"),
    ] {
        let b = AnthropicShape::body(StatusCode::from_u16(status).unwrap(), "why", "x");
        assert_eq!(
            b,
            json!({"type": "error", "error": {"type": ty, "message": "why"}})
        );
    }
    assert!(super::is_messages_path("/v1/messages"));
    assert!(super::is_messages_path("/v1/messages/count_tokens"));
    assert!(super::is_messages_path("/v1/messages/batches"));
    assert!(!super::is_messages_path("/v1/messagesx"));
    assert!(!super::is_messages_path("/v1/chat/completions"));
}

fn end(finish: &str, out: u64) -> EndEvent {
    EndEvent {
        tokens_out: out,
        prompt_tokens: Some(9),
        decode_ms: 1,
        finish_reason: finish.into(),
    }
}

fn tok(t: &str) -> TokenEvent {
    TokenEvent {
        t: t.into(),
        i: 0,
        logprobs: None,
        tool_calls: None,
    }
}

fn call(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> TokenEvent {
    TokenEvent {
        tool_calls: Some(vec![ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            kind: id.map(|_| "function".into()),
            function: FunctionCallDelta {
                name: name.map(str::to_owned),
                arguments: Some(args.into()),
            },
        }]),
        ..tok("")
    }
}

fn data(f: &(&'static str, String)) -> Value {
    let v: Value = serde_json::from_str(&f.1).unwrap();
    assert_eq!(v["type"], f.0, "an event's data has its name as `type`");
    v
}

#[test]
fn a_stream_has_anthropics_event_grammar() {
    let mut ev = Events::new("msg_1".into(), "claude-x".into(), 7);
    let mut all = ev.start();
    all.extend(ev.token(tok("Hel")));
    all.extend(ev.token(tok("lo \"\u{2028}")));
    all.extend(ev.token(call(0, Some("call_a"), Some("f"), "{\"a\"")));
    all.extend(ev.token(call(0, None, None, ": 1}")));
    all.extend(ev.token(call(1, None, Some("g"), "")));
    all.extend(ev.end(&end("stop", 5)));
    let names: Vec<&str> = all.iter().map(|f| f.0).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "ping",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "content_block_start",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let d: Vec<Value> = all.iter().map(data).collect();
    assert_eq!(d[0]["message"]["id"], "msg_1");
    assert_eq!(d[0]["message"]["content"], json!([]));
    assert_eq!(d[0]["message"]["stop_reason"], Value::Null);
    assert_eq!(
        d[0]["message"]["usage"],
        json!({"input_tokens": 7, "output_tokens": 0})
    );
    assert_eq!(
        d[2],
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    );
    assert_eq!(
        d[4]["delta"],
        json!({"type": "text_delta", "text": "lo \"\u{2028}"})
    );
    assert_eq!(d[5]["index"], 0);
    assert_eq!(
        d[6]["content_block"],
        json!({"type": "tool_use", "id": "call_a", "name": "f", "input": {}})
    );
    assert_eq!(d[6]["index"], 1);
    assert_eq!(
        d[7]["delta"],
        json!({"type": "input_json_delta", "partial_json": "{\"a\""})
    );
    assert_eq!(d[8]["delta"]["partial_json"], ": 1}");
    assert_eq!(d[9]["index"], 1);
    assert_eq!(d[10]["index"], 2);
    assert!(d[10]["content_block"]["id"]
        .as_str()
        .unwrap()
        .starts_with("toolu_"));
    assert_eq!(d[10]["content_block"]["name"], "g");
    assert_eq!(
        d[12],
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 5, "input_tokens": 9}})
    );
    // Exact relay: the text's bytes survive the JSON escaping.
    let text: String = d
        .iter()
        .filter(|v| v["delta"]["type"] == "text_delta")
        .map(|v| v["delta"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello \"\u{2028}");
    // Text only: one block; a reply with nothing has none.
    let mut plain = Events::new("m".into(), "x".into(), 0);
    let mut f = plain.token(tok("a"));
    f.extend(plain.end(&end("length", 1)));
    assert_eq!(
        f.iter().map(|f| f.0).collect::<Vec<_>>(),
        [
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert_eq!(data(&f[3])["delta"]["stop_reason"], "max_tokens");
    let mut empty = Events::new("m".into(), "x".into(), 0);
    assert_eq!(empty.token(tok("")).len(), 0);
    let e = Events::error(StatusCode::from_u16(529).unwrap(), "queue full");
    assert_eq!(e.0, "error");
    assert_eq!(
        data(&e)["error"],
        json!({"type": "overloaded_error", "message": "queue full"})
    );
}

#[test]
fn a_whole_reply_has_text_then_tool_uses() {
    let calls = vec![
        orch_api_types::ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: orch_api_types::FunctionCall {
                name: "f".into(),
                arguments: "{\"x\": [1]}".into(),
            },
        },
        orch_api_types::ToolCall {
            id: "call_2".into(),
            kind: "function".into(),
            function: orch_api_types::FunctionCall {
                name: "g".into(),
                arguments: "not json".into(),
            },
        },
    ];
    let (r, invalid) = reply(
        "msg_1".into(),
        "m".into(),
        "hi".into(),
        Some(calls),
        &end("tool_calls", 3),
        0,
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(
        v,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
            "content": [{"type": "text", "text": "hi"},
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"x": [1]}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 9, "output_tokens": 3}})
    );
    assert_eq!(invalid, ["call_2"]);
    let (plain, _) = reply(
        "msg_2".into(),
        "m".into(),
        "Paris".into(),
        None,
        &end("stop", 1),
        4,
    );
    assert_eq!(plain.stop_reason.as_deref(), Some("end_turn"));
    assert_eq!(stop_reason("length", true), "max_tokens");
    assert_eq!(stop_reason("stop", true), "tool_use");
    assert_eq!(tool_input(""), Some(json!({})));
    assert_eq!(tool_input("[1]"), None);
}

/// Claude Code 2.1 sends `system` messages among the turns: they stay system turns, in order.
#[test]
fn system_messages_among_the_turns_are_kept_in_order() {
    let t = task(json!({"model": "m", "max_tokens": 8, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "and again"}]}))
    .expect("accepted");
    let roles: Vec<&str> = t["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(roles, ["user", "system", "user"]);
    assert_eq!(t["messages"][1]["content"], "Be brief.");
}
