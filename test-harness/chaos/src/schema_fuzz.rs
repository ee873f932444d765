//! Schema fuzzing: schemathesis against the daemon's own OpenAPI document (`GET /openapi.json`).
//!
//! Targets: every schemathesis check (`--checks all`) with 0 failures: no 5xx, no response
//! that breaks the document, no schema-valid request refused (`positive_data_acceptance`), no
//! schema-invalid one accepted (`negative_data_rejection`), 401 without the token
//! (`ignored_auth`), 405 with `Allow` for other methods; no panic in the daemon log. Values a
//! static document cannot bound (a pool's context for `max_tokens`/`ctx`, whether a model
//! path is a GGUF file) are pinned per operation in every pass (`PINS`). schemathesis comes from
//! `test-harness/chaos/setup-schemathesis.sh` (a pinned venv in the cache directory); a missing
//! venv is a failure naming that command, never a skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncReadExt;

use serde_json::json;

use crate::{task, Api, Ctx, Outcome};

/// The checks schemathesis runs.
pub const CHECKS: &str = "all";

/// Operation parameters pinned in every pass: what depends on the daemon's state rather than
/// on the document (`max_tokens` and `ctx` within the pool's context, model paths that name a
/// file; `{model}` is the pool's model file). A catalog `ref` is pinned to a local path, so
/// `pull` is pinned false with it: the document allows `pull: true` only for hub references
/// and URLs (a pull of a local path is a 400), and a pull needs the hub, which the harness
/// cannot reach (the coverage phase still sends the pull forms).
const PINS: &str = "[[operations]]\ninclude-path = \"/v1/tasks\"\ninclude-method = \"POST\"\nparameters = { \"body.max_tokens\" = 4, \"body.ctx\" = 64 }\n\n[[operations]]\ninclude-path = \"/v1/catalog/models\"\ninclude-method = \"POST\"\nparameters = { \"body.ref\" = \"/nonexistent/fuzz.gguf\", \"body.pull\" = false }\n\n[[operations]]\ninclude-path-regex = \"/reload$\"\nparameters = { \"body.new_model_ref\" = \"{model}\" }\n\n";

/// The agent doors' generation routes (OpenAI's two, Anthropic's Messages and its token
/// count) may answer 400 to schema-valid data: their bodies have
/// rules a JSON Schema cannot state (`max_tokens` within the serving pool's context, which
/// depends on the pool a `model` routes to; llama-server's rule on trailing assistant
/// messages with tool calls), so positive-data acceptance also expects 400 there, and only
/// there (docs/RELIABILITY.md). The same holds for `/v1/embeddings` and `/v1/rerank`, whose
/// `model` may name a pool of another kind (a chat pool: 400 naming the right pools).
const OPENAI_EXPECT: &str = "checks = { positive_data_acceptance = { expected-statuses = [\"2xx\", \"3xx\", \"400\", \"401\", \"403\", \"404\", \"409\", \"429\", \"5xx\"] } }";

/// `[[operations]]` entries for the agent doors' generation routes (the Responses and Messages
/// doors' too: a named `tool_choice` must name one of their tools, which the document cannot
/// state): `params` (a TOML inline table body, may be empty) and [`OPENAI_EXPECT`].
fn openai_ops(
    completion_params: &str,
    chat_params: &str,
    responses_params: &str,
    messages_params: &str,
) -> String {
    let mut out = String::new();
    for (path, params) in [
        ("/v1/completions", completion_params),
        ("/v1/chat/completions", chat_params),
        ("/v1/embeddings", ""),
        ("/v1/rerank", ""),
        ("/v1/responses", responses_params),
        ("/v1/responses/input_tokens", responses_params),
        ("/v1/messages", messages_params),
        ("/v1/messages/count_tokens", ""),
    ] {
        out.push_str(&format!(
            "[[operations]]\ninclude-path = \"{path}\"\ninclude-method = \"POST\"\n{OPENAI_EXPECT}\n"
        ));
        if !params.is_empty() {
            out.push_str(&format!("parameters = {params}\n"));
        }
        out.push('\n');
    }
    out
}

/// `…/venv-schemathesis/bin/st` in the llama-orch cache directory.
pub fn st_path() -> PathBuf {
    let cache = std::env::var_os("LLORCH_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("llama-orch")))
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/llama-orch")
        });
    cache.join("venv-schemathesis/bin/st")
}

/// The command that creates the venv.
pub fn setup_command() -> String {
    format!("{}/setup-schemathesis.sh", env!("CARGO_MANIFEST_DIR"))
}

