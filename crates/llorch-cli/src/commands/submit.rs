//! `llorch submit`: by default the prompt is one user message (`workload: chat`, templated by
//! the engine with the model's chat template); `--raw` sends it as a completion prompt.

use std::io::IsTerminal;

use orch_api_types::{AdmissionResponse, Capabilities};
use serde_json::{json, Value};

use super::{parse, read_stdin};
use crate::cli::{PriorityArg, SubmitArgs};
use crate::client::Client;
use crate::config::Settings;
use crate::error::CliError;
use crate::stream;

/// Submits a task, reports its admission and follows its stream.
pub async fn run(
    client: &Client,
    settings: &Settings,
    a: SubmitArgs,
    json_out: bool,
) -> Result<(), CliError> {
    let prompt = match a.prompt.as_deref() {
        Some("-") | None => {
            if std::io::stdin().is_terminal() {
                return Err(CliError::usage(
                    "no prompt: give it as an argument (`llorch submit \"Hello\"`) or pipe it on stdin",
                ));
            }
            String::from_utf8(read_stdin()?)
                .map_err(|_| CliError::usage("the prompt on stdin is not UTF-8"))?
        }
        Some(p) => p.to_owned(),
    };
    let model = model_or_default(client, settings, a.model.clone()).await?;
    let priority = priority(settings, a.priority)?;
    let task_id = a
        .task_id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4().simple()));
    // Built as JSON so that options not given stay absent (older daemons reject unknown fields).
    let mut body = json!({
        "task_id": task_id,
        "model_ref": model,
        "priority": priority,
        "max_tokens": a.max_tokens,
    });
    if !a.raw {
        let mut messages = Vec::new();
        if let Some(s) = &a.system {
            messages.push(json!({"role": "system", "content": s}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        body["workload"] = json!("chat");
        body["messages"] = json!(messages);
    } else {
        body["prompt"] = json!(prompt);
    }
    let opt = |b: &mut Value, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            b[k] = v;
        }
    };
    opt(&mut body, "seed", a.seed.map(|v| json!(v)));
    opt(&mut body, "session_id", a.session.clone().map(|v| json!(v)));
    opt(&mut body, "temperature", a.temperature.map(|v| json!(v)));
    opt(&mut body, "top_p", a.top_p.map(|v| json!(v)));
    opt(&mut body, "top_k", a.top_k.map(|v| json!(v)));
    opt(&mut body, "deadline_ms", a.deadline_ms.map(|v| json!(v)));
    opt(
        &mut body,
        "expected_tokens",
        a.expected_tokens.map(|v| json!(v)),
    );
    if !a.stop.is_empty() {
        body["stop"] = json!(a.stop);
    }
    if let Some(p) = &a.pool {
        body["placement"] = json!({ "pin_pool": p });
    }
    let (adm, v) = super::admit_task(client, &body).await?;
    if json_out {
        stream::ndjson("admitted", &v);
    } else {
        eprintln!("{}", admission_line(&adm));
    }
    if a.no_stream {
        if !json_out {
            println!("{}", adm.task_id);
        }
        return Ok(());
    }
    stream::follow_interruptible(client, &adm.task_id, json_out, !a.detach_on_interrupt).await
}

/// `--model`, else the config file's `model`, else the daemon's only pool.
pub(crate) async fn model_or_default(
    client: &Client,
    settings: &Settings,
    given: Option<String>,
) -> Result<String, CliError> {
    match given.or_else(|| settings.model.clone()) {
        Some(m) => Ok(m),
        None => default_model(client).await,
    }
}

/// `--priority`, else the config file's, else interactive.
pub(crate) fn priority(
    settings: &Settings,
    given: Option<PriorityArg>,
) -> Result<String, CliError> {
    match (given, settings.priority.as_deref()) {
        (Some(p), _) => Ok(p.as_str().to_owned()),
        (None, Some(p)) if p == "interactive" || p == "batch" => Ok(p.to_owned()),
        (None, Some(p)) => Err(CliError::usage(format!(
            "config file priority `{p}` is not interactive or batch"
        ))),
        (None, None) => Ok(PriorityArg::Interactive.as_str().to_owned()),
    }
}

/// `[task t admitted to pool p: queue position 2, start in ~1.2 s, end in ~3.4 s, on time 80 %]`.
pub(crate) fn admission_line(adm: &AdmissionResponse) -> String {
    let mut s = format!(
        "[task {} admitted to pool {}: queue position {}, predicted start in ~{}",
        adm.task_id,
        adm.pool_id,
        adm.queue_position,
        stream::human_ms(adm.predicted_start_ms)
    );
    if let Some(end) = adm.predicted_end_ms {
        s.push_str(&format!(", end in ~{}", stream::human_ms(end)));
    }
    if let Some(p) = adm.on_time_probability {
        s.push_str(&format!(", on time {:.0} %", p * 100.0));
    }
    s.push(']');
    s
}

/// The daemon's only pool, for `submit` without `--model`.
async fn default_model(client: &Client) -> Result<String, CliError> {
    let caps: Capabilities = parse(
        &client.get_json("/v1/capabilities").await?,
        "/v1/capabilities",
    )?;
    let pools: Vec<String> = caps.pools.into_iter().map(|p| p.id).collect();
    match pools.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(CliError::usage(
            "the daemon has no pool; configure one (see `llorch doctor`)",
        )),
        many => Err(CliError::usage(format!(
            "several pools ({}); choose one with --model or set `model` in ~/.config/llama-orch/cli.toml",
            many.join(", ")
        ))),
    }
}
