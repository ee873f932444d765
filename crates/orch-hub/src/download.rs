//! The HTTP side of pulls and one file's download.
//!
//! [`Fetcher`] makes every request of a pull: redirects are followed by hand so that each hop
//! passes the outbound policy (and lands in the audit log) before it is requested, and the hub
//! token goes only to the hub's own origin, never to the CDN a file redirects to.
//!
//! [`Download`] writes one file to `<dest>.part`, hashing while it writes. A broken transfer is
//! resumed with `Range` from the partial file (also a partial file left by an earlier daemon:
//! it is hashed first); a server that ignores `Range` (200 instead of 206) gets a clean start
//! over. Complete, the file is checked against its size and sha256, fsynced and renamed into
//! place. A sidecar `<dest>.part.meta` records what the partial file was started for, so a
//! partial file of another revision is never resumed.

use std::collections::HashSet;
use std::io::{Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_store::redact_url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::{ErrorKind, HubError, OutboundPolicy};

/// Redirect hops followed at most.
const MAX_REDIRECTS: usize = 10;
/// Attempts in a row that make no progress before a download gives up.
const MAX_FAILURES: u32 = 5;
/// First retry delay; doubled per failure, at most [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Write buffer: fewer, larger writes than the network's chunks.
const WRITE_BUF: usize = 1 << 20;
/// A transfer that delivers nothing for this long is treated as broken (and resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the rate is resampled.
const RATE_EVERY: Duration = Duration::from_millis(500);
/// Env var that replaces the free-space figure of the data directory's file system (a test
/// seam: `LLORCH_TEST_FREE_DISK_BYTES=1000` makes every pull of a larger file "disk full").
pub const FREE_DISK_ENV: &str = "LLORCH_TEST_FREE_DISK_BYTES";

/// The hub token: never printed, not even by `Debug`.
struct HubToken(String);

impl std::fmt::Debug for HubToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubToken([REDACTED])")
    }
}

/// Why a request did not produce a response to read.
#[derive(Debug)]
pub enum FetchError {
    /// Do not retry: refused by the policy, a bad redirect.
    Fatal(HubError),
    /// A transport failure worth retrying (the message names no URL).
    Retry(String),
}

/// Makes the requests of every pull (see the module docs).
pub struct Fetcher {
    http: reqwest::Client,
    policy: Arc<dyn OutboundPolicy>,
    endpoint: Url,
    token: Option<HubToken>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("endpoint", &self.endpoint_shown())
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// A reqwest error as text without the URL (signed CDN URLs carry credentials).
pub fn describe_reqwest(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    orch_store::redact_text(&s, &[])
}

impl Fetcher {
    /// A fetcher for hub `endpoint`, sending `token` (as `Authorization: Bearer`) to it.
    pub fn new(
        policy: Arc<dyn OutboundPolicy>,
        endpoint: Url,
        token: Option<String>,
    ) -> Result<Self, HubError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("llama-orch/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                HubError::new(
                    ErrorKind::Internal,
                    format!("cannot build the HTTP client for pulls: {e}"),
                )
            })?;
        Ok(Self {
            http,
            policy,
            endpoint,
            token: token.filter(|t| !t.trim().is_empty()).map(HubToken),
        })
    }

    /// The outbound policy every request passes.
    pub fn policy(&self) -> &dyn OutboundPolicy {
        &*self.policy
    }

    /// The hub base URL (`HF_ENDPOINT`).
    pub fn endpoint(&self) -> &Url {
        &self.endpoint
    }

    /// The hub base URL for messages (secrets redacted).
    pub fn endpoint_shown(&self) -> String {
        redact_url(self.endpoint.as_str())
    }

    /// GET `url`, following redirects. Every URL not in `seen` passes the outbound policy as a
    /// `model_download` (and is audited) before it is requested, then joins `seen`; `Range:
    /// bytes=FROM-` is sent on every hop when `range_from` is given.
    pub async fn get(
        &self,
        url: &Url,
        range_from: Option<u64>,
        seen: &mut HashSet<String>,
    ) -> Result<reqwest::Response, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            if !seen.contains(url.as_str()) {
                self.policy
                    .allow_download(url.as_str())
                    .await
                    .map_err(FetchError::Fatal)?;
                seen.insert(url.as_str().to_owned());
            }
            let mut rb = self.http.get(url.clone());
            if let Some(from) = range_from {
                rb = rb.header(reqwest::header::RANGE, format!("bytes={from}-"));
            }
            if let Some(t) = &self.token {
                if url.origin() == self.endpoint.origin() {
                    rb = rb.bearer_auth(&t.0);
                }
            }
            let resp = rb
                .send()
                .await
                .map_err(|e| FetchError::Retry(describe_reqwest(e)))?;
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let next = resp
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|loc| url.join(loc).ok())
                .ok_or_else(|| {
                    FetchError::Fatal(HubError::new(
                        ErrorKind::Upstream,
                        format!(
                            "{} answered a redirect without a usable Location",
                            redact_url(url.as_str())
                        ),
                    ))
                })?;
            url = next;
        }
        Err(FetchError::Fatal(HubError::new(
            ErrorKind::Upstream,
            format!(
                "more than {MAX_REDIRECTS} redirects; stopped at {}",
                redact_url(url.as_str())
            ),
        )))
    }
}

