//! Start-time and on-time estimates from measured service statistics.
//!
//! # Model
//!
//! **Service time.** [`ServiceStats`] keeps exponentially weighted moving averages (weight
//! [`EWMA_ALPHA`] for the newest sample) over the tasks a pool finished: decode rate
//! (`tokens_out / decode_ms`), time to first token, wall time per task and tokens per task, plus
//! an exponentially weighted variance of the decode rate. A task expecting `n` tokens is
//! estimated to take `first_token_ms + n / tokens_per_s`. Until a pool has finished a task the
//! documented priors ([`PRIOR_TOKENS_PER_S`], [`PRIOR_FIRST_TOKEN_MS`],
//! [`PRIOR_EXPECTED_TOKENS`], [`PRIOR_REL_SPREAD`]) stand in; the estimates improve as tasks
//! finish, and recent tasks weigh most, so they follow load and model changes.
//!
//! **Start time.** A pool has `total_slots` engine slots. Each slot is free at some time from
//! now: 0 for an idle slot, the estimated remaining time for a running task. Tasks are
//! dispatched in queue order, each onto the earliest-free slot, which it then holds for
//! `queued_task_ms`. The task at 0-based `position` starts when the `position + 1`-th slot
//! opening happens. [`predict_start`] computes exactly what a min-heap simulation of this
//! would, but by counting openings (binary search over time), so its cost does not grow with
//! `position`.
//!
//! **On time.** Completion time is modelled as normally distributed around
//! `predicted_start_ms + est_task_ms` with a standard deviation of `rel_spread` times that mean;
//! [`on_time_probability`] is the probability that it lands before the deadline, using the
//! logistic approximation of the normal CDF (within 0.01 of it, and exactly monotone).

use serde::Serialize;

/// Weight of the newest sample in every moving average.
pub const EWMA_ALPHA: f64 = 0.2;
/// Decode rate assumed before any task finished: deliberately on the slow side of a 7B Q4
/// model on a consumer GPU, so early predictions err late rather than early.
pub const PRIOR_TOKENS_PER_S: f64 = 20.0;
/// Time to first token assumed before any task finished.
pub const PRIOR_FIRST_TOKEN_MS: f64 = 500.0;
/// Tokens a task is assumed to produce when neither the request nor history says.
pub const PRIOR_EXPECTED_TOKENS: u64 = 256;
/// Relative spread of completion times assumed until two decode rates were measured.
pub const PRIOR_REL_SPREAD: f64 = 0.3;
/// Bounds for the measured relative spread: never claim certainty, never give up entirely.
pub const REL_SPREAD_BOUNDS: (f64, f64) = (0.05, 2.0);
/// Upper bound for the suggested `backoff_ms` of an admitted task.
pub const MAX_BACKOFF_MS: u64 = 5_000;
/// Bounds for the `retry_after_ms` of a 429: retrying sooner than the lower bound only spins.
pub const RETRY_AFTER_BOUNDS_MS: (u64, u64) = (250, 60_000);

/// Exponentially weighted service statistics for one pool, fed by finished tasks.
///
/// `Default` has no samples; every getter then returns `None` and the `*_or_prior` helpers
/// fall back to the documented priors.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ServiceStats {
    samples: u64,
    rate_samples: u64,
    tokens_per_s: Option<f64>,
    rate_var: f64,
    first_token_ms: Option<f64>,
    task_ms: Option<f64>,
    tokens_out: Option<f64>,
}

/// Folds `x` into an EWMA; the first sample seeds it so early averages are not biased to 0.
fn ewma(prev: Option<f64>, x: f64) -> f64 {
    match prev {
        Some(m) => m + EWMA_ALPHA * (x - m),
        None => x,
    }
}

impl ServiceStats {
    /// Records one finished task: tokens produced, decode time (first to last token) and time
    /// to first token, all as the engine/daemon measured them.
    ///
    /// A task with no tokens or no decode time still counts towards first-token latency and
    /// wall time, but not towards the decode rate (its rate is undefined).
    pub fn record(&mut self, tokens_out: u64, decode_ms: u64, first_token_ms: u64) {
        self.samples = self.samples.saturating_add(1);
        // u64 -> f64 loses precision only beyond 2^53 ms, far past any real measurement.
        let (tokens, decode, first) = (tokens_out as f64, decode_ms as f64, first_token_ms as f64);
        self.first_token_ms = Some(ewma(self.first_token_ms, first));
        self.task_ms = Some(ewma(self.task_ms, first + decode));
        self.tokens_out = Some(ewma(self.tokens_out, tokens));
        if tokens_out > 0 && decode_ms > 0 {
            let rate = tokens * 1000.0 / decode;
            self.rate_samples = self.rate_samples.saturating_add(1);
            match self.tokens_per_s {
                None => self.tokens_per_s = Some(rate),
                Some(mean) => {
                    // Incremental exponentially weighted variance (West 1979).
                    let diff = rate - mean;
                    let incr = EWMA_ALPHA * diff;
                    self.tokens_per_s = Some(mean + incr);
                    self.rate_var = (1.0 - EWMA_ALPHA) * (self.rate_var + diff * incr);
                }
            }
        }
    }

