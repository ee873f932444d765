//! One shared bearer token; who needs it where is in docs/DECISIONS.md, "Auth".
//!
//! Who is "local" is decided by the TCP peer address alone; headers such as `X-Forwarded-For`
//! are never trusted. Tokens are compared in constant time and never logged: logs name the
//! caller as `localhost` or `token:<first 6 hex of sha256(token)>`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use orch_api_types::ErrorCode;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ServiceError;

/// Authentication settings in force.
#[derive(Clone)]
pub struct Auth {
    token: Option<Arc<str>>,
    fingerprint: Option<String>,
    optional_on_loopback: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("fingerprint", &self.fingerprint)
            .field("optional_on_loopback", &self.optional_on_loopback)
            .finish()
    }
}

/// First six hex digits of the token's SHA-256.
pub fn fingerprint(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))[..6].to_owned()
}

impl Auth {
    /// Settings from the resolved token and `AUTH_OPTIONAL`.
    pub fn new(token: Option<String>, optional_on_loopback: bool) -> Self {
        let fingerprint = token.as_deref().map(fingerprint);
        Self {
            token: token.map(Into::into),
            fingerprint,
            optional_on_loopback,
        }
    }

    /// The configured token, for redaction.
    pub fn secret(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Decides a request: the identity to log, or the 401.
    pub fn check(
        &self,
        peer_loopback: bool,
        path: &str,
        header: Option<&str>,
    ) -> Result<String, ServiceError> {
        let open_path = matches!(path, "/health" | "/metrics" | "/" | "/favicon.ico");
        let presented = header.and_then(|h| h.strip_prefix("Bearer ").map(str::trim));
        match (&self.token, presented) {
            (Some(t), Some(p)) => {
                if bool::from(t.as_bytes().ct_eq(p.as_bytes())) {
                    Ok(format!("token:{}", self.fingerprint.as_deref().unwrap_or("")))
                } else {
                    Err(ServiceError::new(ErrorCode::BadToken, "the bearer token does not match; check AUTH_TOKEN (or LLORCH_TOKEN for the CLI)"))
                }
            }
            // A malformed header is refused like a wrong token, even where loopback callers
            // need none (docs/DECISIONS.md "Auth"; found by the chaos auth matrix).
            (Some(_), None) if header.is_some() => Err(ServiceError::new(
                ErrorCode::BadToken,
                "the Authorization header must be `Bearer <token>`",
            )),
            _ if peer_loopback && (open_path || self.optional_on_loopback || self.token.is_none()) => {
                Ok("localhost".into())
            }
            (_, None) if header.is_some() => Err(ServiceError::new(
                ErrorCode::BadToken,
                "the Authorization header must be `Bearer <token>`",
            )),
            (Some(_), None) => Err(ServiceError::new(
                ErrorCode::MissingToken,
                "this endpoint needs `Authorization: Bearer <token>` (the daemon's AUTH_TOKEN)",
            )),
            (None, _) => Err(ServiceError::new(
                ErrorCode::MissingToken,
                "remote callers need a token, and none is configured on the daemon; set AUTH_TOKEN there",
            )),
        }
    }
}

/// The `Authorization` header, else Anthropic's `x-api-key: <token>` (what Anthropic's
/// clients send) as `Bearer <token>`: the same constant-time check applies to both.
pub fn credentials(headers: &axum::http::HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    if let Some(h) = headers.get(axum::http::header::AUTHORIZATION) {
        return h.to_str().ok().map(std::borrow::Cow::Borrowed);
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| std::borrow::Cow::Owned(format!("Bearer {k}")))
}

/// Middleware: error answers (status ≥ 400) never carry the token, even when they echo the
/// caller's input (a path parameter, an unknown field, a `model_ref`): a client may paste the
/// token anywhere, and an error body can end up in a log or a bug report (found by the chaos
/// secrets scenario, docs/RELIABILITY.md "Failures found and fixed"). Success bodies are left
/// alone: they hold the caller's own data.
pub async fn redact_errors(State(auth): State<Auth>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let Some(secret) = auth.secret().filter(|s| !s.is_empty()) else {
        return resp;
    };
    if resp.status().as_u16() < 400 {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 16 << 20).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let forms = crate::logging::secret_forms(&[secret.to_owned()]);
    let text = String::from_utf8_lossy(&bytes);
    if !forms.iter().any(|f| text.contains(f.as_str())) {
        return Response::from_parts(parts, axum::body::Body::from(bytes));
    }
    let clean = crate::logging::redact(&text, &forms);
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(clean))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix() {
        let a = Auth::new(Some("s3cret".into()), false);
        let ok = |r: Result<String, ServiceError>| r.is_ok();
        let code = |r: Result<String, ServiceError>| r.err().map(|e| e.body.code);
        assert!(ok(a.check(false, "/v1/tasks", Some("Bearer s3cret"))));
        assert_eq!(
            code(a.check(false, "/v1/tasks", None)),
            Some(ErrorCode::MissingToken)
        );
        assert_eq!(
            code(a.check(true, "/v1/tasks", None)),
            Some(ErrorCode::MissingToken)
        );
        assert_eq!(
            code(a.check(true, "/v1/tasks", Some("Bearer nope"))),
            Some(ErrorCode::BadToken)
        );
        assert_eq!(
            code(a.check(true, "/v1/tasks", Some("Basic x"))),
            Some(ErrorCode::BadToken)
        );
        assert!(ok(a.check(true, "/health", None)));
        assert_eq!(
            code(a.check(false, "/health", None)),
            Some(ErrorCode::MissingToken)
        );
        assert_eq!(
            code(a.check(true, "/health", Some("Basic x"))),
            Some(ErrorCode::BadToken)
        );
        let opt = Auth::new(Some("s3cret".into()), true);
        assert!(ok(opt.check(true, "/v1/tasks", None)));
        assert_eq!(
            code(opt.check(true, "/v1/tasks", Some("Basic x"))),
            Some(ErrorCode::BadToken)
        );
        assert_eq!(
            code(opt.check(false, "/v1/tasks", None)),
            Some(ErrorCode::MissingToken)
        );
        let none = Auth::new(None, false);
        assert!(ok(none.check(true, "/v1/tasks", None)));
        assert_eq!(
            code(none.check(false, "/v1/tasks", None)),
            Some(ErrorCode::MissingToken)
        );
    }

