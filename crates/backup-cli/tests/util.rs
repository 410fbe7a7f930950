//! Shared helpers of the end-to-end tests of the `backup` binary: running it
//! with a clean environment ([`run`], [`Out`]), two small appliances
//! ([`Fixture`]: files + SQLite components, a configuration built from a
//! [`Spec`]; [`Ops`]: one files component, a configuration written per test,
//! background runs), and tree comparison helpers.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use backup_testkit::demo::tree_diff;
use serde_json::Value;
use sha2::Digest;
use tempfile::TempDir;

/// The domain master secret every fixture is initialised with (unless a test
/// picks its own).
pub const SECRET: &str = "e2e test domain secret (not for production)";
/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_backup");

/// What one run of the binary gave.
#[derive(Debug, Clone)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Out {
    /// Standard output (a copy).
    pub fn stdout(&self) -> String {
        self.stdout.clone()
    }

    /// Standard error (a copy).
    pub fn stderr(&self) -> String {
        self.stderr.clone()
    }

    /// Panics, with everything the run printed, unless it exited with `code`.
    pub fn expect(&self, code: i32) -> &Out {
        assert_eq!(
            self.code,
            code,
            "`{}` exited with {} (wanted {code})\n{}",
            self.what,
            self.code,
            self.dump()
        );
        self
    }

    /// Panics unless it exited with a code other than 0.
    pub fn expect_failure(&self) -> &Out {
        assert_ne!(
            self.code,
            0,
            "`{}` unexpectedly succeeded\n{}",
            self.what,
            self.dump()
        );
        self
    }

    /// Everything printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout, self.stderr
        )
    }

    /// Standard output parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` printed no valid JSON on stdout: {e}\n{}",
                self.what,
                self.dump()
            )
        })
    }

    /// Panics unless stdout or stderr contains `needle` (case-insensitive).
    pub fn mentions(&self, needle: &str) -> &Out {
        let all = format!("{}\n{}", self.stdout, self.stderr).to_lowercase();
        assert!(
            all.contains(&needle.to_lowercase()),
            "`{}` does not mention {needle:?}\n{}",
            self.what,
            self.dump()
        );
        self
    }

    /// Panics unless stdout or stderr contains at least one of `needles`.
    pub fn mentions_any(&self, needles: &[&str]) -> &Out {
        let all = format!("{}\n{}", self.stdout, self.stderr).to_lowercase();
        assert!(
            needles.iter().any(|n| all.contains(&n.to_lowercase())),
            "`{}` mentions none of {needles:?}\n{}",
            self.what,
            self.dump()
        );
        self
    }
}

/// The binary with a clean environment: no secret, config or log filter
/// inherited from the developer's shell, and no standard input (never a tty).
pub fn bare_cmd() -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("BACKUP_SECRET")
        .env_remove("BACKUP_SECRET_FILE")
        .env_remove("BACKUP_CONFIG")
        .env_remove("BACKUP_LOG")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion.
pub fn run(cmd: &mut Command) -> Out {
    let what = format!(
        "{} {}",
        Path::new(cmd.get_program())
            .file_name()
            .unwrap_or_default()
            .to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what,
    }
}

/// The parts of a `backup.toml` the tests vary.
#[derive(Debug, Clone)]
pub struct Spec {
    pub product: String,
    pub version: String,
    pub node: String,
    pub state_dir: PathBuf,
    pub store: PathBuf,
    pub prefix: String,
    pub compression: String,
    pub level: u32,
    /// Raw TOML of each `[[component]]` table (without the header line).
    pub components: Vec<String>,
}

