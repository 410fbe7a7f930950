//! The choreography around every operation, written once: the lock (and the
//! record of a run skipped for it), the status file, the hooks and the audit
//! record.
use std::future::Future;
use std::time::Instant;

use chrono::{DateTime, Utc};

use crate::context::{Context, Trigger};
use crate::image::Outcome;
use crate::ops::hooks::{run_hook, HookEnv};
use crate::ops::lock::OperationLock;
use crate::ops::status::{CurrentRun, RunRecord, StatusFile, StatusStore};
use crate::{Error, Result};

/// An operation of the engine, with the names the lock, the status file and
/// the audit log know it by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// A backup an operator (or a program) asked for.
    Backup,
    /// A backup the schedule started.
    ScheduledBackup,
    /// A restore.
    Restore,
    /// A restore's plan, writing nothing.
    RestoreDryRun,
    /// Applying the retention policy.
    Prune,
    /// Checking an image end to end.
    Verify,
    /// Writing an image's decrypted payload.
    Decrypt,
    /// Sealing a payload into an image.
    Encrypt,
    /// Downloading an image to a local file.
    Fetch,
    /// Presigned download links.
    Links,
    /// Setting the domain master secret.
    KeyInit,
    /// Checking a passphrase against the keyring.
    KeyCheck,
    /// Replacing the domain master secret.
    KeyRotate,
    /// Giving images a keyslot under the current secret.
    KeyRewrap,
    /// Writing one node's image out of a cluster bundle.
    ClusterExtract,
    /// A cluster backup: every node's image pulled into one bundle.
    ClusterCreate,
    /// A restore drill: an image restored into scratch space and checked.
    Drill,
    /// Copying an image to a second storage (`backup copy`).
    Copy,
}

impl Operation {
    /// The operation as the lock and `backup status` name it (`backup`,
    /// `scheduled backup`, `restore`, `prune`, …).
    pub fn status_name(self) -> &'static str {
        match self {
            Operation::Backup => "backup",
            Operation::ScheduledBackup => "scheduled backup",
            Operation::ClusterCreate => "cluster backup",
            other => other.audit_name(),
        }
    }

    /// The operation as the audit log names it (`create`, `restore`,
    /// `key.rotate`, …).
    pub fn audit_name(self) -> &'static str {
        match self {
            Operation::Backup | Operation::ScheduledBackup => "create",
            Operation::Restore => "restore",
            Operation::RestoreDryRun => "restore.dry-run",
            Operation::Prune => "prune",
            Operation::Verify => "verify",
            Operation::Decrypt => "decrypt",
            Operation::Encrypt => "encrypt",
            Operation::Fetch => "fetch",
            Operation::Links => "links",
            Operation::KeyInit => "key.init",
            Operation::KeyCheck => "key.check",
            Operation::KeyRotate => "key.rotate",
            Operation::KeyRewrap => "key.rewrap",
            Operation::ClusterExtract => "cluster.extract",
            Operation::ClusterCreate => "cluster.create",
            Operation::Drill => "drill",
            Operation::Copy => "copy",
        }
    }

    /// The operation in the status file's records of finished runs: every
    /// backup is a `backup`, however it was started.
    fn record_name(self) -> &'static str {
        match self {
            Operation::ScheduledBackup => "backup",
            other => other.status_name(),
        }
    }

    /// Whether the operation runs alone, under the operation lock.
    fn takes_lock(self) -> bool {
        matches!(
            self,
            Operation::Backup
                | Operation::ScheduledBackup
                | Operation::Restore
                | Operation::Prune
                | Operation::ClusterCreate
                | Operation::Drill
                | Operation::Copy
        )
    }

    /// Whether `backup status` shows the operation while it runs.
    fn in_status(self) -> bool {
        matches!(
            self,
            Operation::Backup
                | Operation::ScheduledBackup
                | Operation::Restore
                | Operation::ClusterCreate
                | Operation::Drill
        )
    }
}

