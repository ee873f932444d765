//! Payloads of the SSE events of `GET /v1/tasks/{id}/stream`:
//! `started`, `token`*, `metrics`* (interleaved), then exactly one of `end` or `error`; an
//! `embedding` or `rerank` task sends one `result` instead of tokens, before its `end`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tools::{TokenLogprob, ToolCallDelta};
use crate::ErrorEnvelope;

/// `started`: the task left the queue and an engine is working on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StartedEvent {
    /// Queue position at admission.
    pub queue_position: usize,
    /// The start predicted at admission.
    pub predicted_start_ms: u64,
    /// Measured wait in the queue.
    pub queued_ms: u64,
    /// Pool serving the task.
    pub pool_id: String,
    /// Replica serving the task.
    pub replica_id: String,
    /// Engine kind (`llamacpp`, ...).
    pub engine: String,
    /// Engine build as the engine reports it.
    pub engine_version: String,
    /// Device the replica runs on (`gpu0`, `cpu`).
    pub device: String,
}

/// `token`: the next piece of text, byte for byte as the engine produced it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenEvent {
    /// The text. llama-server holds back incomplete UTF-8, so one event may carry several tokens.
    pub t: String,
    /// Index of this event, from 0.
    pub i: u64,
    /// With `logprobs` in the request: each engine token of this event with its log
    /// probability and the most likely alternatives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// With `tools` in the request: pieces of the tool calls the model makes (`t` is then
    /// usually empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// `metrics`: progress and queue state. While a task waits in the queue its stream carries one
/// at admission, on every change of its position or prediction and at least every second (with
/// `queue_position`, `predicted_start_ms`, `predicted_end_ms`, `queued_ms`), all before
/// `started`; while it runs, interleaved with tokens.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricsEvent {
    /// Tasks waiting in this task's pool.
    pub queue_depth: usize,
    /// Chance of finishing within `deadline_ms` (1.0 without a deadline).
    pub on_time_probability: f64,
    /// Token events sent so far.
    pub tokens_out: u64,
    /// Decode rate so far.
    pub tokens_per_s: f64,
    /// KV warmth of the session (0 cold .. 1 fully reused prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_warmth: Option<f64>,
    /// Remaining session token budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_budget_remaining: Option<u64>,
    /// Remaining session time budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_budget_remaining_ms: Option<u64>,
    /// Remaining session cost budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_budget_remaining: Option<f64>,
    /// While the task waits: tasks that will be dispatched before it (0: next).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<usize>,
    /// While the task waits: predicted milliseconds from this frame until it starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    /// Predicted milliseconds from this frame until the task ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_end_ms: Option<u64>,
    /// While the task waits: milliseconds it has waited since admission when this frame was
    /// made (so `queued_ms + predicted_start_ms` is the predicted wait from admission).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued_ms: Option<u64>,
    /// While the task waits for an `on_demand` pool's engine: why (the model is loading, or
    /// no GPU has room and which pools hold the memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// `result`: the whole answer of an `embedding` or `rerank` task, just before its `end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResultEvent {
    /// `embedding`: one vector per input string, in input order, as the engine computed it
    /// (32-bit floats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<Vec<Vec<f32>>>,
    /// `rerank`: the documents' scores, best first (`top_n` of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<RerankScore>>,
    /// Tokens the engine evaluated for all inputs together.
    pub prompt_tokens: u64,
}

/// One document's rerank score.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankScore {
    /// The document's index in the request's `documents`.
    pub index: u32,
    /// Its relevance to the query, as the engine scored it (higher is more relevant).
    pub relevance_score: f64,
}

/// `end`: the task finished normally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EndEvent {
    /// Token events sent.
    pub tokens_out: u64,
    /// The prompt's length in tokens (cached prefix included), when the engine reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    /// Time from the first to the last token.
    pub decode_ms: u64,
    /// `length` (max_tokens reached), `stop` (end of sequence or a stop string), `tool_calls`
    /// (the model called tools).
    pub finish_reason: String,
}

/// One event of a task's stream, with its SSE event name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum StreamEvent {
    /// `started`.
    Started(StartedEvent),
    /// `token`.
    Token(TokenEvent),
    /// `metrics`.
    Metrics(MetricsEvent),
    /// `result`.
    Result(ResultEvent),
    /// `end`.
    End(EndEvent),
    /// `error`.
    Error(ErrorEnvelope),
}

impl StreamEvent {
    /// The SSE `event:` name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Started(_) => "started",
            Self::Token(_) => "token",
            Self::Metrics(_) => "metrics",
            Self::Result(_) => "result",
            Self::End(_) => "end",
            Self::Error(_) => "error",
        }
    }

    /// Whether this event ends the stream.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::End(_) | Self::Error(_))
    }

    /// The `data:` payload as JSON. serde_json escapes CR and LF, so the payload is one SSE line.
    pub fn data_json(&self) -> String {
        let r = match self {
            Self::Started(e) => serde_json::to_string(e),
            Self::Token(e) => serde_json::to_string(e),
            Self::Metrics(e) => serde_json::to_string(e),
            Self::Result(e) => serde_json::to_string(e),
            Self::End(e) => serde_json::to_string(e),
            Self::Error(e) => serde_json::to_string(e),
        };
        // These types hold only strings and numbers: serialisation cannot fail. A NaN float
        // serialises as `null`, never as an error.
        r.unwrap_or_else(|e| format!("{{\"code\":\"INTERNAL\",\"message\":\"{e}\"}}"))
    }

    /// Parses an SSE event back (used by clients and tests).
    pub fn parse(event: &str, data: &str) -> Result<Self, serde_json::Error> {
        Ok(match event {
            "started" => Self::Started(serde_json::from_str(data)?),
            "token" => Self::Token(serde_json::from_str(data)?),
            "metrics" => Self::Metrics(serde_json::from_str(data)?),
            "result" => Self::Result(serde_json::from_str(data)?),
            "end" => Self::End(serde_json::from_str(data)?),
            _ => Self::Error(serde_json::from_str(data)?),
        })
    }
}
