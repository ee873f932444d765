//! Where a load goes: the residents of the placement ledger, the room plan for a pool (one
//! GPU, a split, or evictions), and claiming the replicas to evict.

use std::collections::HashMap;
use std::sync::Arc;

use orch_core::placement::{place, PlacementRequest};
use orch_core::vram::{plan_room, Need, Resident, RoomPlan};

use crate::placement::{cards_of, footprint, split_need, usable_snapshot, GpuMode, HEADROOM_BYTES};
use crate::pool::{Generation, LoadPhase};
use crate::{Pool, PoolManager, Replica};

use super::{ms, UnloadingEngine};

/// What evicting a replica takes.
pub(super) struct Victim {
    pub(super) pool: Arc<Pool>,
    pub(super) generation: Arc<Generation>,
    pub(super) engines: Vec<UnloadingEngine>,
}

/// Where a load goes.
pub(super) enum Target {
    /// CPU mode (`dev.allow_cpu_inference` without GPUs): nothing to place.
    Cpu,
    /// GPUs.
    Gpu {
        plan: RoomPlan,
        need: Need,
        devices: Vec<orch_gpu_inventory::GpuDevice>,
        decision: orch_core::placement::PlacementDecision,
        fake: bool,
    },
}

impl PoolManager {
    /// The pool and generation a replica id belongs to.
    pub(super) fn replica_home(&self, replica_id: &str) -> Option<(Arc<Pool>, Arc<Generation>)> {
        self.pools.iter().find_map(|p| {
            p.all_generations()
                .into_iter()
                .find(|g| g.replicas.iter().any(|r| r.id() == replica_id))
                .map(|g| (p.clone(), g))
        })
    }

    /// Every replica holding VRAM in the ledger, with whether it may be evicted now.
    /// `busy_too`: count busy on_demand replicas as evictable (who would have to yield).
    pub(super) fn residents(&self, busy_too: bool) -> Vec<Resident> {
        let mut parts: HashMap<String, Vec<(u32, u64)>> = HashMap::new();
        for (id, d, b) in self.ledger.holdings() {
            parts.entry(id).or_default().push((d, b));
        }
        let mut out = Vec::new();
        for pool in &self.pools {
            let current = pool.current();
            let st = pool.load_status();
            for g in pool.all_generations() {
                for r in &g.replicas {
                    let Some(parts) = parts.remove(&r.id()) else {
                        continue;
                    };
                    let running = g.in_flight();
                    let queued = pool.queued();
                    let why_not = match &st {
                        None => Some("load: always".to_owned()),
                        Some(_) if g.number != current.number => {
                            Some("a reload in progress".to_owned())
                        }
                        // Work first: it is what a user can wait for.
                        Some(_) if running > 0 && !busy_too => Some(format!("{running} running")),
                        Some(_) if queued > 0 && !pool.is_yielding() && !busy_too => {
                            Some(format!("{queued} queued"))
                        }
                        Some(s) if s.phase != LoadPhase::Loaded => {
                            Some(s.phase.as_str().to_owned())
                        }
                        Some(_) => None,
                    };
                    out.push(Resident {
                        id: r.id(),
                        pool_id: pool.id().to_owned(),
                        parts,
                        last_used: ms(r.last_used().saturating_duration_since(self.od.epoch)),
                        evictable: why_not.is_none(),
                        why_not,
                    });
                }
            }
        }
        // Entries of replicas no pool knows any more (should not happen): they hold memory.
        for (id, parts) in parts {
            out.push(Resident {
                pool_id: id.clone(),
                id,
                parts,
                last_used: 0,
                evictable: false,
                why_not: Some("unknown".into()),
            });
        }
        out
    }

    /// Where a replica of `pool` would go now, avoiding `avoid` devices.
    pub(super) fn plan_for(
        &self,
        pool: &Pool,
        avoid: &[u32],
        busy_too: bool,
    ) -> Result<Target, String> {
        let GpuMode::Gpus { fake, .. } = &self.gpu else {
            return Ok(Target::Cpu);
        };
        let cfg = pool.config();
        let need_bytes = footprint(&cfg);
        let (devices, snapshots) =
            usable_snapshot(&self.gpu, &self.ledger, &self.free_slots_by_device());
        let req = PlacementRequest {
            need_bytes,
            headroom_bytes: HEADROOM_BYTES,
            mask: cfg.devices.indices().map(<[u32]>::to_vec),
        };
        let decision = place(&snapshots, &self.ledger.reservations(), &req);
        let mut cards = cards_of(&decision);
        for c in &mut cards {
            c.allowed = c.allowed && !avoid.contains(&c.index);
        }
        let need = split_need(&cfg, need_bytes);
        let plan = plan_room(&cards, &self.residents(busy_too), &need)?;
        Ok(Target::Gpu {
            plan,
            need,
            devices,
            decision,
            fake: *fake,
        })
    }

    /// Closes the replicas of the pools to evict, atomically with dispatch: each must have no
    /// task running (and its pool nothing queued unless it yields). Marks them `Unloading` and
    /// frees their ledger entries. `None` (nothing changed) when one turned busy.
    pub(super) fn claim_victims(&self, evict: &[String]) -> Option<Vec<Victim>> {
        let mut victims: Vec<Victim> = Vec::new();
        for id in evict {
            let (pool, generation) = self.replica_home(id)?;
            if victims.iter().any(|v| Arc::ptr_eq(&v.pool, &pool)) {
                continue;
            }
            victims.push(Victim {
                pool,
                generation,
                engines: Vec::new(),
            });
        }
        let mut closed: Vec<Arc<Replica>> = Vec::new();
        let mut ok = true;
        for v in &victims {
            if v.pool.queued() > 0 && !v.pool.is_yielding() {
                ok = false;
                break;
            }
            for r in &v.generation.replicas {
                if r.close_if_idle() {
                    closed.push(r.clone());
                } else {
                    ok = false;
                    break;
                }
            }
            if !ok {
                break;
            }
        }
        if !ok {
            for r in closed {
                r.reopen();
            }
            return None;
        }
        for v in &mut victims {
            v.engines = self.begin_unload(&v.pool, &v.generation);
        }
        Some(victims)
    }
}
