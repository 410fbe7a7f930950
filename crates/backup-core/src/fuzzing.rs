//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`; not a
//! stable interface).
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use crate::image::reader::{self, EntryView, Visitor};
use crate::image::BackupInfo;
use crate::restore::Stager;
use crate::{Error, Result};

/// Runs what restore runs on a decrypted payload — codec detection, gzip
/// member and zstd frame cutting, the parallel decoders, the tar walk with
/// its archive-safety rules and the manifest check — extracting every
/// component with restore's own stager into `scratch/<n>` (which must not
/// exist yet). Returns the walk's verdict; nothing is ever written outside
/// `scratch`.
pub fn walk_payload(payload: &[u8], scratch: &Path) -> Result<()> {
    std::fs::create_dir(scratch)
        .map_err(|e| Error::io(format!("creating {}", scratch.display()), e))?;
    let mut visitor = Extract {
        scratch,
        stagers: BTreeMap::new(),
    };
    reader::walk(payload, &mut visitor)?;
    for stager in visitor.stagers.values_mut() {
        stager.finish()?;
    }
    Ok(())
}

struct Extract<'a> {
    scratch: &'a Path,
    stagers: BTreeMap<String, Stager>,
}

impl Visitor for Extract<'_> {
    fn info(&mut self, info: &BackupInfo) -> Result<()> {
        for (i, planned) in info.components.iter().enumerate() {
            let root = self.scratch.join(i.to_string());
            std::fs::create_dir(&root)
                .map_err(|e| Error::io(format!("creating {}", root.display()), e))?;
            self.stagers
                .insert(planned.name.clone(), Stager::new(root, false)?);
        }
        Ok(())
    }

    fn entry(&mut self, component: &str, entry: &EntryView<'_>, data: &mut dyn Read) -> Result<()> {
        match self.stagers.get_mut(component) {
            Some(stager) => stager.extract(entry, data),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seed corpus, replayed: `ok-*` seeds must walk and
    /// extract, `bad-*` seeds must be refused; none may write outside its
    /// scratch directory.
    #[test]
    fn payload_seeds_replay() {
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/payload_walk");
        let mut names: Vec<_> = std::fs::read_dir(&seeds)
            .unwrap_or_else(|e| panic!("{}: {e}", seeds.display()))
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let (mut ok, mut bad) = (0, 0);
        for path in names {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let data = std::fs::read(&path).unwrap();
            let dir = tempfile::tempdir().unwrap();
            let scratch = dir.path().join("scratch");
            let result = walk_payload(&data, &scratch);
            let around: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(around, ["scratch"], "{name}: wrote beside its scratch");
            if name.starts_with("ok-") {
                result.unwrap_or_else(|e| panic!("{name}: {e}"));
                ok += 1;
            } else if name.starts_with("bad-") {
                assert!(result.is_err(), "{name}: accepted");
                bad += 1;
            }
        }
        assert!(
            ok >= 3 && bad >= 3,
            "{ok} good and {bad} bad seeds in {}",
            seeds.display()
        );
    }
}
