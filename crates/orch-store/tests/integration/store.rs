//! Catalog, sessions, budgets, artifacts, durability and backup against real SQLite files.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use orch_store::{
    sha256_digest, ArtifactInput, ArtifactKind, Budget, BudgetError, ModelState, NewModel,
    SessionError, Store, StoreError, StoreOptions,
};
use serde_json::json;

const T0: u64 = 1_700_000_000_000;

/// Every artifact content in a file, as these tests inspect and damage the files; contents
/// kept in rows have their own test.
fn open(dir: &Path) -> Store {
    Store::open(
        dir,
        StoreOptions {
            inline_max_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .expect("open store")
}

fn model(id: &str, reference: &str) -> NewModel {
    NewModel {
        id: id.into(),
        reference: reference.into(),
        digest: None,
        signature: None,
        sbom: None,
        size: None,
        source: None,
    }
}

fn input(content: &[u8], kind: ArtifactKind, tags: &[&str]) -> ArtifactInput {
    ArtifactInput {
        kind,
        content: content.to_vec(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        parent: None,
        metadata: json!({"task_id": "t-1"}),
    }
}

fn artifact_path(dir: &Path, id: &str) -> PathBuf {
    let hex = id.trim_start_matches("sha256:");
    dir.join("artifacts/sha256").join(&hex[..2]).join(&hex[2..])
}

#[test]
fn store_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn open_creates_layout_and_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = open(&dir);
    assert!(dir.join("state.db").is_file());
    assert!(dir.join("artifacts/sha256").is_dir());
    assert!(dir.join("audit.jsonl").is_file());
    assert_eq!(store.open_report().schema_version, 6);
    drop(store);
    let conn = rusqlite::Connection::open(dir.join("state.db")).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 6);
}

#[test]
fn pulled_models_keep_size_and_source_across_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        let mut m = model("pulled", "/data/models/hf/org/repo/m.gguf");
        m.size = Some(17_000_000);
        m.source = Some("hf:org/repo/m.gguf".into());
        let got = store.catalog().register(m, T0).unwrap();
        assert_eq!(got.size, Some(17_000_000));
    }
    let store = open(tmp.path());
    let got = store.catalog().get("pulled").unwrap();
    assert_eq!(got.size, Some(17_000_000));
    assert_eq!(got.source.as_deref(), Some("hf:org/repo/m.gguf"));
    let plain = store
        .catalog()
        .register(model("plain", "/models/p.gguf"), T0)
        .unwrap();
    assert_eq!((plain.size, plain.source), (None, None));
}

#[test]
fn newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(open(tmp.path()));
    {
        let conn = rusqlite::Connection::open(tmp.path().join("state.db")).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
    }
    let err = Store::open(tmp.path(), StoreOptions::default()).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("99"), "{err}");
}

// ---------------------------------------------------------------- catalog

#[test]
fn catalog_crud_and_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let cat = store.catalog();

    let m = cat
        .register(model("qwen2.5-7b:q4", "/models/qwen.gguf"), T0)
        .unwrap();
    assert_eq!(m.state, ModelState::Active);
    assert_eq!(m.created_ms, T0);
    cat.register(model("llama", "https://example.com/llama.gguf"), T0 + 1)
        .unwrap();

    // Duplicate id.
    let err = cat
        .register(model("llama", "/models/other.gguf"), T0)
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");

    // Bad ids, references, digests.
    for bad_id in ["", "has space", "slash/x", "ü", &"x".repeat(129)] {
        let err = cat.register(model(bad_id, "/m.gguf"), T0).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad_id}: {err}");
    }
    for bad_ref in [
        "",
        "relative/path.gguf",
        "ftp://host/x",
        "https://",
        "/a\nb",
    ] {
        let err = cat.register(model("ok-id", bad_ref), T0).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad_ref}: {err}");
    }
    let mut bad_digest = model("ok-id", "/m.gguf");
    bad_digest.digest = Some("md5:abcd".into());
    assert!(matches!(
        cat.register(bad_digest, T0),
        Err(StoreError::Invalid(_))
    ));
    let mut empty_sig = model("ok-id", "/m.gguf");
    empty_sig.signature = Some("  ".into());
    assert!(matches!(
        cat.register(empty_sig, T0),
        Err(StoreError::Invalid(_))
    ));

    // Bare hex digest is normalized.
    let mut bare = model("bare", "/m.gguf");
    bare.digest = Some("AB".repeat(32));
    let got = cat.register(bare, T0).unwrap();
    assert_eq!(
        got.digest.as_deref(),
        Some(format!("sha256:{}", "ab".repeat(32)).as_str())
    );

    let ids: Vec<_> = cat.list().unwrap().into_iter().map(|m| m.id).collect();
    assert_eq!(ids, ["bare", "llama", "qwen2.5-7b:q4"]);
    assert!(cat.get("llama").unwrap().is_remote());

    // State flow.
    let retired = cat.set_state("llama", ModelState::Retired, T0 + 5).unwrap();
    assert_eq!(retired.state, ModelState::Retired);
    assert_eq!(retired.updated_ms, T0 + 5);
    assert_eq!(retired.created_ms, T0 + 1);
    assert_eq!(
        cat.set_state("llama", ModelState::Active, T0 + 6)
            .unwrap()
            .state,
        ModelState::Active
    );
    assert!(matches!(
        ModelState::from_str("Deprecated"),
        Err(StoreError::Invalid(_))
    ));
    assert_eq!(
        ModelState::from_str("retired").unwrap(),
        ModelState::Retired
    );
    assert!(serde_json::from_str::<ModelState>("\"Deprecated\"").is_err());

    // Unknown ids.
    for err in [
        cat.get("nope").unwrap_err(),
        cat.set_state("nope", ModelState::Retired, T0).unwrap_err(),
        cat.delete("nope").unwrap_err(),
        cat.verify("nope", T0).unwrap_err(),
    ] {
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
        assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    }

    cat.delete("llama").unwrap();
    assert!(matches!(cat.get("llama"), Err(StoreError::NotFound { .. })));
}

