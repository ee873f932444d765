//! Content-addressed artifact store.
//!
//! Bytes live under `artifacts/sha256/<first 2 hex>/<remaining 62 hex>`; metadata and tags in
//! SQLite. Write order for [`Artifacts::put`]: temp file `.tmp-*` in the final directory →
//! `fsync` file → `rename` → `fsync` directory → insert the row. So a row never points at a
//! missing or torn file, and a torn write is only ever a temp file, which nothing lists and
//! [`crate::Store::open`] deletes. A file without a row (crash after the rename, or during
//! [`Artifacts::gc`]) is an orphan nobody was told about; `open` deletes it too.
//!
//! Reads re-hash the bytes; a file that no longer matches its id is
//! [`StoreError::Corrupt`], never returned as data.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{to_i64, to_u64, DbContext, Result, StoreError};
use crate::util::{
    create_dir_durable, fsync_dir, sha256_digest, sha256_reader, validate_text, write_atomic,
};
use crate::Store;

/// Prefix of temp files in the artifact tree.
pub(crate) const TMP_PREFIX: &str = ".tmp-";
/// Most tags per artifact.
pub const MAX_TAGS: usize = 64;
/// Longest tag, in bytes.
pub const MAX_TAG_LEN: usize = 128;
/// Largest serialized `metadata` object, in bytes.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;

/// What an artifact is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// A task transcript (redacted request, engine, seed, SSE frames).
    Transcript,
    /// Anything else.
    Other,
}

impl ArtifactKind {
    /// Every kind, in declaration order.
    pub const ALL: [ArtifactKind; 6] = [
        ArtifactKind::Plan,
        ArtifactKind::Summary,
        ArtifactKind::Diff,
        ArtifactKind::Trace,
        ArtifactKind::Transcript,
        ArtifactKind::Other,
    ];

    /// Lower-case name, as stored and serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactKind::Plan => "plan",
            ArtifactKind::Summary => "summary",
            ArtifactKind::Diff => "diff",
            ArtifactKind::Trace => "trace",
            ArtifactKind::Transcript => "transcript",
            ArtifactKind::Other => "other",
        }
    }
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ArtifactKind {
    type Err = StoreError;

    /// Parses a kind name (any letter case); anything else is [`StoreError::Invalid`].
    fn from_str(s: &str) -> Result<Self> {
        ArtifactKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                StoreError::Invalid(format!(
                    "artifact kind must be one of plan, summary, diff, trace, transcript, \
                     other; got '{}'",
                    s.chars().take(64).collect::<String>().escape_debug()
                ))
            })
    }
}

/// What a client uploads.
#[derive(Debug, Clone, PartialEq)]
pub struct ArtifactInput {
    /// Kind of artifact.
    pub kind: ArtifactKind,
    /// The bytes.
    pub content: Vec<u8>,
    /// Free-form labels for listing (1..=128 bytes each, at most 64; duplicates collapse).
    pub tags: Vec<String>,
    /// Id of the artifact this one derives from (`sha256:<hex>`). A weak reference: it is not
    /// required to exist, and GC may remove the parent first.
    pub parent: Option<String>,
    /// A JSON object (or `null`, stored as `{}`) of at most 64 KiB.
    pub metadata: serde_json::Value,
}

/// A stored artifact's description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactMeta {
    /// `sha256:<hex>` of the content.
    pub id: String,
    /// Kind of artifact.
    pub kind: ArtifactKind,
    /// Same as `id` (the content digest).
    pub digest: String,
    /// Content size in bytes.
    pub size: u64,
    /// When the content was first stored (ms since the Unix epoch).
    pub created_ms: u64,
    /// Tags, sorted.
    pub tags: Vec<String>,
    /// Parent artifact id.
    pub parent: Option<String>,
    /// Client metadata (a JSON object).
    pub metadata: serde_json::Value,
    /// The content is a JSON value in canonical form ([`canonical_json`]), stored by
    /// [`Artifacts::put_json`].
    pub json: bool,
}

