//! Parser fuzzing with proptest (stable toolchain; no cargo-fuzz).
//!
//! - Task bodies posted to a running daemon (`POST /v1/tasks`, and the OpenAI-compatible
//!   `POST /v1/completions` / `POST /v1/chat/completions`): arbitrary JSON values, valid bodies
//!   with fields replaced by arbitrary or extreme values, and arbitrary bytes. Target: never
//!   5xx, never a broken connection, never a panic in the log.
//! - Config files: `orch_config::Config::from_str_for` on arbitrary text and on mutated valid
//!   YAML and TOML, then everything the daemon derives from a parsed config (`validate`,
//!   `bind_addr`, `data_dir`, env overrides, token lookup). Target: never a panic.
//! - Engine stream parsing: `orch_engine_adapters::llamacpp::parse_chunk` already has proptests
//!   (never panics on any text; content round-trips exactly); not repeated here.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_config::{Config, EnvOverrides};
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};

use crate::{Api, Ctx, Outcome};

/// Arbitrary JSON, including extreme numbers and odd strings.
pub fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        prop_oneof![
            Just(json!(0)),
            Just(json!(-1)),
            Just(json!(u32::MAX)),
            Just(json!(u64::MAX)),
            Just(json!(i64::MIN)),
            Just(json!(1e308)),
            Just(json!(-0.0)),
            Just(json!(4_294_967_296u64)),
        ],
        ".{0,40}".prop_map(Value::String),
        prop_oneof![
            Just(json!("")),
            Just(json!("tiny")),
            Just(json!("interactive")),
            Just(json!("batch")),
            Just(json!("chat")),
            Just(json!("completion")),
            Just(json!("strict")),
            Just(json!("\u{0}\u{2028}\r\n")),
            Just(json!("../../etc/passwd")),
            Just(json!("x".repeat(5000))),
        ],
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// Every field of a task body.
const TASK_FIELDS: &[&str] = &[
    "task_id",
    "session_id",
    "workload",
    "model_ref",
    "engine",
    "ctx",
    "priority",
    "seed",
    "determinism",
    "sampler_profile_version",
    "prompt",
    "messages",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "stop",
    "deadline_ms",
    "expected_tokens",
    "kv_hint",
    "placement",
    "budget",
];

/// Fields of the OpenAI-compatible bodies.
const OPENAI_FIELDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "seed",
    "stop",
    "stream",
    "n",
    "user",
    "stream_options",
    "logprobs",
];

/// A field edit: set it to a value, or remove it.
type Edit = (usize, Option<Value>);

fn edits(fields: usize) -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec((0..fields, prop::option::weighted(0.85, arb_json())), 1..4)
}

