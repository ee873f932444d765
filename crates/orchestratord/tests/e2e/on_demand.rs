//! End-to-end tests of models on demand (docs/PLACEMENT.md, "Models on demand"): the real
//! daemon launching real llama-server engines of the tiny test models on the CPU, with fake GPU
//! cards (`dev.fake_gpus`) sized so that each holds one pool: the tiny model with 1024 tokens of
//! context needs ~785 MiB by our estimate, a 1400 MiB card has 888 MiB after the headroom.
//!
//! Engines need `eval "$(cargo xtask provision-engine)"` and `cargo xtask gen-model --seed 43`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use orch_harness::{
    alive, child_pids, engine, last_event, second_model, Daemon, DaemonOptions, SseEvent,
};
use serde_json::{json, Value};

use crate::support::{bin, health, metric, wait_health};

/// An on_demand pool of the test engine on `model` (single-threaded engines: see
/// `orch_harness::llama_pool`).
fn od_pool(id: &str, model: &std::path::Path, ctx: u32, slots: u32, extra: &str) -> String {
    let e = engine();
    format!(
        "  - id: {id}\n    model: \"{}\"\n    engine_binary: \"{}\"\n    load: on_demand\n    slots: {slots}\n    ctx: {ctx}\n    startup_timeout_s: 60\n    flags: [\"-t\", \"1\"]\n{extra}",
        model.display(),
        e.llama_server.display()
    )
}

fn daemon_with(cards: &str, pools: &[String], data_dir: Option<PathBuf>) -> Daemon {
    let config = format!(
        "dev: {{ allow_cpu_inference: true, fake_gpus: \"{cards}\" }}\nshutdown_grace_s: 2\npools:\n{}",
        pools.concat()
    );
    // on_demand pools count as ready while unloaded: the daemon is healthy at once.
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            data_dir,
            ..Default::default()
        },
    )
}

fn task(id: &str, pool: &str, max_tokens: u32) -> Value {
    json!({
        "task_id": id, "model_ref": pool, "priority": "interactive",
        "prompt": "Once upon a time", "max_tokens": max_tokens, "seed": 7, "temperature": 0.8
    })
}

fn state(h: &Value) -> String {
    h["on_demand"]["state"].as_str().unwrap_or("").to_owned()
}

/// Submits an 8-token task and reads its stream to the end.
async fn run(d: &Daemon, id: &str, pool: &str) -> (Value, Vec<SseEvent>) {
    run_body(d, &task(id, pool, 8)).await
}

/// Submits `body` and reads its stream to the end; the 202's body and the events.
async fn run_body(d: &Daemon, body: &Value) -> (Value, Vec<SseEvent>) {
    let id = body["task_id"].as_str().unwrap_or_default();
    let r = d.submit(body).await;
    assert_eq!(r.status(), 202, "task {id}");
    let adm: Value = r.json().await.unwrap_or(Value::Null);
    let ev = d.stream(id).await;
    assert_eq!(
        last_event(&ev).event,
        "end",
        "{id}: {ev:?}\nlog:\n{}",
        d.logs()
    );
    (adm, ev)
}

