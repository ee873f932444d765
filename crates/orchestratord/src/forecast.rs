//! The dispatcher's side of the start-time model (`orchestrator_core::eta`): what it measures,
//! the pool state it simulates, and the `metrics` frames of waiting tasks.
//!
//! Measured per model (the pool's model file; a reload starts a new set, an old one is kept):
//! - **decode epochs**: on each replica, the span between two changes of its concurrency
//!   (a dispatch, a finish) or two ticks of [`WAIT_FRAME_EVERY`]; the tokens the tasks that were
//!   already decoding produced in it, over their slot time, give the per-slot decode time at
//!   that concurrency;
//! - per finished task: time from dispatch to first token against the prompt tokens the engine
//!   evaluated, prompt tokens per character, output length against `max_tokens`, and the
//!   error of the end time the 202 predicted (for calibrated `on_time_probability`).
//!
//! Only the dispatcher actor calls this (it owns the queue), so nothing here locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_types::{MetricsEvent, StreamEvent, Workload};
use orchestrator_core::eta::{
    forecast, Forecast, ModelStats, OnTimeClass, Plan, ReplicaLoad, Work,
};
use orchestrator_core::queue::Queue;
use pool_manager::{Pool, ReplicaState};

use crate::task::Task;

/// How often a waiting task gets a `metrics` frame at the latest, and how often decode epochs
/// are cut while tasks run.
pub const WAIT_FRAME_EVERY: Duration = Duration::from_secs(1);
/// Forecasts are recomputed at most this often on changes (a burst of admissions or finishes
/// costs one simulation); the 1 s tick always recomputes.
const REFRESH_MIN_GAP: Duration = Duration::from_millis(25);
/// A waiting task whose queue position is unchanged gets a frame before the next tick only when
/// its predicted start moved by more than this share of its predicted wait…
const CHANGE_SHARE: f64 = 0.1;
/// …and by more than this.
const CHANGE_MIN_MS: f64 = 100.0;

/// Milliseconds of a duration, as the model's unit.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A forecast in whole milliseconds (rounded up; "never" saturates).
fn whole_ms(x: f64) -> u64 {
    if x.is_nan() {
        0
    } else {
        x.max(0.0).ceil() as u64
    }
}

/// Characters of a task's prompt (chat: the messages' contents).
fn prompt_chars(task: &Task) -> usize {
    match task.req.workload {
        Workload::Chat => task
            .req
            .messages
            .iter()
            .flatten()
            .map(|m| m.content.chars().count())
            .sum(),
        Workload::Completion => task.req.prompt.as_deref().map_or(0, |p| p.chars().count()),
        // Prefill only: every input, or the query once per document plus the documents.
        Workload::Embedding => task
            .req
            .input
            .iter()
            .flatten()
            .map(|s| s.chars().count())
            .sum(),
        Workload::Rerank => {
            let docs = task.req.documents.as_deref().unwrap_or_default();
            let query = task.req.query.as_deref().map_or(0, |q| q.chars().count());
            docs.iter().map(|d| d.chars().count() + query).sum()
        }
    }
}

/// What the 202 says about a task's future.
#[derive(Clone, Copy, Debug)]
pub struct Prediction {
    /// Milliseconds until it starts.
    pub start_ms: u64,
    /// Milliseconds until it ends.
    pub end_ms: u64,
    /// Chance of ending within its `deadline_ms` (when it has one).
    pub on_time_probability: Option<f64>,
}

/// A running task.
struct Live {
    task: Arc<Task>,
    replica: String,
    started: Instant,
    model: String,
    /// What its 202 predicted (ms from admission), when that forecast used measured rates.
    admitted: Option<Forecast>,
}

/// One replica's current decode epoch.
struct Epoch {
    since: Instant,
    concurrency: usize,
    model: String,
    /// Tasks that had their first token when the epoch began, with their token count then.
    decoding: Vec<(Arc<Task>, u64)>,
}

/// What the last frame told a waiting task.
struct Waiting {
    position: usize,
    start_at: Instant,
}

