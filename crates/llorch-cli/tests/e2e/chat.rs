//! `llorch chat` and `llorch submit` against a real orchestratord serving the real instruct
//! model (SmolLM2-135M-Instruct, `CHAT_MODEL`) on a real llama-server: the model answers, the
//! chat keeps its history, Ctrl-C cancels the answer in the daemon, a waiting turn shows its
//! queue position. Needs `eval $(cargo xtask provision-engine)` and the orchestratord binary.
//!
//! Greedy sampling (`--temperature 0`) and small `max_tokens` keep the answers stable and the
//! file fast (~100 tokens/s on 2 cores).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use orch_harness::{chat_pool, engine, signal, Daemon, DaemonOptions};
use serde_json::Value;

use crate::common::{daemon_bin, llorch_bin};

const TOKEN: &str = "chat-test-token";

/// A `llorch` command pointed at `d`, isolated from the user's config and environment.
fn cmd(d: &Daemon) -> Command {
    let mut c = Command::new(llorch_bin());
    c.env("LLORCH_URL", &d.base)
        .env("LLORCH_TOKEN", TOKEN)
        .env(
            "XDG_CONFIG_HOME",
            std::env::temp_dir().join("llorch-chat-test-no-config"),
        )
        .env_remove("LLORCH_CLI_CONFIG")
        .env_remove("AUTH_TOKEN");
    c
}

/// Runs `llorch ARGS` with `input` on stdin (a pipe, not a terminal).
fn run_with_input(d: &Daemon, args: &[&str], input: &str) -> Output {
    let started = Instant::now();
    let mut child = cmd(d)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run llorch");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("llorch output");
    eprintln!(
        "$ printf {input:?} | llorch {} -> {:?} in {:.1} s\n--- stdout:\n{}\n--- stderr:\n{}",
        args.join(" "),
        out.status.code(),
        started.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `llorch chat --json` with stdin left open; returns the child and the id of its first task
/// (read from its `admitted` line).
fn chat_in_background(d: &Daemon, args: &[&str], line: &str) -> (Child, String) {
    let mut child = cmd(d)
        .args(["--json", "chat"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run llorch chat");
    let stdin = child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "{line}").expect("write stdin");
    stdin.flush().expect("flush");
    let mut first = String::new();
    BufReader::new(child.stdout.as_mut().expect("stdout"))
        .read_line(&mut first)
        .expect("read the admitted line");
    let v: Value = serde_json::from_str(&first).expect("an NDJSON line");
    assert_eq!(v["event"], "admitted", "{v}");
    let id = v["data"]["task_id"].as_str().expect("task_id").to_owned();
    (child, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_model_answers_in_chat_and_submit() {
    // One slot, so a second chat waits behind a first.
    let e = engine();
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\nsessions: {{ max_turns: 2 }}\npools:\n{}",
        chat_pool("smol", &e, 1, 4096)
    );
    let d = Daemon::start(
        &daemon_bin(),
        DaemonOptions {
            config,
            token: Some(TOKEN.into()),
            ..Default::default()
        },
    );
    let greedy = ["--model", "smol", "--temperature", "0", "-n", "24"];

    // One line on stdin is one turn; the answer is printed on stdout.
    let mut args = vec!["chat"];
    args.extend(greedy);
    let out = run_with_input(
        &d,
        &args,
        "What is the capital of France? Answer in one word.\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));

    // Two turns: the second only makes sense with the first in the history.
    let out = run_with_input(
        &d,
        &args,
        "What is the capital of France? Answer in one word.\nAnd of Italy? Answer in one word.\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let answers: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(answers.len() >= 2, "two answers expected: {text:?}");
    assert!(answers[0].contains("Paris"), "{text}");
    assert!(
        text.contains("Rome"),
        "the second turn needs the first: {text}"
    );

    // A third turn passes `sessions.max_turns: 2`: the chat goes on in a fresh daemon session
    // with the whole history.
    let out = run_with_input(
        &d,
        &args,
        "What is the capital of France? Answer in one word.\nAnd of Italy? Answer in one word.\nAnd of Spain? Answer in one word.\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.contains("Madrid"),
        "the third turn keeps the history: {text}"
    );

    // `/clear` forgets: the same follow-up without its context is not answered with Rome.
    let out = run_with_input(
        &d,
        &args,
        "What is the capital of France? Answer in one word.\n/clear\nAnd of Italy? Answer in one word.\n",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[history cleared]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    assert!(text.contains("Paris"), "{text}");
    assert!(
        !text.contains("Rome"),
        "after /clear the follow-up has no context: {text}"
    );

    // `submit` sends its text as a user message by default: a real answer, not an instant end.
    let out = run_with_input(
        &d,
        &[
            "submit",
            "--model",
            "smol",
            "--temperature",
            "0",
            "-n",
            "32",
            "What is the capital of France? Answer in one sentence.",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));
    // `--raw`: a completion prompt, continued as text.
    let out = run_with_input(
        &d,
        &[
            "submit",
            "--raw",
            "--model",
            "smol",
            "--temperature",
            "0",
            "-n",
            "8",
            "The capital of France is",
        ],
        "",
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));

    // Ctrl-C cancels the answer in flight in the daemon, and a chat waiting behind it shows
    // its queue position, then gets its answer.
    let (mut long, long_id) = chat_in_background(
        &d,
        &["--model", "smol", "-n", "3000", "--seed", "3"],
        "Write a very long story about a lighthouse keeper, with many chapters.",
    );
    d.wait_tokens(&long_id, 1).await;
    let waiter = cmd(&d)
        .args(["chat"])
        .args(greedy)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run llorch chat");
    let mut waiter_stdin = waiter.stdin.as_ref().expect("stdin");
    writeln!(
        waiter_stdin,
        "What is the capital of France? Answer in one word."
    )
    .expect("write stdin");
    let waiting_id = wait_for_waiting(&d).await;
    let (_, v) = d.get(&format!("/v1/tasks/{long_id}")).await;
    assert_eq!(v["state"], "running", "{v}");
    signal(long.id(), libc_sigint());
    d.wait_state(&long_id, "canceled").await;
    d.wait_state(&waiting_id, "completed").await;
    // The interrupted chat goes on: it ends at the end of its input, exit 0.
    drop(long.stdin.take());
    let long_out = tokio::task::spawn_blocking(move || long.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(long_out.status.code(), Some(0));
    let mut waiter = waiter;
    drop(waiter.stdin.take());
    let out = tokio::task::spawn_blocking(move || waiter.wait_with_output())
        .await
        .expect("join")
        .expect("wait");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("waiting chat stderr:\n{err}");
    assert_eq!(out.status.code(), Some(0));
    // Admission's line (`queue position 0`, starts next) or the live `metrics` frames' line.
    assert!(
        err.contains("queue position 0") || err.contains("[queued: position 0"),
        "{err}"
    );
    assert!(stdout(&out).contains("Paris"), "{}", stdout(&out));
}

/// The one task waiting in a queue (polls `/v1/status`, 60 s at most).
async fn wait_for_waiting(d: &Daemon) -> String {
    let started = Instant::now();
    loop {
        let (_, v) = d.get("/v1/status").await;
        if let Some(id) = v["waiting"][0]["task_id"].as_str() {
            eprintln!(
                "a task waits after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            return id.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no task ever waited: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGINT, what a terminal sends on Ctrl-C.
fn libc_sigint() -> i32 {
    2
}
