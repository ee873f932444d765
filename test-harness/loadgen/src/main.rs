//! BENCHMARK TOOL: the load generator of `cargo xtask bench overhead`.
//!
//! One run is one phase: `--requests` streamed requests, `--concurrency` at a time (closed loop),
//! either straight to a llama-server-protocol engine (`POST /completion`, `--target direct`) or
//! through orchestratord (`POST /v1/tasks`, then `GET /v1/tasks/{id}/stream`, `--target
//! relayed`), or through one of its agent doors (`--target chat|messages|responses`: the
//! prompt as one user message, each door's own stream grammar). Stream `j` starts after `j × --stagger-us`, so equal-length requests do not stay
//! in lockstep. It prints one JSON object on stdout: per request its time to first token, its
//! total time, its token events and a hash of its text (identical requests must stream
//! identical text on both paths), per stream the time it was busy, the errors, and the CPU
//! time this process used.
//!
//! It is its own process, built with `--release`, on a multi-threaded runtime and parsing only
//! what it needs (token text is borrowed, never copied into a JSON tree), so the client is not
//! the bottleneck it was inside the debug-built xtask; and its CPU is measured apart from the
//! bench's.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::{Parser, ValueEnum};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Target {
    /// llama-server's `POST /completion` stream.
    Direct,
    /// orchestratord's `POST /v1/tasks` + `GET /v1/tasks/{id}/stream`, model_ref `bench`.
    Relayed,
    /// orchestratord's OpenAI Chat Completions door, streamed, model `bench`.
    Chat,
    /// orchestratord's Anthropic Messages door, streamed, model `bench`.
    Messages,
    /// orchestratord's OpenAI Responses door, streamed, model `bench`.
    Responses,
}

/// One phase of requests.
#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "streaming SSE load generator (bench overhead)"
)]
struct Args {
    /// Base URL of the engine (direct) or the daemon (relayed).
    #[arg(long)]
    base: String,
    /// Where the requests go.
    #[arg(long, value_enum)]
    target: Target,
    /// Send `Connection: close` on direct requests (llama-server closes streamed connections
    /// although it announces keep-alive; reusing them races that close).
    #[arg(long)]
    close: bool,
    /// Streams at once.
    #[arg(long)]
    concurrency: usize,
    /// Requests in all.
    #[arg(long)]
    requests: usize,
    /// Delay between the starts of consecutive streams, µs.
    #[arg(long, default_value_t = 0)]
    stagger_us: u64,
    /// Tokens per request.
    #[arg(long)]
    tokens: u32,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Task id prefix (relayed; ids must be unique within one daemon).
    #[arg(long, default_value = "lg")]
    label: String,
    /// Sampling seed (with temperature 0: identical requests give identical text).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// A request that takes longer fails.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
}

/// One finished request: `[ttft_us, total_us, tokens, text_hash]`.
type Sample = (u64, u64, u64, String);

#[derive(Serialize)]
struct Stream {
    busy_us: u64,
    samples: Vec<Sample>,
}

/// FNV-1a, 64 bit: enough to tell whether two streams carried the same text.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, s: &str) {
        for b in s.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A llama-server stream chunk, borrowing its text.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

/// An orchestratord `token` event, borrowing its text.
#[derive(Deserialize)]
struct Token<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

async fn direct(http: &reqwest::Client, a: &Args) -> Result<Sample> {
    let body = json!({
        "prompt": a.prompt,
        "n_predict": a.tokens,
        "stream": true,
        "cache_prompt": true,
        "seed": a.seed,
        "temperature": 0.0,
    });
    let mut req = http.post(format!("{}/completion", a.base)).json(&body);
    if a.close {
        req = req.header(reqwest::header::CONNECTION, "close");
    }
    let t0 = Instant::now();
    let r = req.send().await?;
    if !r.status().is_success() {
        bail!("/completion: HTTP {}: {}", r.status(), r.text().await?);
    }
    let mut events = r.bytes_stream().eventsource();
    let (mut ttft, mut tokens, mut hash) = (None, 0u64, Fnv::new());
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let c: Chunk<'_> = serde_json::from_str(&ev.data)?;
        if let Some(e) = c.error {
            bail!("engine error: {e}");
        }
        let text = c.content.as_deref().unwrap_or_default();
        // Count chunks as the daemon's adapter does: every non-final chunk is one token event.
        if !c.stop || !text.is_empty() {
            tokens += 1;
            ttft.get_or_insert_with(|| t0.elapsed());
            hash.write(text);
        }
        if c.stop {
            let ttft = ttft.ok_or_else(|| anyhow!("the engine produced no token"))?;
            return Ok((
                us(ttft),
                us(t0.elapsed()),
                tokens,
                format!("{:016x}", hash.0),
            ));
        }
    }
    bail!("the /completion stream ended without its final chunk")
}

