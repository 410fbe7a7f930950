//! Restore drills end to end: `backup drill` restores a real image (files
//! and a real SQLite database) into scratch space through the restore path,
//! runs the SQLite integrity check and the components' `drill_check`
//! commands, removes the scratch and records the result in the status and
//! the audit log; a failed drill runs the `on_failure` hook with
//! `BACKUP_HOOK=drill`; the daemon runs scheduled drills, and a scheduled
//! backup that finds a drill running waits for it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    assert_same_tree, copy_tree, make_database, records, run, signal, sqlite_component, Fixture,
    Ops,
};

/// Rows in the fixture's `objects` table when it was backed up.
const ROWS: i64 = 50;

fn rows(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", db.display()));
    conn.query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap()
}

fn add_rows(db: &Path, n: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    for i in 0..n {
        conn.execute(
            "INSERT INTO objects (name, value) VALUES (?1, x'00')",
            [format!("later-{i}")],
        )
        .unwrap();
    }
}

/// The fixture with a `drill_check` on its database: `check` (TOML argv).
fn fixture_with_check(check: &str) -> Fixture {
    Fixture::custom(|f| {
        f.spec.components[1] = format!(
            "{}drill_check = {check}\n",
            sqlite_component("maindb", &f.db)
        );
    })
}

/// `backup --json drill ARGS` with the fixture's config, expecting `code`.
fn drill(fx: &Fixture, config: &Path, args: &[&str], code: i32) -> Value {
    let out = run(fx.cmd_with(config).arg("--json").arg("drill").args(args));
    out.expect(code);
    out.json()
}

fn status(fx: &Fixture) -> Value {
    let out = fx.backup(&["--json", "status"]);
    out.expect(0);
    out.json()
}

fn audit(fx: &Fixture) -> Vec<Value> {
    let out = fx.backup(&["--json", "audit"]);
    out.expect(0);
    out.json().as_array().expect("an array").clone()
}

