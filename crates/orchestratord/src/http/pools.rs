//! `GET /v1/pools`, `GET /v1/pools/{id}/health`, and the pool control plane
//! `POST /v1/pools/{id}/drain` and `POST /v1/pools/{id}/reload`.
//!
//! The wire types are `orch_api_types::pools`; this module converts the pool manager's own types
//! into them (neither crate depends on the other).
//!
//! Drain: the pool stops admitting at once (503 `POOL_UNAVAILABLE` naming the drain); queued
//! and running tasks go on until `deadline_ms`, then what is left ends with `CANCELED`. The
//! pool stays drained until `POST …/drain {"resume": true}` or a successful reload.
//!
//! Reload: see `orch_pool_manager::PoolManager::reload` — new replicas beside the old, health
//! check, swap, retire the old after their in-flight tasks; any failure rolls back.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use orch_api_types::pools::{
    DrainRequest, DrainResponse, EngineInfo, LoadResponse, OnDemandInfo, PoolHealth, PoolInfo,
    PoolList, ReloadRequest, ReloadResponse, ReplicaInfo, UnloadRequest,
};
use orch_api_types::ErrorEnvelope;

use crate::error::ServiceError;
use crate::http::JsonBody;
use crate::pool_control::{self, find_pool};
use crate::state::AppState;
use crate::wire::{load_state, replica_state};

fn on_demand_info(o: orch_pool_manager::OnDemandHealth) -> OnDemandInfo {
    OnDemandInfo {
        expected_load_ms: o.expected_load_ms,
        idle_ms: o.idle_ms,
        idle_unload_s: o.idle_unload_s,
        queued: o.queued,
        state: load_state(o.state),
        waiting: o.waiting,
    }
}

fn load_response(r: orch_pool_manager::LoadReport, canceled: usize) -> LoadResponse {
    LoadResponse {
        pool_id: r.pool_id,
        state: load_state(r.state),
        changed: r.changed,
        took_ms: r.took_ms,
        devices: r.devices,
        evicted: r.evicted,
        canceled,
    }
}

/// The wire form of what an engine reports about itself.
fn engine_info(i: orch_engine_adapters::EngineInfo) -> EngineInfo {
    EngineInfo {
        ctx_per_slot: i.ctx_per_slot,
        model: i.model,
        slots: i.slots,
        version: i.version,
    }
}

/// The wire form of a replica's status.
pub(crate) fn replica_info(r: orch_pool_manager::ReplicaStatus) -> ReplicaInfo {
    ReplicaInfo {
        device: r.device,
        endpoint: r.endpoint,
        generation: r.generation,
        id: r.id,
        in_flight: r.in_flight,
        info: r.info.map(engine_info),
        last_error: r.last_error,
        pid: r.pid,
        restarts: r.restarts,
        slots: r.slots,
        state: replica_state(r.state),
    }
}

/// The wire form of a pool's health.
pub(crate) fn pool_health(h: orch_pool_manager::PoolHealth) -> PoolHealth {
    let list = |v: Vec<orch_pool_manager::ReplicaStatus>| v.into_iter().map(replica_info).collect();
    PoolHealth {
        drain_deadline_ms: h.drain_deadline_ms,
        draining: h.draining,
        generation: h.generation,
        incoming: list(h.incoming),
        last_error: h.last_error,
        live: h.live,
        model: h.model,
        on_demand: h.on_demand.map(on_demand_info),
        ready: h.ready,
        replicas: list(h.replicas),
        retiring: list(h.retiring),
    }
}

/// Every pool with its health.
#[utoipa::path(get, path = "/v1/pools", operation_id = "pools", responses((status = 200, description = "Every pool with its health", body = PoolList)))]
pub async fn list(State(state): State<AppState>) -> Json<PoolList> {
    let pools = state
        .pools
        .pools()
        .iter()
        .map(|p| PoolInfo {
            engine: p.engine().to_owned(),
            health: pool_health(p.health()),
            id: p.id().to_owned(),
            kind: p.config().kind.as_str().to_owned(),
        })
        .collect();
    Json(PoolList { pools })
}

/// One pool's health: liveness, readiness, drain, its replicas (and those a reload is starting
/// or retiring), the last problem.
#[utoipa::path(get, path = "/v1/pools/{id}/health", operation_id = "pool_health", params(("id" = String, Path, description = "pool id")),
    responses((status = 200, description = "Pool health", body = PoolHealth), (status = 404, body = ErrorEnvelope)))]
