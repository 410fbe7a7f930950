//! The router, and the endpoints that run a backup or read the engine's
//! records (links are in links_routes.rs, image transfers in serving.rs).
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backup_core::{
    Call, CreateOptions, CreateReport, Destination, Event, ImageStream, Outcome, Progress, Trigger,
};
use chrono::Utc;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::auth::Role;
use crate::request::{engine_error, error, Audit, Req};
use crate::service::{RunView, Service};
use crate::serving::serve_image;

/// The service's routes, to serve as they are or to `.nest()` under a
/// prefix of an embedder's own router. The listener must insert a
/// [`crate::Peer`] into each request (or serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`).
pub fn router(service: Service) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/", get(crate::page::page))
        .route("/backup", get(backup))
        .route("/ssg/backup", get(backup))
        .route("/runs/{id}", get(run))
        .route("/status", get(status))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/images", get(images))
        .route(
            "/images/{*path}",
            get(image).head(image).post(crate::links_routes::link),
        )
        .route("/links.csv", get(crate::links_routes::links_csv_route))
        .route("/dl/{*name}", get(crate::links_routes::download))
        .fallback(not_found)
        .with_state(service)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn not_found(State(service): State<Service>, req: Req) -> Response {
    req.audit(
        &service,
        Audit::new(req.actor(None), req.path.clone(), "refused").error("no such route"),
    );
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        &format!("no such route: {} {}", req.method, req.path),
    )
}

/// The query of `GET /backup`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackupQuery {
    node: Option<String>,
    audits: Option<String>,
    halt: Option<String>,
}

fn flag(name: &str, value: Option<&str>) -> Result<bool, String> {
    match value {
        None | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") | Some("on") => Ok(true),
        Some(other) => Err(format!("{name}={other:?}: say true or false")),
    }
}

/// `GET /backup?node=NAME&audits=true|false[&halt=true]`: a fresh backup
/// of this node, streamed as the response body.
async fn backup(
    State(service): State<Service>,
    req: Req,
    query: Result<Query<BackupQuery>, QueryRejection>,
) -> Response {
    let principal = match req.authorize(&service, Role::Admin).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    let refuse = |status: StatusCode, kind: &str, message: String| {
        req.audit(
            &service,
            Audit::new(actor.clone(), req.path.clone(), "refused").error(message.clone()),
        );
        error(status, kind, &message)
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "input",
                format!("bad query: {}", e.body_text()),
            )
        }
    };
    let (audits, halt) = match (
        flag("audits", q.audits.as_deref()),
        flag("halt", q.halt.as_deref()),
    ) {
        (Ok(a), Ok(h)) => (a, h),
        (Err(e), _) | (_, Err(e)) => return refuse(StatusCode::BAD_REQUEST, "input", e),
    };
    let engine = service.inner.engine.clone();
    let node = engine.config().appliance.node.clone();
    match q.node.as_deref() {
        Some(n) if n == node => {}
        Some(n) => {
            return refuse(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("unknown node {n:?}: this service backs up node {node:?}"),
            )
        }
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "input",
                format!("say which node: ?node={node}"),
            )
        }
    }

    let id = run_id();
    let (writer, reader) = tokio::io::duplex(256 * 1024);
    let (opened_tx, opened_rx) = tokio::sync::oneshot::channel::<String>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Result<(), String>>();
    let mut stream = ImageStream::new(writer)
        .named("the HTTP response")
        .on_open(move |name| {
            let _ = opened_tx.send(name.to_string());
        });
    let stored = engine.config().http.store_served && engine.storage().is_some();
    if stored {
        stream = stream.also_store();
    }
    let mut opts = CreateOptions::default();
    opts.include_audits = audits;
    opts.halt = halt;
    opts.destination = Destination::Stream(stream);
    service.inner.runs.insert(RunView {
        id: id.clone(),
        outcome: "running".into(),
        actor: actor.clone(),
        started: Utc::now(),
        finished: None,
        image: None,
        size: 0,
        stored,
        failed_components: Vec::new(),
        reason: None,
    });
    let (task_service, task_req, task_id, task_actor) =
        (service.clone(), req.clone(), id.clone(), actor.clone());
    // The run goes on if the client goes away: it then fails on its first
    // write, is recorded and audited as failed, and publishes nothing.
    let (error_tx, error_rx) = tokio::sync::oneshot::channel::<Response>();
    tokio::spawn(async move {
        let call = Call::new()
            .actor(task_actor.clone())
            .trigger(Trigger::Http)
            .progress(Arc::new(LogWarnings));
        let result = engine.with_call(call).create(&opts).await;
        drop(opts); // the stream's writer: the body ends after what was written
        let (audit, view_change, done) = finished(&task_actor, &result);
        task_service.inner.runs.update(&task_id, view_change);
        task_req.audit(&task_service, audit);
        if let Err(e) = &result {
            let _ = error_tx.send(engine_error(e));
        }
        let _ = done_tx.send(done);
    });

    let name = match opened_rx.await {
        Ok(name) => name,
        Err(_) => {
            // The run ended before its first byte: its error has its status.
            return match error_rx.await {
                Ok(mut response) => {
                    if let Ok(v) = HeaderValue::from_str(&id) {
                        response.headers_mut().insert("x-backup-run", v);
                    }
                    response
                }
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "failed",
                    "the backup ended without an image",
                ),
            };
        }
    };
    let file = name.rsplit('/').next().unwrap_or(&name).to_string();
    let tail = futures::stream::once(async move {
        match done_rx.await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(Err(std::io::Error::other(reason))),
            Err(_) => Some(Err(std::io::Error::other("the backup stopped"))),
        }
    })
    .filter_map(|x| async move { x });
    let body = ReaderStream::new(reader).chain(tail);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        )
        .header(header::CACHE_CONTROL, "no-store")
        .header("x-backup-run", id)
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| error(StatusCode::INTERNAL_SERVER_ERROR, "failed", &e.to_string()))
}