#[test]
fn catalog_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(&tmp.path().join("data"));
    let cat = store.catalog();
    let file = tmp.path().join("model.gguf");
    let content = b"GGUF fake model bytes".repeat(100_000);
    fs::write(&file, &content).unwrap();
    let digest = sha256_digest(&content);
    let path = file.to_str().unwrap();

    // Matching digest, no signature/SBOM → ok with warnings.
    let mut good = model("good", path);
    good.digest = Some(digest.clone());
    cat.register(good, T0).unwrap();
    let r = cat.verify("good", T0 + 10).unwrap();
    assert!(r.ok);
    assert_eq!(r.computed_digest, digest);
    assert_eq!(r.size, content.len() as u64);
    assert_eq!(r.warnings.len(), 2, "{:?}", r.warnings);
    assert!(r.warnings.iter().any(|w| w.contains("signature")));
    assert!(r.warnings.iter().any(|w| w.contains("SBOM")));
    let lv = cat.get("good").unwrap().last_verified.unwrap();
    assert!(lv.ok);
    assert_eq!(lv.at_ms, T0 + 10);

    // With signature and SBOM, no warnings; file:// works too.
    let mut signed = model("signed", &format!("file://{path}"));
    signed.digest = Some(digest.clone());
    signed.signature = Some("-----BEGIN SIGNATURE-----\nabc\n-----END SIGNATURE-----".into());
    signed.sbom = Some("{\"spdxVersion\":\"SPDX-2.3\"}".into());
    cat.register(signed, T0).unwrap();
    let r = cat.verify("signed", T0).unwrap();
    assert!(r.ok && r.warnings.is_empty(), "{r:?}");

    // Wrong digest → ok = false, recorded.
    let mut bad = model("bad", path);
    bad.digest = Some(format!("sha256:{}", "0".repeat(64)));
    cat.register(bad, T0).unwrap();
    let r = cat.verify("bad", T0).unwrap();
    assert!(!r.ok);
    assert_eq!(r.computed_digest, digest);
    assert!(!cat.get("bad").unwrap().last_verified.unwrap().ok);

    // No digest → ok with a warning about it.
    cat.register(model("nodigest", path), T0).unwrap();
    let r = cat.verify("nodigest", T0).unwrap();
    assert!(r.ok);
    assert!(r.warnings.iter().any(|w| w.contains("no digest")));

    // Missing file → NotFound naming the path.
    let missing = tmp.path().join("missing.gguf");
    cat.register(model("missing", missing.to_str().unwrap()), T0)
        .unwrap();
    let err = cat.verify("missing", T0).unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("missing.gguf"), "{err}");

    // URL → only local paths, secrets in the URL not echoed.
    cat.register(
        model("remote", "https://hf.example/m.gguf?token=hf_SECRETSECRET"),
        T0,
    )
    .unwrap();
    let err = cat.verify("remote", T0).unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("only local paths"), "{msg}");
    assert!(!msg.contains("hf_SECRETSECRET"), "{msg}");

    // A directory is refused (the model's state, not the request: a conflict).
    cat.register(model("dir", tmp.path().to_str().unwrap()), T0)
        .unwrap();
    assert!(matches!(
        cat.verify("dir", T0),
        Err(StoreError::Conflict(_))
    ));
}

