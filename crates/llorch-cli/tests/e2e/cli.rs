//! The `llorch` binary against a real orchestratord, which launches a real llama-server on the
//! tiny test model (CPU, dev setting). Needs `eval $(cargo xtask provision-engine)` and the
//! orchestratord binary (`cargo test --workspace` builds it; alone: `cargo build -p orchestratord`).

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orch_harness::{engine, llama_pool, Daemon, DaemonOptions};
use serde_json::Value;

use crate::common::{daemon_bin, llorch_bin};

const TOKEN: &str = "cli-test-token";

fn start(slots: u32, ctx: u32, extra: &str) -> Daemon {
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\n{extra}pools:\n{}",
        llama_pool("tiny", &e, slots, 1, ctx)
    );
    Daemon::start(
        &daemon_bin(),
        DaemonOptions {
            config,
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    )
}

/// A `llorch` command pointed at `d`, isolated from the user's config and environment.
fn cmd(d: &Daemon) -> Command {
    let mut c = Command::new(llorch_bin());
    let cfg_home = std::env::temp_dir().join("llorch-cli-test-no-config");
    c.env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", TOKEN)
        .env("XDG_CONFIG_HOME", cfg_home)
        .env_remove("LLORCH_CLI_CONFIG")
        .env_remove("AUTH_TOKEN")
        .stdin(Stdio::null());
    c
}

