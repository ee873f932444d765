//! Persistent state wired into the daemon: the `orch-store` [`Store`] (catalog, sessions and
//! budgets, artifacts), the outbound [`Policy`] with its audit log, and the glue the task path
//! needs:
//!
//! - **Catalog routing**: a task's `model_ref` that names a catalog model routes to the pool
//!   whose model file is the model's reference; a Retired one is refused with `MODEL_RETIRED`.
//!   The catalog is mirrored in memory so routing never blocks on SQLite.
//! - **Sessions and budgets** ([`Persist::admit`]): checked *before* enqueue (turns, TTL, budget),
//!   then the turn is recorded. The task carries a [`SessionBinding`] (pinned replica and slot,
//!   budget left at admission) in [`TaskExt`], which the dispatcher reads.
//! - **After the terminal event** ([`Persist::track`]): a background task charges the session,
//!   pins it to the replica/slot the engine reported, updates KV bytes and warmth, then writes the
//!   task's `transcript` artifact (all SQLite/file work in `spawn_blocking`).
//! - **Background loops**: session expiry (frees the engine slot) and artifact GC.
//! - **Startup checks**: engine endpoints off loopback and model URLs pass [`Policy::enforce`]
//!   (audit log `<data_dir>/audit.jsonl`); pools naming a catalog id get its file path.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{Duration, Instant};

use api_types::{ErrorCode, ErrorEnvelope, TaskRequest};
use axum::http::{HeaderMap, HeaderValue};
use futures::StreamExt;
use orch_config::Config;
use orch_store::policy::{ACTION_ENGINE_ENDPOINT, ACTION_MODEL_DOWNLOAD};
use orch_store::{
    ArtifactInput, ArtifactKind, BudgetError, CatalogModel, ModelState, Policy, SessionError,
    Store, StoreError, StoreOptions,
};
use pool_manager::PoolManager;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use worker_adapters::Completion;

use crate::error::ApiError;
use crate::task::{now_ms, Frame, Task};

/// How often expired sessions are swept.
const EXPIRY_EVERY: Duration = Duration::from_millis(500);
/// How often artifact retention runs (also shortly after every artifact write).
const GC_EVERY: Duration = Duration::from_secs(60);
/// How long an expired session id answers `SESSION_EXPIRED` before it may start afresh.
const TOMBSTONE_MS: u64 = 600_000;
/// How long admission waits for earlier, already finished tasks of the same session to be
/// charged (normally a few milliseconds).
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// Run blocking store work off the async threads; a panic or cancellation is a 500.
pub async fn blocking<T, F>(f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("a storage task failed: {e}; the daemon logged details"),
        )
    })?
}

/// The HTTP error for a store error (status from [`StoreError::http_status`]).
pub fn store_err(e: StoreError) -> ApiError {
    let code = match &e {
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::Conflict(_) => ErrorCode::Conflict,
        StoreError::Invalid(_) => ErrorCode::InvalidParams,
        StoreError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        StoreError::Corrupt { .. } | StoreError::Io { .. } | StoreError::Db { .. } => {
            tracing::error!(error = %e, "storage error");
            ErrorCode::Internal
        }
    };
    ApiError::new(code, e.to_string())
}

/// `model_state{model_id,state}` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelStateLabels {
    /// Catalog id.
    pub model_id: String,
    /// `Active` or `Retired`.
    pub state: String,
}

/// A task's binding to its session, fixed at admission.
#[derive(Debug, Clone, Default)]
pub struct SessionBinding {
    /// The session.
    pub session_id: String,
    /// Replica and engine slot holding the session's KV (from its last finished task).
    pub pin: Option<(String, u32)>,
    /// Budget left at admission (after what running tasks of the session reserved).
    pub remaining: Option<api_types::BudgetRemaining>,
    /// Tokens this task reserves against the budget until it is charged.
    pub reserved_tokens: u64,
}

/// What the engine reported when a task finished.
#[derive(Debug, Clone, Default)]
pub struct EngineOutcome {
    /// Replica that ran the task.
    pub replica_id: String,
    /// Engine build.
    pub engine_version: String,
    /// Engine slot that served it.
    pub slot: Option<u32>,
    /// Prompt tokens evaluated (not reused from cache).
    pub tokens_in: Option<u64>,
    /// Tokens held in the slot's cache after the task (prompt + generated).
    pub tokens_cached: Option<u64>,
    /// Tokens generated.
    pub tokens_out: Option<u64>,
}

impl EngineOutcome {
    /// Share of the prompt reused from the slot's cache: the prompt's length is what the slot
    /// holds minus what was generated (`tokens_cached - tokens_out`), the reused part is that
    /// minus what was evaluated (`tokens_in`). 0 cold .. 1 fully reused.
    pub fn kv_warmth(&self) -> Option<f64> {
        let cached = self.tokens_cached?;
        let evaluated = self.tokens_in?;
        let prompt = cached.saturating_sub(self.tokens_out.unwrap_or(0));
        if prompt == 0 {
            return Some(0.0);
        }
        let reused = prompt.saturating_sub(evaluated);
        Some((reused as f64 / prompt as f64).clamp(0.0, 1.0))
    }
}

