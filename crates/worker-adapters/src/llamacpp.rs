//! llama.cpp `llama-server`: native `/completion` SSE stream, `/health`, `/props`, `/slots`,
//! `/apply-template` for chat.
//!
//! Stream format (one SSE `data:` line per chunk):
//! `{"content":"…","stop":false,"id_slot":0,"tokens":[…]}` …, then a last chunk with
//! `"stop":true`, `"stop_type":"limit"|"eos"|"word"` and `"timings":{prompt_n, predicted_n,
//! predicted_ms, …}`. An error inside the stream arrives as `{"error":{"message":…}}`.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, Decoder};
use crate::{
    AdapterError, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream, FinishReason,
    GenerateRequest, Prompt, SlotState,
};

/// Adapter for one `llama-server` process.
#[derive(Clone, Debug)]
pub struct LlamaCppAdapter {
    base: String,
    http: reqwest::Client,
}

impl LlamaCppAdapter {
    /// An adapter for the server at `base` (e.g. `http://127.0.0.1:8081`).
    pub fn new(base: impl Into<String>) -> Result<Self, AdapterError> {
        let base = http::trim_base(&base.into());
        let http = http::client(&base, Duration::from_secs(2))?;
        Ok(Self { base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn unreachable(&self, e: reqwest::Error) -> AdapterError {
        http::unreachable(&self.base, e)
    }

    async fn get_json(&self, path: &str) -> Result<Value, AdapterError> {
        let resp = self
            .http
            .get(self.url(path))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let resp = http::check_status(resp).await?;
        resp.json().await.map_err(|e| AdapterError::Protocol {
            message: format!("{path} did not return JSON: {e}"),
        })
    }

    async fn apply_template(&self, turns: &[crate::ChatTurn]) -> Result<String, AdapterError> {
        let resp = self
            .http
            .post(self.url("/apply-template"))
            .timeout(Duration::from_secs(10))
            .json(&json!({ "messages": turns }))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let v: Value =
            http::check_status(resp)
                .await?
                .json()
                .await
                .map_err(|e| AdapterError::Protocol {
                    message: format!("/apply-template did not return JSON: {e}"),
                })?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AdapterError::Protocol {
                message: "/apply-template returned no `prompt`".into(),
            })
    }
}

/// The JSON body of a `/completion` request.
pub fn completion_body(req: &GenerateRequest, prompt: &str) -> Value {
    let mut b = json!({
        "prompt": prompt,
        "n_predict": req.max_tokens,
        "stream": true,
        "cache_prompt": req.cache_prompt,
    });
    let o = b.as_object_mut().expect("json! object literal");
    if let Some(s) = req.seed {
        o.insert("seed".into(), json!(s));
    }
    if let Some(t) = req.temperature {
        o.insert("temperature".into(), json!(t));
    }
    if let Some(p) = req.top_p {
        o.insert("top_p".into(), json!(p));
    }
    if let Some(k) = req.top_k {
        o.insert("top_k".into(), json!(k));
    }
    if !req.stop.is_empty() {
        o.insert("stop".into(), json!(req.stop));
    }
    if let Some(s) = req.slot {
        o.insert("id_slot".into(), json!(s));
    }
    b
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    content: String,
    #[serde(default)]
    stop: bool,
    #[serde(default)]
    stop_type: Option<String>,
    /// -1 on token chunks, the real slot on the final one.
    #[serde(default)]
    id_slot: Option<i64>,
    #[serde(default)]
    tokens_cached: Option<u64>,
    /// The prompt's length, cached prefix included (final chunk).
    #[serde(default)]
    tokens_evaluated: Option<u64>,
    #[serde(default)]
    timings: Option<Timings>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct Timings {
    #[serde(default)]
    prompt_n: Option<u64>,
    #[serde(default)]
    predicted_n: Option<u64>,
    #[serde(default)]
    predicted_ms: Option<f64>,
}

/// Parses one `data:` payload of the `/completion` stream into zero, one or two events.
/// Never panics, whatever the engine sends.
pub fn parse_chunk(data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
    let c: Chunk = serde_json::from_str(data).map_err(|e| AdapterError::Protocol {
        message: format!("bad stream chunk ({e}): {}", http::truncate(data, 200)),
    })?;
    if let Some(e) = c.error {
        let message = e
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| e.to_string());
        return Err(AdapterError::Engine { message });
    }
    let mut out = Vec::with_capacity(2);
    if !c.stop || !c.content.is_empty() {
        out.push(EngineEvent::Token(c.content));
    }
    if c.stop {
        let finish_reason = match c.stop_type.as_deref() {
            Some("limit") => Some(FinishReason::Length),
            Some("eos") | Some("word") => Some(FinishReason::Stop),
            _ => None,
        };
        let t = c.timings.as_ref();
        out.push(EngineEvent::Done(Completion {
            finish_reason,
            tokens_out: t.and_then(|t| t.predicted_n),
            tokens_in: t.and_then(|t| t.prompt_n),
            prompt_tokens: c.tokens_evaluated,
            tokens_cached: c.tokens_cached,
            decode_ms: t.and_then(|t| t.predicted_ms),
            slot: c.id_slot.and_then(|s| u32::try_from(s).ok()),
        }));
    }
    Ok(out)
}

/// KV cache in use, from `/slots`: the tokens every slot holds (`n_prompt_tokens`, which grows
/// with the generated text) over the slots' total context (`n_ctx`). llama-server builds of
/// this generation no longer export a KV gauge on `/metrics`. `None` when `/slots` says
/// nothing usable. Pure.
pub fn kv_usage_from_slots(slots: &Value) -> Option<f64> {
    let (mut held, mut ctx) = (0u64, 0u64);
    for s in slots.as_array()? {
        ctx = ctx.saturating_add(s.get("n_ctx").and_then(Value::as_u64).unwrap_or(0));
        held = held.saturating_add(
            s.get("n_prompt_tokens")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        );
    }
    (ctx > 0).then(|| (held as f64 / ctx as f64).min(1.0))
}

/// `/completion` ends with the chunk that has `"stop":true`.
pub(crate) struct LlamaCppDecoder;

impl Decoder for LlamaCppDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
        parse_chunk(data)
    }

