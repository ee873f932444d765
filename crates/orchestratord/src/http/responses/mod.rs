//! OpenAI Responses door (SPEC §14; Codex CLI's `wire_api = "responses"`, the OpenAI Agents
//! SDK's default): `POST /v1/responses` (streaming and not), `POST /v1/responses/input_tokens`,
//! `GET` and `DELETE /v1/responses/{id}`.
//!
//! Every response is a task admitted through [`door::admit`] (same queues, priorities,
//! sessions, budgets, context clamp, queue-truth headers; cancel when the client leaves). The
//! task id (`resp_…`) is the response id. `wire` holds the request, `task` the translation,
//! `stream` the events and the response object, `store` the stored responses (SQLite, so
//! `previous_response_id` survives a restart). Errors are OpenAI's shape
//! ([`crate::http::openai::OaiError`]).

mod store;
mod stream;
mod task;
mod wire;

#[cfg(test)]
mod tests;

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use orch_api_types::openai::OaiErrorBody;
use orch_api_types::responses::{InputTokens, ResponseDeleted, ResponseObject, ResponsesSseFrame};
use orch_api_types::{Dialect, ErrorCode, StreamEvent};

pub use stream::{Meta, Render};
pub use task::{to_task, Translated};
pub use wire::ResponsesRequest;

use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::http::door::{self, now_s, CancelOnDrop, Entered};
use crate::http::openai::OaiError;
use crate::state::AppState;

/// Header naming the tool types dropped from `tools` (the engine cannot run them).
pub const DROPPED_TOOLS_HEADER: &str = "x-llorch-dropped-tools";
/// Header saying whether `input_tokens` is the engine's count (`exact`) or a bound.
pub const TOKEN_COUNT_HEADER: &str = "x-llorch-token-count";

/// Reads and translates a request; `id` is the task id to give it.
async fn translate(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    id: &str,
) -> Result<(ResponsesRequest, Translated), OaiError> {
    let reject = |e: &OaiError| state.metrics.rejected("", &e.code.to_ascii_uppercase());
    let r: ResponsesRequest = door::read_json(state, headers, body).await?;
    let prior = match r.previous_response_id.as_deref().filter(|p| !p.is_empty()) {
        Some(prev) => store::history(state, prev).await.inspect_err(reject)?,
        None => Vec::new(),
    };
    let t = to_task(state, &r, prior, headers, id).inspect_err(reject)?;
    Ok((r, t))
}

fn dropped_header(h: &mut HeaderMap, dropped: &[String]) {
    if dropped.is_empty() {
        return;
    }
    if let Ok(v) = HeaderValue::from_str(&dropped.join(",")) {
        h.insert(HeaderName::from_static(DROPPED_TOOLS_HEADER), v);
    }
}

