//! Making room for a replica when no single GPU has it free (docs/PLACEMENT.md, "Models on
//! demand"): split it across several GPUs, or evict idle `on_demand` models, least recently
//! used first, on the cards where that makes it fit.
//!
//! Order of preference, each only when the one before finds nothing:
//! 1. one GPU as it is (that is [`crate::placement::place`]; repeated here for completeness),
//! 2. a split across the fewest GPUs as they are (when the pool allows splitting),
//! 3. one GPU after evicting idle models on it,
//! 4. a split after evicting idle models.
//!
//! Keeping other models loaded is preferred over a single-card layout: an eviction costs a
//! later load (seconds), a split costs some speed.
//!
//! A split gives every card the per-card overhead (CUDA context, compute buffers) and divides
//! the rest (weights and KV cache) in proportion to what each card has free beyond that
//! overhead; llama.cpp's `--tensor-split` takes those proportions.

use std::collections::HashSet;
use std::fmt::Write as _;

use serde::Serialize;

use crate::bytes::gib_or_mib as gib;

/// One GPU as a room planner sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Card {
    /// Device index.
    pub index: u32,
    /// Device name, for reasons.
    pub name: String,
    /// Bytes free for a new replica now: free − reserved − headroom (as in `place`).
    pub available: u64,
    /// Whether the pool's device mask allows it.
    pub allowed: bool,
}

/// A replica holding VRAM, as the ledger records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resident {
    /// Replica id (unique).
    pub id: String,
    /// Its pool, for reasons.
    pub pool_id: String,
    /// `(device, bytes)` the ledger holds for it; several for a split replica.
    pub parts: Vec<(u32, u64)>,
    /// When it last served (any monotonic unit; lower is longer ago).
    pub last_used: u64,
    /// Whether it may be evicted: an idle `on_demand` replica.
    pub evictable: bool,
    /// Why not, when it may not (`load: always`, `1 running`, `3 queued`), for reasons.
    pub why_not: Option<String>,
}

/// What the new replica needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Need {
    /// Footprint on one GPU (see `estimate_footprint`), overhead included.
    pub bytes: u64,
    /// The part of `bytes` every GPU of a split needs again (compute buffers, CUDA context).
    pub per_card_overhead: u64,
    /// Whether the pool may be split.
    pub split: bool,
}

impl Need {
    /// What a split divides: `bytes` less one overhead.
    pub fn divisible(&self) -> u64 {
        self.bytes.saturating_sub(self.per_card_overhead)
    }
}

/// One GPU's share of a split replica.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SplitPart {
    /// Device index.
    pub device: u32,
    /// Bytes reserved on it (its share plus the per-card overhead).
    pub bytes: u64,
    /// Its share of the divisible part, 0..1; the shares of a split sum to 1.
    pub share: f64,
}

/// Where the new replica goes.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", content = "devices", rename_all = "snake_case")]
pub enum Layout {
    /// One GPU.
    Single(u32),
    /// Several GPUs, largest share first.
    Split(Vec<SplitPart>),
}

impl Layout {
    /// `(device, bytes)` to reserve for a replica of `need`.
    pub fn reservations(&self, need: &Need) -> Vec<(u32, u64)> {
        match self {
            Self::Single(d) => vec![(*d, need.bytes)],
            Self::Split(parts) => parts.iter().map(|p| (p.device, p.bytes)).collect(),
        }
    }

    /// The devices used, in layout order.
    pub fn devices(&self) -> Vec<u32> {
        match self {
            Self::Single(d) => vec![*d],
            Self::Split(parts) => parts.iter().map(|p| p.device).collect(),
        }
    }
}

/// A way to fit the new replica.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoomPlan {
    /// Where it goes.
    pub layout: Layout,
    /// Replica ids to evict first, least recently used first.
    pub evict: Vec<String>,
    /// For people: why this layout and these evictions.
    pub reason: String,
}

