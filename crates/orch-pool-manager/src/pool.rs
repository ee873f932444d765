//! A pool: replicas of one engine serving one model, organised in generations.
//!
//! The replicas that serve are the *current* generation. A reload builds an *incoming*
//! generation beside it (new processes, new ports), and only when every new replica answers
//! its health check swaps it in; the old generation then *retires*: it takes no new task,
//! finishes its in-flight ones (or runs out of grace) and stops. Each generation has its own
//! configuration (model), replicas, cancellation token and task tracker, so stopping one never
//! touches another.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use orch_config::PoolConfig;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lock;
use crate::replica::{Replica, ReplicaState, ReplicaStatus, ReplicaView};

/// One set of replicas started together on one configuration.
pub(crate) struct Generation {
    /// 0 at start, +1 per reload attempt.
    pub number: u64,
    /// The configuration these replicas run (a reload changes `model`).
    pub cfg: Arc<PoolConfig>,
    /// The replicas.
    pub replicas: Vec<Arc<Replica>>,
    /// Stops this generation's supervisors (and so its engines).
    pub cancel: CancellationToken,
    /// This generation's supervisor tasks.
    pub tracker: TaskTracker,
}

impl Generation {
    /// Generation `number` of `cfg` with these replicas (supervisors are started later, under
    /// a child token of `parent`, so stopping the manager stops every generation).
    pub(crate) fn new(
        number: u64,
        cfg: Arc<PoolConfig>,
        replicas: Vec<Arc<Replica>>,
        parent: &CancellationToken,
    ) -> Arc<Generation> {
        Arc::new(Generation {
            number,
            cfg,
            replicas,
            cancel: parent.child_token(),
            tracker: TaskTracker::new(),
        })
    }

    /// Stops every engine of this generation and waits until they are gone.
    pub(crate) async fn stop(&self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }

    /// Tasks running on this generation's replicas.
    pub(crate) fn in_flight(&self) -> usize {
        self.replicas.iter().map(|r| r.in_flight()).sum()
    }
}

struct Generations {
    current: Arc<Generation>,
    incoming: Option<Arc<Generation>>,
    retiring: Vec<Arc<Generation>>,
}

#[derive(Default)]
struct DrainState {
    /// Bumped by every drain and resume, so a deadline enforcer knows it is still in charge.
    epoch: u64,
    /// Wall-clock deadline (ms since the Unix epoch) of the drain in force.
    deadline_ms: Option<u64>,
}

/// Health summary of a pool.
#[derive(Clone, Debug, Serialize)]
pub struct PoolHealth {
    /// Some replica process exists or the endpoint is configured.
    pub live: bool,
    /// Some replica of the serving generation answers its health check.
    pub ready: bool,
    /// Draining: no new work admitted.
    pub draining: bool,
    /// When the drain in force cancels what is left (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_deadline_ms: Option<u64>,
    /// The model the serving generation runs.
    pub model: Option<String>,
    /// The serving generation (0 at start, higher after reloads).
    pub generation: u64,
    /// Replicas of the serving generation.
    pub replicas: Vec<ReplicaStatus>,
    /// Replicas a reload in progress is starting (not serving yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incoming: Vec<ReplicaStatus>,
    /// Replicas a reload replaced, finishing their in-flight tasks before they stop.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<ReplicaStatus>,
    /// The most recent problem: a failed reload (`reload ... rolled back: ...`), an open
    /// circuit, a placement failure, or a replica's last error.
    pub last_error: Option<String>,
    /// `load: on_demand` pools only: where the pool is in its load life.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandHealth>,
}

/// Where an `on_demand` pool is in its load life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadPhase {
    /// No engine, no VRAM.
    Unloaded,
    /// Placed; the engine starts and loads the model.
    Loading,
    /// The engine serves (or restarts after a crash, like any replica).
    Loaded,
    /// The engine is being stopped.
    Unloading,
    /// The last load failed; the next task (or `POST /v1/pools/{id}/load`) tries again.
    Failed,
}

impl LoadPhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Loaded => "loaded",
            Self::Unloading => "unloading",
            Self::Failed => "failed",
        }
    }
}

