//! Start- and end-time forecasts for one pool ("queue truth"): when each queued task will start
//! and end, and how likely it is to end within its deadline.
//!
//! # Model
//!
//! Everything here is measured by the daemon and passed in as numbers; nothing reads a clock.
//!
//! * **Decode rate per slot at each concurrency** ([`DecodeRates`]): milliseconds per token of
//!   one stream while `c` streams share a replica, from the tokens the running tasks produced
//!   between two changes of the replica's concurrency (the daemon cuts these "epochs" at every
//!   dispatch, every finish and once a second). Per concurrency it keeps decayed sums of slot
//!   time and tokens whose weight halves every [`DECODE_HALF_LIFE_MS`] of measured slot time,
//!   so the rate follows load changes. Unmeasured concurrencies are interpolated between
//!   measured ones, extrapolated linearly beyond the largest, and held flat below the smallest.
//! * **Prefill** ([`PrefillFit`]): time from dispatch to the first token as a linear function of
//!   the prompt tokens the engine evaluated, fitted with exponentially weighted least squares.
//!   Queued prompts are sized by a measured tokens-per-character ratio.
//! * **Length** ([`LengthHistory`]): a task is expected to produce `expected_tokens` when the
//!   request says so; otherwise `max_tokens` capped by what the model usually emits:
//!   `E[min(max_tokens, L)]` over the recent output lengths `L`, where a task cut off by its own
//!   `max_tokens` only says `L ≥ tokens` (counted as reaching the new task's limit, so the
//!   estimate errs late). Running tasks use the same estimate conditioned on what they have
//!   already produced.
//! * **Forecast** ([`forecast`]): a discrete-event simulation of the pool's replicas. Running
//!   tasks finish their remaining prefill and tokens, queued tasks are dispatched in queue order
//!   (interactive before batch, FIFO within each) to the least-loaded available replica with a
//!   free slot, as the dispatcher does, and every running stream decodes at the per-slot rate of
//!   its replica's current concurrency. A replica that is not loaded yet becomes available after
//!   its expected load time.
//! * **On time** ([`OnTimeModel`], one per priority): the ratios `actual / predicted` of
//!   finished tasks' end times (predicted at admission) form an empirical distribution of the
//!   forecast's error; the
//!   probability of meeting a deadline is its CDF at `deadline / predicted_end`, smoothed and
//!   blended with a log-normal prior while few tasks have finished. Calibrated by construction
//!   when the recent past resembles the near future. Running tasks' probabilities are
//!   calibrated the same way on the errors of running tasks' ends predicted at dispatch
//!   ([`ModelStats::on_time_running`]): queued and running tasks share this one model.
//! * **Before measurements** ([`ModelStats::set_prior`]): a restarted daemon restores a
//!   model's [`ModelStats`] (serde; `crate::rates`), and a model never measured uses the prior
//!   of `crate::prior` (its file and the card) for what is not measured yet; without either,
//!   the fixed `PRIOR_*` constants.
//!
//! Cost: [`forecast`] handles at most two events per task (prefill done, task done) plus one per
//! replica becoming available, each scanning the running streams: O((queued + running) ·
//! running).

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::prior::RatePrior;
use crate::queue::Priority;

/// Per-slot decode time assumed before anything was measured: 20 tokens/s per stream,
/// deliberately on the slow side of a 7B Q4 model on a consumer GPU (errs late).
pub const PRIOR_DECODE_MS_PER_TOKEN: f64 = 50.0;
/// Time from dispatch to the first token assumed before any task started, on top of the
/// prompt's share ([`PRIOR_PREFILL_MS_PER_TOKEN`]).
pub const PRIOR_PREFILL_BASE_MS: f64 = 100.0;
/// Prefill time per prompt token assumed before any was measured.
pub const PRIOR_PREFILL_MS_PER_TOKEN: f64 = 1.0;
/// Prompt tokens per character of text assumed before any prompt was measured (English text
/// averages about four characters per token).
pub const PRIOR_TOKENS_PER_CHAR: f64 = 0.25;
/// Slot time after which a decode measurement counts half as much as a new one.
pub const DECODE_HALF_LIFE_MS: f64 = 10_000.0;
/// Weight of the newest sample in the prefill fit and the tokens-per-character average.
pub const EWMA_ALPHA: f64 = 0.2;
/// Output lengths remembered per model.
pub const LENGTH_HISTORY: usize = 64;
/// Forecast errors remembered per model for [`OnTimeModel`].
pub const RESIDUAL_HISTORY: usize = 256;
/// Spread (standard deviation of `ln(actual / predicted)`) of the prior error distribution.
pub const PRIOR_LOG_SPREAD: f64 = 0.3;
/// Weight of the prior, in finished tasks: after this many, measurements and prior weigh the
/// same.
pub const PRIOR_WEIGHT: f64 = 8.0;
/// Kernel bandwidth (in `ln` units) smoothing the empirical error distribution, so the
/// probability moves continuously with the deadline.
pub const KERNEL_BANDWIDTH: f64 = 0.05;
/// Concurrencies tracked separately; higher ones share the last bucket.
pub const MAX_CONCURRENCY: usize = 512;

