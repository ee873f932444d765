//! Models on demand (docs/PLACEMENT.md, "Models on demand").
//!
//! An `on_demand` pool starts *unloaded*: its serving generation is a placeholder whose
//! replicas have no engine and hold no VRAM. A controller task (woken when a dispatcher
//! publishes queued work, when a task gives its slot back, and every [`TICK`]) then:
//!
//! - **loads** a pool that has queued work (or a `POST …/load`) and no engine: it plans room
//!   with the pure planner (`orch_core::vram::plan_room`: one GPU, a split, or evicting
//!   idle on_demand models least recently used first on the cards where that helps), records
//!   the plan in the placement ledger at once (the single source of truth, so two loads never
//!   count on the same bytes), stops the evicted engines, then launches the new one;
//! - **waits** when nothing can be freed, with the reason the pool's health, the tasks' 202
//!   and their `metrics` frames show;
//! - **unloads** a loaded pool idle for `idle_unload_s`;
//! - **yields**: a pool whose tasks waited `placement.max_swap_wait_ms` for VRAM held by busy
//!   on_demand pools makes those pools start no new task; once their running tasks end they
//!   are evicted (their queued tasks load them again later, and wait their turn).
//!
//! Never evicted: `always` pools, and replicas with a running task or queued work (unless
//! yielding). A load that fails (the engine exits or misses its health check) is retried once
//! on another placement; then the pool is `failed` and its waiting tasks end with the reason.
//! A bad model file fails at once, without launching anything.

mod controller;
mod load;
mod plan;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_engine_adapters::EngineAdapter;
use serde::Serialize;
use tokio::sync::Notify;

use crate::load_times::LoadTimes;
use crate::pool::LoadPhase;
use crate::Pool;

pub(crate) use controller::{spawn_controller, spawn_estimates};

/// How often the controller looks even when nothing woke it (idle timers, waits).
pub(super) const TICK: Duration = Duration::from_millis(500);

/// The manager's on-demand state.
pub(crate) struct OnDemand {
    /// Wakes the controller.
    pub(crate) wake: Arc<Notify>,
    /// Expected load time per model.
    pub(crate) times: Arc<LoadTimes>,
    /// Planning and the ledger changes and state changes it leads to happen under this lock.
    plan_lock: Mutex<()>,
    /// `placement.max_swap_wait_ms`.
    max_swap_wait: Duration,
    /// The zero of the LRU clock handed to the planner.
    epoch: Instant,
    /// Told before an unloading pool's engines stop (the daemon saves sessions' KV there).
    pub(crate) unload_hook: std::sync::OnceLock<Arc<dyn UnloadHook>>,
}

/// What an unloading replica leaves behind: its id and the adapter of its engine, still
/// running (for [`UnloadHook::before_stop`]).
pub type UnloadingEngine = (String, Arc<dyn EngineAdapter>);

/// Called before the engines of an unloading `on_demand` pool stop (an eviction, an idle or a
/// requested unload; not a failed engine), while they still serve slot requests: the daemon
/// saves its sessions' KV slots there, to restore them when the pool comes back.
#[async_trait::async_trait]
pub trait UnloadHook: Send + Sync {
    /// `engines` are `pool`'s replicas about to stop, none of them running a task.
    async fn before_stop(&self, pool: &Pool, engines: Vec<UnloadingEngine>);
}

/// The longest an unload waits for [`UnloadHook::before_stop`].
pub(super) const UNLOAD_HOOK_LIMIT: Duration = Duration::from_secs(60);

impl OnDemand {
    pub(crate) fn new(times: LoadTimes, max_swap_wait: Duration) -> Self {
        Self {
            wake: Arc::new(Notify::new()),
            times: Arc::new(times),
            plan_lock: Mutex::new(()),
            max_swap_wait,
            epoch: Instant::now(),
            unload_hook: std::sync::OnceLock::new(),
        }
    }
}

