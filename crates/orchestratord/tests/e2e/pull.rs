//! Pulling models (SPEC §11) end to end: the real daemon binary against a local fixture hub
//! that speaks the huggingface_hub layout (`orch_harness::hub`), never a real hub. Resume with
//! `Range` (also across a restart), start over when ranges are ignored, digest verification,
//! quant selection and split GGUFs, the disk check, the outbound policy and its audit log,
//! redirects to another host, shared downloads, cancel, progress, and a pulled model serving a
//! task after a reload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use orch_harness::hub::{sha256_hex, test_bytes, HubFixture};
use orch_harness::{engine, llama_pool, read_sse, Daemon, DaemonOptions};
use serde_json::{json, Value};

use crate::support::bin;

const MIB: usize = 1024 * 1024;

/// A daemon without pools whose hub is `fx`; `config` is extra YAML, `env` extra variables.
fn daemon(
    fx: &HubFixture,
    config: &str,
    env: &[(&str, &str)],
    data_dir: Option<PathBuf>,
) -> Daemon {
    let mut e: Vec<(String, String)> = vec![("HF_ENDPOINT".into(), fx.base.clone())];
    e.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Daemon::start(
        &bin(),
        DaemonOptions {
            config: config.to_owned(),
            env: e,
            data_dir,
            ..Default::default()
        },
    )
}

/// Any request; status and JSON body (Null when not JSON).
async fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = d.client().request(m, format!("{}{path}", d.base));
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let r = rb.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn pull(d: &Daemon, body: Value) -> (u16, Value) {
    call(d, "POST", "/v1/catalog/models", Some(body)).await
}

