//! Configuration of `orchestratord`.
//!
//! One YAML (or TOML, by extension) file plus environment variables for secrets and a few
//! overrides. With no file at all the daemon runs on [`Config::default`]: loopback, a data
//! directory under the user's data dir, and no pool unless `LLORCH_MODEL` names a model file.
//! The JSON schema in `contracts/config.schema.json` is generated from these types.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod env;
pub use env::EnvOverrides;

/// Why a configuration cannot be used. Every message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML/TOML for this schema.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Parser message with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address to listen on. Loopback by default; anything else requires a token.
    /// Env `LLORCH_ADDR` overrides.
    pub bind: String,
    /// Authentication.
    pub auth: AuthConfig,
    /// Where the catalog, sessions, budgets and artifacts live.
    /// Default: `<user data dir>/llama-orch`. Env `LLORCH_DATA_DIR` overrides.
    pub data_dir: Option<PathBuf>,
    /// Admission queue, one per pool.
    pub queue: QueueConfig,
    /// Finished tasks and their transcripts kept for late readers.
    pub tasks: TasksConfig,
    /// Sessions for KV reuse.
    pub sessions: SessionsConfig,
    /// Artifact store retention.
    pub artifacts: ArtifactsConfig,
    /// Stored OpenAI Responses (`POST /v1/responses` with `store`, `previous_response_id`).
    pub responses: ResponsesConfig,
    /// Outbound HTTP policy.
    pub policy: PolicyConfig,
    /// Development switches. Never use these in production.
    pub dev: DevConfig,
    /// Logging.
    pub log: LogConfig,
    /// HTTP: request body limit and CORS.
    pub http: HttpConfig,
    /// Seconds to let running tasks finish on SIGTERM/SIGINT before they are ended with an error.
    pub shutdown_grace_s: u64,
    /// Seconds a client connection may accept no bytes at all while the daemon has something to
    /// send (a stream reader that stopped reading) before the daemon closes it, so stalled
    /// readers cannot pin memory and sockets forever. Slow readers that make any progress are
    /// never cut.
    pub write_stall_timeout_s: u64,
    /// Seconds a client connection may sit without sending a complete request header: an idle
    /// keep-alive connection between requests, or a client that opened a connection and sends
    /// its header too slowly. Then the daemon closes it, so idle clients cannot hold sockets
    /// forever. Never applies while a request is being answered (a long stream included).
    pub idle_timeout_s: u64,
    /// How much of each GPU the daemon may use, and how long a task may wait behind model
    /// swaps (docs/PLACEMENT.md, "Models on demand").
    pub placement: PlacementConfig,
    /// Model names agents send that no pool serves, mapped to one that does: a name or a glob
    /// (`*` any run of characters, `?` one) → a pool id, a pool's model name or a catalog id.
    /// An exact name wins over globs, a longer glob over a shorter one; a name some pool or
    /// catalog model serves is never aliased. Example: `{"claude-*": "qwen7b", "gpt-*": "qwen7b"}`
    /// (docs/AGENTS.md).
    pub model_aliases: std::collections::BTreeMap<String, String>,
    /// Engine pools.
    pub pools: Vec<PoolConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            auth: AuthConfig::default(),
            data_dir: None,
            queue: QueueConfig::default(),
            tasks: TasksConfig::default(),
            sessions: SessionsConfig::default(),
            artifacts: ArtifactsConfig::default(),
            responses: ResponsesConfig::default(),
            policy: PolicyConfig::default(),
            dev: DevConfig::default(),
            log: LogConfig::default(),
            http: HttpConfig::default(),
            shutdown_grace_s: 10,
            write_stall_timeout_s: 60,
            idle_timeout_s: 75,
            placement: PlacementConfig::default(),
            model_aliases: Default::default(),
            pools: Vec::new(),
        }
    }
}

/// HTTP settings of the daemon's listener.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes (default 2 MiB, 2097152); larger ones get 413.
    /// `POST /v1/artifacts` has its own limit (`artifacts.max_artifact_bytes`).
    pub max_body_bytes: u64,
    /// Cross-origin requests from browser-based clients.
    pub cors: CorsConfig,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            cors: CorsConfig::default(),
        }
    }
}

/// Default of `http.max_body_bytes`: 2 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 2 << 20;

