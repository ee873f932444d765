//! Building `llama-server` from the llama.cpp that the `llama-cpp-python` sdist vendors: CPU for the
//! tests, CUDA for `scripts/install.sh`, with a short progress line and the whole log on failure.

use std::{
    env,
    ffi::OsString,
    fs::{self, File},
    io::{self, BufRead, BufReader, IsTerminal, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
};

use anyhow::{bail, Context, Result};

use super::{acquire, copy_atomically, find_on_path, log, run, Cache, DEFAULT_VERSION};

/// CMake configure flags: server only, CPU only, static, no network access during
/// the build (no curl, no prebuilt web UI download), so provisioning works offline once the
/// sdist is cached and the binary runs on any machine the tests run on.
const CMAKE_FLAGS: &[&str] = &[
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_BUILD_TYPE=Release",
];

/// Whether `build-engine` builds with CUDA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CudaMode {
    /// With CUDA when a CUDA toolkit (`nvcc`) is found, else CPU-only (said loudly).
    Auto,
    /// With CUDA; fail without a toolkit.
    On,
    /// CPU-only.
    Off,
}

/// Arguments of `cargo xtask build-engine`.
#[derive(clap::Args)]
pub struct BuildEngineArgs {
    /// llama-cpp-python sdist version to build llama-server from.
    #[arg(long, default_value = DEFAULT_VERSION)]
    pub version: String,
    /// CUDA build: `auto` (when `nvcc` is found on PATH, in $CUDA_HOME/bin or
    /// /usr/local/cuda/bin), `on` or `off`.
    #[arg(long, value_enum, default_value_t = CudaMode::Auto)]
    pub cuda: CudaMode,
    /// CUDA architectures (CMAKE_CUDA_ARCHITECTURES), e.g. `86;89`. Default: those of the GPUs
    /// `nvidia-smi` reports; without any, llama.cpp's default list for the toolkit
    /// (50/61/70/75/80-virtual, 86-real, 89-real, 90-virtual, 120a-real with CUDA >= 12.8).
    #[arg(long, value_name = "LIST")]
    pub cuda_arch: Option<String>,
    /// Parallel build jobs (default: number of CPUs).
    #[arg(long)]
    pub jobs: Option<usize>,
}

/// Which llama-server build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Flavor {
    /// CPU-only (the test engine).
    Cpu,
    /// CUDA, with this `nvcc` and these architectures (`None`: llama.cpp's default list).
    Cuda {
        /// The CUDA compiler.
        nvcc: PathBuf,
        /// CMAKE_CUDA_ARCHITECTURES, `;`-separated.
        archs: Option<String>,
    },
}

impl Flavor {
    /// Suffix of the cached binary's name: `` or `-cuda-86-89`.
    fn suffix(&self) -> String {
        match self {
            Self::Cpu => String::new(),
            Self::Cuda { archs: None, .. } => "-cuda-default".into(),
            Self::Cuda { archs: Some(a), .. } => {
                let key: String = a
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                    .collect();
                format!("-cuda-{}", key.trim_matches('-'))
            }
        }
    }

    fn build_dir(&self) -> &'static str {
        match self {
            Self::Cpu => "build",
            Self::Cuda { .. } => "build-cuda",
        }
    }

    /// Configure flags beyond [`CMAKE_FLAGS`].
    fn cmake_flags(&self) -> Vec<OsString> {
        match self {
            Self::Cpu => Vec::new(),
            Self::Cuda { nvcc, archs } => {
                let mut f: Vec<OsString> = vec!["-DGGML_CUDA=ON".into()];
                let mut compiler = OsString::from("-DCMAKE_CUDA_COMPILER=");
                compiler.push(nvcc);
                f.push(compiler);
                if let Some(a) = archs {
                    f.push(format!("-DCMAKE_CUDA_ARCHITECTURES={a}").into());
                }
                f
            }
        }
    }

    /// For people: `CPU-only` or `CUDA (archs 86)`.
    fn describe(&self) -> String {
        match self {
            Self::Cpu => "CPU-only".into(),
            Self::Cuda { archs: None, .. } => "CUDA (llama.cpp's default architecture list)".into(),
            Self::Cuda { archs: Some(a), .. } => format!("CUDA (architectures {a})"),
        }
    }
}

