//! Hardening harness for llama-orch (docs/RELIABILITY.md): scenarios that attack a real
//! `orchestratord` (which launches real `llama-server` replicas on the tiny test model) and
//! report figures.
//!
//! Every scenario is an `async fn run(&Ctx) -> Outcome`: it starts its own daemons, drives
//! them, collects figures and records every violated target as a failure (it does not stop at
//! the first one). Two entry points run them:
//! - `tests/short.rs`: the SHORT profile, one test per scenario, one at a time (so scenarios
//!   never share the two CPU cores of the CI machine), as part of `cargo test --workspace`;
//! - `src/main.rs`: `cargo run --release -p chaos -- --profile long` for the LONG profile,
//!   whose figures go into `docs/RELIABILITY.md`.
//!
//! All daemons of a run share one random bearer token; [`Audit`] scans every daemon log, every
//! response body and every file in every data directory for it.

#![warn(missing_docs)]

pub mod auth_matrix;
pub mod daemon_crash;
pub mod engine_chaos;
pub mod netns;
pub mod overload;
pub mod parser_fuzz;
pub mod schema_fuzz;
pub mod secrets;
pub mod slow_clients;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use orch_harness::{alive, signal};
pub use orch_harness::{Daemon, DaemonOptions, Engine, SseEvent};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// How hard to push. [`Profile::short`] is what CI runs; [`Profile::long`] is the local soak.
#[derive(Clone, Debug)]
pub struct Profile {
    /// `short` or `long`.
    pub name: &'static str,
    /// Engine replicas SIGKILLed mid-stream.
    pub engine_kills: usize,
    /// Engine replicas frozen (SIGSTOP) mid-stream.
    pub engine_hangs: usize,
    /// Daemon SIGKILL / restart cycles on one data directory.
    pub crash_cycles: usize,
    /// Streams in flight when the daemon is killed.
    pub crash_streams: usize,
    /// Queue capacity in the overload scenario (the burst is 10× this).
    pub overload_capacity: usize,
    /// Bursts per queue policy.
    pub overload_rounds: usize,
    /// Readers that never read, held during the speed comparison.
    pub stalled_readers: usize,
    /// Rounds of the speed comparison (the median of the within-round ratios counts).
    pub speed_samples: usize,
    /// Least median within-round ratio of a normal reader's tokens/s with stalled readers
    /// to without. Far lower in the short profile: on a shared 2-core CI machine the engine's
    /// own speed varies ±30% from one task to the next, while the defect this guards against
    /// (head-of-line blocking behind a stalled reader) stalls the stream outright; the relay
    /// check, which compares a reader with the daemon on the same task, stays strict.
    pub min_speed_ratio: f64,
    /// Length of the slow/vanished-client soak.
    pub soak: Duration,
    /// schemathesis `--max-examples` per operation.
    pub schema_max_examples: u32,
    /// Hard limit for the schemathesis process.
    pub schema_timeout: Duration,
    /// proptest cases of task bodies posted to the daemon.
    pub fuzz_body_cases: u32,
    /// proptest cases of config texts.
    pub fuzz_config_cases: u32,
}

impl Profile {
    /// The CI profile: the whole set in a few minutes on two cores.
    pub fn short() -> Self {
        Self {
            name: "short",
            engine_kills: 10,
            engine_hangs: 1,
            crash_cycles: 1,
            crash_streams: 4,
            overload_capacity: 8,
            overload_rounds: 1,
            stalled_readers: 50,
            speed_samples: 3,
            min_speed_ratio: 0.4,
            soak: Duration::from_secs(30),
            schema_max_examples: 25,
            schema_timeout: Duration::from_secs(150),
            fuzz_body_cases: 600,
            fuzz_config_cases: 5_000,
        }
    }

