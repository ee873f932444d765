//! The error type shared by every part of the store.

use std::io;

/// Result alias used throughout the crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in the store.
///
/// The daemon maps each variant to its API error (not found, conflict, invalid, too large,
/// internal); messages are written for the person reading the API response and never contain
/// secrets.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist (404).
    #[error("{what} not found")]
    NotFound {
        /// What was looked up, e.g. `catalog model 'qwen'`.
        what: String,
    },
    /// The request clashes with existing state, e.g. a duplicate id (409).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input is malformed or not allowed (400).
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The input exceeds a configured size limit (413).
    #[error("{what} is too large: {size} bytes, limit is {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size in bytes.
        size: u64,
        /// The configured limit in bytes.
        limit: u64,
    },
    /// Stored data does not match its recorded hash or size (500): the bytes on disk were
    /// truncated, altered or removed behind the store's back.
    #[error("corrupt data: {what}: {detail}")]
    Corrupt {
        /// What is corrupt, e.g. `artifact sha256:…`.
        what: String,
        /// How it differs from what was recorded.
        detail: String,
    },
    /// A file-system operation failed (500, or 404 where the message says a file is missing).
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A database operation failed (500).
    #[error("database error while {context}: {source}")]
    Db {
        /// What the store was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
}

impl StoreError {
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        StoreError::NotFound { what: what.into() }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io {
            context: context.into(),
            source,
        }
    }
}

/// Attach context to rusqlite results.
pub(crate) trait DbContext<T> {
    /// Turn a database error into [`StoreError::Db`] saying what was being done.
    fn db(self, context: &str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, rusqlite::Error> {
    fn db(self, context: &str) -> Result<T> {
        self.map_err(|source| StoreError::Db {
            context: context.to_string(),
            source,
        })
    }
}

/// Convert an unsigned count into SQLite's signed integer, refusing values it cannot hold.
pub(crate) fn to_i64(value: u64, what: &str) -> Result<i64> {
    i64::try_from(value).map_err(|_| {
        StoreError::Invalid(format!(
            "{what} = {value} is larger than the maximum {}",
            i64::MAX
        ))
    })
}

/// Convert a stored signed integer back into an unsigned count (negative values read as 0;
/// the store never writes them).
pub(crate) fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
