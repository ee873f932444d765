//! Loads and unloads: the placeholder generation of an unloaded pool, starting a load (plan,
//! evict, reserve, launch), waiting for its replicas, and unloading (the unload hook first).

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_config::{EngineKind, PoolConfig};
use orch_core::vram::Layout;
use tokio_util::sync::CancellationToken;

use super::plan::{Target, Victim};
use super::{ms, LoadError, LoadErrorKind, LoadReport, UnloadingEngine, TICK, UNLOAD_HOOK_LIMIT};
use crate::metrics::{ModelEventLabels, PlacementLabels, PoolLabels};
use crate::placement::{
    launch_basics, launch_on, layout_device, log_decision, replica_id, reserve_layout,
    split_reason, ReplicaPlan,
};
use crate::pool::{Generation, LoadPhase};
use crate::reload::check_gguf;
use crate::{lock, Pool, PoolManager, Replica, ReplicaState};

/// Fails fast on a model file that cannot load at all (missing, not a file, not GGUF).
pub(super) fn check_model(cfg: &PoolConfig) -> Result<(), String> {
    let model = cfg.model.clone().unwrap_or_default();
    if cfg.engine == EngineKind::Llamacpp {
        return check_gguf(&model).map_err(|e| e.message);
    }
    Ok(())
}

impl PoolManager {
    /// The generation an unloaded (or failed) on_demand pool serves: replicas without an
    /// engine, `Unloaded` (or `Failed` with the reason).
    pub(crate) fn placeholder(
        &self,
        number: u64,
        cfg: Arc<PoolConfig>,
        failed: Option<&str>,
    ) -> Arc<Generation> {
        let state = if failed.is_some() {
            ReplicaState::Failed
        } else {
            ReplicaState::Unloaded
        };
        let replicas = (0..cfg.replicas)
            .map(|i| {
                let r = Replica::with_state(
                    replica_id(&cfg.id, number, i),
                    "none".into(),
                    cfg.slots,
                    number,
                    state,
                );
                r.update(|s| s.last_error = failed.map(str::to_owned));
                r.set_wake(self.od.wake.clone());
                Arc::new(r)
            })
            .collect();
        Generation::new(number, cfg, replicas, &self.cancel)
    }

