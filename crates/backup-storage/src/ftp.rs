//! `ftp://user@host:port/path` and `ftps://` (explicit TLS: `AUTH TLS`, then
//! `PROT P` for the data connections).
//!
//! Passive mode, binary transfers. An upload streams (`STOR`) into a hidden
//! temporary name next to its final name, `.<name>.partial-<hex>`, and is
//! published by `RNFR`/`RNTO`, so a final name never holds a partial image.
//! FTP has no rename that refuses to replace, so [`PutMode::Create`] is checked
//! right before the rename, not atomically (`conditional_create` is off).
//!
//! The path of the URL is the directory below the FTP login directory, as in
//! RFC 1738 (`ftp://u@nas/backups` is `backups` in the user's home); a path
//! starting with `%2F` is absolute (`ftp://u@nas/%2Fsrv/backups`). The password
//! never comes from the URL: `BACKUP_FTP_PASSWORD`, or else the `~/.netrc`
//! entry for the host and user.

use std::fmt;
use std::io;
use std::ops::Range;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use suppaftp::tokio::{
    AsyncRustlsConnector, AsyncRustlsStream, ImplAsyncFtpStream, TransferStream,
};
use suppaftp::tokio_rustls::{self, rustls};
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};

#[cfg(test)]
use crate::names::is_temp_name;
use crate::names::{is_valid_name, is_valid_segment, temp_name};
use crate::{
    resolve_range, Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode,
    PutOptions, Result, Storage, Upload,
};

/// One control connection; plain FTP uses the same type without TLS.
type Client = ImplAsyncFtpStream<AsyncRustlsStream>;
/// The data connection of one transfer.
type Transfer = TransferStream<AsyncRustlsStream>;

/// Connecting, TLS and login together: an unreachable or silent server fails
/// in bounded time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One command's reply, or progress on a data connection.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle control connections kept for reuse.
const MAX_IDLE: usize = 8;
/// An idle connection older than this is checked with NOOP before reuse:
/// servers drop idle sessions (pure-ftpd after 15 minutes, some much sooner).
const CHECK_AFTER_IDLE: Duration = Duration::from_secs(15);
/// Bytes read from a data connection at a time.
const READ_CHUNK: usize = 64 * 1024;
/// The environment variable that holds the password.
pub(crate) const PASSWORD_VAR: &str = "BACKUP_FTP_PASSWORD";

/// An FTP server directory (`ftp://user@host:port/path`, or `ftps://` for
/// explicit TLS).
///
/// Build it from a URL with [`FtpStorage::from_url`] (password from
/// `BACKUP_FTP_PASSWORD` or `~/.netrc`), or with [`FtpStorage::builder`].
/// Operations run concurrently, each on a control connection of its own from a
/// small pool; an upload or a download holds its connection until it ends.
#[derive(Clone)]
pub struct FtpStorage {
    inner: Arc<Inner>,
}

/// A password that never shows in `Debug` output.
#[derive(Clone)]
struct Password(String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

struct Inner {
    host: String,
    port: u16,
    user: String,
    password: Password,
    /// `CWD` argument of the storage directory; empty for the login directory.
    dir: String,
    /// `ftp://user@host:port/path`, for messages.
    shown: String,
    tls: Option<Tls>,
    force_list: bool,
    connect_timeout: Duration,
    io_timeout: Duration,
    /// Whether the server has MLST/MLSD, learnt from FEAT on the first login.
    mlst: OnceLock<bool>,
    /// The storage directory's absolute path with a trailing '/', from PWD
    /// on the first login; empty where PWD says no absolute path. Commands
    /// name absolute paths, as some servers resolve a relative argument
    /// against the root instead of the working directory (libunftp's MLST).
    prefix: OnceLock<String>,
    idle: Mutex<Vec<Idle>>,
}

struct Tls {
    config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry (the URL's host).
    server_name: String,
}

struct Idle {
    client: Client,
    since: Instant,
}

impl fmt::Display for FtpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.shown)
    }
}

impl fmt::Debug for FtpStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStorage")
            .field("url", &self.inner.shown)
            .field("tls", &self.inner.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl FtpStorage {
    /// Opens `ftp://user@host[:port]/path` or `ftps://…` (explicit TLS,
    /// verified against the system's trust store). The password comes from
    /// `BACKUP_FTP_PASSWORD`, or else from the `~/.netrc` entry of the host and
    /// user; a URL that carries a password is refused.
    ///
    /// Nothing is contacted yet: a wrong password or a missing directory shows
    /// on the first operation.
    pub fn from_url(url: &str) -> Result<FtpStorage> {
        FtpStorageBuilder::from_url(url)?.build()
    }

    /// A builder, for settings a URL does not carry (tests, a private CA).
    pub fn builder() -> FtpStorageBuilder {
        FtpStorageBuilder::default()
    }
}

/// Settings of an [`FtpStorage`].
#[derive(Clone)]
pub struct FtpStorageBuilder {
    tls: bool,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Password>,
    dir: String,
    ca_pem: Option<Vec<u8>>,
    force_list: bool,
    connect_timeout: Duration,
    io_timeout: Duration,
}

impl Default for FtpStorageBuilder {
    fn default() -> FtpStorageBuilder {
        FtpStorageBuilder {
            tls: false,
            host: None,
            port: None,
            user: None,
            password: None,
            dir: String::new(),
            ca_pem: None,
            force_list: false,
            connect_timeout: CONNECT_TIMEOUT,
            io_timeout: IO_TIMEOUT,
        }
    }
}

impl fmt::Debug for FtpStorageBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FtpStorageBuilder")
            .field("tls", &self.tls)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("dir", &self.dir)
            .field("force_list", &self.force_list)
            .finish_non_exhaustive()
    }
}

impl FtpStorageBuilder {
    /// A builder holding what an `ftp://` or `ftps://` URL says (no password:
    /// set one with [`FtpStorageBuilder::password`], or [`build`] looks it up).
    ///
    /// [`build`]: FtpStorageBuilder::build
    pub fn from_url(url: &str) -> Result<FtpStorageBuilder> {
        let parsed = parse_url(url).map_err(|reason| Error::InvalidUrl {
            url: redact(url),
            reason,
        })?;
        Ok(FtpStorageBuilder {
            tls: parsed.tls,
            host: Some(parsed.host),
            port: Some(parsed.port),
            user: Some(parsed.user),
            dir: parsed.dir,
            ..FtpStorageBuilder::default()
        })
    }

    /// The server's host name or IP address.
    pub fn host(mut self, host: impl Into<String>) -> FtpStorageBuilder {
        self.host = Some(host.into());
        self
    }

    /// The control port (default 21, for ftps:// too: TLS is explicit).
    pub fn port(mut self, port: u16) -> FtpStorageBuilder {
        self.port = Some(port);
        self
    }

    /// The FTP user.
    pub fn user(mut self, user: impl Into<String>) -> FtpStorageBuilder {
        self.user = Some(user.into());
        self
    }

    /// The password; without one, [`FtpStorageBuilder::build`] reads
    /// `BACKUP_FTP_PASSWORD` or `~/.netrc`.
    pub fn password(mut self, password: impl Into<String>) -> FtpStorageBuilder {
        self.password = Some(Password(password.into()));
        self
    }

    /// The storage directory: relative to the login directory, or absolute
    /// when it starts with `/`. It must exist.
    pub fn path(mut self, dir: impl Into<String>) -> FtpStorageBuilder {
        self.dir = dir.into();
        self
    }

    /// Explicit FTPS: `AUTH TLS` on the control connection, `PROT P` data.
    pub fn tls(mut self, on: bool) -> FtpStorageBuilder {
        self.tls = on;
        self
    }

