use std::collections::HashMap;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::swap::excluded_under;
use super::{
    rel_of, Applicability, Committed, Component, EntryMeta, EntrySink, FileStat, RestoreContext,
    SnapshotError, Swapped,
};

/// Directory trees and files, with exclude globs. Keeps mode, owner, mtime,
/// symlinks and hard links; warns about files that change while being read.
#[derive(Debug, Clone)]
pub struct FilesComponent {
    name: String,
    paths: Vec<PathBuf>,
    exclude: GlobSet,
    applicable_if_exists: Option<PathBuf>,
}

impl FilesComponent {
    /// A component over absolute `paths`; `exclude` globs are matched against
    /// each entry's file name and its full path.
    pub fn new(
        name: impl Into<String>,
        paths: Vec<PathBuf>,
        exclude: &[String],
        applicable_if_exists: Option<PathBuf>,
    ) -> Result<FilesComponent, String> {
        let mut set = GlobSetBuilder::new();
        for g in exclude {
            set.add(Glob::new(g).map_err(|e| format!("bad exclude pattern {g:?}: {e}"))?);
        }
        let exclude = set.build().map_err(|e| e.to_string())?;
        Ok(FilesComponent {
            name: name.into(),
            paths,
            exclude,
            applicable_if_exists,
        })
    }

    fn excluded(&self, path: &Path) -> bool {
        self.exclude.is_match(path) || path.file_name().is_some_and(|n| self.exclude.is_match(n))
    }

    fn walk(&self, root: &Path) -> walkdir::IntoIter {
        walkdir::WalkDir::new(root)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
    }
}

