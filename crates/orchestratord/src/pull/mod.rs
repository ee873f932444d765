//! Model pulls (SPEC §11): `POST /v1/catalog/models` with a hub `ref` downloads the model into
//! `data_dir/models`, verifies it and registers it Active through [`Catalog::register`].
//!
//! A pull is a job under its catalog id; each of its files (several for a split GGUF) is a
//! [`Download`] keyed by its destination, so two pulls of one file share one transfer. Jobs and
//! downloads run on the daemon's [`Background`] tracker: shutdown stops them, leaving partial
//! files for the next pull to resume. The hub protocol and the transfer are the `orch-hub`
//! crate ([`hub`], [`download`]); the daemon gives it its outbound policy ([`Outbound`]
//! implements [`OutboundPolicy`]) and maps its [`HubError`]s to error envelopes. See
//! docs/STATE.md, "Pulling models".

pub use orch_hub::{download, hub};

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use orch_api_types::{ErrorCode, ErrorEnvelope, PullFile, PullJob, PullState};
use orch_store::policy::ACTION_MODEL_DOWNLOAD;
use orch_store::{redact_url, CatalogModel, NewModel};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::background::Background;
use crate::catalog::Catalog;
use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::outbound::Outbound;

use download::{Download, DownloadEnv, Fetcher, FileDone, FileSpec, FileState, FreeSpace};
use hub::PullRef;
use orch_hub::{ErrorKind, HubError, OutboundPolicy};

/// The hub used when `HF_ENDPOINT` is not set.
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// How long a failed or canceled pull stays visible (`GET /v1/catalog/models/{id}`).
const RETAIN_ENDED: Duration = Duration::from_secs(600);
/// How long a cancel waits for the downloads it stopped to clean up.
const CANCEL_WAIT: Duration = Duration::from_secs(10);

/// What the pull service is built from (read at start: `HF_ENDPOINT`, `HF_TOKEN`,
/// `LLORCH_TEST_FREE_DISK_BYTES`).
pub struct PullSetup {
    env: DownloadEnv,
    models_dir: PathBuf,
}

impl PullSetup {
    /// From the environment, for a daemon whose data directory is `data_dir`.
    pub fn from_env(data_dir: &Path, outbound: Arc<Outbound>) -> anyhow::Result<Self> {
        let raw = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_owned());
        let endpoint = Url::parse(raw.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "HF_ENDPOINT={} is not an http(s) URL; unset it to use {DEFAULT_HF_ENDPOINT}",
                    redact_url(&raw)
                )
            })?;
        let token = std::env::var("HF_TOKEN").ok();
        let models_dir = std::path::absolute(data_dir.join("models")).map_err(|e| {
            anyhow::anyhow!("the models directory under {}: {e}", data_dir.display())
        })?;
        Ok(Self {
            env: DownloadEnv {
                fetcher: Fetcher::new(outbound, endpoint, token)?,
                free: FreeSpace::from_env()?,
            },
            models_dir,
        })
    }
}

/// A pull request, as the API received it.
#[derive(Debug, Clone)]
pub struct PullRequest {
    /// Catalog id to register under (default: from the file name).
    pub id: Option<String>,
    /// `hf:…` or an `http(s)://` URL.
    pub reference: String,
    /// Expected digest (instead of the hub's `lfs.oid`).
    pub digest: Option<String>,
}

#[derive(Debug)]
struct JobState {
    state: PullState,
    error: Option<ErrorEnvelope>,
    updated_ms: u64,
    ended_at: Option<Instant>,
    warnings: Vec<String>,
}

/// One pull under one catalog id.
#[derive(Debug)]
struct Job {
    id: String,
    /// The reference as given, secrets redacted (shown, and stored as the model's `source`).
    shown_ref: String,
    digest: Option<String>,
    /// Its files, each with whether it joined another pull's download.
    files: Vec<(Arc<Download>, bool)>,
    started_ms: u64,
    started: Instant,
    cancel: CancellationToken,
    st: Mutex<JobState>,
}

impl Job {
    fn st(&self) -> MutexGuard<'_, JobState> {
        self.st.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn ended(&self) -> bool {
        self.st().ended_at.is_some()
    }

