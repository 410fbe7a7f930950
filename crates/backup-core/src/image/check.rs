//! The archive-safety rules every component entry must pass.
//!
//! One set of rules, applied wherever entries pass: by the tar writer of a
//! backup (an entry restore would refuse fails its component instead of
//! being written) and by every walk over a payload — verify, restore, show —
//! before the walk hands an entry to whatever extracts it. So an image that
//! verifies passes every check restore makes, and a backup that reports
//! success wrote only entries restore accepts. The rules decide from the
//! entries alone, never from a file system: extraction into a staging
//! directory only carries out what they allowed.
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component as PathPart, Path, PathBuf};

use super::EntryKind;

/// What a path of the component is, as far as its earlier entries say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A directory entry, or a parent an entry implied (extraction creates it).
    Dir,
    /// A regular file or a hard link to one.
    File,
    Symlink,
}

/// The state of one component's walk: its recorded roots and what each path
/// seen so far is.
///
/// Paths are remembered by a 128-bit keyed hash rather than their bytes, so a
/// component of millions of files costs tens of megabytes here, not hundreds.
/// A collision (odds about n²/2¹²⁹, keys random per walk so no archive can
/// aim for one) could only make two paths count as one: a symlink and a
/// directory sharing a key are then refused as a duplicate, and extraction
/// still refuses to write through anything that is not a directory it made.
pub(crate) struct EntryRules {
    /// Archive-relative roots entries must live under (empty: flat names only).
    roots: Vec<PathBuf>,
    seen: HashMap<u128, Seen>,
    keys: (RandomState, RandomState),
}

impl EntryRules {
    /// The rules for a component recorded with these absolute `roots`;
    /// refuses a root that is not a plain absolute path.
    pub(crate) fn new<S: AsRef<Path>>(roots: &[S]) -> Result<EntryRules, String> {
        let mut rel = Vec::new();
        for root in roots {
            let root = root.as_ref();
            let plain = root.is_absolute()
                && root
                    .components()
                    .all(|c| matches!(c, PathPart::RootDir | PathPart::Normal(_)))
                && !has_dot_segment(root);
            if !plain {
                return Err(format!(
                    "its root {} is not a plain absolute path",
                    root.display()
                ));
            }
            rel.push(root.strip_prefix("/").unwrap_or(root).to_path_buf());
        }
        Ok(EntryRules {
            roots: rel,
            seen: HashMap::new(),
            keys: (RandomState::new(), RandomState::new()),
        })
    }

    fn key(&self, path: &Path) -> u128 {
        let bytes = path.as_os_str().as_bytes();
        let (a, b) = (self.keys.0.hash_one(bytes), self.keys.1.hash_one(bytes));
        (u128::from(a) << 64) | u128::from(b)
    }

    fn get(&self, path: &Path) -> Option<Seen> {
        self.seen.get(&self.key(path)).copied()
    }

    fn within_roots(&self, rel: &Path) -> bool {
        if self.roots.is_empty() {
            rel.components().count() == 1
        } else {
            self.roots.iter().any(|root| rel.starts_with(root))
        }
    }

    /// Checks one entry at `rel` (relative to the component) of `kind`, with
    /// its hard link target relative to the component, and records it.
    /// Returns why the entry may not be restored.
    pub(crate) fn check(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        link: Option<&Path>,
    ) -> Result<(), String> {
        if rel.as_os_str().is_empty()
            && kind == EntryKind::Dir
            && self.roots.iter().any(|r| r.as_os_str().is_empty())
        {
            // The root `/` itself: readers skip it as a structural directory.
            return Ok(());
        }
        let plain = !rel.as_os_str().is_empty()
            && rel.components().all(|c| matches!(c, PathPart::Normal(_)))
            && !has_dot_segment(rel);
        if !plain {
            return Err("its path is not a plain relative path".into());
        }
        if !self.within_roots(rel) {
            return Err("it lies outside the component's recorded roots".into());
        }
        self.check_parents(rel)?;
        match (self.get(rel), kind) {
            (None, _) | (Some(Seen::Dir), EntryKind::Dir) => {}
            (Some(Seen::Symlink), _) => {
                return Err("it replaces a symlink of the same archive".into())
            }
            (Some(Seen::File), EntryKind::Dir) => {
                return Err("a directory entry replaces a file".into())
            }
            (Some(_), _) => return Err("the archive holds this path twice".into()),
        }
        let seen = match kind {
            EntryKind::Dir => Seen::Dir,
            EntryKind::File => Seen::File,
            EntryKind::Symlink => Seen::Symlink,
            EntryKind::Hardlink => {
                let target = link.ok_or("a hard link without a target")?;
                self.check_link_target(target)?;
                Seen::File
            }
        };
        let key = self.key(rel);
        self.seen.insert(key, seen);
        Ok(())
    }

