//! llama.cpp `llama-server`: native `/completion` SSE stream, `/health`, `/props`, `/slots`,
//! `/apply-template` for chat.
//!
//! Stream format (one SSE `data:` line per chunk):
//! `{"content":"…","stop":false,"id_slot":0,"tokens":[…]}` …, then a last chunk with
//! `"stop":true`, `"stop_type":"limit"|"eos"|"word"` and `"timings":{prompt_n, predicted_n,
//! predicted_ms, …}`. An error inside the stream arrives as `{"error":{"message":…}}`. With
//! `n_probs`, each chunk has `completion_probabilities: [{token, bytes, logprob,
//! top_logprobs: [{token, bytes, logprob}]}]`, one entry per token of the chunk.
//!
//! A chat whose reply may hold tool calls goes to llama-server's OpenAI-compatible
//! `/v1/chat/completions` instead: only there does llama-server build the chat template's
//! tool-call grammar and parse the calls out of the output (docs/DECISIONS.md, "Tool calls").

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, Decoder};
use crate::openai::OpenAiDecoder;
use crate::{
    AdapterError, Chunk, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream,
    FinishReason, GenerateRequest, Prompt, SlotFile, SlotState, TokenLogprob, TopLogprob,
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

    async fn apply_template(&self, req: &GenerateRequest) -> Result<String, AdapterError> {
        let Prompt::Chat(turns) = &req.prompt else {
            return Err(AdapterError::Unsupported("templating a text prompt"));
        };
        let v = self
            .post_json(
                "/apply-template",
                &template_body(req, turns),
                Duration::from_secs(10),
            )
            .await?;
        v.get("prompt")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| AdapterError::Protocol {
                message: "/apply-template returned no `prompt`".into(),
            })
    }

    /// `POST path` with a JSON body; the answer's JSON.
    async fn post_json(
        &self,
        path: &str,
        body: &Value,
        timeout: Duration,
    ) -> Result<Value, AdapterError> {
        let resp = self
            .http
            .post(self.url(path))
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        http::check_status(resp)
            .await?
            .json()
            .await
            .map_err(|e| AdapterError::Protocol {
                message: format!("{path} did not return JSON: {e}"),
            })
    }

    /// `POST /slots/{slot}?action=save|restore` with `{"filename"}` (the engine resolves it in
    /// its `--slot-save-path`).
    async fn slot_file(
        &self,
        slot: u32,
        action: &str,
        filename: &str,
    ) -> Result<SlotFile, AdapterError> {
        let v = self
            .post_json(
                &format!("/slots/{slot}?action={action}"),
                &json!({ "filename": filename }),
                // A large context takes a while to write; the engine defers it while the slot
                // works.
                Duration::from_secs(60),
            )
            .await?;
        slot_file_of(&v, action).ok_or_else(|| AdapterError::Protocol {
            message: format!("slot {action} answer without its counts: {v}"),
        })
    }
}

/// llama-server continues a final assistant message (prefill) but refuses two or more at the
/// end of the list, which OpenAI clients may send (a reply in parts): they are one turn to
/// continue, so they are joined (texts concatenated, tool calls kept in order).
pub fn join_trailing_assistant(
    turns: &[crate::ChatTurn],
) -> std::borrow::Cow<'_, [crate::ChatTurn]> {
    let n = turns
        .iter()
        .rev()
        .take_while(|t| t.role == "assistant")
        .count();
    if n < 2 {
        return std::borrow::Cow::Borrowed(turns);
    }
    let split = turns.len() - n;
    let tail = &turns[split..];
    let calls: Vec<Value> = tail
        .iter()
        .flat_map(|t| t.tool_calls.iter().flatten().cloned())
        .collect();
    let mut joined = crate::ChatTurn::text(
        "assistant",
        tail.iter().map(|t| t.content.as_str()).collect::<String>(),
    );
    joined.tool_calls = (!calls.is_empty()).then_some(calls);
    let mut out = turns[..split].to_vec();
    out.push(joined);
    std::borrow::Cow::Owned(out)
}