/// The fewest allowed GPUs that together hold `need` (at least two), with the divisible part
/// in proportion to what each has beyond the per-card overhead. `None` when no set fits.
pub fn plan_split(cards: &[Card], need: &Need) -> Option<Vec<SplitPart>> {
    let oh = need.per_card_overhead;
    let w = need.divisible();
    let mut usable: Vec<(u32, u64)> = cards
        .iter()
        .filter(|c| c.allowed && c.available > oh)
        .map(|c| (c.index, c.available - oh))
        .collect();
    // Biggest first (lower index on ties), so the fewest cards are used.
    usable.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut sum: u128 = 0;
    for k in 1..=usable.len() {
        sum += u128::from(usable[k - 1].1);
        if k < 2 || sum < u128::from(w) {
            continue;
        }
        let parts = usable[..k]
            .iter()
            .map(|&(device, u)| {
                // ceil(w·u/sum) ≤ u because w ≤ sum; the shares then cover at least w.
                let share_bytes = (u128::from(w) * u128::from(u)).div_ceil(sum);
                SplitPart {
                    device,
                    bytes: u64::try_from(share_bytes)
                        .unwrap_or(u64::MAX)
                        .saturating_add(oh),
                    share: u as f64 / sum as f64,
                }
            })
            .collect();
        return Some(parts);
    }
    None
}

/// The best single allowed GPU with room for `bytes`: most available, then lower index.
fn best_single(cards: &[Card], bytes: u64) -> Option<u32> {
    cards
        .iter()
        .filter(|c| c.allowed && c.available >= bytes)
        .max_by(|a, b| a.available.cmp(&b.available).then(b.index.cmp(&a.index)))
        .map(|c| c.index)
}

/// `cards` with the parts of `victims` freed.
fn freed(cards: &[Card], residents: &[Resident], victims: &HashSet<&str>) -> Vec<Card> {
    let mut out = cards.to_vec();
    for r in residents.iter().filter(|r| victims.contains(r.id.as_str())) {
        for &(d, b) in &r.parts {
            if let Some(c) = out.iter_mut().find(|c| c.index == d) {
                c.available = c.available.saturating_add(b);
            }
        }
    }
    out
}

/// Evictable residents, least recently used first (id breaks ties, for determinism).
fn lru(residents: &[Resident], on: impl Fn(&Resident) -> bool) -> Vec<&Resident> {
    let mut v: Vec<&Resident> = residents.iter().filter(|r| r.evictable && on(r)).collect();
    v.sort_by(|a, b| a.last_used.cmp(&b.last_used).then(a.id.cmp(&b.id)));
    v
}

/// How to fit a replica of `need` onto `cards` given the `residents` (see the module docs).
/// `Err` says, for people, why nothing works: the closest card and what holds the memory.
pub fn plan_room(cards: &[Card], residents: &[Resident], need: &Need) -> Result<RoomPlan, String> {
    let size = gib(need.bytes);
    if let Some(d) = best_single(cards, need.bytes) {
        return Ok(RoomPlan {
            layout: Layout::Single(d),
            evict: Vec::new(),
            reason: format!("GPU {d} has room for {size}"),
        });
    }
    if need.split {
        if let Some(parts) = plan_split(cards, need) {
            return Ok(RoomPlan {
                reason: split_reason(&parts, need, &[]),
                layout: Layout::Split(parts),
                evict: Vec::new(),
            });
        }
    }
    // One GPU after evicting the least recently used idle models on it.
    let mut best: Option<(u64, usize, u64, u32, Vec<String>)> = None;
    for c in cards.iter().filter(|c| c.allowed) {
        let mut avail = c.available;
        let mut victims = Vec::new();
        let mut newest = 0u64;
        let mut freed_bytes = 0u64;
        for r in lru(residents, |r| r.parts.iter().any(|p| p.0 == c.index)) {
            if avail >= need.bytes {
                break;
            }
            let b: u64 = r.parts.iter().filter(|p| p.0 == c.index).map(|p| p.1).sum();
            avail = avail.saturating_add(b);
            freed_bytes = freed_bytes.saturating_add(b);
            newest = newest.max(r.last_used);
            victims.push(r.id.clone());
        }
        if avail < need.bytes {
            continue;
        }
        // Evict the oldest models possible, then as few as possible, then as little.
        let key = (newest, victims.len(), freed_bytes, c.index);
        if best.as_ref().is_none_or(|b| key < (b.0, b.1, b.2, b.3)) {
            best = Some((key.0, key.1, key.2, key.3, victims));
        }
    }
    if let Some((_, _, _, d, evict)) = best {
        return Ok(RoomPlan {
            reason: format!(
                "GPU {d} has room for {size} after evicting {} (least recently used idle on_demand model(s) there)",
                evict.join(", ")
            ),
            layout: Layout::Single(d),
            evict,
        });
    }
    // A split after evicting idle models, least recently used first, on allowed cards.
    if need.split {
        let allowed: HashSet<u32> = cards
            .iter()
            .filter(|c| c.allowed)
            .map(|c| c.index)
            .collect();
        let order = lru(residents, |r| {
            r.parts.iter().any(|p| allowed.contains(&p.0))
        });
        let mut victims: HashSet<&str> = HashSet::new();
        for r in &order {
            victims.insert(r.id.as_str());
            let after = freed(cards, residents, &victims);
            let Some(parts) = plan_split(&after, need) else {
                continue;
            };
            // Keep only the victims on the cards the split uses: the others freed nothing
            // it needs.
            let used: HashSet<u32> = parts.iter().map(|p| p.device).collect();
            let kept: HashSet<&str> = order
                .iter()
                .filter(|v| victims.contains(v.id.as_str()))
                .filter(|v| v.parts.iter().any(|p| used.contains(&p.0)))
                .map(|v| v.id.as_str())
                .collect();
            let mut only_used = freed(cards, residents, &kept);
            for c in &mut only_used {
                c.allowed = c.allowed && used.contains(&c.index);
            }
            let parts = plan_split(&only_used, need).unwrap_or(parts);
            let evict: Vec<String> = order
                .iter()
                .filter(|v| kept.contains(v.id.as_str()))
                .map(|v| v.id.clone())
                .collect();
            return Ok(RoomPlan {
                reason: split_reason(&parts, need, &evict),
                layout: Layout::Split(parts),
                evict,
            });
        }
    }
    Err(no_room(cards, residents, need))
}

