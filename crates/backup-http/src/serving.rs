//! Serving stored images: whole or by `Range`, with an entity tag, each
//! transfer audited when it ends (the client may leave early). Used by
//! `GET /images/{name}` and by download links (`GET /dl/{name}`).
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::io::ReaderStream;

use crate::request::{error, Audit, Req};
use crate::service::Service;

/// Whether `name` may be served: an image, not a sidecar, not a path out.
pub(crate) fn servable(name: &str) -> bool {
    name.ends_with(".bkp")
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != "..")
}

/// Serves the stored image `name` (its whole or the asked range), audited
/// as `actor`.
pub(crate) async fn serve_image(
    service: &Service,
    req: &Req,
    actor: String,
    name: &str,
) -> Response {
    let fail = |status: StatusCode, kind: &str, message: String, outcome: &str| {
        req.audit(
            service,
            Audit::new(actor.clone(), name, outcome).error(message.clone()),
        );
        error(status, kind, &message)
    };
    if !servable(name) {
        return fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{name}: not an image name"),
            "refused",
        );
    }
    let Some(storage) = service.inner.engine.storage().cloned() else {
        return fail(
            StatusCode::NOT_FOUND,
            "not_found",
            "no storage is configured".into(),
            "refused",
        );
    };
    let meta = match storage.head(name).await {
        Ok(m) => m,
        Err(backup_storage::Error::NotFound { .. }) => {
            return fail(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no image {name} in {storage}"),
                "refused",
            )
        }
        Err(e) => {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed",
                format!("{storage}: {e}"),
                "failed",
            )
        }
    };
    let size = meta.size;
    let etag = etag(name, size);
    let range = match requested_range(req, &etag, size) {
        Ok(r) => r,
        Err(()) => {
            req.audit(
                service,
                Audit::new(actor, name, "refused").error("unsatisfiable range"),
            );
            let mut r = error(
                StatusCode::RANGE_NOT_SATISFIABLE,
                "input",
                "the range is outside the image",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return r;
        }
    };
    let file = name.rsplit('/').next().unwrap_or(name);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, &etag)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        );
    let (status, span) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.clone()),
        None => (StatusCode::OK, 0..size),
    };
    builder = builder
        .status(status)
        .header(header::CONTENT_LENGTH, span.end - span.start);
    if range.is_some() {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{size}", span.start, span.end.saturating_sub(1)),
        );
    }
    if req.method == Method::HEAD || span.is_empty() {
        req.audit(service, Audit::new(actor, name, "done"));
        return builder.body(Body::empty()).unwrap_or_else(|e| {
            error(StatusCode::INTERNAL_SERVER_ERROR, "failed", &e.to_string())
        });
    }
    let got = match storage.get_opts(name, range.clone()).await {
        Ok(g) => g,
        Err(e) => {
            return fail(
                StatusCode::SERVICE_UNAVAILABLE,
                "failed",
                format!("{storage}: {e}"),
                "failed",
            )
        }
    };
    let (audit_service, audit_req, audit_name) = (service.clone(), req.clone(), name.to_string());
    let expected = span.end - span.start;
    let counted = counting(ReaderStream::new(got.reader), move |sent, error| {
        let outcome = if error.is_none() && sent == expected {
            "done"
        } else {
            "failed"
        };
        let mut entry = Audit::new(actor, audit_name, outcome).bytes(sent);
        if let Some(e) = error {
            entry = entry.error(e);
        } else if sent != expected {
            entry = entry.error("the client went away before the end");
        }
        audit_req.audit(&audit_service, entry);
    });
    builder
        .body(Body::from_stream(counted))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "failed", &e.to_string()))
}

/// An image's entity tag: images are never rewritten under their name
/// (key rotation's rewrap keeps the size and the payload), so name and size
/// identify its content.
fn etag(name: &str, size: u64) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(format!("{name}\n{size}").as_bytes());
    format!("\"{}\"", hex::encode(&h[..12]))
}

/// The single byte range a request asks for (`None`: the whole image).
/// `If-Range` with another tag asks for the whole. `Err`: unsatisfiable.
fn requested_range(req: &Req, etag: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, ()> {
    let Some(value) = req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    if let Some(if_range) = req
        .headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    {
        if if_range.trim() != etag {
            return Ok(None);
        }
    }
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: the whole image instead
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let range = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            size.saturating_sub(n)..size
        }
        (start, end) => {
            let start: u64 = start.parse().map_err(|_| ())?;
            let end: u64 = if end.is_empty() {
                size.saturating_sub(1)
            } else {
                end.parse::<u64>()
                    .map_err(|_| ())?
                    .min(size.saturating_sub(1))
            };
            if start >= size || end < start {
                return Err(());
            }
            start..end + 1
        }
    };
    Ok(Some(range))
}

/// A byte stream that reports, once, how many bytes went out and whether
/// it ended by an error — also when it is dropped early (the client left).
fn counting<S>(
    inner: S,
    done: impl FnOnce(u64, Option<String>) + Send + 'static,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    struct Count<F: FnOnce(u64, Option<String>)> {
        sent: u64,
        error: Option<String>,
        done: Option<F>,
    }
    impl<F: FnOnce(u64, Option<String>)> Drop for Count<F> {
        fn drop(&mut self) {
            if let Some(done) = self.done.take() {
                done(self.sent, self.error.take());
            }
        }
    }
    let count = Count {
        sent: 0,
        error: None,
        done: Some(done),
    };
    futures::stream::unfold((inner, count), |(mut inner, mut count)| async move {
        match inner.next().await {
            Some(Ok(chunk)) => {
                count.sent += chunk.len() as u64;
                Some((Ok(chunk), (inner, count)))
            }
            Some(Err(e)) => {
                count.error = Some(e.to_string());
                Some((Err(e), (inner, count)))
            }
            None => None,
        }
    })
}

/// A link lifetime from `?expires=` (default 6 h).
pub(crate) fn lifetime(value: Option<&str>) -> Result<Duration, String> {
    match value {
        None => Ok(crate::links::DEFAULT_LINK_LIFETIME),
        Some(v) => crate::links::parse_lifetime(v),
    }
}