/// Why `POST /v1/pools/{id}/load` or `/unload` did not do it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadErrorKind {
    /// No pool with that id.
    UnknownPool,
    /// A `load: always` pool: loaded at start, never unloaded.
    NotOnDemand,
    /// No GPU has room and nothing can be evicted (the message says what holds the VRAM).
    NoRoom,
    /// The load failed (bad model file, engine exited or missed its health check).
    Failed,
    /// Unload: the pool has running or queued tasks (or is loading).
    Busy,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// A refused or failed load or unload.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct LoadError {
    /// What went wrong.
    pub kind: LoadErrorKind,
    /// For people.
    pub message: String,
}

impl LoadError {
    fn new(kind: LoadErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A finished load or unload.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The pool.
    pub pool_id: String,
    /// Its state now.
    pub state: LoadPhase,
    /// False when there was nothing to do (already loaded, already unloaded).
    pub changed: bool,
    /// From the request to the end.
    pub took_ms: u64,
    /// Devices of the loaded replicas (`gpu0`, `gpu0+gpu1` for a split).
    pub devices: Vec<String>,
    /// Pools evicted to make room for this load.
    pub evicted: Vec<String>,
}

pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use async_trait::async_trait;
    use orch_config::{Config, LoadPolicy, SplitPolicy};
    use orch_engine_adapters::{AdapterError, EngineInfo, EngineStream, GenerateRequest};
    use orch_gpu_inventory::{GpuInventory, StaticInventory};

    use std::collections::HashMap;

    use orch_config::PoolConfig;

    use super::*;
    use crate::metrics::ModelEventLabels;
    use crate::{AdapterFactory, PoolManager, ReplicaState, StartOptions};

    /// An engine that is healthy as soon as asked (the process behind it is `sleep`).
    struct Healthy(String);

