//! A Messages request as a task request (docs/ANTHROPIC.md has the field-by-field table):
//! - `model` → `model_ref` (then `model_aliases`), `max_tokens` required (at least 1);
//! - `system` (a string or text blocks) → a first `system` message; text blocks of one
//!   message are joined with a blank line;
//! - `tool_use` blocks → the assistant message's `tool_calls` (`input` as JSON text),
//!   `tool_result` blocks → `tool` messages with `tool_call_id` (and the tool's `name`), in
//!   block order;
//!   `thinking`/`redacted_thinking` blocks are dropped; `image`/`document` are refused;
//! - `tools` → function tools (server tools dropped, named in `x-llorch-dropped-tools`),
//!   `tool_choice` auto/any/tool/none → auto/required/named/none,
//!   `disable_parallel_tool_use` → `parallel_tool_calls: false`;
//! - `stop_sequences`, `temperature`, `top_p`, `top_k` pass through;
//! - priority from `X-Llorch-Priority`, session from `X-Llorch-Session` only.

use std::collections::HashMap;

use axum::http::HeaderMap;
use orch_api_types::TaskRequest;
use serde_json::{json, Value};

use super::error::{AnthropicError, AnthropicShape};
use super::wire::{MsgMessage, MsgRequest, MsgTool, MsgToolChoice};
use crate::http::door;

/// The task request and what the translation left out.
pub struct Translated {
    /// The task.
    pub req: TaskRequest,
    /// Names of the tools dropped (server tools the engine cannot run).
    pub dropped_tools: Vec<String>,
}

/// Text of a `system` or `tool_result` content: a string or text blocks (joined with a
/// blank line). `what` names the field in errors.
fn text_blocks(v: &Value, what: &str) -> Result<String, AnthropicError> {
    match v {
        Value::Null => Ok(String::new()),
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => parts.push(t),
                    (Some(ty @ ("image" | "document")), _) => {
                        return Err(unsupported_media(&format!("{what}[{j}]"), ty))
                    }
                    (ty, _) => {
                        return Err(AnthropicError::invalid(format!(
                            "{what}[{j}] is a block of type `{}`; only `text` blocks (with `text`) are accepted here",
                            ty.unwrap_or("?")
                        )))
                    }
                }
            }
            Ok(parts.join("\n\n"))
        }
        _ => Err(AnthropicError::invalid(format!(
            "{what} must be a string or an array of text blocks"
        ))),
    }
}

fn unsupported_media(at: &str, ty: &str) -> AnthropicError {
    AnthropicError::invalid(format!(
        "{at}: `{ty}` blocks are not supported: llama-orch serves text models through this door; send the content as text"
    ))
}