    /// Trusts exactly the CA certificates of this PEM text instead of the
    /// system store (a private CA). Takes effect with [`FtpStorageBuilder::tls`].
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> FtpStorageBuilder {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Lists with `LIST` even where the server has `MLSD` (to exercise the
    /// fallback that servers without MLSD get).
    pub fn force_list(mut self, on: bool) -> FtpStorageBuilder {
        self.force_list = on;
        self
    }

    /// The limit on connecting and logging in (default 10 s).
    pub fn connect_timeout(mut self, limit: Duration) -> FtpStorageBuilder {
        self.connect_timeout = limit;
        self
    }

    /// The limit on each reply and on each wait for data (default 60 s).
    pub fn io_timeout(mut self, limit: Duration) -> FtpStorageBuilder {
        self.io_timeout = limit;
        self
    }

    /// The storage; fails if the host or user is missing, no password can be
    /// found, or the TLS trust roots cannot be loaded.
    pub fn build(self) -> Result<FtpStorage> {
        let invalid = |reason: &str| Error::InvalidUrl {
            url: "ftp://…".to_owned(),
            reason: reason.to_owned(),
        };
        let host = self
            .host
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("no FTP host given"))?;
        let user = self
            .user
            .filter(|u| !u.is_empty())
            .ok_or_else(|| invalid("no FTP user given"))?;
        if [host.as_str(), user.as_str(), self.dir.as_str()]
            .iter()
            .any(|s| s.contains(['\r', '\n', '\0']))
        {
            return Err(invalid(
                "the host, user and path may not contain line breaks or NUL",
            ));
        }
        let port = self.port.unwrap_or(21);
        let dir = normalize_dir(&self.dir);
        let scheme = if self.tls { "ftps" } else { "ftp" };
        let shown = format!(
            "{scheme}://{}@{}:{port}/{}",
            encode(&user, false),
            if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            },
            match dir.strip_prefix('/') {
                Some(abs) => format!("%2F{}", encode(abs, true)),
                None => encode(&dir, true),
            }
        );
        let password = match self.password {
            Some(p) => p,
            None => find_password(&host, &user, &shown)?,
        };
        let tls = if self.tls {
            let roots = match &self.ca_pem {
                Some(pem) => pem_roots(pem)?,
                None => system_roots()?,
            };
            Some(Tls {
                config: tls_config(roots)?,
                server_name: host.clone(),
            })
        } else {
            None
        };
        Ok(FtpStorage {
            inner: Arc::new(Inner {
                host,
                port,
                user,
                password,
                dir,
                shown,
                tls,
                force_list: self.force_list,
                connect_timeout: self.connect_timeout,
                io_timeout: self.io_timeout,
                mlst: OnceLock::new(),
                prefix: OnceLock::new(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }
}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(FtpStorage::from_url(url)?))
}

// ---------------------------------------------------------------------------
// URLs

/// What an `ftp://` or `ftps://` URL says.
#[derive(Debug, PartialEq, Eq)]
struct FtpUrl {
    tls: bool,
    host: String,
    port: u16,
    user: String,
    dir: String,
}

fn parse_url(url: &str) -> std::result::Result<FtpUrl, String> {
    const FORM: &str = "write ftp://USER@HOST[:PORT]/PATH (or ftps:// for explicit TLS)";
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("not a URL; {FORM}"))?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ftp" => false,
        "ftps" => true,
        _ => return Err(format!("not an FTP URL; {FORM}")),
    };
    if rest.contains(['?', '#']) {
        return Err(
            "an FTP URL takes no query or fragment; percent-encode '?' and '#' in the path"
                .to_owned(),
        );
    }
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let Some((userinfo, hostport)) = authority.rsplit_once('@') else {
        return Err(format!(
            "the URL names no FTP user; {FORM} (the password comes from ~/.netrc or {PASSWORD_VAR})"
        ));
    };
    if userinfo.contains(':') {
        return Err(format!(
            "the URL contains a password, which would end up in logs and configuration dumps; \
             remove it and put it in ~/.netrc (machine HOST login USER password …) or {PASSWORD_VAR}"
        ));
    }
    let user = decode_utf8(userinfo, "user")?;
    if user.is_empty() {
        return Err(format!("the URL names no FTP user; {FORM}"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or("an IPv6 address needs its closing ']'")?;
        match after {
            "" => (host, None),
            _ => (
                host,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or("expected ':PORT' after the IPv6 address")?,
                ),
            ),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("the URL names no host; {FORM}"));
    }
    let port = match port {
        None => 21,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{p:?} is not a TCP port")),
        },
    };
    let path = path.strip_prefix('/').unwrap_or(path);
    let dir = decode_utf8(path, "path")?;
    if [&user, &dir].iter().any(|s| s.contains(['\r', '\n', '\0'])) {
        return Err("the user and path may not contain line breaks or NUL".to_owned());
    }
    Ok(FtpUrl {
        tls,
        host: host.to_owned(),
        port,
        user,
        dir: normalize_dir(&dir),
    })
}

/// A directory without trailing '/' (but "/" stays the root).
fn normalize_dir(dir: &str) -> String {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() && dir.starts_with('/') {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn decode_utf8(s: &str, what: &str) -> std::result::Result<String, String> {
    crate::open::percent_decode_utf8(s, what)
}

/// Percent-encodes all but unreserved characters (and '/' in paths).
fn encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (path && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The URL with a password replaced, for the message that refuses it.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority
        .rsplit_once('@')
        .and_then(|(userinfo, host)| Some((userinfo.split_once(':')?.0, host)))
    {
        Some((user, host)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Passwords

/// `BACKUP_FTP_PASSWORD`, or else the `~/.netrc` entry of `host` and `user`.
fn find_password(host: &str, user: &str, shown: &str) -> Result<Password> {
    if let Some(p) = std::env::var_os(PASSWORD_VAR).filter(|p| !p.is_empty()) {
        return p.into_string().map(Password).map_err(|_| Error::Other {
            what: format!("{PASSWORD_VAR} is not UTF-8"),
            source: None,
        });
    }
    let netrc = std::env::var_os("HOME").map(|home| Path::new(&home).join(".netrc"));
    if let Some(path) = &netrc {
        if let Some(password) = netrc_file_password(path, host, user)? {
            return Ok(Password(password));
        }
    }
    Err(Error::Unauthenticated {
        what: format!(
            "no password for FTP user {user} of {shown}: add `machine {host} login {user} password …` \
             to ~/.netrc (mode 600) or set {PASSWORD_VAR}"
        ),
        source: None,
    })
}

fn netrc_file_password(path: &Path, host: &str, user: &str) -> Result<Option<String>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::from_io(
                format!("reading FTP passwords from {}", path.display()),
                e,
            ))
        }
    };
    let password = netrc_password(&text, host, user);
    if password.is_some() {
        use std::os::unix::fs::PermissionsExt;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(
                path = %path.display(),
                "other users may read the FTP password in this file: chmod 600 it"
            );
        }
    }
    Ok(password)
}

/// The password of the first `.netrc` entry for `host` whose login is `user`
/// (or that names no login); the `default` entry only if no machine matches.
/// Comments (`#` to the end of the line) and `macdef` bodies are skipped.
fn netrc_password(text: &str, host: &str, user: &str) -> Option<String> {
    #[derive(Default)]
    struct Entry {
        /// `None` for `default`.
        machine: Option<String>,
        login: Option<String>,
        password: Option<String>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut lexer = NetrcLexer { rest: text };
    while let Some(token) = lexer.next_token() {
        match token.as_str() {
            "machine" => entries.push(Entry {
                machine: Some(lexer.next_token().unwrap_or_default()),
                ..Entry::default()
            }),
            "default" => entries.push(Entry::default()),
            "login" | "password" | "passwd" | "account" => {
                let value = lexer.next_token();
                if let Some(entry) = entries.last_mut() {
                    match token.as_str() {
                        "login" => entry.login = value,
                        "account" => {}
                        _ => entry.password = value,
                    }
                }
            }
            "macdef" => {
                lexer.next_token();
                lexer.skip_macro_body();
            }
            _ => {} // unknown keywords (and their values) carry no password
        }
    }
    let usable = |e: &&Entry| e.login.as_deref().is_none_or(|l| l == user) && e.password.is_some();
    let machine = entries
        .iter()
        .filter(|e| {
            e.machine
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(host))
        })
        .find(usable);
    let default = || entries.iter().filter(|e| e.machine.is_none()).find(usable);
    machine.or_else(default).and_then(|e| e.password.clone())
}

/// Tokens of a `.netrc`: whitespace-separated, or double-quoted with `\`
/// escapes.
struct NetrcLexer<'a> {
    rest: &'a str,
}

