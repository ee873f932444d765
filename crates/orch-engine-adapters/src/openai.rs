//! Any OpenAI-compatible server: vLLM (`vllm serve`), SGLang, LM Studio, llama-server's own
//! `/v1`. Engine kinds `openai` and `vllm`.
//!
//! - Text: `POST /v1/completions` with `stream: true`; chunks
//!   `{"choices":[{"index":0,"text":"…","finish_reason":null|"length"|"stop"}],…}`.
//! - Chat: `POST /v1/chat/completions`; chunks carry `choices[0].delta.content` (the first one
//!   often only `delta.role`).
//! - With `stream_options: {include_usage: true}` one more chunk with `choices: []` and
//!   `usage: {prompt_tokens, completion_tokens, prompt_tokens_details?: {cached_tokens}}` comes
//!   before the terminal `data: [DONE]`. Servers that refuse `stream_options` get the request
//!   again without it (remembered per adapter).
//! - Errors: `{"error":{"message":…}}` (or vLLM's older `{"object":"error","message":…}`), as
//!   the HTTP body or as a chunk inside the stream.
//! - Tools, `tool_choice`, `parallel_tool_calls`, `response_format`, `logprobs`, `logit_bias`
//!   and the penalties pass through as OpenAI names them; tool calls come back as
//!   `choices[0].delta.tool_calls` pieces, log probabilities as `choices[0].logprobs`
//!   (`{content: [...]}` for chat, the legacy parallel arrays for completions).
//! - Health and info: `GET /v1/models` (`data[].id`, vLLM's `max_model_len`, llama-server's
//!   `meta.n_ctx`); version from vLLM's `GET /version` where it exists.
//! - KV usage: vLLM's Prometheus `/metrics`, `vllm:kv_cache_usage_perc` (V1 engine) or
//!   `vllm:gpu_cache_usage_perc` (V0), both a fraction in 0..=1.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{self, Decoder};
use crate::{
    AdapterError, Chunk, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream,
    FinishReason, GenerateRequest, Prompt, TokenLogprob, ToolCallDelta, TopLogprob,
};

/// Adapter for one OpenAI-compatible server.
#[derive(Debug)]
pub struct OpenAiAdapter {
    kind: &'static str,
    /// Without a trailing `/v1`.
    base: String,
    /// Model named in requests: configured, else the first one the server lists.
    model: Option<String>,
    discovered: Mutex<Option<String>>,
    /// Cleared after the server refused `stream_options`.
    include_usage: AtomicBool,
    http: reqwest::Client,
}

