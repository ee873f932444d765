//! `orchestratord` binary: parse flags, load config (file or embedded defaults + env), start.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use orch_config::{Config, EnvOverrides};

// Every token and request makes small, short-lived allocations on several worker threads;
// glibc's malloc spent a sixth of the daemon's CPU there, in part on its arena locks
// (docs/PERFORMANCE.md, "Per-request cost").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// llama-orch daemon: queues LLM tasks and streams them from llama-server pools.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Config file (YAML or TOML). Without one, embedded defaults are used.
    #[arg(long, env = "LLORCH_CONFIG")]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective configuration as JSON (which is also YAML: it loads back as a
    /// `.yaml` config file) and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args, env: &EnvOverrides) -> Result<(Config, Option<String>), String> {
    let mut cfg = match &args.config {
        Some(p) => Config::from_file(p).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    env.apply(&mut cfg).map_err(|e| e.to_string())?;
    let token = env.token(&cfg).map_err(|e| e.to_string())?;
    cfg.validate(token.is_some()).map_err(|e| e.to_string())?;
    Ok((cfg, token))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let env = EnvOverrides::from_process();
    let (cfg, token) = match load(&args, &env) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("orchestratord: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        match config_json(&cfg) {
            Ok(s) => {
                print!("{s}");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("orchestratord: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.check_config {
        println!(
            "config OK: bind {}, {} pool(s), data dir {}",
            cfg.bind,
            cfg.pools.len(),
            cfg.data_dir().display()
        );
        return ExitCode::SUCCESS;
    }
    // The hub token (pulls) is a secret too: redacted from every line like the API token.
    let hf_token = std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty());
    let secrets = token.iter().cloned().chain(hf_token).collect();
    orchestratord::logging::init(&cfg.log, secrets);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("orchestratord: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(orchestratord::run(cfg, token)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "orchestratord failed");
            eprintln!("orchestratord: {e:#}");
            ExitCode::from(3)
        }
    }
}

/// The configuration as pretty JSON with a trailing newline, for `--print-config`.
fn config_json(cfg: &Config) -> Result<String, String> {
    serde_json::to_value(cfg)
        .and_then(|v| serde_json::to_string_pretty(&v))
        .map(|s| s + "\n")
        .map_err(|e| format!("cannot print the configuration: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_config_loads_back_as_yaml() {
        let cfg = Config::default();
        let text = config_json(&cfg).unwrap();
        assert!(text.starts_with('{') && text.ends_with("}\n"));
        let back = Config::from_str_for(std::path::Path::new("printed.yaml"), &text).unwrap();
        assert_eq!(config_json(&back).unwrap(), text);
    }
}
