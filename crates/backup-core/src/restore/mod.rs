//! Restore: pre-checks (`precheck`), extraction into staging with
//! archive-safety checks and verification (`stage`), then swapping into
//! place with rollback (`commit`); `plan` says what a restore would change.
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use crate::component::{
    CommandComponent, Committed, Component, FilesComponent, RestoreContext, SqliteComponent,
};
use crate::context::Context;
use crate::guard::{Operation, RunGuard};
use crate::image::reader::{EntryView, Visitor, WalkResult};
use crate::image::{BackupInfo, EntryKind, Outcome, PlannedComponent};
use crate::images::ImageRef;
use crate::ops::status::RestoreRecord;
use crate::progress::{Event, Progress};
use crate::util::join_error;
use crate::{Error, Result};

mod commit;
mod plan;
mod precheck;
mod space;
mod stage;
pub(crate) mod summary;

use commit::{commit, decide, ordered_for_commit};
pub(crate) use precheck::PrecheckConfig;
use precheck::{check_selection, precheck};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use stage::Stager;
use stage::{create_dirs_tracked, RestoreVisitor};

use plan::{plan_component, ImageSide, PlanVisitor};
pub use plan::{ComponentPlan, PathList, RestoreApproval, RestorePlan, PLAN_PATHS_KEPT};
use space::check_space;
pub use space::{space_table, SpaceNeed};
use summary::summarize;
pub use summary::{Absent, Note, RestoreSummary};

/// What `restore` should do.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RestoreOptions {
    /// Restore only these components (default: every successful one except
    /// audit components).
    pub components: Vec<String>,
    /// Also restore the image's audit components (left out by default, like
    /// a standard backup leaves them out: audit records written since the
    /// backup would be lost).
    pub include_audits: bool,
    /// Restore under this directory instead of the live locations.
    pub target: Option<PathBuf>,
    /// Accept an image of another product version.
    pub force_version: bool,
    /// Accept an image of another node.
    pub force_identity: bool,
    /// For an image in a cluster bundle: take over the bundle's restore
    /// lease if its holder is gone (its process ended, or the lease is
    /// older than `[cluster] lease_stale_secs`); a live holder's never.
    pub take_over_lease: bool,
    /// Asked with the plan before anything at the destination changes
    /// (default: none, the restore goes ahead).
    pub approval: Option<Arc<dyn RestoreApproval>>,
    /// A drill's own directory in the scratch space, which its restore (with
    /// `target` inside it) may write into.
    pub(crate) drill_scratch: Option<PathBuf>,
}

impl std::fmt::Debug for RestoreOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestoreOptions")
            .field("components", &self.components)
            .field("include_audits", &self.include_audits)
            .field("target", &self.target)
            .field("force_version", &self.force_version)
            .field("force_identity", &self.force_identity)
            .field("take_over_lease", &self.take_over_lease)
            .field("approval", &self.approval.is_some())
            .finish()
    }
}

impl RestoreOptions {
    /// How the audit log names a restore of `image`: where it went and which
    /// components (those put into place, once known; else those asked for),
    /// e.g. `IMAGE (in place; config, maindb)`. For frontends that audit a
    /// restore they refused themselves ([`crate::Engine::audit_public`]).
    pub fn audit_target(&self, image: &str, restored: Option<&[String]>) -> String {
        let place = match &self.target {
            Some(t) => format!("--target {}", t.display()),
            None => "in place".to_string(),
        };
        let components = match restored {
            Some([]) => "no components".to_string(),
            Some(names) => names.join(", "),
            None => {
                let asked = if self.components.is_empty() {
                    "default components".to_string()
                } else {
                    self.components.join(", ")
                };
                if self.include_audits {
                    format!("{asked} and audit components")
                } else {
                    asked
                }
            }
        };
        format!("{image} ({place}; {components})")
    }
}

/// The result of a restore.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// Name or path of the image.
    pub image: String,
    /// Components put into place.
    pub restored: Vec<String>,
    /// Components of the image left alone because they failed at backup time.
    pub skipped_failed: Vec<String>,
    /// Audit components of the image not restored because they were not asked for.
    pub left_out: Vec<String>,
    /// `--target`, if given.
    pub target: Option<PathBuf>,
    /// What was restored, what was not and why, and the operator's
    /// `after_restore` notes.
    pub summary: RestoreSummary,
    /// What the restore replaced, added, removed and kept.
    pub plan: RestorePlan,
}

