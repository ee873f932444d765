//! Sessions: turns, TTL, pinning to the replica and slot holding the KV, eviction, and the
//! budget's life cycle (set by the first task, fixed afterwards, surfaced in headers, metrics
//! frames and `GET /v1/sessions/{id}`).

use super::*;

fn cfg(top: &str) -> String {
    yaml(top, &[pool("p1", 2, &[])])
}

fn in_session(id: &str, sid: &str) -> Value {
    with(task(id), json!({"session_id": sid}))
}

async fn session(app: &TestApp, sid: &str) -> Value {
    let r = app.get(&format!("/v1/sessions/{sid}")).await;
    r.expect_status(200);
    r.body
}

#[tokio::test]
async fn first_task_creates_the_session_and_its_charge_follows_completion() {
    let app = TestApp::start(&cfg("sessions: {ttl_ms: 60000, max_turns: 4}")).await;
    app.admit(in_session("t1", "s1")).await;
    assert_eq!(app.last_event("t1").await.event, "end");
    let s = session(&app, "s1").await;
    assert_eq!(s["session_id"], "s1");
    assert_eq!(s["turns"], 1);
    assert_eq!(s["max_turns"], 4);
    let ttl = s["ttl_ms_remaining"].as_u64().expect("ttl_ms_remaining");
    assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
    assert!(
        s.get("budget").is_none() && s.get("budget_remaining").is_none(),
        "{s}"
    );
    // 3 tokens out; cost counts 1 prompt word + 3 tokens, in kilotokens.
    assert_eq!(s["spent"]["tokens"], 3);
    assert_eq!(s["spent"]["cost"], 0.004);
}

#[tokio::test]
async fn every_task_is_a_turn_and_max_turns_is_409() {
    let app = TestApp::start(&cfg("sessions: {max_turns: 2}")).await;
    app.admit(in_session("a", "s1")).await;
    app.admit(in_session("b", "s1")).await;
    app.submit(in_session("c", "s1")).await.expect_error(
        409,
        "SESSION_TURNS_EXHAUSTED",
        "session 's1' has used all 2 turns (sessions.max_turns)",
    );
    assert_eq!(session(&app, "s1").await["turns"], 2);
    // Another session is unaffected.
    app.admit(in_session("d", "s2")).await;
}

