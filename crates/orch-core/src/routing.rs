//! Routing arithmetic: which pool a task goes to and which replica runs it. Both pick the least
//! loaded candidate, load being work (queued + running) per slot, so a pool or replica with
//! more slots takes proportionally more work.

/// Load of a candidate with `work` tasks (queued plus running) on `slots` slots, comparable
/// across candidates: `work / slots`, scaled to an integer (slots of 0 count as 1).
pub fn load_per_slot(work: usize, slots: usize) -> usize {
    work.saturating_mul(1024) / slots.max(1)
}

/// A pool a task may be admitted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolCandidate<'a> {
    /// Pool id (the final tie-breaker, so equal pools are chosen deterministically).
    pub id: &'a str,
    /// Tasks queued plus running on the pool.
    pub work: usize,
    /// Slots of the pool's ready replicas.
    pub ready_slots: usize,
    /// Whether a replica of the pool runs on the device the task prefers.
    pub on_preferred_device: bool,
}

/// The index of the pool to admit to: one on the preferred device if any, else the least
/// loaded per slot, ties broken by id. `None` for no candidates.
pub fn choose_pool(candidates: &[PoolCandidate<'_>]) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .min_by_key(|(_, c)| {
            (
                !c.on_preferred_device,
                load_per_slot(c.work, c.ready_slots),
                c.id,
            )
        })
        .map(|(i, _)| i)
}

/// A ready replica the dispatcher may send the next task to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaCandidate<'a> {
    /// Replica id.
    pub id: &'a str,
    /// Tasks running on it.
    pub in_flight: usize,
    /// Its engine slots.
    pub slots: u32,
}

/// The index of the replica to run the next task on: the `preferred` one (holding the task's
/// session KV) whenever it has a free slot, else the least loaded per slot among those with a
/// free slot (first wins a tie). `None` when every replica is full.
pub fn choose_replica(
    candidates: &[ReplicaCandidate<'_>],
    preferred: Option<&str>,
) -> Option<usize> {
    let free = |c: &ReplicaCandidate<'_>| c.in_flight < c.slots as usize;
    if let Some(i) = preferred.and_then(|p| candidates.iter().position(|c| c.id == p && free(c))) {
        return Some(i);
    }
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| free(c))
        .min_by_key(|(_, c)| load_per_slot(c.in_flight, c.slots as usize))
        .map(|(i, _)| i)
}

/// The model a `name` no pool serves is aliased to by `aliases` (name or glob → model): an
/// exact name first, then the longest matching glob (ties: the first in order).
pub fn alias_for<'a>(
    name: &str,
    aliases: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<&'a str> {
    let mut best: Option<(usize, &'a str)> = None;
    for (pattern, to) in aliases {
        if pattern == name {
            return Some(to);
        }
        let globby = pattern.contains(['*', '?']);
        if globby
            && glob_match(pattern.as_bytes(), name.as_bytes())
            && best.is_none_or(|(len, _)| pattern.len() > len)
        {
            best = Some((pattern.len(), to));
        }
    }
    best.map(|(_, to)| to)
}

/// Whether `name` matches `pattern` (`*` any run of bytes, `?` one byte; the rest literal).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    // Iterative with one backtrack point: linear in practice, never exponential.
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// What an agent-facing door does with a request's `max_tokens` in a slot's context (agents
/// send their own model's maximum, e.g. 32 000): clamp it to what the prompt leaves, as
/// llama-server does, or refuse a prompt that leaves nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextFit {
    /// The task may generate `max_tokens`; `clamped_from` is the request's when it was lower.
    Fits {
        /// Tokens the task may generate.
        max_tokens: u32,
        /// The requested `max_tokens`, when clamped.
        clamped_from: Option<u32>,
    },
    /// The prompt alone fills the context.
    TooLong,
}