    /// The local profile: 100 engine kills, repeated daemon crashes, a soak of many minutes.
    pub fn long() -> Self {
        Self {
            name: "long",
            engine_kills: 100,
            engine_hangs: 3,
            crash_cycles: 10,
            crash_streams: 8,
            overload_capacity: 64,
            overload_rounds: 5,
            stalled_readers: 50,
            speed_samples: 7,
            min_speed_ratio: 0.8,
            soak: Duration::from_secs(600),
            schema_max_examples: 200,
            schema_timeout: Duration::from_secs(900),
            fuzz_body_cases: 5_000,
            fuzz_config_cases: 50_000,
        }
    }

    /// By name.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "short" => Some(Self::short()),
            "long" => Some(Self::long()),
            _ => None,
        }
    }
}

/// What one scenario found: figures for the report and every violated target.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Scenario name.
    pub scenario: String,
    /// `(what, value)` pairs, in order.
    pub figures: Vec<(String, String)>,
    /// Violated targets (the first 100; `failures_total` counts all).
    pub failures: Vec<String>,
    /// All violations.
    pub failures_total: usize,
    /// Wall time.
    pub took: Duration,
}

impl Outcome {
    /// An empty outcome for `scenario`.
    pub fn new(scenario: &str) -> Self {
        Self {
            scenario: scenario.into(),
            ..Self::default()
        }
    }

    /// Records a figure.
    pub fn fig(&mut self, what: &str, value: impl Display) {
        self.figures.push((what.into(), value.to_string()));
    }

    /// Records a failure.
    pub fn fail(&mut self, msg: impl Into<String>) {
        self.failures_total += 1;
        if self.failures.len() < 100 {
            let m = msg.into();
            eprintln!("[chaos:{}] FAIL {m}", self.scenario);
            self.failures.push(m);
        }
    }

    /// Records a failure unless `ok`; returns `ok`.
    pub fn check(&mut self, ok: bool, msg: impl FnOnce() -> String) -> bool {
        if !ok {
            self.fail(msg());
        }
        ok
    }

    /// Whether every target held.
    pub fn passed(&self) -> bool {
        self.failures_total == 0
    }

    /// Markdown: a heading, the figures as a list, the failures.
    pub fn render(&self) -> String {
        let mut s = format!(
            "### {} — {} ({:.0} s)\n",
            self.scenario,
            if self.passed() { "PASS" } else { "FAIL" },
            self.took.as_secs_f64()
        );
        for (k, v) in &self.figures {
            s.push_str(&format!("- {k}: {v}\n"));
        }
        if !self.passed() {
            s.push_str(&format!("- failures ({}):\n", self.failures_total));
            for f in &self.failures {
                s.push_str(&format!("  - {f}\n"));
            }
        }
        s
    }

    /// Panics with the rendered report when a target was violated (for `cargo test`).
    pub fn assert_passed(&self) {
        eprintln!("{}", self.render());
        assert!(self.passed(), "{}", self.render());
    }
}

/// Scans everything the run produced for the token.
#[derive(Clone)]
pub struct Audit(Arc<Mutex<AuditState>>);

struct AuditState {
    needles: Vec<Vec<u8>>,
    sources: u64,
    bytes: u64,
    leaks: Vec<String>,
}

