//! The JSON documents inside an image and its sidecar.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use crate::model::{Outcome, PlannedComponent};

use crate::model::{Compression, Role};

/// Version of the payload layout (`backup.json` … `manifest.json`) this
/// engine writes. Format 2 differs from 1 only in how a component's digest
/// covers content (see [`crate::image::DigestScheme`]); both are read.
pub(crate) const PAYLOAD_FORMAT: u32 = 2;
/// The oldest payload format this engine reads.
pub(crate) const OLDEST_PAYLOAD_FORMAT: u32 = 1;

/// `backup.json`: the first entry of every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// Version of the payload layout; this engine writes 2 and reads 1 and 2.
    pub format: u32,
    /// Product name.
    pub product: String,
    /// Product version.
    pub product_version: String,
    /// Node id.
    pub node: String,
    /// Node role.
    pub role: Role,
    /// Cluster id.
    pub cluster: Option<String>,
    /// Creation time (UTC).
    pub created: DateTime<Utc>,
    /// `standard` or `custom`.
    pub selection: Selection,
    /// The components the backup set out to take, in archive order.
    pub components: Vec<PlannedComponent>,
    /// Components a standard backup left out because they were not
    /// applicable on this node: name → why (absent in older images).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub not_applicable: std::collections::BTreeMap<String, String>,
    /// Payload codec.
    pub compression: Compression,
    /// Version of the engine that wrote it.
    pub engine_version: String,
}

/// How the component set was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// Every applicable default component.
    Standard,
    /// Components named by the operator.
    Custom,
}

/// `manifest.json`: the last entry of every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Overall outcome (`success` or `partial`).
    pub outcome: Outcome,
    /// One record per planned component, in archive order.
    pub components: Vec<ComponentRecord>,
}

impl Manifest {
    /// The components that failed (those a partial image lacks).
    pub fn failed_components(&self) -> Vec<String> {
        self.components
            .iter()
            .filter(|c| c.outcome != Outcome::Success)
            .map(|c| c.name.clone())
            .collect()
    }
}

/// What a component captured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRecord {
    /// Name.
    pub name: String,
    /// Kind.
    pub kind: String,
    /// `success`, `failed` or `skipped`.
    pub outcome: Outcome,
    /// Archive entries written.
    pub entries: u64,
    /// Content bytes written (file data, not headers).
    pub bytes: u64,
    /// Hex SHA-256 over the component's entries (see [`crate::image::EntryDigest`];
    /// how it covers content depends on the payload format).
    pub sha256: String,
    /// Why it failed or was skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Non-fatal warnings (files that changed while read, skipped sockets, …).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The encrypted `<image>.manifest` object stored beside an image, so that
/// listing and pre-checks need not download the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sidecar {
    /// The image's object name.
    pub image: String,
    /// The image's size in bytes.
    pub image_size: u64,
    /// A copy of `backup.json`.
    pub info: BackupInfo,
    /// A copy of `manifest.json`.
    pub manifest: Manifest,
}