/// Per-task state of the persistence layer, kept on [`Task`].
#[derive(Debug, Default)]
pub struct TaskExt {
    session: OnceLock<SessionBinding>,
    outcome: Mutex<Option<EngineOutcome>>,
    transcript: OnceLock<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TaskExt {
    /// Binds the task to its session (once, before enqueue).
    pub fn bind_session(&self, b: SessionBinding) {
        let _ = self.session.set(b);
    }

    /// The session binding, if the task belongs to a session.
    pub fn session(&self) -> Option<&SessionBinding> {
        self.session.get()
    }

    /// The replica the task's session is pinned to (dispatch prefers it).
    pub fn pinned_replica(&self) -> Option<&str> {
        self.session()
            .and_then(|b| b.pin.as_ref())
            .map(|(r, _)| r.as_str())
    }

    /// The engine slot to request on `replica_id`: the session's slot when the task runs on
    /// the pinned replica, else none (the engine chooses).
    pub fn slot_for(&self, replica_id: &str) -> Option<u32> {
        self.session()
            .and_then(|b| b.pin.as_ref())
            .filter(|(r, _)| r == replica_id)
            .map(|(_, s)| *s)
    }

    /// Records the engine's final accounting (called by the runner before the `end` event).
    pub fn record_outcome(&self, replica_id: &str, engine_version: &str, c: &Completion) {
        *lock(&self.outcome) = Some(EngineOutcome {
            replica_id: replica_id.to_owned(),
            engine_version: engine_version.to_owned(),
            slot: c.slot,
            tokens_in: c.tokens_in,
            tokens_cached: c.tokens_cached,
            tokens_out: c.tokens_out,
        });
    }

    /// The engine's final accounting, once the task completed.
    pub fn outcome(&self) -> Option<EngineOutcome> {
        lock(&self.outcome).clone()
    }

    /// Id of the task's transcript artifact, once written.
    pub fn transcript_artifact(&self) -> Option<String> {
        self.transcript.get().cloned()
    }
}

/// The optional fields of a `metrics` frame that come from sessions and the engine's cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveMetrics {
    /// KV warmth of the finished task.
    pub kv_warmth: Option<f64>,
    /// Session tokens left.
    pub tokens: Option<u64>,
    /// Session engine milliseconds left.
    pub time_ms: Option<u64>,
    /// Session cost left.
    pub cost: Option<f64>,
}

/// The cost of a task in the unit budgets use: kilotokens processed (prompt tokens evaluated
/// plus tokens generated, divided by 1000).
pub fn task_cost(tokens_in: u64, tokens_out: u64) -> f64 {
    (tokens_in.saturating_add(tokens_out)) as f64 / 1000.0
}

/// Budget left and warmth for a `metrics` frame of `task` after `tokens_out` tokens.
pub fn live_metrics(task: &Task, tokens_out: u64) -> LiveMetrics {
    let outcome = task.ext.outcome();
    let kv_warmth = outcome.as_ref().and_then(EngineOutcome::kv_warmth);
    let Some(rem) = task.ext.session().and_then(|b| b.remaining) else {
        return LiveMetrics {
            kv_warmth,
            ..LiveMetrics::default()
        };
    };
    let running_ms = task
        .status()
        .started_ms
        .map(|s| now_ms().saturating_sub(s))
        .unwrap_or(0);
    let tokens_in = outcome.as_ref().and_then(|o| o.tokens_in).unwrap_or(0);
    LiveMetrics {
        kv_warmth,
        tokens: rem.tokens.map(|t| t.saturating_sub(tokens_out)),
        time_ms: rem.time_ms.map(|t| t.saturating_sub(running_ms)),
        cost: rem
            .cost
            .map(|c| (c - task_cost(tokens_in, tokens_out)).max(0.0)),
    }
}

/// `X-Budget-*` headers for a remaining budget (only the limited dimensions).
pub fn budget_headers(rem: &api_types::BudgetRemaining, h: &mut HeaderMap) {
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    if let Some(t) = rem.tokens {
        put("x-budget-tokens-remaining", t.to_string());
    }
    if let Some(t) = rem.time_ms {
        put("x-budget-time-remaining-ms", t.to_string());
    }
    if let Some(c) = rem.cost {
        put("x-budget-cost-remaining", format!("{c}"));
    }
}

fn to_api_remaining(r: orch_store::BudgetRemaining) -> api_types::BudgetRemaining {
    api_types::BudgetRemaining {
        tokens: r.tokens,
        time_ms: r.time_ms,
        cost: r.cost,
    }
}

fn to_store_budget(b: &api_types::BudgetSpec) -> orch_store::Budget {
    orch_store::Budget {
        tokens: b.tokens,
        time_ms: b.time_ms,
        cost: b.cost,
    }
}

/// Tasks of one session admitted but not yet charged.
#[derive(Default)]
struct Ledger {
    tasks: Vec<(Arc<Task>, u64)>,
}

/// Persistent state and its in-memory companions. Shared as `Arc<Persist>` in `AppState`.
pub struct Persist {
    /// The store (SQLite + artifact tree + audit log) in the data directory.
    pub store: Arc<Store>,
    policy: Policy,
    secrets: Vec<String>,
    session_ttl_ms: u64,
    session_max_turns: u32,
    gc_max_bytes: Option<u64>,
    gc_max_age_ms: Option<u64>,
    catalog: RwLock<BTreeMap<String, CatalogModel>>,
    ledger: Mutex<HashMap<String, Ledger>>,
    warmth: Mutex<HashMap<String, f64>>,
    tombstones: Mutex<HashMap<String, u64>>,
    /// KV bytes per token by model file.
    kv_per_token: Mutex<HashMap<String, Option<u64>>>,
    gc_now: Notify,
    inflight: AtomicUsize,
    /// `model_state{model_id,state}`: 1 for a model's current state, 0 for the other.
    pub model_state: Family<ModelStateLabels, Gauge>,
}

impl std::fmt::Debug for Persist {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persist")
            .field("data_dir", &self.store.data_dir())
            .finish_non_exhaustive()
    }
}

/// Why the blocking part of session admission refused a task (boxed: keeps results small).
enum Refusal {
    /// The session had expired; `touch` removed it, its slot still has to be freed.
    Expired(Box<orch_store::Session>, Box<ApiError>),
    /// Any other refusal.
    Refused(Box<ApiError>),
}

impl Refusal {
    fn refused(e: ApiError) -> Self {
        Refusal::Refused(Box::new(e))
    }
}

