//! `sftp://user@host[:port]/path`: a directory on any SSH server, through
//! its SFTP subsystem.
//!
//! The path is absolute, as curl reads it (`sftp://u@nas/srv/backups` is
//! `/srv/backups`); `/~/path` is below the user's login directory. An upload
//! writes a hidden temporary file beside its final name,
//! `.<name>.partial-<hex>`, and is published by a rename: SFTP's own rename
//! refuses an existing target ([`PutMode::Create`]), OpenSSH's
//! `posix-rename@openssh.com` replaces one ([`PutMode::Overwrite`]).
//!
//! The server's host key must be known: listed for the host in
//! `~/.ssh/known_hosts`, or named by its SHA-256 fingerprint. Login is by key
//! (the configured one, else `~/.ssh/id_ed25519` then `~/.ssh/id_rsa`;
//! passphrase from `BACKUP_SSH_KEY_PASSPHRASE`) or by the password in
//! `BACKUP_SSH_PASSWORD`. One connection serves every operation (SFTP
//! requests carry ids); a lost connection is opened again on the next one.
//!
//! Layout: this file opens the storage and implements [`Storage`] on it;
//! `connect` holds the SSH side (host key, login, the SFTP session).

mod connect;

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};

use self::connect::{Conn, HostKeys, Login, Secret, Target, PASSPHRASE_VAR, PASSWORD_VAR};
use crate::names::{is_temp_name, is_valid_name, split_list_prefix, temp_name};
use crate::url::{
    parse_with_authority, percent_decode_utf8, redact, url_host, url_user, written_userinfo,
};
use crate::{
    resolve_range, Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode,
    PutOptions, Result, Storage, Upload,
};

/// Connecting, host key check and login together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests in flight per transfer.
const IN_FLIGHT: usize = 16;

/// A directory on an SSH server (`sftp://user@host[:port]/path`).
///
/// Open it with [`SftpStorage::from_url`] or [`SftpStorageBuilder`].
#[derive(Clone)]
pub struct SftpStorage {
    inner: Arc<Inner>,
}

struct Inner {
    host: String,
    port: u16,
    path: String,
    shown: String,
    host_keys: HostKeys,
    login: Login,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
}

/// Settings of an [`SftpStorage`] beyond its URL.
#[derive(Debug, Clone)]
pub struct SftpStorageBuilder {
    host: String,
    port: u16,
    user: String,
    path: String,
    ssh_key: Option<PathBuf>,
    home: Option<PathBuf>,
    host_key_sha256: Option<String>,
    known_hosts: Option<PathBuf>,
    password: Option<Secret>,
    passphrase: Option<Secret>,
}

