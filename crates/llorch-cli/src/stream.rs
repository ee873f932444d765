//! Following a task's SSE stream: tokens to stdout byte for byte, everything else to stderr,
//! or NDJSON (`{"event": …, "data": …}` per line) with `--json`.
//!
//! The stream is parsed with `eventsource-stream` (a spec-conformant SSE parser): token text
//! may contain U+2028, lone CR and other line-breaking characters, which the daemon sends
//! JSON-escaped inside one `data:` line; nothing here splits lines by hand.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use orch_api_types::{ErrorCode, MetricsEvent, StreamEvent};
use reqwest::Method;
use serde_json::{json, Value};

use crate::client::Client;
use crate::error::{CliError, Exit};

/// How a followed task ended.
#[derive(Debug)]
pub enum Outcome {
    /// `end`.
    Completed,
    /// `error` with this code and message.
    Failed(ErrorCode, String),
}

/// Prints one NDJSON line to stdout.
pub fn ndjson(event: &str, data: &Value) {
    let line = json!({ "event": event, "data": data });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// `850 ms`, `1.2 s`, `3 min 20 s`.
pub fn human_ms(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        u64::MAX => "never (no replica can take it)".into(),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// The queue status of a waiting task's `metrics` frame, or `None` for a running task's.
pub fn waiting_line(m: &MetricsEvent) -> Option<String> {
    let position = m.queue_position?;
    let mut s = format!("[queued: position {position} of {}", m.queue_depth);
    if let Some(start) = m.predicted_start_ms {
        s.push_str(&format!(", start in ~{}", human_ms(start)));
    }
    if let Some(end) = m.predicted_end_ms {
        s.push_str(&format!(", end in ~{}", human_ms(end)));
    }
    if m.on_time_probability < 1.0 {
        s.push_str(&format!(", on time {:.0} %", m.on_time_probability * 100.0));
    }
    if let Some(why) = &m.waiting_for {
        s.push_str(&format!("; {why}"));
    }
    s.push(']');
    Some(s)
}

/// The one stderr line that shows a waiting task's place in the queue: rewritten in place on a
/// terminal, else printed when the position changes (so logs get a line per move, not per
/// second).
#[derive(Default)]
struct WaitingLine {
    tty: bool,
    shown: bool,
    last_position: Option<usize>,
}

impl WaitingLine {
    fn show(&mut self, m: &MetricsEvent) {
        let Some(line) = waiting_line(m) else {
            return;
        };
        let mut err = std::io::stderr().lock();
        if self.tty {
            // Clear the line, then write the new one without a newline.
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
            self.shown = true;
        } else if self.last_position != m.queue_position {
            let _ = writeln!(err, "{line}");
        }
        self.last_position = m.queue_position;
    }

    /// Removes the live line before anything else is printed.
    fn clear(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K");
            let _ = err.flush();
            self.shown = false;
        }
    }
}

/// How much [`follow_with`] says besides the tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Show {
    /// `submit` and `stream`: the `started` and `end` lines, the queue line, errors.
    Everything,
    /// `chat`: only the queue line while the task waits, and errors; the answer ends with a
    /// newline on stdout.
    Answer,
    /// `--json`: every event as an NDJSON line, nothing else.
    Json,
}

/// What a followed stream carried.
#[derive(Debug)]
pub struct Followed {
    /// How it ended.
    pub outcome: Outcome,
    /// The token text, concatenated exactly as it arrived.
    pub text: String,
}

/// Follows `/v1/tasks/{id}/stream` until its terminal event.
pub async fn follow(client: &Client, task_id: &str, json_out: bool) -> Result<Outcome, CliError> {
    let show = if json_out {
        Show::Json
    } else {
        Show::Everything
    };
    Ok(follow_with(client, task_id, show).await?.outcome)
}

