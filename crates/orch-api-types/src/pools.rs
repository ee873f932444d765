//! Pools and replicas: `GET /v1/pools`, `GET /v1/pools/{id}/health`, and the control plane
//! `POST /v1/pools/{id}/drain` and `POST /v1/pools/{id}/reload`.
//!
//! Reply fields are declared in alphabetical order: the order these bodies had when the daemon
//! built them as `serde_json` values, so the bytes on the wire did not change with the types.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Life of one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Launching or loading the model.
    Starting,
    /// Answering health checks; takes work.
    Ready,
    /// Not answering health checks, or cannot be placed or launched.
    Unready,
    /// The engine exited; a restart is pending.
    Crashed,
    /// Too many crashes in a short time; no more restarts until a reload.
    CircuitOpen,
    /// Replaced by a reload: takes no new work, finishes its in-flight tasks, then stops.
    Retiring,
    /// Stopped (shutdown, reload, rollback).
    Stopped,
    /// `on_demand` pools: no engine, no VRAM; the next task loads it.
    Unloaded,
    /// `on_demand` pools: the engine is starting and loading the model.
    Loading,
    /// `on_demand` pools: a forced unload waits for its canceled tasks to end.
    Draining,
    /// `on_demand` pools: the engine is being stopped (evicted, idle or by request).
    Unloading,
    /// `on_demand` pools: the last load failed (`last_error` says why); the next task or
    /// `POST /v1/pools/{id}/load` tries again.
    Failed,
}

impl ReplicaState {
    /// The wire name (`ready`, `circuit_open`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ready => "ready",
            Self::Unready => "unready",
            Self::Crashed => "crashed",
            Self::CircuitOpen => "circuit_open",
            Self::Retiring => "retiring",
            Self::Stopped => "stopped",
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Draining => "draining",
            Self::Unloading => "unloading",
            Self::Failed => "failed",
        }
    }
}

/// Where an `on_demand` pool is in its load life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadState {
    /// No engine, no VRAM; the next task loads it.
    Unloaded,
    /// The engine starts and loads the model.
    Loading,
    /// The engine serves.
    Loaded,
    /// The engine is being stopped.
    Unloading,
    /// The last load failed; the next task (or `POST /v1/pools/{id}/load`) tries again.
    Failed,
}

impl LoadState {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unloaded => "unloaded",
            Self::Loading => "loading",
            Self::Loaded => "loaded",
            Self::Unloading => "unloading",
            Self::Failed => "failed",
        }
    }
}

/// The `on_demand` part of a pool's health (absent for `load: always` pools).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OnDemandInfo {
    /// What a load of the pool's model is expected to take: measured on earlier loads
    /// (remembered across restarts), else estimated from the file size and the disk's rate.
    pub expected_load_ms: u64,
    /// Since the loaded engine last served, while it is loaded and idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// Seconds without work before the engine is unloaded (0: never).
    pub idle_unload_s: u64,
    /// Tasks waiting in the pool's queue.
    pub queued: usize,
    /// The load life.
    pub state: LoadState,
    /// Why the pool's tasks wait and no load has started: no room on any GPU, and which
    /// pools hold the memory (busy pools are never evicted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// What an engine reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EngineInfo {
    /// Context tokens per slot.
    pub ctx_per_slot: Option<u32>,
    /// Model the engine serves (path or name).
    pub model: Option<String>,
    /// Parallel slots.
    pub slots: Option<u32>,
    /// Engine build as reported (`b1234-abcdef`).
    pub version: String,
}

/// One replica of a pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReplicaInfo {
    /// `gpu<N>`, `cpu`, `remote`, or `none` when it could not be placed.
    pub device: String,
    /// Engine base URL while known.
    pub endpoint: Option<String>,
    /// The pool generation it belongs to (0 at start, +1 per reload attempt).
    pub generation: u64,
    /// `<pool>-r<n>` for the replicas started with the daemon, `<pool>-g<gen>-r<n>` for those a
    /// reload started (ids are never reused).
    pub id: String,
    /// Tasks running on it right now.
    pub in_flight: usize,
    /// What the engine reports about itself, once it answered.
    pub info: Option<EngineInfo>,
    /// Last problem, for people.
    pub last_error: Option<String>,
    /// Engine process id, for launched replicas.
    pub pid: Option<u32>,
    /// Restarts after crashes so far.
    pub restarts: u32,
    /// Concurrent requests this replica takes.
    pub slots: u32,
    /// Current state.
    pub state: ReplicaState,
}

