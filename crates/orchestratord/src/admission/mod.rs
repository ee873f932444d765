//! Task admission, the one path into a queue for both doors (`POST /v1/tasks` and the
//! OpenAI-compatible routes): validate, route to a pool, check its limits, admit the session
//! (turns, TTL, budget reservation), register, enqueue; plus cancel. Refusals are
//! [`ServiceError`]s, mapped to HTTP by `http::error`.

pub mod context;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use orch_api_types::{
    AdmissionResponse, BudgetRemaining, Dialect, ErrorCode, ErrorEnvelope, StreamLinks,
    TaskRequest, TaskState, Workload,
};
use orch_config::{Config, PoolKind};
use orch_core::{choose_pool, PoolCandidate};
use orch_pool_manager::PoolManager;
use tracing::Instrument;

use crate::background::Background;
use crate::catalog::Catalog;
use crate::dispatch::Dispatcher;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::sessions::SessionAccounts;
use crate::shutdown::ShutdownFlag;
use crate::task::{Task, TaskTable};
use crate::transcripts::Transcripts;
use context::ContextNote;
use validate::{check_limits, validate};

/// What admission uses, and nothing else: the pools and their queues, the task table, the
/// catalog (model ids), sessions and budgets, and where a task's follow-ups go once it ends.
/// Built once by `state::AppState::new`; cheap to share (`Arc<Admission>`).
pub struct Admission {
    /// `model_aliases` (agent doors) and nothing else is read from it.
    pub config: Arc<Config>,
    /// Pools: routing, readiness, on_demand loads.
    pub pools: Arc<PoolManager>,
    /// The queue of each pool, by pool id.
    pub dispatchers: Arc<HashMap<String, Dispatcher>>,
    /// Every task, by id.
    pub tasks: Arc<TaskTable>,
    /// Rejections, backpressure and cancels are counted.
    pub metrics: Metrics,
    /// Set once shutdown began: admission answers 503.
    pub shutting_down: ShutdownFlag,
    /// Catalog ids as `model_ref`.
    pub catalog: Arc<Catalog>,
    /// Session turns, TTLs and budget reservations.
    pub sessions: Arc<SessionAccounts>,
    /// Where an ended task's transcript goes.
    pub transcripts: Arc<Transcripts>,
    /// Runs each task's follow-ups (charges, transcript) once it ends.
    pub background: Arc<Background>,
}

/// A task that passed admission.
pub struct Admitted {
    /// The queued task.
    pub task: Arc<Task>,
    /// The 202 body of `POST /v1/tasks`.
    pub response: AdmissionResponse,
    /// What the agent doors' context rules did (default for `POST /v1/tasks`).
    pub context: ContextNote,
}

impl Admitted {
    /// The session budget left at admission, for sessions with a budget.
    pub fn budget_remaining(&self) -> Option<BudgetRemaining> {
        self.task.ext.session().and_then(|b| b.remaining)
    }
}

/// The kind of pool a workload runs on.
pub fn pool_kind_for(w: Workload) -> PoolKind {
    match w {
        Workload::Completion | Workload::Chat => PoolKind::Chat,
        Workload::Embedding => PoolKind::Embedding,
        Workload::Rerank => PoolKind::Rerank,
    }
}

/// The model is served, but only by pools of another kind (an embedding request to a chat
/// pool, a chat request to an embedding pool): which pools would take it.
fn wrong_kind(
    state: &Admission,
    req: &TaskRequest,
    want: PoolKind,
    wrong: &[&Dispatcher],
) -> ServiceError {
    let mut right: Vec<String> = state
        .pools
        .pools()
        .iter()
        .filter(|p| p.config().kind == want)
        .map(|p| {
            format!(
                "{} ({})",
                p.id(),
                p.model_names().last().cloned().unwrap_or_default()
            )
        })
        .collect();
    right.sort();
    let theirs: Vec<String> = wrong
        .iter()
        .map(|d| {
            format!(
                "{} is `kind: {}`",
                d.pool().id(),
                d.pool().config().kind.as_str()
            )
        })
        .collect();
    ServiceError::new(
        ErrorCode::InvalidParams,
        format!(
            "model `{}` is served only by pools of another kind ({}); {} requests need a `kind: {}` pool: {}",
            req.model_ref,
            theirs.join(", "),
            req.workload.as_str(),
            want.as_str(),
            if right.is_empty() {
                format!("none is configured (add one with `kind: {}`)", want.as_str())
            } else {
                format!("use one of {}", right.join(", "))
            }
        ),
    )
}

