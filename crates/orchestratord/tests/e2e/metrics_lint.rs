//! `/metrics` of the real daemon, after real tasks, passes `promtool check metrics` with no
//! warning, and each exposition format is served under its own content type (negotiated by
//! `Accept`). promtool comes from Debian's `prometheus` package (`scripts/setup-deps.sh`).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use orch_harness::{engine, last_event, llama_pool, Daemon, DaemonOptions};
use serde_json::json;

use crate::support::bin;

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn promtool() -> Option<PathBuf> {
    let ok = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| PathBuf::from("promtool"))
}

/// `promtool check metrics` on `text`: its exit status and everything it printed.
fn check(promtool: &PathBuf, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_after_real_tasks() {
    let Some(promtool) = promtool() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing on CI; `bash scripts/setup-deps.sh` installs it (Debian package `prometheus`)"
        );
        eprintln!(
            "\n*** SKIPPED metrics_pass_promtool_after_real_tasks: promtool is not installed; \
             run `bash scripts/setup-deps.sh` (Debian package `prometheus`) ***\n"
        );
        return;
    };
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}",
        llama_pool("tiny", &e, 2, 1, 256)
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some("promtool-token".into()),
            ..DaemonOptions::default()
        },
    );
    // Tasks that fill every kind of series: completed (both priorities, a session), canceled,
    // rejected, and one through the OpenAI door.
    for (id, priority) in [("m-int", "interactive"), ("m-batch", "batch")] {
        let r = d
            .submit(
                &json!({"task_id": id, "session_id": "lint-s", "model_ref": "tiny",
                "priority": priority, "prompt": "Once upon a time", "max_tokens": 6, "seed": 1}),
            )
            .await;
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap_or_default());
        assert_eq!(last_event(&d.stream(id).await).event, "end");
    }
    let r = d
        .submit(
            &json!({"task_id": "m-cancel", "model_ref": "tiny", "priority": "batch",
            "prompt": "Once", "max_tokens": 200}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let (s, _) = d.post("/v1/tasks/m-cancel/cancel", &json!({})).await;
    assert_eq!(s, 202);
    let r = d
        .submit(&json!({"task_id": "bad id!", "model_ref": "tiny"}))
        .await;
    assert_eq!(r.status(), 400);
    let (s, body) = d
        .post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "Once", "max_tokens": 4}),
        )
        .await;
    assert_eq!(s, 200, "{body}");

    let url = format!("{}/metrics", d.base);
    // No Accept (curl, promtool's own examples): the Prometheus text format 0.0.4.
    let r = d.client().get(&url).send().await.expect("GET /metrics");
    assert_eq!(
        r.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await.expect("body");
    for series in [
        "# TYPE tasks_enqueued_total counter",
        "latency_first_token_seconds_count{",
        "latency_decode_seconds_count{",
        "tasks_canceled_total{",
        "tasks_rejected_total{",
    ] {
        assert!(text.contains(series), "missing `{series}` in\n{text}");
    }
    let (ok, printed) = check(&promtool, &text);
    assert!(
        ok && printed.trim().is_empty(),
        "promtool check metrics: {printed}\nexposition:\n{text}"
    );

    // Prometheus asks for OpenMetrics and gets it, under its own content type.
    let r = d
        .client()
        .get(&url)
        .header("accept", PROMETHEUS_ACCEPT)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = r.text().await.expect("body");
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE tasks_enqueued counter\n"), "{om}");
    assert!(om.contains("tasks_enqueued_total{"), "{om}");
}
