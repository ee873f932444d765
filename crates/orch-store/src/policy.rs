//! Outbound policy hook and its audit log.
//!
//! Every outbound HTTP action the daemon takes on a user's behalf is checked with
//! [`Policy::check`] (or [`Policy::enforce`], which also writes the audit line).
//!
//! Patterns:
//! - `*` matches every URL.
//! - A host pattern (no `://`) is a glob over the host, or over `host:port` (the port is the
//!   URL's explicit or default port): `*.example.com` (subdomains only, not `example.com`
//!   itself), `10.0.0.*`, `localhost:8080`, `[::1]`.
//! - A URL pattern (`scheme://authority/path`) matches the scheme exactly, the authority
//!   (`host[:port]`, default ports dropped) as a glob, and the path plus query as a glob:
//!   `http://10.0.0.20:8000/*`. A URL pattern without a path covers the whole origin.
//!
//! `*` matches any run of characters (but in host and authority globs it can never cross
//! into the path) and `?` one character; matching is case-insensitive for hosts and schemes.
//!
//! Evaluation, first hit wins: unparseable URL or a scheme other than http/https → deny;
//! `no_downloads` and a download action → deny; a deny pattern → deny; an allow pattern →
//! allow; an empty allow list → allow (permissive default); otherwise deny.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::redact::{redact_text, redact_url};

/// Action: downloading a model file.
pub const ACTION_MODEL_DOWNLOAD: &str = "model_download";
/// Action: a tool call carried in a task's input.
pub const ACTION_TOOL_CALL: &str = "tool_call";
/// Action: talking to an engine endpoint off loopback.
pub const ACTION_ENGINE_ENDPOINT: &str = "engine_endpoint";

/// The verdict for one outbound action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Whether the action may proceed.
    pub allowed: bool,
    /// Which rule decided: `deny:<pattern>`, `allow:<pattern>`, `no_downloads`,
    /// `invalid_url`, `scheme`, `default_allow` or `default_deny`.
    pub rule: String,
    /// A sentence for logs and error messages (secrets redacted).
    pub reason: String,
}

#[derive(Debug, Clone)]
enum Pattern {
    Any,
    Host(String),
    Url {
        scheme: String,
        authority: String,
        path: String,
    },
}

/// One configured pattern with its original spelling (for `rule`).
#[derive(Debug, Clone)]
struct Rule {
    text: String,
    pattern: Pattern,
}

/// Allow/deny lists for outbound URLs. See the module docs for pattern syntax and order.
#[derive(Debug, Clone)]
pub struct Policy {
    allow: Vec<Rule>,
    deny: Vec<Rule>,
    no_downloads: bool,
}

impl Default for Policy {
    /// Permissive: allow everything, deny nothing, downloads on.
    fn default() -> Self {
        Policy {
            allow: Vec::new(),
            deny: Vec::new(),
            no_downloads: false,
        }
    }
}

fn default_port(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" => Some("80"),
        "https" => Some("443"),
        _ => None,
    }
}

fn parse_pattern(text: &str) -> Result<Pattern> {
    let t = text.trim();
    let bad = |why: &str| {
        StoreError::Invalid(format!(
            "outbound policy pattern '{}' is invalid: {why}",
            t.escape_debug()
        ))
    };
    if t.is_empty() {
        return Err(bad("it is empty"));
    }
    if t.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("it contains whitespace"));
    }
    if t == "*" {
        return Ok(Pattern::Any);
    }
    let Some((scheme, rest)) = t.split_once("://") else {
        if t.contains(['/', '?', '#', '@']) {
            return Err(bad(
                "a host pattern cannot contain / ? # or @; write a URL pattern \
                 like http://host:port/*",
            ));
        }
        return Ok(Pattern::Host(t.to_ascii_lowercase()));
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("only http:// and https:// URL patterns are supported"));
    }
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("the URL pattern needs a host and no user info"));
    }
    let mut authority = authority.to_ascii_lowercase();
    if let Some(port) = default_port(&scheme) {
        if let Some(stripped) = authority.strip_suffix(&format!(":{port}")) {
            authority = stripped.to_string();
        }
    }
    let path = if path.is_empty() {
        "/*".to_string()
    } else {
        path.to_string()
    };
    Ok(Pattern::Url {
        scheme,
        authority,
        path,
    })
}

/// Glob match: `*` any run, `?` one character. `case_fold` compares ASCII case-insensitively.
fn glob(pattern: &str, text: &str, case_fold: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let eq = |a: char, b: char| {
        if case_fold {
            a.eq_ignore_ascii_case(&b)
        } else {
            a == b
        }
    };
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && eq(p[pi], t[ti]))) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The parts of a URL that patterns look at.
struct Target {
    scheme: String,
    host: String,
    host_port: String,
    authority: String,
    path_query: String,
}

fn target(url: &url::Url) -> Option<Target> {
    let host = url.host_str()?.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    let port = url.port_or_known_default()?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let mut path_query = url.path().to_string();
    if let Some(q) = url.query() {
        path_query.push('?');
        path_query.push_str(q);
    }
    Some(Target {
        scheme: url.scheme().to_string(),
        host_port: format!("{host}:{port}"),
        host,
        authority,
        path_query,
    })
}

impl Rule {
    fn matches(&self, t: &Target) -> bool {
        match &self.pattern {
            Pattern::Any => true,
            Pattern::Host(h) => glob(h, &t.host, true) || glob(h, &t.host_port, true),
            Pattern::Url {
                scheme,
                authority,
                path,
            } => {
                *scheme == t.scheme
                    && glob(authority, &t.authority, true)
                    && glob(path, &t.path_query, false)
            }
        }
    }
}