impl NetrcLexer<'_> {
    fn next_token(&mut self) -> Option<String> {
        loop {
            self.rest = self.rest.trim_start();
            if self.rest.starts_with('#') {
                self.rest = self.rest.find('\n').map_or("", |i| &self.rest[i..]);
                continue;
            }
            break;
        }
        if self.rest.is_empty() {
            return None;
        }
        let mut token = String::new();
        let mut chars = self.rest.char_indices();
        if self.rest.starts_with('"') {
            chars.next();
            let mut escaped = false;
            for (i, c) in chars {
                match c {
                    _ if escaped => {
                        token.push(c);
                        escaped = false;
                    }
                    '\\' => escaped = true,
                    '"' => {
                        self.rest = &self.rest[i + 1..];
                        return Some(token);
                    }
                    _ => token.push(c),
                }
            }
            self.rest = "";
            return Some(token);
        }
        let end = self
            .rest
            .find(char::is_whitespace)
            .unwrap_or(self.rest.len());
        token.push_str(&self.rest[..end]);
        self.rest = &self.rest[end..];
        Some(token)
    }

    /// A macro body runs to the first empty line.
    fn skip_macro_body(&mut self) {
        let after_name_line = self.rest.find('\n').map_or("", |i| &self.rest[i + 1..]);
        let mut rest = after_name_line;
        loop {
            let (line, next) = match rest.find('\n') {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            if line.trim_end_matches('\r').is_empty() {
                self.rest = next.unwrap_or("");
                return;
            }
            match next {
                Some(next) => rest = next,
                None => {
                    self.rest = "";
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// TLS

fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>> {
    // An explicit provider: with both ring and aws-lc-rs in one build (another
    // dependency may bring the latter), rustls cannot pick a default.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Other {
            what: "setting up TLS for ftps://".to_owned(),
            source: Some(Box::new(e)),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::Other {
            what: format!(
                "ftps:// verifies the server's certificate, but no trusted CA certificate was found \
                 in the system store ({} problems); install ca-certificates, and add a private CA \
                 with update-ca-certificates",
                found.errors.len()
            ),
            source: found
                .errors
                .into_iter()
                .next()
                .map(|e| Box::new(e) as crate::BoxError),
        });
    }
    Ok(roots)
}

fn pem_roots(pem: &[u8]) -> Result<rustls::RootCertStore> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let bad = |e: Box<dyn std::error::Error + Send + Sync>| Error::Other {
        what: "reading the CA certificates for ftps://".to_owned(),
        source: Some(e),
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots
            .add(cert.map_err(|e| bad(Box::new(e)))?)
            .map_err(|e| bad(Box::new(e)))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the PEM text".into()));
    }
    Ok(roots)
}

// ---------------------------------------------------------------------------
// Errors

/// What was being done, for mapping a reply code to a meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// TCP connect, greeting, TLS.
    Connect,
    Login,
    /// `CWD` into the storage directory.
    BaseDir,
    /// `RETR`, `SIZE`, `MLST`, `MDTM`: 550 means no such object.
    Read,
    /// `STOR`, `MKD`, `RNFR`/`RNTO`, `DELE`.
    Write,
    /// `MLSD`/`LIST`.
    List,
}

fn reply_code(e: &FtpError) -> Option<u32> {
    match e {
        FtpError::UnexpectedResponse(r) => Some(r.status.code()),
        _ => None,
    }
}

fn reply_text(e: &FtpError) -> String {
    match e {
        FtpError::UnexpectedResponse(r) => String::from_utf8_lossy(&r.body).into_owned(),
        _ => String::new(),
    }
}

impl Inner {
    /// Maps an FTP failure to its meaning; `what` says what was being done.
    fn error(&self, op: Op, what: String, e: FtpError) -> Error {
        let Some(code) = reply_code(&e) else {
            return connection_error(what, op, Box::new(e));
        };
        let text = reply_text(&e).to_ascii_lowercase();
        let source = Some(Box::new(e) as crate::BoxError);
        match (code, op) {
            (530, Op::Login) => Error::Unauthenticated {
                what: format!(
                    "the FTP server {} rejected user {}: check ~/.netrc or {PASSWORD_VAR}",
                    self.shown, self.user
                ),
                source,
            },
            (530, _) => Error::Unauthenticated {
                what: format!("{what}: the server says the session is not logged in"),
                source,
            },
            (550, Op::BaseDir) => Error::NotFound {
                what: format!(
                    "directory {} does not exist on the FTP server {}:{}; create it or fix [storage] url",
                    self.dir, self.host, self.port
                ),
                source,
            },
            (550, Op::Read) => Error::NotFound { what, source },
            (452 | 552, _) => Error::NoSpace {
                what: format!(
                    "{what}: the FTP server is out of space (or over quota); free space there or prune old images"
                ),
                source,
            },
            (550 | 553, Op::Write | Op::List)
                if text.contains("denied") || text.contains("permission") =>
            {
                Error::PermissionDenied {
                    what: format!("{what}: check the FTP user's rights on the directory"),
                    source,
                }
            }
            (400..=499, _) => Error::Transient {
                what: format!("{what}: retry; if it persists, check the FTP server"),
                source,
            },
            _ => Error::Other { what, source },
        }
    }

    fn url(&self) -> &str {
        &self.shown
    }
}

/// A failure below the FTP replies: I/O, TLS, protocol.
fn connection_error(what: String, op: Op, source: crate::BoxError) -> Error {
    let ftp = source.downcast_ref::<FtpError>();
    match ftp {
        Some(FtpError::ConnectionError(io)) => {
            use io::ErrorKind as K;
            match io.kind() {
                K::ConnectionRefused
                | K::ConnectionReset
                | K::ConnectionAborted
                | K::NotConnected
                | K::BrokenPipe
                | K::TimedOut
                | K::UnexpectedEof
                | K::Interrupted
                | K::HostUnreachable
                | K::NetworkUnreachable
                | K::AddrNotAvailable => Error::Transient {
                    what: format!(
                        "{what}: retry; if it persists, check the network and the FTP server"
                    ),
                    source: Some(source),
                },
                _ => Error::Other {
                    what,
                    source: Some(source),
                },
            }
        }
        Some(FtpError::SecureError(_)) => Error::Other {
            what: format!(
                "{what}: TLS failed; check that the server's certificate is valid for its name and \
                 issued by a CA the system trusts"
            ),
            source: Some(source),
        },
        _ if op == Op::Connect => Error::Other {
            what: format!("{what}: the server does not speak FTP as expected"),
            source: Some(source),
        },
        _ => Error::Other {
            what,
            source: Some(source),
        },
    }
}

fn timed_out(limit: Duration) -> FtpError {
    FtpError::ConnectionError(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the FTP server within {} s", limit.as_secs()),
    ))
}

/// Whether the control connection is still in step after this result.
fn in_step<T>(r: &std::result::Result<T, FtpError>) -> bool {
    match r {
        Ok(_) => true,
        // 421: the server is closing the connection.
        Err(FtpError::UnexpectedResponse(resp)) => resp.status.code() != 421,
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Connections

/// A control connection lent by the pool; it goes back on drop unless a
/// command on it failed below the replies or was cancelled half-way.
struct Session {
    inner: Arc<Inner>,
    client: Option<Client>,
    reusable: bool,
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.reusable {
                let mut idle = self.inner.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(Idle {
                        client,
                        since: Instant::now(),
                    });
                }
            }
        }
    }
}

/// Runs one client call on a session with the I/O time limit; a failure that
/// may leave the control connection out of step keeps it from the pool.
macro_rules! ftp {
    ($session:expr, |$c:ident| $call:expr) => {{
        let session: &mut Session = $session;
        let limit = session.inner.io_timeout;
        session.reusable = false;
        let $c = session
            .client
            .as_mut()
            .expect("a session holds a connection");
        let result = match tokio::time::timeout(limit, $call).await {
            Ok(result) => result,
            Err(_) => Err(timed_out(limit)),
        };
        session.reusable = in_step(&result);
        result
    }};
}

impl Inner {
    /// A logged-in control connection in the storage directory: an idle one
    /// that is still alive, or a new one.
    async fn session(self: &Arc<Self>) -> Result<Session> {
        loop {
            let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut idle) = idle else { break };
            if closed_by_server(&idle.client).await {
                continue;
            }
            if idle.since.elapsed() > CHECK_AFTER_IDLE
                && !matches!(
                    tokio::time::timeout(self.io_timeout, idle.client.noop()).await,
                    Ok(Ok(()))
                )
            {
                continue;
            }
            return Ok(Session {
                inner: Arc::clone(self),
                client: Some(idle.client),
                reusable: true,
            });
        }
        let client = match tokio::time::timeout(self.connect_timeout, self.connect()).await {
            Ok(client) => client?,
            Err(_) => {
                return Err(Error::Transient {
                    what: format!(
                        "connecting to {}: no greeting and login within {} s; check the host and \
                         port, and that the FTP server runs and is reachable",
                        self.url(),
                        self.connect_timeout.as_secs()
                    ),
                    source: None,
                })
            }
        };
        Ok(Session {
            inner: Arc::clone(self),
            client: Some(client),
            reusable: true,
        })
    }

    async fn connect(&self) -> Result<Client> {
        let connecting = || format!("connecting to {}", self.url());
        let refused = |e: io::Error| {
            connection_error(
                format!(
                    "{}: check the host and port, and that the FTP server runs",
                    connecting()
                ),
                Op::Connect,
                Box::new(FtpError::ConnectionError(e)),
            )
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|e| Error::Transient {
                what: format!("{}: cannot resolve host {}", connecting(), self.host),
                source: Some(Box::new(e)),
            })?;
        let mut stream = Err(io::Error::new(
            io::ErrorKind::NotFound,
            "the host name has no address",
        ));
        for addr in addrs {
            stream = tokio::net::TcpStream::connect(addr).await;
            if stream.is_ok() {
                break;
            }
        }
        let stream = stream.map_err(refused)?;
        // Commands are small and answered one by one: Nagle's delay would add
        // tens of milliseconds to each.
        let _ = stream.set_nodelay(true);
        let mut client = Client::connect_with_stream(stream)
            .await
            .map_err(|e| self.error(Op::Connect, connecting(), e))?;
        if let Some(tls) = &self.tls {
            let connector = AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(
                Arc::clone(&tls.config),
            ));
            client = client
                .into_secure(connector, &tls.server_name)
                .await
                .map_err(|e| self.error(Op::Connect, format!("{}: AUTH TLS", connecting()), e))?;
        }
        // Data connections go to the control connection's peer, whatever
        // address the PASV reply names (servers behind NAT name private ones).
        client.set_mode(Mode::Passive);
        client.set_passive_nat_workaround(true);
        client
            .login(self.user.as_str(), self.password.0.as_str())
            .await
            .map_err(|e| self.error(Op::Login, connecting(), e))?;
        client
            .transfer_type(FileType::Binary)
            .await
            .map_err(|e| self.error(Op::Connect, format!("{}: TYPE I", connecting()), e))?;
        if self.mlst.get().is_none() {
            let mlst = match client.feat().await {
                Ok(features) => features.keys().any(|k| k.eq_ignore_ascii_case("MLST")),
                // No FEAT (a 500 reply): an old server, without MLST.
                Err(FtpError::UnexpectedResponse(_)) => false,
                Err(e) => {
                    return Err(self.error(Op::Connect, format!("{}: FEAT", connecting()), e))
                }
            };
            let _ = self.mlst.set(mlst);
        }
        if !self.dir.is_empty() {
            client
                .cwd(self.dir.as_str())
                .await
                .map_err(|e| self.error(Op::BaseDir, connecting(), e))?;
        }
        if self.prefix.get().is_none() {
            let prefix = match client.pwd().await {
                Ok(dir) if dir.starts_with('/') => format!("{}/", dir.trim_end_matches('/')),
                // No PWD, or not a Unix-style path: names stay relative to
                // the working directory.
                Ok(_) | Err(FtpError::UnexpectedResponse(_)) => String::new(),
                Err(e) => return Err(self.error(Op::Connect, format!("{}: PWD", connecting()), e)),
            };
            let _ = self.prefix.set(prefix);
        }
        tracing::debug!(url = %self.url(), "connected");
        Ok(client)
    }

    /// The path to send for a name relative to the storage directory.
    fn abs(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix.get().map_or("", String::as_str))
    }

    /// The path to send for a directory relative to the storage directory
    /// ("" for itself); `None` for the working directory.
    fn abs_dir(&self, rel: &str) -> Option<String> {
        let path = self.abs(rel);
        match path.trim_end_matches('/') {
            "" if path.is_empty() => None,
            "" => Some("/".to_owned()),
            trimmed => Some(trimmed.to_owned()),
        }
    }

    fn use_mlst(&self) -> bool {
        !self.force_list && self.mlst.get().copied().unwrap_or(false)
    }
}

