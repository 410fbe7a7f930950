//! Second copies through the binary: `[[copy]]` destinations (a local
//! directory and a real OpenSSH sshd on 127.0.0.1) receiving each backup,
//! verified; their own retention; a broken destination reported without
//! failing the backup; `backup copy IMAGE --to URL` by hand.

use std::fs;
use std::path::{Path, PathBuf};

use backup_testkit::sshd::Sshd;
use backup_testkit::Tmpfs;
use serde_json::Value;

use crate::util::{published_images, run, sha256_file, write_random_file, Fixture};

/// The fixture's config with `extra` appended (`[[copy]]` tables, hooks).
fn config_with(fx: &Fixture, file: &str, extra: &str) -> PathBuf {
    let path = fx.dir.join(file);
    fs::write(&path, format!("{}\n{extra}", fx.spec.render())).unwrap();
    path
}

/// A config whose storage is `dir` (to read a copy as the engine reads images).
fn reading(fx: &Fixture, dir: &Path) -> PathBuf {
    let text = fx.spec.render().replace(
        &format!("url = \"file://{}\"", fx.spec.store.display()),
        &format!("url = \"file://{}\"", dir.display()),
    );
    let path = fx.dir.join(format!(
        "reading-{}.toml",
        dir.file_name().unwrap().to_string_lossy()
    ));
    fs::write(&path, text).unwrap();
    path
}

/// The image and its sidecar in `there` are byte for byte those of the store.
fn assert_same_copy(fx: &Fixture, there: &Path, name: &str) {
    for file in [name.to_string(), format!("{name}.manifest")] {
        assert!(
            there.join(&file).is_file(),
            "{file} not in {}",
            there.display()
        );
        assert_eq!(
            sha256_file(&there.join(&file)),
            sha256_file(&fx.store.join(&file)),
            "{file} differs in {}",
            there.display()
        );
    }
}

fn copy_named<'a>(copies: &'a Value, destination: &str) -> &'a Value {
    copies
        .as_array()
        .unwrap_or_else(|| panic!("no copies in {copies}"))
        .iter()
        .find(|c| c["destination"] == destination)
        .unwrap_or_else(|| panic!("no copy to {destination} in {copies}"))
}

/// Audit records (JSON) of `operation`.
fn audited(fx: &Fixture, config: &Path, operation: &str) -> Vec<Value> {
    let out = run(fx.cmd_with(config).args(["--json", "audit"]));
    out.expect(0);
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["operation"] == operation)
        .cloned()
        .collect()
}

#[test]
fn each_backup_is_copied_to_every_destination_and_verified_there() {
    let sshd = Sshd::start().expect("an sshd on 127.0.0.1");
    let fx = Fixture::new();
    let offsite = fx.dir.join("offsite");
    fs::create_dir_all(&offsite).unwrap();
    let remote = fx.dir.join("remote/copies");
    let config = config_with(
        &fx,
        "copies.toml",
        &format!(
            "[[copy]]\nname = \"usb\"\nurl = \"file://{}\"\n\n[[copy]]\nname = \"vault\"\nurl = \"{}\"\nssh_key = \"{}\"\nhost_key_sha256 = \"{}\"\n",
            offsite.display(),
            sshd.url(&remote),
            sshd.key.display(),
            sshd.fingerprint
        ),
    );

    let mut names = Vec::new();
    for _ in 0..2 {
        let out = run(fx.cmd_with(&config).args(["--json", "create"]));
        out.expect(0);
        let report = out.json();
        let name = report["image"].as_str().unwrap().to_owned();
        for destination in ["usb", "vault"] {
            let c = copy_named(&report["copies"], destination);
            assert_eq!(c["outcome"], "copied", "{c}");
            assert_eq!(c["image"], name.as_str());
            assert_eq!(
                c["bytes"].as_u64().unwrap(),
                fs::metadata(fx.store.join(&name)).unwrap().len()
            );
        }
        assert_same_copy(&fx, &offsite, &name);
        assert_same_copy(&fx, &remote, &name);
        names.push(name);
    }
    assert_eq!(published_images(&offsite), names);
    assert_eq!(published_images(&remote), names);
    // Nothing but the images and their sidecars (no temporary names left).
    assert_eq!(fs::read_dir(&offsite).unwrap().count(), 4);

    // The copy is an image the engine accepts, checked as restore checks.
    let at_usb = reading(&fx, &offsite);
    run(fx.cmd_with(&at_usb).args(["verify", &names[1]])).expect(0);
    run(fx.cmd_with(&at_usb).arg("list"))
        .expect(0)
        .mentions(&names[0]);

    // Status: each destination's last copy; the audit log: one record each.
    let out = run(fx.cmd_with(&config).args(["--json", "status"]));
    out.expect(0);
    let status = out.json();
    for destination in ["usb", "vault"] {
        let c = copy_named(&status["copies"], destination);
        assert_eq!(c["outcome"], "copied");
        assert_eq!(c["image"], names[1].as_str());
        assert!(c["time"].is_string(), "{c}");
    }
    let vault = copy_named(&status["copies"], "vault");
    assert!(
        vault["location"].as_str().unwrap().starts_with("sftp://"),
        "{vault}"
    );
    run(fx.cmd_with(&config).arg("status"))
        .expect(0)
        .mentions("to vault")
        .mentions("copied");
    let copies = audited(&fx, &config, "copy");
    assert_eq!(copies.len(), 4, "{copies:?}");
    assert!(copies.iter().all(|r| r["outcome"] == "done"), "{copies:?}");
    assert!(
        copies.iter().any(|r| r["target"] == names[0].as_str()
            && r["summary"].as_str().unwrap().contains("vault")),
        "{copies:?}"
    );
}

