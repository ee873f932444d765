//! Body of `GET /v1/status` and of each `status` event of `GET /v1/status/stream`: the whole
//! daemon at a glance (queue, GPUs, pools and replicas, recent tasks). Used by the web status
//! page and `llorch status`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::TaskStatus;

/// Tasks waiting per priority, and tasks running.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct QueueDepths {
    /// Interactive tasks waiting.
    pub interactive: usize,
    /// Batch tasks waiting.
    pub batch: usize,
    /// Tasks running on an engine.
    pub running: usize,
}

/// One GPU as NVML reports it now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuStatus {
    /// NVML index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Device UUID.
    pub uuid: String,
    /// Utilisation in percent, when the driver reports it.
    pub utilization_pct: Option<u32>,
    /// Total VRAM.
    pub vram_total_bytes: u64,
    /// VRAM in use.
    pub vram_used_bytes: u64,
    /// VRAM free.
    pub vram_free_bytes: u64,
    /// What each pool's replicas hold on this GPU, largest first.
    #[serde(default)]
    pub pools: Vec<GpuPoolUse>,
}

/// VRAM one replica of a pool holds on one GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct GpuPoolUse {
    /// Pool id.
    pub pool_id: String,
    /// Replica id.
    pub replica_id: String,
    /// Bytes held.
    pub vram_bytes: u64,
    /// `measured`: the engine process's memory as NVML lists it; `reserved`: what placement
    /// set aside for the replica (its estimate), when NVML lists no such process (loading,
    /// process list unsupported, injected `dev.fake_gpus` cards).
    pub source: String,
}

/// A task waiting in a queue, with when it is predicted to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WaitingTask {
    /// The task's id.
    pub task_id: String,
    /// Pool whose queue it waits in.
    pub pool_id: String,
    /// Its priority.
    pub priority: crate::Priority,
    /// Position in the pool's queue (0 starts next).
    pub queue_position: Option<usize>,
    /// The dispatcher's latest prediction of its start, in milliseconds from `time_ms`.
    pub predicted_start_ms: Option<u64>,
    /// Admission time, milliseconds since the Unix epoch.
    pub submitted_ms: u64,
}

/// Throughput and queue of one pool in one [`StatusSample`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolSample {
    /// Pool id.
    pub pool_id: String,
    /// Tokens generated per second since the previous sample.
    pub tokens_per_s: f64,
    /// Tasks waiting and running when the sample was taken.
    pub queue: QueueDepths,
}

/// One point of the recent history the status page charts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusSample {
    /// When it was taken, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Tokens generated per second over all pools since the previous sample.
    pub tokens_per_s: f64,
    /// Tasks waiting per priority and running, over all pools.
    pub queue: QueueDepths,
    /// The same per pool, in configuration order.
    pub pools: Vec<PoolSample>,
}

/// One replica of a pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaSummary {
    /// `<pool>-r<n>`.
    pub id: String,
    /// `starting`, `ready`, `unready`, `crashed`, `circuit_open`, `stopped`.
    pub state: String,
    /// `gpu<N>`, `cpu`, `remote`.
    pub device: String,
    /// Engine base URL.
    pub endpoint: Option<String>,
    /// Engine process id.
    pub pid: Option<u32>,
    /// Restarts after crashes.
    pub restarts: u32,
    /// Concurrent requests it takes.
    pub slots: u32,
    /// Last problem.
    pub last_error: Option<String>,
}

/// One pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PoolStatus {
    /// Pool id.
    pub id: String,
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Configured model (path, catalog id or name).
    pub model: Option<String>,
    /// Some replica answers its health check.
    pub ready: bool,
    /// Not admitting new work.
    pub draining: bool,
    /// Queue of this pool.
    pub queue: QueueDepths,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Slots over ready replicas.
    pub slots_ready: usize,
    /// Most recent problem.
    pub last_error: Option<String>,
    /// Replicas.
    pub replicas: Vec<ReplicaSummary>,
    /// `on_demand` pools: `unloaded`, `loading`, `loaded`, `unloading` or `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_state: Option<String>,
}

/// Body of `GET /v1/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusSnapshot {
    /// Daemon version.
    pub daemon_version: String,
    /// When the snapshot was taken, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Where engines run (`nvml (driver …)`, `cpu (dev.allow_cpu_inference)`).
    pub gpu_mode: String,
    /// Shutdown began: no new work admitted.
    pub shutting_down: bool,
    /// Queue depth per priority over all pools.
    pub queue: QueueDepths,
    /// GPUs (empty in CPU mode).
    pub gpus: Vec<GpuStatus>,
    /// Pools.
    pub pools: Vec<PoolStatus>,
    /// The most recent tasks, newest first (at most `recent`, default 20).
    pub tasks: Vec<TaskStatus>,
    /// Every waiting task (at most 100), the soonest predicted start first.
    #[serde(default)]
    pub waiting: Vec<WaitingTask>,
    /// Recent history, oldest first, one sample every 2 s for the last 10 minutes:
    /// `GET /v1/status` carries all of it; on `GET /v1/status/stream` the first event carries
    /// all of it and each later event only the samples taken since the previous one.
    #[serde(default)]
    pub history: Vec<StatusSample>,
}
