use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, OpenFlags};

use super::files::{applicable_if, restore_roots};
use super::{
    rel_of, Applicability, Committed, Component, EntryMeta, EntrySink, FileStat, RestoreContext,
    SnapshotError,
};

/// A SQLite database captured online: its pages, read in order through the
/// `sqlite_dbpage` table inside one read transaction, go straight into the
/// image, so the snapshot is consistent (WAL included) and no copy of the
/// database is written anywhere. Restore checks the staged copy's integrity
/// before it replaces the live file.
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

    fn snapshot(&self, sink: &mut dyn EntrySink, _scratch: &Path) -> Result<(), SnapshotError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            SnapshotError::Failed(format!("{what} {}: {e}", self.path.display()))
        };
        let md = std::fs::metadata(&self.path).map_err(|e| failed("cannot read database", &e))?;
        // What the frame cache knows the content by: the database and its
        // write-ahead log (every commit changes one of them), taken before
        // the snapshot is pinned. If they match the ones taken before an
        // earlier snapshot, nothing was committed between the two stats,
        // so that snapshot is this database at the first of them.
        let mut stats = vec![FileStat::from_metadata(&md)];
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        match std::fs::metadata(&wal) {
            // Not its ctime: SQLite running as root chowns the log to the
            // database's owner whenever it opens it (this read included),
            // which changes the ctime and nothing else. Commits write to it,
            // which changes its mtime.
            Ok(m) => stats.push(FileStat {
                ctime: (0, 0),
                ..FileStat::from_metadata(&m)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed("cannot read the write-ahead log of", &e)),
        }
        let db = Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| failed("cannot open database", &e))?;
        db.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(|e| failed("cannot configure", &e))?;
        // One read transaction from here to the last page: BEGIN alone takes
        // no lock, the first read does, and every later statement of the
        // transaction sees the same snapshot (in WAL mode: the same end of
        // the WAL; a checkpoint never copies frames past it into the file
        // while the transaction lasts).
        db.execute_batch("BEGIN; SELECT count(*) FROM sqlite_schema;")
            .map_err(|e| failed("cannot start a read transaction on", &e))?;
        let read = |sql: &str| db.query_row(sql, [], |row| row.get::<_, i64>(0));
        let (page_size, page_count) = read("PRAGMA page_size")
            .and_then(|size| Ok((size, read("PRAGMA page_count")?)))
            .map_err(|e| failed("cannot read the size of", &e))?;
        let (page_size, page_count) = (page_size as u64, page_count as u64);
        let (rel, meta, size) = (
            rel_of(&self.path),
            EntryMeta::from_metadata(&md),
            page_count * page_size,
        );
        let end = || {
            db.execute_batch("COMMIT")
                .map_err(|e| failed("cannot end the read transaction on", &e))
        };
        if sink.reuse(rel, &meta, size, &stats)? {
            // The frames of an earlier snapshot, checked when it was taken.
            return end();
        }
        // What goes into the image is this transaction's snapshot, so a
        // check on the same transaction checks exactly those pages; it runs
        // first, so that a damaged database writes nothing (and nothing of
        // it is cached). The full `integrity_check`, the one restore runs on
        // the staged file (this snapshot byte for byte, see restore_sqlite):
        // an image whose component succeeded must restore. (`quick_check`
        // costs a sixth, but leaves out comparing every index with its
        // table, so a database it passes could be refused at restore.)
        if let Some(verdict) =
            integrity_problem(&db).map_err(|e| failed("cannot check the integrity of", &e))?
        {
            return Err(SnapshotError::Failed(format!(
                "the database {} fails its integrity check ({verdict}): repair it, or restore \
                 it from an earlier image, then back it up again",
                self.path.display()
            )));
        }
        let mut pages = db
            .prepare("SELECT data FROM sqlite_dbpage('main') ORDER BY pgno")
            .map_err(|e| {
                failed(
                    "this build's SQLite lacks the sqlite_dbpage table (build it with \
                     LIBSQLITE3_FLAGS=SQLITE_ENABLE_DBPAGE_VTAB) and cannot snapshot",
                    &e,
                )
            })?;
        let rows = pages
            .query([])
            .map_err(|e| failed("cannot read the pages of", &e))?;
        let mut reader = PageReader {
            rows,
            page_size: page_size as usize,
            left: page_count,
            at: page_size as usize,
        };
        sink.file(rel, &meta, size, &mut reader)?;
        drop(reader);
        drop(pages);
        end()
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
        if staged.exists() && !ctx.checked.contains(&staged) {
            check_integrity(&staged, &Stop::default())?;
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

/// The `integrity_check` of a staged database, on a thread of its own.
/// Restore starts it as soon as the database's bytes are staged, so that it
/// runs while the rest of the image is extracted and everything staged is
/// synced, rather than after both (a 300 MB database restored last: 2.5 s
/// of checking, which the final sync and commit waited for).
pub(crate) struct IntegrityCheck {
    path: PathBuf,
    stop: Arc<Stop>,
    pending: Option<Pending>,
}

/// Ends a check that is no longer wanted (the restore failed elsewhere).
#[derive(Default)]
struct Stop {
    stopped: std::sync::atomic::AtomicBool,
    running: std::sync::Mutex<Option<rusqlite::InterruptHandle>>,
}

impl Stop {
    fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(handle) = &*self.running.lock().unwrap_or_else(|p| p.into_inner()) {
            handle.interrupt();
        }
    }
}

