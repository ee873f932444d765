//! `POST /v1/embeddings` (OpenAI's shape) and `POST /v1/rerank` (the Jina/Cohere shape that
//! llama-server serves; `/v1/reranking` is the same route, as in llama-server).
//!
//! Each request is one task (`workload: embedding` / `rerank`) through the same admission as
//! every other door ([`crate::admission::admit`]): priority (`priority` in the body, else
//! `X-Llorch-Priority`), the pool's queue, queue position and predicted start in the
//! `X-Llorch-*` headers, on-demand loads, cancel when the client goes away, the task table.
//! Routing sends it only to a pool of its kind (`kind: embedding` / `kind: rerank`). The
//! engine's answer arrives as the task's `result` event; the reply is built from it. Errors are
//! in OpenAI's shape.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use futures::StreamExt;
use orch_api_types::embeddings::{
    Embedding, EmbeddingList, EmbeddingVector, EmbeddingsRequest, RerankDocument, RerankRequest,
    RerankResponse, RerankResult, ScoringUsage,
};
use orch_api_types::openai::OaiErrorBody;
use orch_api_types::{Dialect, ErrorCode, ResultEvent, StreamEvent, TaskRequest};
use serde_json::{json, Value};

use crate::admission::validate::MAX_SCORING_ITEMS;
use crate::correlation::CorrelationId;
use crate::error::ServiceError;
use crate::http::door::{self, CancelOnDrop, Entered};
use crate::http::openai::{OaiError, OpenAiShape};
use crate::state::AppState;

/// `input` as texts: a string or an array of strings. Token arrays are refused by name.
fn input_texts(v: &Value) -> Result<Vec<String>, OaiError> {
    let tokens = || {
        OaiError::invalid(
            "`input` as token ids is not supported; send the text (a string or an array of strings)",
        )
    };
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(_) | Value::Array(_) => Err(tokens()),
                _ => Err(OaiError::invalid(format!(
                    "`input[{i}]` is not a string; `input` is a string or an array of strings"
                ))),
            })
            .collect(),
        _ => Err(OaiError::invalid(
            "`input` must be a string or an array of strings",
        )),
    }
}

/// A document: a string, or an object with a `text` string.
fn document_text(i: usize, v: &Value) -> Result<String, OaiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Object(o) => o
            .get("text")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                OaiError::invalid(format!(
                    "`documents[{i}]` is an object without a `text` string"
                ))
            }),
        _ => Err(OaiError::invalid(format!(
            "`documents[{i}]` must be a string or an object with a `text` string"
        ))),
    }
}

/// Builds the task request through serde, so fields added to `TaskRequest` later keep their
/// defaults; `max_tokens` is 1 (nothing is generated).
fn task_request(mut body: Value) -> Result<TaskRequest, OaiError> {
    body["max_tokens"] = json!(1);
    serde_json::from_value(body).map_err(|e| OaiError::invalid(format!("invalid request: {e}")))
}

/// Admits `req` and waits for its `result`; a client that goes away cancels the task.
async fn run(
    state: &AppState,
    cid: &CorrelationId,
    req: TaskRequest,
    dialect: Dialect,
) -> Result<(Entered, ResultEvent), OaiError> {
    let entered = door::admit(state, &cid.0, req, dialect).await?;
    let adm = &entered.adm;
    let guard = CancelOnDrop::new(state, &adm.task);
    let mut frames = Box::pin(adm.task.clone().follow());
    let mut result = None;
    while let Some(f) = frames.next().await {
        match StreamEvent::parse(f.name, &f.data) {
            Ok(StreamEvent::Result(r)) => result = Some(r),
            Ok(StreamEvent::End(_)) => break,
            Ok(StreamEvent::Error(env)) => return Err(ServiceError::from_envelope(env).into()),
            _ => {}
        }
    }
    drop(guard);
    match result {
        Some(r) => Ok((entered, r)),
        None => {
            Err(ServiceError::new(ErrorCode::Internal, "the task ended without a result").into())
        }
    }
}

fn usage(prompt_tokens: u64) -> ScoringUsage {
    ScoringUsage {
        prompt_tokens,
        total_tokens: prompt_tokens,
    }
}

