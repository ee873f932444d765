//! Embeddings and rerank through the one queue (SPEC §14), end to end: the real daemon, real
//! llama-server engines started with `--embeddings --pooling mean` and `--reranking` on the real
//! instruct model (SmolLM2-135M), the official `openai` Python SDK for `/v1/embeddings`
//! (test-harness/openai-sdk/test_embeddings.py; venv from `bash test-harness/openai-sdk/setup.sh`)
//! and plain HTTP for `/v1/rerank` (it has no official SDK).
//!
//! SmolLM2 has no classification head: llama.cpp's rank pooling then scores a pair with the
//! first component of the last token's hidden state. The scores prove the protocol through a
//! real llama-server, not ranking quality.
//!
//! One daemon for every check: a chat pool (`on_demand`, never loaded: the refusals happen at
//! routing), an `on_demand` embedding pool that the first request loads, a rerank pool.

use std::process::Command;
use std::time::Instant;

use orch_harness::{chat_model, engine, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::support::{bin, cache_dir, repo_root};

fn pool(id: &str, model: &std::path::Path, extra: &str) -> String {
    format!(
        "  - id: {id}\n    model: \"{}\"\n    engine_binary: \"{}\"\n    slots: 2\n    ctx: 512\n    startup_timeout_s: 60\n    flags: [\"-t\", \"1\"]\n{extra}",
        model.display(),
        engine().llama_server.display()
    )
}

fn daemon(token: &str) -> Daemon {
    let smol = chat_model();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}{}{}",
        pool("chat", &engine().model, "    load: on_demand\n"),
        pool(
            "emb",
            &smol,
            "    kind: embedding\n    pooling: mean\n    load: on_demand\n"
        ),
        pool("rr", &smol, "    kind: rerank\n"),
    );
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    )
}

async fn od_state(d: &Daemon, pool: &str) -> String {
    let (_, h) = d.get(&format!("/v1/pools/{pool}/health")).await;
    h["on_demand"]["state"].as_str().unwrap_or("").to_owned()
}

async fn post(d: &Daemon, path: &str, body: &Value) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = d
        .client()
        .post(format!("{}{path}", d.base))
        .json(body)
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.json().await.unwrap_or(Value::Null))
}

