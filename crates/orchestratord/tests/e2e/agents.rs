//! The agent CLIs from the npm registry, each finishing one real turn through the daemon in its
//! own dialect (SPEC §14): Claude Code (`claude -p`, Anthropic Messages `/v1/messages`), Codex
//! (`codex exec`, OpenAI Responses `/v1/responses`) and OpenCode (`opencode run`, OpenAI Chat
//! Completions `/v1/chat/completions`), against a real llama-server on the real chat model; and
//! Claude Code and Codex at once on one slot, one waiting in the queue with its position shown.
//!
//! The CLIs are pinned in test-harness/agents/package.json and installed into the provisioning
//! cache by `bash test-harness/agents/setup.sh`; test-harness/agents/turn.sh runs one turn of
//! each with a throwaway HOME and config (the same invocation was checked against a bare
//! llama-server, which serves all three dialects itself). Without the setup a test fails
//! naming that command. The agents send their real requests: their own system prompts
//! (~4 100 tokens for Claude Code, ~4 600 for Codex), tools and `max_tokens` (32 000), so the
//! pool has the model's full 8k context. The check is that each agent finishes its turn with
//! an answer (exit 0, some text), not the quality of a 135M model's answer.

use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use orch_harness::{chat_pool, engine, Daemon, DaemonOptions};

use crate::support::{bin, cache_dir, repo_root};

/// The pool (and the model name every agent sends).
const MODEL: &str = "chat";
/// Context per slot: the chat model's own (8k); the agents' prompts are 4–5k tokens.
const CTX: u32 = 8192;
const PROMPT: &str = "What is the capital of France? Answer in one sentence.";
/// Replies capped by the agents themselves where they can (Claude Code and OpenCode; see
/// turn.sh's AGENT_MAX_OUTPUT_TOKENS): by default they ask for 32 000 tokens, which the doors
/// clamp to what the context leaves (~3 500 here), and a 135M model may use them all, minutes
/// on one CI core. Codex sends no limit: the door's clamp bounds it.
const AGENT_MAX_OUTPUT_TOKENS: u32 = 64;

/// One daemon (and one llama-server) at a time: these turns are seconds of CPU each.
static SERIAL: Mutex<()> = Mutex::new(());

/// Fails (never skips) when setup.sh has not installed `agent`.
fn require(agent: &str) {
    let bin = cache_dir().join("agents/node_modules/.bin").join(agent);
    assert!(
        bin.is_file(),
        "the {agent} CLI is missing at {}: run `bash test-harness/agents/setup.sh` first",
        bin.display()
    );
}

/// A daemon with one one-slot pool of the chat model, behind `token`. The engine samples
/// greedily unless a request says otherwise (`--temp 0`): the agents send no temperature, and
/// sampled, the 135M model sometimes rambles past the reply cap, which Claude Code reports as
/// an error; greedy, its answer to the agents' prompts ends in 6–21 tokens.
fn daemon(token: &str) -> Daemon {
    let pool = chat_pool(MODEL, &engine(), 1, CTX).replace(
        "flags: [\"-t\", \"1\"]",
        "flags: [\"-t\", \"1\", \"--temp\", \"0\", \"--seed\", \"42\"]",
    );
    assert!(
        pool.contains("--temp"),
        "the pool's flags changed shape: {pool}"
    );
    let config =
        format!("dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{pool}");
    Daemon::start(
        &bin(),
        DaemonOptions {
            config,
            token: Some(token.into()),
            ..Default::default()
        },
    )
}

/// Starts one turn of `agent` against `d` (test-harness/agents/turn.sh).
fn start_turn(agent: &str, d: &Daemon) -> (Child, Instant) {
    require(agent);
    let child = Command::new("bash")
        .arg(repo_root().join("test-harness/agents/turn.sh"))
        .args([
            agent,
            &d.base,
            d.token.as_deref().unwrap_or(""),
            MODEL,
            PROMPT,
        ])
        .env(
            "AGENT_MAX_OUTPUT_TOKENS",
            AGENT_MAX_OUTPUT_TOKENS.to_string(),
        )
        .env_remove("AGENT_PRIORITY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run test-harness/agents/turn.sh");
    (child, Instant::now())
}

/// Waits for a turn; asserts it finished with an answer.
fn finish_turn(agent: &str, turn: (Child, Instant), d: &Daemon) {
    if let Err(e) = turn_result(agent, turn) {
        panic!("{e}\ndaemon log:\n{}", d.logs());
    }
}

