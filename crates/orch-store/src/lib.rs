//! `orch-store`: all persistent state of the llama-orch daemon.
//!
//! A [`Store`] owns one data directory:
//!
//! ```text
//! <data_dir>/
//!   state.db          SQLite (WAL): catalog, sessions + budgets, artifact metadata, learned rates, stored responses
//!   state.db-wal      WAL file (part of the database while the daemon runs)
//!   artifacts/sha256/ab/cdef…   artifact bytes, named by their SHA-256
//!   audit.jsonl       outbound-policy decisions, one JSON object per line
//! ```
//!
//! The API is synchronous; the store is `Send + Sync` (one SQLite connection behind a mutex),
//! so the daemon shares it in an `Arc` and calls it from `tokio::task::spawn_blocking`. Times
//! are passed in as milliseconds since the Unix epoch, which keeps every rule testable.
//!
//! One process should own a data directory at a time: [`Store::open`] deletes leftover
//! temp files and orphaned artifact files, which assumes nobody else is writing there.
//!
//! # Crash safety
//! Every database change is one transaction, committed with `synchronous = FULL`. Artifact
//! bytes are written to a temp file, fsynced, renamed into place and the directory fsynced
//! *before* the metadata row is inserted; see [`artifacts`] for the full argument.
//!
//! # Backup and restore
//! [`Store::backup_to`] writes a consistent copy of a running store into an empty directory
//! (SQLite online backup of `state.db`, then the artifacts it lists, then `audit.jsonl`). To
//! restore, stop the daemon and use the backup directory as the data directory (or copy its
//! contents over the old one); [`Store::open`] accepts it as is.

#![warn(missing_docs)]

pub mod artifacts;
pub mod catalog;
mod error;
pub mod eta_rates;
pub mod policy;
pub mod redact;
pub mod responses;
mod schema;
pub mod sessions;
mod util;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

pub use artifacts::{
    canonical_json, ArtifactInput, ArtifactKind, ArtifactMeta, Artifacts, GcReport,
};
pub use catalog::{Catalog, CatalogModel, ModelState, NewModel, VerifyOutcome, VerifyReport};
pub use error::{Result, StoreError};
pub use eta_rates::{EtaRates, RateRecord};
pub use policy::{AuditLog, AuditRecord, Decision, Policy};
pub use redact::{redact_text, redact_url};
pub use responses::{Responses, StoredResponse};
pub use sessions::{Budget, BudgetError, BudgetRemaining, Session, SessionError, Sessions, Spend};
pub use util::{normalize_digest, sha256_digest, validate_id};

use error::DbContext;

/// File name of the SQLite database inside the data directory.
pub const DB_FILE: &str = "state.db";
/// Directory of artifact bytes inside the data directory.
pub const ARTIFACTS_DIR: &str = "artifacts";
/// File name of the outbound audit log inside the data directory.
pub const AUDIT_FILE: &str = "audit.jsonl";

/// Tunables for [`Store::open`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreOptions {
    /// Largest artifact content accepted by [`Artifacts::put`], in bytes (default 64 MiB).
    pub max_artifact_bytes: u64,
    /// Contents up to this size are kept in the database row rather than a file of their own
    /// (default [`INLINE_MAX_BYTES`]; 0: every content in a file).
    #[serde(default = "default_inline_max")]
    pub inline_max_bytes: u64,
}

/// Default [`StoreOptions::inline_max_bytes`]: 256 KiB holds a transcript of a few thousand
/// tokens. A file per artifact costs an inode, two fsyncs and a rename on every finished task;
/// a row in the WAL costs one append.
pub const INLINE_MAX_BYTES: u64 = 256 * 1024;

fn default_inline_max() -> u64 {
    INLINE_MAX_BYTES
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_artifact_bytes: 64 * 1024 * 1024,
            inline_max_bytes: INLINE_MAX_BYTES,
        }
    }
}

/// What [`Store::open`] cleaned up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenReport {
    /// Schema version after migrations.
    pub schema_version: i64,
    /// Temp files (torn or abandoned writes) deleted from the artifact tree.
    pub swept_temp_files: usize,
    /// Artifact files without a metadata row (crash between rename and insert, or during
    /// GC) deleted.
    pub swept_orphans: usize,
}

/// What [`Store::backup_to`] wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupReport {
    /// The backup directory.
    pub dest: PathBuf,
    /// Artifact files copied (each verified against its id while copying).
    pub artifacts_copied: u64,
    /// Bytes of artifact content copied.
    pub artifact_bytes: u64,
    /// Artifacts whose source file was missing or corrupt and was not copied (their rows are
    /// in the backup, so reading them there fails the same way as in the original).
    pub corrupt: Vec<String>,
}

/// The daemon's persistent state. See the crate docs for the directory layout.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    conn: Mutex<Connection>,
    /// Puts hold it shared; GC holds it exclusively, so GC never deletes a file that a
    /// concurrent put of the same content has just written but not yet recorded.
    artifact_gate: RwLock<()>,
    opts: StoreOptions,
    audit: AuditLog,
    open_report: OpenReport,
}

