//! Helpers of the operations end-to-end tests (`tests/ops_*.rs`): a small
//! appliance with a local store and a state directory, a configuration
//! written per test, and runs of the `backup` binary with an explicit
//! environment.
#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_backup");
/// The secret fixtures are initialised with (unless a test picks its own).
pub const SECRET: &str = "ops e2e secret (test only)";
/// Image name prefix of the fixture's store.
pub const PREFIX: &str = "ops-";

/// What one run of the binary gave.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub what: String,
}

impl Out {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Everything printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "`{}` exited with {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.code,
            self.stdout(),
            self.stderr()
        )
    }

    /// Panics unless it exited with `code`.
    pub fn expect(&self, code: i32) -> &Out {
        assert_eq!(self.code, code, "wanted exit code {code}\n{}", self.dump());
        self
    }

    /// Panics unless it exited with a code other than 0.
    pub fn expect_failure(&self) -> &Out {
        assert_ne!(self.code, 0, "unexpectedly succeeded\n{}", self.dump());
        self
    }

    /// Standard output as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("no JSON on stdout ({e})\n{}", self.dump()))
    }
}

/// A child process killed (by its handle) if the test ends before it does.
pub struct Running {
    pub child: Option<Child>,
    pub what: String,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Whether it has exited (reaps it if so, keeping the status readable via `wait`).
    pub fn try_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        child
            .try_wait()
            .expect("try_wait")
            .map(|s| s.code().unwrap_or(-1))
    }

    /// Waits at most `limit`; panics (after killing it) if it is still running.
    pub fn wait(mut self, limit: Duration) -> Out {
        let deadline = Instant::now() + limit;
        let mut child = self.child.take().expect("running");
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "`{}` still ran after {limit:?}\n--- stderr ---\n{}",
                    self.what,
                    fs::read_to_string(&self.stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Out {
            code: status.code().unwrap_or(-1),
            stdout: fs::read(&self.stdout_path).unwrap_or_default(),
            stderr: fs::read(&self.stderr_path).unwrap_or_default(),
            what: self.what.clone(),
        }
    }

    /// Its standard error so far.
    pub fn stderr_so_far(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends a signal (`-9`, `-TERM`, …) to a process this test started.
pub fn signal(pid: u32, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &pid.to_string()])
        .stdin(Stdio::null())
        .status()
        .expect("running kill");
    assert!(st.success(), "kill {sig} {pid} failed");
}

/// Polls `f` every `every` until it gives `Some`, or panics after `limit`
/// with `what` and the last diagnostics `f` could not satisfy.
pub fn wait_for<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The appliance under test: `etc/` files, a store, a state directory.
pub struct Ops {
    pub tmp: TempDir,
    pub etc: PathBuf,
    pub state: PathBuf,
    pub store: PathBuf,
    pub config: PathBuf,
    counter: std::cell::Cell<u32>,
}

impl Ops {
    /// A fresh appliance whose configuration adds `extra` (TOML tables and
    /// `[[component]]`s) to the base (a `config` files component).
    pub fn new(extra: &str) -> Ops {
        let tmp = tempfile::Builder::new()
            .prefix("backup-ops-")
            .tempdir()
            .expect("tempdir");
        let etc = tmp.path().join("appliance/etc/gw");
        fs::create_dir_all(etc.join("policies")).unwrap();
        fs::write(etc.join("gateway.conf"), "hostname = gw-ops\nport = 8443\n").unwrap();
        for i in 0..5 {
            fs::write(
                etc.join(format!("policies/p{i}.rules")),
                format!("allow tcp 10.{i}.0.0/16 any 443\n"),
            )
            .unwrap();
        }
        let state = tmp.path().join("state");
        let store = tmp.path().join("store");
        fs::create_dir_all(&store).unwrap();
        let config = tmp.path().join("backup.toml");
        let ops = Ops {
            etc,
            state,
            store,
            config,
            tmp,
            counter: std::cell::Cell::new(0),
        };
        ops.write_config(&ops.config, extra);
        ops
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// The configuration text with `extra` added.
    pub fn config_text(&self, extra: &str) -> String {
        format!(
            r#"[appliance]
product = "ops-gateway"
version = "1.0.0"
node = "gw-ops"
state_dir = {state:?}

[storage]
url = "file://{store}"
prefix = "{PREFIX}"

[encryption]
kdf_memory_mib = 19
kdf_iterations = 2
kdf_parallelism = 1

[[component]]
name = "config"
kind = "files"
paths = [{etc:?}]

{extra}
"#,
            state = self.state.display().to_string(),
            store = self.store.display(),
            etc = self.etc.display().to_string(),
        )
    }

    /// Writes a configuration (same appliance, state and store) to `path`.
    pub fn write_config(&self, path: &Path, extra: &str) {
        fs::write(path, self.config_text(extra)).unwrap();
    }

    /// Writes a variant configuration next to the main one and returns its path.
    pub fn variant(&self, name: &str, extra: &str) -> PathBuf {
        let path = self.dir().join(name);
        self.write_config(&path, extra);
        path
    }

    /// A command of the binary with the given config and secret (or none).
    pub fn cmd_with(&self, config: &Path, secret: Option<&str>, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(config).args(args);
        c.env_remove("BACKUP_CONFIG")
            .env_remove("BACKUP_NEW_SECRET")
            .env_remove("BACKUP_LOG")
            .env("NO_COLOR", "1")
            .current_dir(self.dir())
            .stdin(Stdio::null());
        match secret {
            Some(s) => c.env("BACKUP_SECRET", s),
            None => c.env_remove("BACKUP_SECRET"),
        };
        c
    }

    /// Runs the binary to completion.
    pub fn run_cmd(mut cmd: Command, what: String) -> Out {
        let out = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: out.stdout,
            stderr: out.stderr,
            what,
        }
    }

