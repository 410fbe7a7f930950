//! The CLI's output contract: what goes to stdout and stderr, in which form
//! (`--json`, `-q`, `-v`, terminal or not), secret files, exit codes, help,
//! completions and the manual page.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::util::*;

/// Runs `cmd` with standard output going to `file`.
fn run_to_file(cmd: &mut Command, file: &Path) -> Out {
    cmd.stdout(fs::File::create(file).unwrap());
    let what = format!("{:?}", cmd.get_args().collect::<Vec<_>>());
    let out = cmd
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
        .wait_with_output()
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    }
}

/// A pseudo-terminal: `slave` is what the binary gets, everything it writes
/// there is read back from the master side.
struct Pty {
    master: fs::File,
    slave: fs::File,
}

fn pty() -> Pty {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("cannot open a pty");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )
    .expect("setting the pty's size");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let slave = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .expect("opening the pty's slave side");
    Pty {
        master: fs::File::from(master),
        slave,
    }
}

/// Runs `cmd` with standard output, standard error or both on a terminal;
/// gives the run (with what was not on the terminal) and every byte written
/// to the terminal.
fn run_on_terminal(mut cmd: Command, stdout: bool, stderr: bool) -> (Out, Vec<u8>) {
    let Pty { mut master, slave } = pty();
    if stdout {
        cmd.stdout(slave.try_clone().unwrap());
    } else {
        cmd.stdout(Stdio::piped());
    }
    if stderr {
        cmd.stderr(slave);
    } else {
        cmd.stderr(Stdio::piped());
        drop(slave);
    }
    let child = cmd.spawn().unwrap();
    drop(cmd); // closes our copy of the slave side
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once every slave descriptor is closed: that is the end.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
        }
        all
    });
    let out = child.wait_with_output().unwrap();
    let terminal = reader.join().unwrap();
    let shown = String::from_utf8_lossy(&terminal).into_owned();
    (
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: if stdout {
                shown.clone()
            } else {
                String::from_utf8_lossy(&out.stdout).into_owned()
            },
            stderr: if stderr {
                shown
            } else {
                String::from_utf8_lossy(&out.stderr).into_owned()
            },
            what: "(on a terminal)".into(),
        },
        terminal,
    )
}

#[test]
fn an_image_streamed_to_stdout_verifies_whatever_the_output_flags() {
    let fx = Fixture::new();
    for (i, flags) in [
        &[][..],
        &["--json"][..],
        &["-v"][..],
        &["--json", "-v"][..],
        &["-q"][..],
    ]
    .iter()
    .enumerate()
    {
        let file = fx.dir.join(format!("streamed-{i}.bkp"));
        let mut cmd = fx.cmd();
        // Debug logging too: nothing but the image may reach stdout.
        cmd.env("BACKUP_LOG", "debug")
            .args(*flags)
            .args(["create", "-o", "-"]);
        let out = run_to_file(&mut cmd, &file);
        out.expect(0);
        fx.backup(&["verify", file.to_str().unwrap()])
            .expect(0)
            .mentions("verified");
        // The report went to stderr instead.
        if flags.contains(&"--json") {
            let reports: Vec<serde_json::Value> = out
                .stderr
                .lines()
                .map(|l| {
                    serde_json::from_str(l)
                        .unwrap_or_else(|e| panic!("stderr line is not JSON ({e}): {l}"))
                })
                .filter(|v: &serde_json::Value| v.get("image").is_some())
                .collect();
            assert_eq!(reports.len(), 1, "{}", out.stderr);
            assert_eq!(reports[0]["outcome"], "success");
        } else if !flags.contains(&"-q") {
            assert!(out.stderr.contains("success: -"), "{}", out.stderr);
        }
    }
    // Streamed images are not in the storage.
    assert!(all_paths(&fx.store).is_empty());
}

#[test]
fn an_image_is_never_written_to_a_terminal() {
    let fx = Fixture::new();
    let mut cmd = fx.cmd();
    cmd.args(["create", "-o", "-"]);
    let (out, terminal) = run_on_terminal(cmd, true, false);
    assert_eq!(out.code, 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("terminal") && out.stderr.contains("-o FILE"),
        "{}",
        out.stderr
    );
    assert!(
        terminal.is_empty(),
        "{} bytes went to the terminal",
        terminal.len()
    );
}