/// The free space on the data directory's file system, or the injected figure.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreeSpace {
    /// `LLORCH_TEST_FREE_DISK_BYTES`, when set.
    pub fixed: Option<u64>,
}

#[cfg(unix)]
fn statvfs_free(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `c` is a valid NUL-terminated path and `s` a properly sized out-parameter.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    let free = (s.f_bavail as u64).saturating_mul(s.f_frsize as u64);
    Ok(free)
}

#[cfg(not(unix))]
fn statvfs_free(_path: &Path) -> std::io::Result<u64> {
    Ok(u64::MAX)
}

impl FreeSpace {
    /// From [`FREE_DISK_ENV`].
    pub fn from_env() -> Result<Self, HubError> {
        match std::env::var(FREE_DISK_ENV) {
            Ok(v) => Ok(Self {
                fixed: Some(v.trim().parse().map_err(|e| {
                    HubError::invalid(format!("{FREE_DISK_ENV}={v:?} is not a byte count: {e}"))
                })?),
            }),
            Err(_) => Ok(Self::default()),
        }
    }

    /// Bytes free for `path` (measured at its nearest existing ancestor).
    pub fn available(&self, path: &Path) -> std::io::Result<u64> {
        if let Some(n) = self.fixed {
            return Ok(n);
        }
        let mut p = path;
        loop {
            if p.exists() {
                return statvfs_free(p);
            }
            match p.parent() {
                Some(up) => p = up,
                None => return statvfs_free(Path::new("/")),
            }
        }
    }

    /// Refuses (`PAYLOAD_TOO_LARGE`) unless `remaining` bytes plus 5% of `total` are free.
    pub fn ensure(
        &self,
        near: &Path,
        remaining: u64,
        total: u64,
        what: &str,
    ) -> Result<(), HubError> {
        if remaining == 0 {
            return Ok(());
        }
        let need = remaining.saturating_add(total / 20);
        let free = match self.available(near) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(dir = %near.display(), error = %e, "cannot measure free disk space; pulling anyway");
                return Ok(());
            }
        };
        if free < need {
            return Err(HubError::new(
                ErrorKind::NoSpace,
                format!(
                    "not enough disk space for {what}: it needs {need} bytes ({remaining} still to \
                     download plus 5% of {total}) but the file system of {} has {free} bytes free; \
                     free some space or move data_dir to a larger disk",
                    near.display()
                ),
            ));
        }
        Ok(())
    }
}

/// What the downloads share: the fetcher and the free-space probe.
#[derive(Debug)]
pub struct DownloadEnv {
    /// Makes the requests.
    pub fetcher: Fetcher,
    /// Free disk space.
    pub free: FreeSpace,
}

