//! Prometheus series owned by the pool manager; the daemon registers them.

use std::sync::atomic::AtomicU64;
use std::sync::Weak;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use gpu_inventory::GpuDevice;

use crate::PoolManager;

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

/// The pool manager's series.
#[derive(Clone, Default)]
pub struct PoolMetrics {
    /// `placement_decisions_total{outcome,pinned,fallback}`.
    pub placement_decisions: Family<PlacementLabels, Counter>,
    /// `gpu_utilization{engine,engine_version,pool_id,replica_id,device}` (0..1).
    pub gpu_utilization: Family<DeviceLabels, Gauge<f64, AtomicU64>>,
    /// `vram_used_bytes{engine,engine_version,pool_id,replica_id,device}`.
    pub vram_used_bytes: Family<DeviceLabels, Gauge>,
    /// `kv_cache_usage_ratio{engine,engine_version,pool_id,replica_id}` (0..1), for engines
    /// that report it.
    pub kv_cache_usage_ratio: Family<ReplicaLabels, Gauge<f64, AtomicU64>>,
    /// `engine_restarts_total{pool_id}`.
    pub engine_restarts: Family<PoolLabels, Counter>,
    /// `pool_ready{pool_id}`: 1 while some replica is ready.
    pub pool_ready: Family<PoolLabels, Gauge>,
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
            "gpu_utilization",
            "GPU utilisation (0..1) of the device a replica runs on",
            self.gpu_utilization.clone(),
        );
        reg.register(
            "vram_used_bytes",
            "VRAM in use on the device a replica runs on",
            self.vram_used_bytes.clone(),
        );
        reg.register(
            "kv_cache_usage_ratio",
            "Share of a replica's KV cache in use (0..1), as its engine reports it",
            self.kv_cache_usage_ratio.clone(),
        );
        reg.register(
            "engine_restarts",
            "Engine restarts after crashes",
            self.engine_restarts.clone(),
        );
        reg.register(
            "pool_ready",
            "1 while some replica of the pool answers health checks",
            self.pool_ready.clone(),
        );
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

/// Refreshes the GPU, KV and readiness gauges every few seconds while the manager lives.
pub(crate) async fn refresh_loop(mgr: Weak<PoolManager>) {
    loop {
        let mut kv_probes = Vec::new();
        {
            let Some(mgr) = mgr.upgrade() else { return };
            if mgr.cancel.is_cancelled() {
                return;
            }
            let devices = mgr.gpus();
            // Rebuilt each time: a replica that moved, stopped or changed engine version must
            // not leave a stale series behind.
            mgr.metrics.gpu_utilization.clear();
            mgr.metrics.vram_used_bytes.clear();
            for pool in mgr.pools() {
                mgr.metrics
                    .pool_ready
                    .get_or_create(&PoolLabels {
                        pool_id: pool.id().to_owned(),
                    })
                    .set(i64::from(pool.is_ready()));
                let version = pool.engine_version();
                for r in pool.replicas() {
                    if r.status.state != crate::ReplicaState::Ready {
                        continue;
                    }
                    if let Some(a) = &r.adapter {
                        let labels = ReplicaLabels {
                            engine: pool.engine().into(),
                            engine_version: version.clone(),
                            pool_id: pool.id().into(),
                            replica_id: r.status.id.clone(),
                        };
                        kv_probes.push((labels, a.clone()));
                    }
                    let Some(idx) = r.status.device.strip_prefix("gpu") else {
                        continue;
                    };
                    let Some(d) = devices.iter().find(|d| d.index.to_string() == idx) else {
                        continue;
                    };
                    let labels = DeviceLabels {
                        engine: pool.engine().into(),
                        engine_version: version.clone(),
                        pool_id: pool.id().into(),
                        replica_id: r.status.id.clone(),
                        device: r.status.device.clone(),
                    };
                    let util = f64::from(d.utilization_pct.unwrap_or(0)) / 100.0;
                    mgr.metrics.gpu_utilization.get_or_create(&labels).set(util);
                    mgr.metrics
                        .vram_used_bytes
                        .get_or_create(&labels)
                        .set(i64::try_from(replica_vram(d, r.status.pid)).unwrap_or(i64::MAX));
                }
            }
        }
        // Asked outside the block above: the manager is not kept alive across engine calls.
        let mut kv = Vec::with_capacity(kv_probes.len());
        for (labels, adapter) in kv_probes {
            if let Ok(Ok(Some(ratio))) =
                tokio::time::timeout(KV_PROBE_TIMEOUT, adapter.kv_cache_usage()).await
            {
                kv.push((labels, ratio.clamp(0.0, 1.0)));
            }
        }
        let Some(m) = mgr.upgrade() else { return };
        m.metrics.kv_cache_usage_ratio.clear();
        for (labels, ratio) in kv {
            m.metrics
                .kv_cache_usage_ratio
                .get_or_create(&labels)
                .set(ratio);
        }
        drop(m);
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use gpu_inventory::GpuProcess;

    use super::*;

    #[test]
    fn replica_vram_is_per_process_when_nvml_lists_it() {
        let mut d = gpu_inventory::parse_inventory_spec("24GiB:RTX 3090")
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
