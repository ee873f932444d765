//! Plumbing every adapter shares: the HTTP client, mapping a non-success status to an
//! [`AdapterError`] carrying the engine's own message, and the driver that turns an engine's
//! SSE byte stream into an [`EngineStream`] through a per-engine [`Decoder`].
//!
//! SSE framing is always `eventsource-stream` (spec-conformant: `data:` with or without the
//! space, CRLF, comments, multi-line data); no adapter splits lines by hand.

use std::collections::VecDeque;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::{AdapterError, EngineEvent, EngineStream};

/// Longest run of bytes without a line break we accept inside an event stream. SSE buffers a
/// line until its end, so an engine that never sends one would grow our memory without bound.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// A client tuned for engines: short connect timeout, no global timeout (streams are long).
pub(crate) fn client(
    base: &str,
    connect_timeout: Duration,
) -> Result<reqwest::Client, AdapterError> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| AdapterError::Unreachable {
            endpoint: base.to_owned(),
            message: format!("cannot build an HTTP client: {e}"),
        })
}

/// A transport failure before any response.
pub(crate) fn unreachable(base: &str, e: reqwest::Error) -> AdapterError {
    AdapterError::Unreachable {
        endpoint: base.to_owned(),
        // Without the URL: it may carry credentials.
        message: e.without_url().to_string(),
    }
}

/// `GET url` answers with a success status within two seconds: the readiness probe of engines
/// that have a health route (llama-server and TGI `/health`, Triton `/v2/health/ready`).
pub(crate) async fn get_ok(
    client: &reqwest::Client,
    base: &str,
    url: String,
) -> Result<(), AdapterError> {
    let resp = client
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_err(|e| unreachable(base, e))?;
    check_status(resp).await.map(|_| ())
}

/// The sampling fields llama-server's native API and the OpenAI-compatible APIs spell alike:
/// seed, temperature, top_p, top_k, stop, the penalties and `logit_bias` (OpenAI's object
/// form, which llama-server accepts too: keys are token ids, or token text). Only what the
/// request sets is sent, so each engine keeps its own defaults.
pub(crate) fn insert_sampling(
    o: &mut serde_json::Map<String, Value>,
    req: &crate::GenerateRequest,
) {
    use serde_json::json;
    if let Some(s) = req.seed {
        o.insert("seed".into(), json!(s));
    }
    if let Some(t) = req.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        o.insert("top_p".into(), json!(p));
    }
    // Not in OpenAI's API, but vLLM, SGLang and llama-server take it.
    if let Some(k) = req.top_k {
        o.insert("top_k".into(), json!(k));
    }
    if !req.stop.is_empty() {
        o.insert("stop".into(), json!(req.stop));
    }
    if let Some(p) = req.frequency_penalty {
        o.insert("frequency_penalty".into(), json!(p));
    }
    if let Some(p) = req.presence_penalty {
        o.insert("presence_penalty".into(), json!(p));
    }
    if !req.logit_bias.is_empty() {
        let m = req
            .logit_bias
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        o.insert("logit_bias".into(), Value::Object(m));
    }
}

/// Maps a non-success HTTP status to an error carrying the engine's own message:
/// 4xx → [`AdapterError::Rejected`], anything else → [`AdapterError::Engine`].
pub(crate) async fn check_status(
    resp: reqwest::Response,
) -> Result<reqwest::Response, AdapterError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    Err(status_error(status.as_u16(), &body))
}

/// The error for an HTTP `status` with `body` (pure, for tests).
pub fn status_error(status: u16, body: &str) -> AdapterError {
    let message = error_message(body).unwrap_or_else(|| truncate(body.trim(), 500));
    if (400..500).contains(&status) {
        AdapterError::Rejected { status, message }
    } else {
        AdapterError::Engine {
            message: format!("HTTP {status}: {message}"),
        }
    }
}

/// The message of an engine's error body, in any of the shapes engines use:
/// `{"error":{"message":…}}` (OpenAI, llama-server, newer vLLM), `{"error":"…"}` (TGI,
/// Triton), `{"object":"error","message":…}` (older vLLM). `None` when it is none of these.
pub fn error_message(body: &str) -> Option<String> {
    let v: Value = serde_json::from_str(body).ok()?;
    error_in(&v)
}

