//! What `backup restore` says after a restore (and its dry run), kept in
//! `backup status` and the audit log; and the room checks on real small
//! file systems: a restore that cannot be staged, a backup whose scratch
//! space cannot hold a snapshot.
use std::fs;

use crate::util::*;
use backup_testkit::Tmpfs;

/// config (with two reminders) + maindb, audits (not in a standard
/// backup) and a database dump that does not apply on this node.
fn reporting_fixture() -> Fixture {
    Fixture::custom(|fx| {
        let dir = fx.root.join("var/log/app/audit");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("audit-1.jsonl"), "{\"seq\":1}\n").unwrap();
        fx.spec.components[0]
            .push_str("after_restore = [\"re-enroll VPN certificates\", \"redeploy policy\"]\n");
        fx.spec.components.push(files_component(
            "audits",
            &[&dir],
            "default = false\nrequires = [\"maindb\"]\n",
        ));
        fx.spec.components.push(command_component(
            "pgdb",
            &["true"],
            "applicable_if_exists = \"/nonexistent/run/postgresql\"\n",
        ));
    })
}

#[test]
fn a_restore_reports_what_it_left_out_and_why_with_the_notes_everywhere() {
    let fx = reporting_fixture();
    let (name, _) = fx.create(&[]);
    let target = fx.fresh_dir("t");
    let t = target.to_str().unwrap();
    let lines = [
        "not in the image: audits (audits not included in the backup)",
        "not in the image: pgdb (not applicable on the source node (/nonexistent/run/postgresql does not exist on that node))",
        "after restoring config: re-enroll VPN certificates",
        "after restoring config: redeploy policy",
    ];
    let dry = fx.backup(&["restore", &name, "--target", t, "--dry-run"]);
    dry.expect(0).mentions("room to stage");
    for l in lines {
        dry.mentions(l);
    }
    let out = fx.backup(&["restore", &name, "--target", t]);
    out.expect(0).mentions("restored config, maindb");
    for l in lines {
        out.mentions(l);
    }

    let status = fx.backup(&["status"]);
    status.expect(0).mentions("last restore:");
    status.mentions(&format!("{name} under {t}: restored config, maindb"));
    for l in lines {
        status.mentions(l);
    }
    let json = run(fx.cmd().args(["--json", "status"])).expect(0).json();
    let last = &json["last_restore"];
    assert_eq!(last["image"], name.as_str(), "{json:#}");
    assert_eq!(
        last["summary"]["restored"],
        serde_json::json!(["config", "maindb"])
    );
    assert_eq!(
        last["summary"]["notes"][0]["note"],
        "re-enroll VPN certificates"
    );

    // A selection: maindb is named as not selected, in --json too.
    let t2 = fx.fresh_dir("t2");
    let json = run(fx.cmd().args([
        "--json",
        "restore",
        &name,
        "--target",
        t2.to_str().unwrap(),
        "-C",
        "config",
    ]))
    .expect(0)
    .json();
    let s = &json["summary"];
    assert_eq!(s["restored"], serde_json::json!(["config"]), "{json:#}");
    assert_eq!(
        s["not_restored"],
        serde_json::json!([{
            "component": "maindb",
            "reason": "not selected: name it with --component to restore it"
        }])
    );
    assert_eq!(s["not_in_image"][0]["component"], "audits");
    assert_eq!(s["not_in_image"][1]["component"], "pgdb");

    let audit = run(fx.cmd().args(["--json", "audit"])).expect(0).json();
    let summaries: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "restore" && r["outcome"] == "done")
        .map(|r| r["summary"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(summaries.len(), 2, "{audit:#}");
    assert!(
        summaries[1].starts_with("not restored: maindb (not selected")
            && summaries[1]
                .contains("not in the image: audits (audits not included in the backup)")
            && summaries[1].ends_with("; 2 after-restore note(s)"),
        "{summaries:?}"
    );
    assert!(
        summaries[0].ends_with("; 2 after-restore note(s)"),
        "{summaries:?}"
    );
    fx.backup(&["audit"])
        .expect(0)
        .mentions("[not restored: maindb");
}

#[test]
fn a_restore_onto_a_too_small_file_system_is_refused_with_the_table_and_writes_nothing() {
    let fx = Fixture::custom(|fx| {
        fs::write(fx.etc.join("bulk.bin"), pseudo_random(7, 3 << 20)).unwrap();
    });
    let (name, _) = fx.create(&[]);
    let small = fx.dir.join("small");
    let _small = Tmpfs::mount(&small, "1m");
    let s = small.to_str().unwrap();
    for args in [
        vec!["restore", &name, "--target", s, "--dry-run"],
        vec!["restore", &name, "--target", s],
    ] {
        let out = fx.backup(&args);
        out.expect(1)
            .mentions("not enough free space to stage the restore; nothing was written")
            .mentions("file system")
            .mentions("needed");
        let row = out
            .stderr
            .lines()
            .find(|l| l.trim_start().starts_with("config "))
            .unwrap_or_else(|| panic!("a row for config\n{}", out.dump()));
        assert!(
            row.contains(s) && row.ends_with("(does not fit)"),
            "{}",
            out.dump()
        );
        assert_eq!(leftovers(&small), Vec::<String>::new(), "{}", out.dump());
        assert!(fs::read_dir(&small).unwrap().next().is_none());
    }
    let audit = run(fx.cmd().args(["--json", "audit"])).expect(0).json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["operation"] == "restore" && r["outcome"] == "refused"),
        "{audit:#}"
    );
}