#[test]
fn a_secret_file_gives_its_first_line_only() {
    let fx = Fixture::new();
    let check = |file: &Path| {
        let mut cmd = fx.cmd();
        cmd.env_remove("BACKUP_SECRET")
            .arg("--secret-file")
            .arg(file)
            .args(["key", "check"]);
        run(&mut cmd)
    };
    for (i, text) in [
        format!("{SECRET}\nsecond line\n"),
        format!("{SECRET}\r\n\r\n"),
        format!("{SECRET}\n\n"),
        SECRET.to_string(),
    ]
    .iter()
    .enumerate()
    {
        let file = fx.dir.join(format!("secret-{i}"));
        fs::write(&file, text).unwrap();
        check(&file).expect(0).mentions("opens the keyring");
    }
    for (i, text) in ["", "\n", "\n{SECRET}\n"].iter().enumerate() {
        let file = fx.dir.join(format!("unusable-{i}"));
        fs::write(&file, text.replace("{SECRET}", SECRET)).unwrap();
        check(&file).expect(2).mentions("first line");
    }
    // BACKUP_SECRET_FILE names the file in the environment.
    let file = fx.dir.join("env-secret");
    fs::write(&file, format!("{SECRET}\nnot part of it\n")).unwrap();
    let mut cmd = fx.cmd();
    cmd.env_remove("BACKUP_SECRET")
        .env("BACKUP_SECRET_FILE", &file)
        .args(["key", "check"]);
    run(&mut cmd).expect(0);

    // The new secret of a rotation too: its first line is the new secret.
    let new_secret = "the new domain secret";
    let new_file = fx.dir.join("new-secret");
    fs::write(&new_file, format!("{new_secret}\n# set on 2026-11-29\n")).unwrap();
    fx.backup(&[
        "key",
        "rotate",
        "--new-secret-file",
        new_file.to_str().unwrap(),
    ])
    .expect(0);
    run(fx
        .cmd()
        .env("BACKUP_SECRET", new_secret)
        .args(["key", "check"]))
    .expect(0);
}

/// Standard output whose reader is already gone.
fn closed_stdout() -> Stdio {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    for args in [
        &["list"][..],
        &["audit"][..],
        &["status"][..],
        &["log", &name][..],
        &["show", &name][..],
        &["--json", "list"][..],
    ] {
        let out = run(fx.cmd().args(args).stdout(closed_stdout()));
        out.expect(0);
        assert!(
            !out.stderr.contains("panicked") && out.stderr.trim().is_empty(),
            "{}",
            out.dump()
        );
    }
}

/// Panics unless `out.stdout` is exactly one JSON document and every
/// non-empty line on stderr is JSON; gives the document.
fn one_json_document(out: &Out) -> serde_json::Value {
    let doc = out.json();
    for line in out.stderr.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line).unwrap_or_else(|e| {
            panic!(
                "`{}`: stderr line is not JSON ({e}): {line}\n{}",
                out.what,
                out.dump()
            )
        });
    }
    doc
}

