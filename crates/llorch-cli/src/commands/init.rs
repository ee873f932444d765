//! `llorch init`: a daemon config for this machine (docs/CLI.md, "llorch init").
//!
//! Finds the GPUs (NVML, or `LLORCH_FAKE_GPUS`) and the GGUF models under `--models-dir`,
//! plans which model goes where with the daemon's own footprint estimate and split planner
//! (`orchestrator_core`), shows the plan, then writes `orchestratord.yaml` (a pool per
//! model: `load: always` when all fit together, else `load: on_demand`), a token file
//! (mode 0600) and the CLI config pointing at both. Never overwrites without `--force`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use gpu_inventory::{GpuDevice, GpuInventory, NvmlInventory, StaticInventory, FAKE_GPUS_ENV};
use orchestrator_core::placement::{estimate_footprint, COMPUTE_OVERHEAD_BYTES};
use orchestrator_core::vram::{plan_split, Card, Need};
use serde_json::json;

use crate::cli::{GlobalOpts, InitArgs};
use crate::error::CliError;

/// VRAM placement keeps free on every GPU (pool-manager's `HEADROOM_BYTES`, docs/PLACEMENT.md).
const HEADROOM_BYTES: u64 = 512 << 20;
/// How deep `--models-dir` is searched.
const MAX_DEPTH: usize = 4;
const GIB: f64 = (1u64 << 30) as f64;

/// One GGUF model found.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// The file the engine loads (the first part of a split GGUF).
    pub path: PathBuf,
    /// Pool id: the file name without `.gguf` (and without a split suffix).
    pub id: String,
    /// `general.architecture`.
    pub arch: String,
    /// Quantization, e.g. `Q4_K_M`.
    pub quant: String,
    /// Bytes on disk, every part of a split GGUF together.
    pub size: u64,
    /// Training context length.
    pub ctx_train: Option<u64>,
    /// KV-cache bytes per context token, from the shape keys.
    pub kv_per_token: Option<u64>,
}

/// Where a pool's replica goes.
#[derive(Clone, Debug, PartialEq)]
pub enum Where {
    /// One GPU.
    Gpu(u32),
    /// Several GPUs: `(index, share)`, largest share first.
    Split(Vec<(u32, f64)>),
    /// The CPU (`--allow-cpu` without a GPU).
    Cpu,
    /// Nowhere: why.
    TooBig(String),
}

impl Where {
    fn describe(&self) -> String {
        match self {
            Self::Gpu(i) => format!("gpu{i}"),
            Self::Split(parts) => {
                let devs: Vec<String> = parts.iter().map(|(d, _)| format!("gpu{d}")).collect();
                let shares: Vec<String> = parts
                    .iter()
                    .map(|(_, s)| format!("{:.0}", s * 100.0))
                    .collect();
                format!("split {} ({} %)", devs.join("+"), shares.join("/"))
            }
            Self::Cpu => "cpu".into(),
            Self::TooBig(why) => format!("does not fit: {why}"),
        }
    }
}

/// How a pool loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// At start, kept loaded.
    Always,
    /// When a task needs it (models do not all fit together).
    OnDemand,
    /// Not configured (fits nowhere).
    Left,
}

impl Load {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::OnDemand => "on_demand",
            Self::Left => "left out",
        }
    }
}

/// One model's pool in the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct PoolPlan {
    /// Index into the models.
    pub model: usize,
    /// Context tokens per slot.
    pub ctx: u32,
    /// Slots.
    pub slots: u32,
    /// Estimated VRAM of one replica.
    pub need: u64,
    /// Where it goes (when loaded).
    pub at: Where,
    /// How it loads.
    pub load: Load,
}

/// One GPU as the plan sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// Index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Total bytes.
    pub total: u64,
    /// Free bytes now.
    pub free: u64,
}

impl From<&GpuDevice> for Gpu {
    fn from(d: &GpuDevice) -> Self {
        Self {
            index: d.index,
            name: d.name.clone(),
            total: d.total_bytes,
            free: d.free_bytes,
        }
    }
}

