//! One operation at a time: a second backup is skipped (exit 4) while one
//! runs, and a backup killed with SIGKILL leaves nothing published, shows as
//! interrupted, and is taken over by the next run.

use std::time::Duration;

use crate::util::{records, signal, wait_for, Ops};
use serde_json::Value;

/// A `command` component slow enough for another process to overlap it.
const SLOW: &str = r#"
[[component]]
name = "slow"
kind = "command"
backup = ["sh", "-c", "sleep 6; echo slow-dump"]
"#;

/// An after hook long enough for another process to overlap it.
const SLOW_AFTER_HOOK: &str = r#"
[hooks]
after = ["sleep", "10"]
"#;

/// Polls `status --json` until it reports `in progress` by `pid` (and, if
/// given, at `component`); returns that status.
fn wait_in_progress(ops: &Ops, pid: u32, component: Option<&str>) -> Value {
    wait_for(Duration::from_secs(30), "status says in progress", || {
        let s = ops.status();
        // `current.image` is set once the run has written its status (before
        // that, status only knows the lock holder).
        let ok = s["state"] == "in progress"
            && s["current"]["pid"] == pid
            && s["current"]["image"].is_string()
            && component.is_none_or(|c| s["current"]["component"] == c);
        ok.then_some(s)
    })
}

#[test]
fn a_second_backup_while_one_runs_is_skipped_with_exit_4() {
    let ops = Ops::new(SLOW);
    ops.init();
    let audit_before = ops.audit().len();

    let a = ops.spawn(&["create"]);
    let a_pid = a.pid();
    let s = wait_in_progress(&ops, a_pid, None);
    assert_eq!(s["current"]["operation"], "backup", "{s:#}");

    let b = ops.run(&["create"]);
    b.expect(4);
    let err = b.stderr();
    assert!(
        err.contains("skipped"),
        "B must say it was skipped\n{}",
        b.dump()
    );
    assert!(
        err.contains(&format!("pid {a_pid}")),
        "B must name the running backup's pid {a_pid}\n{}",
        b.dump()
    );
    assert!(
        ops.images().is_empty(),
        "B published nothing and A has not finished: {:?}",
        ops.store_files()
    );

    let a_out = a.wait(Duration::from_secs(60));
    a_out.expect(0);

    let s = ops.status();
    assert_eq!(s["state"], "not running", "{s:#}");
    let skipped = &s["last_skipped"];
    assert_eq!(skipped["outcome"], "skipped", "{s:#}");
    let reason = skipped["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("skipped") && reason.contains(&format!("pid {a_pid}")),
        "last_skipped must say why: {s:#}"
    );

    let audit = ops.audit();
    let new = &audit[audit_before..];
    let skips = records(new, "create", "skipped");
    assert_eq!(skips.len(), 1, "one skipped create audited: {new:#?}");
    assert!(
        skips[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("pid {a_pid}")),
        "{:#}",
        skips[0]
    );
    let done = records(new, "create", "success");
    assert_eq!(done.len(), 1, "A's create audited as success: {new:#?}");

    let images = ops.images();
    assert_eq!(images.len(), 1, "exactly one new image: {images:?}");
    assert_eq!(done[0]["target"], images[0].as_str());
    assert_eq!(s["last_success"]["image"], images[0].as_str(), "{s:#}");
    ops.run(&["verify", &images[0]]).expect(0);
}

