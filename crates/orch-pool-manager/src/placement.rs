//! GPU mode resolution, the reservation ledger, and placement of launched replicas (at start
//! and for the new generation of a reload).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use orch_config::{Config, DeviceLimit, EngineKind, PoolConfig, SplitPolicy};
use orch_core::placement::{
    estimate_footprint, place, CandidateVerdict, GpuSnapshot, PlacementDecision, PlacementRequest,
    Reservation, COMPUTE_OVERHEAD_BYTES,
};
use orch_core::vram::{plan_split, Card, Layout, Need};
use orch_gpu_inventory::{GpuDevice, GpuInventory, NvmlInventory, StaticInventory};

use crate::launch::{resolve_binary, LaunchPlan};
use crate::metrics::{PlacementLabels, PoolMetrics};
use crate::{lock, PoolError};

pub use orch_core::placement::HEADROOM_BYTES;

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
///
/// A replica split across GPUs has one entry per GPU. The ledger also knows the configured
/// per-GPU limits (`placement.devices`), so that "what a new replica may use" is computed in
/// one place.
pub(crate) struct Ledger {
    fake: bool,
    entries: Mutex<Vec<Entry>>,
    limits: Vec<DeviceLimit>,
}

impl Ledger {
    #[cfg(test)]
    pub(crate) fn new(gpu: &GpuMode) -> Self {
        Self::with_limits(gpu, Vec::new())
    }

    /// A ledger that applies `limits` (usable caps and reserves per GPU).
    pub(crate) fn with_limits(gpu: &GpuMode, limits: Vec<DeviceLimit>) -> Self {
        Self {
            fake: matches!(gpu, GpuMode::Gpus { fake: true, .. }),
            entries: Mutex::new(Vec::new()),
            limits,
        }
    }

    /// The inventory's devices with `free_bytes` cut to what the configured limits let
    /// placement use.
    pub(crate) fn usable(&self, mut devices: Vec<GpuDevice>) -> Vec<GpuDevice> {
        for d in &mut devices {
            if let Some(l) = self.limits.iter().find(|l| l.index == d.index) {
                d.free_bytes = l.usable_free(d.total_bytes, d.free_bytes);
            }
        }
        devices
    }

    /// Every entry as `(replica id, device, bytes)`, counting or not: what each live replica
    /// holds, which is what evicting it frees.
    pub(crate) fn holdings(&self) -> Vec<(String, u32, u64)> {
        lock(&self.entries)
            .iter()
            .map(|e| (e.replica_id.clone(), e.device, e.bytes))
            .collect()
    }

    /// Whether `replica_id` holds anything.
    #[cfg(test)]
    pub(crate) fn holds(&self, replica_id: &str) -> bool {
        lock(&self.entries)
            .iter()
            .any(|e| e.replica_id == replica_id)
    }

    pub(crate) fn reservations(&self) -> Vec<Reservation> {
        lock(&self.entries)
            .iter()
            .filter(|e| self.fake || e.loading)
            .map(|e| Reservation {
                device: e.device,
                bytes: e.bytes,
            })
            .collect()
    }

    pub(crate) fn reserve(&self, replica_id: &str, device: u32, bytes: u64, free_before: u64) {
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
        for e in lock(&self.entries)
            .iter_mut()
            .filter(|e| e.replica_id == replica_id)
        {
            e.loading = true;
        }
    }

