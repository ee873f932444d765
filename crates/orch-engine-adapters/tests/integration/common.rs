//! Test support: a real `llama-server` on the tiny test model, and a fixture server that
//! replays recorded wire formats over real HTTP.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;

/// A `llama-server` we started; killed on drop.
pub struct LlamaServer {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl LlamaServer {
    /// Starts the provisioned llama-server (fails with the provisioning command when it is
    /// missing, never skips) with `slots` slots of `ctx_per_slot` context each.
    pub fn start(slots: u32, ctx_per_slot: u32) -> Self {
        Self::start_with(slots, ctx_per_slot, &[])
    }

    /// [`Self::start`] with extra command-line arguments.
    pub fn start_with(slots: u32, ctx_per_slot: u32, extra: &[&str]) -> Self {
        Self::start_model(&orch_harness::engine().model, slots, ctx_per_slot, extra)
    }

    /// [`Self::start_with`] on another model (e.g. `orch_harness::chat_model()`, the real one).
    pub fn start_model(model: &Path, slots: u32, ctx_per_slot: u32, extra: &[&str]) -> Self {
        let e = orch_harness::Engine {
            model: model.to_owned(),
            ..orch_harness::engine()
        };
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("llama-server.log");
        let port = free_port();
        let child = Command::new(&e.llama_server)
            .args(["-m"])
            .arg(&e.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["-np", &slots.to_string()])
            .args(["-c", &(ctx_per_slot * slots).to_string()])
            .args(["-t", "1"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn llama-server");
        let s = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            _dir: dir,
        };
        s.wait_healthy(Duration::from_secs(60));
        s
    }

    fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let url = format!("{}/health", self.base);
        loop {
            if let Ok(r) = probe::get_ok(&url) {
                if r {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "llama-server did not become healthy; log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILLs the server (a crash).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking GET over std (no runtime needed): whether the answer is 200.
mod probe {
    use std::io::{Read, Write};
    use std::time::Duration;

    pub fn get_ok(url: &str) -> std::io::Result<bool> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) = rest
            .split_once('/')
            .map(|(h, p)| (h, format!("/{p}")))
            .unwrap_or((rest, "/".into()));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        Ok(buf.starts_with("HTTP/1.1 200") || buf.starts_with("HTTP/1.0 200"))
    }
}

/// The fixture file `name` from `tests/fixtures`.
pub fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// How the fixture server answers one route.
#[derive(Clone)]
pub enum Reply {
    /// JSON body with a status.
    Json(u16, Vec<u8>),
    /// `text/event-stream`, sent in small pieces (so framing spans reads).
    Sse(Vec<u8>),
    /// `text/event-stream` that breaks off (the connection is reset) after `bytes` bytes.
    SseBreaks(Vec<u8>, usize),
    /// Plain text (Prometheus metrics).
    Text(Vec<u8>),
    /// The first reply when the JSON request body has this top-level key, else the second
    /// (a server that refuses a field).
    IfBodyHas(&'static str, Box<Reply>, Box<Reply>),
}

/// One request the fixture server received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Method and path with query, e.g. `POST /generate_stream`.
    pub route: String,
    /// The body as JSON (`Null` when it is not).
    pub body: serde_json::Value,
}

#[derive(Clone, Default)]
struct FixtureState {
    routes: Arc<Vec<(String, Reply)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A tiny axum server replaying fixtures: `routes` maps `METHOD /path` to a reply; anything
/// else is 404. Requests are recorded.
pub struct FixtureServer {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl FixtureServer {
    /// Starts it on a free port.
    pub async fn start(routes: Vec<(&str, Reply)>) -> Self {
        let state = FixtureState {
            routes: Arc::new(routes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()),
            seen: Arc::default(),
        };
        let seen = state.seen.clone();
        let app = Router::new().fallback(handle).with_state(state);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, seen, task }
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The body of the last request to `route`.
    pub fn last_body(&self, route: &str) -> serde_json::Value {
        self.seen()
            .into_iter()
            .rev()
            .find(|s| s.route == route)
            .unwrap_or_else(|| panic!("no request to {route}; saw {:?}", self.seen()))
            .body
    }
}

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(st): State<FixtureState>, req: Request) -> Response {
    let route = format!(
        "{} {}",
        req.method(),
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    st.seen.lock().unwrap().push(Seen {
        route: route.clone(),
        body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    });
    let Some((_, reply)) = st.routes.iter().find(|(k, _)| *k == route) else {
        return (StatusCode::NOT_FOUND, "no such fixture route").into_response();
    };
    let mut reply = reply.clone();
    while let Reply::IfBodyHas(key, yes, no) = reply {
        let has = st
            .seen
            .lock()
            .unwrap()
            .last()
            .is_some_and(|s| s.body.get(key).is_some());
        reply = if has { *yes } else { *no };
    }
    match reply {
        Reply::Json(status, b) => (
            StatusCode::from_u16(status).unwrap(),
            [(header::CONTENT_TYPE, "application/json")],
            b,
        )
            .into_response(),
        Reply::Text(b) => {
            ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], b).into_response()
        }
        Reply::Sse(b) => sse(b, None),
        Reply::SseBreaks(b, n) => sse(b, Some(n)),
        Reply::IfBodyHas(..) => unreachable!("resolved above"),
    }
}

fn sse(bytes: Vec<u8>, break_after: Option<usize>) -> Response {
    let cut = break_after.unwrap_or(bytes.len()).min(bytes.len());
    let pieces: Vec<Result<Bytes, std::io::Error>> = bytes[..cut]
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .chain(break_after.map(|_| Err(std::io::Error::other("fixture: connection broken"))))
        .collect();
    let stream = futures::stream::iter(pieces).then(|p| async move {
        // Let pieces travel as separate reads.
        tokio::time::sleep(Duration::from_millis(1)).await;
        p
    });
    (
        [(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}
