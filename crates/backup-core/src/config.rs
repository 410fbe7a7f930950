//! The appliance's configuration file (TOML).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::model::{Compression, Role};

use serde::{Deserialize, Serialize};

use crate::ops::retention::RetentionPolicy;
use crate::ops::schedule::Schedule;
use crate::{Error, Result};

/// The whole configuration file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Who this appliance is.
    pub appliance: Appliance,
    /// Where images go.
    #[serde(default)]
    pub storage: StorageConfig,
    /// How images are made.
    #[serde(default)]
    pub image: ImageConfig,
    /// Key derivation cost used when the secret is set (`backup init`).
    #[serde(default)]
    pub encryption: EncryptionConfig,
    /// When backups run unattended (`backup daemon`).
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// Which images to keep.
    #[serde(default)]
    pub retention: crate::ops::retention::RetentionPolicy,
    /// Commands run around each backup.
    #[serde(default)]
    pub hooks: crate::ops::hooks::Hooks,
    /// What to back up.
    #[serde(default, rename = "component")]
    pub components: Vec<ComponentConfig>,
    /// The HTTP service (`backup serve`).
    #[serde(default)]
    pub http: HttpConfig,
    /// The nodes a cluster coordinator backs up as one (`backup cluster`).
    #[serde(default)]
    pub cluster: Option<ClusterConfig>,
    /// Restore drills (`backup drill`, and on a schedule by `backup daemon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<DrillConfig>,
    /// Second copies: storages that receive each published image (`[[copy]]`).
    #[serde(default, rename = "copy", skip_serializing_if = "Vec::is_empty")]
    pub copies: Vec<CopyConfig>,
}

/// `[cluster]` on a coordinator: the nodes backed up as one bundle.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The cluster's name (in bundle names).
    pub name: String,
    /// The nodes, `[[cluster.node]]`.
    #[serde(default, rename = "node")]
    pub nodes: Vec<ClusterNode>,
    /// How many data/secondary nodes are pulled at once (default 2).
    #[serde(default = "default_cluster_concurrency")]
    pub concurrency: usize,
    /// Seconds a node may stay silent (connect, headers, or between two
    /// chunks of its image) before its pull fails (default 120).
    #[serde(default = "default_cluster_timeout")]
    pub timeout_secs: u64,
    /// Seconds after which a restore lease whose holder is gone may be
    /// taken over (default 6 hours).
    #[serde(default = "default_lease_stale")]
    pub lease_stale_secs: u64,
}

fn default_cluster_concurrency() -> usize {
    2
}

fn default_cluster_timeout() -> u64 {
    120
}

fn default_lease_stale() -> u64 {
    6 * 3600
}

/// `[[cluster.node]]`: one node, reached through its `backup serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterNode {
    /// The node's name (its `[appliance] node`).
    pub name: String,
    /// `control`, `data`, `primary` or `secondary`.
    pub role: Role,
    /// The node's service, `https://10.0.0.2:8443`.
    pub url: String,
    /// The SHA-256 of its certificate: `sha256:<64 hex>` or the colon form
    /// `openssl x509 -fingerprint -sha256` prints.
    pub fingerprint: String,
    /// A file holding `USER!NAME:SECRET`, a token with the admin role on
    /// that node (`backup token create` there).
    pub token_file: PathBuf,
}

/// `[http]`: the HTTPS service of `backup serve`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address and port to listen on (default `127.0.0.1:8443`).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// PEM certificate chain; with `tls_key`. Without both, a self-signed
    /// certificate is made at `state_dir/http/cert.pem` on the first start.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Keep a copy of each image served by `GET /backup` in the configured
    /// storage, as `backup create` does (default true).
    #[serde(default = "yes")]
    pub store_served: bool,
    /// The URL clients reach this service at (`https://gw.example:8443`),
    /// for the download links it issues; default: the request's `Host`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Serve `GET /metrics` without authentication.
    #[serde(default)]
    pub metrics_public: bool,
}