impl Component for FilesComponent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &str {
        "files"
    }

    fn roots(&self) -> Vec<PathBuf> {
        self.paths.clone()
    }

    fn applicability(&self) -> Applicability {
        applicable_if(&self.applicable_if_exists)
    }

    fn estimate_size(&self) -> Option<u64> {
        let mut total = 0u64;
        for root in &self.paths {
            let mut it = self.walk(root);
            while let Some(Ok(e)) = it.next() {
                if e.depth() > 0 && self.excluded(e.path()) {
                    if e.file_type().is_dir() {
                        it.skip_current_dir();
                    }
                    continue;
                }
                if e.file_type().is_file() {
                    total += e.metadata().map(|m| m.len()).unwrap_or(0);
                }
                total += 512;
            }
        }
        Some(total)
    }

    fn snapshot(&self, sink: &mut dyn EntrySink, _scratch: &Path) -> Result<(), SnapshotError> {
        use std::os::unix::fs::MetadataExt;
        // First path seen for each (device, inode) with more than one link.
        let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
        for root in &self.paths {
            // A root that is a symlink is followed (like `tar -h`, for the
            // root only): the image records it as the directory or file it
            // names, so restore writes a tree, never a path through a link.
            if let Err(e) = std::fs::metadata(root) {
                let how = match std::fs::read_link(root) {
                    Ok(target) => format!(
                        "it is a symlink to {}, which cannot be read ({e})",
                        target.display()
                    ),
                    Err(_) => e.to_string(),
                };
                return Err(SnapshotError::Failed(format!(
                    "cannot read {}: {how}",
                    root.display()
                )));
            }
            let mut it = self.walk(root);
            while let Some(next) = it.next() {
                let entry = next.map_err(|e| {
                    SnapshotError::Failed(format!("cannot walk {}: {e}", root.display()))
                })?;
                let path = entry.path();
                if entry.depth() > 0 && (sink.is_left_out(rel_of(path)) || self.excluded(path)) {
                    if entry.file_type().is_dir() {
                        it.skip_current_dir();
                    }
                    continue;
                }
                let md = if entry.depth() == 0 {
                    std::fs::metadata(path)
                } else {
                    entry.metadata().map_err(Into::into)
                }
                .map_err(|e| {
                    SnapshotError::Failed(format!("cannot stat {}: {e}", path.display()))
                })?;
                let meta = EntryMeta::from_metadata(&md);
                let rel = rel_of(path);
                let ft = md.file_type();
                if ft.is_dir() {
                    sink.dir(rel, &meta)?;
                } else if ft.is_symlink() {
                    let target = std::fs::read_link(path).map_err(|e| {
                        SnapshotError::Failed(format!("cannot read link {}: {e}", path.display()))
                    })?;
                    sink.symlink(rel, &meta, &target)?;
                } else if ft.is_file() {
                    if md.nlink() > 1 {
                        if let Some(first) = linked.get(&(md.dev(), md.ino())) {
                            sink.hardlink(rel, &meta, first)?;
                            continue;
                        }
                        linked.insert((md.dev(), md.ino()), rel.to_path_buf());
                    }
                    if sink.reuse(rel, &meta, md.len(), &[FileStat::from_metadata(&md)])? {
                        continue;
                    }
                    let mut file = std::fs::File::open(path).map_err(|e| {
                        SnapshotError::Failed(format!("cannot open {}: {e}", path.display()))
                    })?;
                    sink.file(rel, &meta, md.len(), &mut file)?;
                    let after = if entry.depth() == 0 {
                        std::fs::metadata(path)
                    } else {
                        std::fs::symlink_metadata(path)
                    };
                    if let Ok(after) = after {
                        if after.len() != md.len()
                            || after.mtime() != md.mtime()
                            || after.mtime_nsec() != md.mtime_nsec()
                        {
                            sink.warn(format!(
                                "{} changed while it was being read; the image holds a mix of old and new content — back up again when it is quiet",
                                path.display()
                            ));
                        }
                    }
                } else {
                    sink.warn(format!(
                        "skipped {} (socket, FIFO or device file)",
                        path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    fn is_excluded(&self, original: &Path) -> bool {
        self.excluded(original)
    }

    fn restore(&self, ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        restore_roots(ctx, &|p| self.excluded(p))
    }
}

/// Swaps every planned root from staging into place (shared with SQLite),
/// carrying the live paths `excluded` matches (given their original
/// absolute paths) into the new trees untouched.
pub(super) fn restore_roots(
    ctx: &RestoreContext<'_>,
    excluded: &dyn Fn(&Path) -> bool,
) -> Result<Box<dyn Committed>, String> {
    if std::fs::symlink_metadata(ctx.staged).is_err() {
        return Err(format!(
            "its staging directory {} is gone; nothing of it was put into place",
            ctx.staged.display()
        ));
    }
    let mut swapped = Swapped::default();
    for root in &ctx.planned.roots {
        let root = Path::new(root);
        let staged = ctx.staged.join(rel_of(root));
        if std::fs::symlink_metadata(&staged).is_err() {
            // The root did not exist at backup time; nothing to put back.
            continue;
        }
        let dest = match ctx.target {
            // Under --target nothing is followed out of the target.
            Some(_) => ctx.destination(root),
            None => follow_root_link(root.to_path_buf()),
        };
        let swapped_in = excluded_under(&dest, root, excluded)
            .map_err(|e| {
                format!(
                    "cannot look for excluded paths under {}: {e}",
                    dest.display()
                )
            })
            .map(|mut keep| {
                for own in ctx.own_places_under(&dest) {
                    if !keep.iter().any(|k| own.starts_with(k)) {
                        keep.retain(|k| !k.starts_with(&own));
                        keep.push(own);
                    }
                }
                keep
            })
            .and_then(|keep| swapped.swap(&staged, &dest, &keep));
        if let Err(e) = swapped_in {
            let undo = Box::new(swapped).rollback();
            return Err(match undo {
                Ok(()) => e,
                Err(u) => format!("{e}; rolling back also failed: {u}"),
            });
        }
    }
    Ok(Box::new(swapped))
}

/// Where a root goes when its live path is a symlink: to what it names,
/// as the backup read it, so the link stays and the tree behind it is
/// replaced. A dangling link is replaced by the restored tree.
fn follow_root_link(dest: PathBuf) -> PathBuf {
    let is_link = std::fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return dest;
    }
    std::fs::canonicalize(&dest).unwrap_or(dest)
}

pub(super) fn applicable_if(path: &Option<PathBuf>) -> Applicability {
    match path {
        Some(p) if std::fs::symlink_metadata(p).is_err() => {
            Applicability::NotApplicable(format!("{} does not exist on this node", p.display()))
        }
        _ => Applicability::Applicable,
    }
}