    /// Starts loading `pool` if it is unloaded or failed: plans room, evicts, reserves and
    /// hands the launch to a task. Records why when nothing fits.
    pub(crate) fn try_load(self: &Arc<Self>, pool: &Arc<Pool>, reason: &'static str) {
        let _plan = lock(&self.od.plan_lock);
        let Some(st) = pool.load_status() else {
            return;
        };
        if !matches!(st.phase, LoadPhase::Unloaded | LoadPhase::Failed)
            || self.cancel.is_cancelled()
        {
            return;
        }
        let cfg = pool.config();
        if cfg.replicas != 1 {
            self.fail_load(
                pool,
                "on_demand pools run one replica; set replicas: 1".into(),
            );
            return;
        }
        if let Err(why) = check_model(&cfg) {
            self.fail_load(pool, why);
            return;
        }
        let binary = match launch_basics(&cfg) {
            Ok(b) => b,
            Err(why) => {
                self.fail_load(pool, why);
                return;
            }
        };
        // A retry avoids the devices of the failed attempt; when that leaves nothing, the
        // same devices get the second chance.
        let planned = match self.plan_for(pool, &st.avoid, false) {
            Err(_) if !st.avoid.is_empty() => self.plan_for(pool, &[], false),
            other => other,
        };
        let target = match planned {
            Ok(t) => t,
            Err(why) => {
                // Only a new reason is news (a notification wakes the dispatcher, whose round
                // would wake this controller again).
                if st.waiting.as_deref() != Some(why.as_str()) {
                    tracing::info!(pool_id = %pool.id(), reason = %why, queued = pool.queued(), "on-demand load waits for VRAM");
                    pool.with_load(|s| {
                        s.waiting = Some(why);
                        s.waiting_since.get_or_insert_with(Instant::now);
                    });
                }
                return;
            }
        };
        let evict = match &target {
            Target::Gpu { plan, .. } => plan.evict.clone(),
            Target::Cpu => Vec::new(),
        };
        let Some(victims) = self.claim_victims(&evict) else {
            // A victim took a task between planning and now: plan again at the next wake.
            self.od.wake.notify_one();
            return;
        };
        let rid = pool
            .current()
            .replicas
            .first()
            .map(|r| r.id())
            .unwrap_or_default();
        let number = pool.current().number;
        let (plan, evicted) = match target {
            Target::Cpu => (
                ReplicaPlan {
                    device: "cpu".into(),
                    launch: Some(crate::launch::LaunchPlan {
                        engine: cfg.engine,
                        binary,
                        model: cfg.model.clone().unwrap_or_default().into(),
                        ctx: cfg.ctx,
                        slots: cfg.slots,
                        gpu_layers: 0,
                        cuda_visible_devices: Some(String::new()),
                        tensor_split: None,
                        flags: crate::launch::pool_flags(&cfg),
                    }),
                    endpoint: None,
                    blocked: None,
                },
                Vec::new(),
            ),
            Target::Gpu {
                plan,
                need,
                devices,
                decision,
                fake,
            } => {
                let why = match &plan.layout {
                    Layout::Split(_) => split_reason(&plan.layout, &need),
                    Layout::Single(_) => plan.reason.clone(),
                };
                let why = if plan.evict.is_empty() || matches!(plan.layout, Layout::Single(_)) {
                    why
                } else {
                    format!("{why}; {}", plan.reason)
                };
                log_decision(&cfg, &rid, need.bytes, Some(&plan.layout), &decision, &why);
                self.metrics
                    .placement_decisions
                    .get_or_create(&PlacementLabels {
                        outcome: "placed".into(),
                        pinned: cfg.devices.indices().is_some().to_string(),
                        fallback: "none".into(),
                    })
                    .inc();
                reserve_layout(&self.ledger, &rid, &plan.layout, &need, &devices);
                let victims_pools: Vec<String> =
                    victims.iter().map(|v| v.pool.id().to_owned()).collect();
                (
                    ReplicaPlan {
                        device: layout_device(&plan.layout),
                        launch: Some(launch_on(&cfg, binary, &plan.layout, &devices, fake)),
                        endpoint: None,
                        blocked: None,
                    },
                    victims_pools,
                )
            }
        };
        for v in &victims {
            tracing::info!(pool_id = %v.pool.id(), for_pool = %pool.id(), "evicting an idle on_demand model to make room");
            self.metrics
                .model_evictions
                .get_or_create(&ModelEventLabels {
                    pool_id: v.pool.id().to_owned(),
                    reason: "make_room".into(),
                })
                .inc();
        }
        let generation = self.new_generation(number, cfg.clone(), std::slice::from_ref(&plan));
        for r in &generation.replicas {
            r.update(|s| s.state = ReplicaState::Loading);
        }
        pool.with_load(|s| {
            s.enter(LoadPhase::Loading);
            s.requested = false;
            s.attempt += 1;
            s.reason = reason;
        });
        tracing::info!(pool_id = %pool.id(), reason, device = %plan.device, evicted = ?evicted, queued = pool.queued(), "on-demand load starting");
        pool.set_current(generation.clone());
        let me = self.clone();
        let pool = pool.clone();
        self.tasks.spawn(async move {
            me.run_load(pool, generation, plan, victims, reason, evicted)
                .await;
        });
    }

    /// Marks a closed generation `Unloading` and frees its ledger entries (its engines stop in
    /// [`PoolManager::finish_unload`]). Returns the engines, still running.
    pub(super) fn begin_unload(
        &self,
        pool: &Pool,
        generation: &Generation,
    ) -> Vec<UnloadingEngine> {
        let mut engines = Vec::new();
        for r in &generation.replicas {
            if let Some(a) = r.view().adapter {
                engines.push((r.id(), a));
            }
            r.set_adapter(None);
            r.update(|s| s.state = ReplicaState::Unloading);
            self.ledger.release(&r.id());
        }
        pool.with_load(|s| s.enter(LoadPhase::Unloading));
        engines
    }

    /// Stops an unloading generation (after the unload hook had its say) and puts the pool's
    /// placeholder back.
    pub(super) async fn finish_unload(
        &self,
        pool: &Arc<Pool>,
        generation: &Generation,
        engines: Vec<UnloadingEngine>,
    ) {
        if let (Some(hook), false) = (self.od.unload_hook.get(), engines.is_empty()) {
            let t0 = Instant::now();
            if tokio::time::timeout(UNLOAD_HOOK_LIMIT, hook.before_stop(pool, engines))
                .await
                .is_err()
            {
                tracing::warn!(pool_id = %pool.id(), limit_s = UNLOAD_HOOK_LIMIT.as_secs(), "saving the pool's state before the unload took too long; stopping it anyway");
            }
            tracing::debug!(pool_id = %pool.id(), took_ms = ms(t0.elapsed()), "unload hook done");
        }
        generation.stop().await;
        for r in &generation.replicas {
            self.ledger.release(&r.id());
        }
        let ph = self.placeholder(pool.next_generation(), pool.config(), None);
        pool.set_current(ph);
        pool.set_yielding(false);
        pool.with_load(|s| s.enter(LoadPhase::Unloaded));
        tracing::info!(pool_id = %pool.id(), "on-demand pool unloaded");
        self.od.wake.notify_one();
    }