/// Builds or reuses llama-server (with CUDA when asked or found) and prints
/// `LLAMA_SERVER=<path>` and `LLAMA_SERVER_FLAVOR=cpu|cuda` on stdout. No test model, so
/// nothing but the sdist needs the network.
pub fn build_engine(args: &BuildEngineArgs) -> Result<()> {
    let flavor = resolve_flavor(args.cuda, args.cuda_arch.as_deref())?;
    let cache = Cache::open()?;
    let mut lock = cache.lock_file()?;
    let _guard = acquire(&mut lock, &cache.root)?;
    let server = ensure_server(&cache, &args.version, jobs_or_cpus(args.jobs), &flavor)?;
    let mut out = io::stdout().lock();
    writeln!(out, "LLAMA_SERVER={}", server.display())?;
    let kind = if flavor == Flavor::Cpu { "cpu" } else { "cuda" };
    writeln!(out, "LLAMA_SERVER_FLAVOR={kind}")?;
    Ok(())
}

/// The flavour `build-engine` builds: CUDA when asked, or (`auto`) when a toolkit is found.
fn resolve_flavor(mode: CudaMode, archs: Option<&str>) -> Result<Flavor> {
    if mode == CudaMode::Off {
        log("CPU-only build requested (--cuda off)");
        return Ok(Flavor::Cpu);
    }
    let Some(nvcc) = find_nvcc() else {
        if mode == CudaMode::On {
            bail!(
                "--cuda on: no CUDA toolkit found (`nvcc` not on PATH, in $CUDA_HOME/bin or                  /usr/local/cuda/bin); install it (https://developer.nvidia.com/cuda-downloads,                  Debian/Ubuntu: `apt-get install nvidia-cuda-toolkit`) or use --cuda off"
            );
        }
        log("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        log("NOTE: no CUDA toolkit (`nvcc`) found: building a CPU-ONLY llama-server.");
        log("      It runs models on the CPU only (slow); the daemon's GPU pools need CUDA.");
        log("      Install the CUDA toolkit (https://developer.nvidia.com/cuda-downloads, or");
        log("      Debian/Ubuntu `apt-get install nvidia-cuda-toolkit`) and run this again.");
        log("!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!");
        return Ok(Flavor::Cpu);
    };
    let archs = match archs.map(str::trim).filter(|a| !a.is_empty()) {
        Some(a) => Some(a.to_owned()),
        None => {
            let found = gpu_archs();
            if found.is_empty() {
                log("no GPU reported by nvidia-smi: using llama.cpp's default CUDA architecture list");
                None
            } else {
                Some(found.join(";"))
            }
        }
    };
    log(format!("CUDA toolkit: {}", nvcc.display()));
    Ok(Flavor::Cuda { nvcc, archs })
}

/// `nvcc` on PATH, in `$CUDA_HOME/bin`, `$CUDA_PATH/bin` or `/usr/local/cuda/bin`.
fn find_nvcc() -> Option<PathBuf> {
    find_on_path("nvcc").or_else(|| {
        ["CUDA_HOME", "CUDA_PATH"]
            .iter()
            .filter_map(|k| env::var_os(k).filter(|v| !v.is_empty()))
            .map(PathBuf::from)
            .chain([PathBuf::from("/usr/local/cuda")])
            .map(|d| d.join("bin").join("nvcc"))
            .find(|p| p.is_file())
    })
}

/// CUDA architectures of the GPUs `nvidia-smi` reports (`86`, `89`, …), deduplicated; empty
/// without a driver or with one too old for the `compute_cap` query.
fn gpu_archs() -> Vec<String> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=compute_cap", "--format=csv,noheader"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let archs = parse_compute_caps(&String::from_utf8_lossy(&o.stdout));
            if !archs.is_empty() {
                log(format!(
                    "GPUs report compute capability {}: building for those",
                    archs.join(", ")
                ));
            }
            archs
        }
        _ => Vec::new(),
    }
}

