//! `llorch status [--watch]`: queue per priority, GPUs, pools and replicas, recent tasks.

use std::io::{IsTerminal, Write};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use orch_api_types::StatusSnapshot;
use reqwest::Method;

use super::{ms_ago, parse, print_json, wire_name};
use crate::client::Client;
use crate::error::{CliError, Exit};

fn gib(b: u64) -> String {
    format!("{:.1}", b as f64 / (1u64 << 30) as f64)
}

/// Renders a status snapshot for people.
pub fn render_status(s: &StatusSnapshot, max_tasks: usize) -> String {
    let mut o = String::new();
    let push = |o: &mut String, l: String| {
        o.push_str(&l);
        o.push('\n');
    };
    push(
        &mut o,
        format!(
            "orchestratord {} · {}{}",
            s.daemon_version,
            s.gpu_mode,
            if s.shutting_down {
                " · SHUTTING DOWN"
            } else {
                ""
            }
        ),
    );
    push(
        &mut o,
        format!(
            "queue: {} interactive, {} batch waiting · {} running",
            s.queue.interactive, s.queue.batch, s.queue.running
        ),
    );
    push(&mut o, "\nGPUS".into());
    if s.gpus.is_empty() {
        push(
            &mut o,
            "  (none: engines run on the CPU or on remote endpoints)".into(),
        );
    }
    for g in &s.gpus {
        push(
            &mut o,
            format!(
                "  gpu{:<2} {:<28} util {:>4}  VRAM {:>6} / {:>6} GiB used",
                g.index,
                g.name,
                g.utilization_pct
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "-".into()),
                gib(g.vram_used_bytes),
                gib(g.vram_total_bytes)
            ),
        );
    }
    push(&mut o, "\nPOOLS".into());
    if s.pools.is_empty() {
        push(&mut o, "  (no pools configured)".into());
    }
    for p in &s.pools {
        let state = if p.draining {
            "draining"
        } else if p.ready {
            "ready"
        } else {
            "unready"
        };
        push(
            &mut o,
            format!(
                "  {:<14} {:<9} {:<8} queue {}i/{}b (cap {}) · {} running · {} slots  {}",
                p.id,
                p.engine,
                state,
                p.queue.interactive,
                p.queue.batch,
                p.queue_capacity,
                p.queue.running,
                p.slots_ready,
                p.engine_version
            ),
        );
        for r in &p.replicas {
            push(
                &mut o,
                format!(
                    "    {:<16} {:<12} {:<6} pid {:<8} restarts {}{}",
                    r.id,
                    r.state,
                    r.device,
                    r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    r.restarts,
                    r.last_error
                        .as_deref()
                        .map(|e| format!("  last error: {e}"))
                        .unwrap_or_default()
                ),
            );
        }
    }
    push(&mut o, "\nRECENT TASKS".into());
    if s.tasks.is_empty() {
        push(&mut o, "  (none)".into());
    }
    for t in s.tasks.iter().take(max_tasks) {
        let state = wire_name(&t.state);
        let prio = wire_name(&t.priority);
        push(
            &mut o,
            format!(
                "  {:<40} {:<9} {:<12} {:<11} {:<16} {:>6} tok  {}{}",
                t.task_id,
                state,
                t.pool_id,
                prio,
                t.dialect.as_str(),
                t.tokens_out,
                ms_ago(s.time_ms, Some(t.submitted_ms)),
                t.error
                    .as_ref()
                    .map(|e| format!("  {}", e.code.as_str()))
                    .unwrap_or_default()
            ),
        );
    }
    o
}

/// Prints the daemon at a glance once, or with `watch` follows `/v1/status/stream`.
pub async fn run(
    client: &Client,
    watch: bool,
    tasks: usize,
    json_out: bool,
) -> Result<(), CliError> {
    let path = format!("/v1/status?recent={}", tasks.max(1));
    if !watch {
        let v = client.get_json(&path).await?;
        if json_out {
            print_json(&v, true);
            return Ok(());
        }
        let s: StatusSnapshot = parse(&v, "/v1/status")?;
        print!("{}", render_status(&s, tasks));
        return Ok(());
    }
    let spath = format!("/v1/status/stream?recent={}", tasks.max(1));
    let resp = client.send(Method::GET, &spath, None, None).await?;
    let mut events = resp.bytes_stream().eventsource();
    let tty = std::io::stdout().is_terminal();
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| {
            CliError::new(Exit::Connection, format!("status stream broke off: {e}"))
        })?;
        if ev.event != "status" {
            continue;
        }
        if json_out {
            println!("{}", ev.data);
            continue;
        }
        let Ok(s) = serde_json::from_str::<StatusSnapshot>(&ev.data) else {
            continue;
        };
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = write!(out, "{}", render_status(&s, tasks));
        let _ = out.flush();
    }
    Err(CliError::new(Exit::Connection, "the status stream ended"))
}
