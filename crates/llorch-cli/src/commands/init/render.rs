//! What init writes and shows: the daemon config, the CLI config, and the plan for people.

use std::fmt::Write as _;
use std::path::Path;

use orch_gpu_inventory::FAKE_GPUS_ENV;

use crate::error::CliError;

use super::plan::{gib, Gpu, Load, PoolPlan};
use super::scan::Model;

/// A YAML/TOML double-quoted string (JSON's escaping is valid in both).
pub(super) fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

pub(super) fn path_str(p: &Path) -> Result<&str, CliError> {
    p.to_str().ok_or_else(|| {
        CliError::usage(format!(
            "{} is not valid UTF-8; use a path that is",
            p.display()
        ))
    })
}

/// What the daemon config is written from.
pub(super) struct Inputs<'a> {
    pub(super) gpus: &'a [Gpu],
    pub(super) gpu_source: &'a str,
    pub(super) fake: Option<&'a str>,
    pub(super) cpu: bool,
    pub(super) models_dir: &'a Path,
    pub(super) models: &'a [Model],
    pub(super) pools: &'a [PoolPlan],
    pub(super) bind: &'a str,
    pub(super) token_file: &'a Path,
    pub(super) data_dir: Option<&'a Path>,
    pub(super) llama_server: Option<&'a Path>,
}

/// The daemon config text.
pub(super) fn daemon_yaml(i: &Inputs<'_>) -> Result<String, CliError> {
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
pub(super) fn cli_toml(
    url: &str,
    token_file: &Path,
    model: Option<&str>,
) -> Result<String, CliError> {
    let mut t = String::from("# llorch client config, written by `llorch init` (docs/CLI.md).\n");
    let _ = writeln!(t, "url = {}", q(url));
    let _ = writeln!(t, "token_file = {}", q(path_str(token_file)?));
    if let Some(m) = model {
        let _ = writeln!(t, "model = {}", q(m));
    }
    Ok(t)
}

/// `http://HOST:PORT` to reach a daemon bound to `bind` from this machine.
pub(super) fn url_for(bind: &str) -> String {
    match bind.parse::<std::net::SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            let host = if a.is_ipv4() { "127.0.0.1" } else { "[::1]" };
            format!("http://{host}:{}", a.port())
        }
        Ok(a) => format!("http://{a}"),
        Err(_) => format!("http://{bind}"),
    }
}

/// The plan for people (stderr).
pub(super) fn print_plan(
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
