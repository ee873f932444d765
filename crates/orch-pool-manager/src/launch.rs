//! Starting and stopping engine processes.
//!
//! Each engine runs in its own process group, and on Linux asks the kernel to SIGKILL it when
//! the daemon dies (`PR_SET_PDEATHSIG`), so no engine outlives orchestratord, even after a
//! `kill -9`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use orch_config::{EngineKind, PoolKind};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How one replica is launched.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    /// Which engine the binary is: decides the command line.
    pub engine: EngineKind,
    /// Engine binary (resolved path).
    pub binary: PathBuf,
    /// Model file (llama.cpp), or model directory / hub id (vLLM, TGI).
    pub model: PathBuf,
    /// Context tokens per slot.
    pub ctx: u32,
    /// Parallel slots.
    pub slots: u32,
    /// Layers to offload (`-ngl`); 0 runs on the CPU.
    pub gpu_layers: u32,
    /// `CUDA_VISIBLE_DEVICES` value (GPU UUIDs, comma-separated), `Some("")` hides every GPU.
    pub cuda_visible_devices: Option<String>,
    /// A replica split across several GPUs: each one's share of the model, in
    /// `CUDA_VISIBLE_DEVICES` order (llama.cpp `--tensor-split`).
    pub tensor_split: Option<Vec<f64>>,
    /// Extra flags from the pool config.
    pub flags: Vec<String>,
}

impl LaunchPlan {
    /// The engine's argument list for serving on `127.0.0.1:port`.
    pub fn args(&self, port: u16) -> Vec<String> {
        match self.engine {
            EngineKind::Vllm => self.vllm_args(port),
            EngineKind::Tgi => self.tgi_args(port),
            // Config validation refuses launching openai/triton pools; llama.cpp otherwise.
            _ => self.llama_server_args(port),
        }
    }

    /// `vllm serve MODEL …`: the OpenAI-compatible server. GPU memory is vLLM's own
    /// `--gpu-memory-utilization` (default 0.9 of the card): give such a pool its own device
    /// mask, or pass a lower fraction in `flags`.
    pub fn vllm_args(&self, port: u16) -> Vec<String> {
        let mut a = vec![
            "serve".into(),
            self.model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--max-model-len".into(),
            self.ctx.to_string(),
            "--max-num-seqs".into(),
            self.slots.to_string(),
        ];
        a.extend(self.flags.iter().cloned());
        a
    }

    /// `text-generation-launcher --model-id MODEL …`.
    pub fn tgi_args(&self, port: u16) -> Vec<String> {
        let mut a = vec![
            "--model-id".into(),
            self.model.display().to_string(),
            "--hostname".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "--max-total-tokens".into(),
            self.ctx.to_string(),
            "--max-input-tokens".into(),
            self.ctx.saturating_sub(1).max(1).to_string(),
            "--max-concurrent-requests".into(),
            self.slots.to_string(),
        ];
        a.extend(self.flags.iter().cloned());
        a
    }

    /// The argument list for `llama-server` on `port`.
    pub fn llama_server_args(&self, port: u16) -> Vec<String> {
        // `-c` is the total context shared by all slots; each slot gets ctx.
        let total_ctx = u64::from(self.ctx) * u64::from(self.slots.max(1));
        let mut a = vec![
            "-m".into(),
            self.model.display().to_string(),
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string(),
            "-c".into(),
            total_ctx.to_string(),
            "-np".into(),
            self.slots.to_string(),
            "-ngl".into(),
            self.gpu_layers.to_string(),
        ];
        if let Some(shares) = &self.tensor_split {
            let list: Vec<String> = shares.iter().map(|x| format!("{x:.3}")).collect();
            a.extend([
                "--split-mode".into(),
                "layer".into(),
                "--tensor-split".into(),
                list.join(","),
            ]);
        }
        a.extend(self.flags.iter().cloned());
        a
    }
}

