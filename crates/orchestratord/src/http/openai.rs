//! OpenAI-compatible door: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (streaming and not).
//!
//! Every request goes through the same admission path as `POST /v1/tasks`
//! ([`crate::admission::admit`]): same queues, priorities, routing, sessions, budgets and
//! metrics. Mapping:
//! - `model` → `model_ref` (a pool id, a catalog id or a model file name);
//! - priority from the body field `priority`, else the header `X-Llorch-Priority`
//!   (`interactive` | `batch`), default `interactive`;
//! - session from the body field `session_id`, else the header `X-Llorch-Session`;
//! - `seed`, `temperature`, `top_p`, `top_k`, `stop`, the penalties and `logit_bias` pass
//!   through; `max_tokens` (or `max_completion_tokens`) defaults to [`DEFAULT_MAX_TOKENS`]
//!   capped by the pool's context;
//! - `tools`, `tool_choice`, `parallel_tool_calls`, tool messages and assistant messages with
//!   `tool_calls`, `response_format` and `logprobs` become the task's own fields; tool calls
//!   and log probabilities come back in the task's `token` events and are relayed in OpenAI's
//!   shapes (`message.tool_calls` / `delta.tool_calls`, `finish_reason: "tool_calls"`);
//! - chat templating is the engine's (llama-server `/apply-template`);
//! - the task id is generated (`chatcmpl-…` / `cmpl-…`) and returned as the response `id` and
//!   in the `X-Llorch-Task-Id` header, so `/v1/tasks/{id}` and `llorch` work on it;
//! - a client that disconnects before the end cancels its task.
//!
//! Errors use OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with the same
//! HTTP status as the native API; 429 and 503 carry `Retry-After` and `X-Backoff-Ms`. The
//! same shape answers 401, 404 and 405 on OpenAI's paths ([`is_openai_path`]) and 413 for a
//! body over `http.max_body_bytes`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;

use api_types::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk, ChatLogprobs, ChunkChoice,
    ChunkDelta, CompletionUsage, OaiErrorBody, OaiErrorDetail, OaiModel, OaiModelList, TextChoice,
    TextCompletion, TextLogprobs,
};
use api_types::{
    EndEvent, ErrorCode, FunctionCall, LogitBias, ResponseFormat, StreamEvent, TaskRequest,
    TokenEvent, TokenLogprob, Tool, ToolCall, ToolCallDelta, ToolChoice,
};
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::admission::{self, Admitted};
use crate::app::AppState;
use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::task::Task;

/// Header carrying the priority (`interactive` | `batch`).
pub const PRIORITY_HEADER: &str = "x-llorch-priority";
/// Header carrying the session id.
pub const SESSION_HEADER: &str = "x-llorch-session";
/// `max_tokens` when the request gives none (capped by the pool's context per slot).
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Bodies over the limit are still read (and dropped) up to this size, so that a client that
/// is still sending reads the 413 instead of a reset connection (which SDKs retry).
const DRAIN_LIMIT: u64 = 64 << 20;

/// The first path segments after `/v1/` that belong to OpenAI's API (ours and those we do not
/// serve): errors there are in OpenAI's shape, elsewhere in the daemon's envelope.
const OPENAI_RESOURCES: &[&str] = &[
    "models",
    "chat",
    "completions",
    "embeddings",
    "responses",
    "audio",
    "images",
    "moderations",
    "files",
    "uploads",
    "batches",
    "fine_tuning",
    "assistants",
    "threads",
    "vector_stores",
    "realtime",
    "conversations",
    "containers",
    "evals",
    // Not OpenAI's, but served beside `/v1/embeddings` in the same shape (`http/embeddings.rs`).
    "rerank",
    "reranking",
];

/// Whether `path` is one of OpenAI's API paths.
pub fn is_openai_path(path: &str) -> bool {
    path.strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|seg| OPENAI_RESOURCES.contains(&seg))
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct OaiError {
    status: StatusCode,
    message: String,
    pub(crate) code: String,
    retry_after_ms: Option<u64>,
    /// Close the connection after answering (the body was not read to its end).
    close: bool,
}

impl OaiError {
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            code: "invalid_params".into(),
            retry_after_ms: None,
            close: false,
        }
    }

    /// 413: the body is over `http.max_body_bytes`.
    pub(crate) fn too_large(limit: u64, close: bool) -> Self {
        Self {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            code: "payload_too_large".into(),
            close,
            ..Self::invalid(format!(
                "the request body is over {limit} bytes (http.max_body_bytes); send less, or raise the limit in the daemon's config"
            ))
        }
    }

    /// 405 on an OpenAI path.
    pub fn method_not_allowed() -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed".into(),
            ..Self::invalid("method not allowed on this route; see /openapi.json")
        }
    }
}

impl From<ServiceError> for OaiError {
    fn from(e: ServiceError) -> Self {
        Self {
            status: crate::http::error::status_for(e.body.code),
            message: e.body.message,
            code: e.body.code.as_str().to_ascii_lowercase(),
            retry_after_ms: e.body.retry_after_ms,
            close: false,
        }
    }
}

/// OpenAI's `type` for a status.
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 409 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

/// The body of an error, also used inside a broken stream.
fn error_body(status: StatusCode, message: &str, code: &str) -> OaiErrorBody {
    OaiErrorBody {
        error: OaiErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            param: None,
            kind: error_type(status).to_owned(),
        },
    }
}

