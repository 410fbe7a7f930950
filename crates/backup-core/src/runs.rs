//! Operations as an operator sees them: one at a time (lock), visible (status),
//! accountable (audit log), with hooks, a capacity preflight, retention and a
//! log file per backup.
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::context::Context;
use crate::guard::Operation;
use crate::ops::audit::AuditRecord;
use crate::ops::lock::{self, LockHolder};
use crate::ops::status::{CurrentRun, RunRecord, StatusStore};
use crate::{Error, Result};

pub use crate::context::LOGS_DIR;

/// Who an appliance is, as its status names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ApplianceIdentity {
    /// Product name.
    pub product: String,
    /// Product version (restore refuses images of another).
    pub version: String,
    /// Node name.
    pub node: String,
    /// Role in its cluster or HA pair.
    pub role: crate::model::Role,
    /// Cluster name, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// What `backup status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
    /// Which appliance this is: `product`, `version`, `node`, `role`,
    /// `cluster` (a cluster coordinator checks them before it pulls).
    pub appliance: ApplianceIdentity,
    /// `not running`, `in progress` or `interrupted`.
    pub state: String,
    /// The operation in progress (or the interrupted one).
    pub current: Option<CurrentRun>,
    /// Seconds since the current operation started.
    pub elapsed_secs: Option<i64>,
    /// Last backup that succeeded.
    pub last_success: Option<RunRecord>,
    /// Last failure (or interruption) with its reason.
    pub last_failure: Option<RunRecord>,
    /// Last backup, whatever its outcome.
    pub last_backup: Option<RunRecord>,
    /// Last run skipped because another held the lock.
    pub last_skipped: Option<RunRecord>,
    /// Last restore put into place, with its post-restore report.
    pub last_restore: Option<crate::ops::status::RestoreRecord>,
    /// Next scheduled backup, if a schedule is configured.
    pub next_run: Option<DateTime<Utc>>,
    /// The schedule (`cron … (time zone)`), or `schedule disabled`.
    pub schedule: String,
    /// The scheduler daemon, if one runs (scheduled runs happen only then).
    pub daemon: Option<crate::daemon::DaemonInfo>,
    /// The last restore drill: outcome, image, when, duration, failures.
    pub last_drill: Option<crate::ops::status::DrillReport>,
    /// Next scheduled restore drill, if `[drill] cron` is set.
    pub next_drill: Option<DateTime<Utc>>,
    /// The drill schedule (`cron … (time zone)`), or `drills not scheduled`.
    pub drill_schedule: String,
    /// The last copy to each second-copy destination (`[[copy]]`, `backup copy`).
    pub copies: Vec<crate::ops::status::CopyRecord>,
}

/// Audits an operation a frontend carried out itself (key check/rotate).
pub(crate) fn audit_public<T>(
    engine: &Context<'_>,
    operation: Operation,
    target: &str,
    result: &Result<T>,
    started: Instant,
) {
    let (outcome, error) = match result {
        Ok(_) => ("done", None),
        Err(e) => (crate::error::outcome_of(e), Some(e.to_string())),
    };
    engine.audit(operation.audit_name(), target, outcome, 0, started, error);
}

/// The log lines kept for a backup.
pub(crate) fn backup_log(engine: &Context<'_>, image: &str) -> Result<String> {
    let path = engine.log_path(image);
    std::fs::read_to_string(&path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NotFound(format!(
                "no log for {image} on this appliance ({} does not exist)",
                path.display()
            ))
        } else {
            Error::io(format!("reading {}", path.display()), e)
        }
    })
}

/// The status as an operator sees it.
pub(crate) fn status(engine: &Context<'_>) -> Result<StatusView> {
    let store = StatusStore::in_state_dir(engine.state_dir());
    let file = store.load()?;
    let holder: Option<LockHolder> = lock::probe(engine.state_dir())?;
    let (state, current) = match (&file.current, holder) {
        (Some(c), Some(_)) => ("in progress", Some(c.clone())),
        (None, Some(h)) => (
            "in progress",
            Some(CurrentRun {
                operation: h.operation,
                pid: h.pid,
                started: h.started,
                image: None,
                component: None,
                bytes_done: 0,
            }),
        ),
        (Some(c), None) => ("interrupted", Some(c.clone())),
        (None, None) => ("not running", None),
    };
    let (next_run, schedule) = match &engine.config.schedule {
        Some(s) => {
            let parsed = s.parse()?;
            (
                parsed.next_after(Utc::now()),
                format!("{} ({})", s.cron.join(", "), s.timezone),
            )
        }
        None => (None, "schedule disabled".to_string()),
    };
    let drill = engine.config.drill.clone().unwrap_or_default();
    let (next_drill, drill_schedule) = match drill.schedule()? {
        Some(parsed) => (
            parsed.next_after(Utc::now()),
            format!("{} ({})", drill.cron.join(", "), drill.timezone),
        ),
        None => (None, "drills not scheduled".to_string()),
    };
    let a = &engine.config.appliance;
    Ok(StatusView {
        appliance: ApplianceIdentity {
            product: a.product.clone(),
            version: a.version.clone(),
            node: a.node.clone(),
            role: a.role,
            cluster: a.cluster.clone(),
        },
        state: state.to_string(),
        elapsed_secs: current
            .as_ref()
            .map(|c| (Utc::now() - c.started).num_seconds()),
        current,
        last_success: file.last_success,
        last_failure: file.last_failure,
        last_backup: file.last_backup,
        last_restore: file.last_restore,
        copies: file.copies.into_values().collect(),
        last_skipped: store.last_skipped()?,
        next_run,
        schedule,
        daemon: crate::daemon::DaemonInfo::load(engine.state_dir()).filter(|d| d.is_alive()),
        last_drill: file.last_drill,
        next_drill,
        drill_schedule,
    })
}

/// Audit records since `since`.
pub(crate) fn audit_records(
    engine: &Context<'_>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<AuditRecord>> {
    engine.audit_log().read(since)
}
