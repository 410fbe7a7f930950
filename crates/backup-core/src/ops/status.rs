//! The persisted status: what runs now, what last succeeded or failed.
//!
//! `status.json` is written only by the lock holder, atomically (temp file,
//! fsync, rename). A record of a run in progress whose holder no longer holds
//! the lock is shown as `interrupted`, never as `in progress` forever. Runs
//! skipped because another one held the lock go to `skipped.json`, so a
//! skipper never races the holder's writes.
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::image::Outcome;
use crate::{Error, Result};

/// File name of the status in the state directory.
pub(crate) const STATUS_FILE: &str = "status.json";
const SKIPPED_FILE: &str = "skipped.json";

/// The operation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CurrentRun {
    /// `backup`, `scheduled backup`, `restore` or `prune`.
    pub operation: String,
    /// Holder process.
    pub pid: u32,
    /// Start time.
    pub started: DateTime<Utc>,
    /// Image being written or read.
    pub image: Option<String>,
    /// Component being processed.
    pub component: Option<String>,
    /// Content bytes processed so far.
    pub bytes_done: u64,
}

/// A finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// When it ended.
    pub time: DateTime<Utc>,
    /// `create`, `restore`, …
    pub operation: String,
    /// Outcome.
    pub outcome: Outcome,
    /// The image.
    pub image: Option<String>,
    /// Image size.
    #[serde(default)]
    pub size: u64,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The last restore, with its post-restore report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    /// When it ended.
    pub time: DateTime<Utc>,
    /// The image restored.
    pub image: String,
    /// `--target`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<PathBuf>,
    /// What was restored, what was not and why, and the notes.
    pub summary: crate::restore::summary::RestoreSummary,
}

/// The contents of `status.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StatusFile {
    /// Set while an operation runs.
    pub current: Option<CurrentRun>,
    /// The last backup that published an image with outcome success.
    pub last_success: Option<RunRecord>,
    /// The last failed (or interrupted) operation.
    pub last_failure: Option<RunRecord>,
    /// The last backup, whatever its outcome.
    pub last_backup: Option<RunRecord>,
    /// The last time the daemon was known alive (for missed-run reports).
    pub daemon_seen: Option<DateTime<Utc>>,
    /// The last restore that was put into place, with its report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore: Option<RestoreRecord>,
    /// The last restore drill, whatever its outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_drill: Option<DrillReport>,
    /// The last copy to each second-copy destination, by its name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub copies: std::collections::BTreeMap<String, CopyRecord>,
}

/// Reads and writes the status of a state directory.
#[derive(Debug, Clone)]
pub(crate) struct StatusStore {
    dir: PathBuf,
}

impl StatusStore {
    /// The status of a state directory.
    pub(crate) fn in_state_dir(state_dir: &Path) -> StatusStore {
        StatusStore {
            dir: state_dir.to_path_buf(),
        }
    }

    /// The stored status (default if none).
    pub(crate) fn load(&self) -> Result<StatusFile> {
        read_json(&self.dir.join(STATUS_FILE)).map(Option::unwrap_or_default)
    }

    /// The last skipped run, if any.
    pub(crate) fn last_skipped(&self) -> Result<Option<RunRecord>> {
        read_json(&self.dir.join(SKIPPED_FILE))
    }

    /// Writes the whole status atomically (lock holder only).
    pub(crate) fn store(&self, status: &StatusFile) -> Result<()> {
        write_json(&self.dir.join(STATUS_FILE), status)
    }

    /// Records a run skipped because another held the lock.
    pub(crate) fn record_skipped(&self, record: &RunRecord) -> Result<()> {
        write_json(&self.dir.join(SKIPPED_FILE), record)
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            Error::InvalidImage(format!(
                "{} is damaged ({e}); remove it to reset",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    if let Some(dir) = path.parent() {
        crate::util::create_private_dir(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let data = serde_json::to_vec_pretty(value).expect("status serialises");
    crate::util::write_atomic(path, &data, 0o600)
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))
}

/// One check a drill ran against a restored component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillCheck {
    /// The component.
    pub component: String,
    /// `integrity_check` (SQLite's, on the restored database) or
    /// `drill_check` (the command configured on the component).
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (the command's exit status and the end of its output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The result of a drill, as `backup drill` prints it and `backup status`
/// keeps it (the last drill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillReport {
    /// `success` or `failed`.
    pub outcome: Outcome,
    /// The image drilled (none when no image could be chosen).
    pub image: Option<String>,
    /// When the drill started.
    pub started: DateTime<Utc>,
    /// When it ended.
    pub finished: DateTime<Utc>,
    /// The measured recovery time: from the start to the restored, checked
    /// files, in milliseconds.
    pub duration_ms: u64,
    /// Bytes of the restored files.
    pub bytes: u64,
    /// Components restored.
    pub restored: Vec<String>,
    /// The checks run against the restored files.
    pub checks: Vec<DrillCheck>,
    /// Components whose restore or check failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_components: Vec<String>,
    /// Why the drill failed, one line per failure.
    pub failures: Vec<String>,
    /// The time limit, in seconds.
    pub timeout_secs: u64,
    /// The directory the drill restored under.
    pub scratch: PathBuf,
    /// Whether it was removed afterwards (it always should be).
    pub scratch_removed: bool,
}

/// How a copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CopyOutcome {
    /// Written, read back and found identical.
    Copied,
    /// The destination already held this very image (same size and
    /// SHA-256) and its sidecar: nothing was written.
    Present,
    /// The destination holds a different image of that name, left alone.
    Refused,
    /// Not copied (unreachable, full, a verification mismatch, …); nothing
    /// is left behind under the image's name.
    Failed,
}

impl CopyOutcome {
    /// The outcome as status and audit log spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            CopyOutcome::Copied => "copied",
            CopyOutcome::Present => "present",
            CopyOutcome::Refused => "refused",
            CopyOutcome::Failed => "failed",
        }
    }

    /// Whether the destination holds a verified copy.
    pub fn is_ok(self) -> bool {
        matches!(self, CopyOutcome::Copied | CopyOutcome::Present)
    }
}

impl std::fmt::Display for CopyOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last copy of an image to one destination (kept per destination in
/// the status, and in a backup's report).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// The destination's name (or its URL without user information).
    pub destination: String,
    /// Its storage, as the engine shows storage URLs (no secrets).
    pub location: String,
    /// When the copy ended.
    pub time: DateTime<Utc>,
    /// The image.
    pub image: String,
    /// How it ended.
    pub outcome: CopyOutcome,
    /// Image bytes written (or found there).
    #[serde(default)]
    pub bytes: u64,
    /// Why it failed or was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Copies the destination's retention deleted after this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
    /// Why the destination's retention could not run (the copy stands).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_error: Option<String>,
}

impl CopyRecord {
    /// The destination as messages name it: `NAME (URL)`, or the URL when
    /// it has no name of its own.
    pub fn place(&self) -> String {
        shown(&self.destination, &self.location)
    }
}

pub(crate) fn shown(label: &str, location: &str) -> String {
    if label == location {
        location.to_string()
    } else {
        format!("{label} ({location})")
    }
}
