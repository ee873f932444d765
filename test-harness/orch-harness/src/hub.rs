//! A local model hub for pull tests: it speaks the huggingface_hub HTTP layout
//! (`GET /api/models/{org}/{repo}/tree/main` with `path`, `size`, `lfs.oid`;
//! `GET /{org}/{repo}/resolve/main/{path}`), optionally redirecting downloads to a second
//! loopback server (a "CDN" on another port, like the real hub's LFS storage), and records
//! every request it gets. Knobs break a transfer half way once, ignore `Range`, pace or hold
//! the bytes, and page the file list. Never a real hub.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

/// The bytes of one chunk the fixture sends.
const CHUNK: usize = 64 * 1024;

/// One request the fixture answered.
#[derive(Clone, Debug)]
pub struct SeenRequest {
    /// `hub` or `cdn`.
    pub server: &'static str,
    /// Path and query.
    pub path: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The status answered.
    pub status: u16,
}

#[derive(Clone)]
struct File {
    bytes: Arc<Vec<u8>>,
    oid: String,
}

#[derive(Default)]
struct Knobs {
    break_once: AtomicBool,
    ignore_range: AtomicBool,
    redirect: AtomicBool,
    chunk_delay_ms: AtomicU64,
    page_size: AtomicUsize,
}

struct Shared {
    /// `org/repo` → path → file.
    repos: Mutex<BTreeMap<String, BTreeMap<String, File>>>,
    knobs: Knobs,
    seen: Mutex<Vec<SeenRequest>>,
    /// While true, bodies stop half way and wait.
    hold: watch::Sender<bool>,
    /// Bodies currently waiting at the hold point.
    held: AtomicUsize,
    hub_base: Mutex<String>,
    cdn_base: Mutex<String>,
}

