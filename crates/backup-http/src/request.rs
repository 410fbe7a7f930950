//! One request as the service sees it: who sent it from where, whether
//! they may, and its one audit line.
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use backup_core::{AuditRecord, ErrorKind};
use serde_json::json;

use crate::auth::{Credentials, Denial, Principal, Role, Throttled};
use crate::service::Service;
use crate::Peer;

/// The `WWW-Authenticate` challenge of every `401`.
pub(crate) const CHALLENGE: &str = r#"Basic realm="backup", charset="UTF-8""#;

/// The facts of one request the handlers and the audit line need.
#[derive(Debug, Clone)]
pub(crate) struct Req {
    pub(crate) address: IpAddr,
    pub(crate) client_cert_sha256: Option<String>,
    pub(crate) method: Method,
    /// The path below the router (`/backup`), for the audit line.
    pub(crate) path: String,
    /// Where the router is mounted (`""`, or `/backup` when nested there).
    pub(crate) base: String,
    pub(crate) headers: HeaderMap,
    pub(crate) started: Instant,
}

impl<S: Send + Sync> FromRequestParts<S> for Req {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<Peer>().cloned().or_else(|| {
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| Peer {
                    address: c.0,
                    client_cert_sha256: None,
                })
        });
        let path = parts.uri.path().to_string();
        let original = parts
            .extensions
            .get::<OriginalUri>()
            .map(|o| o.0.path().to_string())
            .unwrap_or_else(|| path.clone());
        let base = match original.strip_suffix(path.as_str()) {
            Some(base) => base.to_string(),
            None if path == "/" => original.trim_end_matches('/').to_string(),
            None => String::new(),
        };
        Ok(Req {
            address: peer
                .as_ref()
                .map(|p| p.address.ip())
                .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            client_cert_sha256: peer.and_then(|p| p.client_cert_sha256),
            method: parts.method.clone(),
            path,
            base,
            headers: parts.headers.clone(),
            started: Instant::now(),
        })
    }
}

impl Req {
    /// `http:<user>@<address>`, or `http:-@<address>` without a user.
    pub(crate) fn actor(&self, user: Option<&str>) -> String {
        format!("http:{}@{}", user.unwrap_or("-"), self.address)
    }

    fn user_agent(&self) -> Option<String> {
        self.headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(200).collect())
    }

    /// The request's one audit line.
    pub(crate) fn audit(&self, service: &Service, entry: Audit) {
        let mut record = AuditRecord::new(entry.actor, "http", entry.target, entry.outcome);
        record.bytes = entry.bytes;
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        record.error = entry.error;
        record.trigger = Some("http".into());
        record.route = Some(format!("{} {}{}", self.method, self.base, self.path));
        record.user_agent = self.user_agent();
        if let Err(e) = service.inner.engine.append_audit(&record) {
            tracing::warn!("the audit log could not be written: {e}");
        }
    }

    /// Who sent this request, if they may do what `needed` may; otherwise
    /// the response to send (`401`, `403` or `429`), audited.
    pub(crate) async fn authorize(
        &self,
        service: &Service,
        needed: Role,
    ) -> Result<Principal, Response> {
        let refuse = |actor: String, why: &str| {
            self.audit(
                service,
                Audit::new(actor, self.path.clone(), "refused").error(why),
            );
        };
        let Some((user, password)) = self
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| crate::basic::parse_basic(v.as_bytes()))
        else {
            // wget's first request carries none: audited, not a failure.
            refuse(self.actor(None), "no credentials");
            return Err(unauthorized("credentials required (HTTP Basic)"));
        };
        let throttle = &service.inner.throttle;
        if let Err(t) = throttle.check(self.address, &user) {
            refuse(self.actor(Some(&user)), "too many failed logins");
            return Err(too_many(t));
        }
        let credentials = Credentials {
            user: user.clone(),
            password,
            address: self.address,
            client_cert_sha256: self.client_cert_sha256.clone(),
        };
        match service.inner.auth.authenticate(&credentials).await {
            Ok(principal) => {
                throttle.succeeded(self.address, &user);
                if principal.role.allows(needed) {
                    Ok(principal)
                } else {
                    let why = format!("the {} role may not do this", principal.role);
                    refuse(self.actor(Some(&user)), &why);
                    Err(error(
                        StatusCode::FORBIDDEN,
                        "forbidden",
                        &format!("{why}: it needs the {needed} role"),
                    ))
                }
            }
            Err(Denial::ClientCertificateRequired) => {
                refuse(self.actor(Some(&user)), "client certificate required");
                Err(error(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "this user must connect with its registered client certificate",
                ))
            }
            Err(Denial::BadCredentials) => {
                refuse(self.actor(Some(&user)), "wrong user or password");
                match throttle.failed(self.address, &user) {
                    Ok(delay) => {
                        if !delay.is_zero() {
                            tokio::time::sleep(delay).await;
                        }
                        Err(unauthorized("wrong user or password"))
                    }
                    Err(t) => Err(too_many(t)),
                }
            }
        }
    }
}

/// One audit line's facts.
pub(crate) struct Audit {
    pub(crate) actor: String,
    pub(crate) target: String,
    pub(crate) outcome: String,
    pub(crate) bytes: u64,
    pub(crate) error: Option<String>,
}

impl Audit {
    pub(crate) fn new(actor: String, target: impl Into<String>, outcome: &str) -> Audit {
        Audit {
            actor,
            target: target.into(),
            outcome: outcome.to_string(),
            bytes: 0,
            error: None,
        }
    }

    pub(crate) fn bytes(mut self, bytes: u64) -> Audit {
        self.bytes = bytes;
        self
    }

    pub(crate) fn error(mut self, error: impl Into<String>) -> Audit {
        self.error = Some(error.into());
        self
    }
}

/// A JSON error body `{"error": {"kind", "message"}}` with `status`.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"kind": kind, "message": message}})),
    )
        .into_response()
}

fn unauthorized(message: &str) -> Response {
    let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", message);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(CHALLENGE),
    );
    r
}

fn too_many(throttled: Throttled) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        "throttled",
        "too many failed logins from this address for this user: wait and try again",
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(throttled.retry_after_secs()),
    );
    r
}

/// An error with its causes, as the CLI prints it: each source that adds
/// something, after a colon.
pub(crate) fn reason(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// The status code of an engine error, and its `kind`.
pub(crate) fn engine_error(e: &backup_core::Error) -> Response {
    let kind = e.kind();
    let status = match kind {
        ErrorKind::Input => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict | ErrorKind::Busy => StatusCode::CONFLICT,
        ErrorKind::Refused => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::Config | ErrorKind::Failed => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut r = error(status, kind.as_str(), &reason(e));
    if kind == ErrorKind::Busy {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    r
}
