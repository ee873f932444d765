//! Prometheus series owned by the pool manager; the daemon registers them.
//!
//! Counters (placements, restarts) are incremented where the event happens. The gauges
//! (`pool_ready`, `gpu_utilization`, `vram_used_bytes`, `kv_cache_usage_ratio`) are built at
//! scrape time by a [`Collector`] from the live pool state, which `/health` reads too: they
//! cannot lag a state change (ready, crash, restart, reload swap, retire, stop) and their label
//! sets are exactly the serving replicas of the moment, so a replica that went away or a label
//! that changed (engine version, generation) leaves no stale series. This is simpler and more
//! robust than hooking every state transition. Only the values that have no events, NVML
//! utilisation/VRAM and engine KV usage, are sampled, by [`spawn_sampler`].

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use orch_gpu_inventory::GpuDevice;

use crate::{lock, Pool, PoolManager, ReplicaState};

/// `placement_decisions_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlacementLabels {
    /// `placed`, `unplaceable`, `cpu`.
    pub outcome: String,
    /// Whether the pool has a device mask.
    pub pinned: String,
    /// `none` or `cpu_dev`.
    pub fallback: String,
}

/// Per-device gauge labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Pool.
    pub pool_id: String,
    /// Replica.
    pub replica_id: String,
    /// `gpu0`, ...
    pub device: String,
}

/// Per-replica gauge labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaLabels {
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Pool.
    pub pool_id: String,
    /// Replica.
    pub replica_id: String,
}

/// Per-pool labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool.
    pub pool_id: String,
}

/// `model_loads_total` / `model_evictions_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelEventLabels {
    /// Pool.
    pub pool_id: String,
    /// Loads: `demand` (a queued task), `request` (`POST …/load`), `retry` (after a failed
    /// load). Evictions: `make_room` (another model needed the VRAM), `idle`
    /// (`idle_unload_s`), `request` (`POST …/unload`).
    pub reason: String,
}

fn load_histogram() -> Histogram {
    // 50 ms .. ~7 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 14))
}

/// The pool manager's series.
#[derive(Clone)]
pub struct PoolMetrics {
    /// `placement_decisions_total{outcome,pinned,fallback}`.
    pub placement_decisions: Family<PlacementLabels, Counter>,
    /// `engine_restarts_total{pool_id}`.
    pub engine_restarts: Family<PoolLabels, Counter>,
    /// `model_loads_total{pool_id,reason}`: on_demand loads that finished (engine ready).
    pub model_loads: Family<ModelEventLabels, Counter>,
    /// `model_evictions_total{pool_id,reason}`: on_demand engines stopped to free VRAM.
    pub model_evictions: Family<ModelEventLabels, Counter>,
    /// `model_load_seconds{pool_id}`: from launch to the first good health check.
    pub model_load_seconds: Family<PoolLabels, Histogram, fn() -> Histogram>,
    /// What the scrape-time gauges are built from.
    live: Arc<Live>,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        Self {
            placement_decisions: Family::default(),
            engine_restarts: Family::default(),
            model_loads: Family::default(),
            model_evictions: Family::default(),
            model_load_seconds: Family::new_with_constructor(load_histogram),
            live: Arc::default(),
        }
    }
}

/// The pools (set once they exist) and the last samples of the values without events.
#[derive(Default)]
struct Live {
    pools: OnceLock<Vec<Arc<Pool>>>,
    samples: Mutex<Samples>,
}

#[derive(Clone, Default)]
struct Samples {
    /// The last GPU snapshot.
    gpus: Vec<GpuDevice>,
    /// KV usage (0..1) per replica id. Ids are never reused, so a sample can only ever be
    /// shown for the replica it was taken from.
    kv: HashMap<String, f64>,
}

impl PoolMetrics {
    /// Adds the series to `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "placement_decisions",
            "Replica placement decisions",
            self.placement_decisions.clone(),
        );
        reg.register(
            "engine_restarts",
            "Engine restarts after crashes",
            self.engine_restarts.clone(),
        );
        reg.register(
            "model_loads",
            "on_demand model loads that finished, by why the model was loaded",
            self.model_loads.clone(),
        );
        reg.register(
            "model_evictions",
            "on_demand engines stopped to free VRAM, by why",
            self.model_evictions.clone(),
        );
        reg.register(
            "model_load_seconds",
            "Time from launching an on_demand engine to its first good health check",
            self.model_load_seconds.clone(),
        );
        reg.register_collector(Box::new(LiveGauges(self.live.clone())));
    }

    /// Gives the gauges the pools to read; the first call wins (the pool set is fixed at start).
    pub(crate) fn attach(&self, pools: Vec<Arc<Pool>>) {
        let _ = self.live.pools.set(pools);
    }

    fn store_samples(&self, samples: Samples) {
        *lock(&self.live.samples) = samples;
    }
}