fn default_listen() -> String {
    "127.0.0.1:8443".to_string()
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            tls_cert: None,
            tls_key: None,
            store_served: true,
            public_url: None,
            metrics_public: false,
        }
    }
}

/// `[schedule]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Five-field cron expressions (or `@daily`, …).
    pub cron: Vec<String>,
    /// IANA time zone the expressions are read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// Include audit components in scheduled backups.
    #[serde(default)]
    pub include_audits: bool,
    /// Scheduled runs back up the whole `[cluster]` (`backup cluster
    /// create`) instead of this node.
    #[serde(default)]
    pub cluster: bool,
}

fn utc() -> String {
    "UTC".to_string()
}

impl ScheduleConfig {
    /// The parsed schedule.
    pub fn parse(&self) -> Result<crate::ops::schedule::Schedule> {
        crate::ops::schedule::Schedule::new(&self.cron, &self.timezone)
    }
}

/// `[appliance]`: identity and state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Appliance {
    /// Product name, e.g. `demo-gateway`.
    pub product: String,
    /// Product version; restore refuses images of another version.
    pub version: String,
    /// Node id; restore refuses images of another node.
    pub node: String,
    /// Role of this node.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Cluster id, if any.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Keyring, master key, status, audit log, lock, logs.
    pub state_dir: PathBuf,
}

fn default_role() -> Role {
    Role::Standalone
}

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `none`, or a backend URL such as `file:///var/backups`.
    #[serde(default = "default_storage_url")]
    pub url: String,
    /// Image name prefix.
    #[serde(default)]
    pub prefix: String,
    /// For `nfs://`: the local mount point of the export.
    #[serde(default)]
    pub mount: Option<PathBuf>,
    /// Group (name or numeric id) image files on local and NFS storage, and
    /// `create -o` / `encrypt -o` files, belong to; they are then 0640
    /// instead of 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Whether a backup first writes (and deletes) the small probe object
    /// [`PROBE_OBJECT`](crate::PROBE_OBJECT) to prove the storage takes
    /// writes. Off for a store that keeps every object it was ever given
    /// and where even that one object is unwanted.
    #[serde(default = "default_probe")]
    pub probe: bool,
    /// For `sftp://`: the private key to log in with (default
    /// `~/.ssh/id_ed25519`, then `~/.ssh/id_rsa`; its passphrase from
    /// `BACKUP_SSH_KEY_PASSPHRASE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,
    /// For `sftp://`: the server's host key fingerprint as `ssh-keygen -lf`
    /// prints it (`SHA256:…`), trusted instead of `~/.ssh/known_hosts`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_sha256: Option<String>,
}

fn default_probe() -> bool {
    true
}

fn default_storage_url() -> String {
    "none".to_string()
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            url: default_storage_url(),
            prefix: String::new(),
            mount: None,
            group: None,
            probe: true,
            ssh_key: None,
            host_key_sha256: None,
        }
    }
}

/// The most compression threads `[image] threads` accepts.
const MAX_THREADS: usize = 256;

/// `[image]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageConfig {
    /// Payload compression.
    #[serde(default)]
    pub compression: Compression,
    /// Compression level: gzip 0–9 (default 6), zstd 1–19 (default 3);
    /// ignored with `none`. Unset means the codec's default, see
    /// [`ImageConfig::effective_level`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u32>,
    /// Compression threads (1–256). Unset means every core this process may
    /// run on; set it lower to leave cores to the appliance's own services
    /// during a backup. See [`ImageConfig::effective_threads`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Most MiB the frame cache under the state directory holds: the
    /// compressed frames of large files, reused by the next backup when the
    /// files are unchanged. Unset means at most the frames of the last
    /// image (the cache is made of them); 0 turns the cache off (and
    /// removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_cache_mib: Option<u64>,
    /// Every Nth backup reads every file instead of reusing cached frames
    /// (default 7; 1 reads everything every time): it catches files changed
    /// without a change of size, mtime or ctime. See
    /// [`ImageConfig::effective_full_read_every`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_read_every: Option<u32>,
}

