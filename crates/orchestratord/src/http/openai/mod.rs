//! OpenAI-compatible door: `GET /v1/models`, `POST /v1/completions`,
//! `POST /v1/chat/completions` (streaming and not).
//!
//! Every request goes through the same admission path as `POST /v1/tasks`
//! ([`crate::http::door::admit`]): same queues, priorities, routing, sessions, budgets and
//! metrics. `wire` holds the request types, `task` the request → task mapping, `stream` the
//! replies and chunks, `error` OpenAI's error shape. Chat templating is the engine's
//! (llama-server `/apply-template`); the task id is generated (`chatcmpl-…` / `cmpl-…`) and
//! returned as the response `id` and in the `X-Llorch-Task-Id` header, so `/v1/tasks/{id}`
//! and `llorch` work on it; a client that disconnects before the end cancels its task.

mod error;
mod stream;
mod task;
mod wire;

#[cfg(test)]
mod tests;

use std::convert::Infallible;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::StreamExt;
use orch_api_types::openai::{
    AssistantMessage, ChatChoice, ChatCompletion, ChunkDelta, OaiErrorBody, OaiModel, OaiModelList,
    TextChoice, TextCompletion,
};
use orch_api_types::{Dialect, ErrorCode, StreamEvent};

pub use error::{is_openai_path, OaiError, OpenAiShape};
pub use stream::{compact, data_event};
pub use task::{ctx_for, Kind};
pub use wire::{OaiRequest, OaiSseFrame};

use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::http::door::{self, now_s, CancelOnDrop, Entered};
use crate::state::AppState;
use stream::{chat_logprobs, text_logprobs, usage, Chunks};
use task::to_task;

async fn handle(
    state: AppState,
    cid: CorrelationId,
    headers: HeaderMap,
    body: Body,
    kind: Kind,
) -> Result<Response, OaiError> {
    let r: OaiRequest = door::read_json(&state, &headers, body).await?;
    let (prefix, dialect) = match kind {
        Kind::Chat => ("chatcmpl", Dialect::ChatCompletions),
        Kind::Completion => ("cmpl", Dialect::Completions),
    };
    let task_id = format!("{prefix}-{}", uuid::Uuid::new_v4().simple());
    let req = to_task(&state, kind, &r, &headers, &task_id).inspect_err(|_| {
        state
            .metrics
            .rejected("", ErrorCode::InvalidParams.as_str());
    })?;
    let Entered { adm, headers: hdrs } = door::admit(&state, &cid.0, req, dialect).await?;
    let guard = CancelOnDrop::new(&state, &adm.task);
    let model = r.model.clone();
    let created = now_s();
    let id = adm.task.id.clone();
    if r.stream {
        let include_usage = r.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let chunks = Chunks {
            kind,
            id,
            model,
            created,
        };
        let mut head = Vec::new();
        if kind == Kind::Chat {
            head.push(chunks.content(
                ChunkDelta {
                    content: Some(String::new()),
                    role: Some("assistant".into()),
                    tool_calls: None,
                },
                None,
            ));
        }
        let frames = adm.task.clone().follow();
        let mut offset = 0u64;
        let body_events = frames.flat_map(move |f| {
            // The guard lives as long as the stream: a client that goes away cancels.
            let _keep = &guard;
            let out: Vec<Event> = match StreamEvent::parse(f.name, &f.data) {
                Ok(StreamEvent::Token(t)) => chunks.token(t, &mut offset).into_iter().collect(),
                Ok(StreamEvent::End(e)) => {
                    let mut v = vec![chunks.content(ChunkDelta::default(), Some(&e.finish_reason))];
                    if include_usage {
                        v.push(chunks.usage(usage(&e)));
                    }
                    v.push(Event::default().data("[DONE]"));
                    v
                }
                Ok(StreamEvent::Error(env)) => {
                    let e = OaiError::from(ServiceError::from_envelope(env));
                    vec![data_event(&e.body())]
                }
                _ => Vec::new(),
            };
            futures::stream::iter(out.into_iter().map(Ok::<Event, Infallible>))
        });
        let events =
            futures::stream::iter(head.into_iter().map(Ok::<Event, Infallible>)).chain(body_events);
        return Ok((hdrs, Sse::new(events).keep_alive(KeepAlive::default())).into_response());
    }
    let c = door::collect(adm.task.clone(), guard).await?;
    let usage = usage(&c.end);
    Ok(match kind {
        Kind::Chat => (
            hdrs,
            Json(ChatCompletion {
                choices: vec![ChatChoice {
                    finish_reason: c.end.finish_reason,
                    index: 0,
                    logprobs: c.logprobs.map(chat_logprobs),
                    message: AssistantMessage {
                        // OpenAI answers a reply of only tool calls with `content: null`.
                        content: (!c.text.is_empty() || c.tool_calls.is_none()).then_some(c.text),
                        role: "assistant".into(),
                        tool_calls: c.tool_calls,
                    },
                }],
                created,
                id: adm.task.id.clone(),
                model: r.model,
                object: "chat.completion".into(),
                usage,
            }),
        )
            .into_response(),
        Kind::Completion => (
            hdrs,
            Json(TextCompletion {
                choices: vec![TextChoice {
                    finish_reason: Some(c.end.finish_reason),
                    index: 0,
                    logprobs: c.logprobs.map(|l| text_logprobs(l, &mut 0)),
                    text: c.text,
                }],
                created,
                id: adm.task.id.clone(),
                model: r.model,
                object: "text_completion".into(),
                usage: Some(usage),
            }),
        )
            .into_response(),
    })
}

