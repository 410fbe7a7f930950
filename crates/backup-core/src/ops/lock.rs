//! One operation at a time: an advisory lock in the state directory.
//!
//! The lock is an OS file lock (`flock`) on `state_dir/backup.lock`, so it is
//! released by the kernel when its holder dies — even by `kill -9`. The file
//! also records the holder (pid, host, operation, start time) for messages;
//! finding a record left by a holder that is gone means the last run was
//! interrupted, which the caller reports as a takeover of a stale lock.
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the lock in the state directory.
pub(crate) const LOCK_FILE: &str = "backup.lock";

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolder {
    /// Process id.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// What runs, as the status names it: `backup`, `scheduled backup`,
    /// `restore`, `prune`.
    pub operation: String,
    /// When it took the lock.
    pub started: DateTime<Utc>,
}

impl std::fmt::Display for LockHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a {} has been running since {} (pid {} on {})",
            self.operation,
            self.started.format("%Y-%m-%d %H:%M:%S UTC"),
            self.pid,
            self.host
        )
    }
}

/// How many times (20 ms apart) `acquire` waits for a lock whose holder has
/// let go of it but whose descriptor a forked child still holds.
const RELEASED_WAITS: u32 = 100;

/// A held lock; released on drop.
#[derive(Debug)]
pub struct OperationLock {
    file: File,
    path: PathBuf,
    /// The record of a previous holder that died without releasing cleanly.
    pub stale: Option<LockHolder>,
}

impl OperationLock {
    /// Takes the lock for `operation`, or fails with [`Error::Busy`] naming the holder.
    pub fn acquire(state_dir: &Path, operation: &str) -> Result<OperationLock> {
        crate::util::create_private_dir(state_dir).map_err(|e| {
            Error::io(
                format!("creating the state directory {}", state_dir.display()),
                e,
            )
        })?;
        let path = state_dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(format!("opening the lock {}", path.display()), e))?;
        let mut released_waits = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => match read_holder(&mut file) {
                    // An empty record under a held lock is a lock being let go
                    // of: its holder clears the record before it closes the
                    // file, but a child process forked meanwhile (a hook, a
                    // dump command of another caller in this process) keeps a
                    // copy of the descriptor, and with it the lock, until it
                    // execs. Wait that moment out rather than refuse the run.
                    None if released_waits < RELEASED_WAITS => {
                        released_waits += 1;
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    holder => {
                        return Err(Error::Busy(
                            holder
                                .map(|h| h.to_string())
                                .unwrap_or_else(|| "another operation is running".into()),
                        ))
                    }
                },
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io(format!("locking {}", path.display()), e));
                }
            }
        }
        let stale = read_holder(&mut file).filter(|h| h.pid != std::process::id());
        let me = LockHolder {
            pid: std::process::id(),
            host: hostname(),
            operation: operation.to_string(),
            started: Utc::now(),
        };
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&serde_json::to_vec(&me).expect("serialises"))?;
            file.sync_data()
        };
        write(&mut file)
            .map_err(|e| Error::io(format!("writing the lock {}", path.display()), e))?;
        Ok(OperationLock { file, path, stale })
    }
}

impl Drop for OperationLock {
    fn drop(&mut self) {
        // Clear the record so the next holder does not see a stale one; the
        // kernel drops the flock when the file closes.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_data();
        let _ = &self.path;
    }
}

/// Who holds the lock right now, without taking it (`None` if nobody).
pub(crate) fn probe(state_dir: &Path) -> Result<Option<LockHolder>> {
    let path = state_dir.join(LOCK_FILE);
    let mut file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("opening the lock {}", path.display()), e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(None),
        // An empty record: the lock is being let go of (see `acquire`).
        Err(std::fs::TryLockError::WouldBlock) => Ok(read_holder(&mut file)),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::io(format!("probing the lock {}", path.display()), e))
        }
    }
}

fn read_holder(file: &mut File) -> Option<LockHolder> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// This machine's host name.
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_released_lock_a_child_still_holds_is_waited_for_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = OperationLock::acquire(dir.path(), "backup").unwrap();
        // What a child forked while the lock was held keeps until it execs:
        // a copy of the descriptor, so the lock outlives the holder's drop
        // (which clears the record, then closes its own descriptor).
        let copy = lock.file.try_clone().unwrap();
        drop(lock);
        let exec_after = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(200));
            drop(copy);
        });
        assert_eq!(probe(dir.path()).unwrap(), None, "nobody runs");
        let next = OperationLock::acquire(dir.path(), "restore").expect("waited, not refused");
        exec_after.join().unwrap();
        drop(next);
    }

    #[test]
    fn second_holder_is_refused_and_names_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = OperationLock::acquire(dir.path(), "create").unwrap();
        assert!(first.stale.is_none());
        let err = OperationLock::acquire(dir.path(), "restore").unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Error::Busy(_)) && msg.contains("a create has been running since"),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        let again = OperationLock::acquire(dir.path(), "restore").unwrap();
        assert!(
            again.stale.is_none(),
            "a clean release leaves no stale record"
        );
    }

    #[test]
    fn a_dead_holders_record_is_reported_as_stale() {
        let dir = tempfile::tempdir().unwrap();
        let dead = LockHolder {
            pid: 999_999,
            host: "gw".into(),
            operation: "create".into(),
            started: Utc::now(),
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_vec(&dead).unwrap(),
        )
        .unwrap();
        let lock = OperationLock::acquire(dir.path(), "create").unwrap();
        assert_eq!(lock.stale, Some(dead));
    }
}
