//! One dispatcher task per pool owns that pool's queue (TGI's router does the same): admission,
//! cancel-while-queued and "a slot freed" all arrive as messages on a bounded channel, so the
//! queue has exactly one owner and needs no lock. The dispatcher hands each task to the
//! least-loaded ready replica with a free slot, and never runs more requests on a replica than
//! it has slots.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_api_types::{
    EndEvent, ErrorCode, ErrorEnvelope, MetricsEvent, Priority, RerankScore, ResultEvent,
    StartedEvent, StreamEvent, Workload,
};
use orch_config::FullPolicy;
use orch_core::queue::{self, Queue, Rejected};
use orch_core::{choose_replica, ReplicaCandidate};
use orch_engine_adapters::{AdapterError, EngineEvent};
use orch_pool_manager::{Pool, ReplicaState, ReplicaView};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::forecast::{Forecaster, RateMemory, WAIT_FRAME_EVERY};
use crate::metrics::{
    Metrics, PoolPriority, Replica as ReplicaLabels, ReplicaPriority, ReplicaReason,
};
use crate::task::{Task, TaskTable};

mod on_demand;
pub use on_demand::admission_note;

/// How often a running task emits a `metrics` frame.
const METRICS_EVERY: Duration = Duration::from_millis(250);

fn core_policy(p: FullPolicy) -> queue::FullPolicy {
    match p {
        FullPolicy::Reject => queue::FullPolicy::Reject,
        FullPolicy::DropLru => queue::FullPolicy::DropLru,
    }
}

/// The queue's answer to an enqueue: the place taken and what the start-time model predicts
/// for it (admission turns it into the 202).
#[derive(Debug)]
pub struct Enqueued {
    /// Tasks ahead.
    pub queue_position: usize,
    /// Estimated wait.
    pub predicted_start_ms: u64,
    /// Estimated time until the task ends.
    pub predicted_end_ms: u64,
    /// Chance of ending within the task's `deadline_ms`, when it has one.
    pub on_time_probability: Option<f64>,
}

/// Why the queue refused.
#[derive(Debug)]
pub struct QueueFull {
    /// Capacity.
    pub capacity: usize,
    /// Depth at the time.
    pub depth: usize,
    /// Suggested retry delay.
    pub retry_after_ms: u64,
}

enum Cmd {
    Enqueue {
        task: Arc<Task>,
        reply: oneshot::Sender<Result<Enqueued, QueueFull>>,
    },
    Remove {
        id: String,
        reply: oneshot::Sender<bool>,
    },
    Finished {
        task_id: String,
        replica_id: String,
        sample: Option<(u64, u64, u64)>,
    },
    DrainQueue {
        reply: oneshot::Sender<Vec<Arc<Task>>>,
    },
    /// Write the start-time model's unsaved learned rates now; reply once they are stored.
    FlushRates { reply: oneshot::Sender<()> },
}

/// Handle to a pool's dispatcher.
#[derive(Clone)]
pub struct Dispatcher {
    tx: mpsc::Sender<Cmd>,
    depth: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    pool: Arc<Pool>,
    policy: FullPolicy,
    load_ms: Arc<AtomicU64>,
}

/// Shared pieces a dispatcher needs.
#[derive(Clone)]
pub struct DispatchCtx {
    /// Metrics.
    pub metrics: Metrics,
    /// Task registry (for retention bookkeeping).
    pub tasks: Arc<TaskTable>,
    /// Where the start-time model's learned rates are kept.
    pub rates: RateMemory,
}