// ---------------------------------------------------------------- sessions

#[test]
fn session_turns_and_ttl() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let s = store.sessions();
    let ttl = 10_000;

    let first = s.touch("sess-1", T0, ttl, 3).unwrap();
    assert_eq!((first.turns, first.max_turns, first.ttl_ms), (1, 3, ttl));
    assert_eq!(s.touch("sess-1", T0 + 100, ttl, 3).unwrap().turns, 2);
    let third = s.touch("sess-1", T0 + 200, 99, 99).unwrap();
    assert_eq!((third.turns, third.max_turns, third.ttl_ms), (3, 3, ttl));
    match s.touch("sess-1", T0 + 300, ttl, 3) {
        Err(SessionError::TurnsExhausted { id, max_turns }) => {
            assert_eq!((id.as_str(), max_turns), ("sess-1", 3))
        }
        other => panic!("expected TurnsExhausted, got {other:?}"),
    }
    // Still readable after exhaustion; TTL slides from the last successful turn.
    let got = s.get("sess-1", T0 + 300).unwrap();
    assert_eq!(got.turns, 3);
    assert_eq!(got.ttl_ms_remaining(T0 + 300), ttl - 100);
    // A refunded turn (the queue refused its task) can be used again.
    assert_eq!(s.refund_turn("sess-1").unwrap().turns, 2);
    assert_eq!(s.touch("sess-1", T0 + 200, ttl, 3).unwrap().turns, 3);
    assert!(matches!(
        s.refund_turn("nope"),
        Err(StoreError::NotFound { .. })
    ));

    // Expiry: get hides it, touch reports Expired with the session and removes it.
    assert!(matches!(
        s.get("sess-1", T0 + 200 + ttl),
        Err(StoreError::NotFound { .. })
    ));
    match s.touch("sess-1", T0 + 200 + ttl + 5, ttl, 3) {
        Err(SessionError::Expired {
            session,
            expired_ms_ago,
        }) => {
            assert_eq!(session.id, "sess-1");
            assert_eq!(expired_ms_ago, 5);
        }
        other => panic!("expected Expired, got {other:?}"),
    }
    assert!(s.list().unwrap().is_empty());
    // Next touch starts over.
    assert_eq!(s.touch("sess-1", T0 + 50_000, ttl, 3).unwrap().turns, 1);

    // Bad inputs.
    assert!(matches!(
        s.touch("bad id", T0, ttl, 3),
        Err(SessionError::Store(StoreError::Invalid(_)))
    ));
    assert!(matches!(
        s.touch("ok", T0, 0, 3),
        Err(SessionError::Store(StoreError::Invalid(_)))
    ));
    assert!(matches!(
        s.touch("ok", T0, ttl, 0),
        Err(SessionError::Store(StoreError::Invalid(_)))
    ));
    assert!(matches!(
        s.get("unknown", T0),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.evict("unknown"),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_pin("unknown", Some("r0"), Some(1)),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.add_kv_bytes("unknown", 1),
        Err(StoreError::NotFound { .. })
    ));
}

