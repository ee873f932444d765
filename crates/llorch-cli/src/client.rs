//! HTTP to the daemon: the token, error envelopes mapped to exit codes, `--wait` on 429/503.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;

use crate::config::Settings;
pub use crate::error::ErrorView;
use crate::error::{CliError, Exit};

/// A client bound to one daemon.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// Base URL.
    pub base: String,
    token: Option<String>,
    wait: bool,
    wait_max: Duration,
    /// Whether progress output is allowed (not `--json`).
    pub human: bool,
}

/// Default time limit of a plain request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    /// A client for `settings`.
    pub fn new(
        settings: &Settings,
        wait: bool,
        wait_max: Duration,
        human: bool,
    ) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .user_agent(concat!("llorch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::usage(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            http,
            base: settings.url.clone(),
            token: settings.token.clone(),
            wait,
            wait_max,
            human,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        timeout: Option<Duration>,
    ) -> reqwest::RequestBuilder {
        let mut rb = self.http.request(method, self.url(path));
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(t) = timeout {
            rb = rb.timeout(t);
        }
        rb
    }

    /// Sends a request; a non-success answer becomes a [`CliError`]. With `--wait`, 429 and 503
    /// answers are retried after their Retry-After until `--wait-max-s` runs out.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Response, CliError> {
        let started = Instant::now();
        let mut spinner: Option<ProgressBar> = None;
        loop {
            let mut rb = self.request(method.clone(), path, timeout);
            if let Some(b) = body {
                rb = rb.json(b);
            }
            let resp = rb.send().await.map_err(|e| self.connection_error(&e))?;
            let status = resp.status();
            if status.is_success() {
                if let Some(s) = spinner {
                    s.finish_and_clear();
                }
                return Ok(resp);
            }
            let retry_header = retry_after(&resp);
            let err = self.error_from(method.as_str(), path, resp).await;
            let retriable = matches!(
                status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            );
            let delay = retry_header.or_else(|| {
                err.envelope
                    .as_ref()
                    .and_then(|e| ErrorView::of(e).retry_after_ms)
                    .map(Duration::from_millis)
            });
            match (self.wait && retriable, delay) {
                (true, Some(d)) if started.elapsed() + d <= self.wait_max => {
                    let d = d.max(Duration::from_millis(100));
                    let s = spinner.get_or_insert_with(|| self.spinner());
                    s.set_message(format!(
                        "{} ({}); retrying in {:.1} s (--wait, {:.0} s so far)",
                        status.as_u16(),
                        err.message,
                        d.as_secs_f64(),
                        started.elapsed().as_secs_f64()
                    ));
                    tokio::time::sleep(d).await;
                }
                _ => {
                    if let Some(s) = spinner {
                        s.finish_and_clear();
                    }
                    return Err(err);
                }
            }
        }
    }

    /// A spinner on stderr (hidden when stderr is not a terminal or with `--json`).
    pub fn spinner(&self) -> ProgressBar {
        if !self.human {
            return ProgressBar::hidden();
        }
        let pb = ProgressBar::new_spinner();
        pb.set_style(
            ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    /// GET `path` as JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let r = self
            .send(Method::GET, path, None, Some(REQUEST_TIMEOUT))
            .await?;
        json_body(r, path).await
    }

    /// `method` `path` with a JSON body, answer as JSON (`null` for an empty body).
    pub async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        timeout: Option<Duration>,
    ) -> Result<Value, CliError> {
        let r = self.send(method, path, body, timeout).await?;
        json_body(r, path).await
    }

    /// GET `path` as text.
    pub async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let r = self
            .send(Method::GET, path, None, Some(REQUEST_TIMEOUT))
            .await?;
        r.text().await.map_err(|e| self.connection_error(&e))
    }

    /// Maps a transport error.
    pub fn connection_error(&self, e: &reqwest::Error) -> CliError {
        let what = if e.is_timeout() {
            "timed out"
        } else if e.is_connect() {
            "connection failed"
        } else {
            "request failed"
        };
        let mut cause = String::new();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            cause = s.to_string();
            src = s.source();
        }
        CliError::new(
            Exit::Connection,
            format!(
                "cannot reach the daemon at {} ({what}{}). Is orchestratord running? Start it, or point the CLI at it with --url / LLORCH_URL; `llorch doctor` checks the setup",
                self.base,
                if cause.is_empty() { String::new() } else { format!(": {cause}") }
            ),
        )
    }

    /// Turns an error answer into a [`CliError`] with the daemon's message.
    pub async fn error_from(&self, method: &str, path: &str, resp: Response) -> CliError {
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let envelope: Option<Value> = serde_json::from_str::<Value>(&text)
            .ok()
            .filter(Value::is_object);
        let view = envelope.as_ref().map(ErrorView::of).unwrap_or_default();
        let message = view
            .message
            .or_else(|| view.error.and_then(|e| e.message))
            .unwrap_or_else(|| {
                let t = text.trim();
                if t.is_empty() {
                    format!("HTTP {status}")
                } else {
                    t.chars().take(300).collect()
                }
            });
        let code = view.code.as_deref().unwrap_or("");
        let message = if status == 404 && message.starts_with("no route") {
            format!(
                "this daemon has no endpoint {method} {path} (HTTP 404: {message}); it is probably an older orchestratord — upgrade it, or check `llorch capabilities`"
            )
        } else if status == 405 {
            format!("this daemon does not accept {method} {path} (HTTP 405: {message}); it is probably an older orchestratord")
        } else if code.is_empty() {
            format!("HTTP {status}: {message}")
        } else {
            format!("{code} (HTTP {status}): {message}")
        };
        let message = if status == 401 {
            format!("{message}\n  fix: export LLORCH_TOKEN=<the daemon's AUTH_TOKEN>, or pass --token, or set `token` in ~/.config/llama-orch/cli.toml")
        } else {
            message
        };
        CliError {
            exit: Exit::for_status(status),
            message,
            http_status: Some(status),
            envelope,
        }
    }
}

/// The Retry-After header, in seconds, as a duration.
fn retry_after(r: &Response) -> Option<Duration> {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

/// The body as JSON; an empty body is `null`.
pub async fn json_body(r: Response, path: &str) -> Result<Value, CliError> {
    let bytes = r.bytes().await.map_err(|e| {
        CliError::new(
            Exit::Connection,
            format!("reading the answer to {path} failed: {e}"),
        )
    })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        CliError::usage(format!(
            "the daemon's answer to {path} is not JSON ({e}); is {path} served by orchestratord?"
        ))
    })
}

/// Percent-encodes a path segment.
pub fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
