//! Secrets: the token must never reach a log, an error body or an artifact (ARCHITECTURE.md,
//! "Secrets never reach logs"; docs/DECISIONS.md "Auth"; docs/STATE.md for what artifacts
//! redact).
//!
//! Every scenario's daemons are audited when they stop (log, data directory) and every body
//! the harness reads is audited ([`crate::Audit`]). This scenario adds the adversarial cases: a
//! caller that puts the token where the daemon echoes input back — a correlation id, a prompt
//! (which lands in the transcript artifact), an unknown field name, a `model_ref`, a path
//! parameter, a model path, a URL's password or query — and checks the error bodies, the
//! transcript, the audit log and the daemon log.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::{poll_until, task, Ctx, Outcome};

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("secrets");
    let t = ctx.token.clone();
    let sut = ctx.start(
        "secrets",
        ctx.options(ctx.config(
            // Allow loopback URLs so the policy decision (and its audit line) sees them.
            "",
            &[ctx.pool("tiny", 1, 4096)],
        )),
    );
    let api = sut.api();
    let before = ctx.audit.leaks().len();
    let mut probes = 0;
    // A task whose prompt and correlation id carry the token; its transcript is an artifact.
    let mut body = task("secret-prompt", 8, 1);
    body["prompt"] = json!(format!("my token is {t}; Authorization: Bearer {t}"));
    let r = api
        .send(
            api.request(reqwest::Method::POST, "/v1/tasks")
                .header("X-Correlation-Id", t.as_str())
                .json(&body),
        )
        .await;
    probes += 1;
    o.check(r.as_ref().is_ok_and(|r| r.status == 202), || {
        format!("task with the token in its prompt: {r:?}")
    });
    let s = api
        .follow("secret-prompt", Duration::from_secs(60), None)
        .await;
    o.check(s.terminal_name() == "end", || {
        format!("secret-prompt: {}", s.summary())
    });
    let transcript = poll_until(Duration::from_secs(10), || async {
        let v = api.get("/v1/tasks/secret-prompt").await.ok()?.json();
        v["transcript_artifact"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    })
    .await;
    let found = transcript.is_some();
    let transcript = transcript.unwrap_or_default();
    if found {
        // Both forms are audited by the client.
        let _ = api.get(&format!("/v1/artifacts/{transcript}")).await;
        let _ = api.get(&format!("/v1/artifacts/{transcript}/raw")).await;
        probes += 2;
    }
    o.fig(
        "transcript artifact of the task with the token in its prompt",
        if found {
            transcript.clone()
        } else {
            "none written".into()
        },
    );
    // Error paths that echo input.
    let mut errors = Vec::new();
    let mut unknown = task("secret-field", 8, 1);
    unknown[t.as_str()] = json!(1);
    errors.push((
        "unknown field named like the token",
        api.submit(&unknown).await,
    ));
    let mut model = task("secret-model", 8, 1);
    model["model_ref"] = json!(t);
    errors.push(("model_ref", api.submit(&model).await));
    let mut sess = task("secret-session", 8, 1);
    sess["session_id"] = json!(format!("{t} !"));
    errors.push(("session_id", api.submit(&sess).await));
    let mut stop = task("secret-stop", 8, 1);
    stop["max_tokens"] = json!(t);
    errors.push(("max_tokens", api.submit(&stop).await));
    errors.push((
        "task id in the path",
        api.get(&format!("/v1/tasks/{t}")).await,
    ));
    errors.push((
        "stream path",
        api.get(&format!("/v1/tasks/{t}/stream")).await,
    ));
    errors.push(("unknown route", api.get(&format!("/v1/nothing/{t}")).await));
    errors.push(("session path", api.get(&format!("/v1/sessions/{t}")).await));
    errors.push(("pool path", api.get(&format!("/v1/pools/{t}/health")).await));
    errors.push((
        "artifact path",
        api.get(&format!("/v1/artifacts/sha256:{t}")).await,
    ));
    errors.push((
        "catalog path",
        api.get(&format!("/v1/catalog/models/{t}")).await,
    ));
    errors.push((
        "reload to a model path",
        api.post(
            "/v1/pools/tiny/reload",
            &json!({"new_model_ref": format!("/nonexistent/{t}.gguf")}),
        )
        .await,
    ));
    errors.push((
        "catalog ref URL with the token as password",
        api.post(
            "/v1/catalog/models",
            &json!({"id": "secret-url-1", "ref": format!("https://user:{t}@127.0.0.1:9/m.gguf")}),
        )
        .await,
    ));
    errors.push((
        "catalog ref URL with the token as api_key",
        api.post(
            "/v1/catalog/models",
            &json!({"id": "secret-url-2", "ref": format!("https://127.0.0.1:9/m.gguf?api_key={t}")}),
        )
        .await,
    ));
    errors.push((
        "OpenAI model",
        api.post(
            "/v1/chat/completions",
            &json!({"model": t, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await,
    ));
    errors.push((
        "OpenAI unknown field",
        api.post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", t.as_str(): 1}),
        )
        .await,
    ));
    errors.push((
        "artifact kind",
        api.post("/v1/artifacts", &json!({"kind": t, "content": "x"}))
            .await,
    ));
    errors.push((
        "artifact parent",
        api.post(
            "/v1/artifacts",
            &json!({"kind": "other", "content": "x", "parent": t}),
        )
        .await,
    ));
    let mut statuses = Vec::new();
    for (what, r) in errors {
        probes += 1;
        match r {
            Ok(r) => statuses.push(format!("{what}: {}", r.status)),
            Err(e) => o.fail(format!("{what}: request failed: {e}")),
        }
    }
    o.fig("probes that put the token into echoed input", probes);
    o.fig("answers", statuses.join(", "));
    drop(sut);
    let leaks = ctx.audit.leaks();
    o.fig(
        "leaks found by these probes (error bodies, transcript, log, data dir)",
        leaks.len() - before,
    );
    o
}
