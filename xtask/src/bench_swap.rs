//! `cargo xtask bench swap`: what models on demand cost, end to end through the HTTP API of a
//! real orchestratord running real llama-server engines (CPU, dev setting) on one fake card that
//! holds one model at a time (`dev.fake_gpus`).
//!
//! * engine alone: `llama-server` started directly, timed to its first good `/health` — the
//!   load time the daemon cannot beat;
//! * cold load: `POST /v1/pools/a/load` with nothing loaded (request → engine serving);
//! * swap: `POST /v1/pools/b/load` while `a` is loaded and idle (evict `a`, load `b`);
//! * first token at an unloaded pool: a task submitted to an unloaded pool, timed from the
//!   submit to its first `token` event (admission, load, dispatch, prompt, first token).
//!
//! The orchestration's share of a load is the cold load less the engine alone.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::{json, Value};

use crate::bench_util::{free_port, median_min_max, second_model, Daemon, EngineArgs};

/// Arguments of `cargo xtask bench swap`.
#[derive(clap::Args)]
pub struct SwapArgs {
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

/// Kills a child process on drop (SIGTERM, then SIGKILL after a grace period).
struct Guard {
    child: Child,
}

impl Drop for Guard {
    fn drop(&mut self) {
        crate::bench_util::stop(&mut self.child);
    }
}

/// llama-server on `model`, as the daemon would start it, timed to its first good health check.
async fn engine_alone(c: &reqwest::Client, server: &Path, model: &Path) -> Result<f64> {
    let port = free_port()?;
    let t0 = Instant::now();
    let child = Command::new(server)
        .args(["-m", &model.display().to_string(), "--host", "127.0.0.1"])
        .args([
            "--port",
            &port.to_string(),
            "-c",
            "1024",
            "-np",
            "1",
            "-ngl",
            "0",
            "-t",
            "1",
        ])
        .env("CUDA_VISIBLE_DEVICES", "")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))?;
    let _g = Guard { child };
    let url = format!("http://127.0.0.1:{port}/health");
    loop {
        if let Ok(r) = c.get(&url).send().await {
            if r.status().is_success() {
                return Ok(t0.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("llama-server did not answer /health within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The daemon with two on-demand pools, `a` and `b`, on a card with room for one.
fn start_daemon(bin: &Path, server: &Path, model: &Path, model2: &Path) -> Result<Daemon> {
    let pool = |id: &str, m: &Path| {
        format!(
            "  - id: {id}\n    model: \"{}\"\n    engine_binary: \"{}\"\n    load: on_demand\n    idle_unload_s: 0\n    slots: 1\n    ctx: 1024\n    flags: [\"-t\", \"1\"]\n",
            m.display(),
            server.display()
        )
    };
    // One card with room for one of these pools (~785 MiB each by the estimate, 888 MiB free).
    Daemon::start(bin, |data| {
        format!(
            "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\ndev: {{ allow_cpu_inference: true, fake_gpus: \"1400MiB:Bench\" }}\nshutdown_grace_s: 2\npools:\n{}{}",
            data.display(),
            pool("a", model),
            pool("b", model2),
        )
    })
}

/// `POST path` and the answer, failing on an error status.
async fn post(c: &reqwest::Client, url: &str, body: &Value) -> Result<Value> {
    let r = c.post(url).json(body).send().await?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{url} failed ({status}): {v}");
    }
    Ok(v)
}

/// Submits a task to `pool` and times it to its first `token` event; waits for its end.
async fn first_token_ms(c: &reqwest::Client, base: &str, pool: &str, id: &str) -> Result<f64> {
    let t0 = Instant::now();
    let body = json!({
        "task_id": id, "model_ref": pool, "priority": "interactive",
        "prompt": "Once upon a time", "max_tokens": 4, "seed": 1
    });
    let adm = post(c, &format!("{base}/v1/tasks"), &body).await?;
    let sse = adm["streams"]["sse"].as_str().unwrap_or_default();
    let r = c.get(format!("{base}{sse}")).send().await?;
    let mut events = r.bytes_stream().eventsource();
    let mut first = None;
    while let Some(ev) = events.next().await {
        let ev = ev.map_err(|e| anyhow!("stream of {id}: {e}"))?;
        match ev.event.as_str() {
            "token" if first.is_none() => first = Some(t0.elapsed()),
            "end" => break,
            "error" => bail!("task {id} failed: {}", ev.data),
            _ => {}
        }
    }
    first
        .map(|d| d.as_secs_f64() * 1000.0)
        .ok_or_else(|| anyhow!("task {id} produced no token"))
}

/// Runs the benchmark and prints the results.
pub async fn run(a: SwapArgs) -> Result<()> {
    let bin = a.engine.daemon()?;
    let (server, model) = a.engine.engine()?;
    let model2 = second_model(a.model2, &model)?;
    let runs = a.runs.max(1);
    eprintln!(
        "[bench swap] daemon {} · engine {} · {runs} runs each",
        bin.display(),
        server.display()
    );
    let c = reqwest::Client::new();
    let mut alone = Vec::new();
    for _ in 0..runs {
        alone.push(engine_alone(&c, &server, &model).await?);
    }
    let daemon = start_daemon(&bin, &server, &model, &model2)?;
    let base = daemon.base.clone();
    let load = |p: &str| format!("{base}/v1/pools/{p}/load");
    let unload = |p: &str| format!("{base}/v1/pools/{p}/unload");
    let (mut cold, mut cold_srv, mut swap, mut ttft) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Cold: nothing loaded.
        post(&c, &unload("a"), &json!({})).await?;
        post(&c, &unload("b"), &json!({})).await?;
        let t0 = Instant::now();
        let v = post(&c, &load("a"), &json!({})).await?;
        cold.push(t0.elapsed().as_secs_f64() * 1000.0);
        cold_srv.push(v["took_ms"].as_f64().unwrap_or(0.0));
        // Swap: a is loaded and idle, b needs its card.
        let t0 = Instant::now();
        let v = post(&c, &load("b"), &json!({})).await?;
        swap.push(t0.elapsed().as_secs_f64() * 1000.0);
        if v["evicted"] != json!(["a"]) {
            bail!("the swap did not evict a: {v}");
        }
        // First token of a task at an unloaded pool (a was evicted by the swap).
        ttft.push(first_token_ms(&c, &base, "a", &format!("swap-{i}")).await?);
    }
    let (am, amin, amax) = median_min_max(&mut alone);
    let (cm, cmin, cmax) = median_min_max(&mut cold);
    let (csm, _, _) = median_min_max(&mut cold_srv);
    let (sm, smin, smax) = median_min_max(&mut swap);
    let (tm, tmin, tmax) = median_min_max(&mut ttft);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("bench swap — tiny model on llama-server (CPU), one fake card, {cores} cores, {runs} runs each");
    println!("| measurement | median | min | max |");
    println!("|---|---|---|---|");
    println!(
        "| engine alone (spawn → first good /health) | {am:.0} ms | {amin:.0} ms | {amax:.0} ms |"
    );
    println!(
        "| cold load (`POST …/load`, nothing loaded) | {cm:.0} ms | {cmin:.0} ms | {cmax:.0} ms |"
    );
    println!("| cold load, server-side `took_ms` | {csm:.0} ms | | |");
    println!("| swap (evict one, load the other) | {sm:.0} ms | {smin:.0} ms | {smax:.0} ms |");
    println!(
        "| first token of a task at an unloaded pool | {tm:.0} ms | {tmin:.0} ms | {tmax:.0} ms |"
    );
    println!(
        "| orchestration's share of a cold load (cold − engine alone) | {:.0} ms | | |",
        cm - am
    );
    Ok(())
}
