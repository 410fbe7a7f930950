//! Operations around single backups: retention, status and per-backup logs
//! after a partial backup, hooks, and the schedule preview.

use std::fs;
use std::time::Duration;

use crate::util::{image_time, records, Ops};

/// The row of `list` that names `image`.
fn list_row(ops: &Ops, image: &str) -> String {
    let out = ops.run(&["list"]);
    out.expect(0);
    out.stdout()
        .lines()
        .find(|l| l.starts_with(image))
        .unwrap_or_else(|| panic!("{image} not listed\n{}", out.dump()))
        .to_string()
}

#[test]
fn custom_backups_never_push_out_the_newest_full_image() {
    let ops = Ops::new("");
    let db = ops.dir().join("appliance/db");
    let audit = ops.dir().join("appliance/audit");
    for dir in [&db, &audit] {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("data"), "rows\n").unwrap();
    }
    ops.write_config(
        &ops.config,
        &format!(
            "[retention]\nkeep_last = 2\n\n\
             [[component]]\nname = \"db\"\nkind = \"files\"\npaths = [{db:?}]\n\n\
             [[component]]\nname = \"audits\"\nkind = \"files\"\npaths = [{audit:?}]\ndefault = false\n",
            db = db.display().to_string(),
            audit = audit.display().to_string(),
        ),
    );
    ops.init();
    let full = ops.create();
    let custom1 = ops.create_expect(&["-C", "config"], 0);
    let custom2 = ops.create_expect(&["-C", "config"], 0);
    assert_eq!(
        ops.images(),
        [full.clone(), custom1.clone(), custom2.clone()],
        "two custom backups under keep_last = 2 must leave the full image"
    );

    // list and show name each image's selection.
    assert!(
        list_row(&ops, &full).ends_with("  standard"),
        "{}",
        list_row(&ops, &full)
    );
    assert!(list_row(&ops, &custom1).ends_with("  custom: config"));
    let shown = ops.run(&["show", &custom2]);
    shown.expect(0);
    assert!(
        shown
            .stdout()
            .lines()
            .any(|l| l == "selection:       custom: config"),
        "{}",
        shown.dump()
    );
    let listed = ops.run(&["list", "--json"]).expect(0).json();
    let entry = |name: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(entry(&full)["selection"]["kind"], "standard");
    assert_eq!(entry(&full)["coverage"], "full");
    assert_eq!(entry(&custom1)["selection"]["components"][0], "config");
    assert_eq!(entry(&custom1)["coverage"], "partial");

    // A third custom backup: the oldest custom one goes, the full one stays.
    let custom3 = ops.create_expect(&["-C", "config"], 0);
    assert_eq!(
        ops.images(),
        [full.clone(), custom2.clone(), custom3.clone()]
    );

    // A custom backup of every standard component is a full one too, and an
    // image with the audits is still a standard one.
    let with_audits = ops.create_expect(&["--include-audits"], 0);
    assert!(list_row(&ops, &with_audits).ends_with("  standard+audits"));
    let both = ops.create_expect(&["-C", "config", "-C", "db"], 0);
    assert_eq!(ops.images(), [with_audits.clone(), both.clone()]);
    let custom4 = ops.create_expect(&["-C", "db"], 0);
    assert_eq!(ops.images(), [both, custom4]);
}

