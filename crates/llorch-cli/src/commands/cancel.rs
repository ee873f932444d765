//! `llorch cancel`.

use std::time::Duration;

use orch_api_types::CancelResponse;
use reqwest::Method;

use super::{parse, print_json, seg, wire_name};
use crate::client::Client;
use crate::error::CliError;

/// Cancels a queued or running task (idempotent) and prints its state.
pub async fn run(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    let path = format!("/v1/tasks/{}/cancel", seg(task_id));
    let v = client
        .call_json(Method::POST, &path, None, Some(Duration::from_secs(30)))
        .await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let r: CancelResponse = parse(&v, &path)?;
    println!("task {}: {}", task_id, wire_name(&r.state));
    Ok(())
}
