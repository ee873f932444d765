//! `llorch`: the llama-orch command line client. See docs/CLI.md.

mod cli;
mod client;
mod commands;
mod config;
mod doctor;
mod error;
mod metrics;
mod stream;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::client::Client;
use crate::config::Settings;
use crate::error::{CliError, Exit};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { Exit::Usage as u8 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    let json_out = cli.global.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llorch: cannot start the async runtime: {e}");
            return ExitCode::from(Exit::Usage as u8);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // A task's own failure is already the stream's last NDJSON line (`error` event).
            let task_outcome = matches!(e.exit, Exit::TaskFailed | Exit::Canceled);
            if json_out && !task_outcome {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{}", e.to_json());
                let _ = out.flush();
            }
            if e.exit != Exit::Interrupted || !json_out {
                eprintln!("llorch: {e}");
            }
            ExitCode::from(e.exit as u8)
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let g = cli.global;
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        clap_complete::generate(shell, &mut cmd, "llorch", &mut std::io::stdout());
        return Ok(());
    }
    // Before the client settings: it writes them (and a broken cli.toml must not stop --force).
    if let Command::Init(a) = &cli.command {
        return commands::init::run(a, &g);
    }
    let settings = Settings::resolve(&g)?;
    let client = Client::new(
        &settings,
        g.wait,
        Duration::from_secs(g.wait_max_s),
        !g.json,
    )?;
    let json_out = g.json;
    match cli.command {
        Command::Submit(a) => commands::submit::run(&client, &settings, a, json_out).await,
        Command::Chat(a) => commands::chat::run(&client, &settings, a, json_out).await,
        Command::Stream { task_id } => commands::stream::run(&client, &task_id, json_out).await,
        Command::Cancel { task_id } => commands::cancel::run(&client, &task_id, json_out).await,
        Command::Task { task_id } => commands::task::run(&client, &task_id, json_out).await,
        Command::Sessions { cmd } => commands::sessions::run(&client, cmd, json_out).await,
        Command::Pull(a) => commands::pull::run(&client, a, json_out).await,
        Command::Catalog { cmd } => commands::catalog::run(&client, cmd, json_out).await,
        Command::Pools { cmd } => {
            let cmd = cmd.unwrap_or(cli::PoolsCmd::List);
            commands::pools::run(&client, cmd, json_out).await
        }
        Command::Load { pool_id } => commands::pools::load(&client, &pool_id, json_out).await,
        Command::Unload { pool_id, force } => {
            commands::pools::unload(&client, &pool_id, force, json_out).await
        }
        Command::Capabilities => commands::capabilities::run(&client, json_out).await,
        Command::Artifacts { cmd } => commands::artifacts::run(&client, cmd, json_out).await,
        Command::Status { watch, tasks } => {
            commands::status::run(&client, watch, tasks, json_out).await
        }
        Command::Metrics {
            follow,
            interval,
            grep,
            all,
        } => commands::metrics::run(&client, follow, interval, grep, all, json_out).await,
        Command::Doctor { daemon_config } => {
            let checks = doctor::run(&settings, &client, daemon_config).await?;
            if json_out {
                commands::print_json(&serde_json::json!({ "checks": checks }), true);
            } else {
                doctor::print(&checks);
            }
            if checks.iter().any(|c| c.level == doctor::Level::Fail) {
                Err(CliError::new(
                    Exit::Usage,
                    "doctor found problems; apply the fixes above",
                ))
            } else {
                Ok(())
            }
        }
        Command::Completions { .. } | Command::Init(_) => Ok(()),
    }
}
