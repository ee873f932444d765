//! `/v1/artifacts*`: content-addressed artifacts (docs/STATE.md, "Artifacts").
//!
//! - `POST /v1/artifacts` `{kind, content, encoding?, tags?, parent?, metadata?}` → 201 with the
//!   description and a download `url`. `content` is text, base64, or any JSON value (stored as
//!   canonical JSON, `orch_store::canonical_json`).
//! - `GET /v1/artifacts/{id}` → JSON: the description plus `content` (UTF-8 text, or base64 with
//!   `encoding: "base64"` when the bytes are not UTF-8). `?raw=1` answers the bytes instead.
//! - `GET /v1/artifacts/{id}/raw` → the bytes (what `url` points to).
//! - `GET /v1/artifacts?tag=&kind=&limit=` → descriptions, newest first.
//!
//! `url` is built from the request's `Host` header (and `X-Forwarded-Proto` when it says
//! `https`), so it works from the machine that made the request, e.g. through an SSH tunnel.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use orch_api_types::{
    Artifact, ArtifactCreate, ArtifactKind, ArtifactList, ArtifactMeta, ContentEncoding, ErrorCode,
    ErrorEnvelope,
};
use serde::Deserialize;

use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::state::AppState;
use crate::storage::{blocking, store_err};

/// The body limit of `POST /v1/artifacts`: the largest artifact
/// (`artifacts.max_artifact_bytes`) base64-encoded plus 1 MiB of JSON; larger bodies get 413
/// `PAYLOAD_TOO_LARGE`.
pub fn body_limit(cfg: &orch_config::Config) -> usize {
    usize::try_from(
        cfg.artifacts
            .max_artifact_bytes
            .saturating_mul(4)
            .div_ceil(3)
            .saturating_add(1 << 20),
    )
    .unwrap_or(usize::MAX)
}

fn to_store_kind(k: ArtifactKind) -> orch_store::ArtifactKind {
    match k {
        ArtifactKind::Plan => orch_store::ArtifactKind::Plan,
        ArtifactKind::Summary => orch_store::ArtifactKind::Summary,
        ArtifactKind::Diff => orch_store::ArtifactKind::Diff,
        ArtifactKind::Trace => orch_store::ArtifactKind::Trace,
        ArtifactKind::Transcript => orch_store::ArtifactKind::Transcript,
        ArtifactKind::Other => orch_store::ArtifactKind::Other,
    }
}

fn to_api_kind(k: orch_store::ArtifactKind) -> ArtifactKind {
    match k {
        orch_store::ArtifactKind::Plan => ArtifactKind::Plan,
        orch_store::ArtifactKind::Summary => ArtifactKind::Summary,
        orch_store::ArtifactKind::Diff => ArtifactKind::Diff,
        orch_store::ArtifactKind::Trace => ArtifactKind::Trace,
        orch_store::ArtifactKind::Transcript => ArtifactKind::Transcript,
        orch_store::ArtifactKind::Other => ArtifactKind::Other,
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
}

/// `scheme://host` as the caller reached the daemon.
pub fn base_url(headers: &HeaderMap, fallback_host: &str) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| valid_host(h))
        .unwrap_or(fallback_host);
    let scheme = match headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
    {
        Some(p) if p.eq_ignore_ascii_case("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

fn to_api_meta(m: orch_store::ArtifactMeta, base: &str) -> ArtifactMeta {
    ArtifactMeta {
        url: format!("{base}/v1/artifacts/{}/raw", m.id),
        id: m.id,
        kind: to_api_kind(m.kind),
        digest: m.digest,
        size: m.size,
        created_ms: m.created_ms,
        tags: m.tags,
        parent: m.parent,
        metadata: m.metadata,
    }
}

fn too_large(message: String) -> ServiceError {
    ServiceError::new(ErrorCode::PayloadTooLarge, message)
}

/// Store an artifact; the same content always gets the same id.
#[utoipa::path(post, path = "/v1/artifacts", tag = "artifacts", operation_id = "create_artifact", request_body = ArtifactCreate,
    responses(
        (status = 201, description = "Stored (or already stored: tags are merged)", body = ArtifactMeta),
        (status = 400, description = "Invalid JSON, kind, tag, parent, metadata or base64", body = ErrorEnvelope),
        (status = 413, description = "Content larger than artifacts.max_artifact_bytes (`PAYLOAD_TOO_LARGE`)", body = ErrorEnvelope),
    ))]
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, HeaderMap, Json<ArtifactMeta>), ServiceError> {
    let limit = state.config.artifacts.max_artifact_bytes;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large(format!(
                "the request body is too large for an artifact of at most {limit} bytes \
                 (artifacts.max_artifact_bytes); split it or raise the limit"
            ))
        } else {
            ServiceError::invalid(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    crate::http::object_only(&body)?;
    let req: ArtifactCreate = serde_json::from_slice(&body)
        .map_err(|e| ServiceError::invalid(format!("invalid JSON body: {e}")))?;
    drop(body);
    let (content, json) = content_of(req.content, req.encoding)?;
    if content.len() as u64 > limit {
        return Err(too_large(format!(
            "artifact content is {} bytes; the limit is {limit} bytes \
             (artifacts.max_artifact_bytes)",
            content.len()
        )));
    }
    let input = orch_store::ArtifactInput {
        kind: to_store_kind(req.kind),
        content: Vec::new(),
        tags: req.tags,
        parent: req.parent,
        metadata: req.metadata,
    };
    let store = state.store.clone();
    let meta = blocking(move || {
        let a = store.artifacts();
        match json {
            Some(v) => a.put_json(input, &v, now_ms()),
            None => a.put(orch_store::ArtifactInput { content, ..input }, now_ms()),
        }
        .map_err(store_err)
    })
    .await?;
    state.background.poke_gc();
    tracing::info!(artifact_id = %meta.id, kind = %meta.kind, size = meta.size, "artifact stored");
    let meta = to_api_meta(meta, &base_url(&headers, &state.config.bind));
    let mut out = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&meta.url) {
        out.insert(header::LOCATION, v);
    }
    Ok((StatusCode::CREATED, out, Json(meta)))
}

