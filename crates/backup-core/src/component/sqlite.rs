use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::files::{applicable_if, restore_roots};
use super::{
    rel_of, Applicability, Committed, Component, EntryMeta, EntrySink, RestoreContext,
    SnapshotError,
};

/// A SQLite database captured online: `VACUUM INTO` gives a consistent
/// snapshot of a live database (WAL or not) without blocking its writers for
/// longer than one read transaction. Restore checks the staged copy's
/// integrity before it replaces the live file.
#[derive(Debug, Clone)]
pub struct SqliteComponent {
    name: String,
    path: PathBuf,
    applicable_if_exists: Option<PathBuf>,
}

impl SqliteComponent {
    /// A component for the database at the absolute `path`.
    pub fn new(
        name: impl Into<String>,
        path: PathBuf,
        applicable_if_exists: Option<PathBuf>,
    ) -> SqliteComponent {
        SqliteComponent {
            name: name.into(),
            path,
            applicable_if_exists,
        }
    }
}

impl Component for SqliteComponent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &str {
        "sqlite"
    }

    fn roots(&self) -> Vec<PathBuf> {
        vec![self.path.clone()]
    }

    fn applicability(&self) -> Applicability {
        applicable_if(&self.applicable_if_exists)
    }

    fn estimate_size(&self) -> Option<u64> {
        std::fs::metadata(&self.path).ok().map(|m| m.len())
    }

    fn scratch_estimate(&self) -> Option<u64> {
        // The snapshot is a copy of the database, WAL included.
        self.estimate_size()
    }

    fn snapshot(&self, sink: &mut dyn EntrySink, scratch: &Path) -> Result<(), SnapshotError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            SnapshotError::Failed(format!("{what} {}: {e}", self.path.display()))
        };
        let md = std::fs::metadata(&self.path).map_err(|e| failed("cannot read database", &e))?;
        let snapshot = scratch.join(format!(
            "{}.snapshot-{}.sqlite",
            self.name,
            crate::util::random_tag()
        ));
        let result = (|| {
            // SQLite would create the file world-readable (0644); VACUUM INTO
            // accepts an empty file, made here owner-only.
            {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&snapshot)
                    .map_err(|e| failed("cannot create the scratch file for", &e))?;
            }
            let db = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(|e| failed("cannot open database", &e))?;
            db.busy_timeout(std::time::Duration::from_secs(30))
                .map_err(|e| failed("cannot configure", &e))?;
            db.execute("VACUUM INTO ?1", [snapshot.to_string_lossy()])
                .map_err(|e| failed("cannot snapshot database", &e))?;
            drop(db);
            let size = std::fs::metadata(&snapshot)
                .map_err(|e| failed("lost the snapshot of", &e))?
                .len();
            let mut file = std::fs::File::open(&snapshot)
                .map_err(|e| failed("cannot reopen the snapshot of", &e))?;
            sink.file(
                rel_of(&self.path),
                &EntryMeta::from_metadata(&md),
                size,
                &mut file,
            )
        })();
        let _ = std::fs::remove_file(&snapshot);
        result
    }

    fn restore(&self, ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        restore_sqlite(ctx)
    }
}

/// Files SQLite keeps beside a database (`<path><suffix>`): they belong to
/// the content being replaced, so restore moves them aside.
pub(crate) const JOURNAL_SUFFIXES: [&str; 3] = ["-wal", "-shm", "-journal"];

/// Checks each staged database, moves stale `-wal`/`-shm` files of the live
/// database aside (they belong to the old content), then swaps.
pub(crate) fn restore_sqlite(ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
    for root in &ctx.planned.roots {
        let staged = ctx.staged.join(rel_of(Path::new(root)));
        if staged.exists() {
            check_integrity(&staged)?;
        }
    }
    let committed = restore_roots(ctx, &|_| false)?;
    // restore_roots returned a Swapped; extend it with the journal files.
    let mut extra = super::Swapped::default();
    for root in &ctx.planned.roots {
        let dest = ctx.destination(Path::new(root));
        for suffix in JOURNAL_SUFFIXES {
            let mut p = dest.clone().into_os_string();
            p.push(suffix);
            if let Err(e) = extra.set_aside(Path::new(&p)) {
                let _ = Box::new(extra).rollback();
                let _ = committed.rollback();
                return Err(e);
            }
        }
    }
    Ok(Box::new(Both(committed, Box::new(extra))))
}

fn check_integrity(path: &Path) -> Result<(), String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
        format!(
            "the restored database {} does not open: {e}",
            path.display()
        )
    })?;
    let verdict: String = db
        .query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .map_err(|e| format!("integrity check of {} failed: {e}", path.display()))?;
    if verdict != "ok" {
        return Err(format!(
            "the restored database {} is damaged: {verdict}",
            path.display()
        ));
    }
    Ok(())
}

struct Both(Box<dyn Committed>, Box<dyn Committed>);

impl Committed for Both {
    fn finalize(self: Box<Self>) -> Result<(), String> {
        let a = self.0.finalize();
        let b = self.1.finalize();
        a.and(b)
    }
    fn rollback(self: Box<Self>) -> Result<(), String> {
        let b = self.1.rollback();
        let a = self.0.rollback();
        a.and(b)
    }
}
