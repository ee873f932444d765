//! The commands, one module each; here only what several of them share.
//!
//! Replies are read as their `orch_api_types` types; `--json` prints the daemon's reply as it came.

pub mod artifacts;
pub mod cancel;
pub mod capabilities;
pub mod catalog;
pub mod chat;
pub mod init;
pub mod metrics;
pub mod pools;
pub mod pull;
pub mod sessions;
pub mod status;
pub mod stream;
pub mod submit;
pub mod task;

use std::io::Read;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

pub use crate::client::seg;
use crate::error::CliError;

/// Long operations (reload, verify, large uploads) may take this long.
pub(crate) const LONG: Duration = Duration::from_secs(300);

/// Prints a JSON value on stdout (pretty for people, one line with `--json`).
pub fn print_json(v: &Value, compact: bool) {
    let s = if compact {
        v.to_string()
    } else {
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    };
    println!("{s}");
}

/// Reads the daemon's reply to `path` as its wire type.
pub(crate) fn parse<T: DeserializeOwned>(v: &Value, path: &str) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| {
        let shown: String = v.to_string().chars().take(300).collect();
        CliError::usage(format!(
            "unexpected answer to {path} ({e}); is the daemon a matching orchestratord version? it sent: {shown}"
        ))
    })
}

/// `POST /v1/tasks` with `body`: the admission as its wire type, and as sent (for `--json`).
pub(crate) async fn admit_task(
    client: &crate::client::Client,
    body: &Value,
) -> Result<(orch_api_types::AdmissionResponse, Value), CliError> {
    let v = client
        .call_json(
            reqwest::Method::POST,
            "/v1/tasks",
            Some(body),
            Some(Duration::from_secs(60)),
        )
        .await?;
    Ok((parse(&v, "/v1/tasks")?, v))
}

/// A typed request body as JSON.
pub(crate) fn body<T: Serialize>(t: &T) -> Result<Value, CliError> {
    serde_json::to_value(t).map_err(|e| CliError::usage(format!("cannot encode the request: {e}")))
}

/// The wire name of a unit enum (`completed`, `batch`, `Active`, …).
pub(crate) fn wire_name<T: Serialize>(t: &T) -> String {
    match serde_json::to_value(t) {
        Ok(Value::String(s)) => s,
        Ok(v) => v.to_string(),
        Err(_) => "?".into(),
    }
}

/// All of stdin.
pub(crate) fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

/// `12.3 s ago`, or `-` for no time.
pub(crate) fn ms_ago(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        None => "-".into(),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seg_escapes_reserved_bytes() {
        assert_eq!(seg("a b/c"), "a%20b%2Fc");
        assert_eq!(seg("sha256:ab-_.~"), "sha256:ab-_.~");
    }

    #[test]
    fn wire_names() {
        assert_eq!(
            wire_name(&orch_api_types::TaskState::Completed),
            "completed"
        );
        assert_eq!(wire_name(&orch_api_types::ModelState::Active), "Active");
        assert_eq!(
            wire_name(&orch_api_types::pools::ReplicaState::CircuitOpen),
            "circuit_open"
        );
    }

    #[test]
    fn parse_names_the_path_on_a_wrong_shape() {
        let e = parse::<orch_api_types::pools::PoolList>(&serde_json::json!({"x": 1}), "/v1/pools")
            .unwrap_err();
        assert!(e.message.contains("/v1/pools"), "{}", e.message);
    }
}
