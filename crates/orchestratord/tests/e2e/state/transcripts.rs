//! Transcripts: every finished task leaves one, linked from its status.

use orch_harness::{engine, last_event, DaemonOptions};
use serde_json::{json, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_finished_task_leaves_a_linked_transcript() {
    let e = engine();
    let d = start_pool(&e, 1, "", DaemonOptions::default());
    let model = e.model.display().to_string();
    let digest = sha256_hex(&std::fs::read(&e.model).unwrap());
    let r = call(
        &d,
        "POST",
        "/v1/catalog/models",
        Some(json!({"id": "tiny-cat", "ref": model, "digest": digest})),
    )
    .await;
    assert_eq!(r.0, 201, "{}", r.1);

    // Completed, with a secret in the prompt.
    let body = task(
        "tr-ok",
        "tiny-cat",
        "notes: api_key=sk-SECRET-4242 Once upon a time",
        6,
    );
    let (_, events) = run(&d, body).await;
    assert_eq!(last_event(&events).event, "end");
    let aid = transcript_of(&d, "tr-ok").await;
    let (s, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["kind"], "transcript");
    assert!(
        a["tags"].as_array().unwrap().contains(&json!("task:tr-ok")),
        "{a}"
    );
    let content = a["content"].as_str().unwrap();
    assert!(
        !content.contains("sk-SECRET-4242"),
        "secret leaked into the transcript"
    );
    let t: Value = serde_json::from_str(content).unwrap();
    assert_eq!(t["task_id"], "tr-ok");
    assert_eq!(t["state"], "completed");
    assert_eq!(t["engine"], "llamacpp");
    assert!(
        t["engine_version"]
            .as_str()
            .is_some_and(|v| !v.is_empty() && v != "unknown"),
        "{t}"
    );
    assert_eq!(t["model"]["digest"], digest);
    assert_eq!(t["model"]["catalog_id"], "tiny-cat");
    assert_eq!(t["model"]["path"], model);
    assert_eq!(t["seed"], 7);
    let end = events.last().unwrap().json();
    assert_eq!(t["tokens_out"], end["tokens_out"]);
    assert_eq!(t["decode_ms"], end["decode_ms"]);
    assert!(
        t["request"]["prompt"]
            .as_str()
            .unwrap()
            .contains("[REDACTED]"),
        "{}",
        t["request"]
    );
    // The transcript holds the stream exactly as a client saw it.
    let recorded: Vec<(String, Value)> = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["event"].as_str().unwrap().to_owned(), e["data"].clone()))
        .collect();
    let seen: Vec<(String, Value)> = events.iter().map(|e| (e.event.clone(), e.json())).collect();
    assert_eq!(recorded, seen);

    // Failed: a prompt longer than the slot's context is refused by the engine.
    let long = "lighthouse ".repeat(2000);
    let r = d.submit(&task("tr-fail", "tiny", &long, 4)).await;
    assert_eq!(r.status(), 202);
    let ev = d.stream("tr-fail").await;
    assert_eq!(last_event(&ev).event, "error", "{ev:?}");
    let aid = transcript_of(&d, "tr-fail").await;
    let (_, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    let t: Value = serde_json::from_str(a["content"].as_str().unwrap()).unwrap();
    assert_eq!(t["state"], "failed", "{t}");
    assert!(t["error"]["code"].is_string(), "{t}");
    assert_eq!(
        t["events"].as_array().unwrap().last().unwrap()["event"],
        "error"
    );

    // Canceled while queued behind a long task (one slot).
    let r = d
        .submit(&task("tr-long", "tiny", "Once upon a time", 800))
        .await;
    assert_eq!(r.status(), 202);
    let r = d
        .submit(&task("tr-cancel", "tiny", "Once upon a time", 4))
        .await;
    assert_eq!(r.status(), 202);
    let (s, v) = d.post("/v1/tasks/tr-cancel/cancel", &json!({})).await;
    assert_eq!(s, 202, "{v}");
    let aid = transcript_of(&d, "tr-cancel").await;
    let (_, a, _) = call(&d, "GET", &format!("/v1/artifacts/{aid}"), None).await;
    let t: Value = serde_json::from_str(a["content"].as_str().unwrap()).unwrap();
    assert_eq!(t["state"], "canceled", "{t}");
    assert_eq!(t["error"]["code"], "CANCELED");

    // Listing transcripts by tag.
    let (_, l, _) = call(
        &d,
        "GET",
        "/v1/artifacts?kind=transcript&tag=state:canceled",
        None,
    )
    .await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 1, "{l}");
}
