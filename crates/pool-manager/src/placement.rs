//! GPU mode resolution, the reservation ledger, and placement of launched replicas (at start
//! and for the new generation of a reload).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use gpu_inventory::{GpuDevice, GpuInventory, NvmlInventory, StaticInventory};
use orch_config::EngineKind;
use orch_config::{Config, PoolConfig};
use orchestrator_core::placement::{
    estimate_footprint, place, GpuSnapshot, PlacementRequest, Reservation,
};

use crate::launch::{resolve_binary, LaunchPlan};
use crate::metrics::{PlacementLabels, PoolMetrics};
use crate::{lock, PoolError};

/// VRAM kept free on every GPU beyond a model's estimate: estimates are often wrong, and the
/// driver and other programs take some.
pub const HEADROOM_BYTES: u64 = 512 << 20;

/// Where engines run.
#[derive(Clone)]
pub enum GpuMode {
    /// NVIDIA GPUs from NVML, or an injected inventory (`fake`: engines then run on the CPU).
    Gpus {
        /// The inventory.
        inventory: Arc<dyn GpuInventory>,
        /// Injected for tests: placement is real, the engines cannot use the devices.
        fake: bool,
    },
    /// `dev.allow_cpu_inference` with no usable GPU: engines run on the CPU.
    Cpu {
        /// Why no GPU is used.
        reason: String,
    },
    /// Only `endpoint:` pools and no NVML: nothing to place.
    NoGpus,
}

impl GpuMode {
    pub(crate) fn resolve(
        cfg: &Config,
        injected: Option<Arc<dyn GpuInventory>>,
        launches: bool,
    ) -> Result<Self, PoolError> {
        if let Some(inventory) = injected {
            return Ok(Self::Gpus {
                inventory,
                fake: true,
            });
        }
        if let Some(spec) = &cfg.dev.fake_gpus {
            let inv = StaticInventory::from_spec(spec)
                .map_err(|e| PoolError::Config(format!("dev.fake_gpus: {e}")))?;
            return Ok(Self::Gpus {
                inventory: Arc::new(inv),
                fake: true,
            });
        }
        match NvmlInventory::init() {
            Ok(inv) => Ok(Self::Gpus {
                inventory: Arc::new(inv),
                fake: false,
            }),
            Err(e) if !launches => {
                tracing::info!(error = %e, "no NVIDIA GPU; only endpoint pools are configured");
                Ok(Self::NoGpus)
            }
            Err(e) if cfg.dev.allow_cpu_inference => {
                tracing::warn!(
                    "DEV MODE: dev.allow_cpu_inference is on and no NVIDIA GPU is usable; \
                     engines will run on the CPU. Never use this in production. Cause: {e}"
                );
                Ok(Self::Cpu {
                    reason: e.to_string(),
                })
            }
            Err(e) => Err(PoolError::NoGpu(format!(
                "llama-orch runs inference on NVIDIA GPUs only, and none is usable.\n{e}"
            ))),
        }
    }

    /// One line for logs and `/v1/capabilities`.
    pub fn describe(&self) -> String {
        match self {
            Self::Gpus { inventory, fake } => {
                if *fake {
                    format!("{} (engines run on the CPU)", inventory.describe())
                } else {
                    inventory.describe()
                }
            }
            Self::Cpu { .. } => "cpu (dev.allow_cpu_inference)".into(),
            Self::NoGpus => "none".into(),
        }
    }

    /// Whether engines run on the CPU.
    pub fn cpu_inference(&self) -> bool {
        matches!(self, Self::Cpu { .. } | Self::Gpus { fake: true, .. })
    }

    /// Current devices.
    pub fn snapshot(&self) -> Vec<GpuDevice> {
        match self {
            Self::Gpus { inventory, .. } => inventory.snapshot().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "GPU snapshot failed");
                Vec::new()
            }),
            _ => Vec::new(),
        }
    }
}

