//! The audit log: one JSON line per operation, appended with fsync.
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the audit log in the state directory.
pub(crate) const AUDIT_FILE: &str = "audit.log";

/// One audited operation. Never carries a secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// When it ended.
    pub time: DateTime<Utc>,
    /// OS user (or the service user of the daemon / HTTP service).
    pub actor: String,
    /// `create`, `restore`, `verify`, `fetch`, `links`, `key.rotate`, `prune.delete`, …
    pub operation: String,
    /// The image, component set or key concerned.
    pub target: String,
    /// `done`, `refused`, `failed`, `skipped`, `partial`, `attempted`.
    pub outcome: String,
    /// Bytes moved, where meaningful.
    #[serde(default)]
    pub bytes: u64,
    /// Duration in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
    /// The error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What started it, when not an operator's command: `scheduled`,
    /// `http`, `cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// For a request to the HTTP service: its method and path (no query
    /// values that could carry a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// For a request to the HTTP service: the client's `User-Agent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// For a restore: what it left out and why, and how many
    /// `after_restore` notes it has (its post-restore report in short).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

impl AuditRecord {
    /// A record of `operation` on `target` by `actor`, ending now.
    pub fn new(
        actor: impl Into<String>,
        operation: impl Into<String>,
        target: impl Into<String>,
        outcome: impl Into<String>,
    ) -> Self {
        AuditRecord {
            time: Utc::now(),
            actor: actor.into(),
            operation: operation.into(),
            target: target.into(),
            outcome: outcome.into(),
            bytes: 0,
            duration_ms: 0,
            error: None,
            trigger: None,
            route: None,
            user_agent: None,
            summary: None,
        }
    }
}

/// Appends to and reads the audit log of a state directory.
#[derive(Debug, Clone)]
pub(crate) struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// The audit log of a state directory.
    pub(crate) fn in_state_dir(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join(AUDIT_FILE),
        }
    }

    /// Appends one record and fsyncs it.
    pub(crate) fn append(&self, record: &AuditRecord) -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(dir) = self.path.parent() {
            crate::util::create_private_dir(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let mut line = serde_json::to_vec(record).expect("audit record serialises");
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(|e| Error::io(format!("opening the audit log {}", self.path.display()), e))?;
        // One write call per record keeps lines whole under concurrent appends.
        f.write_all(&line)
            .and_then(|_| f.sync_data())
            .map_err(|e| Error::io(format!("appending to {}", self.path.display()), e))
    }

    /// Records since `since` (all if `None`), oldest first. Damaged lines are skipped.
    pub(crate) fn read(&self, since: Option<DateTime<Utc>>) -> Result<Vec<AuditRecord>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::io(
                    format!("reading the audit log {}", self.path.display()),
                    e,
                ))
            }
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<AuditRecord>(l).ok())
            .filter(|r| since.is_none_or(|s| r.time >= s))
            .collect())
    }
}

/// The OS user running this process (by `$USER`, else the uid's passwd entry).
pub(crate) fn current_actor() -> String {
    use std::os::unix::fs::MetadataExt;
    if let Ok(u) = std::env::var("USER") {
        if !u.is_empty() {
            return u;
        }
    }
    let uid = std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX);
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("uid:{uid}"))
}