#[test]
fn every_command_prints_one_json_document_with_json_errors_included() {
    let fx = Fixture::new();
    let ok = |args: &[&str]| -> serde_json::Value {
        let out = run(fx.cmd().arg("--json").args(args));
        out.expect(0);
        one_json_document(&out)
    };
    // Each error case: the same exit code as without --json, and a JSON error.
    let err = |args: &[&str]| -> serde_json::Value {
        let plain = run(fx.cmd().args(args));
        plain.expect_failure();
        let out = run(fx.cmd().arg("--json").args(args));
        out.expect(plain.code);
        let doc = one_json_document(&out);
        assert!(
            doc["error"]["kind"].as_str().is_some_and(|k| !k.is_empty())
                && doc["error"]["message"].as_str().is_some(),
            "`{}`: {doc:#}",
            out.what
        );
        doc
    };

    let created = ok(&["create"]);
    let name = created["image"].as_str().unwrap().to_string();
    let path = fx.image_path(&name);
    let path = path.to_str().unwrap();
    ok(&["-v", "create", "-C", "config"]);
    ok(&["list"]);
    ok(&["show", &name]);
    ok(&["verify", &name]);
    let target = fx.dir.join("restored");
    ok(&["restore", &name, "--target", target.to_str().unwrap()]);
    let payload = fx.dir.join("payload.tar.gz");
    let payload = payload.to_str().unwrap();
    assert_eq!(
        ok(&["decrypt", &name, "-o", payload])["compression"],
        "gzip"
    );
    let sealed = fx.dir.join("sealed.bkp");
    ok(&["encrypt", payload, "-o", sealed.to_str().unwrap()]);
    let fetched = fx.dir.join("fetched.bkp");
    ok(&["fetch", &name, "-o", fetched.to_str().unwrap()]);
    ok(&["browse"]);
    ok(&["status"]);
    ok(&["audit", "--since", "1d"]);
    let log = ok(&["log", &name]);
    assert!(
        log["lines"].as_array().is_some_and(|l| !l.is_empty()),
        "{log:#}"
    );
    ok(&["schedule"]);
    assert!(ok(&["key", "check"])["key_id"].is_string());
    let rewrap = ok(&["key", "rewrap", path]);
    assert!(rewrap.is_array() || rewrap.is_object(), "{rewrap:#}");
    ok(&["completions", "bash"]);
    ok(&["man"]);

    let missing = "e2e-20000101T000000Z_gw-e2e_standalone.bkp";
    assert_eq!(err(&["show", missing])["error"]["kind"], "not_found");
    err(&["verify", missing]);
    err(&["restore", missing, "--target", target.to_str().unwrap()]);
    err(&["decrypt", missing, "-o", payload]);
    err(&["encrypt", "/nonexistent/payload.tar.gz", "-o", "/tmp/x.bkp"]);
    err(&["fetch", missing, "-o", fetched.to_str().unwrap()]);
    err(&["links"]);
    err(&["audit", "--since", "yesterday-ish"]);
    err(&["log", missing]);
    err(&["create", "-C", "nope"]);
    err(&["prune", "--dry-run"]);
    assert_eq!(err(&["init"])["error"]["kind"], "already_initialized");
    // Rewrap reports per image; one it could not change fails the command.
    let rewrap = run(fx
        .cmd()
        .args(["--json", "key", "rewrap", "/nonexistent/x.bkp"]));
    rewrap.expect(1);
    assert_eq!(one_json_document(&rewrap)[0][1]["result"], "not_rewrapped");
    err(&["schedule", "-n", "many"]);
    err(&["no-such-command"]);
    err(&["list", "--no-such-flag"]);
    let short = run(fx
        .cmd()
        .env("BACKUP_NEW_SECRET", "short")
        .args(["--json", "key", "rotate"]));
    short.expect(2);
    assert_eq!(
        one_json_document(&short)["error"]["kind"],
        "passphrase_too_short"
    );
    // prune with a [retention] policy.
    let kept = fs::read_to_string(&fx.config).unwrap() + "\n[retention]\nkeep_last = 5\n";
    let kept_cfg = fx.dir.join("retention.toml");
    fs::write(&kept_cfg, kept).unwrap();
    for args in [
        &["--json", "prune", "--dry-run"][..],
        &["--json", "prune"][..],
    ] {
        let out = run(fx.cmd_with(&kept_cfg).args(args));
        out.expect(0);
        assert!(one_json_document(&out).is_array(), "{}", out.dump());
    }
    let wrong = run(fx
        .cmd()
        .env("BACKUP_SECRET", "not the domain secret")
        .args(["--json", "key", "check"]));
    wrong.expect(1);
    assert_eq!(
        one_json_document(&wrong)["error"]["kind"],
        "wrong_passphrase"
    );
    // Errors before any engine exists: a missing config, a bad one.
    let none = run(bare_cmd().args(["--json", "--config", "/nonexistent/backup.toml", "status"]));
    none.expect(2);
    assert_eq!(one_json_document(&none)["error"]["kind"], "config");
    let daemon = run(bare_cmd().args(["--json", "--config", "/nonexistent/backup.toml", "daemon"]));
    daemon.expect(2);
    one_json_document(&daemon);
}