/// The start-time model of one pool, with its measurements.
pub struct Forecaster {
    models: HashMap<String, ModelStats>,
    empty: ModelStats,
    live: HashMap<String, Live>,
    epochs: HashMap<String, Epoch>,
    waiting: HashMap<String, Waiting>,
    /// What the 202 predicted (ms from admission) for queued tasks whose 202 used measured
    /// rates.
    admitted: HashMap<String, Forecast>,
    last_refresh: Option<Instant>,
    pending: bool,
    load_ms: Arc<AtomicU64>,
}

impl Forecaster {
    /// A model with nothing measured. `load_ms` is the expected time until a replica that is
    /// not ready (an unloaded `on_demand` pool) takes work; 0 unless someone sets it.
    pub fn new(load_ms: Arc<AtomicU64>) -> Self {
        Self {
            models: HashMap::new(),
            empty: ModelStats::default(),
            live: HashMap::new(),
            epochs: HashMap::new(),
            waiting: HashMap::new(),
            admitted: HashMap::new(),
            last_refresh: None,
            pending: false,
            load_ms,
        }
    }

    /// The statistics are kept per model file (an `endpoint:` pool has one unnamed model).
    fn model_key(pool: &Pool) -> String {
        pool.config().model.clone().unwrap_or_default()
    }

    fn stats(&self, key: &str) -> &ModelStats {
        self.models.get(key).unwrap_or(&self.empty)
    }

    /// Whether forecasts for `key` rest on measurements rather than priors.
    fn informed(&self, key: &str) -> bool {
        let s = self.stats(key);
        s.prefill.samples() > 0 && (1..=64).any(|c| s.decode.measured(c).is_some())
    }

    /// Expected time until a replica that is not ready takes work (see [`Forecaster::new`]).
    fn pending_load_ms(&self) -> f64 {
        self.load_ms.load(Ordering::Relaxed) as f64
    }

    /// Whether the dispatcher should tick: something waits or runs.
    pub fn wants_tick(&self, queue_empty: bool) -> bool {
        !queue_empty || !self.live.is_empty()
    }

    /// When a refresh held back by [`REFRESH_MIN_GAP`] is due.
    pub fn refresh_due(&self) -> Option<Instant> {
        self.pending
            .then(|| self.last_refresh.map(|t| t + REFRESH_MIN_GAP))
            .flatten()
    }

    /// The pool's replicas with their running work, and the running tasks' ids per replica in
    /// the same order.
    fn snapshot(&self, pool: &Pool, now: Instant) -> (Vec<ReplicaLoad>, Vec<Vec<String>>) {
        let stats = self.stats(&Self::model_key(pool));
        let mut loads = Vec::new();
        let mut ids = Vec::new();
        for r in pool.replicas() {
            let st = &r.status;
            let available_in_ms = match st.state {
                ReplicaState::Ready if r.adapter.is_some() => 0.0,
                // Never takes work again until someone acts (a reload).
                ReplicaState::CircuitOpen | ReplicaState::Retiring | ReplicaState::Stopped => {
                    continue
                }
                _ => self.pending_load_ms(),
            };
            let mut running = Vec::new();
            let mut here = Vec::new();
            for (id, l) in self.live.iter().filter(|(_, l)| l.replica == st.id) {
                let t = &l.task;
                running.push(stats.running_work(
                    prompt_chars(t),
                    u64::from(t.req.max_tokens),
                    t.req.expected_tokens.map(u64::from),
                    t.tokens_out(),
                    ms(now.saturating_duration_since(l.started)),
                ));
                here.push(id.clone());
            }
            loads.push(ReplicaLoad {
                slots: st.slots as usize,
                available_in_ms,
                running,
            });
            ids.push(here);
        }
        if loads.is_empty() {
            // No replica yet (an unloaded pool's placeholder): the configured ones, once loaded.
            let cfg = pool.config();
            for _ in 0..cfg.replicas.max(1) {
                loads.push(ReplicaLoad {
                    slots: cfg.slots.max(1) as usize,
                    available_in_ms: self.pending_load_ms(),
                    running: Vec::new(),
                });
                ids.push(Vec::new());
            }
        }
        (loads, ids)
    }

