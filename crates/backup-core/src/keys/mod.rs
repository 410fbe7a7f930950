//! The domain master secret, the keyring and the master key file.
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use backup_crypto::{DecryptReader, ImageReader, KdfParams, KeyId, Keyslot, MasterKey, Passphrase};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub(crate) mod ops;
pub(crate) mod rewrap;

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

/// Keyring format written while the appliance has only ever had one master key
/// (the format every release before rotation re-keyed wrote).
const KEYRING_FORMAT_SINGLE: u32 = 1;
/// Keyring format written once a rotation has kept earlier master keys.
const KEYRING_FORMAT_ROTATED: u32 = 2;

/// The keyring: the current master key's keyslot (computed once, at init or
/// rotation, and copied into every new image) and the master keys that earlier
/// rotations retired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Keyring {
    /// Keyring format: 1 before any rotation, 2 once it keeps earlier keys.
    pub format: u32,
    /// Hex key id of the current master key (the one new images are sealed with).
    pub key_id: String,
    /// When the current master key was created.
    pub created: DateTime<Utc>,
    /// Hex of the encoded keyslot: the current master key under the current secret.
    pub keyslot: String,
    /// Master keys retired by rotations, newest first, each still needed by
    /// the images it sealed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierKey>,
}

/// A master key retired by a rotation. It is kept twice, both under the
/// current key material: sealed under the current master key, so the key
/// file (or an embedder's [`KeySource`]) opens older images unattended, and
/// in a keyslot under the current secret, which `rewrap` copies into its
/// images' headers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EarlierKey {
    /// Hex key id, as in the headers of the images it sealed.
    pub key_id: String,
    /// When it was created.
    pub created: DateTime<Utc>,
    /// When a rotation retired it.
    pub retired: DateTime<Utc>,
    /// Hex: the key sealed under the current master key.
    pub wrapped: String,
    /// Hex of an encoded keyslot: the key under the current secret.
    pub keyslot: String,
}

impl EarlierKey {
    fn open(&self, current: &MasterKey) -> Result<MasterKey> {
        let damaged = || {
            Error::InvalidImage(format!(
                "the keyring's entry for the earlier master key {} does not open with the current master key {}: the keyring or the key file is damaged — open its images with the secret they were made under",
                self.key_id,
                current.key_id()
            ))
        };
        let id = parse_key_id(&self.key_id).ok_or_else(damaged)?;
        let wrapped = hex::decode(&self.wrapped).map_err(|_| damaged())?;
        MasterKey::unwrap_from(&wrapped, current, id).map_err(|_| damaged())
    }

    fn keyslot(&self) -> Result<Keyslot> {
        decode_keyslot(&self.keyslot, &self.key_id)
    }
}

fn parse_key_id(hex_id: &str) -> Option<KeyId> {
    hex::decode(hex_id).ok()?.try_into().ok().map(KeyId)
}

fn decode_keyslot(hex_slot: &str, key_id: &str) -> Result<Keyslot> {
    let bytes = hex::decode(hex_slot).map_err(|e| {
        Error::InvalidImage(format!(
            "the keyring's keyslot of key {key_id} is not hex: {e}"
        ))
    })?;
    Ok(Keyslot::from_bytes(&bytes)?)
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
        let ring: Keyring = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidImage(format!("the keyring {} is damaged: {e}", path.display()))
        })?;
        if ring.format > KEYRING_FORMAT_ROTATED {
            return Err(Error::InvalidImage(format!(
                "the keyring {} has format {}; this build reads formats up to {KEYRING_FORMAT_ROTATED} — use a newer backup tool",
                path.display(),
                ring.format
            )));
        }
        Ok(Some(ring))
    }

    /// The decoded keyslot of the current master key.
    pub fn keyslot(&self) -> Result<Keyslot> {
        decode_keyslot(&self.keyslot, &self.key_id)
    }

    /// Whether this keyring holds the master key with this hex key id
    /// (current or earlier).
    pub fn knows(&self, key_id: &str) -> bool {
        self.key_id == key_id || self.earlier_key(key_id).is_some()
    }

    /// The keyslot under the current secret of the master key `key_id`
    /// (current or earlier), if this keyring holds that key.
    pub fn keyslot_of(&self, key_id: &str) -> Result<Option<Keyslot>> {
        if self.key_id == key_id {
            return self.keyslot().map(Some);
        }
        self.earlier_key(key_id)
            .map(EarlierKey::keyslot)
            .transpose()
    }

    fn earlier_key(&self, key_id: &str) -> Option<&EarlierKey> {
        self.earlier.iter().find(|e| e.key_id == key_id)
    }

    fn store(&self, state_dir: &Path) -> Result<()> {
        let path = state_dir.join(KEYRING_FILE);
        let text = serde_json::to_vec_pretty(self).expect("keyring serialises");
        crate::util::write_atomic(&path, &text, 0o600)
            .map_err(|e| Error::io(format!("writing the keyring {}", path.display()), e))
    }
}

