//! The Responses translation and event rendering, without a daemon.

use orch_api_types::responses::OutputItem;
use orch_api_types::{ChatMessage, EndEvent, FunctionCallDelta, TokenEvent, ToolCallDelta};
use serde_json::{json, Value};

use super::stream::{reply_message, Meta, Render};
use super::task::{format_of, push_input, tool_choice_of, tools_of};

fn meta() -> Meta {
    Meta {
        id: "resp_abc".into(),
        created_at: 7,
        model: "m".into(),
        instructions: None,
        tools: Vec::new(),
        tool_choice: json!("auto"),
        parallel_tool_calls: true,
        text: json!({"format": {"type": "text"}}),
        max_output_tokens: None,
        previous_response_id: None,
        store: true,
        temperature: None,
        top_p: None,
        metadata: Default::default(),
        user: None,
    }
}

fn text(t: &str) -> TokenEvent {
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
        ..text("")
    }
}

fn end(reason: &str) -> EndEvent {
    EndEvent {
        tokens_out: 3,
        prompt_tokens: Some(5),
        decode_ms: 1,
        finish_reason: reason.into(),
    }
}

#[test]
fn input_items_become_chat_messages() {
    let mut msgs = Vec::new();
    push_input(
        &mut msgs,
        Some(&json!([
            {"role": "developer", "content": "be brief"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "wea"},
                {"type": "input_text", "text": "ther?"}]},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "checking"}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
            {"type": "function_call", "call_id": "c2", "name": "get_time"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
        ])),
    )
    .unwrap();
    let roles: Vec<&str> = msgs.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
    assert_eq!(msgs[1].content, "weather?");
    let calls = msgs[2].tool_calls.as_ref().unwrap();
    assert_eq!(
        msgs[2].content, "checking",
        "calls join the text they follow"
    );
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].function.arguments, "{\"city\":\"Paris\"}");
    assert_eq!(calls[1].function.arguments, "{}");
    assert_eq!(msgs[3].tool_call_id.as_deref(), Some("c1"));
    assert_eq!(msgs[3].name.as_deref(), Some("get_weather"));
    assert_eq!(msgs[4].content, "noon");
    // A string is one user message.
    let mut one = Vec::new();
    push_input(&mut one, Some(&json!("hi"))).unwrap();
    assert_eq!(
        (one[0].role.as_str(), one[0].content.as_str()),
        ("user", "hi")
    );
}

