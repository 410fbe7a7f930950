//! C2SP chunked encryption, instantiated as Cobblestone-256.
use std::io::{self, Read, Write};

use aes_gcm::aead::AeadInOut;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use hmac::{Hmac, Mac};
use sha2::Sha512;
use zeroize::Zeroizing;

use crate::Error;

/// Plaintext bytes per full chunk.
pub const CHUNK_SIZE: usize = 16 * 1024;
/// AES-GCM tag length.
pub const TAG_LEN: usize = 16;
/// Salt (24) + commitment (32) that open every stream.
pub const STREAM_PREFIX_LEN: usize = 56;

const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const SALT_LEN: usize = 24;
const COMMITMENT_LEN: usize = 32;
const ENCRYPTED_CHUNK_LEN: usize = CHUNK_SIZE + TAG_LEN;
/// The spec's cap on chunks per message (2^38 × 16 KiB = 4 PiB); readers must
/// refuse to go past it, so writers must not either.
const MAX_CHUNKS: u64 = 1 << 38;
const LABEL: &[u8] = b"c2sp.org/chunked-encryption@v1+";
const AEAD_NAME: &[u8] = b"AEAD_AES_256_GCM";

/// Per-message keys: what HKDF-Expand gives for one (input key, salt, context).
struct MessageKeys {
    cipher: Aes256Gcm,
    base_nonce: [u8; NONCE_LEN],
    commitment: [u8; COMMITMENT_LEN],
}

impl MessageKeys {
    fn derive(
        input_key: &[u8],
        salt: &[u8; SALT_LEN],
        context: &[u8],
    ) -> Result<MessageKeys, Error> {
        if input_key.len() != KEY_LEN {
            return Err(Error::InvalidKeyLength(input_key.len()));
        }
        let okm = hkdf_expand_sha512(input_key, &[LABEL, AEAD_NAME, &[0], salt, context]);
        let cipher = Aes256Gcm::new_from_slice(&okm[..KEY_LEN]).expect("AES-256 key is 32 bytes");
        let mut base_nonce = [0u8; NONCE_LEN];
        base_nonce.copy_from_slice(&okm[KEY_LEN..KEY_LEN + NONCE_LEN]);
        let mut commitment = [0u8; COMMITMENT_LEN];
        commitment.copy_from_slice(&okm[KEY_LEN + NONCE_LEN..]);
        Ok(MessageKeys {
            cipher,
            base_nonce,
            commitment,
        })
    }

    /// Encrypts one chunk in place. Not generic, and never inlined, on
    /// purpose: the AES-GCM code is then compiled here, at this crate's
    /// opt-level, not inside whichever crate instantiates the generic
    /// reader/writer (an unoptimised caller made it ~100× slower).
    #[inline(never)]
    fn seal(&self, counter: u64, plain: &mut [u8]) -> Option<Tag> {
        self.cipher
            .encrypt_inout_detached(&self.nonce(counter), b"", plain.into())
            .ok()
    }

    /// Decrypts and authenticates one chunk in place (see [`MessageKeys::seal`]).
    #[inline(never)]
    fn open(&self, counter: u64, sealed: &mut [u8], tag: &[u8]) -> bool {
        let Ok(tag) = Tag::try_from(tag) else {
            return false;
        };
        self.cipher
            .decrypt_inout_detached(&self.nonce(counter), b"", sealed.into(), &tag)
            .is_ok()
    }

    fn nonce(&self, counter: u64) -> Nonce<aes_gcm::aead::consts::U12> {
        let mut nonce = self.base_nonce;
        for (n, c) in nonce[NONCE_LEN - 8..].iter_mut().zip(counter.to_be_bytes()) {
            *n ^= c;
        }
        nonce.into()
    }
}