/// The JSON body of an `/apply-template` request: the messages, and the tools (with
/// `tool_choice`) so that the template describes them to the model.
pub fn template_body(req: &GenerateRequest, turns: &[crate::ChatTurn]) -> Value {
    let turns = join_trailing_assistant(turns);
    let mut b = json!({ "messages": turns });
    if !req.tools.is_empty() {
        b["tools"] = json!(req.tools);
        if let Some(c) = tool_choice_for_llama(req).1 {
            b["tool_choice"] = c;
        }
    }
    b
}

/// `tools` and `tool_choice` as llama-server takes them. It knows only the modes `none`,
/// `auto` and `required` (it ignores a named function with a warning), so a named function
/// becomes `required` over that one tool: the same constraint.
pub fn tool_choice_for_llama(req: &GenerateRequest) -> (Vec<Value>, Option<Value>) {
    let named = req
        .tool_choice
        .as_ref()
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    match named {
        Some(name) => (
            req.tools
                .iter()
                .filter(|t| {
                    t.get("function")
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        == Some(name)
                })
                .cloned()
                .collect(),
            Some(json!("required")),
        ),
        None => (req.tools.clone(), req.tool_choice.clone()),
    }
}

/// The JSON body of a streaming `/v1/chat/completions` request (a chat that may call tools).
pub fn chat_body(req: &GenerateRequest, turns: &[crate::ChatTurn]) -> Value {
    let turns = join_trailing_assistant(turns);
    let mut b = crate::openai::chat_body(req, &turns, None, true);
    let (tools, choice) = tool_choice_for_llama(req);
    b["tools"] = json!(tools);
    match choice {
        Some(c) => b["tool_choice"] = c,
        None => {
            if let Some(o) = b.as_object_mut() {
                o.remove("tool_choice");
            }
        }
    }
    // llama-server returns no probabilities at all for `top_logprobs: 0`; ask for one and
    // drop it (the decoder keeps as many as the task asked for).
    if let Some(n) = req.logprobs {
        b["top_logprobs"] = json!(n.max(1));
    }
    b["cache_prompt"] = json!(req.cache_prompt);
    if let Some(s) = req.slot {
        b["id_slot"] = json!(s);
    }
    b
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
    http::insert_sampling(o, req);
    if let Some(s) = req.slot {
        o.insert("id_slot".into(), json!(s));
    }
    // `n_probs: 0` means none at all: ask for one alternative and drop it in the decoder.
    if let Some(n) = req.logprobs {
        o.insert("n_probs".into(), json!(n.max(1)));
    }
    // Grammar-constrained JSON. llama-server's `/v1/chat/completions` would build the same
    // grammar from `response_format`, but prefixed with the template's generation prompt,
    // which fails for models whose tokenizer splits that prompt differently ("Failed to
    // initialize samplers"); `/completion` constrains only what is generated.
    if let Some(f) = &req.response_format {
        o.insert("json_schema".into(), f.schema());
    }
    b
}

#[derive(Deserialize)]
struct RawChunk {
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
    /// With `n_probs`: each token of this chunk.
    #[serde(default)]
    completion_probabilities: Option<Vec<RawProb>>,
}

#[derive(Deserialize)]
struct RawProb {
    #[serde(default)]
    token: String,
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
    #[serde(default)]
    top_logprobs: Vec<RawTop>,
}

#[derive(Deserialize)]
struct RawTop {
    #[serde(default)]
    token: String,
    #[serde(default)]
    logprob: Option<f64>,
    #[serde(default)]
    bytes: Option<Vec<u8>>,
}

