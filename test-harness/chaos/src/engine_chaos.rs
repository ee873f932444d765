//! Engine chaos: SIGKILL the engine replica mid-stream N times, then freeze it (SIGSTOP)
//! mid-stream a few times.
//!
//! Targets: every kill ends the running stream with one `error` event `WORKER_RESET`
//! (retriable) within [`STREAM_BOUND`], no stream hangs, the replica comes back each time; a
//! frozen engine is detected by its failed health checks, killed and restarted, and its
//! stream ends with `WORKER_RESET` within [`HANG_BOUND`]; `engine_restarts_total` counts every
//! crash.
//!
//! The circuit breaker (`orch_pool_manager::supervisor`: [`CIRCUIT_CRASHES`] crashes within
//! [`CIRCUIT_WINDOW`]) is part of what is tested, not avoided: kills come in cycles of
//! `CIRCUIT_CRASHES`. After each of the first `CIRCUIT_CRASHES - 1` kills of a cycle the
//! supervisor must restart the replica (state `ready`, `restarts` + 1, a new pid); the last kill
//! of a cycle must open the circuit (replica `circuit_open`, admission answers 503
//! `POOL_UNAVAILABLE` naming the circuit), and `POST /v1/pools/tiny/reload` must clear it (a
//! new generation serves). Spacing kills more than `CIRCUIT_WINDOW / (CIRCUIT_CRASHES - 1)`
//! apart would avoid the breaker but make 100 kills take an hour.

use std::sync::Arc;
use std::time::{Duration, Instant};

use orch_harness::signal;
use orch_pool_manager::{CIRCUIT_CRASHES, CIRCUIT_WINDOW};
use serde_json::{json, Value};

use crate::{metric_sum, percentile, task, wait_until, Api, Ctx, Outcome, StreamEnd};

/// A stream must end this soon after its engine is killed.
pub const STREAM_BOUND: Duration = Duration::from_secs(10);
/// A stream must end this soon after its engine freezes (the supervisor kills an engine after
/// 10 failed health checks of about 3 s each).
pub const HANG_BOUND: Duration = Duration::from_secs(60);
/// A crashed replica must be serving again this soon.
const RESTART_BOUND: Duration = Duration::from_secs(30);