/// HKDF-Expand (RFC 5869 §2.3) with HMAC-SHA-512, for the 76 bytes of
/// key ‖ base nonce ‖ commitment. `Hkdf::from_prk` refuses a PRK shorter than
/// the hash output, but C2SP uses the 32-byte input key as the PRK directly.
fn hkdf_expand_sha512(
    prk: &[u8],
    info: &[&[u8]],
) -> Zeroizing<[u8; KEY_LEN + NONCE_LEN + COMMITMENT_LEN]> {
    let mut okm = Zeroizing::new([0u8; KEY_LEN + NONCE_LEN + COMMITMENT_LEN]);
    let mut previous: Option<Zeroizing<[u8; 64]>> = None;
    for (i, out) in okm.chunks_mut(64).enumerate() {
        let mut mac =
            <Hmac<Sha512> as Mac>::new_from_slice(prk).expect("HMAC takes keys of any length");
        if let Some(t) = &previous {
            mac.update(t.as_ref());
        }
        for part in info {
            mac.update(part);
        }
        mac.update(&[i as u8 + 1]);
        let mut block = Zeroizing::new([0u8; 64]);
        block.copy_from_slice(&mac.finalize().into_bytes());
        out.copy_from_slice(&block[..out.len()]);
        previous = Some(block);
    }
    okm
}

/// Compares without an early exit, so timing does not reveal how many
/// leading bytes of a forged commitment were right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Reads until `buf` is full or the reader reports end of input; returns how
/// many bytes were read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Streaming encryptor: writes salt ‖ commitment, then one AEAD chunk per
/// 16 KiB of input; [`ChunkedWriter::finish`] writes the final short (possibly
/// empty) chunk. Dropping without `finish` leaves a truncated stream that no
/// reader accepts.
pub struct ChunkedWriter<W: Write> {
    inner: W,
    keys: MessageKeys,
    counter: u64,
    /// Plaintext of the chunk being filled, sealed in place; room for the tag.
    buf: Zeroizing<Vec<u8>>,
    len: usize,
    /// Set once the inner writer failed: the stream then has a hole and every
    /// later call must fail rather than produce a stream that looks whole.
    poisoned: bool,
}

impl<W: Write> ChunkedWriter<W> {
    /// Starts a stream under `input_key` (32 bytes) with a fresh random salt.
    pub fn new(inner: W, input_key: &[u8], context: &[u8]) -> Result<Self, Error> {
        if input_key.len() != KEY_LEN {
            return Err(Error::InvalidKeyLength(input_key.len()));
        }
        let mut salt = [0u8; SALT_LEN];
        getrandom::getrandom(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
        Self::with_salt(inner, input_key, context, salt)
    }

    /// Starts a stream with the given salt (tests and known-answer checks only:
    /// a salt must never repeat under one key).
    pub fn with_salt(
        mut inner: W,
        input_key: &[u8],
        context: &[u8],
        salt: [u8; 24],
    ) -> Result<Self, Error> {
        let keys = MessageKeys::derive(input_key, &salt, context)?;
        let mut prefix = [0u8; STREAM_PREFIX_LEN];
        prefix[..SALT_LEN].copy_from_slice(&salt);
        prefix[SALT_LEN..].copy_from_slice(&keys.commitment);
        inner.write_all(&prefix)?;
        Ok(ChunkedWriter {
            inner,
            keys,
            counter: 0,
            buf: Zeroizing::new(vec![0u8; ENCRYPTED_CHUNK_LEN]),
            len: 0,
            poisoned: false,
        })
    }

    /// Encrypts the final short chunk and returns the inner writer (flushed).
    pub fn finish(mut self) -> Result<W, Error> {
        self.check_poisoned()?;
        if self.len == CHUNK_SIZE {
            // A full buffer is never the final chunk: the final one must be
            // shorter, so a message of exactly n·16 KiB ends with an empty chunk.
            self.seal_chunk().map_err(Error::from_io)?;
        }
        self.seal_chunk().map_err(Error::from_io)?;
        self.inner.flush()?;
        let ChunkedWriter { inner, .. } = self;
        Ok(inner)
    }

    fn check_poisoned(&self) -> io::Result<()> {
        if self.poisoned {
            Err(io::Error::other(
                "an earlier write to the encrypted stream failed; the stream is incomplete",
            ))
        } else {
            Ok(())
        }
    }

    /// Seals `buf[..len]` as chunk number `counter` and writes it out.
    fn seal_chunk(&mut self) -> io::Result<()> {
        // The final chunk needs a counter below the cap too, so a full chunk
        // may only take the counter if one is left after it.
        if self.counter + u64::from(self.len == CHUNK_SIZE) >= MAX_CHUNKS {
            self.poisoned = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "message too long for one encrypted stream (2^38 chunks)",
            ));
        }
        let (plain, tag_space) = self.buf.split_at_mut(self.len);
        let tag = self
            .keys
            .seal(self.counter, plain)
            .ok_or_else(|| io::Error::other("AES-GCM refused to encrypt a chunk"))?;
        tag_space[..TAG_LEN].copy_from_slice(&tag);
        if let Err(e) = self.inner.write_all(&self.buf[..self.len + TAG_LEN]) {
            self.poisoned = true;
            return Err(e);
        }
        self.counter += 1;
        self.len = 0;
        Ok(())
    }
}

