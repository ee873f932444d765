//! Queue truth: predictions in the 202 and the task's JSON, and the `metrics` frames a waiting
//! task's stream carries before `started` (at admission, on each change, at least every second).

use super::*;

/// One pool of one slot whose engine holds every stream at its gate: the first task occupies
/// the slot until the test opens the gate, every later one waits.
async fn one_busy_slot() -> TestApp {
    let engine = FakeEngine::held();
    let app = TestApp::start_with(
        &yaml("", &[pool("p1", 1, &[])]),
        Options {
            engines: vec![("p1", engine)],
            ..Options::default()
        },
    )
    .await;
    app.admit(task("busy")).await;
    app.wait_state("busy", "running").await;
    app
}

/// The next event that is not a `metrics` frame.
async fn next_non_metrics(r: &mut SseReader) -> SseEvent {
    loop {
        let ev = r.next().await.expect("the stream goes on");
        if ev.event != "metrics" {
            return ev;
        }
    }
}

/// The next waiting frame (a `metrics` event with `queue_position`); fails on anything else.
async fn next_waiting_frame(r: &mut SseReader) -> Value {
    let ev = r.next().await.expect("the stream goes on");
    assert_eq!(ev.event, "metrics", "expected a waiting frame, got {ev:?}");
    let m = ev.json();
    assert!(m["queue_position"].is_u64(), "not a waiting frame: {m}");
    m
}

#[tokio::test]
async fn a_waiting_task_streams_its_predictions_before_started() {
    let app = one_busy_slot().await;
    let adm = app
        .admit(with(task("t2"), json!({"deadline_ms": 60_000})))
        .await;
    assert_eq!(adm["queue_position"], 0);
    let start = adm["predicted_start_ms"]
        .as_u64()
        .expect("predicted_start_ms");
    let end = adm["predicted_end_ms"].as_u64().expect("predicted_end_ms");
    assert!(end >= start, "{adm}");
    let p = adm["on_time_probability"]
        .as_f64()
        .expect("with a deadline");
    assert!((0.0..=1.0).contains(&p), "{adm}");

    let mut r = app.open_stream("/v1/tasks/t2/stream").await;
    let first = next_waiting_frame(&mut r).await;
    assert_eq!(first["queue_position"], 0);
    assert_eq!(first["queue_depth"], 1);
    assert_eq!(first["tokens_out"], 0);
    for k in ["predicted_start_ms", "predicted_end_ms", "queued_ms"] {
        assert!(first[k].is_u64(), "{k} missing: {first}");
    }
    let p = first["on_time_probability"]
        .as_f64()
        .expect("a probability");
    assert!((0.0..=1.0).contains(&p), "{first}");
    // Nothing changes while the slot stays busy, yet the stream keeps talking (the 1 s tick).
    let t0 = Instant::now();
    let second = next_waiting_frame(&mut r).await;
    eprintln!("second waiting frame after {:?}: {second}", t0.elapsed());
    assert!(
        second["queued_ms"].as_u64() >= first["queued_ms"].as_u64(),
        "{first} then {second}"
    );

    app.engine("p1").open();
    let started = next_non_metrics(&mut r).await;
    assert_eq!(started.event, "started", "{started:?}");
    let rest = r.collect().await;
    assert!(
        rest.iter()
            .all(|e| e.event != "metrics" || e.json()["queue_position"].is_null()),
        "no waiting frame after started: {rest:?}"
    );
    assert_eq!(rest.last().map(|e| e.event.as_str()), Some("end"));
}

#[tokio::test]
async fn a_task_that_starts_at_once_gets_no_waiting_frame() {
    let app = TestApp::start(&yaml("", &[pool("p1", 2, &[])])).await;
    app.admit(task("t1")).await;
    let ev = app.events("t1").await;
    assert_eq!(
        ev.first().map(|e| e.event.as_str()),
        Some("started"),
        "{ev:?}"
    );
}

#[tokio::test]
async fn positions_move_up_when_a_task_ahead_leaves() {
    let app = one_busy_slot().await;
    app.admit(task("t2")).await;
    let adm3 = app.admit(task("t3")).await;
    assert_eq!(adm3["queue_position"], 1);
    let mut r = app.open_stream("/v1/tasks/t3/stream").await;
    let first = next_waiting_frame(&mut r).await;
    assert_eq!(first["queue_position"], 1, "{first}");
    assert_eq!(first["queue_depth"], 2, "{first}");
    app.post("/v1/tasks/t2/cancel", json!({}))
        .await
        .expect_status(202);
    // The cancel is a change: a frame with the new position follows (ticks may come first).
    loop {
        let m = next_waiting_frame(&mut r).await;
        if m["queue_position"] == 0 {
            assert_eq!(m["queue_depth"], 1, "{m}");
            break;
        }
    }
    let s = app.status("t3").await;
    assert_eq!(s["queue_position"], 0, "{s}");
    assert!(s["predicted_start_ms"].is_u64(), "{s}");
    assert!(s["predicted_end_ms"].is_u64(), "{s}");
}

#[tokio::test]
async fn an_interactive_task_goes_ahead_and_the_batch_task_hears_it() {
    let app = one_busy_slot().await;
    let b = app
        .admit(with(task("b1"), json!({"priority": "batch"})))
        .await;
    assert_eq!(b["queue_position"], 0);
    let mut r = app.open_stream("/v1/tasks/b1/stream").await;
    assert_eq!(next_waiting_frame(&mut r).await["queue_position"], 0);
    let i = app.admit(task("i1")).await;
    assert_eq!(i["queue_position"], 0);
    loop {
        let m = next_waiting_frame(&mut r).await;
        if m["queue_position"] == 1 {
            assert_eq!(m["queue_depth"], 2, "{m}");
            break;
        }
    }
    let (si, sb) = (app.status("i1").await, app.status("b1").await);
    let (pi, pb) = (
        si["predicted_start_ms"]
            .as_u64()
            .expect("interactive prediction"),
        sb["predicted_start_ms"].as_u64().expect("batch prediction"),
    );
    assert!(pi <= pb, "interactive {pi} ms after batch {pb} ms");
    app.engine("p1").open();
    for id in ["i1", "b1"] {
        assert_eq!(app.last_event(id).await.event, "end");
        let s = app.status(id).await;
        assert!(
            s["predicted_start_ms"].is_null() && s["predicted_end_ms"].is_null(),
            "{s}"
        );
    }
}

#[tokio::test]
async fn running_tasks_report_their_predicted_end() {
    let engine = FakeEngine::held();
    let app = TestApp::start_with(
        &yaml("", &[pool("p1", 1, &[])]),
        Options {
            engines: vec![("p1", engine)],
            ..Options::default()
        },
    )
    .await;
    app.admit(task("busy")).await;
    app.wait_state("busy", "running").await;
    app.admit(task("t2")).await;
    // While something waits, the forecast covers the running task too.
    let s = eventually("busy has a predicted end", || async {
        let s = app.status("busy").await;
        s["predicted_end_ms"].is_u64().then_some(s)
    })
    .await;
    assert!(s["predicted_start_ms"].is_null(), "started already: {s}");
    app.engine("p1").open();
}
