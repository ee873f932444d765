//! What a task asks its engine for, and what comes back: the task's request as a
//! [`GenerateRequest`] (messages, sampling, tools, structured output, log probabilities) and an
//! engine chunk as a `token` event. The adapter crate knows nothing of our wire types, so the
//! conversions live here, in both directions.

use orch_api_types::{
    ChatMessage, FunctionCallDelta, ResponseFormat as WireFormat, TaskRequest, TokenEvent,
    TokenLogprob, ToolCallDelta, ToolChoice, TopLogprob, Workload,
};
use orch_engine_adapters::{ChatTurn, Chunk, EngineEvent, GenerateRequest, Prompt, ResponseFormat};
use serde_json::Value;

/// The engine request for `req`, run in engine slot `slot` (session affinity).
pub fn generate_request(req: &TaskRequest, slot: Option<u32>) -> GenerateRequest {
    let prompt = match req.workload {
        Workload::Chat => Prompt::Chat(req.messages.iter().flatten().map(chat_turn).collect()),
        Workload::Completion => Prompt::Text(req.prompt.clone().unwrap_or_default()),
        // Not generated: the dispatcher runs these through the adapter's embed/rerank.
        Workload::Embedding | Workload::Rerank => Prompt::Text(String::new()),
    };
    GenerateRequest {
        prompt,
        max_tokens: req.max_tokens,
        seed: req.seed,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        stop: req.stop.clone().unwrap_or_default(),
        slot,
        cache_prompt: !matches!(req.kv_hint, Some(orch_api_types::KvHint::Cold)),
        frequency_penalty: req.frequency_penalty,
        presence_penalty: req.presence_penalty,
        logit_bias: req
            .logit_bias
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), *v))
            .collect(),
        logprobs: req.logprobs,
        // As the client sent them: the engine's template and grammar read them.
        tools: req
            .tools
            .iter()
            .flatten()
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect(),
        tool_choice: req.tool_choice.as_ref().map(|c| match c {
            ToolChoice::Mode(m) => Value::String(m.clone()),
            ToolChoice::Named(n) => serde_json::to_value(n).unwrap_or(Value::Null),
        }),
        parallel_tool_calls: req.parallel_tool_calls,
        response_format: match &req.response_format {
            None | Some(WireFormat::Text) => None,
            Some(WireFormat::JsonObject) => Some(ResponseFormat::JsonObject),
            Some(WireFormat::JsonSchema { json_schema }) => Some(ResponseFormat::JsonSchema {
                name: json_schema.name.clone(),
                schema: json_schema.schema.clone(),
                strict: json_schema.strict,
            }),
        },
    }
}

fn chat_turn(m: &ChatMessage) -> ChatTurn {
    ChatTurn {
        role: m.role.clone(),
        content: m.content.clone(),
        tool_calls: m.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .filter_map(|c| serde_json::to_value(c).ok())
                .collect()
        }),
        tool_call_id: m.tool_call_id.clone(),
        name: m.name.clone(),
    }
}

/// The `token` event (number `i`) for an engine's output event; `None` for `Done`.
pub fn token_event_of(ev: EngineEvent, i: u64) -> Option<TokenEvent> {
    match ev {
        EngineEvent::Token(text) => Some(token_event(
            Chunk {
                text,
                ..Chunk::default()
            },
            i,
        )),
        EngineEvent::Chunk(c) => Some(token_event(c, i)),
        EngineEvent::Done(_) => None,
    }
}