impl Dispatcher {
    /// Starts the dispatcher task of `pool`.
    pub fn spawn(pool: Arc<Pool>, capacity: usize, policy: FullPolicy, ctx: DispatchCtx) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let d = Self {
            tx: tx.clone(),
            depth: Arc::new(AtomicUsize::new(0)),
            running: Arc::new(AtomicUsize::new(0)),
            pool: pool.clone(),
            policy,
            load_ms: Arc::new(AtomicU64::new(0)),
        };
        let rates = ctx.rates.clone();
        let actor = Actor {
            queue: Queue::new(capacity, core_policy(policy)),
            pool,
            rx,
            tx,
            inflight: HashMap::new(),
            running: HashMap::new(),
            depth: d.depth.clone(),
            running_count: d.running.clone(),
            ctx,
            eta: Forecaster::new(d.load_ms.clone(), rates),
            od: on_demand::OnDemandWatch::new(d.load_ms.clone(), &d.pool),
        };
        tokio::spawn(actor.run());
        d
    }

    /// The pool.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// The queue-full policy.
    pub fn policy(&self) -> FullPolicy {
        self.policy
    }

    /// Tasks waiting.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// Tasks running.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Queues a task.
    pub async fn enqueue(
        &self,
        task: Arc<Task>,
    ) -> Result<Result<Enqueued, QueueFull>, ErrorEnvelope> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Enqueue { task, reply })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// Removes a queued task; false if it is not in the queue (running or finished).
    pub async fn remove(&self, id: &str) -> bool {
        let (reply, rx) = oneshot::channel();
        if self
            .tx
            .send(Cmd::Remove {
                id: id.to_owned(),
                reply,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    /// Empties the queue (shutdown), returning the tasks that were waiting.
    pub async fn drain_queue(&self) -> Vec<Arc<Task>> {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::DrainQueue { reply }).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// Writes the learned rates not saved yet (the shutdown path, after the last task ended:
    /// a daemon restarted right after a burst starts from all of it). Returns once they are in
    /// the store, at once when the dispatcher has stopped, and after 5 s at most (a stuck disk
    /// must not hold the shutdown).
    pub async fn flush_rates(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::FlushRates { reply }).await.is_ok()
            && tokio::time::timeout(Duration::from_secs(5), rx)
                .await
                .is_err()
        {
            tracing::warn!(pool_id = %self.pool.id(), "learned rates not written within 5 s of shutdown");
        }
    }
}

fn gone() -> ErrorEnvelope {
    ErrorEnvelope::new(ErrorCode::ShuttingDown, "the pool's dispatcher has stopped")
        .retry_after(1000)
}

struct Actor {
    queue: Queue<Arc<Task>>,
    pool: Arc<Pool>,
    rx: mpsc::Receiver<Cmd>,
    tx: mpsc::Sender<Cmd>,
    /// Requests in flight per replica.
    inflight: HashMap<String, usize>,
    /// Running tasks: start instant and estimated duration.
    running: HashMap<String, (Instant, f64)>,
    depth: Arc<AtomicUsize>,
    running_count: Arc<AtomicUsize>,
    ctx: DispatchCtx,
    /// The start-time model: measurements, predictions, waiting tasks' `metrics` frames.
    eta: Forecaster,
    /// What an on_demand pool's load life means for the queue (`dispatch/on_demand.rs`).
    od: on_demand::OnDemandWatch,
}

impl Actor {
    async fn run(mut self) {
        self.eta.init(&self.pool).await;
        let mut changed = self.pool.subscribe();
        // Waiting tasks hear from the queue at least this often; decode rates are cut as often.
        let mut tick = tokio::time::interval(WAIT_FRAME_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut ticked = false;
            let refresh_at = self.eta.refresh_due().map(tokio::time::Instant::from_std);
            let wants_tick = self.eta.wants_tick(self.queue.is_empty());
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => return,
                },
                r = changed.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
                _ = tick.tick(), if wants_tick => {
                    ticked = true;
                    self.eta.tick();
                }
                _ = tokio::time::sleep_until(refresh_at.unwrap_or_else(tokio::time::Instant::now)),
                    if refresh_at.is_some() => {}
            }
            self.dispatch();
            self.publish_depth();
            self.watch_on_demand();
            self.eta.refresh(&self.pool, &self.queue, ticked);
        }
    }

    fn est_task_ms(&self, task: &Task) -> f64 {
        self.eta.task_ms(&self.pool, task)
    }

    fn total_slots(&self) -> usize {
        self.pool.ready_slots()
    }

    fn handle(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Enqueue { task, reply } => {
                self.od.publish_load(&self.pool);
                let id = task.id.clone();
                let prio = crate::wire::core_priority(task.priority());
                match self.queue.push(id, prio, task.clone()) {
                    Ok(adm) => {
                        if let Some(dropped) = adm.dropped {
                            self.drop_lru(dropped.item);
                        }
                        let p = self.eta.admit(&self.pool, &self.queue, &task, adm.position);
                        let predicted = p.start_ms;
                        task.set_admission(adm.position, predicted);
                        self.ctx
                            .metrics
                            .tasks_enqueued
                            .get_or_create(&ReplicaPriority {
                                engine: task.engine.into(),
                                engine_version: self.pool.engine_version(),
                                pool_id: self.pool.id().into(),
                                replica_id: String::new(),
                                priority: prio.as_str().into(),
                            })
                            .inc();
                        let _ = reply.send(Ok(Enqueued {
                            queue_position: adm.position,
                            predicted_start_ms: predicted,
                            predicted_end_ms: p.end_ms,
                            on_time_probability: p.on_time_probability,
                        }));
                    }
                    Err(Rejected::Full {
                        capacity, depth, ..
                    }) => {
                        // Retry when about one task's worth of queue has drained.
                        let slots = self.total_slots().max(1) as f64;
                        let retry = (self.est_task_ms(&task) / slots).clamp(100.0, 30_000.0) as u64;
                        let _ = reply.send(Err(QueueFull {
                            capacity,
                            depth,
                            retry_after_ms: retry,
                        }));
                    }
                    Err(Rejected::Duplicate { .. }) => {
                        // The registry rejects duplicates first; treat as full-refusal safety net.
                        let _ = reply.send(Err(QueueFull {
                            capacity: self.queue.capacity(),
                            depth: self.queue.len(),
                            retry_after_ms: 1000,
                        }));
                    }
                }
            }
            Cmd::Remove { id, reply } => {
                let removed = self.queue.remove(&id).is_some();
                let _ = reply.send(removed);
            }
            Cmd::Finished {
                task_id,
                replica_id,
                sample,
            } => {
                if let Some(n) = self.inflight.get_mut(&replica_id) {
                    *n = n.saturating_sub(1);
                }
                self.running.remove(&task_id);
                self.running_count
                    .store(self.running.len(), Ordering::Relaxed);
                self.eta.finished(&task_id, &replica_id, sample);
                self.ctx.tasks.note_finished(&task_id);
            }
            Cmd::DrainQueue { reply } => {
                let tasks = self.queue.drain_all().into_iter().map(|e| e.item).collect();
                let _ = reply.send(tasks);
            }
            Cmd::FlushRates { reply } => self.eta.flush(reply),
        }
    }

    fn drop_lru(&mut self, task: Arc<Task>) {
        tracing::warn!(task_id = %task.id, pool_id = %self.pool.id(), "queue full: dropping the oldest batch task (drop-lru)");
        self.ctx
            .metrics
            .rejected(task.engine, "QUEUE_FULL_DROP_LRU");
        let cap = self.queue.capacity();
        task.fail(
            ErrorEnvelope::new(
                ErrorCode::QueueFullDropLru,
                format!(
                    "dropped from the full queue of pool '{}' ({cap}/{cap}) to admit newer work (policy drop-lru); resubmit, or raise queue.capacity",
                    self.pool.id()
                ),
            )
            .with_engine(task.engine)
            .retry_after(1000),
        );
        self.ctx.tasks.note_finished(&task.id);
    }

    fn publish_depth(&self) {
        self.depth.store(self.queue.len(), Ordering::Relaxed);
        self.pool.set_queued(self.queue.len());
        let version = self.pool.engine_version();
        for p in [queue::Priority::Interactive, queue::Priority::Batch] {
            self.ctx.metrics.set_queue_depth(
                PoolPriority {
                    engine: self.pool.engine().into(),
                    engine_version: version.clone(),
                    pool_id: self.pool.id().into(),
                    priority: p.as_str().into(),
                },
                i64::try_from(self.queue.depth(p)).unwrap_or(i64::MAX),
            );
        }
        // Keep the positions that GET /v1/tasks/{id} shows current.
        for (i, e) in self.queue.iter().enumerate() {
            e.item.set_queue_position(Some(i));
        }
    }

    /// The least-loaded ready replica with a free slot; `prefer` (the replica holding the next
    /// task's session KV) wins whenever it has a free slot.
    fn pick_replica(&self, prefer: Option<&str>) -> Option<ReplicaView> {
        // Yielding its GPU to a pool that waited max_swap_wait_ms: start nothing new.
        if self.pool.is_yielding() {
            return None;
        }
        let ready: Vec<ReplicaView> = self
            .pool
            .replicas()
            .into_iter()
            .filter(|r| r.status.state == ReplicaState::Ready && r.adapter.is_some())
            .collect();
        let candidates: Vec<ReplicaCandidate<'_>> = ready
            .iter()
            .map(|r| ReplicaCandidate {
                id: &r.status.id,
                in_flight: self.inflight.get(&r.status.id).copied().unwrap_or(0),
                slots: r.status.slots,
            })
            .collect();
        let i = choose_replica(&candidates, prefer)?;
        ready.get(i).cloned()
    }

    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let prefer = self
                .queue
                .peek()
                .and_then(|e| e.item.ext.pinned_replica().map(str::to_owned));
            let Some(replica) = self.pick_replica(prefer.as_deref()) else {
                return;
            };
            // None: a reload retired this replica after the snapshot; the swap woke us, so
            // the next round picks from the new replicas.
            let Some(lease) = replica.try_lease() else {
                return;
            };
            let Some(entry) = self.queue.pop() else {
                return;
            };
            let task = entry.item;
            if task.state().is_terminal() {
                continue;
            }
            let rid = replica.status.id.clone();
            *self.inflight.entry(rid.clone()).or_insert(0) += 1;
            let est = self.est_task_ms(&task);
            self.running.insert(task.id.clone(), (Instant::now(), est));
            self.eta.started(&self.pool, &task, &rid);
            self.running_count
                .store(self.running.len(), Ordering::Relaxed);
            let run = TaskRun {
                _lease: lease,
                task: task.clone(),
                replica,
                pool: self.pool.clone(),
                metrics: self.ctx.metrics.clone(),
                depth: self.depth.clone(),
                est_task_ms: est,
            };
            let done = self.tx.clone();
            let span = tracing::info_span!("task", correlation_id = %task.correlation_id, task_id = %task.id);
            tokio::spawn(
                async move {
                    let sample = run.execute().await;
                    let _ = done
                        .send(Cmd::Finished {
                            task_id: task.id.clone(),
                            replica_id: rid,
                            sample,
                        })
                        .await;
                }
                .instrument(span),
            );
        }
    }
}

