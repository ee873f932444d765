//! Session budgets: a task over budget is refused before enqueue, counting what admitted but
//! uncharged tasks of the session reserved; concurrently admitted first tasks included.

use super::*;

fn cfg(slots: u32) -> String {
    yaml("", &[pool("p1", slots, &[])])
}

fn budget_task(id: &str, max_tokens: u32) -> Value {
    with(
        task(id),
        json!({"session_id": "s1", "budget": {"tokens": 100}, "max_tokens": max_tokens}),
    )
}

async fn spent_tokens(app: &TestApp) -> u64 {
    let r = app.get("/v1/sessions/s1").await;
    r.expect_status(200);
    r.body["spent"]["tokens"].as_u64().expect("spent.tokens")
}

#[tokio::test]
async fn sequential_tasks_stop_at_the_token_budget() {
    let app = TestApp::start(&cfg(1)).await;
    let r = app.submit(budget_task("t1", 60)).await;
    r.expect_status(202);
    assert_eq!(r.header("x-budget-tokens-remaining"), Some("100"));
    app.events("t1").await;
    assert_eq!(spent_tokens(&app).await, 60);

    app.submit(budget_task("t2", 60)).await.expect_error(
        429,
        "BUDGET_EXCEEDED",
        "tokens: 60 of 100 spent, 40 left, task needs about 60",
    );
    let r = app.submit(budget_task("t2", 60)).await;
    assert!(
        r.message().contains("lower max_tokens to at most 40"),
        "{}",
        r.text
    );

    let r = app.submit(budget_task("t3", 40)).await;
    r.expect_status(202);
    assert_eq!(r.header("x-budget-tokens-remaining"), Some("40"));
    app.events("t3").await;
    assert_eq!(spent_tokens(&app).await, 100);

    app.submit(budget_task("t4", 1)).await.expect_error(
        429,
        "BUDGET_EXCEEDED",
        "start a new session with a larger budget",
    );
    assert_eq!(app.engine("p1").requests().len(), 2);
}

#[tokio::test]
async fn a_running_task_reserves_its_max_tokens() {
    let app = TestApp::start(&cfg(2)).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(budget_task("t1", 60)).await;
    e.wait_calls(1).await;
    // 60 reserved by the running task: 40 left for the next one.
    app.submit(budget_task("t2", 60)).await.expect_error(
        429,
        "BUDGET_EXCEEDED",
        "lower max_tokens to at most 40",
    );
    let r = app.submit(budget_task("t3", 40)).await;
    r.expect_status(202);
    assert_eq!(r.header("x-budget-tokens-remaining"), Some("40"));
    e.open();
    app.wait_state("t3", "completed").await;
    app.wait_state("t1", "completed").await;
    assert_eq!(spent_tokens(&app).await, 100);
}

#[tokio::test]
async fn cost_budget_refuses_once_spent() {
    let app = TestApp::start(&cfg(1)).await;
    let b = |id: &str| {
        with(
            task(id),
            json!({"session_id": "s1", "budget": {"cost": 0.003}}),
        )
    };
    // 1 prompt word + 3 tokens = 0.004 kilotokens.
    app.admit(b("t1")).await;
    app.events("t1").await;
    app.submit(b("t2"))
        .await
        .expect_error(429, "BUDGET_EXCEEDED", "cost: 0.004 of 0.003 spent");
}

/// 8 first tasks of one session race through admission while the engine holds whatever is
/// admitted: only one of them fits the budget (100 tokens, 60 each), and the session never
/// spends more than its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_tasks_of_a_session_fit_the_budget() {
    let app = TestApp::start(&cfg(8)).await;
    let e = app.engine("p1");
    e.hold();
    let answers =
        futures::future::join_all((0..8).map(|i| app.submit(budget_task(&format!("c{i}"), 60))))
            .await;
    let admitted: Vec<String> = answers
        .iter()
        .filter(|r| r.status == StatusCode::ACCEPTED)
        .map(|r| r.body["task_id"].as_str().unwrap_or_default().to_owned())
        .collect();
    for r in answers.iter().filter(|r| r.status != StatusCode::ACCEPTED) {
        r.expect_error(429, "BUDGET_EXCEEDED", "budget exceeded");
    }
    e.open();
    for id in &admitted {
        app.wait_state(id, "completed").await;
    }
    let spent = spent_tokens(&app).await;
    assert!(
        admitted.len() == 1 && spent <= 100,
        "admitted {} of 8 concurrent first tasks (expected 1: {admitted:?}); the session spent \
         {spent} tokens of its budget of 100",
        admitted.len()
    );
}
