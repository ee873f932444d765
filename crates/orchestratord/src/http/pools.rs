//! `POST /v1/pools/{id}/drain` and `POST /v1/pools/{id}/reload`: the pool control plane.
//!
//! Drain: the pool stops admitting at once (503 `POOL_UNAVAILABLE` naming the drain); queued
//! and running tasks go on until `deadline_ms`, then what is left ends with `CANCELED`. The
//! pool stays drained until `POST …/drain {"resume": true}` or a successful reload.
//!
//! Reload: see `pool_manager::PoolManager::reload` — new replicas beside the old, health
//! check, swap, retire the old after their in-flight tasks; any failure rolls back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::{ErrorCode, ErrorEnvelope};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use pool_manager::{Pool, ReloadErrorKind, ReloadOptions};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::app::AppState;
use crate::error::ApiError;
use crate::http::JsonBody;
use crate::task::now_ms;

/// Default drain deadline.
const DEFAULT_DRAIN_MS: u64 = 30_000;
/// Longest drain deadline accepted (a day).
const MAX_DRAIN_MS: u64 = 86_400_000;
/// Default time retiring replicas get to finish their tasks after a reload.
const DEFAULT_RELOAD_GRACE_MS: u64 = 60_000;
/// After canceling at the deadline, how long runners get to end their tasks themselves.
const CANCEL_SETTLE: Duration = Duration::from_secs(3);

/// Body of `POST /v1/pools/{id}/drain`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Milliseconds from now that queued and running tasks get to finish; what is left then
    /// ends with `CANCELED`. Default 30000, at most 86400000. `0` cancels at once.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// `true` ends a drain: the pool admits work again. Nothing else is changed.
    #[serde(default)]
    pub resume: bool,
}

/// Answer of `POST /v1/pools/{id}/drain`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DrainResponse {
    /// The pool.
    pub pool_id: String,
    /// Whether the pool now refuses new work.
    pub draining: bool,
    /// When what is left gets canceled (ms since the Unix epoch); absent after a resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// Tasks waiting in the pool's queue now.
    pub queued: usize,
    /// Tasks running on the pool now.
    pub running: usize,
}

fn find_pool(state: &AppState, id: &str) -> Result<Arc<Pool>, ApiError> {
    state
        .pools
        .pool(id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no pool `{id}`; GET /v1/pools lists them")))
}

fn refuse_while_shutting_down(state: &AppState) -> Result<(), ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::from_envelope(
            ErrorEnvelope::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
                .retry_after(5000),
        ));
    }
    Ok(())
}

/// Stop admitting work to a pool, finish or cancel what it has by a deadline; or resume it.
#[utoipa::path(post, path = "/v1/pools/{id}/drain", params(("id" = String, Path, description = "pool id")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Draining: new tasks get 503 POOL_UNAVAILABLE; what is left at the deadline is canceled", body = DrainResponse),
        (status = 200, description = "Resumed (`resume: true`)", body = DrainResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<JsonBody<DrainRequest>, ApiError>,
) -> Result<(StatusCode, Json<DrainResponse>), ApiError> {
    let JsonBody(req) = body?;
    let pool = find_pool(&state, &id)?;
    let (queued, running) = state
        .dispatchers
        .get(&id)
        .map(|d| (d.depth(), d.running()))
        .unwrap_or((0, 0));
    if req.resume {
        if req.deadline_ms.is_some() {
            return Err(ApiError::invalid(
                "send either `resume: true` or `deadline_ms`, not both",
            ));
        }
        pool.resume();
        return Ok((
            StatusCode::OK,
            Json(DrainResponse {
                pool_id: id,
                draining: false,
                deadline_at_ms: None,
                queued,
                running,
            }),
        ));
    }
    refuse_while_shutting_down(&state)?;
    let ms = req.deadline_ms.unwrap_or(DEFAULT_DRAIN_MS);
    if ms > MAX_DRAIN_MS {
        return Err(ApiError::invalid(format!(
            "deadline_ms {ms} is too large; at most {MAX_DRAIN_MS} (a day)"
        )));
    }
    let deadline_at_ms = now_ms().saturating_add(ms);
    let epoch = pool.start_drain(Some(deadline_at_ms));
    tracing::info!(pool_id = %id, deadline_ms = ms, queued, running, "drain requested");
    tokio::spawn(enforce_drain(
        state.clone(),
        pool,
        epoch,
        Instant::now() + Duration::from_millis(ms),
        ms,
    ));
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainResponse {
            pool_id: id,
            draining: true,
            deadline_at_ms: Some(deadline_at_ms),
            queued,
            running,
        }),
    ))
}

