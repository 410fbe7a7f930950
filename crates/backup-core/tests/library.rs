//! Library-level cases run against `backup_core` directly (not through the
//! `backup` binary), on the shared testkit's fixtures: hostile images,
//! refusals and partial outcomes. The helpers shared by the modules are
//! here.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use backup_core::{Config, Engine, KdfParams, Passphrase};
use backup_testkit::demo::{build_demo, DemoAppliance};
use backup_testkit::MemoryStorage;

#[path = "library/copies.rs"]
mod copies;
#[path = "library/hostile.rs"]
mod hostile;
#[path = "library/object_lock.rs"]
mod object_lock;
#[path = "library/own_places.rs"]
mod own_places;
#[path = "library/partial.rs"]
mod partial;
#[path = "library/refusals.rs"]
mod refusals;

const SECRET: &str = "library test secret";

/// A demo appliance with its keys set, and the directory holding it.
struct Appliance {
    _dir: tempfile::TempDir,
    demo: DemoAppliance,
}

impl Appliance {
    fn new() -> Result<Appliance> {
        let dir = tempfile::tempdir()?;
        let demo = build_demo(&dir.path().join("demo"), 19)?;
        backup_core::init_keys(
            &demo.config.appliance.state_dir,
            &Passphrase::new(SECRET.into())?,
            KdfParams::MINIMUM,
        )?;
        Ok(Appliance { _dir: dir, demo })
    }

    fn config(&self) -> &Config {
        &self.demo.config
    }

    fn state_dir(&self) -> &Path {
        &self.demo.config.appliance.state_dir
    }

    /// A fresh directory inside the appliance's scratch space.
    fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.demo.dir.join(name);
        std::fs::create_dir(&d)?;
        Ok(d)
    }
}

/// An engine over `config` storing its images in `store`.
fn engine(config: &Config, store: &MemoryStorage) -> Result<Engine> {
    Ok(Engine::builder(config.clone())
        .storage(Arc::new(store.clone()))
        .build()?)
}

/// The appliance's configuration with `extra` (TOML tables) appended.
fn config_with(app: &Appliance, extra: &str) -> Result<Config> {
    let text = std::fs::read_to_string(&app.demo.config_path)?;
    Ok(Config::parse(
        &format!("{text}\n{extra}"),
        &app.demo.config_path,
    )?)
}

/// Every path under `dir` (relative to it), sorted; empty if `dir` is
/// missing.
fn all_paths(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .filter_map(|e| e.ok())
        .map(|e| e.path().strip_prefix(dir).unwrap().to_path_buf())
        .collect();
    out.sort();
    out
}