/// Picks the pool for a request: the pools serving `model_ref` (a pool id, a model name or
/// file, or the file of the catalog model it names), narrowed by `engine` and `pin_pool`, of
/// which one must be ready; then the least loaded (see docs/PLACEMENT.md). `catalog_path` is the model file of the
/// catalog model `model_ref` names, if it names one.
fn route<'a>(
    state: &'a Admission,
    req: &TaskRequest,
    catalog_path: Option<&str>,
) -> Result<&'a Dispatcher, ServiceError> {
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
    let want = pool_kind_for(req.workload);
    let (right, wrong): (Vec<&Dispatcher>, Vec<&Dispatcher>) = candidates
        .into_iter()
        .partition(|d| d.pool().config().kind == want);
    if right.is_empty() && !wrong.is_empty() {
        return Err(wrong_kind(state, req, want, &wrong));
    }
    let candidates = right;
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
        return Err(ServiceError::new(
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
        // An on_demand pool takes tasks while unloaded: they queue while it loads.
        .filter(|d| (d.pool().is_ready() || d.pool().on_demand()) && !d.pool().is_draining())
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
        return Err(ServiceError::from_envelope(
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
    let prefer = req
        .placement
        .as_ref()
        .and_then(|p| p.prefer_device)
        .map(|dev| format!("gpu{dev}"));
    let loads: Vec<PoolCandidate<'_>> = ready
        .iter()
        .map(|d| PoolCandidate {
            id: d.pool().id(),
            work: d.depth() + d.running(),
            ready_slots: d.pool().ready_slots(),
            on_preferred_device: prefer
                .as_ref()
                .is_some_and(|dev| d.pool().replicas().iter().any(|r| &r.status.device == dev)),
        })
        .collect();
    choose_pool(&loads)
        .and_then(|i| ready.get(i).copied())
        .ok_or_else(|| ServiceError::new(ErrorCode::Internal, "routing found no pool"))
}

/// The one admission path (validate, route, limits, sessions and budgets, register, enqueue,
/// rejection and backpressure metrics), shared by `POST /v1/tasks` and the OpenAI-compatible
/// endpoints.
///
/// Runs to completion in its own task even when the caller goes away (a client that hangs up
/// mid-request): a half-done admission would leave a session turn counted or a budget
/// reservation held with no task to release it.
pub async fn admit(
    state: &Arc<Admission>,
    correlation_id: &str,
    req: TaskRequest,
) -> Result<Admitted, ServiceError> {
    admit_via(state, correlation_id, req, Dialect::Native).await
}

/// [`admit`] for a task that came through `dialect`'s door (recorded on the task).
pub async fn admit_via(
    state: &Arc<Admission>,
    correlation_id: &str,
    req: TaskRequest,
    dialect: Dialect,
) -> Result<Admitted, ServiceError> {
    let (state, correlation_id) = (state.clone(), correlation_id.to_owned());
    // The request's span (correlation id, caller) follows into the spawned task.
    let admission = async move { admit_to_end(&state, &correlation_id, req, dialect).await };
    tokio::spawn(admission.instrument(tracing::Span::current()))
        .await
        .map_err(|e| {
            ServiceError::new(
                ErrorCode::Internal,
                format!("admission failed: {e}; the daemon logged details"),
            )
        })?
}

async fn admit_to_end(
    state: &Admission,
    correlation_id: &str,
    mut req: TaskRequest,
    dialect: Dialect,
) -> Result<Admitted, ServiceError> {
    let reject = |engine: &str, e: ServiceError| {
        state.metrics.rejected(engine, e.body.code.as_str());
        e
    };
    if state.shutting_down.began() {
        return Err(reject(
            "",
            ServiceError::from_envelope(
                ErrorEnvelope::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down; retry against the restarted daemon",
                )
                .retry_after(5000),
            ),
        ));
    }
    validate(&req).map_err(|e| reject("", e))?;
    context::resolve_alias(state, &mut req);
    let catalog_path = state
        .catalog
        .route(&req.model_ref, &state.pools)
        .map_err(|e| reject(req.engine.as_deref().unwrap_or(""), e))?;
    let disp = route(state, &req, catalog_path.as_deref())
        .map_err(|e| reject(req.engine.as_deref().unwrap_or(""), e))?;
    let pool = disp.pool().clone();
    let context = if dialect == Dialect::Native {
        ContextNote::default()
    } else {
        context::fit(state, &pool, &mut req)
            .await
            .map_err(|e| reject(pool.engine(), e))?
    };
    check_limits(&pool, &req).map_err(|e| reject(pool.engine(), e))?;
    if req.session_id.is_some() && state.tasks.get(&req.task_id).is_some() {
        // Refuse before the session check records a turn (the insert below re-checks).
        return Err(reject(
            pool.engine(),
            ServiceError::new(
                ErrorCode::DuplicateTask,
                format!(
                    "task_id `{}` is already in use; choose a new id",
                    req.task_id
                ),
            ),
        ));
    }
    let mut task = Task::new(
        req,
        pool.id().to_owned(),
        pool.engine(),
        correlation_id.to_owned(),
    );
    task.dialect = dialect;
    let task = Arc::new(task);
    // Session turn, TTL and budget checks and the budget reservation, before enqueue.
    let session = state
        .sessions
        .admit(&task.req, &task, &state.pools)
        .await
        .map_err(|e| reject(pool.engine(), e))?;
    if let Some(b) = session {
        task.ext.bind_session(b);
    }
    if !state.tasks.insert(task.clone()) {
        state.sessions.withdraw(&task).await;
        return Err(reject(
            pool.engine(),
            ServiceError::new(
                ErrorCode::DuplicateTask,
                format!("task_id `{}` is already in use; choose a new id", task.id),
            ),
        ));
    }
    let admitted = match disp.enqueue(task.clone()).await {
        Ok(r) => r,
        Err(env) => {
            state.tasks.remove(&task.id);
            state.sessions.withdraw(&task).await;
            return Err(ServiceError::from_envelope(env));
        }
    };
    match admitted {
        Ok(adm) => {
            if pool.on_demand() && !pool.is_ready() {
                // Start the load (or learn why it waits) before the 202 says so.
                state.pools.demand(pool.id());
            }
            tracing::info!(
                task_id = %task.id,
                queue_position = adm.queue_position,
                predicted_start_ms = adm.predicted_start_ms,
                predicted_end_ms = adm.predicted_end_ms,
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
                predicted_end_ms: Some(adm.predicted_end_ms),
                on_time_probability: adm.on_time_probability,
                backoff_ms,
                pool_id: pool.id().to_owned(),
                streams: StreamLinks {
                    sse: task.stream_path(),
                },
                pool_load: crate::dispatch::admission_note(&pool),
            };
            // Charges the session and writes the transcript once the task ends.
            state.background.after_end(
                task.clone(),
                state.sessions.clone(),
                state.transcripts.clone(),
                state.pools.clone(),
            );
            Ok(Admitted {
                task,
                response: body,
                context,
            })
        }
        Err(full) => {
            state.tasks.remove(&task.id);
            state.sessions.withdraw(&task).await;
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
            Err(ServiceError::from_envelope(env))
        }
    }
}

/// A task by id (`NOT_FOUND` once it is no longer retained).
pub fn find(state: &Admission, id: &str) -> Result<Arc<Task>, ServiceError> {
    state.tasks.get(id).ok_or_else(|| {
        ServiceError::not_found(format!(
            "no task `{id}` (unknown, or finished longer ago than tasks.retain_ms)"
        ))
    })
}

/// Cancels a queued or running task (idempotent): a queued task leaves its queue and ends at
/// once; a running one is asked to stop, and the answer waits briefly for its final state.
pub async fn cancel(state: &Admission, id: &str) -> Result<Arc<Task>, ServiceError> {
    let task = find(state, id)?;
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
    Ok(task)
}
