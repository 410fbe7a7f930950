//! The engine's own places — its state directory (keys, status, audit log,
//! scratch space `tmp/`, the HTTP service's `http/`) and a local or NFS
//! image store — which no image holds and no restore writes into: an image
//! holding them would be a backup of the backups, and of `master.key`.
use std::path::{Component as PathPart, Path, PathBuf};

use crate::config::Config;

/// What a restore's staging directory is called among the own places.
pub(crate) const STAGING: &str = "a staging directory of this restore";

/// One of the engine's own places.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OwnPath {
    /// As configured (absolute, `.` and `..` resolved lexically).
    pub(crate) path: PathBuf,
    /// What it is, for messages ("the engine's state directory").
    pub(crate) what: String,
    /// Its location with symlinks resolved, where it can be known.
    real: PathBuf,
}

/// The engine's own places of one configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct OwnPaths {
    places: Vec<OwnPath>,
    /// A directory inside them that a drill's restore writes into.
    allowed: Option<PathBuf>,
}

impl OwnPaths {
    /// The state directory of `config` and, for `file://` and `nfs://`
    /// storage, the directory (mount point) holding the images.
    pub(crate) fn of(config: &Config) -> OwnPaths {
        let mut own = OwnPaths::default();
        own.add(
            &config.appliance.state_dir,
            "the engine's state directory (keys, status, audit log, scratch space)",
        );
        if config.has_storage() {
            let mut opts = backup_storage::OpenOptions::default();
            opts.mount = config.storage.mount.clone();
            if let Some(dir) = backup_storage::local_dir(config.storage.url.trim(), &opts) {
                own.add(&dir, "the image store");
            }
        }
        own
    }

    /// The same places, except `dir` (a drill's own directory in the
    /// scratch space) and what is under it.
    pub(crate) fn allowing(mut self, dir: Option<&Path>) -> OwnPaths {
        self.allowed = dir.filter(|d| d.is_absolute()).map(normal);
        self
    }

    pub(crate) fn add(&mut self, path: &Path, what: &str) {
        if !path.is_absolute() {
            return;
        }
        let path = normal(path);
        self.places.push(OwnPath {
            real: real(&path),
            path,
            what: what.to_string(),
        });
    }

    /// The own place `path` is (or lies inside), if any.
    pub(crate) fn holding(&self, path: &Path) -> Option<&OwnPath> {
        let lexical = normal(path);
        if self
            .allowed
            .as_ref()
            .is_some_and(|a| lexical.starts_with(a))
        {
            return None;
        }
        let resolved = real(&lexical);
        self.places
            .iter()
            .find(|p| lexical.starts_with(&p.path) || resolved.starts_with(&p.real))
    }

    /// The own places strictly inside the tree at `root`, as paths relative
    /// to `root`, topmost only. A place reached through a symlink in `root`
    /// (or in the place's configured path) is found by its resolved location.
    pub(crate) fn under(&self, root: &Path) -> Vec<(PathBuf, &OwnPath)> {
        let lexical = normal(root);
        let resolved = real(&lexical);
        let mut found: Vec<(PathBuf, &OwnPath)> = Vec::new();
        for place in &self.places {
            let rel = place
                .path
                .strip_prefix(&lexical)
                .ok()
                .or_else(|| place.real.strip_prefix(&resolved).ok());
            if let Some(rel) = rel.filter(|r| !r.as_os_str().is_empty()) {
                found.push((rel.to_path_buf(), place));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let mut topmost: Vec<(PathBuf, &OwnPath)> = Vec::new();
        for (rel, place) in found {
            if !topmost.iter().any(|(t, _)| rel.starts_with(t)) {
                topmost.push((rel, place));
            }
        }
        topmost
    }
}

/// About how many bytes the tree at `path` adds to an image (file sizes
/// plus a header per entry, as the files component estimates).
pub(crate) fn tree_size(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| {
            let data = match e.file_type().is_file() {
                true => e.metadata().map(|m| m.len()).unwrap_or(0),
                false => 0,
            };
            data + 512
        })
        .sum()
}

/// `path` with `.` and `..` resolved lexically (no file system access).
fn normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            PathPart::CurDir => {}
            PathPart::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `path` with the symlinks of its longest existing ancestor resolved.
fn real(path: &Path) -> PathBuf {
    let mut missing = Vec::new();
    let mut at = path;
    loop {
        if let Ok(found) = std::fs::canonicalize(at) {
            return missing.iter().rev().fold(found, |p, part| p.join(part));
        }
        match (at.parent(), at.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                at = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(dir: &Path) -> OwnPaths {
        let mut own = OwnPaths::default();
        own.add(&dir.join("appliance/state"), "the state directory");
        own.add(&dir.join("appliance/store"), "the image store");
        own
    }

    #[test]
    fn places_inside_a_root_are_found_topmost_and_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("appliance/state/tmp")).unwrap();
        std::fs::create_dir_all(d.path().join("appliance/store")).unwrap();
        std::os::unix::fs::symlink(d.path().join("appliance"), d.path().join("link")).unwrap();
        let own = own(d.path());
        let names =
            |root: &Path| -> Vec<PathBuf> { own.under(root).into_iter().map(|(r, _)| r).collect() };
        assert_eq!(
            names(&d.path().join("appliance")),
            [PathBuf::from("state"), PathBuf::from("store")]
        );
        assert_eq!(
            names(&d.path().join("link")),
            [PathBuf::from("state"), PathBuf::from("store")]
        );
        assert_eq!(names(d.path()).len(), 2);
        assert!(names(&d.path().join("appliance/state")).is_empty());
        assert!(names(&d.path().join("appliance/etc")).is_empty());
        assert!(own
            .holding(&d.path().join("appliance/state/tmp/x"))
            .is_some());
        assert!(own.holding(&d.path().join("link/store")).is_some());
        assert!(own
            .holding(&d.path().join("appliance/etc/../store"))
            .is_some());
        assert!(own.holding(&d.path().join("appliance/stores")).is_none());
        assert!(own.holding(&d.path().join("appliance")).is_none());
    }
}
