//! The domain master secret: it never leaks into output, files or images;
//! rotating it re-keys (the old secret opens nothing made afterwards) while
//! this appliance keeps opening older images; old images keep opening with
//! the old secret elsewhere until they are rewrapped; init never replaces keys
//! and is audited.

use std::cell::RefCell;
use std::fs;
use std::path::{Path, PathBuf};

use crate::util::{contains_bytes, files_under, records, Ops, Out};
use backup_crypto::{Header, HEADER_LEN};

const CANARY: &str = "S3cr3t-Canary-7f3a9";
const NEW_CANARY: &str = "N3w-Canary-b41e";

#[test]
fn the_secret_never_appears_in_output_state_store_or_restored_files() {
    let ops = Ops::new("[retention]\nkeep_last = 5\n");
    let secret_dir = ops.dir().join("secrets");
    fs::create_dir(&secret_dir).unwrap();
    let secret_file = secret_dir.join("current");
    fs::write(&secret_file, format!("{CANARY}\n")).unwrap();
    let new_secret_file = secret_dir.join("new");
    fs::write(&new_secret_file, format!("{NEW_CANARY}\n")).unwrap();
    let target = ops.dir().join("restored");
    let work = ops.dir().join("work");
    fs::create_dir(&work).unwrap();
    let payload = work.join("payload.tar.gz");
    let sealed = work.join("sealed.bkp");
    let sf = secret_file.to_str().unwrap();
    let nsf = new_secret_file.to_str().unwrap();

    let outs: RefCell<Vec<Out>> = RefCell::new(Vec::new());
    let run = |secret: Option<&str>, args: &[&str], code: Option<i32>| -> Out {
        let out = ops.run_with(&ops.config, secret, args);
        match code {
            Some(c) => {
                out.expect(c);
            }
            None => {
                out.expect_failure();
            }
        }
        outs.borrow_mut().push(out.clone());
        out
    };

    run(Some(CANARY), &["init"], Some(0));
    let image = run(Some(CANARY), &["create", "--json"], Some(0)).json()["image"]
        .as_str()
        .unwrap()
        .to_string();
    run(Some(CANARY), &["-v", "create"], Some(0));
    run(Some(CANARY), &["list"], Some(0));
    run(Some(CANARY), &["list", "--json"], Some(0));
    run(Some(CANARY), &["show", &image], Some(0));
    run(Some(CANARY), &["verify", &image], Some(0));
    run(
        None,
        &["--secret-file", sf, "restore", &image, "--target"],
        None,
    ); // --target needs a value: a usage error, still nothing leaks
    run(
        None,
        &[
            "--secret-file",
            sf,
            "restore",
            &image,
            "--target",
            target.to_str().unwrap(),
        ],
        Some(0),
    );
    run(
        Some(CANARY),
        &["decrypt", &image, "-o", payload.to_str().unwrap()],
        Some(0),
    );
    run(
        Some(CANARY),
        &[
            "encrypt",
            payload.to_str().unwrap(),
            "-o",
            sealed.to_str().unwrap(),
        ],
        Some(0),
    );
    run(Some(CANARY), &["verify", sealed.to_str().unwrap()], Some(0));
    run(Some(CANARY), &["status"], Some(0));
    run(Some(CANARY), &["status", "--json"], Some(0));
    run(Some(CANARY), &["audit"], Some(0));
    run(Some(CANARY), &["audit", "--json"], Some(0));
    run(Some(CANARY), &["log", &image], Some(0));
    run(Some(CANARY), &["prune", "--dry-run"], Some(0));
    run(Some(CANARY), &["key", "check"], Some(0));
    run(None, &["--secret-file", sf, "key", "check"], Some(0));
    // Failing commands: a wrong secret, a repeated init, a wrong current
    // secret for a rotation.
    run(Some("not-the-secret-1"), &["key", "check"], None);
    run(Some(CANARY), &["init"], None);
    run(
        Some("not-the-secret-2"),
        &["key", "rotate", "--new-secret-file", nsf],
        None,
    );
    // The rotation itself, the new secret from a file and from the environment.
    run(
        Some(CANARY),
        &["key", "rotate", "--new-secret-file", nsf],
        Some(0),
    );
    {
        let mut cmd = ops.cmd_with(&ops.config, Some(NEW_CANARY), &["key", "rotate"]);
        cmd.env("BACKUP_NEW_SECRET", NEW_CANARY);
        let out = Ops::run_cmd(cmd, "backup key rotate (env)".into());
        out.expect(0);
        outs.borrow_mut().push(out);
    }
    run(Some(NEW_CANARY), &["key", "rewrap", &image], Some(0));
    run(Some(NEW_CANARY), &["key", "check"], Some(0));
    run(Some(CANARY), &["key", "check"], None);
    // Without the key file, images open only with the secret.
    fs::rename(
        ops.state.join("master.key"),
        secret_dir.join("master.key.aside"),
    )
    .unwrap();
    run(Some(NEW_CANARY), &["verify", &image], Some(0));
    run(Some(CANARY), &["verify", &image], None);
    run(None, &["verify", &image], None);
    {
        let mut cmd = ops.cmd_with(&ops.config, Some(CANARY), &["verify", &image]);
        cmd.env("BACKUP_LOG", "trace");
        let out = Ops::run_cmd(cmd, "backup verify (trace logging)".into());
        out.expect_failure();
        outs.borrow_mut().push(out);
    }
    run(Some(NEW_CANARY), &["--json", "verify", &image], Some(0));
    run(Some(CANARY), &["create"], None);
    fs::rename(
        secret_dir.join("master.key.aside"),
        ops.state.join("master.key"),
    )
    .unwrap();

    let outs = outs.into_inner();
    let mut leaks = Vec::new();
    for canary in [CANARY, NEW_CANARY] {
        let needle = canary.as_bytes();
        for o in &outs {
            if contains_bytes(o.stdout.as_bytes(), needle)
                || contains_bytes(o.stderr.as_bytes(), needle)
            {
                leaks.push(format!("output of `{}`:\n{}", o.what, o.dump()));
            }
        }
        let mut files: Vec<PathBuf> = Vec::new();
        for dir in [&ops.state, &ops.store, &target, &work] {
            files.extend(files_under(dir));
        }
        files.push(ops.config.clone());
        for f in files.iter().filter(|f| **f != payload) {
            let data = fs::read(f).unwrap();
            if contains_bytes(&data, needle) {
                leaks.push(format!("{canary} in {}", f.display()));
            }
        }
    }
    assert!(leaks.is_empty(), "the secret leaked:\n{}", leaks.join("\n"));

    // The scan saw what it should: a restored tree, logs and the audit log.
    let scanned: Vec<PathBuf> = files_under(&ops.state);
    for name in ["audit.log", "keyring.json", "status.json", "master.key"] {
        assert!(
            scanned.iter().any(|p| p.ends_with(name)),
            "{name} in {scanned:?}"
        );
    }
    assert!(
        scanned
            .iter()
            .any(|p| p.parent().is_some_and(|d| d.ends_with("logs"))),
        "{scanned:?}"
    );
    assert!(files_under(&target).len() >= 6, "the restore wrote files");
    assert!(outs.len() >= 30, "{} runs", outs.len());
    let audit = ops.audit();
    assert!(!records(&audit, "key.rotate", "done").is_empty());
    assert!(!records(&audit, "key.check", "done").is_empty());
}

