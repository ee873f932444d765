//! `engine-double`: a BENCHMARK/TEST DOUBLE of llama.cpp's `llama-server`. It is NOT an inference
//! engine: it loads no model and computes nothing. It answers the subset of llama-server's HTTP
//! protocol that the llama.cpp adapter uses, with canned tokens on a fixed schedule, so that
//! `cargo xtask bench overhead` can measure what orchestratord itself adds to a stream.
//!
//! Endpoints (shapes as llama-server sends them):
//! - `GET /health` → `{"status":"ok"}`
//! - `GET /props` → `build_info`, `total_slots`, `default_generation_settings.n_ctx`, `model_path`
//! - `GET /slots` → `[{"id":0,"is_processing":false},…]`
//! - `POST /slots/{id}?action=erase` → `{"id_slot":id,"n_erased":0}`
//! - `POST /apply-template` → `{"prompt":…}` (turns joined as `role: content` lines)
//! - `POST /completion` → with `"stream":true`, one SSE `data:` chunk per token, then a final
//!   chunk with `"stop":true`, `"stop_type":"limit"` and `timings`; otherwise one JSON body.
//!
//! Timing: a request takes a slot (waiting, like llama-server, when all are busy), then token `k`
//! is due at `start + ttft + k × interval`. Tokens are scheduled against that clock rather than
//! slept between, so a slow reader does not lower the double's rate: what the bench measures
//! is the reader's cost, not the double's. Token texts include multi-byte UTF-8, a quote, a
//! newline and U+2028 so that relaying them costs real JSON decoding and escaping.

use std::convert::Infallible;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// BENCHMARK/TEST DOUBLE of llama.cpp's llama-server (NOT an inference engine: it runs no
/// model). Streams canned tokens on a fixed schedule over llama-server's /completion protocol,
/// for measuring orchestratord's own overhead.
#[derive(Parser, Debug, Clone)]
#[command(name = "engine-double", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on; 0 picks a free one. Either way `listening on ADDR` is printed on stdout.
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Parallel slots reported in /props and /slots; requests beyond them wait for a slot.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Context tokens per slot reported in /props (`default_generation_settings.n_ctx`).
    #[arg(long, default_value_t = 4096)]
    ctx: u32,
    /// Microseconds between consecutive tokens of one stream (0: as fast as possible).
    #[arg(long, default_value_t = 1000)]
    token_interval_us: u64,
    /// Microseconds from taking a slot to the first token.
    #[arg(long, default_value_t = 0)]
    ttft_us: u64,
    /// Tokens generated when a request gives no (or a negative) `n_predict`.
    #[arg(long, default_value_t = 16)]
    default_n_predict: u64,
}

/// Canned token texts; chosen to exercise JSON escaping and multi-byte UTF-8.
const VOCAB: &[&str] = &[
    " the",
    " é",
    "語",
    "\u{2028}",
    " quick",
    "\n",
    " \"quoted\"",
    " 🦙",
    " fox",
    ",",
    " naïve",
    " end",
];

/// State shared by all requests.
struct Shared {
    args: Args,
    /// One permit per slot.
    sem: Arc<Semaphore>,
    /// Slot ids not in use.
    free: Mutex<Vec<u32>>,
    /// `VOCAB` entries as JSON string literals, escaped once at start.
    vocab_json: Vec<String>,
}

impl Shared {
    fn free_ids(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot, like llama-server's task queue.
    async fn take_slot(self: &Arc<Self>) -> SlotGuard {
        let permit = self
            .sem
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        // A permit guarantees a free id.
        let id = self.free_ids().pop().unwrap_or(0);
        SlotGuard {
            shared: self.clone(),
            id,
            _permit: permit,
        }
    }
}

/// A slot held for one request; returned when the response (or its stream) is dropped, so a
/// client that disconnects frees its slot as llama-server does.
struct SlotGuard {
    shared: Arc<Shared>,
    id: u32,
    _permit: OwnedSemaphorePermit,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        // Runs before the permit field is dropped, so the id is back before a waiter wakes.
        self.shared.free_ids().push(self.id);
    }
}

type AppState = Arc<Shared>;

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn props(State(s): State<AppState>) -> Json<Value> {
    Json(json!({
        "build_info": "double-1",
        "total_slots": s.args.slots,
        "default_generation_settings": {"n_ctx": s.args.ctx},
        "model_path": "double",
    }))
}

async fn slots(State(s): State<AppState>) -> Json<Value> {
    let free = s.free_ids().clone();
    let list: Vec<Value> = (0..s.args.slots)
        .map(|id| json!({"id": id, "is_processing": !free.contains(&id)}))
        .collect();
    Json(Value::Array(list))
}

async fn erase_slot(Path(id): Path<u32>) -> Json<Value> {
    Json(json!({"id_slot": id, "n_erased": 0}))
}

#[derive(Deserialize)]
struct TemplateRequest {
    #[serde(default)]
    messages: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    #[serde(default)]
    role: String,
    #[serde(default)]
    content: String,
}

async fn apply_template(Json(req): Json<TemplateRequest>) -> Json<Value> {
    let prompt: String = req
        .messages
        .iter()
        .map(|t| format!("{}: {}\n", t.role, t.content))
        .collect();
    Json(json!({ "prompt": prompt }))
}

/// The fields of llama-server's `/completion` body that the double looks at; the rest (seed,
/// sampling, `cache_prompt`, …) are accepted and ignored.
#[derive(Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    prompt: Value,
    #[serde(default)]
    n_predict: Option<i64>,
    #[serde(default)]
    stream: bool,
}

