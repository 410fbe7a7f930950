//! Verifying an image end to end: decrypt, decompress and check every entry
//! against the manifest, writing nothing.
use serde::Serialize;

use crate::context::Context;
use crate::guard::Operation;
use crate::image::reader::NullVisitor;
use crate::image::{sidecar_name, BackupInfo, Manifest, Outcome};
use crate::images::ImageRef;
use crate::progress::Event;
use crate::restore::{PrecheckConfig, RestoreOptions};
use crate::Result;

/// Verifies an image (audited).
pub(crate) async fn verify(engine: &Context<'_>, image: &ImageRef) -> Result<VerifyReport> {
    engine
        .audited(
            Operation::Verify,
            &image.shown(),
            |r: &VerifyReport| r.size,
            verify_image(engine, image),
        )
        .await
}

/// Decrypts and decompresses a whole image and checks every component
/// against the manifest (and the sidecar, if any), writing nothing.
async fn verify_image(engine: &Context<'_>, image: &ImageRef) -> Result<VerifyReport> {
    let loc = image;
    engine.progress.event(&Event::Step {
        message: format!("verifying {}", loc.shown()),
    });
    let index = crate::images::index(engine, loc).await?;
    let (walked, size, _) = crate::images::walk_image(engine, loc, &index, NullVisitor).await?;
    if let ImageRef::Stored(name) = &loc {
        if let Some(s) = &index.sidecar {
            // The image is what restores; a wrong index is worth a
            // warning, not a failed verification.
            if s.manifest != walked.manifest || s.info != walked.info {
                engine.progress.event(&Event::Warning {
                    component: None,
                    message: format!(
                        "the sidecar manifest {} does not match the image's own manifest; \
                         the image verified, list and show may describe it wrongly",
                        sidecar_name(name)
                    ),
                });
            }
        }
    }
    // Verify vouches for the image; restore also checks that the image is
    // this appliance's. Say so when a restore here would refuse it, so that a
    // "verified" is not read as "restores here".
    let here = PrecheckConfig::of(engine, &RestoreOptions::default());
    if let Err(e) = here.check(&walked.info) {
        engine.progress.event(&Event::Warning {
            component: None,
            message: format!(
                "the image verified, but a restore on this appliance would refuse it: {e}"
            ),
        });
    }
    let verified = walked
        .manifest
        .components
        .iter()
        .filter(|r| r.outcome == Outcome::Success)
        .map(|r| r.name.clone())
        .collect();
    Ok(VerifyReport {
        image: loc.shown(),
        size,
        info: walked.info,
        manifest: walked.manifest,
        verified,
    })
}

/// The result of a full verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Name or path.
    pub image: String,
    /// Encrypted bytes read.
    pub size: u64,
    /// `backup.json`.
    pub info: BackupInfo,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// Components whose entries were checked against the manifest.
    pub verified: Vec<String>,
}