/// Whether the server closed (or wrote to) an idle control connection: a
/// server only speaks unasked to say goodbye (421).
async fn closed_by_server(client: &Client) -> bool {
    let socket = client.get_ref().await;
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    !matches!(socket.poll_peek(&mut cx, &mut buf), Poll::Pending)
}

// ---------------------------------------------------------------------------
// Names and listings

/// `("a/b", "c")` for `"a/b/c"`, `("", "c")` for `"c"`.
fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_owned()
    } else {
        format!("{dir}/{file}")
    }
}

/// One directory entry of MLSD, MLST or LIST.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    name: String,
    kind: Kind,
    size: u64,
    modified: Option<SystemTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// Links, devices, the `cdir`/`pdir` entries of MLSD: never objects.
    Other,
}

/// An MLSD line or MLST entry (RFC 3659): `fact=value;…; name`.
fn parse_mlsx(line: &str) -> Option<Entry> {
    let (facts, name) = match line.find("; ") {
        Some(i) => (&line[..i], &line[i + 2..]),
        // No facts at all: a single space, then the name.
        None => ("", line.strip_prefix(' ')?),
    };
    let mut entry = Entry {
        name: name.to_owned(),
        kind: Kind::Other,
        size: 0,
        modified: None,
    };
    for fact in facts.split(';') {
        let Some((key, value)) = fact.split_once('=') else {
            continue;
        };
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                entry.kind = match value.to_ascii_lowercase().as_str() {
                    "file" => Kind::File,
                    "dir" => Kind::Dir,
                    _ => Kind::Other,
                }
            }
            "size" => entry.size = value.parse().ok()?,
            "modify" => entry.modified = parse_mlsx_time(value),
            _ => {}
        }
    }
    Some(entry)
}

/// `YYYYMMDDHHMMSS[.sss]`, UTC.
fn parse_mlsx_time(value: &str) -> Option<SystemTime> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, ""));
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n = |r: Range<usize>| whole[r].parse::<u32>().ok();
    let (y, mo, d) = (n(0..4)?, n(4..6)?, n(6..8)?);
    let (h, mi, s) = (n(8..10)?, n(10..12)?, n(12..14)?);
    let mut t = utc(i64::from(y), mo, d, h, mi, s)?;
    if !fraction.is_empty() && fraction.len() <= 9 && fraction.bytes().all(|b| b.is_ascii_digit()) {
        let nanos: u32 = fraction.parse::<u32>().ok()? * 10u32.pow(9 - fraction.len() as u32);
        t += Duration::from_nanos(u64::from(nanos));
    }
    Some(t)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year of a day count since 1970-01-01.
fn year_of_days(days: i64) -> i64 {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    yoe + era * 400 + i64::from(month <= 2)
}

fn utc(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<SystemTime> {
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + i64::from(h * 3600 + mi * 60 + s);
    let secs = u64::try_from(secs).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let lower = name.to_ascii_lowercase();
    MONTHS
        .iter()
        .position(|m| *m == lower)
        .map(|i| i as u32 + 1)
}

/// What a LIST line says, or `None` for lines that describe no entry
/// (`total 12`, blank). Unix `ls -l` style (with or without the group or the
/// link count, as servers differ) and DOS/IIS style.
#[derive(Debug, PartialEq, Eq)]
enum ListLine {
    Entry(Entry),
    Ignored,
    Unparsable,
}

fn parse_list_line(line: &str, now: SystemTime) -> ListLine {
    let trimmed = line.trim_end_matches(['\r', '\n']);
    if trimmed.trim().is_empty() || trimmed.starts_with("total ") {
        return ListLine::Ignored;
    }
    parse_unix_list(trimmed, now)
        .or_else(|| parse_dos_list(trimmed))
        .map_or(ListLine::Unparsable, ListLine::Entry)
}

/// `-rw-r--r--   1 owner group   1234 Jan  5 12:00 name with spaces`.
fn parse_unix_list(line: &str, now: SystemTime) -> Option<Entry> {
    let kind = match line.as_bytes().first()? {
        b'-' => Kind::File,
        b'd' => Kind::Dir,
        b'l' | b'p' | b's' | b'c' | b'b' | b'D' => Kind::Other,
        _ => return None,
    };
    // Words with their end offsets, up to the date (the name may hold spaces).
    let mut words: Vec<(&str, usize)> = Vec::new();
    let mut rest = line;
    let mut offset = 0;
    while words.len() < 9 {
        let start = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        rest = &rest[start..];
        offset += start;
        if rest.is_empty() {
            break;
        }
        let len = rest.find([' ', '\t']).unwrap_or(rest.len());
        words.push((&rest[..len], offset + len));
        rest = &rest[len..];
        offset += len;
    }
    // The date is "Mon DD HH:MM" or "Mon DD YYYY", right after the size.
    let at = (2..words.len().saturating_sub(2)).find(|&i| {
        month_number(words[i].0).is_some()
            && words[i - 1].0.bytes().all(|b| b.is_ascii_digit())
            && words[i + 1]
                .0
                .parse::<u32>()
                .is_ok_and(|d| (1..=31).contains(&d))
            && (words[i + 2].0.contains(':') || words[i + 2].0.len() == 4)
    })?;
    let size = words[at - 1].0.parse().ok()?;
    let month = month_number(words[at].0)?;
    let day = words[at + 1].0.parse().ok()?;
    let time_or_year = words[at + 2].0;
    let modified = match time_or_year.split_once(':') {
        Some((h, m)) => {
            let (h, m) = (h.parse().ok()?, m.parse().ok()?);
            // No year: the most recent such date not in the future (with a
            // day's slack for time zones), as ls prints dates within 6 months.
            let now_secs = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
            let year = year_of_days(now_secs.div_euclid(86_400));
            let this_year = utc(year, month, day, h, m, 0)?;
            if this_year > now + Duration::from_secs(86_400) {
                utc(year - 1, month, day, h, m, 0)
            } else {
                Some(this_year)
            }
        }
        None => utc(time_or_year.parse().ok()?, month, day, 0, 0, 0),
    };
    let name_start = words[at + 2].1;
    let mut name = line[name_start..].trim_start_matches([' ', '\t']);
    if kind == Kind::Other {
        // "link -> target"
        name = name.split(" -> ").next().unwrap_or(name);
    }
    if name.is_empty() {
        return None;
    }
    Some(Entry {
        name: name.to_owned(),
        kind,
        size,
        modified,
    })
}

/// `01-15-24  03:19PM       <DIR>          name` or `… 1234 name`.
fn parse_dos_list(line: &str) -> Option<Entry> {
    let mut parts = line.split_whitespace();
    let date = parts.next()?;
    let time = parts.next()?;
    let size_or_dir = parts.next()?;
    let (m, rest) = date.split_once('-')?;
    let (d, y) = rest.split_once('-')?;
    let (m, d, y): (u32, u32, i64) = (m.parse().ok()?, d.parse().ok()?, y.parse().ok()?);
    let y = match y {
        0..=69 => 2000 + y,
        70..=99 => 1900 + y,
        _ => y,
    };
    let upper = time.to_ascii_uppercase();
    let (clock, pm) = match (upper.strip_suffix("PM"), upper.strip_suffix("AM")) {
        (Some(c), _) => (c.to_owned(), true),
        (_, Some(c)) => (c.to_owned(), false),
        _ => return None,
    };
    let (h, mi) = clock.split_once(':')?;
    let (h, mi): (u32, u32) = (h.parse().ok()?, mi.parse().ok()?);
    let h = match (h, pm) {
        (12, false) => 0,
        (12, true) => 12,
        (h, true) => h + 12,
        (h, false) => h,
    };
    let (kind, size) = if size_or_dir.eq_ignore_ascii_case("<DIR>") {
        (Kind::Dir, 0)
    } else {
        (Kind::File, size_or_dir.replace(',', "").parse().ok()?)
    };
    // The name is everything after the size column, spaces included.
    let after = line.find(size_or_dir)? + size_or_dir.len();
    let name = line[after..].trim_start();
    if name.is_empty() {
        return None;
    }
    Some(Entry {
        name: name.to_owned(),
        kind,
        size,
        modified: utc(y, m, d, h, mi, 0),
    })
}

fn unix_time(secs: i64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(u64::try_from(secs).ok()?))
}