/// One run of an [`Operation`]: holds the lock while it lives (if the
/// operation takes it), keeps the status file, runs the hooks and writes the
/// audit record.
pub(crate) struct RunGuard<'e> {
    engine: &'e Context<'e>,
    op: Operation,
    started: Instant,
    lock: Option<OperationLock>,
    store: StatusStore,
    /// The status file as this run keeps it (operations shown in the status).
    status: Option<StatusFile>,
    /// The note on an interrupted run this one took over.
    took_over: Option<String>,
}

impl<'e> RunGuard<'e> {
    /// Starts a run of `op` on `target`. An operation that runs alone takes
    /// the lock; if another operation holds it, the skip is recorded (status,
    /// audit log, a warning) and this fails with [`Error::Busy`]. One shown
    /// in the status takes over the record of a run that never finished.
    /// Scratch space of runs that are gone is removed.
    pub(crate) fn start(
        engine: &'e Context<'e>,
        op: Operation,
        target: &str,
    ) -> Result<RunGuard<'e>> {
        let started = Instant::now();
        let store = StatusStore::in_state_dir(engine.state_dir());
        let mut guard = RunGuard {
            engine,
            op,
            started,
            lock: None,
            store,
            status: None,
            took_over: None,
        };
        if !op.takes_lock() {
            engine.remove_stale_scratch(false);
            return Ok(guard);
        }
        let mut nested = false;
        match OperationLock::acquire(engine.state_dir(), op.status_name()) {
            Ok(lock) => guard.lock = Some(lock),
            // A cluster backup backing up its own node: the lock is this
            // very run's.
            Err(Error::Busy(_))
                if engine.trigger == Trigger::Cluster && held_by_own_cluster_run(engine) =>
            {
                nested = true;
            }
            Err(Error::Busy(who)) => {
                let reason = format!("{who}; this {} was skipped", op.status_name());
                let record = RunRecord {
                    time: Utc::now(),
                    operation: op.status_name().to_string(),
                    outcome: Outcome::Skipped,
                    image: None,
                    size: 0,
                    reason: Some(reason.clone()),
                };
                let _ = guard.store.record_skipped(&record);
                guard.audit(target, "skipped", 0, Some(reason.clone()));
                engine.warn(reason);
                return Err(Error::Busy(who));
            }
            Err(e) => return Err(e),
        }
        engine.remove_stale_scratch(true);
        if op.in_status() {
            let mut status = guard.store.load().unwrap_or_default();
            if !nested {
                guard.took_over = guard.take_over(&mut status);
            }
            guard.status = Some(status);
        }
        Ok(guard)
    }

    /// The note on an interrupted run this one took over, for its log.
    pub(crate) fn took_over(&mut self) -> Option<String> {
        self.took_over.take()
    }

    /// Shows the run in the status as in progress on `image`.
    pub(crate) fn show_running(&mut self, image: Option<&str>, since: DateTime<Utc>) -> Result<()> {
        let op = self.op;
        let status = self.status.get_or_insert_with(StatusFile::default);
        status.current = Some(CurrentRun {
            operation: op.status_name().into(),
            pid: std::process::id(),
            started: since,
            image: image.map(str::to_string),
            component: None,
            bytes_done: 0,
        });
        self.store.store(status)
    }

    /// Hands the status file to whoever keeps it up to date while the run
    /// progresses; [`RunGuard::give_back_status`] returns it.
    pub(crate) fn lend_status(&mut self) -> (StatusStore, StatusFile) {
        (self.store.clone(), self.status.take().unwrap_or_default())
    }

    /// Takes back the status file lent out.
    pub(crate) fn give_back_status(&mut self, status: StatusFile) {
        self.status = Some(status);
    }

    /// Records in the status how the run ended (`record`: the backup or the
    /// failure) and that it no longer runs. Published backups are recorded
    /// as the last backup and as the last success or failure; a failed
    /// restore as the last failure. `strict`: a status that cannot be
    /// written fails the run instead of being a warning.
    pub(crate) fn record_end(&mut self, record: Option<RunRecord>, strict: bool) -> Result<()> {
        let is_backup = matches!(
            self.op,
            Operation::Backup | Operation::ScheduledBackup | Operation::ClusterCreate
        );
        let status = self.status.get_or_insert_with(StatusFile::default);
        status.current = None;
        if let Some(record) = record {
            if record.outcome == Outcome::Success {
                status.last_success = Some(record.clone());
            } else {
                status.last_failure = Some(record.clone());
            }
            if is_backup {
                status.last_backup = Some(record);
            }
        }
        match self.store.store(status) {
            Ok(()) => Ok(()),
            Err(e) if strict => Err(e),
            Err(e) => {
                self.engine
                    .warn(format!("the status could not be written: {e}"));
                Ok(())
            }
        }
    }

    /// Keeps a finished restore (with its report) as the last restore; it is
    /// written with the end of the run.
    pub(crate) fn record_restore(&mut self, record: crate::ops::status::RestoreRecord) {
        self.status
            .get_or_insert_with(StatusFile::default)
            .last_restore = Some(record);
    }

    /// Keeps a finished drill as the last drill; it is written with the end
    /// of the run.
    pub(crate) fn record_drill(&mut self, report: crate::ops::status::DrillReport) {
        self.status
            .get_or_insert_with(StatusFile::default)
            .last_drill = Some(report);
    }

    /// The status record of this run failing with `e` on `image`.
    pub(crate) fn failure_record(&self, image: Option<&str>, e: &Error) -> RunRecord {
        RunRecord {
            time: Utc::now(),
            operation: self.op.record_name().into(),
            outcome: Outcome::Failed,
            image: image.map(str::to_string),
            size: 0,
            reason: Some(e.to_string()),
        }
    }

    /// Appends the audit record of this run; a failure to write it is
    /// reported, not fatal.
    pub(crate) fn audit(&self, target: &str, outcome: &str, bytes: u64, error: Option<String>) {
        self.engine.audit(
            self.op.audit_name(),
            target,
            outcome,
            bytes,
            self.started,
            error,
        );
    }

    /// Audits the run's result: `done` with its bytes, or the outcome the
    /// error's kind gives with the error.
    pub(crate) fn audit_result<T>(
        &self,
        target: &str,
        result: &Result<T>,
        bytes: impl Fn(&T) -> u64,
    ) {
        match result {
            Ok(v) => self.audit(target, "done", bytes(v), None),
            Err(e) => self.audit(target, e.kind().audit_outcome(), 0, Some(e.to_string())),
        }
    }

    /// Audits a restore put into place, with its report in short.
    pub(crate) fn audit_restored(&self, target: &str, summary: String) {
        let mut record = crate::ops::audit::AuditRecord::new(
            self.engine.actor.clone(),
            self.op.audit_name(),
            target,
            "done",
        );
        record.duration_ms = self.started.elapsed().as_millis() as u64;
        record.summary = Some(summary).filter(|s| !s.is_empty());
        self.engine.append_audit(record);
    }

    /// Runs the `before` hook of a backup; its failure fails the backup.
    pub(crate) fn before_hook(&self, image: &str) -> Result<()> {
        run_hook(
            "before",
            &self.engine.config.hooks.before,
            &self.hook_env("started", image, vec![]),
        )
    }

    /// Runs the `after` hook of a published backup; its failure is a warning.
    pub(crate) fn after_hook(&self, outcome: Outcome, image: &str, failed: Vec<String>) {
        let env = self.hook_env(outcome.as_str(), image, failed);
        if let Err(e) = run_hook("after", &self.engine.config.hooks.after, &env) {
            self.engine.warn(e.to_string());
        }
    }

    /// Runs the `on_failure` hook of a failed backup; its failure is a warning.
    pub(crate) fn on_failure_hook(&self, image: &str) {
        let env = self.hook_env("failed", image, vec![]);
        if let Err(e) = run_hook("on_failure", &self.engine.config.hooks.on_failure, &env) {
            self.engine.warn(e.to_string());
        }
    }

    /// Runs the `on_failure` hook of a failed drill, with `BACKUP_HOOK=drill`
    /// and the components whose restore or check failed; its failure is a
    /// warning.
    pub(crate) fn on_drill_failure_hook(&self, image: &str, failed: Vec<String>) {
        let mut env = self.hook_env("failed", image, failed);
        env.kind = Some("drill".into());
        if let Err(e) = run_hook("on_failure", &self.engine.config.hooks.on_failure, &env) {
            self.engine.warn(e.to_string());
        }
    }

    fn hook_env(&self, outcome: &str, image: &str, failed: Vec<String>) -> HookEnv {
        HookEnv {
            outcome: outcome.to_string(),
            image: image.to_string(),
            failed,
            node: self.engine.config.appliance.node.clone(),
            kind: None,
            copy_destination: None,
        }
    }

    /// Notes a previous run that never finished (crash, `kill -9`): a
    /// warning, an `interrupted` audit record under its own name, and the
    /// status's last failure. Returns the note.
    fn take_over(&self, status: &mut StatusFile) -> Option<String> {
        let previous = status.current.take();
        let stale = self.lock.as_ref().and_then(|l| l.stale.clone());
        let (operation, pid, since) = match (&previous, &stale) {
            (Some(p), _) => (p.operation.clone(), p.pid, p.started),
            (None, Some(h)) => (h.operation.clone(), h.pid, h.started),
            (None, None) => return None,
        };
        let reason = format!(
            "interrupted: the {operation} started at {} by pid {pid} stopped before it finished (crash or kill); its lock was taken over",
            since.format("%Y-%m-%d %H:%M:%S UTC")
        );
        self.engine.warn(reason.clone());
        self.engine.audit(
            &operation,
            previous
                .as_ref()
                .and_then(|p| p.image.as_deref())
                .unwrap_or("-"),
            "interrupted",
            0,
            self.started,
            Some(reason.clone()),
        );
        status.last_failure = Some(RunRecord {
            time: Utc::now(),
            operation,
            outcome: Outcome::Failed,
            image: previous.and_then(|p| p.image),
            size: 0,
            reason: Some(reason.clone()),
        });
        Some(reason)
    }
}