fn run(d: &Daemon, args: &[&str]) -> Output {
    let out = cmd(d).args(args).output().expect("run llorch");
    eprintln!(
        "$ llorch {} -> {:?}\n--- stderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

fn json_lines(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn json_one(o: &Output) -> Value {
    let v = json_lines(o);
    assert_eq!(v.len(), 1, "expected one JSON document, got {v:?}");
    v.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_stream_status_and_json_output() {
    let d = start(2, 4096, "");

    // Human mode: tokens on stdout, byte for byte what the stream carried.
    let out = run(
        &d,
        &[
            "submit",
            "Once upon a time",
            "--seed",
            "7",
            "-n",
            "24",
            "--task-id",
            "cli-t1",
        ],
    );
    assert_eq!(code(&out), 0);
    let events = d.stream("cli-t1").await;
    let streamed: String = events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["t"].as_str().unwrap().to_owned())
        .collect();
    assert!(!streamed.is_empty());
    assert_eq!(
        out.stdout,
        streamed.as_bytes(),
        "stdout must be the exact token bytes"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("queue position"), "{err}");
    assert!(err.contains("predicted start"), "{err}");

    // `stream` replays the same bytes.
    let out = run(&d, &["stream", "cli-t1"]);
    assert_eq!(code(&out), 0);
    assert_eq!(out.stdout, streamed.as_bytes());

    // Prompt from stdin, `--json`: NDJSON admitted, started, token (i from 0), …, end.
    let mut child = cmd(&d)
        .args([
            "--json",
            "submit",
            "-",
            "--seed",
            "7",
            "-n",
            "8",
            "--priority",
            "batch",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"Once upon a time").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out);
    assert_eq!(lines[0]["event"], "admitted");
    let id = lines[0]["data"]["task_id"].as_str().unwrap().to_owned();
    assert!(lines[0]["data"]["queue_position"].is_u64());
    assert!(lines[0]["data"]["predicted_start_ms"].is_u64());
    assert_eq!(lines[1]["event"], "started");
    let tokens: Vec<&Value> = lines.iter().filter(|l| l["event"] == "token").collect();
    assert!(!tokens.is_empty());
    for (i, t) in tokens.iter().enumerate() {
        assert_eq!(t["data"]["i"], i as u64);
    }
    assert_eq!(lines.last().unwrap()["event"], "end");

    // `task --json`.
    let v = json_one(&run(&d, &["--json", "task", &id]));
    assert_eq!(v["state"], "completed");
    assert_eq!(v["priority"], "batch");

    // `status`: JSON parses as the snapshot, the human view names the pool and the task.
    let v = json_one(&run(&d, &["--json", "status"]));
    let snap: orch_api_types::StatusSnapshot = serde_json::from_value(v).expect("status snapshot");
    assert_eq!(snap.pools[0].id, "tiny");
    assert!(snap.pools[0].ready);
    assert!(snap.tasks.iter().any(|t| t.task_id == "cli-t1"));
    let out = run(&d, &["status"]);
    assert_eq!(code(&out), 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("POOLS") && text.contains("tiny") && text.contains("cli-t1"),
        "{text}"
    );

    // `capabilities`, `pools list`, `metrics`.
    let v = json_one(&run(&d, &["--json", "capabilities"]));
    assert_eq!(v["pools"][0]["id"], "tiny");
    let v = json_one(&run(&d, &["--json", "pools", "list"]));
    assert_eq!(v["pools"][0]["id"], "tiny");
    let m = json_lines(&run(&d, &["--json", "metrics"]));
    let enqueued: f64 = m
        .iter()
        .filter(|s| s["name"] == "tasks_enqueued_total" && s["labels"]["pool_id"] == "tiny")
        .map(|s| s["value"].as_f64().unwrap())
        .sum();
    assert!(enqueued >= 2.0, "{m:?}");

    // `doctor` sees the daemon and accepts the token (GPU checks fail on CPU-only CI).
    let out = run(&d, &["--json", "doctor"]);
    let v = json_lines(&out)[0].clone();
    let checks = v["checks"].as_array().unwrap();
    let level = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["level"].clone())
            .unwrap_or(Value::Null)
    };
    assert_eq!(level("daemon"), "ok", "{v}");
    assert_eq!(level("token"), "ok", "{v}");
    assert_eq!(level("port"), "ok", "{v}");

    // Exit codes.
    let out = run(&d, &["task", "no-such-task"]);
    assert_eq!(code(&out), 3, "404 → 3");
    let out = run(&d, &["--json", "submit", "x", "--model", "no-such-model"]);
    assert_eq!(code(&out), 3, "MODEL_NOT_FOUND → 3");
    let v = json_one(&out);
    assert_eq!(v["error"]["code"], "MODEL_NOT_FOUND");
    assert_eq!(v["error"]["http_status"], 404);
    let out = run(&d, &["--token", "wrong", "status"]);
    assert_eq!(code(&out), 6, "401 → 6");
    let out = run(&d, &["--url", "http://127.0.0.1:9", "status"]);
    assert_eq!(code(&out), 7, "connection refused → 7");
    let out = run(&d, &["submit", "x", "--max-tokens", "0"]);
    assert_eq!(code(&out), 1, "400 → 1");
    let out = run(&d, &["no-such-command"]);
    assert_eq!(code(&out), 1, "usage → 1");
    let out = run(&d, &["completions", "bash"]);
    assert_eq!(code(&out), 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("llorch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_queue_full_and_wait() {
    // One slot and a queue of one: a long task runs, a second waits, a third gets 429.
    // The long tasks are seeded raw prompts: unseeded, the tiny random model may sample its
    // end-of-sequence token and finish before the test cancels it (seed 4 runs all 20 000
    // tokens of this prompt).
    let d = start(1, 32768, "queue: { capacity: 1 }\n");
    let out = run(
        &d,
        &[
            "submit",
            "--raw",
            "Once upon a time",
            "-n",
            "20000",
            "--seed",
            "4",
            "--temperature",
            "0.8",
            "--no-stream",
            "--task-id",
            "long-a",
        ],
    );
    assert_eq!(code(&out), 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "long-a");
    d.wait_state("long-a", "running").await;
    let out = run(
        &d,
        &[
            "submit",
            "--raw",
            "Once upon a time",
            "-n",
            "20000",
            "--seed",
            "4",
            "--temperature",
            "0.8",
            "--no-stream",
            "--priority",
            "batch",
            "--task-id",
            "long-b",
        ],
    );
    assert_eq!(code(&out), 0);
    d.wait_state("long-b", "queued").await;

    // 429 → exit 4, with the envelope in --json.
    let out = run(
        &d,
        &["--json", "submit", "x", "-n", "4", "--task-id", "c-429"],
    );
    assert_eq!(code(&out), 4, "429 → 4");
    let v = json_one(&out);
    assert_eq!(v["error"]["http_status"], 429);
    assert_eq!(v["error"]["code"], "ADMISSION_REJECT");
    assert_eq!(v["error"]["envelope"]["policy_label"], "reject");

    // `--wait` honours Retry-After: it keeps trying until there is room, then streams.
    let waiter = cmd(&d)
        .args([
            "--wait",
            "--wait-max-s",
            "120",
            "submit",
            "waited",
            "-n",
            "4",
            "--task-id",
            "c-wait",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (s, _) = d.get("/v1/tasks/c-wait").await;
    assert_eq!(s, 404, "c-wait must still be waiting for room");

    // Cancel both long tasks; the stream of a canceled task exits 8.
    let out = run(&d, &["--json", "cancel", "long-b"]);
    assert_eq!(code(&out), 0);
    assert_eq!(json_one(&out)["state"], "canceled");
    let out = run(&d, &["cancel", "long-a"]);
    assert_eq!(code(&out), 0);
    // 202: the answer waits up to 2 s for the final state, so on a busy machine it may still
    // say `running`; the task must end canceled either way.
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("task long-a: canceled") || said.contains("task long-a: running"),
        "cancel said: {said}"
    );
    d.wait_state("long-a", "canceled").await;
    let out = run(&d, &["stream", "long-a"]);
    assert_eq!(code(&out), 8, "canceled task → 8");
    let lines = json_lines(&run(&d, &["--json", "stream", "long-b"]));
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "error");
    assert_eq!(last["data"]["code"], "CANCELED");

    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output().unwrap())
        .await
        .unwrap();
    eprintln!("waiter stderr:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        code(&out),
        0,
        "--wait submit must succeed once there is room"
    );
    assert!(!out.stdout.is_empty());
    let (_, v) = d.get("/v1/tasks/c-wait").await;
    assert_eq!(v["state"], "completed");
}