impl SftpStorageBuilder {
    /// Reads `sftp://user@host[:port]/path`; the password and the key's
    /// passphrase come from `BACKUP_SSH_PASSWORD` and
    /// `BACKUP_SSH_KEY_PASSPHRASE`. A URL with a password is refused.
    pub fn from_url(url: &str) -> Result<SftpStorageBuilder> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(url),
            reason,
        };
        const FORM: &str = "write sftp://user@host[:port]/path";
        let parsed = parse_with_authority(url, FORM).map_err(invalid)?;
        if parsed.scheme() != "sftp" {
            return Err(invalid(format!("not an sftp:// URL; {FORM}")));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(invalid(
                "an sftp:// URL takes no query or fragment; percent-encode '?' and '#' in the path"
                    .into(),
            ));
        }
        if written_userinfo(url).is_some_and(|userinfo| userinfo.contains(':')) {
            return Err(invalid(format!(
                "the URL must not carry a password: put it in {PASSWORD_VAR}, or log in with a key"
            )));
        }
        if written_userinfo(url).is_none() {
            return Err(invalid(
                "name the SSH user: sftp://user@host[:port]/path".into(),
            ));
        }
        let user = url_user(&parsed).map_err(invalid)?;
        if user.is_empty() {
            return Err(invalid("the SSH user is empty".into()));
        }
        let host = url_host(&parsed)
            .ok_or_else(|| invalid("the host is missing: sftp://user@host[:port]/path".into()))?;
        let port = parsed.port().unwrap_or(22);
        let path = match parsed.path() {
            "" => "/".to_owned(),
            path => percent_decode_utf8(path, "path").map_err(invalid)?,
        };
        if path.contains('\0') {
            return Err(invalid("the path contains a NUL byte".into()));
        }
        let secret = |var: &str| {
            std::env::var(var)
                .ok()
                .filter(|v| !v.is_empty())
                .map(Secret)
        };
        Ok(SftpStorageBuilder {
            host,
            port,
            user,
            path,
            ssh_key: None,
            home: std::env::var_os("HOME").map(PathBuf::from),
            host_key_sha256: None,
            known_hosts: None,
            password: secret(PASSWORD_VAR),
            passphrase: secret(PASSPHRASE_VAR),
        })
    }

    /// The private key to log in with (default `~/.ssh/id_ed25519`, then
    /// `~/.ssh/id_rsa`).
    pub fn ssh_key(mut self, path: Option<PathBuf>) -> SftpStorageBuilder {
        self.ssh_key = path;
        self
    }

    /// Trust exactly the host key of this SHA-256 fingerprint (`SHA256:…`,
    /// as `ssh-keygen -lf` prints it) instead of `known_hosts`.
    pub fn host_key_sha256(mut self, fingerprint: Option<String>) -> SftpStorageBuilder {
        self.host_key_sha256 = fingerprint;
        self
    }

    /// The known_hosts file (default `~/.ssh/known_hosts`).
    pub fn known_hosts(mut self, path: PathBuf) -> SftpStorageBuilder {
        self.known_hosts = Some(path);
        self
    }

    /// The password (instead of `BACKUP_SSH_PASSWORD`).
    pub fn password(mut self, password: Option<String>) -> SftpStorageBuilder {
        self.password = password.map(Secret);
        self
    }

    /// Checks the settings; nothing is contacted yet.
    pub fn build(self) -> Result<SftpStorage> {
        let port_shown = if self.port == 22 {
            String::new()
        } else {
            format!(":{}", self.port)
        };
        let host_shown = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let shown = format!(
            "sftp://{}@{host_shown}{port_shown}{}",
            crate::url::percent_encode(self.user.as_bytes(), false),
            crate::url::percent_encode(self.path.as_bytes(), true)
        );
        let ssh_dir = self.home.as_ref().map(|h| h.join(".ssh"));
        let host_keys = match self.host_key_sha256 {
            Some(f) => {
                let f = f.trim().to_owned();
                if !f.starts_with("SHA256:") {
                    return Err(Error::Other {
                        what: format!(
                            "[storage] host_key_sha256 = {f:?} is not a SHA-256 fingerprint: \
                             write it as `ssh-keygen -lf` prints it, \"SHA256:…\""
                        ),
                        source: None,
                    });
                }
                HostKeys::Fingerprint(f)
            }
            None => HostKeys::KnownHosts(
                self.known_hosts
                    .or_else(|| ssh_dir.as_ref().map(|d| d.join("known_hosts")))
                    .ok_or_else(|| Error::Other {
                        what: format!(
                            "{shown}: no home directory for ~/.ssh/known_hosts; set [storage] host_key_sha256"
                        ),
                        source: None,
                    })?,
            ),
        };
        let (keys, key_configured) = match self.ssh_key {
            Some(k) => (vec![k], true),
            None => (
                ssh_dir
                    .map(|d| vec![d.join("id_ed25519"), d.join("id_rsa")])
                    .unwrap_or_default(),
                false,
            ),
        };
        Ok(SftpStorage {
            inner: Arc::new(Inner {
                host: self.host,
                port: self.port,
                path: self.path,
                shown,
                host_keys,
                login: Login {
                    user: self.user,
                    keys,
                    key_configured,
                    passphrase: self.passphrase,
                    password: self.password,
                },
                conn: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

impl SftpStorage {
    /// Opens `sftp://user@host[:port]/path` with the default keys and
    /// `~/.ssh/known_hosts`. Nothing is contacted yet.
    pub fn from_url(url: &str) -> Result<SftpStorage> {
        SftpStorageBuilder::from_url(url)?.build()
    }
}

/// Opens an `sftp://` URL with the key and host key settings of `opts`.
pub(crate) fn open(url: &str, opts: &crate::OpenOptions) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(
        SftpStorageBuilder::from_url(url)?
            .ssh_key(opts.ssh_key.clone())
            .host_key_sha256(opts.host_key_sha256.clone())
            .build()?,
    ))
}

impl fmt::Display for SftpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.shown)
    }
}

