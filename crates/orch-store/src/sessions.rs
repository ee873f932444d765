//! Sessions: TTL, turn limits, engine-slot pinning, KV size and per-session budgets.
//!
//! A session's TTL is an idle timeout: it expires `ttl_ms` after its last use
//! (`last_used_ms + ttl_ms <= now_ms`). `ttl_ms` and `max_turns` are fixed when the session is
//! created by its first [`Sessions::touch`]; later touches do not change them.

use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::{Deserialize, Serialize};

use crate::error::{to_i64, to_u64, DbContext, Result, StoreError};
use crate::util::validate_id;
use crate::Store;

/// Optional limits for one session; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Most tokens (generated) the session may use.
    pub tokens: Option<u64>,
    /// Most engine time in milliseconds.
    pub time_ms: Option<u64>,
    /// Most cost, in whatever unit the daemon prices tasks.
    pub cost: Option<f64>,
}

/// What a session has used so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Spend {
    /// Tokens charged.
    pub tokens: u64,
    /// Engine time charged, ms.
    pub time_ms: u64,
    /// Cost charged.
    pub cost: f64,
}

/// What is left of a budget; `None` for a dimension without a limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BudgetRemaining {
    /// Tokens left.
    pub tokens: Option<u64>,
    /// Milliseconds left.
    pub time_ms: Option<u64>,
    /// Cost left.
    pub cost: Option<f64>,
}

impl BudgetRemaining {
    /// The remainder of `budget` after `spent` (never negative).
    pub fn of(budget: &Budget, spent: &Spend) -> Self {
        BudgetRemaining {
            tokens: budget.tokens.map(|m| m.saturating_sub(spent.tokens)),
            time_ms: budget.time_ms.map(|m| m.saturating_sub(spent.time_ms)),
            cost: budget.cost.map(|m| (m - spent.cost).max(0.0)),
        }
    }
}

/// A conversation whose KV cache lives in one engine slot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Client-chosen id, `[A-Za-z0-9._:-]{1,128}`.
    pub id: String,
    /// Creation time (ms since the Unix epoch).
    pub created_ms: u64,
    /// Time of the last turn (ms since the Unix epoch).
    pub last_used_ms: u64,
    /// Idle timeout.
    pub ttl_ms: u64,
    /// Turns taken, including the one that created the session.
    pub turns: u32,
    /// Most turns allowed.
    pub max_turns: u32,
    /// KV cache size attributed to the session.
    pub kv_bytes: u64,
    /// Replica holding the KV, once pinned.
    pub replica_id: Option<String>,
    /// Engine slot (llama-server `id_slot`) holding the KV, once pinned.
    pub slot: Option<u32>,
    /// Limits, if any.
    pub budget: Option<Budget>,
    /// Usage so far.
    pub spent: Spend,
}

impl Session {
    /// When the session expires unless used again.
    pub fn expires_at_ms(&self) -> u64 {
        self.last_used_ms.saturating_add(self.ttl_ms)
    }

    /// Whether the session has expired at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms() <= now_ms
    }

    /// Milliseconds until expiry (0 once expired).
    pub fn ttl_ms_remaining(&self, now_ms: u64) -> u64 {
        self.expires_at_ms().saturating_sub(now_ms)
    }

    /// What is left of the budget, or `None` when the session has none.
    pub fn budget_remaining(&self) -> Option<BudgetRemaining> {
        self.budget
            .as_ref()
            .map(|b| BudgetRemaining::of(b, &self.spent))
    }
}

