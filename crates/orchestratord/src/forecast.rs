//! The dispatcher's side of the start-time model (`orch_core::eta`): what it measures,
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
//! The same model forecasts running tasks' ends (their `metrics` frames) and their
//! `on_time_probability`, calibrated on the errors of running tasks' ends predicted at dispatch.
//!
//! What was learned is kept in the store per model digest × device kind × slots × context
//! ([`RateMemory`]) and restored when the pool's dispatcher starts, so the first burst after a
//! restart is predicted from measured rates; a model never measured starts from a prior derived
//! from its GGUF header and the card (`orch_core::prior`).
//!
//! Only the dispatcher actor calls this (it owns the queue), so nothing here locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_api_types::{MetricsEvent, StreamEvent, Workload};
use orch_core::eta::{forecast, Forecast, ModelStats, OnTimeClass, Plan, ReplicaLoad, Work};
use orch_core::prior::{bits_per_weight, Card, ModelShape, RatePrior};
use orch_core::queue::Queue;
use orch_core::rates::{RateBook, RateKey};
use orch_pool_manager::{Pool, ReplicaState};

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

/// Learned rates are written at most this often while tasks finish (and on the next tick after).
const SAVE_MIN_GAP: Duration = Duration::from_millis(500);
/// Bytes hashed from each end of a model file for its digest.
const DIGEST_EDGE_BYTES: u64 = 1 << 20;

/// Where learned rates are kept, and the cards' names that make a device kind.
#[derive(Clone, Default)]
pub struct RateMemory {
    store: Option<Arc<orch_store::Store>>,
    gpu_names: Arc<HashMap<u32, String>>,
}

impl RateMemory {
    /// Rates kept in `store` (none: learned afresh at every start); `gpus` are `(index, product
    /// name)` of the host's cards.
    pub fn new(
        store: Option<Arc<orch_store::Store>>,
        gpus: impl IntoIterator<Item = (u32, String)>,
    ) -> Self {
        Self {
            store,
            gpu_names: Arc::new(gpus.into_iter().collect()),
        }
    }

    /// The device kind of a replica's device (`cpu`, `gpu0`, `gpu0+gpu1`): `cpu`, or the cards'
    /// product names joined by `+` (an unknown index keeps its `gpuN`).
    fn device_kind(&self, device: &str) -> String {
        device
            .split('+')
            .map(|d| {
                d.strip_prefix("gpu")
                    .and_then(|i| i.parse::<u32>().ok())
                    .and_then(|i| self.gpu_names.get(&i).cloned())
                    .unwrap_or_else(|| d.to_owned())
            })
            .collect::<Vec<_>>()
            .join("+")
    }
}

/// What is known about a pool's model before any task: its digest, prior shape and the rates
/// stored for it.
struct ModelInfo {
    digest: String,
    shape: Option<ModelShape>,
    book: RateBook,
    /// Device kinds of the stored records, most recently written first.
    recent_devices: Vec<String>,
}

/// A content fingerprint of a model file: SHA-256 over its size and its first and last MiB
/// (hashing a 40 GB file at every start would take minutes; a different file of the same size
/// with the same ends is not a case worth that).
fn model_digest(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut buf = len.to_le_bytes().to_vec();
    let head = len.min(DIGEST_EDGE_BYTES);
    (&mut f).take(head).read_to_end(&mut buf)?;
    if len > head {
        let tail = (len - head).min(DIGEST_EDGE_BYTES);
        f.seek(SeekFrom::Start(len - tail))?;
        f.take(tail).read_to_end(&mut buf)?;
    }
    Ok(orch_store::sha256_digest(&buf).replacen("sha256:", "fp-sha256:", 1))
}

