//! The scheduler daemon end to end: it runs a backup at the minute boundary,
//! records a scheduled run that finds another backup running as skipped,
//! shows itself and its next run in `status`, and stops at once on SIGTERM
//! when idle.

use std::time::{Duration, Instant};

use crate::util::{image_time, records, signal, Ops, Running};
use chrono::{DateTime, Timelike, Utc};
use serde_json::Value;

/// Every minute, each scheduled backup held ~5 s by its before hook.
const DAEMON_CONFIG: &str = r#"[schedule]
cron = ["* * * * *"]

[hooks]
before = ["sleep", "5"]
"#;

/// The manual backup that overlaps a scheduled run: held 30 s.
const MANUAL_CONFIG: &str = r#"[hooks]
before = ["sleep", "30"]
"#;

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .unwrap_or_else(|| panic!("not a time: {v}"))
        .parse()
        .unwrap_or_else(|e| panic!("not a time: {v}: {e}"))
}

fn daemon_json(ops: &Ops) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(ops.state.join("daemon.json")).ok()?).ok()
}

/// Panics with the daemon's output if it has exited.
fn assert_alive(daemon: &mut Running) {
    if let Some(code) = daemon.try_code() {
        panic!(
            "the daemon exited early with {code}\n{}",
            daemon.stderr_so_far()
        );
    }
}

/// Polls `f` every half second (the daemon must stay alive) until it gives
/// `Some`, or panics after `limit`.
fn poll<T>(
    daemon: &mut Running,
    limit: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        assert_alive(daemon);
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}\n--- daemon stderr ---\n{}",
            daemon.stderr_so_far()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn sleep_until(t: DateTime<Utc>) {
    if let Ok(d) = (t - Utc::now()).to_std() {
        std::thread::sleep(d);
    }
}

