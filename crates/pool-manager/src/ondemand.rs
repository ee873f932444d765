//! Models on demand (docs/PLACEMENT.md, "Models on demand").
//!
//! An `on_demand` pool starts *unloaded*: its serving generation is a placeholder whose
//! replicas have no engine and hold no VRAM. A controller task (woken when a dispatcher
//! publishes queued work, when a task gives its slot back, and every [`TICK`]) then:
//!
//! - **loads** a pool that has queued work (or a `POST …/load`) and no engine: it plans room
//!   with the pure planner (`orchestrator_core::vram::plan_room`: one GPU, a split, or evicting
//!   idle on_demand models least recently used first on the cards where that helps), records
//!   the plan in the placement ledger at once (the single source of truth, so two loads never
//!   count on the same bytes), stops the evicted engines, then launches the new one;
//! - **waits** when nothing can be freed, with the reason the pool's health, the tasks' 202
//!   and their `metrics` frames show;
//! - **unloads** a loaded pool idle for `idle_unload_s`;
//! - **yields**: a pool whose tasks waited `placement.max_swap_wait_ms` for VRAM held by busy
//!   on_demand pools makes those pools start no new task; once their running tasks end they
//!   are evicted (their queued tasks load them again later, and wait their turn).
//!
//! Never evicted: `always` pools, and replicas with a running task or queued work (unless
//! yielding). A load that fails (the engine exits or misses its health check) is retried once
//! on another placement; then the pool is `failed` and its waiting tasks end with the reason.
//! A bad model file fails at once, without launching anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use orch_config::{EngineKind, PoolConfig};
use orchestrator_core::placement::{place, GpuSnapshot, PlacementRequest};
use orchestrator_core::vram::{plan_room, Layout, Need, Resident, RoomPlan};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use worker_adapters::EngineAdapter;

use crate::load_times::LoadTimes;
use crate::metrics::{ModelEventLabels, PlacementLabels, PoolLabels};
use crate::placement::{
    cards_of, footprint, launch_basics, launch_on, layout_device, log_decision, replica_id,
    reserve_layout, split_need, split_reason, GpuMode, ReplicaPlan, HEADROOM_BYTES,
};
use crate::pool::{Generation, LoadPhase};
use crate::reload::check_gguf;
use crate::{lock, Pool, PoolManager, Replica, ReplicaState};

/// How often the controller looks even when nothing woke it (idle timers, waits).
const TICK: Duration = Duration::from_millis(500);

/// The manager's on-demand state.
pub(crate) struct OnDemand {
    /// Wakes the controller.
    pub(crate) wake: Arc<Notify>,
    /// Expected load time per model.
    pub(crate) times: Arc<LoadTimes>,
    /// Planning and the ledger changes and state changes it leads to happen under this lock.
    plan_lock: Mutex<()>,
    /// `placement.max_swap_wait_ms`.
    max_swap_wait: Duration,
    /// The zero of the LRU clock handed to the planner.
    epoch: Instant,
    /// Told before an unloading pool's engines stop (the daemon saves sessions' KV there).
    pub(crate) unload_hook: std::sync::OnceLock<Arc<dyn UnloadHook>>,
}

/// What an unloading replica leaves behind: its id and the adapter of its engine, still
/// running (for [`UnloadHook::before_stop`]).
pub type UnloadingEngine = (String, Arc<dyn EngineAdapter>);

/// Called before the engines of an unloading `on_demand` pool stop (an eviction, an idle or a
/// requested unload; not a failed engine), while they still serve slot requests: the daemon
/// saves its sessions' KV slots there, to restore them when the pool comes back.
#[async_trait::async_trait]
pub trait UnloadHook: Send + Sync {
    /// `engines` are `pool`'s replicas about to stop, none of them running a task.
    async fn before_stop(&self, pool: &Pool, engines: Vec<UnloadingEngine>);
}

/// The longest an unload waits for [`UnloadHook::before_stop`].
const UNLOAD_HOOK_LIMIT: Duration = Duration::from_secs(60);