impl Session {
    fn what(&self, doing: &str, name: &str) -> String {
        format!("{doing} {name} in {}", self.inner.url())
    }

    /// The entry of a file or directory, `None` if there is none.
    async fn stat(&mut self, path: &str) -> Result<Option<Entry>> {
        let inner = Arc::clone(&self.inner);
        let what = || format!("reading the metadata of {path} in {}", inner.url());
        let abs = inner.abs(path);
        let abs = abs.as_str();
        if inner.use_mlst() {
            return match ftp!(self, |c| c.mlst(Some(abs))) {
                Ok(line) => match parse_mlsx(&line) {
                    Some(entry) => Ok(Some(entry)),
                    None => Err(Error::Other {
                        what: format!(
                            "reading the metadata of {path} in {}: cannot parse the MLST reply {line:?}",
                            inner.url()
                        ),
                        source: None,
                    }),
                },
                Err(e) if reply_code(&e) == Some(550) => Ok(None),
                Err(e) => Err(inner.error(Op::Read, what(), e)),
            };
        }
        let size = match ftp!(self, |c| c.size(abs)) {
            Ok(size) => size as u64,
            // 550 for a missing name and for a directory alike.
            Err(e) if reply_code(&e) == Some(550) => return Ok(None),
            Err(e) => return Err(inner.error(Op::Read, what(), e)),
        };
        let modified = match ftp!(self, |c| c.mdtm(abs)) {
            Ok(t) => unix_time(t.and_utc().timestamp()),
            Err(e) if reply_code(&e).is_some() => None,
            Err(e) => return Err(inner.error(Op::Read, what(), e)),
        };
        Ok(Some(Entry {
            name: path.to_owned(),
            kind: Kind::File,
            size,
            modified,
        }))
    }

    /// The entries of a directory below the storage directory ("" for
    /// itself), `None` if it does not exist.
    async fn read_dir(&mut self, dir: &str) -> Result<Option<Vec<Entry>>> {
        let inner = Arc::clone(&self.inner);
        let shown = if dir.is_empty() { "." } else { dir };
        let what = || format!("listing {shown} in {}", inner.url());
        let mlsd = inner.use_mlst();
        let arg = inner.abs_dir(dir);
        let lines = if mlsd {
            ftp!(self, |c| c.mlsd(arg.as_deref()))
        } else {
            // "./" keeps a relative name starting with '-' from reading as
            // ls options; the trailing '/' makes LIST of a file fail instead
            // of listing the file itself.
            let arg = arg.map(|d| match (d.starts_with('/'), d.ends_with('/')) {
                (_, true) => d,
                (true, false) => format!("{d}/"),
                (false, false) => format!("./{d}/"),
            });
            ftp!(self, |c| c.list(arg.as_deref()))
        };
        let lines = match lines {
            Ok(lines) => lines,
            // No such directory; 501 is MLSD's answer for a file.
            Err(e) if reply_code(&e) == Some(550) => return Ok(None),
            Err(e) if reply_code(&e) == Some(501) && !dir.is_empty() => return Ok(None),
            Err(e) => return Err(inner.error(Op::List, what(), e)),
        };
        let now = SystemTime::now();
        let mut entries = Vec::with_capacity(lines.len());
        for line in lines {
            let entry = if mlsd {
                parse_mlsx(&line).ok_or(())
            } else {
                match parse_list_line(&line, now) {
                    ListLine::Entry(e) => Ok(e),
                    ListLine::Ignored => continue,
                    ListLine::Unparsable => Err(()),
                }
            };
            // An object we cannot see could be pruned by nobody or uploaded
            // twice: refuse rather than list part of the directory.
            let entry = entry.map_err(|()| Error::Other {
                what: format!(
                    "{}: cannot parse the server's listing line {line:?}",
                    what()
                ),
                source: None,
            })?;
            if entry.name != "." && entry.name != ".." {
                entries.push(entry);
            }
        }
        Ok(Some(entries))
    }

    /// Creates the directories of `dir` ("a/b" makes "a" and "a/b"). Failures
    /// are only remembered: MKD of an existing directory fails too, and the
    /// STOR that follows tells whether the directory is there.
    async fn make_dirs(&mut self, dir: &str) -> Result<Option<Error>> {
        let mut failed = None;
        if dir.is_empty() {
            return Ok(None);
        }
        let mut end = 0;
        loop {
            end = dir[end..].find('/').map_or(dir.len(), |i| end + i);
            let sub = &dir[..end];
            let abs = self.inner.abs(sub);
            match ftp!(self, |c| c.mkdir(abs.as_str())) {
                Ok(()) => {}
                Err(e) if reply_code(&e).is_some() => {
                    failed = Some(self.inner.error(
                        Op::Write,
                        self.what("creating the directory", sub),
                        e,
                    ));
                }
                Err(e) => {
                    return Err(self.inner.error(
                        Op::Write,
                        self.what("creating the directory", sub),
                        e,
                    ))
                }
            }
            if end == dir.len() {
                return Ok(failed);
            }
            end += 1;
        }
    }

    /// DELE that succeeds when the file is gone already.
    async fn remove(&mut self, path: &str) -> Result<bool> {
        let abs = self.inner.abs(path);
        match ftp!(self, |c| c.rm(abs.as_str())) {
            Ok(()) => Ok(true),
            Err(e) if reply_code(&e) == Some(550) => match self.stat(path).await? {
                None => Ok(false),
                Some(_) => Err(self.inner.error(Op::Write, self.what("deleting", path), e)),
            },
            Err(e) => Err(self.inner.error(Op::Write, self.what("deleting", path), e)),
        }
    }

    /// Removes the directories `dir` and up that are left empty, as a local
    /// directory or an object store shows no "directory" without objects.
    async fn prune(&mut self, dir: &str) {
        let mut dir = dir;
        while !dir.is_empty() {
            // Fails as soon as a directory still holds something.
            let abs = self.inner.abs(dir);
            if ftp!(self, |c| c.rmdir(abs.as_str())).is_err() {
                return;
            }
            dir = split_name(dir).0;
        }
    }
}

/// Adds the entries of `dir` below `file_prefix` to `out` (recursively unless
/// `delimited`), like [`crate::LocalStorage`]'s listing.
async fn walk(
    session: &mut Session,
    dir: &str,
    file_prefix: &str,
    delimited: bool,
    out: &mut ListResult,
) -> Result<()> {
    // (directory "" or "a/b/", prefix of the file names wanted there)
    let mut pending = vec![(dir.to_owned(), file_prefix.to_owned())];
    while let Some((dir, file_prefix)) = pending.pop() {
        let Some(entries) = session.read_dir(dir.trim_end_matches('/')).await? else {
            continue; // the prefix names no directory, or it was deleted meanwhile
        };
        for entry in entries {
            if !entry.name.starts_with(file_prefix.as_str())
                || !is_valid_segment(&entry.name)
                || entry.name.contains(['/', '\\'])
            {
                continue;
            }
            let name = format!("{dir}{}", entry.name);
            match entry.kind {
                Kind::Dir if !delimited => pending.push((format!("{name}/"), String::new())),
                Kind::Dir => {
                    if holds_object(session, &name).await? {
                        out.prefixes.push(format!("{name}/"));
                    }
                }
                Kind::File => out.objects.push(ObjectMeta {
                    name,
                    size: entry.size,
                    modified: entry.modified,
                }),
                Kind::Other => {}
            }
        }
    }
    Ok(())
}

/// Whether a directory holds an object anywhere below it (not just the
/// temporary files of unfinished uploads); stops at the first.
async fn holds_object(session: &mut Session, dir: &str) -> Result<bool> {
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Some(entries) = session.read_dir(&dir).await? else {
            continue;
        };
        for entry in entries {
            if !is_valid_segment(&entry.name) || entry.name.contains(['/', '\\']) {
                continue;
            }
            match entry.kind {
                Kind::File => return Ok(true),
                Kind::Dir => pending.push(format!("{dir}/{}", entry.name)),
                Kind::Other => {}
            }
        }
    }
    Ok(false)
}

