//! Admission and the queue: the 202, queue positions and priorities, slots, backpressure
//! (reject and drop-lru), duplicate ids, and cancel of queued, running and finished tasks.

use super::*;

/// One pool with `slots` slots whose engine holds every stream until released.
async fn held(top: &str, slots: u32) -> (TestApp, Arc<FakeEngine>) {
    let app = TestApp::start(&yaml(top, &[pool("p1", slots, &[])])).await;
    let e = app.engine("p1");
    e.hold();
    (app, e)
}

fn batch(id: &str) -> Value {
    with(task(id), json!({"priority": "batch"}))
}

#[tokio::test]
async fn admission_answers_202_with_queue_metadata_and_location() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await;
    let mut req = app.request(Method::POST, "/v1/tasks", Some(&task("t1")));
    req.headers_mut().insert(
        "x-correlation-id",
        "my-cid-1".parse().expect("a header value"),
    );
    let r = app.send(req).await;
    r.expect_status(202);
    assert_eq!(r.body["task_id"], "t1");
    assert_eq!(r.body["queue_position"], 0);
    assert_eq!(r.body["pool_id"], "p1");
    assert_eq!(r.body["streams"]["sse"], "/v1/tasks/t1/stream");
    assert_eq!(r.header("location"), Some("/v1/tasks/t1/stream"));
    assert_eq!(r.header("x-correlation-id"), Some("my-cid-1"));
    let predicted = r.body["predicted_start_ms"]
        .as_u64()
        .expect("predicted_start_ms");
    let backoff = r.body["backoff_ms"].as_u64().expect("backoff_ms");
    assert_eq!(backoff, (predicted / 4).clamp(50, 5_000));
    // No session: no budget headers.
    assert!(r.header("x-budget-tokens-remaining").is_none());
}

#[tokio::test]
async fn correlation_id_is_generated_when_absent_or_malformed() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await;
    let r = app.get("/health").await;
    let cid = r.header("x-correlation-id").expect("a correlation id");
    assert_eq!(cid.len(), 36, "a UUID: {cid}");
    let mut req = app.request(Method::GET, "/health", None);
    req.headers_mut().insert(
        "x-correlation-id",
        "bad id!".parse().expect("a header value"),
    );
    let r = app.send(req).await;
    assert_ne!(r.header("x-correlation-id"), Some("bad id!"));
}

