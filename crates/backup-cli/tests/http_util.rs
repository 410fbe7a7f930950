//! Helpers of the HTTP service's end-to-end tests: an appliance with users
//! ([`Appliance`]), `backup serve` on a free port of 127.0.0.1 ([`Server`]),
//! the real `curl` and `wget` driven with credentials in `.netrc` and
//! `.wgetrc` files only ([`Curl`], [`Wget`]), and the audit log's HTTP lines.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::util::{run, Out, Running, BIN, SECRET};

/// Node name of the appliance under test.
pub const NODE: &str = "gw-http";
/// Image name prefix of its store.
pub const HTTP_PREFIX: &str = "http-";
/// The audit outcome of the request's `http` line for a backup that
/// succeeded, as for any request that did what it asked (the engine's own
/// `create` record says `success`).
pub const BACKUP_DONE: &str = "done";
/// How long a server may take to answer `/healthz` after it was started
/// (the first start generates a certificate; debug builds on a busy machine).
const START_LIMIT: Duration = Duration::from_secs(60);

/// Panics, naming the Debian package to install, unless `program` runs.
pub fn require_program(program: &str, package: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        matches!(found, Ok(s) if s.success()),
        "this test runs the real `{program}`, which cannot be run here \
         (install the Debian package `{package}`: apt-get install {package})"
    );
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a free port on 127.0.0.1")
        .port()
}

/// An appliance with a `config` files component and an `audits` component
/// (left out of a backup unless audits are asked for), its own state
/// directory and `file://` store, initialised.
pub struct Appliance {
    pub tmp: TempDir,
    pub etc: PathBuf,
    pub audit_dir: PathBuf,
    pub state: PathBuf,
    pub store: PathBuf,
    pub config: PathBuf,
    /// Passwords and token secrets handed out: none may appear in an
    /// output, the audit log or a command line.
    secrets: std::cell::RefCell<Vec<String>>,
}

impl Appliance {
    /// The appliance, with `extra` (TOML: more `[[component]]`s, `[http]`
    /// settings) added to its configuration.
    pub fn new(extra: &str) -> Appliance {
        let tmp = tempfile::Builder::new()
            .prefix("backup-http-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical tempdir");
        let etc = dir.join("appliance/etc/gw");
        let audit_dir = dir.join("appliance/var/log/gw-audit");
        fs::create_dir_all(etc.join("policies")).unwrap();
        fs::create_dir_all(&audit_dir).unwrap();
        fs::write(etc.join("gateway.conf"), "hostname = gw-http\nport = 443\n").unwrap();
        for i in 0..4 {
            fs::write(
                etc.join(format!("policies/p{i}.rules")),
                format!("allow tcp 10.{i}.0.0/16 any 443\n"),
            )
            .unwrap();
        }
        fs::write(
            audit_dir.join("2026-11.log"),
            "2026-11-02T10:00:00Z admin login from 192.0.2.7\n",
        )
        .unwrap();
        let state = dir.join("state");
        let store = dir.join("store");
        fs::create_dir_all(&store).unwrap();
        let config = dir.join("backup.toml");
        let text = format!(
            r#"[appliance]
product = "http-gateway"
version = "1.0.0"
node = "{NODE}"
role = "standalone"
state_dir = {state:?}

[storage]
url = "file://{store}"
prefix = "{HTTP_PREFIX}"

[encryption]
kdf_memory_mib = 19
kdf_iterations = 2
kdf_parallelism = 1

[[component]]
name = "config"
kind = "files"
paths = [{etc:?}]

[[component]]
name = "audits"
kind = "files"
paths = [{audit:?}]
default = false

{extra}
"#,
            state = state.display().to_string(),
            store = store.display(),
            etc = etc.display().to_string(),
            audit = audit_dir.display().to_string(),
        );
        fs::write(&config, text).unwrap();
        let app = Appliance {
            tmp,
            etc,
            audit_dir,
            state,
            store,
            config,
            secrets: Default::default(),
        };
        let mut init = app.cmd(&["init"]);
        init.env("BACKUP_SECRET", SECRET);
        run(&mut init).expect(0);
        app
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// A fresh directory inside the appliance's temporary directory.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.dir().join(name);
        fs::create_dir(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        p
    }

    /// The binary with this appliance's config and a clean environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config).args(args);
        c.env_remove("BACKUP_SECRET")
            .env_remove("BACKUP_SECRET_FILE")
            .env_remove("BACKUP_CONFIG")
            .env_remove("BACKUP_USER_PASSWORD")
            .env_remove("BACKUP_LOG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .current_dir(self.dir())
            .stdin(Stdio::null());
        c
    }

    /// `backup ARGS` to completion.
    pub fn backup(&self, args: &[&str]) -> Out {
        run(&mut self.cmd(args))
    }

    /// `backup user add NAME --role ROLE`, the password passed in the
    /// environment (never argv).
    pub fn add_user(&self, name: &str, role: &str, password: &str) {
        self.add_user_with(name, role, password, &[]);
    }

    /// [`Appliance::add_user`] with more arguments (`--client-cert-sha256 FP`).
    pub fn add_user_with(&self, name: &str, role: &str, password: &str, extra: &[&str]) {
        self.secrets.borrow_mut().push(password.to_owned());
        let mut c = self.cmd(&["user", "add", name, "--role", role]);
        c.args(extra);
        c.env("BACKUP_USER_PASSWORD", password);
        let out = run(&mut c);
        out.expect(0);
        assert!(!out.what.contains(password), "a password in argv");
    }

    /// `backup token create USER NAME [ARGS]`: the `(login, secret)` pair
    /// its one line `USER!NAME:SECRET` carries.
    pub fn create_token(&self, user: &str, name: &str, args: &[&str]) -> (String, String) {
        let mut a = vec!["token", "create", user, name];
        a.extend_from_slice(args);
        let out = self.backup(&a);
        out.expect(0);
        let line = out.stdout.trim();
        assert_eq!(
            line.lines().count(),
            1,
            "`token create` prints one line\n{}",
            out.dump()
        );
        let (login, secret) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("no USER!NAME:SECRET line\n{}", out.dump()));
        assert_eq!(login, format!("{user}!{name}"));
        assert!(!secret.is_empty());
        self.secrets.borrow_mut().push(secret.to_owned());
        (login.to_owned(), secret.to_owned())
    }