// ---------------------------------------------------------------------------
// The trait

impl FtpStorage {
    fn check_name(&self, name: &str) -> Result<()> {
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

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound {
            what: format!("object {name} in {self}"),
            source: None,
        }
    }
}

#[async_trait]
impl Storage for FtpStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_publish: true,
            // Checked right before RNTO, which replaces: not atomic.
            conditional_create: false,
            presign: false,
            capacity: false,
            rewrite_in_place: false,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        self.check_name(name)?;
        let (dir, base) = split_name(name);
        let temp = join(dir, &temp_name(base)?);
        let mut session = self.inner.session().await?;
        if opts.mode == PutMode::Create && session.stat(name).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: format!("object {name} in {self}"),
            });
        }
        // A concurrent delete may remove the directory we just made (it prunes
        // empty ones); making it again is enough.
        let mut attempts = 3;
        let transfer = loop {
            attempts -= 1;
            let mkd_failure = session.make_dirs(dir).await?;
            let abs = self.inner.abs(&temp);
            match ftp!(&mut session, |c| c.put_with_stream(abs.as_str())) {
                Ok(transfer) => break transfer,
                Err(e)
                    if matches!(reply_code(&e), Some(550 | 553))
                        && attempts > 0
                        && !dir.is_empty() =>
                {
                    continue
                }
                // The directory is missing: MKD's refusal says why.
                Err(e) if matches!(reply_code(&e), Some(550 | 553)) && mkd_failure.is_some() => {
                    return Err(mkd_failure.expect("checked"));
                }
                Err(e) => {
                    let what = format!("uploading {name} to {self}");
                    return Err(self.inner.error(Op::Write, what, e));
                }
            }
        };
        Ok(Box::new(FtpUpload {
            inner: Arc::clone(&self.inner),
            session: Some(session),
            transfer: Some(transfer),
            name: name.to_owned(),
            temp,
            mode: opts.mode,
            written: 0,
            broken: false,
            done: false,
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        let entry = match session.stat(name).await? {
            Some(entry) if entry.kind == Kind::File => entry,
            _ => return Err(self.not_found(name)),
        };
        let size = entry.size;
        let range = resolve_range(range, size, name, self)?;
        let meta = ObjectMeta {
            name: name.to_owned(),
            size,
            modified: entry.modified,
        };
        let len = range.end - range.start;
        if len == 0 {
            return Ok(GetResult {
                meta,
                range,
                reader: Box::new(tokio::io::empty()),
            });
        }
        if range.start > 0 {
            let offset = usize::try_from(range.start).expect("64-bit offsets");
            ftp!(&mut session, |c| c.resume_transfer(offset)).map_err(|e| {
                self.inner
                    .error(Op::Read, format!("reading {name} from {self}"), e)
            })?;
        }
        let abs = self.inner.abs(name);
        let transfer = match ftp!(&mut session, |c| c.retr_as_stream(abs.as_str())) {
            Ok(transfer) => transfer,
            Err(e) => {
                return Err(self
                    .inner
                    .error(Op::Read, format!("reading {name} from {self}"), e))
            }
        };
        // Until the download ends, the connection is the reader's.
        session.reusable = false;
        let download = Download {
            session: Some(session),
            transfer: Some(transfer),
            remaining: len,
            to_end: range.end == size,
            what: format!("reading {name} from {self}"),
        };
        Ok(GetResult {
            meta,
            range,
            reader: Box::new(tokio_util::io::StreamReader::new(download.into_stream())),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        match session.stat(name).await? {
            Some(entry) if entry.kind == Kind::File => Ok(ObjectMeta {
                name: name.to_owned(),
                size: entry.size,
                modified: entry.modified,
            }),
            _ => Err(self.not_found(name)),
        }
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        // Only the directory the prefix names can hold matches: "site/gw-"
        // lists entries of "site" starting with "gw-".
        let (dir, file_prefix) = match prefix.rfind('/') {
            Some(i) => prefix.split_at(i + 1),
            None => ("", prefix),
        };
        if !dir.is_empty() && !is_valid_name(&dir[..dir.len() - 1]) {
            return Ok(ListResult::default());
        }
        if file_prefix.contains(['\r', '\n', '\0']) {
            return Ok(ListResult::default());
        }
        let mut session = self.inner.session().await?;
        let mut out = ListResult::default();
        walk(&mut session, dir, file_prefix, delimited, &mut out).await?;
        out.objects.sort_by(|a, b| a.name.cmp(&b.name));
        out.prefixes.sort();
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        if session.remove(name).await? {
            session.prune(split_name(name).0).await;
        }
        Ok(())
    }

    async fn capacity(&self) -> Result<Capacity> {
        // FTP has no standard way to ask for free space.
        Ok(Capacity::default())
    }

    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what:
                "presigned URLs: ftp:// storage cannot presign; use `backup fetch` or an S3 backend"
                    .to_owned(),
        })
    }
}

// ---------------------------------------------------------------------------
// Uploads

struct FtpUpload {
    inner: Arc<Inner>,
    /// The control connection of the transfer; `None` once completed or aborted.
    session: Option<Session>,
    /// The data connection; `None` once closed.
    transfer: Option<Transfer>,
    name: String,
    temp: String,
    mode: PutMode,
    written: u64,
    /// A write failed or was cancelled: what the server holds is unknown.
    broken: bool,
    /// Completed or aborted: nothing for `Drop` to clean up.
    done: bool,
}

impl FtpUpload {
    fn what(&self) -> String {
        format!("uploading {} to {}", self.name, self.inner.url())
    }

    /// Why a write failed: a server that runs out of space says so on the
    /// control connection (452/552) and drops the data connection, which is
    /// all the write itself sees.
    async fn write_failure(&mut self, e: io::Error) -> Error {
        if let (Some(transfer), Some(session)) = (self.transfer.take(), self.session.as_mut()) {
            session.reusable = false;
            if let Ok(Err(reply @ FtpError::UnexpectedResponse(_))) =
                tokio::time::timeout(Duration::from_secs(2), transfer.finish()).await
            {
                return self.inner.error(Op::Write, self.what(), reply);
            }
        }
        self.inner
            .error(Op::Write, self.what(), FtpError::ConnectionError(e))
    }

    /// Closes the data connection, then publishes the temporary file.
    async fn publish(&mut self) -> Result<ObjectMeta> {
        let inner = Arc::clone(&self.inner);
        let what = self.what();
        let session = self.session.as_mut().expect("an upload completes once");
        let transfer = self.transfer.take().expect("an upload completes once");
        session.reusable = false;
        let finished = match tokio::time::timeout(inner.io_timeout, transfer.finish()).await {
            Ok(r) => r,
            Err(_) => Err(timed_out(inner.io_timeout)),
        };
        session.reusable = in_step(&finished);
        finished.map_err(|e| inner.error(Op::Write, what.clone(), e))?;

        // The server's size of the temporary file must be what we sent: a
        // transfer cut short by the server can still end in 226.
        let stored = session.stat(&self.temp).await?;
        let modified = match stored {
            Some(entry) if entry.size == self.written => entry.modified,
            other => {
                return Err(Error::Other {
                    what: format!(
                        "{what}: the server holds {} bytes of the {} sent; retry the upload",
                        other.map_or(0, |e| e.size),
                        self.written
                    ),
                    source: None,
                })
            }
        };
        if self.mode == PutMode::Create && session.stat(&self.name).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: format!("object {} in {}", self.name, inner.url()),
            });
        }
        let name = self.name.as_str();
        let (temp, target) = (inner.abs(&self.temp), inner.abs(name));
        let (temp, target) = (temp.as_str(), target.as_str());
        let renamed = ftp!(session, |c| c.rename(temp, target));
        if let Err(e) = renamed {
            // Servers that refuse to rename onto an existing file (RFC 959
            // leaves it open): replace it in two steps.
            let replaceable = matches!(reply_code(&e), Some(550 | 553))
                && self.mode == PutMode::Overwrite
                && session.stat(name).await?.is_some();
            if !replaceable {
                return Err(inner.error(Op::Write, what, e));
            }
            tracing::debug!(name, url = %inner.url(), "the server does not rename onto an existing file: deleting it first");
            session.remove(name).await?;
            ftp!(session, |c| c.rename(temp, target))
                .map_err(|e| inner.error(Op::Write, what.clone(), e))?;
        }
        Ok(ObjectMeta {
            name: self.name.clone(),
            size: self.written,
            modified,
        })
    }
}

/// Closes an upload's data connection and deletes its temporary file, on the
/// upload's own connection if it is still usable.
async fn discard(
    inner: Arc<Inner>,
    session: Option<Session>,
    transfer: Option<Transfer>,
    temp: String,
) -> Result<()> {
    let mut session = session;
    if let Some(transfer) = transfer {
        // Ending the data connection ends the STOR (the server keeps what it
        // got, under the temporary name); ABOR's replies differ between servers.
        let finished = tokio::time::timeout(inner.io_timeout, transfer.finish()).await;
        if let Some(s) = session.as_mut() {
            s.reusable = matches!(finished, Ok(ref r) if in_step(r));
        }
    }
    let mut session = match session {
        Some(s) if s.reusable => s,
        _ => inner.session().await?,
    };
    session.remove(&temp).await.map(drop)
}

