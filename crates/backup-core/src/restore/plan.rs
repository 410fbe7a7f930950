//! What a restore will do, known before it does it: per component, the live
//! paths the image's version replaces, the paths it adds, the live paths it
//! removes (the component goes back to its backed-up state), and the excluded
//! live paths it keeps as they are.
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::precheck::{check_selection, PrecheckConfig};
use super::Selector;
use crate::component::{is_special, rel_of, Component, JOURNAL_SUFFIXES};
use crate::image::reader::{EntryView, Visitor};
use crate::image::{BackupInfo, EntryKind, PlannedComponent};
use crate::own_paths::OwnPaths;
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
    /// The room staging needs per component and file system, as checked
    /// before anything was staged (empty when the image has no sidecar
    /// manifest to take the sizes from).
    pub space: Vec<super::SpaceNeed>,
    /// What is restored, what is not and why, and the `after_restore` notes.
    pub summary: super::RestoreSummary,
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
    pub replaced: PathList,
    /// Paths of the image that do not exist yet.
    pub added: PathList,
    /// Existing paths under the component's roots that the image does not
    /// hold and the component does not exclude: the restore removes them.
    pub removed: PathList,
    /// Existing paths the component excludes: kept exactly as they are.
    pub kept: PathList,
    /// What else happens, for components that are not file trees (a restore
    /// command runs).
    pub action: Option<String>,
}

/// The paths of one kind of change: how many there are, and the paths
/// themselves — all of them in [`crate::Engine::restore_plan`], the first
/// [`PLAN_PATHS_KEPT`] in the plan a restore computes for itself (so a
/// restore of millions of files does not hold millions of paths).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PathList {
    /// How many paths.
    pub count: u64,
    /// The paths, in tree order (up to the limit of the plan).
    pub paths: Vec<PathBuf>,
}

/// How many paths of each list a restore's own plan keeps.
pub const PLAN_PATHS_KEPT: usize = 1_000;

