//! Launch recipes for engines other than llama.cpp.
//!
//! vLLM cannot run here (no GPU, no CUDA wheels), so a labelled TEST DOUBLE stands in for the
//! `vllm` command: a script that checks the command line the daemon built
//! (`vllm serve MODEL --host … --port … --max-model-len … --max-num-seqs …`), records it, and
//! execs the real llama-server with the equivalent flags. Everything after the command line is
//! real: the daemon supervises that process, and talks to it through the OpenAI adapter that
//! vLLM pools use, over llama-server's real OpenAI-compatible API.

use std::os::unix::fs::PermissionsExt;

use orch_harness::{engine, last_event, token_text, Daemon, DaemonOptions};
use serde_json::json;

use crate::support::bin;

const VLLM_DOUBLE: &str = r#"#!/usr/bin/env bash
# TEST DOUBLE for `vllm serve`: validates the command line, then runs llama-server instead.
set -euo pipefail
[ "$1" = serve ] || { echo "vllm double: expected 'serve', got '$1'" >&2; exit 2; }
model=$2; shift 2
while [ $# -gt 0 ]; do
  case $1 in
    --host) host=$2; shift 2;;
    --port) port=$2; shift 2;;
    --max-model-len) ctx=$2; shift 2;;
    --max-num-seqs) seqs=$2; shift 2;;
    --seed) shift 2;;
    *) echo "vllm double: unexpected argument $1" >&2; exit 2;;
  esac
done
echo "serve $model --host $host --port $port --max-model-len $ctx --max-num-seqs $seqs" >> "$VLLM_DOUBLE_LOG"
exec "$LLAMA_SERVER" -m "$model" --host "$host" --port "$port" -c $((ctx * seqs)) -np "$seqs" -t 1
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_pool_is_launched_with_vllm_serve_and_served_through_the_openai_adapter() {
    let e = engine();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("vllm");
    std::fs::write(&script, VLLM_DOUBLE).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let args_log = dir.path().join("argv.log");
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\npools:\n  - id: vl\n    engine: vllm\n    model: \"{}\"\n    engine_binary: \"{}\"\n    slots: 2\n    ctx: 2048\n    startup_timeout_s: 60\n",
        e.model.display(),
        script.display()
    );
    let d = Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            env: vec![
                ("LLAMA_SERVER".into(), e.llama_server.display().to_string()),
                ("VLLM_DOUBLE_LOG".into(), args_log.display().to_string()),
            ],
            ..Default::default()
        },
    );
    let argv = std::fs::read_to_string(&args_log).unwrap();
    assert!(
        argv.starts_with(&format!(
            "serve {} --host 127.0.0.1 --port ",
            e.model.display()
        )) && argv.contains("--max-model-len 2048 --max-num-seqs 2"),
        "{argv}"
    );
    let (_, caps) = d.get("/v1/capabilities").await;
    assert_eq!(caps["pools"][0]["engine"], "vllm");
    for (id, body) in [
        ("c1", json!({"prompt": "Once upon a time"})),
        ("c2", json!({"prompt": "Once upon a time"})),
        (
            "ch",
            json!({"workload": "chat", "messages": [{"role": "user", "content": "hi"}]}),
        ),
    ] {
        let mut t = json!({"task_id": id, "model_ref": "vl", "priority": "interactive", "max_tokens": 16, "seed": 5});
        for (k, v) in body.as_object().unwrap() {
            t[k] = v.clone();
        }
        assert_eq!(d.submit(&t).await.status(), 202);
    }
    let c1 = d.stream("c1").await;
    let c2 = d.stream("c2").await;
    let ch = d.stream("ch").await;
    for ev in [&c1, &c2, &ch] {
        assert_eq!(last_event(ev).event, "end", "{ev:?}");
        // A task that waited has `metrics` frames before its `started`.
        let started = ev.iter().find(|e| e.event == "started").expect("started");
        assert_eq!(started.json()["engine"], "vllm");
    }
    assert!(!token_text(&c1).is_empty());
    assert_eq!(
        token_text(&c1),
        token_text(&c2),
        "seed passes through the vLLM path"
    );
}

#[test]
fn openai_and_triton_pools_cannot_be_launched() {
    for engine in ["openai", "triton"] {
        let yaml = format!("pools:\n  - id: x\n    engine: {engine}\n    model: /m\n");
        let cfg = orch_config::Config::from_str_for(std::path::Path::new("c.yaml"), &yaml).unwrap();
        let e = cfg.validate(false).unwrap_err().to_string();
        assert!(e.contains("endpoint"), "{e}");
    }
}
