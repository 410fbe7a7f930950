use std::path::PathBuf;

/// Everything the engine can fail with, by meaning.
///
/// [`Error::kind`] sorts every error into one [`ErrorKind`]; frontends derive
/// their exit codes, audit outcomes and status codes from it, and
/// [`Error::name`] is a stable identifier of the specific error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration file is missing, unreadable or invalid.
    #[error("configuration {path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A request that cannot be carried out as asked (unknown component,
    /// missing requirement, conflicting options).
    #[error("{0}")]
    Input(String),
    /// Something the request names is not there (an image file, a backup's
    /// log).
    #[error("{0}")]
    NotFound(String),
    /// The image was made by another product version.
    #[error("the image was made by {product} version {image}; this appliance runs version {running} — restore it on {image} or pass --force-version")]
    VersionMismatch {
        /// Product name.
        product: String,
        /// Version recorded in the image.
        image: String,
        /// Version of this appliance.
        running: String,
    },
    /// The image belongs to another node (or another product).
    #[error("the image belongs to node {image_node:?} ({image_product}); this appliance is node {our_node:?} ({our_product}) — a backup is not an export: restore it on its own node, or pass --force-identity")]
    IdentityMismatch {
        /// Node in the image.
        image_node: String,
        /// Product in the image.
        image_product: String,
        /// Our node.
        our_node: String,
        /// Our product.
        our_product: String,
    },
    /// The archive holds an entry that could write outside its component.
    #[error(
        "unsafe archive entry {entry:?}: {reason}; the image was rejected and nothing was restored"
    )]
    UnsafeArchive {
        /// The entry path as stored.
        entry: String,
        /// Why it was rejected.
        reason: String,
    },
    /// The image decrypted but its content is not a valid backup (missing or
    /// mismatching manifest, checksum mismatch, unexpected entries).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// The stored image's size differs from the size its sidecar manifest
    /// recorded when it was written: cut short by an incomplete upload or
    /// copy, or grown.
    #[error("{}", image_size_message(*size, *expected))]
    ImageSize {
        /// Bytes stored now.
        size: u64,
        /// Bytes written when the image was made.
        expected: u64,
    },
    /// A component failed and `--halt` was requested: nothing was published.
    #[error("component {component} failed: {reason}; --halt was given, so nothing was published")]
    Halted {
        /// The component.
        component: String,
        /// Its error.
        reason: String,
    },
    /// Every selected component failed: nothing was published.
    #[error("every selected component failed, nothing was published: {0}")]
    AllComponentsFailed(String),
    /// The domain master secret was already set: the state directory holds a
    /// keyring or a master key file (the path names which).
    #[error("{}", already_initialized(.0))]
    AlreadyInitialized(PathBuf),
    /// No keyring/master key: `backup init` has not run.
    #[error("no master key in {0}: run `backup init` first to set the domain master secret")]
    NotInitialized(PathBuf),
    /// A passphrase was needed but none could be obtained.
    #[error("a passphrase is needed to {0}: set BACKUP_SECRET, pass --secret-file FILE, or run on a terminal to be asked")]
    PassphraseRequired(String),
    /// No storage is configured where one is needed.
    #[error("no storage is configured ([storage] url = \"none\"): {0}")]
    NoStorage(String),
    /// Restoring a component failed while putting it into place.
    #[error("restoring component {component} failed: {reason}")]
    RestoreFailed {
        /// The component.
        component: String,
        /// What went wrong (and what was rolled back).
        reason: String,
    },
    /// The file systems a restore would stage on lack the room for the
    /// selected components: refused before anything was written. Holds the
    /// table (component, file system, needed, free).
    #[error("not enough free space to stage the restore; nothing was written:\n{0}\nfree space on the file system marked, restore fewer components (--component), or restore under --target on a larger file system")]
    NoRoom(String),
    /// Another backup or restore holds the lock; this one was skipped.
    #[error("skipped: {0}")]
    Busy(String),
    /// Refused before reading any component: the storage lacks room or access.
    #[error("preflight refused the backup: {0}")]
    Preflight(String),
    /// A hook command failed.
    #[error("the {hook} hook failed: {reason}")]
    Hook {
        /// `before`, `after` or `on_failure`.
        hook: String,
        /// Its exit status and output.
        reason: String,
    },
    /// Encryption format errors (wrong passphrase, corrupted or truncated image, …).
    #[error(transparent)]
    Crypto(#[from] backup_crypto::Error),
    /// Storage errors (not found, no space, authentication, …).
    #[error(transparent)]
    Storage(#[from] backup_storage::Error),
    /// A local file system operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, to which path.
        what: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// What kind of failure an [`Error`] is: the one classification that exit
/// codes, audit outcomes and status codes are derived from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request cannot be carried out as asked (unknown component, bad
    /// option, missing or too short passphrase): the caller fixes it.
    Input,
    /// The configuration or the appliance's setup is wrong or incomplete
    /// (invalid file, invalid storage URL, no storage, not initialised).
    Config,
    /// Something the request names does not exist (an image, a log).
    NotFound,
    /// The request conflicts with the state there is (the domain master
    /// secret is already set).
    Conflict,
    /// The engine refused to act to protect the appliance (another version
    /// or node, an unsafe archive, a preflight check).
    Refused,
    /// Another operation holds the lock; this one was skipped.
    Busy,
    /// The operation ran and failed.
    Failed,
}

impl ErrorKind {
    /// The kind in snake case (`input`, `not_found`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Input => "input",
            ErrorKind::Config => "config",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Refused => "refused",
            ErrorKind::Busy => "busy",
            ErrorKind::Failed => "failed",
        }
    }

    /// Whether the caller has to change something before asking again
    /// (its request, the configuration, the name it gave): as opposed to a
    /// refusal, a skipped run or a failure.
    pub fn is_callers_to_fix(self) -> bool {
        matches!(
            self,
            ErrorKind::Input | ErrorKind::Config | ErrorKind::NotFound | ErrorKind::Conflict
        )
    }

    /// The outcome an operation ending with this error is audited with:
    /// `skipped`, `refused` or `failed`.
    pub fn audit_outcome(self) -> &'static str {
        match self {
            ErrorKind::Busy => "skipped",
            ErrorKind::Failed => "failed",
            _ => "refused",
        }
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&backup_crypto::Error> for ErrorKind {
    fn from(e: &backup_crypto::Error) -> ErrorKind {
        match e {
            backup_crypto::Error::PassphraseTooShort { .. } => ErrorKind::Input,
            _ => ErrorKind::Failed,
        }
    }
}

