//! `POST /v1/tasks` and `GET /v1/tasks/{id}` bodies.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::tools::{LogitBias, ResponseFormat, Tool, ToolCall, ToolChoice};
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
    /// One embedding vector per string of `input` (needs a `kind: embedding` pool); the
    /// stream's `result` event holds them.
    Embedding,
    /// Relevance scores of `documents` for `query` (needs a `kind: rerank` pool); the stream's
    /// `result` event holds them.
    Rerank,
}

impl Workload {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completion => "completion",
            Self::Chat => "chat",
            Self::Embedding => "embedding",
            Self::Rerank => "rerank",
        }
    }

    /// Whether the task's answer is one `result` event instead of generated tokens.
    pub fn is_scoring(self) -> bool {
        matches!(self, Self::Embedding | Self::Rerank)
    }
}

/// The door a task came through: the daemon's own API or one of the dialects agents speak
/// (docs/AGENTS.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `POST /v1/tasks`.
    #[default]
    Native,
    /// OpenAI `POST /v1/chat/completions`.
    ChatCompletions,
    /// OpenAI `POST /v1/completions`.
    Completions,
    /// Anthropic `POST /v1/messages`.
    Messages,
    /// OpenAI `POST /v1/responses`.
    Responses,
    /// OpenAI `POST /v1/embeddings`.
    Embeddings,
    /// `POST /v1/rerank`.
    Rerank,
}

impl Dialect {
    /// The wire name (`native`, `chat_completions`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Native => "native",
            Dialect::ChatCompletions => "chat_completions",
            Dialect::Completions => "completions",
            Dialect::Messages => "messages",
            Dialect::Responses => "responses",
            Dialect::Embeddings => "embeddings",
            Dialect::Rerank => "rerank",
        }
    }
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
#[serde(try_from = "RawChatMessage")]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool` (the result of a tool call).
    #[schema(pattern = "^(system|user|assistant|tool)$")]
    pub role: String,
    /// The message text; only an assistant message with `tool_calls` may leave it out.
    #[serde(default)]
    pub content: String,
    /// An assistant message's tool calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the id of the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (some chat templates show it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// [`ChatMessage`] as sent: `content` may be missing only next to `tool_calls`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChatMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCall>>,
    #[serde(default)]
    tool_call_id: Option<String>,
    #[serde(default)]
    name: Option<String>,
}

impl TryFrom<RawChatMessage> for ChatMessage {
    type Error = &'static str;

    fn try_from(r: RawChatMessage) -> Result<Self, Self::Error> {
        let content = match (r.content, &r.tool_calls) {
            (Some(c), _) => c,
            (None, Some(_)) => String::new(),
            (None, None) => {
                return Err(
                    "missing field `content` (only an assistant message with `tool_calls` may leave it out)",
                )
            }
        };
        Ok(Self {
            role: r.role,
            content,
            tool_calls: r.tool_calls,
            tool_call_id: r.tool_call_id,
            name: r.name,
        })
    }
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
    /// `completion` (default), `chat`, `embedding` or `rerank`.
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
    /// `embedding`: the texts to embed (1 ..= 2048 of them, none empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Vec<String>>,
    /// `rerank`: the query the documents are scored against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `rerank`: the documents to score (1 ..= 2048 of them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub documents: Option<Vec<String>>,
    /// `rerank`: how many of the best documents the result keeps (default all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<u32>,
    /// Tokens to generate, at least 1 and at most the context (`embedding` and `rerank` tasks
    /// generate none: give 1).
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
    /// Penalty for tokens by how often they appeared so far (-2 ..= 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    /// Penalty for tokens that appeared at all so far (-2 ..= 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    /// Token id (as a string) → bias added to its logit (-100 ..= 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logit_bias: Option<LogitBias>,
    /// Report each generated token's log probability and this many most likely alternatives
    /// (0 ..= 20) in the `token` events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 20)]
    pub logprobs: Option<u32>,
    /// `chat`: tools the model may call; calls arrive in `token` events' `tool_calls` and the
    /// task ends with `finish_reason` `tool_calls`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<Tool>>,
    /// `chat`: `none`, `auto` (default), `required`, or one named function.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// `chat`: whether the model may call several tools in one reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// The form of the output: text (default), a JSON object, or JSON matching a schema
    /// (constrained by the engine's grammar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Advisory deadline from admission, used for `on_time_probability`.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Expected output length, used for start and end predictions (capped by `max_tokens`);
    /// without it the daemon expects `max_tokens` capped by what the model usually emits.
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
    /// Estimated time until the task ends, from admission (its start plus its expected length
    /// at the pool's measured rates). Absent from daemons that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_end_ms: Option<u64>,
    /// Chance of ending within `deadline_ms`, when the request gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_time_probability: Option<f64>,
    /// Suggested client polling backoff.
    pub backoff_ms: u64,
    /// The pool the task was admitted to.
    pub pool_id: String,
    /// Where to read the result.
    pub streams: StreamLinks,
    /// The pool is `on_demand` and not loaded: the task waits for the load, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_load: Option<crate::pools::PoolLoadNote>,
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
    /// The door it came through.
    #[serde(default)]
    pub dialect: Dialect,
    /// Current queue position while queued.
    pub queue_position: Option<usize>,
    /// While queued: the latest predicted wait until it starts, in milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_start_ms: Option<u64>,
    /// Until it ends: the latest predicted time until its end, in milliseconds from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_end_ms: Option<u64>,
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