impl Spec {
    pub fn render(&self) -> String {
        let mut s = format!(
            "[appliance]\nproduct = \"{}\"\nversion = \"{}\"\nnode = \"{}\"\nrole = \"standalone\"\nstate_dir = \"{}\"\n\n\
             [storage]\nurl = \"file://{}\"\nprefix = \"{}\"\n\n\
             [image]\ncompression = \"{}\"\nlevel = {}\n\n\
             [encryption]\nkdf_memory_mib = 19\nkdf_iterations = 2\nkdf_parallelism = 1\n",
            self.product,
            self.version,
            self.node,
            self.state_dir.display(),
            self.store.display(),
            self.prefix,
            self.compression,
            self.level
        );
        for c in &self.components {
            s.push_str("\n[[component]]\n");
            s.push_str(c);
            if !c.ends_with('\n') {
                s.push('\n');
            }
        }
        s
    }
}

/// `[[component]]` body of a files component.
pub fn files_component(name: &str, paths: &[&Path], extra: &str) -> String {
    let list = paths
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("name = \"{name}\"\nkind = \"files\"\npaths = [{list}]\n{extra}")
}

/// `[[component]]` body of a SQLite component.
pub fn sqlite_component(name: &str, path: &Path) -> String {
    format!(
        "name = \"{name}\"\nkind = \"sqlite\"\npath = \"{}\"\n",
        path.display()
    )
}

/// `[[component]]` body of a command component.
pub fn command_component(name: &str, backup: &[&str], extra: &str) -> String {
    let argv = backup
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("name = \"{name}\"\nkind = \"command\"\nbackup = [{argv}]\n{extra}")
}

/// A small appliance in its own temporary directory:
///
/// ```text
/// <dir>/appliance/etc/app/...                      component "config" (files)
/// <dir>/appliance/var/lib/app/internal.sqlite      component "maindb" (sqlite)
/// <dir>/state                                      keyring + master.key (after init)
/// <dir>/store                                      file:// storage
/// <dir>/backup.toml
/// ```
pub struct Fixture {
    tmp: TempDir,
    pub dir: PathBuf,
    pub root: PathBuf,
    pub etc: PathBuf,
    pub db: PathBuf,
    pub state: PathBuf,
    pub store: PathBuf,
    pub config: PathBuf,
    pub spec: Spec,
}

impl Fixture {
    /// The default fixture: config + maindb, initialised.
    pub fn new() -> Fixture {
        Fixture::custom(|_| {})
    }