/// CORS: which web origins may call the API from a browser. Preflight requests (`OPTIONS`)
/// from an allowed origin are answered before authentication; the token is still needed for
/// the request itself.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins such as `http://localhost:3000`, or `*` for any. Default: none (no
    /// CORS headers at all).
    pub allow_origins: Vec<String>,
}

/// Authentication: one shared bearer token for data and control planes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Environment variable holding the token.
    pub token_env: String,
    /// File holding the token (first line); used when the variable is unset.
    pub token_file: Option<PathBuf>,
    /// Waive the token for loopback callers only (env `AUTH_OPTIONAL=true`). Remote callers
    /// always need it.
    pub optional: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            token_env: "AUTH_TOKEN".into(),
            token_file: None,
            optional: false,
        }
    }
}

/// What to do when a pool's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FullPolicy {
    /// Reject the new task with 429.
    #[default]
    Reject,
    /// Drop the oldest queued batch task (it ends with `QUEUE_FULL_DROP_LRU`) to admit the new one.
    DropLru,
}

/// The bounded two-priority queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Tasks waiting per pool, both priorities together.
    pub capacity: usize,
    /// Policy when full.
    pub full_policy: FullPolicy,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 64,
            full_policy: FullPolicy::Reject,
        }
    }
}

/// Retention of finished tasks in memory (their transcripts serve late readers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// How long a finished task and its transcript stay readable.
    pub retain_ms: u64,
    /// At most this many finished tasks are kept; the oldest go first.
    pub max_retained: usize,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            retain_ms: 600_000,
            max_retained: 10_000,
        }
    }
}

/// Stored OpenAI Responses: kept in the data directory's database (so `previous_response_id`
/// survives a restart) until they are older than `retention_s` or beyond the newest
/// `max_stored`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ResponsesConfig {
    /// Seconds a stored response stays readable and chainable (default 30 days, 2592000).
    pub retention_s: u64,
    /// At most this many responses are kept; the oldest go first (default 10000; 0 stores
    /// none, as if every request said `store: false`).
    pub max_stored: u64,
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self {
            retention_s: 30 * 86_400,
            max_stored: 10_000,
        }
    }
}

/// Sessions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// Idle time-to-live, at most 600000 (10 min).
    pub ttl_ms: u64,
    /// Turns per session, at most 8.
    pub max_turns: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 600_000,
            max_turns: 8,
        }
    }
}

/// Artifact store retention.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Total bytes kept; oldest artifacts are collected first.
    pub max_bytes: u64,
    /// Artifacts older than this are collected.
    pub max_age_days: u64,
    /// Largest single artifact accepted.
    pub max_artifact_bytes: u64,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        Self {
            max_bytes: 10 << 30,
            max_age_days: 30,
            max_artifact_bytes: 64 << 20,
        }
    }
}

/// Outbound HTTP policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Rules for HTTP the daemon makes on a user's behalf.
    pub outbound: OutboundPolicy,
}

/// Allow and deny lists of host or URL patterns (`*`, `*.example.com`, `http://10.0.0.20:8000/*`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundPolicy {
    /// Allowed patterns.
    pub allow: Vec<String>,
    /// Denied patterns; deny wins.
    pub deny: Vec<String>,
    /// Refuse every model download.
    pub no_downloads: bool,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        Self {
            allow: vec!["*".into()],
            deny: Vec::new(),
            no_downloads: false,
        }
    }
}

/// Development switches.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct DevConfig {
    /// Run engines on the CPU when no NVIDIA GPU is usable (tests, the no-GPU quick start).
    /// Logged as a warning at start and shown in `/v1/capabilities`. Env
    /// `LLORCH_DEV_ALLOW_CPU_INFERENCE=true` sets it.
    pub allow_cpu_inference: bool,
    /// A fake GPU inventory such as `24GiB:RTX 3090,12GiB:RTX 3060`, for placement tests on
    /// machines without GPUs. Env `LLORCH_FAKE_GPUS` sets it.
    pub fake_gpus: Option<String>,
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `tracing` filter, e.g. `info` or `info,orchestratord=debug`. Env `RUST_LOG` overrides.
    pub filter: String,
    /// `json` (JSON lines) or `text`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            filter: "info".into(),
            format: LogFormat::Json,
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// Human-readable.
    Text,
}