#[test]
fn a_destination_keeps_what_its_own_retention_keeps() {
    let fx = Fixture::new();
    let offsite = fx.dir.join("offsite");
    fs::create_dir_all(&offsite).unwrap();
    let config = config_with(
        &fx,
        "kept.toml",
        &format!(
            "[[copy]]\nname = \"offsite\"\nurl = \"file://{}\"\n[copy.retention]\nkeep_last = 1\n",
            offsite.display()
        ),
    );
    let mut names = Vec::new();
    let mut pruned = Vec::new();
    for _ in 0..3 {
        let out = run(fx.cmd_with(&config).args(["--json", "create"]));
        out.expect(0);
        let report = out.json();
        names.push(report["image"].as_str().unwrap().to_owned());
        let c = copy_named(&report["copies"], "offsite");
        assert_eq!(c["outcome"], "copied", "{c}");
        pruned.extend(
            c["pruned"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| n.as_str().unwrap().to_owned()),
        );
        // The first storage's retention is not the destination's.
        assert_eq!(report["pruned"], serde_json::json!([]), "{report}");
    }
    assert_eq!(published_images(&fx.store), names, "the store keeps all");
    assert_eq!(published_images(&offsite), names[2..].to_vec());
    assert!(
        !offsite.join(format!("{}.manifest", names[0])).exists(),
        "a pruned copy's sidecar goes with it"
    );
    assert_eq!(pruned, names[..2].to_vec());
    // Each log file of the store's images stays.
    for n in &names {
        assert!(fx.state.join("logs").join(format!("{n}.log")).is_file());
    }
    let deletes = audited(&fx, &config, "copy.prune.delete");
    let targets: Vec<&str> = deletes
        .iter()
        .map(|r| r["target"].as_str().unwrap())
        .collect();
    assert_eq!(
        targets,
        [
            format!("offsite/{}", names[0]),
            format!("offsite/{}", names[1])
        ],
        "{deletes:?}"
    );
    assert!(audited(&fx, &config, "prune.delete").is_empty());
}

#[test]
fn a_broken_destination_is_reported_and_the_backup_stands() {
    let fx = Fixture::new();
    let hook_file = fx.dir.join("hook.txt");
    // A path under a regular file can never be a directory.
    let blocker = fx.dir.join("not-a-dir");
    fs::write(&blocker, b"x").unwrap();
    let config = config_with(
        &fx,
        "broken.toml",
        &format!(
            "[hooks]\non_failure = [\"sh\", \"-c\", \"echo \\\"$BACKUP_HOOK $BACKUP_OUTCOME $BACKUP_IMAGE $BACKUP_COPY_DESTINATION\\\" >> {}\"]\n\n\
             [[copy]]\nname = \"broken\"\nurl = \"file://{}/copies\"\n",
            hook_file.display(),
            blocker.display()
        ),
    );

    let out = run(fx.cmd_with(&config).args(["--json", "create"]));
    out.expect(0);
    let report = out.json();
    assert_eq!(report["outcome"], "success");
    let name = report["image"].as_str().unwrap().to_owned();
    assert_eq!(published_images(&fx.store), std::slice::from_ref(&name));
    assert!(fx.store.join(format!("{name}.manifest")).is_file());
    let c = copy_named(&report["copies"], "broken");
    assert_eq!(c["outcome"], "failed", "{c}");
    let reason = c["reason"].as_str().unwrap();
    assert!(reason.contains("not-a-dir"), "{reason}");

    // Status: the backup is the last success, the copy's failure is kept.
    let out = run(fx.cmd_with(&config).args(["--json", "status"]));
    out.expect(0);
    let status = out.json();
    assert_eq!(status["last_success"]["image"], name.as_str());
    let c = copy_named(&status["copies"], "broken");
    assert_eq!(
        (c["outcome"].as_str(), c["image"].as_str()),
        (Some("failed"), Some(name.as_str()))
    );
    assert_eq!(c["reason"].as_str(), Some(reason));
    run(fx.cmd_with(&config).arg("status"))
        .expect(0)
        .mentions("to broken")
        .mentions("failed");

    let copies = audited(&fx, &config, "copy");
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(copies[0]["outcome"], "failed");
    assert_eq!(copies[0]["target"], name.as_str());
    assert!(copies[0]["error"].as_str().unwrap().contains("not-a-dir"));
    let created = audited(&fx, &config, "create");
    assert_eq!(created.last().unwrap()["outcome"], "success");

    let hook = fs::read_to_string(&hook_file).expect("on_failure ran");
    assert_eq!(hook.trim(), format!("copy failed {name} broken"));

    // In text, even with -q, the failed copy is shown; the exit code is 0.
    run(fx.cmd_with(&config).args(["-q", "create"]))
        .expect(0)
        .mentions("copy to broken")
        .mentions("failed");
}

