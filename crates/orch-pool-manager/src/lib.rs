//! The pool manager: owns engine pools and their replicas.
//!
//! It resolves the GPU inventory (NVML, an injected fake for tests, or the explicit dev CPU
//! mode), places each replica on the least-loaded GPU that fits it, launches and supervises
//! engine processes (health, crash restart with backoff, circuit breaker), and reports replica
//! state truthfully: a replica is `ready` only while its engine answers health checks.
//!
//! A pool's replicas come in generations (see [`Pool`]): [`PoolManager::reload`] starts a new
//! generation on a new model beside the serving one, swaps it in once healthy and retires the
//! old one after its in-flight tasks, or rolls back and keeps the old one serving.
//!
//! The daemon uses it in-process through [`PoolManager`] and [`Pool`]; nothing here knows about
//! queues, tasks or HTTP handlers. Dispatchers take a [`Lease`] per task on the replica they
//! chose, which is how the pool manager knows when a retiring replica is idle.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orch_config::{Config, PoolConfig};
use orch_engine_adapters::EngineAdapter;
use orch_gpu_inventory::{GpuDevice, GpuInventory};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub mod gguf;
pub mod launch;
mod load_times;
mod metrics;
mod on_demand;
mod placement;
mod pool;
mod reload;
mod replica;
mod supervisor;

pub use load_times::ENGINE_START_MS;
pub use metrics::{PoolMetrics, ReplicaLabels};
pub use on_demand::{LoadError, LoadErrorKind, LoadReport, UnloadHook, UnloadingEngine};
pub use placement::{GpuMode, HEADROOM_BYTES};
pub use pool::{LoadPhase, OnDemandHealth, Pool, PoolHealth};
pub use reload::{ReloadError, ReloadErrorKind, ReloadOptions, ReloadReport};
pub use replica::{Lease, Replica, ReplicaState, ReplicaStatus, ReplicaView};
pub use supervisor::{CIRCUIT_CRASHES, CIRCUIT_WINDOW};

use placement::{Ledger, ReplicaPlan};
use pool::Generation;
use supervisor::Supervised;

/// Why the pool manager cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No usable NVIDIA GPU and CPU inference is not allowed.
    #[error("{0}")]
    NoGpu(String),
    /// A bad fake GPU spec or similar configuration problem.
    #[error("{0}")]
    Config(String),
}

/// Locks a mutex, recovering the data if a holder panicked (state here stays consistent field
/// by field, so a poisoned lock is still usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Builds a replica's adapter from its pool's configuration and the engine's base URL.
/// Injected through [`StartOptions::adapters`] so tests can run pools on an in-process engine
/// double; without it each pool speaks its engine's real HTTP protocol.
pub type AdapterFactory =
    Arc<dyn Fn(&PoolConfig, &str) -> Result<Arc<dyn EngineAdapter>, String> + Send + Sync>;

/// What [`PoolManager::start_with`] may inject instead of the real thing (tests).
#[derive(Clone, Default)]
pub struct StartOptions {
    /// A GPU inventory instead of NVML or `dev.fake_gpus`.
    pub inventory: Option<Arc<dyn GpuInventory>>,
    /// Adapters instead of the HTTP ones `adapter_for` picks by engine kind; also used for
    /// the replicas of later reloads.
    pub adapters: Option<AdapterFactory>,
}

/// Owns every pool and the GPU inventory.
pub struct PoolManager {
    pools: Vec<Arc<Pool>>,
    gpu: GpuMode,
    metrics: PoolMetrics,
    ledger: Arc<Ledger>,
    cancel: CancellationToken,
    adapters: Option<AdapterFactory>,
    /// Background tasks besides the supervisors (the metrics sampler, the on-demand
    /// controller and its loads).
    tasks: TaskTracker,
    /// Models on demand: the controller's wake-up, load times, the plan lock.
    od: on_demand::OnDemand,
}

impl PoolManager {
    /// Resolves GPUs, places and launches every pool. Returns once supervisors are running
    /// (replicas become ready in the background). Must run inside a tokio runtime.
    ///
    /// Fails fast with an actionable diagnosis when pools need GPUs and none is usable, unless
    /// `dev.allow_cpu_inference` is set.
    pub fn start(cfg: &Config) -> Result<Arc<Self>, PoolError> {
        Self::start_with(cfg, StartOptions::default())
    }

