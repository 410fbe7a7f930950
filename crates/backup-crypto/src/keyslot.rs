use std::io::{Read, Write};

use zeroize::Zeroizing;

use crate::{ChunkedReader, ChunkedWriter, Error, KdfParams, MasterKey, Passphrase};

/// Encoded length of a keyslot: KDF id (2) + m, t, p (3 × 4) + salt (16) +
/// wrapped master key (24 salt + 32 commitment + 32 key + 16 tag = 104).
pub const KEYSLOT_LEN: usize = 2 + 12 + 16 + 104;

/// KDF id 1: Argon2id, version 0x13.
const KDF_ARGON2ID_V13: u16 = 1;
const WRAPPED_LEN: usize = 104;
const CONTEXT_LABEL: &[u8] = b"backup-crypto keyslot v1";
const CONTEXT_LEN: usize = CONTEXT_LABEL.len() + 2 + 12 + 16;

/// The passphrase-wrapped master key: KDF parameters, salt, and the master key
/// sealed with C2SP chunked encryption under the Argon2id output.
///
/// Computed once (at init or rotation) and copied into every image header.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyslot {
    kdf: KdfParams,
    salt: [u8; 16],
    wrapped: [u8; 104],
}

impl Keyslot {
    /// Derives a key from `passphrase` with fresh salt and `params` (runs
    /// Argon2id once) and wraps `mk` under it.
    pub fn seal(
        mk: &MasterKey,
        passphrase: &Passphrase,
        params: KdfParams,
    ) -> Result<Keyslot, Error> {
        let mut salt = [0u8; 16];
        getrandom::getrandom(&mut salt).map_err(|e| Error::Random(e.to_string()))?;
        let kek = params.derive(passphrase, &salt)?;
        let mut writer = ChunkedWriter::new(
            Vec::with_capacity(WRAPPED_LEN),
            kek.as_ref(),
            &context(params, &salt),
        )?;
        writer.write_all(mk.as_bytes())?;
        let sealed = writer.finish()?;
        let wrapped = sealed
            .try_into()
            .expect("a 32-byte message seals to 104 bytes");
        Ok(Keyslot {
            kdf: params,
            salt,
            wrapped,
        })
    }

    /// Unwraps the master key. A passphrase that does not match gives
    /// [`Error::WrongPassphrase`]. Parameters are validated before Argon2 runs.
    pub fn open(&self, passphrase: &Passphrase) -> Result<MasterKey, Error> {
        let kek = self.kdf.derive(passphrase, &self.salt)?;
        // The wrapped key authenticates under the commitment and the chunk
        // tag alike; whichever fails, the operator's remedy is the same.
        let mut reader = ChunkedReader::new(
            &self.wrapped[..],
            kek.as_ref(),
            &context(self.kdf, &self.salt),
        )
        .map_err(|_| Error::WrongPassphrase)?;
        let mut mk = Zeroizing::new(Vec::with_capacity(33));
        reader
            .read_to_end(&mut mk)
            .map_err(|_| Error::WrongPassphrase)?;
        MasterKey::from_bytes(&mk).map_err(|_| Error::WrongPassphrase)
    }

    /// The KDF parameters of this slot.
    pub fn kdf(&self) -> KdfParams {
        self.kdf
    }

    /// Big-endian encoding, [`KEYSLOT_LEN`] bytes.
    pub fn to_bytes(&self) -> [u8; KEYSLOT_LEN] {
        let mut out = [0u8; KEYSLOT_LEN];
        out[..14].copy_from_slice(&encode_kdf(self.kdf));
        out[14..30].copy_from_slice(&self.salt);
        out[30..].copy_from_slice(&self.wrapped);
        out
    }

    /// Parses an encoded keyslot: unknown KDF id → [`Error::UnsupportedFormat`];
    /// parameters out of bounds → [`Error::KdfParamsOutOfBounds`]; short input →
    /// [`Error::Truncated`]. Input longer than [`KEYSLOT_LEN`] is refused as
    /// [`Error::UnsupportedFormat`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Keyslot, Error> {
        if bytes.len() < KEYSLOT_LEN {
            return Err(Error::Truncated);
        }
        if bytes.len() > KEYSLOT_LEN {
            return Err(Error::UnsupportedFormat(format!(
                "key slot of {} bytes; a version 1 key slot is {KEYSLOT_LEN} bytes",
                bytes.len()
            )));
        }
        let u32_at = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        let kdf_id = u16::from_be_bytes([bytes[0], bytes[1]]);
        if kdf_id != KDF_ARGON2ID_V13 {
            return Err(Error::UnsupportedFormat(format!(
                "key derivation function id {kdf_id}; this build knows only id {KDF_ARGON2ID_V13} (Argon2id v1.3) — use a newer backup tool"
            )));
        }
        let kdf = KdfParams {
            memory_kib: u32_at(2),
            iterations: u32_at(6),
            parallelism: u32_at(10),
        };
        kdf.validate()?;
        Ok(Keyslot {
            kdf,
            salt: bytes[14..30].try_into().expect("16 bytes"),
            wrapped: bytes[30..].try_into().expect("104 bytes"),
        })
    }
}

fn encode_kdf(kdf: KdfParams) -> [u8; 14] {
    let mut out = [0u8; 14];
    out[..2].copy_from_slice(&KDF_ARGON2ID_V13.to_be_bytes());
    out[2..6].copy_from_slice(&kdf.memory_kib.to_be_bytes());
    out[6..10].copy_from_slice(&kdf.iterations.to_be_bytes());
    out[10..14].copy_from_slice(&kdf.parallelism.to_be_bytes());
    out
}

/// Binds the wrapped key to its KDF id, parameters and salt, so that editing
/// any of them cannot yield a different key that still unwraps.
fn context(kdf: KdfParams, salt: &[u8; 16]) -> [u8; CONTEXT_LEN] {
    let mut out = [0u8; CONTEXT_LEN];
    let (label, rest) = out.split_at_mut(CONTEXT_LABEL.len());
    label.copy_from_slice(CONTEXT_LABEL);
    rest[..14].copy_from_slice(&encode_kdf(kdf));
    rest[14..].copy_from_slice(salt);
    out
}

impl std::fmt::Debug for Keyslot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyslot")
            .field("kdf", &self.kdf)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_is_big_endian() {
        let slot = Keyslot {
            kdf: KdfParams {
                memory_kib: 0x0001_2345,
                iterations: 3,
                parallelism: 4,
            },
            salt: [9; 16],
            wrapped: [5; 104],
        };
        let bytes = slot.to_bytes();
        assert_eq!(
            &bytes[..14],
            &[0, 1, 0, 1, 0x23, 0x45, 0, 0, 0, 3, 0, 0, 0, 4]
        );
        assert_eq!(Keyslot::from_bytes(&bytes).unwrap(), slot);
    }

    #[test]
    fn context_binds_label_kdf_and_salt() {
        let ctx = context(KdfParams::MINIMUM, &[0xAA; 16]);
        assert!(ctx.starts_with(
            b"backup-crypto keyslot v1\x00\x01\x00\x00\x4c\x00\x00\x00\x00\x02\x00\x00\x00\x01"
        ));
        assert!(ctx.ends_with(&[0xAA; 16]));
        assert_eq!(ctx.len(), 24 + 2 + 12 + 16);
    }
}
