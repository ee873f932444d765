//! Where the daemon is and how to authenticate: flags, then environment, then the config file.
//!
//! Config file (`~/.config/llama-orch/cli.toml`, or `--config` / `LLORCH_CLI_CONFIG`):
//!
//! ```toml
//! url = "http://127.0.0.1:8080"
//! token = "…"                 # or: token_file = "/home/me/.config/llama-orch/token"
//! model = "qwen7b"            # default for `llorch submit --model`
//! priority = "interactive"    # default for `llorch submit --priority`
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cli::GlobalOpts;
use crate::error::CliError;

/// Default daemon URL.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// The config file's contents.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Daemon base URL.
    pub url: Option<String>,
    /// Bearer token.
    pub token: Option<String>,
    /// File whose first line is the token.
    pub token_file: Option<PathBuf>,
    /// Default model for `submit`.
    pub model: Option<String>,
    /// Default priority for `submit`.
    pub priority: Option<String>,
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL without a trailing slash.
    pub url: String,
    /// Token, if any.
    pub token: Option<String>,
    /// Where the token came from (for `doctor`), never the token itself.
    pub token_source: &'static str,
    /// Default model.
    pub model: Option<String>,
    /// Default priority.
    pub priority: Option<String>,
    /// The config file used, if one was read.
    pub config_path: Option<PathBuf>,
}

/// The default config path.
pub fn default_path() -> Option<PathBuf> {
    dirs::config_dir().map(|d| d.join("llama-orch").join("cli.toml"))
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty())
}

fn read_token_file(p: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(p).map_err(|e| {
        CliError::usage(format!(
            "cannot read token_file {}: {e}; fix the path in the CLI config",
            p.display()
        ))
    })?;
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

impl Settings {
    /// Resolves flags > env > config file > defaults.
    pub fn resolve(g: &GlobalOpts) -> Result<Self, CliError> {
        let explicit = g
            .config
            .clone()
            .or_else(|| env("LLORCH_CLI_CONFIG").map(PathBuf::from));
        let path = explicit.clone().or_else(default_path);
        let mut file = FileConfig::default();
        let mut config_path = None;
        if let Some(p) = &path {
            match std::fs::read_to_string(p) {
                Ok(text) => {
                    file = toml::from_str(&text).map_err(|e| {
                        CliError::usage(format!("config file {} is invalid: {e}", p.display()))
                    })?;
                    config_path = Some(p.clone());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && explicit.is_none() => {}
                Err(e) => {
                    return Err(CliError::usage(format!(
                        "cannot read config file {}: {e}",
                        p.display()
                    )))
                }
            }
        }
        let url = g
            .url
            .clone()
            .or_else(|| env("LLORCH_URL"))
            .or(file.url.clone())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let url = url.trim().trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CliError::usage(format!(
                "server URL `{url}` must start with http:// or https:// (e.g. {DEFAULT_URL})"
            )));
        }
        let (token, token_source) = if let Some(t) = g.token.clone() {
            (Some(t), "--token")
        } else if let Some(t) = env("LLORCH_TOKEN") {
            (Some(t), "LLORCH_TOKEN")
        } else if let Some(t) = file.token.clone() {
            (Some(t), "config file `token`")
        } else if let Some(p) = &file.token_file {
            (Some(read_token_file(p)?), "config file `token_file`")
        } else if let Some(t) = env("AUTH_TOKEN") {
            (Some(t), "AUTH_TOKEN")
        } else {
            (None, "none")
        };
        Ok(Self {
            url,
            token: token.filter(|t| !t.is_empty()),
            token_source,
            model: file.model,
            priority: file.priority,
            config_path,
        })
    }
}
