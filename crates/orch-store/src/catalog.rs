//! Model catalog: registered models, their lifecycle state and digest verification.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::str::FromStr;

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use crate::error::{to_i64, to_u64, DbContext, Result, StoreError};
use crate::redact::redact_url;
use crate::util::{normalize_digest, sha256_reader, validate_id, validate_text};
use crate::Store;

/// Longest accepted model reference (path or URL), in bytes.
pub const MAX_REFERENCE_LEN: usize = 4096;
/// Longest accepted signature or SBOM text, in bytes.
pub const MAX_ATTESTATION_LEN: usize = 1 << 20;

/// Lifecycle state of a catalog model. Only these two exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ModelState {
    /// Usable by tasks and pools.
    Active,
    /// Kept in the catalog but refused for new tasks (`409 MODEL_RETIRED`).
    Retired,
}

impl ModelState {
    /// The stored and serialized spelling: `Active` or `Retired`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelState::Active => "Active",
            ModelState::Retired => "Retired",
        }
    }
}

impl fmt::Display for ModelState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ModelState {
    type Err = StoreError;

    /// Parses `Active` or `Retired` (any letter case); anything else is [`StoreError::Invalid`].
    fn from_str(s: &str) -> Result<Self> {
        if s.eq_ignore_ascii_case("active") {
            Ok(ModelState::Active)
        } else if s.eq_ignore_ascii_case("retired") {
            Ok(ModelState::Retired)
        } else {
            Err(StoreError::Invalid(format!(
                "model state must be 'Active' or 'Retired', got '{}'",
                s.chars().take(64).collect::<String>().escape_debug()
            )))
        }
    }
}

/// What a client supplies to register a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewModel {
    /// Catalog id, `[A-Za-z0-9._:-]{1,128}`.
    pub id: String,
    /// Absolute local path, `file://` URL, or `http(s)://` URL of the model file.
    pub reference: String,
    /// Expected digest, `sha256:<hex>` (bare hex is accepted and normalized).
    pub digest: Option<String>,
    /// Detached signature (opaque text), if the publisher provides one.
    pub signature: Option<String>,
    /// Software bill of materials (opaque text, e.g. SPDX or CycloneDX JSON), if any.
    pub sbom: Option<String>,
    /// Size of the model in bytes (all parts of a split model), when known.
    pub size: Option<u64>,
    /// Where the model was downloaded from (`hf:ORG/REPO/FILE`, a URL with secrets redacted),
    /// for pulled models.
    pub source: Option<String>,
}

/// Result of the most recent [`Catalog::verify`] run, persisted with the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyOutcome {
    /// When the verification ran (ms since the Unix epoch).
    pub at_ms: u64,
    /// Whether the computed digest matched the registered one (true when none is registered).
    pub ok: bool,
    /// The digest computed from the file, `sha256:<hex>`.
    pub computed_digest: String,
}

/// A model in the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogModel {
    /// Catalog id.
    pub id: String,
    /// Local path or URL of the model file.
    pub reference: String,
    /// Expected digest, `sha256:<hex>`.
    pub digest: Option<String>,
    /// Detached signature text.
    pub signature: Option<String>,
    /// SBOM text.
    pub sbom: Option<String>,
    /// Lifecycle state.
    pub state: ModelState,
    /// Registration time (ms since the Unix epoch).
    pub created_ms: u64,
    /// Time of the last state change (ms since the Unix epoch).
    pub updated_ms: u64,
    /// The last verification, if any ran.
    pub last_verified: Option<VerifyOutcome>,
    /// Size in bytes (all parts of a split model), when known.
    pub size: Option<u64>,
    /// Where a pulled model was downloaded from.
    pub source: Option<String>,
}

impl CatalogModel {
    /// Whether the reference is an `http://` or `https://` URL (not verifiable locally).
    pub fn is_remote(&self) -> bool {
        remote_scheme(&self.reference)
    }
}

/// The answer of [`Catalog::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// The model verified.
    pub id: String,
    /// False only when a registered digest differs from the computed one.
    pub ok: bool,
    /// Digest of the file as read now.
    pub computed_digest: String,
    /// Digest registered for the model, if any.
    pub expected_digest: Option<String>,
    /// Bytes hashed.
    pub size: u64,
    /// Non-fatal findings: missing digest, signature or SBOM.
    pub warnings: Vec<String>,
}

/// Catalog operations; obtained from [`Store::catalog`].
#[derive(Clone, Copy)]
pub struct Catalog<'a> {
    pub(crate) store: &'a Store,
}

const SELECT_MODEL: &str = "SELECT id, reference, digest, signature, sbom, state, created_ms, \
     updated_ms, verified_ms, verified_ok, verified_digest, size, source FROM models";

