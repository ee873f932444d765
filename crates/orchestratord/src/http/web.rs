//! The status page (`GET /`, assets under `/ui/…`, embedded in the binary) and the status
//! data it shows: `GET /v1/status` (one snapshot) and `GET /v1/status/stream` (SSE, one
//! `status` event per second). The page and its assets are public (they hold no data); the
//! two data endpoints need the token like every other `/v1` route (docs/DECISIONS.md, "Auth").

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use api_types::{
    GpuStatus, PoolStatus, Priority, QueueDepths, ReplicaSummary, StatusSnapshot, TaskState,
};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use axum::Json;
use futures::Stream;
use serde::Deserialize;

use crate::app::AppState;
use crate::error::ServiceError;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// How often `/v1/status/stream` sends a snapshot.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Recent tasks in a snapshot unless `?recent=` says otherwise (at most 200).
pub const DEFAULT_RECENT: usize = 20;
/// Most recent tasks a snapshot may ask for; more is a 400.
pub const MAX_RECENT: usize = 200;

/// `recent` of a status query, within its bounds.
fn recent_of(q: &StatusQuery) -> Result<usize, ServiceError> {
    match q.recent {
        Some(n) if n > MAX_RECENT => Err(ServiceError::invalid(format!(
            "recent={n} is too large; at most {MAX_RECENT}"
        ))),
        n => Ok(n.unwrap_or(DEFAULT_RECENT)),
    }
}

/// The status page.
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// A static asset of the page.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (ty, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => {
            return ServiceError::not_found(format!("no asset /ui/{file}")).into_response();
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `?recent=N`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Recent tasks to include (default 20, at most 200).
    pub recent: Option<usize>,
}

/// Builds a snapshot of the whole daemon.
pub fn snapshot(state: &AppState, recent: usize) -> StatusSnapshot {
    // Queue depth per pool and priority, and running tasks, from the task registry.
    let mut per_pool: HashMap<String, QueueDepths> = HashMap::new();
    for t in state.tasks.active() {
        let q = per_pool.entry(t.pool_id.clone()).or_default();
        match (t.state(), t.priority()) {
            (TaskState::Queued, Priority::Interactive) => q.interactive += 1,
            (TaskState::Queued, Priority::Batch) => q.batch += 1,
            (TaskState::Running, _) => q.running += 1,
            _ => {}
        }
    }
    let mut total = QueueDepths::default();
    let pools: Vec<PoolStatus> = state
        .pools
        .pools()
        .iter()
        .map(|p| {
            let h = p.health();
            let q = per_pool.get(p.id()).copied().unwrap_or_default();
            total.interactive += q.interactive;
            total.batch += q.batch;
            total.running += q.running;
            PoolStatus {
                id: p.id().to_owned(),
                engine: p.engine().to_owned(),
                engine_version: p.engine_version(),
                model: p.config().model.clone(),
                ready: h.ready,
                draining: h.draining,
                queue: q,
                queue_capacity: p
                    .config()
                    .queue_capacity
                    .unwrap_or(state.config.queue.capacity),
                slots_ready: p.ready_slots(),
                load_state: p.load_phase().map(|l| l.as_str().to_owned()),
                last_error: h.last_error,
                replicas: h
                    .replicas
                    .into_iter()
                    .map(|r| ReplicaSummary {
                        id: r.id,
                        state: serde_json::to_value(r.state)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        device: r.device,
                        endpoint: r.endpoint,
                        pid: r.pid,
                        restarts: r.restarts,
                        slots: r.slots,
                        last_error: r.last_error,
                    })
                    .collect(),
            }
        })
        .collect();
    let gpus = state
        .pools
        .gpus()
        .into_iter()
        .map(|g| GpuStatus {
            index: g.index,
            name: g.name,
            uuid: g.uuid,
            utilization_pct: g.utilization_pct,
            vram_total_bytes: g.total_bytes,
            vram_used_bytes: g.used_bytes,
            vram_free_bytes: g.free_bytes,
        })
        .collect();
    StatusSnapshot {
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        time_ms: crate::task::now_ms(),
        gpu_mode: state.pools.gpu_mode().describe(),
        shutting_down: state.is_shutting_down(),
        queue: total,
        gpus,
        pools,
        tasks: state
            .tasks
            .recent(recent.min(200))
            .iter()
            .map(|t| t.status())
            .collect(),
    }
}

/// The daemon at a glance: queue per priority, GPUs, pools and replicas, recent tasks.
#[utoipa::path(get, path = "/v1/status", params(StatusQuery),
    responses((status = 200, body = StatusSnapshot), (status = 400, description = "Bad query", body = api_types::ErrorEnvelope),
        (status = 401, body = api_types::ErrorEnvelope)))]
pub async fn status(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusSnapshot>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    tokio::task::spawn_blocking(move || snapshot(&state, recent))
        .await
        .map(Json)
        .map_err(|e| {
            ServiceError::new(
                api_types::ErrorCode::Internal,
                format!("status snapshot failed: {e}"),
            )
        })
}

/// The same snapshot as `GET /v1/status`, as one SSE `status` event per second.
#[utoipa::path(get, path = "/v1/status/stream", params(StatusQuery),
    responses((status = 200, description = "`text/event-stream` of `status` events, each a StatusSnapshot", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = api_types::ErrorEnvelope),
        (status = 401, body = api_types::ErrorEnvelope)))]
pub async fn status_stream(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    let s = futures::stream::unfold((state, true), move |(state, first)| async move {
        if !first {
            tokio::time::sleep(STATUS_EVERY).await;
        }
        let st = state.clone();
        let snap = tokio::task::spawn_blocking(move || snapshot(&st, recent))
            .await
            .ok()?;
        let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
        Some((
            Ok(Event::default().event("status").data(data)),
            (state, false),
        ))
    });
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// A bad query string as the error envelope (axum's rejection is plain text and undocumented;
/// found by the chaos schema fuzzing).
fn bad_query(e: QueryRejection) -> ServiceError {
    ServiceError::invalid(format!("bad query: {}", e.body_text()))
}
