//! The Messages door's request types (the replies are `orch_api_types::anthropic`). Fields
//! Anthropic defines that are not listed (`service_tier`, `container`, `mcp_servers`,
//! `cache_control` on blocks, …) are accepted and ignored; docs/ANTHROPIC.md lists each.

use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// One message of the conversation.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct MsgMessage {
    /// `user` or `assistant`; `system` (text only) as Claude Code sends it among the turns.
    #[schema(pattern = "^(user|assistant|system)$")]
    pub role: String,
    /// Text, or blocks: `text`; `tool_use` (assistant); `tool_result` (user); `thinking` and
    /// `redacted_thinking` (assistant, dropped). `image` and `document` are refused.
    #[schema(value_type = Object)]
    pub content: Value,
}

/// A tool the model may call.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct MsgTool {
    /// The tool's name: 1-64 of `a-z A-Z 0-9 _ -`.
    pub name: String,
    /// What it does, for the model.
    #[serde(default)]
    pub description: Option<String>,
    /// JSON schema of its input (an object schema).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Map<String, Value>>,
    /// `custom` (or absent) for a tool the client runs; Anthropic's server and versioned
    /// tools (`web_search_…`, `bash_…`, …) are dropped and named in the header
    /// `x-llorch-dropped-tools`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// `tool_choice`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct MsgToolChoice {
    /// `auto`, `any` (some tool), `tool` (the one named) or `none`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(auto|any|tool|none)$")]
    pub kind: String,
    /// With `tool`: its name.
    #[serde(default)]
    pub name: Option<String>,
    /// At most one call in the reply.
    #[serde(default)]
    pub disable_parallel_tool_use: Option<bool>,
}

/// `metadata`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct MsgMetadata {
    /// The caller's user id: accepted and ignored, never a session (docs/ANTHROPIC.md).
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub user_id: Option<String>,
}

/// Body of `POST /v1/messages` and `POST /v1/messages/count_tokens`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct MsgRequest {
    /// Model: a pool id, a catalog id, a model file name, or a name `model_aliases` maps.
    pub model: String,
    /// Tokens to generate: required by `/v1/messages`, clamped to what the prompt leaves of
    /// the context (header `x-llorch-max-tokens-clamped`); not used by count_tokens.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// The conversation, starting with a `user` message.
    #[serde(default)]
    pub messages: Vec<MsgMessage>,
    /// System prompt: a string or text blocks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    /// Tools the model may call.
    #[serde(default)]
    pub tools: Option<Vec<MsgTool>>,
    /// Whether and which tool the model must call.
    #[serde(default)]
    pub tool_choice: Option<MsgToolChoice>,
    /// Stop strings.
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// `user_id`.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub metadata: Option<MsgMetadata>,
    /// Extended thinking: accepted and ignored (docs/ANTHROPIC.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub thinking: Option<Map<String, Value>>,
    /// Stream the reply's events as SSE.
    #[serde(default)]
    pub stream: bool,
}
