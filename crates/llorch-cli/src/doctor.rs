//! `llorch doctor`: checks this machine the way a user would, and prints fixes one can paste.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use orch_api_types::HealthResponse;
use orch_gpu_inventory::{GpuInventory, NvmlInventory};
use serde::{Deserialize, Serialize};

use crate::client::Client;
use crate::config::Settings;
use crate::error::CliError;

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but worth knowing.
    Warn,
    /// Broken.
    Fail,
}

/// One check.
#[derive(Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Outcome.
    pub level: Level,
    /// What was found.
    pub detail: String,
    /// Commands or steps that fix it.
    pub fixes: Vec<String>,
}

impl Check {
    fn new(name: &'static str, level: Level, detail: impl Into<String>) -> Self {
        Self {
            name,
            level,
            detail: detail.into(),
            fixes: Vec::new(),
        }
    }

    fn fix(mut self, f: impl Into<String>) -> Self {
        self.fixes.push(f.into());
        self
    }
}

/// The provisioning cache of `cargo xtask provision-engine`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLORCH_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("llama-orch");
    }
    PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llama-orch")
}

fn on_path(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_owned());
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// Runs every check.
pub async fn run(
    settings: &Settings,
    client: &Client,
    daemon_config: Option<PathBuf>,
) -> Result<Vec<Check>, CliError> {
    let mut checks = Vec::new();
    checks.push(match &settings.config_path {
        Some(p) => Check::new(
            "cli config",
            Level::Ok,
            format!(
                "{} (url {}, token from {})",
                p.display(),
                settings.url,
                settings.token_source
            ),
        ),
        None => Check::new(
            "cli config",
            Level::Ok,
            format!(
                "none (url {}, token from {}); optional: {}",
                settings.url,
                settings.token_source,
                crate::config::default_path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ),
        ),
    });
    let daemon_cfg = load_daemon_config(daemon_config, &mut checks);

    // NVIDIA driver and NVML (the same code the daemon uses).
    let cpu_ok = daemon_cfg
        .as_ref()
        .is_some_and(|c| c.dev.allow_cpu_inference);
    let mut cuda_version: Option<String> = None;
    match NvmlInventory::init() {
        Ok(inv) => match inv.snapshot() {
            Ok(gpus) => {
                let list: Vec<String> = gpus
                    .iter()
                    .map(|g| {
                        format!(
                            "gpu{} {} ({:.1}/{:.1} GiB free)",
                            g.index,
                            g.name,
                            g.free_bytes as f64 / (1u64 << 30) as f64,
                            g.total_bytes as f64 / (1u64 << 30) as f64
                        )
                    })
                    .collect();
                cuda_version = gpus.first().and_then(|g| g.cuda_driver_version.clone());
                checks.push(Check::new(
                    "nvidia driver",
                    Level::Ok,
                    format!("{}; {}", inv.describe(), list.join(", ")),
                ));
            }
            Err(e) => checks.push(
                Check::new(
                    "nvidia driver",
                    Level::Fail,
                    format!("NVML works but reading the GPUs failed: {e}"),
                )
                .fix("nvidia-smi   # must list your GPUs; fix what it reports"),
            ),
        },
        Err(e) => {
            let level = if cpu_ok { Level::Warn } else { Level::Fail };
            let mut c = match e.diagnosis() {
                Some(d) => {
                    let mut c = Check::new(
                        "nvidia driver",
                        level,
                        format!("{}; checked: {}", d.problem, d.checked.join("; ")),
                    );
                    c.fixes = d.fixes.clone();
                    c
                }
                None => Check::new("nvidia driver", level, e.to_string()),
            };
            if cpu_ok {
                c.detail.push_str(
                    " (the daemon config sets dev.allow_cpu_inference: engines run on the CPU)",
                );
            }
            checks.push(c);
        }
    }

    // CUDA: what the driver supports, and whether the engine binary was built with it.
    let engine_bins = engine_binaries(daemon_cfg.as_ref());
    let found: Vec<PathBuf> = engine_bins.iter().filter_map(|b| b.1.clone()).collect();
    match &cuda_version {
        Some(v) => {
            let linked = found.iter().find_map(|b| cuda_linked(b));
            match linked {
                Some(true) | None => checks.push(Check::new(
                    "cuda",
                    Level::Ok,
                    format!("the driver supports CUDA {v}"),
                )),
                Some(false) => checks.push(
                    Check::new(
                        "cuda",
                        Level::Warn,
                        format!("the driver supports CUDA {v}, but {} is not linked against CUDA (a CPU-only build)", found[0].display()),
                    )
                    .fix("sudo apt-get install -y nvidia-cuda-toolkit   # or NVIDIA's CUDA toolkit")
                    .fix("cmake -B build -DGGML_CUDA=ON -DLLAMA_CURL=OFF && cmake --build build --target llama-server -j   # in a llama.cpp checkout"),
                ),
            }
        }
        None => checks.push(
            Check::new(
                "cuda",
                if cpu_ok { Level::Warn } else { Level::Fail },
                "no CUDA-capable driver (see the NVIDIA driver check)",
            )
            .fix("nvidia-smi   # shows the CUDA version the driver supports once the driver works"),
        ),
    }

    // Engine binaries.
    for (name, path) in &engine_bins {
        match path {
            Some(p) => checks.push(Check::new("engine binary", Level::Ok, format!("{name}: {}", p.display()))),
            None => checks.push(
                Check::new("engine binary", Level::Fail, format!("{name} is not on PATH nor in {}", cache_dir().join("bin").display()))
                    .fix("cargo xtask provision-engine   # in the llama-orch repo: builds llama-server (CPU) into the cache")
                    .fix("or build llama.cpp with CUDA and put llama-server on PATH, or set `engine_binary:` of the pool / LLAMA_SERVER"),
            ),
        }
    }

    // The daemon's health (and whether the token works).
    let health = client.get_json("/health").await;
    let daemon_up = health.is_ok();
    match &health {
        Ok(h) => {
            let h = HealthResponse::deserialize(h).unwrap_or_else(|_| HealthResponse {
                status: "?".into(),
                version: "?".into(),
                pools_ready: 0,
                pools_total: 0,
            });
            let (ready, total, version) = (h.pools_ready, h.pools_total, h.version.as_str());
            let level = if total > 0 && ready < total { Level::Warn } else { Level::Ok };
            let mut c = Check::new(
                "daemon",
                level,
                format!("orchestratord {version} at {}: {ready}/{total} pools ready", settings.url),
            );
            if total == 0 {
                c.level = Level::Warn;
                c = c.fix("add a pool to the daemon config (pools: - id: … model: /path/to/model.gguf), or start it with LLORCH_MODEL=/path/to/model.gguf");
            } else if ready < total {
                c = c.fix("llorch pools list   # shows each pool's last_error");
            }
            checks.push(c);
            match client.get_json("/v1/capabilities").await {
                Ok(_) => checks.push(Check::new("token", Level::Ok, format!("accepted (source: {})", settings.token_source))),
                Err(e) => checks.push(
                    Check::new("token", Level::Fail, e.message.lines().next().unwrap_or_default().to_owned())
                        .fix("export LLORCH_TOKEN=<the daemon's AUTH_TOKEN>"),
                ),
            }
        }
        Err(e) => checks.push(
            Check::new("daemon", Level::Fail, e.message.clone())
                .fix("orchestratord --config ~/.config/llama-orch/orchestratord.yaml   # start it (or: LLORCH_MODEL=/path/model.gguf orchestratord)")
                .fix(format!("export LLORCH_URL=http://HOST:PORT   # if it runs elsewhere (now: {})", settings.url)),
        ),
    }

    // The port.
    checks.push(port_check(&settings.url, daemon_up, daemon_cfg.as_ref()));

    // The data directory.
    checks.push(data_dir_check(daemon_cfg.as_ref()));
    Ok(checks)
}