    /// Starts `backup serve --listen 127.0.0.1:PORT` and waits until
    /// `/healthz` answers through `curl --cacert` with the certificate the
    /// server generated; panics with the server's output otherwise.
    pub fn serve(&self) -> Server {
        self.serve_args(&[])
    }

    /// [`Appliance::serve`] with more arguments.
    pub fn serve_args(&self, extra: &[&str]) -> Server {
        require_program("curl", "curl");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let stdout_path = self.dir().join(format!("serve-{port}.out"));
        let stderr_path = self.dir().join(format!("serve-{port}.err"));
        let mut args = vec!["serve", "--listen", listen.as_str()];
        args.extend_from_slice(extra);
        let mut cmd = self.cmd(&args);
        cmd.stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start backup serve: {e}"));
        let mut server = Server {
            process: Running {
                child: Some(child),
                what: format!("backup {}", args.join(" ")),
                stdout_path,
                stderr_path,
            },
            port,
            cert: self.state.join("http/cert.pem"),
            base: format!("https://127.0.0.1:{port}"),
        };
        server.wait_ready();
        server
    }

    /// Every audit record (`backup --json audit`).
    pub fn audit(&self) -> Vec<Value> {
        let out = self.backup(&["--json", "audit"]);
        out.expect(0);
        out.json()
            .as_array()
            .unwrap_or_else(|| panic!("audit records are an array\n{}", out.dump()))
            .clone()
    }

    /// The audit records of HTTP requests (actor `http:…`).
    pub fn http_audit(&self) -> Vec<Value> {
        self.audit()
            .into_iter()
            .filter(|r| r["actor"].as_str().is_some_and(|a| a.starts_with("http:")))
            .collect()
    }

