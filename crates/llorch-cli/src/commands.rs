//! The commands.

use std::collections::HashMap;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use api_types::{AdmissionResponse, StatusSnapshot};
use base64::Engine as _;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use reqwest::Method;
use serde_json::{json, Value};

use crate::cli::{ArtifactsCmd, CatalogCmd, PoolsCmd, PriorityArg, SessionsCmd, SubmitArgs};
use crate::client::Client;
use crate::config::Settings;
use crate::error::{CliError, Exit};
use crate::metrics;
use crate::stream;

/// Long operations (reload) may take this long.
const LONG: Duration = Duration::from_secs(300);

/// Prints a JSON value on stdout (pretty for people, one line with `--json`).
pub fn print_json(v: &Value, compact: bool) {
    let s = if compact {
        v.to_string()
    } else {
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    };
    println!("{s}");
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

fn read_stdin() -> Result<Vec<u8>, CliError> {
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| CliError::usage(format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

/// `llorch submit`.
pub async fn submit(
    client: &Client,
    settings: &Settings,
    a: SubmitArgs,
    json_out: bool,
) -> Result<(), CliError> {
    let prompt = match a.prompt.as_deref() {
        Some("-") | None => {
            if std::io::stdin().is_terminal() {
                return Err(CliError::usage(
                    "no prompt: give it as an argument (`llorch submit \"Hello\"`) or pipe it on stdin",
                ));
            }
            String::from_utf8(read_stdin()?)
                .map_err(|_| CliError::usage("the prompt on stdin is not UTF-8"))?
        }
        Some(p) => p.to_owned(),
    };
    let model = match a.model.clone().or_else(|| settings.model.clone()) {
        Some(m) => m,
        None => default_model(client).await?,
    };
    let priority = match (a.priority, settings.priority.as_deref()) {
        (Some(p), _) => p.as_str().to_owned(),
        (None, Some(p)) if p == "interactive" || p == "batch" => p.to_owned(),
        (None, Some(p)) => {
            return Err(CliError::usage(format!(
                "config file priority `{p}` is not interactive or batch"
            )))
        }
        (None, None) => PriorityArg::Interactive.as_str().to_owned(),
    };
    let task_id = a
        .task_id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
    let mut body = json!({
        "task_id": task_id,
        "model_ref": model,
        "priority": priority,
        "max_tokens": a.max_tokens,
    });
    if a.chat {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        body["workload"] = json!("chat");
        body["messages"] = json!(messages);
    } else {
        body["prompt"] = json!(prompt);
    }
    let opt = |b: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b[k] = v;
        }
    };
    opt(&mut body, "seed", a.seed.map(|v| json!(v)));
    opt(&mut body, "session_id", a.session.clone().map(|v| json!(v)));
    opt(&mut body, "temperature", a.temperature.map(|v| json!(v)));
    opt(&mut body, "top_p", a.top_p.map(|v| json!(v)));
    opt(&mut body, "top_k", a.top_k.map(|v| json!(v)));
    opt(&mut body, "deadline_ms", a.deadline_ms.map(|v| json!(v)));
    if !a.stop.is_empty() {
        body["stop"] = json!(a.stop);
    }
    if let Some(p) = &a.pool {
        body["placement"] = json!({ "pin_pool": p });
    }
    let v = client
        .call_json(
            Method::POST,
            "/v1/tasks",
            Some(&body),
            Some(Duration::from_secs(60)),
        )
        .await?;
    let adm: AdmissionResponse = serde_json::from_value(v.clone())
        .map_err(|e| CliError::usage(format!("unexpected admission answer ({e}): {v}")))?;
    if json_out {
        stream::ndjson("admitted", &v);
    } else {
        eprintln!(
            "[task {} admitted to pool {}: queue position {}, predicted start in ~{} ms]",
            adm.task_id, adm.pool_id, adm.queue_position, adm.predicted_start_ms
        );
    }
    if a.no_stream {
        if !json_out {
            println!("{}", adm.task_id);
        }
        return Ok(());
    }
    stream::follow_interruptible(client, &adm.task_id, json_out, !a.detach_on_interrupt).await
}

/// The daemon's only pool, for `submit` without `--model`.
async fn default_model(client: &Client) -> Result<String, CliError> {
    let caps = client.get_json("/v1/capabilities").await?;
    let pools: Vec<String> = caps
        .get("pools")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("id").and_then(Value::as_str).map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    match pools.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::usage(
            "the daemon has no pool; configure one (see `llorch doctor`)",
        )),
        many => Err(CliError::usage(format!(
            "several pools ({}); choose one with --model or set `model` in ~/.config/llama-orch/cli.toml",
            many.join(", ")
        ))),
    }
}

