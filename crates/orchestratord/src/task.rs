//! Every admitted task and its transcript.
//!
//! A task's events are appended once, pre-serialised, to its transcript; any number of readers
//! follow it from the start at their own pace, so a slow reader never holds up the engine or
//! other readers, and a late reader sees the whole stream. The first terminal event (`end` or
//! `error`) closes the transcript: nothing can be appended after it, which is what makes "every
//! admitted task ends exactly once" hold.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::Stream;
use orch_api_types::{
    ErrorCode, ErrorEnvelope, Priority, StreamEvent, TaskRequest, TaskState, TaskStatus,
};
use orch_engine_adapters::Completion;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// One SSE frame: event name and JSON data.
#[derive(Debug)]
pub struct Frame {
    /// `started`, `token`, ...
    pub name: &'static str,
    /// JSON payload, one line.
    pub data: String,
}

/// Mutable part of a task.
#[derive(Debug)]
struct Inner {
    state: TaskState,
    replica_id: Option<String>,
    queue_position: Option<usize>,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    finished_at: Option<Instant>,
    tokens_out: u64,
    error: Option<ErrorEnvelope>,
    frames: Vec<Arc<Frame>>,
    cancel_reason: Option<ErrorEnvelope>,
    /// Queue position and predicted start given at admission.
    admission: (usize, u64),
    /// The dispatcher's latest prediction: start (while queued) and end instants.
    prediction: Option<(Option<Instant>, Instant)>,
    /// While running: the chance of ending within `deadline_ms` (the same start-time model).
    running_on_time: Option<f64>,
}

/// An admitted task.
#[derive(Debug)]
pub struct Task {
    /// Client-chosen id.
    pub id: String,
    /// Correlation id of the admitting request.
    pub correlation_id: String,
    /// The request as admitted.
    pub req: TaskRequest,
    /// Pool it was admitted to.
    pub pool_id: String,
    /// Engine kind of that pool.
    pub engine: &'static str,
    /// Admission instant.
    pub submitted: Instant,
    /// Admission time, ms since the Unix epoch.
    pub submitted_ms: u64,
    /// Fired to stop the task (cancel, shutdown).
    pub cancel: CancellationToken,
    /// Session binding, engine outcome and transcript artifact.
    pub ext: TaskExt,
    /// The door it came through.
    pub dialect: orch_api_types::Dialect,
    inner: Mutex<Inner>,
    len: watch::Sender<usize>,
    /// Fired with the terminal event: what waits for the end alone is not woken per token.
    ended: CancellationToken,
}

/// A task's binding to its session, fixed at admission.
#[derive(Debug, Clone, Default)]
pub struct SessionBinding {
    /// The session.
    pub session_id: String,
    /// Replica and engine slot holding the session's KV (from its last finished task).
    pub pin: Option<(String, u32)>,
    /// Budget left at admission (after what running tasks of the session reserved).
    pub remaining: Option<orch_api_types::BudgetRemaining>,
    /// The session's KV saved when its pool unloaded, to restore before this task runs.
    pub restore: Option<crate::session_kv::SavedKv>,
}

/// What the engine reported when a task finished.
#[derive(Debug, Clone, Default)]
pub struct EngineOutcome {
    /// Replica that ran the task.
    pub replica_id: String,
    /// Engine build.
    pub engine_version: String,
    /// Engine slot that served it.
    pub slot: Option<u32>,
    /// Prompt tokens evaluated (not reused from cache).
    pub tokens_in: Option<u64>,
    /// Tokens held in the slot's cache after the task (prompt + generated).
    pub tokens_cached: Option<u64>,
    /// Tokens generated.
    pub tokens_out: Option<u64>,
}

impl EngineOutcome {
    /// Share of the prompt reused from the slot's cache: the prompt's length is what the slot
    /// holds minus what was generated (`tokens_cached - tokens_out`), the reused part is that
    /// minus what was evaluated (`tokens_in`). 0 cold .. 1 fully reused.
    pub fn kv_warmth(&self) -> Option<f64> {
        let cached = self.tokens_cached?;
        let evaluated = self.tokens_in?;
        let prompt = cached.saturating_sub(self.tokens_out.unwrap_or(0));
        if prompt == 0 {
            return Some(0.0);
        }
        let reused = prompt.saturating_sub(evaluated);
        Some((reused as f64 / prompt as f64).clamp(0.0, 1.0))
    }
}