impl ImageConfig {
    /// The level the codec runs at: the configured one, else the codec's default.
    pub fn effective_level(&self) -> u32 {
        self.level
            .unwrap_or_else(|| self.compression.default_level())
    }

    /// How often a backup reads every file: the configured number of
    /// backups, else 7.
    pub fn effective_full_read_every(&self) -> u32 {
        self.full_read_every.unwrap_or(7)
    }

    /// The number of compression threads: the configured one, else every
    /// core this process may run on.
    pub fn effective_threads(&self) -> usize {
        self.threads.unwrap_or_else(crate::model::default_threads)
    }
}

/// `[encryption]`: Argon2id cost for the keyslot written at `backup init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// Memory in MiB (default 256).
    #[serde(default = "default_kdf_memory")]
    pub kdf_memory_mib: u32,
    /// Passes (default 3).
    #[serde(default = "default_kdf_iterations")]
    pub kdf_iterations: u32,
    /// Lanes (default 4).
    #[serde(default = "default_kdf_parallelism")]
    pub kdf_parallelism: u32,
}

fn default_kdf_memory() -> u32 {
    256
}
fn default_kdf_iterations() -> u32 {
    3
}
fn default_kdf_parallelism() -> u32 {
    4
}

impl Default for EncryptionConfig {
    fn default() -> Self {
        EncryptionConfig {
            kdf_memory_mib: default_kdf_memory(),
            kdf_iterations: default_kdf_iterations(),
            kdf_parallelism: default_kdf_parallelism(),
        }
    }
}

impl EncryptionConfig {
    /// The Argon2id parameters this section describes.
    pub fn kdf_params(&self) -> backup_crypto::KdfParams {
        backup_crypto::KdfParams {
            memory_kib: self.kdf_memory_mib.saturating_mul(1024),
            iterations: self.kdf_iterations,
            parallelism: self.kdf_parallelism,
        }
    }
}

/// One `[[component]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "RawComponent")]
pub struct ComponentConfig {
    /// Unique name (letters, digits, `-`, `_`).
    pub name: String,
    /// What kind of snapshot it takes.
    #[serde(flatten)]
    pub kind: ComponentKind,
    /// Part of a standard backup (default true).
    pub default: bool,
    /// Components that must be in the same backup.
    pub requires: Vec<String>,
    /// The component applies only where this path exists.
    pub applicable_if_exists: Option<PathBuf>,
    /// Marks audit records: excluded from a standard backup unless audits are
    /// included. Defaults to `name == "audits"`.
    pub audit: Option<bool>,
    /// Reminders shown (and kept in the status) after the component is
    /// restored, e.g. "re-enroll VPN certificates".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after_restore: Vec<String>,
    /// argv run by a restore drill against the component's restored files
    /// (no shell; `{path}` in an argument is the restored path, also in
    /// `BACKUP_DRILL_PATH`); a non-zero exit fails the drill.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drill_check: Vec<String>,
}

fn yes() -> bool {
    true
}

/// The table as written, strict about unknown keys; checked per kind below.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawComponent {
    name: String,
    kind: String,
    #[serde(default = "yes")]
    default: bool,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    applicable_if_exists: Option<PathBuf>,
    #[serde(default)]
    audit: Option<bool>,
    #[serde(default)]
    after_restore: Vec<String>,
    #[serde(default)]
    drill_check: Vec<String>,
    #[serde(default)]
    paths: Option<Vec<PathBuf>>,
    #[serde(default)]
    exclude: Option<Vec<String>>,
    #[serde(default)]
    path: Option<PathBuf>,
    #[serde(default)]
    backup: Option<Vec<String>>,
    #[serde(default)]
    restore: Option<Vec<String>>,
}

impl TryFrom<RawComponent> for ComponentConfig {
    type Error = String;

