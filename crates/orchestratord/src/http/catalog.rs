//! `/v1/catalog/models*`: register, list, get, delete, verify and set the state of catalog
//! models (docs/STATE.md, "Catalog"). The store is the truth; `Persist` mirrors it for routing
//! and the `model_state` gauge.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orch_api_types::{
    CatalogList, CatalogModel, ErrorCode, ErrorEnvelope, ModelState, PullJob, RegisterModelRequest,
    SetModelStateRequest, VerifyOutcome, VerifyResponse,
};
use orch_pool_manager::PoolManager;
use orch_store::policy::ACTION_MODEL_DOWNLOAD;
use orch_store::{redact_url, NewModel};

use crate::catalog::Catalog;
use crate::error::ServiceError;
use crate::http::JsonBody;
use crate::outbound::Outbound;
use crate::state::AppState;
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
        size: m.size,
        source: m.source.clone(),
    }
}

fn location(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/catalog/models/{id}")) {
        headers.insert(header::LOCATION, v);
    }
    headers
}

/// A pull job answer: 202 with the job, `Location` of its model.
fn pull_answer(job: PullJob) -> Response {
    (StatusCode::ACCEPTED, location(&job.id), Json(job)).into_response()
}

/// Whether the request is a pull (`hf:` references always; URLs with `pull: true`).
fn wants_pull(req: &RegisterModelRequest) -> Result<bool, ServiceError> {
    let hub = crate::pull::hub::is_hub_ref(&req.reference);
    match (hub, is_remote(&req.reference), req.pull) {
        (true, _, Some(false)) => Err(ServiceError::invalid(
            "an hf: reference can only be pulled; leave out `pull` or set it true",
        )),
        (true, _, _) | (false, true, Some(true)) => Ok(true),
        (false, false, Some(true)) => Err(ServiceError::invalid(
            "only hf: references and http(s):// URLs can be pulled; register a local file \
             without `pull`",
        )),
        _ => Ok(false),
    }
}

/// Register a model (state `Active`), or pull one. A local file is registered at once (201); a
/// URL reference passes the outbound policy first. A hub reference (`hf:ORG/REPO/FILE.gguf`,
/// `hf:ORG/REPO:QUANT`) or a URL with `pull: true` is downloaded into `data_dir/models`,
/// verified and then registered: the answer is 202 with the pull job, whose progress
/// `GET /v1/catalog/models/{id}` shows (SPEC §11).
#[utoipa::path(post, path = "/v1/catalog/models", tag = "catalog", request_body = RegisterModelRequest,
    responses(
        (status = 201, description = "Registered", body = CatalogModel),
        (status = 202, description = "A pull started (or the same pull was running already under this id)", body = PullJob),
        (status = 400, description = "Invalid id, reference or digest; a quantization that matches no file or several (the message lists the repo's GGUF files)", body = ErrorEnvelope),
        (status = 403, description = "Refused by the outbound policy, e.g. `no_downloads` (`POLICY_DENIED`)", body = ErrorEnvelope),
        (status = 404, description = "The hub has no such repository or file (`NOT_FOUND`)", body = ErrorEnvelope),
        (status = 409, description = "The id is already registered, or another pull runs under it (`CONFLICT`)", body = ErrorEnvelope),
        (status = 413, description = "Signature or SBOM too large; or too little free disk for the pull: its size plus 5% (`PAYLOAD_TOO_LARGE`)", body = ErrorEnvelope),
        (status = 502, description = "The hub cannot be reached or answered an error (`ENGINE_ERROR`, retriable)", body = ErrorEnvelope),
        (status = 503, description = "A pull while the daemon shuts down (`SHUTTING_DOWN`)", body = ErrorEnvelope),
    ))]
