//! The processes `bench overhead` runs (engine double, llama-server, orchestratord), killed on
//! drop, and their CPU time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::OverheadArgs;
use crate::bench_util::free_port;

/// The command that builds what the benchmarks run.
pub(super) const BUILD_CMD: &str =
    "cargo build --release -p orchestratord -p engine-double -p loadgen";

/// A child process that is killed when dropped. Its stdout and stderr go to a log file whose
/// tail explains an early exit.
pub(super) struct Proc {
    name: &'static str,
    pub(super) child: Child,
    log: PathBuf,
}

impl Proc {
    pub(super) fn spawn(name: &'static str, mut cmd: Command, log: PathBuf) -> Result<Self> {
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // Also when the bench itself is killed outright (no destructors): the kernel kills
            // the child once the spawning thread is gone. Spawns happen on the main thread.
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", cmd.get_program()))?;
        Ok(Self { name, child, log })
    }

    pub(super) fn tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// An error if the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!(
                "{} exited early ({st}); its last output:\n{}",
                self.name,
                self.tail(20)
            );
        }
        Ok(())
    }

    /// Polls the log until a line contains `needle`; returns that line.
    pub(super) async fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Ok(l.to_owned());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} printed no `{needle}` within {timeout:?}; its output:\n{}",
                    self.name,
                    self.tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `url` until `ok` accepts its JSON body.
    pub(super) async fn wait_http(
        &mut self,
        http: &reqwest::Client,
        url: &str,
        timeout: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(r) = http.get(url).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() && r.json::<Value>().await.is_ok_and(|v| ok(&v)) {
                    return Ok(());
                }
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} not ready at {url} within {timeout:?}; its output:\n{}",
                    self.name,
                    self.tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU time process `pid` has used so far (user + system, all threads); `None` off Linux.
pub(super) fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After `(comm) `: state is field 3; utime and stime are fields 14 and 15, in USER_HZ
    // ticks, which are 10 ms on every Linux ABI.
    let mut f = stat.rsplit_once(") ")?.1.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// CPU time used by the bench client, the engine and orchestratord.
#[derive(Clone, Copy)]
pub(super) struct Cpu {
    pub(super) client: Duration,
    pub(super) engine: Duration,
    pub(super) daemon: Duration,
}

/// Cargo's target directory: the one this xtask binary was built into (`<target>/debug/xtask`),
/// which also honours `CARGO_TARGET_DIR` and `build.target-dir`.
pub(super) fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// `given`, or the release binary `name`; an error naming the build command if it is missing.
pub(super) fn release_binary(given: Option<PathBuf>, name: &str, flag: &str) -> Result<PathBuf> {
    let path = given.unwrap_or_else(|| target_dir().join("release").join(name));
    if !path.is_file() {
        bail!(
            "no {name} binary at {}; build it first with `{BUILD_CMD}`, or pass {flag} PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Starts the engine double; returns it and its base URL.
pub(super) async fn start_double(
    bin: &Path,
    dir: &Path,
    token_interval_us: u64,
    ttft_us: u64,
    slots: usize,
) -> Result<(Proc, String)> {
    let mut cmd = Command::new(bin);
    cmd.args(["--port", "0", "--ctx", "4096"])
        .arg("--slots")
        .arg(slots.to_string())
        .arg("--token-interval-us")
        .arg(token_interval_us.to_string())
        .arg("--ttft-us")
        .arg(ttft_us.to_string());
    let mut p = Proc::spawn("engine-double", cmd, dir.join("engine-double.log"))?;
    let line = p
        .wait_for_line("listening on ", Duration::from_secs(10))
        .await?;
    let addr = line
        .split_once("listening on ")
        .map(|(_, a)| a.trim().to_owned())
        .ok_or_else(|| anyhow!("unexpected line from engine-double: {line}"))?;
    Ok((p, format!("http://{addr}")))
}

/// Starts llama-server on the model with `slots` slots of `ctx` tokens; waits for `/health`.
pub(super) async fn start_llama_server(
    http: &reqwest::Client,
    bin: &Path,
    model: &Path,
    dir: &Path,
    slots: usize,
    ctx: u32,
    a: &OverheadArgs,
) -> Result<(Proc, String)> {
    let (threads, ngl) = (a.real_threads, a.real_ngl);
    let port = free_port()?;
    let mut cmd = Command::new(bin);
    if let Some(t) = threads {
        cmd.args(["-t", &t.to_string()]);
    }
    // `-c` is the total context shared by the slots, as orchestratord launches it.
    cmd.arg("-m")
        .arg(model)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-c", &(ctx as usize * slots).to_string()])
        .args(["-np", &slots.to_string(), "-ngl", &ngl.to_string()]);
    let mut p = Proc::spawn("llama-server", cmd, dir.join("llama-server.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    p.wait_http(
        http,
        &format!("{base}/health"),
        Duration::from_secs(120),
        |_| true,
    )
    .await?;
    Ok((p, base))
}

/// Starts orchestratord with one `endpoint:` pool `bench` on `engine`; waits until it is ready.
pub(super) async fn start_daemon(
    http: &reqwest::Client,
    bin: &Path,
    dir: &Path,
    engine: &str,
    slots: usize,
    ctx: u32,
    log_filter: &str,
) -> Result<(Proc, String)> {
    let port = free_port()?;
    let cfg = dir.join("orchestratord.yaml");
    let data = dir.join("data");
    std::fs::write(
        &cfg,
        format!(
            "bind: \"127.0.0.1:{port}\"\ndata_dir: \"{}\"\nqueue:\n  capacity: 1024\npools:\n  - id: bench\n    engine: llamacpp\n    endpoint: \"{engine}\"\n    slots: {slots}\n    ctx: {ctx}\n",
            data.display()
        ),
    )?;
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(&cfg);
    for k in [
        "AUTH_TOKEN",
        "AUTH_OPTIONAL",
        "LLORCH_ADDR",
        "LLORCH_MODEL",
        "LLORCH_CONFIG",
        "LLORCH_DATA_DIR",
    ] {
        cmd.env_remove(k);
    }
    cmd.env("RUST_LOG", log_filter);
    let mut p = Proc::spawn("orchestratord", cmd, dir.join("orchestratord.log"))?;
    let base = format!("http://127.0.0.1:{port}");
    p.wait_http(
        http,
        &format!("{base}/health"),
        Duration::from_secs(30),
        |v| v["pools_total"].as_u64() >= Some(1) && v["pools_ready"] == v["pools_total"],
    )
    .await?;
    Ok((p, base))
}
