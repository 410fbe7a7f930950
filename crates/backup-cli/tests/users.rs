//! `backup user …` and `backup token …`: the users file of the HTTP service
//! holds Argon2id hashes and token digests only, is private, and what the
//! commands write is what the service's authenticator accepts.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use backup_http::{Authenticator, Credentials, Denial, Role, UsersAuthenticator};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::util::{Ops, Out};

const ALICE_PW: &str = "Alice-Pw-canary-41c7";
const BOB_PW: &str = "Bob-Pw-canary-98ad";

fn cmd(ops: &Ops, args: &[&str]) -> Command {
    let mut c = ops.cmd_with(&ops.config, None, args);
    c.env_remove("BACKUP_USER_PASSWORD");
    c
}

fn run(ops: &Ops, args: &[&str]) -> Out {
    Ops::run_cmd(cmd(ops, args), format!("backup {}", args.join(" ")))
}

fn run_with_password(ops: &Ops, password: &str, args: &[&str]) -> Out {
    let mut c = cmd(ops, args);
    c.env("BACKUP_USER_PASSWORD", password);
    Ops::run_cmd(
        c,
        format!("BACKUP_USER_PASSWORD=… backup {}", args.join(" ")),
    )
}

fn users_toml(ops: &Ops) -> String {
    fs::read_to_string(ops.state.join("users.toml")).expect("the users file")
}

/// Every file in the state directory, as text.
fn state_text(ops: &Ops) -> String {
    crate::util::files_under(&ops.state)
        .iter()
        .map(|p| String::from_utf8_lossy(&fs::read(p).unwrap()).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the service would answer to these credentials.
fn login(ops: &Ops, user: &str, password: &str) -> Result<(String, Role), Denial> {
    let auth = UsersAuthenticator::in_state_dir(&ops.state).expect("the users file loads");
    let credentials = Credentials {
        user: user.into(),
        password: Zeroizing::new(password.into()),
        address: "127.0.0.1".parse().unwrap(),
        client_cert_sha256: None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime
        .block_on(auth.authenticate(&credentials))
        .map(|p| (p.user, p.role))
}

#[test]
fn users_added_from_the_environment_or_a_file_are_stored_hashed_in_a_private_file() {
    let ops = Ops::new("");
    let added = run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]);
    added.expect(0).mentions("alice");
    let pw_file = ops.dir().join("bob.pw");
    fs::write(&pw_file, format!("{BOB_PW}\nsecond line ignored\n")).unwrap();
    let added_bob = run(
        &ops,
        &[
            "user",
            "add",
            "bob",
            "--role",
            "auditor",
            "--password-file",
            pw_file.to_str().unwrap(),
        ],
    );
    added_bob.expect(0);

    let file = ops.state.join("users.toml");
    let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "users.toml mode {mode:o}");
    let text = users_toml(&ops);
    assert_eq!(text.matches("$argon2id$").count(), 2, "{text}");
    for out in [&added, &added_bob] {
        for pw in [ALICE_PW, BOB_PW] {
            assert!(!out.dump().contains(pw), "{}", out.dump());
        }
    }
    let state = state_text(&ops);
    for pw in [ALICE_PW, BOB_PW] {
        assert!(!state.contains(pw), "a password in the state directory");
    }

    assert_eq!(
        login(&ops, "alice", ALICE_PW),
        Ok(("alice".into(), Role::Admin))
    );
    assert_eq!(
        login(&ops, "bob", BOB_PW),
        Ok(("bob".into(), Role::Auditor))
    );
    assert_eq!(login(&ops, "alice", BOB_PW), Err(Denial::BadCredentials));
    // Only the first line of the file is the password.
    assert_eq!(
        login(&ops, "bob", &format!("{BOB_PW}\nsecond line ignored")),
        Err(Denial::BadCredentials)
    );
}

#[test]
fn user_list_shows_users_roles_and_tokens_as_a_table_or_json() {
    let ops = Ops::new("");
    run(&ops, &["user", "list"]).expect(0).mentions("no users");
    run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]).expect(0);
    run_with_password(&ops, BOB_PW, &["user", "add", "bob", "--role", "auditor"]).expect(0);
    run(&ops, &["token", "create", "alice", "cron"]).expect(0);

    let table = run(&ops, &["user", "list"]);
    table.expect(0);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", table.dump());
    assert!(lines[0].starts_with("USER"), "{}", table.dump());
    let alice: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(alice, ["alice", "admin", "-", "cron"], "{}", table.dump());
    let bob: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(bob, ["bob", "auditor", "-", "-"], "{}", table.dump());

    let json = run(&ops, &["--json", "user", "list"]).expect(0).json();
    let users = json.as_array().expect("an array");
    assert_eq!(users.len(), 2, "{json}");
    assert_eq!(users[0]["name"], "alice");
    assert_eq!(users[0]["role"], "admin");
    assert_eq!(users[0]["client_cert"], false);
    assert_eq!(users[0]["tokens"][0]["name"], "cron");
    assert_eq!(users[1]["role"], "auditor");
    let shown = json.to_string();
    assert!(
        !shown.contains("argon2") && !shown.contains("sha256"),
        "{shown}"
    );
}