/// Placement limits shared by every pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    /// Longest a task of an `on_demand` pool waits for a busy pool to give up its VRAM: after
    /// that the busy pool finishes its running tasks, starts no new ones, and is evicted (its
    /// queued tasks load it again later). Until then a loaded model serves the tasks queued
    /// for it before it can be evicted for another.
    pub max_swap_wait_ms: u64,
    /// Per-GPU limits on the VRAM the daemon may use (the rest stays free, e.g. for the
    /// desktop). Applies to `dev.fake_gpus` cards too.
    pub devices: Vec<DeviceLimit>,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        Self {
            max_swap_wait_ms: 30_000,
            devices: Vec::new(),
        }
    }
}

impl PlacementConfig {
    /// The limit configured for GPU `index`, if any.
    pub fn limit(&self, index: u32) -> Option<&DeviceLimit> {
        self.devices.iter().find(|d| d.index == index)
    }
}

/// How much of one GPU the daemon may use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceLimit {
    /// GPU index (as in `nvidia-smi`, and `devices:` of pools).
    pub index: u32,
    /// Use at most this many MiB of the card: the free memory placement sees is reduced by
    /// what lies beyond this cap.
    #[serde(default)]
    pub usable_mib: Option<u64>,
    /// Always leave this many MiB of the card free.
    #[serde(default)]
    pub reserve_mib: Option<u64>,
}

impl DeviceLimit {
    /// The free bytes placement may use on a card with `total` bytes of which `free` are free.
    pub fn usable_free(&self, total: u64, free: u64) -> u64 {
        let mut f = free;
        if let Some(cap) = self.usable_mib {
            f = f.saturating_sub(total.saturating_sub(cap.saturating_mul(1 << 20)));
        }
        if let Some(reserve) = self.reserve_mib {
            f = f.saturating_sub(reserve.saturating_mul(1 << 20));
        }
        f
    }
}

/// When a pool's engines run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoadPolicy {
    /// Loaded at start and kept loaded (never evicted).
    #[default]
    Always,
    /// Unloaded until a task needs it; may be evicted while idle to make room for another
    /// model, and is unloaded after `idle_unload_s` without work.
    OnDemand,
}

/// What a pool serves: generation, embeddings or rerank scores. A llama.cpp engine serves one of
/// them (`--embeddings` turns its completions off), so routing keeps each request to pools of
/// its kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// Completions and chat (`/v1/tasks`, `/v1/chat/completions`, ...).
    #[default]
    Chat,
    /// Embeddings (`/v1/embeddings`); llama-server runs with `--embeddings --pooling <pooling>`.
    Embedding,
    /// Rerank scores (`/v1/rerank`); llama-server runs with `--reranking`.
    Rerank,
}

impl PoolKind {
    /// Name in config, messages and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Embedding => "embedding",
            Self::Rerank => "rerank",
        }
    }
}

/// How an embedding pool's llama-server pools the token vectors of an input into one
/// (`--pooling`). Use what the model card says: mean (e5, gte, nomic, and any decoder model),
/// cls (BGE and other BERT-style models), last (Qwen3-Embedding and other last-token models).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The average of the token vectors (the default: works with every model).
    #[default]
    Mean,
    /// The first token's vector.
    Cls,
    /// The last token's vector.
    Last,
}

impl Pooling {
    /// llama-server's `--pooling` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mean => "mean",
            Self::Cls => "cls",
            Self::Last => "last",
        }
    }
}

/// Whether a pool may be split across several GPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SplitPolicy {
    /// Split across several allowed GPUs (proportional to their free VRAM) when no single one
    /// has room.
    #[default]
    Auto,
    /// One GPU per replica, or none.
    Never,
}

/// Engine kinds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EngineKind {
    /// llama.cpp `llama-server`.
    #[default]
    Llamacpp,
    /// vLLM's OpenAI-compatible server.
    Vllm,
    /// HuggingFace text-generation-inference.
    Tgi,
    /// NVIDIA Triton (generate extension).
    Triton,
    /// Any OpenAI-compatible server.
    Openai,
}