    /// Waits until the audit log has a record matching `want`; gives it.
    pub fn wait_audit(&self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let audit = self.audit();
            if let Some(hit) = audit.iter().find(|r| want(r)) {
                return hit.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no audit record {what} within 30 s; the log has:\n{}",
                show(&audit)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The secrets handed out so far (passwords, token secrets).
    pub fn secrets(&self) -> Vec<String> {
        self.secrets.borrow().clone()
    }

    /// Remembers a secret a test made up (a wrong password).
    pub fn remember_secret(&self, secret: &str) {
        self.secrets.borrow_mut().push(secret.to_owned());
    }

    /// Panics if a handed-out secret appears in `text` (named `where_`).
    pub fn assert_no_secret_in(&self, where_: &str, text: &str) {
        for s in self.secrets.borrow().iter() {
            assert!(
                !text.contains(s.as_str()),
                "a password or token secret appears in {where_}:\n{text}"
            );
        }
    }

    /// Panics if a handed-out secret appears in the audit log file, the
    /// server's output, or any process's command line (`ps`).
    pub fn assert_no_secret_leaked(&self, server: &Server) {
        let log = fs::read_to_string(self.state.join("audit.log")).unwrap_or_default();
        self.assert_no_secret_in("the audit log", &log);
        self.assert_no_secret_in("the server's output", &server.output());
        let ps = run(Command::new("ps").args(["-eo", "args"]));
        ps.expect(0);
        self.assert_no_secret_in("`ps -eo args`", &ps.stdout);
    }

    /// Names of the files in the store (sorted), hidden ones included.
    pub fn store_files(&self) -> Vec<String> {
        crate::util::names_in(&self.store)
    }

    /// Published images in the store (final `.bkp` names), sorted.
    pub fn images(&self) -> Vec<String> {
        crate::util::published_images(&self.store)
    }

    /// `backup verify FILE` succeeds; gives the names of the image's
    /// components (`backup --json show FILE`).
    pub fn verify_components(&self, image: &Path) -> Vec<String> {
        let file = image.to_str().expect("UTF-8 path");
        self.backup(&["verify", file]).expect(0);
        let out = self.backup(&["--json", "show", file]);
        out.expect(0);
        let json = out.json();
        let list = json["info"]["components"]
            .as_array()
            .unwrap_or_else(|| panic!("no info.components in `show --json`\n{}", out.dump()));
        list.iter()
            .map(|c| {
                c["name"]
                    .as_str()
                    .unwrap_or_else(|| panic!("a component without a name: {c}"))
                    .to_owned()
            })
            .collect()
    }

    /// Restores `image` into a fresh `target` (audits too when the image has
    /// them) and checks the files came back; gives whether the audit
    /// component was restored.
    pub fn restore_and_check(&self, image: &Path, target: &str) -> bool {
        let target = self.dir().join(target);
        let file = image.to_str().expect("UTF-8 path");
        let t = target.to_str().expect("UTF-8 path");
        self.backup(&["restore", file, "--target", t, "--include-audits", "--yes"])
            .expect(0);
        let restored = |p: &Path| target.join(p.strip_prefix("/").unwrap_or(p));
        assert_eq!(
            fs::read(restored(&self.etc.join("gateway.conf"))).unwrap(),
            fs::read(self.etc.join("gateway.conf")).unwrap(),
            "the restored config differs"
        );
        let audit_file = restored(&self.audit_dir.join("2026-11.log"));
        if audit_file.exists() {
            assert_eq!(
                fs::read(&audit_file).unwrap(),
                fs::read(self.audit_dir.join("2026-11.log")).unwrap()
            );
            true
        } else {
            false
        }
    }
}

/// `backup serve` running on 127.0.0.1, killed when dropped.
pub struct Server {
    pub process: Running,
    pub port: u16,
    /// The certificate the server generated (`state_dir/http/cert.pem`).
    pub cert: PathBuf,
    base: String,
}

impl Server {
    /// `https://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server printed so far.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            fs::read_to_string(&self.process.stdout_path).unwrap_or_default(),
            fs::read_to_string(&self.process.stderr_path).unwrap_or_default()
        )
    }