#[test]
fn a_token_is_printed_once_as_login_and_secret_and_only_its_sha256_is_kept() {
    let ops = Ops::new("");
    run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]).expect(0);
    run_with_password(&ops, BOB_PW, &["user", "add", "bob", "--role", "auditor"]).expect(0);

    let created = run(
        &ops,
        &["token", "create", "alice", "cron", "--expires", "90d"],
    );
    created.expect(0);
    let lines: Vec<&str> = created.stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one line on stdout\n{}",
        created.dump()
    );
    let (login_name, secret) = lines[0].split_once(':').expect("USER!NAME:SECRET");
    assert_eq!(login_name, "alice!cron");
    assert!(
        secret.len() >= 32
            && secret
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "{secret}"
    );
    assert!(!created.stderr.contains(secret), "{}", created.dump());

    let digest = hex::encode(sha2::Sha256::digest(secret.as_bytes()));
    let text = users_toml(&ops);
    assert!(text.contains(&digest), "{text}");
    assert!(
        !state_text(&ops).contains(secret),
        "the secret is kept nowhere"
    );

    // A token logs in with its user's role; another user's does not
    // become an admin.
    assert_eq!(
        login(&ops, "alice!cron", secret),
        Ok(("alice".into(), Role::Admin))
    );
    let json = run(&ops, &["--json", "token", "create", "bob", "monitor"])
        .expect(0)
        .json();
    assert_eq!(json["login"], "bob!monitor");
    assert!(json["expires"].is_null(), "{json}");
    let bob_secret = json["secret"].as_str().expect("a secret").to_string();
    assert_eq!(
        login(&ops, "bob!monitor", &bob_secret),
        Ok(("bob".into(), Role::Auditor))
    );
    assert_eq!(
        login(&ops, "alice!cron", &bob_secret),
        Err(Denial::BadCredentials)
    );

    // Expiry: 90 days from now (give or take the run).
    let list = run(&ops, &["--json", "token", "list", "alice"])
        .expect(0)
        .json();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["login"], "alice!cron");
    let expires =
        chrono::DateTime::parse_from_rfc3339(list[0]["expires"].as_str().unwrap()).unwrap();
    let days = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours() as f64 / 24.0;
    assert!((89.9..=90.0).contains(&days), "{days}");
    let table = run(&ops, &["token", "list"]).expect(0).stdout();
    assert!(
        table.contains("alice!cron") && table.contains("bob!monitor"),
        "{table}"
    );
    assert!(
        !table.contains(secret) && !table.contains(&digest),
        "{table}"
    );

    // Deleting revokes it.
    run(&ops, &["token", "del", "alice", "cron"]).expect(0);
    assert_eq!(
        login(&ops, "alice!cron", secret),
        Err(Denial::BadCredentials)
    );
    assert!(!users_toml(&ops).contains(&digest));
    run(&ops, &["token", "del", "alice", "cron"])
        .expect(2)
        .mentions("no token");
}

#[test]
fn passwd_replaces_the_password_and_del_removes_the_user_with_its_tokens() {
    let ops = Ops::new("");
    run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]).expect(0);
    let token = run(&ops, &["token", "create", "alice", "cron"])
        .expect(0)
        .stdout();
    let secret = token.trim().split_once(':').unwrap().1.to_string();

    run_with_password(&ops, BOB_PW, &["user", "passwd", "alice"]).expect(0);
    assert_eq!(login(&ops, "alice", ALICE_PW), Err(Denial::BadCredentials));
    assert_eq!(
        login(&ops, "alice", BOB_PW),
        Ok(("alice".into(), Role::Admin))
    );

    run(&ops, &["user", "del", "alice"])
        .expect(0)
        .mentions("1 token");
    assert_eq!(login(&ops, "alice", BOB_PW), Err(Denial::BadCredentials));
    assert_eq!(
        login(&ops, "alice!cron", &secret),
        Err(Denial::BadCredentials)
    );
    run(&ops, &["user", "del", "alice"])
        .expect(2)
        .mentions("no user");
    let json = run(&ops, &["--json", "user", "list"]).expect(0).json();
    assert_eq!(json, serde_json::json!([]));
}

