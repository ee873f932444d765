//! `/v1/catalog/models*`: register, list, get, delete, verify and set the state of catalog
//! models (docs/STATE.md, "Catalog"). The store is the truth; `Persist` mirrors it for routing
//! and the `model_state` gauge.

use api_types::{
    CatalogList, CatalogModel, ErrorCode, ErrorEnvelope, ModelState, RegisterModelRequest,
    SetModelStateRequest, VerifyOutcome, VerifyResponse,
};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::Json;
use orch_store::policy::ACTION_MODEL_DOWNLOAD;
use orch_store::{redact_url, NewModel};
use pool_manager::PoolManager;

use crate::app::AppState;
use crate::catalog::Catalog;
use crate::error::ServiceError;
use crate::http::JsonBody;
use crate::outbound::Outbound;
use crate::storage::store_err;

fn is_remote(reference: &str) -> bool {
    let l = reference.get(..8).unwrap_or(reference).to_ascii_lowercase();
    l.starts_with("http://") || l.starts_with("https://")
}

fn api_state(s: orch_store::ModelState) -> ModelState {
    match s {
        orch_store::ModelState::Active => ModelState::Active,
        orch_store::ModelState::Retired => ModelState::Retired,
    }
}

/// The wire form of a stored model (URL secrets redacted, pools serving it).
pub fn to_api(m: &orch_store::CatalogModel, pools: &PoolManager) -> CatalogModel {
    CatalogModel {
        id: m.id.clone(),
        reference: if is_remote(&m.reference) {
            redact_url(&m.reference)
        } else {
            m.reference.clone()
        },
        digest: m.digest.clone(),
        has_signature: m.signature.is_some(),
        has_sbom: m.sbom.is_some(),
        state: api_state(m.state),
        created_ms: m.created_ms,
        updated_ms: m.updated_ms,
        last_verified: m.last_verified.as_ref().map(|v| VerifyOutcome {
            at_ms: v.at_ms,
            ok: v.ok,
            computed_digest: v.computed_digest.clone(),
        }),
        served_by: Catalog::served_by(pools, &m.reference),
    }
}

/// Register a model (state `Active`). A URL reference passes the outbound policy first.
#[utoipa::path(post, path = "/v1/catalog/models", tag = "catalog", request_body = RegisterModelRequest,
    responses(
        (status = 201, description = "Registered", body = CatalogModel),
        (status = 400, description = "Invalid id, reference or digest", body = ErrorEnvelope),
        (status = 403, description = "A URL reference refused by the outbound policy (`POLICY_DENIED`)", body = ErrorEnvelope),
        (status = 409, description = "The id is already registered (`CONFLICT`)", body = ErrorEnvelope),
        (status = 413, description = "Signature or SBOM too large", body = ErrorEnvelope),
    ))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterModelRequest>,
) -> Result<(StatusCode, HeaderMap, Json<CatalogModel>), ServiceError> {
    orch_store::validate_id("model id", &req.id).map_err(store_err)?;
    if is_remote(&req.reference) {
        let d = state
            .outbound
            .enforce(&req.reference, ACTION_MODEL_DOWNLOAD)
            .await?;
        if !d.allowed {
            return Err(Outbound::denied(&d));
        }
    }
    let new = NewModel {
        id: req.id,
        reference: req.reference,
        digest: req.digest,
        signature: req.signature,
        sbom: req.sbom,
    };
    let m = state.catalog.register(new).await?;
    tracing::info!(model_id = %m.id, reference = %redact_url(&m.reference), "catalog model registered");
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/catalog/models/{}", m.id)) {
        headers.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, headers, Json(to_api(&m, &state.pools))))
}

/// Every catalog model, ordered by id.
#[utoipa::path(get, path = "/v1/catalog/models", tag = "catalog",
    responses((status = 200, body = CatalogList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<CatalogList>, ServiceError> {
    let models = state.catalog.list();
    Ok(Json(CatalogList {
        models: models.iter().map(|m| to_api(m, &state.pools)).collect(),
    }))
}

/// One catalog model.
#[utoipa::path(get, path = "/v1/catalog/models/{id}", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses((status = 200, body = CatalogModel), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<CatalogModel>, ServiceError> {
    let m = state.catalog.get(&id)?;
    Ok(Json(to_api(&m, &state.pools)))
}

/// Remove a model from the catalog (its file and any pool serving it are untouched).
#[utoipa::path(delete, path = "/v1/catalog/models/{id}", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses((status = 204, description = "Deleted"), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn delete_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ServiceError> {
    state.catalog.delete(&id).await?;
    tracing::info!(model_id = %id, "catalog model deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Hash the model file and compare it with the registered digest. A missing signature, SBOM
/// or digest is a warning in the answer (and the log), not a failure; a mismatch is 409
/// `DIGEST_MISMATCH`. The outcome is kept as the model's `last_verified`.
#[utoipa::path(post, path = "/v1/catalog/models/{id}/verify", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses(
        (status = 200, description = "The file matches (or no digest is registered)", body = VerifyResponse),
        (status = 400, description = "A URL reference (only local files can be verified) or a bad id", body = ErrorEnvelope),
        (status = 404, description = "Unknown id, or the model file is missing", body = ErrorEnvelope),
        (status = 409, description = "The file does not match the registered digest (`DIGEST_MISMATCH`)", body = ErrorEnvelope),
    ))]
pub async fn verify(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<VerifyResponse>, ServiceError> {
    let (report, model) = state.catalog.verify(&id).await?;
    if !report.ok {
        return Err(ServiceError::from_envelope(ErrorEnvelope::new(
            ErrorCode::DigestMismatch,
            format!(
                "model file {} of catalog model '{}' hashes to {}, but {} is registered; replace \
                 the file with the right one, or re-register the model with the correct digest",
                model.reference,
                report.id,
                report.computed_digest,
                report.expected_digest.as_deref().unwrap_or("no digest"),
            ),
        )));
    }
    tracing::info!(model_id = %report.id, digest = %report.computed_digest, warnings = report.warnings.len(), "catalog model verified");
    Ok(Json(VerifyResponse {
        id: report.id,
        ok: report.ok,
        computed_digest: report.computed_digest,
        expected_digest: report.expected_digest,
        size: report.size,
        warnings: report.warnings,
    }))
}

/// Set a model `Active` or `Retired`. Tasks naming a Retired model get 409 `MODEL_RETIRED`.
#[utoipa::path(post, path = "/v1/catalog/models/{id}/state", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    request_body = SetModelStateRequest,
    responses((status = 200, body = CatalogModel), (status = 400, body = ErrorEnvelope), (status = 404, body = ErrorEnvelope)))]
pub async fn set_state(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(req): JsonBody<SetModelStateRequest>,
) -> Result<Json<CatalogModel>, ServiceError> {
    let new = match req.state {
        ModelState::Active => orch_store::ModelState::Active,
        ModelState::Retired => orch_store::ModelState::Retired,
    };
    let m = state.catalog.set_state(&id, new).await?;
    tracing::info!(model_id = %m.id, state = %m.state, "catalog model state changed");
    Ok(Json(to_api(&m, &state.pools)))
}
