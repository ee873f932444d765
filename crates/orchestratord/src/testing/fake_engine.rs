//! TEST DOUBLE: an in-process engine behind the real [`EngineAdapter`] trait, injected into the
//! pool manager through its adapter factory so the daemon runs unchanged on top of it.
//!
//! Per `generate` call it records the request, then streams tokens (the test's script, else
//! `max_tokens` tokens `tok0 `, `tok1 `, …) and a final [`Completion`]. Controls: a gate that
//! holds every new stream before its first token until the test releases it (one by one or all
//! at once), scripted failures (refuse the next request, or break it after some tokens),
//! health on/off, and the [`EngineInfo`] it reports. Slot listing and erase only record.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use orch_engine_adapters::{
    AdapterError, Completion, EngineAdapter, EngineEvent, EngineInfo, EngineStream, FinishReason,
    GenerateRequest, Prompt, SlotState,
};
use tokio::sync::{watch, Semaphore};

/// How long the `wait_*` helpers wait before failing the test.
const WAIT: Duration = Duration::from_secs(10);

type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A scripted failure of one future `generate` call.
#[derive(Debug, Clone)]
enum Failure {
    /// `generate` itself returns the error (the engine refused the request).
    Refuse(AdapterError),
    /// The stream yields `after` tokens, then the error.
    MidStream { after: usize, error: AdapterError },
}

#[derive(Debug, Default)]
struct Script {
    tokens: Option<Vec<String>>,
    failures: VecDeque<Failure>,
}