#[test]
fn a_damaged_or_swapped_sidecar_never_blocks_an_intact_image() {
    let ops = Ops::new("");
    ops.init();
    let image = ops.create();
    let other = ops.create();
    let sidecar = ops.store.join(format!("{image}.manifest"));
    let good = fs::read(&sidecar).unwrap();
    let other_sidecar = fs::read(ops.store.join(format!("{other}.manifest"))).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    for b in &mut flipped[middle..middle + 8] {
        *b ^= 0x5a;
    }
    let mut bad_header = good.clone();
    bad_header[20] ^= 0x01;
    // Another appliance (another master key): opening its sidecar here
    // would ask for a passphrase, which this run does not have.
    let foreign = Ops::new("");
    foreign.init();
    let foreign_image = foreign.create();
    let foreign_sidecar =
        fs::read(foreign.store.join(format!("{foreign_image}.manifest"))).unwrap();
    let damages: [(&str, Vec<u8>); 6] = [
        ("bytes flipped", flipped),
        ("header bit flipped", bad_header),
        ("cut short", good[..good.len() - 100].to_vec()),
        ("a few bytes left", good[..10].to_vec()),
        ("another image's sidecar", other_sidecar),
        ("another appliance's sidecar", foreign_sidecar),
    ];
    for (i, (damage, bytes)) in damages.into_iter().enumerate() {
        fs::write(&sidecar, bytes).unwrap();
        let shown = ops.run(&["show", &image]);
        shown.expect(0);
        assert!(
            shown
                .stdout()
                .contains(&format!("image:           {image}")),
            "{damage}: {}",
            shown.dump()
        );
        assert!(
            shown.stderr().contains("sidecar manifest")
                && shown.stderr().contains("reading the image itself"),
            "{damage}: no warning\n{}",
            shown.dump()
        );
        let verified = ops.run(&["verify", &image]);
        verified.expect(0);
        let target = ops.dir().join(format!("restored-{i}"));
        let restored = ops.run(&["restore", &image, "--target", target.to_str().unwrap()]);
        restored.expect(0);
        assert!(
            fs::read_dir(&target).unwrap().next().is_some(),
            "{damage}: nothing restored\n{}",
            restored.dump()
        );
        let listed = ops.run(&["list"]);
        listed.expect(0);
        for out in [&shown, &verified, &restored, &listed] {
            assert!(
                !out.stdout().contains("truncated") && !out.stderr().contains("truncated"),
                "{damage}: a good image called truncated\n{}",
                out.dump()
            );
        }
        assert!(
            listed.stdout().contains("its sidecar manifest"),
            "{damage}: {}",
            listed.dump()
        );
    }
}

/// Every file and directory under `dir`, relative, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn browsing_creates_and_removes_nothing_and_lists_empty_directories() {
    let ops = Ops::new("");
    ops.init();
    let image = ops.create();
    fs::create_dir_all(ops.store.join("site/empty")).unwrap();
    let before = tree(&ops.store);

    let top = ops.run(&["browse"]);
    top.expect(0);
    for wanted in ["site/", image.as_str(), "read yes, write yes"] {
        assert!(top.stdout().contains(wanted), "{wanted}: {}", top.dump());
    }
    let site = ops.run(&["browse", "site/"]);
    site.expect(0);
    assert!(site.stdout().contains("site/empty/"), "{}", site.dump());
    let empty = ops.run(&["browse", "site/empty"]);
    empty.expect(0);
    assert!(
        empty.stdout().contains("read yes, write yes"),
        "{}",
        empty.dump()
    );

    let missing = ops.run(&["browse", "nowhere/"]);
    missing.expect(0);
    assert!(
        missing.stdout().contains("missing: no such directory")
            && !missing.stdout().contains("read yes"),
        "{}",
        missing.dump()
    );
    let json = ops.run(&["browse", "nowhere/", "--json"]).expect(0).json();
    assert_eq!(json["access"]["exists"], false, "{json:#}");
    assert_eq!(json["access"]["read"], false, "{json:#}");

    assert_eq!(tree(&ops.store), before, "browsing changed the storage");
}

