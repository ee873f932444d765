//! Engine adapters: the one [`EngineAdapter`] trait the daemon dispatches through, and its
//! implementations. Adapters speak an engine's real HTTP API; they know nothing of queues,
//! pools or our own API. Cancel is dropping the stream: the HTTP request is aborted and the
//! engine frees the slot.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

pub mod http;
pub mod llamacpp;
pub mod openai;
pub mod scoring;
pub mod tgi;
pub mod triton;

pub use llamacpp::LlamaCppAdapter;
pub use openai::OpenAiAdapter;
pub use scoring::{Embeddings, Ranked, RerankRequest};
pub use tgi::TgiAdapter;
pub use triton::TritonAdapter;

/// What to generate.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerateRequest {
    /// Prompt text or chat messages.
    pub prompt: Prompt,
    /// Tokens to generate at most.
    pub max_tokens: u32,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    pub top_p: Option<f32>,
    /// Top-k sampling.
    pub top_k: Option<u32>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// Engine slot to run in (session affinity); `None` lets the engine choose.
    pub slot: Option<u32>,
    /// Let the engine reuse a cached prompt prefix.
    pub cache_prompt: bool,
    /// Penalty by how often a token appeared so far.
    pub frequency_penalty: Option<f32>,
    /// Penalty for tokens that appeared at all so far.
    pub presence_penalty: Option<f32>,
    /// Token id (as a string; llama-server also takes token text) → logit bias.
    pub logit_bias: Vec<(String, f32)>,
    /// Report each token's log probability and this many most likely alternatives.
    pub logprobs: Option<u32>,
    /// Chat: OpenAI tool definitions, as the client sent them.
    pub tools: Vec<serde_json::Value>,
    /// Chat: OpenAI `tool_choice` (`"none"`, `"auto"`, `"required"`, or a named function).
    pub tool_choice: Option<serde_json::Value>,
    /// Chat: whether several tool calls may come in one reply.
    pub parallel_tool_calls: Option<bool>,
    /// Constrain the output to JSON.
    pub response_format: Option<ResponseFormat>,
}

impl GenerateRequest {
    /// Whether the reply may hold tool calls: a chat with tools and a `tool_choice` other than
    /// `none`.
    pub fn wants_tool_calls(&self) -> bool {
        matches!(self.prompt, Prompt::Chat(_))
            && !self.tools.is_empty()
            && self.tool_choice.as_ref().and_then(|c| c.as_str()) != Some("none")
    }

    /// What this request asks for beyond text generation, by name (for engines that cannot
    /// do it).
    pub fn extras(&self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.tools.is_empty() {
            v.push("tools");
        }
        if let Prompt::Chat(turns) = &self.prompt {
            if turns
                .iter()
                .any(|t| t.tool_calls.is_some() || t.role == "tool")
            {
                v.push("tool messages");
            }
        }
        if self.response_format.is_some() {
            v.push("response_format");
        }
        if self.logprobs.is_some() {
            v.push("logprobs");
        }
        if !self.logit_bias.is_empty() {
            v.push("logit_bias");
        }
        v
    }
}

/// Refuses a request that asks `engine` for something its adapter cannot do (tools,
/// structured output, log probabilities, logit bias), naming the engine: a clear 400 instead
/// of an answer that silently ignores it. The daemon refuses these at admission already; this
/// guards direct users of the adapter.
pub(crate) fn refuse_extras(engine: &str, req: &GenerateRequest) -> Result<(), AdapterError> {
    match req.extras().as_slice() {
        [] => Ok(()),
        what => Err(AdapterError::Rejected {
            status: 400,
            message: format!(
                "{} not supported by the {engine} adapter; use a llamacpp or openai pool",
                what.join(", ") + if what.len() == 1 { " is" } else { " are" }
            ),
        }),
    }
}

/// Structured output.
#[derive(Clone, Debug, PartialEq)]
pub enum ResponseFormat {
    /// One JSON object, any keys (OpenAI `json_object`).
    JsonObject,
    /// JSON matching `schema` (OpenAI `json_schema`).
    JsonSchema {
        /// The schema's name (OpenAI requires one).
        name: String,
        /// The schema; `None` means any JSON object.
        schema: Option<serde_json::Value>,
        /// OpenAI's `strict`.
        strict: Option<bool>,
    },
}

impl ResponseFormat {
    /// The JSON schema the output must match (`{"type": "object"}` for any object).
    pub fn schema(&self) -> serde_json::Value {
        match self {
            Self::JsonSchema {
                schema: Some(s), ..
            } => s.clone(),
            _ => serde_json::json!({ "type": "object" }),
        }
    }

