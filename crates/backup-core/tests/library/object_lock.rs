//! A store that keeps what it is given (S3 Object Lock, versioning): the
//! write probe leaves one reused object at most, and retention keeps an
//! image the store refuses to delete instead of failing.
use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use backup_core::{Config, CreateOptions, Engine, Outcome};
use backup_storage::{
    Capabilities, Capacity, GetResult, ListResult, ObjectMeta, PutOptions, Storage, Upload,
};
use backup_testkit::MemoryStorage;

use super::{config_with, Appliance};

/// A memory store that records every name written and refuses to delete
/// the locked names the way the S3 backend reports an `AccessDenied` on
/// an object under retention: as `PermissionDenied`.
#[derive(Debug, Clone, Default)]
struct LockingStore {
    inner: MemoryStorage,
    written: Arc<Mutex<Vec<String>>>,
    locked: Arc<Mutex<BTreeSet<String>>>,
}

impl LockingStore {
    fn lock(&self, name: &str) {
        self.locked.lock().unwrap().insert(name.to_string());
    }
    fn unlock_all(&self) {
        self.locked.lock().unwrap().clear();
    }
    fn written(&self) -> Vec<String> {
        self.written.lock().unwrap().clone()
    }
}

impl std::fmt::Display for LockingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("locking-memory://")
    }
}

#[async_trait]
impl Storage for LockingStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_opts(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        self.written.lock().unwrap().push(name.to_string());
        self.inner.put_opts(name, opts).await
    }
    async fn get_opts(
        &self,
        name: &str,
        range: Option<Range<u64>>,
    ) -> backup_storage::Result<GetResult> {
        self.inner.get_opts(name, range).await
    }
    async fn head(&self, name: &str) -> backup_storage::Result<ObjectMeta> {
        self.inner.head(name).await
    }
    async fn list(&self, prefix: &str, delimited: bool) -> backup_storage::Result<ListResult> {
        self.inner.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        if self.locked.lock().unwrap().contains(name) {
            return Err(backup_storage::Error::PermissionDenied {
                what: format!("delete {name}: AccessDenied (object protected by object lock)"),
                source: None,
            });
        }
        self.inner.delete(name).await
    }
    async fn capacity(&self) -> backup_storage::Result<Capacity> {
        self.inner.capacity().await
    }
    async fn presign_get(&self, name: &str, expires: Duration) -> backup_storage::Result<String> {
        self.inner.presign_get(name, expires).await
    }
}

fn engine(config: &Config, store: &LockingStore) -> Result<Engine> {
    Ok(Engine::builder(config.clone())
        .storage(Arc::new(store.clone()))
        .build()?)
}

/// The demo's configuration with `lines` added to its `[storage]` table.
fn with_storage_lines(app: &Appliance, lines: &str) -> Result<Config> {
    let text = std::fs::read_to_string(&app.demo.config_path)?;
    assert!(
        text.contains("[storage]\n"),
        "the demo config has [storage]"
    );
    let text = text.replacen("[storage]\n", &format!("[storage]\n{lines}\n"), 1);
    Ok(Config::parse(&text, &app.demo.config_path)?)
}

fn probes(names: &[String]) -> Vec<&String> {
    names.iter().filter(|n| n.contains("probe")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_backup_probes_the_storage_under_one_reused_name() -> Result<()> {
    let app = Appliance::new()?;
    let store = LockingStore::default();
    let e = engine(app.config(), &store)?;
    e.create(&CreateOptions::default()).await?;
    e.create(&CreateOptions::default()).await?;
    let written = store.written();
    assert_eq!(
        probes(&written),
        [".backup-probe", ".backup-probe"],
        "two backups, one probe name: {written:?}"
    );
    assert!(
        probes(&store.inner.names()).is_empty(),
        "the probe is deleted after: {:?}",
        store.inner.names()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_false_writes_no_probe_object() -> Result<()> {
    let app = Appliance::new()?;
    let config = with_storage_lines(&app, "probe = false")?;
    assert!(!config.storage.probe);
    assert!(with_storage_lines(&app, "")?.storage.probe, "on by default");
    let store = LockingStore::default();
    let report = engine(&config, &store)?
        .create(&CreateOptions::default())
        .await?;
    assert_eq!(report.outcome, Outcome::Success);
    let written = store.written();
    assert!(probes(&written).is_empty(), "{written:?}");
    assert!(written.contains(&report.image), "{written:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_keeps_a_locked_image_as_kept_by_lock() -> Result<()> {
    let app = Appliance::new()?;
    let config = config_with(&app, "[retention]\nkeep_last = 1")?;
    let store = LockingStore::default();
    let e = engine(&config, &store)?;
    let first = e.create(&CreateOptions::default()).await?;
    store.lock(&first.image);

    // Retention after the next backup cannot delete the first image: the
    // backup succeeds, and nothing is reported as pruned.
    let second = e.create(&CreateOptions::default()).await?;
    assert_eq!(second.outcome, Outcome::Success);
    assert!(second.pruned.is_empty(), "{:?}", second.pruned);
    assert!(store.inner.object(&first.image).is_some());

    // `prune` reports it as kept, by the lock, and does not fail.
    let decisions = e.prune(false).await?;
    let kept = decisions
        .iter()
        .find(|d| d.name == first.image)
        .expect("the locked image is in the decisions");
    assert!(kept.keep, "{kept:?}");
    assert_eq!(kept.reasons, ["kept-by-lock"], "{kept:?}");
    assert!(store.inner.object(&first.image).is_some());
    let audit = std::fs::read_to_string(app.state_dir().join("audit.log"))?;
    assert!(
        audit
            .lines()
            .any(|l| l.contains(&first.image) && l.contains("\"kept-by-lock\"")),
        "{audit}"
    );

    // Once the lock is gone, the next prune deletes it.
    store.unlock_all();
    let decisions = e.prune(false).await?;
    assert!(decisions.iter().any(|d| d.name == first.image && !d.keep));
    assert!(store.inner.object(&first.image).is_none());
    assert!(store.inner.object(&second.image).is_some());
    Ok(())
}
