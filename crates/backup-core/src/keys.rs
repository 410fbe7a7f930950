//! The domain master secret, the keyring and the master key file.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backup_crypto::{DecryptReader, ImageReader, KdfParams, KeyId, Keyslot, MasterKey, Passphrase};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// File name of the keyring (the passphrase-wrapped master key) in the state directory.
pub const KEYRING_FILE: &str = "keyring.json";
/// File name of the root-only master key file in the state directory.
pub const KEY_FILE: &str = "master.key";

/// Asks for the domain master secret. The CLI prompts on a terminal or reads
/// `BACKUP_SECRET` / `--secret-file`; an embedder may read its own vault.
pub trait PassphraseProvider: Send + Sync {
    /// The passphrase, or `None` if none can be had. `purpose` says why it is
    /// needed; `confirm` asks for it twice (when a new secret is set).
    fn passphrase(&self, purpose: &str, confirm: bool) -> Result<Option<Passphrase>>;
}

/// Never has a passphrase (unattended use with a key file).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoPassphrase;

impl PassphraseProvider for NoPassphrase {
    fn passphrase(&self, _purpose: &str, _confirm: bool) -> Result<Option<Passphrase>> {
        Ok(None)
    }
}

/// Supplies the master key for unattended backups without a passphrase.
/// The default reads the 0600 key file in the state directory; an embedder can
/// supply the key from its own secure store instead.
pub trait KeySource: Send + Sync {
    /// The master key, or `None` if this source has none.
    fn master_key(&self) -> Result<Option<MasterKey>>;
}

/// The master key file (`master.key`, mode 0600) in a state directory.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// The key file of a state directory.
    pub fn in_state_dir(state_dir: &Path) -> KeyFile {
        KeyFile {
            path: state_dir.join(KEY_FILE),
        }
    }
}