/// A vector as OpenAI's `base64` encoding: the little-endian bytes of its 32-bit floats.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The request as a task, or why not.
fn embeddings_task(
    r: &EmbeddingsRequest,
    headers: &HeaderMap,
    task_id: &str,
) -> Result<(TaskRequest, bool), OaiError> {
    if r.model.trim().is_empty() {
        return Err(OaiError::invalid("`model` is required; see GET /v1/models"));
    }
    let base64 = match r.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(OaiError::invalid(format!(
                "encoding_format `{other}` is not `float` or `base64`"
            )))
        }
    };
    if let Some(d) = r.dimensions {
        return Err(OaiError::invalid(format!(
            "`dimensions` ({d}) is not supported: the vectors have the model's own length; leave it out (and truncate and renormalise yourself if the model allows it)"
        )));
    }
    let input = input_texts(&r.input)?;
    if input.is_empty() || input.len() > MAX_SCORING_ITEMS {
        return Err(OaiError::invalid(format!(
            "`input` must hold 1 to {MAX_SCORING_ITEMS} strings (got {})",
            input.len()
        )));
    }
    let req = task_request(json!({
        "task_id": task_id,
        "model_ref": r.model,
        "priority": door::priority::<OpenAiShape>(r.priority.as_deref(), headers)?,
        "workload": "embedding",
        "input": input,
    }))?;
    Ok((req, base64))
}

/// Metrics of a request refused before admission (admission counts its own).
fn count_refusal(state: &AppState, e: &OaiError) {
    state.metrics.rejected("", &e.code.to_ascii_uppercase());
}

/// OpenAI-compatible embeddings: one task on a `kind: embedding` pool.
#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsRequest,
    params(("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`")),
    responses(
        (status = 200, description = "One embedding per input, in input order", body = EmbeddingList,
            headers(("X-Llorch-Task-Id" = String, description = "the task's id"),
                ("X-Llorch-Queue-Position" = u64, description = "tasks ahead at admission"),
                ("X-Llorch-Predicted-Start-Ms" = u64, description = "predicted wait at admission"))),
        (status = 400, description = "Invalid request, or the model is served by no embedding pool (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "The task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn embeddings(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    let r: EmbeddingsRequest = door::read_json(&state, &headers, body).await?;
    let task_id = format!("embd-{}", uuid::Uuid::new_v4().simple());
    let (req, base64) =
        embeddings_task(&r, &headers, &task_id).inspect_err(|e| count_refusal(&state, e))?;
    let (entered, res) = run(&state, &cid, req, Dialect::Embeddings).await?;
    let data = res
        .embeddings
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, v)| Embedding {
            object: "embedding".into(),
            index: u32::try_from(i).unwrap_or(u32::MAX),
            embedding: if base64 {
                EmbeddingVector::Base64(base64_f32(&v))
            } else {
                EmbeddingVector::Float(v)
            },
        })
        .collect();
    let reply = EmbeddingList {
        object: "list".into(),
        data,
        model: r.model,
        usage: usage(res.prompt_tokens),
    };
    Ok((entered.headers, Json(reply)).into_response())
}

/// The rerank request as a task and its document texts, or why not.
fn rerank_task(
    r: &RerankRequest,
    headers: &HeaderMap,
    task_id: &str,
) -> Result<(TaskRequest, Vec<String>), OaiError> {
    if r.model.trim().is_empty() {
        return Err(OaiError::invalid("`model` is required; see GET /v1/models"));
    }
    if r.query.is_empty() {
        return Err(OaiError::invalid("`query` must not be empty"));
    }
    let docs = r
        .documents
        .iter()
        .enumerate()
        .map(|(i, d)| document_text(i, d))
        .collect::<Result<Vec<_>, _>>()?;
    if docs.is_empty() || docs.len() > MAX_SCORING_ITEMS {
        return Err(OaiError::invalid(format!(
            "`documents` must hold 1 to {MAX_SCORING_ITEMS} documents (got {})",
            docs.len()
        )));
    }
    if r.top_n == Some(0) {
        return Err(OaiError::invalid("`top_n` must be at least 1"));
    }
    let mut body = json!({
        "task_id": task_id,
        "model_ref": r.model,
        "priority": door::priority::<OpenAiShape>(r.priority.as_deref(), headers)?,
        "workload": "rerank",
        "query": r.query,
        "documents": docs,
    });
    if let Some(n) = r.top_n {
        body["top_n"] = json!(n);
    }
    Ok((task_request(body)?, docs))
}

