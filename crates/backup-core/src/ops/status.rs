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
    pub summary: crate::restore::RestoreSummary,
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
    pub last_drill: Option<crate::drill::DrillReport>,
    /// The last copy to each second-copy destination, by its name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub copies: std::collections::BTreeMap<String, crate::copy::CopyRecord>,
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