    /// Like [`PoolManager::start`] with an injected GPU inventory and/or adapter factory (tests).
    pub fn start_with(cfg: &Config, opts: StartOptions) -> Result<Arc<Self>, PoolError> {
        let launches = cfg.pools.iter().any(|p| p.endpoint.is_none());
        let gpu = GpuMode::resolve(cfg, opts.inventory, launches)?;
        let metrics = PoolMetrics::default();
        let ledger = Arc::new(Ledger::with_limits(&gpu, cfg.placement.devices.clone()));
        // on_demand pools start unloaded: nothing placed, nothing launched.
        let plans = placement::place_all(cfg, &gpu, &metrics, &ledger);
        let any_on_demand = cfg.pools.iter().any(PoolConfig::on_demand);
        let times = load_times::LoadTimes::open(
            any_on_demand.then(|| cfg.data_dir().join("model_load_times.json")),
        );
        let mut mgr = Self {
            pools: Vec::new(),
            gpu,
            metrics,
            ledger,
            cancel: CancellationToken::new(),
            adapters: opts.adapters,
            tasks: TaskTracker::new(),
            od: on_demand::OnDemand::new(
                times,
                std::time::Duration::from_millis(cfg.placement.max_swap_wait_ms),
            ),
        };
        for (pcfg, replica_plans) in cfg.pools.iter().zip(plans) {
            let pcfg = Arc::new(pcfg.clone());
            let generation = if pcfg.on_demand() {
                mgr.placeholder(0, pcfg, None)
            } else {
                mgr.new_generation(0, pcfg, &replica_plans)
            };
            let pool = Arc::new(Pool::new(generation.clone()));
            pool.set_wake(mgr.od.wake.clone());
            mgr.spawn_supervisors(&pool, &generation, replica_plans);
            mgr.pools.push(pool);
        }
        mgr.metrics.attach(mgr.pools.clone());
        let mgr = Arc::new(mgr);
        metrics::spawn_sampler(
            Arc::downgrade(&mgr),
            &mgr.pools,
            &mgr.tasks,
            mgr.cancel.clone(),
        );
        if any_on_demand {
            on_demand::spawn_estimates(&mgr);
            on_demand::spawn_controller(
                Arc::downgrade(&mgr),
                mgr.od.wake.clone(),
                &mgr.tasks,
                mgr.cancel.clone(),
            );
        }
        Ok(mgr)
    }

    /// A generation's replicas (not started yet).
    fn new_generation(
        &self,
        number: u64,
        cfg: Arc<PoolConfig>,
        plans: &[ReplicaPlan],
    ) -> Arc<Generation> {
        let replicas = (0u32..)
            .zip(plans)
            .map(|(i, p)| {
                let r = Replica::new(
                    placement::replica_id(&cfg.id, number, i),
                    p.device.clone(),
                    cfg.slots,
                    number,
                );
                r.set_wake(self.od.wake.clone());
                Arc::new(r)
            })
            .collect();
        Generation::new(number, cfg, replicas, &self.cancel)
    }

    /// One supervisor per replica of `generation`, tracked by the generation.
    fn spawn_supervisors(
        &self,
        pool: &Arc<Pool>,
        generation: &Generation,
        plans: Vec<ReplicaPlan>,
    ) {
        for (rep, plan) in generation.replicas.iter().zip(plans) {
            let s = Supervised {
                pool: pool.clone(),
                generation: generation.number,
                cfg: generation.cfg.clone(),
                rep: rep.clone(),
                cancel: generation.cancel.clone(),
                metrics: self.metrics.clone(),
                ledger: self.ledger.clone(),
                gpu: self.gpu.clone(),
                adapters: self.adapters.clone(),
            };
            generation.tracker.spawn(supervisor::supervise(s, plan));
        }
    }

    /// Sets what runs before an unloading on_demand pool's engines stop (once; later calls
    /// are ignored).
    pub fn set_unload_hook(&self, hook: Arc<dyn UnloadHook>) {
        let _ = self.od.unload_hook.set(hook);
    }

    /// Every pool, in configuration order.
    pub fn pools(&self) -> &[Arc<Pool>] {
        &self.pools
    }

    /// One pool.
    pub fn pool(&self, id: &str) -> Option<&Arc<Pool>> {
        self.pools.iter().find(|p| p.id() == id)
    }

    /// Per device index, the slots of ready replicas not busy with a task: placement's
    /// tie-breaker (docs/PLACEMENT.md, "The rule": equal `available` goes to more free slots).
    pub(crate) fn free_slots_by_device(&self) -> HashMap<u32, u32> {
        let mut free = HashMap::new();
        for pool in &self.pools {
            for r in pool.replicas() {
                let s = &r.status;
                if s.state != ReplicaState::Ready {
                    continue;
                }
                let Some(index) = s.device.strip_prefix("gpu").and_then(|i| i.parse().ok()) else {
                    continue;
                };
                let idle =
                    u32::try_from(s.in_flight).map_or(0, |busy| s.slots.saturating_sub(busy));
                *free.entry(index).or_insert(0u32) += idle;
            }
        }
        free
    }

    /// The GPU mode in force.
    pub fn gpu_mode(&self) -> &GpuMode {
        &self.gpu
    }

    /// Current GPU snapshot (empty in CPU mode or on inventory errors).
    pub fn gpus(&self) -> Vec<GpuDevice> {
        self.gpu.snapshot()
    }

    /// VRAM placement set aside for each live replica, as `(replica id, GPU index, bytes)`:
    /// one entry per GPU a replica uses (a split has several). Estimates, not measurements;
    /// the status page shows them where NVML lists no engine process.
    pub fn vram_reservations(&self) -> Vec<(String, u32, u64)> {
        self.ledger.holdings()
    }

    /// Pool metrics, to register with the daemon's registry.
    pub fn metrics(&self) -> &PoolMetrics {
        &self.metrics
    }

    /// Stops every engine of every generation (TERM, grace, KILL) and waits for the
    /// supervisors.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        for pool in &self.pools {
            for generation in pool.all_generations() {
                generation.stop().await;
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }
}