#[test]
fn the_daemon_with_json_ends_with_one_json_document() {
    let fx = Fixture::new();
    let text = fs::read_to_string(&fx.config).unwrap()
        + "\n[schedule]\ncron = [\"0 2 * * *\"]\ntimezone = \"UTC\"\n";
    let cfg = fx.dir.join("scheduled.toml");
    fs::write(&cfg, text).unwrap();
    let mut child = fx
        .cmd_with(&cfg)
        .args(["--json", "daemon"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Running once it has announced itself in the state directory.
    let daemon_file = fx.state.join("daemon.json");
    for _ in 0..600 {
        if daemon_file.exists() || child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(daemon_file.exists(), "the daemon did not start");
    let kill = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what: "backup --json daemon".into(),
    };
    out.expect(0);
    assert_eq!(one_json_document(&out)["daemon"], "stopped");
}

#[test]
fn quickstart_and_init_with_json() {
    let tmp = tempfile::tempdir().unwrap();
    let out = run(bare_cmd()
        .args(["--json", "quickstart", "--dir"])
        .arg(tmp.path().join("qs")));
    out.expect(0);
    let doc = one_json_document(&out);
    assert_eq!(doc["identical"], true, "{doc:#}");
    assert_eq!(doc["outcome"], "success", "{doc:#}");

    let fx = Fixture::new();
    let fresh = fx.dir.join("state-fresh");
    let cfg = fx.config_variant("fresh.toml", |s| s.state_dir = fresh.clone());
    let out = run(fx.cmd_with(&cfg).args(["--json", "init"]));
    out.expect(0);
    assert!(one_json_document(&out)["key_id"].is_string());
    // A rotation to a new secret.
    let out = run(fx
        .cmd_with(&cfg)
        .env("BACKUP_NEW_SECRET", "another domain secret")
        .args(["--json", "key", "rotate"]));
    out.expect(0);
    assert!(one_json_document(&out)["key_id"].is_string());
}

#[test]
fn decrypt_names_the_payload_and_the_tar_command_after_the_codec() {
    require_gnu_tar();
    for (codec, ext, tar_flags, list_cmd) in [
        (
            "zstd",
            ".tar.zst",
            &["--zstd", "-tf"][..],
            "tar --zstd -tvf",
        ),
        ("none", ".tar", &["-tf"][..], "tar -tvf"),
        ("gzip", ".tar.gz", &["-tzf"][..], "tar -tzvf"),
    ] {
        let fx = Fixture::custom(|fx| fx.spec.compression = codec.into());
        let (name, _) = fx.create(&[]);
        let out = fx.dir.join("payload");
        let run_out = fx.backup(&["decrypt", &name, "-o", out.to_str().unwrap()]);
        run_out.expect(0);
        let named = PathBuf::from(format!("{}{ext}", out.display()));
        assert!(
            named.is_file(),
            "{codec}: no {}\n{}",
            named.display(),
            run_out.dump()
        );
        assert!(!out.exists(), "{codec}: the unnamed file stayed");
        assert!(
            run_out
                .stdout
                .contains(&format!("`{list_cmd} {}`", named.display())),
            "{codec}: {}",
            run_out.dump()
        );
        let listed = run(Command::new("tar").args(tar_flags).arg(&named));
        listed.expect(0);
        assert!(
            listed.stdout.starts_with("backup.json"),
            "{}",
            listed.dump()
        );
        // An explicit extension is kept as given.
        let given = fx.dir.join("given.bin");
        fx.backup(&["decrypt", &name, "-o", given.to_str().unwrap()])
            .expect(0);
        assert!(given.is_file());
        if codec == "zstd" {
            let show = fx.backup(&["show", &name]);
            show.expect(0);
            assert!(
                show.stdout.contains("compression:     zstd"),
                "{}",
                show.dump()
            );
            assert!(
                show.stdout.contains("selection:       standard"),
                "{}",
                show.dump()
            );
        }
    }
}

#[test]
fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let fx = Fixture::new();
    // A mount point on a file:// storage is ignored, with a debug log line.
    let text = fs::read_to_string(&fx.config).unwrap().replace(
        "prefix = \"e2e-\"\n",
        "prefix = \"e2e-\"\nmount = \"/mnt/unused\"\n",
    );
    let cfg = fx.dir.join("mount.toml");
    fs::write(&cfg, text).unwrap();
    let out = run(fx.cmd_with(&cfg).env("BACKUP_LOG", "debug").args(["list"]));
    out.expect(0);
    assert!(
        out.stderr.lines().count() > 0,
        "no log lines to check: {}",
        out.dump()
    );
    assert!(!out.stderr.contains('\x1b'), "{}", out.dump());
}

#[test]
fn documented_exit_codes_for_a_bad_storage_url_and_a_short_new_secret() {
    let fx = Fixture::new();
    for url in ["bogus://somewhere", "/var/backups", "file://otherhost/x"] {
        let cfg = fx.dir.join("bad-url.toml");
        fs::write(
            &cfg,
            fx.spec
                .render()
                .replace(&format!("file://{}", fx.store.display()), url),
        )
        .unwrap();
        run(fx.cmd_with(&cfg).arg("list")).expect(2);
        run(fx.cmd_with(&cfg).arg("create")).expect(2);
    }
    let out = run(fx
        .cmd()
        .env("BACKUP_NEW_SECRET", "short")
        .args(["key", "rotate"]));
    out.expect(2).mentions("too short");
    let file = fx.dir.join("short");
    fs::write(&file, "short\n").unwrap();
    fx.backup(&["key", "rotate", "--new-secret-file", file.to_str().unwrap()])
        .expect(2);
    fx.backup(&["key", "check"]).expect(0);
}

#[test]
fn every_command_has_examples_and_there_are_completions_and_a_man_page() {
    let help = run(bare_cmd().arg("--help"));
    help.expect(0).mentions("Examples:");
    let commands: Vec<String> = help
        .stdout
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap()
        .lines()
        // "  name   what it does"; wrapped descriptions are indented further.
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(commands.len() > 15, "{commands:?}");
    for c in &commands {
        let out = run(bare_cmd().args([c.as_str(), "--help"]));
        out.expect(0);
        assert!(
            out.stdout.contains("Examples:\n  backup "),
            "{c}: {}",
            out.dump()
        );
    }
    for k in ["rotate", "rewrap", "check"] {
        let out = run(bare_cmd().args(["key", k, "--help"]));
        out.expect(0);
        assert!(
            out.stdout.contains("Examples:\n  backup "),
            "key {k}: {}",
            out.dump()
        );
    }
    assert!(
        help.stdout.contains("/etc/backup/backup.toml"),
        "{}",
        help.dump()
    );

    let bash = run(bare_cmd().args(["completions", "bash"]));
    bash.expect(0);
    assert!(bash.stdout.contains("complete -F") && bash.stdout.contains("backup"));
    // bash accepts the script.
    let check = run(Command::new("bash").arg("-n").arg("-c").arg(&bash.stdout));
    check.expect(0);
    for shell in ["zsh", "fish"] {
        let out = run(bare_cmd().args(["completions", shell]));
        out.expect(0);
        assert!(out.stdout.contains("restore"), "{}", out.dump());
    }
    let man = run(bare_cmd().arg("man"));
    man.expect(0);
    assert!(
        man.stdout.starts_with(".ie") || man.stdout.contains(".TH backup"),
        "{}",
        man.dump()
    );
    assert!(man.stdout.contains("secret"), "{}", man.dump());
}

#[test]
fn quiet_prints_nothing_on_success_and_component_lines_need_verbose() {
    let fx = Fixture::new();
    let out = fx.backup(&["-q", "create"]);
    out.expect(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{}",
        out.dump()
    );
    let (name, _) = fx.create(&[]);
    let out = fx.backup(&["-q", "verify", &name]);
    out.expect(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{}",
        out.dump()
    );
    let target = fx.dir.join("q-restore");
    let out = fx.backup(&["-q", "restore", &name, "--target", target.to_str().unwrap()]);
    out.expect(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{}",
        out.dump()
    );

    let fresh = fx.dir.join("state-quiet");
    let cfg = fx.config_variant("quiet.toml", |s| s.state_dir = fresh.clone());
    let out = run(fx.cmd_with(&cfg).args(["-q", "init"]));
    out.expect(0);
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{}",
        out.dump()
    );

    // Without -v: the result on stdout, no per-component lines on stderr.
    let plain = fx.backup(&["create"]);
    plain.expect(0);
    assert!(plain.stdout.starts_with("success: "), "{}", plain.dump());
    assert!(!plain.stderr.contains("entries"), "{}", plain.dump());
    let verbose = fx.backup(&["-v", "create"]);
    verbose.expect(0);
    assert!(
        verbose.stderr.contains("config: success"),
        "{}",
        verbose.dump()
    );

    // A problem is still reported under -q.
    let broken = Fixture::custom(|fx| {
        fx.spec
            .components
            .push(command_component("failing", &["sh", "-c", "exit 3"], ""));
    });
    let out = broken.backup(&["-q", "create"]);
    out.expect(3);
    assert!(out.stdout.contains("failing"), "{}", out.dump());
    // Query commands still answer.
    let list = fx.backup(&["-q", "list"]);
    list.expect(0);
    assert!(list.stdout.contains(&name), "{}", list.dump());
}

