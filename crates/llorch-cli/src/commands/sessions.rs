//! `llorch sessions show|evict`.

use std::time::Duration;

use reqwest::Method;
use serde_json::Value;

use super::{print_json, seg};
use crate::cli::SessionsCmd;
use crate::client::Client;
use crate::error::CliError;

/// Shows or evicts a session. The reply (`orch_api_types::SessionInfo` or `SessionEvicted`) is
/// printed field by field as it came, so fields of a newer daemon show too.
pub async fn run(client: &Client, cmd: SessionsCmd, json_out: bool) -> Result<(), CliError> {
    let v = match &cmd {
        SessionsCmd::Show { session_id } => {
            client
                .get_json(&format!("/v1/sessions/{}", seg(session_id)))
                .await?
        }
        SessionsCmd::Evict { session_id } => {
            client
                .call_json(
                    Method::DELETE,
                    &format!("/v1/sessions/{}", seg(session_id)),
                    None,
                    Some(Duration::from_secs(30)),
                )
                .await?
        }
    };
    if json_out {
        print_json(&v, true);
    } else {
        print_kv(&v);
    }
    Ok(())
}

/// One `key  value` line per field.
fn print_kv(v: &Value) {
    if let Some(o) = v.as_object() {
        let w = o.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in o {
            let s = match val {
                Value::String(s) => s.clone(),
                x => x.to_string(),
            };
            println!("{k:<w$}  {s}");
        }
    } else {
        print_json(v, false);
    }
}