/// Remaining work below this counts as done (floating-point dust).
const EPS: f64 = 1e-6;

/// Logistic approximation of the standard normal CDF (within 0.01 of it, exactly monotone).
fn normal_cdf(z: f64) -> f64 {
    1.0 / (1.0 + (-1.702 * z).exp())
}

/// A finite, non-negative `x`, else `fallback`.
fn sane(x: f64, fallback: f64) -> f64 {
    if x.is_finite() && x >= 0.0 {
        x
    } else {
        fallback
    }
}

/// Decayed sums of one concurrency's measurements.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Decayed {
    slot_ms: f64,
    tokens: f64,
}

/// Measured per-slot decode time at each concurrency of a replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DecodeRates {
    /// Index `c - 1`; `None` until concurrency `c` was measured.
    buckets: Vec<Option<Decayed>>,
}

impl DecodeRates {
    /// Records that streams sharing a replica with `concurrency` running tasks produced
    /// `tokens` tokens in `slot_ms` of stream time (the sum over the decoding streams of the
    /// time each decoded). Samples without tokens or time, or with garbage numbers, are ignored.
    pub fn record(&mut self, concurrency: usize, tokens: f64, slot_ms: f64) {
        if concurrency == 0
            || !(tokens.is_finite() && slot_ms.is_finite() && tokens > 0.0 && slot_ms > 0.0)
        {
            return;
        }
        let i = concurrency.min(MAX_CONCURRENCY) - 1;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, None);
        }
        let keep = 0.5f64.powf(slot_ms / DECODE_HALF_LIFE_MS);
        let b = self.buckets[i].get_or_insert_with(Decayed::default);
        b.slot_ms = b.slot_ms * keep + slot_ms;
        b.tokens = b.tokens * keep + tokens;
    }

    /// The measured per-slot milliseconds per token at exactly `concurrency`, if any.
    pub fn measured(&self, concurrency: usize) -> Option<f64> {
        let i = concurrency.clamp(1, MAX_CONCURRENCY) - 1;
        self.buckets
            .get(i)
            .copied()
            .flatten()
            .filter(|b| b.tokens > 0.0)
            .map(|b| b.slot_ms / b.tokens)
    }

    /// Whether any concurrency was measured.
    pub fn any_measured(&self) -> bool {
        (1..=self.buckets.len()).any(|c| self.measured(c).is_some())
    }

    /// The smallest and largest measured concurrencies.
    pub fn measured_range(&self) -> (Option<usize>, Option<usize>) {
        let measured = |c: &usize| self.measured(*c).is_some();
        let lo = (1..=self.buckets.len()).find(measured);
        let hi = (1..=self.buckets.len()).rev().find(measured);
        (lo, hi)
    }

    /// Per-slot milliseconds per token at `concurrency` (at least 1): measured, else
    /// interpolated between the nearest measured concurrencies, extrapolated linearly from the
    /// two largest beyond them (never faster than the largest), held flat below the smallest,
    /// and [`PRIOR_DECODE_MS_PER_TOKEN`] when nothing was measured.
    pub fn ms_per_token(&self, concurrency: usize) -> f64 {
        let c = concurrency.clamp(1, MAX_CONCURRENCY);
        if let Some(m) = self.measured(c) {
            return m;
        }
        let points: Vec<(f64, f64)> = (1..=self.buckets.len())
            .filter_map(|k| self.measured(k).map(|m| (k as f64, m)))
            .collect();
        let x = c as f64;
        let below = points.iter().rev().find(|p| p.0 < x).copied();
        let above = points.iter().find(|p| p.0 > x).copied();
        match (below, above) {
            (None, None) => PRIOR_DECODE_MS_PER_TOKEN,
            (Some((x0, y0)), Some((x1, y1))) => y0 + (y1 - y0) * (x - x0) / (x1 - x0),
            (None, Some((_, y1))) => y1,
            (Some((x1, y1)), None) => match points.len() {
                n if n >= 2 => {
                    let (x0, y0) = points[n - 2];
                    let slope = ((y1 - y0) / (x1 - x0)).max(0.0);
                    y1 + slope * (x - x1)
                }
                _ => y1,
            },
        }
    }
}

/// Exponentially weighted least-squares fit of first-token time against prompt tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefillFit {
    n: u64,
    mean_x: f64,
    mean_y: f64,
    var_x: f64,
    cov_xy: f64,
}

impl PrefillFit {
    /// Records one task: `prompt_tokens` the engine evaluated and `first_token_ms` from
    /// dispatch to its first token.
    pub fn record(&mut self, prompt_tokens: f64, first_token_ms: f64) {
        if !(prompt_tokens.is_finite() && first_token_ms.is_finite())
            || prompt_tokens < 0.0
            || first_token_ms < 0.0
        {
            return;
        }
        if self.n == 0 {
            *self = Self {
                n: 1,
                mean_x: prompt_tokens,
                mean_y: first_token_ms,
                var_x: 0.0,
                cov_xy: 0.0,
            };
            return;
        }
        self.n = self.n.saturating_add(1);
        // Incremental exponentially weighted moments (West 1979).
        let (dx, dy) = (prompt_tokens - self.mean_x, first_token_ms - self.mean_y);
        self.mean_x += EWMA_ALPHA * dx;
        self.mean_y += EWMA_ALPHA * dy;
        self.var_x = (1.0 - EWMA_ALPHA) * (self.var_x + EWMA_ALPHA * dx * dx);
        self.cov_xy = (1.0 - EWMA_ALPHA) * (self.cov_xy + EWMA_ALPHA * dx * dy);
    }