fn apply(mut base: Value, fields: &[&str], edits: &[Edit]) -> Value {
    for (i, v) in edits {
        let k = fields[*i];
        match v {
            Some(v) => base[k] = v.clone(),
            None => {
                if let Some(m) = base.as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    base
}

/// One fuzz input: where to post it and the bytes.
#[derive(Clone, Debug)]
pub struct Input {
    /// Path.
    pub path: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

/// Task and OpenAI bodies: arbitrary JSON, edited valid bodies, arbitrary bytes.
pub fn arb_input() -> impl Strategy<Value = Input> {
    let task_base = |chat: bool| {
        let mut b = json!({"task_id": "fz", "model_ref": "tiny", "priority": "batch", "max_tokens": 8, "seed": 1});
        if chat {
            b["workload"] = json!("chat");
            b["messages"] = json!([{"role": "user", "content": "hi"}]);
        } else {
            b["prompt"] = json!("Once");
        }
        b
    };
    let openai_base = |chat: bool| {
        let mut b = json!({"model": "tiny", "max_tokens": 8, "seed": 1});
        if chat {
            b["messages"] = json!([{"role": "user", "content": "hi"}]);
        } else {
            b["prompt"] = json!("Once");
        }
        b
    };
    let paths = prop::sample::select(vec!["/v1/tasks", "/v1/completions", "/v1/chat/completions"]);
    prop_oneof![
        3 => (paths.clone(), arb_json()).prop_map(|(path, v)| Input { path, body: v.to_string().into_bytes() }),
        6 => (any::<bool>(), edits(TASK_FIELDS.len())).prop_map(move |(chat, e)| Input {
            path: "/v1/tasks",
            body: apply(task_base(chat), TASK_FIELDS, &e).to_string().into_bytes(),
        }),
        3 => (any::<bool>(), edits(OPENAI_FIELDS.len())).prop_map(move |(chat, e)| Input {
            path: if chat { "/v1/chat/completions" } else { "/v1/completions" },
            body: apply(openai_base(chat), OPENAI_FIELDS, &e).to_string().into_bytes(),
        }),
        2 => (paths, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(path, body)| Input { path, body }),
    ]
}

/// Gives every `/v1/tasks` body a fresh `task_id` unless the fuzzer set one (so admissions
/// are not all duplicates), and forces non-streaming OpenAI calls to stay short.
fn prepare(mut input: Input, n: usize) -> Input {
    if let Ok(mut v) = serde_json::from_slice::<Value>(&input.body) {
        if input.path == "/v1/tasks" && v.get("task_id") == Some(&json!("fz")) {
            v["task_id"] = json!(format!("fz-{n}"));
            input.body = v.to_string().into_bytes();
        }
    }
    input
}

/// Posts fuzzed bodies to a running daemon.
fn fuzz_daemon(o: &mut Outcome, api: &Api, cases: u32, handle: tokio::runtime::Handle) {
    let statuses: Arc<Mutex<BTreeMap<u16, usize>>> = Arc::default();
    let counter = Arc::new(Mutex::new(0usize));
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..PtConfig::default()
    });
    let result = runner.run(&arb_input(), |input| {
        let n = {
            let mut g = counter.lock().unwrap();
            *g += 1;
            *g
        };
        let input = prepare(input, n);
        let r = handle.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(60),
                api.post_raw(input.path, input.body.clone()),
            )
            .await
        });
        let text = String::from_utf8_lossy(&input.body)
            .chars()
            .take(400)
            .collect::<String>();
        match r {
            Err(_) => Err(TestCaseError::fail(format!(
                "no answer within 60 s to POST {} {text}",
                input.path
            ))),
            Ok(Err(e)) => Err(TestCaseError::fail(format!(
                "POST {} broke the connection ({e}): {text}",
                input.path
            ))),
            Ok(Ok(resp)) => {
                *statuses.lock().unwrap().entry(resp.status).or_default() += 1;
                if resp.status >= 500 {
                    Err(TestCaseError::fail(format!(
                        "POST {} answered {} {}: {text}",
                        input.path, resp.status, resp.text
                    )))
                } else {
                    Ok(())
                }
            }
        }
    });
    if let Err(e) = result {
        o.fail(format!("task-body fuzzing: {e}"));
    }
    let total = *counter.lock().unwrap();
    o.fig(
        "task/OpenAI bodies posted (incl. shrinking) → statuses",
        format!("{total} → {:?}", statuses.lock().unwrap()),
    );
}

/// A valid YAML config with every section.
pub const VALID_YAML: &str = "bind: 127.0.0.1:8080
auth:
  token_env: AUTH_TOKEN
  optional: false
