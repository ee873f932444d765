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
pub use orch_pool_manager::ReplicaLabels as Replica;

/// `{engine,policy}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EnginePolicy {
    /// Engine kind.
    pub engine: String,
    /// `reject` or `drop-lru`.
    pub policy: String,
}

fn latency_histogram() -> Histogram {
    // Seconds (the base unit): 1 ms .. ~65 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 17,
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
    /// `latency_first_token_seconds`: admission to first token.
    pub latency_first_token: Family<PoolPriority, Histogram>,
    /// `latency_decode_seconds`: first to last token.
    pub latency_decode: Family<PoolPriority, Histogram>,
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
            latency_first_token: Family::new_with_constructor(latency_histogram),
            latency_decode: Family::new_with_constructor(latency_histogram),
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
            "latency_first_token_seconds",
            "Admission to first token, seconds",
            self.latency_first_token.clone(),
        );
        reg.register(
            "latency_decode_seconds",
            "First to last token, seconds",
            self.latency_decode.clone(),
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

/// `Content-Type` of the OpenMetrics text format, what prometheus-client encodes.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format 0.0.4 (promtool, curl, older scrapers).
pub const PROMETHEUS_TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper's `Accept` header asks for OpenMetrics: it lists
/// `application/openmetrics-text` with a q-value above 0 and at least that of `text/plain`.
/// Prometheus does; no header, `*/*` or `text/plain` get the Prometheus text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let (mut om, mut plain) = (0.0_f32, 0.0_f32);
    for range in accept.unwrap_or("").split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q=").or_else(|| p.strip_prefix("Q=")))
            .find_map(|v| v.parse::<f32>().ok())
            .filter(|q| q.is_finite())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => om = om.max(q),
            "text/plain" => plain = plain.max(q),
            _ => {}
        }
    }
    om > 0.0 && om >= plain
}

/// The exposition of `reg` and its `Content-Type`: OpenMetrics text when `openmetrics`, else
/// the Prometheus text format 0.0.4, so that the format always matches its content type.
pub fn exposition(
    reg: &Registry,
    openmetrics: bool,
) -> Result<(&'static str, String), std::fmt::Error> {
    let mut om = String::new();
    prometheus_client::encoding::text::encode(&mut om, reg)?;
    Ok(if openmetrics {
        (OPENMETRICS_CONTENT_TYPE, om)
    } else {
        (PROMETHEUS_TEXT_CONTENT_TYPE, to_prometheus_text(&om))
    })
}

/// Rewrites OpenMetrics text as prometheus-client writes it (no exemplars, timestamps or
/// `_created` samples in our series) into the Prometheus text format 0.0.4: a counter family
/// is named after its samples (`tasks_enqueued_total`, else the text parser loses its HELP and
/// TYPE), `info` becomes a gauge `<name>_info`, `# UNIT` and `# EOF` go.
pub fn to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len() + om.len() / 16);
    let mut help: Option<(&str, &str)> = None;
    let mut created: Option<String> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (suffix, kind) = match kind {
                "counter" => ("_total", "counter"),
                "info" => ("_info", "gauge"),
                "gauge" | "stateset" => ("", "gauge"),
                "histogram" => ("", "histogram"),
                "summary" => ("", "summary"),
                _ => ("", "untyped"),
            };
            created = matches!(kind, "counter" | "histogram" | "summary")
                .then(|| format!("{name}_created"));
            if let Some((h_name, text)) = help.take().filter(|(n, _)| *n == name) {
                out.push_str(&format!("# HELP {h_name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
        } else if line.starts_with('#') {
            // `# UNIT`, `# EOF`: not part of the 0.0.4 format.
        } else if !line.is_empty() {
            let sample = line.split(['{', ' ']).next().unwrap_or("");
            if created.as_deref() != Some(sample) {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
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
    fn the_accept_header_picks_the_format() {
        // Prometheus 2.x's scrape Accept header.
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prom)));
        assert!(wants_openmetrics(Some("application/openmetrics-text")));
        for plain in [
            None,
            Some(""),
            Some("*/*"),
            Some("text/plain"),
            Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text;q=0.5"),
            Some("application/openmetrics-text;q=0"),
            Some("application/json"),
        ] {
            assert!(!wants_openmetrics(plain), "{plain:?}");
        }
    }

    #[test]
    fn prometheus_text_names_counter_families_after_their_samples() {
        let m = Metrics::default();
        m.tasks_enqueued
            .get_or_create(&ReplicaPriority {
                engine: "llamacpp".into(),
                engine_version: "b1".into(),
                pool_id: "tiny".into(),
                replica_id: String::new(),
                priority: "batch".into(),
            })
            .inc();
        m.latency_first_token
            .get_or_create(&depth("b1", "batch"))
            .observe(0.003);
        let mut reg = Registry::default();
        m.register(&mut reg);
        let (ctype, om) = exposition(&reg, true).unwrap();
        assert_eq!(ctype, OPENMETRICS_CONTENT_TYPE);
        assert!(om.contains("# TYPE tasks_enqueued counter\n"), "{om}");
        assert!(om.ends_with("# EOF\n"), "{om}");
        let (ctype, t) = exposition(&reg, false).unwrap();
        assert_eq!(ctype, PROMETHEUS_TEXT_CONTENT_TYPE);
        assert!(t.contains("# HELP tasks_enqueued_total Tasks admitted to a queue.\n# TYPE tasks_enqueued_total counter\ntasks_enqueued_total{"), "{t}");
        assert!(
            t.contains("# TYPE latency_first_token_seconds histogram\n"),
            "{t}"
        );
        assert!(
            t.contains("latency_first_token_seconds_bucket{le=\"0.004\","),
            "{t}"
        );
        assert!(t.contains("# HELP queue_depth Tasks waiting"), "{t}");
        assert!(!t.contains("# EOF") && !t.contains("_ms"), "{t}");
        // Every family keeps its HELP, right before its TYPE.
        let lines: Vec<&str> = t.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                let name = rest.split(' ').next().unwrap();
                assert!(
                    i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                    "{t}"
                );
            }
        }
    }

    #[test]
    fn openmetrics_only_lines_are_dropped() {
        let om = "# HELP up_seconds Up.\n# TYPE up_seconds counter\n# UNIT up_seconds seconds\nup_seconds_total 3\nup_seconds_created 1.7e9\n# HELP build Build.\n# TYPE build info\nbuild_info{v=\"1\"} 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(om),
            "# HELP up_seconds_total Up.\n# TYPE up_seconds_total counter\nup_seconds_total 3\n# HELP build_info Build.\n# TYPE build_info gauge\nbuild_info{v=\"1\"} 1\n"
        );
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
