//! Properties of the start-time model (`orch_core::eta`): forecasts are ordered like the
//! queue, priorities are honoured, the simulation agrees with itself over time, and on-time
//! probabilities are monotone and calibrated.

use orch_core::eta::{
    forecast, state_after, DecodeRates, OnTimeModel, ReplicaLoad, Work, RESIDUAL_HISTORY,
};
use orch_core::queue::{FullPolicy, Priority, Queue};
use proptest::prelude::*;

fn work() -> impl Strategy<Value = Work> {
    (0.0f64..500.0, 0.0f64..600.0).prop_map(|(prefill_ms, tokens)| Work { prefill_ms, tokens })
}

fn replica() -> impl Strategy<Value = ReplicaLoad> {
    (
        1usize..5,
        prop::collection::vec(work(), 0..4),
        0.0f64..2000.0,
        any::<bool>(),
    )
        .prop_map(|(slots, mut running, load, loading)| {
            running.truncate(slots);
            // A replica still loading runs nothing yet.
            if loading {
                running.clear();
            }
            ReplicaLoad {
                slots,
                available_in_ms: if loading { load } else { 0.0 },
                running,
            }
        })
}

/// Per-slot ms/token `a + b·c`: streams slow down (or not) as a replica gets busier.
fn curve() -> impl Strategy<Value = (f64, f64)> {
    (0.1f64..20.0, 0.0f64..10.0)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-6 * (1.0 + a.abs().max(b.abs()))
}

proptest! {
    #[test]
    fn starts_are_monotone_in_queue_position_and_ends_follow_starts(
        reps in prop::collection::vec(replica(), 1..4),
        queued in prop::collection::vec(work(), 0..30),
        (a, b) in curve(),
    ) {
        let m = move |c: usize| a + b * c as f64;
        let plan = forecast(&reps, &queued, &m);
        prop_assert_eq!(plan.queued.len(), queued.len());
        for w in plan.queued.windows(2) {
            prop_assert!(w[0].start_ms <= w[1].start_ms, "{:?}", plan.queued);
        }
        for f in &plan.queued {
            prop_assert!(f.start_ms.is_finite() && f.end_ms >= f.start_ms, "{:?}", f);
        }
        for ends in &plan.running {
            prop_assert!(ends.iter().all(|e| e.is_finite() && *e >= 0.0));
        }
    }

    #[test]
    fn an_interactive_task_never_starts_after_a_batch_task_admitted_with_it(
        ahead in prop::collection::vec((any::<bool>(), work()), 0..20),
        reps in prop::collection::vec(replica(), 1..3),
        interactive_first in any::<bool>(),
        wi in work(),
        wb in work(),
        (a, b) in curve(),
    ) {
        let mut q: Queue<Work> = Queue::new(1000, FullPolicy::Reject);
        for (i, (inter, w)) in ahead.iter().enumerate() {
            let p = if *inter { Priority::Interactive } else { Priority::Batch };
            let id = format!("t{i}");
            prop_assert!(q.push(id, p, *w).is_ok());
        }
        let both = [("int", Priority::Interactive, wi), ("bat", Priority::Batch, wb)];
        let order: Vec<_> = if interactive_first { both.to_vec() } else { both.iter().rev().copied().collect() };
        for (id, p, w) in order {
            prop_assert!(q.push(id.to_owned(), p, w).is_ok());
        }
        let ids: Vec<&str> = q.iter().map(|e| e.id.as_str()).collect();
        let works: Vec<Work> = q.iter().map(|e| e.item).collect();
        let m = move |c: usize| a + b * c as f64;
        let plan = forecast(&reps, &works, &m);
        let at = |id: &str| ids.iter().position(|x| *x == id).map(|i| plan.queued[i].start_ms);
        let (si, sb) = (at("int"), at("bat"));
        prop_assert!(si.is_some() && sb.is_some());
        prop_assert!(si <= sb, "interactive {si:?} after batch {sb:?}");
    }

    #[test]
    fn the_forecast_agrees_with_itself_later(
        reps in prop::collection::vec(replica(), 1..3),
        queued in prop::collection::vec(work(), 0..20),
        (a, b) in curve(),
        t in 0.0f64..5000.0,
    ) {
        let m = move |c: usize| a + b * c as f64;
        let now = forecast(&reps, &queued, &m);
        let (later_state, started) = state_after(&reps, &queued, &m, t);
        let later = forecast(&later_state, &queued[started..], &m);
        for (i, f) in later.queued.iter().enumerate() {
            let g = now.queued[started + i];
            prop_assert!(close(f.start_ms + t, g.start_ms), "start {} + {t} vs {}", f.start_ms, g.start_ms);
            prop_assert!(close(f.end_ms + t, g.end_ms), "end {} + {t} vs {}", f.end_ms, g.end_ms);
        }
        // Everything dispatched by then was forecast to start by then.
        for g in &now.queued[..started] {
            prop_assert!(g.start_ms <= t + 1e-6);
        }
    }

    #[test]
    fn decode_rates_stay_positive_and_finite(
        samples in prop::collection::vec((1usize..10, 0.0f64..1000.0, 0.0f64..10_000.0), 0..30),
        c in 1usize..20,
    ) {
        let mut d = DecodeRates::default();
        for (conc, tokens, ms) in samples {
            d.record(conc, tokens, ms);
        }
        let m = d.ms_per_token(c);
        prop_assert!(m.is_finite() && m >= 0.0, "{m}");
    }

    #[test]
    fn on_time_probability_is_monotone_and_bounded(
        residuals in prop::collection::vec((1.0f64..10_000.0, 1.0f64..10_000.0), 0..50),
        predicted in 0.0f64..20_000.0,
        d1 in 0.0f64..30_000.0,
        d2 in 0.0f64..30_000.0,
    ) {
        let mut m = OnTimeModel::default();
        for (p, a) in residuals {
            m.record(p, a);
        }
        let (lo, hi) = if d1 <= d2 { (d1, d2) } else { (d2, d1) };
        let (p_lo, p_hi) = (m.probability(Some(lo), predicted), m.probability(Some(hi), predicted));
        prop_assert!((0.0..=1.0).contains(&p_lo) && (0.0..=1.0).contains(&p_hi));
        prop_assert!(p_lo <= p_hi + 1e-12, "{p_lo} > {p_hi}");
        prop_assert_eq!(m.probability(None, predicted), 1.0);
    }
}