/// The scrape-time gauges.
struct LiveGauges(Arc<Live>);

impl std::fmt::Debug for LiveGauges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveGauges")
    }
}

/// One scrape's gauges, built from the live state.
#[derive(Default)]
struct Snapshot {
    pool_ready: Family<PoolLabels, Gauge>,
    gpu_utilization: Family<DeviceLabels, Gauge<f64, AtomicU64>>,
    vram_used_bytes: Family<DeviceLabels, Gauge>,
    kv_cache_usage_ratio: Family<ReplicaLabels, Gauge<f64, AtomicU64>>,
}

impl Live {
    fn snapshot(&self) -> Snapshot {
        let out = Snapshot::default();
        let Some(pools) = self.pools.get() else {
            return out;
        };
        // A copy, so that no pool lock is ever taken while the samples are locked.
        let samples = lock(&self.samples).clone();
        for pool in pools {
            let replicas = pool.replicas();
            // The same rule as `Pool::is_ready`, which `/health` reports.
            let ready = replicas
                .iter()
                .any(|r| r.status.state == ReplicaState::Ready);
            out.pool_ready
                .get_or_create(&PoolLabels {
                    pool_id: pool.id().to_owned(),
                })
                .set(i64::from(ready));
            let version = pool.engine_version();
            for r in replicas
                .iter()
                .filter(|r| r.status.state == ReplicaState::Ready)
            {
                let s = &r.status;
                if let Some(ratio) = samples.kv.get(&s.id) {
                    out.kv_cache_usage_ratio
                        .get_or_create(&ReplicaLabels {
                            engine: pool.engine().into(),
                            engine_version: version.clone(),
                            pool_id: pool.id().into(),
                            replica_id: s.id.clone(),
                        })
                        .set(*ratio);
                }
                let Some(idx) = s.device.strip_prefix("gpu") else {
                    continue;
                };
                let Some(d) = samples.gpus.iter().find(|d| d.index.to_string() == idx) else {
                    continue;
                };
                let labels = DeviceLabels {
                    engine: pool.engine().into(),
                    engine_version: version.clone(),
                    pool_id: pool.id().into(),
                    replica_id: s.id.clone(),
                    device: s.device.clone(),
                };
                let util = f64::from(d.utilization_pct.unwrap_or(0)) / 100.0;
                out.gpu_utilization.get_or_create(&labels).set(util);
                out.vram_used_bytes
                    .get_or_create(&labels)
                    .set(i64::try_from(replica_vram(d, s.pid)).unwrap_or(i64::MAX));
            }
        }
        out
    }
}

fn encode_family(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    family: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    family.encode(enc.encode_descriptor(name, help, None, family.metric_type())?)
}

impl Collector for LiveGauges {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let s = self.0.snapshot();
        encode_family(
            &mut enc,
            "gpu_utilization",
            "GPU utilisation (0..1) of the device a replica runs on",
            &s.gpu_utilization,
        )?;
        encode_family(
            &mut enc,
            "vram_used_bytes",
            "VRAM in use on the device a replica runs on",
            &s.vram_used_bytes,
        )?;
        encode_family(
            &mut enc,
            "kv_cache_usage_ratio",
            "Share of a replica's KV cache in use (0..1), as its engine reports it",
            &s.kv_cache_usage_ratio,
        )?;
        encode_family(
            &mut enc,
            "pool_ready",
            "1 while some replica of the pool answers health checks",
            &s.pool_ready,
        )
    }
}

/// VRAM a replica holds: its engine process's memory when NVML lists that pid on the device,
/// else (process list unsupported, pid namespaces differ) the device's whole used memory.
fn replica_vram(d: &GpuDevice, pid: Option<u32>) -> u64 {
    pid.and_then(|pid| d.processes.iter().find(|p| p.pid == pid))
        .map_or(d.used_bytes, |p| p.used_bytes)
}

/// Longest wait for one engine's KV usage; a slow engine leaves its gauge out this round.
const KV_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often GPU and KV usage are sampled when no replica changes.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples GPU and KV usage every [`SAMPLE_EVERY`], and at once whenever a replica changes
/// (so a replica that just became ready gets its values without waiting a period). Runs on
/// `tasks` until `cancel` or until the manager is gone.
pub(crate) fn spawn_sampler(
    mgr: Weak<PoolManager>,
    pools: &[Arc<Pool>],
    tasks: &TaskTracker,
    cancel: CancellationToken,
) {
    // Stops the change forwarders too when the sampler ends for lack of a manager.
    let stop = cancel.child_token();
    let wake = Arc::new(Notify::new());
    for pool in pools {
        let (mut changed, wake, stop) = (pool.subscribe(), wake.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = changed.changed() => match r {
                        // A stored permit: changes during a sampling round are not lost.
                        Ok(()) => wake.notify_one(),
                        Err(_) => return,
                    },
                }
            }
        });
    }
    tasks.spawn(async move {
        let _stop_forwarders = stop.clone().drop_guard();
        loop {
            let Some(samples) = sample(&mgr, &stop).await else {
                return;
            };
            let Some(m) = mgr.upgrade() else { return };
            m.metrics.store_samples(samples);
            drop(m);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(SAMPLE_EVERY) => {}
                _ = wake.notified() => {}
            }
        }
    });
}