    /// `backup ARGS` with the main config, no secret in the environment.
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_with(&self.config, None, args)
    }

    /// `backup ARGS` with the main config and `BACKUP_SECRET`.
    pub fn run_secret(&self, secret: &str, args: &[&str]) -> Out {
        self.run_with(&self.config, Some(secret), args)
    }

    pub fn run_with(&self, config: &Path, secret: Option<&str>, args: &[&str]) -> Out {
        Self::run_cmd(
            self.cmd_with(config, secret, args),
            format!("backup {}", args.join(" ")),
        )
    }

    /// Starts `backup ARGS` in the background (output to files).
    pub fn spawn_with(&self, config: &Path, secret: Option<&str>, args: &[&str]) -> Running {
        let n = self.counter.get() + 1;
        self.counter.set(n);
        let stdout_path = self.dir().join(format!("bg-{n}.out"));
        let stderr_path = self.dir().join(format!("bg-{n}.err"));
        let mut cmd = self.cmd_with(config, secret, args);
        cmd.stdout(fs::File::create(&stdout_path).unwrap())
            .stderr(fs::File::create(&stderr_path).unwrap());
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

    pub fn spawn(&self, args: &[&str]) -> Running {
        self.spawn_with(&self.config, None, args)
    }

    /// `backup init` with `secret`.
    pub fn init_with(&self, secret: &str) {
        self.run_secret(secret, &["init"]).expect(0);
        assert!(self.state.join("master.key").exists());
    }

    pub fn init(&self) {
        self.init_with(SECRET);
    }

    /// `backup create` (extra args), expecting `code`; returns the image name.
    pub fn create_expect(&self, args: &[&str], code: i32) -> String {
        let mut a = vec!["create", "--json"];
        a.extend_from_slice(args);
        let out = self.run(&a);
        out.expect(code);
        out.json()["image"]
            .as_str()
            .unwrap_or_else(|| panic!("no image in the report\n{}", out.dump()))
            .to_string()
    }

    pub fn create(&self) -> String {
        self.create_expect(&[], 0)
    }

    /// `status --json`.
    pub fn status(&self) -> Value {
        self.run(&["status", "--json"]).expect(0).json()
    }

    /// `audit --json` (all records).
    pub fn audit(&self) -> Vec<Value> {
        self.run(&["audit", "--json"])
            .expect(0)
            .json()
            .as_array()
            .expect("audit records are an array")
            .clone()
    }

    /// Names of the files in the store (sorted), hidden ones included.
    pub fn store_files(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(&self.store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Published images (final `.bkp` names), sorted (oldest first).
    pub fn images(&self) -> Vec<String> {
        self.store_files()
            .into_iter()
            .filter(|n| !n.starts_with('.') && n.ends_with(".bkp"))
            .collect()
    }

    /// Files in the store under a final (not hidden) name.
    pub fn final_files(&self) -> Vec<String> {
        self.store_files()
            .into_iter()
            .filter(|n| !n.starts_with('.'))
            .collect()
    }

    /// The per-backup log files (base names), sorted.
    pub fn logs(&self) -> Vec<String> {
        let dir = self.state.join("logs");
        let mut v: Vec<String> = match fs::read_dir(&dir) {
            Ok(rd) => rd
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        v.sort();
        v
    }
}

/// The UTC creation time written in an image name
/// (`PREFIX` + `YYYYmmddTHHMMSSZ_node_role.bkp`).
pub fn image_time(name: &str) -> chrono::DateTime<chrono::Utc> {
    let stamp = name
        .strip_prefix(PREFIX)
        .and_then(|s| s.split('_').next())
        .unwrap_or_else(|| panic!("not an image name: {name}"));
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .unwrap_or_else(|e| panic!("bad time in {name}: {e}"))
        .and_utc()
}

/// Every regular file under `dir` (recursively), symlinks not followed.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Audit records with this operation and outcome.
pub fn records<'a>(audit: &'a [Value], operation: &str, outcome: &str) -> Vec<&'a Value> {
    audit
        .iter()
        .filter(|r| r["operation"] == operation && r["outcome"] == outcome)
        .collect()
}
