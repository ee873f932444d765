//! One replica: its truthful status, the adapter to reach its engine, and the slot leases of
//! the tasks running on it.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use orch_engine_adapters::{EngineAdapter, EngineInfo};
use serde::Serialize;
use tokio::sync::watch;

use crate::lock;

/// Life of one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Launching or loading the model.
    Starting,
    /// Answering health checks; takes work.
    Ready,
    /// Not answering health checks, or cannot be placed or launched.
    Unready,
    /// The engine exited; a restart is pending.
    Crashed,
    /// Too many crashes in a short time; no more restarts until a reload.
    CircuitOpen,
    /// Replaced by a reload: takes no new work, finishes its in-flight tasks, then stops.
    Retiring,
    /// Stopped (shutdown, reload, rollback).
    Stopped,
    /// `on_demand` pools: no engine, no VRAM; the next task loads it.
    Unloaded,
    /// `on_demand` pools: the engine is starting and loading the model.
    Loading,
    /// `on_demand` pools: a forced unload waits for its canceled tasks to end.
    Draining,
    /// `on_demand` pools: the engine is being stopped (evicted, idle or by request).
    Unloading,
    /// `on_demand` pools: the last load failed (`last_error` says why); the next task or
    /// `POST /v1/pools/{id}/load` tries again.
    Failed,
}

impl ReplicaState {
    /// Whether a replica in this state holds an engine process (or is about to).
    pub fn has_engine(self) -> bool {
        !matches!(
            self,
            Self::Stopped | Self::Unloaded | Self::Failed | Self::CircuitOpen
        )
    }
}

/// What the outside sees of a replica.
#[derive(Clone, Debug, Serialize)]
pub struct ReplicaStatus {
    /// `<pool>-r<n>` for the replicas started with the daemon, `<pool>-g<gen>-r<n>` for those a
    /// reload started (ids are never reused, so per-replica counters stay apart).
    pub id: String,
    /// Current state.
    pub state: ReplicaState,
    /// Engine base URL while known.
    pub endpoint: Option<String>,
    /// `gpu<N>`, `cpu`, `remote`, or `none` when it could not be placed.
    pub device: String,
    /// Engine process id, for launched replicas.
    pub pid: Option<u32>,
    /// Restarts after crashes so far.
    pub restarts: u32,
    /// Last problem, for people.
    pub last_error: Option<String>,
    /// What the engine reports about itself.
    pub info: Option<EngineInfo>,
    /// Concurrent requests this replica takes.
    pub slots: u32,
    /// Tasks running on it right now.
    pub in_flight: usize,
    /// The pool generation it belongs to (0 at start, +1 per reload attempt).
    pub generation: u64,
}

/// Counts the tasks on a replica; once closed (the replica is retiring) it hands out no more
/// leases, so "no lease outstanding" really means "nothing will run here any more".
#[derive(Default)]
pub(crate) struct Gate {
    inner: Mutex<GateState>,
    /// Told when a slot is given back: a pool waiting for VRAM may now evict this replica.
    wake: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

struct GateState {
    leases: usize,
    closed: bool,
    /// When a task last took or gave back a slot: the LRU clock of eviction and the idle
    /// timer of `idle_unload_s`.
    last_used: Instant,
}

impl Default for GateState {
    fn default() -> Self {
        Self {
            leases: 0,
            closed: false,
            last_used: Instant::now(),
        }
    }
}

impl Gate {
    fn try_lease(self: &Arc<Self>) -> Option<Lease> {
        let mut g = lock(&self.inner);
        if g.closed {
            return None;
        }
        g.leases += 1;
        g.last_used = Instant::now();
        Some(Lease { gate: self.clone() })
    }

    /// Closes the gate only if no task holds a slot (atomic with `try_lease`): an eviction
    /// can then never take an engine from under a task that just started.
    fn close_if_idle(&self) -> bool {
        let mut g = lock(&self.inner);
        if g.leases > 0 {
            return false;
        }
        g.closed = true;
        true
    }

    fn reopen(&self) {
        lock(&self.inner).closed = false;
    }

    fn leases(&self) -> usize {
        lock(&self.inner).leases
    }

