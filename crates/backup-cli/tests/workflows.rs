//! End-to-end workflows of the `backup` binary: quickstart, round trips,
//! standard tools on the decrypted payload, identity/version checks,
//! partial backups, custom selections, init, secrets on argv, JSON output.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Case 1: A fresh machine: `quickstart` builds, backs up, verifies, restores and
/// proves the restore identical.
#[test]
fn quickstart_on_a_fresh_machine_proves_an_identical_restore() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qs");
    let out = run(bare_cmd().arg("quickstart").arg("--dir").arg(&dir));
    out.expect(0).mentions("identical");
    assert!(!out.stderr.contains("DIFFERENCE"), "{}", out.dump());
}

/// Case 2 (small): The awkward tree without the 2 GiB file: create, restore under
/// --target, compare content, modes, mtimes, symlinks and hard links.
#[test]
fn rich_tree_round_trips_through_create_and_restore_target() {
    let fx = Fixture::custom(|fx| {
        let tree = fx.root.join("srv/rich tree");
        build_rich_tree(&tree, false);
        fx.spec.components = vec![files_component("tree", &[&tree], "")];
    });
    let tree = fx.root.join("srv/rich tree");
    let (name, report) = fx.create(&[]);
    assert_eq!(report["outcome"], "success", "{report:#}");
    let target = fx.fresh_dir("restored");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    let restored = under(&target, &tree);
    assert_same_tree(&tree, &restored, &[]);
    assert_hard_link_kept(&restored);
    // Nothing but the component's tree is under the target, and no leftovers.
    assert_eq!(leftovers(restored.parent().unwrap()), Vec::<String>::new());
    assert_eq!(leftovers(tree.parent().unwrap()), Vec::<String>::new());
}

/// Case 3: `decrypt` gives a standard .tar.gz that GNU tar lists and extracts.
#[test]
fn decrypted_payload_is_a_standard_tar_gz_for_gnu_tar() {
    require_gnu_tar();
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let payload = fx.dir.join("out.tar.gz");
    let out = fx.backup(&["decrypt", &name, "-o", payload.to_str().unwrap()]);
    out.expect(0).mentions("in clear");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&payload).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "the clear payload must be private");
    }
    let listed = run(Command::new("tar").arg("-tzf").arg(&payload));
    listed.expect(0);
    let names: Vec<&str> = listed.stdout.lines().collect();
    assert_eq!(names.first(), Some(&"backup.json"), "{names:?}");
    assert_eq!(names.last(), Some(&"manifest.json"), "{names:?}");
    let etc_rel = fx.etc.strip_prefix("/").unwrap().display().to_string();
    let db_rel = fx.db.strip_prefix("/").unwrap().display().to_string();
    for want in [
        format!("components/config/{etc_rel}"),
        format!("components/config/{etc_rel}/gateway.conf"),
        format!("components/config/{etc_rel}/policies/policy-3.rules"),
        format!("components/config/{etc_rel}/active.conf"),
        format!("components/config/{etc_rel}/empty.d"),
        format!("components/maindb/{db_rel}"),
    ] {
        assert!(
            names.contains(&want.as_str()),
            "tar -tzf does not list {want}: {names:#?}"
        );
    }
    let x = fx.fresh_dir("extracted");
    fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&payload)
        .arg("-C")
        .arg(&x))
    .expect(0);
    let info: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("backup.json")).unwrap()).unwrap();
    assert_eq!(info["node"], "gw-e2e");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(x.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["outcome"], "success");
    assert_same_tree(&fx.etc, &x.join("components/config").join(&etc_rel), &[]);
    // The database entry is a consistent SQLite snapshot with the same rows.
    let extracted_db = x.join("components/maindb").join(&db_rel);
    assert_eq!(
        backup_testkit::demo::sqlite_rows(&extracted_db).unwrap(),
        backup_testkit::demo::sqlite_rows(&fx.db).unwrap()
    );
}