impl fmt::Debug for SftpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SftpStorage")
            .field("url", &self.inner.shown)
            .finish_non_exhaustive()
    }
}

fn status_code(e: &SftpError) -> Option<StatusCode> {
    match e {
        SftpError::Status(s) => Some(s.status_code),
        _ => None,
    }
}

fn is_missing(e: &SftpError) -> bool {
    status_code(e) == Some(StatusCode::NoSuchFile)
}

impl Inner {
    /// The connection, opened (again) if there is none or it was lost.
    async fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(Arc::clone(c));
        }
        let conn = Arc::new(
            connect::connect(Target {
                host: &self.host,
                port: self.port,
                path: &self.path,
                shown: &self.shown,
                host_keys: &self.host_keys,
                login: &self.login,
                timeout: CONNECT_TIMEOUT,
            })
            .await?,
        );
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    /// An SFTP failure as a storage error; a lost connection is forgotten.
    async fn error(&self, what: String, e: SftpError) -> Error {
        let source = Some(Box::new(e.clone()) as crate::BoxError);
        match status_code(&e) {
            Some(StatusCode::NoSuchFile) => Error::NotFound { what, source },
            Some(StatusCode::PermissionDenied) => Error::PermissionDenied {
                what: format!(
                    "{what}: check that the SSH user may write there (owner and mode of the directory)"
                ),
                source,
            },
            Some(StatusCode::NoConnection | StatusCode::ConnectionLost) | None => {
                *self.conn.lock().await = None;
                Error::Transient {
                    what: format!("{what}: retry; if it persists, check the network and the SSH server"),
                    source,
                }
            }
            Some(_) => Error::Other {
                what: format!("{what}: the server refused (a full disk or quota shows this way too)"),
                source,
            },
        }
    }
}

fn check_name(name: &str) -> Result<()> {
    if is_valid_name(name) {
        Ok(())
    } else {
        Err(Error::Other {
            what: format!(
                "invalid object name {name:?}: names are relative and '/'-separated, without empty, \
                 '.' or '..' segments, backslashes, line breaks or NUL bytes"
            ),
            source: None,
        })
    }
}

fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

fn modified(attrs: &FileAttributes) -> Option<SystemTime> {
    attrs
        .mtime
        .map(|t| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(t)))
}

/// An SSH string: length, then bytes.
fn ssh_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

impl SftpStorage {
    fn not_found(&self, name: &str) -> Error {
        Error::NotFound {
            what: format!("object {name} in {self}"),
            source: None,
        }
    }

    /// Attributes of `name`, `None` where it does not exist.
    async fn stat(&self, conn: &Conn, name: &str) -> Result<Option<FileAttributes>> {
        match conn.sftp.stat(format!("{}{name}", conn.root)).await {
            Ok(a) => Ok(Some(a.attrs)),
            Err(e) if is_missing(&e) => Ok(None),
            Err(e) => Err(self
                .inner
                .error(format!("looking up {name} in {self}"), e)
                .await),
        }
    }

