//! `object_store` failures mapped to [`crate::Error`], with messages that say
//! what to do, and the short [`S3Failure`] kept as their source.

use std::fmt;
use std::io;

use object_store::client::{HttpError, HttpErrorKind};

use super::core::Shared;
use crate::error::chain;
use crate::Error;

/// What an `object_store` error means here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Meaning {
    NotFound,
    NoSuchBucket,
    AlreadyExists,
    /// With the S3 error code, when there is one.
    Unauthenticated(Option<String>),
    PermissionDenied,
    Transient,
    BadRange,
    Unsupported,
    Other,
}

/// S3 error codes that mean the credentials themselves were refused.
const CREDENTIAL_CODES: [&str; 9] = [
    "InvalidAccessKeyId",
    // What s3s (and AWS, for an account without S3) says of an unknown key.
    "NotSignedUp",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "RequestTimeTooSkewed",
    "AuthorizationHeaderMalformed",
];

impl Meaning {
    pub(super) fn of(e: &object_store::Error) -> Meaning {
        use object_store::Error as E;
        // The S3 error code and the HTTP status only show in the text of the
        // source chain: object_store keeps its request error type private.
        let text = chain(e);
        let code = s3_code(&text);
        match code {
            Some("NoSuchBucket") => return Meaning::NoSuchBucket,
            Some(c) if CREDENTIAL_CODES.contains(&c) => {
                return Meaning::Unauthenticated(Some(c.to_owned()))
            }
            Some("InvalidRange") => return Meaning::BadRange,
            // A bucket policy's refusal, or a locked object (Object Lock).
            Some("AccessDenied") => return Meaning::PermissionDenied,
            Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
                return Meaning::Transient
            }
            _ => {}
        }
        match e {
            E::NotFound { .. } => return Meaning::NotFound,
            E::AlreadyExists { .. } | E::Precondition { .. } => return Meaning::AlreadyExists,
            E::Unauthenticated { .. } => return Meaning::Unauthenticated(code.map(str::to_owned)),
            E::PermissionDenied { .. } => return Meaning::PermissionDenied,
            E::NotSupported { .. } | E::NotImplemented { .. } => return Meaning::Unsupported,
            _ => {}
        }
        if let Some(kind) = transport_kind(e) {
            return match kind {
                HttpErrorKind::Connect
                | HttpErrorKind::Request
                | HttpErrorKind::Timeout
                | HttpErrorKind::Interrupted => Meaning::Transient,
                _ => Meaning::Other,
            };
        }
        match http_status(&text) {
            Some(416) => Meaning::BadRange,
            Some(404) => Meaning::NotFound,
            Some(401) => Meaning::Unauthenticated(code.map(str::to_owned)),
            Some(403) => Meaning::PermissionDenied,
            Some(408 | 429) => Meaning::Transient,
            Some(s) if (500..600).contains(&s) => Meaning::Transient,
            // A 200 whose body is an S3 error (CompleteMultipartUpload's way
            // of reporting an internal error).
            _ if text.contains("Server returned error response") => Meaning::Transient,
            _ if text.contains("Wanted range starting at") => Meaning::BadRange,
            _ => Meaning::Other,
        }
    }
}

/// The `<Code>` of an S3 XML error body quoted in an error message, or
/// the `(code: …)` object_store gives for a key a multi-object delete
/// (how it deletes) failed on.
fn s3_code(text: &str) -> Option<&str> {
    let (open, close) = match text.find("<Code>") {
        Some(_) => ("<Code>", "</Code>"),
        None => ("(code: ", ")"),
    };
    let start = text.find(open)? + open.len();
    let len = text[start..].find(close)?;
    Some(text[start..start + len].trim())
}

/// The status in object_store's "…status code: 404 Not Found…".
fn http_status(text: &str) -> Option<u16> {
    let start = text.find("status code: ")? + "status code: ".len();
    text.get(start..start + 3)?.parse().ok()
}