/// The error carried by a JSON value (a body or a stream chunk), if it is one.
pub(crate) fn error_in(v: &Value) -> Option<String> {
    let obj = v.as_object()?;
    match obj.get("error") {
        Some(Value::Null) | None => {}
        Some(Value::String(s)) => {
            return Some(match obj.get("error_type").and_then(Value::as_str) {
                Some(t) => format!("{s} ({t})"),
                None => s.clone(),
            })
        }
        Some(e) => {
            return Some(
                e.get("message")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| truncate(&e.to_string(), 500)),
            )
        }
    }
    if obj.get("object").and_then(Value::as_str) == Some("error") {
        return Some(
            obj.get("message")
                .and_then(Value::as_str)
                .unwrap_or("engine error")
                .to_owned(),
        );
    }
    None
}

/// At most `max` characters of `s`, with an ellipsis when cut.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// A base URL without trailing slashes.
pub(crate) fn trim_base(url: &str) -> String {
    url.trim().trim_end_matches('/').to_owned()
}

/// Turns one engine's SSE payloads into [`EngineEvent`]s. Implementations hold what a stream
/// accumulates (finish reason, usage) between payloads; the parsing itself lives in pure
/// `parse_chunk` functions.
pub trait Decoder: Send + 'static {
    /// One event's `data` payload. An [`EngineEvent::Done`] among the returned events ends the
    /// stream.
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError>;
    /// The connection closed cleanly without a `Done`: the final event for engines that end a
    /// stream by closing it, else [`AdapterError::StreamBroken`].
    fn eof(&mut self) -> Result<EngineEvent, AdapterError>;
}

/// The broken-stream error for a connection that closed before the engine finished.
pub(crate) fn closed_early() -> AdapterError {
    AdapterError::StreamBroken {
        message: "connection closed before the engine finished".into(),
    }
}

/// Drives `bytes` (an SSE body) through `decoder`. The stream ends after the first `Done` or
/// the first error; it never yields anything after either, so it always terminates when the
/// byte stream does.
pub fn sse_stream<S, B, E, D>(bytes: S, decoder: D) -> EngineStream
where
    S: Stream<Item = Result<B, E>> + Send + 'static,
    B: AsRef<[u8]> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
    D: Decoder,
{
    let guarded = bytes.scan(0usize, |run, item| {
        let out = match item {
            Ok(b) => {
                let s = b.as_ref();
                match s.iter().rposition(|c| *c == b'\n' || *c == b'\r') {
                    Some(p) => *run = s.len() - p - 1,
                    None => *run = run.saturating_add(s.len()),
                }
                if *run > MAX_LINE_BYTES {
                    Err(format!(
                        "the engine sent more than {MAX_LINE_BYTES} bytes without a line break"
                    ))
                } else {
                    Ok(b)
                }
            }
            Err(e) => Err(e.to_string()),
        };
        futures::future::ready(Some(out))
    });
    let events = guarded.eventsource();
    // State: SSE events, decoded events not yet yielded, and whether the stream is over.
    let s = futures::stream::unfold(
        (Box::pin(events), decoder, VecDeque::new(), false),
        |(mut events, mut decoder, mut pending, mut done)| async move {
            loop {
                if let Some(ev) = pending.pop_front() {
                    return Some((Ok(ev), (events, decoder, pending, done)));
                }
                if done {
                    return None;
                }
                let step = match events.next().await {
                    Some(Ok(ev)) => decoder.feed(&ev.data).inspect(|evs| {
                        done = evs.iter().any(|e| matches!(e, EngineEvent::Done(_)));
                    }),
                    Some(Err(e)) => Err(AdapterError::StreamBroken {
                        message: e.to_string(),
                    }),
                    None => decoder.eof().map(|ev| {
                        done = true;
                        vec![ev]
                    }),
                };
                match step {
                    Ok(evs) => {
                        // Nothing after `Done`, whatever the engine sent in the same payload.
                        let end = evs
                            .iter()
                            .position(|e| matches!(e, EngineEvent::Done(_)))
                            .map_or(evs.len(), |i| i + 1);
                        pending.extend(evs.into_iter().take(end));
                    }
                    Err(e) => return Some((Err(e), (events, decoder, pending, true))),
                }
            }
        },
    );
    Box::pin(s)
}

