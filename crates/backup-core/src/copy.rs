//! A second copy: each published image and its sidecar manifest, streamed
//! from the first storage to the `[[copy]]` destinations, read back there
//! and checked (size and SHA-256), then each destination's own retention.
//!
//! A copy that fails never fails the backup it follows: it is recorded per
//! destination in the status, audited (`copy`) and reported to the
//! `on_failure` hook with `BACKUP_HOOK=copy`.
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use backup_storage::{PutMode, PutOptions, Storage, StorageExt};
use bytes::{Bytes, BytesMut};
use chrono::Utc;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

pub use crate::config::CopyConfig;
use crate::context::{need_storage, Context};
use crate::guard::{Operation, RunGuard};
use crate::image::sidecar_name;
use crate::ops::hooks::{run_hook, HookEnv};
use crate::ops::retention::RetentionPolicy;
use crate::ops::status::shown;
use crate::ops::status::StatusStore;
pub use crate::ops::status::{CopyOutcome, CopyRecord};
use crate::progress::Event;
use crate::{Error, Result};

/// Bytes moved per write to the destination.
const CHUNK: usize = 1 << 20;
/// Largest sidecar manifest copied (as the engine reads them).
const MAX_SIDECAR: u64 = 16 << 20;

/// A storage that receives copies, with what reports call it and its
/// retention.
pub struct CopyDestination {
    label: String,
    storage: Arc<dyn Storage>,
    retention: RetentionPolicy,
}

impl std::fmt::Debug for CopyDestination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyDestination")
            .field("label", &self.label)
            .field("storage", &self.storage.to_string())
            .finish_non_exhaustive()
    }
}

impl CopyDestination {
    /// `storage` as a destination called `label`, without retention.
    pub fn new(label: impl Into<String>, storage: Arc<dyn Storage>) -> Self {
        CopyDestination {
            label: label.into(),
            storage,
            retention: RetentionPolicy::default(),
        }
    }

    /// The same destination, keeping what `policy` keeps.
    pub fn with_retention(mut self, policy: RetentionPolicy) -> Self {
        self.retention = policy;
        self
    }

    /// What reports call it.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The destination a `[[copy]]` table describes; its storage is opened
    /// at first use, so an unreachable one fails the copy, not this.
    pub fn open(config: &CopyConfig) -> Result<Self> {
        let group = match &config.group {
            Some(g) => Some(crate::util::group_id(g).map_err(|reason| Error::Config {
                path: PathBuf::from("(config)"),
                reason: format!("[[copy]] group: {reason}"),
            })?),
            None => None,
        };
        let mut opts = backup_storage::OpenOptions::default();
        opts.mount = config.mount.clone();
        opts.group = group;
        opts.ssh_key = config.ssh_key.clone();
        opts.host_key_sha256 = config.host_key_sha256.clone();
        let storage: Arc<dyn Storage> = Arc::new(crate::lazy_storage::LazyStorage::new(
            config.url.trim(),
            opts,
        ));
        let label = config.name.clone().unwrap_or_else(|| storage.to_string());
        Ok(CopyDestination {
            label,
            storage,
            retention: config.retention,
        })
    }
}

/// Copies a freshly published image to every `[[copy]]` destination (the
/// backup's run holds the lock) and records and reports each result.
pub(crate) async fn after_backup(engine: &Context<'_>, image: &str) -> Vec<CopyRecord> {
    let mut records = Vec::new();
    for config in &engine.config.copies {
        let record = match CopyDestination::open(config) {
            Ok(dest) => copy_one(engine, image, &dest).await,
            Err(e) => {
                let label = config
                    .name
                    .clone()
                    .unwrap_or_else(|| crate::lazy_storage::shown_url(config.url.trim()));
                let record = failed_record(&label, &label, image, e.to_string());
                audit(engine, &record, Instant::now());
                record
            }
        };
        records.push(record);
    }
    finish(engine, &records);
    records
}

/// Copies a stored image by hand, under the operation lock: to `to`, or
/// to every `[[copy]]` destination.
pub(crate) async fn copy(
    engine: &Context<'_>,
    image: &str,
    to: Option<&CopyConfig>,
) -> Result<Vec<CopyRecord>> {
    let configs: Vec<CopyConfig> = match to {
        Some(c) => vec![c.clone()],
        None if engine.config.copies.is_empty() => {
            return Err(Error::Input(
                "no [[copy]] destination is configured: pass --to URL, or add a [[copy]] table with its url".into(),
            ))
        }
        None => engine.config.copies.clone(),
    };
    let dests = configs
        .iter()
        .map(CopyDestination::open)
        .collect::<Result<Vec<_>>>()?;
    copy_to(engine, image, &dests).await
}

