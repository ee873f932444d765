//! `POST /v1/tasks`, `GET /v1/tasks/{id}`, `GET /v1/tasks/{id}/stream`,
//! `POST /v1/tasks/{id}/cancel`: thin handlers over [`crate::admission`].

use std::convert::Infallible;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use futures::{Stream, StreamExt};
use orch_api_types::{
    AdmissionResponse, BudgetRemaining, CancelResponse, ErrorEnvelope, TaskRequest, TaskStatus,
};

use crate::admission::{self, Admitted};
use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::http::JsonBody;
use crate::state::AppState;

/// `X-Budget-*` headers for a remaining budget (only the limited dimensions).
pub fn budget_headers(rem: &BudgetRemaining, h: &mut HeaderMap) {
    let mut put = |name: &'static str, v: String| {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(name, v);
        }
    };
    if let Some(t) = rem.tokens {
        put("x-budget-tokens-remaining", t.to_string());
    }
    if let Some(t) = rem.time_ms {
        put("x-budget-time-remaining-ms", t.to_string());
    }
    if let Some(c) = rem.cost {
        put("x-budget-cost-remaining", format!("{c}"));
    }
}

/// `Location` (the task's stream) and the budget headers of an admission.
pub fn admitted_headers(adm: &Admitted) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&adm.task.stream_path()) {
        headers.insert(header::LOCATION, v);
    }
    if let Some(rem) = adm.budget_remaining() {
        budget_headers(&rem, &mut headers);
    }
    headers
}

/// Admit a task.
#[utoipa::path(post, path = "/v1/tasks", operation_id = "create_task", request_body = TaskRequest,
    responses(
        (status = 202, description = "Admitted", body = AdmissionResponse,
            headers(("X-Budget-Tokens-Remaining" = u64, description = "session tokens left (sessions with a token budget)"),
                ("X-Budget-Time-Remaining-Ms" = u64, description = "session engine ms left (time budget)"),
                ("X-Budget-Cost-Remaining" = f64, description = "session cost left (cost budget)"))),
        (status = 400, description = "Invalid parameters", body = ErrorEnvelope),
        (status = 401, description = "Missing or bad token", body = ErrorEnvelope),
        (status = 404, description = "No pool serves the model", body = ErrorEnvelope),
        (status = 409, description = "Duplicate task id (`DUPLICATE_TASK`), Retired catalog model (`MODEL_RETIRED`), session expired (`SESSION_EXPIRED`) or out of turns (`SESSION_TURNS_EXHAUSTED`)", body = ErrorEnvelope),
        (status = 429, description = "Queue full (`ADMISSION_REJECT`) or session budget exceeded (`BUDGET_EXCEEDED`)", body = ErrorEnvelope,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    body: Result<JsonBody<TaskRequest>, ServiceError>,
) -> Result<impl IntoResponse, ServiceError> {
    let JsonBody(req) = body.inspect_err(|e| {
        state.metrics.rejected("", e.body.code.as_str());
    })?;
    let adm = admission::admit(&state.admission, &cid.0, req).await?;
    Ok((
        StatusCode::ACCEPTED,
        admitted_headers(&adm),
        Json(adm.response),
    ))
}

/// A task's state.
#[utoipa::path(get, path = "/v1/tasks/{id}", params(("id" = String, Path, description = "task id")),
    responses((status = 200, body = TaskStatus), (status = 404, body = ErrorEnvelope)))]
pub async fn get_task(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<TaskStatus>, ServiceError> {
    Ok(Json(admission::find(&state.admission, &id)?.status()))
}

/// One event of a task's `text/event-stream`, as SSE clients parse it: the event name and its
/// JSON payload (`StartedEvent`, `TokenEvent`, `MetricsEvent`, `EndEvent` or `ErrorEnvelope`).
/// Documented per event, as SSE-aware tools validate streams (found by the chaos schema
/// fuzzing: a plain `string` schema made every event a violation).
#[derive(utoipa::ToSchema)]
#[expect(
    dead_code,
    reason = "schema only: documents the SSE frames in the OpenAPI document"
)]
pub struct SseFrame {
    /// `started`, `token`, `metrics`, `end` or `error`.
    #[schema(pattern = "^(started|token|metrics|end|error)$")]
    pub event: String,
    /// The event's payload, one line of JSON.
    pub data: String,
}

/// The task's events as Server-Sent Events, from the start.
#[utoipa::path(get, path = "/v1/tasks/{id}/stream", params(("id" = String, Path, description = "task id")),
    responses(
        (status = 200, description = "`text/event-stream`: started, token*, metrics*, then end or error", content_type = "text/event-stream", body = SseFrame),
        (status = 404, body = ErrorEnvelope)))]
pub async fn stream(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<
    (
        HeaderMap,
        Sse<impl Stream<Item = Result<Event, Infallible>>>,
    ),
    ServiceError,
> {
    let task = admission::find(&state.admission, &id)?;
    // The budget left at admission, once more on the stream (docs/STATE.md).
    let mut headers = HeaderMap::new();
    if let Some(rem) = task.ext.session().and_then(|b| b.remaining) {
        budget_headers(&rem, &mut headers);
    }
    let frames = task
        .follow()
        .map(|f| Ok(Event::default().event(f.name).data(&f.data)));
    Ok((headers, Sse::new(frames).keep_alive(KeepAlive::default())))
}

/// Cancel a queued or running task (idempotent).
#[utoipa::path(post, path = "/v1/tasks/{id}/cancel", params(("id" = String, Path, description = "task id")),
    responses((status = 202, body = CancelResponse), (status = 404, body = ErrorEnvelope)))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<CancelResponse>), ServiceError> {
    let task = admission::cancel(&state.admission, &id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelResponse {
            task_id: task.id.clone(),
            state: task.state(),
        }),
    ))
}
