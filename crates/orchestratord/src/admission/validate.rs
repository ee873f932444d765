//! Validation of task requests: each rule with its actionable message.

use api_types::{Determinism, ResponseFormat, TaskRequest, ToolChoice, Workload};
use pool_manager::Pool;

use crate::error::ServiceError;

/// A task id or similar: 1-128 of `A-Za-z0-9._:-`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

/// Largest value of an unsigned 64-bit request field (`seed`, `deadline_ms`, budgets): 2^63-1,
/// what JSON tools, SQLite and the OpenAPI `int64` format hold.
pub const MAX_WIRE_INT: u64 = i64::MAX as u64;

/// Highest `temperature` accepted.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// Checks a task request on its own (ids, workload fields, sampling bounds), before routing.
pub fn validate(req: &TaskRequest) -> Result<(), ServiceError> {
    if !valid_id(&req.task_id) {
        return Err(ServiceError::invalid(
            "task_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    if req.model_ref.trim().is_empty() {
        return Err(ServiceError::invalid(
            "model_ref is empty; name a pool id or a model",
        ));
    }
    if let Some(e) = &req.engine {
        if orch_config::EngineKind::parse(e).is_none() {
            return Err(ServiceError::invalid(format!(
                "unknown engine `{e}`; use one of llamacpp, vllm, tgi, triton, openai"
            )));
        }
    }
    match req.workload {
        Workload::Completion => {
            if req.prompt.is_none() {
                return Err(ServiceError::invalid("a `completion` task needs `prompt`"));
            }
            if req.messages.is_some() {
                return Err(ServiceError::invalid(
                    "`messages` belongs to `chat` tasks; set workload: chat or send `prompt`",
                ));
            }
        }
        Workload::Chat => {
            if req.messages.as_ref().is_none_or(Vec::is_empty) {
                return Err(ServiceError::invalid(
                    "a `chat` task needs non-empty `messages`",
                ));
            }
            if req.prompt.is_some() {
                return Err(ServiceError::invalid(
                    "`prompt` belongs to `completion` tasks; send `messages` for chat",
                ));
            }
        }
    }
    if req.max_tokens == 0 {
        return Err(ServiceError::invalid("max_tokens must be at least 1"));
    }
    let budget = req.budget.unwrap_or_default();
    for (name, v) in [
        ("seed", req.seed),
        ("deadline_ms", req.deadline_ms),
        ("budget.tokens", budget.tokens),
        ("budget.time_ms", budget.time_ms),
    ] {
        if v.is_some_and(|v| v > MAX_WIRE_INT) {
            return Err(ServiceError::invalid(format!(
                "{name} must be at most {MAX_WIRE_INT} (2^63-1)"
            )));
        }
    }
    if matches!(req.determinism, Some(Determinism::Strict)) && req.seed.is_none() {
        return Err(ServiceError::invalid("determinism `strict` needs a `seed`"));
    }
    for (name, v, max) in [
        ("temperature", req.temperature, MAX_TEMPERATURE),
        ("top_p", req.top_p, 1.0),
    ] {
        if v.is_some_and(|x| !(0.0..=max).contains(&x)) {
            return Err(ServiceError::invalid(format!(
                "{name} must be a number from 0 to {max}"
            )));
        }
    }
    if let Some(s) = &req.session_id {
        if !valid_id(s) {
            return Err(ServiceError::invalid(
                "session_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
    }
    validate_extras(req)
}

/// Roles a chat message may have.
const ROLES: [&str; 4] = ["system", "user", "assistant", "tool"];

/// The rules for messages with tools, tool definitions and choice, log probabilities, logit
/// bias, penalties and response formats.
fn validate_extras(req: &TaskRequest) -> Result<(), ServiceError> {
    for (i, m) in req.messages.iter().flatten().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ServiceError::invalid(format!(
                "messages[{i}].role `{}` is not one of system, user, assistant, tool",
                m.role
            )));
        }
        if m.tool_calls.is_some() && m.role != "assistant" {
            return Err(ServiceError::invalid(format!(
                "messages[{i}]: only assistant messages carry `tool_calls`"
            )));
        }
        if m.role == "tool" && m.tool_call_id.as_deref().is_none_or(str::is_empty) {
            return Err(ServiceError::invalid(format!(
                "messages[{i}]: a `tool` message needs `tool_call_id`, the id of the call it answers"
            )));
        }
    }
    let tools = req.tools.as_deref().unwrap_or_default();
    if (!tools.is_empty() || req.tool_choice.is_some() || req.parallel_tool_calls.is_some())
        && req.workload != Workload::Chat
    {
        return Err(ServiceError::invalid(
            "`tools`, `tool_choice` and `parallel_tool_calls` belong to `chat` tasks",
        ));
    }
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ServiceError::invalid(format!(
                "tools[{i}].type is `{}`; only `function` tools are supported",
                t.kind
            )));
        }
        let n = &t.function.name;
        if n.is_empty()
            || n.len() > 64
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(ServiceError::invalid(format!(
                "tools[{i}].function.name must be 1-64 characters of a-z A-Z 0-9 _ -"
            )));
        }
        if t.function.parameters.as_ref().is_some_and(|p| !p.is_object()) {
            return Err(ServiceError::invalid(format!(
                "tools[{i}].function.parameters must be a JSON schema object"
            )));
        }
    }
    match &req.tool_choice {
        None => {}
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" | "auto" => {}
            "required" if !tools.is_empty() => {}
            "required" => {
                return Err(ServiceError::invalid(
                    "tool_choice `required` needs `tools`",
                ))
            }
            other => {
                return Err(ServiceError::invalid(format!(
                    "tool_choice `{other}` is not none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}"
                )))
            }
        },
        Some(ToolChoice::Named(n)) => {
            if n.kind != "function" || !tools.iter().any(|t| t.function.name == n.function.name) {
                return Err(ServiceError::invalid(format!(
                    "tool_choice names function `{}`, which is not among `tools`",
                    n.function.name
                )));
            }
        }
    }
    if req.logprobs.is_some_and(|n| n > 20) {
        return Err(ServiceError::invalid(
            "logprobs (alternatives per token) must be between 0 and 20",
        ));
    }
    for (k, v) in req.logit_bias.iter().flatten() {
        if k.is_empty() || !v.is_finite() || !(-100.0..=100.0).contains(v) {
            return Err(ServiceError::invalid(format!(
                "logit_bias[{k:?}] = {v}: each bias must be between -100 and 100 for a token id"
            )));
        }
    }
    for (name, v) in [
        ("frequency_penalty", req.frequency_penalty),
        ("presence_penalty", req.presence_penalty),
    ] {
        if v.is_some_and(|x| !x.is_finite() || !(-2.0..=2.0).contains(&x)) {
            return Err(ServiceError::invalid(format!(
                "{name} must be between -2 and 2"
            )));
        }
    }
    if let Some(ResponseFormat::JsonSchema { json_schema }) = &req.response_format {
        if json_schema.schema.as_ref().is_some_and(|s| !s.is_object()) {
            return Err(ServiceError::invalid(
                "response_format.json_schema.schema must be a JSON schema object",
            ));
        }
    }
    Ok(())
}