/// Which components of an image a restore takes.
#[derive(Debug, Clone)]
struct Selector {
    requested: Vec<String>,
    include_audits: bool,
    /// Audit components as this appliance knows them (configured as such, or
    /// named `audits`).
    audits: Vec<String>,
}

impl Selector {
    /// The selected components and the audit components left out, in image order.
    fn select(&self, info: &BackupInfo) -> (Vec<String>, Vec<String>) {
        let mut selected = Vec::new();
        let mut left_out = Vec::new();
        for c in &info.components {
            let audit = self.audits.contains(&c.name);
            let wanted = if self.requested.is_empty() {
                !audit || self.include_audits
            } else {
                self.requested.contains(&c.name) || (audit && self.include_audits)
            };
            if wanted {
                selected.push(c.name.clone());
            } else if self.requested.is_empty() {
                left_out.push(c.name.clone());
            }
        }
        (selected, left_out)
    }
}

/// Restores an image under the operation lock (audited, in the status).
pub(crate) async fn run(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let shown = image.shown();
    // One node of a cluster at a time: the bundle's lease first, so that a
    // refused restore leaves this appliance's own lock and status alone.
    let lease = match image {
        ImageRef::Node { bundle, node } => {
            let started = std::time::Instant::now();
            match crate::cluster::Lease::acquire(engine, bundle, node, opts.take_over_lease).await {
                Ok(lease) => Some(lease),
                Err(e) => {
                    engine.audit(
                        Operation::Restore.audit_name(),
                        &opts.audit_target(&shown, None),
                        e.kind().audit_outcome(),
                        0,
                        started,
                        Some(e.to_string()),
                    );
                    return Err(e);
                }
            }
        }
        _ => None,
    };
    let result = restore_guarded(engine, image, opts).await;
    if let Some(lease) = lease {
        if let Err(e) = lease.release().await {
            engine.warn(format!(
                "the restore lease of {image} could not be removed ({e}); remove it by hand, or \
                 the next restore from the bundle takes it over with --take-over-lease"
            ));
        }
    }
    result
}

/// [`run`] under the operation lock.
async fn restore_guarded(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    let shown = image.shown();
    let mut guard = RunGuard::start(engine, Operation::Restore, &shown)?;
    guard.show_running(Some(&shown), Utc::now())?;
    let result = restore_image(engine, image, opts).await;
    let failure = result
        .as_ref()
        .err()
        .map(|e| guard.failure_record(Some(&shown), e));
    if let Ok(report) = &result {
        guard.record_restore(RestoreRecord {
            time: Utc::now(),
            image: shown.clone(),
            target: opts.target.clone(),
            summary: report.summary.clone(),
        });
    }
    let _ = guard.record_end(failure, true);
    let restored = result.as_ref().ok().map(|r| r.restored.as_slice());
    let target = opts.audit_target(&shown, restored);
    match &result {
        Ok(report) => guard.audit_restored(&target, report.summary.audit_line()),
        Err(_) => guard.audit_result(&target, &result, |_| 0),
    }
    result
}