#[test]
fn bad_input_items_are_named() {
    let err = |v: Value| push_input(&mut Vec::new(), Some(&v)).unwrap_err().message;
    let m = err(json!([{"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]));
    assert!(
        m.contains("input[1].content[0]") && m.contains("input_image"),
        "{m}"
    );
    let m = err(json!([{"type": "web_search_call"}]));
    assert!(
        m.contains("input[0]") && m.contains("web_search_call"),
        "{m}"
    );
    let m = err(json!([{"type": "function_call", "name": "f"}]));
    assert!(m.contains("call_id"), "{m}");
    let m = err(json!([{"role": "tool", "content": "x"}]));
    assert!(m.contains("role `tool`"), "{m}");
    assert!(err(json!(5)).contains("`input`"));
}

#[test]
fn function_tools_are_kept_and_others_dropped() {
    let tools = vec![
        json!({"type": "function", "name": "shell", "description": "run", "parameters": {"type": "object"}, "strict": false}),
        json!({"type": "local_shell"}),
        json!({"type": "web_search"}),
        json!({"type": "web_search"}),
        json!({"type": "custom", "name": "apply_patch"}),
    ];
    let (task, echo, dropped) = tools_of(Some(&tools)).unwrap();
    assert_eq!(dropped, ["local_shell", "web_search", "custom"]);
    assert_eq!(
        task,
        [
            json!({"type": "function", "function": {"name": "shell", "description": "run",
            "parameters": {"type": "object"}, "strict": false}})
        ]
    );
    assert_eq!(echo[0]["name"], "shell");
    assert!(tools_of(Some(&vec![json!({"type": "function"})])).is_err());
    assert_eq!(
        tool_choice_of(Some(&json!({"type": "function", "name": "shell"}))).unwrap(),
        Some(json!({"type": "function", "function": {"name": "shell"}}))
    );
    assert_eq!(
        tool_choice_of(Some(&json!("required"))).unwrap(),
        Some(json!("required"))
    );
    assert!(tool_choice_of(Some(&json!({"type": "web_search"}))).is_err());
    assert!(tool_choice_of(Some(&json!("sometimes"))).is_err());
}

#[test]
fn text_format_becomes_response_format() {
    assert_eq!(format_of(None).unwrap(), None);
    assert_eq!(
        format_of(Some(&json!({"format": {"type": "text"}}))).unwrap(),
        None
    );
    assert_eq!(
        format_of(Some(&json!({"format": {"type": "json_object"}}))).unwrap(),
        Some(json!({"type": "json_object"}))
    );
    assert_eq!(
        format_of(Some(
            &json!({"format": {"type": "json_schema", "name": "city",
            "schema": {"type": "object"}, "strict": true}})
        ))
        .unwrap(),
        Some(
            json!({"type": "json_schema", "json_schema": {"name": "city",
            "schema": {"type": "object"}, "strict": true}})
        )
    );
    assert!(format_of(Some(&json!({"format": {"type": "yaml"}}))).is_err());
}

fn types<T>(evs: &[(&'static str, T)]) -> Vec<&'static str> {
    evs.iter().map(|e| e.0).collect()
}

/// The events with their JSON text parsed, as a client reads them.
fn parsed(evs: Vec<super::stream::Ev>) -> Vec<(&'static str, Value)> {
    evs.into_iter()
        .map(|(ty, json)| (ty, serde_json::from_str(&json).expect("each event is JSON")))
        .collect()
}

#[test]
fn text_then_a_call_render_the_full_event_sequence() {
    let mut r = Render::new(meta());
    let mut evs = r.start();
    evs.extend(r.token(text("Hel")));
    evs.extend(r.token(text("lo\u{2028}")));
    evs.extend(r.token(call(0, Some("call_x"), Some("f"), "{\"a\"")));
    evs.extend(r.token(call(0, None, None, ": 1}")));
    let (last, obj) = r.end(&end("tool_calls"));
    evs.extend(last);
    let evs = parsed(evs);
    assert_eq!(
        types(&evs),
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
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed",
        ]
    );
    for (n, e) in evs.iter().enumerate() {
        assert_eq!(e.1["type"], e.0);
        assert_eq!(e.1["sequence_number"], n as u64, "{}", e.0);
    }
    assert_eq!(evs[0].1["response"]["status"], "in_progress");
    assert_eq!(evs[0].1["response"]["output"], json!([]));
    let deltas: String = evs
        .iter()
        .filter(|e| e.0 == "response.output_text.delta")
        .map(|e| e.1["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, "Hello\u{2028}");
    assert_eq!(evs[6].1["text"], "Hello\u{2028}");
    assert_eq!(evs[4].1["item_id"], "msg_abc_0");
    assert_eq!(evs[9].1["output_index"], 1);
    assert_eq!(evs[9].1["item"]["call_id"], "call_x");
    assert_eq!(evs[12].1["arguments"], "{\"a\": 1}");
    assert_eq!(obj.status, "completed");
    assert!(obj.incomplete_details.is_none());
    assert_eq!(obj.usage.unwrap().total_tokens, 8);
    match &obj.output[..] {
        [OutputItem::Message {
            id,
            content,
            status,
            ..
        }, OutputItem::FunctionCall {
            id: fid,
            call_id,
            name,
            arguments,
            ..
        }] => {
            assert_eq!((id.as_str(), status.as_str()), ("msg_abc_0", "completed"));
            assert_eq!(content[0].text, "Hello\u{2028}");
            assert_eq!(
                (
                    fid.as_str(),
                    call_id.as_str(),
                    name.as_str(),
                    arguments.as_str()
                ),
                ("fc_abc_1", "call_x", "f", "{\"a\": 1}")
            );
        }
        other => panic!("{other:?}"),
    }
    // The completed event carries the same object.
    assert_eq!(
        evs.last().unwrap().1["response"],
        serde_json::to_value(&obj).unwrap()
    );
    // What a chained response continues: one assistant message with text and call.
    let m: ChatMessage = reply_message(&obj.output).unwrap();
    assert_eq!(m.content, "Hello\u{2028}");
    assert_eq!(m.tool_calls.unwrap()[0].id, "call_x");
}

#[test]
fn a_cut_reply_is_incomplete_and_a_failure_is_failed() {
    let mut r = Render::new(meta());
    r.start();
    r.token(text("a"));
    let (evs, obj) = r.end(&end("length"));
    assert_eq!(evs.last().unwrap().0, "response.incomplete");
    assert_eq!(obj.status, "incomplete");
    assert_eq!(obj.incomplete_details.unwrap().reason, "max_output_tokens");
    assert!(matches!(&obj.output[0], OutputItem::Message { status, .. } if status == "incomplete"));

    let mut r = Render::new(meta());
    r.start();
    r.token(text("partial"));
    let evs = parsed(r.fail("engine_error", "boom"));
    let failed = &evs.last().unwrap().1;
    assert_eq!(failed["type"], "response.failed");
    assert_eq!(failed["response"]["status"], "failed");
    assert_eq!(failed["response"]["error"]["message"], "boom");
    assert_eq!(
        failed["response"]["output"][0]["content"][0]["text"],
        "partial"
    );

    // A call without an engine id gets one; nothing at all is an empty output.
    let mut r = Render::new(meta());
    let evs = parsed(r.token(call(0, None, Some("f"), "{}")));
    assert_eq!(evs[0].1["item"]["call_id"], "call_abc_0");
    let (_, obj) = Render::new(meta()).end(&end("stop"));
    assert!(obj.output.is_empty() && reply_message(&obj.output).is_none());
}
