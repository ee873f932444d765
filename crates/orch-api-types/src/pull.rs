//! Bodies of model pulls (`POST /v1/catalog/models` with a hub reference, SPEC §11): the job a
//! pull answers with (202) and that `GET /v1/catalog/models/{id}` shows until the model is
//! registered.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ErrorEnvelope;

/// Where a pull (or one of its files) stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// Bytes are arriving.
    Downloading,
    /// Hashing bytes already on disk (a partial file being resumed, or a complete file).
    Verifying,
    /// Downloaded and verified (a pull: registered; `GET /v1/catalog/models/{id}` then
    /// answers the model).
    Completed,
    /// Ended without a model; `error` says why. Partial files of a broken transfer are kept
    /// for the next pull to resume; a digest mismatch leaves nothing behind.
    Failed,
    /// Canceled by `DELETE /v1/catalog/models/{id}`; its partial files are deleted.
    Canceled,
}

/// One file of a pull (a split GGUF has several).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullFile {
    /// The file's path in the repository, or the URL's path.
    pub path: String,
    /// Where it is written (`<dest>.part` until verified).
    pub dest: String,
    /// Its size in bytes, once known (from the hub's file list or the response).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Bytes received and hashed so far (a partial file's bytes included).
    pub bytes_done: u64,
    /// The sha256 it must have (`lfs.oid` or the digest given), `sha256:<hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_digest: Option<String>,
    /// This file's state.
    pub state: PullState,
    /// Bytes taken over from an earlier partial download (`<dest>.part`) instead of fetched.
    pub resumed_from: u64,
    /// Whether this pull joined a download of the same file that another pull had started.
    pub shared: bool,
}

/// A pull job: 202 body of `POST /v1/catalog/models` with a hub `ref`, and of
/// `GET /v1/catalog/models/{id}` until the model is registered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PullJob {
    /// The catalog id the model is registered under when the pull completes.
    pub id: String,
    /// What is pulled, as given (secrets in URLs redacted).
    #[serde(rename = "ref")]
    pub reference: String,
    /// Where the pull stands.
    pub state: PullState,
    /// Bytes done over all files.
    pub bytes_done: u64,
    /// Bytes in all files, once every size is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Recent transfer rate, bytes per second.
    pub rate_bytes_per_s: u64,
    /// Estimated time left at the recent rate, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_ms: Option<u64>,
    /// Each file; the first is the one the catalog entry names.
    pub files: Vec<PullFile>,
    /// When the pull started, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When its state last changed, milliseconds since the Unix epoch.
    pub updated_ms: u64,
    /// Why it failed or was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEnvelope>,
    /// Non-fatal findings (e.g. nothing to verify the download against).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}
