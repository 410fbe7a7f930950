//! The JSON documents inside an image and its sidecar.
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Compression, Role};

/// Version of the payload layout (`backup.json` … `manifest.json`).
pub const PAYLOAD_FORMAT: u32 = 1;

/// `backup.json`: the first entry of every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupInfo {
    /// [`PAYLOAD_FORMAT`].
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

/// A component as planned, with what restore needs to know up front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedComponent {
    /// Name.
    pub name: String,
    /// Kind (`files`, `sqlite`, `command`, or a custom kind).
    pub kind: String,
    /// Absolute paths the component's entries live under (empty for `command`).
    #[serde(default)]
    pub roots: Vec<String>,
}

/// Result of one component, or of a whole backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Everything was captured.
    Success,
    /// Some components failed; the rest were captured.
    Partial,
    /// Nothing usable was captured.
    Failed,
    /// Not run (another backup was running, or not applicable on this node).
    Skipped,
}

impl Outcome {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Partial => "partial",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `manifest.json`: the last entry of every image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Overall outcome (`success` or `partial`).
    pub outcome: Outcome,
    /// One record per planned component, in archive order.
    pub components: Vec<ComponentRecord>,
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
    /// Hex SHA-256 over the component's entries (see [`crate::image::EntryDigest`]).
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
