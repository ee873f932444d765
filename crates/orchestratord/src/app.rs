//! The daemon's shared state and router. Handlers get state explicitly (axum `State`); nothing
//! global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use orch_config::Config;
use pool_manager::PoolManager;
use prometheus_client::registry::Registry;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{require_token, Auth};
use crate::correlation::correlate;
use crate::dispatch::{DispatchCtx, Dispatcher};
use crate::http;
use crate::metrics::Metrics;
use crate::persist::Persist;
use crate::task::TaskTable;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Pools and engines.
    pub pools: Arc<PoolManager>,
    /// Dispatcher per pool id.
    pub dispatchers: Arc<HashMap<String, Dispatcher>>,
    /// Tasks.
    pub tasks: Arc<TaskTable>,
    /// Metrics.
    pub metrics: Metrics,
    /// Prometheus registry holding `metrics` and the pool manager's series.
    pub prom: Arc<Registry>,
    /// Set once shutdown began: admission answers 503.
    pub shutting_down: Arc<AtomicBool>,
    /// Authentication.
    pub auth: Auth,
    /// The persistent store: catalog, sessions and budgets, artifacts, audit log
    /// (`<data_dir>`; blocking: call it from `spawn_blocking`).
    pub store: Arc<orch_store::Store>,
    /// Persistence glue: catalog mirror, session admission, transcripts, outbound policy.
    pub persist: Arc<Persist>,
}

impl AppState {
    /// Builds the state and starts one dispatcher per pool.
    pub fn new(config: Config, pools: Arc<PoolManager>, auth: Auth, persist: Arc<Persist>) -> Self {
        let metrics = Metrics::default();
        let mut prom = Registry::default();
        metrics.register(&mut prom);
        persist.register_metrics(&mut prom);
        pools.metrics().register(&mut prom);
        let tasks = Arc::new(TaskTable::new(
            std::time::Duration::from_millis(config.tasks.retain_ms),
            config.tasks.max_retained,
        ));
        let ctx = DispatchCtx {
            metrics: metrics.clone(),
            tasks: tasks.clone(),
        };
        let dispatchers = pools
            .pools()
            .iter()
            .map(|p| {
                let cap = p.config().queue_capacity.unwrap_or(config.queue.capacity);
                (
                    p.id().to_owned(),
                    Dispatcher::spawn(p.clone(), cap, config.queue.full_policy, ctx.clone()),
                )
            })
            .collect();
        Self {
            config: Arc::new(config),
            pools,
            dispatchers: Arc::new(dispatchers),
            tasks,
            metrics,
            prom: Arc::new(prom),
            shutting_down: Arc::new(AtomicBool::new(false)),
            auth,
            store: persist.store.clone(),
            persist,
        }
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The full router with middleware: correlation id (outermost), panic guard, auth.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/health", get(http::system::health))
        .route("/metrics", get(http::system::metrics))
        .route("/openapi.json", get(http::system::openapi))
        .route("/v1/capabilities", get(http::system::capabilities))
        .route("/v1/pools", get(http::system::pools))
        .route("/v1/pools/{id}/health", get(http::system::pool_health))
        .route("/v1/pools/{id}/drain", post(http::pools::drain))
        .route("/v1/pools/{id}/reload", post(http::pools::reload))
        .route("/v1/tasks", post(http::tasks::create))
        .route("/v1/tasks/{id}", get(http::tasks::get_task))
        .route("/v1/tasks/{id}/stream", get(http::tasks::stream))
        .route("/v1/tasks/{id}/cancel", post(http::tasks::cancel))
        .route("/v1/status", get(http::web::status))
        .route("/v1/status/stream", get(http::web::status_stream))
        .route("/v1/models", get(http::openai::models))
        .route("/v1/models/{id}", get(http::openai::model))
        .route("/v1/completions", post(http::openai::completions))
        .route("/v1/chat/completions", post(http::openai::chat_completions))
        .merge(http::state_routes(&state.config))
        .fallback(http::system::not_found)
        .method_not_allowed_fallback(http::system::method_not_allowed)
        .with_state(state.clone());
    api.layer(axum::middleware::from_fn_with_state(
        state.auth.clone(),
        require_token,
    ))
    // The status page and its assets hold no data: served without a token (the page asks
    // for it and sends it to the /v1 data endpoints).
    .merge(http::web::public_routes())
    .layer(axum::middleware::from_fn_with_state(
        state.auth.clone(),
        crate::auth::redact_errors,
    ))
    .layer(CatchPanicLayer::custom(http::system::panic_response))
    .layer(axum::middleware::from_fn(correlate))
}