    /// Tasks recorded.
    pub fn samples(&self) -> u64 {
        self.n
    }

    /// Expected milliseconds from dispatch to the first token of a prompt of `prompt_tokens`.
    /// The slope needs prompts of different lengths (else only the mean is used) and is never
    /// negative; the answer is never negative.
    pub fn ms(&self, prompt_tokens: f64) -> f64 {
        let x = sane(prompt_tokens, 0.0);
        if self.n == 0 {
            return PRIOR_PREFILL_BASE_MS + PRIOR_PREFILL_MS_PER_TOKEN * x;
        }
        // Below one token² of spread the slope is noise.
        let slope = if self.var_x > 1.0 {
            (self.cov_xy / self.var_x).max(0.0)
        } else {
            0.0
        };
        sane(self.mean_y + slope * (x - self.mean_x), 0.0).max(0.0)
    }
}

/// Recent output lengths of one model: `(tokens, cut off by max_tokens)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthHistory {
    recent: VecDeque<(u64, bool)>,
}

impl LengthHistory {
    /// Records a finished task that produced `tokens` with a limit of `max_tokens`.
    pub fn record(&mut self, tokens: u64, max_tokens: u64) {
        if self.recent.len() == LENGTH_HISTORY {
            self.recent.pop_front();
        }
        self.recent.push_back((tokens, tokens >= max_tokens));
    }

    /// Finished tasks remembered.
    pub fn len(&self) -> usize {
        self.recent.len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.recent.is_empty()
    }

    /// Expected total output of a task limited to `max_tokens` that has produced `done` tokens
    /// so far: `done + E[min(max_tokens, L) − done | L > done]` over the remembered lengths,
    /// plus one pseudo-observation that runs to the limit (so a few short answers do not make
    /// the estimate collapse). An observation cut off below the new limit counts as reaching
    /// it. At least `done`, at most `max(done, max_tokens)`.
    pub fn expected_total(&self, max_tokens: u64, done: u64) -> f64 {
        let max = max_tokens as f64;
        if done >= max_tokens {
            return done as f64;
        }
        let (mut sum, mut n) = (max, 1.0);
        for &(tokens, cut) in &self.recent {
            if tokens <= done {
                // Ended before where this task already is: says nothing about it.
                continue;
            }
            let v = if cut { max } else { (tokens as f64).min(max) };
            sum += v;
            n += 1.0;
        }
        (sum / n).clamp(done as f64, max)
    }
}

/// The empirical distribution of forecast errors, `ln(actual / predicted)` of finished tasks'
/// end times, and the on-time probability it gives.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OnTimeModel {
    residuals: VecDeque<f64>,
}

impl OnTimeModel {
    /// Records a finished task predicted to end `predicted_ms` after admission that ended
    /// `actual_ms` after it. Zero or garbage durations are ignored (their ratio means nothing).
    pub fn record(&mut self, predicted_ms: f64, actual_ms: f64) {
        if !(predicted_ms.is_finite() && actual_ms.is_finite() && predicted_ms >= 1.0)
            || actual_ms < 1.0
        {
            return;
        }
        if self.residuals.len() == RESIDUAL_HISTORY {
            self.residuals.pop_front();
        }
        self.residuals.push_back((actual_ms / predicted_ms).ln());
    }

    /// Errors remembered.
    pub fn samples(&self) -> usize {
        self.residuals.len()
    }

    /// Probability in [0, 1] that a task predicted to end in `predicted_end_ms` ends within
    /// `deadline_ms` (both from the same "now"). 1.0 without a deadline; non-decreasing in the
    /// deadline, non-increasing in the prediction.
    pub fn probability(&self, deadline_ms: Option<f64>, predicted_end_ms: f64) -> f64 {
        let Some(deadline) = deadline_ms else {
            return 1.0;
        };
        if deadline.is_nan() || deadline <= 0.0 {
            return 0.0;
        }
        // Sub-millisecond predictions are "now": the ratio would explode.
        let predicted = sane(predicted_end_ms, f64::INFINITY).max(1.0);
        let x = (deadline / predicted).ln();
        if x.is_nan() {
            return 0.0;
        }
        let prior = PRIOR_WEIGHT * normal_cdf(x / PRIOR_LOG_SPREAD);
        let measured: f64 = self
            .residuals
            .iter()
            .map(|r| normal_cdf((x - r) / KERNEL_BANDWIDTH))
            .sum();
        ((prior + measured) / (PRIOR_WEIGHT + self.residuals.len() as f64)).clamp(0.0, 1.0)
    }
}

