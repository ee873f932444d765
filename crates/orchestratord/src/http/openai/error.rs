//! Errors on OpenAI's paths, in OpenAI's shape `{"error": {"message", "type", "param",
//! "code"}}` with the daemon's status; 429 and 503 carry `Retry-After` and `X-Backoff-Ms`.
//! The same shape answers 401, 404 and 405 on OpenAI's paths ([`is_openai_path`]) and 413 for
//! a body over `http.max_body_bytes`.

use axum::http::StatusCode;
use orch_api_types::openai::{OaiErrorBody, OaiErrorDetail};

use crate::http::door::{DoorError, ErrorShape};

/// OpenAI's error shape.
pub struct OpenAiShape;

/// An error in OpenAI's shape.
pub type OaiError = DoorError<OpenAiShape>;

impl ErrorShape for OpenAiShape {
    fn body(status: StatusCode, message: &str, code: &str) -> serde_json::Value {
        serde_json::to_value(error_body(status, message, code)).unwrap_or_default()
    }
}

/// The first path segments after `/v1/` that belong to OpenAI's API (ours and those we do not
/// serve): errors there are in OpenAI's shape, elsewhere in the daemon's envelope.
const OPENAI_RESOURCES: &[&str] = &[
    "models",
    "chat",
    "completions",
    "embeddings",
    "responses",
    "audio",
    "images",
    "moderations",
    "files",
    "uploads",
    "batches",
    "fine_tuning",
    "assistants",
    "threads",
    "vector_stores",
    "realtime",
    "conversations",
    "containers",
    "evals",
    // Not OpenAI's, but served beside `/v1/embeddings` in the same shape (`http/embeddings.rs`).
    "rerank",
    "reranking",
];

/// Whether `path` is one of OpenAI's API paths.
pub fn is_openai_path(path: &str) -> bool {
    path.strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .is_some_and(|seg| OPENAI_RESOURCES.contains(&seg))
}

/// OpenAI's `type` for a status.
pub(super) fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 409 | 413 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        503 => "service_unavailable",
        _ => "server_error",
    }
}

/// The body of an error, also used inside a broken stream.
pub fn error_body(status: StatusCode, message: &str, code: &str) -> OaiErrorBody {
    OaiErrorBody {
        error: OaiErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
            param: None,
            kind: error_type(status).to_owned(),
        },
    }
}