    /// A fixture whose spec (and files) `adjust` may change before the config
    /// is written and `init` runs.
    pub fn custom(adjust: impl FnOnce(&mut Fixture)) -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("bkp-e2e-")
            .tempdir()
            .expect("tempdir");
        let dir = tmp.path().canonicalize().expect("canonical tempdir");
        let root = dir.join("appliance");
        let etc = root.join("etc/app");
        let db = root.join("var/lib/app/internal.sqlite");
        let state = dir.join("state");
        let store = dir.join("store");
        fs::create_dir_all(&store).unwrap();
        populate_config_tree(&etc);
        make_database(&db, 50);
        let spec = Spec {
            product: "e2e-gateway".into(),
            version: "1.0.0".into(),
            node: "gw-e2e".into(),
            state_dir: state.clone(),
            store: store.clone(),
            prefix: "e2e-".into(),
            compression: "gzip".into(),
            level: 6,
            components: vec![
                files_component("config", &[&etc], ""),
                sqlite_component("maindb", &db),
            ],
        };
        let config = dir.join("backup.toml");
        let mut fx = Fixture {
            tmp,
            dir,
            root,
            etc,
            db,
            state,
            store,
            config,
            spec,
        };
        adjust(&mut fx);
        fx.write_config(&fx.config, &fx.spec);
        fx.backup(&["init"]).expect(0);
        fx
    }

    /// Writes `spec` as a config file at `path`.
    pub fn write_config(&self, path: &Path, spec: &Spec) {
        fs::write(path, spec.render()).unwrap();
    }

    /// A config file next to the fixture's, with `change` applied to its spec.
    pub fn config_variant(&self, file: &str, change: impl FnOnce(&mut Spec)) -> PathBuf {
        let mut spec = self.spec.clone();
        change(&mut spec);
        let path = self.dir.join(file);
        self.write_config(&path, &spec);
        path
    }

    /// The binary with this fixture's config and the right secret in the environment.
    pub fn cmd(&self) -> Command {
        self.cmd_with(&self.config)
    }

    /// The binary with another config and the right secret in the environment.
    pub fn cmd_with(&self, config: &Path) -> Command {
        let mut c = bare_cmd();
        c.arg("--config")
            .arg(config)
            .env("BACKUP_SECRET", SECRET)
            .current_dir(&self.dir);
        c
    }

    /// Runs `backup --config <fixture> ARGS...`.
    pub fn backup(&self, args: &[&str]) -> Out {
        run(self.cmd().args(args))
    }

    /// Runs `backup --config <fixture> --json create ARGS...`, expecting
    /// `code`; gives the image name and the JSON report.
    pub fn create_expect(&self, args: &[&str], code: i32) -> (String, serde_json::Value) {
        let out = run(self.cmd().arg("--json").arg("create").args(args));
        out.expect(code);
        let json = out.json();
        let name = json["image"]
            .as_str()
            .unwrap_or_else(|| panic!("no image in {json}"))
            .to_string();
        (name, json)
    }

    /// A successful `create`: the image name and the JSON report.
    pub fn create(&self, args: &[&str]) -> (String, serde_json::Value) {
        self.create_expect(args, 0)
    }

    /// Path of a stored image.
    pub fn image_path(&self, name: &str) -> PathBuf {
        self.store.join(name)
    }

    /// A fresh directory inside the fixture's temporary directory.
    pub fn fresh_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.join(name);
        assert!(!p.exists(), "{} already exists", p.display());
        p
    }

    /// The temporary directory itself (kept alive by the fixture).
    pub fn tmp(&self) -> &Path {
        self.tmp.path()
    }
}

/// Where restore `--target T` puts absolute path `abs`.
pub fn under(target: &Path, abs: &Path) -> PathBuf {
    target.join(abs.strip_prefix("/").unwrap_or(abs))
}

/// A small configuration tree: files, a subdirectory, a symlink, an empty
/// directory, and a 300 KiB incompressible blob (so images span many
/// 16 KiB encryption chunks).
pub fn populate_config_tree(etc: &Path) {
    fs::create_dir_all(etc.join("policies")).unwrap();
    fs::create_dir_all(etc.join("empty.d")).unwrap();
    fs::write(etc.join("gateway.conf"), "hostname = gw-e2e\nport = 8443\n").unwrap();
    fs::write(etc.join("interfaces.conf"), "eth0 = 192.0.2.10/24\n").unwrap();
    for i in 0..5 {
        fs::write(
            etc.join(format!("policies/policy-{i}.rules")),
            format!("allow {i}\n"),
        )
        .unwrap();
    }
    fs::write(etc.join("blob.bin"), pseudo_random(7, 300 * 1024)).unwrap();
    std::os::unix::fs::symlink("gateway.conf", etc.join("active.conf")).unwrap();
    fs::set_permissions(etc.join("gateway.conf"), fs::Permissions::from_mode(0o640)).unwrap();
}

/// A SQLite database with `rows` rows in table `objects`.
pub fn make_database(path: &Path, rows: usize) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let db = rusqlite::Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE objects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value BLOB);",
    )
    .unwrap();
    for i in 0..rows {
        db.execute(
            "INSERT INTO objects (name, value) VALUES (?1, ?2)",
            (format!("object-{i}"), vec![i as u8; 64]),
        )
        .unwrap();
    }
}

/// Deterministic incompressible bytes (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    fill_pseudo_random(
        &mut Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
        &mut out,
    );
    out
}

/// A xorshift64* generator.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