/// The database's pages go straight into the image: a scratch space far
/// smaller than the database is no obstacle, and nothing lands in it.
#[test]
fn a_database_snapshot_needs_no_scratch_space() {
    let fx = Fixture::custom(|fx| {
        let db = rusqlite::Connection::open(&fx.db).unwrap();
        db.execute_batch(
            "CREATE TABLE bulk (b BLOB); INSERT INTO bulk VALUES (randomblob(2097152));",
        )
        .unwrap();
    });
    let scratch = fx.state.join("tmp");
    let _tmp = Tmpfs::mount(&scratch, "512k");
    let (name, report) = fx.create(&[]);
    let maindb = report["manifest"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "maindb")
        .unwrap_or_else(|| panic!("no maindb in {report:#}"));
    assert_eq!(maindb["outcome"], "success", "{report:#}");
    let rows = backup_testkit::demo::sqlite_rows(&fx.db).unwrap();
    let target = fx.fresh_dir("restored");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    let restored = under(&target, &fx.db);
    assert_eq!(backup_testkit::demo::sqlite_rows(&restored).unwrap(), rows);
    assert!(std::fs::read(&restored).unwrap() == std::fs::read(&fx.db).unwrap());
}

/// A files component over the whole appliance that leaves the database to
/// its sqlite component: the database's staging directory lies inside the
/// tree the files component swaps in, and must survive that swap.
fn whole_tree_fixture() -> Fixture {
    Fixture::custom(|fx| {
        let db = fx.db.display().to_string();
        fx.spec.components[0] = files_component(
            "config",
            &[&fx.root],
            &format!("exclude = [\"{db}\", \"{db}-*\"]\n"),
        );
    })
}

fn rows(db: &std::path::Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM objects", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_database_inside_a_restored_tree_is_the_image_s_in_place_and_under_target() {
    let fx = whole_tree_fixture();
    let (name, _) = fx.create(&[]);
    rusqlite::Connection::open(&fx.db)
        .unwrap()
        .execute_batch("DELETE FROM objects WHERE id > 10")
        .unwrap();
    assert_eq!(rows(&fx.db), 10);

    let target = fx.fresh_dir("t");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0)
        .mentions("restored config, maindb");
    let restored = target.join(fx.db.strip_prefix("/").unwrap());
    assert_eq!(rows(&restored), 50, "the database under --target");

    let out = fx.backup(&["restore", &name, "--yes", "-v"]);
    out.expect(0).mentions("restored config, maindb");
    assert_eq!(rows(&fx.db), 50, "the database restored in place");
    // The report lists neither the database's staging directory nor its files.
    let text = format!("{}{}", out.stdout, out.stderr);
    assert!(!text.contains("staging-"), "{text}");
    let leftovers: Vec<_> = fs::read_dir(fx.db.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("staging"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
