//! Command line definition (clap derive).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// `llorch`: talk to a llama-orch daemon (orchestratord).
///
/// Server URL and token come from flags, then the environment (`LLORCH_URL`, `LLORCH_TOKEN`),
/// then the config file (`~/.config/llama-orch/cli.toml`), then `AUTH_TOKEN` and the default
/// `http://127.0.0.1:8080`. Exit codes: 0 ok, 1 usage or request refused, 2 task failed,
/// 3 not found, 4 rate limited (429), 5 unavailable (503), 6 authentication, 7 connection,
/// 8 task canceled, 130 interrupted. See docs/CLI.md.
#[derive(Parser, Debug)]
#[command(name = "llorch", version, about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalOpts,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Daemon base URL [env: LLORCH_URL] [default: http://127.0.0.1:8080].
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Bearer token [env: LLORCH_TOKEN].
    #[arg(long, global = true, value_name = "TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CLI config file [env: LLORCH_CLI_CONFIG] [default: ~/.config/llama-orch/cli.toml].
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Machine-readable output: one JSON document, or NDJSON for streams.
    #[arg(long, global = true)]
    pub json: bool,
    /// On 429 and 503, wait as long as the daemon's Retry-After says and try again.
    #[arg(long, global = true)]
    pub wait: bool,
    /// Give up waiting (`--wait`) after this many seconds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 600)]
    pub wait_max_s: u64,
}

/// Task priority.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PriorityArg {
    /// Someone is waiting for it (dequeued first).
    Interactive,
    /// Background work.
    Batch,
}

impl PriorityArg {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interactive => "interactive",
            Self::Batch => "batch",
        }
    }
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Submit a task: prints its queue position and predicted start (stderr), then streams the
    /// tokens to stdout byte for byte as they arrive.
    Submit(SubmitArgs),
    /// Chat with a model: one line a turn, answers streamed, history kept (`/clear` forgets
    /// it, `/exit` or Ctrl-D ends). Ctrl-C cancels the answer in progress. When stdin is not a
    /// terminal, each line is one turn and each answer is printed on stdout.
    Chat(ChatArgs),
    /// Follow a task's stream (from the start, even after it ended).
    Stream {
        /// Task id.
        task_id: String,
    },
    /// Cancel a queued or running task (idempotent).
    Cancel {
        /// Task id.
        task_id: String,
    },
    /// Show a task's state.
    Task {
        /// Task id.
        task_id: String,
    },
    /// Sessions (KV reuse and budgets).
    Sessions {
        /// What to do.
        #[command(subcommand)]
        cmd: SessionsCmd,
    },
    /// Download a model from a hub (or a URL) into the daemon's data directory, verify it and
    /// register it: `hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT` or `https://…/file.gguf`.
    /// Shows a progress bar (bytes, rate, ETA); prints the catalog id.
    Pull(PullArgs),
    /// The model catalog.
    Catalog {
        /// What to do.
        #[command(subcommand)]
        cmd: CatalogCmd,
    },
    /// Engine pools.
    Pools {
        /// What to do (default: `list`).
        #[command(subcommand)]
        cmd: Option<PoolsCmd>,
    },
    /// Load an `on_demand` pool now (evicting idle on_demand models if it must); waits until it
    /// serves.
    Load {
        /// Pool id.
        pool_id: String,
    },
    /// Unload an `on_demand` pool: stop its engine and free its VRAM. A busy pool is refused
    /// unless `--force` (its tasks end with CANCELED).
    Unload {
        /// Pool id.
        pool_id: String,
        /// Cancel the pool's running and queued tasks first.
        #[arg(long)]
        force: bool,
    },
    /// What the daemon and its pools can do.
    Capabilities,
    /// The artifact store.
    Artifacts {
        /// What to do.
        #[command(subcommand)]
        cmd: ArtifactsCmd,
    },
    /// Queue, GPUs, pools and recent tasks at a glance.
    Status {
        /// Keep redrawing from the daemon's live status stream.
        #[arg(long, short)]
        watch: bool,
        /// Recent tasks to show.
        #[arg(long, default_value_t = 10)]
        tasks: usize,
    },
    /// Show the interesting Prometheus series; `--follow` prints changes as they happen.
    Metrics {
        /// Keep polling and print series whose value changed.
        #[arg(long, short)]
        follow: bool,
        /// Polling interval for `--follow`, seconds.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Only series whose name or labels contain this text.
        #[arg(long, short)]
        grep: Option<String>,
        /// Every series, not only the interesting ones.
        #[arg(long)]
        all: bool,
    },
    /// Check this machine: NVIDIA driver and NVML, CUDA, engine binaries, the port, the data
    /// directory and the daemon's health; prints copy-pasteable fixes.
    Doctor {
        /// The daemon's config file, to check its data dir, bind and engine binaries
        /// [env: LLORCH_CONFIG].
        #[arg(long, value_name = "FILE")]
        daemon_config: Option<PathBuf>,
    },
    /// Write a daemon config for this machine: finds the GPUs (NVML) and the GGUF models in
    /// `--models-dir`, shows which model goes where, then writes orchestratord.yaml, a token
    /// file (mode 0600) and the CLI config. Never overwrites without `--force`.
    Init(InitArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `llorch submit`.
#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The prompt; `-` or absent reads it from stdin.
    pub prompt: Option<String>,
    /// Model: a pool id, a catalog id or a model file name. Default: the config file's
    /// `model`, else the daemon's only pool.
    #[arg(long, short)]
    pub model: Option<String>,
    /// Priority.
    #[arg(long, short, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Sampling seed (same seed, same replica build and model: same tokens).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Session id, for KV reuse across turns and budgets.
    #[arg(long)]
    pub session: Option<String>,
    /// Tokens to generate at most.
    #[arg(long, short = 'n', default_value_t = 256)]
    pub max_tokens: u32,
    /// Sampling temperature.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Nucleus sampling.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Top-k sampling.
    #[arg(long)]
    pub top_k: Option<u32>,
    /// Stop string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Send the prompt as a plain completion prompt, not as a user chat message. By default
    /// the prompt is one user message, templated by the engine with the model's chat template:
    /// an instruct model given a raw prompt often ends its turn at once.
    #[arg(long)]
    pub raw: bool,
    /// The default (the prompt is a user chat message); kept for older scripts.
    #[arg(long, hide = true, conflicts_with = "raw")]
    pub chat: bool,
    /// System message (chat only).
    #[arg(long, conflicts_with = "raw")]
    pub system: Option<String>,
    /// Task id (default: `cli-<uuid>`).
    #[arg(long)]
    pub task_id: Option<String>,
    /// Run only on this pool.
    #[arg(long)]
    pub pool: Option<String>,
    /// Advisory deadline in milliseconds from admission.
    #[arg(long)]
    pub deadline_ms: Option<u64>,
    /// Expected output length in tokens, for the daemon's start and end predictions (default:
    /// `--max-tokens` capped by what the model usually emits).
    #[arg(long)]
    pub expected_tokens: Option<u32>,
    /// Admit only: print the admission and exit without streaming.
    #[arg(long)]
    pub no_stream: bool,
    /// Leave the task running when interrupted (Ctrl-C); by default it is canceled.
    #[arg(long)]
    pub detach_on_interrupt: bool,
}

