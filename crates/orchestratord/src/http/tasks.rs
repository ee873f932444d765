//! `POST /v1/tasks`, `GET /v1/tasks/{id}`, `GET /v1/tasks/{id}/stream`,
//! `POST /v1/tasks/{id}/cancel`.

use std::convert::Infallible;
use std::sync::Arc;

use api_types::{
    AdmissionResponse, CancelResponse, Determinism, ErrorCode, ErrorEnvelope, StreamLinks,
    TaskRequest, TaskState, TaskStatus, Workload,
};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use pool_manager::Pool;

use crate::app::AppState;
use crate::correlation::CorrelationId;
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::http::JsonBody;
use crate::task::Task;

/// A task id or similar: 1-128 of `A-Za-z0-9._:-`.
pub fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

fn validate(req: &TaskRequest) -> Result<(), ApiError> {
    if !valid_id(&req.task_id) {
        return Err(ApiError::invalid(
            "task_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
        ));
    }
    if req.model_ref.trim().is_empty() {
        return Err(ApiError::invalid(
            "model_ref is empty; name a pool id or a model",
        ));
    }
    if let Some(e) = &req.engine {
        if orch_config::EngineKind::parse(e).is_none() {
            return Err(ApiError::invalid(format!(
                "unknown engine `{e}`; use one of llamacpp, vllm, tgi, triton, openai"
            )));
        }
    }
    match req.workload {
        Workload::Completion => {
            if req.prompt.is_none() {
                return Err(ApiError::invalid("a `completion` task needs `prompt`"));
            }
            if req.messages.is_some() {
                return Err(ApiError::invalid(
                    "`messages` belongs to `chat` tasks; set workload: chat or send `prompt`",
                ));
            }
        }
        Workload::Chat => {
            if req.messages.as_ref().is_none_or(Vec::is_empty) {
                return Err(ApiError::invalid(
                    "a `chat` task needs non-empty `messages`",
                ));
            }
            if req.prompt.is_some() {
                return Err(ApiError::invalid(
                    "`prompt` belongs to `completion` tasks; send `messages` for chat",
                ));
            }
        }
    }
    if req.max_tokens == 0 {
        return Err(ApiError::invalid("max_tokens must be at least 1"));
    }
    if matches!(req.determinism, Some(Determinism::Strict)) && req.seed.is_none() {
        return Err(ApiError::invalid("determinism `strict` needs a `seed`"));
    }
    for (name, v) in [("temperature", req.temperature), ("top_p", req.top_p)] {
        if v.is_some_and(|x| !x.is_finite() || x < 0.0) {
            return Err(ApiError::invalid(format!(
                "{name} must be a finite number ≥ 0"
            )));
        }
    }
    if let Some(s) = &req.session_id {
        if !valid_id(s) {
            return Err(ApiError::invalid(
                "session_id must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
    }
    Ok(())
}

/// Picks the pool for a request (SPEC §2 routing). `catalog_path` is the model file of the
/// catalog model `model_ref` names, if it names one.
fn route<'a>(
    state: &'a AppState,
    req: &TaskRequest,
    catalog_path: Option<&str>,
) -> Result<&'a Dispatcher, ApiError> {
    let mut candidates: Vec<&Dispatcher> = state
        .dispatchers
        .values()
        .filter(|d| {
            d.pool().serves(&req.model_ref) || catalog_path.is_some_and(|p| d.pool().serves(p))
        })
        .filter(|d| req.engine.as_deref().is_none_or(|e| d.pool().engine() == e))
        .collect();
    if let Some(pin) = req.placement.as_ref().and_then(|p| p.pin_pool.as_deref()) {
        candidates.retain(|d| d.pool().id() == pin);
    }
    if candidates.is_empty() {
        let mut served: Vec<String> = state
            .pools
            .pools()
            .iter()
            .map(|p| {
                format!(
                    "{} ({})",
                    p.id(),
                    p.model_names().last().cloned().unwrap_or_default()
                )
            })
            .collect();
        served.sort();
        let engine = req
            .engine
            .as_deref()
            .map(|e| format!(" on engine {e}"))
            .unwrap_or_default();
        let pin = req
            .placement
            .as_ref()
            .and_then(|p| p.pin_pool.as_deref())
            .map(|p| format!(" in pool {p}"))
            .unwrap_or_default();
        return Err(ApiError::new(
            ErrorCode::ModelNotFound,
            format!(
                "no pool serves model `{}`{engine}{pin}; served: {}",
                req.model_ref,
                if served.is_empty() {
                    "none (configure a pool)".into()
                } else {
                    served.join(", ")
                }
            ),
        ));
    }
    let ready: Vec<&Dispatcher> = candidates
        .iter()
        .copied()
        .filter(|d| d.pool().is_ready() && !d.pool().is_draining())
        .collect();
    if ready.is_empty() {
        let why: Vec<String> = candidates
            .iter()
            .map(|d| {
                let h = d.pool().health();
                if h.draining {
                    let id = d.pool().id();
                    return format!(
                        "pool {id} is draining (stopped admitting work until POST /v1/pools/{id}/drain {{\"resume\": true}} or a reload)"
                    );
                }
                let state = "not ready";
                match h.last_error {
                    Some(e) => format!("{} {state}: {e}", d.pool().id()),
                    None => format!("{} {state} (engine starting)", d.pool().id()),
                }
            })
            .collect();
        let engine = candidates[0].pool().engine();
        return Err(ApiError::from_envelope(
            ErrorEnvelope::new(
                ErrorCode::PoolUnavailable,
                format!(
                    "no ready pool for `{}`: {}; retry shortly",
                    req.model_ref,
                    why.join("; ")
                ),
            )
            .with_engine(engine)
            .retry_after(2000),
        ));
    }
    let prefer = req.placement.as_ref().and_then(|p| p.prefer_device);
    let load = |d: &Dispatcher| {
        let slots = d.pool().ready_slots().max(1);
        ((d.depth() + d.running()) * 1024) / slots
    };
    let on_preferred = |d: &Dispatcher| {
        prefer.is_some_and(|dev| {
            d.pool()
                .replicas()
                .iter()
                .any(|r| r.status.device == format!("gpu{dev}"))
        })
    };
    ready
        .into_iter()
        .min_by_key(|d| (!on_preferred(d), load(d), d.pool().id().to_owned()))
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "routing found no pool"))
}

