//! Environment overrides, read in one place so that tests can pass a map instead of the process
//! environment.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::{Config, ConfigError, PoolConfig};

/// The environment variables the daemon reads, captured once.
#[derive(Clone, Debug, Default)]
pub struct EnvOverrides {
    vars: HashMap<String, String>,
}

impl EnvOverrides {
    /// Captures the process environment.
    pub fn from_process() -> Self {
        Self {
            vars: std::env::vars().collect(),
        }
    }

    /// Uses the given variables (tests).
    pub fn from_map(vars: HashMap<String, String>) -> Self {
        Self { vars }
    }

    /// One variable, ignoring empty values.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn flag(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => Err(ConfigError::Invalid(format!(
                    "{key}={v} is not a boolean; use true or false"
                ))),
            },
        }
    }

    /// Applies `LLORCH_ADDR`, `LLORCH_DATA_DIR`, `AUTH_OPTIONAL`,
    /// `LLORCH_DEV_ALLOW_CPU_INFERENCE`, `LLORCH_FAKE_GPUS` and, when the config has no pool,
    /// `LLORCH_MODEL` (+ `LLAMA_SERVER` for the binary) as the one default llama.cpp pool.
    pub fn apply(&self, cfg: &mut Config) -> Result<(), ConfigError> {
        if let Some(a) = self.get("LLORCH_ADDR") {
            cfg.bind = a.to_owned();
        }
        if let Some(d) = self.get("LLORCH_DATA_DIR") {
            cfg.data_dir = Some(PathBuf::from(d));
        }
        if let Some(b) = self.flag("AUTH_OPTIONAL")? {
            cfg.auth.optional = b;
        }
        if let Some(b) = self.flag("LLORCH_DEV_ALLOW_CPU_INFERENCE")? {
            cfg.dev.allow_cpu_inference = b;
        }
        if let Some(g) = self.get("LLORCH_FAKE_GPUS") {
            cfg.dev.fake_gpus = Some(g.to_owned());
        }
        if cfg.pools.is_empty() {
            if let Some(model) = self.get("LLORCH_MODEL") {
                cfg.pools.push(PoolConfig::llamacpp(
                    "default",
                    model,
                    self.get("LLAMA_SERVER"),
                ));
            }
        }
        Ok(())
    }

    /// The bearer token: the variable named by `auth.token_env`, else the first line of
    /// `auth.token_file`. `None` when neither is set.
    pub fn token(&self, cfg: &Config) -> Result<Option<String>, ConfigError> {
        if let Some(t) = self.get(&cfg.auth.token_env) {
            return Ok(Some(t.trim().to_owned()));
        }
        if let Some(path) = &cfg.auth.token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            let t = text.lines().next().unwrap_or("").trim().to_owned();
            if t.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "auth.token_file {} is empty; put the token on its first line",
                    path.display()
                )));
            }
            return Ok(Some(t));
        }
        Ok(None)
    }
}
