//! Auth, pool drain and resume, daemon shutdown, `/health`, `/v1/capabilities` and pool health.

use std::net::SocketAddr;

use orch_engine_adapters::EngineInfo;

use super::*;

const TOKEN: &str = "s3cret-test-token-42";

fn one_pool() -> String {
    yaml("", &[pool("p1", 1, &[])])
}

async fn with_token(top: &str) -> TestApp {
    TestApp::start_with(
        &yaml(top, &[pool("p1", 1, &[])]),
        Options {
            token: Some(TOKEN.into()),
            ..Options::default()
        },
    )
    .await
}

/// `POST /v1/tasks` with `authorization` (if any) from `peer`.
async fn submit_as(app: &TestApp, authorization: Option<&str>, peer: [u8; 4], body: Value) -> Resp {
    let mut b = Request::post("/v1/tasks").header(header::CONTENT_TYPE, "application/json");
    if let Some(a) = authorization {
        b = b.header(header::AUTHORIZATION, a);
    }
    let mut req = b.body(Body::from(body.to_string())).expect("request");
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from((peer, 50000))));
    app.send(req).await
}

const REMOTE: [u8; 4] = [10, 0, 0, 5];
const LOCAL: [u8; 4] = [127, 0, 0, 1];

#[tokio::test]
async fn token_is_required_and_checked() {
    let app = with_token("").await;
    submit_as(&app, None, LOCAL, task("t1")).await.expect_error(
        401,
        "MISSING_TOKEN",
        "this endpoint needs `Authorization: Bearer <token>`",
    );
    submit_as(&app, Some("Bearer wrong"), LOCAL, task("t1"))
        .await
        .expect_error(401, "BAD_TOKEN", "the bearer token does not match");
    submit_as(&app, Some(&format!("Basic {TOKEN}")), LOCAL, task("t1"))
        .await
        .expect_error(401, "BAD_TOKEN", "must be `Bearer <token>`");
    submit_as(&app, Some(&format!("Bearer {TOKEN}")), REMOTE, task("t1"))
        .await
        .expect_status(202);
}

#[tokio::test]
async fn health_and_metrics_are_open_on_loopback_only() {
    let app = with_token("").await;
    let get = |path: &str, peer: [u8; 4]| {
        let mut req = Request::get(path).body(Body::empty()).expect("request");
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from((peer, 50000))));
        req
    };
    app.send(get("/health", LOCAL)).await.expect_status(200);
    app.send(get("/metrics", LOCAL)).await.expect_status(200);
    app.send(get("/health", REMOTE))
        .await
        .expect_error(401, "MISSING_TOKEN", "Bearer");
    app.send(get("/v1/capabilities", LOCAL))
        .await
        .expect_error(401, "MISSING_TOKEN", "Bearer");
}

#[tokio::test]
async fn auth_optional_waives_the_token_for_loopback_callers_only() {
    let app = with_token("auth: {optional: true}").await;
    submit_as(&app, None, LOCAL, task("t1"))
        .await
        .expect_status(202);
    submit_as(&app, None, REMOTE, task("t2"))
        .await
        .expect_error(401, "MISSING_TOKEN", "Bearer");
}

#[tokio::test]
async fn without_a_token_only_loopback_callers_get_in() {
    let app = TestApp::start(&one_pool()).await;
    submit_as(&app, None, LOCAL, task("t1"))
        .await
        .expect_status(202);
    submit_as(&app, None, REMOTE, task("t2"))
        .await
        .expect_error(
            401,
            "MISSING_TOKEN",
            "remote callers need a token, and none is configured",
        );
}

#[tokio::test]
async fn error_answers_never_echo_the_token() {
    let app = with_token("").await;
    // The token sent as a model name comes back in the 404's message, redacted.
    let r = submit_as(
        &app,
        Some(&format!("Bearer {TOKEN}")),
        LOCAL,
        with(task("t1"), json!({"model_ref": TOKEN})),
    )
    .await;
    r.expect_status(404);
    assert_eq!(r.code(), "MODEL_NOT_FOUND");
    assert!(!r.text.contains(TOKEN), "{}", r.text);
}