/// The `on_demand` part of a pool's health.
#[derive(Clone, Debug, Serialize)]
pub struct OnDemandHealth {
    /// What a load of this pool's model is expected to take (measured, else estimated from
    /// the file size and the disk's read rate).
    pub expected_load_ms: u64,
    /// Since the loaded engine last served, while it is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Seconds without work before an unload (0: never).
    pub idle_unload_s: u64,
    /// Tasks waiting in the pool's queue.
    pub queued: usize,
    /// The load life.
    pub state: LoadPhase,
    /// Why tasks wait and the load has not started (no room, and what holds the VRAM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// The load life of an `on_demand` pool, changed only under the manager's plan lock.
#[derive(Clone, Debug)]
pub(crate) struct LoadStatus {
    pub phase: LoadPhase,
    /// When `phase` began.
    pub since: Instant,
    /// Why a wanted load cannot start yet.
    pub waiting: Option<String>,
    /// Since when it waits (for `max_swap_wait_ms`).
    pub waiting_since: Option<Instant>,
    /// The last failure.
    pub failure: Option<String>,
    /// Bumped at each failure; the dispatcher fails the waiting tasks once per epoch.
    pub failure_epoch: u64,
    /// The epoch whose waiting tasks the dispatcher has ended; until then a failed pool's
    /// queue does not start another load.
    pub failure_handled: u64,
    /// `POST /v1/pools/{id}/load` asked for a load.
    pub requested: bool,
    /// Attempts of the load in progress (one retry on another placement).
    pub attempt: u32,
    /// Devices of the attempt that failed, avoided by the retry.
    pub avoid: Vec<u32>,
    /// Why the load in progress was started (`demand`, `request`), for metrics.
    pub reason: &'static str,
}

impl LoadStatus {
    fn new() -> Self {
        Self {
            phase: LoadPhase::Unloaded,
            since: Instant::now(),
            waiting: None,
            waiting_since: None,
            failure: None,
            failure_epoch: 0,
            failure_handled: 0,
            requested: false,
            attempt: 0,
            avoid: Vec::new(),
            reason: "demand",
        }
    }

    /// Moves to `phase` (and clears the wait).
    pub(crate) fn enter(&mut self, phase: LoadPhase) {
        self.phase = phase;
        self.since = Instant::now();
        self.waiting = None;
        self.waiting_since = None;
    }
}

/// Replicas of one engine serving one model.
pub struct Pool {
    id: String,
    engine: &'static str,
    gens: Mutex<Generations>,
    changed: watch::Sender<u64>,
    draining: AtomicBool,
    drain: Mutex<DrainState>,
    last_error: Mutex<Option<String>>,
    next_generation: AtomicU64,
    /// One reload at a time.
    pub(crate) reload_lock: tokio::sync::Mutex<()>,
    /// `on_demand` pools: the load life.
    load: Option<Mutex<LoadStatus>>,
    /// Tasks waiting in the dispatcher's queue (published by the dispatcher).
    queued: AtomicUsize,
    /// Another pool waited `max_swap_wait_ms` for this one's VRAM: start no new task here.
    yielding: AtomicBool,
    /// A forced unload is under way (see [`Pool::hold_for_unload`]).
    held: AtomicBool,
    /// What a load of the model is expected to take.
    expected_load_ms: AtomicU64,
    /// Wakes the manager's on-demand controller (demand, work finished).
    wake: OnceLock<Arc<Notify>>,
}

impl Pool {
    pub(crate) fn new(current: Arc<Generation>) -> Self {
        let cfg = current.cfg.clone();
        Self {
            load: cfg.on_demand().then(|| Mutex::new(LoadStatus::new())),
            queued: AtomicUsize::new(0),
            yielding: AtomicBool::new(false),
            held: AtomicBool::new(false),
            expected_load_ms: AtomicU64::new(0),
            wake: OnceLock::new(),
            id: cfg.id.clone(),
            engine: cfg.engine.as_str(),
            gens: Mutex::new(Generations {
                current,
                incoming: None,
                retiring: Vec::new(),
            }),
            changed: watch::channel(0).0,
            draining: AtomicBool::new(false),
            drain: Mutex::new(DrainState::default()),
            last_error: Mutex::new(None),
            next_generation: AtomicU64::new(1),
            reload_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The pool's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The configuration of the serving generation (its `model` follows reloads).
    pub fn config(&self) -> Arc<PoolConfig> {
        self.current().cfg.clone()
    }

    /// Engine kind name.
    pub fn engine(&self) -> &'static str {
        self.engine
    }

    pub(crate) fn current(&self) -> Arc<Generation> {
        lock(&self.gens).current.clone()
    }

    /// Whether `number` is the serving generation.
    pub(crate) fn is_current(&self, number: u64) -> bool {
        lock(&self.gens).current.number == number
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::SeqCst)
    }