pub async fn register(
    State(state): State<AppState>,
    JsonBody(req): JsonBody<RegisterModelRequest>,
) -> Result<Response, ServiceError> {
    if wants_pull(&req)? {
        if state.shutting_down.began() {
            return Err(ServiceError::from_envelope(
                ErrorEnvelope::new(
                    ErrorCode::ShuttingDown,
                    "the daemon is shutting down; pull again once it is back (the download resumes)",
                )
                .retry_after(5000),
            ));
        }
        let job = state
            .pulls
            .start(crate::pull::PullRequest {
                id: req.id,
                reference: req.reference,
                digest: req.digest,
            })
            .await?;
        return Ok(pull_answer(job));
    }
    let Some(id) = req.id else {
        return Err(ServiceError::invalid(
            "`id` is required to register a model (only pulls derive one from the file name)",
        ));
    };
    orch_store::validate_id("model id", &id).map_err(store_err)?;
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
        id,
        reference: req.reference,
        digest: req.digest,
        signature: req.signature,
        sbom: req.sbom,
        size: None,
        source: None,
    };
    let m = state.catalog.register(new).await?;
    tracing::info!(model_id = %m.id, reference = %redact_url(&m.reference), "catalog model registered");
    Ok((
        StatusCode::CREATED,
        location(&m.id),
        Json(to_api(&m, &state.pools)),
    )
        .into_response())
}

/// Every catalog model, ordered by id, and the pulls not registered yet.
#[utoipa::path(get, path = "/v1/catalog/models", tag = "catalog",
    responses((status = 200, body = CatalogList)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<CatalogList>, ServiceError> {
    let models = state.catalog.list();
    Ok(Json(CatalogList {
        models: models.iter().map(|m| to_api(m, &state.pools)).collect(),
        pulls: state.pulls.list(),
    }))
}

/// One catalog model (200), or the pull that will register it (202: downloading or
/// verifying with bytes done, rate and ETA; or failed or canceled, with the reason).
#[utoipa::path(get, path = "/v1/catalog/models/{id}", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses(
        (status = 200, description = "The registered model", body = CatalogModel),
        (status = 202, description = "Not registered (yet): the pull under this id", body = PullJob),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)))]
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    match state.catalog.get(&id) {
        Ok(m) => Ok(Json(to_api(&m, &state.pools)).into_response()),
        Err(e) if e.code() == ErrorCode::NotFound => match state.pulls.job(&id) {
            Some(job) => Ok(pull_answer(job)),
            None => Err(e),
        },
        Err(e) => Err(e),
    }
}

/// Remove a model from the catalog (204; its file and any pool serving it are untouched), or
/// cancel the pull under this id (202 with the job, `canceled`; its partial files are deleted).
#[utoipa::path(delete, path = "/v1/catalog/models/{id}", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 202, description = "The pull under this id was canceled (or, ended already, forgotten)", body = PullJob),
        (status = 400, body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope)))]
pub async fn delete_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    if state.catalog.cached(&id).is_none() {
        if let Some(job) = state.pulls.cancel(&id).await {
            return Ok(pull_answer(job));
        }
    }
    state.catalog.delete(&id).await?;
    tracing::info!(model_id = %id, "catalog model deleted");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Hash the model file and compare it with the registered digest. A missing signature, SBOM
/// or digest is a warning in the answer (and the log), not a failure; a mismatch is 409
/// `DIGEST_MISMATCH`. The outcome is kept as the model's `last_verified`.
#[utoipa::path(post, path = "/v1/catalog/models/{id}/verify", tag = "catalog",
    params(("id" = String, Path, description = "catalog id")),
    responses(
        (status = 200, description = "The file matches (or no digest is registered)", body = VerifyResponse),
        (status = 400, description = "A bad id", body = ErrorEnvelope),
        (status = 404, description = "Unknown id, or the model file is missing", body = ErrorEnvelope),
        (status = 409, description = "The file does not match the registered digest (`DIGEST_MISMATCH`); or the model's reference cannot be verified: a URL (only local files can be), a `file://` URL naming no local path, or a directory (`CONFLICT`)", body = ErrorEnvelope),
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
