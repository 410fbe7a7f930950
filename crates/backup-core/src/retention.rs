//! Retention: deleting the images the policy does not keep (`prune`, and
//! after each backup), and the leftovers of killed uploads.
use std::time::Instant;

use crate::context::Context;
use crate::guard::{Operation, RunGuard};
use crate::image::sidecar_name;
use crate::ops::retention::{self, RetentionDecision, RetentionItem};
use crate::progress::Event;
use crate::{Error, Result};

/// Age after which `prune` removes an unfinished upload's temporary object:
/// no upload runs that long without writing, so it belongs to a killed run.
const STALE_UPLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// What a retention run would delete (`dry_run`) or deletes, under the lock.
pub(crate) async fn prune(engine: &Context<'_>, dry_run: bool) -> Result<Vec<RetentionDecision>> {
    let guard = RunGuard::start(engine, Operation::Prune, "-")?;
    if !dry_run {
        remove_stale_uploads(engine).await;
    }
    let result = apply_retention(engine, dry_run).await;
    // A prune that ran is audited by what it deleted (`prune.delete`).
    if result.is_err() {
        guard.audit_result("-", &result, |_| 0);
    }
    result
}

/// Applies the retention policy to this node's images (caller holds the lock).
pub(crate) async fn apply_retention(
    engine: &Context<'_>,
    dry_run: bool,
) -> Result<Vec<RetentionDecision>> {
    let storage = engine
        .storage()
        .cloned()
        .ok_or_else(|| Error::NoStorage("there is nothing to prune".into()))?;
    if !engine.config.retention.is_enabled() {
        return Err(Error::Input(
            "no [retention] policy is configured; nothing would be deleted".into(),
        ));
    }
    let node = &engine.config.appliance.node;
    let items: Vec<RetentionItem> = crate::images::list(engine)
        .await?
        .into_iter()
        .filter_map(|i| {
            let created = i
                .sidecar
                .as_ref()
                .map(|s| s.info.created)
                .or(i.parsed.as_ref().map(|p| p.created))?;
            let ours = match (&i.sidecar, &i.parsed) {
                (Some(s), _) => &s.info.node == node,
                (None, Some(p)) => &p.node == node,
                _ => false,
            };
            ours.then(|| RetentionItem {
                name: i.name.clone(),
                created,
                outcome: i.sidecar.map(|s| s.manifest.outcome),
                coverage: i.coverage,
            })
        })
        .collect();
    let decisions = retention::plan(&items, &engine.config.retention);
    if dry_run {
        return Ok(decisions);
    }
    for d in decisions.iter().filter(|d| !d.keep) {
        let started = Instant::now();
        let result = async {
            storage.delete(&d.name).await?;
            storage.delete(&sidecar_name(&d.name)).await?;
            Ok::<_, Error>(())
        }
        .await;
        let _ = std::fs::remove_file(engine.log_path(&d.name));
        match result {
            Ok(()) => engine.audit("prune.delete", &d.name, "done", 0, started, None),
            Err(e) => {
                engine.audit(
                    "prune.delete",
                    &d.name,
                    "failed",
                    0,
                    started,
                    Some(e.to_string()),
                );
                return Err(e);
            }
        }
    }
    Ok(decisions)
}

/// Removes the hidden temporary objects of uploads killed more than a
/// day ago (audited as `prune.partial`); a failure is a warning, not the
/// prune's failure.
async fn remove_stale_uploads(engine: &Context<'_>) {
    let Some(storage) = engine.storage() else {
        return;
    };
    let started = Instant::now();
    match storage.remove_stale_uploads(STALE_UPLOAD_AGE).await {
        Ok(removed) => {
            for name in removed {
                engine.progress.event(&Event::Step {
                    message: format!("removed an unfinished upload: {name}"),
                });
                engine.audit("prune.partial", &name, "done", 0, started, None);
            }
        }
        Err(e) => engine.progress.event(&Event::Warning {
            component: None,
            message: format!("unfinished uploads could not be removed: {e}"),
        }),
    }
}