#[test]
fn session_refresh_restarts_the_idle_clock() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let s = store.sessions();
    s.touch("r", T0, 1_000, 8).unwrap();
    // A long task ends at T0+1500, past the TTL but before anyone removed the session.
    let r = s.refresh("r", T0 + 1_500).unwrap();
    assert_eq!((r.last_used_ms, r.turns), (T0 + 1_500, 1));
    assert_eq!(
        s.get("r", T0 + 2_000).unwrap().ttl_ms_remaining(T0 + 2_000),
        500
    );
    // Never backwards.
    assert_eq!(s.refresh("r", T0).unwrap().last_used_ms, T0 + 1_500);
    assert!(s.expire(T0 + 2_000).unwrap().is_empty());
    assert_eq!(s.expire(T0 + 2_500).unwrap().len(), 1);
    assert!(matches!(
        s.refresh("r", T0 + 3_000),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.refresh("bad id", T0),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn session_pin_kv_evict_expire() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let s = store.sessions();
    s.touch("a", T0, 1_000, 8).unwrap();
    s.touch("b", T0 + 500, 1_000, 8).unwrap();
    s.touch("c", T0 + 900, 1_000, 8).unwrap();

    let pinned = s.set_pin("a", Some("pool-0/r1"), Some(3)).ok();
    assert!(
        pinned.is_none(),
        "replica ids follow the id rules ('/' refused)"
    );
    let pinned = s.set_pin("a", Some("pool-0.r1"), Some(3)).unwrap();
    assert_eq!(
        (pinned.replica_id.as_deref(), pinned.slot),
        (Some("pool-0.r1"), Some(3))
    );
    assert_eq!(s.add_kv_bytes("a", 4096).unwrap().kv_bytes, 4096);
    assert_eq!(s.add_kv_bytes("a", 1024).unwrap().kv_bytes, 5120);

    // At T0+1500: a (expires T0+1000) and b (T0+1500) are expired, c is not.
    let expired = s.expire(T0 + 1_500).unwrap();
    let ids: Vec<_> = expired.iter().map(|x| x.id.as_str()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(expired[0].slot, Some(3), "expired sessions carry their pin");
    assert_eq!(expired[0].kv_bytes, 5120);
    assert!(s.expire(T0 + 1_500).unwrap().is_empty());

    let evicted = s.evict("c").unwrap();
    assert_eq!(evicted.id, "c");
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn budgets_enforced_and_persisted() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = open(tmp.path());
        let s = store.sessions();
        s.touch("b1", T0, 600_000, 8).unwrap();
        // No budget: always passes, unlimited.
        let r = s.check_budget("b1", 1_000_000).unwrap();
        assert_eq!((r.tokens, r.time_ms, r.cost), (None, None, None));

        s.set_budget(
            "b1",
            Some(Budget {
                tokens: Some(1000),
                time_ms: Some(60_000),
                cost: Some(1.5),
            }),
        )
        .unwrap();
        assert_eq!(s.check_budget("b1", 1000).unwrap().tokens, Some(1000));
        let after = s.charge("b1", 900, 10_000, 0.5).unwrap();
        assert_eq!(after.spent.tokens, 900);
        let rem = after.budget_remaining().unwrap();
        assert_eq!(
            (rem.tokens, rem.time_ms, rem.cost),
            (Some(100), Some(50_000), Some(1.0))
        );
        match s.check_budget("b1", 101) {
            Err(BudgetError::Exceeded { remaining, reason }) => {
                assert_eq!(remaining.tokens, Some(100));
                assert!(reason.contains("tokens"), "{reason}");
            }
            other => panic!("expected Exceeded, got {other:?}"),
        }
        assert_eq!(s.check_budget("b1", 100).unwrap().tokens, Some(100));

        // Bad charges / budgets.
        assert!(matches!(
            s.charge("b1", 0, 0, f64::NAN),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.charge("b1", 0, 0, -1.0),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.set_budget(
                "b1",
                Some(Budget {
                    cost: Some(f64::INFINITY),
                    ..Budget::default()
                })
            ),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(
            s.charge("unknown", 1, 1, 0.0),
            Err(StoreError::NotFound { .. })
        ));
        assert!(matches!(
            s.check_budget("unknown", 1),
            Err(BudgetError::Store(StoreError::NotFound { .. }))
        ));

        // Time and cost limits.
        s.touch("b2", T0, 600_000, 8).unwrap();
        s.set_budget(
            "b2",
            Some(Budget {
                time_ms: Some(100),
                ..Budget::default()
            }),
        )
        .unwrap();
        s.charge("b2", 5, 100, 0.0).unwrap();
        assert!(matches!(
            s.check_budget("b2", 0),
            Err(BudgetError::Exceeded { .. })
        ));
        s.touch("b3", T0, 600_000, 8).unwrap();
        s.set_budget(
            "b3",
            Some(Budget {
                cost: Some(0.25),
                ..Budget::default()
            }),
        )
        .unwrap();
        s.charge("b3", 5, 1, 0.25).unwrap();
        match s.check_budget("b3", 0) {
            Err(BudgetError::Exceeded { remaining, .. }) => {
                assert_eq!(remaining.cost, Some(0.0))
            }
            other => panic!("expected Exceeded, got {other:?}"),
        }
    }
    // Reopen: budgets and spend survived.
    let store = open(tmp.path());
    let s = store.sessions();
    let b1 = s.get("b1", T0 + 1).unwrap();
    assert_eq!(b1.spent.tokens, 900);
    assert_eq!(b1.spent.time_ms, 10_000);
    assert_eq!(b1.spent.cost, 0.5);
    assert_eq!(b1.budget.unwrap().tokens, Some(1000));
    assert!(matches!(
        s.check_budget("b1", 101),
        Err(BudgetError::Exceeded { .. })
    ));
    assert!(matches!(
        s.check_budget("b2", 0),
        Err(BudgetError::Exceeded { .. })
    ));
    // Clearing the budget lifts enforcement but keeps spend.
    let cleared = s.set_budget("b1", None).unwrap();
    assert!(cleared.budget.is_none());
    assert_eq!(cleared.spent.tokens, 900);
    assert!(s.check_budget("b1", 10_000).is_ok());
}

// ---------------------------------------------------------------- artifacts

#[test]
fn artifact_put_get_list_and_idempotence() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let a = store.artifacts();

    let m1 = a
        .put(input(b"plan one", ArtifactKind::Plan, &["t1", "x"]), T0)
        .unwrap();
    assert_eq!(m1.id, sha256_digest(b"plan one"));
    assert_eq!(m1.digest, m1.id);
    assert_eq!(m1.size, 8);
    assert_eq!(m1.tags, ["t1", "x"]);
    assert!(artifact_path(tmp.path(), &m1.id).is_file());
    assert_eq!(a.read(&m1.id).unwrap(), b"plan one");
    assert_eq!(a.get_meta(&m1.id).unwrap(), m1);

    // Same content: same id, tags merged, first kind/metadata/created kept.
    let mut again = input(b"plan one", ArtifactKind::Other, &["x", "y"]);
    again.metadata = json!({"other": true});
    let m1b = a.put(again, T0 + 50).unwrap();
    assert_eq!(m1b.id, m1.id);
    assert_eq!(m1b.kind, ArtifactKind::Plan);
    assert_eq!(m1b.created_ms, T0);
    assert_eq!(m1b.tags, ["t1", "x", "y"]);
    assert_eq!(m1b.metadata, json!({"task_id": "t-1"}));

    let mut child = input(b"a diff", ArtifactKind::Diff, &["x"]);
    child.parent = Some(m1.id.clone());
    child.metadata = serde_json::Value::Null;
    let m2 = a.put(child, T0 + 10).unwrap();
    assert_eq!(m2.parent.as_deref(), Some(m1.id.as_str()));
    assert_eq!(m2.metadata, json!({}));
    let m3 = a
        .put(input(b"", ArtifactKind::Transcript, &[]), T0 + 20)
        .unwrap();
    assert_eq!(a.read(&m3.id).unwrap(), b"");

    let ids = |v: Vec<orch_store::ArtifactMeta>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(
        ids(a.list(None, None, 100).unwrap()),
        [m3.id.clone(), m2.id.clone(), m1.id.clone()]
    );
    assert_eq!(
        ids(a.list(Some("x"), None, 100).unwrap()),
        [m2.id.clone(), m1.id.clone()]
    );
    assert_eq!(
        ids(a.list(Some("x"), Some(ArtifactKind::Plan), 100).unwrap()),
        [m1.id.as_str()]
    );
    assert_eq!(ids(a.list(None, None, 1).unwrap()), [m3.id.as_str()]);
    assert!(a.list(Some("nope"), None, 10).unwrap().is_empty());
    assert_eq!(
        ArtifactKind::from_str("TRANSCRIPT").unwrap(),
        ArtifactKind::Transcript
    );
    assert!(matches!(
        ArtifactKind::from_str("binary"),
        Err(StoreError::Invalid(_))
    ));
}

#[test]
fn artifact_bad_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(
        tmp.path(),
        StoreOptions {
            max_artifact_bytes: 1024,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    let a = store.artifacts();

    let err = a
        .put(input(&[7u8; 1025], ArtifactKind::Other, &[]), T0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::TooLarge {
                size: 1025,
                limit: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(err, StoreError::TooLarge { .. }), "{err}");
    assert!(a
        .put(input(&[7u8; 1024], ArtifactKind::Other, &[]), T0)
        .is_ok());

    let mut bad_meta = input(b"x", ArtifactKind::Other, &[]);
    bad_meta.metadata = json!([1, 2]);
    assert!(matches!(a.put(bad_meta, T0), Err(StoreError::Invalid(_))));
    let mut big_meta = input(b"x", ArtifactKind::Other, &[]);
    big_meta.metadata = json!({"blob": "m".repeat(70_000)});
    assert!(matches!(
        a.put(big_meta, T0),
        Err(StoreError::TooLarge { .. })
    ));
    let mut bad_parent = input(b"x", ArtifactKind::Other, &[]);
    bad_parent.parent = Some("sha256:xyz".into());
    assert!(matches!(a.put(bad_parent, T0), Err(StoreError::Invalid(_))));
    for tags in [vec![""], vec!["a\nb"]] {
        assert!(matches!(
            a.put(input(b"x", ArtifactKind::Other, &tags), T0),
            Err(StoreError::Invalid(_))
        ));
    }
    let many: Vec<String> = (0..65).map(|i| format!("t{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert!(matches!(
        a.put(input(b"x", ArtifactKind::Other, &many), T0),
        Err(StoreError::Invalid(_))
    ));

    for bad in [
        "",
        "abc",
        "sha256:",
        "sha256:../../etc/passwd",
        &format!("sha256:{}", "A".repeat(64)),
    ] {
        assert!(
            matches!(a.get_meta(bad), Err(StoreError::Invalid(_))),
            "{bad}"
        );
        assert!(matches!(a.read(bad), Err(StoreError::Invalid(_))), "{bad}");
    }
    let unknown = format!("sha256:{}", "0".repeat(64));
    assert!(matches!(
        a.get_meta(&unknown),
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(a.read(&unknown), Err(StoreError::NotFound { .. })));
    // Nothing invalid left rows or files behind.
    assert_eq!(a.list(None, None, 100).unwrap().len(), 1);
}

#[test]
fn small_contents_live_in_their_row_large_ones_in_files() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        inline_max_bytes: 64,
        ..StoreOptions::default()
    };
    let store = Store::open(tmp.path(), opts.clone()).unwrap();
    let a = store.artifacts();
    let small = a
        .put(
            input(b"a short transcript", ArtifactKind::Transcript, &["s"]),
            T0,
        )
        .unwrap();
    let big_content = b"x".repeat(65);
    let big = a
        .put(input(&big_content, ArtifactKind::Transcript, &[]), T0 + 1)
        .unwrap();
    assert!(!artifact_path(tmp.path(), &small.id).exists(), "no file");
    assert!(artifact_path(tmp.path(), &big.id).is_file());
    assert_eq!(a.read(&small.id).unwrap(), b"a short transcript");
    assert_eq!(a.read(&big.id).unwrap(), big_content);
    // Idempotent, and listed like any other.
    let again = a
        .put(
            input(b"a short transcript", ArtifactKind::Transcript, &["s"]),
            T0 + 2,
        )
        .unwrap();
    assert_eq!(again, small);
    assert_eq!(a.list(Some("s"), None, 10).unwrap(), vec![small.clone()]);
    // A file-backed row of small content (written by an earlier build) reads from its file;
    // when that file is lost, the next upload repairs the row itself.
    drop(store);
    let files = Store::open(
        tmp.path(),
        StoreOptions {
            inline_max_bytes: 0,
            ..opts.clone()
        },
    )
    .unwrap();
    let old = files
        .artifacts()
        .put(input(b"older", ArtifactKind::Other, &[]), T0 + 3)
        .unwrap();
    drop(files);
    let store = Store::open(tmp.path(), opts).unwrap();
    let a = store.artifacts();
    assert_eq!(a.read(&old.id).unwrap(), b"older");
    fs::remove_file(artifact_path(tmp.path(), &old.id)).unwrap();
    assert!(matches!(a.read(&old.id), Err(StoreError::Corrupt { .. })));
    a.put(input(b"older", ArtifactKind::Other, &[]), T0 + 4)
        .unwrap();
    assert_eq!(a.read(&old.id).unwrap(), b"older");
    // GC deletes rows and files alike; a backup carries both.
    let backup = tmp.path().join("backup");
    let r = store.backup_to(&backup).unwrap();
    assert_eq!(r.artifacts_copied, 3, "{r:?}");
    let g = a.gc(T0 + 10, Some(0), None).unwrap();
    assert_eq!(g.deleted.len(), 3);
    assert!(a.read(&small.id).is_err() && !artifact_path(tmp.path(), &big.id).exists());
    let restored = Store::open(&backup, StoreOptions::default()).unwrap();
    assert_eq!(
        restored.artifacts().read(&small.id).unwrap(),
        b"a short transcript"
    );
    assert_eq!(restored.artifacts().read(&big.id).unwrap(), big_content);
}

#[test]
fn corrupt_artifact_is_detected_and_repaired_by_reupload() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let a = store.artifacts();
    let content = b"transcript bytes that matter".repeat(10);
    let m = a
        .put(input(&content, ArtifactKind::Transcript, &[]), T0)
        .unwrap();
    let path = artifact_path(tmp.path(), &m.id);

    // Truncated.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(10)
        .unwrap();
    let err = a.read(&m.id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        matches!(
            err,
            StoreError::Corrupt { .. } | StoreError::Io { .. } | StoreError::Db { .. }
        ),
        "{err}"
    );

    // Same length, flipped byte.
    let mut flipped = content.clone();
    flipped[3] ^= 0xff;
    fs::write(&path, &flipped).unwrap();
    assert!(matches!(a.read(&m.id), Err(StoreError::Corrupt { .. })));

    // Missing.
    fs::remove_file(&path).unwrap();
    let err = a.read(&m.id).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("missing"), "{err}");

    // Uploading the same content again repairs it.
    fs::write(&path, &flipped).unwrap();
    a.put(input(&content, ArtifactKind::Transcript, &[]), T0 + 1)
        .unwrap();
    assert_eq!(a.read(&m.id).unwrap(), content);
}