/// Everything measured about one model on one pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Per-slot decode time by concurrency.
    pub decode: DecodeRates,
    /// First-token time against prompt length.
    pub prefill: PrefillFit,
    /// Recent output lengths.
    pub lengths: LengthHistory,
    /// Forecast errors by [`OnTimeClass`], for on-time probabilities: a batch task's 202
    /// cannot know of the interactive tasks that will go ahead of it, and a task predicted to
    /// wait carries the error of the whole queue ahead, where one that starts at once carries
    /// only its own; each kind of prediction is calibrated on errors of its own kind.
    pub on_time: [OnTimeModel; 4],
    /// Forecast errors of running tasks' ends (predicted at dispatch), for the
    /// `on_time_probability` of a running task's `metrics` frames.
    #[serde(default)]
    pub on_time_running: OnTimeModel,
    tokens_per_char: Option<f64>,
    /// What is assumed before anything was measured (from the model file and the card);
    /// the fixed `PRIOR_*` constants without one. Not persisted: derived anew at each start.
    #[serde(skip)]
    prior: Option<RatePrior>,
}

/// What kind of prediction an on-time probability is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OnTimeClass {
    /// The task's priority.
    pub priority: Priority,
    /// Whether it was predicted to wait for a slot (start later than now).
    pub waits: bool,
}

impl OnTimeClass {
    fn index(self) -> usize {
        let p = match self.priority {
            Priority::Interactive => 0,
            Priority::Batch => 2,
        };
        p + usize::from(self.waits)
    }
}

impl ModelStats {
    /// Sets the prior that stands in for rates not measured yet.
    pub fn set_prior(&mut self, prior: Option<RatePrior>) {
        self.prior = prior;
    }

    /// The prior in use, if any.
    pub fn prior(&self) -> Option<&RatePrior> {
        self.prior.as_ref()
    }

    /// Whether both rates rest on measurements (restored or live) rather than priors.
    pub fn is_measured(&self) -> bool {
        self.prefill.samples() > 0 && self.decode.any_measured()
    }

    /// Per-slot decode milliseconds per token at `concurrency`: measured; between measured
    /// concurrencies interpolated ([`DecodeRates::ms_per_token`]); outside them the prior's
    /// shape scaled to the nearest measurement (a CPU engine slows with each stream, a GPU
    /// barely); the prior alone when nothing was measured.
    pub fn decode_ms(&self, concurrency: usize) -> f64 {
        let c = concurrency.clamp(1, MAX_CONCURRENCY);
        let Some(prior) = &self.prior else {
            return self.decode.ms_per_token(c);
        };
        if let Some(m) = self.decode.measured(c) {
            return m;
        }
        let (lo, hi) = self.decode.measured_range();
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo < c && c < hi => self.decode.ms_per_token(c),
            (Some(lo), Some(hi)) => {
                let k = if c < lo { lo } else { hi };
                let m = self.decode.measured(k).unwrap_or(PRIOR_DECODE_MS_PER_TOKEN);
                sane(m * prior.decode_ms(c) / prior.decode_ms(k), m)
            }
            _ => prior.decode_ms(c),
        }
    }

    /// Milliseconds from dispatch to the first token of a prompt of `prompt_tokens`: the fit
    /// once a task was measured, else the prior.
    pub fn prefill_ms(&self, prompt_tokens: f64) -> f64 {
        match &self.prior {
            Some(p) if self.prefill.samples() == 0 => p.prefill_ms(prompt_tokens),
            _ => self.prefill.ms(prompt_tokens),
        }
    }

    /// The forecast errors of predictions of `class`.
    pub fn on_time(&self, class: OnTimeClass) -> &OnTimeModel {
        &self.on_time[class.index()]
    }

    /// The forecast errors of predictions of `class`, to record into.
    pub fn on_time_mut(&mut self, class: OnTimeClass) -> &mut OnTimeModel {
        &mut self.on_time[class.index()]
    }

    /// Records a prompt of `chars` characters that the engine counted as `tokens` tokens.
    pub fn record_prompt(&mut self, chars: usize, tokens: u64) {
        if chars == 0 || tokens == 0 {
            return;
        }
        let r = tokens as f64 / chars as f64;
        self.tokens_per_char = Some(match self.tokens_per_char {
            Some(m) => m + EWMA_ALPHA * (r - m),
            None => r,
        });
    }

    /// Estimated prompt tokens of a prompt of `chars` characters.
    pub fn prompt_tokens(&self, chars: usize) -> f64 {
        chars as f64 * self.tokens_per_char.unwrap_or(PRIOR_TOKENS_PER_CHAR)
    }

    /// Expected total output tokens of a task: `expected_tokens` when given (capped by
    /// `max_tokens`), else [`LengthHistory::expected_total`]; never below `done`.
    pub fn expected_tokens(&self, max_tokens: u64, expected_tokens: Option<u64>, done: u64) -> f64 {
        match expected_tokens {
            Some(e) => e.min(max_tokens).max(done) as f64,
            None => self.lengths.expected_total(max_tokens, done),
        }
    }

    /// The work of a task not yet dispatched: its prefill time and expected tokens.
    pub fn queued_work(
        &self,
        prompt_chars: usize,
        max_tokens: u64,
        expected_tokens: Option<u64>,
    ) -> Work {
        Work {
            prefill_ms: self.prefill_ms(self.prompt_tokens(prompt_chars)),
            tokens: self.expected_tokens(max_tokens, expected_tokens, 0),
        }
    }

    /// The remaining work of a running task `elapsed_ms` after its dispatch that has produced
    /// `done` tokens: the rest of its prefill while it has none, and its expected remaining
    /// tokens. A task past its expected prefill is assumed to be about to produce its first
    /// token.
    pub fn running_work(
        &self,
        prompt_chars: usize,
        max_tokens: u64,
        expected_tokens: Option<u64>,
        done: u64,
        elapsed_ms: f64,
    ) -> Work {
        let prefill_ms = if done == 0 {
            (self.prefill_ms(self.prompt_tokens(prompt_chars)) - sane(elapsed_ms, 0.0)).max(0.0)
        } else {
            0.0
        };
        Work {
            prefill_ms,
            tokens: (self.expected_tokens(max_tokens, expected_tokens, done) - done as f64)
                .max(0.0),
        }
    }

    /// Milliseconds a task of `work` takes when it shares its replica with `concurrency`
    /// running tasks (itself included) throughout.
    pub fn task_ms(&self, work: Work, concurrency: usize) -> f64 {
        work.prefill_ms + work.tokens * self.decode_ms(concurrency)
    }
}

