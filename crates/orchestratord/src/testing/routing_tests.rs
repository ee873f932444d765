//! Routing: `model_ref` by pool id, model file name or catalog id; the `engine`
//! filter; `placement`; 404 listing what is served; 503 when no serving pool is ready.

use super::*;

const QWEN: &str = "model: /models/qwen2.5-7b-q4.gguf";

fn two_pools_one_model() -> String {
    yaml(
        "",
        &[
            pool("p1", 1, &[QWEN]),
            pool("p2", 1, &["engine: vllm", QWEN]),
        ],
    )
}

async fn pool_of(app: &TestApp, body: Value) -> String {
    app.admit(body).await["pool_id"]
        .as_str()
        .expect("pool_id in the 202")
        .to_owned()
}

#[tokio::test]
async fn model_ref_names_a_pool_id() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[]), pool("p2", 1, &[])])).await;
    assert_eq!(
        pool_of(&app, with(task("a"), json!({"model_ref": "p2"}))).await,
        "p2"
    );
    assert_eq!(
        pool_of(&app, with(task("b"), json!({"model_ref": "p1"}))).await,
        "p1"
    );
}

#[tokio::test]
async fn model_ref_names_the_model_file_with_or_without_extension_or_its_path() {
    let app = TestApp::start(&yaml("", &[pool("p1", 4, &[]), pool("q", 4, &[QWEN])])).await;
    for (i, name) in [
        "qwen2.5-7b-q4",
        "qwen2.5-7b-q4.gguf",
        "/models/qwen2.5-7b-q4.gguf",
    ]
    .into_iter()
    .enumerate()
    {
        let id = format!("t{i}");
        assert_eq!(
            pool_of(&app, with(task(&id), json!({"model_ref": name}))).await,
            "q",
            "{name}"
        );
    }
}

#[tokio::test]
async fn engine_filter_picks_the_pool_running_that_engine() {
    let app = TestApp::start(&two_pools_one_model()).await;
    let m = "qwen2.5-7b-q4";
    assert_eq!(
        pool_of(
            &app,
            with(task("a"), json!({"model_ref": m, "engine": "vllm"}))
        )
        .await,
        "p2"
    );
    assert_eq!(
        pool_of(
            &app,
            with(task("b"), json!({"model_ref": m, "engine": "llamacpp"}))
        )
        .await,
        "p1"
    );
    app.submit(with(task("c"), json!({"model_ref": m, "engine": "tgi"})))
        .await
        .expect_error(
            404,
            "MODEL_NOT_FOUND",
            "no pool serves model `qwen2.5-7b-q4` on engine tgi",
        );
}

#[tokio::test]
async fn pin_pool_restricts_routing_to_that_pool() {
    let app = TestApp::start(&two_pools_one_model()).await;
    let m = "qwen2.5-7b-q4";
    for id in ["a", "b"] {
        assert_eq!(
            pool_of(
                &app,
                with(
                    task(id),
                    json!({"model_ref": m, "placement": {"pin_pool": "p2"}})
                )
            )
            .await,
            "p2"
        );
    }
    app.submit(with(
        task("c"),
        json!({"model_ref": m, "placement": {"pin_pool": "p9"}}),
    ))
    .await
    .expect_error(404, "MODEL_NOT_FOUND", "in pool p9");
}

#[tokio::test]
async fn least_loaded_pool_wins_and_prefer_device_without_such_gpu_changes_nothing() {
    let app = TestApp::start_with(
        &two_pools_one_model(),
        Options {
            engines: vec![("p1", FakeEngine::held()), ("p2", FakeEngine::held())],
            ..Options::default()
        },
    )
    .await;
    let m = json!({"model_ref": "qwen2.5-7b-q4", "placement": {"prefer_device": 0}});
    // Equal load: the lower pool id.
    assert_eq!(pool_of(&app, with(task("a"), m.clone())).await, "p1");
    app.engine("p1").wait_calls(1).await;
    // p1 is busy now.
    assert_eq!(pool_of(&app, with(task("b"), m.clone())).await, "p2");
    app.engine("p2").wait_calls(1).await;
    app.engine("p1").open();
    app.engine("p2").open();
}

#[tokio::test]
async fn unknown_model_is_404_listing_the_served_pools() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[]), pool("q", 1, &[QWEN])])).await;
    let r = app
        .submit(with(task("t1"), json!({"model_ref": "llama-70b"})))
        .await;
    r.expect_error(
        404,
        "MODEL_NOT_FOUND",
        "no pool serves model `llama-70b`; served: p1 (p1), q (qwen2.5-7b-q4)",
    );
    assert_eq!(r.body["retriable"], false);
}