#[test]
fn embeddings_and_rerank_through_the_queue() {
    let python = cache_dir().join("venv-openai/bin/python");
    assert!(
        python.is_file(),
        "no OpenAI SDK virtualenv at {}: run `bash test-harness/openai-sdk/setup.sh` first",
        python.display()
    );
    let token = "embed-test-token";
    let d = daemon(token);
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    assert_eq!(rt.block_on(od_state(&d, "emb")), "unloaded");

    // The SDK: float and base64, the task headers, the refusals of the wrong pool kind. Its
    // first request loads the on_demand embedding pool.
    let t0 = Instant::now();
    let out = Command::new(&python)
        .arg(repo_root().join("test-harness/openai-sdk/test_embeddings.py"))
        .env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", token)
        .env("EMBED_MODEL", "emb")
        .env("CHAT_POOL", "chat")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY")
        .output()
        .expect("run test_embeddings.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "--- script ({:.1} s) stdout:\n{stdout}\n--- stderr:\n{}",
        t0.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && stdout.contains("EMBEDDINGS SDK OK"),
        "the embeddings SDK script failed; daemon log:\n{}",
        d.logs()
    );
    let task_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TASK "))
        .expect("the script names its first task")
        .trim()
        .to_owned();

    rt.block_on(async {
        assert_eq!(
            od_state(&d, "emb").await,
            "loaded",
            "the first request loaded it"
        );
        assert_eq!(od_state(&d, "chat").await, "unloaded", "refused at routing");

        // The embedding task is a task like any other: its status, the status page's list.
        let (s, t) = d.get(&format!("/v1/tasks/{task_id}")).await;
        assert_eq!(s, 200, "{t}");
        assert_eq!(t["state"], "completed", "{t}");
        assert_eq!(t["pool_id"], "emb", "{t}");
        let (_, status) = d.get("/v1/status").await;
        assert!(
            status["tasks"]
                .as_array()
                .is_some_and(|ts| ts.iter().any(|x| x["task_id"] == task_id.as_str())),
            "the task list of /v1/status lacks {task_id}"
        );

        // Rerank over plain HTTP, documents as strings or {text}; top_n and return_documents.
        let docs = json!([
            "Paris is the capital of France.",
            "Bananas are yellow.",
            {"text": "The Eiffel Tower stands in Paris."}
        ]);
        let texts = [
            "Paris is the capital of France.",
            "Bananas are yellow.",
            "The Eiffel Tower stands in Paris.",
        ];
        let (s, h, r) = post(
            &d,
            "/v1/rerank",
            &json!({"model": "rr", "query": "What is the capital of France?", "documents": docs,
                "top_n": 2, "return_documents": true}),
        )
        .await;
        assert_eq!(s, 200, "{r}\n{}", d.logs());
        let id = h["x-llorch-task-id"].to_str().unwrap_or("");
        assert!(id.starts_with("rerank-") && r["id"] == id, "{h:?} {r}");
        assert!(
            h.contains_key("x-llorch-queue-position")
                && h.contains_key("x-llorch-predicted-start-ms")
        );
        assert_eq!(r["model"], "rr");
        let results = r["results"].as_array().expect("results");
        assert_eq!(results.len(), 2, "top_n: {r}");
        let scores: Vec<f64> = results
            .iter()
            .map(|x| x["relevance_score"].as_f64().expect("a score"))
            .collect();
        assert!(
            scores.iter().all(|x| x.is_finite()) && scores[0] >= scores[1],
            "best first: {r}"
        );
        for x in results {
            let i = x["index"].as_u64().expect("index") as usize;
            assert_eq!(x["document"]["text"], texts[i], "{r}");
        }
        assert!(r["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 0, "{r}");
        // The alias llama-server also answers; without top_n every document, no documents.
        let (s, _, all) = post(
            &d,
            "/v1/reranking",
            &json!({"model": "rr", "query": "capital of France", "documents": texts}),
        )
        .await;
        assert_eq!(s, 200, "{all}");
        let all = all["results"].as_array().cloned().unwrap_or_default();
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|x| x.get("document").is_none()));

        // Rerank on an embedding pool: refused at routing, in OpenAI's error shape.
        let (s, _, e) = post(
            &d,
            "/v1/rerank",
            &json!({"model": "emb", "query": "q", "documents": ["d"]}),
        )
        .await;
        assert_eq!(s, 400, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
        let m = e["error"]["message"].as_str().unwrap_or("");
        assert!(m.contains("kind: rerank") && m.contains("rr ("), "{m}");

        // The native door: an embedding task's stream carries `result`, then `end`.
        let r = d
            .submit(
                &json!({"task_id": "native-emb", "model_ref": "emb", "priority": "batch",
                "workload": "embedding", "input": ["one", "two"], "max_tokens": 1}),
            )
            .await;
        assert_eq!(r.status().as_u16(), 202);
        let events = d.stream("native-emb").await;
        let names: Vec<&str> = events
            .iter()
            .map(|e| e.event.as_str())
            .filter(|n| *n != "metrics")
            .collect();
        assert_eq!(names, ["started", "result", "end"], "{events:?}");
        let result = events[events.len() - 2].json();
        let vectors = result["embeddings"].as_array().expect("embeddings");
        assert_eq!(vectors.len(), 2);
        assert!(vectors[0].as_array().is_some_and(|v| v.len() > 16));
        assert!(
            events[events.len() - 1].json()["prompt_tokens"]
                .as_u64()
                .unwrap_or(0)
                > 0
        );

        // Each pool says its kind (absent in the pool list for chat pools).
        let (_, caps) = d.get("/v1/capabilities").await;
        let kinds: Vec<(String, String)> = caps["pools"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["id"].as_str().unwrap_or("").to_owned(),
                    p["kind"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want = [("chat", "chat"), ("emb", "embedding"), ("rr", "rerank")];
        assert_eq!(
            kinds,
            want.map(|(a, b)| (a.to_owned(), b.to_owned())),
            "{caps}"
        );
        let (_, pools) = d.get("/v1/pools").await;
        assert_eq!(pools["pools"][1]["kind"], "embedding", "{pools}");
        assert!(pools["pools"][0].get("kind").is_none(), "{pools}");

        // In the metrics like any task.
        let m = d.metrics_text().await;
        assert!(
            m.lines()
                .any(|l| l.starts_with("tasks_started_total") && l.contains("pool_id=\"emb\"")),
            "no started tasks of pool emb in /metrics"
        );
    });
}