/// What the session, engine-accounting and transcript services attach to a task.
#[derive(Debug, Default)]
pub struct TaskExt {
    session: OnceLock<SessionBinding>,
    outcome: Mutex<Option<EngineOutcome>>,
    transcript: OnceLock<String>,
}

impl TaskExt {
    /// Binds the task to its session (once, before enqueue).
    pub fn bind_session(&self, b: SessionBinding) {
        let _ = self.session.set(b);
    }

    /// The session binding, if the task belongs to a session.
    pub fn session(&self) -> Option<&SessionBinding> {
        self.session.get()
    }

    /// The replica the task's session is pinned to (dispatch prefers it).
    pub fn pinned_replica(&self) -> Option<&str> {
        self.session()
            .and_then(|b| b.pin.as_ref())
            .map(|(r, _)| r.as_str())
    }

    /// The session's saved KV to restore before the task runs (its slot and file).
    pub fn restore_kv(&self) -> Option<&crate::session_kv::SavedKv> {
        self.session().and_then(|b| b.restore.as_ref())
    }

    /// The engine slot to request on `replica_id`: the session's slot when the task runs on
    /// the pinned replica, else none (the engine chooses).
    pub fn slot_for(&self, replica_id: &str) -> Option<u32> {
        self.session()
            .and_then(|b| b.pin.as_ref())
            .filter(|(r, _)| r == replica_id)
            .map(|(_, s)| *s)
    }

    /// Records the engine's final accounting (called by the runner before the `end` event).
    pub fn record_outcome(&self, replica_id: &str, engine_version: &str, c: &Completion) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(EngineOutcome {
            replica_id: replica_id.to_owned(),
            engine_version: engine_version.to_owned(),
            slot: c.slot,
            tokens_in: c.tokens_in,
            tokens_cached: c.tokens_cached,
            tokens_out: c.tokens_out,
        });
    }

    /// The engine's final accounting, once the task completed.
    pub fn outcome(&self) -> Option<EngineOutcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Id of the task's transcript artifact, once written.
    pub fn transcript_artifact(&self) -> Option<String> {
        self.transcript.get().cloned()
    }

    /// Records the id of the task's transcript artifact (once).
    pub fn set_transcript_artifact(&self, id: String) {
        let _ = self.transcript.set(id);
    }
}

