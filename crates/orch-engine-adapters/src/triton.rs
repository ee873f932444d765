//! NVIDIA Triton Inference Server through its generate extension, from Triton's
//! `docs/protocol/extension_generate.md` and the vLLM backend's request handling
//! (triton-inference-server/vllm_backend `src/utils/request.py`).
//!
//! - `POST /v2/models/{model}/generate_stream` with `{"text_input", "max_tokens", "stream":
//!   true, "parameters": {temperature, top_p, top_k, seed, stop}}`. Top-level fields become the
//!   model's input tensors where it has one of that name (`text_input`, `stream`, and
//!   `max_tokens` for TensorRT-LLM) and request parameters otherwise (`max_tokens` for the vLLM
//!   backend, which builds its `SamplingParams` from the parameters; it rejects keys it does
//!   not know, so only vLLM `SamplingParams` names are sent).
//! - The answer is SSE, one `data: {"model_name","model_version","text_output":…}` per model
//!   response (`text_output` is the new text when streaming), optionally with the vLLM
//!   backend's `finish_reason` / `num_output_tokens`. The stream ends when the connection
//!   closes; there is no end marker. An error is `{"error":"…"}`, as the body of a non-200
//!   answer or as an event after a 200.
//! - `GET /v2/health/ready` and `GET /v2/models/{model}/ready` for health, `GET /v2` (server
//!   metadata: `version`) for info. Triton exposes no context length through these.
//!
//! Chat is templated by the model's own pipeline on Triton; a `Chat` prompt is sent as the
//! `text_input` of its turns joined as `role: content` lines, which is what an untemplated
//! model receives. CI has no Triton: this adapter is proven against fixtures written from
//! those documents (`tests/triton_fixture_*`), not against a running Triton.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Map, Value};

use crate::http::{self, Decoder};
use crate::{
    AdapterError, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream, FinishReason,
    GenerateRequest, Prompt,
};

/// Adapter for one model on one Triton server.
#[derive(Debug)]
pub struct TritonAdapter {
    base: String,
    model: String,
    http: reqwest::Client,
}

impl TritonAdapter {
    /// An adapter for `model` on the Triton server at `base` (e.g. `http://127.0.0.1:8000`).
    pub fn new(base: &str, model: &str) -> Result<Self, AdapterError> {
        let base = http::trim_base(base);
        if model.is_empty() {
            return Err(AdapterError::Unsupported(
                "a triton pool without `model:` naming the Triton model",
            ));
        }
        Ok(Self {
            http: http::client(&base, Duration::from_secs(5))?,
            model: model.to_owned(),
            base,
        })
    }

    /// `{base}/v2/models/{model}/{tail}` with the model name escaped as one path segment.
    fn model_url(&self, tail: &str) -> Result<reqwest::Url, AdapterError> {
        let mut url = reqwest::Url::parse(&self.base).map_err(|e| AdapterError::Unreachable {
            endpoint: self.base.clone(),
            message: format!("not a URL: {e}"),
        })?;
        url.path_segments_mut()
            .map_err(|()| AdapterError::Unreachable {
                endpoint: self.base.clone(),
                message: "not a base URL".into(),
            })?
            .pop_if_empty()
            .extend(["v2", "models", &self.model])
            .extend(tail.split('/').filter(|s| !s.is_empty()));
        Ok(url)
    }

    async fn get(&self, url: reqwest::Url) -> Result<reqwest::Response, AdapterError> {
        let resp = self
            .http
            .get(url)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        http::check_status(resp).await
    }
}

