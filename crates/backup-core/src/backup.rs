//! A backup, followed forward: the plan (computed once), the run around it
//! (lock, status, hooks, preflight, audit, retention) and the pipeline that
//! writes the image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use backup_crypto::{EncryptWriter, Keyslot, MasterKey};
use backup_storage::{PutMode, Storage, StorageExt};
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};

use serde::Serialize;

use crate::component::{Applicability, SnapshotError};
use crate::context::{Context, Trigger};
use crate::destination::{local_destination, write_sealed};
use crate::destination::{Destination, StreamSink};
use crate::guard::{Operation, RunGuard};
use crate::image::frame_cache;
use crate::image::writer::{Encoder, TarWriter};
use crate::image::{
    image_name, sidecar_name, BackupInfo, ComponentRecord, Manifest, Outcome, PlannedComponent,
    Sidecar, BACKUP_JSON, MANIFEST_JSON, PAYLOAD_FORMAT,
};
use crate::ops::status::{RunRecord, StatusFile, StatusStore};
use crate::plan::{plan, CreateOptions, Plan};
use crate::progress::{Event, Progress};
use crate::{Error, Result};

/// Takes a backup: under the lock, with status, audit log, hooks, a
/// capacity preflight, a log file, and retention after success. Fails with
/// [`Error::Busy`] (recorded as skipped) if another operation runs.
pub(crate) async fn create(engine: &Context<'_>, opts: &CreateOptions) -> Result<CreateReport> {
    let op = if opts.scheduled || engine.trigger == Trigger::Scheduled {
        Operation::ScheduledBackup
    } else {
        Operation::Backup
    };
    let mut guard = RunGuard::start(engine, op, "-")?;
    let took_over = guard.took_over();
    // A selection that cannot be backed up (an unknown component, a
    // missing requirement) is refused before the run starts: recorded,
    // but no hook runs for it.
    let plan = match plan(engine, opts) {
        Ok(plan) => plan,
        Err(e) => return Err(backup_failed(&mut guard, None, e, false)),
    };
    let (created, (storage, name)) = match unique_destination(engine, opts).await {
        Ok(d) => d,
        Err(e) => return Err(backup_failed(&mut guard, None, e, true)),
    };
    guard.show_running(Some(&name), created)?;
    let (store, status) = guard.lend_status();
    let run = Arc::new(RunProgress::new(
        engine.progress.clone(),
        store,
        status,
        engine.log_path(&name),
    ));
    if let Some(note) = took_over {
        run.line(format!("warning: {note}"));
    }

    let result = async {
        check_scratch(engine, &plan)?;
        guard.before_hook(&name)?;
        if opts.destination.stores() {
            preflight(engine, &storage, &plan).await?;
        }
        write_image(
            engine,
            opts,
            plan,
            run.clone(),
            (storage.clone(), name.clone()),
            created,
        )
        .await
    }
    .await;

    guard.give_back_status(run.finish());
    match result {
        Ok(mut report) => {
            let failed = report.manifest.failed_components();
            let record = RunRecord {
                time: Utc::now(),
                operation: "backup".into(),
                outcome: report.outcome,
                image: Some(report.image.clone()),
                size: report.size,
                reason: (!failed.is_empty())
                    .then(|| format!("components failed: {}", failed.join(", "))),
            };
            guard.record_end(Some(record), true)?;
            guard.audit(
                &report.image,
                report.outcome.as_str(),
                report.size,
                record_error(&report),
            );
            guard.after_hook(report.outcome, &name, failed);
            if opts.destination.stores() && engine.config.retention.is_enabled() {
                match crate::retention::apply_retention(engine, false).await {
                    Ok(decisions) => {
                        report.pruned = decisions
                            .into_iter()
                            .filter(|d| !d.keep)
                            .map(|d| d.name)
                            .collect()
                    }
                    Err(e) => engine.warn(format!("retention could not run: {e}")),
                }
            }
            // Second copies come last: whatever happens to them, the backup
            // stands as recorded above.
            if opts.destination.stores() {
                report.copies = crate::copy::after_backup(engine, &report.image).await;
            }
            Ok(report)
        }
        Err(e) => Err(backup_failed(&mut guard, Some(&name), e, true)),
    }
}

