//! `orchestratord`: admits tasks over HTTP into a bounded two-priority queue per pool,
//! dispatches them to engine replicas run by the pool manager, and streams results back as SSE.
//!
//! Layout, top to bottom (ARCHITECTURE.md, "Code map"; a module imports only its own layer or
//! lower ones): [`run`] and [`serve`]; `http` (the router and thin handlers); `state` (the
//! `AppState` handlers get); the services (`admission`, `pool_control`, `status`, `pull`,
//! `background`); the domain (`dispatch` owns each pool's queue and runs tasks, `task` keeps
//! tasks and transcripts, sessions, catalog, …); and the ground (`error`, `clock`, `wire`,
//! `metrics`, [`auth`], [`logging`]).
//!
//! Modules are private to the crate except what other crates use: [`run`], [`auth`]
//! (`fingerprint`, for the e2e tests), [`logging`] (the binary) and [`openapi`] (the contract
//! test).

mod admission;
pub mod auth;
mod background;
mod catalog;
mod clock;
mod correlation;
mod dispatch;
mod engine_io;
mod error;
mod forecast;
mod http;
pub mod logging;
mod metrics;
mod outbound;
mod pool_control;
mod pull;
mod serve;
mod session_kv;
mod sessions;
mod shutdown;
mod stall;
mod state;
mod status;
mod status_history;
mod storage;
mod task;
#[cfg(test)]
mod testing;
mod transcripts;
mod wire;

/// The OpenAPI document (`contracts/openapi.json`), generated from the handlers.
pub use http::openapi;

use std::time::Duration;

use anyhow::Context;
use orch_config::Config;
use orch_pool_manager::PoolManager;

use crate::auth::Auth;
use crate::state::AppState;

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
    let services = state::Services::open(&mut cfg, token.as_deref()).await?;
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

    let app = http::router(state.clone());
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
    state.pool_control.flush_rates().await;
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

/// Ends every task: queued ones at once, running ones after `grace` (what SIGTERM does).
pub(crate) async fn drain(state: &AppState, grace: Duration) {
    state.pool_control.shut_down(grace).await;
}
