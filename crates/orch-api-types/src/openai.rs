//! Replies of the OpenAI-compatible door: `GET /v1/models`, `GET /v1/models/{id}`,
//! `POST /v1/completions`, `POST /v1/chat/completions` and their stream chunks, and OpenAI's
//! error shape.
//!
//! Fields are declared in alphabetical order: the order these bodies had when the daemon built
//! them as `serde_json` values, so the bytes on the wire did not change with the types. Which
//! fields are `null` and which are absent follows OpenAI's API (the official SDKs parse them).
//! `logprobs` is `null` unless the request asked for log probabilities.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tools::{TokenLogprob, ToolCall, ToolCallDelta};

/// One model of `GET /v1/models`, and the body of `GET /v1/models/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OaiModel {
    /// Seconds since the Unix epoch (the time of the listing).
    pub created: u64,
    /// What to pass as `model`: a pool id or its model's file name without `.gguf`.
    pub id: String,
    /// Always `model`.
    pub object: String,
    /// Always `llama-orch`.
    pub owned_by: String,
    /// llama-orch: the pool serving it.
    pub pool_id: String,
    /// llama-orch: whether that pool is ready.
    pub ready: bool,
}

/// Body of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OaiModelList {
    /// The models.
    pub data: Vec<OaiModel>,
    /// Always `list`.
    pub object: String,
}

/// Token counts of a completion.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CompletionUsage {
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Prompt tokens (0 when the engine does not report them).
    pub prompt_tokens: u64,
    /// The sum of both.
    pub total_tokens: u64,
}

/// The assistant's message of a `chat.completion`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AssistantMessage {
    /// The generated text; `null` when the reply is only tool calls.
    pub content: Option<String>,
    /// Always `assistant`.
    pub role: String,
    /// The tools the model called (absent when it called none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

/// `logprobs` of a chat choice or chunk: one entry per generated token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatLogprobs {
    /// The tokens of the content, in order.
    pub content: Vec<TokenLogprob>,
    /// Always `null` (no refusals).
    pub refusal: Option<Vec<TokenLogprob>>,
}

/// `logprobs` of a text completion choice (the legacy completions shape): parallel arrays, one
/// entry per generated token.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextLogprobs {
    /// Character offset of each token in the generated text.
    pub text_offset: Vec<u64>,
    /// Each token's natural-log probability.
    pub token_logprobs: Vec<f64>,
    /// Each token's text.
    pub tokens: Vec<String>,
    /// The most likely alternatives at each position: token text → log probability.
    pub top_logprobs: Vec<BTreeMap<String, f64>>,
}

/// The one choice of a `chat.completion`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatChoice {
    /// `stop`, `length`, `tool_calls`, … as the engine ended.
    pub finish_reason: String,
    /// Always 0 (only `n = 1` is supported).
    pub index: u32,
    /// With `logprobs: true`: each token's log probability; else `null`.
    pub logprobs: Option<ChatLogprobs>,
    /// The reply.
    pub message: AssistantMessage,
}

/// Body of `POST /v1/chat/completions` without streaming.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletion {
    /// One choice.
    pub choices: Vec<ChatChoice>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The task id (`chatcmpl-…`), usable with `/v1/tasks/{id}`.
    pub id: String,
    /// The `model` of the request.
    pub model: String,
    /// Always `chat.completion`.
    pub object: String,
    /// Token counts.
    pub usage: CompletionUsage,
}

/// What a chat stream chunk adds to the message: `{role, content: ""}` first, then
/// `{content}` per token (`{tool_calls}` for pieces of tool calls), `{}` with the finish
/// reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChunkDelta {
    /// Text to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// `assistant`, in the first chunk only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Pieces of tool calls to append.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// The one choice of a `chat.completion.chunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChunkChoice {
    /// What this chunk adds.
    pub delta: ChunkDelta,
    /// `null` until the last content chunk, which carries the engine's reason.
    pub finish_reason: Option<String>,
    /// Always 0.
    pub index: u32,
    /// With `logprobs: true`: the log probabilities of this chunk's tokens; else `null`.
    pub logprobs: Option<ChatLogprobs>,
}

