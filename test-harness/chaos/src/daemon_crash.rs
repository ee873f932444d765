//! Daemon crash: SIGKILL `orchestratord` under load (streams running, artifacts being
//! uploaded), restart it on the same data directory, and check what clients and the store saw.
//!
//! Targets: every open stream breaks with a connection error and never claims success (no
//! `end` event unless every token came with it); new connections are refused while it is down;
//! after the restart the catalog, session budgets and every artifact acknowledged with 201 are
//! intact, and no artifact visible in the listing is torn (each one's bytes hash to its id).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{json, Value};

use crate::{poll_until, sha256_id, task, wait_until, Api, Ctx, Outcome, StreamEnd, Sut};

/// What the store must still hold after each restart.
#[derive(Default)]
struct Expected {
    /// Catalog id → its persistent fields (`ref`, `digest`, `state`, `last_verified`).
    models: BTreeMap<String, Value>,
    /// Artifact id → sha256 of the content sent.
    artifacts: BTreeMap<String, String>,
    /// Session id → `spent` and `budget` as last seen.
    sessions: BTreeMap<String, (Value, Value)>,
}

fn persistent(m: &Value) -> Value {
    json!({"ref": m["ref"], "digest": m["digest"], "state": m["state"], "last_verified": m["last_verified"]})
}

fn random_text(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(rng.random_range(b'a'..=b'z')))
        .collect()
}

async fn put_artifact(api: &Api, len: usize, tag: &str) -> anyhow::Result<(u16, String, String)> {
    let content = random_text(len);
    let sent = sha256_id(content.as_bytes());
    let r = api
        .post(
            "/v1/artifacts",
            &json!({"kind": "other", "content": content, "tags": [tag], "metadata": {"chaos": true}}),
        )
        .await?;
    let id = r.json()["id"].as_str().unwrap_or("").to_owned();
    Ok((r.status, id, sent))
}

/// Checks the store against `exp`; returns the number of artifacts listed and checked.
async fn verify(o: &mut Outcome, api: &Api, exp: &Expected, when: &str) -> usize {
    // Catalog.
    match api.get("/v1/catalog/models").await {
        Ok(r) => {
            let list = r.json()["models"].as_array().cloned().unwrap_or_default();
            for (id, fields) in &exp.models {
                let m = list.iter().find(|m| m["id"] == id.as_str());
                o.check(m.map(persistent) == Some(fields.clone()), || {
                    format!(
                        "{when}: catalog model {id} missing or changed: {m:?}, expected {fields}"
                    )
                });
            }
        }
        Err(e) => o.fail(format!("{when}: GET /v1/catalog/models failed: {e}")),
    }
    // Sessions and budgets.
    for (sid, (spent, budget)) in &exp.sessions {
        match api.get(&format!("/v1/sessions/{sid}")).await {
            Ok(r) => {
                let v = r.json();
                o.check(
                    r.status == 200 && &v["spent"] == spent && &v["budget"] == budget,
                    || {
                        format!(
                            "{when}: session {sid} budget changed: {} {}",
                            r.status, r.text
                        )
                    },
                );
            }
            Err(e) => o.fail(format!("{when}: GET session {sid}: {e}")),
        }
    }
    // Every acknowledged artifact, byte for byte.
    for (id, sent) in &exp.artifacts {
        match api.get(&format!("/v1/artifacts/{id}/raw")).await {
            Ok(r) => {
                o.check(
                    r.status == 200 && &sha256_id(r.text.as_bytes()) == sent,
                    || {
                        format!(
                            "{when}: acknowledged artifact {id} lost or changed ({})",
                            r.status
                        )
                    },
                );
            }
            Err(e) => o.fail(format!("{when}: GET artifact {id}: {e}")),
        }
    }
    // Nothing torn is visible: whatever is listed reads back whole.
    let mut checked = 0;
    match api.get("/v1/artifacts?limit=10000").await {
        Ok(r) => {
            let list = r.json()["artifacts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            o.check(r.status == 200, || {
                format!("{when}: listing answered {}", r.status)
            });
            for a in list {
                let id = a["id"].as_str().unwrap_or("").to_owned();
                match api.get(&format!("/v1/artifacts/{id}/raw")).await {
                    Ok(raw) => {
                        checked += 1;
                        let bytes = raw.text.as_bytes();
                        o.check(
                            raw.status == 200
                                && sha256_id(bytes) == id
                                && a["size"].as_u64() == Some(bytes.len() as u64),
                            || format!("{when}: torn artifact {id}: status {}, {} bytes, listed size {}", raw.status, bytes.len(), a["size"]),
                        );
                    }
                    Err(e) => o.fail(format!("{when}: GET listed artifact {id}: {e}")),
                }
            }
        }
        Err(e) => o.fail(format!("{when}: GET /v1/artifacts: {e}")),
    }
    checked
}

