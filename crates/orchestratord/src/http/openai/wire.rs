//! The OpenAI door's request types (the replies are `orch_api_types::openai`).

use orch_api_types::{LogitBias, ResponseFormat, Tool, ToolCall, ToolChoice};
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A chat message. `content` is a string or an array of `{type: "text", text}` parts.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct OaiMessage {
    /// `system`, `developer` (treated as `system`), `user`, `assistant`, `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    /// Text, or text parts (`null` for an assistant message that only calls tools).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub content: Option<Value>,
    /// An assistant message's tool calls.
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
    /// A participant's or function's name.
    #[serde(default)]
    pub name: Option<String>,
}

/// One event of an OpenAI stream (`stream: true`), documented per event as SSE-aware tools
/// validate streams (found by the chaos schema fuzzing: the chunk schema was applied to the
/// `{event, data}` frame).
#[derive(ToSchema)]
#[expect(
    dead_code,
    reason = "schema only: documents the SSE frames in the OpenAPI document"
)]
pub struct OaiSseFrame {
    /// Always `message` (the events carry no `event:` field).
    #[schema(pattern = "^message$")]
    pub event: String,
    /// A `chat.completion.chunk` or `text_completion` chunk as one line of JSON (an error in
    /// OpenAI's shape if the task fails), then `[DONE]`.
    pub data: String,
}

/// `stream_options`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with `usage`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Body of `POST /v1/chat/completions` and `POST /v1/completions`. Fields OpenAI defines
/// that are not listed are accepted and ignored (docs/OPENAI.md lists each); `n` > 1 and the
/// features llama-orch does not serve (audio, predicted outputs, `echo`, `suffix`, …) are
/// refused with 400.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct OaiRequest {
    /// Model: a pool id, a catalog id, or a model file name (see `GET /v1/models`).
    pub model: String,
    /// Chat messages (`/v1/chat/completions`).
    #[serde(default)]
    pub messages: Option<Vec<OaiMessage>>,
    /// Prompt (`/v1/completions`): a string or an array of one string.
    #[serde(default)]
    pub prompt: Option<Value>,
    /// Tokens to generate (default 512, capped by the pool's context).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Newer name of `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k sampling (llama.cpp extension).
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Stop string or strings.
    #[serde(default)]
    pub stop: Option<Value>,
    /// Sampling seed, passed through to the engine.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Stream `chat.completion.chunk`s as SSE, ending with `data: [DONE]`.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Choices; only 1 is supported.
    #[serde(default)]
    pub n: Option<u32>,
    /// llama-orch: `interactive` (default) or `batch`; overrides `X-Llorch-Priority`.
    #[serde(default)]
    pub priority: Option<String>,
    /// llama-orch: session for KV reuse and budgets; overrides `X-Llorch-Session`.
    #[serde(default)]
    pub session_id: Option<String>,
    /// Tools the model may call (chat).
    #[serde(default)]
    pub tools: Option<Vec<Tool>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}` (chat).
    #[serde(default)]
    pub tool_choice: Option<ToolChoice>,
    /// Whether the model may call several tools in one reply (chat).
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `text`, `json_object` or `json_schema`.
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// Chat: `true` for each token's log probability. Completions: an integer, the number of
    /// most likely alternatives per token (0-5).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub logprobs: Option<Value>,
    /// Chat: alternatives per token (0-20), with `logprobs: true`.
    #[serde(default)]
    #[schema(maximum = 20)]
    pub top_logprobs: Option<u32>,
    /// Token id → bias (-100 ..= 100).
    #[serde(default)]
    pub logit_bias: Option<LogitBias>,
    /// Penalty by how often a token appeared (-2 ..= 2).
    #[serde(default)]
    pub frequency_penalty: Option<f32>,
    /// Penalty for tokens that appeared at all (-2 ..= 2).
    #[serde(default)]
    pub presence_penalty: Option<f32>,
    /// Refused: OpenAI's deprecated function calling (use `tools`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub functions: Option<Value>,
    /// Refused: OpenAI's deprecated function calling (use `tool_choice`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub function_call: Option<Value>,
    /// Refused: audio output.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub audio: Option<Value>,
    /// Only `["text"]`.
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    /// Refused: predicted outputs.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub prediction: Option<Value>,
    /// Refused: web search.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub web_search_options: Option<Value>,
    /// Completions: only `false` (the prompt is not echoed).
    #[serde(default)]
    pub echo: Option<bool>,
    /// Completions: refused when not empty (no insertion).
    #[serde(default)]
    pub suffix: Option<String>,
    /// Completions: only 1.
    #[serde(default)]
    pub best_of: Option<u32>,
}