#[test]
fn retention_keeps_the_newest_images_with_their_sidecars_and_logs() {
    let ops = Ops::new("[retention]\nkeep_last = 2\n");
    ops.init();
    let mut made = Vec::new();
    for _ in 0..4 {
        made.push(ops.create());
    }
    let mut sorted = made.clone();
    sorted.sort_by_key(|n| image_time(n));
    assert_eq!(sorted, made, "image names follow creation time");
    let (old, kept) = made.split_at(2);

    assert_eq!(ops.images(), kept.to_vec(), "{:?}", ops.store_files());
    let mut expected: Vec<String> = kept
        .iter()
        .flat_map(|n| [n.clone(), format!("{n}.manifest")])
        .collect();
    expected.sort();
    assert_eq!(ops.store_files(), expected, "images and sidecars only");
    let logs: Vec<String> = kept.iter().map(|n| format!("{n}.log")).collect();
    assert_eq!(ops.logs(), logs, "logs of pruned images go with them");
    for n in kept {
        ops.run(&["log", n]).expect(0);
    }
    let gone = ops.run(&["log", &old[0]]);
    gone.expect(2);

    let audit = ops.audit();
    let deletes = records(&audit, "prune.delete", "done");
    let mut targets: Vec<&str> = deletes
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    targets.sort();
    assert_eq!(
        targets,
        old.iter().map(String::as_str).collect::<Vec<_>>(),
        "{audit:#?}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["operation"] == "prune.delete")
            .count(),
        2,
        "{audit:#?}"
    );

    // A dry run with a stricter policy lists one deletion and deletes nothing.
    ops.write_config(&ops.config, "[retention]\nkeep_last = 1\n");
    let before = ops.store_files();
    let out = ops.run(&["prune", "--dry-run"]);
    out.expect(0);
    let text = out.stdout();
    let would: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("would delete"))
        .collect();
    assert_eq!(would.len(), 1, "{}", out.dump());
    assert!(would[0].starts_with(&kept[0]), "{}", out.dump());
    let keep: Vec<&str> = text.lines().filter(|l| l.contains("keep")).collect();
    assert!(
        keep.len() == 1 && keep[0].starts_with(&kept[1]),
        "{}",
        out.dump()
    );
    assert_eq!(ops.store_files(), before, "a dry run deletes nothing");
    assert_eq!(ops.logs(), logs);
    let json = ops.run(&["prune", "--dry-run", "--json"]).expect(0).json();
    let drop: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["keep"] == false)
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(drop, [kept[0].as_str()]);
    assert_eq!(ops.store_files(), before, "a dry run deletes nothing");
    let audit_after = ops.audit();
    assert_eq!(
        records(&audit_after, "prune.delete", "done").len(),
        2,
        "no deletion audited by a dry run"
    );
}

#[test]
fn a_partial_backup_is_visible_in_status_log_and_audit() {
    let ops = Ops::new(
        r#"
[[component]]
name = "brokendb"
kind = "command"
backup = ["sh", "-c", "echo partial-marker-dump-refused >&2; exit 7"]
"#,
    );
    ops.init();
    let image = ops.create_expect(&[], 3);

    let s = ops.status();
    let failure = &s["last_failure"];
    assert_eq!(failure["outcome"], "partial", "{s:#}");
    assert_eq!(failure["image"], image.as_str(), "{s:#}");
    let reason = failure["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("brokendb"), "{s:#}");
    assert!(
        !reason.contains("config"),
        "only the failed component: {s:#}"
    );
    assert_eq!(s["last_backup"]["image"], image.as_str(), "{s:#}");
    assert!(s["last_success"].is_null(), "{s:#}");

    let log = ops.run(&["log", &image]).expect(0).stdout();
    let lines: Vec<&str> = log.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("config") && l.contains("success")),
        "{log}"
    );
    let failed: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("brokendb") && l.contains("failed"))
        .collect();
    assert!(!failed.is_empty(), "{log}");
    assert!(
        failed.iter().any(|l| l.contains("exit")),
        "the failure line says why:\n{log}"
    );
    let started = lines.iter().position(|l| l.contains("brokendb (command)"));
    let finished = lines
        .iter()
        .position(|l| l.contains("brokendb: failed") || l.contains("brokendb: partial"));
    assert!(
        started.is_some() && finished.is_some() && started < finished,
        "per-component start and end lines, in order:\n{log}"
    );

    let audit = ops
        .run(&["audit", "--since", "1h", "--json"])
        .expect(0)
        .json();
    let audit = audit.as_array().unwrap();
    let partial = records(audit, "create", "partial");
    assert_eq!(partial.len(), 1, "{audit:#?}");
    assert_eq!(partial[0]["target"], image.as_str());
    assert!(
        partial[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("brokendb"),
        "{:#}",
        partial[0]
    );
    let future = ops
        .run(&["audit", "--since", "2999-01-01", "--json"])
        .expect(0)
        .json();
    assert_eq!(future.as_array().map(Vec::len), Some(0), "{future:#}");
    let human = ops.run(&["audit", "--since", "1h"]).expect(0).stdout();
    assert!(
        human
            .lines()
            .any(|l| l.contains("create") && l.contains("partial") && l.contains(&image)),
        "{human}"
    );
    // A bad --since is a usage error (exit 2), never a crash.
    for bad in ["yesterday", "5y", "99999999999999d"] {
        let out = ops.run(&["audit", "--since", bad]);
        out.expect(2);
        assert!(out.stderr().contains("--since"), "{}", out.dump());
    }
}

