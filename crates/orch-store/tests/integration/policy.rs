//! Outbound policy, audit log and redaction.

use std::fs;

use orch_store::policy::{
    AuditRecord, ACTION_ENGINE_ENDPOINT, ACTION_MODEL_DOWNLOAD, ACTION_TOOL_CALL,
};
use orch_store::{redact_text, redact_url, AuditLog, Policy, Store, StoreError, StoreOptions};
use proptest::prelude::*;

fn pol(allow: &[&str], deny: &[&str], no_downloads: bool) -> Policy {
    Policy::new(
        allow.iter().map(|s| s.to_string()).collect(),
        deny.iter().map(|s| s.to_string()).collect(),
        no_downloads,
    )
    .expect("valid policy")
}

#[test]
fn default_is_permissive() {
    let p = Policy::default();
    let d = p.check("https://huggingface.co/x.gguf", ACTION_MODEL_DOWNLOAD);
    assert!(d.allowed);
    assert_eq!(d.rule, "default_allow");
    let d = pol(&["*"], &[], false).check("http://10.1.2.3:9000/v1", ACTION_TOOL_CALL);
    assert!(d.allowed);
    assert_eq!(d.rule, "allow:*");
}

#[test]
fn host_and_url_patterns() {
    let p = pol(
        &[
            "*.example.com",
            "http://10.0.0.20:8000/*",
            "localhost:8080",
            "https://api.test",
        ],
        &[],
        false,
    );
    let allowed = |u: &str| p.check(u, ACTION_TOOL_CALL).allowed;
    assert!(allowed("https://a.example.com/x"));
    assert!(
        allowed("https://A.B.EXAMPLE.COM./x"),
        "case and trailing dot"
    );
    assert!(
        !allowed("https://example.com/x"),
        "*.x does not cover the apex"
    );
    assert!(
        !allowed("https://evil.com/a.example.com/"),
        "* never crosses into the path"
    );
    assert!(!allowed("https://a.example.com.evil.net/"));
    assert!(
        !allowed("https://good.example.com@evil.net/"),
        "userinfo is not the host"
    );
    assert!(allowed("http://10.0.0.20:8000/v1/completions"));
    assert!(allowed("http://10.0.0.20:8000"));
    assert!(!allowed("http://10.0.0.20:8001/v1"));
    assert!(!allowed("https://10.0.0.20:8000/v1"), "scheme must match");
    assert!(!allowed("http://10.0.0.200:8000/v1"));
    assert!(allowed("http://localhost:8080/health"));
    assert!(!allowed("http://localhost:8081/health"));
    assert!(
        allowed("https://api.test/anything?q=1"),
        "URL pattern without path = origin"
    );
    assert!(
        allowed("https://api.test:443/x"),
        "default port is the same origin"
    );
    assert!(!allowed("https://api.test:8443/x"));
    let d = p.check("https://nope.org/", ACTION_TOOL_CALL);
    assert!(!d.allowed);
    assert_eq!(d.rule, "default_deny");
    assert!(d.reason.contains("allow"), "{}", d.reason);
}

#[test]
fn deny_wins_and_special_rules() {
    let p = pol(&["*"], &["*.evil.com", "http://10.0.0.*/admin/*"], false);
    let d = p.check("https://x.evil.com/model.gguf", ACTION_MODEL_DOWNLOAD);
    assert!(!d.allowed);
    assert_eq!(d.rule, "deny:*.evil.com");
    assert!(
        !p.check("http://10.0.0.9/admin/reset", ACTION_TOOL_CALL)
            .allowed
    );
    assert!(p.check("http://10.0.0.9/public", ACTION_TOOL_CALL).allowed);
    assert!(p.check("https://good.com/x", ACTION_TOOL_CALL).allowed);

    // No downloads: downloads refused, other actions still checked normally.
    let nd = pol(&["*"], &[], true);
    let d = nd.check("https://good.com/m.gguf", ACTION_MODEL_DOWNLOAD);
    assert!(!d.allowed);
    assert_eq!(d.rule, "no_downloads");
    assert!(!nd.check("https://good.com/m", "artifact_download").allowed);
    assert!(
        nd.check("https://good.com/m", ACTION_ENGINE_ENDPOINT)
            .allowed
    );

    // Bad URLs and schemes are refused.
    for (url, rule) in [
        ("not a url", "invalid_url"),
        ("file:///etc/passwd", "scheme"),
        ("ftp://host/x", "scheme"),
    ] {
        let d = p.check(url, ACTION_TOOL_CALL);
        assert!(!d.allowed, "{url}");
        assert_eq!(d.rule, rule, "{url}");
    }
}

#[test]
fn bad_patterns_are_rejected() {
    for bad in [
        "",
        "  ",
        "a b",
        "ftp://x/*",
        "host/path",
        "http://",
        "http://u@h/*",
    ] {
        let err = Policy::new(vec![bad.to_string()], vec![], false).unwrap_err();
        assert!(matches!(err, StoreError::Invalid(_)), "{bad}: {err}");
        assert!(Policy::new(vec![], vec![bad.to_string()], false).is_err());
    }
}