/// Why admission refused a session turn.
fn session_refusal(e: SessionError) -> ApiError {
    match e {
        SessionError::TurnsExhausted { id, max_turns } => ApiError::new(
            ErrorCode::SessionTurnsExhausted,
            format!(
                "session '{id}' has used all {max_turns} turns (sessions.max_turns); start a new \
                 session with another session_id, or DELETE /v1/sessions/{id} and reuse the id"
            ),
        ),
        SessionError::Expired {
            session,
            expired_ms_ago,
        } => expired_error(&session.id, session.ttl_ms, Some(expired_ms_ago)),
        SessionError::Store(e) => store_err(e),
    }
}

fn expired_error(id: &str, ttl_ms: u64, ago: Option<u64>) -> ApiError {
    let ago = ago.map(|a| format!(" {a} ms ago")).unwrap_or_default();
    ApiError::new(
        ErrorCode::SessionExpired,
        format!(
            "session '{id}' expired{ago} (idle longer than its TTL of {ttl_ms} ms) and its KV \
             cache was freed; resubmit to start a new session with this id (the conversation \
             prefix will be evaluated again)"
        ),
    )
}

fn budget_refusal(
    remaining: &orch_store::BudgetRemaining,
    reason: &str,
    max_tokens: u32,
) -> ApiError {
    let mut left = Vec::new();
    if let Some(t) = remaining.tokens {
        left.push(format!("tokens {t}"));
    }
    if let Some(t) = remaining.time_ms {
        left.push(format!("time_ms {t}"));
    }
    if let Some(c) = remaining.cost {
        left.push(format!("cost {c}"));
    }
    let hint = match remaining.tokens {
        Some(t) if t > 0 && u64::from(max_tokens) > t => {
            format!("lower max_tokens to at most {t}, or start a new session with a larger budget")
        }
        _ => "start a new session with a larger budget".to_owned(),
    };
    ApiError::new(
        ErrorCode::BudgetExceeded,
        format!(
            "budget exceeded: {reason}; remaining: {}; {hint}",
            if left.is_empty() {
                "nothing".to_owned()
            } else {
                left.join(", ")
            }
        ),
    )
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_remote_ref(r: &str) -> bool {
    let l = r.get(..8).unwrap_or(r).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

/// The local file a catalog reference names (`/abs/path` or `file://`).
fn local_path(reference: &str) -> Option<PathBuf> {
    if reference.to_ascii_lowercase().starts_with("file://") {
        return url::Url::parse(reference).ok()?.to_file_path().ok();
    }
    if is_remote_ref(reference) {
        return None;
    }
    Some(PathBuf::from(reference))
}

impl Persist {
    /// Opens the store in `cfg.data_dir()` and builds the outbound policy. `token` is redacted
    /// from everything written to artifacts.
    pub async fn open(cfg: &Config, token: Option<&str>) -> anyhow::Result<Arc<Self>> {
        let dir = cfg.data_dir();
        let opts = StoreOptions {
            max_artifact_bytes: cfg.artifacts.max_artifact_bytes,
        };
        let d = dir.clone();
        let store = tokio::task::spawn_blocking(move || Store::open(&d, opts))
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
        let out = &cfg.policy.outbound;
        let policy = Policy::new(out.allow.clone(), out.deny.clone(), out.no_downloads)
            .map_err(|e| anyhow::anyhow!("policy.outbound: {e}"))?;
        let store = Arc::new(store);
        let s = store.clone();
        let models = tokio::task::spawn_blocking(move || s.catalog().list())
            .await?
            .map_err(|e| anyhow::anyhow!("reading the model catalog: {e}"))?;
        let day_ms = 86_400_000u64;
        let me = Self {
            store,
            policy,
            secrets: token.into_iter().map(str::to_owned).collect(),
            session_ttl_ms: cfg.sessions.ttl_ms,
            session_max_turns: cfg.sessions.max_turns,
            gc_max_bytes: Some(cfg.artifacts.max_bytes),
            gc_max_age_ms: (cfg.artifacts.max_age_days > 0)
                .then(|| cfg.artifacts.max_age_days.saturating_mul(day_ms)),
            catalog: RwLock::new(BTreeMap::new()),
            ledger: Mutex::new(HashMap::new()),
            warmth: Mutex::new(HashMap::new()),
            tombstones: Mutex::new(HashMap::new()),
            kv_per_token: Mutex::new(HashMap::new()),
            gc_now: Notify::new(),
            inflight: AtomicUsize::new(0),
            model_state: Family::default(),
        };
        for m in models {
            me.cache_model(m);
        }
        Ok(Arc::new(me))
    }

    /// Adds `model_state` to the Prometheus registry.
    pub fn register_metrics(&self, reg: &mut Registry) {
        reg.register(
            "model_state",
            "Catalog models by lifecycle state (1 = the model's current state)",
            self.model_state.clone(),
        );
    }

    /// The outbound policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn set_gauge(&self, id: &str, state: Option<ModelState>) {
        for s in [ModelState::Active, ModelState::Retired] {
            let labels = ModelStateLabels {
                model_id: id.to_owned(),
                state: s.as_str().to_owned(),
            };
            match state {
                Some(cur) => {
                    self.model_state
                        .get_or_create(&labels)
                        .set(i64::from(cur == s));
                }
                None => {
                    self.model_state.remove(&labels);
                }
            }
        }
    }

    /// Mirrors a catalog model in memory and in the gauge.
    pub fn cache_model(&self, m: CatalogModel) {
        self.set_gauge(&m.id, Some(m.state));
        self.catalog
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(m.id.clone(), m);
    }

    /// Forgets a deleted catalog model.
    pub fn uncache_model(&self, id: &str) {
        self.set_gauge(id, None);
        self.catalog
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// A catalog model from the in-memory mirror.
    pub fn cached_model(&self, id: &str) -> Option<CatalogModel> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn cached_models(&self) -> Vec<CatalogModel> {
        self.catalog
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Pools whose configured model is the file `reference` names.
    pub fn served_by(pools: &PoolManager, reference: &str) -> Vec<String> {
        let Some(path) = local_path(reference) else {
            return Vec::new();
        };
        pools
            .pools()
            .iter()
            .filter(|p| {
                p.config()
                    .model
                    .as_deref()
                    .is_some_and(|m| std::path::Path::new(m) == path)
            })
            .map(|p| p.id().to_owned())
            .collect()
    }

    /// Resolves a task's `model_ref` against the catalog: `Ok(None)` when it is no catalog id,
    /// `Ok(Some(path))` (the model file, to route on) for an Active model, 409 `MODEL_RETIRED`
    /// naming an Active alternative for a Retired one.
    pub fn catalog_route(
        &self,
        model_ref: &str,
        pools: &PoolManager,
    ) -> Result<Option<String>, ApiError> {
        let Some(m) = self.cached_model(model_ref) else {
            return Ok(None);
        };
        if m.state == ModelState::Active {
            return Ok(Some(
                local_path(&m.reference)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or(m.reference),
            ));
        }
        // Prefer alternatives a pool serves, that did not fail verification, of the same file.
        let mut alts: Vec<(bool, bool, bool, String, Vec<String>)> = self
            .cached_models()
            .into_iter()
            .filter(|a| a.state == ModelState::Active)
            .map(|a| {
                let served = Self::served_by(pools, &a.reference);
                let failed = a.last_verified.as_ref().is_some_and(|v| !v.ok);
                (
                    served.is_empty(),
                    failed,
                    a.reference != m.reference,
                    a.id,
                    served,
                )
            })
            .collect();
        alts.sort();
        let msg = match alts.first() {
            Some((_, _, _, id, served)) => {
                let by = if served.is_empty() {
                    " (Active; no pool serves it yet)".to_owned()
                } else {
                    format!(" (Active, served by pool {})", served.join(", "))
                };
                format!(
                    "catalog model `{model_ref}` is Retired; use `{id}` instead{by}, or set it \
                     Active again with POST /v1/catalog/models/{model_ref}/state {{\"state\":\"Active\"}}"
                )
            }
            None => format!(
                "catalog model `{model_ref}` is Retired and no Active model is registered; set \
                 it Active again with POST /v1/catalog/models/{model_ref}/state \
                 {{\"state\":\"Active\"}} or register another model"
            ),
        };
        Err(ApiError::new(ErrorCode::ModelRetired, msg))
    }

    /// Checks every outbound action the configuration implies, before anything is started:
    /// engine endpoints off loopback pass the policy (`engine_endpoint`), and pools whose
    /// `model` is a catalog id get the model's local path (a URL reference passes the policy as
    /// `model_download`, then is refused: the daemon does not download models).
    pub async fn prepare_config(&self, cfg: &mut Config) -> anyhow::Result<()> {
        for p in &cfg.pools {
            let Some(ep) = &p.endpoint else { continue };
            let host = url::Url::parse(ep)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
                .unwrap_or_default();
            if is_loopback_host(&host) {
                continue;
            }
            let d = self
                .enforce(ep, ACTION_ENGINE_ENDPOINT)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot record the outbound decision for pool `{}`: {}",
                        p.id,
                        e.body.message
                    )
                })?;
            if !d.allowed {
                anyhow::bail!(
                    "pool `{}`: {}; allow it in policy.outbound.allow (and keep it out of \
                     policy.outbound.deny) or remove the pool",
                    p.id,
                    d.reason
                );
            }
        }
        for i in 0..cfg.pools.len() {
            let Some(model) = cfg.pools[i].model.clone() else {
                continue;
            };
            if std::path::Path::new(&model).exists() {
                continue;
            }
            let Some(m) = self.cached_model(&model) else {
                continue;
            };
            let pool_id = cfg.pools[i].id.clone();
            if is_remote_ref(&m.reference) {
                let d = self
                    .enforce(&m.reference, ACTION_MODEL_DOWNLOAD)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", e.body.message))?;
                if !d.allowed {
                    anyhow::bail!(
                        "pool `{pool_id}` names catalog model `{model}`: {}",
                        d.reason
                    );
                }
                anyhow::bail!(
                    "pool `{pool_id}` names catalog model `{model}`, whose reference is the URL {}; \
                     the daemon does not download models: download the file, register its local \
                     path (POST /v1/catalog/models), and restart",
                    orch_store::redact_url(&m.reference)
                );
            }
            let Some(path) = local_path(&m.reference) else {
                anyhow::bail!("pool `{pool_id}`: catalog model `{model}` has no usable local path");
            };
            if m.state == ModelState::Retired {
                tracing::warn!(pool_id = %pool_id, model_id = %model, "pool serves a Retired catalog model; tasks naming the catalog id get MODEL_RETIRED");
            }
            tracing::info!(pool_id = %pool_id, model_id = %model, path = %path.display(), "pool model resolved from the catalog");
            cfg.pools[i].model = Some(path.to_string_lossy().into_owned());
        }
        // llama-server refuses slot actions (erase, which frees a session's KV) unless it was
        // started with --slot-save-path; give launched llama.cpp pools one in the data dir.
        let slots_dir = self.store.data_dir().join("slots");
        for p in cfg
            .pools
            .iter_mut()
            .filter(|p| p.endpoint.is_none() && p.engine == orch_config::EngineKind::Llamacpp)
        {
            if !p.flags.iter().any(|f| f.starts_with("--slot-save-path")) {
                std::fs::create_dir_all(&slots_dir)
                    .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", slots_dir.display()))?;
                p.flags.push("--slot-save-path".into());
                p.flags.push(slots_dir.to_string_lossy().into_owned());
            }
        }
        Ok(())
    }

    /// [`Policy::enforce`] with the audit log, off the async threads (the audit line is fsynced).
    pub async fn enforce(
        &self,
        url: &str,
        action: &'static str,
    ) -> Result<orch_store::Decision, ApiError> {
        let store = self.store.clone();
        let policy = self.policy.clone();
        let url = url.to_owned();
        blocking(move || {
            policy
                .enforce(store.audit(), &url, action, now_ms())
                .map_err(store_err)
        })
        .await
    }

    /// Whether a task of `sid` was admitted and has not been charged yet.
    fn in_flight(&self, sid: &str) -> bool {
        lock(&self.ledger)
            .get(sid)
            .is_some_and(|l| !l.tasks.is_empty())
    }

    fn reserved(&self, sid: &str) -> u64 {
        lock(&self.ledger)
            .get(sid)
            .map(|l| l.tasks.iter().map(|(_, r)| *r).sum())
            .unwrap_or(0)
    }

    /// Waits (a few ms normally, at most 3 s) until the tasks of `sid` that already ended have
    /// been charged and pinned, so admission and `GET /v1/sessions/{id}` see their effects.
    pub async fn wait_settled(&self, sid: &str) {
        let deadline = Instant::now() + SETTLE_WAIT;
        loop {
            let pending = lock(&self.ledger)
                .get(sid)
                .is_some_and(|l| l.tasks.iter().any(|(t, _)| t.state().is_terminal()));
            if !pending || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Session admission for `req`, before it is enqueued. Without `session_id`: nothing
    /// (a `budget` then is 400). With one: refuses an expired session (409
    /// `SESSION_EXPIRED`), an exhausted one (409 `SESSION_TURNS_EXHAUSTED`) and a task over
    /// budget (429 `BUDGET_EXCEEDED`), then records the turn (creating the session with the
    /// configured TTL and turn limit and the request's `budget` on first use).
    pub async fn admit(
        self: &Arc<Self>,
        req: &TaskRequest,
        pools: &Arc<PoolManager>,
    ) -> Result<Option<SessionBinding>, ApiError> {
        let Some(sid) = req.session_id.clone() else {
            if req.budget.is_some() {
                return Err(ApiError::invalid(
                    "`budget` applies to a session; add a `session_id` (the first task of a \
                     session sets its budget)",
                ));
            }
            return Ok(None);
        };
        if let Some(b) = &req.budget {
            if b.cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
                return Err(ApiError::invalid(
                    "budget.cost must be a finite number >= 0",
                ));
            }
        }
        self.wait_settled(&sid).await;
        let tomb = lock(&self.tombstones).remove(&sid);
        if tomb.is_some() {
            return Err(expired_error(&sid, self.session_ttl_ms, None));
        }
        let reserved_others = self.reserved(&sid);
        let busy = self.in_flight(&sid);
        let store = self.store.clone();
        let (ttl, max_turns) = (self.session_ttl_ms, self.session_max_turns);
        let budget = req.budget;
        let max_tokens = req.max_tokens;
        let sid2 = sid.clone();
        let result = tokio::task::spawn_blocking(move || {
            let sessions = store.sessions();
            let now = now_ms();
            if busy {
                // A task of the session still runs: the session is in use, not idle.
                let _ = sessions.refresh(&sid2, now);
            }
            let existing = match sessions.get(&sid2, now) {
                Ok(s) => Some(s),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(Refusal::refused(store_err(e))),
            };
            let need = u64::from(max_tokens).saturating_add(reserved_others);
            match existing {
                Some(s) => {
                    if s.turns >= s.max_turns {
                        return Err(Refusal::refused(session_refusal(
                            SessionError::TurnsExhausted {
                                id: s.id,
                                max_turns: s.max_turns,
                            },
                        )));
                    }
                    if let Some(b) = &budget {
                        if Some(to_store_budget(b)) != s.budget {
                            return Err(Refusal::refused(ApiError::invalid(format!(
                                "session '{sid2}' already exists and its budget is fixed at \
                                 creation; omit `budget` on later tasks, or DELETE \
                                 /v1/sessions/{sid2} and start over"
                            ))));
                        }
                    }
                    let remaining = match sessions.check_budget(&sid2, need) {
                        Ok(r) => r,
                        Err(BudgetError::Exceeded { remaining, reason }) => {
                            return Err(Refusal::refused(budget_refusal(
                                &remaining, &reason, max_tokens,
                            )))
                        }
                        Err(BudgetError::Store(e)) => return Err(Refusal::refused(store_err(e))),
                    };
                    let s2 = sessions
                        .touch(&sid2, now, ttl, max_turns)
                        .map_err(|e| Refusal::Refused(Box::new(session_refusal(e))))?;
                    let has_budget = s2.budget.is_some();
                    Ok((s2, has_budget.then_some(remaining)))
                }
                None => {
                    if let Some(b) = &budget {
                        let rem = orch_store::BudgetRemaining {
                            tokens: b.tokens,
                            time_ms: b.time_ms,
                            cost: b.cost,
                        };
                        let mut why = Vec::new();
                        if b.tokens.is_some_and(|t| u64::from(max_tokens) > t) {
                            why.push(format!(
                                "tokens: the task's max_tokens {max_tokens} exceeds the whole \
                                 budget of {}",
                                b.tokens.unwrap_or(0)
                            ));
                        }
                        if b.time_ms == Some(0) {
                            why.push("time: the budget is 0 ms".to_owned());
                        }
                        if b.cost.is_some_and(|c| c <= 0.0) {
                            why.push("cost: the budget is 0".to_owned());
                        }
                        if !why.is_empty() {
                            return Err(Refusal::refused(budget_refusal(
                                &rem,
                                &format!("new session '{sid2}': {}", why.join("; ")),
                                max_tokens,
                            )));
                        }
                    }
                    let s = match sessions.touch(&sid2, now, ttl, max_turns) {
                        Ok(s) => s,
                        Err(SessionError::Expired {
                            session,
                            expired_ms_ago,
                        }) => {
                            // Removed by touch: free its slot, then report the expiry.
                            let err =
                                expired_error(&session.id, session.ttl_ms, Some(expired_ms_ago));
                            return Err(Refusal::Expired(session, Box::new(err)));
                        }
                        Err(e) => return Err(Refusal::refused(session_refusal(e))),
                    };
                    let s = match &budget {
                        Some(b) => sessions
                            .set_budget(&sid2, Some(to_store_budget(b)))
                            .map_err(|e| Refusal::Refused(Box::new(store_err(e))))?,
                        None => s,
                    };
                    let rem = s.budget_remaining();
                    Ok((s, rem))
                }
            }
        })
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("a storage task failed: {e}")))?;
        let (session, remaining) = match result {
            Ok(v) => v,
            Err(Refusal::Expired(expired, err)) => {
                self.free_slot(pools, &expired).await;
                lock(&self.warmth).remove(&expired.id);
                return Err(*err);
            }
            Err(Refusal::Refused(e)) => return Err(*e),
        };
        let remaining = remaining.map(|r| {
            let mut r = to_api_remaining(r);
            r.tokens = r.tokens.map(|t| t.saturating_sub(reserved_others));
            r
        });
        Ok(Some(SessionBinding {
            session_id: sid,
            pin: session.replica_id.zip(session.slot),
            remaining,
            reserved_tokens: if remaining.is_some_and(|r| r.tokens.is_some()) {
                u64::from(max_tokens)
            } else {
                0
            },
        }))
    }

    /// Gives back the session turn [`Persist::admit`] counted for a task the queue then
    /// refused, so a full queue (429) does not use up a session's turns.
    pub async fn refund_turn(&self, task: &Task) {
        let Some(sid) = task.ext.session().map(|b| b.session_id.clone()) else {
            return;
        };
        let store = self.store.clone();
        let r = blocking(move || store.sessions().refund_turn(&sid).map_err(store_err)).await;
        if let Err(e) = r {
            tracing::warn!(task_id = %task.id, error = %e.body.message, "could not refund a session turn");
        }
    }

    /// Follows an admitted task to its end, then (in the background): charges its session,
    /// pins the session to the replica/slot the engine reported, and writes the task's
    /// `transcript` artifact, which `GET /v1/tasks/{id}` then links.
    pub fn track(self: &Arc<Self>, pools: &Arc<PoolManager>, task: &Arc<Task>) {
        if let Some(b) = task.ext.session() {
            lock(&self.ledger)
                .entry(b.session_id.clone())
                .or_default()
                .tasks
                .push((task.clone(), b.reserved_tokens));
        }
        self.inflight.fetch_add(1, Ordering::SeqCst);
        let me = self.clone();
        let pools = pools.clone();
        let task = task.clone();
        tokio::spawn(async move {
            let frames: Vec<Arc<Frame>> = task.clone().follow().collect().await;
            me.settle(&pools, &task).await;
            me.write_transcript(&pools, &task, &frames).await;
            me.inflight.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Waits (at most `max`) for background work on finished tasks (charges, transcripts).
    pub async fn flush(&self, max: Duration) {
        let deadline = Instant::now() + max;
        while self.inflight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn release(&self, sid: &str, task_id: &str) {
        let mut g = lock(&self.ledger);
        if let Some(l) = g.get_mut(sid) {
            l.tasks.retain(|(t, _)| t.id != task_id);
            if l.tasks.is_empty() {
                g.remove(sid);
            }
        }
    }

    /// KV bytes per context token of the model `pool_id` serves now (cached per model file).
    async fn kv_bytes_per_token(&self, pools: &PoolManager, pool_id: &str) -> Option<u64> {
        let path = pools.pool(pool_id)?.config().model.clone()?;
        if let Some(v) = lock(&self.kv_per_token).get(&path) {
            return *v;
        }
        let p = path.clone();
        let v = tokio::task::spawn_blocking(move || {
            pool_manager::gguf::kv_bytes_per_token(std::path::Path::new(&p))
        })
        .await
        .ok()
        .flatten();
        lock(&self.kv_per_token).insert(path, v);
        v
    }

    async fn settle(&self, pools: &PoolManager, task: &Arc<Task>) {
        let Some(b) = task.ext.session() else { return };
        let sid = b.session_id.clone();
        let outcome = task.ext.outcome();
        let st = task.status();
        let tokens_out = outcome
            .as_ref()
            .and_then(|o| o.tokens_out)
            .unwrap_or(st.tokens_out);
        let tokens_in = outcome.as_ref().and_then(|o| o.tokens_in).unwrap_or(0);
        let time_ms = match (st.started_ms, st.finished_ms) {
            (Some(s), Some(f)) => f.saturating_sub(s),
            _ => 0,
        };
        let cost = task_cost(tokens_in, tokens_out);
        let per_token = match &outcome {
            Some(_) => self.kv_bytes_per_token(pools, &task.pool_id).await,
            None => None,
        };
        if let Some(w) = outcome.as_ref().and_then(EngineOutcome::kv_warmth) {
            lock(&self.warmth).insert(sid.clone(), w);
        }
        let store = self.store.clone();
        let sid2 = sid.clone();
        let r = blocking(move || {
            let sessions = store.sessions();
            let s = match sessions.charge(&sid2, tokens_out, time_ms, cost) {
                Ok(s) => s,
                // Evicted or expired meanwhile: nothing to charge.
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_err(e)),
            };
            // The idle TTL counts from the end of the session's last task.
            sessions.refresh(&sid2, now_ms()).map_err(store_err)?;
            if let Some(o) = &outcome {
                if let Some(slot) = o.slot {
                    sessions
                        .set_pin(&sid2, Some(&o.replica_id), Some(slot))
                        .map_err(store_err)?;
                }
                if let (Some(per), Some(held)) = (per_token, o.tokens_cached) {
                    let target = held.saturating_mul(per);
                    if target > s.kv_bytes {
                        sessions
                            .add_kv_bytes(&sid2, target - s.kv_bytes)
                            .map_err(store_err)?;
                    }
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(session_id = %sid, task_id = %task.id, error = %e.body.message, "charging the session failed");
        }
        self.release(&sid, &task.id);
    }

    fn redact(&self, s: &str) -> String {
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        orch_store::redact_text(s, &secrets)
    }

    async fn write_transcript(&self, pools: &PoolManager, task: &Arc<Task>, frames: &[Arc<Frame>]) {
        let st = task.status();
        let events: Vec<serde_json::Value> = frames
            .iter()
            .map(|f| {
                serde_json::json!({
                    "event": f.name,
                    "data": serde_json::from_str::<serde_json::Value>(&f.data)
                        .unwrap_or_else(|_| serde_json::Value::String(f.data.clone())),
                })
            })
            .collect();
        let started = events
            .iter()
            .find(|e| e["event"] == "started")
            .map(|e| e["data"].clone());
        let end = events
            .iter()
            .find(|e| e["event"] == "end")
            .map(|e| e["data"].clone());
        let outcome = task.ext.outcome();
        let pool = pools.pool(&task.pool_id);
        let engine_version = outcome
            .as_ref()
            .map(|o| o.engine_version.clone())
            .or_else(|| {
                started
                    .as_ref()
                    .and_then(|s| s["engine_version"].as_str().map(str::to_owned))
            })
            .or_else(|| pool.map(|p| p.engine_version()))
            .unwrap_or_else(|| "unknown".into());
        let model_path = pool.and_then(|p| p.config().model.clone());
        let catalog = model_path.as_deref().and_then(|path| {
            self.cached_models()
                .into_iter()
                .find(|m| local_path(&m.reference).is_some_and(|p| p == std::path::Path::new(path)))
        });
        let digest = catalog.as_ref().and_then(|m| {
            m.digest.clone().or_else(|| {
                m.last_verified
                    .as_ref()
                    .filter(|v| v.ok)
                    .map(|v| v.computed_digest.clone())
            })
        });
        let request = serde_json::to_string(&task.req)
            .ok()
            .map(|s| self.redact(&s))
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .unwrap_or(serde_json::Value::Null);
        let doc = serde_json::json!({
            "format": "llama-orch.transcript.v1",
            "task_id": task.id,
            "correlation_id": task.correlation_id,
            "session_id": task.req.session_id,
            "state": st.state,
            "pool_id": task.pool_id,
            "replica_id": st.replica_id,
            "engine": task.engine,
            "engine_version": engine_version,
            "model": {
                "model_ref": task.req.model_ref,
                "path": model_path,
                "catalog_id": catalog.as_ref().map(|m| m.id.clone()),
                "digest": digest,
            },
            "seed": task.req.seed,
            "determinism": task.req.determinism,
            "sampler_profile_version": task.req.sampler_profile_version,
            "tokens_out": end.as_ref().and_then(|e| e["tokens_out"].as_u64()).unwrap_or(st.tokens_out),
            "decode_ms": end.as_ref().and_then(|e| e["decode_ms"].as_u64()),
            "finish_reason": end.as_ref().and_then(|e| e["finish_reason"].as_str().map(str::to_owned)),
            "engine_slot": outcome.as_ref().and_then(|o| o.slot),
            "kv_warmth": outcome.as_ref().and_then(EngineOutcome::kv_warmth),
            "error": st.error,
            "submitted_ms": st.submitted_ms,
            "started_ms": st.started_ms,
            "finished_ms": st.finished_ms,
            "request": request,
            "events": events,
        });
        let mut text = match serde_json::to_string_pretty(&doc) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e, "cannot encode the transcript");
                return;
            }
        };
        for s in &self.secrets {
            if !s.is_empty() {
                text = text.replace(s.as_str(), orch_store::redact::TEXT_MARK);
            }
        }
        let state = match st.state {
            api_types::TaskState::Completed => "completed",
            api_types::TaskState::Failed => "failed",
            api_types::TaskState::Canceled => "canceled",
            api_types::TaskState::Queued | api_types::TaskState::Running => "unfinished",
        };
        let mut tags = vec![format!("pool:{}", task.pool_id), format!("state:{state}")];
        for (prefix, v) in [
            ("task:", Some(&task.id)),
            ("session:", task.req.session_id.as_ref()),
        ] {
            if let Some(v) = v {
                if prefix.len() + v.len() <= orch_store::artifacts::MAX_TAG_LEN {
                    tags.push(format!("{prefix}{v}"));
                }
            }
        }
        let input = ArtifactInput {
            kind: ArtifactKind::Transcript,
            content: text.into_bytes(),
            tags,
            parent: None,
            metadata: serde_json::json!({
                "task_id": task.id,
                "pool_id": task.pool_id,
                "session_id": task.req.session_id,
                "state": state,
            }),
        };
        let store = self.store.clone();
        match blocking(move || store.artifacts().put(input, now_ms()).map_err(store_err)).await {
            Ok(meta) => {
                tracing::debug!(task_id = %task.id, artifact_id = %meta.id, "transcript written");
                let _ = task.ext.transcript.set(meta.id);
                self.gc_now.notify_one();
            }
            Err(e) => {
                tracing::warn!(task_id = %task.id, error = %e.body.message, "transcript not written")
            }
        }
    }

    /// Asks the GC loop to run soon (after an artifact write).
    pub fn poke_gc(&self) {
        self.gc_now.notify_one();
    }

    /// KV warmth of a session's last finished turn (0 when unknown, e.g. after a restart: the
    /// engines restarted too, so the cache is cold).
    pub fn warmth(&self, sid: &str) -> f64 {
        lock(&self.warmth).get(sid).copied().unwrap_or(0.0)
    }

    /// Frees the engine slot holding `session`'s KV, unless another live session is now pinned
    /// to the same replica and slot (then the cache is that session's). Returns whether the
    /// engine confirmed the erase.
    pub async fn free_slot(&self, pools: &PoolManager, session: &orch_store::Session) -> bool {
        let (Some(rid), Some(slot)) = (session.replica_id.clone(), session.slot) else {
            return false;
        };
        let store = self.store.clone();
        let me = session.id.clone();
        let (rid2, now) = (rid.clone(), now_ms());
        let shared = blocking(move || {
            Ok(store
                .sessions()
                .list()
                .map_err(store_err)?
                .into_iter()
                .any(|o| {
                    o.id != me
                        && !o.is_expired(now)
                        && o.replica_id.as_deref() == Some(rid2.as_str())
                        && o.slot == Some(slot)
                }))
        })
        .await
        .unwrap_or(false);
        if shared {
            tracing::info!(session_id = %session.id, replica_id = %rid, slot, "slot now holds another session's KV; not erased");
            return false;
        }
        let adapter = pools
            .pools()
            .iter()
            .flat_map(|p| p.replicas())
            .find(|r| r.status.id == rid)
            .and_then(|r| r.adapter);
        let Some(adapter) = adapter else {
            tracing::info!(session_id = %session.id, replica_id = %rid, "replica gone; nothing to erase");
            return false;
        };
        match adapter.erase_slot(slot).await {
            Ok(()) => {
                tracing::info!(session_id = %session.id, replica_id = %rid, slot, "session KV freed (slot erased)");
                true
            }
            Err(e) => {
                tracing::warn!(session_id = %session.id, replica_id = %rid, slot, error = %e, "erasing the session's slot failed");
                false
            }
        }
    }

    /// Removes a session now and frees its slot.
    pub async fn evict(
        &self,
        pools: &PoolManager,
        sid: &str,
    ) -> Result<api_types::SessionEvicted, ApiError> {
        let store = self.store.clone();
        let id = sid.to_owned();
        let s = blocking(move || store.sessions().evict(&id).map_err(store_err)).await?;
        lock(&self.warmth).remove(sid);
        lock(&self.tombstones).remove(sid);
        let slot_erased = self.free_slot(pools, &s).await;
        tracing::info!(session_id = %sid, slot_erased, "session evicted");
        Ok(api_types::SessionEvicted {
            session_id: s.id,
            replica_id: s.replica_id,
            slot: s.slot,
            slot_erased,
        })
    }

    fn prune_tombstones(&self) {
        let now = now_ms();
        lock(&self.tombstones).retain(|_, at| now.saturating_sub(*at) < TOMBSTONE_MS);
    }

    /// Starts the session-expiry and artifact-GC loops.
    pub fn spawn_background(self: &Arc<Self>, pools: Arc<PoolManager>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(EXPIRY_EVERY).await;
                me.prune_tombstones();
                me.expire_once(&pools).await;
            }
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.gc_once().await;
                tokio::select! {
                    _ = tokio::time::sleep(GC_EVERY) => {}
                    _ = me.gc_now.notified() => {
                        // Let a burst of writes finish first.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
    }

    async fn expire_once(&self, pools: &PoolManager) {
        let store = self.store.clone();
        let now = now_ms();
        // Sessions past their TTL, except those with a task still running (they are refreshed
        // when it ends).
        let due: Vec<String> =
            match blocking(move || store.sessions().list().map_err(store_err)).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|s| s.is_expired(now) && !self.in_flight(&s.id))
                    .map(|s| s.id)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e.body.message, "session expiry failed");
                    return;
                }
            };
        if due.is_empty() {
            return;
        }
        let store = self.store.clone();
        let expired = match blocking(move || {
            let sessions = store.sessions();
            let mut out = Vec::new();
            for id in due {
                match sessions.evict(&id) {
                    Ok(s) => out.push(s),
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
            Ok(out)
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e.body.message, "session expiry failed");
                return;
            }
        };
        {
            let mut t = lock(&self.tombstones);
            for s in &expired {
                t.insert(s.id.clone(), now);
            }
        }
        for s in expired {
            lock(&self.warmth).remove(&s.id);
            let erased = self.free_slot(pools, &s).await;
            tracing::info!(session_id = %s.id, turns = s.turns, slot_erased = erased, "session expired");
        }
    }

    async fn gc_once(&self) {
        let store = self.store.clone();
        let (max_bytes, max_age) = (self.gc_max_bytes, self.gc_max_age_ms);
        if let Err(e) = blocking(move || {
            store
                .artifacts()
                .gc(now_ms(), max_bytes, max_age)
                .map_err(store_err)
        })
        .await
        {
            tracing::warn!(error = %e.body.message, "artifact GC failed");
        }
    }

    /// An envelope for a policy refusal.
    pub fn denied(d: &orch_store::Decision) -> ApiError {
        ApiError::from_envelope(ErrorEnvelope::new(
            ErrorCode::PolicyDenied,
            format!(
                "{}; change policy.outbound (allow/deny/no_downloads) if this should be allowed",
                d.reason
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmth_is_share_of_prompt_reused() {
        let o = |tin, cached, out| EngineOutcome {
            tokens_in: Some(tin),
            tokens_cached: Some(cached),
            tokens_out: Some(out),
            ..EngineOutcome::default()
        };
        // Cold: the whole 10-token prompt was evaluated.
        assert_eq!(o(10, 18, 8).kv_warmth(), Some(0.0));
        // Warm: 30-token prompt, 6 evaluated, 24 reused.
        let w = o(6, 38, 8).kv_warmth().unwrap();
        assert!((w - 0.8).abs() < 1e-9);
        assert_eq!(o(0, 0, 0).kv_warmth(), Some(0.0));
        assert_eq!(EngineOutcome::default().kv_warmth(), None);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("localhost"));
        assert!(is_loopback_host("[::1]"));
        assert!(!is_loopback_host("10.0.0.20"));
        assert!(!is_loopback_host("example.com"));
    }
}