#[async_trait]
impl Upload for FtpUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        if self.broken || self.transfer.is_none() {
            return Err(Error::Other {
                what: format!(
                    "{}: an earlier write failed or was cancelled; start the upload again",
                    self.what()
                ),
                source: None,
            });
        }
        if chunk.is_empty() {
            return Ok(());
        }
        let limit = self.inner.io_timeout;
        let transfer = self.transfer.as_mut().expect("checked above");
        self.broken = true;
        match tokio::time::timeout(limit, transfer.write_all(&chunk)).await {
            Ok(Ok(())) => {
                self.broken = false;
                self.written += chunk.len() as u64;
                Ok(())
            }
            Ok(Err(e)) => Err(self.write_failure(e).await),
            Err(_) => Err(self.inner.error(Op::Write, self.what(), timed_out(limit))),
        }
    }

    async fn complete(mut self: Box<Self>) -> Result<ObjectMeta> {
        if self.broken || self.transfer.is_none() {
            return Err(Error::Other {
                what: format!(
                    "{}: a write failed or was cancelled; start the upload again",
                    self.what()
                ),
                source: None,
            });
        }
        let published = self.publish().await;
        self.done = true;
        if published.is_err() {
            let (inner, session, transfer) = (
                Arc::clone(&self.inner),
                self.session.take(),
                self.transfer.take(),
            );
            if let Err(e) = discard(inner, session, transfer, self.temp.clone()).await {
                tracing::warn!(temp = %self.temp, url = %self.inner.url(), error = %e, "could not remove the temporary file of a failed upload");
            }
        }
        published
    }

    async fn abort(mut self: Box<Self>) -> Result<()> {
        self.done = true;
        let (inner, session, transfer) = (
            Arc::clone(&self.inner),
            self.session.take(),
            self.transfer.take(),
        );
        discard(inner, session, transfer, self.temp.clone())
            .await
            .map_err(|e| Error::Other {
                what: format!(
                    "{}: removing the temporary file {} (hidden from listings)",
                    self.what(),
                    self.temp
                ),
                source: Some(Box::new(e)),
            })
    }
}

impl Drop for FtpUpload {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Neither completed nor aborted (an error path, a cancelled task):
        // clean up in the background, best effort. The temporary file is
        // hidden from listings meanwhile, and if this fails.
        let (inner, session, transfer) = (
            Arc::clone(&self.inner),
            self.session.take(),
            self.transfer.take(),
        );
        let temp = std::mem::take(&mut self.temp);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    let url = inner.url().to_owned();
                    if let Err(e) = discard(inner, session, transfer, temp.clone()).await {
                        tracing::warn!(%temp, %url, error = %e, "could not remove the temporary file of an abandoned upload");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%temp, url = %inner.url(), "an upload was abandoned outside a runtime: its temporary file stays (hidden)");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Downloads

/// A RETR in progress, read in chunks by the caller's reader.
struct Download {
    session: Option<Session>,
    transfer: Option<Transfer>,
    remaining: u64,
    /// The range runs to the end of the object: read the server's 226 after it.
    to_end: bool,
    what: String,
}

impl Download {
    fn into_stream(self) -> Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>> {
        Box::pin(futures::stream::unfold(Some(self), |state| async move {
            let mut download = state?;
            match download.next_chunk().await {
                Ok(Some(chunk)) => Some((Ok(chunk), Some(download))),
                Ok(None) => None,
                Err(e) => Some((Err(e), None)),
            }
        }))
    }

    fn io_error(&self, kind: io::ErrorKind, detail: impl fmt::Display) -> io::Error {
        io::Error::new(kind, format!("{}: {detail}", self.what))
    }

    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        let limit = self
            .session
            .as_ref()
            .map_or(IO_TIMEOUT, |s| s.inner.io_timeout);
        if self.remaining == 0 {
            self.finish(limit).await?;
            return Ok(None);
        }
        let transfer = self.transfer.as_mut().expect("reading until finished");
        let want = self.remaining.min(READ_CHUNK as u64);
        let mut buf = BytesMut::with_capacity(want as usize);
        let read =
            tokio::time::timeout(limit, (&mut *transfer).take(want).read_buf(&mut buf)).await;
        match read {
            Ok(Ok(0)) => Err(self.io_error(
                io::ErrorKind::UnexpectedEof,
                format_args!(
                    "the server closed the data connection with {} bytes still to come; retry",
                    self.remaining
                ),
            )),
            Ok(Ok(n)) => {
                self.remaining -= n as u64;
                Ok(Some(buf.freeze()))
            }
            Ok(Err(e)) => Err(self.io_error(e.kind(), e)),
            Err(_) => Err(self.io_error(
                io::ErrorKind::TimedOut,
                format_args!(
                    "no data from the server within {} s; retry",
                    limit.as_secs()
                ),
            )),
        }
    }

