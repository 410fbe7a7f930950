//! `backup serve` as an operator meets it: the real binary on 127.0.0.1,
//! driven with the real `curl` and `openssl`: the certificate it makes (or
//! the one configured), its fingerprint, bounded request heads, SIGTERM,
//! and the start-up errors.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::{run, signal, Ops, Out, Running};
use sha2::Digest;

/// How long a start or a stop may take before the test calls it hung.
const PATIENCE: Duration = Duration::from_secs(60);

/// A running `backup serve` and what it announced.
struct Server {
    running: Running,
    port: u16,
    fingerprint: String,
}

impl Server {
    /// Starts `backup [--json] serve --listen 127.0.0.1:0` and waits for it to
    /// announce its address; panics loudly (with its output) if it does not.
    fn start(ops: &Ops, config: &Path, json: bool) -> Server {
        Server::start_with(ops, config, json, &[])
    }

    /// [`Server::start`] with more environment variables.
    fn start_with(ops: &Ops, config: &Path, json: bool, env: &[(&str, &str)]) -> Server {
        let mut args = vec!["serve", "--listen", "127.0.0.1:0"];
        if json {
            args.insert(0, "--json");
        }
        let mut running = spawn(ops, config, &args, env);
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if let Some(code) = running.try_code() {
                panic!(
                    "backup serve exited with {code} before listening\n--- stderr ---\n{}",
                    running.stderr_so_far()
                );
            }
            let announced = if json {
                std::fs::read_to_string(&running.stdout_path)
                    .ok()
                    .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                    .map(|v| {
                        (
                            v["address"].as_str().unwrap_or_default().to_string(),
                            v["fingerprint"].as_str().unwrap_or_default().to_string(),
                        )
                    })
            } else {
                let err = running.stderr_so_far();
                let line = |prefix: &str| {
                    err.lines()
                        .find_map(|l| l.strip_prefix(prefix))
                        .map(str::to_string)
                };
                line("listening on https://").zip(line("fingerprint: "))
            };
            if let Some((address, fingerprint)) = announced {
                let address = address.trim_end_matches('/');
                let port = address
                    .strip_prefix("127.0.0.1:")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| panic!("not 127.0.0.1:PORT: {address:?}"));
                return Server {
                    running,
                    port,
                    fingerprint,
                };
            }
            assert!(
                std::time::Instant::now() < deadline,
                "backup serve did not announce its address within {PATIENCE:?}\n--- stderr ---\n{}",
                running.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `curl --cacert CA ARGS https://HOST:PORT/PATH`, credentials-free.
    fn curl(&self, ca: &Path, host: &str, path: &str, args: &[&str]) -> Out {
        run(Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "30", "--cacert"])
            .arg(ca)
            .args(args)
            .arg(format!("https://{host}:{}{path}", self.port))
            .stdin(Stdio::null()))
    }

    /// SIGTERM, then its exit.
    fn stop(self) -> Out {
        signal(self.running.pid(), "-TERM");
        self.running.wait(PATIENCE)
    }
}

/// `backup ARGS` in the background as [`Ops::spawn_with`] starts it, with
/// `env` added.
fn spawn(ops: &Ops, config: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
    let n = ops.dir().read_dir().unwrap().count();
    let stdout_path = ops.dir().join(format!("serve-{n}.out"));
    let stderr_path = ops.dir().join(format!("serve-{n}.err"));
    let mut cmd = ops.cmd_with(config, None, args);
    cmd.envs(env.iter().copied())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let what = format!("backup {}", args.join(" "));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    Running {
        child: Some(child),
        what,
        stdout_path,
        stderr_path,
    }
}

/// `sha256:` + hex of the DER of the first certificate in a PEM file, as
/// `openssl x509 -outform DER | sha256sum` computes it.
fn openssl_fingerprint(pem: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pem)
        .stdin(Stdio::null())
        .output()
        .expect("running openssl");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "openssl x509 could not read {}: {}",
        pem.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(&out.stdout)))
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn initialised(extra: &str) -> Ops {
    let ops = Ops::new(extra);
    ops.init();
    ops
}