impl OnDemand {
    pub(crate) fn new(times: LoadTimes, max_swap_wait: Duration) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            times: Arc::new(times),
            plan_lock: Mutex::new(()),
            max_swap_wait,
            epoch: Instant::now(),
            unload_hook: std::sync::OnceLock::new(),
        }
    }
}

/// Why `POST /v1/pools/{id}/load` or `/unload` did not do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadErrorKind {
    /// No pool with that id.
    UnknownPool,
    /// A `load: always` pool: loaded at start, never unloaded.
    NotOnDemand,
    /// No GPU has room and nothing can be evicted (the message says what holds the VRAM).
    NoRoom,
    /// The load failed (bad model file, engine exited or missed its health check).
    Failed,
    /// Unload: the pool has running or queued tasks (or is loading).
    Busy,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// A refused or failed load or unload.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// What went wrong.
    pub kind: LoadErrorKind,
    /// For people.
    pub message: String,
}

impl LoadError {
    fn new(kind: LoadErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A finished load or unload.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The pool.
    pub pool_id: String,
    /// Its state now.
    pub state: LoadPhase,
    /// False when there was nothing to do (already loaded, already unloaded).
    pub changed: bool,
    /// From the request to the end.
    pub took_ms: u64,
    /// Devices of the loaded replicas (`gpu0`, `gpu0+gpu1` for a split).
    pub devices: Vec<String>,
    /// Pools evicted to make room for this load.
    pub evicted: Vec<String>,
}

/// What evicting a replica takes.
struct Victim {
    pool: Arc<Pool>,
    generation: Arc<Generation>,
    engines: Vec<UnloadingEngine>,
}

/// Where a load goes.
enum Target {
    /// CPU mode (`dev.allow_cpu_inference` without GPUs): nothing to place.
    Cpu,
    /// GPUs.
    Gpu {
        plan: RoomPlan,
        need: Need,
        devices: Vec<gpu_inventory::GpuDevice>,
        decision: orchestrator_core::placement::PlacementDecision,
        fake: bool,
    },
}

/// Fails fast on a model file that cannot load at all (missing, not a file, not GGUF).
fn check_model(cfg: &PoolConfig) -> Result<(), String> {
    let model = cfg.model.clone().unwrap_or_default();
    if cfg.engine == EngineKind::Llamacpp {
        return check_gguf(&model).map_err(|e| e.message);
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Starts the controller on `tasks`; it stops with `cancel` or when the manager is gone.
pub(crate) fn spawn_controller(
    mgr: Weak<PoolManager>,
    wake: Arc<Notify>,
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    tasks.spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            let Some(m) = mgr.upgrade() else { return };
            m.on_demand_round();
        }
    });
}