    /// Makes the storage directory and `dir` below it, as needed.
    async fn make_dirs(&self, conn: &Conn, dir: &str) -> Result<()> {
        let full = format!("{}{dir}", conn.root);
        let full = full.trim_end_matches('/');
        if full.is_empty() {
            return Ok(());
        }
        if let Ok(a) = conn.sftp.stat(full).await {
            if a.attrs.is_dir() {
                return Ok(());
            }
        }
        let mut path = String::new();
        for seg in full.split('/') {
            if !path.is_empty() || full.starts_with('/') {
                path.push('/');
            }
            path.push_str(seg);
            if seg.is_empty() {
                continue;
            }
            let made = conn.sftp.mkdir(path.clone(), FileAttributes::empty()).await;
            if let Err(e) = made {
                match conn.sftp.stat(path.clone()).await {
                    Ok(a) if a.attrs.is_dir() => {}
                    _ => {
                        return Err(self
                            .inner
                            .error(format!("making the directory {path} on {self}"), e)
                            .await)
                    }
                }
            }
        }
        Ok(())
    }

    /// Removes the now empty directories of `dir`, deepest first.
    async fn prune(&self, conn: &Conn, mut dir: &str) {
        while !dir.is_empty() {
            if conn
                .sftp
                .rmdir(format!("{}{dir}", conn.root))
                .await
                .is_err()
            {
                return;
            }
            dir = split_name(dir).0;
        }
    }

    /// The entries of one directory, `None` where it does not exist.
    async fn read_dir(
        &self,
        conn: &Conn,
        dir: &str,
    ) -> Result<Option<Vec<russh_sftp::protocol::File>>> {
        let path = format!("{}{dir}", conn.root);
        let handle = match conn.sftp.opendir(path.clone()).await {
            Ok(h) => h.handle,
            Err(e) if is_missing(&e) => return Ok(None),
            Err(e) => {
                return Err(self
                    .inner
                    .error(format!("listing {path} on {self}"), e)
                    .await)
            }
        };
        let mut entries = Vec::new();
        let outcome = loop {
            match conn.sftp.readdir(handle.clone()).await {
                Ok(name) => entries.extend(name.files),
                Err(e) if status_code(&e) == Some(StatusCode::Eof) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _ = conn.sftp.close(handle).await;
        match outcome {
            Ok(()) => Ok(Some(entries)),
            Err(e) => Err(self
                .inner
                .error(format!("listing {path} on {self}"), e)
                .await),
        }
    }

    /// Lists `dir` (relative, empty or ending in '/'): entries starting with
    /// `file_prefix`, all levels below unless `delimited`.
    fn walk<'a>(
        &'a self,
        conn: &'a Conn,
        dir: String,
        file_prefix: &'a str,
        delimited: bool,
        out: &'a mut ListResult,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(entries) = self.read_dir(conn, &dir).await? else {
                return Ok(());
            };
            for entry in entries {
                let fname = entry.filename;
                if fname == "." || fname == ".." || is_temp_name(&fname) {
                    continue;
                }
                if !fname.starts_with(file_prefix) || !is_valid_name(&fname) {
                    continue;
                }
                let name = format!("{dir}{fname}");
                if entry.attrs.is_dir() {
                    let sub = format!("{name}/");
                    if delimited {
                        let mut below = ListResult::default();
                        self.walk(conn, sub.clone(), "", false, &mut below).await?;
                        if !below.objects.is_empty() {
                            out.prefixes.push(sub);
                        }
                    } else {
                        self.walk(conn, sub, "", false, out).await?;
                    }
                } else if entry.attrs.is_regular() {
                    out.objects.push(ObjectMeta {
                        name,
                        size: entry.attrs.size.unwrap_or(0),
                        modified: modified(&entry.attrs),
                    });
                }
            }
            Ok(())
        })
    }
}