impl Audit {
    /// An audit for `token`: the token itself, and its two halves (a truncated copy is a leak too).
    pub fn new(token: &str) -> Self {
        let half = token.len() / 2;
        let needles = [token, &token[..half], &token[half..]]
            .iter()
            .filter(|s| s.len() >= 8)
            .map(|s| s.as_bytes().to_vec())
            .collect();
        Self(Arc::new(Mutex::new(AuditState {
            needles,
            sources: 0,
            bytes: 0,
            leaks: Vec::new(),
        })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuditState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scans one source (a log, a body, a file).
    pub fn scan(&self, source: &str, bytes: &[u8]) {
        let needles = self.lock().needles.clone();
        let hit = needles
            .iter()
            .find(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()));
        let mut g = self.lock();
        g.sources += 1;
        g.bytes += bytes.len() as u64;
        if let Some(n) = hit {
            let pos = bytes
                .windows(n.len())
                .position(|w| w == n.as_slice())
                .unwrap_or(0);
            let from = pos.saturating_sub(80);
            let to = (pos + n.len() + 40).min(bytes.len());
            let context = String::from_utf8_lossy(&bytes[from..to])
                .replace(std::str::from_utf8(n).unwrap_or(""), "<TOKEN>");
            let msg = format!("token found in {source}: …{context}…");
            eprintln!("[chaos:audit] {msg}");
            if g.leaks.len() < 50 {
                g.leaks.push(msg);
            }
        }
    }

    /// Scans every regular file under `dir`.
    pub fn scan_dir(&self, label: &str, dir: &Path) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                self.scan_dir(label, &p);
            } else if ft.is_file() {
                if let Ok(b) = std::fs::read(&p) {
                    self.scan(&format!("{label} file {}", p.display()), &b);
                }
            }
        }
    }

    /// Leaks found so far.
    pub fn leaks(&self) -> Vec<String> {
        self.lock().leaks.clone()
    }

    /// Sources and bytes scanned so far.
    pub fn scanned(&self) -> (u64, u64) {
        let g = self.lock();
        (g.sources, g.bytes)
    }

    /// Adds the audit's figures to `o` and fails it on any leak.
    pub fn report(&self, o: &mut Outcome) {
        let (sources, bytes) = self.scanned();
        let leaks = self.leaks();
        o.fig(
            "secrets: sources scanned (daemon logs, response bodies, data-dir files)",
            format!(
                "{sources} ({:.1} MB), token found in {}",
                bytes as f64 / 1e6,
                leaks.len()
            ),
        );
        for l in leaks {
            o.fail(l);
        }
    }
}

/// Everything a scenario needs: the daemon binary, the engine, the run's token and profile.
pub struct Ctx {
    /// `orchestratord` binary.
    pub bin: PathBuf,
    /// llama-server and the tiny model.
    pub engine: Engine,
    /// The bearer token every daemon of this run uses.
    pub token: String,
    /// How hard to push.
    pub profile: Profile,
    /// The secrets audit of this run.
    pub audit: Audit,
}

impl Ctx {
    /// Builds (or finds) the daemon binary and the engine; panics with the fix if missing.
    pub fn new(profile: Profile) -> Self {
        let token = format!("chaos-{}", hex::encode(rand::random::<[u8; 16]>()));
        Self {
            bin: orch_harness::daemon_bin().unwrap_or_else(|e| panic!("{e}")),
            engine: orch_harness::engine(),
            audit: Audit::new(&token),
            token,
            profile,
        }
    }

    /// YAML config (without `bind`/`data_dir`) with CPU engines, a short shutdown grace, an
    /// outbound policy that denies everything (fuzzers must never make the daemon call out),
    /// `extra` and the given pools.
    pub fn config(&self, extra: &str, pools: &[String]) -> String {
        let mut s = format!(
            "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npolicy: {{ outbound: {{ allow: [], deny: [\"*\"], no_downloads: true }} }}\n{extra}"
        );
        if !pools.is_empty() {
            s.push_str("pools:\n");
            for p in pools {
                s.push_str(p);
            }
        }
        s
    }

    /// A pool of the test model.
    pub fn pool(&self, id: &str, slots: u32, ctx: u32) -> String {
        orch_harness::llama_pool(id, &self.engine, slots, 1, ctx)
    }

    /// Options with this run's token.
    pub fn options(&self, config: String) -> DaemonOptions {
        DaemonOptions {
            config,
            token: Some(self.token.clone()),
            ..DaemonOptions::default()
        }
    }

    /// Starts a daemon whose logs and data directory are audited when it goes away.
    pub fn start(&self, label: &str, opts: DaemonOptions) -> Sut {
        let d = Daemon::start(&self.bin, opts);
        Sut {
            d: Some(d),
            audit: self.audit.clone(),
            label: label.into(),
            token: Some(self.token.clone()),
        }
    }
}

