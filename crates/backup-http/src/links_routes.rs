//! Download links: issuing them (`POST /images/{name}/link`,
//! `GET /links.csv`) and serving the service's own (`GET /dl/{name}`).
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use backup_core::DownloadLink;
use backup_core::{Call, Trigger};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Role;
use crate::links::{links_csv, SignedLinks};
use crate::request::{engine_error, error, Audit, Req};
use crate::service::Service;
use crate::serving::{lifetime, servable, serve_image};

#[derive(Debug, Deserialize)]
pub(crate) struct LinkQuery {
    expires: Option<String>,
}

/// The signer of the service's own links, at the URL the client used
/// (or `[http] public_url`).
fn signer(service: &Service, req: &Req) -> Result<SignedLinks, Box<Response>> {
    let engine = &service.inner.engine;
    let origin = match &engine.config().http.public_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let host = req
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .ok_or_else(|| {
                    Box::new(error(
                        StatusCode::BAD_REQUEST,
                        "input",
                        "no Host header to build the link from: set [http] public_url",
                    ))
                })?;
            format!("https://{host}")
        }
    };
    Ok(SignedLinks::new(
        &engine.config().appliance.state_dir,
        &format!("{origin}{}", req.base),
    ))
}

/// Links to `images` (all when empty) valid for `lifetime`: the storage's
/// presigned URLs where it can presign, else the service's own.
async fn issue(
    service: &Service,
    req: &Req,
    actor: &str,
    images: &[String],
    lifetime: Duration,
) -> Result<Vec<DownloadLink>, Response> {
    let signer = signer(service, req).map_err(|r| *r)?;
    let call = Call::new().actor(actor).trigger(Trigger::Http);
    service
        .inner
        .engine
        .with_call(call)
        .links_signed(images, lifetime, &signer)
        .await
        .map_err(|e| engine_error(&e))
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
    match issue(&service, &req, &actor, &[name.to_string()], lifetime).await {
        Ok(links) if !links.is_empty() => {
            req.audit(&service, Audit::new(actor, format!("link {name}"), "done"));
            let link = &links[0];
            Json(json!({"url": link.url, "expires": link.expires.to_rfc3339()})).into_response()
        }
        Ok(_) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no image {name}"),
        ),
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
pub(crate) async fn links_csv_route(
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
    match issue(&service, &req, &actor, &[], lifetime).await {
        Ok(links) => {
            req.audit(
                &service,
                Audit::new(actor, format!("links ({} images)", links.len()), "done"),
            );
            (
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                links_csv(&links),
            )
                .into_response()
        }
        Err(response) => {
            req.audit(
                &service,
                Audit::new(actor, "links", "failed").error(format!("status {}", response.status())),
            );
            response
        }
    }
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