/// What the request asks for beyond text that an engine's adapter cannot do.
fn unsupported_extras(engine: &str, req: &TaskRequest) -> Vec<&'static str> {
    if !matches!(engine, "tgi" | "triton") {
        return Vec::new();
    }
    let mut v = Vec::new();
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        v.push("tools");
    }
    if req
        .messages
        .iter()
        .flatten()
        .any(|m| m.role == "tool" || m.tool_calls.is_some())
    {
        v.push("tool messages");
    }
    if req
        .response_format
        .as_ref()
        .is_some_and(|f| !matches!(f, ResponseFormat::Text))
    {
        v.push("response_format");
    }
    if req.logprobs.is_some() {
        v.push("logprobs");
    }
    if req.logit_bias.as_ref().is_some_and(|b| !b.is_empty()) {
        v.push("logit_bias");
    }
    if engine == "tgi" && req.presence_penalty.is_some_and(|p| p != 0.0) {
        v.push("presence_penalty");
    }
    v
}

/// Checks a request against the pool it was routed to (what its engine can do, context and
/// `max_tokens`).
pub fn check_limits(pool: &Pool, req: &TaskRequest) -> Result<(), ServiceError> {
    let missing = unsupported_extras(pool.engine(), req);
    if !missing.is_empty() {
        return Err(ServiceError::invalid(format!(
            "pool '{}' runs engine {}, whose adapter does not support {}; use a llamacpp, vllm or openai pool",
            pool.id(),
            pool.engine(),
            missing.join(", ")
        )));
    }
    let ctx_max = pool.ctx_per_slot();
    if let Some(c) = req.ctx {
        if c > ctx_max {
            return Err(ServiceError::invalid(format!(
                "ctx {c} exceeds pool '{}''s {ctx_max} tokens per slot; lower ctx or raise the pool's ctx",
                pool.id()
            )));
        }
    }
    let limit = req.ctx.unwrap_or(ctx_max);
    if req.max_tokens > limit {
        return Err(ServiceError::invalid(format!(
            "max_tokens {} exceeds the context of {limit} tokens (pool '{}'); lower max_tokens",
            req.max_tokens,
            pool.id()
        )));
    }
    Ok(())
}
