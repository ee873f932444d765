//! Bodies of `POST /v1/embeddings` (OpenAI's shape) and `POST /v1/rerank` (the Jina/Cohere
//! shape llama-server serves). Requests accept fields they do not know (clients send their
//! own extras), like the other OpenAI-compatible routes.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Body of `POST /v1/embeddings`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct EmbeddingsRequest {
    /// An embedding pool's id, or its model's name (see `GET /v1/models`).
    pub model: String,
    /// A string or an array of strings (1 ..= 2048, none empty). Token arrays are refused.
    #[schema(value_type = Object)]
    pub input: Value,
    /// `float` (default) or `base64` (each vector as little-endian 32-bit floats, base64).
    #[serde(default)]
    pub encoding_format: Option<String>,
    /// Refused when given: the vector length is the model's.
    #[serde(default)]
    pub dimensions: Option<u32>,
    /// Accepted and ignored.
    #[serde(default)]
    pub user: Option<String>,
    /// llama-orch: `interactive` (default) or `batch`; overrides `X-Llorch-Priority`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// One vector: floats, or with `encoding_format: base64` a base64 string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EmbeddingVector {
    /// `encoding_format: float`.
    Float(Vec<f32>),
    /// `encoding_format: base64`: the little-endian 32-bit floats, base64-encoded.
    Base64(String),
}

/// One embedding of `data`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Embedding {
    /// Always `embedding`.
    pub object: String,
    /// The input's index.
    pub index: u32,
    /// The vector.
    pub embedding: EmbeddingVector,
}

/// `usage` of embeddings and rerank.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ScoringUsage {
    /// Tokens the engine evaluated.
    pub prompt_tokens: u64,
    /// The same (nothing is generated).
    pub total_tokens: u64,
}

/// 200 body of `POST /v1/embeddings`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EmbeddingList {
    /// Always `list`.
    pub object: String,
    /// One embedding per input, in input order.
    pub data: Vec<Embedding>,
    /// The `model` of the request.
    pub model: String,
    /// Token counts.
    pub usage: ScoringUsage,
}

/// Body of `POST /v1/rerank` (and its alias `/v1/reranking`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
pub struct RerankRequest {
    /// A rerank pool's id, or its model's name.
    pub model: String,
    /// The query.
    pub query: String,
    /// The documents: strings, or objects with a `text` string (1 ..= 2048).
    #[schema(value_type = Vec<Object>)]
    pub documents: Vec<Value>,
    /// Keep only this many of the best documents (default all).
    #[serde(default)]
    pub top_n: Option<u32>,
    /// Put each result's document text in it (default false).
    #[serde(default)]
    pub return_documents: Option<bool>,
    /// llama-orch: `interactive` (default) or `batch`; overrides `X-Llorch-Priority`.
    #[serde(default)]
    pub priority: Option<String>,
}

/// A document as a result carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RerankDocument {
    /// Its text.
    pub text: String,
}

/// One scored document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResult {
    /// The document's index in `documents`.
    pub index: u32,
    /// Its relevance to the query (higher is more relevant), as the engine scored it.
    pub relevance_score: f64,
    /// With `return_documents: true`: the document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<RerankDocument>,
}

/// 200 body of `POST /v1/rerank`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RerankResponse {
    /// The task's id.
    pub id: String,
    /// The `model` of the request.
    pub model: String,
    /// The documents, best first (`top_n` of them).
    pub results: Vec<RerankResult>,
    /// Token counts.
    pub usage: ScoringUsage,
}
