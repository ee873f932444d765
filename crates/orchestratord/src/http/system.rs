//! `/health`, `/metrics`, `/openapi.json`, `/v1/capabilities`, fallbacks. (`/v1/pools*` is in
//! `http::pools`.)

use std::any::Any;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orch_api_types::{Capabilities, ErrorCode, ErrorEnvelope, HealthResponse, PoolCapabilities};

use crate::error::ServiceError;
use crate::state::AppState;

/// Liveness.
#[utoipa::path(get, path = "/health", responses((status = 200, body = HealthResponse)),
    security((), ("bearer" = [])))]
pub async fn health(State(state): State<AppState>) -> Json<HealthResponse> {
    let pools = state.pools.pools();
    Json(HealthResponse {
        status: if state.shutting_down.began() {
            "shutting_down"
        } else {
            "ok"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        pools_ready: pools
            .iter()
            .filter(|p| {
                p.is_ready()
                    || p.load_phase()
                        .is_some_and(|l| l != orch_pool_manager::LoadPhase::Failed)
            })
            .count(),
        pools_total: pools.len(),
    })
}

/// Prometheus exposition: OpenMetrics text when `Accept` asks for it (Prometheus does), else
/// the Prometheus text format 0.0.4 (promtool, curl).
#[utoipa::path(get, path = "/metrics",
    params(("Accept" = Option<String>, Header, description = "`application/openmetrics-text` (preferred over `text/plain`) selects OpenMetrics")),
    responses((status = 200, description = "Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or OpenMetrics 1.0.0 when `Accept` asks for it",
        content((String = "text/plain"), (String = "application/openmetrics-text")))),
    security((), ("bearer" = [])))]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let openmetrics = crate::metrics::wants_openmetrics(accept);
    match crate::metrics::exposition(&state.prom, openmetrics) {
        Ok((ctype, out)) => (
            [(header::CONTENT_TYPE, ctype), (header::VARY, "accept")],
            out,
        )
            .into_response(),
        Err(e) => ServiceError::new(ErrorCode::Internal, format!("metrics encoding failed: {e}"))
            .into_response(),
    }
}

/// The OpenAPI document of this daemon.
pub async fn openapi() -> Json<serde_json::Value> {
    Json(super::openapi::document())
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
                kind: p.config().kind.as_str().into(),
            }
        })
        .collect();
    Json(Capabilities {
        api_version: orch_api_types::API_VERSION.into(),
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

/// Unknown route.
pub async fn not_found(req: axum::extract::Request) -> Response {
    let path = req.uri().path().to_owned();
    let e = ServiceError::not_found(format!("no route {path}; see /openapi.json"));
    crate::http::door::refuse_on_path(&path, e, req.into_body()).await
}

/// Known route, wrong method.
pub async fn method_not_allowed(req: axum::extract::Request) -> Response {
    let path = req.uri().path().to_owned();
    if let Some(r) = crate::http::door::method_not_allowed_on_path(&path, req.into_body()).await {
        return r;
    }
    crate::http::error::respond(
        StatusCode::METHOD_NOT_ALLOWED,
        ErrorEnvelope::new(
            ErrorCode::InvalidParams,
            "method not allowed on this route; see /openapi.json",
        ),
    )
}

/// A handler panicked: answer 500 with the envelope instead of dropping the connection.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    tracing::error!(%detail, "handler panicked");
    ServiceError::new(
        ErrorCode::Internal,
        "internal error; the daemon logged details",
    )
    .into_response()
}
