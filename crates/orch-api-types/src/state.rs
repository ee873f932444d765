//! Bodies of the persistent-state endpoints: model catalog (`/v1/catalog/models*`), sessions
//! (`/v1/sessions/{id}`), budgets, and artifacts (`/v1/artifacts*`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Optional per-session limits, set by the `budget` field of the first task of a session.
/// Every field is optional; an absent field means "no limit" for that dimension.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Most tokens the session may generate, over all its tasks. A task is admitted only when
    /// its `max_tokens` fits in what is left (minus what tasks still running have reserved).
    #[serde(default)]
    pub tokens: Option<u64>,
    /// Most engine time in milliseconds (from a task's start on the engine to its end).
    #[serde(default)]
    pub time_ms: Option<u64>,
    /// Most cost, in kilotokens processed: (prompt tokens evaluated + tokens generated) / 1000.
    #[serde(default)]
    pub cost: Option<f64>,
}

/// What is left of a session's budget; absent for a dimension without a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetRemaining {
    /// Tokens left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// Engine milliseconds left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// Cost left (kilotokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

/// What a session has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionSpend {
    /// Tokens generated.
    pub tokens: u64,
    /// Engine milliseconds.
    pub time_ms: u64,
    /// Cost (kilotokens processed).
    pub cost: f64,
}

/// Body of `GET /v1/sessions/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SessionInfo {
    /// The session's id.
    pub session_id: String,
    /// Milliseconds until the session expires unless used again (idle TTL).
    pub ttl_ms_remaining: u64,
    /// Turns (tasks) taken so far, including the one that created it.
    pub turns: u32,
    /// Most turns allowed.
    pub max_turns: u32,
    /// Estimated bytes of KV cache the session's engine slot holds (context tokens × the
    /// model's KV bytes per token; 0 until a task finished or when the model shape is unknown).
    pub kv_bytes: u64,
    /// Share of the last turn's prompt the engine reused from the slot's cache (0 cold .. 1).
    pub kv_warmth: f64,
    /// What is left of the budget; absent when the session has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_remaining: Option<BudgetRemaining>,
    /// The budget set at creation; absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetSpec>,
    /// What the session has used.
    pub spent: SessionSpend,
    /// Replica holding the session's KV, once a task finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Engine slot (llama-server `id_slot`) holding the session's KV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Last turn, milliseconds since the Unix epoch.
    pub last_used_ms: u64,
}

/// Body of `DELETE /v1/sessions/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SessionEvicted {
    /// The session removed.
    pub session_id: String,
    /// Replica that held its KV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica_id: Option<String>,
    /// Engine slot that held its KV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Whether the engine confirmed erasing the slot's cache. False when the session never
    /// finished a task, the replica is gone, or another live session now uses the slot.
    pub slot_erased: bool,
}

/// Lifecycle state of a catalog model. Only these two exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum ModelState {
    /// Usable by tasks and pools.
    Active,
    /// Kept in the catalog; tasks naming it get 409 `MODEL_RETIRED`.
    Retired,
}

/// Body of `POST /v1/catalog/models`: register a local file (201), or pull a model from a hub
/// or URL (202 with a [`crate::PullJob`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterModelRequest {
    /// Catalog id, 1-128 of `A-Za-z0-9._:-`. Tasks may name it as `model_ref`; pools as `model`.
    /// Required to register; for a pull it defaults to the model file's name without `.gguf`
    /// (and without a split suffix `-00001-of-0000N`).
    #[serde(default)]
    pub id: Option<String>,
    /// What to register or pull: an absolute path of the model file or a `file://` URL
    /// (registered), a hub reference `hf:ORG/REPO/FILE.gguf` or `hf:ORG/REPO:QUANT` (pulled),
    /// or an `http(s)://` URL (pulled with `pull: true`; otherwise registered as a reference,
    /// after the outbound policy allowed it).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Download the model into `data_dir/models` and register it when verified. Implied by
    /// `hf:` references; `true` pulls an `http(s)://` URL.
    #[serde(default)]
    pub pull: Option<bool>,
    /// Expected digest, `sha256:<64 hex>` (bare hex accepted). A pull verifies the download
    /// against it (instead of the hub's `lfs.oid`).
    #[serde(default)]
    pub digest: Option<String>,
    /// Detached signature text, if the publisher provides one.
    #[serde(default)]
    pub signature: Option<String>,
    /// SBOM text (SPDX, CycloneDX, ...), if any.
    #[serde(default)]
    pub sbom: Option<String>,
}

