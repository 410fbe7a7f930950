//! `sftp://` storage through the binary, against a real OpenSSH sshd on
//! 127.0.0.1: a backup published over SSH, listed, fetched and restored; an
//! untrusted host key refused with the fingerprint the server showed; a
//! password login.

use std::fs;
use std::path::Path;

use backup_testkit::sshd::Sshd;

use crate::util::{assert_same_tree, run, sha256_file, under, Fixture};

/// A config of `fx` whose storage is `remote` on `sshd` (`extra`: more
/// `[storage]` lines).
fn sftp_config(fx: &Fixture, sshd: &Sshd, remote: &Path, extra: &str) -> std::path::PathBuf {
    let text = fx.spec.render().replace(
        &format!("url = \"file://{}\"", fx.spec.store.display()),
        &format!(
            "url = \"{}\"\nssh_key = \"{}\"\n{extra}",
            sshd.url(remote),
            sshd.key.display()
        ),
    );
    assert!(text.contains("sftp://"), "{text}");
    let path = fx
        .dir
        .join(format!("sftp-{}.toml", fx.dir.read_dir().unwrap().count()));
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_backup_over_sftp_is_listed_fetched_and_restored() {
    let sshd = Sshd::start().expect("an sshd on 127.0.0.1");
    let fx = Fixture::new();
    let remote = fx.dir.join("remote/images");
    let host_key = format!("host_key_sha256 = \"{}\"", sshd.fingerprint);
    let config = sftp_config(&fx, &sshd, &remote, &host_key);

    let out = run(fx.cmd_with(&config).args(["--json", "create"]));
    out.expect(0);
    let name = out.json()["image"].as_str().unwrap().to_owned();
    assert!(remote.join(&name).is_file(), "{} not on the server", name);

    run(fx.cmd_with(&config).arg("list"))
        .expect(0)
        .mentions(&name);

    let fetched = fx.dir.join("fetched.bkp");
    run(fx
        .cmd_with(&config)
        .args(["fetch", &name, "-o", fetched.to_str().unwrap()]))
    .expect(0);
    assert_eq!(sha256_file(&fetched), sha256_file(&remote.join(&name)));

    let target = fx.fresh_dir("restored");
    run(fx
        .cmd_with(&config)
        .args(["restore", &name, "--target", target.to_str().unwrap()]))
    .expect(0);
    let restored = under(&target, &fx.db);
    assert!(
        restored.is_file(),
        "{} was not restored",
        restored.display()
    );
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);

    // Pulled by URL by an appliance whose own storage is elsewhere (the
    // firewall guide's SCP restore): fetch, then restore straight from it.
    let local = fx.spec.render().replace(
        &format!("url = \"file://{}\"", fx.spec.store.display()),
        &format!(
            "url = \"file://{}\"\nssh_key = \"{}\"\n{host_key}",
            fx.spec.store.display(),
            sshd.key.display()
        ),
    );
    let local_config = fx.dir.join("local.toml");
    fs::write(&local_config, local).unwrap();
    let url = format!("{}/{name}", sshd.url(&remote));
    let pulled = fx.dir.join("pulled.bkp");
    run(fx
        .cmd_with(&local_config)
        .args(["fetch", &url, "-o", pulled.to_str().unwrap()]))
    .expect(0);
    assert_eq!(sha256_file(&pulled), sha256_file(&remote.join(&name)));
    let target = fx.fresh_dir("restored-by-url");
    run(fx
        .cmd_with(&local_config)
        .args(["restore", &url, "--target", target.to_str().unwrap()]))
    .expect(0);
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    assert!(under(&target, &fx.db).is_file());
    // The pulled copy does not stay behind, nor its directory.
    let pulled_dir: Vec<_> = fs::read_dir(fx.state.join("pulled"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(pulled_dir.is_empty(), "{pulled_dir:?}");
    // Reports name the image, not a scratch file.
    let restored_report = run(fx.cmd_with(&local_config).args([
        "restore",
        &url,
        "--target",
        target.to_str().unwrap(),
        "--yes",
    ]));
    restored_report.expect(0).mentions(&name);
    // A name that is not on the server.
    run(fx.cmd_with(&local_config).args([
        "restore",
        &format!("{}/missing.bkp", sshd.url(&remote)),
        "--target",
        target.to_str().unwrap(),
    ]))
    .expect_failure()
    .mentions("missing.bkp");
}

#[test]
fn an_untrusted_host_key_is_refused_with_its_fingerprint() {
    let sshd = Sshd::start().expect("an sshd on 127.0.0.1");
    let fx = Fixture::new();
    let remote = fx.dir.join("remote");
    // No host_key_sha256, and a home whose known_hosts does not exist.
    let config = sftp_config(&fx, &sshd, &remote, "");
    let home = fx.dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let out = run(fx.cmd_with(&config).env("HOME", &home).arg("create"));
    out.expect_failure().mentions(&sshd.fingerprint);
    assert!(
        !remote.exists(),
        "nothing may be written to an untrusted server"
    );
}

/// A password login (`BACKUP_SSH_PASSWORD`, never argv) against a server
/// that offers one, with no key anywhere: backup, list, restore; a wrong
/// password is refused saying what was tried, without showing it.
#[test]
fn a_password_user_backs_up_lists_and_restores() {
    let sshd = Sshd::start_with_password_user().expect("an sshd with a password user");
    let user = sshd.password_user.as_ref().expect("the password user");
    let fx = Fixture::new();
    let remote = user.home.join("images");
    let url = format!(
        "sftp://{}@127.0.0.1:{}{}",
        user.name,
        sshd.port,
        remote.display()
    );
    let text = fx.spec.render().replace(
        &format!("url = \"file://{}\"", fx.spec.store.display()),
        &format!(
            "url = \"{url}\"\nhost_key_sha256 = \"{}\"",
            sshd.fingerprint
        ),
    );
    assert!(text.contains(&url), "{text}");
    let config = fx.dir.join("sftp-password.toml");
    fs::write(&config, text).unwrap();
    // A home without ~/.ssh: no key to fall back on.
    let home = fx.dir.join("home");
    fs::create_dir_all(&home).unwrap();
    let with_password = |password: &str| {
        let mut cmd = fx.cmd_with(&config);
        cmd.env("HOME", &home).env("BACKUP_SSH_PASSWORD", password);
        cmd
    };

    let out = run(with_password(&user.password).args(["--json", "create"]));
    out.expect(0);
    let name = out.json()["image"].as_str().unwrap().to_owned();
    assert!(remote.join(&name).is_file(), "{name} not on the server");
    run(with_password(&user.password).arg("list"))
        .expect(0)
        .mentions(&name);
    let target = fx.fresh_dir("restored");
    run(with_password(&user.password).args([
        "restore",
        &name,
        "--target",
        target.to_str().unwrap(),
    ]))
    .expect(0);
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    assert!(under(&target, &fx.db).is_file());

    let wrong = "not-the-password-0123";
    let out = run(with_password(wrong).arg("list"));
    out.expect_failure()
        .mentions("refused the password from BACKUP_SSH_PASSWORD")
        .mentions(&user.name);
    for shown in [out.stdout(), out.stderr()] {
        assert!(!shown.contains(wrong) && !shown.contains(&user.password));
    }
}
