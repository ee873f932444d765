//! The Responses door's request type (the replies are `orch_api_types::responses`). `input`,
//! `tools`, `tool_choice` and `text` are read by hand (`task.rs`) so that each bad item is
//! named by its place and the tool types the engine cannot run are dropped, not refused.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// Body of `POST /v1/responses` and `POST /v1/responses/input_tokens`. Fields OpenAI defines
/// that are not listed are accepted and ignored (docs/OPENAI.md, "Responses", lists each).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
pub struct ResponsesRequest {
    /// Model: a pool id, a catalog id, a model file name, or a name `model_aliases` maps.
    pub model: String,
    /// A string (one user message) or items: `message` (`role` user, system, developer or
    /// assistant; `content` a string or `input_text`/`output_text` parts), `function_call`,
    /// `function_call_output`, `reasoning` (dropped).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub input: Option<Value>,
    /// A system message put before everything else (not carried to a later response that
    /// names this one as `previous_response_id`, as OpenAI does).
    #[serde(default)]
    pub instructions: Option<String>,
    /// Continue a stored response: its input and output come before `input`.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// `function` tools (`name`, `description`, `parameters`, `strict`); other types (Codex's
    /// `local_shell`, `web_search`, `custom`, …) are dropped and named in the
    /// `x-llorch-dropped-tools` header.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto`, `none`, `required` or `{"type": "function", "name"}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    /// Whether the model may call several tools in one reply.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", …}}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub text: Option<Value>,
    /// Tokens to generate (default 512, clamped to what the prompt leaves of the context).
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Stream the response's events as SSE.
    #[serde(default)]
    pub stream: bool,
    /// Keep the response for `GET /v1/responses/{id}` and `previous_response_id` (default
    /// true, as OpenAI; `responses.retention_s` and `responses.max_stored` bound it).
    #[serde(default)]
    pub store: Option<bool>,
    /// Echoed in the response.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Echoed in the response.
    #[serde(default)]
    pub user: Option<String>,
    /// llama-orch extension: sampling seed, passed through to the engine.
    #[serde(default)]
    pub seed: Option<u64>,
    /// llama-orch extension (llama-server's own `/v1/responses` takes it too): token id →
    /// bias (-100 ..= 100), e.g. to make a model open a tool call.
    #[serde(default)]
    pub logit_bias: Option<orch_api_types::LogitBias>,
    /// Accepted and ignored (the engine reasons as its template says).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub reasoning: Option<Value>,
    /// Accepted and ignored (no encrypted reasoning, no logprobs in output).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub include: Option<Value>,
    /// Accepted and ignored (a prompt that fills the context is refused before it is queued).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub truncation: Option<Value>,
    /// Accepted and ignored (llama-server reuses cached prefixes by itself).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub prompt_cache_key: Option<Value>,
    /// Accepted and ignored (priority is `X-Llorch-Priority`).
    #[serde(default)]
    #[schema(value_type = Object)]
    #[expect(
        dead_code,
        reason = "accepted and ignored: in the schema and parsed, read by no code"
    )]
    pub service_tier: Option<Value>,
    /// Refused when true: background responses are not served.
    #[serde(default)]
    pub background: Option<bool>,
    /// Refused: OpenAI's Conversations API is not served (use `previous_response_id`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub conversation: Option<Value>,
    /// Refused: stored prompt templates are not served.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub prompt: Option<Value>,
}