#[test]
fn the_daemon_runs_on_schedule_records_skips_and_stops_on_sigterm() {
    let test_started = Instant::now();
    let ops = Ops::new(DAEMON_CONFIG);
    let manual_config = ops.variant("manual.toml", MANUAL_CONFIG);
    ops.init();

    // Start well before a minute boundary, so the first run is not already
    // under way when the first checks look at the idle daemon.
    let now = Utc::now();
    if now.second() > 45 {
        sleep_until(
            now.with_second(0).unwrap().with_nanosecond(0).unwrap() + chrono::Duration::seconds(61),
        );
    }
    let mut daemon = ops.spawn(&["daemon"]);
    let dpid = daemon.pid();

    // The heartbeat names the daemon and its first run, the next minute.
    let first_due = poll(&mut daemon, Duration::from_secs(15), "daemon.json", || {
        let d = daemon_json(&ops)?;
        (d["pid"] == dpid && !d["next_run"].is_null()).then(|| time(&d["next_run"]))
    });
    let s = ops.status();
    assert_eq!(s["daemon"]["pid"], dpid, "{s:#}");
    let next = time(&s["next_run"]);
    let ahead = next - Utc::now();
    assert!(
        ahead > chrono::Duration::zero() && ahead <= chrono::Duration::seconds(60),
        "next run {next} must be within the next minute: {s:#}"
    );
    assert_eq!(next, first_due, "{s:#}");
    assert!(
        s["schedule"]
            .as_str()
            .unwrap_or_default()
            .contains("* * * * *"),
        "{s:#}"
    );

    // The first scheduled run: seen in progress, then published.
    let mut seen_running = None;
    let first = poll(
        &mut daemon,
        Duration::from_secs(80),
        "the first scheduled image",
        || {
            let s = ops.status();
            if s["state"] == "in progress" {
                seen_running = Some(s);
            }
            ops.images().first().cloned()
        },
    );
    let running = seen_running.expect("a scheduled run was seen in progress");
    assert_eq!(
        running["current"]["operation"], "scheduled backup",
        "{running:#}"
    );
    assert_eq!(running["current"]["pid"], dpid, "{running:#}");
    let made = image_time(&first);
    assert!(
        made >= first_due && made - first_due <= chrono::Duration::seconds(20),
        "the scheduled run due at {first_due} made {first} (at {made})"
    );

    // It finishes and the daemon waits for the next minute.
    let idle = poll(
        &mut daemon,
        Duration::from_secs(30),
        "the first run finishing",
        || {
            let s = ops.status();
            (s["state"] == "not running" && s["last_success"]["image"] == first.as_str())
                .then_some(s)
        },
    );
    let second_due = time(&idle["next_run"]);
    assert_eq!(second_due, first_due + chrono::Duration::seconds(60));
    let audit = ops.audit();
    assert_eq!(records(&audit, "create", "success").len(), 1, "{audit:#?}");
    assert!(records(&audit, "create", "skipped").is_empty());
    let lead = second_due - Utc::now();
    assert!(
        lead > chrono::Duration::seconds(20),
        "the first run ended too late ({lead} before the next) to stage the overlap"
    );

    // A manual backup holding the lock across the next minute boundary.
    sleep_until(second_due - chrono::Duration::seconds(15));
    let manual = ops.spawn_with(&manual_config, None, &["create"]);
    let mpid = manual.pid();
    poll(
        &mut daemon,
        Duration::from_secs(10),
        "the manual backup running",
        || {
            let s = ops.status();
            (s["state"] == "in progress" && s["current"]["pid"] == mpid).then_some(())
        },
    );
    assert!(
        Utc::now() < second_due - chrono::Duration::seconds(2),
        "the manual backup started too late to overlap the run due at {second_due}"
    );

    // The daemon's run at the boundary finds the lock held: skipped.
    let skipped = poll(
        &mut daemon,
        Duration::from_secs(40),
        "the scheduled run recorded as skipped",
        || {
            let audit = ops.audit();
            records(&audit, "create", "skipped")
                .first()
                .map(|r| (*r).clone())
        },
    );
    let when = time(&skipped["time"]);
    assert!(
        when >= second_due && when - second_due <= chrono::Duration::seconds(20),
        "skipped at {when}, due at {second_due}: {skipped:#}"
    );
    let why = skipped["error"].as_str().unwrap_or_default();
    assert!(why.contains(&format!("pid {mpid}")), "{skipped:#}");

    let s = ops.status();
    assert_eq!(s["state"], "in progress", "the manual run goes on: {s:#}");
    assert_eq!(s["current"]["pid"], mpid, "{s:#}");
    assert_eq!(s["last_skipped"]["outcome"], "skipped", "{s:#}");
    assert!(
        s["last_skipped"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pid {mpid}")),
        "{s:#}"
    );
    assert_eq!(s["daemon"]["pid"], dpid, "{s:#}");
    let next = time(&s["next_run"]);
    let ahead = next - Utc::now();
    assert!(
        ahead > chrono::Duration::zero() && ahead <= chrono::Duration::seconds(60),
        "next run {next} within the next minute: {s:#}"
    );
    let human = ops.run(&["status"]).expect(0).stdout();
    assert!(human.contains(&format!("daemon pid {dpid}")), "{human}");
    assert!(human.contains("last skipped"), "{human}");
    assert!(
        daemon.stderr_so_far().contains("skipped"),
        "the daemon reports the skip:\n{}",
        daemon.stderr_so_far()
    );
    assert!(
        poll(&mut daemon, Duration::from_secs(5), "heartbeat", || {
            let d = daemon_json(&ops)?;
            (!d["next_run"].is_null()).then(|| time(&d["next_run"]))
        }) > second_due
    );

    // SIGTERM while idle (the manual backup is not the daemon's): stops at once.
    assert_alive(&mut daemon);
    let stop = Instant::now();
    signal(dpid, "-TERM");
    let out = daemon.wait(Duration::from_secs(20));
    let took = stop.elapsed();
    out.expect(0);
    assert!(took < Duration::from_secs(10), "took {took:?} to stop");
    let d = daemon_json(&ops).expect("daemon.json stays");
    assert_eq!(d["pid"], dpid, "{d:#}");
    assert!(d["next_run"].is_null(), "{d:#}");
    let s = ops.status();
    assert!(s["daemon"].is_null(), "no daemon after it stopped: {s:#}");

    // The manual backup was not disturbed.
    manual.wait(Duration::from_secs(60)).expect(0);
    let images = ops.images();
    assert_eq!(images.len(), 2, "{images:?}");
    assert_eq!(images[0], first);
    let audit = ops.audit();
    assert_eq!(records(&audit, "create", "success").len(), 2, "{audit:#?}");
    assert_eq!(records(&audit, "create", "skipped").len(), 1, "{audit:#?}");
    eprintln!("daemon test took {:?}", test_started.elapsed());
}
