use std::fmt;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::Error;

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