pub fn fill_pseudo_random(rng: &mut Rng, buf: &mut [u8]) {
    for chunk in buf.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

/// Writes `len` bytes of incompressible data to `path` without holding them in memory.
pub fn write_random_file(path: &Path, len: u64, seed: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        fill_pseudo_random(&mut rng, &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// Hex SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// Panics with every difference unless the trees are equal (content, type,
/// mode, mtime in seconds, symlink targets); `skip` names file names left out.
pub fn assert_same_tree(expected: &Path, actual: &Path, skip: &[&str]) {
    assert!(actual.exists(), "{} does not exist", actual.display());
    let diffs = tree_diff(expected, actual, skip).unwrap();
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n  {}",
        actual.display(),
        expected.display(),
        diffs.join("\n  ")
    );
}

/// Copies a tree with GNU `cp -a` (modes, times, links, hard links kept).
pub fn copy_tree(from: &Path, to: &Path) {
    let out = run(Command::new("cp").arg("-a").arg(from).arg(to));
    out.expect(0);
}

/// Every path under `dir` (recursively, not following symlinks), relative to it.
/// Empty if `dir` does not exist.
pub fn all_paths(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            out.insert(p.strip_prefix(base).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

/// Paths under `dir` that are not directories (files, symlinks, devices…).
pub fn non_dirs(dir: &Path) -> BTreeSet<PathBuf> {
    all_paths(dir)
        .into_iter()
        .filter(|p| {
            !fs::symlink_metadata(dir.join(p))
                .map(|m| m.is_dir())
                .unwrap_or(false)
        })
        .collect()
}

/// Names in `dir` (not recursive) that look like restore/upload leftovers.
pub fn leftovers(dir: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            [".staging-", ".restore-", ".old-", ".partial-", ".tmp-"]
                .iter()
                .any(|m| n.contains(m))
        })
        .collect()
}

/// Sleeps until the wall clock enters a new second (image names have
/// one-second resolution).
pub fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(
        Duration::from_nanos(1_000_000_000 - u64::from(now.subsec_nanos()))
            + Duration::from_millis(20),
    );
}

/// Sets a file's or directory's mtime (and atime) to `secs` since the epoch.
pub fn set_mtime(path: &Path, secs: u64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs);
    let f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap();
}

/// Size of the sparse large file of the big tree: just over 2 GiB.
pub const BIG_LEN: u64 = (2 << 30) + 12345;
/// Offsets of the non-zero bytes written into the sparse large file.
pub const BIG_MARKS: [u64; 6] = [
    0,
    4096 * 7 + 3,
    1 << 30,
    (1 << 31) - 1,
    1 << 31,
    BIG_LEN - 1,
];