/// Refuses when the state directory already holds a keyring or a master key
/// file: either may be the only way to open existing images, so setting a new
/// secret must never replace it (rotation is the way to change the secret).
pub fn ensure_not_initialized(state_dir: &Path) -> Result<()> {
    for name in [KEYRING_FILE, KEY_FILE] {
        let path = state_dir.join(name);
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Err(Error::AlreadyInitialized(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("checking {}", path.display()), e)),
        }
    }
    Ok(())
}

/// Sets the domain master secret: creates a master key, its keyslot under
/// `passphrase` (runs Argon2id once), the keyring and the 0600 key file.
/// Refuses if a keyring or a key file exists ([`ensure_not_initialized`]).
pub fn init_keys(state_dir: &Path, passphrase: &Passphrase, params: KdfParams) -> Result<KeyId> {
    ensure_not_initialized(state_dir)?;
    crate::util::create_private_dir(state_dir).map_err(|e| {
        Error::io(
            format!("creating the state directory {}", state_dir.display()),
            e,
        )
    })?;
    let mk = MasterKey::generate()?;
    let slot = Keyslot::seal(&mk, passphrase, params)?;
    write_key_file(state_dir, &mk)?;
    let ring = Keyring {
        format: KEYRING_FORMAT_SINGLE,
        key_id: mk.key_id().to_string(),
        created: Utc::now(),
        keyslot: hex::encode(slot.to_bytes()),
        earlier: Vec::new(),
    };
    ring.store(state_dir)?;
    Ok(mk.key_id())
}

fn write_key_file(state_dir: &Path, mk: &MasterKey) -> Result<()> {
    let key_path = state_dir.join(KEY_FILE);
    crate::util::write_atomic(&key_path, mk.as_bytes(), 0o600).map_err(|e| {
        Error::io(
            format!("writing the master key file {}", key_path.display()),
            e,
        )
    })
}

