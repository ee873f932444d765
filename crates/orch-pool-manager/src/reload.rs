//! Atomic reload with rollback.
//!
//! 1. Check the new model file (exists, readable, GGUF magic for llama.cpp).
//! 2. Place a new generation of replicas with the pool's devices, mask and the reservation
//!    ledger (so they must fit *beside* the serving ones), and launch them on new ports.
//! 3. Wait until every new replica answers its health check. Any failure (crash, corrupt model,
//!    timeout, no room) stops the new replicas and leaves the old generation serving: rollback,
//!    recorded as the pool's `last_error`.
//! 4. Swap: dispatch now picks only the new replicas, and the pool's model names follow.
//! 5. Retire the old generation in the background: no new leases, wait for its in-flight tasks
//!    (at most the grace period), then stop its engines.
//!
//! A reload also replaces replicas whose circuit breaker opened, so it is how a broken pool is
//! brought back after the cause is fixed.

use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::placement::{place_batch, replica_id, PlaceItem};
use crate::pool::Generation;
use crate::replica::{ReplicaState, ReplicaStatus};
use crate::{Pool, PoolManager};

/// What a reload failed on; the daemon maps it to an HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReloadErrorKind {
    /// No pool with that id.
    UnknownPool,
    /// The pool talks to an engine the daemon did not launch; there is nothing to reload.
    NotLaunched,
    /// Another reload of the same pool is running.
    Busy,
    /// The new model cannot be used: missing, unreadable, or not a GGUF file.
    BadModel,
    /// No GPU has room for the new replicas beside the serving ones.
    Unplaceable,
    /// A new replica exited or failed its start (for example a corrupt model).
    StartFailed,
    /// A new replica did not answer its health check in time.
    Timeout,
    /// A bug: the reload task itself failed.
    Internal,
}

/// A failed reload. For every kind but `UnknownPool`, `NotLaunched` and `Busy` the old
/// generation kept serving and the message (also the pool's `last_error`) says so.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ReloadError {
    /// What failed.
    pub kind: ReloadErrorKind,
    /// For people: what happened and what still serves.
    pub message: String,
}

impl ReloadError {
    fn new(kind: ReloadErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// A successful reload.
#[derive(Clone, Debug, Serialize)]
pub struct ReloadReport {
    /// The pool.
    pub pool_id: String,
    /// The generation now serving.
    pub generation: u64,
    /// The model it serves.
    pub model: String,
    /// The generation replaced (retiring now).
    pub previous_generation: u64,
    /// The model it served.
    pub previous_model: Option<String>,
    /// From the request to the swap: new replicas started, healthy and serving.
    pub took_ms: u64,
    /// The new replicas.
    pub replicas: Vec<ReplicaStatus>,
}

/// What to reload to.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    /// Model file for the new generation; `None` reloads the serving model (a restart, which
    /// also closes an open circuit breaker).
    pub model: Option<String>,
    /// How long retiring replicas may keep running their in-flight tasks before they are
    /// stopped (those tasks then end with `WORKER_RESET`).
    pub retire_grace: Duration,
}

impl PoolManager {
    /// Reloads `pool_id` (see the module docs). Returns once the new generation serves, or
    /// once the attempt was rolled back; retiring the old generation continues in the
    /// background.
    ///
    /// The reload runs as its own task: a caller that stops waiting (an HTTP client hanging up)
    /// cannot leave new engines half-started; the reload still finishes or rolls back.
    pub async fn reload(
        self: &Arc<Self>,
        pool_id: &str,
        opts: ReloadOptions,
    ) -> Result<ReloadReport, ReloadError> {
        let me = self.clone();
        let id = pool_id.to_owned();
        tokio::spawn(async move { me.reload_now(&id, opts).await })
            .await
            .unwrap_or_else(|e| {
                Err(ReloadError::new(
                    ReloadErrorKind::Internal,
                    format!("the reload task failed ({e}); see the daemon log"),
                ))
            })
    }