/// [`copy`] to destinations an embedder built itself (see
/// [`CopyDestination::new`]).
pub(crate) async fn copy_to(
    engine: &Context<'_>,
    image: &str,
    dests: &[CopyDestination],
) -> Result<Vec<CopyRecord>> {
    let guard = RunGuard::start(engine, Operation::Copy, image)?;
    // An image that is not there is the caller's mistake, not a copy failure.
    let found = match need_storage(engine, "copy from") {
        Ok(source) => source.head(image).await.map_err(Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = found {
        guard.audit(image, e.kind().audit_outcome(), 0, Some(e.to_string()));
        return Err(e);
    }
    let mut records = Vec::new();
    for dest in dests {
        records.push(copy_one(engine, image, dest).await);
    }
    finish(engine, &records);
    Ok(records)
}

/// Keeps the records as each destination's last copy in the status (the
/// caller holds the lock) and runs `on_failure` for each failed one.
fn finish(engine: &Context<'_>, records: &[CopyRecord]) {
    if records.is_empty() {
        return;
    }
    let store = StatusStore::in_state_dir(engine.state_dir());
    let stored = store.load().and_then(|mut status| {
        for r in records {
            status.copies.insert(r.destination.clone(), r.clone());
        }
        store.store(&status)
    });
    if let Err(e) = stored {
        engine.warn(format!("the status could not be written: {e}"));
    }
    for r in records.iter().filter(|r| !r.outcome.is_ok()) {
        let env = HookEnv {
            outcome: r.outcome.as_str().to_string(),
            image: r.image.clone(),
            failed: Vec::new(),
            node: engine.config.appliance.node.clone(),
            kind: Some("copy".into()),
            copy_destination: Some(r.destination.clone()),
        };
        if let Err(e) = run_hook("on_failure", &engine.config.hooks.on_failure, &env) {
            engine.warn(e.to_string());
        }
    }
}

fn failed_record(label: &str, location: &str, image: &str, reason: String) -> CopyRecord {
    CopyRecord {
        destination: label.to_string(),
        location: location.to_string(),
        time: Utc::now(),
        image: image.to_string(),
        outcome: CopyOutcome::Failed,
        bytes: 0,
        reason: Some(reason),
        pruned: Vec::new(),
        retention_error: None,
    }
}

/// Why a copy did not happen.
enum Refusal {
    /// A different image of that name is at the destination.
    Different(String),
    /// Anything else.
    Failed(Error),
}

impl From<Error> for Refusal {
    fn from(e: Error) -> Self {
        Refusal::Failed(e)
    }
}

impl From<backup_storage::Error> for Refusal {
    fn from(e: backup_storage::Error) -> Self {
        Refusal::Failed(e.into())
    }
}

/// One image to one destination, then the destination's retention;
/// audited, reported through the progress sink, never an error.
async fn copy_one(engine: &Context<'_>, image: &str, dest: &CopyDestination) -> CopyRecord {
    let started = Instant::now();
    let location = dest.storage.to_string();
    engine.progress.event(&Event::Step {
        message: format!("copying {image} to {}", shown(&dest.label, &location)),
    });
    let mut record = match transfer(engine, image, dest).await {
        Ok((outcome, bytes)) => CopyRecord {
            destination: dest.label.clone(),
            location: location.clone(),
            time: Utc::now(),
            image: image.to_string(),
            outcome,
            bytes,
            reason: None,
            pruned: Vec::new(),
            retention_error: None,
        },
        Err(Refusal::Different(why)) => CopyRecord {
            outcome: CopyOutcome::Refused,
            ..failed_record(&dest.label, &location, image, why)
        },
        Err(Refusal::Failed(e)) => failed_record(&dest.label, &location, image, e.to_string()),
    };
    match &record.reason {
        Some(why) => engine.warn(format!(
            "the copy of {image} to {} {}: {why}",
            dest.label,
            if record.outcome == CopyOutcome::Refused {
                "was refused"
            } else {
                "failed"
            }
        )),
        None => engine.progress.event(&Event::Step {
            message: format!(
                "{image} {} at {}, size and SHA-256 checked",
                if record.outcome == CopyOutcome::Present {
                    "already verified"
                } else {
                    "copied and verified"
                },
                dest.label
            ),
        }),
    }
    audit(engine, &record, started);
    if record.outcome.is_ok() && dest.retention.is_enabled() {
        match prune_copies(engine, dest).await {
            Ok(pruned) => record.pruned = pruned,
            Err(e) => {
                engine.warn(format!(
                    "the retention of {} could not run: {e}",
                    dest.label
                ));
                record.retention_error = Some(e.to_string());
            }
        }
    }
    record
}

fn audit(engine: &Context<'_>, record: &CopyRecord, started: Instant) {
    let outcome = match record.outcome {
        CopyOutcome::Copied | CopyOutcome::Present => "done",
        other => other.as_str(),
    };
    let mut audit = crate::ops::audit::AuditRecord::new(
        engine.actor.clone(),
        Operation::Copy.audit_name(),
        &record.image,
        outcome,
    );
    audit.bytes = record.bytes;
    audit.duration_ms = started.elapsed().as_millis() as u64;
    audit.error = record.reason.clone();
    audit.summary = Some(format!(
        "to {}{}",
        record.place(),
        if record.outcome == CopyOutcome::Present {
            ", already there"
        } else {
            ""
        }
    ));
    engine.append_audit(audit);
}

/// The destination's retention, applied to its copies of this node's
/// images by the rules of `[retention]`.
async fn prune_copies(engine: &Context<'_>, dest: &CopyDestination) -> Result<Vec<String>> {
    let mut config = engine.config.clone();
    config.retention = dest.retention;
    let there = Context {
        config: &config,
        storage: Some(dest.storage.clone()),
        ..engine.clone()
    };
    let decisions = crate::retention::apply_retention_at(&there, false, Some(&dest.label)).await?;
    Ok(decisions
        .into_iter()
        .filter(|d| !d.keep)
        .map(|d| d.name)
        .collect())
}

/// Streams the image from the first storage to the destination (a new
/// object, published only once complete), then its sidecar, and checks
/// both as read back from the destination.
async fn transfer(
    engine: &Context<'_>,
    image: &str,
    dest: &CopyDestination,
) -> std::result::Result<(CopyOutcome, u64), Refusal> {
    let source = need_storage(engine, "copy from")?.clone();
    let to = &dest.storage;
    // Only a complete image is copied: its sidecar opens under our key,
    // names it, and records the size the image has.
    let Some(sidecar) = crate::images::sidecar(engine, image).await? else {
        return Err(Error::InvalidImage(format!(
            "{image} has no usable sidecar manifest in {source}, so it cannot be checked after the copy; check the image with `backup verify {image}`"
        ))
        .into());
    };
    let sealed_sidecar = source.get_bytes(&sidecar_name(image), MAX_SIDECAR).await?;

    match to.head(image).await {
        Ok(_) => {
            let there = digest(to, image).await?;
            let here = digest(&source, image).await?;
            if there != here {
                return Err(Refusal::Different(format!(
                    "{} already holds an image named {image} that differs from this one ({} bytes, SHA-256 {}; this one: {} bytes, SHA-256 {}); it is left as it is — remove it there if it is not wanted, or copy elsewhere",
                    dest.label, there.0, there.1, here.0, here.1
                )));
            }
            put_sidecar(to, image, &sealed_sidecar).await?;
            return Ok((CopyOutcome::Present, there.0));
        }
        Err(backup_storage::Error::NotFound { .. }) => {}
        Err(e) => return Err(e.into()),
    }

    let sent = stream(&source, to, image, sidecar.image_size).await?;
    if sent.0 != sidecar.image_size {
        let _ = to.delete(image).await;
        return Err(Error::InvalidImage(format!(
            "{image} in {source} has {} bytes and its manifest records {}; it was not copied — check it with `backup verify {image}`",
            sent.0, sidecar.image_size
        ))
        .into());
    }
    let read_back = match digest(to, image).await {
        Ok(d) => d,
        Err(e) => {
            let _ = to.delete(image).await;
            return Err(e.into());
        }
    };
    if let Err(why) = compare(&sent, &read_back) {
        let _ = to.delete(image).await;
        return Err(Error::InvalidImage(format!(
            "the copy of {image} read back from {} differs from what was sent ({why}); it was removed there — check that storage (disk, network) and copy again with `backup copy {image}`",
            dest.label
        ))
        .into());
    }
    if let Err(e) = put_sidecar(to, image, &sealed_sidecar).await {
        let _ = to.delete(&sidecar_name(image)).await;
        let _ = to.delete(image).await;
        return Err(e.into());
    }
    Ok((CopyOutcome::Copied, sent.0))
}

/// The size and hex SHA-256 of what was sent against what was read back.
pub(crate) fn compare(
    sent: &(u64, String),
    read: &(u64, String),
) -> std::result::Result<(), String> {
    if sent.0 != read.0 {
        return Err(format!("{} bytes sent, {} read back", sent.0, read.0));
    }
    if sent.1 != read.1 {
        return Err(format!("SHA-256 {} sent, {} read back", sent.1, read.1));
    }
    Ok(())
}

/// Writes the sealed sidecar beside the copy and reads it back.
async fn put_sidecar(to: &Arc<dyn Storage>, image: &str, sealed: &Bytes) -> Result<()> {
    let name = sidecar_name(image);
    to.put_bytes(&name, sealed.clone(), PutMode::Overwrite)
        .await?;
    let back = to.get_bytes(&name, MAX_SIDECAR).await?;
    if back != *sealed {
        return Err(Error::InvalidImage(format!(
            "the sidecar {name} read back differs from what was sent ({} bytes sent, {} read back)",
            sealed.len(),
            back.len()
        )));
    }
    Ok(())
}

/// Copies `image` from `from` to a new object in `to`, in bounded chunks;
/// the size and SHA-256 of what was sent. On failure the upload is
/// aborted, so nothing appears under the name.
async fn stream(
    from: &Arc<dyn Storage>,
    to: &Arc<dyn Storage>,
    image: &str,
    size_hint: u64,
) -> Result<(u64, String)> {
    let got = from.get_opts(image, None).await?;
    let mut reader = got.reader;
    let mut upload = to
        .put_opts(
            image,
            PutOptions::mode(PutMode::Create).with_size_hint(Some(size_hint)),
        )
        .await?;
    let mut hasher = Sha256::new();
    let mut sent = 0u64;
    let moved: Result<()> = async {
        loop {
            let chunk = read_chunk(&mut reader, image).await?;
            if chunk.is_empty() {
                return Ok(());
            }
            hasher.update(&chunk);
            sent += chunk.len() as u64;
            upload.write(chunk).await?;
        }
    }
    .await;
    match moved {
        Ok(()) => {
            upload.complete().await?;
            Ok((sent, hex::encode(hasher.finalize())))
        }
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}

/// Up to [`CHUNK`] bytes (fewer only at the end; empty at the end).
async fn read_chunk(reader: &mut backup_storage::ByteReader, image: &str) -> Result<Bytes> {
    let mut buf = BytesMut::with_capacity(CHUNK);
    while buf.len() < CHUNK {
        let n = reader.read_buf(&mut buf).await.map_err(|e| {
            Error::Storage(backup_storage::Error::from_io(
                format!("reading {image}"),
                e,
            ))
        })?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// The size and hex SHA-256 of an object, read whole in bounded chunks.
async fn digest(storage: &Arc<dyn Storage>, name: &str) -> Result<(u64, String)> {
    let got = storage.get_opts(name, None).await?;
    let mut reader = got.reader;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = read_chunk(&mut reader, name).await?;
        if chunk.is_empty() {
            return Ok((size, hex::encode(hasher.finalize())));
        }
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_back_is_accepted_only_when_size_and_checksum_match() {
        let sent = (3, "aa".to_string());
        assert!(compare(&sent, &(3, "aa".into())).is_ok());
        let short = compare(&sent, &(2, "aa".into())).unwrap_err();
        assert!(short.contains("3 bytes sent, 2 read back"), "{short}");
        let changed = compare(&sent, &(3, "bb".into())).unwrap_err();
        assert!(
            changed.contains("SHA-256 aa sent, bb read back"),
            "{changed}"
        );
    }

    #[test]
    fn copy_tables_are_checked() {
        let base = "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = \"/tmp/s\"\n[storage]\nurl = \"file:///srv/a\"\n";
        let parse = |extra: &str| {
            crate::Config::parse(&format!("{base}{extra}"), std::path::Path::new("t.toml"))
        };
        let ok = parse("[[copy]]\nurl = \"file:///srv/b\"\nname = \"offsite\"\n[copy.retention]\nkeep_last = 2\n").unwrap();
        assert_eq!(ok.copies.len(), 1);
        assert_eq!(ok.copies[0].retention.keep_last, Some(2));
        for (extra, says) in [
            (
                "[[copy]]\nurl = \"file:///srv/a\"\n",
                "is the [storage] url itself",
            ),
            ("[[copy]]\nurl = \"none\"\n", "must name a storage"),
            (
                "[[copy]]\nurl = \"file:///srv/b\"\n[[copy]]\nurl = \"file:///srv/b\"\n",
                "defined twice",
            ),
            (
                "[[copy]]\nurl = \"file:///srv/b\"\nprefix = \"x\"\n",
                "prefix",
            ),
        ] {
            let e = parse(extra).unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
        let storeless = base.replace("url = \"file:///srv/a\"", "url = \"none\"");
        let e = crate::Config::parse(
            &format!("{storeless}[[copy]]\nurl = \"file:///srv/b\"\n"),
            std::path::Path::new("t.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("needs a [storage] url"), "{e}");
    }
}