impl Task {
    /// A queued task.
    pub fn new(
        req: TaskRequest,
        pool_id: String,
        engine: &'static str,
        correlation_id: String,
    ) -> Self {
        Self {
            id: req.task_id.clone(),
            correlation_id,
            req,
            pool_id,
            engine,
            submitted: Instant::now(),
            submitted_ms: now_ms(),
            cancel: CancellationToken::new(),
            ext: TaskExt::default(),
            dialect: orch_api_types::Dialect::Native,
            inner: Mutex::new(Inner {
                state: TaskState::Queued,
                replica_id: None,
                queue_position: None,
                started_ms: None,
                finished_ms: None,
                finished_at: None,
                tokens_out: 0,
                error: None,
                frames: Vec::new(),
                cancel_reason: None,
                admission: (0, 0),
                prediction: None,
                running_on_time: None,
            }),
            len: watch::channel(0).0,
            ended: CancellationToken::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The task's priority.
    pub fn priority(&self) -> Priority {
        self.req.priority
    }

    /// Current state.
    pub fn state(&self) -> TaskState {
        self.lock().state
    }

    /// Records the queue position (while queued).
    pub fn set_queue_position(&self, p: Option<usize>) {
        self.lock().queue_position = p;
    }

    /// Records what admission promised: queue position and predicted start.
    pub fn set_admission(&self, position: usize, predicted_start_ms: u64) {
        let mut g = self.lock();
        g.admission = (position, predicted_start_ms);
        g.queue_position = Some(position);
    }

    /// Queue position and predicted start given at admission.
    pub fn admission(&self) -> (usize, u64) {
        self.lock().admission
    }

    /// Records the dispatcher's latest prediction: when the task starts (`None` once it runs)
    /// and ends. `GET /v1/tasks/{id}` shows them as milliseconds from the request.
    pub fn set_prediction(&self, start: Option<Instant>, end: Instant) {
        self.lock().prediction = Some((start, end));
    }

    /// Records the dispatcher's latest prediction for the running task: its end and, with a
    /// deadline, the chance of meeting it (its `metrics` frames show both).
    pub fn set_running_prediction(&self, end: Instant, on_time: Option<f64>) {
        let mut g = self.lock();
        g.prediction = Some((None, end));
        g.running_on_time = on_time;
    }

    /// The running task's predicted end and on-time chance, once the dispatcher made one.
    pub fn running_prediction(&self) -> Option<(Instant, Option<f64>)> {
        let g = self.lock();
        match g.prediction {
            Some((None, end)) => Some((end, g.running_on_time)),
            _ => None,
        }
    }

    /// Marks the task running on `replica_id`. False if it already ended.
    pub fn mark_running(&self, replica_id: &str) -> bool {
        let mut g = self.lock();
        if g.state.is_terminal() {
            return false;
        }
        g.state = TaskState::Running;
        g.replica_id = Some(replica_id.to_owned());
        g.queue_position = None;
        g.started_ms = Some(now_ms());
        true
    }

    /// Appends an event. Returns false (and drops the event) once the task has ended.
    pub fn push(&self, ev: StreamEvent) -> bool {
        let frame = Arc::new(Frame {
            name: ev.name(),
            data: ev.data_json(),
        });
        let len = {
            let mut g = self.lock();
            if g.state.is_terminal() {
                return false;
            }
            match &ev {
                StreamEvent::Token(_) => g.tokens_out += 1,
                StreamEvent::End(_) => {
                    g.state = TaskState::Completed;
                }
                StreamEvent::Error(e) => {
                    g.state = if e.code == ErrorCode::Canceled {
                        TaskState::Canceled
                    } else {
                        TaskState::Failed
                    };
                    g.error = Some(e.clone());
                }
                _ => {}
            }
            if ev.is_terminal() {
                g.finished_ms = Some(now_ms());
                g.finished_at = Some(Instant::now());
                g.queue_position = None;
            }
            g.frames.push(frame);
            g.frames.len()
        };
        self.len.send_replace(len);
        if ev.is_terminal() {
            self.ended.cancel();
        }
        true
    }

    /// Ends the task with an error event. False if it had already ended.
    pub fn fail(&self, e: ErrorEnvelope) -> bool {
        self.push(StreamEvent::Error(e))
    }

    /// Asks a running task to stop with `reason` (its runner emits the error event).
    pub fn request_cancel(&self, reason: ErrorEnvelope) {
        {
            let mut g = self.lock();
            if g.cancel_reason.is_none() {
                g.cancel_reason = Some(reason);
            }
        }
        self.cancel.cancel();
    }

    /// Why the task was asked to stop.
    pub fn cancel_reason(&self) -> ErrorEnvelope {
        self.lock()
            .cancel_reason
            .clone()
            .unwrap_or_else(|| ErrorEnvelope::new(ErrorCode::Canceled, "task canceled by request"))
    }

    /// Token events so far.
    pub fn tokens_out(&self) -> u64 {
        self.lock().tokens_out
    }

    /// When it ended.
    pub fn finished_at(&self) -> Option<Instant> {
        self.lock().finished_at
    }

    /// Path of the SSE stream.
    pub fn stream_path(&self) -> String {
        format!("/v1/tasks/{}/stream", self.id)
    }

    /// `GET /v1/tasks/{id}` body.
    pub fn status(&self) -> TaskStatus {
        let g = self.lock();
        let now = Instant::now();
        let until = |t: Instant| t.saturating_duration_since(now).as_millis() as u64;
        let live = g.prediction.filter(|_| !g.state.is_terminal());
        TaskStatus {
            task_id: self.id.clone(),
            state: g.state,
            pool_id: self.pool_id.clone(),
            replica_id: g.replica_id.clone(),
            priority: self.req.priority,
            model_ref: self.req.model_ref.clone(),
            dialect: self.dialect,
            queue_position: g.queue_position,
            predicted_start_ms: live
                .and_then(|(start, _)| start)
                .filter(|_| g.state == TaskState::Queued)
                .map(until),
            predicted_end_ms: live.map(|(_, end)| until(end)),
            tokens_out: g.tokens_out,
            submitted_ms: self.submitted_ms,
            started_ms: g.started_ms,
            finished_ms: g.finished_ms,
            error: g.error.clone(),
            stream: self.stream_path(),
            transcript_artifact: self.ext.transcript_artifact(),
        }
    }

    /// Resolves once the task has its terminal event (at once if it has).
    pub async fn finished(self: Arc<Self>) {
        self.ended.cancelled().await;
    }

    /// Every event so far (after [`Task::finished`]: the whole transcript).
    pub fn frames(&self) -> Vec<Arc<Frame>> {
        self.lock().frames.clone()
    }

    /// The transcript from the start, then live events, ending after the terminal event.
    pub fn follow(self: Arc<Self>) -> impl Stream<Item = Arc<Frame>> + Send + 'static {
        let rx = self.len.subscribe();
        futures::stream::unfold(
            (self, rx, 0usize, false),
            |(task, mut rx, mut next, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let (frame, terminal) = {
                        let g = task.lock();
                        match g.frames.get(next) {
                            Some(f) => (
                                Some(f.clone()),
                                g.state.is_terminal() && next + 1 == g.frames.len(),
                            ),
                            None => (None, false),
                        }
                    };
                    if let Some(f) = frame {
                        next += 1;
                        return Some((f, (task, rx, next, terminal)));
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            },
        )
    }
}

/// After asking tasks to stop, how long their runners get to end them (and abort the engine
/// request) before the daemon ends their streams itself.
pub const CANCEL_GRACE: Duration = Duration::from_secs(3);

/// Resolves once every task in `tasks` has its terminal event.
pub async fn all_ended(tasks: &[Arc<Task>]) {
    futures::future::join_all(tasks.iter().map(|t| t.clone().finished())).await;
}

/// The one escalation that ends a set of tasks by a deadline (shutdown, a drain's deadline, a
/// forced unload): wait up to `grace` for `tasks` to end on their own; then ask each to stop
/// with `why` and give the runners [`CANCEL_GRACE`]; then end what is left with `why`.
/// Returns whether they all ended within `grace` (nothing was canceled).
pub async fn end_within(
    tasks: &[Arc<Task>],
    grace: Duration,
    why: impl Fn() -> ErrorEnvelope,
) -> bool {
    if tokio::time::timeout(grace, all_ended(tasks)).await.is_ok() {
        return true;
    }
    for t in tasks {
        t.request_cancel(why());
    }
    if tokio::time::timeout(CANCEL_GRACE, all_ended(tasks))
        .await
        .is_err()
    {
        // Runners did not react; end the streams ourselves.
        for t in tasks {
            t.fail(why());
        }
    }
    false
}

/// All tasks the daemon knows, admitted or finished and retained.
pub struct TaskTable {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
    finished: Mutex<VecDeque<String>>,
    retain: Duration,
    max_retained: usize,
}

impl TaskTable {
    /// An empty registry keeping finished tasks for `retain`, at most `max_retained`.
    pub fn new(retain: Duration, max_retained: usize) -> Self {
        Self {
            tasks: Mutex::new(HashMap::new()),
            finished: Mutex::new(VecDeque::new()),
            retain,
            max_retained,
        }
    }

    fn tasks(&self) -> MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Inserts a new task; `false` if the id exists.
    pub fn insert(&self, t: Arc<Task>) -> bool {
        let mut g = self.tasks();
        if g.contains_key(&t.id) {
            return false;
        }
        g.insert(t.id.clone(), t);
        true
    }

    /// Forgets a task that was never admitted (rejected after insert).
    pub fn remove(&self, id: &str) {
        self.tasks().remove(id);
    }

    /// One task.
    pub fn get(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks().get(id).cloned()
    }

    /// Every task not yet ended.
    pub fn active(&self) -> Vec<Arc<Task>> {
        self.tasks()
            .values()
            .filter(|t| !t.state().is_terminal())
            .cloned()
            .collect()
    }

    /// Every task the table holds, in no order.
    pub fn all(&self) -> Vec<Arc<Task>> {
        self.tasks().values().cloned().collect()
    }

    /// The most recent tasks, newest first.
    pub fn recent(&self, n: usize) -> Vec<Arc<Task>> {
        let mut v: Vec<_> = self.tasks().values().cloned().collect();
        v.sort_by_key(|t| std::cmp::Reverse(t.submitted));
        v.truncate(n);
        v
    }

    /// Notes that a task ended, for retention.
    pub fn note_finished(&self, id: &str) {
        self.finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(id.to_owned());
    }

    /// Drops finished tasks past retention. Returns how many were dropped.
    pub fn gc(&self) -> usize {
        let mut fin = self.finished.lock().unwrap_or_else(|p| p.into_inner());
        let mut tasks = self.tasks();
        let mut n = 0;
        while let Some(id) = fin.front().cloned() {
            let expired = tasks
                .get(&id)
                .and_then(|t| t.finished_at())
                .is_none_or(|at| at.elapsed() > self.retain);
            if expired || fin.len() > self.max_retained {
                fin.pop_front();
                tasks.remove(&id);
                n += 1;
            } else {
                break;
            }
        }
        n
    }
}
