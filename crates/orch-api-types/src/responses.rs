//! Replies of the OpenAI Responses door (`/v1/responses`): the `response` object (also what
//! `GET /v1/responses/{id}` returns and what `response.completed` carries), its output items,
//! usage, the `input_tokens` count and the delete confirmation. The shapes are OpenAI's as the
//! official SDKs parse them; the stream's events are documented per event in
//! [`ResponsesSseFrame`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Body of `POST /v1/responses` (without streaming) and `GET /v1/responses/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ResponseObject {
    /// `resp_…`, the task id (usable with `/v1/tasks/{id}` while the task is retained).
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Seconds since the Unix epoch.
    pub created_at: u64,
    /// `in_progress` (stream start), `completed`, `incomplete` (cut by `max_output_tokens`)
    /// or `failed`.
    pub status: String,
    /// The `model` of the request.
    pub model: String,
    /// What the model produced: a `message` with its text, then its `function_call`s.
    pub output: Vec<OutputItem>,
    /// Token counts (`null` until the response ended).
    pub usage: Option<ResponseUsage>,
    /// Why the response is `incomplete` (`{"reason": "max_output_tokens"}`), else `null`.
    pub incomplete_details: Option<IncompleteDetails>,
    /// What failed, for a `failed` response, else `null`.
    pub error: Option<ResponseError>,
    /// The request's `instructions`.
    pub instructions: Option<String>,
    /// The function tools the model was given (other tool types were dropped).
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// The request's `tool_choice` (default `auto`).
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    /// Whether the model could call several tools at once (default true).
    pub parallel_tool_calls: bool,
    /// `{"format": …}` as requested (default `{"format": {"type": "text"}}`).
    #[schema(value_type = Object)]
    pub text: Value,
    /// The request's `max_output_tokens`.
    pub max_output_tokens: Option<u32>,
    /// The response this one continues.
    pub previous_response_id: Option<String>,
    /// Whether it was stored (then `GET /v1/responses/{id}` and `previous_response_id` find
    /// it).
    pub store: bool,
    /// The request's `temperature`.
    pub temperature: Option<f32>,
    /// The request's `top_p`.
    pub top_p: Option<f32>,
    /// The request's `metadata`.
    pub metadata: BTreeMap<String, String>,
    /// The request's `user`.
    pub user: Option<String>,
}

/// One item of a response's `output`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OutputItem {
    /// The assistant's text.
    Message {
        /// `msg_…`.
        id: String,
        /// `in_progress` while it streams, then `completed` (or `incomplete`).
        status: String,
        /// Always `assistant`.
        role: String,
        /// One `output_text` part.
        content: Vec<OutputText>,
    },
    /// A call of one of the request's function tools.
    FunctionCall {
        /// `fc_…`.
        id: String,
        /// The id the `function_call_output` item answering it names.
        call_id: String,
        /// The function's name.
        name: String,
        /// Its arguments, a JSON object as text exactly as the model wrote it.
        arguments: String,
        /// `in_progress` while it streams, then `completed`.
        status: String,
    },
}

/// A text part of a `message` output item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct OutputText {
    /// Always `output_text`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text, byte for byte as the engine produced it.
    pub text: String,
    /// Always empty (no citations).
    #[schema(value_type = Vec<Object>)]
    pub annotations: Vec<Value>,
}

/// Token counts of a response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResponseUsage {
    /// Prompt tokens (0 when the engine does not report them).
    pub input_tokens: u64,
    /// Details of the prompt tokens.
    pub input_tokens_details: InputTokensDetails,
    /// Tokens generated.
    pub output_tokens: u64,
    /// Details of the generated tokens.
    pub output_tokens_details: OutputTokensDetails,
    /// The sum of both.
    pub total_tokens: u64,
}

/// `usage.input_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InputTokensDetails {
    /// Always 0 (the engine's prefix cache is not reported per request).
    pub cached_tokens: u64,
}

/// `usage.output_tokens_details`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OutputTokensDetails {
    /// Always 0 (reasoning is not separated).
    pub reasoning_tokens: u64,
}

/// `incomplete_details`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct IncompleteDetails {
    /// `max_output_tokens`.
    pub reason: String,
}

/// `error` of a failed response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResponseError {
    /// llama-orch's error code in lower case.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// Body of `POST /v1/responses/input_tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InputTokens {
    /// Always `response.input_tokens`.
    pub object: String,
    /// The prompt's tokens as the engine counts them (header `x-llorch-token-count: exact`),
    /// or an upper bound when no engine of the model was ready (`upper-bound`).
    pub input_tokens: u64,
}

/// Body of `DELETE /v1/responses/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ResponseDeleted {
    /// The response.
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Always true.
    pub deleted: bool,
}

/// One event of a `POST /v1/responses` stream (`stream: true`). The SSE `event:` name is the
/// event's `type`; every event carries a `sequence_number` from 0. In order:
/// `response.created`, `response.in_progress`; per output item `response.output_item.added`,
/// then for a message `response.content_part.added`, `response.output_text.delta`*,
/// `response.output_text.done`, `response.content_part.done`, for a function call
/// `response.function_call_arguments.delta`*, `response.function_call_arguments.done`, then
/// `response.output_item.done`; last `response.completed`, `response.incomplete` (cut by
/// `max_output_tokens`) or `response.failed` (the task failed).
#[derive(ToSchema)]
pub struct ResponsesSseFrame {
    /// The event's `type`.
    #[schema(pattern = "^response\\.[a-z_.]+$")]
    pub event: String,
    /// The event as one line of JSON.
    pub data: String,
}
