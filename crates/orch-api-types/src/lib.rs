//! Typed bodies of the llama-orch HTTP API.
//!
//! Every struct here is what goes over the wire, nothing more. The OpenAPI document in
//! `contracts/openapi.json` is generated from these types (utoipa), so changing a field here is
//! changing the contract: regenerate with `cargo xtask regen-contracts`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The version of the data and control plane API, reported by `/v1/capabilities`.
pub const API_VERSION: &str = "1.0.0";

pub mod anthropic;
mod capabilities;
pub mod embeddings;
mod errors;
mod events;
pub mod openai;
pub mod pools;
mod pull;
pub mod responses;
mod state;
mod status;
mod tasks;
pub mod tools;

pub use capabilities::{Capabilities, PoolCapabilities};
pub use errors::{ErrorCode, ErrorEnvelope};
pub use events::{
    EndEvent, MetricsEvent, RerankScore, ResultEvent, StartedEvent, StreamEvent, TokenEvent,
};
pub use pull::{PullFile, PullJob, PullState};
pub use state::{
    Artifact, ArtifactCreate, ArtifactKind, ArtifactList, ArtifactMeta, BudgetRemaining,
    BudgetSpec, CatalogList, CatalogModel, ContentEncoding, ModelState, RegisterModelRequest,
    SessionEvicted, SessionInfo, SessionSpend, SetModelStateRequest, VerifyOutcome, VerifyResponse,
};
pub use status::{
    GpuPoolUse, GpuStatus, PoolSample, PoolStatus, QueueDepths, ReplicaSummary, StatusSample,
    StatusSnapshot, WaitingTask,
};
pub use tasks::{
    AdmissionResponse, ChatMessage, Determinism, Dialect, KvHint, PlacementHint, Priority,
    StreamLinks, TaskRequest, TaskState, TaskStatus, Workload,
};
pub use tools::{
    FunctionCall, FunctionCallDelta, FunctionDef, JsonSchemaFormat, LogitBias, NamedToolChoice,
    ResponseFormat, TokenLogprob, Tool, ToolCall, ToolCallDelta, ToolChoice, TopLogprob,
};

/// Body of `GET /health`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` while the daemon runs; `shutting_down` once it stopped admitting.
    pub status: String,
    /// The daemon's version.
    pub version: String,
    /// Pools that can take a task now: an engine answers its health check, or the pool is
    /// `on_demand` and loads on the first task (unless its last load failed).
    pub pools_ready: usize,
    /// Pools configured.
    pub pools_total: usize,
}

/// Body of `POST /v1/tasks/{id}/cancel`.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CancelResponse {
    /// The task.
    pub task_id: String,
    /// The task's state after the request (a finished task stays as it was: cancel is idempotent).
    pub state: TaskState,
}