/// Polls `GET /v1/catalog/models/{id}` until the model is registered (200) or the pull ended
/// without one; logs how long it took.
async fn wait_pull(d: &Daemon, id: &str) -> (u16, Value) {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(300);
    loop {
        let (s, v) = call(d, "GET", &format!("/v1/catalog/models/{id}"), None).await;
        let ended =
            s == 200 || (s == 202 && matches!(v["state"].as_str(), Some("failed" | "canceled")));
        if ended || s >= 400 {
            eprintln!("pull {id}: HTTP {s} after {:?}", t0.elapsed());
            return (s, v);
        }
        assert!(
            Instant::now() < deadline,
            "pull {id} did not end: {v}\nlog:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls the pull until `ok` holds on its job.
async fn wait_job(d: &Daemon, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(120);
    loop {
        let (s, v) = call(d, "GET", &format!("/v1/catalog/models/{id}"), None).await;
        if s == 202 && ok(&v) {
            eprintln!("pull {id}: {what} after {:?}", t0.elapsed());
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "pull {id}: {what} never happened: {s} {v}\nlog:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_until(what: &str, ok: impl Fn() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{what} never happened"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("{what} after {:?}", t0.elapsed());
}

/// Every file under `data_dir/models`.
fn model_files(data_dir: &Path) -> Vec<PathBuf> {
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(&data_dir.join("models"), &mut out);
    out.sort();
    out
}

fn audit(data_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(data_dir.join("audit.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

fn file_sha(p: &Path) -> String {
    format!(
        "sha256:{}",
        sha256_hex(&std::fs::read(p).expect("read pulled file"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_transfer_resumes_with_range_and_registers_the_verified_model() {
    let fx = HubFixture::start().await;
    let bytes = test_bytes(3 * MIB + 12_345, 1);
    let len = bytes.len() as u64;
    let oid = fx.add_file("org/repo", "m-Q4_K_M.gguf", bytes);
    fx.break_once();
    let d = daemon(&fx, "", &[], None);

    let (s, job) = pull(&d, json!({"ref": "hf:org/repo/m-Q4_K_M.gguf"})).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["id"], "m-Q4_K_M", "the id defaults to the file name");
    assert_eq!(job["bytes_total"], len);
    assert_eq!(job["files"][0]["expected_digest"], oid.as_str());

    let (s, m) = wait_pull(&d, "m-Q4_K_M").await;
    assert_eq!(s, 200, "{m}\nlog:\n{}", d.logs());
    assert_eq!(m["state"], "Active");
    assert_eq!(m["digest"], oid.as_str());
    assert_eq!(m["size"], len);
    assert_eq!(m["source"], "hf:org/repo/m-Q4_K_M.gguf");
    let path = PathBuf::from(m["ref"].as_str().unwrap());
    assert!(
        path.starts_with(d.data_dir.join("models")),
        "{}",
        path.display()
    );
    assert_eq!(file_sha(&path), oid, "the file on disk is the hub's");
    assert_eq!(
        model_files(&d.data_dir),
        vec![path.clone()],
        "no .part or .meta left"
    );

    // The first transfer broke half way; the second asked for the rest with Range.
    let gets = fx.file_gets("m-Q4_K_M.gguf");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert_eq!(gets[0].range, None);
    let from: u64 = gets[1]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("the retry sent no Range: {gets:?}"));
    assert!(from > 0 && from <= len / 2, "resumed from {from} of {len}");
    assert_eq!(gets[1].status, 206);

    // Every request passed the policy and is in the audit log (tree listing and the file).
    let lines = audit(&d.data_dir);
    assert!(
        lines
            .iter()
            .all(|l| l["action"] == "model_download" && l["allowed"] == true),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l["url"]
        .as_str()
        .unwrap()
        .contains("/api/models/org/repo/tree/main")));
    assert!(lines.iter().any(|l| l["url"]
        .as_str()
        .unwrap()
        .contains("/org/repo/resolve/main/m-Q4_K_M.gguf")));

    // Pulling it again under another id verifies the file that is there instead of downloading.
    let (s, _) = pull(
        &d,
        json!({"ref": "hf:org/repo/m-Q4_K_M.gguf", "id": "again"}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, m2) = wait_pull(&d, "again").await;
    assert_eq!(s, 200, "{m2}");
    assert_eq!(m2["ref"], m["ref"]);
    assert_eq!(fx.file_gets("m-Q4_K_M.gguf").len(), 2, "no new download");
    // The id is taken now.
    let (s, e) = pull(
        &d,
        json!({"ref": "hf:org/repo/m-Q4_K_M.gguf", "id": "again"}),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("CONFLICT")), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_ignores_range_gets_a_clean_start_over() {
    let fx = HubFixture::start().await;
    let oid = fx.add_file("org/repo", "m.gguf", test_bytes(2 * MIB + 7, 2));
    fx.break_once();
    fx.ignore_range(true);
    let d = daemon(&fx, "", &[], None);
    let (s, _) = pull(&d, json!({"ref": "hf:org/repo/m.gguf"})).await;
    assert_eq!(s, 202);
    let (s, m) = wait_pull(&d, "m").await;
    assert_eq!(s, 200, "{m}\nlog:\n{}", d.logs());
    assert_eq!(file_sha(Path::new(m["ref"].as_str().unwrap())), oid);
    let gets = fx.file_gets("m.gguf");
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].range.is_some(),
        "the retry asked for a range: {gets:?}"
    );
    assert_eq!(gets[1].status, 200, "and got the whole file");
    assert!(
        d.logs().contains("ignored Range"),
        "the start over is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_file_is_resumed_after_a_daemon_restart() {
    let fx = HubFixture::start().await;
    let bytes = test_bytes(4 * MIB, 3);
    let len = bytes.len() as u64;
    let oid = fx.add_file("org/repo", "big.gguf", bytes);
    fx.hold();
    let mut d1 = daemon(&fx, "", &[], None);
    let data_dir = d1.data_dir.clone();
    let (s, _) = pull(&d1, json!({"ref": "hf:org/repo/big.gguf"})).await;
    assert_eq!(s, 202);
    // The fixture holds the body half way: wait until the daemon has those bytes.
    wait_until("the transfer reached the hold point", || fx.held() == 1).await;
    wait_job(&d1, "big", "half the bytes on disk", |j| {
        j["bytes_done"] == len / 2
    })
    .await;
    d1.kill9();
    let part = model_files(&data_dir)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(".part"))
        .expect("a partial file survives the crash");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0, "the partial file has bytes");
    fx.release();

    // A new daemon on the same data dir: the same pull continues from the partial file.
    let d2 = daemon(&fx, "", &[], Some(data_dir.clone()));
    let (s, _) = pull(&d2, json!({"ref": "hf:org/repo/big.gguf"})).await;
    assert_eq!(s, 202);
    let (s, m) = wait_pull(&d2, "big").await;
    assert_eq!(s, 200, "{m}\nlog:\n{}", d2.logs());
    assert_eq!(file_sha(Path::new(m["ref"].as_str().unwrap())), oid);
    let gets = fx.file_gets("big.gguf");
    assert_eq!(
        gets.last().and_then(|g| g.range.clone()),
        Some(format!("bytes={kept}-")),
        "{gets:?}"
    );
    assert!(d2.logs().contains("resuming from the partial file"));

    // A graceful shutdown in the middle of a pull stops it promptly and keeps its partial file.
    fx.add_file("org/repo", "other.gguf", test_bytes(4 * MIB, 33));
    fx.hold();
    let mut d2 = d2;
    let (s, _) = pull(&d2, json!({"ref": "hf:org/repo/other.gguf"})).await;
    assert_eq!(s, 202);
    wait_until("the second transfer reached the hold point", || {
        fx.held() == 1
    })
    .await;
    let t0 = Instant::now();
    let code = d2.terminate(Duration::from_secs(30));
    eprintln!(
        "SIGTERM during a pull: exited {code:?} after {:?}",
        t0.elapsed()
    );
    assert_eq!(code, Some(0));
    assert!(
        model_files(&data_dir)
            .iter()
            .any(|p| p.to_string_lossy().ends_with("other.gguf.part")),
        "the partial file stays for the next pull"
    );
    fx.release();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_digest_leaves_nothing_behind_and_registers_nothing() {
    let fx = HubFixture::start().await;
    let bytes = test_bytes(MIB + 1, 4);
    let truth = format!("sha256:{}", sha256_hex(&bytes));
    let wrong = "ab".repeat(32);
    fx.add_file_with_oid("org/repo", "m.gguf", bytes, &wrong);
    let d = daemon(&fx, "", &[], None);
    let (s, _) = pull(&d, json!({"ref": "hf:org/repo/m.gguf", "id": "bad"})).await;
    assert_eq!(s, 202);
    let (s, job) = wait_pull(&d, "bad").await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["state"], "failed");
    assert_eq!(job["error"]["code"], "DIGEST_MISMATCH");
    let msg = job["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&truth) && msg.contains(&format!("sha256:{wrong}")),
        "{msg}"
    );
    assert_eq!(
        model_files(&d.data_dir),
        Vec::<PathBuf>::new(),
        "no .part, no file"
    );
    let (_, list) = call(&d, "GET", "/v1/catalog/models", None).await;
    assert_eq!(list["models"], json!([]), "{list}");
    assert_eq!(
        list["pulls"][0]["state"], "failed",
        "the failed pull is listed"
    );

    // The digest a user gives wins over lfs.oid: the same file with the right one passes.
    let (s, _) = pull(
        &d,
        json!({"ref": "hf:org/repo/m.gguf", "id": "good", "digest": truth}),
    )
    .await;
    assert_eq!(s, 202);
    let (s, m) = wait_pull(&d, "good").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["digest"], truth.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quants_pick_exactly_one_file_and_split_models_pull_every_part() {
    let fx = HubFixture::start().await;
    fx.add_file("org/repo", "m-Q4_K_M.gguf", test_bytes(1000, 5));
    fx.add_file("org/repo", "m-imat-Q4_K_M.gguf", test_bytes(1000, 6));
    fx.add_file("org/repo", "m-Q5_K_S.gguf", test_bytes(1000, 7));
    let p1 = fx.add_file(
        "org/repo",
        "big-Q8_0-00001-of-00002.gguf",
        test_bytes(300_000, 8),
    );
    let p2 = fx.add_file(
        "org/repo",
        "big-Q8_0-00002-of-00002.gguf",
        test_bytes(200_000, 9),
    );
    fx.page_size(2); // the file list comes in pages, as the hub's does
    let d = daemon(&fx, "", &[], None);

    let (s, e) = pull(&d, json!({"ref": "hf:org/repo:q4_k_m"})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (400, Some("INVALID_PARAMS")),
        "{e}"
    );
    let msg = e["message"].as_str().unwrap();
    assert!(
        msg.contains("m-Q4_K_M.gguf")
            && msg.contains("m-imat-Q4_K_M.gguf")
            && msg.contains("matches 2"),
        "{msg}"
    );

    let (s, e) = pull(&d, json!({"ref": "hf:org/repo:IQ2_XS"})).await;
    assert_eq!(s, 400, "{e}");
    let msg = e["message"].as_str().unwrap();
    for f in ["m-Q5_K_S.gguf", "m-Q4_K_M.gguf", "2 parts"] {
        assert!(
            msg.contains(f),
            "the refusal lists what the repo has ({f}): {msg}"
        );
    }
    let (s, e) = pull(&d, json!({"ref": "hf:org/nope:Q4_K_M"})).await;
    assert_eq!((s, e["code"].as_str()), (404, Some("NOT_FOUND")), "{e}");
    assert!(fx.file_gets(".gguf").is_empty(), "nothing was downloaded");

    let (s, job) = pull(&d, json!({"ref": "hf:org/repo:Q5_K_S", "id": "q5"})).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["files"][0]["path"], "m-Q5_K_S.gguf");
    let (s, _) = wait_pull(&d, "q5").await;
    assert_eq!(s, 200);

    // A split GGUF: every part, the catalog entry names the first.
    let (s, job) = pull(&d, json!({"ref": "hf:org/repo:Q8_0"})).await;
    assert_eq!(s, 202, "{job}");
    assert_eq!(job["files"].as_array().unwrap().len(), 2);
    assert_eq!(job["id"], "big-Q8_0");
    let (s, m) = wait_pull(&d, "big-Q8_0").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["size"], 500_000);
    let first = PathBuf::from(m["ref"].as_str().unwrap());
    assert!(
        first.ends_with("big-Q8_0-00001-of-00002.gguf"),
        "{}",
        first.display()
    );
    assert_eq!(m["digest"], p1.as_str());
    assert_eq!(
        file_sha(&first.with_file_name("big-Q8_0-00002-of-00002.gguf")),
        p2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_before_any_byte_is_written() {
    let fx = HubFixture::start().await;
    fx.add_file("org/repo", "m.gguf", test_bytes(MIB, 10));
    // Free space is injected: 1 MiB + 5% does not fit in 1 MiB.
    let free = MIB.to_string();
    let d = daemon(&fx, "", &[("LLORCH_TEST_FREE_DISK_BYTES", &free)], None);
    let (s, e) = pull(&d, json!({"ref": "hf:org/repo/m.gguf"})).await;
    assert_eq!(
        (s, e["code"].as_str()),
        (413, Some("PAYLOAD_TOO_LARGE")),
        "{e}"
    );
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("disk space") && msg.contains("5%"), "{msg}");
    assert!(fx.file_gets("m.gguf").is_empty(), "no byte was requested");
    assert_eq!(
        model_files(&d.data_dir),
        Vec::<PathBuf>::new(),
        "no partial file"
    );
    let (s, _) = call(&d, "GET", "/v1/catalog/models/m", None).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_downloads_refuses_with_403_and_is_audited() {
    let fx = HubFixture::start().await;
    fx.add_file("org/repo", "m.gguf", test_bytes(1000, 11));
    let d = daemon(
        &fx,
        "policy: { outbound: { no_downloads: true } }\n",
        &[],
        None,
    );
    for r in [
        json!({"ref": "hf:org/repo/m.gguf"}),
        json!({"ref": fx.resolve_url("org/repo", "m.gguf"), "pull": true, "id": "u"}),
    ] {
        let (s, e) = pull(&d, r).await;
        assert_eq!((s, e["code"].as_str()), (403, Some("POLICY_DENIED")), "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("no_downloads"),
            "{e}"
        );
    }
    assert!(
        fx.requests().is_empty(),
        "the hub saw nothing: {:?}",
        fx.requests()
    );
    let lines = audit(&d.data_dir);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines
        .iter()
        .all(|l| l["allowed"] == false && l["rule"] == "no_downloads"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_pass_the_policy_per_hop_and_the_token_stays_with_the_hub() {
    let fx = HubFixture::start().await;
    let oid = fx.add_file("org/repo", "m.gguf", test_bytes(MIB, 12));
    fx.redirect_to_cdn(true);
    let token = "hf_fixture_secret_0123456789";
    let d = daemon(&fx, "", &[("HF_TOKEN", token)], None);
    let (s, _) = pull(&d, json!({"ref": "hf:org/repo/m.gguf"})).await;
    assert_eq!(s, 202);
    let (s, m) = wait_pull(&d, "m").await;
    assert_eq!(s, 200, "{m}\nlog:\n{}", d.logs());
    assert_eq!(m["digest"], oid.as_str());
    let reqs = fx.requests();
    let bearer = format!("Bearer {token}");
    assert!(
        reqs.iter()
            .filter(|r| r.server == "hub")
            .all(|r| r.authorization.as_deref() == Some(bearer.as_str())),
        "{reqs:?}"
    );
    let cdn: Vec<_> = reqs.iter().filter(|r| r.server == "cdn").collect();
    assert_eq!(cdn.len(), 1, "{reqs:?}");
    assert_eq!(
        cdn[0].authorization, None,
        "the token is not sent to another host"
    );
    let lines = audit(&d.data_dir);
    let cdn_host = fx.cdn_base.trim_start_matches("http://");
    let hop = lines
        .iter()
        .find(|l| l["url"].as_str().unwrap().contains(cdn_host))
        .unwrap_or_else(|| panic!("the redirect hop is audited: {lines:?}"));
    assert_eq!(hop["allowed"], true);
    assert!(
        !hop["url"].as_str().unwrap().contains("fixture-signature"),
        "signed URLs are redacted: {hop}"
    );
    assert!(
        !d.logs().contains(token),
        "the token never reaches a log line"
    );
    assert!(!std::fs::read_to_string(d.data_dir.join("audit.jsonl"))
        .unwrap()
        .contains(token));

    // A policy that denies the CDN host stops the pull at that hop.
    let deny = format!("policy: {{ outbound: {{ deny: [\"{cdn_host}\"] }} }}\n");
    let d2 = daemon(&fx, &deny, &[], None);
    let (s, _) = pull(&d2, json!({"ref": "hf:org/repo/m.gguf"})).await;
    assert_eq!(s, 202);
    let (s, job) = wait_pull(&d2, "m").await;
    assert_eq!((s, job["state"].as_str()), (202, Some("failed")), "{job}");
    assert_eq!(job["error"]["code"], "POLICY_DENIED", "{job}");
    let denied: Vec<_> = audit(&d2.data_dir)
        .into_iter()
        .filter(|l| l["allowed"] == false)
        .collect();
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert!(denied[0]["url"].as_str().unwrap().contains(cdn_host));
    assert_eq!(
        fx.requests().iter().filter(|r| r.server == "cdn").count(),
        1,
        "no request reached the denied host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_of_one_file_share_one_download() {
    let fx = HubFixture::start().await;
    let oid = fx.add_file("org/repo", "m.gguf", test_bytes(2 * MIB, 13));
    fx.hold();
    let d = daemon(&fx, "", &[], None);
    let (s, a) = pull(&d, json!({"ref": "hf:org/repo/m.gguf", "id": "a"})).await;
    assert_eq!(s, 202, "{a}");
    wait_until("the first transfer reached the hold point", || {
        fx.held() == 1
    })
    .await;
    let (s, b) = pull(&d, json!({"ref": "hf:org/repo/m.gguf", "id": "b"})).await;
    assert_eq!(s, 202, "{b}");
    assert_eq!(b["files"][0]["shared"], true, "{b}");
    // The same pull posted again is the same job.
    let (s, a2) = pull(&d, json!({"ref": "hf:org/repo/m.gguf", "id": "a"})).await;
    assert_eq!(s, 202);
    assert_eq!(a2["started_ms"], a["started_ms"]);
    // …and another reference under a running id is refused.
    let (s, e) = pull(&d, json!({"ref": "hf:org/repo:Q4", "id": "a"})).await;
    assert_eq!((s, e["code"].as_str()), (409, Some("CONFLICT")), "{e}");
    fx.release();
    for id in ["a", "b"] {
        let (s, m) = wait_pull(&d, id).await;
        assert_eq!(s, 200, "{m}");
        assert_eq!(m["digest"], oid.as_str());
    }
    assert_eq!(
        fx.file_gets("m.gguf").len(),
        1,
        "one download for both: {:?}",
        fx.file_gets("m.gguf")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_can_be_canceled_and_its_partial_file_goes() {
    let fx = HubFixture::start().await;
    let bytes = test_bytes(2 * MIB, 14);
    let len = bytes.len() as u64;
    fx.add_file("org/repo", "m.gguf", bytes);
    fx.hold();
    let d = daemon(&fx, "", &[], None);
    let (s, _) = pull(&d, json!({"ref": "hf:org/repo/m.gguf"})).await;
    assert_eq!(s, 202);
    wait_until("the transfer reached the hold point", || fx.held() == 1).await;
    wait_job(&d, "m", "half the bytes on disk", |j| {
        j["bytes_done"] == len / 2
    })
    .await;
    assert!(model_files(&d.data_dir)
        .iter()
        .any(|p| p.to_string_lossy().ends_with(".part")));

    let (s, job) = call(&d, "DELETE", "/v1/catalog/models/m", None).await;
    assert_eq!((s, job["state"].as_str()), (202, Some("canceled")), "{job}");
    assert_eq!(job["error"]["code"], "CANCELED");
    assert_eq!(
        model_files(&d.data_dir),
        Vec::<PathBuf>::new(),
        "the partial file is deleted"
    );
    let (s, job) = call(&d, "GET", "/v1/catalog/models/m", None).await;
    assert_eq!(
        (s, job["state"].as_str()),
        (202, Some("canceled")),
        "the canceled pull stays visible"
    );
    fx.release();
    let (_, list) = call(&d, "GET", "/v1/catalog/models", None).await;
    assert_eq!(list["models"], json!([]));
    // Deleting again forgets it.
    let (s, _) = call(&d, "DELETE", "/v1/catalog/models/m", None).await;
    assert_eq!(s, 202);
    let (s, _) = call(&d, "GET", "/v1/catalog/models/m", None).await;
    assert_eq!(s, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_pull_shows_bytes_rate_and_eta_and_verifies_the_given_digest() {
    let fx = HubFixture::start().await;
    let oid = fx.add_file("org/repo", "slow.gguf", test_bytes(4 * MIB, 15));
    // 64 chunks of 64 KiB, 40 ms apart: a transfer of a few seconds to watch.
    fx.chunk_delay(Duration::from_millis(40));
    let d = daemon(&fx, "", &[], None);
    let url = fx.resolve_url("org/repo", "slow.gguf");
    let (s, job) = pull(
        &d,
        json!({"ref": url, "pull": true, "id": "slow", "digest": oid}),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let j = wait_job(&d, "slow", "progress with a rate", |j| {
        j["state"] == "downloading"
            && j["bytes_done"].as_u64().unwrap_or(0) > 0
            && j["rate_bytes_per_s"].as_u64().unwrap_or(0) > 0
            && j["eta_ms"].is_u64()
    })
    .await;
    assert_eq!(j["bytes_total"], 4 * MIB as u64, "{j}");
    let (s, m) = wait_pull(&d, "slow").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["source"], url.as_str());
    assert_eq!(m["digest"], oid.as_str());
    assert!(m["ref"].as_str().unwrap().ends_with("/slow.gguf"), "{m}");
    // Without `pull`, a URL is registered as a reference (SPEC §3), nothing downloaded.
    let (s, m) = pull(&d, json!({"ref": url, "id": "as-ref"})).await;
    assert_eq!(s, 201, "{m}");
    assert_eq!(fx.file_gets("slow.gguf").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pulled_model_serves_a_task_after_a_reload() {
    let e = engine();
    let fx = HubFixture::start().await;
    let oid = fx.add_file(
        "test/tiny-GGUF",
        "tiny-Q8_0.gguf",
        std::fs::read(&e.model).expect("read TEST_MODEL"),
    );
    let config = format!(
        "dev: {{ allow_cpu_inference: true }}\nshutdown_grace_s: 2\npools:\n{}",
        llama_pool("tiny", &e, 1, 1, 512)
    );
    let d = daemon(&fx, &config, &[], None);
    let (s, job) = pull(&d, json!({"ref": "hf:test/tiny-GGUF:q8_0"})).await;
    assert_eq!(s, 202, "{job}");
    let (s, m) = wait_pull(&d, "tiny-Q8_0").await;
    assert_eq!(s, 200, "{m}");
    assert_eq!(m["digest"], oid.as_str());

    let t0 = Instant::now();
    let (s, r) = call(
        &d,
        "POST",
        "/v1/pools/tiny/reload",
        Some(json!({"new_model_ref": "tiny-Q8_0"})),
    )
    .await;
    assert_eq!(s, 200, "{r}\nlog:\n{}", d.logs());
    eprintln!("reload onto the pulled model: {:?}", t0.elapsed());
    let (_, m) = call(&d, "GET", "/v1/catalog/models/tiny-Q8_0", None).await;
    assert_eq!(m["served_by"], json!(["tiny"]), "{m}");

    let r = d
        .submit(
            &json!({"task_id": "on-pulled", "model_ref": "tiny-Q8_0", "priority": "interactive",
            "prompt": "Once upon a time", "max_tokens": 4, "seed": 1}),
        )
        .await;
    assert_eq!(r.status(), 202);
    let events = read_sse(
        d.client()
            .get(format!("{}/v1/tasks/on-pulled/stream", d.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let last = events.last().expect("events");
    assert_eq!(last.event, "end", "{events:?}");
}