#[test]
fn bad_names_duplicates_and_missing_passwords_are_refused_with_exit_code_2() {
    let ops = Ops::new("");
    // Without a terminal, a file or the environment, there is no password:
    // the message says how to give one.
    run(&ops, &["user", "add", "alice", "--role", "admin"])
        .expect(2)
        .mentions("--password-file")
        .mentions("BACKUP_USER_PASSWORD");
    assert!(!ops.state.join("users.toml").exists());
    let empty = ops.dir().join("empty.pw");
    fs::write(&empty, "\n").unwrap();
    run(
        &ops,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--password-file",
            empty.to_str().unwrap(),
        ],
    )
    .expect(2)
    .mentions("first line");
    run_with_password(&ops, "", &["user", "add", "alice", "--role", "admin"]).expect(2);

    run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]).expect(0);
    let before = users_toml(&ops);
    run_with_password(&ops, BOB_PW, &["user", "add", "alice", "--role", "auditor"])
        .expect(2)
        .mentions("exists");
    for bad in ["al!ce", "al:ce", "", "with space", &"x".repeat(65)] {
        run_with_password(&ops, BOB_PW, &["user", "add", bad, "--role", "admin"])
            .expect(2)
            .mentions("name");
        run(&ops, &["token", "create", "alice", bad]).expect(2);
    }
    run_with_password(&ops, BOB_PW, &["user", "add", "bob", "--role", "root"]).expect(2);
    run_with_password(
        &ops,
        BOB_PW,
        &[
            "user",
            "add",
            "bob",
            "--role",
            "admin",
            "--client-cert-sha256",
            "not-a-fingerprint",
        ],
    )
    .expect(2)
    .mentions("sha256");
    run_with_password(&ops, BOB_PW, &["user", "passwd", "nobody"])
        .expect(2)
        .mentions("no user");
    run(&ops, &["token", "create", "nobody", "cron"]).expect(2);
    for expires in ["0d", "90", "1w", "-5m", "soon"] {
        let option = format!("--expires={expires}");
        run(&ops, &["token", "create", "alice", "cron", &option])
            .expect(2)
            .mentions("--expires");
    }
    run(&ops, &["token", "create", "alice", "cron"]).expect(0);
    run(&ops, &["token", "create", "alice", "cron"])
        .expect(2)
        .mentions("already");
    assert_eq!(
        login(&ops, "alice", ALICE_PW),
        Ok(("alice".into(), Role::Admin))
    );
    // Nothing refused changed the users.
    let after = users_toml(&ops);
    assert_eq!(after.matches("[[user]]").count(), 1, "{after}");
    assert!(
        after.starts_with(before.trim_end()),
        "{before}\n---\n{after}"
    );
    // The password never came from the command line: there is no option for it.
    run(
        &ops,
        &["user", "add", "carol", "--role", "admin", "--password", "x"],
    )
    .expect(2);
}

#[test]
fn a_client_certificate_is_registered_in_any_usual_form_and_cleared() {
    let ops = Ops::new("");
    let fp = "3f1c0e8a4b2d6f7081920a1b2c3d4e5f60718293a4b5c6d7e8f9011223344556";
    let colons = fp
        .as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    run_with_password(
        &ops,
        ALICE_PW,
        &[
            "user",
            "add",
            "alice",
            "--role",
            "admin",
            "--client-cert-sha256",
            &format!("sha256:{fp}"),
        ],
    )
    .expect(0)
    .mentions("client certificate");
    assert!(users_toml(&ops).contains(&format!("client_cert_sha256 = \"{fp}\"")));
    assert_eq!(
        login(&ops, "alice", ALICE_PW),
        Err(Denial::ClientCertificateRequired)
    );
    run(&ops, &["user", "cert", "alice", "--clear"]).expect(0);
    assert!(!users_toml(&ops).contains("client_cert_sha256"));
    assert_eq!(
        login(&ops, "alice", ALICE_PW),
        Ok(("alice".into(), Role::Admin))
    );
    run(&ops, &["user", "cert", "alice", &colons]).expect(0);
    assert!(users_toml(&ops).contains(fp));
    let json = run(&ops, &["--json", "user", "list"]).expect(0).json();
    assert_eq!(json[0]["client_cert"], true);
}