impl SftpStorage {
    /// Removes the temporary files of `dir` and below last written before
    /// `cutoff`, adding their names to `removed`.
    fn sweep<'a>(
        &'a self,
        conn: &'a Conn,
        dir: String,
        cutoff: SystemTime,
        removed: &'a mut Vec<String>,
    ) -> futures::future::BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some(entries) = self.read_dir(conn, &dir).await? else {
                return Ok(());
            };
            let before = removed.len();
            for entry in entries {
                let fname = entry.filename;
                let name = format!("{dir}{fname}");
                if entry.attrs.is_dir() {
                    if crate::names::is_valid_segment(&fname) {
                        self.sweep(conn, format!("{name}/"), cutoff, removed)
                            .await?;
                    }
                } else if is_temp_name(&fname)
                    && modified(&entry.attrs).is_some_and(|m| m <= cutoff)
                {
                    match conn.sftp.remove(format!("{}{name}", conn.root)).await {
                        Ok(_) => removed.push(name),
                        Err(e) if is_missing(&e) => {}
                        Err(e) => {
                            return Err(self
                                .inner
                                .error(format!("removing the stale upload {name} from {self}"), e)
                                .await)
                        }
                    }
                }
            }
            if removed.len() > before {
                self.prune(conn, dir.trim_end_matches('/')).await;
            }
            Ok(())
        })
    }
}