/// Case 3b: The documented "open an image by hand" flow with GNU tar: decrypt,
/// extract, re-pack (backup.json first, manifest.json last), seal again with
/// `encrypt`, and the re-sealed image verifies and restores identical.
#[test]
fn payload_repacked_with_gnu_tar_seals_verifies_and_restores() {
    require_gnu_tar();
    let fx = Fixture::custom(|fx| {
        let tree = fx.root.join("srv/rich tree");
        build_rich_tree(&tree, false);
        fx.spec
            .components
            .push(files_component("tree", &[&tree], ""));
    });
    let tree = fx.root.join("srv/rich tree");
    let (name, _) = fx.create(&[]);
    let payload = fx.dir.join("payload.tar.gz");
    fx.backup(&["decrypt", &name, "-o", payload.to_str().unwrap()])
        .expect(0);
    let x = fx.fresh_dir("x");
    fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&payload)
        .arg("-C")
        .arg(&x))
    .expect(0);
    let repacked = fx.dir.join("repacked.tar.gz");
    run(Command::new("tar")
        .args(["--sort=name", "--format=gnu", "-czf"])
        .arg(&repacked)
        .arg("-C")
        .arg(&x)
        .args(["backup.json", "components", "manifest.json"]))
    .expect(0);
    let sealed = fx.dir.join("repacked.bkp");
    fx.backup(&[
        "encrypt",
        repacked.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .expect(0);
    fx.backup(&["verify", sealed.to_str().unwrap()]).expect(0);
    let target = fx.fresh_dir("t-repacked");
    fx.backup(&[
        "restore",
        sealed.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ])
    .expect(0);
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    assert_same_tree(&tree, &under(&target, &tree), &[]);
    assert_hard_link_kept(&under(&target, &tree));
    assert_eq!(
        backup_testkit::demo::sqlite_rows(&under(&target, &fx.db)).unwrap(),
        backup_testkit::demo::sqlite_rows(&fx.db).unwrap()
    );
    // An edited file is caught: the manifest no longer matches.
    let etc_rel = fx.etc.strip_prefix("/").unwrap();
    fs::write(
        x.join("components/config")
            .join(etc_rel)
            .join("gateway.conf"),
        "hostname = evil\n",
    )
    .unwrap();
    let edited = fx.dir.join("edited.tar.gz");
    run(Command::new("tar")
        .args(["--sort=name", "--format=gnu", "-czf"])
        .arg(&edited)
        .arg("-C")
        .arg(&x)
        .args(["backup.json", "components", "manifest.json"]))
    .expect(0);
    let sealed = fx.dir.join("edited.bkp");
    // encrypt reads it as restore would: the manifest no longer matches, so
    // it is not sealed, and the message names the way to vouch for the edit.
    fx.backup(&[
        "encrypt",
        edited.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .expect(2)
    .mentions("manifest")
    .mentions("--rehash");
    assert!(!sealed.exists(), "a refused payload was sealed");
    // --rehash records the edit; the image verifies and restores it.
    fx.backup(&[
        "encrypt",
        "--rehash",
        edited.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .expect(0);
    fx.backup(&["verify", sealed.to_str().unwrap()]).expect(0);
    let target = fx.fresh_dir("t-edited");
    fx.backup(&[
        "restore",
        sealed.to_str().unwrap(),
        "--target",
        target.to_str().unwrap(),
    ])
    .expect(0);
    assert_eq!(
        fs::read_to_string(under(&target, &fx.etc).join("gateway.conf")).unwrap(),
        "hostname = evil\n"
    );
}

/// `encrypt` refuses what is not a payload with a message an operator can
/// act on: junk is named as such (the tar reader's complaint quoted the junk's
/// bytes), and a payload re-packed from inside its directory as `.` (entries
/// `./backup.json`, …) gets the command that re-packs it right.
#[test]
fn encrypt_says_what_is_wrong_with_junk_and_with_a_dot_repack() {
    require_gnu_tar();
    let fx = Fixture::new();
    let junk = fx.dir.join("junk.bin");
    let bytes: Vec<u8> = (0u32..5000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&junk, &bytes).unwrap();
    let sealed = fx.dir.join("junk.bkp");
    let out = fx.backup(&[
        "encrypt",
        junk.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ]);
    out.expect(2).mentions("not a backup payload");
    assert!(!out.stderr.contains("\\u{"), "{}", out.dump());
    assert!(!sealed.exists(), "junk was sealed");

    let (name, _) = fx.create(&[]);
    let payload = fx.dir.join("payload.tar.gz");
    fx.backup(&["decrypt", &name, "-o", payload.to_str().unwrap()])
        .expect(0);
    let x = fx.fresh_dir("x");
    fs::create_dir(&x).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(&payload)
        .arg("-C")
        .arg(&x))
    .expect(0);
    let dotted = fx.dir.join("dotted.tar.gz");
    run(Command::new("tar")
        .arg("-czf")
        .arg(&dotted)
        .arg("-C")
        .arg(&x)
        .arg("."))
    .expect(0);
    let sealed = fx.dir.join("dotted.bkp");
    fx.backup(&[
        "encrypt",
        dotted.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .expect(2)
    .mentions("backup.json components manifest.json");
    assert!(!sealed.exists(), "a refused payload was sealed");
}

/// `verify -` reads the image from standard input, so a stream checks in a
/// pipe (`backup create -o - | backup verify -`); "-" was looked up as a
/// name in the storage ("not found: object -").
#[test]
fn verify_dash_reads_the_image_from_standard_input() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let image = fs::File::open(fx.image_path(&name)).unwrap();
    run(fx.cmd().args(["verify", "-"]).stdin(image))
        .expect(0)
        .mentions("verified");
    // Not an image: refused as such.
    let junk = fx.dir.join("junk-in");
    fs::write(&junk, b"not an image at all").unwrap();
    run(fx
        .cmd()
        .args(["verify", "-"])
        .stdin(fs::File::open(&junk).unwrap()))
    .expect_failure();
}

/// Case 7a: Another product version: refused by default naming both versions,
/// accepted with --force-version (by storage name and by file path).
#[test]
fn restore_refuses_another_version_unless_forced() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let newer = fx.config_variant("newer.toml", |s| s.version = "2.5.0".into());
    let image_file = fx.image_path(&name);
    for image in [name.as_str(), image_file.to_str().unwrap()] {
        let target = fx.dir.join(format!("t-version-{}", image.len()));
        let out =
            run(fx
                .cmd_with(&newer)
                .args(["restore", image, "--target", target.to_str().unwrap()]));
        out.expect_failure()
            .mentions("1.0.0")
            .mentions("2.5.0")
            .mentions("--force-version");
        assert_eq!(
            out.code,
            1,
            "a version mismatch is a failure, not a usage error\n{}",
            out.dump()
        );
        assert!(
            non_dirs(&target).is_empty(),
            "files written despite the refusal: {:?}",
            non_dirs(&target)
        );
        let out = run(fx.cmd_with(&newer).args([
            "restore",
            image,
            "--target",
            target.to_str().unwrap(),
            "--force-version",
        ]));
        out.expect(0);
        assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    }
}

/// Case 7b: Another node: refused naming both nodes, accepted with --force-identity.
#[test]
fn restore_refuses_another_node_unless_forced() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let other = fx.config_variant("other-node.toml", |s| s.node = "gw-other".into());
    let image_file = fx.image_path(&name);
    for image in [name.as_str(), image_file.to_str().unwrap()] {
        let target = fx.dir.join(format!("t-node-{}", image.len()));
        let out =
            run(fx
                .cmd_with(&other)
                .args(["restore", image, "--target", target.to_str().unwrap()]));
        out.expect_failure()
            .mentions("gw-e2e")
            .mentions("gw-other")
            .mentions("--force-identity");
        assert!(
            non_dirs(&target).is_empty(),
            "files written despite the refusal: {:?}",
            non_dirs(&target)
        );
        // --force-version does not override an identity mismatch.
        run(fx.cmd_with(&other).args([
            "restore",
            image,
            "--target",
            target.to_str().unwrap(),
            "--force-version",
        ]))
        .expect_failure();
        let out = run(fx.cmd_with(&other).args([
            "restore",
            image,
            "--target",
            target.to_str().unwrap(),
            "--force-identity",
        ]));
        out.expect(0);
        assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    }
}

/// Case 8: A failing component: exit 3 and a partial image by default; with
/// --halt exit 1 and nothing published.
#[test]
fn failing_component_gives_a_partial_image_or_nothing_with_halt() {
    let fx = Fixture::custom(|fx| {
        fx.spec.components.push(command_component(
            "flaky",
            &["sh", "-c", "echo boom >&2; exit 7"],
            "",
        ));
    });
    // Human output.
    let out = fx.backup(&["create"]);
    out.expect(3)
        .mentions("partial")
        .mentions("flaky")
        .mentions("boom");
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("flaky"))
        .unwrap_or_default();
    assert!(
        line.contains("failed"),
        "the flaky line does not say failed: {line:?}\n{}",
        out.dump()
    );
    next_second();
    // JSON output.
    let (name, report) = fx.create_expect(&[], 3);
    assert_eq!(report["outcome"], "partial", "{report:#}");
    let comps = report["manifest"]["components"].as_array().unwrap();
    let flaky = comps
        .iter()
        .find(|c| c["name"] == "flaky")
        .expect("flaky recorded");
    assert_eq!(flaky["outcome"], "failed");
    let err = flaky["error"].as_str().expect("flaky has an error");
    assert!(
        err.contains("boom") && err.contains('7'),
        "error does not carry stderr and status: {err}"
    );
    for ok in ["config", "maindb"] {
        assert_eq!(
            comps.iter().find(|c| c["name"] == ok).unwrap()["outcome"],
            "success"
        );
    }
    // list and show tell it is partial.
    let listed = fx.backup(&["list"]);
    listed.expect(0);
    let row = listed
        .stdout
        .lines()
        .find(|l| l.contains(&name))
        .unwrap_or_else(|| panic!("{}", listed.dump()));
    assert!(row.contains("partial"), "list row: {row}");
    let listed = run(fx.cmd().args(["--json", "list"]));
    let entry = listed
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == name.as_str())
        .cloned()
        .unwrap();
    assert_eq!(entry["sidecar"]["manifest"]["outcome"], "partial");
    let shown = fx.backup(&["show", &name]);
    shown.expect(0).mentions("partial").mentions("boom");
    let outcome_line = shown
        .stdout
        .lines()
        .find(|l| l.starts_with("outcome:"))
        .unwrap_or_default();
    assert!(outcome_line.contains("partial"), "{}", shown.dump());
    // The partial image restores what it holds and says what it skipped.
    let target = fx.fresh_dir("partial-restore");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(3)
        .mentions("skipped flaky");
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    // Asking for the failed component is refused.
    let t2 = fx.dir.join("partial-restore-2");
    fx.backup(&[
        "restore",
        &name,
        "--component",
        "flaky",
        "--target",
        t2.to_str().unwrap(),
    ])
    .expect(2)
    .mentions("flaky");

    // --halt: exit 1, nothing new in the storage.
    let before = all_paths(&fx.store);
    next_second();
    let out = fx.backup(&["create", "--halt"]);
    out.expect(1).mentions("flaky").mentions("--halt");
    let after = all_paths(&fx.store);
    assert_eq!(before, after, "--halt left something in the storage");
    let scratch = all_paths(&fx.state.join("tmp"));
    assert!(
        scratch.is_empty(),
        "scratch files left in the state directory: {scratch:?}"
    );
}

/// Case 9: Custom selections: one component; unknown names and missing
/// requirements are usage errors naming what exists / what is missing.
#[test]
fn custom_backup_selection_and_its_usage_errors() {
    let fx = Fixture::custom(|fx| {
        let audit = fx.root.join("var/log/app/audit");
        fs::create_dir_all(&audit).unwrap();
        fs::write(audit.join("audit-1.jsonl"), "{\"seq\":1}\n").unwrap();
        fx.spec.components.push(files_component(
            "audits",
            &[&audit],
            "default = false\nrequires = [\"maindb\"]\n",
        ));
    });
    let (name, report) = fx.create(&["--component", "config"]);
    assert_eq!(report["info"]["selection"], "custom");
    let planned: Vec<&str> = report["info"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["config"]);
    let target = fx.fresh_dir("custom");
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    assert!(
        !under(&target, &fx.db).exists(),
        "a component outside the selection was restored"
    );

    let before = all_paths(&fx.store);
    let out = fx.backup(&["create", "--component", "nosuch"]);
    out.expect(2)
        .mentions("nosuch")
        .mentions("config")
        .mentions("maindb")
        .mentions("audits");
    let out = fx.backup(&["create", "--component", "audits"]);
    out.expect(2).mentions("requires").mentions("maindb");
    assert_eq!(
        before,
        all_paths(&fx.store),
        "a refused custom backup wrote to the storage"
    );

    // With its requirement it works (written to a file: same second as above).
    let file = fx.dir.join("audits.bkp");
    let (_, report) = fx.create(&[
        "--component",
        "audits",
        "--component",
        "maindb",
        "-o",
        file.to_str().unwrap(),
    ]);
    let planned: Vec<&str> = report["info"]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(planned, ["maindb", "audits"]);
    fx.backup(&["verify", file.to_str().unwrap()]).expect(0);
}

/// Case 10: `init` refuses a second time and refuses a short secret.
#[test]
fn init_refuses_twice_and_refuses_a_short_secret() {
    let fx = Fixture::new();
    let keyring = fs::read(fx.state.join("keyring.json")).unwrap();
    let key = fs::read(fx.state.join("master.key")).unwrap();
    fx.backup(&["init"]).expect(2).mentions("already set");
    assert_eq!(
        fs::read(fx.state.join("keyring.json")).unwrap(),
        keyring,
        "second init changed the keyring"
    );
    assert_eq!(
        fs::read(fx.state.join("master.key")).unwrap(),
        key,
        "second init changed the key file"
    );

    let fresh_state = fx.dir.join("state-short");
    let cfg = fx.config_variant("short.toml", |s| s.state_dir = fresh_state.clone());
    let out = run(bare_cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("init")
        .env("BACKUP_SECRET", "abcde"));
    out.expect(2).mentions("too short");
    assert!(
        !fresh_state.join("keyring.json").exists(),
        "a keyring was written for a refused secret"
    );
    assert!(
        !fresh_state.join("master.key").exists(),
        "a key file was written for a refused secret"
    );
    // The same through --secret-file.
    let secret_file = fx.dir.join("short-secret");
    fs::write(&secret_file, "abcde\n").unwrap();
    let out = run(bare_cmd()
        .arg("--config")
        .arg(&cfg)
        .arg("--secret-file")
        .arg(&secret_file)
        .arg("init"));
    out.expect(2).mentions("too short");
    // No secret at all and no terminal: a usage error, not a hang.
    let out = run(bare_cmd().arg("--config").arg(&cfg).arg("init"));
    out.expect(2).mentions("BACKUP_SECRET");
    assert!(!fresh_state.join("keyring.json").exists());
}

/// Case 11: The secret is never accepted on the command line.
#[test]
fn secret_on_argv_is_a_usage_error() {
    let fx = Fixture::new();
    for args in [
        &["create", "--secret", "abcdefghijkl"][..],
        &["--secret", "abcdefghijkl", "create"][..],
        &["create", "--secret=abcdefghijkl"][..],
        &["init", "--passphrase", "abcdefghijkl"][..],
    ] {
        let out = fx.backup(args);
        out.expect(2);
        assert!(out.stderr.contains("unexpected argument"), "{}", out.dump());
    }
    assert!(
        all_paths(&fx.store).is_empty(),
        "a refused command wrote an image"
    );
    let help = run(bare_cmd().arg("--help"));
    help.expect(0)
        .mentions("never accepted on the command line");
}

/// Case 12: --json output of create, list, show, verify (and restore) parses and
/// carries the documented fields.
#[test]
fn json_outputs_parse_with_the_expected_fields() {
    let fx = Fixture::new();
    let out = run(fx.cmd().args(["--json", "create"]));
    out.expect(0);
    let create = out.json();
    let name = create["image"].as_str().unwrap().to_string();
    assert!(
        name.starts_with("e2e-") && name.ends_with("_gw-e2e_standalone.bkp"),
        "{name}"
    );
    assert_eq!(create["outcome"], "success");
    assert!(create["size"].as_u64().unwrap() > 300 * 1024, "{create:#}");
    assert!(
        create["location"]
            .as_str()
            .unwrap()
            .contains(fx.store.to_str().unwrap()),
        "{create:#}"
    );
    assert_eq!(create["info"]["product"], "e2e-gateway");
    assert_eq!(create["info"]["product_version"], "1.0.0");
    assert_eq!(create["info"]["node"], "gw-e2e");
    assert_eq!(create["info"]["selection"], "standard");
    assert!(create["sidecar_error"].is_null(), "{create:#}");
    let comps = create["manifest"]["components"].as_array().unwrap();
    assert_eq!(comps.len(), 2);
    for c in comps {
        assert_eq!(c["outcome"], "success");
        assert!(c["entries"].as_u64().unwrap() > 0);
        assert_eq!(c["sha256"].as_str().unwrap().len(), 64);
    }
    // Progress on stderr: JSON lines.
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {line}"));
        assert!(v.get("event").is_some(), "{line}");
    }

    let list = run(fx.cmd().args(["--json", "list"]));
    list.expect(0);
    let list = list.json();
    let items = list.as_array().unwrap();
    assert_eq!(items.len(), 1, "{list:#}");
    assert_eq!(items[0]["name"], name.as_str());
    assert_eq!(items[0]["size"], create["size"]);
    assert_eq!(items[0]["sidecar"]["image"], name.as_str());
    assert_eq!(items[0]["sidecar"]["manifest"], create["manifest"]);
    assert!(items[0]["sidecar_error"].is_null());

    let show = run(fx.cmd().args(["--json", "show", &name]));
    show.expect(0);
    let show = show.json();
    assert_eq!(show["image"], name.as_str());
    assert_eq!(show["source"], "sidecar");
    assert_eq!(show["size"], create["size"]);
    assert_eq!(show["info"], create["info"]);
    assert_eq!(show["manifest"], create["manifest"]);
    // By file path: read from the image itself.
    let path = fx.image_path(&name);
    let show_file = run(fx.cmd().args(["--json", "show", path.to_str().unwrap()]));
    show_file.expect(0);
    let show_file = show_file.json();
    assert_eq!(show_file["source"], "image");
    assert_eq!(show_file["manifest"], create["manifest"]);

    let verify = run(fx.cmd().args(["--json", "verify", &name]));
    verify.expect(0);
    let verify = verify.json();
    assert_eq!(verify["image"], name.as_str());
    assert_eq!(verify["size"], create["size"]);
    assert_eq!(verify["manifest"], create["manifest"]);
    assert_eq!(verify["verified"], serde_json::json!(["config", "maindb"]));

    let target = fx.fresh_dir("json-restore");
    let restore = run(fx.cmd().args([
        "--json",
        "restore",
        &name,
        "--target",
        target.to_str().unwrap(),
    ]));
    restore.expect(0);
    let restore = restore.json();
    assert_eq!(restore["restored"], serde_json::json!(["config", "maindb"]));
    assert_eq!(restore["skipped_failed"], serde_json::json!([]));
    assert_eq!(Path::new(restore["target"].as_str().unwrap()), target);
}

