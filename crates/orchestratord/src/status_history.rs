//! The recent history the status page charts (`history` of `GET /v1/status`): every
//! [`SAMPLE_EVERY`], the tokens generated per second since the previous sample and the queue
//! depths, over all pools and per pool; the last [`KEEP`] samples are kept.
//!
//! Tokens are counted from the tasks' own token counts, so a long task shows while it streams
//! (`tokens_out_total` only grows when a task ends).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use orch_api_types::{PoolSample, Priority, QueueDepths, StatusSample, TaskState};
use orch_pool_manager::PoolManager;

use crate::clock::now_ms;
use crate::task::TaskTable;

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Samples kept: 10 minutes.
pub const KEEP: usize = 300;

/// The samples, and what the next one is computed from.
pub struct StatusHistory {
    inner: Mutex<Inner>,
}

struct Inner {
    /// `(sequence number, sample)`, oldest first.
    samples: VecDeque<(u64, StatusSample)>,
    next_seq: u64,
    /// Tokens each task had at the previous sample.
    seen: HashMap<String, u64>,
    /// When the previous sample was taken.
    last: Instant,
}

impl Default for StatusHistory {
    fn default() -> Self {
        Self {
            inner: Mutex::new(Inner {
                samples: VecDeque::with_capacity(KEEP),
                next_seq: 1,
                seen: HashMap::new(),
                last: Instant::now(),
            }),
        }
    }
}

/// Tasks waiting per priority and running, per pool id.
pub fn queue_by_pool(tasks: &TaskTable) -> HashMap<String, QueueDepths> {
    let mut per_pool: HashMap<String, QueueDepths> = HashMap::new();
    for t in tasks.active() {
        let q = per_pool.entry(t.pool_id.clone()).or_default();
        match (t.state(), t.priority()) {
            (TaskState::Queued, Priority::Interactive) => q.interactive += 1,
            (TaskState::Queued, Priority::Batch) => q.batch += 1,
            (TaskState::Running, _) => q.running += 1,
            _ => {}
        }
    }
    per_pool
}

impl StatusHistory {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one sample of `pools` (ids in configuration order) from `tasks`.
    pub fn sample(&self, pools: &[String], tasks: &TaskTable) {
        let all = tasks.all();
        let now = Instant::now();
        let mut g = self.lock();
        let secs = now.duration_since(g.last).as_secs_f64().max(0.001);
        let mut new_tokens: HashMap<&str, u64> = HashMap::new();
        let mut seen = HashMap::with_capacity(all.len());
        for t in &all {
            let n = t.tokens_out();
            let before = g.seen.get(&t.id).copied().unwrap_or(0);
            *new_tokens.entry(t.pool_id.as_str()).or_default() += n.saturating_sub(before);
            seen.insert(t.id.clone(), n);
        }
        g.seen = seen;
        g.last = now;
        let queues = queue_by_pool(tasks);
        let mut total = QueueDepths::default();
        let mut total_tokens = 0u64;
        let per_pool = pools
            .iter()
            .map(|id| {
                let q = queues.get(id).copied().unwrap_or_default();
                total.interactive += q.interactive;
                total.batch += q.batch;
                total.running += q.running;
                let n = new_tokens.get(id.as_str()).copied().unwrap_or(0);
                total_tokens += n;
                PoolSample {
                    pool_id: id.clone(),
                    tokens_per_s: rate(n, secs),
                    queue: q,
                }
            })
            .collect();
        let sample = StatusSample {
            time_ms: now_ms(),
            tokens_per_s: rate(total_tokens, secs),
            queue: total,
            pools: per_pool,
        };
        let seq = g.next_seq;
        g.next_seq += 1;
        if g.samples.len() >= KEEP {
            g.samples.pop_front();
        }
        g.samples.push_back((seq, sample));
    }

    /// The samples taken after the one numbered `after` (all of them for 0), oldest first,
    /// and the number of the newest (`after` when there is none newer).
    pub fn since(&self, after: u64) -> (Vec<StatusSample>, u64) {
        let g = self.lock();
        let out: Vec<StatusSample> = g
            .samples
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(_, s)| s.clone())
            .collect();
        let last = g.samples.back().map_or(after, |(seq, _)| *seq.max(&after));
        (out, last)
    }
}

/// Tokens per second, rounded to a tenth.
fn rate(tokens: u64, secs: f64) -> f64 {
    ((tokens as f64 / secs) * 10.0).round() / 10.0
}

/// Samples every [`SAMPLE_EVERY`] until the future is dropped (the caller runs it on the
/// background tracker, which stops it at shutdown).
pub async fn run(history: Arc<StatusHistory>, pools: Arc<PoolManager>, tasks: Arc<TaskTable>) {
    let ids: Vec<String> = pools.pools().iter().map(|p| p.id().to_owned()).collect();
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: a baseline, so the first real sample covers one period.
    loop {
        tick.tick().await;
        let (h, t, ids) = (history.clone(), tasks.clone(), ids.clone());
        // Off the async threads: it walks the whole task table.
        if tokio::task::spawn_blocking(move || h.sample(&ids, &t))
            .await
            .is_err()
        {
            tracing::warn!("status history sample failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_returns_only_newer_samples_and_keeps_at_most_keep() {
        let h = StatusHistory::default();
        let tasks = TaskTable::new(Duration::from_secs(60), 100);
        let pools = vec!["a".to_owned(), "b".to_owned()];
        for _ in 0..3 {
            h.sample(&pools, &tasks);
        }
        let (all, last) = h.since(0);
        assert_eq!(all.len(), 3);
        assert_eq!(last, 3);
        assert_eq!(all[0].pools.len(), 2);
        assert_eq!(all[0].pools[1].pool_id, "b");
        assert_eq!(all[0].tokens_per_s, 0.0);
        let (none, same) = h.since(last);
        assert!(none.is_empty());
        assert_eq!(same, 3);
        h.sample(&pools, &tasks);
        let (one, last) = h.since(3);
        assert_eq!((one.len(), last), (1, 4));
        for _ in 0..KEEP + 5 {
            h.sample(&pools, &tasks);
        }
        let (all, last) = h.since(0);
        assert_eq!(all.len(), KEEP);
        assert_eq!(last, (KEEP + 9) as u64);
    }

    #[test]
    fn rate_rounds_to_a_tenth() {
        assert_eq!(rate(0, 2.0), 0.0);
        assert_eq!(rate(25, 2.0), 12.5);
        assert_eq!(rate(1, 3.0), 0.3);
    }
}