    pub(crate) fn set_incoming(&self, g: Option<Arc<Generation>>) {
        lock(&self.gens).incoming = g;
        self.notify();
    }

    /// Makes `g` the serving generation; the old one moves to `retiring`. Returns the old one.
    pub(crate) fn swap_in(&self, g: Arc<Generation>) -> Arc<Generation> {
        let old = {
            let mut gens = lock(&self.gens);
            gens.incoming = None;
            let old = std::mem::replace(&mut gens.current, g);
            gens.retiring.push(old.clone());
            old
        };
        self.notify();
        old
    }

    /// Replaces the serving generation without retiring it: an on_demand pool's placeholder
    /// (no engine) and its loaded generation take turns.
    pub(crate) fn set_current(&self, g: Arc<Generation>) {
        lock(&self.gens).current = g;
        self.notify();
    }

    /// Whether the pool is `load: on_demand`.
    pub fn on_demand(&self) -> bool {
        self.load.is_some()
    }

    /// The load life of an on_demand pool (`None` for `always` pools).
    pub fn load_phase(&self) -> Option<LoadPhase> {
        self.load.as_ref().map(|l| lock(l).phase)
    }

    pub(crate) fn load_status(&self) -> Option<LoadStatus> {
        self.load.as_ref().map(|l| lock(l).clone())
    }

    /// Changes the load life (on_demand pools; nothing for `always` ones) and tells watchers.
    pub(crate) fn with_load<R>(&self, f: impl FnOnce(&mut LoadStatus) -> R) -> Option<R> {
        let r = self.load.as_ref().map(|l| f(&mut lock(l)));
        self.notify();
        r
    }

    pub(crate) fn set_wake(&self, wake: Arc<Notify>) {
        let _ = self.wake.set(wake);
    }

    pub(crate) fn wake_controller(&self) {
        if let Some(w) = self.wake.get() {
            w.notify_one();
        }
    }

    /// The dispatcher publishes how many tasks wait in its queue: for an on_demand pool,
    /// queued work with no ready replica is what starts a load, and queued work keeps a
    /// loaded model from being evicted.
    pub fn set_queued(&self, n: usize) {
        let before = self.queued.swap(n, Ordering::SeqCst);
        // Only a change: the controller's own wake-ups (a slot given back, an unload done,
        // its tick) cover the rest, and waking it on every dispatcher round would make the
        // two wake each other forever while a task waits for VRAM.
        if self.on_demand() && before != n {
            self.wake_controller();
        }
    }

    /// Tasks waiting in the pool's queue, as last published by its dispatcher.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    /// Whether the pool must start no new task: another pool has waited `max_swap_wait_ms`
    /// for its VRAM, so it finishes its running tasks and is then evicted; or a forced
    /// unload is under way.
    pub fn is_yielding(&self) -> bool {
        self.yielding.load(Ordering::SeqCst) || self.held.load(Ordering::SeqCst)
    }

    /// A forced unload (`POST …/unload {"force": true}`) holds the pool while its canceled
    /// tasks end: no new task starts, and the serving replicas show `draining`. `false` ends
    /// the hold (after the unload, or when it was called off).
    pub fn hold_for_unload(&self, on: bool) {
        self.held.store(on, Ordering::SeqCst);
        for r in &self.current().replicas {
            r.update(|s| match (on, s.state) {
                (true, ReplicaState::Ready) => s.state = ReplicaState::Draining,
                (false, ReplicaState::Draining) => s.state = ReplicaState::Ready,
                _ => {}
            });
        }
        self.notify();
    }

