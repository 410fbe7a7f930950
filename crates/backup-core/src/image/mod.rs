//! The image: an encrypted tar stream with `backup.json`, `components/<name>/…`
//! and `manifest.json`, plus the encrypted sidecar manifest.
pub(crate) mod check;
// The benchmarks measure the codecs directly: with the `bench` feature,
// `crate::bench` re-exports the encoder and decoder.
#[cfg_attr(not(feature = "bench"), allow(unreachable_pub))]
pub(crate) mod codec;
mod digest;
pub(crate) mod frame_cache;
mod gunzip;
mod meta;
mod name;
mod parallel;
pub(crate) mod pipe;
mod pool;
pub(crate) mod reader;
mod unzstd;
pub(crate) mod writer;

pub use digest::{DigestScheme, EntryDigest, EntryKind};
pub use meta::{
    BackupInfo, ComponentRecord, Manifest, Outcome, PlannedComponent, Selection, Sidecar,
};
pub(crate) use meta::{OLDEST_PAYLOAD_FORMAT, PAYLOAD_FORMAT};
pub(crate) use name::{
    image_name, parse_image_name, sidecar_name, ParsedName, IMAGE_EXT, SIDECAR_SUFFIX,
};

/// Archive path of `backup.json`.
pub(crate) const BACKUP_JSON: &str = "backup.json";
/// Archive path of `manifest.json`.
pub(crate) const MANIFEST_JSON: &str = "manifest.json";
/// Directory holding the components in the archive.
pub(crate) const COMPONENTS_DIR: &str = "components";

/// Bytes of tar padding after `size` bytes of an entry's data.
pub(crate) fn tar_padding(size: u64) -> u64 {
    (512 - size % 512) % 512
}