/// One `data:` event of `POST /v1/chat/completions` with `stream: true` (the stream ends with
/// `data: [DONE]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// One choice; empty in the usage chunk.
    pub choices: Vec<ChunkChoice>,
    /// Seconds since the Unix epoch (the same in every chunk).
    pub created: u64,
    /// The task id (`chatcmpl-…`).
    pub id: String,
    /// The `model` of the request.
    pub model: String,
    /// Always `chat.completion.chunk`.
    pub object: String,
    /// Only in the last chunk before `[DONE]`, with `stream_options.include_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// The one choice of a `text_completion`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextChoice {
    /// The engine's reason; `null` in stream chunks before the last.
    pub finish_reason: Option<String>,
    /// Always 0.
    pub index: u32,
    /// With `logprobs`: each token's log probability (in a stream chunk: this chunk's
    /// tokens); else `null`.
    pub logprobs: Option<TextLogprobs>,
    /// The generated text (in a stream chunk: the text this chunk adds).
    pub text: String,
}

/// Body of `POST /v1/completions`, and each `data:` event of it with `stream: true` (the stream
/// ends with `data: [DONE]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TextCompletion {
    /// One choice; empty in the usage chunk of a stream.
    pub choices: Vec<TextChoice>,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// The task id (`cmpl-…`), usable with `/v1/tasks/{id}`.
    pub id: String,
    /// The `model` of the request.
    pub model: String,
    /// Always `text_completion`.
    pub object: String,
    /// Token counts: always without streaming; in a stream only in the last chunk before
    /// `[DONE]`, with `stream_options.include_usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
}

/// The inside of an OpenAI-shaped error.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OaiErrorDetail {
    /// llama-orch's error code in lower case (`admission_reject`, `invalid_params`, …).
    pub code: String,
    /// What went wrong and what to do about it.
    pub message: String,
    /// Always `null`.
    pub param: Option<String>,
    /// OpenAI's error type (`invalid_request_error`, `rate_limit_error`, …).
    #[serde(rename = "type")]
    pub kind: String,
}

/// An error of the OpenAI door, also sent as a `data:` event when a stream breaks off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OaiErrorBody {
    /// The error.
    pub error: OaiErrorDetail,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_wire_forms() {
        let mut c = ChatCompletionChunk {
            choices: vec![ChunkChoice {
                delta: ChunkDelta {
                    content: Some(String::new()),
                    role: Some("assistant".into()),
                    tool_calls: None,
                },
                finish_reason: None,
                index: 0,
                logprobs: None,
            }],
            created: 1,
            id: "chatcmpl-x".into(),
            model: "tiny".into(),
            object: "chat.completion.chunk".into(),
            usage: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"choices":[{"delta":{"content":"","role":"assistant"},"finish_reason":null,"index":0,"logprobs":null}],"created":1,"id":"chatcmpl-x","model":"tiny","object":"chat.completion.chunk"}"#
        );
        c.choices[0].delta = ChunkDelta::default();
        c.choices[0].finish_reason = Some("stop".into());
        assert!(serde_json::to_string(&c)
            .unwrap()
            .contains(r#"{"delta":{},"finish_reason":"stop""#));
        c.choices.clear();
        c.usage = Some(CompletionUsage {
            completion_tokens: 2,
            prompt_tokens: 3,
            total_tokens: 5,
        });
        assert!(serde_json::to_string(&c)
            .unwrap()
            .ends_with(r#""usage":{"completion_tokens":2,"prompt_tokens":3,"total_tokens":5}}"#));
    }

    #[test]
    fn error_wire_form() {
        let e = OaiErrorBody {
            error: OaiErrorDetail {
                code: "invalid_params".into(),
                message: "m".into(),
                param: None,
                kind: "invalid_request_error".into(),
            },
        };
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"error":{"code":"invalid_params","message":"m","param":null,"type":"invalid_request_error"}}"#
        );
        assert_eq!(serde_json::from_str::<OaiErrorBody>(&s).unwrap(), e);
    }
}
