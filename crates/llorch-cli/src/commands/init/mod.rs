//! `llorch init`: a daemon config for this machine (docs/CLI.md, "llorch init").
//!
//! Finds the GPUs (NVML, or `LLORCH_FAKE_GPUS`) and the GGUF models under `--models-dir`,
//! plans which model goes where with the daemon's own footprint estimate and split planner
//! (`orch_core`), shows the plan, then writes `orchestratord.yaml` (a pool per
//! model: `load: always` when all fit together, else `load: on_demand`), a token file
//! (mode 0600) and the CLI config pointing at both. Never overwrites without `--force`.

mod plan;
mod render;
mod scan;

use std::path::{Path, PathBuf};

use orch_gpu_inventory::{GpuInventory, NvmlInventory, StaticInventory, FAKE_GPUS_ENV};
use serde_json::json;

use crate::cli::{GlobalOpts, InitArgs};
use crate::error::CliError;

use plan::{plan, Gpu};
use render::{cli_toml, daemon_yaml, print_plan, url_for, Inputs};
use scan::scan;

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
    use super::plan::{Load, Where};
    use super::render::q;
    use super::scan::{pool_id, split_part, Model};
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