#[test]
fn a_failing_before_hook_fails_the_backup_and_publishes_nothing() {
    let ops = Ops::new("");
    let marker = ops.dir().join("on-failure.txt");
    ops.write_config(
        &ops.config,
        &format!(
            r#"[hooks]
before = ["sh", "-c", "echo nope >&2; exit 9"]
on_failure = ["sh", "-c", "echo \"$BACKUP_OUTCOME\" > {}"]
"#,
            marker.display()
        ),
    );
    ops.init();
    let out = ops.run(&["create"]);
    out.expect(1);
    let err = out.stderr();
    assert!(
        err.contains("before hook") && err.contains("nope"),
        "{}",
        out.dump()
    );
    assert!(
        ops.store_files().is_empty(),
        "nothing published: {:?}",
        ops.store_files()
    );
    assert_eq!(
        fs::read_to_string(&marker).unwrap_or_default().trim(),
        "failed",
        "the on_failure hook ran"
    );
    let s = ops.status();
    assert_eq!(s["state"], "not running", "{s:#}");
    assert!(
        s["last_failure"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("before hook"),
        "{s:#}"
    );
    let audit = ops.audit();
    assert_eq!(records(&audit, "create", "failed").len(), 1, "{audit:#?}");
}

#[test]
fn the_after_hook_is_told_the_outcome_and_the_image() {
    let ops = Ops::new("");
    let out_file = ops.dir().join("after.txt");
    ops.write_config(
        &ops.config,
        &format!(
            r#"[hooks]
after = ["sh", "-c", "printf '%s %s\n' \"$BACKUP_OUTCOME\" \"$BACKUP_IMAGE\" > {}"]
"#,
            out_file.display()
        ),
    );
    ops.init();
    let image = ops.create();
    let text = fs::read_to_string(&out_file).expect("the after hook wrote its file");
    assert_eq!(text.trim(), format!("success {image}"));
}

#[test]
fn schedule_previews_runs_and_a_bad_cron_is_a_usage_error() {
    let ops = Ops::new("[schedule]\ncron = [\"30 2 * * *\"]\n");
    let out = ops.run(&["schedule", "-n", "3"]);
    out.expect(0);
    let text = out.stdout();
    let runs: Vec<&str> = text.lines().filter(|l| l.contains(" local)")).collect();
    assert_eq!(runs.len(), 3, "{}", out.dump());
    assert!(
        runs.iter().all(|l| l.contains("02:30:00 UTC")),
        "{}",
        out.dump()
    );
    let json = ops.run(&["schedule", "-n", "3", "--json"]).expect(0).json();
    let next: Vec<chrono::DateTime<chrono::Utc>> = json["next"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(next.len(), 3, "{json:#}");
    let now = chrono::Utc::now();
    assert!(next[0] > now && next[0] - now <= chrono::Duration::days(1));
    assert!(next
        .windows(2)
        .all(|w| w[1] - w[0] == chrono::Duration::days(1)));

    for bad in ["61 * * * *", "* * * *"] {
        ops.write_config(&ops.config, &format!("[schedule]\ncron = [{bad:?}]\n"));
        for cmd in [&["schedule", "-n", "3"][..], &["status"], &["daemon"]] {
            // Bounded: a daemon that accepted the config would run forever.
            let out = ops.spawn(cmd).wait(Duration::from_secs(30));
            out.expect(2);
            assert!(out.stderr().contains(bad), "{}", out.dump());
        }
    }
}

#[test]
fn local_commands_and_the_daemon_work_while_the_storage_is_missing() {
    let ops = Ops::new("[schedule]\ncron = [\"0 3 * * *\"]\n");
    ops.init();
    fs::remove_dir(&ops.store).unwrap();
    let s = ops.status();
    assert_eq!(s["state"], "not running", "{s:#}");
    ops.run(&["audit"]).expect(0);
    ops.run(&["schedule", "-n", "2"]).expect(0);
    ops.run_secret(crate::util::SECRET, &["key", "check"])
        .expect(0);

    let out = ops.run(&["create"]);
    out.expect_failure();
    assert!(out.stderr().contains("mkdir -p"), "{}", out.dump());
    let human = ops.run(&["status"]).expect(0).stdout();
    let failure = human
        .lines()
        .find(|l| l.starts_with("last failure:"))
        .unwrap_or_default()
        .to_string();
    assert!(failure.contains("mkdir -p"), "{human}");

    let mut daemon = ops.spawn(&["daemon"]);
    let pid = daemon.pid();
    crate::util::wait_for(Duration::from_secs(30), "the daemon's heartbeat", || {
        assert!(
            daemon.try_code().is_none(),
            "the daemon stopped: {}",
            daemon.stderr_so_far()
        );
        let d: serde_json::Value =
            serde_json::from_slice(&fs::read(ops.state.join("daemon.json")).ok()?).ok()?;
        (d["pid"] == pid && !d["next_run"].is_null()).then_some(())
    });
    crate::util::signal(pid, "-TERM");
    daemon.wait(Duration::from_secs(20)).expect(0);
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn is_gone(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

#[test]
fn a_killed_backup_leaves_no_plaintext_and_its_dump_command_dies_with_it() {
    let pidfile = "dump.pid";
    let ops = Ops::new(&format!(
        r#"[[component]]
name = "pgdb"
kind = "command"
backup = ["sh", "-c", "echo $$ > {pidfile}.tmp && mv {pidfile}.tmp {pidfile}; echo plaintext-canary; exec sleep 300"]
"#
    ));
    ops.init();
    let pidfile = ops.dir().join(pidfile);
    let tmp = ops.state.join("tmp");
    let running = ops.spawn(&["create"]);
    let dump_pid: u32 = crate::util::wait_for(
        Duration::from_secs(60),
        "the dump command to start and write",
        || {
            let pid = fs::read_to_string(&pidfile).ok()?.trim().parse().ok()?;
            crate::util::files_under(&tmp)
                .iter()
                .any(|f| {
                    crate::util::contains_bytes(
                        &fs::read(f).unwrap_or_default(),
                        b"plaintext-canary",
                    )
                })
                .then_some(pid)
        },
    );
    crate::util::signal(running.pid(), "-9");
    running.wait(Duration::from_secs(20));
    crate::util::wait_for(Duration::from_secs(20), "the dump command to die", || {
        is_gone(dump_pid).then_some(())
    });

    // A local command does not clean up; the next backup does.
    ops.run(&["status"]).expect(0);
    ops.create_expect(&["-C", "config"], 0);
    let left = crate::util::files_under(&tmp);
    assert!(
        left.is_empty(),
        "scratch left in {}: {left:?}",
        tmp.display()
    );
    assert!(
        fs::read_dir(&tmp).unwrap().next().is_none(),
        "no directory of the killed run is left either"
    );
}

#[test]
fn create_names_the_images_retention_deleted() {
    let ops = Ops::new("[retention]\nkeep_last = 1\n");
    ops.init();
    let first = ops.create();
    let out = ops.run(&["create"]);
    out.expect(0);
    assert!(
        out.stdout()
            .lines()
            .any(|l| l.contains("deleted by retention") && l.contains(&first)),
        "{}",
        out.dump()
    );
    assert_eq!(ops.images().len(), 1);
}

#[test]
fn a_backup_to_an_s3_endpoint_that_is_down_is_the_last_failure() {
    // A port nothing listens on: every connection is refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ops = Ops::new("");
    ops.init();
    let s3 = ops.dir().join("s3.toml");
    let text = ops.config_text("").replace(
        &format!("url = \"file://{}\"", ops.store.display()),
        &format!("url = \"s3://backups/gw?endpoint=http://127.0.0.1:{port}&region=us-east-1\""),
    );
    assert!(text.contains("s3://"), "{text}");
    fs::write(&s3, text).unwrap();
    let mut cmd = ops.cmd_with(&s3, None, &["create"]);
    cmd.env("AWS_ACCESS_KEY_ID", "ops-test")
        .env("AWS_SECRET_ACCESS_KEY", "ops-test-secret-key")
        .env_remove("AWS_PROFILE");
    let out = Ops::run_cmd(cmd, "backup create (S3 down)".into());
    out.expect_failure();

    let s = ops.status();
    let reason = s["last_failure"]["reason"].as_str().unwrap_or_default();
    assert!(!reason.is_empty(), "{s:#}");
    assert_eq!(s["last_backup"]["outcome"], "failed", "{s:#}");
    let human = ops.run(&["status"]).expect(0).stdout();
    assert!(!human.contains("last failure:   none"), "{human}");
    let audit = ops.audit();
    assert_eq!(audit.last().unwrap()["operation"], "create", "{audit:#?}");
}
