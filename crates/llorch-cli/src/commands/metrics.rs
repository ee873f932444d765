//! `llorch metrics [--follow]`: the interesting Prometheus series (`--all` for every one).

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::now_ms;
use crate::client::Client;
use crate::error::CliError;
use crate::metrics;

/// Prints the selected Prometheus series once, or with `follow` their changes.
pub async fn run(
    client: &Client,
    follow: bool,
    interval: f64,
    grep: Option<String>,
    all: bool,
    json_out: bool,
) -> Result<(), CliError> {
    let select = |s: &metrics::Sample| {
        (all || metrics::interesting(s)) && grep.as_deref().is_none_or(|g| s.key().contains(g))
    };
    let mut last: HashMap<String, f64> = HashMap::new();
    let interval = Duration::from_secs_f64(interval.clamp(0.2, 3600.0));
    let mut first = true;
    loop {
        let text = client.get_text("/metrics").await?;
        let samples: Vec<metrics::Sample> = metrics::parse(&text)
            .into_iter()
            .filter(|s| select(s))
            .collect();
        let now = now_ms();
        for s in &samples {
            let key = s.key();
            let prev = last.insert(key.clone(), s.value);
            if !first && prev == Some(s.value) {
                continue;
            }
            if json_out {
                let mut line =
                    json!({ "name": s.name, "labels": s.labels_json(), "value": s.value });
                if follow {
                    line["time_ms"] = json!(now);
                }
                println!("{line}");
            } else if first || !follow {
                println!("{key} {}", metrics::fmt_value(s.value));
            } else {
                let delta = s.value - prev.unwrap_or(0.0);
                println!(
                    "{} {key} {} ({}{})",
                    now / 1000,
                    metrics::fmt_value(s.value),
                    if delta >= 0.0 { "+" } else { "" },
                    metrics::fmt_value(delta)
                );
            }
        }
        if first && !json_out && samples.is_empty() {
            eprintln!(
                "(no matching series yet; they appear once tasks ran; --all shows everything)"
            );
        }
        if !follow {
            return Ok(());
        }
        first = false;
        let _ = std::io::stdout().flush();
        tokio::time::sleep(interval).await;
    }
}
