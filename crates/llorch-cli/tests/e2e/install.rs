//! Installing on a workstation (docs/CLI.md "llorch init", README "Install on your GPU
//! workstation"): `scripts/install.sh` into a temporary prefix (reusing the binaries this test
//! run built, `--bin-dir`, and the provisioned test engine, `--llama-server`, so nothing is
//! rebuilt), a second run that changes nothing, `llorch init` against an injected GPU
//! inventory (`LLORCH_FAKE_GPUS`) writing a config that passes `--check-config` and serves
//! tasks, and the systemd unit through `systemd-analyze verify`.
//! Needs `eval $(cargo xtask provision-engine)` and the orchestratord binary (built by
//! `cargo test --workspace`; alone: `cargo build -p orchestratord`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use orch_harness::{engine, second_model};

use crate::common::{bin_dir, daemon_bin, llorch_bin};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A scratch machine: home, config and data dirs, and a models dir linking the test models.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(models: &[PathBuf]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = Self { dir };
        for d in ["home/.config", "home/.local/share", "run", "models"] {
            std::fs::create_dir_all(m.path(d)).expect("mkdir");
        }
        set_mode(&m.path("run"), 0o700);
        for src in models {
            let name = src.file_name().expect("model file name");
            std::os::unix::fs::symlink(src, m.path("models").join(name)).expect("symlink model");
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `cmd` isolated from the user's home, config and daemon settings.
    fn env(&self, cmd: &mut Command) {
        cmd.env("HOME", self.path("home"))
            .env("XDG_CONFIG_HOME", self.path("home/.config"))
            .env("XDG_DATA_HOME", self.path("home/.local/share"))
            .env("XDG_RUNTIME_DIR", self.path("run"))
            .stdin(Stdio::null());
        for k in [
            "AUTH_TOKEN",
            "AUTH_OPTIONAL",
            "LLORCH_URL",
            "LLORCH_TOKEN",
            "LLORCH_CLI_CONFIG",
            "LLORCH_CONFIG",
            "LLORCH_ADDR",
            "LLORCH_DATA_DIR",
            "LLORCH_MODEL",
            "LLORCH_FAKE_GPUS",
            "LLORCH_DEV_ALLOW_CPU_INFERENCE",
            "LLAMA_SERVER",
        ] {
            cmd.env_remove(k);
        }
    }

    fn llorch(&self, fake_gpus: Option<&str>, args: &[&str]) -> Output {
        let mut c = Command::new(llorch_bin());
        self.env(&mut c);
        if let Some(g) = fake_gpus {
            c.env("LLORCH_FAKE_GPUS", g);
        }
        show("llorch", args, c.args(args).output().expect("run llorch"))
    }
}

fn show(what: &str, args: &[&str], out: Output) -> Output {
    eprintln!(
        "$ {what} {} -> {:?}\n--- stdout:\n{}--- stderr:\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn mode_of(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dirs` with its modification time and size.
fn snapshot(dirs: &[PathBuf]) -> BTreeMap<PathBuf, (SystemTime, u64)> {
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, (SystemTime, u64)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                walk(&p, out);
            } else {
                out.insert(p, (m.modified().expect("mtime"), m.len()));
            }
        }
    }
    let mut out = BTreeMap::new();
    for d in dirs {
        walk(d, &mut out);
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// `GET path` on `127.0.0.1:port`: the body, or `None` when nothing answers.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())
}

/// orchestratord started from a config file; stopped with SIGTERM (as systemd stops it).
struct RunningDaemon {
    child: Option<Child>,
    log: PathBuf,
}

impl RunningDaemon {
    fn start(m: &Machine, config: &Path, port: u16) -> Self {
        let log = m.path("daemon.log");
        let f = std::fs::File::create(&log).expect("log file");
        let mut c = Command::new(daemon_bin());
        m.env(&mut c);
        c.arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f);
        let d = Self {
            child: Some(c.spawn().expect("spawn orchestratord")),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(body) = http_get(port, "/health") {
                // The JSON object, whatever framing is around it.
                let json = match (body.find('{'), body.rfind('}')) {
                    (Some(a), Some(b)) if a < b => &body[a..=b],
                    _ => "",
                };
                let v: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
                if v["pools_total"].as_u64().is_some() && v["pools_ready"] == v["pools_total"] {
                    return d;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not get ready; log:\n{}",
                d.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status (the daemon drains and exits 0).
    fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // bash's builtin kill: no procps needed.
        let _ = Command::new("bash")
            .args(["-c", "kill -TERM \"$0\""])
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for RunningDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}

fn check_config(m: &Machine, bin: &Path, config: &Path) {
    let mut c = Command::new(bin);
    m.env(&mut c);
    let out = show(
        "orchestratord",
        &["--check-config"],
        c.arg("--check-config")
            .arg("--config")
            .arg(config)
            .output()
            .expect("run orchestratord --check-config"),
    );
    assert!(out.status.success(), "--check-config failed");
    assert!(String::from_utf8_lossy(&out.stdout).contains("config OK"));
}

/// `systemd-analyze --user verify unit` must succeed and print nothing (it reports many
/// problems as warnings with exit status 0). Returns false (after a loud message) when
/// systemd-analyze cannot run here.
fn verify_unit(m: &Machine, home: &Path, unit: &Path) -> bool {
    let mut c = Command::new("systemd-analyze");
    m.env(&mut c);
    let out = match c
        .env("HOME", home)
        .args(["--user", "verify"])
        .arg(unit)
        .output()
    {
        Ok(o) => o,
        Err(e) => {
            eprintln!(
                "\n!!! SKIPPED: systemd-analyze cannot be run here ({e}); install the Debian \
                 package `systemd` (scripts/setup-deps.sh does) to verify {}\n",
                unit.display()
            );
            return false;
        }
    };
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if text.contains("Failed to initialize manager") {
        eprintln!("\n!!! SKIPPED: systemd-analyze cannot start a user manager here:\n{text}\n");
        return false;
    }
    assert!(
        out.status.success() && text.trim().is_empty(),
        "systemd-analyze verify {} is not clean (status {:?}):\n{text}",
        unit.display(),
        out.status.code()
    );
    true
}

#[test]
fn install_sh_installs_into_a_prefix_and_a_second_run_changes_nothing() {
    let e = engine();
    let m = Machine::new(std::slice::from_ref(&e.model));
    let prefix = m.path("prefix");
    let install = |m: &Machine| {
        let mut c = Command::new("bash");
        m.env(&mut c);
        c.env("LLORCH_FAKE_GPUS", "24GiB:RTX 3090,12GiB:RTX 3060")
            .arg(repo().join("scripts/install.sh"))
            .arg("--prefix")
            .arg(&prefix)
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--llama-server")
            .arg(&e.llama_server)
            .arg("--models-dir")
            .arg(m.path("models"))
            .args(["--systemd", "--no-enable"]);
        let out = show("install.sh", &[], c.output().expect("run install.sh"));
        assert!(out.status.success(), "install.sh failed");
        stderr(&out)
    };

    let first = install(&m);
    for b in ["orchestratord", "llorch", "llama-server"] {
        let p = prefix.join("bin").join(b);
        assert!(p.is_file(), "{} missing", p.display());
        assert_eq!(mode_of(&p), 0o755, "{}", p.display());
    }
    let cfg_dir = m.path("home/.config/llama-orch");
    let cfg = cfg_dir.join("orchestratord.yaml");
    let unit = m.path("home/.config/systemd/user/llama-orch.service");
    assert!(cfg.is_file() && unit.is_file(), "{first}");
    assert_eq!(mode_of(&cfg_dir.join("token")), 0o600);
    let unit_text = std::fs::read_to_string(&unit).expect("unit");
    let exec = format!(
        "ExecStart={}/bin/orchestratord --config {}",
        prefix.display(),
        cfg.display()
    );
    assert!(unit_text.contains(&exec), "{unit_text}");
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    assert!(
        yaml.contains(&format!("{}/bin/llama-server", prefix.display())),
        "{yaml}"
    );
    assert!(first.contains("systemctl --user daemon-reload && systemctl --user enable --now"));
    assert!(first.contains("next:"), "{first}");

    let dirs = [prefix.clone(), m.path("home")];
    let before = snapshot(&dirs);
    let second = install(&m);
    assert!(second.contains("nothing changed"), "{second}");
    assert!(!second.contains("installed:"), "{second}");
    assert_eq!(snapshot(&dirs), before, "the second run changed files");

    check_config(&m, &prefix.join("bin/orchestratord"), &cfg);
    verify_unit(&m, &m.path("home"), &unit);
}

#[test]
fn init_writes_a_config_that_serves_a_task_and_refuses_to_overwrite() {
    let e = engine();
    let m = Machine::new(std::slice::from_ref(&e.model));
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let cfg_dir = m.path("cfg");
    let models = m.path("models");
    let data = m.path("data");
    let args: Vec<&str> = vec![
        "init",
        "--models-dir",
        models.to_str().expect("utf-8"),
        "--config-dir",
        cfg_dir.to_str().expect("utf-8"),
        "--bind",
        &bind,
        "--data-dir",
        data.to_str().expect("utf-8"),
        "--llama-server",
        e.llama_server.to_str().expect("utf-8"),
    ];
    let fake = Some("24GiB:RTX 3090");

    // --dry-run shows the plan and writes nothing.
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = m.llorch(fake, &dry);
    assert!(out.status.success());
    let plan = stderr(&out);
    let id = e
        .model
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("model stem");
    assert!(plan.contains("RTX 3090") && plan.contains(id), "{plan}");
    assert!(plan.contains("always") && plan.contains("gpu0"), "{plan}");
    assert!(
        plan.contains("llama") && plan.contains("trained ctx 32768"),
        "{plan}"
    );
    assert!(!cfg_dir.exists());

    let out = m.llorch(fake, &args);
    assert!(out.status.success());
    let cfg = cfg_dir.join("orchestratord.yaml");
    let token_file = cfg_dir.join("token");
    let cli = cfg_dir.join("cli.toml");
    assert_eq!(mode_of(&token_file), 0o600);
    let token = std::fs::read_to_string(&token_file).expect("token");
    assert_eq!(token.trim().len(), 64);
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    assert!(
        !yaml.contains(token.trim()),
        "the token must not be in the config"
    );
    assert!(yaml.contains("fake_gpus: \"24GiB:RTX 3090\""), "{yaml}");
    check_config(&m, &daemon_bin(), &cfg);

    // The daemon from that config alone serves a task; llorch finds it through cli.toml.
    let mut d = RunningDaemon::start(&m, &cfg, port);
    let cli_s = cli.to_str().expect("utf-8");
    let out = m.llorch(
        None,
        &[
            "--config",
            cli_s,
            "submit",
            "Once upon a time",
            "-n",
            "6",
            "--seed",
            "1",
        ],
    );
    assert!(
        out.status.success(),
        "submit failed; daemon log:\n{}",
        d.logs()
    );
    assert!(!out.stdout.is_empty(), "no tokens");
    assert!(stderr(&out).contains("[end: 6 tokens"), "{}", stderr(&out));
    let out = m.llorch(None, &["--config", cli_s, "--json", "status"]);
    assert!(out.status.success());
    assert_eq!(
        d.stop(),
        Some(0),
        "SIGTERM: a clean drain; log:\n{}",
        d.logs()
    );

    // Never overwrites without --force; --force keeps the token.
    let before = snapshot(std::slice::from_ref(&cfg_dir));
    let out = m.llorch(fake, &args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(snapshot(std::slice::from_ref(&cfg_dir)), before);
    let mut force = args.clone();
    force.push("--force");
    let out = m.llorch(fake, &force);
    assert!(out.status.success());
    assert!(stderr(&out).contains("kept"), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&token_file).expect("token"), token);
}

#[test]
fn init_loads_models_on_demand_when_they_do_not_fit_together() {
    let e = engine();
    let m = Machine::new(&[e.model.clone(), second_model()]);
    let port = free_port();
    let bind = format!("127.0.0.1:{port}");
    let cfg_dir = m.path("cfg");
    let (models, data) = (m.path("models"), m.path("data"));
    // ~793 MiB per tiny model (ctx 4096 x 4 slots + compute allowance); 1500 MiB less the
    // 512 MiB headroom holds one.
    let out = m.llorch(
        Some("1500MiB:small card"),
        &[
            "init",
            "--models-dir",
            models.to_str().expect("utf-8"),
            "--config-dir",
            cfg_dir.to_str().expect("utf-8"),
            "--bind",
            &bind,
            "--data-dir",
            data.to_str().expect("utf-8"),
            "--llama-server",
            e.llama_server.to_str().expect("utf-8"),
        ],
    );
    assert!(out.status.success());
    assert!(stderr(&out).contains("on_demand"), "{}", stderr(&out));
    let cfg = cfg_dir.join("orchestratord.yaml");
    let yaml = std::fs::read_to_string(&cfg).expect("config");
    assert_eq!(yaml.matches("    load: on_demand").count(), 2, "{yaml}");
    check_config(&m, &daemon_bin(), &cfg);

    // One task per model: the second evicts the first.
    let d = RunningDaemon::start(&m, &cfg, port);
    let cli = cfg_dir.join("cli.toml");
    for model in [&e.model, &second_model()] {
        let id = model.file_stem().and_then(|s| s.to_str()).expect("stem");
        let out = m.llorch(
            None,
            &[
                "--config",
                cli.to_str().expect("utf-8"),
                "submit",
                "Hi",
                "-n",
                "3",
                "--model",
                id,
            ],
        );
        assert!(
            out.status.success(),
            "submit to {id} failed; log:\n{}",
            d.logs()
        );
    }
}

#[test]
fn the_unit_file_verifies_and_the_script_is_shellcheck_clean() {
    let m = Machine::new(&[]);
    // The template as shipped: %h/.local/bin/orchestratord must exist for verify.
    let home = m.path("home");
    std::fs::create_dir_all(home.join(".local/bin")).expect("mkdir");
    std::os::unix::fs::symlink(daemon_bin(), home.join(".local/bin/orchestratord"))
        .expect("symlink");
    let unit = repo().join("contrib/systemd/llama-orch.service");
    let text = std::fs::read_to_string(&unit).expect("unit");
    for want in [
        "Restart=on-failure",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        "StandardOutput=journal",
        "UnsetEnvironment=AUTH_TOKEN",
    ] {
        assert!(text.contains(want), "the unit lacks {want}");
    }
    // Longer than the daemon's default drain (shutdown_grace_s 10 s + engine stops).
    let stop_s: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec");
    assert!(stop_s > orch_config::Config::default().shutdown_grace_s + 15);
    verify_unit(&m, &home, &unit);

    match Command::new("shellcheck")
        .arg(repo().join("scripts/install.sh"))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck scripts/install.sh:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("\n!!! shellcheck not installed: scripts/install.sh not linted\n"),
    }
}