#[tokio::test]
async fn drained_pool_refuses_new_work_until_resumed() {
    let app = TestApp::start(&one_pool()).await;
    let r = app
        .post("/v1/pools/p1/drain", json!({"deadline_ms": 60000}))
        .await;
    r.expect_status(202);
    assert_eq!(r.body["pool_id"], "p1");
    assert_eq!(r.body["draining"], true);
    assert!(r.body["deadline_at_ms"].is_u64(), "{}", r.text);
    assert_eq!(app.get("/v1/pools/p1/health").await.body["draining"], true);
    let refused = app.submit(task("t1")).await;
    refused.expect_error(503, "POOL_UNAVAILABLE", "pool p1 is draining");
    assert_eq!(refused.body["retriable"], true);
    let r = app
        .post("/v1/pools/p1/drain", json!({"resume": true}))
        .await;
    r.expect_status(200);
    assert_eq!(r.body["draining"], false);
    assert!(r.body.get("deadline_at_ms").is_none(), "{}", r.text);
    app.admit(task("t1")).await;
}

#[tokio::test]
async fn drain_lets_running_work_finish_before_its_deadline() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    let r = app
        .post("/v1/pools/p1/drain", json!({"deadline_ms": 60000}))
        .await;
    r.expect_status(202);
    assert_eq!(r.body["running"], 1);
    e.open();
    assert_eq!(app.last_event("t1").await.event, "end");
}

#[tokio::test]
async fn drain_deadline_cancels_queued_and_running_tasks() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    app.admit(task("t2")).await;
    app.post("/v1/pools/p1/drain", json!({"deadline_ms": 0}))
        .await
        .expect_status(202);
    for id in ["t1", "t2"] {
        let err = app.last_event(id).await;
        assert_eq!(err.event, "error", "{id}");
        let err = err.json();
        assert_eq!(err["code"], "CANCELED", "{id}");
        assert!(
            err["message"]
                .as_str()
                .is_some_and(|m| m.contains("pool 'p1' is drained and its 0 ms deadline passed")),
            "{err}"
        );
    }
    e.wait_active(0).await;
}

#[tokio::test]
async fn drain_errors_unknown_pool_and_contradictory_body() {
    let app = TestApp::start(&one_pool()).await;
    app.post("/v1/pools/nope/drain", json!({}))
        .await
        .expect_error(404, "NOT_FOUND", "no pool `nope`");
    app.post(
        "/v1/pools/p1/drain",
        json!({"resume": true, "deadline_ms": 5}),
    )
    .await
    .expect_error(
        400,
        "INVALID_PARAMS",
        "either `resume: true` or `deadline_ms`",
    );
    app.post("/v1/pools/p1/drain", json!({"deadline_ms": 86_400_001u64}))
        .await
        .expect_error(400, "INVALID_PARAMS", "deadline_ms 86400001 is too large");
}

#[tokio::test]
async fn shutdown_ends_queued_and_running_tasks_with_shutting_down() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    app.admit(task("t2")).await;
    // Grace 0: running tasks are ended at once too.
    app.shutdown(Duration::ZERO).await;
    for id in ["t1", "t2"] {
        let err = app.last_event(id).await;
        assert_eq!(err.event, "error", "{id}");
        let err = err.json();
        assert_eq!(err["code"], "SHUTTING_DOWN", "{id}");
        assert_eq!(err["retriable"], true);
        assert_eq!(err["retry_after_ms"], 5000);
    }
    assert_eq!(
        names(&app.events("t2").await),
        ["error"],
        "t2 never started"
    );
    assert_eq!(e.prompts(), ["t1"]);
    let refused = app.submit(task("t3")).await;
    refused.expect_error(503, "SHUTTING_DOWN", "the daemon is shutting down");
    assert_eq!(refused.header("retry-after"), Some("5"));
    assert_eq!(app.get("/health").await.body["status"], "shutting_down");
}