impl<W: Write> Write for ChunkedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.check_poisoned()?;
        let mut taken = 0;
        while taken < data.len() {
            // Sealing waits until more input arrives: only then is the full
            // buffer known not to be the final chunk.
            if self.len == CHUNK_SIZE {
                self.seal_chunk()?;
            }
            let n = (CHUNK_SIZE - self.len).min(data.len() - taken);
            self.buf[self.len..self.len + n].copy_from_slice(&data[taken..taken + n]);
            self.len += n;
            taken += n;
        }
        Ok(taken)
    }

    /// Flushes the inner writer. Buffered plaintext stays buffered: a chunk
    /// cannot be sealed early without changing the chunk boundaries.
    fn flush(&mut self) -> io::Result<()> {
        self.check_poisoned()?;
        self.inner.flush()
    }
}

/// The first error a reader hit, replayed on every later call.
#[derive(Clone, Copy)]
enum Failure {
    Truncated,
    DecryptionFailed,
}

impl Failure {
    fn to_io(self) -> io::Error {
        match self {
            Failure::Truncated => Error::Truncated,
            Failure::DecryptionFailed => Error::DecryptionFailed,
        }
        .into_io()
    }
}

#[derive(Clone, Copy)]
enum ReadState {
    /// More chunks follow.
    Chunks,
    /// The final chunk authenticated; what is left is its plaintext.
    Done,
    Failed(Failure),
}

/// Streaming decryptor. The constructor reads the 56-byte prefix and checks the
/// commitment (mismatch → [`Error::DecryptionFailed`]) before any chunk is
/// decrypted. `read` releases a chunk's plaintext only after it authenticated;
/// errors surface as `io::Error` whose inner error is a [`crate::Error`]
/// (recover it with [`Error::from_io`]) and repeat on every later call.
///
/// Errors of the underlying reader are passed through unchanged and do not
/// poison the stream: the next call resumes where the failed one stopped.
///
/// A stream cut exactly at a chunk boundary reads as [`Error::Truncated`]; one
/// cut inside a chunk leaves a final chunk that cannot authenticate, which
/// reads as [`Error::DecryptionFailed`] (or [`Error::Truncated`] if fewer than
/// 16 bytes of it are left): the two cannot be told apart cryptographically.
pub struct ChunkedReader<R: Read> {
    inner: R,
    keys: MessageKeys,
    counter: u64,
    /// One encrypted chunk plus one byte of look-ahead, which tells a full
    /// chunk (more data follows) from a final one. After decryption it holds
    /// the chunk's plaintext in `buf[pos..end]`.
    buf: Zeroizing<Vec<u8>>,
    /// Ciphertext bytes of the next chunk gathered in `buf` so far.
    filled: usize,
    pos: usize,
    end: usize,
    /// The look-ahead byte at `buf[ENCRYPTED_CHUNK_LEN]` still has to move to
    /// the front once the plaintext in `buf` has been consumed.
    carry: bool,
    state: ReadState,
}

