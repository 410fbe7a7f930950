use std::path::PathBuf;

/// Everything the engine can fail with, by meaning.
///
/// [`Error::is_input_error`] tells a frontend which failures are the caller's
/// to fix (a usage error) rather than a failure of the operation.
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

impl Error {
    /// Whether this is the caller's input to fix (exit code 2 in the CLI).
    pub fn is_input_error(&self) -> bool {
        matches!(
            self,
            Error::Config { .. }
                | Error::Input(_)
                | Error::AlreadyInitialized(_)
                | Error::NotInitialized(_)
                | Error::PassphraseRequired(_)
                | Error::NoStorage(_)
                | Error::Crypto(backup_crypto::Error::PassphraseTooShort { .. })
        )
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

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
