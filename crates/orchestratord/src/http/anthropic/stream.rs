//! Anthropic's replies from a task's events: the whole `message`, and the events of a
//! stream in the grammar the SDKs parse: `message_start`, `ping`, per content block
//! `content_block_start` / `content_block_delta` (`text_delta`, `input_json_delta`) /
//! `content_block_stop` (indices from 0), `message_delta` (`stop_reason`, `usage`),
//! `message_stop`; a failure as `error`. Text and tool arguments go out exactly as the engine
//! produced them.

use axum::http::StatusCode;
use orch_api_types::anthropic::{ContentBlock, MsgReply, MsgUsage};
use orch_api_types::{EndEvent, TokenEvent, ToolCall};
use serde_json::{json, Value};

use super::error::error_body;

/// Anthropic's `stop_reason` for our `finish_reason`; a reply that called tools ended for
/// them.
pub fn stop_reason(finish_reason: &str, called_tools: bool) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        _ if called_tools => "tool_use",
        _ => "end_turn",
    }
}

/// A tool call's `input`: its arguments as a JSON object; empty arguments are `{}`. `None`
/// when they are not a JSON object (the reply then says `{}`, like llama-server's own
/// Messages endpoint, and names the call in `x-llorch-tool-input-invalid`).
pub fn tool_input(arguments: &str) -> Option<Value> {
    if arguments.trim().is_empty() {
        return Some(json!({}));
    }
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => Some(v),
        _ => None,
    }
}

/// The whole reply, and the ids of the calls whose arguments were not a JSON object.
pub fn reply(
    id: String,
    model: String,
    text: String,
    calls: Option<Vec<ToolCall>>,
    end: &EndEvent,
    input_tokens: u64,
) -> (MsgReply, Vec<String>) {
    let mut content = Vec::new();
    if !text.is_empty() {
        content.push(ContentBlock::Text { text });
    }
    let mut invalid = Vec::new();
    let calls = calls.unwrap_or_default();
    let called = !calls.is_empty();
    for c in calls {
        let input = tool_input(&c.function.arguments).unwrap_or_else(|| {
            invalid.push(c.id.clone());
            json!({})
        });
        content.push(ContentBlock::ToolUse {
            id: c.id,
            name: c.function.name,
            input,
        });
    }
    let reply = MsgReply {
        id,
        kind: "message".into(),
        role: "assistant".into(),
        model,
        content,
        stop_reason: Some(stop_reason(&end.finish_reason, called).into()),
        stop_sequence: None,
        usage: MsgUsage {
            input_tokens: end.prompt_tokens.unwrap_or(input_tokens),
            output_tokens: end.tokens_out,
        },
    };
    (reply, invalid)
}

/// One SSE event: its name and its JSON (whose `type` is the name).
pub type Frame = (&'static str, String);

fn frame(name: &'static str, v: Value) -> Frame {
    (name, v.to_string())
}

/// A `content_block_delta` of text, rendered from typed fields: it is the stream's hot path
/// (one per token), where a `json!` tree per token cost ~10 % more daemon CPU per token than
/// the chat door's typed chunks (docs/PERFORMANCE.md, "Agent doors").
fn text_delta(index: u32, text: &str) -> Frame {
    #[derive(serde::Serialize)]
    struct Text<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        text: &'a str,
    }
    #[derive(serde::Serialize)]
    struct Delta<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        index: u32,
        delta: Text<'a>,
    }
    let d = Delta {
        kind: "content_block_delta",
        index,
        delta: Text {
            kind: "text_delta",
            text,
        },
    };
    // Strings and numbers always serialize.
    (
        "content_block_delta",
        serde_json::to_string(&d).unwrap_or_default(),
    )
}

/// The open content block of a stream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Text,
    /// The tool call with this index (the engine's).
    Call(u32),
}

/// Builds the events of one streamed reply from the task's events.
pub struct Events {
    id: String,
    model: String,
    input_tokens: u64,
    /// The open block and its index.
    open: Option<(Open, u32)>,
    /// The index of the next block.
    next: u32,
    called: bool,
}