/// What the supervisor of one replica does.
pub(crate) struct ReplicaPlan {
    /// `gpu0`, `cpu`, `remote`, `none`.
    pub device: String,
    /// Launch recipe, for launched pools that could be placed.
    pub launch: Option<LaunchPlan>,
    /// Existing engine, for endpoint pools.
    pub endpoint: Option<String>,
    /// Why the replica cannot run.
    pub blocked: Option<String>,
}

/// One ledger line: memory promised to a replica on a device.
struct Entry {
    replica_id: String,
    device: u32,
    bytes: u64,
    /// Still loading (NVML does not show its memory yet).
    loading: bool,
    /// The device's free bytes when the replica was placed, to compare the estimate with what
    /// NVML shows after the load.
    free_before: u64,
}

/// The reservation ledger: memory promised to replicas, so that two loads never count on the
/// same free bytes.
///
/// With real GPUs an entry counts only while its replica loads: once loaded, NVML's free figure
/// already shows the memory. With an injected (fake) inventory the free figure never changes, so
/// an entry counts for as long as its replica exists; that is what makes a reload place the new
/// replicas *beside* the old ones in tests just as it would on real cards.
pub(crate) struct Ledger {
    fake: bool,
    entries: Mutex<Vec<Entry>>,
}

impl Ledger {
    pub(crate) fn new(gpu: &GpuMode) -> Self {
        Self {
            fake: matches!(gpu, GpuMode::Gpus { fake: true, .. }),
            entries: Mutex::new(Vec::new()),
        }
    }

    fn reservations(&self) -> Vec<Reservation> {
        lock(&self.entries)
            .iter()
            .filter(|e| self.fake || e.loading)
            .map(|e| Reservation {
                device: e.device,
                bytes: e.bytes,
            })
            .collect()
    }

    fn reserve(&self, replica_id: &str, device: u32, bytes: u64, free_before: u64) {
        lock(&self.entries).push(Entry {
            replica_id: replica_id.to_owned(),
            device,
            bytes,
            loading: true,
            free_before,
        });
    }

    /// The replica (re)starts loading: its memory is not in NVML's figure yet.
    pub(crate) fn loading(&self, replica_id: &str) {
        if let Some(e) = lock(&self.entries)
            .iter_mut()
            .find(|e| e.replica_id == replica_id)
        {
            e.loading = true;
        }
    }

    /// The replica finished loading. Returns `(device, estimate, free before placement)` for the
    /// estimate-versus-NVML check, or `None` when there is nothing to compare (fake GPUs, CPU).
    pub(crate) fn loaded(&self, replica_id: &str) -> Option<(u32, u64, u64)> {
        let mut g = lock(&self.entries);
        let e = g.iter_mut().find(|e| e.replica_id == replica_id)?;
        let first = e.loading;
        e.loading = false;
        (first && !self.fake).then_some((e.device, e.bytes, e.free_before))
    }

    /// The replica is gone: its memory is no longer promised.
    pub(crate) fn release(&self, replica_id: &str) {
        lock(&self.entries).retain(|e| e.replica_id != replica_id);
    }
}

/// Compares a finished load's estimate with the memory NVML says it took, and logs the
/// difference, so a wrong footprint estimate shows up in the log (docs/PLACEMENT.md, "The
/// reservation ledger").
/// Approximate when other loads on the same GPU finish at the same time.
pub(crate) fn log_estimate_check(
    gpu: &GpuMode,
    pool_id: &str,
    replica_id: &str,
    check: (u32, u64, u64),
) {
    let (device, estimate, free_before) = check;
    let Some(now) = gpu.snapshot().into_iter().find(|d| d.index == device) else {
        return;
    };
    let observed = free_before.saturating_sub(now.free_bytes);
    let diff = i128::from(observed) - i128::from(estimate);
    tracing::info!(
        pool_id,
        replica_id,
        device = %format!("gpu{device}"),
        estimate_bytes = estimate,
        observed_bytes = observed,
        diff_bytes = %diff,
        "placement check: estimate vs NVML after load"
    );
}

