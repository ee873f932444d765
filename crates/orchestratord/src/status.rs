//! The status page's data: one snapshot of the whole daemon (queue per priority, GPUs and
//! what each pool holds on them, pools and replicas, recent and waiting tasks), built from
//! what it reads and nothing else ([`StatusView`]). Served by `http/web.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use orch_api_types::{
    GpuPoolUse, GpuStatus, PoolStatus, QueueDepths, ReplicaSummary, StatusSnapshot, TaskState,
    WaitingTask,
};
use orch_pool_manager::PoolManager;

use crate::shutdown::ShutdownFlag;
use crate::status_history::StatusHistory;
use crate::task::TaskTable;

/// Waiting tasks a snapshot lists at most.
pub const MAX_WAITING: usize = 100;

/// What a status snapshot reads.
pub struct StatusView {
    /// Pools, replicas and GPUs.
    pub pools: Arc<PoolManager>,
    /// Queued, running and recent tasks.
    pub tasks: Arc<TaskTable>,
    /// Recent throughput and queue samples (the handlers send the part a reader has not seen).
    pub history: Arc<StatusHistory>,
    /// Set once shutdown began.
    pub shutting_down: ShutdownFlag,
    /// `queue.capacity`: a pool's queue capacity unless the pool sets its own.
    pub default_queue_capacity: usize,
}

impl StatusView {
    /// What each pool's replicas hold per GPU index: the engine process's memory where NVML lists
    /// its pid on the card, else placement's reservation for the replica there. `gpus`: each GPU's
    /// index and the `(pid, bytes)` of the processes NVML lists on it.
    fn vram_by_pool(&self, gpus: &[(u32, Vec<(u32, u64)>)]) -> HashMap<u32, Vec<GpuPoolUse>> {
        let pools = self.pools.pools();
        // Replica id -> (pool id, engine pid), for the serving replicas.
        let mut replicas: HashMap<String, (String, Option<u32>)> = HashMap::new();
        for p in pools {
            for r in p.replicas() {
                replicas.insert(r.status.id.clone(), (p.id().to_owned(), r.status.pid));
            }
        }
        // A replica not serving (a reload's incoming or retiring one) is `<pool>-…`.
        let pool_of = |replica: &str| -> Option<String> {
            if let Some((pool, _)) = replicas.get(replica) {
                return Some(pool.clone());
            }
            pools
                .iter()
                .map(|p| p.id())
                .filter(|id| {
                    replica.len() > id.len()
                        && replica.starts_with(id)
                        && replica.as_bytes().get(id.len()) == Some(&b'-')
                })
                .max_by_key(|id| id.len())
                .map(str::to_owned)
        };
        let mut out: HashMap<u32, Vec<GpuPoolUse>> = HashMap::new();
        for (index, processes) in gpus {
            let uses = out.entry(*index).or_default();
            for (replica, (pool, pid)) in &replicas {
                let Some((_, bytes)) =
                    pid.and_then(|pid| processes.iter().find(|(p, _)| *p == pid))
                else {
                    continue;
                };
                uses.push(GpuPoolUse {
                    pool_id: pool.clone(),
                    replica_id: replica.clone(),
                    vram_bytes: *bytes,
                    source: "measured".into(),
                });
            }
        }
        for (replica, index, bytes) in self.pools.vram_reservations() {
            let Some(uses) = out.get_mut(&index) else {
                continue;
            };
            if uses.iter().any(|u| u.replica_id == replica) {
                continue;
            }
            let Some(pool) = pool_of(&replica) else {
                continue;
            };
            uses.push(GpuPoolUse {
                pool_id: pool,
                replica_id: replica,
                vram_bytes: bytes,
                source: "reserved".into(),
            });
        }
        for uses in out.values_mut() {
            uses.sort_by(|a, b| {
                b.vram_bytes
                    .cmp(&a.vram_bytes)
                    .then_with(|| a.replica_id.cmp(&b.replica_id))
            });
        }
        out
    }