impl PathList {
    fn push(&mut self, path: impl FnOnce() -> PathBuf, limit: usize) {
        self.count += 1;
        if self.paths.len() < limit {
            self.paths.push(path());
        }
    }
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

/// One component's entries as listed by the image: archive-relative path →
/// whether it is a directory.
pub(crate) type ImageTree = BTreeMap<PathBuf, bool>;

/// Where a plan finds a component's entries.
#[derive(Debug, Clone, Copy)]
pub(super) enum ImageSide<'a> {
    /// Extracted into this staging directory (archive-relative paths).
    Staged(&'a Path),
    /// Listed while reading the image.
    Listed(&'a ImageTree),
}

/// The plan of one component: its entries in the image against what is at
/// its destinations now. Both trees are walked side by side in path order,
/// so only the lists (up to `limit` paths each) take memory.
pub(super) fn plan_component(
    planned: &PlannedComponent,
    image: ImageSide<'_>,
    component: &dyn Component,
    target: Option<&Path>,
    limit: usize,
    own: &OwnPaths,
) -> Result<ComponentPlan> {
    let mut plan = ComponentPlan {
        name: planned.name.clone(),
        kind: planned.kind.clone(),
        replaced: PathList::default(),
        added: PathList::default(),
        removed: PathList::default(),
        kept: PathList::default(),
        action: None,
    };
    match planned.kind.as_str() {
        "files" | "sqlite" => {}
        "command" => {
            match target {
                Some(t) => {
                    let dump = t.join(format!("{}.dump", planned.name));
                    if std::fs::symlink_metadata(&dump).is_ok() {
                        plan.replaced.push(|| dump, limit);
                    } else {
                        plan.added.push(|| dump, limit);
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
        let dest = match target {
            Some(t) => t.join(rel_root),
            None => root.to_path_buf(),
        };
        let mut entries = match image {
            ImageSide::Staged(staged) => {
                let top = staged.join(rel_root);
                if std::fs::symlink_metadata(&top).is_err() {
                    // Not in the image (it did not exist at backup time): left alone.
                    continue;
                }
                Entries::walk(&top)
            }
            ImageSide::Listed(tree) => {
                if !tree.contains_key(rel_root) {
                    continue;
                }
                Entries::Listed(Box::new(tree.range(rel_root.to_path_buf()..).map_while(
                    move |(path, dir)| {
                        path.strip_prefix(rel_root)
                            .ok()
                            .map(|rel| (rel.to_path_buf(), *dir))
                    },
                )))
            }
        };
        let mut walk = Planner {
            root,
            dest: &dest,
            own: own.under(&dest).into_iter().map(|(rel, _)| rel).collect(),
            staging: own
                .under(&dest)
                .into_iter()
                .filter(|(_, place)| place.what == crate::own_paths::STAGING)
                .map(|(rel, _)| rel)
                .collect(),
            component,
            plan: &mut plan,
            limit,
            pending: Vec::new(),
            shadowed: None,
        };
        walk.merge(&mut entries)?;
        if planned.kind == "sqlite" {
            for suffix in JOURNAL_SUFFIXES {
                let mut journal = dest.clone().into_os_string();
                journal.push(suffix);
                let journal = PathBuf::from(journal);
                if std::fs::symlink_metadata(&journal).is_ok() {
                    plan.removed.push(|| journal, limit);
                }
            }
        }
    }
    Ok(plan)
}

/// A tree's entries relative to its top, in path order (a directory before
/// what it holds, siblings by name), without following symlinks.
enum Entries<'a> {
    /// A walk of a tree on disk, and whether its last entry was a special
    /// file (socket, FIFO, device).
    Walk(PathBuf, walkdir::IntoIter, bool),
    Listed(Box<dyn Iterator<Item = (PathBuf, bool)> + 'a>),
}

impl Entries<'_> {
    fn walk(top: &Path) -> Entries<'static> {
        let it = walkdir::WalkDir::new(top)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter();
        Entries::Walk(top.to_path_buf(), it, false)
    }

    fn next_entry(&mut self) -> Result<Option<(PathBuf, bool)>> {
        match self {
            Entries::Listed(it) => Ok(it.next()),
            Entries::Walk(top, it, special) => match it.next() {
                None => Ok(None),
                Some(Err(e)) => Err(Error::io(format!("reading {}", top.display()), e.into())),
                Some(Ok(entry)) => {
                    let rel = entry.path().strip_prefix(&*top).expect("under the top");
                    *special = is_special(&entry.file_type());
                    Ok(Some((rel.to_path_buf(), entry.file_type().is_dir())))
                }
            },
        }
    }

    /// Does not descend into the directory just returned.
    fn skip_current_dir(&mut self) {
        if let Entries::Walk(_, it, _) = self {
            it.skip_current_dir();
        }
    }

    /// Whether the entry just returned is a special file (never in an image).
    fn last_was_special(&self) -> bool {
        matches!(self, Entries::Walk(_, _, true))
    }
}

/// Walks one root's image entries and its destination side by side.
struct Planner<'a> {
    root: &'a Path,
    dest: &'a Path,
    /// The engine's own places under `dest` (relative to it): kept as
    /// they are, like excluded paths.
    own: Vec<PathBuf>,
    /// Of those, the other components' staging directories: kept, but not
    /// listed in the plan.
    staging: Vec<PathBuf>,
    component: &'a dyn Component,
    plan: &'a mut ComponentPlan,
    limit: usize,
    /// Directories only the destination has, enclosing the current path:
    /// removed unless something kept turns up inside (then they stay).
    pending: Vec<(PathBuf, bool)>,
    /// The last destination directory where the image holds a file or
    /// symlink: nothing excluded inside it can be kept.
    shadowed: Option<PathBuf>,
}

impl Planner<'_> {
    fn merge(&mut self, image: &mut Entries<'_>) -> Result<()> {
        let mut live = if std::fs::symlink_metadata(self.dest).is_ok() {
            Entries::walk(self.dest)
        } else {
            Entries::Listed(Box::new(std::iter::empty()))
        };
        let mut next_live = self.next_live(&mut live)?;
        let mut next_image = self.next_image(image)?;
        loop {
            let order = match (&next_image, &next_live) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((i, _)), Some((l, _))) => i.cmp(l),
            };
            match order {
                std::cmp::Ordering::Less => {
                    let (rel, _) = next_image.take().expect("some");
                    self.plan.added.push(|| self.dest.join(&rel), self.limit);
                    next_image = self.next_image(image)?;
                }
                std::cmp::Ordering::Greater => {
                    let (rel, dir) = next_live.take().expect("some");
                    self.settle(&rel);
                    if dir {
                        self.pending.push((rel, false));
                    } else {
                        self.plan.removed.push(|| self.dest.join(&rel), self.limit);
                    }
                    next_live = self.next_live(&mut live)?;
                }
                std::cmp::Ordering::Equal => {
                    let (rel, image_dir) = next_image.take().expect("some");
                    let (_, live_dir) = next_live.take().expect("some");
                    self.settle(&rel);
                    if !(image_dir && live_dir) {
                        self.plan.replaced.push(|| self.dest.join(&rel), self.limit);
                    }
                    if live_dir && !image_dir {
                        self.shadowed = Some(rel.clone());
                    }
                    next_image = self.next_image(image)?;
                    next_live = self.next_live(&mut live)?;
                }
            }
        }
        self.settle(Path::new(""));
        Ok(())
    }