/// One round: the GPU snapshot and the KV usage of every ready serving replica. `None` once
/// the manager is gone or `stop` fires.
async fn sample(mgr: &Weak<PoolManager>, stop: &CancellationToken) -> Option<Samples> {
    let (gpus, probes) = {
        let mgr = mgr.upgrade()?;
        let probes: Vec<_> = mgr
            .pools()
            .iter()
            .flat_map(|p| p.replicas())
            .filter(|r| r.status.state == ReplicaState::Ready)
            .filter_map(|r| Some((r.status.id.clone(), r.adapter.clone()?)))
            .collect();
        (mgr.gpus(), probes)
    };
    // Asked outside the block above: the manager is not kept alive across engine calls.
    let mut kv = HashMap::with_capacity(probes.len());
    for (id, adapter) in probes {
        let probe = tokio::time::timeout(KV_PROBE_TIMEOUT, adapter.kv_cache_usage());
        tokio::select! {
            _ = stop.cancelled() => return None,
            r = probe => {
                if let Ok(Ok(Some(ratio))) = r {
                    if ratio.is_finite() {
                        kv.insert(id, ratio.clamp(0.0, 1.0));
                    }
                }
            }
        }
    }
    Some(Samples { gpus, kv })
}

#[cfg(test)]
mod tests {
    use orch_config::PoolConfig;
    use orch_engine_adapters::EngineInfo;
    use orch_gpu_inventory::GpuProcess;

    use super::*;
    use crate::pool::Generation;
    use crate::Replica;

    fn generation(pool: &str, number: u64, ids: &[&str]) -> Arc<Generation> {
        Generation::new(
            number,
            Arc::new(PoolConfig::llamacpp(pool, "m.gguf", None)),
            ids.iter()
                .map(|id| Arc::new(Replica::new((*id).into(), "gpu0".into(), 2, number)))
                .collect(),
            &CancellationToken::new(),
        )
    }

    fn ready(r: &Replica, pid: u32, version: Option<&str>) {
        r.update(|s| {
            s.state = ReplicaState::Ready;
            s.pid = Some(pid);
            s.info = version.map(|v| EngineInfo {
                version: v.into(),
                ..EngineInfo::default()
            });
        });
    }