/// One file to download.
#[derive(Debug, Clone)]
pub struct FileSpec {
    /// Its path in the repo (or the URL's path), for people.
    pub path: String,
    /// The first URL requested (`…/resolve/main/PATH`, or the URL given).
    pub url: Url,
    /// Where the verified file goes.
    pub dest: PathBuf,
    /// Its size, when the hub listed it.
    pub size: Option<u64>,
    /// The sha256 it must have, `sha256:<hex>`.
    pub digest: Option<String>,
    /// Where `digest` came from, for messages (`the hub's lfs.oid`, `the digest given`).
    pub digest_source: &'static str,
}

/// A verified file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDone {
    /// Its sha256, `sha256:<hex>`.
    pub digest: String,
    /// Its size.
    pub size: u64,
}

/// What a `<dest>.part` was started for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PartMarker {
    url: String,
    size: Option<u64>,
    digest: Option<String>,
}

#[derive(Debug)]
struct Progress {
    state: FileState,
    bytes_done: u64,
    size: Option<u64>,
    resumed_from: u64,
    rate: u64,
    sample: (Instant, u64),
}

/// A file's progress as the API shows it.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    /// Its state.
    pub state: FileState,
    /// Bytes on disk and hashed.
    pub bytes_done: u64,
    /// Its size, once known.
    pub size: Option<u64>,
    /// Bytes taken over from a partial file.
    pub resumed_from: u64,
    /// Recent rate, bytes per second.
    pub rate: u64,
}

/// A download's end: `None` while it runs.
pub type Outcome = Option<Result<FileDone, HubError>>;

/// A file's state in a pull (the API's pull states, minus the job-level ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileState {
    /// Bytes are arriving (or about to).
    Downloading,
    /// Hashing what is on disk (a partial file to resume, a complete file to check).
    Verifying,
    /// Verified and in place.
    Completed,
    /// Ended with an error.
    Failed,
    /// Stopped by request.
    Canceled,
}

/// One file being downloaded, shared by every pull that wants it.
#[derive(Debug)]
pub struct Download {
    /// What and where.
    pub spec: FileSpec,
    progress: Mutex<Progress>,
    /// Pulls holding it; the last one to let go cancels it (changed under the service lock).
    subscribers: AtomicUsize,
    cancel: CancellationToken,
    delete_part: AtomicBool,
    outcome: watch::Sender<Outcome>,
    /// A retired download of the same file that must end (and clean up) before this starts.
    after: Option<watch::Receiver<Outcome>>,
    /// URLs the policy already allowed for this download (a URL reference checked at submit).
    pre_allowed: HashSet<String>,
}

fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

fn meta_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part.meta");
    PathBuf::from(s)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> HubError {
    tracing::error!(path = %path.display(), error = %e, "pull: {what} failed");
    HubError::new(
        ErrorKind::Internal,
        format!(
            "{what} {} failed: {e}; check the data directory's disk",
            path.display()
        ),
    )
}

fn canceled() -> HubError {
    HubError::new(ErrorKind::Canceled, "the pull was canceled by request")
}

/// One attempt's end.
enum Attempt {
    /// Every byte is on disk.
    Complete,
    /// Try again (from where the partial file ends) because of this.
    Retry(String),
}

/// The partial file being written and the hash of everything in it.
struct Cursor {
    file: tokio::fs::File,
    hasher: Sha256,
    offset: u64,
}

impl Cursor {
    async fn restart(&mut self, part: &Path) -> Result<(), HubError> {
        self.file
            .set_len(0)
            .await
            .map_err(|e| io_err("truncating", part, e))?;
        self.file
            .seek(SeekFrom::Start(0))
            .await
            .map_err(|e| io_err("seeking in", part, e))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        Ok(())
    }
}

/// `(start, end, total)` of `Content-Range: bytes START-END/TOTAL` (`TOTAL` may be `*`).
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?, total))
}

