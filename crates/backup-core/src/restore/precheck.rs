//! The checks before anything is written: the image's product version and
//! node identity, and the selection against what the image holds.
use super::*;

pub(super) fn precheck(
    engine: &Context<'_>,
    info: &BackupInfo,
    opts: &RestoreOptions,
) -> Result<()> {
    PrecheckConfig::of(engine, opts).check(info)
}

/// The identity facts and overrides the pre-checks use.
#[derive(Debug, Clone)]
pub(crate) struct PrecheckConfig {
    product: String,
    version: String,
    node: String,
    force_version: bool,
    force_identity: bool,
}

impl PrecheckConfig {
    pub(crate) fn of(engine: &Context<'_>, opts: &RestoreOptions) -> PrecheckConfig {
        let a = &engine.config.appliance;
        PrecheckConfig {
            product: a.product.clone(),
            version: a.version.clone(),
            node: a.node.clone(),
            force_version: opts.force_version,
            force_identity: opts.force_identity,
        }
    }

    pub(crate) fn check(&self, info: &BackupInfo) -> Result<()> {
        if !self.force_identity && (info.node != self.node || info.product != self.product) {
            return Err(Error::IdentityMismatch {
                image_node: info.node.clone(),
                image_product: info.product.clone(),
                our_node: self.node.clone(),
                our_product: self.product.clone(),
            });
        }
        if !self.force_version && info.product_version != self.version {
            return Err(Error::VersionMismatch {
                product: info.product.clone(),
                image: info.product_version.clone(),
                running: self.version.clone(),
            });
        }
        Ok(())
    }
}

pub(super) fn check_selection(
    info: &BackupInfo,
    records: Option<&[crate::image::ComponentRecord]>,
    requested: &[String],
) -> Result<()> {
    for name in requested {
        if !info.components.iter().any(|c| &c.name == name) {
            return Err(Error::Input(format!(
                "the image has no component {name:?}; it has: {}",
                info.components
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(r) = records.and_then(|rs| rs.iter().find(|r| &r.name == name)) {
            if r.outcome != Outcome::Success {
                return Err(Error::Input(format!(
                    "component {name} failed when this image was made ({}); it cannot be restored from it",
                    r.error.as_deref().unwrap_or("no reason recorded")
                )));
            }
        }
    }
    Ok(())
}