#[test]
fn audit_log_lines_are_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path(), StoreOptions::default()).unwrap();
    let p = pol(&["*"], &["*.evil.com"], false);
    let secret = "hf_SuperSecretToken123";
    let urls = [
        format!("https://huggingface.co/m.gguf?token={secret}&rev=main"),
        format!("https://user:{secret}@x.evil.com/m.gguf"),
        format!("https://api.test/v1?api_key={secret}"),
        format!("https://api.test/v1#access_token={secret}"),
        format!("https://{secret}@github.com/repo.git"),
    ];
    for (i, u) in urls.iter().enumerate() {
        p.enforce(store.audit(), u, ACTION_MODEL_DOWNLOAD, 1_000 + i as u64)
            .unwrap();
    }
    // Even a caller-built decision with a secret in it is redacted on the way in.
    let mut d = p.check("https://ok.test/", ACTION_TOOL_CALL);
    d.reason = format!("calling with Authorization: Bearer {secret}");
    store
        .audit()
        .record(2_000, ACTION_TOOL_CALL, "https://ok.test/", &d)
        .unwrap();

    let text = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    assert!(
        !text.contains(secret),
        "secret leaked into the audit log:\n{text}"
    );
    let recs: Vec<AuditRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(recs.len(), 6);
    assert_eq!(recs[0].ts_ms, 1_000);
    assert_eq!(recs[0].action, ACTION_MODEL_DOWNLOAD);
    assert!(recs[0].allowed);
    assert_eq!(
        recs[0].url,
        "https://huggingface.co/m.gguf?token=REDACTED&rev=main"
    );
    assert!(!recs[1].allowed);
    assert_eq!(recs[1].rule, "deny:*.evil.com");
    assert_eq!(recs[1].url, "https://user:REDACTED@x.evil.com/m.gguf");
    assert!(recs[5].reason.contains("[REDACTED]"));

    // Reopening appends; nothing is lost.
    drop(store);
    let log = AuditLog::open(&tmp.path().join("audit.jsonl")).unwrap();
    log.record(
        3_000,
        "x",
        "https://ok.test/",
        &p.check("https://ok.test/", "x"),
    )
    .unwrap();
    let text = fs::read_to_string(tmp.path().join("audit.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 7);
}

#[test]
fn redact_url_cases() {
    assert_eq!(
        redact_url("https://u:p4ss@h.test/a?key=K1&x=1&my_token=T2&ACCESS_TOKEN=T3&Api-Key=T4"),
        "https://u:REDACTED@h.test/a?key=REDACTED&x=1&my_token=REDACTED&ACCESS_TOKEN=REDACTED&Api-Key=REDACTED"
    );
    assert_eq!(
        redact_url("https://h.test/a?max_tokens=5&q=token"),
        "https://h.test/a?max_tokens=5&q=token"
    );
    assert_eq!(
        redact_url("http://10.0.0.20:8000/v1"),
        "http://10.0.0.20:8000/v1"
    );
    // Unparseable input is still redacted.
    let out = redact_url("htp:/x?token=abc");
    assert!(!out.contains("abc"), "{out}");
    let out = redact_url("weird://u:pw@[bad/x?api_key=zzz");
    assert!(!out.contains("pw") && !out.contains("zzz"), "{out}");
}

#[test]
fn redact_text_cases() {
    let out = redact_text(
        "Authorization: Bearer abc.def-123 failed; HF_TOKEN=hf_xyz api_key: \"k-9\" \
         url=https://h/?token=tt1 secret sauce=topsecret Basic dXNlcjpwYXNzd29yZA==",
        &["topsecret"],
    );
    for leaked in [
        "abc.def-123",
        "hf_xyz",
        "k-9",
        "tt1",
        "topsecret",
        "dXNlcjpwYXNzd29yZA==",
    ] {
        assert!(!out.contains(leaked), "{leaked} leaked: {out}");
    }
    assert!(out.contains("Bearer [REDACTED]"), "{out}");
    // Ordinary prose survives.
    let prose = "queue for pool 'default' is full (64/64); retry after 250 ms, tokens: 12, \
                 basic usage";
    assert_eq!(redact_text(prose, &[]), prose);
    assert_eq!(redact_text("nothing", &[""]), "nothing");
}

proptest! {
    #[test]
    fn tokens_never_survive_redaction(token in "[A-Za-z0-9]{12,40}", name in prop::sample::select(vec![
        "token", "api_key", "key", "access_token", "hf_token", "client_secret", "X-Amz-Signature",
    ])) {
        let url = format!("https://user:{token}@host.test/p?{name}={token}&a=1");
        let red = redact_url(&url);
        prop_assert!(!red.contains(&token), "{}", red);
        let text = format!("GET {url} with Authorization: Bearer {token} and {name}={token}");
        let red = redact_text(&text, &[]);
        prop_assert!(!red.contains(&token), "{}", red);
        let red = redact_text(&format!("the value is {token}!"), &[&token]);
        prop_assert!(!red.contains(&token), "{}", red);
    }

    #[test]
    fn check_never_panics(url in ".{0,80}", action in "[a-z_]{0,20}") {
        let p = pol(&["*.example.com", "http://h:1/*"], &["*.bad"], true);
        let d = p.check(&url, &action);
        prop_assert!(!d.rule.is_empty());
    }
}