/// Waits until the pool has nothing queued or running, or the deadline passes and then
/// cancels what is left. Steps aside as soon as the drain is resumed or replaced.
async fn enforce_drain(state: AppState, pool: Arc<Pool>, epoch: u64, deadline: Instant, ms: u64) {
    let id = pool.id().to_owned();
    let mine = |state: &AppState| {
        state
            .tasks
            .active()
            .into_iter()
            .filter(|t| t.pool_id == id)
            .collect::<Vec<_>>()
    };
    loop {
        if pool.drain_epoch() != epoch {
            return;
        }
        if mine(&state).is_empty() {
            tracing::info!(pool_id = %id, "drain complete: nothing queued or running");
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reason = || {
        ErrorEnvelope::new(
            ErrorCode::Canceled,
            format!(
                "pool '{id}' is drained and its {ms} ms deadline passed before this task finished; \
                 resubmit once the pool admits work again (POST /v1/pools/{id}/drain {{\"resume\": true}} or a reload)"
            ),
        )
        .with_engine(pool.engine())
    };
    let mut queued = 0usize;
    if let Some(d) = state.dispatchers.get(&id) {
        for t in d.drain_queue().await {
            if t.fail(reason()) {
                queued += 1;
                state.tasks.note_finished(&t.id);
                state
                    .metrics
                    .tasks_canceled
                    .get_or_create(&crate::metrics::ReplicaReason {
                        engine: t.engine.into(),
                        engine_version: pool.engine_version(),
                        pool_id: id.clone(),
                        replica_id: String::new(),
                        reason: ErrorCode::Canceled.as_str().into(),
                    })
                    .inc();
            }
        }
    }
    let running = mine(&state);
    for t in &running {
        t.request_cancel(reason());
    }
    tracing::warn!(pool_id = %id, deadline_ms = ms, canceled_queued = queued, canceled_running = running.len(), "drain deadline passed: canceling what is left");
    // Runners end their tasks on cancel (and abort the engine request); end any that did not.
    let settle = Instant::now() + CANCEL_SETTLE;
    while Instant::now() < settle && !mine(&state).is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in mine(&state) {
        t.fail(reason());
    }
}

/// Body of `POST /v1/pools/{id}/reload`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The model the pool should serve: a GGUF file path, or the id of an Active catalog model
    /// with a local path. Omitted: restart on the serving model (this also closes an open
    /// circuit breaker).
    #[serde(default)]
    pub new_model_ref: Option<String>,
    /// How long the replaced replicas may finish their in-flight tasks before they are
    /// stopped (those tasks then end with `WORKER_RESET`). Default 60000.
    #[serde(default)]
    pub grace_ms: Option<u64>,
}

/// Answer of a successful reload.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReloadResponse {
    /// The pool.
    pub pool_id: String,
    /// The generation now serving.
    pub generation: u64,
    /// The model it serves.
    pub model: String,
    /// The generation replaced; it retires in the background.
    pub previous_generation: u64,
    /// The model that generation served.
    pub previous_model: Option<String>,
    /// From the request to the switch: new replicas started, healthy and serving.
    pub took_ms: u64,
    /// The new replicas (as in `GET /v1/pools/{id}/health`).
    #[schema(value_type = Vec<Object>)]
    pub replicas: Vec<serde_json::Value>,
}

