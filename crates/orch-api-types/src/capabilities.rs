//! Body of `GET /v1/capabilities`: what the pools can do, from their live engines.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Limits of one pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolCapabilities {
    /// Pool id.
    pub id: String,
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Context tokens per slot, as the engine reports.
    pub ctx_max: u32,
    /// Largest `max_tokens` accepted.
    pub max_tokens: u32,
    /// Concurrent requests over ready replicas.
    pub concurrency: usize,
    /// Replicas configured.
    pub replicas: usize,
    /// Devices the replicas run on.
    pub devices: Vec<String>,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Whether some replica is ready.
    pub ready: bool,
    /// Names `model_ref` may use.
    pub model_refs: Vec<String>,
    /// What it serves: `chat` (generation), `embedding` (`/v1/embeddings`) or `rerank`
    /// (`/v1/rerank`).
    #[serde(default = "crate::pools::chat_kind")]
    pub kind: String,
}

/// Body of `GET /v1/capabilities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Capabilities {
    /// API version.
    pub api_version: String,
    /// Daemon version.
    pub daemon_version: String,
    /// Queue-full policy (`reject` or `drop-lru`).
    pub queue_policy: String,
    /// Priorities.
    pub priorities: Vec<String>,
    /// Where engines run (`nvml (driver …)`, `cpu (dev.allow_cpu_inference)`).
    pub gpu_mode: String,
    /// Whether the dev CPU-inference setting is on.
    pub dev_allow_cpu_inference: bool,
    /// Requests per second limits (none: the queue is the limit).
    pub rate_limits: Option<String>,
    /// Pools.
    pub pools: Vec<PoolCapabilities>,
}