/// Live objects for passes 2 and 3; returns the seed artifact's id.
async fn seed(o: &mut Outcome, api: &Api) -> String {
    let mut t = task("fuzz-seed-task", 200, 1);
    t["session_id"] = json!("fuzz-session");
    if let Ok(r) = api.submit(&t).await {
        o.check(r.status == 202, || {
            format!("seed task: {} {}", r.status, r.text)
        });
    }
    let m = json!({"id": "fuzz-model", "ref": "/nonexistent/fuzz-model.gguf"});
    if let Ok(r) = api.post("/v1/catalog/models", &m).await {
        o.check(r.status == 201, || {
            format!("seed model: {} {}", r.status, r.text)
        });
    }
    // A `transcript` a client uploaded, which is not JSON: its raw bytes must not be
    // labelled `application/json`.
    match api
        .post(
            "/v1/artifacts",
            &json!({"kind": "transcript", "content": "not JSON µ"}),
        )
        .await
    {
        Ok(r) if r.status == 201 => r.json()["id"].as_str().unwrap_or("").to_owned(),
        other => {
            o.fail(format!("seed artifact: {other:?}"));
            String::new()
        }
    }
}

/// One schemathesis run; records its figures and fails `o` unless it passed.
/// What schemathesis runs against.
struct Target<'a> {
    /// The `st` executable.
    st: &'a Path,
    /// The daemon's base URL.
    base: &'a str,
    /// The OpenAPI document, written to a file.
    schema: &'a Path,
}

