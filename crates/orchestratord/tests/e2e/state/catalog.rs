//! The model catalog: register, verify, state changes (active, retired), delete, and its bad inputs.

use orch_harness::{engine, last_event, DaemonOptions};
use serde_json::{json, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_crud_state_flows_and_bad_inputs() {
    let e = engine();
    let d = start_pool(&e, 2, "", DaemonOptions::default());
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());

    let reg = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v1", "ref": model, "digest": digest})),
    )
    .await;
    assert_eq!(reg.0, 201, "{}", reg.1);
    assert_eq!(reg.1["state"], "Active");
    assert_eq!(reg.1["digest"], digest);
    assert_eq!(reg.1["served_by"], json!(["tiny"]));
    assert_eq!(reg.2["location"], "/v1/catalog/models/tiny-v1");

    // Bad inputs: every one a 4xx envelope.
    let dup = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v1", "ref": model})),
    )
    .await;
    assert_err(&dup, 409, "CONFLICT");
    for body in [
        json!({"id": "bad/id", "ref": model}),
        json!({"id": "", "ref": model}),
        json!({"id": "rel", "ref": "models/x.gguf"}),
        json!({"id": "dg", "ref": model, "digest": "sha256:xyz"}),
        json!({"id": "unk", "ref": model, "colour": "red"}),
        json!({"id": "ftp", "ref": "ftp://host/x.gguf"}),
        json!({"ref": model}),
        json!({"id": "sig", "ref": model, "signature": "   "}),
    ] {
        let r = call(&d, "POST", "/v1/catalog/models", Some(body.clone())).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }
    let big_sbom = "x".repeat((1 << 20) + 1);
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "big", "ref": model, "sbom": big_sbom})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");

    // Read back.
    let (s, one, _) = call(&d, "GET", "/v1/catalog/models/tiny-v1", None).await;
    assert_eq!(s, 200);
    assert_eq!(one["ref"], model);
    let (s, all, _) = call(&d, "GET", "/v1/catalog/models", None).await;
    assert_eq!(s, 200);
    assert_eq!(all["models"].as_array().unwrap().len(), 1, "{all}");
    for (m, p) in [
        ("GET", "/v1/catalog/models/nope"),
        ("DELETE", "/v1/catalog/models/nope"),
        ("POST", "/v1/catalog/models/nope/verify"),
    ] {
        assert_err(&call(&d, m, p, None).await, 404, "NOT_FOUND");
    }
    assert_err(
        &call(
            &d,
            "POST",
            "/v1/catalog/models/nope/state",
            Some(json!({"state": "Retired"})),
        )
        .await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/bad%20id", None).await,
        400,
        "INVALID_PARAMS",
    );

    // Verify: the right digest passes with warnings for the missing signature and SBOM.
    let (s, v, _) = call(&d, "POST", "/v1/catalog/models/tiny-v1/verify", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["computed_digest"], digest);
    let warnings = v["warnings"].to_string();
    assert!(
        warnings.contains("signature") && warnings.contains("SBOM"),
        "{v}"
    );

    // A wrong digest is 409 DIGEST_MISMATCH and remembered as a failed verification.
    let zeros = format!("sha256:{}", "0".repeat(64));
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-bad", "ref": model, "digest": zeros})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let r = call(&d, "POST", "/v1/catalog/models/tiny-bad/verify", None).await;
    assert_err(&r, 409, "DIGEST_MISMATCH");
    assert!(
        r.1["message"].as_str().unwrap().contains(&digest),
        "{}",
        r.1
    );
    let (_, v, _) = call(&d, "GET", "/v1/catalog/models/tiny-bad", None).await;
    assert_eq!(v["last_verified"]["ok"], false, "{v}");
    // A missing file is 404; a URL cannot be verified locally (400).
    call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "gone", "ref": "/nonexistent/llama-orch/none.gguf"})),
    )
    .await;
    assert_err(
        &call(&d, "POST", "/v1/catalog/models/gone/verify", None).await,
        404,
        "NOT_FOUND",
    );
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "remote", "ref": "https://models.example.org/x.gguf"})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    assert_err(
        &call(&d, "POST", "/v1/catalog/models/remote/verify", None).await,
        409,
        "CONFLICT",
    );

    // Bad states.
    for body in [
        json!({"state": "Deprecated"}),
        json!({"state": "retired"}),
        json!({}),
    ] {
        let r = call(&d, "POST", "/v1/catalog/models/tiny-v1/state", Some(body)).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }

    // A task naming the catalog id routes to the pool serving its file.
    let (_, ev) = run(&d, task("cat-1", "tiny-v1", "Once upon a time", 4)).await;
    assert_eq!(last_event(&ev).event, "end", "{ev:?}");

    // Retire it: 409 MODEL_RETIRED naming the Active alternative.
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models/tiny-v1/state",
        Some(json!({"state": "Retired"})),
    )
    .await;
    assert_eq!(r.0, 200, "{}", r.1);
    assert_eq!(r.1["state"], "Retired");
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-v2", "ref": model})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);
    let r = d
        .submit(&task("cat-2", "tiny-v1", "Once upon a time", 4))
        .await;
    assert_eq!(r.status(), 409);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["code"], "MODEL_RETIRED", "{v}");
    assert!(v["message"].as_str().unwrap().contains("`tiny-v2`"), "{v}");
    let m = d.metrics_text().await;
    assert!(
        m.contains("model_state{model_id=\"tiny-v1\",state=\"Retired\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("model_state{model_id=\"tiny-v1\",state=\"Active\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("model_state{model_id=\"tiny-v2\",state=\"Active\"} 1"),
        "{m}"
    );

    // Active again: admitted.
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models/tiny-v1/state",
        Some(json!({"state": "Active"})),
    )
    .await;
    assert_eq!(r.0, 200);
    let (_, ev) = run(&d, task("cat-3", "tiny-v1", "Once upon a time", 4)).await;
    assert_eq!(last_event(&ev).event, "end");

    // Delete.
    let r = call(&d, "DELETE", "/v1/catalog/models/tiny-bad", None).await;
    assert_eq!(r.0, 204);
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/tiny-bad", None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "DELETE", "/v1/catalog/models/tiny-bad", None).await,
        404,
        "NOT_FOUND",
    );
    assert!(!d.metrics_text().await.contains("tiny-bad"));
}