    /// OpenAI's `response_format` object.
    pub fn to_openai(&self) -> serde_json::Value {
        match self {
            Self::JsonObject => serde_json::json!({ "type": "json_object" }),
            Self::JsonSchema {
                name,
                schema,
                strict,
            } => {
                let mut js = serde_json::Map::new();
                js.insert("name".into(), serde_json::json!(name));
                if let Some(s) = schema {
                    js.insert("schema".into(), s.clone());
                }
                if let Some(st) = strict {
                    js.insert("strict".into(), serde_json::json!(st));
                }
                serde_json::json!({ "type": "json_schema", "json_schema": js })
            }
        }
    }
}

/// Prompt forms.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Raw text.
    Text(String),
    /// Chat messages, templated by the engine.
    Chat(Vec<ChatTurn>),
}

impl Default for Prompt {
    fn default() -> Self {
        Self::Text(String::new())
    }
}

/// One chat message, serialised as OpenAI's message object (what `/apply-template` and
/// `/v1/chat/completions` take).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text.
    pub content: String,
    /// An assistant turn's tool calls (OpenAI's `{id, type, function: {name, arguments}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    /// A `tool` turn: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` turn: the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatTurn {
    /// A plain text turn.
    pub fn text(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            ..Self::default()
        }
    }
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// `max_tokens` reached.
    Length,
    /// End of sequence or a stop string.
    Stop,
    /// The model called tools.
    ToolCalls,
}

impl FinishReason {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Length => "length",
            Self::Stop => "stop",
            Self::ToolCalls => "tool_calls",
        }
    }
}

/// Final accounting reported by the engine.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completion {
    /// Why it stopped.
    pub finish_reason: Option<FinishReason>,
    /// Tokens the engine generated.
    pub tokens_out: Option<u64>,
    /// Prompt tokens the engine evaluated (a reused cached prefix excluded where the engine
    /// says so: llama-server's `prompt_n`).
    pub tokens_in: Option<u64>,
    /// The whole prompt's length in tokens, cached prefix included (OpenAI `usage.prompt_tokens`).
    pub prompt_tokens: Option<u64>,
    /// Prompt tokens reused from cache.
    pub tokens_cached: Option<u64>,
    /// Engine-side decode time.
    pub decode_ms: Option<f64>,
    /// Slot that served it.
    pub slot: Option<u32>,
}

/// One item of an engine's output stream.
#[derive(Clone, Debug, PartialEq)]
pub enum EngineEvent {
    /// Text exactly as the engine sent it (may be empty when the engine holds back incomplete UTF-8).
    Token(String),
    /// A chunk carrying more than text: log probabilities or pieces of tool calls (the common
    /// text-only chunk is [`EngineEvent::Token`]).
    Chunk(Chunk),
    /// The engine finished normally; nothing follows.
    Done(Completion),
}

/// An engine chunk with text, the log probabilities of its tokens, and tool-call pieces.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    /// Text exactly as the engine sent it (often empty next to tool-call pieces).
    pub text: String,
    /// Each engine token of this chunk, with its log probability.
    pub logprobs: Vec<TokenLogprob>,
    /// Pieces of tool calls.
    pub tool_calls: Vec<ToolCallDelta>,
}

impl Chunk {
    /// The event for this chunk: a plain [`EngineEvent::Token`] when it holds only text.
    pub fn into_event(self) -> EngineEvent {
        if self.logprobs.is_empty() && self.tool_calls.is_empty() {
            EngineEvent::Token(self.text)
        } else {
            EngineEvent::Chunk(self)
        }
    }
}

/// One generated token's log probability and the most likely alternatives at its position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TokenLogprob {
    /// Token text (incomplete UTF-8 cut off).
    pub token: String,
    /// Natural-log probability.
    pub logprob: f64,
    /// The token's bytes, where the engine says.
    pub bytes: Option<Vec<u8>>,
    /// Alternatives, most likely first.
    pub top: Vec<TopLogprob>,
}

/// One alternative token.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopLogprob {
    /// Token text.
    pub token: String,
    /// Natural-log probability.
    pub logprob: f64,
    /// The token's bytes, where the engine says.
    pub bytes: Option<Vec<u8>>,
}

/// A piece of a tool call (OpenAI's `delta.tool_calls[]`): the first piece of a call has its
/// id and name, later ones append argument text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ToolCallDelta {
    /// Which call of the reply (0, 1, …).
    pub index: u32,
    /// The call's id.
    pub id: Option<String>,
    /// The function's name.
    pub name: Option<String>,
    /// Argument text to append, exactly as the engine sent it.
    pub arguments: Option<String>,
}

/// A stream of engine events. Dropping it aborts the request.
pub type EngineStream = Pin<Box<dyn Stream<Item = Result<EngineEvent, AdapterError>> + Send>>;

