//! Models on demand in-process: admission of tasks for unloaded pools (202, one load for many
//! tasks), eviction that spares busy pools and says why tasks wait, load and unload over HTTP
//! (409 on a busy pool unless `force`), failed loads and deadlines.
//!
//! The pools launch a `sleep` "engine" (the process is real, so placement, the ledger and the
//! supervisor are too) and reach the fake engine through the injected adapter. One fake
//! 1400 MiB card (888 MiB after headroom) holds one of these pools (~769 MiB each) at a time.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

/// A temp dir with a GGUF-looking 1 MiB model and the engine scripts.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut model = b"GGUF".to_vec();
        model.resize(1 << 20, 0);
        std::fs::write(dir.path().join("m.gguf"), model).expect("model");
        for (name, body) in [
            ("engine", "exec sleep 100000"),
            ("dying", "echo 'llama_model_load: error loading model: tensor data is not within the file bounds'; exit 1"),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("script");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// An on_demand pool `id` launching `engine` (a script name) on the model.
    fn pool(&self, id: &str, engine: &str, extra: &[&str]) -> String {
        let mut y = format!(
            "  - id: {id}\n    model: \"{}\"\n    engine_binary: \"{}\"\n    load: on_demand\n    slots: 2\n    ctx: 256\n",
            self.path("m.gguf"),
            self.path(engine)
        );
        for e in extra {
            y.push_str(&format!("    {e}\n"));
        }
        y
    }
}

const ONE_CARD: &str = "dev: { fake_gpus: \"1400MiB:Card\" }";

fn task_for(id: &str, pool: &str) -> Value {
    with(task(id), json!({ "model_ref": pool }))
}

fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn load_state(app: &TestApp, pool: &str) -> String {
    let h = app.get(&format!("/v1/pools/{pool}/health")).await.body;
    h["on_demand"]["state"].as_str().unwrap_or("").to_owned()
}