fn started_device(ev: &[SseEvent]) -> String {
    ev.iter()
        .find(|e| e.event == "started")
        .map(|e| e.json()["device"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_on_demand_pools_take_turns_by_lru_on_two_cards() {
    let e = engine();
    let m2 = second_model();
    let d = daemon_with(
        "1400MiB:RTX 3090,1400MiB:RTX 3060",
        &[
            od_pool("a", &e.model, 1024, 1, ""),
            od_pool("b", &e.model, 1024, 1, ""),
            od_pool("c", &m2, 1024, 1, ""),
        ],
        None,
    );
    // Healthy with nothing loaded, and no engine running.
    let (_, h) = d.get("/health").await;
    assert_eq!(
        (h["pools_ready"].clone(), h["pools_total"].clone()),
        (json!(3), json!(3))
    );
    assert!(child_pids(d.pid()).is_empty(), "no engine before a task");
    let (_, list) = d.get("/v1/pools").await;
    for p in list["pools"].as_array().cloned().unwrap_or_default() {
        assert_eq!(p["health"]["replicas"][0]["state"], "unloaded", "{p}");
    }
    // The first task of an unloaded pool is admitted, waits for the load, and runs.
    let t0 = Instant::now();
    let (adm, ev) = run(&d, "a1", "a").await;
    eprintln!(
        "cold start of a: {:?} to the end of an 8-token task",
        t0.elapsed()
    );
    assert_eq!(adm["pool_load"]["state"], "loading", "{adm}");
    assert!(
        adm["predicted_start_ms"].as_u64() >= adm["pool_load"]["expected_load_ms"].as_u64(),
        "{adm}"
    );
    let dev_a = started_device(&ev);
    let (_, ev) = run(&d, "b1", "b").await;
    let dev_b = started_device(&ev);
    assert_ne!(dev_a, dev_b, "one pool per card");
    assert_eq!(child_pids(d.pid()).len(), 2);
    // c needs a card: a was used longest ago and is evicted; b stays.
    let (_, ev) = run(&d, "c1", "c").await;
    assert_eq!(started_device(&ev), dev_a, "c took a's card");
    assert_eq!(state(&health(&d, "a").await), "unloaded");
    assert_eq!(state(&health(&d, "b").await), "loaded");
    assert_eq!(child_pids(d.pid()).len(), 2, "the evicted engine is gone");
    // a again: now b is the least recently used.
    run(&d, "a2", "a").await;
    assert_eq!(state(&health(&d, "b").await), "unloaded");
    assert_eq!(state(&health(&d, "c").await), "loaded");
    let m = d.metrics_text().await;
    assert_eq!(
        metric(&m, "model_loads_total", &["pool_id=\"a\""]),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "model_evictions_total", &["reason=\"make_room\""]),
        2.0,
        "{m}"
    );
    assert!(
        m.contains("model_load_seconds_count{pool_id=\"c\"} 1"),
        "{m}"
    );
    let logs = d.logs();
    let evicted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("evicting an idle on_demand model to make room"))
        .collect();
    assert_eq!(evicted.len(), 2, "{evicted:?}");
    assert!(
        evicted[0].contains("\"pool_id\":\"a\"") && evicted[1].contains("\"pool_id\":\"b\""),
        "{evicted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_pool_survives_a_request_for_another_and_refuses_an_unload() {
    let e = engine();
    let d = daemon_with(
        "1400MiB:RTX 3060",
        &[
            od_pool("a", &e.model, 4096, 1, ""),
            od_pool("b", &e.model, 1024, 1, ""),
        ],
        None,
    );
    assert_eq!(d.submit(&task("long", "a", 1500)).await.status(), 202);
    d.wait_tokens("long", 3).await;
    let a_pid = health(&d, "a").await["replicas"][0]["pid"]
        .as_u64()
        .unwrap_or(0) as u32;
    // b needs the only card; a is busy: b's task waits and says why.
    let r = d.submit(&task("b1", "b", 8)).await;
    assert_eq!(r.status(), 202);
    let adm: Value = r.json().await.unwrap_or(Value::Null);
    let why = adm["pool_load"]["waiting_for"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        why.contains("waits for VRAM") && why.contains("1 running"),
        "{adm}"
    );
    // An unload of the busy pool is refused and stops nothing.
    let (s, env) = d.post("/v1/pools/a/unload", &json!({})).await;
    assert_eq!((s, env["code"].clone()), (409, json!("CONFLICT")), "{env}");
    assert!(alive(a_pid));
    // a finishes its task completely; then b evicts it and runs.
    let ev = d.stream("long").await;
    assert_eq!(
        last_event(&ev).event,
        "end",
        "the busy pool's task ended normally: {ev:?}"
    );
    let ev = d.stream("b1").await;
    assert_eq!(last_event(&ev).event, "end", "{ev:?}");
    let waited: Vec<Value> = ev
        .iter()
        .filter(|e| e.event == "metrics")
        .map(SseEvent::json)
        .filter(|m| m["waiting_for"].is_string())
        .collect();
    assert!(
        waited.iter().any(|m| m["waiting_for"]
            .as_str()
            .unwrap_or("")
            .contains("1 running")),
        "b1's metrics frames said why it waited: {waited:?}"
    );
    assert_eq!(state(&health(&d, "a").await), "unloaded");
    let t0 = Instant::now();
    while alive(a_pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "a's engine still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pools_unload_and_explicit_load_unload_work() {
    let e = engine();
    let d = daemon_with(
        "1400MiB:A,1400MiB:B",
        &[
            od_pool("idle", &e.model, 1024, 1, "    idle_unload_s: 1\n"),
            od_pool("kept", &e.model, 1024, 1, "    idle_unload_s: 0\n"),
        ],
        None,
    );
    let (s, r) = d.post("/v1/pools/idle/load", &json!({})).await;
    let t0 = Instant::now();
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["state"], "loaded");
    let (s, r) = d.post("/v1/pools/kept/load", &json!({})).await;
    assert_eq!(s, 200, "{r}");
    let pid = health(&d, "idle").await["replicas"][0]["pid"]
        .as_u64()
        .unwrap_or(0) as u32;
    let h = wait_health(&d, "idle", "idle unload", |h| state(h) == "unloaded").await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(h["replicas"][0]["state"], "unloaded");
    assert!(!alive(pid), "the idle engine stopped");
    assert_eq!(
        state(&health(&d, "kept").await),
        "loaded",
        "idle_unload_s: 0 keeps it"
    );
    let m = d.metrics_text().await;
    assert_eq!(
        metric(
            &m,
            "model_evictions_total",
            &["pool_id=\"idle\"", "reason=\"idle\""]
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "model_loads_total", &["reason=\"request\""]),
        2.0,
        "{m}"
    );
    let (s, r) = d.post("/v1/pools/kept/unload", &json!({})).await;
    assert_eq!((s, r["state"].clone()), (200, json!("unloaded")), "{r}");
    assert!(child_pids(d.pid()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_fits_only_two_cards_together_is_split_and_serves() {
    let e = engine();
    // 65536 × 4 tokens of 512 B KV + 17 MB = 145 MiB beside the 768 MiB compute allowance:
    // 913 MiB on one card (888 available), 145 + 2 × 768 across two.
    let d = daemon_with(
        "1400MiB:RTX 3090,1400MiB:RTX 3060",
        &[od_pool("wide", &e.model, 65536, 4, "")],
        None,
    );
    let (_, ev) = run(&d, "w1", "wide").await;
    assert_eq!(started_device(&ev), "gpu0+gpu1", "{ev:?}");
    let logs = d.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("placement decision") && l.contains("\"wide-r0\""))
        .expect("a placement decision for the split");
    eprintln!("{line}");
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    assert_eq!(v["fields"]["chosen"], "gpu0+gpu1", "{line}");
    let cands: Value = serde_json::from_str(v["fields"]["candidates"].as_str().unwrap_or("[]"))
        .unwrap_or(Value::Null);
    assert_eq!(
        cands.as_array().map(Vec::len),
        Some(2),
        "every candidate: {line}"
    );
    assert!(
        v["fields"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("per-card overhead"),
        "{line}"
    );
    let launched = logs
        .lines()
        .find(|l| l.contains("engine launched") && l.contains("wide-r0"))
        .unwrap_or_default();
    assert!(
        launched.contains("--tensor-split") && launched.contains("GPU-fake-0,GPU-fake-1"),
        "{launched}"
    );
}

/// A session's task on `pool`: the prompt is long enough that reusing it is visible.
fn session_task(id: &str, pool: &str, session: &str, prompt: &str) -> Value {
    json!({
        "task_id": id, "model_ref": pool, "priority": "interactive", "session_id": session,
        "prompt": prompt, "max_tokens": 4, "seed": 7, "temperature": 0.0
    })
}

fn final_warmth(ev: &[SseEvent]) -> f64 {
    ev.iter()
        .rev()
        .filter(|e| e.event == "metrics")
        .find_map(|e| e.json()["kv_warmth"].as_f64())
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_kv_warmth_across_an_eviction() {
    let e = engine();
    let m2 = second_model();
    let data = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let d = daemon_with(
        "1400MiB:RTX 3090",
        &[
            od_pool("a", &e.model, 1024, 2, ""),
            od_pool("b", &m2, 1024, 1, ""),
        ],
        Some(data.path().to_path_buf()),
    );
    let prompt = "The old lighthouse keeper climbed the spiral stairs every evening, counting the \
                  steps and listening to the sea below, while the gulls circled the tower and the \
                  lamp waited for the dark to come in from the water.";
    let (_, ev1) = run_body(&d, &session_task("k1", "a", "conv", prompt)).await;
    let (_, s) = d.get("/v1/sessions/conv").await;
    let slot = s["slot"].as_u64().unwrap_or_else(|| panic!("pinned: {s}"));
    // b needs the only card: a is evicted, and its engine saves the session's slot first.
    run(&d, "b1", "b").await;
    assert_eq!(state(&health(&d, "a").await), "unloaded");
    let logs = d.logs();
    let saved = logs
        .lines()
        .find(|l| l.contains("session KV saved before the unload"))
        .unwrap_or_else(|| panic!("no save logged:\n{logs}"));
    assert!(saved.contains("\"session_id\":\"conv\""), "{saved}");
    let files = || -> Vec<String> {
        std::fs::read_dir(data.path().join("slots"))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("kv-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(files().len(), 1, "one saved KV file");
    // The next turn brings a back (evicting b); its engine is new, yet the prompt is reused
    // from the restored slot.
    let prompt2 = format!("{prompt}{} And then", orch_harness::token_text(&ev1));
    let (_, ev2) = run_body(&d, &session_task("k2", "a", "conv", &prompt2)).await;
    let warm = final_warmth(&ev2);
    assert!(
        warm > 0.5,
        "the restored prefix is reused: kv_warmth {warm}\nlog:\n{}",
        d.logs()
    );
    let logs = d.logs();
    let restored = logs
        .lines()
        .find(|l| l.contains("session KV restored"))
        .unwrap_or_else(|| panic!("no restore logged:\n{logs}"));
    assert!(restored.contains(&format!("\"slot\":{slot}")), "{restored}");
    // The file is spent; a session that never left keeps no file.
    let t0 = Instant::now();
    while !files().is_empty() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(files().is_empty(), "{:?}", files());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_pools_loaded_leaves_no_orphans_and_remembers_load_times() {
    let e = engine();
    let pools = [od_pool("a", &e.model, 1024, 1, "")];
    let mut d = daemon_with("1400MiB:A", &pools, None);
    let data_dir = d.data_dir.clone();
    let before = health(&d, "a").await["on_demand"]["expected_load_ms"]
        .as_u64()
        .unwrap_or(0);
    run(&d, "a1", "a").await;
    let h = health(&d, "a").await;
    let measured = h["on_demand"]["expected_load_ms"].as_u64().unwrap_or(0);
    let pid = h["replicas"][0]["pid"].as_u64().unwrap_or(0) as u32;
    assert!(alive(pid));
    eprintln!("expected load: {before} ms estimated, {measured} ms measured");
    d.kill9();
    let t0 = Instant::now();
    while alive(pid) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "orphan engine {pid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let d = daemon_with("1400MiB:A", &pools, Some(data_dir));
    let h = health(&d, "a").await;
    assert_eq!(state(&h), "unloaded", "{h}");
    assert!(child_pids(d.pid()).is_empty());
    assert_eq!(
        h["on_demand"]["expected_load_ms"].as_u64(),
        Some(measured),
        "the measured load time survives the restart"
    );
    let r = d.submit(&task("a2", "a", 8)).await;
    let adm: Value = r.json().await.unwrap_or(Value::Null);
    assert!(
        adm["predicted_start_ms"].as_u64() >= Some(measured),
        "{adm}"
    );
    assert_eq!(last_event(&d.stream("a2").await).event, "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_model_fails_its_waiting_tasks_naming_the_file_and_spares_other_pools() {
    let e = engine();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let corrupt = dir.path().join("corrupt.gguf");
    let mut bytes = b"GGUF\x03\x00\x00\x00".to_vec();
    bytes.extend((0..65536u32).map(|i| (i * 31 % 253) as u8));
    std::fs::write(&corrupt, bytes).unwrap_or_else(|e| panic!("write: {e}"));
    let d = daemon_with(
        "1400MiB:A,1400MiB:B",
        &[
            od_pool("bad", &corrupt, 1024, 1, ""),
            od_pool("good", &e.model, 1024, 1, ""),
        ],
        None,
    );
    assert_eq!(d.submit(&task("x1", "bad", 8)).await.status(), 202);
    assert_eq!(d.submit(&task("x2", "bad", 8)).await.status(), 202);
    for id in ["x1", "x2"] {
        let ev = d.stream(id).await;
        let end = last_event(&ev);
        assert_eq!(end.event, "error", "{ev:?}");
        let env = end.json();
        assert_eq!(
            (env["code"].clone(), env["retriable"].clone()),
            (json!("ENGINE_ERROR"), json!(false)),
            "{env}"
        );
        let msg = env["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("corrupt.gguf") && msg.contains("last output"),
            "{msg}"
        );
    }
    let h = health(&d, "bad").await;
    assert_eq!(state(&h), "failed", "{h}");
    assert!(
        h["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("corrupt.gguf"),
        "{h}"
    );
    assert!(child_pids(d.pid()).is_empty(), "nothing left running");
    run(&d, "g1", "good").await;
}
