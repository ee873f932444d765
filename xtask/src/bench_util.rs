//! What the engine benchmarks (`bench pools`, `bench swap`, `bench eta`) share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// The daemon and the engine an engine benchmark runs (`bench pools`, `swap`, `eta`).
#[derive(clap::Args)]
pub struct EngineArgs {
    /// orchestratord binary [default: <target>/release/orchestratord, else <target>/debug/orchestratord].
    #[arg(long)]
    pub orchestratord: Option<PathBuf>,
    /// llama-server binary (from `cargo xtask provision-engine`).
    #[arg(long, env = "LLAMA_SERVER")]
    pub llama_server: Option<PathBuf>,
    /// GGUF model, the first one where there are two (from `cargo xtask provision-engine`).
    #[arg(long, env = "TEST_MODEL")]
    pub model: Option<PathBuf>,
}

impl EngineArgs {
    /// The orchestratord binary: the one given, else the release build, else the debug build.
    pub fn daemon(&self) -> Result<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let bin = self.orchestratord.clone().unwrap_or_else(|| {
            let release = root.join("target/release/orchestratord");
            if release.is_file() {
                release
            } else {
                root.join("target/debug/orchestratord")
            }
        });
        need_file(
            Some(bin),
            "orchestratord binary (cargo build -p orchestratord)",
        )
    }

    /// llama-server and the model.
    pub fn engine(&self) -> Result<(PathBuf, PathBuf)> {
        Ok((
            need_file(self.llama_server.clone(), "llama-server")?,
            need_file(self.model.clone(), "test model")?,
        ))
    }
}

/// The second model: the one given, else `tiny-llama-g2-s43.gguf` next to `model`.
pub fn second_model(given: Option<PathBuf>, model: &Path) -> Result<PathBuf> {
    need_file(
        given.or_else(|| model.parent().map(|d| d.join("tiny-llama-g2-s43.gguf"))),
        "second test model",
    )
}

/// `p` if it names a file, else an error saying how to provision it.
pub fn need_file(p: Option<PathBuf>, what: &str) -> Result<PathBuf> {
    match p {
        Some(p) if p.is_file() => Ok(p),
        Some(p) => bail!("{what} `{}` does not exist", p.display()),
        None => bail!(
            "no {what}: run `eval \"$(cargo xtask provision-engine)\"` (sets LLAMA_SERVER and TEST_MODEL) and `cargo xtask gen-model --seed 43`"
        ),
    }
}

/// A daemon a benchmark started in a temporary directory, stopped (SIGTERM, then SIGKILL) and
/// its directory removed when dropped.
pub struct Daemon {
    child: Child,
    /// `http://addr` it listens on.
    pub base: String,
    /// Holds `data_dir` (`<dir>/data`) and the config; taken by [`Daemon::into_dir`].
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    /// Writes `config(data_dir)` to a config file in a new temporary directory, starts `bin` on
    /// it (auth optional, info logs) and waits up to 60 s for its "listening" log line.
    pub fn start(bin: &Path, config: impl FnOnce(&Path) -> String) -> Result<Daemon> {
        let dir = tempfile::tempdir().context("tempdir")?;
        Self::start_in(bin, dir, "warn,orchestratord=info", config, |_| {})
    }

    /// [`Daemon::start`] in `dir` (a restart keeps its data directory) with `rust_log`; every
    /// log line the daemon prints (JSON) goes to `on_line`, on a thread that keeps reading so
    /// the daemon never blocks on a full pipe.
    pub fn start_in(
        bin: &Path,
        dir: tempfile::TempDir,
        rust_log: &str,
        config: impl FnOnce(&Path) -> String,
        mut on_line: impl FnMut(&str) + Send + 'static,
    ) -> Result<Daemon> {
        let cfg_path = dir.path().join("config.yaml");
        std::fs::write(&cfg_path, config(&dir.path().join("data"))).context("write config")?;
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&cfg_path)
            .env("RUST_LOG", rust_log)
            .env("AUTH_OPTIONAL", "true")
            .env_remove("AUTH_TOKEN")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        // From here on, dropping `d` stops the daemon on every error path.
        let mut d = Daemon {
            child,
            base: String::new(),
            dir: Some(dir),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains("\"listening\"") {
                    let _ = tx.send(line.clone());
                }
                on_line(&line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| anyhow!("orchestratord did not start listening within 60 s"))?;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        let addr = v["fields"]["addr"]
            .as_str()
            .ok_or_else(|| anyhow!("no addr in the listening line: {line}"))?;
        d.base = format!("http://{addr}");
        Ok(d)
    }

    /// Stops the daemon (SIGTERM: it saves what it must) and hands back its directory, for a
    /// restart on the same data.
    pub fn into_dir(mut self) -> Result<tempfile::TempDir> {
        stop(&mut self.child);
        self.dir
            .take()
            .ok_or_else(|| anyhow!("the daemon's directory was taken"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Stops a child: SIGTERM (a daemon then stops its engines), SIGKILL after 15 s.
pub fn stop(child: &mut Child) {
    // Already reaped (stopped once before): its pid may belong to another process by now.
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Median, minimum and maximum (sorts `v`; zeros when empty).
pub fn median_min_max(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let median = match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    };
    (
        median,
        v.first().copied().unwrap_or(0.0),
        v.last().copied().unwrap_or(0.0),
    )
}

/// The 1-minute load average, where the OS tells it.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// A port that was free a moment ago (for programs that cannot report the one they picked).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Nearest-rank percentile of sorted values (NaN when empty).
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `MET` or `MISSED`, for a target.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}
