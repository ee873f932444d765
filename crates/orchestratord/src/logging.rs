//! JSON-lines logs on stdout, with secrets redacted at the writer: whatever a log line
//! contains, the configured token never reaches the output.

use std::io::Write;
use std::sync::Arc;

use orch_config::{LogConfig, LogFormat};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Replaces every secret with `[REDACTED]` in `text`.
pub fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "[REDACTED]");
        }
    }
    out
}

/// Every form in which `secrets` can appear in a formatted log line: as they are, JSON-escaped
/// (JSON lines) and Rust-`Debug`-escaped (text lines), longest first. A token with a `"`, a `\\`
/// or a control character is escaped by the formatter, so the raw form alone would miss it.
pub fn secret_forms(secrets: &[String]) -> Vec<String> {
    let mut forms: Vec<String> = Vec::new();
    for s in secrets {
        let json = serde_json::to_string(s).unwrap_or_default();
        let debug = format!("{s:?}");
        for f in [s.as_str(), json.trim_matches('"'), debug.trim_matches('"')] {
            if !forms.iter().any(|g| g == f) {
                forms.push(f.to_owned());
            }
        }
    }
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    forms
}

/// A stdout writer that redacts secrets from each formatted line.
#[derive(Clone)]
pub struct RedactingStdout {
    secrets: Arc<Vec<String>>,
}

/// One line being written.
pub struct LineWriter {
    buf: Vec<u8>,
    secrets: Arc<Vec<String>>,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let clean = redact(&text, &self.secrets);
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(clean.as_bytes());
        let _ = out.flush();
    }
}

impl<'a> MakeWriter<'a> for RedactingStdout {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            buf: Vec::with_capacity(256),
            secrets: self.secrets.clone(),
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the configured filter.
pub fn init(cfg: &LogConfig, secrets: Vec<String>) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = RedactingStdout {
        secrets: Arc::new(secret_forms(&secrets)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match cfg.format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts_every_occurrence() {
        let s = super::redact("a s3cret b s3cret", &["s3cret".into()]);
        assert_eq!(s, "a [REDACTED] b [REDACTED]");
    }

    #[test]
    fn escaped_forms_of_a_token_are_redacted_too() {
        for token in [
            "pl\"ain",
            "back\\slash",
            "new\nline",
            "tab\tand\u{1b}esc",
            "ünï\"code",
        ] {
            let forms = super::secret_forms(&[token.to_owned()]);
            let json = serde_json::json!({ "message": format!("auth header Bearer {token} seen") })
                .to_string();
            let debug = format!("header={:?}", format!("Bearer {token}"));
            for line in [json, debug, format!("raw {token} raw")] {
                let clean = super::redact(&line, &forms);
                assert!(
                    clean.contains("[REDACTED]"),
                    "{token:?} not redacted in {line}"
                );
                for f in &forms {
                    assert!(!clean.contains(f.as_str()), "{f:?} survived in {clean}");
                }
            }
        }
    }
}
