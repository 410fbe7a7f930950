use std::io;

/// Everything that can go wrong while sealing or opening an image.
///
/// Authentication failures never say which byte failed. Every error that a
/// reader can raise is raised before a single plaintext byte of the failing
/// chunk is released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The passphrase does not unwrap the keyslot.
    #[error(
        "wrong passphrase: it does not open this image's key slot (check the domain master secret)"
    )]
    WrongPassphrase,
    /// The master key at hand belongs to another domain than the image.
    #[error("this image was encrypted under another master key (key id {image}, ours {ours}); open it with the passphrase of the domain that made it")]
    KeyMismatch {
        /// Key id recorded in the image header.
        image: String,
        /// Key id of the key we tried.
        ours: String,
    },
    /// The header checksum does not match: the header bytes were damaged.
    #[error("image header is corrupted (checksum mismatch): the file is damaged; use another copy of the image")]
    HeaderCorrupted,
    /// Magic, version, suite, KDF or flags are not ones this reader knows.
    #[error("unsupported image format: {0}")]
    UnsupportedFormat(String),
    /// Argon2id parameters outside the accepted bounds (checked before running Argon2).
    #[error("key derivation parameters out of bounds: {0}")]
    KdfParamsOutOfBounds(String),
    /// The stream ended early (missing header bytes, chunk bytes or the final short chunk).
    #[error(
        "image is truncated: it ends before its final chunk; the upload or copy was incomplete"
    )]
    Truncated,
    /// A chunk failed authentication, chunks were reordered, or data trails the final chunk.
    #[error("image failed authentication: it was modified or corrupted after it was written")]
    DecryptionFailed,
    /// A passphrase shorter than [`crate::MIN_PASSPHRASE_CHARS`].
    #[error("the passphrase is too short: it needs at least {min} characters")]
    PassphraseTooShort {
        /// The minimum number of characters.
        min: usize,
    },
    /// A key of the wrong length was supplied.
    #[error("invalid key length {0}: expected 32 bytes")]
    InvalidKeyLength(usize),
    /// The operating system's random number generator failed.
    #[error("the system random number generator failed: {0}")]
    Random(String),
    /// An I/O error of the underlying reader or writer.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl Error {
    /// Converts into an `io::Error` carrying this error as its inner error, so
    /// that `Read`/`Write` adapters can surface it and callers can get it back
    /// with [`Error::from_io`].
    pub fn into_io(self) -> io::Error {
        match self {
            Error::Io(e) => e,
            other => io::Error::new(io::ErrorKind::InvalidData, other),
        }
    }

    /// Recovers a crypto error from an `io::Error` produced by [`Error::into_io`]
    /// (possibly wrapped by further `Read` adapters); other I/O errors become
    /// [`Error::Io`].
    pub fn from_io(e: io::Error) -> Error {
        if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            let inner = e.into_inner().expect("checked above");
            *inner.downcast::<Error>().expect("checked above")
        } else {
            Error::Io(e)
        }
    }
}
