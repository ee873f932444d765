//! Sessions and budgets at admission and after each task (see docs/STATE.md).
//!
//! A task with a `session_id` is checked *before* enqueue (TTL, turns, budget) and the turn is
//! recorded; its `max_tokens` is reserved against a token budget until the task is charged.
//! Admission decisions are serialised (one lock from reading the reservations to recording the
//! new one), so concurrent tasks of a session can never together overspend it. After a task's
//! terminal event [`SessionAccounts::settle`] charges what it really used and pins the session
//! to the replica and slot that hold its KV cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use orch_api_types::{ErrorCode, MetricsEvent, TaskRequest};
use orch_config::Config;
use orch_pool_manager::PoolManager;
use orch_store::{BudgetError, SessionError, Store, StoreError};
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::error::ServiceError;
use crate::session_kv::KvShelf;
use crate::storage::{blocking, store_err};
use crate::task::{EngineOutcome, SessionBinding, Task};

/// How long an expired session id answers `SESSION_EXPIRED` before it may start afresh.
const TOMBSTONE_MS: u64 = 600_000;
/// How long admission waits for earlier, already finished tasks of the same session to be
/// charged (normally a few milliseconds).
const SETTLE_WAIT: Duration = Duration::from_secs(3);

/// In-memory session state, under one lock.
#[derive(Default)]
struct Accounts {
    /// Per session: its admitted tasks not yet charged, with the tokens each reserves.
    ledgers: HashMap<String, Vec<(Arc<Task>, u64)>>,
    /// KV warmth of each session's last finished task.
    warmth: HashMap<String, f64>,
    /// Expired sessions and when they expired.
    tombstones: HashMap<String, u64>,
}

impl Accounts {
    fn in_flight(&self, sid: &str) -> bool {
        self.ledgers.get(sid).is_some_and(|l| !l.is_empty())
    }

    fn reserved(&self, sid: &str) -> u64 {
        self.ledgers
            .get(sid)
            .map(|l| l.iter().map(|(_, r)| *r).sum())
            .unwrap_or(0)
    }

    fn has_unsettled_end(&self, sid: &str) -> bool {
        self.ledgers
            .get(sid)
            .is_some_and(|l| l.iter().any(|(t, _)| t.state().is_terminal()))
    }
}

/// Session admission, charging and expiry.
pub struct SessionAccounts {
    store: Arc<Store>,
    ttl_ms: u64,
    max_turns: u32,
    accounts: Mutex<Accounts>,
    /// Held by one admission decision at a time.
    deciding: tokio::sync::Mutex<()>,
    /// Bumped after every charge: wakes admissions waiting for a session to settle.
    settled: watch::Sender<u64>,
    /// KV bytes per token by model file.
    kv_per_token: Mutex<HashMap<String, Option<u64>>>,
    /// Sessions' KV saved when their on_demand pool unloaded.
    kv: Arc<KvShelf>,
}

impl std::fmt::Debug for SessionAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionAccounts").finish_non_exhaustive()
    }
}

/// Why the blocking part of session admission refused a task (boxed: keeps results small).
enum Refusal {
    /// The session had expired; `touch` removed it, its slot still has to be freed.
    Expired(Box<orch_store::Session>, Box<ServiceError>),
    /// Any other refusal.
    Refused(Box<ServiceError>),
}

impl Refusal {
    fn refused(e: ServiceError) -> Self {
        Refusal::Refused(Box::new(e))
    }
}

/// Why admission refused a session turn.
fn session_refusal(e: SessionError) -> ServiceError {
    match e {
        SessionError::TurnsExhausted { id, max_turns } => ServiceError::new(
            ErrorCode::SessionTurnsExhausted,
            format!(
                "session '{id}' has used all {max_turns} turns (sessions.max_turns); start a new \
                 session with another session_id, or DELETE /v1/sessions/{id} and reuse the id"
            ),
        ),
        SessionError::Expired {
            session,
            expired_ms_ago,
        } => expired_error(&session.id, session.ttl_ms, Some(expired_ms_ago)),
        SessionError::Store(e) => store_err(e),
    }
}

