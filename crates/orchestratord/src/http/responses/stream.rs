//! A task's events as a Responses reply: the stream's events (`response.created` …
//! `response.completed`) and the final `response` object, built by one state machine
//! ([`Render`]) so the streamed items, the non-streamed reply and the stored one agree on
//! every id. Token text goes into the events as it came (JSON-escaped only).

use std::collections::BTreeMap;

use axum::response::sse::Event;
use orch_api_types::responses::{
    IncompleteDetails, InputTokensDetails, OutputItem, OutputText, OutputTokensDetails,
    ResponseError, ResponseObject, ResponseUsage,
};
use orch_api_types::{ChatMessage, EndEvent, FunctionCall, TokenEvent, ToolCall};
use serde_json::{json, Value};

use crate::http::openai::compact;

/// What a response echoes of its request.
#[derive(Clone, Debug)]
pub struct Meta {
    /// `resp_…` (the task id).
    pub id: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// The request's model.
    pub model: String,
    /// The request's `instructions`.
    pub instructions: Option<String>,
    /// The function tools, Responses shape.
    pub tools: Vec<Value>,
    /// `tool_choice` as echoed.
    pub tool_choice: Value,
    /// `parallel_tool_calls` (default true).
    pub parallel_tool_calls: bool,
    /// `text` as echoed.
    pub text: Value,
    /// `max_output_tokens`.
    pub max_output_tokens: Option<u32>,
    /// `previous_response_id`.
    pub previous_response_id: Option<String>,
    /// Whether it is stored.
    pub store: bool,
    /// `temperature`.
    pub temperature: Option<f32>,
    /// `top_p`.
    pub top_p: Option<f32>,
    /// `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// `user`.
    pub user: Option<String>,
}

/// The item being streamed.
#[derive(Debug)]
enum Open {
    Message {
        text: String,
    },
    Call {
        index: u32,
        id: String,
        call_id: String,
        name: String,
        arguments: String,
    },
}