/// The engine double. Share it as `Arc<FakeEngine>`; every replica of its pool uses it.
#[derive(Debug)]
pub struct FakeEngine {
    script: Mutex<Script>,
    /// Each stream takes one permit before its first token; a closed semaphore is an open gate
    /// (every waiting and later stream passes).
    gate: Mutex<Arc<Semaphore>>,
    healthy: AtomicBool,
    info: Mutex<EngineInfo>,
    requests: Mutex<Vec<GenerateRequest>>,
    erased: Mutex<Vec<u32>>,
    /// `generate` calls so far.
    calls: watch::Sender<usize>,
    /// Streams alive (dropping a stream is how the daemon aborts a request).
    active: Arc<watch::Sender<usize>>,
    kind: OnceLock<&'static str>,
    endpoint: OnceLock<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_gate() -> Arc<Semaphore> {
    let s = Semaphore::new(0);
    s.close();
    Arc::new(s)
}

impl Default for FakeEngine {
    fn default() -> Self {
        Self {
            script: Mutex::new(Script::default()),
            gate: Mutex::new(open_gate()),
            healthy: AtomicBool::new(true),
            info: Mutex::new(EngineInfo {
                version: "fake-b1".into(),
                ctx_per_slot: None,
                slots: None,
                model: None,
            }),
            requests: Mutex::new(Vec::new()),
            erased: Mutex::new(Vec::new()),
            calls: watch::channel(0).0,
            active: Arc::new(watch::channel(0).0),
            kind: OnceLock::new(),
            endpoint: OnceLock::new(),
        }
    }
}

/// Decrements the live-stream count when the daemon drops the stream.
struct ActiveGuard(Arc<watch::Sender<usize>>);

impl ActiveGuard {
    fn new(active: &Arc<watch::Sender<usize>>) -> Self {
        active.send_modify(|n| *n += 1);
        Self(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Words of the prompt: the double's idea of prompt tokens.
fn prompt_tokens(p: &Prompt) -> u64 {
    let words = |s: &str| s.split_whitespace().count() as u64;
    match p {
        Prompt::Text(t) => words(t),
        Prompt::Chat(turns) => turns.iter().map(|t| words(&t.content)).sum(),
    }
}

impl FakeEngine {
    /// A healthy engine with an open gate.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A healthy engine whose streams wait at the gate until released.
    pub fn held() -> Arc<Self> {
        let e = Self::new();
        e.hold();
        e
    }

    /// An engine that fails its health checks (the pool never becomes ready).
    pub fn unhealthy() -> Arc<Self> {
        let e = Self::new();
        e.set_healthy(false);
        e
    }

    /// Called by the adapter factory: the pool's engine kind and endpoint.
    pub(crate) fn bind(&self, kind: &'static str, endpoint: &str) {
        let _ = self.kind.set(kind);
        let _ = self.endpoint.set(endpoint.to_owned());
    }

    /// From now on, new streams wait at the gate before their first token.
    pub fn hold(&self) {
        *lock(&self.gate) = Arc::new(Semaphore::new(0));
    }

    /// Lets `n` waiting (or future) streams past the gate, in arrival order.
    pub fn release(&self, n: usize) {
        lock(&self.gate).add_permits(n);
    }

    /// Opens the gate for every waiting and future stream.
    pub fn open(&self) {
        lock(&self.gate).close();
    }

    /// The tokens every following stream sends (at most `max_tokens` of them).
    pub fn set_tokens<S: Into<String>>(&self, tokens: impl IntoIterator<Item = S>) {
        lock(&self.script).tokens = Some(tokens.into_iter().map(Into::into).collect());
    }

    /// The next `generate` call fails with `e` before streaming anything.
    pub fn fail_next(&self, e: AdapterError) {
        lock(&self.script).failures.push_back(Failure::Refuse(e));
    }

    /// The next stream sends `after` tokens, then fails with `e`.
    pub fn fail_mid_stream(&self, after: usize, e: AdapterError) {
        lock(&self.script)
            .failures
            .push_back(Failure::MidStream { after, error: e });
    }

    /// Health checks succeed (`true`) or fail.
    pub fn set_healthy(&self, on: bool) {
        self.healthy.store(on, Ordering::SeqCst);
    }

    /// What `info` reports (read when the replica becomes ready).
    pub fn set_info(&self, info: EngineInfo) {
        *lock(&self.info) = info;
    }

    /// Every `generate` request so far, in arrival order.
    pub fn requests(&self) -> Vec<GenerateRequest> {
        lock(&self.requests).clone()
    }

    /// Text prompts of every request so far (chat prompts joined by `|`), in arrival order.
    pub fn prompts(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| match &r.prompt {
                Prompt::Text(t) => t.clone(),
                Prompt::Chat(turns) => turns
                    .iter()
                    .map(|t| format!("{}:{}", t.role, t.content))
                    .collect::<Vec<_>>()
                    .join("|"),
            })
            .collect()
    }

    /// Slots erased so far.
    pub fn erased(&self) -> Vec<u32> {
        lock(&self.erased).clone()
    }

    /// Waits until at least `n` `generate` calls arrived.
    pub async fn wait_calls(&self, n: usize) {
        let mut rx = self.calls.subscribe();
        wait_for(&mut rx, |c| *c >= n, &format!("{n} generate calls")).await;
    }

    /// Waits until exactly `n` streams are open.
    pub async fn wait_active(&self, n: usize) {
        let mut rx = self.active.subscribe();
        wait_for(&mut rx, |c| *c == n, &format!("{n} open engine streams")).await;
    }

    fn stream(&self, req: &GenerateRequest) -> EngineStream {
        let (tokens, failure) = {
            let mut s = lock(&self.script);
            let failure = s.failures.pop_front();
            let max = req.max_tokens as usize;
            let tokens: Vec<String> = match &s.tokens {
                Some(t) => t.iter().take(max).cloned().collect(),
                None => (0..max).map(|i| format!("tok{i} ")).collect(),
            };
            (tokens, failure)
        };
        let fail_after = match failure {
            Some(Failure::MidStream { after, error }) => Some((after, error)),
            _ => None,
        };
        let n = tokens.len() as u64;
        let prompt = prompt_tokens(&req.prompt);
        let done = Completion {
            finish_reason: Some(if n == u64::from(req.max_tokens) {
                FinishReason::Length
            } else {
                FinishReason::Stop
            }),
            tokens_out: Some(n),
            tokens_in: Some(prompt),
            prompt_tokens: Some(prompt),
            tokens_cached: Some(prompt + n),
            decode_ms: None,
            slot: Some(req.slot.unwrap_or(0)),
        };
        let st = Gen {
            gate: Some(lock(&self.gate).clone()),
            tokens: tokens.into(),
            fail_after,
            sent: 0,
            done: Some(done),
            _active: ActiveGuard::new(&self.active),
        };
        futures::stream::unfold(st, |mut st| async move {
            if let Some(g) = st.gate.take() {
                // Closed means open: every stream passes.
                if let Ok(permit) = g.acquire().await {
                    permit.forget();
                }
            }
            if let Some((after, e)) = &st.fail_after {
                if st.sent == *after {
                    let e = e.clone();
                    st.fail_after = None;
                    st.done = None;
                    st.tokens.clear();
                    return Some((Err(e), st));
                }
            }
            if let Some(t) = st.tokens.pop_front() {
                st.sent += 1;
                return Some((Ok(EngineEvent::Token(t)), st));
            }
            let done = st.done.take()?;
            Some((Ok(EngineEvent::Done(done)), st))
        })
        .boxed()
    }
}

/// One stream's state.
struct Gen {
    gate: Option<Arc<Semaphore>>,
    tokens: VecDeque<String>,
    fail_after: Option<(usize, AdapterError)>,
    sent: usize,
    done: Option<Completion>,
    _active: ActiveGuard,
}

/// Waits until `ok` holds for the watched value, failing the test after [`WAIT`].
async fn wait_for<T>(rx: &mut watch::Receiver<T>, ok: impl Fn(&T) -> bool, what: &str) {
    let t0 = Instant::now();
    let r = tokio::time::timeout(WAIT, rx.wait_for(|v| ok(v))).await;
    match r {
        Ok(Ok(_)) => {}
        _ => panic!("fake engine: no {what} after {:?}", t0.elapsed()),
    }
}

// `EngineAdapter` is an `async_trait`; its methods written out as that macro expands them
// (this crate does not depend on `async-trait`).
impl EngineAdapter for FakeEngine {
    fn engine(&self) -> &'static str {
        self.kind.get().copied().unwrap_or("llamacpp")
    }

    fn endpoint(&self) -> &str {
        self.endpoint.get().map(String::as_str).unwrap_or("fake://")
    }

    fn health<'a, 'b>(&'a self) -> BoxFut<'b, Result<(), AdapterError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            if self.healthy.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(AdapterError::Unreachable {
                    endpoint: self.endpoint().to_owned(),
                    message: "fake engine: health switched off".into(),
                })
            }
        })
    }

    fn info<'a, 'b>(&'a self) -> BoxFut<'b, Result<EngineInfo, AdapterError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(lock(&self.info).clone()) })
    }

    fn generate<'a, 'b>(
        &'a self,
        req: GenerateRequest,
    ) -> BoxFut<'b, Result<EngineStream, AdapterError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            lock(&self.requests).push(req.clone());
            let refuse = {
                let mut s = lock(&self.script);
                match s.failures.front() {
                    Some(Failure::Refuse(_)) => match s.failures.pop_front() {
                        Some(Failure::Refuse(e)) => Some(e),
                        _ => None,
                    },
                    _ => None,
                }
            };
            let out = match refuse {
                Some(e) => Err(e),
                None => Ok(self.stream(&req)),
            };
            self.calls.send_modify(|n| *n += 1);
            out
        })
    }

    fn slots<'a, 'b>(&'a self) -> BoxFut<'b, Result<Vec<SlotState>, AdapterError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let n = lock(&self.info).slots.unwrap_or(1);
            Ok((0..n).map(|id| SlotState { id, busy: false }).collect())
        })
    }

    fn erase_slot<'a, 'b>(&'a self, slot: u32) -> BoxFut<'b, Result<(), AdapterError>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            lock(&self.erased).push(slot);
            Ok(())
        })
    }

    /// The double's tokenizer: a word is a token.
    fn count_tokens<'a, 'c, 'b>(
        &'a self,
        req: &'c GenerateRequest,
    ) -> BoxFut<'b, Result<u32, AdapterError>>
    where
        'a: 'b,
        'c: 'b,
        Self: 'b,
    {
        Box::pin(async move { Ok(u32::try_from(prompt_tokens(&req.prompt)).unwrap_or(u32::MAX)) })
    }
}
