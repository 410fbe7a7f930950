use sha2::{Digest, Sha256};

use crate::{Error, KeyId, Keyslot, KEYSLOT_LEN};

/// The 8 magic bytes that open every image.
pub const MAGIC: [u8; 8] = *b"\x89BKP\r\n\x1a\n";
/// The only format version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Suite id of Cobblestone-256 (HKDF-Expand-SHA-512 + AES-256-GCM).
pub const SUITE_COBBLESTONE_256: u16 = 1;
/// Encoded header length: 36 fixed bytes + keyslot + 32-byte SHA-256.
pub const HEADER_LEN: usize = 36 + crate::KEYSLOT_LEN + 32;

const CONTEXT_LEN: usize = 36;
const CHECKSUM_LEN: usize = 32;
/// Largest header length a future version might declare that we still read
/// to check its checksum (only to tell "newer format" from "corrupted").
const MAX_DECLARED_HEADER_LEN: usize = 64 * 1024;

/// The fixed-length image header (big-endian, hand-encoded).
///
/// Layout: magic (8) · version u16 · suite u16 · header length u32 · flags u32 ·
/// key id (8) · creation time i64 (Unix seconds) · keyslot ([`crate::KEYSLOT_LEN`])
/// · SHA-256 of all preceding bytes (32).
///
/// The payload stream's C2SP context is the first 36 bytes (magic … creation
/// time), so the keyslot can be replaced in place (key rotation) without
/// re-encrypting the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    key_id: KeyId,
    created: i64,
    keyslot: Keyslot,
}

impl Header {
    /// A version-1 Cobblestone-256 header with flags 0.
    pub fn new(key_id: KeyId, created: i64, keyslot: Keyslot) -> Header {
        Header {
            key_id,
            created,
            keyslot,
        }
    }

    /// Key id of the master key that encrypted the payload.
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Creation time, Unix seconds.
    pub fn created(&self) -> i64 {
        self.created
    }

    /// The passphrase-wrapped master key.
    pub fn keyslot(&self) -> &Keyslot {
        &self.keyslot
    }

    /// The same header with another keyslot (for rewrapping after rotation).
    pub fn with_keyslot(&self, keyslot: Keyslot) -> Header {
        Header {
            keyslot,
            ..self.clone()
        }
    }

    /// Encodes the header, checksum included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..CONTEXT_LEN].copy_from_slice(&self.stream_context());
        out[CONTEXT_LEN..CONTEXT_LEN + KEYSLOT_LEN].copy_from_slice(&self.keyslot.to_bytes());
        let sum = Sha256::digest(&out[..HEADER_LEN - CHECKSUM_LEN]);
        out[HEADER_LEN - CHECKSUM_LEN..].copy_from_slice(&sum);
        out
    }

    /// The bytes bound into the payload stream as its C2SP context.
    pub fn stream_context(&self) -> [u8; 36] {
        let mut out = [0u8; CONTEXT_LEN];
        out[..8].copy_from_slice(&MAGIC);
        out[8..10].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        out[10..12].copy_from_slice(&SUITE_COBBLESTONE_256.to_be_bytes());
        out[12..16].copy_from_slice(&(HEADER_LEN as u32).to_be_bytes());
        out[16..20].copy_from_slice(&0u32.to_be_bytes());
        out[20..28].copy_from_slice(&self.key_id.0);
        out[28..36].copy_from_slice(&self.created.to_be_bytes());
        out
    }

    /// Parses and checks a header, in this order: length (short →
    /// [`Error::Truncated`]); magic (→ [`Error::UnsupportedFormat`], "not a
    /// backup image"); checksum over the declared header length
    /// (→ [`Error::HeaderCorrupted`]); version, suite, flags, KDF id
    /// (→ [`Error::UnsupportedFormat`]); KDF bounds
    /// (→ [`Error::KdfParamsOutOfBounds`]). No passphrase is involved.
    ///
    /// A header of another version whose checksum over its own declared length
    /// holds is reported as [`Error::UnsupportedFormat`] rather than as
    /// corrupted; `bytes` may extend past [`HEADER_LEN`] for that check.
    pub fn parse(bytes: &[u8]) -> Result<Header, Error> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if bytes[..8] != MAGIC {
            return Err(Error::UnsupportedFormat(
                "not a backup image (bad magic)".into(),
            ));
        }
        let u16_at = |i: usize| u16::from_be_bytes([bytes[i], bytes[i + 1]]);
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let version = u16_at(8);
        let suite = u16_at(10);
        let declared_len = u32_at(12);
        let flags = u32_at(16);

        let newer = || {
            let advice = if version > FORMAT_VERSION {
                "use a newer backup tool"
            } else {
                "no release wrote that version"
            };
            Error::UnsupportedFormat(format!(
                "image format version {version}; this build reads version {FORMAT_VERSION} — {advice}"
            ))
        };
        // A bit flip in the version field of a version-1 header leaves the
        // checksum broken, so only an intact header of another version gets
        // the "newer format" message.
        if version != FORMAT_VERSION {
            let declared = declared_len as usize;
            if (CONTEXT_LEN + CHECKSUM_LEN..=bytes.len()).contains(&declared)
                && checksum_ok(&bytes[..declared])
            {
                return Err(newer());
            }
        }
        if !checksum_ok(&bytes[..HEADER_LEN]) {
            return Err(Error::HeaderCorrupted);
        }
        if version != FORMAT_VERSION {
            return Err(newer());
        }
        if suite != SUITE_COBBLESTONE_256 {
            return Err(Error::UnsupportedFormat(format!(
                "cipher suite {suite}; this build knows only suite {SUITE_COBBLESTONE_256} (Cobblestone-256) — use a newer backup tool"
            )));
        }
        if declared_len as usize != HEADER_LEN {
            return Err(Error::UnsupportedFormat(format!(
                "header length {declared_len}; a version {FORMAT_VERSION} header is {HEADER_LEN} bytes"
            )));
        }
        if flags != 0 {
            return Err(Error::UnsupportedFormat(format!(
                "header flags {flags:#010x}; this build knows no flags — use a newer backup tool"
            )));
        }
        let keyslot = Keyslot::from_bytes(&bytes[CONTEXT_LEN..CONTEXT_LEN + KEYSLOT_LEN])?;
        let key_id = KeyId(bytes[20..28].try_into().expect("8 bytes"));
        let created = i64::from_be_bytes(bytes[28..36].try_into().expect("8 bytes"));
        Ok(Header {
            key_id,
            created,
            keyslot,
        })
    }
}