    async fn reload_now(
        &self,
        pool_id: &str,
        opts: ReloadOptions,
    ) -> Result<ReloadReport, ReloadError> {
        let pool = self.pool(pool_id).cloned().ok_or_else(|| {
            ReloadError::new(ReloadErrorKind::UnknownPool, format!("no pool `{pool_id}`"))
        })?;
        if pool.config().endpoint.is_some() {
            return Err(ReloadError::new(
                ReloadErrorKind::NotLaunched,
                format!(
                    "pool `{pool_id}` uses an engine at `endpoint` that llama-orch does not launch; reload that engine yourself"
                ),
            ));
        }
        let Ok(_one_at_a_time) = pool.reload_lock.try_lock() else {
            return Err(ReloadError::new(
                ReloadErrorKind::Busy,
                format!(
                    "a reload of pool `{pool_id}` is already in progress; wait for it to finish"
                ),
            ));
        };
        let t0 = Instant::now();
        let old = pool.current();
        let model = opts
            .model
            .clone()
            .or_else(|| old.cfg.model.clone())
            .unwrap_or_default();
        if pool.on_demand() && pool.load_phase() != Some(crate::LoadPhase::Loaded) {
            return self.reload_unloaded(&pool, &old, model, t0);
        }
        tracing::info!(pool_id, from = ?old.cfg.model, to = %model, from_generation = old.number, "reload: starting new replicas beside the serving ones");
        match self.start_candidate(&pool, &old, &model).await {
            Ok(generation) => {
                let old = pool.swap_in(generation.clone());
                pool.set_last_error(None);
                let took_ms = t0.elapsed().as_millis() as u64;
                tracing::info!(pool_id, model = %model, generation = generation.number, took_ms, "reload: switched dispatch to the new replicas; retiring the old ones");
                let report = ReloadReport {
                    pool_id: pool_id.to_owned(),
                    generation: generation.number,
                    model,
                    previous_generation: old.number,
                    previous_model: old.cfg.model.clone(),
                    took_ms,
                    replicas: generation.replicas.iter().map(|r| r.status()).collect(),
                };
                retire(pool.clone(), old, opts.retire_grace);
                Ok(report)
            }
            Err(e) => {
                let message = format!(
                    // The cause goes last: it may end with several lines of engine output.
                    "reload to `{model}` rolled back, still serving `{}` (generation {}): {e}",
                    old.cfg.model.as_deref().unwrap_or("?"),
                    old.number
                );
                tracing::error!(pool_id, kind = ?e.kind, "{message}");
                pool.set_last_error(Some(message.clone()));
                pool.notify();
                Err(ReloadError::new(e.kind, message))
            }
        }
    }

    /// An on_demand pool without an engine: the new model is checked and becomes the one the
    /// next load starts; nothing is launched now.
    fn reload_unloaded(
        &self,
        pool: &Arc<Pool>,
        old: &Generation,
        model: String,
        t0: Instant,
    ) -> Result<ReloadReport, ReloadError> {
        if old.cfg.engine == orch_config::EngineKind::Llamacpp {
            check_gguf(&model)?;
        }
        let mut cfg = (*old.cfg).clone();
        cfg.model = Some(model.clone());
        let number = pool.next_generation();
        let generation = self.placeholder(number, Arc::new(cfg), None);
        pool.set_current(generation.clone());
        pool.set_last_error(None);
        pool.with_load(|s| {
            if s.phase == crate::LoadPhase::Failed {
                s.enter(crate::LoadPhase::Unloaded);
            }
        });
        pool.set_expected_load_ms(self.od.times.expected_ms(&model));
        tracing::info!(pool_id = %pool.id(), model = %model, "reload of an unloaded on_demand pool: the next load uses the new model");
        Ok(ReloadReport {
            pool_id: pool.id().to_owned(),
            generation: number,
            model,
            previous_generation: old.number,
            previous_model: old.cfg.model.clone(),
            took_ms: t0.elapsed().as_millis() as u64,
            replicas: generation.replicas.iter().map(|r| r.status()).collect(),
        })
    }

