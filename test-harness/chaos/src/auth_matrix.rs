//! Auth matrix: callers (loopback; a real remote host in a network namespace; this host through
//! its non-loopback veth address) × credentials (none, good, wrong, truncated, extended, empty,
//! not-Bearer, none + forwarding headers claiming 127.0.0.1) × `AUTH_OPTIONAL` off/on × every
//! operation in the daemon's OpenAPI document, plus path tricks.
//!
//! Expected (docs/DECISIONS.md "Auth"): the good token passes everywhere. Remote
//! callers without it get 401 on every route (`MISSING_TOKEN` without a header, `BAD_TOKEN`
//! with a wrong or malformed one), `/health` and `/metrics` included; forwarding headers change
//! nothing. Loopback callers without a header pass on `/health` and `/metrics`, and everywhere
//! with `AUTH_OPTIONAL=true`; with a wrong or malformed header they get 401 `BAD_TOKEN` even on
//! loopback. A bypass is a non-401 answer where 401 is expected. With no token configured the
//! daemon serves loopback callers and refuses to bind beyond loopback.
//!
//! Requests are made with `curl` (`--path-as-is`), from this host or inside the namespace
//! (`ip netns exec NS curl -K plan`), only ever to the loopback or veth addresses.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::netns::NetNs;
use crate::{Ctx, DaemonOptions, Outcome};

/// Who calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Caller {
    /// From 127.0.0.1.
    Loopback,
    /// From the namespace's address.
    Remote,
    /// From this host, to its own veth address (the peer is not loopback).
    HostViaVeth,
}

/// One probe.
#[derive(Clone, Debug)]
struct Probe {
    method: String,
    path: String,
    cred: &'static str,
    headers: Vec<String>,
}

/// Credential variants: (name, headers).
fn credentials(token: &str) -> Vec<(&'static str, Vec<String>)> {
    let auth = |v: String| vec![format!("Authorization: {v}")];
    let basic = {
        use std::fmt::Write;
        // base64 of "user:<token>" without a dependency: hex is just as malformed.
        let mut s = String::new();
        for b in format!("user:{token}").bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s
    };
    vec![
        ("none", vec![]),
        ("good", auth(format!("Bearer {token}"))),
        (
            "wrong",
            auth("Bearer chaos-00000000000000000000000000000000".into()),
        ),
        (
            "truncated",
            auth(format!("Bearer {}", &token[..token.len() - 1])),
        ),
        ("extended", auth(format!("Bearer {token}0"))),
        ("empty-bearer", auth("Bearer".into())),
        ("not-bearer", auth(format!("Basic {basic}"))),
        (
            "none+forwarded",
            vec![
                "X-Forwarded-For: 127.0.0.1".into(),
                "X-Real-IP: 127.0.0.1".into(),
                "Forwarded: for=127.0.0.1".into(),
                "X-Forwarded-Host: localhost".into(),
            ],
        ),
    ]
}

fn open_path(path: &str) -> bool {
    let p = path.split('?').next().unwrap_or("");
    p == "/health" || p == "/metrics"
}

/// `Some(code)` when the probe must be refused with 401 `code`; `None` when it must pass.
fn expected(caller: Caller, optional: bool, cred: &str, path: &str) -> Option<&'static str> {
    match cred {
        "good" => None,
        "none" | "none+forwarded" => {
            if caller == Caller::Loopback && (optional || open_path(path)) {
                None
            } else {
                Some("MISSING_TOKEN")
            }
        }
        _ => Some("BAD_TOKEN"),
    }
}

fn concrete(path: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(i) = rest.find('{') {
        out.push_str(&rest[..i]);
        let j = rest[i..].find('}').map(|j| i + j + 1).unwrap_or(rest.len());
        out.push_str("chaos-x");
        rest = &rest[j..];
    }
    out.push_str(rest);
    out
}

/// Runs `probes` against `base` with curl (inside `ns` when given); returns `(status, body)`.
fn run_curl(ns: Option<&NetNs>, base: &str, probes: &[Probe], dir: &Path) -> Vec<(u16, String)> {
    let mut cfg = String::new();
    for (i, p) in probes.iter().enumerate() {
        let q = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        cfg.push_str(&format!("url = \"{}{}\"\n", base, q(&p.path)));
        cfg.push_str(&format!("request = \"{}\"\n", p.method));
        for h in &p.headers {
            cfg.push_str(&format!("header = \"{}\"\n", q(h)));
        }
        if p.method == "POST" {
            cfg.push_str("header = \"Content-Type: application/json\"\ndata = \"{}\"\n");
        }
        // Streams stay open: their status line is all that counts.
        let max_time = if p.path.ends_with("/stream") { 1 } else { 10 };
        cfg.push_str(&format!(
            "output = \"{}\"\nwrite-out = \"{i} %{{http_code}}\\n\"\npath-as-is\nsilent\nmax-time = {max_time}\n",
            dir.join(format!("{i}.body")).display()
        ));
        if i + 1 < probes.len() {
            cfg.push_str("next\n");
        }
    }
    let plan = dir.join("plan.curl");
    std::fs::write(&plan, cfg).expect("write curl plan");
    let mut cmd = match ns {
        Some(ns) => ns.command("curl"),
        None => Command::new("curl"),
    };
    let out = cmd.arg("-K").arg(&plan).output().expect("run curl");
    let _ = std::fs::remove_file(&plan);
    let mut codes = vec![0u16; probes.len()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((i, c)) = line.split_once(' ') {
            if let (Ok(i), Ok(c)) = (i.parse::<usize>(), c.trim().parse::<u16>()) {
                if i < codes.len() {
                    codes[i] = c;
                }
            }
        }
    }
    codes
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let f = dir.join(format!("{i}.body"));
            let b = std::fs::read_to_string(&f).unwrap_or_default();
            let _ = std::fs::remove_file(&f);
            (c, b)
        })
        .collect()
}

