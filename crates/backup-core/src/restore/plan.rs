//! What a restore will do, known before it does it: per component, the live
//! paths the image's version replaces, the paths it adds, the live paths it
//! removes (the component goes back to its backed-up state), and the excluded
//! live paths it keeps as they are.
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::{check_selection, PrecheckConfig, Selector};
use crate::component::{rel_of, Component, JOURNAL_SUFFIXES};
use crate::image::reader::{EntryView, Visitor};
use crate::image::{BackupInfo, EntryKind, PlannedComponent};
use crate::{Error, Result};

/// What a restore puts into place, replaces, removes and keeps. Computed by
/// [`crate::Engine::restore_plan`] without writing anything, and by a restore
/// itself once the image is staged and verified, before anything live changes
/// (see [`RestoreApproval`]).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct RestorePlan {
    /// Name or path of the image.
    pub image: String,
    /// `--target`, if given (every path of the plan is then under it).
    pub target: Option<PathBuf>,
    /// The components that would be put into place, in that order.
    pub components: Vec<ComponentPlan>,
    /// Components of the image left alone because they failed at backup time.
    pub skipped_failed: Vec<String>,
    /// Audit components of the image that are not restored because they were
    /// not asked for (`include_audits`, or naming them).
    pub left_out: Vec<String>,
}

/// One component of a [`RestorePlan`]. Paths are where the restore writes
/// (under the target, if any).
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ComponentPlan {
    /// Component name.
    pub name: String,
    /// Component kind.
    pub kind: String,
    /// Paths that exist and are replaced by the image's version.
    pub replaced: Vec<PathBuf>,
    /// Paths of the image that do not exist yet.
    pub added: Vec<PathBuf>,
    /// Existing paths under the component's roots that the image does not
    /// hold and the component does not exclude: the restore removes them.
    pub removed: Vec<PathBuf>,
    /// Existing paths the component excludes: kept exactly as they are.
    pub kept: Vec<PathBuf>,
    /// What else happens, for components that are not file trees (a restore
    /// command runs).
    pub action: Option<String>,
}

/// Lets a frontend decide whether a restore goes ahead once its plan is
/// known: after the image was read, staged and verified, before anything at
/// the destination changes. The library never asks anyone; a CLI shows the
/// plan and prompts, a service may apply a policy.
pub trait RestoreApproval: Send + Sync {
    /// `true` to put the plan into effect; `false` cancels the restore with
    /// nothing changed.
    fn approve(&self, plan: &RestorePlan) -> bool;
}

/// One component's entries: archive-relative path → whether it is a directory.
pub(crate) type ImageTree = BTreeMap<PathBuf, bool>;

/// A staged component read back as an [`ImageTree`].
pub(super) fn staged_tree(staged: &Path) -> Result<ImageTree> {
    let mut tree = ImageTree::new();
    for entry in walkdir::WalkDir::new(staged)
        .follow_links(false)
        .min_depth(1)
    {
        let entry =
            entry.map_err(|e| Error::io(format!("reading back {}", staged.display()), e.into()))?;
        let rel = entry
            .path()
            .strip_prefix(staged)
            .expect("under the staging root");
        tree.insert(rel.to_path_buf(), entry.file_type().is_dir());
    }
    Ok(tree)
}

/// The plan of one component: its image tree against what is at its
/// destinations now.
pub(super) fn plan_component(
    planned: &PlannedComponent,
    tree: &ImageTree,
    component: &dyn Component,
    target: Option<&Path>,
) -> Result<ComponentPlan> {
    let mut plan = ComponentPlan {
        name: planned.name.clone(),
        kind: planned.kind.clone(),
        replaced: Vec::new(),
        added: Vec::new(),
        removed: Vec::new(),
        kept: Vec::new(),
        action: None,
    };
    match planned.kind.as_str() {
        "files" | "sqlite" => {}
        "command" => {
            match target {
                Some(t) => {
                    let dump = t.join(format!("{}.dump", planned.name));
                    if std::fs::symlink_metadata(&dump).is_ok() {
                        plan.replaced.push(dump);
                    } else {
                        plan.added.push(dump);
                    }
                    plan.action = Some("its dump is written as a file, not loaded".into());
                }
                None => {
                    plan.action = Some(
                        "its restore command runs with the dump on standard input (this cannot be undone)"
                            .into(),
                    )
                }
            }
            return Ok(plan);
        }
        _ => {
            plan.action = Some(format!(
                "the component ({} kind) puts its own entries into place",
                planned.kind
            ));
            return Ok(plan);
        }
    }
    for root in &planned.roots {
        let root = Path::new(root);
        let rel_root = rel_of(root);
        if !tree.contains_key(rel_root) {
            // Not in the image (it did not exist at backup time): left alone.
            continue;
        }
        let dest = match target {
            Some(t) => t.join(rel_root),
            None => root.to_path_buf(),
        };
        plan_root(root, rel_root, &dest, tree, component, &mut plan)?;
        if planned.kind == "sqlite" {
            for suffix in JOURNAL_SUFFIXES {
                let mut journal = dest.clone().into_os_string();
                journal.push(suffix);
                let journal = PathBuf::from(journal);
                if std::fs::symlink_metadata(&journal).is_ok() {
                    plan.removed.push(journal);
                }
            }
        }
    }
    Ok(plan)
}