/// Whether the last 32 bytes of `header` are the SHA-256 of the rest.
fn checksum_ok(header: &[u8]) -> bool {
    let (body, sum) = header.split_at(header.len() - CHECKSUM_LEN);
    // Not a secret: a plain comparison is fine.
    Sha256::digest(body)[..] == *sum
}

/// The declared header length if `prefix` (at least [`HEADER_LEN`] bytes) is
/// a header of another version that claims to be longer than ours, so that a
/// reader can fetch the rest and let [`Header::parse`] check its checksum.
pub(crate) fn longer_foreign_header(prefix: &[u8]) -> Option<usize> {
    if prefix.len() < HEADER_LEN || prefix[..8] != MAGIC {
        return None;
    }
    let version = u16::from_be_bytes([prefix[8], prefix[9]]);
    let declared = u32::from_be_bytes(prefix[12..16].try_into().expect("4 bytes")) as usize;
    (version != FORMAT_VERSION && declared > HEADER_LEN && declared <= MAX_DECLARED_HEADER_LEN)
        .then_some(declared)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::KdfParams;

    fn slot() -> Keyslot {
        let mut bytes = [0x5Au8; KEYSLOT_LEN];
        bytes[..14].copy_from_slice(&[0, 1, 0, 0, 0x4c, 0, 0, 0, 0, 2, 0, 0, 0, 1]);
        Keyslot::from_bytes(&bytes).unwrap()
    }

    #[test]
    fn layout_is_as_documented() {
        let h = Header::new(KeyId([1, 2, 3, 4, 5, 6, 7, 8]), -2, slot());
        let b = h.encode();
        assert_eq!(&b[..8], &MAGIC);
        assert_eq!(&b[8..20], &[0, 1, 0, 1, 0, 0, 0, 202, 0, 0, 0, 0]);
        assert_eq!(&b[20..28], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[28..36], &(-2i64).to_be_bytes());
        assert_eq!(&b[36..170], &slot().to_bytes());
        assert_eq!(&b[170..], &Sha256::digest(&b[..170])[..]);
        assert_eq!(&b[..36], &h.stream_context());
        assert_eq!(Header::parse(&b).unwrap(), h);
        assert_eq!(h.keyslot().kdf(), KdfParams::MINIMUM);
    }

    #[test]
    fn a_longer_header_of_a_newer_version_is_unsupported_not_corrupted() {
        let mut b = Header::new(KeyId([0; 8]), 0, slot()).encode().to_vec();
        b.truncate(HEADER_LEN - CHECKSUM_LEN);
        b.extend_from_slice(&[0xEE; 40]);
        b[8..10].copy_from_slice(&2u16.to_be_bytes());
        let len = b.len() + CHECKSUM_LEN;
        b[12..16].copy_from_slice(&(len as u32).to_be_bytes());
        let sum = Sha256::digest(&b);
        b.extend_from_slice(&sum);
        assert_eq!(longer_foreign_header(&b[..HEADER_LEN]), Some(len));
        match Header::parse(&b) {
            Err(Error::UnsupportedFormat(m)) => assert!(m.contains("version 2"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Without the rest of it, the same header cannot be checked.
        assert!(matches!(
            Header::parse(&b[..HEADER_LEN]),
            Err(Error::HeaderCorrupted)
        ));
    }
}