impl Events {
    /// A stream for reply `id`; `input_tokens` as admission counted them (0 if it did not).
    pub fn new(id: String, model: String, input_tokens: u64) -> Self {
        Self {
            id,
            model,
            input_tokens,
            open: None,
            next: 0,
            called: false,
        }
    }

    /// `message_start` (the message with no content yet) and a `ping`.
    pub fn start(&self) -> Vec<Frame> {
        let message = MsgReply {
            id: self.id.clone(),
            kind: "message".into(),
            role: "assistant".into(),
            model: self.model.clone(),
            content: Vec::new(),
            stop_reason: None,
            stop_sequence: None,
            usage: MsgUsage {
                input_tokens: self.input_tokens,
                output_tokens: 0,
            },
        };
        vec![
            frame(
                "message_start",
                json!({"type": "message_start", "message": message}),
            ),
            frame("ping", json!({"type": "ping"})),
        ]
    }

    fn close(&mut self, out: &mut Vec<Frame>) {
        if let Some((_, index)) = self.open.take() {
            out.push(frame(
                "content_block_stop",
                json!({"type": "content_block_stop", "index": index}),
            ));
        }
    }

    /// Opens a block (closing the open one) and returns its index.
    fn open(&mut self, kind: Open, block: Value, out: &mut Vec<Frame>) -> u32 {
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((kind, index));
        out.push(frame(
            "content_block_start",
            json!({"type": "content_block_start", "index": index, "content_block": block}),
        ));
        index
    }

    fn delta(index: u32, delta: Value) -> Frame {
        frame(
            "content_block_delta",
            json!({"type": "content_block_delta", "index": index, "delta": delta}),
        )
    }

    /// The events for one `token` event: text in a text block, each tool call in its own
    /// `tool_use` block (its arguments as `input_json_delta`s).
    pub fn token(&mut self, t: TokenEvent) -> Vec<Frame> {
        let mut out = Vec::new();
        if !t.t.is_empty() {
            let index = match self.open {
                Some((Open::Text, i)) => i,
                _ => self.open(Open::Text, json!({"type": "text", "text": ""}), &mut out),
            };
            out.push(text_delta(index, &t.t));
        }
        for d in t.tool_calls.into_iter().flatten() {
            self.called = true;
            let index = match self.open {
                Some((Open::Call(c), i)) if c == d.index => i,
                _ => {
                    // A client answers a call by its id: make one if the engine gave none.
                    let id =
                        d.id.clone()
                            .unwrap_or_else(|| format!("toolu_{}", uuid::Uuid::new_v4().simple()));
                    let name = d.function.name.clone().unwrap_or_default();
                    self.open(
                        Open::Call(d.index),
                        json!({"type": "tool_use", "id": id, "name": name, "input": {}}),
                        &mut out,
                    )
                }
            };
            if let Some(a) = d.function.arguments.filter(|a| !a.is_empty()) {
                out.push(Self::delta(
                    index,
                    json!({"type": "input_json_delta", "partial_json": a}),
                ));
            }
        }
        out
    }

    /// The events for the task's `end`: the open block's `content_block_stop`,
    /// `message_delta` and `message_stop`.
    pub fn end(&mut self, e: &EndEvent) -> Vec<Frame> {
        let mut out = Vec::new();
        self.close(&mut out);
        let mut usage = json!({"output_tokens": e.tokens_out});
        if let Some(n) = e.prompt_tokens {
            usage["input_tokens"] = json!(n);
        }
        out.push(frame(
            "message_delta",
            json!({"type": "message_delta",
                "delta": {"stop_reason": stop_reason(&e.finish_reason, self.called), "stop_sequence": null},
                "usage": usage}),
        ));
        out.push(frame("message_stop", json!({"type": "message_stop"})));
        out
    }

    /// A failure mid-stream: Anthropic's error body as an `error` event.
    pub fn error(status: StatusCode, message: &str) -> Frame {
        frame("error", json!(error_body(status, message)))
    }
}