/// The flags a pool's launch recipe appends: its kind's llama-server flags (`--embeddings
/// --pooling P --kv-unified` for an embedding pool, `--reranking` for a rerank pool), then the pool's own
/// `flags` (so a `--pooling` there wins: llama-server takes the last). Other engines find an
/// embedding or rerank model on their own and get only `flags`.
pub fn pool_flags(p: &orch_config::PoolConfig) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if p.engine == EngineKind::Llamacpp {
        match p.kind {
            PoolKind::Chat => {}
            // `--kv-unified`: with a KV stream per slot llama-server splits a batch of inputs
            // of unequal lengths into equal parts, and the mean of the longer input then covers
            // only its last part (measured: 0.13 off on a unit vector when batched with a
            // shorter input). One shared stream keeps each input in one piece; embeddings keep
            // no KV between requests, so sharing it costs nothing.
            PoolKind::Embedding => out.extend([
                "--embeddings".into(),
                "--pooling".into(),
                p.pooling.unwrap_or_default().as_str().into(),
                "--kv-unified".into(),
            ]),
            PoolKind::Rerank => out.push("--reranking".into()),
        }
    }
    out.extend(p.flags.iter().cloned());
    out
}

/// Last lines an engine printed, kept to explain a crash.
#[derive(Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<String>>>);

impl OutputTail {
    const KEEP: usize = 40;

    fn push(&self, line: String) {
        if let Ok(mut q) = self.0.lock() {
            if q.len() == Self::KEEP {
                q.pop_front();
            }
            q.push_back(line);
        }
    }

    /// The last `n` lines joined with newlines.
    pub fn last(&self, n: usize) -> String {
        self.0
            .lock()
            .map(|q| {
                let skip = q.len().saturating_sub(n);
                q.iter().skip(skip).cloned().collect::<Vec<_>>().join("\n")
            })
            .unwrap_or_default()
    }
}

/// Finds a free loopback TCP port. The port is released before the engine binds it; a lost race
/// shows up as a failed start and is retried by the supervisor.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Whether the TCP listener on `port` belongs to process `pid` or a process of the group it
/// leads (engines run in their own process group). The port from [`free_port`] is released
/// before the engine binds it, so another server may take it first: its health answers must not
/// make our replica ready. Reads Linux's `/proc`; `None` when that is not possible (another OS,
/// no `/proc`), in which case the caller cannot tell and proceeds.
pub fn listener_owned_by(pid: u32, port: u16) -> Option<bool> {
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| listening_inode(l, port)),
        );
    }
    if !readable {
        return None;
    }
    if inodes.is_empty() {
        return Some(false);
    }
    let holds = |p: &str| {
        std::fs::read_dir(format!("/proc/{p}/fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                std::fs::read_link(fd.path()).is_ok_and(|t| {
                    let t = t.to_string_lossy();
                    inodes.iter().any(|i| t == format!("socket:[{i}]"))
                })
            })
        })
    };
    if holds(&pid.to_string()) {
        return Some(true);
    }
    let in_group = |p: &str| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
            // `pid (comm) state ppid pgrp …`: comm may hold spaces, so count from its `)`.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2))
                .is_some_and(|pgrp| pgrp == pid.to_string())
        })
    };
    let procs = std::fs::read_dir("/proc").ok()?;
    Some(procs.flatten().any(|e| {
        let name = e.file_name();
        let p = name.to_string_lossy();
        p.bytes().all(|b| b.is_ascii_digit()) && in_group(&p) && holds(&p)
    }))
}

/// The socket inode of a `/proc/net/tcp` line listening (state `0A`) on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local_port = f.get(1)?.rsplit_once(':')?.1;
    (u16::from_str_radix(local_port, 16).ok()? == port && *f.get(3)? == "0A")
        .then(|| f.get(9)?.parse().ok())
        .flatten()
}

/// Resolves `llama-server` or a path against `PATH`.
pub fn resolve_binary(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_owned());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|c| c.is_file())
    })
}

/// Spawns the engine with its output forwarded to our log (with pool and replica fields) and
/// kept in `tail`.
pub fn spawn_engine(
    plan: &LaunchPlan,
    port: u16,
    pool_id: &str,
    replica_id: &str,
    tail: &OutputTail,
) -> std::io::Result<Child> {
    let mut cmd = Command::new(&plan.binary);
    cmd.args(plan.args(port))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(v) = &plan.cuda_visible_devices {
        cmd.env("CUDA_VISIBLE_DEVICES", v);
        cmd.env("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
    }
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe; the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        forward(out, pool_id, replica_id, "stdout", tail.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, pool_id, replica_id, "stderr", tail.clone());
    }
    Ok(child)
}

