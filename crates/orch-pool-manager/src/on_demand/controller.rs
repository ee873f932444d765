//! The controller: one round per wake-up or [`TICK`] over every on_demand pool (start wanted
//! loads, unload idle pools, decide who yields), and the load-time estimates.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::plan::Target;
use super::TICK;
use crate::pool::LoadPhase;
use crate::{lock, Pool, PoolManager, ReplicaState};

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
    pub(super) fn fail_open_circuit(self: &Arc<Self>, pool: &Arc<Pool>) {
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

    pub(super) fn maybe_idle_unload(self: &Arc<Self>, pool: &Arc<Pool>) {
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
    pub(super) fn update_yields(&self) {
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
}