    /// The replica finished loading. Returns `(device, estimate, free before placement)` for the
    /// estimate-versus-NVML check, or `None` when there is nothing to compare (fake GPUs, CPU).
    /// A split replica's parts are compared one by one (the first is returned; each part's
    /// device shows only its own share).
    pub(crate) fn loaded(&self, replica_id: &str) -> Option<(u32, u64, u64)> {
        let mut g = lock(&self.entries);
        let mut out = None;
        for e in g.iter_mut().filter(|e| e.replica_id == replica_id) {
            let first = e.loading;
            e.loading = false;
            if out.is_none() && first && !self.fake {
                out = Some((e.device, e.bytes, e.free_before));
            }
        }
        out
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

/// The GPUs as placement sees them now: the inventory's devices with what the ledger's limits
/// let placement use, and the same as `orch_core` snapshots with each device's `free_slots`
/// (engine slots of running replicas not busy with a task). The one place both the start-time
/// placement and on_demand planning read the GPUs.
pub(crate) fn usable_snapshot(
    gpu: &GpuMode,
    ledger: &Ledger,
    free_slots: &HashMap<u32, u32>,
) -> (Vec<GpuDevice>, Vec<GpuSnapshot>) {
    let devices = ledger.usable(gpu.snapshot());
    let snapshots = devices
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
    (devices, snapshots)
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
    let (devices, snapshots) = usable_snapshot(gpu, ledger, free_slots);
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

/// The engine binary `p` launches, or why it cannot launch at all (no binary, no model).
pub(crate) fn launch_basics(p: &PoolConfig) -> Result<std::path::PathBuf, String> {
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
    let resolved = resolve_binary(&binary).ok_or_else(|| {
        format!(
            "engine binary `{binary}` not found; {install_hint} or set engine_binary to its path"
        )
    })?;
    let model = p.model.clone().unwrap_or_default();
    // llama.cpp loads one file; vLLM and TGI take a directory or a hub id, which they check
    // themselves (a bad one shows up as a failed start with the engine's own message).
    let model_missing = match p.engine {
        EngineKind::Llamacpp => !std::path::Path::new(&model).is_file(),
        _ => model.starts_with('/') && !std::path::Path::new(&model).exists(),
    };
    if model_missing {
        return Err(format!(
            "model `{model}` not found; check the pool's `model` path"
        ));
    }
    Ok(resolved)
}

/// What a split of `p` needs: its footprint, the per-card overhead, and whether it may be split
/// at all (`split: auto`, and only llama.cpp takes proportional splits).
pub(crate) fn split_need(p: &PoolConfig, need: u64) -> Need {
    Need {
        bytes: need,
        per_card_overhead: COMPUTE_OVERHEAD_BYTES.min(need),
        split: p.split == SplitPolicy::Auto && p.engine == EngineKind::Llamacpp,
    }
}

/// The planner's view of the GPUs in a placement decision: available bytes and the mask.
pub(crate) fn cards_of(decision: &PlacementDecision) -> Vec<Card> {
    decision
        .candidates
        .iter()
        .map(|c| Card {
            index: c.index,
            name: c.name.clone(),
            available: c.available_bytes,
            allowed: c.verdict != CandidateVerdict::Masked,
        })
        .collect()
}

/// `gpu0`, or `gpu0+gpu1` for a split.
pub(crate) fn layout_device(layout: &Layout) -> String {
    layout
        .devices()
        .iter()
        .map(|d| format!("gpu{d}"))
        .collect::<Vec<_>>()
        .join("+")
}

/// Reserves `layout` for `replica_id` in the ledger.
pub(crate) fn reserve_layout(
    ledger: &Ledger,
    replica_id: &str,
    layout: &Layout,
    need: &Need,
    devices: &[GpuDevice],
) {
    for (d, bytes) in layout.reservations(need) {
        let free = devices
            .iter()
            .find(|x| x.index == d)
            .map_or(0, |x| x.free_bytes);
        ledger.reserve(replica_id, d, bytes, free);
    }
}

/// The launch recipe of `p` on `layout`: `CUDA_VISIBLE_DEVICES` lists the chosen GPUs' UUIDs,
/// and a split passes its proportions as `--tensor-split`. Fake GPUs run on the CPU (`-ngl 0`).
pub(crate) fn launch_on(
    p: &PoolConfig,
    binary: std::path::PathBuf,
    layout: &Layout,
    devices: &[GpuDevice],
    fake: bool,
) -> LaunchPlan {
    let uuids: Vec<String> = layout
        .devices()
        .iter()
        .map(|d| {
            devices
                .iter()
                .find(|x| x.index == *d)
                .map(|x| x.uuid.clone())
                .unwrap_or_default()
        })
        .collect();
    let tensor_split = match layout {
        Layout::Split(parts) => Some(parts.iter().map(|x| x.share).collect()),
        Layout::Single(_) => None,
    };
    LaunchPlan {
        engine: p.engine,
        binary,
        model: p.model.clone().unwrap_or_default().into(),
        ctx: p.ctx,
        slots: p.slots,
        gpu_layers: if fake { 0 } else { 999 },
        cuda_visible_devices: Some(uuids.join(",")),
        tensor_split,
        flags: crate::launch::pool_flags(p),
    }
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
    let basics = launch_basics(p);
    let (plan, outcome, fallback) = match gpu {
        GpuMode::Gpus { fake, .. } => {
            let req = PlacementRequest {
                need_bytes: need,
                headroom_bytes: HEADROOM_BYTES,
                mask: p.devices.indices().map(<[u32]>::to_vec),
            };
            let decision = place(snapshots, &ledger.reservations(), &req);
            let split = split_need(p, need);
            // No single GPU has room: several together may (`split: auto`).
            let (layout, reason) = match decision.chosen {
                Some(idx) => (Some(Layout::Single(idx)), decision.reason.clone()),
                None if split.split => match plan_split(&cards_of(&decision), &split) {
                    Some(parts) => {
                        let layout = Layout::Split(parts);
                        let why = split_reason(&layout, &split);
                        (Some(layout), why)
                    }
                    None => (None, decision.reason.clone()),
                },
                None => (None, decision.reason.clone()),
            };
            log_decision(p, replica_id, need, layout.as_ref(), &decision, &reason);
            match (layout, basics) {
                // A replica that cannot launch anyway (no binary, no model) reserves nothing.
                (Some(layout), Ok(bin)) => {
                    reserve_layout(ledger, replica_id, &layout, &split, devices);
                    let launch = launch_on(p, bin, &layout, devices, *fake);
                    (
                        ReplicaPlan {
                            device: layout_device(&layout),
                            launch: Some(launch),
                            endpoint: None,
                            blocked: None,
                        },
                        "placed",
                        "none",
                    )
                }
                (Some(layout), Err(why)) => (
                    ReplicaPlan {
                        device: layout_device(&layout),
                        launch: None,
                        endpoint: None,
                        blocked: Some(why),
                    },
                    "placed",
                    "none",
                ),
                (None, basics) => (
                    ReplicaPlan {
                        device: "none".into(),
                        launch: None,
                        endpoint: None,
                        blocked: Some(basics.err().unwrap_or(reason)),
                    },
                    "unplaceable",
                    "none",
                ),
            }
        }
        _ => {
            let plan = match basics {
                Ok(bin) => ReplicaPlan {
                    device: "cpu".into(),
                    launch: Some(LaunchPlan {
                        engine: p.engine,
                        binary: bin,
                        model: p.model.clone().unwrap_or_default().into(),
                        ctx: p.ctx,
                        slots: p.slots,
                        gpu_layers: 0,
                        cuda_visible_devices: Some(String::new()),
                        tensor_split: None,
                        flags: crate::launch::pool_flags(p),
                    }),
                    endpoint: None,
                    blocked: None,
                },
                Err(why) => ReplicaPlan {
                    device: "cpu".into(),
                    launch: None,
                    endpoint: None,
                    blocked: Some(why),
                },
            };
            (plan, "cpu", "cpu_dev")
        }
    };
    metrics
        .placement_decisions
        .get_or_create(&PlacementLabels {
            outcome: outcome.into(),
            pinned: pinned.to_string(),
            fallback: fallback.into(),
        })
        .inc();
    plan
}

/// The sentence for a split placement: shares, bytes per card and the overhead counted on each.
pub(crate) fn split_reason(layout: &Layout, need: &Need) -> String {
    let Layout::Split(parts) = layout else {
        return String::new();
    };
    let shares: Vec<String> = parts
        .iter()
        .map(|x| {
            format!(
                "GPU {} {:.0} % ({} MiB)",
                x.device,
                x.share * 100.0,
                x.bytes >> 20
            )
        })
        .collect();
    format!(
        "no single GPU has room for {} MiB; split across {} GPUs in proportion to their free VRAM: {} ({} MiB per-card overhead counted on each)",
        need.bytes >> 20,
        parts.len(),
        shares.join(", "),
        need.per_card_overhead >> 20
    )
}

/// One `placement decision` log line: every candidate GPU and the outcome.
pub(crate) fn log_decision(
    p: &PoolConfig,
    replica_id: &str,
    need: u64,
    layout: Option<&Layout>,
    decision: &PlacementDecision,
    reason: &str,
) {
    tracing::info!(
        pool_id = %p.id,
        replica_id = %replica_id,
        need_bytes = need,
        headroom_bytes = HEADROOM_BYTES,
        chosen = %layout.map_or_else(|| "none".to_owned(), layout_device),
        tensor_split = %match layout {
            Some(Layout::Split(parts)) => parts
                .iter()
                .map(|x| format!("{:.3}", x.share))
                .collect::<Vec<_>>()
                .join(","),
            _ => "none".to_owned(),
        },
        candidates = %serde_json::to_string(&decision.candidates).unwrap_or_default(),
        reason = %reason,
        "placement decision"
    );
}

/// Places every replica of every pool at start. Returns, per pool, its plans in replica order.
pub(crate) fn place_all(
    cfg: &Config,
    gpu: &GpuMode,
    metrics: &PoolMetrics,
    ledger: &Ledger,
) -> Vec<Vec<ReplicaPlan>> {
    let mut items = Vec::new();
    for p in cfg.pools.iter().filter(|p| !p.on_demand()) {
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
        .map(|p| {
            if p.on_demand() {
                Vec::new()
            } else {
                plans.by_ref().take(p.replicas as usize).collect()
            }
        })
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
    use orch_gpu_inventory::StaticInventory;

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
        // Split across both cards, huge would fit (see the split test); here it may not.
        let mut huge = pool("huge", m, 65536, 1024, None);
        huge.split = orch_config::SplitPolicy::Never;
        let cfg = Config {
            pools: vec![
                pool("small", m, 1024, 1, Some(vec![1])),
                huge,
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
    fn a_pool_no_card_holds_alone_is_split_across_cards_in_proportion() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, vec![0u8; 1 << 20]).unwrap();
        let m = model.to_str().unwrap();
        // huge: 2049 MiB divisible + 768 MiB per card; gpu0 2088, gpu1 1688 available.
        let gpu = fake("2600MiB:Big,2200MiB:Small");
        let cfg = Config {
            pools: vec![pool("huge", m, 65536, 1024, None)],
            ..Config::default()
        };
        let ledger = Ledger::new(&gpu);
        let plans = place_all(&cfg, &gpu, &PoolMetrics::default(), &ledger);
        let plan = &plans[0][0];
        assert_eq!(plan.device, "gpu0+gpu1");
        let launch = plan.launch.as_ref().unwrap();
        assert_eq!(
            launch.cuda_visible_devices.as_deref(),
            Some("GPU-fake-0,GPU-fake-1")
        );
        let shares = launch.tensor_split.clone().unwrap();
        // (2088 − 768) : (1688 − 768) of what is free beyond the overhead.
        assert!((shares[0] - 1320.0 / 2240.0).abs() < 1e-9, "{shares:?}");
        assert!(launch
            .args(1)
            .join(" ")
            .contains("--tensor-split 0.589,0.411"));
        let held: Vec<(String, u32, u64)> = ledger.holdings();
        assert_eq!(held.len(), 2, "one ledger entry per card: {held:?}");
        for (_, d, b) in &held {
            let avail: u64 = if *d == 0 { 2088 << 20 } else { 1688 << 20 };
            assert!(*b <= avail, "gpu{d}: {b} > {avail}");
        }
        ledger.release("huge-r0");
        assert!(ledger.holdings().is_empty());
        // A cap on a card counts like a smaller card: no split fits any more.
        let capped = Ledger::with_limits(
            &gpu,
            vec![orch_config::DeviceLimit {
                index: 1,
                usable_mib: Some(1200),
                reserve_mib: None,
            }],
        );
        let plans = place_all(&cfg, &gpu, &PoolMetrics::default(), &capped);
        assert_eq!(plans[0][0].device, "none");
    }

    #[test]
    fn real_gpu_entries_count_only_while_loading() {
        let inv: Arc<dyn orch_gpu_inventory::GpuInventory> =
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