fn model_from_row(row: &Row<'_>) -> rusqlite::Result<CatalogModel> {
    let state: String = row.get(5)?;
    let state = ModelState::from_str(&state).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(5, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let verified_ms: Option<i64> = row.get(8)?;
    let verified_ok: Option<bool> = row.get(9)?;
    let verified_digest: Option<String> = row.get(10)?;
    let last_verified = match (verified_ms, verified_ok, verified_digest) {
        (Some(at), Some(ok), Some(computed_digest)) => Some(VerifyOutcome {
            at_ms: to_u64(at),
            ok,
            computed_digest,
        }),
        _ => None,
    };
    let size: Option<i64> = row.get(11)?;
    Ok(CatalogModel {
        id: row.get(0)?,
        reference: row.get(1)?,
        digest: row.get(2)?,
        signature: row.get(3)?,
        sbom: row.get(4)?,
        state,
        created_ms: to_u64(row.get(6)?),
        updated_ms: to_u64(row.get(7)?),
        last_verified,
        size: size.map(to_u64),
        source: row.get(12)?,
    })
}

fn remote_scheme(reference: &str) -> bool {
    let lower = reference.get(..8).unwrap_or(reference).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn validate_reference(reference: &str) -> Result<()> {
    validate_text("model reference", reference, MAX_REFERENCE_LEN)?;
    if remote_scheme(reference) || reference.to_ascii_lowercase().starts_with("file://") {
        let parsed = url::Url::parse(reference).map_err(|e| {
            StoreError::Invalid(format!(
                "model reference '{}' is not a valid URL: {e}",
                redact_url(reference)
            ))
        })?;
        if parsed.host_str().is_none_or(str::is_empty) && parsed.scheme() != "file" {
            return Err(StoreError::Invalid(format!(
                "model reference '{}' has no host",
                redact_url(reference)
            )));
        }
        return Ok(());
    }
    if reference.contains("://") {
        return Err(StoreError::Invalid(format!(
            "model reference '{}' uses an unsupported scheme; use an absolute path, \
             file://, http:// or https://",
            redact_url(reference)
        )));
    }
    if !std::path::Path::new(reference).is_absolute() {
        return Err(StoreError::Invalid(format!(
            "model reference '{reference}' is a relative path; register the absolute path \
             (relative paths would depend on the daemon's working directory)"
        )));
    }
    Ok(())
}

fn validate_attestation(what: &str, value: &Option<String>) -> Result<()> {
    if let Some(v) = value {
        if v.trim().is_empty() {
            return Err(StoreError::Invalid(format!(
                "{what} must not be empty; leave it out instead"
            )));
        }
        if v.len() > MAX_ATTESTATION_LEN {
            return Err(StoreError::TooLarge {
                what: what.to_string(),
                size: v.len() as u64,
                limit: MAX_ATTESTATION_LEN as u64,
            });
        }
    }
    Ok(())
}

/// The local file a model reference points to, or an error for remote references.
fn local_path(model: &CatalogModel) -> Result<PathBuf> {
    if model.is_remote() {
        return Err(StoreError::Conflict(format!(
            "catalog model '{}' references the URL {}; only local paths can be verified \
             (download the file, then register or re-register it by path)",
            model.id,
            redact_url(&model.reference)
        )));
    }
    if model.reference.to_ascii_lowercase().starts_with("file://") {
        let parsed = url::Url::parse(&model.reference)
            .map_err(|e| StoreError::Conflict(format!("bad file:// reference: {e}")))?;
        return parsed.to_file_path().map_err(|()| {
            StoreError::Conflict(format!(
                "the file:// reference of catalog model '{}' does not name a local path",
                model.id
            ))
        });
    }
    Ok(PathBuf::from(&model.reference))
}

impl Catalog<'_> {
    /// Register a model in state `Active`. A duplicate id is [`StoreError::Conflict`].
    pub fn register(&self, model: NewModel, now_ms: u64) -> Result<CatalogModel> {
        validate_id("model id", &model.id)?;
        validate_reference(&model.reference)?;
        let digest = model
            .digest
            .as_deref()
            .map(|d| normalize_digest("model digest", d))
            .transpose()?;
        validate_attestation("signature", &model.signature)?;
        validate_attestation("sbom", &model.sbom)?;
        if let Some(src) = &model.source {
            validate_text("model source", src, MAX_REFERENCE_LEN)?;
        }
        let size = model.size.map(|s| to_i64(s, "model size")).transpose()?;
        let now = to_i64(now_ms, "now_ms")?;
        let conn = self.store.conn();
        let inserted = conn
            .execute(
                "INSERT INTO models (id, reference, digest, signature, sbom, state, created_ms, \
                 updated_ms, size, source) VALUES (?1, ?2, ?3, ?4, ?5, 'Active', ?6, ?6, ?7, ?8) \
                 ON CONFLICT (id) DO NOTHING",
                params![
                    model.id,
                    model.reference,
                    digest,
                    model.signature,
                    model.sbom,
                    now,
                    size,
                    model.source
                ],
            )
            .db("registering a model")?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "catalog model '{}' is already registered; delete it first or pick another id",
                model.id
            )));
        }
        Ok(CatalogModel {
            id: model.id,
            reference: model.reference,
            digest,
            signature: model.signature,
            sbom: model.sbom,
            state: ModelState::Active,
            created_ms: now_ms,
            updated_ms: now_ms,
            last_verified: None,
            size: model.size,
            source: model.source,
        })
    }

    /// Look a model up by id.
    pub fn get(&self, id: &str) -> Result<CatalogModel> {
        validate_id("model id", id)?;
        self.store
            .conn()
            .query_row(
                &format!("{SELECT_MODEL} WHERE id = ?1"),
                [id],
                model_from_row,
            )
            .optional()
            .db("reading a catalog model")?
            .ok_or_else(|| StoreError::not_found(format!("catalog model '{id}'")))
    }

    /// Every model, ordered by id.
    pub fn list(&self) -> Result<Vec<CatalogModel>> {
        let conn = self.store.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_MODEL} ORDER BY id"))
            .db("listing catalog models")?;
        let rows = stmt
            .query_map([], model_from_row)
            .db("listing catalog models")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .db("listing catalog models")
    }

    /// Change a model's state (setting the current state again is a no-op that still succeeds).
    pub fn set_state(&self, id: &str, state: ModelState, now_ms: u64) -> Result<CatalogModel> {
        validate_id("model id", id)?;
        let now = to_i64(now_ms, "now_ms")?;
        let changed = self
            .store
            .conn()
            .execute(
                "UPDATE models SET state = ?2, updated_ms = ?3 WHERE id = ?1",
                params![id, state.as_str(), now],
            )
            .db("changing a model's state")?;
        if changed == 0 {
            return Err(StoreError::not_found(format!("catalog model '{id}'")));
        }
        self.get(id)
    }

    /// Remove a model from the catalog (its file is not touched).
    pub fn delete(&self, id: &str) -> Result<()> {
        validate_id("model id", id)?;
        let changed = self
            .store
            .conn()
            .execute("DELETE FROM models WHERE id = ?1", [id])
            .db("deleting a catalog model")?;
        if changed == 0 {
            return Err(StoreError::not_found(format!("catalog model '{id}'")));
        }
        Ok(())
    }

    /// Hash the model's local file and compare it with the registered digest; the outcome is
    /// stored as [`CatalogModel::last_verified`].
    ///
    /// A digest mismatch gives `ok = false`. A missing digest, signature or SBOM is a warning
    /// (also logged), not a failure. A reference that names no local file (a URL, a `file://`
    /// URL without a local path, a directory) is [`StoreError::Conflict`]: the model's state,
    /// not the request, is at fault; a missing file is [`StoreError::NotFound`] naming the path.
    /// The database is not locked while the file is hashed.
    pub fn verify(&self, id: &str, now_ms: u64) -> Result<VerifyReport> {
        let model = self.get(id)?;
        let now = to_i64(now_ms, "now_ms")?;
        let path = local_path(&model)?;
        let file = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StoreError::not_found(format!(
                "model file {} of catalog model '{id}'",
                path.display()
            )),
            _ => StoreError::io(
                format!(
                    "opening model file {} of catalog model '{id}'",
                    path.display()
                ),
                e,
            ),
        })?;
        let is_dir = file.metadata().map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            return Err(StoreError::Conflict(format!(
                "the reference of catalog model '{id}' is a directory ({}); register the model \
                 file itself",
                path.display()
            )));
        }
        let (computed, size) = sha256_reader(BufReader::new(file))
            .map_err(|e| StoreError::io(format!("reading model file {}", path.display()), e))?;

        let mut warnings = Vec::new();
        let ok = match &model.digest {
            Some(expected) if *expected != computed => {
                tracing::warn!(model_id = id, %expected, %computed, "model digest mismatch");
                false
            }
            Some(_) => true,
            None => {
                warnings.push(format!(
                    "no digest is registered for '{id}'; nothing to compare against (the file \
                     hashes to {computed}; register it as the digest to pin this file)"
                ));
                true
            }
        };
        if model.signature.is_none() {
            warnings.push(format!("no signature is registered for '{id}'"));
        }
        if model.sbom.is_none() {
            warnings.push(format!("no SBOM is registered for '{id}'"));
        }
        for w in &warnings {
            tracing::warn!(model_id = id, warning = %w, "model verification warning");
        }

        self.store
            .conn()
            .execute(
                "UPDATE models SET verified_ms = ?2, verified_ok = ?3, verified_digest = ?4 \
                 WHERE id = ?1",
                params![id, now, ok, computed],
            )
            .db("recording a model verification")?;

        Ok(VerifyReport {
            id: model.id,
            ok,
            computed_digest: computed,
            expected_digest: model.digest,
            size,
            warnings,
        })
    }
}
