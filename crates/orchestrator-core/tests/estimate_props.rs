//! Properties of the start-time and on-time estimates.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use orchestrator_core::estimate::{on_time_probability, predict_start, ServiceStats};
use proptest::prelude::*;

/// The model docs/DECISIONS.md describes (`predicted_start_ms`): a min-heap of slot free
/// times, each task ahead taking the earliest-free slot for `q` ms.
fn heap_reference(position: usize, free: usize, total: usize, running: &[u64], q: u64) -> u64 {
    let slots = total.max(free + running.len()).max(1);
    let mut heap: BinaryHeap<Reverse<u64>> = BinaryHeap::new();
    heap.extend(std::iter::repeat_n(Reverse(0), free));
    heap.extend(running.iter().map(|&r| Reverse(r)));
    heap.extend(std::iter::repeat_n(
        Reverse(q),
        slots - free - running.len(),
    ));
    for _ in 0..position {
        if let Some(Reverse(t)) = heap.pop() {
            heap.push(Reverse(t + q));
        }
    }
    heap.peek().map_or(0, |r| r.0)
}

proptest! {
    #[test]
    fn predict_start_matches_heap_and_is_monotone(
        free in 0usize..5,
        extra in 0usize..4,
        running in prop::collection::vec(0u64..10_000, 0..5),
        q in 0u64..5_000,
        max_pos in 0usize..40,
    ) {
        let total = free + running.len() + extra;
        let running_f: Vec<f64> = running.iter().map(|&r| r as f64).collect();
        let mut prev = 0;
        for pos in 0..=max_pos {
            let got = predict_start(pos, free, total, &running_f, q as f64);
            prop_assert_eq!(got, heap_reference(pos, free, total, &running, q), "pos {}", pos);
            prop_assert!(got >= prev);
            if pos < free {
                prop_assert_eq!(got, 0);
            }
            prev = got;
        }
    }

    #[test]
    fn predict_start_monotone_on_arbitrary_floats(
        free in 0usize..4,
        total in 0usize..8,
        running in prop::collection::vec(any::<f64>(), 0..4),
        q in any::<f64>(),
        pos in 0usize..1000,
    ) {
        let a = predict_start(pos, free, total, &running, q);
        let b = predict_start(pos + 1, free, total, &running, q);
        prop_assert!(a <= b);
        if pos < free {
            prop_assert_eq!(a, 0);
        }
    }

    #[test]
    fn on_time_in_unit_range_and_monotone_in_deadline(
        start in 0u64..1_000_000,
        task in any::<f64>(),
        d1 in 0u64..2_000_000,
        d2 in 0u64..2_000_000,
        spread in any::<f64>(),
    ) {
        let (lo, hi) = (d1.min(d2), d1.max(d2));
        let p_lo = on_time_probability(start, task, Some(lo), spread);
        let p_hi = on_time_probability(start, task, Some(hi), spread);
        prop_assert!((0.0..=1.0).contains(&p_lo) && (0.0..=1.0).contains(&p_hi));
        prop_assert!(p_lo <= p_hi);
        prop_assert_eq!(on_time_probability(start, task, None, spread), 1.0);
    }

    #[test]
    fn stats_stay_finite(samples in prop::collection::vec((0u64..100_000, 0u64..600_000, 0u64..60_000), 0..50)) {
        let mut s = ServiceStats::default();
        for &(t, d, f) in &samples {
            s.record(t, d, f);
        }
        prop_assert_eq!(s.samples(), samples.len() as u64);
        prop_assert!(s.typical_task_ms().is_finite());
        prop_assert!(s.estimate_task_ms_or_prior(1000).is_finite());
        let spread = s.rel_spread();
        prop_assert!((0.05..=2.0).contains(&spread));
        if let Some(r) = s.tokens_per_s() {
            prop_assert!(r.is_finite() && r > 0.0);
        }
    }
}