/// Maps a reload reference to a model file. A path that exists is used as is; otherwise an
/// Active catalog model with a local reference gives its path. This is the catalog hook: any
/// further resolution (downloads, digests) belongs here.
fn resolve_model_ref(state: &AppState, r: &str) -> Result<String, ApiError> {
    if std::path::Path::new(r).exists() {
        return Ok(r.to_owned());
    }
    let Some(m) = state.persist.cached_model(r) else {
        // Not a catalog id either: let the pool manager's file check say what is wrong.
        return Ok(r.to_owned());
    };
    if m.state == orch_store::ModelState::Retired {
        return Err(ApiError::new(
            ErrorCode::ModelRetired,
            format!(
                "catalog model `{r}` is Retired; set it Active (POST /v1/catalog/models/{r}/state) or reload to another model"
            ),
        ));
    }
    let reference = m.reference;
    if reference.to_ascii_lowercase().starts_with("file://") {
        return url::Url::parse(&reference)
            .ok()
            .and_then(|u| u.to_file_path().ok())
            .map(|p| p.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ApiError::invalid(format!("catalog model `{r}` has an unusable file URL"))
            });
    }
    let lower = reference.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ApiError::invalid(format!(
            "catalog model `{r}` refers to a URL; the daemon does not download models: download it and register its local path"
        )));
    }
    Ok(reference)
}

/// Switch a pool to another model without downtime, or roll back and keep the old serving.
#[utoipa::path(post, path = "/v1/pools/{id}/reload", params(("id" = String, Path, description = "pool id")),
    request_body = ReloadRequest,
    responses(
        (status = 200, description = "The new replicas serve; the old ones retire after their in-flight tasks", body = ReloadResponse),
        (status = 400, description = "Bad model reference or file (rolled back: the old model keeps serving)", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "A reload is already running, the pool is not launched by llama-orch, no room beside the old replicas, or a Retired catalog model (rolled back)", body = ErrorEnvelope),
        (status = 502, description = "The new engine failed to start or answer its health check (rolled back)", body = ErrorEnvelope),
    ))]
pub async fn reload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<JsonBody<ReloadRequest>, ApiError>,
) -> Result<Json<ReloadResponse>, ApiError> {
    let JsonBody(req) = body?;
    let pool = find_pool(&state, &id)?;
    refuse_while_shutting_down(&state)?;
    let model = match req.new_model_ref.as_deref().map(str::trim) {
        Some("") => return Err(ApiError::invalid("new_model_ref is empty; give a model file path or catalog id, or omit it to restart on the serving model")),
        Some(r) => Some(resolve_model_ref(&state, r)?),
        None => None,
    };
    let opts = ReloadOptions {
        model,
        retire_grace: Duration::from_millis(req.grace_ms.unwrap_or(DEFAULT_RELOAD_GRACE_MS)),
    };
    match state.pools.reload(&id, opts).await {
        Ok(rep) => {
            // A reload says "serve this now": it ends a drain.
            if pool.is_draining() {
                pool.resume();
            }
            Ok(Json(ReloadResponse {
                pool_id: rep.pool_id,
                generation: rep.generation,
                model: rep.model,
                previous_generation: rep.previous_generation,
                previous_model: rep.previous_model,
                took_ms: rep.took_ms,
                replicas: rep
                    .replicas
                    .iter()
                    .map(|r| serde_json::to_value(r).unwrap_or_default())
                    .collect(),
            }))
        }
        Err(e) => {
            let (code, retry) = match e.kind {
                ReloadErrorKind::UnknownPool => (ErrorCode::NotFound, None),
                ReloadErrorKind::BadModel => (ErrorCode::InvalidParams, None),
                ReloadErrorKind::Busy => (ErrorCode::Conflict, Some(2000)),
                ReloadErrorKind::NotLaunched | ReloadErrorKind::Unplaceable => {
                    (ErrorCode::Conflict, None)
                }
                ReloadErrorKind::StartFailed | ReloadErrorKind::Timeout => {
                    (ErrorCode::EngineError, None)
                }
                ReloadErrorKind::Internal => (ErrorCode::Internal, None),
            };
            let mut env = ErrorEnvelope::new(code, e.message).with_engine(pool.engine());
            if let Some(ms) = retry {
                env = env.retry_after(ms);
            }
            Err(ApiError::from_envelope(env))
        }
    }
}