/// One event: its `type` and its JSON text (which holds `type` and `sequence_number`).
pub type Ev = (&'static str, String);

/// The state machine from task events to Responses events and the final object.
pub struct Render {
    meta: Meta,
    seq: u64,
    items: Vec<OutputItem>,
    open: Option<Open>,
}

/// `usage` from the task's end.
pub fn usage(e: &EndEvent) -> ResponseUsage {
    let input = e.prompt_tokens.unwrap_or(0);
    ResponseUsage {
        input_tokens: input,
        input_tokens_details: InputTokensDetails::default(),
        output_tokens: e.tokens_out,
        output_tokens_details: OutputTokensDetails::default(),
        total_tokens: input.saturating_add(e.tokens_out),
    }
}

/// An SSE event named by its type.
pub fn sse(ev: &Ev) -> Event {
    Event::default().event(ev.0).data(ev.1.as_str())
}

impl Render {
    /// A renderer for the response `meta`.
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            seq: 0,
            items: Vec::new(),
            open: None,
        }
    }

    fn ev(&mut self, ty: &'static str, mut v: Value) -> Ev {
        v["type"] = json!(ty);
        v["sequence_number"] = json!(self.seq);
        self.seq += 1;
        (ty, compact(&v))
    }

    /// A `response.output_text.delta`, rendered from typed fields: it is the stream's hot path
    /// (one per token), where a `json!` tree per token cost ~10 % more daemon CPU per token
    /// than the chat door's typed chunks (docs/PERFORMANCE.md, "Agent doors").
    fn text_delta(&mut self, item_id: &str, output_index: usize, delta: &str) -> Ev {
        #[derive(serde::Serialize)]
        struct TextDelta<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            item_id: &'a str,
            output_index: usize,
            content_index: u32,
            delta: &'a str,
            logprobs: [u8; 0],
            sequence_number: u64,
        }
        const TY: &str = "response.output_text.delta";
        let d = TextDelta {
            kind: TY,
            item_id,
            output_index,
            content_index: 0,
            delta,
            logprobs: [],
            sequence_number: self.seq,
        };
        self.seq += 1;
        (TY, compact(&d))
    }

    fn suffix(&self) -> &str {
        self.meta.id.strip_prefix("resp_").unwrap_or(&self.meta.id)
    }

    /// The response object with `status` and the items so far.
    pub fn object(
        &self,
        status: &str,
        usage: Option<ResponseUsage>,
        error: Option<ResponseError>,
    ) -> ResponseObject {
        let m = &self.meta;
        ResponseObject {
            id: m.id.clone(),
            object: "response".into(),
            created_at: m.created_at,
            status: status.into(),
            model: m.model.clone(),
            output: self.items.clone(),
            usage,
            incomplete_details: (status == "incomplete").then(|| IncompleteDetails {
                reason: "max_output_tokens".into(),
            }),
            error,
            instructions: m.instructions.clone(),
            tools: m.tools.clone(),
            tool_choice: m.tool_choice.clone(),
            parallel_tool_calls: m.parallel_tool_calls,
            text: m.text.clone(),
            max_output_tokens: m.max_output_tokens,
            previous_response_id: m.previous_response_id.clone(),
            store: m.store,
            temperature: m.temperature,
            top_p: m.top_p,
            metadata: m.metadata.clone(),
            user: m.user.clone(),
        }
    }

    fn lifecycle(
        &mut self,
        ty: &'static str,
        status: &str,
        usage: Option<ResponseUsage>,
        error: Option<ResponseError>,
    ) -> Ev {
        let obj = self.object(status, usage, error);
        self.ev(ty, json!({ "response": obj }))
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) -> Vec<Ev> {
        vec![
            self.lifecycle("response.created", "in_progress", None, None),
            self.lifecycle("response.in_progress", "in_progress", None, None),
        ]
    }

    /// Index of the open item (it is pushed to `items` when it closes).
    fn index(&self) -> usize {
        self.items.len()
    }

    fn message_id(&self) -> String {
        format!("msg_{}_{}", self.suffix(), self.index())
    }

    /// Closes the open item with `status`, with its `.done` events.
    fn close(&mut self, status: &str, out: &mut Vec<Ev>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let output_index = self.index();
        let item = match open {
            Open::Message { text } => {
                let item_id = self.message_id();
                let part = OutputText {
                    kind: "output_text".into(),
                    text: text.clone(),
                    annotations: Vec::new(),
                };
                let e = self.ev(
                    "response.output_text.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                           "text": text, "logprobs": []}),
                );
                out.push(e);
                let e = self.ev(
                    "response.content_part.done",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                           "part": part}),
                );
                out.push(e);
                OutputItem::Message {
                    id: item_id,
                    status: status.into(),
                    role: "assistant".into(),
                    content: vec![part],
                }
            }
            Open::Call {
                id,
                call_id,
                name,
                arguments,
                ..
            } => {
                let e = self.ev(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": output_index, "name": name,
                           "arguments": arguments}),
                );
                out.push(e);
                OutputItem::FunctionCall {
                    id,
                    call_id,
                    name,
                    arguments,
                    status: "completed".into(),
                }
            }
        };
        let e = self.ev(
            "response.output_item.done",
            json!({"output_index": output_index, "item": item}),
        );
        out.push(e);
        self.items.push(item);
    }

    /// The events for one `token` event.
    pub fn token(&mut self, t: TokenEvent) -> Vec<Ev> {
        let mut out = Vec::new();
        if !t.t.is_empty() {
            if !matches!(self.open, Some(Open::Message { .. })) {
                self.close("completed", &mut out);
                let (item_id, output_index) = (self.message_id(), self.index());
                let e = self.ev(
                    "response.output_item.added",
                    json!({"output_index": output_index, "item": {"type": "message", "id": item_id,
                           "status": "in_progress", "role": "assistant", "content": []}}),
                );
                out.push(e);
                let e = self.ev(
                    "response.content_part.added",
                    json!({"item_id": item_id, "output_index": output_index, "content_index": 0,
                           "part": {"type": "output_text", "text": "", "annotations": []}}),
                );
                out.push(e);
                self.open = Some(Open::Message {
                    text: String::new(),
                });
            }
            let (item_id, output_index) = (self.message_id(), self.index());
            if let Some(Open::Message { text }) = &mut self.open {
                text.push_str(&t.t);
            }
            let e = self.text_delta(&item_id, output_index, &t.t);
            out.push(e);
        }
        for d in t.tool_calls.into_iter().flatten() {
            let same = matches!(&self.open, Some(Open::Call { index, .. }) if *index == d.index);
            if !same {
                self.close("completed", &mut out);
                let n = self.index();
                let id = format!("fc_{}_{n}", self.suffix());
                // A client answers a call by its id: make one if the engine gave none.
                let call_id =
                    d.id.clone()
                        .filter(|i| !i.is_empty())
                        .unwrap_or_else(|| format!("call_{}_{n}", self.suffix()));
                let name = d.function.name.clone().unwrap_or_default();
                let e = self.ev(
                    "response.output_item.added",
                    json!({"output_index": n, "item": {"type": "function_call", "id": id,
                           "call_id": call_id, "name": name, "arguments": "", "status": "in_progress"}}),
                );
                out.push(e);
                self.open = Some(Open::Call {
                    index: d.index,
                    id,
                    call_id,
                    name,
                    arguments: String::new(),
                });
            }
            let Some(delta) = d.function.arguments.filter(|a| !a.is_empty()) else {
                continue;
            };
            let output_index = self.index();
            let mut item_id = String::new();
            if let Some(Open::Call { id, arguments, .. }) = &mut self.open {
                arguments.push_str(&delta);
                item_id = id.clone();
            }
            let e = self.ev(
                "response.function_call_arguments.delta",
                json!({"item_id": item_id, "output_index": output_index, "delta": delta}),
            );
            out.push(e);
        }
        out
    }

    /// The last events for the task's `end`, and the final object.
    pub fn end(&mut self, e: &EndEvent) -> (Vec<Ev>, ResponseObject) {
        let incomplete = e.finish_reason == "length";
        let status = if incomplete {
            "incomplete"
        } else {
            "completed"
        };
        let mut out = Vec::new();
        self.close(status, &mut out);
        let obj = self.object(status, Some(usage(e)), None);
        let ty = if incomplete {
            "response.incomplete"
        } else {
            "response.completed"
        };
        let ev = self.ev(ty, json!({ "response": obj }));
        out.push(ev);
        (out, obj)
    }

    /// `response.failed` with the items so far (the open one `incomplete`).
    pub fn fail(&mut self, code: &str, message: &str) -> Vec<Ev> {
        let mut out = Vec::new();
        self.close("incomplete", &mut out);
        let failed = self.lifecycle(
            "response.failed",
            "failed",
            None,
            Some(ResponseError {
                code: code.into(),
                message: message.into(),
            }),
        );
        out.push(failed);
        out
    }
}

/// The reply's items as chat messages (what a later `previous_response_id` continues):
/// one assistant message with the text and the calls.
pub fn reply_message(items: &[OutputItem]) -> Option<ChatMessage> {
    let mut text = String::new();
    let mut calls = Vec::new();
    for it in items {
        match it {
            OutputItem::Message { content, .. } => {
                content.iter().for_each(|p| text.push_str(&p.text))
            }
            OutputItem::FunctionCall {
                call_id,
                name,
                arguments,
                ..
            } => calls.push(ToolCall {
                id: call_id.clone(),
                kind: "function".into(),
                function: FunctionCall {
                    name: name.clone(),
                    arguments: arguments.clone(),
                },
            }),
        }
    }
    (!text.is_empty() || !calls.is_empty()).then(|| ChatMessage {
        role: "assistant".into(),
        content: text,
        tool_calls: (!calls.is_empty()).then_some(calls),
        tool_call_id: None,
        name: None,
    })
}
