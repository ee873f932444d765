//! The status page in Debian's headless Chromium, driven by playwright-core
//! (test-harness/web/status_page.mjs): the page asks for the token, shows a running task, its
//! cancel button cancels it. Saves a screenshot (to docs/status-page.png with `UPDATE_SCREENSHOT=1`). Needs `bash test-harness/web/setup.sh`
//! (chromium from apt, playwright-core from npm); without it this test fails with that command.

use std::path::{Path, PathBuf};
use std::process::Command;

use orch_harness::{engine, llama_pool, Daemon, DaemonOptions};
use serde_json::{json, Value};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_in_chromium() {
    let web = repo_root().join("test-harness/web");
    let chromium = Path::new("/usr/bin/chromium");
    assert!(
        chromium.is_file()
            && web
                .join("node_modules/playwright-core/package.json")
                .is_file(),
        "Chromium or playwright-core is missing: run `bash test-harness/web/setup.sh` first"
    );
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}",
        llama_pool("tiny", &e, 1, 1, 32768)
    );
    let token = "web-test-token";
    let d = Daemon::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_orchestratord")),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    );
    // A little history, one long running task (interactive) and one waiting (batch).
    for (i, n) in [(1, 24), (2, 40)] {
        let id = format!("story-{i}");
        let r = d
            .submit(
                &json!({"task_id": id, "model_ref": "tiny", "priority": "interactive",
                "prompt": "Once upon a time", "max_tokens": n, "seed": i}),
            )
            .await;
        assert_eq!(r.status(), 202);
        d.wait_state(&id, "completed").await;
    }
    let long = |id: &str, prio: &str| {
        json!({"task_id": id, "model_ref": "tiny", "priority": prio,
            "prompt": "Once upon a time", "max_tokens": 20000, "seed": 3})
    };
    assert_eq!(
        d.submit(&long("long-interactive", "interactive"))
            .await
            .status(),
        202
    );
    d.wait_state("long-interactive", "running").await;
    assert_eq!(
        d.submit(&long("nightly-batch", "batch")).await.status(),
        202
    );

    // The README's screenshot is only rewritten on request, so a test run leaves the tree clean.
    let shot = if std::env::var_os("UPDATE_SCREENSHOT").is_some() {
        repo_root().join("docs/status-page.png")
    } else {
        std::env::temp_dir().join(format!("llorch-status-page-{}.png", std::process::id()))
    };
    let out = tokio::task::spawn_blocking({
        let base = d.base.clone();
        let shot = shot.clone();
        move || {
            Command::new("node")
                .arg("status_page.mjs")
                .current_dir(&web)
                .env("LLORCH_URL", base)
                .env("LLORCH_TOKEN", token)
                .env("TASK_ID", "long-interactive")
                .env("SCREENSHOT", &shot)
                .output()
                .expect("run node (install Node.js 18+)")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "--- node stdout:\n{stdout}\n--- node stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the browser test failed; daemon log:\n{}",
        d.logs()
    );
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["final_state"], "canceled");
    assert_eq!(v["cancel_buttons_after"], 0);
    // The click really went through the API.
    let t = d.wait_state("long-interactive", "canceled").await;
    assert_eq!(t["error"]["code"], "CANCELED");
    assert!(shot.is_file());
    let (s, _) = d.post("/v1/tasks/nightly-batch/cancel", &json!({})).await;
    assert_eq!(s, 202);
}