pub async fn health(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<PoolHealth>, ServiceError> {
    let p = state
        .pools
        .pool(&id)
        .ok_or_else(|| ServiceError::not_found(format!("no pool `{id}`")))?;
    Ok(Json(pool_health(p.health())))
}

/// Stop admitting work to a pool, finish or cancel what it has by a deadline; or resume it.
#[utoipa::path(post, path = "/v1/pools/{id}/drain", params(("id" = String, Path, description = "pool id")),
    request_body = DrainRequest,
    responses(
        (status = 202, description = "Draining: new tasks get 503 POOL_UNAVAILABLE; what is left at the deadline is canceled", body = DrainResponse),
        (status = 200, description = "Resumed (`resume: true`)", body = DrainResponse),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn drain(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<JsonBody<DrainRequest>, ServiceError>,
) -> Result<(StatusCode, Json<DrainResponse>), ServiceError> {
    let JsonBody(req) = body?;
    let pool = find_pool(&state.pool_control, &id)?;
    let (queued, running) = state
        .pool_control
        .dispatchers
        .get(&id)
        .map(|d| (d.depth(), d.running()))
        .unwrap_or((0, 0));
    if req.resume {
        if req.deadline_ms.is_some() {
            return Err(ServiceError::invalid(
                "send either `resume: true` or `deadline_ms`, not both",
            ));
        }
        pool.resume();
        return Ok((
            StatusCode::OK,
            Json(DrainResponse {
                pool_id: id,
                draining: false,
                deadline_at_ms: None,
                queued,
                running,
            }),
        ));
    }
    let ms = req.deadline_ms.unwrap_or(pool_control::DEFAULT_DRAIN_MS);
    let deadline_at_ms = pool_control::start_drain(&state.pool_control, pool, ms)?;
    tracing::info!(pool_id = %id, deadline_ms = ms, queued, running, "drain requested");
    Ok((
        StatusCode::ACCEPTED,
        Json(DrainResponse {
            pool_id: id,
            draining: true,
            deadline_at_ms: Some(deadline_at_ms),
            queued,
            running,
        }),
    ))
}

/// Switch a pool to another model without downtime, or roll back and keep the old serving.
#[utoipa::path(post, path = "/v1/pools/{id}/reload", params(("id" = String, Path, description = "pool id")),
    request_body = ReloadRequest,
    responses(
        (status = 200, description = "The new replicas serve; the old ones retire after their in-flight tasks", body = ReloadResponse),
        (status = 400, description = "A malformed body (`INVALID_PARAMS`)", body = ErrorEnvelope),
        (status = 404, description = "Unknown pool (`NOT_FOUND`); or no usable model at `new_model_ref`: neither a file nor a catalog id, or not a readable GGUF file (`MODEL_NOT_FOUND`, rolled back: the old model keeps serving)", body = ErrorEnvelope),
        (status = 409, description = "A reload is already running, the pool is not launched by llama-orch, no room beside the old replicas, a Retired catalog model, or a catalog model whose reference is a URL (rolled back)", body = ErrorEnvelope),
        (status = 502, description = "The new engine failed to start or answer its health check (rolled back)", body = ErrorEnvelope),
    ))]
pub async fn reload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<JsonBody<ReloadRequest>, ServiceError>,
) -> Result<Json<ReloadResponse>, ServiceError> {
    let JsonBody(req) = body?;
    let rep = pool_control::reload(
        &state.pool_control,
        &id,
        req.new_model_ref.as_deref(),
        req.grace_ms,
    )
    .await?;
    Ok(Json(ReloadResponse {
        pool_id: rep.pool_id,
        generation: rep.generation,
        model: rep.model,
        previous_generation: rep.previous_generation,
        previous_model: rep.previous_model,
        took_ms: rep.took_ms,
        replicas: rep.replicas.into_iter().map(replica_info).collect(),
    }))
}

/// Load an `on_demand` pool now (evicting idle on_demand models if it must); answers once it
/// serves.
#[utoipa::path(post, path = "/v1/pools/{id}/load", params(("id" = String, Path, description = "pool id")),
    responses(
        (status = 200, description = "The pool serves (`changed: false` when it already did)", body = LoadResponse),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "A `load: always` pool, or no GPU has room and nothing idle can be evicted (the message says what holds the VRAM)", body = ErrorEnvelope),
        (status = 502, description = "The load failed: bad model file, or the engine exited or missed its health check (twice)", body = ErrorEnvelope),
    ))]
pub async fn load(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<LoadResponse>, ServiceError> {
    let rep = pool_control::load(&state.pool_control, &id).await?;
    Ok(Json(load_response(rep, 0)))
}

/// Unload an `on_demand` pool: stop its engine and free its VRAM. Refused (409) while tasks
/// run or wait, unless `force` (they end with `CANCELED` first).
#[utoipa::path(post, path = "/v1/pools/{id}/unload", params(("id" = String, Path, description = "pool id")),
    request_body = UnloadRequest,
    responses(
        (status = 200, description = "The engine is stopped (`changed: false` when there was none)", body = LoadResponse),
        (status = 400, description = "The body is not an `UnloadRequest` (`INVALID_PARAMS`)", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
        (status = 409, description = "A `load: always` pool, or a busy pool without `force` (nothing was stopped)", body = ErrorEnvelope),
    ))]