impl Policy {
    /// Build a policy from allow and deny patterns. An empty `allow` list allows everything
    /// not denied; `no_downloads` refuses every download action. Malformed patterns are
    /// [`StoreError::Invalid`].
    pub fn new(allow: Vec<String>, deny: Vec<String>, no_downloads: bool) -> Result<Policy> {
        let rules = |list: Vec<String>| -> Result<Vec<Rule>> {
            list.into_iter()
                .map(|text| {
                    Ok(Rule {
                        pattern: parse_pattern(&text)?,
                        text: text.trim().to_string(),
                    })
                })
                .collect()
        };
        Ok(Policy {
            allow: rules(allow)?,
            deny: rules(deny)?,
            no_downloads,
        })
    }

    /// Whether `action` counts as a download for `no_downloads`: [`ACTION_MODEL_DOWNLOAD`],
    /// `download`, or any action ending in `_download`.
    pub fn is_download(action: &str) -> bool {
        action == ACTION_MODEL_DOWNLOAD || action == "download" || action.ends_with("_download")
    }

    /// Decide whether `action` may reach `url`. Pure; see [`Policy::enforce`] to also audit.
    pub fn check(&self, url: &str, action: &str) -> Decision {
        let shown = redact_url(url);
        let deny = |rule: String, reason: String| Decision {
            allowed: false,
            rule,
            reason,
        };
        let parsed = match url::Url::parse(url) {
            Ok(u) => u,
            Err(e) => {
                return deny(
                    "invalid_url".into(),
                    format!("{action} to '{shown}' refused: not a valid URL ({e})"),
                )
            }
        };
        if parsed.scheme() != "http" && parsed.scheme() != "https" {
            return deny(
                "scheme".into(),
                format!("{action} to '{shown}' refused: only http and https are allowed outbound"),
            );
        }
        let Some(t) = target(&parsed) else {
            return deny(
                "invalid_url".into(),
                format!("{action} to '{shown}' refused: the URL has no host"),
            );
        };
        if self.no_downloads && Policy::is_download(action) {
            return deny(
                "no_downloads".into(),
                format!(
                    "{action} to '{shown}' refused: downloads are disabled (policy.no_downloads)"
                ),
            );
        }
        if let Some(r) = self.deny.iter().find(|r| r.matches(&t)) {
            return deny(
                format!("deny:{}", r.text),
                format!("{action} to '{shown}' refused by deny pattern '{}'", r.text),
            );
        }
        if let Some(r) = self.allow.iter().find(|r| r.matches(&t)) {
            return Decision {
                allowed: true,
                rule: format!("allow:{}", r.text),
                reason: format!("{action} to '{shown}' allowed by pattern '{}'", r.text),
            };
        }
        if self.allow.is_empty() {
            return Decision {
                allowed: true,
                rule: "default_allow".into(),
                reason: format!("{action} to '{shown}' allowed: no allow-list is configured"),
            };
        }
        deny(
            "default_deny".into(),
            format!(
                "{action} to '{shown}' refused: it matches no allow pattern (add one to \
                 policy.outbound.allow)"
            ),
        )
    }

    /// [`Policy::check`], then append the decision to `audit`. If the audit line cannot be
    /// written the error is returned and the caller must not proceed (fail closed).
    pub fn enforce(
        &self,
        audit: &AuditLog,
        url: &str,
        action: &str,
        now_ms: u64,
    ) -> Result<Decision> {
        let decision = self.check(url, action);
        audit.record(now_ms, action, url, &decision)?;
        if !decision.allowed {
            tracing::warn!(action, rule = %decision.rule, reason = %decision.reason, "outbound action denied");
        }
        Ok(decision)
    }
}

/// One line of `audit.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When the decision was made (ms since the Unix epoch).
    pub ts_ms: u64,
    /// The action, e.g. [`ACTION_MODEL_DOWNLOAD`].
    pub action: String,
    /// The URL with secrets redacted.
    pub url: String,
    /// Whether it was allowed.
    pub allowed: bool,
    /// The deciding rule.
    pub rule: String,
    /// The reason (redacted).
    pub reason: String,
}

/// Append-only JSON-lines audit log; each line is fsynced before [`AuditLog::record`] returns.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<File>,
}

impl AuditLog {
    /// Open (creating if needed) the log at `path` for appending.
    pub fn open(path: &Path) -> Result<AuditLog> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening audit log {}", path.display()), e))?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Where the log lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one decision: the URL and reason are redacted here, whatever the caller passed.
    pub fn record(&self, ts_ms: u64, action: &str, url: &str, decision: &Decision) -> Result<()> {
        let rec = AuditRecord {
            ts_ms,
            action: redact_text(action, &[]),
            url: redact_url(url),
            allowed: decision.allowed,
            rule: redact_text(&decision.rule, &[]),
            reason: redact_text(&decision.reason, &[]),
        };
        let mut line = serde_json::to_string(&rec)
            .map_err(|e| StoreError::Invalid(format!("audit record cannot be encoded: {e}")))?;
        line.push('\n');
        let file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let mut f: &File = &file;
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| {
                StoreError::io(format!("appending to audit log {}", self.path.display()), e)
            })
    }

    /// Copy the log to `dst` (fsynced), holding off appends so no half line is copied.
    pub(crate) fn copy_to(&self, dst: &Path) -> Result<()> {
        let _file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        let copy = || -> std::io::Result<()> {
            let mut reader = std::io::BufReader::new(File::open(&self.path)?);
            let mut out = File::create(dst)?;
            std::io::copy(&mut reader, &mut out)?;
            out.flush()?;
            out.sync_all()
        };
        copy().map_err(|e| {
            StoreError::io(
                format!("copying {} to {}", self.path.display(), dst.display()),
                e,
            )
        })
    }
}