    fn try_from(r: RawComponent) -> std::result::Result<Self, String> {
        let name = r.name.clone();
        let stray = |key: &str, present: bool| {
            if present {
                Err(format!(
                    "component {name:?} of kind {:?} does not take `{key}`",
                    r.kind
                ))
            } else {
                Ok(())
            }
        };
        let missing = |key: &str| format!("component {name:?} of kind {:?} needs `{key}`", r.kind);
        let kind = match r.kind.as_str() {
            "files" => {
                stray("path", r.path.is_some())?;
                stray("backup", r.backup.is_some())?;
                stray("restore", r.restore.is_some())?;
                ComponentKind::Files {
                    paths: r.paths.ok_or_else(|| missing("paths"))?,
                    exclude: r.exclude.unwrap_or_default(),
                }
            }
            "sqlite" => {
                stray("paths", r.paths.is_some())?;
                stray("exclude", r.exclude.is_some())?;
                stray("backup", r.backup.is_some())?;
                stray("restore", r.restore.is_some())?;
                ComponentKind::Sqlite {
                    path: r.path.ok_or_else(|| missing("path"))?,
                }
            }
            "command" => {
                stray("paths", r.paths.is_some())?;
                stray("exclude", r.exclude.is_some())?;
                stray("path", r.path.is_some())?;
                ComponentKind::Command {
                    backup: r.backup.ok_or_else(|| missing("backup"))?,
                    restore: r.restore.unwrap_or_default(),
                }
            }
            other => {
                return Err(format!(
                    "component {name:?}: unknown kind {other:?} (use files, sqlite or command)"
                ))
            }
        };
        Ok(ComponentConfig {
            name: r.name,
            kind,
            default: r.default,
            requires: r.requires,
            applicable_if_exists: r.applicable_if_exists,
            audit: r.audit,
            after_restore: r.after_restore,
            drill_check: r.drill_check,
        })
    }
}

impl ComponentConfig {
    /// Whether this component holds audit records.
    pub fn is_audit(&self) -> bool {
        self.audit.unwrap_or(self.name == "audits")
    }
}

