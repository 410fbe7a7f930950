//! Operations as an operator sees them: one at a time (lock), visible (status),
//! accountable (audit log), with hooks, a capacity preflight, retention and a
//! log file per backup.
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::engine::{Engine, VerifyReport};
use crate::guard::{Operation, RunGuard};
use crate::image::sidecar_name;
use crate::ops::audit::{AuditLog, AuditRecord};
use crate::ops::lock::{self, LockHolder};
use crate::ops::retention::{self, RetentionDecision, RetentionItem};
use crate::ops::status::{CurrentRun, RunRecord, StatusStore};
use crate::progress::Event;
use crate::restore::{RestoreOptions, RestorePlan, RestoreReport};
use crate::{Error, Result};

/// Directory of per-backup log files in the state directory.
pub const LOGS_DIR: &str = "logs";
/// Age after which `prune` removes an unfinished upload's temporary object:
/// no upload runs that long without writing, so it belongs to a killed run.
const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What `backup status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct StatusView {
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
    /// Next scheduled backup, if a schedule is configured.
    pub next_run: Option<DateTime<Utc>>,
    /// The schedule (`cron … (time zone)`), or `schedule disabled`.
    pub schedule: String,
    /// The scheduler daemon, if one runs (scheduled runs happen only then).
    pub daemon: Option<crate::daemon::DaemonInfo>,
}

impl Engine {
    pub(crate) fn state_dir(&self) -> &Path {
        &self.config.appliance.state_dir
    }

    fn audit_log(&self) -> AuditLog {
        AuditLog::in_state_dir(self.state_dir())
    }

    /// Appends an audit record; a failure to write it is reported, not fatal.
    pub(crate) fn audit(
        &self,
        operation: &str,
        target: &str,
        outcome: &str,
        bytes: u64,
        started: Instant,
        error: Option<String>,
    ) {
        let record = AuditRecord {
            time: Utc::now(),
            actor: self.actor.clone(),
            operation: operation.to_string(),
            target: target.to_string(),
            outcome: outcome.to_string(),
            bytes,
            duration_ms: started.elapsed().as_millis() as u64,
            error,
        };
        if let Err(e) = self.audit_log().append(&record) {
            self.warn(format!("the audit log could not be written: {e}"));
        }
    }

    /// A warning for the operator, through the progress sink.
    pub(crate) fn warn(&self, message: String) {
        self.progress.event(&Event::Warning {
            component: None,
            message,
        });
    }

    /// Audits an operation a frontend carried out itself (key check/rotate).
    pub fn audit_public<T>(
        &self,
        operation: Operation,
        target: &str,
        result: &Result<T>,
        started: Instant,
    ) {
        let (outcome, error) = match result {
            Ok(_) => ("done", None),
            Err(e) => (outcome_of(e), Some(e.to_string())),
        };
        self.audit(operation.audit_name(), target, outcome, 0, started, error);
    }

    /// Runs `fut` as `op` on `target` (see [`RunGuard`]), audited.
    pub(crate) async fn audited<T, F>(
        &self,
        op: Operation,
        target: &str,
        bytes: impl Fn(&T) -> u64,
        fut: F,
    ) -> Result<T>
    where
        F: Future<Output = Result<T>>,
    {
        let guard = RunGuard::start(self, op, target)?;
        let result = fut.await;
        guard.audit_result(target, &result, bytes);
        result
    }

    /// Removes scratch space left by runs that are gone (see
    /// [`crate::util::remove_stale_scratch`]), saying so.
    pub(crate) fn remove_stale_scratch(&self, holding_lock: bool) {
        for path in crate::util::remove_stale_scratch(self.state_dir(), holding_lock) {
            self.progress.event(&Event::Step {
                message: format!(
                    "removed the scratch space of a run that is gone: {}",
                    path.display()
                ),
            });
        }
    }

    pub(crate) fn log_path(&self, image: &str) -> PathBuf {
        let base = image.rsplit('/').next().unwrap_or(image);
        self.state_dir().join(LOGS_DIR).join(format!("{base}.log"))
    }

    /// The log lines kept for a backup.
    pub fn backup_log(&self, image: &str) -> Result<String> {
        let path = self.log_path(image);
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

    /// Verifies an image (audited).
    pub async fn verify(&self, image: &str) -> Result<VerifyReport> {
        self.audited(
            Operation::Verify,
            image,
            |r: &VerifyReport| r.size,
            self.verify_image(image),
        )
        .await
    }

    /// Writes an image's decrypted payload to `out` (audited).
    pub async fn decrypt(&self, image: &str, out: &Path) -> Result<u64> {
        self.audited(
            Operation::Decrypt,
            image,
            |n| *n,
            self.decrypt_image(image, out),
        )
        .await
    }

    /// Seals a payload file into an image (audited), after reading it as
    /// restore would: a payload restore would refuse is not sealed.
    pub async fn encrypt(&self, input: &Path, out: &Path) -> Result<u64> {
        let target = out.display().to_string();
        self.audited(
            Operation::Encrypt,
            &target,
            |n| *n,
            self.encrypt_file(input, out, false),
        )
        .await
    }

    /// Seals an edited payload into an image (audited as `encrypt`),
    /// recording the payload's current content in its manifest: the image
    /// then vouches for the edit. Everything else restore checks is checked.
    pub async fn encrypt_rehash(&self, input: &Path, out: &Path) -> Result<u64> {
        let target = out.display().to_string();
        self.audited(
            Operation::Encrypt,
            &target,
            |n| *n,
            self.encrypt_file(input, out, true),
        )
        .await
    }

    /// Restores an image under the operation lock (audited, in the status).
    pub async fn restore(&self, image: &str, opts: &RestoreOptions) -> Result<RestoreReport> {
        let mut guard = RunGuard::start(self, Operation::Restore, image)?;
        guard.show_running(Some(image), Utc::now())?;
        let result = self.restore_image(image, opts).await;
        let failure = result
            .as_ref()
            .err()
            .map(|e| guard.failure_record(Some(image), e));
        let _ = guard.record_end(failure, true);
        let restored = result.as_ref().ok().map(|r| r.restored.as_slice());
        guard.audit_result(&opts.audit_target(image, restored), &result, |_| 0);
        result
    }

    /// What restoring `image` with `opts` would replace, add, remove and
    /// keep, writing nothing but the audit record (`restore.dry-run`).
    pub async fn restore_plan(&self, image: &str, opts: &RestoreOptions) -> Result<RestorePlan> {
        let audited = opts.audit_target(image, None);
        self.audited(
            Operation::RestoreDryRun,
            &audited,
            |_| 0,
            self.plan_restore(image, opts),
        )
        .await
    }

    /// What a retention run would delete (`dry_run`) or deletes, under the lock.
    pub async fn prune(&self, dry_run: bool) -> Result<Vec<RetentionDecision>> {
        let guard = RunGuard::start(self, Operation::Prune, "-")?;
        if !dry_run {
            self.remove_stale_uploads().await;
        }
        let result = self.apply_retention(dry_run).await;
        // A prune that ran is audited by what it deleted (`prune.delete`).
        if result.is_err() {
            guard.audit_result("-", &result, |_| 0);
        }
        result
    }

    /// Removes the hidden temporary objects of uploads killed more than a
    /// day ago (audited as `prune.partial`); a failure is a warning, not the
    /// prune's failure.
    async fn remove_stale_uploads(&self) {
        let Some(storage) = self.storage() else {
            return;
        };
        let started = Instant::now();
        match storage.remove_stale_uploads(STALE_UPLOAD_AGE).await {
            Ok(removed) => {
                for name in removed {
                    self.progress.event(&Event::Step {
                        message: format!("removed an unfinished upload: {name}"),
                    });
                    self.audit("prune.partial", &name, "done", 0, started, None);
                }
            }
            Err(e) => self.progress.event(&Event::Warning {
                component: None,
                message: format!("unfinished uploads could not be removed: {e}"),
            }),
        }
    }

    /// Applies the retention policy to this node's images (caller holds the lock).
    pub(crate) async fn apply_retention(&self, dry_run: bool) -> Result<Vec<RetentionDecision>> {
        let storage = self
            .storage()
            .cloned()
            .ok_or_else(|| Error::NoStorage("there is nothing to prune".into()))?;
        if !self.config.retention.is_enabled() {
            return Err(Error::Input(
                "no [retention] policy is configured; nothing would be deleted".into(),
            ));
        }
        let node = &self.config.appliance.node;
        let items: Vec<RetentionItem> = self
            .list()
            .await?
            .into_iter()
            .filter_map(|i| {
                let created = i
                    .sidecar
                    .as_ref()
                    .map(|s| s.info.created)
                    .or(i.parsed.as_ref().map(|p| p.created))?;
                let ours = match (&i.sidecar, &i.parsed) {
                    (Some(s), _) => &s.info.node == node,
                    (None, Some(p)) => &p.node == node,
                    _ => false,
                };
                ours.then(|| RetentionItem {
                    name: i.name.clone(),
                    created,
                    outcome: i.sidecar.map(|s| s.manifest.outcome),
                    coverage: i.coverage,
                })
            })
            .collect();
        let decisions = retention::plan(&items, &self.config.retention);
        if dry_run {
            return Ok(decisions);
        }
        for d in decisions.iter().filter(|d| !d.keep) {
            let started = Instant::now();
            let result = async {
                storage.delete(&d.name).await?;
                storage.delete(&sidecar_name(&d.name)).await?;
                Ok::<_, Error>(())
            }
            .await;
            let _ = std::fs::remove_file(self.log_path(&d.name));
            match result {
                Ok(()) => self.audit("prune.delete", &d.name, "done", 0, started, None),
                Err(e) => {
                    self.audit(
                        "prune.delete",
                        &d.name,
                        "failed",
                        0,
                        started,
                        Some(e.to_string()),
                    );
                    return Err(e);
                }
            }
        }
        Ok(decisions)
    }

    /// The status as an operator sees it.
    pub fn status(&self) -> Result<StatusView> {
        let store = StatusStore::in_state_dir(self.state_dir());
        let file = store.load()?;
        let holder: Option<LockHolder> = lock::probe(self.state_dir())?;
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
        let (next_run, schedule) = match &self.config.schedule {
            Some(s) => {
                let parsed = s.parse()?;
                (
                    parsed.next_after(Utc::now()),
                    format!("{} ({})", s.cron.join(", "), s.timezone),
                )
            }
            None => (None, "schedule disabled".to_string()),
        };
        Ok(StatusView {
            state: state.to_string(),
            elapsed_secs: current
                .as_ref()
                .map(|c| (Utc::now() - c.started).num_seconds()),
            current,
            last_success: file.last_success,
            last_failure: file.last_failure,
            last_backup: file.last_backup,
            last_skipped: store.last_skipped()?,
            next_run,
            schedule,
            daemon: crate::daemon::DaemonInfo::load(self.state_dir()).filter(|d| d.is_alive()),
        })
    }

    /// Audit records since `since`.
    pub fn audit_records(&self, since: Option<DateTime<Utc>>) -> Result<Vec<AuditRecord>> {
        self.audit_log().read(since)
    }
}

/// The audit outcome of an error.
pub(crate) fn outcome_of(e: &Error) -> &'static str {
    e.kind().audit_outcome()
}
