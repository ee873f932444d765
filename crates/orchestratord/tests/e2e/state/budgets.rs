//! Budgets: enforced before a task is queued and surfaced in the task and its stream.

use orch_harness::{engine, last_event, DaemonOptions};
use serde_json::{json, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_are_enforced_before_enqueue_and_surfaced() {
    let e = engine();
    let d = start_pool(&e, 2, "", DaemonOptions::default());
    let sess = |id: &str, sid: &str, n: u32| {
        with(
            task(id, "tiny", "Once upon a time", n),
            json!({"session_id": sid}),
        )
    };
    let budget = json!({"tokens": 24, "time_ms": 600000, "cost": 5.0});

    let (h, ev) = run(&d, with(sess("b-1", "bud-1", 8), json!({"budget": budget}))).await;
    assert_eq!(h["x-budget-tokens-remaining"], "24");
    assert_eq!(h["x-budget-time-remaining-ms"], "600000");
    assert_eq!(h["x-budget-cost-remaining"], "5");
    assert_eq!(last_event(&ev).event, "end");
    let remaining: Vec<u64> = ev
        .iter()
        .filter(|e| e.event == "metrics")
        .filter_map(|e| e.json()["tokens_budget_remaining"].as_u64())
        .collect();
    assert!(
        !remaining.is_empty(),
        "metrics frames carry the budget: {ev:?}"
    );
    let tokens1 = last_event(&ev).json()["tokens_out"].as_u64().unwrap();
    assert_eq!(*remaining.last().unwrap(), 24 - tokens1);
    assert!(ev
        .iter()
        .any(|e| e.event == "metrics" && e.json()["cost_budget_remaining"].is_number()));
    assert!(ev
        .iter()
        .any(|e| e.event == "metrics" && e.json()["time_budget_remaining_ms"].is_number()));
    // The stream response carries the headers once too.
    let r = d
        .client()
        .get(format!("{}/v1/tasks/b-1/stream", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-budget-tokens-remaining"], "24");
    drop(r);

    let (_, v) = d.get("/v1/sessions/bud-1").await;
    let spent = v["spent"]["tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&spent), "{v}");
    assert_eq!(v["budget_remaining"]["tokens"].as_u64(), Some(24 - spent));
    assert_eq!(v["budget"]["tokens"], 24);
    assert!(v["spent"]["cost"].as_f64().unwrap() > 0.0, "{v}");

    let (h, ev) = run(&d, sess("b-2", "bud-1", 8)).await;
    assert_eq!(
        h["x-budget-tokens-remaining"],
        (24 - spent).to_string().as_str()
    );
    assert_eq!(last_event(&ev).event, "end");
    let (_, v) = d.get("/v1/sessions/bud-1").await;
    let left = v["budget_remaining"]["tokens"].as_u64().unwrap();
    assert!(left < 24 - spent, "{v}");

    // More than what is left: refused at the edge, with what remains.
    let r = d.submit(&sess("b-3", "bud-1", (left + 1) as u32)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "BUDGET_EXCEEDED", "{v}");
    let msg = v["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("tokens {left}")) && msg.contains("max_tokens"),
        "{v}"
    );
    assert_eq!(
        d.get("/v1/tasks/b-3").await.0,
        404,
        "a refused task is not admitted"
    );
    assert_eq!(
        d.get("/v1/sessions/bud-1").await.1["turns"],
        2,
        "a refused task takes no turn"
    );

    // A budget is fixed at creation, needs a session, and must fit the first task.
    let r = d
        .submit(&with(
            sess("b-4", "bud-1", 1),
            json!({"budget": {"tokens": 1000}}),
        ))
        .await;
    assert_eq!(r.status(), 400);
    let r = d
        .submit(&with(
            task("b-5", "tiny", "x", 1),
            json!({"budget": {"tokens": 10}}),
        ))
        .await;
    assert_eq!(r.status(), 400);
    let r = d
        .submit(&with(
            sess("b-6", "bud-2", 8),
            json!({"budget": {"tokens": 4}}),
        ))
        .await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        d.get("/v1/sessions/bud-2").await.0,
        404,
        "a refused first task creates no session"
    );
    let r = d
        .submit(&with(
            sess("b-7", "bud-2", 8),
            json!({"budget": {"tokens": 4, "colour": 1}}),
        ))
        .await;
    assert_eq!(r.status(), 400);

    // A time budget: the first task uses it up, the next is refused.
    let (_, ev) = run(
        &d,
        with(sess("b-8", "bud-3", 8), json!({"budget": {"time_ms": 1}})),
    )
    .await;
    assert_eq!(last_event(&ev).event, "end");
    let r = d.submit(&sess("b-9", "bud-3", 8)).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(v["message"].as_str().unwrap().contains("time"), "{v}");
}