/// A directory tree with the awkward cases: nested and empty directories,
/// relative, absolute and dangling symlinks, names with spaces and non-ASCII,
/// modes 0640/0755/0700, a hard link, fixed old mtimes — and, if `big`, a
/// sparse file of just over 2 GiB with non-zero bytes scattered through it.
pub fn build_rich_tree(root: &Path, big: bool) {
    let w = |rel: &str, data: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
    };
    fs::create_dir_all(root).unwrap();
    w("plain.txt", b"plain text\n");
    w("name with spaces.txt", b"spaces in the name\n");
    w(
        "\u{e9} \u{fc} \u{65e5}\u{672c}.conf",
        "zone = \"Z\u{fc}rich\"\n".as_bytes(),
    );
    w("dir with spaces/inner file.conf", b"inner\n");
    w(
        "\u{65e5}\u{672c}\u{8a9e}/\u{30d5}\u{30a1}\u{30a4}\u{30eb}.txt",
        "non-ASCII directory\n".as_bytes(),
    );
    w(
        "secret.key",
        b"-----BEGIN KEY-----\nnot really\n-----END KEY-----\n",
    );
    w("run.sh", b"#!/bin/sh\necho hello\n");
    w("nested/a/b/c/deep.conf", b"deep\n");
    w("private/x.conf", b"private\n");
    w("hard/original.dat", b"shared by two names\n");
    w("zero-length", b"");
    w("blob.bin", &pseudo_random(11, 200 * 1024));
    fs::create_dir_all(root.join("empty")).unwrap();
    fs::create_dir_all(root.join("nested/a/empty-too")).unwrap();
    fs::hard_link(
        root.join("hard/original.dat"),
        root.join("hard/second name.dat"),
    )
    .unwrap();
    fs::create_dir_all(root.join("links")).unwrap();
    std::os::unix::fs::symlink("../plain.txt", root.join("links/relative")).unwrap();
    std::os::unix::fs::symlink(root.join("plain.txt"), root.join("links/absolute")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", root.join("links/absolute-outside")).unwrap();
    std::os::unix::fs::symlink("../does/not/exist", root.join("links/dangling")).unwrap();
    std::os::unix::fs::symlink("../nested", root.join("links/to-dir")).unwrap();
    if big {
        let p = root.join("big sparse.img");
        let f = fs::File::create(&p).unwrap();
        f.set_len(BIG_LEN).unwrap();
        for (i, off) in BIG_MARKS.iter().enumerate() {
            f.write_at(&[0xA5 ^ i as u8], *off).unwrap();
        }
        f.write_at(
            b"a marker string in the middle of the zeros",
            (3 << 29) + 77,
        )
        .unwrap();
        f.sync_all().unwrap();
    }
    fs::set_permissions(root.join("secret.key"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    // Old, distinct mtimes; files first, then directories deepest first (a
    // directory's mtime changes when entries are created in it).
    let mut paths: Vec<PathBuf> = all_paths(root).into_iter().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, rel) in paths.iter().enumerate() {
        let p = root.join(rel);
        let md = fs::symlink_metadata(&p).unwrap();
        if md.file_type().is_file() {
            set_mtime(&p, 1_100_000_000 + i as u64 * 3_600);
        }
    }
    for (i, rel) in paths.iter().enumerate() {
        let p = root.join(rel);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            set_mtime(&p, 1_200_000_000 + i as u64 * 60);
        }
    }
}

/// Checks what `tree_diff` does not: hard links are still shared.
pub fn assert_hard_link_kept(restored_root: &Path) {
    use std::os::unix::fs::MetadataExt;
    let a = fs::metadata(restored_root.join("hard/original.dat")).unwrap();
    let b = fs::metadata(restored_root.join("hard/second name.dat")).unwrap();
    assert_eq!(
        (a.dev(), a.ino()),
        (b.dev(), b.ino()),
        "the hard link was not restored as a hard link"
    );
    assert_eq!(a.nlink(), 2);
}

/// Panics unless GNU tar is on the PATH.
pub fn require_gnu_tar() {
    let out = Command::new("tar").arg("--version").output().unwrap_or_else(|e| {
        panic!("GNU tar is required by this test but `tar` cannot be run: {e} (install the Debian package `tar`)")
    });
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.contains("GNU tar"), "`tar --version` is not GNU tar: {v}");
}

// The operations tests' appliance (`ops_*` modules).

/// Image name prefix of the fixture's store.
pub const PREFIX: &str = "ops-";

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
            stdout: String::from_utf8_lossy(&fs::read(&self.stdout_path).unwrap_or_default())
                .into_owned(),
            stderr: String::from_utf8_lossy(&fs::read(&self.stderr_path).unwrap_or_default())
                .into_owned(),
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
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
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
        names_in(&self.store)
    }

    /// Published images (final `.bkp` names), sorted (oldest first).
    pub fn images(&self) -> Vec<String> {
        published_images(&self.store)
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
/// Names of the files in `dir` (sorted), hidden ones included.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Published images in a store directory (final `.bkp` names), sorted.
pub fn published_images(dir: &Path) -> Vec<String> {
    names_in(dir)
        .into_iter()
        .filter(|n| !n.starts_with('.') && n.ends_with(".bkp"))
        .collect()
}

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
