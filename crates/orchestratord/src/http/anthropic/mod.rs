//! Anthropic Messages door: `POST /v1/messages` (streaming and not) and
//! `POST /v1/messages/count_tokens`, what Claude Code (`ANTHROPIC_BASE_URL`) and the
//! `anthropic` SDKs speak (SPEC §14, docs/ANTHROPIC.md).
//!
//! Every request goes through the same admission as `POST /v1/tasks`
//! ([`crate::http::door::admit`]) with the agent-door rules (model aliases, `max_tokens`
//! clamped to the context, a prompt that fills it refused before enqueue). `wire` holds the
//! request types, `task` the request → task mapping, `stream` the reply and its events,
//! `error` Anthropic's error shape. The task id (`msg_…`) is the reply's `id` and the
//! `X-Llorch-Task-Id` header; a client that disconnects before the end cancels its task.

mod error;
mod stream;
mod task;
mod wire;

#[cfg(test)]
mod tests;

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use orch_api_types::anthropic::{AnthropicErrorBody, CountTokensReply, MsgReply, MsgSseFrame};
use orch_api_types::{Dialect, StreamEvent};

pub use error::{is_messages_path, AnthropicError};
pub use wire::MsgRequest;

use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::http::door::{self, CancelOnDrop, Entered};
use crate::state::AppState;
use stream::Events;
use task::{to_task, Translated};

/// Reads and parses the body, counting a refusal in the metrics.
async fn request(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<MsgRequest, AnthropicError> {
    door::read_json(state, headers, body).await
}

/// Adds `name: value` to `h` when `value` is a valid header value.
fn put_header(h: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn sse(f: stream::Frame) -> Result<Event, Infallible> {
    Ok(Event::default().event(f.0).data(f.1))
}

async fn handle(
    state: AppState,
    cid: CorrelationId,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    let r = request(&state, &headers, body).await?;
    let task_id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let Translated { req, dropped_tools } =
        to_task(&r, &headers, &task_id, false).inspect_err(|_| {
            state
                .metrics
                .rejected("", orch_api_types::ErrorCode::InvalidParams.as_str());
        })?;
    let Entered {
        adm,
        headers: mut hdrs,
    } = door::admit(&state, &cid.0, req, Dialect::Messages).await?;
    if !dropped_tools.is_empty() {
        put_header(
            &mut hdrs,
            "x-llorch-dropped-tools",
            &dropped_tools.join(","),
        );
    }
    let guard = CancelOnDrop::new(&state, &adm.task);
    let input_tokens = u64::from(adm.context.prompt_tokens.unwrap_or(0));
    let id = adm.task.id.clone();
    if r.stream {
        let mut events = Events::new(id, r.model.clone(), input_tokens);
        let head = events.start();
        let frames = adm.task.clone().follow();
        let body_events = frames.flat_map(move |f| {
            // The guard lives as long as the stream: a client that goes away cancels.
            let _keep = &guard;
            let out = match StreamEvent::parse(f.name, &f.data) {
                Ok(StreamEvent::Token(t)) => events.token(t),
                Ok(StreamEvent::End(e)) => events.end(&e),
                Ok(StreamEvent::Error(env)) => {
                    let e = AnthropicError::from(ServiceError::from_envelope(env));
                    vec![Events::error(e.shown_status(), &e.message)]
                }
                _ => Vec::new(),
            };
            futures::stream::iter(out.into_iter().map(sse))
        });
        let events = futures::stream::iter(head.into_iter().map(sse)).chain(body_events);
        return Ok((hdrs, Sse::new(events).keep_alive(KeepAlive::default())).into_response());
    }
    let c = door::collect(adm.task.clone(), guard).await?;
    let (reply, invalid) = stream::reply(id, r.model, c.text, c.tool_calls, &c.end, input_tokens);
    if !invalid.is_empty() {
        tracing::warn!(task_id = %reply.id, calls = ?invalid, "tool call arguments are not a JSON object; answered with input {{}}");
        put_header(&mut hdrs, "x-llorch-tool-input-invalid", &invalid.join(","));
    }
    Ok((hdrs, Json(reply)).into_response())
}

/// Anthropic Messages: a `message`, or with `stream: true` its events.
#[utoipa::path(post, path = "/v1/messages", request_body = MsgRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
        ("x-api-key" = Option<String>, Header, description = "the daemon's token (beside `Authorization: Bearer`)"),
    ),
    responses(
        (status = 200, description = "`message`, or with `stream: true` a `text/event-stream` of Anthropic's events (`message_start` … `message_stop`)",
            content((MsgReply = "application/json"), (MsgSseFrame = "text/event-stream")),
            headers(("X-Llorch-Task-Id" = String, description = "the task's id"),
                ("X-Llorch-Queue-Position" = u64, description = "tasks ahead at admission"),
                ("X-Llorch-Predicted-Start-Ms" = u64, description = "predicted wait"),
                ("X-Llorch-Max-Tokens-Clamped" = String, description = "`asked->granted` when `max_tokens` was clamped to the context"))),
        (status = 400, description = "Invalid request (`invalid_request_error`)", body = AnthropicErrorBody),
        (status = 404, description = "No pool serves the model (`not_found_error`)", body = AnthropicErrorBody),
        (status = 409, description = "Session expired or out of turns, retired catalog model, or (without streaming) the task was canceled", body = AnthropicErrorBody),
        (status = 413, description = "Body over `http.max_body_bytes` (`request_too_large`)", body = AnthropicErrorBody),
        (status = 429, description = "Session budget spent (`rate_limit_error`)", body = AnthropicErrorBody),
        (status = 529, description = "Queue full or no ready pool (`overloaded_error`)", body = AnthropicErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
    ))]
pub async fn messages(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    handle(state, cid, headers, body).await
}

/// Anthropic's token count: the prompt's tokens as the pool the request routes to counts them.
#[utoipa::path(post, path = "/v1/messages/count_tokens", request_body = MsgRequest,
    params(("x-api-key" = Option<String>, Header, description = "the daemon's token (beside `Authorization: Bearer`)")),
    responses(
        (status = 200, description = "`{input_tokens}`", body = CountTokensReply,
            headers(("x-llorch-token-count" = String, description = "`exact` (the engine's tokenizer) or `upper-bound` (no engine of the model was ready)"))),
        (status = 400, description = "Invalid request (`invalid_request_error`)", body = AnthropicErrorBody),
        (status = 404, description = "No pool serves the model (`not_found_error`)", body = AnthropicErrorBody),
        (status = 413, description = "Body over `http.max_body_bytes` (`request_too_large`)", body = AnthropicErrorBody),
        (status = 529, description = "No ready pool (`overloaded_error`)", body = AnthropicErrorBody),
    ))]
pub async fn count_tokens(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AnthropicError> {
    let r = request(&state, &headers, body).await?;
    let task_id = format!("count_{}", uuid::Uuid::new_v4().simple());
    let Translated { req, .. } = to_task(&r, &headers, &task_id, true)?;
    // The request's own rules hold here too, though nothing is admitted.
    crate::admission::validate::validate(&req)?;
    let n = crate::admission::context::count(&state.admission, req).await?;
    let mut h = HeaderMap::new();
    put_header(
        &mut h,
        "x-llorch-token-count",
        if n.exact { "exact" } else { "upper-bound" },
    );
    Ok((
        h,
        Json(CountTokensReply {
            input_tokens: u64::from(n.tokens),
        }),
    )
        .into_response())
}