/// `verify IMAGE` with `secret` and no master key file in the state directory.
fn verify_with(ops: &Ops, secret: &str, image: &str) -> Out {
    ops.run_secret(secret, &["verify", image])
}

fn assert_opens(ops: &Ops, secret: &str, image: &str, opens: bool) {
    let out = verify_with(ops, secret, image);
    if opens {
        out.expect(0);
    } else {
        out.expect_failure();
        assert_eq!(out.code, 1, "a wrong secret is a failure\n{}", out.dump());
    }
}

fn key_file(ops: &Ops) -> PathBuf {
    ops.state.join("master.key")
}

fn move_file(from: &Path, to: &Path) {
    fs::rename(from, to).unwrap_or_else(|e| panic!("{} -> {}: {e}", from.display(), to.display()));
}

#[test]
fn rotation_keeps_old_images_on_the_old_secret_until_rewrapped() {
    const A: &str = "first secret AAAA";
    const B: &str = "second secret BBBB";
    let ops = Ops::new("");
    ops.init_with(A);
    let image1 = ops.create();

    let mut rotate = ops.cmd_with(&ops.config, Some(A), &["key", "rotate"]);
    rotate.env("BACKUP_NEW_SECRET", B);
    let out = Ops::run_cmd(rotate, "backup key rotate".into());
    out.expect(0);
    // The key file now holds the new master key, and opens the old images
    // through the earlier key the keyring keeps under it.
    let image2 = ops.create();
    assert_ne!(image1, image2);
    ops.run(&["verify", &image1]).expect(0);
    ops.run(&["verify", &image2]).expect(0);

    let aside = ops.dir().join("master.key.aside");
    move_file(&key_file(&ops), &aside);
    // No key file and no secret: a usage error naming the way out.
    let none = ops.run(&["verify", &image1]);
    none.expect(2);
    assert!(none.stderr().contains("BACKUP_SECRET"), "{}", none.dump());

    assert_opens(&ops, A, &image1, true);
    // On this appliance the new secret opens the old image too: the keyring
    // keeps its master key under the new secret.
    assert_opens(&ops, B, &image1, true);
    assert_opens(&ops, B, &image2, true);
    assert_opens(&ops, A, &image2, false);

    // Rewrap needs no secret (it copies the keyring's slot) and no key file.
    let out = ops.run(&["key", "rewrap", &image1, &image2]);
    out.expect(0);
    let text = out.stdout();
    assert!(
        text.contains(&format!("{image1}: rewrapped")),
        "{}",
        out.dump()
    );
    assert!(
        text.contains(&format!("{image2}: already current")),
        "{}",
        out.dump()
    );
    assert_opens(&ops, B, &image1, true);
    assert_opens(&ops, A, &image1, false);
    // The sidecar was rewrapped too: `show` reads it with the new secret.
    let show = ops.run_secret(B, &["show", &image1]);
    show.expect(0);

    let check_a = ops.run_secret(A, &["key", "check"]);
    check_a.expect_failure();
    ops.run_secret(B, &["key", "check"]).expect(0);
    let audit = ops.audit();
    assert_eq!(records(&audit, "key.check", "done").len(), 1, "{audit:#?}");
    assert_eq!(records(&audit, "key.rotate", "done").len(), 1, "{audit:#?}");
    assert_eq!(records(&audit, "key.rewrap", "done").len(), 2, "{audit:#?}");

    // A fresh state directory holding only the keyring behaves the same.
    move_file(&aside, &key_file(&ops));
    let fresh = ops.dir().join("fresh-state");
    fs::create_dir(&fresh).unwrap();
    fs::copy(ops.state.join("keyring.json"), fresh.join("keyring.json")).unwrap();
    let text = fs::read_to_string(&ops.config).unwrap().replace(
        &format!("state_dir = {:?}", ops.state.display().to_string()),
        &format!("state_dir = {:?}", fresh.display().to_string()),
    );
    let fresh_config = ops.dir().join("fresh.toml");
    fs::write(&fresh_config, text).unwrap();
    for (secret, image, ok) in [
        (A, &image2, false),
        (B, &image2, true),
        (B, &image1, true),
        (A, &image1, false),
    ] {
        let out = ops.run_with(&fresh_config, Some(secret), &["verify", image]);
        if ok {
            out.expect(0);
        } else {
            out.expect(1);
        }
    }
    assert!(!fresh.join("master.key").exists());
}

