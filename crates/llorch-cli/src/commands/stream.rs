//! `llorch stream`.

use crate::client::Client;
use crate::error::CliError;

/// Follows a task's stream from its start (also after it ended).
pub async fn run(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    crate::stream::follow_interruptible(client, task_id, json_out, false).await
}
