//! End-to-end tests of the pool manager through the HTTP API: a real orchestratord launching real
//! llama-server replicas of the tiny test model on the CPU (`dev.allow_cpu_inference`), with an
//! injected GPU inventory (`dev.fake_gpus`) where placement matters. Placement is real; the
//! engines just cannot use the fake cards.

use std::time::{Duration, Instant};

use orch_harness::{
    alive, child_pids, engine, last_event, llama_pool, read_sse, second_model, signal, token_text,
    Daemon, DaemonOptions, SseEvent,
};
use serde_json::{json, Value};

use crate::support::{bin, health, metric, wait_health};

const SIGKILL: i32 = 9;

/// A daemon on the test engine. `dev` is the inside of the `dev:` map besides
/// `allow_cpu_inference`; `pools` are `llama_pool` entries.
fn daemon(dev: &str, pools: &str, wait_ready: bool) -> Daemon {
    let config =
        format!("dev: {{ allow_cpu_inference: true{dev} }}\nshutdown_grace_s: 2\npools:\n{pools}");
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            no_wait_ready: !wait_ready,
            ..Default::default()
        },
    )
}

/// A pool of the test engine (single-threaded engines: see `llama_pool`).
fn pool(id: &str, slots: u32, replicas: u32, ctx: u32) -> String {
    llama_pool(id, &engine(), slots, replicas, ctx)
}

fn task(id: &str, model_ref: &str, max_tokens: u32, seed: u64) -> Value {
    json!({
        "task_id": id, "model_ref": model_ref, "priority": "interactive",
        "prompt": "Once upon a time", "max_tokens": max_tokens, "seed": seed, "temperature": 0.8
    })
}

fn started(events: &[SseEvent]) -> Value {
    events
        .iter()
        .find(|e| e.event == "started")
        .map(SseEvent::json)
        .unwrap_or(Value::Null)
}