/// `llorch stream`.
pub async fn stream_cmd(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    stream::follow_interruptible(client, task_id, json_out, false).await
}

/// `llorch cancel`.
pub async fn cancel(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    let path = format!("/v1/tasks/{}/cancel", seg(task_id));
    let v = client
        .call_json(Method::POST, &path, None, Some(Duration::from_secs(30)))
        .await?;
    if json_out {
        print_json(&v, true);
    } else {
        println!(
            "task {}: {}",
            task_id,
            v.get("state").and_then(Value::as_str).unwrap_or("?")
        );
    }
    Ok(())
}

fn ms_ago(now: u64, t: Option<u64>) -> String {
    match t {
        Some(t) => format!("{:.1} s ago", now.saturating_sub(t) as f64 / 1000.0),
        None => "-".into(),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `llorch task`.
pub async fn task(client: &Client, task_id: &str, json_out: bool) -> Result<(), CliError> {
    let v = client
        .get_json(&format!("/v1/tasks/{}", seg(task_id)))
        .await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let s = |k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    };
    let now = now_ms();
    println!("task        {}", s("task_id"));
    println!("state       {}", s("state"));
    println!("pool        {}  replica {}", s("pool_id"), s("replica_id"));
    println!("priority    {}  model {}", s("priority"), s("model_ref"));
    if let Some(q) = v.get("queue_position").and_then(Value::as_u64) {
        println!("queue pos   {q}");
    }
    println!("tokens out  {}", s("tokens_out"));
    println!(
        "submitted   {}  started {}  finished {}",
        ms_ago(now, v.get("submitted_ms").and_then(Value::as_u64)),
        ms_ago(now, v.get("started_ms").and_then(Value::as_u64)),
        ms_ago(now, v.get("finished_ms").and_then(Value::as_u64))
    );
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        println!(
            "error       {}: {}",
            e.get("code").and_then(Value::as_str).unwrap_or("?"),
            e.get("message").and_then(Value::as_str).unwrap_or("")
        );
    }
    if let Some(a) = v.get("transcript_artifact").and_then(Value::as_str) {
        println!("transcript  {a}   (llorch artifacts get {a})");
    }
    Ok(())
}

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