/// Test support: runs a decoder over raw byte chunks to the end (no network).
#[cfg(test)]
pub(crate) fn run_chunks<D: Decoder>(
    chunks: Vec<Vec<u8>>,
    decoder: D,
) -> Vec<Result<EngineEvent, AdapterError>> {
    let bytes = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    futures::executor::block_on(sse_stream(bytes, decoder).collect())
}

/// Test support: splits `bytes` at the given cut points (taken modulo the length).
#[cfg(test)]
pub(crate) fn split_at(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    if bytes.is_empty() {
        return vec![];
    }
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % bytes.len()).collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out = Vec::new();
    let mut at = 0;
    for c in cuts {
        if c > at {
            out.push(bytes[at..c].to_vec());
            at = c;
        }
    }
    out.push(bytes[at..].to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Completion;

    /// Yields each payload as a token; `END` finishes; EOF is broken.
    struct Echo;
    impl Decoder for Echo {
        fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
            Ok(if data == "END" {
                vec![
                    EngineEvent::Done(Completion::default()),
                    EngineEvent::Token("after".into()),
                ]
            } else {
                vec![EngineEvent::Token(data.into())]
            })
        }
        fn eof(&mut self) -> Result<EngineEvent, AdapterError> {
            Err(closed_early())
        }
    }

    #[test]
    fn error_shapes() {
        assert_eq!(
            error_message(r#"{"error":{"code":400,"message":"bad","type":"x"}}"#).as_deref(),
            Some("bad")
        );
        assert_eq!(
            error_message(r#"{"error":"Input validation error","error_type":"validation"}"#)
                .as_deref(),
            Some("Input validation error (validation)")
        );
        assert_eq!(
            error_message(
                r#"{"object":"error","message":"no such model","type":"NotFoundError","code":404}"#
            )
            .as_deref(),
            Some("no such model")
        );
        assert_eq!(error_message(r#"{"error":null,"x":1}"#), None);
        assert_eq!(error_message("not json"), None);
    }

    #[test]
    fn status_mapping() {
        assert!(matches!(
            status_error(422, r#"{"error":"too long"}"#),
            AdapterError::Rejected { status: 422, message } if message == "too long"
        ));
        assert!(matches!(
            status_error(503, "down"),
            AdapterError::Engine { message } if message == "HTTP 503: down"
        ));
    }

    #[test]
    fn nothing_after_done_and_crlf_framing() {
        let evs = run_chunks(
            vec![b"data:a\r\n\r\ndata: b\n\ndata: END\n\ndata: c\n\n".to_vec()],
            Echo,
        );
        assert_eq!(evs.len(), 3);
        assert!(matches!(&evs[0], Ok(EngineEvent::Token(t)) if t == "a"));
        assert!(matches!(&evs[1], Ok(EngineEvent::Token(t)) if t == "b"));
        assert!(matches!(&evs[2], Ok(EngineEvent::Done(_))));
    }

    #[test]
    fn eof_without_done_is_broken() {
        let evs = run_chunks(vec![b"data: a\n\n".to_vec()], Echo);
        assert!(matches!(
            evs.last(),
            Some(Err(AdapterError::StreamBroken { .. }))
        ));
    }

    #[test]
    fn endless_line_is_cut_off() {
        let chunk = vec![b'x'; 1024 * 1024];
        let chunks = vec![chunk; 17];
        let evs = run_chunks(chunks, Echo);
        assert_eq!(evs.len(), 1);
        assert!(
            matches!(&evs[0], Err(AdapterError::StreamBroken { message }) if message.contains("line break"))
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_not_a_panic() {
        let evs = run_chunks(vec![b"data: \xff\xfe\n\n".to_vec()], Echo);
        assert!(matches!(evs.last(), Some(Err(_))));
    }
}