impl EngineKind {
    /// Name on the wire and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Llamacpp => "llamacpp",
            Self::Vllm => "vllm",
            Self::Tgi => "tgi",
            Self::Triton => "triton",
            Self::Openai => "openai",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Llamacpp,
            Self::Vllm,
            Self::Tgi,
            Self::Triton,
            Self::Openai,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Which GPUs a pool may use: `all` or a list of indices such as `[0]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum DeviceMask {
    /// The literal `all` (the default).
    All(AllDevices),
    /// A list of GPU indices, e.g. `[0]`.
    Only(Vec<u32>),
}

impl Default for DeviceMask {
    fn default() -> Self {
        Self::All(AllDevices::All)
    }
}

impl DeviceMask {
    /// The indices allowed, or `None` for all.
    pub fn indices(&self) -> Option<&[u32]> {
        match self {
            Self::All(_) => None,
            Self::Only(v) => Some(v),
        }
    }
}

/// The literal `all`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AllDevices {
    /// Every GPU.
    All,
}

/// One pool: replicas of one engine serving one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Unique id, used in `model_ref`, metrics and logs.
    pub id: String,
    /// Engine kind.
    #[serde(default)]
    pub engine: EngineKind,
    /// Model file (or catalog id) that launched replicas load.
    #[serde(default)]
    pub model: Option<String>,
    /// Engine binary to launch (for `llamacpp`, `llama-server` on PATH by default).
    #[serde(default)]
    pub engine_binary: Option<String>,
    /// An engine that already runs; the daemon does not launch anything for this pool.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// GPUs this pool may use.
    #[serde(default)]
    pub devices: DeviceMask,
    /// Replicas to launch.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Concurrent requests per replica (llama-server `--parallel`).
    #[serde(default = "four")]
    pub slots: u32,
    /// Context tokens per slot.
    #[serde(default = "default_ctx")]
    pub ctx: u32,
    /// Extra engine flags, appended to the launch command.
    #[serde(default)]
    pub flags: Vec<String>,
    /// Queue capacity for this pool (default: `queue.capacity`).
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// Seconds to wait for a launched replica to answer its health check.
    #[serde(default = "default_startup")]
    pub startup_timeout_s: u64,
    /// `always` (loaded at start, never evicted) or `on_demand` (loaded by the first task).
    #[serde(default)]
    pub load: LoadPolicy,
    /// `on_demand` pools: seconds without work after which the engine is unloaded; 0 = never.
    #[serde(default = "default_idle_unload")]
    pub idle_unload_s: u64,
    /// `auto`: split across several GPUs when none has room alone; `never`.
    #[serde(default)]
    pub split: SplitPolicy,
    /// `chat` (default), `embedding` (`/v1/embeddings`) or `rerank` (`/v1/rerank`); requests
    /// go only to pools of their kind.
    #[serde(default)]
    pub kind: PoolKind,
    /// `embedding` pools launched by llama-orch: `mean` (default), `cls` or `last`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
}

fn one() -> u32 {
    1
}
fn four() -> u32 {
    4
}
fn default_ctx() -> u32 {
    4096
}
fn default_startup() -> u64 {
    120
}
fn default_idle_unload() -> u64 {
    600
}

impl PoolConfig {
    /// A llama.cpp pool launching `binary` on `model`, with defaults for the rest.
    pub fn llamacpp(id: &str, model: &str, binary: Option<&str>) -> Self {
        Self {
            id: id.into(),
            engine: EngineKind::Llamacpp,
            model: Some(model.into()),
            engine_binary: binary.map(Into::into),
            endpoint: None,
            devices: DeviceMask::default(),
            replicas: 1,
            slots: 4,
            ctx: default_ctx(),
            flags: Vec::new(),
            queue_capacity: None,
            startup_timeout_s: default_startup(),
            load: LoadPolicy::Always,
            idle_unload_s: default_idle_unload(),
            split: SplitPolicy::Auto,
            kind: PoolKind::Chat,
            pooling: None,
        }
    }

    /// Whether the pool loads only when a task needs it.
    pub fn on_demand(&self) -> bool {
        self.load == LoadPolicy::OnDemand
    }
}

impl Config {
    /// Reads a YAML (`.yaml`/`.yml`/other) or TOML (`.toml`) file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_str_for(path, &text)
    }

    /// Parses config text; the path decides the format and appears in errors.
    pub fn from_str_for(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let is_toml = path.extension().is_some_and(|e| e == "toml");
        let parsed = if is_toml {
            toml::from_str(text).map_err(|e| e.to_string())
        } else if text.trim().is_empty() {
            Ok(Self::default())
        } else {
            serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
        };
        parsed.map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// The data directory, resolved.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| {
            dirs::data_dir()
                .unwrap_or_else(|| PathBuf::from("."))
                .join("llama-orch")
        })
    }

    /// Parsed listen address.
    pub fn bind_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.bind.parse().map_err(|e| {
            ConfigError::Invalid(format!(
                "bind `{}` is not an address:port ({e}); e.g. 127.0.0.1:8080",
                self.bind
            ))
        })
    }

    /// Checks everything that can be checked without starting anything.
    /// `token_present` says whether a bearer token was found (env or file).
    pub fn validate(&self, token_present: bool) -> Result<(), ConfigError> {
        let addr = self.bind_addr()?;
        if !addr.ip().is_loopback() && !token_present {
            return Err(ConfigError::Invalid(format!(
                "bind {addr} is reachable beyond this machine but no token is configured; \
                 set the {} environment variable (or auth.token_file), or bind 127.0.0.1",
                self.auth.token_env
            )));
        }
        for (from, to) in &self.model_aliases {
            if from.trim().is_empty() || to.trim().is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "model_aliases: `{from}` → `{to}`: both the name (or glob) and the model it maps to must be non-empty"
                )));
            }
        }
        if self.sessions.ttl_ms > 600_000 || self.sessions.ttl_ms == 0 {
            return Err(ConfigError::Invalid(format!(
                "sessions.ttl_ms is {}; it must be between 1 and 600000 (10 minutes)",
                self.sessions.ttl_ms
            )));
        }
        // Durations are added to clock instants; absurd values would overflow (and panic)
        // there (found by the chaos harness's extreme-config check).
        if self.shutdown_grace_s > MAX_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "shutdown_grace_s is {}; it must be at most {MAX_SECONDS} (a day)",
                self.shutdown_grace_s
            )));
        }
        if self.write_stall_timeout_s == 0 || self.write_stall_timeout_s > MAX_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "write_stall_timeout_s is {}; it must be between 1 and {MAX_SECONDS} (a day)",
                self.write_stall_timeout_s
            )));
        }
        if self.idle_timeout_s == 0 || self.idle_timeout_s > MAX_SECONDS {
            return Err(ConfigError::Invalid(format!(
                "idle_timeout_s is {}; it must be between 1 and {MAX_SECONDS} (a day)",
                self.idle_timeout_s
            )));
        }
        if self.http.max_body_bytes < 1024 || self.http.max_body_bytes > MAX_BODY_BYTES {
            return Err(ConfigError::Invalid(format!(
                "http.max_body_bytes is {}; it must be between 1024 and {MAX_BODY_BYTES} (1 GiB)",
                self.http.max_body_bytes
            )));
        }
        for o in &self.http.cors.allow_origins {
            if !valid_origin(o) {
                return Err(ConfigError::Invalid(format!(
                    "http.cors.allow_origins has `{o}`; give `*` or an origin such as \
                     http://localhost:3000 (scheme, host and optional port; no path)"
                )));
            }
        }
        if self.sessions.max_turns == 0 || self.sessions.max_turns > 8 {
            return Err(ConfigError::Invalid(format!(
                "sessions.max_turns is {}; it must be between 1 and 8",
                self.sessions.max_turns
            )));
        }
        if self.placement.max_swap_wait_ms > MAX_SECONDS * 1000 {
            return Err(ConfigError::Invalid(format!(
                "placement.max_swap_wait_ms is {}; it must be at most {} (a day)",
                self.placement.max_swap_wait_ms,
                MAX_SECONDS * 1000
            )));
        }
        let mut seen_dev = std::collections::HashSet::new();
        for d in &self.placement.devices {
            if !seen_dev.insert(d.index) {
                return Err(ConfigError::Invalid(format!(
                    "placement.devices lists GPU {} twice; give one entry per GPU",
                    d.index
                )));
            }
            if d.usable_mib.is_none() && d.reserve_mib.is_none() {
                return Err(ConfigError::Invalid(format!(
                    "placement.devices entry for GPU {} sets neither usable_mib nor reserve_mib",
                    d.index
                )));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.pools {
            validate_pool(p)?;
            if !seen.insert(p.id.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "pool id `{}` appears twice; pool ids must be unique",
                    p.id
                )));
            }
        }
        Ok(())
    }
}

/// Largest accepted `http.max_body_bytes` (1 GiB).
pub const MAX_BODY_BYTES: u64 = 1 << 30;

/// `*`, or `http(s)://host[:port]` without path, query or whitespace.
fn valid_origin(o: &str) -> bool {
    if o == "*" {
        return true;
    }
    let Some(rest) = o
        .strip_prefix("http://")
        .or_else(|| o.strip_prefix("https://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
}

/// Largest accepted value of a setting in seconds (a day).
pub const MAX_SECONDS: u64 = 86_400;

fn validate_pool(p: &PoolConfig) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(format!("pool `{}`: {m}", p.id)));
    if p.id.is_empty()
        || p.id.len() > 64
        || !p
            .id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        return bad("the id must be 1-64 characters of A-Z a-z 0-9 . _ -".into());
    }
    match (&p.endpoint, &p.model) {
        (Some(_), _) => {}
        (None, None) => {
            return bad("give either `model` (a file to launch an engine on) or `endpoint` (an engine that already runs)".into())
        }
        (None, Some(_)) if matches!(p.engine, EngineKind::Openai | EngineKind::Triton) => {
            return bad(format!(
                "`{}` engines are not launched by llama-orch; run the server yourself and give its `endpoint`",
                p.engine.as_str()
            ))
        }
        _ => {}
    }
    if p.replicas == 0 || p.replicas > 64 {
        return bad(format!("replicas is {}; use 1..=64", p.replicas));
    }
    if p.slots == 0 || p.slots > 256 {
        return bad(format!("slots is {}; use 1..=256", p.slots));
    }
    if p.startup_timeout_s > MAX_SECONDS {
        return bad(format!(
            "startup_timeout_s is {}; use at most {MAX_SECONDS} (a day)",
            p.startup_timeout_s
        ));
    }
    if p.ctx < 16 {
        return bad(format!("ctx is {}; use at least 16", p.ctx));
    }
    if p.on_demand() && p.endpoint.is_some() {
        return bad("`load: on_demand` needs an engine llama-orch launches (`model`); an `endpoint:` engine runs on its own".into());
    }
    if p.idle_unload_s > MAX_SECONDS * 7 {
        return bad(format!(
            "idle_unload_s is {}; use at most {} (a week), or 0 for never",
            p.idle_unload_s,
            MAX_SECONDS * 7
        ));
    }
    validate_kind(p)?;
    if let Some(e) = &p.endpoint {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return bad(format!(
                "endpoint `{e}` must start with http:// or https://"
            ));
        }
    }
    Ok(())
}

