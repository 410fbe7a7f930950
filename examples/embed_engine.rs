//! Embedding the engine in another Rust program, with a component of its own.
//!
//! The appliance keeps its license entitlements in memory (in a real product:
//! behind an API). A custom `Component` snapshots them into the image next to
//! the built-in components, and restores them by writing them back.
//!
//! Run: `cargo run -p backup-examples --example embed_engine`
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use backup_core::{
    Applicability, Committed, Component, ComponentOptions, CreateOptions, Engine, EntryMeta,
    EntrySink, Event, KdfParams, Passphrase, Progress, RestoreContext, RestoreOptions,
    SnapshotError,
};

/// The product's own state, reachable only through its API.
#[derive(Default)]
struct LicenseStore {
    entitlements: Mutex<Vec<String>>,
}

struct LicenseComponent {
    store: Arc<LicenseStore>,
}

impl Component for LicenseComponent {
    fn name(&self) -> &str {
        "licenses"
    }

    fn kind(&self) -> &str {
        "licenses-api"
    }

    fn roots(&self) -> Vec<PathBuf> {
        Vec::new() // not a file tree: its entries are flat names
    }

    fn applicability(&self) -> Applicability {
        Applicability::Applicable
    }

    fn estimate_size(&self) -> Option<u64> {
        Some(
            self.store
                .entitlements
                .lock()
                .unwrap()
                .iter()
                .map(|e| e.len() as u64 + 1)
                .sum(),
        )
    }

    fn snapshot(&self, sink: &mut dyn EntrySink, _scratch: &Path) -> Result<(), SnapshotError> {
        let text = self.store.entitlements.lock().unwrap().join("\n");
        let meta = EntryMeta {
            mode: 0o600,
            mtime: 1_700_000_000,
            uid: 0,
            gid: 0,
        };
        sink.file(
            Path::new("entitlements.txt"),
            &meta,
            text.len() as u64,
            &mut text.as_bytes(),
        )
    }

    fn restore(&self, ctx: &RestoreContext<'_>) -> Result<Box<dyn Committed>, String> {
        let mut text = String::new();
        std::fs::File::open(ctx.staged.join("entitlements.txt"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| format!("cannot read the staged entitlements: {e}"))?;
        let previous = std::mem::replace(
            &mut *self.store.entitlements.lock().unwrap(),
            text.lines().map(str::to_string).collect(),
        );
        Ok(Box::new(Undo {
            store: self.store.clone(),
            previous,
        }))
    }
}

/// Lets the engine roll this component back if a later one fails.
struct Undo {
    store: Arc<LicenseStore>,
    previous: Vec<String>,
}

impl Committed for Undo {
    fn finalize(self: Box<Self>) -> Result<(), String> {
        Ok(())
    }
    fn rollback(self: Box<Self>) -> Result<(), String> {
        *self.store.entitlements.lock().unwrap() = self.previous;
        Ok(())
    }
}

/// Progress arrives as events; an embedder forwards them to its own UI or log.
struct PrintEvents;

impl Progress for PrintEvents {
    fn event(&self, event: &Event) {
        if let Event::ComponentFinished {
            component,
            outcome,
            entries,
            ..
        } = event
        {
            println!("  {component}: {outcome} ({entries} entries)");
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // A demo appliance gives us a config file, a file tree and a database.
    let demo = backup_core::demo::build_demo(&dir.path().join("demo"), 19)?;
    backup_core::init_keys(
        &demo.config.appliance.state_dir,
        &Passphrase::new("example secret, not for production".into())?,
        KdfParams::MINIMUM,
    )?;

    let store = Arc::new(LicenseStore::default());
    store
        .entitlements
        .lock()
        .unwrap()
        .extend(["vpn-users=250".to_string(), "ips=enabled".to_string()]);

    let engine = Engine::builder(demo.config.clone())
        .component(
            Arc::new(LicenseComponent {
                store: store.clone(),
            }),
            ComponentOptions::default(),
        )
        .progress(Arc::new(PrintEvents))
        .build()?;

    println!("backing up {:?}", engine.component_names());
    let report = engine
        .create(&CreateOptions::default())
        .await
        .context("backup")?;
    println!("image {} ({:?})", report.image, report.outcome);

    // Lose the state, then restore only our component.
    store.entitlements.lock().unwrap().clear();
    let mut opts = RestoreOptions::default();
    opts.components = vec!["licenses".into()];
    engine
        .restore(&report.image, &opts)
        .await
        .context("restore")?;
    let restored = store.entitlements.lock().unwrap().clone();
    println!("restored entitlements: {restored:?}");
    anyhow::ensure!(
        restored == ["vpn-users=250", "ips=enabled"],
        "restore did not bring the entitlements back"
    );
    Ok(())
}