#[async_trait]
impl Storage for SftpStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_publish: true,
            // SFTP's rename refuses an existing target.
            conditional_create: true,
            presign: false,
            capacity: true,
            rewrite_in_place: false,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        check_name(name)?;
        let conn = self.inner.conn().await?;
        if opts.mode == PutMode::Create && self.stat(&conn, name).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: format!("object {name} in {self}"),
            });
        }
        let (dir, base) = split_name(name);
        let temp = if dir.is_empty() {
            temp_name(base)?
        } else {
            format!("{dir}/{}", temp_name(base)?)
        };
        let path = format!("{}{temp}", conn.root);
        let attrs = FileAttributes {
            permissions: Some(0o600),
            ..FileAttributes::empty()
        };
        let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::EXCLUDE;
        // A concurrent delete may remove the directory just made.
        let mut attempts = 3;
        let handle = loop {
            attempts -= 1;
            self.make_dirs(&conn, dir).await?;
            match conn.sftp.open(path.clone(), flags, attrs.clone()).await {
                Ok(h) => break h.handle,
                Err(e) if is_missing(&e) && attempts > 0 => continue,
                Err(e) => {
                    return Err(self
                        .inner
                        .error(format!("uploading {name} to {self}"), e)
                        .await)
                }
            }
        };
        Ok(Box::new(SftpUpload {
            storage: self.clone(),
            conn,
            handle: Some(handle),
            name: name.to_owned(),
            temp,
            mode: opts.mode,
            written: 0,
            broken: false,
            done: false,
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        check_name(name)?;
        let conn = self.inner.conn().await?;
        let attrs = match self.stat(&conn, name).await? {
            Some(a) if a.is_regular() => a,
            _ => return Err(self.not_found(name)),
        };
        let size = attrs.size.unwrap_or(0);
        let range = resolve_range(range, size, name, self)?;
        let meta = ObjectMeta {
            name: name.to_owned(),
            size,
            modified: modified(&attrs),
        };
        if range.is_empty() {
            return Ok(GetResult {
                meta,
                range,
                reader: Box::new(tokio::io::empty()),
            });
        }
        let handle = match conn
            .sftp
            .open(
                format!("{}{name}", conn.root),
                OpenFlags::READ,
                FileAttributes::empty(),
            )
            .await
        {
            Ok(h) => h.handle,
            Err(e) => {
                return Err(self
                    .inner
                    .error(format!("reading {name} from {self}"), e)
                    .await)
            }
        };
        let open = Arc::new(OpenFile {
            conn: Arc::clone(&conn),
            handle,
        });
        let step = u64::from(conn.read_len);
        let what = format!("reading {name} from {self}");
        let pieces = (range.start..range.end)
            .step_by(usize::try_from(step).expect("small"))
            .map(move |off| (off, (range.end - off).min(step)));
        let stream = futures::stream::iter(pieces)
            .map(move |(off, len)| {
                let open = Arc::clone(&open);
                let what = what.clone();
                async move { open.read_exact(off, len, &what).await }
            })
            .buffered(IN_FLIGHT);
        Ok(GetResult {
            meta,
            range,
            reader: Box::new(tokio_util::io::StreamReader::new(stream)),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        check_name(name)?;
        let conn = self.inner.conn().await?;
        match self.stat(&conn, name).await? {
            Some(a) if a.is_regular() => Ok(ObjectMeta {
                name: name.to_owned(),
                size: a.size.unwrap_or(0),
                modified: modified(&a),
            }),
            _ => Err(self.not_found(name)),
        }
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let Some((dir, file_prefix)) = split_list_prefix(prefix) else {
            return Ok(ListResult::default());
        };
        let conn = self.inner.conn().await?;
        let mut out = ListResult::default();
        self.walk(&conn, dir.to_owned(), file_prefix, delimited, &mut out)
            .await?;
        out.objects.sort_by(|a, b| a.name.cmp(&b.name));
        out.prefixes.sort();
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let conn = self.inner.conn().await?;
        match conn.sftp.remove(format!("{}{name}", conn.root)).await {
            Ok(_) => {
                self.prune(&conn, split_name(name).0).await;
                Ok(())
            }
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(self
                .inner
                .error(format!("deleting {name} from {self}"), e)
                .await),
        }
    }

    async fn capacity(&self) -> Result<Capacity> {
        let conn = self.inner.conn().await?;
        if !conn.statvfs {
            return Ok(Capacity::default());
        }
        // The storage directory may not exist before the first upload.
        let mut stat = conn.sftp.statvfs(conn.root.clone()).await;
        if stat.as_ref().is_err_and(is_missing) {
            stat = conn.sftp.statvfs(".").await;
        }
        let s = match stat {
            Ok(s) => s,
            Err(e) => {
                return Err(self
                    .inner
                    .error(format!("asking {self} for its free space"), e)
                    .await)
            }
        };
        let unit = if s.fragment_size > 0 {
            s.fragment_size
        } else {
            s.block_size
        };
        Ok(Capacity {
            total: Some(s.blocks.saturating_mul(unit)),
            used: Some(s.blocks.saturating_sub(s.blocks_free).saturating_mul(unit)),
            free: Some(s.blocks_avail.saturating_mul(unit)),
        })
    }

    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        let conn = self.inner.conn().await?;
        let mut removed = Vec::new();
        if let Some(cutoff) = SystemTime::now().checked_sub(older_than) {
            self.sweep(&conn, String::new(), cutoff, &mut removed)
                .await?;
        }
        Ok(removed)
    }

    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what: "presigned URLs: sftp:// storage cannot presign; use `backup fetch` or an S3 backend"
                .to_owned(),
        })
    }
}

/// An open file of a download, closed when the last reader piece drops.
struct OpenFile {
    conn: Arc<Conn>,
    handle: String,
}

impl OpenFile {
    /// Reads `len` bytes at `off`, in as many requests as the server needs.
    async fn read_exact(&self, off: u64, len: u64, what: &str) -> std::io::Result<Bytes> {
        let mut buf = Vec::with_capacity(usize::try_from(len).expect("small"));
        while (buf.len() as u64) < len {
            let at = off + buf.len() as u64;
            let want = u32::try_from(len - buf.len() as u64).expect("small");
            match self.conn.sftp.read(self.handle.clone(), at, want).await {
                Ok(data) if !data.data.is_empty() => buf.extend_from_slice(&data.data),
                Ok(_) => {}
                Err(e) if status_code(&e) == Some(StatusCode::Eof) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!(
                            "{what}: the object ended at byte {at}; it changed while read, retry"
                        ),
                    ))
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        format!("{what}: {e}; retry"),
                    ))
                }
            }
        }
        Ok(Bytes::from(buf))
    }
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        let conn = Arc::clone(&self.conn);
        let handle = std::mem::take(&mut self.handle);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = conn.sftp.close(handle).await;
            });
        }
    }
}