/// `8.6\n8.9\n8.6` → `["86", "89"]`; lines that are not `MAJOR.MINOR` are ignored.
fn parse_compute_caps(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let Some((major, minor)) = line.trim().split_once('.') else {
            continue;
        };
        let digits = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
        if digits(major) && digits(minor) {
            let arch = format!("{major}{minor}");
            if !out.contains(&arch) {
                out.push(arch);
            }
        }
    }
    out.sort_by_key(|a| a.parse::<u32>().unwrap_or(0));
    out
}

pub(super) fn jobs_or_cpus(jobs: Option<usize>) -> usize {
    jobs.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    })
}

/// Returns the cached llama-server for `ver` and `flavor`, building it first if needed.
pub(super) fn ensure_server(
    cache: &Cache,
    ver: &str,
    jobs: usize,
    flavor: &Flavor,
) -> Result<PathBuf> {
    let bin = cache
        .root
        .join("bin")
        .join(format!("llama-server-{ver}{}", flavor.suffix()));
    if bin.is_file() {
        match server_version(&bin) {
            Ok(v) => {
                log(format!("reusing {} ({v})", bin.display()));
                return Ok(bin);
            }
            // A CUDA build may not run where the toolkit is but the driver is not.
            Err(e) if *flavor != Flavor::Cpu => {
                log(format!(
                    "reusing {} (`--version` failed here: {e:#})",
                    bin.display()
                ));
                return Ok(bin);
            }
            Err(e) => log(format!(
                "cached {} is unusable ({e:#}); rebuilding",
                bin.display()
            )),
        }
    }

    // The build tools first: a machine without them gets the install line at once, before
    // any download, and nothing here ever builds a tool from source.
    let cmake = find_on_path("cmake").context(
        "`cmake` is not on PATH; it is needed once to build llama-server (plus a C++ compiler). \
         Install it, e.g. Debian/Ubuntu: `apt-get install -y cmake build-essential`; \
         Fedora: `dnf install -y cmake gcc-c++`; macOS: `brew install cmake`; \
         or anywhere: `python3 -m pip install --user cmake` (a prebuilt wheel)",
    )?;
    let cxx = find_cxx(env::var_os("CXX"), find_on_path).context(NO_CXX)?;
    log(format!("C++ compiler: {}", cxx.display()));
    let src = ensure_source(cache, ver)?;
    let llama = src.join("vendor").join("llama.cpp");
    let build = llama.join(flavor.build_dir());

    log(format!(
        "building a {} llama-server {ver} in {} with {jobs} jobs (first time: tens of minutes on 2 cores)",
        flavor.describe(),
        build.display()
    ));
    // Re-running configure on an existing build tree is cheap and keeps the
    // flags authoritative; object files stay up to date, so a finished build
    // makes the next step a no-op.
    run(
        Command::new(&cmake)
            .arg("-S")
            .arg(&llama)
            .arg("-B")
            .arg(&build)
            .args(CMAKE_FLAGS)
            .args(flavor.cmake_flags()),
        "cmake configure",
    )?;
    run_build(
        Command::new(&cmake)
            .arg("--build")
            .arg(&build)
            .args(["--target", "llama-server", "-j"])
            .arg(jobs.to_string()),
        &build.join("llorch-build.log"),
    )?;

    let built = build.join("bin").join("llama-server");
    if !built.is_file() {
        bail!("build finished but {} does not exist", built.display());
    }
    let bin_dir = cache.root.join("bin");
    fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    copy_atomically(&built, &bin)?;
    match server_version(&bin) {
        Ok(v) => log(format!("installed {} ({v})", bin.display())),
        Err(e) if *flavor != Flavor::Cpu => log(format!(
            "installed {}; it does not run here ({e:#}): is the NVIDIA driver installed?",
            bin.display()
        )),
        Err(e) => return Err(e.context("the freshly built llama-server does not run")),
    }
    Ok(bin)
}