#[tokio::test]
async fn unhealthy_engine_is_503_pool_unavailable_with_retry_headers() {
    let app = TestApp::start_with(
        &yaml("", &[pool("p1", 1, &[])]),
        Options {
            engines: vec![("p1", FakeEngine::unhealthy())],
            ..Options::default()
        },
    )
    .await;
    let r = app.submit(task("t1")).await;
    r.expect_error(
        503,
        "POOL_UNAVAILABLE",
        "no ready pool for `p1`: p1 not ready: engine at http://127.0.0.1:9 is unreachable: fake engine: health switched off; retry shortly",
    );
    assert_eq!(r.body["retriable"], true);
    assert_eq!(r.body["retry_after_ms"], 2000);
    assert_eq!(r.body["engine"], "llamacpp");
    assert_eq!(r.header("retry-after"), Some("2"));
    assert_eq!(r.header("x-backoff-ms"), Some("2000"));
    assert_eq!(app.engine("p1").requests().len(), 0);
}

#[tokio::test]
async fn unhealthy_pool_is_skipped_for_a_ready_one_serving_the_model() {
    let app = TestApp::start_with(
        &two_pools_one_model(),
        Options {
            engines: vec![("p1", FakeEngine::unhealthy())],
            ..Options::default()
        },
    )
    .await;
    assert_eq!(
        pool_of(&app, with(task("a"), json!({"model_ref": "qwen2.5-7b-q4"}))).await,
        "p2"
    );
}

#[tokio::test]
async fn pool_admits_once_its_engine_answers_health_checks() {
    let app = TestApp::start_with(
        &yaml("", &[pool("p1", 1, &[])]),
        Options {
            engines: vec![("p1", FakeEngine::unhealthy())],
            ..Options::default()
        },
    )
    .await;
    app.submit(task("t0")).await.expect_status(503);
    app.engine("p1").set_healthy(true);
    // The supervisor checks health about once a second.
    eventually("pool ready after health returns", || async {
        (app.get("/v1/pools/p1/health").await.body["ready"] == true).then_some(())
    })
    .await;
    app.admit(task("t1")).await;
    assert_eq!(app.last_event("t1").await.event, "end");
}

#[tokio::test]
async fn catalog_id_routes_to_the_pool_of_its_file_and_retired_is_409() {
    let app = TestApp::start(&yaml("", &[pool("p1", 1, &[]), pool("q", 1, &[QWEN])])).await;
    app.post(
        "/v1/catalog/models",
        json!({"id": "qwen-cat", "ref": "/models/qwen2.5-7b-q4.gguf"}),
    )
    .await
    .expect_status(201);
    assert_eq!(
        pool_of(&app, with(task("a"), json!({"model_ref": "qwen-cat"}))).await,
        "q"
    );
    app.post(
        "/v1/catalog/models/qwen-cat/state",
        json!({"state": "Retired"}),
    )
    .await
    .expect_status(200);
    app.submit(with(task("b"), json!({"model_ref": "qwen-cat"})))
        .await
        .expect_error(409, "MODEL_RETIRED", "catalog model `qwen-cat` is Retired");
}

/// The same model in a chat pool and an embedding pool: each request goes to the pool of its
/// kind; naming a pool of the other kind is refused with the pools that would take it.
#[tokio::test]
async fn requests_go_to_pools_of_their_kind() {
    let app = TestApp::start(&yaml(
        "",
        &[
            pool("chat", 1, &[QWEN]),
            pool("emb", 1, &[QWEN, "kind: embedding"]),
            pool("rr", 1, &[QWEN, "kind: rerank"]),
        ],
    ))
    .await;
    let embed = |id: &str, model: &str| {
        json!({"task_id": id, "model_ref": model, "priority": "batch", "max_tokens": 1,
            "workload": "embedding", "input": ["x"]})
    };
    assert_eq!(pool_of(&app, embed("e1", "qwen2.5-7b-q4")).await, "emb");
    assert_eq!(
        pool_of(
            &app,
            with(task("c1"), json!({"model_ref": "qwen2.5-7b-q4"}))
        )
        .await,
        "chat"
    );
    app.submit(embed("e2", "chat")).await.expect_error(
        400,
        "INVALID_PARAMS",
        "chat is `kind: chat`); embedding requests need a `kind: embedding` pool: use one of emb (",
    );
    app.submit(with(task("c2"), json!({"model_ref": "rr"})))
        .await
        .expect_error(
            400,
            "INVALID_PARAMS",
            "need a `kind: chat` pool: use one of chat (",
        );
    let r = app
        .post(
            "/v1/rerank",
            json!({"model": "emb", "query": "q", "documents": ["d"]}),
        )
        .await;
    r.expect_status(400);
    assert_eq!(r.body["error"]["code"], "invalid_params", "{}", r.text);
    assert!(
        r.text
            .contains("rerank requests need a `kind: rerank` pool: use one of rr ("),
        "{}",
        r.text
    );
}
