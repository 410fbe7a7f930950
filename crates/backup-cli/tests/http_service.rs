//! `backup serve` end to end, driven the way operators script it: the real
//! `curl` (`--netrc-file`) and `wget` (`.wgetrc`) from a "cron job", the
//! refusals a new user meets (401, 403, 404, 409, 429), download links,
//! ranged downloads, a client that goes away, a run that fails after its
//! headers were sent — each attempt found in the audit log with its user,
//! and no password or token secret anywhere it should not be.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http_util::*;
use crate::util::{pseudo_random, run, sha256_file, Out};

/// Passwords without white space (a `.netrc` splits at it), one non-ASCII.
const ADMIN_PW: &str = "correct-horse-admin-\u{e9}t\u{e9}-2026";
const AUDITOR_PW: &str = "auditor-reads-only-7-words-long";

/// An appliance with an admin and an auditor, served.
fn served(extra: &str) -> (Appliance, Server) {
    let app = Appliance::new(extra);
    app.add_user("admin", "admin", ADMIN_PW);
    app.add_user("auditor", "auditor", AUDITOR_PW);
    let server = app.serve();
    (app, server)
}

/// `curl --fail --netrc-file F --cacert CERT -OJ URL` run in `dir`, as a
/// cron job would; the headers go to a file beside `dir`.
fn cron_curl(app: &Appliance, curl: &Curl, dir: &Path, url: &str, extra: &[&str]) -> (Out, Reply) {
    let headers = dir.with_extension("headers");
    let mut c = curl.command(&["--fail", "-OJ", "-D"]);
    c.arg(&headers).args(extra).arg(url).current_dir(dir);
    assert_argv_clean(&c, &app.secrets());
    let out = run(&mut c);
    let headers = fs::read_to_string(&headers).unwrap_or_default();
    let reply = Reply {
        code: out.code,
        status: status_of(&headers),
        headers,
        body: Vec::new(),
        stderr: out.stderr.clone(),
        what: out.what.clone(),
    };
    (out, reply)
}