#[tokio::test]
async fn idle_session_expires_after_its_ttl_with_409_then_starts_afresh() {
    let app = TestApp::start(&cfg("sessions: {ttl_ms: 100}")).await;
    app.admit(in_session("t1", "s1")).await;
    app.events("t1").await;
    eventually("session s1 expired", || async {
        (app.get("/v1/sessions/s1").await.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    app.submit(in_session("t2", "s1")).await.expect_error(
        409,
        "SESSION_EXPIRED",
        "session 's1' expired",
    );
    // The refusal said "resubmit to start a new session with this id".
    app.admit(in_session("t3", "s1")).await;
    assert_eq!(session(&app, "s1").await["turns"], 1);
}

#[tokio::test]
async fn session_pins_to_the_slot_its_engine_reported_and_reuses_it() {
    let app = TestApp::start(&cfg("")).await;
    app.admit(in_session("t1", "s1")).await;
    app.events("t1").await;
    let s = session(&app, "s1").await;
    assert_eq!(s["slot"], 0);
    let replica = s["replica_id"]
        .as_str()
        .expect("a pinned replica")
        .to_owned();
    app.admit(in_session("t2", "s1")).await;
    app.events("t2").await;
    let reqs = app.engine("p1").requests();
    assert_eq!(reqs[0].slot, None, "a new session lets the engine choose");
    assert_eq!(
        reqs[1].slot,
        Some(0),
        "the next turn asks for the session's slot"
    );
    assert_eq!(app.status("t2").await["replica_id"], replica.as_str());
}

#[tokio::test]
async fn delete_evicts_the_session_and_erases_its_slot() {
    let app = TestApp::start(&cfg("")).await;
    app.admit(in_session("t1", "s1")).await;
    app.events("t1").await;
    session(&app, "s1").await;
    let r = app.delete("/v1/sessions/s1").await;
    r.expect_status(200);
    assert_eq!(r.body["session_id"], "s1");
    assert_eq!(r.body["slot"], 0);
    assert_eq!(r.body["slot_erased"], true);
    assert_eq!(app.engine("p1").erased(), [0]);
    app.get("/v1/sessions/s1")
        .await
        .expect_error(404, "NOT_FOUND", "s1");
    app.delete("/v1/sessions/s1")
        .await
        .expect_error(404, "NOT_FOUND", "s1");
}

#[tokio::test]
async fn malformed_session_id_in_the_path_is_400() {
    let app = TestApp::start(&cfg("")).await;
    let r = app.get("/v1/sessions/bad%20id").await;
    r.expect_status(400);
    assert_eq!(r.code(), "INVALID_PARAMS");
}

#[tokio::test]
async fn budget_is_set_by_the_first_task_and_shown_with_what_is_left() {
    let app = TestApp::start(&cfg("")).await;
    app.admit(with(
        in_session("t1", "s1"),
        json!({"budget": {"tokens": 100}}),
    ))
    .await;
    app.events("t1").await;
    let s = session(&app, "s1").await;
    assert_eq!(s["budget"]["tokens"], 100);
    assert_eq!(s["budget_remaining"]["tokens"], 97);
    assert_eq!(s["spent"]["tokens"], 3);
}

#[tokio::test]
async fn budget_is_fixed_after_the_first_task() {
    let app = TestApp::start(&cfg("")).await;
    let b = json!({"budget": {"tokens": 100}});
    app.admit(with(in_session("t1", "s1"), b.clone())).await;
    app.submit(with(
        in_session("t2", "s1"),
        json!({"budget": {"tokens": 500}}),
    ))
    .await
    .expect_error(
        400,
        "INVALID_PARAMS",
        "session 's1' already exists and its budget is fixed at creation",
    );
    // Repeating it unchanged, or leaving it out, is fine.
    app.admit(with(in_session("t3", "s1"), b)).await;
    app.admit(in_session("t4", "s1")).await;
    assert_eq!(session(&app, "s1").await["turns"], 3);
}

#[tokio::test]
async fn budget_headers_on_the_202_and_once_on_the_stream() {
    let app = TestApp::start(&cfg("")).await;
    let r = app
        .submit(with(
            in_session("t1", "s1"),
            json!({"budget": {"tokens": 100, "time_ms": 60000, "cost": 1.5}}),
        ))
        .await;
    r.expect_status(202);
    assert_eq!(r.header("x-budget-tokens-remaining"), Some("100"));
    assert_eq!(r.header("x-budget-time-remaining-ms"), Some("60000"));
    assert_eq!(r.header("x-budget-cost-remaining"), Some("1.5"));
    let s = app.open_stream("/v1/tasks/t1/stream").await;
    assert_eq!(
        s.headers
            .get("x-budget-tokens-remaining")
            .and_then(|v| v.to_str().ok()),
        Some("100")
    );
    s.collect().await;
    // After the charge of 3 tokens.
    let r = app.submit(in_session("t2", "s1")).await;
    r.expect_status(202);
    assert_eq!(r.header("x-budget-tokens-remaining"), Some("97"));
}

#[tokio::test]
async fn metrics_frames_carry_the_budget_left() {
    let app = TestApp::start(&cfg("")).await;
    app.admit(with(
        in_session("t1", "s1"),
        json!({"budget": {"tokens": 100}, "max_tokens": 5}),
    ))
    .await;
    let ev = app.events("t1").await;
    let left: Vec<u64> = ev
        .iter()
        .filter(|e| e.event == "metrics")
        .map(|e| {
            e.json()["tokens_budget_remaining"]
                .as_u64()
                .expect("tokens_budget_remaining in every metrics frame")
        })
        .collect();
    assert_eq!(left.first(), Some(&100), "{left:?}");
    assert_eq!(left.last(), Some(&95), "{left:?}");
}

#[tokio::test]
async fn new_session_whose_task_exceeds_the_whole_budget_is_429() {
    let app = TestApp::start(&cfg("")).await;
    app.submit(with(
        in_session("t1", "s1"),
        json!({"budget": {"tokens": 10}, "max_tokens": 20}),
    ))
    .await
    .expect_error(
        429,
        "BUDGET_EXCEEDED",
        "the task's max_tokens 20 exceeds the whole budget of 10",
    );
    app.get("/v1/sessions/s1")
        .await
        .expect_error(404, "NOT_FOUND", "s1");
}

#[tokio::test]
async fn queue_full_refusal_gives_the_turn_back() {
    let app = TestApp::start(&yaml("queue: {capacity: 1}", &[pool("p1", 1, &[])])).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(in_session("a", "s1")).await;
    app.submit(in_session("b", "s1"))
        .await
        .expect_error(429, "ADMISSION_REJECT", "is full");
    assert_eq!(session(&app, "s1").await["turns"], 1);
    e.open();
}

#[tokio::test]
async fn duplicate_task_id_in_a_session_spends_no_turn() {
    let app = TestApp::start(&cfg("")).await;
    app.admit(in_session("t1", "s1")).await;
    app.submit(in_session("t1", "s1"))
        .await
        .expect_error(409, "DUPLICATE_TASK", "already in use");
    assert_eq!(session(&app, "s1").await["turns"], 1);
}
