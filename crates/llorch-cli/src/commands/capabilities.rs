//! `llorch capabilities`.

use orch_api_types::Capabilities;

use super::{parse, print_json};
use crate::client::Client;
use crate::error::CliError;

/// A list as compact JSON (`["a","b"]`), as this command always showed lists.
fn list(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Prints what the daemon and its pools can do.
pub async fn run(client: &Client, json_out: bool) -> Result<(), CliError> {
    let path = "/v1/capabilities";
    let v = client.get_json(path).await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let c: Capabilities = parse(&v, path)?;
    println!("api {}  daemon {}", c.api_version, c.daemon_version);
    println!(
        "queue policy {}  priorities {}",
        c.queue_policy,
        list(&c.priorities)
    );
    println!(
        "gpu mode {}  dev cpu inference {}",
        c.gpu_mode, c.dev_allow_cpu_inference
    );
    for p in &c.pools {
        println!(
            "pool {:<14} {} {}  ctx_max {}  max_tokens {}  concurrency {}  replicas {}  devices {}  queue {}  ready {}",
            p.id, p.engine, p.engine_version, p.ctx_max, p.max_tokens,
            p.concurrency, p.replicas, list(&p.devices), p.queue_capacity, p.ready
        );
    }
    Ok(())
}