    /// The text a scrape of `m` returns now.
    fn scrape(m: &PoolMetrics) -> String {
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    fn gpu0_samples(kv: &[(&str, f64)]) -> Samples {
        let mut d = orch_gpu_inventory::parse_inventory_spec("24GiB:RTX 3090")
            .unwrap()
            .remove(0);
        d.utilization_pct = Some(40);
        d.processes = vec![
            GpuProcess {
                pid: 10,
                used_bytes: 4_000,
            },
            GpuProcess {
                pid: 11,
                used_bytes: 5_000,
            },
        ];
        Samples {
            gpus: vec![d],
            kv: kv.iter().map(|(id, r)| ((*id).to_owned(), *r)).collect(),
        }
    }

    #[test]
    fn pool_ready_follows_replica_state_at_once() {
        let g = generation("p", 0, &["p-r0"]);
        let pool = Arc::new(Pool::new(g.clone()));
        let m = PoolMetrics::default();
        assert!(
            scrape(&m).contains("# TYPE pool_ready gauge"),
            "described before start"
        );
        m.attach(vec![pool.clone()]);
        assert!(scrape(&m).contains("pool_ready{pool_id=\"p\"} 0\n"));
        // No sampling round, no notification: the very next scrape agrees with /health.
        ready(&g.replicas[0], 10, None);
        assert!(pool.is_ready());
        assert!(scrape(&m).contains("pool_ready{pool_id=\"p\"} 1\n"));
        for down in [
            ReplicaState::Crashed,
            ReplicaState::Unready,
            ReplicaState::Stopped,
        ] {
            g.replicas[0].update(|s| s.state = down);
            assert!(
                scrape(&m).contains("pool_ready{pool_id=\"p\"} 0\n"),
                "{down:?}"
            );
        }
        ready(&g.replicas[0], 10, None);
        g.replicas[0].retire();
        assert!(
            scrape(&m).contains("pool_ready{pool_id=\"p\"} 0\n"),
            "retired"
        );
    }

    #[test]
    fn a_replica_that_goes_away_leaves_no_series() {
        let old = generation("p", 0, &["p-r0"]);
        let pool = Arc::new(Pool::new(old.clone()));
        let m = PoolMetrics::default();
        m.attach(vec![pool.clone()]);
        m.store_samples(gpu0_samples(&[("p-r0", 0.25)]));
        ready(&old.replicas[0], 11, Some("b1"));
        let t = scrape(&m);
        let labels = "{engine=\"llamacpp\",engine_version=\"b1\",pool_id=\"p\",replica_id=\"p-r0\"";
        for series in [
            format!("vram_used_bytes{labels},device=\"gpu0\"}} 5000\n"),
            format!("gpu_utilization{labels},device=\"gpu0\"}} 0.4\n"),
            format!("kv_cache_usage_ratio{labels}}} 0.25\n"),
        ] {
            assert!(t.contains(&series), "missing `{series}` in\n{t}");
        }
        // A reload swaps in a new generation and retires the old one.
        let new = generation("p", 1, &["p-g1-r0"]);
        ready(&new.replicas[0], 10, Some("b2"));
        pool.swap_in(new.clone());
        old.replicas[0].retire();
        let t = scrape(&m);
        assert!(!t.contains("p-r0"), "the old replica's series remain:\n{t}");
        assert!(!t.contains("\"b1\""), "{t}");
        assert!(t.contains("vram_used_bytes{engine=\"llamacpp\",engine_version=\"b2\",pool_id=\"p\",replica_id=\"p-g1-r0\",device=\"gpu0\"} 4000\n"), "{t}");
        assert!(
            !t.contains("kv_cache_usage_ratio{"),
            "no KV sample of the new replica yet: no series\n{t}"
        );
        assert!(t.contains("pool_ready{pool_id=\"p\"} 1\n"), "{t}");
        // A replica that stops (or crashes) drops out of the per-replica gauges at once.
        new.replicas[0].update(|s| s.state = ReplicaState::Crashed);
        let t = scrape(&m);
        assert!(!t.contains("p-g1-r0"), "{t}");
        assert!(t.contains("pool_ready{pool_id=\"p\"} 0\n"), "{t}");
    }

    #[test]
    fn a_learned_engine_version_leaves_no_unknown_twin() {
        let g = generation("p", 0, &["p-r0"]);
        let pool = Arc::new(Pool::new(g.clone()));
        let m = PoolMetrics::default();
        m.attach(vec![pool]);
        m.store_samples(gpu0_samples(&[("p-r0", 0.5)]));
        ready(&g.replicas[0], 10, None);
        let t = scrape(&m);
        assert_eq!(t.matches("engine_version=\"unknown\"").count(), 3, "{t}");
        g.replicas[0].update(|s| {
            s.info = Some(EngineInfo {
                version: "b4242".into(),
                ..EngineInfo::default()
            })
        });
        let t = scrape(&m);
        assert!(!t.contains("\"unknown\""), "stale twin:\n{t}");
        assert_eq!(t.matches("engine_version=\"b4242\"").count(), 3, "{t}");
    }

    #[tokio::test]
    async fn the_sampler_runs_on_the_managers_tracker_and_stops_with_it() {
        let cfg = orch_config::Config::default();
        let inventory: Arc<dyn orch_gpu_inventory::GpuInventory> =
            Arc::new(orch_gpu_inventory::StaticInventory::from_spec("24GiB:RTX 3090").unwrap());
        let mgr = PoolManager::start_with(
            &cfg,
            crate::StartOptions {
                inventory: Some(inventory),
                ..Default::default()
            },
        )
        .unwrap();
        let t0 = std::time::Instant::now();
        while lock(&mgr.metrics.live.samples).gpus.is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(60), "no sample taken");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!mgr.tasks.is_empty(), "the sampler is tracked");
        let t0 = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), mgr.shutdown())
            .await
            .expect("shutdown waits for the sampler, which must stop on cancel");
        eprintln!("shutdown took {:?}", t0.elapsed());
        assert!(mgr.tasks.is_empty());
    }

    #[test]
    fn replica_vram_is_per_process_when_nvml_lists_it() {
        let mut d = orch_gpu_inventory::parse_inventory_spec("24GiB:RTX 3090")
            .unwrap()
            .remove(0);
        d.used_bytes = 9_000;
        d.processes = vec![
            GpuProcess {
                pid: 10,
                used_bytes: 4_000,
            },
            GpuProcess {
                pid: 11,
                used_bytes: 5_000,
            },
        ];
        assert_eq!(replica_vram(&d, Some(11)), 5_000);
        assert_eq!(
            replica_vram(&d, Some(12)),
            9_000,
            "unknown pid: the device's figure"
        );
        assert_eq!(replica_vram(&d, None), 9_000);
    }
}