/// A small deterministic generator (xorshift64*), so the calibration check needs no crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal draw (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Forecast errors from a skewed, biased distribution (tasks end 10 % late on average, with a
/// heavy right tail): the probabilities learnt from past errors match the hit rate on new tasks.
#[test]
fn on_time_probability_is_calibrated_on_a_stationary_error_distribution() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let draw = |rng: &mut Rng| {
        let z = rng.normal();
        0.1 + if z > 0.0 { 0.35 * z } else { 0.15 * z }
    };
    let mut m = OnTimeModel::default();
    for _ in 0..RESIDUAL_HISTORY {
        let r = draw(&mut rng);
        m.record(1000.0, 1000.0 * r.exp());
    }
    // Bins of predicted probability: (sum of p, hits, count).
    let mut bins = [(0.0f64, 0u32, 0u32); 5];
    for _ in 0..20_000 {
        let predicted = 200.0 + 5000.0 * rng.next();
        let deadline = predicted * (0.6 + 1.4 * rng.next());
        let p = m.probability(Some(deadline), predicted);
        let actual = predicted * draw(&mut rng).exp();
        let b = &mut bins[((p * 5.0) as usize).min(4)];
        b.0 += p;
        b.1 += u32::from(actual <= deadline);
        b.2 += 1;
    }
    for (i, (sum, hits, n)) in bins.iter().enumerate() {
        if *n < 200 {
            continue;
        }
        let (mean_p, rate) = (sum / f64::from(*n), f64::from(*hits) / f64::from(*n));
        eprintln!("bin {i}: n {n}, mean p {mean_p:.3}, on time {rate:.3}");
        assert!(
            (mean_p - rate).abs() < 0.06,
            "bin {i}: predicted {mean_p:.3}, observed {rate:.3} over {n} tasks"
        );
    }
}
