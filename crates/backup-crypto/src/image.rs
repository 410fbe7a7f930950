use std::io::{self, Read, Write};

use crate::header::longer_foreign_header;
use crate::{
    ChunkedReader, ChunkedWriter, Error, Header, Keyslot, MasterKey, Passphrase, HEADER_LEN,
};

/// Writes an encrypted image: the header, then the payload as a Cobblestone-256
/// stream under the master key, its context bound to the header. Runs no
/// Argon2: the keyslot was computed at init.
pub struct EncryptWriter<W: Write> {
    header: Header,
    stream: ChunkedWriter<W>,
}

impl<W: Write> EncryptWriter<W> {
    /// Writes the header to `inner` and starts the payload stream.
    pub fn new(
        mut inner: W,
        mk: &MasterKey,
        keyslot: &Keyslot,
        created_unix: i64,
    ) -> Result<Self, Error> {
        let header = Header::new(mk.key_id(), created_unix, keyslot.clone());
        inner.write_all(&header.encode())?;
        let stream = ChunkedWriter::new(inner, mk.as_bytes(), &header.stream_context())?;
        Ok(EncryptWriter { header, stream })
    }

    /// The header written at the start.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Seals the final chunk. Must be called: without it the image is truncated.
    pub fn finish(self) -> Result<W, Error> {
        self.stream.finish()
    }
}

impl<W: Write> Write for EncryptWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

/// An image whose header has been read and checked but which is still locked.
pub struct ImageReader<R: Read> {
    header: Header,
    inner: R,
}

impl<R: Read> ImageReader<R> {
    /// Reads exactly [`crate::HEADER_LEN`] bytes and parses them ([`Header::parse`]).
    ///
    /// Only when those bytes are the start of a header of another format
    /// version that declares a longer length does it read up to that length
    /// (at most 64 KiB), to report "newer format" instead of "corrupted".
    pub fn new(mut inner: R) -> Result<Self, Error> {
        let mut bytes = vec![0u8; HEADER_LEN];
        read_exact_or_truncated(&mut inner, &mut bytes)?;
        if let Some(declared) = longer_foreign_header(&bytes) {
            bytes.resize(declared, 0);
            read_exact_or_truncated(&mut inner, &mut bytes[HEADER_LEN..])?;
        }
        let header = Header::parse(&bytes)?;
        Ok(ImageReader { header, inner })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Unlocks with a known master key: [`Error::KeyMismatch`] if the key id
    /// differs, then the commitment check.
    pub fn unlock(self, mk: &MasterKey) -> Result<DecryptReader<R>, Error> {
        let ours = mk.key_id();
        if ours != self.header.key_id() {
            return Err(Error::KeyMismatch {
                image: self.header.key_id().to_string(),
                ours: ours.to_string(),
            });
        }
        let stream = ChunkedReader::new(self.inner, mk.as_bytes(), &self.header.stream_context())?;
        Ok(DecryptReader {
            header: self.header,
            stream,
        })
    }

    /// Unwraps the header's keyslot with the passphrase (runs Argon2id once;
    /// [`Error::WrongPassphrase`] before any output), then unlocks.
    pub fn unlock_with_passphrase(
        self,
        passphrase: &Passphrase,
    ) -> Result<DecryptReader<R>, Error> {
        let mk = self.header.keyslot().open(passphrase)?;
        self.unlock(&mk)
    }
}

/// The decrypted payload of an image, as a `Read`.
pub struct DecryptReader<R: Read> {
    header: Header,
    stream: ChunkedReader<R>,
}

impl<R: Read> DecryptReader<R> {
    /// The image header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.stream.into_inner()
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

fn read_exact_or_truncated<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<(), Error> {
    reader.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => Error::Truncated,
        _ => Error::Io(e),
    })
}