/// A creation time whose image name is free: names carry the second, so
/// a second backup within the same second waits for the next one. Called
/// under the lock, so no other backup of this appliance races for it.
async fn unique_destination(
    engine: &Context<'_>,
    opts: &CreateOptions,
) -> Result<(DateTime<Utc>, (Arc<dyn backup_storage::Storage>, String))> {
    loop {
        let created = Utc::now().trunc_subsecs(0);
        let (storage, name) = destination(engine, opts, created)?;
        if !opts.destination.stores() || !storage.exists(&name).await? {
            return Ok((created, (storage, name)));
        }
        let to_next = 1000 - Utc::now().timestamp_subsec_millis().min(999);
        tokio::time::sleep(std::time::Duration::from_millis(u64::from(to_next) + 5)).await;
    }
}

/// The object the write probe of a backup's preflight writes and deletes.
/// One fixed name, reused by every backup: on a store that keeps what it is
/// given (S3 Object Lock, versioning) the probes leave at most this one
/// object (and its versions) behind, never one per backup.
pub const PROBE_OBJECT: &str = ".backup-probe";

/// Refuses a backup before any component is read when the storage is not
/// reachable, not writable (unless `[storage] probe = false`), or reports
/// less free space than the estimate.
async fn preflight(engine: &Context<'_>, storage: &Arc<dyn Storage>, plan: &Plan) -> Result<()> {
    if engine.config.storage.probe {
        storage
            .put_bytes(
                PROBE_OBJECT,
                bytes::Bytes::from_static(b"probe"),
                PutMode::Overwrite,
            )
            .await
            .map_err(|e| Error::Preflight(format!("the storage {storage} is not writable: {e}")))?;
        let _ = storage.delete(PROBE_OBJECT).await;
    }
    let estimate = plan.estimate();
    if let Ok(cap) = storage.capacity().await {
        if let Some(free) = cap.free {
            if estimate > free {
                return Err(Error::Preflight(format!(
                    "the selected components hold about {estimate} bytes and {storage} has {free} bytes free; free space or prune old images (backup prune)"
                )));
            }
        }
    }
    Ok(())
}

/// Refuses a backup before any component is read when the scratch space
/// (`state_dir/tmp`) has less room than the largest snapshot a component
/// spools there (components take turns, each removing its own).
fn check_scratch(engine: &Context<'_>, plan: &Plan) -> Result<()> {
    let Some((component, needed)) = plan
        .items
        .iter()
        .filter_map(|i| Some((i.component.name(), i.component.scratch_estimate()?)))
        .max_by_key(|(_, n)| *n)
    else {
        return Ok(());
    };
    let scratch = engine.config.appliance.state_dir.join("tmp");
    let existing = scratch
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing).map_err(|e| {
        Error::io(
            format!("reading the free space of {}", existing.display()),
            e.into(),
        )
    })?;
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    if needed > free {
        return Err(Error::Preflight(format!(
            "component {component} needs about {needed} bytes of scratch space for its snapshot and {} has {free} bytes free; free space there, or set [appliance] state_dir on a larger file system",
            scratch.display()
        )));
    }
    Ok(())
}

fn scratch_dir(engine: &Context<'_>) -> Result<PathBuf> {
    let state = &engine.config.appliance.state_dir;
    crate::util::run_scratch_dir(state).map_err(|e| {
        Error::io(
            format!("creating scratch space in {}", state.join("tmp").display()),
            e,
        )
    })
}

/// Where a backup goes: a local file, a stream, or a new name in the storage.
fn destination(
    engine: &Context<'_>,
    opts: &CreateOptions,
    created: DateTime<Utc>,
) -> Result<(Arc<dyn Storage>, String)> {
    let a = &engine.config.appliance;
    let name = || image_name(&engine.config.storage.prefix, created, &a.node, a.role);
    match &opts.destination {
        Destination::File(path) => local_destination(path, engine.file_group),
        Destination::Stream(stream) if !stream.store => {
            let sink = StreamSink {
                stream: stream.clone(),
            };
            Ok((Arc::new(sink), name()))
        }
        Destination::Storage | Destination::Stream(_) => {
            let storage = engine.storage.clone().ok_or_else(|| {
                Error::NoStorage("pass --output FILE or set [storage] url".into())
            })?;
            Ok((storage, name()))
        }
    }
}