fn split_reason(parts: &[SplitPart], need: &Need, evict: &[String]) -> String {
    let mut s = format!(
        "no single GPU has room for {}; split across {} GPUs ({} overhead each):",
        gib(need.bytes),
        parts.len(),
        gib(need.per_card_overhead)
    );
    for p in parts {
        let _ = write!(
            s,
            " GPU {} {} ({:.0} %)",
            p.device,
            gib(p.bytes),
            p.share * 100.0
        );
    }
    if !evict.is_empty() {
        let _ = write!(s, ", after evicting {}", evict.join(", "));
    }
    s
}

fn no_room(cards: &[Card], residents: &[Resident], need: &Need) -> String {
    let size = gib(need.bytes);
    let Some(best) = cards
        .iter()
        .filter(|c| c.allowed)
        .max_by(|a, b| a.available.cmp(&b.available).then(b.index.cmp(&a.index)))
    else {
        return format!(
            "no GPU to place {size}: the pool's devices allow none of the visible GPUs"
        );
    };
    let mut s = format!(
        "no room for {size}: best is GPU {} '{}' with {} available",
        best.index,
        best.name,
        gib(best.available)
    );
    let held: Vec<String> = residents
        .iter()
        .filter(|r| {
            r.parts
                .iter()
                .any(|p| cards.iter().any(|c| c.allowed && c.index == p.0))
        })
        .map(|r| {
            let bytes: u64 = r.parts.iter().map(|p| p.1).sum();
            let why = if r.evictable {
                "idle".to_owned()
            } else {
                r.why_not.clone().unwrap_or_else(|| "busy".into())
            };
            format!("{} ({}, {why})", r.pool_id, gib(bytes))
        })
        .collect();
    if held.is_empty() {
        s.push_str("; nothing to evict");
    } else {
        let _ = write!(s, "; held by {}", held.join(", "));
    }
    if !need.split {
        s.push_str("; the pool has split: never");
    }
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    fn card(index: u32, available_mib: u64) -> Card {
        Card {
            index,
            name: format!("G{index}"),
            available: available_mib * MIB,
            allowed: true,
        }
    }

    fn res(id: &str, parts: &[(u32, u64)], last_used: u64, evictable: bool) -> Resident {
        Resident {
            id: id.into(),
            pool_id: id.trim_end_matches("-r0").into(),
            parts: parts.iter().map(|&(d, m)| (d, m * MIB)).collect(),
            last_used,
            evictable,
            why_not: (!evictable).then(|| "1 running".into()),
        }
    }

    fn need(mib: u64, split: bool) -> Need {
        Need {
            bytes: mib * MIB,
            per_card_overhead: 100 * MIB,
            split,
        }
    }

    #[test]
    fn split_uses_the_fewest_cards_proportional_to_what_is_free() {
        // 1000 MiB needed: 900 divisible + 100 overhead per card.
        let cards = [card(0, 700), card(1, 400), card(2, 300)];
        let parts = plan_split(&cards, &need(1000, true)).unwrap();
        assert_eq!(parts.len(), 2, "{parts:?}");
        // Beyond the overhead: 600 and 300 → two thirds and one third of 900.
        assert_eq!((parts[0].device, parts[1].device), (0, 1));
        assert_eq!(parts[0].bytes, 700 * MIB);
        assert_eq!(parts[1].bytes, 400 * MIB);
        assert!((parts[0].share - 2.0 / 3.0).abs() < 1e-9);
        // The per-card overhead is counted on every card: 2 × 100 + 900 > 550 + 500, though
        // 1000 alone would fit the sum.
        assert!(plan_split(&[card(0, 550), card(1, 500)], &need(1000, true)).is_none());
        assert!(plan_split(&[card(0, 600), card(1, 500)], &need(1000, true)).is_some());
        // A mask leaves cards out.
        let mut masked = [card(0, 700), card(1, 400), card(2, 400)];
        masked[1].allowed = false;
        let parts = plan_split(&masked, &need(1000, true)).unwrap();
        assert_eq!(parts.iter().map(|p| p.device).collect::<Vec<_>>(), [0, 2]);
    }

    #[test]
    fn room_prefers_one_card_then_a_split_then_evicting_the_least_recently_used() {
        let cards = [card(0, 500), card(1, 500)];
        // Fits one card as it is.
        let p = plan_room(&cards, &[], &need(400, true)).unwrap();
        assert_eq!((p.layout, p.evict.len()), (Layout::Single(0), 0));
        // Fits only both together, nothing evicted.
        let p = plan_room(&cards, &[], &need(800, true)).unwrap();
        assert!(
            matches!(p.layout, Layout::Split(ref v) if v.len() == 2),
            "{p:?}"
        );
        assert!(p.evict.is_empty());
        // split: never: evict instead, the least recently used model on a card where that helps.
        let residents = [
            res("old-r0", &[(1, 400)], 1, true),
            res("new-r0", &[(0, 400)], 9, true),
            res("busy-r0", &[(0, 100)], 0, false),
        ];
        let p = plan_room(&cards, &residents, &need(800, false)).unwrap();
        assert_eq!(p.layout, Layout::Single(1));
        assert_eq!(p.evict, ["old-r0"]);
        assert!(p.reason.contains("old-r0"), "{}", p.reason);
        // Busy models are never evicted; the reason names what holds the memory.
        let residents = [
            res("a-r0", &[(0, 400)], 1, false),
            res("b-r0", &[(1, 400)], 2, false),
        ];
        let e = plan_room(&cards, &residents, &need(800, false)).unwrap_err();
        assert!(
            e.contains("a (400 MiB, 1 running)") && e.contains("split: never"),
            "{e}"
        );
    }

    #[test]
    fn a_split_after_eviction_keeps_only_victims_on_the_cards_it_uses() {
        let cards = [card(0, 100), card(1, 100), card(2, 0)];
        let residents = [
            res("far-r0", &[(2, 50)], 0, true),
            res("a-r0", &[(0, 400)], 1, true),
            res("b-r0", &[(1, 400)], 2, true),
        ];
        // 900 needs both 0 and 1 emptied (each 500 after eviction: 400 beyond overhead each).
        let p = plan_room(&cards, &residents, &need(900, true)).unwrap();
        assert_eq!(p.evict, ["a-r0", "b-r0"], "{p:?}");
        assert_eq!(p.layout.devices(), [0, 1]);
    }

    #[derive(Clone, Debug)]
    struct Case {
        cards: Vec<Card>,
        residents: Vec<Resident>,
        need: Need,
    }

    fn case() -> impl Strategy<Value = Case> {
        let cards = prop::collection::vec((0u64..40, any::<bool>()), 1..5);
        let residents = prop::collection::vec(
            (
                prop::collection::vec((0u32..5, 1u64..20), 1..3),
                0u64..50,
                any::<bool>(),
            ),
            0..6,
        );
        (cards, residents, 1u64..60, 0u64..8, any::<bool>()).prop_map(
            |(cards, residents, bytes, oh, split)| Case {
                cards: cards
                    .into_iter()
                    .enumerate()
                    .map(|(i, (a, allowed))| Card {
                        index: i as u32,
                        name: format!("G{i}"),
                        available: a,
                        allowed: allowed || i == 0,
                    })
                    .collect(),
                residents: residents
                    .into_iter()
                    .enumerate()
                    .map(|(i, (parts, last_used, evictable))| Resident {
                        id: format!("r{i}"),
                        pool_id: format!("p{i}"),
                        parts,
                        last_used,
                        evictable,
                        why_not: None,
                    })
                    .collect(),
                need: Need {
                    bytes: bytes.max(oh + 1),
                    per_card_overhead: oh,
                    split,
                },
            },
        )
    }

    /// Whether `layout` fits `cards` (already freed by the plan's evictions).
    fn fits(cards: &[Card], layout: &Layout, need: &Need) -> bool {
        let card = |d: u32| cards.iter().find(|c| c.index == d);
        match layout {
            Layout::Single(d) => card(*d).is_some_and(|c| c.allowed && c.available >= need.bytes),
            Layout::Split(parts) => {
                let distinct: HashSet<u32> = parts.iter().map(|p| p.device).collect();
                need.split
                    && parts.len() >= 2
                    && distinct.len() == parts.len()
                    && parts.iter().all(|p| {
                        card(p.device).is_some_and(|c| c.allowed && p.bytes <= c.available)
                            && p.bytes >= need.per_card_overhead
                    })
                    && parts
                        .iter()
                        .map(|p| p.bytes - need.per_card_overhead)
                        .sum::<u64>()
                        >= need.divisible()
                    && (parts.iter().map(|p| p.share).sum::<f64>() - 1.0).abs() < 1e-6
            }
        }
    }

    proptest! {
        #[test]
        fn plans_fit_evict_only_idle_lru_where_it_helps_and_refuse_only_when_nothing_could(c in case()) {
            let all_idle: HashSet<&str> =
                c.residents.iter().filter(|r| r.evictable).map(|r| r.id.as_str()).collect();
            match plan_room(&c.cards, &c.residents, &c.need) {
                Ok(plan) => {
                    let victims: HashSet<&str> = plan.evict.iter().map(String::as_str).collect();
                    prop_assert_eq!(victims.len(), plan.evict.len(), "no victim twice");
                    prop_assert!(victims.is_subset(&all_idle), "only idle on_demand models are evicted");
                    let after = freed(&c.cards, &c.residents, &victims);
                    prop_assert!(fits(&after, &plan.layout, &c.need), "{:?}", plan);
                    let used: HashSet<u32> = plan.layout.devices().into_iter().collect();
                    for v in c.residents.iter().filter(|r| victims.contains(r.id.as_str())) {
                        prop_assert!(v.parts.iter().any(|p| used.contains(&p.0)),
                            "{} evicted from cards the new replica does not use", v.id);
                    }
                    if best_single(&c.cards, c.need.bytes).is_some() {
                        prop_assert!(plan.evict.is_empty() && matches!(plan.layout, Layout::Single(_)));
                    }
                    if let Layout::Single(d) = plan.layout {
                        if !victims.is_empty() {
                            // LRU prefix on that card: no idle model there is older than a
                            // victim yet spared, and the newest victim was needed.
                            let newest = c.residents.iter().filter(|r| victims.contains(r.id.as_str()))
                                .map(|r| (r.last_used, r.id.clone())).max().unwrap_or_default();
                            for r in c.residents.iter().filter(|r| r.evictable && !victims.contains(r.id.as_str())) {
                                if r.parts.iter().any(|p| p.0 == d) {
                                    prop_assert!((r.last_used, r.id.clone()) > newest, "{} spared but older", r.id);
                                }
                            }
                            let mut fewer = victims.clone();
                            fewer.remove(newest.1.as_str());
                            let less = freed(&c.cards, &c.residents, &fewer);
                            prop_assert!(!fits(&less, &plan.layout, &c.need), "a victim was not needed");
                        }
                    }
                }
                Err(reason) => {
                    prop_assert!(!reason.is_empty());
                    // Nothing could work even with every idle model evicted.
                    let empty = freed(&c.cards, &c.residents, &all_idle);
                    prop_assert!(best_single(&empty, c.need.bytes).is_none(), "{}", reason);
                    if c.need.split {
                        prop_assert!(plan_split(&empty, &c.need).is_none(), "{}", reason);
                    }
                }
            }
        }
    }

    /// A loaded pool in the ledger model: (parts, busy, last used).
    type Loaded = (Vec<(u32, u64)>, bool, u64);

    /// One step of a random life of the ledger.
    #[derive(Clone, Debug)]
    enum Op {
        /// Load pool `p` with this footprint (MiB) and split policy.
        Load(usize, u64, bool),
        /// Its engine dies (crash while loading or later): the ledger lets go of it.
        Crash(usize),
        /// Unloaded (idle timeout or by request).
        Unload(usize),
        /// Starts or finishes work: busy replicas are never evicted.
        Busy(usize, bool),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0usize..5, 150u64..1500, any::<bool>()).prop_map(|(p, b, s)| Op::Load(p, b, s)),
            (0usize..5).prop_map(Op::Crash),
            (0usize..5).prop_map(Op::Unload),
            (0usize..5, any::<bool>()).prop_map(|(p, b)| Op::Busy(p, b)),
        ]
    }

    proptest! {
        /// Random load / evict / split / crash sequences on a model of the ledger: what is
        /// promised on a card never exceeds what it has, busy models survive every load, and
        /// each load either fits or leaves everything as it was.
        #[test]
        fn ledger_never_overcommits_across_random_sequences(
            caps in prop::collection::vec(300u64..1200, 1..4),
            ops in prop::collection::vec(op(), 1..40),
        ) {
            let caps: Vec<u64> = caps.into_iter().map(|c| c * MIB).collect();
            let mut loaded: Vec<Option<Loaded>> = vec![None; 5];
            for (clock, op) in ops.into_iter().enumerate() {
                let clock = clock as u64;
                match op {
                    Op::Load(p, mib, split) => {
                        if loaded[p].is_some() {
                            continue;
                        }
                        let cards: Vec<Card> = caps.iter().enumerate().map(|(i, cap)| {
                            let held: u64 = loaded.iter().flatten()
                                .flat_map(|l| l.0.iter()).filter(|x| x.0 == i as u32).map(|x| x.1).sum();
                            Card { index: i as u32, name: String::new(), available: cap.saturating_sub(held), allowed: true }
                        }).collect();
                        let residents: Vec<Resident> = loaded.iter().enumerate()
                            .filter_map(|(q, l)| l.as_ref().map(|l| Resident {
                                id: format!("p{q}"), pool_id: format!("p{q}"), parts: l.0.clone(),
                                last_used: l.2, evictable: !l.1, why_not: None,
                            })).collect();
                        let need = Need { bytes: mib * MIB, per_card_overhead: 100 * MIB, split };
                        let before = loaded.clone();
                        match plan_room(&cards, &residents, &need) {
                            Ok(plan) => {
                                for v in &plan.evict {
                                    let q: usize = v[1..].parse().unwrap_or(usize::MAX);
                                    prop_assert!(loaded[q].as_ref().is_some_and(|l| !l.1), "busy {} evicted", v);
                                    loaded[q] = None;
                                }
                                loaded[p] = Some((plan.layout.reservations(&need), false, clock));
                            }
                            Err(_) => prop_assert_eq!(&loaded, &before),
                        }
                    }
                    Op::Crash(p) | Op::Unload(p) => loaded[p] = None,
                    Op::Busy(p, b) => {
                        if let Some(l) = loaded[p].as_mut() {
                            l.1 = b;
                            l.2 = clock;
                        }
                    }
                }
                for (i, cap) in caps.iter().enumerate() {
                    let held: u64 = loaded.iter().flatten()
                        .flat_map(|l| l.0.iter()).filter(|x| x.0 == i as u32).map(|x| x.1).sum();
                    prop_assert!(held <= *cap, "GPU {} overcommitted: {} > {}", i, held, cap);
                }
            }
        }
    }
}