/// The canonical JSON text of `v`, so that the same value always gets the same bytes (and
/// artifact id): object keys sorted by their UTF-8 bytes (which is code point order), no
/// whitespace, strings and numbers as serde_json writes them (only `"`, `\\` and control
/// characters escaped, non-ASCII as UTF-8; integers exactly, other numbers in their shortest
/// round-trip form, so `1` and `1.0` are different values).
pub fn canonical_json(v: &serde_json::Value) -> Vec<u8> {
    fn write(v: &serde_json::Value, out: &mut Vec<u8>) {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push(b'{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(&serde_json::Value::String(k.clone()), out);
                    out.push(b':');
                    if let Some(x) = m.get(k) {
                        write(x, out);
                    }
                }
                out.push(b'}');
            }
            serde_json::Value::Array(a) => {
                out.push(b'[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write(x, out);
                }
                out.push(b']');
            }
            // Scalars: serde_json's own compact form (writing to a Vec cannot fail).
            scalar => {
                let _ = serde_json::to_writer(&mut *out, scalar);
            }
        }
    }
    let mut out = Vec::new();
    write(v, &mut out);
    out
}

/// Outcome of [`Artifacts::gc`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Ids removed, oldest first.
    pub deleted: Vec<String>,
    /// Bytes of content removed.
    pub freed_bytes: u64,
    /// Artifacts left.
    pub remaining_count: u64,
    /// Bytes of content left.
    pub remaining_bytes: u64,
}

/// Artifact operations; obtained from [`Store::artifacts`].
#[derive(Clone, Copy)]
pub struct Artifacts<'a> {
    pub(crate) store: &'a Store,
}

/// Check `sha256:<64 lower-case hex>` and return the hex part.
pub(crate) fn parse_artifact_id(id: &str) -> Result<&str> {
    let hex_part = id.strip_prefix("sha256:").unwrap_or("");
    if hex_part.len() != 64
        || !hex_part
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(StoreError::Invalid(format!(
            "artifact id must be 'sha256:' followed by 64 lower-case hex digits, got '{}'",
            id.chars().take(80).collect::<String>().escape_debug()
        )));
    }
    Ok(hex_part)
}

/// Where the bytes of the artifact with hex digest `hex_part` live under `root`
/// (the `artifacts` directory).
pub(crate) fn content_path(root: &Path, hex_part: &str) -> PathBuf {
    let (head, tail) = hex_part.split_at(2);
    root.join("sha256").join(head).join(tail)
}

const SELECT_META: &str = "SELECT a.id, a.kind, a.size, a.created_ms, a.parent, a.metadata, \
     (SELECT json_group_array(tag) FROM \
        (SELECT tag FROM artifact_tags t WHERE t.artifact_id = a.id ORDER BY tag)), a.json \
     FROM artifacts a";

