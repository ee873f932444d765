//! The committed contracts (`contracts/openapi.json`, `contracts/config.schema.json`) must be
//! exactly what the code generates. Regenerate with `cargo xtask regen-contracts`
//! (which runs this test with `UPDATE_CONTRACTS=1`).

use serde_json::Value;

use crate::support::repo_root;

fn check(rel: &str, generated: String) {
    let path = repo_root().join(rel);
    if std::env::var_os("UPDATE_CONTRACTS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{rel} is out of date with the code; run `cargo xtask regen-contracts` and commit the result"
    );
}

#[test]
fn openapi_matches_committed() {
    check(
        "contracts/openapi.json",
        orchestratord::openapi::openapi_json(),
    );
}

#[test]
fn config_schema_matches_committed() {
    let mut s = serde_json::to_string_pretty(&orch_config::json_schema()).unwrap();
    s.push('\n');
    check("contracts/config.schema.json", s);
}

#[test]
fn openapi_documents_every_data_plane_route() {
    let doc = orchestratord::openapi::openapi_json();
    for p in [
        "/v1/tasks",
        "/v1/tasks/{id}",
        "/v1/tasks/{id}/stream",
        "/v1/tasks/{id}/cancel",
        "/health",
        "/metrics",
        "/v1/capabilities",
    ] {
        assert!(
            doc.contains(&format!("\"{p}\"")),
            "{p} missing from OpenAPI"
        );
    }
}

#[test]
fn openapi_has_unique_operation_ids_and_the_bearer_scheme() {
    let doc = orchestratord::openapi::document();
    let mut ids = std::collections::BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or("");
            assert!(
                ids.insert(id.to_owned()),
                "duplicate operationId `{id}` ({method} {path})"
            );
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path}: no 401"
            );
        }
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"], serde_json::json!([{"bearer": []}]));
    // Loopback callers read /health and /metrics without a token.
    for p in ["/health", "/metrics"] {
        assert_eq!(
            doc["paths"][p]["get"]["security"],
            serde_json::json!([{}, {"bearer": []}]),
            "{p}"
        );
    }
    let task = &doc["components"]["schemas"]["TaskRequest"]["properties"];
    assert_eq!(task["task_id"]["pattern"], "^[A-Za-z0-9._:-]{1,128}$");
    assert_eq!(task["max_tokens"]["minimum"], 1);
    assert_eq!(
        doc["paths"]["/v1/status"]["get"]["parameters"][0]["schema"]["maximum"],
        200
    );
}

#[test]
fn openapi_documents_the_state_endpoints_and_types() {
    let doc: Value = serde_json::from_str(&orchestratord::openapi::openapi_json()).unwrap();
    for (path, method) in [
        ("/v1/catalog/models", "post"),
        ("/v1/catalog/models", "get"),
        ("/v1/catalog/models/{id}", "get"),
        ("/v1/catalog/models/{id}", "delete"),
        ("/v1/catalog/models/{id}/verify", "post"),
        ("/v1/catalog/models/{id}/state", "post"),
        ("/v1/sessions/{id}", "get"),
        ("/v1/sessions/{id}", "delete"),
        ("/v1/artifacts", "post"),
        ("/v1/artifacts", "get"),
        ("/v1/artifacts/{id}", "get"),
        ("/v1/artifacts/{id}/raw", "get"),
    ] {
        assert!(
            doc["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for s in [
        "BudgetSpec",
        "BudgetRemaining",
        "SessionInfo",
        "SessionEvicted",
        "RegisterModelRequest",
        "CatalogModel",
        "CatalogList",
        "VerifyResponse",
        "SetModelStateRequest",
        "ArtifactCreate",
        "ArtifactMeta",
        "Artifact",
        "ArtifactList",
    ] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
    assert!(schemas["TaskRequest"]["properties"]["budget"].is_object());
    assert!(schemas["TaskStatus"]["properties"]["transcript_artifact"].is_object());
    let codes = schemas["ErrorCode"].to_string();
    for c in [
        "BUDGET_EXCEEDED",
        "SESSION_EXPIRED",
        "SESSION_TURNS_EXHAUSTED",
        "DIGEST_MISMATCH",
        "POLICY_DENIED",
        "PAYLOAD_TOO_LARGE",
        "CONFLICT",
    ] {
        assert!(codes.contains(c), "{c} missing from ErrorCode");
    }
}
