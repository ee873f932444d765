//! Embeddings and rerank: one JSON request and one JSON answer each (no stream), in the
//! OpenAI `/v1/embeddings` and Jina/Cohere `/v1/rerank` shapes that llama-server, vLLM and most
//! OpenAI-compatible servers share.
//!
//! Embeddings are always asked as floats: the daemon encodes `base64` itself, so one transcript
//! shape serves both encodings.

use serde_json::{json, Value};

use crate::http;
use crate::AdapterError;

/// The vectors of an embeddings request, in input order.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// One vector per input.
    pub vectors: Vec<Vec<f32>>,
    /// Tokens the engine evaluated (0 when it does not say).
    pub prompt_tokens: u64,
}

/// A rerank request.
#[derive(Clone, Debug, PartialEq)]
pub struct RerankRequest {
    /// The query.
    pub query: String,
    /// The documents to score.
    pub documents: Vec<String>,
    /// Keep this many of the best (default all).
    pub top_n: Option<u32>,
}

/// The scores of a rerank request, best first.
#[derive(Clone, Debug, PartialEq)]
pub struct Ranked {
    /// `(document index, relevance score)`, best first.
    pub results: Vec<(u32, f64)>,
    /// Tokens the engine evaluated (0 when it does not say).
    pub prompt_tokens: u64,
}

/// The `/v1/embeddings` body for `input`, naming `model` when given.
pub fn embeddings_body(input: &[String], model: Option<&str>) -> Value {
    let mut b = json!({ "input": input, "encoding_format": "float" });
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    b
}

/// The `/v1/rerank` body, naming `model` when given.
pub fn rerank_body(req: &RerankRequest, model: Option<&str>) -> Value {
    let mut b = json!({ "query": req.query, "documents": req.documents });
    if let Some(n) = req.top_n {
        b["top_n"] = json!(n);
    }
    if let Some(m) = model {
        b["model"] = json!(m);
    }
    b
}

fn protocol(message: String) -> AdapterError {
    AdapterError::Protocol { message }
}

fn prompt_tokens(v: &Value) -> u64 {
    v.pointer("/usage/prompt_tokens")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Parses an OpenAI embeddings answer for `n` inputs: `data[i].embedding` (floats) ordered by
/// `index`, exactly one per input.
pub fn parse_embeddings(v: &Value, n: usize) -> Result<Embeddings, AdapterError> {
    let data = v
        .get("data")
        .and_then(Value::as_array)
        .ok_or_else(|| protocol("embeddings answer without a `data` array".into()))?;
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; n];
    for (pos, item) in data.iter().enumerate() {
        let i = item
            .get("index")
            .and_then(Value::as_u64)
            .map_or(pos, |i| usize::try_from(i).unwrap_or(usize::MAX));
        let slot = vectors
            .get_mut(i)
            .ok_or_else(|| protocol(format!("embeddings answer has index {i} for {n} inputs")))?;
        let floats = item
            .get("embedding")
            .and_then(Value::as_array)
            .ok_or_else(|| protocol(format!("embedding {i} is not an array of numbers")))?
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| protocol(format!("embedding {i} holds a value that is not a number")))?;
        *slot = Some(floats);
    }
    let vectors = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| v.ok_or_else(|| protocol(format!("embeddings answer lacks input {i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Embeddings {
        vectors,
        prompt_tokens: prompt_tokens(v),
    })
}

/// Parses a rerank answer for `n` documents: `results[].{index, relevance_score}` (or
/// `score`), sorted best first.
pub fn parse_ranked(v: &Value, n: usize) -> Result<Ranked, AdapterError> {
    let items = v
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| protocol("rerank answer without a `results` array".into()))?;
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .and_then(|i| u32::try_from(i).ok())
            .filter(|i| (*i as usize) < n)
            .ok_or_else(|| protocol(format!("rerank result without a valid `index`: {item}")))?;
        let score = item
            .get("relevance_score")
            .or_else(|| item.get("score"))
            .and_then(Value::as_f64)
            .ok_or_else(|| protocol(format!("rerank result {index} without a score")))?;
        results.push((index, score));
    }
    results.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(Ranked {
        results,
        prompt_tokens: prompt_tokens(v),
    })
}

/// `POST base+path` with `body`; the answer's JSON. No overall timeout: the task's cancel (a
/// dropped future) ends the request, and the engine stops the work of a closed connection.
pub(crate) async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> Result<Value, AdapterError> {
    let resp = client
        .post(format!("{base}{path}"))
        .json(body)
        .send()
        .await
        .map_err(|e| http::unreachable(base, e))?;
    let resp = http::check_status(resp).await?;
    let bytes = resp.bytes().await.map_err(|e| AdapterError::StreamBroken {
        message: format!("the answer of {path} broke off: {}", e.without_url()),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| protocol(format!("{path} did not return JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_in_index_order_with_usage() {
        let v = json!({"object": "list", "data": [
            {"object": "embedding", "index": 1, "embedding": [0.5, -1.0]},
            {"object": "embedding", "index": 0, "embedding": [0.10000000149011612, 2]},
        ], "usage": {"prompt_tokens": 7, "total_tokens": 7}});
        let e = parse_embeddings(&v, 2).unwrap();
        assert_eq!(e.vectors, vec![vec![0.1f32, 2.0], vec![0.5, -1.0]]);
        assert_eq!(e.prompt_tokens, 7);
        assert!(parse_embeddings(&v, 3)
            .unwrap_err()
            .to_string()
            .contains("lacks input 2"));
        assert!(parse_embeddings(&v, 1).is_err(), "index out of range");
        assert!(parse_embeddings(&json!({"data": [{"embedding": ["x"]}]}), 1).is_err());
        assert!(parse_embeddings(&json!({}), 1).is_err());
    }

    #[test]
    fn rerank_sorted_best_first() {
        let v = json!({"results": [
            {"index": 0, "relevance_score": -2.5},
            {"index": 2, "relevance_score": 3.0},
            {"index": 1, "score": 0.5},
        ], "usage": {"prompt_tokens": 30}});
        let r = parse_ranked(&v, 3).unwrap();
        assert_eq!(r.results, vec![(2, 3.0), (1, 0.5), (0, -2.5)]);
        assert_eq!(r.prompt_tokens, 30);
        assert!(parse_ranked(&v, 2).is_err(), "index 2 of 2 documents");
        assert!(parse_ranked(&json!({"results": [{"index": 0}]}), 1).is_err());
    }

    #[test]
    fn bodies_ask_for_floats() {
        let b = embeddings_body(&["a".into()], Some("m"));
        assert_eq!(
            b,
            json!({"input": ["a"], "encoding_format": "float", "model": "m"})
        );
        let r = RerankRequest {
            query: "q".into(),
            documents: vec!["d".into()],
            top_n: Some(1),
        };
        assert_eq!(
            rerank_body(&r, None),
            json!({"query": "q", "documents": ["d"], "top_n": 1})
        );
    }
}
