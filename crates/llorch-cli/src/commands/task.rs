//! `llorch task`.

use orch_api_types::TaskStatus;

use super::{ms_ago, now_ms, parse, print_json, seg, wire_name};
use crate::client::Client;
use crate::error::CliError;

/// Prints a task's state.
pub async fn run(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    let path = format!("/v1/tasks/{}", seg(task_id));
    let v = client.get_json(&path).await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let t: TaskStatus = parse(&v, &path)?;
    let now = now_ms();
    println!("task        {}", t.task_id);
    println!("state       {}", wire_name(&t.state));
    println!(
        "pool        {}  replica {}",
        t.pool_id,
        t.replica_id.as_deref().unwrap_or("-")
    );
    println!(
        "priority    {}  model {}",
        wire_name(&t.priority),
        t.model_ref
    );
    if let Some(q) = t.queue_position {
        println!("queue pos   {q}");
    }
    println!("tokens out  {}", t.tokens_out);
    println!(
        "submitted   {}  started {}  finished {}",
        ms_ago(now, Some(t.submitted_ms)),
        ms_ago(now, t.started_ms),
        ms_ago(now, t.finished_ms)
    );
    if let Some(e) = &t.error {
        println!("error       {}: {}", e.code.as_str(), e.message);
    }
    if let Some(a) = &t.transcript_artifact {
        println!("transcript  {a}   (llorch artifacts get {a})");
    }
    Ok(())
}