async fn relayed(http: &reqwest::Client, a: &Args, id: &str) -> Result<Sample> {
    let body = json!({
        "task_id": id,
        "model_ref": "bench",
        "priority": "interactive",
        "prompt": a.prompt,
        "max_tokens": a.tokens,
        "seed": a.seed,
        "temperature": 0.0,
    });
    let t0 = Instant::now();
    let r = http
        .post(format!("{}/v1/tasks", a.base))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    // Read the body either way so the connection can be reused.
    let text = r.text().await?;
    if status != reqwest::StatusCode::ACCEPTED {
        bail!("POST /v1/tasks: HTTP {status}: {text}");
    }
    let r = http
        .get(format!("{}/v1/tasks/{id}/stream", a.base))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("GET stream: HTTP {}: {}", r.status(), r.text().await?);
    }
    let mut events = r.bytes_stream().eventsource();
    let (mut ttft, mut tokens, mut hash) = (None, 0u64, Fnv::new());
    while let Some(ev) = events.next().await {
        let ev = ev?;
        match ev.event.as_str() {
            "token" => {
                let t: Token<'_> = serde_json::from_str(&ev.data)?;
                tokens += 1;
                ttft.get_or_insert_with(|| t0.elapsed());
                hash.write(&t.t);
            }
            "end" => {
                let ttft = ttft.ok_or_else(|| anyhow!("the task produced no token"))?;
                return Ok((
                    us(ttft),
                    us(t0.elapsed()),
                    tokens,
                    format!("{:016x}", hash.0),
                ));
            }
            "error" => bail!("task error: {}", ev.data),
            _ => {}
        }
    }
    bail!("the task stream ended without `end`")
}

/// The text of one event of an agent door's stream, `Some("")` for an event that carries no
/// text, `None` for the event that ends the stream.
#[derive(Deserialize)]
struct ChatChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChatChoice<'a>>,
}

#[derive(Deserialize)]
struct ChatChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<ChatDelta<'a>>,
}

#[derive(Deserialize)]
struct ChatDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