/// Body of `GET /v1/pools/{id}/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolHealth {
    /// When the drain in force cancels what is left (ms since the Unix epoch); absent when
    /// not draining or draining without a deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_deadline_ms: Option<u64>,
    /// Draining: no new work admitted.
    pub draining: bool,
    /// The serving generation (0 at start, higher after reloads).
    pub generation: u64,
    /// Replicas a reload in progress is starting (not serving yet); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub incoming: Vec<ReplicaInfo>,
    /// The most recent problem: a failed reload (`reload ... rolled back: ...`), an open
    /// circuit, a placement failure, or a replica's last error.
    pub last_error: Option<String>,
    /// Some replica process exists or the endpoint is configured.
    pub live: bool,
    /// The model the serving generation runs.
    pub model: Option<String>,
    /// Some replica of the serving generation answers its health check.
    pub ready: bool,
    /// Replicas of the serving generation.
    pub replicas: Vec<ReplicaInfo>,
    /// `load: on_demand` pools only: loaded or not, the expected load time, why tasks wait.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandInfo>,
    /// Replicas a reload replaced, finishing their in-flight tasks before they stop; absent
    /// when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retiring: Vec<ReplicaInfo>,
}

/// One pool of `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolInfo {
    /// Engine kind (`llamacpp`, `vllm`, `tgi`, `triton`, `openai`).
    pub engine: String,
    /// Its health, as `GET /v1/pools/{id}/health` gives it.
    pub health: PoolHealth,
    /// Pool id.
    pub id: String,
    /// What it serves: `embedding` or `rerank`; absent for `chat` (generation).
    #[serde(default = "chat_kind", skip_serializing_if = "is_chat")]
    pub kind: String,
}

/// A pool's `kind` when the answer has none (daemons before pool kinds).
pub fn chat_kind() -> String {
    "chat".into()
}

fn is_chat(k: &str) -> bool {
    k == "chat"
}

/// Body of `GET /v1/pools`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolList {
    /// Every configured pool, in configuration order.
    pub pools: Vec<PoolInfo>,
}

/// Body of `POST /v1/pools/{id}/drain`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Milliseconds from now that queued and running tasks get to finish; what is left then
    /// ends with `CANCELED`. Default 30000, at most 86400000. `0` cancels at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// `true` ends a drain: the pool admits work again. Nothing else is changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resume: bool,
}

/// Answer of `POST /v1/pools/{id}/drain`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DrainResponse {
    /// The pool.
    pub pool_id: String,
    /// Whether the pool now refuses new work.
    pub draining: bool,
    /// When what is left gets canceled (ms since the Unix epoch); absent after a resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_at_ms: Option<u64>,
    /// Tasks waiting in the pool's queue now.
    pub queued: usize,
    /// Tasks running on the pool now.
    pub running: usize,
}

/// In the 202 of a task admitted to an `on_demand` pool that is not loaded: the task waits
/// for the load.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PoolLoadNote {
    /// What is left of the expected load time (included in `predicted_start_ms`).
    pub expected_load_ms: u64,
    /// The pool's load state at admission.
    pub state: LoadState,
    /// Why the task waits: the model is loading, or no GPU has room and which pools hold
    /// the memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// Body of `POST /v1/pools/{id}/unload` (may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UnloadRequest {
    /// Unload even while tasks run or wait: they end with `CANCELED` first. Without it a busy
    /// pool answers 409 and nothing stops.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// Answer of `POST /v1/pools/{id}/load` and `POST /v1/pools/{id}/unload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LoadResponse {
    /// The pool.
    pub pool_id: String,
    /// Its state now (`loaded` or `unloaded`).
    pub state: LoadState,
    /// False when there was nothing to do (already loaded, already unloaded).
    pub changed: bool,
    /// From the request to the end (the load or unload included).
    pub took_ms: u64,
    /// Devices of the loaded replicas (`gpu0`, `gpu0+gpu1` for a split).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// Pools evicted to make room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<String>,
    /// Tasks a forced unload canceled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub canceled: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Body of `POST /v1/pools/{id}/reload`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// The model the pool should serve: a GGUF file path, or the id of an Active catalog model
    /// with a local path. Omitted: restart on the serving model (this also closes an open
    /// circuit breaker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_model_ref: Option<String>,
    /// How long the replaced replicas may finish their in-flight tasks before they are
    /// stopped (those tasks then end with `WORKER_RESET`). Default 60000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_ms: Option<u64>,
}