/// Measures the disk's read rate once (when no earlier run did) and sets every on_demand
/// pool's expected load time.
pub(crate) fn spawn_estimates(mgr: &Arc<PoolManager>) {
    let pools: Vec<Arc<Pool>> = mgr
        .pools
        .iter()
        .filter(|p| p.on_demand())
        .cloned()
        .collect();
    let Some(first) = pools.first().and_then(|p| p.config().model.clone()) else {
        return;
    };
    let times = mgr.od.times.clone();
    for p in &pools {
        p.set_expected_load_ms(times.expected_ms(p.config().model.as_deref().unwrap_or("")));
    }
    if times.has_read_rate() {
        return;
    }
    mgr.tasks.spawn(async move {
        let t = times.clone();
        let _ = tokio::task::spawn_blocking(move || t.probe_read_rate(&first)).await;
        for p in &pools {
            p.set_expected_load_ms(times.expected_ms(p.config().model.as_deref().unwrap_or("")));
        }
    });
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
        Arc::new(Generation {
            number,
            cfg,
            replicas,
            cancel: self.cancel.child_token(),
            tracker: TaskTracker::new(),
        })
    }

    /// One look at every on_demand pool: start wanted loads, unload idle pools, decide who
    /// yields.
    pub(crate) fn on_demand_round(self: &Arc<Self>) {
        if self.cancel.is_cancelled() {
            return;
        }
        for pool in self.pools.iter().filter(|p| p.on_demand()) {
            let Some(st) = pool.load_status() else {
                continue;
            };
            let queued = pool.queued();
            let reason = if st.requested { st.reason } else { "demand" };
            match st.phase {
                LoadPhase::Unloaded if queued > 0 || st.requested => self.try_load(pool, reason),
                LoadPhase::Failed
                    if st.requested || (queued > 0 && st.failure_handled >= st.failure_epoch) =>
                {
                    self.try_load(pool, reason)
                }
                LoadPhase::Unloaded if st.waiting.is_some() => {
                    // The waiting tasks are gone (canceled, expired): nothing waits any more.
                    pool.with_load(|s| {
                        s.waiting = None;
                        s.waiting_since = None;
                    });
                }
                LoadPhase::Loaded
                    if pool
                        .current()
                        .replicas
                        .iter()
                        .all(|r| r.state() == ReplicaState::CircuitOpen) =>
                {
                    self.fail_open_circuit(pool)
                }
                LoadPhase::Loaded => self.maybe_idle_unload(pool),
                _ => {}
            }
        }
        self.update_yields();
    }

    /// A loaded engine that kept crashing (circuit open) will not serve again by itself: the
    /// pool becomes `failed` so that its waiting tasks end, and the next task loads afresh.
    fn fail_open_circuit(self: &Arc<Self>, pool: &Arc<Pool>) {
        let generation = pool.current();
        let why = generation
            .replicas
            .first()
            .and_then(|r| r.status().last_error)
            .unwrap_or_else(|| "the engine kept crashing".into());
        {
            let _plan = lock(&self.od.plan_lock);
            if pool.load_phase() != Some(LoadPhase::Loaded) {
                return;
            }
            // A broken engine: nothing worth saving.
            let _ = self.begin_unload(pool, &generation);
        }
        let me = self.clone();
        let pool = pool.clone();
        self.tasks.spawn(async move {
            generation.stop().await;
            let _plan = lock(&me.od.plan_lock);
            me.fail_load(&pool, why);
        });
    }

    fn maybe_idle_unload(self: &Arc<Self>, pool: &Arc<Pool>) {
        let idle_s = pool.config().idle_unload_s;
        if idle_s == 0 || pool.queued() > 0 || pool.current().in_flight() > 0 {
            return;
        }
        let Some(last) = pool.last_used() else {
            return;
        };
        if last.elapsed() < Duration::from_secs(idle_s) {
            return;
        }
        let me = self.clone();
        let pool = pool.clone();
        self.tasks.spawn(async move {
            match me.unload_now(&pool, "idle").await {
                Ok(r) if !r.changed => {}
                Ok(_) => {
                    tracing::info!(pool_id = %pool.id(), idle_unload_s = idle_s, "on-demand pool unloaded after being idle")
                }
                Err(e) => tracing::debug!(pool_id = %pool.id(), error = %e, "idle unload skipped"),
            }
        });
    }

    /// Pools whose VRAM a pool waiting longer than `max_swap_wait_ms` needs, and that are
    /// busy: they start no new task until evicted.
    fn update_yields(&self) {
        let mut yielding: HashSet<String> = HashSet::new();
        for pool in self.pools.iter().filter(|p| p.on_demand()) {
            let Some(st) = pool.load_status() else {
                continue;
            };
            let waited = st
                .waiting_since
                .is_some_and(|t| t.elapsed() >= self.od.max_swap_wait);
            if !waited || pool.queued() == 0 {
                continue;
            }
            let Ok(Target::Gpu { plan, .. }) = self.plan_for(pool, &[], true) else {
                continue;
            };
            for id in &plan.evict {
                if let Some((p, _)) = self.replica_home(id) {
                    yielding.insert(p.id().to_owned());
                }
            }
        }
        for pool in self.pools.iter().filter(|p| p.on_demand()) {
            pool.set_yielding(yielding.contains(pool.id()));
        }
    }

    /// The pool and generation a replica id belongs to.
    fn replica_home(&self, replica_id: &str) -> Option<(Arc<Pool>, Arc<Generation>)> {
        self.pools.iter().find_map(|p| {
            p.all_generations()
                .into_iter()
                .find(|g| g.replicas.iter().any(|r| r.id() == replica_id))
                .map(|g| (p.clone(), g))
        })
    }

    /// Every replica holding VRAM in the ledger, with whether it may be evicted now.
    /// `busy_too`: count busy on_demand replicas as evictable (who would have to yield).
    fn residents(&self, busy_too: bool) -> Vec<Resident> {
        let mut parts: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        for (id, d, b) in self.ledger.holdings() {
            parts.entry(id).or_default().push((d, b));
        }
        let mut out = Vec::new();
        for pool in &self.pools {
            let current = pool.current();
            let st = pool.load_status();
            for g in pool.all_generations() {
                for r in &g.replicas {
                    let Some(parts) = parts.remove(&r.id()) else {
                        continue;
                    };
                    let running = g.in_flight();
                    let queued = pool.queued();
                    let why_not = match &st {
                        None => Some("load: always".to_owned()),
                        Some(_) if g.number != current.number => {
                            Some("a reload in progress".to_owned())
                        }
                        // Work first: it is what a user can wait for.
                        Some(_) if running > 0 && !busy_too => Some(format!("{running} running")),
                        Some(_) if queued > 0 && !pool.is_yielding() && !busy_too => {
                            Some(format!("{queued} queued"))
                        }
                        Some(s) if s.phase != LoadPhase::Loaded => {
                            Some(s.phase.as_str().to_owned())
                        }
                        Some(_) => None,
                    };
                    out.push(Resident {
                        id: r.id(),
                        pool_id: pool.id().to_owned(),
                        parts,
                        last_used: ms(r.last_used().saturating_duration_since(self.od.epoch)),
                        evictable: why_not.is_none(),
                        why_not,
                    });
                }
            }
        }
        // Entries of replicas no pool knows any more (should not happen): they hold memory.
        for (id, parts) in parts {
            out.push(Resident {
                pool_id: id.clone(),
                id,
                parts,
                last_used: 0,
                evictable: false,
                why_not: Some("unknown".into()),
            });
        }
        out
    }

    /// Where a replica of `pool` would go now, avoiding `avoid` devices.
    fn plan_for(&self, pool: &Pool, avoid: &[u32], busy_too: bool) -> Result<Target, String> {
        let GpuMode::Gpus { fake, .. } = &self.gpu else {
            return Ok(Target::Cpu);
        };
        let cfg = pool.config();
        let need_bytes = footprint(&cfg);
        let devices = self.ledger.usable(self.gpu.snapshot());
        let free_slots = self.free_slots_by_device();
        let snapshots: Vec<GpuSnapshot> = devices
            .iter()
            .map(|d| GpuSnapshot {
                index: d.index,
                name: d.name.clone(),
                total_bytes: d.total_bytes,
                free_bytes: d.free_bytes,
                utilization_pct: d.utilization_pct,
                free_slots: free_slots.get(&d.index).copied().unwrap_or(0),
            })
            .collect();
        let req = PlacementRequest {
            need_bytes,
            headroom_bytes: HEADROOM_BYTES,
            mask: cfg.devices.indices().map(<[u32]>::to_vec),
        };
        let decision = place(&snapshots, &self.ledger.reservations(), &req);
        let mut cards = cards_of(&decision);
        for c in &mut cards {
            c.allowed = c.allowed && !avoid.contains(&c.index);
        }
        let need = split_need(&cfg, need_bytes);
        let plan = plan_room(&cards, &self.residents(busy_too), &need)?;
        Ok(Target::Gpu {
            plan,
            need,
            devices,
            decision,
            fake: *fake,
        })
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

    /// Closes the replicas of the pools to evict, atomically with dispatch: each must have no
    /// task running (and its pool nothing queued unless it yields). Marks them `Unloading` and
    /// frees their ledger entries. `None` (nothing changed) when one turned busy.
    fn claim_victims(&self, evict: &[String]) -> Option<Vec<Victim>> {
        let mut victims: Vec<Victim> = Vec::new();
        for id in evict {
            let (pool, generation) = self.replica_home(id)?;
            if victims.iter().any(|v| Arc::ptr_eq(&v.pool, &pool)) {
                continue;
            }
            victims.push(Victim {
                pool,
                generation,
                engines: Vec::new(),
            });
        }
        let mut closed: Vec<Arc<Replica>> = Vec::new();
        let mut ok = true;
        for v in &victims {
            if v.pool.queued() > 0 && !v.pool.is_yielding() {
                ok = false;
                break;
            }
            for r in &v.generation.replicas {
                if r.close_if_idle() {
                    closed.push(r.clone());
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
        }
        if !ok {
            for r in closed {
                r.reopen();
            }
            return None;
        }
        for v in &mut victims {
            v.engines = self.begin_unload(&v.pool, &v.generation);
        }
        Some(victims)
    }

    /// Marks a closed generation `Unloading` and frees its ledger entries (its engines stop in
    /// [`PoolManager::finish_unload`]). Returns the engines, still running.
    fn begin_unload(&self, pool: &Pool, generation: &Generation) -> Vec<UnloadingEngine> {
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
    async fn finish_unload(
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
    async fn run_load(
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
    fn fail_load(&self, pool: &Arc<Pool>, why: String) {
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
    fn recent_evictions(&self, pool: &Pool) -> Vec<String> {
        self.pools
            .iter()
            .filter(|p| p.id() != pool.id() && p.load_phase() == Some(LoadPhase::Unloading))
            .map(|p| p.id().to_owned())
            .collect()
    }

    fn report(&self, pool: &Pool, changed: bool, t0: Instant, evicted: Vec<String>) -> LoadReport {
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

    fn on_demand_pool(&self, pool_id: &str) -> Result<Arc<Pool>, LoadError> {
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

    async fn unload_now(
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
enum Loaded {
    Ready,
    Failed(String),
    Aborted,
}

/// Waits until every replica of `generation` is ready, one fails, or the load is no longer
/// the pool's business (shutdown, unload).
async fn wait_loaded(
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use async_trait::async_trait;
    use gpu_inventory::{GpuInventory, StaticInventory};
    use orch_config::{Config, LoadPolicy, SplitPolicy};
    use worker_adapters::{AdapterError, EngineInfo, EngineStream, GenerateRequest};

    use super::*;
    use crate::{AdapterFactory, StartOptions};

    /// An engine that is healthy as soon as asked (the process behind it is `sleep`).
    struct Healthy(String);

    #[async_trait]
    impl EngineAdapter for Healthy {
        fn engine(&self) -> &'static str {
            "llamacpp"
        }
        fn endpoint(&self) -> &str {
            &self.0
        }
        async fn health(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn info(&self) -> Result<EngineInfo, AdapterError> {
            Ok(EngineInfo::default())
        }
        async fn generate(&self, _req: GenerateRequest) -> Result<EngineStream, AdapterError> {
            Err(AdapterError::Unsupported("generate"))
        }
    }

    struct Rig {
        mgr: Arc<PoolManager>,
        _dir: tempfile::TempDir,
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Pools on two fake 1400 MiB cards (888 MiB each after headroom): a 1 MiB model with 1024
    /// tokens of context needs ~769 MiB, so each card holds one pool. `tweak` adjusts pools.
    fn rig(ids: &[&str], tweak: impl Fn(&mut PoolConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(&model, bytes).unwrap();
        let engine = script(dir.path(), "engine", "exec sleep 100000");
        let mut cfg = Config {
            data_dir: Some(dir.path().join("data")),
            ..Config::default()
        };
        cfg.placement.max_swap_wait_ms = 86_400_000;
        for id in ids {
            let mut p = PoolConfig::llamacpp(id, model.to_str().unwrap(), Some(&engine));
            p.load = LoadPolicy::OnDemand;
            p.ctx = 1024;
            p.slots = 1;
            p.startup_timeout_s = 30;
            tweak(&mut p);
            cfg.pools.push(p);
        }
        let inventory: Arc<dyn GpuInventory> =
            Arc::new(StaticInventory::from_spec("1400MiB:A,1400MiB:B").unwrap());
        let adapters: AdapterFactory = Arc::new(|_p: &PoolConfig, url: &str| {
            Ok(Arc::new(Healthy(url.to_owned())) as Arc<dyn EngineAdapter>)
        });
        let mgr = PoolManager::start_with(
            &cfg,
            StartOptions {
                inventory: Some(inventory),
                adapters: Some(adapters),
            },
        )
        .unwrap();
        Rig { mgr, _dir: dir }
    }

    impl Rig {
        fn pool(&self, id: &str) -> Arc<Pool> {
            self.mgr.pool(id).cloned().unwrap()
        }

        /// Polls until `ok`, logging the time it took; fails after a generous limit.
        async fn until(&self, what: &str, ok: impl Fn() -> bool) {
            let t0 = Instant::now();
            while !ok() {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{what}: not after {:?}",
                    t0.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!("{what}: after {:?}", t0.elapsed());
        }

        async fn phase(&self, id: &str, want: LoadPhase) {
            let p = self.pool(id);
            self.until(&format!("{id} {want:?}"), || {
                p.load_phase() == Some(want) && (want != LoadPhase::Loaded || p.is_ready())
            })
            .await;
        }

        /// What a task does: queue, get loaded, run (a lease taken and given back), leave.
        async fn serve(&self, id: &str) {
            let p = self.pool(id);
            p.set_queued(1);
            self.phase(id, LoadPhase::Loaded).await;
            let lease = p.replicas()[0].try_lease().unwrap();
            p.set_queued(0);
            drop(lease);
        }

        fn device(&self, id: &str) -> String {
            self.pool(id).replicas()[0].status.device.clone()
        }

        /// Bytes the ledger holds per device: never more than a card's 888 MiB.
        fn check_ledger(&self) {
            let mut per: HashMap<u32, u64> = HashMap::new();
            for (_, d, b) in self.mgr.ledger.holdings() {
                *per.entry(d).or_default() += b;
            }
            for (d, b) in per {
                assert!(b <= 888 << 20, "gpu{d} overcommitted: {b}");
            }
        }
    }

    #[tokio::test]
    async fn pools_start_unloaded_load_on_demand_and_take_turns_least_recently_used_first() {
        let r = rig(&["a", "b", "c"], |_| {});
        for id in ["a", "b", "c"] {
            let h = r.pool(id).health();
            assert_eq!(
                h.on_demand.as_ref().map(|o| o.state),
                Some(LoadPhase::Unloaded)
            );
            assert_eq!(h.replicas[0].state, ReplicaState::Unloaded);
            assert!(!h.live, "no engine");
            assert!(r.pool(id).expected_load_ms() >= crate::ENGINE_START_MS);
        }
        assert!(
            r.mgr.ledger.holdings().is_empty(),
            "unloaded pools hold no VRAM"
        );
        r.serve("a").await;
        r.serve("b").await;
        assert_ne!(r.device("a"), r.device("b"), "one pool per card");
        r.check_ledger();
        // c needs a card: a was used longest ago, so a goes.
        r.serve("c").await;
        assert_eq!(r.pool("a").load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(r.pool("b").load_phase(), Some(LoadPhase::Loaded));
        r.check_ledger();
        // a again: now b is the least recently used.
        r.serve("a").await;
        assert_eq!(r.pool("b").load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(r.pool("c").load_phase(), Some(LoadPhase::Loaded));
        r.check_ledger();
        let m = &r.mgr.metrics;
        let evictions = |id: &str| {
            m.model_evictions
                .get_or_create(&ModelEventLabels {
                    pool_id: id.into(),
                    reason: "make_room".into(),
                })
                .get()
        };
        assert_eq!((evictions("a"), evictions("b"), evictions("c")), (1, 1, 0));
        let loads = m
            .model_loads
            .get_or_create(&ModelEventLabels {
                pool_id: "a".into(),
                reason: "demand".into(),
            })
            .get();
        assert_eq!(loads, 2);
        // Measured load times are remembered in the data directory.
        let times =
            std::fs::read_to_string(r._dir.path().join("data/model_load_times.json")).unwrap();
        assert!(times.contains("m.gguf"), "{times}");
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_busy_pool_is_never_evicted_and_the_waiting_pool_says_why() {
        let r = rig(&["a", "b", "c"], |_| {});
        r.serve("a").await;
        r.serve("b").await;
        let (a, b, c) = (r.pool("a"), r.pool("b"), r.pool("c"));
        // a runs a task, b has one queued: neither may go.
        let lease = a.replicas()[0].try_lease().unwrap();
        b.set_queued(1);
        c.set_queued(1);
        r.until("c waits with a reason", || c.load_waiting().is_some())
            .await;
        let why = c.load_waiting().unwrap_or_default();
        assert!(
            why.contains("1 running") && why.contains("1 queued"),
            "{why}"
        );
        assert_eq!(c.health().on_demand.and_then(|o| o.waiting), Some(why));
        assert!(c.pending_load_ms() >= c.expected_load_ms());
        assert_eq!(a.load_phase(), Some(LoadPhase::Loaded));
        // a's task ends: a is idle now and goes.
        drop(lease);
        r.phase("c", LoadPhase::Loaded).await;
        assert_eq!(a.load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(
            b.load_phase(),
            Some(LoadPhase::Loaded),
            "b still has queued work"
        );
        assert_eq!(c.pending_load_ms(), 0);
        r.check_ledger();
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_pool_waiting_past_max_swap_wait_makes_the_busy_one_yield() {
        let r = rig(&["a", "b", "c"], |_| {});
        r.serve("a").await;
        r.serve("b").await;
        let (a, c) = (r.pool("a"), r.pool("c"));
        // a and b always have work; c waits.
        a.set_queued(3);
        r.pool("b").set_queued(3);
        let lease = a.replicas()[0].try_lease().unwrap();
        c.set_queued(1);
        r.until("c waits", || c.load_waiting().is_some()).await;
        assert!(!a.is_yielding(), "max_swap_wait_ms not reached");
        // Waited long enough (the rig's limit is a day; pretend it passed).
        c.with_load(|s| s.waiting_since = Some(Instant::now() - Duration::from_secs(86_401)));
        r.until("a or b yields", || {
            a.is_yielding() || r.pool("b").is_yielding()
        })
        .await;
        let yielder = if a.is_yielding() { "a" } else { "b" };
        assert_eq!(yielder, "a", "the least recently used one yields");
        // It finishes its running task, then goes, queued work and all.
        drop(lease);
        r.phase("c", LoadPhase::Loaded).await;
        assert_eq!(a.load_phase(), Some(LoadPhase::Unloaded));
        assert!(!a.is_yielding());
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn idle_pools_unload_after_idle_unload_s() {
        let r = rig(&["a"], |p| p.idle_unload_s = 1);
        r.serve("a").await;
        let t0 = Instant::now();
        r.phase("a", LoadPhase::Unloaded).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert!(r.mgr.ledger.holdings().is_empty());
        let idle = r
            .mgr
            .metrics
            .model_evictions
            .get_or_create(&ModelEventLabels {
                pool_id: "a".into(),
                reason: "idle".into(),
            })
            .get();
        assert_eq!(idle, 1);
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_pool_too_big_for_one_card_is_split_across_two() {
        // 64 slots × 65536 tokens of 32 B (the fallback for a model without a shape) = 128 MiB
        // of KV: 897 MiB on one card (888 available), 129 + 2 × 768 MiB split.
        let r = rig(&["big", "never"], |p| {
            p.ctx = 65536;
            p.slots = 64;
            if p.id == "never" {
                p.split = SplitPolicy::Never;
            }
        });
        r.serve("big").await;
        assert_eq!(r.device("big"), "gpu0+gpu1");
        let rid = r.pool("big").replicas()[0].status.id.clone();
        let parts: Vec<_> = r
            .mgr
            .ledger
            .holdings()
            .into_iter()
            .filter(|h| h.0 == rid)
            .collect();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(r.mgr.ledger.holds(&rid));
        r.check_ledger();
        // Unloading it frees both cards.
        r.mgr.unload("big").await.unwrap();
        assert!(r.mgr.ledger.holdings().is_empty());
        // split: never fits nowhere: it waits and says so.
        let never = r.pool("never");
        never.set_queued(1);
        r.until("never waits", || never.load_waiting().is_some())
            .await;
        assert!(never
            .load_waiting()
            .unwrap_or_default()
            .contains("split: never"));
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_load_that_fails_is_retried_once_elsewhere_then_the_pool_fails_with_the_output() {
        let r = rig(&["bad", "ok"], |p| {
            if p.id == "bad" {
                let dir = std::path::Path::new(p.engine_binary.as_deref().unwrap())
                    .parent()
                    .unwrap()
                    .to_owned();
                p.engine_binary = Some(script(
                    &dir,
                    "dying",
                    "echo 'ggml_cuda: out of memory allocating 4242 MiB'; exit 1",
                ));
            }
        });
        let bad = r.pool("bad");
        bad.set_queued(1);
        r.phase("bad", LoadPhase::Failed).await;
        let (_, why) = bad.load_failure().unwrap();
        assert!(
            why.contains("m.gguf") && why.contains("tried twice"),
            "{why}"
        );
        assert!(
            why.contains("on gpu0, then on gpu1") || why.contains("on gpu1, then on gpu0"),
            "the retry went to the other card: {why}"
        );
        assert!(
            why.contains("out of memory allocating 4242 MiB"),
            "the engine's output: {why}"
        );
        assert!(
            r.mgr.ledger.holdings().is_empty(),
            "the ledger let go of both attempts"
        );
        assert_eq!(bad.health().replicas[0].state, ReplicaState::Failed);
        // Other pools are untouched and still load.
        r.serve("ok").await;
        // A new task after the dispatcher ended the waiting ones tries again.
        bad.failure_handled(1);
        r.phase("bad", LoadPhase::Failed).await;
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_model_fails_at_once_naming_the_file_and_busy_unloads_are_refused() {
        let r = rig(&["gone", "busy"], |p| {
            if p.id == "gone" {
                p.model = Some("/nonexistent/model.gguf".into());
            }
        });
        let gone = r.pool("gone");
        let e = r.mgr.load("gone").await.unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Failed);
        assert!(e.message.contains("/nonexistent/model.gguf"), "{e}");
        assert_eq!(gone.load_phase(), Some(LoadPhase::Failed));
        // An explicit load, then an unload refused while a task runs, then allowed.
        let rep = r.mgr.load("busy").await.unwrap();
        assert!(rep.changed && rep.devices[0].starts_with("gpu"), "{rep:?}");
        let busy = r.pool("busy");
        let lease = busy.replicas()[0].try_lease().unwrap();
        let e = r.mgr.unload("busy").await.unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Busy);
        assert!(e.message.contains("1 running"), "{e}");
        assert!(busy.is_ready(), "nothing stopped");
        drop(lease);
        let rep = r.mgr.unload("busy").await.unwrap();
        assert_eq!(rep.state, LoadPhase::Unloaded);
        assert!(
            !r.mgr.unload("busy").await.unwrap().changed,
            "already unloaded"
        );
        r.mgr.shutdown().await;
    }
}