/// A fixture whose config component excludes `*.tmp`, backed up, then
/// changed: an edited file, a file the image lacks, an edited excluded file.
/// Gives the image name.
fn fixture_changed_after_backup() -> (Fixture, String) {
    let fx = Fixture::custom(|fx| {
        fx.spec.components[0] = files_component("config", &[&fx.etc], "exclude = [\"*.tmp\"]\n");
        fs::write(fx.etc.join("cache.tmp"), "excluded at backup time\n").unwrap();
    });
    let (name, _) = fx.create(&[]);
    fs::write(fx.etc.join("cache.tmp"), "excluded, edited since\n").unwrap();
    fs::write(fx.etc.join("added-since.conf"), "not in the image\n").unwrap();
    fs::write(fx.etc.join("gateway.conf"), "edited since\n").unwrap();
    (fx, name)
}

/// Case 13: An in-place restore without a terminal needs --yes; --dry-run
/// prints the plan and changes nothing; the restore keeps excluded files as
/// they are and removes what the image lacks; the audit log says where and what.
#[test]
fn in_place_restore_plans_needs_yes_and_keeps_excluded_files() {
    let (fx, name) = fixture_changed_after_backup();
    let before = fx.dir.join("before");
    copy_tree(&fx.etc, &before);
    let unchanged = |what: &str| {
        assert_same_tree(&before, &fx.etc, &[]);
        assert_eq!(
            leftovers(fx.etc.parent().unwrap()),
            Vec::<String>::new(),
            "{what} left staging behind"
        );
    };

    fx.backup(&["restore", &name])
        .expect(2)
        .mentions("no terminal")
        .mentions("--yes")
        .mentions("--dry-run");
    unchanged("a refused restore");
    let audit = run(fx.cmd().args(["--json", "audit"])).expect(0).json();
    let last = audit.as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["operation"], "restore", "{last:#}");
    assert_eq!(last["outcome"], "refused", "{last:#}");
    assert!(
        last["target"].as_str().unwrap().contains("in place"),
        "{last:#}"
    );

    let out = fx.backup(&["restore", &name, "--dry-run"]);
    out.expect(0).mentions("dry run");
    let line = |verb: &str, file: &str| format!("{verb} {}", fx.etc.join(file).display());
    for expected in [
        line("remove ", "added-since.conf"),
        line("keep   ", "cache.tmp"),
        line("replace", "gateway.conf"),
    ] {
        assert!(
            out.stdout.contains(&expected),
            "the plan lacks {expected:?}\n{}",
            out.dump()
        );
    }
    unchanged("--dry-run");
    let plan = run(fx.cmd().args(["--json", "restore", &name, "--dry-run"]));
    let plan = plan.expect(0).json();
    let config = &plan["components"][0];
    assert_eq!(config["name"], "config");
    assert_eq!(
        config["removed"],
        serde_json::json!({"count": 1, "paths": [fx.etc.join("added-since.conf")]})
    );
    assert_eq!(
        config["kept"],
        serde_json::json!({"count": 1, "paths": [fx.etc.join("cache.tmp")]})
    );
    unchanged("--json --dry-run");

    fx.backup(&["restore", &name, "--yes"])
        .expect(0)
        .mentions("1 removed")
        .mentions("1 kept");
    assert_eq!(
        fs::read_to_string(fx.etc.join("cache.tmp")).unwrap(),
        "excluded, edited since\n",
        "the excluded file was not kept as it was"
    );
    assert!(!fx.etc.join("added-since.conf").exists());
    assert_eq!(
        fs::read_to_string(fx.etc.join("gateway.conf")).unwrap(),
        "hostname = gw-e2e\nport = 8443\n"
    );
    assert_eq!(leftovers(fx.etc.parent().unwrap()), Vec::<String>::new());

    // A non-empty --target needs confirming too; a new one does not.
    let busy = fx.dir.join("busy-target");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("mine.txt"), "mine\n").unwrap();
    fx.backup(&["restore", &name, "--target", busy.to_str().unwrap()])
        .expect(2)
        .mentions("not empty");
    assert_eq!(non_dirs(&busy).len(), 1);
    let fresh = fx.fresh_dir("fresh-target");
    fx.backup(&["restore", &name, "--target", fresh.to_str().unwrap()])
        .expect(0);

    let audit = run(fx.cmd().args(["--json", "audit"])).expect(0).json();
    let restores: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == "restore" && r["outcome"] == "done")
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(restores.len(), 2, "{audit:#}");
    assert!(
        restores[0].contains(&name)
            && restores[0].contains("in place")
            && restores[0].contains("config, maindb"),
        "{restores:?}"
    );
    assert!(
        restores[1].contains(&format!("--target {}", fresh.display())),
        "{restores:?}"
    );
}

