//! The plan: which model goes where, with the daemon's own footprint estimate, placement
//! rule and split planner (`orch_core`).

use orch_core::placement::{
    estimate_footprint, place, GpuSnapshot, PlacementRequest, COMPUTE_OVERHEAD_BYTES,
    HEADROOM_BYTES,
};
use orch_core::vram::{plan_split, Card, Need};
use orch_gpu_inventory::GpuDevice;

use super::scan::Model;

const GIB: f64 = (1u64 << 30) as f64;

/// Where a pool's replica goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Where {
    /// One GPU.
    Gpu(u32),
    /// Several GPUs: `(index, share)`, largest share first.
    Split(Vec<(u32, f64)>),
    /// The CPU (`--allow-cpu` without a GPU).
    Cpu,
    /// Nowhere: why.
    TooBig(String),
}

impl Where {
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Gpu(i) => format!("gpu{i}"),
            Self::Split(parts) => {
                let devs: Vec<String> = parts.iter().map(|(d, _)| format!("gpu{d}")).collect();
                let shares: Vec<String> = parts
                    .iter()
                    .map(|(_, s)| format!("{:.0}", s * 100.0))
                    .collect();
                format!("split {} ({} %)", devs.join("+"), shares.join("/"))
            }
            Self::Cpu => "cpu".into(),
            Self::TooBig(why) => format!("does not fit: {why}"),
        }
    }
}

/// How a pool loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// At start, kept loaded.
    Always,
    /// When a task needs it (models do not all fit together).
    OnDemand,
    /// Not configured (fits nowhere).
    Left,
}

impl Load {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnDemand => "on_demand",
            Self::Left => "left out",
        }
    }
}

/// One model's pool in the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    /// Index into the models.
    pub model: usize,
    /// Context tokens per slot.
    pub ctx: u32,
    /// Slots.
    pub slots: u32,
    /// Estimated VRAM of one replica.
    pub need: u64,
    /// Where it goes (when loaded).
    pub at: Where,
    /// How it loads.
    pub load: Load,
}

/// One GPU as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Total bytes.
    pub total: u64,
    /// Free bytes now.
    pub free: u64,
}

impl From<&GpuDevice> for Gpu {
    fn from(d: &GpuDevice) -> Self {
        Self {
            index: d.index,
            name: d.name.clone(),
            total: d.total_bytes,
            free: d.free_bytes,
        }
    }
}

/// `4.4 GiB`, or `17 MiB` below a GiB.
pub(super) fn gib(b: u64) -> String {
    if b < 1 << 30 {
        format!("{} MiB", b.div_ceil(1 << 20))
    } else {
        format!("{:.1} GiB", b as f64 / GIB)
    }
}

/// Where a replica of `need` goes on cards with `avail` bytes available each (headroom and
/// earlier placements already taken off): the daemon's rule (`placement::place`: the card with
/// the most room, ties to the lower index), else its split planner over the fewest cards.
fn place_on(gpus: &[Gpu], avail: &[u64], need: u64) -> Option<Where> {
    let snapshots: Vec<GpuSnapshot> = gpus
        .iter()
        .zip(avail)
        .map(|(g, &a)| GpuSnapshot {
            index: g.index,
            name: g.name.clone(),
            total_bytes: g.total,
            free_bytes: a,
            utilization_pct: None,
            free_slots: 0,
        })
        .collect();
    let req = PlacementRequest {
        need_bytes: need,
        headroom_bytes: 0,
        mask: None,
    };
    let decision = place(&snapshots, &[], &req);
    if let Some(i) = decision.chosen {
        return Some(Where::Gpu(i));
    }
    let cards: Vec<Card> = decision
        .candidates
        .iter()
        .map(|c| Card {
            index: c.index,
            name: c.name.clone(),
            available: c.available_bytes,
            allowed: true,
        })
        .collect();
    let n = Need {
        bytes: need,
        per_card_overhead: COMPUTE_OVERHEAD_BYTES.min(need),
        split: true,
    };
    plan_split(&cards, &n).map(|parts| {
        let mut v: Vec<(u32, f64)> = parts.iter().map(|p| (p.device, p.share)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Where::Split(v)
    })
}

/// Bytes a placement takes from each card (the split planner's reservations).
pub(super) fn take(gpus: &[Gpu], avail: &mut [u64], at: &Where, need: u64) {
    match at {
        Where::Gpu(i) => {
            if let Some(k) = gpus.iter().position(|g| g.index == *i) {
                avail[k] = avail[k].saturating_sub(need);
            }
        }
        Where::Split(parts) => {
            let oh = COMPUTE_OVERHEAD_BYTES.min(need);
            let divisible = need.saturating_sub(oh) as f64;
            for (d, share) in parts {
                if let Some(k) = gpus.iter().position(|g| g.index == *d) {
                    let part = (divisible * share).ceil() as u64 + oh;
                    avail[k] = avail[k].saturating_sub(part);
                }
            }
        }
        _ => {}
    }
}

/// The plan: every model on the GPUs, largest first. All fit together: `always`. Otherwise
/// every model that fits alone is `on_demand` (the daemon swaps them), the rest left out.
pub fn plan(gpus: &[Gpu], models: &[Model], ctx: u32, slots: u32, cpu: bool) -> Vec<PoolPlan> {
    let mut pools: Vec<PoolPlan> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ctx = m
                .ctx_train
                .map_or(ctx, |t| ctx.min(u32::try_from(t).unwrap_or(u32::MAX)))
                .max(16);
            PoolPlan {
                model: i,
                ctx,
                slots,
                need: estimate_footprint(m.size, u64::from(ctx), slots, m.kv_per_token),
                at: Where::Cpu,
                load: Load::Always,
            }
        })
        .collect();
    if cpu || pools.is_empty() {
        return pools;
    }
    let empty: Vec<u64> = gpus
        .iter()
        .map(|g| g.free.saturating_sub(HEADROOM_BYTES))
        .collect();
    let largest = gpus.iter().zip(&empty).max_by_key(|(_, &a)| a);
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|&a, &b| pools[b].need.cmp(&pools[a].need));
    let mut avail = empty.clone();
    let mut all_fit = true;
    for &i in &order {
        let need = pools[i].need;
        match place_on(gpus, &avail, need) {
            Some(at) => {
                take(gpus, &mut avail, &at, need);
                pools[i].at = at;
            }
            None => {
                all_fit = false;
                break;
            }
        }
    }
    if all_fit {
        return pools;
    }
    for p in &mut pools {
        match place_on(gpus, &empty, p.need) {
            Some(at) => {
                p.at = at;
                p.load = Load::OnDemand;
            }
            None => {
                let why = match largest {
                    Some((g, a)) => format!(
                        "needs ~{}, the GPUs have {} available together (largest: gpu{} {} with {}); lower --ctx/--slots or use a smaller quant",
                        gib(p.need),
                        gib(empty.iter().sum()),
                        g.index,
                        g.name,
                        gib(*a)
                    ),
                    None => "no GPU".into(),
                };
                p.at = Where::TooBig(why);
                p.load = Load::Left;
            }
        }
    }
    pools
}