impl OpenAiAdapter {
    /// An adapter for the server at `base` (`http://host:8000`; a trailing `/v1` is accepted),
    /// reported as engine `kind` (`openai`, `vllm`). `model` is the name sent in requests;
    /// `None` uses the first model in `/v1/models`.
    pub fn new(kind: &'static str, base: &str, model: Option<&str>) -> Result<Self, AdapterError> {
        let mut base = http::trim_base(base);
        if let Some(b) = base.strip_suffix("/v1") {
            base = b.to_owned();
        }
        let http = http::client(&base, Duration::from_secs(5))?;
        Ok(Self {
            kind,
            base,
            model: model.map(str::to_owned).filter(|m| !m.is_empty()),
            discovered: Mutex::new(None),
            include_usage: AtomicBool::new(true),
            http,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn get(&self, path: &str, timeout: Duration) -> Result<reqwest::Response, AdapterError> {
        let resp = self
            .http
            .get(self.url(path))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        http::check_status(resp).await
    }

    async fn models(&self) -> Result<Value, AdapterError> {
        let v: Value = self
            .get("/v1/models", Duration::from_secs(5))
            .await?
            .json()
            .await
            .map_err(|e| AdapterError::Protocol {
                message: format!("/v1/models did not return JSON: {e}"),
            })?;
        if let Some(id) = first_model(&v).map(|m| m.id) {
            if let Ok(mut d) = self.discovered.lock() {
                *d = Some(id);
            }
        }
        Ok(v)
    }

    /// The model name to send: configured, else discovered (listing the models once).
    async fn model_name(&self) -> Option<String> {
        if let Some(m) = &self.model {
            return Some(m.clone());
        }
        let known = self.discovered.lock().ok().and_then(|d| d.clone());
        match known {
            Some(m) => Some(m),
            None => self
                .models()
                .await
                .ok()
                .and_then(|v| first_model(&v).map(|m| m.id)),
        }
    }

    async fn post_stream(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<reqwest::Response, AdapterError> {
        let resp = self
            .http
            .post(self.url(path))
            // A fresh connection per stream: llama-server (and some proxies) close the
            // connection after a streamed response, and a pooled one that died would fail the
            // next task dispatched the instant this one ends.
            .header(reqwest::header::CONNECTION, "close")
            .json(body)
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        http::check_status(resp).await
    }
}

/// One model of a `/v1/models` listing.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelEntry {
    /// `id`.
    pub id: String,
    /// Context length: vLLM's `max_model_len`, llama-server's `meta.n_ctx`.
    pub ctx: Option<u32>,
    /// `owned_by` (`vllm`, `llamacpp`, …).
    pub owned_by: Option<String>,
}

/// The first model of a `/v1/models` body, if any.
pub fn first_model(v: &Value) -> Option<ModelEntry> {
    model_entry(v.get("data")?.as_array()?.first()?)
}

/// All models of a `/v1/models` body.
pub fn models_in(v: &Value) -> Vec<ModelEntry> {
    v.get("data")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(model_entry).collect())
        .unwrap_or_default()
}

fn model_entry(m: &Value) -> Option<ModelEntry> {
    let as_u32 = |x: Option<&Value>| {
        x.and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
    };
    Some(ModelEntry {
        id: m.get("id")?.as_str()?.to_owned(),
        ctx: as_u32(m.get("max_model_len"))
            .or_else(|| as_u32(m.get("meta").and_then(|x| x.get("n_ctx")))),
        owned_by: m.get("owned_by").and_then(Value::as_str).map(str::to_owned),
    })
}

/// The sampling fields both endpoints share.
fn common_fields(
    o: &mut Map<String, Value>,
    req: &GenerateRequest,
    model: Option<&str>,
    include_usage: bool,
) {
    if let Some(m) = model {
        o.insert("model".into(), json!(m));
    }
    o.insert("max_tokens".into(), json!(req.max_tokens));
    o.insert("stream".into(), json!(true));
    if include_usage {
        o.insert("stream_options".into(), json!({ "include_usage": true }));
    }
    http::insert_sampling(o, req);
    if let Some(f) = &req.response_format {
        o.insert("response_format".into(), f.to_openai());
    }
}

/// The JSON body of a streaming `/v1/completions` request.
pub fn completions_body(
    req: &GenerateRequest,
    prompt: &str,
    model: Option<&str>,
    include_usage: bool,
) -> Value {
    let mut o = Map::new();
    o.insert("prompt".into(), json!(prompt));
    common_fields(&mut o, req, model, include_usage);
    if let Some(n) = req.logprobs {
        o.insert("logprobs".into(), json!(n));
    }
    Value::Object(o)
}

/// The JSON body of a streaming `/v1/chat/completions` request.
pub fn chat_body(
    req: &GenerateRequest,
    turns: &[crate::ChatTurn],
    model: Option<&str>,
    include_usage: bool,
) -> Value {
    let mut o = Map::new();
    o.insert("messages".into(), json!(turns));
    common_fields(&mut o, req, model, include_usage);
    // OpenAI refuses `tool_choice` and `parallel_tool_calls` without tools (some clients send
    // `tool_choice: "none"` always).
    if !req.tools.is_empty() {
        o.insert("tools".into(), json!(req.tools));
        if let Some(c) = &req.tool_choice {
            o.insert("tool_choice".into(), c.clone());
        }
        if let Some(p) = req.parallel_tool_calls {
            o.insert("parallel_tool_calls".into(), json!(p));
        }
    }
    if let Some(n) = req.logprobs {
        o.insert("logprobs".into(), json!(true));
        o.insert("top_logprobs".into(), json!(n));
    }
    Value::Object(o)
}

/// Token accounting from a usage chunk (and llama-server's `timings`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.completion_tokens`.
    pub completion_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
    /// llama-server's `timings.predicted_ms`.
    pub decode_ms: Option<f64>,
    /// llama-server's `timings.prompt_n`: prompt tokens not reused from cache.
    pub prompt_n: Option<u64>,
}

/// What one chunk of an OpenAI stream says.
#[derive(Clone, Debug, PartialEq)]
pub enum Part {
    /// Generated text (never empty).
    Text(String),
    /// Log probabilities of this chunk's tokens.
    Logprobs(Vec<TokenLogprob>),
    /// Pieces of tool calls.
    ToolCalls(Vec<ToolCallDelta>),
    /// The choice finished; `None` for a reason we do not model (`tool_calls`, …).
    Finish(Option<FinishReason>),
    /// Token accounting.
    Usage(Usage),
    /// `[DONE]`: nothing follows.
    Done,
}

/// Parses one `data:` payload of a completions or chat stream. Pure; never panics.
pub fn parse_chunk(data: &str) -> Result<Vec<Part>, AdapterError> {
    if data.trim() == "[DONE]" {
        return Ok(vec![Part::Done]);
    }
    let v: Value = serde_json::from_str(data).map_err(|e| AdapterError::Protocol {
        message: format!("bad stream chunk ({e}): {}", http::truncate(data, 200)),
    })?;
    if !v.is_object() {
        return Err(AdapterError::Protocol {
            message: format!(
                "stream chunk is not an object: {}",
                http::truncate(data, 200)
            ),
        });
    }
    if let Some(message) = http::error_in(&v) {
        return Err(AdapterError::Engine { message });
    }
    let mut out = Vec::new();
    // We ask for one choice; take index 0 (or the first without an index).
    let choice = v.get("choices").and_then(Value::as_array).and_then(|cs| {
        cs.iter()
            .find(|c| c.get("index").and_then(Value::as_u64).unwrap_or(0) == 0)
    });
    if let Some(c) = choice {
        let text = c.get("text").and_then(Value::as_str).or_else(|| {
            c.get("delta")
                .and_then(|d| d.get("content"))
                .and_then(Value::as_str)
        });
        if let Some(t) = text.filter(|t| !t.is_empty()) {
            out.push(Part::Text(t.to_owned()));
        }
        let calls = tool_call_deltas(c.get("delta").and_then(|d| d.get("tool_calls")));
        if !calls.is_empty() {
            out.push(Part::ToolCalls(calls));
        }
        let lps = logprobs_in(c.get("logprobs"));
        if !lps.is_empty() {
            out.push(Part::Logprobs(lps));
        }
        if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
            out.push(Part::Finish(match r {
                "length" => Some(FinishReason::Length),
                // TGI's Messages API reports its own names.
                "stop" | "eos" | "eos_token" | "stop_sequence" => Some(FinishReason::Stop),
                "tool_calls" => Some(FinishReason::ToolCalls),
                _ => None,
            }));
        }
    }
    let u = v.get("usage").filter(|u| u.is_object());
    let t = v.get("timings").filter(|t| t.is_object());
    if u.is_some() || t.is_some() {
        let num = |x: Option<&Value>, k: &str| x.and_then(|x| x.get(k)).and_then(Value::as_u64);
        out.push(Part::Usage(Usage {
            prompt_tokens: num(u, "prompt_tokens"),
            completion_tokens: num(u, "completion_tokens"),
            cached_tokens: num(
                u.and_then(|u| u.get("prompt_tokens_details")),
                "cached_tokens",
            ),
            decode_ms: t
                .and_then(|t| t.get("predicted_ms"))
                .and_then(Value::as_f64),
            prompt_n: num(t, "prompt_n"),
        }));
    }
    Ok(out)
}