/// Compares one root's image entries with the tree at `dest`.
fn plan_root(
    root: &Path,
    rel_root: &Path,
    dest: &Path,
    tree: &ImageTree,
    component: &dyn Component,
    plan: &mut ComponentPlan,
) -> Result<()> {
    let excluded = |rel: &Path| {
        // An entry is excluded if it or a directory above it (below the root) is.
        let mut partial = PathBuf::new();
        rel.components().any(|part| {
            partial.push(part);
            component.is_excluded(&root.join(&partial))
        })
    };
    let mut live = BTreeSet::new();
    let mut removed = BTreeSet::new();
    let mut kept = Vec::new();
    if std::fs::symlink_metadata(dest).is_ok() {
        let mut it = walkdir::WalkDir::new(dest)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(next) = it.next() {
            let entry =
                next.map_err(|e| Error::io(format!("reading {}", dest.display()), e.into()))?;
            let rel = entry.path().strip_prefix(dest).expect("under the root");
            let is_dir = entry.file_type().is_dir();
            if entry.depth() > 0 && component.is_excluded(&root.join(rel)) {
                if is_dir {
                    it.skip_current_dir();
                }
                kept.push(rel.to_path_buf());
                continue;
            }
            live.insert(rel.to_path_buf());
            match tree.get(&rel_root.join(rel)) {
                Some(true) if is_dir => {}
                Some(_) => plan.replaced.push(entry.path().to_path_buf()),
                None => {
                    removed.insert(rel.to_path_buf());
                }
            }
        }
    }
    // A directory the image lacks stays if it holds something kept.
    for k in &kept {
        for ancestor in k.ancestors().skip(1) {
            removed.remove(ancestor);
        }
    }
    for (path, _) in tree.range(rel_root.to_path_buf()..) {
        let Ok(rel) = path.strip_prefix(rel_root) else {
            break;
        };
        let kept_as_is = !rel.as_os_str().is_empty() && excluded(rel);
        if !live.contains(rel) && !kept_as_is {
            plan.added.push(dest.join(rel));
        }
    }
    plan.removed.extend(removed.iter().map(|r| dest.join(r)));
    plan.kept.extend(kept.iter().map(|r| dest.join(r)));
    Ok(())
}

/// Reads an image for a plan, writing nothing: the same pre-checks as a
/// restore, and each selected component's entry paths.
pub(super) struct PlanVisitor {
    pub(super) config: PrecheckConfig,
    pub(super) requested: Vec<String>,
    pub(super) selector: Selector,
    pub(super) selected: Vec<String>,
    pub(super) trees: BTreeMap<String, ImageTree>,
}

impl Visitor for PlanVisitor {
    fn info(&mut self, info: &BackupInfo) -> Result<()> {
        self.config.check(info)?;
        check_selection(info, None, &self.requested)?;
        self.selected = self.selector.select(info).0;
        for planned in info
            .components
            .iter()
            .filter(|c| self.selected.contains(&c.name))
        {
            let plain = |r: &String| {
                let r = Path::new(r);
                r.is_absolute()
                    && r.components().all(|c| {
                        matches!(
                            c,
                            std::path::Component::RootDir | std::path::Component::Normal(_)
                        )
                    })
            };
            if !planned.roots.iter().all(plain) {
                return Err(Error::UnsafeArchive {
                    entry: "backup.json".into(),
                    reason: format!(
                        "component {} has a root that is not a plain absolute path",
                        planned.name
                    ),
                });
            }
            self.trees.insert(planned.name.clone(), ImageTree::new());
        }
        Ok(())
    }

    fn entry(&mut self, component: &str, entry: &EntryView<'_>, _: &mut dyn Read) -> Result<()> {
        if let Some(tree) = self.trees.get_mut(component) {
            tree.insert(entry.rel.to_path_buf(), entry.kind == EntryKind::Dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::component::FilesComponent;

    #[test]
    fn a_plan_lists_replaced_added_removed_and_kept_and_ignores_what_is_excluded_now() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("etc/app");
        let write = |rel: &str| {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, rel).unwrap();
        };
        write("a.conf");
        write("extra.conf");
        write("cache/live");
        write("old.d/note.tmp");
        let rel_root = rel_of(&root).to_path_buf();
        let mut tree = ImageTree::new();
        tree.insert(rel_root.clone(), true);
        tree.insert(rel_root.join("a.conf"), false);
        tree.insert(rel_root.join("new.conf"), false);
        tree.insert(rel_root.join("cache"), true);
        tree.insert(rel_root.join("cache/from-the-image"), false);
        let component = FilesComponent::new(
            "config",
            vec![root.clone()],
            &["cache".to_string(), "*.tmp".to_string()],
            None,
        )
        .unwrap();
        let planned = PlannedComponent {
            name: "config".into(),
            kind: "files".into(),
            roots: vec![root.display().to_string()],
        };
        let plan = plan_component(&planned, &tree, &component, None).unwrap();
        let at = |rels: &[&str]| rels.iter().map(|r| root.join(r)).collect::<Vec<_>>();
        assert_eq!(plan.replaced, at(&["a.conf"]));
        assert_eq!(plan.added, at(&["new.conf"]));
        // old.d holds a kept file, so it stays.
        assert_eq!(plan.removed, at(&["extra.conf"]));
        assert_eq!(plan.kept, at(&["cache", "old.d/note.tmp"]));
    }
}