/// Why [`Sessions::touch`] refused a turn.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The session already used all its turns. It stays (readable, pinned) until it expires
    /// or is evicted; further turns are refused.
    #[error("session '{id}' has used all {max_turns} turns; start a new session")]
    TurnsExhausted {
        /// The session.
        id: String,
        /// Its turn limit.
        max_turns: u32,
    },
    /// The session's TTL ran out. It has been removed; `session` is its last state so the
    /// daemon can free its engine slot. A later touch with the same id starts a new session.
    #[error("session '{}' expired {} ms ago; start a new session", .session.id, .expired_ms_ago)]
    Expired {
        /// The removed session.
        session: Box<Session>,
        /// How long ago it expired.
        expired_ms_ago: u64,
    },
    /// A store error (invalid id, database failure).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why [`Sessions::check_budget`] refused a task.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    /// The task would exceed the session's budget (`BUDGET_EXCEEDED`).
    #[error("budget exceeded: {reason}")]
    Exceeded {
        /// What is left.
        remaining: BudgetRemaining,
        /// Which limit is hit, with numbers.
        reason: String,
    },
    /// A store error (unknown session, database failure).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Session operations; obtained from [`Store::sessions`].
#[derive(Clone, Copy)]
pub struct Sessions<'a> {
    pub(crate) store: &'a Store,
}

const SELECT_SESSION: &str = "SELECT id, created_ms, last_used_ms, ttl_ms, turns, max_turns, \
     kv_bytes, replica_id, slot, budget_tokens, budget_time_ms, budget_cost, spent_tokens, \
     spent_time_ms, spent_cost FROM sessions";

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<Session> {
    let budget_tokens: Option<i64> = row.get(9)?;
    let budget_time: Option<i64> = row.get(10)?;
    let budget_cost: Option<f64> = row.get(11)?;
    let budget = if budget_tokens.is_none() && budget_time.is_none() && budget_cost.is_none() {
        None
    } else {
        Some(Budget {
            tokens: budget_tokens.map(to_u64),
            time_ms: budget_time.map(to_u64),
            cost: budget_cost,
        })
    };
    let slot: Option<i64> = row.get(8)?;
    Ok(Session {
        id: row.get(0)?,
        created_ms: to_u64(row.get(1)?),
        last_used_ms: to_u64(row.get(2)?),
        ttl_ms: to_u64(row.get(3)?),
        turns: u32::try_from(row.get::<_, i64>(4)?).unwrap_or(u32::MAX),
        max_turns: u32::try_from(row.get::<_, i64>(5)?).unwrap_or(u32::MAX),
        kv_bytes: to_u64(row.get(6)?),
        replica_id: row.get(7)?,
        slot: slot.and_then(|s| u32::try_from(s).ok()),
        budget,
        spent: Spend {
            tokens: to_u64(row.get(12)?),
            time_ms: to_u64(row.get(13)?),
            cost: row.get(14)?,
        },
    })
}

fn load(tx: &rusqlite::Connection, id: &str) -> Result<Option<Session>> {
    tx.query_row(
        &format!("{SELECT_SESSION} WHERE id = ?1"),
        [id],
        session_from_row,
    )
    .optional()
    .db("reading a session")
}

fn require(tx: &rusqlite::Connection, id: &str) -> Result<Session> {
    load(tx, id)?.ok_or_else(|| StoreError::not_found(format!("session '{id}'")))
}

fn check_cost(what: &str, v: f64) -> Result<()> {
    if !v.is_finite() || v < 0.0 {
        return Err(StoreError::Invalid(format!(
            "{what} must be a finite number >= 0, got {v}"
        )));
    }
    Ok(())
}

