//! Logged-in control connections: the idle pool, connecting, and the
//! `ftp!` macro that runs one command with the I/O time limit.

use std::io;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use suppaftp::tokio::AsyncRustlsConnector;
use suppaftp::tokio_rustls;
use suppaftp::types::FileType;
use suppaftp::{FtpError, Mode};
use tokio::io::ReadBuf;

use super::core::{Client, Idle, Inner, CHECK_AFTER_IDLE, MAX_IDLE};
use super::error::{connection_error, Op};
use crate::{Error, Result};

/// A control connection lent by the pool; it goes back on drop unless a
/// command on it failed below the replies or was cancelled half-way.
pub(super) struct Session {
    pub(super) inner: Arc<Inner>,
    pub(super) client: Option<Client>,
    pub(super) reusable: bool,
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
        let session: &mut $crate::ftp::pool::Session = $session;
        let limit = session.inner.io_timeout;
        session.reusable = false;
        let $c = session
            .client
            .as_mut()
            .expect("a session holds a connection");
        let result = match tokio::time::timeout(limit, $call).await {
            Ok(result) => result,
            Err(_) => Err($crate::ftp::error::timed_out(limit)),
        };
        session.reusable = $crate::ftp::error::in_step(&result);
        result
    }};
}
pub(super) use ftp;

impl Inner {
    /// A logged-in control connection in the storage directory: an idle one
    /// that is still alive, or a new one.
    pub(super) async fn session(self: &Arc<Self>) -> Result<Session> {
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

    pub(super) async fn connect(&self) -> Result<Client> {
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
    pub(super) fn abs(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix.get().map_or("", String::as_str))
    }

    /// The path to send for a directory relative to the storage directory
    /// ("" for itself); `None` for the working directory.
    pub(super) fn abs_dir(&self, rel: &str) -> Option<String> {
        let path = self.abs(rel);
        match path.trim_end_matches('/') {
            "" if path.is_empty() => None,
            "" => Some("/".to_owned()),
            trimmed => Some(trimmed.to_owned()),
        }
    }

    pub(super) fn use_mlst(&self) -> bool {
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
