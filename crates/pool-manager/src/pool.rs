//! A pool: replicas of one engine serving one model, organised in generations.
//!
//! The replicas that serve are the *current* generation. A reload builds an *incoming*
//! generation beside it (new processes, new ports), and only when every new replica answers
//! its health check swaps it in; the old generation then *retires*: it takes no new task,
//! finishes its in-flight ones (or runs out of grace) and stops. Each generation has its own
//! configuration (model), replicas, cancellation token and task tracker, so stopping one never
//! touches another.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use orch_config::PoolConfig;
use serde::Serialize;
use tokio::sync::watch;
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
}

impl Pool {
    pub(crate) fn new(current: Arc<Generation>) -> Self {
        let cfg = current.cfg.clone();
        Self {
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
            .any(|r| !matches!(r.state, ReplicaState::Stopped | ReplicaState::CircuitOpen));
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
        }
    }
}