/// One task on one replica.
struct TaskRun {
    /// Holds the replica's slot until the run ends (a reload waits for it before stopping a
    /// retiring replica).
    _lease: orch_pool_manager::Lease,
    task: Arc<Task>,
    replica: ReplicaView,
    pool: Arc<Pool>,
    metrics: Metrics,
    depth: Arc<AtomicUsize>,
    est_task_ms: f64,
}

/// Restores a session's saved KV into its slot; the slot to run in, or `None` (the engine
/// chooses, the task runs cold) when the engine could not.
async fn restore_kv(
    adapter: &dyn orch_engine_adapters::EngineAdapter,
    saved: &crate::session_kv::SavedKv,
) -> Option<u32> {
    match adapter.restore_slot(saved.slot, &saved.file).await {
        Ok(f) => {
            tracing::info!(
                slot = saved.slot,
                tokens = f.tokens,
                bytes = f.bytes,
                took_ms = f.ms,
                "session KV restored"
            );
            Some(saved.slot)
        }
        Err(e) => {
            tracing::warn!(slot = saved.slot, error = %e, "restoring the session's saved KV failed; the task runs cold");
            None
        }
    }
}

/// Maps an adapter failure to our envelope.
pub fn adapter_error(e: &AdapterError, engine: &str) -> ErrorEnvelope {
    let (code, retry) = match e {
        AdapterError::StreamBroken { .. } | AdapterError::Unreachable { .. } => {
            (ErrorCode::WorkerReset, Some(1000))
        }
        // An engine saying "busy" (TGI's overload 429, a proxy's 503) is worth retrying; any
        // other 4xx is about the request itself.
        AdapterError::Rejected { status: 429, .. } => (ErrorCode::PoolUnavailable, Some(1000)),
        AdapterError::Rejected { .. } => (ErrorCode::InvalidParams, None),
        AdapterError::Engine { .. }
        | AdapterError::Protocol { .. }
        | AdapterError::Unsupported(_) => (ErrorCode::EngineError, None),
    };
    let hint = match code {
        ErrorCode::WorkerReset => {
            "; the engine went away mid-task and is being restarted — resubmit the task"
        }
        ErrorCode::InvalidParams => "; check the task's parameters",
        _ => "",
    };
    let mut env = ErrorEnvelope::new(code, format!("{e}{hint}")).with_engine(engine);
    if let Some(ms) = retry {
        env = env.retry_after(ms);
    }
    env
}