/// Case 14: On a terminal an in-place restore shows its plan and asks: `n`
/// changes nothing, `y` restores.
#[test]
fn on_a_terminal_restore_asks_before_changing_anything() {
    let (fx, name) = fixture_changed_after_backup();
    let before = fx.dir.join("before");
    copy_tree(&fx.etc, &before);
    // `script` (util-linux) runs the binary on a pseudo-terminal.
    let on_terminal = |answer: &str| {
        let line = format!("{BIN} --config {} restore {name}", fx.config.display());
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env("BACKUP_SECRET", SECRET)
            .env_remove("BACKUP_CONFIG")
            .current_dir(&fx.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("this test needs `script` (util-linux): {e}"));
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what: format!("script -qec '{line}' (answering {answer:?})"),
        }
    };
    let out = on_terminal("n\n");
    out.expect(2)
        .mentions("restore plan")
        .mentions(&format!(
            "remove  {}",
            fx.etc.join("added-since.conf").display()
        ))
        .mentions("go ahead")
        .mentions("not confirmed");
    assert_same_tree(&before, &fx.etc, &[]);

    on_terminal("y\n")
        .expect(0)
        .mentions("restored config, maindb");
    assert!(!fx.etc.join("added-since.conf").exists());
    assert_eq!(
        fs::read_to_string(fx.etc.join("cache.tmp")).unwrap(),
        "excluded, edited since\n"
    );
}