#[test]
fn control_characters_in_names_are_shown_escaped() {
    let evil = "/nonexistent/evil\x1b[2Jname\nforged: line";
    let fx = Fixture::custom(|fx| {
        fx.spec.components.push(files_component(
            "odd",
            &[Path::new(
                &evil.replace('\x1b', "\\u001b").replace('\n', "\\n"),
            )],
            "",
        ));
    });
    // The TOML above spells the escapes; the path itself has the raw bytes.
    let out = fx.backup(&["create"]);
    assert!(out.code == 0 || out.code == 3, "{}", out.dump());
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains('\x1b'), "{}", out.dump());
    assert!(!all.contains("\nforged"), "{}", out.dump());
    assert!(all.contains("\\u{1b}[2Jname\\nforged"), "{}", out.dump());

    let shown = fx.backup(&["show", "missing\x1b]0;title\x07.bkp"]);
    shown.expect_failure();
    assert!(!shown.stderr.contains('\x1b'), "{}", shown.dump());
    assert!(
        shown.stderr.contains("\\u{1b}]0;title\\u{7}"),
        "{}",
        shown.dump()
    );
}

#[test]
fn the_system_config_is_the_last_default() {
    let cwd = tempfile::tempdir().unwrap();
    if Path::new("/etc/backup/backup.toml").exists() {
        panic!("/etc/backup/backup.toml exists on this machine: this test needs it absent");
    }
    let out = run(bare_cmd().arg("status").current_dir(cwd.path()));
    out.expect(2).mentions("/etc/backup/backup.toml");
    // ./backup.toml wins when it exists.
    let fx = Fixture::new();
    let out = run(bare_cmd().arg("status").current_dir(&fx.dir));
    out.expect(0);
}

