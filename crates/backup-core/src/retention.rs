//! Retention: deleting the images the policy does not keep (`prune`, and
//! after each backup), and the leftovers of killed uploads.
use std::time::Instant;

use backup_storage::StorageExt;

use crate::cluster::{BUNDLE_EXT, LEASE_SUFFIX};
use crate::context::Context;
use crate::guard::{Operation, RunGuard};
use crate::image::sidecar_name;
use crate::image::Outcome;
use crate::ops::retention::{self, Coverage, RetentionDecision, RetentionItem};
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
    let mut result = apply_retention(engine, dry_run).await;
    if let (Ok(decisions), Some(_)) = (&mut result, &engine.config.cluster) {
        match apply_bundle_retention(engine, dry_run).await {
            Ok(bundles) => decisions.extend(bundles),
            Err(e) => result = Err(e),
        }
    }
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
    apply_retention_at(engine, dry_run, None).await
}

/// [`apply_retention`] on the storage of `engine`, which for `copy` is the
/// second-copy destination of that name: its deletions are audited as
/// `copy.prune.delete` of `copy/image`, and the image's log file, which
/// belongs to the first storage's image, stays.
pub(crate) async fn apply_retention_at(
    engine: &Context<'_>,
    dry_run: bool,
    copy: Option<&str>,
) -> Result<Vec<RetentionDecision>> {
    let (operation, target) = match copy {
        Some(place) => ("copy.prune.delete", format!("{place}/")),
        None => ("prune.delete", String::new()),
    };
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
    let mut decisions = retention::plan(&items, &engine.config.retention);
    if dry_run {
        return Ok(decisions);
    }
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        let started = Instant::now();
        let result = match storage.delete(&d.name).await {
            Err(e) if is_locked(&e) => {
                kept_by_lock(engine, d, &e, started, operation);
                continue;
            }
            Err(e) => Err(Error::from(e)),
            Ok(()) => match storage.delete(&sidecar_name(&d.name)).await {
                // The image is gone; a locked sidecar only lists as an orphan.
                Err(e) if is_locked(&e) => {
                    engine.warn(format!(
                        "{} was deleted but the storage keeps its sidecar ({e})",
                        d.name
                    ));
                    Ok(())
                }
                other => other.map_err(Error::from),
            },
        };
        if copy.is_none() {
            let _ = std::fs::remove_file(engine.log_path(&d.name));
        }
        let audited = format!("{target}{}", d.name);
        match result {
            Ok(()) => engine.audit(operation, &audited, "done", 0, started, None),
            Err(e) => {
                engine.audit(
                    operation,
                    &audited,
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

/// Why retention keeps an object the storage refused to delete.
pub const KEPT_BY_LOCK: &str = "kept-by-lock";

/// Whether a failed delete is the storage refusing it as not permitted:
/// S3 answers `AccessDenied` for an object under Object Lock retention or
/// a legal hold, a file system `EPERM` for an immutable file.
fn is_locked(e: &backup_storage::Error) -> bool {
    matches!(e, backup_storage::Error::PermissionDenied { .. })
}

/// Records an image (or bundle) the policy would delete but the storage
/// keeps: a decision to keep, reason [`KEPT_BY_LOCK`], a warning and an
/// audit record — not a failure of the run.
fn kept_by_lock(
    engine: &Context<'_>,
    d: &mut RetentionDecision,
    refused: &backup_storage::Error,
    started: Instant,
    operation: &str,
) {
    d.keep = true;
    d.reasons.push(KEPT_BY_LOCK.into());
    engine.progress.event(&Event::Warning {
        component: None,
        message: format!(
            "{} is past its retention but the storage refused to delete it ({refused}); it is kept — it is locked (S3 Object Lock, a legal hold, an immutable file) or this appliance may not delete there; it goes when the lock expires and a later prune runs",
            d.name
        ),
    });
    engine.audit(
        operation,
        &d.name,
        KEPT_BY_LOCK,
        0,
        started,
        Some(refused.to_string()),
    );
}

/// Applies the retention policy to the bundles of this coordinator's
/// cluster (`[cluster] name`) as whole units, by the rules images follow:
/// a bundle whose outcome is `success` counts as a successful full backup,
/// a partial one as partial, one whose manifest does not read as unknown.
/// A bundle whose restore lease exists (a node is being restored from it)
/// is kept. Caller holds the lock.
pub(crate) async fn apply_bundle_retention(
    engine: &Context<'_>,
    dry_run: bool,
) -> Result<Vec<RetentionDecision>> {
    let Some(cluster) = &engine.config.cluster else {
        return Ok(Vec::new());
    };
    let storage = engine
        .storage()
        .cloned()
        .ok_or_else(|| Error::NoStorage("there is nothing to prune".into()))?;
    let bundles = crate::cluster::list(engine).await?;
    let prefix = format!("{}{}.", engine.config.storage.prefix, cluster.name);
    let items: Vec<RetentionItem> = bundles
        .iter()
        .filter_map(|b| {
            let (created, outcome, coverage) = match &b.manifest {
                Some(m) if m.cluster != cluster.name => return None,
                Some(m) if m.outcome == "success" => {
                    (m.created, Some(Outcome::Success), Coverage::Full)
                }
                Some(m) => (m.created, Some(Outcome::Partial), Coverage::Partial),
                // Unreadable: ours only by its name, dated by it.
                None => {
                    let stamp = b.name.strip_prefix(&prefix)?.strip_suffix(BUNDLE_EXT)?;
                    let created = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
                        .ok()?
                        .and_utc();
                    (created, None, Coverage::Unknown)
                }
            };
            Some(RetentionItem {
                name: b.name.clone(),
                created,
                outcome,
                coverage,
            })
        })
        .collect();
    let mut decisions = retention::plan(&items, &engine.config.retention);
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        let lease = format!("{}{LEASE_SUFFIX}", d.name);
        if storage.exists(&lease).await? {
            d.keep = true;
            d.reasons
                .push("a node is being restored from it (restore lease)".into());
        }
    }
    if dry_run {
        return Ok(decisions);
    }
    for d in decisions.iter_mut().filter(|d| !d.keep) {
        let started = Instant::now();
        match storage.delete(&d.name).await {
            Ok(()) => engine.audit("prune.delete", &d.name, "done", 0, started, None),
            Err(e) if is_locked(&e) => kept_by_lock(engine, d, &e, started, "prune.delete"),
            Err(e) => {
                engine.audit(
                    "prune.delete",
                    &d.name,
                    "failed",
                    0,
                    started,
                    Some(e.to_string()),
                );
                return Err(e.into());
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