    /// Every parent must be a directory (seen, or created on the way), never
    /// a symlink or a file of the archive.
    fn check_parents(&mut self, rel: &Path) -> Result<(), String> {
        // A parent known as a directory had its own parents checked when it
        // was recorded, and nothing turns a directory into something else.
        match rel.parent() {
            Some(p) if p.as_os_str().is_empty() || self.get(p) == Some(Seen::Dir) => return Ok(()),
            _ => {}
        }
        let mut prefix = PathBuf::new();
        let parts: Vec<_> = rel.components().collect();
        for part in &parts[..parts.len().saturating_sub(1)] {
            prefix.push(part);
            match self.get(&prefix) {
                Some(Seen::Dir) => {}
                Some(Seen::Symlink) => {
                    return Err(format!(
                        "it would be written through the symlink {}",
                        prefix.display()
                    ))
                }
                Some(Seen::File) => return Err(format!("{} is not a directory", prefix.display())),
                None => {
                    let key = self.key(&prefix);
                    self.seen.insert(key, Seen::Dir);
                }
            }
        }
        Ok(())
    }

    fn check_link_target(&self, target: &Path) -> Result<(), String> {
        let plain = !target.as_os_str().is_empty()
            && target
                .components()
                .all(|c| matches!(c, PathPart::Normal(_)))
            && !has_dot_segment(target);
        if !plain || !self.within_roots(target) {
            return Err(format!(
                "its hard link target {} lies outside the component's recorded roots",
                target.display()
            ));
        }
        let mut prefix = PathBuf::new();
        for part in target.components() {
            prefix.push(part);
            if self.get(&prefix) == Some(Seen::Symlink) {
                return Err("its hard link target goes through a symlink".into());
            }
        }
        if self.get(target) != Some(Seen::File) {
            return Err(format!(
                "its hard link target {} is not an earlier file of the component",
                target.display()
            ));
        }
        Ok(())
    }
}