    /// Every waiting task, the soonest predicted start first (unknown predictions last, by queue
    /// position), at most [`MAX_WAITING`].
    fn waiting(&self) -> Vec<WaitingTask> {
        let mut w: Vec<WaitingTask> = self
            .tasks
            .active()
            .iter()
            .map(|t| t.status())
            .filter(|t| t.state == TaskState::Queued)
            .map(|t| WaitingTask {
                task_id: t.task_id,
                pool_id: t.pool_id,
                priority: t.priority,
                queue_position: t.queue_position,
                predicted_start_ms: t.predicted_start_ms,
                submitted_ms: t.submitted_ms,
            })
            .collect();
        w.sort_by_key(|t| {
            (
                t.predicted_start_ms.unwrap_or(u64::MAX),
                t.queue_position.unwrap_or(usize::MAX),
                t.submitted_ms,
            )
        });
        w.truncate(MAX_WAITING);
        w
    }

    /// Builds a snapshot of the whole daemon (without `history`: the handlers add the part of it
    /// their reader has not seen).
    pub fn snapshot(&self, recent: usize) -> StatusSnapshot {
        // Queue depth per pool and priority, and running tasks, from the task registry.
        let per_pool = crate::status_history::queue_by_pool(&self.tasks);
        let mut total = QueueDepths::default();
        let pools: Vec<PoolStatus> = self
            .pools
            .pools()
            .iter()
            .map(|p| {
                let h = p.health();
                let q = per_pool.get(p.id()).copied().unwrap_or_default();
                total.interactive += q.interactive;
                total.batch += q.batch;
                total.running += q.running;
                PoolStatus {
                    id: p.id().to_owned(),
                    engine: p.engine().to_owned(),
                    engine_version: p.engine_version(),
                    model: p.config().model.clone(),
                    ready: h.ready,
                    draining: h.draining,
                    queue: q,
                    queue_capacity: p
                        .config()
                        .queue_capacity
                        .unwrap_or(self.default_queue_capacity),
                    slots_ready: p.ready_slots(),
                    load_state: p.load_phase().map(|l| l.as_str().to_owned()),
                    last_error: h.last_error,
                    replicas: h
                        .replicas
                        .into_iter()
                        .map(|r| ReplicaSummary {
                            id: r.id,
                            state: serde_json::to_value(r.state)
                                .ok()
                                .and_then(|v| v.as_str().map(str::to_owned))
                                .unwrap_or_default(),
                            device: r.device,
                            endpoint: r.endpoint,
                            pid: r.pid,
                            restarts: r.restarts,
                            slots: r.slots,
                            last_error: r.last_error,
                        })
                        .collect(),
                }
            })
            .collect();
        let devices = self.pools.gpus();
        let processes: Vec<(u32, Vec<(u32, u64)>)> = devices
            .iter()
            .map(|d| {
                let p = d.processes.iter().map(|p| (p.pid, p.used_bytes)).collect();
                (d.index, p)
            })
            .collect();
        let mut by_pool = self.vram_by_pool(&processes);
        let gpus = devices
            .into_iter()
            .map(|g| GpuStatus {
                pools: by_pool.remove(&g.index).unwrap_or_default(),
                index: g.index,
                name: g.name,
                uuid: g.uuid,
                utilization_pct: g.utilization_pct,
                vram_total_bytes: g.total_bytes,
                vram_used_bytes: g.used_bytes,
                vram_free_bytes: g.free_bytes,
            })
            .collect();
        StatusSnapshot {
            daemon_version: env!("CARGO_PKG_VERSION").into(),
            time_ms: crate::clock::now_ms(),
            gpu_mode: self.pools.gpu_mode().describe(),
            shutting_down: self.shutting_down.began(),
            queue: total,
            gpus,
            pools,
            tasks: self
                .tasks
                .recent(recent.min(200))
                .iter()
                .map(|t| t.status())
                .collect(),
            waiting: self.waiting(),
            history: Vec::new(),
        }
    }
}