    /// Stops the evicted engines, launches the new one and follows it until it serves or fails.
    pub(super) async fn run_load(
        self: Arc<Self>,
        pool: Arc<Pool>,
        generation: Arc<Generation>,
        plan: ReplicaPlan,
        victims: Vec<Victim>,
        reason: &'static str,
        evicted: Vec<String>,
    ) {
        for v in victims {
            self.finish_unload(&v.pool, &v.generation, v.engines).await;
        }
        let t0 = Instant::now();
        let devices = plan.device.clone();
        self.spawn_supervisors(&pool, &generation, vec![plan]);
        let cfg = generation.cfg.clone();
        // The supervisor gives up after startup_timeout_s; this is only a backstop.
        let limit = Duration::from_secs(cfg.startup_timeout_s.max(1) + 5);
        let outcome = wait_loaded(&pool, &generation, limit, &self.cancel).await;
        let model = cfg.model.clone().unwrap_or_default();
        match outcome {
            Loaded::Ready => {
                let took = t0.elapsed();
                let took_ms = ms(took);
                // Counted before the pool is `loaded`, so whoever sees it loaded sees the count.
                self.metrics
                    .model_loads
                    .get_or_create(&ModelEventLabels {
                        pool_id: pool.id().to_owned(),
                        reason: reason.into(),
                    })
                    .inc();
                self.metrics
                    .model_load_seconds
                    .get_or_create(&PoolLabels {
                        pool_id: pool.id().to_owned(),
                    })
                    .observe(took.as_secs_f64());
                for r in &generation.replicas {
                    r.touch();
                }
                pool.set_last_error(None);
                pool.with_load(|s| {
                    s.enter(LoadPhase::Loaded);
                    s.attempt = 0;
                    s.avoid.clear();
                    s.failure = None;
                });
                tracing::info!(pool_id = %pool.id(), model = %model, device = %devices, took_ms, reason, evicted = ?evicted, "on-demand model loaded");
                let times = self.od.times.clone();
                let m = model.clone();
                let _ = tokio::task::spawn_blocking(move || times.record(&m, took_ms)).await;
                pool.set_expected_load_ms(self.od.times.expected_ms(&model));
            }
            Loaded::Failed(why) => {
                generation.stop().await;
                for r in &generation.replicas {
                    self.ledger.release(&r.id());
                }
                let attempt = pool.load_status().map_or(2, |s| s.attempt);
                let avoid: Vec<u32> = devices
                    .split('+')
                    .filter_map(|d| d.strip_prefix("gpu")?.parse().ok())
                    .collect();
                if attempt < 2 && !self.cancel.is_cancelled() {
                    tracing::warn!(pool_id = %pool.id(), device = %devices, error = %why, "on-demand load failed; retrying once on another placement");
                    let ph = self.placeholder(pool.next_generation(), cfg.clone(), None);
                    pool.set_current(ph);
                    pool.with_load(|s| {
                        s.enter(LoadPhase::Unloaded);
                        s.avoid = avoid;
                    });
                    self.try_load(&pool, "retry");
                } else {
                    let first = pool
                        .load_status()
                        .map(|s| {
                            s.avoid
                                .iter()
                                .map(|d| format!("gpu{d}"))
                                .collect::<Vec<_>>()
                                .join("+")
                        })
                        .filter(|d| !d.is_empty())
                        .unwrap_or_else(|| devices.clone());
                    let _plan = lock(&self.od.plan_lock);
                    self.fail_load(
                        &pool,
                        format!(
                            "loading `{model}` failed (tried twice: on {first}, then on {devices}): {why}"
                        ),
                    );
                }
            }
            Loaded::Aborted => {
                // Shutdown, or an unload took over: whoever did that stops the engine.
                if self.cancel.is_cancelled() {
                    generation.stop().await;
                }
            }
        }
    }

