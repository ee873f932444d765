//! The agent doors' rules (docs/AGENTS.md): model names no pool serves go through
//! `model_aliases`; `max_tokens` is clamped to what the prompt leaves of a slot's context, as
//! llama-server does (agents send their own model's maximum); a prompt that fills the context
//! is refused before it is queued, with the numbers and the pools that would hold it. The
//! native `POST /v1/tasks` keeps refusing a `max_tokens` over the context instead.
//!
//! Counting a prompt's tokens takes the engine's template and tokenizer (two loopback calls),
//! so it is done only when a cheap bound says the prompt might not fit; the bound also serves
//! the clamp when the prompt surely fits.

use orch_api_types::{ChatMessage, ErrorCode, TaskRequest, Workload};
use orch_core::{alias_for, context_fit, ContextFit};
use orch_pool_manager::Pool;

use super::Admission;
use crate::engine_io::generate_request;
use crate::error::ServiceError;

/// Tokens a chat template adds per message (role markers, separators) at most, in the bound.
const PER_MESSAGE: u32 = 16;
/// Tokens a template adds around the whole conversation at most (BOS, generation prompt).
const PER_PROMPT: u32 = 32;

/// What the context rules did to an admitted request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextNote {
    /// The prompt's tokens, when they were counted.
    pub prompt_tokens: Option<u32>,
    /// The requested `max_tokens`, when it was clamped.
    pub clamped_from: Option<u32>,
    /// `max_tokens` as admitted.
    pub max_tokens: u32,
}

/// A prompt's token count, exact (the engine's tokenizer) or an upper bound (no engine of the
/// model was ready).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenCount {
    /// Tokens.
    pub tokens: u32,
    /// Counted by the engine, not bounded.
    pub exact: bool,
}

/// `model_ref` through `model_aliases`, unless a pool or the catalog serves it as it is.
pub fn resolve_alias(state: &Admission, req: &mut TaskRequest) {
    let aliases = &state.config.model_aliases;
    if aliases.is_empty()
        || state.pools.pools().iter().any(|p| p.serves(&req.model_ref))
        || state.catalog.cached(&req.model_ref).is_some()
    {
        return;
    }
    if let Some(to) = alias_for(
        &req.model_ref,
        aliases.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ) {
        tracing::debug!(from = %req.model_ref, to, "model alias");
        req.model_ref = to.to_owned();
    }
}

/// An upper bound of the prompt's tokens without a tokenizer: a token is at least one byte of
/// text, and templates add a bounded number of tokens per message.
pub fn prompt_upper_bound(req: &TaskRequest) -> u32 {
    let bytes = |s: &str| u32::try_from(s.len()).unwrap_or(u32::MAX);
    let message = |m: &ChatMessage| {
        let calls = m.tool_calls.as_ref().map_or(0, |c| {
            c.iter().fold(0u32, |n, c| {
                n.saturating_add(bytes(&c.function.name))
                    .saturating_add(bytes(&c.function.arguments))
                    .saturating_add(PER_MESSAGE)
            })
        });
        bytes(&m.content)
            .saturating_add(calls)
            .saturating_add(PER_MESSAGE)
    };
    let text = match req.workload {
        Workload::Chat => req
            .messages
            .iter()
            .flatten()
            .fold(0u32, |n, m| n.saturating_add(message(m))),
        _ => req.prompt.as_deref().map_or(0, bytes),
    };
    let tools = req.tools.as_ref().map_or(0, |t| {
        serde_json::to_string(t).map_or(u32::MAX, |s| bytes(&s))
    });
    text.saturating_add(tools).saturating_add(PER_PROMPT)
}

/// The prompt's tokens by the engine of a ready replica of `pool`; `None` when none is ready
/// or its engine cannot count.
async fn count_on(pool: &Pool, req: &TaskRequest) -> Option<u32> {
    let adapter = pool
        .replicas()
        .into_iter()
        .filter(|r| r.status.state == orch_pool_manager::ReplicaState::Ready)
        .find_map(|r| r.adapter)?;
    match adapter.count_tokens(&generate_request(req, None)).await {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::debug!(pool_id = %pool.id(), error = %e, "cannot count the prompt's tokens");
            None
        }
    }
}