/// The kind of the transport error in the chain, if there is one.
fn transport_kind(e: &(dyn std::error::Error + 'static)) -> Option<HttpErrorKind> {
    let mut current = Some(e);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<HttpError>() {
            return Some(h.kind());
        }
        current = e.source();
    }
    None
}

impl Shared {
    /// Our error for `e`, which happened while `doing` (which names the
    /// object and this storage); the message says what the operator can do.
    pub(super) fn error(&self, doing: String, e: object_store::Error) -> Error {
        let meaning = Meaning::of(&e);
        let failure = S3Failure::of(&e);
        tracing::debug!(operation = %doing, error = %chain(&e), "S3 request failed");
        // The server answered: say what to do about its answer.
        let hint = failure
            .answered()
            .map(|_| self.hint(failure.code.as_deref()));
        let source = Some(Box::new(failure) as crate::BoxError);
        match meaning {
            Meaning::NotFound => Error::NotFound {
                what: doing,
                source,
            },
            Meaning::NoSuchBucket => Error::NotFound {
                what: format!(
                    "{doing}: bucket {} does not exist at {}; create it, or fix the bucket in [storage] url",
                    self.bucket,
                    self.where_()
                ),
                source,
            },
            Meaning::AlreadyExists => Error::AlreadyExists { what: doing },
            Meaning::Unauthenticated(code) => Error::Unauthenticated {
                what: format!(
                    "{doing}: the S3 server rejected the credentials{}; check AWS_ACCESS_KEY_ID and \
                     AWS_SECRET_ACCESS_KEY (or the profile in ~/.aws/credentials){}",
                    code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default(),
                    if code.as_deref() == Some("RequestTimeTooSkewed") {
                        ", and set this machine's clock right"
                    } else {
                        ", and that this machine's clock is right"
                    }
                ),
                source,
            },
            Meaning::PermissionDenied => Error::PermissionDenied {
                what: format!(
                    "{doing}: access denied; check that the credentials may use bucket {} \
                     (bucket policy, user permissions) and that they are the right ones",
                    self.bucket
                ),
                source,
            },
            Meaning::Transient => Error::Transient {
                what: format!(
                    "{doing}: retry; if it persists, check the network and the S3 server at {}",
                    self.where_()
                ),
                source,
            },
            Meaning::BadRange => Error::Other {
                what: format!("{doing}: the range starts past the end of the object"),
                source,
            },
            Meaning::Unsupported => Error::Unsupported {
                what: format!("{doing}: the S3 server or client does not support this"),
            },
            Meaning::Other => Error::Other {
                what: match hint {
                    Some(hint) => format!("{doing}: {hint}"),
                    None => doing,
                },
                source,
            },
        }
    }

    /// What to do about an S3 error that has no meaning of its own.
    pub(super) fn hint(&self, code: Option<&str>) -> String {
        if code == Some("InvalidBucketName") {
            format!(
                "{:?} is not a valid S3 bucket name (3-63 lowercase letters, digits, dots and \
                 hyphens); fix the bucket in [storage] url",
                self.bucket
            )
        } else {
            format!(
                "check [storage] url and the S3 server's log at {}",
                self.where_()
            )
        }
    }
}

/// What an S3 request ended with, kept short: the S3 error code, the HTTP
/// status and the server's message, or the connection failure. It stands
/// as the source of our error instead of `object_store`'s error, whose text
/// nests the same failure several times (request, retry and client layers).
#[derive(Debug)]
struct S3Failure {
    pub(super) code: Option<String>,
    pub(super) status: Option<u16>,
    /// The server's `<Message>`, or the innermost cause.
    pub(super) detail: String,
}

/// Longest detail kept from a failure.
const MAX_DETAIL: usize = 200;