#[tokio::test]
async fn shutdown_lets_running_tasks_finish_within_the_grace() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    let stream = app.open_stream("/v1/tasks/t1/stream").await;
    let shutdown = app.shutdown(Duration::from_secs(30));
    let finish = async {
        eventually("shutdown began", || async {
            (app.get("/health").await.body["status"] == "shutting_down").then_some(())
        })
        .await;
        e.open();
        stream.collect().await
    };
    let ((), ev) = tokio::join!(shutdown, finish);
    assert_eq!(names(&ev), ["started", "token", "token", "token", "end"]);
}

#[tokio::test]
async fn health_counts_ready_pools() {
    let app = TestApp::start_with(
        &yaml("", &[pool("p1", 1, &[]), pool("p2", 1, &[])]),
        Options {
            engines: vec![("p2", FakeEngine::unhealthy())],
            ..Options::default()
        },
    )
    .await;
    let h = app.get("/health").await;
    h.expect_status(200);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["pools_ready"], 1);
    assert_eq!(h.body["pools_total"], 2);
    assert!(h.body["version"].is_string());
}

#[tokio::test]
async fn capabilities_come_from_the_live_engines() {
    let e = FakeEngine::new();
    e.set_info(EngineInfo {
        version: "fake-b7".into(),
        ctx_per_slot: Some(128),
        slots: Some(3),
        model: None,
    });
    let app = TestApp::start_with(
        &yaml(
            "queue: {capacity: 7, full_policy: drop-lru}",
            &[pool("p1", 3, &["model: /models/tiny.gguf"])],
        ),
        Options {
            engines: vec![("p1", e)],
            ..Options::default()
        },
    )
    .await;
    let c = app.get("/v1/capabilities").await;
    c.expect_status(200);
    assert_eq!(c.body["queue_policy"], "drop-lru");
    assert_eq!(c.body["priorities"], json!(["interactive", "batch"]));
    assert_eq!(c.body["dev_allow_cpu_inference"], false);
    assert!(c.body["api_version"].is_string());
    let p = &c.body["pools"][0];
    assert_eq!(p["id"], "p1");
    assert_eq!(p["engine"], "llamacpp");
    assert_eq!(p["engine_version"], "fake-b7");
    assert_eq!(
        p["ctx_max"], 128,
        "the engine's context wins over the config's 256"
    );
    assert_eq!(p["max_tokens"], 128);
    assert_eq!(p["concurrency"], 3);
    assert_eq!(p["queue_capacity"], 7);
    assert_eq!(p["ready"], true);
    assert_eq!(p["devices"], json!(["remote"]));
    assert!(p["model_refs"]
        .as_array()
        .is_some_and(|m| m.iter().any(|r| r == "tiny")));
    // Admission holds tasks to what the engine reports.
    app.submit(with(task("t1"), json!({"max_tokens": 129})))
        .await
        .expect_error(400, "INVALID_PARAMS", "exceeds the context of 128 tokens");
}

#[tokio::test]
async fn pool_health_lists_its_ready_replica() {
    let app = TestApp::start(&one_pool()).await;
    let h = app.get("/v1/pools/p1/health").await;
    h.expect_status(200);
    assert_eq!(h.body["live"], true);
    assert_eq!(h.body["ready"], true);
    assert_eq!(h.body["draining"], false);
    assert!(h.body["last_error"].is_null());
    let reps = h.body["replicas"].as_array().expect("replicas");
    assert_eq!(reps.len(), 1);
    assert_eq!(reps[0]["state"], "ready");
    assert_eq!(reps[0]["slots"], 1);
    assert_eq!(reps[0]["endpoint"], "http://127.0.0.1:9");
    assert_eq!(reps[0]["info"]["version"], "fake-b1");
    app.get("/v1/pools/nope/health")
        .await
        .expect_error(404, "NOT_FOUND", "no pool `nope`");
}
