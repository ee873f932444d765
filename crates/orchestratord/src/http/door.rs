//! What every agent-facing door shares (OpenAI Chat Completions and Completions, Anthropic
//! Messages, OpenAI Responses, embeddings and rerank): reading the body under
//! `http.max_body_bytes`, errors in the door's own shape ([`ErrorShape`], [`DoorError`]),
//! priority and session from headers, admission with the agent-door rules ([`admit`]), the
//! queue-truth response headers, cancel when the client goes away, and a task's whole reply
//! for the non-streamed answers ([`collect`]).
//!
//! Each dialect is a module beside this one: its wire types, its request → [`TaskRequest`]
//! translation, its reply and stream rendering and its error shape. They all end in the same
//! admission (`crate::admission`) and follow the same task transcript.

use std::marker::PhantomData;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use orch_api_types::{
    Dialect, EndEvent, ErrorCode, FunctionCall, StreamEvent, TaskRequest, TokenLogprob, ToolCall,
    ToolCallDelta,
};
use serde::de::DeserializeOwned;

use crate::admission::{self, Admitted};
use crate::error::ServiceError;
use crate::state::AppState;
use crate::task::Task;

/// Header carrying the priority (`interactive` | `batch`).
pub const PRIORITY_HEADER: &str = "x-llorch-priority";
/// Header carrying the session id.
pub const SESSION_HEADER: &str = "x-llorch-session";
/// `max_tokens` when the request gives none (capped by the pool's context per slot).
pub const DEFAULT_MAX_TOKENS: u32 = 512;

/// Bodies over the limit are still read (and dropped) up to this size, so that a client that
/// is still sending reads the 413 instead of a reset connection (which SDKs retry).
const DRAIN_LIMIT: u64 = 64 << 20;

/// How a dialect writes an error: its body and, where it differs from the daemon's, its
/// status.
pub trait ErrorShape {
    /// The error body for `status` with our `message` and lowercase `code`.
    fn body(status: StatusCode, message: &str, code: &str) -> serde_json::Value;

    /// The status the dialect answers for the daemon's `status` and `code`.
    fn status(status: StatusCode, _code: &str) -> StatusCode {
        status
    }
}

/// An error on a door, written in the door's shape `S`.
pub struct DoorError<S> {
    /// The daemon's status for it (the shape may map it, [`ErrorShape::status`]).
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// The daemon's error code, lowercase (`invalid_params`, `admission_reject`, …).
    pub code: String,
    /// Backoff for 429/503, sent as `Retry-After` and `X-Backoff-Ms`.
    pub retry_after_ms: Option<u64>,
    /// Close the connection after answering (the body was not read to its end).
    pub close: bool,
    shape: PhantomData<S>,
}

impl<S> std::fmt::Debug for DoorError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DoorError")
            .field("status", &self.status)
            .field("message", &self.message)
            .field("code", &self.code)
            .finish()
    }
}

impl<S: ErrorShape> DoorError<S> {
    /// An error with `status` and `code`.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: code.to_owned(),
            retry_after_ms: None,
            close: false,
            shape: PhantomData,
        }
    }

    /// 400 with the daemon's `invalid_params` code.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_params", message)
    }

    /// 413: the body is over `http.max_body_bytes`.
    pub fn too_large(limit: u64, close: bool) -> Self {
        Self {
            close,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is over {limit} bytes (http.max_body_bytes); send less, or raise the limit in the daemon's config"
                ),
            )
        }
    }

    /// 405 on one of the door's paths.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed on this route; see /openapi.json",
        )
    }

    /// The status the client sees.
    pub fn shown_status(&self) -> StatusCode {
        S::status(self.status, &self.code)
    }

    /// The body the client sees (also sent inside a broken stream).
    pub fn body(&self) -> serde_json::Value {
        S::body(self.shown_status(), &self.message, &self.code)
    }
}

impl<S: ErrorShape> From<ServiceError> for DoorError<S> {
    fn from(e: ServiceError) -> Self {
        Self {
            retry_after_ms: e.body.retry_after_ms,
            ..Self::new(
                crate::http::error::status_for(e.body.code),
                &e.body.code.as_str().to_ascii_lowercase(),
                e.body.message,
            )
        }
    }
}

impl<S: ErrorShape> IntoResponse for DoorError<S> {
    fn into_response(self) -> Response {
        let mut resp = (self.shown_status(), axum::Json(self.body())).into_response();
        if self.close {
            resp.headers_mut().insert(
                axum::http::header::CONNECTION,
                HeaderValue::from_static("close"),
            );
        }
        crate::http::error::retry_headers(&mut resp, self.retry_after_ms);
        resp
    }
}