/// The bytes to store, and the JSON value when the artifact is one: a string `content` is
/// text (`utf8`, its default) or base64; `json` (the default for any other value) stores the
/// value as canonical JSON.
fn content_of(
    content: serde_json::Value,
    encoding: Option<ContentEncoding>,
) -> Result<(Vec<u8>, Option<serde_json::Value>), ServiceError> {
    match (content, encoding) {
        (serde_json::Value::String(s), None | Some(ContentEncoding::Utf8)) => {
            Ok((s.into_bytes(), None))
        }
        (serde_json::Value::String(s), Some(ContentEncoding::Base64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|e| {
                    ServiceError::invalid(format!(
                        "`content` is not valid base64 ({e}); send standard base64 with \
                         padding, or set encoding: utf8 for text"
                    ))
                })?;
            Ok((bytes, None))
        }
        (v, None | Some(ContentEncoding::Json)) => Ok((orch_store::canonical_json(&v), Some(v))),
        (_, Some(e)) => {
            Err(ServiceError::invalid(format!(
            "encoding `{}` needs a string `content`; omit `encoding` (or send `json`) to store \
             a JSON value",
            if e == ContentEncoding::Base64 { "base64" } else { "utf8" }
        )))
        }
    }
}

/// Query of `GET /v1/artifacts/{id}`.
#[derive(Debug, Default, Deserialize)]
pub struct GetQuery {
    /// `1` or `true`: answer the raw bytes.
    #[serde(default)]
    pub raw: Option<String>,
}

fn raw_response(meta: &orch_store::ArtifactMeta, bytes: Vec<u8>) -> Response {
    // `application/json` only for what is one (a `transcript` uploaded by a client may hold
    // anything; found by the chaos schema fuzzing).
    let ctype = if meta.json
        || meta.kind == orch_store::ArtifactKind::Transcript
            && serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).is_ok()
    {
        "application/json"
    } else if std::str::from_utf8(&bytes).is_ok() {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    };
    let mut resp = (StatusCode::OK, bytes).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", meta.id)) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(meta.kind.as_str()) {
        h.insert("x-artifact-kind", v);
    }
    resp
}

async fn load(
    state: &AppState,
    id: String,
) -> Result<(orch_store::ArtifactMeta, Vec<u8>), ServiceError> {
    let store = state.store.clone();
    blocking(move || {
        let a = store.artifacts();
        let meta = a.get_meta(&id).map_err(store_err)?;
        let bytes = a.read(&id).map_err(store_err)?;
        Ok((meta, bytes))
    })
    .await
}

