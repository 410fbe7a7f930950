//! Download links: issuing them (`POST /images/{name}/link`,
//! `GET /links.csv`) and serving the service's own (`GET /dl/{name}`).
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backup_core::{Call, Trigger};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Role;
use crate::request::{engine_error, error, Audit, Req};
use crate::routes::{lifetime, servable, serve_image};
use crate::service::Service;

#[derive(Debug, Deserialize)]
pub(crate) struct LinkQuery {
    expires: Option<String>,
}

/// One link issued.
struct Issued {
    url: String,
    expires: DateTime<Utc>,
}

/// A link to `name` valid for `lifetime`: the storage's presigned URL where
/// it can presign, else the service's own signed `/dl/` URL.
async fn issue(
    service: &Service,
    req: &Req,
    actor: &str,
    name: &str,
    lifetime: Duration,
) -> Result<Issued, Response> {
    let engine = &service.inner.engine;
    let presigns = engine
        .storage()
        .map(|s| s.capabilities().presign)
        .unwrap_or(false);
    if presigns {
        let call = Call::new().actor(actor).trigger(Trigger::Http);
        let links = engine
            .with_call(call)
            .links(&[name.to_string()], lifetime)
            .await
            .map_err(|e| engine_error(&e))?;
        let link = links.into_iter().next().ok_or_else(|| {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no image {name}"),
            )
        })?;
        return Ok(Issued {
            url: link.url,
            expires: link.expires,
        });
    }
    let expires = Utc::now() + chrono::Duration::seconds(lifetime.as_secs() as i64);
    let exp = expires.timestamp();
    let sig = service.inner.links.sign(name, exp).map_err(|e| {
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "failed",
            &format!("the link key: {e}"),
        )
    })?;
    let origin = match &engine.config().http.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| {
                    error(
                        StatusCode::BAD_REQUEST,
                        "input",
                        "no Host header to build the link from: set [http] public_url",
                    )
                })?;
            format!("https://{host}")
        }
    };
    Ok(Issued {
        url: format!(
            "{origin}{}/dl/{}?exp={exp}&sig={sig}",
            req.base,
            encode_path(name)
        ),
        expires,
    })
}

fn encode_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// `POST /images/{name}/link?expires=6h`.
pub(crate) async fn link(
    State(service): State<Service>,
    req: Req,
    Path(path): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let principal = match req.authorize(&service, Role::Admin).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    let refuse = |status: StatusCode, kind: &str, message: String| {
        req.audit(
            &service,
            Audit::new(actor.clone(), path.clone(), "refused").error(message.clone()),
        );
        error(status, kind, &message)
    };
    let Some(name) = path.strip_suffix("/link") else {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "input",
            "POST is for /images/{name}/link".into(),
        );
    };
    if !servable(name) {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{name}: not an image name"),
        );
    }
    let lifetime = match lifetime(q.expires.as_deref()) {
        Ok(l) => l,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "input", e),
    };
    match service.inner.engine.storage() {
        None => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                "no storage is configured".into(),
            )
        }
        Some(s) => match s.head(name).await {
            Ok(_) => {}
            Err(backup_storage::Error::NotFound { .. }) => {
                return refuse(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no image {name} in {s}"),
                )
            }
            Err(e) => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "failed",
                    format!("{s}: {e}"),
                )
            }
        },
    }
    match issue(&service, &req, &actor, name, lifetime).await {
        Ok(issued) => {
            req.audit(&service, Audit::new(actor, format!("link {name}"), "done"));
            Json(json!({"url": issued.url, "expires": issued.expires.to_rfc3339()})).into_response()
        }
        Err(response) => {
            req.audit(
                &service,
                Audit::new(actor, format!("link {name}"), "failed")
                    .error(format!("status {}", response.status())),
            );
            response
        }
    }
}

/// `GET /links.csv?expires=6h`: a link to every image.
pub(crate) async fn links_csv(
    State(service): State<Service>,
    req: Req,
    Query(q): Query<LinkQuery>,
) -> Response {
    let principal = match req.authorize(&service, Role::Admin).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    let lifetime = match lifetime(q.expires.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            req.audit(
                &service,
                Audit::new(actor, "links", "refused").error(e.clone()),
            );
            return error(StatusCode::BAD_REQUEST, "input", &e);
        }
    };
    let images = match service.inner.engine.list().await {
        Ok(list) => list,
        Err(e) => {
            req.audit(
                &service,
                Audit::new(actor, "links", "failed").error(e.to_string()),
            );
            return engine_error(&e);
        }
    };
    let mut csv = String::from("image,size,url,expires\n");
    for image in &images {
        match issue(&service, &req, &actor, &image.name, lifetime).await {
            Ok(issued) => csv.push_str(&format!(
                "{},{},{},{}\n",
                image.name,
                image.size,
                issued.url,
                issued.expires.to_rfc3339()
            )),
            Err(response) => {
                req.audit(
                    &service,
                    Audit::new(actor, "links", "failed").error(format!(
                        "{}: status {}",
                        image.name,
                        response.status()
                    )),
                );
                return response;
            }
        }
    }
    req.audit(
        &service,
        Audit::new(actor, format!("links ({} images)", images.len()), "done"),
    );
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        csv,
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct DownloadQuery {
    exp: Option<i64>,
    sig: Option<String>,
}

/// `GET /dl/{name}?exp=…&sig=…`: a link the service signed, without
/// credentials; each use audited.
pub(crate) async fn download(
    State(service): State<Service>,
    req: Req,
    Path(name): Path<String>,
    q: Result<Query<DownloadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let actor = req.actor(Some("link"));
    let refuse = |message: &str| {
        req.audit(
            &service,
            Audit::new(actor.clone(), name.clone(), "refused").error(message),
        );
        error(StatusCode::FORBIDDEN, "forbidden", message)
    };
    let (exp, sig) = match q {
        Ok(Query(DownloadQuery {
            exp: Some(exp),
            sig: Some(sig),
        })) => (exp, sig),
        _ => return refuse("not a valid download link (exp and sig are required)"),
    };
    if !service.inner.links.verify(&name, exp, &sig) {
        return refuse("not a valid download link: it was altered, or the link key was rotated");
    }
    if Utc::now().timestamp() > exp {
        return refuse("the download link expired: ask for a new one");
    }
    serve_image(&service, &req, actor, &name).await
}