/// The engines that serve embeddings and rerank, and `pooling` only where we launch llama-server.
fn validate_kind(p: &PoolConfig) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Invalid(format!("pool `{}`: {m}", p.id)));
    if p.kind != PoolKind::Chat && matches!(p.engine, EngineKind::Tgi | EngineKind::Triton) {
        return bad(format!(
            "kind `{}` needs an engine that serves it: llamacpp (launched with `--embeddings`/`--reranking`), or a vllm/openai server that serves /v1/embeddings or /v1/rerank; engine `{}` serves only generation",
            p.kind.as_str(),
            p.engine.as_str()
        ));
    }
    if let Some(pooling) = p.pooling {
        if p.kind != PoolKind::Embedding {
            return bad(format!(
                "`pooling: {}` belongs to `kind: embedding` pools (this one is `{}`)",
                pooling.as_str(),
                p.kind.as_str()
            ));
        }
        if p.engine != EngineKind::Llamacpp || p.endpoint.is_some() {
            return bad("`pooling` is a flag of the llama-server llama-orch launches; an `endpoint:` or non-llamacpp engine pools as its own settings say, so leave `pooling` out".into());
        }
    }
    Ok(())
}

/// The JSON schema of the configuration file, as committed in `contracts/config.schema.json`.
pub fn json_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