async fn wait_load_state(app: &TestApp, pool: &str, want: &str) {
    eventually(&format!("{pool} {want}"), || async {
        (load_state(app, pool).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unloaded_pool_admits_tasks_loads_once_and_serves_them_all() {
    let f = Files::new();
    let app = TestApp::start(&yaml(ONE_CARD, &[f.pool("a", "engine", &[])])).await;
    // Healthy with nothing loaded; the pool shows unloaded with its expected load time.
    let h = app.get("/health").await.body;
    assert_eq!(
        (h["status"].clone(), h["pools_ready"].clone()),
        (json!("ok"), json!(1))
    );
    let p = app.get("/v1/pools/a/health").await.body;
    assert_eq!(p["replicas"][0]["state"], "unloaded", "{p}");
    assert_eq!(p["live"], false);
    let expected = p["on_demand"]["expected_load_ms"].as_u64().unwrap_or(0);
    assert!(expected >= orch_pool_manager::ENGINE_START_MS, "{p}");
    // Three tasks at once: all admitted, one load.
    let (r1, r2, r3) = tokio::join!(
        app.submit(task_for("t1", "a")),
        app.submit(task_for("t2", "a")),
        app.submit(task_for("t3", "a"))
    );
    for r in [&r1, &r2, &r3] {
        r.expect_status(202);
        let note = &r.body["pool_load"];
        assert!(note.is_object(), "the 202 says the pool loads: {}", r.text);
        assert!(
            r.body["predicted_start_ms"].as_u64().unwrap_or(0)
                >= note["expected_load_ms"].as_u64().unwrap_or(u64::MAX),
            "the prediction includes the load: {}",
            r.text
        );
    }
    for id in ["t1", "t2", "t3"] {
        assert_eq!(app.last_event(id).await.event, "end", "{id}");
    }
    let m = app.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "model_loads_total",
            &["pool_id=\"a\"", "reason=\"demand\""]
        ),
        1.0,
        "{m}"
    );
    assert!(
        m.contains("model_load_seconds_count{pool_id=\"a\"} 1"),
        "{m}"
    );
    let p = app.get("/v1/pools/a/health").await.body;
    assert_eq!(p["on_demand"]["state"], "loaded");
    assert_eq!(p["replicas"][0]["device"], "gpu0");
    // The started event came from the loaded replica.
    let ev = app.events("t1").await;
    let waiting: Vec<&SseEvent> = ev
        .iter()
        .filter(|e| e.event == "metrics" && e.json()["waiting_for"].is_string())
        .collect();
    assert!(!waiting.is_empty(), "a waiting frame says why: {ev:?}");
}

#[tokio::test]
async fn a_busy_pool_is_not_evicted_the_waiting_task_says_why_then_the_idle_one_goes() {
    let f = Files::new();
    let a = FakeEngine::held();
    let app = TestApp::start_with(
        &yaml(
            ONE_CARD,
            &[f.pool("a", "engine", &[]), f.pool("b", "engine", &[])],
        ),
        Options {
            engines: vec![("a", a.clone())],
            ..Options::default()
        },
    )
    .await;
    app.admit(task_for("a1", "a")).await;
    a.wait_active(1).await;
    // b needs the only card, which a holds with a running task.
    let r = app.admit(task_for("b1", "b")).await;
    let why = r["pool_load"]["waiting_for"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert!(
        why.contains("waits for VRAM") && why.contains("1 running"),
        "{r}"
    );
    let mut s = app.open_stream("/v1/tasks/b1/stream").await;
    // The frames follow the reason as it changes: about to load, then waiting for VRAM.
    let frame = loop {
        let ev = s.next().await.expect("b1's stream");
        let why = ev.json()["waiting_for"].as_str().unwrap_or("").to_owned();
        if ev.event == "metrics" && why.contains("waits for VRAM") {
            break ev.json();
        }
    };
    assert!(
        frame["waiting_for"]
            .as_str()
            .unwrap_or("")
            .contains("a (769 MiB, 1 running)"),
        "{frame}"
    );
    let h = app.get("/v1/pools/b/health").await.body;
    assert!(
        h["on_demand"]["waiting"]
            .as_str()
            .unwrap_or("")
            .contains("1 running"),
        "{h}"
    );
    assert_eq!(load_state(&app, "a").await, "loaded", "a busy pool stays");
    // a's task ends: a is idle, b evicts it and runs.
    a.open();
    assert_eq!(app.last_event("a1").await.event, "end");
    assert_eq!(app.last_event("b1").await.event, "end");
    assert_eq!(load_state(&app, "a").await, "unloaded");
    let m = app.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "model_evictions_total",
            &["pool_id=\"a\"", "reason=\"make_room\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn load_and_unload_over_http_and_a_busy_pool_is_409_unless_forced() {
    let f = Files::new();
    let a = FakeEngine::held();
    let app = TestApp::start_with(
        &yaml(
            ONE_CARD,
            &[f.pool("a", "engine", &[]), pool("always", 1, &[])],
        ),
        Options {
            engines: vec![("a", a.clone())],
            ..Options::default()
        },
    )
    .await;
    let r = app.post("/v1/pools/a/load", json!({})).await;
    r.expect_status(200);
    assert_eq!(
        (r.body["state"].clone(), r.body["changed"].clone()),
        (json!("loaded"), json!(true))
    );
    assert_eq!(r.body["devices"], json!(["gpu0"]));
    let again = app.post("/v1/pools/a/load", json!({})).await;
    assert_eq!(again.body["changed"], false, "{}", again.text);
    app.post("/v1/pools/always/load", json!({}))
        .await
        .expect_error(409, "CONFLICT", "load: always");
    app.post("/v1/pools/nope/unload", json!({}))
        .await
        .expect_error(404, "NOT_FOUND", "nope");
    // Busy: 409 and nothing stops.
    app.admit(task_for("a1", "a")).await;
    a.wait_active(1).await;
    app.post("/v1/pools/a/unload", json!({}))
        .await
        .expect_error(409, "CONFLICT", "1 running");
    assert_eq!(load_state(&app, "a").await, "loaded");
    assert_eq!(app.status("a1").await["state"], "running");
    // force: the task ends with CANCELED, then the engine stops.
    let r = app
        .post("/v1/pools/a/unload", json!({ "force": true }))
        .await;
    r.expect_status(200);
    assert_eq!(
        (r.body["state"].clone(), r.body["canceled"].clone()),
        (json!("unloaded"), json!(1))
    );
    let end = app.last_event("a1").await;
    assert_eq!(
        (end.event.as_str(), end.json()["code"].clone()),
        ("error", json!("CANCELED"))
    );
    let h = app.get("/v1/pools/a/health").await.body;
    assert_eq!(h["replicas"][0]["state"], "unloaded", "{h}");
    // An empty body is the defaults; unloading an unloaded pool changes nothing.
    let r = app
        .send(app.request(Method::POST, "/v1/pools/a/unload", None))
        .await;
    r.expect_status(200);
    assert_eq!(r.body["changed"], false);
    let m = app.get("/metrics").await.text;
    assert_eq!(
        metric(
            &m,
            "model_evictions_total",
            &["pool_id=\"a\"", "reason=\"request\""]
        ),
        1.0,
        "{m}"
    );
}

#[tokio::test]
async fn a_load_that_fails_ends_the_waiting_tasks_with_the_engines_output_and_spares_other_pools() {
    let f = Files::new();
    let app = TestApp::start(&yaml(
        "dev: { fake_gpus: \"1400MiB:A,1400MiB:B\" }",
        &[f.pool("bad", "dying", &[]), f.pool("good", "engine", &[])],
    ))
    .await;
    app.admit(task_for("b1", "bad")).await;
    app.admit(task_for("g1", "good")).await;
    let end = app.last_event("b1").await;
    assert_eq!(end.event, "error");
    let e = end.json();
    assert_eq!(e["code"], "ENGINE_ERROR", "{e}");
    assert_eq!(e["retriable"], false, "{e}");
    let msg = e["message"].as_str().unwrap_or("");
    assert!(
        msg.contains("m.gguf") && msg.contains("tensor data is not within the file bounds"),
        "{msg}"
    );
    let h = app.get("/v1/pools/bad/health").await.body;
    assert_eq!(h["on_demand"]["state"], "failed", "{h}");
    assert_eq!(h["replicas"][0]["state"], "failed");
    assert!(
        h["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("tried twice"),
        "{h}"
    );
    assert_eq!(
        app.last_event("g1").await.event,
        "end",
        "other pools are untouched"
    );
    // A missing model fails at once, naming the file.
    let f2 = Files::new();
    let gone = f2
        .pool("gone", "engine", &[])
        .replace(&f2.path("m.gguf"), "/nonexistent/x.gguf");
    let app = TestApp::start(&yaml(ONE_CARD, &[gone])).await;
    app.admit(task_for("x1", "gone")).await;
    let e = app.last_event("x1").await.json();
    assert_eq!(e["code"], "ENGINE_ERROR", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("/nonexistent/x.gguf"),
        "{e}"
    );
    let r = app.post("/v1/pools/gone/load", json!({})).await;
    r.expect_error(502, "ENGINE_ERROR", "/nonexistent/x.gguf");
}

#[tokio::test]
async fn a_task_whose_deadline_passes_while_it_waits_for_vram_ends_with_deadline_unmet() {
    let f = Files::new();
    let a = FakeEngine::held();
    let app = TestApp::start_with(
        &yaml(
            ONE_CARD,
            &[f.pool("a", "engine", &[]), f.pool("b", "engine", &[])],
        ),
        Options {
            engines: vec![("a", a.clone())],
            ..Options::default()
        },
    )
    .await;
    app.admit(task_for("a1", "a")).await;
    a.wait_active(1).await;
    app.admit(with(task_for("b1", "b"), json!({ "deadline_ms": 50 })))
        .await;
    let e = app.last_event("b1").await.json();
    assert_eq!(e["code"], "DEADLINE_UNMET", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("waits for VRAM"),
        "{e}"
    );
    assert_eq!(load_state(&app, "a").await, "loaded");
    a.open();
    assert_eq!(app.last_event("a1").await.event, "end");
    // Nothing waits for b any more: it stays unloaded, a stays loaded.
    wait_load_state(&app, "b", "unloaded").await;
    assert_eq!(load_state(&app, "a").await, "loaded");
}
