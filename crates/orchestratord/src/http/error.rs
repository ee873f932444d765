//! The one mapping from domain errors to HTTP: status per error code, and the backpressure
//! headers (`Retry-After`, `X-Backoff-Ms`) for errors that carry a retry hint.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use orch_api_types::{ErrorCode, ErrorEnvelope};

use crate::error::ServiceError;

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

/// `Retry-After` (whole seconds, rounded up so clients never retry early) and `X-Backoff-Ms`.
pub fn retry_headers(resp: &mut Response, retry_after_ms: Option<u64>) {
    let Some(ms) = retry_after_ms else { return };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string()) {
        h.insert("retry-after", v);
    }
    if let Ok(v) = HeaderValue::from_str(&ms.to_string()) {
        h.insert("x-backoff-ms", v);
    }
}

/// The envelope with an explicit status (for HTTP-only conditions such as 405).
pub fn respond(status: StatusCode, body: ErrorEnvelope) -> Response {
    let retry = body.retry_after_ms;
    let mut resp = (status, Json(body)).into_response();
    retry_headers(&mut resp, retry);
    resp
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        respond(status_for(self.body.code), self.body)
    }
}
