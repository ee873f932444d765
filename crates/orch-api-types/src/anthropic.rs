//! Replies of the Anthropic Messages door: `POST /v1/messages` (a `message`, or a stream of
//! its events) and `POST /v1/messages/count_tokens`, and Anthropic's error shape. The shapes
//! are Anthropic's, as the official SDKs parse them (docs/ANTHROPIC.md).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The reply of `POST /v1/messages` (and the `message` of a stream's `message_start`, with
/// no content yet).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MsgReply {
    /// The task's id (`msg_…`): `/v1/tasks/{id}` and `llorch` work on it.
    pub id: String,
    /// Always `message`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `assistant`.
    pub role: String,
    /// The model as the request named it.
    pub model: String,
    /// A text block (when the model wrote text), then one `tool_use` block per call.
    pub content: Vec<ContentBlock>,
    /// `end_turn`, `max_tokens` or `tool_use` (`null` in `message_start`).
    pub stop_reason: Option<String>,
    /// Always `null`: the engine does not say which stop sequence ended the reply.
    pub stop_sequence: Option<String>,
    /// Token counts.
    pub usage: MsgUsage,
}

/// One block of a reply's `content`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// Text, exactly as the engine produced it.
    Text {
        /// The text.
        text: String,
    },
    /// A call of one of the request's tools.
    ToolUse {
        /// The call's id; the `tool_result` answering it names it as `tool_use_id`.
        id: String,
        /// The tool's name.
        name: String,
        /// Its arguments (a JSON object; `{}` when the engine's were not one, see
        /// docs/ANTHROPIC.md).
        #[schema(value_type = Object)]
        input: Value,
    },
}

/// `usage` of a reply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MsgUsage {
    /// The prompt's tokens (0 when the engine did not report them).
    pub input_tokens: u64,
    /// Tokens generated.
    pub output_tokens: u64,
}

/// Body of `POST /v1/messages/count_tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CountTokensReply {
    /// The prompt's tokens as the pool's engine counts them (header
    /// `x-llorch-token-count: exact`), or an upper bound when no engine of the model was
    /// ready (`upper-bound`).
    pub input_tokens: u64,
}

/// Anthropic's error body: `{"type": "error", "error": {"type", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorBody {
    /// Always `error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The error.
    pub error: AnthropicErrorDetail,
}

/// The `error` of [`AnthropicErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AnthropicErrorDetail {
    /// `invalid_request_error` (400, 405, 409), `authentication_error` (401),
    /// `permission_error` (403), `not_found_error` (404), `request_too_large` (413),
    /// `rate_limit_error` (429), `api_error` (500, 502), `overloaded_error` (529).
    #[serde(rename = "type")]
    #[schema(
        pattern = "^(invalid_request_error|authentication_error|permission_error|not_found_error|request_too_large|rate_limit_error|api_error|overloaded_error)$"
    )]
    pub kind: String,
    /// What went wrong and what to do.
    pub message: String,
}

/// One event of a Messages stream (`stream: true`), documented per event as SSE-aware tools
/// validate streams.
#[derive(ToSchema)]
pub struct MsgSseFrame {
    /// `message_start`, `content_block_start`, `content_block_delta`, `content_block_stop`,
    /// `ping`, `message_delta`, `message_stop`, or `error`.
    #[schema(
        pattern = "^(message_start|content_block_start|content_block_delta|content_block_stop|ping|message_delta|message_stop|error)$"
    )]
    pub event: String,
    /// The event's JSON, with the same `type` as the event's name.
    pub data: String,
}
