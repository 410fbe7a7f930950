//! The checks before anything is written: the image's product version and
//! node identity, and the selection against what the image holds.
use super::*;
use crate::own_paths::OwnPaths;

pub(super) fn precheck(
    engine: &Context<'_>,
    info: &BackupInfo,
    opts: &RestoreOptions,
) -> Result<()> {
    let config = PrecheckConfig::of(engine, opts);
    config.check(info)?;
    config.check_destinations(info, &selector(engine, opts).select(info).0)
}

/// The identity facts and overrides the pre-checks use.
#[derive(Debug, Clone)]
pub(crate) struct PrecheckConfig {
    product: String,
    version: String,
    node: String,
    force_version: bool,
    force_identity: bool,
    /// The engine's own places, which a restore never writes into.
    pub(crate) own: OwnPaths,
    target: Option<PathBuf>,
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
            own: OwnPaths::of(engine.config).allowing(opts.drill_scratch.as_deref()),
            target: opts.target.clone(),
        }
    }

    /// Refuses a `--target` inside the engine's own places.
    pub(crate) fn check_target(&self) -> Result<()> {
        let Some(target) = &self.target else {
            return Ok(());
        };
        match self.own.holding(target) {
            Some(place) => Err(Error::Input(format!(
                "--target {} is inside {}, {}; a restore never writes there — choose a directory outside it",
                target.display(),
                place.path.display(),
                place.what
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a restore of a `selected` component whose destination (a
    /// root, under `--target` if given) is inside the engine's own places,
    /// before anything is staged.
    pub(crate) fn check_destinations(&self, info: &BackupInfo, selected: &[String]) -> Result<()> {
        self.check_target()?;
        for planned in info
            .components
            .iter()
            .filter(|c| selected.contains(&c.name))
        {
            for root in &planned.roots {
                let root = Path::new(root);
                let dest = match &self.target {
                    Some(t) => t.join(root.strip_prefix("/").unwrap_or(root)),
                    None => root.to_path_buf(),
                };
                if let Some(place) = self.own.holding(&dest) {
                    return Err(Error::Input(format!(
                        "component {} would be restored to {}, inside {}, {}; a restore never writes there — leave it out (-C the others), or restore it under --target DIR elsewhere",
                        planned.name,
                        dest.display(),
                        place.path.display(),
                        place.what
                    )));
                }
            }
        }
        Ok(())
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
