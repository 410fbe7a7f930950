//! A demo appliance for `backup quickstart`, examples and tests: a tree of
//! configuration files, a SQLite internal database with real tables and rows,
//! and audit logs — plus helpers to prove a restore equals the original.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use crate::{Config, Error, Result};

/// The demo secret used by `backup quickstart`. It protects nothing: never
/// use it for a real appliance.
pub const DEMO_SECRET: &str = "DEMO-ONLY demo-gateway secret (not for production)";

/// A demo appliance laid out under one directory.
#[derive(Debug, Clone)]
pub struct DemoAppliance {
    /// The directory holding everything.
    pub dir: PathBuf,
    /// Root of the appliance's own files (`etc/`, `var/`).
    pub root: PathBuf,
    /// The configuration file written for it.
    pub config_path: PathBuf,
    /// That configuration, parsed.
    pub config: Config,
}

impl DemoAppliance {
    /// The configuration directory tree.
    pub fn config_dir(&self) -> PathBuf {
        self.root.join("etc/demo-gateway")
    }
    /// The internal database.
    pub fn database(&self) -> PathBuf {
        self.root.join("var/lib/demo-gateway/internal.sqlite")
    }
    /// The audit log directory.
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("var/log/demo-gateway/audit")
    }
    /// The local image store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
}

fn io(what: &str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let what = format!("{what} {}", path.display());
    move |e| Error::io(what, e)
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    std::fs::write(path, text).map_err(io("writing", path))
}

/// Builds a demo appliance in `dir` (which must not exist or be empty), with a
/// configuration storing images in `dir/store` and state in `dir/state`.
/// `kdf_memory_mib` sets the Argon2 cost written into the config.
pub fn build_demo(dir: &Path, kdf_memory_mib: u32) -> Result<DemoAppliance> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(io("reading", dir))?
            .next()
            .is_some()
    {
        return Err(Error::Input(format!(
            "{} is not empty; choose a fresh directory for the demo",
            dir.display()
        )));
    }
    let root = dir.join("appliance");
    let etc = root.join("etc/demo-gateway");
    write(&etc.join("gateway.conf"), "# demo-gateway main configuration\nhostname = gw-1\nmanagement_port = 8443\nha_mode = standalone\n")?;
    write(
        &etc.join("interfaces.conf"),
        "eth0 = 192.0.2.10/24\neth1 = 198.51.100.1/24\n",
    )?;
    for i in 0..25 {
        write(
            &etc.join(format!("policies/policy-{i:03}.rules")),
            &format!("# policy {i}\nallow tcp 10.{i}.0.0/16 -> any port 443\ndeny any any\n"),
        )?;
    }
    write(
        &etc.join("policies/rules with spaces.conf"),
        "# a file name with spaces\n",
    )?;
    write(&etc.join("zonés-ünïcode.conf"), "zone = \"Zürich\"\n")?;
    write(
        &etc.join("certs/server.pem"),
        "-----BEGIN DEMO CERTIFICATE-----\nMIIB...\n-----END DEMO CERTIFICATE-----\n",
    )?;
    std::fs::set_permissions(
        etc.join("certs/server.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .map_err(io("chmod", &etc))?;
    std::fs::create_dir_all(etc.join("empty.d")).map_err(io("creating", &etc))?;
    std::os::unix::fs::symlink("gateway.conf", etc.join("active.conf"))
        .map_err(io("symlink in", &etc))?;
    write(&etc.join("scratch.tmp"), "excluded by the demo config\n")?;

    let db_path = root.join("var/lib/demo-gateway/internal.sqlite");
    std::fs::create_dir_all(db_path.parent().expect("has parent"))
        .map_err(io("creating", &db_path))?;
    let db = Connection::open(&db_path)
        .map_err(|e| Error::Input(format!("creating demo database: {e}")))?;
    db.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE admins (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, role TEXT NOT NULL);
         CREATE TABLE objects (id INTEGER PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, value TEXT);
         CREATE TABLE sessions (id INTEGER PRIMARY KEY, admin_id INTEGER REFERENCES admins(id), started TEXT);
         INSERT INTO admins (name, role) VALUES ('admin', 'superuser'), ('auditor', 'read-only'), ('ops', 'operator');",
    )
    .map_err(|e| Error::Input(format!("creating demo database: {e}")))?;
    for i in 0..500 {
        db.execute(
            "INSERT INTO objects (kind, name, value) VALUES (?1, ?2, ?3)",
            (
                ["host", "network", "service"][i % 3],
                format!("object-{i}"),
                format!("10.{}.{}.0/24", i / 250, i % 250),
            ),
        )
        .map_err(|e| Error::Input(format!("filling demo database: {e}")))?;
    }
    db.execute(
        "INSERT INTO sessions (admin_id, started) VALUES (1, '2026-11-01T08:00:00Z')",
        [],
    )
    .map_err(|e| Error::Input(format!("filling demo database: {e}")))?;
    drop(db);

    let audit = root.join("var/log/demo-gateway/audit");
    for day in 1..=3 {
        let mut lines = String::new();
        for n in 0..200 {
            lines.push_str(&format!(
                "{{\"time\":\"2026-11-{day:02}T{:02}:{:02}:00Z\",\"admin\":\"admin\",\"action\":\"policy.install\",\"seq\":{n}}}\n",
                n / 60 % 24,
                n % 60
            ));
        }
        write(&audit.join(format!("audit-2026-11-{day:02}.jsonl")), &lines)?;
    }

    let config_text = format!(
        r#"# Demo appliance written by `backup quickstart`.
[appliance]
product = "demo-gateway"
version = "9.0.1"
node = "gw-1"
role = "standalone"
state_dir = "{state}"

[storage]
url = "file://{store}"
prefix = "demo-"

[image]
compression = "gzip"
level = 6

[encryption]
kdf_memory_mib = {kdf_memory_mib}

[[component]]
name = "config"
kind = "files"
paths = ["{etc}"]
exclude = ["*.tmp"]

[[component]]
name = "maindb"
kind = "sqlite"
path = "{db}"

[[component]]
name = "audits"
kind = "files"
paths = ["{audit}"]
default = false
requires = ["maindb"]
"#,
        state = dir.join("state").display(),
        store = dir.join("store").display(),
        etc = etc.display(),
        db = db_path.display(),
        audit = audit.display(),
    );
    std::fs::create_dir_all(dir.join("store")).map_err(io("creating", dir))?;
    let config_path = dir.join("backup.toml");
    write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, &config_path)?;
    Ok(DemoAppliance {
        dir: dir.to_path_buf(),
        root,
        config_path,
        config,
    })
}

