//! A Responses request as a task request:
//! - `instructions` → the first `system` message (not stored with the conversation, so a
//!   response continuing this one does not inherit them, as OpenAI);
//! - the stored conversation of `previous_response_id` (its input and its reply), then
//!   `input`: a string is one `user` message; items are `message` (`developer` → `system`;
//!   text parts joined), `function_call` (→ the assistant message's `tool_calls`),
//!   `function_call_output` (→ a `tool` message), `reasoning` (dropped);
//! - `function` tools → the task's tools; other tool types are dropped and named;
//! - `tool_choice`, `parallel_tool_calls`, `text.format` (→ `response_format`),
//!   `max_output_tokens` (→ `max_tokens`, default [`DEFAULT_MAX_TOKENS`] capped by the
//!   pool's context), `temperature`, `top_p`, and the extensions `seed` and `logit_bias`;
//! - priority and session from `X-Llorch-Priority` and `X-Llorch-Session`.

use axum::http::HeaderMap;
use orch_api_types::{ChatMessage, FunctionCall, TaskRequest, ToolCall};
use serde_json::{json, Value};

use super::wire::ResponsesRequest;
use crate::http::door::{self, DEFAULT_MAX_TOKENS};
use crate::http::openai::{ctx_for, OaiError, OpenAiShape};
use crate::state::AppState;

/// A request translated: the task, and what the response echoes.
#[derive(Debug)]
pub struct Translated {
    /// The task to admit.
    pub task: TaskRequest,
    /// The conversation without `instructions` (what a stored response keeps).
    pub history: Vec<ChatMessage>,
    /// Tool types dropped (each once, in request order).
    pub dropped_tools: Vec<String>,
    /// The function tools kept, in the Responses shape (echoed in the response).
    pub tools: Vec<Value>,
    /// `tool_choice` as echoed (`auto` when absent).
    pub tool_choice: Value,
    /// `text` as echoed (`{"format": {"type": "text"}}` when absent).
    pub text: Value,
}

fn invalid(msg: impl Into<String>) -> OaiError {
    OaiError::invalid(msg)
}

/// The text of `content` (a string or text parts) at `at`.
fn content_text(content: Option<&Value>, at: &str) -> Result<String, OaiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for (j, p) in parts.iter().enumerate() {
                let ty = p.get("type").and_then(Value::as_str).unwrap_or("?");
                match ty {
                    "input_text" | "output_text" | "text" | "summary_text" => {
                        let t = p.get("text").and_then(Value::as_str).ok_or_else(|| {
                            invalid(format!("{at}[{j}] (`{ty}`) needs `text`, a string"))
                        })?;
                        out.push_str(t);
                    }
                    "refusal" => {
                        out.push_str(p.get("refusal").and_then(Value::as_str).unwrap_or(""))
                    }
                    other => {
                        return Err(invalid(format!(
                            "{at}[{j}] has type `{other}`: only text parts (`input_text`, `output_text`) are supported; the daemon serves text models"
                        )))
                    }
                }
            }
            Ok(out)
        }
        Some(_) => Err(invalid(format!(
            "{at} must be a string or an array of text parts"
        ))),
    }
}

fn str_field<'a>(item: &'a Value, field: &str, at: &str) -> Result<&'a str, OaiError> {
    item.get(field)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(format!("{at} needs `{field}`, a non-empty string")))
}

/// The function name of the call `call_id` in `msgs`.
fn name_of_call(msgs: &[ChatMessage], call_id: &str) -> Option<String> {
    msgs.iter()
        .rev()
        .flat_map(|m| m.tool_calls.iter().flatten())
        .find(|c| c.id == call_id)
        .map(|c| c.function.name.clone())
}