/// `4.4 GiB`, or `17 MiB` below a GiB.
fn gib(b: u64) -> String {
    if b < 1 << 30 {
        format!("{} MiB", b.div_ceil(1 << 20))
    } else {
        format!("{:.1} GiB", b as f64 / GIB)
    }
}

/// Where a replica of `need` goes on cards with `avail` bytes available each: the one with
/// the most room, else a split over the fewest (as the daemon places them).
fn place_on(gpus: &[Gpu], avail: &[u64], need: u64) -> Option<Where> {
    let best = gpus
        .iter()
        .zip(avail)
        .filter(|(_, &a)| a >= need)
        .max_by(|(ga, a), (gb, b)| a.cmp(b).then(gb.index.cmp(&ga.index)));
    if let Some((g, _)) = best {
        return Some(Where::Gpu(g.index));
    }
    let cards: Vec<Card> = gpus
        .iter()
        .zip(avail)
        .map(|(g, &a)| Card {
            index: g.index,
            name: g.name.clone(),
            available: a,
            allowed: true,
        })
        .collect();
    let n = Need {
        bytes: need,
        per_card_overhead: COMPUTE_OVERHEAD_BYTES.min(need),
        split: true,
    };
    plan_split(&cards, &n).map(|parts| {
        let mut v: Vec<(u32, f64)> = parts.iter().map(|p| (p.device, p.share)).collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
        Where::Split(v)
    })
}

/// Bytes a placement takes from each card (the split planner's reservations).
fn take(gpus: &[Gpu], avail: &mut [u64], at: &Where, need: u64) {
    match at {
        Where::Gpu(i) => {
            if let Some(k) = gpus.iter().position(|g| g.index == *i) {
                avail[k] = avail[k].saturating_sub(need);
            }
        }
        Where::Split(parts) => {
            let oh = COMPUTE_OVERHEAD_BYTES.min(need);
            let divisible = need.saturating_sub(oh) as f64;
            for (d, share) in parts {
                if let Some(k) = gpus.iter().position(|g| g.index == *d) {
                    let part = (divisible * share).ceil() as u64 + oh;
                    avail[k] = avail[k].saturating_sub(part);
                }
            }
        }
        _ => {}
    }
}

/// The plan: every model on the GPUs, largest first. All fit together: `always`. Otherwise
/// every model that fits alone is `on_demand` (the daemon swaps them), the rest left out.
pub fn plan(gpus: &[Gpu], models: &[Model], ctx: u32, slots: u32, cpu: bool) -> Vec<PoolPlan> {
    let mut pools: Vec<PoolPlan> = models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let ctx = m
                .ctx_train
                .map_or(ctx, |t| ctx.min(u32::try_from(t).unwrap_or(u32::MAX)))
                .max(16);
            PoolPlan {
                model: i,
                ctx,
                slots,
                need: estimate_footprint(m.size, u64::from(ctx), slots, m.kv_per_token),
                at: Where::Cpu,
                load: Load::Always,
            }
        })
        .collect();
    if cpu || pools.is_empty() {
        return pools;
    }
    let empty: Vec<u64> = gpus
        .iter()
        .map(|g| g.free.saturating_sub(HEADROOM_BYTES))
        .collect();
    let largest = gpus.iter().zip(&empty).max_by_key(|(_, &a)| a);
    let mut order: Vec<usize> = (0..pools.len()).collect();
    order.sort_by(|&a, &b| pools[b].need.cmp(&pools[a].need));
    let mut avail = empty.clone();
    let mut all_fit = true;
    for &i in &order {
        let need = pools[i].need;
        match place_on(gpus, &avail, need) {
            Some(at) => {
                take(gpus, &mut avail, &at, need);
                pools[i].at = at;
            }
            None => {
                all_fit = false;
                break;
            }
        }
    }
    if all_fit {
        return pools;
    }
    for p in &mut pools {
        match place_on(gpus, &empty, p.need) {
            Some(at) => {
                p.at = at;
                p.load = Load::OnDemand;
            }
            None => {
                let why = match largest {
                    Some((g, a)) => format!(
                        "needs ~{}, the GPUs have {} available together (largest: gpu{} {} with {}); lower --ctx/--slots or use a smaller quant",
                        gib(p.need),
                        gib(empty.iter().sum()),
                        g.index,
                        g.name,
                        gib(*a)
                    ),
                    None => "no GPU".into(),
                };
                p.at = Where::TooBig(why);
                p.load = Load::Left;
            }
        }
    }
    pools
}

