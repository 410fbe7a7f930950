//! A SQLite database in WAL mode written continuously while it is backed up:
//! the snapshot is consistent and complete up to a point in time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::util::*;
use rusqlite::Connection;

/// Each writer transaction inserts one row into `events` and one into
/// `event_audit` with the same id, so a consistent snapshot has equal counts
/// and contiguous ids.
fn writer(path: std::path::PathBuf, stop: Arc<AtomicBool>, committed: Arc<AtomicU64>) -> u64 {
    let mut db = Connection::open(&path).unwrap();
    db.busy_timeout(Duration::from_secs(30)).unwrap();
    let mut n = committed.load(Ordering::SeqCst);
    while !stop.load(Ordering::SeqCst) {
        let tx = db.transaction().unwrap();
        tx.execute(
            "INSERT INTO events (id, payload) VALUES (?1, randomblob(300))",
            [n as i64 + 1],
        )
        .unwrap();
        tx.execute(
            "INSERT INTO event_audit (id, note) VALUES (?1, 'written by the live writer')",
            [n as i64 + 1],
        )
        .unwrap();
        tx.commit().unwrap();
        n += 1;
        committed.store(n, Ordering::SeqCst);
    }
    n
}

#[test]
fn live_wal_database_written_during_backup_restores_consistent() {
    let fx = Fixture::custom(|fx| {
        std::fs::remove_file(&fx.db).unwrap();
        let db = Connection::open(&fx.db).unwrap();
        let mode: String = db
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        db.execute_batch(
            "CREATE TABLE events (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
             CREATE TABLE event_audit (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
             BEGIN;",
        )
        .unwrap();
        // Some bulk so the snapshot takes a moment.
        for i in 1..=20_000i64 {
            db.execute(
                "INSERT INTO events (id, payload) VALUES (?1, randomblob(300))",
                [i],
            )
            .unwrap();
            db.execute(
                "INSERT INTO event_audit (id, note) VALUES (?1, 'initial')",
                [i],
            )
            .unwrap();
        }
        db.execute_batch("COMMIT;").unwrap();
    });
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(20_000));
    let handle = {
        let (path, stop, committed) = (fx.db.clone(), stop.clone(), committed.clone());
        std::thread::spawn(move || writer(path, stop, committed))
    };
    // Let the writer get going.
    let started = Instant::now();
    while committed.load(Ordering::SeqCst) < 20_200 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the writer does not progress"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = committed.load(Ordering::SeqCst);
    let (name, report) = fx.create(&["--component", "maindb"]);
    let after = committed.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let last = handle.join().unwrap();
    println!("rows committed: {before} before the backup, {after} when it returned, {last} in all");
    assert!(
        after > before,
        "the writer made no progress during the backup: the test proves nothing"
    );
    assert_eq!(
        report["manifest"]["components"][0]["outcome"], "success",
        "{report:#}"
    );

    let target = fx.fresh_dir("restored");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    let restored = under(&target, &fx.db);
    let db =
        Connection::open_with_flags(&restored, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let events: u64 = db
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    let audit: u64 = db
        .query_row("SELECT count(*) FROM event_audit", [], |r| r.get(0))
        .unwrap();
    let max_id: u64 = db
        .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
        .unwrap();
    println!("restored snapshot: {events} events, {audit} audit rows");
    assert_eq!(events, audit, "the snapshot splits a transaction");
    assert_eq!(max_id, events, "the snapshot has holes");
    assert!(
        events >= before,
        "the snapshot lost rows committed before the backup started ({events} < {before})"
    );
    assert!(
        events <= after,
        "the snapshot has rows committed after the backup returned ({events} > {after})"
    );
    // The live database is intact and still has every row.
    let live = Connection::open(&fx.db).unwrap();
    let live_events: u64 = live
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(live_events, last);
}

fn count_rows(path: &std::path::Path) -> u64 {
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok", "{}", path.display());
    db.query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap()
}

fn wal_file(db: &std::path::Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

/// A WAL database whose last transactions are still only in its `-wal` file
/// comes back as the file a reader of that moment saw, byte for byte: the
/// same bytes the live file holds once the WAL is checkpointed. It stays in
/// WAL mode, and opens and checks clean both where no `-wal` file lies
/// beside it and where the live database left a stale one (which restore
/// sets aside instead of letting SQLite replay it over the restored pages).
#[test]
fn a_wal_database_is_captured_page_for_page_and_restores_in_wal_mode() {
    let fx = Fixture::custom(|fx| {
        std::fs::remove_file(&fx.db).unwrap();
        make_wal_database(&fx.db);
    });
    // A connection that keeps the last transactions in the WAL.
    let holder = Connection::open(&fx.db).unwrap();
    holder
        .execute_batch(
            "PRAGMA wal_autocheckpoint = 0;
             INSERT INTO objects (name, value) SELECT 'late-' || id, randomblob(500) FROM objects;",
        )
        .unwrap();
    assert!(
        std::fs::metadata(wal_file(&fx.db)).unwrap().len() > 100_000,
        "the WAL holds the late rows: the test proves nothing otherwise"
    );
    let (name, report) = fx.create(&["--component", "maindb"]);
    assert_eq!(
        report["manifest"]["components"][0]["outcome"], "success",
        "{report:#}"
    );
    // What a reader saw then is what the file holds once checkpointed.
    holder
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
    let seen = std::fs::read(&fx.db).unwrap();
    let rows = count_rows(&fx.db);
    assert_eq!(rows, 4000);

    // Into a fresh directory: no -wal beside it.
    let target = fx.fresh_dir("restored");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    let restored = under(&target, &fx.db);
    assert!(
        std::fs::read(&restored).unwrap() == seen,
        "the restored database differs from the snapshot's pages"
    );
    assert_eq!(count_rows(&restored), rows);
    let mode: String = Connection::open(&restored)
        .unwrap()
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");

    // In place, over a live database that left a -wal file with newer rows.
    holder
        .execute_batch(
            "INSERT INTO objects (name, value) SELECT 'later', randomblob(800) FROM objects;",
        )
        .unwrap();
    let stale = std::fs::read(wal_file(&fx.db)).unwrap();
    assert!(stale.len() > 100_000);
    drop(holder);
    std::fs::write(wal_file(&fx.db), &stale).unwrap();
    fx.backup(&["restore", &name, "--yes"]).expect(0);
    assert!(
        !wal_file(&fx.db).exists(),
        "the stale WAL was left beside the restored database"
    );
    assert!(std::fs::read(&fx.db).unwrap() == seen);
    assert_eq!(count_rows(&fx.db), rows);
}

/// 2,000 rows in WAL mode, all checkpointed into the file.
fn make_wal_database(path: &std::path::Path) {
    let db = Connection::open(path).unwrap();
    let mode: String = db
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    db.execute_batch(
        "CREATE TABLE objects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value BLOB);
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2000)
         INSERT INTO objects (name, value) SELECT 'object-' || i, randomblob(300) FROM n;",
    )
    .unwrap();
}

/// A damaged database is reported by the backup that captures it: the
/// snapshot's integrity is checked on the read transaction that read it.
#[test]
fn a_damaged_database_fails_its_component_at_backup() {
    let fx = Fixture::custom(|fx| {
        std::fs::remove_file(&fx.db).unwrap();
        make_wal_database(&fx.db);
        let db = Connection::open(&fx.db).unwrap();
        db.execute_batch("PRAGMA journal_mode = DELETE;").unwrap();
    });
    // Page 3 is a leaf of the objects table (pages 2.. hold it): its page
    // type byte no longer names a b-tree page.
    {
        use std::io::{Seek, SeekFrom, Write};
        let page_size: u64 = Connection::open(&fx.db)
            .unwrap()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&fx.db)
            .unwrap();
        f.seek(SeekFrom::Start(2 * page_size)).unwrap();
        f.write_all(&[0x7f; 16]).unwrap();
    }
    // The other component succeeds: a partial backup (exit 3).
    let (_, report) = fx.create_expect(&[], 3);
    let maindb = report["manifest"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "maindb")
        .unwrap_or_else(|| panic!("no maindb in {report:#}"));
    assert_eq!(maindb["outcome"], "failed", "{report:#}");
    let err = maindb["error"].as_str().unwrap();
    assert!(
        err.contains("fails its integrity check") && err.contains("repair"),
        "{err}"
    );
}