/// The last verification of a catalog model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyOutcome {
    /// When it ran, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Whether the file matched the registered digest (true when none is registered).
    pub ok: bool,
    /// Digest computed from the file.
    pub computed_digest: String,
}

/// A catalog model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CatalogModel {
    /// Catalog id.
    pub id: String,
    /// Path or URL of the model file (secrets in URLs redacted).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Registered digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Whether a signature is registered.
    pub has_signature: bool,
    /// Whether an SBOM is registered.
    pub has_sbom: bool,
    /// `Active` or `Retired`.
    pub state: ModelState,
    /// Registration time, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Last state change, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// The last `verify`, if any ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_verified: Option<VerifyOutcome>,
    /// Pools whose model is this file.
    pub served_by: Vec<String>,
    /// Size in bytes (every part of a split model), for pulled models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Where a pulled model came from: the `hf:` reference or the URL (secrets redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Body of `GET /v1/catalog/models`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CatalogList {
    /// Every model, ordered by id.
    pub models: Vec<CatalogModel>,
    /// Pulls not yet registered: running, and failed or canceled ones kept for a while.
    #[serde(default)]
    pub pulls: Vec<crate::PullJob>,
}

/// Body of `POST /v1/catalog/models/{id}/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetModelStateRequest {
    /// The new state.
    pub state: ModelState,
}

/// Body of a successful `POST /v1/catalog/models/{id}/verify` (a digest mismatch is 409
/// `DIGEST_MISMATCH`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VerifyResponse {
    /// The model verified.
    pub id: String,
    /// True: the file matches the registered digest, or none is registered.
    pub ok: bool,
    /// Digest of the file as read now.
    pub computed_digest: String,
    /// Registered digest, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    /// Bytes hashed.
    pub size: u64,
    /// Non-fatal findings: no digest, signature or SBOM registered.
    pub warnings: Vec<String>,
}

/// What an artifact is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A plan.
    Plan,
    /// A summary.
    Summary,
    /// A diff.
    Diff,
    /// A trace.
    Trace,
    /// A task transcript (written by the daemon for every finished task).
    Transcript,
    /// Anything else.
    Other,
}

/// How `content` is encoded in artifact bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// The content is the UTF-8 text itself.
    #[default]
    Utf8,
    /// The content is standard base64 (with padding) of the bytes.
    Base64,
    /// The content is a JSON value, stored as canonical JSON (docs/STATE.md, "Artifacts").
    Json,
}

/// Body of `POST /v1/artifacts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactCreate {
    /// Kind of artifact.
    pub kind: ArtifactKind,
    /// The content: a string (text, or base64 with `encoding: base64`), or any other JSON
    /// value, stored as canonical JSON (sorted keys, no whitespace): the same value always
    /// gets the same id.
    #[schema(value_type = Value)]
    pub content: serde_json::Value,
    /// How a string `content` is encoded: `utf8` (the default for strings), `base64`, or
    /// `json` (store the string itself as a JSON value). Any other `content` is `json`, the
    /// default for it; `utf8` or `base64` with it is a 400.
    #[serde(default)]
    pub encoding: Option<ContentEncoding>,
    /// Labels for listing (1-128 characters each, no control characters, at most 64).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Id of the artifact this one derives from.
    #[serde(default)]
    pub parent: Option<String>,
    /// A JSON object of at most 64 KiB; `null` is `{}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: serde_json::Value,
}

/// An artifact's description (201 body of `POST /v1/artifacts`, list items).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactMeta {
    /// `sha256:<hex>` of the content: same content, same id.
    pub id: String,
    /// Kind of artifact.
    pub kind: ArtifactKind,
    /// The content digest (same as `id`).
    pub digest: String,
    /// Content size in bytes.
    pub size: u64,
    /// When the content was first stored, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Parent artifact id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Client metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
    /// Download URL of the raw bytes (`…/v1/artifacts/{id}/raw`), built from the request's
    /// `Host` header so it works from wherever the caller reached the daemon.
    pub url: String,
}

/// Body of `GET /v1/artifacts/{id}`: the description plus the content.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// The description.
    #[serde(flatten)]
    pub meta: ArtifactMeta,
    /// `json` for an artifact stored from a JSON value (content is that value), else `utf8`
    /// when the bytes are valid UTF-8 (content is the text), else `base64`.
    pub encoding: ContentEncoding,
    /// The content: a string, or with `encoding: json` the JSON value.
    #[schema(value_type = Value)]
    pub content: serde_json::Value,
}

/// Body of `GET /v1/artifacts`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    /// Matching artifacts, newest first.
    pub artifacts: Vec<ArtifactMeta>,
}