/// Reads what the rates of `model` (a file path, or an `endpoint:` URL) need: blocking I/O.
fn load_model_info(memory: &RateMemory, model: &str, endpoint: bool) -> ModelInfo {
    let path = std::path::Path::new(model);
    let (digest, shape) = if endpoint {
        (format!("endpoint:{model}"), None)
    } else {
        // A model that is not a local file (a vLLM/TGI model id) is keyed by its name.
        let digest = model_digest(path).unwrap_or_else(|e| {
            tracing::debug!(model, error = %e, "cannot fingerprint the model file; its rates are kept by name");
            format!("name:{model}")
        });
        let shape = std::fs::metadata(path).ok().map(|m| {
            let info = orch_gguf_meta::read(path).ok();
            ModelShape {
                weight_bytes: m.len(),
                bits_per_weight: info
                    .as_ref()
                    .and_then(|i| i.quant())
                    .and_then(bits_per_weight),
                layers: info.as_ref().and_then(|i| i.block_count),
            }
        });
        (digest, shape)
    };
    let mut book = RateBook::default();
    let mut recent_devices = Vec::new();
    if let (Some(store), false) = (&memory.store, digest.is_empty()) {
        match store.eta_rates().for_model(&digest) {
            Ok(records) => {
                for r in records {
                    match serde_json::from_str::<ModelStats>(&r.rates) {
                        Ok(stats) => {
                            recent_devices.push(r.device_kind.clone());
                            book.insert(
                                RateKey {
                                    model_digest: r.model_digest,
                                    device_kind: r.device_kind,
                                    slots: r.slots,
                                    ctx: r.ctx,
                                },
                                stats,
                            );
                        }
                        Err(e) => {
                            tracing::warn!(model, error = %e, "ignoring unreadable learned rates")
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(model, error = %e, "cannot read learned rates"),
        }
    }
    ModelInfo {
        digest,
        shape,
        book,
        recent_devices,
    }
}

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
    /// Its run time as predicted at dispatch, when that forecast used measured rates.
    run_predicted_ms: Option<f64>,
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
    memory: RateMemory,
    /// Per model key: its digest, prior shape and stored rates (read by [`Forecaster::init`]).
    info: HashMap<String, ModelInfo>,
    /// Per model key: where its rates are saved (known once the device kind is).
    save_as: HashMap<String, RateKey>,
    /// Model keys with rates learned since the last save.
    dirty: Vec<String>,
    saved_at: Option<Instant>,
    /// `updated_ms` of the last save.
    saved_ms: u64,
}

impl Forecaster {
    /// A model with nothing measured. `load_ms` is the expected time until a replica that is
    /// not ready (an unloaded `on_demand` pool) takes work; 0 unless someone sets it.
    pub fn new(load_ms: Arc<AtomicU64>, memory: RateMemory) -> Self {
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
            memory,
            info: HashMap::new(),
            save_as: HashMap::new(),
            dirty: Vec::new(),
            saved_at: None,
            saved_ms: 0,
        }
    }

    /// Reads the pool's model (digest, GGUF shape) and the rates stored for it, and seeds its
    /// statistics: stored rates for this device kind and shape, else the prior. Called once
    /// when the dispatcher starts, before the first task.
    pub async fn init(&mut self, pool: &Pool) {
        let key = Self::model_key(pool);
        let memory = self.memory.clone();
        let endpoint = pool.config().model.is_none();
        let model = match &pool.config().endpoint {
            Some(url) if endpoint => url.clone(),
            _ => key.clone(),
        };
        let info = tokio::task::spawn_blocking(move || load_model_info(&memory, &model, endpoint))
            .await
            .unwrap_or_else(|_| ModelInfo {
                digest: String::new(),
                shape: None,
                book: RateBook::default(),
                recent_devices: Vec::new(),
            });
        let records = info.book.len();
        self.info.insert(key.clone(), info);
        self.ensure(pool);
        if records > 0 {
            // `measured_tasks`: how many finished tasks the rates in use rest on.
            tracing::info!(
                pool_id = %pool.id(),
                records,
                measured_tasks = self.stats(&key).prefill.samples(),
                decode_ms_one = self.stats(&key).decode_ms(1),
                "learned rates restored"
            );
        }
    }

    /// The device kind `pool` runs on: its first replica's, else the last one rates were
    /// stored for, else `cpu`/unknown.
    fn device_kind(&self, pool: &Pool, key: &str) -> String {
        if let Some(r) = pool.replicas().first() {
            return self.memory.device_kind(&r.status.device);
        }
        self.save_as
            .get(key)
            .map(|k| k.device_kind.clone())
            .or_else(|| {
                self.info
                    .get(key)
                    .and_then(|i| i.recent_devices.first().cloned())
            })
            .unwrap_or_else(|| "cpu".into())
    }

    /// Makes sure the statistics of the pool's current model exist, seeded from the stored
    /// rates for its shape and with the prior for its device, and knows where to save them.
    fn ensure(&mut self, pool: &Pool) {
        let key = Self::model_key(pool);
        let Some(info) = self.info.get(&key) else {
            return;
        };
        let device_kind = self.device_kind(pool, &key);
        let cfg = pool.config();
        let rate_key = RateKey {
            model_digest: info.digest.clone(),
            device_kind: device_kind.clone(),
            slots: cfg.slots,
            ctx: cfg.ctx,
        };
        if self.save_as.get(&key) == Some(&rate_key) {
            return;
        }
        let card = if device_kind == "cpu" {
            Card::cpu()
        } else {
            Card::gpu_named(&device_kind)
        };
        let prior = info.shape.map(|m| RatePrior::new(&m, &card));
        let stats = self.models.entry(key.clone()).or_default();
        // Seeded when new, and again when the device kind becomes known (an on-demand pool's
        // first load) while nothing was measured live yet.
        if stats.prefill.samples() == 0 || !self.save_as.contains_key(&key) {
            if let Some(stored) = info.book.best(&rate_key) {
                *stats = stored.clone();
            }
        }
        stats.set_prior(prior);
        if !info.digest.is_empty() {
            self.save_as.insert(key, rate_key);
        }
    }

    /// Writes the learned rates of the models that learned something since the last save
    /// (at most every [`SAVE_MIN_GAP`] unless `force`); the write runs off the actor.
    fn save(&mut self, force: bool) {
        self.save_then(force, None);
    }

    /// Writes every learned rate not saved yet, at once, and sends on `done` once it is in the
    /// store (or nothing was to be written): the shutdown path's flush, so a daemon restarted
    /// right after a burst starts from all of it.
    pub fn flush(&mut self, done: tokio::sync::oneshot::Sender<()>) {
        self.save_then(true, Some(done));
    }

    fn save_then(&mut self, force: bool, done: Option<tokio::sync::oneshot::Sender<()>>) {
        let reply = move || {
            if let Some(d) = done {
                let _ = d.send(());
            }
        };
        if self.dirty.is_empty() {
            return reply();
        }
        let now = Instant::now();
        if !force
            && self
                .saved_at
                .is_some_and(|t| now.saturating_duration_since(t) < SAVE_MIN_GAP)
        {
            return reply();
        }
        self.saved_at = Some(now);
        let Some(store) = self.memory.store.clone() else {
            self.dirty.clear();
            return reply();
        };
        // Strictly increasing, so a write that lands late never replaces a newer one (the
        // store keeps the record with the larger `updated_ms`).
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let updated_ms = wall_ms.max(self.saved_ms.saturating_add(1));
        self.saved_ms = updated_ms;
        let mut records = Vec::new();
        for key in std::mem::take(&mut self.dirty) {
            let (Some(k), Some(stats)) = (self.save_as.get(&key), self.models.get(&key)) else {
                continue;
            };
            match serde_json::to_string(stats) {
                Ok(rates) => records.push(orch_store::RateRecord {
                    model_digest: k.model_digest.clone(),
                    device_kind: k.device_kind.clone(),
                    slots: k.slots,
                    ctx: k.ctx,
                    rates,
                    updated_ms,
                }),
                Err(e) => tracing::warn!(error = %e, "cannot serialise learned rates"),
            }
        }
        if records.is_empty() {
            return reply();
        }
        tokio::task::spawn_blocking(move || {
            for r in records {
                if let Err(e) = store.eta_rates().put(&r) {
                    tracing::warn!(error = %e, "cannot save learned rates");
                }
            }
            reply();
        });
    }

    fn mark_dirty(&mut self, key: &str) {
        if !self.dirty.iter().any(|k| k == key) {
            self.dirty.push(key.to_owned());
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
        self.stats(key).is_measured()
    }

    /// Expected time until a replica that is not ready takes work (see [`Forecaster::new`]).
    fn pending_load_ms(&self) -> f64 {
        self.load_ms.load(Ordering::Relaxed) as f64
    }

    /// Whether the dispatcher should tick: something waits or runs, or learned rates wait to be
    /// saved.
    pub fn wants_tick(&self, queue_empty: bool) -> bool {
        !queue_empty || !self.live.is_empty() || !self.dirty.is_empty()
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
        let curve = |c: usize| stats.decode_ms(c);
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
        self.ensure(pool);
        let now = Instant::now();
        let key = Self::model_key(pool);
        let (plan, _) = self.plan(pool, queue, now);
        let f = plan.queued.get(position).copied().unwrap_or(Forecast {
            start_ms: 0.0,
            end_ms: 0.0,
        });
        let informed = self.informed(&key);
        if informed {
            self.admitted.insert(task.id.clone(), f);
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            // What the 202 rests on, for `cargo xtask bench eta` to take its errors apart.
            let stats = self.stats(&key);
            let w = Self::queued_work(stats, task);
            let slots = pool.config().slots.max(1) as usize;
            tracing::debug!(
                task_id = %task.id,
                position,
                start_ms = f.start_ms,
                end_ms = f.end_ms,
                decode_ms_one = stats.decode_ms(1),
                decode_ms_full = stats.decode_ms(slots),
                prefill_ms = w.prefill_ms,
                tokens = w.tokens,
                measured = informed,
                "eta admit"
            );
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

    /// A task was dispatched to `replica_id`: its end is forecast at once (the pool's running
    /// work simulated), for its first `metrics` frame and the calibration of running tasks.
    pub fn started(&mut self, pool: &Pool, task: &Arc<Task>, replica_id: &str) {
        self.ensure(pool);
        let now = Instant::now();
        self.close_epoch(replica_id, now);
        self.waiting.remove(&task.id);
        let admitted = self.admitted.remove(&task.id);
        let key = Self::model_key(pool);
        self.live.insert(
            task.id.clone(),
            Live {
                task: task.clone(),
                replica: replica_id.to_owned(),
                started: now,
                model: key.clone(),
                admitted,
                run_predicted_ms: None,
            },
        );
        self.open_epoch(replica_id, now);
        let stats = self.stats(&key);
        let (loads, ids) = self.snapshot(pool, now);
        let curve = |c: usize| stats.decode_ms(c);
        let plan = forecast(&loads, &[], &curve);
        let end = plan
            .running
            .iter()
            .zip(&ids)
            .flat_map(|(ends, ids)| ends.iter().zip(ids))
            .find(|(_, id)| **id == task.id)
            .map(|(end, _)| *end);
        let Some(end) = end else {
            return;
        };
        let p = self.on_time_running(&key, task, end, now);
        task.set_running_prediction(instant_in(now, end), p);
        let informed = self.informed(&key);
        if let Some(l) = self.live.get_mut(&task.id) {
            l.run_predicted_ms = informed.then_some(end);
        }
    }

    /// The chance that a running `task` forecast to end `end_ms` from now ends within its
    /// deadline, judged on the errors of running tasks' forecasts.
    fn on_time_running(&self, key: &str, task: &Task, end_ms: f64, now: Instant) -> Option<f64> {
        let deadline = task.req.deadline_ms? as f64;
        let left = deadline - ms(now.saturating_duration_since(task.submitted));
        Some(
            self.stats(key)
                .on_time_running
                .probability(Some(left), end_ms),
        )
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
        let stats = self.models.entry(l.model.clone()).or_default();
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
        if let Some(predicted) = l.run_predicted_ms {
            stats
                .on_time_running
                .record(predicted, ms(now.saturating_duration_since(l.started)));
        }
        self.mark_dirty(&l.model);
        self.save(false);
    }

    /// Cuts every replica's decode epoch (the 1 s tick), so long tasks keep the rates current.
    pub fn tick(&mut self) {
        let now = Instant::now();
        let replicas: Vec<String> = self.epochs.keys().cloned().collect();
        for r in replicas {
            self.close_epoch(&r, now);
            self.open_epoch(&r, now);
        }
        self.save(true);
    }

    /// Recomputes every prediction and sends `metrics` frames to the waiting tasks whose
    /// position or predicted start changed, and to all of them on the tick. Held back to one
    /// run per [`REFRESH_MIN_GAP`] between ticks (see [`Forecaster::refresh_due`]).
    pub fn refresh(&mut self, pool: &Pool, queue: &Queue<Arc<Task>>, tick: bool) {
        let now = Instant::now();
        if queue.is_empty() {
            self.waiting.clear();
            self.admitted.clear();
            if self.live.is_empty() {
                self.pending = false;
                return;
            }
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
                    let p = self.on_time_running(&key, &l.task, *end, now);
                    l.task.set_running_prediction(instant_in(now, *end), p);
                }
            }
        }
        if queue.is_empty() {
            return;
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
        StreamEvent::Metrics(MetricsEvent {
            queue_depth: depth,
            on_time_probability: self.on_time(key, task, f, now).unwrap_or(1.0),
            queue_position: Some(position),
            predicted_start_ms: Some(whole_ms(f.start_ms)),
            predicted_end_ms: Some(whole_ms(f.end_ms)),
            queued_ms: Some(now.saturating_duration_since(task.submitted).as_millis() as u64),
            ..crate::sessions::metrics_event(task, 0)
        })
    }
}

/// The kind of prediction `f` is for `task`.
fn on_time_class(task: &Task, f: Forecast) -> OnTimeClass {
    OnTimeClass {
        priority: crate::wire::core_priority(task.priority()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_kinds_name_the_cards() {
        let m = RateMemory::new(None, [(0, "NVIDIA H100 80GB HBM3".to_owned())]);
        assert_eq!(m.device_kind("cpu"), "cpu");
        assert_eq!(m.device_kind("gpu0"), "NVIDIA H100 80GB HBM3");
        assert_eq!(
            m.device_kind("gpu0+gpu1"),
            "NVIDIA H100 80GB HBM3+gpu1",
            "an unknown index keeps its name"
        );
    }

    #[test]
    fn stored_rates_come_back_for_the_same_file_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, vec![7u8; 3 << 20]).expect("write");
        let store = Arc::new(
            orch_store::Store::open(&dir.path().join("data"), Default::default()).expect("store"),
        );
        let memory = RateMemory::new(Some(store.clone()), []);
        let path = model.to_string_lossy().into_owned();
        let info = load_model_info(&memory, &path, false);
        assert!(info.book.is_empty());
        assert!(info.digest.starts_with("fp-sha256:"), "{}", info.digest);
        assert_eq!(info.shape.map(|s| s.weight_bytes), Some(3 << 20));
        let mut stats = ModelStats::default();
        stats.decode.record(2, 100.0, 300.0);
        stats.prefill.record(10.0, 20.0);
        store
            .eta_rates()
            .put(&orch_store::RateRecord {
                model_digest: info.digest.clone(),
                device_kind: "cpu".into(),
                slots: 2,
                ctx: 1024,
                rates: serde_json::to_string(&stats).expect("json"),
                updated_ms: 1,
            })
            .expect("put");
        let again = load_model_info(&memory, &path, false);
        assert_eq!(again.digest, info.digest, "the digest is stable");
        let key = RateKey {
            model_digest: info.digest.clone(),
            device_kind: "cpu".into(),
            slots: 2,
            ctx: 1024,
        };
        assert_eq!(again.book.best(&key).map(|s| s.decode_ms(2)), Some(3.0));
        assert_eq!(again.recent_devices, vec!["cpu".to_owned()]);
        // Another file (one byte changed at its end) has other rates.
        let mut bytes = vec![7u8; 3 << 20];
        if let Some(b) = bytes.last_mut() {
            *b = 8;
        }
        std::fs::write(&model, bytes).expect("write");
        let other = load_model_info(&memory, &path, false);
        assert_ne!(other.digest, info.digest);
        assert!(other.book.is_empty());
    }

    /// The shutdown path's flush writes what the 0.5 s gap held back, and answers once it is
    /// in the store; a periodic write landing after it does not undo it.
    #[tokio::test]
    async fn a_flush_stores_what_was_held_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(
            orch_store::Store::open(&dir.path().join("data"), Default::default()).expect("store"),
        );
        let mut f = Forecaster::new(
            Arc::new(AtomicU64::new(0)),
            RateMemory::new(Some(store.clone()), []),
        );
        let key = RateKey {
            model_digest: "fp-sha256:m".into(),
            device_kind: "cpu".into(),
            slots: 2,
            ctx: 1024,
        };
        f.save_as.insert("m".into(), key.clone());
        let learn = |f: &mut Forecaster| {
            f.models
                .entry("m".into())
                .or_default()
                .prefill
                .record(10.0, 20.0);
            f.mark_dirty("m");
        };
        learn(&mut f);
        f.save(false);
        learn(&mut f);
        f.save(false); // within the gap: held back
        assert_eq!(f.dirty, vec!["m".to_owned()]);
        let (tx, rx) = tokio::sync::oneshot::channel();
        f.flush(tx);
        rx.await.expect("the flush answers");
        assert!(f.dirty.is_empty());
        let stored = store
            .eta_rates()
            .for_model(&key.model_digest)
            .expect("read");
        let stats: ModelStats = serde_json::from_str(&stored[0].rates).expect("json");
        assert_eq!(stats.prefill.samples(), 2, "both tasks are stored");
        // Nothing to write: the flush answers at once.
        let (tx, rx) = tokio::sync::oneshot::channel();
        f.flush(tx);
        rx.await.expect("the flush answers");
    }
}