/// The backup's log line saying what the frame cache did.
fn cache_line(fx: &Fixture, image: &str) -> String {
    let log = std::fs::read_to_string(fx.state.join("logs").join(format!("{image}.log"))).unwrap();
    log.lines()
        .filter(|l| l.contains("frame cache"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// An unchanged database comes from the frame cache (its frames are not
/// read and compressed again), and a commit that lands only in its `-wal`
/// file — the database file untouched — is seen by the next backup.
#[test]
fn an_unchanged_database_comes_from_the_frame_cache_and_a_commit_to_its_wal_is_not_missed() {
    let fx = Fixture::custom(|fx| {
        std::fs::remove_file(&fx.db).unwrap();
        make_wal_database(&fx.db);
    });
    // A connection that keeps new transactions in the WAL, not the file.
    let holder = Connection::open(&fx.db).unwrap();
    holder
        .execute_batch("PRAGMA wal_autocheckpoint = 0; SELECT count(*) FROM objects;")
        .unwrap();
    // Files modified in the last seconds are not cached: these were not.
    let quiet = |secs| {
        set_mtime(&fx.db, secs);
        if wal_file(&fx.db).exists() {
            set_mtime(&wal_file(&fx.db), secs);
        }
    };
    quiet(1_700_000_000);
    let (first, _) = fx.create(&["--component", "maindb"]);
    let (second, _) = fx.create(&["--component", "maindb"]);
    assert!(
        cache_line(&fx, &second).contains("frame cache: 1 unchanged files"),
        "{}",
        cache_line(&fx, &second)
    );
    // The cached image is the same database, byte for byte.
    let restore = |name: &str, dir: &str| {
        let target = fx.fresh_dir(dir);
        fx.backup(&["restore", name, "--target", target.to_str().unwrap()])
            .expect(0);
        under(&target, &fx.db)
    };
    let (a, b) = (restore(&first, "first"), restore(&second, "second"));
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    assert_eq!(count_rows(&b), 2000);

    // A commit into the WAL only, the database file untouched, and both
    // mtimes put back: the WAL's size still differs.
    let db_before = std::fs::metadata(&fx.db).unwrap();
    holder
        .execute_batch("INSERT INTO objects (name, value) VALUES ('after', randomblob(100));")
        .unwrap();
    quiet(1_700_000_000);
    assert_eq!(std::fs::metadata(&fx.db).unwrap().len(), db_before.len());
    let (third, _) = fx.create(&["--component", "maindb"]);
    assert!(
        cache_line(&fx, &third).is_empty() || !cache_line(&fx, &third).contains("1 unchanged"),
        "{}",
        cache_line(&fx, &third)
    );
    assert_eq!(count_rows(&restore(&third, "third")), 2001);
}