/// How the engine obtains keys: for writing (master key + keyslot) and for
/// opening images (a known master key — the key source's, or an earlier one
/// the keyring keeps under it — else the passphrase against the keyring or
/// the image's own keyslot).
pub(crate) struct Keys {
    state_dir: PathBuf,
    source: Box<dyn KeySource>,
    passphrase: Arc<dyn PassphraseProvider>,
    /// Master keys already unwrapped in this process (Argon2 runs once).
    cache: Mutex<Vec<MasterKey>>,
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
            cache: Mutex::new(Vec::new()),
        }
    }

    /// The current master key and keyslot to seal new images with.
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
                "unlock the master key (the state directory's key file does not hold it)",
                false,
            )?
            .ok_or_else(|| Error::PassphraseRequired("unlock the master key".into()))?;
        let mk = slot.open(&pass)?;
        self.remember(&mk);
        Ok((mk, slot))
    }

    fn cached(&self, key_id: &str) -> Option<MasterKey> {
        self.cache
            .lock()
            .expect("key cache")
            .iter()
            .find(|mk| mk.key_id().to_string() == key_id)
            .cloned()
    }

    fn remember(&self, mk: &MasterKey) {
        let mut cache = self.cache.lock().expect("key cache");
        if !cache.iter().any(|k| k.key_id() == mk.key_id()) {
            cache.push(mk.clone());
        }
    }

    /// A master key with this hex key id, if one is at hand without a
    /// passphrase: unwrapped before, from the key source, or an earlier key
    /// the keyring keeps sealed under the current one.
    fn known_key(&self, key_id: &str) -> Result<Option<MasterKey>> {
        if let Some(mk) = self.cached(key_id) {
            return Ok(Some(mk));
        }
        let from_source = self.source.master_key()?;
        if let Some(mk) = from_source
            .as_ref()
            .filter(|mk| mk.key_id().to_string() == key_id)
        {
            return Ok(Some(mk.clone()));
        }
        let Some(ring) = Keyring::load(&self.state_dir)? else {
            return Ok(None);
        };
        let Some(entry) = ring.earlier_key(key_id) else {
            return Ok(None);
        };
        let current = self
            .cached(&ring.key_id)
            .or_else(|| from_source.filter(|mk| mk.key_id().to_string() == ring.key_id));
        let Some(current) = current else {
            return Ok(None);
        };
        let mk = entry.open(&current)?;
        self.remember(&mk);
        Ok(Some(mk))
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
                let why = match Keyring::load(&self.state_dir) {
                    Ok(Some(ring)) if ring.knows(&id) => {
                        "the keyring holds its key, but no key file holds the current master key"
                    }
                    _ => "its key is not on this appliance",
                };
                Error::PassphraseRequired(format!("open {what} ({why})"))
            })?;
        let mk = self.open_with_passphrase(&id, reader.header().keyslot(), &pass)?;
        Ok(reader.unlock(&mk)?)
    }

    /// The master key `key_id` from a passphrase: through the keyring when it
    /// holds that key (the current secret opens the current key, and with it
    /// every earlier one), else — or when the passphrase is not the current
    /// secret — through the image's own keyslot (the secret it was made under,
    /// or the one a rewrap gave it).
    fn open_with_passphrase(
        &self,
        key_id: &str,
        image_slot: &Keyslot,
        pass: &Passphrase,
    ) -> Result<MasterKey> {
        if let Some(ring) = Keyring::load(&self.state_dir)?.filter(|r| r.knows(key_id)) {
            let slot = ring.keyslot()?;
            let same_as_image = ring.key_id == key_id && slot == *image_slot;
            if !same_as_image {
                match slot.open(pass) {
                    Ok(current) => {
                        self.remember(&current);
                        if let Some(mk) = self.known_key(key_id)? {
                            return Ok(mk);
                        }
                    }
                    Err(backup_crypto::Error::WrongPassphrase) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mk = image_slot.open(pass)?;
        self.remember(&mk);
        Ok(mk)
    }
}

/// Checks a passphrase against the keyring without changing anything.
pub fn check_passphrase(state_dir: &Path, passphrase: &Passphrase) -> Result<KeyId> {
    let ring =
        Keyring::load(state_dir)?.ok_or_else(|| Error::NotInitialized(state_dir.to_path_buf()))?;
    Ok(ring.keyslot()?.open(passphrase)?.key_id())
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// Hex key id of the new master key, which seals every image from now on.
    pub key_id: String,
    /// Hex key id of the master key it replaced.
    pub previous: String,
    /// Hex key ids of the earlier master keys the keyring keeps (the replaced
    /// one first), now under the new secret.
    pub kept: Vec<String>,
    /// Whether the state directory's key file now holds the new master key
    /// (it is replaced when there is one, never created).
    pub key_file_updated: bool,
}

/// Rotates the domain master secret and re-keys: a new master key for new
/// images, its keyslot under `new` (Argon2id with `params`), and the keyring
/// keeps every earlier master key — the one replaced and those of earlier
/// rotations — sealed under the new master key and in keyslots under `new`,
/// so older images still open on this appliance with the key file or the new
/// secret. The `current` secret opens nothing made after the rotation; it
/// still opens the older images whose headers carry its keyslot, until
/// `rewrap` gives them the new one. The key file, if there is one, is
/// replaced by the new master key (before the keyring, which is the commit
/// point: a crash in between leaves the old keyring and the old secret
/// working, and the rotation can be run again).
pub fn rotate_keys(
    state_dir: &Path,
    current: &Passphrase,
    new: &Passphrase,
    params: KdfParams,
) -> Result<Rotation> {
    let ring =
        Keyring::load(state_dir)?.ok_or_else(|| Error::NotInitialized(state_dir.to_path_buf()))?;
    let retiring = ring.keyslot()?.open(current)?;
    if retiring.key_id().to_string() != ring.key_id {
        return Err(Error::InvalidImage(format!(
            "the keyring's keyslot holds key {} but names key {}: the keyring is damaged",
            retiring.key_id(),
            ring.key_id
        )));
    }
    let now = Utc::now();
    let mut kept = vec![(
        retiring.clone(),
        EarlierKey {
            key_id: ring.key_id.clone(),
            created: ring.created,
            retired: now,
            wrapped: String::new(),
            keyslot: String::new(),
        },
    )];
    for entry in &ring.earlier {
        kept.push((entry.open(&retiring)?, entry.clone()));
    }
    let mk = MasterKey::generate()?;
    let slot = Keyslot::seal(&mk, new, params)?;
    let mut earlier = Vec::with_capacity(kept.len());
    for (old, entry) in kept {
        earlier.push(EarlierKey {
            wrapped: hex::encode(old.wrap_under(&mk)?),
            keyslot: hex::encode(Keyslot::seal(&old, new, params)?.to_bytes()),
            ..entry
        });
    }
    let rotated = Keyring {
        format: KEYRING_FORMAT_ROTATED,
        key_id: mk.key_id().to_string(),
        created: now,
        keyslot: hex::encode(slot.to_bytes()),
        earlier,
    };

    let key_path = state_dir.join(KEY_FILE);
    let previous_key_file = match std::fs::read(&key_path) {
        Ok(bytes) => Some(zeroize::Zeroizing::new(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::io(
                format!("reading the master key file {}", key_path.display()),
                e,
            ))
        }
    };
    if previous_key_file.is_some() {
        write_key_file(state_dir, &mk)?;
    }
    if let Err(e) = rotated.store(state_dir) {
        if let Some(bytes) = &previous_key_file {
            // Put the old key back so the old keyring keeps working unattended.
            let _ = crate::util::write_atomic(&key_path, bytes, 0o600);
        }
        return Err(e);
    }
    Ok(Rotation {
        key_id: rotated.key_id.clone(),
        previous: ring.key_id,
        kept: rotated.earlier.iter().map(|e| e.key_id.clone()).collect(),
        key_file_updated: previous_key_file.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use backup_crypto::{EncryptWriter, Header};

    use super::*;

    /// A state directory (`keyring.json`, `master.key`) and an image written
    /// by `backup init` and `backup create` before rotation re-keyed, with
    /// this secret.
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/keyring-v1");
    const FIXTURE_SECRET: &str = "fixture secret (keyring format 1)";
    const NEW_SECRET: &str = "the secret after rotation";

    struct Fixed(&'static str);
    impl PassphraseProvider for Fixed {
        fn passphrase(&self, _: &str, _: bool) -> Result<Option<Passphrase>> {
            Ok(Some(pass(self.0)))
        }
    }
    struct NoKey;
    impl KeySource for NoKey {
        fn master_key(&self) -> Result<Option<MasterKey>> {
            Ok(None)
        }
    }

    fn pass(s: &str) -> Passphrase {
        Passphrase::new(s.into()).unwrap()
    }

    fn fixture_state() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for name in [KEYRING_FILE, KEY_FILE] {
            std::fs::copy(Path::new(FIXTURE).join(name), dir.path().join(name)).unwrap();
        }
        dir
    }

    fn fixture_image() -> Vec<u8> {
        std::fs::read(Path::new(FIXTURE).join("image.bkp")).unwrap()
    }

    fn with_key_file(state: &Path) -> Keys {
        Keys::new(
            state.to_path_buf(),
            Box::new(KeyFile::in_state_dir(state)),
            Arc::new(NoPassphrase),
        )
    }

    fn with_secret(state: &Path, secret: &'static str) -> Keys {
        Keys::new(
            state.to_path_buf(),
            Box::new(NoKey),
            Arc::new(Fixed(secret)),
        )
    }

    /// Opens `image` with `keys` and reads it to the end.
    fn open(keys: &Keys, image: &[u8]) -> Result<Vec<u8>> {
        let mut payload = keys.unlock(ImageReader::new(image)?, "the test image")?;
        let mut plain = Vec::new();
        payload
            .read_to_end(&mut plain)
            .map_err(|e| Error::from_pipeline_io("reading", e))?;
        Ok(plain)
    }

    fn seal(keys: &Keys, plain: &[u8]) -> Vec<u8> {
        let (mk, slot) = keys.for_writing().unwrap();
        let mut w = EncryptWriter::new(Vec::new(), &mk, &slot, 1_800_000_000).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn a_keyring_from_before_re_keying_loads_opens_its_images_and_rotates() {
        let dir = fixture_state();
        let state = dir.path();
        let ring = Keyring::load(state).unwrap().unwrap();
        assert_eq!(ring.format, 1);
        assert!(ring.earlier.is_empty());
        let old_id = ring.key_id.clone();
        let old_key = std::fs::read(state.join(KEY_FILE)).unwrap();
        assert_eq!(
            check_passphrase(state, &pass(FIXTURE_SECRET))
                .unwrap()
                .to_string(),
            old_id
        );
        let image = fixture_image();
        let plain = open(&with_key_file(state), &image).unwrap();
        assert_eq!(&plain[..2], &[0x1f, 0x8b], "a gzip payload");
        let (mk, _) = with_key_file(state).for_writing().unwrap();
        assert_eq!(mk.key_id().to_string(), old_id);

        let rotation = rotate_keys(
            state,
            &pass(FIXTURE_SECRET),
            &pass(NEW_SECRET),
            KdfParams::MINIMUM,
        )
        .unwrap();
        assert_eq!(rotation.previous, old_id);
        assert_ne!(rotation.key_id, old_id);
        assert_eq!(rotation.kept, std::slice::from_ref(&old_id));
        assert!(rotation.key_file_updated);
        let ring = Keyring::load(state).unwrap().unwrap();
        assert_eq!((ring.format, &ring.key_id), (2, &rotation.key_id));
        let new_key = std::fs::read(state.join(KEY_FILE)).unwrap();
        assert_ne!(new_key, old_key, "the key file holds the new master key");

        // The old image: with the key file (through the kept key), with the
        // new secret (the keyring), with the old secret (its own header).
        assert_eq!(open(&with_key_file(state), &image).unwrap(), plain);
        assert_eq!(
            open(&with_secret(state, NEW_SECRET), &image).unwrap(),
            plain
        );
        assert_eq!(
            open(&with_secret(state, FIXTURE_SECRET), &image).unwrap(),
            plain
        );
        // A new image: the new key; the old secret opens it neither here nor
        // on a bare machine.
        let (mk, _) = with_key_file(state).for_writing().unwrap();
        assert_eq!(mk.key_id().to_string(), rotation.key_id);
        let new_image = seal(&with_key_file(state), b"after the rotation");
        assert_eq!(
            open(&with_secret(state, NEW_SECRET), &new_image).unwrap(),
            b"after the rotation"
        );
        let bare = tempfile::tempdir().unwrap();
        for keys in [
            with_secret(state, FIXTURE_SECRET),
            with_secret(bare.path(), FIXTURE_SECRET),
        ] {
            assert!(matches!(
                open(&keys, &new_image),
                Err(Error::Crypto(backup_crypto::Error::WrongPassphrase))
            ));
        }
        assert!(matches!(
            check_passphrase(state, &pass(FIXTURE_SECRET)),
            Err(Error::Crypto(backup_crypto::Error::WrongPassphrase))
        ));
    }

    #[test]
    fn every_rotation_keeps_all_earlier_keys_under_the_newest_key_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path();
        let secrets = ["secret number 0", "secret number 1", "secret number 2"];
        init_keys(state, &pass(secrets[0]), KdfParams::MINIMUM).unwrap();
        let text = std::fs::read_to_string(state.join(KEYRING_FILE)).unwrap();
        assert!(!text.contains("earlier"), "init writes format 1: {text}");
        let mut images = vec![seal(&with_key_file(state), b"image 0")];
        for i in 1..secrets.len() {
            rotate_keys(
                state,
                &pass(secrets[i - 1]),
                &pass(secrets[i]),
                KdfParams::MINIMUM,
            )
            .unwrap();
            images.push(seal(&with_key_file(state), format!("image {i}").as_bytes()));
        }
        let ring = Keyring::load(state).unwrap().unwrap();
        let ids: Vec<String> = images
            .iter()
            .map(|i| Header::parse(i).unwrap().key_id().to_string())
            .collect();
        assert_eq!(ring.key_id, ids[2]);
        let kept: Vec<&str> = ring.earlier.iter().map(|e| e.key_id.as_str()).collect();
        assert_eq!(kept, [ids[1].as_str(), ids[0].as_str()]);

        let newest = "secret number 2";
        for (i, image) in images.iter().enumerate() {
            let want = format!("image {i}").into_bytes();
            assert_eq!(open(&with_key_file(state), image).unwrap(), want);
            assert_eq!(open(&with_secret(state, newest), image).unwrap(), want);
            // The keyslot `rewrap` copies opens with the newest secret alone.
            let slot = ring.keyslot_of(&ids[i]).unwrap().unwrap();
            assert_eq!(
                slot.open(&pass(newest)).unwrap().key_id().to_string(),
                ids[i]
            );
        }
        // A secret of an earlier rotation does not open the keyring's copies.
        let middle = with_secret(state, "secret number 1");
        assert!(open(&middle, &images[0]).is_err());
        assert!(open(&middle, &images[2]).is_err());
        assert_eq!(open(&middle, &images[1]).unwrap(), b"image 1");
    }

    #[test]
    fn init_refuses_a_state_directory_holding_either_file() {
        for existing in [KEYRING_FILE, KEY_FILE] {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(existing), b"kept").unwrap();
            let err = init_keys(dir.path(), &pass("a new secret"), KdfParams::MINIMUM).unwrap_err();
            assert!(
                matches!(&err, Error::AlreadyInitialized(p) if p.ends_with(existing)),
                "{err}"
            );
            assert!(err.to_string().contains(existing), "{err}");
            assert_eq!(std::fs::read(dir.path().join(existing)).unwrap(), b"kept");
            let other = if existing == KEY_FILE {
                KEYRING_FILE
            } else {
                KEY_FILE
            };
            assert!(!dir.path().join(other).exists(), "{other} was written");
        }
    }
}
