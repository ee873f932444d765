//! Validation of task requests: each rule with its actionable message.

use api_types::{Determinism, TaskRequest, Workload};
use pool_manager::Pool;

use crate::error::ServiceError;

/// A task id or similar: 1-128 of `A-Za-z0-9._:-`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

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
    if matches!(req.determinism, Some(Determinism::Strict)) && req.seed.is_none() {
        return Err(ServiceError::invalid("determinism `strict` needs a `seed`"));
    }
    for (name, v) in [("temperature", req.temperature), ("top_p", req.top_p)] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            return Err(ServiceError::invalid(format!(
                "{name} must be a finite number ≥ 0"
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
    Ok(())
}

/// Checks a request against the pool it was routed to (context and `max_tokens`).
pub fn check_limits(pool: &Pool, req: &TaskRequest) -> Result<(), ServiceError> {
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