impl IntoResponse for OaiError {
    fn into_response(self) -> Response {
        let body = error_body(self.status, &self.message, &self.code);
        let mut resp = (self.status, Json(body)).into_response();
        if self.close {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        if let Some(ms) = self.retry_after_ms {
            let h = resp.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
                h.insert("retry-after", v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                h.insert("x-backoff-ms", v);
            }
        }
        resp
    }
}

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

fn parse_body(bytes: &Bytes) -> Result<OaiRequest, OaiError> {
    let mut value: Value = serde_json::from_slice(bytes)
        .map_err(|e| OaiError::invalid(format!("invalid JSON body: {e}")))?;
    // `4.0` is the integer 4 (JSON Schema's reading, and Python clients send it).
    crate::http::integral_floats(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            OaiError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            OaiError::invalid(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

fn text_of(content: &Option<Value>) -> Result<String, OaiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    (ty, _) => {
                        return Err(OaiError::invalid(format!(
                            "content part of type `{}` is not supported; only text parts are",
                            ty.unwrap_or("?")
                        )))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(OaiError::invalid(
            "message content must be a string or an array of text parts",
        )),
    }
}

fn stop_list(stop: &Option<Value>) -> Result<Option<Vec<String>>, OaiError> {
    match stop {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| OaiError::invalid("`stop` must be a string or strings"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(OaiError::invalid("`stop` must be a string or strings")),
    }
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Which endpoint a request came through.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

/// The largest context per slot of the pools serving `model` (for the default `max_tokens`).
fn ctx_for(state: &AppState, model: &str) -> Option<u32> {
    state
        .pools
        .pools()
        .iter()
        .filter(|p| p.serves(model))
        .map(|p| p.ctx_per_slot())
        .max()
}

/// Refuses the OpenAI fields llama-orch does not serve, each with why.
fn refuse_unserved(kind: Kind, r: &OaiRequest) -> Result<(), OaiError> {
    let present = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    if present(&r.functions) || present(&r.function_call) {
        return Err(OaiError::invalid("`functions`/`function_call` are OpenAI's deprecated function calling; send `tools` and `tool_choice`",
        ));
    }
    if present(&r.audio)
        || r.modalities
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x != "text"))
    {
        return Err(OaiError::invalid(
            "only text output is supported (no `audio`)",
        ));
    }
    if present(&r.prediction) {
        return Err(OaiError::invalid("predicted outputs are not supported"));
    }
    if present(&r.web_search_options) {
        return Err(OaiError::invalid(
            "web search is not supported: the daemon runs local models only",
        ));
    }
    if r.echo == Some(true) {
        return Err(OaiError::invalid(
            "`echo` is not supported; the reply holds only the generated text",
        ));
    }
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(OaiError::invalid(
            "`suffix` (text insertion) is not supported",
        ));
    }
    if r.best_of.is_some_and(|n| n != 1) {
        return Err(OaiError::invalid("only best_of = 1 is supported"));
    }
    if kind == Kind::Completion
        && (r.tools.as_ref().is_some_and(|t| !t.is_empty()) || r.tool_choice.is_some())
    {
        return Err(OaiError::invalid("`tools` belong to /v1/chat/completions"));
    }
    Ok(())
}

/// The task's `logprobs` (alternatives per token) from the request's `logprobs` and
/// `top_logprobs`: chat takes `logprobs: true` and `top_logprobs` 0-20, completions take
/// `logprobs` as an integer 0-5.
fn logprobs_of(kind: Kind, r: &OaiRequest) -> Result<Option<u32>, OaiError> {
    let lp = r.logprobs.as_ref().filter(|v| !v.is_null());
    match kind {
        Kind::Chat => {
            let on = match lp {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(OaiError::invalid("`logprobs` is true or false for chat (the number of alternatives is `top_logprobs`)",
                    ))
                }
            };
            match (on, r.top_logprobs) {
                (false, Some(_)) => Err(OaiError::invalid("`top_logprobs` needs `logprobs: true`")),
                (true, Some(n)) if n > 20 => {
                    Err(OaiError::invalid("`top_logprobs` must be between 0 and 20"))
                }
                (true, n) => Ok(Some(n.unwrap_or(0))),
                (false, None) => Ok(None),
            }
        }
        Kind::Completion => match lp {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= 5 => Ok(u32::try_from(n).ok()),
                _ => Err(OaiError::invalid(
                    "`logprobs` is an integer between 0 and 5 for completions",
                )),
            },
        },
    }
}

/// One OpenAI message as a task message: `developer` is `system`; content parts are joined;
/// tool calls and tool results carried as they are. Other roles are refused.
fn task_message(i: usize, m: &OaiMessage) -> Result<Value, OaiError> {
    let role = match m.role.as_str() {
        "developer" => "system",
        r @ ("system" | "user" | "assistant" | "tool") => r,
        "function" => {
            return Err(OaiError::invalid("role `function` is OpenAI's deprecated function calling; answer a tool call with a `tool` message and its `tool_call_id`",
            ))
        }
        other => {
            return Err(OaiError::invalid(format!(
                    "messages[{i}] has role `{other}`; use system, developer, user, assistant or tool"
                ),
            ))
        }
    };
    let mut out = json!({ "role": role, "content": text_of(&m.content)? });
    if let Some(calls) = &m.tool_calls {
        out["tool_calls"] = json!(calls);
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = json!(id);
    }
    if role == "tool" {
        if let Some(n) = &m.name {
            out["name"] = json!(n);
        }
    }
    Ok(out)
}

