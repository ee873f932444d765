//! Validation of task requests: each rule with its actionable message.

use orch_api_types::{Determinism, ResponseFormat, TaskRequest, ToolChoice, Workload};
use orch_pool_manager::Pool;

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
    validate_scoring(req)?;
    match req.workload {
        Workload::Embedding | Workload::Rerank => {
            if req.prompt.is_some() || req.messages.is_some() {
                return Err(ServiceError::invalid(format!(
                    "`prompt` and `messages` belong to generation tasks; an `{}` task takes {}",
                    req.workload.as_str(),
                    if req.workload == Workload::Embedding {
                        "`input`"
                    } else {
                        "`query` and `documents`"
                    }
                )));
            }
        }
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

/// Most inputs of one `embedding` task and documents of one `rerank` task (OpenAI's limit for
/// one embeddings request).
pub const MAX_SCORING_ITEMS: usize = 2048;

/// The fields of `embedding` and `rerank` tasks: present exactly where they belong.
fn validate_scoring(req: &TaskRequest) -> Result<(), ServiceError> {
    let embedding = req.workload == Workload::Embedding;
    let rerank = req.workload == Workload::Rerank;
    if req.input.is_some() && !embedding {
        return Err(ServiceError::invalid(
            "`input` belongs to `embedding` tasks; set workload: embedding",
        ));
    }
    if (req.query.is_some() || req.documents.is_some() || req.top_n.is_some()) && !rerank {
        return Err(ServiceError::invalid(
            "`query`, `documents` and `top_n` belong to `rerank` tasks; set workload: rerank",
        ));
    }
    if !(embedding || rerank) {
        return Ok(());
    }
    if req.session_id.is_some() {
        return Err(ServiceError::invalid(format!(
            "an `{}` task takes no session: sessions keep a generation's KV cache and budget; leave out session_id",
            req.workload.as_str()
        )));
    }
    let (name, items) = if embedding {
        ("input", req.input.as_deref())
    } else {
        if req.query.as_deref().is_none_or(str::is_empty) {
            return Err(ServiceError::invalid(
                "a `rerank` task needs a non-empty `query`",
            ));
        }
        if req.top_n == Some(0) {
            return Err(ServiceError::invalid("top_n must be at least 1"));
        }
        ("documents", req.documents.as_deref())
    };
    let items = items.unwrap_or_default();
    if items.is_empty() || items.len() > MAX_SCORING_ITEMS {
        return Err(ServiceError::invalid(format!(
            "an `{}` task needs `{name}`: 1 to {MAX_SCORING_ITEMS} strings (got {})",
            req.workload.as_str(),
            items.len()
        )));
    }
    if embedding {
        if let Some(i) = items.iter().position(String::is_empty) {
            return Err(ServiceError::invalid(format!(
                "input[{i}] is empty; an embedding needs some text"
            )));
        }
    }
    Ok(())
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
        if let Some(c) = m.tool_calls.iter().flatten().find(|c| c.kind != "function") {
            return Err(ServiceError::invalid(format!(
                "messages[{i}].tool_calls: type `{}` is not `function`, the only kind of tool call",
                c.kind
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
        if t.function
            .parameters
            .as_ref()
            .is_some_and(|p| !p.is_object())
        {
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
        Some(ToolChoice::Named(n))
            if n.kind != "function" || !tools.iter().any(|t| t.function.name == n.function.name) =>
        {
            return Err(ServiceError::invalid(format!(
                "tool_choice names function `{}`, which is not among `tools`",
                n.function.name
            )));
        }
        Some(ToolChoice::Named(_)) => {}
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
    if engine == "llamacpp" {
        // A chat that may call tools streams from llama-server's /v1/chat/completions, which
        // refuses `logprobs` with tools when streaming.
        let calls = req.tools.as_ref().is_some_and(|t| !t.is_empty())
            && req
                .tool_choice
                .as_ref()
                .is_none_or(ToolChoice::allows_calls);
        return if calls && req.logprobs.is_some() {
            vec!["logprobs together with tools"]
        } else {
            Vec::new()
        };
    }
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

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    fn chat(extra: Value) -> TaskRequest {
        let mut b = json!({"task_id": "t", "model_ref": "m", "priority": "interactive",
            "max_tokens": 4, "workload": "chat", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().into_iter().flatten() {
            b[k] = v.clone();
        }
        serde_json::from_value(b).unwrap()
    }

    fn refused(extra: Value, want: &str) {
        let e = validate(&chat(extra.clone())).unwrap_err();
        assert!(e.body.message.contains(want), "{extra}: {}", e.body.message);
    }

    #[test]
    fn roles_tools_and_bounds() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather"}}]);
        validate(&chat(
            json!({"tools": tools, "tool_choice": "auto", "parallel_tool_calls": true,
            "logprobs": 20, "logit_bias": {"25380": 100.0}, "frequency_penalty": -2.0,
            "response_format": {"type": "json_object"},
            "messages": [{"role": "user", "content": "w?"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "sunny"}]}),
        ))
        .unwrap();
        // Clients that always send these without tools.
        validate(&chat(json!({"tool_choice": "none"}))).unwrap();
        refused(
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role `wizard`",
        );
        refused(
            json!({"messages": [{"role": "tool", "content": "x"}]}),
            "needs `tool_call_id`",
        );
        refused(
            json!({"messages": [{"role": "user", "content": "x", "tool_calls": []}]}),
            "only assistant messages",
        );
        refused(json!({"tool_choice": "required"}), "needs `tools`");
        refused(
            json!({"tools": tools, "tool_choice": "always"}),
            "tool_choice `always`",
        );
        refused(
            json!({"tools": tools, "tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "not among `tools`",
        );
        refused(
            json!({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}),
            "only `function` tools",
        );
        refused(
            json!({"tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tools[0].function.name",
        );
        refused(json!({"logprobs": 21}), "between 0 and 20");
        refused(json!({"logit_bias": {"1": 101.0}}), "between -100 and 100");
        refused(json!({"presence_penalty": 3.0}), "presence_penalty");
        refused(
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": 3}}}),
            "schema object",
        );
        let text: TaskRequest = serde_json::from_value(json!({"task_id": "t", "model_ref": "m",
            "priority": "interactive", "max_tokens": 4, "prompt": "x", "tools": tools}))
        .unwrap();
        assert!(validate(&text)
            .unwrap_err()
            .body
            .message
            .contains("belong to `chat`"));
    }

    #[test]
    fn engines_without_the_features_are_named() {
        let r = chat(json!({"logprobs": 1,
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "response_format": {"type": "json_object"}, "presence_penalty": 0.5}));
        assert_eq!(
            unsupported_extras("tgi", &r),
            ["tools", "response_format", "logprobs", "presence_penalty"]
        );
        assert_eq!(
            unsupported_extras("triton", &r),
            ["tools", "response_format", "logprobs"]
        );
        for ok in ["vllm", "openai"] {
            assert!(unsupported_extras(ok, &r).is_empty(), "{ok}");
        }
        assert_eq!(
            unsupported_extras("llamacpp", &r),
            ["logprobs together with tools"]
        );
        let none = chat(json!({"logprobs": 1, "tool_choice": "none",
            "tools": [{"type": "function", "function": {"name": "f"}}]}));
        assert!(unsupported_extras("llamacpp", &none).is_empty());
        let text = chat(json!({"response_format": {"type": "text"}}));
        assert!(unsupported_extras("tgi", &text).is_empty());
    }

    #[test]
    fn embedding_and_rerank_fields_belong_to_their_workloads() {
        let task = |v: Value| -> TaskRequest {
            let mut b =
                json!({"task_id": "t", "model_ref": "m", "priority": "batch", "max_tokens": 1});
            for (k, x) in v.as_object().into_iter().flatten() {
                b[k] = x.clone();
            }
            serde_json::from_value(b).unwrap()
        };
        let ok = |v: Value| validate(&task(v)).unwrap();
        let no = |v: Value, want: &str| {
            let m = validate(&task(v)).unwrap_err().body.message;
            assert!(m.contains(want), "{m}");
        };
        ok(json!({"workload": "embedding", "input": ["a", "b"]}));
        ok(json!({"workload": "rerank", "query": "q", "documents": ["d"], "top_n": 1}));
        no(json!({"workload": "embedding"}), "needs `input`: 1 to 2048");
        no(json!({"workload": "embedding", "input": []}), "(got 0)");
        no(
            json!({"workload": "embedding", "input": ["a", ""]}),
            "input[1] is empty",
        );
        no(
            json!({"workload": "embedding", "input": ["a"], "prompt": "x"}),
            "takes `input`",
        );
        no(
            json!({"workload": "embedding", "input": ["a"], "session_id": "s"}),
            "takes no session",
        );
        no(
            json!({"workload": "rerank", "documents": ["d"]}),
            "non-empty `query`",
        );
        no(
            json!({"workload": "rerank", "query": "q"}),
            "needs `documents`",
        );
        no(
            json!({"workload": "rerank", "query": "q", "documents": ["d"], "top_n": 0}),
            "top_n",
        );
        no(
            json!({"prompt": "x", "input": ["a"]}),
            "belongs to `embedding`",
        );
        no(
            json!({"workload": "embedding", "input": ["a"], "query": "q"}),
            "belong to `rerank`",
        );
    }
}
