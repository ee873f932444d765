//! One task per replica: launch (or find) the engine, wait until it is healthy, watch it, and
//! restart it after a crash with exponential backoff and jitter. After
//! [`CIRCUIT_CRASHES`] crashes within [`CIRCUIT_WINDOW`] the circuit opens: the replica stays
//! down with its last error until the pool is reloaded.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_engine_adapters::{EngineAdapter, LlamaCppAdapter};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use orch_config::PoolConfig;

use crate::launch::{
    free_port, listener_owned_by, spawn_engine, stop_engine, LaunchPlan, OutputTail,
};
use crate::metrics::{PoolLabels, PoolMetrics};
use crate::placement::{log_estimate_check, GpuMode, Ledger, ReplicaPlan};
use crate::{AdapterFactory, Pool, Replica, ReplicaState};

/// Crashes within [`CIRCUIT_WINDOW`] that open the circuit.
pub const CIRCUIT_CRASHES: usize = 5;
/// Window for counting crashes.
pub const CIRCUIT_WINDOW: Duration = Duration::from_secs(120);
const HEALTH_EVERY: Duration = Duration::from_secs(1);
const HEALTH_FAILS_UNREADY: u32 = 3;
/// Consecutive failed health checks (about 3 s each with the 2 s timeout) after which a
/// launched engine counts as hung (e.g. stopped, deadlocked): it is killed and restarted like
/// a crash, so its in-flight tasks end with `WORKER_RESET` instead of hanging forever (found
/// by the chaos harness: a SIGSTOPped engine left its streams open indefinitely). The tasks on
/// an `endpoint:` engine, which cannot be killed, abandon it at the same count.
const HEALTH_FAILS_KILL: u32 = 10;
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Everything one replica's supervisor needs.
pub(crate) struct Supervised {
    pub pool: Arc<Pool>,
    pub generation: u64,
    pub cfg: Arc<PoolConfig>,
    pub rep: Arc<Replica>,
    pub cancel: CancellationToken,
    pub metrics: PoolMetrics,
    pub ledger: Arc<Ledger>,
    pub gpu: GpuMode,
    /// Injected adapters (tests); `None`: the engine kind's HTTP adapter.
    pub adapters: Option<AdapterFactory>,
}

impl Supervised {
    /// An on_demand pool's load that fails is not retried here: the replica turns `Failed`
    /// and the on-demand loader decides (one retry on another placement, then the waiting
    /// tasks fail). Crashes after the engine served are restarted like any replica's.
    fn on_demand(&self) -> bool {
        self.cfg.on_demand()
    }
}

pub(crate) async fn supervise(s: Supervised, plan: ReplicaPlan) {
    let rid = s.rep.id();
    if let Some(reason) = plan.blocked {
        tracing::error!(pool_id = %s.pool.id(), replica_id = %rid, %reason, "replica cannot start");
        let state = if s.on_demand() {
            ReplicaState::Failed
        } else {
            ReplicaState::Unready
        };
        s.rep.update(|st| {
            st.state = state;
            st.last_error = Some(reason.clone());
        });
        s.pool.note_error(s.generation, reason);
        s.pool.notify();
        return;
    }
    if let Some(ep) = plan.endpoint {
        watch_endpoint(&s, &ep).await;
    } else if let Some(launch) = plan.launch {
        supervise_launched(&s, &launch).await;
    }
    s.ledger.release(&rid);
    s.rep.set_adapter(None);
    s.rep.update(|st| {
        // An unload shows as such until the pool's placeholder replaces the replica.
        if st.state != ReplicaState::Unloading {
            st.state = ReplicaState::Stopped;
        }
        st.pid = None;
    });
    s.pool.notify();
}

fn adapter_for(s: &Supervised, url: &str) -> Result<Arc<dyn EngineAdapter>, String> {
    if let Some(make) = &s.adapters {
        return make(&s.cfg, url);
    }
    let cfg = &s.cfg;
    match cfg.engine {
        orch_config::EngineKind::Llamacpp => LlamaCppAdapter::new(url)
            .map(|a| Arc::new(a) as Arc<dyn EngineAdapter>)
            .map_err(|e| e.to_string()),
        // vllm/openai (OpenAI-compatible), tgi, triton: the pool's `model` names the model
        // on the server (required for triton).
        other => orch_engine_adapters::adapter_for(other.as_str(), url, cfg.model.as_deref())
            .map_err(|e| e.to_string()),
    }
}

