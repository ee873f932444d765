//! Exit codes and the one error type every command returns.

use std::fmt;

use serde::Deserialize;
use serde_json::{json, Value};

/// Process exit codes other than 0 (success); documented in docs/CLI.md, scripts rely on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Usage error, or the daemon refused the request (400, 409, 413, other errors).
    Usage = 1,
    /// The task ended with an error.
    TaskFailed = 2,
    /// No such task, session, model, pool, artifact or endpoint (404).
    NotFound = 3,
    /// Rate limited: the queue is full (429). `--wait` retries after Retry-After.
    RateLimited = 4,
    /// Unavailable: no ready pool, draining or shutting down (503).
    Unavailable = 5,
    /// Missing or bad token (401, 403).
    Auth = 6,
    /// Cannot reach the daemon, or the connection broke.
    Connection = 7,
    /// The task was canceled.
    Canceled = 8,
    /// Interrupted by Ctrl-C.
    Interrupted = 130,
}

impl Exit {
    /// The exit code for an HTTP error status.
    pub fn for_status(status: u16) -> Self {
        match status {
            401 | 403 => Self::Auth,
            404 => Self::NotFound,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            _ => Self::Usage,
        }
    }
}

/// What went wrong, with the exit code it maps to.
#[derive(Debug)]
pub struct CliError {
    /// Exit code.
    pub exit: Exit,
    /// For people.
    pub message: String,
    /// HTTP status, when the daemon answered.
    pub http_status: Option<u16>,
    /// The daemon's error envelope, when it sent one.
    pub envelope: Option<Value>,
}

impl CliError {
    /// An error with an exit code.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            http_status: None,
            envelope: None,
        }
    }

    /// Exit 1.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// The machine-readable form printed with `--json`.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "error": {
                "message": self.message,
                "exit_code": self.exit as i32,
            }
        });
        if let Some(s) = self.http_status {
            v["error"]["http_status"] = json!(s);
        }
        if let Some(env) = &self.envelope {
            if let Some(code) = ErrorView::of(env).code {
                v["error"]["code"] = json!(code);
            }
            v["error"]["envelope"] = env.clone();
        }
        v
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// What the CLI reads of an error body: our `orch_api_types::ErrorEnvelope` `{code, message,
/// retry_after_ms, …}` or the OpenAI door's `orch_api_types::openai::OaiErrorBody`
/// `{error: {message, …}}`. Every part is optional and codes are plain strings, so the
/// answers of a newer daemon (new codes) or of a proxy in between still read.
#[derive(Debug, Default, Deserialize)]
pub struct ErrorView {
    /// Our error code (`ADMISSION_REJECT`, …).
    #[serde(default, deserialize_with = "lenient")]
    pub code: Option<String>,
    /// For people.
    #[serde(default, deserialize_with = "lenient")]
    pub message: Option<String>,
    /// When to retry.
    #[serde(default, deserialize_with = "lenient")]
    pub retry_after_ms: Option<u64>,
    /// OpenAI's shape.
    #[serde(default, deserialize_with = "lenient")]
    pub error: Option<Box<ErrorView>>,
}

impl ErrorView {
    /// Reads what it can of `v`.
    pub fn of(v: &Value) -> Self {
        Self::deserialize(v).unwrap_or_default()
    }
}

/// `None` for a field of an unexpected type, instead of failing the whole body.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let v = Value::deserialize(d)?;
    Ok(T::deserialize(v).ok())
}