/// Runs `llama-server --version` and returns its version line.
fn server_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    // llama.cpp prints the version to stderr; accept either stream.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`--version` exited with {}: {}", out.status, text.trim());
    }
    Ok(text
        .lines()
        .find(|l| l.starts_with("version"))
        .unwrap_or_else(|| text.lines().next().unwrap_or(""))
        .trim()
        .to_owned())
}

/// Returns the unpacked sdist directory, downloading and unpacking as needed.
pub(super) fn ensure_source(cache: &Cache, ver: &str) -> Result<PathBuf> {
    let src = cache
        .root
        .join("src")
        .join(format!("llama_cpp_python-{ver}"));
    let marker = src.join("vendor").join("llama.cpp").join("CMakeLists.txt");
    if marker.is_file() {
        return Ok(src);
    }
    let tarball = ensure_sdist(cache, ver)?;
    unpack(&tarball, &src)?;
    if !marker.is_file() {
        bail!(
            "{} does not contain vendor/llama.cpp/CMakeLists.txt; is {ver} a llama-cpp-python version that vendors llama.cpp?",
            tarball.display()
        );
    }
    Ok(src)
}

/// Returns the sdist tarball in `<cache>/dl`, fetching it with pip if absent.
fn ensure_sdist(cache: &Cache, ver: &str) -> Result<PathBuf> {
    let dl = cache.root.join("dl");
    // pip normalises sdist names to underscores; very old uploads used dashes.
    let candidates = [
        dl.join(format!("llama_cpp_python-{ver}.tar.gz")),
        dl.join(format!("llama-cpp-python-{ver}.tar.gz")),
    ];
    let existing = || candidates.iter().find(|p| p.is_file()).cloned();
    if let Some(t) = existing() {
        return Ok(t);
    }
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    let python = find_on_path("python3")
        .context("`python3` is not on PATH; install it (Debian/Ubuntu: `apt-get install -y python3 python3-pip python3-venv`)")?;
    log(format!(
        "downloading the llama-cpp-python {ver} sdist from PyPI"
    ));
    run(
        Command::new(python)
            .args(sdist_download_args())
            .arg(format!("llama-cpp-python=={ver}"))
            .arg("-d")
            .arg(&dl),
        "pip download",
    )
    .context("fetching the sdist needs python3 with pip and access to PyPI")?;
    existing().with_context(|| {
        format!(
            "pip reported success but no llama-cpp-python {ver} sdist is in {}",
            dl.display()
        )
    })
}

/// pip's arguments for fetching the sdist. Only llama-cpp-python is forced to source: with
/// `--no-binary :all:` pip would also build its own build tools (cmake among them) from source,
/// which took over 15 minutes on a machine without a system cmake.
pub(super) fn sdist_download_args() -> [&'static str; 6] {
    [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        "llama-cpp-python",
    ]
}