/// `model-00001-of-00003` → `Some(("model", 1))`.
fn split_part(stem: &str) -> Option<(&str, u32)> {
    let (head, of) = stem.rsplit_once("-of-")?;
    let (prefix, part) = head.rsplit_once('-')?;
    let digits = |s: &str| s.len() == 5 && s.chars().all(|c| c.is_ascii_digit());
    if !digits(part) || !digits(of) {
        return None;
    }
    Some((prefix, part.parse().ok()?))
}

/// A pool id from a file stem: the characters the config allows, at most 64.
fn pool_id(stem: &str) -> String {
    let id: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if id.is_empty() {
        "model".into()
    } else {
        id
    }
}

/// Every `.gguf` file under `dir` (not following directory links, skipping hidden ones).
fn gguf_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = e.path();
        let Ok(kind) = e.file_type() else { continue };
        if kind.is_dir() {
            if depth < MAX_DEPTH {
                // An unreadable subdirectory is skipped, not fatal.
                let _ = gguf_files(&path, depth + 1, out);
            }
        } else if path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("gguf"))
            && path.is_file()
        {
            out.push(path);
        }
    }
    Ok(())
}

/// The models under `dir`, and a note for each file skipped.
pub fn scan(dir: &Path) -> Result<(Vec<Model>, Vec<String>), CliError> {
    let mut files = Vec::new();
    gguf_files(dir, 0, &mut files).map_err(|e| {
        CliError::usage(format!(
            "cannot read the models directory {}: {e}; put your .gguf files there or pass --models-dir DIR",
            dir.display()
        ))
    })?;
    let mut models: Vec<Model> = Vec::new();
    let mut notes = Vec::new();
    for path in &files {
        let shown = path.display();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            notes.push(format!("{shown}: skipped (the name is not UTF-8)"));
            continue;
        };
        if path.to_str().is_none() {
            notes.push(format!("{shown}: skipped (the path is not UTF-8)"));
            continue;
        }
        let (base, part) = match split_part(stem) {
            Some((b, p)) => (b, Some(p)),
            None => (stem, None),
        };
        if part.is_some_and(|p| p != 1) {
            continue; // counted with its first part
        }
        let info = match gguf_meta::read(path) {
            Ok(i) => i,
            Err(e) => {
                notes.push(format!("{shown}: skipped (not a readable GGUF file: {e})"));
                continue;
            }
        };
        let arch = info.architecture.clone().unwrap_or_else(|| "?".into());
        if info.tensor_count == 0 {
            notes.push(format!("{shown}: skipped (vocabulary only, no weights)"));
            continue;
        }
        if arch == "clip" {
            notes.push(format!(
                "{shown}: skipped (a multimodal projector, not a model)"
            ));
            continue;
        }
        let mut size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if part.is_some() {
            let parts: Vec<&PathBuf> = files
                .iter()
                .filter(|f| {
                    f.parent() == path.parent()
                        && f.file_stem()
                            .and_then(|s| s.to_str())
                            .and_then(split_part)
                            .is_some_and(|(b, _)| b == base)
                })
                .collect();
            let expected = info.split_count.unwrap_or(parts.len() as u64);
            if parts.len() as u64 != expected {
                notes.push(format!(
                    "{shown}: skipped (split GGUF with {} of its {expected} parts here)",
                    parts.len()
                ));
                continue;
            }
            size = parts
                .iter()
                .filter_map(|f| std::fs::metadata(f).ok())
                .map(|m| m.len())
                .sum();
        }
        // Sanitised ids are ASCII, so byte slicing is safe.
        let base_id = pool_id(base);
        let mut id = base_id.clone();
        let mut n = 2;
        while models.iter().any(|m| m.id == id) {
            let suffix = format!("-{n}");
            id = format!(
                "{}{suffix}",
                &base_id[..base_id.len().min(64 - suffix.len())]
            );
            n += 1;
        }
        models.push(Model {
            path: path.clone(),
            id,
            arch,
            quant: info.quant().map_or_else(
                || info.file_type.map_or("?".into(), |t| format!("type {t}")),
                str::to_owned,
            ),
            size,
            ctx_train: info.context_length,
            kv_per_token: info.kv_bytes_per_token,
        });
    }
    Ok((models, notes))
}