/// The progress of a backup started over HTTP: its warnings go to the
/// service's log (the run's own log file has every line); nothing is drawn
/// on the server's terminal.
struct LogWarnings;

impl Progress for LogWarnings {
    fn event(&self, event: &Event) {
        if let Event::Warning { component, message } = event {
            match component {
                Some(c) => tracing::warn!("{c}: {message}"),
                None => tracing::warn!("{message}"),
            }
        }
    }
}

type ViewChange = Box<dyn FnOnce(&mut RunView) + Send>;

/// A finished run's audit line, its view for `GET /runs/{id}`, and what the
/// response body's end says (an error breaks the transfer).
fn finished(
    actor: &str,
    result: &backup_core::Result<CreateReport>,
) -> (Audit, ViewChange, Result<(), String>) {
    match result {
        Ok(report) => {
            let failed = report.manifest.failed_components();
            let outcome = report.outcome.to_string();
            let (image, size) = (report.image.clone(), report.size);
            // The request's line says `done` or `partial`; the engine's
            // own `create` line says `success` or `partial`.
            let requested = if report.outcome == Outcome::Success {
                "done"
            } else {
                "partial"
            };
            let audit = Audit::new(actor.to_string(), image.clone(), requested).bytes(size);
            let change: ViewChange = Box::new(move |v: &mut RunView| {
                v.outcome = outcome;
                v.finished = Some(Utc::now());
                v.image = Some(image);
                v.size = size;
                v.failed_components = failed;
            });
            (audit, change, Ok(()))
        }
        Err(e) => {
            let outcome = e.kind().audit_outcome();
            let reason = crate::request::reason(e);
            let audit = Audit::new(actor.to_string(), "backup", outcome).error(reason.clone());
            let r = reason.clone();
            let change: ViewChange = Box::new(move |v: &mut RunView| {
                v.outcome = "failed".into();
                v.finished = Some(Utc::now());
                v.reason = Some(r);
            });
            (audit, change, Err(reason))
        }
    }
}

fn run_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = getrandom::getrandom(&mut bytes);
    format!(
        "{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        hex::encode(bytes)
    )
}

/// `GET /runs/{id}`.
async fn run(State(service): State<Service>, req: Req, Path(id): Path<String>) -> Response {
    let principal = match req.authorize(&service, Role::Auditor).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    match service.inner.runs.get(&id) {
        Some(view) => {
            req.audit(&service, Audit::new(actor, id, "done"));
            Json(view).into_response()
        }
        None => {
            req.audit(
                &service,
                Audit::new(actor, id.clone(), "refused").error("unknown run"),
            );
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                &format!("no run {id} is known to this service (it keeps the last 200, until it restarts)"),
            )
        }
    }
}

/// `GET /status`: what `backup status --json` prints.
async fn status(State(service): State<Service>, req: Req) -> Response {
    let principal = match req.authorize(&service, Role::Auditor).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    match service.inner.engine.status() {
        Ok(view) => {
            req.audit(&service, Audit::new(actor, "status", "done"));
            Json(view).into_response()
        }
        Err(e) => {
            req.audit(
                &service,
                Audit::new(actor, "status", "failed").error(e.to_string()),
            );
            engine_error(&e)
        }
    }
}

/// `GET /images`: what `backup --json list` prints.
async fn images(State(service): State<Service>, req: Req) -> Response {
    let principal = match req.authorize(&service, Role::Auditor).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    match service.inner.engine.list().await {
        Ok(list) => {
            req.audit(&service, Audit::new(actor, "images", "done"));
            Json(list).into_response()
        }
        Err(e) => {
            req.audit(
                &service,
                Audit::new(actor, "images", "failed").error(e.to_string()),
            );
            engine_error(&e)
        }
    }
}

/// `GET`/`HEAD /images/{name}`: a stored image, with `Range`.
async fn image(State(service): State<Service>, req: Req, Path(name): Path<String>) -> Response {
    let principal = match req.authorize(&service, Role::Admin).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let actor = req.actor(Some(&principal.user));
    serve_image(&service, &req, actor, &name).await
}