/// Unpacks `tarball` (one top-level directory) to `dest`, atomically: a
/// half-extracted tree must never look complete to a later run.
fn unpack(tarball: &Path, dest: &Path) -> Result<()> {
    let parent = dest.parent().context("unpack destination has no parent")?;
    let tmp = parent.join(format!(".unpack-{}", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    log(format!(
        "unpacking {} to {}",
        tarball.display(),
        dest.display()
    ));
    run(
        Command::new("tar")
            .arg("-xzf")
            .arg(tarball)
            .arg("-C")
            .arg(&tmp),
        "tar",
    )?;
    let mut entries = fs::read_dir(&tmp)
        .with_context(|| format!("reading {}", tmp.display()))?
        .collect::<io::Result<Vec<_>>>()?;
    if entries.len() != 1 {
        bail!(
            "expected one top-level directory in {}, found {}",
            tarball.display(),
            entries.len()
        );
    }
    let top = entries.remove(0).path();
    // We hold the lock, so a `dest` without the marker file is a leftover
    // from an interrupted run, not someone else's work in progress.
    if dest.exists() {
        fs::remove_dir_all(dest).with_context(|| format!("removing stale {}", dest.display()))?;
    }
    fs::rename(&top, dest)
        .with_context(|| format!("moving {} to {}", top.display(), dest.display()))?;
    fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    Ok(())
}

/// Runs the long `cmake --build`, its full output in `log_path` and on stderr only a summary:
/// the build's `[ 45%]` (make) or `[12/345]` (ninja) progress on one line rewritten in place
/// on a terminal, one line per 10 % elsewhere. On failure the log's last lines are shown.
fn run_build(cmd: &mut Command, log_path: &Path) -> Result<()> {
    log(format!("$ {cmd:?}   (full output: {})", log_path.display()));
    let mut logf =
        File::create(log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting cmake build")?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let tty = io::stderr().is_terminal();
    let mut progress = Progress::default();
    let mut tail: std::collections::VecDeque<String> = Default::default();
    for line in rx {
        let _ = writeln!(logf, "{line}");
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(line.clone());
        if let Some(shown) = progress.update(&line, tty) {
            if tty {
                eprint!("\r\x1b[2K{shown}");
            } else {
                eprintln!("{shown}");
            }
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().context("waiting for cmake build")?;
    if tty && progress.shown {
        eprintln!();
    }
    if !status.success() {
        for l in &tail {
            eprintln!("  | {l}");
        }
        bail!(
            "cmake build failed ({status}); the last lines are above, all of it in {}",
            log_path.display()
        );
    }
    log("build finished");
    Ok(())
}

/// The build's progress, from make's `[ 45%] …` or ninja's `[12/345] …` lines.
#[derive(Default)]
struct Progress {
    last_pct: Option<u32>,
    shown: bool,
}

impl Progress {
    /// The line to show for `line`, if any.
    fn update(&mut self, line: &str, tty: bool) -> Option<String> {
        let (pct, what) = parse_progress(line)?;
        let step = |p: u32| p / 10;
        if !tty && self.last_pct.is_some_and(|l| step(l) == step(pct)) {
            return None;
        }
        self.last_pct = Some(pct);
        self.shown = true;
        let what: String = what.chars().take(70).collect();
        Some(format!("[xtask] building llama-server: {pct:>3}% {what}"))
    }
}

/// `(percent, rest of the line)` of a make or ninja progress line.
fn parse_progress(line: &str) -> Option<(u32, &str)> {
    let rest = line.trim_start().strip_prefix('[')?;
    let (inside, what) = rest.split_once(']')?;
    let inside = inside.trim();
    let pct = if let Some(p) = inside.strip_suffix('%') {
        p.trim().parse::<u32>().ok()?
    } else {
        let (n, m) = inside.split_once('/')?;
        let (n, m) = (n.trim().parse::<u64>().ok()?, m.trim().parse::<u64>().ok()?);
        if m == 0 {
            return None;
        }
        u32::try_from(n.min(m) * 100 / m).ok()?
    };
    Some((pct.min(100), what.trim()))
}

/// What to do when [`find_cxx`] finds nothing.
const NO_CXX: &str = "no C++ compiler found (looked for $CXX, then c++, g++ and clang++ on PATH); \
    one is needed once to build llama-server. Install one, e.g. Debian/Ubuntu: \
    `apt-get install -y build-essential`; Fedora: `dnf install -y gcc-c++`; \
    macOS: `xcode-select --install`; or point CXX at yours";

/// The C++ compiler cmake will pick: `$CXX` (a path, or a name on PATH), else `c++`, `g++` or
/// `clang++` on PATH. Checked before configuring, so a machine without one gets the install
/// line instead of cmake's "No CMAKE_CXX_COMPILER could be found" deep in a log.
fn find_cxx(
    cxx_env: Option<OsString>,
    on_path: impl Fn(&str) -> Option<PathBuf>,
) -> Option<PathBuf> {
    if let Some(cxx) = cxx_env.filter(|c| !c.is_empty()) {
        // CMake reads `$CXX` as the compiler, possibly with arguments after it.
        let first = cxx.to_string_lossy().split_whitespace().next()?.to_owned();
        let p = PathBuf::from(&first);
        return if p.components().count() > 1 {
            p.is_file().then_some(p)
        } else {
            on_path(&first)
        };
    }
    ["c++", "g++", "clang++"].into_iter().find_map(on_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing compiler is found missing (and named in the error), `$CXX` wins when set,
    /// and one set to something absent is not silently replaced by another compiler.
    #[test]
    fn the_cxx_compiler_is_checked_before_building() {
        let none = |_: &str| None;
        assert_eq!(find_cxx(None, none), None);
        assert!(NO_CXX.contains("build-essential") && NO_CXX.contains("gcc-c++"));
        let only_gpp = |n: &str| (n == "g++").then(|| PathBuf::from("/usr/bin/g++"));
        assert_eq!(
            find_cxx(None, only_gpp),
            Some(PathBuf::from("/usr/bin/g++"))
        );
        let all = |n: &str| Some(PathBuf::from(format!("/usr/bin/{n}")));
        assert_eq!(
            find_cxx(Some("clang++ -stdlib=libc++".into()), all),
            Some(PathBuf::from("/usr/bin/clang++"))
        );
        assert_eq!(find_cxx(Some("/no/such/c++".into()), all), None);
        assert_eq!(
            find_cxx(Some("".into()), all),
            Some(PathBuf::from("/usr/bin/c++"))
        );
    }

    #[test]
    fn compute_caps_become_sorted_unique_archs() {
        assert_eq!(parse_compute_caps("8.6\n8.9\n8.6\n"), ["86", "89"]);
        assert_eq!(parse_compute_caps("12.0\n7.5"), ["75", "120"]);
        assert!(parse_compute_caps("[N/A]\nField \"compute_cap\" is not a valid field").is_empty());
    }

    #[test]
    fn flavors_name_their_binaries_and_flags() {
        assert_eq!(Flavor::Cpu.suffix(), "");
        let cuda = Flavor::Cuda {
            nvcc: "/usr/local/cuda/bin/nvcc".into(),
            archs: Some("86;89".into()),
        };
        assert_eq!(cuda.suffix(), "-cuda-86-89");
        let flags: Vec<String> = cuda
            .cmake_flags()
            .iter()
            .map(|f| f.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            flags,
            [
                "-DGGML_CUDA=ON",
                "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
                "-DCMAKE_CUDA_ARCHITECTURES=86;89"
            ]
        );
        let default = Flavor::Cuda {
            nvcc: "nvcc".into(),
            archs: None,
        };
        assert_eq!(default.suffix(), "-cuda-default");
        assert_eq!(default.cmake_flags().len(), 2);
        assert_eq!(resolve_flavor(CudaMode::Off, None).ok(), Some(Flavor::Cpu));
    }

    #[test]
    fn run_build_logs_everything_and_reports_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_path = dir.path().join("build.log");
        let script = "echo '[ 50%] Building a'; echo warn >&2; echo '[100%] Linking llama-server'";
        run_build(Command::new("sh").args(["-c", script]), &log_path).expect("build ok");
        let text = fs::read_to_string(&log_path).expect("log");
        assert!(
            text.contains("[ 50%] Building a") && text.contains("warn"),
            "{text}"
        );
        let err = run_build(
            Command::new("sh").args(["-c", "echo boom; exit 3"]),
            &log_path,
        )
        .expect_err("must fail");
        assert!(format!("{err:#}").contains("cmake build failed"), "{err:#}");
    }

    #[test]
    fn progress_lines_are_summarised() {
        assert_eq!(
            parse_progress("[ 45%] Building CXX object ggml/src/x.cpp.o"),
            Some((45, "Building CXX object ggml/src/x.cpp.o"))
        );
        assert_eq!(
            parse_progress("[12/48] Building CUDA object a.cu.o").map(|p| p.0),
            Some(25)
        );
        assert_eq!(parse_progress("-- Configuring done"), None);
        assert_eq!(parse_progress("[N/A] x"), None);
        let mut p = Progress::default();
        let shown: Vec<_> = ["[  1%] a", "[  5%] b", "[ 12%] c", "[ 19%] d", "[100%] e"]
            .iter()
            .filter_map(|l| p.update(l, false))
            .collect();
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[2].contains("100% e"));
        let mut t = Progress::default();
        assert!(t.update("[  1%] a", true).is_some() && t.update("[  2%] b", true).is_some());
    }
}