data_dir: /tmp/llorch
queue: { capacity: 64, full_policy: reject }
tasks: { retain_ms: 600000, max_retained: 10000 }
sessions: { ttl_ms: 600000, max_turns: 8 }
artifacts: { max_bytes: 1000, max_age_days: 30, max_artifact_bytes: 100 }
policy: { outbound: { allow: [\"*\"], deny: [], no_downloads: false } }
dev: { allow_cpu_inference: true, fake_gpus: \"24GiB:RTX 3090\" }
log: { filter: info, format: json }
shutdown_grace_s: 10
pools:
  - id: qwen7b
    engine: llamacpp
    model: /models/q.gguf
    engine_binary: llama-server
    devices: all
    replicas: 1
    slots: 4
    ctx: 8192
    flags: [\"--flash-attn\", \"on\"]
    queue_capacity: 8
    startup_timeout_s: 120
  - id: lan
    engine: vllm
    endpoint: http://10.0.0.20:8000
    devices: [0, 1]
";

/// The same as TOML.
pub const VALID_TOML: &str = "bind = \"127.0.0.1:8080\"
data_dir = \"/tmp/llorch\"
shutdown_grace_s = 10
[auth]
token_env = \"AUTH_TOKEN\"
optional = false
[queue]
capacity = 64
full_policy = \"drop-lru\"
[tasks]
retain_ms = 600000
[sessions]
ttl_ms = 600000
max_turns = 8
[dev]
allow_cpu_inference = true
[[pools]]
id = \"qwen7b\"
engine = \"llamacpp\"
model = \"/models/q.gguf\"
devices = [0]
slots = 4
ctx = 8192
";

/// Replacement tokens for mutations.
const ODD: &[&str] = &[
    "-1",
    "0",
    "1e999",
    "18446744073709551616",
    "4294967296",
    "\"\"",
    "~",
    "[]",
    "{}",
    "\"*\"",
    "!!binary aGk=",
    "&a x",
    "*a",
    "<<: *a",
    "? complex",
    "|",
    ">",
    "\"\\u0000\"",
    "nan",
    ".inf",
    "0x10",
    "true",
    "[0, -1]",
    "[[[[[[[[[[]]]]]]]]]]",
    "'a'",
    "@",
    "%YAML 1.2",
    "---",
    "...",
    "9999999999999999999999999999",
    "\"[::1]:0\"",
    "\"0.0.0.0:80\"",
    "\"256.1.1.1:1\"",
];

/// Arbitrary text, or a valid YAML/TOML config with a few lines mutated.
pub fn arb_config() -> impl Strategy<Value = (bool, String)> {
    let mutation = (0usize..40, 0usize..4, prop::sample::select(ODD), ".{0,12}");
    let mutated = (any::<bool>(), prop::collection::vec(mutation, 1..5)).prop_map(|(toml, ms)| {
        let base = if toml { VALID_TOML } else { VALID_YAML };
        let mut lines: Vec<String> = base.lines().map(str::to_owned).collect();
        for (line, op, odd, junk) in ms {
            let i = line % lines.len().max(1);
            match op {
                // Replace the value after the first `:`/`=` with an odd token.
                0 => {
                    let l = &lines[i];
                    let sep = if toml { '=' } else { ':' };
                    if let Some((k, _)) = l.split_once(sep) {
                        lines[i] = format!("{k}{sep} {odd}");
                    }
                }
                1 => {
                    lines.remove(i);
                    if lines.is_empty() {
                        lines.push(String::new());
                    }
                }
                2 => {
                    let l = lines[i].clone();
                    lines.insert(i, l);
                }
                _ => lines[i].push_str(&junk),
            }
        }
        (toml, lines.join("\n"))
    });
    prop_oneof![
        1 => (any::<bool>(), ".{0,200}"),
        1 => (any::<bool>(), prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned())),
        4 => mutated,
    ]
}

/// Arbitrary environment overrides.
fn arb_env() -> impl Strategy<Value = HashMap<String, String>> {
    let keys = prop::sample::select(vec![
        "LLORCH_ADDR",
        "LLORCH_DATA_DIR",
        "LLORCH_MODEL",
        "LLAMA_SERVER",
        "LLORCH_DEV_ALLOW_CPU_INFERENCE",
        "LLORCH_FAKE_GPUS",
        "AUTH_TOKEN",
        "AUTH_OPTIONAL",
        "LLORCH_CONFIG",
    ]);
    prop::collection::hash_map(keys.prop_map(str::to_owned), ".{0,30}", 0..4)
}

/// Everything the daemon derives from a config text (must never panic).
pub fn exercise_config(toml: bool, text: &str, env: HashMap<String, String>) {
    let path = Path::new(if toml { "fuzz.toml" } else { "fuzz.yaml" });
    if let Ok(mut cfg) = Config::from_str_for(path, text) {
        let _ = cfg.validate(true);
        let _ = cfg.validate(false);
        let _ = cfg.bind_addr();
        let _ = cfg.data_dir();
        let _ = serde_json::to_string(&cfg);
        let env = EnvOverrides::from_map(env);
        if env.apply(&mut cfg).is_ok() {
            let _ = env.token(&cfg);
            let _ = cfg.validate(true);
        }
    }
}

/// Runs config fuzzing only (no daemon).
pub fn fuzz_config(o: &mut Outcome, cases: u32) {
    let parsed = Arc::new(Mutex::new((0usize, 0usize)));
    let mut runner = TestRunner::new(PtConfig {
        cases,
        failure_persistence: None,
        ..PtConfig::default()
    });
    let p = parsed.clone();
    let result = runner.run(&(arb_config(), arb_env()), move |((toml, text), env)| {
        let path = Path::new(if toml { "f.toml" } else { "f.yaml" });
        let ok = Config::from_str_for(path, &text).is_ok();
        {
            let mut g = p.lock().unwrap();
            g.0 += 1;
            g.1 += usize::from(ok);
        }
        exercise_config(toml, &text, env);
        Ok(())
    });
    if let Err(e) = result {
        o.fail(format!("config fuzzing found a panic: {e}"));
    }
    let (n, ok) = *parsed.lock().unwrap();
    o.fig(
        "config texts (YAML/TOML: arbitrary, mutated valid) → parsed OK / panics",
        format!("{n} → {ok} / {}", usize::from(!o.passed())),
    );
}

/// Extreme values that pass parsing: each one starts a real daemon for a few seconds and then
/// SIGTERMs it. Target: the daemon refuses the value at start with a message, or runs and
/// stops cleanly; never a panic.
const EXTREMES: &[(&str, &str, &str)] = &[
    ("queue.capacity = u64::MAX", "queue: { capacity: 18446744073709551615 }\n", ""),
    ("queue.capacity = 0", "queue: { capacity: 0 }\n", ""),
    ("tasks.retain_ms, max_retained = u64::MAX", "tasks: { retain_ms: 18446744073709551615, max_retained: 18446744073709551615 }\n", ""),
    ("tasks.max_retained = 0", "tasks: { retain_ms: 0, max_retained: 0 }\n", ""),
    ("artifacts.* = u64::MAX", "artifacts: { max_bytes: 18446744073709551615, max_age_days: 18446744073709551615, max_artifact_bytes: 18446744073709551615 }\n", ""),
    ("artifacts.* = 0", "artifacts: { max_bytes: 0, max_age_days: 0, max_artifact_bytes: 0 }\n", ""),
    ("shutdown_grace_s = u64::MAX", "shutdown_grace_s: 18446744073709551615\n", ""),
    ("log.filter = garbage", "log: { filter: \"[[[=garbage\" }\n", ""),
    ("pool startup_timeout_s = u64::MAX", "", "    startup_timeout_s: 18446744073709551615\n"),
    ("pool queue_capacity = u64::MAX", "", "    queue_capacity: 18446744073709551615\n"),
    ("pool ctx = u32::MAX", "", "    ctx: 4294967295\n"),
];

/// Starts the daemon on each of [`EXTREMES`].
fn extreme_configs(o: &mut Outcome, ctx: &Ctx) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut refused = 0;
    let mut clean = 0;
    let mut outcomes = Vec::new();
    for (name, top, pool_extra) in EXTREMES {
        let dir = tempfile::tempdir().expect("tempdir");
        // The harness pool with the extreme pool field replacing its own.
        let mut pool = ctx.pool("tiny", 1, 512);
        if !pool_extra.is_empty() {
            let key = pool_extra.trim().split(':').next().unwrap_or("");
            pool = pool
                .lines()
                .filter(|l| !l.trim_start().starts_with(&format!("{key}:")))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                + pool_extra;
        }
        let cfg = format!(
            "bind: \"127.0.0.1:0\"\ndata_dir: \"{}\"\n{}",
            dir.path().join("data").display(),
            // The extreme value replaces the harness's own short shutdown grace.
            ctx.config(top, &[pool]).replacen(
                "shutdown_grace_s: 2\n",
                "",
                usize::from(top.contains("shutdown_grace_s"))
            )
        );
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, cfg).expect("write config");
        let mut child = match Command::new(&ctx.bin)
            .arg("--config")
            .arg(&path)
            .env("AUTH_TOKEN", &ctx.token)
            .env_remove("RUST_LOG")
            .env_remove("AUTH_OPTIONAL")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                o.fail(format!("{name}: cannot start the daemon: {e}"));
                continue;
            }
        };
        let log = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for s in streams {
            let log = log.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    let mut g = log.lock().unwrap();
                    g.push_str(&line);
                    g.push('\n');
                }
            }));
        }
        // Run until 2 s after it listens (its pool launches an engine meanwhile), or it exits.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut status = None;
        let mut listening_since = None;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
                break;
            }
            if listening_since.is_none() && log.lock().unwrap().contains("\"listening\"") {
                listening_since = Some(std::time::Instant::now());
            }
            if listening_since.is_some_and(|t| t.elapsed() > Duration::from_secs(2)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if status.is_none() {
            orch_harness::signal(child.id(), libc::SIGTERM);
            let stop = std::time::Instant::now() + Duration::from_secs(20);
            while std::time::Instant::now() < stop {
                if let Ok(Some(st)) = child.try_wait() {
                    status = Some(st);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let listened = log.lock().unwrap().contains("\"listening\"");
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for r in readers {
            let _ = r.join();
        }
        let text = log.lock().unwrap().clone();
        ctx.audit
            .scan(&format!("extreme config `{name}` log"), text.as_bytes());
        let panicked = text.contains("panicked");
        outcomes.push(format!(
            "{name}: {}",
            match (&status, listened, panicked) {
                (_, _, true) => "PANIC".to_owned(),
                (Some(st), false, _) => format!(
                    "refused ({st}): {}",
                    text.lines()
                        .rev()
                        .find(|l| l.starts_with("orchestratord:"))
                        .unwrap_or("")
                        .chars()
                        .take(120)
                        .collect::<String>()
                ),
                (Some(st), true, _) => format!("ran, stopped ({st})"),
                (None, _, _) => "did not stop".to_owned(),
            }
        ));
        let ok = !panicked
            && match status {
                Some(st) if !listened => {
                    refused += 1;
                    !st.success() && st.code().is_some()
                }
                Some(st) => {
                    clean += 1;
                    st.success()
                }
                None => false,
            };
        o.check(ok, || {
            let excerpt: String = text
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("orchestratord:") || l.contains("ERROR"))
                .take(4)
                .collect::<Vec<_>>()
                .join(" | ");
            format!(
                "extreme config `{name}`: listened {listened}, exit {status:?}, panic {panicked}: {excerpt}"
            )
        });
    }
    o.fig(
        "extreme-but-parseable config values started for real",
        format!(
            "{} cases: {refused} refused at start with a message, {clean} ran and stopped cleanly on SIGTERM",
            EXTREMES.len()
        ),
    );
    o.fig("extreme config outcomes", outcomes.join("; "));
}

/// Runs the scenario: config fuzzing, extreme config values, then task bodies against a
/// daemon.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("parser fuzzing");
    let cases = ctx.profile.fuzz_config_cases;
    o = tokio::task::spawn_blocking(move || {
        fuzz_config(&mut o, cases);
        o
    })
    .await
    .expect("config fuzzing thread");
    let c2 = ctx.clone();
    o = tokio::task::spawn_blocking(move || {
        extreme_configs(&mut o, &c2);
        o
    })
    .await
    .expect("extreme config thread");
    let sut = ctx.start(
        "parser-fuzz",
        ctx.options(ctx.config(
            "queue: { capacity: 32 }\ntasks: { retain_ms: 10000 }\n",
            &[ctx.pool("tiny", 2, 256)],
        )),
    );
    let api = sut.api();
    let handle = tokio::runtime::Handle::current();
    let cases = ctx.profile.fuzz_body_cases;
    o = tokio::task::spawn_blocking(move || {
        fuzz_daemon(&mut o, &api, cases, handle);
        o
    })
    .await
    .expect("fuzzing thread");
    let api = sut.api();
    let health = api.get("/health").await.map(|r| r.status).unwrap_or(0);
    o.check(health == 200, || {
        format!("daemon not healthy after fuzzing: {health}")
    });
    let logs = sut.logs();
    let panics = logs.lines().filter(|l| l.contains("panicked")).count();
    o.check(panics == 0, || {
        format!(
            "the daemon logged {panics} panic(s): {}",
            logs.lines().find(|l| l.contains("panicked")).unwrap_or("")
        )
    });
    o.fig("panics in the daemon log", panics);
    drop(sut);
    o
}