/// What restoring `image` with `opts` would replace, add, remove and
/// keep, writing nothing but the audit record (`restore.dry-run`).
pub(crate) async fn dry_run(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<RestorePlan> {
    let audited = opts.audit_target(&image.shown(), None);
    engine
        .audited(
            Operation::RestoreDryRun,
            &audited,
            |_| 0,
            plan_restore(engine, image, opts),
        )
        .await
}

/// Restores an image. Nothing is written before the identity and version
/// pre-checks pass; everything is extracted into staging directories and
/// verified against the manifest before the first live path is replaced;
/// a failure while replacing rolls back what was already replaced.
async fn restore_image(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<RestoreReport> {
    restore_image_info(engine, image, opts)
        .await
        .map(|(r, _)| r)
}

/// [`restore_image`], also giving the image's `backup.json` (where each
/// component was restored from: a drill checks the restored files).
pub(crate) async fn restore_image_info(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<(RestoreReport, BackupInfo)> {
    let loc = image;
    // Pre-checks from the sidecar, before downloading anything.
    let index = crate::images::index(engine, loc).await?;
    let space = precheck_sidecar(engine, &index, opts)?;
    let prechecks = PrecheckConfig::of(engine, opts);
    prechecks.check_target()?;
    let own = prechecks.own.clone();
    // Directories this restore creates are removed again if it fails.
    let mut created_dirs = Vec::new();
    if let Some(t) = &opts.target {
        create_dirs_tracked(t, &mut created_dirs)
            .map_err(|e| Error::io(format!("creating target {}", t.display()), e))?;
    }
    let visitor = RestoreVisitor {
        created_dirs,
        committed: false,
        config: prechecks,
        requested: opts.components.clone(),
        selector: selector(engine, opts),
        target: opts.target.clone(),
        scratch: engine.config.appliance.state_dir.join("tmp"),
        stagers: BTreeMap::new(),
        selected: Vec::new(),
        owner: crate::util::is_root(),
        progress: engine.progress.clone(),
        databases: BTreeMap::new(),
        checks: Vec::new(),
    };
    engine.progress.event(&Event::Step {
        message: format!("reading and staging {}", loc.shown()),
    });
    let walked = crate::images::walk_image(engine, loc, &index, visitor).await;
    let (walked, _, mut visitor) = match walked {
        Ok(w) => w,
        Err(e) => return Err(e),
    };
    // The walk verified every component; decide what goes into place.
    let left_out = visitor.selector.select(&walked.info).1;
    let selected = visitor.selected.clone();
    let result = (|| {
        let decided = decide(&walked, &visitor.selected, &opts.components)?;
        for stager in visitor.stagers.values_mut() {
            stager.finish()?;
        }
        let checked = visitor.wait_checks(&decided.0)?;
        Ok((decided, checked))
    })();
    let ((to_commit, skipped_failed), checked) = match result {
        Ok(r) => r,
        Err(e) => {
            visitor.cleanup();
            return Err(e);
        }
    };
    // Resolve every restorer before touching anything live.
    let mut plan = Vec::new();
    for p in ordered_for_commit(&to_commit) {
        let staged = visitor.stagers.get(&p.name).map(|s| s.root.clone());
        match restorer_for(engine, p, opts.target.as_deref()) {
            Ok(c) => plan.push((p.clone(), staged, c)),
            Err(e) => {
                visitor.cleanup();
                return Err(e);
            }
        }
    }
    // A staging directory lies beside its component's destination, which can
    // be inside another component's tree (a database under a files root):
    // planning and swapping that tree treat the staging directories like the
    // engine's own places, so no component's staged data goes with the old
    // tree, and the plan does not list them.
    let mut own = own;
    for staged in plan.iter().filter_map(|(_, staged, _)| staged.as_deref()) {
        own.add(staged, crate::own_paths::STAGING);
    }
    let progress = engine.progress.clone();
    let target = opts.target.clone();
    let approval = opts.approval.clone();
    let would_restore: Vec<String> = plan.iter().map(|(p, ..)| p.name.clone()).collect();
    let mut shown = RestorePlan {
        image: loc.shown(),
        target: target.clone(),
        components: Vec::new(),
        skipped_failed: skipped_failed.clone(),
        left_out: left_out.clone(),
        space,
        summary: summarize(
            engine,
            &walked.info,
            &walked.manifest,
            &selected,
            &would_restore,
        ),
    };
    let committed = tokio::task::spawn_blocking(move || {
        // Planned from the staged trees, right before the first change.
        let nothing = Default::default();
        for (p, staged, c) in &plan {
            let image = match staged {
                Some(s) => ImageSide::Staged(s),
                None => ImageSide::Listed(&nothing),
            };
            shown.components.push(plan_component(
                p,
                image,
                &**c,
                target.as_deref(),
                PLAN_PATHS_KEPT,
                &own,
            )?);
        }
        if let Some(approval) = &approval {
            progress.event(&Event::Step {
                message: "asking for approval of the restore plan".into(),
            });
            if !approval.approve(&shown) {
                return Err(Error::Input(
                    "the restore was not confirmed; nothing was changed".into(),
                ));
            }
        }
        let restored = commit(plan, target.as_deref(), &own, &checked, &*progress)?;
        Ok((restored, shown))
    })
    .await
    .map_err(join_error)
    .and_then(|r| r);
    visitor.committed = committed.is_ok();
    visitor.cleanup();
    let (restored, plan) = committed?;
    let summary = summarize(engine, &walked.info, &walked.manifest, &selected, &restored);
    let report = RestoreReport {
        image: loc.shown(),
        restored,
        skipped_failed,
        left_out,
        target: opts.target.clone(),
        summary,
        plan,
    };
    Ok((report, walked.info))
}

/// What restoring `image` would do, writing nothing: reads the image with
/// the same pre-checks and manifest checks as a restore and compares each
/// selected component with what is at its destination now.
async fn plan_restore(
    engine: &Context<'_>,
    image: &ImageRef,
    opts: &RestoreOptions,
) -> Result<RestorePlan> {
    let loc = image;
    let index = crate::images::index(engine, loc).await?;
    let space = precheck_sidecar(engine, &index, opts)?;
    let prechecks = PrecheckConfig::of(engine, opts);
    prechecks.check_target()?;
    let own = prechecks.own.clone();
    let visitor = PlanVisitor {
        config: prechecks,
        requested: opts.components.clone(),
        selector: selector(engine, opts),
        selected: Vec::new(),
        trees: BTreeMap::new(),
    };
    engine.progress.event(&Event::Step {
        message: format!("reading {} to plan the restore", loc.shown()),
    });
    let (walked, _, visitor) = crate::images::walk_image(engine, loc, &index, visitor).await?;
    let (to_commit, skipped_failed) = decide(&walked, &visitor.selected, &opts.components)?;
    let mut steps = Vec::new();
    for p in ordered_for_commit(&to_commit) {
        steps.push((p.clone(), restorer_for(engine, p, opts.target.as_deref())?));
    }
    let left_out = visitor.selector.select(&walked.info).1;
    let names: Vec<String> = steps.iter().map(|(p, _)| p.name.clone()).collect();
    let summary = summarize(
        engine,
        &walked.info,
        &walked.manifest,
        &visitor.selected,
        &names,
    );
    let mut trees = visitor.trees;
    let target = opts.target.clone();
    let image = loc.shown();
    tokio::task::spawn_blocking(move || {
        let mut components = Vec::new();
        for (p, c) in &steps {
            let tree = trees.remove(&p.name).unwrap_or_default();
            let image = ImageSide::Listed(&tree);
            components.push(plan_component(
                p,
                image,
                &**c,
                target.as_deref(),
                usize::MAX,
                &own,
            )?);
        }
        Ok(RestorePlan {
            image,
            target,
            components,
            skipped_failed,
            left_out,
            space,
            summary,
        })
    })
    .await
    .map_err(join_error)?
}

/// The checks a sidecar manifest allows before anything is read or
/// written: identity and version, the selection, and the room to stage
/// each selected component (the table of that check). Without a sidecar
/// (an image file), the walk checks identity and selection as it reads, and
/// the sizes are not known in advance.
fn precheck_sidecar(
    engine: &Context<'_>,
    index: &crate::images::Index,
    opts: &RestoreOptions,
) -> Result<Vec<SpaceNeed>> {
    let Some(s) = &index.sidecar else {
        return Ok(Vec::new());
    };
    precheck(engine, &s.info, opts)?;
    check_selection(&s.info, Some(&s.manifest.components), &opts.components)?;
    let selected = selector(engine, opts).select(&s.info).0;
    check_space(
        &s.info,
        &s.manifest.components,
        &selected,
        opts.target.as_deref(),
        &engine.config.appliance.state_dir.join("tmp"),
    )
}

/// The selection rules of a restore, with the audit components this
/// appliance knows.
fn selector(engine: &Context<'_>, opts: &RestoreOptions) -> Selector {
    let mut audits: Vec<String> = engine
        .component_names()
        .into_iter()
        .filter(|n| engine.is_audit_component(n))
        .collect();
    if engine.component("audits").is_none() {
        // An image from elsewhere: its audit component by the usual name.
        audits.push("audits".into());
    }
    Selector {
        requested: opts.components.clone(),
        include_audits: opts.include_audits,
        audits,
    }
}

/// The component that restores `p`: the configured one, or — for an image
/// from elsewhere — a built-in of the same kind working from the image's
/// recorded roots.
fn restorer_for(
    engine: &Context<'_>,
    p: &PlannedComponent,
    target: Option<&Path>,
) -> Result<Arc<dyn Component>> {
    if let Some(c) = engine.component(&p.name) {
        if c.kind() == p.kind {
            return Ok(c.clone());
        }
    }
    let roots = p.roots.iter().map(PathBuf::from).collect::<Vec<_>>();
    match p.kind.as_str() {
        "files" => Ok(Arc::new(FilesComponent::new(&p.name, roots, &[], None).map_err(Error::Input)?)),
        "sqlite" if roots.len() == 1 => Ok(Arc::new(SqliteComponent::new(&p.name, roots[0].clone(), None))),
        "command" if target.is_some() => Ok(Arc::new(CommandComponent::new(&p.name, vec![], vec![], None))),
        _ => Err(Error::Input(format!(
            "component {} ({}) is not configured on this appliance, so it cannot be put into place; restore it with --target DIR to inspect it",
            p.name, p.kind
        ))),
    }
}