/// One Anthropic message as task messages (a user message with tool results becomes one
/// `tool` message per result, in order, around its text).
/// `names` maps the ids of the conversation's earlier `tool_use` blocks to their tools, so a
/// `tool` message names the tool it answers (some chat templates show it).
fn task_messages(
    i: usize,
    m: &MsgMessage,
    names: &mut HashMap<String, String>,
    out: &mut Vec<Value>,
) -> Result<(), AnthropicError> {
    // Claude Code 2.1 also sends `system` messages among the turns (text only); they are
    // system turns for the engine's template, as llama-server's own /v1/messages takes them.
    let role = match m.role.as_str() {
        r @ ("user" | "assistant" | "system") => r,
        other => {
            return Err(AnthropicError::invalid(format!(
                "messages[{i}] has role `{other}`; use `user`, `assistant` or `system`"
            )))
        }
    };
    let blocks = match &m.content {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) if !b.is_empty() => b,
        Value::Array(_) => {
            return Err(AnthropicError::invalid(format!(
                "messages[{i}].content is empty; send a string or at least one block"
            )))
        }
        _ => {
            return Err(AnthropicError::invalid(format!(
                "messages[{i}].content must be a string or an array of content blocks"
            )))
        }
    };
    let mut text: Vec<&str> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    let flush = |text: &mut Vec<&str>, calls: &mut Vec<Value>, out: &mut Vec<Value>| {
        if text.is_empty() && calls.is_empty() {
            return;
        }
        let mut msg = json!({"role": role, "content": text.join("\n\n")});
        if !calls.is_empty() {
            msg["tool_calls"] = json!(std::mem::take(calls));
        }
        text.clear();
        out.push(msg);
    };
    for (j, b) in blocks.iter().enumerate() {
        let at = format!("messages[{i}].content[{j}]");
        let ty = b.get("type").and_then(Value::as_str).unwrap_or("");
        match (ty, role) {
            ("text", _) => match b.get("text").and_then(Value::as_str) {
                Some(t) => text.push(t),
                None => {
                    return Err(AnthropicError::invalid(format!(
                        "{at} is a `text` block without `text`"
                    )))
                }
            },
            ("tool_use", "assistant") => {
                let id = b.get("id").and_then(Value::as_str).unwrap_or("");
                let name = b.get("name").and_then(Value::as_str).unwrap_or("");
                if id.is_empty() || name.is_empty() {
                    return Err(AnthropicError::invalid(format!(
                        "{at}: a `tool_use` block needs `id` and `name`"
                    )));
                }
                let input = match b.get("input") {
                    None | Some(Value::Null) => json!({}),
                    Some(v @ Value::Object(_)) => v.clone(),
                    Some(_) => {
                        return Err(AnthropicError::invalid(format!(
                            "{at}: a `tool_use` block's `input` must be an object"
                        )))
                    }
                };
                names.insert(id.to_owned(), name.to_owned());
                calls.push(json!({"id": id, "type": "function",
                    "function": {"name": name, "arguments": input.to_string()}}));
            }
            ("tool_result", "user") => {
                let id = b.get("tool_use_id").and_then(Value::as_str).unwrap_or("");
                if id.is_empty() {
                    return Err(AnthropicError::invalid(format!(
                        "{at}: a `tool_result` block needs `tool_use_id`, the id of the `tool_use` it answers"
                    )));
                }
                let content = text_blocks(
                    b.get("content").unwrap_or(&Value::Null),
                    &format!("{at}.content"),
                )?;
                // The user's text before a result is its own message, so the order holds.
                flush(&mut text, &mut calls, out);
                let mut result = json!({"role": "tool", "tool_call_id": id, "content": content});
                if let Some(n) = names.get(id) {
                    result["name"] = json!(n);
                }
                out.push(result);
            }
            // Earlier turns' reasoning: the engine's template has no place for it.
            ("thinking" | "redacted_thinking", "assistant") => {}
            ("image" | "document", _) => return Err(unsupported_media(&at, ty)),
            ("tool_use" | "tool_result" | "thinking" | "redacted_thinking", _) => {
                return Err(AnthropicError::invalid(format!(
                    "{at}: a `{ty}` block does not belong in a `{role}` message"
                )))
            }
            _ => {
                return Err(AnthropicError::invalid(format!(
                    "{at} is a block of type `{ty}`, which is not supported; use text, tool_use and tool_result blocks"
                )))
            }
        }
    }
    flush(&mut text, &mut calls, out);
    Ok(())
}

/// Function tools from Anthropic's, and the names of those dropped.
fn tools_of(tools: &[MsgTool]) -> (Vec<Value>, Vec<String>) {
    let mut out = Vec::new();
    let mut dropped = Vec::new();
    for t in tools {
        match t.kind.as_deref() {
            None | Some("custom") => {
                let mut f = json!({"name": t.name,
                    "parameters": t.input_schema.clone().map(Value::Object).unwrap_or_else(|| json!({"type": "object"}))});
                if let Some(d) = &t.description {
                    f["description"] = json!(d);
                }
                out.push(json!({"type": "function", "function": f}));
            }
            Some(_) => dropped.push(t.name.clone()),
        }
    }
    (out, dropped)
}