fn forward<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    r: R,
    pool_id: &str,
    replica_id: &str,
    stream: &'static str,
    tail: OutputTail,
) {
    let pool_id = pool_id.to_owned();
    let replica_id = replica_id.to_owned();
    tokio::spawn(async move {
        let mut lines = BufReader::new(r).split(b'\n');
        while let Ok(Some(line)) = lines.next_segment().await {
            let text = String::from_utf8_lossy(&line).trim_end().to_owned();
            if text.is_empty() {
                continue;
            }
            tracing::debug!(target: "engine", %pool_id, %replica_id, stream, line = %text);
            tail.push(text);
        }
    });
}

/// Stops an engine: SIGTERM to its process group, `grace` to exit, then SIGKILL.
pub async fn stop_engine(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(grace, child.wait()).await.is_ok() {
            return;
        }
        signal_group(pid, libc::SIGKILL);
    }
    let _ = child.kill().await;
    let _ = child.wait().await;
}

fn signal_group(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: plain syscall on a process group we created.
        unsafe {
            libc::killpg(pid, sig);
        }
    }
}

#[cfg(test)]
mod recipe_tests {
    use super::*;

    fn plan(engine: EngineKind) -> LaunchPlan {
        LaunchPlan {
            engine,
            binary: "/bin/x".into(),
            model: "/m/model".into(),
            ctx: 4096,
            slots: 3,
            gpu_layers: 999,
            cuda_visible_devices: None,
            tensor_split: None,
            flags: vec!["--extra".into()],
        }
    }

    #[test]
    fn a_split_replica_gets_its_proportions() {
        let mut p = plan(EngineKind::Llamacpp);
        p.tensor_split = Some(vec![2.0 / 3.0, 1.0 / 3.0]);
        assert_eq!(
            p.args(9000).join(" "),
            "-m /m/model --host 127.0.0.1 --port 9000 -c 12288 -np 3 -ngl 999 \
             --split-mode layer --tensor-split 0.667,0.333 --extra"
        );
    }

    #[test]
    fn each_engine_gets_its_own_command_line() {
        assert_eq!(
            plan(EngineKind::Llamacpp).args(9000).join(" "),
            "-m /m/model --host 127.0.0.1 --port 9000 -c 12288 -np 3 -ngl 999 --extra"
        );
        assert_eq!(
            plan(EngineKind::Vllm).args(9000).join(" "),
            "serve /m/model --host 127.0.0.1 --port 9000 --max-model-len 4096 --max-num-seqs 3 --extra"
        );
        assert_eq!(
            plan(EngineKind::Tgi).args(9000).join(" "),
            "--model-id /m/model --hostname 127.0.0.1 --port 9000 --max-total-tokens 4096 \
             --max-input-tokens 4095 --max-concurrent-requests 3 --extra"
        );
    }

    #[test]
    fn embedding_and_rerank_pools_get_their_llama_server_flags() {
        use orch_config::{PoolConfig, Pooling};
        let mut p = PoolConfig::llamacpp("e", "/m.gguf", None);
        p.flags = vec!["--extra".into()];
        assert_eq!(pool_flags(&p), ["--extra"], "chat: the pool's own flags");
        p.kind = PoolKind::Embedding;
        assert_eq!(
            pool_flags(&p),
            [
                "--embeddings",
                "--pooling",
                "mean",
                "--kv-unified",
                "--extra"
            ]
        );
        p.pooling = Some(Pooling::Cls);
        assert_eq!(pool_flags(&p)[2], "cls");
        p.pooling = None;
        p.kind = PoolKind::Rerank;
        assert_eq!(pool_flags(&p), ["--reranking", "--extra"]);
        p.engine = EngineKind::Vllm;
        assert_eq!(
            pool_flags(&p),
            ["--extra"],
            "vllm finds the model's task itself"
        );
    }
}

#[cfg(test)]
mod port_owner_tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    #[test]
    fn a_listener_belongs_to_the_process_that_holds_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        if listener_owned_by(me, port).is_none() {
            return; // no /proc here: the check is skipped by design
        }
        assert_eq!(listener_owned_by(me, port), Some(true));
        // Another process (a child in its own process group) does not hold it.
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .unwrap();
        assert_eq!(listener_owned_by(child.id(), port), Some(false));
        let _ = child.kill();
        let _ = child.wait();
        drop(l);
        assert_eq!(listener_owned_by(me, port), Some(false), "nobody listens");
    }

    #[test]
    fn proc_net_tcp_lines() {
        let l = "   1: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(l, 8080), Some(123_456));
        assert_eq!(listening_inode(l, 8081), None);
        let established = l.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, 8080), None);
        assert_eq!(listening_inode("garbage", 8080), None);
    }
}
