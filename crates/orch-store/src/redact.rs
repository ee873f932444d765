//! Secret redaction for URLs, log lines and error messages.
//!
//! Redaction is best effort over known shapes: URL passwords, sensitive query parameters,
//! `Bearer`/`Basic` credentials, `NAME=value` / `"name": "value"` pairs whose name looks like a
//! secret (`*_TOKEN`, `api_key`, `password`, …), and any literal secret value the caller knows.

/// Marker that replaces secrets inside URLs (kept free of characters URLs would escape).
pub const URL_MARK: &str = "REDACTED";
/// Marker that replaces secrets in free text.
pub const TEXT_MARK: &str = "[REDACTED]";

/// Whether a parameter / variable / field name usually carries a secret: `token`, `key`,
/// `api_key`, `apikey`, `access_token`, `*_token`, `*_key`, `*_secret`, `password`,
/// `*_signature`, `sig`, `auth`, `authorization`, `*_credential` (case-insensitive, `-` = `_`).
pub fn is_sensitive_name(name: &str) -> bool {
    let n = name.trim().to_ascii_lowercase().replace('-', "_");
    const EXACT: &[&str] = &[
        "token",
        "key",
        "apikey",
        "api_key",
        "secret",
        "password",
        "passwd",
        "pwd",
        "auth",
        "authorization",
        "sig",
        "signature",
        "credential",
        "credentials",
    ];
    const SUFFIX: &[&str] = &[
        "_token",
        "_key",
        "_apikey",
        "_secret",
        "_password",
        "_passwd",
        "_signature",
        "_credential",
        "_credentials",
    ];
    EXACT.contains(&n.as_str()) || SUFFIX.iter().any(|s| n.ends_with(s))
}

/// Redact `name=value` pairs of a query string or fragment whose name is sensitive.
fn redact_pairs(q: &str) -> String {
    q.split('&')
        .map(|part| match part.split_once('=') {
            Some((raw_name, _)) => {
                let name = url::form_urlencoded::parse(raw_name.as_bytes())
                    .next()
                    .map(|(n, _)| n.into_owned())
                    .unwrap_or_else(|| raw_name.to_string());
                if is_sensitive_name(&name) {
                    format!("{raw_name}={URL_MARK}")
                } else {
                    part.to_string()
                }
            }
            None => part.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// A URL safe to log: the userinfo password (or a lone username, which is usually a token)
/// becomes `REDACTED`, and so do the values of sensitive query or fragment parameters
/// (`api_key`, `key`, `token`, `access_token`, `*_token`, `sig`, …). Unparseable input is
/// redacted textually.
pub fn redact_url(url: &str) -> String {
    let parsed = match url::Url::parse(url) {
        Ok(u) if !u.cannot_be_a_base() => u,
        _ => return redact_url_textually(url),
    };
    let mut u = parsed;
    if u.password().is_some() {
        let _ = u.set_password(Some(URL_MARK));
    } else if !u.username().is_empty() {
        let _ = u.set_username(URL_MARK);
    }
    if let Some(q) = u.query().map(redact_pairs) {
        u.set_query(Some(&q));
    }
    if let Some(f) = u.fragment().filter(|f| f.contains('=')).map(redact_pairs) {
        u.set_fragment(Some(&f));
    }
    u.to_string()
}

/// Fallback for strings the URL parser rejects: redact `scheme://userinfo@` and query pairs.
fn redact_url_textually(url: &str) -> String {
    let mut out = url.to_string();
    if let Some(scheme_end) = out.find("://") {
        let auth_start = scheme_end + 3;
        let auth_end = out[auth_start..]
            .find(['/', '?', '#'])
            .map_or(out.len(), |i| auth_start + i);
        if let Some(at) = out[auth_start..auth_end].rfind('@') {
            out.replace_range(auth_start..auth_start + at, URL_MARK);
        }
    }
    if let Some(qpos) = out.find('?') {
        let (head, query) = out.split_at(qpos + 1);
        out = format!("{head}{}", redact_pairs(query));
    }
    out
}

fn is_url_end(c: char) -> bool {
    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | '`')
}

/// Replace every URL (`http://`, `https://`) in `s` with [`redact_url`] of it.
fn redact_urls_in(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let next = [lower[i..].find("http://"), lower[i..].find("https://")]
            .into_iter()
            .flatten()
            .min();
        let Some(off) = next else { break };
        let start = i + off;
        let end = s[start..].find(is_url_end).map_or(s.len(), |e| start + e);
        out.push_str(&s[i..start]);
        out.push_str(&redact_url(&s[start..end]));
        i = end;
    }
    out.push_str(&s[i..]);
    out
}

fn is_credential_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=' | ':')
}