async fn run_st(
    o: &mut Outcome,
    ctx: &Ctx,
    t: &Target<'_>,
    config: Option<&Path>,
    extra: &[&str],
    label: &str,
) {
    let (st, base, schema) = (t.st, t.base, t.schema);
    let p = &ctx.profile;
    let dir = schema.parent().unwrap_or(Path::new("."));
    let junit_path = dir.join("junit.xml");
    let _ = std::fs::remove_file(&junit_path);
    let mut cmd = tokio::process::Command::new(st);
    if let Some(c) = config {
        cmd.arg("--config-file").arg(c);
    }
    cmd.arg("run")
        .arg(schema)
        .args(["--url", base])
        .args(["-H", &format!("Authorization: Bearer {}", ctx.token)])
        .args(["--checks", CHECKS])
        .args(["--max-examples", &p.schema_max_examples.to_string()])
        .args(["--seed", "20261123"])
        .args(["--workers", "2"])
        .args(["--request-timeout", "20"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--suppress-health-check", "all"])
        // An endless status feed: nothing for a fuzzer to check.
        .args(["--exclude-path", "/v1/status/stream"])
        .args(["--report", "junit"])
        .arg("--report-junit-path")
        .arg(&junit_path)
        .args(extra)
        .current_dir(dir)
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let t0 = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            o.fail(format!(
                "cannot run {}: {e}; re-run `{}`",
                st.display(),
                setup_command()
            ));
            return;
        }
    };
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let reader = tokio::spawn(async move {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let _ = tokio::join!(out.read_to_end(&mut a), err.read_to_end(&mut b));
        (a, b)
    });
    let status = match tokio::time::timeout(p.schema_timeout, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            let _ = child.kill().await;
            o.fail(format!(
                "{label}: schemathesis did not finish within {:?} (hard timeout)",
                p.schema_timeout
            ));
            None
        }
    };
    let (stdout, stderr) = reader.await.unwrap_or_default();
    let text = String::from_utf8_lossy(&stdout).into_owned();
    let junit = std::fs::read_to_string(&junit_path).unwrap_or_default();
    let attr = |name: &str| {
        junit
            .split_once(&format!("{name}=\""))
            .and_then(|(_, r)| r.split('"').next())
            .unwrap_or("?")
            .to_owned()
    };
    let cases = text
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .map(str::trim)
        .unwrap_or("?")
        .to_owned();
    o.fig(
        &format!("{label}: operations tested / failing / errors; test cases"),
        format!(
            "{} / {} / {}; {cases}; {:.0} s",
            attr("tests"),
            attr("failures"),
            attr("errors"),
            t0.elapsed().as_secs_f64()
        ),
    );
    match status {
        Some(s) if s.success() => {}
        Some(s) => {
            let failures: String = text
                .lines()
                .skip_while(|l| !l.contains("FAILURES"))
                .take_while(|l| !l.contains("WARNINGS") && !l.contains("SUMMARY"))
                .collect::<Vec<_>>()
                .join("\n");
            o.fail(format!(
                "{label}: schemathesis found problems ({s}):\n{failures}\n{}",
                String::from_utf8_lossy(&stderr)
            ))
        }
        None => {}
    }
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("schema fuzzing");
    let st = st_path();
    if !st.is_file() {
        o.fail(format!(
            "schemathesis is not installed at {}; run `{}` (creates the pinned venv, once)",
            st.display(),
            setup_command()
        ));
        return o;
    }
    let sut = ctx.start(
        "schema-fuzz",
        ctx.options(ctx.config(
            "queue: { capacity: 16 }\ntasks: { retain_ms: 10000 }\n",
            &[ctx.pool("tiny", 2, 256)],
        )),
    );
    let api = sut.api();
    let doc = match api.get("/openapi.json").await {
        Ok(r) if r.status == 200 => r.text,
        other => {
            o.fail(format!("GET /openapi.json: {other:?}"));
            return o;
        }
    };
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap_or_default();
    let ops: usize = v["paths"]
        .as_object()
        .map(|p| {
            p.values()
                .map(|m| m.as_object().map_or(0, |m| m.len()))
                .sum()
        })
        .unwrap_or(0);
    let dir = tempfile::tempdir().expect("tempdir");
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, &doc).expect("write schema");
    o.fig(
        "operations in /openapi.json (fuzzed: all but the endless /v1/status/stream)",
        ops,
    );
    o.fig(
        "schemathesis",
        format!(
            "{} (version pinned in setup-schemathesis.sh), --max-examples {} per operation, phases examples+coverage+fuzzing, checks {CHECKS}",
            st.display(),
            ctx.profile.schema_max_examples
        ),
    );
    let target = Target {
        st: &st,
        base: &api.base,
        schema: &schema,
    };
    let pins = PINS.replace("{model}", &ctx.engine.model.display().to_string());
    let pins_config = dir.path().join("schemathesis-pins.toml");
    std::fs::write(
        &pins_config,
        format!("{pins}{}", openai_ops("", "", "", "")),
    )
    .expect("write schemathesis-pins.toml");
    // Pass 1: every parameter fuzzed (ids are mostly unknown: 404 paths).
    run_st(
        &mut o,
        &ctx,
        &target,
        Some(&pins_config),
        &[],
        "pass 1 (ids fuzzed)",
    )
    .await;
    // Pass 2: path ids of live objects, so handlers past the lookup are fuzzed too.
    let ids = seed(&mut o, &api).await;
    let config = dir.path().join("schemathesis.toml");
    let mut toml = pins.clone();
    for (regex, id) in [
        ("^/v1/tasks/", "fuzz-seed-task"),
        ("^/v1/catalog/models/", "fuzz-model"),
        ("^/v1/sessions/", "fuzz-session"),
        ("^/v1/pools/", "tiny"),
        ("^/v1/models/", "tiny"),
        ("^/v1/artifacts/", ids.as_str()),
    ] {
        toml.push_str(&format!(
            "[[operations]]\ninclude-path-regex = \"{regex}\"\nparameters = {{ \"path.id\" = \"{id}\" }}\n\n"
        ));
    }
    // The OpenAI-compatible bodies get a served model, a prompt or messages and a small
    // `max_tokens` and `max_completion_tokens` (within the pool's context, which the document
    // cannot know), so generation (and `stream: true`) is reached; the rest stays fuzzed.
    toml.push_str(&openai_ops(
        "{ \"body.model\" = \"tiny\", \"body.max_tokens\" = 4, \"body.max_completion_tokens\" = 4, \"body.prompt\" = \"Once\", \"body.priority\" = \"batch\" }",
        "{ \"body.model\" = \"tiny\", \"body.max_tokens\" = 4, \"body.max_completion_tokens\" = 4, \"body.messages\" = [{ role = \"user\", content = \"hi\" }], \"body.priority\" = \"batch\" }",
        "{ \"body.model\" = \"tiny\", \"body.max_output_tokens\" = 4, \"body.input\" = \"hi\" }",
        "{ \"body.model\" = \"tiny\", \"body.max_tokens\" = 4, \"body.messages\" = [{ role = \"user\", content = \"hi\" }] }",
    ));
    std::fs::write(&config, toml).expect("write schemathesis.toml");
    run_st(
        &mut o,
        &ctx,
        &target,
        Some(&config),
        &[],
        "pass 2 (ids of live objects: task, catalog model, session, pool, artifact; OpenAI bodies with model, prompt/messages, max_tokens)",
    )
    .await;
    // Pass 3: the raw view of `GET /v1/artifacts/{id}?raw=1`.
    let raw_config = dir.path().join("schemathesis-raw.toml");
    std::fs::write(
        &raw_config,
        format!(
            "{pins}[[operations]]\ninclude-path = \"/v1/artifacts/{{id}}\"\nparameters = {{ \"path.id\" = \"{ids}\", \"query.raw\" = \"1\" }}\n"
        ),
    )
    .expect("write schemathesis-raw.toml");
    run_st(
        &mut o,
        &ctx,
        &target,
        Some(&raw_config),
        &["--include-path", "/v1/artifacts/{id}"],
        "pass 3 (GET /v1/artifacts/{id}?raw=1 of a live artifact)",
    )
    .await;
    let logs = sut.logs();
    o.check(!logs.contains("panicked"), || {
        "the daemon logged a panic during schema fuzzing".into()
    });
    drop(sut);
    o
}
