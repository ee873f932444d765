//! HTTP errors: the spec's envelope with the right status and backpressure headers.

use api_types::{ErrorCode, ErrorEnvelope};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An error response.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Body.
    pub body: ErrorEnvelope,
}

impl ApiError {
    /// An error with the status that goes with its code.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status: status_for(code),
            body: ErrorEnvelope::new(code, message),
        }
    }

    /// From an envelope built elsewhere.
    pub fn from_envelope(body: ErrorEnvelope) -> Self {
        Self {
            status: status_for(body.code),
            body,
        }
    }

    /// 400 `INVALID_PARAMS`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }

    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
}

/// The status for each code.
pub fn status_for(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidParams | DeadlineUnmet => StatusCode::BAD_REQUEST,
        MissingToken | BadToken => StatusCode::UNAUTHORIZED,
        ModelNotFound | NotFound => StatusCode::NOT_FOUND,
        ModelRetired | DuplicateTask => StatusCode::CONFLICT,
        AdmissionReject | QueueFullDropLru | BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
        PoolUnavailable | ShuttingDown | WorkerReset => StatusCode::SERVICE_UNAVAILABLE,
        EngineError => StatusCode::BAD_GATEWAY,
        Canceled => StatusCode::CONFLICT,
        Internal => StatusCode::INTERNAL_SERVER_ERROR,
        Conflict | DigestMismatch | SessionExpired | SessionTurnsExhausted => StatusCode::CONFLICT,
        PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        PolicyDenied => StatusCode::FORBIDDEN,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry = self.body.retry_after_ms;
        let mut resp = (self.status, Json(self.body)).into_response();
        if let Some(ms) = retry {
            let h = resp.headers_mut();
            // Retry-After is in whole seconds; round up so clients never retry early.
            if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
                h.insert("retry-after", v);
            }
            if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
                h.insert("x-backoff-ms", v);
            }
        }
        resp
    }
}