    fn wait_ready(&mut self) {
        let deadline = std::time::Instant::now() + START_LIMIT;
        let mut last = String::new();
        loop {
            if let Some(code) = self.process.try_code() {
                panic!(
                    "backup serve exited with {code} before it served\n{}",
                    self.output()
                );
            }
            if self.cert.exists() {
                let out = run(Command::new("curl")
                    .args(["-sS", "--max-time", "5", "--cacert"])
                    .arg(&self.cert)
                    .arg(self.url("/healthz"))
                    .stdin(Stdio::null()));
                if out.code == 0 {
                    return;
                }
                last = out.dump();
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "backup serve did not answer https://127.0.0.1:{}/healthz within {START_LIMIT:?}\n\
                     last curl:\n{last}\nserver:\n{}",
                    self.port,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the server process is still running.
    pub fn alive(&mut self) -> bool {
        self.process.try_code().is_none()
    }

    /// Panics unless the server still answers `/healthz`.
    pub fn assert_serving(&mut self) {
        assert!(self.alive(), "backup serve exited\n{}", self.output());
        let out = run(Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(&self.cert)
            .arg(self.url("/healthz"))
            .stdin(Stdio::null()));
        assert_eq!(
            out.code,
            0,
            "the server no longer serves /healthz\n{}\n{}",
            out.dump(),
            self.output()
        );
    }
}

/// Writes `~/.netrc`-style credentials for 127.0.0.1 (mode 0600) at `path`.
pub fn write_netrc(path: &Path, login: &str, password: &str) {
    fs::write(
        path,
        format!("machine 127.0.0.1\nlogin {login}\npassword {password}\n"),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// Writes a `.wgetrc` with the credentials and the server's certificate
/// into `home` (which a wget run then gets as `HOME`).
pub fn write_wgetrc(home: &Path, user: &str, password: &str, cert: &Path) {
    fs::create_dir_all(home).unwrap();
    let path = home.join(".wgetrc");
    fs::write(
        &path,
        format!(
            "http_user = {user}\nhttp_password = {password}\nca_certificate = {}\n",
            cert.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
}

/// What one `curl` run gave: its exit code, the HTTP status of the last
/// response, its headers and body.
#[derive(Debug)]
pub struct Reply {
    pub code: i32,
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
    pub stderr: String,
    pub what: String,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("`{}` gave no JSON body: {e}\n{}", self.what, self.dump()))
    }

    /// The value of header `name` in the last response (case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        let last = self
            .headers
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or("");
        last.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// Panics (with everything) unless the last response had `status`.
    pub fn expect_status(&self, status: u16) -> &Reply {
        assert_eq!(
            self.status,
            status,
            "`{}`: HTTP {} (wanted {status})\n{}",
            self.what,
            self.status,
            self.dump()
        );
        self
    }

    pub fn dump(&self) -> String {
        format!(
            "curl exit {}\n--- headers ---\n{}--- body ---\n{}\n--- stderr ---\n{}",
            self.code,
            self.headers,
            String::from_utf8_lossy(&self.body[..self.body.len().min(2000)]),
            self.stderr
        )
    }
}

/// The real `curl`, trusting the server's certificate, with credentials
/// from a `.netrc` file or none.
pub struct Curl {
    cert: PathBuf,
    netrc: Option<PathBuf>,
    scratch: PathBuf,
}

impl Curl {
    /// A client without credentials; `scratch` holds its header and body files.
    pub fn anonymous(server: &Server, scratch: &Path) -> Curl {
        require_program("curl", "curl");
        fs::create_dir_all(scratch).unwrap();
        Curl {
            cert: server.cert.clone(),
            netrc: None,
            scratch: scratch.to_path_buf(),
        }
    }

    /// A client with `login`/`password` in its own `.netrc` (0600).
    pub fn with_netrc(server: &Server, scratch: &Path, login: &str, password: &str) -> Curl {
        let mut c = Curl::anonymous(server, scratch);
        let netrc = scratch.join(".netrc");
        write_netrc(&netrc, login, password);
        c.netrc = Some(netrc);
        c
    }

    pub fn netrc(&self) -> Option<&Path> {
        self.netrc.as_deref()
    }

    /// `curl -sS --cacert CERT [--netrc-file F] ARGS`, as a command.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("curl");
        c.arg("-sS").arg("--cacert").arg(&self.cert);
        if let Some(n) = &self.netrc {
            c.arg("--netrc-file").arg(n);
        }
        c.args(args).stdin(Stdio::null());
        c
    }

    /// Runs `curl` with `args`, keeping the headers and body, and gives them.
    pub fn get(&self, args: &[&str]) -> Reply {
        let n = next_id();
        let headers = self.scratch.join(format!("headers-{n}"));
        let body = self.scratch.join(format!("body-{n}"));
        let mut c = self.command(args);
        c.arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code}"]);
        let out = run(&mut c);
        let status = out.stdout.trim().parse().unwrap_or(0);
        Reply {
            code: out.code,
            status,
            headers: fs::read_to_string(&headers).unwrap_or_default(),
            body: fs::read(&body).unwrap_or_default(),
            stderr: out.stderr,
            what: out.what,
        }
    }
}

fn next_id() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The real `wget` with `HOME` pointing at a directory that holds its
/// `.wgetrc` (credentials and the server's certificate), `--tries=1`.
pub struct Wget {
    home: PathBuf,
}

impl Wget {
    pub fn new(server: &Server, home: &Path, user: &str, password: &str) -> Wget {
        require_program("wget", "wget");
        write_wgetrc(home, user, password, &server.cert);
        Wget {
            home: home.to_path_buf(),
        }
    }

    /// `wget --tries=1 --content-disposition ARGS` in `dir`.
    pub fn run_in(&self, dir: &Path, args: &[&str]) -> Out {
        let mut c = Command::new("wget");
        c.args(["--tries=1", "--content-disposition"])
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .env("LC_ALL", "C")
            .current_dir(dir)
            .stdin(Stdio::null());
        run(&mut c)
    }
}

/// Panics unless `args` (a command line about to run) carries none of
/// `secrets`.
pub fn assert_argv_clean(cmd: &Command, secrets: &[String]) {
    let line: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let line = line.join(" ");
    for s in secrets {
        assert!(!line.contains(s.as_str()), "a secret in argv: {line}");
    }
}

/// The command line of a running process, from `/proc/PID/cmdline`.
pub fn cmdline(pid: u32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// The only regular file in `dir` (panics unless there is exactly one).
pub fn only_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(
        files.len(),
        1,
        "wanted one file in {}: {files:?}",
        dir.display()
    );
    files[0].clone()
}

/// Audit records whose actor is `actor` and outcome `outcome`.
pub fn by_actor<'a>(audit: &'a [Value], actor: &str, outcome: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["actor"] == actor && r["outcome"] == outcome)
        .collect()
}

/// The audit log's records as lines, for assertion messages.
pub fn show(audit: &[Value]) -> String {
    audit
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
