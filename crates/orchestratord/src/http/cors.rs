//! CORS for browser-based clients (`http.cors.allow_origins`). The layer sits outside
//! authentication, so a preflight `OPTIONS` from an allowed origin is answered without a
//! token; the real request still needs one. No origins configured: no layer, no CORS headers.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use orch_config::Config;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// Response headers a browser client may read: the task id and queue headers, the
/// backpressure headers, the correlation id, the session budget headers and the agent doors'
/// notes (dropped tools, token counts, clamped `max_tokens`, prompt tokens).
const EXPOSED: &[&str] = &[
    "x-llorch-task-id",
    "x-llorch-pool",
    "x-llorch-queue-position",
    "x-llorch-predicted-start-ms",
    "x-llorch-dropped-tools",
    "x-llorch-token-count",
    "x-llorch-max-tokens-clamped",
    "x-llorch-prompt-tokens",
    "retry-after",
    "x-backoff-ms",
    crate::correlation::HEADER,
    "x-budget-tokens-remaining",
    "x-budget-time-remaining-ms",
    "x-budget-cost-remaining",
];

/// The CORS layer for `cfg`, or `None` when no origin is allowed.
pub fn layer(cfg: &Config) -> Option<CorsLayer> {
    let origins = &cfg.http.cors.allow_origins;
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        // Validated by the config (scheme://host[:port]).
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            // The SDKs send `Authorization` and their own `x-stainless-*` headers; a `*`
            // would not cover `Authorization`, so the requested headers are mirrored.
            .allow_headers(AllowHeaders::mirror_request())
            .expose_headers(
                EXPOSED
                    .iter()
                    .map(|h| HeaderName::from_static(h))
                    .collect::<Vec<_>>(),
            )
            .max_age(Duration::from_secs(600)),
    )
}