#[test]
fn torn_temp_files_and_orphans_are_invisible_and_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let kept;
    let orphan_id = sha256_digest(b"orphan content");
    let shard;
    {
        let store = open(tmp.path());
        kept = store
            .artifacts()
            .put(input(b"kept", ArtifactKind::Summary, &["k"]), T0)
            .unwrap();
        // A torn write: a half-written temp file next to real content.
        let hex = kept.id.trim_start_matches("sha256:").to_string();
        shard = tmp.path().join("artifacts/sha256").join(&hex[..2]);
        let mut f = fs::File::create(shard.join(".tmp-deadbeef")).unwrap();
        f.write_all(b"half of someth").unwrap();
        // An orphan: content renamed into place but the row never written.
        let oh = orphan_id.trim_start_matches("sha256:");
        let odir = tmp.path().join("artifacts/sha256").join(&oh[..2]);
        fs::create_dir_all(&odir).unwrap();
        fs::write(odir.join(&oh[2..]), b"orphan content").unwrap();
        // A stray file with a foreign name is left alone.
        fs::write(shard.join("README"), b"not ours").unwrap();

        let listed = store.artifacts().list(None, None, 100).unwrap();
        assert_eq!(listed.len(), 1, "only the committed artifact is visible");
        assert!(matches!(
            store.artifacts().get_meta(&orphan_id),
            Err(StoreError::NotFound { .. })
        ));
    }
    let store = open(tmp.path());
    let rep = store.open_report();
    assert_eq!((rep.swept_temp_files, rep.swept_orphans), (1, 1));
    assert!(!shard.join(".tmp-deadbeef").exists());
    assert!(!artifact_path(tmp.path(), &orphan_id).exists());
    assert!(shard.join("README").exists());
    assert_eq!(store.artifacts().read(&kept.id).unwrap(), b"kept");
}