/// An excluded file the restore cannot keep — it lies under a directory
/// where the image holds a symlink — fails the plan (the dry run said all
/// was well, then the restore failed), so the restore is refused with
/// nothing changed; the message names the live paths (not the staging
/// directory's) and what to do.
#[test]
fn an_excluded_file_that_cannot_be_kept_names_the_live_path_and_the_way_out() {
    let fx = Fixture::custom(|fx| {
        fx.spec.components[0] = files_component("config", &[&fx.etc], "exclude = [\"*.tmp\"]\n");
    });
    let (name, _) = fx.create(&[]);
    // active.conf is a symlink in the image; here it became a directory
    // holding an excluded file.
    let dir = fx.etc.join("active.conf");
    fs::remove_file(&dir).unwrap();
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("keep.tmp"), "excluded\n").unwrap();
    for args in [["restore", &name, "--dry-run"], ["restore", &name, "--yes"]] {
        let out = fx.backup(&args);
        out.expect(2)
            .mentions(&format!(
                "{}: the image holds",
                dir.join("keep.tmp").display()
            ))
            .mentions(&format!(
                "at {}, where this appliance has a directory",
                dir.display()
            ))
            .mentions("move");
        assert!(!out.stderr.contains(".restore-"), "{}", out.dump());
        assert_eq!(
            fs::read_to_string(dir.join("keep.tmp")).unwrap(),
            "excluded\n"
        );
    }
}