fn check_limits(pool: &Pool, req: &TaskRequest) -> Result<(), ApiError> {
    let ctx_max = pool.ctx_per_slot();
    if let Some(c) = req.ctx {
        if c > ctx_max {
            return Err(ApiError::invalid(format!(
                "ctx {c} exceeds pool '{}''s {ctx_max} tokens per slot; lower ctx or raise the pool's ctx",
                pool.id()
            )));
        }
    }
    let limit = req.ctx.unwrap_or(ctx_max);
    if req.max_tokens > limit {
        return Err(ApiError::invalid(format!(
            "max_tokens {} exceeds the context of {limit} tokens (pool '{}'); lower max_tokens",
            req.max_tokens,
            pool.id()
        )));
    }
    Ok(())
}

/// Admit a task.
#[utoipa::path(post, path = "/v1/tasks", request_body = TaskRequest,
    responses(
        (status = 202, description = "Admitted", body = AdmissionResponse,
            headers(("X-Budget-Tokens-Remaining" = u64, description = "session tokens left (sessions with a token budget)"),
                ("X-Budget-Time-Remaining-Ms" = u64, description = "session engine ms left (time budget)"),
                ("X-Budget-Cost-Remaining" = f64, description = "session cost left (cost budget)"))),
        (status = 400, description = "Invalid parameters", body = ErrorEnvelope),
        (status = 401, description = "Missing or bad token", body = ErrorEnvelope),
        (status = 404, description = "No pool serves the model", body = ErrorEnvelope),
        (status = 409, description = "Duplicate task id (`DUPLICATE_TASK`), Retired catalog model (`MODEL_RETIRED`), session expired (`SESSION_EXPIRED`) or out of turns (`SESSION_TURNS_EXHAUSTED`)", body = ErrorEnvelope),
        (status = 429, description = "Queue full (`ADMISSION_REJECT`) or session budget exceeded (`BUDGET_EXCEEDED`)", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    body: Result<JsonBody<TaskRequest>, ApiError>,
) -> Result<impl IntoResponse, ApiError> {
    let JsonBody(req) = body.inspect_err(|e| {
        state.metrics.rejected("", e.body.code.as_str());
    })?;
    let adm = admit(&state, &cid, req).await?;
    Ok((StatusCode::ACCEPTED, adm.headers, Json(adm.response)))
}

/// A task that passed admission: the task, the 202 body and its headers.
pub struct Admitted {
    /// The queued task.
    pub task: Arc<Task>,
    /// The 202 body of `POST /v1/tasks`.
    pub response: AdmissionResponse,
    /// `Location` and budget headers.
    pub headers: HeaderMap,
}

/// The one admission path (validate, route, limits, sessions and budgets, register, enqueue,
/// rejection and backpressure metrics), shared by `POST /v1/tasks` and the OpenAI-compatible
/// endpoints (`http::openai`).
pub async fn admit(
    state: &AppState,
    cid: &CorrelationId,
    req: TaskRequest,
) -> Result<Admitted, ApiError> {
    let reject = |engine: &str, e: ApiError| {
        state.metrics.rejected(engine, e.body.code.as_str());
        e
    };
    if state.is_shutting_down() {
        return Err(reject(
            "",
            ApiError::from_envelope(
                ErrorEnvelope::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down; retry against the restarted daemon",
                )
                .retry_after(5000),
            ),
        ));
    }
    validate(&req).map_err(|e| reject("", e))?;
    let catalog_path = state
        .persist
        .catalog_route(&req.model_ref, &state.pools)
        .map_err(|e| reject(req.engine.as_deref().unwrap_or(""), e))?;
    let disp = route(state, &req, catalog_path.as_deref())
        .map_err(|e| reject(req.engine.as_deref().unwrap_or(""), e))?;
    let pool = disp.pool().clone();
    check_limits(&pool, &req).map_err(|e| reject(pool.engine(), e))?;
    if req.session_id.is_some() && state.tasks.get(&req.task_id).is_some() {
        // Refuse before the session check records a turn.
        return Err(reject(
            pool.engine(),
            ApiError::new(
                ErrorCode::DuplicateTask,
                format!(
                    "task_id `{}` is already in use; choose a new id",
                    req.task_id
                ),
            ),
        ));
    }
    // Session turn, TTL and budget checks, before enqueue (see persist::Persist::admit).
    let session = state
        .persist
        .admit(&req, &state.pools)
        .await
        .map_err(|e| reject(pool.engine(), e))?;
    let task = Arc::new(Task::new(
        req,
        pool.id().to_owned(),
        pool.engine(),
        cid.0.clone(),
    ));
    if let Some(b) = session {
        task.ext.bind_session(b);
    }
    if !state.tasks.insert(task.clone()) {
        return Err(reject(
            pool.engine(),
            ApiError::new(
                ErrorCode::DuplicateTask,
                format!("task_id `{}` is already in use; choose a new id", task.id),
            ),
        ));
    }
    let admitted = match disp.enqueue(task.clone()).await {
        Ok(r) => r,
        Err(env) => {
            state.tasks.remove(&task.id);
            state.persist.refund_turn(&task).await;
            return Err(ApiError::from_envelope(env));
        }
    };
    match admitted {
        Ok(adm) => {
            tracing::info!(
                task_id = %task.id,
                queue_position = adm.queue_position,
                predicted_start_ms = adm.predicted_start_ms,
                engine = pool.engine(),
                engine_version = %pool.engine_version(),
                pool_id = %pool.id(),
                replica_id = "",
                priority = ?task.priority(),
                "task admitted"
            );
            let backoff_ms = (adm.predicted_start_ms / 4).clamp(50, 5_000);
            let body = AdmissionResponse {
                task_id: task.id.clone(),
                queue_position: adm.queue_position,
                predicted_start_ms: adm.predicted_start_ms,
                backoff_ms,
                pool_id: pool.id().to_owned(),
                streams: StreamLinks {
                    sse: task.stream_path(),
                },
            };
            // Charges the session and writes the transcript once the task ends.
            state.persist.track(&state.pools, &task);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&task.stream_path()) {
                headers.insert(header::LOCATION, v);
            }
            if let Some(rem) = task.ext.session().and_then(|b| b.remaining) {
                crate::persist::budget_headers(&rem, &mut headers);
            }
            Ok(Admitted {
                task,
                response: body,
                headers,
            })
        }
        Err(full) => {
            state.tasks.remove(&task.id);
            state.persist.refund_turn(&task).await;
            let policy = disp.policy();
            let label = match policy {
                orch_config::FullPolicy::Reject => "reject",
                orch_config::FullPolicy::DropLru => "drop-lru",
            };
            state.metrics.rejected(pool.engine(), "ADMISSION_REJECT");
            state
                .metrics
                .backpressure
                .get_or_create(&crate::metrics::EnginePolicy {
                    engine: pool.engine().into(),
                    policy: label.into(),
                })
                .inc();
            tracing::warn!(task_id = %task.id, pool_id = %pool.id(), depth = full.depth, capacity = full.capacity, policy = label, "queue full");
            let mut env = ErrorEnvelope::new(
                ErrorCode::AdmissionReject,
                format!(
                    "queue for pool '{}' is full ({}/{}); retry after {} ms or raise queue.capacity",
                    pool.id(),
                    full.depth,
                    full.capacity,
                    full.retry_after_ms
                ),
            )
            .with_engine(pool.engine())
            .retry_after(full.retry_after_ms);
            env.policy_label = Some(label.into());
            Err(ApiError::from_envelope(env))
        }
    }
}