    /// Smoothed decode rate in tokens per second, once a task with tokens finished.
    pub fn tokens_per_s(&self) -> Option<f64> {
        self.tokens_per_s
    }

    /// Smoothed time to first token in milliseconds.
    pub fn mean_first_token_ms(&self) -> Option<f64> {
        self.first_token_ms
    }

    /// Smoothed wall time of a task (first token plus decode) in milliseconds.
    pub fn mean_task_ms(&self) -> Option<f64> {
        self.task_ms
    }

    /// Smoothed tokens produced per task.
    pub fn mean_tokens_out(&self) -> Option<f64> {
        self.tokens_out
    }

    /// Finished tasks recorded so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Estimated wall time of a task producing `expected_tokens`:
    /// `first_token_ms + expected_tokens / tokens_per_s`. `None` until measured.
    pub fn estimate_task_ms(&self, expected_tokens: u64) -> Option<f64> {
        let rate = self.tokens_per_s?;
        let first = self.first_token_ms?;
        Some(first + expected_tokens as f64 * 1000.0 / rate)
    }

    /// Like [`ServiceStats::estimate_task_ms`], with the priors standing in for anything not
    /// yet measured.
    pub fn estimate_task_ms_or_prior(&self, expected_tokens: u64) -> f64 {
        let rate = self.tokens_per_s.unwrap_or(PRIOR_TOKENS_PER_S);
        let first = self.first_token_ms.unwrap_or(PRIOR_FIRST_TOKEN_MS);
        first + expected_tokens as f64 * 1000.0 / rate
    }

    /// Wall time to assume for a queued task whose length is unknown (the `queued_task_ms` of
    /// [`predict_start`]): the measured mean task time, else the prior for
    /// [`PRIOR_EXPECTED_TOKENS`] tokens.
    pub fn typical_task_ms(&self) -> f64 {
        self.task_ms
            .unwrap_or_else(|| self.estimate_task_ms_or_prior(PRIOR_EXPECTED_TOKENS))
    }

    /// Relative spread (coefficient of variation) of the decode rate, for
    /// [`on_time_probability`]; [`PRIOR_REL_SPREAD`] until two rates were measured, and kept
    /// within [`REL_SPREAD_BOUNDS`].
    pub fn rel_spread(&self) -> f64 {
        match self.tokens_per_s {
            Some(mean) if self.rate_samples >= 2 && mean > 0.0 => {
                let cv = self.rate_var.max(0.0).sqrt() / mean;
                if cv.is_finite() {
                    cv.clamp(REL_SPREAD_BOUNDS.0, REL_SPREAD_BOUNDS.1)
                } else {
                    PRIOR_REL_SPREAD
                }
            }
            _ => PRIOR_REL_SPREAD,
        }
    }
}

/// What an admission reply carries about when a task will start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StartEstimate {
    /// Milliseconds from now until the task is expected to be dispatched to an engine.
    pub predicted_start_ms: u64,
    /// How long a polling client should wait before asking again: half the predicted wait,
    /// at most [`MAX_BACKOFF_MS`], 0 when the task starts at once. Half, so a poller never
    /// oversleeps the start by more than half the wait.
    pub backoff_ms: u64,
}

impl StartEstimate {
    /// The estimate for a predicted start, with its suggested backoff.
    pub fn new(predicted_start_ms: u64) -> Self {
        Self {
            predicted_start_ms,
            backoff_ms: (predicted_start_ms / 2).min(MAX_BACKOFF_MS),
        }
    }
}

/// Converts a duration estimate to whole milliseconds, rounding up; NaN and negatives become 0,
/// infinities saturate (`as` casts from float saturate in Rust).
fn ms(x: f64) -> u64 {
    x.ceil() as u64
}