#[test]
fn hooks_and_component_commands_do_not_inherit_the_secret() {
    let ops = Ops::new("");
    let envs = ops.dir().join("envs");
    fs::create_dir(&envs).unwrap();
    let to = |name: &str| envs.join(name).display().to_string();
    ops.write_config(
        &ops.config,
        &format!(
            r#"[hooks]
before = ["sh", "-c", "env > {before}"]
after = ["sh", "-c", "env > {after}"]

[[component]]
name = "envdump"
kind = "command"
backup = ["sh", "-c", "env > {backup}; echo dump"]
restore = ["sh", "-c", "env > {restore}; cat > /dev/null"]
"#,
            before = to("before.env"),
            after = to("after.env"),
            backup = to("backup.env"),
            restore = to("restore.env"),
        ),
    );
    ops.init_with(CANARY);
    // The other secrets the engine reads from its environment stay there too.
    let with_secrets = |args: &[&str]| {
        let mut cmd = ops.cmd_with(&ops.config, Some(CANARY), args);
        for name in [
            "BACKUP_FTP_PASSWORD",
            "BACKUP_SSH_PASSWORD",
            "BACKUP_SSH_KEY_PASSPHRASE",
            "BACKUP_USER_PASSWORD",
        ] {
            cmd.env(name, CANARY);
        }
        Ops::run_cmd(cmd, format!("backup {}", args.join(" ")))
    };
    let out = with_secrets(&["create", "--json"]);
    out.expect(0);
    let image = out.json()["image"].as_str().unwrap().to_string();
    with_secrets(&["restore", &image, "--component", "envdump", "--yes"]).expect(0);

    let mut leaks = Vec::new();
    for name in ["before.env", "after.env", "backup.env", "restore.env"] {
        let env = fs::read_to_string(envs.join(name))
            .unwrap_or_else(|e| panic!("{name} was not written (the command did not run): {e}"));
        assert!(env.contains("PATH="), "{name}: {env}");
        if env.contains(CANARY) {
            let line = env
                .lines()
                .find(|l| l.contains(CANARY))
                .unwrap_or_default()
                .split('=')
                .next()
                .unwrap_or_default()
                .to_string();
            leaks.push(format!("{name} (variable {line})"));
        }
    }
    assert!(
        leaks.is_empty(),
        "child processes were given the secret in their environment: {leaks:?}"
    );
}