/// `llorch sessions …`.
pub async fn sessions(client: &Client, cmd: SessionsCmd, json_out: bool) -> Result<(), CliError> {
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

/// `llorch catalog …`.
pub async fn catalog(client: &Client, cmd: CatalogCmd, json_out: bool) -> Result<(), CliError> {
    let t = Some(Duration::from_secs(60));
    let v = match cmd {
        CatalogCmd::List => {
            let v = client.get_json("/v1/catalog/models").await?;
            if !json_out {
                let models = v
                    .get("models")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                if models.is_empty() {
                    println!("(no models registered; `llorch catalog register ID PATH`)");
                }
                for m in models {
                    let g = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
                    let served: Vec<String> = m
                        .get("served_by")
                        .and_then(Value::as_array)
                        .map(|a| {
                            a.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    println!(
                        "{:<24} {:<8} {}  {}",
                        g("id"),
                        g("state"),
                        g("ref"),
                        if served.is_empty() {
                            String::new()
                        } else {
                            format!("(pools: {})", served.join(", "))
                        }
                    );
                }
                return Ok(());
            }
            v
        }
        CatalogCmd::Show { id } => {
            client
                .get_json(&format!("/v1/catalog/models/{}", seg(&id)))
                .await?
        }
        CatalogCmd::Register {
            id,
            reference,
            digest,
            signature,
            sbom,
        } => {
            let mut body = json!({ "id": id, "ref": reference });
            if let Some(d) = digest {
                body["digest"] = json!(d);
            }
            for (k, p) in [("signature", signature), ("sbom", sbom)] {
                if let Some(p) = p {
                    let text = std::fs::read_to_string(&p).map_err(|e| {
                        CliError::usage(format!("cannot read {k} file {}: {e}", p.display()))
                    })?;
                    body[k] = json!(text);
                }
            }
            client
                .call_json(Method::POST, "/v1/catalog/models", Some(&body), t)
                .await?
        }
        CatalogCmd::Verify { id } => {
            let pb = client.spinner();
            pb.set_message(format!("hashing model {id}"));
            let r = client
                .call_json(
                    Method::POST,
                    &format!("/v1/catalog/models/{}/verify", seg(&id)),
                    None,
                    Some(LONG),
                )
                .await;
            pb.finish_and_clear();
            r?
        }
        CatalogCmd::State { id, state } => {
            client
                .call_json(
                    Method::POST,
                    &format!("/v1/catalog/models/{}/state", seg(&id)),
                    Some(&json!({ "state": state })),
                    t,
                )
                .await?
        }
        CatalogCmd::Delete { id } => {
            let v = client
                .call_json(
                    Method::DELETE,
                    &format!("/v1/catalog/models/{}", seg(&id)),
                    None,
                    t,
                )
                .await?;
            if !json_out && v.is_null() {
                println!("deleted {id}");
                return Ok(());
            }
            v
        }
    };
    if json_out {
        print_json(&v, true);
    } else {
        print_json(&v, false);
    }
    Ok(())
}

fn pool_line(p: &Value) -> String {
    let h = p.get("health").unwrap_or(p);
    let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
    let state = if flag("draining") {
        "draining"
    } else if flag("ready") {
        "ready"
    } else if flag("live") {
        "starting/unready"
    } else {
        "down"
    };
    let replicas: Vec<String> = h
        .get("replicas")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|r| {
                    format!(
                        "{}:{}@{}",
                        r.get("id").and_then(Value::as_str).unwrap_or("?"),
                        r.get("state").and_then(Value::as_str).unwrap_or("?"),
                        r.get("device").and_then(Value::as_str).unwrap_or("?")
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut s = format!(
        "{:<16} {:<9} {:<16} {}",
        p.get("id").and_then(Value::as_str).unwrap_or("?"),
        p.get("engine").and_then(Value::as_str).unwrap_or(""),
        state,
        replicas.join(" ")
    );
    if let Some(e) = h.get("last_error").and_then(Value::as_str) {
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

/// `llorch pools …`.
pub async fn pools(client: &Client, cmd: PoolsCmd, json_out: bool) -> Result<(), CliError> {
    match cmd {
        PoolsCmd::List => {
            let v = client.get_json("/v1/pools").await?;
            if json_out {
                print_json(&v, true);
            } else {
                for p in v
                    .get("pools")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default()
                {
                    println!("{}", pool_line(&p));
                }
            }
        }
        PoolsCmd::Health { pool_id } => {
            let v = client
                .get_json(&format!("/v1/pools/{}/health", seg(&pool_id)))
                .await?;
            if json_out {
                print_json(&v, true);
            } else {
                let mut p = json!({ "id": pool_id, "health": v });
                if let Some(o) = p.as_object_mut() {
                    o.insert("engine".into(), json!(""));
                }
                println!("{}", pool_line(&p));
                print_json(&v, false);
            }
        }
        PoolsCmd::Drain {
            pool_id,
            resume: true,
            ..
        } => {
            let v = client
                .call_json(
                    Method::POST,
                    &format!("/v1/pools/{}/drain", seg(&pool_id)),
                    Some(&json!({ "resume": true })),
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
        } => {
            let before = pool_inflight(client, &pool_id)
                .await
                .map(|x| x.0)
                .unwrap_or(0);
            let pb = client.spinner();
            pb.set_message(format!(
                "asking pool {pool_id} to drain (deadline {deadline_ms} ms)"
            ));
            let r = client
                .call_json(
                    Method::POST,
                    &format!("/v1/pools/{}/drain", seg(&pool_id)),
                    Some(&json!({ "deadline_ms": deadline_ms })),
                    Some(Duration::from_millis(deadline_ms) + LONG),
                )
                .await;
            pb.finish_and_clear();
            let v = r?;
            if !no_wait && before > 0 {
                let bar = if client.human {
                    let b = ProgressBar::new(before as u64);
                    b.set_style(
                        ProgressStyle::with_template(
                            "{bar:30} {pos}/{len} in-flight tasks done {msg}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    b
                } else {
                    ProgressBar::hidden()
                };
                let until =
                    Instant::now() + Duration::from_millis(deadline_ms) + Duration::from_secs(10);
                while Instant::now() < until {
                    let Some((left, _)) = pool_inflight(client, &pool_id).await else {
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
        }
        PoolsCmd::Reload {
            pool_id,
            new_model_ref,
        } => {
            let pb = client.spinner();
            pb.set_message(format!(
                "reloading pool {pool_id} to {new_model_ref}: starting the new engine, health-checking, swapping"
            ));
            let started = Instant::now();
            let r = client
                .call_json(
                    Method::POST,
                    &format!("/v1/pools/{}/reload", seg(&pool_id)),
                    Some(&json!({ "new_model_ref": new_model_ref })),
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

/// `llorch capabilities`.
pub async fn capabilities(client: &Client, json_out: bool) -> Result<(), CliError> {
    let v = client.get_json("/v1/capabilities").await?;
    if json_out {
        print_json(&v, true);
        return Ok(());
    }
    let g = |k: &str| {
        v.get(k)
            .map(|x| match x {
                Value::String(s) => s.clone(),
                x => x.to_string(),
            })
            .unwrap_or_default()
    };
    println!("api {}  daemon {}", g("api_version"), g("daemon_version"));
    println!(
        "queue policy {}  priorities {}",
        g("queue_policy"),
        g("priorities")
    );
    println!(
        "gpu mode {}  dev cpu inference {}",
        g("gpu_mode"),
        g("dev_allow_cpu_inference")
    );
    for p in v
        .get("pools")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
    {
        let f = |k: &str| {
            p.get(k)
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    x => x.to_string(),
                })
                .unwrap_or_default()
        };
        println!(
            "pool {:<14} {} {}  ctx_max {}  max_tokens {}  concurrency {}  replicas {}  devices {}  queue {}  ready {}",
            f("id"), f("engine"), f("engine_version"), f("ctx_max"), f("max_tokens"),
            f("concurrency"), f("replicas"), f("devices"), f("queue_capacity"), f("ready")
        );
    }
    Ok(())
}

/// `llorch artifacts …`.
pub async fn artifacts(client: &Client, cmd: ArtifactsCmd, json_out: bool) -> Result<(), CliError> {
    match cmd {
        ArtifactsCmd::Put {
            file,
            kind,
            tag,
            parent,
            meta,
        } => {
            let bytes = match file.as_deref() {
                None => read_stdin()?,
                Some(p) if p == Path::new("-") => read_stdin()?,
                Some(p) => std::fs::read(p)
                    .map_err(|e| CliError::usage(format!("cannot read {}: {e}", p.display())))?,
            };
            let (content, encoding) = match String::from_utf8(bytes) {
                Ok(s) => (s, "utf8"),
                Err(e) => (
                    base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                    "base64",
                ),
            };
            let mut metadata = serde_json::Map::new();
            for m in meta {
                let (k, v) = m
                    .split_once('=')
                    .ok_or_else(|| CliError::usage(format!("--meta `{m}` is not KEY=VALUE")))?;
                metadata.insert(k.to_owned(), json!(v));
            }
            let mut body = json!({
                "kind": kind, "content": content, "encoding": encoding,
                "tags": tag, "metadata": metadata,
            });
            if let Some(p) = parent {
                body["parent"] = json!(p);
            }
            let v = client
                .call_json(Method::POST, "/v1/artifacts", Some(&body), Some(LONG))
                .await?;
            if json_out {
                print_json(&v, true);
            } else {
                println!("{}", v.get("id").and_then(Value::as_str).unwrap_or("?"));
                if let Some(u) = v.get("url").and_then(Value::as_str) {
                    eprintln!("[stored; download: {u}]");
                }
            }
        }
        ArtifactsCmd::Get { id, output } => {
            let v = client
                .get_json(&format!("/v1/artifacts/{}", seg(&id)))
                .await?;
            if json_out {
                print_json(&v, true);
                return Ok(());
            }
            let content = v.get("content").and_then(Value::as_str).unwrap_or_default();
            let bytes = match v.get("encoding").and_then(Value::as_str) {
                Some("base64") => base64::engine::general_purpose::STANDARD
                    .decode(content)
                    .map_err(|e| {
                        CliError::usage(format!("the artifact's base64 content is invalid: {e}"))
                    })?,
                _ => content.as_bytes().to_vec(),
            };
            match output {
                Some(p) => {
                    std::fs::write(&p, &bytes).map_err(|e| {
                        CliError::usage(format!("cannot write {}: {e}", p.display()))
                    })?;
                    eprintln!("[wrote {} bytes to {}]", bytes.len(), p.display());
                }
                None => {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&bytes)
                        .and_then(|_| out.flush())
                        .map_err(|e| CliError::usage(format!("cannot write to stdout: {e}")))?;
                }
            }
        }
        ArtifactsCmd::Ls { tag, kind } => {
            let mut q = Vec::new();
            if let Some(t) = tag {
                q.push(format!("tag={}", seg(&t)));
            }
            if let Some(k) = kind {
                q.push(format!("kind={}", seg(&k)));
            }
            let path = if q.is_empty() {
                "/v1/artifacts".to_owned()
            } else {
                format!("/v1/artifacts?{}", q.join("&"))
            };
            let v = client.get_json(&path).await?;
            if json_out {
                print_json(&v, true);
                return Ok(());
            }
            let now = now_ms();
            for a in v
                .get("artifacts")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                let tags: Vec<String> = a
                    .get("tags")
                    .and_then(Value::as_array)
                    .map(|t| {
                        t.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                println!(
                    "{}  {:<10} {:>9} B  {:>12}  {}",
                    a.get("id").and_then(Value::as_str).unwrap_or("?"),
                    a.get("kind").and_then(Value::as_str).unwrap_or("?"),
                    a.get("size").and_then(Value::as_u64).unwrap_or(0),
                    ms_ago(now, a.get("created_ms").and_then(Value::as_u64)),
                    tags.join(",")
                );
            }
        }
    }
    Ok(())
}

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
        let state = serde_json::to_value(t.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let prio = serde_json::to_value(t.priority)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        push(
            &mut o,
            format!(
                "  {:<40} {:<9} {:<12} {:<11} {:>6} tok  {}{}",
                t.task_id,
                state,
                t.pool_id,
                prio,
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

/// `llorch status`.
pub async fn status(
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
        let s: StatusSnapshot = serde_json::from_value(v)
            .map_err(|e| CliError::usage(format!("unexpected /v1/status answer: {e}")))?;
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

/// `llorch metrics`.
pub async fn metrics_cmd(
    client: &Client,
    follow: bool,
    interval: f64,
    grep: Option<String>,
    all: bool,
    json_out: bool,
) -> Result<(), CliError> {
    let select = |s: &metrics::Sample| {
        (all || metrics::interesting(s)) && grep.as_deref().is_none_or(|g| s.key().contains(g))
    };
    let mut last: HashMap<String, f64> = HashMap::new();
    let interval = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    let mut first = true;
    loop {
        let text = client.get_text("/metrics").await?;
        let samples: Vec<metrics::Sample> = metrics::parse(&text)
            .into_iter()
            .filter(|s| select(s))
            .collect();
        let now = now_ms();
        for s in &samples {
            let key = s.key();
            let prev = last.insert(key.clone(), s.value);
            if !first && prev == Some(s.value) {
                continue;
            }
            if json_out {
                let mut line =
                    json!({ "name": s.name, "labels": s.labels_json(), "value": s.value });
                if follow {
                    line["time_ms"] = json!(now);
                }
                println!("{line}");
            } else if first || !follow {
                println!("{key} {}", metrics::fmt_value(s.value));
            } else {
                let delta = s.value - prev.unwrap_or(0.0);
                println!(
                    "{} {key} {} ({}{})",
                    now / 1000,
                    metrics::fmt_value(s.value),
                    if delta >= 0.0 { "+" } else { "" },
                    metrics::fmt_value(delta)
                );
            }
        }
        if first && !json_out && samples.is_empty() {
            eprintln!(
                "(no matching series yet; they appear once tasks ran; --all shows everything)"
            );
        }
        if !follow {
            return Ok(());
        }
        first = false;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(interval).await;
    }
}