/// Predicted milliseconds from now until the task at 0-based `position` in the queue starts.
///
/// - `free_slots`: idle slots now; `running_remaining_ms`: estimated remaining time of each
///   running task (one entry per busy slot).
/// - `total_slots`: the pool's slots. Busy slots missing from `running_remaining_ms` are
///   assumed to need one `queued_task_ms`; when the inputs disagree the larger count wins, and a
///   pool with no slots at all is treated as one busy slot (a replica still starting), so the
///   answer stays a finite, truthful-ish wait.
/// - `queued_task_ms`: time each task ahead holds its slot (see [`ServiceStats::typical_task_ms`]).
///
/// Returns 0 when `position < free_slots`; non-decreasing in `position`. Cost is
/// O(running tasks · 64), independent of `position` and of the slot count.
pub fn predict_start(
    position: usize,
    free_slots: usize,
    total_slots: usize,
    running_remaining_ms: &[f64],
    queued_task_ms: f64,
) -> u64 {
    let q = ms(queued_task_ms);
    let busy_known = running_remaining_ms.len();
    let slots = total_slots
        .max(free_slots.saturating_add(busy_known))
        .max(1);
    let unknown = slots - free_slots.saturating_add(busy_known).min(slots);
    // (first opening, number of slots) pairs, so huge slot counts cost nothing.
    let mut seeds: Vec<(u64, u128)> = Vec::with_capacity(busy_known + 2);
    seeds.push((0, free_slots.min(slots) as u128));
    seeds.extend(running_remaining_ms.iter().map(|&r| (ms(r), 1)));
    seeds.push((q, unknown as u128));
    seeds.retain(|&(_, n)| n > 0);
    nth_opening(&seeds, q, position as u64)
}