/// The `token` event (number `i`) for an engine chunk; its text is relayed unchanged.
pub fn token_event(c: Chunk, i: u64) -> TokenEvent {
    TokenEvent {
        t: c.text,
        i,
        logprobs: (!c.logprobs.is_empty()).then(|| {
            c.logprobs
                .into_iter()
                .map(|l| TokenLogprob {
                    token: l.token,
                    logprob: l.logprob,
                    bytes: l.bytes,
                    top_logprobs: l
                        .top
                        .into_iter()
                        .map(|t| TopLogprob {
                            token: t.token,
                            logprob: t.logprob,
                            bytes: t.bytes,
                        })
                        .collect(),
                })
                .collect()
        }),
        tool_calls: (!c.tool_calls.is_empty()).then(|| {
            c.tool_calls
                .into_iter()
                .map(|d| ToolCallDelta {
                    index: d.index,
                    // OpenAI sends the type with the id, on a call's first piece.
                    kind: d.id.as_ref().map(|_| "function".to_owned()),
                    id: d.id,
                    function: FunctionCallDelta {
                        name: d.name,
                        arguments: d.arguments,
                    },
                })
                .collect()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn task(extra: Value) -> TaskRequest {
        let mut b = json!({
            "task_id": "t", "model_ref": "m", "priority": "interactive", "max_tokens": 8,
            "workload": "chat",
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            ],
        });
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        serde_json::from_value(b).unwrap()
    }

    #[test]
    fn tools_messages_and_formats_reach_the_engine_request() {
        let t = task(json!({
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "logprobs": 2,
            "logit_bias": {"25380": 100.0},
            "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        }));
        let g = generate_request(&t, Some(1));
        let Prompt::Chat(turns) = &g.prompt else {
            panic!("chat")
        };
        assert_eq!(turns[1].content, "");
        assert_eq!(
            turns[1].tool_calls.as_ref().unwrap()[0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(turns[2].tool_call_id.as_deref(), Some("c1"));
        assert_eq!(g.tools[0]["function"]["name"], "get_weather");
        assert_eq!(g.tools[0]["type"], "function");
        assert_eq!(
            g.tool_choice.as_ref().unwrap()["function"]["name"],
            "get_weather"
        );
        assert_eq!(g.parallel_tool_calls, Some(false));
        assert_eq!(g.logprobs, Some(2));
        assert_eq!(g.logit_bias, vec![("25380".to_owned(), 100.0)]);
        assert!(matches!(
            g.response_format,
            Some(ResponseFormat::JsonSchema { ref name, .. }) if name == "w"
        ));
        assert_eq!(g.slot, Some(1));
        assert!(g.wants_tool_calls());
        let none = generate_request(&task(json!({"tool_choice": "none"})), None);
        assert_eq!(none.tool_choice, Some(json!("none")));
        let text = generate_request(&task(json!({"response_format": {"type": "text"}})), None);
        assert!(text.response_format.is_none());
    }

    #[test]
    fn chunks_become_token_events_exactly() {
        let c = Chunk {
            text: "a\u{2028}b\r".into(),
            logprobs: vec![orch_engine_adapters::TokenLogprob {
                token: "a".into(),
                logprob: -0.5,
                bytes: Some(vec![97]),
                top: vec![orch_engine_adapters::TopLogprob {
                    token: "b".into(),
                    logprob: -1.0,
                    bytes: None,
                }],
            }],
            tool_calls: vec![
                orch_engine_adapters::ToolCallDelta {
                    index: 0,
                    id: Some("c1".into()),
                    name: Some("f".into()),
                    arguments: Some("{".into()),
                },
                orch_engine_adapters::ToolCallDelta {
                    index: 0,
                    arguments: Some("}".into()),
                    ..Default::default()
                },
            ],
        };
        let e = token_event(c, 3);
        assert_eq!(e.t, "a\u{2028}b\r");
        assert_eq!(e.i, 3);
        let wire = serde_json::to_value(&e).unwrap();
        assert_eq!(
            wire["tool_calls"],
            json!([
                {"index": 0, "id": "c1", "type": "function", "function": {"name": "f", "arguments": "{"}},
                {"index": 0, "function": {"arguments": "}"}},
            ])
        );
        assert_eq!(
            wire["logprobs"],
            json!([{"token": "a", "logprob": -0.5, "bytes": [97],
                "top_logprobs": [{"token": "b", "logprob": -1.0}]}])
        );
        let plain = serde_json::to_string(&token_event(
            Chunk {
                text: "x".into(),
                ..Default::default()
            },
            0,
        ))
        .unwrap();
        assert_eq!(plain, r#"{"t":"x","i":0}"#);
    }
}
