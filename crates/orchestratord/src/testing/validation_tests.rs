//! `400 INVALID_PARAMS` for every malformed task, each message saying what to change, and the
//! 404s of unknown tasks and routes.

use super::*;

async fn app() -> TestApp {
    TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await
}

/// Submits `body` and checks the 400 envelope names the problem.
async fn invalid(app: &TestApp, body: Value, message_part: &str) {
    let r = app.submit(body).await;
    r.expect_error(400, "INVALID_PARAMS", message_part);
    assert_eq!(r.body["retriable"], false);
    assert!(r.body.get("retry_after_ms").is_none(), "{}", r.text);
    assert!(r.header("retry-after").is_none());
}

#[tokio::test]
async fn error_envelope_has_code_message_retriable_and_frees_the_task_id() {
    let app = app().await;
    let r = app.submit(with(task("t1"), json!({"max_tokens": 0}))).await;
    r.expect_error(400, "INVALID_PARAMS", "max_tokens must be at least 1");
    let keys: Vec<&String> = r.body.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["code", "message", "retriable"], "{}", r.text);
    assert!(r.header("x-correlation-id").is_some());
    // A refused task does not reserve its id.
    app.admit(task("t1")).await;
}

#[tokio::test]
async fn bad_task_ids_are_refused() {
    let app = app().await;
    let msg = "task_id must be 1-128 characters of A-Z a-z 0-9 . _ : -";
    invalid(&app, task(""), msg).await;
    invalid(&app, task("has space"), msg).await;
    invalid(&app, task("slash/no"), msg).await;
    invalid(&app, task(&"x".repeat(129)), msg).await;
    app.admit(task(&"x".repeat(128))).await;
    app.admit(task("a.b_c:d-e")).await;
}

#[tokio::test]
async fn bad_session_id_is_refused() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"session_id": "no spaces"})),
        "session_id must be 1-128 characters",
    )
    .await;
}

#[tokio::test]
async fn empty_model_ref_and_unknown_engine_are_refused() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"model_ref": "  "})),
        "model_ref is empty; name a pool id or a model",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"engine": "ollama"})),
        "unknown engine `ollama`; use one of llamacpp, vllm, tgi, triton, openai",
    )
    .await;
}

#[tokio::test]
async fn workload_must_match_prompt_or_messages() {
    let app = app().await;
    let msgs = json!([{"role": "user", "content": "hi"}]);
    invalid(
        &app,
        with(task("t1"), json!({"prompt": null})),
        "a `completion` task needs `prompt`",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"messages": msgs})),
        "`messages` belongs to `chat` tasks",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"workload": "chat", "prompt": null})),
        "a `chat` task needs non-empty `messages`",
    )
    .await;
    invalid(
        &app,
        with(
            task("t1"),
            json!({"workload": "chat", "prompt": null, "messages": []}),
        ),
        "a `chat` task needs non-empty `messages`",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"workload": "chat", "messages": msgs})),
        "`prompt` belongs to `completion` tasks",
    )
    .await;
}

#[tokio::test]
async fn max_tokens_must_be_within_one_and_the_context() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"max_tokens": 0})),
        "max_tokens must be at least 1",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"max_tokens": 257})),
        "max_tokens 257 exceeds the context of 256 tokens (pool 'p1'); lower max_tokens",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"ctx": 32, "max_tokens": 33})),
        "max_tokens 33 exceeds the context of 32 tokens",
    )
    .await;
    app.admit(with(task("t1"), json!({"max_tokens": 256})))
        .await;
}

#[tokio::test]
async fn ctx_above_the_pool_slot_context_is_refused() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"ctx": 512})),
        "ctx 512 exceeds pool 'p1''s 256 tokens per slot",
    )
    .await;
}

#[tokio::test]
async fn strict_determinism_needs_a_seed() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"determinism": "strict"})),
        "determinism `strict` needs a `seed`",
    )
    .await;
    app.admit(with(
        task("t1"),
        json!({"determinism": "strict", "seed": 7}),
    ))
    .await;
    app.admit(with(task("t2"), json!({"determinism": "best_effort"})))
        .await;
}

#[tokio::test]
async fn sampling_numbers_must_be_finite_and_not_negative() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"temperature": -0.1})),
        "temperature must be a number from 0 to 100",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"top_p": -1})),
        "top_p must be a number from 0 to 1",
    )
    .await;
    // Beyond f32: infinite once parsed.
    invalid(
        &app,
        with(task("t1"), json!({"temperature": 1e39})),
        "temperature must be a number from 0 to 100",
    )
    .await;
    // NaN is not JSON at all.
    let raw = task("t1")
        .to_string()
        .replacen('{', "{\"temperature\": NaN, ", 1);
    let r = app
        .send(
            Request::post("/v1/tasks")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(raw))
                .expect("request"),
        )
        .await;
    r.expect_error(400, "INVALID_PARAMS", "invalid JSON body");
}

#[tokio::test]
async fn unknown_fields_are_refused_by_name() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"promt": "typo"})),
        "unknown field `promt`",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"placement": {"pin": "p1"}})),
        "invalid JSON body at `placement.pin`: unknown field `pin`",
    )
    .await;
}

#[tokio::test]
async fn type_errors_name_the_json_path() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"max_tokens": "four"})),
        "invalid JSON body at `max_tokens`",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"priority": "urgent"})),
        "invalid JSON body at `priority`",
    )
    .await;
    invalid(
        &app,
        with(
            task("t1"),
            json!({"workload": "chat", "prompt": null, "messages": [{"role": "user"}]}),
        ),
        "invalid JSON body at `messages[0]`",
    )
    .await;
}

#[tokio::test]
async fn missing_required_fields_and_non_json_bodies_are_refused() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"priority": null})),
        "missing field `priority`",
    )
    .await;
    invalid(
        &app,
        with(task("t1"), json!({"max_tokens": null})),
        "missing field `max_tokens`",
    )
    .await;
    let r = app
        .send(
            Request::post("/v1/tasks")
                .body(Body::from("not json"))
                .expect("request"),
        )
        .await;
    r.expect_error(400, "INVALID_PARAMS", "invalid JSON body");
}

#[tokio::test]
async fn budget_needs_a_session_and_a_sane_cost() {
    let app = app().await;
    invalid(
        &app,
        with(task("t1"), json!({"budget": {"tokens": 10}})),
        "`budget` applies to a session; add a `session_id`",
    )
    .await;
    invalid(
        &app,
        with(
            task("t1"),
            json!({"session_id": "s1", "budget": {"cost": -1.0}}),
        ),
        "budget.cost must be a finite number >= 0",
    )
    .await;
}

#[tokio::test]
async fn unknown_task_is_404_on_every_task_route() {
    let app = app().await;
    app.get("/v1/tasks/nope")
        .await
        .expect_error(404, "NOT_FOUND", "no task `nope`");
    app.get("/v1/tasks/nope/stream")
        .await
        .expect_error(404, "NOT_FOUND", "no task `nope`");
    app.post("/v1/tasks/nope/cancel", json!({}))
        .await
        .expect_error(404, "NOT_FOUND", "no task `nope`");
}

#[tokio::test]
async fn unknown_route_is_404_and_wrong_method_405_in_the_envelope() {
    let app = app().await;
    app.get("/v1/nothing")
        .await
        .expect_error(404, "NOT_FOUND", "no route /v1/nothing");
    let r = app.get("/v1/tasks").await;
    r.expect_error(405, "INVALID_PARAMS", "method not allowed");
}