/// The `k`-th (0-based) slot opening when `n` slots first open at `f` (for each `(f, n)` in
/// `seeds`) and then every `q` ms: the smallest `t` with more than `k` openings at or before `t`.
fn nth_opening(seeds: &[(u64, u128)], q: u64, k: u64) -> u64 {
    let Some(first) = seeds.iter().map(|&(f, _)| f).min() else {
        return u64::MAX;
    };
    if q == 0 {
        // A slot that opens is immediately open again: everyone starts at the first opening.
        return first;
    }
    let need = u128::from(k) + 1;
    let openings = |t: u64| -> u128 {
        seeds
            .iter()
            .filter(|&&(f, _)| f <= t)
            .map(|&(f, n)| n.saturating_mul(u128::from((t - f) / q) + 1))
            .fold(0u128, u128::saturating_add)
    };
    // The earliest slot alone opens k+1 times by first + k*q.
    let (mut lo, mut hi) = (first, first.saturating_add(q.saturating_mul(k)));
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if openings(mid) >= need {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// Milliseconds a client refused with 429 should wait: until the head of the queue is expected
/// to be dispatched (which frees a place), within [`RETRY_AFTER_BOUNDS_MS`].
pub fn retry_after_ms(next_dispatch_ms: u64) -> u64 {
    next_dispatch_ms.clamp(RETRY_AFTER_BOUNDS_MS.0, RETRY_AFTER_BOUNDS_MS.1)
}

/// Probability in [0, 1] that a task starting in `predicted_start_ms` and taking `est_task_ms`
/// finishes within `deadline_ms` (milliseconds from the same "now"; the caller converts an
/// absolute deadline).
///
/// 1.0 without a deadline. Otherwise completion is modelled as normal with mean
/// `start + est_task_ms` and standard deviation `rel_spread * mean`, evaluated with the
/// logistic approximation `1 / (1 + e^(-1.702 z))`. Non-decreasing in `deadline_ms`. A
/// non-finite or negative `rel_spread` falls back to [`PRIOR_REL_SPREAD`]; a spread of 0 gives a
/// step (1 if the mean meets the deadline, else 0).
pub fn on_time_probability(
    predicted_start_ms: u64,
    est_task_ms: f64,
    deadline_ms: Option<u64>,
    rel_spread: f64,
) -> f64 {
    let Some(deadline) = deadline_ms else {
        return 1.0;
    };
    let task = if est_task_ms.is_nan() {
        0.0
    } else {
        est_task_ms.max(0.0)
    };
    let mean = predicted_start_ms as f64 + task;
    if !mean.is_finite() {
        return 0.0;
    }
    let spread = if rel_spread.is_finite() && rel_spread >= 0.0 {
        rel_spread
    } else {
        PRIOR_REL_SPREAD
    };
    let slack = deadline as f64 - mean;
    let sigma = spread * mean;
    if sigma <= 0.0 {
        return if slack >= 0.0 { 1.0 } else { 0.0 };
    }
    let p = 1.0 / (1.0 + (-1.702 * slack / sigma).exp());
    p.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_start_empty_and_use_priors() {
        let s = ServiceStats::default();
        assert_eq!(s.samples(), 0);
        assert_eq!(s.tokens_per_s(), None);
        assert_eq!(s.estimate_task_ms(100), None);
        assert_eq!(
            s.estimate_task_ms_or_prior(100),
            PRIOR_FIRST_TOKEN_MS + 5000.0
        );
        assert_eq!(
            s.typical_task_ms(),
            PRIOR_FIRST_TOKEN_MS + PRIOR_EXPECTED_TOKENS as f64 * 50.0
        );
        assert_eq!(s.rel_spread(), PRIOR_REL_SPREAD);
    }

    #[test]
    fn stats_follow_measurements() {
        let mut s = ServiceStats::default();
        s.record(100, 2000, 300); // 50 tok/s
        assert_eq!(s.tokens_per_s(), Some(50.0));
        assert_eq!(s.mean_first_token_ms(), Some(300.0));
        assert_eq!(s.estimate_task_ms(50), Some(1300.0));
        assert_eq!(s.mean_task_ms(), Some(2300.0));
        s.record(100, 1000, 100); // 100 tok/s
        let rate = s.tokens_per_s().unwrap_or_default();
        assert!((rate - 60.0).abs() < 1e-9, "{rate}");
        assert!((s.mean_first_token_ms().unwrap_or_default() - 260.0).abs() < 1e-9);
        assert_eq!(s.samples(), 2);
        assert!(s.rel_spread() > REL_SPREAD_BOUNDS.0);
        // Many identical samples pull the average to the new regime.
        for _ in 0..100 {
            s.record(10, 1000, 50);
        }
        assert!((s.tokens_per_s().unwrap_or_default() - 10.0).abs() < 1e-6);
        assert_eq!(s.rel_spread(), REL_SPREAD_BOUNDS.0);
    }

    #[test]
    fn zero_token_tasks_do_not_poison_rate() {
        let mut s = ServiceStats::default();
        s.record(0, 0, 40);
        s.record(5, 0, 40);
        assert_eq!(s.tokens_per_s(), None);
        assert_eq!(s.samples(), 2);
        assert_eq!(s.mean_first_token_ms(), Some(40.0));
    }

    #[test]
    fn predict_start_examples() {
        // Two idle slots: positions 0 and 1 start now.
        assert_eq!(predict_start(0, 2, 2, &[], 1000.0), 0);
        assert_eq!(predict_start(1, 2, 2, &[], 1000.0), 0);
        // Then each slot is held 1000 ms.
        assert_eq!(predict_start(2, 2, 2, &[], 1000.0), 1000);
        assert_eq!(predict_start(5, 2, 2, &[], 1000.0), 2000);
        // Busy slots free at 300 and 700; a task takes 1000.
        assert_eq!(predict_start(0, 0, 2, &[700.0, 300.0], 1000.0), 300);
        assert_eq!(predict_start(1, 0, 2, &[700.0, 300.0], 1000.0), 700);
        assert_eq!(predict_start(2, 0, 2, &[700.0, 300.0], 1000.0), 1300);
        assert_eq!(predict_start(3, 0, 2, &[700.0, 300.0], 1000.0), 1700);
        // A busy slot without a remaining estimate is assumed to need a full task.
        assert_eq!(predict_start(0, 0, 1, &[], 800.0), 800);
        // No slots known at all: one busy slot.
        assert_eq!(predict_start(0, 0, 0, &[], 800.0), 800);
        // Garbage inputs stay finite and sane.
        assert_eq!(predict_start(0, 0, 1, &[f64::NAN], f64::NAN), 0);
        assert_eq!(predict_start(3, 0, 1, &[-5.0], 10.0), 30);
        assert_eq!(predict_start(usize::MAX, 1, 1, &[], 10.0), u64::MAX);
        assert_eq!(predict_start(usize::MAX, 1, 1, &[], 0.0), 0);
    }

    #[test]
    fn start_estimate_backoff() {
        assert_eq!(StartEstimate::new(0).backoff_ms, 0);
        assert_eq!(StartEstimate::new(1000).backoff_ms, 500);
        assert_eq!(StartEstimate::new(60_000).backoff_ms, MAX_BACKOFF_MS);
        assert_eq!(retry_after_ms(0), 250);
        assert_eq!(retry_after_ms(4000), 4000);
        assert_eq!(retry_after_ms(u64::MAX), 60_000);
    }

    #[test]
    fn on_time_examples() {
        assert_eq!(on_time_probability(1000, 1000.0, None, 0.3), 1.0);
        let p = on_time_probability(1000, 1000.0, Some(2000), 0.3);
        assert!((p - 0.5).abs() < 1e-12);
        assert!(on_time_probability(1000, 1000.0, Some(4000), 0.3) > 0.95);
        assert!(on_time_probability(1000, 1000.0, Some(500), 0.3) < 0.05);
        assert_eq!(on_time_probability(1000, 1000.0, Some(2000), 0.0), 1.0);
        assert_eq!(on_time_probability(1000, 1000.0, Some(1999), 0.0), 0.0);
        assert_eq!(on_time_probability(0, f64::INFINITY, Some(10), 0.3), 0.0);
        let p = on_time_probability(0, f64::NAN, Some(0), f64::NAN);
        assert!((0.0..=1.0).contains(&p));
    }
}