/// Redact the credential after an auth scheme word (`Bearer x`, `Basic x`).
fn redact_scheme(s: &str, scheme: &str, case_insensitive: bool, min_len: usize) -> String {
    let hay = if case_insensitive {
        s.to_ascii_lowercase()
    } else {
        s.to_string()
    };
    let needle = if case_insensitive {
        scheme.to_ascii_lowercase()
    } else {
        scheme.to_string()
    };
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(off) = hay[i..].find(&needle) {
        let word_start = i + off;
        let after_word = word_start + needle.len();
        let boundary_before = s[..word_start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_ascii_alphanumeric());
        let ws_len = s[after_word..]
            .find(|c: char| c != ' ' && c != '\t')
            .unwrap_or(s.len() - after_word);
        let tok_start = after_word + ws_len;
        let tok_len = s[tok_start..]
            .find(|c: char| !is_credential_char(c))
            .unwrap_or(s.len() - tok_start);
        if boundary_before && ws_len > 0 && tok_len >= min_len.max(1) {
            out.push_str(&s[i..tok_start]);
            out.push_str(TEXT_MARK);
            i = tok_start + tok_len;
        } else {
            out.push_str(&s[i..after_word]);
            i = after_word;
        }
    }
    out.push_str(&s[i..]);
    out
}

/// Redact the values of `NAME=value`, `name: value` and `"name": "value"` where the name is
/// sensitive (see [`is_sensitive_name`]).
fn redact_assignments(s: &str) -> String {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut search = 0;
    while search < s.len() {
        // Find the next identifier.
        let Some(id_off) = s[search..].find(is_ident) else {
            break;
        };
        let id_start = search + id_off;
        let id_end = s[id_start..]
            .find(|c: char| !is_ident(c))
            .map_or(s.len(), |e| id_start + e);
        search = id_end;
        if !is_sensitive_name(&s[id_start..id_end]) {
            continue;
        }
        // Optional closing quote, spaces, then '=' or ':'.
        let mut p = id_end;
        let rest = &s[p..];
        let skip_quote = rest.starts_with(['"', '\'']) as usize;
        p += skip_quote;
        p += s[p..].len() - s[p..].trim_start_matches([' ', '\t']).len();
        if !s[p..].starts_with(['=', ':']) {
            continue;
        }
        p += 1;
        p += s[p..].len() - s[p..].trim_start_matches([' ', '\t']).len();
        let quote = s[p..].chars().next().filter(|c| *c == '"' || *c == '\'');
        if let Some(q) = quote {
            p += q.len_utf8();
        }
        let value_len = match quote {
            Some(q) => s[p..].find(q).unwrap_or(s.len() - p),
            None => s[p..]
                .find(|c: char| {
                    c.is_whitespace()
                        || matches!(
                            c,
                            '&' | ',' | ';' | '"' | '\'' | '<' | '>' | ')' | '}' | ']'
                        )
                })
                .unwrap_or(s.len() - p),
        };
        let value = &s[p..p + value_len];
        if value.is_empty()
            || value == TEXT_MARK
            || value == URL_MARK
            || value.eq_ignore_ascii_case("bearer")
            || value.eq_ignore_ascii_case("basic")
        {
            continue;
        }
        out.push_str(&s[i..p]);
        out.push_str(TEXT_MARK);
        i = p + value_len;
        search = i;
    }
    out.push_str(&s[i..]);
    out
}

/// Text safe to log: every occurrence of a known secret value (`secrets`, longest first; empty
/// ones ignored), `Bearer <token>` and `Basic <credentials>`, secret-looking `NAME=value`
/// pairs, and secrets inside URLs (see [`redact_url`]) are replaced with `[REDACTED]`.
pub fn redact_text(s: &str, secrets: &[&str]) -> String {
    let mut sorted: Vec<&str> = secrets.iter().copied().filter(|x| !x.is_empty()).collect();
    sorted.sort_by_key(|x| std::cmp::Reverse(x.len()));
    let mut out = s.to_string();
    for secret in sorted {
        out = out.replace(secret, TEXT_MARK);
    }
    let out = redact_urls_in(&out);
    let out = redact_scheme(&out, "bearer", true, 1);
    let out = redact_scheme(&out, "Basic", false, 8);
    redact_assignments(&out)
}