fn meta_from_row(row: &Row<'_>) -> rusqlite::Result<ArtifactMeta> {
    fn bad(i: usize, e: impl std::error::Error + Send + Sync + 'static) -> rusqlite::Error {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    }
    let id: String = row.get(0)?;
    let kind: String = row.get(1)?;
    let metadata: String = row.get(5)?;
    let tags: String = row.get(6)?;
    Ok(ArtifactMeta {
        digest: id.clone(),
        id,
        kind: ArtifactKind::from_str(&kind).map_err(|e| bad(1, e))?,
        size: to_u64(row.get(2)?),
        created_ms: to_u64(row.get(3)?),
        parent: row.get(4)?,
        metadata: serde_json::from_str(&metadata).map_err(|e| bad(5, e))?,
        tags: serde_json::from_str(&tags).map_err(|e| bad(6, e))?,
        json: row.get::<_, i64>(7)? != 0,
    })
}

fn normalize_tags(tags: Vec<String>) -> Result<Vec<String>> {
    let set: BTreeSet<String> = tags.into_iter().collect();
    if set.len() > MAX_TAGS {
        return Err(StoreError::Invalid(format!(
            "an artifact may carry at most {MAX_TAGS} tags, got {}",
            set.len()
        )));
    }
    for t in &set {
        validate_text("artifact tag", t, MAX_TAG_LEN)?;
    }
    Ok(set.into_iter().collect())
}

fn normalize_metadata(metadata: serde_json::Value) -> Result<(serde_json::Value, String)> {
    let metadata = match metadata {
        serde_json::Value::Null => serde_json::Value::Object(Default::default()),
        v @ serde_json::Value::Object(_) => v,
        other => {
            return Err(StoreError::Invalid(format!(
                "artifact metadata must be a JSON object, got {}",
                match other {
                    serde_json::Value::Bool(_) => "a boolean",
                    serde_json::Value::Number(_) => "a number",
                    serde_json::Value::String(_) => "a string",
                    _ => "an array",
                }
            )))
        }
    };
    let text = serde_json::to_string(&metadata)
        .map_err(|e| StoreError::Invalid(format!("artifact metadata cannot be serialized: {e}")))?;
    if text.len() > MAX_METADATA_BYTES {
        return Err(StoreError::TooLarge {
            what: "artifact metadata".into(),
            size: text.len() as u64,
            limit: MAX_METADATA_BYTES as u64,
        });
    }
    Ok((metadata, text))
}

impl Artifacts<'_> {
    fn root(&self) -> PathBuf {
        self.store.artifacts_dir()
    }

    /// Store an artifact and return its metadata; the id is the SHA-256 of the content.
    ///
    /// Idempotent: putting content that is already stored returns the existing artifact with
    /// the new tags added (the union, sorted); its `kind`, `parent`, `metadata` and
    /// `created_ms` stay those of the first put. Content over
    /// [`crate::StoreOptions::max_artifact_bytes`] is [`StoreError::TooLarge`].
    pub fn put(&self, input: ArtifactInput, now_ms: u64) -> Result<ArtifactMeta> {
        self.put_as(input, false, now_ms)
    }

    /// [`Artifacts::put`] of a JSON value: stored as its [`canonical_json`], so the same value
    /// gets the same id whatever its key order or whitespace, and read back as JSON
    /// ([`ArtifactMeta::json`]). Bytes stored first as text keep `json: false` (first put wins,
    /// like `kind`).
    pub fn put_json(
        &self,
        input: ArtifactInput,
        value: &serde_json::Value,
        now_ms: u64,
    ) -> Result<ArtifactMeta> {
        let input = ArtifactInput {
            content: canonical_json(value),
            ..input
        };
        self.put_as(input, true, now_ms)
    }

    fn put_as(&self, input: ArtifactInput, json: bool, now_ms: u64) -> Result<ArtifactMeta> {
        let limit = self.store.options().max_artifact_bytes;
        let size = input.content.len() as u64;
        if size > limit {
            return Err(StoreError::TooLarge {
                what: "artifact content".into(),
                size,
                limit,
            });
        }
        let tags = normalize_tags(input.tags)?;
        if let Some(p) = &input.parent {
            parse_artifact_id(p)?;
        }
        let parent = input.parent;
        let (metadata, metadata_text) = normalize_metadata(input.metadata)?;
        let now = to_i64(now_ms, "now_ms")?;
        let size_i = to_i64(size, "artifact size")?;

        let id = sha256_digest(&input.content);
        let hex_part = id.trim_start_matches("sha256:").to_string();
        let path = content_path(&self.root(), &hex_part);

        // Shared: puts run in parallel; GC and backup exclude them while they work.
        let _gate = self.store.gate_shared();

        // Small contents go in the row. Otherwise write the file unless a row exists and its
        // content is intact (a damaged file behind an existing row is repaired by the new
        // upload, into the row when it is small).
        let inline = size <= self.store.options().inline_max_bytes;
        let intact = match self.stored_inline(&id)? {
            None => false,
            Some(true) => true,
            Some(false) => fs::File::open(&path)
                .and_then(|f| sha256_reader(io::BufReader::new(f)))
                .is_ok_and(|(digest, len)| digest == id && len == size),
        };
        if !intact && !inline {
            if let Some(dir) = path.parent() {
                create_dir_durable(dir)?;
            }
            let tmp_name = format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple());
            write_atomic(&path, &tmp_name, &input.content)?;
        }
        let row_content = (inline && !intact).then_some(input.content.as_slice());

        let mut conn = self.store.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db("storing artifact metadata")?;
        let inserted = tx
            .execute(
                "INSERT INTO artifacts (id, kind, size, created_ms, parent, metadata, json, content) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (id) DO NOTHING",
                params![
                    id,
                    input.kind.as_str(),
                    size_i,
                    now,
                    parent,
                    metadata_text,
                    i64::from(json),
                    row_content
                ],
            )
            .db("storing artifact metadata")?;
        if inserted == 0 {
            if let Some(c) = row_content {
                // Repairs a row whose file was damaged or lost.
                tx.execute(
                    "UPDATE artifacts SET content = ?2 WHERE id = ?1",
                    params![id, c],
                )
                .db("storing artifact content")?;
            }
        }
        for tag in &tags {
            tx.execute(
                "INSERT INTO artifact_tags (artifact_id, tag) VALUES (?1, ?2) \
                 ON CONFLICT DO NOTHING",
                params![id, tag],
            )
            .db("storing artifact tags")?;
        }
        let meta = if inserted == 1 {
            ArtifactMeta {
                id: id.clone(),
                kind: input.kind,
                digest: id.clone(),
                size,
                created_ms: now_ms,
                tags,
                parent,
                metadata,
                json,
            }
        } else {
            tx.query_row(
                &format!("{SELECT_META} WHERE a.id = ?1"),
                [&id],
                meta_from_row,
            )
            .db("reading artifact metadata")?
        };
        tx.commit().db("committing artifact metadata")?;
        tracing::debug!(artifact_id = %id, size, new = inserted == 1, "artifact stored");
        Ok(meta)
    }

    /// Whether the row of `id` holds its content (`None`: no row).
    fn stored_inline(&self, id: &str) -> Result<Option<bool>> {
        self.store
            .conn()
            .query_row(
                "SELECT content IS NOT NULL FROM artifacts WHERE id = ?1",
                [id],
                |r| r.get::<_, bool>(0),
            )
            .optional()
            .db("reading artifact metadata")
    }

    fn meta_opt(&self, id: &str) -> Result<Option<ArtifactMeta>> {
        self.store
            .conn()
            .query_row(
                &format!("{SELECT_META} WHERE a.id = ?1"),
                [id],
                meta_from_row,
            )
            .optional()
            .db("reading artifact metadata")
    }

    /// An artifact's metadata.
    pub fn get_meta(&self, id: &str) -> Result<ArtifactMeta> {
        parse_artifact_id(id)?;
        self.meta_opt(id)?
            .ok_or_else(|| StoreError::not_found(format!("artifact '{id}'")))
    }

    /// An artifact's content, re-hashed on the way: a missing, truncated or altered file is
    /// [`StoreError::Corrupt`].
    pub fn read(&self, id: &str) -> Result<Vec<u8>> {
        let meta = self.get_meta(id)?;
        let hex_part = parse_artifact_id(id)?;
        let path = content_path(&self.root(), hex_part);
        let in_row: Option<Vec<u8>> = self
            .store
            .conn()
            .query_row("SELECT content FROM artifacts WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .db("reading artifact content")?
            .flatten();
        let bytes = match in_row.map_or_else(|| fs::read(&path), Ok) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt {
                    what: format!("artifact {id}"),
                    detail: format!("its file {} is missing", path.display()),
                })
            }
            Err(e) => {
                return Err(StoreError::io(
                    format!("reading artifact file {}", path.display()),
                    e,
                ))
            }
        };
        let actual = sha256_digest(&bytes);
        if bytes.len() as u64 != meta.size || actual != meta.id {
            tracing::error!(artifact_id = %id, path = %path.display(), "artifact file is corrupt");
            return Err(StoreError::Corrupt {
                what: format!("artifact {id}"),
                detail: format!(
                    "file {} holds {} bytes hashing to {actual}, expected {} bytes",
                    path.display(),
                    bytes.len(),
                    meta.size
                ),
            });
        }
        Ok(bytes)
    }

    /// Artifacts, newest first, optionally only those with `tag` and/or of `kind`;
    /// at most `limit` (capped at 10 000).
    pub fn list(
        &self,
        tag: Option<&str>,
        kind: Option<ArtifactKind>,
        limit: usize,
    ) -> Result<Vec<ArtifactMeta>> {
        let limit = limit.min(10_000) as i64;
        let conn = self.store.conn();
        let mut stmt = conn
            .prepare(&format!(
                "{SELECT_META} WHERE (?1 IS NULL OR EXISTS (SELECT 1 FROM artifact_tags t \
                 WHERE t.artifact_id = a.id AND t.tag = ?1)) AND (?2 IS NULL OR a.kind = ?2) \
                 ORDER BY a.created_ms DESC, a.id LIMIT ?3"
            ))
            .db("listing artifacts")?;
        let rows = stmt
            .query_map(
                params![tag, kind.map(ArtifactKind::as_str), limit],
                meta_from_row,
            )
            .db("listing artifacts")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .db("listing artifacts")
    }

    /// Apply retention: first delete every artifact older than `max_age_ms`, then the oldest
    /// ones until the total content size is at most `max_bytes` (`None` disables a limit).
    /// Rows go first (in one transaction), then files, so a crash in between leaves only
    /// orphan files, which the next open removes.
    pub fn gc(
        &self,
        now_ms: u64,
        max_bytes: Option<u64>,
        max_age_ms: Option<u64>,
    ) -> Result<GcReport> {
        let _gate = self.store.gate_exclusive();
        let mut report = GcReport::default();
        {
            let mut conn = self.store.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .db("starting artifact GC")?;
            let all: Vec<(String, u64, u64)> = {
                let mut stmt = tx
                    .prepare("SELECT id, size, created_ms FROM artifacts ORDER BY created_ms, id")
                    .db("listing artifacts for GC")?;
                let rows = stmt
                    .query_map([], |r| {
                        Ok((r.get(0)?, to_u64(r.get(1)?), to_u64(r.get(2)?)))
                    })
                    .db("listing artifacts for GC")?;
                rows.collect::<rusqlite::Result<_>>()
                    .db("listing artifacts for GC")?
            };
            let mut total: u64 = all.iter().map(|a| a.1).sum();
            let cutoff = max_age_ms.map(|age| now_ms.saturating_sub(age));
            for (id, size, created) in &all {
                let too_old = cutoff.is_some_and(|c| *created < c);
                let too_big = max_bytes.is_some_and(|m| total > m);
                if !(too_old || too_big) {
                    continue;
                }
                tx.execute("DELETE FROM artifacts WHERE id = ?1", [id])
                    .db("deleting an artifact")?;
                total -= size;
                report.freed_bytes += size;
                report.deleted.push(id.clone());
            }
            tx.commit().db("committing artifact GC")?;
            report.remaining_bytes = total;
            report.remaining_count = (all.len() - report.deleted.len()) as u64;
        }
        let root = self.root();
        let mut dirs = BTreeSet::new();
        for id in &report.deleted {
            let hex_part = parse_artifact_id(id)?;
            let path = content_path(&root, hex_part);
            match fs::remove_file(&path) {
                Ok(()) => {
                    if let Some(d) = path.parent() {
                        dirs.insert(d.to_path_buf());
                    }
                }
                // Its content was in the row.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::io(
                        format!("deleting artifact file {}", path.display()),
                        e,
                    ))
                }
            }
        }
        for d in dirs {
            fsync_dir(&d)?;
        }
        if !report.deleted.is_empty() {
            tracing::info!(
                deleted = report.deleted.len(),
                freed_bytes = report.freed_bytes,
                remaining_bytes = report.remaining_bytes,
                "artifact GC"
            );
        }
        Ok(report)
    }
}

