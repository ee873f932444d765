//! `llorch pull REF [--id ID] [--digest D] [--detach]`: asks the daemon to download a model
//! (`POST /v1/catalog/models` with the reference), then follows the pull
//! (`GET /v1/catalog/models/{id}`: 202 while pulling, 200 once registered) with a progress bar
//! on stderr. Prints the catalog id on stdout (`--json`: the registered model).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use orch_api_types::{CatalogModel, PullJob, PullState};
use orch_core::bytes::human as bytes;
use reqwest::Method;
use serde_json::{json, Value};

use super::{parse, print_json, seg, LONG};
use crate::cli::PullArgs;
use crate::client::{json_body, Client};
use crate::error::{CliError, Exit};

/// How often the pull is polled.
const POLL: Duration = Duration::from_millis(250);
/// How often a plain progress line is printed when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(1);

fn eta(ms: Option<u64>) -> String {
    match ms {
        Some(ms) if ms >= 60_000 => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
        Some(ms) => format!("{} s", ms.div_ceil(1000)),
        None => "?".into(),
    }
}

fn state_word(s: PullState) -> &'static str {
    match s {
        PullState::Downloading => "downloading",
        PullState::Verifying => "verifying",
        PullState::Completed => "completed",
        PullState::Failed => "failed",
        PullState::Canceled => "canceled",
    }
}

/// The progress line: `12.0 MiB / 17.0 MiB (70%), 5.1 MiB/s, ETA 1 s`.
pub fn progress_line(job: &PullJob) -> String {
    let total = job.bytes_total;
    let pct = total
        .filter(|t| *t > 0)
        .map(|t| format!(" ({}%)", job.bytes_done.saturating_mul(100) / t))
        .unwrap_or_default();
    format!(
        "{}: {} / {}{pct}, {}/s, ETA {}",
        state_word(job.state),
        bytes(job.bytes_done),
        total.map(bytes).unwrap_or_else(|| "?".into()),
        bytes(job.rate_bytes_per_s),
        eta(job.eta_ms)
    )
}

/// A bar on a terminal, plain lines otherwise, nothing with `--json`.
enum Progress {
    Bar(ProgressBar),
    Lines {
        last: Option<Instant>,
        state: Option<PullState>,
    },
    Quiet,
}

