//! The in-process test tier: the real router over a real [`AppState`] (store in a temp dir,
//! pool manager, dispatchers, background loops), with every pool's engine replaced by the
//! [`FakeEngine`] test double through the pool manager's adapter factory. Requests go in with
//! `tower::ServiceExt::oneshot`; tests look only at what comes out over HTTP (status, headers,
//! JSON, SSE) and at the fake engine. No llama-server, no sockets.
//!
//! Pools are `endpoint: http://127.0.0.1:9` pools: nothing is launched, the loopback endpoint
//! passes the outbound policy, and the supervisor's health watch marks the replica ready as
//! soon as the fake engine answers.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use orch_config::{Config, PoolConfig};
use orch_engine_adapters::EngineAdapter;
use orch_pool_manager::{AdapterFactory, PoolManager, StartOptions};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::auth::Auth;
use crate::state::AppState;

pub mod fake_engine;

mod admission_tests;
mod anthropic_tests;
mod artifacts_tests;
mod budget_tests;
mod control_tests;
mod on_demand_tests;
mod openai_tests;
mod queue_truth_tests;
mod responses_tests;
mod routing_tests;
mod sessions_tests;
mod stream_tests;
mod validation_tests;

pub use fake_engine::FakeEngine;

/// How long any wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The peer address requests come from unless a test sets another.
pub const LOOPBACK: ([u8; 4], u16) = ([127, 0, 0, 1], 40000);

/// What [`TestApp::start_with`] may inject.
#[derive(Default)]
pub struct Options {
    /// The daemon's bearer token (what `AUTH_TOKEN` would give `orchestratord::run`).
    pub token: Option<String>,
    /// Engines for some pools, by pool id (e.g. [`FakeEngine::unhealthy`]); every other pool
    /// gets a fresh [`FakeEngine::new`].
    pub engines: Vec<(&'static str, Arc<FakeEngine>)>,
}

/// A daemon in-process.
pub struct TestApp {
    router: Router,
    state: AppState,
    engines: HashMap<String, Arc<FakeEngine>>,
    token: Option<String>,
    _dir: tempfile::TempDir,
}

/// A buffered (non-streaming) response.
#[derive(Debug)]
pub struct Resp {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
    /// The body as text.
    pub text: String,
}

impl Resp {
    /// The error envelope's `code` (empty when absent).
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    /// The error envelope's `message` (empty when absent).
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or("")
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Fails the test unless the status is `want`.
    #[track_caller]
    pub fn expect_status(&self, want: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            want,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Fails the test unless this is the error envelope with `status` and `code` whose message
    /// contains `message_part`.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str, message_part: &str) -> &Self {
        self.expect_status(status);
        assert_eq!(self.code(), code, "body: {}", self.text);
        assert!(
            self.message().contains(message_part),
            "message {:?} lacks {message_part:?}",
            self.message()
        );
        assert!(
            self.body["retriable"].is_boolean(),
            "envelope without `retriable`: {}",
            self.text
        );
        self
    }
}

/// One server-sent event, as the end-to-end harness parses it.
pub use orch_harness::SseEvent;

type EventStream = Pin<Box<dyn Stream<Item = Result<SseEvent, String>> + Send>>;

/// A streaming response read event by event, parsed like SSE clients do
/// (`eventsource-stream`, which splits lines only on CR and LF).
pub struct SseReader {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: HeaderMap,
    events: EventStream,
}

impl SseReader {
    /// The next event; `None` once the stream ended. Fails the test after [`WAIT`].
    pub async fn next(&mut self) -> Option<SseEvent> {
        let t0 = Instant::now();
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(ev))) => Some(ev),
            Ok(Some(Err(e))) => panic!("broken event stream: {e}"),
            Ok(None) => None,
            Err(_) => panic!("no event within {:?}", t0.elapsed()),
        }
    }

    /// Every remaining event, until the stream ends.
    pub async fn collect(mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while let Some(ev) = self.next().await {
            out.push(ev);
        }
        out
    }
}

/// The event names of a stream, `metrics` left out (they interleave by timing).
pub fn names(events: &[SseEvent]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e.event.as_str())
        .filter(|n| *n != "metrics")
        .collect()
}