#[test]
fn the_first_start_makes_a_certificate_curl_trusts_for_the_address_and_localhost() {
    let ops = initialised("");
    let cert = ops.state.join("http/cert.pem");
    let key = ops.state.join("http/key.pem");
    let server = Server::start(&ops, &ops.config, false);
    assert!(
        server
            .running
            .stderr_so_far()
            .contains(&format!("certificate: {}", cert.display())),
        "{}",
        server.running.stderr_so_far()
    );
    // The SANs: both the address and the name work against --cacert.
    for host in ["127.0.0.1", "localhost"] {
        let out = server.curl(&cert, host, "/healthz", &["--fail"]);
        out.expect(0);
        assert_eq!(out.stdout.trim(), "ok", "{}", out.dump());
    }
    assert_eq!(server.fingerprint, openssl_fingerprint(&cert));
    assert_eq!(mode(&key), 0o600, "key.pem");
    assert_eq!(mode(&ops.state.join("http")), 0o700, "the http directory");
    let key_pem = std::fs::read_to_string(&key).unwrap();
    assert!(key_pem.contains("-----BEGIN PRIVATE KEY-----"), "{key_pem}");
    // ECDSA P-256, self-signed, the host name and the loopback addresses named.
    let text = run(Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&cert))
    .expect(0)
    .stdout();
    for needle in [
        "ecdsa-with-SHA256",
        "prime256v1",
        "DNS:localhost",
        "IP Address:127.0.0.1",
        "IP Address:0:0:0:0:0:0:0:1",
    ] {
        assert!(text.contains(needle), "no {needle} in\n{text}");
    }
    let stopped = server.stop();
    stopped.expect(0);

    // A second start takes the same certificate and says nothing of making one.
    let before = std::fs::read(&cert).unwrap();
    let again = Server::start(&ops, &ops.config, false);
    assert_eq!(again.fingerprint, openssl_fingerprint(&cert));
    assert_eq!(std::fs::read(&cert).unwrap(), before);
    assert!(
        !again.running.stderr_so_far().contains("made a self-signed"),
        "{}",
        again.running.stderr_so_far()
    );
    again
        .curl(&cert, "localhost", "/healthz", &["--fail"])
        .expect(0);
    again.stop().expect(0);
}

#[test]
fn sighup_reloads_and_keeps_serving_and_sigterm_stops_an_idle_server_with_exit_code_0() {
    let ops = initialised("");
    let cert = ops.state.join("http/cert.pem");
    let server = Server::start(&ops, &ops.config, false);
    signal(server.running.pid(), "-HUP");
    crate::util::wait_for(PATIENCE, "the SIGHUP notice", || {
        server
            .running
            .stderr_so_far()
            .contains("SIGHUP: reloading")
            .then_some(())
    });
    server
        .curl(&cert, "localhost", "/healthz", &["--fail"])
        .expect(0);
    let out = server.stop();
    out.expect(0);
    out.mentions("SIGTERM").mentions("backup serve stopped");
}

/// A certificate for `localhost` made with rcgen, as an operator's own CA
/// would issue: PEM files in `dir`.
fn operators_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = dir.join("operator-cert.pem");
    let key_path = dir.join("operator-key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn a_configured_certificate_and_key_are_served_and_none_is_made() {
    let ops = initialised("");
    let (cert, key) = operators_certificate(ops.dir());
    let config = ops.variant(
        "own-cert.toml",
        &format!("[http]\ntls_cert = {cert:?}\ntls_key = {key:?}\n"),
    );
    let server = Server::start(&ops, &config, true);
    let announced: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&server.running.stdout_path).unwrap())
            .unwrap();
    assert_eq!(announced["certificate"], cert.display().to_string());
    assert_eq!(announced["generated"], false);
    assert_eq!(
        announced["listening"],
        format!("https://127.0.0.1:{}/", server.port)
    );
    assert_eq!(server.fingerprint, openssl_fingerprint(&cert));
    let out = server.curl(&cert, "localhost", "/healthz", &["--fail"]);
    out.expect(0);
    assert_eq!(out.stdout.trim(), "ok");
    assert!(
        !ops.state.join("http").exists(),
        "a certificate was made although one is configured"
    );
    server.stop().expect(0);
}

