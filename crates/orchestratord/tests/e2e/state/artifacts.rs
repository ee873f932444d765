//! Artifacts: create, list, read raw and by URL, bad inputs, and the garbage collector that keeps the store under its byte limit.

use std::time::{Duration, Instant};

use base64::Engine as _;
use orch_harness::DaemonOptions;
use serde_json::{json, Value};

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_roundtrip_listing_url_and_bad_inputs() {
    let d = start_bare(
        "artifacts: { max_artifact_bytes: 4096 }\n",
        DaemonOptions::default(),
    );
    let (s, a, h) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "step 1: profit", "tags": ["b", "a"], "metadata": {"by": "test"}})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    let id = sha256_hex(b"step 1: profit");
    assert_eq!(a["id"], id);
    assert_eq!(a["digest"], id);
    assert_eq!(a["kind"], "plan");
    assert_eq!(a["tags"], json!(["a", "b"]));
    assert_eq!(a["size"], 14);
    let url = a["url"].as_str().unwrap().to_owned();
    assert_eq!(url, format!("{}/v1/artifacts/{id}/raw", d.base));
    assert_eq!(h["location"], url.as_str());

    // Same content, same id; tags merge.
    let (s, a2, _) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "step 1: profit", "tags": ["c"]})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(a2["id"], id);
    assert_eq!(a2["tags"], json!(["a", "b", "c"]));

    // JSON with content, the URL, and ?raw=1 give the bytes.
    let (s, g, _) = call(&d, "GET", &format!("/v1/artifacts/{id}"), None).await;
    assert_eq!(s, 200);
    assert_eq!(g["content"], "step 1: profit");
    assert_eq!(g["encoding"], "utf8");
    assert_eq!(g["metadata"], json!({"by": "test"}));
    let raw = d.client().get(&url).send().await.unwrap();
    assert_eq!(raw.status(), 200);
    assert_eq!(raw.headers()["etag"], format!("\"{id}\"").as_str());
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"step 1: profit");
    let raw = d
        .client()
        .get(format!("{}/v1/artifacts/{id}?raw=1", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), b"step 1: profit");

    // The URL follows the Host the caller used (e.g. an SSH tunnel on the developer box).
    let r = d
        .client()
        .get(format!("{}/v1/artifacts/{id}", d.base))
        .header(reqwest::header::HOST, "devbox.example:18080")
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v["url"],
        format!("http://devbox.example:18080/v1/artifacts/{id}/raw")
    );

    // Binary content round-trips through base64.
    let bin_bytes: Vec<u8> = vec![0, 159, 146, 150, 255, 10];
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin_bytes);
    let (s, b, _) = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "other", "content": b64, "encoding": "base64", "tags": ["bin"]})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let bid = b["id"].as_str().unwrap().to_owned();
    assert_eq!(bid, sha256_hex(&bin_bytes));
    let (_, g, _) = call(&d, "GET", &format!("/v1/artifacts/{bid}"), None).await;
    assert_eq!(g["encoding"], "base64");
    assert_eq!(g["content"], b64);
    let raw = d
        .client()
        .get(b["url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(raw.bytes().await.unwrap().as_ref(), &bin_bytes[..]);

    // Listing by tag and kind.
    let (s, l, _) = call(&d, "GET", "/v1/artifacts?tag=a", None).await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = l["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![id.as_str()]);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts?kind=other", None).await;
    assert_eq!(l["artifacts"][0]["id"], bid);
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 1);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 2);
    let (_, l, _) = call(&d, "GET", "/v1/artifacts?tag=zzz&kind=plan", None).await;
    assert_eq!(l["artifacts"], json!([]));
    assert_err(
        &call(&d, "GET", "/v1/artifacts?kind=bogus", None).await,
        400,
        "INVALID_PARAMS",
    );
    assert_err(
        &call(&d, "GET", "/v1/artifacts?limit=-1", None).await,
        400,
        "INVALID_PARAMS",
    );

    // Bad inputs.
    for body in [
        json!({"kind": "poem", "content": "x"}),
        json!({"kind": "plan"}),
        json!({"kind": "plan", "content": "x", "encoding": "base64"}),
        json!({"kind": "plan", "content": "x", "metadata": "not an object"}),
        json!({"kind": "plan", "content": "x", "parent": "nope"}),
        json!({"kind": "plan", "content": "x", "tags": [""]}),
        json!({"kind": "plan", "content": "x", "extra": 1}),
    ] {
        let r = call(&d, "POST", "/v1/artifacts", Some(body.clone())).await;
        assert_err(&r, 400, "INVALID_PARAMS");
    }
    let r = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "y".repeat(5000)})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");
    // A body far beyond any artifact is refused while reading it.
    let r = call(
        &d,
        "POST",
        "/v1/artifacts",
        Some(json!({"kind": "plan", "content": "z".repeat(3 << 20)})),
    )
    .await;
    assert_err(&r, 413, "PAYLOAD_TOO_LARGE");
    assert_err(
        &call(&d, "GET", "/v1/artifacts/abc", None).await,
        400,
        "INVALID_PARAMS",
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert_err(
        &call(&d, "GET", &format!("/v1/artifacts/{unknown}"), None).await,
        404,
        "NOT_FOUND",
    );
    assert_err(
        &call(&d, "GET", &format!("/v1/artifacts/{unknown}/raw"), None).await,
        404,
        "NOT_FOUND",
    );
    // Nothing was stored by the refused requests.
    let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
    assert_eq!(l["artifacts"].as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_gc_keeps_total_bytes_under_the_limit() {
    let d = start_bare(
        "artifacts: { max_bytes: 2500, max_artifact_bytes: 4096 }\n",
        DaemonOptions::default(),
    );
    let mut ids = Vec::new();
    for i in 0..5 {
        let content = format!("{i}{}", "g".repeat(999));
        let (s, a, _) = call(
            &d,
            "POST",
            "/v1/artifacts",
            Some(json!({"kind": "trace", "content": content})),
        )
        .await;
        assert_eq!(s, 201, "{a}");
        ids.push(a["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, l, _) = call(&d, "GET", "/v1/artifacts", None).await;
        let left: Vec<String> = l["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_owned())
            .collect();
        if left.len() <= 2 {
            // The newest survive; the oldest are gone, also from disk.
            assert!(left.contains(&ids[4]), "{left:?}");
            assert_err(
                &call(&d, "GET", &format!("/v1/artifacts/{}", ids[0]), None).await,
                404,
                "NOT_FOUND",
            );
            let hex = ids[0].trim_start_matches("sha256:");
            let file = d
                .data_dir
                .join("artifacts/sha256")
                .join(&hex[..2])
                .join(&hex[2..]);
            assert!(!file.exists(), "{} still on disk", file.display());
            break;
        }
        assert!(Instant::now() < deadline, "GC did not run: {left:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
