/// A boxed error source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Storage errors, by meaning. Each keeps the backend's own error as `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No object (or bucket, or directory) of that name.
    #[error("not found: {what}")]
    NotFound {
        /// What was missing.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// [`crate::PutMode::Create`] on an existing name.
    #[error("already exists: {what}")]
    AlreadyExists {
        /// The name.
        what: String,
    },
    /// The credentials are valid but may not do this.
    #[error("permission denied: {what}")]
    PermissionDenied {
        /// What was refused.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The credentials were rejected.
    #[error("authentication failed: {what}")]
    Unauthenticated {
        /// Where.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The storage is full (or over quota).
    #[error("no space left on the storage: {what}")]
    NoSpace {
        /// Where.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The backend cannot do this at all.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is not supported.
        what: String,
    },
    /// A storage URL that cannot be used.
    #[error("invalid storage URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL (credentials removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// A failure worth retrying (connection reset, timeout, 5xx, FTP 4xx).
    #[error("temporary failure: {what}")]
    Transient {
        /// What failed.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Anything else.
    #[error("{what}")]
    Other {
        /// What failed.
        what: String,
        /// The backend's error.
        #[source]
        source: Option<BoxError>,
    },
}

impl Error {
    /// An upload that cannot be completed because one of its writes failed
    /// or it was cancelled (`what`: the upload, "writing gw-1.bkp to …").
    pub(crate) fn upload_broken(what: impl std::fmt::Display) -> Error {
        Error::Other {
            what: format!("{what}: a write failed or was cancelled; start the upload again"),
            source: None,
        }
    }

    /// Whether retrying the same operation may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// Maps an I/O error by its kind (`ENOSPC`/`EDQUOT` → [`Error::NoSpace`],
    /// `ENOENT` → [`Error::NotFound`], `EACCES`/`EPERM` →
    /// [`Error::PermissionDenied`], timeouts and resets → [`Error::Transient`]).
    ///
    /// `what` says what was being done, and where ("writing gw-1.bkp to
    /// file:///srv/backups"); the message adds what the operator can do about it.
    pub fn from_io(what: impl Into<String>, e: std::io::Error) -> Error {
        let what = what.into();
        let kind = IoClass::of(&e);
        let source = Some(Box::new(e) as BoxError);
        match kind {
            IoClass::NoSpace => Error::NoSpace {
                what: format!("{what}: free space on the storage or prune old images"),
                source,
            },
            IoClass::NotFound => Error::NotFound { what, source },
            IoClass::PermissionDenied => Error::PermissionDenied {
                what: format!(
                    "{what}: check that the user running the backup may write there \
                     (owner and mode of the directory, read-only mount)"
                ),
                source,
            },
            IoClass::Transient => Error::Transient {
                what: format!(
                    "{what}: retry; if it persists, check the network and the storage server"
                ),
                source,
            },
            IoClass::Other => Error::Other { what, source },
        }
    }
}

/// The meaning of an I/O error, decided before the error is moved into `source`.
enum IoClass {
    NoSpace,
    NotFound,
    PermissionDenied,
    Transient,
    Other,
}

impl IoClass {
    fn of(e: &std::io::Error) -> IoClass {
        use std::io::ErrorKind as K;
        // The errno comes first: several of these share `ErrorKind::Other`-like
        // kinds on older toolchains, and ESTALE (NFS) has no stable kind at all.
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => return IoClass::NoSpace,
            Some(libc::EPERM | libc::EACCES | libc::EROFS) => return IoClass::PermissionDenied,
            Some(libc::ENOENT) => return IoClass::NotFound,
            Some(
                libc::ESTALE
                | libc::ETIMEDOUT
                | libc::ECONNRESET
                | libc::ECONNABORTED
                | libc::EINTR
                | libc::EPIPE,
            ) => return IoClass::Transient,
            _ => {}
        }
        match e.kind() {
            K::NotFound => IoClass::NotFound,
            K::PermissionDenied => IoClass::PermissionDenied,
            K::TimedOut
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::Interrupted
            | K::BrokenPipe => IoClass::Transient,
            _ => IoClass::Other,
        }
    }
}

/// An error and its sources, on one line (`what: why: root cause`).
#[cfg_attr(not(any(feature = "s3", feature = "conformance")), allow(dead_code))]
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;
    use std::io;

    use super::*;

    fn os(errno: i32) -> Error {
        Error::from_io("writing x", io::Error::from_raw_os_error(errno))
    }

    #[test]
    fn io_errors_map_by_meaning() {
        assert!(matches!(os(libc::ENOSPC), Error::NoSpace { .. }));
        assert!(matches!(os(libc::EDQUOT), Error::NoSpace { .. }));
        assert!(matches!(os(libc::ENOENT), Error::NotFound { .. }));
        assert!(matches!(os(libc::EACCES), Error::PermissionDenied { .. }));
        assert!(matches!(os(libc::EPERM), Error::PermissionDenied { .. }));
        assert!(matches!(os(libc::EROFS), Error::PermissionDenied { .. }));
        for errno in [
            libc::ESTALE,
            libc::ETIMEDOUT,
            libc::ECONNRESET,
            libc::ECONNABORTED,
            libc::EINTR,
            libc::EPIPE,
        ] {
            assert!(os(errno).is_transient(), "errno {errno}");
        }
        assert!(matches!(os(libc::EIO), Error::Other { .. }));
        // Errors made by code rather than the kernel map by kind.
        let e = Error::from_io("x", io::Error::new(io::ErrorKind::TimedOut, "slow"));
        assert!(e.is_transient());
        let e = Error::from_io("x", io::Error::new(io::ErrorKind::NotFound, "gone"));
        assert!(matches!(e, Error::NotFound { .. }));
    }

    #[test]
    fn messages_say_what_to_do_and_keep_the_source() {
        let e = os(libc::ENOSPC);
        let msg = e.to_string();
        assert!(
            msg.starts_with("no space left on the storage: writing x"),
            "{msg}"
        );
        assert!(msg.contains("prune old images"), "{msg}");
        let source = e.source().expect("source kept");
        assert_eq!(
            source
                .downcast_ref::<io::Error>()
                .and_then(io::Error::raw_os_error),
            Some(libc::ENOSPC)
        );
        assert!(os(libc::EACCES).to_string().contains("may write there"));
    }
}