/// Appends `input` (a string or items) to `msgs`.
pub fn push_input(msgs: &mut Vec<ChatMessage>, input: Option<&Value>) -> Result<(), OaiError> {
    let msg = |role: &str, content: String| ChatMessage {
        role: role.into(),
        content,
        tool_calls: None,
        tool_call_id: None,
        name: None,
    };
    let items = match input {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::String(s)) => {
            msgs.push(msg("user", s.clone()));
            return Ok(());
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(invalid(
                "`input` must be a string or an array of input items",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        if !item.is_object() {
            return Err(invalid(format!("{at} must be an object (an input item)")));
        }
        // An item without `type` but with `role` is a message (OpenAI's "easy" form).
        let ty = match item.get("type").and_then(Value::as_str) {
            Some(t) => t,
            None if item.get("role").is_some() => "message",
            None => return Err(invalid(format!("{at} needs `type`"))),
        };
        match ty {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("developer" | "system") => "system",
                    Some(r @ ("user" | "assistant")) => r,
                    Some(other) => {
                        return Err(invalid(format!(
                            "{at} has role `{other}`; use user, system, developer or assistant"
                        )))
                    }
                    None => return Err(invalid(format!("{at} needs `role`"))),
                };
                let content = content_text(item.get("content"), &format!("{at}.content"))?;
                msgs.push(msg(role, content));
            }
            "function_call" => {
                let call = ToolCall {
                    id: str_field(item, "call_id", &at)?.to_owned(),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: str_field(item, "name", &at)?.to_owned(),
                        arguments: match item.get("arguments") {
                            None | Some(Value::Null) => "{}".to_owned(),
                            Some(Value::String(s)) => s.clone(),
                            Some(_) => {
                                return Err(invalid(format!(
                                    "{at}.arguments must be a string (JSON text)"
                                )))
                            }
                        },
                    },
                };
                // Calls join the assistant message they follow (one turn of the template).
                match msgs.last_mut() {
                    Some(m) if m.role == "assistant" => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call)
                    }
                    _ => msgs.push(ChatMessage {
                        tool_calls: Some(vec![call]),
                        ..msg("assistant", String::new())
                    }),
                }
            }
            "function_call_output" => {
                let call_id = str_field(item, "call_id", &at)?.to_owned();
                let output = content_text(item.get("output"), &format!("{at}.output"))?;
                let name = name_of_call(msgs, &call_id);
                msgs.push(ChatMessage {
                    tool_call_id: Some(call_id),
                    name,
                    ..msg("tool", output)
                });
            }
            // The engine's own reasoning is not fed back (and we never send encrypted content).
            "reasoning" => {}
            "item_reference" => {
                return Err(invalid(format!(
                    "{at}: item references are not supported; send the item itself, or continue a stored response with `previous_response_id`"
                )))
            }
            other => {
                return Err(invalid(format!(
                    "{at} has type `{other}`; supported: message, function_call, function_call_output, reasoning (dropped)"
                )))
            }
        }
    }
    Ok(())
}

/// The function tools as task tools and as echoed, and the other tool types (dropped).
#[allow(clippy::type_complexity)]
pub(super) fn tools_of(
    tools: Option<&Vec<Value>>,
) -> Result<(Vec<Value>, Vec<Value>, Vec<String>), OaiError> {
    let (mut task_tools, mut echo, mut dropped) = (Vec::new(), Vec::new(), Vec::<String>::new());
    for (i, t) in tools.into_iter().flatten().enumerate() {
        let at = format!("tools[{i}]");
        let ty = t
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid(format!("{at} needs `type`")))?;
        if ty != "function" {
            if !dropped.iter().any(|d| d == ty) {
                dropped.push(ty.to_owned());
            }
            continue;
        }
        let name = str_field(t, "name", &at)?;
        let mut f = json!({ "name": name });
        let mut e = json!({ "type": "function", "name": name });
        for k in ["description", "parameters", "strict"] {
            if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                f[k] = v.clone();
                e[k] = v.clone();
            }
        }
        task_tools.push(json!({ "type": "function", "function": f }));
        echo.push(e);
    }
    Ok((task_tools, echo, dropped))
}

/// `tool_choice` as the task's (`None`: the engine's default, `auto`).
pub(super) fn tool_choice_of(c: Option<&Value>) -> Result<Option<Value>, OaiError> {
    match c {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(m)) if matches!(m.as_str(), "auto" | "none" | "required") => {
            Ok(Some(json!(m)))
        }
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or_else(|| invalid("`tool_choice` of type `function` needs `name`"))?;
            Ok(Some(
                json!({"type": "function", "function": {"name": name}}),
            ))
        }
        Some(_) => Err(invalid(
            "`tool_choice` must be `auto`, `none`, `required` or {\"type\": \"function\", \"name\": …}; other tool types cannot be run by the engine",
        )),
    }
}