/// The tool-call pieces of a chunk's `delta.tool_calls`. Pure.
fn tool_call_deltas(v: Option<&Value>) -> Vec<ToolCallDelta> {
    let Some(arr) = v.and_then(Value::as_array) else {
        return Vec::new();
    };
    arr.iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let f = c.get("function");
            let s = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_owned);
            let d = ToolCallDelta {
                index: c
                    .get("index")
                    .and_then(Value::as_u64)
                    .and_then(|n| u32::try_from(n).ok())
                    .unwrap_or(u32::try_from(i).unwrap_or(u32::MAX)),
                id: s(c.get("id")),
                name: s(f.and_then(|f| f.get("name"))),
                arguments: s(f.and_then(|f| f.get("arguments"))),
            };
            (d.id.is_some() || d.name.is_some() || d.arguments.is_some()).then_some(d)
        })
        .collect()
}

/// A choice's `logprobs`: chat's `{content: [{token, logprob, bytes, top_logprobs}]}` or the
/// legacy completions arrays `{tokens, token_logprobs, top_logprobs: [{text: logprob}]}`.
/// Pure.
pub fn logprobs_in(v: Option<&Value>) -> Vec<TokenLogprob> {
    let Some(v) = v.filter(|v| v.is_object()) else {
        return Vec::new();
    };
    let f = |x: Option<&Value>| x.and_then(Value::as_f64).unwrap_or(f64::from(f32::MIN));
    let bytes = |x: Option<&Value>| {
        x.and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()))
                .collect::<Vec<u8>>()
        })
    };
    let text = |x: Option<&Value>| x.and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(content) = v.get("content").and_then(Value::as_array) {
        return content
            .iter()
            .map(|e| TokenLogprob {
                token: text(e.get("token")),
                logprob: f(e.get("logprob")),
                bytes: bytes(e.get("bytes")),
                top: e
                    .get("top_logprobs")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .map(|t| TopLogprob {
                                token: text(t.get("token")),
                                logprob: f(t.get("logprob")),
                                bytes: bytes(t.get("bytes")),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect();
    }
    let Some(tokens) = v.get("tokens").and_then(Value::as_array) else {
        return Vec::new();
    };
    let lps = v.get("token_logprobs").and_then(Value::as_array);
    let tops = v.get("top_logprobs").and_then(Value::as_array);
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut top: Vec<TopLogprob> = tops
                .and_then(|a| a.get(i))
                .and_then(Value::as_object)
                .map(|m| {
                    m.iter()
                        .map(|(k, lp)| TopLogprob {
                            token: k.clone(),
                            logprob: f(Some(lp)),
                            bytes: None,
                        })
                        .collect()
                })
                .unwrap_or_default();
            // A JSON object has no order: most likely first.
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            TokenLogprob {
                token: text(Some(t)),
                logprob: f(lps.and_then(|a| a.get(i))),
                bytes: None,
                top,
            }
        })
        .collect()
}

/// Accumulates finish reason and usage until `[DONE]`.
#[derive(Default)]
pub(crate) struct OpenAiDecoder {
    finished: bool,
    completion: Completion,
    /// llama-server's `timings.prompt_n`, preferred over `usage.prompt_tokens` for `tokens_in`.
    prompt_n: Option<u64>,
    /// Alternatives kept per token (the server may send more than the task asked for).
    top: usize,
}

impl OpenAiDecoder {
    /// A decoder keeping `top` alternatives per token's log probability.
    pub(crate) fn keeping_top(top: usize) -> Self {
        Self {
            top,
            ..Self::default()
        }
    }

    fn done(&mut self) -> EngineEvent {
        let mut c = std::mem::take(&mut self.completion);
        c.tokens_in = self.prompt_n.or(c.tokens_in);
        EngineEvent::Done(c)
    }
}

impl Decoder for OpenAiDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
        let mut out = Vec::new();
        let mut chunk = Chunk::default();
        let mut any = false;
        for p in parse_chunk(data)? {
            match p {
                Part::Text(t) => {
                    chunk.text.push_str(&t);
                    any = true;
                }
                Part::Logprobs(mut l) => {
                    for t in &mut l {
                        t.top.truncate(self.top);
                    }
                    chunk.logprobs.extend(l);
                    any = true;
                }
                Part::ToolCalls(c) => {
                    chunk.tool_calls.extend(c);
                    any = true;
                }
                Part::Finish(r) => {
                    self.finished = true;
                    self.completion.finish_reason = r;
                }
                Part::Usage(u) => {
                    let c = &mut self.completion;
                    c.tokens_in = u.prompt_tokens.or(c.tokens_in);
                    c.prompt_tokens = u.prompt_tokens.or(c.prompt_tokens);
                    c.tokens_out = u.completion_tokens.or(c.tokens_out);
                    c.tokens_cached = u.cached_tokens.or(c.tokens_cached);
                    c.decode_ms = u.decode_ms.or(c.decode_ms);
                    self.prompt_n = u.prompt_n.or(self.prompt_n);
                }
                Part::Done => {
                    out.push(self.done());
                    break;
                }
            }
        }
        if any {
            // The chunk's content comes before its end.
            out.insert(0, std::mem::take(&mut chunk).into_event());
        }
        Ok(out)
    }

    fn eof(&mut self) -> Result<EngineEvent, AdapterError> {
        // `[DONE]` is the end marker; a server that closes right after the finishing chunk
        // without it still finished.
        if self.finished {
            Ok(self.done())
        } else {
            Err(http::closed_early())
        }
    }
}

