//! Errors on the Messages paths, in Anthropic's shape `{"type": "error", "error": {"type",
//! "message"}}`, with Anthropic's statuses: a full queue (`ADMISSION_REJECT`,
//! `QUEUE_FULL_DROP_LRU`) and no ready pool (`POOL_UNAVAILABLE`, `SHUTTING_DOWN`,
//! `WORKER_RESET`) are 529 `overloaded_error` with `retry-after`, Anthropic's "try again
//! shortly" (its SDKs retry it, Claude Code says "overloaded"); a session budget spent stays
//! 429 `rate_limit_error`. The same shape answers 401, 404, 405 and 413 on `/v1/messages*`
//! ([`is_messages_path`]).

use axum::http::StatusCode;
use orch_api_types::anthropic::{AnthropicErrorBody, AnthropicErrorDetail};

use crate::http::door::{DoorError, ErrorShape};

/// Anthropic's error shape.
pub struct AnthropicShape;

/// An error in Anthropic's shape.
pub type AnthropicError = DoorError<AnthropicShape>;

/// Anthropic's "overloaded" status.
const OVERLOADED: u16 = 529;

impl ErrorShape for AnthropicShape {
    fn body(status: StatusCode, message: &str, _code: &str) -> serde_json::Value {
        serde_json::to_value(error_body(status, message)).unwrap_or_default()
    }

    fn status(status: StatusCode, code: &str) -> StatusCode {
        match code {
            "admission_reject"
            | "queue_full_drop_lru"
            | "pool_unavailable"
            | "shutting_down"
            | "worker_reset" => StatusCode::from_u16(OVERLOADED).unwrap_or(status),
            _ => status,
        }
    }
}

/// Whether `path` is one of the Messages door's paths (`/v1/messages` and below).
pub fn is_messages_path(path: &str) -> bool {
    path == "/v1/messages" || path.starts_with("/v1/messages/")
}

/// Anthropic's `type` for a status.
pub fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 409 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | OVERLOADED => "overloaded_error",
        _ => "api_error",
    }
}

/// The body of an error, also sent as a broken stream's `error` event.
pub fn error_body(status: StatusCode, message: &str) -> AnthropicErrorBody {
    AnthropicErrorBody {
        kind: "error".into(),
        error: AnthropicErrorDetail {
            kind: error_type(status).to_owned(),
            message: message.to_owned(),
        },
    }
}