    async fn finish(&mut self, limit: Duration) -> io::Result<()> {
        let (Some(mut session), Some(transfer)) = (self.session.take(), self.transfer.take())
        else {
            return Ok(());
        };
        if self.to_end {
            // All bytes are here; the 226 says the server sent the whole file.
            let finished = match tokio::time::timeout(limit, transfer.finish()).await {
                Ok(r) => r,
                Err(_) => Err(timed_out(limit)),
            };
            session.reusable = in_step(&finished);
            return finished.map_err(|e| self.io_error(io::ErrorKind::Other, e));
        }
        // The range ends before the file: stop the rest. The abort's replies
        // differ between servers (and with the timing), so the connection is
        // not reused.
        session.reusable = false;
        if let Some(client) = session.client.as_mut() {
            let _ = tokio::time::timeout(limit, client.abort(transfer)).await;
        }
        Ok(())
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        let (Some(mut session), Some(transfer)) = (self.session.take(), self.transfer.take())
        else {
            return;
        };
        // Dropped before the end: ABOR in the background, then close.
        session.reusable = false;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let limit = session.inner.io_timeout;
                if let Some(client) = session.client.as_mut() {
                    let _ = tokio::time::timeout(limit, client.abort(transfer)).await;
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let url = parse_url("ftp://backup@nas.example:2121/backups/gw").unwrap();
        assert_eq!(
            url,
            FtpUrl {
                tls: false,
                host: "nas.example".into(),
                port: 2121,
                user: "backup".into(),
                dir: "backups/gw".into(),
            }
        );
        let url = parse_url("FTPS://backup@nas.example").unwrap();
        assert!(url.tls);
        assert_eq!(
            (url.port, url.dir.as_str()),
            (21, ""),
            "explicit TLS: port 21"
        );
        let url = parse_url("ftp://backup@nas/").unwrap();
        assert_eq!(url.dir, "");
        let url = parse_url("ftp://b%40corp@[::1]:21/%2Fsrv/my%20backups/").unwrap();
        assert_eq!(url.user, "b@corp");
        assert_eq!(url.host, "::1");
        assert_eq!(url.dir, "/srv/my backups", "%2F makes the path absolute");
        let url = parse_url("ftp://backup@[::1]/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 21));

        for (bad, why) in [
            ("ftp://backup:s3cret@nas/x", "password"),
            ("ftp://backup:@nas/x", "password"),
            ("ftp://nas/x", "no FTP user"),
            ("ftp://@nas/x", "no FTP user"),
            ("ftp://backup@/x", "no host"),
            ("ftp://backup@nas:0/x", "port"),
            ("ftp://backup@nas:99999/x", "port"),
            ("ftp://backup@nas:ftp/x", "port"),
            ("ftp://backup@nas/x?y", "query"),
            ("ftp://backup@nas/a%0Ab", "line breaks"),
            ("ftp://backup@nas/a%zz", "two hex digits"),
            ("ftp://backup@[::1/x", "']'"),
            ("sftp://backup@nas/x", "not an FTP URL"),
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_repeating_it() {
        let err = FtpStorage::from_url("ftp://backup:s3cret@nas:21/x").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(!format!("{err:?}").contains("s3cret"));
        assert!(
            msg.contains("~/.netrc") && msg.contains(PASSWORD_VAR),
            "{msg}"
        );
    }

    #[test]
    fn display_and_debug_show_no_password() {
        let store = FtpStorage::builder()
            .host("127.0.0.1")
            .port(2121)
            .user("backup")
            .password("s3cret")
            .path("/srv/my backups")
            .build()
            .unwrap();
        assert_eq!(
            store.to_string(),
            "ftp://backup@127.0.0.1:2121/%2Fsrv/my%20backups"
        );
        assert!(!format!("{store:?}").contains("s3cret"));
        let builder = FtpStorage::builder().password("s3cret");
        assert!(!format!("{builder:?}").contains("s3cret"));
        let store = FtpStorage::builder()
            .host("::1")
            .user("u")
            .password("p")
            .path("backups/")
            .build()
            .unwrap();
        assert_eq!(store.to_string(), "ftp://u@[::1]:21/backups");
    }

    const NETRC: &str = r#"
# A comment: machine nas.example login backup password commented-out
machine other.example login backup password other-pw
machine NAS.example
    login someone-else password not-ours
machine nas.example login backup password "pass word \"quoted\""  # trailing comment
macdef init
    machine nas.example login backup password in-a-macro

machine old.example login backup
    account acct password old-pw
default login backup password default-pw
"#;

    #[test]
    fn netrc_entries_match_host_and_login() {
        assert_eq!(
            netrc_password(NETRC, "nas.example", "backup").as_deref(),
            Some(r#"pass word "quoted""#)
        );
        assert_eq!(
            netrc_password(NETRC, "nas.example", "someone-else").as_deref(),
            Some("not-ours"),
            "host names match case-insensitively"
        );
        assert_eq!(
            netrc_password(NETRC, "old.example", "backup").as_deref(),
            Some("old-pw"),
            "account values are skipped"
        );
        assert_eq!(
            netrc_password(NETRC, "unknown.example", "backup").as_deref(),
            Some("default-pw")
        );
        assert_eq!(netrc_password(NETRC, "unknown.example", "root"), None);
        // A machine entry without login serves any user.
        assert_eq!(
            netrc_password("machine h password pw", "h", "anyone").as_deref(),
            Some("pw")
        );
        // A macro body ends at the first empty line; what follows counts.
        let text =
            "macdef m\nmachine h login u password macro\n\nmachine h login u password real\n";
        assert_eq!(netrc_password(text, "h", "u").as_deref(), Some("real"));
        assert_eq!(netrc_password("", "h", "u"), None);
        assert_eq!(netrc_password("machine h login u", "h", "u"), None);
    }

    #[test]
    fn mlsd_lines() {
        // Recorded from pure-ftpd 1.0.50 (the name has a space).
        let e = parse_mlsx(
            "type=file;size=3;modify=20261122040239;UNIX.mode=0644;UNIX.uid=999;UNIX.gid=995;unique=fe00gc2ace; a b.bkp",
        )
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("a b.bkp", Kind::File, 3)
        );
        assert_eq!(e.modified, utc(2026, 11, 22, 4, 2, 39));
        let e = parse_mlsx(
            "type=pdir;sizd=4096;modify=20261122040239;UNIX.mode=0755;UNIX.uid=999;UNIX.gid=995;unique=fe00gc2090; ..",
        )
        .unwrap();
        assert_eq!(e.kind, Kind::Other);
        let e = parse_mlsx(
            "type=file;size=1234;modify=20240105120030;UNIX.mode=0644;UNIX.uid=1000;UNIX.gid=1000;unique=803g4a1; gw 1.bkp",
        )
        .unwrap();
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("gw 1.bkp", Kind::File, 1234)
        );
        assert_eq!(e.modified, utc(2024, 1, 5, 12, 0, 30));
        let e = parse_mlsx("type=dir;modify=20240105120030.5;perm=flcdmpe; site").unwrap();
        assert_eq!((e.name.as_str(), e.kind), ("site", Kind::Dir));
        assert_eq!(
            e.modified,
            utc(2024, 1, 5, 12, 0, 30).map(|t| t + Duration::from_millis(500))
        );
        assert_eq!(
            parse_mlsx("type=cdir;modify=20240105120030; .")
                .unwrap()
                .kind,
            Kind::Other
        );
        assert_eq!(
            parse_mlsx("type=OS.unix=slink:/etc;modify=20240105120030; link")
                .unwrap()
                .kind,
            Kind::Other
        );
        assert_eq!(parse_mlsx(" bare name").unwrap().name, "bare name");
        assert_eq!(parse_mlsx("Type=File;Size=7; a;b").unwrap().name, "a;b");
        assert!(parse_mlsx("type=file;size=x; a").is_none());
        assert!(parse_mlsx("garbage").is_none());
    }

    #[test]
    fn list_lines_of_common_servers() {
        // 2024-06-15 12:00:00 UTC
        let now = utc(2024, 6, 15, 12, 0, 0).unwrap();
        let entry = |line: &str| match parse_list_line(line, now) {
            ListLine::Entry(e) => e,
            other => panic!("{line:?}: {other:?}"),
        };
        // Recorded from pure-ftpd 1.0.50 (Debian 12), a name with a space.
        let e = entry("-rw-r--r--    1 999        backupftp           3 Jun 10 04:02 a b.bkp");
        assert_eq!(
            (e.name.as_str(), e.kind, e.size),
            ("a b.bkp", Kind::File, 3)
        );
        assert_eq!(e.modified, utc(2024, 6, 10, 4, 2, 0));
        let e = entry("drwxr-xr-x    2 999        backupftp        4096 Jun 10 04:02 d");
        assert_eq!((e.name.as_str(), e.kind), ("d", Kind::Dir));
        // Recorded from vsftpd 3.0.3 (Debian 12): numeric ids, a symlink,
        // dates with a year, a name with a space.
        let e = entry("-rw-r--r--    1 0        0              42 Jun 15 04:16 gw-1.bkp");
        assert_eq!((e.name.as_str(), e.size), ("gw-1.bkp", 42));
        assert_eq!(e.modified, utc(2024, 6, 15, 4, 16, 0));
        let e = entry("lrwxrwxrwx    1 0        0               8 Jun 15 04:16 latest -> gw-1.bkp");
        assert_eq!((e.name.as_str(), e.kind), ("latest", Kind::Other));
        let e = entry("-rw-r--r--    1 0        0        16777217 Dec 31  2023 my backup.bkp");
        assert_eq!((e.name.as_str(), e.size), ("my backup.bkp", 16_777_217));
        assert_eq!(e.modified, utc(2023, 12, 31, 0, 0, 0));
        let e = entry("drwxr-xr-x    2 0        0            4096 Jan 02  2023 site");
        assert_eq!((e.name.as_str(), e.kind), ("site", Kind::Dir));
        assert_eq!(e.modified, utc(2023, 1, 2, 0, 0, 0));
        // libunftp 0.24 (unftp-core's format: wide columns, numeric ids).
        let e = entry(
            "-rw-r--r--            1            0            0       100003 Jun 15 11:59 ranged.bin",
        );
        assert_eq!((e.name.as_str(), e.size), ("ranged.bin", 100_003));
        // An hour and minute, no year: the last such date not in the future.
        let e = entry("-rw-------    1 1001     1001     16777217 Dec 31 23:59 old.bkp");
        assert_eq!(e.modified, utc(2023, 12, 31, 23, 59, 0));
        // proftpd's format (owner names, an ACL mark): not recorded, as
        // proftpd-basic does not install on this Debian image.
        let e = entry("-rw-r--r--+  1 backup   backup          7 Mar  3 01:02 x.bkp");
        assert_eq!((e.name.as_str(), e.size), ("x.bkp", 7));
        // No group column (some embedded servers).
        let e = entry("-rw-r--r-- 1 owner 5 Feb 29 2024 leap.bkp");
        assert_eq!((e.name.as_str(), e.size), ("leap.bkp", 5));
        // DOS / IIS
        let e = entry("01-15-24  03:19PM       <DIR>          some dir");
        assert_eq!((e.name.as_str(), e.kind), ("some dir", Kind::Dir));
        assert_eq!(e.modified, utc(2024, 1, 15, 15, 19, 0));
        let e = entry("12-01-23  12:05AM              1,234 file.bkp");
        assert_eq!((e.name.as_str(), e.size), ("file.bkp", 1234));
        assert_eq!(e.modified, utc(2023, 12, 1, 0, 5, 0));

        assert_eq!(parse_list_line("total 12", now), ListLine::Ignored);
        assert_eq!(parse_list_line("", now), ListLine::Ignored);
        assert_eq!(
            parse_list_line("something else entirely", now),
            ListLine::Unparsable
        );
    }

    #[test]
    fn calendar() {
        assert_eq!(utc(1970, 1, 1, 0, 0, 0), Some(SystemTime::UNIX_EPOCH));
        let t = utc(2024, 2, 29, 1, 2, 3).unwrap();
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
        assert_eq!(secs, 1_709_168_523);
        for (y, m, d) in [(1999, 12, 31), (2000, 1, 1), (2024, 3, 1), (2100, 7, 4)] {
            assert_eq!(year_of_days(days_from_civil(y, m, d)), y);
        }
        assert_eq!(utc(2024, 13, 1, 0, 0, 0), None);
    }

    #[test]
    fn names() {
        assert!(is_valid_name("site/gw-1.bkp"));
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "a\nb",
            "a\rb",
            ".x.partial-0",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        let temp = temp_name("gw.bkp").unwrap();
        assert!(
            is_temp_name(&temp) && temp.starts_with(".gw.bkp.partial-"),
            "{temp}"
        );
        assert_eq!(split_name("a/b/c"), ("a/b", "c"));
        assert_eq!(split_name("c"), ("", "c"));
    }
}