/// The prompt's tokens on `pool`: exact when a cheap bound says it might not fit (or `exact`
/// is asked for) and an engine is ready; the bound otherwise.
pub async fn prompt_tokens(pool: &Pool, req: &TaskRequest, exact: bool) -> TokenCount {
    let bound = prompt_upper_bound(req);
    if exact || bound >= req.ctx.unwrap_or(pool.ctx_per_slot()) {
        if let Some(tokens) = count_on(pool, req).await {
            return TokenCount {
                tokens,
                exact: true,
            };
        }
    }
    TokenCount {
        tokens: bound,
        exact: false,
    }
}

/// Fits an agent door's request into `pool`'s context: clamps `max_tokens`, or refuses a
/// prompt that fills the context (only on an exact count: a bound never refuses).
pub async fn fit(
    state: &Admission,
    pool: &Pool,
    req: &mut TaskRequest,
) -> Result<ContextNote, ServiceError> {
    let limit = req.ctx.unwrap_or(pool.ctx_per_slot());
    let count = prompt_tokens(pool, req, false).await;
    match context_fit(req.max_tokens, limit, count.tokens) {
        ContextFit::Fits {
            max_tokens,
            clamped_from,
        } => {
            req.max_tokens = max_tokens;
            Ok(ContextNote {
                prompt_tokens: count.exact.then_some(count.tokens),
                clamped_from,
                max_tokens,
            })
        }
        // Not counted (no engine ready): the engine decides when it reads the prompt.
        ContextFit::TooLong if !count.exact => {
            let clamped_from = (req.max_tokens > limit).then_some(req.max_tokens);
            req.max_tokens = req.max_tokens.min(limit);
            Ok(ContextNote {
                prompt_tokens: None,
                clamped_from,
                max_tokens: req.max_tokens,
            })
        }
        ContextFit::TooLong => Err(too_long(state, pool, count.tokens, limit)),
    }
}

/// The refusal of a prompt of `tokens` that fills `pool`'s `limit`, naming the pools whose
/// slots would hold it.
fn too_long(state: &Admission, pool: &Pool, tokens: u32, limit: u32) -> ServiceError {
    let mut roomy: Vec<String> = state
        .pools
        .pools()
        .iter()
        .filter(|p| p.id() != pool.id() && p.ctx_per_slot() > tokens)
        .map(|p| {
            format!(
                "{} ({}, {} tokens per slot)",
                p.id(),
                p.model_names().last().cloned().unwrap_or_default(),
                p.ctx_per_slot()
            )
        })
        .collect();
    roomy.sort();
    let fix = if roomy.is_empty() {
        format!(
            "no pool has room for it: raise pool '{}''s ctx (or lower its slots: ctx is shared between them) or shorten the prompt",
            pool.id()
        )
    } else {
        format!("pools that would hold it: {}", roomy.join(", "))
    };
    ServiceError::new(
        ErrorCode::InvalidParams,
        format!(
            "the prompt is {tokens} tokens but pool '{}' holds {limit} tokens per slot, with no room left to answer; {fix}",
            pool.id()
        ),
    )
}

/// The prompt tokens of `req` as the pool it routes to would count them (the doors'
/// `count_tokens` / `input_tokens`): exact from a ready engine of the pool, else an upper
/// bound (`exact: false`).
pub async fn count(state: &Admission, mut req: TaskRequest) -> Result<TokenCount, ServiceError> {
    resolve_alias(state, &mut req);
    let catalog_path = state.catalog.route(&req.model_ref, &state.pools)?;
    let disp = super::route(state, &req, catalog_path.as_deref())?;
    Ok(prompt_tokens(disp.pool(), &req, true).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_above_the_text() {
        let req: TaskRequest = serde_json::from_value(serde_json::json!({
            "task_id": "t", "model_ref": "m", "priority": "interactive", "max_tokens": 4,
            "workload": "chat", "messages": [{"role": "system", "content": "be brief"},
                {"role": "user", "content": "héllo"}]
        }))
        .unwrap();
        let b = prompt_upper_bound(&req);
        assert_eq!(b, 8 + 6 + 2 * PER_MESSAGE + PER_PROMPT);
    }
}