    /// The pool is `failed` with `why`: its dispatcher ends the waiting tasks with it. Called
    /// with the plan lock held.
    pub(super) fn fail_load(&self, pool: &Arc<Pool>, why: String) {
        tracing::error!(pool_id = %pool.id(), reason = %why, queued = pool.queued(), "on-demand load failed");
        let ph = self.placeholder(pool.next_generation(), pool.config(), Some(&why));
        pool.set_current(ph);
        pool.with_load(|s| {
            s.enter(LoadPhase::Failed);
            s.failure = Some(why);
            s.failure_epoch += 1;
            s.attempt = 0;
            s.avoid.clear();
            s.requested = false;
        });
    }

    /// A task was just queued for `pool_id`: start its load now if it needs one (the
    /// controller would at its next wake-up; doing it here lets the task's 202 say whether the
    /// load started or waits for VRAM, and why).
    pub fn demand(self: &Arc<Self>, pool_id: &str) {
        let Some(pool) = self.pool(pool_id).cloned() else {
            return;
        };
        let Some(st) = pool.load_status() else {
            return;
        };
        let wanted = match st.phase {
            LoadPhase::Unloaded => true,
            LoadPhase::Failed => st.failure_handled >= st.failure_epoch,
            _ => false,
        };
        if wanted {
            self.try_load(&pool, "demand");
        }
    }