/// Remaining work of one task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Work {
    /// Milliseconds until its first token (0 once it has one).
    pub prefill_ms: f64,
    /// Tokens still to produce.
    pub tokens: f64,
}

/// One replica as the forecast sees it.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplicaLoad {
    /// Engine slots (concurrent tasks) of the replica.
    pub slots: usize,
    /// Milliseconds until it can take tasks: 0 when ready, the expected load time for a
    /// replica that is loading or not loaded.
    pub available_in_ms: f64,
    /// Its running tasks' remaining work.
    pub running: Vec<Work>,
}

/// When one task starts and ends, in milliseconds from now.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Forecast {
    /// Until it is dispatched (0 for a running task). Infinite when no replica can ever take
    /// it (none has a slot).
    pub start_ms: f64,
    /// Until it ends.
    pub end_ms: f64,
}

impl Forecast {
    const NEVER: Forecast = Forecast {
        start_ms: f64::INFINITY,
        end_ms: f64::INFINITY,
    };
}

/// The forecast of a whole pool.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// For each replica, in the order given, the end of each running task, in the order given.
    pub running: Vec<Vec<f64>>,
    /// For each queued task, in queue order.
    pub queued: Vec<Forecast>,
}

/// Which task a simulated stream is.
#[derive(Clone, Copy, Debug)]
enum Who {
    Running(usize, usize),
    Queued(usize),
}

#[derive(Clone, Copy, Debug)]
struct Stream {
    who: Who,
    work: Work,
}

struct SimReplica {
    slots: usize,
    available_at: f64,
    streams: Vec<Stream>,
}

/// The event simulation behind [`forecast`] and [`state_after`].
struct Sim<'a> {
    replicas: Vec<SimReplica>,
    queue: &'a [Work],
    next: usize,
    t: f64,
    ms_per_token: &'a dyn Fn(usize) -> f64,
    plan: Plan,
}

impl<'a> Sim<'a> {
    fn new(
        replicas: &[ReplicaLoad],
        queue: &'a [Work],
        ms_per_token: &'a dyn Fn(usize) -> f64,
    ) -> Self {
        let sim_replicas = replicas
            .iter()
            .enumerate()
            .map(|(r, rep)| SimReplica {
                slots: rep.slots,
                available_at: sane(rep.available_in_ms, 0.0),
                streams: rep
                    .running
                    .iter()
                    .enumerate()
                    .map(|(i, w)| Stream {
                        who: Who::Running(r, i),
                        work: Work {
                            prefill_ms: sane(w.prefill_ms, 0.0),
                            tokens: sane(w.tokens, 0.0),
                        },
                    })
                    .collect(),
            })
            .collect();
        Self {
            replicas: sim_replicas,
            queue,
            next: 0,
            t: 0.0,
            ms_per_token,
            plan: Plan {
                running: replicas
                    .iter()
                    .map(|r| vec![f64::INFINITY; r.running.len()])
                    .collect(),
                queued: vec![Forecast::NEVER; queue.len()],
            },
        }
    }

    /// Per-slot ms per token at concurrency `c`, sanitised.
    fn rate(&self, c: usize) -> f64 {
        sane((self.ms_per_token)(c), PRIOR_DECODE_MS_PER_TOKEN)
    }

    /// Starts queued tasks on available replicas with a free slot, least loaded first (by
    /// running tasks per slot; ties to the first), as the dispatcher does.
    fn dispatch(&mut self) {
        while self.next < self.queue.len() {
            let t = self.t;
            let best = self
                .replicas
                .iter()
                .enumerate()
                .filter(|(_, r)| r.available_at <= t && r.streams.len() < r.slots)
                .min_by(|(_, a), (_, b)| {
                    let la = a.streams.len() as f64 / a.slots as f64;
                    let lb = b.streams.len() as f64 / b.slots as f64;
                    la.total_cmp(&lb)
                })
                .map(|(i, _)| i);
            let Some(r) = best else {
                return;
            };
            let q = self.next;
            self.next += 1;
            let w = self.queue[q];
            self.plan.queued[q].start_ms = t;
            self.replicas[r].streams.push(Stream {
                who: Who::Queued(q),
                work: Work {
                    prefill_ms: sane(w.prefill_ms, 0.0),
                    tokens: sane(w.tokens, 0.0),
                },
            });
        }
    }

