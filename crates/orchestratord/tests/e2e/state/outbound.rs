//! The outbound policy: allowed and denied URLs, audited with secrets redacted, engine endpoints off loopback at startup.

use std::path::Path;

use orch_harness::DaemonOptions;
use serde_json::{json, Value};

use crate::support::bin;

use super::*;

fn audit_lines(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_policy_allows_denies_and_audits_with_secrets_redacted() {
    let d = start_bare(
        "policy: { outbound: { allow: [\"*.models.example.org\"], deny: [\"evil.models.example.org\"] } }\n",
        DaemonOptions::default(),
    );
    let reg = |id: &str, url: &str| json!({"id": id, "ref": url});
    let ok = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg(
            "m-ok",
            "https://cdn.models.example.org/m.gguf?api_key=SECRET-111",
        )),
    )
    .await;
    assert_eq!(ok.0, 201, "{}", ok.1);
    assert!(!ok.1.to_string().contains("SECRET-111"), "{}", ok.1);
    let denied = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg(
            "m-evil",
            "https://evil.models.example.org/m.gguf?token=SECRET-222",
        )),
    )
    .await;
    assert_err(&denied, 403, "POLICY_DENIED");
    assert!(!denied.1.to_string().contains("SECRET-222"));
    let other = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg("m-other", "http://other.example.net/m.gguf")),
    )
    .await;
    assert_err(&other, 403, "POLICY_DENIED");
    assert_err(
        &call(&d, "GET", "/v1/catalog/models/m-evil", None).await,
        404,
        "NOT_FOUND",
    );
    // Local paths are not outbound: no decision, no audit line.
    let local = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(reg("m-local", "/models/local.gguf")),
    )
    .await;
    assert_eq!(local.0, 201);

    let lines = audit_lines(&d.data_dir);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let summary: Vec<(String, bool, String)> = lines
        .iter()
        .map(|l| {
            (
                l["action"].as_str().unwrap().to_owned(),
                l["allowed"].as_bool().unwrap(),
                l["rule"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "model_download".into(),
                true,
                "allow:*.models.example.org".into()
            ),
            (
                "model_download".into(),
                false,
                "deny:evil.models.example.org".into()
            ),
            ("model_download".into(), false, "default_deny".into()),
        ]
    );
    let raw = std::fs::read_to_string(d.data_dir.join("audit.jsonl")).unwrap();
    assert!(
        !raw.contains("SECRET-111") && !raw.contains("SECRET-222"),
        "{raw}"
    );
    assert!(!d.logs().contains("SECRET-111") && !d.logs().contains("SECRET-222"));

    // no_downloads refuses every model URL.
    let d2 = start_bare(
        "policy: { outbound: { no_downloads: true } }\n",
        DaemonOptions::default(),
    );
    let r = call(
        &d2,
        "POST",
        "/v1/catalog/models",
        Some(reg("m", "https://cdn.models.example.org/m.gguf")),
    )
    .await;
    assert_err(&r, 403, "POLICY_DENIED");
    assert_eq!(audit_lines(&d2.data_dir)[0]["rule"], "no_downloads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_endpoints_off_loopback_pass_the_policy_at_startup() {
    // Denied: the daemon refuses to start, naming the pool and the rule, and audits it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\npolicy: {{ outbound: {{ deny: [\"10.255.255.*\"] }} }}\npools:\n  - id: lan\n    engine: llamacpp\n    endpoint: http://10.255.255.1:9/\n",
            data.display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin())
            .arg("--config")
            .arg(&cfg)
            .env_remove("AUTH_TOKEN")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_CONFIG")
            .env_remove("LLORCH_MODEL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pool `lan`") && err.contains("deny pattern '10.255.255.*'"),
        "{err}"
    );
    let lines = audit_lines(&data);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["action"], "engine_endpoint");
    assert_eq!(lines[0]["allowed"], false);

    // Allowed (default policy): it starts, and the decision is audited.
    let d = start_bare(
        "pools:\n  - id: lan\n    engine: llamacpp\n    endpoint: http://10.255.255.1:9/\n",
        DaemonOptions {
            no_wait_ready: true,
            ..DaemonOptions::default()
        },
    );
    let lines = audit_lines(&d.data_dir);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["action"], "engine_endpoint");
    assert_eq!(lines[0]["allowed"], true);
    assert_eq!(lines[0]["url"], "http://10.255.255.1:9/");
}
