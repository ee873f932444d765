//! The task stream: event order, exact token text, late and concurrent readers, engine errors,
//! and what reaches the engine.

use orch_engine_adapters::{AdapterError, Prompt};

use super::*;

fn one_pool() -> String {
    yaml("", &[pool("p1", 2, &[])])
}

#[tokio::test]
async fn stream_is_started_tokens_end_in_order() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(with(task("t1"), json!({"max_tokens": 4}))).await;
    let ev = app.events("t1").await;
    assert_eq!(
        names(&ev),
        ["started", "token", "token", "token", "token", "end"]
    );
    let idx: Vec<u64> = ev
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["i"].as_u64().expect("token index"))
        .collect();
    assert_eq!(idx, [0, 1, 2, 3]);
    assert_eq!(token_texts(&ev), ["tok0 ", "tok1 ", "tok2 ", "tok3 "]);
    let end = ev.last().expect("an end event").json();
    assert_eq!(end["tokens_out"], 4);
    assert_eq!(end["finish_reason"], "length");
    assert_eq!(end["prompt_tokens"], 1);
    assert!(end["decode_ms"].is_u64(), "{end}");
}

#[tokio::test]
async fn started_event_names_pool_replica_engine_and_device() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(task("t1")).await;
    let ev = app.events("t1").await;
    let started = ev
        .iter()
        .find(|e| e.event == "started")
        .expect("a started event")
        .json();
    assert_eq!(started["pool_id"], "p1");
    assert_eq!(started["engine"], "llamacpp");
    assert_eq!(started["engine_version"], "fake-b1");
    assert_eq!(started["device"], "remote");
    assert_eq!(started["queue_position"], 0);
    assert!(
        started["replica_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("p1")),
        "{started}"
    );
}

#[tokio::test]
async fn token_text_is_relayed_byte_for_byte() {
    let app = TestApp::start(&one_pool()).await;
    // Line separators JSON leaves raw (U+2028, U+0085), line ends it escapes (lone CR, CRLF),
    // quotes, backslashes, multi-byte text and an empty chunk.
    let tokens = [
        "a\u{2028}b",
        "\u{0085}",
        "c\rd",
        "\r\n",
        "\n\n",
        "é🦀",
        " \"q\" \\ ",
        "",
        "data: x",
    ];
    app.engine("p1").set_tokens(tokens);
    app.admit(with(task("t1"), json!({"max_tokens": 20}))).await;
    let ev = app.events("t1").await;
    assert_eq!(token_texts(&ev), tokens);
    let end = ev.last().expect("an end event");
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["finish_reason"], "stop");
    assert_eq!(end.json()["tokens_out"], tokens.len());
}

#[tokio::test]
async fn stream_response_is_event_stream() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(task("t1")).await;
    let r = app.open_stream("/v1/tasks/t1/stream").await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    assert!(r.headers.get("x-correlation-id").is_some());
    r.collect().await;
}

#[tokio::test]
async fn late_and_concurrent_readers_see_the_same_whole_stream() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    e.wait_calls(1).await;
    // Two readers while it runs, one after it ended.
    let a = app.open_stream("/v1/tasks/t1/stream").await;
    let b = app.open_stream("/v1/tasks/t1/stream").await;
    e.open();
    let (a, b) = (a.collect().await, b.collect().await);
    let late = app.events("t1").await;
    let strip = |v: &[SseEvent]| -> Vec<(String, String)> {
        v.iter()
            .filter(|e| e.event != "metrics")
            .map(|e| (e.event.clone(), e.data.clone()))
            .collect()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(strip(&a), strip(&late));
    assert_eq!(names(&late), ["started", "token", "token", "token", "end"]);
}

#[tokio::test]
async fn engine_refusing_the_request_ends_the_stream_with_engine_error() {
    let app = TestApp::start(&one_pool()).await;
    app.engine("p1").fail_next(AdapterError::Engine {
        message: "model exploded".into(),
    });
    app.admit(task("t1")).await;
    let ev = app.events("t1").await;
    assert_eq!(names(&ev), ["started", "error"]);
    let err = ev.last().expect("an error event").json();
    assert_eq!(err["code"], "ENGINE_ERROR");
    assert_eq!(err["engine"], "llamacpp");
    assert_eq!(err["retriable"], false);
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.contains("model exploded")),
        "{err}"
    );
    let st = app.status("t1").await;
    assert_eq!(st["state"], "failed");
    assert_eq!(st["error"]["code"], "ENGINE_ERROR");
}

