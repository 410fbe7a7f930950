//! Image encryption format v1 for the appliance backup engine.
//!
//! An encrypted image is a fixed-length, hand-encoded [`Header`] followed by a
//! [C2SP chunked encryption](https://c2sp.org/chunked-encryption) stream
//! instantiated as *Cobblestone-256* (HKDF-Expand-SHA-512 + AES-256-GCM,
//! 16 KiB chunks, the final chunk always shorter). The payload key is the
//! appliance's 32-byte [`MasterKey`]; every header carries a copy of the
//! passphrase-wrapped master key (the [`Keyslot`]) so that an image plus the
//! passphrase is enough to restore on a bare machine.
//!
//! Writing never runs Argon2: the keyslot is computed once (at init or key
//! rotation) and copied into each header. Reading either uses a known master
//! key or unwraps the header's keyslot with the passphrase.
//!
//! ```
//! use std::io::{Read, Write};
//! use backup_crypto::{EncryptWriter, ImageReader, KdfParams, Keyslot, MasterKey, Passphrase};
//!
//! # fn main() -> Result<(), backup_crypto::Error> {
//! let mk = MasterKey::generate()?;
//! let pass = Passphrase::new("correct horse battery".to_string())?;
//! let slot = Keyslot::seal(&mk, &pass, KdfParams::MINIMUM)?; // once, at init
//!
//! let mut w = EncryptWriter::new(Vec::new(), &mk, &slot, 1_700_000_000)?;
//! w.write_all(b"hello appliance")?;
//! let image = w.finish()?;
//!
//! let reader = ImageReader::new(&image[..])?; // parses and checks the header
//! let mut plain = Vec::new();
//! reader.unlock_with_passphrase(&pass)?.read_to_end(&mut plain)?;
//! assert_eq!(plain, b"hello appliance");
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

mod chunked;
mod error;
mod header;
mod image;
mod kdf;
mod key;
mod keyslot;

pub use chunked::{ChunkedReader, ChunkedWriter, CHUNK_SIZE, STREAM_PREFIX_LEN, TAG_LEN};
pub use error::Error;
pub use header::{Header, FORMAT_VERSION, HEADER_LEN, MAGIC, SUITE_COBBLESTONE_256};
pub use image::{DecryptReader, EncryptWriter, ImageReader};
pub use kdf::{KdfParams, Passphrase, MIN_PASSPHRASE_CHARS};
pub use key::{KeyId, MasterKey, WRAPPED_KEY_LEN};
pub use keyslot::{Keyslot, KEYSLOT_LEN};