fn expired_error(id: &str, ttl_ms: u64, ago: Option<u64>) -> ServiceError {
    let ago = ago.map(|a| format!(" {a} ms ago")).unwrap_or_default();
    ServiceError::new(
        ErrorCode::SessionExpired,
        format!(
            "session '{id}' expired{ago} (idle longer than its TTL of {ttl_ms} ms) and its KV \
             cache was freed; resubmit to start a new session with this id (the conversation \
             prefix will be evaluated again)"
        ),
    )
}

fn budget_refusal(
    remaining: &orch_store::BudgetRemaining,
    reason: &str,
    max_tokens: u32,
) -> ServiceError {
    let mut left = Vec::new();
    if let Some(t) = remaining.tokens {
        left.push(format!("tokens {t}"));
    }
    if let Some(t) = remaining.time_ms {
        left.push(format!("time_ms {t}"));
    }
    if let Some(c) = remaining.cost {
        left.push(format!("cost {c}"));
    }
    let hint = match remaining.tokens {
        Some(t) if t > 0 && u64::from(max_tokens) > t => {
            format!("lower max_tokens to at most {t}, or start a new session with a larger budget")
        }
        _ => "start a new session with a larger budget".to_owned(),
    };
    ServiceError::new(
        ErrorCode::BudgetExceeded,
        format!(
            "budget exceeded: {reason}; remaining: {}; {hint}",
            if left.is_empty() {
                "nothing".to_owned()
            } else {
                left.join(", ")
            }
        ),
    )
}

/// The cost of a task in the unit budgets use: kilotokens processed (prompt tokens evaluated
/// plus tokens generated, divided by 1000).
pub fn task_cost(tokens_in: u64, tokens_out: u64) -> f64 {
    (tokens_in.saturating_add(tokens_out)) as f64 / 1000.0
}

/// The one constructor of a `metrics` frame of `task` after `tokens_out` tokens: its KV
/// warmth and session budget left filled in, the queue and prediction fields empty
/// (`queue_depth` 0, `on_time_probability` 1.0, rate 0). Each sender (the runner, the
/// start-time forecast, the on_demand wait) sets what it knows with `..metrics_event(…)`.
pub fn metrics_event(task: &Task, tokens_out: u64) -> MetricsEvent {
    let outcome = task.ext.outcome();
    let kv_warmth = outcome.as_ref().and_then(EngineOutcome::kv_warmth);
    let mut ev = MetricsEvent {
        queue_depth: 0,
        on_time_probability: 1.0,
        tokens_out,
        tokens_per_s: 0.0,
        kv_warmth,
        tokens_budget_remaining: None,
        time_budget_remaining_ms: None,
        cost_budget_remaining: None,
        queue_position: None,
        predicted_start_ms: None,
        predicted_end_ms: None,
        queued_ms: None,
        waiting_for: None,
    };
    let Some(rem) = task.ext.session().and_then(|b| b.remaining) else {
        return ev;
    };
    let running_ms = task
        .status()
        .started_ms
        .map(|s| now_ms().saturating_sub(s))
        .unwrap_or(0);
    let tokens_in = outcome.as_ref().and_then(|o| o.tokens_in).unwrap_or(0);
    ev.tokens_budget_remaining = rem.tokens.map(|t| t.saturating_sub(tokens_out));
    ev.time_budget_remaining_ms = rem.time_ms.map(|t| t.saturating_sub(running_ms));
    ev.cost_budget_remaining = rem
        .cost
        .map(|c| (c - task_cost(tokens_in, tokens_out)).max(0.0));
    ev
}

impl SessionAccounts {
    /// Accounts over the store's sessions, with `sessions.ttl_ms` and `sessions.max_turns`.
    pub fn new(cfg: &Config, store: Arc<Store>) -> Self {
        Self {
            ttl_ms: cfg.sessions.ttl_ms,
            max_turns: cfg.sessions.max_turns,
            accounts: Mutex::new(Accounts::default()),
            deciding: tokio::sync::Mutex::new(()),
            settled: watch::channel(0).0,
            kv_per_token: Mutex::new(HashMap::new()),
            kv: Arc::new(KvShelf::new(store.clone())),
            store,
        }
    }

