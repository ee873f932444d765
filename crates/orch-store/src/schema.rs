//! SQLite connection setup and schema migrations.
//!
//! The schema version lives in `PRAGMA user_version`. [`MIGRATIONS`] is an append-only list:
//! step `i` (0-based) takes the database from version `i` to `i + 1`. Each pending step runs in
//! its own `BEGIN IMMEDIATE` transaction together with the `user_version` bump, so a crash
//! mid-migration leaves the database at the previous version, never half-migrated. Never edit a
//! released step; add a new one.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use crate::error::{DbContext, Result, StoreError};

/// Schema steps, applied in order. Index + 1 is the resulting `user_version`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // v1: catalog, sessions with budgets, artifact metadata and tags.
    r#"
    CREATE TABLE models (
        id              TEXT PRIMARY KEY NOT NULL,
        reference       TEXT NOT NULL,
        digest          TEXT,
        signature       TEXT,
        sbom            TEXT,
        state           TEXT NOT NULL CHECK (state IN ('Active', 'Retired')),
        created_ms      INTEGER NOT NULL,
        updated_ms      INTEGER NOT NULL,
        verified_ms     INTEGER,
        verified_ok     INTEGER,
        verified_digest TEXT
    ) STRICT;

    CREATE TABLE sessions (
        id             TEXT PRIMARY KEY NOT NULL,
        created_ms     INTEGER NOT NULL,
        last_used_ms   INTEGER NOT NULL,
        ttl_ms         INTEGER NOT NULL CHECK (ttl_ms > 0),
        turns          INTEGER NOT NULL CHECK (turns >= 0),
        max_turns      INTEGER NOT NULL CHECK (max_turns > 0),
        kv_bytes       INTEGER NOT NULL DEFAULT 0,
        replica_id     TEXT,
        slot           INTEGER,
        budget_tokens  INTEGER,
        budget_time_ms INTEGER,
        budget_cost    REAL,
        spent_tokens   INTEGER NOT NULL DEFAULT 0,
        spent_time_ms  INTEGER NOT NULL DEFAULT 0,
        spent_cost     REAL NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX sessions_expiry ON sessions (last_used_ms + ttl_ms);

    CREATE TABLE artifacts (
        id         TEXT PRIMARY KEY NOT NULL,
        kind       TEXT NOT NULL,
        size       INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        parent     TEXT,
        metadata   TEXT NOT NULL
    ) STRICT;
    CREATE INDEX artifacts_created ON artifacts (created_ms, id);
    CREATE INDEX artifacts_kind ON artifacts (kind, created_ms);

    CREATE TABLE artifact_tags (
        artifact_id TEXT NOT NULL REFERENCES artifacts (id) ON DELETE CASCADE,
        tag         TEXT NOT NULL,
        PRIMARY KEY (artifact_id, tag)
    ) STRICT;
    CREATE INDEX artifact_tags_tag ON artifact_tags (tag);
    "#,
    // v2: where a pulled model came from and how large it is (`llorch pull`).
    r#"
    ALTER TABLE models ADD COLUMN size INTEGER;
    ALTER TABLE models ADD COLUMN source TEXT;
    "#,
    // v3: artifacts stored as canonical JSON values (`POST /v1/artifacts` with JSON `content`).
    r#"
    ALTER TABLE artifacts ADD COLUMN json INTEGER NOT NULL DEFAULT 0 CHECK (json IN (0, 1));
    "#,
    // v4: small contents kept in the row (`StoreOptions::inline_max_bytes`); NULL: in a file.
    r#"
    ALTER TABLE artifacts ADD COLUMN content BLOB;
    "#,
    // v5: the start-time model's learned rates per model × device kind × slots × context
    // (`eta_rates.rs`).
    r#"
    CREATE TABLE eta_rates (
        model_digest TEXT NOT NULL,
        device_kind  TEXT NOT NULL,
        slots        INTEGER NOT NULL CHECK (slots >= 0),
        ctx          INTEGER NOT NULL CHECK (ctx >= 0),
        rates        TEXT NOT NULL,
        updated_ms   INTEGER NOT NULL,
        PRIMARY KEY (model_digest, device_kind, slots, ctx)
    ) STRICT;
    "#,
    // v6: stored OpenAI Responses (`POST /v1/responses` with `store`), for
    // `previous_response_id` and `GET /v1/responses/{id}` across restarts.
    r#"
    CREATE TABLE responses (
        id         TEXT PRIMARY KEY NOT NULL,
        created_ms INTEGER NOT NULL,
        response   TEXT NOT NULL,
        history    TEXT NOT NULL
    ) STRICT;
    CREATE INDEX responses_created ON responses (created_ms, id);
    "#,
];

/// The schema version this build writes.
pub(crate) fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Open `path`, set the pragmas and bring the schema up to date.
///
/// `journal_mode = WAL`: readers never block the writer and a crash leaves the database
/// consistent. `synchronous = FULL`: every commit fsyncs the WAL, so a budget charge or an
/// artifact row that the daemon has acknowledged survives a power cut, not only a process crash
/// (NORMAL would survive `kill -9` but may lose the last commits on power loss). The daemon
/// commits a handful of rows per task, so the extra fsync is not measurable next to inference.
pub(crate) fn open_connection(path: &Path) -> Result<Connection> {
    let mut conn =
        Connection::open(path).db(&format!("opening the database {}", path.display()))?;
    conn.busy_timeout(Duration::from_secs(5))
        .db("setting busy_timeout")?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .db("switching the database to WAL mode")?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Invalid(format!(
            "the database {} cannot use WAL mode (journal_mode is '{mode}'); \
             put the data directory on a local file system",
            path.display()
        )));
    }
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")
        .db("setting pragmas")?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// Apply every pending step of [`MIGRATIONS`]. The version is read inside each step's write
/// transaction, so two processes opening the same directory cannot apply a step twice.
pub(crate) fn migrate(conn: &mut Connection) -> Result<()> {
    let latest = current_version();
    loop {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db("starting a migration")?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .db("reading the schema version")?;
        if !(0..=latest).contains(&version) {
            return Err(StoreError::Invalid(format!(
                "the database has schema version {version} but this build only knows up to \
                 {latest}; run a newer llama-orch or restore a backup made by this version"
            )));
        }
        let Some(step) = usize::try_from(version)
            .ok()
            .and_then(|v| MIGRATIONS.get(v))
        else {
            return Ok(()); // up to date
        };
        let target = version + 1;
        tx.execute_batch(step)
            .db(&format!("migrating the schema to version {target}"))?;
        tx.pragma_update(None, "user_version", target)
            .db("recording the schema version")?;
        tx.commit()
            .db(&format!("committing schema version {target}"))?;
        tracing::info!(version = target, "applied store schema migration");
    }
}