/// The built-in component kinds.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ComponentKind {
    /// Directory trees and files.
    Files {
        /// Absolute roots.
        paths: Vec<PathBuf>,
        /// Glob patterns excluded (matched against the file name and the full path).
        #[serde(default)]
        exclude: Vec<String>,
    },
    /// A dump command and its restore command.
    Command {
        /// argv of the dump command; its stdout is the snapshot.
        backup: Vec<String>,
        /// argv of the restore command; fed the snapshot on stdin.
        #[serde(default)]
        restore: Vec<String>,
    },
    /// A SQLite database file, snapshotted online.
    Sqlite {
        /// Absolute path of the database.
        path: PathBuf,
    },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: if e.kind() == std::io::ErrorKind::NotFound {
                "file not found: pass --config FILE, set BACKUP_CONFIG, or create ./backup.toml (see `backup quickstart` for an example)".to_string()
            } else {
                format!("cannot read it: {e}")
            },
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let config: Config = toml::from_str(text).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: toml_error_line(text, &e),
        })?;
        config.validate().map_err(|reason| Error::Config {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let a = &self.appliance;
        for (field, value) in [
            ("product", &a.product),
            ("version", &a.version),
            ("node", &a.node),
        ] {
            if value.is_empty() {
                return Err(format!("[appliance] {field} must not be empty"));
            }
        }
        if !is_safe_name(&a.node) {
            return Err(format!(
                "[appliance] node {:?} may only use letters, digits, '.', '-' and '_' (it is part of image names)",
                a.node
            ));
        }
        if !is_safe_name(&self.storage.prefix) && !self.storage.prefix.is_empty() {
            return Err(format!(
                "[storage] prefix {:?} may only use letters, digits, '.', '-' and '_'",
                self.storage.prefix
            ));
        }
        if !a.state_dir.is_absolute() {
            return Err(format!(
                "[appliance] state_dir {:?} must be an absolute path",
                a.state_dir
            ));
        }
        if let Some(level) = self.image.level {
            let codec = self.image.compression;
            let levels = codec.levels();
            if !levels.contains(&level) {
                return Err(format!(
                    "[image] level {level} is out of range for {} ({}–{}); leave it out for the default, {}",
                    codec.name(),
                    levels.start(),
                    levels.end(),
                    codec.default_level()
                ));
            }
        }
        if let Some(threads) = self.image.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                return Err(format!(
                    "[image] threads = {threads} is out of range (1–{MAX_THREADS}); leave it out to use every core"
                ));
            }
        }
        if self.image.full_read_every == Some(0) {
            return Err("[image] full_read_every = 0 is out of range: it counts backups (1 reads every file every time; leave it out for 7)".into());
        }
        self.encryption
            .kdf_params()
            .validate()
            .map_err(|e| format!("[encryption]: {e} (a reader would refuse such images)"))?;
        if let Some(schedule) = &self.schedule {
            schedule.parse().map_err(|e| format!("[schedule]: {e}"))?;
            if !self.has_storage() {
                return Err("[schedule] needs a storage: scheduled backups have nowhere to go with [storage] url = \"none\"; set [storage] url or remove [schedule]".into());
            }
        }
        if let Some(drill) = &self.drill {
            drill.validate()?;
        }
        self.validate_copies()?;
        let mut names = BTreeSet::new();
        for c in &self.components {
            if !is_safe_name(&c.name) {
                return Err(format!(
                    "component name {:?} may only use letters, digits, '.', '-' and '_'",
                    c.name
                ));
            }
            if !names.insert(c.name.as_str()) {
                return Err(format!("component {:?} is defined twice", c.name));
            }
            match &c.kind {
                ComponentKind::Files { paths, exclude } => {
                    if paths.is_empty() {
                        return Err(format!("component {:?}: paths must not be empty", c.name));
                    }
                    for p in paths {
                        check_abs(&c.name, p)?;
                    }
                    for g in exclude {
                        globset::Glob::new(g).map_err(|e| {
                            format!("component {:?}: bad exclude pattern {g:?}: {e}", c.name)
                        })?;
                    }
                }
                ComponentKind::Command { backup, .. } => {
                    if backup.is_empty() {
                        return Err(format!(
                            "component {:?}: backup command must not be empty",
                            c.name
                        ));
                    }
                }
                ComponentKind::Sqlite { path } => check_abs(&c.name, path)?,
            }
        }
        for c in &self.components {
            for r in &c.requires {
                if !names.contains(r.as_str()) {
                    return Err(format!(
                        "component {:?} requires {r:?}, which is not defined",
                        c.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether images are published to a storage.
    pub fn has_storage(&self) -> bool {
        !self.storage.url.trim().is_empty() && self.storage.url.trim() != "none"
    }
}

fn check_abs(name: &str, p: &Path) -> std::result::Result<(), String> {
    if !p.is_absolute() {
        return Err(format!("component {name:?}: path {p:?} must be absolute"));
    }
    if p.components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "component {name:?}: path {p:?} must not contain '..'"
        ));
    }
    Ok(())
}

pub(crate) fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s != "."
        && s != ".."
}

/// A TOML error on one line: where, then what. The parser's own report
/// spans several lines (a source excerpt with carets), which the CLI, printing
/// each error as one escaped line, would turn into a run of `\n`s.
fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let what = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ");
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// `[drill]`: when restore drills run unattended, and their limits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillConfig {
    /// Five-field cron expressions (or `@daily`, …) `backup daemon` runs a
    /// drill at; empty: drills run only by hand.
    #[serde(default)]
    pub cron: Vec<String>,
    /// IANA time zone the expressions are read in (default UTC).
    #[serde(default = "utc")]
    pub timezone: String,
    /// The time limit of a drill: `90s`, `30m`, `2h` (default 30m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The time limit in seconds (instead of `timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// The directory drills restore under (default the state directory's
    /// scratch space, `state_dir/tmp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<PathBuf>,
}

