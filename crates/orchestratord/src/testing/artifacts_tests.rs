//! Artifacts with JSON content (stored as canonical JSON), and the request bounds the OpenAPI
//! document states (docs/RELIABILITY.md, schema fuzzing).

use axum::body::Body;
use axum::http::Request;

use super::*;

async fn app() -> TestApp {
    TestApp::start(&yaml("", &[pool("p1", 1, &[])])).await
}

/// `POST path` with `body` sent as these exact bytes.
async fn post_text(app: &TestApp, path: &str, body: &str) -> Resp {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .expect("request");
    app.send(req).await
}

#[tokio::test]
async fn the_same_json_value_gets_the_same_id_and_reads_back_as_json() {
    let app = app().await;
    let a = post_text(
        &app,
        "/v1/artifacts",
        r#"{"kind": "plan", "content": {"steps": [{"b": 2, "a": 1}], "goal": "ship", "n": 1.5}}"#,
    )
    .await;
    a.expect_status(201);
    let b = post_text(
        &app,
        "/v1/artifacts",
        "{\"kind\":\"plan\",\"content\":{ \"n\" : 1.5,\n \"goal\":\"ship\",\"steps\":[{\"a\":1,\"b\":2}] }}",
    )
    .await;
    b.expect_status(201);
    let id = a.body["id"].as_str().expect("id").to_owned();
    assert_eq!(
        b.body["id"],
        id.as_str(),
        "key order and whitespace do not matter"
    );
    let canonical = r#"{"goal":"ship","n":1.5,"steps":[{"a":1,"b":2}]}"#;
    assert_eq!(id, orch_store::sha256_digest(canonical.as_bytes()));
    assert_eq!(a.body["size"], canonical.len());

    let got = app.get(&format!("/v1/artifacts/{id}")).await;
    got.expect_status(200);
    assert_eq!(got.body["encoding"], "json");
    assert_eq!(
        got.body["content"],
        json!({"goal": "ship", "n": 1.5, "steps": [{"a": 1, "b": 2}]})
    );
    let raw = app.get(&format!("/v1/artifacts/{id}/raw")).await;
    raw.expect_status(200);
    assert_eq!(raw.header("content-type"), Some("application/json"));
    assert_eq!(raw.text, canonical);

    // Arrays, numbers, null: any JSON value; a string stays text unless `encoding: json`.
    for (content, encoding, stored) in [
        (json!([3, "x", null]), None, "[3,\"x\",null]"),
        (json!(null), None, "null"),
        (json!("plain text"), None, "plain text"),
        (json!("quoted"), Some("json"), "\"quoted\""),
    ] {
        let mut body = json!({"kind": "other", "content": content});
        if let Some(e) = encoding {
            body["encoding"] = json!(e);
        }
        let r = app.post("/v1/artifacts", body).await;
        r.expect_status(201);
        assert_eq!(
            r.body["id"],
            orch_store::sha256_digest(stored.as_bytes()),
            "{stored}"
        );
    }
    let r = app
        .post(
            "/v1/artifacts",
            json!({"kind": "other", "content": {"a": 1}, "encoding": "base64"}),
        )
        .await;
    r.expect_error(400, "INVALID_PARAMS", "needs a string `content`");
}

#[tokio::test]
async fn artifact_bodies_take_null_metadata_and_refuse_arrays() {
    let app = app().await;
    let r = app
        .post(
            "/v1/artifacts",
            json!({"kind": "diff", "content": "x", "metadata": null, "parent": null}),
        )
        .await;
    r.expect_status(201);
    assert_eq!(r.body["metadata"], json!({}));
    post_text(&app, "/v1/artifacts", r#"["diff", "x"]"#)
        .await
        .expect_error(400, "INVALID_PARAMS", "must be a JSON object");
    app.get("/v1/artifacts?limit=10001")
        .await
        .expect_error(400, "INVALID_PARAMS", "at most 10000");
    app.get("/v1/artifacts?limit=10000")
        .await
        .expect_status(200);
    app.get("/v1/artifacts?kind=PLAN").await.expect_error(
        400,
        "INVALID_PARAMS",
        "kind must be one of",
    );
}

#[tokio::test]
async fn bounds_in_the_document_are_enforced() {
    let app = app().await;
    app.get("/v1/status?recent=201")
        .await
        .expect_error(400, "INVALID_PARAMS", "at most 200");
    app.get("/v1/status?recent=200").await.expect_status(200);
    // A body that is a JSON array is not read as a struct.
    post_text(&app, "/v1/pools/p1/reload", "[null, null]")
        .await
        .expect_error(400, "INVALID_PARAMS", "must be a JSON object");
    app.post("/v1/pools/p1/reload", json!({"grace_ms": 86_400_001u64}))
        .await
        .expect_error(400, "INVALID_PARAMS", "grace_ms 86400001 is too large");
    for (patch, msg) in [
        (
            json!({"temperature": 100.5}),
            "temperature must be a number from 0 to 100",
        ),
        (json!({"top_p": 1.5}), "top_p must be a number from 0 to 1"),
        (
            json!({"seed": 9_223_372_036_854_775_808u64}),
            "seed must be at most",
        ),
    ] {
        app.submit(with(task("b1"), patch))
            .await
            .expect_error(400, "INVALID_PARAMS", msg);
    }
    // Whole numbers written as floats are integers (JSON Schema says so; Python sends them).
    app.submit(with(task("f1"), json!({"max_tokens": 4.0, "seed": 7.0})))
        .await
        .expect_status(202);
}
