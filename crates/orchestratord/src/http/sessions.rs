//! `GET /v1/sessions/{id}` and `DELETE /v1/sessions/{id}` (docs/STATE.md, "Sessions").

use axum::extract::{Path, State};
use axum::Json;
use orch_api_types::{
    BudgetRemaining, BudgetSpec, ErrorEnvelope, SessionEvicted, SessionInfo, SessionSpend,
};

use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::state::AppState;
use crate::storage::{blocking, store_err};

/// A live session: TTL left, turns, KV bytes and warmth, budget left.
#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses(
        (status = 200, body = SessionInfo),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, description = "Unknown, evicted or expired session", body = ErrorEnvelope),
    ))]
pub async fn get_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionInfo>, ServiceError> {
    state.sessions.wait_settled(&id).await;
    let store = state.store.clone();
    let now = now_ms();
    let sid = id.clone();
    let s = blocking(move || store.sessions().get(&sid, now).map_err(store_err)).await?;
    Ok(Json(SessionInfo {
        session_id: s.id.clone(),
        ttl_ms_remaining: s.ttl_ms_remaining(now),
        turns: s.turns,
        max_turns: s.max_turns,
        kv_bytes: s.kv_bytes,
        kv_warmth: state.sessions.warmth(&id),
        budget_remaining: s.budget_remaining().map(|r| BudgetRemaining {
            tokens: r.tokens,
            time_ms: r.time_ms,
            cost: r.cost,
        }),
        budget: s.budget.map(|b| BudgetSpec {
            tokens: b.tokens,
            time_ms: b.time_ms,
            cost: b.cost,
        }),
        spent: SessionSpend {
            tokens: s.spent.tokens,
            time_ms: s.spent.time_ms,
            cost: s.spent.cost,
        },
        replica_id: s.replica_id,
        slot: s.slot,
        created_ms: s.created_ms,
        last_used_ms: s.last_used_ms,
    }))
}

/// Evict a session now and free the engine slot holding its KV (llama-server slot erase).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "sessions",
    params(("id" = String, Path, description = "session id")),
    responses(
        (status = 200, body = SessionEvicted),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, description = "Unknown session", body = ErrorEnvelope),
    ))]
pub async fn evict(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<SessionEvicted>, ServiceError> {
    Ok(Json(state.sessions.evict(&state.pools, &id).await?))
}