    /// Saves sessions' KV before an on_demand pool unloads (the pool manager's unload hook).
    pub fn kv_shelf(&self) -> Arc<KvShelf> {
        self.kv.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits (a few ms normally, at most 3 s) until the tasks of `sid` that already ended have
    /// been charged and pinned, so admission and `GET /v1/sessions/{id}` see their effects.
    pub async fn wait_settled(&self, sid: &str) {
        let mut charges = self.settled.subscribe();
        let _ = tokio::time::timeout(SETTLE_WAIT, async {
            while self.lock().has_unsettled_end(sid) {
                if charges.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    fn release(&self, sid: &str, task_id: &str) {
        let mut a = self.lock();
        if let Some(l) = a.ledgers.get_mut(sid) {
            l.retain(|(t, _)| t.id != task_id);
            if l.is_empty() {
                a.ledgers.remove(sid);
            }
        }
    }

    /// Session admission for `req`, before it is enqueued. Without `session_id`: nothing
    /// (a `budget` then is 400). With one: refuses an expired session (409
    /// `SESSION_EXPIRED`), an exhausted one (409 `SESSION_TURNS_EXHAUSTED`) and a task over
    /// budget (429 `BUDGET_EXCEEDED`), then records the turn (creating the session with the
    /// configured TTL and turn limit and the request's `budget` on first use).
    pub async fn admit(
        &self,
        req: &TaskRequest,
        task: &Arc<Task>,
        pools: &PoolManager,
    ) -> Result<Option<SessionBinding>, ServiceError> {
        let Some(sid) = req.session_id.clone() else {
            if req.budget.is_some() {
                return Err(ServiceError::invalid(
                    "`budget` applies to a session; add a `session_id` (the first task of a \
                     session sets its budget)",
                ));
            }
            return Ok(None);
        };
        if let Some(b) = &req.budget {
            if b.cost.is_some_and(|c| !c.is_finite() || c < 0.0) {
                return Err(ServiceError::invalid(
                    "budget.cost must be a finite number >= 0",
                ));
            }
        }
        self.wait_settled(&sid).await;
        // One admission decision at a time, from reading the reservations to recording this
        // task's: otherwise concurrent first tasks all see the whole budget free.
        let _deciding = self.deciding.lock().await;
        let tomb = self.lock().tombstones.remove(&sid);
        if tomb.is_some() {
            return Err(expired_error(&sid, self.ttl_ms, None));
        }
        let (reserved_others, busy) = {
            let a = self.lock();
            (a.reserved(&sid), a.in_flight(&sid))
        };
        let store = self.store.clone();
        let (ttl, max_turns) = (self.ttl_ms, self.max_turns);
        let budget = req.budget;
        let max_tokens = req.max_tokens;
        let sid2 = sid.clone();
        let result = tokio::task::spawn_blocking(move || {
            let sessions = store.sessions();
            let now = now_ms();
            if busy {
                // A task of the session still runs: the session is in use, not idle.
                let _ = sessions.refresh(&sid2, now);
            }
            let existing = match sessions.get(&sid2, now) {
                Ok(s) => Some(s),
                Err(StoreError::NotFound { .. }) => None,
                Err(e) => return Err(Refusal::refused(store_err(e))),
            };
            let need = u64::from(max_tokens).saturating_add(reserved_others);
            match existing {
                Some(s) => {
                    if s.turns >= s.max_turns {
                        return Err(Refusal::refused(session_refusal(
                            SessionError::TurnsExhausted {
                                id: s.id,
                                max_turns: s.max_turns,
                            },
                        )));
                    }
                    if let Some(b) = &budget {
                        if Some(crate::wire::store_budget(b)) != s.budget {
                            return Err(Refusal::refused(ServiceError::invalid(format!(
                                "session '{sid2}' already exists and its budget is fixed at \
                                 creation; omit `budget` on later tasks, or DELETE \
                                 /v1/sessions/{sid2} and start over"
                            ))));
                        }
                    }
                    let remaining = match sessions.check_budget(&sid2, need) {
                        Ok(r) => r,
                        Err(BudgetError::Exceeded {
                            mut remaining,
                            reason,
                        }) => {
                            // What the session's admitted, uncharged tasks reserved is not
                            // free either: the hint must fit what is really left.
                            remaining.tokens =
                                remaining.tokens.map(|t| t.saturating_sub(reserved_others));
                            return Err(Refusal::refused(budget_refusal(
                                &remaining, &reason, max_tokens,
                            )));
                        }
                        Err(BudgetError::Store(e)) => return Err(Refusal::refused(store_err(e))),
                    };
                    let s2 = sessions
                        .touch(&sid2, now, ttl, max_turns)
                        .map_err(|e| Refusal::Refused(Box::new(session_refusal(e))))?;
                    let has_budget = s2.budget.is_some();
                    Ok((s2, has_budget.then_some(remaining)))
                }
                None => {
                    if let Some(b) = &budget {
                        let rem = orch_store::BudgetRemaining {
                            tokens: b.tokens,
                            time_ms: b.time_ms,
                            cost: b.cost,
                        };
                        let mut why = Vec::new();
                        if b.tokens.is_some_and(|t| u64::from(max_tokens) > t) {
                            why.push(format!(
                                "tokens: the task's max_tokens {max_tokens} exceeds the whole \
                                 budget of {}",
                                b.tokens.unwrap_or(0)
                            ));
                        }
                        if b.time_ms == Some(0) {
                            why.push("time: the budget is 0 ms".to_owned());
                        }
                        if b.cost.is_some_and(|c| c <= 0.0) {
                            why.push("cost: the budget is 0".to_owned());
                        }
                        if !why.is_empty() {
                            return Err(Refusal::refused(budget_refusal(
                                &rem,
                                &format!("new session '{sid2}': {}", why.join("; ")),
                                max_tokens,
                            )));
                        }
                    }
                    let s = match sessions.touch(&sid2, now, ttl, max_turns) {
                        Ok(s) => s,
                        Err(SessionError::Expired {
                            session,
                            expired_ms_ago,
                        }) => {
                            // Removed by touch: free its slot, then report the expiry.
                            let err =
                                expired_error(&session.id, session.ttl_ms, Some(expired_ms_ago));
                            return Err(Refusal::Expired(session, Box::new(err)));
                        }
                        Err(e) => return Err(Refusal::refused(session_refusal(e))),
                    };
                    let s = match &budget {
                        Some(b) => sessions
                            .set_budget(&sid2, Some(crate::wire::store_budget(b)))
                            .map_err(|e| Refusal::Refused(Box::new(store_err(e))))?,
                        None => s,
                    };
                    let rem = s.budget_remaining();
                    Ok((s, rem))
                }
            }
        })
        .await
        .map_err(|e| {
            ServiceError::new(ErrorCode::Internal, format!("a storage task failed: {e}"))
        })?;
        let (session, remaining) = match result {
            Ok(v) => v,
            Err(Refusal::Expired(expired, err)) => {
                self.lock().warmth.remove(&expired.id);
                self.free_slot(pools, &expired).await;
                return Err(*err);
            }
            Err(Refusal::Refused(e)) => return Err(*e),
        };
        let remaining = remaining.map(|r| {
            let mut r = crate::wire::budget_remaining(r);
            r.tokens = r.tokens.map(|t| t.saturating_sub(reserved_others));
            r
        });
        let reserved_tokens = if remaining.is_some_and(|r| r.tokens.is_some()) {
            u64::from(max_tokens)
        } else {
            0
        };
        self.lock()
            .ledgers
            .entry(sid.clone())
            .or_default()
            .push((task.clone(), reserved_tokens));
        let model = pools
            .pool(&task.pool_id)
            .and_then(|p| p.config().model.clone())
            .unwrap_or_default();
        let restore = self.kv.take(&sid, &task.pool_id, &model);
        Ok(Some(SessionBinding {
            session_id: sid,
            pin: session.replica_id.zip(session.slot),
            remaining,
            restore,
        }))
    }

    /// Undoes [`SessionAccounts::admit`] for a task refused after it (a full queue, a
    /// duplicate id): its reservation is released and its turn given back, so a 429 does not
    /// use up a session's turns or budget.
    pub async fn withdraw(&self, task: &Task) {
        let Some(sid) = task.ext.session().map(|b| b.session_id.clone()) else {
            return;
        };
        self.release(&sid, &task.id);
        let store = self.store.clone();
        let r = blocking(move || store.sessions().refund_turn(&sid).map_err(store_err)).await;
        if let Err(e) = r {
            tracing::warn!(task_id = %task.id, error = %e.body.message, "could not refund a session turn");
        }
    }

    /// KV bytes per context token of the model `pool_id` serves now (cached per model file).
    async fn kv_bytes_per_token(&self, pools: &PoolManager, pool_id: &str) -> Option<u64> {
        let path = pools.pool(pool_id)?.config().model.clone()?;
        if let Some(v) = self
            .kv_per_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&path)
        {
            return *v;
        }
        let p = path.clone();
        let v = tokio::task::spawn_blocking(move || {
            orch_pool_manager::gguf::kv_bytes_per_token(std::path::Path::new(&p))
        })
        .await
        .ok()
        .flatten();
        self.kv_per_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path, v);
        v
    }

    /// Charges a finished task to its session, pins the session to the replica and slot the
    /// engine reported, updates its KV bytes and warmth, then releases its reservation.
    pub async fn settle(&self, pools: &PoolManager, task: &Arc<Task>) {
        let Some(b) = task.ext.session() else { return };
        let sid = b.session_id.clone();
        if let Some(saved) = &b.restore {
            // Read back (or not) before the task ran: the file is spent either way.
            self.kv.discard(&saved.file);
        }
        let outcome = task.ext.outcome();
        let st = task.status();
        let tokens_out = outcome
            .as_ref()
            .and_then(|o| o.tokens_out)
            .unwrap_or(st.tokens_out);
        let tokens_in = outcome.as_ref().and_then(|o| o.tokens_in).unwrap_or(0);
        let time_ms = match (st.started_ms, st.finished_ms) {
            (Some(s), Some(f)) => f.saturating_sub(s),
            _ => 0,
        };
        let cost = task_cost(tokens_in, tokens_out);
        let per_token = match &outcome {
            Some(_) => self.kv_bytes_per_token(pools, &task.pool_id).await,
            None => None,
        };
        if let Some(w) = outcome.as_ref().and_then(EngineOutcome::kv_warmth) {
            self.lock().warmth.insert(sid.clone(), w);
        }
        let store = self.store.clone();
        let sid2 = sid.clone();
        let r = blocking(move || {
            let sessions = store.sessions();
            let s = match sessions.charge(&sid2, tokens_out, time_ms, cost) {
                Ok(s) => s,
                // Evicted or expired meanwhile: nothing to charge.
                Err(StoreError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(store_err(e)),
            };
            // The idle TTL counts from the end of the session's last task.
            sessions.refresh(&sid2, now_ms()).map_err(store_err)?;
            if let Some(o) = &outcome {
                if let Some(slot) = o.slot {
                    sessions
                        .set_pin(&sid2, Some(&o.replica_id), Some(slot))
                        .map_err(store_err)?;
                }
                if let (Some(per), Some(held)) = (per_token, o.tokens_cached) {
                    let target = held.saturating_mul(per);
                    if target > s.kv_bytes {
                        sessions
                            .add_kv_bytes(&sid2, target - s.kv_bytes)
                            .map_err(store_err)?;
                    }
                }
            }
            Ok(())
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(session_id = %sid, task_id = %task.id, error = %e.body.message, "charging the session failed");
        }
        self.release(&sid, &task.id);
        self.settled.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// KV warmth of a session's last finished turn (0 when unknown, e.g. after a restart: the
    /// engines restarted too, so the cache is cold).
    pub fn warmth(&self, sid: &str) -> f64 {
        self.lock().warmth.get(sid).copied().unwrap_or(0.0)
    }

    /// Frees the engine slot holding `session`'s KV, unless another live session is now pinned
    /// to the same replica and slot (then the cache is that session's). Returns whether the
    /// engine confirmed the erase.
    pub async fn free_slot(&self, pools: &PoolManager, session: &orch_store::Session) -> bool {
        self.kv.forget(&session.id);
        let (Some(rid), Some(slot)) = (session.replica_id.clone(), session.slot) else {
            return false;
        };
        let store = self.store.clone();
        let me = session.id.clone();
        let (rid2, now) = (rid.clone(), now_ms());
        let shared = blocking(move || {
            Ok(store
                .sessions()
                .list()
                .map_err(store_err)?
                .into_iter()
                .any(|o| {
                    o.id != me
                        && !o.is_expired(now)
                        && o.replica_id.as_deref() == Some(rid2.as_str())
                        && o.slot == Some(slot)
                }))
        })
        .await
        .unwrap_or(false);
        if shared {
            tracing::info!(session_id = %session.id, replica_id = %rid, slot, "slot now holds another session's KV; not erased");
            return false;
        }
        let adapter = pools
            .pools()
            .iter()
            .flat_map(|p| p.replicas())
            .find(|r| r.status.id == rid)
            .and_then(|r| r.adapter);
        let Some(adapter) = adapter else {
            tracing::info!(session_id = %session.id, replica_id = %rid, "replica gone; nothing to erase");
            return false;
        };
        match adapter.erase_slot(slot).await {
            Ok(()) => {
                tracing::info!(session_id = %session.id, replica_id = %rid, slot, "session KV freed (slot erased)");
                true
            }
            Err(e) => {
                tracing::warn!(session_id = %session.id, replica_id = %rid, slot, error = %e, "erasing the session's slot failed");
                false
            }
        }
    }

    /// Removes a session now and frees its slot.
    pub async fn evict(
        &self,
        pools: &PoolManager,
        sid: &str,
    ) -> Result<orch_api_types::SessionEvicted, ServiceError> {
        let store = self.store.clone();
        let id = sid.to_owned();
        let s = blocking(move || store.sessions().evict(&id).map_err(store_err)).await?;
        {
            let mut a = self.lock();
            a.warmth.remove(sid);
            a.tombstones.remove(sid);
        }
        let slot_erased = self.free_slot(pools, &s).await;
        tracing::info!(session_id = %sid, slot_erased, "session evicted");
        Ok(orch_api_types::SessionEvicted {
            session_id: s.id,
            replica_id: s.replica_id,
            slot: s.slot,
            slot_erased,
        })
    }

    /// Forgets expired session ids older than the tombstone period.
    pub fn prune_tombstones(&self) {
        let now = now_ms();
        self.lock()
            .tombstones
            .retain(|_, at| now.saturating_sub(*at) < TOMBSTONE_MS);
    }

    /// Removes the sessions past their TTL and frees their engine slots.
    pub async fn expire_once(&self, pools: &PoolManager) {
        let store = self.store.clone();
        let now = now_ms();
        // Sessions past their TTL, except those with a task still running (they are refreshed
        // when it ends).
        let due: Vec<String> =
            match blocking(move || store.sessions().list().map_err(store_err)).await {
                Ok(all) => all
                    .into_iter()
                    .filter(|s| s.is_expired(now) && !self.lock().in_flight(&s.id))
                    .map(|s| s.id)
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e.body.message, "session expiry failed");
                    return;
                }
            };
        if due.is_empty() {
            return;
        }
        let store = self.store.clone();
        let expired = match blocking(move || {
            let sessions = store.sessions();
            let mut out = Vec::new();
            for id in due {
                match sessions.evict(&id) {
                    Ok(s) => out.push(s),
                    Err(StoreError::NotFound { .. }) => {}
                    Err(e) => return Err(store_err(e)),
                }
            }
            Ok(out)
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!(error = %e.body.message, "session expiry failed");
                return;
            }
        };
        {
            let mut a = self.lock();
            for s in &expired {
                a.tombstones.insert(s.id.clone(), now);
                a.warmth.remove(&s.id);
            }
        }
        for s in expired {
            let erased = self.free_slot(pools, &s).await;
            tracing::info!(session_id = %s.id, turns = s.turns, slot_erased = erased, "session expired");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmth_is_share_of_prompt_reused() {
        let o = |tin, cached, out| EngineOutcome {
            tokens_in: Some(tin),
            tokens_cached: Some(cached),
            tokens_out: Some(out),
            ..EngineOutcome::default()
        };
        // Cold: the whole 10-token prompt was evaluated.
        assert_eq!(o(10, 18, 8).kv_warmth(), Some(0.0));
        // Warm: 30-token prompt, 6 evaluated, 24 reused.
        let w = o(6, 38, 8).kv_warmth().unwrap();
        assert!((w - 0.8).abs() < 1e-9);
        assert_eq!(o(0, 0, 0).kv_warmth(), Some(0.0));
        assert_eq!(EngineOutcome::default().kv_warmth(), None);
    }
}
