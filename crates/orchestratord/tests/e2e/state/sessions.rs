//! Sessions: a pinned slot kept warm across turns, turn limits, eviction, expiry.

use std::time::{Duration, Instant};

use orch_harness::{engine, last_event, llama_pool, token_text, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::support::bin;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_pin_slot_warm_up_limit_turns_and_eviction_frees_the_slot() {
    let e = engine();
    let d = start_pool(
        &e,
        2,
        "sessions: { ttl_ms: 60000, max_turns: 3 }\n",
        DaemonOptions::default(),
    );
    let ep = replica_endpoint(&d).await;
    let sess =
        |id: &str, prompt: &str| with(task(id, "tiny", prompt, 8), json!({"session_id": "conv-1"}));

    let (_, ev1) = run(&d, sess("s-t1", LONG_PROMPT)).await;
    assert_eq!(last_event(&ev1).event, "end");
    let (s, v) = d.get("/v1/sessions/conv-1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["turns"], 1);
    assert_eq!(v["max_turns"], 3);
    assert_eq!(v["replica_id"], "tiny-r0");
    let slot = v["slot"].as_u64().expect("pinned slot");
    assert!(v["kv_bytes"].as_u64().unwrap() > 0, "{v}");
    let ttl = v["ttl_ms_remaining"].as_u64().unwrap();
    assert!(ttl > 50_000 && ttl <= 60_000, "{v}");
    assert!(v.get("budget_remaining").is_none(), "{v}");
    let held = slot_tokens(&ep, slot).await;
    assert!(
        held > 20,
        "slot {slot} should hold the conversation, holds {held}"
    );

    // Turn 2 extends the conversation: same slot, prefix reused.
    let prompt2 = format!("{LONG_PROMPT}{} And then", token_text(&ev1));
    let (_, ev2) = run(&d, sess("s-t2", &prompt2)).await;
    assert_eq!(last_event(&ev2).event, "end");
    let warm = ev2
        .iter()
        .rev()
        .filter(|e| e.event == "metrics")
        .find_map(|e| e.json()["kv_warmth"].as_f64())
        .expect("kv_warmth in the final metrics frame");
    assert!(warm > 0.5, "prefix should be reused, kv_warmth {warm}");
    let (_, v) = d.get("/v1/sessions/conv-1").await;
    assert_eq!(v["turns"], 2);
    assert_eq!(v["slot"].as_u64(), Some(slot), "{v}");
    assert!(v["kv_warmth"].as_f64().unwrap() > 0.5, "{v}");

    // Turn 3 is the last; turn 4 is refused with a typed error.
    let (_, ev3) = run(&d, sess("s-t3", "Another turn")).await;
    assert_eq!(last_event(&ev3).event, "end");
    let r = d.submit(&sess("s-t4", "One too many")).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SESSION_TURNS_EXHAUSTED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("3 turns"), "{v}");

    // Eviction frees the engine slot.
    let slot = d.get("/v1/sessions/conv-1").await.1["slot"]
        .as_u64()
        .unwrap();
    assert!(slot_tokens(&ep, slot).await > 0);
    let r = call(&d, "DELETE", "/v1/sessions/conv-1", None).await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["slot_erased"], true, "{}", r.1);
    assert_eq!(r.1["slot"].as_u64(), Some(slot));
    assert_eq!(
        slot_tokens(&ep, slot).await,
        0,
        "slot {slot} still holds KV after eviction"
    );
    assert_err(
        &call(&d, "GET", "/v1/sessions/conv-1", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "DELETE", "/v1/sessions/conv-1", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", "/v1/sessions/bad%20id", None).await,
        400,
        "INVALID_PARAMS",
    );

    // The id can start over.
    let (_, ev) = run(&d, sess("s-t5", "Fresh start")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-1").await.1["turns"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_queue_refuses_does_not_use_up_a_session_turn() {
    let e = engine();
    // A long context so the busy task cannot finish while the test fills the queue.
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\nqueue: {{ capacity: 1, full_policy: reject }}\nsessions: {{ ttl_ms: 60000, max_turns: 2 }}\npools:\n{}",
        llama_pool("tiny", &e, 1, 1, 32768)
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            ..Default::default()
        },
    );
    let sess = |id: &str| {
        with(
            task(id, "tiny", "Hello", 4),
            json!({"session_id": "conv-q"}),
        )
    };
    let (_, ev) = run(&d, sess("q-t1")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-q").await.1["turns"], 1);

    // The slot busy and the queue full: the session's second turn is refused with 429 …
    assert_eq!(
        d.submit(&task("q-busy", "tiny", "Busy", 30000))
            .await
            .status(),
        202
    );
    d.wait_state("q-busy", "running").await;
    assert_eq!(
        d.submit(&task("q-wait", "tiny", "Wait", 4)).await.status(),
        202
    );
    let r = d.submit(&sess("q-t2")).await;
    assert_eq!(r.status(), 429);
    // … and the turn it would have used is still there.
    let (_, v) = d.get("/v1/sessions/conv-q").await;
    assert_eq!(v["turns"], 1, "{v}");

    for id in ["q-busy", "q-wait"] {
        let r = call(
            &d,
            "POST",
            &format!("/v1/tasks/{id}/cancel"),
            Some(json!({})),
        )
        .await;
        assert_eq!(r.0, 202, "{}", r.1);
    }
    d.wait_state("q-busy", "canceled").await;
    let (_, ev) = run(&d, sess("q-t2")).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(d.get("/v1/sessions/conv-q").await.1["turns"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_expiry_frees_the_slot_and_reports_expired_once() {
    let e = engine();
    let d = start_pool(
        &e,
        2,
        "sessions: { ttl_ms: 1500, max_turns: 8 }\n",
        DaemonOptions::default(),
    );
    let ep = replica_endpoint(&d).await;
    let body = |id: &str| {
        with(
            task(id, "tiny", LONG_PROMPT, 8),
            json!({"session_id": "exp-1"}),
        )
    };
    let (_, ev) = run(&d, body("x-t1")).await;
    assert_eq!(last_event(&ev).event, "end");
    let (s, v) = d.get("/v1/sessions/exp-1").await;
    assert_eq!(s, 200, "{v}");
    let slot = v["slot"].as_u64().unwrap();
    assert!(slot_tokens(&ep, slot).await > 0);

    let deadline = Instant::now() + Duration::from_secs(15);
    while d.get("/v1/sessions/exp-1").await.0 != 404 {
        assert!(Instant::now() < deadline, "session never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while slot_tokens(&ep, slot).await != 0 {
        assert!(
            Instant::now() < deadline,
            "expired session's slot {slot} was not freed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = d.submit(&body("x-t2")).await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "SESSION_EXPIRED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("resubmit"), "{v}");
    // Reported once; then the id starts a new session (read at once: the TTL is short).
    let r = d.submit(&body("x-t3")).await;
    assert_eq!(r.status(), 202);
    let (s, v) = d.get("/v1/sessions/exp-1").await;
    assert_eq!((s, &v["turns"]), (200, &json!(1)), "{v}");
    let ev = d.stream("x-t3").await;
    assert_eq!(last_event(&ev).event, "end");
}