/// A YAML/TOML double-quoted string (JSON's escaping is valid in both).
fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn path_str(p: &Path) -> Result<&str, CliError> {
    p.to_str().ok_or_else(|| {
        CliError::usage(format!(
            "{} is not valid UTF-8; use a path that is",
            p.display()
        ))
    })
}

/// What the daemon config is written from.
struct Inputs<'a> {
    gpus: &'a [Gpu],
    gpu_source: &'a str,
    fake: Option<&'a str>,
    cpu: bool,
    models_dir: &'a Path,
    models: &'a [Model],
    pools: &'a [PoolPlan],
    bind: &'a str,
    token_file: &'a Path,
    data_dir: Option<&'a Path>,
    llama_server: Option<&'a Path>,
}

/// The daemon config text.
fn daemon_yaml(i: &Inputs<'_>) -> Result<String, CliError> {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# orchestratord config for this machine, written by `llorch init` (rerun with --force to"
    );
    let _ = writeln!(
        y,
        "# rewrite). Every key: contracts/config.schema.json. Check it: orchestratord --check-config --config FILE"
    );
    let _ = writeln!(y, "# GPUs ({}):", i.gpu_source);
    if i.gpus.is_empty() {
        let _ = writeln!(y, "#   none");
    }
    for g in i.gpus {
        let _ = writeln!(y, "#   gpu{} {} ({} total)", g.index, g.name, gib(g.total));
    }
    let _ = writeln!(y, "# Models from {}", i.models_dir.display());
    let _ = writeln!(y, "bind: {}", q(i.bind));
    let _ = writeln!(y, "auth:");
    let _ = writeln!(
        y,
        "  token_file: {}   # mode 0600; the CLI reads it through cli.toml",
        q(path_str(i.token_file)?)
    );
    if let Some(d) = i.data_dir {
        let _ = writeln!(y, "data_dir: {}", q(path_str(d)?));
    }
    if i.fake.is_some() || i.cpu {
        let _ = writeln!(y, "dev:");
        if let Some(spec) = i.fake {
            let _ = writeln!(
                y,
                "  # From {FAKE_GPUS_ENV}: an injected GPU inventory for tests (engines run on the CPU); remove it on a GPU machine."
            );
            let _ = writeln!(y, "  fake_gpus: {}", q(spec));
        }
        if i.cpu {
            let _ = writeln!(
                y,
                "  # No NVIDIA GPU was found: engines run on the CPU (slow; for trying it out)."
            );
            let _ = writeln!(y, "  allow_cpu_inference: true");
        }
    }
    let on_demand = i.pools.iter().any(|p| p.load == Load::OnDemand);
    if on_demand {
        let _ = writeln!(
            y,
            "# The models do not all fit in VRAM together: each loads when a task needs it and idle ones"
        );
        let _ = writeln!(
            y,
            "# are evicted to make room (docs/PLACEMENT.md, \"Models on demand\")."
        );
    }
    let configured = i.pools.iter().filter(|p| p.load != Load::Left).count();
    if configured == 0 {
        let _ = writeln!(
            y,
            "# No model was found that fits: add pools here (id, model: /path/to/model.gguf)."
        );
        let _ = writeln!(y, "pools: []");
    } else {
        let _ = writeln!(y, "pools:");
    }
    for p in i.pools {
        let m = &i.models[p.model];
        let _ = writeln!(
            y,
            "  # {}: {} {}, {}, trained context {}; needs ~{} -> {}",
            m.path
                .file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
            m.arch,
            m.quant,
            gib(m.size),
            m.ctx_train.map_or("?".into(), |c| c.to_string()),
            gib(p.need),
            p.at.describe()
        );
        let c = if p.load == Load::Left { "  # " } else { "  " };
        let _ = writeln!(y, "{c}- id: {}", q(&m.id));
        let _ = writeln!(y, "{c}  model: {}", q(path_str(&m.path)?));
        if let Some(ls) = i.llama_server {
            let _ = writeln!(y, "{c}  engine_binary: {}", q(path_str(ls)?));
        }
        let _ = writeln!(y, "{c}  ctx: {}", p.ctx);
        let _ = writeln!(y, "{c}  slots: {}", p.slots);
        if p.load == Load::OnDemand {
            let _ = writeln!(y, "{c}  load: on_demand");
        }
    }
    Ok(y)
}