/// The status code of the last response in a `curl -D` header dump.
fn status_of(headers: &str) -> u16 {
    headers
        .lines()
        .rfind(|l| l.starts_with("HTTP/"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Starts `curl --fail -OJ URL` in `dir` in the background (headers to
/// `dir.headers`) and waits until the status line came: then the backup
/// passed its preflight and holds the lock. Gives the client and its headers.
fn start_backup_client(
    app: &Appliance,
    server: &Server,
    curl: &Curl,
    dir: &Path,
    extra: &[&str],
) -> (std::process::Child, String) {
    let headers = dir.with_extension("headers");
    let mut c = curl.command(&["--fail", "-OJ", "-D"]);
    c.arg(&headers)
        .args(extra)
        .arg(backup_url(server, NODE, false))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    assert_argv_clean(&c, &app.secrets());
    let mut client = c.spawn().expect("starting curl");
    let started = Instant::now();
    loop {
        let text = fs::read_to_string(&headers).unwrap_or_default();
        if status_of(&text) == 200 && text.contains("\r\n\r\n") {
            return (client, text);
        }
        if let Some(st) = client.try_wait().unwrap() {
            panic!(
                "curl ended ({st}) before the backup was seen running\n{text}\n{}",
                server.output()
            );
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = client.kill();
            panic!("no status line within 60 s\n{}", server.output());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn backup_url(server: &Server, node: &str, audits: bool) -> String {
    server.url(&format!("/ssg/backup?node={node}&audits={audits}"))
}

/// HTTP audit records of `actor` for `route` (`GET /ssg/backup`) with `outcome`.
fn http_records<'a>(audit: &'a [Value], actor: &str, route: &str, outcome: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["actor"] == actor && r["route"] == route && r["outcome"] == outcome)
        .collect()
}

#[test]
fn curl_from_cron_gets_an_image_that_verifies_and_restores_with_audits_only_when_asked() {
    let (app, mut server) = served("");
    let curl = Curl::with_netrc(&server, &app.dir().join("curl"), "admin", ADMIN_PW);

    for (audits, dir) in [(false, "cron-plain"), (true, "cron-audits")] {
        let dir = app.fresh_dir(dir);
        let (out, reply) = cron_curl(&app, &curl, &dir, &backup_url(&server, NODE, audits), &[]);
        assert_eq!(
            out.code,
            0,
            "curl failed\n{}\n{}",
            reply.dump(),
            server.output()
        );
        reply.expect_status(200);
        let file = only_file(&dir);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            reply.header("content-disposition").as_deref(),
            Some(format!("attachment; filename=\"{name}\"").as_str()),
            "curl -OJ saved the file under the name Content-Disposition gave"
        );
        assert!(
            name.starts_with(HTTP_PREFIX) && name.ends_with(".bkp"),
            "{name}"
        );
        assert!(reply.header("x-backup-run").is_some(), "{}", reply.dump());

        let components = app.verify_components(&file);
        assert!(components.contains(&"config".to_owned()), "{components:?}");
        assert_eq!(
            components.contains(&"audits".to_owned()),
            audits,
            "audits={audits} gave the components {components:?}"
        );
        let restored_audits = app.restore_and_check(&file, &format!("restored-{audits}"));
        assert_eq!(
            restored_audits, audits,
            "audit records restored: {restored_audits}"
        );

        // `store_served` (default true): the same image is in the store too.
        assert!(app.images().contains(&name), "{:?}", app.store_files());
        assert_eq!(sha256_file(&file), sha256_file(&app.store.join(&name)));
    }

    let audit = app.audit();
    assert_eq!(
        http_records(
            &audit,
            "http:admin@127.0.0.1",
            "GET /ssg/backup",
            BACKUP_DONE
        )
        .len(),
        2,
        "one `done` line per backup request:\n{}",
        show(&audit)
    );
    let creates: Vec<&Value> = audit
        .iter()
        .filter(|r| r["operation"] == "create" && r["actor"] == "http:admin@127.0.0.1")
        .collect();
    assert_eq!(creates.len(), 2, "{}", show(&audit));
    assert!(creates
        .iter()
        .all(|r| r["outcome"] == "success" && r["trigger"] == "http"));
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn wget_with_a_wgetrc_gets_an_image_that_verifies_and_restores() {
    let (app, mut server) = served("");
    let wget = Wget::new(&server, &app.dir().join("wget-home"), "admin", ADMIN_PW);

    for (audits, dir) in [(false, "wget-plain"), (true, "wget-audits")] {
        let dir = app.fresh_dir(dir);
        let out = wget.run_in(&dir, &[&backup_url(&server, NODE, audits)]);
        out.expect(0);
        assert!(!out.what.contains(ADMIN_PW));
        let file = only_file(&dir);
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(HTTP_PREFIX) && name.ends_with(".bkp"),
            "wget --content-disposition saved {name}\n{}",
            out.dump()
        );
        let components = app.verify_components(&file);
        assert_eq!(
            components.contains(&"audits".to_owned()),
            audits,
            "{components:?}"
        );
        assert_eq!(
            app.restore_and_check(&file, &format!("restored-{audits}")),
            audits
        );
    }

    // wget asks without credentials first, then with them after the 401:
    // the first is audited, refused, and not counted as a failed login.
    let audit = app.audit();
    assert!(
        !http_records(&audit, "http:-@127.0.0.1", "GET /ssg/backup", "refused").is_empty(),
        "{}",
        show(&audit)
    );
    assert_eq!(
        http_records(
            &audit,
            "http:admin@127.0.0.1",
            "GET /ssg/backup",
            BACKUP_DONE
        )
        .len(),
        2,
        "{}",
        show(&audit)
    );
    assert!(
        http_records(&audit, "http:admin@127.0.0.1", "GET /ssg/backup", "refused").is_empty(),
        "no failed login for admin:\n{}",
        show(&audit)
    );
    let agents: Vec<&str> = audit
        .iter()
        .filter(|r| r["route"] == "GET /ssg/backup")
        .filter_map(|r| r["user_agent"].as_str())
        .collect();
    assert!(
        agents.iter().any(|a| a.starts_with("Wget/")),
        "the user agent is audited: {agents:?}"
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn refusals_get_their_status_codes_and_audit_lines_and_the_service_keeps_serving() {
    let (app, mut server) = served("");
    let scratch = app.dir().join("scratch");
    let anonymous = Curl::anonymous(&server, &scratch.join("anon"));
    let admin = Curl::with_netrc(&server, &scratch.join("admin"), "admin", ADMIN_PW);
    let auditor = Curl::with_netrc(&server, &scratch.join("auditor"), "auditor", AUDITOR_PW);

    // No credentials: 401 with the challenge.
    let r = anonymous.get(&[&backup_url(&server, NODE, false)]);
    r.expect_status(401);
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some(r#"Basic realm="backup", charset="UTF-8""#),
        "{}",
        r.dump()
    );
    // /healthz needs none and says nothing.
    let r = anonymous.get(&[&server.url("/healthz")]);
    r.expect_status(200);
    assert!(r.body.len() < 16, "{}", r.dump());
    // An auditor may not back up, may read status, images and metrics.
    auditor
        .get(&[&backup_url(&server, NODE, false)])
        .expect_status(403);
    let r = auditor.get(&[&server.url("/status")]);
    r.expect_status(200);
    let cli_status = app.backup(&["status", "--json"]);
    cli_status.expect(0);
    assert_eq!(
        r.json(),
        cli_status.json(),
        "GET /status is `backup status --json`"
    );
    auditor.get(&[&server.url("/images")]).expect_status(200);
    let r = auditor.get(&[&server.url("/metrics")]);
    r.expect_status(200);
    assert!(
        r.text().contains("# TYPE "),
        "Prometheus text:\n{}",
        r.text()
    );
    // Another node: 404 naming the known one.
    let r = admin.get(&[&backup_url(&server, "gw-other", false)]);
    r.expect_status(404);
    assert!(
        r.text().contains(NODE),
        "the body names the node: {}",
        r.text()
    );
    // Unknown route, malformed query.
    admin
        .get(&[&server.url("/no/such/route")])
        .expect_status(404);
    admin
        .get(&[&server.url(&format!("/ssg/backup?node={NODE}&audits=maybe"))])
        .expect_status(400);
    // Oversized headers (from a file: one argument may not be that long).
    let big = scratch.join("big-header");
    fs::write(&big, format!("X-Padding: {}\n", "a".repeat(96 * 1024))).unwrap();
    let r = admin.get(&["-H", &format!("@{}", big.display()), &server.url("/status")]);
    r.expect_status(431);

    let audit = app.http_audit();
    let route = "GET /ssg/backup";
    for (actor, what) in [
        ("http:-@127.0.0.1", "no credentials"),
        ("http:auditor@127.0.0.1", "an auditor backing up"),
        ("http:admin@127.0.0.1", "another node, a bad query"),
    ] {
        assert!(
            !http_records(&audit, actor, route, "refused").is_empty(),
            "no refused line for {what} ({actor}):\n{}",
            show(&audit)
        );
    }
    assert!(
        !http_records(&audit, "http:auditor@127.0.0.1", "GET /status", "done").is_empty(),
        "{}",
        show(&audit)
    );
    assert!(
        audit
            .iter()
            .any(|r| r["route"] == "GET /no/such/route" && r["outcome"] == "refused"),
        "the unknown route is audited:\n{}",
        show(&audit)
    );
    assert!(
        app.images().is_empty(),
        "nothing was backed up: {:?}",
        app.store_files()
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

/// A component that takes a while, so that a backup is seen running.
fn slow_component(seconds: u32) -> String {
    format!(
        "[[component]]\nname = \"slow\"\nkind = \"command\"\nbackup = [\"sh\", \"-c\", \"sleep {seconds}; echo slow\"]\n"
    )
}

#[test]
fn a_second_backup_while_one_runs_gets_409_with_retry_after_and_is_audited_skipped() {
    let (app, mut server) = served(&slow_component(4));
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let first_dir = app.fresh_dir("first");
    let (mut first, _) = start_backup_client(&app, &server, &admin, &first_dir, &[]);
    // The running client's command line carries no credentials.
    let line = cmdline(first.id());
    assert!(line.contains("--netrc-file"), "{line}");
    app.assert_no_secret_in("a running curl's command line", &line);
    let ps = run(Command::new("ps").args(["-eo", "args"]));
    app.assert_no_secret_in("`ps -eo args`", &ps.stdout);

    let r = admin.get(&[&backup_url(&server, NODE, true)]);
    r.expect_status(409);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("409 without a Retry-After in seconds\n{}", r.dump()));
    assert!(retry > 0);

    let status = first.wait().unwrap();
    assert!(
        status.success(),
        "the first backup failed\n{}",
        server.output()
    );
    let file = only_file(&first_dir);
    app.verify_components(&file);

    let audit = app.http_audit();
    assert!(
        !http_records(&audit, "http:admin@127.0.0.1", "GET /ssg/backup", "skipped").is_empty(),
        "the refused second run is audited as skipped:\n{}",
        show(&audit)
    );
    assert_eq!(
        http_records(
            &audit,
            "http:admin@127.0.0.1",
            "GET /ssg/backup",
            BACKUP_DONE
        )
        .len(),
        1,
        "{}",
        show(&audit)
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn wrong_passwords_are_answered_ever_later_then_429_and_audited_with_the_user() {
    let (app, mut server) = served("");
    let wrong = "not-the-admin-password";
    app.remember_secret(wrong);
    let curl = Curl::with_netrc(&server, &app.dir().join("wrong"), "admin", wrong);
    let url = server.url("/status");
    // 250 ms × 2^(n−3) from the 4th failure within 15 minutes (at most 8 s);
    // only lower bounds are checked: the answer is held back at least so long.
    for n in 1..=9u32 {
        let t = Instant::now();
        let r = curl.get(&[&url]);
        let took = t.elapsed();
        r.expect_status(401);
        if n >= 4 {
            let delay = Duration::from_millis(250 << (n - 4)).min(Duration::from_secs(8));
            assert!(
                took >= delay,
                "failure {n} was answered after {took:?}, not held back {delay:?}"
            );
        }
    }
    let r = curl.get(&[&url]);
    r.expect_status(429);
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After\n{}", r.dump()));
    assert!(retry > 0);
    // Another user from the same address is not affected.
    let auditor = Curl::with_netrc(&server, &app.dir().join("auditor"), "auditor", AUDITOR_PW);
    auditor.get(&[&url]).expect_status(200);

    let audit = app.http_audit();
    let refused = http_records(&audit, "http:admin@127.0.0.1", "GET /status", "refused");
    assert!(
        refused.len() >= 10,
        "each failed attempt names the attempted user:\n{}",
        show(&audit)
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn a_token_in_netrc_backs_up_until_deleted_and_has_its_users_role_at_most() {
    let (app, mut server) = served("");
    let (login, secret) = app.create_token("admin", "cron", &["--expires", "90d"]);
    let (auditor_login, auditor_secret) = app.create_token("auditor", "monitor", &[]);
    let curl = Curl::with_netrc(&server, &app.dir().join("token"), &login, &secret);

    let dir = app.fresh_dir("with-token");
    let (out, reply) = cron_curl(&app, &curl, &dir, &backup_url(&server, NODE, false), &[]);
    assert_eq!(out.code, 0, "{}\n{}", reply.dump(), server.output());
    app.verify_components(&only_file(&dir));

    let monitor = Curl::with_netrc(
        &server,
        &app.dir().join("monitor"),
        &auditor_login,
        &auditor_secret,
    );
    monitor.get(&[&server.url("/metrics")]).expect_status(200);
    monitor
        .get(&[&backup_url(&server, NODE, false)])
        .expect_status(403);

    // A token past its expiry is refused like a wrong one.
    let (brief_login, brief_secret) = app.create_token("admin", "brief", &["--expires", "2s"]);
    let brief = Curl::with_netrc(
        &server,
        &app.dir().join("brief"),
        &brief_login,
        &brief_secret,
    );
    let listed = app.backup(&["--json", "token", "list", "admin"]);
    listed.expect(0);
    let until = listed.json().as_array().and_then(|tokens| {
        tokens
            .iter()
            .find(|t| t["name"] == "brief")
            .and_then(|t| t["expires"].as_str())
            .and_then(|e| chrono::DateTime::parse_from_rfc3339(e).ok())
    });
    let until = until.unwrap_or_else(|| panic!("no expiry of token brief in\n{}", listed.dump()));
    while chrono::Utc::now() <= until.with_timezone(&chrono::Utc) + chrono::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    brief.get(&[&server.url("/status")]).expect_status(401);

    app.backup(&["token", "del", "admin", "cron"]).expect(0);
    let r = curl.get(&[&backup_url(&server, NODE, false)]);
    r.expect_status(401);

    let audit = app.http_audit();
    assert!(
        audit.iter().any(|r| r["route"] == "GET /ssg/backup"
            && r["outcome"] == BACKUP_DONE
            && r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("http:admin"))),
        "{}",
        show(&audit)
    );
    assert!(
        audit.iter().any(|r| r["route"] == "GET /ssg/backup"
            && r["outcome"] == "refused"
            && r["actor"]
                .as_str()
                .is_some_and(|a| a.starts_with("http:admin!cron@"))),
        "the revoked token's attempt names it:\n{}",
        show(&audit)
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn a_link_works_without_credentials_until_it_expires_and_a_tampered_one_never() {
    let (app, mut server) = served("");
    let out = app.backup(&["--json", "create"]);
    out.expect(0);
    let name = out.json()["image"].as_str().unwrap().to_owned();
    let stored = app.store.join(&name);
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let anonymous = Curl::anonymous(&server, &app.dir().join("anon"));
    let auditor = Curl::with_netrc(&server, &app.dir().join("auditor"), "auditor", AUDITOR_PW);

    let link_url = server.url(&format!("/images/{name}/link?expires=6h"));
    auditor.get(&["-X", "POST", &link_url]).expect_status(403);
    let r = admin.get(&["-X", "POST", &link_url]);
    r.expect_status(200);
    let link = r.json();
    let url = link["url"].as_str().expect("a url").to_owned();
    let expires = chrono::DateTime::parse_from_rfc3339(link["expires"].as_str().expect("expires"))
        .expect("expires in RFC 3339");
    let minutes = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!(
        (350..=360).contains(&minutes),
        "a 6 h link expires in {minutes} min"
    );
    assert!(
        url.starts_with(&server.url("/")),
        "an absolute URL from the Host: {url}"
    );

    let got = anonymous.get(&[&url]);
    got.expect_status(200);
    assert_eq!(
        got.body,
        fs::read(&stored).unwrap(),
        "the link gives the image"
    );
    let tampered = url.replacen("sig=", "sig=00", 1);
    anonymous.get(&[&tampered]).expect_status(403);
    let other_name = url.replacen(&name, &name.replace(".bkp", "x.bkp"), 1);
    assert_ne!(anonymous.get(&[&other_name]).status, 200);

    let r = admin.get(&[
        "-X",
        "POST",
        &server.url(&format!("/images/{name}/link?expires=2s")),
    ]);
    r.expect_status(200);
    let short = r.json()["url"].as_str().unwrap().to_owned();
    let until =
        chrono::DateTime::parse_from_rfc3339(r.json()["expires"].as_str().unwrap()).unwrap();
    while chrono::Utc::now() <= until.with_timezone(&chrono::Utc) + chrono::Duration::seconds(1) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = anonymous.get(&[&short]);
    r.expect_status(403);
    assert!(r.text().contains("expired"), "{}", r.dump());

    admin
        .get(&[
            "-X",
            "POST",
            &server.url(&format!("/images/{name}/link?expires=8d")),
        ])
        .expect_status(400);
    let csv = admin.get(&[&server.url("/links.csv")]);
    csv.expect_status(200);
    let header = csv.text().lines().next().unwrap_or_default().to_owned();
    assert!(
        header.starts_with("image,") && header.contains(",url,"),
        "{}",
        csv.text()
    );
    assert!(csv.text().contains(&name), "{}", csv.text());

    // Rotating the link key revokes every link issued, the service running.
    anonymous.get(&[&url]).expect_status(200);
    app.backup(&["key", "rotate-links"]).expect(0);
    anonymous.get(&[&url]).expect_status(403);
    let r = admin.get(&["-X", "POST", &link_url]);
    r.expect_status(200);
    let fresh = r.json()["url"].as_str().unwrap().to_owned();
    anonymous.get(&[&fresh]).expect_status(200);

    let audit = app.http_audit();
    let uses: Vec<&Value> = audit
        .iter()
        .filter(|r| r["actor"] == "http:link@127.0.0.1" && r["target"] == name.as_str())
        .collect();
    assert!(
        uses.iter().any(|r| r["outcome"] == "done"),
        "the link's use is audited:\n{}",
        show(&audit)
    );
    assert!(
        uses.iter().filter(|r| r["outcome"] == "refused").count() >= 2,
        "the tampered and the expired link are audited refused:\n{}",
        show(&audit)
    );
    assert!(
        audit.iter().any(|r| r["actor"] == "http:admin@127.0.0.1"
            && r["outcome"] == "done"
            && r["route"]
                .as_str()
                .is_some_and(|p| p.starts_with("POST /images/"))),
        "issuing is audited:\n{}",
        show(&audit)
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn an_image_download_resumes_with_curl_continue_at() {
    let (app, mut server) = served("");
    fs::write(app.etc.join("blob.bin"), pseudo_random(5, 600 * 1024)).unwrap();
    let out = app.backup(&["--json", "create"]);
    out.expect(0);
    let name = out.json()["image"].as_str().unwrap().to_owned();
    let stored = fs::read(app.store.join(&name)).unwrap();
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let url = server.url(&format!("/images/{name}"));

    let head = admin.get(&["-I", &url]);
    head.expect_status(200);
    assert_eq!(
        head.header("content-length"),
        Some(stored.len().to_string()),
        "{}",
        head.dump()
    );
    assert!(head.header("etag").is_some(), "{}", head.dump());

    // A download cut off after 100 000 bytes, resumed.
    let partial = app.dir().join("resumed.bkp");
    fs::write(&partial, &stored[..100_000]).unwrap();
    let headers = app.dir().join("resume.headers");
    let mut c = admin.command(&["--fail", "-C", "-", "-D"]);
    c.arg(&headers).arg("-o").arg(&partial).arg(&url);
    run(&mut c).expect(0);
    let headers = fs::read_to_string(&headers).unwrap();
    assert_eq!(status_of(&headers), 206, "{headers}");
    assert!(
        headers.to_lowercase().contains(&format!(
            "content-range: bytes 100000-{}/{}",
            stored.len() - 1,
            stored.len()
        )),
        "{headers}"
    );
    assert!(
        fs::read(&partial).unwrap() == stored,
        "the resumed file is the image"
    );
    app.verify_components(&partial);

    // The backup endpoint ignores Range: a retry never splices two images.
    let dir = app.fresh_dir("ranged-backup");
    let (out, reply) = cron_curl(
        &app,
        &admin,
        &dir,
        &backup_url(&server, NODE, false),
        &["-H", "Range: bytes=100-"],
    );
    assert_eq!(out.code, 0, "{}", reply.dump());
    reply.expect_status(200);
    app.verify_components(&only_file(&dir));
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn a_client_that_goes_away_mid_stream_fails_the_run_and_publishes_nothing() {
    // 8 MiB that do not compress: far more than the pipe and socket buffers
    // hold, so the server is still writing when the client has gone.
    let (app, mut server) = served("");
    fs::write(app.etc.join("bulk.bin"), pseudo_random(9, 8 << 20)).unwrap();
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let dir = app.fresh_dir("gone");
    // A slow reader, killed once the status line came: the client is gone
    // mid-stream.
    let (mut client, headers) =
        start_backup_client(&app, &server, &admin, &dir, &["--limit-rate", "100k"]);
    client.kill().unwrap();
    client.wait().unwrap();
    let reply = Reply {
        code: -1,
        status: status_of(&headers),
        headers,
        body: Vec::new(),
        stderr: String::new(),
        what: "curl (killed)".into(),
    };
    let run_id = reply.header("x-backup-run").expect("X-Backup-Run");

    let failed = app.wait_audit("of the abandoned backup, failed", |r| {
        r["actor"] == "http:admin@127.0.0.1"
            && r["route"] == "GET /ssg/backup"
            && r["outcome"] == "failed"
    });
    assert!(failed["error"].is_string(), "{failed}");
    assert!(
        app.images().is_empty(),
        "nothing published under a final name: {:?}",
        app.store_files()
    );
    let r = admin.get(&[&server.url(&format!("/runs/{run_id}"))]);
    r.expect_status(200);
    assert_eq!(r.json()["outcome"], "failed", "{}", r.text());
    server.assert_serving();
    // The lock was released: the next backup runs.
    fs::remove_file(app.etc.join("bulk.bin")).unwrap();
    let again = app.fresh_dir("again");
    let (out, reply) = cron_curl(&app, &admin, &again, &backup_url(&server, NODE, false), &[]);
    assert_eq!(out.code, 0, "{}\n{}", reply.dump(), server.output());
    app.assert_no_secret_leaked(&server);
}

#[test]
fn a_component_failing_after_the_headers_breaks_the_transfer_with_halt_and_is_partial_without() {
    let flaky = "[[component]]\nname = \"flaky\"\nkind = \"command\"\nbackup = [\"sh\", \"-c\", \"echo boom >&2; exit 7\"]\n";
    let (app, mut server) = served(flaky);
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);

    // halt=true: the status line went out, then the run failed: the body
    // ends without its terminating chunk and curl --fail exits non-zero.
    let dir = app.fresh_dir("halted");
    let url = server.url(&format!("/ssg/backup?node={NODE}&audits=false&halt=true"));
    let (out, reply) = cron_curl(&app, &admin, &dir, &url, &[]);
    reply.expect_status(200);
    assert!(
        [18, 56].contains(&out.code),
        "curl --fail exits 18 or 56 on a transfer cut short, not {}\n{}",
        out.code,
        reply.dump()
    );
    let id = reply.header("x-backup-run").expect("X-Backup-Run");
    let r = admin.get(&[&server.url(&format!("/runs/{id}"))]);
    r.expect_status(200);
    assert_eq!(r.json()["outcome"], "failed", "{}", r.text());
    assert!(
        r.json()["reason"]
            .as_str()
            .is_some_and(|s| s.contains("flaky")),
        "{}",
        r.text()
    );
    assert!(app.images().is_empty(), "{:?}", app.store_files());

    // Without halt: an image without the failed component; partial is
    // known at the end of the stream, from /runs/{id}.
    let dir = app.fresh_dir("partial");
    let (out, reply) = cron_curl(&app, &admin, &dir, &backup_url(&server, NODE, false), &[]);
    assert_eq!(out.code, 0, "{}", reply.dump());
    let id = reply.header("x-backup-run").expect("X-Backup-Run");
    let r = admin.get(&[&server.url(&format!("/runs/{id}"))]);
    r.expect_status(200);
    assert_eq!(r.json()["outcome"], "partial", "{}", r.text());
    assert_eq!(
        r.json()["failed_components"],
        serde_json::json!(["flaky"]),
        "{}",
        r.text()
    );
    app.verify_components(&only_file(&dir));

    let audit = app.http_audit();
    for outcome in ["failed", "partial"] {
        assert!(
            !http_records(&audit, "http:admin@127.0.0.1", "GET /ssg/backup", outcome).is_empty(),
            "no {outcome} line:\n{}",
            show(&audit)
        );
    }
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

/// Peak RSS `backup serve` may reach streaming a GiB: the same generous
/// bound as `create` (the pipeline holds a few 256 KiB buffers and 16 KiB
/// chunks; the response adds one 256 KiB pipe).
const SERVE_LIMIT_KIB: u64 = 200 * 1024;

/// Peak resident set size (VmHWM) of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

#[test]
fn a_streamed_gib_of_incompressible_data_stays_within_the_memory_bound() {
    let (app, mut server) = served("[image]\ncompression = \"gzip\"\nlevel = 1\n");
    crate::util::write_random_file(&app.etc.join("random-1GiB.bin"), 1 << 30, 0xC0FFEE);
    let before = peak_rss_kib(server.process.pid());

    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let r = admin.get(&[
        "--fail",
        "-o",
        "/dev/null",
        &backup_url(&server, NODE, false),
    ]);
    assert_eq!(r.code, 0, "{}\n{}", r.dump(), server.output());
    r.expect_status(200);
    let peak = peak_rss_kib(server.process.pid());
    let images = app.images();
    assert_eq!(
        images.len(),
        1,
        "the served image is stored too: {:?}",
        app.store_files()
    );
    let size = fs::metadata(app.store.join(&images[0])).unwrap().len();
    assert!(
        size > 1 << 30,
        "an incompressible GiB should not shrink: {size}"
    );
    println!(
        "backup serve: peak RSS {peak} KiB ({:.1} MiB) streaming a {size}-byte image (at start: {before} KiB)",
        peak as f64 / 1024.0
    );
    assert!(
        peak < SERVE_LIMIT_KIB,
        "backup serve peaked at {peak} KiB streaming a GiB (limit {SERVE_LIMIT_KIB} KiB)"
    );
    server.assert_serving();
}

#[test]
fn metrics_need_an_auditor_unless_configured_public() {
    let (app, mut server) = served("");
    let anonymous = Curl::anonymous(&server, &app.dir().join("anon"));
    anonymous.get(&[&server.url("/metrics")]).expect_status(401);
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let dir = app.fresh_dir("one");
    let (out, reply) = cron_curl(&app, &admin, &dir, &backup_url(&server, NODE, false), &[]);
    assert_eq!(out.code, 0, "{}", reply.dump());

    let auditor = Curl::with_netrc(&server, &app.dir().join("auditor"), "auditor", AUDITOR_PW);
    let r = auditor.get(&[&server.url("/metrics")]);
    r.expect_status(200);
    let text = r.text();
    for line in [
        "# TYPE backup_last_success_timestamp_seconds gauge",
        &format!("backup_lock_held{{node=\"{NODE}\"}} 0"),
        &format!("backup_runs_total{{node=\"{NODE}\",outcome=\"success\"}} 1"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in\n{text}"
        );
    }
    let audit = app.http_audit();
    assert!(
        !http_records(&audit, "http:auditor@127.0.0.1", "GET /metrics", "done").is_empty(),
        "{}",
        show(&audit)
    );
    server.assert_serving();

    let public = Appliance::new("[http]\nmetrics_public = true\n");
    let public_server = public.serve();
    let anonymous = Curl::anonymous(&public_server, &public.dir().join("anon"));
    let r = anonymous.get(&[&public_server.url("/metrics")]);
    r.expect_status(200);
    assert!(
        r.text().contains("# TYPE backup_lock_held gauge"),
        "{}",
        r.text()
    );
    anonymous
        .get(&[&public_server.url("/status")])
        .expect_status(401);
}

#[test]
fn a_user_with_a_registered_client_certificate_must_present_it() {
    use sha2::Digest;
    let app = Appliance::new("");
    let certs = app.fresh_dir("certs");
    let mut fingerprints = Vec::new();
    for name in ["carol", "mallory"] {
        let key = rcgen::generate_simple_self_signed(vec![format!("{name}.example")])
            .expect("a client certificate");
        fs::write(certs.join(format!("{name}.pem")), key.cert.pem()).unwrap();
        let key_path = certs.join(format!("{name}.key"));
        fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
        fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        fingerprints.push(hex::encode(sha2::Sha256::digest(key.cert.der())));
    }
    let carol_pw = "carol-needs-her-certificate";
    app.add_user_with(
        "carol",
        "admin",
        carol_pw,
        &[
            "--client-cert-sha256",
            &format!("sha256:{}", fingerprints[0]),
        ],
    );
    app.add_user("admin", "admin", ADMIN_PW);
    let mut server = app.serve();
    let carol = Curl::with_netrc(&server, &app.dir().join("carol"), "carol", carol_pw);
    let url = server.url("/status");
    let pem = |name: &str, ext: &str| certs.join(format!("{name}.{ext}")).display().to_string();
    let (carol_cert, carol_key) = (pem("carol", "pem"), pem("carol", "key"));
    let (mallory_cert, mallory_key) = (pem("mallory", "pem"), pem("mallory", "key"));

    carol.get(&[&url]).expect_status(403);
    carol
        .get(&["--cert", &mallory_cert, "--key", &mallory_key, &url])
        .expect_status(403);
    carol
        .get(&["--cert", &carol_cert, "--key", &carol_key, &url])
        .expect_status(200);
    // The others are asked for none and need none.
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    admin.get(&[&url]).expect_status(200);

    let audit = app.http_audit();
    assert!(
        http_records(&audit, "http:carol@127.0.0.1", "GET /status", "refused").len() >= 2,
        "{}",
        show(&audit)
    );
    assert!(
        !http_records(&audit, "http:carol@127.0.0.1", "GET /status", "done").is_empty(),
        "{}",
        show(&audit)
    );
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn sigterm_lets_the_running_backup_finish_then_the_server_exits() {
    let (app, server) = served(&slow_component(3));
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let dir = app.fresh_dir("during-stop");
    let (mut client, _) = start_backup_client(&app, &server, &admin, &dir, &[]);
    crate::util::signal(server.process.pid(), "-TERM");
    let status = client.wait().unwrap();
    assert!(
        status.success(),
        "the running backup was cut by SIGTERM\n{}",
        server.output()
    );
    let file = only_file(&dir);
    app.verify_components(&file);
    let out = server.process.wait(Duration::from_secs(60));
    assert_eq!(out.code, 0, "backup serve after SIGTERM\n{}", out.dump());
}

#[test]
fn a_user_added_while_the_service_runs_can_log_in_at_once() {
    let (app, mut server) = served("");
    let url = server.url("/status");
    let dave_pw = "dave-joined-later-2026";
    let dave = Curl::with_netrc(&server, &app.dir().join("dave"), "dave", dave_pw);
    dave.get(&[&url]).expect_status(401);
    app.add_user("dave", "auditor", dave_pw);
    dave.get(&[&url]).expect_status(200);
    app.backup(&["user", "del", "dave"]).expect(0);
    dave.get(&[&url]).expect_status(401);
    server.assert_serving();
    app.assert_no_secret_leaked(&server);
}

#[test]
fn a_storage_that_fills_up_mid_run_breaks_the_transfer_and_publishes_nothing() {
    let app = Appliance::new("");
    fs::write(app.etc.join("bulk.bin"), pseudo_random(11, 6 << 20)).unwrap();
    // The store on a 16 MiB file system: the preflight sees room for the
    // image; the test takes it away while the image is being written.
    let _store = backup_testkit::Tmpfs::mount(&app.store, "16m");
    app.add_user("admin", "admin", ADMIN_PW);
    let mut server = app.serve();
    let admin = Curl::with_netrc(&server, &app.dir().join("admin"), "admin", ADMIN_PW);
    let dir = app.fresh_dir("full");
    // A slow reader: the stream and the storage's upload advance together.
    let (mut client, headers) =
        start_backup_client(&app, &server, &admin, &dir, &["--limit-rate", "200k"]);
    let filler = app.store.join("filler");
    let fill = run(Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", filler.display()))
        .arg("bs=64k"));
    assert_ne!(
        fill.code,
        0,
        "dd filled the store without an error\n{}",
        fill.dump()
    );

    let status = client.wait().unwrap();
    assert!(
        matches!(status.code(), Some(18 | 56)),
        "curl --fail exits 18 or 56 on a transfer cut short, not {status}\n{}",
        server.output()
    );
    let reply = Reply {
        code: status.code().unwrap_or(-1),
        status: status_of(&headers),
        headers,
        body: Vec::new(),
        stderr: String::new(),
        what: "curl".into(),
    };
    let run_id = reply.header("x-backup-run").expect("X-Backup-Run");
    let failed = app.wait_audit("of the backup whose storage filled up, failed", |r| {
        r["actor"] == "http:admin@127.0.0.1"
            && r["route"] == "GET /ssg/backup"
            && r["outcome"] == "failed"
    });
    assert!(failed["error"].is_string(), "{failed}");
    let r = admin.get(&[&server.url(&format!("/runs/{run_id}"))]);
    r.expect_status(200);
    assert_eq!(r.json()["outcome"], "failed", "{}", r.text());
    assert!(
        app.images().is_empty(),
        "nothing published under a final name: {:?}",
        app.store_files()
    );
    server.assert_serving();

    // With the room back, the next backup is stored and served.
    fs::remove_file(&filler).unwrap();
    let again = app.fresh_dir("again");
    let (out, reply) = cron_curl(&app, &admin, &again, &backup_url(&server, NODE, false), &[]);
    assert_eq!(out.code, 0, "{}\n{}", reply.dump(), server.output());
    assert_eq!(app.images().len(), 1, "{:?}", app.store_files());
    app.assert_no_secret_leaked(&server);
}