/// A restore refused for want of a terminal points to the dry run of the
/// same restore: with its --target and its selection (the suggested command
/// showed the in-place plan of every component).
#[test]
fn the_refusal_without_a_terminal_names_the_dry_run_of_the_same_restore() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let busy = fx.dir.join("busy target");
    fs::create_dir(&busy).unwrap();
    fs::write(busy.join("mine.txt"), "mine\n").unwrap();
    let busy_arg = busy.to_str().unwrap();
    fx.backup(&["restore", &name, "-C", "config", "--target", busy_arg])
        .expect(2)
        .mentions(&format!(
            "`backup restore {name} -C config --target '{busy_arg}' --dry-run`"
        ));
    fx.backup(&["restore", &name, "--include-audits"])
        .expect(2)
        .mentions(&format!(
            "`backup restore {name} --include-audits --dry-run`"
        ));
}

/// Case 15: Audit records come back only when asked: a default restore of an
/// image that holds them leaves them out and says so; --include-audits
/// restores them.
#[test]
fn restore_leaves_audits_out_unless_asked() {
    let fx = Fixture::custom(|fx| {
        let dir = fx.root.join("var/log/app/audit");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("audit-1.jsonl"), "{\"seq\":1}\n").unwrap();
        fx.spec.components.push(files_component(
            "audits",
            &[&dir],
            "default = false\nrequires = [\"maindb\"]\n",
        ));
    });
    let audit = fx.root.join("var/log/app/audit");
    let (name, _) = fx.create(&["--include-audits"]);
    let since = audit.join("audit-2.jsonl");
    fs::write(&since, "{\"seq\":2}\n").unwrap();
    fx.backup(&["restore", &name, "--yes"])
        .expect(0)
        .mentions("not restored: audits")
        .mentions("--include-audits");
    assert!(
        since.exists(),
        "a default restore replaced the audit records"
    );
    let json = run(fx.cmd().args(["--json", "restore", &name, "--yes"]))
        .expect(0)
        .json();
    assert_eq!(json["restored"], serde_json::json!(["config", "maindb"]));
    assert_eq!(json["left_out"], serde_json::json!(["audits"]));
    fx.backup(&["restore", &name, "--yes", "--include-audits"])
        .expect(0)
        .mentions("restored config, maindb, audits");
    assert!(
        !since.exists(),
        "--include-audits did not restore the audit records"
    );
}