    /// Time until the next event (a prefill or task done, a replica available); infinite when
    /// nothing will happen.
    fn next_event(&self) -> f64 {
        let mut dt = f64::INFINITY;
        for r in &self.replicas {
            if r.available_at > self.t {
                dt = dt.min(r.available_at - self.t);
            }
            if r.streams.is_empty() {
                continue;
            }
            let m = self.rate(r.streams.len());
            for s in &r.streams {
                let d = if s.work.prefill_ms > EPS {
                    s.work.prefill_ms
                } else {
                    s.work.tokens * m
                };
                dt = dt.min(d.max(0.0));
            }
        }
        dt
    }

    /// Moves every stream `dt` forward (no stream crosses from prefill to decode within one
    /// step: prefill ends are events).
    fn advance(&mut self, dt: f64) {
        for i in 0..self.replicas.len() {
            let c = self.replicas[i].streams.len();
            if c == 0 {
                continue;
            }
            let m = self.rate(c);
            for s in &mut self.replicas[i].streams {
                if s.work.prefill_ms > EPS {
                    s.work.prefill_ms = (s.work.prefill_ms - dt).max(0.0);
                } else if m > 0.0 {
                    s.work.tokens = (s.work.tokens - dt / m).max(0.0);
                } else {
                    s.work.tokens = 0.0;
                }
            }
        }
        self.t += dt;
    }

    /// Ends the streams with no work left.
    fn retire(&mut self) {
        let t = self.t;
        for r in &mut self.replicas {
            let plan = &mut self.plan;
            r.streams.retain(|s| {
                let done = s.work.prefill_ms <= EPS && s.work.tokens <= EPS;
                if done {
                    match s.who {
                        Who::Running(ri, i) => plan.running[ri][i] = t,
                        Who::Queued(q) => plan.queued[q].end_ms = t,
                    }
                }
                !done
            });
        }
    }

    /// Runs until nothing is left or time `until`.
    fn run(&mut self, until: f64) {
        let streams: usize = self.replicas.iter().map(|r| r.streams.len()).sum();
        // Each step completes a prefill, a task or a replica's load; the cap only guards
        // against float pathologies.
        let cap = 4 * (streams + self.queue.len() + self.replicas.len()) + 16;
        for _ in 0..cap {
            self.retire();
            self.dispatch();
            self.retire();
            let dt = self.next_event();
            if !dt.is_finite() {
                return;
            }
            if self.t + dt > until {
                let rest = (until - self.t).max(0.0);
                self.advance(rest);
                return;
            }
            self.advance(dt);
        }
    }
}

/// Forecasts the start and end of every queued task (in queue order) and the end of every
/// running task, given the replicas' running work, the queued work and the per-slot decode time
/// at each concurrency (`ms_per_token(c)`, e.g. [`DecodeRates::ms_per_token`]).
///
/// Starts are non-decreasing in queue position. A queue with no replica that has a slot gets
/// infinite forecasts.
pub fn forecast(
    replicas: &[ReplicaLoad],
    queued: &[Work],
    ms_per_token: &dyn Fn(usize) -> f64,
) -> Plan {
    let mut sim = Sim::new(replicas, queued, ms_per_token);
    sim.run(f64::INFINITY);
    sim.plan
}