/// What the engine says about itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct EngineInfo {
    /// Engine build as reported (`b1234-abcdef`).
    pub version: String,
    /// Context tokens per slot.
    pub ctx_per_slot: Option<u32>,
    /// Parallel slots.
    pub slots: Option<u32>,
    /// Model the engine serves (path or name).
    pub model: Option<String>,
}

/// State of one engine slot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlotState {
    /// Slot id.
    pub id: u32,
    /// Whether it is working on a request.
    pub busy: bool,
}

/// A slot's prompt cache written to or read from a file (llama-server's slot save/restore).
#[derive(Clone, Debug, PartialEq)]
pub struct SlotFile {
    /// Tokens of cached prompt saved or restored.
    pub tokens: u64,
    /// Bytes written or read.
    pub bytes: u64,
    /// What the engine took, ms.
    pub ms: f64,
}

/// Adapter failures, each mapped to one of our error codes by the daemon.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdapterError {
    /// Cannot connect or the connection failed before a response.
    #[error("engine at {endpoint} is unreachable: {message}")]
    Unreachable {
        /// Engine base URL.
        endpoint: String,
        /// Cause.
        message: String,
    },
    /// The engine refused the request (4xx).
    #[error("engine rejected the request (HTTP {status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Engine's message.
        message: String,
    },
    /// The engine failed (5xx, or an error inside the stream).
    #[error("engine error: {message}")]
    Engine {
        /// Engine's message.
        message: String,
    },
    /// The stream broke off before the engine said it finished (crash, kill, reset).
    #[error("engine stream broke off: {message}")]
    StreamBroken {
        /// Cause.
        message: String,
    },
    /// The engine sent something we do not understand.
    #[error("unexpected engine response: {message}")]
    Protocol {
        /// What was wrong.
        message: String,
    },
    /// The adapter does not support this operation.
    #[error("{0} is not supported by this engine")]
    Unsupported(&'static str),
}

/// One inference engine instance reachable over HTTP.
#[async_trait]
pub trait EngineAdapter: Send + Sync + 'static {
    /// Engine kind name (`llamacpp`, ...).
    fn engine(&self) -> &'static str;
    /// Base URL of the engine.
    fn endpoint(&self) -> &str;
    /// Ok when the engine is loaded and answers.
    async fn health(&self) -> Result<(), AdapterError>;
    /// Version, context and slots.
    async fn info(&self) -> Result<EngineInfo, AdapterError>;
    /// Starts generating; tokens arrive as the engine produces them.
    async fn generate(&self, req: GenerateRequest) -> Result<EngineStream, AdapterError>;
    /// Per-slot state, where the engine exposes it.
    async fn slots(&self) -> Result<Vec<SlotState>, AdapterError> {
        Err(AdapterError::Unsupported("slot listing"))
    }
    /// Drops the cached prompt of a slot (session eviction).
    async fn erase_slot(&self, _slot: u32) -> Result<(), AdapterError> {
        Err(AdapterError::Unsupported("slot erase"))
    }
    /// Writes a slot's prompt cache to `filename` in the engine's slot directory (waits until
    /// the slot is idle).
    async fn save_slot(&self, _slot: u32, _filename: &str) -> Result<SlotFile, AdapterError> {
        Err(AdapterError::Unsupported("slot save"))
    }
    /// Loads a slot's prompt cache from `filename`, written by [`EngineAdapter::save_slot`] on
    /// an engine of the same model and context (waits until the slot is idle).
    async fn restore_slot(&self, _slot: u32, _filename: &str) -> Result<SlotFile, AdapterError> {
        Err(AdapterError::Unsupported("slot restore"))
    }
    /// Fraction (0..=1) of the engine's KV cache in use, where the engine reports it
    /// (`kv_cache_usage_ratio`); `None` when it does not.
    async fn kv_cache_usage(&self) -> Result<Option<f64>, AdapterError> {
        Ok(None)
    }
    /// The prompt tokens `req` occupies in the engine's context: its chat template and tools
    /// applied, then tokenized by the engine's own tokenizer.
    async fn count_tokens(&self, _req: &GenerateRequest) -> Result<u32, AdapterError> {
        Err(AdapterError::Unsupported("token counting"))
    }
    /// One embedding vector per input (an engine started for embeddings).
    async fn embed(&self, _input: &[String]) -> Result<Embeddings, AdapterError> {
        Err(AdapterError::Unsupported("embeddings"))
    }
    /// The documents' relevance scores for the query, best first (an engine started for
    /// rerank).
    async fn rerank(&self, _req: &RerankRequest) -> Result<Ranked, AdapterError> {
        Err(AdapterError::Unsupported("rerank"))
    }
}

