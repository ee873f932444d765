//! The pool control plane: drain (stop admitting, finish or cancel by a deadline), resume,
//! reload (a new model beside the serving one, or roll back), and load / unload of on_demand
//! pools, and the drain of every pool at shutdown ([`PoolControl::shut_down`]). Handlers in
//! `http/pools.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use orch_api_types::{ErrorCode, ErrorEnvelope};
use orch_pool_manager::{Pool, PoolManager, ReloadErrorKind, ReloadOptions, ReloadReport};

use crate::background::Background;
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::dispatch::Dispatcher;
use crate::error::ServiceError;
use crate::metrics::Metrics;
use crate::shutdown::ShutdownFlag;
use crate::task::{end_within, Task, TaskTable, CANCEL_GRACE};

/// What pool control uses: the pools and their queues, the task table (to wait for and end a
/// pool's tasks), the catalog (reload by catalog id), metrics, the shutdown flag, and the
/// background set its drain enforcers run in. A drain enforcer holds an `Arc` of this, not
/// the daemon's whole state.
pub struct PoolControl {
    /// Pools and engines.
    pub pools: Arc<PoolManager>,
    /// The queue of each pool, by pool id.
    pub dispatchers: Arc<HashMap<String, Dispatcher>>,
    /// Every task, by id.
    pub tasks: Arc<TaskTable>,
    /// Cancels of queued tasks are counted.
    pub metrics: Metrics,
    /// Set once shutdown began (by [`PoolControl::shut_down`]).
    pub shutting_down: ShutdownFlag,
    /// Catalog ids as reload targets.
    pub catalog: Arc<Catalog>,
    /// Where drain enforcers run (stopped together at shutdown).
    pub background: Arc<Background>,
}

impl PoolControl {
    /// Shutdown: stop admitting, end every queued task at once and the running ones after
    /// `grace` (SIGTERM; `orchestratord::drain`).
    pub async fn shut_down(&self, grace: Duration) {
        tracing::info!(grace_s = grace.as_secs(), "shutdown: no longer admitting");
        self.shutting_down.begin();
        let bye = || {
            ErrorEnvelope::new(
                ErrorCode::ShuttingDown,
                "the daemon is shutting down; resubmit once it is back",
            )
            .retry_after(5000)
        };
        for d in self.dispatchers.values() {
            for t in d.drain_queue().await {
                t.fail(bye());
            }
        }
        let active = self.tasks.active();
        if !end_within(&active, grace, bye).await {
            tracing::warn!(
                tasks = active.len(),
                "shutdown: grace over, running tasks were ended"
            );
        }
        tracing::info!("shutdown: every task ended");
    }

    /// Stores what each pool's start-time model learned since its last save, so a restart right
    /// after a burst predicts from it (runners have reported by the time shutdown calls this).
    pub async fn flush_rates(&self) {
        for d in self.dispatchers.values() {
            d.flush_rates().await;
        }
    }
}

/// Default drain deadline.
pub const DEFAULT_DRAIN_MS: u64 = 30_000;
/// Longest drain deadline accepted (a day).
pub const MAX_DRAIN_MS: u64 = 86_400_000;
/// Default time retiring replicas get to finish their tasks after a reload.
pub const DEFAULT_RELOAD_GRACE_MS: u64 = 60_000;
/// Longest `grace_ms` of a reload (a day, like a drain's deadline).
pub const MAX_RELOAD_GRACE_MS: u64 = MAX_DRAIN_MS;

/// A pool by id (`NOT_FOUND` naming where the list is).
pub fn find_pool(state: &PoolControl, id: &str) -> Result<Arc<Pool>, ServiceError> {
    state
        .pools
        .pool(id)
        .cloned()
        .ok_or_else(|| ServiceError::not_found(format!("no pool `{id}`; GET /v1/pools lists them")))
}

/// `SHUTTING_DOWN` once shutdown began.
pub fn refuse_while_shutting_down(state: &PoolControl) -> Result<(), ServiceError> {
    if state.shutting_down.began() {
        return Err(ServiceError::from_envelope(
            ErrorEnvelope::new(ErrorCode::ShuttingDown, "the daemon is shutting down")
                .retry_after(5000),
        ));
    }
    Ok(())
}

fn active_in(state: &PoolControl, pool_id: &str) -> Vec<Arc<Task>> {
    state
        .tasks
        .active()
        .into_iter()
        .filter(|t| t.pool_id == pool_id)
        .collect()
}