impl From<&backup_storage::Error> for ErrorKind {
    fn from(e: &backup_storage::Error) -> ErrorKind {
        match e {
            backup_storage::Error::NotFound { .. } => ErrorKind::NotFound,
            backup_storage::Error::InvalidUrl { .. } => ErrorKind::Config,
            _ => ErrorKind::Failed,
        }
    }
}

impl Error {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Input(_) | Error::PassphraseRequired(_) => ErrorKind::Input,
            Error::Config { .. } | Error::NotInitialized(_) | Error::NoStorage(_) => {
                ErrorKind::Config
            }
            Error::NotFound(_) => ErrorKind::NotFound,
            Error::AlreadyInitialized(_) => ErrorKind::Conflict,
            Error::VersionMismatch { .. }
            | Error::IdentityMismatch { .. }
            | Error::UnsafeArchive { .. }
            | Error::Preflight(_)
            | Error::NoRoom(_) => ErrorKind::Refused,
            Error::Busy(_) => ErrorKind::Busy,
            Error::Crypto(c) => c.into(),
            Error::Storage(s) => s.into(),
            Error::InvalidImage(_)
            | Error::ImageSize { .. }
            | Error::Halted { .. }
            | Error::AllComponentsFailed(_)
            | Error::RestoreFailed { .. }
            | Error::Hook { .. }
            | Error::Io { .. } => ErrorKind::Failed,
        }
    }

    /// A stable identifier of this specific error in snake case
    /// (`wrong_passphrase`, `not_found`, `version_mismatch`, …): crypto and
    /// storage errors by their own meaning.
    pub fn name(&self) -> &'static str {
        match self {
            Error::Config { .. } => "config",
            Error::Input(_) => "input",
            Error::NotFound(_) => "not_found",
            Error::VersionMismatch { .. } => "version_mismatch",
            Error::IdentityMismatch { .. } => "identity_mismatch",
            Error::UnsafeArchive { .. } => "unsafe_archive",
            Error::InvalidImage(_) => "invalid_image",
            Error::ImageSize { .. } => "image_size",
            Error::Halted { .. } => "halted",
            Error::AllComponentsFailed(_) => "all_components_failed",
            Error::AlreadyInitialized(_) => "already_initialized",
            Error::NotInitialized(_) => "not_initialized",
            Error::PassphraseRequired(_) => "passphrase_required",
            Error::NoStorage(_) => "no_storage",
            Error::RestoreFailed { .. } => "restore_failed",
            Error::Busy(_) => "busy",
            Error::Preflight(_) => "preflight",
            Error::NoRoom(_) => "no_room",
            Error::Hook { .. } => "hook",
            Error::Crypto(c) => crypto_name(c),
            Error::Storage(s) => storage_name(s),
            Error::Io { .. } => "io",
        }
    }

    /// The kind and name of `cause` if it is an error of the engine, its
    /// storage or its encryption (for frontends walking an error chain).
    pub fn classify(
        cause: &(dyn std::error::Error + 'static),
    ) -> Option<(ErrorKind, &'static str)> {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return Some((e.kind(), e.name()));
        }
        if let Some(e) = cause.downcast_ref::<backup_storage::Error>() {
            return Some((e.into(), storage_name(e)));
        }
        if let Some(e) = cause.downcast_ref::<backup_crypto::Error>() {
            return Some((e.into(), crypto_name(e)));
        }
        None
    }

    /// Whether this is the caller's to fix (exit code 2 in the CLI): see
    /// [`ErrorKind::is_callers_to_fix`].
    pub fn is_input_error(&self) -> bool {
        self.kind().is_callers_to_fix()
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    /// Unwraps an `io::Error` that carries a crypto or engine error (from the
    /// `Read` adapters of the pipeline) back into its meaning.
    pub(crate) fn from_pipeline_io(what: &str, e: std::io::Error) -> Error {
        if e.get_ref()
            .is_some_and(|inner| inner.is::<backup_crypto::Error>())
        {
            return Error::Crypto(backup_crypto::Error::from_io(e));
        }
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return *e
                .into_inner()
                .expect("checked")
                .downcast::<Error>()
                .expect("checked");
        }
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            return Error::Crypto(backup_crypto::Error::Truncated);
        }
        Error::io(what, e)
    }
}