/// Maps an OpenAI request to a task request. The rules the native API shares (roles, tools,
/// bounds) are checked again by admission.
fn to_task(
    state: &AppState,
    kind: Kind,
    r: &OaiRequest,
    headers: &HeaderMap,
    task_id: &str,
) -> Result<TaskRequest, OaiError> {
    if r.model.trim().is_empty() {
        return Err(OaiError::invalid("`model` is required; see GET /v1/models"));
    }
    if r.n.is_some_and(|n| n != 1) {
        return Err(OaiError::invalid("only n = 1 is supported"));
    }
    // Each given, not only the one used (`max_completion_tokens` wins): 0 is never meant.
    for (name, v) in [
        ("max_tokens", r.max_tokens),
        ("max_completion_tokens", r.max_completion_tokens),
    ] {
        if v == Some(0) {
            return Err(OaiError::invalid(format!("`{name}` must be at least 1")));
        }
    }
    refuse_unserved(kind, r)?;
    let logprobs = logprobs_of(kind, r)?;
    let priority = r
        .priority
        .clone()
        .or_else(|| header_str(headers, PRIORITY_HEADER).map(str::to_owned))
        .unwrap_or_else(|| "interactive".into());
    if priority != "interactive" && priority != "batch" {
        return Err(OaiError::invalid(format!(
            "priority `{priority}` is not `interactive` or `batch` (body field `priority` or header X-Llorch-Priority)"
        )));
    }
    let session = r
        .session_id
        .clone()
        .or_else(|| header_str(headers, SESSION_HEADER).map(str::to_owned));
    let max_tokens = r.max_completion_tokens.or(r.max_tokens).unwrap_or_else(|| {
        ctx_for(state, &r.model)
            .map(|c| c.min(DEFAULT_MAX_TOKENS))
            .unwrap_or(DEFAULT_MAX_TOKENS)
    });
    let mut body = json!({
        "task_id": task_id,
        "model_ref": r.model,
        "priority": priority,
        "max_tokens": max_tokens,
    });
    match kind {
        Kind::Chat => {
            let msgs = r
                .messages
                .as_ref()
                .filter(|m| !m.is_empty())
                .ok_or_else(|| OaiError::invalid("`messages` is required and must not be empty"))?;
            let out = msgs
                .iter()
                .enumerate()
                .map(|(i, m)| task_message(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            body["workload"] = json!("chat");
            body["messages"] = json!(out);
        }
        Kind::Completion => {
            let prompt = match &r.prompt {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => {
                    a[0].as_str().unwrap_or_default().to_owned()
                }
                Some(Value::Array(_)) => {
                    return Err(OaiError::invalid(
                        "`prompt` must be one string (batches of prompts are not supported)",
                    ))
                }
                _ => return Err(OaiError::invalid("`prompt` is required (a string)")),
            };
            body["workload"] = json!("completion");
            body["prompt"] = json!(prompt);
        }
    }
    let put = |b: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b[k] = v;
        }
    };
    put(&mut body, "seed", r.seed.map(|v| json!(v)));
    put(&mut body, "temperature", r.temperature.map(|v| json!(v)));
    put(&mut body, "top_p", r.top_p.map(|v| json!(v)));
    put(&mut body, "top_k", r.top_k.map(|v| json!(v)));
    put(&mut body, "session_id", session.map(|v| json!(v)));
    put(&mut body, "stop", stop_list(&r.stop)?.map(|v| json!(v)));
    put(
        &mut body,
        "frequency_penalty",
        r.frequency_penalty.map(|v| json!(v)),
    );
    put(
        &mut body,
        "presence_penalty",
        r.presence_penalty.map(|v| json!(v)),
    );
    put(
        &mut body,
        "logit_bias",
        r.logit_bias
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|v| json!(v)),
    );
    put(&mut body, "logprobs", logprobs.map(|v| json!(v)));
    // Some clients always send `tools: []`: no tools.
    put(
        &mut body,
        "tools",
        r.tools.as_ref().filter(|t| !t.is_empty()).map(|v| json!(v)),
    );
    put(
        &mut body,
        "tool_choice",
        r.tool_choice.as_ref().map(|v| json!(v)),
    );
    put(
        &mut body,
        "parallel_tool_calls",
        r.parallel_tool_calls.map(|v| json!(v)),
    );
    put(
        &mut body,
        "response_format",
        r.response_format
            .as_ref()
            .filter(|f| !matches!(f, ResponseFormat::Text))
            .map(|v| json!(v)),
    );
    // Built through serde so that fields added to TaskRequest later keep their defaults.
    serde_json::from_value(body).map_err(|e| OaiError::invalid(format!("invalid request: {e}")))
}

/// Cancels the task when dropped before it ended (the client went away).
pub(crate) struct CancelOnDrop {
    pub(crate) state: AppState,
    pub(crate) task: Arc<Task>,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.task.state().is_terminal() {
            return;
        }
        let state = self.state.clone();
        let id = self.task.id.clone();
        tracing::info!(task_id = %id, "OpenAI client disconnected; canceling its task");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = admission::cancel(&state, &id).await;
            });
        }
    }
}

fn now_s() -> u64 {
    crate::task::now_ms() / 1000
}

pub(crate) fn task_headers(adm: &Admitted) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(rem) = adm.budget_remaining() {
        crate::http::tasks::budget_headers(&rem, &mut h);
    }
    let pairs = [
        ("x-llorch-task-id", adm.task.id.clone()),
        ("x-llorch-pool", adm.response.pool_id.clone()),
        (
            "x-llorch-queue-position",
            adm.response.queue_position.to_string(),
        ),
        (
            "x-llorch-predicted-start-ms",
            adm.response.predicted_start_ms.to_string(),
        ),
    ];
    for (k, v) in pairs {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
    h
}

/// OpenAI `usage` from the task's `end` event; an engine that does not report its prompt
/// length counts as 0 prompt tokens.
fn usage(e: &EndEvent) -> CompletionUsage {
    let prompt = e.prompt_tokens.unwrap_or(0);
    CompletionUsage {
        completion_tokens: e.tokens_out,
        prompt_tokens: prompt,
        total_tokens: prompt.saturating_add(e.tokens_out),
    }
}

