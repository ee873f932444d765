//! The status page (`GET /`, assets under `/ui/…`, embedded in the binary) and the status
//! data it shows: `GET /v1/status` (one snapshot) and `GET /v1/status/stream` (SSE, one
//! `status` event per second). The page and its assets are public (they hold no data); the
//! two data endpoints need the token like every other `/v1` route (docs/DECISIONS.md, "Auth").

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use orch_api_types::StatusSnapshot;

use axum::Json;
use futures::Stream;
use serde::Deserialize;

use crate::error::ServiceError;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("../ui/index.html");
const APP_JS: &str = include_str!("../ui/app.js");
const STYLE_CSS: &str = include_str!("../ui/style.css");

/// How often `/v1/status/stream` sends a snapshot.
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Recent tasks in a snapshot unless `?recent=` says otherwise (at most 200).
pub const DEFAULT_RECENT: usize = 20;
/// Most recent tasks a snapshot may ask for; more is a 400.
pub const MAX_RECENT: usize = 200;

/// `recent` of a status query, within its bounds.
fn recent_of(q: &StatusQuery) -> Result<usize, ServiceError> {
    match q.recent {
        Some(n) if n > MAX_RECENT => Err(ServiceError::invalid(format!(
            "recent={n} is too large; at most {MAX_RECENT}"
        ))),
        n => Ok(n.unwrap_or(DEFAULT_RECENT)),
    }
}

/// The status page.
pub async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

/// A static asset of the page.
pub async fn asset(Path(file): Path<String>) -> Response {
    let (ty, body) = match file.as_str() {
        "app.js" => ("text/javascript; charset=utf-8", APP_JS),
        "style.css" => ("text/css; charset=utf-8", STYLE_CSS),
        _ => {
            return ServiceError::not_found(format!("no asset /ui/{file}")).into_response();
        }
    };
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, ty),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `?recent=N`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// Recent tasks to include (default 20, at most 200).
    pub recent: Option<usize>,
}

/// The daemon at a glance: queue per priority, GPUs, pools and replicas, recent tasks.
#[utoipa::path(get, path = "/v1/status", params(StatusQuery),
    responses((status = 200, body = StatusSnapshot), (status = 400, description = "Bad query", body = orch_api_types::ErrorEnvelope),
        (status = 401, body = orch_api_types::ErrorEnvelope)))]
pub async fn status(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Json<StatusSnapshot>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    tokio::task::spawn_blocking(move || {
        let mut snap = state.status.snapshot(recent);
        snap.history = state.status.history.since(0).0;
        snap
    })
    .await
    .map(Json)
    .map_err(|e| {
        ServiceError::new(
            orch_api_types::ErrorCode::Internal,
            format!("status snapshot failed: {e}"),
        )
    })
}

/// The same snapshot as `GET /v1/status`, as one SSE `status` event per second.
#[utoipa::path(get, path = "/v1/status/stream", params(StatusQuery),
    responses((status = 200, description = "`text/event-stream` of `status` events, each a StatusSnapshot", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad query", body = orch_api_types::ErrorEnvelope),
        (status = 401, body = orch_api_types::ErrorEnvelope)))]
pub async fn status_stream(
    State(state): State<AppState>,
    q: Result<Query<StatusQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ServiceError> {
    let Query(q) = q.map_err(bad_query)?;
    let recent = recent_of(&q)?;
    // `seen`: the newest history sample this stream sent (0: none, so the first event carries
    // all of it).
    let s = futures::stream::unfold(
        (state.status.clone(), true, 0u64),
        move |(view, first, seen)| async move {
            if !first {
                tokio::time::sleep(STATUS_EVERY).await;
            }
            let st = view.clone();
            let (snap, seen) = tokio::task::spawn_blocking(move || {
                let mut snap = st.snapshot(recent);
                let (history, newest) = st.history.since(seen);
                snap.history = history;
                (snap, newest)
            })
            .await
            .ok()?;
            let data = serde_json::to_string(&snap).unwrap_or_else(|_| "{}".into());
            Some((
                Ok(Event::default().event("status").data(data)),
                (view, false, seen),
            ))
        },
    );
    Ok(Sse::new(s).keep_alive(KeepAlive::default()))
}

/// A bad query string as the error envelope (axum's rejection is plain text and undocumented;
/// found by the chaos schema fuzzing).
fn bad_query(e: QueryRejection) -> ServiceError {
    ServiceError::invalid(format!("bad query: {}", e.body_text()))
}