    fn queued_work(stats: &ModelStats, task: &Task) -> Work {
        stats.queued_work(
            prompt_chars(task),
            u64::from(task.req.max_tokens),
            task.req.expected_tokens.map(u64::from),
        )
    }

    /// Simulates the pool: running work plus the whole queue in dispatch order.
    fn plan(
        &self,
        pool: &Pool,
        queue: &Queue<Arc<Task>>,
        now: Instant,
    ) -> (Plan, Vec<Vec<String>>) {
        let key = Self::model_key(pool);
        let stats = self.stats(&key);
        let (loads, ids) = self.snapshot(pool, now);
        let works: Vec<Work> = queue
            .iter()
            .map(|e| Self::queued_work(stats, &e.item))
            .collect();
        let curve = |c: usize| stats.decode.ms_per_token(c);
        (forecast(&loads, &works, &curve), ids)
    }

    /// The chance that `task`, forecast `f` from now, ends within its deadline (judged on the
    /// errors of forecasts of the same [`OnTimeClass`]).
    fn on_time(&self, key: &str, task: &Task, f: Forecast, now: Instant) -> Option<f64> {
        let deadline = task.req.deadline_ms? as f64;
        let left = deadline - ms(now.saturating_duration_since(task.submitted));
        Some(
            self.stats(key)
                .on_time(on_time_class(task, f))
                .probability(Some(left), f.end_ms),
        )
    }

    /// The prediction for a task just queued at `position`; remembers it for calibration and
    /// for `GET /v1/tasks/{id}`.
    pub fn admit(
        &mut self,
        pool: &Pool,
        queue: &Queue<Arc<Task>>,
        task: &Arc<Task>,
        position: usize,
    ) -> Prediction {
        let now = Instant::now();
        let key = Self::model_key(pool);
        let (plan, _) = self.plan(pool, queue, now);
        let f = plan.queued.get(position).copied().unwrap_or(Forecast {
            start_ms: 0.0,
            end_ms: 0.0,
        });
        if self.informed(&key) {
            self.admitted.insert(task.id.clone(), f);
        }
        set_prediction(task, now, f);
        Prediction {
            start_ms: whole_ms(f.start_ms),
            end_ms: whole_ms(f.end_ms),
            on_time_probability: self.on_time(&key, task, f, now),
        }
    }

    /// Expected wall time of `task` on a busy replica (for the 429's retry hint and a running
    /// task's `metrics` frames before its first token).
    pub fn task_ms(&self, pool: &Pool, task: &Task) -> f64 {
        let stats = self.stats(&Self::model_key(pool));
        let slots = pool.config().slots.max(1) as usize;
        stats.task_ms(Self::queued_work(stats, task), slots)
    }

    /// Measured decode rate of one stream on `replica_id` with one more task on it, tokens/s.
    pub fn tokens_per_s(&self, pool: &Pool, replica_id: &str) -> Option<f64> {
        let stats = self.stats(&Self::model_key(pool));
        let c = self
            .live
            .values()
            .filter(|l| l.replica == replica_id)
            .count()
            + 1;
        let measured = (1..=64).any(|k| stats.decode.measured(k).is_some());
        let m = stats.decode.ms_per_token(c);
        (measured && m > 0.0).then(|| 1000.0 / m)
    }

    /// Ends `replica`'s epoch at `now`, recording its decode rate.
    fn close_epoch(&mut self, replica: &str, now: Instant) {
        let Some(e) = self.epochs.remove(replica) else {
            return;
        };
        let span = ms(now.saturating_duration_since(e.since));
        if span <= 0.0 || e.decoding.is_empty() {
            return;
        }
        let tokens: u64 = e
            .decoding
            .iter()
            .map(|(t, before)| t.tokens_out().saturating_sub(*before))
            .sum();
        let slot_ms = span * e.decoding.len() as f64;
        self.models.entry(e.model).or_default().decode.record(
            e.concurrency,
            tokens as f64,
            slot_ms,
        );
    }