    /// Places, launches and health-checks a new generation; on failure stops it again.
    async fn start_candidate(
        &self,
        pool: &Arc<Pool>,
        old: &Generation,
        model: &str,
    ) -> Result<Arc<Generation>, ReloadError> {
        if old.cfg.engine == orch_config::EngineKind::Llamacpp {
            check_gguf(model)?;
        }
        let mut cfg = (*old.cfg).clone();
        cfg.model = Some(model.to_owned());
        let number = pool.next_generation();
        let items: Vec<PlaceItem<'_>> = (0..cfg.replicas)
            .map(|i| PlaceItem {
                pool: &cfg,
                replica_id: replica_id(&cfg.id, number, i),
            })
            .collect();
        let plans = place_batch(
            &items,
            &self.gpu,
            &self.metrics,
            &self.ledger,
            &self.free_slots_by_device(),
        );
        if let Some(p) = plans.iter().find(|p| p.blocked.is_some()) {
            for it in &items {
                self.ledger.release(&it.replica_id);
            }
            let kind = if p.device == "none" {
                ReloadErrorKind::Unplaceable
            } else {
                ReloadErrorKind::StartFailed
            };
            let why = p.blocked.clone().unwrap_or_default();
            return Err(ReloadError::new(
                kind,
                format!("new replicas cannot be placed: {why}"),
            ));
        }
        let cfg = Arc::new(cfg);
        let generation = self.new_generation(number, cfg.clone(), &plans);
        pool.set_incoming(Some(generation.clone()));
        self.spawn_supervisors(pool, &generation, plans);
        // The supervisor gives up after startup_timeout_s; this is only a backstop.
        let limit = Duration::from_secs(cfg.startup_timeout_s.max(1) + 2);
        match wait_healthy(pool, &generation, limit).await {
            Ok(()) => Ok(generation),
            Err(e) => {
                generation.stop().await;
                pool.set_incoming(None);
                Err(e)
            }
        }
    }
}

/// Fails fast on a model llama.cpp cannot load at all, before anything is launched.
pub(crate) fn check_gguf(model: &str) -> Result<(), ReloadError> {
    let bad = |m: String| ReloadError::new(ReloadErrorKind::BadModel, m);
    let meta = std::fs::metadata(model).map_err(|e| {
        bad(format!(
            "model file `{model}` cannot be read ({e}); check the path"
        ))
    })?;
    if !meta.is_file() {
        return Err(bad(format!(
            "`{model}` is not a file; give the path of a .gguf model"
        )));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(model)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map_err(|e| bad(format!("model file `{model}` cannot be read ({e})")))?;
    if &magic != b"GGUF" {
        return Err(bad(format!(
            "`{model}` is not a GGUF model (its first bytes are not `GGUF`); check the path, or re-download or re-convert the model"
        )));
    }
    Ok(())
}

/// Waits until every replica of `generation` is ready; the first one that fails ends the wait.
async fn wait_healthy(
    pool: &Pool,
    generation: &Generation,
    limit: Duration,
) -> Result<(), ReloadError> {
    let mut changed = pool.subscribe();
    let deadline = Instant::now() + limit;
    loop {
        let st: Vec<ReplicaStatus> = generation.replicas.iter().map(|r| r.status()).collect();
        if st.iter().all(|s| s.state == ReplicaState::Ready) {
            return Ok(());
        }
        if let Some(bad) = st.iter().find(|s| {
            matches!(
                s.state,
                ReplicaState::Crashed
                    | ReplicaState::CircuitOpen
                    | ReplicaState::Unready
                    | ReplicaState::Stopped
                    | ReplicaState::Failed
            )
        }) {
            let why = bad.last_error.as_deref().unwrap_or("stopped");
            let kind = if why.contains("did not become healthy") {
                ReloadErrorKind::Timeout
            } else {
                ReloadErrorKind::StartFailed
            };
            return Err(ReloadError::new(
                kind,
                format!("new replica {} failed to start: {why}", bad.id),
            ));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReloadError::new(
                ReloadErrorKind::Timeout,
                format!(
                    "new replicas did not answer their health check within {}s",
                    limit.as_secs()
                ),
            ));
        }
        // Woken by any replica change; the sleep bounds the wait if the pool is quiet.
        tokio::select! {
            r = changed.changed() => if r.is_err() { tokio::time::sleep(Duration::from_millis(50)).await },
            _ = tokio::time::sleep(left.min(Duration::from_millis(250))) => {}
        }
    }
}

/// Retires `old` in the background: closes its replicas to new tasks, waits for the in-flight
/// ones (at most `grace`), stops its engines, and forgets it.
fn retire(pool: Arc<Pool>, old: Arc<Generation>, grace: Duration) {
    for r in &old.replicas {
        r.retire();
    }
    pool.notify();
    tokio::spawn(async move {
        let deadline = Instant::now() + grace;
        loop {
            let n = old.in_flight();
            if n == 0 {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(pool_id = %pool.id(), generation = old.number, in_flight = n, grace_ms = grace.as_millis() as u64, "reload: grace over; stopping the old replicas with tasks still running (they end with WORKER_RESET)");
                break;
            }
            tokio::select! {
                _ = old.cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        old.stop().await;
        pool.forget_retired(old.number);
        tracing::info!(pool_id = %pool.id(), generation = old.number, "reload: old replicas stopped");
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gguf_check_names_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.gguf");
        let e = check_gguf(missing.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind, ReloadErrorKind::BadModel);
        assert!(e.message.contains("cannot be read"), "{}", e.message);
        let junk = dir.path().join("junk.gguf");
        std::fs::write(&junk, b"garbage bytes").unwrap();
        let e = check_gguf(junk.to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("not a GGUF model"), "{}", e.message);
        let e = check_gguf(dir.path().to_str().unwrap()).unwrap_err();
        assert!(e.message.contains("not a file"), "{}", e.message);
        let ok = dir.path().join("ok.gguf");
        std::fs::write(&ok, b"GGUF\x03\x00\x00\x00").unwrap();
        assert!(check_gguf(ok.to_str().unwrap()).is_ok());
    }
}