/// What [`sweep`] removed.
#[derive(Debug, Default)]
pub(crate) struct SweepReport {
    pub temp_files: usize,
    pub orphans: usize,
}

/// Delete temp files and content files that have no metadata row. Runs from `Store::open`,
/// before anyone can put, so no write of this process can be in flight.
pub(crate) fn sweep(root: &Path, has_row: impl Fn(&str) -> Result<bool>) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let tree = root.join("sha256");
    let read_dir = |d: &Path| {
        fs::read_dir(d).map_err(|e| StoreError::io(format!("listing {}", d.display()), e))
    };
    for shard in read_dir(&tree)? {
        let shard = shard.map_err(|e| StoreError::io(format!("listing {}", tree.display()), e))?;
        let shard_path = shard.path();
        if !shard_path.is_dir() {
            continue;
        }
        let shard_name = shard.file_name().to_string_lossy().into_owned();
        let mut removed = false;
        for entry in read_dir(&shard_path)? {
            let entry = entry
                .map_err(|e| StoreError::io(format!("listing {}", shard_path.display()), e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let remove = if name.starts_with(TMP_PREFIX) {
                report.temp_files += 1;
                true
            } else {
                let id = format!("sha256:{shard_name}{name}");
                if parse_artifact_id(&id).is_err() {
                    tracing::warn!(path = %path.display(), "unexpected file in the artifact tree; left alone");
                    false
                } else if !has_row(&id)? {
                    report.orphans += 1;
                    true
                } else {
                    false
                }
            };
            if remove {
                fs::remove_file(&path)
                    .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
                removed = true;
            }
        }
        if removed {
            fsync_dir(&shard_path)?;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::canonical_json;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let a: serde_json::Value = serde_json::from_str(
            "{ \"b\": [1, {\"z\": null, \"é\": \"\\u00e9\\n\"}], \"a\": 1.5 }",
        )
        .unwrap();
        let b = json!({"a": 1.5, "b": [1, {"é": "é\n", "z": null}]});
        let text = r#"{"a":1.5,"b":[1,{"z":null,"é":"é\n"}]}"#;
        assert_eq!(String::from_utf8(canonical_json(&a)).unwrap(), text);
        assert_eq!(canonical_json(&a), canonical_json(&b));
        assert_eq!(canonical_json(&json!("x")), b"\"x\"");
        assert_ne!(canonical_json(&json!(1)), canonical_json(&json!(1.0)));
    }
}