/// The drill directories left in the state directory's scratch space.
fn drill_dirs(state: &Path) -> Vec<String> {
    fs::read_dir(state.join("tmp"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("drill"))
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts the drill's scratch directory is gone.
fn assert_scratch_removed(report: &Value, state: &Path) {
    let scratch = PathBuf::from(report["scratch"].as_str().expect("a scratch path"));
    assert!(!scratch.exists(), "{} was left behind", scratch.display());
    assert_eq!(report["scratch_removed"], true, "{report:#}");
    assert!(drill_dirs(state).is_empty(), "{:?}", drill_dirs(state));
}

/// A hook that writes its `BACKUP_*` environment to `file`.
fn env_hook(file: &Path) -> String {
    format!(
        "[hooks]\non_failure = [\"sh\", \"-c\", \"env | grep ^BACKUP_ > {}\"]\n",
        file.display()
    )
}

/// The fixture's config with `extra` (TOML tables) appended.
fn config_plus(fx: &Fixture, name: &str, extra: &str) -> PathBuf {
    let path = fx.dir.join(name);
    fs::write(&path, format!("{extra}\n{}", fx.spec.render())).unwrap();
    path
}

#[test]
fn a_drill_restores_the_newest_image_checks_it_and_records_it_without_touching_live_paths() {
    let fx = Fixture::custom(|f| {
        // The check keeps a copy of what it was given: the restored database.
        let copy = f.dir.join("checked.sqlite");
        f.spec.components[1] = format!(
            "{}drill_check = [\"cp\", \"{{path}}\", \"{}\"]\n",
            sqlite_component("maindb", &f.db),
            copy.display()
        );
    });
    let (image, _) = fx.create(&[]);
    // The live database moves on after the backup; the drill must not
    // bring it back, nor touch anything else live.
    add_rows(&fx.db, 7);
    let live_before = fx.dir.join("live-before");
    copy_tree(&fx.root, &live_before);

    let report = drill(&fx, &fx.config, &[], 0);
    assert_eq!(report["outcome"], "success", "{report:#}");
    assert_eq!(report["image"], image.as_str(), "{report:#}");
    assert_eq!(report["restored"], serde_json::json!(["config", "maindb"]));
    assert!(report["bytes"].as_u64().unwrap() > 300 * 1024, "{report:#}");
    assert!(report["duration_ms"].is_u64(), "{report:#}");
    assert_eq!(report["failures"], serde_json::json!([]), "{report:#}");
    let checks: Vec<(String, String, bool)> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["component"].as_str().unwrap().to_string(),
                c["check"].as_str().unwrap().to_string(),
                c["passed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        checks,
        [
            ("maindb".into(), "integrity_check".into(), true),
            ("maindb".into(), "drill_check".into(), true)
        ]
    );
    // The check saw the restored database, as it was backed up.
    assert_eq!(rows(&fx.dir.join("checked.sqlite")), ROWS);
    assert_scratch_removed(&report, &fx.state);
    let scratch = PathBuf::from(report["scratch"].as_str().unwrap());
    assert!(scratch.starts_with(fx.state.join("tmp")), "{report:#}");
    assert_same_tree(&live_before, &fx.root, &[]);
    assert_eq!(rows(&fx.db), ROWS + 7);

    let s = status(&fx);
    let last = &s["last_drill"];
    assert_eq!(last["outcome"], "success", "{s:#}");
    assert_eq!(last["image"], image.as_str(), "{s:#}");
    assert_eq!(last["duration_ms"], report["duration_ms"], "{s:#}");
    assert!(last["finished"].is_string(), "{s:#}");
    assert!(s["last_failure"].is_null(), "{s:#}");
    assert!(s["next_drill"].is_null(), "{s:#}");
    assert_eq!(s["drill_schedule"], "drills not scheduled", "{s:#}");
    let text = fx.backup(&["status"]);
    text.expect(0)
        .mentions("last drill:     ")
        .mentions(&format!("success {image}"))
        .mentions("next drill:     drills not scheduled");

    let audit = audit(&fx);
    let done = records(&audit, "drill", "success");
    assert_eq!(done.len(), 1, "{audit:#?}");
    assert_eq!(done[0]["target"], image.as_str());
    assert_eq!(done[0]["bytes"], report["bytes"]);
}

#[test]
fn a_drill_of_a_named_image_restores_that_one_under_the_scratch_directory_given() {
    let fx = Fixture::custom(|f| {
        let copy = f.dir.join("checked.sqlite");
        f.spec.components[1] = format!(
            "{}drill_check = [\"sh\", \"-c\", \"cp \\\"$BACKUP_DRILL_PATH\\\" {} && test \\\"$BACKUP_DRILL_COMPONENT\\\" = maindb\"]\n",
            sqlite_component("maindb", &f.db),
            copy.display()
        );
    });
    let (older, _) = fx.create(&[]);
    crate::util::next_second();
    add_rows(&fx.db, 5);
    let (newer, _) = fx.create(&[]);
    assert_ne!(older, newer);

    let scratch = fx.dir.join("drills");
    fs::create_dir(&scratch).unwrap();
    let report = drill(
        &fx,
        &fx.config,
        &[&older, "--scratch", scratch.to_str().unwrap()],
        0,
    );
    assert_eq!(report["outcome"], "success", "{report:#}");
    assert_eq!(report["image"], older.as_str());
    assert_eq!(rows(&fx.dir.join("checked.sqlite")), ROWS);
    let used = PathBuf::from(report["scratch"].as_str().unwrap());
    assert_eq!(used.parent(), Some(scratch.as_path()), "{report:#}");
    assert!(!used.exists());
    assert_eq!(
        fs::read_dir(&scratch).unwrap().count(),
        0,
        "the scratch directory given stays, empty"
    );

    // Without a name: the newest.
    let report = drill(&fx, &fx.config, &[], 0);
    assert_eq!(report["image"], newer.as_str());
    assert_eq!(rows(&fx.dir.join("checked.sqlite")), ROWS + 5);
    assert_scratch_removed(&report, &fx.state);
}

#[test]
fn a_corrupted_image_fails_the_drill_in_status_audit_and_the_on_failure_hook() {
    let fx = Fixture::new();
    let (image, _) = fx.create(&[]);
    // Damage the stored image in its middle, keeping its size.
    let path = fx.image_path(&image);
    let mut bytes = fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 16] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    let hook_out = fx.dir.join("hook.env");
    let config = config_plus(&fx, "hooked.toml", &env_hook(&hook_out));
    let live_before = fx.dir.join("live-before");
    copy_tree(&fx.root, &live_before);

    let report = drill(&fx, &config, &[], 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert_eq!(report["image"], image.as_str());
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f.as_str().unwrap().contains("did not restore")),
        "{report:#}"
    );
    assert_scratch_removed(&report, &fx.state);
    assert_same_tree(&live_before, &fx.root, &[]);

    let s = status(&fx);
    assert_eq!(s["last_drill"]["outcome"], "failed", "{s:#}");
    assert_eq!(s["last_failure"]["operation"], "drill", "{s:#}");
    assert_eq!(s["last_failure"]["image"], image.as_str(), "{s:#}");
    fx.backup(&["status"])
        .expect(0)
        .mentions("last failure:   ")
        .mentions(&format!("failed {image}"));
    let audit = audit(&fx);
    assert_eq!(records(&audit, "drill", "failed").len(), 1, "{audit:#?}");

    let env = fs::read_to_string(&hook_out).expect("the on_failure hook ran");
    for line in [
        "BACKUP_HOOK=drill".to_string(),
        "BACKUP_OUTCOME=failed".to_string(),
        format!("BACKUP_IMAGE={image}"),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    assert!(!env.contains("BACKUP_SECRET="), "{env}");
}

#[test]
fn a_failing_drill_check_fails_the_drill_naming_the_component() {
    let fx = fixture_with_check(r#"["sh", "-c", "echo table objects is missing >&2; exit 3"]"#);
    let (image, _) = fx.create(&[]);
    let hook_out = fx.dir.join("hook.env");
    let config = config_plus(&fx, "hooked.toml", &env_hook(&hook_out));

    let report = drill(&fx, &config, &[], 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert_eq!(report["failed_components"], serde_json::json!(["maindb"]));
    let failure = report["failures"][0].as_str().unwrap();
    assert!(
        failure.contains("component maindb")
            && failure.contains("drill_check")
            && failure.contains("table objects is missing"),
        "{failure}"
    );
    // The restore itself passed, integrity check included.
    assert_eq!(report["restored"], serde_json::json!(["config", "maindb"]));
    assert_eq!(report["checks"][0]["check"], "integrity_check");
    assert_eq!(report["checks"][0]["passed"], true);
    assert_eq!(report["checks"][1]["passed"], false);
    assert_scratch_removed(&report, &fx.state);

    let env = fs::read_to_string(&hook_out).expect("the on_failure hook ran");
    assert!(env.lines().any(|l| l == "BACKUP_HOOK=drill"), "{env}");
    assert!(
        env.lines().any(|l| l == "BACKUP_FAILED_COMPONENTS=maindb"),
        "{env}"
    );
    let s = status(&fx);
    assert_eq!(s["last_drill"]["image"], image.as_str());
    assert!(
        s["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .contains("component maindb"),
        "{s:#}"
    );

    // Plain text: the failure is on the terminal and the exit code is 1.
    let text = fx.backup(&["drill"]);
    text.expect(1).mentions("drill failed").mentions("maindb");
}

#[test]
fn a_drill_past_its_time_limit_fails_stops_its_check_and_removes_the_scratch() {
    let fx = Fixture::custom(|f| {
        let pid = f.dir.join("check.pid");
        f.spec.components[1] = format!(
            "{}drill_check = [\"sh\", \"-c\", \"echo $$ > {}; exec sleep 600\"]\n",
            sqlite_component("maindb", &f.db),
            pid.display()
        );
    });
    fx.create(&[]);
    let report = drill(&fx, &fx.config, &["--timeout", "10s"], 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert_eq!(report["timeout_secs"], 10);
    let failure = report["failures"][0].as_str().unwrap();
    assert!(failure.contains("time limit (10s) passed"), "{failure}");
    assert!(failure.contains("maindb"), "{failure}");
    assert_scratch_removed(&report, &fx.state);
    let pid = fs::read_to_string(fx.dir.join("check.pid")).expect("the check started");
    let pid = pid.trim();
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the check (pid {pid}) still runs"
    );
    let s = status(&fx);
    assert_eq!(s["last_drill"]["outcome"], "failed", "{s:#}");

    // The configuration's limit, as `timeout_secs`.
    let config = config_plus(&fx, "limited.toml", "[drill]\ntimeout_secs = 3\n");
    let report = drill(&fx, &config, &[], 1);
    assert_eq!(report["timeout_secs"], 3, "{report:#}");
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .contains("time limit (3s) passed"),
        "{report:#}"
    );
    assert_scratch_removed(&report, &fx.state);
}

#[test]
fn a_drill_with_no_image_fails_and_bad_arguments_are_input_errors() {
    let fx = Fixture::new();
    let report = drill(&fx, &fx.config, &[], 1);
    assert_eq!(report["outcome"], "failed", "{report:#}");
    assert!(
        report["failures"][0]
            .as_str()
            .unwrap()
            .contains("no successful image of node gw-e2e"),
        "{report:#}"
    );
    let out = run(fx.cmd().args(["--json", "drill", "--timeout", "soon"]));
    out.expect(2);
    assert_eq!(out.json()["error"]["class"], "input");

    // A scratch directory among the live files, or in the state directory
    // beside the keys, is refused before anything is written.
    fx.create(&[]);
    let live_before = fx.dir.join("live-before");
    copy_tree(&fx.root, &live_before);
    for (scratch, names) in [
        (&fx.etc, "a root of component config"),
        (&fx.state, "state directory"),
    ] {
        let out = run(fx.cmd().arg("drill").arg("--scratch").arg(scratch));
        out.expect(2).mentions(names);
    }
    assert_same_tree(&live_before, &fx.root, &[]);
    assert!(status(&fx)["last_drill"]["outcome"] == "failed");
}

/// A daemon configuration: a drill every minute, a SQLite component.
fn daemon_ops(extra: &str) -> Ops {
    let ops = Ops::new("");
    let db = ops.dir().join("appliance/var/db.sqlite");
    make_database(&db, ROWS as usize);
    ops.write_config(
        &ops.config,
        &format!(
            "{extra}\n[[component]]\n{}",
            sqlite_component("maindb", &db)
        ),
    );
    ops
}

#[test]
fn the_daemon_runs_scheduled_drills_and_status_shows_the_next_one() {
    let ops = daemon_ops("[drill]\ncron = [\"* * * * *\"]\n");
    ops.init();
    let image = ops.create();
    let s = ops.status();
    assert!(s["next_drill"].is_string(), "{s:#}");
    assert!(
        s["drill_schedule"]
            .as_str()
            .unwrap()
            .contains("* * * * * (UTC)"),
        "{s:#}"
    );
    assert!(s["last_drill"].is_null(), "{s:#}");
    ops.run(&["status"]).expect(0).mentions("next drill:     ");

    let mut daemon = ops.spawn(&["daemon"]);
    let drilled = crate::util::wait_for(Duration::from_secs(100), "a scheduled drill", || {
        if let Some(code) = daemon.try_code() {
            panic!("the daemon exited with {code}: {}", daemon.stderr_so_far());
        }
        let s = ops.status();
        (!s["last_drill"].is_null()).then_some(s)
    });
    assert_eq!(drilled["last_drill"]["outcome"], "success", "{drilled:#}");
    assert_eq!(drilled["last_drill"]["image"], image.as_str());
    let audit = ops.audit();
    let done = records(&audit, "drill", "success");
    assert!(!done.is_empty(), "{audit:#?}");
    assert_eq!(done[0]["trigger"], "scheduled", "{audit:#?}");
    // Drills alone are no backups.
    assert!(records(&audit, "create", "success").len() == 1);
    signal(daemon.pid(), "-TERM");
    daemon.wait(Duration::from_secs(30)).expect(0);
}

#[test]
fn a_scheduled_backup_waits_for_a_running_drill_instead_of_being_skipped() {
    let ops = daemon_ops("[schedule]\ncron = [\"* * * * *\"]\n");
    ops.init();
    let first = ops.create();

    // A drill held by its check until the test writes to a fifo.
    let fifo = ops.dir().join("release");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let started = ops.dir().join("check-started");
    let db = ops.dir().join("appliance/var/db.sqlite");
    let held = ops.variant(
        "held.toml",
        &format!(
            "[[component]]\n{}drill_check = [\"sh\", \"-c\", \"touch {}; cat {} > /dev/null\"]\n",
            sqlite_component("maindb", &db),
            started.display(),
            fifo.display()
        ),
    );
    let drill = ops.spawn_with(&held, None, &["--json", "drill"]);
    crate::util::wait_for(Duration::from_secs(60), "the drill's check", || {
        started.exists().then_some(())
    });

    // The daemon's next scheduled backup finds the drill and waits.
    let mut daemon = ops.spawn(&["-v", "daemon"]);
    crate::util::wait_for(
        Duration::from_secs(100),
        "the scheduled backup waiting",
        || {
            if let Some(code) = daemon.try_code() {
                panic!("the daemon exited with {code}: {}", daemon.stderr_so_far());
            }
            daemon
                .stderr_so_far()
                .contains("the scheduled backup waits for it")
                .then_some(())
        },
    );
    let audit = ops.audit();
    assert!(
        records(&audit, "create", "skipped").is_empty(),
        "{audit:#?}"
    );
    assert_eq!(ops.images(), vec![first.clone()]);

    // Release the drill: it succeeds, then the backup runs.
    fs::write(&fifo, "go\n").unwrap();
    let out = drill.wait(Duration::from_secs(60));
    out.expect(0);
    assert_eq!(out.json()["outcome"], "success");
    let images = crate::util::wait_for(Duration::from_secs(60), "the scheduled image", || {
        let images = ops.images();
        (images.len() == 2).then_some(images)
    });
    assert_eq!(images[0], first);
    let audit = ops.audit();
    assert!(
        records(&audit, "create", "skipped").is_empty(),
        "{audit:#?}"
    );
    let order: Vec<(&str, &str)> = audit
        .iter()
        .filter(|r| r["operation"] == "drill" || r["operation"] == "create")
        .map(|r| {
            (
                r["operation"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("create", "success"),
            ("drill", "success"),
            ("create", "success")
        ],
        "{audit:#?}"
    );
    signal(daemon.pid(), "-TERM");
    daemon.wait(Duration::from_secs(60)).expect(0);
}

#[test]
fn a_drill_past_its_time_limit_while_reading_the_image_stops_the_read() {
    let fx = Fixture::new();
    let (image, _) = fx.create(&[]);
    let bytes = fs::read(fx.image_path(&image)).unwrap();
    let total = bytes.len();
    // The image arrives slowly through a fifo: 4 KiB every 200 ms, far
    // longer than the drill's limit.
    let fifo = fx.dir.join("slow.bkp");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut out = fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let mut written = 0;
            for chunk in bytes.chunks(4096) {
                if out.write_all(chunk).is_err() {
                    break; // the reader went away
                }
                written += chunk.len();
                std::thread::sleep(Duration::from_millis(200));
            }
            written
        })
    };
    let report = drill(
        &fx,
        &fx.config,
        &[fifo.to_str().unwrap(), "--timeout", "2s"],
        1,
    );
    let written = writer.join().unwrap();
    assert_eq!(report["outcome"], "failed", "{report:#}");
    let failure = report["failures"][0].as_str().unwrap();
    assert!(
        failure.contains("time limit (2s) passed while restoring"),
        "{failure}"
    );
    assert!(
        written < total,
        "the read went on to the end ({written} of {total} bytes) after the limit"
    );
    assert_scratch_removed(&report, &fx.state);
}