    #[tokio::test]
    async fn error_bodies_never_echo_the_token() {
        use axum::extract::Path;
        use tower::ServiceExt;
        let app = axum::Router::new()
            .route(
                "/x/{id}",
                axum::routing::get(|Path(id): Path<String>| async move {
                    ServiceError::not_found(format!("no `{id}`"))
                }),
            )
            .route(
                "/ok/{id}",
                axum::routing::get(|Path(id): Path<String>| async move { id }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Auth::new(Some("s3cret-tok".into()), false),
                redact_errors,
            ));
        let body = |uri: &'static str| {
            let app = app.clone();
            async move {
                let r = app
                    .oneshot(Request::get(uri).body(axum::body::Body::empty()).unwrap())
                    .await
                    .unwrap();
                let b = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
                String::from_utf8(b.to_vec()).unwrap()
            }
        };
        let err = body("/x/s3cret-tok").await;
        assert!(
            !err.contains("s3cret-tok") && err.contains("[REDACTED]"),
            "{err}"
        );
        assert_eq!(body("/ok/s3cret-tok").await, "s3cret-tok");
    }

    #[test]
    fn identity_is_fingerprint_not_token() {
        let a = Auth::new(Some("s3cret".into()), false);
        let id = a.check(false, "/x", Some("Bearer s3cret")).unwrap();
        assert!(!id.contains("s3cret"));
        assert_eq!(id.len(), "token:".len() + 6);
        assert!(!format!("{a:?}").contains("s3cret"));
    }

    #[test]
    fn x_api_key_is_a_bearer_token_unless_authorization_is_sent() {
        let mut h = axum::http::HeaderMap::new();
        assert!(credentials(&h).is_none());
        h.insert("x-api-key", "  ".parse().unwrap());
        assert!(credentials(&h).is_none(), "an empty key is no key");
        h.insert("x-api-key", "s3cret".parse().unwrap());
        assert_eq!(credentials(&h).as_deref(), Some("Bearer s3cret"));
        let a = Auth::new(Some("s3cret".into()), false);
        assert!(a
            .check(false, "/v1/messages", credentials(&h).as_deref())
            .is_ok());
        h.insert("authorization", "Bearer other".parse().unwrap());
        assert_eq!(credentials(&h).as_deref(), Some("Bearer other"));
    }
}
