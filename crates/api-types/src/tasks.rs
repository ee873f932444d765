//! `POST /v1/tasks` and `GET /v1/tasks/{id}` bodies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{BudgetSpec, ErrorEnvelope};

/// The two priorities. Interactive is always dequeued before batch; FIFO within each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Someone is waiting for it.
    Interactive,
    /// Background work.
    Batch,
}

/// What kind of work a task is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Raw text completion of `prompt`.
    #[default]
    Completion,
    /// Chat over `messages`, templated by the engine.
    Chat,
}

/// Determinism level requested.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Determinism {
    /// Same seed, same replica build and model: same token stream. Requires `seed`.
    Strict,
    /// Seed passed through; no further guarantee.
    BestEffort,
}

/// KV cache hint for session reuse.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum KvHint {
    /// Reuse the session's cached prompt prefix.
    Reuse,
    /// Do not reuse any cached prefix.
    Cold,
}

/// Where a task should run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlacementHint {
    /// Run only on this pool.
    #[serde(default)]
    pub pin_pool: Option<String>,
    /// Prefer the pool whose replica sits on this GPU index.
    #[serde(default)]
    pub prefer_device: Option<u32>,
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message text.
    pub content: String,
}

/// Body of `POST /v1/tasks`. Unknown fields are rejected, so a typo is an error, not a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Client-chosen id, unique among the daemon's tasks (1-128 of `A-Za-z0-9._:-`).
    pub task_id: String,
    /// Session for KV reuse and budgets.
    #[serde(default)]
    pub session_id: Option<String>,
    /// `completion` (default) or `chat`.
    #[serde(default)]
    pub workload: Workload,
    /// A catalog model id, a pool id, or the file name (without `.gguf`) of a pool's model.
    pub model_ref: String,
    /// Engine the pool must run (`llamacpp`, `vllm`, `tgi`, `triton`, `openai`).
    #[serde(default)]
    pub engine: Option<String>,
    /// Context tokens the task needs; must not exceed the pool's per-slot context. Defaults to it.
    #[serde(default)]
    pub ctx: Option<u32>,
    /// `interactive` or `batch`.
    pub priority: Priority,
    /// Sampling seed, passed through to the engine.
    #[serde(default)]
    pub seed: Option<u64>,
    /// Determinism level; `strict` requires `seed`.
    #[serde(default)]
    pub determinism: Option<Determinism>,
    /// Caller's sampler profile version, recorded with the task.
    #[serde(default)]
    pub sampler_profile_version: Option<String>,
    /// Prompt text (`completion`).
    #[serde(default)]
    pub prompt: Option<String>,
    /// Messages (`chat`).
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Tokens to generate, at least 1 and at most the context.
    pub max_tokens: u32,
    /// Sampling temperature (engine default when absent).
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[serde(default)]
    pub top_k: Option<u32>,
    /// Stop strings.
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// Advisory deadline from admission, used for `on_time_probability`.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Expected output length, used for estimates (defaults to `max_tokens`).
    #[serde(default)]
    pub expected_tokens: Option<u32>,
    /// KV reuse hint.
    #[serde(default)]
    pub kv_hint: Option<KvHint>,
    /// Pool pinning or device preference.
    #[serde(default)]
    pub placement: Option<PlacementHint>,
    /// Limits for the session, set by the first task of a session (needs `session_id`); later
    /// tasks may omit it or repeat it unchanged. See `docs/STATE.md`.
    #[serde(default)]
    pub budget: Option<BudgetSpec>,
}

/// Links to a task's streams.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StreamLinks {
    /// Path of the SSE stream, relative to the daemon's base URL.
    pub sse: String,
}

/// 202 body of `POST /v1/tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdmissionResponse {
    /// The task's id.
    pub task_id: String,
    /// Tasks that will be dispatched before this one (0: next).
    pub queue_position: usize,
    /// Estimated wait until the task starts, from the pool's measured service times.
    pub predicted_start_ms: u64,
    /// Suggested client polling backoff.
    pub backoff_ms: u64,
    /// The pool the task was admitted to.
    pub pool_id: String,
    /// Where to read the result.
    pub streams: StreamLinks,
}

/// Lifecycle of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskState {
    /// Waiting in the pool's queue.
    Queued,
    /// Running on an engine.
    Running,
    /// Ended with `end`.
    Completed,
    /// Ended with `error` (not a cancel).
    Failed,
    /// Ended by a cancel.
    Canceled,
}

impl TaskState {
    /// Whether the task has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

/// Body of `GET /v1/tasks/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskStatus {
    /// The task's id.
    pub task_id: String,
    /// Where the task is in its life.
    pub state: TaskState,
    /// Pool it was admitted to.
    pub pool_id: String,
    /// Replica serving it, once started.
    pub replica_id: Option<String>,
    /// Its priority.
    pub priority: Priority,
    /// The model reference given at admission.
    pub model_ref: String,
    /// Current queue position while queued.
    pub queue_position: Option<usize>,
    /// Token events sent so far.
    pub tokens_out: u64,
    /// Admission time, milliseconds since the Unix epoch.
    pub submitted_ms: u64,
    /// Start time on the engine.
    pub started_ms: Option<u64>,
    /// End time.
    pub finished_ms: Option<u64>,
    /// The error that ended it, if any.
    pub error: Option<ErrorEnvelope>,
    /// Path of the SSE stream.
    pub stream: String,
    /// Id of the task's `transcript` artifact, once written (shortly after the task ended).
    #[serde(default)]
    pub transcript_artifact: Option<String>,
}
