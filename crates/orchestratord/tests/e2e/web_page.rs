//! The status page in Debian's headless Chromium, driven by playwright-core
//! (test-harness/web/status_page.mjs): the page asks for the token, shows a running task, draws
//! its charts (tokens/s and queue over time, VRAM per card by pool, the waiting tasks'
//! predicted starts), its cancel button cancels it. Saves a screenshot (to docs/status-page.png with `UPDATE_SCREENSHOT=1`). Needs `bash test-harness/web/setup.sh`
//! (chromium from apt, playwright-core from npm); without it this test fails with that command.

use std::path::Path;
use std::process::Command;

use orch_harness::{engine, llama_pool, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::support::{bin, repo_root};

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
    // Two injected cards (placement is real, the engines run on the CPU), a pool on each.
    let config = format!(
        "dev: {{ allow_cpu_inference: true, fake_gpus: \"24GiB:RTX 3090,12GiB:RTX 3060\" }}\nshutdown_grace_s: 2\npools:\n{}    devices: [0]\n{}    devices: [1]\n",
        llama_pool("tiny", &e, 1, 1, 32768),
        llama_pool("helper", &e, 1, 1, 8192)
    );
    let token = "web-test-token";
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    );
    // A little history on both pools, then one long running task (interactive) and two
    // waiting (batch).
    for (i, pool, n) in [(1, "tiny", 24), (2, "helper", 64), (3, "tiny", 40)] {
        let id = format!("story-{i}");
        let r = d
            .submit(
                &json!({"task_id": id, "model_ref": pool, "priority": "interactive",
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
    for id in ["nightly-batch", "report-batch"] {
        assert_eq!(d.submit(&long(id, "batch")).await.status(), 202);
    }

    // What the charts are drawn from: each card's VRAM by pool (placement's reservations on
    // injected cards), the waiting tasks with their predicted starts, the sampled history.
    let t0 = std::time::Instant::now();
    let s = loop {
        let (code, s) = d.get("/v1/status").await;
        assert_eq!(code, 200, "{s}");
        let waiting: Vec<&str> = s["waiting"]
            .as_array()
            .map(|w| w.iter().filter_map(|t| t["task_id"].as_str()).collect())
            .unwrap_or_default();
        if waiting == ["nightly-batch", "report-batch"]
            && s["waiting"][1]["predicted_start_ms"].as_u64().is_some()
            && s["history"].as_array().is_some_and(|h| h.len() >= 2)
        {
            break s;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "no waiting tasks with predictions and history in /v1/status after {:?}: {s}",
            t0.elapsed()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let w = &s["waiting"];
    assert!(
        w[0]["predicted_start_ms"].as_u64() <= w[1]["predicted_start_ms"].as_u64(),
        "{w}"
    );
    assert_eq!(w[0]["queue_position"], 0, "{w}");
    for (gpu, pool) in [(0, "tiny"), (1, "helper")] {
        let uses = &s["gpus"][gpu]["pools"];
        assert_eq!(uses[0]["pool_id"], pool, "{uses}");
        assert_eq!(uses[0]["source"], "reserved", "{uses}");
        assert!(uses[0]["vram_bytes"].as_u64().unwrap_or(0) > 0, "{uses}");
    }
    let h = s["history"].as_array().cloned().unwrap_or_default();
    assert!(
        h.iter()
            .any(|x| x["tokens_per_s"].as_f64().unwrap_or(0.0) > 0.0),
        "no tokens in the history: {h:?}"
    );
    assert!(
        h.iter()
            .all(|x| x["pools"].as_array().map(Vec::len) == Some(2)),
        "{h:?}"
    );

    // The README's screenshot is only rewritten on request, so a test run leaves the tree clean.
    let update = std::env::var_os("UPDATE_SCREENSHOT").is_some();
    let shot = if update {
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
                .env("WAITING_ID", "nightly-batch")
                // For the README: charts with half a minute of history.
                .env("MIN_HISTORY_S", if update { "30" } else { "0" })
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
    assert!(
        v["charts"]["tokens_points"].as_u64().unwrap_or(0) >= 2,
        "{v}"
    );
    assert!(
        v["charts"]["queue_points"].as_u64().unwrap_or(0) >= 6,
        "{v}"
    );
    assert!(
        v["charts"]["tokens_max"].as_f64().unwrap_or(0.0) > 0.0,
        "{v}"
    );
    assert_eq!(v["charts"]["vram_pools"], json!(["tiny", "helper"]), "{v}");
    assert!(
        v["charts"]["waiting_eta"]
            .as_str()
            .is_some_and(|s| s.contains("in ~") || s.contains("next")),
        "{v}"
    );
    // The click really went through the API.
    let t = d.wait_state("long-interactive", "canceled").await;
    assert_eq!(t["error"]["code"], "CANCELED");
    assert!(shot.is_file());
    for id in ["nightly-batch", "report-batch"] {
        let (s, _) = d.post(&format!("/v1/tasks/{id}/cancel"), &json!({})).await;
        assert_eq!(s, 202, "{id}");
    }
}