/// The text sent for a prompt.
pub fn prompt_text(p: &Prompt) -> String {
    match p {
        Prompt::Text(t) => t.clone(),
        Prompt::Chat(turns) => turns
            .iter()
            .map(|t| format!("{}: {}", t.role, t.content))
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The JSON body of a `generate_stream` request. Triton parameters are scalars only, so at
/// most one stop string can travel (as a string, which vLLM's `stop` accepts).
pub fn generate_body(req: &GenerateRequest) -> Result<Value, AdapterError> {
    let mut p = Map::new();
    if let Some(t) = req.temperature {
        p.insert("temperature".into(), json!(t));
    }
    if let Some(tp) = req.top_p {
        p.insert("top_p".into(), json!(tp));
    }
    if let Some(k) = req.top_k {
        p.insert("top_k".into(), json!(k));
    }
    if let Some(s) = req.seed {
        p.insert("seed".into(), json!(s));
    }
    // vLLM's SamplingParams names.
    if let Some(f) = req.frequency_penalty {
        p.insert("frequency_penalty".into(), json!(f));
    }
    if let Some(f) = req.presence_penalty {
        p.insert("presence_penalty".into(), json!(f));
    }
    match req.stop.as_slice() {
        [] => {}
        [one] => {
            p.insert("stop".into(), json!(one));
        }
        _ => {
            return Err(AdapterError::Rejected {
                status: 400,
                message: "Triton's generate parameters are scalars: give at most one stop string"
                    .into(),
            })
        }
    }
    Ok(json!({
        "text_input": prompt_text(&req.prompt),
        "max_tokens": req.max_tokens,
        "stream": true,
        "parameters": p,
    }))
}

/// What one `generate_stream` event says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TritonChunk {
    /// New text (`text_output`), when the event has any.
    pub text: Option<String>,
    /// vLLM backend's `finish_reason`, once finished.
    pub finish: Option<FinishReason>,
    /// vLLM backend's `num_output_tokens` (new tokens in this event).
    pub output_tokens: Option<u64>,
    /// vLLM backend's `num_input_tokens`.
    pub input_tokens: Option<u64>,
}

/// A scalar output, or the first element of a one-element batch.
fn scalar(v: Option<&Value>) -> Option<&Value> {
    match v? {
        Value::Array(a) => a.first(),
        x => Some(x),
    }
}

/// Parses one `data:` payload of `generate_stream`. Pure; never panics.
pub fn parse_chunk(data: &str) -> Result<TritonChunk, AdapterError> {
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
    Ok(TritonChunk {
        text: scalar(v.get("text_output"))
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_owned),
        // The vLLM backend sends `str(None)` until the request finishes.
        finish: match scalar(v.get("finish_reason")).and_then(Value::as_str) {
            Some("length") => Some(FinishReason::Length),
            Some("stop") => Some(FinishReason::Stop),
            _ => None,
        },
        output_tokens: scalar(v.get("num_output_tokens")).and_then(Value::as_u64),
        input_tokens: scalar(v.get("num_input_tokens")).and_then(Value::as_u64),
    })
}

/// Sums what the events say; the clean close of the connection is the end.
#[derive(Default)]
pub(crate) struct TritonDecoder {
    completion: Completion,
}

impl Decoder for TritonDecoder {
    fn feed(&mut self, data: &str) -> Result<Vec<EngineEvent>, AdapterError> {
        let c = parse_chunk(data)?;
        let acc = &mut self.completion;
        if c.finish.is_some() {
            acc.finish_reason = c.finish;
        }
        if let Some(n) = c.output_tokens {
            acc.tokens_out = Some(acc.tokens_out.unwrap_or(0).saturating_add(n));
        }
        acc.tokens_in = c.input_tokens.or(acc.tokens_in);
        acc.prompt_tokens = c.input_tokens.or(acc.prompt_tokens);
        Ok(c.text.map(EngineEvent::Token).into_iter().collect())
    }

    fn eof(&mut self) -> Result<EngineEvent, AdapterError> {
        // A crash mid-body shows as a transport error (truncated chunked encoding), not here.
        Ok(EngineEvent::Done(std::mem::take(&mut self.completion)))
    }
}