/// llama-server's error body.
fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": 400, "message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

/// Prompt length in "tokens": words plus BOS for text, the length for a token array.
fn prompt_tokens(prompt: &Value) -> Option<u64> {
    match prompt {
        Value::String(s) => Some(s.split_whitespace().count() as u64 + 1),
        Value::Array(a) => Some(a.len() as u64),
        _ => None,
    }
}

/// One generation in progress.
struct Gen {
    shared: Arc<Shared>,
    slot: SlotGuard,
    /// When the slot was taken.
    t0: Instant,
    /// Prompt tokens.
    p: u64,
    /// Tokens to produce.
    n: u64,
    /// Next token index; `n` means the final chunk is next, `n + 1` means done.
    k: u64,
    /// Offset into `VOCAB`, so different prompts give different (but fixed) texts.
    offset: usize,
}

impl Gen {
    fn due(&self, k: u64) -> Instant {
        let a = &self.shared.args;
        self.t0 + Duration::from_micros(a.ttft_us + k * a.token_interval_us)
    }

    fn token_index(&self, k: u64) -> usize {
        (self.offset + k as usize * 7) % VOCAB.len()
    }

    fn token_chunk(&self, k: u64) -> String {
        let t = self.token_index(k);
        format!(
            "data: {{\"index\":0,\"content\":{},\"tokens\":[{}],\"stop\":false,\"id_slot\":-1,\"tokens_predicted\":{},\"tokens_evaluated\":{}}}\n\n",
            self.shared.vocab_json[t],
            t + 1,
            k + 1,
            self.p
        )
    }

    /// The final object's fields (without `content`), as llama-server sends them.
    fn final_fields(&self) -> String {
        let first = self.due(0);
        let predicted_ms = Instant::now()
            .saturating_duration_since(first)
            .as_secs_f64()
            * 1000.0;
        let per_s = if predicted_ms > 0.0 {
            self.n as f64 * 1000.0 / predicted_ms
        } else {
            0.0
        };
        format!(
            "\"tokens\":[],\"id_slot\":{},\"stop\":true,\"model\":\"double\",\"tokens_predicted\":{n},\"tokens_evaluated\":{p},\"stop_type\":\"limit\",\"stopping_word\":\"\",\"tokens_cached\":{},\"timings\":{{\"prompt_n\":{p},\"prompt_ms\":0.0,\"predicted_n\":{n},\"predicted_ms\":{predicted_ms:.3},\"predicted_per_second\":{per_s:.3}}}",
            self.slot.id,
            self.p + self.n,
            n = self.n,
            p = self.p,
        )
    }

    async fn wait_for(&self, k: u64) {
        let due = self.due(k);
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}

async fn completion(State(s): State<AppState>, body: Bytes) -> Response {
    let req: CompletionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(&format!("invalid JSON body: {e}")),
    };
    let Some(p) = prompt_tokens(&req.prompt) else {
        return bad_request("\"prompt\" must be a string or an array of tokens");
    };
    let ctx = u64::from(s.args.ctx);
    if p >= ctx {
        return bad_request("the prompt exceeds the context size");
    }
    let n = match req.n_predict {
        Some(n) if n >= 0 => n as u64,
        _ => s.args.default_n_predict,
    }
    .min(ctx - p);
    let slot = s.take_slot().await;
    let gen = Gen {
        shared: s.clone(),
        slot,
        t0: Instant::now(),
        p,
        n,
        k: 0,
        offset: p as usize,
    };
    if !req.stream {
        gen.wait_for(n).await;
        let content: String = (0..n).map(|k| VOCAB[gen.token_index(k)]).collect();
        let content = serde_json::to_string(&content).unwrap_or_else(|_| "\"\"".into());
        let body = format!(
            "{{\"index\":0,\"content\":{content},{}}}",
            gen.final_fields()
        );
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    let stream = futures::stream::unfold(gen, |mut g| async move {
        let k = g.k;
        if k > g.n {
            return None;
        }
        g.k += 1;
        let chunk = if k < g.n {
            g.wait_for(k).await;
            g.token_chunk(k)
        } else {
            format!(
                "data: {{\"index\":0,\"content\":\"\",{}}}\n\n",
                g.final_fields()
            )
        };
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), g))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

fn router(shared: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/props", get(props))
        .route("/slots", get(slots))
        .route("/slots/{id}", post(erase_slot))
        .route("/apply-template", post(apply_template))
        .route("/completion", post(completion))
        .with_state(shared)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let slots = args.slots.max(1);
    let shared = Arc::new(Shared {
        sem: Arc::new(Semaphore::new(slots as usize)),
        // Reversed so that `pop` hands out slot 0 first.
        free: Mutex::new((0..slots).rev().collect()),
        vocab_json: VOCAB
            .iter()
            .map(|t| serde_json::to_string(t).expect("a &str always serialises"))
            .collect(),
        args: Args { slots, ..args },
    });
    let addr = SocketAddr::new(shared.args.host, shared.args.port);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    eprintln!(
        "engine-double: BENCHMARK/TEST DOUBLE of llama-server, not an inference engine ({} slots, ctx {}, ttft {} µs, {} µs/token)",
        shared.args.slots, shared.args.ctx, shared.args.ttft_us, shared.args.token_interval_us
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {local}")?;
    out.flush()?;
    drop(out);
    // Token chunks are small writes; without TCP_NODELAY Nagle's algorithm could hold them back.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(shared)).await
}