/// A check on its thread, or its verdict.
enum Pending {
    Running(std::thread::JoinHandle<Result<(), String>>),
    Done(Result<(), String>),
}

impl IntegrityCheck {
    /// Starts checking the database at `path`.
    pub(crate) fn start(path: &Path) -> IntegrityCheck {
        let stop = Arc::new(Stop::default());
        let (owned, stopping) = (path.to_path_buf(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("backup-dbcheck".into())
            .spawn(move || check_integrity(&owned, &stopping));
        let pending = match thread {
            Ok(handle) => Pending::Running(handle),
            // No thread to spare: check here, now.
            Err(_) => Pending::Done(check_integrity(path, &stop)),
        };
        IntegrityCheck {
            path: path.to_path_buf(),
            stop,
            pending: Some(pending),
        }
    }

    /// Waits for the verdict: an error says what is wrong with the database.
    pub(crate) fn wait(mut self) -> Result<(), String> {
        match self.pending.take().expect("waited once") {
            Pending::Done(result) => result,
            Pending::Running(handle) => handle.join().unwrap_or_else(|_| {
                Err(format!(
                    "the integrity check of the restored database {} stopped unexpectedly",
                    self.path.display()
                ))
            }),
        }
    }
}

impl Drop for IntegrityCheck {
    fn drop(&mut self) {
        if let Some(Pending::Running(handle)) = self.pending.take() {
            self.stop.stop();
            let _ = handle.join();
        }
    }
}

fn check_integrity(path: &Path, stop: &Stop) -> Result<(), String> {
    let db = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
        format!(
            "the restored database {} does not open: {e}",
            path.display()
        )
    })?;
    *stop.running.lock().unwrap_or_else(|p| p.into_inner()) = Some(db.get_interrupt_handle());
    if stop.stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return Err("the integrity check was stopped".into());
    }
    if let Some(verdict) = integrity_problem(&db)
        .map_err(|e| format!("integrity check of {} failed: {e}", path.display()))?
    {
        return Err(format!(
            "the restored database {} is damaged: {verdict}",
            path.display()
        ));
    }
    Ok(())
}

/// SQLite's full `integrity_check` of `db` (as its connection sees it):
/// `None` when it passes, else the first problem it reports. The one check
/// backup, restore and drill run, so what one passes the others pass.
pub(crate) fn integrity_problem(db: &Connection) -> rusqlite::Result<Option<String>> {
    let verdict: String = db.query_row("PRAGMA integrity_check(1)", [], |row| row.get(0))?;
    Ok((verdict != "ok").then_some(verdict))
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

/// The pages of one read transaction's snapshot as a byte stream, in page
/// order: the database file as that transaction sees it, copied from
/// SQLite's page buffer straight into the reader's. Ends with an error,
/// never early, if SQLite hands back another number or size of pages than
/// the transaction reported up front (the image entry is then padded and the
/// component fails).
struct PageReader<'s> {
    rows: rusqlite::Rows<'s>,
    page_size: usize,
    /// Pages still to come.
    left: u64,
    /// How much of the current page (the current row) was handed out;
    /// `page_size` before the first page.
    at: usize,
}