/// The texts of a task stream's `token` events.
pub fn token_texts(events: &[SseEvent]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.event == "token")
        .map(|e| e.json()["t"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A task body: completion of prompt `id` (so the fake engine's prompts show dispatch order) on
/// pool `p1`, interactive, 3 tokens.
pub fn task(id: &str) -> Value {
    json!({
        "task_id": id,
        "model_ref": "p1",
        "priority": "interactive",
        "prompt": id,
        "max_tokens": 3,
    })
}

/// `base` with the keys of `patch` set (a `null` in `patch` removes the key).
pub fn with(mut base: Value, patch: Value) -> Value {
    if let (Some(b), Value::Object(p)) = (base.as_object_mut(), patch) {
        for (k, v) in p {
            if v.is_null() {
                b.remove(&k);
            } else {
                b.insert(k, v);
            }
        }
    }
    base
}

/// One pool's YAML: an `endpoint:` pool (served by the fake engine) with `slots` slots and 256
/// tokens of context per slot, `engine: llamacpp` unless `extra` names one. `extra` holds more
/// keys of the pool, one per entry (`"model: /models/qwen-7b.gguf"`).
pub fn pool(id: &str, slots: u32, extra: &[&str]) -> String {
    let mut y = format!("  - id: {id}\n    endpoint: http://127.0.0.1:9\n    slots: {slots}\n");
    if !extra.iter().any(|e| e.starts_with("engine:")) {
        y.push_str("    engine: llamacpp\n");
    }
    if !extra.iter().any(|e| e.starts_with("ctx:")) {
        y.push_str("    ctx: 256\n");
    }
    for e in extra {
        y.push_str(&format!("    {e}\n"));
    }
    y
}

/// A config file: `top` (top-level YAML, may be empty) and the pools.
pub fn yaml(top: &str, pools: &[String]) -> String {
    format!("{top}\npools:\n{}", pools.concat())
}

/// Polls `f` until it yields a value, failing the test after [`WAIT`]; logs how long it took.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = f().await {
            eprintln!("{what}: after {:?}", t0.elapsed());
            return v;
        }
        assert!(
            t0.elapsed() < WAIT,
            "{what}: not reached after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl TestApp {
    /// A daemon on `config_yaml` (no token), every pool on a fresh fake engine; returns once
    /// every pool is ready (or, for an unhealthy engine, has reported its error).
    pub async fn start(config_yaml: &str) -> Self {
        Self::start_with(config_yaml, Options::default()).await
    }

    /// [`TestApp::start`] with a token and/or chosen engines.
    pub async fn start_with(config_yaml: &str, opts: Options) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for the data directory");
        let mut cfg = Config::from_str_for(Path::new("test.yaml"), config_yaml)
            .expect("the test config parses");
        cfg.data_dir = Some(dir.path().join("data"));
        cfg.validate(opts.token.is_some())
            .expect("the test config is valid");
        let mut engines: HashMap<String, Arc<FakeEngine>> = opts
            .engines
            .into_iter()
            .map(|(id, e)| (id.to_owned(), e))
            .collect();
        for p in &cfg.pools {
            engines.entry(p.id.clone()).or_default();
        }
        let table = Arc::new(engines.clone());
        let factory: AdapterFactory = Arc::new(move |p: &PoolConfig, url: &str| {
            let e = table
                .get(&p.id)
                .cloned()
                .ok_or_else(|| format!("no fake engine for pool `{}`", p.id))?;
            e.bind(p.engine.as_str(), url);
            Ok(e as Arc<dyn EngineAdapter>)
        });
        let token = opts.token;

        // What `crate::run` does before it binds the listener; keep the two in step.
        let services = crate::state::Services::open(&mut cfg, token.as_deref())
            .await
            .expect("the store opens in the temp dir and the config passes the startup checks");
        let pools = PoolManager::start_with(
            &cfg,
            StartOptions {
                inventory: None,
                adapters: Some(factory),
            },
        )
        .expect("the pool manager starts");
        let auth = Auth::new(token.clone(), cfg.auth.optional);
        let state = AppState::new(cfg, pools, auth, services);
        let router = crate::http::router(state.clone());

        let app = Self {
            router,
            state,
            engines,
            token,
            _dir: dir,
        };
        app.wait_pools_settled().await;
        app
    }

    /// Waits until each pool is ready or its replica reported why not (`on_demand` pools
    /// start unloaded: they are settled at once).
    async fn wait_pools_settled(&self) {
        eventually("pools ready or failed", || async {
            let r = self.get("/v1/pools").await;
            let pools = r.body["pools"].as_array()?.clone();
            pools
                .iter()
                .all(|p| {
                    p["health"]["ready"] == true
                        || !p["health"]["last_error"].is_null()
                        || p["health"]["on_demand"].is_object()
                })
                .then_some(())
        })
        .await;
    }

    /// The fake engine of `pool_id`.
    #[track_caller]
    pub fn engine(&self, pool_id: &str) -> Arc<FakeEngine> {
        self.engines
            .get(pool_id)
            .cloned()
            .unwrap_or_else(|| panic!("no pool `{pool_id}` in the test config"))
    }

    /// Shuts the daemon down as SIGTERM does (`orchestratord::drain`) with `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        crate::drain(&self.state, grace).await;
    }

    /// Sends `req` as is, from loopback unless it carries a `ConnectInfo`.
    pub async fn raw(&self, mut req: Request<Body>) -> axum::response::Response {
        if req.extensions().get::<ConnectInfo<SocketAddr>>().is_none() {
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(LOOPBACK)));
        }
        let t0 = Instant::now();
        match tokio::time::timeout(WAIT, self.router.clone().oneshot(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => match e {},
            Err(_) => panic!("no response within {:?}", t0.elapsed()),
        }
    }

    /// Sends `req` and reads the whole body.
    pub async fn send(&self, req: Request<Body>) -> Resp {
        let resp = self.raw(req).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = tokio::time::timeout(WAIT, axum::body::to_bytes(resp.into_body(), usize::MAX))
            .await
            .expect("the body ends within the wait")
            .expect("the body reads");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp {
            status,
            headers,
            body,
            text,
        }
    }

    /// A request with the daemon's token (if it has one) and an optional JSON body.
    pub fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Request<Body> {
        let mut b = Request::builder().method(method).uri(path);
        if let Some(t) = &self.token {
            b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                b = b.header(header::CONTENT_TYPE, "application/json");
                Body::from(v.to_string())
            }
            None => Body::empty(),
        };
        b.body(body).expect("a well-formed test request")
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path, None)).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(self.request(Method::POST, path, Some(&body)))
            .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(Method::DELETE, path, None)).await
    }

    /// `POST /v1/tasks`.
    pub async fn submit(&self, body: Value) -> Resp {
        self.post("/v1/tasks", body).await
    }

    /// `POST /v1/tasks`, failing the test unless it is admitted; the 202 body.
    pub async fn admit(&self, body: Value) -> Value {
        let r = self.submit(body).await;
        r.expect_status(202);
        r.body
    }

    /// `GET /v1/tasks/{id}` body.
    pub async fn status(&self, id: &str) -> Value {
        let r = self.get(&format!("/v1/tasks/{id}")).await;
        r.expect_status(200);
        r.body
    }

    /// Polls `GET /v1/tasks/{id}` until its `state` is `state`.
    pub async fn wait_state(&self, id: &str, state: &str) -> Value {
        eventually(&format!("task {id} {state}"), || async {
            let s = self.status(id).await;
            (s["state"] == state).then_some(s)
        })
        .await
    }

    /// Opens a streaming `GET path` (SSE).
    pub async fn open_stream(&self, path: &str) -> SseReader {
        let resp = self.raw(self.request(Method::GET, path, None)).await;
        sse_reader(resp)
    }

    /// `POST path` answered with SSE (the OpenAI door with `stream: true`).
    pub async fn post_stream(&self, path: &str, body: Value) -> SseReader {
        let resp = self
            .raw(self.request(Method::POST, path, Some(&body)))
            .await;
        sse_reader(resp)
    }

    /// The whole event stream of task `id` (waits for its end).
    pub async fn events(&self, id: &str) -> Vec<SseEvent> {
        let r = self.open_stream(&format!("/v1/tasks/{id}/stream")).await;
        assert_eq!(r.status, StatusCode::OK, "stream of {id}");
        r.collect().await
    }

    /// The terminal event (`end` or `error`) of task `id`.
    pub async fn last_event(&self, id: &str) -> SseEvent {
        self.events(id)
            .await
            .pop()
            .unwrap_or_else(|| panic!("task {id}: empty stream"))
    }
}

fn sse_reader(resp: axum::response::Response) -> SseReader {
    let status = resp.status();
    let headers = resp.headers().clone();
    let events = resp
        .into_body()
        .into_data_stream()
        .eventsource()
        .map(|r| {
            r.map(|e| SseEvent {
                event: e.event,
                data: e.data,
            })
            .map_err(|e| e.to_string())
        })
        .boxed();
    SseReader {
        status,
        headers,
        events,
    }
}
