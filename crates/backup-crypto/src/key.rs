use std::fmt;
use std::io::{Read, Write};

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::{ChunkedReader, ChunkedWriter, Error};

/// Length of a master key wrapped under another by [`MasterKey::wrap_under`]:
/// 24 salt + 32 commitment + 32 key + 16 tag.
pub const WRAPPED_KEY_LEN: usize = 104;
const WRAP_LABEL: &[u8] = b"backup-crypto wrapped key v1";

/// The appliance's 32-byte master key (MK). Zeroized on drop; never printed.
#[derive(Clone)]
pub struct MasterKey(Zeroizing<[u8; 32]>);

/// A short public fingerprint of a master key, recorded in every header to
/// recognise an image of another domain without trying to decrypt it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

impl MasterKey {
    /// A fresh random master key from the operating system's CSPRNG.
    pub fn generate() -> Result<MasterKey, Error> {
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(key.as_mut()).map_err(|e| Error::Random(e.to_string()))?;
        Ok(MasterKey(key))
    }

    /// Wraps existing key bytes (for example read from the key file).
    /// Fails with [`Error::InvalidKeyLength`] unless `bytes` has 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<MasterKey, Error> {
        if bytes.len() != 32 {
            return Err(Error::InvalidKeyLength(bytes.len()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        Ok(MasterKey(key))
    }

    /// The raw key bytes (to store in the 0600 key file).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key id: the first 8 bytes of SHA-256("backup-crypto key id v1" || MK).
    pub fn key_id(&self) -> KeyId {
        let digest = Sha256::new()
            .chain_update(b"backup-crypto key id v1")
            .chain_update(self.0.as_ref())
            .finalize();
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        KeyId(id)
    }

    /// Seals this key under `kek`, another master key, with C2SP chunked
    /// encryption (the construction of the keyslot, the input key being `kek`
    /// instead of an Argon2id output). A keyring uses it to keep the master
    /// keys of earlier rotations openable with the current one, so that a key
    /// file holding only the current key still opens older images.
    pub fn wrap_under(&self, kek: &MasterKey) -> Result<[u8; WRAPPED_KEY_LEN], Error> {
        let mut writer = ChunkedWriter::new(
            Vec::with_capacity(WRAPPED_KEY_LEN),
            kek.as_bytes(),
            &wrap_context(kek.key_id(), self.key_id()),
        )?;
        writer.write_all(self.as_bytes())?;
        Ok(writer
            .finish()?
            .try_into()
            .expect("a 32-byte message seals to 104 bytes"))
    }

    /// Opens a key sealed by [`MasterKey::wrap_under`] under `kek`, expecting
    /// key id `key_id` (bound into the seal, and checked again after opening).
    /// Any mismatch — another `kek`, another id, altered bytes — gives
    /// [`Error::DecryptionFailed`].
    pub fn unwrap_from(wrapped: &[u8], kek: &MasterKey, key_id: KeyId) -> Result<MasterKey, Error> {
        if wrapped.len() != WRAPPED_KEY_LEN {
            return Err(Error::DecryptionFailed);
        }
        let mut reader =
            ChunkedReader::new(wrapped, kek.as_bytes(), &wrap_context(kek.key_id(), key_id))
                .map_err(|_| Error::DecryptionFailed)?;
        let mut key = Zeroizing::new(Vec::with_capacity(33));
        reader
            .read_to_end(&mut key)
            .map_err(|_| Error::DecryptionFailed)?;
        let mk = MasterKey::from_bytes(&key).map_err(|_| Error::DecryptionFailed)?;
        if mk.key_id() != key_id {
            return Err(Error::DecryptionFailed);
        }
        Ok(mk)
    }
}

/// Binds a wrapped key to the key that wraps it and to its own key id.
fn wrap_context(kek: KeyId, wrapped: KeyId) -> Vec<u8> {
    [WRAP_LABEL, &kek.0[..], &wrapped.0[..]].concat()
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({})", self.key_id())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_opens_only_under_its_kek_and_its_id() {
        let kek = MasterKey::generate().unwrap();
        let other = MasterKey::generate().unwrap();
        let old = MasterKey::generate().unwrap();
        let wrapped = old.wrap_under(&kek).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_KEY_LEN);
        let opened = MasterKey::unwrap_from(&wrapped, &kek, old.key_id()).unwrap();
        assert_eq!(opened.as_bytes(), old.as_bytes());

        let fails = |bytes: &[u8], kek: &MasterKey, id: KeyId| {
            matches!(
                MasterKey::unwrap_from(bytes, kek, id),
                Err(Error::DecryptionFailed)
            )
        };
        assert!(fails(&wrapped, &other, old.key_id()), "another kek");
        assert!(fails(&wrapped, &kek, other.key_id()), "another key id");
        assert!(fails(&wrapped[..100], &kek, old.key_id()), "truncated");
        for i in [0, 30, 60, WRAPPED_KEY_LEN - 1] {
            let mut bad = wrapped;
            bad[i] ^= 1;
            assert!(fails(&bad, &kek, old.key_id()), "byte {i} flipped");
        }
    }
}
