//! Overload: bursts of 10× the queue capacity, under both queue-full policies.
//!
//! Targets: every answer is 202 or 429; every 429 carries `Retry-After` (whole seconds, ≥ 1),
//! `X-Backoff-Ms` and the envelope (`ADMISSION_REJECT`, `policy_label`, `retriable: true`,
//! `retry_after_ms` = `X-Backoff-Ms`); every admitted task ends with `end` or `error` (under
//! drop-lru, dropped tasks end with `QUEUE_FULL_DROP_LRU`); `queue_depth` returns to 0; the
//! rejection counters match what clients saw.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;

use crate::{metric_sum, task, wait_until, Api, Ctx, Outcome, Resp};

#[derive(Default)]
struct Tally {
    admitted: usize,
    rejected: usize,
    other: usize,
    ended: usize,
    errored: usize,
    dropped: usize,
    unterminated: usize,
    header_faults: usize,
    retry_after_s: Vec<u64>,
}

fn check_429(o: &mut Outcome, r: &Resp, label: &str, capacity: usize, t: &mut Tally) {
    let retry = r.header("retry-after").and_then(|v| v.parse::<u64>().ok());
    let backoff = r.header("x-backoff-ms").and_then(|v| v.parse::<u64>().ok());
    let body = r.json();
    let ok = retry.is_some_and(|s| s >= 1)
        && backoff.is_some_and(|b| b > 0 && retry == Some(b.div_ceil(1000).max(1)))
        && body["code"] == "ADMISSION_REJECT"
        && body["policy_label"] == label
        && body["retriable"] == true
        && body["retry_after_ms"].as_u64() == backoff
        && body["message"].as_str().is_some_and(|m| {
            m.contains(&format!("({capacity}/{capacity})")) && m.contains("queue.capacity")
        });
    if let Some(s) = retry {
        t.retry_after_s.push(s);
    }
    if !ok {
        t.header_faults += 1;
        o.fail(format!(
            "429 without the right headers/envelope: Retry-After {retry:?}, X-Backoff-Ms {backoff:?}, body {}",
            r.text
        ));
    }
}

async fn burst(
    o: &mut Outcome,
    api: &Api,
    policy: &str,
    capacity: usize,
    round: usize,
    t: &mut Tally,
) {
    let n = capacity * 10;
    let bodies: Vec<_> = (0..n)
        .map(|i| {
            let mut b = task(&format!("{policy}-r{round}-{i}"), 24, i as u64);
            if i % 2 == 1 {
                b["priority"] = json!("batch");
            }
            b
        })
        .collect();
    let answers = join_all(bodies.iter().map(|b| api.submit(b))).await;
    let mut admitted = Vec::new();
    for (b, a) in bodies.iter().zip(answers) {
        match a {
            Ok(r) if r.status == 202 => {
                t.admitted += 1;
                admitted.push(b["task_id"].as_str().unwrap_or("").to_owned());
            }
            Ok(r) if r.status == 429 => {
                t.rejected += 1;
                check_429(o, &r, policy, capacity, t);
            }
            Ok(r) => {
                t.other += 1;
                o.fail(format!("burst answer {} {}", r.status, r.text));
            }
            Err(e) => {
                t.other += 1;
                o.fail(format!("burst request failed: {e}"));
            }
        }
    }
    o.check(admitted.len() >= capacity, || {
        format!(
            "{policy} round {round}: only {} admitted; the queue should fill",
            admitted.len()
        )
    });
    // Every admitted task ends.
    let streams = join_all(
        admitted
            .iter()
            .map(|id| api.follow(id, Duration::from_secs(240), None)),
    )
    .await;
    for (id, s) in admitted.iter().zip(streams) {
        match s.terminal_name() {
            "end" => t.ended += 1,
            "error" => {
                t.errored += 1;
                let code = s.error_code().unwrap_or_default();
                if code == "QUEUE_FULL_DROP_LRU" {
                    t.dropped += 1;
                }
                o.check(
                    policy == "drop-lru" && code == "QUEUE_FULL_DROP_LRU",
                    || format!("{policy}: task {id} failed: {}", s.summary()),
                );
            }
            _ => {
                t.unterminated += 1;
                o.fail(format!("{policy}: task {id} never ended: {}", s.summary()));
            }
        }
    }
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("overload");
    let cap = ctx.profile.overload_capacity;
    for policy in ["reject", "drop-lru"] {
        let sut = ctx.start(
            &format!("overload-{policy}"),
            ctx.options(ctx.config(
                &format!("queue: {{ capacity: {cap}, full_policy: {policy} }}\n"),
                &[ctx.pool("tiny", 1, 4096)],
            )),
        );
        let api = sut.api();
        let mut t = Tally::default();
        let t0 = Instant::now();
        for round in 0..ctx.profile.overload_rounds {
            burst(&mut o, &api, policy, cap, round, &mut t).await;
        }
        let depth_now = || async {
            metric_sum(&api.metrics().await, "queue_depth", &["pool_id=\"tiny\""])
                .unwrap_or(f64::NAN)
        };
        let drained = wait_until(Duration::from_secs(10), || async {
            depth_now().await == 0.0
        })
        .await;
        let depth = depth_now().await;
        o.check(drained, || {
            format!("{policy}: queue_depth is {depth}, not 0")
        });
        let m = api.metrics().await;
        let rejected_metric =
            metric_sum(&m, "tasks_rejected_total", &["reason=\"ADMISSION_REJECT\""]).unwrap_or(0.0)
                as usize;
        let backpressure = metric_sum(
            &m,
            "admission_backpressure_events_total",
            &[&format!("policy=\"{policy}\"")],
        )
        .unwrap_or(0.0) as usize;
        let dropped_metric = metric_sum(
            &m,
            "tasks_rejected_total",
            &["reason=\"QUEUE_FULL_DROP_LRU\""],
        )
        .unwrap_or(0.0) as usize;
        o.check(rejected_metric == t.rejected && backpressure == t.rejected, || {
            format!(
                "{policy}: clients saw {} 429s; tasks_rejected_total{{ADMISSION_REJECT}} {rejected_metric}, admission_backpressure_events_total {backpressure}",
                t.rejected
            )
        });
        o.check(dropped_metric == t.dropped, || {
            format!("{policy}: {} tasks dropped, tasks_rejected_total{{QUEUE_FULL_DROP_LRU}} {dropped_metric}", t.dropped)
        });
        let mut retry = t.retry_after_s.clone();
        retry.sort_unstable();
        retry.dedup();
        o.fig(
            &format!("{policy}: burst"),
            format!(
                "{} × {} tasks against capacity {cap} (1 slot): {} admitted, {} × 429, {} other",
                ctx.profile.overload_rounds,
                cap * 10,
                t.admitted,
                t.rejected,
                t.other
            ),
        );
        o.fig(
            &format!("{policy}: 429 with Retry-After + X-Backoff-Ms + envelope/policy_label"),
            format!(
                "{} of {} (Retry-After values seen: {retry:?} s)",
                t.rejected - t.header_faults,
                t.rejected
            ),
        );
        o.fig(
            &format!("{policy}: admitted tasks ended with end / error (of which dropped by drop-lru) / never"),
            format!("{} / {} ({}) / {}", t.ended, t.errored, t.dropped, t.unterminated),
        );
        o.fig(
            &format!("{policy}: queue_depth after the burst"),
            format!(
                "{depth} (all drained {:.1} s after the first request)",
                t0.elapsed().as_secs_f64()
            ),
        );
        drop(sut);
    }
    o
}
