//! The status page (`GET /`, assets under `/ui/…`, embedded in the binary) and the status
//! data it shows: `GET /v1/status` (one snapshot) and `GET /v1/status/stream` (SSE, one
//! `status` event per second). The page and its assets are public (they hold no data); the
//! two data endpoints need the token like every other `/v1` route (docs/DECISIONS.md, "Auth").

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use orch_api_types::{
    GpuPoolUse, GpuStatus, PoolStatus, QueueDepths, ReplicaSummary, StatusSnapshot, TaskState,
    WaitingTask,
};

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

/// Waiting tasks a snapshot lists at most.
pub const MAX_WAITING: usize = 100;

/// What each pool's replicas hold per GPU index: the engine process's memory where NVML lists
/// its pid on the card, else placement's reservation for the replica there. `gpus`: each GPU's
/// index and the `(pid, bytes)` of the processes NVML lists on it.
fn vram_by_pool(
    state: &AppState,
    gpus: &[(u32, Vec<(u32, u64)>)],
) -> HashMap<u32, Vec<GpuPoolUse>> {
    let pools = state.pools.pools();
    // Replica id -> (pool id, engine pid), for the serving replicas.
    let mut replicas: HashMap<String, (String, Option<u32>)> = HashMap::new();
    for p in pools {
        for r in p.replicas() {
            replicas.insert(r.status.id.clone(), (p.id().to_owned(), r.status.pid));
        }
    }
    // A replica not serving (a reload's incoming or retiring one) is `<pool>-…`.
    let pool_of = |replica: &str| -> Option<String> {
        if let Some((pool, _)) = replicas.get(replica) {
            return Some(pool.clone());
        }
        pools
            .iter()
            .map(|p| p.id())
            .filter(|id| {
                replica.len() > id.len()
                    && replica.starts_with(id)
                    && replica.as_bytes().get(id.len()) == Some(&b'-')
            })
            .max_by_key(|id| id.len())
            .map(str::to_owned)
    };
    let mut out: HashMap<u32, Vec<GpuPoolUse>> = HashMap::new();
    for (index, processes) in gpus {
        let uses = out.entry(*index).or_default();
        for (replica, (pool, pid)) in &replicas {
            let Some((_, bytes)) = pid.and_then(|pid| processes.iter().find(|(p, _)| *p == pid))
            else {
                continue;
            };
            uses.push(GpuPoolUse {
                pool_id: pool.clone(),
                replica_id: replica.clone(),
                vram_bytes: *bytes,
                source: "measured".into(),
            });
        }
    }
    for (replica, index, bytes) in state.pools.vram_reservations() {
        let Some(uses) = out.get_mut(&index) else {
            continue;
        };
        if uses.iter().any(|u| u.replica_id == replica) {
            continue;
        }
        let Some(pool) = pool_of(&replica) else {
            continue;
        };
        uses.push(GpuPoolUse {
            pool_id: pool,
            replica_id: replica,
            vram_bytes: bytes,
            source: "reserved".into(),
        });
    }
    for uses in out.values_mut() {
        uses.sort_by(|a, b| {
            b.vram_bytes
                .cmp(&a.vram_bytes)
                .then_with(|| a.replica_id.cmp(&b.replica_id))
        });
    }
    out
}

/// Every waiting task, the soonest predicted start first (unknown predictions last, by queue
/// position), at most [`MAX_WAITING`].
fn waiting(state: &AppState) -> Vec<WaitingTask> {
    let mut w: Vec<WaitingTask> = state
        .tasks
        .active()
        .iter()
        .map(|t| t.status())
        .filter(|t| t.state == TaskState::Queued)
        .map(|t| WaitingTask {
            task_id: t.task_id,
            pool_id: t.pool_id,
            priority: t.priority,
            queue_position: t.queue_position,
            predicted_start_ms: t.predicted_start_ms,
            submitted_ms: t.submitted_ms,
        })
        .collect();
    w.sort_by_key(|t| {
        (
            t.predicted_start_ms.unwrap_or(u64::MAX),
            t.queue_position.unwrap_or(usize::MAX),
            t.submitted_ms,
        )
    });
    w.truncate(MAX_WAITING);
    w
}

/// Builds a snapshot of the whole daemon (without `history`: the handlers add the part of it
/// their reader has not seen).
pub fn snapshot(state: &AppState, recent: usize) -> StatusSnapshot {
    // Queue depth per pool and priority, and running tasks, from the task registry.
    let per_pool = crate::status_history::queue_by_pool(&state.tasks);
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
    let devices = state.pools.gpus();
    let processes: Vec<(u32, Vec<(u32, u64)>)> = devices
        .iter()
        .map(|d| {
            let p = d.processes.iter().map(|p| (p.pid, p.used_bytes)).collect();
            (d.index, p)
        })
        .collect();
    let mut by_pool = vram_by_pool(state, &processes);
    let gpus = devices
        .into_iter()
        .map(|g| GpuStatus {
            pools: by_pool.remove(&g.index).unwrap_or_default(),
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
        waiting: waiting(state),
        history: Vec::new(),
    }
}

/// The daemon at a glance: queue per priority, GPUs, pools and replicas, recent tasks.
#[utoipa::path(get, path = "/v1/status", params(StatusQuery),
    responses((status = 200, body = StatusSnapshot), (status = 400, description = "Bad query", body = orch_api_types::ErrorEnvelope),
        (status = 401, body = orch_api_types::ErrorEnvelope)))]
pub async fn status(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusSnapshot>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    tokio::task::spawn_blocking(move || {
        let mut snap = snapshot(&state, recent);
        snap.history = state.history.since(0).0;
        snap
    })
    .await
    .map(Json)
    .map_err(|e| {
        ServiceError::new(
            orch_api_types::ErrorCode::Internal,
            format!("status snapshot failed: {e}"),
        )
    })
}

/// The same snapshot as `GET /v1/status`, as one SSE `status` event per second.
#[utoipa::path(get, path = "/v1/status/stream", params(StatusQuery),
    responses((status = 200, description = "`text/event-stream` of `status` events, each a StatusSnapshot", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = orch_api_types::ErrorEnvelope),
        (status = 401, body = orch_api_types::ErrorEnvelope)))]
pub async fn status_stream(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    // `seen`: the newest history sample this stream sent (0: none, so the first event carries
    // all of it).
    let s = futures::stream::unfold(
        (state, true, 0u64),
        move |(state, first, seen)| async move {
            if !first {
                tokio::time::sleep(STATUS_EVERY).await;
            }
            let st = state.clone();
            let (snap, seen) = tokio::task::spawn_blocking(move || {
                let mut snap = snapshot(&st, recent);
                let (history, newest) = st.history.since(seen);
                snap.history = history;
                (snap, newest)
            })
            .await
            .ok()?;
            let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
            Some((
                Ok(Event::default().event("status").data(data)),
                (state, false, seen),
            ))
        },
    );
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// A bad query string as the error envelope (axum's rejection is plain text and undocumented;
/// found by the chaos schema fuzzing).
fn bad_query(e: QueryRejection) -> ServiceError {
    ServiceError::invalid(format!("bad query: {}", e.body_text()))
}