/// The backup pipeline itself, without lock, status or audit (see [`create`]):
/// each planned component's snapshot into one sealed image, then its sidecar.
async fn write_image(
    engine: &Context<'_>,
    opts: &CreateOptions,
    plan: Plan,
    progress: Arc<dyn Progress>,
    (storage, name): (Arc<dyn Storage>, String),
    created: DateTime<Utc>,
) -> Result<CreateReport> {
    let Plan {
        selection,
        items,
        not_applicable,
        not_applicable_reasons,
    } = plan;
    for n in &not_applicable {
        progress.event(&Event::Warning {
            component: None,
            message: format!("not applicable, skipped: {n}"),
        });
    }
    let (mk, slot) = engine.keys.for_writing()?;
    let a = &engine.config.appliance;
    let info = BackupInfo {
        format: PAYLOAD_FORMAT,
        product: a.product.clone(),
        product_version: a.version.clone(),
        node: a.node.clone(),
        role: a.role,
        cluster: a.cluster.clone(),
        created,
        selection,
        not_applicable: not_applicable_reasons,
        components: items
            .iter()
            .map(|i| PlannedComponent {
                name: i.component.name().to_string(),
                kind: i.component.kind().to_string(),
                roots: i
                    .component
                    .roots()
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            })
            .collect(),
        compression: engine.config.image.compression,
        engine_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let scratch = scratch_dir(engine)?;
    let producer_info = info.clone();
    let (compression, level, threads) = (
        engine.config.image.compression,
        engine.config.image.effective_level(),
        engine.config.image.effective_threads(),
    );
    let frame_cache = open_frame_cache(engine, opts, &*progress);
    let producer_progress = progress.clone();
    let halt = opts.halt;
    let scratch_for_producer = scratch.clone();
    progress.event(&Event::Step {
        message: format!("writing {name} to {storage}"),
    });
    let copy = match &opts.destination {
        Destination::Stream(stream) if stream.store => Some(stream),
        _ => None,
    };
    let result = write_sealed(
        storage.clone(),
        name.clone(),
        copy,
        mk.clone(),
        slot.clone(),
        created,
        move |out| {
            let progress = producer_progress;
            let io_err = |e| Error::from_pipeline_io("writing the image", e);
            let encoder =
                Encoder::with_threads(out, compression, level, threads).map_err(io_err)?;
            let mut tar = TarWriter::new(encoder, progress.clone());
            if let Some(cache) = &frame_cache {
                tar.use_frame_cache(cache.clone());
            }
            tar.json(BACKUP_JSON, &producer_info).map_err(io_err)?;
            let mut records = Vec::new();
            for (item, planned) in items.iter().zip(&producer_info.components) {
                let c = &item.component;
                let name = c.name().to_string();
                progress.event(&Event::ComponentStarted {
                    component: name.clone(),
                    kind: c.kind().to_string(),
                });
                let begun = tar.begin_component(&name, &planned.roots);
                if begun.is_ok() {
                    tar.leave_out(&item.left_out);
                }
                let result = match (&item.applicability, begun) {
                    (_, Err(reason)) => Err(SnapshotError::Failed(reason)),
                    (Applicability::NotApplicable(why), _) => Err(SnapshotError::Failed(format!(
                        "not applicable on this node: {why}"
                    ))),
                    (Applicability::Applicable, Ok(())) => {
                        c.snapshot(&mut tar, &scratch_for_producer)
                    }
                };
                let (digest, warnings) = tar.end_component();
                let error = match result {
                    Ok(()) => None,
                    Err(SnapshotError::Output(e)) => return Err(io_err(e)),
                    Err(SnapshotError::Failed(reason)) if halt => {
                        return Err(Error::Halted {
                            component: name,
                            reason,
                        });
                    }
                    Err(SnapshotError::Failed(reason)) => Some(reason),
                };
                let outcome = if error.is_some() {
                    Outcome::Failed
                } else {
                    Outcome::Success
                };
                progress.event(&Event::ComponentFinished {
                    component: name.clone(),
                    outcome,
                    entries: digest.entries(),
                    bytes: digest.bytes(),
                    error: error.clone(),
                });
                records.push(ComponentRecord {
                    name,
                    kind: c.kind().to_string(),
                    outcome,
                    entries: digest.entries(),
                    bytes: digest.bytes(),
                    sha256: digest.hex(),
                    error,
                    warnings,
                });
            }
            if records.iter().all(|r| r.outcome != Outcome::Success) {
                let why = records
                    .iter()
                    .map(|r| format!("{}: {}", r.name, r.error.as_deref().unwrap_or("?")))
                    .collect();
                return Err(Error::AllComponentsFailed(join(why)));
            }
            let outcome = if records.iter().all(|r| r.outcome == Outcome::Success) {
                Outcome::Success
            } else {
                Outcome::Partial
            };
            let manifest = Manifest {
                outcome,
                components: records,
            };
            tar.json(MANIFEST_JSON, &manifest).map_err(io_err)?;
            tar.finish().and_then(|e| e.finish()).map_err(io_err)?;
            if let Some(cache) = frame_cache {
                commit_frame_cache(cache, &*progress);
            }
            Ok(manifest)
        },
    )
    .await;
    let _ = crate::util::remove_any(&scratch);
    let (manifest, size) = result?;

    let sidecar = Sidecar {
        image: name.clone(),
        image_size: size,
        info: info.clone(),
        manifest: manifest.clone(),
    };
    let sidecar_error = if !opts.destination.stores() {
        None
    } else {
        store_sidecar(&storage, &sidecar, &mk, &slot)
            .await
            .err()
            .map(|e| e.to_string())
    };
    if let Some(e) = &sidecar_error {
        progress.event(&Event::Warning {
            component: None,
            message: format!(
                "the image is complete, but its sidecar manifest could not be stored: {e}"
            ),
        });
    }
    let image = match &opts.destination {
        Destination::File(p) => p.display().to_string(),
        Destination::Stream(s) if !s.store => "-".to_string(),
        Destination::Storage | Destination::Stream(_) => name,
    };
    Ok(CreateReport {
        image,
        location: storage.to_string(),
        outcome: manifest.outcome,
        size,
        info,
        manifest,
        not_applicable,
        sidecar_error,
        pruned: Vec::new(),
        copies: Vec::new(),
    })
}

/// The frame cache for this backup, or `None` when it is off or cannot
/// be opened (the backup then reads every file, as without it).
fn open_frame_cache(
    engine: &Context<'_>,
    opts: &CreateOptions,
    progress: &dyn Progress,
) -> Option<Arc<Mutex<frame_cache::Session>>> {
    let image = &engine.config.image;
    let settings = frame_cache::Settings {
        limit: image.frame_cache_mib.map(|m| m.saturating_mul(1 << 20)),
        full_read_every: image.effective_full_read_every(),
        read_all: opts.no_cache,
    };
    let state = &engine.config.appliance.state_dir;
    match frame_cache::Session::open(state, image.compression, image.effective_level(), settings) {
        Ok(session) => session.map(|s| Arc::new(Mutex::new(s))),
        Err(e) => {
            progress.event(&Event::Warning {
                component: None,
                message: format!(
                    "the frame cache in {} cannot be used ({e}); this backup reads every file — check that directory's permissions and free space",
                    state.join(frame_cache::DIR).display()
                ),
            });
            None
        }
    }
}

/// Keeps what this backup put in the frame cache, once its payload is
/// written in full, and says what the cache did.
fn commit_frame_cache(cache: Arc<Mutex<frame_cache::Session>>, progress: &dyn Progress) {
    let Some(session) = Arc::into_inner(cache).and_then(|m| m.into_inner().ok()) else {
        return;
    };
    let message = match session.commit() {
        Ok(stats) if stats.full_read => format!(
            "frame cache: every file read{}",
            damaged_note(stats.damaged)
        ),
        Ok(stats) => format!(
            "frame cache: {} unchanged files ({} bytes) copied from the cache{}",
            stats.reused_files,
            stats.reused_bytes,
            damaged_note(stats.damaged)
        ),
        Err(e) => format!(
            "frame cache: not updated ({e}); the next backup reads every file it cannot find there"
        ),
    };
    progress.event(&Event::Step { message });
}

fn damaged_note(damaged: u64) -> String {
    if damaged == 0 {
        String::new()
    } else {
        format!("; {damaged} damaged cache entries ignored (those files were read)")
    }
}

async fn store_sidecar(
    storage: &Arc<dyn Storage>,
    sidecar: &Sidecar,
    mk: &MasterKey,
    slot: &Keyslot,
) -> Result<()> {
    let json = serde_json::to_vec(sidecar).expect("sidecar serialises");
    let mut w = EncryptWriter::new(Vec::new(), mk, slot, sidecar.info.created.timestamp())?;
    w.write_all(&json)
        .map_err(|e| Error::from_pipeline_io("sealing the sidecar", e))?;
    let sealed = w.finish()?;
    storage
        .put_bytes(
            &sidecar_name(&sidecar.image),
            Bytes::from(sealed),
            PutMode::Overwrite,
        )
        .await?;
    Ok(())
}

/// Records a backup that failed or was refused (status, audit log) and runs
/// the `on_failure` hook if the run had started (`run_hooks`); returns the
/// error.
fn backup_failed(
    guard: &mut RunGuard<'_>,
    image: Option<&str>,
    e: Error,
    run_hooks: bool,
) -> Error {
    let record = guard.failure_record(None, &e);
    let _ = guard.record_end(Some(record), false);
    guard.audit(
        image.unwrap_or("-"),
        e.kind().audit_outcome(),
        0,
        Some(e.to_string()),
    );
    if run_hooks {
        guard.on_failure_hook(image.unwrap_or_default());
    }
    e
}

/// The components a published backup lacks, for messages (`None` if none).
pub(crate) fn failed_components(report: &CreateReport) -> Option<String> {
    let failed = report.manifest.failed_components();
    (!failed.is_empty()).then(|| format!("components failed: {}", failed.join(", ")))
}

fn record_error(report: &CreateReport) -> Option<String> {
    let failed: Vec<String> = report
        .manifest
        .components
        .iter()
        .filter_map(|c| c.error.as_ref().map(|e| format!("{}: {e}", c.name)))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

/// Passes events on, keeps the status file's progress current (at most once
/// a second) and writes the backup's log file.
struct RunProgress {
    inner: Arc<dyn Progress>,
    store: StatusStore,
    state: Mutex<(StatusFile, Instant)>,
    log: Mutex<Option<std::io::BufWriter<std::fs::File>>>,
}

impl RunProgress {
    fn new(
        inner: Arc<dyn Progress>,
        store: StatusStore,
        status: StatusFile,
        log_path: PathBuf,
    ) -> RunProgress {
        let log = log_path
            .parent()
            .and_then(|d| crate::util::create_private_dir(d).ok())
            .and_then(|()| {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(&log_path)
                    .ok()
            });
        RunProgress {
            inner,
            store,
            state: Mutex::new((status, Instant::now())),
            log: Mutex::new(log.map(std::io::BufWriter::new)),
        }
    }

    fn line(&self, text: String) {
        if let Some(w) = self.log.lock().expect("log").as_mut() {
            let _ = writeln!(w, "{} {text}", Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ"));
            // Each line reaches the file at once: a crashed or killed run's
            // log still shows how far it got.
            let _ = w.flush();
        }
    }

    /// Flushes the log and hands back the status for the final write.
    fn finish(&self) -> StatusFile {
        if let Some(mut w) = self.log.lock().expect("log").take() {
            let _ = w.flush();
        }
        self.state.lock().expect("status").0.clone()
    }
}

impl Progress for RunProgress {
    fn event(&self, event: &Event) {
        self.inner.event(event);
        match event {
            Event::Step { message } => self.line(message.clone()),
            Event::ComponentStarted { component, kind } => {
                self.line(format!("{component} ({kind}): started"))
            }
            Event::ComponentFinished {
                component,
                outcome,
                entries,
                bytes,
                error,
            } => self.line(match error {
                Some(e) => format!("{component}: {outcome}: {e}"),
                None => format!("{component}: {outcome}, {entries} entries, {bytes} bytes"),
            }),
            Event::Warning { component, message } => self.line(format!(
                "warning: {}{message}",
                component
                    .as_ref()
                    .map(|c| format!("{c}: "))
                    .unwrap_or_default()
            )),
            _ => {}
        }
        let mut state = self.state.lock().expect("status");
        let (status, last) = &mut *state;
        if let Some(current) = status.current.as_mut() {
            match event {
                Event::ComponentStarted { component, .. } => {
                    current.component = Some(component.clone())
                }
                Event::Bytes { bytes, .. } => current.bytes_done += bytes,
                _ => {}
            }
        }
        if last.elapsed().as_secs() >= 1 || matches!(event, Event::ComponentStarted { .. }) {
            let _ = self.store.store(status);
            *last = Instant::now();
        }
    }
}
fn join(items: Vec<String>) -> String {
    items.join("; ")
}

/// The result of a backup that published an image.
#[derive(Debug, Clone, Serialize)]
pub struct CreateReport {
    /// Image name (or file path with `output`).
    pub image: String,
    /// Where it was published.
    pub location: String,
    /// `success` or `partial`.
    pub outcome: Outcome,
    /// Image size in bytes.
    pub size: u64,
    /// `backup.json`.
    pub info: BackupInfo,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// Components that were not applicable and left out of a standard backup.
    pub not_applicable: Vec<String>,
    /// Set if the sidecar manifest could not be stored (the image is fine).
    pub sidecar_error: Option<String>,
    /// Images deleted by the retention policy after this backup.
    pub pruned: Vec<String>,
    /// The image's second copies (`[[copy]]`), one per destination; a
    /// failed copy does not change the backup's outcome.
    pub copies: Vec<crate::ops::status::CopyRecord>,
}