impl Sessions<'_> {
    fn write_tx<T>(&self, what: &str, f: impl FnOnce(&Transaction<'_>) -> Result<T>) -> Result<T> {
        let mut conn = self.store.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db(what)?;
        let out = f(&tx)?;
        tx.commit().db(what)?;
        Ok(out)
    }

    /// Take a turn in session `id`, creating it on first use with `ttl_ms` and `max_turns`.
    ///
    /// Creates the session with `turns = 1`, or increments `turns` and sets
    /// `last_used_ms = now_ms`. Refuses with [`SessionError::TurnsExhausted`] once
    /// `turns == max_turns`, and with [`SessionError::Expired`] (removing the session) once its
    /// TTL has run out.
    pub fn touch(
        &self,
        id: &str,
        now_ms: u64,
        ttl_ms: u64,
        max_turns: u32,
    ) -> Result<Session, SessionError> {
        validate_id("session id", id)?;
        if ttl_ms == 0 || max_turns == 0 {
            return Err(StoreError::Invalid(format!(
                "session ttl_ms and max_turns must be > 0 (got {ttl_ms} and {max_turns})"
            ))
            .into());
        }
        let now = to_i64(now_ms, "now_ms")?;
        let ttl = to_i64(ttl_ms, "ttl_ms")?;
        let mut conn = self.store.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .db("starting a session turn")?;
        let result = match load(&tx, id)? {
            None => {
                tx.execute(
                    "INSERT INTO sessions (id, created_ms, last_used_ms, ttl_ms, turns, max_turns) \
                     VALUES (?1, ?2, ?2, ?3, 1, ?4)",
                    params![id, now, ttl, max_turns],
                )
                .db("creating a session")?;
                Ok(Session {
                    id: id.to_string(),
                    created_ms: now_ms,
                    last_used_ms: now_ms,
                    ttl_ms,
                    turns: 1,
                    max_turns,
                    kv_bytes: 0,
                    replica_id: None,
                    slot: None,
                    budget: None,
                    spent: Spend::default(),
                })
            }
            Some(session) if session.is_expired(now_ms) => {
                tx.execute("DELETE FROM sessions WHERE id = ?1", [id])
                    .db("removing an expired session")?;
                let expired_ms_ago = now_ms - session.expires_at_ms();
                Err(SessionError::Expired {
                    session: Box::new(session),
                    expired_ms_ago,
                })
            }
            Some(session) if session.turns >= session.max_turns => {
                Err(SessionError::TurnsExhausted {
                    id: session.id,
                    max_turns: session.max_turns,
                })
            }
            Some(mut session) => {
                tx.execute(
                    "UPDATE sessions SET turns = turns + 1, last_used_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .db("recording a session turn")?;
                session.turns += 1;
                session.last_used_ms = now_ms;
                Ok(session)
            }
        };
        tx.commit().db("committing a session turn")?;
        result
    }

    /// A live session; an unknown or expired one is [`StoreError::NotFound`].
    pub fn get(&self, id: &str, now_ms: u64) -> Result<Session> {
        validate_id("session id", id)?;
        match load(&self.store.conn(), id)? {
            Some(s) if !s.is_expired(now_ms) => Ok(s),
            _ => Err(StoreError::not_found(format!("session '{id}'"))),
        }
    }

    /// Every stored session (expired ones not yet swept included), oldest first.
    pub fn list(&self) -> Result<Vec<Session>> {
        let conn = self.store.conn();
        let mut stmt = conn
            .prepare(&format!("{SELECT_SESSION} ORDER BY created_ms, id"))
            .db("listing sessions")?;
        let rows = stmt
            .query_map([], session_from_row)
            .db("listing sessions")?;
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .db("listing sessions")
    }

    /// Remove a session (expired or not) and return its last state, so the daemon can free
    /// its engine slot. Unknown ids are [`StoreError::NotFound`].
    pub fn evict(&self, id: &str) -> Result<Session> {
        validate_id("session id", id)?;
        self.write_tx("evicting a session", |tx| {
            let session = require(tx, id)?;
            tx.execute("DELETE FROM sessions WHERE id = ?1", [id])
                .db("evicting a session")?;
            Ok(session)
        })
    }

    /// Remove every session expired at `now_ms` and return them (to free their slots).
    pub fn expire(&self, now_ms: u64) -> Result<Vec<Session>> {
        let now = to_i64(now_ms, "now_ms")?;
        self.write_tx("expiring sessions", |tx| {
            let expired = {
                let mut stmt = tx
                    .prepare(&format!(
                        "{SELECT_SESSION} WHERE last_used_ms + ttl_ms <= ?1 ORDER BY id"
                    ))
                    .db("finding expired sessions")?;
                let rows = stmt
                    .query_map([now], session_from_row)
                    .db("finding expired sessions")?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
                    .db("finding expired sessions")?
            };
            tx.execute(
                "DELETE FROM sessions WHERE last_used_ms + ttl_ms <= ?1",
                [now],
            )
            .db("deleting expired sessions")?;
            Ok(expired)
        })
    }

    /// Restart the idle clock of a stored session at `now_ms` (the daemon calls it when a
    /// turn's task ends, and before admitting a turn while another still runs), so the TTL
    /// counts from the session's last activity and a session is not lost while it works.
    /// `last_used_ms` never moves backwards; turns are not counted. This also revives a session
    /// whose TTL ran out but that has not been removed yet. Unknown ids are
    /// [`StoreError::NotFound`].
    pub fn refresh(&self, id: &str, now_ms: u64) -> Result<Session> {
        validate_id("session id", id)?;
        let now = to_i64(now_ms, "now_ms")?;
        self.write_tx("refreshing a session", |tx| {
            let mut s = require(tx, id)?;
            if now_ms > s.last_used_ms {
                tx.execute(
                    "UPDATE sessions SET last_used_ms = ?2 WHERE id = ?1",
                    params![id, now],
                )
                .db("refreshing a session")?;
                s.last_used_ms = now_ms;
            }
            Ok(s)
        })
    }

    /// Give back the turn that [`Sessions::touch`] counted for a task the queue then refused
    /// (a full queue must not use up a session's turns). Never goes below 0. Unknown ids are
    /// [`StoreError::NotFound`].
    pub fn refund_turn(&self, id: &str) -> Result<Session> {
        validate_id("session id", id)?;
        self.write_tx("refunding a session turn", |tx| {
            let mut s = require(tx, id)?;
            if s.turns > 0 {
                tx.execute(
                    "UPDATE sessions SET turns = turns - 1 WHERE id = ?1",
                    params![id],
                )
                .db("refunding a session turn")?;
                s.turns -= 1;
            }
            Ok(s)
        })
    }

    /// Pin the session to the replica and slot holding its KV (`None` clears the pin).
    pub fn set_pin(
        &self,
        id: &str,
        replica_id: Option<&str>,
        slot: Option<u32>,
    ) -> Result<Session> {
        validate_id("session id", id)?;
        if let Some(r) = replica_id {
            validate_id("replica id", r)?;
        }
        self.write_tx("pinning a session", |tx| {
            let mut s = require(tx, id)?;
            tx.execute(
                "UPDATE sessions SET replica_id = ?2, slot = ?3 WHERE id = ?1",
                params![id, replica_id, slot],
            )
            .db("pinning a session")?;
            s.replica_id = replica_id.map(str::to_string);
            s.slot = slot;
            Ok(s)
        })
    }

    /// Add `bytes` to the KV size attributed to the session (saturating).
    pub fn add_kv_bytes(&self, id: &str, bytes: u64) -> Result<Session> {
        validate_id("session id", id)?;
        self.write_tx("updating a session's KV size", |tx| {
            let mut s = require(tx, id)?;
            s.kv_bytes = s.kv_bytes.saturating_add(bytes).min(i64::MAX as u64);
            tx.execute(
                "UPDATE sessions SET kv_bytes = ?2 WHERE id = ?1",
                params![id, to_i64(s.kv_bytes, "kv_bytes")?],
            )
            .db("updating a session's KV size")?;
            Ok(s)
        })
    }

    /// Set or clear the session's budget. Usage so far is kept, so lowering a budget below
    /// what is spent makes the next [`Sessions::check_budget`] fail.
    pub fn set_budget(&self, id: &str, budget: Option<Budget>) -> Result<Session> {
        validate_id("session id", id)?;
        let b = budget.unwrap_or_default();
        if let Some(c) = b.cost {
            check_cost("budget cost", c)?;
        }
        let tokens = b.tokens.map(|t| to_i64(t, "budget tokens")).transpose()?;
        let time = b.time_ms.map(|t| to_i64(t, "budget time_ms")).transpose()?;
        self.write_tx("setting a session budget", |tx| {
            let mut s = require(tx, id)?;
            tx.execute(
                "UPDATE sessions SET budget_tokens = ?2, budget_time_ms = ?3, budget_cost = ?4 \
                 WHERE id = ?1",
                params![id, tokens, time, b.cost],
            )
            .db("setting a session budget")?;
            s.budget =
                budget.filter(|b| b.tokens.is_some() || b.time_ms.is_some() || b.cost.is_some());
            Ok(s)
        })
    }

    /// Check, before enqueueing, that a task estimated at `estimated_tokens` fits the budget.
    ///
    /// Refused when any limit is already used up, or when spent plus estimated tokens exceeds
    /// the token limit. A session without a budget always passes (all remainders `None`).
    /// Expiry is not checked here ([`Sessions::touch`] does that); an unknown session is
    /// [`BudgetError::Store`] with [`StoreError::NotFound`].
    pub fn check_budget(
        &self,
        id: &str,
        estimated_tokens: u64,
    ) -> Result<BudgetRemaining, BudgetError> {
        validate_id("session id", id)?;
        let s = require(&self.store.conn(), id)?;
        let Some(budget) = s.budget else {
            return Ok(BudgetRemaining::default());
        };
        let remaining = BudgetRemaining::of(&budget, &s.spent);
        let mut reasons = Vec::new();
        if let Some(max) = budget.tokens {
            if s.spent.tokens >= max || s.spent.tokens.saturating_add(estimated_tokens) > max {
                reasons.push(format!(
                    "tokens: {} of {max} spent, {} left, task needs about {estimated_tokens}",
                    s.spent.tokens,
                    max.saturating_sub(s.spent.tokens)
                ));
            }
        }
        if let Some(max) = budget.time_ms {
            if s.spent.time_ms >= max {
                reasons.push(format!("time: {} of {max} ms spent", s.spent.time_ms));
            }
        }
        if let Some(max) = budget.cost {
            if s.spent.cost >= max {
                reasons.push(format!("cost: {} of {max} spent", s.spent.cost));
            }
        }
        if reasons.is_empty() {
            Ok(remaining)
        } else {
            Err(BudgetError::Exceeded {
                remaining,
                reason: format!("session '{id}': {}", reasons.join("; ")),
            })
        }
    }

    /// Record what a finished task used; returns the updated session. Charging never fails
    /// because a budget is exceeded (the work is done); the next check refuses instead.
    pub fn charge(&self, id: &str, tokens: u64, time_ms: u64, cost: f64) -> Result<Session> {
        validate_id("session id", id)?;
        check_cost("charged cost", cost)?;
        self.write_tx("charging a session", |tx| {
            let mut s = require(tx, id)?;
            s.spent.tokens = s.spent.tokens.saturating_add(tokens).min(i64::MAX as u64);
            s.spent.time_ms = s.spent.time_ms.saturating_add(time_ms).min(i64::MAX as u64);
            s.spent.cost += cost;
            if !s.spent.cost.is_finite() {
                s.spent.cost = f64::MAX;
            }
            tx.execute(
                "UPDATE sessions SET spent_tokens = ?2, spent_time_ms = ?3, spent_cost = ?4 \
                 WHERE id = ?1",
                params![
                    id,
                    to_i64(s.spent.tokens, "spent tokens")?,
                    to_i64(s.spent.time_ms, "spent time_ms")?,
                    s.spent.cost
                ],
            )
            .db("charging a session")?;
            Ok(s)
        })
    }
}