/// vLLM's KV cache usage (0..=1) from its Prometheus text: the mean over series of
/// `vllm:kv_cache_usage_perc` (V1) or else `vllm:gpu_cache_usage_perc` (V0). Pure.
pub fn parse_kv_cache_usage(metrics: &str) -> Option<f64> {
    ["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"]
        .iter()
        .find_map(|name| {
            let vals: Vec<f64> = metrics
                .lines()
                .filter_map(|l| sample_value(l.trim(), name))
                .filter(|v| v.is_finite())
                .collect();
            (!vals.is_empty())
                .then(|| (vals.iter().sum::<f64>() / vals.len() as f64).clamp(0.0, 1.0))
        })
}

/// The value of one Prometheus sample line of metric `name` (`name{labels} value [ts]`).
fn sample_value(line: &str, name: &str) -> Option<f64> {
    let rest = line.strip_prefix(name)?;
    let rest = if let Some(labels) = rest.strip_prefix('{') {
        // Skip the label set; `}` may appear inside quoted, escaped label values.
        let (mut quoted, mut escaped) = (false, false);
        let end = labels.char_indices().find_map(|(i, c)| {
            match (quoted, escaped, c) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                (false, _, '}') => return Some(i),
                _ => {}
            }
            None
        })?;
        &labels[end + 1..]
    } else if rest.starts_with([' ', '\t']) {
        rest
    } else {
        return None; // another metric sharing the prefix
    };
    rest.split_whitespace().next()?.parse().ok()
}