/// One SSE `data:` event holding `v` as compact JSON.
fn data_event<T: Serialize>(v: &T) -> Event {
    Event::default().data(compact(v))
}

/// `v` as compact JSON.
fn compact<T: Serialize>(v: &T) -> String {
    match serde_json::to_string(v) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize an OpenAI stream chunk");
            let body = error_body(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: cannot serialize a stream chunk",
                "internal",
            );
            serde_json::to_string(&body).unwrap_or_default()
        }
    }
}

/// Chat `logprobs` for some tokens.
fn chat_logprobs(content: Vec<TokenLogprob>) -> ChatLogprobs {
    ChatLogprobs {
        content,
        refusal: None,
    }
}

/// The legacy completions `logprobs` for some tokens; `offset` is the character offset of the
/// first one in the generated text, advanced past them. Each `top_logprobs` entry includes the
/// chosen token, as OpenAI's does ("up to logprobs+1 elements").
fn text_logprobs(tokens: Vec<TokenLogprob>, offset: &mut u64) -> TextLogprobs {
    let mut out = TextLogprobs::default();
    for t in tokens {
        out.text_offset.push(*offset);
        *offset = offset.saturating_add(t.token.chars().count() as u64);
        let mut top: BTreeMap<String, f64> = BTreeMap::new();
        for a in t.top_logprobs {
            top.entry(a.token).or_insert(a.logprob);
        }
        top.entry(t.token.clone()).or_insert(t.logprob);
        out.top_logprobs.push(top);
        out.token_logprobs.push(t.logprob);
        out.tokens.push(t.token);
    }
    out
}

/// Tool-call pieces merged into whole calls, by index (a non-streamed reply).
#[derive(Default)]
struct CallsSoFar(Vec<(u32, Option<String>, Option<String>, String)>);

impl CallsSoFar {
    fn add(&mut self, d: ToolCallDelta) {
        let i = match self.0.iter().position(|c| c.0 == d.index) {
            Some(i) => i,
            None => {
                self.0.push((d.index, None, None, String::new()));
                self.0.len() - 1
            }
        };
        let c = &mut self.0[i];
        // Servers send the id and name once, on a call's first piece.
        if c.1.is_none() {
            c.1 = d.id;
        }
        if c.2.is_none() {
            c.2 = d.function.name;
        }
        if let Some(a) = d.function.arguments {
            c.3.push_str(&a);
        }
    }

    fn into_calls(mut self) -> Option<Vec<ToolCall>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_by_key(|c| c.0);
        Some(
            self.0
                .into_iter()
                .map(|(_, id, name, arguments)| ToolCall {
                    // A client answers a call by its id: make one if the engine gave none.
                    id: id.unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple())),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.unwrap_or_default(),
                        arguments,
                    },
                })
                .collect(),
        )
    }
}

/// Builds the `data:` chunks of one streamed response.
struct Chunks {
    kind: Kind,
    id: String,
    model: String,
    created: u64,
}

impl Chunks {
    /// A chunk adding `delta` (its `content` is a completion's `text`), ending with `finish`.
    fn content(&self, delta: ChunkDelta, finish: Option<&str>) -> Event {
        Event::default().data(self.content_json(delta, finish))
    }

    /// The JSON of [`Self::content`].
    fn content_json(&self, delta: ChunkDelta, finish: Option<&str>) -> String {
        self.chunk_json(delta, finish, None, &mut 0)
    }

    /// The chunk for one `token` event; `None` when it adds nothing. `offset` is the
    /// character offset of the event's text in the whole reply (completions' `text_offset`).
    fn token(&self, t: TokenEvent, offset: &mut u64) -> Option<Event> {
        if t.t.is_empty() && t.tool_calls.is_none() && t.logprobs.is_none() {
            return None;
        }
        let delta = ChunkDelta {
            // A piece of a tool call carries no content, like OpenAI's.
            content: (!t.t.is_empty() || t.tool_calls.is_none()).then_some(t.t),
            role: None,
            tool_calls: t.tool_calls,
        };
        Some(Event::default().data(self.chunk_json(delta, None, t.logprobs, offset)))
    }

    fn chunk_json(
        &self,
        delta: ChunkDelta,
        finish: Option<&str>,
        logprobs: Option<Vec<TokenLogprob>>,
        offset: &mut u64,
    ) -> String {
        let finish_reason = finish.map(str::to_owned);
        match self.kind {
            Kind::Chat => compact(&ChatCompletionChunk {
                choices: vec![ChunkChoice {
                    delta,
                    finish_reason,
                    index: 0,
                    logprobs: logprobs.map(chat_logprobs),
                }],
                ..self.chat(None)
            }),
            Kind::Completion => compact(&TextCompletion {
                choices: vec![TextChoice {
                    finish_reason,
                    index: 0,
                    logprobs: logprobs.map(|l| text_logprobs(l, offset)),
                    text: delta.content.unwrap_or_default(),
                }],
                ..self.text(None)
            }),
        }
    }

    /// The last chunk before `[DONE]` with `stream_options.include_usage`: no choices.
    fn usage(&self, usage: CompletionUsage) -> Event {
        Event::default().data(self.usage_json(usage))
    }

    /// The JSON of [`Self::usage`].
    fn usage_json(&self, usage: CompletionUsage) -> String {
        match self.kind {
            Kind::Chat => compact(&self.chat(Some(usage))),
            Kind::Completion => compact(&self.text(Some(usage))),
        }
    }