fn header_of(path: &Path) -> Header {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Header::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A configuration of a bare replacement machine: the same storage, a state
/// directory without keys.
fn bare_machine(ops: &Ops, name: &str) -> PathBuf {
    let state = ops.dir().join(name);
    let text = fs::read_to_string(&ops.config).unwrap().replace(
        &format!("state_dir = {:?}", ops.state.display().to_string()),
        &format!("state_dir = {:?}", state.display().to_string()),
    );
    let path = ops.dir().join(format!("{name}.toml"));
    fs::write(&path, text).unwrap();
    path
}

/// `key rotate` from `current` to `new` (given in `BACKUP_NEW_SECRET`).
fn rotate(ops: &Ops, current: &str, new: &str) -> Out {
    let mut cmd = ops.cmd_with(&ops.config, Some(current), &["key", "rotate"]);
    cmd.env("BACKUP_NEW_SECRET", new);
    Ops::run_cmd(cmd, format!("backup key rotate ({current} -> {new})"))
}

/// `verify IMAGE` with `secret` (or none) under `config`, expecting `code`.
fn verify_expect(ops: &Ops, config: &Path, secret: Option<&str>, image: &str, code: i32) {
    let out = ops.run_with(config, secret, &["verify", image]);
    assert_eq!(
        out.code,
        code,
        "verify {image} with {secret:?} under {}\n{}",
        config.display(),
        out.dump()
    );
}

#[test]
fn rotation_gives_new_images_a_master_key_the_old_secret_cannot_reach() {
    const A: &str = "first secret AAAA";
    const B: &str = "second secret BBBB";
    const C: &str = "third secret CCCC";
    let ops = Ops::new("");
    ops.init_with(A);
    let image1 = ops.create();
    rotate(&ops, A, B).expect(0);
    let image2 = ops.create();
    let h1 = header_of(&ops.store.join(&image1));
    let h2 = header_of(&ops.store.join(&image2));
    assert_ne!(
        h1.key_id(),
        h2.key_id(),
        "a rotation must give new images a new master key"
    );

    // The old secret plus an old header: image 2 with image 1's key slot
    // (the old master key under the old secret). The key slot is not bound
    // into the payload, so if the master key had stayed, A would open it.
    let forged = ops.dir().join("forged.bkp");
    let mut bytes = fs::read(ops.store.join(&image2)).unwrap();
    bytes[..HEADER_LEN].copy_from_slice(&h2.with_keyslot(h1.keyslot().clone()).encode());
    fs::write(&forged, &bytes).unwrap();
    let forged = forged.to_str().unwrap();
    let bare = bare_machine(&ops, "bare-state");
    verify_expect(&ops, &bare, Some(A), forged, 1);
    verify_expect(&ops, &bare, Some(A), &image2, 1);
    verify_expect(&ops, &bare, Some(B), &image2, 0);

    // This appliance opens every image unattended (the key file's new key
    // opens the earlier one the keyring keeps) and restores the old one.
    ops.run(&["verify", &image1]).expect(0);
    ops.run(&["verify", &image2]).expect(0);
    let target = ops.dir().join("restored");
    ops.run(&["restore", &image1, "--target", target.to_str().unwrap()])
        .expect(0);
    assert!(!files_under(&target).is_empty(), "the restore wrote files");

    // Without the key file: the new secret opens both here (the keyring),
    // the old one only the image made under it (its own header).
    let aside = ops.dir().join("master.key.aside");
    move_file(&key_file(&ops), &aside);
    let none = ops.run(&["verify", &image1]);
    none.expect(2);
    assert!(
        none.stderr().contains("the keyring holds its key")
            && none.stderr().contains("BACKUP_SECRET"),
        "without the key file the secret is asked for, and the reason is not a missing key\n{}",
        none.dump()
    );
    assert_opens(&ops, B, &image1, true);
    assert_opens(&ops, B, &image2, true);
    assert_opens(&ops, A, &image1, true);
    assert_opens(&ops, A, &image2, false);
    assert_opens(&ops, A, forged, false);

    // On a bare machine the old image opens with the secret it was made
    // under, until a rewrap gives it a key slot under the new one; its master
    // key stays.
    verify_expect(&ops, &bare, Some(A), &image1, 0);
    verify_expect(&ops, &bare, Some(B), &image1, 1);
    let out = ops.run(&["key", "rewrap", &image1]);
    out.expect(0);
    assert!(
        out.stdout().contains(&format!("{image1}: rewrapped")),
        "{}",
        out.dump()
    );
    assert_eq!(header_of(&ops.store.join(&image1)).key_id(), h1.key_id());
    verify_expect(&ops, &bare, Some(B), &image1, 0);
    verify_expect(&ops, &bare, Some(A), &image1, 1);
    move_file(&aside, &key_file(&ops));

    // A second rotation keeps both earlier keys, now under the newest secret.
    rotate(&ops, B, C).expect(0);
    let image3 = ops.create();
    let h3 = header_of(&ops.store.join(&image3));
    assert!(h3.key_id() != h1.key_id() && h3.key_id() != h2.key_id());
    let ring: serde_json::Value =
        serde_json::from_slice(&fs::read(ops.state.join("keyring.json")).unwrap()).unwrap();
    assert_eq!(ring["key_id"], h3.key_id().to_string(), "{ring:#}");
    let kept: Vec<&str> = ring["earlier"]
        .as_array()
        .unwrap_or_else(|| panic!("no earlier keys: {ring:#}"))
        .iter()
        .map(|e| e["key_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        kept,
        [h2.key_id().to_string(), h1.key_id().to_string()],
        "{ring:#}"
    );
    for image in [&image1, &image2, &image3] {
        ops.run(&["verify", image]).expect(0);
    }
    move_file(&key_file(&ops), &aside);
    for image in [&image1, &image2, &image3] {
        assert_opens(&ops, C, image, true);
    }
    assert_opens(&ops, B, &image3, false);
    verify_expect(&ops, &bare, Some(C), &image2, 1);
    ops.run(&["key", "rewrap", &image1, &image2, &image3])
        .expect(0);
    for image in [&image1, &image2, &image3] {
        verify_expect(&ops, &bare, Some(C), image, 0);
        verify_expect(&ops, &bare, Some(B), image, 1);
    }
    move_file(&aside, &key_file(&ops));

    let audit = ops.audit();
    assert_eq!(records(&audit, "key.rotate", "done").len(), 2, "{audit:#?}");
    assert_eq!(records(&audit, "key.rewrap", "done").len(), 4, "{audit:#?}");
}

#[test]
fn init_never_replaces_a_key_file_or_a_keyring_and_is_audited() {
    const A: &str = "first secret AAAA";
    const B: &str = "second secret BBBB";
    let ops = Ops::new("");
    ops.init_with(A);
    let image = ops.create();
    let keyring = ops.state.join("keyring.json");
    let key = fs::read(key_file(&ops)).unwrap();
    let ring = fs::read(&keyring).unwrap();

    // The keyring is gone (lost, or not restored yet): the key file may be the
    // only key to the images, so a new init must not replace it.
    let ring_aside = ops.dir().join("keyring.json.aside");
    move_file(&keyring, &ring_aside);
    let out = ops.run_secret(B, &["init"]);
    out.expect(2);
    let err = out.stderr();
    assert!(
        err.contains(&key_file(&ops).display().to_string()) && err.contains("keyring"),
        "the refusal names the key file and the missing keyring\n{}",
        out.dump()
    );
    assert_eq!(
        fs::read(key_file(&ops)).unwrap(),
        key,
        "init replaced the key file"
    );
    assert!(!keyring.exists(), "init wrote a keyring");
    move_file(&ring_aside, &keyring);

    // A keyring without a key file (a passphrase-only appliance): refused too.
    let key_aside = ops.dir().join("master.key.aside");
    move_file(&key_file(&ops), &key_aside);
    let out = ops.run_secret(B, &["init"]);
    out.expect(2);
    assert!(out.stderr().contains("already set"), "{}", out.dump());
    assert!(!key_file(&ops).exists(), "init wrote a key file");
    assert_eq!(
        fs::read(&keyring).unwrap(),
        ring,
        "init replaced the keyring"
    );
    move_file(&key_aside, &key_file(&ops));
    ops.run(&["verify", &image]).expect(0);

    // A short secret on a fresh appliance: refused, and audited there.
    let fresh = bare_machine(&ops, "fresh-state");
    ops.run_with(&fresh, Some("short"), &["init"]).expect(2);
    let fresh_audit = fs::read_to_string(ops.dir().join("fresh-state/audit.log")).unwrap();
    assert!(
        fresh_audit.contains("\"key.init\"") && fresh_audit.contains("\"refused\""),
        "{fresh_audit}"
    );

    let audit = ops.audit();
    assert_eq!(records(&audit, "key.init", "done").len(), 1, "{audit:#?}");
    let refused = records(&audit, "key.init", "refused");
    assert_eq!(refused.len(), 2, "{audit:#?}");
    assert!(
        refused[0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("master.key"),
        "{audit:#?}"
    );
    let log = fs::read(ops.state.join("audit.log")).unwrap();
    for secret in [A, B] {
        assert!(
            !contains_bytes(&log, secret.as_bytes()),
            "{secret} in the audit log"
        );
    }
}

#[test]
fn a_short_new_secret_is_an_input_error_and_changes_nothing() {
    const A: &str = "first secret AAAA";
    let ops = Ops::new("");
    ops.init_with(A);
    let ring = fs::read(ops.state.join("keyring.json")).unwrap();
    let key = fs::read(key_file(&ops)).unwrap();

    let out = rotate(&ops, A, "short");
    out.expect(2);
    assert!(out.stderr().contains("too short"), "{}", out.dump());
    let short = ops.dir().join("short-secret");
    fs::write(&short, "short\n").unwrap();
    let out = ops.run_secret(
        A,
        &[
            "key",
            "rotate",
            "--new-secret-file",
            short.to_str().unwrap(),
        ],
    );
    out.expect(2);
    assert!(out.stderr().contains("too short"), "{}", out.dump());

    assert_eq!(fs::read(ops.state.join("keyring.json")).unwrap(), ring);
    assert_eq!(fs::read(key_file(&ops)).unwrap(), key);
    let audit = ops.audit();
    assert_eq!(
        records(&audit, "key.rotate", "refused").len(),
        2,
        "{audit:#?}"
    );
    assert!(
        records(&audit, "key.rotate", "done").is_empty(),
        "{audit:#?}"
    );
}

/// `backup links` on a storage that cannot presign: refused with what to do,
/// then, with `[http] public_url`, the HTTP service's own signed links;
/// `backup key rotate-links` writes a new link key (audited).
#[test]
fn links_for_a_storage_that_cannot_presign_come_from_the_service_and_rotate() {
    let f = crate::util::Fixture::new();
    let (image, _) = f.create(&[]);
    let out = f.backup(&["links"]);
    assert_ne!(out.code, 0, "a file:// storage cannot presign");
    assert!(
        out.stderr.contains("public_url"),
        "says what to set: {}",
        out.stderr
    );

    let config = f.dir.join("with-http.toml");
    let mut text = fs::read_to_string(&f.config).unwrap();
    text.push_str("\n[http]\npublic_url = \"https://gw.example:8443/\"\n");
    fs::write(&config, text).unwrap();
    let csv = f.dir.join("links.csv");
    let out = crate::util::run(
        f.cmd_with(&config)
            .args(["--json", "links", "--expires", "2h", "--csv"])
            .arg(&csv),
    );
    out.expect(0);
    let links: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let url = links[0]["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("https://gw.example:8443/dl/{image}?exp="))
            && url.contains("&sig="),
        "{url}"
    );
    let written = fs::read_to_string(&csv).unwrap();
    assert!(written.starts_with("image,node,role,created,size,url,expiry\n"));
    assert!(written.contains(url), "{written}");
    let key = f.state.join("http/link.key");
    let before = fs::read(&key).unwrap();

    f.backup(&["key", "rotate-links"]).expect(0);
    assert_ne!(fs::read(&key).unwrap(), before, "a new link key");
    let audit = f.backup(&["--json", "audit"]);
    let records: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).unwrap();
    assert!(records
        .iter()
        .any(|r| r["operation"] == "key.rotate-links" && r["outcome"] == "done"));
    assert!(!audit.stdout.contains("sig="), "no link in the audit log");
}
