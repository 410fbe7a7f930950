//! The cluster bundle: one plain tar holding `cluster-manifest.json` first,
//! then each node's image under its own role-bearing name. Its format, for
//! the coordinator that writes it and the commands that read it (`bundle`),
//! and the lease that restores one node at a time (`lease`).
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::Role;

mod bundle;
mod lease;

pub(crate) use bundle::{extract, list, manifest, open_node};
pub use bundle::{BundleSummary, ExtractReport};
pub(crate) use lease::Lease;
pub use lease::LeaseHolder;

/// The first member of every bundle.
pub const CLUSTER_MANIFEST: &str = "cluster-manifest.json";

/// Suffix of bundle names.
pub const BUNDLE_EXT: &str = ".tar";

/// Suffix of a bundle's restore lease object (`{bundle}.restore-lease`).
pub const LEASE_SUFFIX: &str = ".restore-lease";

/// `{prefix}{cluster}.{UTC timestamp}.tar`.
pub fn bundle_name(prefix: &str, cluster: &str, created: DateTime<Utc>) -> String {
    format!(
        "{prefix}{cluster}.{}{BUNDLE_EXT}",
        created.format("%Y%m%dT%H%M%SZ")
    )
}

/// `cluster-manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterManifest {
    /// The cluster's name.
    pub cluster: String,
    /// When the coordinator started the run.
    pub created: DateTime<Utc>,
    /// `success`, or `partial` when a data/secondary node failed.
    pub outcome: String,
    /// Every configured node, in restore order.
    pub nodes: Vec<BundleNode>,
}

/// One node of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleNode {
    /// The node's name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// `success`, `partial` (its image lacks a failed component) or
    /// `failed` (no image in the bundle).
    pub outcome: String,
    /// Why it failed or is partial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The member name of its image (the image's own name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Size of its image in bytes.
    #[serde(default)]
    pub size: u64,
    /// SHA-256 (hex) of its image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Byte offset of the image's data in the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Restore order: 1 for control/primary nodes, then the others.
    pub order: u32,
}

/// Restore order of a role: control and primary nodes first.
pub fn restore_order(role: Role) -> u32 {
    match role {
        Role::Control | Role::Primary => 1,
        _ => 2,
    }
}