/// The adapter for a pool's `engine` kind at `base_url`. `model` is the pool's `model:`: the
/// name sent to OpenAI-compatible servers (`None`: the first model the server lists) and the
/// Triton model name (required there); llama.cpp and TGI serve one model and ignore it.
pub fn adapter_for(
    engine: &str,
    base_url: &str,
    model: Option<&str>,
) -> Result<Arc<dyn EngineAdapter>, AdapterError> {
    Ok(match engine {
        "llamacpp" => Arc::new(LlamaCppAdapter::new(base_url)?),
        "openai" => Arc::new(OpenAiAdapter::new("openai", base_url, model)?),
        "vllm" => Arc::new(OpenAiAdapter::new("vllm", base_url, model)?),
        "tgi" => Arc::new(TgiAdapter::new(base_url)?),
        "triton" => Arc::new(TritonAdapter::new(
            base_url,
            model.ok_or(AdapterError::Unsupported(
                "a triton pool without `model:` naming the Triton model",
            ))?,
        )?),
        _ => {
            return Err(AdapterError::Unsupported(
                "an engine kind other than llamacpp, vllm, openai, tgi or triton",
            ))
        }
    })
}

/// Drains a stream: the token texts and the final accounting. A stream that ends without
/// `Done` is [`AdapterError::StreamBroken`].
pub async fn collect(mut s: EngineStream) -> Result<(Vec<String>, Completion), AdapterError> {
    let mut toks = Vec::new();
    while let Some(ev) = s.next().await {
        match ev? {
            EngineEvent::Token(t) => toks.push(t),
            EngineEvent::Chunk(c) => toks.push(c.text),
            EngineEvent::Done(c) => return Ok((toks, c)),
        }
    }
    Err(http::closed_early())
}

/// Property-test strategies shared by the parsers' fuzz tests.
#[cfg(test)]
pub(crate) mod fuzz {
    use proptest::prelude::*;
    use serde_json::Value;

    use crate::{AdapterError, EngineEvent};

    /// Byte chunks of SSE-like soup: field names, line ends of every kind, comments, `[DONE]`,
    /// JSON that looks like engine chunks, and raw bytes (invalid UTF-8 included).
    pub fn sse_soup() -> impl Strategy<Value = Vec<Vec<u8>>> {
        let frag = prop_oneof![
            Just(b"data: ".to_vec()),
            Just(b"data:".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\n\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just(b"\r".to_vec()),
            Just(b": ping\n".to_vec()),
            Just(b"event: error\n".to_vec()),
            Just(b"[DONE]".to_vec()),
            json_value().prop_map(|v| v.to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..16),
        ];
        proptest::collection::vec(frag, 0..32)
    }

    /// Whatever bytes arrive, in whatever pieces, `decoder` ends: at most one event per byte
    /// plus the last, and tokens until one `Done` or error that is the last item.
    pub fn terminates(
        chunks: Vec<Vec<u8>>,
        decoder: impl crate::http::Decoder,
    ) -> Result<(), TestCaseError> {
        let n: usize = chunks.iter().map(Vec::len).sum();
        let evs = crate::http::run_chunks(chunks, decoder);
        prop_assert!(evs.len() <= n + 1, "{} events from {n} bytes", evs.len());
        prop_assert!(ends_cleanly(&evs), "{evs:?}");
        Ok(())
    }

    /// A stream's items are tokens, then at most one `Done` or error, which is the last.
    pub fn ends_cleanly(evs: &[Result<EngineEvent, AdapterError>]) -> bool {
        evs.iter()
            .rev()
            .skip(1)
            .all(|e| matches!(e, Ok(EngineEvent::Token(_) | EngineEvent::Chunk(_))))
    }

    /// Arbitrary JSON, biased towards the keys engines use so the parsers' branches are hit.
    pub fn json_value() -> impl Strategy<Value = Value> {
        let key = prop_oneof![
            Just("choices".to_owned()),
            Just("text".to_owned()),
            Just("delta".to_owned()),
            Just("content".to_owned()),
            Just("index".to_owned()),
            Just("finish_reason".to_owned()),
            Just("usage".to_owned()),
            Just("error".to_owned()),
            Just("object".to_owned()),
            Just("message".to_owned()),
            Just("token".to_owned()),
            Just("special".to_owned()),
            Just("generated_text".to_owned()),
            Just("details".to_owned()),
            Just("text_output".to_owned()),
            Just("num_output_tokens".to_owned()),
            Just("stop".to_owned()),
            Just("timings".to_owned()),
            ".{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
            Just(Value::String("length".into())),
            Just(Value::String("error".into())),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key.clone(), inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