impl TaskRun {
    fn labels(&self, version: &str) -> ReplicaLabels {
        ReplicaLabels {
            engine: self.task.engine.into(),
            engine_version: version.into(),
            pool_id: self.pool.id().into(),
            replica_id: self.replica.status.id.clone(),
        }
    }

    fn metrics_event(&self, tokens: u64, decode_started: Option<Instant>) -> StreamEvent {
        let elapsed_ms = self.task.submitted.elapsed().as_secs_f64() * 1000.0;
        let rate = decode_started
            .map(|t| t.elapsed().as_secs_f64())
            .filter(|s| *s > 0.0 && tokens > 1)
            .map(|s| (tokens - 1) as f64 / s)
            .unwrap_or(0.0);
        // The start-time model's forecast of this task's end (`forecast.rs`), refreshed as the
        // pool changes and every second; before the first one, the expected run time.
        let (remaining_ms, p) = match self.task.running_prediction() {
            Some((end, p)) => (
                end.saturating_duration_since(Instant::now()).as_secs_f64() * 1000.0,
                p,
            ),
            None => ((self.est_task_ms - elapsed_ms).max(0.0), None),
        };
        let p = p.unwrap_or_else(|| {
            let left = self.task.req.deadline_ms.map(|d| d as f64 - elapsed_ms);
            orch_core::eta::OnTimeModel::default().probability(left, remaining_ms)
        });
        StreamEvent::Metrics(MetricsEvent {
            queue_depth: self.depth.load(Ordering::Relaxed),
            on_time_probability: p,
            tokens_per_s: rate,
            predicted_end_ms: Some(remaining_ms.max(0.0).ceil() as u64),
            ..crate::sessions::metrics_event(&self.task, tokens)
        })
    }

