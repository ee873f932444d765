//! The one error envelope every endpoint and every `error` stream event uses.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Machine-readable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The request body or a parameter is invalid.
    InvalidParams,
    /// The deadline cannot be met.
    DeadlineUnmet,
    /// No `Authorization: Bearer` header where one is required.
    MissingToken,
    /// A bearer token that does not match.
    BadToken,
    /// No pool serves the requested model.
    ModelNotFound,
    /// The model is Retired in the catalog.
    ModelRetired,
    /// A task with this `task_id` exists already.
    DuplicateTask,
    /// The queue is full and the policy is `reject`.
    AdmissionReject,
    /// The task was dropped from a full queue by the `drop-lru` policy.
    QueueFullDropLru,
    /// The pool exists but no replica is ready, or it is draining.
    PoolUnavailable,
    /// A session or task budget would be exceeded.
    BudgetExceeded,
    /// The task was canceled by a client.
    Canceled,
    /// The engine went away while serving the task (crash, kill, connection reset).
    WorkerReset,
    /// The engine answered with an error.
    EngineError,
    /// No such task, session or object.
    NotFound,
    /// The daemon is shutting down and stopped admitting or serving.
    ShuttingDown,
    /// A bug or an unexpected condition in the daemon.
    Internal,
    /// The request clashes with existing state (e.g. a catalog id already registered).
    Conflict,
    /// The body or a part of it is larger than the configured limit.
    PayloadTooLarge,
    /// A model file does not hash to its registered digest.
    DigestMismatch,
    /// The outbound policy (`policy.outbound`) refused the action.
    PolicyDenied,
    /// The session's idle TTL ran out; its KV was freed. Resubmit to start a new session.
    SessionExpired,
    /// The session used all its turns (`sessions.max_turns`).
    SessionTurnsExhausted,
}

impl ErrorCode {
    /// The code as it appears on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidParams => "INVALID_PARAMS",
            Self::DeadlineUnmet => "DEADLINE_UNMET",
            Self::MissingToken => "MISSING_TOKEN",
            Self::BadToken => "BAD_TOKEN",
            Self::ModelNotFound => "MODEL_NOT_FOUND",
            Self::ModelRetired => "MODEL_RETIRED",
            Self::DuplicateTask => "DUPLICATE_TASK",
            Self::AdmissionReject => "ADMISSION_REJECT",
            Self::QueueFullDropLru => "QUEUE_FULL_DROP_LRU",
            Self::PoolUnavailable => "POOL_UNAVAILABLE",
            Self::BudgetExceeded => "BUDGET_EXCEEDED",
            Self::Canceled => "CANCELED",
            Self::WorkerReset => "WORKER_RESET",
            Self::EngineError => "ENGINE_ERROR",
            Self::NotFound => "NOT_FOUND",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::Internal => "INTERNAL",
            Self::Conflict => "CONFLICT",
            Self::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            Self::DigestMismatch => "DIGEST_MISMATCH",
            Self::PolicyDenied => "POLICY_DENIED",
            Self::SessionExpired => "SESSION_EXPIRED",
            Self::SessionTurnsExhausted => "SESSION_TURNS_EXHAUSTED",
        }
    }
}

/// `{code, message, engine?, retriable?, retry_after_ms?, policy_label?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorEnvelope {
    /// What went wrong, for programs.
    pub code: ErrorCode,
    /// What went wrong and what to do about it, for people.
    pub message: String,
    /// The engine involved, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
    /// Whether the same request may succeed later.
    #[serde(default)]
    pub retriable: bool,
    /// When to retry, for retriable errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The queue-full policy that produced a 429 (`reject` or `drop-lru`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_label: Option<String>,
}

impl ErrorEnvelope {
    /// A non-retriable error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            engine: None,
            retriable: false,
            retry_after_ms: None,
            policy_label: None,
        }
    }

    /// Marks the error retriable after `ms` milliseconds.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retriable = true;
        self.retry_after_ms = Some(ms);
        self
    }

    /// Names the engine involved.
    pub fn with_engine(mut self, engine: impl Into<String>) -> Self {
        self.engine = Some(engine.into());
        self
    }
}