#[tokio::test]
async fn interactive_tasks_queue_before_every_batch_task() {
    let (app, e) = held("", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    let pos = |v: Value| v["queue_position"].as_u64().expect("queue_position");
    assert_eq!(pos(app.admit(batch("b1")).await), 0);
    assert_eq!(pos(app.admit(batch("b2")).await), 1);
    assert_eq!(pos(app.admit(task("i1")).await), 0);
    assert_eq!(pos(app.admit(task("i2")).await), 1);
    // The batch tasks moved back behind the interactive ones.
    assert_eq!(app.status("b1").await["queue_position"], 2);
    assert_eq!(app.status("b2").await["queue_position"], 3);
    assert_eq!(app.status("i1").await["queue_position"], 0);
    e.open();
}

#[tokio::test]
async fn dispatch_order_is_interactive_first_then_fifo_within_priority() {
    let (app, e) = held("", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    for b in [
        batch("b1"),
        batch("b2"),
        task("i1"),
        batch("b3"),
        task("i2"),
    ] {
        app.admit(b).await;
    }
    e.open();
    app.wait_state("b3", "completed").await;
    assert_eq!(e.prompts(), ["t0", "i1", "i2", "b1", "b2", "b3"]);
}

#[tokio::test]
async fn predicted_start_grows_with_the_queue() {
    let (app, e) = held("", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    let p1 = app.admit(task("t1")).await["predicted_start_ms"]
        .as_u64()
        .expect("predicted_start_ms");
    let p2 = app.admit(task("t2")).await["predicted_start_ms"]
        .as_u64()
        .expect("predicted_start_ms");
    assert!(p1 > 0, "a task waits behind a running one: {p1}");
    assert!(p2 > p1, "one more task ahead: {p2} vs {p1}");
    e.open();
}

#[tokio::test]
async fn a_replica_never_runs_more_tasks_than_slots() {
    let (app, e) = held("", 2).await;
    for i in 0..5 {
        app.admit(task(&format!("t{i}"))).await;
    }
    e.wait_calls(2).await;
    assert_eq!(
        (
            app.tasks_in_state(5, "running").await,
            app.tasks_in_state(5, "queued").await
        ),
        (2, 3)
    );
    // Let one finish: exactly one more starts.
    e.release(1);
    e.wait_calls(3).await;
    eventually("one task completed", || async {
        let done = app.tasks_in_state(5, "completed").await;
        (done == 1).then_some(())
    })
    .await;
    assert_eq!(
        (
            app.tasks_in_state(5, "running").await,
            app.tasks_in_state(5, "queued").await
        ),
        (2, 2)
    );
    assert_eq!(e.requests().len(), 3);
    e.open();
}

impl TestApp {
    /// How many of tasks `t0..tn` are in `state`.
    async fn tasks_in_state(&self, n: usize, state: &str) -> usize {
        let mut k = 0;
        for i in 0..n {
            if self.status(&format!("t{i}")).await["state"] == state {
                k += 1;
            }
        }
        k
    }
}

#[tokio::test]
async fn full_queue_is_429_admission_reject_with_retry_after_and_frees_the_id() {
    let (app, e) = held("queue: {capacity: 1}", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    let r = app.submit(task("t2")).await;
    r.expect_error(
        429,
        "ADMISSION_REJECT",
        "queue for pool 'p1' is full (1/1); retry after",
    );
    assert!(
        r.message().ends_with("ms or raise queue.capacity"),
        "{}",
        r.message()
    );
    assert_eq!(r.body["retriable"], true);
    assert_eq!(r.body["policy_label"], "reject");
    assert_eq!(r.body["engine"], "llamacpp");
    let ms = r.body["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!((100..=30_000).contains(&ms), "{ms}");
    assert_eq!(r.header("x-backoff-ms"), Some(ms.to_string().as_str()));
    assert_eq!(
        r.header("retry-after"),
        Some(ms.div_ceil(1000).to_string().as_str())
    );
    e.open();
    app.wait_state("t1", "completed").await;
    // The refused id was never taken.
    app.admit(task("t2")).await;
}

#[tokio::test]
async fn pool_queue_capacity_overrides_the_global_one() {
    let app = TestApp::start(&yaml(
        "queue: {capacity: 50}",
        &[pool("p1", 1, &["queue_capacity: 1"])],
    ))
    .await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    app.submit(task("t2"))
        .await
        .expect_error(429, "ADMISSION_REJECT", "(1/1)");
    let caps = app.get("/v1/capabilities").await;
    assert_eq!(caps.body["pools"][0]["queue_capacity"], 1);
    e.open();
}

#[tokio::test]
async fn drop_lru_drops_the_oldest_batch_task_for_new_work() {
    let (app, e) = held("queue: {capacity: 2, full_policy: drop-lru}", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(batch("b1")).await;
    app.admit(batch("b2")).await;
    let r = app.admit(task("i1")).await;
    assert_eq!(r["queue_position"], 0);
    let ev = app.events("b1").await;
    assert_eq!(names(&ev), ["error"], "dropped before it started");
    // Only waiting `metrics` frames came before it.
    let err = ev.last().expect("the error").json();
    assert_eq!(err["code"], "QUEUE_FULL_DROP_LRU");
    assert_eq!(err["retriable"], true);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("dropped from the full queue of pool 'p1' (2/2)")),
        "{err}"
    );
    assert_eq!(app.status("b1").await["state"], "failed");
    assert_eq!(app.status("b2").await["state"], "queued");
    e.open();
    app.wait_state("b2", "completed").await;
    assert_eq!(e.prompts(), ["t0", "i1", "b2"]);
}

#[tokio::test]
async fn drop_lru_with_no_batch_task_waiting_rejects() {
    let (app, e) = held("queue: {capacity: 1, full_policy: drop-lru}", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("i1")).await;
    let r = app.submit(task("i2")).await;
    r.expect_error(429, "ADMISSION_REJECT", "is full (1/1)");
    assert_eq!(r.body["policy_label"], "drop-lru");
    assert_eq!(app.status("i1").await["state"], "queued");
    e.open();
}

#[tokio::test]
async fn duplicate_task_id_is_409_while_running_and_after_it_finished() {
    let (app, e) = held("", 1).await;
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    app.submit(task("t1")).await.expect_error(
        409,
        "DUPLICATE_TASK",
        "task_id `t1` is already in use; choose a new id",
    );
    e.open();
    app.wait_state("t1", "completed").await;
    app.submit(task("t1"))
        .await
        .expect_error(409, "DUPLICATE_TASK", "already in use");
    assert_eq!(e.requests().len(), 1);
}

#[tokio::test]
async fn cancel_of_a_queued_task_ends_it_without_starting_it() {
    let (app, e) = held("", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    let r = app.post("/v1/tasks/t1/cancel", json!({})).await;
    r.expect_status(202);
    assert_eq!(r.body, json!({"task_id": "t1", "state": "canceled"}));
    let ev = app.events("t1").await;
    assert_eq!(names(&ev), ["error"]);
    assert_eq!(ev.last().expect("the error").json()["code"], "CANCELED");
    // Idempotent.
    let again = app.post("/v1/tasks/t1/cancel", json!({})).await;
    again.expect_status(202);
    assert_eq!(again.body["state"], "canceled");
    e.open();
    app.wait_state("t0", "completed").await;
    assert_eq!(
        e.prompts(),
        ["t0"],
        "the canceled task never reached the engine"
    );
}

#[tokio::test]
async fn cancel_of_a_running_task_aborts_its_engine_request() {
    let (app, e) = held("", 1).await;
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    e.wait_active(1).await;
    let r = app.post("/v1/tasks/t1/cancel", json!({})).await;
    r.expect_status(202);
    assert_eq!(r.body["state"], "canceled");
    // Dropping the stream is the abort.
    e.wait_active(0).await;
    let ev = app.events("t1").await;
    assert_eq!(names(&ev), ["started", "error"]);
    let err = ev.last().expect("an error event").json();
    assert_eq!(err["code"], "CANCELED");
    assert_eq!(err["message"], "task canceled by request");
    let st = app.status("t1").await;
    assert_eq!(st["state"], "canceled");
    assert_eq!(st["error"]["code"], "CANCELED");
    let m = app.get("/metrics").await;
    assert!(
        m.text
            .lines()
            .any(|l| l.starts_with("tasks_canceled_total{") && l.contains("reason=\"CANCELED\"")),
        "{}",
        m.text
    );
}

#[tokio::test]
async fn cancel_of_a_finished_task_is_idempotent_and_keeps_its_state() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await;
    app.admit(task("t1")).await;
    app.events("t1").await;
    for _ in 0..2 {
        let r = app.post("/v1/tasks/t1/cancel", json!({})).await;
        r.expect_status(202);
        assert_eq!(r.body, json!({"task_id": "t1", "state": "completed"}));
    }
    assert_eq!(app.last_event("t1").await.event, "end");
}

#[tokio::test]
async fn slot_freed_by_a_canceled_task_goes_to_the_next_one() {
    let (app, e) = held("", 1).await;
    app.admit(task("t0")).await;
    e.wait_calls(1).await;
    app.admit(task("t1")).await;
    app.post("/v1/tasks/t0/cancel", json!({}))
        .await
        .expect_status(202);
    e.wait_calls(2).await;
    e.open();
    app.wait_state("t1", "completed").await;
    assert_eq!(e.prompts(), ["t0", "t1"]);
}