/// `tool_choice` as the task's.
fn tool_choice_of(c: &MsgToolChoice) -> Result<Value, AnthropicError> {
    Ok(match c.kind.as_str() {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => match c.name.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => json!({"type": "function", "function": {"name": n}}),
            None => {
                return Err(AnthropicError::invalid(
                    "`tool_choice` of type `tool` needs `name`",
                ))
            }
        },
        other => {
            return Err(AnthropicError::invalid(format!(
                "`tool_choice.type` is `{other}`; use auto, any, tool or none"
            )))
        }
    })
}

/// Maps a Messages request to a task request. `count_only` (count_tokens) does not need
/// `max_tokens`. The rules the native API shares (tools, bounds) are checked again by
/// admission.
pub fn to_task(
    r: &MsgRequest,
    headers: &HeaderMap,
    task_id: &str,
    count_only: bool,
) -> Result<Translated, AnthropicError> {
    if r.model.trim().is_empty() {
        return Err(AnthropicError::invalid(
            "`model` is required: a pool id, a model name, or a name in the daemon's model_aliases; see GET /v1/models",
        ));
    }
    let max_tokens = match (r.max_tokens, count_only) {
        (Some(0), _) => return Err(AnthropicError::invalid("`max_tokens` must be at least 1")),
        (Some(n), _) => n,
        (None, true) => 1,
        (None, false) => {
            return Err(AnthropicError::invalid(
                "`max_tokens` is required (the most tokens to generate; it is clamped to what the prompt leaves of the model's context)",
            ))
        }
    };
    if r.messages.is_empty() {
        return Err(AnthropicError::invalid(
            "`messages` is required and must not be empty",
        ));
    }
    let mut msgs = Vec::with_capacity(r.messages.len() + 1);
    if let Some(s) = &r.system {
        let system = text_blocks(s, "system")?;
        if !system.is_empty() {
            msgs.push(json!({"role": "system", "content": system}));
        }
    }
    let mut names = HashMap::new();
    for (i, m) in r.messages.iter().enumerate() {
        task_messages(i, m, &mut names, &mut msgs)?;
    }
    let priority = door::priority::<AnthropicShape>(None, headers)?;
    let mut body = json!({
        "task_id": task_id,
        "model_ref": r.model,
        "priority": priority,
        "max_tokens": max_tokens,
        "workload": "chat",
        "messages": msgs,
    });
    let put = |b: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b[k] = v;
        }
    };
    put(&mut body, "temperature", r.temperature.map(|v| json!(v)));
    put(&mut body, "top_p", r.top_p.map(|v| json!(v)));
    put(&mut body, "top_k", r.top_k.map(|v| json!(v)));
    put(
        &mut body,
        "session_id",
        door::session(None, headers).map(|v| json!(v)),
    );
    put(
        &mut body,
        "stop",
        r.stop_sequences
            .as_ref()
            .filter(|s| !s.is_empty())
            .map(|v| json!(v)),
    );
    let (tools, dropped_tools) = tools_of(r.tools.as_deref().unwrap_or_default());
    let has_tools = !tools.is_empty();
    if has_tools {
        body["tools"] = json!(tools);
    }
    if let Some(c) = &r.tool_choice {
        // `none` without tools says nothing; any other choice needs them (admission says so).
        if has_tools || c.kind != "none" {
            body["tool_choice"] = tool_choice_of(c)?;
        }
        if c.disable_parallel_tool_use == Some(true) && has_tools {
            body["parallel_tool_calls"] = json!(false);
        }
    }
    // Built through serde so that fields added to TaskRequest later keep their defaults.
    let req = serde_json::from_value(body)
        .map_err(|e| AnthropicError::invalid(format!("invalid request: {e}")))?;
    Ok(Translated { req, dropped_tools })
}
