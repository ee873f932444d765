//! A small parser for the Prometheus text format and the `llorch metrics` view.

use std::collections::BTreeMap;

/// One sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Series name (with `_bucket`, `_sum`, … suffixes as exposed).
    pub name: String,
    /// Labels in exposition order.
    pub labels: Vec<(String, String)>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// `name{a="b",…}` — a stable key.
    pub fn key(&self) -> String {
        if self.labels.is_empty() {
            return self.name.clone();
        }
        let l: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect();
        format!("{}{{{}}}", self.name, l.join(","))
    }

    /// Labels as a JSON object.
    pub fn labels_json(&self) -> serde_json::Value {
        let m: BTreeMap<&str, &str> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        serde_json::json!(m)
    }
}

/// Series prefixes shown without `--all`: the series every deployment must expose (the
/// daemon's `metrics.rs`), minus histogram buckets.
pub const INTERESTING: &[&str] = &[
    "queue_depth",
    "tasks_enqueued_total",
    "tasks_started_total",
    "tasks_canceled_total",
    "tasks_rejected_total",
    "tokens_in_total",
    "tokens_out_total",
    "gpu_utilization",
    "vram_used_bytes",
    "latency_first_token_seconds",
    "latency_decode_seconds",
    "admission_backpressure_events_total",
    "placement_decisions_total",
    "model_state",
    "kv_cache_usage_ratio",
    "pool_ready",
];

/// Whether a sample belongs to the default view.
pub fn interesting(s: &Sample) -> bool {
    if s.name.ends_with("_bucket") || s.name.ends_with("_created") {
        return false;
    }
    INTERESTING.iter().any(|p| s.name.starts_with(p))
}

/// Parses the text exposition; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let (l, after) = parse_labels(&rest[1..])?;
        labels = l;
        rest = after;
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Parses `k="v",…}` (after the `{`), honouring `\"`, `\\` and `\n` escapes; returns the
/// labels and the text after the closing brace.
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    loop {
        while matches!(chars.peek(), Some((_, c)) if c.is_whitespace() || *c == ',') {
            chars.next();
        }
        match chars.peek() {
            Some((i, '}')) => {
                let i = *i;
                return Some((out, &s[i + 1..]));
            }
            None => return None,
            _ => {}
        }
        let mut key = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        if chars.next().map(|(_, c)| c) != Some('"') {
            return None;
        }
        let mut val = String::new();
        loop {
            match chars.next()?.1 {
                '\\' => match chars.next()?.1 {
                    'n' => val.push('\n'),
                    c => val.push(c),
                },
                '"' => break,
                c => val.push(c),
            }
        }
        out.push((key.trim().to_owned(), val));
    }
}

/// A value for people: integers without decimals.
pub fn fmt_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_with_escapes() {
        let s = parse(
            "# HELP x y\nqueue_depth{engine=\"llamacpp\",pool_id=\"a\\\"b,}\",priority=\"batch\"} 3\nup 1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "queue_depth");
        assert_eq!(s[0].labels[1], ("pool_id".into(), "a\"b,}".into()));
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].labels.len(), 0);
        assert!(interesting(&s[0]));
        assert!(!interesting(&s[1]));
    }

    #[test]
    fn bad_lines_are_skipped() {
        assert!(parse("x{a=\"unterminated} 1\n{} 2\nname notanumber").is_empty());
    }
}
