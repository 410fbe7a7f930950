//! `GET /metrics`: Prometheus text format.
use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use backup_core::{AuditRecord, StatusView};

use crate::auth::Role;
use crate::request::{engine_error, Audit, Req};
use crate::service::Service;

pub(crate) async fn metrics(State(service): State<Service>, req: Req) -> Response {
    let public = service.inner.engine.config().http.metrics_public;
    let actor = if public {
        None
    } else {
        match req.authorize(&service, Role::Auditor).await {
            Ok(p) => Some(req.actor(Some(&p.user))),
            Err(r) => return r,
        }
    };
    let engine = &service.inner.engine;
    let text = engine
        .status()
        .and_then(|status| Ok((status, engine.audit_records(None)?)))
        .map(|(status, audit)| render(&engine.config().appliance.node, &status, &audit));
    match text {
        Ok(text) => {
            if let Some(actor) = actor {
                req.audit(&service, Audit::new(actor, "metrics", "done"));
            }
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(e) => {
            if let Some(actor) = actor {
                req.audit(
                    &service,
                    Audit::new(actor, "metrics", "failed").error(e.to_string()),
                );
            }
            engine_error(&e)
        }
    }
}

/// The metrics of one node from its status and audit log.
pub(crate) fn render(node: &str, status: &StatusView, audit: &[AuditRecord]) -> String {
    let node = node.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: Option<f64>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        if let Some(v) = value {
            let _ = writeln!(out, "{name}{{node=\"{node}\"}} {v}");
        }
    };
    gauge(
        "backup_last_success_timestamp_seconds",
        "When the last successful backup ended (Unix time).",
        status
            .last_success
            .as_ref()
            .map(|r| r.time.timestamp() as f64),
    );
    gauge(
        "backup_last_failure_timestamp_seconds",
        "When the last failed or interrupted run ended (Unix time).",
        status
            .last_failure
            .as_ref()
            .map(|r| r.time.timestamp() as f64),
    );
    let last_backup = audit.iter().rev().find(|r| r.operation == "create");
    gauge(
        "backup_last_duration_seconds",
        "How long the last backup took.",
        last_backup.map(|r| r.duration_ms as f64 / 1000.0),
    );
    gauge(
        "backup_last_size_bytes",
        "Size of the image of the last backup.",
        status.last_backup.as_ref().map(|r| r.size as f64),
    );
    gauge(
        "backup_lock_held",
        "1 while an operation holds this appliance's lock.",
        Some(if status.state == "in progress" {
            1.0
        } else {
            0.0
        }),
    );
    gauge(
        "backup_daemon_next_run_timestamp_seconds",
        "When the scheduler daemon starts the next backup (Unix time); absent without a daemon or schedule.",
        status
            .daemon
            .as_ref()
            .and(status.next_run)
            .map(|t| t.timestamp() as f64),
    );
    let mut runs: BTreeMap<&str, u64> = ["success", "partial", "failed", "skipped", "refused"]
        .into_iter()
        .map(|o| (o, 0))
        .collect();
    for r in audit.iter().filter(|r| r.operation == "create") {
        let outcome = match r.outcome.as_str() {
            "done" => "success",
            other => other,
        };
        if let Some(n) = runs.get_mut(outcome) {
            *n += 1;
        }
    }
    let _ = writeln!(
        out,
        "# HELP backup_runs_total Backups by outcome, from the audit log.\n# TYPE backup_runs_total counter"
    );
    for (outcome, n) in runs {
        let _ = writeln!(
            out,
            "backup_runs_total{{node=\"{node}\",outcome=\"{outcome}\"}} {n}"
        );
    }
    out
}