#[test]
fn only_one_of_tls_cert_and_tls_key_is_a_configuration_error() {
    let ops = initialised("");
    let (cert, _) = operators_certificate(ops.dir());
    let config = ops.variant("half.toml", &format!("[http]\ntls_cert = {cert:?}\n"));
    let out = ops.run_with(&config, None, &["serve", "--listen", "127.0.0.1:0"]);
    out.expect(2).mentions("tls_key");
    assert!(!ops.state.join("http").exists());
}

#[test]
fn a_bad_listen_address_is_a_usage_error_and_a_taken_port_a_clear_failure() {
    let ops = initialised("");
    let out = ops.run(&["serve", "--listen", "localhost:eighty"]);
    out.expect(2)
        .mentions("--listen")
        .mentions("127.0.0.1:8443");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = ops.run(&["serve", "--listen", &address]);
    out.expect(1)
        .mentions(&format!("cannot listen on {address}"));
}

#[test]
fn an_oversized_request_head_gets_431_and_the_server_keeps_serving() {
    let ops = initialised("");
    let cert = ops.state.join("http/cert.pem");
    let server = Server::start(&ops, &ops.config, false);
    // curl reads `-H @FILE` header lines from the file (no huge argv).
    let headers = ops.dir().join("big-headers.txt");
    std::fs::write(&headers, format!("X-Padding: {}\n", "a".repeat(70 * 1024))).unwrap();
    let out = server.curl(
        &cert,
        "127.0.0.1",
        "/healthz",
        &[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            &format!("@{}", headers.display()),
        ],
    );
    out.expect(0);
    assert_eq!(out.stdout.trim(), "431", "{}", out.dump());
    // Within the bound, and afterwards: served.
    std::fs::write(&headers, format!("X-Padding: {}\n", "a".repeat(16 * 1024))).unwrap();
    let out = server.curl(
        &cert,
        "127.0.0.1",
        "/healthz",
        &["--fail", "-H", &format!("@{}", headers.display())],
    );
    out.expect(0);
    server
        .curl(&cert, "127.0.0.1", "/healthz", &["--fail"])
        .expect(0);
    server.stop().expect(0);
}

#[test]
fn a_client_that_fails_its_handshake_does_not_stop_the_server() {
    let ops = initialised("");
    let cert = ops.state.join("http/cert.pem");
    let server = Server::start(&ops, &ops.config, false);
    // Plain HTTP to the HTTPS port, and a client that trusts another CA.
    let plain = run(Command::new("curl")
        .args(["--silent", "--max-time", "30"])
        .arg(format!("http://127.0.0.1:{}/healthz", server.port))
        .stdin(Stdio::null()));
    plain.expect_failure();
    let (other, _) = operators_certificate(ops.dir());
    server
        .curl(&other, "localhost", "/healthz", &["--fail"])
        .expect_failure();
    server
        .curl(&cert, "localhost", "/healthz", &["--fail"])
        .expect(0);
    server.stop().expect(0);
}

/// `backup serve` with debug logging of its own (each accepted connection
/// is logged), started as [`Ops::spawn_with`] does.
fn start_logging_connections(ops: &Ops) -> Server {
    Server::start_with(ops, &ops.config, false, &[("BACKUP_LOG", "backup=debug")])
}

/// Opens a TCP connection that never starts its TLS handshake, and waits
/// until the server has accepted it.
fn silent_connection(server: &Server) -> std::net::TcpStream {
    let before = server
        .running
        .stderr_so_far()
        .matches("connection from")
        .count();
    let stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let local = stream.local_addr().unwrap().to_string();
    crate::util::wait_for(PATIENCE, "the server to accept the connection", || {
        let err = server.running.stderr_so_far();
        (err.matches("connection from").count() > before && err.contains(&local)).then_some(())
    });
    stream
}

