//! A daemon SIGKILLed in the middle of writes restarts with its catalog, budgets and artifacts intact.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use orch_harness::{engine, last_event, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::support::bin;

use super::*;

/// Every file under the artifact tree.
fn tree_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_writes_then_restart_keeps_catalog_budgets_and_artifacts() {
    let e = engine();
    let keep = tempfile::tempdir().unwrap();
    let data = keep.path().join("data");
    let opts = || DaemonOptions {
        data_dir: Some(data.clone()),
        ..DaemonOptions::default()
    };
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());

    let mut d1 = start_pool(&e, 2, "", opts());
    for body in [
        json!({"id": "tiny-cat", "ref": model, "digest": digest}),
        json!({"id": "tiny-old", "ref": model}),
    ] {
        let r = call(&d1, "POST", "/v1/catalog/models", Some(body)).await;
        assert_eq!(r.0, 201, "{}", r.1);
    }
    let r = call(
        &d1,
        "POST",
        "/v1/catalog/models/tiny-old/state",
        Some(json!({"state": "Retired"})),
    )
    .await;
    assert_eq!(r.0, 200);

    let sess = |id: &str, n: u32| {
        with(
            task(id, "tiny-cat", "Once upon a time", n),
            json!({"session_id": "dur-1"}),
        )
    };
    let (_, ev) = run(
        &d1,
        with(sess("d-1", 8), json!({"budget": {"tokens": 100000}})),
    )
    .await;
    assert_eq!(last_event(&ev).event, "end");
    let t1 = transcript_of(&d1, "d-1").await;
    let spent0 = d1.get("/v1/sessions/dur-1").await.1["spent"]["tokens"]
        .as_u64()
        .unwrap();
    assert!(spent0 > 0);

    // Artifacts stored before the burst.
    let stored: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    for i in 0..10 {
        let content = format!("before {i} {}", "b".repeat(i * 100));
        let (s, a, _) = call(
            &d1,
            "POST",
            "/v1/artifacts",
            Some(json!({"kind": "summary", "content": content})),
        )
        .await;
        assert_eq!(s, 201);
        stored
            .lock()
            .unwrap()
            .push((a["id"].as_str().unwrap().to_owned(), content));
    }

    // Burst: artifacts being written and session budgets being charged, then SIGKILL.
    let writer = {
        let (c, base, stored) = (d1.client(), d1.base.clone(), stored.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let content = format!("burst {i} {}", "x".repeat(20_000 + i));
                let r = c
                    .post(format!("{base}/v1/artifacts"))
                    .json(&json!({"kind": "trace", "content": content, "tags": ["burst"]}))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(v) = r.json::<Value>().await else {
                    break;
                };
                stored
                    .lock()
                    .unwrap()
                    .push((v["id"].as_str().unwrap().to_owned(), content));
            }
        })
    };
    let tasks = {
        let (c, base) = (d1.client(), d1.base.clone());
        tokio::spawn(async move {
            for i in 0.. {
                let mut body = with(
                    task(&format!("burst-{i}"), "tiny-cat", "Once upon a time", 16),
                    json!({"session_id": format!("burst-{}", i / 8)}),
                );
                if i % 8 == 0 {
                    body["budget"] = json!({"tokens": 1000, "time_ms": 3_600_000});
                }
                let Ok(r) = c.post(format!("{base}/v1/tasks")).json(&body).send().await else {
                    break;
                };
                if r.status() != 202 {
                    break;
                }
                let Ok(s) = c
                    .get(format!("{base}/v1/tasks/burst-{i}/stream"))
                    .send()
                    .await
                else {
                    break;
                };
                let _ = s.bytes().await;
            }
        })
    };
    // Kill once a burst task has been charged and artifacts are flowing, while more of both
    // are in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let charged = d1.get("/v1/sessions/burst-0").await.1["spent"]["tokens"]
            .as_u64()
            .unwrap_or(0)
            > 0;
        if charged && stored.lock().unwrap().len() > 15 {
            break;
        }
        assert!(Instant::now() < deadline, "the burst made no progress");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    d1.kill9();
    let _ = writer.await;
    let _ = tasks.await;
    let acked = stored.lock().unwrap().clone();
    assert!(acked.len() > 10, "the burst wrote nothing before the kill");

    // Restart on the same data dir; the pool names the catalog id as its model.
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n  - id: tiny\n    engine: llamacpp\n    model: tiny-cat\n    engine_binary: \"{}\"\n    slots: 2\n    ctx: 1024\n    startup_timeout_s: 60\n",
        e.llama_server.display()
    );
    let d2 = Daemon::start(&bin(), DaemonOptions { config, ..opts() });
    assert!(
        d2.logs().contains("pool model resolved from the catalog"),
        "{}",
        d2.logs()
    );

    // No temp file survives, and every file in the tree is a listed artifact.
    let files = tree_files(&data.join("artifacts"));
    assert!(
        files.iter().all(|f| !f
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".tmp-")),
        "{files:?}"
    );
    let (_, l, _) = call(&d2, "GET", "/v1/artifacts?limit=10000", None).await;
    let listed: Vec<String> = l["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    // Small contents live in their database rows (STATE.md): every file is a listed artifact.
    let file_ids: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let shard = f.parent()?.file_name()?.to_string_lossy().into_owned();
            Some(format!(
                "sha256:{shard}{}",
                f.file_name()?.to_string_lossy()
            ))
        })
        .collect();
    assert!(
        file_ids.iter().all(|f| listed.contains(f)),
        "files {file_ids:?} vs listed {listed:?}"
    );
    // Every listed artifact is whole.
    for id in &listed {
        let r = d2
            .client()
            .get(format!("{}/v1/artifacts/{id}/raw", d2.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{id}");
        assert_eq!(&sha256_hex(&r.bytes().await.unwrap()), id);
    }
    // Every acknowledged artifact is there with its content.
    for (id, content) in &acked {
        let (s, a, _) = call(&d2, "GET", &format!("/v1/artifacts/{id}"), None).await;
        assert_eq!(s, 200, "acknowledged artifact {id} lost");
        assert_eq!(a["content"].as_str().unwrap(), content);
    }
    let (s, _, _) = call(&d2, "GET", &format!("/v1/artifacts/{t1}"), None).await;
    assert_eq!(s, 200, "transcript lost");

    // Catalog intact; the pool named by catalog id serves; Retired stays Retired.
    let (_, c, _) = call(&d2, "GET", "/v1/catalog/models/tiny-cat", None).await;
    assert_eq!(c["state"], "Active");
    assert_eq!(c["digest"], digest);
    assert_eq!(c["served_by"], json!(["tiny"]));
    let (_, c, _) = call(&d2, "GET", "/v1/catalog/models/tiny-old", None).await;
    assert_eq!(c["state"], "Retired");
    let r = d2.submit(&task("after-1", "tiny-old", "x", 2)).await;
    assert_eq!(r.status(), 409);

    // Budgets survived: the idle session exactly, the ones charged during the kill consistently.
    let (s, v) = d2.get("/v1/sessions/burst-0").await;
    assert_eq!(s, 200, "{v}");
    let burst_spent = v["spent"]["tokens"].as_u64().unwrap();
    assert!(burst_spent > 0 && burst_spent <= 1000, "{v}");
    assert_eq!(
        v["budget_remaining"]["tokens"].as_u64().unwrap() + burst_spent,
        1000
    );
    assert_eq!(v["budget"]["time_ms"], 3_600_000);
    let (s, v) = d2.get("/v1/sessions/dur-1").await;
    assert_eq!(s, 200, "{v}");
    let spent = v["spent"]["tokens"].as_u64().unwrap();
    assert_eq!(spent, spent0, "{v}");
    assert_eq!(v["budget"]["tokens"], 100000);
    assert_eq!(
        v["budget_remaining"]["tokens"].as_u64().unwrap() + spent,
        100000
    );
    let (h, ev) = run(&d2, sess("after-2", 4)).await;
    assert_eq!(last_event(&ev).event, "end");
    assert_eq!(
        h["x-budget-tokens-remaining"],
        (100000 - spent).to_string().as_str()
    );
    let (_, v) = d2.get("/v1/sessions/dur-1").await;
    let spent2 = v["spent"]["tokens"].as_u64().unwrap();
    assert!(spent2 > spent, "{v}");

    // The documented online backup (docs/STATE.md), taken while d2 runs, restores on its own.
    let backup = keep.path().join("backup");
    std::fs::create_dir_all(&backup).unwrap();
    let sh = |cmd: &mut std::process::Command| assert!(cmd.status().unwrap().success(), "{cmd:?}");
    sh(std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys; sqlite3.connect(sys.argv[1]).backup(sqlite3.connect(sys.argv[2]))",
        ])
        .arg(data.join("state.db"))
        .arg(backup.join("state.db")));
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("artifacts"))
        .arg(&backup));
    sh(std::process::Command::new("cp")
        .arg("-a")
        .arg(data.join("audit.jsonl"))
        .arg(&backup));
    let d3 = start_bare(
        "",
        DaemonOptions {
            data_dir: Some(backup.clone()),
            ..DaemonOptions::default()
        },
    );
    let (_, c, _) = call(&d3, "GET", "/v1/catalog/models", None).await;
    assert_eq!(c["models"].as_array().unwrap().len(), 2, "{c}");
    for (id, content) in &acked {
        let (s, a, _) = call(&d3, "GET", &format!("/v1/artifacts/{id}"), None).await;
        assert_eq!(s, 200, "{id} missing from the backup");
        assert_eq!(a["content"].as_str().unwrap(), content);
    }
    let (_, v) = d3.get("/v1/sessions/dur-1").await;
    assert_eq!(v["spent"]["tokens"].as_u64(), Some(spent2), "{v}");
}