#[derive(Default)]
struct Counts {
    requests: usize,
    passed_ok: usize,
    refused_ok: usize,
    bypasses: usize,
    over_refused: usize,
    wrong_code: usize,
}

/// Runs the scenario.
pub async fn run(ctx: Arc<Ctx>) -> Outcome {
    let mut o = Outcome::new("auth matrix");
    let ns = match NetNs::create() {
        Ok(ns) => ns,
        Err(why) => {
            o.fail(format!("cannot create the remote test host: {why}"));
            return o;
        }
    };
    o.fig(
        "remote test host",
        format!(
            "netns {} ({}) ↔ veth {} ({}), /30",
            ns.name, ns.ns_ip, ns.host_if, ns.host_ip
        ),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = credentials(&ctx.token);
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut routes: Vec<(String, String)> = Vec::new();
    let mut n_ops = 0;
    let t0 = Instant::now();
    for optional in [false, true] {
        let env = if optional {
            vec![("AUTH_OPTIONAL".to_owned(), "true".to_owned())]
        } else {
            vec![]
        };
        let local = ctx.start(
            &format!("auth-loopback-optional-{optional}"),
            DaemonOptions {
                env: env.clone(),
                ..ctx.options(ctx.config("", &[]))
            },
        );
        let lan = ctx.start(
            &format!("auth-lan-optional-{optional}"),
            DaemonOptions {
                env,
                bind: Some(format!("{}:0", ns.host_ip)),
                ..ctx.options(ctx.config("", &[]))
            },
        );
        if routes.is_empty() {
            let doc = local
                .api()
                .get("/openapi.json")
                .await
                .map(|r| r.json())
                .unwrap_or(Value::Null);
            for (path, ops) in doc["paths"].as_object().cloned().unwrap_or_default() {
                for method in ops
                    .as_object()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    routes.push((method.to_uppercase(), path.clone()));
                }
            }
            n_ops = routes.len();
            o.check(n_ops >= 10, || {
                format!("only {n_ops} operations in /openapi.json")
            });
            // Path tricks: none of these may reach a protected handler without a token.
            for p in [
                "/health/",
                "//health",
                "/HEALTH",
                "/metrics?x=1",
                "/health?/v1/capabilities",
                "/health/../v1/capabilities",
                "/metrics/../v1/pools",
                "/v1/capabilities/",
                "//v1/capabilities",
                "/v1//capabilities",
                "/v1/capabilities;/health",
                "/v1/capabilities%00/health",
                "/%2e%2e/v1/capabilities",
                "/v1/tasks/%2e%2e/capabilities",
                "/./v1/capabilities",
            ] {
                routes.push(("GET".into(), p.into()));
            }
        }
        let probes: Vec<Probe> = routes
            .iter()
            .flat_map(|(m, p)| {
                creds.iter().map(move |(name, headers)| Probe {
                    method: m.clone(),
                    path: if p.contains('{') {
                        concrete(p)
                    } else {
                        p.clone()
                    },
                    cred: name,
                    headers: headers.clone(),
                })
            })
            .collect();
        for caller in [Caller::Loopback, Caller::Remote, Caller::HostViaVeth] {
            let (base, nsref) = match caller {
                Caller::Loopback => (local.base(), None),
                Caller::Remote => (lan.base(), Some(&ns)),
                Caller::HostViaVeth => (lan.base(), None),
            };
            let results = {
                let dir = dir.path().to_owned();
                let probes = probes.clone();
                tokio::task::block_in_place(|| run_curl(nsref, &base, &probes, &dir))
            };
            let key = format!("{caller:?}, AUTH_OPTIONAL={optional}");
            let c = counts.entry(key.clone()).or_default();
            for (p, (status, body)) in probes.iter().zip(results) {
                ctx.audit.scan("auth matrix response body", body.as_bytes());
                c.requests += 1;
                // OpenAI's paths answer in OpenAI's shape, the code in lower case; Anthropic's
                // (`/v1/messages*`) carries only the error's type, one for both token codes.
                let code = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| {
                        v["code"]
                            .as_str()
                            .map(str::to_owned)
                            .or_else(|| v["error"]["code"].as_str().map(str::to_ascii_uppercase))
                            .or_else(|| {
                                (v["type"] == "error")
                                    .then(|| v["error"]["type"].as_str().map(str::to_owned))
                                    .flatten()
                            })
                    })
                    .unwrap_or_default();
                let trick = !routes
                    .iter()
                    .any(|(m, r)| m == &p.method && (r == &p.path || concrete(r) == p.path));
                let want = expected(caller, optional, p.cred, &p.path);
                // A path trick is not an OpenAPI route: without the good token only the open
                // paths may answer anything but 401 (on loopback).
                match (want, status) {
                    (_, 0) => {
                        o.fail(format!(
                            "{key}: {} {} ({}) got no answer",
                            p.method, p.path, p.cred
                        ));
                    }
                    (Some(_), s) if s != 401 => {
                        c.bypasses += 1;
                        o.fail(format!(
                            "BYPASS {key}: {} {} with {} answered {s} {}",
                            p.method,
                            p.path,
                            p.cred,
                            body.chars().take(200).collect::<String>()
                        ));
                    }
                    (Some(want), _) => {
                        let anthropic_ok = code == "authentication_error"
                            && matches!(want, "MISSING_TOKEN" | "BAD_TOKEN");
                        if code == want || anthropic_ok {
                            c.refused_ok += 1;
                        } else {
                            c.wrong_code += 1;
                            o.fail(format!(
                                "{key}: {} {} with {}: 401 {code}, expected {want}",
                                p.method, p.path, p.cred
                            ));
                        }
                    }
                    (None, 401) if !trick => {
                        c.over_refused += 1;
                        o.fail(format!(
                            "{key}: {} {} with {} refused: {body}",
                            p.method, p.path, p.cred
                        ));
                    }
                    (None, _) => c.passed_ok += 1,
                }
            }
        }
    }
    // No token configured: loopback callers are served; binding beyond loopback refuses to start.
    let tokenless = ctx.start(
        "auth-no-token",
        DaemonOptions {
            config: ctx.config("", &[]),
            ..DaemonOptions::default()
        },
    );
    let anon = tokenless.anon();
    let mut served = 0;
    for (m, p) in routes
        .iter()
        .filter(|(_, p)| p.starts_with("/v1/") && !p.contains("..") && !p.contains("//"))
    {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap_or(reqwest::Method::GET);
        let mut req = anon.request(method, &concrete(p));
        if m == "POST" {
            req = req.json(&serde_json::json!({}));
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_secs(10), anon.send(req)).await {
            match r {
                Ok(r) if r.status != 401 => served += 1,
                Ok(r) => o.fail(format!(
                    "no token configured: loopback {m} {p} refused: {}",
                    r.text
                )),
                Err(e) => o.fail(format!("no token configured: {m} {p}: {e}")),
            }
        }
    }
    drop(tokenless);
    let refused_bind = {
        let cfg = dir.path().join("lan-no-token.yaml");
        std::fs::write(
            &cfg,
            format!(
                "bind: \"{}:0\"\ndata_dir: \"{}\"\n",
                ns.host_ip,
                dir.path().join("d").display()
            ),
        )
        .expect("write config");
        let out = Command::new(&ctx.bin)
            .arg("--config")
            .arg(&cfg)
            .env_remove("AUTH_TOKEN")
            .env_remove("LLORCH_ADDR")
            .env_remove("LLORCH_CONFIG")
            .output()
            .expect("run orchestratord");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ctx.audit.scan("refused start stderr", err.as_bytes());
        o.check(!out.status.success() && err.contains("AUTH_TOKEN"), || {
            format!(
                "binding {} without a token must refuse to start naming AUTH_TOKEN: {:?} {err}",
                ns.host_ip, out.status
            )
        })
    };
    let mut total = Counts::default();
    for (k, c) in &counts {
        o.fig(
            &format!("{k}: requests → passed as expected / refused with the right code / bypasses / wrongly refused / wrong code"),
            format!("{} → {} / {} / {} / {} / {}", c.requests, c.passed_ok, c.refused_ok, c.bypasses, c.over_refused, c.wrong_code),
        );
        total.requests += c.requests;
        total.bypasses += c.bypasses;
    }
    o.fig(
        "matrix",
        format!(
            "{} operations + {} path tricks × {} credential variants × 3 callers × AUTH_OPTIONAL off/on = {} requests, {} bypasses, {:.0} s",
            n_ops,
            routes.len() - n_ops,
            creds.len(),
            total.requests,
            total.bypasses,
            t0.elapsed().as_secs_f64()
        ),
    );
    o.fig(
        "no token configured",
        format!("loopback served on {served} /v1 routes without a header; bind {}:0 refused to start: {refused_bind}", ns.host_ip),
    );
    drop(ns);
    o
}