async fn setup(o: &mut Outcome, ctx: &Ctx, api: &Api, exp: &mut Expected) {
    for i in 0..3 {
        let id = format!("chaos-model-{i}");
        let r = api
            .post(
                "/v1/catalog/models",
                &json!({"id": id, "ref": ctx.engine.model.display().to_string()}),
            )
            .await;
        match r {
            Ok(r) if r.status == 201 => {}
            Ok(r) => o.fail(format!("register {id}: {} {}", r.status, r.text)),
            Err(e) => o.fail(format!("register {id}: {e}")),
        }
    }
    // One verified: its digest is computed and stored.
    if let Ok(r) = api
        .post("/v1/catalog/models/chaos-model-0/verify", &json!({}))
        .await
    {
        o.check(r.status == 200, || {
            format!("verify: {} {}", r.status, r.text)
        });
    }
    if let Ok(r) = api.get("/v1/catalog/models").await {
        for m in r.json()["models"].as_array().cloned().unwrap_or_default() {
            if let Some(id) = m["id"].as_str() {
                exp.models.insert(id.to_owned(), persistent(&m));
            }
        }
    }
    for (i, len) in [10usize, 1_000, 100_000, 1_000_000].into_iter().enumerate() {
        match put_artifact(api, len, &format!("setup-{i}")).await {
            Ok((201, id, sent)) => {
                o.check(id == sent, || {
                    format!("artifact id {id} is not the content's sha256 {sent}")
                });
                exp.artifacts.insert(id, sent);
            }
            Ok((s, _, _)) => o.fail(format!("setup artifact {i}: {s}")),
            Err(e) => o.fail(format!("setup artifact {i}: {e}")),
        }
    }
    // A session with a budget that has spent some of it.
    let mut t = task("budgeted-1", 24, 5);
    t["session_id"] = json!("chaos-session");
    t["budget"] = json!({"tokens": 100000, "cost": 1000.0});
    match api.submit(&t).await {
        Ok(r) if r.status == 202 => {
            let s = api
                .follow("budgeted-1", Duration::from_secs(60), None)
                .await;
            o.check(s.terminal_name() == "end", || {
                format!("budgeted task: {}", s.summary())
            });
        }
        Ok(r) => o.fail(format!("budgeted task: {} {}", r.status, r.text)),
        Err(e) => o.fail(format!("budgeted task: {e}")),
    }
    let charged = poll_until(Duration::from_secs(10), || async {
        let v = api.get("/v1/sessions/chaos-session").await.ok()?.json();
        (v["spent"]["tokens"].as_u64().unwrap_or(0) > 0).then_some(v)
    })
    .await;
    if let Some(last) = charged {
        exp.sessions.insert(
            "chaos-session".into(),
            (last["spent"].clone(), last["budget"].clone()),
        );
    } else {
        o.fail("the budgeted session was never charged");
    }
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("daemon crash");
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("data");
    let config = ctx.config(
        "queue: { capacity: 64 }\n",
        &[ctx.pool("tiny", ctx.profile.crash_streams as u32, 4096)],
    );
    let start = |n: usize| -> Sut {
        let mut opts = ctx.options(config.clone());
        opts.data_dir = Some(data_dir.clone());
        ctx.start(&format!("daemon-crash-{n}"), opts)
    };
    let mut exp = Expected::default();
    let (mut broken, mut eof_no_terminal, mut false_success, mut hung) = (0, 0, 0, 0);
    let (mut acked_during_load, mut failed_uploads, mut refused) = (0usize, 0usize, 0usize);
    let mut listed = 0;
    let mut restart_ms = Vec::new();
    let mut ended_ms = Vec::new();
    let mut recovery = Vec::new();
    let cycles = ctx.profile.crash_cycles;
    for cycle in 0..=cycles {
        let t = Instant::now();
        let mut sut = start(cycle);
        if cycle > 0 {
            restart_ms.push(t.elapsed().as_millis() as u64);
        }
        let api = sut.api();
        if cycle == 0 {
            setup(&mut o, &ctx, &api, &mut exp).await;
        } else {
            listed = verify(&mut o, &api, &exp, &format!("after restart {cycle}")).await;
            let swept = sut
                .logs()
                .lines()
                .find(|l| l.contains("store opened"))
                .map(|l| {
                    let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                    format!(
                        "temp files swept {}, orphans swept {}",
                        v["fields"]["swept_temp_files"], v["fields"]["swept_orphans"]
                    )
                })
                .unwrap_or_else(|| "no `store opened` line".into());
            recovery.push(swept);
        }
        if cycle == cycles {
            // The last daemon just serves: a task runs to its end.
            let ok = match api.submit(&task("after-crash", 16, 1)).await {
                Ok(r) if r.status == 202 => {
                    api.follow("after-crash", Duration::from_secs(60), None)
                        .await
                        .terminal_name()
                        == "end"
                }
                _ => false,
            };
            o.check(ok, || {
                "a task after the last restart did not complete".into()
            });
            drop(sut);
            break;
        }
        // Load: long streams and artifact uploads.
        let mut readers = Vec::new();
        let mut progress = Vec::new();
        for i in 0..ctx.profile.crash_streams {
            let id = format!("c{cycle}-s{i}");
            match api.submit(&task(&id, 4000, i as u64)).await {
                Ok(r) if r.status == 202 => {}
                Ok(r) => o.fail(format!("load task {id}: {} {}", r.status, r.text)),
                Err(e) => o.fail(format!("load task {id}: {e}")),
            }
            let (tx, rx) = tokio::sync::watch::channel(0u64);
            progress.push(rx);
            let api = api.clone();
            readers.push(tokio::spawn(async move {
                api.follow(&id, Duration::from_secs(300), Some(tx)).await
            }));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
        let uploads_done = Arc::new(AtomicUsize::new(0));
        let mut uploaders = Vec::new();
        for u in 0..2 {
            let (api, stop, acked, done) = (
                api.clone(),
                stop.clone(),
                acked.clone(),
                uploads_done.clone(),
            );
            uploaders.push(tokio::spawn(async move {
                let mut failed = 0usize;
                let mut n = 0;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let len = if n % 2 == 0 { 2_000_000 } else { 300_000 };
                    match put_artifact(&api, len, &format!("load-{u}")).await {
                        Ok((201, id, sent)) => {
                            acked.lock().unwrap().push((id, sent));
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(_) | Err(_) => failed += 1,
                    }
                }
                failed
            }));
        }
        let warm = wait_until(Duration::from_secs(60), || async {
            progress.iter().all(|p| *p.borrow() >= 3) && uploads_done.load(Ordering::SeqCst) >= 2
        })
        .await;
        o.check(warm, || format!("cycle {cycle}: load never got going"));
        // Land the kill at a random point of the uploads.
        let pause = rand::rng().random_range(0..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        let base = sut.base();
        sut.kill9();
        let killed = Instant::now();
        // Streams: broken, never a success claim.
        for r in readers {
            let s = match tokio::time::timeout(Duration::from_secs(15), r).await {
                Ok(Ok(s)) => s,
                _ => {
                    hung += 1;
                    o.fail(format!(
                        "cycle {cycle}: a stream did not end within 15 s of the kill"
                    ));
                    continue;
                }
            };
            if let Some(end) = s.events.iter().find(|e| e.event == "end") {
                // Only a task that really finished may say so, with every token.
                if end.json()["tokens_out"].as_u64() != Some(s.tokens) {
                    false_success += 1;
                    o.fail(format!(
                        "cycle {cycle}: `end` without all tokens: {}",
                        s.summary()
                    ));
                }
            }
            match &s.end {
                StreamEnd::Broken(_) => broken += 1,
                StreamEnd::Eof if s.terminal().is_none() => {
                    eof_no_terminal += 1;
                    o.fail(format!(
                        "cycle {cycle}: stream closed cleanly without a terminal event (looks complete): {}",
                        s.summary()
                    ));
                }
                StreamEnd::TimedOut => {
                    hung += 1;
                    o.fail(format!("cycle {cycle}: stream hung: {}", s.summary()));
                }
                _ => {}
            }
        }
        let streams_ended_ms = killed.elapsed().as_millis();
        stop.store(true, Ordering::SeqCst);
        for u in uploaders {
            failed_uploads += u.await.unwrap_or(0);
        }
        let acked_now: Vec<(String, String)> = acked.lock().unwrap().drain(..).collect();
        acked_during_load += acked_now.len();
        for (id, sent) in acked_now {
            o.check(id == sent, || {
                format!("artifact id {id} is not its content's sha256")
            });
            exp.artifacts.insert(id, sent);
        }
        // While it is down: a clean connection error.
        let dead = Api::new(&base, Some(ctx.token.clone()), ctx.audit.clone());
        match dead.get("/health").await {
            Err(e)
                if e.downcast_ref::<reqwest::Error>()
                    .is_some_and(|e| e.is_connect()) =>
            {
                refused += 1
            }
            other => o.fail(format!(
                "cycle {cycle}: request to the dead daemon: {other:?}"
            )),
        }
        ended_ms.push(streams_ended_ms);

        drop(sut);
    }
    o.fig("SIGKILL/restart cycles", cycles);
    o.fig(
        "every open stream ended after the kill within, ms per cycle",
        format!("{ended_ms:?}"),
    );
    recovery.dedup();
    o.fig("store recovery at restart", recovery.join("; "));
    o.fig(
        "streams open at the kill: broken with a connection error / clean EOF without terminal / `end` without all tokens / hung",
        format!("{broken} / {eof_no_terminal} / {false_success} / {hung}"),
    );
    o.fig(
        "requests while down refused at connect",
        format!("{refused} of {cycles}"),
    );
    o.fig(
        "artifacts acknowledged (201) under load / uploads cut by the kill",
        format!("{acked_during_load} / {failed_uploads}"),
    );
    o.fig(
        "after the last restart: catalog models, sessions, acknowledged artifacts intact / listed artifacts read back whole",
        format!(
            "{} models, {} sessions, {} artifacts / {listed} listed, 0 torn (failures list any)",
            exp.models.len(),
            exp.sessions.len(),
            exp.artifacts.len()
        ),
    );
    o.fig("restart to listening+ready, ms", format!("{restart_ms:?}"));
    o
}