/// One replica to place: its pool's configuration and its id.
pub(crate) struct PlaceItem<'a> {
    pub pool: &'a PoolConfig,
    pub replica_id: String,
}

/// Places a batch of replicas, largest estimated footprint first (big models get the big cards
/// before small ones fill them), each decision seeing the ledger with every earlier one.
/// `free_slots` gives, per device index, the engine slots of running replicas not busy with a
/// task (the tie-breaker between GPUs with equal room). Returns plans in input order. Logs and
/// counts every decision.
pub(crate) fn place_batch(
    items: &[PlaceItem<'_>],
    gpu: &GpuMode,
    metrics: &PoolMetrics,
    ledger: &Ledger,
    free_slots: &HashMap<u32, u32>,
) -> Vec<ReplicaPlan> {
    let devices = gpu.snapshot();
    let snapshots: Vec<GpuSnapshot> = devices
        .iter()
        .map(|d| GpuSnapshot {
            index: d.index,
            name: d.name.clone(),
            total_bytes: d.total_bytes,
            free_bytes: d.free_bytes,
            utilization_pct: d.utilization_pct,
            free_slots: free_slots.get(&d.index).copied().unwrap_or(0),
        })
        .collect();
    let needs: Vec<u64> = items.iter().map(|it| footprint(it.pool)).collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    // Stable: equal sizes keep configuration order.
    order.sort_by(|&a, &b| needs[b].cmp(&needs[a]));
    let mut plans: Vec<Option<ReplicaPlan>> = items.iter().map(|_| None).collect();
    for i in order {
        plans[i] = Some(place_one(
            &items[i], needs[i], gpu, &devices, &snapshots, metrics, ledger,
        ));
    }
    plans
        .into_iter()
        .map(|p| {
            p.unwrap_or(ReplicaPlan {
                device: "none".into(),
                launch: None,
                endpoint: None,
                blocked: Some("not planned".into()),
            })
        })
        .collect()
}

/// Estimated bytes of one replica of `p` (see `estimate_footprint`); 0 for endpoint pools.
pub(crate) fn footprint(p: &PoolConfig) -> u64 {
    if p.endpoint.is_some() {
        return 0;
    }
    let model = p.model.as_deref().map(std::path::Path::new);
    let size = model
        .and_then(|m| std::fs::metadata(m).ok())
        .map(|m| m.len())
        .unwrap_or(0);
    // Only GGUF (llama.cpp) models carry the shape; other engines' models use the fallback.
    let kv_per_token = match p.engine {
        EngineKind::Llamacpp => model.and_then(crate::gguf::kv_bytes_per_token),
        _ => None,
    };
    estimate_footprint(size, u64::from(p.ctx), p.slots, kv_per_token)
}

fn place_one(
    item: &PlaceItem<'_>,
    need: u64,
    gpu: &GpuMode,
    devices: &[GpuDevice],
    snapshots: &[GpuSnapshot],
    metrics: &PoolMetrics,
    ledger: &Ledger,
) -> ReplicaPlan {
    let p = item.pool;
    let replica_id = &item.replica_id;
    if let Some(ep) = &p.endpoint {
        return ReplicaPlan {
            device: "remote".into(),
            launch: None,
            endpoint: Some(ep.clone()),
            blocked: None,
        };
    }
    let pinned = p.devices.indices().is_some();
    let (default_binary, install_hint) = match p.engine {
        EngineKind::Vllm => ("vllm", "install vLLM (`pip install vllm`)"),
        EngineKind::Tgi => (
            "text-generation-launcher",
            "install HuggingFace text-generation-inference",
        ),
        _ => (
            "llama-server",
            "install llama.cpp's llama-server (`cargo xtask provision-engine` builds one)",
        ),
    };
    let binary = p
        .engine_binary
        .clone()
        .unwrap_or_else(|| default_binary.into());
    let mut blocked = None;
    let resolved = resolve_binary(&binary);
    if resolved.is_none() {
        blocked = Some(format!(
            "engine binary `{binary}` not found; {install_hint} or set engine_binary to its path"
        ));
    }
    let model = p.model.clone().unwrap_or_default();
    // llama.cpp loads one file; vLLM and TGI take a directory or a hub id, which they check
    // themselves (a bad one shows up as a failed start with the engine's own message).
    let model_missing = match p.engine {
        EngineKind::Llamacpp => !std::path::Path::new(&model).is_file(),
        _ => model.starts_with('/') && !std::path::Path::new(&model).exists(),
    };
    if blocked.is_none() && model_missing {
        blocked = Some(format!(
            "model `{model}` not found; check the pool's `model` path"
        ));
    }
    let (device, gpu_layers, cuda, outcome, fallback) = match gpu {
        GpuMode::Gpus { fake, .. } => {
            let req = PlacementRequest {
                need_bytes: need,
                headroom_bytes: HEADROOM_BYTES,
                mask: p.devices.indices().map(<[u32]>::to_vec),
            };
            let decision = place(snapshots, &ledger.reservations(), &req);
            tracing::info!(
                pool_id = %p.id,
                replica_id = %replica_id,
                need_bytes = need,
                headroom_bytes = HEADROOM_BYTES,
                chosen = %decision.chosen.map_or_else(|| "none".to_owned(), |i| format!("gpu{i}")),
                candidates = %serde_json::to_string(&decision.candidates).unwrap_or_default(),
                reason = %decision.reason,
                "placement decision"
            );
            match decision.chosen {
                // A replica that cannot launch anyway (no binary, no model) reserves nothing.
                Some(idx) if blocked.is_none() => {
                    let dev = devices.iter().find(|d| d.index == idx);
                    ledger.reserve(
                        replica_id,
                        idx,
                        need,
                        dev.map(|d| d.free_bytes).unwrap_or(0),
                    );
                    let uuid = dev.map(|d| d.uuid.clone()).unwrap_or_default();
                    let layers = if *fake { 0 } else { 999 };
                    (format!("gpu{idx}"), layers, Some(uuid), "placed", "none")
                }
                Some(idx) => (format!("gpu{idx}"), 0, None, "placed", "none"),
                None => {
                    blocked.get_or_insert(decision.reason.clone());
                    ("none".into(), 0, None, "unplaceable", "none")
                }
            }
        }
        _ => ("cpu".into(), 0, Some(String::new()), "cpu", "cpu_dev"),
    };
    metrics
        .placement_decisions
        .get_or_create(&PlacementLabels {
            outcome: outcome.into(),
            pinned: pinned.to_string(),
            fallback: fallback.into(),
        })
        .inc();
    let launch = match (&blocked, resolved) {
        (None, Some(bin)) => Some(LaunchPlan {
            engine: p.engine,
            binary: bin,
            model: model.into(),
            ctx: p.ctx,
            slots: p.slots,
            gpu_layers,
            cuda_visible_devices: cuda,
            flags: p.flags.clone(),
        }),
        _ => None,
    };
    ReplicaPlan {
        device,
        launch,
        endpoint: None,
        blocked,
    }
}

/// Places every replica of every pool at start. Returns, per pool, its plans in replica order.
pub(crate) fn place_all(
    cfg: &Config,
    gpu: &GpuMode,
    metrics: &PoolMetrics,
    ledger: &Ledger,
) -> Vec<Vec<ReplicaPlan>> {
    let mut items = Vec::new();
    for p in &cfg.pools {
        for ri in 0..p.replicas {
            items.push(PlaceItem {
                pool: p,
                replica_id: replica_id(&p.id, 0, ri),
            });
        }
    }
    // Nothing runs yet, so no GPU has free slots to break a tie.
    let mut plans = place_batch(&items, gpu, metrics, ledger, &HashMap::new()).into_iter();
    cfg.pools
        .iter()
        .map(|p| plans.by_ref().take(p.replicas as usize).collect())
        .collect()
}

/// `<pool>-r<n>` for generation 0, `<pool>-g<gen>-r<n>` after reloads.
pub(crate) fn replica_id(pool_id: &str, generation: u64, n: u32) -> String {
    if generation == 0 {
        format!("{pool_id}-r{n}")
    } else {
        format!("{pool_id}-g{generation}-r{n}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_inventory::StaticInventory;

    fn fake(spec: &str) -> GpuMode {
        GpuMode::Gpus {
            inventory: Arc::new(StaticInventory::from_spec(spec).unwrap()),
            fake: true,
        }
    }

    fn pool(id: &str, model: &str, ctx: u32, slots: u32, mask: Option<Vec<u32>>) -> PoolConfig {
        let mut p = PoolConfig::llamacpp(id, model, Some("/bin/sh"));
        p.ctx = ctx;
        p.slots = slots;
        if let Some(m) = mask {
            p.devices = orch_config::DeviceMask::Only(m);
        }
        p
    }

    #[test]
    fn largest_first_ledger_masks_and_unplaceable() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, vec![0u8; 1 << 20]).unwrap();
        let m = model.to_str().unwrap();
        // Available after 512 MiB headroom: gpu0 2088 MiB, gpu1 1688 MiB. 1 MiB model: 32 B per
        // token of KV. Footprints: big 768+1+64 = 833 MiB, mid 768+1+16 = 785, small 769.
        let gpu = fake("2600MiB:Big,2200MiB:Small");
        let cfg = Config {
            pools: vec![
                pool("small", m, 1024, 1, Some(vec![1])),
                pool("huge", m, 65536, 1024, None),
                pool("mid", m, 65536, 8, None),
                pool("big", m, 65536, 32, None),
            ],
            ..Config::default()
        };
        let metrics = PoolMetrics::default();
        let ledger = Ledger::new(&gpu);
        let plans = place_all(&cfg, &gpu, &metrics, &ledger);
        let dev = |i: usize| plans[i][0].device.clone();
        assert_eq!(dev(3), "gpu0", "the largest pool goes to the biggest card");
        assert_eq!(dev(2), "gpu1", "the next goes where most is left");
        // Left: gpu0 1255, gpu1 903: unpinned it would go to gpu0; the mask says gpu1.
        assert_eq!(dev(0), "gpu1");
        assert_eq!(dev(1), "none");
        let why = plans[1][0].blocked.clone().unwrap();
        assert!(why.starts_with("no GPU fits"), "{why}");
        assert!(
            plans[3][0]
                .launch
                .as_ref()
                .unwrap()
                .cuda_visible_devices
                .as_deref()
                == Some("GPU-fake-0")
        );
        assert_eq!(
            plans[3][0].launch.as_ref().unwrap().gpu_layers,
            0,
            "fake GPUs run on the CPU"
        );
        // Fake inventory: reservations persist while replicas live, and go with them.
        assert_eq!(ledger.reservations().len(), 3);
        ledger.release("big-r0");
        assert_eq!(ledger.reservations().len(), 2);
        assert_eq!(
            ledger.loaded("mid-r0"),
            None,
            "nothing to compare on fake GPUs"
        );
    }

    #[test]
    fn real_gpu_entries_count_only_while_loading() {
        let inv: Arc<dyn gpu_inventory::GpuInventory> =
            Arc::new(StaticInventory::from_spec("8GiB").unwrap());
        let gpu = GpuMode::Gpus {
            inventory: inv,
            fake: false,
        };
        let ledger = Ledger::new(&gpu);
        ledger.reserve("p-r0", 0, 100, 8 << 30);
        assert_eq!(ledger.reservations().len(), 1);
        assert_eq!(ledger.loaded("p-r0"), Some((0, 100, 8 << 30)));
        assert!(ledger.reservations().is_empty());
        assert_eq!(ledger.loaded("p-r0"), None, "compared once");
        ledger.loading("p-r0");
        assert_eq!(ledger.reservations().len(), 1);
    }

    #[test]
    fn replica_ids() {
        assert_eq!(replica_id("p", 0, 1), "p-r1");
        assert_eq!(replica_id("p", 3, 0), "p-g3-r0");
    }
}