impl std::io::Read for PageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use rusqlite::fallible_streaming_iterator::FallibleStreamingIterator;
        let blob = |rows: &rusqlite::Rows<'_>| -> std::io::Result<usize> {
            let row = rows.get().ok_or_else(|| std::io::Error::other("no page"))?;
            row.get_ref(0)
                .and_then(|v| Ok(v.as_blob()?.len()))
                .map_err(std::io::Error::other)
        };
        if self.at == self.page_size {
            self.rows.advance().map_err(std::io::Error::other)?;
            if self.rows.get().is_none() {
                if self.left == 0 {
                    return Ok(0);
                }
                return Err(std::io::Error::other(format!(
                    "the database ended {} pages early",
                    self.left
                )));
            }
            if blob(&self.rows)? != self.page_size || self.left == 0 {
                return Err(std::io::Error::other(
                    "the database changed its page size or grew during its snapshot",
                ));
            }
            self.left -= 1;
            self.at = 0;
        }
        let row = self.rows.get().expect("a current page");
        let page = row
            .get_ref(0)
            .and_then(|v| Ok(v.as_blob()?))
            .map_err(std::io::Error::other)?;
        let n = buf.len().min(page.len() - self.at);
        buf[..n].copy_from_slice(&page[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(path: &Path, pragma: &str) -> String {
        let db = Connection::open(path).unwrap();
        db.query_row(pragma, [], |row| row.get(0)).unwrap()
    }

    /// Tables `a` and `b` with an index each, `c` without; 2,000 rows each.
    fn database(dir: &Path) -> PathBuf {
        let path = dir.join("db.sqlite");
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE a (id INTEGER PRIMARY KEY, name TEXT UNIQUE);
             CREATE TABLE b (id INTEGER PRIMARY KEY, kind TEXT, name TEXT);
             CREATE INDEX b_name ON b(name);
             CREATE TABLE c (id INTEGER PRIMARY KEY, blob BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO a SELECT i, 'a-' || i FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO b SELECT i, 'kind-' || (i % 7), 'b-' || i FROM n;
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
             INSERT INTO c SELECT i, randomblob(300) FROM n;",
        )
        .unwrap();
        path
    }

    #[test]
    fn the_background_check_passes_an_intact_database_and_finds_an_index_that_does_not_match() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        IntegrityCheck::start(&path).wait().unwrap();
        // b's index now claims to index another column than it does: every
        // b-tree is sound, only comparing the index with its table finds it.
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "PRAGMA writable_schema = ON;
             UPDATE sqlite_schema SET sql = 'CREATE INDEX b_name ON b(kind)' WHERE name = 'b_name';
             PRAGMA writable_schema = OFF;",
        )
        .unwrap();
        drop(db);
        assert_eq!(verdict(&path, "PRAGMA quick_check"), "ok");
        assert_ne!(verdict(&path, "PRAGMA integrity_check"), "ok");
        let err = IntegrityCheck::start(&path).wait().unwrap_err();
        assert!(
            err.contains("is damaged") && err.contains("b_name"),
            "{err}"
        );
    }

    #[test]
    fn the_background_check_finds_a_damaged_page() {
        let dir = tempfile::tempdir().unwrap();
        let path = database(dir.path());
        let (root, page_size): (u64, u64) = {
            let db = Connection::open(&path).unwrap();
            let root = db
                .query_row(
                    "SELECT rootpage FROM sqlite_schema WHERE name = 'c'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            let size = db.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
            (root, size)
        };
        let mut bytes = std::fs::read(&path).unwrap();
        let at = ((root - 1) * page_size) as usize;
        bytes[at..at + page_size as usize].fill(0xA5);
        std::fs::write(&path, bytes).unwrap();
        let err = IntegrityCheck::start(&path).wait().unwrap_err();
        assert!(err.contains("is damaged"), "{err}");
    }
}