    pub(crate) fn set_yielding(&self, on: bool) {
        if self.yielding.swap(on, Ordering::SeqCst) != on {
            if on {
                tracing::info!(pool_id = %self.id, "pool yields: another pool waited max_swap_wait_ms for its VRAM; no new task starts here until it is evicted");
            }
            self.notify();
        }
    }

    /// What loading this pool's model is expected to take, in ms: measured on earlier loads
    /// (remembered across restarts), else estimated from the file size and the disk's read
    /// rate. 0 for `always` pools.
    pub fn expected_load_ms(&self) -> u64 {
        self.expected_load_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_expected_load_ms(&self, ms: u64) {
        self.expected_load_ms.store(ms, Ordering::Relaxed);
    }

    /// The part of a task's predicted start that is the pool's load: 0 once a replica is
    /// ready (and for `always` pools), what is left of the expected load time while loading,
    /// the whole expected time while unloaded.
    pub fn pending_load_ms(&self) -> u64 {
        let Some(st) = self.load_status() else {
            return 0;
        };
        if self.is_ready() {
            return 0;
        }
        let expected = self.expected_load_ms();
        match st.phase {
            LoadPhase::Loading => expected
                .saturating_sub(u64::try_from(st.since.elapsed().as_millis()).unwrap_or(u64::MAX)),
            _ => expected,
        }
    }

    /// An on_demand pool's failed load: `(epoch, reason)` while the pool is `failed`.
    pub fn load_failure(&self) -> Option<(u64, String)> {
        let st = self.load_status()?;
        if st.phase != LoadPhase::Failed {
            return None;
        }
        Some((st.failure_epoch, st.failure.unwrap_or_default()))
    }

    /// The dispatcher ended the tasks waiting on failure `epoch`; new tasks may load again.
    pub fn failure_handled(&self, epoch: u64) {
        self.with_load(|st| st.failure_handled = st.failure_handled.max(epoch));
        self.wake_controller();
    }

    /// Why an on_demand pool's tasks wait without a load in progress (no room on any GPU, and
    /// what holds the memory).
    pub fn load_waiting(&self) -> Option<String> {
        self.load_status()?.waiting
    }

    /// When a task last ran on the serving replicas (their creation before that).
    pub(crate) fn last_used(&self) -> Option<Instant> {
        self.current().replicas.iter().map(|r| r.last_used()).max()
    }

    pub(crate) fn forget_retired(&self, number: u64) {
        lock(&self.gens).retiring.retain(|g| g.number != number);
        self.notify();
    }

    /// Every generation alive (serving, incoming, retiring), for shutdown.
    pub(crate) fn all_generations(&self) -> Vec<Arc<Generation>> {
        let g = lock(&self.gens);
        let mut v = vec![g.current.clone()];
        v.extend(g.incoming.clone());
        v.extend(g.retiring.iter().cloned());
        v
    }

    /// Snapshots of the serving replicas.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        self.current().replicas.iter().map(|r| r.view()).collect()
    }

    /// Whether some serving replica answers its health check.
    pub fn is_ready(&self) -> bool {
        self.current()
            .replicas
            .iter()
            .any(|r| r.state() == ReplicaState::Ready)
    }

    /// Whether the pool stopped admitting work.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Stops (without a deadline) or resumes admitting work.
    pub fn set_draining(&self, on: bool) {
        if on {
            self.start_drain(None);
        } else {
            self.resume();
        }
    }

    /// Stops admitting work until [`Pool::resume`] (or a successful reload). Returns the drain's
    /// epoch: whoever enforces `deadline_ms` (ms since the Unix epoch) stays in charge only while
    /// [`Pool::drain_epoch`] still returns it.
    pub fn start_drain(&self, deadline_ms: Option<u64>) -> u64 {
        let epoch = {
            let mut d = lock(&self.drain);
            d.epoch += 1;
            d.deadline_ms = deadline_ms;
            self.draining.store(true, Ordering::SeqCst);
            d.epoch
        };
        tracing::info!(pool_id = %self.id, ?deadline_ms, "pool draining: no longer admitting");
        self.notify();
        epoch
    }

    /// Admits work again after a drain.
    pub fn resume(&self) {
        let was = {
            let mut d = lock(&self.drain);
            d.epoch += 1;
            d.deadline_ms = None;
            self.draining.swap(false, Ordering::SeqCst)
        };
        if was {
            tracing::info!(pool_id = %self.id, "pool resumed: admitting again");
        }
        self.notify();
    }

