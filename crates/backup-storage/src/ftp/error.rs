//! FTP replies and connection failures mapped to [`crate::Error`].

use std::io;
use std::time::Duration;

use suppaftp::FtpError;

use super::core::{Inner, PASSWORD_VAR};
use crate::Error;

/// What was being done, for mapping a reply code to a meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
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

pub(super) fn reply_code(e: &FtpError) -> Option<u32> {
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
    pub(super) fn error(&self, op: Op, what: String, e: FtpError) -> Error {
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
}

/// A failure below the FTP replies: I/O, TLS, protocol.
pub(super) fn connection_error(what: String, op: Op, source: crate::BoxError) -> Error {
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

pub(super) fn timed_out(limit: Duration) -> FtpError {
    FtpError::ConnectionError(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no answer from the FTP server within {} s", limit.as_secs()),
    ))
}

/// Whether the control connection is still in step after this result.
pub(super) fn in_step<T>(r: &std::result::Result<T, FtpError>) -> bool {
    match r {
        Ok(_) => true,
        // 421: the server is closing the connection.
        Err(FtpError::UnexpectedResponse(resp)) => resp.status.code() != 421,
        Err(_) => false,
    }
}