/// An engine we did not launch: poll its health and mirror it.
async fn watch_endpoint(s: &Supervised, url: &str) {
    let (pool, rep) = (&s.pool, &s.rep);
    let adapter = match adapter_for(s, url) {
        Ok(a) => a,
        Err(e) => {
            rep.update(|st| {
                st.state = ReplicaState::Unready;
                st.last_error = Some(e.clone());
            });
            pool.note_error(s.generation, e);
            pool.notify();
            s.cancel.cancelled().await;
            return;
        }
    };
    rep.update(|st| st.endpoint = Some(url.to_owned()));
    let mut fails = 0u32;
    loop {
        let was_ready = rep.state() == ReplicaState::Ready;
        match adapter.health().await {
            Ok(()) => {
                fails = 0;
                if !was_ready {
                    let info = adapter.info().await.ok();
                    rep.set_adapter(Some(adapter.clone()));
                    rep.update(|st| {
                        st.state = ReplicaState::Ready;
                        st.info = info;
                        st.last_error = None;
                    });
                    tracing::info!(pool_id = %pool.id(), endpoint = %url, "endpoint ready");
                    pool.notify();
                }
            }
            Err(e) => {
                fails += 1;
                if fails == HEALTH_FAILS_KILL && rep.in_flight() > 0 {
                    // A launched engine would be killed now, which breaks its streams; one we
                    // did not launch cannot be, so its tasks give up on it instead of waiting.
                    tracing::error!(pool_id = %pool.id(), endpoint = %url, failed_checks = fails, error = %e, in_flight = rep.in_flight(), "endpoint hung: abandoning its running tasks");
                    rep.abandon_in_flight(format!(
                        "the engine at {url} answered no health check {fails} times in a row ({e}); request abandoned"
                    ));
                }
                if was_ready && fails < HEALTH_FAILS_UNREADY {
                    // Tolerate a blip.
                } else if was_ready || rep.status().last_error.is_none() {
                    tracing::warn!(pool_id = %pool.id(), endpoint = %url, error = %e, "endpoint not healthy");
                    rep.set_adapter(None);
                    rep.update(|st| {
                        st.state = ReplicaState::Unready;
                        st.last_error = Some(e.to_string());
                    });
                    pool.notify();
                }
            }
        }
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            _ = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}

/// Exponential backoff with ±20 % jitter: 250 ms · 2^attempt, at most 30 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << attempt.min(7));
    base.min(Duration::from_secs(30))
        .mul_f64(rand::rng().random_range(0.8..1.2))
}

