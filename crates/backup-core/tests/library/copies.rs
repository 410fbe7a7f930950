//! Second copies against the library: a destination that gives back other
//! bytes than it was given is caught by the read-back check, and the bad
//! copy does not stay there; a sound destination holds the very bytes.
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use backup_core::{CopyDestination, CopyOutcome, CreateOptions};
use backup_storage::{
    Capabilities, Capacity, GetResult, ListResult, ObjectMeta, PutOptions, Storage, Upload,
};
use backup_testkit::MemoryStorage;
use tokio::io::AsyncReadExt;

use super::{engine, Appliance};

/// A memory store whose reads of images come back with one byte flipped
/// (a failing disk or a corrupting link): what was written is intact.
#[derive(Debug, Clone, Default)]
struct Damaging {
    inner: MemoryStorage,
}

impl std::fmt::Display for Damaging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("damaging-memory://")
    }
}

#[async_trait]
impl Storage for Damaging {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn put_opts(
        &self,
        name: &str,
        opts: PutOptions,
    ) -> backup_storage::Result<Box<dyn Upload>> {
        self.inner.put_opts(name, opts).await
    }
    async fn get_opts(
        &self,
        name: &str,
        range: Option<Range<u64>>,
    ) -> backup_storage::Result<GetResult> {
        let mut got = self.inner.get_opts(name, range).await?;
        if name.ends_with(".bkp") {
            let mut bytes = Vec::new();
            got.reader
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| backup_storage::Error::from_io("reading", e))?;
            let middle = bytes.len() / 2;
            bytes[middle] ^= 0x01;
            got.reader = Box::new(std::io::Cursor::new(bytes));
        }
        Ok(got)
    }
    async fn head(&self, name: &str) -> backup_storage::Result<ObjectMeta> {
        self.inner.head(name).await
    }
    async fn list(&self, prefix: &str, delimited: bool) -> backup_storage::Result<ListResult> {
        self.inner.list(prefix, delimited).await
    }
    async fn delete(&self, name: &str) -> backup_storage::Result<()> {
        self.inner.delete(name).await
    }
    async fn capacity(&self) -> backup_storage::Result<Capacity> {
        self.inner.capacity().await
    }
    async fn presign_get(&self, name: &str, expires: Duration) -> backup_storage::Result<String> {
        self.inner.presign_get(name, expires).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_copy_that_reads_back_differently_fails_and_is_removed() -> Result<()> {
    let app = Appliance::new()?;
    let store = MemoryStorage::default();
    let e = engine(app.config(), &store)?;
    let report = e.create(&CreateOptions::default()).await?;
    assert!(report.copies.is_empty(), "no [[copy]] configured");

    let damaging = Damaging::default();
    let records = e
        .copy_to(
            &report.image,
            &[CopyDestination::new("flaky", Arc::new(damaging.clone()))],
        )
        .await?;
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.outcome, CopyOutcome::Failed, "{r:?}");
    let reason = r.reason.as_deref().unwrap_or_default();
    assert!(
        reason.contains("differs from what was sent") && reason.contains("SHA-256"),
        "{reason}"
    );
    assert!(
        damaging.inner.names().is_empty(),
        "neither the bad copy nor its sidecar stays: {:?}",
        damaging.inner.names()
    );
    let status = e.status()?;
    assert_eq!(status.copies.len(), 1);
    assert_eq!(status.copies[0].destination, "flaky");
    assert_eq!(status.copies[0].outcome, CopyOutcome::Failed);

    // A sound destination holds the very bytes, then finds them present.
    let sound = MemoryStorage::default();
    let dest = [CopyDestination::new("sound", Arc::new(sound.clone()))];
    let records = e.copy_to(&report.image, &dest).await?;
    assert_eq!(records[0].outcome, CopyOutcome::Copied, "{records:?}");
    assert_eq!(sound.object(&report.image), store.object(&report.image));
    let sidecar = format!("{}.manifest", report.image);
    assert_eq!(sound.object(&sidecar), store.object(&sidecar));
    let records = e.copy_to(&report.image, &dest).await?;
    assert_eq!(records[0].outcome, CopyOutcome::Present, "{records:?}");
    Ok(())
}