    fn chat(&self, usage: Option<CompletionUsage>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            choices: Vec::new(),
            created: self.created,
            id: self.id.clone(),
            model: self.model.clone(),
            object: "chat.completion.chunk".into(),
            usage,
        }
    }

    fn text(&self, usage: Option<CompletionUsage>) -> TextCompletion {
        TextCompletion {
            choices: Vec::new(),
            created: self.created,
            id: self.id.clone(),
            model: self.model.clone(),
            object: "text_completion".into(),
            usage,
        }
    }
}

/// Answers `e` on an OpenAI path before the handler read the body (401, 404, 405): the body
/// is read and dropped first (up to [`DRAIN_LIMIT`]). A server that answers without reading
/// the body closes the connection after the answer, and an SDK that already sent its next
/// request on that pooled connection sees "server disconnected" instead of an answer.
pub async fn refuse(e: OaiError, body: Body) -> Response {
    use axum::body::HttpBody;
    if body.size_hint().lower() > DRAIN_LIMIT {
        return OaiError { close: true, ..e }.into_response();
    }
    let mut data = body.into_data_stream();
    let mut total: u64 = 0;
    let mut complete = true;
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(c) => total = total.saturating_add(c.len() as u64),
            Err(_) => {
                complete = false;
                break;
            }
        }
        if total > DRAIN_LIMIT {
            complete = false;
            break;
        }
    }
    OaiError {
        close: !complete,
        ..e
    }
    .into_response()
}

/// Reads the request body up to `limit` bytes; a larger one is drained (up to
/// [`DRAIN_LIMIT`]) and answered with 413, so the client reads the answer.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, OaiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(OaiError::too_large(limit, true));
    }
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = data.next().await {
        let chunk =
            chunk.map_err(|e| OaiError::invalid(format!("cannot read the request body: {e}")))?;
        total = total.saturating_add(chunk.len() as u64);
        if total > DRAIN_LIMIT {
            return Err(OaiError::too_large(limit, true));
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(OaiError::too_large(limit, false));
    }
    Ok(Bytes::from(buf))
}