    /// Loads on_demand pool `pool_id` now (`POST /v1/pools/{id}/load`) and returns once it
    /// serves; evicts idle models if it must. Errors at once when nothing can make room.
    pub async fn load(self: &Arc<Self>, pool_id: &str) -> Result<LoadReport, LoadError> {
        let pool = self.on_demand_pool(pool_id)?;
        let t0 = Instant::now();
        let start_epoch = pool.load_status().map_or(0, |s| s.failure_epoch);
        if pool.load_phase() == Some(LoadPhase::Loaded) && pool.is_ready() {
            return Ok(self.report(&pool, false, t0, Vec::new()));
        }
        pool.with_load(|s| {
            s.requested = true;
            s.reason = "request";
        });
        self.try_load(&pool, "request");
        let mut changed = pool.subscribe();
        let limit = Duration::from_secs(pool.config().startup_timeout_s.max(1) * 2 + 30);
        let mut evicted = Vec::new();
        loop {
            if self.cancel.is_cancelled() {
                return Err(LoadError::new(
                    LoadErrorKind::ShuttingDown,
                    "the daemon is shutting down",
                ));
            }
            let Some(st) = pool.load_status() else {
                return Err(LoadError::new(LoadErrorKind::NotOnDemand, "not on demand"));
            };
            if st.phase == LoadPhase::Loading && evicted.is_empty() {
                evicted = self.recent_evictions(&pool);
            }
            match st.phase {
                LoadPhase::Loaded if pool.is_ready() => {
                    return Ok(self.report(&pool, true, t0, evicted));
                }
                LoadPhase::Failed if st.failure_epoch > start_epoch => {
                    return Err(LoadError::new(
                        LoadErrorKind::Failed,
                        st.failure.unwrap_or_default(),
                    ));
                }
                LoadPhase::Unloaded | LoadPhase::Failed if st.waiting.is_some() => {
                    pool.with_load(|s| s.requested = false);
                    return Err(LoadError::new(
                        LoadErrorKind::NoRoom,
                        st.waiting.unwrap_or_default(),
                    ));
                }
                _ => {}
            }
            if t0.elapsed() > limit {
                return Err(LoadError::new(
                    LoadErrorKind::Failed,
                    format!(
                        "pool `{pool_id}` did not finish loading within {}s",
                        limit.as_secs()
                    ),
                ));
            }
            tokio::select! {
                r = changed.changed() => if r.is_err() { tokio::time::sleep(TICK).await },
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Pools currently unloading: what the load in progress evicted (best effort, for the
    /// report).
    pub(super) fn recent_evictions(&self, pool: &Pool) -> Vec<String> {
        self.pools
            .iter()
            .filter(|p| p.id() != pool.id() && p.load_phase() == Some(LoadPhase::Unloading))
            .map(|p| p.id().to_owned())
            .collect()
    }

    pub(super) fn report(
        &self,
        pool: &Pool,
        changed: bool,
        t0: Instant,
        evicted: Vec<String>,
    ) -> LoadReport {
        LoadReport {
            pool_id: pool.id().to_owned(),
            state: pool.load_phase().unwrap_or(LoadPhase::Loaded),
            changed,
            took_ms: ms(t0.elapsed()),
            devices: pool
                .replicas()
                .into_iter()
                .map(|r| r.status.device)
                .collect(),
            evicted,
        }
    }

    pub(super) fn on_demand_pool(&self, pool_id: &str) -> Result<Arc<Pool>, LoadError> {
        let pool = self.pool(pool_id).cloned().ok_or_else(|| {
            LoadError::new(LoadErrorKind::UnknownPool, format!("no pool `{pool_id}`"))
        })?;
        if !pool.on_demand() {
            return Err(LoadError::new(
                LoadErrorKind::NotOnDemand,
                format!("pool `{pool_id}` is `load: always`: loaded at start and never unloaded; set `load: on_demand` to load and unload it"),
            ));
        }
        Ok(pool)
    }

    /// Unloads on_demand pool `pool_id` (`POST /v1/pools/{id}/unload`): refuses while a task
    /// runs or waits (`Busy`); returns once the engine is stopped.
    pub async fn unload(self: &Arc<Self>, pool_id: &str) -> Result<LoadReport, LoadError> {
        let pool = self.on_demand_pool(pool_id)?;
        self.unload_now(&pool, "request").await
    }

    pub(super) async fn unload_now(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        reason: &'static str,
    ) -> Result<LoadReport, LoadError> {
        let t0 = Instant::now();
        let generation = {
            let _plan = lock(&self.od.plan_lock);
            let phase = pool.load_phase();
            match phase {
                Some(LoadPhase::Unloaded | LoadPhase::Failed) | None => {
                    return Ok(self.report(pool, false, t0, Vec::new()));
                }
                Some(LoadPhase::Loading) => {
                    return Err(LoadError::new(
                        LoadErrorKind::Busy,
                        format!("pool `{}` is loading for {} queued task(s); unload it once they are done, or with force", pool.id(), pool.queued()),
                    ));
                }
                Some(LoadPhase::Unloading) => None,
                Some(LoadPhase::Loaded) => {
                    let generation = pool.current();
                    let queued = pool.queued();
                    if queued > 0 || !generation.replicas.iter().all(|r| r.close_if_idle()) {
                        for r in &generation.replicas {
                            r.reopen();
                        }
                        let running = generation.in_flight();
                        return Err(LoadError::new(
                            LoadErrorKind::Busy,
                            format!("pool `{}` is busy ({running} running, {queued} queued); nothing was stopped. Wait for its tasks, or unload with force (their tasks end with CANCELED)", pool.id()),
                        ));
                    }
                    let engines = self.begin_unload(pool, &generation);
                    self.metrics
                        .model_evictions
                        .get_or_create(&ModelEventLabels {
                            pool_id: pool.id().to_owned(),
                            reason: reason.into(),
                        })
                        .inc();
                    Some((generation, engines))
                }
            }
        };
        match generation {
            Some((g, engines)) => self.finish_unload(pool, &g, engines).await,
            None => {
                let did_unload = false;
                // Another unload (an eviction) is under way: wait for its end.
                let mut changed = pool.subscribe();
                while pool.load_phase() == Some(LoadPhase::Unloading) {
                    tokio::select! {
                        r = changed.changed() => if r.is_err() { break },
                        _ = tokio::time::sleep(TICK) => {}
                    }
                }
                return Ok(self.report(pool, did_unload, t0, Vec::new()));
            }
        }
        Ok(self.report(pool, true, t0, Vec::new()))
    }
}

/// How a load ended.
pub(super) enum Loaded {
    Ready,
    Failed(String),
    Aborted,
}

/// Waits until every replica of `generation` is ready, one fails, or the load is no longer
/// the pool's business (shutdown, unload).
pub(super) async fn wait_loaded(
    pool: &Pool,
    generation: &Generation,
    limit: Duration,
    cancel: &CancellationToken,
) -> Loaded {
    let mut changed = pool.subscribe();
    let deadline = Instant::now() + limit;
    loop {
        if cancel.is_cancelled() || pool.load_phase() != Some(LoadPhase::Loading) {
            return Loaded::Aborted;
        }
        let st: Vec<_> = generation.replicas.iter().map(|r| r.status()).collect();
        if st.iter().all(|s| s.state == ReplicaState::Ready) {
            return Loaded::Ready;
        }
        if let Some(bad) = st.iter().find(|s| {
            matches!(
                s.state,
                ReplicaState::Failed | ReplicaState::Stopped | ReplicaState::CircuitOpen
            )
        }) {
            return Loaded::Failed(bad.last_error.clone().unwrap_or_else(|| "stopped".into()));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Loaded::Failed(format!(
                "the engine did not answer its health check within {}s",
                limit.as_secs()
            ));
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { tokio::time::sleep(TICK).await },
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(left.min(TICK)) => {}
        }
    }
}
