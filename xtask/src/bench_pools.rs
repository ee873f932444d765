//! `cargo xtask bench pools`: how long a pool reload and a crash restart take, end to end
//! through the HTTP API of a real orchestratord running a real llama-server (CPU, dev setting).
//!
//! * reload: `POST /v1/pools/{id}/reload`, alternating between two models, timed from the
//!   request to the answer (new replica started beside the old, healthy, dispatch switched).
//! * crash restart: SIGKILL the replica's engine, timed until `GET /v1/pools/{id}/health` shows
//!   a new engine process ready. Each run first reloads the pool (a fresh replica has a fresh
//!   backoff and crash window), so every run measures a *first* crash: backoff (250 ms ± 20 %)
//!   plus spawn, model load and the first health check.
//!
//! It builds nothing; it runs `target/release/orchestratord` when it exists, else the debug
//! build (the daemon's build profile barely matters here; the engine's start dominates).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use crate::bench_util::{median_min_max, second_model, Daemon, EngineArgs};

/// Arguments of `cargo xtask bench pools`.
#[derive(clap::Args)]
pub struct PoolsArgs {
    /// The daemon and the engine.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Second model [default: tiny-llama-g2-s43.gguf next to the first; `cargo xtask gen-model --seed 43`].
    #[arg(long, env = "TEST_MODEL_2")]
    pub model2: Option<PathBuf>,
    /// Measurements of each kind.
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
}

/// The daemon with one 2-slot pool `bench` on `model`.
fn start_daemon(bin: &Path, server: &Path, model: &Path) -> Result<Daemon> {
    Daemon::start(bin, |data| {
        format!(
            "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\ndev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n  - id: bench\n    model: \"{}\"\n    engine_binary: \"{}\"\n    slots: 2\n    ctx: 4096\n    startup_timeout_s: 60\n",
            data.display(),
            model.display(),
            server.display()
        )
    })
}

async fn health(c: &reqwest::Client, base: &str) -> Result<Value> {
    Ok(c.get(format!("{base}/v1/pools/bench/health"))
        .send()
        .await?
        .json()
        .await?)
}

/// Waits until the pool's first replica is ready and (if given) not `old_pid`.
async fn wait_ready(c: &reqwest::Client, base: &str, old_pid: Option<u64>) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let h = health(c, base).await?;
        let r = &h["replicas"][0];
        let fresh = old_pid.is_none_or(|p| r["pid"].as_u64() != Some(p));
        if r["state"] == "ready" && fresh && h.get("retiring").is_none() {
            return Ok(h);
        }
        if Instant::now() > deadline {
            bail!("pool not ready in 60 s: {h}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn reload(c: &reqwest::Client, base: &str, model: &Path) -> Result<(Duration, u64)> {
    let t0 = Instant::now();
    let r = c
        .post(format!("{base}/v1/pools/bench/reload"))
        .json(&json!({ "new_model_ref": model }))
        .send()
        .await?;
    let took = t0.elapsed();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("reload failed ({status}): {v}");
    }
    Ok((took, v["took_ms"].as_u64().unwrap_or(0)))
}

/// Runs the benchmark and prints the results.
pub async fn run(a: PoolsArgs) -> Result<()> {
    let bin = a.engine.daemon()?;
    let (server, model) = a.engine.engine()?;
    let model2 = second_model(a.model2, &model)?;
    let runs = a.runs.max(1);
    eprintln!(
        "[bench pools] daemon {} · engine {} · {runs} runs each",
        bin.display(),
        server.display()
    );
    let d = start_daemon(&bin, &server, &model)?;
    let c = reqwest::Client::new();
    wait_ready(&c, &d.base, None).await?;

    // Reload: alternate models, waiting for the old replica to be gone between runs.
    let mut client_ms = Vec::new();
    let mut server_ms = Vec::new();
    for i in 0..runs {
        let m = if i % 2 == 0 { &model2 } else { &model };
        let (took, srv) = reload(&c, &d.base, m).await?;
        client_ms.push(took.as_secs_f64() * 1000.0);
        server_ms.push(srv as f64);
        wait_ready(&c, &d.base, None).await?;
    }

    // Crash restart: fresh replica (reload on the serving model), then SIGKILL its engine.
    let mut restart_ms = Vec::new();
    for _ in 0..runs {
        let h = health(&c, &d.base).await?;
        let m = h["model"].as_str().unwrap_or_default().to_owned();
        reload(&c, &d.base, Path::new(&m)).await?;
        let h = wait_ready(&c, &d.base, None).await?;
        let pid = h["replicas"][0]["pid"]
            .as_u64()
            .ok_or_else(|| anyhow!("no pid in {h}"))?;
        let t0 = Instant::now();
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -KILL {pid} failed");
        }
        wait_ready(&c, &d.base, Some(pid)).await?;
        restart_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    drop(d);

    let (rm, rmin, rmax) = median_min_max(&mut client_ms);
    let (sm, _, _) = median_min_max(&mut server_ms);
    let (cm, cmin, cmax) = median_min_max(&mut restart_ms);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("bench pools — tiny model on llama-server (CPU), {cores} cores, {runs} runs each");
    println!("| measurement | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| reload (request → new replica serving) | {rm:.0} ms | {rmin:.0} ms | {rmax:.0} ms |"
    );
    println!("| reload, server-side `took_ms` | {sm:.0} ms | | |");
    println!(
        "| crash restart (SIGKILL → ready again) | {cm:.0} ms | {cmin:.0} ms | {cmax:.0} ms |"
    );
    Ok(())
}