    fn close(&self) {
        lock(&self.inner).closed = true;
    }
}

/// Proof that a task occupies a slot of a replica; dropping it frees the slot. The pool
/// manager waits for a retiring replica's leases before stopping its engine.
pub struct Lease {
    gate: Arc<Gate>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut g = lock(&self.gate.inner);
            g.leases = g.leases.saturating_sub(1);
            g.last_used = Instant::now();
        }
        if let Some(w) = self.gate.wake.get() {
            w.notify_one();
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}

/// One replica: its status and the adapter to reach its engine.
pub struct Replica {
    status: Mutex<ReplicaStatus>,
    adapter: Mutex<Option<Arc<dyn EngineAdapter>>>,
    gate: Arc<Gate>,
    /// Sent (the reason) when the tasks running here must give up on the engine: one the
    /// daemon cannot kill (an `endpoint:`) stopped answering.
    abandon: watch::Sender<String>,
}

/// A consistent copy of a replica for dispatch.
#[derive(Clone)]
pub struct ReplicaView {
    /// The status.
    pub status: ReplicaStatus,
    /// The engine, while ready.
    pub adapter: Option<Arc<dyn EngineAdapter>>,
    rep: Arc<Replica>,
}

impl ReplicaView {
    /// Takes a slot for one task; `None` once the replica retires (a reload replaced it), in
    /// which case the caller picks again from the pool's current replicas.
    pub fn try_lease(&self) -> Option<Lease> {
        self.rep.gate.try_lease()
    }

    /// A task lost its connection to this engine (stream broken, connection refused). The
    /// replica takes no more work until its supervisor sees it healthy again (within a health
    /// interval) or restarts it, so queued tasks are not sent to an engine that just died in
    /// the moment before the supervisor notices the exit.
    pub fn report_unreachable(&self, why: &str) {
        let mut changed = false;
        self.rep.update(|s| {
            if s.state == ReplicaState::Ready {
                s.state = ReplicaState::Unready;
                s.last_error = Some(format!("a task lost the engine: {why}"));
                changed = true;
            }
        });
        if changed {
            self.rep.set_adapter(None);
            tracing::warn!(replica_id = %self.status.id, %why, "engine unreachable from a task; replica takes no work until it is healthy again");
        }
    }

    /// Resolves, with the reason, once the tasks running on this replica must abandon their
    /// engine requests (see [`Replica::abandon_in_flight`]). Call it before sending the request:
    /// only abandonments after the call count.
    pub fn abandoned(&self) -> impl Future<Output = String> + Send + 'static {
        let mut rx = self.rep.abandon.subscribe();
        async move {
            if rx.changed().await.is_err() {
                // The replica is gone, and with it any reason to abandon.
                std::future::pending::<()>().await;
            }
            let why = rx.borrow().clone();
            why
        }
    }
}

impl Replica {
    pub(crate) fn new(id: String, device: String, slots: u32, generation: u64) -> Self {
        Self::with_state(id, device, slots, generation, ReplicaState::Starting)
    }

    /// A replica that starts in `state` (`Unloaded` for an on_demand pool's placeholder).
    pub(crate) fn with_state(
        id: String,
        device: String,
        slots: u32,
        generation: u64,
        state: ReplicaState,
    ) -> Self {
        Self {
            status: Mutex::new(ReplicaStatus {
                id,
                state,
                endpoint: None,
                device,
                pid: None,
                restarts: 0,
                last_error: None,
                info: None,
                slots,
                in_flight: 0,
                generation,
            }),
            adapter: Mutex::new(None),
            gate: Arc::new(Gate::default()),
            abandon: watch::Sender::new(String::new()),
        }
    }

    /// Makes every task now running here end its engine request with `why` (the engine is an
    /// `endpoint:` that stopped answering: the daemon cannot kill it to break the streams).
    pub(crate) fn abandon_in_flight(&self, why: String) {
        // `send_replace` wakes every receiver, even when the reason is the same as last time.
        self.abandon.send_replace(why);
    }

    /// A snapshot.
    pub fn view(self: &Arc<Self>) -> ReplicaView {
        let status = self.status();
        let adapter = lock(&self.adapter).clone();
        ReplicaView {
            status,
            adapter,
            rep: self.clone(),
        }
    }

    /// The current status.
    pub fn status(&self) -> ReplicaStatus {
        let mut s = lock(&self.status).clone();
        s.in_flight = self.gate.leases();
        s
    }