#[test]
fn restore_progress_on_a_terminal_clears_its_spinner() {
    let fx = Fixture::custom(|fx| {
        let big = fx.root.join("srv/big");
        fs::create_dir_all(&big).unwrap();
        for i in 0..2 {
            write_random_file(&big.join(format!("blob-{i}")), 8 << 20, i + 1);
        }
        fx.spec.components.push(files_component("big", &[&big], ""));
    });
    let (name, _) = fx.create(&[]);
    let target = fx.dir.join("tty-restore");
    let mut cmd = fx.cmd();
    cmd.args(["restore", &name, "--target", target.to_str().unwrap()]);
    // Result and progress on the same terminal, as an operator sees them.
    let (out, terminal) = run_on_terminal(cmd, true, true);
    out.expect(0);
    let text = String::from_utf8_lossy(&terminal);
    let last = text
        .rfind("(extract)")
        .unwrap_or_else(|| panic!("no spinner was drawn on the terminal: {text:?}"));
    let after = &text[last..];
    let result = after
        .find("restored ")
        .unwrap_or_else(|| panic!("no result after the spinner: {after:?}"));
    assert!(
        after[..result].contains("\x1b[2K"),
        "the spinner was left on the terminal, the result printed after it: {after:?}"
    );
    assert!(
        !after[result..].contains('\x1b'),
        "progress drawing after the result: {after:?}"
    );
}