/// Answer of a successful `POST /v1/pools/{id}/reload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ReloadResponse {
    /// The pool.
    pub pool_id: String,
    /// The generation now serving.
    pub generation: u64,
    /// The model it serves.
    pub model: String,
    /// The generation replaced; it retires in the background.
    pub previous_generation: u64,
    /// The model that generation served.
    pub previous_model: Option<String>,
    /// From the request to the switch: new replicas started, healthy and serving.
    pub took_ms: u64,
    /// The new replicas (as in `GET /v1/pools/{id}/health`).
    pub replicas: Vec<ReplicaInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica() -> ReplicaInfo {
        ReplicaInfo {
            device: "gpu0".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            generation: 0,
            id: "tiny-r0".into(),
            in_flight: 1,
            info: Some(EngineInfo {
                ctx_per_slot: Some(512),
                model: None,
                slots: Some(2),
                version: "b1".into(),
            }),
            last_error: None,
            pid: Some(7),
            restarts: 0,
            slots: 2,
            state: ReplicaState::CircuitOpen,
        }
    }

    #[test]
    fn replica_wire_form() {
        let s = serde_json::to_string(&replica()).unwrap();
        assert_eq!(
            s,
            r#"{"device":"gpu0","endpoint":"http://127.0.0.1:1","generation":0,"id":"tiny-r0","in_flight":1,"info":{"ctx_per_slot":512,"model":null,"slots":2,"version":"b1"},"last_error":null,"pid":7,"restarts":0,"slots":2,"state":"circuit_open"}"#
        );
        assert_eq!(serde_json::from_str::<ReplicaInfo>(&s).unwrap(), replica());
        for st in [
            ReplicaState::Starting,
            ReplicaState::Ready,
            ReplicaState::Unready,
            ReplicaState::Crashed,
            ReplicaState::CircuitOpen,
            ReplicaState::Retiring,
            ReplicaState::Stopped,
            ReplicaState::Unloaded,
            ReplicaState::Loading,
            ReplicaState::Draining,
            ReplicaState::Unloading,
            ReplicaState::Failed,
        ] {
            assert_eq!(
                serde_json::to_value(st).unwrap(),
                serde_json::json!(st.as_str())
            );
        }
    }

    #[test]
    fn health_omits_empty_reload_lists_and_no_deadline() {
        let h = PoolHealth {
            drain_deadline_ms: None,
            draining: false,
            generation: 0,
            incoming: vec![],
            last_error: None,
            live: true,
            model: Some("/m/tiny.gguf".into()),
            ready: true,
            replicas: vec![replica()],
            on_demand: None,
            retiring: vec![],
        };
        let v = serde_json::to_value(&h).unwrap();
        for absent in ["drain_deadline_ms", "incoming", "retiring", "on_demand"] {
            assert!(v.get(absent).is_none(), "{absent} should be absent");
        }
        assert!(v["last_error"].is_null());
        assert_eq!(serde_json::from_value::<PoolHealth>(v).unwrap(), h);
    }

    #[test]
    fn drain_request_forms() {
        let r: DrainRequest = serde_json::from_str(r#"{"resume": true}"#).unwrap();
        assert!(r.resume && r.deadline_ms.is_none());
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"{"resume":true}"#);
        let d = DrainRequest {
            deadline_ms: Some(5),
            resume: false,
        };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"deadline_ms":5}"#);
        assert!(serde_json::from_str::<DrainRequest>(r#"{"deadline":5}"#).is_err());
    }
}