#[async_trait]
impl EngineAdapter for OpenAiAdapter {
    fn engine(&self) -> &'static str {
        self.kind
    }

    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn health(&self) -> Result<(), AdapterError> {
        let v = self.models().await?;
        if first_model(&v).is_none() {
            return Err(AdapterError::Engine {
                message: "the server lists no models at /v1/models (still loading?)".into(),
            });
        }
        Ok(())
    }

    async fn info(&self) -> Result<EngineInfo, AdapterError> {
        let v = self.models().await?;
        let m = first_model(&v);
        let configured = self.model.as_deref();
        // The configured model's entry when the server lists several (LM Studio, SGLang).
        let entry = configured
            .and_then(|c| models_in(&v).into_iter().find(|e| e.id == c))
            .or(m);
        // vLLM answers `GET /version`; other servers 404, which is fine.
        let version = match self.get("/version", Duration::from_secs(2)).await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("version").and_then(Value::as_str).map(str::to_owned)),
            Err(_) => None,
        };
        Ok(EngineInfo {
            version: version
                .or_else(|| entry.as_ref().and_then(|e| e.owned_by.clone()))
                .unwrap_or_else(|| "unknown".into()),
            ctx_per_slot: entry.as_ref().and_then(|e| e.ctx),
            slots: None,
            model: configured
                .map(str::to_owned)
                .or_else(|| entry.map(|e| e.id)),
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EngineStream, AdapterError> {
        let model = self.model_name().await;
        let body = |usage: bool| match &req.prompt {
            Prompt::Text(t) => (
                "/v1/completions",
                completions_body(&req, t, model.as_deref(), usage),
            ),
            Prompt::Chat(turns) => (
                "/v1/chat/completions",
                chat_body(&req, turns, model.as_deref(), usage),
            ),
        };
        let usage = self.include_usage.load(Ordering::Relaxed);
        let (path, b) = body(usage);
        let resp = match self.post_stream(path, &b).await {
            Err(AdapterError::Rejected {
                status: 400 | 422,
                message,
            }) if usage && message.contains("stream_options") => {
                // An older server that does not know `stream_options`: ask without it from now on.
                tracing::info!(endpoint = %self.base, "server refuses stream_options; token counts come from the stream instead");
                self.include_usage.store(false, Ordering::Relaxed);
                let (path, b) = body(false);
                self.post_stream(path, &b).await?
            }
            r => r?,
        };
        Ok(http::sse_stream(
            resp.bytes_stream(),
            OpenAiDecoder::default(),
        ))
    }

    async fn kv_cache_usage(&self) -> Result<Option<f64>, AdapterError> {
        let resp = self
            .http
            .get(self.url("/metrics"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        // Servers without Prometheus metrics (404, 501) simply have no figure.
        if !resp.status().is_success() {
            return Ok(None);
        }
        let text = resp.text().await.map_err(|e| AdapterError::Protocol {
            message: format!("/metrics body unreadable: {e}"),
        })?;
        Ok(parse_kv_cache_usage(&text))
    }

    async fn embed(&self, input: &[String]) -> Result<crate::Embeddings, AdapterError> {
        let model = self.model_name().await;
        let body = crate::scoring::embeddings_body(input, model.as_deref());
        let v = crate::scoring::post(&self.http, &self.base, "/v1/embeddings", &body).await?;
        crate::scoring::parse_embeddings(&v, input.len())
    }

    async fn rerank(&self, req: &crate::RerankRequest) -> Result<crate::Ranked, AdapterError> {
        let model = self.model_name().await;
        let body = crate::scoring::rerank_body(req, model.as_deref());
        let v = crate::scoring::post(&self.http, &self.base, "/v1/rerank", &body).await?;
        crate::scoring::parse_ranked(&v, req.documents.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{run_chunks, split_at};
    use proptest::prelude::*;

    #[test]
    fn completion_chunk() {
        let p = parse_chunk(r#"{"choices":[{"text":" fot","index":0,"logprobs":null,"finish_reason":null}],"object":"text_completion"}"#).unwrap();
        assert_eq!(p, vec![Part::Text(" fot".into())]);
    }

    #[test]
    fn chat_role_chunk_is_silent() {
        let p = parse_chunk(r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"role":"assistant","content":null}}]}"#).unwrap();
        assert!(p.is_empty());
        let p = parse_chunk(r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#).unwrap();
        assert!(p.is_empty());
    }

    #[test]
    fn finish_and_usage() {
        let p = parse_chunk(r#"{"choices":[{"text":"","index":0,"finish_reason":"length"}],"usage":{"completion_tokens":4,"prompt_tokens":3,"total_tokens":7,"prompt_tokens_details":{"cached_tokens":1}},"timings":{"predicted_ms":9.5}}"#).unwrap();
        assert_eq!(
            p,
            vec![
                Part::Finish(Some(FinishReason::Length)),
                Part::Usage(Usage {
                    prompt_tokens: Some(3),
                    completion_tokens: Some(4),
                    cached_tokens: Some(1),
                    decode_ms: Some(9.5),
                    prompt_n: None,
                })
            ]
        );
        let p = parse_chunk(
            r#"{"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert!(matches!(&p[..], [Part::Usage(u)] if u.completion_tokens == Some(2)));
        assert_eq!(parse_chunk("[DONE]").unwrap(), vec![Part::Done]);
        assert_eq!(
            parse_chunk(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#)
                .unwrap(),
            vec![Part::Finish(Some(FinishReason::ToolCalls))]
        );
    }

    #[test]
    fn error_chunks() {
        for data in [
            r#"{"error":{"message":"boom","type":"InternalServerError","code":500}}"#,
            r#"{"object":"error","message":"boom","type":"BadRequestError","code":400}"#,
        ] {
            assert!(
                matches!(parse_chunk(data), Err(AdapterError::Engine { message }) if message == "boom")
            );
        }
        assert!(matches!(
            parse_chunk("[1,2]"),
            Err(AdapterError::Protocol { .. })
        ));
    }

    #[test]
    fn tool_call_pieces_and_logprobs() {
        let first = r#"{"choices":[{"finish_reason":null,"index":0,"delta":{"tool_calls":[{"index":0,"id":"B6Z","type":"function","function":{"name":"get_weather","arguments":"{"}}]}}]}"#;
        assert_eq!(
            parse_chunk(first).unwrap(),
            vec![Part::ToolCalls(vec![ToolCallDelta {
                index: 0,
                id: Some("B6Z".into()),
                name: Some("get_weather".into()),
                arguments: Some("{".into()),
            }])]
        );
        let mut d = OpenAiDecoder::keeping_top(1);
        let evs = d
            .feed(r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\n\""}}]}}]}"#)
            .unwrap();
        let [EngineEvent::Chunk(c)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(c.text, "");
        assert_eq!(c.tool_calls[0].arguments.as_deref(), Some("\n\""));
        assert_eq!(c.tool_calls[0].id, None);
        // Chat log probabilities, cut to what the task asked for.
        let evs = d
            .feed(r#"{"choices":[{"index":0,"delta":{"content":"a"},"logprobs":{"content":[{"id":5,"token":"a","bytes":[97],"logprob":-0.25,"top_logprobs":[{"token":"a","logprob":-0.25},{"token":"b","logprob":-2.0}]}]}}]}"#)
            .unwrap();
        let [EngineEvent::Chunk(c)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(c.text, "a");
        assert_eq!(c.logprobs[0].logprob, -0.25);
        assert_eq!(c.logprobs[0].bytes.as_deref(), Some(&b"a"[..]));
        assert_eq!(c.logprobs[0].top.len(), 1);
        // The legacy completions arrays.
        let l = logprobs_in(Some(
            &json!({"tokens": [" x", "y"], "token_logprobs": [-1.0, -0.5],
            "top_logprobs": [{" z": -3.0, " x": -1.0}, {"y": -0.5}], "text_offset": [0, 2]}),
        ));
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].token, " x");
        assert_eq!(l[0].top[0].token, " x", "most likely first");
        assert_eq!(l[1].logprob, -0.5);
        assert!(logprobs_in(Some(&Value::Null)).is_empty());
        let evs = d
            .feed(r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"timings":{"prompt_n":3,"predicted_ms":1.5}}"#)
            .unwrap();
        assert!(evs.is_empty());
        let evs = d
            .feed(r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4}}"#)
            .unwrap();
        assert!(evs.is_empty());
        let evs = d.feed("[DONE]").unwrap();
        let [EngineEvent::Done(c)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(c.tokens_in, Some(3), "llama-server's prompt_n wins");
        assert_eq!(c.prompt_tokens, Some(9));
    }

    #[test]
    fn extras_pass_through_by_their_openai_names() {
        let req = GenerateRequest {
            prompt: Prompt::Chat(vec![crate::ChatTurn::text("user", "hi")]),
            max_tokens: 7,
            tools: vec![json!({"type": "function", "function": {"name": "f"}})],
            tool_choice: Some(json!({"type": "function", "function": {"name": "f"}})),
            parallel_tool_calls: Some(true),
            logprobs: Some(3),
            logit_bias: vec![("1".into(), -100.0)],
            presence_penalty: Some(1.0),
            response_format: Some(crate::ResponseFormat::JsonSchema {
                name: "n".into(),
                schema: Some(json!({"type": "object"})),
                strict: Some(true),
            }),
            ..Default::default()
        };
        let Prompt::Chat(turns) = &req.prompt else {
            unreachable!()
        };
        let b = chat_body(&req, turns, Some("m"), true);
        assert_eq!(b["tools"][0]["function"]["name"], "f");
        assert_eq!(b["tool_choice"]["function"]["name"], "f");
        assert_eq!(b["parallel_tool_calls"], true);
        assert_eq!(b["logprobs"], true);
        assert_eq!(b["top_logprobs"], 3);
        assert_eq!(b["logit_bias"], json!({"1": -100.0}));
        assert_eq!(b["presence_penalty"], 1.0);
        assert_eq!(
            b["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": true}})
        );
        let t = completions_body(
            &GenerateRequest {
                logprobs: Some(2),
                ..req.clone()
            },
            "p",
            None,
            true,
        );
        assert_eq!(t["logprobs"], 2);
        assert!(t.get("tools").is_none());
        assert!(t.get("top_logprobs").is_none());
    }

    #[test]
    fn second_choice_ignored() {
        let p = parse_chunk(r#"{"choices":[{"index":1,"text":"no"},{"index":0,"text":"yes"}]}"#)
            .unwrap();
        assert_eq!(p, vec![Part::Text("yes".into())]);
    }

    #[test]
    fn bodies() {
        let req = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 7,
            seed: Some(42),
            temperature: Some(0.5),
            stop: vec!["\n".into()],
            ..Default::default()
        };
        let b = completions_body(&req, "hi", Some("m"), true);
        assert_eq!(b["model"], "m");
        assert_eq!(b["prompt"], "hi");
        assert_eq!(b["seed"], 42);
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["stream"], true);
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["stop"][0], "\n");
        assert!(b.get("top_k").is_none());
        let turns = vec![crate::ChatTurn::text("user", "hi")];
        let b = chat_body(&req, &turns, None, false);
        assert_eq!(b["messages"][0]["role"], "user");
        assert!(b.get("model").is_none());
        assert!(b.get("stream_options").is_none());
    }

    #[test]
    fn models_listing() {
        let vllm = json!({"object":"list","data":[{"id":"meta-llama/Llama-3.1-8B-Instruct","object":"model","created":1,"owned_by":"vllm","root":"meta-llama/Llama-3.1-8B-Instruct","parent":null,"max_model_len":8192,"permission":[]}]});
        assert_eq!(
            first_model(&vllm),
            Some(ModelEntry {
                id: "meta-llama/Llama-3.1-8B-Instruct".into(),
                ctx: Some(8192),
                owned_by: Some("vllm".into())
            })
        );
        let llama = json!({"object":"list","data":[{"id":"/m.gguf","object":"model","owned_by":"llamacpp","meta":{"n_ctx":1024}}]});
        assert_eq!(first_model(&llama).and_then(|m| m.ctx), Some(1024));
        assert_eq!(first_model(&json!({"data":[]})), None);
    }

    #[test]
    fn kv_usage_from_vllm_metrics() {
        let v1 = "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{engine=\"0\",model_name=\"a}b\"} 0.25\nvllm:kv_cache_usage_perc{engine=\"1\",model_name=\"a\\\"}\"} 0.75\n";
        assert_eq!(parse_kv_cache_usage(v1), Some(0.5));
        let v0 = "vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.125 1712345678\nvllm:gpu_cache_usage_perc_x 9\n";
        assert_eq!(parse_kv_cache_usage(v0), Some(0.125));
        assert_eq!(
            parse_kv_cache_usage("llamacpp:requests_processing 0\n"),
            None
        );
        assert_eq!(parse_kv_cache_usage("vllm:kv_cache_usage_perc NaN\n"), None);
    }

    /// Renders tokens as a vLLM-style completions stream.
    fn vllm_stream(tokens: &[String], chat: bool) -> Vec<u8> {
        let mut s = String::new();
        if chat {
            s.push_str("data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n");
        }
        for t in tokens {
            let c = if chat {
                json!({"choices":[{"index":0,"delta":{"content":t},"finish_reason":null}],"usage":null})
            } else {
                json!({"choices":[{"index":0,"text":t,"finish_reason":null}],"usage":null})
            };
            s.push_str(&format!("data: {c}\n\n"));
        }
        s.push_str(
            "data: {\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\n\n",
        );
        s.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        s.into_bytes()
    }

    proptest! {
        #[test]
        fn parse_chunk_never_panics(s in ".*") {
            let _ = parse_chunk(&s);
        }

        #[test]
        fn parse_chunk_never_panics_on_json(v in crate::fuzz::json_value()) {
            let _ = parse_chunk(&v.to_string());
        }

        #[test]
        fn text_roundtrips_exactly(s in any::<String>()) {
            let data = json!({"choices":[{"index":0,"text":s,"finish_reason":null}]}).to_string();
            let want = if s.is_empty() { vec![] } else { vec![Part::Text(s.clone())] };
            prop_assert_eq!(parse_chunk(&data).unwrap(), want);
            let data = json!({"choices":[{"index":0,"delta":{"content":s},"finish_reason":null}]}).to_string();
            let want = if s.is_empty() { vec![] } else { vec![Part::Text(s)] };
            prop_assert_eq!(parse_chunk(&data).unwrap(), want);
        }

        #[test]
        fn stream_roundtrips_however_split(
            toks in proptest::collection::vec(".{1,8}", 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
            chat in any::<bool>(),
        ) {
            let bytes = vllm_stream(&toks, chat);
            let evs = run_chunks(split_at(&bytes, &cuts), OpenAiDecoder::default());
            let mut got = Vec::new();
            let mut done = None;
            for e in evs {
                match e.unwrap() {
                    EngineEvent::Token(t) => got.push(t),
                    EngineEvent::Chunk(c) => got.push(c.text),
                    EngineEvent::Done(c) => done = Some(c),
                }
            }
            prop_assert_eq!(got, toks);
            let c = done.unwrap();
            prop_assert_eq!(c.finish_reason, Some(FinishReason::Length));
            prop_assert_eq!(c.tokens_out, Some(3));
        }

        #[test]
        fn arbitrary_bytes_terminate(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            crate::fuzz::terminates(chunks, OpenAiDecoder::default())?;
        }

        #[test]
        fn sse_soup_terminates(chunks in crate::fuzz::sse_soup()) {
            crate::fuzz::terminates(chunks, OpenAiDecoder::default())?;
        }

        #[test]
        fn kv_parser_never_panics(s in ".*") {
            let _ = parse_kv_cache_usage(&s);
            let _ = parse_kv_cache_usage(&format!("vllm:kv_cache_usage_perc{s}"));
        }
    }
}