impl Download {
    /// A download of `spec`, held by one pull. `after`: a retired download of the same file to
    /// wait for; `pre_allowed`: URLs the policy allowed already.
    pub fn new(
        spec: FileSpec,
        after: Option<watch::Receiver<Outcome>>,
        pre_allowed: HashSet<String>,
    ) -> Arc<Self> {
        let (tx, _) = watch::channel(None);
        Arc::new(Self {
            progress: Mutex::new(Progress {
                state: FileState::Downloading,
                bytes_done: 0,
                size: spec.size,
                resumed_from: 0,
                rate: 0,
                sample: (Instant::now(), 0),
            }),
            spec,
            subscribers: AtomicUsize::new(1),
            cancel: CancellationToken::new(),
            delete_part: AtomicBool::new(false),
            outcome: tx,
            after,
            pre_allowed,
        })
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The progress now.
    pub fn snapshot(&self) -> Snapshot {
        let p = self.progress();
        let now = Instant::now();
        let since = now.duration_since(p.sample.0);
        // No sample for a while means no bytes arrived: let the rate decay towards zero.
        let rate = if p.state != FileState::Downloading {
            0
        } else if since > RATE_EVERY * 3 {
            let fresh = p.bytes_done.saturating_sub(p.sample.1) as f64 / since.as_secs_f64();
            p.rate.min(fresh as u64)
        } else {
            p.rate
        };
        Snapshot {
            state: p.state,
            bytes_done: p.bytes_done,
            size: p.size,
            resumed_from: p.resumed_from,
            rate,
        }
    }

    fn set_state(&self, s: FileState) {
        self.progress().state = s;
    }

    fn advance(&self, bytes_done: u64) {
        let mut p = self.progress();
        p.bytes_done = bytes_done;
        let now = Instant::now();
        let since = now.duration_since(p.sample.0);
        if since >= RATE_EVERY {
            p.rate = (bytes_done.saturating_sub(p.sample.1) as f64 / since.as_secs_f64()) as u64;
            p.sample = (now, bytes_done);
        }
    }

    fn restart_progress(&self, bytes_done: u64) {
        let mut p = self.progress();
        p.bytes_done = bytes_done;
        p.sample = (Instant::now(), bytes_done);
    }

    /// One more pull holds it (call under the lock that guards the pulls' shared downloads).
    pub fn hold(&self) {
        self.subscribers.fetch_add(1, Ordering::SeqCst);
    }

    /// One pull lets go of it; returns how many still hold it (under the same lock).
    pub fn let_go(&self) -> usize {
        self.subscribers
            .fetch_sub(1, Ordering::SeqCst)
            .saturating_sub(1)
    }

    /// Its outcome, once it ended.
    pub fn outcome_rx(&self) -> watch::Receiver<Outcome> {
        self.outcome.subscribe()
    }

    /// Whether it ended.
    pub fn finished(&self) -> bool {
        self.outcome.borrow().is_some()
    }

    /// Whether the last pull holding it let go (it is winding down).
    pub fn retired(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops it; `delete_part`: also remove the partial file (an explicit cancel), else keep
    /// it for a later pull to resume.
    pub fn retire(&self, delete_part: bool) {
        self.delete_part.store(delete_part, Ordering::SeqCst);
        self.cancel.cancel();
    }

    /// Runs the download to its end and publishes the outcome.
    pub async fn run(self: Arc<Self>, env: &DownloadEnv) {
        // Shutdown drops this future: the token then stops a hash still running on a blocking
        // thread (which the runtime would otherwise wait for on exit).
        let _stop_on_drop = self.cancel.clone().drop_guard();
        if let Some(mut prev) = self.after.clone() {
            let _ = prev.wait_for(Option::is_some).await;
        }
        let r = if self.cancel.is_cancelled() {
            Err(canceled())
        } else {
            self.fetch(env).await
        };
        let part = part_path(&self.spec.dest);
        match &r {
            Ok(_) => self.set_state(FileState::Completed),
            Err(e) => {
                let state = if e.kind == ErrorKind::Canceled {
                    FileState::Canceled
                } else {
                    FileState::Failed
                };
                self.set_state(state);
                let delete = e.kind == ErrorKind::DigestMismatch
                    || (e.kind == ErrorKind::Canceled && self.delete_part.load(Ordering::SeqCst));
                if delete {
                    for p in [part.clone(), meta_path(&self.spec.dest)] {
                        if let Err(err) = tokio::fs::remove_file(&p).await {
                            if err.kind() != std::io::ErrorKind::NotFound {
                                tracing::warn!(path = %p.display(), error = %err, "pull: cannot delete the partial file");
                            }
                        }
                    }
                }
            }
        }
        self.outcome.send_replace(Some(r));
    }

    /// Hashes `path` (all of it) off the async threads, showing progress; `None` when canceled.
    async fn hash_file(self: &Arc<Self>, path: &Path) -> Result<Option<(Sha256, u64)>, HubError> {
        let me = self.clone();
        let p = path.to_owned();
        tokio::task::spawn_blocking(move || -> Result<Option<(Sha256, u64)>, HubError> {
            let mut f = std::fs::File::open(&p).map_err(|e| io_err("opening", &p, e))?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; WRITE_BUF];
            let mut n_total = 0u64;
            loop {
                if me.cancel.is_cancelled() {
                    return Ok(None);
                }
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err("reading", &p, e)),
                };
                h.update(&buf[..n]);
                n_total += n as u64;
                me.restart_progress(n_total);
            }
            Ok(Some((h, n_total)))
        })
        .await
        .map_err(|e| HubError::new(ErrorKind::Internal, format!("hashing task failed: {e}")))?
    }

    async fn fetch(self: &Arc<Self>, env: &DownloadEnv) -> Result<FileDone, HubError> {
        let spec = &self.spec;
        let dest = &spec.dest;
        let part = part_path(dest);
        let meta = meta_path(dest);
        if let Some(dir) = dest.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| io_err("creating", dir, e))?;
        }
        // A complete file from an earlier pull: verify it instead of downloading it again.
        if let (Some(want), true) = (&spec.digest, dest.is_file()) {
            self.set_state(FileState::Verifying);
            let Some((h, size)) = self.hash_file(dest).await? else {
                return Err(canceled());
            };
            let got = format!("sha256:{}", hex::encode(h.finalize()));
            if got == *want {
                tracing::info!(dest = %dest.display(), digest = %got, "pull: the file is already here and verified");
                return Ok(FileDone { digest: got, size });
            }
            tracing::warn!(dest = %dest.display(), have = %got, want = %want, "pull: the file here differs from the expected digest; downloading it again");
            self.restart_progress(0);
        }
        let marker = PartMarker {
            url: redact_url(spec.url.as_str()),
            size: spec.size,
            digest: spec.digest.clone(),
        };
        let old_marker: Option<PartMarker> = tokio::fs::read(&meta)
            .await
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let part_len = tokio::fs::metadata(&part).await.map(|m| m.len()).ok();
        let mut resume: Option<(Sha256, u64)> = None;
        if let Some(len) = part_len.filter(|l| *l > 0) {
            let fits = spec.size.is_none_or(|s| len <= s);
            if old_marker.as_ref() == Some(&marker) && fits {
                self.set_state(FileState::Verifying);
                resume = self.hash_file(&part).await?;
                if resume.is_none() {
                    return Err(canceled());
                }
                tracing::info!(dest = %dest.display(), bytes = len, "pull: resuming from the partial file");
            } else {
                tracing::info!(dest = %dest.display(), bytes = len, "pull: discarding a partial file of another download");
            }
        }
        let marker_json = serde_json::to_vec(&marker).unwrap_or_default();
        tokio::fs::write(&meta, marker_json)
            .await
            .map_err(|e| io_err("writing", &meta, e))?;
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .await
            .map_err(|e| io_err("opening", &part, e))?;
        let mut cur = Cursor {
            file,
            hasher: Sha256::new(),
            offset: 0,
        };
        match resume {
            Some((h, len)) => {
                cur.hasher = h;
                cur.offset = len;
                // Whatever is past what was hashed is dropped (nothing, normally).
                cur.file
                    .set_len(len)
                    .await
                    .map_err(|e| io_err("truncating", &part, e))?;
                cur.file
                    .seek(SeekFrom::Start(len))
                    .await
                    .map_err(|e| io_err("seeking in", &part, e))?;
                let mut p = self.progress();
                p.resumed_from = len;
                p.bytes_done = len;
                p.sample = (Instant::now(), len);
            }
            None => cur.restart(&part).await?,
        }
        let mut seen = self.pre_allowed.clone();
        let mut failures = 0u32;
        let mut best = cur.offset;
        loop {
            if self.cancel.is_cancelled() {
                return Err(canceled());
            }
            let why = match self.attempt(env, &mut cur, &part, &mut seen).await? {
                Attempt::Complete => break,
                Attempt::Retry(why) => why,
            };
            if cur.offset > best {
                best = cur.offset;
                failures = 0;
            }
            failures += 1;
            if failures > MAX_FAILURES {
                return Err(HubError::new(
                    ErrorKind::Upstream,
                    format!(
                        "downloading {} failed {MAX_FAILURES} times in a row without progress \
                         (last: {why}); the {} bytes received are kept in {}: pull again to resume",
                        spec.path,
                        cur.offset,
                        part.display()
                    ),
                )
                .retry_after(30_000));
            }
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32 << (failures - 1).min(6))
                .min(MAX_BACKOFF);
            tracing::warn!(file = %spec.path, bytes = cur.offset, attempt = failures, backoff_ms = backoff.as_millis() as u64, reason = %why, "pull: transfer interrupted; resuming");
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(canceled()),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
        cur.file
            .sync_all()
            .await
            .map_err(|e| io_err("syncing", &part, e))?;
        drop(cur.file);
        let got = format!("sha256:{}", hex::encode(cur.hasher.finalize()));
        if let Some(want) = &spec.digest {
            if got != *want {
                return Err(HubError::new(
                    ErrorKind::DigestMismatch,
                    format!(
                        "{} hashes to {got}, but {} is {want}; the download was deleted and \
                         nothing was registered. Pull again; if it persists, the file on the \
                         server (or a proxy in between) is not the one its digest names",
                        spec.path, spec.digest_source
                    ),
                ));
            }
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(|e| io_err("renaming the verified file to", dest, e))?;
        if let Some(dir) = dest.parent() {
            let dir = dir.to_owned();
            let synced =
                tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all()).await;
            if let Ok(Err(e)) = synced {
                tracing::warn!(error = %e, "pull: cannot fsync the models directory");
            }
        }
        let _ = tokio::fs::remove_file(&meta).await;
        tracing::info!(file = %spec.path, dest = %dest.display(), bytes = cur.offset, digest = %got, "pull: file verified and in place");
        Ok(FileDone {
            digest: got,
            size: cur.offset,
        })
    }

    /// One request and its body, written from `cur.offset` on.
    async fn attempt(
        &self,
        env: &DownloadEnv,
        cur: &mut Cursor,
        part: &Path,
        seen: &mut HashSet<String>,
    ) -> Result<Attempt, HubError> {
        let spec = &self.spec;
        let range = (cur.offset > 0).then_some(cur.offset);
        let resp = tokio::select! {
            _ = self.cancel.cancelled() => return Err(canceled()),
            r = env.fetcher.get(&spec.url, range, seen) => r,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(FetchError::Fatal(e)) => return Err(e),
            Err(FetchError::Retry(why)) => return Ok(Attempt::Retry(why)),
        };
        let status = resp.status().as_u16();
        let total = match status {
            200 => {
                if cur.offset > 0 {
                    tracing::warn!(file = %spec.path, bytes = cur.offset, "pull: the server ignored Range (200 instead of 206); starting over");
                    cur.restart(part).await?;
                    self.restart_progress(0);
                    self.progress().resumed_from = 0;
                }
                resp.content_length()
            }
            206 => {
                let cr = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range);
                match cr {
                    Some((start, _, total)) if start == cur.offset => total,
                    _ => {
                        tracing::warn!(file = %spec.path, bytes = cur.offset, "pull: the server answered another range than asked; starting over");
                        cur.restart(part).await?;
                        self.restart_progress(0);
                        return Ok(Attempt::Retry(
                            "the server answered another byte range".into(),
                        ));
                    }
                }
            }
            416 if spec.size == Some(cur.offset) => return Ok(Attempt::Complete),
            416 => {
                cur.restart(part).await?;
                self.restart_progress(0);
                return Ok(Attempt::Retry(
                    "the server refused the byte range (416)".into(),
                ));
            }
            401 | 403 | 404 | 410 => {
                return Err(HubError::new(
                    ErrorKind::NotFound,
                    format!(
                        "the server refused {} (HTTP {status}); check the reference, and for a \
                         gated or private repository set HF_TOKEN for the daemon",
                        spec.path
                    ),
                ))
            }
            408 | 429 | 500..=599 => return Ok(Attempt::Retry(format!("HTTP {status}"))),
            _ => {
                return Err(HubError::new(
                    ErrorKind::Upstream,
                    format!("the server answered HTTP {status} for {}", spec.path),
                ))
            }
        };
        let size = match (spec.size, total) {
            (Some(s), Some(t)) if s != t => {
                return Err(HubError::new(
                    ErrorKind::Upstream,
                    format!(
                        "{} is {t} bytes on the server but the hub lists {s}; the hub's file \
                         list and the file disagree, try again later",
                        spec.path
                    ),
                ))
            }
            (Some(s), _) => Some(s),
            (None, t) => t,
        };
        self.progress().size = size;
        if let Some(total) = size {
            env.free
                .ensure(part, total.saturating_sub(cur.offset), total, &spec.path)?;
        }
        self.set_state(FileState::Downloading);
        let mut w = tokio::io::BufWriter::with_capacity(WRITE_BUF, &mut cur.file);
        let mut body = resp.bytes_stream();
        let mut broke = None;
        loop {
            let next = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    let _ = w.flush().await;
                    return Err(canceled());
                }
                n = body.next() => n,
            };
            match next {
                None => break,
                Some(Ok(chunk)) => {
                    let end = cur.offset + chunk.len() as u64;
                    if size.is_some_and(|s| end > s) {
                        return Err(HubError::new(
                            ErrorKind::Upstream,
                            format!("the server sent more bytes of {} than its size", spec.path),
                        ));
                    }
                    w.write_all(&chunk)
                        .await
                        .map_err(|e| io_err("writing", part, e))?;
                    cur.hasher.update(&chunk);
                    cur.offset = end;
                    self.advance(end);
                }
                Some(Err(e)) => {
                    broke = Some(describe_reqwest(e));
                    break;
                }
            }
        }
        w.flush().await.map_err(|e| io_err("writing", part, e))?;
        Ok(match (broke, size) {
            (Some(why), _) => Attempt::Retry(format!(
                "the transfer broke off after {} bytes: {why}",
                cur.offset
            )),
            (None, Some(s)) if cur.offset < s => Attempt::Retry(format!(
                "the server ended the transfer at {} of {s} bytes",
                cur.offset
            )),
            _ => Attempt::Complete,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range("bytes 100-199/200"),
            Some((100, 199, Some(200)))
        );
        assert_eq!(content_range("bytes 0-9/*"), Some((0, 9, None)));
        assert_eq!(content_range("items 0-9/10"), None);
    }

    #[test]
    fn free_space_check_counts_five_percent() {
        let f = FreeSpace { fixed: Some(1050) };
        let dir = Path::new("/");
        assert!(f.ensure(dir, 1000, 1000, "m").is_ok());
        let e = f.ensure(dir, 1001, 1001, "m").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(
            e.message.contains("1051") && e.message.contains("1050"),
            "{}",
            e.message
        );
        assert!(
            f.ensure(dir, 0, 10_000, "m").is_ok(),
            "nothing left to download"
        );
        assert!(FreeSpace::default()
            .available(Path::new("/nonexistent/dir"))
            .is_ok());
    }

    #[test]
    fn token_debug_is_redacted() {
        assert!(!format!("{:?}", HubToken("hf_secret".into())).contains("hf_secret"));
    }
}
