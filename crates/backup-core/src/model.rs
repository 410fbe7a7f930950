//! Types shared by the configuration, the image format, components and
//! progress events, below all of them: a node's role, the payload codec, a
//! planned component and an outcome.
use serde::{Deserialize, Serialize};

/// A node's role, carried in image names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A single appliance.
    Standalone,
    /// HA primary.
    Primary,
    /// HA secondary.
    Secondary,
    /// Cluster control node.
    Control,
    /// Cluster data node.
    Data,
}

impl Role {
    /// The lowercase name used in image names.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::Control => "control",
            Role::Data => "data",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Payload codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A standard `.tar.gz` payload.
    #[default]
    Gzip,
    /// A `.tar.zst` payload: one zstd frame per 2 MiB block, compressed and
    /// decompressed on several cores.
    Zstd,
    /// A plain `.tar` payload.
    None,
}

impl Compression {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// The level used when `[image] level` is not set.
    pub fn default_level(self) -> u32 {
        match self {
            Compression::Gzip => 6,
            Compression::Zstd => 3,
            Compression::None => 0,
        }
    }

    /// The levels this codec accepts.
    pub fn levels(self) -> std::ops::RangeInclusive<u32> {
        match self {
            Compression::Gzip => 0..=9,
            // 20–22 ("ultra") need windows of 32 MiB and more per worker,
            // which breaks the backup's memory bound.
            Compression::Zstd => 1..=19,
            Compression::None => 0..=u32::MAX,
        }
    }
}

/// The number of compression threads used by default: every core this
/// process may run on (respects CPU affinity and cgroup quotas).
#[cfg_attr(not(feature = "bench"), allow(unreachable_pub))]
pub fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
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