/// Parses a JSON body into `T`, naming the JSON path of the bad field.
pub fn parse_json<T: DeserializeOwned, S: ErrorShape>(bytes: &Bytes) -> Result<T, DoorError<S>> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| DoorError::invalid(format!("invalid JSON body: {e}")))?;
    if !value.is_object() {
        return Err(DoorError::invalid(
            "invalid JSON body: the body must be a JSON object",
        ));
    }
    // `4.0` is the integer 4 (JSON Schema's reading, and Python clients send it).
    crate::http::integral_floats(&mut value);
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path.is_empty() || path == "." {
            DoorError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            DoorError::invalid(format!("invalid JSON body at `{path}`: {inner}"))
        }
    })
}

/// Reads and drops a refused request's body (up to [`DRAIN_LIMIT`]) before answering `e`.
/// A server that answers without reading the body closes the connection after the answer,
/// and an SDK that already sent its next request on that pooled connection sees "server
/// disconnected" instead of an answer.
pub async fn refuse<S: ErrorShape>(e: DoorError<S>, body: Body) -> Response {
    use axum::body::HttpBody;
    if body.size_hint().lower() > DRAIN_LIMIT {
        return DoorError { close: true, ..e }.into_response();
    }
    let mut data = body.into_data_stream();
    let mut total: u64 = 0;
    let mut complete = true;
    while let Some(chunk) = data.next().await {
        match chunk {
            Ok(c) => total = total.saturating_add(c.len() as u64),
            Err(_) => {
                complete = false;
                break;
            }
        }
        if total > DRAIN_LIMIT {
            complete = false;
            break;
        }
    }
    DoorError {
        close: !complete,
        ..e
    }
    .into_response()
}

/// Reads the request body up to `limit` bytes; a larger one is drained (up to
/// [`DRAIN_LIMIT`]) and answered with 413, so the client reads the answer.
pub async fn read_body<S: ErrorShape>(
    headers: &HeaderMap,
    body: Body,
    limit: u64,
) -> Result<Bytes, DoorError<S>> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        return Err(DoorError::too_large(limit, true));
    }
    let mut data = body.into_data_stream();
    let mut buf = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = data.next().await {
        let chunk =
            chunk.map_err(|e| DoorError::invalid(format!("cannot read the request body: {e}")))?;
        total = total.saturating_add(chunk.len() as u64);
        if total > DRAIN_LIMIT {
            return Err(DoorError::too_large(limit, true));
        }
        if total <= limit {
            buf.extend_from_slice(&chunk);
        }
    }
    if total > limit {
        return Err(DoorError::too_large(limit, false));
    }
    Ok(Bytes::from(buf))
}

/// The request body as `T`: read under `http.max_body_bytes` ([`read_body`]) and parsed
/// ([`parse_json`]); a refusal is counted in the rejection metrics with its code.
pub async fn read_json<T: DeserializeOwned, S: ErrorShape>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<T, DoorError<S>> {
    let count = |e: &DoorError<S>| state.metrics.rejected("", &e.code.to_ascii_uppercase());
    let bytes = read_body(headers, body, state.config.http.max_body_bytes)
        .await
        .inspect_err(count)?;
    parse_json(&bytes).inspect_err(count)
}

/// A header's trimmed, non-empty text.
pub fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The priority: the body's field if the dialect has one, else `X-Llorch-Priority`, else
/// `interactive`.
pub fn priority<S: ErrorShape>(
    body: Option<&str>,
    headers: &HeaderMap,
) -> Result<String, DoorError<S>> {
    let p = body
        .or_else(|| header_str(headers, PRIORITY_HEADER))
        .unwrap_or("interactive");
    if p != "interactive" && p != "batch" {
        return Err(DoorError::invalid(format!(
            "priority `{p}` is not `interactive` or `batch` (header X-Llorch-Priority)"
        )));
    }
    Ok(p.to_owned())
}

/// The session: the body's field if the dialect has one, else `X-Llorch-Session`.
pub fn session(body: Option<&str>, headers: &HeaderMap) -> Option<String> {
    body.or_else(|| header_str(headers, SESSION_HEADER))
        .map(str::to_owned)
}

/// A task admitted through a door, with the response headers every door sends.
pub struct Entered {
    /// The admitted task and the 202's facts.
    pub adm: Admitted,
    /// `X-Llorch-Task-Id`, `-Pool`, `-Queue-Position`, `-Predicted-Start-Ms`, budget headers.
    pub headers: HeaderMap,
}