/// An artifact: its description and content as JSON (`?raw=1`: the bytes).
#[utoipa::path(get, path = "/v1/artifacts/{id}", tag = "artifacts",
    params(("id" = String, Path, description = "artifact id, `sha256:<hex>`"),
        ("raw" = Option<String>, Query, description = "`1`: answer the raw bytes instead of JSON")),
    responses(
        (status = 200, description = "The artifact as JSON; with `raw=1` its bytes, typed as by `GET /v1/artifacts/{id}/raw`",
            content((Artifact = "application/json"), (String = "text/plain"), (Vec<u8> = "application/octet-stream"))),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_artifact(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ServiceError> {
    let Query(q) = q.map_err(|e| ServiceError::invalid(format!("bad query: {}", e.body_text())))?;
    let (meta, bytes) = load(&state, id).await?;
    if q.raw
        .as_deref()
        .is_some_and(|r| r == "1" || r.eq_ignore_ascii_case("true"))
    {
        return Ok(raw_response(&meta, bytes));
    }
    let value = meta
        .json
        .then(|| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .flatten();
    let (encoding, content) = match value {
        Some(v) => (ContentEncoding::Json, v),
        None => match String::from_utf8(bytes) {
            Ok(s) => (ContentEncoding::Utf8, s.into()),
            Err(e) => (
                ContentEncoding::Base64,
                base64::engine::general_purpose::STANDARD
                    .encode(e.into_bytes())
                    .into(),
            ),
        },
    };
    let meta = to_api_meta(meta, &base_url(&headers, &state.config.bind));
    Ok(Json(Artifact {
        meta,
        encoding,
        content,
    })
    .into_response())
}

/// An artifact's bytes (the `url` of its description).
#[utoipa::path(get, path = "/v1/artifacts/{id}/raw", tag = "artifacts",
    params(("id" = String, Path, description = "artifact id, `sha256:<hex>`")),
    responses(
        (status = 200, description = "The content; `ETag` is the id. `application/json` for JSON artifacts and transcripts, `text/plain; charset=utf-8` for other UTF-8 content, else `application/octet-stream`",
            content((Vec<u8> = "application/octet-stream"), (String = "text/plain"), (Value = "application/json"))),
        (status = 400, description = "Malformed id", body = ErrorEnvelope),
        (status = 404, body = ErrorEnvelope),
    ))]
pub async fn get_raw(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ServiceError> {
    let (meta, bytes) = load(&state, id).await?;
    Ok(raw_response(&meta, bytes))
}

/// Most artifacts one `GET /v1/artifacts` lists; a larger `limit` is a 400.
pub const MAX_LIST_LIMIT: usize = 10_000;

/// Query of `GET /v1/artifacts`.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    /// Only artifacts with this tag.
    #[serde(default)]
    pub tag: Option<String>,
    /// Only artifacts of this kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// At most this many (default 100, at most 10000).
    #[serde(default)]
    pub limit: Option<usize>,
}

/// Artifacts, newest first, filtered by tag and/or kind.
#[utoipa::path(get, path = "/v1/artifacts", tag = "artifacts", operation_id = "list_artifacts",
    params(("tag" = Option<String>, Query, description = "only artifacts with this tag"),
        ("kind" = Option<ArtifactKind>, Query, description = "only this kind"),
        ("limit" = Option<usize>, Query, description = "at most this many (default 100, max 10000)")),
    responses((status = 200, body = ArtifactList), (status = 400, body = ErrorEnvelope)))]
pub async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ArtifactList>, ServiceError> {
    let Query(q) = q.map_err(|e| ServiceError::invalid(format!("bad query: {}", e.body_text())))?;
    let kind = q
        .kind
        .filter(|k| !k.is_empty())
        .map(|k| {
            orch_store::ArtifactKind::ALL
                .into_iter()
                .find(|x| x.as_str() == k)
                .ok_or_else(|| {
                    ServiceError::invalid(
                        "kind must be one of plan, summary, diff, trace, transcript, other",
                    )
                })
        })
        .transpose()?;
    let tag = q.tag.filter(|t| !t.is_empty());
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_LIST_LIMIT {
        return Err(ServiceError::invalid(format!(
            "limit={limit} is too large; at most {MAX_LIST_LIMIT}"
        )));
    }
    let store = state.store.clone();
    let metas = blocking(move || {
        store
            .artifacts()
            .list(tag.as_deref(), kind, limit)
            .map_err(store_err)
    })
    .await?;
    let base = base_url(&headers, &state.config.bind);
    Ok(Json(ArtifactList {
        artifacts: metas.into_iter().map(|m| to_api_meta(m, &base)).collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_comes_from_the_host_header() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("devbox:18080"));
        assert_eq!(base_url(&h, "127.0.0.1:8080"), "http://devbox:18080");
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert_eq!(base_url(&h, "127.0.0.1:8080"), "https://devbox:18080");
        h.insert(header::HOST, HeaderValue::from_static("evil/path?x"));
        assert_eq!(base_url(&h, "127.0.0.1:8080"), "https://127.0.0.1:8080");
    }
}
