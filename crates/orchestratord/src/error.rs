//! The daemon's domain error: the error envelope every refusal and failure carries. It knows
//! nothing of HTTP; `http::error` maps it to a status and headers, in one place.

use orch_api_types::{ErrorCode, ErrorEnvelope};

/// A refusal or failure of a daemon service (admission, sessions, catalog, store, …).
#[derive(Debug, Clone)]
pub struct ServiceError {
    /// What the client receives: code, actionable message, retry hints.
    pub body: ErrorEnvelope,
}

impl ServiceError {
    /// An error with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorEnvelope::new(code, message),
        }
    }

    /// From an envelope built elsewhere.
    pub fn from_envelope(body: ErrorEnvelope) -> Self {
        Self { body }
    }

    /// `INVALID_PARAMS`.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidParams, message)
    }

    /// `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The error code.
    pub fn code(&self) -> ErrorCode {
        self.body.code
    }
}

impl From<ErrorEnvelope> for ServiceError {
    fn from(body: ErrorEnvelope) -> Self {
        Self { body }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.body.code.as_str(), self.body.message)
    }
}

impl std::error::Error for ServiceError {}