/// The running fixture (both servers stop when it is dropped).
pub struct HubFixture {
    /// `http://127.0.0.1:PORT`: what `HF_ENDPOINT` should be.
    pub base: String,
    /// The "CDN" server's base URL (another port).
    pub cdn_base: String,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for HubFixture {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// `sha256` hex of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Deterministic pseudo-random bytes (xorshift), for test files.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

impl HubFixture {
    /// Starts the hub and the CDN on free loopback ports.
    pub async fn start() -> HubFixture {
        let (hold, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            repos: Mutex::new(BTreeMap::new()),
            knobs: Knobs::default(),
            seen: Mutex::new(Vec::new()),
            hold,
            held: AtomicUsize::new(0),
            hub_base: Mutex::new(String::new()),
            cdn_base: Mutex::new(String::new()),
        });
        let mut tasks = Vec::new();
        let mut bases = Vec::new();
        for server in ["hub", "cdn"] {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind fixture");
            let base = format!("http://{}", l.local_addr().expect("fixture addr"));
            let app = Router::new()
                .fallback(move |st: State<Arc<Shared>>, req: Request| handle(st, server, req))
                .with_state(shared.clone());
            tasks.push(tokio::spawn(async move {
                let _ = axum::serve(l, app).await;
            }));
            bases.push(base);
        }
        *shared.hub_base.lock().unwrap() = bases[0].clone();
        *shared.cdn_base.lock().unwrap() = bases[1].clone();
        HubFixture {
            base: bases[0].clone(),
            cdn_base: bases[1].clone(),
            shared,
            tasks,
        }
    }

    /// Adds `path` to `repo` with its true sha256 as `lfs.oid`; returns `sha256:<hex>`.
    pub fn add_file(&self, repo: &str, path: &str, bytes: Vec<u8>) -> String {
        let oid = sha256_hex(&bytes);
        self.add_file_with_oid(repo, path, bytes, &oid);
        format!("sha256:{oid}")
    }

    /// Adds `path` to `repo`, listing `oid` as its `lfs.oid` (a wrong one, for mismatch tests).
    pub fn add_file_with_oid(&self, repo: &str, path: &str, bytes: Vec<u8>, oid: &str) {
        self.shared
            .repos
            .lock()
            .unwrap()
            .entry(repo.to_owned())
            .or_default()
            .insert(
                path.to_owned(),
                File {
                    bytes: Arc::new(bytes),
                    oid: oid.to_owned(),
                },
            );
    }

    /// The next transfer of a file body stops half way (the connection breaks), once.
    pub fn break_once(&self) {
        self.shared.knobs.break_once.store(true, Ordering::SeqCst);
    }

    /// Answer `Range` requests with the whole file (200).
    pub fn ignore_range(&self, on: bool) {
        self.shared.knobs.ignore_range.store(on, Ordering::SeqCst);
    }

    /// `resolve` answers 302 to the CDN server (with a signed-looking query).
    pub fn redirect_to_cdn(&self, on: bool) {
        self.shared.knobs.redirect.store(on, Ordering::SeqCst);
    }

    /// Waits this long between chunks (a slow link, so progress can be watched).
    pub fn chunk_delay(&self, d: Duration) {
        self.shared
            .knobs
            .chunk_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Pages the file list: at most `n` entries per page, `Link: <…>; rel="next"`.
    pub fn page_size(&self, n: usize) {
        self.shared.knobs.page_size.store(n, Ordering::SeqCst);
    }

    /// Bodies stop half way until [`HubFixture::release`].
    pub fn hold(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Lets held bodies go on.
    pub fn release(&self) {
        self.shared.hold.send_replace(false);
    }

    /// Bodies waiting at the hold point now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Requests for the bytes of `path` (on the hub's resolve route or the CDN).
    pub fn file_gets(&self, path: &str) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| {
                !r.path.starts_with("/api/")
                    && r.path.split('?').next().is_some_and(|p| p.ends_with(path))
            })
            .collect()
    }

    /// The plain resolve URL of a file (for `https://…`-style pulls of a URL).
    pub fn resolve_url(&self, repo: &str, path: &str) -> String {
        format!("{}/{repo}/resolve/main/{path}", self.base)
    }
}

/// Counts a body waiting at the hold point while it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(n: &'a AtomicUsize) -> Self {
        n.fetch_add(1, Ordering::SeqCst);
        Held(n)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn record(sh: &Shared, server: &'static str, path: String, h: &HeaderMap, status: u16) {
    let get = |k: header::HeaderName| h.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    sh.seen.lock().unwrap().push(SeenRequest {
        server,
        path,
        range: get(header::RANGE),
        authorization: get(header::AUTHORIZATION),
        status,
    });
}

async fn handle(State(sh): State<Arc<Shared>>, server: &'static str, req: Request) -> Response {
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let headers = req.headers().clone();
    let resp = route(&sh, server, &path, &query, &headers).await;
    record(&sh, server, path_q, &headers, resp.status().as_u16());
    resp
}

fn decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn route(
    sh: &Arc<Shared>,
    server: &'static str,
    path: &str,
    query: &str,
    h: &HeaderMap,
) -> Response {
    let segs: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(decode)
        .collect();
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    match (server, s.as_slice()) {
        ("hub", ["api", "models", org, repo, "tree", "main", ..]) => {
            tree(sh, &format!("{org}/{repo}"), query)
        }
        ("hub", [org, repo, "resolve", "main", rest @ ..]) if !rest.is_empty() => {
            let repo = format!("{org}/{repo}");
            let file = rest.join("/");
            if sh.knobs.redirect.load(Ordering::SeqCst) {
                let cdn = sh.cdn_base.lock().unwrap().clone();
                let loc = format!(
                    "{cdn}/cdn/{repo}/{file}?X-Amz-Credential=fixture&X-Amz-Signature=fixture-signature-0123"
                );
                return (StatusCode::FOUND, [(header::LOCATION, loc)]).into_response();
            }
            serve_file(sh, &repo, &file, h)
        }
        ("cdn", ["cdn", org, repo, rest @ ..]) if !rest.is_empty() => {
            serve_file(sh, &format!("{org}/{repo}"), &rest.join("/"), h)
        }
        _ => (StatusCode::NOT_FOUND, "no such route in the fixture hub").into_response(),
    }
}

fn tree(sh: &Arc<Shared>, repo: &str, query: &str) -> Response {
    let repos = sh.repos.lock().unwrap();
    let Some(files) = repos.get(repo) else {
        return (
            StatusCode::UNAUTHORIZED,
            r#"{"error":"Repository not found"}"#,
        )
            .into_response();
    };
    let mut entries: Vec<serde_json::Value> = vec![serde_json::json!({
        "type": "file", "path": "README.md", "size": 12, "oid": "0123456789abcdef0123456789abcdef01234567"
    })];
    for (p, f) in files {
        entries.push(serde_json::json!({
            "type": "file", "path": p, "size": f.bytes.len(),
            "oid": "89abcdef0123456789abcdef0123456789abcdef",
            "lfs": {"oid": f.oid, "size": f.bytes.len(), "pointerSize": 134}
        }));
    }
    let page = sh.knobs.page_size.load(Ordering::SeqCst);
    if page == 0 {
        return axum::Json(entries).into_response();
    }
    let cursor: usize = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("cursor="))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let end = (cursor + page).min(entries.len());
    let body = entries[cursor.min(end)..end].to_vec();
    let mut resp = axum::Json(body).into_response();
    if end < entries.len() {
        let base = sh.hub_base.lock().unwrap().clone();
        let link = format!(
            "<{base}/api/models/{repo}/tree/main?recursive=true&cursor={end}>; rel=\"next\""
        );
        if let Ok(v) = link.parse() {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    resp
}

fn serve_file(sh: &Arc<Shared>, repo: &str, file: &str, h: &HeaderMap) -> Response {
    let Some(f) = sh
        .repos
        .lock()
        .unwrap()
        .get(repo)
        .and_then(|r| r.get(file))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "Entry not found").into_response();
    };
    let len = f.bytes.len() as u64;
    let from = h
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.strip_suffix('-'))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|_| !sh.knobs.ignore_range.load(Ordering::SeqCst));
    if let Some(from) = from {
        if from >= len {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response();
        }
    }
    let start = from.unwrap_or(0);
    let half = len / 2;
    let break_now = sh.knobs.break_once.swap(false, Ordering::SeqCst);
    let delay = Duration::from_millis(sh.knobs.chunk_delay_ms.load(Ordering::SeqCst));
    let hold = sh.hold.subscribe();
    let shared = sh.clone();
    let bytes = f.bytes.clone();
    // (position, whether the hold point was passed)
    let body = futures::stream::unfold((start, false), move |(pos, passed)| {
        let bytes = bytes.clone();
        let mut hold = hold.clone();
        let shared = shared.clone();
        async move {
            if pos >= len {
                return None;
            }
            if !passed && pos >= half && *hold.borrow() {
                // Counted until released, or until the client goes away and the body is dropped.
                let _held = Held::new(&shared.held);
                let _ = hold.wait_for(|h| !*h).await;
            }
            let passed = passed || pos >= half;
            if break_now && pos >= half {
                return Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionReset,
                        "fixture: broken half way",
                    )),
                    (len, passed),
                ));
            }
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            // Stop chunks at the half mark so breaks and holds land exactly there.
            let limit = if pos < half { half } else { len };
            let end = (pos + CHUNK as u64).min(limit).max(pos + 1).min(len);
            let chunk = axum::body::Bytes::copy_from_slice(&bytes[pos as usize..end as usize]);
            Some((Ok::<_, std::io::Error>(chunk), (end, passed)))
        }
    })
    .boxed();
    let mut resp = Response::new(Body::from_stream(body));
    let hs = resp.headers_mut();
    let set = |hs: &mut HeaderMap, k: header::HeaderName, v: String| {
        if let Ok(v) = v.parse() {
            hs.insert(k, v);
        }
    };
    set(hs, header::CONTENT_LENGTH, (len - start).to_string());
    set(hs, header::ACCEPT_RANGES, "bytes".into());
    set(hs, header::ETAG, format!("\"{}\"", f.oid));
    if from.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        set(
            resp.headers_mut(),
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", len - 1),
        );
    }
    resp
}