/// A daemon under test. On drop it is stopped (SIGTERM) and its log and data directory are
/// scanned for the token.
pub struct Sut {
    d: Option<Daemon>,
    audit: Audit,
    label: String,
    token: Option<String>,
}

impl Sut {
    /// The daemon.
    pub fn daemon(&self) -> &Daemon {
        self.d.as_ref().expect("daemon present")
    }

    /// The daemon, mutably (for `kill9`).
    pub fn daemon_mut(&mut self) -> &mut Daemon {
        self.d.as_mut().expect("daemon present")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> String {
        self.daemon().base.clone()
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.daemon().data_dir.clone()
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.daemon().pid()
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        self.daemon().logs()
    }

    /// A client with the token.
    pub fn api(&self) -> Api {
        Api::new(&self.base(), self.token.clone(), self.audit.clone())
    }

    /// A client without a token.
    pub fn anon(&self) -> Api {
        Api::new(&self.base(), None, self.audit.clone())
    }

    /// SIGKILLs the daemon (its engines die with it: `PR_SET_PDEATHSIG`).
    pub fn kill9(&mut self) {
        self.daemon_mut().kill9();
    }

    /// Stops the daemon (SIGTERM, at most 20 s) and audits its log and data directory.
    /// Returns whether it exited in time. The data directory lives until the `Sut` is dropped.
    pub fn stop_and_audit(&mut self) -> bool {
        let Some(d) = self.d.as_ref() else {
            return true;
        };
        let pid = d.pid();
        let mut exited = true;
        if pid != 0 && alive(pid) {
            signal(pid, libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            exited = !alive(pid);
        }
        // The log readers may still hold the last lines.
        std::thread::sleep(Duration::from_millis(100));
        self.audit
            .scan(&format!("{} daemon log", self.label), d.logs().as_bytes());
        self.audit
            .scan_dir(&format!("{} data dir", self.label), &d.data_dir);
        exited
    }
}

impl Drop for Sut {
    fn drop(&mut self) {
        self.stop_and_audit();
        // Dropping the harness daemon reaps the process and removes its temporary directory.
        self.d.take();
    }
}

/// One HTTP answer, body read in full.
#[derive(Debug)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: reqwest::header::HeaderMap,
    /// Body as text.
    pub text: String,
}

impl Resp {
    /// The body as JSON (`Null` if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or(Value::Null)
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    /// `code` of an error envelope.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_owned()
    }
}

/// An HTTP client for one daemon; every body it reads is audited for the token.
#[derive(Clone)]
pub struct Api {
    /// `http://host:port`.
    pub base: String,
    client: reqwest::Client,
    token: Option<String>,
    audit: Audit,
}