impl Progress {
    fn new(human: bool, job: &PullJob) -> Self {
        if !human {
            return Self::Quiet;
        }
        if !std::io::stderr().is_terminal() {
            return Self::Lines {
                last: None,
                state: None,
            };
        }
        let pb = ProgressBar::new(job.bytes_total.unwrap_or(0));
        pb.set_style(
            ProgressStyle::with_template("{spinner} [{bar:32}] {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.enable_steady_tick(Duration::from_millis(120));
        Self::Bar(pb)
    }

    fn update(&mut self, job: &PullJob) {
        match self {
            Self::Bar(pb) => {
                if let Some(t) = job.bytes_total {
                    pb.set_length(t);
                }
                pb.set_position(job.bytes_done);
                pb.set_message(format!(
                    "{}/s, ETA {} ({})",
                    bytes(job.rate_bytes_per_s),
                    eta(job.eta_ms),
                    state_word(job.state)
                ));
            }
            Self::Lines { last, state } => {
                let due =
                    last.is_none_or(|t| t.elapsed() >= PLAIN_EVERY) || *state != Some(job.state);
                if due {
                    eprintln!("[pull {}: {}]", job.id, progress_line(job));
                    *last = Some(Instant::now());
                    *state = Some(job.state);
                }
            }
            Self::Quiet => {}
        }
    }

    fn finish(&self) {
        if let Self::Bar(pb) = self {
            pb.finish_and_clear();
        }
    }
}

/// The exit code for a pull that ended with `code`.
fn exit_for(code: &str) -> Exit {
    match code {
        "NOT_FOUND" | "MODEL_NOT_FOUND" => Exit::NotFound,
        "POLICY_DENIED" => Exit::Auth,
        "CANCELED" => Exit::Canceled,
        "SHUTTING_DOWN" | "POOL_UNAVAILABLE" => Exit::Unavailable,
        _ => Exit::Usage,
    }
}

/// The error for a pull that ended without a model.
fn ended(job: &PullJob) -> CliError {
    let (code, message) = match &job.error {
        Some(e) => (e.code.as_str().to_owned(), e.message.clone()),
        None => (
            if job.state == PullState::Canceled {
                "CANCELED"
            } else {
                "INTERNAL"
            }
            .to_owned(),
            format!("the pull {}", state_word(job.state)),
        ),
    };
    let exit = if job.state == PullState::Canceled {
        Exit::Canceled
    } else {
        exit_for(&code)
    };
    CliError {
        exit,
        message: format!(
            "pull of {} ({}) {}: {code}: {message}",
            job.reference,
            job.id,
            state_word(job.state)
        ),
        http_status: None,
        envelope: job
            .error
            .as_ref()
            .and_then(|e| serde_json::to_value(e).ok()),
    }
}

/// Runs `llorch pull`.
pub async fn run(client: &Client, args: PullArgs, json_out: bool) -> Result<(), CliError> {
    let path = "/v1/catalog/models";
    // `pull: true` makes a plain URL a download too (a hub reference is one anyway).
    let mut req = json!({ "ref": args.reference, "pull": true });
    if let Some(id) = &args.id {
        req["id"] = json!(id);
    }
    if let Some(d) = &args.digest {
        req["digest"] = json!(d);
    }
    let started = Instant::now();
    let resp = client
        .send(Method::POST, path, Some(&req), Some(LONG))
        .await?;
    let first = resp.status().as_u16();
    let v = json_body(resp, path).await?;
    if first != 202 {
        // Not a job: the daemon registered the model directly (an older daemon).
        print_json(&v, json_out);
        return Ok(());
    }
    let job: PullJob = parse(&v, path)?;
    let id = job.id.clone();
    if client.human {
        let shared = if job.files.iter().any(|f| f.shared) {
            " (joining a pull of the same file already running)"
        } else {
            ""
        };
        eprintln!(
            "[pulling {} as {id}: {} file{}, {}{shared}]",
            job.reference,
            job.files.len(),
            if job.files.len() == 1 { "" } else { "s" },
            job.bytes_total
                .map(bytes)
                .unwrap_or_else(|| "size unknown yet".into()),
        );
    }
    if args.detach {
        if json_out {
            print_json(&v, true);
        } else {
            eprintln!("[the pull goes on in the daemon: `llorch catalog show {id}` follows it, `llorch catalog delete {id}` cancels it]");
            println!("{id}");
        }
        return Ok(());
    }
    let mut progress = Progress::new(client.human, &job);
    progress.update(&job);
    let model_path = format!("/v1/catalog/models/{}", seg(&id));
    let model: CatalogModel = loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                progress.finish();
                return Err(CliError::new(
                    Exit::Interrupted,
                    format!("interrupted; the pull goes on in the daemon: `llorch catalog show {id}` follows it, `llorch catalog delete {id}` cancels it"),
                ));
            }
            _ = tokio::time::sleep(POLL) => {}
        }
        let resp = client
            .send(Method::GET, &model_path, None, Some(LONG))
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                progress.finish();
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        let v: Value = json_body(resp, &model_path).await?;
        if status == 200 {
            progress.finish();
            break parse(&v, &model_path)?;
        }
        let job: PullJob = parse(&v, &model_path)?;
        match job.state {
            PullState::Failed | PullState::Canceled => {
                progress.update(&job);
                progress.finish();
                return Err(ended(&job));
            }
            _ => progress.update(&job),
        }
    };
    if json_out {
        print_json(&serde_json::to_value(&model).unwrap_or(Value::Null), true);
    } else {
        eprintln!(
            "[pulled {}: {} in {:.1} s, verified {}; registered Active as {} → {}]",
            model.source.as_deref().unwrap_or(&model.reference),
            model.size.map(bytes).unwrap_or_else(|| "?".into()),
            started.elapsed().as_secs_f64(),
            model.digest.as_deref().unwrap_or("(no digest)"),
            model.id,
            model.reference
        );
        println!("{}", model.id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_reads_well() {
        let job: PullJob = serde_json::from_value(json!({
            "id": "m", "ref": "hf:o/r/m.gguf", "state": "downloading", "bytes_done": 1572864,
            "bytes_total": 3145728, "rate_bytes_per_s": 1048576, "eta_ms": 1500, "files": [],
            "started_ms": 0, "updated_ms": 0
        }))
        .unwrap();
        assert_eq!(
            progress_line(&job),
            "downloading: 1.5 MiB / 3.0 MiB (50%), 1.0 MiB/s, ETA 2 s"
        );
        assert_eq!(eta(Some(125_000)), "2m05s");
        assert_eq!(exit_for("DIGEST_MISMATCH"), Exit::Usage);
    }
}