    /// The next destination entry the component owns; excluded ones are
    /// listed as kept on the way (and not descended into).
    fn next_live(&mut self, live: &mut Entries<'_>) -> Result<Option<(PathBuf, bool)>> {
        while let Some((rel, dir)) = live.next_entry()? {
            if !live.last_was_special() && !self.excluded(&rel) {
                return Ok(Some((rel, dir)));
            }
            if let Some(shadowed) = self.shadowed.as_ref().filter(|s| rel.starts_with(s)) {
                // The swap could not carry it into the restored tree.
                return Err(Error::Input(format!(
                    "cannot keep the excluded {}: the image holds a file or symlink at {}, where this appliance has a directory; move the excluded path out of the way (or restore under --target) and restore again",
                    self.dest.join(&rel).display(),
                    self.dest.join(shadowed).display()
                )));
            }
            if dir {
                live.skip_current_dir();
            }
            self.settle(&rel);
            for (_, holds_kept) in &mut self.pending {
                *holds_kept = true;
            }
            if !self.staging.iter().any(|s| rel.starts_with(s)) {
                self.plan.kept.push(|| self.dest.join(&rel), self.limit);
            }
        }
        Ok(None)
    }

    /// The next image entry the component owns now (what it excludes now is
    /// not restored: the destination's own stays).
    fn next_image(&self, image: &mut Entries<'_>) -> Result<Option<(PathBuf, bool)>> {
        while let Some((rel, dir)) = image.next_entry()? {
            let excluded = match image {
                // Excluded directories are not descended into: only the entry itself.
                Entries::Walk(..) => self.excluded(&rel),
                // A listing may lack the directory entries above an entry.
                Entries::Listed(_) => {
                    let mut above = PathBuf::new();
                    rel.components().any(|part| {
                        above.push(part);
                        self.excluded(&above)
                    })
                }
            };
            if !excluded {
                return Ok(Some((rel, dir)));
            }
            if dir {
                image.skip_current_dir();
            }
        }
        Ok(None)
    }

    /// Whether the component excludes `rel` (never its root).
    fn excluded(&self, rel: &Path) -> bool {
        !rel.as_os_str().is_empty()
            && (self.own.iter().any(|o| rel.starts_with(o))
                || self.component.is_excluded(&self.root.join(rel)))
    }

    /// Pending directories that do not enclose `rel` are done: removed,
    /// unless they hold something kept.
    fn settle(&mut self, rel: &Path) {
        while let Some((top, _)) = self.pending.last() {
            if rel != top.as_path() && rel.starts_with(top) {
                break;
            }
            let (top, holds_kept) = self.pending.pop().expect("some");
            if !holds_kept {
                self.plan.removed.push(|| self.dest.join(&top), self.limit);
            }
        }
    }
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
        self.config.check_destinations(info, &self.selected)?;
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
    fn a_plan_lists_replaced_added_removed_and_kept_and_ignores_what_is_excluded_now_and_special_files(
    ) {
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
        write("gone.d/x");
        let _socket = std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap();
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
        let at = |rels: &[&str]| PathList {
            count: rels.len() as u64,
            paths: rels.iter().map(|r| root.join(r)).collect(),
        };
        let listed = plan_component(
            &planned,
            ImageSide::Listed(&tree),
            &component,
            None,
            usize::MAX,
            &OwnPaths::default(),
        )
        .unwrap();
        // The same image staged on disk gives the same plan.
        let staging = dir.path().join("staging");
        for (rel, is_dir) in &tree {
            let p = staging.join(rel);
            if *is_dir {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::write(&p, "from the image").unwrap();
            }
        }
        let staged = plan_component(
            &planned,
            ImageSide::Staged(&staging),
            &component,
            None,
            usize::MAX,
            &OwnPaths::default(),
        )
        .unwrap();
        for plan in [listed, staged] {
            assert_eq!(plan.replaced, at(&["a.conf"]));
            assert_eq!(plan.added, at(&["new.conf"]));
            // old.d holds a kept file, so it stays; gone.d does not.
            assert_eq!(plan.removed, at(&["extra.conf", "gone.d/x", "gone.d"]));
            // A live socket is kept: no image holds one to put back.
            assert_eq!(plan.kept, at(&["app.sock", "cache", "old.d/note.tmp"]));
        }
        // A limit keeps the counts and fewer paths.
        let limited = plan_component(
            &planned,
            ImageSide::Listed(&tree),
            &component,
            None,
            1,
            &OwnPaths::default(),
        )
        .unwrap();
        assert_eq!(limited.removed.count, 3);
        assert_eq!(limited.removed.paths, [root.join("extra.conf")]);
    }
}
