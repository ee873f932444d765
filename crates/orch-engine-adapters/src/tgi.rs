//! HuggingFace text-generation-inference (TGI), from its published OpenAPI document
//! (`docs/openapi.json` in huggingface/text-generation-inference).
//!
//! - Text: `POST /generate_stream` with `{"inputs", "parameters":{max_new_tokens, seed,
//!   temperature, top_p, top_k, do_sample, stop, details}}`; SSE events
//!   `{"index":n,"token":{"id","text","logprob","special"},"generated_text":null,"details":null}`,
//!   the last one with `generated_text` set and
//!   `details: {finish_reason: length|eos_token|stop_sequence, generated_tokens, input_length,
//!   seed}`. Special tokens (`</s>`) carry no text for the client. Errors: HTTP 422/424/429/500
//!   with `{"error":"…","error_type":"…"}`, or the same object as an event mid-stream.
//! - Chat: TGI's OpenAI-compatible Messages API, `POST /v1/chat/completions` (the chat template
//!   lives in the server), through [`crate::openai`].
//! - `GET /health` (200, or 503 when the model is down), `GET /info` (`version`, `model_id`,
//!   `max_total_tokens`, `max_concurrent_requests`).
//!
//! CI has no TGI: this adapter is proven against fixtures written from that document
//! (`tests/tgi_fixture_*`), not against a running TGI.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{self, Decoder};
use crate::openai::OpenAiAdapter;
use crate::{
    AdapterError, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream, FinishReason,
    GenerateRequest, Prompt,
};

/// Adapter for one TGI server.
#[derive(Debug)]
pub struct TgiAdapter {
    base: String,
    http: reqwest::Client,
    /// The Messages API, for chat.
    chat: OpenAiAdapter,
}

impl TgiAdapter {
    /// An adapter for the TGI router at `base` (e.g. `http://127.0.0.1:3000`).
    pub fn new(base: &str) -> Result<Self, AdapterError> {
        let base = http::trim_base(base);
        Ok(Self {
            http: http::client(&base, Duration::from_secs(5))?,
            // TGI ignores `model` ("UNUSED" in its schema) but the field must parse.
            chat: OpenAiAdapter::new("tgi", &base, Some("tgi"))?,
            base,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

/// The JSON body of a `/generate_stream` request. TGI validates strictly (temperature and
/// top_k > 0, 0 < top_p < 1), so values that mean "off" are left out instead of sent.
pub fn generate_body(req: &GenerateRequest, prompt: &str) -> Value {
    let mut p = Map::new();
    p.insert("max_new_tokens".into(), json!(req.max_tokens));
    p.insert("details".into(), json!(true));
    // TGI decodes greedily unless told to sample; llama.cpp and vLLM sample by default, so
    // sample unless the caller asked for temperature 0 (greedy).
    let greedy = req.temperature.is_some_and(|t| t <= 0.0);
    p.insert("do_sample".into(), json!(!greedy));
    if let Some(t) = req.temperature.filter(|t| *t > 0.0) {
        p.insert("temperature".into(), json!(t));
    }
    if let Some(tp) = req.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
        p.insert("top_p".into(), json!(tp));
    }
    if let Some(k) = req.top_k.filter(|k| *k > 0) {
        p.insert("top_k".into(), json!(k));
    }
    if let Some(s) = req.seed {
        p.insert("seed".into(), json!(s));
    }
    if !req.stop.is_empty() {
        p.insert("stop".into(), json!(req.stop));
    }
    if let Some(f) = req.frequency_penalty {
        p.insert("frequency_penalty".into(), json!(f));
    }
    json!({ "inputs": prompt, "parameters": p })
}

/// Parses one `data:` payload of `/generate_stream` into zero, one or two events. Pure; never
/// panics.
pub fn parse_chunk(data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
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
    let mut out = Vec::with_capacity(2);
    if let Some(tok) = v.get("token").filter(|t| t.is_object()) {
        let special = tok.get("special").and_then(Value::as_bool).unwrap_or(false);
        if !special {
            if let Some(t) = tok.get("text").and_then(Value::as_str) {
                out.push(EngineEvent::Token(t.to_owned()));
            }
        }
    }
    if v.get("generated_text").is_some_and(Value::is_string) {
        let d = v.get("details").filter(|d| d.is_object());
        let num = |k: &str| d.and_then(|d| d.get(k)).and_then(Value::as_u64);
        out.push(EngineEvent::Done(Completion {
            finish_reason: match d
                .and_then(|d| d.get("finish_reason"))
                .and_then(Value::as_str)
            {
                Some("length") => Some(FinishReason::Length),
                Some("eos_token") | Some("stop_sequence") => Some(FinishReason::Stop),
                _ => None,
            },
            tokens_out: num("generated_tokens"),
            tokens_in: num("input_length"),
            prompt_tokens: num("input_length"),
            ..Default::default()
        }));
    }
    Ok(out)
}

/// `/generate_stream` ends with the event that carries `generated_text`.
pub(crate) struct TgiDecoder;

impl Decoder for TgiDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
        parse_chunk(data)
    }

    fn eof(&mut self) -> Result<EngineEvent, AdapterError> {
        Err(http::closed_early())
    }
}

#[async_trait]
impl EngineAdapter for TgiAdapter {
    fn engine(&self) -> &'static str {
        "tgi"
    }

    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn health(&self) -> Result<(), AdapterError> {
        http::get_ok(&self.http, &self.base, self.url("/health")).await
    }