/// `text.format` as the task's `response_format` (`None`: free text).
pub(super) fn format_of(text: Option<&Value>) -> Result<Option<Value>, OaiError> {
    let Some(f) = text.and_then(|t| t.get("format")).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match f.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut s = json!({ "name": f.get("name").and_then(Value::as_str).unwrap_or("") });
            for k in ["description", "schema", "strict"] {
                if let Some(v) = f.get(k).filter(|v| !v.is_null()) {
                    s[k] = v.clone();
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": s})))
        }
        _ => Err(invalid(
            "`text.format.type` must be `text`, `json_object` or `json_schema`",
        )),
    }
}

/// Refuses what the door does not serve, each with why.
fn refuse_unserved(r: &ResponsesRequest) -> Result<(), OaiError> {
    if r.model.trim().is_empty() {
        return Err(invalid("`model` is required; see GET /v1/models"));
    }
    if r.background == Some(true) {
        return Err(invalid(
            "background responses are not served; send the request without `background` (stream it to follow it)",
        ));
    }
    if r.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(invalid(
            "OpenAI's Conversations API is not served; continue a stored response with `previous_response_id`",
        ));
    }
    if r.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(invalid(
            "stored prompt templates (`prompt`) are not served; send `instructions` and `input`",
        ));
    }
    if r.max_output_tokens == Some(0) {
        return Err(invalid("`max_output_tokens` must be at least 1"));
    }
    Ok(())
}

/// Translates `r` after `prior` (the conversation of `previous_response_id`, empty without
/// one) into a task with id `task_id`.
pub fn to_task(
    state: &AppState,
    r: &ResponsesRequest,
    prior: Vec<ChatMessage>,
    headers: &HeaderMap,
    task_id: &str,
) -> Result<Translated, OaiError> {
    refuse_unserved(r)?;
    let mut history = prior;
    push_input(&mut history, r.input.as_ref())?;
    if history.is_empty() {
        return Err(invalid(
            "`input` is required (a string or input items) unless `previous_response_id` names a stored response",
        ));
    }
    let mut messages = Vec::with_capacity(history.len() + 1);
    if let Some(i) = r.instructions.as_deref().filter(|i| !i.is_empty()) {
        messages.push(json!({"role": "system", "content": i}));
    }
    messages.extend(history.iter().map(|m| json!(m)));
    let (task_tools, tools, dropped_tools) = tools_of(r.tools.as_ref())?;
    let tool_choice = tool_choice_of(r.tool_choice.as_ref())?;
    let format = format_of(r.text.as_ref())?;
    let priority = door::priority::<OpenAiShape>(None, headers)?;
    let session = door::session(None, headers);
    let max_tokens = r.max_output_tokens.unwrap_or_else(|| {
        ctx_for(state, &r.model)
            .map(|c| c.min(DEFAULT_MAX_TOKENS))
            .unwrap_or(DEFAULT_MAX_TOKENS)
    });
    let mut body = json!({
        "task_id": task_id,
        "model_ref": r.model,
        "priority": priority,
        "max_tokens": max_tokens,
        "workload": "chat",
        "messages": messages,
    });
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body[k] = v;
        }
    };
    put("seed", r.seed.map(|v| json!(v)));
    put(
        "logit_bias",
        r.logit_bias
            .as_ref()
            .filter(|b| !b.is_empty())
            .map(|v| json!(v)),
    );
    put("temperature", r.temperature.map(|v| json!(v)));
    put("top_p", r.top_p.map(|v| json!(v)));
    put("session_id", session.map(|v| json!(v)));
    let has_tools = !task_tools.is_empty();
    put("tools", has_tools.then(|| json!(task_tools)));
    // A choice without tools left (all dropped) means nothing to the engine, except
    // `required`, which admission refuses with its reason.
    put(
        "tool_choice",
        tool_choice.clone().filter(|c| has_tools || c == "required"),
    );
    put(
        "parallel_tool_calls",
        r.parallel_tool_calls
            .filter(|_| has_tools)
            .map(|v| json!(v)),
    );
    put("response_format", format);
    let task: TaskRequest =
        serde_json::from_value(body).map_err(|e| invalid(format!("invalid request: {e}")))?;
    Ok(Translated {
        task,
        history,
        dropped_tools,
        tools,
        tool_choice: r
            .tool_choice
            .clone()
            .filter(|c| !c.is_null())
            .unwrap_or_else(|| json!("auto")),
        text: r
            .text
            .clone()
            .filter(|t| t.get("format").is_some_and(|f| !f.is_null()))
            .unwrap_or_else(|| json!({"format": {"type": "text"}})),
    })
}
