//! The OpenAPI document, generated from the handlers and `orch-api-types`. Committed as
//! `contracts/openapi.json`; a test fails when the two differ.

use utoipa::OpenApi;

use crate::http;

#[path = "openapi_rules.rs"]
pub mod rules;

/// The daemon's API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "llama-orch orchestratord",
        description = "OrchQueue v1 data plane and control plane"
    ),
    paths(
        http::tasks::create,
        http::tasks::get_task,
        http::tasks::stream,
        http::tasks::cancel,
        http::system::health,
        http::system::metrics,
        http::system::capabilities,
        http::pools::list,
        http::pools::health,
        http::pools::drain,
        http::pools::reload,
        http::pools::load,
        http::pools::unload,
        http::catalog::register,
        http::catalog::list,
        http::catalog::get_model,
        http::catalog::delete_model,
        http::catalog::verify,
        http::catalog::set_state,
        http::sessions::get_session,
        http::sessions::evict,
        http::artifacts::create,
        http::artifacts::list,
        http::artifacts::get_artifact,
        http::artifacts::get_raw,
        http::web::status,
        http::web::status_stream,
        http::openai::models,
        http::openai::model,
        http::openai::completions,
        http::openai::chat_completions,
        http::embeddings::embeddings,
        http::embeddings::rerank,
        http::anthropic::messages,
        http::anthropic::count_tokens,
        http::responses::create,
        http::responses::input_tokens,
        http::responses::get,
        http::responses::delete,
    ),
    components(schemas(
        orch_api_types::StartedEvent,
        orch_api_types::TokenEvent,
        orch_api_types::MetricsEvent,
        orch_api_types::ResultEvent,
        orch_api_types::RerankScore,
        orch_api_types::EndEvent,
        orch_api_types::BudgetSpec,
        orch_api_types::BudgetRemaining,
        orch_api_types::PullJob,
        orch_api_types::PullFile,
        orch_api_types::PullState,
    ))
)]
pub struct ApiDoc;

/// The document served at `/openapi.json`: the derived one with [`rules::apply`].
pub fn document() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    rules::apply(&mut doc);
    doc
}

/// The document as pretty JSON with a trailing newline (the committed form).
pub fn openapi_json() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