impl<R: Read> ChunkedReader<R> {
    /// Opens a stream. `input_key` must be 32 bytes ([`Error::InvalidKeyLength`]).
    pub fn new(mut inner: R, input_key: &[u8], context: &[u8]) -> Result<Self, Error> {
        if input_key.len() != KEY_LEN {
            return Err(Error::InvalidKeyLength(input_key.len()));
        }
        let mut prefix = [0u8; STREAM_PREFIX_LEN];
        if read_full(&mut inner, &mut prefix)? < STREAM_PREFIX_LEN {
            return Err(Error::Truncated);
        }
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&prefix[..SALT_LEN]);
        let keys = MessageKeys::derive(input_key, &salt, context)?;
        if !ct_eq(&keys.commitment, &prefix[SALT_LEN..]) {
            return Err(Error::DecryptionFailed);
        }
        Ok(ChunkedReader {
            inner,
            keys,
            counter: 0,
            buf: Zeroizing::new(vec![0u8; ENCRYPTED_CHUNK_LEN + 1]),
            filled: 0,
            pos: 0,
            end: 0,
            carry: false,
            state: ReadState::Chunks,
        })
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        let ChunkedReader { inner, .. } = self;
        inner
    }

    fn fail(&mut self, failure: Failure) -> io::Error {
        self.state = ReadState::Failed(failure);
        self.pos = 0;
        self.end = 0;
        failure.to_io()
    }

    /// Reads and authenticates the next chunk into `buf[pos..end]`.
    fn next_chunk(&mut self) -> io::Result<()> {
        if self.carry {
            self.buf[0] = self.buf[ENCRYPTED_CHUNK_LEN];
            self.filled = 1;
            self.carry = false;
        }
        // Progress is kept in `filled` so that an error of the inner reader
        // loses nothing and the next call resumes.
        while self.filled < self.buf.len() {
            match self.inner.read(&mut self.buf[self.filled..]) {
                Ok(0) => break,
                Ok(n) => self.filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.counter >= MAX_CHUNKS {
            return Err(self.fail(Failure::DecryptionFailed));
        }
        let is_final = self.filled <= ENCRYPTED_CHUNK_LEN;
        let sealed_len = if is_final {
            // A full-size chunk at the end means the real final chunk is
            // missing; less than a tag cannot be a chunk at all.
            if self.filled == ENCRYPTED_CHUNK_LEN || self.filled < TAG_LEN {
                return Err(self.fail(Failure::Truncated));
            }
            self.filled
        } else {
            ENCRYPTED_CHUNK_LEN
        };
        let plain_len = sealed_len - TAG_LEN;
        let (plain, rest) = self.buf.split_at_mut(plain_len);
        if !self.keys.open(self.counter, plain, &rest[..TAG_LEN]) {
            return Err(self.fail(Failure::DecryptionFailed));
        }
        self.counter += 1;
        self.pos = 0;
        self.end = plain_len;
        self.filled = 0;
        if is_final {
            self.state = ReadState::Done;
        } else {
            self.carry = true;
        }
        Ok(())
    }
}

impl<R: Read> Read for ChunkedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let ReadState::Failed(failure) = self.state {
            return Err(failure.to_io());
        }
        if out.is_empty() {
            return Ok(0);
        }
        // Loop because a chunk may be empty: the final one of a message of
        // exactly n·16 KiB.
        while self.pos == self.end {
            match self.state {
                ReadState::Chunks => self.next_chunk()?,
                ReadState::Done | ReadState::Failed(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vectors {
        #[serde(rename = "testGroups")]
        groups: Vec<Group>,
    }
    #[derive(serde::Deserialize)]
    struct Group {
        tests: Vec<Case>,
    }
    #[derive(serde::Deserialize)]
    struct Case {
        #[serde(rename = "tcId")]
        id: u32,
        key: String,
        ctx: String,
        ct: String,
        #[serde(rename = "aeadKey")]
        aead_key: Option<String>,
        #[serde(rename = "baseNonce")]
        base_nonce: Option<String>,
    }

    /// The vectors publish the derived AEAD key and base nonce: check the
    /// HKDF-Expand labelling byte for byte, not only through decryption.
    #[test]
    fn hkdf_matches_published_subkeys() {
        use std::io::Read as _;
        let vectors: Vectors =
            serde_json::from_str(include_str!("../tests/data/cobblestone256.json")).unwrap();
        let mut checked = 0;
        for case in &vectors.groups[0].tests {
            let (Some(aead_key), Some(base_nonce)) = (&case.aead_key, &case.base_nonce) else {
                continue;
            };
            let mut ct = Vec::new();
            flate2::read::ZlibDecoder::new(&hex::decode(&case.ct).unwrap()[..])
                .read_to_end(&mut ct)
                .unwrap();
            let salt: [u8; SALT_LEN] = ct[..SALT_LEN].try_into().unwrap();
            let key = hex::decode(&case.key).unwrap();
            let okm = hkdf_expand_sha512(
                &key,
                &[
                    LABEL,
                    AEAD_NAME,
                    &[0],
                    &salt,
                    &hex::decode(&case.ctx).unwrap(),
                ],
            );
            assert_eq!(hex::encode(&okm[..KEY_LEN]), *aead_key, "tcId {}", case.id);
            assert_eq!(
                hex::encode(&okm[KEY_LEN..KEY_LEN + NONCE_LEN]),
                *base_nonce,
                "tcId {}",
                case.id
            );
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} vectors carry subkeys");
    }

    #[test]
    fn nonce_xors_counter_big_endian_into_the_low_bytes() {
        let keys = MessageKeys::derive(&[7; 32], &[1; SALT_LEN], b"").unwrap();
        let base = keys.base_nonce;
        let n = keys.nonce(0x01_0203_0405);
        for i in 0..7 {
            assert_eq!(n[i], base[i], "byte {i}");
        }
        assert_eq!(
            &n[7..],
            &[
                base[7] ^ 1,
                base[8] ^ 2,
                base[9] ^ 3,
                base[10] ^ 4,
                base[11] ^ 5
            ]
        );
    }

    #[test]
    fn ct_eq_compares_whole_slices() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn writer_refuses_a_counter_past_the_cap() {
        let mut w = ChunkedWriter::with_salt(Vec::new(), &[7; 32], b"", [0; SALT_LEN]).unwrap();
        w.counter = MAX_CHUNKS - 1;
        w.write_all(&[0; CHUNK_SIZE]).unwrap();
        // The buffer is full: sealing it would leave no counter for the final chunk.
        assert!(w.write_all(&[0]).is_err());
        assert!(w.write_all(&[0]).is_err(), "a failed writer stays failed");
        assert!(w.finish().is_err());
    }

    #[test]
    fn reader_refuses_a_counter_past_the_cap() {
        let mut ct = Vec::new();
        let w = ChunkedWriter::with_salt(&mut ct, &[7; 32], b"", [0; SALT_LEN]).unwrap();
        w.finish().unwrap();
        let mut r = ChunkedReader::new(&ct[..], &[7; 32], b"").unwrap();
        r.counter = MAX_CHUNKS;
        let err = r.read(&mut [0; 1]).unwrap_err();
        assert!(matches!(Error::from_io(err), Error::DecryptionFailed));
    }
}