fn ready(h: &Value) -> bool {
    h["ready"] == true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placement_across_mixed_gpus_respects_masks_and_reports_unplaceable() {
    // After the 512 MiB headroom: gpu0 2088 MiB, gpu1 1688 MiB available. Footprints of the
    // 17 MB tiny model (file + ctx·slots·file/32768 KV + 768 MiB compute): big 851 MiB,
    // mid 793, pinned 786, huge ~2.9 GiB.
    // `huge` would fit both cards together; `split: never` keeps it unplaceable here (splits
    // are tested in the `on_demand` module).
    let pools = [
        pool("pinned", 1, 1, 4096) + "    devices: [1]\n",
        pool("huge", 128, 1, 32768) + "    split: never\n",
        pool("mid", 2, 1, 8192),
        pool("big", 4, 1, 32768),
    ]
    .concat();
    let d = daemon(
        ", fake_gpus: \"2600MiB:RTX 3090,2200MiB:RTX 3060\"",
        &pools,
        false,
    );
    let device = |h: &Value| h["replicas"][0]["device"].as_str().unwrap_or("").to_owned();
    // The largest pool goes to the big card; the next to where most is left (now the small
    // card); the pinned one to its mask although gpu0 has more room left.
    let h = wait_health(&d, "big", "ready", ready).await;
    assert_eq!(device(&h), "gpu0", "{h}");
    let h = wait_health(&d, "mid", "ready", ready).await;
    assert_eq!(device(&h), "gpu1", "{h}");
    let h = wait_health(&d, "pinned", "ready", ready).await;
    assert_eq!(device(&h), "gpu1", "{h}");
    // The one that fits nowhere is Unready with a reason a user can act on.
    let h = health(&d, "huge").await;
    assert_eq!(h["ready"], false);
    assert_eq!(h["replicas"][0]["state"], "unready", "{h}");
    assert_eq!(device(&h), "none");
    let why = h["last_error"].as_str().unwrap_or("").to_owned();
    assert!(why.starts_with("no GPU fits"), "{why}");
    assert!(
        why.contains("best is GPU 0 'RTX 3090'") && why.contains("lower ctx/slots"),
        "{why}"
    );
    let (s, v) = d.get("/health").await;
    assert_eq!(
        (s, v["pools_ready"].clone(), v["pools_total"].clone()),
        (200, json!(3), json!(4))
    );
    // Tasks for it get 503 with that reason; the others serve on their cards.
    let r = d.submit(&task("h1", "huge", 8, 1)).await;
    assert_eq!(r.status(), 503);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["code"], "POOL_UNAVAILABLE");
    assert!(
        env["message"].as_str().unwrap().contains("no GPU fits"),
        "{env}"
    );
    assert_eq!(d.submit(&task("b1", "big", 8, 1)).await.status(), 202);
    let ev = d.stream("b1").await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(started(&ev)["device"], "gpu0");
    // Every decision is logged with its candidates, and counted.
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("placement decision") && l.contains("\"huge-r0\""))
        .expect("placement decision line for huge-r0");
    eprintln!("placement decision line: {line}");
    let v: Value = serde_json::from_str(line).unwrap();
    let cands: Value = serde_json::from_str(v["fields"]["candidates"].as_str().unwrap()).unwrap();
    assert_eq!(cands.as_array().unwrap().len(), 2);
    assert_eq!(cands[0]["verdict"], "too_small");
    let pinned_line = logs
        .lines()
        .find(|l| l.contains("placement decision") && l.contains("\"pinned-r0\""))
        .expect("placement decision line for pinned-r0");
    assert!(pinned_line.contains("masked"), "{pinned_line}");
    let m = d.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "placement_decisions_total",
            &["outcome=\"unplaceable\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "placement_decisions_total",
            &["outcome=\"placed\"", "pinned=\"true\""]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "placement_decisions_total",
            &["outcome=\"placed\"", "pinned=\"false\""]
        ),
        2.0
    );
    // Capabilities report the devices.
    let (_, caps) = d.get("/v1/capabilities").await;
    let big = caps["pools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "big")
        .unwrap()
        .clone();
    assert_eq!(big["devices"], json!(["gpu0"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_restarts_while_the_other_serves_and_nothing_hangs() {
    let mut d = daemon("", &pool("duo", 2, 2, 8192), true);
    let h = health(&d, "duo").await;
    assert_eq!(h["replicas"].as_array().unwrap().len(), 2);
    // Load: 6 tasks, 4 run (2 slots × 2 replicas), 2 wait.
    let mut streams = Vec::new();
    for i in 0..6 {
        let id = format!("pre{i}");
        assert_eq!(d.submit(&task(&id, "duo", 3000, i)).await.status(), 202);
        streams.push((id.clone(), d.spawn_stream(&id)));
    }
    let h = wait_health(&d, "duo", "both replicas busy", |h| {
        h["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["in_flight"].as_u64().unwrap_or(0) > 0)
    })
    .await;
    let victim = h["replicas"][0]["id"].as_str().unwrap().to_owned();
    let pid = h["replicas"][0]["pid"].as_u64().unwrap() as u32;
    signal(pid, SIGKILL);
    wait_health(&d, "duo", "the victim noticed", |h| {
        h["replicas"][0]["state"] != "ready"
    })
    .await;
    // New work keeps flowing: to the survivor now, to both once the victim is back.
    for i in 0..4 {
        let id = format!("post{i}");
        assert_eq!(d.submit(&task(&id, "duo", 200, i)).await.status(), 202);
        streams.push((id.clone(), d.spawn_stream(&id)));
    }
    let h = wait_health(&d, "duo", "victim restarted", |h| {
        let r = &h["replicas"][0];
        r["state"] == "ready" && r["restarts"].as_u64().unwrap_or(0) >= 1
    })
    .await;
    assert_ne!(
        h["replicas"][0]["pid"].as_u64().unwrap() as u32,
        pid,
        "a new process"
    );
    assert!(!alive(pid));
    let mut reset = 0;
    for (id, s) in streams {
        let ev = match tokio::time::timeout(Duration::from_secs(40), s).await {
            Ok(r) => r.unwrap(),
            Err(_) => {
                let (_, st) = d.get(&format!("/v1/tasks/{id}")).await;
                panic!(
                    "{id} hangs: {st}\nhealth: {}\nlog:\n{}",
                    health(&d, "duo").await,
                    d.logs()
                );
            }
        };
        let end = last_event(&ev);
        match end.event.as_str() {
            "end" => {}
            "error" => {
                // Only tasks that were running on the killed engine may fail, with WORKER_RESET.
                assert_eq!(end.json()["code"], "WORKER_RESET", "{id}: {ev:?}");
                assert_eq!(
                    started(&ev)["replica_id"],
                    victim,
                    "{id} failed off the victim"
                );
                assert!(
                    id.starts_with("pre"),
                    "{id} was submitted after the crash: {ev:?}"
                );
                reset += 1;
            }
            other => panic!("{id} ended with {other}: {ev:?}"),
        }
    }
    assert!(
        (1..=2).contains(&reset),
        "the victim ran 2 tasks; {reset} were reset"
    );
    // The restarted replica serves again; the restart is counted.
    assert_eq!(d.submit(&task("after", "duo", 8, 1)).await.status(), 202);
    assert_eq!(last_event(&d.stream("after").await).event, "end");
    let m = d.metrics_text().await;
    assert!(
        metric(&m, "engine_restarts_total", &["pool_id=\"duo\""]) >= 1.0,
        "{m}"
    );
    // No engine outlives the daemon.
    let engines = child_pids(d.pid());
    assert_eq!(engines.len(), 2, "two llama-server children: {engines:?}");
    assert_eq!(d.terminate(Duration::from_secs(20)), Some(0));
    for p in engines {
        assert!(!alive(p), "engine {p} survived the daemon");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_swaps_the_model_with_zero_failed_tasks() {
    let mut d = daemon("", &pool("tiny", 2, 1, 8192), true);
    let old_pid = health(&d, "tiny").await["replicas"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    // Reference text of the old model for a fixed seed.
    assert_eq!(
        d.submit(&task("ref-old", "tiny", 24, 5)).await.status(),
        202
    );
    let old_text = token_text(&d.stream("ref-old").await);
    // A long task in flight on the old replica across the swap.
    assert_eq!(d.submit(&task("long", "tiny", 4000, 9)).await.status(), 202);
    let long = d.spawn_stream("long");
    d.wait_tokens("long", 5).await;
    // A client that keeps submitting while the reload runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let client = {
        let (base, c, stop) = (d.base.clone(), d.client(), stop.clone());
        tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = format!("c{i}");
                i += 1;
                let r = c
                    .post(format!("{base}/v1/tasks"))
                    .json(&task(&id, "tiny", 16, i))
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let ev = if status == 202 {
                    let s = c
                        .get(format!("{base}/v1/tasks/{id}/stream"))
                        .send()
                        .await
                        .unwrap();
                    tokio::time::timeout(Duration::from_secs(60), read_sse(s))
                        .await
                        .expect("stream hangs")
                } else {
                    Vec::new()
                };
                out.push((id, status, body, ev));
            }
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let model2 = second_model();
    let t0 = Instant::now();
    let (s, rep) = d
        .post("/v1/pools/tiny/reload", &json!({"new_model_ref": model2}))
        .await;
    let took = t0.elapsed();
    assert_eq!(s, 200, "{rep}\n{}", d.logs());
    eprintln!("reload: {took:?} (server took_ms {})", rep["took_ms"]);
    assert_eq!(rep["generation"], 1);
    assert_eq!(rep["previous_generation"], 0);
    assert_eq!(rep["model"], model2.display().to_string());
    assert_eq!(rep["replicas"][0]["id"], "tiny-g1-r0");
    assert_ne!(
        rep["replicas"][0]["pid"].as_u64().unwrap() as u32,
        old_pid,
        "beside, not in place"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let results = client.await.unwrap();
    assert!(
        results.len() >= 3,
        "the client kept submitting: {}",
        results.len()
    );
    let mut on_new = 0;
    for (id, status, body, ev) in &results {
        assert_eq!(*status, 202, "{id} refused: {body}");
        assert_eq!(last_event(ev).event, "end", "{id} failed: {ev:?}");
        if started(ev)["replica_id"] == "tiny-g1-r0" {
            on_new += 1;
        }
    }
    assert!(on_new >= 1, "no task ran on the new replica");
    // The in-flight task finished on the old replica before it was stopped.
    let ev = long.await.unwrap();
    assert_eq!(last_event(&ev).event, "end", "{ev:?}");
    assert_eq!(started(&ev)["replica_id"], "tiny-r0");
    let h = wait_health(&d, "tiny", "old generation gone", |h| {
        h.get("retiring").is_none()
    })
    .await;
    assert_eq!(h["generation"], 1);
    assert_eq!(h["last_error"], Value::Null);
    assert!(!alive(old_pid), "the old engine was not stopped");
    // The pool's model names followed the swap; the pool id still routes.
    let (_, caps) = d.get("/v1/capabilities").await;
    let refs = caps["pools"][0]["model_refs"].to_string();
    assert!(
        refs.contains("tiny-llama-g2-s43") && !refs.contains("tiny-llama-g2-s42"),
        "{refs}"
    );
    let r = d
        .submit(&task("by-old-name", "tiny-llama-g2-s42", 8, 1))
        .await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        d.submit(&task("ref-new", "tiny-llama-g2-s43", 24, 5))
            .await
            .status(),
        202
    );
    let ev = d.stream("ref-new").await;
    assert_eq!(last_event(&ev).event, "end");
    assert_ne!(
        token_text(&ev),
        old_text,
        "same seed, other model: the text must differ"
    );
    // No engine outlives the daemon.
    let engines = child_pids(d.pid());
    assert!(!engines.is_empty());
    assert_eq!(d.terminate(Duration::from_secs(20)), Some(0));
    for p in engines {
        assert!(!alive(p), "engine {p} survived the daemon");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_to_a_corrupt_or_missing_model_rolls_back_and_the_old_keeps_serving() {
    let d = daemon("", &pool("tiny", 1, 1, 4096), true);
    let old_pid = health(&d, "tiny").await["replicas"][0]["pid"]
        .as_u64()
        .unwrap() as u32;
    let dir = tempfile::tempdir().unwrap();
    let served = |h: &Value| {
        (
            h["generation"].clone(),
            h["replicas"][0]["pid"].as_u64().unwrap_or(0) as u32,
        )
    };

    // Garbage bytes: refused before anything is launched.
    let junk = dir.path().join("junk.gguf");
    std::fs::write(
        &junk,
        (0..4096u32)
            .map(|i| (i * 7919 % 251) as u8)
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let (s, env) = d
        .post("/v1/pools/tiny/reload", &json!({"new_model_ref": junk}))
        .await;
    assert_eq!(s, 404, "{env}");
    assert_eq!(env["code"], "MODEL_NOT_FOUND");
    let msg = env["message"].as_str().unwrap();
    assert!(
        msg.contains("rolled back") && msg.contains("not a GGUF model"),
        "{msg}"
    );
    let h = health(&d, "tiny").await;
    assert!(
        h["last_error"].as_str().unwrap().contains("rolled back"),
        "{h}"
    );
    assert_eq!(served(&h), (json!(0), old_pid));

    // A GGUF header over garbage: the new engine starts, fails to load, and is rolled back.
    let corrupt = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..65536u32).map(|i| (i * 31 % 253) as u8));
    std::fs::write(&corrupt, bytes).unwrap();
    let before = child_pids(d.pid());
    let (s, env) = d
        .post("/v1/pools/tiny/reload", &json!({"new_model_ref": corrupt}))
        .await;
    assert_eq!(s, 502, "{env}");
    assert_eq!(env["code"], "ENGINE_ERROR");
    let msg = env["message"].as_str().unwrap().to_owned();
    assert!(
        msg.contains("rolled back") && msg.contains("tiny-g1-r0 failed to start"),
        "{msg}"
    );
    assert!(msg.contains("still serving"), "{msg}");
    let h = health(&d, "tiny").await;
    assert_eq!(
        h["last_error"].as_str().unwrap(),
        msg,
        "health shows the rollback"
    );
    assert_eq!(served(&h), (json!(0), old_pid));
    assert!(h.get("incoming").is_none(), "the new replica is gone: {h}");
    assert_eq!(child_pids(d.pid()), before, "the failed engine was stopped");

    // A missing file.
    let (s, env) = d
        .post(
            "/v1/pools/tiny/reload",
            &json!({"new_model_ref": "/nonexistent/m.gguf"}),
        )
        .await;
    assert_eq!(s, 404, "{env}");
    assert!(
        env["message"].as_str().unwrap().contains("cannot be read"),
        "{env}"
    );

    // Through all of it the old replica kept serving the old model.
    assert_eq!(d.submit(&task("still", "tiny", 16, 1)).await.status(), 202);
    let ev = d.stream("still").await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(started(&ev)["replica_id"], "tiny-r0");
    assert!(
        d.submit(&task("by-name", "tiny-llama-g2-s42", 4, 1))
            .await
            .status()
            == 202
    );

    // Bad requests and unknown pools.
    let (s, env) = d
        .post("/v1/pools/nope/reload", &json!({"new_model_ref": junk}))
        .await;
    assert_eq!((s, env["code"].clone()), (404, json!("NOT_FOUND")));
    let (s, _) = d
        .post("/v1/pools/tiny/reload", &json!({"new_model_ref": 3}))
        .await;
    assert_eq!(s, 400);

    // A good reload afterwards clears the error.
    let (s, rep) = d
        .post(
            "/v1/pools/tiny/reload",
            &json!({"new_model_ref": second_model()}),
        )
        .await;
    assert_eq!(s, 200, "{rep}");
    let h = health(&d, "tiny").await;
    assert_eq!(h["last_error"], Value::Null, "{h}");

    // A client that hangs up mid-reload does not leave it half done: it finishes anyway.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let r = impatient
        .post(format!("{}/v1/pools/tiny/reload", d.base))
        .json(&json!({}))
        .send()
        .await;
    assert!(r.is_err(), "the reload should outlast 30 ms");
    wait_health(&d, "tiny", "the abandoned reload finished", |h| {
        h["generation"] == 3 && ready(h) && h.get("incoming").is_none()
    })
    .await;
    wait_health(&d, "tiny", "generation 2 retired", |h| {
        h.get("retiring").is_none()
    })
    .await;
    assert_eq!(child_pids(d.pid()).len(), 1, "one engine left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_rejects_new_work_finishes_in_flight_then_cancels_at_the_deadline() {
    let d = daemon("", &pool("tiny", 1, 1, 32768), true);
    // One running, one queued.
    assert_eq!(d.submit(&task("run", "tiny", 1500, 1)).await.status(), 202);
    let run = d.spawn_stream("run");
    d.wait_tokens("run", 5).await;
    assert_eq!(d.submit(&task("queued", "tiny", 32, 2)).await.status(), 202);
    let queued = d.spawn_stream("queued");
    let (s, v) = d
        .post("/v1/pools/tiny/drain", &json!({"deadline_ms": 60000}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["draining"], true);
    assert_eq!(
        (v["running"].clone(), v["queued"].clone()),
        (json!(1), json!(1))
    );
    // New work is refused with a 503 that names the drain.
    let r = d.submit(&task("new", "tiny", 8, 3)).await;
    assert_eq!(r.status(), 503);
    let env: Value = r.json().await.unwrap();
    assert_eq!(env["code"], "POOL_UNAVAILABLE");
    assert!(
        env["message"].as_str().unwrap().contains("draining"),
        "{env}"
    );
    let h = health(&d, "tiny").await;
    assert_eq!(h["draining"], true);
    assert!(h["drain_deadline_ms"].is_u64());
    // What was admitted finishes.
    assert_eq!(last_event(&run.await.unwrap()).event, "end");
    assert_eq!(last_event(&queued.await.unwrap()).event, "end");
    assert!(
        wait_log(&d, "drain complete").await,
        "no drain-complete line"
    );
    // Resume: admitted again.
    let (s, v) = d
        .post("/v1/pools/tiny/drain", &json!({"resume": true}))
        .await;
    assert_eq!((s, v["draining"].clone()), (200, json!(false)));
    assert_eq!(health(&d, "tiny").await["draining"], false);
    assert_eq!(d.submit(&task("after", "tiny", 8, 3)).await.status(), 202);
    assert_eq!(last_event(&d.stream("after").await).event, "end");

    // A short deadline cancels what is left, running and queued.
    assert_eq!(
        d.submit(&task("slow", "tiny", 20000, 4)).await.status(),
        202
    );
    let slow = d.spawn_stream("slow");
    d.wait_tokens("slow", 5).await;
    assert_eq!(d.submit(&task("waiting", "tiny", 8, 5)).await.status(), 202);
    let waiting = d.spawn_stream("waiting");
    let t0 = Instant::now();
    let (s, _) = d
        .post("/v1/pools/tiny/drain", &json!({"deadline_ms": 300}))
        .await;
    assert_eq!(s, 202);
    for (id, s) in [("slow", slow), ("waiting", waiting)] {
        let ev = s.await.unwrap();
        let end = last_event(&ev).json();
        assert_eq!(last_event(&ev).event, "error", "{id}: {ev:?}");
        assert_eq!(end["code"], "CANCELED", "{id}");
        assert!(
            end["message"].as_str().unwrap().contains("deadline passed"),
            "{end}"
        );
    }
    eprintln!(
        "deadline drain: both streams ended after {:?}",
        t0.elapsed()
    );
    let (_, st) = d.get("/v1/tasks/slow").await;
    assert_eq!(st["state"], "canceled");
    // Still drained until resumed; bad bodies get the envelope.
    assert_eq!(d.submit(&task("x", "tiny", 8, 3)).await.status(), 503);
    let (s, env) = d
        .post("/v1/pools/tiny/drain", &json!({"deadline_ms": "soon"}))
        .await;
    assert_eq!((s, env["code"].clone()), (400, json!("INVALID_PARAMS")));
    let (s, _) = d.post("/v1/pools/nope/drain", &json!({})).await;
    assert_eq!(s, 404);
    // A reload also ends a drain.
    let (s, rep) = d.post("/v1/pools/tiny/reload", &json!({})).await;
    assert_eq!(s, 200, "{rep}");
    assert_eq!(health(&d, "tiny").await["draining"], false);
    assert_eq!(d.submit(&task("y", "tiny", 8, 3)).await.status(), 202);
}

async fn wait_log(d: &Daemon, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if d.logs().contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_opens_after_repeated_crashes_and_a_reload_closes_it() {
    let d = daemon("", &pool("flaky", 1, 1, 4096), true);
    // Kill the engine each time it comes back, until the breaker opens (5 crashes in 120 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_pid = 0;
    let h = loop {
        let h = health(&d, "flaky").await;
        let r = &h["replicas"][0];
        if r["state"] == "circuit_open" {
            break h;
        }
        if let Some(pid) = r["pid"].as_u64().map(|p| p as u32) {
            if r["state"] == "ready" && pid != last_pid {
                signal(pid, SIGKILL);
                last_pid = pid;
            }
        }
        assert!(Instant::now() < deadline, "breaker never opened: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(h["ready"], false);
    assert!(
        h["last_error"].as_str().unwrap().contains("circuit open"),
        "{h}"
    );
    let r = d.submit(&task("t", "flaky", 4, 1)).await;
    assert_eq!(r.status(), 503);
    // A reload on the same model brings it back.
    let (s, rep) = d.post("/v1/pools/flaky/reload", &json!({})).await;
    assert_eq!(s, 200, "{rep}");
    let h = health(&d, "flaky").await;
    assert_eq!(
        (h["ready"].clone(), h["last_error"].clone()),
        (json!(true), Value::Null),
        "{h}"
    );
    assert_eq!(d.submit(&task("t2", "flaky", 4, 1)).await.status(), 202);
    assert_eq!(last_event(&d.stream("t2").await).event, "end");
}

/// Series lines (not comments) that mention `needle`.
fn series_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains(needle))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gauges_agree_with_health_at_once_and_a_reload_leaves_no_old_series() {
    // A fake card, so the replica has GPU series (vram_used_bytes, gpu_utilization) too.
    let d = daemon(
        ", fake_gpus: \"24GiB:RTX 3090\"",
        &pool("tiny", 1, 1, 4096),
        false,
    );
    // Catch the moment /health turns ready, then scrape at once: no refresh period may lag.
    let t0 = Instant::now();
    loop {
        if d.get("/health").await.1["pools_ready"] == 1 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never ready:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = d.metrics_text().await;
    eprintln!("ready after {:?}", t0.elapsed());
    assert!(
        m.contains("pool_ready{pool_id=\"tiny\"} 1\n"),
        "/health says ready, /metrics does not:\n{m}"
    );
    let old = "replica_id=\"tiny-r0\"";
    // The old replica's sampled gauges (KV from the engine, VRAM from the fake card).
    let t0 = Instant::now();
    let m = loop {
        let m = d.metrics_text().await;
        let s = series_with(&m, old);
        if [
            "vram_used_bytes{",
            "gpu_utilization{",
            "kv_cache_usage_ratio{",
        ]
        .iter()
        .all(|n| s.iter().any(|l| l.starts_with(n)))
        {
            break m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the old replica's gauges never appeared:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("old replica's gauges after {:?}", t0.elapsed());
    // queue_depth carries the learned engine version, without an `unknown` twin.
    let (_, caps) = d.get("/v1/capabilities").await;
    let v = caps["pools"][0]["engine_version"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!v.is_empty() && v != "unknown", "{caps}");
    let depth = series_with(&m, "queue_depth{");
    assert_eq!(depth.len(), 2, "one series per priority: {depth:?}");
    assert!(
        depth
            .iter()
            .all(|l| l.contains(&format!("engine_version=\"{v}\""))),
        "{depth:?}"
    );

    let (s, rep) = d
        .post(
            "/v1/pools/tiny/reload",
            &json!({"new_model_ref": second_model()}),
        )
        .await;
    assert_eq!(s, 200, "{rep}\n{}", d.logs());
    assert_eq!(rep["replicas"][0]["id"], "tiny-g1-r0");
    // The very next scrape: the swap shows, the old replica left no series behind.
    let m = d.metrics_text().await;
    assert!(m.contains("pool_ready{pool_id=\"tiny\"} 1\n"), "{m}");
    assert!(
        series_with(&m, old).is_empty(),
        "series of the replaced replica remain: {:?}",
        series_with(&m, old)
    );
    let new = "replica_id=\"tiny-g1-r0\"";
    assert!(
        series_with(&m, new)
            .iter()
            .any(|l| l.starts_with("vram_used_bytes{")),
        "{m}"
    );
    // The new replica's KV arrives with a sample; the old one never comes back.
    let t0 = Instant::now();
    loop {
        let m = d.metrics_text().await;
        assert!(series_with(&m, old).is_empty(), "{m}");
        if series_with(&m, new)
            .iter()
            .any(|l| l.starts_with("kv_cache_usage_ratio{"))
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no KV gauge for the new replica:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("new replica's KV gauge after {:?}", t0.elapsed());
    assert_eq!(series_with(&m, "queue_depth{").len(), 2, "{m}");
}