async fn supervise_launched(s: &Supervised, plan: &LaunchPlan) {
    let (pool, rep) = (&s.pool, &s.rep);
    let rid = rep.id();
    let startup = Duration::from_secs(s.cfg.startup_timeout_s.max(1));
    let mut crashes: VecDeque<Instant> = VecDeque::new();
    let mut attempt: u32 = 0;
    let mut served = false;
    loop {
        if s.cancel.is_cancelled() {
            return;
        }
        let starting = if s.on_demand() && !served {
            ReplicaState::Loading
        } else {
            ReplicaState::Starting
        };
        rep.update(|st| st.state = starting);
        s.ledger.loading(&rid);
        pool.notify();
        let started = Instant::now();
        let outcome = run_once(s, plan, startup, &mut served).await;
        let reason = match outcome {
            RunOutcome::Canceled => return,
            RunOutcome::Exited(reason) => reason,
        };
        if s.on_demand() && !served {
            tracing::warn!(pool_id = %pool.id(), replica_id = %rid, %reason, "on-demand load failed");
            rep.set_adapter(None);
            rep.update(|st| {
                st.state = ReplicaState::Failed;
                st.pid = None;
                st.last_error = Some(reason.clone());
            });
            pool.notify();
            s.cancel.cancelled().await;
            return;
        }
        // A crash (or a failed start).
        let now = Instant::now();
        crashes.push_back(now);
        while crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > CIRCUIT_WINDOW)
        {
            crashes.pop_front();
        }
        // A reload's candidates that fail are rolled back, not restarted: count serving ones.
        if pool.is_current(s.generation) {
            s.metrics
                .engine_restarts
                .get_or_create(&PoolLabels {
                    pool_id: pool.id().to_owned(),
                })
                .inc();
        }
        rep.set_adapter(None);
        if rep.is_retired() {
            // Replaced by a reload: nothing to restart; wait to be stopped.
            rep.update(|st| {
                st.pid = None;
                st.last_error = Some(reason.clone());
            });
            pool.notify();
            s.cancel.cancelled().await;
            return;
        }
        if crashes.len() >= CIRCUIT_CRASHES {
            let msg = format!(
                "circuit open after {} crashes in {}s; last: {reason}. Fix the cause, then reload the pool (POST /v1/pools/{}/reload)",
                crashes.len(),
                CIRCUIT_WINDOW.as_secs(),
                pool.id()
            );
            tracing::error!(pool_id = %pool.id(), replica_id = %rid, "{msg}");
            rep.update(|st| {
                st.state = ReplicaState::CircuitOpen;
                st.pid = None;
                st.last_error = Some(msg.clone());
            });
            pool.note_error(s.generation, msg);
            pool.notify();
            s.cancel.cancelled().await;
            return;
        }
        // A replica that served for a while starts its backoff afresh.
        if started.elapsed() > Duration::from_secs(60) {
            attempt = 0;
        }
        let wait = backoff(attempt);
        attempt = attempt.saturating_add(1);
        tracing::warn!(pool_id = %pool.id(), replica_id = %rid, %reason, backoff_ms = wait.as_millis() as u64, "engine down; restarting");
        rep.update(|st| {
            st.state = ReplicaState::Crashed;
            st.pid = None;
            st.restarts += 1;
            st.last_error = Some(reason.clone());
        });
        pool.notify();
        tokio::select! {
            _ = s.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

enum RunOutcome {
    Canceled,
    Exited(String),
}

/// Launches the engine once and watches it until it exits or we are canceled.
/// `served` turns true once the engine answered its health check (it stays true across
/// restarts).
async fn run_once(
    s: &Supervised,
    plan: &LaunchPlan,
    startup: Duration,
    served: &mut bool,
) -> RunOutcome {
    let (pool, rep, cancel) = (&s.pool, &s.rep, &s.cancel);
    let rid = rep.id();
    let port = match free_port() {
        Ok(p) => p,
        Err(e) => return RunOutcome::Exited(format!("no free port: {e}")),
    };
    let tail = OutputTail::default();
    let mut child = match spawn_engine(plan, port, pool.id(), &rid, &tail) {
        Ok(c) => c,
        Err(e) => {
            return RunOutcome::Exited(format!("cannot start {}: {e}", plan.binary.display()))
        }
    };
    let pid = child.id();
    let url = format!("http://127.0.0.1:{port}");
    tracing::info!(pool_id = %pool.id(), replica_id = %rid, ?pid, %url, args = ?plan.args(port), cuda_visible_devices = ?plan.cuda_visible_devices, "engine launched");
    rep.update(|st| {
        st.pid = pid;
        st.endpoint = Some(url.clone());
    });
    pool.notify();
    let adapter = match adapter_for(s, &url) {
        Ok(a) => a,
        Err(e) => {
            stop_engine(&mut child, STOP_GRACE).await;
            return RunOutcome::Exited(e);
        }
    };
    // Wait for readiness.
    let deadline = Instant::now() + startup;
    let mut foreign_warned = false;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                stop_engine(&mut child, STOP_GRACE).await;
                return RunOutcome::Canceled;
            }
            st = child.wait() => {
                let st = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                // The forwarders may still hold the last lines; give them a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return RunOutcome::Exited(format!("engine exited during startup ({st}); last output:\n{}", tail.last(8)));
            }
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
        if adapter.health().await.is_ok() {
            // Only our engine's answer counts: the port was free when chosen, but another
            // server may have bound it first (ours then fails to bind, exits and is restarted
            // on a new port). An injected adapter (tests) does not use the port at all.
            let owner = if s.adapters.is_some() {
                None
            } else {
                pid.and_then(|p| listener_owned_by(p, port))
            };
            match owner {
                Some(false) => {
                    if !foreign_warned {
                        foreign_warned = true;
                        tracing::warn!(pool_id = %pool.id(), replica_id = %rid, port, "another server answers on the engine's port; waiting for ours");
                    }
                }
                _ => break,
            }
        }
        if Instant::now() > deadline {
            stop_engine(&mut child, STOP_GRACE).await;
            return RunOutcome::Exited(format!(
                "engine did not become healthy within {}s; last output:\n{}",
                startup.as_secs(),
                tail.last(8)
            ));
        }
    }
    let info = adapter.info().await.ok();
    tracing::info!(pool_id = %pool.id(), replica_id = %rid, ?pid, version = ?info.as_ref().map(|i| &i.version), ctx_per_slot = ?info.as_ref().and_then(|i| i.ctx_per_slot), "engine ready");
    if let Some(check) = s.ledger.loaded(&rid) {
        log_estimate_check(&s.gpu, pool.id(), &rid, check);
    }
    *served = true;
    rep.set_adapter(Some(adapter.clone()));
    rep.update(|st| {
        // A replica retired (or being unloaded) while it was starting stays so.
        if !matches!(st.state, ReplicaState::Retiring | ReplicaState::Unloading) {
            st.state = ReplicaState::Ready;
        }
        st.info = info;
    });
    pool.notify();
    // Watch it.
    let mut fails = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                rep.set_adapter(None);
                rep.update(|st| if st.state != ReplicaState::Unloading { st.state = ReplicaState::Stopped });
                pool.notify();
                stop_engine(&mut child, STOP_GRACE).await;
                tracing::info!(pool_id = %pool.id(), replica_id = %rid, ?pid, "engine stopped");
                return RunOutcome::Canceled;
            }
            st = child.wait() => {
                let st = st.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(pool_id = %pool.id(), replica_id = %rid, ?pid, status = %st, last_output = %tail.last(8), "engine exited");
                return RunOutcome::Exited(format!("engine exited ({st})"));
            }
            _ = tokio::time::sleep(HEALTH_EVERY) => {
                match adapter.health().await {
                    Ok(()) => {
                        // Unready after failed checks, or after a task reported the engine
                        // unreachable: it answers again, so it serves again.
                        if rep.state() == ReplicaState::Unready {
                            rep.set_adapter(Some(adapter.clone()));
                            rep.update(|st| if st.state == ReplicaState::Unready { st.state = ReplicaState::Ready });
                            tracing::info!(pool_id = %pool.id(), replica_id = %rid, "engine healthy again");
                            pool.notify();
                        }
                        fails = 0;
                    }
                    Err(e) => {
                        fails += 1;
                        if fails == HEALTH_FAILS_UNREADY {
                            tracing::warn!(pool_id = %pool.id(), replica_id = %rid, error = %e, "engine stopped answering health checks");
                            rep.set_adapter(None);
                            rep.update(|st| {
                                st.state = ReplicaState::Unready;
                                st.last_error = Some(e.to_string());
                            });
                            pool.notify();
                        }
                        if fails >= HEALTH_FAILS_KILL {
                            tracing::error!(pool_id = %pool.id(), replica_id = %rid, ?pid, failed_checks = fails, error = %e, "engine hung: killing it so that it restarts");
                            stop_engine(&mut child, Duration::ZERO).await;
                            return RunOutcome::Exited(format!(
                                "engine hung: no answer to {fails} health checks in a row ({e}); killed"
                            ));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        for attempt in 0..12 {
            let base = 250f64 * f64::from(1u32 << attempt.min(7));
            let ms = backoff(attempt).as_secs_f64() * 1000.0;
            let cap = base.min(30_000.0);
            assert!(
                ms >= cap * 0.8 - 1.0 && ms <= cap * 1.2 + 1.0,
                "attempt {attempt}: {ms}"
            );
        }
    }
}