fn crypto_name(e: &backup_crypto::Error) -> &'static str {
    use backup_crypto::Error as C;
    match e {
        C::WrongPassphrase => "wrong_passphrase",
        C::KeyMismatch { .. } => "key_mismatch",
        C::HeaderCorrupted => "header_corrupted",
        C::UnsupportedFormat(_) => "unsupported_format",
        C::KdfParamsOutOfBounds(_) => "kdf_params_out_of_bounds",
        C::Truncated => "truncated",
        C::DecryptionFailed => "decryption_failed",
        C::PassphraseTooShort { .. } => "passphrase_too_short",
        C::InvalidKeyLength(_) => "invalid_key_length",
        C::Random(_) => "random",
        C::Io(_) => "io",
        _ => "crypto",
    }
}

fn storage_name(e: &backup_storage::Error) -> &'static str {
    use backup_storage::Error as S;
    match e {
        S::NotFound { .. } => "not_found",
        S::AlreadyExists { .. } => "already_exists",
        S::PermissionDenied { .. } => "permission_denied",
        S::Unauthenticated { .. } => "unauthenticated",
        S::NoSpace { .. } => "no_space",
        S::Unsupported { .. } => "unsupported",
        S::InvalidUrl { .. } => "invalid_url",
        S::Transient { .. } => "transient",
        S::Other { .. } => "other",
        _ => "storage",
    }
}

fn already_initialized(path: &std::path::Path) -> String {
    if path.file_name() == Some(std::ffi::OsStr::new(crate::KEY_FILE)) {
        format!(
            "the domain master secret is already set: the master key file {} exists, though the keyring next to it is missing; it may be the only key to existing images, so it is not replaced — put keyring.json back from a copy of the state directory, or, only if no image made with that key is needed, move the key file out of the state directory (keep it) and initialise again",
            path.display()
        )
    } else {
        format!(
            "the domain master secret is already set (keyring {}); use key rotation to change it",
            path.display()
        )
    }
}

fn image_size_message(size: u64, expected: u64) -> String {
    if size < expected {
        format!(
            "the image is truncated: {size} of {expected} bytes (its sidecar manifest records the size it was written with); the upload or copy was incomplete — copy it again from a good source, or use another image"
        )
    } else {
        format!(
            "the image has {size} bytes, but {expected} were written (its sidecar manifest says so): it was modified after it was written (bytes added, or the image replaced) — use another image"
        )
    }
}

/// The audit outcome of an error.
pub(crate) fn outcome_of(e: &Error) -> &'static str {
    e.kind().audit_outcome()
}

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
