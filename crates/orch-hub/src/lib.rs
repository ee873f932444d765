//! Model downloads: `hf:` references and the huggingface_hub layout ([`hub`]), and the HTTP
//! side of a pull and one file's verified, resumable download ([`download`]).
//!
//! The crate knows no daemon: every URL it requests first passes the [`OutboundPolicy`] the
//! caller gives it (the daemon's implements its `policy.outbound` with the audit log), and every
//! refusal or failure is a [`HubError`] whose [`ErrorKind`] the caller maps to its own error
//! codes. It is the daemon's only HTTP client for downloads (`reqwest`).

pub mod download;
pub mod hub;

/// What kind of refusal or failure a [`HubError`] is; the caller maps it to its error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A bad reference or request (the caller's `INVALID_PARAMS`).
    Invalid,
    /// No such repository or file, or not readable by us.
    NotFound,
    /// Conflicts with other state (only from an [`OutboundPolicy`]).
    Conflict,
    /// The outbound policy refused the URL.
    PolicyDenied,
    /// The hub or file server failed or answered oddly (the caller's `ENGINE_ERROR`).
    Upstream,
    /// Not enough disk space.
    NoSpace,
    /// The file does not hash to the digest it must have.
    DigestMismatch,
    /// Canceled by request.
    Canceled,
    /// A local failure (disk, a task): nothing the request can change.
    Internal,
}

/// A refusal or failure of a pull, with an actionable message (no secrets in it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HubError {
    /// What kind.
    pub kind: ErrorKind,
    /// What went wrong and what to do about it, for people.
    pub message: String,
    /// When retrying may help: after this many milliseconds.
    pub retry_after_ms: Option<u64>,
}

impl HubError {
    /// An error of `kind`, not worth retrying as is.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Marks it worth retrying after `ms` milliseconds.
    pub fn retry_after(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
}

/// The outbound policy every request of a pull passes before it is sent (each redirect hop
/// too). The daemon implements it with its `policy.outbound` and audit log.
#[async_trait::async_trait]
pub trait OutboundPolicy: Send + Sync {
    /// `Ok` when the daemon may download from `url` (the decision is audited); else the
    /// refusal ([`ErrorKind::PolicyDenied`]) or why the check itself failed.
    async fn allow_download(&self, url: &str) -> Result<(), HubError>;
}
