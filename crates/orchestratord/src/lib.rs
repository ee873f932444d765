//! `orchestratord`: admits tasks over HTTP into a bounded two-priority queue per pool,
//! dispatches them to engine replicas run by the pool manager, and streams results back as SSE.
//!
//! Layout: [`app`] builds state and routes; [`http`] holds thin handlers; [`dispatch`] owns
//! each pool's queue and runs tasks; [`task`] keeps tasks and transcripts; [`auth`] and
//! [`correlation`] are middleware; [`metrics`] and [`logging`] are observability.

pub mod admission;
pub mod app;
pub mod auth;
pub mod background;
pub mod catalog;
pub mod clock;
pub mod correlation;
pub mod dispatch;
pub mod engine_io;
pub mod error;
pub mod forecast;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod openapi;
pub mod outbound;
pub mod pool_control;
pub mod pull;
pub mod serve;
pub mod session_kv;
pub mod sessions;
pub mod stall;
pub mod status_history;
pub mod storage;
pub mod task;
#[cfg(test)]
mod testing;
pub mod transcripts;
pub mod wire;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use orch_api_types::{ErrorCode, ErrorEnvelope};
use orch_config::Config;
use orch_pool_manager::PoolManager;

use crate::app::AppState;
use crate::auth::Auth;

/// Runs the daemon until SIGTERM/SIGINT, then shuts down cleanly: stop admitting, end every
/// queued task with `SHUTTING_DOWN`, let running tasks finish within `shutdown_grace_s`, end the
/// rest, stop the engines.
pub async fn run(mut cfg: Config, token: Option<String>) -> anyhow::Result<()> {
    if cfg.dev.allow_cpu_inference {
        tracing::warn!("DEV SETTING dev.allow_cpu_inference is ON: engines may run on the CPU. For tests and the no-GPU quick start only.");
    }
    let addr = cfg.bind_addr()?;
    // The data directory, the outbound policy (engine endpoints, model URLs) and catalog ids
    // named as pool models, all before any engine starts.
    let services = app::Services::open(&mut cfg, token.as_deref()).await?;
    let pools = PoolManager::start(&cfg).map_err(|e| anyhow::anyhow!("{e}"))?;
    tracing::info!(gpu_mode = %pools.gpu_mode().describe(), pools = pools.pools().len(), "pool manager started");
    let auth = Auth::new(token, cfg.auth.optional);
    let grace = Duration::from_secs(cfg.shutdown_grace_s);
    let stall = Duration::from_secs(cfg.write_stall_timeout_s);
    let idle_timeout_s = cfg.idle_timeout_s;
    let state = AppState::new(cfg, pools.clone(), auth, services);
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr}; is another orchestratord running? Set LLORCH_ADDR or `bind` to another port")
    })?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, "listening");

    let app = app::router(state.clone());
    let shutdown_state = state.clone();
    serve::serve(
        stall::StallListener::new(listener, stall),
        app,
        Duration::from_secs(idle_timeout_s),
        async move {
            wait_for_signal().await;
            drain(&shutdown_state, grace).await;
        },
    )
    .await;
    // Charges and transcripts of the tasks that just ended.
    state.background.shutdown(Duration::from_secs(5)).await;
    // What the start-time model learned since its last save (runners have reported by now).
    for d in state.dispatchers.values() {
        d.flush_rates().await;
    }
    pools.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// How long runners get to end their tasks after being asked to, before their streams are ended
/// for them.
const RUNNER_GRACE: Duration = Duration::from_secs(3);

/// Resolves once every task in `tasks` has its terminal event.
async fn all_ended(tasks: &[std::sync::Arc<task::Task>]) {
    futures::future::join_all(tasks.iter().map(|t| t.clone().finished())).await;
}

/// Ends every task: queued ones at once, running ones after `grace`.
pub async fn drain(state: &AppState, grace: Duration) {
    tracing::info!(grace_s = grace.as_secs(), "shutdown: no longer admitting");
    state.shutting_down.store(true, Ordering::SeqCst);
    let bye = || {
        ErrorEnvelope::new(
            ErrorCode::ShuttingDown,
            "the daemon is shutting down; resubmit once it is back",
        )
        .retry_after(5000)
    };
    for d in state.dispatchers.values() {
        for t in d.drain_queue().await {
            t.fail(bye());
        }
    }
    let active = state.tasks.active();
    if tokio::time::timeout(grace, all_ended(&active))
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = active.len(),
            "shutdown: grace over, ending running tasks"
        );
        for t in &active {
            t.request_cancel(bye());
        }
        if tokio::time::timeout(RUNNER_GRACE, all_ended(&active))
            .await
            .is_err()
        {
            // Runners did not react; end the streams ourselves.
            for t in &active {
                t.fail(bye());
            }
        }
    }
    tracing::info!("shutdown: every task ended");
}