    /// Starts a new epoch on `replica` with the tasks running there now.
    fn open_epoch(&mut self, replica: &str, now: Instant) {
        let on: Vec<&Live> = self
            .live
            .values()
            .filter(|l| l.replica == replica)
            .collect();
        let Some(first) = on.first() else {
            return;
        };
        let model = first.model.clone();
        let decoding = on
            .iter()
            .map(|l| (l.task.clone(), l.task.tokens_out()))
            .filter(|(_, n)| *n > 0)
            .collect();
        let concurrency = on.len();
        self.epochs.insert(
            replica.to_owned(),
            Epoch {
                since: now,
                concurrency,
                model,
                decoding,
            },
        );
    }

    /// A task was dispatched to `replica_id`.
    pub fn started(&mut self, pool: &Pool, task: &Arc<Task>, replica_id: &str) {
        let now = Instant::now();
        self.close_epoch(replica_id, now);
        self.waiting.remove(&task.id);
        let admitted = self.admitted.remove(&task.id);
        self.live.insert(
            task.id.clone(),
            Live {
                task: task.clone(),
                replica: replica_id.to_owned(),
                started: now,
                model: Self::model_key(pool),
                admitted,
            },
        );
        self.open_epoch(replica_id, now);
    }

    /// A task ended; `sample` is `(tokens, decode_ms, first_token_ms)` of a completed one.
    pub fn finished(&mut self, task_id: &str, replica_id: &str, sample: Option<(u64, u64, u64)>) {
        let now = Instant::now();
        // A task whose whole decode fell inside the replica's current epoch is in no epoch's
        // count (short tasks often are): its own tokens over its decode time, at the epoch's
        // concurrency, are the measurement.
        if let (Some((tokens, decode_ms, _)), Some(e)) = (sample, self.epochs.get(replica_id)) {
            let counted = e.decoding.iter().any(|(t, _)| t.id == task_id);
            let decode_start = now.checked_sub(Duration::from_millis(decode_ms));
            if !counted && tokens > 1 && decode_ms > 0 && decode_start.is_some_and(|d| e.since <= d)
            {
                let (concurrency, model) = (e.concurrency, e.model.clone());
                self.models.entry(model).or_default().decode.record(
                    concurrency,
                    (tokens - 1) as f64,
                    decode_ms as f64,
                );
            }
        }
        self.close_epoch(replica_id, now);
        let live = self.live.remove(task_id);
        self.open_epoch(replica_id, now);
        let (Some(l), Some((tokens, _decode_ms, first_ms))) = (live, sample) else {
            return;
        };
        let t = &l.task;
        let chars = prompt_chars(t);
        let outcome = t.ext.outcome();
        let stats = self.models.entry(l.model).or_default();
        let prompt_tokens = outcome
            .as_ref()
            .and_then(|o| Some(o.tokens_cached?.saturating_sub(o.tokens_out.unwrap_or(0))));
        if let Some(p) = prompt_tokens {
            stats.record_prompt(chars, p);
        }
        let evaluated = outcome
            .as_ref()
            .and_then(|o| o.tokens_in)
            .map(|n| n as f64)
            .unwrap_or_else(|| stats.prompt_tokens(chars));
        stats.prefill.record(evaluated, first_ms as f64);
        let produced = outcome
            .as_ref()
            .and_then(|o| o.tokens_out)
            .unwrap_or(tokens);
        stats.lengths.record(produced, u64::from(t.req.max_tokens));
        if let Some(predicted) = l.admitted {
            stats.on_time_mut(on_time_class(t, predicted)).record(
                predicted.end_ms,
                ms(now.saturating_duration_since(t.submitted)),
            );
        }
    }