async fn handle(
    state: AppState,
    cid: CorrelationId,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, OaiError> {
    let body = read_body(&headers, body, state.config.http.max_body_bytes)
        .await
        .inspect_err(|e| {
            state.metrics.rejected("", &e.code.to_ascii_uppercase());
        })?;
    let r = parse_body(&body).inspect_err(|e| {
        state.metrics.rejected("", &e.code.to_ascii_uppercase());
    })?;
    let prefix = match kind {
        Kind::Chat => "chatcmpl",
        Kind::Completion => "cmpl",
    };
    let task_id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let req = to_task(&state, kind, &r, &headers, &task_id).inspect_err(|_| {
        state
            .metrics
            .rejected("", ErrorCode::InvalidParams.as_str());
    })?;
    let adm = admission::admit(&state, &cid.0, req).await?;
    let hdrs = task_headers(&adm);
    let guard = CancelOnDrop {
        state: state.clone(),
        task: adm.task.clone(),
    };
    let model = r.model.clone();
    let created = now_s();
    let id = adm.task.id.clone();
    if r.stream {
        let include_usage = r.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunks = Chunks {
            kind,
            id,
            model,
            created,
        };
        let mut head = Vec::new();
        if kind == Kind::Chat {
            head.push(chunks.content(
                ChunkDelta {
                    content: Some(String::new()),
                    role: Some("assistant".into()),
                    tool_calls: None,
                },
                None,
            ));
        }
        let frames = adm.task.clone().follow();
        let mut offset = 0u64;
        let body_events = frames.flat_map(move |f| {
            // The guard lives as long as the stream: a client that goes away cancels.
            let _keep = &guard;
            let out: Vec<Event> = match StreamEvent::parse(f.name, &f.data) {
                Ok(StreamEvent::Token(t)) => chunks.token(t, &mut offset).into_iter().collect(),
                Ok(StreamEvent::End(e)) => {
                    let mut v = vec![chunks.content(ChunkDelta::default(), Some(&e.finish_reason))];
                    if include_usage {
                        v.push(chunks.usage(usage(&e)));
                    }
                    v.push(Event::default().data("[DONE]"));
                    v
                }
                Ok(StreamEvent::Error(env)) => {
                    let e = OaiError::from(ServiceError::from_envelope(env));
                    vec![data_event(&error_body(e.status, &e.message, &e.code))]
                }
                _ => Vec::new(),
            };
            futures::stream::iter(out.into_iter().map(Ok::<Event, Infallible>))
        });
        let events =
            futures::stream::iter(head.into_iter().map(Ok::<Event, Infallible>)).chain(body_events);
        return Ok((hdrs, Sse::new(events).keep_alive(KeepAlive::default())).into_response());
    }
    let mut text = String::new();
    let mut logprobs: Option<Vec<TokenLogprob>> = None;
    let mut calls = CallsSoFar::default();
    let mut frames = Box::pin(adm.task.clone().follow());
    let mut end = None;
    while let Some(f) = frames.next().await {
        match StreamEvent::parse(f.name, &f.data) {
            Ok(StreamEvent::Token(t)) => {
                text.push_str(&t.t);
                if let Some(l) = t.logprobs {
                    logprobs.get_or_insert_with(Vec::new).extend(l);
                }
                for d in t.tool_calls.into_iter().flatten() {
                    calls.add(d);
                }
            }
            Ok(StreamEvent::End(e)) => {
                end = Some(e);
                break;
            }
            Ok(StreamEvent::Error(env)) => return Err(ServiceError::from_envelope(env).into()),
            _ => {}
        }
    }
    drop(guard);
    let Some(e) = end else {
        return Err(
            ServiceError::new(ErrorCode::Internal, "the task ended without a result").into(),
        );
    };
    let usage = usage(&e);
    Ok(match kind {
        Kind::Chat => {
            let tool_calls = calls.into_calls();
            (
                hdrs,
                Json(ChatCompletion {
                    choices: vec![ChatChoice {
                        finish_reason: e.finish_reason,
                        index: 0,
                        logprobs: logprobs.map(chat_logprobs),
                        message: AssistantMessage {
                            // OpenAI answers a reply of only tool calls with `content: null`.
                            content: (!text.is_empty() || tool_calls.is_none()).then_some(text),
                            role: "assistant".into(),
                            tool_calls,
                        },
                    }],
                    created,
                    id: adm.task.id.clone(),
                    model: r.model,
                    object: "chat.completion".into(),
                    usage,
                }),
            )
                .into_response()
        }
        Kind::Completion => (
            hdrs,
            Json(TextCompletion {
                choices: vec![TextChoice {
                    finish_reason: Some(e.finish_reason),
                    index: 0,
                    logprobs: logprobs.map(|l| text_logprobs(l, &mut 0)),
                    text,
                }],
                created,
                id: adm.task.id.clone(),
                model: r.model,
                object: "text_completion".into(),
                usage: Some(usage),
            }),
        )
            .into_response(),
    })
}

/// OpenAI-compatible chat completion (streaming with `stream: true`).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = OaiRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
    ),
    responses(
        (status = 200, description = "`chat.completion`, or with `stream: true` a `text/event-stream` of `chat.completion.chunk`s ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (OaiSseFrame = "text/event-stream")),
            headers(("X-Llorch-Task-Id" = String, description = "the task's id"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "Session expired or out of turns, Retired catalog model, or (without streaming) the task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    handle(state, cid, headers, body, Kind::Chat).await
}

/// OpenAI-compatible text completion (streaming with `stream: true`).
#[utoipa::path(post, path = "/v1/completions", request_body = OaiRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
    ),
    responses(
        (status = 200, description = "`text_completion`, or with `stream: true` a `text/event-stream` of chunks ending with `data: [DONE]`",
            content((TextCompletion = "application/json"), (OaiSseFrame = "text/event-stream"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "Session expired or out of turns, Retired catalog model, or (without streaming) the task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    handle(state, cid, headers, body, Kind::Completion).await
}

fn models_list(state: &AppState) -> Vec<OaiModel> {
    let created = now_s();
    let mut out: Vec<OaiModel> = Vec::new();
    for p in state.pools.pools() {
        let mut ids = vec![p.id().to_owned()];
        if let Some(m) = &p.config().model {
            let stem = std::path::Path::new(m)
                .file_name()
                .and_then(|f| f.to_str())
                .map(|f| f.strip_suffix(".gguf").unwrap_or(f).to_owned())
                .unwrap_or_else(|| m.clone());
            ids.push(stem);
        }
        for id in ids {
            if out.iter().any(|o| o.id == id) {
                continue;
            }
            out.push(OaiModel {
                created,
                id,
                object: "model".into(),
                owned_by: "llama-orch".into(),
                pool_id: p.id().to_owned(),
                ready: p.is_ready(),
            });
        }
    }
    out
}

/// OpenAI-compatible model list: each pool id and its model's file name.
#[utoipa::path(get, path = "/v1/models",
    responses((status = 200, description = "`{object: \"list\", data: [model]}`", body = OaiModelList)))]
pub async fn models(State(state): State<AppState>) -> Json<OaiModelList> {
    Json(OaiModelList {
        data: models_list(&state),
        object: "list".into(),
    })
}

/// One model of `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = OaiModel), (status = 404, description = "Unknown model (OpenAI error shape)", body = OaiErrorBody)))]
pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OaiModel>, OaiError> {
    models_list(&state)
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| {
            ServiceError::new(
                ErrorCode::ModelNotFound,
                format!("no pool serves model `{id}`; see GET /v1/models"),
            )
            .into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_join_text() {
        let v = Some(json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b\u{2028}"}]));
        assert_eq!(text_of(&v).unwrap(), "ab\u{2028}");
        assert!(text_of(&Some(json!([{"type": "image_url"}]))).is_err());
        assert_eq!(text_of(&None).unwrap(), "");
    }

    #[test]
    fn stop_forms() {
        assert_eq!(
            stop_list(&Some(json!("x"))).unwrap(),
            Some(vec!["x".to_owned()])
        );
        assert_eq!(
            stop_list(&Some(json!(["a", "b"]))).unwrap().unwrap().len(),
            2
        );
        assert!(stop_list(&Some(json!(3))).is_err());
    }

    /// The chunks as they were built with `json!` before the typed replies (keys sorted).
    #[test]
    fn chunks_are_byte_compatible() {
        let c = |kind| Chunks {
            kind,
            id: "chatcmpl-1".into(),
            model: "tiny".into(),
            created: 7,
        };
        let (chat, text) = (c(Kind::Chat), c(Kind::Completion));
        let head = ChunkDelta {
            content: Some(String::new()),
            role: Some("assistant".into()),
            tool_calls: None,
        };
        let tok = ChunkDelta {
            content: Some("a\u{2028}b".into()),
            role: None,
            tool_calls: None,
        };
        let old_chat = |delta: Value, finish: Option<&str>| {
            json!({
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 7, "model": "tiny",
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
        };
        let old_text = |t: &str, finish: Option<&str>| {
            json!({
                "id": "chatcmpl-1", "object": "text_completion", "created": 7, "model": "tiny",
                "choices": [{ "index": 0, "text": t, "logprobs": null, "finish_reason": finish }],
            })
        };
        assert_eq!(
            chat.content_json(head, None),
            old_chat(json!({"role": "assistant", "content": ""}), None).to_string()
        );
        assert_eq!(
            chat.content_json(tok.clone(), None),
            old_chat(json!({"content": "a\u{2028}b"}), None).to_string()
        );
        assert_eq!(
            chat.content_json(ChunkDelta::default(), Some("stop")),
            old_chat(json!({}), Some("stop")).to_string()
        );
        assert_eq!(
            text.content_json(tok, None),
            old_text("a\u{2028}b", None).to_string()
        );
        assert_eq!(
            text.content_json(ChunkDelta::default(), Some("length")),
            old_text("", Some("length")).to_string()
        );
        let e = EndEvent {
            tokens_out: 3,
            prompt_tokens: None,
            decode_ms: 1,
            finish_reason: "length".into(),
        };
        let old_usage = json!({"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3});
        for (ch, mut old) in [
            (&chat, old_chat(json!({}), None)),
            (&text, old_text("", None)),
        ] {
            old["choices"] = json!([]);
            old["usage"] = old_usage.clone();
            assert_eq!(ch.usage_json(usage(&e)), old.to_string());
        }
    }

    #[test]
    fn error_body_is_byte_compatible() {
        let old = json!({ "error": {
            "message": "full", "type": "rate_limit_error", "param": null, "code": "admission_reject",
        }});
        assert_eq!(
            compact(&error_body(
                StatusCode::TOO_MANY_REQUESTS,
                "full",
                "admission_reject"
            )),
            old.to_string()
        );
    }

    fn req(v: Value) -> OaiRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn openai_paths() {
        for p in [
            "/v1/models",
            "/v1/models/tiny",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses/x",
        ] {
            assert!(is_openai_path(p), "{p}");
        }
        for p in [
            "/v1/tasks",
            "/v1/modelsx",
            "/health",
            "/v1/catalog/models",
            "/v2/models",
        ] {
            assert!(!is_openai_path(p), "{p}");
        }
    }

    #[test]
    fn logprobs_forms_per_endpoint() {
        let chat = |v: Value| logprobs_of(Kind::Chat, &req(v));
        assert_eq!(chat(json!({"model": "m"})).unwrap(), None);
        assert_eq!(
            chat(json!({"model": "m", "logprobs": true})).unwrap(),
            Some(0)
        );
        assert_eq!(
            chat(json!({"model": "m", "logprobs": true, "top_logprobs": 5})).unwrap(),
            Some(5)
        );
        assert_eq!(
            chat(json!({"model": "m", "logprobs": false})).unwrap(),
            None
        );
        assert!(chat(json!({"model": "m", "top_logprobs": 2})).is_err());
        assert!(chat(json!({"model": "m", "logprobs": true, "top_logprobs": 21})).is_err());
        assert!(chat(json!({"model": "m", "logprobs": 3})).is_err());
        let text = |v: Value| logprobs_of(Kind::Completion, &req(v));
        assert_eq!(text(json!({"model": "m", "logprobs": 2})).unwrap(), Some(2));
        assert_eq!(text(json!({"model": "m", "logprobs": null})).unwrap(), None);
        assert!(text(json!({"model": "m", "logprobs": 6})).is_err());
        assert!(text(json!({"model": "m", "logprobs": true})).is_err());
    }

    #[test]
    fn messages_roles_and_tool_turns() {
        let m = |v: Value| -> OaiMessage { serde_json::from_value(v).unwrap() };
        assert_eq!(
            task_message(0, &m(json!({"role": "developer", "content": "be brief"}))).unwrap(),
            json!({"role": "system", "content": "be brief"})
        );
        let call = json!({"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}});
        assert_eq!(
            task_message(
                1,
                &m(json!({"role": "assistant", "content": null, "tool_calls": [call]}))
            )
            .unwrap(),
            json!({"role": "assistant", "content": "", "tool_calls": [call]})
        );
        assert_eq!(
            task_message(
                2,
                &m(
                    json!({"role": "tool", "tool_call_id": "c1", "name": "get_weather",
                    "content": [{"type": "text", "text": "sunny"}]})
                )
            )
            .unwrap(),
            json!({"role": "tool", "content": "sunny", "tool_call_id": "c1", "name": "get_weather"})
        );
        let e = task_message(3, &m(json!({"role": "wizard", "content": "x"}))).unwrap_err();
        assert!(
            e.message.contains("messages[3] has role `wizard`"),
            "{}",
            e.message
        );
        assert!(task_message(0, &m(json!({"role": "function", "content": "x"}))).is_err());
    }

    #[test]
    fn unserved_fields_are_refused_and_tools_are_chat_only() {
        let bad = [
            json!({"functions": [{"name": "f"}]}),
            json!({"audio": {"voice": "alloy"}}),
            json!({"modalities": ["text", "audio"]}),
            json!({"prediction": {"type": "content", "content": "x"}}),
            json!({"web_search_options": {}}),
            json!({"echo": true}),
            json!({"suffix": "end"}),
            json!({"best_of": 2}),
        ];
        for mut b in bad {
            b["model"] = json!("m");
            assert!(refuse_unserved(Kind::Chat, &req(b.clone())).is_err(), "{b}");
        }
        let ok = json!({"model": "m", "modalities": ["text"], "echo": false, "suffix": "",
            "best_of": 1, "functions": null, "user": "u", "store": false, "metadata": {"a": "b"}});
        refuse_unserved(Kind::Chat, &req(ok)).unwrap();
        let tools =
            json!({"model": "m", "tools": [{"type": "function", "function": {"name": "f"}}]});
        assert!(refuse_unserved(Kind::Completion, &req(tools.clone())).is_err());
        refuse_unserved(Kind::Chat, &req(tools)).unwrap();
        let r = req(
            json!({"model": "m", "response_format": {"type": "json_schema",
            "json_schema": {"name": "n", "schema": {"type": "object"}}}, "tool_choice": "required"}),
        );
        assert!(matches!(
            r.response_format,
            Some(ResponseFormat::JsonSchema { .. })
        ));
        assert_eq!(r.tool_choice, Some(ToolChoice::Mode("required".into())));
        assert!(serde_json::from_value::<OaiRequest>(
            json!({"model": "m", "response_format": {"type": "xml"}})
        )
        .is_err());
    }

    fn lp(token: &str, logprob: f64, top: &[(&str, f64)]) -> TokenLogprob {
        TokenLogprob {
            token: token.into(),
            logprob,
            bytes: Some(token.as_bytes().to_vec()),
            top_logprobs: top
                .iter()
                .map(|(t, l)| api_types::TopLogprob {
                    token: (*t).into(),
                    logprob: *l,
                    bytes: None,
                })
                .collect(),
        }
    }

    #[test]
    fn legacy_logprobs_offsets_and_top_dicts() {
        let mut offset = 0;
        let l = text_logprobs(
            vec![lp("fö", -1.0, &[("a", -0.5)]), lp(" x", -2.0, &[])],
            &mut offset,
        );
        assert_eq!(l.tokens, ["fö", " x"]);
        assert_eq!(l.token_logprobs, [-1.0, -2.0]);
        assert_eq!(l.text_offset, [0, 2], "characters, not bytes");
        assert_eq!(offset, 4);
        assert_eq!(l.top_logprobs[0].len(), 2, "the chosen token is included");
        assert_eq!(l.top_logprobs[1][" x"], -2.0);
        let more = text_logprobs(vec![lp("y", -0.1, &[])], &mut offset);
        assert_eq!(
            more.text_offset,
            [4],
            "offsets continue across stream chunks"
        );
    }

    #[test]
    fn tool_call_pieces_merge_into_calls() {
        let piece =
            |index, id: Option<&str>, name: Option<&str>, args: Option<&str>| ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                kind: id.map(|_| "function".to_owned()),
                function: api_types::FunctionCallDelta {
                    name: name.map(str::to_owned),
                    arguments: args.map(str::to_owned),
                },
            };
        let mut c = CallsSoFar::default();
        c.add(piece(1, Some("b"), Some("g"), Some("{}")));
        c.add(piece(0, Some("a"), Some("f"), Some("{\"x\"")));
        c.add(piece(0, None, None, Some(": 1}")));
        let calls = c.into_calls().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.name.as_str()),
            ("a", "f")
        );
        assert_eq!(calls[0].function.arguments, "{\"x\": 1}");
        assert_eq!(calls[1].function.arguments, "{}");
        let mut anon = CallsSoFar::default();
        anon.add(piece(0, None, Some("f"), None));
        assert!(anon.into_calls().unwrap()[0].id.starts_with("call_"));
        assert!(CallsSoFar::default().into_calls().is_none());
    }

    #[test]
    fn token_events_become_chunks_with_tool_calls_and_logprobs() {
        let c = Chunks {
            kind: Kind::Chat,
            id: "chatcmpl-1".into(),
            model: "tiny".into(),
            created: 7,
        };
        let ev =
            |t: &str, calls: Option<Vec<ToolCallDelta>>, l: Option<Vec<TokenLogprob>>| TokenEvent {
                t: t.into(),
                i: 0,
                logprobs: l,
                tool_calls: calls,
            };
        let mut off = 0;
        assert!(c.token(ev("", None, None), &mut off).is_none());
        let call = ToolCallDelta {
            index: 0,
            id: Some("c1".into()),
            kind: Some("function".into()),
            function: api_types::FunctionCallDelta {
                name: Some("f".into()),
                arguments: Some("{".into()),
            },
        };
        let d = |e: Event| format!("{e:?}");
        let with_call = d(c.token(ev("", Some(vec![call]), None), &mut off).unwrap());
        assert!(
            with_call.contains(r#"{\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"c1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\"}}]}"#),
            "{with_call}"
        );
        let with_lp = d(c
            .token(ev("a", None, Some(vec![lp("a", -0.5, &[])])), &mut off)
            .unwrap());
        assert!(
            with_lp.contains(r#"\"logprobs\":{\"content\":[{\"token\":\"a\",\"logprob\":-0.5,\"bytes\":[97],\"top_logprobs\":[]}],\"refusal\":null}"#),
            "{with_lp}"
        );
        let text = Chunks {
            kind: Kind::Completion,
            ..c
        };
        let t = d(text
            .token(ev("a", None, Some(vec![lp("a", -0.5, &[])])), &mut off)
            .unwrap());
        assert!(
            t.contains(r#"\"text_offset\":[0]"#) && t.contains(r#"\"text\":\"a\""#),
            "{t}"
        );
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_drained_and_refused() {
        let h = HeaderMap::new();
        let ok = read_body(&h, Body::from(vec![b'x'; 100]), 100)
            .await
            .unwrap();
        assert_eq!(ok.len(), 100);
        let e = read_body(&h, Body::from(vec![b'x'; 101]), 100)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!e.close, "read to its end: the connection stays usable");
        let r = e.into_response();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let mut big = HeaderMap::new();
        big.insert("content-length", HeaderValue::from_static("999999999999"));
        let e = read_body(&big, Body::empty(), 100).await.unwrap_err();
        assert!(e.close, "too big to drain: answer and close");
        let r = refuse(OaiError::method_not_allowed(), Body::from("ignored")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn error_shape_and_retry_after() {
        let e = OaiError::from(ServiceError::from_envelope(
            api_types::ErrorEnvelope::new(ErrorCode::AdmissionReject, "full").retry_after(1500),
        ));
        let r = e.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["x-backoff-ms"], "1500");
    }
}