impl KeySource for KeyFile {
    fn master_key(&self) -> Result<Option<MasterKey>> {
        match std::fs::read(&self.path) {
            Ok(bytes) => Ok(Some(MasterKey::from_bytes(&bytes).map_err(|_| {
                Error::InvalidImage(format!(
                    "the master key file {} is damaged (expected 32 bytes); remove it and unlock with the passphrase",
                    self.path.display()
                ))
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading the master key file {}", self.path.display()), e)),
        }
    }
}

/// The keyring: the keyslot computed once at init and copied into every image.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyring {
    /// Keyring format (1).
    pub format: u32,
    /// Hex key id of the master key.
    pub key_id: String,
    /// When the secret was set.
    pub created: DateTime<Utc>,
    /// Hex of the encoded keyslot.
    pub keyslot: String,
}

impl Keyring {
    /// Reads the keyring of a state directory (`None` if there is none).
    pub fn load(state_dir: &Path) -> Result<Option<Keyring>> {
        let path = state_dir.join(KEYRING_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(Error::io(
                    format!("reading the keyring {}", path.display()),
                    e,
                ))
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            Error::InvalidImage(format!("the keyring {} is damaged: {e}", path.display()))
        })
    }

    /// The decoded keyslot.
    pub fn keyslot(&self) -> Result<Keyslot> {
        let bytes = hex::decode(&self.keyslot)
            .map_err(|e| Error::InvalidImage(format!("the keyring's keyslot is not hex: {e}")))?;
        Ok(Keyslot::from_bytes(&bytes)?)
    }

    fn store(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(KEYRING_FILE);
        let text = serde_json::to_vec_pretty(self).expect("keyring serialises");
        crate::util::write_atomic(&path, &text, 0o600)
            .map_err(|e| Error::io(format!("writing the keyring {}", path.display()), e))
    }
}

/// Sets the domain master secret: creates a master key, its keyslot under
/// `passphrase` (runs Argon2id once), the keyring and the 0600 key file.
/// Refuses if a keyring exists.
pub fn init_keys(state_dir: &Path, passphrase: &Passphrase, params: KdfParams) -> Result<KeyId> {
    let keyring_path = state_dir.join(KEYRING_FILE);
    if keyring_path.exists() {
        return Err(Error::AlreadyInitialized(keyring_path));
    }
    crate::util::create_private_dir(state_dir).map_err(|e| {
        Error::io(
            format!("creating the state directory {}", state_dir.display()),
            e,
        )
    })?;
    let mk = MasterKey::generate()?;
    let slot = Keyslot::seal(&mk, passphrase, params)?;
    let key_path = state_dir.join(KEY_FILE);
    crate::util::write_atomic(&key_path, mk.as_bytes(), 0o600).map_err(|e| {
        Error::io(
            format!("writing the master key file {}", key_path.display()),
            e,
        )
    })?;
    let ring = Keyring {
        format: 1,
        key_id: mk.key_id().to_string(),
        created: Utc::now(),
        keyslot: hex::encode(slot.to_bytes()),
    };
    ring.store(state_dir)?;
    Ok(mk.key_id())
}

/// How the engine obtains keys: for writing (master key + keyslot) and for
/// opening images (a known master key, else the passphrase against the
/// image's own keyslot).
pub(crate) struct Keys {
    state_dir: PathBuf,
    source: Box<dyn KeySource>,
    passphrase: Arc<dyn PassphraseProvider>,
    /// A master key already unwrapped in this process (Argon2 runs once).
    cache: Mutex<Option<MasterKey>>,
}

impl Keys {
    pub(crate) fn new(
        state_dir: PathBuf,
        source: Box<dyn KeySource>,
        passphrase: Arc<dyn PassphraseProvider>,
    ) -> Keys {
        Keys {
            state_dir,
            source,
            passphrase,
            cache: Mutex::new(None),
        }
    }

    /// The master key and keyslot to seal new images with.
    pub(crate) fn for_writing(&self) -> Result<(MasterKey, Keyslot)> {
        let ring = Keyring::load(&self.state_dir)?
            .ok_or_else(|| Error::NotInitialized(self.state_dir.clone()))?;
        let slot = ring.keyslot()?;
        if let Some(mk) = self.known_key(&ring.key_id)? {
            return Ok((mk, slot));
        }
        let pass = self
            .passphrase
            .passphrase(
                "unlock the master key (no key file in the state directory)",
                false,
            )?
            .ok_or_else(|| Error::PassphraseRequired("unlock the master key".into()))?;
        let mk = slot.open(&pass)?;
        *self.cache.lock().expect("key cache") = Some(mk.clone());
        Ok((mk, slot))
    }

    /// A master key with this hex key id, if one is at hand without a passphrase.
    fn known_key(&self, key_id: &str) -> Result<Option<MasterKey>> {
        if let Some(mk) = self.cache.lock().expect("key cache").as_ref() {
            if mk.key_id().to_string() == key_id {
                return Ok(Some(mk.clone()));
            }
        }
        Ok(self
            .source
            .master_key()?
            .filter(|mk| mk.key_id().to_string() == key_id))
    }

    /// Unlocks an image whose header has been read.
    pub(crate) fn unlock<R: Read>(
        &self,
        reader: ImageReader<R>,
        what: &str,
    ) -> Result<DecryptReader<R>> {
        let id = reader.header().key_id().to_string();
        if let Some(mk) = self.known_key(&id)? {
            return Ok(reader.unlock(&mk)?);
        }
        let pass = self
            .passphrase
            .passphrase(&format!("open {what}"), false)?
            .ok_or_else(|| {
                Error::PassphraseRequired(format!("open {what} (its key is not on this appliance)"))
            })?;
        let mk = reader.header().keyslot().open(&pass)?;
        *self.cache.lock().expect("key cache") = Some(mk.clone());
        Ok(reader.unlock(&mk)?)
    }
}

/// Checks a passphrase against the keyring without changing anything.
pub fn check_passphrase(state_dir: &Path, passphrase: &Passphrase) -> Result<KeyId> {
    let ring =
        Keyring::load(state_dir)?.ok_or_else(|| Error::NotInitialized(state_dir.to_path_buf()))?;
    Ok(ring.keyslot()?.open(passphrase)?.key_id())
}

/// Rotates the domain master secret: the master key stays, its keyslot is
/// rewrapped under `new` (Argon2id with `params`). New images carry the new
/// keyslot; older images keep opening with the old passphrase until rewrapped.
pub fn rotate_keys(
    state_dir: &Path,
    current: &Passphrase,
    new: &Passphrase,
    params: KdfParams,
) -> Result<KeyId> {
    let mut ring =
        Keyring::load(state_dir)?.ok_or_else(|| Error::NotInitialized(state_dir.to_path_buf()))?;
    let mk = ring.keyslot()?.open(current)?;
    let slot = Keyslot::seal(&mk, new, params)?;
    ring.keyslot = hex::encode(slot.to_bytes());
    ring.store(state_dir)?;
    Ok(mk.key_id())
}