/// Waits for a turn: its answer, or why it did not finish.
fn turn_result(agent: &str, (child, t0): (Child, Instant)) -> Result<String, String> {
    let out = child.wait_with_output().expect("wait for the agent");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let chatter = String::from_utf8_lossy(&out.stderr);
    // The last stderr line is turn.sh's summary: rc, wall time, the agent's token counts.
    let summary = chatter
        .lines()
        .rfind(|l| l.starts_with("AGENT_TURN"))
        .unwrap_or("(no summary)");
    eprintln!(
        "--- {agent}: {summary} (test wall {:.1} s)\n--- {agent} answer: {answer}",
        t0.elapsed().as_secs_f64()
    );
    if out.status.success() && !answer.is_empty() {
        return Ok(answer);
    }
    Err(format!(
        "{agent} did not finish its turn through the daemon ({:?}, answer {answer:?}); \
         agent output:\n{chatter}",
        out.status.code()
    ))
}

/// How many tasks the daemon admitted and completed so far (from its log).
fn admitted_and_completed(d: &Daemon) -> (usize, usize) {
    let logs = d.logs();
    (
        logs.matches("\"task admitted\"").count(),
        logs.matches("\"task completed\"").count(),
    )
}

/// One turn of `agent` alone; it must have gone through the queue.
fn one_turn(agent: &str) {
    require(agent);
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let d = daemon(&format!("{agent}-test-token"));
    let (admitted0, completed0) = admitted_and_completed(&d);
    let turn = start_turn(agent, &d);
    finish_turn(agent, turn, &d);
    let (admitted, completed) = admitted_and_completed(&d);
    eprintln!(
        "--- {agent}: the daemon admitted {} and completed {} tasks for it",
        admitted - admitted0,
        completed - completed0
    );
    assert!(
        admitted > admitted0 && completed > completed0,
        "{agent} answered, but no task went through the daemon's queue; daemon log:\n{}",
        d.logs()
    );
}

#[test]
fn claude_code_finishes_a_turn_through_messages() {
    one_turn("claude");
}

#[test]
fn codex_finishes_a_turn_through_responses() {
    one_turn("codex");
}

#[test]
fn opencode_finishes_a_turn_through_chat_completions() {
    one_turn("opencode");
}

/// Claude Code and Codex at once on a one-slot pool: while one runs, the other's task waits
/// in the queue with its position (seen in `/v1/status`, as `llorch status` and the status
/// page show it), and both finish.
#[test]
fn claude_and_codex_share_one_slot_through_the_queue() {
    require("claude");
    require("codex");
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(both_at_once(daemon("both-agents-token")));
}

async fn both_at_once(d: Daemon) {
    let claude = start_turn("claude", &d);
    let codex = start_turn("codex", &d);

    // Each agent's output is read while it runs (a full pipe would stall it).
    let claude = tokio::task::spawn_blocking(move || turn_result("claude", claude));
    let codex = tokio::task::spawn_blocking(move || turn_result("codex", codex));
    // (task id, queue position) of tasks seen queued while another task of the pool ran.
    let mut waited: Vec<(String, u64)> = Vec::new();
    while !(claude.is_finished() && codex.is_finished()) {
        let (code, snap) = d.get("/v1/status?recent=50").await;
        if code == 200 {
            let tasks = snap["tasks"].as_array().cloned().unwrap_or_default();
            let running = tasks.iter().any(|t| t["state"] == "running");
            for t in &tasks {
                let id = t["task_id"].as_str().unwrap_or_default().to_owned();
                if t["state"] == "queued" && running {
                    if let Some(pos) = t["queue_position"].as_u64() {
                        if !waited.iter().any(|(w, _)| *w == id) {
                            eprintln!("queued behind a running task: {t}");
                            waited.push((id, pos));
                        }
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut failed = Vec::new();
    for turn in [claude, codex] {
        if let Err(e) = turn.await.expect("agent turn") {
            failed.push(e);
        }
    }
    assert!(
        failed.is_empty(),
        "{}\ndaemon log:\n{}",
        failed.join("\n"),
        d.logs()
    );

    let (_, snap) = d.get("/v1/status?recent=50").await;
    let states: Vec<(String, String)> = snap["tasks"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            (
                t["task_id"].as_str().unwrap_or_default().to_owned(),
                t["state"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    eprintln!("tasks: {states:?}; waited in the queue: {waited:?}");
    assert!(
        !waited.is_empty(),
        "with one slot and two agents at once, no task was ever seen queued (with its \
         position) behind a running one; tasks {states:?}; daemon log:\n{}",
        d.logs()
    );
    for (id, _) in &waited {
        let state = states
            .iter()
            .find(|(t, _)| t == id)
            .map(|(_, s)| s.as_str());
        assert_eq!(
            state,
            Some("completed"),
            "task {id} waited in the queue but did not complete; tasks {states:?}"
        );
    }
}
