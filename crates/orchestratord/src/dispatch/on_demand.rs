//! The dispatcher's side of models on demand (docs/PLACEMENT.md, "Models on demand"): what a
//! pool's queue tells the pool manager, and what the pool manager's load life means for the
//! tasks waiting in the queue.
//!
//! - The queue length goes to `Pool::set_queued` (in `publish_depth`): queued work with no
//!   ready replica is what starts a load, and keeps a loaded model from being evicted.
//! - The expected load time goes to the start-time model (`Forecaster`'s `load_ms`) on every
//!   round, so predictions include it while the pool is unloaded or loading.
//! - Waiting tasks get a `metrics` frame with `waiting_for` whenever the reason changes
//!   (loading, no room and who holds the VRAM, unloading, yielding).
//! - A failed load ends the tasks that waited for it with the reason (not retriable); a task
//!   whose `deadline_ms` passes while it waits for a load ends with `DEADLINE_UNMET`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use orch_api_types::{ErrorCode, ErrorEnvelope, MetricsEvent, StreamEvent};
use orch_pool_manager::{LoadPhase, Pool};

use super::Actor;

/// What the dispatcher keeps about its pool's load life.
pub(super) struct OnDemandWatch {
    /// The forecaster's expected time until a replica takes work.
    load_ms: Arc<AtomicU64>,
    /// The last failure epoch whose waiting tasks were ended.
    failed_epoch: u64,
    /// The reason each waiting task was last told.
    told: HashMap<String, String>,
}

impl OnDemandWatch {
    pub(super) fn new(load_ms: Arc<AtomicU64>, pool: &Pool) -> Self {
        load_ms.store(pool.pending_load_ms(), Ordering::Relaxed);
        Self {
            load_ms,
            failed_epoch: 0,
            told: HashMap::new(),
        }
    }

    /// Hands the pool's pending load time to the start-time model.
    pub(super) fn publish_load(&self, pool: &Pool) {
        self.load_ms
            .store(pool.pending_load_ms(), Ordering::Relaxed);
    }
}

/// Why a task of `pool` waits now, if for the pool's engine.
fn waiting_for(pool: &Pool) -> Option<String> {
    let phase = pool.load_phase()?;
    let id = pool.id();
    if pool.is_yielding() {
        return Some(format!(
            "pool `{id}` gives its GPU to a pool that waited longer (max_swap_wait_ms); it loads again after"
        ));
    }
    if pool.is_ready() {
        return None;
    }
    let expected = pool.expected_load_ms();
    Some(match (phase, pool.load_waiting()) {
        (_, Some(why)) => format!("pool `{id}` waits for VRAM: {why}"),
        (LoadPhase::Loading, None) => {
            let device = pool
                .replicas()
                .first()
                .map(|r| r.status.device.clone())
                .unwrap_or_default();
            format!("loading pool `{id}` on {device} (expected {expected} ms)")
        }
        (LoadPhase::Unloading, None) => {
            format!("pool `{id}` is being unloaded; it loads again for the tasks waiting")
        }
        (LoadPhase::Loaded, None) => format!("pool `{id}`'s engine is restarting"),
        (LoadPhase::Unloaded | LoadPhase::Failed, None) => {
            format!("pool `{id}` is unloaded; loading it (expected {expected} ms)")
        }
    })
}

impl Actor {
    /// One look at the pool's load life after each round (see the module docs).
    pub(super) fn watch_on_demand(&mut self) {
        if !self.pool.on_demand() {
            return;
        }
        self.od.publish_load(&self.pool);
        if let Some((epoch, why)) = self.pool.load_failure() {
            if epoch > self.od.failed_epoch {
                self.od.failed_epoch = epoch;
                self.fail_waiting(&why);
                self.pool.failure_handled(epoch);
            }
        }
        self.expire_deadlines();
        self.tell_waiting();
    }

    /// Ends every queued task: the load they waited for failed.
    fn fail_waiting(&mut self, why: &str) {
        let tasks: Vec<_> = self.queue.drain_all().into_iter().map(|e| e.item).collect();
        if !tasks.is_empty() {
            tracing::warn!(pool_id = %self.pool.id(), tasks = tasks.len(), reason = %why, "on-demand load failed: ending the tasks that waited for it");
        }
        for t in tasks {
            let env = ErrorEnvelope::new(
                ErrorCode::EngineError,
                format!("pool '{}' could not be loaded: {why}", self.pool.id()),
            )
            .with_engine(t.engine);
            self.ctx
                .metrics
                .rejected(t.engine, ErrorCode::EngineError.as_str());
            if t.fail(env) {
                self.ctx.tasks.note_finished(&t.id);
            }
        }
        self.publish_depth();
    }

    /// Ends queued tasks whose `deadline_ms` passed while the pool was not ready.
    fn expire_deadlines(&mut self) {
        if self.pool.is_ready() {
            return;
        }
        let late: Vec<String> = self
            .queue
            .iter()
            .filter(|e| {
                e.item
                    .req
                    .deadline_ms
                    .is_some_and(|d| e.item.submitted.elapsed().as_millis() >= u128::from(d))
            })
            .map(|e| e.item.id.clone())
            .collect();
        if late.is_empty() {
            return;
        }
        let why = waiting_for(&self.pool).unwrap_or_else(|| "the pool's engine".into());
        for id in late {
            let Some(t) = self.queue.remove(&id).map(|e| e.item) else {
                continue;
            };
            let deadline = t.req.deadline_ms.unwrap_or(0);
            let env = ErrorEnvelope::new(
                ErrorCode::DeadlineUnmet,
                format!("deadline_ms {deadline} passed while the task waited: {why}"),
            )
            .with_engine(t.engine);
            self.ctx
                .metrics
                .rejected(t.engine, ErrorCode::DeadlineUnmet.as_str());
            if t.fail(env) {
                tracing::info!(task_id = %t.id, pool_id = %self.pool.id(), deadline_ms = deadline, "queued task passed its deadline waiting for an on-demand load");
                self.ctx.tasks.note_finished(&t.id);
            }
        }
        self.publish_depth();
    }

    /// A `metrics` frame with `waiting_for` to each waiting task whose reason changed.
    fn tell_waiting(&mut self) {
        let Some(why) = waiting_for(&self.pool) else {
            self.od.told.clear();
            return;
        };
        let depth = self.queue.len();
        let mut told = HashMap::with_capacity(depth);
        for (position, e) in self.queue.iter().enumerate() {
            let t = &e.item;
            if self.od.told.get(&t.id) != Some(&why) {
                t.push(StreamEvent::Metrics(MetricsEvent {
                    queue_depth: depth,
                    queue_position: Some(position),
                    queued_ms: Some(
                        u64::try_from(t.submitted.elapsed().as_millis()).unwrap_or(u64::MAX),
                    ),
                    waiting_for: Some(why.clone()),
                    ..crate::sessions::metrics_event(t, 0)
                }));
            }
            told.insert(t.id.clone(), why.clone());
        }
        self.od.told = told;
    }
}

/// The 202's word on the pool's load, for a task admitted to an on_demand pool that is not
/// ready.
pub fn admission_note(pool: &Pool) -> Option<orch_api_types::pools::PoolLoadNote> {
    let phase = pool.load_phase()?;
    if pool.is_ready() {
        return None;
    }
    Some(orch_api_types::pools::PoolLoadNote {
        expected_load_ms: pool.pending_load_ms(),
        state: crate::wire::load_state(phase),
        waiting_for: waiting_for(pool),
    })
}
