//! `llorch pools list|health|drain|reload|load|unload`, `llorch load`, `llorch unload`.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use orch_api_types::pools::{
    DrainRequest, LoadResponse, PoolHealth, PoolList, ReloadRequest, UnloadRequest,
};
use orch_api_types::StatusSnapshot;
use reqwest::Method;

use super::{body, parse, print_json, seg, LONG};
use crate::cli::PoolsCmd;
use crate::client::Client;
use crate::error::CliError;

/// One line per pool: id, engine, state, replicas (`id:state@device`), then its last error.
fn pool_line(id: &str, engine: &str, h: &PoolHealth) -> String {
    // on_demand pools: their load state (`unloaded` is a normal state, not "down").
    let on_demand = h.on_demand.as_ref().map(|o| o.state.as_str());
    let state = if h.draining {
        "draining"
    } else if h.ready {
        "ready"
    } else if let Some(s) = on_demand {
        s
    } else if h.live {
        "starting/unready"
    } else {
        "down"
    };
    let replicas: Vec<String> = h
        .replicas
        .iter()
        .map(|r| format!("{}:{}@{}", r.id, r.state.as_str(), r.device))
        .collect();
    let mut s = format!("{id:<16} {engine:<9} {state:<16} {}", replicas.join(" "));
    if let Some(o) = &h.on_demand {
        s.push_str(&format!(
            "  (on_demand, load ~{:.1} s)",
            o.expected_load_ms as f64 / 1000.0
        ));
        if let Some(w) = &o.waiting {
            s.push_str(&format!("\n    waiting: {w}"));
        }
    }
    if let Some(e) = &h.last_error {
        s.push_str(&format!("\n    last error: {e}"));
    }
    s
}

/// In-flight work (queued + running) of a pool, from `/v1/status`.
async fn pool_inflight(client: &Client, pool_id: &str) -> Option<(usize, bool)> {
    let v = client.get_json("/v1/status").await.ok()?;
    let snap: StatusSnapshot = serde_json::from_value(v).ok()?;
    let p = snap.pools.into_iter().find(|p| p.id == pool_id)?;
    Some((
        p.queue.interactive + p.queue.batch + p.queue.running,
        p.draining,
    ))
}

/// Runs one pools subcommand.
pub async fn run(client: &Client, cmd: PoolsCmd, json_out: bool) -> Result<(), CliError> {
    match cmd {
        PoolsCmd::List => {
            let path = "/v1/pools";
            let v = client.get_json(path).await?;
            if json_out {
                print_json(&v, true);
            } else {
                let list: PoolList = parse(&v, path)?;
                for p in &list.pools {
                    println!("{}", pool_line(&p.id, &p.engine, &p.health));
                }
            }
        }
        PoolsCmd::Health { pool_id } => {
            let path = format!("/v1/pools/{}/health", seg(&pool_id));
            let v = client.get_json(&path).await?;
            if json_out {
                print_json(&v, true);
            } else {
                let h: PoolHealth = parse(&v, &path)?;
                println!("{}", pool_line(&pool_id, "", &h));
                print_json(&v, false);
            }
        }
        PoolsCmd::Drain {
            pool_id,
            resume: true,
            ..
        } => {
            let req = DrainRequest {
                deadline_ms: None,
                resume: true,
            };
            let v = client
                .call_json(
                    Method::POST,
                    &format!("/v1/pools/{}/drain", seg(&pool_id)),
                    Some(&body(&req)?),
                    Some(Duration::from_secs(60)),
                )
                .await?;
            if json_out {
                print_json(&v, true);
            } else {
                println!("pool {pool_id} admits work again");
            }
        }
        PoolsCmd::Drain {
            pool_id,
            deadline_ms,
            no_wait,
            ..
        } => drain(client, &pool_id, deadline_ms, no_wait, json_out).await?,
        PoolsCmd::Load { pool_id } => load(client, &pool_id, json_out).await?,
        PoolsCmd::Unload { pool_id, force } => unload(client, &pool_id, force, json_out).await?,
        PoolsCmd::Reload {
            pool_id,
            new_model_ref,
        } => {
            let pb = client.spinner();
            pb.set_message(format!(
                "reloading pool {pool_id} to {new_model_ref}: starting the new engine, health-checking, swapping"
            ));
            let started = Instant::now();
            let req = ReloadRequest {
                new_model_ref: Some(new_model_ref.clone()),
                grace_ms: None,
            };
            let r = client
                .call_json(
                    Method::POST,
                    &format!("/v1/pools/{}/reload", seg(&pool_id)),
                    Some(&body(&req)?),
                    Some(LONG),
                )
                .await;
            pb.finish_and_clear();
            let v = r?;
            if json_out {
                print_json(&v, true);
            } else {
                println!(
                    "pool {pool_id} reloaded to {new_model_ref} in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                if !v.is_null() {
                    print_json(&v, false);
                }
            }
        }
    }
    Ok(())
}

