//! The daemon's shared state and router. Handlers get state explicitly (axum `State`); nothing
//! global.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use orch_config::Config;
use orch_pool_manager::PoolManager;
use prometheus_client::registry::Registry;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{require_token, Auth};
use crate::background::{Background, LoopDeps, Retention};
use crate::catalog::Catalog;
use crate::correlation::correlate;
use crate::dispatch::{DispatchCtx, Dispatcher};
use crate::http;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::pull::{PullService, PullSetup};
use crate::sessions::SessionAccounts;
use crate::task::TaskTable;
use crate::transcripts::Transcripts;

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
    /// The model catalog; every catalog write goes through it.
    pub catalog: Arc<Catalog>,
    /// Session admission, budgets, charges and expiry.
    pub sessions: Arc<SessionAccounts>,
    /// The outbound policy and its audit log.
    pub outbound: Arc<Outbound>,
    /// Transcript artifacts of finished tasks.
    pub transcripts: Arc<Transcripts>,
    /// Background loops and per-task follow-ups, stopped together at shutdown.
    pub background: Arc<Background>,
    /// Model pulls (`POST /v1/catalog/models` with a hub reference).
    pub pulls: Arc<PullService>,
    /// What the status page charts: recent throughput and queue samples.
    pub history: Arc<crate::status_history::StatusHistory>,
}

/// The store-backed services, opened before the pool manager starts: they resolve catalog ids
/// named as pool models and check engine endpoints against the outbound policy.
pub struct Services {
    store: Arc<orch_store::Store>,
    catalog: Arc<Catalog>,
    sessions: Arc<SessionAccounts>,
    outbound: Arc<Outbound>,
    transcripts: Arc<Transcripts>,
    retention: Retention,
    pulls: PullSetup,
}

impl Services {
    /// Opens the store in `cfg.data_dir()` and prepares `cfg` for the pool manager (catalog ids
    /// resolved to files, outbound checks, slot-save paths). `token` is redacted from
    /// everything written to artifacts.
    pub async fn open(cfg: &mut Config, token: Option<&str>) -> anyhow::Result<Self> {
        let dir = cfg.data_dir();
        let opts = orch_store::StoreOptions {
            max_artifact_bytes: cfg.artifacts.max_artifact_bytes,
            ..orch_store::StoreOptions::default()
        };
        let d = dir.clone();
        let store = tokio::task::spawn_blocking(move || orch_store::Store::open(&d, opts))
            .await?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the data directory {}: {e}; check that it is writable and not \
                     used by another orchestratord (set data_dir or LLORCH_DATA_DIR)",
                    dir.display()
                )
            })?;
        let rep = store.open_report();
        tracing::info!(data_dir = %dir.display(), schema_version = rep.schema_version,
            swept_temp_files = rep.swept_temp_files, swept_orphans = rep.swept_orphans, "store opened");
        let store = Arc::new(store);
        let catalog = Arc::new(Catalog::open(store.clone()).await?);
        let outbound = Arc::new(Outbound::new(cfg, store.clone())?);
        outbound.prepare_config(cfg, &catalog).await?;
        let pulls = PullSetup::from_env(&dir, outbound.clone())?;
        let day_ms = 86_400_000u64;
        Ok(Self {
            sessions: Arc::new(SessionAccounts::new(cfg, store.clone())),
            transcripts: Arc::new(Transcripts::new(store.clone(), catalog.clone(), token)),
            retention: Retention {
                max_bytes: Some(cfg.artifacts.max_bytes),
                max_age_ms: (cfg.artifacts.max_age_days > 0)
                    .then(|| cfg.artifacts.max_age_days.saturating_mul(day_ms)),
            },
            store,
            catalog,
            outbound,
            pulls,
        })
    }
}