#[test]
fn gc_by_age_then_bytes_oldest_first() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path());
    let a = store.artifacts();
    let mut ids = Vec::new();
    for i in 0..6u64 {
        let m = a
            .put(
                input(&[i as u8; 100], ArtifactKind::Trace, &["gc"]),
                T0 + i * 1_000,
            )
            .unwrap();
        ids.push(m.id);
    }
    // Nothing to do.
    let r = a.gc(T0 + 6_000, None, None).unwrap();
    assert!(r.deleted.is_empty());
    assert_eq!((r.remaining_count, r.remaining_bytes), (6, 600));

    // Age: older than 4.5 s at T0+6000 → created before T0+1500 → ids[0], ids[1].
    let r = a.gc(T0 + 6_000, None, Some(4_500)).unwrap();
    assert_eq!(r.deleted, ids[..2]);
    assert_eq!(r.freed_bytes, 200);
    // Bytes: keep at most 250 → delete the oldest two of the remaining four.
    let r = a.gc(T0 + 6_000, Some(250), None).unwrap();
    assert_eq!(r.deleted, ids[2..4]);
    assert_eq!((r.remaining_count, r.remaining_bytes), (2, 200));
    for id in &ids[..4] {
        assert!(!artifact_path(tmp.path(), id).exists());
        assert!(matches!(a.get_meta(id), Err(StoreError::NotFound { .. })));
    }
    for id in &ids[4..] {
        assert_eq!(a.read(id).unwrap().len(), 100);
    }
    // A deleted artifact can be stored again.
    let again = a
        .put(input(&[0u8; 100], ArtifactKind::Trace, &[]), T0 + 7_000)
        .unwrap();
    assert_eq!(again.id, ids[0]);
    assert_eq!(a.read(&again.id).unwrap(), vec![0u8; 100]);
}