impl Api {
    /// A client for `base`, sending `token` when given.
    pub fn new(base: &str, token: Option<String>, audit: Audit) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("http client"),
            token,
            audit,
        }
    }

    /// A request to `path` with the token (if any).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    /// Sends `r`, reads the body, audits it.
    pub async fn send(&self, r: reqwest::RequestBuilder) -> anyhow::Result<Resp> {
        let resp = r.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        self.audit.scan("response body", &bytes);
        Ok(Resp {
            status,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }

    /// GET.
    pub async fn get(&self, path: &str) -> anyhow::Result<Resp> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// POST JSON.
    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Resp> {
        self.send(self.request(reqwest::Method::POST, path).json(body))
            .await
    }

    /// POST raw bytes as `application/json`.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> anyhow::Result<Resp> {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, body: &Value) -> anyhow::Result<Resp> {
        self.post("/v1/tasks", body).await
    }

    /// Prometheus text.
    pub async fn metrics(&self) -> String {
        self.get("/metrics")
            .await
            .map(|r| r.text)
            .unwrap_or_default()
    }

    /// A pool's replicas (`GET /v1/pools/{id}/health`).
    pub async fn replicas(&self, pool: &str) -> Vec<Value> {
        match self.get(&format!("/v1/pools/{pool}/health")).await {
            Ok(r) => r.json()["replicas"].as_array().cloned().unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Follows a task's SSE stream until it ends, breaks, or `limit` passes. `progress` gets
    /// the number of `token` events seen so far.
    pub async fn follow(
        &self,
        task_id: &str,
        limit: Duration,
        progress: Option<tokio::sync::watch::Sender<u64>>,
    ) -> StreamResult {
        let deadline = tokio::time::Instant::now() + limit;
        let opened = Instant::now();
        let req = self.request(reqwest::Method::GET, &format!("/v1/tasks/{task_id}/stream"));
        let mut out = StreamResult {
            status: 0,
            events: Vec::new(),
            end: StreamEnd::TimedOut,
            tokens: 0,
            opened,
            first_token: None,
            last_token: None,
        };
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return out,
            Ok(Err(e)) => {
                out.end = StreamEnd::NotOpened(e.to_string());
                return out;
            }
            Ok(Ok(r)) => r,
        };
        out.status = resp.status().as_u16();
        if out.status != 200 {
            let body = resp.bytes().await.unwrap_or_default();
            self.audit.scan("stream error body", &body);
            out.end = StreamEnd::NotOpened(format!(
                "HTTP {}: {}",
                out.status,
                String::from_utf8_lossy(&body)
            ));
            return out;
        }
        let mut s = resp.bytes_stream().eventsource();
        loop {
            match tokio::time::timeout_at(deadline, s.next()).await {
                Err(_) => {
                    out.end = StreamEnd::TimedOut;
                    break;
                }
                Ok(None) => {
                    out.end = StreamEnd::Eof;
                    break;
                }
                Ok(Some(Err(e))) => {
                    out.end = StreamEnd::Broken(e.to_string());
                    break;
                }
                Ok(Some(Ok(e))) => {
                    self.audit.scan("stream event", e.data.as_bytes());
                    if e.event == "token" {
                        let now = Instant::now();
                        out.first_token.get_or_insert(now);
                        out.last_token = Some(now);
                        out.tokens += 1;
                        if let Some(p) = &progress {
                            p.send_replace(out.tokens);
                        }
                    }
                    out.events.push(SseEvent {
                        event: e.event,
                        data: e.data,
                    });
                }
            }
        }
        out
    }
}

/// How a stream ended, from the client's side.
#[derive(Clone, Debug, PartialEq)]
pub enum StreamEnd {
    /// The server closed the response cleanly.
    Eof,
    /// The connection broke (reset, truncated chunked body).
    Broken(String),
    /// The stream did not end within the limit: a hung stream.
    TimedOut,
    /// No stream: connection refused, or a non-200 answer.
    NotOpened(String),
}

/// A followed stream.
#[derive(Clone, Debug)]
pub struct StreamResult {
    /// HTTP status (0: none).
    pub status: u16,
    /// Events received.
    pub events: Vec<SseEvent>,
    /// How it ended.
    pub end: StreamEnd,
    /// `token` events received.
    pub tokens: u64,
    /// When the request was sent.
    pub opened: Instant,
    /// First token's arrival.
    pub first_token: Option<Instant>,
    /// Last token's arrival.
    pub last_token: Option<Instant>,
}

impl StreamResult {
    /// The terminal event (`end` or `error`) if the stream has one as its last event.
    pub fn terminal(&self) -> Option<&SseEvent> {
        self.events
            .last()
            .filter(|e| e.event == "end" || e.event == "error")
    }

    /// The terminal event's name, or `none`.
    pub fn terminal_name(&self) -> &str {
        self.terminal().map(|e| e.event.as_str()).unwrap_or("none")
    }

    /// `code` of a terminal `error`.
    pub fn error_code(&self) -> Option<String> {
        self.terminal()
            .filter(|e| e.event == "error")
            .and_then(|e| e.json()["code"].as_str().map(str::to_owned))
    }

    /// Decode speed seen by the client: tokens after the first per second.
    pub fn tokens_per_s(&self) -> Option<f64> {
        let (a, b) = (self.first_token?, self.last_token?);
        let s = b.duration_since(a).as_secs_f64();
        (self.tokens > 1 && s > 0.0).then(|| (self.tokens - 1) as f64 / s)
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "status {} end {:?} tokens {} terminal {} {}",
            self.status,
            self.end,
            self.tokens,
            self.terminal_name(),
            self.terminal().map(|e| e.data.as_str()).unwrap_or("")
        )
    }
}