#[test]
fn sigterm_waits_for_an_open_connection_and_a_second_signal_stops_at_once() {
    let ops = initialised("");

    // The first SIGTERM waits for the open connection; its end ends the server.
    let server = start_logging_connections(&ops);
    let open = silent_connection(&server);
    signal(server.running.pid(), "-TERM");
    crate::util::wait_for(PATIENCE, "the stop notice", || {
        server
            .running
            .stderr_so_far()
            .contains("once the 1 open connection(s) are done")
            .then_some(())
    });
    let mut server = server;
    assert_eq!(
        server.running.try_code(),
        None,
        "exited with a connection open"
    );
    drop(open);
    let out = server.running.wait(PATIENCE);
    out.expect(0).mentions("backup serve stopped");

    // A second signal does not wait: exit 1, saying what was cut off.
    let server = start_logging_connections(&ops);
    let _open = silent_connection(&server);
    signal(server.running.pid(), "-TERM");
    crate::util::wait_for(PATIENCE, "the stop notice", || {
        server
            .running
            .stderr_so_far()
            .contains("once the 1 open connection(s) are done")
            .then_some(())
    });
    signal(server.running.pid(), "-INT");
    let out = server.running.wait(PATIENCE);
    out.expect(1).mentions("second signal");
}

/// The service behind the listener: users from the users file (reloaded on
/// SIGHUP), the client address reaching the audit log, and a client
/// certificate asked for once a user has one registered, with no restart.
#[test]
fn the_service_behind_the_listener_knows_its_users_their_address_and_their_certificate() {
    let ops = initialised("");
    let ca = ops.state.join("http/cert.pem");
    let server = Server::start(&ops, &ops.config, false);
    assert!(
        server.running.stderr_so_far().contains("no users yet"),
        "{}",
        server.running.stderr_so_far()
    );
    let status = |extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        let out = server.curl(&ca, "localhost", "/status", &args);
        out.expect(0);
        out.stdout.trim().to_string()
    };
    assert_eq!(status(&[]), "401");

    // A user added while serving, announced with SIGHUP.
    let password = "listener-test-password-42";
    let add = run(ops
        .cmd_with(
            &ops.config,
            None,
            &["user", "add", "monitor", "--role", "auditor"],
        )
        .env("BACKUP_USER_PASSWORD", password));
    add.expect(0);
    signal(server.running.pid(), "-HUP");
    crate::util::wait_for(PATIENCE, "the users reload", || {
        server
            .running
            .stderr_so_far()
            .contains("users reloaded: 1")
            .then_some(())
    });
    let netrc = ops.dir().join("netrc");
    std::fs::write(
        &netrc,
        format!("machine localhost login monitor password {password}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&netrc, std::fs::Permissions::from_mode(0o600)).unwrap();
    let netrc_arg = netrc.display().to_string();
    assert_eq!(status(&["--netrc-file", &netrc_arg]), "200");
    let audit = ops.audit();
    assert!(
        audit
            .iter()
            .any(|r| r.to_string().contains("http:monitor@127.0.0.1")),
        "no audit line names http:monitor@127.0.0.1: {audit:#?}"
    );

    // Once the user must present a certificate, the handshake asks for it.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["monitor.example".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let cert_path = ops.dir().join("monitor.pem");
    let key_path = ops.dir().join("monitor.key");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let fingerprint = openssl_fingerprint(&cert_path);
    run(&mut ops.cmd_with(
        &ops.config,
        None,
        &["user", "cert", "monitor", &fingerprint],
    ))
    .expect(0);
    signal(server.running.pid(), "-HUP");
    crate::util::wait_for(PATIENCE, "the second users reload", || {
        (server
            .running
            .stderr_so_far()
            .matches("users reloaded: 1")
            .count()
            >= 2)
            .then_some(())
    });
    assert_eq!(status(&["--netrc-file", &netrc_arg]), "403");
    let (cert_arg, key_arg) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
    );
    assert_eq!(
        status(&[
            "--netrc-file",
            &netrc_arg,
            "--cert",
            &cert_arg,
            "--key",
            &key_arg
        ]),
        "200"
    );
    server.stop().expect(0);
}
