//! What an [`FtpStorage`] and its sessions, uploads and downloads share: the
//! connection settings, the idle pool, the limits. Every other module of the
//! backend builds on this one; it imports none of them.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use suppaftp::tokio::{AsyncRustlsStream, ImplAsyncFtpStream, TransferStream};
use suppaftp::tokio_rustls::rustls;

/// One control connection; plain FTP uses the same type without TLS.
pub(super) type Client = ImplAsyncFtpStream<AsyncRustlsStream>;
/// The data connection of one transfer.
pub(super) type Transfer = TransferStream<AsyncRustlsStream>;

/// Connecting, TLS and login together: an unreachable or silent server fails
/// in bounded time.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// One command's reply, or progress on a data connection.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle control connections kept for reuse.
pub(super) const MAX_IDLE: usize = 8;
/// An idle connection older than this is checked with NOOP before reuse:
/// servers drop idle sessions (pure-ftpd after 15 minutes, some much sooner).
pub(super) const CHECK_AFTER_IDLE: Duration = Duration::from_secs(15);
/// Bytes read from a data connection at a time.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// The environment variable that holds the password.
pub(super) const PASSWORD_VAR: &str = "BACKUP_FTP_PASSWORD";

/// An FTP server directory (`ftp://user@host:port/path`, or `ftps://` for
/// explicit TLS).
///
/// Build it from a URL with [`FtpStorage::from_url`] (password from
/// `BACKUP_FTP_PASSWORD` or `~/.netrc`), or with [`FtpStorage::builder`].
/// Operations run concurrently, each on a control connection of its own from a
/// small pool; an upload or a download holds its connection until it ends.
#[derive(Clone)]
pub struct FtpStorage {
    pub(super) inner: Arc<Inner>,
}

/// A password that never shows in `Debug` output.
#[derive(Clone)]
pub(super) struct Password(pub(super) String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

pub(super) struct Inner {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) password: Password,
    /// `CWD` argument of the storage directory; empty for the login directory.
    pub(super) dir: String,
    /// `ftp://user@host:port/path`, for messages.
    pub(super) shown: String,
    pub(super) tls: Option<Tls>,
    pub(super) force_list: bool,
    pub(super) connect_timeout: Duration,
    pub(super) io_timeout: Duration,
    /// Whether the server has MLST/MLSD, learnt from FEAT on the first login.
    pub(super) mlst: OnceLock<bool>,
    /// The storage directory's absolute path with a trailing '/', from PWD
    /// on the first login; empty where PWD says no absolute path. Commands
    /// name absolute paths, as some servers resolve a relative argument
    /// against the root instead of the working directory (libunftp's MLST).
    pub(super) prefix: OnceLock<String>,
    pub(super) idle: Mutex<Vec<Idle>>,
}

pub(super) struct Tls {
    pub(super) config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry (the URL's host).
    pub(super) server_name: String,
}

pub(super) struct Idle {
    pub(super) client: Client,
    pub(super) since: Instant,
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

impl Inner {
    pub(super) fn url(&self) -> &str {
        &self.shown
    }
}