/// Rerank: the documents' relevance to the query, best first; one task on a `kind: rerank`
/// pool.
#[utoipa::path(post, path = "/v1/rerank", request_body = RerankRequest,
    params(("X-Llorch-Priority" = Option<String>, Header, description = "`interactive` (default) or `batch`")),
    responses(
        (status = 200, description = "The documents' scores, best first", body = RerankResponse,
            headers(("X-Llorch-Task-Id" = String, description = "the task's id"),
                ("X-Llorch-Queue-Position" = u64, description = "tasks ahead at admission"),
                ("X-Llorch-Predicted-Start-Ms" = u64, description = "predicted wait at admission"))),
        (status = 400, description = "Invalid request, or the model is served by no rerank pool (OpenAI error shape)", body = OaiErrorBody),
        (status = 404, description = "No pool serves the model", body = OaiErrorBody),
        (status = 409, description = "The task was canceled", body = OaiErrorBody),
        (status = 429, description = "Queue full", body = OaiErrorBody,
            headers(("Retry-After" = u64, description = "seconds"), ("X-Backoff-Ms" = u64, description = "milliseconds"))),
        (status = 503, description = "No ready pool", body = OaiErrorBody),
    ))]
pub async fn rerank(
    State(state): State<AppState>,
    Extension(cid): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OaiError> {
    let r: RerankRequest = door::read_json(&state, &headers, body).await?;
    let task_id = format!("rerank-{}", uuid::Uuid::new_v4().simple());
    let (req, docs) =
        rerank_task(&r, &headers, &task_id).inspect_err(|e| count_refusal(&state, e))?;
    let (entered, res) = run(&state, &cid, req, Dialect::Rerank).await?;
    let with_docs = r.return_documents == Some(true);
    let results = res
        .results
        .unwrap_or_default()
        .into_iter()
        .map(|s| RerankResult {
            index: s.index,
            relevance_score: s.relevance_score,
            document: with_docs
                .then(|| docs.get(s.index as usize).cloned())
                .flatten()
                .map(|text| RerankDocument { text }),
        })
        .collect();
    let reply = RerankResponse {
        id: entered.adm.task.id.clone(),
        model: r.model,
        results,
        usage: usage(res.prompt_tokens),
    };
    Ok((entered.headers, Json(reply)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000 → bytes 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        let v = [0.25f32, -3.5, 1e-7];
        let raw = base64::engine::general_purpose::STANDARD
            .decode(base64_f32(&v))
            .unwrap();
        let back: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(back, v);
    }

    #[test]
    fn input_forms() {
        assert_eq!(input_texts(&json!("a")).unwrap(), ["a"]);
        assert_eq!(input_texts(&json!(["a", "b"])).unwrap(), ["a", "b"]);
        for tokens in [json!([1, 2]), json!([[1, 2]])] {
            let e = input_texts(&tokens).unwrap_err();
            assert!(e.code == "invalid_params");
        }
        assert!(input_texts(&json!({"x": 1})).is_err());
        assert!(input_texts(&json!([null])).is_err());
    }

    #[test]
    fn request_checks() {
        let h = HeaderMap::new();
        let req = |v: Value| -> EmbeddingsRequest { serde_json::from_value(v).unwrap() };
        let (t, b64) = embeddings_task(
            &req(json!({"model": "m", "input": ["x"], "encoding_format": "base64", "user": "u"})),
            &h,
            "embd-1",
        )
        .unwrap();
        assert!(b64);
        assert_eq!(t.workload, orch_api_types::Workload::Embedding);
        assert_eq!(t.input.as_deref(), Some(&["x".to_owned()][..]));
        for (bad, want) in [
            (
                json!({"model": "m", "input": "x", "dimensions": 8}),
                "`dimensions` (8)",
            ),
            (
                json!({"model": "m", "input": "x", "encoding_format": "int8"}),
                "int8",
            ),
            (json!({"model": "m", "input": []}), "1 to 2048"),
            (json!({"model": " ", "input": "x"}), "`model` is required"),
            (
                json!({"model": "m", "input": "x", "priority": "high"}),
                "priority `high`",
            ),
        ] {
            let e = embeddings_task(&req(bad), &h, "embd-1").unwrap_err();
            assert!(format!("{e:?}").contains(want), "{e:?}");
        }
        let rr = |v: Value| -> RerankRequest { serde_json::from_value(v).unwrap() };
        let (t, docs) = rerank_task(
            &rr(json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}], "top_n": 1})),
            &h,
            "rerank-1",
        )
        .unwrap();
        assert_eq!(docs, ["a", "b"]);
        assert_eq!(t.top_n, Some(1));
        for (bad, want) in [
            (
                json!({"model": "m", "query": "q", "documents": []}),
                "1 to 2048",
            ),
            (
                json!({"model": "m", "query": "q", "documents": [{"t": 1}]}),
                "documents[0]",
            ),
            (
                json!({"model": "m", "query": "", "documents": ["a"]}),
                "`query`",
            ),
            (
                json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 0}),
                "`top_n`",
            ),
        ] {
            let e = rerank_task(&rr(bad), &h, "rerank-1").unwrap_err();
            assert!(format!("{e:?}").contains(want), "{e:?}");
        }
    }
}