    /// Cuts every replica's decode epoch (the 1 s tick), so long tasks keep the rates current.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let replicas: Vec<String> = self.epochs.keys().cloned().collect();
        for r in replicas {
            self.close_epoch(&r, now);
            self.open_epoch(&r, now);
        }
    }

    /// Recomputes every prediction and sends `metrics` frames to the waiting tasks whose
    /// position or predicted start changed, and to all of them on the tick. Held back to one
    /// run per [`REFRESH_MIN_GAP`] between ticks (see [`Forecaster::refresh_due`]).
    pub fn refresh(&mut self, pool: &Pool, queue: &Queue<Arc<Task>>, tick: bool) {
        let now = Instant::now();
        if queue.is_empty() {
            self.waiting.clear();
            self.admitted.clear();
            self.pending = false;
            return;
        }
        if !tick
            && self
                .last_refresh
                .is_some_and(|t| now.saturating_duration_since(t) < REFRESH_MIN_GAP)
        {
            self.pending = true;
            return;
        }
        self.pending = false;
        self.last_refresh = Some(now);
        let key = Self::model_key(pool);
        let (plan, ids) = self.plan(pool, queue, now);
        for (ends, ids) in plan.running.iter().zip(&ids) {
            for (end, id) in ends.iter().zip(ids) {
                if let Some(l) = self.live.get(id) {
                    l.task.set_prediction(None, instant_in(now, *end));
                }
            }
        }
        let depth = queue.len();
        let mut waiting = HashMap::with_capacity(depth);
        for (position, (e, f)) in queue.iter().zip(&plan.queued).enumerate() {
            let task = &e.item;
            let start_at = set_prediction(task, now, *f);
            let changed = match self.waiting.get(&task.id) {
                None => true,
                Some(w) => {
                    let moved = if start_at > w.start_at {
                        start_at - w.start_at
                    } else {
                        w.start_at - start_at
                    };
                    w.position != position
                        || ms(moved) > CHANGE_MIN_MS.max(CHANGE_SHARE * f.start_ms)
                }
            };
            let last = if tick || changed {
                task.push(self.frame(&key, task, position, depth, *f, now));
                Waiting { position, start_at }
            } else {
                match self.waiting.remove(&task.id) {
                    Some(w) => w,
                    None => Waiting { position, start_at },
                }
            };
            waiting.insert(task.id.clone(), last);
        }
        self.waiting = waiting;
        self.admitted.retain(|id, _| queue.contains(id));
    }

    /// The `metrics` frame of a waiting task.
    fn frame(
        &self,
        key: &str,
        task: &Task,
        position: usize,
        depth: usize,
        f: Forecast,
        now: Instant,
    ) -> StreamEvent {
        let extra = crate::sessions::live_metrics(task, 0);
        StreamEvent::Metrics(MetricsEvent {
            queue_depth: depth,
            on_time_probability: self.on_time(key, task, f, now).unwrap_or(1.0),
            tokens_out: 0,
            tokens_per_s: 0.0,
            kv_warmth: extra.kv_warmth,
            tokens_budget_remaining: extra.tokens,
            time_budget_remaining_ms: extra.time_ms,
            cost_budget_remaining: extra.cost,
            queue_position: Some(position),
            predicted_start_ms: Some(whole_ms(f.start_ms)),
            predicted_end_ms: Some(whole_ms(f.end_ms)),
            queued_ms: Some(now.saturating_duration_since(task.submitted).as_millis() as u64),
            waiting_for: None,
        })
    }
}

/// The kind of prediction `f` is for `task`.
fn on_time_class(task: &Task, f: Forecast) -> OnTimeClass {
    OnTimeClass {
        priority: crate::dispatch::core_priority(task.priority()),
        // Under a millisecond is "at once".
        waits: f.start_ms >= 1.0,
    }
}

/// The instant `x_ms` after `now`; "never" (and anything past a day) is capped at a day, so the
/// sum cannot overflow.
fn instant_in(now: Instant, x_ms: f64) -> Instant {
    let s = if x_ms.is_nan() {
        0.0
    } else {
        (x_ms / 1000.0).clamp(0.0, 86_400.0)
    };
    now + Duration::from_secs_f64(s)
}

/// Records a queued task's forecast on it; returns its predicted start instant.
fn set_prediction(task: &Task, now: Instant, f: Forecast) -> Instant {
    let start = instant_in(now, f.start_ms);
    task.set_prediction(Some(start), instant_in(now, f.end_ms));
    start
}