    /// Runs the task to its one terminal event. Returns `(tokens, decode_ms, first_token_ms)` of
    /// a completed task for the pool's service statistics.
    async fn execute(self) -> Option<(u64, u64, u64)> {
        let task = &self.task;
        let version = self
            .replica
            .status
            .info
            .as_ref()
            .map(|i| i.version.clone())
            .unwrap_or_else(|| "unknown".into());
        let Some(adapter) = self.replica.adapter.clone() else {
            task.fail(
                ErrorEnvelope::new(
                    ErrorCode::WorkerReset,
                    "replica lost before start; resubmit",
                )
                .retry_after(1000),
            );
            return None;
        };
        if !task.mark_running(&self.replica.status.id) {
            return None;
        }
        let prio = task.priority();
        let queued_ms = task.submitted.elapsed().as_millis() as u64;
        let (queue_position, predicted_start_ms) = task.admission();
        task.push(StreamEvent::Started(StartedEvent {
            queue_position,
            predicted_start_ms,
            queued_ms,
            pool_id: self.pool.id().into(),
            replica_id: self.replica.status.id.clone(),
            engine: task.engine.into(),
            engine_version: version.clone(),
            device: self.replica.status.device.clone(),
        }));
        let prio_s = match prio {
            Priority::Interactive => "interactive",
            Priority::Batch => "batch",
        };
        self.metrics
            .tasks_started
            .get_or_create(&ReplicaPriority {
                engine: task.engine.into(),
                engine_version: version.clone(),
                pool_id: self.pool.id().into(),
                replica_id: self.replica.status.id.clone(),
                priority: prio_s.into(),
            })
            .inc();
        tracing::info!(replica_id = %self.replica.status.id, queued_ms, "task started");
        if task.req.workload.is_scoring() {
            self.score(adapter.as_ref(), &version).await;
            return None;
        }
        // A session whose pool was unloaded gets its saved KV back into the same slot first.
        let slot = match task.ext.restore_kv() {
            Some(saved) => tokio::select! {
                biased;
                _ = task.cancel.cancelled() => { self.end_canceled(&version); return None; }
                s = restore_kv(adapter.as_ref(), saved) => s,
            },
            None => task.ext.slot_for(&self.replica.status.id),
        };
        let gen = crate::engine_io::generate_request(&task.req, slot);
        let pp = PoolPriority {
            engine: task.engine.into(),
            engine_version: version.clone(),
            pool_id: self.pool.id().into(),
            priority: prio_s.into(),
        };
        // An engine we cannot kill (an `endpoint:`) that hangs is abandoned by its supervisor.
        let abandoned = self.replica.abandoned();
        tokio::pin!(abandoned);
        let stream = tokio::select! {
            biased;
            _ = task.cancel.cancelled() => { self.end_canceled(&version); return None; }
            why = &mut abandoned => { self.abandon(why); return None; }
            r = adapter.generate(gen) => r,
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "engine refused the task");
                self.lost_engine(&e);
                task.fail(adapter_error(&e, task.engine));
                return None;
            }
        };
        task.push(self.metrics_event(0, None));
        let mut i: u64 = 0;
        let mut first: Option<Instant> = None;
        let mut last_metrics = Instant::now();
        loop {
            let item = tokio::select! {
                biased;
                _ = task.cancel.cancelled() => {
                    drop(stream);
                    self.end_canceled(&version);
                    return None;
                }
                why = &mut abandoned => {
                    drop(stream);
                    self.abandon(why);
                    return None;
                }
                item = stream.next() => item,
            };
            match item {
                Some(Ok(ev @ (EngineEvent::Token(_) | EngineEvent::Chunk(_)))) => {
                    if first.is_none() {
                        first = Some(Instant::now());
                        let ttft = task.submitted.elapsed().as_secs_f64();
                        self.metrics
                            .latency_first_token
                            .get_or_create(&pp)
                            .observe(ttft);
                    }
                    if let Some(tok) = crate::engine_io::token_event_of(ev, i) {
                        task.push(StreamEvent::Token(tok));
                    }
                    i += 1;
                    if last_metrics.elapsed() >= METRICS_EVERY {
                        last_metrics = Instant::now();
                        task.push(self.metrics_event(i, first));
                    }
                }
                Some(Ok(EngineEvent::Done(c))) => {
                    let decode_ms = first.map(|f| f.elapsed().as_millis() as u64).unwrap_or(0);
                    let first_ms = first
                        .map(|f| f.duration_since(task.submitted).as_millis() as u64)
                        .unwrap_or(0);
                    task.ext
                        .record_outcome(&self.replica.status.id, &version, &c);
                    task.push(self.metrics_event(i, first));
                    task.push(StreamEvent::End(EndEvent {
                        tokens_out: i,
                        prompt_tokens: c.prompt_tokens,
                        decode_ms,
                        finish_reason: c.finish_reason.map(|f| f.as_str()).unwrap_or("stop").into(),
                    }));
                    self.metrics
                        .latency_decode
                        .get_or_create(&pp)
                        .observe(first.map_or(0.0, |f| f.elapsed().as_secs_f64()));
                    let labels = self.labels(&version);
                    self.metrics
                        .tokens_out
                        .get_or_create(&labels)
                        .inc_by(c.tokens_out.unwrap_or(i));
                    self.metrics
                        .tokens_in
                        .get_or_create(&labels)
                        .inc_by(c.tokens_in.unwrap_or(0));
                    tracing::info!(tokens_out = i, decode_ms, "task completed");
                    return Some((i, decode_ms, first_ms.saturating_sub(queued_ms)));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, tokens_out = i, "engine failed mid-task");
                    self.lost_engine(&e);
                    task.fail(adapter_error(&e, task.engine));
                    return None;
                }
                None => {
                    task.fail(adapter_error(
                        &AdapterError::StreamBroken {
                            message: "stream ended without a final chunk".into(),
                        },
                        task.engine,
                    ));
                    return None;
                }
            }
        }
    }

    /// An `embedding` or `rerank` task: one request, its answer as the `result` event, then
    /// `end` with the tokens the engine evaluated. Apart from the generation loop so that loop
    /// stays as it is; no decode sample (nothing is generated).
    async fn score(&self, adapter: &dyn orch_engine_adapters::EngineAdapter, version: &str) {
        let task = &self.task;
        let req = &task.req;
        let started = Instant::now();
        let work = async {
            if req.workload == Workload::Embedding {
                let e = adapter
                    .embed(req.input.as_deref().unwrap_or_default())
                    .await?;
                Ok(ResultEvent {
                    embeddings: Some(e.vectors),
                    results: None,
                    prompt_tokens: e.prompt_tokens,
                })
            } else {
                let r = adapter
                    .rerank(&orch_engine_adapters::RerankRequest {
                        query: req.query.clone().unwrap_or_default(),
                        documents: req.documents.clone().unwrap_or_default(),
                        top_n: req.top_n,
                    })
                    .await?;
                Ok(ResultEvent {
                    embeddings: None,
                    results: Some(
                        r.results
                            .into_iter()
                            .map(|(index, relevance_score)| RerankScore {
                                index,
                                relevance_score,
                            })
                            .collect(),
                    ),
                    prompt_tokens: r.prompt_tokens,
                })
            }
        };
        let abandoned = self.replica.abandoned();
        let r: Result<ResultEvent, AdapterError> = tokio::select! {
            biased;
            _ = task.cancel.cancelled() => { self.end_canceled(version); return; }
            why = abandoned => { self.abandon(why); return; }
            r = work => r,
        };
        let res = match r {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(error = %e, "engine failed the task");
                self.lost_engine(&e);
                self.task.fail(adapter_error(&e, task.engine));
                return;
            }
        };
        let prompt_tokens = res.prompt_tokens;
        let took_ms = started.elapsed().as_millis() as u64;
        task.push(StreamEvent::Result(res));
        task.push(StreamEvent::End(EndEvent {
            tokens_out: 0,
            prompt_tokens: Some(prompt_tokens),
            decode_ms: 0,
            finish_reason: "stop".into(),
        }));
        self.metrics
            .tokens_in
            .get_or_create(&self.labels(version))
            .inc_by(prompt_tokens);
        tracing::info!(
            prompt_tokens,
            took_ms,
            workload = req.workload.as_str(),
            "task completed"
        );
    }

    /// The replica's supervisor gave up on its engine: the task ends with `WORKER_RESET`.
    fn abandon(&self, why: String) {
        let e = AdapterError::StreamBroken { message: why };
        tracing::warn!(error = %e, "engine request abandoned");
        self.lost_engine(&e);
        self.task.fail(adapter_error(&e, self.task.engine));
    }

    /// The engine went away under this task: keep queued tasks off the replica until its
    /// supervisor sees it healthy or restarted (before this task's slot is freed).
    fn lost_engine(&self, e: &AdapterError) {
        if matches!(
            e,
            AdapterError::StreamBroken { .. } | AdapterError::Unreachable { .. }
        ) {
            self.replica.report_unreachable(&e.to_string());
        }
    }

    fn end_canceled(&self, version: &str) {
        let reason = self.task.cancel_reason();
        let label = reason.code.as_str().to_owned();
        if self.task.fail(reason) {
            self.metrics
                .tasks_canceled
                .get_or_create(&ReplicaReason {
                    engine: self.task.engine.into(),
                    engine_version: version.into(),
                    pool_id: self.pool.id().into(),
                    replica_id: self.replica.status.id.clone(),
                    reason: label,
                })
                .inc();
            tracing::info!("running task canceled; engine request aborted");
        }
    }
}