impl RawProb {
    fn into_logprob(self) -> TokenLogprob {
        TokenLogprob {
            token: self.token,
            // llama-server writes -inf (probability 0) as the lowest float; a missing value
            // means the same.
            logprob: self.logprob.unwrap_or(f64::from(f32::MIN)),
            bytes: self.bytes,
            top: self
                .top_logprobs
                .into_iter()
                .map(|t| TopLogprob {
                    token: t.token,
                    logprob: t.logprob.unwrap_or(f64::from(f32::MIN)),
                    bytes: t.bytes,
                })
                .collect(),
        }
    }
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
    let c: RawChunk = serde_json::from_str(data).map_err(|e| AdapterError::Protocol {
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
    let logprobs: Vec<TokenLogprob> = c
        .completion_probabilities
        .unwrap_or_default()
        .into_iter()
        .map(RawProb::into_logprob)
        .collect();
    if !c.stop || !c.content.is_empty() || !logprobs.is_empty() {
        out.push(
            Chunk {
                text: c.content,
                logprobs,
                tool_calls: Vec::new(),
            }
            .into_event(),
        );
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

/// `/completion` ends with the chunk that has `"stop":true`. Keeps `top` alternatives per
/// token (what the task asked for; llama-server may send more).
#[derive(Default)]
pub(crate) struct LlamaCppDecoder {
    top: usize,
}

impl Decoder for LlamaCppDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
        let mut evs = parse_chunk(data)?;
        for e in &mut evs {
            if let EngineEvent::Chunk(c) = e {
                for l in &mut c.logprobs {
                    l.top.truncate(self.top);
                }
            }
        }
        Ok(evs)
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
        http::get_ok(&self.http, &self.base, self.url("/health")).await
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
        let top = req.logprobs.map_or(0, |n| n as usize);
        if let (true, Prompt::Chat(turns)) = (req.wants_tool_calls(), &req.prompt) {
            let resp = self
                .http
                .post(self.url("/v1/chat/completions"))
                // A fresh connection per stream (see below).
                .header(reqwest::header::CONNECTION, "close")
                .json(&chat_body(&req, turns))
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            let resp = http::check_status(resp).await?;
            return Ok(http::sse_stream(
                resp.bytes_stream(),
                OpenAiDecoder::keeping_top(top),
            ));
        }
        let prompt = match &req.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(_) => self.apply_template(&req).await?,
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
        Ok(http::sse_stream(
            resp.bytes_stream(),
            LlamaCppDecoder { top },
        ))
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

    async fn count_tokens(&self, req: &GenerateRequest) -> Result<u32, AdapterError> {
        let prompt = match &req.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(_) => self.apply_template(req).await?,
        };
        // As `/completion` reads the prompt: special tokens added and parsed.
        let body = json!({ "content": prompt, "add_special": true, "parse_special": true });
        let v = self
            .post_json("/tokenize", &body, Duration::from_secs(10))
            .await?;
        v.get("tokens")
            .and_then(Value::as_array)
            .map(|t| u32::try_from(t.len()).unwrap_or(u32::MAX))
            .ok_or_else(|| AdapterError::Protocol {
                message: "/tokenize returned no `tokens`".into(),
            })
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

    async fn save_slot(&self, slot: u32, filename: &str) -> Result<SlotFile, AdapterError> {
        self.slot_file(slot, "save", filename).await
    }

    async fn restore_slot(&self, slot: u32, filename: &str) -> Result<SlotFile, AdapterError> {
        self.slot_file(slot, "restore", filename).await
    }

    async fn embed(&self, input: &[String]) -> Result<crate::Embeddings, AdapterError> {
        let body = crate::scoring::embeddings_body(input, None);
        let v = crate::scoring::post(&self.http, &self.base, "/v1/embeddings", &body).await?;
        crate::scoring::parse_embeddings(&v, input.len())
    }

    async fn rerank(&self, req: &crate::RerankRequest) -> Result<crate::Ranked, AdapterError> {
        let body = crate::scoring::rerank_body(req, None);
        let v = crate::scoring::post(&self.http, &self.base, "/v1/rerank", &body).await?;
        crate::scoring::parse_ranked(&v, req.documents.len())
    }
}

/// The counts of a slot save (`n_saved`, `n_written`, `save_ms`) or restore (`n_restored`,
/// `n_read`, `restore_ms`) answer.
fn slot_file_of(v: &Value, action: &str) -> Option<SlotFile> {
    let (tokens, bytes) = match action {
        "save" => ("n_saved", "n_written"),
        _ => ("n_restored", "n_read"),
    };
    Some(SlotFile {
        tokens: v.get(tokens)?.as_u64()?,
        bytes: v.get(bytes)?.as_u64()?,
        ms: v["timings"][format!("{action}_ms")].as_f64().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn slot_file_answers_are_read() {
        use super::slot_file_of;
        let save = json!({"id_slot": 0, "filename": "f.bin", "n_saved": 1745, "n_written": 14309796, "timings": {"save_ms": 49.865}});
        let f = slot_file_of(&save, "save").unwrap();
        assert_eq!((f.tokens, f.bytes), (1745, 14309796));
        assert!((f.ms - 49.865).abs() < 1e-9);
        let restore =
            json!({"id_slot": 0, "n_restored": 12, "n_read": 900, "timings": {"restore_ms": 1.5}});
        assert_eq!(slot_file_of(&restore, "restore").unwrap().tokens, 12);
        assert!(slot_file_of(&restore, "save").is_none());
    }

    #[test]
    fn trailing_assistant_turns_are_joined() {
        use crate::ChatTurn;
        let one = [
            ChatTurn::text("user", "u"),
            ChatTurn::text("assistant", "a"),
        ];
        assert_eq!(join_trailing_assistant(&one).len(), 2);
        let mut call = ChatTurn::text("assistant", "");
        call.tool_calls = Some(vec![json!({"id": "c1"})]);
        let many = [
            ChatTurn::text("user", "u"),
            ChatTurn::text("assistant", "The "),
            call,
            ChatTurn::text("assistant", "end"),
        ];
        let j = join_trailing_assistant(&many);
        assert_eq!(j.len(), 2);
        assert_eq!(j[1].content, "The end");
        assert_eq!(j[1].tool_calls, Some(vec![json!({"id": "c1"})]));
        assert_eq!(j[0], many[0]);
    }

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

    fn tool_req() -> GenerateRequest {
        GenerateRequest {
            prompt: Prompt::Chat(vec![
                crate::ChatTurn::text("user", "weather?"),
                crate::ChatTurn {
                    role: "assistant".into(),
                    tool_calls: Some(vec![json!({"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"}})]),
                    ..Default::default()
                },
                crate::ChatTurn {
                    role: "tool".into(),
                    content: "sunny".into(),
                    tool_call_id: Some("c1".into()),
                    ..Default::default()
                },
            ]),
            max_tokens: 16,
            tools: vec![
                json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}),
                json!({"type": "function", "function": {"name": "get_time"}}),
            ],
            ..Default::default()
        }
    }

    #[test]
    fn completion_body_asks_for_probs_schema_and_bias() {
        let req = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 4,
            logprobs: Some(0),
            logit_bias: vec![("25380".into(), 100.0)],
            frequency_penalty: Some(0.5),
            response_format: Some(crate::ResponseFormat::JsonSchema {
                name: "w".into(),
                schema: Some(json!({"type": "object", "required": ["a"]})),
                strict: None,
            }),
            ..Default::default()
        };
        let b = completion_body(&req, "hi");
        // 0 alternatives still needs n_probs 1, else llama-server sends no probabilities.
        assert_eq!(b["n_probs"], 1);
        assert_eq!(b["logit_bias"], json!({"25380": 100.0}));
        assert_eq!(b["frequency_penalty"], 0.5);
        assert_eq!(b["json_schema"]["required"][0], "a");
        let any = GenerateRequest {
            response_format: Some(crate::ResponseFormat::JsonObject),
            ..req.clone()
        };
        assert_eq!(
            completion_body(&any, "x")["json_schema"],
            json!({"type": "object"})
        );
        let plain = completion_body(&GenerateRequest::default(), "x");
        for k in ["n_probs", "json_schema", "logit_bias", "frequency_penalty"] {
            assert!(plain.get(k).is_none(), "{k}");
        }
    }

    #[test]
    fn tools_choose_the_chat_endpoint_and_named_choice_becomes_required() {
        let mut req = tool_req();
        assert!(req.wants_tool_calls());
        req.tool_choice = Some(json!({"type": "function", "function": {"name": "get_time"}}));
        req.parallel_tool_calls = Some(false);
        req.logprobs = Some(0);
        req.slot = Some(2);
        let b = chat_body(
            &req,
            match &req.prompt {
                Prompt::Chat(t) => t,
                Prompt::Text(_) => unreachable!(),
            },
        );
        assert_eq!(b["tool_choice"], "required");
        assert_eq!(b["tools"].as_array().unwrap().len(), 1);
        assert_eq!(b["tools"][0]["function"]["name"], "get_time");
        assert_eq!(b["parallel_tool_calls"], false);
        assert_eq!(b["logprobs"], true);
        assert_eq!(b["top_logprobs"], 1);
        assert_eq!(b["id_slot"], 2);
        assert_eq!(b["stream"], true);
        assert_eq!(b["messages"][1]["tool_calls"][0]["id"], "c1");
        assert!(b["messages"][1].get("tool_call_id").is_none());
        assert_eq!(b["messages"][2]["tool_call_id"], "c1");
        // `none`: the template still describes the tools, through /apply-template.
        req.tool_choice = Some(json!("none"));
        assert!(!req.wants_tool_calls());
        let t = template_body(
            &req,
            match &req.prompt {
                Prompt::Chat(t) => t,
                Prompt::Text(_) => unreachable!(),
            },
        );
        assert_eq!(t["tool_choice"], "none");
        assert_eq!(t["tools"].as_array().unwrap().len(), 2);
        assert_eq!(t["messages"][2]["role"], "tool");
        let plain = template_body(
            &GenerateRequest::default(),
            &[crate::ChatTurn::text("user", "x")],
        );
        assert_eq!(
            plain,
            json!({"messages": [{"role": "user", "content": "x"}]})
        );
    }

    #[test]
    fn probabilities_become_logprob_chunks() {
        let data = r#"{"content":" Ши","stop":false,"completion_probabilities":[{"id":25445,"token":" Ши","bytes":[32,208,168,208,184],"logprob":-7.86,"top_logprobs":[{"id":29183,"token":" Colors","bytes":[32,67],"logprob":-7.04},{"id":6306,"token":" eq","logprob":-7.07}]}]}"#;
        let evs = parse_chunk(data).unwrap();
        let [EngineEvent::Chunk(c)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(c.text, " Ши");
        assert_eq!(c.logprobs[0].logprob, -7.86);
        assert_eq!(
            c.logprobs[0].bytes.as_deref(),
            Some(&[32u8, 208, 168, 208, 184][..])
        );
        assert_eq!(c.logprobs[0].top.len(), 2);
        assert_eq!(c.logprobs[0].top[1].token, " eq");
        let mut d = LlamaCppDecoder { top: 1 };
        let evs = d.feed(data).unwrap();
        let [EngineEvent::Chunk(c)] = &evs[..] else {
            panic!("{evs:?}")
        };
        assert_eq!(c.logprobs[0].top.len(), 1);
    }

    proptest! {
        #[test]
        fn parse_chunk_never_panics(s in ".*") {
            let _ = parse_chunk(&s);
        }

        #[test]
        fn sse_soup_terminates(chunks in crate::fuzz::sse_soup()) {
            crate::fuzz::terminates(chunks, LlamaCppDecoder::default())?;
        }

        #[test]
        fn content_roundtrips_exactly(s in any::<String>()) {
            let data = serde_json::json!({"content": s, "stop": false}).to_string();
            let evs = parse_chunk(&data).unwrap();
            prop_assert_eq!(evs, vec![EngineEvent::Token(s)]);
        }
    }
}
