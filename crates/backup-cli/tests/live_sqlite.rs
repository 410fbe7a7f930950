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