/// `llorch load POOL`: loads an on_demand pool and waits until it serves.
pub async fn load(client: &Client, pool_id: &str, json_out: bool) -> Result<(), CliError> {
    let pb = client.spinner();
    pb.set_message(format!(
        "loading pool {pool_id}: placing it (evicting idle models if needed), starting the engine"
    ));
    let path = format!("/v1/pools/{}/load", seg(pool_id));
    let r = client
        .call_json(
            Method::POST,
            &path,
            Some(&serde_json::json!({})),
            Some(LONG),
        )
        .await;
    pb.finish_and_clear();
    let v = r?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let r: LoadResponse = parse(&v, &path)?;
    if r.changed {
        println!(
            "pool {pool_id} loaded on {} in {:.1} s",
            r.devices.join(", "),
            r.took_ms as f64 / 1000.0
        );
    } else {
        println!(
            "pool {pool_id} was already loaded ({})",
            r.devices.join(", ")
        );
    }
    if !r.evicted.is_empty() {
        println!("evicted to make room: {}", r.evicted.join(", "));
    }
    Ok(())
}

/// `llorch unload POOL [--force]`: stops an on_demand pool's engine.
pub async fn unload(
    client: &Client,
    pool_id: &str,
    force: bool,
    json_out: bool,
) -> Result<(), CliError> {
    let path = format!("/v1/pools/{}/unload", seg(pool_id));
    let req = UnloadRequest { force };
    let v = client
        .call_json(Method::POST, &path, Some(&body(&req)?), Some(LONG))
        .await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let r: LoadResponse = parse(&v, &path)?;
    match (r.changed, r.canceled) {
        (false, _) => println!("pool {pool_id} was not loaded"),
        (true, 0) => println!(
            "pool {pool_id} unloaded in {:.1} s",
            r.took_ms as f64 / 1000.0
        ),
        (true, n) => println!("pool {pool_id} unloaded; {n} task(s) canceled"),
    }
    Ok(())
}

/// Starts a drain and, unless `no_wait`, shows the in-flight tasks finishing.
async fn drain(
    client: &Client,
    pool_id: &str,
    deadline_ms: u64,
    no_wait: bool,
    json_out: bool,
) -> Result<(), CliError> {
    let before = pool_inflight(client, pool_id)
        .await
        .map(|x| x.0)
        .unwrap_or(0);
    let pb = client.spinner();
    pb.set_message(format!(
        "asking pool {pool_id} to drain (deadline {deadline_ms} ms)"
    ));
    let req = DrainRequest {
        deadline_ms: Some(deadline_ms),
        resume: false,
    };
    let r = client
        .call_json(
            Method::POST,
            &format!("/v1/pools/{}/drain", seg(pool_id)),
            Some(&body(&req)?),
            Some(Duration::from_millis(deadline_ms) + LONG),
        )
        .await;
    pb.finish_and_clear();
    let v = r?;
    if !no_wait && before > 0 {
        let bar = if client.human {
            let b = ProgressBar::new(before as u64);
            b.set_style(
                ProgressStyle::with_template("{bar:30} {pos}/{len} in-flight tasks done {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        } else {
            ProgressBar::hidden()
        };
        let until = Instant::now() + Duration::from_millis(deadline_ms) + Duration::from_secs(10);
        while Instant::now() < until {
            let Some((left, _)) = pool_inflight(client, pool_id).await else {
                break;
            };
            bar.set_position(before.saturating_sub(left) as u64);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        bar.finish_and_clear();
    }
    if json_out {
        print_json(&v, true);
    } else {
        println!("pool {pool_id} is draining (no new work admitted)");
        if !v.is_null() {
            print_json(&v, false);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use orch_api_types::pools::{ReplicaInfo, ReplicaState};

    #[test]
    fn pool_line_shows_state_replicas_and_last_error() {
        let mut h = PoolHealth {
            drain_deadline_ms: None,
            draining: false,
            generation: 0,
            incoming: vec![],
            last_error: None,
            live: true,
            model: None,
            ready: true,
            replicas: vec![ReplicaInfo {
                device: "gpu0".into(),
                endpoint: None,
                generation: 0,
                id: "tiny-r0".into(),
                in_flight: 0,
                info: None,
                last_error: None,
                pid: None,
                restarts: 0,
                slots: 1,
                state: ReplicaState::Ready,
            }],
            on_demand: None,
            retiring: vec![],
        };
        assert_eq!(
            pool_line("tiny", "llamacpp", &h),
            format!(
                "{:<16} {:<9} {:<16} tiny-r0:ready@gpu0",
                "tiny", "llamacpp", "ready"
            )
        );
        h.ready = false;
        h.replicas[0].state = ReplicaState::CircuitOpen;
        h.last_error = Some("circuit open".into());
        let s = pool_line("tiny", "", &h);
        assert!(
            s.contains("starting/unready") && s.contains("tiny-r0:circuit_open@gpu0"),
            "{s}"
        );
        assert!(s.ends_with("\n    last error: circuit open"), "{s}");
        // An unloaded on_demand pool says so, with its expected load time and why it waits.
        h.last_error = None;
        h.replicas[0].state = ReplicaState::Unloaded;
        h.on_demand = Some(orch_api_types::pools::OnDemandInfo {
            expected_load_ms: 2500,
            idle_ms: None,
            idle_unload_s: 600,
            queued: 1,
            state: orch_api_types::pools::LoadState::Unloaded,
            waiting: Some("no room for 5.0 GiB".into()),
        });
        let s = pool_line("coder", "llamacpp", &h);
        assert!(s.contains("unloaded") && s.contains("load ~2.5 s"), "{s}");
        assert!(s.ends_with("\n    waiting: no room for 5.0 GiB"), "{s}");
    }
}