    #[async_trait]
    impl EngineAdapter for Healthy {
        fn engine(&self) -> &'static str {
            "llamacpp"
        }
        fn endpoint(&self) -> &str {
            &self.0
        }
        async fn health(&self) -> Result<(), AdapterError> {
            Ok(())
        }
        async fn info(&self) -> Result<EngineInfo, AdapterError> {
            Ok(EngineInfo::default())
        }
        async fn generate(&self, _req: GenerateRequest) -> Result<EngineStream, AdapterError> {
            Err(AdapterError::Unsupported("generate"))
        }
    }

    struct Rig {
        mgr: Arc<PoolManager>,
        _dir: tempfile::TempDir,
    }

    fn script(dir: &std::path::Path, name: &str, body: &str) -> String {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.to_string_lossy().into_owned()
    }

    /// Pools on two fake 1400 MiB cards (888 MiB each after headroom): a 1 MiB model with 1024
    /// tokens of context needs ~769 MiB, so each card holds one pool. `tweak` adjusts pools.
    fn rig(ids: &[&str], tweak: impl Fn(&mut PoolConfig)) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        let mut bytes = b"GGUF".to_vec();
        bytes.resize(1 << 20, 0);
        std::fs::write(&model, bytes).unwrap();
        let engine = script(dir.path(), "engine", "exec sleep 100000");
        let mut cfg = Config {
            data_dir: Some(dir.path().join("data")),
            ..Config::default()
        };
        cfg.placement.max_swap_wait_ms = 86_400_000;
        for id in ids {
            let mut p = PoolConfig::llamacpp(id, model.to_str().unwrap(), Some(&engine));
            p.load = LoadPolicy::OnDemand;
            p.ctx = 1024;
            p.slots = 1;
            p.startup_timeout_s = 30;
            tweak(&mut p);
            cfg.pools.push(p);
        }
        let inventory: Arc<dyn GpuInventory> =
            Arc::new(StaticInventory::from_spec("1400MiB:A,1400MiB:B").unwrap());
        let adapters: AdapterFactory = Arc::new(|_p: &PoolConfig, url: &str| {
            Ok(Arc::new(Healthy(url.to_owned())) as Arc<dyn EngineAdapter>)
        });
        let mgr = PoolManager::start_with(
            &cfg,
            StartOptions {
                inventory: Some(inventory),
                adapters: Some(adapters),
            },
        )
        .unwrap();
        Rig { mgr, _dir: dir }
    }

    impl Rig {
        fn pool(&self, id: &str) -> Arc<Pool> {
            self.mgr.pool(id).cloned().unwrap()
        }

        /// Polls until `ok`, logging the time it took; fails after a generous limit.
        async fn until(&self, what: &str, ok: impl Fn() -> bool) {
            let t0 = Instant::now();
            while !ok() {
                assert!(
                    t0.elapsed() < Duration::from_secs(60),
                    "{what}: not after {:?}",
                    t0.elapsed()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            eprintln!("{what}: after {:?}", t0.elapsed());
        }

        async fn phase(&self, id: &str, want: LoadPhase) {
            let p = self.pool(id);
            self.until(&format!("{id} {want:?}"), || {
                p.load_phase() == Some(want) && (want != LoadPhase::Loaded || p.is_ready())
            })
            .await;
        }

        /// What a task does: queue, get loaded, run (a lease taken and given back), leave.
        async fn serve(&self, id: &str) {
            let p = self.pool(id);
            p.set_queued(1);
            self.phase(id, LoadPhase::Loaded).await;
            let lease = p.replicas()[0].try_lease().unwrap();
            p.set_queued(0);
            drop(lease);
        }

        fn device(&self, id: &str) -> String {
            self.pool(id).replicas()[0].status.device.clone()
        }

        /// Bytes the ledger holds per device: never more than a card's 888 MiB.
        fn check_ledger(&self) {
            let mut per: HashMap<u32, u64> = HashMap::new();
            for (_, d, b) in self.mgr.ledger.holdings() {
                *per.entry(d).or_default() += b;
            }
            for (d, b) in per {
                assert!(b <= 888 << 20, "gpu{d} overcommitted: {b}");
            }
        }
    }

    #[tokio::test]
    async fn pools_start_unloaded_load_on_demand_and_take_turns_least_recently_used_first() {
        let r = rig(&["a", "b", "c"], |_| {});
        for id in ["a", "b", "c"] {
            let h = r.pool(id).health();
            assert_eq!(
                h.on_demand.as_ref().map(|o| o.state),
                Some(LoadPhase::Unloaded)
            );
            assert_eq!(h.replicas[0].state, ReplicaState::Unloaded);
            assert!(!h.live, "no engine");
            assert!(r.pool(id).expected_load_ms() >= crate::ENGINE_START_MS);
        }
        assert!(
            r.mgr.ledger.holdings().is_empty(),
            "unloaded pools hold no VRAM"
        );
        r.serve("a").await;
        r.serve("b").await;
        assert_ne!(r.device("a"), r.device("b"), "one pool per card");
        r.check_ledger();
        // c needs a card: a was used longest ago, so a goes.
        r.serve("c").await;
        assert_eq!(r.pool("a").load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(r.pool("b").load_phase(), Some(LoadPhase::Loaded));
        r.check_ledger();
        // a again: now b is the least recently used.
        r.serve("a").await;
        assert_eq!(r.pool("b").load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(r.pool("c").load_phase(), Some(LoadPhase::Loaded));
        r.check_ledger();
        let m = &r.mgr.metrics;
        let evictions = |id: &str| {
            m.model_evictions
                .get_or_create(&ModelEventLabels {
                    pool_id: id.into(),
                    reason: "make_room".into(),
                })
                .get()
        };
        assert_eq!((evictions("a"), evictions("b"), evictions("c")), (1, 1, 0));
        let loads = m
            .model_loads
            .get_or_create(&ModelEventLabels {
                pool_id: "a".into(),
                reason: "demand".into(),
            })
            .get();
        assert_eq!(loads, 2);
        // Measured load times are remembered in the data directory.
        let times =
            std::fs::read_to_string(r._dir.path().join("data/model_load_times.json")).unwrap();
        assert!(times.contains("m.gguf"), "{times}");
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_busy_pool_is_never_evicted_and_the_waiting_pool_says_why() {
        let r = rig(&["a", "b", "c"], |_| {});
        r.serve("a").await;
        r.serve("b").await;
        let (a, b, c) = (r.pool("a"), r.pool("b"), r.pool("c"));
        // a runs a task, b has one queued: neither may go.
        let lease = a.replicas()[0].try_lease().unwrap();
        b.set_queued(1);
        c.set_queued(1);
        r.until("c waits with a reason", || c.load_waiting().is_some())
            .await;
        let why = c.load_waiting().unwrap_or_default();
        assert!(
            why.contains("1 running") && why.contains("1 queued"),
            "{why}"
        );
        assert_eq!(c.health().on_demand.and_then(|o| o.waiting), Some(why));
        assert!(c.pending_load_ms() >= c.expected_load_ms());
        assert_eq!(a.load_phase(), Some(LoadPhase::Loaded));
        // a's task ends: a is idle now and goes.
        drop(lease);
        r.phase("c", LoadPhase::Loaded).await;
        assert_eq!(a.load_phase(), Some(LoadPhase::Unloaded));
        assert_eq!(
            b.load_phase(),
            Some(LoadPhase::Loaded),
            "b still has queued work"
        );
        assert_eq!(c.pending_load_ms(), 0);
        r.check_ledger();
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_pool_waiting_past_max_swap_wait_makes_the_busy_one_yield() {
        let r = rig(&["a", "b", "c"], |_| {});
        r.serve("a").await;
        r.serve("b").await;
        let (a, c) = (r.pool("a"), r.pool("c"));
        // a and b always have work; c waits.
        a.set_queued(3);
        r.pool("b").set_queued(3);
        let lease = a.replicas()[0].try_lease().unwrap();
        c.set_queued(1);
        r.until("c waits", || c.load_waiting().is_some()).await;
        assert!(!a.is_yielding(), "max_swap_wait_ms not reached");
        // Waited long enough (the rig's limit is a day; pretend it passed).
        c.with_load(|s| s.waiting_since = Some(Instant::now() - Duration::from_secs(86_401)));
        r.until("a or b yields", || {
            a.is_yielding() || r.pool("b").is_yielding()
        })
        .await;
        let yielder = if a.is_yielding() { "a" } else { "b" };
        assert_eq!(yielder, "a", "the least recently used one yields");
        // It finishes its running task, then goes, queued work and all.
        drop(lease);
        r.phase("c", LoadPhase::Loaded).await;
        assert_eq!(a.load_phase(), Some(LoadPhase::Unloaded));
        assert!(!a.is_yielding());
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn idle_pools_unload_after_idle_unload_s() {
        let r = rig(&["a"], |p| p.idle_unload_s = 1);
        r.serve("a").await;
        let t0 = Instant::now();
        r.phase("a", LoadPhase::Unloaded).await;
        assert!(
            t0.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        assert!(r.mgr.ledger.holdings().is_empty());
        let idle = r
            .mgr
            .metrics
            .model_evictions
            .get_or_create(&ModelEventLabels {
                pool_id: "a".into(),
                reason: "idle".into(),
            })
            .get();
        assert_eq!(idle, 1);
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_pool_too_big_for_one_card_is_split_across_two() {
        // 64 slots × 65536 tokens of 32 B (the fallback for a model without a shape) = 128 MiB
        // of KV: 897 MiB on one card (888 available), 129 + 2 × 768 MiB split.
        let r = rig(&["big", "never"], |p| {
            p.ctx = 65536;
            p.slots = 64;
            if p.id == "never" {
                p.split = SplitPolicy::Never;
            }
        });
        r.serve("big").await;
        assert_eq!(r.device("big"), "gpu0+gpu1");
        let rid = r.pool("big").replicas()[0].status.id.clone();
        let parts: Vec<_> = r
            .mgr
            .ledger
            .holdings()
            .into_iter()
            .filter(|h| h.0 == rid)
            .collect();
        assert_eq!(parts.len(), 2, "{parts:?}");
        assert!(r.mgr.ledger.holds(&rid));
        r.check_ledger();
        // Unloading it frees both cards.
        r.mgr.unload("big").await.unwrap();
        assert!(r.mgr.ledger.holdings().is_empty());
        // split: never fits nowhere: it waits and says so.
        let never = r.pool("never");
        never.set_queued(1);
        r.until("never waits", || never.load_waiting().is_some())
            .await;
        assert!(never
            .load_waiting()
            .unwrap_or_default()
            .contains("split: never"));
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_load_that_fails_is_retried_once_elsewhere_then_the_pool_fails_with_the_output() {
        let r = rig(&["bad", "ok"], |p| {
            if p.id == "bad" {
                let dir = std::path::Path::new(p.engine_binary.as_deref().unwrap())
                    .parent()
                    .unwrap()
                    .to_owned();
                p.engine_binary = Some(script(
                    &dir,
                    "dying",
                    "echo 'ggml_cuda: out of memory allocating 4242 MiB'; exit 1",
                ));
            }
        });
        let bad = r.pool("bad");
        bad.set_queued(1);
        r.phase("bad", LoadPhase::Failed).await;
        let (_, why) = bad.load_failure().unwrap();
        assert!(
            why.contains("m.gguf") && why.contains("tried twice"),
            "{why}"
        );
        assert!(
            why.contains("on gpu0, then on gpu1") || why.contains("on gpu1, then on gpu0"),
            "the retry went to the other card: {why}"
        );
        assert!(
            why.contains("out of memory allocating 4242 MiB"),
            "the engine's output: {why}"
        );
        assert!(
            r.mgr.ledger.holdings().is_empty(),
            "the ledger let go of both attempts"
        );
        assert_eq!(bad.health().replicas[0].state, ReplicaState::Failed);
        // Other pools are untouched and still load.
        r.serve("ok").await;
        // A new task after the dispatcher ended the waiting ones tries again.
        bad.failure_handled(1);
        r.phase("bad", LoadPhase::Failed).await;
        r.mgr.shutdown().await;
    }

    #[tokio::test]
    async fn a_missing_model_fails_at_once_naming_the_file_and_busy_unloads_are_refused() {
        let r = rig(&["gone", "busy"], |p| {
            if p.id == "gone" {
                p.model = Some("/nonexistent/model.gguf".into());
            }
        });
        let gone = r.pool("gone");
        let e = r.mgr.load("gone").await.unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Failed);
        assert!(e.message.contains("/nonexistent/model.gguf"), "{e}");
        assert_eq!(gone.load_phase(), Some(LoadPhase::Failed));
        // An explicit load, then an unload refused while a task runs, then allowed.
        let rep = r.mgr.load("busy").await.unwrap();
        assert!(rep.changed && rep.devices[0].starts_with("gpu"), "{rep:?}");
        let busy = r.pool("busy");
        let lease = busy.replicas()[0].try_lease().unwrap();
        let e = r.mgr.unload("busy").await.unwrap_err();
        assert_eq!(e.kind, LoadErrorKind::Busy);
        assert!(e.message.contains("1 running"), "{e}");
        assert!(busy.is_ready(), "nothing stopped");
        drop(lease);
        let rep = r.mgr.unload("busy").await.unwrap();
        assert_eq!(rep.state, LoadPhase::Unloaded);
        assert!(
            !r.mgr.unload("busy").await.unwrap().changed,
            "already unloaded"
        );
        r.mgr.shutdown().await;
    }
}