/// OpenAI Responses: create a response (streaming with `stream: true`).
#[utoipa::path(post, path = "/v1/responses", request_body = ResponsesRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
    ),
    responses(
        (status = 200, description = "The `response` object, or with `stream: true` a `text/event-stream` of Responses events (`event:` = the event's `type`)",
            content((ResponseObject = "application/json"), (ResponsesSseFrame = "text/event-stream")),
            headers(("X-Llorch-Task-Id" = String, description = "the task's id (the response id)"),
                ("X-Llorch-Dropped-Tools" = String, description = "tool types dropped from `tools` (comma-separated), when any"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model, or `previous_response_id` names no stored response", body = OaiErrorBody),
        (status = 409, description = "Session expired or out of turns, Retired catalog model, or (without streaming) the task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    let id = format!("resp_{}", uuid::Uuid::new_v4().simple());
    let (r, t) = translate(&state, &headers, body, &id).await?;
    let Entered {
        adm,
        headers: mut hdrs,
    } = door::admit(&state, &cid.0, t.task, Dialect::Responses).await?;
    dropped_header(&mut hdrs, &t.dropped_tools);
    let guard = CancelOnDrop::new(&state, &adm.task);
    let mut render = Render::new(Meta {
        id: adm.task.id.clone(),
        created_at: now_s(),
        model: r.model.clone(),
        instructions: r.instructions.clone(),
        tools: t.tools,
        tool_choice: t.tool_choice,
        parallel_tool_calls: r.parallel_tool_calls.unwrap_or(true),
        text: t.text,
        max_output_tokens: r.max_output_tokens,
        previous_response_id: r.previous_response_id.clone(),
        // `responses.max_stored: 0` stores nothing: the reply says so.
        store: r.store.unwrap_or(true) && state.config.responses.max_stored > 0,
        temperature: r.temperature,
        top_p: r.top_p,
        metadata: r.metadata.clone().unwrap_or_default(),
        user: r.user.clone(),
    });
    let history = t.history;
    let frames = Box::pin(adm.task.clone().follow());
    if !r.stream {
        let obj = follow_to_end(&state, frames, &mut render, &history).await?;
        drop(guard);
        return Ok((hdrs, Json(obj)).into_response());
    }
    let head: Vec<Event> = render.start().iter().map(stream::sse).collect();
    let ctx = (frames, render, guard, state, history, false);
    let body = futures::stream::unfold(
        ctx,
        |(mut frames, mut render, guard, state, history, done)| async move {
            if done {
                return None;
            }
            let f = frames.next().await?;
            let (evs, done) = match StreamEvent::parse(f.name, &f.data) {
                Ok(StreamEvent::Token(t)) => (render.token(t), false),
                Ok(StreamEvent::End(e)) => {
                    let (evs, obj) = render.end(&e);
                    // Stored before the client reads `response.completed`, so it can chain.
                    save(&state, &obj, &history).await;
                    (evs, true)
                }
                Ok(StreamEvent::Error(env)) => {
                    let e = OaiError::from(ServiceError::from_envelope(env));
                    (render.fail(&e.code, &e.message), true)
                }
                _ => (Vec::new(), false),
            };
            let out: Vec<Event> = evs.iter().map(stream::sse).collect();
            Some((out, (frames, render, guard, state, history, done)))
        },
    )
    .flat_map(|v| futures::stream::iter(v.into_iter().map(Ok::<Event, Infallible>)));
    let events = futures::stream::iter(head.into_iter().map(Ok::<Event, Infallible>)).chain(body);
    Ok((hdrs, Sse::new(events).keep_alive(KeepAlive::default())).into_response())
}

/// Follows a task to its end through `render`; the final object, stored.
async fn follow_to_end<S>(
    state: &AppState,
    mut frames: S,
    render: &mut Render,
    history: &[orch_api_types::ChatMessage],
) -> Result<ResponseObject, OaiError>
where
    S: futures::Stream<Item = std::sync::Arc<crate::task::Frame>> + Unpin,
{
    while let Some(f) = frames.next().await {
        match StreamEvent::parse(f.name, &f.data) {
            Ok(StreamEvent::Token(t)) => {
                render.token(t);
            }
            Ok(StreamEvent::End(e)) => {
                let (_, obj) = render.end(&e);
                save(state, &obj, history).await;
                return Ok(obj);
            }
            Ok(StreamEvent::Error(env)) => {
                return Err(ServiceError::from_envelope(env).into());
            }
            _ => {}
        }
    }
    Err(ServiceError::new(ErrorCode::Internal, "the task ended without a result").into())
}

/// Stores `obj` with the conversation it ends.
async fn save(state: &AppState, obj: &ResponseObject, history: &[orch_api_types::ChatMessage]) {
    let mut all = history.to_vec();
    all.extend(stream::reply_message(&obj.output));
    store::save(state, obj, &all).await;
}

/// OpenAI Responses: the prompt's tokens, as the model's engine counts them.
#[utoipa::path(post, path = "/v1/responses/input_tokens", request_body = ResponsesRequest,
    responses(
        (status = 200, description = "`{object: \"response.input_tokens\", input_tokens}`", body = InputTokens,
            headers(("X-Llorch-Token-Count" = String, description = "`exact` (the engine's tokenizer) or `upper-bound` (no engine of the model was ready)"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model, or `previous_response_id` names no stored response", body = OaiErrorBody),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn input_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    let id = format!("resp_count_{}", uuid::Uuid::new_v4().simple());
    let (_, t) = translate(&state, &headers, body, &id).await?;
    let n = crate::admission::context::count(&state.admission, t.task).await?;
    let mut h = HeaderMap::new();
    h.insert(
        HeaderName::from_static(TOKEN_COUNT_HEADER),
        HeaderValue::from_static(if n.exact { "exact" } else { "upper-bound" }),
    );
    dropped_header(&mut h, &t.dropped_tools);
    Ok((
        h,
        Json(InputTokens {
            object: "response.input_tokens".into(),
            input_tokens: u64::from(n.tokens),
        }),
    )
        .into_response())
}

/// OpenAI Responses: a stored response.
#[utoipa::path(get, path = "/v1/responses/{id}", params(("id" = String, Path, description = "response id (`resp_…`)")),
    responses((status = 200, body = ResponseObject),
        (status = 404, description = "Not stored, deleted or expired (OpenAI error shape)", body = OaiErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, OaiError> {
    let r = store::get(&state, &id)
        .await?
        .ok_or_else(|| store::not_found(&id))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r.response,
    )
        .into_response())
}

/// OpenAI Responses: delete a stored response.
#[utoipa::path(delete, path = "/v1/responses/{id}", params(("id" = String, Path, description = "response id (`resp_…`)")),
    responses((status = 200, body = ResponseDeleted),
        (status = 404, description = "Not stored, deleted or expired (OpenAI error shape)", body = OaiErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ResponseDeleted>, OaiError> {
    if !store::delete(&state, &id).await? {
        return Err(store::not_found(&id));
    }
    Ok(Json(ResponseDeleted {
        id,
        object: "response".into(),
        deleted: true,
    }))
}