fn load_daemon_config(
    explicit: Option<PathBuf>,
    checks: &mut Vec<Check>,
) -> Option<orch_config::Config> {
    let path = explicit.or_else(|| std::env::var_os("LLORCH_CONFIG").map(PathBuf::from));
    let mut cfg =
        match &path {
            Some(p) => match orch_config::Config::from_file(p) {
                Ok(c) => {
                    checks.push(Check::new(
                        "daemon config",
                        Level::Ok,
                        format!("{} is valid", p.display()),
                    ));
                    c
                }
                Err(e) => {
                    checks.push(Check::new("daemon config", Level::Fail, e.to_string()).fix(
                        format!("orchestratord --check-config --config {}", p.display()),
                    ));
                    return None;
                }
            },
            None => orch_config::Config::default(),
        };
    if let Err(e) = orch_config::EnvOverrides::from_process().apply(&mut cfg) {
        checks.push(Check::new("daemon config", Level::Fail, e.to_string()));
    }
    Some(cfg)
}

/// Engine binaries to look for: each launched pool's `engine_binary` (default `llama-server`).
fn engine_binaries(cfg: Option<&orch_config::Config>) -> Vec<(String, Option<PathBuf>)> {
    let mut names: Vec<String> = cfg
        .map(|c| {
            c.pools
                .iter()
                .filter(|p| p.endpoint.is_none())
                .map(|p| {
                    p.engine_binary
                        .clone()
                        .unwrap_or_else(|| "llama-server".into())
                })
                .collect()
        })
        .unwrap_or_default();
    if let Ok(v) = std::env::var("LLAMA_SERVER") {
        names.push(v);
    }
    if names.is_empty() {
        names.push("llama-server".into());
    }
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let found = on_path(&n).or_else(|| cached_llama_server(&n));
            (n, found)
        })
        .collect()
}

