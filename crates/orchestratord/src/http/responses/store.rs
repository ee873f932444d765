//! Stored responses (`orch_store::Responses`, the `responses` table): what `store: true`
//! keeps, what `previous_response_id` continues, what `GET`/`DELETE /v1/responses/{id}` read
//! and remove. Bounded by `responses.retention_s` and `responses.max_stored` at each write;
//! an expired one is not found even before it is pruned.

use axum::http::StatusCode;
use orch_api_types::responses::ResponseObject;
use orch_api_types::ChatMessage;
use orch_store::StoredResponse;

use crate::http::openai::OaiError;
use crate::state::AppState;
use crate::storage::{blocking, store_err};

/// The oldest `created_ms` still kept.
fn cutoff(state: &AppState) -> u64 {
    let keep_ms = state.config.responses.retention_s.saturating_mul(1000);
    crate::clock::now_ms().saturating_sub(keep_ms)
}

/// 404 in OpenAI's shape for the response `id`.
pub fn not_found(id: &str) -> OaiError {
    OaiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no stored response `{id}`: it was not stored (`store: false`), was deleted, or is older than responses.retention_s"
        ),
    )
}

/// The stored response `id`.
pub async fn get(state: &AppState, id: &str) -> Result<Option<StoredResponse>, OaiError> {
    let (store, id, since) = (state.store.clone(), id.to_owned(), cutoff(state));
    Ok(blocking(move || store.responses().get(&id, since).map_err(store_err)).await?)
}

/// The conversation the stored response `id` ends (its input and its reply).
pub async fn history(state: &AppState, id: &str) -> Result<Vec<ChatMessage>, OaiError> {
    let Some(r) = get(state, id).await? else {
        return Err(OaiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "previous_response_id `{id}` names no stored response: it was not stored (`store: false`), was deleted, or is older than responses.retention_s"
            ),
        ));
    };
    serde_json::from_str(&r.history).map_err(|e| {
        OaiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the stored response `{id}` cannot be read: {e}"),
        )
    })
}

/// Stores `obj` and the conversation it ends (`history`), then prunes; does nothing when
/// `responses.max_stored` is 0. A failure is logged: the client has its reply.
pub async fn save(state: &AppState, obj: &ResponseObject, history: &[ChatMessage]) {
    let max = state.config.responses.max_stored;
    if !obj.store || max == 0 {
        return;
    }
    let (Ok(response), Ok(history)) = (serde_json::to_string(obj), serde_json::to_string(history))
    else {
        tracing::error!(id = %obj.id, "cannot serialize a response to store it");
        return;
    };
    let rec = StoredResponse {
        id: obj.id.clone(),
        created_ms: crate::clock::now_ms(),
        response,
        history,
    };
    let (store, since) = (state.store.clone(), cutoff(state));
    let r = blocking(move || {
        let r = store.responses();
        r.put(&rec).map_err(store_err)?;
        r.prune(since, max).map_err(store_err)
    })
    .await;
    match r {
        Ok(n) if n > 0 => tracing::debug!(pruned = n, "stored responses pruned"),
        Ok(_) => {}
        Err(e) => tracing::error!(id = %obj.id, error = %e.body.message, "cannot store a response"),
    }
}

/// Deletes the stored response `id`; whether it was there.
pub async fn delete(state: &AppState, id: &str) -> Result<bool, OaiError> {
    let (store, id) = (state.store.clone(), id.to_owned());
    Ok(blocking(move || store.responses().delete(&id).map_err(store_err)).await?)
}