/// OpenAI-compatible chat completion (streaming with `stream: true`).
#[utoipa::path(post, path = "/v1/chat/completions", request_body = OaiRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
    ),
    responses(
        (status = 200, description = "`chat.completion`, or with `stream: true` a `text/event-stream` of `chat.completion.chunk`s ending with `data: [DONE]`",
            content((ChatCompletion = "application/json"), (OaiSseFrame = "text/event-stream")),
            headers(("X-Llorch-Task-Id" = String, description = "the task's id"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "Session expired or out of turns, Retired catalog model, or (without streaming) the task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn chat_completions(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    handle(state, cid, headers, body, Kind::Chat).await
}

/// OpenAI-compatible text completion (streaming with `stream: true`).
#[utoipa::path(post, path = "/v1/completions", request_body = OaiRequest,
    params(
        ("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`"),
        ("X-Llorch-Session" = Option<String>, Header, description = "session id"),
    ),
    responses(
        (status = 200, description = "`text_completion`, or with `stream: true` a `text/event-stream` of chunks ending with `data: [DONE]`",
            content((TextCompletion = "application/json"), (OaiSseFrame = "text/event-stream"))),
        (status = 400, description = "Invalid request (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "Session expired or out of turns, Retired catalog model, or (without streaming) the task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn completions(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    handle(state, cid, headers, body, Kind::Completion).await
}

fn models_list(state: &AppState) -> Vec<OaiModel> {
    let created = now_s();
    let mut out: Vec<OaiModel> = Vec::new();
    for p in state.pools.pools() {
        let mut ids = vec![p.id().to_owned()];
        if let Some(m) = &p.config().model {
            let stem = std::path::Path::new(m)
                .file_name()
                .and_then(|f| f.to_str())
                .map(|f| f.strip_suffix(".gguf").unwrap_or(f).to_owned())
                .unwrap_or_else(|| m.clone());
            ids.push(stem);
        }
        for id in ids {
            if out.iter().any(|o| o.id == id) {
                continue;
            }
            out.push(OaiModel {
                created,
                id,
                object: "model".into(),
                owned_by: "llama-orch".into(),
                pool_id: p.id().to_owned(),
                ready: p.is_ready(),
            });
        }
    }
    out
}

/// OpenAI-compatible model list: each pool id and its model's file name.
#[utoipa::path(get, path = "/v1/models",
    responses((status = 200, description = "`{object: \"list\", data: [model]}`", body = OaiModelList)))]
pub async fn models(State(state): State<AppState>) -> Json<OaiModelList> {
    Json(OaiModelList {
        data: models_list(&state),
        object: "list".into(),
    })
}

/// One model of `GET /v1/models`.
#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "model id")),
    responses((status = 200, body = OaiModel), (status = 404, description = "Unknown model (OpenAI error shape)", body = OaiErrorBody)))]
pub async fn model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<OaiModel>, OaiError> {
    models_list(&state)
        .into_iter()
        .find(|m| m.id == id)
        .map(Json)
        .ok_or_else(|| {
            ServiceError::new(
                ErrorCode::ModelNotFound,
                format!("no pool serves model `{id}`; see GET /v1/models"),
            )
            .into()
        })
}