    pub(crate) fn id(&self) -> String {
        lock(&self.status).id.clone()
    }

    pub(crate) fn state(&self) -> ReplicaState {
        lock(&self.status).state
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut ReplicaStatus)) {
        f(&mut lock(&self.status));
    }

    pub(crate) fn set_adapter(&self, a: Option<Arc<dyn EngineAdapter>>) {
        *lock(&self.adapter) = a;
    }

    /// Tasks running here.
    pub(crate) fn in_flight(&self) -> usize {
        self.gate.leases()
    }

    /// Whether a reload replaced this replica.
    pub(crate) fn is_retired(&self) -> bool {
        lock(&self.gate.inner).closed
    }

    /// When a task last took or gave back a slot here (its creation before that).
    pub(crate) fn last_used(&self) -> Instant {
        lock(&self.gate.inner).last_used
    }

    /// Closes the replica to new tasks if none runs (see [`Gate::close_if_idle`]).
    pub(crate) fn close_if_idle(&self) -> bool {
        self.gate.close_if_idle()
    }

    /// Counts as used now: a freshly loaded engine's idle time starts when it serves.
    pub(crate) fn touch(&self) {
        lock(&self.gate.inner).last_used = Instant::now();
    }

    /// Who to tell when a task gives its slot back (the on-demand controller).
    pub(crate) fn set_wake(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.gate.wake.set(wake);
    }

    /// Undoes [`Replica::close_if_idle`] when an eviction is called off.
    pub(crate) fn reopen(&self) {
        self.gate.reopen();
    }

    /// No new tasks from now on; marks the replica `Retiring`.
    pub(crate) fn retire(&self) {
        self.gate.close();
        self.update(|s| {
            if !matches!(s.state, ReplicaState::Stopped) {
                s.state = ReplicaState::Retiring;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abandonment_reaches_the_runs_that_watch_and_only_later_ones() {
        let r = Arc::new(Replica::new("p-r0".into(), "cpu".into(), 2, 0));
        // The same reason as the next one: every abandonment counts, not only a new reason.
        r.abandon_in_flight("frozen".into());
        let watching = r.view().abandoned();
        let later = r.view().abandoned();
        r.abandon_in_flight("frozen".into());
        assert_eq!(watching.await, "frozen");
        assert_eq!(later.await, "frozen");
        let fresh = r.view().abandoned();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), fresh)
                .await
                .is_err(),
            "an abandonment before the call must not count"
        );
    }

    #[test]
    fn leases_count_and_a_retired_replica_gives_none() {
        let r = Arc::new(Replica::new("p-r0".into(), "cpu".into(), 2, 0));
        let v = r.view();
        let a = v.try_lease().unwrap();
        let b = v.try_lease().unwrap();
        assert_eq!(r.in_flight(), 2);
        assert_eq!(r.status().in_flight, 2);
        drop(a);
        assert_eq!(r.in_flight(), 1);
        r.retire();
        assert!(v.try_lease().is_none());
        assert_eq!(r.state(), ReplicaState::Retiring);
        drop(b);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn an_idle_replica_closes_atomically_and_a_busy_one_does_not() {
        let r = Arc::new(Replica::new("p-r0".into(), "gpu0".into(), 2, 0));
        let before = r.last_used();
        let lease = r.view().try_lease().unwrap();
        assert!(r.last_used() >= before, "taking a slot counts as use");
        assert!(!r.close_if_idle(), "a running task keeps it open");
        drop(lease);
        assert!(r.close_if_idle());
        assert!(r.view().try_lease().is_none(), "closed: no new task");
        r.reopen();
        assert!(r.view().try_lease().is_some());
        assert!(ReplicaState::Loading.has_engine() && !ReplicaState::Unloaded.has_engine());
    }

    #[test]
    fn an_unreachable_report_takes_a_ready_replica_out_of_dispatch() {
        let r = Arc::new(Replica::new("p-r0".into(), "cpu".into(), 2, 0));
        r.view().report_unreachable("refused");
        assert_eq!(
            r.state(),
            ReplicaState::Starting,
            "only a ready replica is demoted"
        );
        r.update(|s| s.state = ReplicaState::Ready);
        r.view().report_unreachable("refused");
        assert_eq!(r.state(), ReplicaState::Unready);
        assert!(r.status().last_error.unwrap().contains("refused"));
    }
}
