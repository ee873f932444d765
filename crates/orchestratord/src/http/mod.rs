//! HTTP handlers: thin, typed, state passed explicitly. Business rules live in the services
//! (`admission`, `pool_control`, `sessions`, `catalog`, `dispatch`, …) and the core crate.
//! The router ([`router()`]) and the OpenAPI document ([`openapi`]) live here, beside the
//! handlers they list.

pub mod anthropic;
pub mod artifacts;
pub mod catalog;
pub mod cors;
pub mod door;
pub mod embeddings;
pub mod error;
pub mod openai;
pub mod openapi;
pub mod pools;
pub mod responses;
mod router;
pub mod sessions;
pub mod system;
pub mod tasks;
pub mod web;

pub(crate) use router::router;

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ServiceError;

/// A JSON body whose every failure (bad JSON, wrong types, unknown fields, too large) is the
/// error envelope (ARCHITECTURE.md, "Errors") with serde's exact reason, not axum's plain-text
/// rejection.
pub struct JsonBody<T>(pub T);

/// Whole numbers written as floats (`4.0`: JSON Schema calls them integers, and Python
/// clients send them) become integers, so that integer fields take them.
pub fn integral_floats(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|f| n.is_f64() && f.fract() == 0.0) {
                // Exact conversions only: integral floats in the i64 / u64 ranges.
                if (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
                    *v = Value::from(f as i64);
                } else if (0.0..1.844_674_407_370_955_2e19).contains(&f) {
                    *v = Value::from(f as u64);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats),
        Value::Object(o) => o.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// Request bodies are JSON objects: serde would also fill a struct from an array
/// (`[null, null]`), which no client means (found by schemathesis).
pub fn object_only(bytes: &[u8]) -> Result<(), ServiceError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => Ok(()),
        Some(_) => Err(ServiceError::invalid(
            "invalid JSON body: the body must be a JSON object",
        )),
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ServiceError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ServiceError::new(
                    orch_api_types::ErrorCode::PayloadTooLarge,
                    "the request body is larger than http.max_body_bytes allows",
                )
            } else {
                ServiceError::invalid(format!("cannot read the request body: {}", e.body_text()))
            }
        })?;
        object_only(&bytes)?;
        let mut value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ServiceError::invalid(format!("invalid JSON body: {e}")))?;
        integral_floats(&mut value);
        serde_path_to_error::deserialize(value)
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