struct SftpUpload {
    storage: SftpStorage,
    conn: Arc<Conn>,
    /// `None` once closed.
    handle: Option<String>,
    name: String,
    temp: String,
    mode: PutMode,
    written: u64,
    broken: bool,
    done: bool,
}

impl SftpUpload {
    fn what(&self) -> String {
        format!("uploading {} to {}", self.name, self.storage)
    }

    async fn publish(&mut self) -> Result<ObjectMeta> {
        let conn = Arc::clone(&self.conn);
        let inner = &self.storage.inner;
        let handle = self.handle.take().expect("open until published");
        if conn.fsync {
            let mut data = Vec::new();
            ssh_string(&mut data, &handle);
            let synced = conn
                .sftp
                .extended(russh_sftp::extensions::FSYNC, data)
                .await;
            if let Err(e) = extended_ok(synced) {
                let _ = conn.sftp.close(handle).await;
                return Err(inner.error(self.what(), e).await);
            }
        }
        if let Err(e) = conn.sftp.close(handle).await {
            return Err(inner.error(self.what(), e).await);
        }
        let (from, to) = (
            format!("{}{}", conn.root, self.temp),
            format!("{}{}", conn.root, self.name),
        );
        let renamed = match self.mode {
            PutMode::Create => conn.sftp.rename(from, to).await.map(drop),
            PutMode::Overwrite if conn.posix_rename => {
                let mut data = Vec::new();
                ssh_string(&mut data, &from);
                ssh_string(&mut data, &to);
                extended_ok(conn.sftp.extended("posix-rename@openssh.com", data).await)
            }
            PutMode::Overwrite => {
                // Without posix-rename the old object goes first.
                let _ = conn.sftp.remove(to.clone()).await;
                conn.sftp.rename(from, to).await.map(drop)
            }
        };
        if let Err(e) = renamed {
            if self.mode == PutMode::Create && self.storage.stat(&conn, &self.name).await?.is_some()
            {
                return Err(Error::AlreadyExists {
                    what: format!("object {} in {}", self.name, self.storage),
                });
            }
            return Err(inner.error(self.what(), e).await);
        }
        Ok(ObjectMeta {
            name: self.name.clone(),
            size: self.written,
            modified: Some(SystemTime::now()),
        })
    }

    /// Closes and removes the temporary file.
    async fn discard(conn: Arc<Conn>, handle: Option<String>, temp: String) -> Result<()> {
        if let Some(h) = handle {
            let _ = conn.sftp.close(h).await;
        }
        match conn.sftp.remove(format!("{}{temp}", conn.root)).await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(&e) => Ok(()),
            Err(e) => Err(Error::Other {
                what: format!("removing the temporary file {temp}"),
                source: Some(Box::new(e)),
            }),
        }
    }
}

fn extended_ok(
    reply: std::result::Result<Packet, SftpError>,
) -> std::result::Result<(), SftpError> {
    match reply? {
        Packet::Status(s) if s.status_code == StatusCode::Ok => Ok(()),
        Packet::Status(s) => Err(SftpError::Status(s)),
        _ => Err(SftpError::UnexpectedPacket),
    }
}