/// Differences between two trees: missing or extra entries, type, content,
/// mode, mtime (seconds) and symlink targets. Empty when they are equal.
/// `skip` names file names to leave out (e.g. a database compared logically).
pub fn tree_diff(a: &Path, b: &Path, skip: &[&str]) -> Result<Vec<String>> {
    let (ta, tb) = (snapshot_tree(a, skip)?, snapshot_tree(b, skip)?);
    let mut diffs = Vec::new();
    for (path, ea) in &ta {
        match tb.get(path) {
            None => diffs.push(format!("{}: missing from {}", path.display(), b.display())),
            Some(eb) if eb != ea => diffs.push(format!("{}: {ea:?} != {eb:?}", path.display())),
            _ => {}
        }
    }
    for path in tb.keys().filter(|p| !ta.contains_key(*p)) {
        diffs.push(format!("{}: extra in {}", path.display(), b.display()));
    }
    Ok(diffs)
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        mode: u32,
        mtime: i64,
        sha256: String,
    },
    Link {
        target: PathBuf,
    },
}

fn snapshot_tree(root: &Path, skip: &[&str]) -> Result<BTreeMap<PathBuf, Node>> {
    use sha2::Digest;
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry =
            entry.map_err(|e| Error::io(format!("walking {}", root.display()), e.into()))?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| skip.contains(&n))
        {
            continue;
        }
        let md = entry
            .metadata()
            .map_err(|e| Error::io(format!("stat {}", entry.path().display()), e.into()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("under root")
            .to_path_buf();
        let node = if md.file_type().is_symlink() {
            Node::Link {
                target: std::fs::read_link(entry.path()).map_err(io("readlink", entry.path()))?,
            }
        } else if md.is_dir() {
            // The top directory's own mtime changes when it is swapped in.
            Node::Dir {
                mode: md.mode() & 0o7777,
                mtime: if rel.as_os_str().is_empty() {
                    0
                } else {
                    md.mtime()
                },
            }
        } else {
            let mut hasher = sha2::Sha256::new();
            let mut f = std::fs::File::open(entry.path()).map_err(io("opening", entry.path()))?;
            std::io::copy(&mut f, &mut hasher).map_err(io("reading", entry.path()))?;
            Node::File {
                mode: md.mode() & 0o7777,
                mtime: md.mtime(),
                sha256: hex::encode(hasher.finalize()),
            }
        };
        out.insert(rel, node);
    }
    Ok(out)
}

/// Every row of every table of a SQLite database, for logical comparison.
pub fn sqlite_rows(path: &Path) -> Result<Vec<String>> {
    let err = |e: rusqlite::Error| Error::InvalidImage(format!("reading {}: {e}", path.display()));
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(err)?;
    let mut tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .map_err(err)?
        .query_map([], |r| r.get(0))
        .map_err(err)?
        .collect::<std::result::Result<_, _>>()
        .map_err(err)?;
    tables.retain(|t| !t.starts_with("sqlite_"));
    let mut rows = Vec::new();
    for t in tables {
        let mut stmt = db
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .map_err(err)?;
        let n = stmt.column_count();
        let mut q = stmt.query([]).map_err(err)?;
        while let Some(row) = q.next().map_err(err)? {
            let mut cells = vec![t.clone()];
            for i in 0..n {
                let v: rusqlite::types::Value = row.get(i).map_err(err)?;
                cells.push(format!("{v:?}"));
            }
            rows.push(cells.join("|"));
        }
    }
    Ok(rows)
}
