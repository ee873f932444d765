//! Routes of the persistent-state endpoints (catalog, sessions, artifacts), merged into the
//! main router by `app::router`.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use orch_config::Config;

use crate::app::AppState;
use crate::http::{artifacts, catalog, sessions};

/// Catalog, session and artifact routes. `POST /v1/artifacts` accepts bodies up to the
/// largest artifact (`artifacts.max_artifact_bytes`) base64-encoded plus 1 MiB of JSON; larger
/// bodies get 413 `PAYLOAD_TOO_LARGE`.
pub fn state_routes(cfg: &Config) -> Router<AppState> {
    let body_limit = usize::try_from(
        cfg.artifacts
            .max_artifact_bytes
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(1 << 20),
    )
    .unwrap_or(usize::MAX);
    Router::new()
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
                .layer(DefaultBodyLimit::max(body_limit))
                .get(artifacts::list),
        )
        .route("/v1/artifacts/{id}", get(artifacts::get_artifact))
        .route("/v1/artifacts/{id}/raw", get(artifacts::get_raw))
}