/// The pool as the same model says it will be `t_ms` from now: the replicas' running work
/// (tasks dispatched by then appended after the ones already running, finished ones removed)
/// and how many queued tasks have been dispatched. [`forecast`] on this state agrees with the
/// forecast made now, shifted by `t_ms` (the model is consistent with itself).
pub fn state_after(
    replicas: &[ReplicaLoad],
    queued: &[Work],
    ms_per_token: &dyn Fn(usize) -> f64,
    t_ms: f64,
) -> (Vec<ReplicaLoad>, usize) {
    let mut sim = Sim::new(replicas, queued, ms_per_token);
    sim.run(sane(t_ms, 0.0));
    let t = sim.t;
    let state = sim
        .replicas
        .iter()
        .map(|r| ReplicaLoad {
            slots: r.slots,
            available_in_ms: (r.available_at - t).max(0.0),
            running: r.streams.iter().map(|s| s.work).collect(),
        })
        .collect();
    (state, sim.next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat(m: f64) -> impl Fn(usize) -> f64 {
        move |_| m
    }

    fn work(tokens: f64) -> Work {
        Work {
            prefill_ms: 0.0,
            tokens,
        }
    }

    fn rep(slots: usize, running: &[Work]) -> ReplicaLoad {
        ReplicaLoad {
            slots,
            available_in_ms: 0.0,
            running: running.to_vec(),
        }
    }

    #[test]
    fn decode_rates_interpolate_and_extrapolate() {
        let mut d = DecodeRates::default();
        assert_eq!(d.ms_per_token(3), PRIOR_DECODE_MS_PER_TOKEN);
        d.record(2, 100.0, 1000.0); // 10 ms/token at 2
        assert_eq!(d.ms_per_token(2), 10.0);
        assert_eq!(d.ms_per_token(1), 10.0, "flat below the smallest");
        assert_eq!(d.ms_per_token(8), 10.0, "flat above with one point");
        d.record(4, 100.0, 2000.0); // 20 ms/token at 4
        assert_eq!(d.ms_per_token(3), 15.0);
        assert_eq!(d.ms_per_token(6), 30.0);
        // Garbage is ignored.
        d.record(0, 1.0, 1.0);
        d.record(2, f64::NAN, 1.0);
        d.record(2, 0.0, 1.0);
        assert_eq!(d.ms_per_token(2), 10.0);
        // New measurements take over as old ones decay.
        for _ in 0..200 {
            d.record(2, 200.0, 1000.0);
        }
        assert!(
            (d.ms_per_token(2) - 5.0).abs() < 0.01,
            "{}",
            d.ms_per_token(2)
        );
    }

    #[test]
    fn prefill_fit_learns_a_line() {
        let mut p = PrefillFit::default();
        assert_eq!(p.ms(100.0), PRIOR_PREFILL_BASE_MS + 100.0);
        p.record(10.0, 30.0);
        assert_eq!(p.ms(500.0), 30.0, "one sample: no slope yet");
        for i in 0..200 {
            let x = (i % 10) as f64 * 100.0;
            p.record(x, 20.0 + 0.5 * x);
        }
        assert!((p.ms(400.0) - 220.0).abs() < 1.0, "{}", p.ms(400.0));
        assert!(p.ms(0.0) >= 0.0);
    }

    #[test]
    fn expected_length_is_capped_by_history() {
        let mut h = LengthHistory::default();
        assert_eq!(h.expected_total(512, 0), 512.0, "no history: the limit");
        for _ in 0..63 {
            h.record(100, 512); // the model stops around 100 tokens
        }
        let e = h.expected_total(512, 0);
        assert!((e - (512.0 + 63.0 * 100.0) / 64.0).abs() < 1e-9, "{e}");
        // A small limit caps it.
        assert_eq!(h.expected_total(32, 0), 32.0);
        // Past everything the history knows: the limit.
        assert_eq!(h.expected_total(512, 150), 512.0);
        // Done at the limit: done.
        assert_eq!(h.expected_total(32, 40), 40.0);
        // Cut-off tasks count as reaching the new limit.
        let mut h = LengthHistory::default();
        h.record(32, 32);
        assert_eq!(h.expected_total(512, 0), 512.0);
    }

    #[test]
    fn forecast_examples() {
        // Two slots, two running tasks (100 and 300 tokens at 1 ms/token), two queued of 100.
        let reps = [rep(2, &[work(100.0), work(300.0)])];
        let q = [work(100.0), work(100.0)];
        let p = forecast(&reps, &q, &flat(1.0));
        assert_eq!(p.running, vec![vec![100.0, 300.0]]);
        assert_eq!(
            p.queued[0],
            Forecast {
                start_ms: 100.0,
                end_ms: 200.0
            }
        );
        assert_eq!(
            p.queued[1],
            Forecast {
                start_ms: 200.0,
                end_ms: 300.0
            }
        );
        // Concurrency slows each stream: 1 ms/token alone, 2 ms/token together.
        let curve = |c: usize| c as f64;
        let p = forecast(&[rep(2, &[])], &[work(100.0), work(100.0)], &curve);
        assert_eq!(p.queued[0].end_ms, 200.0);
        assert_eq!(p.queued[1].end_ms, 200.0);
        // Prefill comes first.
        let q = [Work {
            prefill_ms: 50.0,
            tokens: 10.0,
        }];
        let p = forecast(&[rep(1, &[])], &q, &flat(2.0));
        assert_eq!(
            p.queued[0],
            Forecast {
                start_ms: 0.0,
                end_ms: 70.0
            }
        );
        // A replica still loading takes tasks once loaded.
        let loading = ReplicaLoad {
            slots: 1,
            available_in_ms: 1000.0,
            running: vec![],
        };
        let p = forecast(&[loading], &[work(10.0)], &flat(1.0));
        assert_eq!(
            p.queued[0],
            Forecast {
                start_ms: 1000.0,
                end_ms: 1010.0
            }
        );
        // The least-loaded replica gets the next task.
        let reps = [rep(2, &[work(1000.0)]), rep(2, &[])];
        let p = forecast(&reps, &[work(5.0), work(5.0), work(5.0)], &flat(1.0));
        assert!(p.queued.iter().all(|f| f.start_ms == 0.0), "{p:?}");
        // No slot anywhere: never.
        let p = forecast(&[rep(0, &[])], &[work(1.0)], &flat(1.0));
        assert!(p.queued[0].start_ms.is_infinite());
        let p = forecast(&[], &[work(1.0)], &flat(1.0));
        assert!(p.queued[0].end_ms.is_infinite());
        // Garbage in stays sane.
        let q = [Work {
            prefill_ms: f64::NAN,
            tokens: -3.0,
        }];
        let p = forecast(&[rep(1, &[])], &q, &|_| f64::NAN);
        assert_eq!(
            p.queued[0],
            Forecast {
                start_ms: 0.0,
                end_ms: 0.0
            }
        );
    }

    #[test]
    fn state_after_moves_work_forward() {
        let reps = [rep(1, &[work(100.0)])];
        let q = [work(50.0), work(50.0)];
        let (s, started) = state_after(&reps, &q, &flat(1.0), 120.0);
        assert_eq!(started, 1);
        assert_eq!(s[0].running.len(), 1);
        assert!((s[0].running[0].tokens - 30.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn on_time_probability_shape() {
        let m = OnTimeModel::default();
        assert_eq!(m.probability(None, 1000.0), 1.0);
        assert_eq!(m.probability(Some(0.0), 1000.0), 0.0);
        assert!((m.probability(Some(1000.0), 1000.0) - 0.5).abs() < 1e-9);
        assert!(m.probability(Some(3000.0), 1000.0) > 0.99);
        assert!(m.probability(Some(300.0), 1000.0) < 0.01);
        assert!(m.probability(Some(10.0), 0.0) > 0.99, "ending now");
        assert_eq!(m.probability(Some(10.0), f64::INFINITY), 0.0);
        assert_eq!(m.probability(Some(f64::NAN), 10.0), 0.0);
    }

    #[test]
    fn on_time_probability_learns_a_bias() {
        // Tasks end 20 % later than predicted, every time.
        let mut m = OnTimeModel::default();
        for _ in 0..RESIDUAL_HISTORY {
            m.record(1000.0, 1200.0);
        }
        assert!(m.probability(Some(1100.0), 1000.0) < 0.1);
        assert!(m.probability(Some(1320.0), 1000.0) > 0.9);
        // Ignored: zero and garbage durations.
        let n = m.samples();
        m.record(0.0, 5.0);
        m.record(5.0, f64::NAN);
        assert_eq!(m.samples(), n);
    }

    #[test]
    fn each_kind_of_prediction_is_calibrated_on_its_own_errors() {
        let mut s = ModelStats::default();
        let class = |priority, waits| OnTimeClass { priority, waits };
        let queued = class(Priority::Interactive, true);
        // Predictions made behind a queue end 30 % late; those of tasks starting at once are
        // exact.
        for _ in 0..64 {
            s.on_time_mut(queued).record(1000.0, 1300.0);
            s.on_time_mut(class(Priority::Interactive, false))
                .record(1000.0, 1000.0);
        }
        let p = |c| s.on_time(c).probability(Some(1150.0), 1000.0);
        assert!(p(queued) < 0.2, "{}", p(queued));
        assert!(p(class(Priority::Interactive, false)) > 0.8);
        // Batch predictions learned nothing: the prior alone.
        let prior = OnTimeModel::default().probability(Some(1150.0), 1000.0);
        assert_eq!(p(class(Priority::Batch, true)), prior);
        assert_eq!(p(class(Priority::Batch, false)), prior);
    }

    #[test]
    fn the_prior_fills_what_is_not_measured() {
        let prior = RatePrior {
            decode_ms_one: 2.0,
            decode_ms_per_extra_stream: 1.0,
            prefill_base_ms: 10.0,
            prefill_ms_per_token: 0.5,
        };
        let mut s = ModelStats::default();
        s.set_prior(Some(prior));
        assert!(!s.is_measured());
        assert_eq!(s.decode_ms(1), 2.0);
        assert_eq!(s.decode_ms(3), 4.0);
        assert_eq!(s.prefill_ms(20.0), 20.0);
        // Measured at 2 streams: 6 ms (twice the prior's 3); 1 and 4 streams follow the
        // prior's shape scaled to it.
        s.decode.record(2, 100.0, 600.0);
        assert_eq!(s.decode_ms(2), 6.0);
        assert_eq!(s.decode_ms(1), 4.0);
        assert_eq!(s.decode_ms(4), 10.0);
        // Between two measurements: interpolated.
        s.decode.record(4, 100.0, 800.0);
        assert_eq!(s.decode_ms(3), 7.0);
        s.prefill.record(10.0, 7.0);
        assert!(s.is_measured());
        assert_eq!(s.prefill_ms(10.0), 7.0, "the fit replaces the prior");
    }

    #[test]
    fn model_stats_work() {
        let mut s = ModelStats::default();
        s.record_prompt(400, 100);
        assert_eq!(s.prompt_tokens(40), 10.0);
        assert_eq!(s.expected_tokens(512, Some(100), 0), 100.0);
        assert_eq!(s.expected_tokens(512, Some(1000), 0), 512.0);
        assert_eq!(s.expected_tokens(512, Some(100), 200), 200.0);
        let w = s.running_work(0, 100, None, 40, 0.0);
        assert_eq!(w, work(60.0));
        s.decode.record(1, 100.0, 500.0);
        assert_eq!(s.task_ms(work(10.0), 1), 50.0);
    }
}