impl S3Failure {
    pub(super) fn of(e: &object_store::Error) -> S3Failure {
        let text = chain(e);
        let code = s3_code(&text).map(str::to_owned);
        let status = http_status(&text);
        let detail = match s3_message(&text) {
            Some(m) => m.to_owned(),
            None => {
                let mut innermost: &(dyn std::error::Error + 'static) = e;
                while let Some(next) = innermost.source() {
                    innermost = next;
                }
                let cause = innermost.to_string();
                match transport_kind(e) {
                    Some(kind) => format!("{}: {cause}", transport_words(kind)),
                    // Without a body the innermost text is object_store's
                    // whole status line; the status says it.
                    None if status.is_some() => String::new(),
                    None => cause,
                }
            }
        };
        let mut detail = detail.trim().to_owned();
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
            detail.push('…');
        }
        S3Failure {
            code,
            status,
            detail,
        }
    }

    /// "S3 error CODE (HTTP STATUS)", or what is known of it.
    pub(super) fn answered(&self) -> Option<String> {
        match (&self.code, self.status) {
            (Some(c), Some(s)) => Some(format!("S3 error {c} (HTTP {s})")),
            (Some(c), None) => Some(format!("S3 error {c}")),
            (None, Some(s)) => Some(format!("HTTP {s}")),
            (None, None) => None,
        }
    }
}

impl fmt::Display for S3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.answered(), self.detail.is_empty()) {
            (Some(answered), true) => f.write_str(&answered),
            (Some(answered), false) => write!(f, "{answered}: {}", self.detail),
            (None, false) => f.write_str(&self.detail),
            (None, true) => f.write_str("the S3 request failed"),
        }
    }
}

impl std::error::Error for S3Failure {}

fn transport_words(kind: HttpErrorKind) -> &'static str {
    match kind {
        HttpErrorKind::Connect => "could not connect",
        HttpErrorKind::Timeout => "timed out",
        HttpErrorKind::Interrupted => "the connection broke",
        HttpErrorKind::Decode => "the answer could not be read",
        _ => "the request failed",
    }
}

/// The `<Message>` of an S3 XML error body quoted in an error message.
fn s3_message(text: &str) -> Option<&str> {
    let start = text.find("<Message>")? + "<Message>".len();
    let len = text[start..].find("</Message>")?;
    Some(text[start..start + len].trim()).filter(|m| !m.is_empty())
}

/// The I/O error a reader reports for a failed download: its kind carries the
/// meaning, so that [`Error::from_io`] finds it again.
pub(super) fn io_error(e: Error) -> io::Error {
    let kind = match &e {
        Error::NotFound { .. } => io::ErrorKind::NotFound,
        Error::PermissionDenied { .. } | Error::Unauthenticated { .. } => {
            io::ErrorKind::PermissionDenied
        }
        Error::Transient { .. } => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_are_read_for_codes_and_statuses() {
        let body = "Server returned non-2xx status code: 403 Forbidden: <?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code></Error>";
        assert_eq!(s3_code(body), Some("SignatureDoesNotMatch"));
        assert_eq!(http_status(body), Some(403));
        assert_eq!(http_status("no status"), None);
        let e = object_store::Error::PermissionDenied {
            path: "x".into(),
            source: body.into(),
        };
        assert_eq!(
            Meaning::of(&e),
            Meaning::Unauthenticated(Some("SignatureDoesNotMatch".into()))
        );
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Error performing list request: Server returned non-2xx status code: 404 Not Found: <Error><Code>NoSuchBucket</Code></Error>".into(),
        };
        assert_eq!(Meaning::of(&e), Meaning::NoSuchBucket);
        let e = object_store::Error::Generic {
            store: "S3",
            source: "Server returned non-2xx status code: 503 Service Unavailable: ".into(),
        };
        assert_eq!(Meaning::of(&e), Meaning::Transient);
        let e = object_store::Error::Generic {
            store: "S3",
            source: Box::new(HttpError::new(
                HttpErrorKind::Connect,
                io::Error::other("refused"),
            )),
        };
        assert_eq!(Meaning::of(&e), Meaning::Transient);
    }
}