fn find(state: &AppState, id: &str) -> Result<Arc<Task>, ApiError> {
    state.tasks.get(id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no task `{id}` (unknown, or finished longer ago than tasks.retain_ms)"
        ))
    })
}

/// A task's state.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskStatus), (status = 404, body = ErrorEnvelope)))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ApiError> {
    Ok(Json(find(&state, &id)?.status()))
}

/// One event of a task's `text/event-stream`, as SSE clients parse it: the event name and its
/// JSON payload (`StartedEvent`, `TokenEvent`, `MetricsEvent`, `EndEvent` or `ErrorEnvelope`).
/// Documented per event, as SSE-aware tools validate streams (found by the chaos schema
/// fuzzing: a plain `string` schema made every event a violation).
#[derive(utoipa::ToSchema)]
pub struct SseFrame {
    /// `started`, `token`, `metrics`, `end` or `error`.
    #[schema(pattern = "^(started|token|metrics|end|error)$")]
    pub event: String,
    /// The event's payload, one line of JSON.
    pub data: String,
}

/// The task's events as Server-Sent Events, from the start.
#[utoipa::path(get, path = "/v1/tasks/{id}/stream", params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "`text/event-stream`: started, token*, metrics*, then end or error", content_type = "text/event-stream", body = SseFrame),
        (status = 404, body = ErrorEnvelope)))]