#[tokio::test]
async fn engine_error_mid_stream_follows_the_tokens_sent() {
    let app = TestApp::start(&one_pool()).await;
    app.engine("p1").fail_mid_stream(
        2,
        AdapterError::Engine {
            message: "CUDA error".into(),
        },
    );
    app.admit(with(task("t1"), json!({"max_tokens": 5}))).await;
    let ev = app.events("t1").await;
    assert_eq!(names(&ev), ["started", "token", "token", "error"]);
    assert_eq!(
        ev.last().expect("an error event").json()["code"],
        "ENGINE_ERROR"
    );
    assert_eq!(app.status("t1").await["tokens_out"], 2);
}

#[tokio::test]
async fn broken_engine_stream_is_worker_reset_and_retriable() {
    let app = TestApp::start(&one_pool()).await;
    app.engine("p1").fail_mid_stream(
        1,
        AdapterError::StreamBroken {
            message: "connection reset".into(),
        },
    );
    app.admit(task("t1")).await;
    let err = app.last_event("t1").await;
    assert_eq!(err.event, "error");
    let err = err.json();
    assert_eq!(err["code"], "WORKER_RESET");
    assert_eq!(err["retriable"], true);
    assert_eq!(err["retry_after_ms"], 1000);
}

#[tokio::test]
async fn engine_4xx_maps_to_invalid_params_and_429_to_pool_unavailable() {
    let app = TestApp::start(&one_pool()).await;
    let e = app.engine("p1");
    e.fail_next(AdapterError::Rejected {
        status: 400,
        message: "bad grammar".into(),
    });
    app.admit(task("t1")).await;
    let err = app.last_event("t1").await.json();
    assert_eq!(err["code"], "INVALID_PARAMS");
    e.fail_next(AdapterError::Rejected {
        status: 429,
        message: "busy".into(),
    });
    app.admit(task("t2")).await;
    let err = app.last_event("t2").await.json();
    assert_eq!(err["code"], "POOL_UNAVAILABLE");
    assert_eq!(err["retriable"], true);
}

#[tokio::test]
async fn engine_receives_prompt_and_sampling_parameters() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(with(
        task("t1"),
        json!({"prompt": "say hi", "max_tokens": 7, "seed": 42, "temperature": 0.5,
               "top_p": 0.9, "top_k": 40, "stop": ["\n"], "kv_hint": "cold"}),
    ))
    .await;
    app.events("t1").await;
    let reqs = app.engine("p1").requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.prompt, Prompt::Text("say hi".into()));
    assert_eq!(r.max_tokens, 7);
    assert_eq!(r.seed, Some(42));
    assert_eq!(r.temperature, Some(0.5));
    assert_eq!(r.top_p, Some(0.9));
    assert_eq!(r.top_k, Some(40));
    assert_eq!(r.stop, ["\n"]);
    assert_eq!(r.slot, None);
    assert!(!r.cache_prompt, "kv_hint cold turns prompt caching off");
}

#[tokio::test]
async fn chat_task_reaches_the_engine_as_messages() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(with(
        task("t1"),
        json!({"workload": "chat", "prompt": null, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there"}]}),
    ))
    .await;
    let end = app.last_event("t1").await;
    assert_eq!(end.event, "end");
    assert_eq!(end.json()["prompt_tokens"], 4);
    assert_eq!(
        app.engine("p1").prompts(),
        ["system:be brief|user:hello there"]
    );
}

#[tokio::test]
async fn status_moves_queued_running_completed() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await;
    let e = app.engine("p1");
    e.hold();
    app.admit(task("t1")).await;
    app.admit(task("t2")).await;
    e.wait_calls(1).await;
    let q = app.status("t2").await;
    assert_eq!(q["state"], "queued");
    assert_eq!(q["queue_position"], 0);
    assert!(
        q["started_ms"].is_null() && q["replica_id"].is_null(),
        "{q}"
    );
    let r = app.status("t1").await;
    assert_eq!(r["state"], "running");
    assert!(
        r["started_ms"].is_u64() && r["replica_id"].is_string(),
        "{r}"
    );
    assert!(r["queue_position"].is_null(), "{r}");
    e.open();
    let done = app.wait_state("t2", "completed").await;
    assert_eq!(done["tokens_out"], 3);
    assert!(
        done["finished_ms"].is_u64() && done["error"].is_null(),
        "{done}"
    );
    assert_eq!(done["stream"], "/v1/tasks/t2/stream");
    assert_eq!(done["priority"], "interactive");
    assert_eq!(done["model_ref"], "p1");
}

#[tokio::test]
async fn finished_task_leaves_a_transcript_artifact() {
    let app = TestApp::start(&one_pool()).await;
    app.admit(task("t1")).await;
    app.events("t1").await;
    let id = eventually("transcript linked", || async {
        app.status("t1").await["transcript_artifact"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    let a = app.get(&format!("/v1/artifacts/{id}")).await;
    a.expect_status(200);
    assert!(a.text.contains("llama-orch.transcript.v1"), "{}", a.text);
}