/// Whether the operation lock is held by a cluster backup of this process
/// (whose own node's backup then runs under it).
fn held_by_own_cluster_run(engine: &Context<'_>) -> bool {
    crate::ops::lock::probe(engine.state_dir())
        .ok()
        .flatten()
        .is_some_and(|h| {
            h.pid == std::process::id() && h.operation == Operation::ClusterCreate.status_name()
        })
}

/// Runs an operation that needs no more of the choreography than the
/// guard's start and audit record.
impl Context<'_> {
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

    /// Runs `fut`, an operation carried out outside the engine (a cluster
    /// backup), as `op` on `target` under the whole choreography: the lock
    /// (or [`Error::Busy`], the skip recorded), the status showing it while
    /// it runs, and at its end the record `fut` gives (its outcome, object,
    /// size and reason) in the status and the audit log. An error of `fut`
    /// is recorded as a failure.
    pub(crate) async fn guarded<T, F>(&self, op: Operation, target: &str, fut: F) -> Result<T>
    where
        F: Future<Output = Result<(T, RunRecord)>>,
    {
        let mut guard = RunGuard::start(self, op, target)?;
        guard.show_running(Some(target), Utc::now())?;
        match fut.await {
            Ok((value, mut record)) => {
                record.operation = op.record_name().into();
                // The run may have backed up this node meanwhile, which
                // keeps the status file too.
                guard.status = Some(guard.store.load().unwrap_or_default());
                let object = record.image.clone().unwrap_or_else(|| target.to_string());
                let (outcome, size, reason) = (record.outcome, record.size, record.reason.clone());
                guard.record_end(Some(record), false)?;
                guard.audit(&object, outcome.as_str(), size, reason);
                Ok(value)
            }
            Err(e) => {
                let record = guard.failure_record(None, &e);
                let _ = guard.record_end(Some(record), false);
                guard.audit(target, e.kind().audit_outcome(), 0, Some(e.to_string()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::audit::AuditLog;
    use crate::ErrorKind;

    #[test]
    fn a_run_skipped_for_the_lock_is_recorded_under_its_status_and_audit_names() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let text = format!(
            "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = {:?}\n",
            state.display().to_string()
        );
        let config = crate::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let engine = crate::Engine::builder(config).build().unwrap();
        let engine = engine.context(&crate::Call::default());
        let held = OperationLock::acquire(&state, Operation::Restore.status_name()).unwrap();

        let err = RunGuard::start(&engine, Operation::ScheduledBackup, "-")
            .err()
            .expect("the lock is held");
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        let skipped = StatusStore::in_state_dir(&state)
            .last_skipped()
            .unwrap()
            .expect("the skip is in the status");
        assert_eq!(skipped.operation, "scheduled backup");
        assert_eq!(skipped.outcome, Outcome::Skipped);
        let audit = AuditLog::in_state_dir(&state).read(None).unwrap();
        let last = audit.last().expect("the skip is audited");
        assert_eq!(
            (last.operation.as_str(), last.outcome.as_str()),
            ("create", "skipped")
        );
        let reason = last.error.as_deref().unwrap_or_default();
        assert!(
            reason.contains("restore") && reason.contains("this scheduled backup was skipped"),
            "{reason}"
        );

        // Operations that do not run alone start while the lock is held.
        assert!(RunGuard::start(&engine, Operation::Verify, "x.bkp").is_ok());
        drop(held);
        let mut guard = RunGuard::start(&engine, Operation::Restore, "x.bkp").unwrap();
        guard.show_running(Some("x.bkp"), Utc::now()).unwrap();
        let status = StatusStore::in_state_dir(&state).load().unwrap();
        assert_eq!(status.current.unwrap().operation, "restore");
    }

    #[test]
    fn a_guarded_run_records_its_outcome_in_the_status_and_audit_log_and_runs_alone() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let text = format!(
            "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = {:?}\n",
            state.display().to_string()
        );
        let config = crate::Config::parse(&text, std::path::Path::new("test.toml")).unwrap();
        let engine = crate::Engine::builder(config).build().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let partial = runtime.block_on(engine.guarded(
            Operation::ClusterCreate,
            "edge.20260101T000000Z.tar",
            async {
                let record = RunRecord {
                    time: Utc::now(),
                    operation: String::new(),
                    outcome: Outcome::Partial,
                    image: Some("edge.20260101T000000Z.tar".into()),
                    size: 42,
                    reason: Some("data-2 failed: gone".into()),
                };
                Ok((7, record))
            },
        ));
        assert_eq!(partial.unwrap(), 7);
        let status = StatusStore::in_state_dir(&state).load().unwrap();
        assert!(status.current.is_none());
        let last = status.last_backup.expect("the run is the last backup");
        assert_eq!(last.operation, "cluster backup");
        assert_eq!(last.outcome, Outcome::Partial);
        assert_eq!(last.reason.as_deref(), Some("data-2 failed: gone"));
        let audit = AuditLog::in_state_dir(&state).read(None).unwrap();
        let last = audit.last().unwrap();
        assert_eq!(
            (
                last.operation.as_str(),
                last.outcome.as_str(),
                last.target.as_str(),
                last.bytes
            ),
            ("cluster.create", "partial", "edge.20260101T000000Z.tar", 42)
        );
        assert_eq!(last.error.as_deref(), Some("data-2 failed: gone"));

        let held = OperationLock::acquire(&state, Operation::Backup.status_name()).unwrap();
        let started = std::cell::Cell::new(false);
        let busy = runtime.block_on(engine.guarded(Operation::ClusterCreate, "x.tar", async {
            started.set(true);
            Err::<((), RunRecord), _>(Error::Input("never".into()))
        }));
        assert_eq!(busy.unwrap_err().kind(), ErrorKind::Busy);
        assert!(
            !started.get(),
            "a run that cannot take the lock never starts"
        );
        drop(held);
    }
}