/// The CLI config text.
fn cli_toml(url: &str, token_file: &Path, model: Option<&str>) -> Result<String, CliError> {
    let mut t = String::from("# llorch client config, written by `llorch init` (docs/CLI.md).\n");
    let _ = writeln!(t, "url = {}", q(url));
    let _ = writeln!(t, "token_file = {}", q(path_str(token_file)?));
    if let Some(m) = model {
        let _ = writeln!(t, "model = {}", q(m));
    }
    Ok(t)
}

/// `http://HOST:PORT` to reach a daemon bound to `bind` from this machine.
fn url_for(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let host = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("http://{host}:{}", a.port())
        }
        Ok(a) => format!("http://{a}"),
        Err(_) => format!("http://{bind}"),
    }
}

/// The llama-server to configure: the flag, `$LLAMA_SERVER`, next to llorch, on PATH.
fn find_llama_server(flag: Option<&Path>) -> Result<Option<PathBuf>, CliError> {
    if let Some(p) = flag {
        if !p.is_file() {
            return Err(CliError::usage(format!(
                "--llama-server {} is not a file",
                p.display()
            )));
        }
        return absolute(p).map(Some);
    }
    if let Some(p) = std::env::var_os("LLAMA_SERVER").map(PathBuf::from) {
        if p.is_file() {
            return absolute(&p).map(Some);
        }
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("llama-server")));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("llama-server"));
    Ok(beside.into_iter().chain(on_path).find(|p| p.is_file()))
}

fn absolute(p: &Path) -> Result<PathBuf, CliError> {
    std::path::absolute(p)
        .map_err(|e| CliError::usage(format!("cannot resolve {}: {e}", p.display())))
}

fn home() -> Result<PathBuf, CliError> {
    dirs::home_dir().ok_or_else(|| {
        CliError::usage("no home directory (HOME is unset); pass --models-dir and --config-dir")
    })
}

/// The GPUs, where they came from, and the fake spec when injected.
fn discover(allow_cpu: bool) -> Result<(Vec<Gpu>, String, Option<String>), CliError> {
    if let Some(spec) = std::env::var(FAKE_GPUS_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
    {
        let inv = StaticInventory::from_spec(&spec)
            .map_err(|e| CliError::usage(format!("{FAKE_GPUS_ENV}: {e}")))?;
        let devs = inv.snapshot().map_err(|e| CliError::usage(e.to_string()))?;
        return Ok((
            devs.iter().map(Gpu::from).collect(),
            format!("{FAKE_GPUS_ENV}, injected"),
            Some(spec),
        ));
    }
    match NvmlInventory::init().and_then(|inv| Ok((inv.snapshot()?, inv.describe()))) {
        Ok((devs, what)) => Ok((devs.iter().map(Gpu::from).collect(), what, None)),
        Err(e) if allow_cpu => {
            eprintln!("llorch init: no usable NVIDIA GPU ({}); --allow-cpu: engines will run on the CPU", first_line(&e.to_string()));
            Ok((Vec::new(), "none: CPU only (--allow-cpu)".into(), None))
        }
        Err(e) => Err(CliError::usage(format!(
            "{e}\n(llama-orch runs models on NVIDIA GPUs. To try it on the CPU anyway: llorch init --allow-cpu)"
        ))),
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Writes `text` to `path` through a temporary file and a rename, with `mode` on Unix.
fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), CliError> {
    let err = |e: std::io::Error| CliError::usage(format!("cannot write {}: {e}", path.display()));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        use std::io::Write;
        let mut f = opts.open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// The existing token in `path`, made private if it was not; `None` when absent or empty.
fn existing_token(path: &Path) -> Result<Option<String>, CliError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(CliError::usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            )))
        }
    };
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.is_empty() {
        return Ok(None);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0o600);
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| CliError::usage(format!("cannot chmod 600 {}: {e}", path.display())),
            )?;
            eprintln!(
                "llorch init: {} was readable by others (mode {mode:o}); now 0600",
                path.display()
            );
        }
    }
    Ok(Some(token))
}