impl Store {
    /// Open (creating if needed) the store in `data_dir`: create the directory tree, open
    /// `state.db` in WAL mode and migrate it, then sweep temp files and orphaned artifacts.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Store> {
        util::create_dir_durable(data_dir)?;
        let artifacts = data_dir.join(ARTIFACTS_DIR);
        util::create_dir_durable(&artifacts.join("sha256"))?;
        let conn = schema::open_connection(&data_dir.join(DB_FILE))?;
        let audit = AuditLog::open(&data_dir.join(AUDIT_FILE))?;
        let sweep = artifacts::sweep(&artifacts, |id| {
            conn.query_row("SELECT 1 FROM artifacts WHERE id = ?1", [id], |_| Ok(()))
                .optional()
                .map(|o| o.is_some())
                .db("checking for an artifact row")
        })?;
        if sweep.temp_files + sweep.orphans > 0 {
            tracing::warn!(
                temp_files = sweep.temp_files,
                orphans = sweep.orphans,
                "removed leftovers of interrupted artifact writes"
            );
        }
        let open_report = OpenReport {
            schema_version: schema::current_version(),
            swept_temp_files: sweep.temp_files,
            swept_orphans: sweep.orphans,
        };
        Ok(Store {
            dir: data_dir.to_path_buf(),
            conn: Mutex::new(conn),
            artifact_gate: RwLock::new(()),
            opts,
            audit,
            open_report,
        })
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.opts
    }

    /// What opening the store cleaned up.
    pub fn open_report(&self) -> OpenReport {
        self.open_report
    }

    /// Model catalog operations.
    pub fn catalog(&self) -> Catalog<'_> {
        Catalog { store: self }
    }

    /// Session and budget operations.
    pub fn sessions(&self) -> Sessions<'_> {
        Sessions { store: self }
    }

    /// The start-time model's learned rates.
    pub fn eta_rates(&self) -> EtaRates<'_> {
        EtaRates { store: self }
    }

    /// Artifact operations.
    pub fn artifacts(&self) -> Artifacts<'_> {
        Artifacts { store: self }
    }

    /// Stored OpenAI Responses.
    pub fn responses(&self) -> Responses<'_> {
        Responses { store: self }
    }

    /// The outbound audit log (`audit.jsonl`), for [`Policy::enforce`].
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    pub(crate) fn artifacts_dir(&self) -> PathBuf {
        self.dir.join(ARTIFACTS_DIR)
    }

    /// The connection; a poisoned lock is recovered (an interrupted transaction was rolled
    /// back when its guard dropped, so the connection is consistent).
    pub(crate) fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn gate_shared(&self) -> RwLockReadGuard<'_, ()> {
        self.artifact_gate
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn gate_exclusive(&self) -> RwLockWriteGuard<'_, ()> {
        self.artifact_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Write a consistent copy of the store into `dest` (created if missing; must not already
    /// hold a `state.db`). The database is copied with SQLite's online backup API while the
    /// daemon keeps running; then every artifact the copied database lists is copied (and
    /// verified) from the live tree, with GC held off meanwhile; then `audit.jsonl`.
    pub fn backup_to(&self, dest: &Path) -> Result<BackupReport> {
        let dest_db = dest.join(DB_FILE);
        if dest_db.exists() {
            return Err(StoreError::Conflict(format!(
                "{} already exists; back up into an empty directory",
                dest_db.display()
            )));
        }
        util::create_dir_durable(dest)?;
        let _gate = self.gate_shared();
        self.conn()
            .backup(rusqlite::MAIN_DB, &dest_db, None)
            .db(&format!("backing up the database to {}", dest_db.display()))?;
        // Contents kept in rows came along with the database; files are copied.
        let (ids, in_rows): (Vec<String>, (u64, u64)) = {
            let backup = Connection::open(&dest_db)
                .db(&format!("opening the backup {}", dest_db.display()))?;
            let mut stmt = backup
                .prepare("SELECT id FROM artifacts WHERE content IS NULL ORDER BY id")
                .db("listing artifacts in the backup")?;
            let rows = stmt
                .query_map([], |r| r.get(0))
                .db("listing artifacts in the backup")?;
            let ids = rows
                .collect::<rusqlite::Result<_>>()
                .db("listing artifacts in the backup")?;
            let in_rows = backup
                .query_row(
                    "SELECT count(*), coalesce(sum(size), 0) FROM artifacts WHERE content IS NOT NULL",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .db("counting artifacts in the backup")?;
            (
                ids,
                (
                    u64::try_from(in_rows.0).unwrap_or(0),
                    u64::try_from(in_rows.1).unwrap_or(0),
                ),
            )
        };
        let mut report = BackupReport {
            dest: dest.to_path_buf(),
            artifacts_copied: in_rows.0,
            artifact_bytes: in_rows.1,
            ..BackupReport::default()
        };
        let src_root = self.artifacts_dir();
        let dst_root = dest.join(ARTIFACTS_DIR);
        util::create_dir_durable(&dst_root.join("sha256"))?;
        for id in ids {
            let hex_part = artifacts::parse_artifact_id(&id)?;
            let src = artifacts::content_path(&src_root, hex_part);
            let dst = artifacts::content_path(&dst_root, hex_part);
            let bytes = match fs::read(&src) {
                Ok(b) if sha256_digest(&b) == id => b,
                Ok(_) => {
                    report.corrupt.push(id);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    report.corrupt.push(id);
                    continue;
                }
                Err(e) => return Err(StoreError::io(format!("reading {}", src.display()), e)),
            };
            if let Some(d) = dst.parent() {
                util::create_dir_durable(d)?;
            }
            let tmp_name = format!("{}{}", artifacts::TMP_PREFIX, uuid::Uuid::new_v4().simple());
            util::write_atomic(&dst, &tmp_name, &bytes)?;
            report.artifacts_copied += 1;
            report.artifact_bytes += bytes.len() as u64;
        }
        drop(_gate);
        self.audit.copy_to(&dest.join(AUDIT_FILE))?;
        util::fsync_dir(dest)?;
        if !report.corrupt.is_empty() {
            tracing::warn!(corrupt = ?report.corrupt, "backup skipped corrupt artifacts");
        }
        Ok(report)
    }
}