/// Anthropic's `content_block_delta` (`delta.text`) and OpenAI Responses'
/// `response.output_text.delta` (`delta`, a string).
#[derive(Deserialize)]
struct DoorDelta<'a> {
    #[serde(borrow)]
    delta: DeltaText<'a>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DeltaText<'a> {
    Text(#[serde(borrow)] Cow<'a, str>),
    Block {
        #[serde(borrow, default)]
        text: Option<Cow<'a, str>>,
    },
}

/// One streamed request through an agent door: the text of each event that carries some is a
/// token (the doors send one event per engine token).
async fn door(http: &reqwest::Client, a: &Args) -> Result<Sample> {
    let msg = json!([{ "role": "user", "content": a.prompt }]);
    let (path, body) = match a.target {
        Target::Chat => (
            "/v1/chat/completions",
            json!({"model": "bench", "messages": msg, "max_tokens": a.tokens, "stream": true,
                   "seed": a.seed, "temperature": 0.0}),
        ),
        Target::Messages => (
            "/v1/messages",
            json!({"model": "bench", "messages": msg, "max_tokens": a.tokens, "stream": true,
                   "temperature": 0.0}),
        ),
        _ => (
            "/v1/responses",
            json!({"model": "bench", "input": a.prompt, "max_output_tokens": a.tokens,
                   "stream": true, "temperature": 0.0, "store": false}),
        ),
    };
    let t0 = Instant::now();
    let r = http
        .post(format!("{}{path}", a.base))
        .json(&body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("POST {path}: HTTP {}: {}", r.status(), r.text().await?);
    }
    let mut events = r.bytes_stream().eventsource();
    let (mut ttft, mut tokens, mut hash) = (None, 0u64, Fnv::new());
    while let Some(ev) = events.next().await {
        let ev = ev?;
        let text: Option<Cow<'_, str>> = match (a.target, ev.event.as_str()) {
            (Target::Chat, _) if ev.data == "[DONE]" => None,
            (Target::Chat, _) => {
                let c: ChatChunk<'_> = serde_json::from_str(&ev.data)?;
                Some(
                    c.choices
                        .into_iter()
                        .next()
                        .and_then(|c| c.delta)
                        .and_then(|d| d.content)
                        .unwrap_or_default(),
                )
            }
            (_, "message_stop" | "response.completed" | "response.incomplete") => None,
            (_, "error" | "response.failed") => bail!("{}: {}", ev.event, ev.data),
            (_, "content_block_delta" | "response.output_text.delta") => {
                let d: DoorDelta<'_> = serde_json::from_str(&ev.data)?;
                Some(match d.delta {
                    DeltaText::Text(t) => t,
                    DeltaText::Block { text } => text.unwrap_or_default(),
                })
            }
            _ => Some(Cow::Borrowed("")),
        };
        match text {
            Some(t) if !t.is_empty() => {
                tokens += 1;
                ttft.get_or_insert_with(|| t0.elapsed());
                hash.write(&t);
            }
            Some(_) => {}
            None => {
                let ttft = ttft.ok_or_else(|| anyhow!("the door streamed no token"))?;
                return Ok((
                    us(ttft),
                    us(t0.elapsed()),
                    tokens,
                    format!("{:016x}", hash.0),
                ));
            }
        }
    }
    bail!("the {path} stream ended before its last event")
}

/// CPU time this process used so far (user + system), µs; `None` off Linux.
fn cpu_us() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // After `(comm) `: utime and stime are fields 14 and 15, in 10 ms ticks on Linux.
    let mut f = stat.rsplit_once(") ")?.1.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(ticks * 10_000)
}

async fn run(a: Arc<Args>) -> Result<serde_json::Value> {
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    // Enough idle connections for every stream; reqwest sets TCP_NODELAY by default. Idle
    // connections are dropped after 4 s, before llama-server's 5 s keep-alive ends them.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(a.concurrency)
        .pool_idle_timeout(Duration::from_secs(4))
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let cpu0 = cpu_us();
    let t0 = Instant::now();
    let workers: Vec<_> = (0..a.concurrency)
        .map(|j| {
            let (http, a, next) = (http.clone(), a.clone(), next.clone());
            tokio::spawn(async move {
                let delay = Duration::from_micros(a.stagger_us.saturating_mul(j as u64));
                tokio::time::sleep(delay).await;
                let start = Instant::now();
                let (mut samples, mut errors) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= a.requests {
                        let busy = us(start.elapsed());
                        return (
                            Stream {
                                busy_us: busy,
                                samples,
                            },
                            errors,
                        );
                    }
                    let one = async {
                        match a.target {
                            Target::Direct => direct(&http, &a).await,
                            Target::Relayed => {
                                relayed(&http, &a, &format!("{}-{i}", a.label)).await
                            }
                            Target::Chat | Target::Messages | Target::Responses => {
                                door(&http, &a).await
                            }
                        }
                    };
                    match tokio::time::timeout(Duration::from_secs(a.timeout_s), one).await {
                        Ok(Ok(s)) => samples.push(s),
                        Ok(Err(e)) => errors.push(format!("{e:#}")),
                        Err(_) => errors.push(format!("no answer within {} s", a.timeout_s)),
                    }
                }
            })
        })
        .collect();
    let (mut streams, mut errors) = (Vec::new(), Vec::new());
    for w in workers {
        match w.await {
            Ok((s, e)) => {
                streams.push(s);
                errors.extend(e);
            }
            Err(e) => errors.push(format!("worker panicked: {e}")),
        }
    }
    let wall = us(t0.elapsed());
    let cpu = cpu_us().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    Ok(json!({ "wall_us": wall, "cpu_us": cpu, "streams": streams, "errors": errors }))
}

fn main() -> std::process::ExitCode {
    let a = Arc::new(Args::parse());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(a)) {
        Ok(v) => {
            println!("{v}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