/// A new random token: 64 hex digits from the OS's random source (two v4 UUIDs).
fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// The plan for people (stderr).
fn print_plan(
    gpus: &[Gpu],
    gpu_source: &str,
    dir: &Path,
    models: &[Model],
    pools: &[PoolPlan],
    notes: &[String],
) {
    eprintln!("GPUS ({gpu_source})");
    if gpus.is_empty() {
        eprintln!("  none");
    }
    for g in gpus {
        eprintln!(
            "  gpu{}  {:<28} {} total, {} free",
            g.index,
            g.name,
            gib(g.total),
            gib(g.free)
        );
    }
    eprintln!("\nMODELS in {}", dir.display());
    if models.is_empty() {
        eprintln!("  none (no .gguf files with weights)");
    }
    for m in models {
        eprintln!(
            "  {:<40} {:<10} {:<8} {:>9}  trained ctx {}",
            m.path
                .strip_prefix(dir)
                .unwrap_or(&m.path)
                .display()
                .to_string(),
            m.arch,
            m.quant,
            gib(m.size),
            m.ctx_train.map_or("?".into(), |c| c.to_string())
        );
    }
    for n in notes {
        eprintln!("  note: {n}");
    }
    if pools.is_empty() {
        return;
    }
    eprintln!("\nPLAN (VRAM estimate: weights + KV cache for ctx x slots + compute buffers)");
    for p in pools {
        let m = &models[p.model];
        eprintln!(
            "  {:<32} ctx {:>6} x {} slots  ~{:>9}  {:<10} {}",
            m.id,
            p.ctx,
            p.slots,
            gib(p.need),
            p.load.as_str(),
            p.at.describe()
        );
    }
    if pools.iter().any(|p| p.load == Load::OnDemand) {
        eprintln!("  (not all fit together: each loads when a task needs it, idle ones make room)");
    }
}