    /// The current drain epoch (see [`Pool::start_drain`]).
    pub fn drain_epoch(&self) -> u64 {
        lock(&self.drain).epoch
    }

    /// A receiver that changes whenever a replica or the generation changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub(crate) fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub(crate) fn set_last_error(&self, e: Option<String>) {
        *lock(&self.last_error) = e;
    }

    /// Records a replica problem as the pool's last error if the replica serves.
    pub(crate) fn note_error(&self, generation: u64, e: String) {
        if self.is_current(generation) {
            self.set_last_error(Some(e));
        }
    }

    /// The engine version of the first serving replica that reported one.
    pub fn engine_version(&self) -> String {
        self.current()
            .replicas
            .iter()
            .find_map(|r| r.status().info.map(|i| i.version))
            .unwrap_or_else(|| "unknown".into())
    }

    /// Context tokens per slot: what the engine reports, else the configured value.
    pub fn ctx_per_slot(&self) -> u32 {
        let g = self.current();
        g.replicas
            .iter()
            .find_map(|r| r.status().info.and_then(|i| i.ctx_per_slot))
            .unwrap_or(g.cfg.ctx)
    }

    /// Slots over ready serving replicas.
    pub fn ready_slots(&self) -> usize {
        self.current()
            .replicas
            .iter()
            .map(|r| r.status())
            .filter(|s| s.state == ReplicaState::Ready)
            .map(|s| s.slots as usize)
            .sum()
    }

    /// Names under which a task's `model_ref` reaches this pool: the pool id (stable across
    /// reloads), the serving model string, and the model file's name with and without `.gguf`.
    pub fn model_names(&self) -> Vec<String> {
        let cfg = self.config();
        let mut names = vec![self.id.clone()];
        if let Some(m) = &cfg.model {
            names.push(m.clone());
            if let Some(file) = std::path::Path::new(m).file_name().and_then(|f| f.to_str()) {
                names.push(file.to_owned());
                if let Some(stem) = file.strip_suffix(".gguf") {
                    names.push(stem.to_owned());
                }
            }
        }
        names.dedup();
        names
    }

    /// Whether `model_ref` names this pool or its serving model.
    pub fn serves(&self, model_ref: &str) -> bool {
        self.model_names().iter().any(|n| n == model_ref)
    }

    /// Health summary.
    pub fn health(&self) -> PoolHealth {
        let (current, incoming, retiring) = {
            let g = lock(&self.gens);
            (g.current.clone(), g.incoming.clone(), g.retiring.clone())
        };
        let statuses = |g: &Generation| g.replicas.iter().map(|r| r.status()).collect::<Vec<_>>();
        let replicas = statuses(&current);
        let incoming = incoming.as_deref().map(statuses).unwrap_or_default();
        let retiring: Vec<ReplicaStatus> = retiring.iter().flat_map(|g| statuses(g)).collect();
        let live = replicas
            .iter()
            .chain(&retiring)
            .any(|r| r.state.has_engine());
        let last_error = lock(&self.last_error)
            .clone()
            .or_else(|| replicas.iter().find_map(|r| r.last_error.clone()));
        PoolHealth {
            live,
            ready: replicas.iter().any(|r| r.state == ReplicaState::Ready),
            draining: self.is_draining(),
            drain_deadline_ms: lock(&self.drain).deadline_ms,
            model: current.cfg.model.clone(),
            generation: current.number,
            replicas,
            incoming,
            retiring,
            last_error,
            on_demand: self.on_demand_health(&current),
        }
    }

    fn on_demand_health(&self, current: &Generation) -> Option<OnDemandHealth> {
        let st = self.load_status()?;
        let idle = current.in_flight() == 0 && self.queued() == 0;
        let idle_ms = (st.phase == LoadPhase::Loaded && idle)
            .then(|| self.last_used())
            .flatten()
            .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
        Some(OnDemandHealth {
            expected_load_ms: self.expected_load_ms(),
            idle_ms,
            idle_unload_s: current.cfg.idle_unload_s,
            queued: self.queued(),
            state: st.phase,
            waiting: st.waiting,
        })
    }
}