#[test]
fn every_change_is_audited_naming_the_user_or_token_and_never_a_secret() {
    let ops = Ops::new("");
    run_with_password(&ops, ALICE_PW, &["user", "add", "alice", "--role", "admin"]).expect(0);
    run_with_password(&ops, BOB_PW, &["user", "add", "alice", "--role", "admin"]).expect(2);
    run(&ops, &["user", "add", "bob", "--role", "auditor"]).expect(2);
    run_with_password(&ops, BOB_PW, &["user", "passwd", "alice"]).expect(0);
    let line = run(&ops, &["token", "create", "alice", "cron"])
        .expect(0)
        .stdout();
    let secret = line.trim().split_once(':').unwrap().1.to_string();
    run(&ops, &["token", "del", "alice", "cron"]).expect(0);
    run(&ops, &["user", "cert", "alice", "--clear"]).expect(0);
    run(&ops, &["user", "del", "alice"]).expect(0);
    run(&ops, &["user", "list"]).expect(0);
    run(&ops, &["token", "list"]).expect(0);

    let audit = ops.audit();
    let seen: Vec<(String, String, String)> = audit
        .iter()
        .map(|r| {
            assert!(r["actor"].as_str().is_some_and(|a| !a.is_empty()), "{r}");
            (
                r["operation"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("user.add", "alice", "done"),
        ("user.add", "alice", "refused"),
        ("user.add", "bob", "refused"),
        ("user.passwd", "alice", "done"),
        ("token.create", "alice!cron", "done"),
        ("token.del", "alice!cron", "done"),
        ("user.cert", "alice", "done"),
        ("user.del", "alice", "done"),
    ]
    .iter()
    .map(|(o, t, r)| (o.to_string(), t.to_string(), r.to_string()))
    .collect();
    assert_eq!(seen, expected, "listing is not a change and is not audited");
    assert!(
        audit[1]["error"].as_str().unwrap().contains("exists"),
        "{}",
        audit[1]
    );
    assert!(
        audit[2]["error"].as_str().unwrap().contains("password"),
        "{}",
        audit[2]
    );

    let log = fs::read_to_string(ops.state.join("audit.log")).unwrap();
    for s in [ALICE_PW, BOB_PW, secret.as_str()] {
        assert!(!log.contains(s), "a secret in the audit log:\n{log}");
    }
    assert!(!log.contains("argon2"), "{log}");
}

/// `backup user add` on a terminal (`script` gives it one), answering its
/// two prompts with `first` and `second`, each typed once the prompt shows.
fn add_on_a_terminal(ops: &Ops, first: &str, second: &str) -> Out {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let line = format!(
        "{} --config {} user add alice --role admin",
        crate::util::BIN,
        ops.config.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env_remove("BACKUP_USER_PASSWORD")
        .env_remove("BACKUP_CONFIG")
        .env("NO_COLOR", "1")
        .current_dir(ops.dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("this test needs `script` (util-linux): {e}"));
    let shown = Arc::new(Mutex::new(Vec::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let shown = shown.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let mut stdin = child.stdin.take().unwrap();
    for (prompt, answer) in [
        ("Password of alice:", first),
        ("Repeat the password:", second),
    ] {
        crate::util::wait_for(
            std::time::Duration::from_secs(30),
            &format!("the prompt {prompt:?}"),
            || {
                String::from_utf8_lossy(&shown.lock().unwrap())
                    .contains(prompt)
                    .then_some(())
            },
        );
        // The prompt is up, so echo is off: what is typed is not shown.
        std::thread::sleep(std::time::Duration::from_millis(100));
        stdin.write_all(format!("{answer}\n").as_bytes()).unwrap();
    }
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let stdout = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    Out {
        code: status.code().unwrap_or(-1),
        stdout,
        stderr,
        what: format!("script -qec '{line}'"),
    }
}

#[test]
fn on_a_terminal_the_password_is_asked_twice_and_must_match() {
    let ops = Ops::new("");
    let differ = add_on_a_terminal(&ops, ALICE_PW, BOB_PW);
    differ.expect(2).mentions("differ");
    assert!(!ops.state.join("users.toml").exists());

    let added = add_on_a_terminal(&ops, ALICE_PW, ALICE_PW);
    added.expect(0).mentions("added user alice");
    assert!(!added.dump().contains(ALICE_PW), "{}", added.dump());
    assert_eq!(
        login(&ops, "alice", ALICE_PW),
        Ok(("alice".into(), Role::Admin))
    );
}
