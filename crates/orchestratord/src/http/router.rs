//! The router: every route in one table, beside the handlers it names, with the middleware
//! stack.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::correlation::correlate;
use crate::state::AppState;

/// The full router with middleware: correlation id (outermost), panic guard, token redaction
/// in error bodies, auth (not for the public status page), handler. Every route is declared
/// here, in one table.
pub fn router(state: AppState) -> Router {
    use super::{
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
            super::door::require_token,
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
    let app = match super::cors::layer(&state.config) {
        Some(cors) => app.layer(cors),
        None => app,
    };
    app.layer(axum::middleware::from_fn(correlate))
}