/// Starts draining `pool` with a deadline `ms` from now; returns the deadline (ms since the
/// Unix epoch). The pool refuses new work at once; a background enforcer cancels what is left
/// at the deadline unless the drain was resumed or replaced meanwhile.
pub fn start_drain(
    state: &Arc<PoolControl>,
    pool: Arc<Pool>,
    ms: u64,
) -> Result<u64, ServiceError> {
    refuse_while_shutting_down(state)?;
    if ms > MAX_DRAIN_MS {
        return Err(ServiceError::invalid(format!(
            "deadline_ms {ms} is too large; at most {MAX_DRAIN_MS} (a day)"
        )));
    }
    let deadline_at_ms = now_ms().saturating_add(ms);
    let epoch = pool.start_drain(Some(deadline_at_ms));
    let state2 = state.clone();
    state
        .background
        .spawn(async move { enforce_drain(state2, pool, epoch, ms).await });
    Ok(deadline_at_ms)
}

/// Waits until the pool's tasks have ended, or the deadline passes and then cancels what is
/// left. Steps aside when the drain was resumed or replaced before the deadline.
async fn enforce_drain(state: Arc<PoolControl>, pool: Arc<Pool>, epoch: u64, ms: u64) {
    let id = pool.id().to_owned();
    // New work is refused from now on, so these are all the tasks the drain waits for.
    let waiting = active_in(&state, &id);
    let finished =
        tokio::time::timeout(Duration::from_millis(ms), crate::task::all_ended(&waiting)).await;
    if pool.drain_epoch() != epoch {
        return;
    }
    if finished.is_ok() && active_in(&state, &id).is_empty() {
        tracing::info!(pool_id = %id, "drain complete: nothing queued or running");
        return;
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
    let running = active_in(&state, &id);
    tracing::warn!(pool_id = %id, deadline_ms = ms, canceled_queued = queued, canceled_running = running.len(), "drain deadline passed: canceling what is left");
    // The deadline has passed: no more waiting, cancel at once.
    end_within(&running, Duration::ZERO, reason).await;
}

/// Maps a reload reference to a model file. A path that exists is used as is; otherwise an
/// Active catalog model with a local reference gives its path. This is the catalog hook: any
/// further resolution (downloads, digests) belongs here.
pub fn resolve_model_ref(state: &PoolControl, r: &str) -> Result<String, ServiceError> {
    if std::path::Path::new(r).exists() {
        return Ok(r.to_owned());
    }
    let Some(m) = state.catalog.cached(r) else {
        // Neither a file nor a catalog id: 404, like a task naming an unknown model.
        return Err(ServiceError::new(
            ErrorCode::ModelNotFound,
            format!(
                "model file `{r}` cannot be read (it does not exist) and no catalog model has that id; give the path of a .gguf model or a catalog id"
            ),
        ));
    };
    if m.state == orch_store::ModelState::Retired {
        return Err(ServiceError::new(
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
                ServiceError::new(
                    ErrorCode::Conflict,
                    format!("catalog model `{r}` has an unusable file URL; re-register it by path"),
                )
            });
    }
    let lower = reference.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "catalog model `{r}` refers to a URL; the daemon does not download models: download it and register its local path"
            ),
        ));
    }
    Ok(reference)
}

