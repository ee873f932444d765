//! HTTP handlers: thin, typed, state passed explicitly. Business rules live in the services
//! (`admission`, `sessions`, `catalog`, `dispatch`, …) and the core crate.

pub mod artifacts;
pub mod catalog;
pub mod error;
pub mod openai;
pub mod pools;
pub mod sessions;
pub mod system;
pub mod tasks;
pub mod web;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ServiceError;

/// A JSON body whose every failure (bad JSON, wrong types, unknown fields, too large) is the
/// error envelope (ARCHITECTURE.md, "Errors") with serde's exact reason, not axum's plain-text
/// rejection.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            ServiceError::invalid(format!("cannot read the request body: {}", e.body_text()))
        })?;
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                if path.is_empty() || path == "." {
                    ServiceError::invalid(format!("invalid JSON body: {inner}"))
                } else {
                    ServiceError::invalid(format!("invalid JSON body at `{path}`: {inner}"))
                }
            })
    }
}