impl DrillConfig {
    /// The drill schedule, `None` when `cron` is empty.
    pub fn schedule(&self) -> Result<Option<Schedule>> {
        if self.cron.is_empty() {
            return Ok(None);
        }
        Schedule::new(&self.cron, &self.timezone).map(Some)
    }

    /// The time limit of a drill.
    pub fn time_limit(&self) -> Result<Duration> {
        match (&self.timeout, self.timeout_secs) {
            (Some(_), Some(_)) => Err(Error::Input(
                "[drill] sets both timeout and timeout_secs; keep one".into(),
            )),
            (Some(text), None) => {
                parse_duration(text).map_err(|e| Error::Input(format!("[drill] timeout: {e}")))
            }
            (None, Some(0)) => Err(Error::Input(
                "[drill] timeout_secs must be at least 1".into(),
            )),
            (None, Some(secs)) => Ok(Duration::from_secs(secs)),
            (None, None) => Ok(DEFAULT_DRILL_TIMEOUT),
        }
    }

    /// Checks the section (for the configuration's validation).
    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        self.schedule().map_err(|e| format!("[drill]: {e}"))?;
        self.time_limit().map_err(|e| e.to_string())?;
        if let Some(dir) = &self.scratch {
            if !dir.is_absolute() {
                return Err(format!("[drill] scratch {dir:?} must be an absolute path"));
            }
        }
        Ok(())
    }
}

/// A duration as an operator writes it: a number with `s`, `m`, `h` or
/// `d` (`90s`, `30m`, `2h`, `1d`); a bare number is seconds.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (write 90s, 30m, 2h or 1d)"))?;
    let secs = match unit.trim() {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    };
    match secs {
        Some(0) => Err(format!("{text:?}: a duration must be at least 1 second")),
        Some(s) => Ok(Duration::from_secs(s)),
        None => Err(format!(
            "{text:?} is not a duration (write 90s, 30m, 2h or 1d)"
        )),
    }
}

/// The time limit of a drill when neither the configuration nor the call
/// sets one: 30 minutes.
pub const DEFAULT_DRILL_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One `[[copy]]` table: a second storage that receives every published
/// image, with its own retention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CopyConfig {
    /// Any storage URL the engine opens (`file://`, `nfs://`, `s3://`,
    /// `ftp://`, `ftps://`, `sftp://`).
    pub url: String,
    /// What status, audit log and hooks call it (default: the URL without
    /// its user information).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// For `nfs://`: the local mount point of the export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mount: Option<PathBuf>,
    /// For `file://` and `nfs://`: the group (name or id) the copies
    /// belong to, then 0640 instead of 0600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// For `sftp://`: the login key (default `~/.ssh/id_ed25519`, then `id_rsa`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_key: Option<PathBuf>,
    /// For `sftp://`: the server's host key fingerprint (`SHA256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_sha256: Option<String>,
    /// Which copies this destination keeps (`[copy.retention]`, the shape of
    /// `[retention]`); unset: every copy is kept.
    #[serde(default)]
    pub retention: RetentionPolicy,
}

impl CopyConfig {
    /// A destination at `url` with nothing else set (no retention).
    pub fn new(url: impl Into<String>) -> Self {
        CopyConfig {
            url: url.into(),
            name: None,
            mount: None,
            group: None,
            ssh_key: None,
            host_key_sha256: None,
            retention: RetentionPolicy::default(),
        }
    }

    /// The same destination, logging in with `[storage]`'s SSH key and
    /// trusting its host key where it sets none of its own.
    pub fn with_storage_keys(mut self, storage: &crate::config::StorageConfig) -> Self {
        if self.ssh_key.is_none() {
            self.ssh_key = storage.ssh_key.clone();
        }
        if self.host_key_sha256.is_none() {
            self.host_key_sha256 = storage.host_key_sha256.clone();
        }
        self
    }
}

