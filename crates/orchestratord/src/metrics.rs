//! The daemon's Prometheus series , names and labels exact. No task or session ids as
//! labels: cardinality stays bounded by pools, replicas and reasons.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `{engine,engine_version,pool_id,priority}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolPriority {
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Pool.
    pub pool_id: String,
    /// `interactive` or `batch`.
    pub priority: String,
}

/// `{engine,engine_version,pool_id,replica_id,priority}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaPriority {
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Pool.
    pub pool_id: String,
    /// Replica (empty before dispatch).
    pub replica_id: String,
    /// `interactive` or `batch`.
    pub priority: String,
}

/// `{engine,engine_version,pool_id,replica_id,reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReplicaReason {
    /// Engine kind.
    pub engine: String,
    /// Engine build.
    pub engine_version: String,
    /// Pool.
    pub pool_id: String,
    /// Replica (empty while queued).
    pub replica_id: String,
    /// Why.
    pub reason: String,
}

/// `{engine,reason}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineReason {
    /// Engine kind (empty when no pool was resolved).
    pub engine: String,
    /// Error code.
    pub reason: String,
}

/// `{engine,engine_version,pool_id,replica_id}`: the pool manager's per-replica label set.
pub use pool_manager::ReplicaLabels as Replica;

/// `{engine,policy}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnginePolicy {
    /// Engine kind.
    pub engine: String,
    /// `reject` or `drop-lru`.
    pub policy: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 17,
    ))
}

/// All series.
#[derive(Clone)]
pub struct Metrics {
    /// `queue_depth`; set it through [`Metrics::set_queue_depth`].
    pub queue_depth: Family<PoolPriority, Gauge>,
    /// The label set each (pool, priority) `queue_depth` gauge carries now.
    queue_depth_labels: Arc<Mutex<HashMap<(String, String), PoolPriority>>>,
    /// `tasks_enqueued_total`.
    pub tasks_enqueued: Family<ReplicaPriority, Counter>,
    /// `tasks_started_total`.
    pub tasks_started: Family<ReplicaPriority, Counter>,
    /// `tasks_canceled_total`.
    pub tasks_canceled: Family<ReplicaReason, Counter>,
    /// `tasks_rejected_total`.
    pub tasks_rejected: Family<EngineReason, Counter>,
    /// `tokens_in_total`.
    pub tokens_in: Family<Replica, Counter>,
    /// `tokens_out_total`.
    pub tokens_out: Family<Replica, Counter>,
    /// `latency_first_token_ms`.
    pub latency_first_token_ms: Family<PoolPriority, Histogram>,
    /// `latency_decode_ms`.
    pub latency_decode_ms: Family<PoolPriority, Histogram>,
    /// `admission_backpressure_events_total`.
    pub backpressure: Family<EnginePolicy, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queue_depth: Family::default(),
            queue_depth_labels: Arc::default(),
            tasks_enqueued: Family::default(),
            tasks_started: Family::default(),
            tasks_canceled: Family::default(),
            tasks_rejected: Family::default(),
            tokens_in: Family::default(),
            tokens_out: Family::default(),
            latency_first_token_ms: Family::new_with_constructor(latency_histogram),
            latency_decode_ms: Family::new_with_constructor(latency_histogram),
            backpressure: Family::default(),
        }
    }
}

impl Metrics {
    /// Adds every series to `reg`.
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "queue_depth",
            "Tasks waiting per pool and priority",
            self.queue_depth.clone(),
        );
        reg.register(
            "tasks_enqueued",
            "Tasks admitted to a queue",
            self.tasks_enqueued.clone(),
        );
        reg.register(
            "tasks_started",
            "Tasks dispatched to an engine",
            self.tasks_started.clone(),
        );
        reg.register(
            "tasks_canceled",
            "Tasks ended by a cancel",
            self.tasks_canceled.clone(),
        );
        reg.register(
            "tasks_rejected",
            "Tasks refused at admission or dropped",
            self.tasks_rejected.clone(),
        );
        reg.register(
            "tokens_in",
            "Prompt tokens evaluated by engines",
            self.tokens_in.clone(),
        );
        reg.register(
            "tokens_out",
            "Tokens generated by engines",
            self.tokens_out.clone(),
        );
        reg.register(
            "latency_first_token_ms",
            "Admission to first token, milliseconds",
            self.latency_first_token_ms.clone(),
        );
        reg.register(
            "latency_decode_ms",
            "First to last token, milliseconds",
            self.latency_decode_ms.clone(),
        );
        reg.register(
            "admission_backpressure_events",
            "429 answers from full queues",
            self.backpressure.clone(),
        );
    }

    /// Sets the `queue_depth` of one pool and priority. When its labels change (the engine
    /// version becomes known, a reload brings another build) the old series is removed: a
    /// gauge must not leave a stale twin (`engine_version="unknown"`) beside the live one.
    pub fn set_queue_depth(&self, labels: PoolPriority, depth: i64) {
        let key = (labels.pool_id.clone(), labels.priority.clone());
        // Held across the family update so that concurrent callers cannot interleave a
        // remove with another's create.
        let mut current = self
            .queue_depth_labels
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = current.get(&key).filter(|old| **old != labels) {
            self.queue_depth.remove(old);
        }
        self.queue_depth.get_or_create(&labels).set(depth);
        current.insert(key, labels);
    }

    /// Counts a rejection.
    pub fn rejected(&self, engine: &str, reason: &str) {
        self.tasks_rejected
            .get_or_create(&EngineReason {
                engine: engine.into(),
                reason: reason.into(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(m: &Metrics) -> String {
        let mut reg = Registry::default();
        m.register(&mut reg);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        out
    }

    fn depth(version: &str, priority: &str) -> PoolPriority {
        PoolPriority {
            engine: "llamacpp".into(),
            engine_version: version.into(),
            pool_id: "tiny".into(),
            priority: priority.into(),
        }
    }

    #[test]
    fn queue_depth_keeps_no_unknown_twin_once_the_version_is_known() {
        let m = Metrics::default();
        m.set_queue_depth(depth("unknown", "interactive"), 2);
        m.set_queue_depth(depth("unknown", "batch"), 1);
        m.set_queue_depth(depth("b1234", "interactive"), 3);
        let t = text(&m);
        assert!(
            t.contains("queue_depth{engine=\"llamacpp\",engine_version=\"b1234\",pool_id=\"tiny\",priority=\"interactive\"} 3"),
            "{t}"
        );
        assert!(
            !t.contains("engine_version=\"unknown\",pool_id=\"tiny\",priority=\"interactive\""),
            "stale twin left behind:\n{t}"
        );
        // The other priority keeps its own series until it is published again.
        assert!(
            t.contains("queue_depth{engine=\"llamacpp\",engine_version=\"unknown\",pool_id=\"tiny\",priority=\"batch\"} 1"),
            "{t}"
        );
        m.set_queue_depth(depth("b1234", "batch"), 0);
        let t = text(&m);
        assert!(!t.contains("\"unknown\""), "{t}");
        assert_eq!(
            t.lines().filter(|l| l.starts_with("queue_depth{")).count(),
            2,
            "{t}"
        );
    }
}
