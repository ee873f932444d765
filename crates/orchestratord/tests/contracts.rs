//! The committed contracts (`contracts/openapi.json`, `contracts/config.schema.json`) must be
//! exactly what the code generates. Regenerate with `cargo xtask regen-contracts`
//! (which runs this test with `UPDATE_CONTRACTS=1`).

use std::path::PathBuf;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

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