fn cached_llama_server(name: &str) -> Option<PathBuf> {
    if !name.ends_with("llama-server") {
        return None;
    }
    let dir = cache_dir().join("bin");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with("llama-server"))
        })
        .collect();
    v.sort();
    v.pop()
}

/// Whether `ldd` shows CUDA libraries (None when ldd is unavailable).
fn cuda_linked(bin: &Path) -> Option<bool> {
    let out = Command::new("ldd").arg(bin).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Some(text.contains("libcuda") || text.contains("libcublas") || text.contains("ggml-cuda"))
}

fn port_check(url: &str, daemon_up: bool, cfg: Option<&orch_config::Config>) -> Check {
    let hostport = url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(url)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let with_port = if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        hostport.clone()
    } else if url.starts_with("https://") {
        format!("{hostport}:443")
    } else {
        format!("{hostport}:80")
    };
    if daemon_up {
        let bind = cfg.map(|c| c.bind.clone()).unwrap_or_default();
        return Check::new(
            "port",
            Level::Ok,
            format!(
                "{with_port} answers as orchestratord{}",
                if bind.is_empty() {
                    String::new()
                } else {
                    format!(" (daemon config bind: {bind})")
                }
            ),
        );
    }
    let addrs: Vec<SocketAddr> = with_port
        .to_socket_addrs()
        .map(|a| a.collect())
        .unwrap_or_default();
    let Some(addr) = addrs.first() else {
        return Check::new("port", Level::Fail, format!("cannot resolve {with_port}"))
            .fix("export LLORCH_URL=http://127.0.0.1:8080");
    };
    let local = addr.ip().is_loopback() || addr.ip().is_unspecified();
    if !local {
        return Check::new(
            "port",
            Level::Warn,
            format!("{with_port} is on another host and does not answer"),
        )
        .fix(format!("ssh -N -L 8080:127.0.0.1:{} USER@HOST   # tunnel to the daemon, then export LLORCH_URL=http://127.0.0.1:8080", addr.port()));
    }
    match TcpListener::bind(addr) {
        Ok(_) => Check::new(
            "port",
            Level::Ok,
            format!("{with_port} is free (no daemon listens there yet)"),
        ),
        Err(_) => {
            let busy =
                std::net::TcpStream::connect_timeout(addr, Duration::from_millis(500)).is_ok();
            if busy {
                Check::new(
                    "port",
                    Level::Fail,
                    format!("{with_port} is taken by another program that is not orchestratord"),
                )
                .fix(format!("ss -ltnp 'sport = :{}'   # who holds it", addr.port()))
                .fix("LLORCH_ADDR=127.0.0.1:8181 orchestratord   # and: export LLORCH_URL=http://127.0.0.1:8181")
            } else {
                Check::new(
                    "port",
                    Level::Warn,
                    format!("cannot bind {with_port} to test it"),
                )
            }
        }
    }
}

fn data_dir_check(cfg: Option<&orch_config::Config>) -> Check {
    let dir = cfg
        .map(orch_config::Config::data_dir)
        .unwrap_or_else(|| orch_config::Config::default().data_dir());
    let probe_dir = if dir.exists() {
        dir.clone()
    } else {
        match dir.ancestors().find(|a| a.exists()) {
            Some(a) => a.to_owned(),
            None => {
                return Check::new(
                    "data dir",
                    Level::Fail,
                    format!("{} has no existing parent", dir.display()),
                )
                .fix(format!("mkdir -p {}", dir.display()))
            }
        }
    };
    let probe = probe_dir.join(format!(".llorch-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"ok") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            if dir.exists() {
                Check::new(
                    "data dir",
                    Level::Ok,
                    format!("{} is writable", dir.display()),
                )
            } else {
                Check::new(
                    "data dir",
                    Level::Ok,
                    format!(
                        "{} does not exist yet; the daemon creates it on first start",
                        dir.display()
                    ),
                )
            }
        }
        Err(e) => Check::new(
            "data dir",
            Level::Fail,
            format!("{} is not writable: {e}", probe_dir.display()),
        )
        .fix(format!("sudo chown -R $USER {}", probe_dir.display()))
        .fix("or set data_dir: in the daemon config / LLORCH_DATA_DIR to a writable directory"),
    }
}

/// Prints checks for people.
pub fn print(checks: &[Check]) {
    for c in checks {
        let mark = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("[{mark}] {:<14} {}", c.name, c.detail);
        for f in &c.fixes {
            println!("         fix: {f}");
        }
    }
    let fails = checks.iter().filter(|c| c.level == Level::Fail).count();
    let warns = checks.iter().filter(|c| c.level == Level::Warn).count();
    println!(
        "\n{} checks: {fails} failed, {warns} warnings",
        checks.len()
    );
}
