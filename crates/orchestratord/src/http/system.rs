//! `/health`, `/metrics`, `/openapi.json`, `/v1/capabilities`, `/v1/pools*`, fallbacks.

use std::any::Any;

use api_types::{ErrorCode, ErrorEnvelope, HealthResponse};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::app::AppState;
use crate::error::ApiError;

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)))]
pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    let pools = state.pools.pools();
    Json(HealthResponse {
        status: if state.is_shutting_down() {
            "shutting_down"
        } else {
            "ok"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pools_ready: pools.iter().filter(|p| p.is_ready()).count(),
        pools_total: pools.len(),
    })
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &state.prom) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            out,
        )
            .into_response(),
        Err(e) => ApiError::new(ErrorCode::Internal, format!("metrics encoding failed: {e}"))
            .into_response(),
    }
}

/// The OpenAPI document of this daemon.
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(crate::openapi::ApiDoc::openapi())
}

/// Limits of one pool.
#[derive(Serialize, ToSchema)]
pub struct PoolCapabilities {
    /// Pool id.
    pub id: String,
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Context tokens per slot, as the engine reports.
    pub ctx_max: u32,
    /// Largest `max_tokens` accepted.
    pub max_tokens: u32,
    /// Concurrent requests over ready replicas.
    pub concurrency: usize,
    /// Replicas configured.
    pub replicas: usize,
    /// Devices the replicas run on.
    pub devices: Vec<String>,
    /// Queue capacity.
    pub queue_capacity: usize,
    /// Whether some replica is ready.
    pub ready: bool,
    /// Names `model_ref` may use.
    pub model_refs: Vec<String>,
}

/// Body of `GET /v1/capabilities`.
#[derive(Serialize, ToSchema)]
pub struct Capabilities {
    /// API version.
    pub api_version: String,
    /// Daemon version.
    pub daemon_version: String,
    /// Queue-full policy (`reject` or `drop-lru`).
    pub queue_policy: String,
    /// Priorities.
    pub priorities: Vec<String>,
    /// Where engines run (`nvml (driver …)`, `cpu (dev.allow_cpu_inference)`).
    pub gpu_mode: String,
    /// Whether the dev CPU-inference setting is on.
    pub dev_allow_cpu_inference: bool,
    /// Requests per second limits (none: the queue is the limit).
    pub rate_limits: Option<String>,
    /// Pools.
    pub pools: Vec<PoolCapabilities>,
}

/// What the pools can do, from their live engines.
#[utoipa::path(get, path = "/v1/capabilities", responses((status = 200, body = Capabilities)))]
pub async fn capabilities(State(state): State<AppState>) -> Json<Capabilities> {
    let pools = state
        .pools
        .pools()
        .iter()
        .map(|p| {
            let ctx = p.ctx_per_slot();
            PoolCapabilities {
                id: p.id().into(),
                engine: p.engine().into(),
                engine_version: p.engine_version(),
                ctx_max: ctx,
                max_tokens: ctx,
                concurrency: p.ready_slots(),
                replicas: p.replicas().len(),
                devices: p.replicas().into_iter().map(|r| r.status.device).collect(),
                queue_capacity: p
                    .config()
                    .queue_capacity
                    .unwrap_or(state.config.queue.capacity),
                ready: p.is_ready(),
                model_refs: p.model_names(),
            }
        })
        .collect();
    Json(Capabilities {
        api_version: api_types::API_VERSION.into(),
        daemon_version: env!("CARGO_PKG_VERSION").into(),
        queue_policy: match state.config.queue.full_policy {
            orch_config::FullPolicy::Reject => "reject",
            orch_config::FullPolicy::DropLru => "drop-lru",
        }
        .into(),
        priorities: vec!["interactive".into(), "batch".into()],
        gpu_mode: state.pools.gpu_mode().describe(),
        dev_allow_cpu_inference: state.config.dev.allow_cpu_inference,
        rate_limits: None,
        pools,
    })
}

/// Every pool's health.
#[utoipa::path(get, path = "/v1/pools", responses((status = 200, description = "Pool ids with health", body = Object)))]
pub async fn pools(State(state): State<AppState>) -> Json<serde_json::Value> {
    let v: Vec<_> = state
        .pools
        .pools()
        .iter()
        .map(|p| serde_json::json!({ "id": p.id(), "engine": p.engine(), "health": p.health() }))
        .collect();
    Json(serde_json::json!({ "pools": v }))
}

/// One pool's health: `{live, ready, draining, replicas, last_error}`.
#[utoipa::path(get, path = "/v1/pools/{id}/health", params(("id" = String, Path, description = "pool id")),
    responses((status = 200, description = "Pool health", body = Object), (status = 404, body = ErrorEnvelope)))]
pub async fn pool_health(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let p = state
        .pools
        .pool(&id)
        .ok_or_else(|| ApiError::not_found(format!("no pool `{id}`")))?;
    Ok(Json(serde_json::to_value(p.health()).unwrap_or_default()))
}

/// Unknown route.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route {}; see /openapi.json", uri.path()))
}

/// Known route, wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        body: ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "method not allowed on this route; see /openapi.json",
        ),
    }
}

/// A handler panicked: answer 500 with the envelope instead of dropping the connection.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    tracing::error!(%detail, "handler panicked");
    ApiError::new(
        ErrorCode::Internal,
        "internal error; the daemon logged details",
    )
    .into_response()
}