pub async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<
    (
        HeaderMap,
        Sse<impl Stream<Item = Result<Event, Infallible>>>,
    ),
    ApiError,
> {
    let task = find(&state, &id)?;
    // Budget left at admission, once on the stream (SPEC §2).
    let mut headers = HeaderMap::new();
    if let Some(rem) = task.ext.session().and_then(|b| b.remaining) {
        crate::persist::budget_headers(&rem, &mut headers);
    }
    let frames = task
        .follow()
        .map(|f| Ok(Event::default().event(f.name).data(&f.data)));
    Ok((headers, Sse::new(frames).keep_alive(KeepAlive::default())))
}

/// Cancel a queued or running task (idempotent).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path, description = "task id")),
    responses((status = 202, body = CancelResponse), (status = 404, body = ErrorEnvelope)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelResponse>), ApiError> {
    let task = find(&state, &id)?;
    let reason = ErrorEnvelope::new(ErrorCode::Canceled, "task canceled by request")
        .with_engine(task.engine);
    if task.state() == TaskState::Queued {
        if let Some(d) = state.dispatchers.get(&task.pool_id) {
            if d.remove(&task.id).await && task.fail(reason.clone()) {
                state
                    .metrics
                    .tasks_canceled
                    .get_or_create(&crate::metrics::ReplicaReason {
                        engine: task.engine.into(),
                        engine_version: d.pool().engine_version(),
                        pool_id: task.pool_id.clone(),
                        replica_id: String::new(),
                        reason: "CANCELED".into(),
                    })
                    .inc();
                state.tasks.note_finished(&task.id);
                tracing::info!(task_id = %task.id, "queued task canceled");
            }
        }
    }
    if !task.state().is_terminal() {
        task.request_cancel(reason);
        // Give the runner a moment so the answer usually shows the final state.
        let mut follow = Box::pin(task.clone().follow());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            while follow.next().await.is_some() {}
        })
        .await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelResponse {
            task_id: task.id.clone(),
            state: task.state(),
        }),
    ))
}