/// `Path::components` drops interior `.` parts silently; look at the bytes.
fn has_dot_segment(path: &Path) -> bool {
    path.as_os_str()
        .as_bytes()
        .split(|b| *b == b'/')
        .any(|s| s == b"." || s == b"..")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> EntryRules {
        EntryRules::new(&["/etc/gw"]).unwrap()
    }

    fn p(s: &str) -> &Path {
        Path::new(s)
    }

    #[test]
    fn roots_must_be_plain_absolute_paths() {
        for bad in ["etc/gw", "/etc/../gw", "/etc/./gw", "/etc/gw/.."] {
            assert!(EntryRules::new(&[bad]).is_err(), "{bad} accepted");
        }
        assert!(EntryRules::new(&["/", "/etc/gw/", "/x y/\n"]).is_ok());
    }

    #[test]
    fn a_tree_of_every_kind_passes() {
        let mut r = rules();
        r.check(p("etc/gw"), EntryKind::Dir, None).unwrap();
        r.check(p("etc/gw/a"), EntryKind::File, None).unwrap();
        r.check(p("etc/gw/d/e/f"), EntryKind::File, None).unwrap();
        r.check(p("etc/gw/d"), EntryKind::Dir, None).unwrap();
        r.check(p("etc/gw/l"), EntryKind::Symlink, None).unwrap();
        r.check(p("etc/gw/h"), EntryKind::Hardlink, Some(p("etc/gw/a")))
            .unwrap();
        r.check(p("etc/gw/h2"), EntryKind::Hardlink, Some(p("etc/gw/h")))
            .unwrap();
    }

    #[test]
    fn unsafe_entries_are_refused() {
        type Entry = (&'static str, EntryKind, Option<&'static str>);
        let cases: Vec<(&str, Vec<Entry>)> = vec![
            ("outside", vec![("etc/other", EntryKind::File, None)]),
            ("dotdot", vec![("etc/gw/../x", EntryKind::File, None)]),
            ("dot", vec![("etc/gw/./x", EntryKind::File, None)]),
            ("absolute", vec![("/etc/gw/x", EntryKind::File, None)]),
            (
                "through a symlink",
                vec![
                    ("etc/gw/l", EntryKind::Symlink, None),
                    ("etc/gw/l/x", EntryKind::File, None),
                ],
            ),
            (
                "under a file",
                vec![
                    ("etc/gw/f", EntryKind::File, None),
                    ("etc/gw/f/x", EntryKind::File, None),
                ],
            ),
            (
                "twice",
                vec![
                    ("etc/gw/f", EntryKind::File, None),
                    ("etc/gw/f", EntryKind::File, None),
                ],
            ),
            (
                "file over an implied directory",
                vec![
                    ("etc/gw/d/x", EntryKind::File, None),
                    ("etc/gw/d", EntryKind::File, None),
                ],
            ),
            (
                "directory over a file",
                vec![
                    ("etc/gw/f", EntryKind::File, None),
                    ("etc/gw/f", EntryKind::Dir, None),
                ],
            ),
            (
                "replaces a symlink",
                vec![
                    ("etc/gw/l", EntryKind::Symlink, None),
                    ("etc/gw/l", EntryKind::Dir, None),
                ],
            ),
            (
                "hard link to a later file",
                vec![("etc/gw/h", EntryKind::Hardlink, Some("etc/gw/f"))],
            ),
            (
                "hard link to a directory",
                vec![
                    ("etc/gw/d", EntryKind::Dir, None),
                    ("etc/gw/h", EntryKind::Hardlink, Some("etc/gw/d")),
                ],
            ),
            (
                "hard link outside the roots",
                vec![("etc/gw/h", EntryKind::Hardlink, Some("etc/passwd"))],
            ),
            (
                "hard link through a symlink",
                vec![
                    ("etc/gw/l", EntryKind::Symlink, None),
                    ("etc/gw/h", EntryKind::Hardlink, Some("etc/gw/l/x")),
                ],
            ),
            (
                "hard link to a symlink",
                vec![
                    ("etc/gw/l", EntryKind::Symlink, None),
                    ("etc/gw/h", EntryKind::Hardlink, Some("etc/gw/l")),
                ],
            ),
        ];
        for (case, entries) in cases {
            let mut r = rules();
            let (last, before) = entries.split_last().unwrap();
            for (path, kind, link) in before {
                r.check(p(path), *kind, link.map(p))
                    .unwrap_or_else(|e| panic!("{case}: {path} refused early: {e}"));
            }
            let (path, kind, link) = last;
            assert!(
                r.check(p(path), *kind, link.map(p)).is_err(),
                "{case}: {path} accepted"
            );
        }
    }

    #[test]
    fn the_root_directory_may_be_a_root() {
        let mut r = EntryRules::new(&["/"]).unwrap();
        r.check(p(""), EntryKind::Dir, None).unwrap();
        r.check(p("etc/x"), EntryKind::File, None).unwrap();
        assert!(rules().check(p(""), EntryKind::Dir, None).is_err());
    }

    #[test]
    fn flat_names_only_without_roots() {
        let mut r = EntryRules::new::<&str>(&[]).unwrap();
        r.check(p("dump"), EntryKind::File, None).unwrap();
        assert!(r.check(p("a/b"), EntryKind::File, None).is_err());
    }
}