impl AppState {
    /// Builds the state, starts one dispatcher per pool and the background loops.
    pub fn new(config: Config, pools: Arc<PoolManager>, auth: Auth, services: Services) -> Self {
        pools.set_unload_hook(services.sessions.kv_shelf());
        let metrics = Metrics::default();
        let mut prom = Registry::default();
        metrics.register(&mut prom);
        services.catalog.register_metrics(&mut prom);
        pools.metrics().register(&mut prom);
        let tasks = Arc::new(TaskTable::new(
            std::time::Duration::from_millis(config.tasks.retain_ms),
            config.tasks.max_retained,
        ));
        let ctx = DispatchCtx {
            metrics: metrics.clone(),
            tasks: tasks.clone(),
            rates: crate::forecast::RateMemory::new(
                Some(services.store.clone()),
                pools.gpus().into_iter().map(|g| (g.index, g.name)),
            ),
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
        let background = Arc::new(Background::default());
        let pulls = Arc::new(PullService::new(
            services.pulls,
            services.catalog.clone(),
            background.clone(),
        ));
        let me = Self {
            config: Arc::new(config),
            pools,
            dispatchers: Arc::new(dispatchers),
            tasks,
            metrics,
            prom: Arc::new(prom),
            shutting_down: Arc::new(AtomicBool::new(false)),
            auth,
            store: services.store.clone(),
            catalog: services.catalog,
            sessions: services.sessions,
            outbound: services.outbound,
            transcripts: services.transcripts,
            background,
            pulls,
            history: Arc::default(),
        };
        me.background.spawn_loops(LoopDeps {
            sessions: me.sessions.clone(),
            pools: me.pools.clone(),
            store: me.store.clone(),
            tasks: me.tasks.clone(),
            retention: services.retention,
        });
        me.background.spawn(crate::status_history::run(
            me.history.clone(),
            me.pools.clone(),
            me.tasks.clone(),
        ));
        me
    }

    /// Whether shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// The full router with middleware: correlation id (outermost), panic guard, token redaction
/// in error bodies, auth (not for the public status page), handler. Every route is declared
/// here, in one table.
pub fn router(state: AppState) -> Router {
    use http::{
        anthropic, artifacts, catalog, embeddings, openai, pools, responses, sessions, system,
        tasks, web,
    };
    let api = Router::new()
        .route("/health", get(system::health))
        .route("/metrics", get(system::metrics))
        .route("/openapi.json", get(system::openapi))
        .route("/v1/capabilities", get(system::capabilities))
        .route("/v1/pools", get(pools::list))
        .route("/v1/pools/{id}/health", get(pools::health))
        .route("/v1/pools/{id}/drain", post(pools::drain))
        .route("/v1/pools/{id}/reload", post(pools::reload))
        .route("/v1/pools/{id}/load", post(pools::load))
        .route("/v1/pools/{id}/unload", post(pools::unload))
        .route("/v1/tasks", post(tasks::create))
        .route("/v1/tasks/{id}", get(tasks::get_task))
        .route("/v1/tasks/{id}/stream", get(tasks::stream))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/status", get(web::status))
        .route("/v1/status/stream", get(web::status_stream))
        .route(
            "/v1/catalog/models",
            post(catalog::register).get(catalog::list),
        )
        .route(
            "/v1/catalog/models/{id}",
            get(catalog::get_model).delete(catalog::delete_model),
        )
        .route("/v1/catalog/models/{id}/verify", post(catalog::verify))
        .route("/v1/catalog/models/{id}/state", post(catalog::set_state))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_session).delete(sessions::evict),
        )
        .route(
            "/v1/artifacts",
            post(artifacts::create)
                .layer(DefaultBodyLimit::max(artifacts::body_limit(&state.config)))
                .get(artifacts::list),
        )
        .route("/v1/artifacts/{id}", get(artifacts::get_artifact))
        .route("/v1/artifacts/{id}/raw", get(artifacts::get_raw))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{id}", get(openai::model))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(embeddings::rerank))
        .route("/v1/reranking", post(embeddings::rerank))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/messages/count_tokens", post(anthropic::count_tokens))
        .route("/v1/responses", post(responses::create))
        .route("/v1/responses/input_tokens", post(responses::input_tokens))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .fallback(system::not_found)
        .method_not_allowed_fallback(system::method_not_allowed)
        // `http.max_body_bytes` (the OpenAI door reads its body itself, with the same limit).
        .layer(DefaultBodyLimit::max(
            usize::try_from(state.config.http.max_body_bytes).unwrap_or(usize::MAX),
        ))
        .with_state(state.clone())
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            require_token,
        ));
    // The status page and its assets hold no data: served without a token (the page asks
    // for it and sends it to the /v1 data endpoints).
    let public = Router::new()
        .route("/", get(web::index))
        .route("/ui/{file}", get(web::asset));
    let app = api
        .merge(public)
        .layer(axum::middleware::from_fn_with_state(
            state.auth.clone(),
            crate::auth::redact_errors,
        ))
        .layer(CatchPanicLayer::custom(system::panic_response));
    // CORS outside auth: preflights are answered without a token.
    let app = match http::cors::layer(&state.config) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(axum::middleware::from_fn(correlate))
}