#[async_trait]
impl EngineAdapter for TritonAdapter {
    fn engine(&self) -> &'static str {
        "triton"
    }

    fn endpoint(&self) -> &str {
        &self.base
    }

    async fn health(&self) -> Result<(), AdapterError> {
        let ready = format!("{}/v2/health/ready", self.base);
        http::get_ok(&self.http, &self.base, ready).await?;
        match self.get(self.model_url("ready")?).await {
            Ok(_) => Ok(()),
            Err(AdapterError::Rejected { status, message }) => Err(AdapterError::Engine {
                message: format!(
                    "Triton is up but model `{}` is not ready (HTTP {status}: {message}); check the model repository",
                    self.model
                ),
            }),
            Err(e) => Err(e),
        }
    }

    async fn info(&self) -> Result<EngineInfo, AdapterError> {
        let v: Value = self
            .get(
                reqwest::Url::parse(&format!("{}/v2", self.base)).map_err(|e| {
                    AdapterError::Unreachable {
                        endpoint: self.base.clone(),
                        message: format!("not a URL: {e}"),
                    }
                })?,
            )
            .await?
            .json()
            .await
            .map_err(|e| AdapterError::Protocol {
                message: format!("/v2 did not return JSON: {e}"),
            })?;
        Ok(EngineInfo {
            version: v
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or("unknown")
                .to_owned(),
            ctx_per_slot: None,
            slots: None,
            model: Some(self.model.clone()),
        })
    }

    async fn generate(&self, req: GenerateRequest) -> Result<EngineStream, AdapterError> {
        crate::refuse_extras("triton", &req)?;
        let body = generate_body(&req)?;
        let resp = self
            .http
            .post(self.model_url("generate_stream")?)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            // A fresh connection per stream (see the OpenAI adapter).
            .header(reqwest::header::CONNECTION, "close")
            .json(&body)
            .send()
            .await
            .map_err(|e| http::unreachable(&self.base, e))?;
        let resp = http::check_status(resp).await?;
        Ok(http::sse_stream(
            resp.bytes_stream(),
            TritonDecoder::default(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `refuse_extras` is shared by the adapters that cannot serve tools or logprobs.
    #[test]
    fn extras_are_refused_naming_the_engine() {
        let req = GenerateRequest {
            prompt: Prompt::Text("hi".into()),
            max_tokens: 1,
            logprobs: Some(1),
            tools: vec![serde_json::json!({"type": "function"})],
            ..Default::default()
        };
        for engine in ["tgi", "triton"] {
            let e = crate::refuse_extras(engine, &req).unwrap_err();
            let want = format!(
                "tools, logprobs are not supported by the {engine} adapter; use a llamacpp or openai pool"
            );
            assert!(
                matches!(&e, AdapterError::Rejected { status: 400, message } if *message == want),
                "{e}"
            );
            assert!(crate::refuse_extras(engine, &GenerateRequest::default()).is_ok());
        }
    }
    use crate::http::{run_chunks, split_at};
    use proptest::prelude::*;

    #[test]
    fn chunks() {
        let c =
            parse_chunk(r#"{"model_name":"vllm_model","model_version":"1","text_output":" blue"}"#)
                .unwrap();
        assert_eq!(c.text.as_deref(), Some(" blue"));
        let c = parse_chunk(r#"{"model_name":"m","model_version":"1","text_output":"","finish_reason":["length"],"num_output_tokens":[1]}"#).unwrap();
        assert_eq!(c.text, None);
        assert_eq!(c.finish, Some(FinishReason::Length));
        assert_eq!(c.output_tokens, Some(1));
        let c = parse_chunk(r#"{"text_output":"x","finish_reason":"None"}"#).unwrap();
        assert_eq!(c.finish, None);
        let e = parse_chunk(r#"{"error":"An Error Occurred"}"#).unwrap_err();
        assert!(matches!(e, AdapterError::Engine { message } if message == "An Error Occurred"));
    }

    #[test]
    fn body() {
        let req = GenerateRequest {
            prompt: Prompt::Text("What is ML?".into()),
            max_tokens: 20,
            seed: Some(3),
            temperature: Some(0.5),
            stop: vec!["\n".into()],
            ..Default::default()
        };
        let b = generate_body(&req).unwrap();
        assert_eq!(b["text_input"], "What is ML?");
        assert_eq!(b["max_tokens"], 20);
        assert_eq!(b["stream"], true);
        assert_eq!(b["parameters"]["seed"], 3);
        assert_eq!(b["parameters"]["stop"], "\n");
        let two = GenerateRequest {
            stop: vec!["a".into(), "b".into()],
            ..req
        };
        assert!(matches!(
            generate_body(&two),
            Err(AdapterError::Rejected { .. })
        ));
    }

    #[test]
    fn model_name_is_one_escaped_segment() {
        let a = TritonAdapter::new("http://h:8000/", "my model/v").unwrap();
        assert_eq!(
            a.model_url("generate_stream").unwrap().as_str(),
            "http://h:8000/v2/models/my%20model%2Fv/generate_stream"
        );
        assert!(TritonAdapter::new("http://h:8000", "").is_err());
    }

    fn triton_stream(tokens: &[String]) -> Vec<u8> {
        let mut s = String::new();
        for t in tokens {
            let c = json!({"model_name": "m", "model_version": "1", "text_output": t});
            s.push_str(&format!("data: {c}\n\n"));
        }
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
            let data = json!({"model_name":"m","model_version":"1","text_output":s}).to_string();
            let want = (!s.is_empty()).then_some(s);
            prop_assert_eq!(parse_chunk(&data).unwrap().text, want);
        }

        #[test]
        fn stream_roundtrips_however_split(
            toks in proptest::collection::vec(".{1,8}", 0..12),
            cuts in proptest::collection::vec(any::<usize>(), 0..16),
        ) {
            let evs = run_chunks(split_at(&triton_stream(&toks), &cuts), TritonDecoder::default());
            let mut got = Vec::new();
            let mut done = false;
            for e in evs {
                match e.unwrap() {
                    EngineEvent::Token(t) => got.push(t),
                    EngineEvent::Chunk(c) => got.push(c.text),
                    EngineEvent::Done(_) => done = true,
                }
            }
            prop_assert_eq!(got, toks);
            prop_assert!(done);
        }

        #[test]
        fn arbitrary_bytes_terminate(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..16)) {
            crate::fuzz::terminates(chunks, TritonDecoder::default())?;
        }

        #[test]
        fn sse_soup_terminates(chunks in crate::fuzz::sse_soup()) {
            crate::fuzz::terminates(chunks, TritonDecoder::default())?;
        }
    }
}
