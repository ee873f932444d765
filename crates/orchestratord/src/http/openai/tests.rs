//! Unit tests of the OpenAI door's mapping, chunks and errors.

use super::error::*;
use super::stream::*;
use super::task::*;
use super::wire::OaiMessage;
use super::*;
use axum::http::StatusCode;
use orch_api_types::{
    EndEvent, ResponseFormat, TokenEvent, TokenLogprob, ToolCallDelta, ToolChoice,
};
use serde_json::{json, Value};

#[test]
fn content_parts_join_text() {
    let v = Some(json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b\u{2028}"}]));
    assert_eq!(text_of(&v).unwrap(), "ab\u{2028}");
    assert!(text_of(&Some(json!([{"type": "image_url"}]))).is_err());
    assert_eq!(text_of(&None).unwrap(), "");
}

#[test]
fn stop_forms() {
    assert_eq!(
        stop_list(&Some(json!("x"))).unwrap(),
        Some(vec!["x".to_owned()])
    );
    assert_eq!(
        stop_list(&Some(json!(["a", "b"]))).unwrap().unwrap().len(),
        2
    );
    assert!(stop_list(&Some(json!(3))).is_err());
}

/// The chunks as they were built with `json!` before the typed replies (keys sorted).
#[test]
fn chunks_are_byte_compatible() {
    let c = |kind| Chunks {
        kind,
        id: "chatcmpl-1".into(),
        model: "tiny".into(),
        created: 7,
    };
    let (chat, text) = (c(Kind::Chat), c(Kind::Completion));
    let head = ChunkDelta {
        content: Some(String::new()),
        role: Some("assistant".into()),
        tool_calls: None,
    };
    let tok = ChunkDelta {
        content: Some("a\u{2028}b".into()),
        role: None,
        tool_calls: None,
    };
    let old_chat = |delta: Value, finish: Option<&str>| {
        json!({
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "tiny",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
        })
    };
    let old_text = |t: &str, finish: Option<&str>| {
        json!({
            "id": "chatcmpl-1", "object": "text_completion", "created": 7, "model": "tiny",
            "choices": [{ "index": 0, "text": t, "logprobs": null, "finish_reason": finish }],
        })
    };
    assert_eq!(
        chat.content_json(head, None),
        old_chat(json!({"role": "assistant", "content": ""}), None).to_string()
    );
    assert_eq!(
        chat.content_json(tok.clone(), None),
        old_chat(json!({"content": "a\u{2028}b"}), None).to_string()
    );
    assert_eq!(
        chat.content_json(ChunkDelta::default(), Some("stop")),
        old_chat(json!({}), Some("stop")).to_string()
    );
    assert_eq!(
        text.content_json(tok, None),
        old_text("a\u{2028}b", None).to_string()
    );
    assert_eq!(
        text.content_json(ChunkDelta::default(), Some("length")),
        old_text("", Some("length")).to_string()
    );
    let e = EndEvent {
        tokens_out: 3,
        prompt_tokens: None,
        decode_ms: 1,
        finish_reason: "length".into(),
    };
    let old_usage = json!({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3});
    for (ch, mut old) in [
        (&chat, old_chat(json!({}), None)),
        (&text, old_text("", None)),
    ] {
        old["choices"] = json!([]);
        old["usage"] = old_usage.clone();
        assert_eq!(ch.usage_json(usage(&e)), old.to_string());
    }
}

#[test]
fn error_body_is_byte_compatible() {
    let old = json!({ "error": {
        "message": "full", "type": "rate_limit_error", "param": null, "code": "admission_reject",
    }});
    assert_eq!(
        compact(&error_body(
            StatusCode::TOO_MANY_REQUESTS,
            "full",
            "admission_reject"
        )),
        old.to_string()
    );
}

fn req(v: Value) -> OaiRequest {
    serde_json::from_value(v).unwrap()
}

#[test]
fn openai_paths() {
    for p in [
        "/v1/models",
        "/v1/models/tiny",
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses/x",
    ] {
        assert!(is_openai_path(p), "{p}");
    }
    for p in [
        "/v1/tasks",
        "/v1/modelsx",
        "/health",
        "/v1/catalog/models",
        "/v2/models",
    ] {
        assert!(!is_openai_path(p), "{p}");
    }
}

#[test]
fn logprobs_forms_per_endpoint() {
    let chat = |v: Value| logprobs_of(Kind::Chat, &req(v));
    assert_eq!(chat(json!({"model": "m"})).unwrap(), None);
    assert_eq!(
        chat(json!({"model": "m", "logprobs": true})).unwrap(),
        Some(0)
    );
    assert_eq!(
        chat(json!({"model": "m", "logprobs": true, "top_logprobs": 5})).unwrap(),
        Some(5)
    );
    assert_eq!(
        chat(json!({"model": "m", "logprobs": false})).unwrap(),
        None
    );
    assert!(chat(json!({"model": "m", "top_logprobs": 2})).is_err());
    assert!(chat(json!({"model": "m", "logprobs": true, "top_logprobs": 21})).is_err());
    assert!(chat(json!({"model": "m", "logprobs": 3})).is_err());
    let text = |v: Value| logprobs_of(Kind::Completion, &req(v));
    assert_eq!(text(json!({"model": "m", "logprobs": 2})).unwrap(), Some(2));
    assert_eq!(text(json!({"model": "m", "logprobs": null})).unwrap(), None);
    assert!(text(json!({"model": "m", "logprobs": 6})).is_err());
    assert!(text(json!({"model": "m", "logprobs": true})).is_err());
}

#[test]
fn messages_roles_and_tool_turns() {
    let m = |v: Value| -> OaiMessage { serde_json::from_value(v).unwrap() };
    assert_eq!(
        task_message(0, &m(json!({"role": "developer", "content": "be brief"}))).unwrap(),
        json!({"role": "system", "content": "be brief"})
    );
    let call = json!({"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
    assert_eq!(
        task_message(
            1,
            &m(json!({"role": "assistant", "content": null, "tool_calls": [call]}))
        )
        .unwrap(),
        json!({"role": "assistant", "content": "", "tool_calls": [call]})
    );
    assert_eq!(
        task_message(
            2,
            &m(
                json!({"role": "tool", "tool_call_id": "c1", "name": "get_weather",
                "content": [{"type": "text", "text": "sunny"}]})
            )
        )
        .unwrap(),
        json!({"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"})
    );
    let e = task_message(3, &m(json!({"role": "wizard", "content": "x"}))).unwrap_err();
    assert!(
        e.message.contains("messages[3] has role `wizard`"),
        "{}",
        e.message
    );
    assert!(task_message(0, &m(json!({"role": "function", "content": "x"}))).is_err());
}

#[test]
fn unserved_fields_are_refused_and_tools_are_chat_only() {
    let bad = [
        json!({"functions": [{"name": "f"}]}),
        json!({"audio": {"voice": "alloy"}}),
        json!({"modalities": ["text", "audio"]}),
        json!({"prediction": {"type": "content", "content": "x"}}),
        json!({"web_search_options": {}}),
        json!({"echo": true}),
        json!({"suffix": "end"}),
        json!({"best_of": 2}),
    ];
    for mut b in bad {
        b["model"] = json!("m");
        assert!(refuse_unserved(Kind::Chat, &req(b.clone())).is_err(), "{b}");
    }
    let ok = json!({"model": "m", "modalities": ["text"], "echo": false, "suffix": "",
        "best_of": 1, "functions": null, "user": "u", "store": false, "metadata": {"a": "b"}});
    refuse_unserved(Kind::Chat, &req(ok)).unwrap();
    let tools = json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f"}}]});
    assert!(refuse_unserved(Kind::Completion, &req(tools.clone())).is_err());
    refuse_unserved(Kind::Chat, &req(tools)).unwrap();
    let r = req(
        json!({"model": "m", "response_format": {"type": "json_schema",
        "json_schema": {"name": "n", "schema": {"type": "object"}}}, "tool_choice": "required"}),
    );
    assert!(matches!(
        r.response_format,
        Some(ResponseFormat::JsonSchema { .. })
    ));
    assert_eq!(r.tool_choice, Some(ToolChoice::Mode("required".into())));
    assert!(serde_json::from_value::<OaiRequest>(
        json!({"model": "m", "response_format": {"type": "xml"}})
    )
    .is_err());
}

fn lp(token: &str, logprob: f64, top: &[(&str, f64)]) -> TokenLogprob {
    TokenLogprob {
        token: token.into(),
        logprob,
        bytes: Some(token.as_bytes().to_vec()),
        top_logprobs: top
            .iter()
            .map(|(t, l)| orch_api_types::TopLogprob {
                token: (*t).into(),
                logprob: *l,
                bytes: None,
            })
            .collect(),
    }
}

#[test]
fn legacy_logprobs_offsets_and_top_dicts() {
    let mut offset = 0;
    let l = text_logprobs(
        vec![lp("fö", -1.0, &[("a", -0.5)]), lp(" x", -2.0, &[])],
        &mut offset,
    );
    assert_eq!(l.tokens, ["fö", " x"]);
    assert_eq!(l.token_logprobs, [-1.0, -2.0]);
    assert_eq!(l.text_offset, [0, 2], "characters, not bytes");
    assert_eq!(offset, 4);
    assert_eq!(l.top_logprobs[0].len(), 2, "the chosen token is included");
    assert_eq!(l.top_logprobs[1][" x"], -2.0);
    let more = text_logprobs(vec![lp("y", -0.1, &[])], &mut offset);
    assert_eq!(
        more.text_offset,
        [4],
        "offsets continue across stream chunks"
    );
}

#[test]
fn token_events_become_chunks_with_tool_calls_and_logprobs() {
    let c = Chunks {
        kind: Kind::Chat,
        id: "chatcmpl-1".into(),
        model: "tiny".into(),
        created: 7,
    };
    let ev =
        |t: &str, calls: Option<Vec<ToolCallDelta>>, l: Option<Vec<TokenLogprob>>| TokenEvent {
            t: t.into(),
            i: 0,
            logprobs: l,
            tool_calls: calls,
        };
    let mut off = 0;
    assert!(c.token(ev("", None, None), &mut off).is_none());
    let call = ToolCallDelta {
        index: 0,
        id: Some("c1".into()),
        kind: Some("function".into()),
        function: orch_api_types::FunctionCallDelta {
            name: Some("f".into()),
            arguments: Some("{".into()),
        },
    };
    let d = |e: Event| format!("{e:?}");
    let with_call = d(c.token(ev("", Some(vec![call]), None), &mut off).unwrap());
    assert!(
        with_call.contains(r#"{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}"#),
        "{with_call}"
    );
    let with_lp = d(c
        .token(ev("a", None, Some(vec![lp("a", -0.5, &[])])), &mut off)
        .unwrap());
    assert!(
        with_lp.contains(r#"\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-0.5,\"bytes\":[97],\"top_logprobs\":[]}],\"refusal\":null}"#),
        "{with_lp}"
    );
    let text = Chunks {
        kind: Kind::Completion,
        ..c
    };
    let t = d(text
        .token(ev("a", None, Some(vec![lp("a", -0.5, &[])])), &mut off)
        .unwrap());
    assert!(
        t.contains(r#"\"text_offset\":[0]"#) && t.contains(r#"\"text\":\"a\""#),
        "{t}"
    );
}

#[test]
fn error_shape_and_retry_after() {
    let e = OaiError::from(ServiceError::from_envelope(
        orch_api_types::ErrorEnvelope::new(ErrorCode::AdmissionReject, "full").retry_after(1500),
    ));
    let r = e.into_response();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "2");
    assert_eq!(r.headers()["x-backoff-ms"], "1500");
}