    async fn info(&self) -> Result<EngineInfo, AdapterError> {
        let resp = self
            .http
            .get(self.url("/info"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        let v: Value =
            http::check_status(resp)
                .await?
                .json()
                .await
                .map_err(|e| AdapterError::Protocol {
                    message: format!("/info did not return JSON: {e}"),
                })?;
        let as_u32 = |k: &str| {
            v.get(k)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        Ok(EngineInfo {
            version: v
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            // TGI's limit is per request (input + output), which is what ctx per slot means.
            ctx_per_slot: as_u32("max_total_tokens"),
            slots: as_u32("max_concurrent_requests"),
            model: v.get("model_id").and_then(Value::as_str).map(str::to_owned),
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EngineStream, AdapterError> {
        crate::refuse_extras("tgi", &req)?;
        // TGI's generate parameters have no presence penalty.
        if req.presence_penalty.is_some_and(|p| p != 0.0) {
            return Err(AdapterError::Rejected {
                status: 400,
                message: "presence_penalty is not supported by the tgi adapter (TGI has frequency_penalty only)".into(),
            });
        }
        let prompt = match &req.prompt {
            Prompt::Text(t) => t.clone(),
            Prompt::Chat(_) => return self.chat.generate(req).await,
        };
        let resp = self
            .http
            .post(self.url("/generate_stream"))
            // A fresh connection per stream (see the OpenAI adapter).
            .header(reqwest::header::CONNECTION, "close")
            .json(&generate_body(&req, &prompt))
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        let resp = http::check_status(resp).await?;
        Ok(http::sse_stream(resp.bytes_stream(), TgiDecoder))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::http::{run_chunks, split_at};
    use proptest::prelude::*;

    #[test]
    fn token_and_final() {
        let evs = parse_chunk(r#"{"index":1,"token":{"id":3,"text":" Ray","logprob":-0.5,"special":false},"generated_text":null,"details":null}"#).unwrap();
        assert_eq!(evs, vec![EngineEvent::Token(" Ray".into())]);
        let evs = parse_chunk(r#"{"index":4,"token":{"id":2,"text":"</s>","logprob":-0.1,"special":true},"generated_text":" Rayleigh","details":{"finish_reason":"eos_token","generated_tokens":4,"input_length":7,"seed":42}}"#).unwrap();
        assert_eq!(
            evs,
            vec![EngineEvent::Done(Completion {
                finish_reason: Some(FinishReason::Stop),
                tokens_out: Some(4),
                tokens_in: Some(7),
                prompt_tokens: Some(7),
                ..Default::default()
            })]
        );
    }

    #[test]
    fn error_event() {
        let e = parse_chunk(
            r#"{"error":"Request failed during generation: CUDA OOM","error_type":"generation"}"#,
        )
        .unwrap_err();
        assert!(
            matches!(e, AdapterError::Engine { message } if message.contains("CUDA OOM") && message.contains("generation"))
        );
    }

    #[test]
    fn body_is_valid_for_tgi() {
        let req = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 5,
            seed: Some(9),
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(0),
            ..Default::default()
        };
        let b = generate_body(&req, "hi");
        assert_eq!(b["inputs"], "hi");
        let p = &b["parameters"];
        assert_eq!(p["max_new_tokens"], 5);
        assert_eq!(p["seed"], 9);
        assert_eq!(p["do_sample"], false);
        assert_eq!(p["details"], true);
        assert!(
            p.get("temperature").is_none() && p.get("top_p").is_none() && p.get("top_k").is_none()
        );
        let b = generate_body(
            &GenerateRequest {
                temperature: Some(0.7),
                top_p: Some(0.9),
                ..req
            },
            "hi",
        );
        assert_eq!(b["parameters"]["do_sample"], true);
        assert!(b["parameters"]["top_p"].is_number());
    }

    fn tgi_stream(tokens: &[String]) -> Vec<u8> {
        let mut s = String::new();
        for (i, t) in tokens.iter().enumerate() {
            let c = json!({"index": i + 1, "token": {"id": 5, "text": t, "logprob": -1.0, "special": false}, "generated_text": null, "details": null});
            // TGI writes `data:` without a space.
            s.push_str(&format!("data:{c}\n\n"));
        }
        let fin = json!({"index": tokens.len() + 1, "token": {"id": 2, "text": "</s>", "logprob": -0.2, "special": true}, "generated_text": tokens.concat(), "details": {"finish_reason": "length", "generated_tokens": tokens.len() + 1, "input_length": 3, "seed": 1}});
        s.push_str(&format!("data:{fin}\n\n"));
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
        fn token_text_roundtrips_exactly(s in any::<String>()) {
            let data = json!({"index":1,"token":{"id":1,"text":s,"logprob":null,"special":false},"generated_text":null,"details":null}).to_string();
            prop_assert_eq!(parse_chunk(&data).unwrap(), vec![EngineEvent::Token(s)]);
        }

        #[test]
        fn stream_roundtrips_however_split(
            toks in proptest::collection::vec(any::<String>(), 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let evs = run_chunks(split_at(&tgi_stream(&toks), &cuts), TgiDecoder);
            let mut got = Vec::new();
            let mut done = None;
            for e in evs {
                match e.unwrap() {
                    EngineEvent::Token(t) => got.push(t),
                    EngineEvent::Chunk(c) => got.push(c.text),
                    EngineEvent::Done(c) => done = Some(c),
                }
            }
            prop_assert_eq!(got, toks.clone());
            prop_assert_eq!(done.unwrap().tokens_out, Some(toks.len() as u64 + 1));
        }

        #[test]
        fn arbitrary_bytes_terminate(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            crate::fuzz::terminates(chunks, TgiDecoder)?;
        }

        #[test]
        fn sse_soup_terminates(chunks in crate::fuzz::sse_soup()) {
            crate::fuzz::terminates(chunks, TgiDecoder)?;
        }
    }
}
