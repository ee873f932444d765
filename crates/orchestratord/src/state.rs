//! The daemon's shared state: what the handlers may touch, built once at start. The services
//! (admission, pool control, the status view) each hold only the pieces they use, as `Arc`s;
//! handlers get this state explicitly (axum `State`); nothing global.

use std::collections::HashMap;
use std::sync::Arc;

use orch_config::Config;
use orch_pool_manager::PoolManager;
use prometheus_client::registry::Registry;

use crate::admission::Admission;
use crate::auth::Auth;
use crate::background::{Background, LoopDeps, Retention};
use crate::catalog::Catalog;
use crate::dispatch::{DispatchCtx, Dispatcher};
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::pool_control::PoolControl;
use crate::pull::{PullService, PullSetup};
use crate::sessions::SessionAccounts;
use crate::shutdown::ShutdownFlag;
use crate::status::StatusView;
use crate::status_history::StatusHistory;
use crate::task::TaskTable;
use crate::transcripts::Transcripts;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    /// The configuration in force.
    pub config: Arc<Config>,
    /// Pools and engines.
    pub pools: Arc<PoolManager>,
    /// Metrics.
    pub metrics: Metrics,
    /// Prometheus registry holding `metrics` and the pool manager's series.
    pub prom: Arc<Registry>,
    /// Set once shutdown began (shared with the services, which refuse work from then on).
    pub shutting_down: ShutdownFlag,
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
    /// Background loops and per-task follow-ups, stopped together at shutdown.
    pub background: Arc<Background>,
    /// Model pulls (`POST /v1/catalog/models` with a hub reference).
    pub pulls: Arc<PullService>,
    /// Task admission and cancel.
    pub admission: Arc<Admission>,
    /// Drain, reload, load and unload of pools, and the drain at shutdown.
    pub pool_control: Arc<PoolControl>,
    /// The status page's snapshot.
    pub status: Arc<StatusView>,
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
        let dispatchers: Arc<HashMap<String, Dispatcher>> = Arc::new(
            pools
                .pools()
                .iter()
                .map(|p| {
                    let cap = p.config().queue_capacity.unwrap_or(config.queue.capacity);
                    (
                        p.id().to_owned(),
                        Dispatcher::spawn(p.clone(), cap, config.queue.full_policy, ctx.clone()),
                    )
                })
                .collect(),
        );
        let config = Arc::new(config);
        let shutting_down = ShutdownFlag::default();
        let background = Arc::new(Background::default());
        let history = Arc::new(StatusHistory::default());
        let pulls = Arc::new(PullService::new(
            services.pulls,
            services.catalog.clone(),
            background.clone(),
        ));
        let admission = Arc::new(Admission {
            config: config.clone(),
            pools: pools.clone(),
            dispatchers: dispatchers.clone(),
            tasks: tasks.clone(),
            metrics: metrics.clone(),
            shutting_down: shutting_down.clone(),
            catalog: services.catalog.clone(),
            sessions: services.sessions.clone(),
            transcripts: services.transcripts,
            background: background.clone(),
        });
        let pool_control = Arc::new(PoolControl {
            pools: pools.clone(),
            dispatchers,
            tasks: tasks.clone(),
            metrics: metrics.clone(),
            shutting_down: shutting_down.clone(),
            catalog: services.catalog.clone(),
            background: background.clone(),
        });
        let status = Arc::new(StatusView {
            pools: pools.clone(),
            tasks: tasks.clone(),
            history: history.clone(),
            shutting_down: shutting_down.clone(),
            default_queue_capacity: config.queue.capacity,
        });
        background.spawn_loops(LoopDeps {
            sessions: services.sessions.clone(),
            pools: pools.clone(),
            store: services.store.clone(),
            tasks: tasks.clone(),
            retention: services.retention,
        });
        background.spawn(crate::status_history::run(history, pools.clone(), tasks));
        Self {
            config,
            pools,
            metrics,
            prom: Arc::new(prom),
            shutting_down,
            auth,
            store: services.store,
            catalog: services.catalog,
            sessions: services.sessions,
            outbound: services.outbound,
            background,
            pulls,
            admission,
            pool_control,
            status,
        }
    }
}
