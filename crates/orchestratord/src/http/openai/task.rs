//! An OpenAI request as a task request. Mapping:
//! - `model` → `model_ref` (a pool id, a catalog id or a model file name);
//! - priority from the body field `priority`, else the header `X-Llorch-Priority`
//!   (`interactive` | `batch`), default `interactive`;
//! - session from the body field `session_id`, else the header `X-Llorch-Session`;
//! - `seed`, `temperature`, `top_p`, `top_k`, `stop`, the penalties and `logit_bias` pass
//!   through; `max_tokens` (or `max_completion_tokens`) defaults to [`DEFAULT_MAX_TOKENS`]
//!   capped by the pool's context;
//! - `tools`, `tool_choice`, `parallel_tool_calls`, tool messages and assistant messages with
//!   `tool_calls`, `response_format` and `logprobs` become the task's own fields.

use axum::http::HeaderMap;
use orch_api_types::{ResponseFormat, TaskRequest};
use serde_json::{json, Value};

use super::error::{OaiError, OpenAiShape};
use super::wire::{OaiMessage, OaiRequest};
use crate::http::door::{self, DEFAULT_MAX_TOKENS};
use crate::state::AppState;

pub fn text_of(content: &Option<Value>) -> Result<String, OaiError> {
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

pub fn stop_list(stop: &Option<Value>) -> Result<Option<Vec<String>>, OaiError> {
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

/// Which endpoint a request came through.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// The largest context per slot of the pools serving `model` (for the default `max_tokens`).
pub fn ctx_for(state: &AppState, model: &str) -> Option<u32> {
    state
        .pools
        .pools()
        .iter()
        .filter(|p| p.serves(model))
        .map(|p| p.ctx_per_slot())
        .max()
}

/// Refuses the OpenAI fields llama-orch does not serve, each with why.
pub(super) fn refuse_unserved(kind: Kind, r: &OaiRequest) -> Result<(), OaiError> {
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
pub(super) fn logprobs_of(kind: Kind, r: &OaiRequest) -> Result<Option<u32>, OaiError> {
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
pub(super) fn task_message(i: usize, m: &OaiMessage) -> Result<Value, OaiError> {
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
pub fn to_task(
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
    let priority = door::priority::<OpenAiShape>(r.priority.as_deref(), headers)?;
    let session = door::session(r.session_id.as_deref(), headers);
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