/// Follows `/v1/tasks/{id}/stream` until its terminal event, printing what `show` says, and
/// returns the text it carried.
pub async fn follow_with(client: &Client, task_id: &str, show: Show) -> Result<Followed, CliError> {
    let json_out = show == Show::Json;
    let meta = show == Show::Everything;
    let path = format!("/v1/tasks/{task_id}/stream");
    let resp = client.send(Method::GET, &path, None, None).await?;
    let mut events = resp.bytes_stream().eventsource();
    let stdout_tty = std::io::stdout().is_terminal();
    let mut text = String::new();
    let mut waiting = WaitingLine {
        tty: std::io::stderr().is_terminal(),
        ..WaitingLine::default()
    };
    // `chat` ends each answer on a line of its own; `submit` leaves stdout exactly the tokens.
    let end_line = |text: &str| {
        if show == Show::Answer && !text.ends_with('\n') {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            let _ = out.flush();
        }
    };
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                return Err(CliError::new(
                    Exit::Connection,
                    format!("the stream of task {task_id} broke off ({e}); resume with `llorch stream {task_id}`"),
                ))
            }
        };
        if ev.event.is_empty() || ev.event == "message" {
            continue;
        }
        if json_out {
            let data: Value =
                serde_json::from_str(&ev.data).unwrap_or(Value::String(ev.data.clone()));
            ndjson(&ev.event, &data);
        }
        let parsed = match StreamEvent::parse(&ev.event, &ev.data) {
            Ok(p) => p,
            Err(e) => {
                if !json_out {
                    eprintln!("llorch: ignoring an unreadable `{}` event: {e}", ev.event);
                }
                continue;
            }
        };
        if !matches!(parsed, StreamEvent::Metrics(_)) {
            waiting.clear();
        }
        match parsed {
            StreamEvent::Started(s) => {
                if meta {
                    eprintln!(
                        "[started on {}/{} ({} {}, {}) after {} ms in the queue]",
                        s.pool_id, s.replica_id, s.engine, s.engine_version, s.device, s.queued_ms
                    );
                }
            }
            StreamEvent::Token(t) => {
                if !json_out {
                    let mut out = std::io::stdout().lock();
                    out.write_all(t.t.as_bytes()).map_err(stdout_error)?;
                    out.flush().map_err(stdout_error)?;
                }
                text.push_str(&t.t);
            }
            StreamEvent::Metrics(m) => {
                if !json_out {
                    waiting.show(&m);
                }
            }
            // An embedding or rerank task's answer: its JSON on stdout.
            StreamEvent::Result(_) => {
                if !json_out {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", ev.data).map_err(stdout_error)?;
                    out.flush().map_err(stdout_error)?;
                }
            }
            StreamEvent::End(e) => {
                end_line(&text);
                if meta {
                    if stdout_tty && !text.is_empty() {
                        eprintln!();
                    }
                    let rate = if e.decode_ms > 0 {
                        format!(
                            ", {:.1} tok/s",
                            e.tokens_out as f64 * 1000.0 / e.decode_ms as f64
                        )
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "[end: {} tokens in {} ms{rate}, finish_reason={}]",
                        e.tokens_out, e.decode_ms, e.finish_reason
                    );
                }
                return Ok(Followed {
                    outcome: Outcome::Completed,
                    text,
                });
            }
            StreamEvent::Error(e) => {
                if !text.is_empty() {
                    end_line(&text);
                }
                if !json_out {
                    if meta && stdout_tty && !text.is_empty() {
                        eprintln!();
                    }
                    eprintln!("[error {}: {}]", e.code.as_str(), e.message);
                }
                return Ok(Followed {
                    outcome: Outcome::Failed(e.code, e.message),
                    text,
                });
            }
        }
    }
    Err(CliError::new(
        Exit::Connection,
        format!("the stream of task {task_id} ended without `end` or `error`; resume with `llorch stream {task_id}`"),
    ))
}

fn stdout_error(e: std::io::Error) -> CliError {
    CliError::new(Exit::Usage, format!("cannot write to stdout: {e}"))
}

/// Exit code for an outcome.
pub fn outcome_result(task_id: &str, o: Outcome) -> Result<(), CliError> {
    match o {
        Outcome::Completed => Ok(()),
        Outcome::Failed(ErrorCode::Canceled, m) => Err(CliError::new(
            Exit::Canceled,
            format!("task {task_id} was canceled: {m}"),
        )),
        Outcome::Failed(code, m) => Err(CliError::new(
            Exit::TaskFailed,
            format!("task {task_id} failed with {}: {m}", code.as_str()),
        )),
    }
}

/// Cancels a task in the daemon (`POST /v1/tasks/{id}/cancel`, idempotent).
pub async fn cancel(client: &Client, task_id: &str) -> Result<(), CliError> {
    let path = format!("/v1/tasks/{}/cancel", crate::client::seg(task_id));
    client
        .call_json(Method::POST, &path, None, Some(Duration::from_secs(10)))
        .await
        .map(|_| ())
}

/// Follows a task and, on Ctrl-C, cancels it (unless `detach`), exiting 130.
pub async fn follow_interruptible(
    client: &Client,
    task_id: &str,
    json_out: bool,
    cancel_on_interrupt: bool,
) -> Result<(), CliError> {
    tokio::select! {
        r = follow(client, task_id, json_out) => outcome_result(task_id, r?),
        _ = tokio::signal::ctrl_c() => {
            if cancel_on_interrupt {
                match cancel(client, task_id).await {
                    Ok(()) => eprintln!("\n[interrupted: task {task_id} canceled]"),
                    Err(e) => eprintln!("\n[interrupted; canceling task {task_id} failed: {e}]"),
                }
            } else {
                eprintln!("\n[interrupted; task {task_id} keeps running: `llorch stream {task_id}`]");
            }
            Err(CliError::new(Exit::Interrupted, "interrupted"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(position: Option<usize>, p: f64) -> MetricsEvent {
        MetricsEvent {
            queue_depth: 5,
            on_time_probability: p,
            tokens_out: 0,
            tokens_per_s: 0.0,
            kv_warmth: None,
            tokens_budget_remaining: None,
            time_budget_remaining_ms: None,
            cost_budget_remaining: None,
            queue_position: position,
            predicted_start_ms: Some(1_250),
            predicted_end_ms: Some(83_000),
            queued_ms: Some(10),
            waiting_for: None,
        }
    }

    #[test]
    fn waiting_frames_read_as_one_line() {
        assert_eq!(
            waiting_line(&waiting(Some(2), 0.8)).as_deref(),
            Some("[queued: position 2 of 5, start in ~1.2 s, end in ~1 min 23 s, on time 80 %]")
        );
        assert_eq!(
            waiting_line(&waiting(Some(0), 1.0)).as_deref(),
            Some("[queued: position 0 of 5, start in ~1.2 s, end in ~1 min 23 s]")
        );
        assert_eq!(
            waiting_line(&waiting(None, 1.0)),
            None,
            "a running task's frame"
        );
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(human_ms(850), "850 ms");
        assert_eq!(human_ms(1_000), "1.0 s");
        assert_eq!(human_ms(200_000), "3 min 20 s");
        assert_eq!(human_ms(u64::MAX), "never (no replica can take it)");
    }
}