#[async_trait]
impl Upload for SftpUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        let Some(handle) = self.handle.clone().filter(|_| !self.broken) else {
            return Err(Error::Other {
                what: format!(
                    "{}: an earlier write failed or was cancelled; start the upload again",
                    self.what()
                ),
                source: None,
            });
        };
        if chunk.is_empty() {
            return Ok(());
        }
        self.broken = true;
        let step = self.conn.write_len as usize;
        let base = self.written;
        let sftp = &self.conn.sftp;
        let pieces = (0..chunk.len()).step_by(step).map(|at| {
            let data = chunk.slice(at..(at + step).min(chunk.len())).to_vec();
            sftp.write(handle.clone(), base + at as u64, data)
        });
        let written: std::result::Result<Vec<_>, _> = futures::stream::iter(pieces)
            .buffer_unordered(IN_FLIGHT)
            .try_collect()
            .await;
        match written {
            Ok(_) => {
                self.broken = false;
                self.written += chunk.len() as u64;
                Ok(())
            }
            Err(e) => Err(self.storage.inner.error(self.what(), e).await),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.broken || self.handle.is_none() {
            return Err(Error::upload_broken(self.what()));
        }
        let published = self.publish().await;
        self.done = true;
        if published.is_err() {
            let temp = self.temp.clone();
            if let Err(e) = Self::discard(Arc::clone(&self.conn), self.handle.take(), temp).await {
                tracing::warn!(temp = %self.temp, url = %self.storage, error = %e, "could not remove the temporary file of a failed upload");
            }
        }
        published
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let temp = self.temp.clone();
        let result = Self::discard(Arc::clone(&self.conn), self.handle.take(), temp).await;
        let (dir, _) = split_name(&self.name);
        self.storage.prune(&self.conn, dir).await;
        result
    }
}

impl Drop for SftpUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Neither completed nor aborted: clean up in the background. The
        // temporary file is hidden from listings meanwhile.
        let (conn, handle, temp) = (
            Arc::clone(&self.conn),
            self.handle.take(),
            std::mem::take(&mut self.temp),
        );
        let storage = self.storage.clone();
        let dir = split_name(&self.name).0.to_owned();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = Self::discard(Arc::clone(&conn), handle, temp).await {
                    tracing::warn!(url = %storage, error = %e, "could not remove the temporary file of an abandoned upload");
                }
                storage.prune(&conn, &dir).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> SftpStorageBuilder {
        SftpStorageBuilder::from_url(url).unwrap()
    }

    #[test]
    fn urls() {
        let b = parsed("sftp://backup@nas.example/srv/backups");
        assert_eq!(
            (b.user.as_str(), b.host.as_str(), b.port),
            ("backup", "nas.example", 22)
        );
        assert_eq!(b.path, "/srv/backups");
        let b = parsed("SFTP://a%40b@[::1]:2222/~/my%20images");
        assert_eq!(
            (b.user.as_str(), b.host.as_str(), b.port),
            ("a@b", "::1", 2222)
        );
        assert_eq!(b.path, "/~/my images");
        assert_eq!(
            b.build().unwrap().to_string(),
            "sftp://a%40b@[::1]:2222/~/my%20images"
        );
        assert_eq!(parsed("sftp://u@h").path, "/");
        for bad in [
            "sftp://h/p",
            "sftp://u:secret@h/p",
            "sftp://u@:22/p",
            "sftp://u@h:0/p",
            "sftp://u@h:x/p",
            "sftp://u@h/p?x=1",
            "sftp://u@h/a%00b",
            "ftp://u@h/p",
            "sftp://u@h/srv/../etc",
        ] {
            let e = SftpStorageBuilder::from_url(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidUrl { .. }), "{bad}: {e}");
            assert!(!e.to_string().contains("secret"), "{e}");
        }
    }

    #[test]
    fn a_fingerprint_must_be_sha256() {
        let e = parsed("sftp://u@h/p")
            .host_key_sha256(Some("MD5:00:11".into()))
            .build()
            .unwrap_err();
        assert!(e.to_string().contains("SHA256:"), "{e}");
    }
}