/// A completion task body for model `tiny`.
pub fn task(id: &str, max_tokens: u32, seed: u64) -> Value {
    json!({
        "task_id": id, "model_ref": "tiny", "priority": "interactive",
        "prompt": "Once upon a time", "max_tokens": max_tokens, "seed": seed, "temperature": 0.8
    })
}

/// Sum of the samples of metric `name` whose label set contains every `labels` fragment.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if !labels.iter().all(|l| rest.contains(l)) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Polls `f` every 50 ms until it is true or `limit` passes; returns whether it became true.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `f` every 50 ms until it yields a value or `limit` passes.
pub async fn poll_until<T, F, Fut>(limit: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `sha256:<hex>` of `bytes` (the artifact id scheme).
pub fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Median of `v` (0 when empty).
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Percentile `p` (0..=100) of `v` by nearest rank (0 when empty).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// Runs one scenario, timing it and turning a panic into a failure.
pub async fn run_scenario<F, Fut>(name: &str, f: F) -> Outcome
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Outcome> + Send + 'static,
{
    let t0 = Instant::now();
    let mut o = match tokio::spawn(f()).await {
        Ok(o) => o,
        Err(e) => {
            let mut o = Outcome::new(name);
            let msg = e
                .try_into_panic()
                .ok()
                .and_then(|p| {
                    p.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                })
                .unwrap_or_else(|| "the scenario task was cancelled".into());
            o.fail(format!("scenario panicked: {msg}"));
            o
        }
    };
    o.took = t0.elapsed();
    o
}

/// Scenario names, in the order the long profile runs them.
pub const SCENARIOS: &[&str] = &[
    "engine-chaos",
    "daemon-crash",
    "overload",
    "slow-clients",
    "schema-fuzz",
    "parser-fuzz",
    "auth-matrix",
    "secrets",
];

/// Runs the scenario called `name` (one of [`SCENARIOS`]).
pub async fn run_named(name: &str, ctx: Arc<Ctx>) -> Outcome {
    let n = name.to_owned();
    run_scenario(name, move || async move {
        match n.as_str() {
            "engine-chaos" => engine_chaos::run(ctx).await,
            "daemon-crash" => daemon_crash::run(ctx).await,
            "overload" => overload::run(ctx).await,
            "slow-clients" => slow_clients::run(ctx).await,
            "schema-fuzz" => schema_fuzz::run(ctx).await,
            "parser-fuzz" => parser_fuzz::run(ctx).await,
            "auth-matrix" => auth_matrix::run(ctx).await,
            "secrets" => secrets::run(ctx).await,
            other => {
                let mut o = Outcome::new(other);
                o.fail(format!(
                    "no scenario `{other}`; known: {}",
                    SCENARIOS.join(", ")
                ));
                o
            }
        }
    })
    .await
}

/// One scenario in the short profile with the secrets audit of its daemons and bodies
/// (what each test of `tests/short.rs` runs); panics with the report on any violated target.
pub async fn run_short(name: &str) {
    let ctx = Arc::new(Ctx::new(Profile::short()));
    let mut o = run_named(name, ctx.clone()).await;
    ctx.audit.report(&mut o);
    o.assert_passed();
}