/// Reloads pool `id` on `model_ref` (a file or catalog id; `None`: the serving model) and, as
/// a reload says "serve this now", ends a drain.
pub async fn reload(
    state: &PoolControl,
    id: &str,
    model_ref: Option<&str>,
    grace_ms: Option<u64>,
) -> Result<ReloadReport, ServiceError> {
    let pool = find_pool(state, id)?;
    refuse_while_shutting_down(state)?;
    if let Some(g) = grace_ms.filter(|g| *g > MAX_RELOAD_GRACE_MS) {
        return Err(ServiceError::invalid(format!(
            "grace_ms {g} is too large; at most {MAX_RELOAD_GRACE_MS} (a day)"
        )));
    }
    let model = match model_ref.map(str::trim) {
        Some("") => return Err(ServiceError::invalid("new_model_ref is empty; give a model file path or catalog id, or omit it to restart on the serving model")),
        Some(r) => Some(resolve_model_ref(state, r)?),
        None => None,
    };
    let opts = ReloadOptions {
        model,
        retire_grace: Duration::from_millis(grace_ms.unwrap_or(DEFAULT_RELOAD_GRACE_MS)),
    };
    match state.pools.reload(id, opts).await {
        Ok(rep) => {
            if pool.is_draining() {
                pool.resume();
            }
            Ok(rep)
        }
        Err(e) => {
            let (code, retry) = match e.kind {
                ReloadErrorKind::UnknownPool => (ErrorCode::NotFound, None),
                // The request is well formed; what lies at the path is not a model.
                ReloadErrorKind::BadModel => (ErrorCode::ModelNotFound, None),
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
            Err(ServiceError::from_envelope(env))
        }
    }
}

/// The envelope of a refused or failed load or unload.
fn load_error(pool: Option<&Pool>, e: orch_pool_manager::LoadError) -> ServiceError {
    use orch_pool_manager::LoadErrorKind as K;
    let (code, retry) = match e.kind {
        K::UnknownPool => (ErrorCode::NotFound, None),
        K::NotOnDemand | K::NoRoom => (ErrorCode::Conflict, None),
        K::Busy => (ErrorCode::Conflict, Some(2000)),
        K::Failed => (ErrorCode::EngineError, None),
        K::ShuttingDown => (ErrorCode::ShuttingDown, Some(5000)),
    };
    let mut env = ErrorEnvelope::new(code, e.message);
    if let Some(p) = pool {
        env = env.with_engine(p.engine());
    }
    if let Some(ms) = retry {
        env = env.retry_after(ms);
    }
    ServiceError::from_envelope(env)
}

/// Loads on_demand pool `id` now (`POST /v1/pools/{id}/load`).
pub async fn load(
    state: &PoolControl,
    id: &str,
) -> Result<orch_pool_manager::LoadReport, ServiceError> {
    let pool = find_pool(state, id)?;
    refuse_while_shutting_down(state)?;
    state
        .pools
        .load(id)
        .await
        .map_err(|e| load_error(Some(&pool), e))
}

/// Unloads on_demand pool `id` (`POST /v1/pools/{id}/unload`). A busy pool is refused unless
/// `force`: then its queued tasks end with `CANCELED` at once and its running ones are asked
/// to stop (the replicas show `draining` meanwhile), and the engine stops once they ended.
/// Returns the report and how many tasks were canceled.
pub async fn unload(
    state: &PoolControl,
    id: &str,
    force: bool,
) -> Result<(orch_pool_manager::LoadReport, usize), ServiceError> {
    let pool = find_pool(state, id)?;
    refuse_while_shutting_down(state)?;
    let is_busy = |r: &Result<_, orch_pool_manager::LoadError>| matches!(r, Err(e) if e.kind == orch_pool_manager::LoadErrorKind::Busy);
    let mut first = state.pools.unload(id).await;
    // A task that just ended gives its slot back a moment after its last event: when no task
    // of the pool is left, that moment is not "busy".
    let t0 = std::time::Instant::now();
    while is_busy(&first) && active_in(state, id).is_empty() && t0.elapsed() < CANCEL_GRACE {
        tokio::time::sleep(Duration::from_millis(10)).await;
        first = state.pools.unload(id).await;
    }
    let busy = is_busy(&first);
    if !(force && busy) {
        return first
            .map(|r| (r, 0))
            .map_err(|e| load_error(Some(&pool), e));
    }
    pool.hold_for_unload(true);
    let reason = || {
        ErrorEnvelope::new(
            ErrorCode::Canceled,
            format!("pool '{id}' was unloaded by request (force); resubmit to load it again"),
        )
        .with_engine(pool.engine())
    };
    let mut canceled = 0usize;
    if let Some(d) = state.dispatchers.get(id) {
        for t in d.drain_queue().await {
            if t.fail(reason()) {
                canceled += 1;
                state.tasks.note_finished(&t.id);
            }
        }
    }
    let running = active_in(state, id);
    canceled += running.len();
    end_within(&running, Duration::ZERO, reason).await;
    tracing::info!(pool_id = %id, canceled, "forced unload: tasks canceled, stopping the engine");
    // The runners give their slots back as they end; a slot may still be held for a moment.
    let mut result = state.pools.unload(id).await;
    let t0 = std::time::Instant::now();
    while is_busy(&result) && t0.elapsed() < CANCEL_GRACE {
        tokio::time::sleep(Duration::from_millis(20)).await;
        result = state.pools.unload(id).await;
    }
    pool.hold_for_unload(false);
    result
        .map(|r| (r, canceled))
        .map_err(|e| load_error(Some(&pool), e))
}