/// The current generation's replica of pool `tiny`.
async fn serving(api: &Api) -> Option<Value> {
    api.replicas("tiny")
        .await
        .into_iter()
        .filter(|r| r["state"] != "retiring" && r["state"] != "stopped")
        .max_by_key(|r| r["generation"].as_u64().unwrap_or(0))
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("engine chaos");
    let kills = ctx.profile.engine_kills;
    let sut = ctx.start(
        "engine-chaos",
        ctx.options(ctx.config("", &[ctx.pool("tiny", 1, 8192)])),
    );
    let api = sut.api();
    o.fig(
        "circuit breaker",
        format!(
            "{CIRCUIT_CRASHES} crashes within {} s open it; kills come in cycles of {CIRCUIT_CRASHES}: restart after kills 1-{}, circuit opens on kill {CIRCUIT_CRASHES}, reload clears it",
            CIRCUIT_WINDOW.as_secs(),
            CIRCUIT_CRASHES - 1
        ),
    );
    let mut kill_to_error = Vec::new();
    let mut restart_ms = Vec::new();
    let mut reload_ms = Vec::new();
    let (mut errors, mut hung, mut worker_reset, mut restarts_ok, mut circuits, mut reloads) =
        (0usize, 0usize, 0usize, 0usize, 0usize, 0usize);
    let mut in_cycle = 0usize;
    let t0 = Instant::now();
    for k in 0..kills {
        let Some(rep) = serving(&api).await else {
            o.fail(format!("kill {k}: no serving replica"));
            break;
        };
        let (rid, pid, restarts) = (
            rep["id"].as_str().unwrap_or("").to_owned(),
            rep["pid"].as_u64().unwrap_or(0) as u32,
            rep["restarts"].as_u64().unwrap_or(0),
        );
        if !o.check(rep["state"] == "ready" && pid != 0, || {
            format!("kill {k}: replica not ready before the kill: {rep}")
        }) {
            break;
        }
        let id = format!("kill-{k}");
        match api.submit(&task(&id, 8000, k as u64)).await {
            Ok(r) if r.status == 202 => {}
            Ok(r) => {
                o.fail(format!(
                    "kill {k}: admission answered {} {}",
                    r.status, r.text
                ));
                break;
            }
            Err(e) => {
                o.fail(format!("kill {k}: admission failed: {e}"));
                break;
            }
        }
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        let reader = {
            let api = api.clone();
            let id = id.clone();
            tokio::spawn(async move { api.follow(&id, Duration::from_secs(120), Some(tx)).await })
        };
        let got_tokens = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= 3))
            .await
            .is_ok_and(|r| r.is_ok());
        if !o.check(got_tokens, || format!("kill {k}: no tokens within 30 s")) {
            break;
        }
        let killed = Instant::now();
        signal(pid, libc::SIGKILL);
        let res = match tokio::time::timeout(STREAM_BOUND, reader).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                o.fail(format!("kill {k}: reader task failed: {e}"));
                break;
            }
            Err(_) => {
                hung += 1;
                o.fail(format!(
                    "kill {k}: stream did not end within {STREAM_BOUND:?} of the kill (hung)"
                ));
                continue;
            }
        };
        kill_to_error.push(killed.elapsed().as_secs_f64() * 1000.0);
        if res.terminal_name() == "error" {
            errors += 1;
        }
        let env = res.terminal().map(|e| e.json()).unwrap_or(Value::Null);
        let ok = res.end == StreamEnd::Eof
            && env["code"] == "WORKER_RESET"
            && env["retriable"] == true
            && res.events.iter().all(|e| e.event != "end");
        if o.check(ok, || {
            format!(
                "kill {k}: expected one WORKER_RESET error ending the stream: {}",
                res.summary()
            )
        }) {
            worker_reset += 1;
        }
        in_cycle += 1;
        if in_cycle < CIRCUIT_CRASHES {
            // The supervisor restarts the same replica.
            let back = wait_until(RESTART_BOUND, || async {
                serving(&api).await.is_some_and(|r| {
                    r["id"] == rid.as_str()
                        && r["state"] == "ready"
                        && r["restarts"].as_u64() == Some(restarts + 1)
                        && r["pid"].as_u64().is_some_and(|p| p as u32 != pid)
                })
            })
            .await;
            if o.check(back, || {
                format!("kill {k}: replica {rid} not restarted within {RESTART_BOUND:?}")
            }) {
                restarts_ok += 1;
                restart_ms.push(killed.elapsed().as_secs_f64() * 1000.0);
            } else {
                break;
            }
        } else {
            // The breaker must open; a reload must clear it.
            in_cycle = 0;
            let opened = wait_until(Duration::from_secs(10), || async {
                api.replicas("tiny")
                    .await
                    .iter()
                    .any(|r| r["id"] == rid.as_str() && r["state"] == "circuit_open")
            })
            .await;
            if !o.check(opened, || {
                format!("kill {k}: circuit did not open after {CIRCUIT_CRASHES} crashes")
            }) {
                break;
            }
            circuits += 1;
            match api.submit(&task(&format!("refused-{k}"), 8, 1)).await {
                Ok(r) => {
                    o.check(
                        r.status == 503
                            && r.code() == "POOL_UNAVAILABLE"
                            && r.text.contains("circuit")
                            && r.header("retry-after").is_some(),
                        || {
                            format!(
                                "kill {k}: admission with the circuit open: {} {}",
                                r.status, r.text
                            )
                        },
                    );
                }
                Err(e) => o.fail(format!("kill {k}: admission failed: {e}")),
            }
            let t = Instant::now();
            match api.post("/v1/pools/tiny/reload", &json!({})).await {
                Ok(r) if r.status == 200 => {
                    reloads += 1;
                    reload_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                Ok(r) => {
                    o.fail(format!("kill {k}: reload answered {} {}", r.status, r.text));
                    break;
                }
                Err(e) => {
                    o.fail(format!("kill {k}: reload failed: {e}"));
                    break;
                }
            }
            let ready = wait_until(RESTART_BOUND, || async {
                serving(&api).await.is_some_and(|r| {
                    r["state"] == "ready" && r["id"] != rid.as_str() && r["restarts"] == 0
                })
            })
            .await;
            if !o.check(ready, || {
                format!("kill {k}: no ready replica after the reload")
            }) {
                break;
            }
        }
    }
    let total = t0.elapsed();
    // Hung engines: SIGSTOP instead of SIGKILL. The supervisor must notice (failed health
    // checks), kill and restart it, and the stream must end with WORKER_RESET.
    if in_cycle > 0 {
        // Start the hangs on a fresh crash count.
        let _ = api.post("/v1/pools/tiny/reload", &json!({})).await;
        wait_until(RESTART_BOUND, || async {
            serving(&api)
                .await
                .is_some_and(|r| r["state"] == "ready" && r["restarts"] == 0)
        })
        .await;
    }
    let hangs = ctx.profile.engine_hangs;
    let (mut hang_resets, mut hang_to_error) = (0usize, Vec::new());
    for h in 0..hangs {
        let Some(rep) = serving(&api).await.filter(|r| r["state"] == "ready") else {
            o.fail(format!("hang {h}: no ready replica"));
            break;
        };
        let (rid, pid, restarts) = (
            rep["id"].as_str().unwrap_or("").to_owned(),
            rep["pid"].as_u64().unwrap_or(0) as u32,
            rep["restarts"].as_u64().unwrap_or(0),
        );
        let id = format!("hang-{h}");
        if !api
            .submit(&task(&id, 8000, h as u64))
            .await
            .is_ok_and(|r| r.status == 202)
        {
            o.fail(format!("hang {h}: not admitted"));
            break;
        }
        let (tx, mut rx) = tokio::sync::watch::channel(0u64);
        let reader = {
            let api = api.clone();
            let id = id.clone();
            tokio::spawn(async move { api.follow(&id, Duration::from_secs(300), Some(tx)).await })
        };
        let got = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|n| *n >= 3))
            .await
            .is_ok_and(|r| r.is_ok());
        if !o.check(got, || format!("hang {h}: no tokens within 30 s")) {
            break;
        }
        let stopped = Instant::now();
        signal(pid, libc::SIGSTOP);
        let res = match tokio::time::timeout(HANG_BOUND, reader).await {
            Ok(Ok(r)) => r,
            _ => {
                hung += 1;
                o.fail(format!(
                    "hang {h}: stream still open {HANG_BOUND:?} after the engine froze (hung)"
                ));
                signal(pid, libc::SIGKILL);
                break;
            }
        };
        hang_to_error.push(stopped.elapsed().as_secs_f64() * 1000.0);
        if o.check(res.error_code().as_deref() == Some("WORKER_RESET"), || {
            format!("hang {h}: expected WORKER_RESET: {}", res.summary())
        }) {
            hang_resets += 1;
        }
        let back = wait_until(RESTART_BOUND, || async {
            serving(&api).await.is_some_and(|r| {
                r["id"] == rid.as_str()
                    && r["state"] == "ready"
                    && r["restarts"].as_u64() == Some(restarts + 1)
            })
        })
        .await;
        o.check(back && !orch_harness::alive(pid), || {
            format!("hang {h}: the frozen engine {pid} was not replaced")
        });
    }
    let hang_fig = (
        "engine frozen mid-stream (SIGSTOP): streams ended with WORKER_RESET / freezes; freeze → error event, s",
        format!(
            "{hang_resets} / {hangs}; {:?}",
            hang_to_error.iter().map(|ms| (ms / 100.0).round() / 10.0).collect::<Vec<_>>()
        ),
    );
    // Every crash of a serving replica is counted (a killed hung engine is a crash).
    let m = api.metrics().await;
    let counted = metric_sum(&m, "engine_restarts_total", &["pool_id=\"tiny\""]).unwrap_or(0.0);
    o.check(counted as usize == kills + hangs, || {
        format!(
            "engine_restarts_total{{pool_id=\"tiny\"}} is {counted}, expected {}",
            kills + hangs
        )
    });
    // Still serving.
    let after = api.submit(&task("after-chaos", 16, 1)).await;
    let ok = match after {
        Ok(r) if r.status == 202 => {
            api.follow("after-chaos", Duration::from_secs(30), None)
                .await
                .terminal_name()
                == "end"
        }
        _ => false,
    };
    o.check(ok, || "a task after the chaos did not complete".into());
    o.check(errors == kills, || {
        format!("{errors} error events for {kills} kills")
    });
    o.fig("kills (SIGKILL mid-stream)", kills);
    o.fig(
        "error events / of which WORKER_RESET, retriable",
        format!("{errors} / {worker_reset}"),
    );
    o.fig(
        "hung streams (no end within 10 s of a kill, 60 s of a freeze)",
        hung,
    );
    o.fig(
        "kill → error event, ms (p50 / p95 / max)",
        format!(
            "{:.0} / {:.0} / {:.0}",
            percentile(&kill_to_error, 50.0),
            percentile(&kill_to_error, 95.0),
            percentile(&kill_to_error, 100.0)
        ),
    );
    o.fig(
        "supervisor restarts (replica ready again, restarts+1, new pid)",
        format!(
            "{restarts_ok}; kill → ready ms p50 {:.0}, max {:.0}",
            percentile(&restart_ms, 50.0),
            percentile(&restart_ms, 100.0)
        ),
    );
    o.fig(
        "circuit opened / cleared by reload",
        format!(
            "{circuits} / {reloads}; reload ms p50 {:.0}, max {:.0}",
            percentile(&reload_ms, 50.0),
            percentile(&reload_ms, 100.0)
        ),
    );
    o.fig(hang_fig.0, hang_fig.1);
    o.fig("engine_restarts_total", counted);
    o.fig(
        "wall time of the kill loop",
        format!("{:.0} s", total.as_secs_f64()),
    );
    drop(sut);
    o
}