/// [`ContextFit`] for `requested` tokens after a prompt of (at most) `prompt` tokens in a
/// context of `limit` tokens.
pub fn context_fit(requested: u32, limit: u32, prompt: u32) -> ContextFit {
    if prompt >= limit {
        return ContextFit::TooLong;
    }
    let room = limit - prompt;
    if requested > room {
        ContextFit::Fits {
            max_tokens: room,
            clamped_from: Some(requested),
        }
    } else {
        ContextFit::Fits {
            max_tokens: requested,
            clamped_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn pool_with_more_slots_takes_more_work() {
        let c = [
            PoolCandidate {
                id: "a",
                work: 2,
                ready_slots: 1,
                on_preferred_device: false,
            },
            PoolCandidate {
                id: "b",
                work: 3,
                ready_slots: 4,
                on_preferred_device: false,
            },
        ];
        assert_eq!(choose_pool(&c), Some(1));
    }

    #[test]
    fn preferred_device_wins_over_load() {
        let c = [
            PoolCandidate {
                id: "a",
                work: 0,
                ready_slots: 1,
                on_preferred_device: false,
            },
            PoolCandidate {
                id: "b",
                work: 9,
                ready_slots: 1,
                on_preferred_device: true,
            },
        ];
        assert_eq!(choose_pool(&c), Some(1));
    }

    #[test]
    fn equal_pools_tie_break_by_id() {
        let c = [
            PoolCandidate {
                id: "z",
                work: 1,
                ready_slots: 2,
                on_preferred_device: false,
            },
            PoolCandidate {
                id: "m",
                work: 1,
                ready_slots: 2,
                on_preferred_device: false,
            },
        ];
        assert_eq!(choose_pool(&c), Some(1));
        assert_eq!(choose_pool(&[]), None);
    }

    #[test]
    fn preferred_replica_only_when_it_has_a_free_slot() {
        let c = [
            ReplicaCandidate {
                id: "r0",
                in_flight: 0,
                slots: 2,
            },
            ReplicaCandidate {
                id: "r1",
                in_flight: 1,
                slots: 2,
            },
        ];
        assert_eq!(choose_replica(&c, Some("r1")), Some(1));
        let full = [
            ReplicaCandidate {
                id: "r0",
                in_flight: 0,
                slots: 2,
            },
            ReplicaCandidate {
                id: "r1",
                in_flight: 2,
                slots: 2,
            },
        ];
        assert_eq!(choose_replica(&full, Some("r1")), Some(0));
        let none = [ReplicaCandidate {
            id: "r0",
            in_flight: 1,
            slots: 1,
        }];
        assert_eq!(choose_replica(&none, None), None);
    }

    fn pools() -> impl Strategy<Value = Vec<(usize, usize, bool)>> {
        prop::collection::vec((0usize..64, 0usize..8, any::<bool>()), 0..8)
    }

    fn replicas() -> impl Strategy<Value = Vec<(usize, u32)>> {
        prop::collection::vec((0usize..10, 0u32..6), 0..8)
    }

    proptest! {
        /// The chosen pool is never beaten: no other candidate is on the preferred device when
        /// it is not, and none on the same footing is less loaded.
        #[test]
        fn chosen_pool_is_minimal(raw in pools()) {
            let ids: Vec<String> = (0..raw.len()).map(|i| format!("p{i}")).collect();
            let c: Vec<PoolCandidate<'_>> = raw.iter().zip(&ids).map(|(&(work, ready_slots, pref), id)| {
                PoolCandidate { id, work, ready_slots, on_preferred_device: pref }
            }).collect();
            match choose_pool(&c) {
                None => prop_assert!(c.is_empty()),
                Some(i) => {
                    let w = &c[i];
                    for o in &c {
                        prop_assert!(w.on_preferred_device || !o.on_preferred_device);
                        if o.on_preferred_device == w.on_preferred_device {
                            prop_assert!(load_per_slot(w.work, w.ready_slots) <= load_per_slot(o.work, o.ready_slots));
                        }
                    }
                }
            }
        }

        /// A replica is chosen exactly when one has a free slot; the choice has a free slot,
        /// is the preferred one when that is free, and is otherwise least loaded.
        #[test]
        fn chosen_replica_has_room_and_is_minimal(raw in replicas(), pref in prop::option::of(0usize..8)) {
            let ids: Vec<String> = (0..raw.len()).map(|i| format!("r{i}")).collect();
            let c: Vec<ReplicaCandidate<'_>> = raw.iter().zip(&ids).map(|(&(in_flight, slots), id)| {
                ReplicaCandidate { id, in_flight, slots }
            }).collect();
            let preferred = pref.map(|p| format!("r{p}"));
            let any_free = c.iter().any(|r| r.in_flight < r.slots as usize);
            match choose_replica(&c, preferred.as_deref()) {
                None => prop_assert!(!any_free),
                Some(i) => {
                    let w = &c[i];
                    prop_assert!(w.in_flight < w.slots as usize);
                    let pref_free = c.iter().find(|r| Some(r.id) == preferred.as_deref()).filter(|r| r.in_flight < r.slots as usize);
                    match pref_free {
                        Some(p) => prop_assert_eq!(p.id, w.id),
                        None => for o in c.iter().filter(|r| r.in_flight < r.slots as usize) {
                            prop_assert!(load_per_slot(w.in_flight, w.slots as usize) <= load_per_slot(o.in_flight, o.slots as usize));
                        },
                    }
                }
            }
        }
    }

    #[test]
    fn aliases_exact_then_longest_glob() {
        let a = [
            ("gpt-*", "small"),
            ("claude-*", "big"),
            ("claude-3-haiku*", "small"),
            ("claude-sonnet-4", "exact"),
        ];
        assert_eq!(alias_for("claude-sonnet-4", a), Some("exact"));
        assert_eq!(alias_for("claude-3-haiku-2024", a), Some("small"));
        assert_eq!(alias_for("claude-opus-4-1", a), Some("big"));
        assert_eq!(alias_for("gpt-5-codex", a), Some("small"));
        assert_eq!(alias_for("qwen", a), None);
        assert_eq!(alias_for("a?c", [("a?c", "x")]), Some("x"));
        assert_eq!(alias_for("abc", [("a?c", "x")]), Some("x"));
        assert_eq!(alias_for("ac", [("a?c", "x")]), None);
        assert_eq!(alias_for("anything", [("*", "x")]), Some("x"));
    }

    #[test]
    fn context_fit_clamps_and_refuses() {
        assert_eq!(
            context_fit(32_000, 8192, 4100),
            ContextFit::Fits {
                max_tokens: 4092,
                clamped_from: Some(32_000)
            }
        );
        assert_eq!(
            context_fit(64, 8192, 4100),
            ContextFit::Fits {
                max_tokens: 64,
                clamped_from: None
            }
        );
        assert_eq!(context_fit(1, 8192, 8192), ContextFit::TooLong);
    }

    proptest! {
        /// A glob without wildcards matches exactly itself; `*` + s + `*` matches any name
        /// containing s.
        #[test]
        fn globs_match_like_their_definition(name in "[a-c-]{0,8}", s in "[a-c]{0,3}") {
            prop_assert_eq!(glob_match(name.as_bytes(), name.as_bytes()), true);
            let contains = format!("*{s}*");
            prop_assert_eq!(glob_match(contains.as_bytes(), name.as_bytes()), name.contains(&s));
        }

        /// A fit never lets prompt + output exceed the context, and clamps only when needed.
        #[test]
        fn fits_stay_within_the_context(req in 1u32..100_000, limit in 1u32..100_000, prompt in 0u32..100_000) {
            match context_fit(req, limit, prompt) {
                ContextFit::TooLong => prop_assert!(prompt >= limit),
                ContextFit::Fits { max_tokens, clamped_from } => {
                    prop_assert!(max_tokens >= 1 && prompt + max_tokens <= limit);
                    prop_assert_eq!(clamped_from.is_some(), req > limit - prompt);
                }
            }
        }
    }
}