#[test]
fn backup_copy_copies_a_stored_image_by_hand() {
    let sshd = Sshd::start().expect("an sshd on 127.0.0.1");
    let fx = Fixture::new();
    // The storage section carries the SSH key and the host key the --to
    // URL is reached with.
    let config = config_with(&fx, "plain.toml", "");
    let text = fs::read_to_string(&config).unwrap().replace(
        "prefix = \"e2e-\"\n",
        &format!(
            "prefix = \"e2e-\"\nssh_key = \"{}\"\nhost_key_sha256 = \"{}\"\n",
            sshd.key.display(),
            sshd.fingerprint
        ),
    );
    fs::write(&config, text).unwrap();
    let out = run(fx.cmd_with(&config).args(["--json", "create"]));
    out.expect(0);
    let name = out.json()["image"].as_str().unwrap().to_owned();
    assert_eq!(out.json()["copies"], serde_json::json!([]));

    // No destination configured and none given: the caller's to fix.
    run(fx.cmd_with(&config).args(["copy", &name]))
        .expect(2)
        .mentions("--to");
    // A password on the command line is refused before anything runs.
    run(fx
        .cmd_with(&config)
        .args(["copy", &name, "--to", "ftp://u:hunter2@127.0.0.1/x"]))
    .expect(2)
    .mentions("password");
    // An image that is not there.
    let remote = fx.dir.join("remote/by-hand");
    let url = sshd.url(&remote);
    run(fx
        .cmd_with(&config)
        .args(["copy", "e2e-missing.bkp", "--to", &url]))
    .expect(2);

    let out = run(fx
        .cmd_with(&config)
        .args(["--json", "copy", &name, "--to", &url]));
    out.expect(0);
    let records = out.json();
    assert_eq!(records[0]["outcome"], "copied", "{records}");
    assert_same_copy(&fx, &remote, &name);

    // Again: the same image is there, verified, left alone.
    let out = run(fx
        .cmd_with(&config)
        .args(["--json", "copy", &name, "--to", &url]));
    out.expect(0);
    assert_eq!(out.json()[0]["outcome"], "present");

    // A different image under that name at the destination is refused.
    let local = fx.dir.join("local-copy");
    fs::create_dir_all(&local).unwrap();
    fs::write(local.join(&name), b"something else").unwrap();
    let to_local = format!("file://{}", local.display());
    let out = run(fx
        .cmd_with(&config)
        .args(["copy", &name, "--to", &to_local]));
    out.expect(1).mentions("refused").mentions("differs");
    assert_eq!(fs::read(local.join(&name)).unwrap(), b"something else");
    let copies = audited(&fx, &config, "copy");
    let outcomes: Vec<(&str, &str)> = copies
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("e2e-missing.bkp", "refused"),
            (name.as_str(), "done"),
            (name.as_str(), "done"),
            (name.as_str(), "refused")
        ],
        "{copies:?}"
    );
}

#[test]
fn a_full_destination_fails_the_copy_and_keeps_nothing_of_it() {
    let fx = Fixture::new();
    // Incompressible content, so the image outgrows the destination.
    write_random_file(&fx.etc.join("blob.bin"), 512 << 10, 7);
    let full = fx.dir.join("full");
    let _small = Tmpfs::mount(&full, "128k");
    let config = config_with(
        &fx,
        "full.toml",
        &format!(
            "[[copy]]\nname = \"small\"\nurl = \"file://{}\"\n",
            full.display()
        ),
    );
    let out = run(fx.cmd_with(&config).args(["--json", "create"]));
    out.expect(0);
    let report = out.json();
    assert_eq!(report["outcome"], "success");
    let name = report["image"].as_str().unwrap().to_owned();
    assert!(fs::metadata(fx.store.join(&name)).unwrap().len() > 128 << 10);
    let c = copy_named(&report["copies"], "small");
    assert_eq!(c["outcome"], "failed", "{c}");
    let reason = c["reason"].as_str().unwrap().to_lowercase();
    assert!(reason.contains("space"), "{reason}");
    let left: Vec<_> = fs::read_dir(&full)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "a failed copy leaves nothing there: {left:?}"
    );
}