#[test]
fn a_backup_killed_with_sigkill_publishes_nothing_and_is_taken_over() {
    let ops = Ops::new(SLOW);
    ops.init();

    let a = ops.spawn(&["create"]);
    let a_pid = a.pid();
    // Wait until the slow component streams into the store, then kill.
    let s = wait_in_progress(&ops, a_pid, Some("slow"));
    let killed_image = s["current"]["image"]
        .as_str()
        .expect("the status names the image being written")
        .to_string();
    signal(a_pid, "-9");
    let out = a.wait(Duration::from_secs(10));
    assert_eq!(out.code, -1, "killed by a signal\n{}", out.dump());

    // Nothing under a final name: no image, no sidecar.
    let finals = ops.final_files();
    assert!(
        finals.is_empty(),
        "a killed backup left files under final names: {finals:?}"
    );
    let temps: Vec<String> = ops
        .store_files()
        .into_iter()
        .filter(|n| n.starts_with('.'))
        .collect();
    for t in &temps {
        assert!(t.contains(".partial-"), "unexpected hidden file {t}");
    }
    eprintln!("temporary files left in the store after kill -9: {temps:?}");

    // The killed run's log shows how far it got.
    let killed_log =
        std::fs::read_to_string(ops.state.join("logs").join(format!("{killed_image}.log")))
            .unwrap_or_default();
    assert!(
        killed_log.contains("config: success") && killed_log.contains("slow (command): started"),
        "the killed run's log:\n{killed_log}"
    );

    let s = ops.status();
    assert_eq!(s["state"], "interrupted", "{s:#}");
    assert_eq!(s["current"]["pid"], a_pid, "{s:#}");
    assert_eq!(s["current"]["image"], killed_image.as_str(), "{s:#}");
    let human = ops.run(&["status"]).expect(0).stdout();
    assert!(human.contains("interrupted"), "{human}");

    // The next backup takes over (a fast, custom one).
    let next = ops.run(&["create", "--component", "config"]);
    next.expect(0);
    let err = next.stderr();
    assert!(
        err.contains("interrupted")
            && err.contains(&format!("pid {a_pid}"))
            && err.contains("taken over"),
        "the next run must report the takeover\n{}",
        next.dump()
    );
    // (The new image may reuse the killed one's name: it was never published.)
    let images = ops.images();
    assert_eq!(images.len(), 1, "{images:?}");
    let listed = ops.run(&["list", "--json"]).expect(0).json();
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "only the published image is listed: {listed:#}"
    );

    let s = ops.status();
    assert_eq!(s["state"], "not running", "{s:#}");
    assert!(s["current"].is_null(), "{s:#}");
    let failure = s["last_failure"]["reason"].as_str().unwrap_or_default();
    assert!(
        failure.contains("interrupted") && failure.contains(&format!("pid {a_pid}")),
        "last_failure must record the interruption: {s:#}"
    );
    assert_eq!(s["last_success"]["image"], images[0].as_str(), "{s:#}");

    let audit = ops.audit();
    let interrupted = records(&audit, "backup", "interrupted");
    assert_eq!(
        interrupted.len(),
        1,
        "the interruption is audited once: {audit:#?}"
    );
    assert_eq!(interrupted[0]["target"], killed_image.as_str());

    // The takeover is in the new backup's own log too.
    let log = ops.run(&["log", &images[0]]).expect(0).stdout();
    assert!(
        log.contains("interrupted") && log.contains("taken over"),
        "the new backup's log must mention the takeover:\n{log}"
    );
    ops.run(&["verify", &images[0]]).expect(0);

    // Later runs no longer report an interruption.
    let again = ops.run(&["create", "--component", "config"]);
    again.expect(0);
    assert!(!again.stderr().contains("interrupted"), "{}", again.dump());
}

#[test]
fn a_backup_in_its_after_hook_is_still_in_progress_and_named_as_a_backup() {
    let ops = Ops::new(SLOW_AFTER_HOOK);
    ops.init();
    let a = ops.spawn(&["create"]);
    let a_pid = a.pid();
    // The image is published and recorded; the after hook still holds the
    // run (and its lock) open.
    let s = wait_for(
        Duration::from_secs(60),
        "the image recorded while the after hook runs",
        || {
            let s = ops.status();
            (s["state"] == "in progress" && s["last_success"]["image"].is_string()).then_some(s)
        },
    );
    assert_eq!(s["current"]["operation"], "backup", "{s:#}");
    assert_eq!(s["current"]["pid"], a_pid, "{s:#}");

    let b = ops.run(&["create"]);
    b.expect(4);
    assert!(
        b.stderr().contains("a backup has been running since")
            && b.stderr().contains(&format!("pid {a_pid}")),
        "B names the running backup as status does\n{}",
        b.dump()
    );
    a.wait(Duration::from_secs(60)).expect(0);
    let s = ops.status();
    assert_eq!(s["state"], "not running", "{s:#}");
    assert_eq!(s["last_skipped"]["operation"], "backup", "{s:#}");
}