/// `llorch chat`.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// Model: a pool id, a catalog id or a model file name. Default: the config file's
    /// `model`, else the daemon's only pool.
    #[arg(long, short)]
    pub model: Option<String>,
    /// System message, first in the history (kept by `/clear`).
    #[arg(long)]
    pub system: Option<String>,
    /// Priority.
    #[arg(long, short, value_enum)]
    pub priority: Option<PriorityArg>,
    /// Tokens to generate at most per answer.
    #[arg(long, short = 'n', default_value_t = 512)]
    pub max_tokens: u32,
    /// Sampling seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sampling temperature (0: always the likeliest token).
    #[arg(long)]
    pub temperature: Option<f32>,
}

/// `llorch pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// `hf:ORG/REPO/FILE.gguf`, `hf:ORG/REPO:QUANT` (the one GGUF file whose name contains
    /// QUANT; a split GGUF pulls every part) or `https://…/file.gguf`.
    #[arg(value_name = "REF")]
    pub reference: String,
    /// Catalog id to register the model under (default: the file name without `.gguf`).
    #[arg(long)]
    pub id: Option<String>,
    /// Expected sha256 (`sha256:<hex>`), instead of the hub's `lfs.oid`; needed to verify a
    /// plain URL.
    #[arg(long)]
    pub digest: Option<String>,
    /// Start the pull and return; follow it with `llorch catalog show ID`.
    #[arg(long)]
    pub detach: bool,
}

/// `llorch init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Where the GGUF models are (searched 4 levels deep) [default: ~/models].
    #[arg(long, value_name = "DIR")]
    pub models_dir: Option<PathBuf>,
    /// Directory for orchestratord.yaml, token and cli.toml
    /// [default: $XDG_CONFIG_HOME/llama-orch, i.e. ~/.config/llama-orch].
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// The daemon config to write [default: CONFIG_DIR/orchestratord.yaml]. The CLI config goes
    /// to `--config FILE` when given, else CONFIG_DIR/cli.toml.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// The llama-server the pools launch [default: $LLAMA_SERVER, else `llama-server` next to
    /// llorch or on PATH].
    #[arg(long, value_name = "PATH")]
    pub llama_server: Option<PathBuf>,
    /// Address the daemon listens on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub bind: String,
    /// The daemon's data directory [default: the daemon's, ~/.local/share/llama-orch].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Context tokens per slot (at most the model's training context).
    #[arg(long, default_value_t = 4096)]
    pub ctx: u32,
    /// Concurrent requests per engine.
    #[arg(long, default_value_t = 4)]
    pub slots: u32,
    /// No NVIDIA GPU here: write `dev.allow_cpu_inference: true` (engines on the CPU; slow,
    /// for trying it out only).
    #[arg(long)]
    pub allow_cpu: bool,
    /// Show the plan and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Overwrite existing files (an existing token is kept).
    #[arg(long)]
    pub force: bool,
}