/// Admits `req`, which came through `dialect`'s door: the same admission as `POST /v1/tasks`.
pub async fn admit(
    state: &AppState,
    correlation_id: &str,
    req: TaskRequest,
    dialect: Dialect,
) -> Result<Entered, ServiceError> {
    let adm = admission::admit_via(&state.admission, correlation_id, req, dialect).await?;
    let headers = queue_headers(&adm);
    Ok(Entered { adm, headers })
}

/// The queue-truth headers of an admitted task.
fn queue_headers(adm: &Admitted) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(rem) = adm.budget_remaining() {
        crate::http::tasks::budget_headers(&rem, &mut h);
    }
    let pairs = [
        ("x-llorch-task-id", adm.task.id.clone()),
        ("x-llorch-pool", adm.response.pool_id.clone()),
        (
            "x-llorch-queue-position",
            adm.response.queue_position.to_string(),
        ),
        (
            "x-llorch-predicted-start-ms",
            adm.response.predicted_start_ms.to_string(),
        ),
    ];
    let clamp = adm.context.clamped_from.map(|from| {
        (
            "x-llorch-max-tokens-clamped",
            format!("{from}->{}", adm.context.max_tokens),
        )
    });
    let prompt = adm
        .context
        .prompt_tokens
        .map(|n| ("x-llorch-prompt-tokens", n.to_string()));
    for (k, v) in pairs.into_iter().chain(clamp).chain(prompt) {
        if let Ok(v) = HeaderValue::from_str(&v) {
            h.insert(HeaderName::from_static(k), v);
        }
    }
    h
}

/// Cancels the task when dropped before it ended (the client went away). Streams hold it for
/// as long as they are read; non-streamed answers until the reply is complete.
pub struct CancelOnDrop {
    admission: Arc<admission::Admission>,
    task: Arc<Task>,
}

impl CancelOnDrop {
    /// Guards `task`.
    pub fn new(state: &AppState, task: &Arc<Task>) -> Self {
        Self {
            admission: state.admission.clone(),
            task: task.clone(),
        }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.task.state().is_terminal() {
            return;
        }
        let admission = self.admission.clone();
        let id = self.task.id.clone();
        tracing::info!(task_id = %id, "client disconnected; canceling its task");
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = admission::cancel(&admission, &id).await;
            });
        }
    }
}

/// Seconds since the Unix epoch (the `created` of replies).
pub fn now_s() -> u64 {
    crate::clock::now_ms() / 1000
}

/// Tool-call pieces merged into whole calls, by index (a non-streamed reply).
#[derive(Default)]
pub struct CallsSoFar(Vec<(u32, Option<String>, Option<String>, String)>);

impl CallsSoFar {
    /// Adds one piece.
    pub fn add(&mut self, d: ToolCallDelta) {
        let i = match self.0.iter().position(|c| c.0 == d.index) {
            Some(i) => i,
            None => {
                self.0.push((d.index, None, None, String::new()));
                self.0.len() - 1
            }
        };
        let c = &mut self.0[i];
        // Servers send the id and name once, on a call's first piece.
        if c.1.is_none() {
            c.1 = d.id;
        }
        if c.2.is_none() {
            c.2 = d.function.name;
        }
        if let Some(a) = d.function.arguments {
            c.3.push_str(&a);
        }
    }

    /// The whole calls in index order; `None` when there were none.
    pub fn into_calls(mut self) -> Option<Vec<ToolCall>> {
        if self.0.is_empty() {
            return None;
        }
        self.0.sort_by_key(|c| c.0);
        Some(
            self.0
                .into_iter()
                .map(|(_, id, name, arguments)| ToolCall {
                    // A client answers a call by its id: make one if the engine gave none.
                    id: id.unwrap_or_else(|| format!("call_{}", uuid::Uuid::new_v4().simple())),
                    kind: "function".into(),
                    function: FunctionCall {
                        name: name.unwrap_or_default(),
                        arguments,
                    },
                })
                .collect(),
        )
    }
}

/// A task's whole reply, for the doors' non-streamed answers.
pub struct Collected {
    /// The generated text.
    pub text: String,
    /// The tool calls, merged.
    pub tool_calls: Option<Vec<ToolCall>>,
    /// Log probabilities, when asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// The `end` event.
    pub end: EndEvent,
}