pub async fn unload(
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<LoadResponse>, ServiceError> {
    // An empty body means the defaults (`llorch unload` and `curl -X POST` send none).
    let req: UnloadRequest = if body.iter().all(u8::is_ascii_whitespace) {
        UnloadRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ServiceError::invalid(format!("invalid JSON body: {e}")))?
    };
    let (rep, canceled) = pool_control::unload(&state.pool_control, &id, req.force).await?;
    Ok(Json(load_response(rep, canceled)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        id: &str,
        state: orch_pool_manager::ReplicaState,
    ) -> orch_pool_manager::ReplicaStatus {
        orch_pool_manager::ReplicaStatus {
            id: id.into(),
            state,
            endpoint: Some("http://127.0.0.1:9".into()),
            device: "gpu1".into(),
            pid: Some(42),
            restarts: 2,
            last_error: Some("exited: signal 9".into()),
            info: Some(orch_engine_adapters::EngineInfo {
                version: "b1-x".into(),
                ctx_per_slot: Some(1024),
                slots: Some(4),
                model: Some("/m/tiny.gguf".into()),
            }),
            slots: 4,
            in_flight: 3,
            generation: 1,
        }
    }

    /// Today's wire form: the pool manager's type as a `serde_json` value (keys sorted).
    fn legacy(v: &impl serde::Serialize) -> String {
        serde_json::to_value(v).unwrap().to_string()
    }

    #[test]
    fn on_demand_health_is_byte_compatible() {
        let mut o = orch_pool_manager::OnDemandHealth {
            expected_load_ms: 1200,
            idle_ms: Some(5),
            idle_unload_s: 600,
            queued: 2,
            state: orch_pool_manager::LoadPhase::Loaded,
            waiting: Some("no room".into()),
        };
        assert_eq!(
            serde_json::to_string(&on_demand_info(o.clone())).unwrap(),
            legacy(&o)
        );
        o.idle_ms = None;
        o.waiting = None;
        let wire = serde_json::to_string(&on_demand_info(o.clone())).unwrap();
        assert_eq!(wire, legacy(&o));
        assert!(
            !wire.contains("waiting") && !wire.contains("idle_ms"),
            "{wire}"
        );
    }

    #[test]
    fn engine_info_is_byte_compatible() {
        let i = orch_engine_adapters::EngineInfo {
            version: "b2".into(),
            ctx_per_slot: None,
            slots: Some(1),
            model: None,
        };
        assert_eq!(
            serde_json::to_string(&engine_info(i.clone())).unwrap(),
            legacy(&i)
        );
    }

    #[test]
    fn replica_info_is_byte_compatible() {
        let mut r = status("tiny-g1-r0", orch_pool_manager::ReplicaState::CircuitOpen);
        assert_eq!(
            serde_json::to_string(&replica_info(r.clone())).unwrap(),
            legacy(&r)
        );
        r.info = None;
        r.pid = None;
        r.endpoint = None;
        r.last_error = None;
        assert_eq!(
            serde_json::to_string(&replica_info(r.clone())).unwrap(),
            legacy(&r)
        );
    }

    #[test]
    fn pool_health_is_byte_compatible() {
        let mut h = orch_pool_manager::PoolHealth {
            live: true,
            ready: false,
            draining: true,
            drain_deadline_ms: Some(1_700_000_000_000),
            model: Some("/m/tiny.gguf".into()),
            generation: 1,
            replicas: vec![status("tiny-g1-r0", orch_pool_manager::ReplicaState::Ready)],
            incoming: vec![status(
                "tiny-g2-r0",
                orch_pool_manager::ReplicaState::Starting,
            )],
            retiring: vec![status("tiny-r0", orch_pool_manager::ReplicaState::Retiring)],
            last_error: Some("reload rolled back".into()),
            on_demand: None,
        };
        assert_eq!(
            serde_json::to_string(&pool_health(h.clone())).unwrap(),
            legacy(&h)
        );
        // Absent, not null or empty: no deadline, no reload in progress.
        h.drain_deadline_ms = None;
        h.incoming.clear();
        h.retiring.clear();
        h.model = None;
        h.last_error = None;
        let wire = serde_json::to_string(&pool_health(h.clone())).unwrap();
        assert_eq!(wire, legacy(&h));
        assert!(!wire.contains("incoming") && !wire.contains("drain_deadline_ms"));
    }

    #[test]
    fn pool_list_entry_is_byte_compatible() {
        let h = orch_pool_manager::PoolHealth {
            live: false,
            ready: false,
            draining: false,
            drain_deadline_ms: None,
            model: None,
            generation: 0,
            replicas: vec![],
            incoming: vec![],
            retiring: vec![],
            last_error: None,
            on_demand: None,
        };
        let today = serde_json::json!({ "id": "tiny", "engine": "llamacpp", "health": h });
        let typed = PoolInfo {
            engine: "llamacpp".into(),
            health: pool_health(h),
            id: "tiny".into(),
            kind: "chat".into(),
        };
        assert_eq!(serde_json::to_string(&typed).unwrap(), today.to_string());
    }
}