impl Config {
    /// Checks the `[[copy]]` tables.
    fn validate_copies(&self) -> std::result::Result<(), String> {
        let config = self;
        if !config.copies.is_empty() && !config.has_storage() {
            return Err(
                "[[copy]] needs a [storage] url: copies are made from the images stored there"
                    .into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for c in &config.copies {
            let url = c.url.trim();
            if url.is_empty() || url == "none" {
                return Err("[[copy]] url must name a storage (file://, nfs://, s3://, ftp://, ftps://, sftp://)".into());
            }
            if url == config.storage.url.trim() {
                return Err(format!(
                    "[[copy]] url {} is the [storage] url itself: a second copy must go elsewhere",
                    crate::lazy_storage::shown_url(url)
                ));
            }
            if let Some(name) = &c.name {
                if name.is_empty() || name.chars().any(char::is_control) {
                    return Err(format!("[[copy]] name {name:?} must be a non-empty line"));
                }
            }
            let label = c.name.clone().unwrap_or_else(|| url.to_string());
            if !names.insert(label.clone()) {
                return Err(format!(
                    "[[copy]] {} is defined twice",
                    crate::lazy_storage::shown_url(&label)
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_image(image: &str) -> std::result::Result<Config, String> {
        let text = format!(
            "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = \"/var/lib/backup\"\n\n[image]\n{image}\n"
        );
        Config::parse(&text, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn level_defaults_follow_the_codec() {
        assert_eq!(with_image("").unwrap().image.effective_level(), 6);
        let zstd = with_image("compression = \"zstd\"").unwrap();
        assert_eq!(zstd.image.compression, Compression::Zstd);
        assert_eq!(zstd.image.effective_level(), 3);
        let set = with_image("compression = \"zstd\"\nlevel = 19").unwrap();
        assert_eq!(set.image.effective_level(), 19);
    }

    #[test]
    fn threads_default_to_the_cores_and_are_bounded() {
        let cores = crate::model::default_threads();
        assert_eq!(with_image("").unwrap().image.effective_threads(), cores);
        assert_eq!(
            with_image("threads = 3").unwrap().image.effective_threads(),
            3
        );
        for bad in ["threads = 0", "threads = 257"] {
            let err = with_image(bad).expect_err(bad);
            assert!(err.contains("[image] threads"), "{bad}: {err}");
        }
    }

    #[test]
    fn level_is_validated_per_codec() {
        for ok in [
            "compression = \"gzip\"\nlevel = 0",
            "compression = \"gzip\"\nlevel = 9",
            "compression = \"zstd\"\nlevel = 1",
            "compression = \"none\"\nlevel = 42",
        ] {
            with_image(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, says) in [
            ("compression = \"gzip\"\nlevel = 10", "gzip (0–9)"),
            ("compression = \"zstd\"\nlevel = 0", "zstd (1–19)"),
            ("compression = \"zstd\"\nlevel = 20", "zstd (1–19)"),
        ] {
            let err = with_image(bad).expect_err(bad);
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(with_image("compression = \"lz4\"").is_err());
    }

    /// The CLI prints errors on one line and escapes line breaks in them, so
    /// the TOML parser's multi-line report (a source excerpt with carets)
    /// came out as one run of `\n`s; the message says where on one line.
    #[test]
    fn a_toml_error_is_one_line_naming_line_and_column() {
        for (image, line, says) in [
            ("bogus = 1", "line 8, column 1", "unknown field `bogus`"),
            ("level = \"six\"", "line 8, column 9", "invalid type"),
            ("level = ", "line 8, column 9", ""),
        ] {
            let err = with_image(image).expect_err(image);
            assert!(!err.contains('\n'), "{image}: {err:?}");
            assert!(err.contains(line), "{image}: {err:?}");
            assert!(err.contains(says), "{image}: {err:?}");
            assert!(!err.contains("TOML parse error"), "{image}: {err:?}");
        }
    }
}