    fn end(&self, state: PullState, error: ErrorEnvelope) {
        let mut st = self.st();
        if st.ended_at.is_some() {
            return;
        }
        st.state = state;
        st.error = Some(error);
        st.updated_ms = now_ms();
        st.ended_at = Some(Instant::now());
    }

    fn view(&self) -> PullJob {
        let st = self.st();
        let mut files = Vec::with_capacity(self.files.len());
        let (mut done, mut total, mut rate) = (0u64, Some(0u64), 0u64);
        let (mut any_downloading, mut any_verifying) = (false, false);
        for (dl, shared) in &self.files {
            let s = dl.snapshot();
            done += s.bytes_done;
            total = total.zip(s.size).map(|(a, b)| a + b);
            rate += s.rate;
            any_downloading |= s.state == FileState::Downloading;
            any_verifying |= s.state == FileState::Verifying;
            files.push(PullFile {
                path: dl.spec.path.clone(),
                dest: dl.spec.dest.to_string_lossy().into_owned(),
                size: s.size,
                bytes_done: s.bytes_done,
                expected_digest: dl.spec.digest.clone(),
                state: pull_state(s.state),
                resumed_from: s.resumed_from,
                shared: *shared,
            });
        }
        let state = match st.ended_at {
            Some(_) => st.state,
            None if any_downloading => PullState::Downloading,
            None if any_verifying => PullState::Verifying,
            None => PullState::Downloading,
        };
        let running = st.ended_at.is_none();
        let eta_ms = match total {
            Some(t) if running && rate > 0 => {
                Some(((t.saturating_sub(done)) as f64 / rate as f64 * 1000.0) as u64)
            }
            _ => None,
        };
        PullJob {
            id: self.id.clone(),
            reference: self.shown_ref.clone(),
            state,
            bytes_done: done,
            bytes_total: total,
            rate_bytes_per_s: if running { rate } else { 0 },
            eta_ms,
            files,
            started_ms: self.started_ms,
            updated_ms: st.updated_ms,
            error: st.error.clone(),
            warnings: st.warnings.clone(),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    jobs: HashMap<String, Arc<Job>>,
    downloads: HashMap<PathBuf, Arc<Download>>,
}

/// The pulls: jobs by catalog id, downloads by destination.
pub struct PullService {
    env: Arc<DownloadEnv>,
    models_dir: PathBuf,
    catalog: Arc<Catalog>,
    background: Arc<Background>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for PullService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullService")
            .field("models_dir", &self.models_dir)
            .finish_non_exhaustive()
    }
}

fn same_digest(a: &Option<String>, b: &Option<String>) -> bool {
    a == b
}

impl PullService {
    /// The service; its work runs on `background`.
    pub fn new(setup: PullSetup, catalog: Arc<Catalog>, background: Arc<Background>) -> Self {
        Self {
            env: Arc::new(setup.env),
            models_dir: setup.models_dir,
            catalog,
            background,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.jobs
            .retain(|_, j| j.st().ended_at.is_none_or(|t| t.elapsed() < RETAIN_ENDED));
        g
    }

    /// The pull under `id`, running or ended without a model (kept a while).
    pub fn job(&self, id: &str) -> Option<PullJob> {
        self.inner().jobs.get(id).map(|j| j.view())
    }

    /// Every pull not registered (yet), ordered by id.
    pub fn list(&self) -> Vec<PullJob> {
        let mut v: Vec<PullJob> = self.inner().jobs.values().map(|j| j.view()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// An existing pull under `id` if it is the same request (idempotent POST), or the
    /// conflict; `Ok(None)` when `id` is free.
    fn existing(
        &self,
        id: &str,
        shown_ref: &str,
        digest: &Option<String>,
    ) -> Result<Option<PullJob>, ServiceError> {
        let g = self.inner();
        match g.jobs.get(id) {
            Some(j) if !j.ended() => {
                if j.shown_ref == shown_ref && same_digest(&j.digest, digest) {
                    Ok(Some(j.view()))
                } else {
                    Err(ServiceError::new(
                        ErrorCode::Conflict,
                        format!(
                            "a pull of {} under id `{id}` is running; wait for it, cancel it \
                             (DELETE /v1/catalog/models/{id}), or pick another id",
                            j.shown_ref
                        ),
                    ))
                }
            }
            _ => Ok(None),
        }
    }

    fn check_id_free(&self, id: &str) -> Result<(), ServiceError> {
        orch_store::validate_id("model id", id).map_err(crate::storage::store_err)?;
        if self.catalog.cached(id).is_some() {
            return Err(ServiceError::new(
                ErrorCode::Conflict,
                format!(
                    "catalog model '{id}' is already registered; pull under another id (--id) or \
                     delete it first"
                ),
            ));
        }
        Ok(())
    }

    /// Starts a pull (or answers the same pull already running under that id). Everything
    /// that can be refused before a byte is downloaded is refused here: a bad reference, a
    /// taken id, the outbound policy, a missing or ambiguous file, too little disk space.
    pub async fn start(self: &Arc<Self>, req: PullRequest) -> Result<PullJob, ServiceError> {
        let r = hub::parse_ref(&req.reference)?;
        let shown_ref = redact_url(&req.reference);
        let digest = req
            .digest
            .as_deref()
            .map(|d| orch_store::normalize_digest("digest", d))
            .transpose()
            .map_err(crate::storage::store_err)?;
        if let Some(id) = &req.id {
            if let Some(job) = self.existing(id, &shown_ref, &digest)? {
                return Ok(job);
            }
            self.check_id_free(id)?;
        }
        let mut pre_allowed = HashSet::new();
        let specs: Vec<FileSpec> = match &r {
            PullRef::Url(url) => {
                // Checked at submit, so that a refusal is the POST's 403.
                self.env
                    .fetcher
                    .policy()
                    .allow_download(url.as_str())
                    .await?;
                pre_allowed.insert(url.as_str().to_owned());
                let path = url.path().trim_start_matches('/').to_owned();
                vec![FileSpec {
                    path: if path.is_empty() {
                        shown_ref.clone()
                    } else {
                        path
                    },
                    url: url.clone(),
                    dest: hub::url_dest(&self.models_dir, url),
                    size: None,
                    digest: digest.clone(),
                    digest_source: "the digest given",
                }]
            }
            PullRef::HubFile { repo, .. } | PullRef::HubQuant { repo, .. } => {
                let listed = hub::list_repo(&self.env.fetcher, repo).await?;
                let chosen = hub::select(&r, &listed)?;
                if digest.is_some() && chosen.len() > 1 {
                    return Err(ServiceError::invalid(format!(
                        "{} is a split model of {} files; each part is verified against the \
                         hub's lfs.oid, so leave out `digest`",
                        shown_ref,
                        chosen.len()
                    )));
                }
                for f in &chosen {
                    if !hub::safe_rel_path(&f.path) {
                        return Err(ServiceError::new(
                            ErrorCode::EngineError,
                            format!(
                                "the hub lists a file with an unsafe path ({:?}); refusing it",
                                f.path
                            ),
                        ));
                    }
                }
                chosen
                    .into_iter()
                    .map(|f| {
                        let (digest, digest_source) = match &digest {
                            Some(d) => (Some(d.clone()), "the digest given"),
                            None => (f.sha256.clone(), "the hub's lfs.oid"),
                        };
                        FileSpec {
                            url: hub::resolve_url(self.env.fetcher.endpoint(), repo, &f.path),
                            dest: hub::hub_dest(&self.models_dir, repo, &f.path),
                            size: Some(f.size),
                            digest,
                            digest_source,
                            path: f.path,
                        }
                    })
                    .collect()
            }
        };
        let Some(first) = specs.first() else {
            return Err(ServiceError::invalid(format!(
                "{shown_ref} names no file to pull"
            )));
        };
        let id = match &req.id {
            Some(id) => id.clone(),
            None => {
                let id = hub::default_id(&first.path);
                if let Some(job) = self.existing(&id, &shown_ref, &digest)? {
                    return Ok(job);
                }
                self.check_id_free(&id)?;
                id
            }
        };
        self.check_disk(&specs, &shown_ref)?;
        let mut warnings = Vec::new();
        for s in specs.iter().filter(|s| s.digest.is_none()) {
            warnings.push(format!(
                "{} has no digest to verify against (no lfs.oid, no `digest` given); it is \
                 registered with the digest it hashes to",
                s.path
            ));
        }

        let job = {
            let mut g = self.inner();
            // Re-checked under the lock: a concurrent POST may have taken the id meanwhile.
            if let Some(j) = g.jobs.get(&id).filter(|j| !j.ended()) {
                if j.shown_ref == shown_ref && same_digest(&j.digest, &digest) {
                    return Ok(j.view());
                }
                return Err(ServiceError::new(
                    ErrorCode::Conflict,
                    format!(
                        "a pull under id `{id}` is running; cancel it first or pick another id"
                    ),
                ));
            }
            for s in &specs {
                if let Some(d) = g.downloads.get(&s.dest) {
                    if !d.retired() && !d.finished() && !same_digest(&d.spec.digest, &s.digest) {
                        return Err(ServiceError::new(
                            ErrorCode::Conflict,
                            format!(
                                "another pull is downloading {} with another expected digest; \
                                 wait for it or cancel it",
                                s.dest.display()
                            ),
                        ));
                    }
                }
            }
            let mut files = Vec::with_capacity(specs.len());
            let mut fresh = Vec::new();
            for s in specs {
                match g.downloads.get(&s.dest) {
                    Some(d) if !d.retired() && !d.finished() => {
                        d.hold();
                        files.push((d.clone(), true));
                    }
                    prev => {
                        let after = prev.map(|p| p.outcome_rx());
                        let d = Download::new(s, after, pre_allowed.clone());
                        g.downloads.insert(d.spec.dest.clone(), d.clone());
                        fresh.push(d.clone());
                        files.push((d, false));
                    }
                }
            }
            let now = now_ms();
            let job = Arc::new(Job {
                id: id.clone(),
                shown_ref: shown_ref.clone(),
                digest,
                files,
                started_ms: now,
                started: Instant::now(),
                cancel: CancellationToken::new(),
                st: Mutex::new(JobState {
                    state: PullState::Downloading,
                    error: None,
                    updated_ms: now,
                    ended_at: None,
                    warnings,
                }),
            });
            g.jobs.insert(id.clone(), job.clone());
            for d in fresh {
                let me = self.clone();
                self.background.spawn(async move {
                    d.clone().run(&me.env).await;
                    let mut g = me.inner();
                    if g.downloads
                        .get(&d.spec.dest)
                        .is_some_and(|x| Arc::ptr_eq(x, &d))
                    {
                        g.downloads.remove(&d.spec.dest);
                    }
                });
            }
            job
        };
        let shared = job.files.iter().filter(|(_, s)| *s).count();
        let total: u64 = job.files.iter().filter_map(|(d, _)| d.spec.size).sum();
        tracing::info!(model_id = %id, reference = %shown_ref, files = job.files.len(), shared, bytes = total, "pull started");
        let me = self.clone();
        let j = job.clone();
        self.background.spawn(async move { me.run_job(j).await });
        Ok(job.view())
    }

    /// Refuses (before any byte is written) when the files still to download do not fit.
    fn check_disk(&self, specs: &[FileSpec], shown_ref: &str) -> Result<(), ServiceError> {
        let (mut remaining, mut total) = (0u64, 0u64);
        for s in specs {
            let Some(size) = s.size else { continue };
            total += size;
            if !s.dest.is_file() {
                let mut part = s.dest.as_os_str().to_owned();
                part.push(".part");
                let have = std::fs::metadata(PathBuf::from(part))
                    .map(|m| m.len())
                    .unwrap_or(0)
                    .min(size);
                remaining += size - have;
            }
        }
        self.env
            .free
            .ensure(&self.models_dir, remaining, total, shown_ref)
            .map_err(ServiceError::from)
    }

    /// Lets go of `dl` for one pull; the last one retires it. Returns whether it retired it.
    fn release(&self, dl: &Arc<Download>, delete_part: bool) -> bool {
        let _g = self.inner();
        let left = dl.let_go();
        if left == 0 && !dl.finished() {
            dl.retire(delete_part);
            return true;
        }
        false
    }

    fn fail(&self, job: &Job, e: ErrorEnvelope) {
        tracing::warn!(model_id = %job.id, reference = %job.shown_ref, code = %e.code.as_str(), error = %e.message, "pull failed");
        job.end(PullState::Failed, e);
        for (dl, _) in &job.files {
            if !dl.finished() {
                self.release(dl, false);
            }
        }
    }

    async fn run_job(self: Arc<Self>, job: Arc<Job>) {
        let mut waits: FuturesUnordered<_> = job
            .files
            .iter()
            .enumerate()
            .map(|(i, (dl, _))| {
                let mut rx = dl.outcome_rx();
                async move {
                    let r = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|o| o.clone());
                    (i, r)
                }
            })
            .collect();
        let mut done: Vec<Option<FileDone>> = vec![None; job.files.len()];
        loop {
            let next = tokio::select! {
                _ = job.cancel.cancelled() => return,
                n = waits.next() => n,
            };
            match next {
                None => break,
                Some((i, Some(Ok(d)))) => done[i] = Some(d),
                Some((_, Some(Err(e)))) => return self.fail(&job, envelope(e)),
                Some((_, None)) => {
                    return self.fail(
                        &job,
                        ErrorEnvelope::new(
                            ErrorCode::Internal,
                            "a download ended without an outcome",
                        ),
                    )
                }
            }
        }
        let done: Vec<FileDone> = done.into_iter().flatten().collect();
        let (Some(first), Some((first_dl, _))) = (done.first(), job.files.first()) else {
            return self.fail(
                &job,
                ErrorEnvelope::new(ErrorCode::Internal, "a pull without files"),
            );
        };
        let size: u64 = done.iter().map(|d| d.size).sum();
        let new = NewModel {
            id: job.id.clone(),
            reference: first_dl.spec.dest.to_string_lossy().into_owned(),
            digest: Some(first.digest.clone()),
            signature: None,
            sbom: None,
            size: Some(size),
            source: Some(job.shown_ref.clone()),
        };
        if job.cancel.is_cancelled() {
            return;
        }
        match self.catalog.register(new).await {
            Ok(m) => self.completed(&job, &m),
            Err(e) => self.fail(&job, e.body),
        }
    }

    fn completed(&self, job: &Arc<Job>, m: &CatalogModel) {
        {
            let mut st = job.st();
            st.state = PullState::Completed;
            st.updated_ms = now_ms();
            st.ended_at = Some(Instant::now());
        }
        let mut g = self.inner();
        if g.jobs.get(&job.id).is_some_and(|j| Arc::ptr_eq(j, job)) {
            // Registered: from now on `GET /v1/catalog/models/{id}` shows the model.
            g.jobs.remove(&job.id);
        }
        tracing::info!(model_id = %m.id, reference = %job.shown_ref, path = %m.reference,
            digest = m.digest.as_deref().unwrap_or(""), bytes = m.size.unwrap_or(0),
            took_ms = job.started.elapsed().as_millis() as u64, "pull completed; model registered");
    }

    /// Cancels the running pull under `id` (its partial files are deleted unless another pull
    /// shares them) and forgets an ended one. `None` when there is no pull under `id`.
    pub async fn cancel(&self, id: &str) -> Option<PullJob> {
        let job = self.inner().jobs.get(id).cloned()?;
        if job.ended() {
            let view = job.view();
            let mut g = self.inner();
            if g.jobs.get(id).is_some_and(|j| Arc::ptr_eq(j, &job)) {
                g.jobs.remove(id);
            }
            return Some(view);
        }
        job.end(
            PullState::Canceled,
            ErrorEnvelope::new(ErrorCode::Canceled, "the pull was canceled by request"),
        );
        job.cancel.cancel();
        let mut stopping = Vec::new();
        for (dl, _) in &job.files {
            if self.release(dl, true) {
                stopping.push(dl.outcome_rx());
            }
        }
        let waited = tokio::time::timeout(
            CANCEL_WAIT,
            futures::future::join_all(stopping.into_iter().map(|mut rx| async move {
                // The guard `wait_for` returns is not Send: drop it inside.
                rx.wait_for(Option::is_some).await.is_ok()
            })),
        )
        .await;
        if waited.is_err() {
            tracing::warn!(model_id = %id, "pull cancel: downloads still stopping");
        }
        tracing::info!(model_id = %id, reference = %job.shown_ref, "pull canceled");
        Some(job.view())
    }
}

/// The daemon's outbound policy (and audit log) for the hub crate's requests.
#[async_trait::async_trait]
impl OutboundPolicy for Outbound {
    async fn allow_download(&self, url: &str) -> Result<(), HubError> {
        let d = self
            .enforce(url, ACTION_MODEL_DOWNLOAD)
            .await
            .map_err(|e| hub_error(e.body))?;
        if !d.allowed {
            return Err(hub_error(Outbound::denied(&d).body));
        }
        Ok(())
    }
}

/// A file's state as the API shows it.
fn pull_state(s: FileState) -> PullState {
    match s {
        FileState::Downloading => PullState::Downloading,
        FileState::Verifying => PullState::Verifying,
        FileState::Completed => PullState::Completed,
        FileState::Failed => PullState::Failed,
        FileState::Canceled => PullState::Canceled,
    }
}

/// The error code of each kind of hub error (the inverse of [`hub_error`]'s mapping).
fn code_of(kind: ErrorKind) -> ErrorCode {
    match kind {
        ErrorKind::Invalid => ErrorCode::InvalidParams,
        ErrorKind::NotFound => ErrorCode::NotFound,
        ErrorKind::Conflict => ErrorCode::Conflict,
        ErrorKind::PolicyDenied => ErrorCode::PolicyDenied,
        ErrorKind::Upstream => ErrorCode::EngineError,
        ErrorKind::NoSpace => ErrorCode::PayloadTooLarge,
        ErrorKind::DigestMismatch => ErrorCode::DigestMismatch,
        ErrorKind::Canceled => ErrorCode::Canceled,
        ErrorKind::Internal => ErrorCode::Internal,
    }
}

/// A policy check's envelope as a hub error (codes without a kind are internal).
fn hub_error(e: ErrorEnvelope) -> HubError {
    let kind = match e.code {
        ErrorCode::InvalidParams => ErrorKind::Invalid,
        ErrorCode::NotFound => ErrorKind::NotFound,
        ErrorCode::Conflict => ErrorKind::Conflict,
        ErrorCode::PolicyDenied => ErrorKind::PolicyDenied,
        ErrorCode::EngineError => ErrorKind::Upstream,
        ErrorCode::PayloadTooLarge => ErrorKind::NoSpace,
        ErrorCode::DigestMismatch => ErrorKind::DigestMismatch,
        ErrorCode::Canceled => ErrorKind::Canceled,
        _ => ErrorKind::Internal,
    };
    let h = HubError::new(kind, e.message);
    match e.retry_after_ms {
        Some(ms) => h.retry_after(ms),
        None => h,
    }
}

/// A hub error as the envelope a pull job or a response carries.
fn envelope(e: HubError) -> ErrorEnvelope {
    let env = ErrorEnvelope::new(code_of(e.kind), e.message);
    match e.retry_after_ms {
        Some(ms) => env.retry_after(ms),
        None => env,
    }
}

impl From<HubError> for ServiceError {
    fn from(e: HubError) -> Self {
        ServiceError::from_envelope(envelope(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_round_trip_through_envelopes() {
        for code in [
            ErrorCode::InvalidParams,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
            ErrorCode::PolicyDenied,
            ErrorCode::EngineError,
            ErrorCode::PayloadTooLarge,
            ErrorCode::DigestMismatch,
            ErrorCode::Canceled,
            ErrorCode::Internal,
        ] {
            let env = ErrorEnvelope::new(code, "m").retry_after(5);
            assert_eq!(envelope(hub_error(env.clone())), env);
            let env = ErrorEnvelope::new(code, "m");
            assert_eq!(envelope(hub_error(env.clone())), env);
        }
    }
}