#[test]
fn concurrent_puts_and_gc_stay_consistent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open(tmp.path()));
    let mut handles = Vec::new();
    for t in 0..4u64 {
        let store = Arc::clone(&store);
        handles.push(std::thread::spawn(move || {
            for i in 0..40u64 {
                // Threads share half their contents to race on the same ids.
                let content = format!(
                    "artifact {}",
                    (i % 20) + if i % 2 == 0 { 0 } else { t * 100 }
                );
                store
                    .artifacts()
                    .put(
                        input(content.as_bytes(), ArtifactKind::Other, &[&format!("t{t}")]),
                        T0 + i,
                    )
                    .unwrap();
                if i % 10 == 0 {
                    store.artifacts().gc(T0 + i, Some(500), None).unwrap();
                }
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    for m in store.artifacts().list(None, None, 10_000).unwrap() {
        assert_eq!(sha256_digest(&store.artifacts().read(&m.id).unwrap()), m.id);
    }
}

// ---------------------------------------------------------------- durability and backup

fn populate(store: &Store, model_file: &Path) -> Vec<String> {
    let mut m = model("persisted", model_file.to_str().unwrap());
    m.digest = Some(sha256_digest(b"weights"));
    store.catalog().register(m, T0).unwrap();
    store
        .catalog()
        .set_state("persisted", ModelState::Retired, T0 + 1)
        .unwrap();
    store.catalog().verify("persisted", T0 + 2).unwrap();
    let s = store.sessions();
    s.touch("s1", T0, 600_000, 8).unwrap();
    s.touch("s1", T0 + 10, 600_000, 8).unwrap();
    s.set_pin("s1", Some("r0"), Some(2)).unwrap();
    s.add_kv_bytes("s1", 777).unwrap();
    s.set_budget(
        "s1",
        Some(Budget {
            tokens: Some(500),
            time_ms: None,
            cost: Some(2.0),
        }),
    )
    .unwrap();
    s.charge("s1", 120, 3_000, 0.75).unwrap();
    (0..5)
        .map(|i| {
            store
                .artifacts()
                .put(
                    input(
                        format!("content {i}").as_bytes(),
                        ArtifactKind::Plan,
                        &["p"],
                    ),
                    T0 + i,
                )
                .unwrap()
                .id
        })
        .collect()
}

fn check_populated(store: &Store, ids: &[String]) {
    let m = store.catalog().get("persisted").unwrap();
    assert_eq!(m.state, ModelState::Retired);
    assert_eq!(m.updated_ms, T0 + 1);
    let lv = m.last_verified.unwrap();
    assert!(lv.ok);
    assert_eq!(lv.at_ms, T0 + 2);
    let s = store.sessions().get("s1", T0 + 20).unwrap();
    assert_eq!((s.turns, s.kv_bytes, s.slot), (2, 777, Some(2)));
    assert_eq!(s.replica_id.as_deref(), Some("r0"));
    assert_eq!(
        (s.spent.tokens, s.spent.time_ms, s.spent.cost),
        (120, 3_000, 0.75)
    );
    let rem = s.budget_remaining().unwrap();
    assert_eq!(
        (rem.tokens, rem.time_ms, rem.cost),
        (Some(380), None, Some(1.25))
    );
    let listed = store.artifacts().list(Some("p"), None, 100).unwrap();
    assert_eq!(listed.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            store.artifacts().read(id).unwrap(),
            format!("content {i}").as_bytes()
        );
    }
}

#[test]
fn everything_survives_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let model_file = tmp.path().join("w.gguf");
    fs::write(&model_file, b"weights").unwrap();
    let dir = tmp.path().join("data");
    let ids = populate(&open(&dir), &model_file);
    let store = open(&dir);
    check_populated(&store, &ids);
    assert_eq!(store.open_report().swept_orphans, 0);
}

#[test]
fn backup_is_a_complete_openable_store() {
    let tmp = tempfile::tempdir().unwrap();
    let model_file = tmp.path().join("w.gguf");
    fs::write(&model_file, b"weights").unwrap();
    let store = open(&tmp.path().join("data"));
    let ids = populate(&store, &model_file);
    let policy = orch_store::Policy::new(vec![], vec!["*.bad".into()], false).unwrap();
    policy
        .enforce(store.audit(), "https://x.bad/", "tool_call", T0)
        .unwrap();
    // Corrupt one artifact in the source: the backup reports it and skips the bytes.
    fs::write(artifact_path(&tmp.path().join("data"), &ids[4]), b"garbage").unwrap();

    let dest = tmp.path().join("backup");
    let report = store.backup_to(&dest).unwrap();
    assert_eq!(report.artifacts_copied, 4);
    assert_eq!(report.corrupt, [ids[4].clone()]);
    // The store stays usable while and after backing up.
    store
        .artifacts()
        .put(input(b"after backup", ArtifactKind::Other, &[]), T0)
        .unwrap();

    // A second backup into the same place is refused.
    assert!(matches!(
        store.backup_to(&dest),
        Err(StoreError::Conflict(_))
    ));

    fs::write(
        artifact_path(&tmp.path().join("data"), &ids[4]),
        b"content 4",
    )
    .unwrap();
    let restored = open(&dest);
    assert!(matches!(
        restored.artifacts().read(&ids[4]),
        Err(StoreError::Corrupt { .. })
    ));
    // Repair in the restored copy, then everything checks out.
    restored
        .artifacts()
        .put(input(b"content 4", ArtifactKind::Plan, &["p"]), T0)
        .unwrap();
    check_populated(&restored, &ids);
    assert_eq!(restored.artifacts().list(None, None, 100).unwrap().len(), 5);
    let audit = fs::read_to_string(dest.join("audit.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 1);
}