/// Follows `task` to its end and returns its whole reply; a failed or canceled task is its
/// error. `guard` is dropped once the reply is complete (a client that leaves before cancels).
pub async fn collect(task: Arc<Task>, guard: CancelOnDrop) -> Result<Collected, ServiceError> {
    let mut text = String::new();
    let mut logprobs: Option<Vec<TokenLogprob>> = None;
    let mut calls = CallsSoFar::default();
    let mut frames = Box::pin(task.follow());
    while let Some(f) = frames.next().await {
        match StreamEvent::parse(f.name, &f.data) {
            Ok(StreamEvent::Token(t)) => {
                text.push_str(&t.t);
                if let Some(l) = t.logprobs {
                    logprobs.get_or_insert_with(Vec::new).extend(l);
                }
                for d in t.tool_calls.into_iter().flatten() {
                    calls.add(d);
                }
            }
            Ok(StreamEvent::End(end)) => {
                drop(guard);
                return Ok(Collected {
                    text,
                    tool_calls: calls.into_calls(),
                    logprobs,
                    end,
                });
            }
            Ok(StreamEvent::Error(env)) => return Err(ServiceError::from_envelope(env)),
            _ => {}
        }
    }
    Err(ServiceError::new(
        ErrorCode::Internal,
        "the task ended without a result",
    ))
}

/// Answers `e` before a handler ran (401, 404) in the error shape of the door `path` belongs
/// to (agents' SDKs read only their own API's shape), else in the daemon's envelope.
pub async fn refuse_on_path(path: &str, e: ServiceError, body: Body) -> Response {
    if crate::http::anthropic::is_messages_path(path) {
        return refuse(crate::http::anthropic::AnthropicError::from(e), body).await;
    }
    if crate::http::openai::is_openai_path(path) {
        return refuse(crate::http::openai::OaiError::from(e), body).await;
    }
    e.into_response()
}

/// Middleware applying [`Auth::check`]: a refusal is rendered in the error shape of the door
/// the path belongs to (auth itself knows no doors).
pub async fn require_token(
    axum::extract::State(auth): axum::extract::State<crate::auth::Auth>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = crate::auth::credentials(req.headers());
    match auth.check(peer.ip().is_loopback(), req.uri().path(), header.as_deref()) {
        Ok(identity) => {
            tracing::Span::current().record("identity", identity.as_str());
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(code = e.body.code.as_str(), peer = %peer.ip(), "request refused");
            let path = req.uri().path().to_owned();
            refuse_on_path(&path, e, req.into_body()).await
        }
    }
}

/// 405 in the error shape of the door `path` belongs to; `None` off the doors' paths.
pub async fn method_not_allowed_on_path(path: &str, body: Body) -> Option<Response> {
    if crate::http::anthropic::is_messages_path(path) {
        let e = crate::http::anthropic::AnthropicError::method_not_allowed();
        return Some(refuse(e, body).await);
    }
    if crate::http::openai::is_openai_path(path) {
        return Some(refuse(crate::http::openai::OaiError::method_not_allowed(), body).await);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::openai::OaiError;

    #[tokio::test]
    async fn bodies_over_the_limit_are_drained_and_refused() {
        let h = HeaderMap::new();
        let ok =
            read_body::<crate::http::openai::OpenAiShape>(&h, Body::from(vec![b'x'; 100]), 100)
                .await
                .unwrap();
        assert_eq!(ok.len(), 100);
        let e: OaiError = read_body(&h, Body::from(vec![b'x'; 101]), 100)
            .await
            .unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(!e.close, "read to its end: the connection stays usable");
        let r = e.into_response();
        let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["error"]["code"], "payload_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        let mut big = HeaderMap::new();
        big.insert("content-length", HeaderValue::from_static("999999999999"));
        let e: OaiError = read_body(&big, Body::empty(), 100).await.unwrap_err();
        assert!(e.close, "too big to drain: answer and close");
        let r = refuse(OaiError::method_not_allowed(), Body::from("ignored")).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(r.headers().get("connection").is_none());
    }

    #[test]
    fn tool_call_pieces_merge_into_calls() {
        let piece =
            |index, id: Option<&str>, name: Option<&str>, args: Option<&str>| ToolCallDelta {
                index,
                id: id.map(str::to_owned),
                kind: id.map(|_| "function".to_owned()),
                function: orch_api_types::FunctionCallDelta {
                    name: name.map(str::to_owned),
                    arguments: args.map(str::to_owned),
                },
            };
        let mut c = CallsSoFar::default();
        c.add(piece(1, Some("b"), Some("g"), Some("{}")));
        c.add(piece(0, Some("a"), Some("f"), Some("{\"x\"")));
        c.add(piece(0, None, None, Some(": 1}")));
        let calls = c.into_calls().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(
            (calls[0].id.as_str(), calls[0].function.name.as_str()),
            ("a", "f")
        );
        assert_eq!(calls[0].function.arguments, "{\"x\": 1}");
        assert_eq!(calls[1].function.arguments, "{}");
        let mut anon = CallsSoFar::default();
        anon.add(piece(0, None, Some("f"), None));
        assert!(anon.into_calls().unwrap()[0].id.starts_with("call_"));
        assert!(CallsSoFar::default().into_calls().is_none());
    }
}