/// `llorch sessions …`.
#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// TTL, turns, KV bytes and warmth, budget of a session.
    Show {
        /// Session id.
        session_id: String,
    },
    /// Evict a session and free its engine slot.
    Evict {
        /// Session id.
        session_id: String,
    },
}

/// `llorch catalog …`.
#[derive(Subcommand, Debug)]
pub enum CatalogCmd {
    /// Every registered model.
    #[command(alias = "ls")]
    List,
    /// One model.
    Show {
        /// Catalog id.
        id: String,
    },
    /// Register a model file or URL.
    Register {
        /// Catalog id.
        id: String,
        /// Absolute path, `file://` or `http(s)://` URL of the model.
        reference: String,
        /// Expected digest, `sha256:<hex>`.
        #[arg(long)]
        digest: Option<String>,
        /// Detached signature file.
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// SBOM file.
        #[arg(long, value_name = "FILE")]
        sbom: Option<PathBuf>,
    },
    /// Hash the model file and compare with the registered digest.
    Verify {
        /// Catalog id.
        id: String,
    },
    /// Set the state: Active or Retired.
    State {
        /// Catalog id.
        id: String,
        /// New state.
        #[arg(value_parser = ["Active", "Retired"])]
        state: String,
    },
    /// Remove a model from the catalog.
    #[command(alias = "rm")]
    Delete {
        /// Catalog id.
        id: String,
    },
}

/// `llorch pools …`.
#[derive(Subcommand, Debug)]
pub enum PoolsCmd {
    /// Every pool with its health.
    #[command(alias = "ls")]
    List,
    /// One pool's health: live, ready, draining, replicas, last error.
    Health {
        /// Pool id.
        pool_id: String,
    },
    /// Stop admitting to a pool; in-flight tasks finish or are canceled by the deadline.
    Drain {
        /// Pool id.
        pool_id: String,
        /// Deadline for in-flight tasks, milliseconds.
        #[arg(long, default_value_t = 30_000)]
        deadline_ms: u64,
        /// Return once the daemon accepted the drain instead of waiting for in-flight work.
        #[arg(long)]
        no_wait: bool,
        /// Undo a drain: admit work again.
        #[arg(long, conflicts_with = "no_wait")]
        resume: bool,
    },
    /// Swap a pool to another model atomically (rolls back on failure).
    Reload {
        /// Pool id.
        pool_id: String,
        /// New model: catalog id or path.
        new_model_ref: String,
    },
    /// Load an `on_demand` pool now (same as `llorch load`).
    Load {
        /// Pool id.
        pool_id: String,
    },
    /// Unload an `on_demand` pool (same as `llorch unload`).
    Unload {
        /// Pool id.
        pool_id: String,
        /// Cancel the pool's running and queued tasks first.
        #[arg(long)]
        force: bool,
    },
}

/// `llorch artifacts …`.
#[derive(Subcommand, Debug)]
pub enum ArtifactsCmd {
    /// Store a file (or stdin) as an artifact; prints its id.
    Put {
        /// File to store; `-` or absent reads stdin.
        file: Option<PathBuf>,
        /// Kind: plan, summary, diff, trace, transcript, other.
        #[arg(long, short, default_value = "other",
              value_parser = ["plan", "summary", "diff", "trace", "transcript", "other"])]
        kind: String,
        /// Tag (repeatable).
        #[arg(long, short)]
        tag: Vec<String>,
        /// Parent artifact id.
        #[arg(long)]
        parent: Option<String>,
        /// Metadata entry `key=value` (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        meta: Vec<String>,
    },
    /// Fetch an artifact's content (raw bytes to stdout or `-o FILE`; `--json` for the record).
    Get {
        /// Artifact id (`sha256:<hex>`).
        id: String,
        /// Write the content here instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// List artifacts, newest first.
    #[command(alias = "list")]
    Ls {
        /// Only with this tag.
        #[arg(long, short)]
        tag: Option<String>,
        /// Only of this kind.
        #[arg(long, short)]
        kind: Option<String>,
    },
}
