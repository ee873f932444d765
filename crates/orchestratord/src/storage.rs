//! Calling the blocking `orch-store` from async code, and its errors as domain errors.

use orch_api_types::ErrorCode;
use orch_store::StoreError;

use crate::error::ServiceError;

/// Runs blocking store work off the async threads; a panic or cancellation is `INTERNAL`.
pub async fn blocking<T, F>(f: F) -> Result<T, ServiceError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ServiceError> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ServiceError::new(
            ErrorCode::Internal,
            format!("a storage task failed: {e}; the daemon logged details"),
        )
    })?
}

/// The domain error for a store error.
pub fn store_err(e: StoreError) -> ServiceError {
    let code = match &e {
        StoreError::NotFound { .. } => ErrorCode::NotFound,
        StoreError::Conflict(_) => ErrorCode::Conflict,
        StoreError::Invalid(_) => ErrorCode::InvalidParams,
        StoreError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
        StoreError::Corrupt { .. } | StoreError::Io { .. } | StoreError::Db { .. } => {
            tracing::error!(error = %e, "storage error");
            ErrorCode::Internal
        }
    };
    ServiceError::new(code, e.to_string())
}