    fn eof(&mut self) -> Result<EngineEvent, AdapterError> {
        Err(http::closed_early())
    }
}

#[async_trait]
impl EngineAdapter for LlamaCppAdapter {
    fn engine(&self) -> &'static str {
        "llamacpp"
    }

    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn health(&self) -> Result<(), AdapterError> {
        let resp = self
            .http
            .get(self.url("/health"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        http::check_status(resp).await.map(|_| ())
    }

    async fn info(&self) -> Result<EngineInfo, AdapterError> {
        let v = self.get_json("/props").await?;
        let dgs = v.get("default_generation_settings");
        let as_u32 = |x: Option<&Value>| {
            x.and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        Ok(EngineInfo {
            version: v
                .get("build_info")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            ctx_per_slot: as_u32(dgs.and_then(|d| d.get("n_ctx"))),
            slots: as_u32(v.get("total_slots")),
            model: v
                .get("model_path")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EngineStream, AdapterError> {
        let prompt = match &req.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(turns) => self.apply_template(turns).await?,
        };
        let resp = self
            .http
            .post(self.url("/completion"))
            // llama-server closes the connection after a streamed response, but the client can
            // pool it before it sees the close; the next task (dispatched the instant this one
            // ends) would then fail on the dead connection. A fresh loopback connection per task
            // costs nothing.
            .header(reqwest::header::CONNECTION, "close")
            .json(&completion_body(&req, &prompt))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        let resp = http::check_status(resp).await?;
        Ok(http::sse_stream(resp.bytes_stream(), LlamaCppDecoder))
    }

    async fn slots(&self) -> Result<Vec<SlotState>, AdapterError> {
        let v = self.get_json("/slots").await?;
        let arr = v.as_array().ok_or_else(|| AdapterError::Protocol {
            message: "/slots did not return an array".into(),
        })?;
        Ok(arr
            .iter()
            .filter_map(|s| {
                Some(SlotState {
                    id: u32::try_from(s.get("id")?.as_u64()?).ok()?,
                    busy: s.get("is_processing")?.as_bool()?,
                })
            })
            .collect())
    }

    async fn kv_cache_usage(&self) -> Result<Option<f64>, AdapterError> {
        Ok(kv_usage_from_slots(&self.get_json("/slots").await?))
    }

    async fn erase_slot(&self, slot: u32) -> Result<(), AdapterError> {
        let resp = self
            .http
            .post(self.url(&format!("/slots/{slot}?action=erase")))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        http::check_status(resp).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_usage_sums_slots() {
        let v: Value = serde_json::from_str(
            r#"[{"id":0,"n_ctx":1000,"n_prompt_tokens":250},{"id":1,"n_ctx":1000},{"id":2,"n_ctx":"x","n_prompt_tokens":50}]"#,
        )
        .unwrap();
        assert_eq!(kv_usage_from_slots(&v), Some(0.15));
        assert_eq!(kv_usage_from_slots(&serde_json::json!([])), None);
        assert_eq!(kv_usage_from_slots(&serde_json::json!({"a": 1})), None);
        let full = serde_json::json!([{"n_ctx": 10, "n_prompt_tokens": 99}]);
        assert_eq!(kv_usage_from_slots(&full), Some(1.0));
    }
    use proptest::prelude::*;

    #[test]
    fn token_chunk() {
        let evs = parse_chunk(r#"{"index":0,"content":"a\u2028b\r","tokens":[5],"stop":false,"id_slot":-1,"tokens_predicted":1}"#)
            .unwrap();
        assert_eq!(evs, vec![EngineEvent::Token("a\u{2028}b\r".into())]);
    }

    #[test]
    fn final_chunk() {
        let evs = parse_chunk(
            r#"{"content":"","stop":true,"stop_type":"limit","id_slot":1,"tokens_cached":3,"tokens_evaluated":6,
               "timings":{"prompt_n":4,"predicted_n":16,"predicted_ms":12.5}}"#,
        )
        .unwrap();
        assert_eq!(
            evs,
            vec![EngineEvent::Done(Completion {
                finish_reason: Some(FinishReason::Length),
                tokens_out: Some(16),
                tokens_in: Some(4),
                prompt_tokens: Some(6),
                tokens_cached: Some(3),
                decode_ms: Some(12.5),
                slot: Some(1),
            })]
        );
    }

    #[test]
    fn final_chunk_with_text_yields_both() {
        let evs = parse_chunk(r#"{"content":"x","stop":true,"stop_type":"eos"}"#).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0], EngineEvent::Token("x".into()));
    }

    #[test]
    fn error_chunk() {
        let e = parse_chunk(r#"{"error":{"code":500,"message":"boom"}}"#).unwrap_err();
        assert!(matches!(e, AdapterError::Engine { message } if message == "boom"));
    }

    #[test]
    fn body_passes_sampling_through() {
        let req = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 7,
            seed: Some(42),
            temperature: Some(0.5),
            top_k: Some(3),
            slot: Some(1),
            stop: vec!["\n".into()],
            ..Default::default()
        };
        let b = completion_body(&req, "hi");
        assert_eq!(b["seed"], 42);
        assert_eq!(b["n_predict"], 7);
        assert_eq!(b["id_slot"], 1);
        assert_eq!(b["top_k"], 3);
        assert_eq!(b["stream"], true);
    }

    proptest! {
        #[test]
        fn parse_chunk_never_panics(s in ".*") {
            let _ = parse_chunk(&s);
        }

        #[test]
        fn sse_soup_terminates(chunks in crate::fuzz::sse_soup()) {
            let n: usize = chunks.iter().map(Vec::len).sum();
            let evs = crate::http::run_chunks(chunks, LlamaCppDecoder);
            prop_assert!(evs.len() <= n + 1);
            prop_assert!(crate::fuzz::ends_cleanly(&evs));
        }

        #[test]
        fn content_roundtrips_exactly(s in any::<String>()) {
            let data = serde_json::json!({"content": s, "stop": false}).to_string();
            let evs = parse_chunk(&data).unwrap();
            prop_assert_eq!(evs, vec![EngineEvent::Token(s)]);
        }
    }
}