/// `llorch init`.
pub fn run(a: &InitArgs, g: &GlobalOpts) -> Result<(), CliError> {
    let config_dir = match &a.config_dir {
        Some(d) => d.clone(),
        None => dirs::config_dir()
            .map(|d| d.join("llama-orch"))
            .ok_or_else(|| {
                CliError::usage("no config directory (HOME is unset); pass --config-dir")
            })?,
    };
    let config_dir = absolute(&config_dir)?;
    let output = absolute(
        &a.output
            .clone()
            .unwrap_or_else(|| config_dir.join("orchestratord.yaml")),
    )?;
    let cli_path = absolute(
        &g.config
            .clone()
            .unwrap_or_else(|| config_dir.join("cli.toml")),
    )?;
    let token_path = config_dir.join("token");
    let models_dir = match &a.models_dir {
        Some(d) => d.clone(),
        None => home()?.join("models"),
    };
    let models_dir = absolute(&models_dir)?;
    let data_dir = a.data_dir.as_deref().map(absolute).transpose()?;
    if a.slots == 0 || a.slots > 256 {
        return Err(CliError::usage("--slots must be between 1 and 256"));
    }
    if a.ctx < 16 {
        return Err(CliError::usage("--ctx must be at least 16"));
    }
    if !a.force && !a.dry_run {
        let existing: Vec<String> = [&output, &cli_path]
            .iter()
            .filter(|p| p.exists())
            .map(|p| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CliError::usage(format!(
                "{} already exist(s); not overwriting. Rerun with --force to replace (the token is kept), or --dry-run to see the plan",
                existing.join(" and ")
            )));
        }
    }

    let (gpus, gpu_source, fake) = discover(a.allow_cpu)?;
    let cpu = gpus.is_empty();
    let (models, notes) = scan(&models_dir)?;
    let pools = plan(&gpus, &models, a.ctx, a.slots, cpu);
    let llama_server = find_llama_server(a.llama_server.as_deref())?;
    if !g.json {
        print_plan(&gpus, &gpu_source, &models_dir, &models, &pools, &notes);
    }

    let inputs = Inputs {
        gpus: &gpus,
        gpu_source: &gpu_source,
        fake: fake.as_deref(),
        cpu,
        models_dir: &models_dir,
        models: &models,
        pools: &pools,
        bind: &a.bind,
        token_file: &token_path,
        data_dir: data_dir.as_deref(),
        llama_server: llama_server.as_deref(),
    };
    let yaml = daemon_yaml(&inputs)?;
    // What `orchestratord --check-config` checks, before anything is written.
    let parsed = orch_config::Config::from_str_for(&output, &yaml)
        .and_then(|c| c.validate(true).map(|()| c))
        .map_err(|e| {
            CliError::usage(format!(
                "the generated config does not validate ({e}); please report this"
            ))
        })?;
    let served: Vec<&str> = parsed.pools.iter().map(|p| p.id.as_str()).collect();
    let url = url_for(&a.bind);
    let cli = cli_toml(
        &url,
        &token_path,
        if served.len() == 1 {
            served.first().copied()
        } else {
            None
        },
    )?;

    let report = |written: bool, token_new: bool| {
        json!({
            "written": written,
            "config": output.display().to_string(),
            "cli_config": cli_path.display().to_string(),
            "token_file": token_path.display().to_string(),
            "token_new": token_new,
            "llama_server": llama_server.as_ref().map(|p| p.display().to_string()),
            "gpus": gpus.iter().map(|g| json!({"index": g.index, "name": g.name, "total_bytes": g.total, "free_bytes": g.free})).collect::<Vec<_>>(),
            "pools": pools.iter().map(|p| {
                let m = &models[p.model];
                json!({"id": m.id, "model": m.path.display().to_string(), "arch": m.arch, "quant": m.quant,
                       "size_bytes": m.size, "ctx_train": m.ctx_train, "ctx": p.ctx, "slots": p.slots,
                       "need_bytes": p.need, "placement": p.at.describe(), "load": p.load.as_str()})
            }).collect::<Vec<_>>(),
            "notes": notes,
        })
    };
    if a.dry_run {
        if g.json {
            crate::commands::print_json(&report(false, false), true);
        } else {
            eprintln!(
                "\n--dry-run: nothing written (would write {})",
                output.display()
            );
        }
        return Ok(());
    }

    for dir in [
        Some(config_dir.as_path()),
        output.parent(),
        cli_path.parent(),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))?;
    }
    let token_new = match existing_token(&token_path)? {
        Some(_) => false,
        None => {
            write_file(&token_path, &format!("{}\n", new_token()), 0o600)?;
            true
        }
    };
    write_file(&output, &yaml, 0o644)?;
    write_file(&cli_path, &cli, 0o644)?;

    if g.json {
        crate::commands::print_json(&report(true, token_new), true);
        return Ok(());
    }
    eprintln!();
    eprintln!("wrote {}", output.display());
    if token_new {
        eprintln!("wrote {} (a new token, mode 0600)", token_path.display());
    } else {
        eprintln!("kept  {} (the existing token)", token_path.display());
    }
    eprintln!(
        "wrote {} (llorch: url {url}, token_file)",
        cli_path.display()
    );
    if llama_server.is_none() {
        eprintln!("\nwarning: no llama-server found (--llama-server, $LLAMA_SERVER, next to llorch, PATH); the pools expect `llama-server` on the daemon's PATH. scripts/install.sh provides one.");
    }
    let cli_flag = if g.config.is_some() {
        format!(" --config {}", cli_path.display())
    } else {
        String::new()
    };
    eprintln!("\nnext:");
    eprintln!(
        "  orchestratord --check-config --config {}",
        output.display()
    );
    eprintln!("  orchestratord --config {}      # or: systemctl --user enable --now llama-orch (scripts/install.sh --systemd)", output.display());
    eprintln!("  llorch{cli_flag} status");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn gpu(index: u32, gib: u64) -> Gpu {
        Gpu {
            index,
            name: format!("card{index}"),
            total: gib * G,
            free: gib * G,
        }
    }

    fn model(id: &str, gib: f64) -> Model {
        Model {
            path: PathBuf::from(format!("/m/{id}.gguf")),
            id: id.into(),
            arch: "llama".into(),
            quant: "Q4_K_M".into(),
            size: (gib * G as f64) as u64,
            ctx_train: Some(32768),
            kv_per_token: Some(128 << 10),
        }
    }

    #[test]
    fn everything_fits_so_everything_is_always() {
        let gpus = [gpu(0, 24), gpu(1, 12)];
        let models = [model("big", 12.0), model("small", 4.0)];
        let p = plan(&gpus, &models, 4096, 4, false);
        assert!(p.iter().all(|p| p.load == Load::Always), "{p:?}");
        assert_eq!(p[0].at, Where::Gpu(0));
        assert_eq!(p[1].at, Where::Gpu(1));
    }

    #[test]
    fn too_many_models_load_on_demand_and_too_big_ones_are_left_out() {
        let gpus = [gpu(0, 24), gpu(1, 12)];
        let models = [
            model("a", 18.0),
            model("b", 16.0),
            model("c", 8.0),
            model("huge", 70.0),
        ];
        let p = plan(&gpus, &models, 4096, 4, false);
        assert_eq!(p[0].load, Load::OnDemand);
        assert_eq!(p[0].at, Where::Gpu(0));
        assert_eq!(p[2].at, Where::Gpu(0));
        assert_eq!(p[3].load, Load::Left);
        assert!(matches!(&p[3].at, Where::TooBig(w) if w.contains("smaller quant")));
    }

    #[test]
    fn a_model_bigger_than_any_card_is_split() {
        let gpus = [gpu(0, 24), gpu(1, 12)];
        let p = plan(&gpus, &[model("m", 28.0)], 2048, 1, false);
        let Where::Split(parts) = &p[0].at else {
            panic!("{:?}", p[0].at)
        };
        assert_eq!(parts.iter().map(|x| x.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(p[0].load, Load::Always);
    }

    #[test]
    fn ctx_is_capped_by_the_training_context_and_cpu_mode_places_nothing() {
        let mut m = model("m", 1.0);
        m.ctx_train = Some(2048);
        let p = plan(&[], &[m], 4096, 2, true);
        assert_eq!(
            (p[0].ctx, p[0].at.clone(), p[0].load),
            (2048, Where::Cpu, Load::Always)
        );
    }

    #[test]
    fn ids_split_parts_and_urls() {
        assert_eq!(pool_id("Qwen2.5 7B@q4"), "Qwen2.5-7B-q4");
        assert_eq!(split_part("big-00001-of-00003"), Some(("big", 1)));
        assert_eq!(split_part("big-1-of-3"), None);
        assert_eq!(url_for("0.0.0.0:9000"), "http://127.0.0.1:9000");
        assert_eq!(url_for("127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(q("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn generated_config_validates() {
        let gpus = [gpu(0, 24)];
        let models = [model("a", 18.0), model("b", 16.0), model("x", 90.0)];
        let pools = plan(&gpus, &models, 4096, 4, false);
        let i = Inputs {
            gpus: &gpus,
            gpu_source: "test",
            fake: Some("24GiB"),
            cpu: false,
            models_dir: Path::new("/m"),
            models: &models,
            pools: &pools,
            bind: "127.0.0.1:8080",
            token_file: Path::new("/c/token"),
            data_dir: Some(Path::new("/d")),
            llama_server: Some(Path::new("/bin/llama-server")),
        };
        let y = daemon_yaml(&i).expect("yaml");
        let c = orch_config::Config::from_str_for(Path::new("x.yaml"), &y).expect("parses");
        c.validate(true).expect("valid");
        assert_eq!(c.pools.len(), 2, "{y}");
        assert!(c.pools.iter().all(|p| p.on_demand()));
        assert_eq!(c.dev.fake_gpus.as_deref(), Some("24GiB"));
        assert_eq!(c.auth.token_file.as_deref(), Some(Path::new("/c/token")));
        assert!(y.contains("  # - id: \"x\""), "{y}");
        let t = cli_toml("http://127.0.0.1:8080", Path::new("/c/token"), Some("a")).expect("toml");
        assert!(t.contains("token_file = \"/c/token\"") && t.contains("model = \"a\""));
    }
}
