//! The engine: plans and runs backups, verifies and restores images.
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backup_storage::Storage;
use chrono::{DateTime, Utc};

use crate::backup::CreateReport;
use crate::browse::{Browse, DownloadLink, LinkSigner};
use crate::cluster::{BundleSummary, ClusterManifest, ExtractReport};
use crate::component::{
    CommandComponent, Component, ComponentOptions, FilesComponent, Registered, SqliteComponent,
};
use crate::config::{ComponentKind, Config};
use crate::context::{Call, Context, Shared};
use crate::copy::{CopyConfig, CopyDestination, CopyRecord};
use crate::daemon::ScheduledRun;
use crate::drill::{DrillOptions, DrillReport};
use crate::guard::Operation;
use crate::images::{ImageDetails, ImageRef, ImageSummary};
use crate::keys::rewrap::RewrapResult;
use crate::keys::{KeyFile, KeySource, Keys, NoPassphrase, PassphraseProvider, Rotation};
use crate::ops::audit::AuditRecord;
use crate::ops::retention::RetentionDecision;
use crate::ops::status::RunRecord;
use crate::plan::CreateOptions;
use crate::progress::{NoProgress, Progress};
use crate::restore::{RestoreOptions, RestorePlan, RestoreReport};
use crate::runs::StatusView;
use crate::verify::VerifyReport;
use crate::{Error, Result};
use backup_crypto::{KeyId, Passphrase};

/// Builds an [`Engine`] from a [`Config`].
pub struct EngineBuilder {
    config: Config,
    storage: Option<Arc<dyn Storage>>,
    passphrase: Arc<dyn PassphraseProvider>,
    key_source: Option<Box<dyn KeySource>>,
    progress: Arc<dyn Progress>,
    extra: Vec<Registered>,
    actor: Option<String>,
}

impl EngineBuilder {
    /// Uses this storage instead of the one `[storage] url` names.
    pub fn storage(mut self, storage: Arc<dyn Storage>) -> Self {
        self.storage = Some(storage);
        self
    }

    /// Where passphrases come from (default: none — key file only).
    pub fn passphrase_provider(mut self, p: Arc<dyn PassphraseProvider>) -> Self {
        self.passphrase = p;
        self
    }

    /// Where the master key comes from (default: the key file in the state directory).
    pub fn key_source(mut self, source: Box<dyn KeySource>) -> Self {
        self.key_source = Some(source);
        self
    }

    /// Receives progress events (default: ignored).
    pub fn progress(mut self, p: Arc<dyn Progress>) -> Self {
        self.progress = p;
        self
    }

    /// Who the audit log names as the actor (default: the OS user).
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Registers a component of the embedder's own, after those of the config.
    pub fn component(mut self, component: Arc<dyn Component>, options: ComponentOptions) -> Self {
        self.extra.push(Registered { component, options });
        self
    }

    /// Builds the configured components. The storage `[storage] url` names
    /// (unless one is given) is opened when an operation first uses it, so
    /// commands that do not need it work while it is unreachable.
    pub fn build(self) -> Result<Engine> {
        let config = self.config;
        let file_group = match &config.storage.group {
            Some(g) => Some(crate::util::group_id(g).map_err(|reason| Error::Config {
                path: PathBuf::from("(config)"),
                reason: format!("[storage] group: {reason}"),
            })?),
            None => None,
        };
        let storage = match self.storage {
            Some(s) => Some(s),
            None if config.has_storage() => {
                let mut opts = backup_storage::OpenOptions::default();
                opts.mount = config.storage.mount.clone();
                opts.group = file_group;
                opts.ssh_key = config.storage.ssh_key.clone();
                opts.host_key_sha256 = config.storage.host_key_sha256.clone();
                Some(Arc::new(crate::lazy_storage::LazyStorage::new(
                    config.storage.url.trim(),
                    opts,
                )) as Arc<dyn Storage>)
            }
            None => None,
        };
        let mut components = Vec::new();
        for c in &config.components {
            let when = c.applicable_if_exists.clone();
            let component: Arc<dyn Component> = match &c.kind {
                ComponentKind::Files { paths, exclude } => Arc::new(
                    FilesComponent::new(&c.name, paths.clone(), exclude, when).map_err(
                        |reason| Error::Config {
                            path: PathBuf::from("(config)"),
                            reason: format!("component {}: {reason}", c.name),
                        },
                    )?,
                ),
                ComponentKind::Sqlite { path } => {
                    Arc::new(SqliteComponent::new(&c.name, path.clone(), when))
                }
                ComponentKind::Command { backup, restore } => Arc::new(CommandComponent::new(
                    &c.name,
                    backup.clone(),
                    restore.clone(),
                    when,
                )),
            };
            let options = ComponentOptions {
                default: c.default,
                requires: c.requires.clone(),
                audit: c.is_audit(),
                after_restore: c.after_restore.clone(),
                drill_check: c.drill_check.clone(),
            };
            components.push(Registered { component, options });
        }
        for r in self.extra {
            if components
                .iter()
                .any(|c| c.component.name() == r.component.name())
            {
                return Err(Error::Input(format!(
                    "component {} is registered twice",
                    r.component.name()
                )));
            }
            components.push(r);
        }
        let own = crate::own_paths::OwnPaths::of(&config);
        for r in &components {
            for root in r.component.roots() {
                if let Some(place) = own.holding(&root) {
                    return Err(Error::Config {
                        path: PathBuf::from("(config)"),
                        reason: format!(
                            "component {}: its root {} is inside {}, {}; no image holds the engine's own places (that would be a backup of the backups) — give the component the paths beside it, or move the state directory or the store out of the appliance's trees",
                            r.component.name(),
                            root.display(),
                            place.path.display(),
                            place.what
                        ),
                    });
                }
            }
        }
        let source = self
            .key_source
            .unwrap_or_else(|| Box::new(KeyFile::in_state_dir(&config.appliance.state_dir)));
        let keys = Arc::new(Keys::new(
            config.appliance.state_dir.clone(),
            source,
            self.passphrase,
        ));
        let actor = self.actor.unwrap_or_else(crate::ops::audit::current_actor);
        Ok(Engine {
            config,
            storage,
            file_group,
            components,
            actor,
            keys,
            progress: self.progress,
        })
    }
}

/// The backup engine of one appliance.
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// The group image files are given (`[storage] group`), as an id.
    pub(crate) file_group: Option<u32>,
    pub(crate) components: Vec<Registered>,
    /// The actor of a call that names none.
    pub(crate) actor: String,
    pub(crate) keys: Arc<Keys>,
    /// The progress sink of a call that sets none.
    pub(crate) progress: Arc<dyn Progress>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.config.appliance.node)
            .field("storage", &self.storage.as_ref().map(|s| s.to_string()))
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Starts building an engine for `config`.
    pub fn builder(config: Config) -> EngineBuilder {
        EngineBuilder {
            config,
            storage: None,
            passphrase: Arc::new(NoPassphrase),
            key_source: None,
            progress: Arc::new(NoProgress),
            extra: Vec::new(),
            actor: None,
        }
    }

    /// Takes a backup: under the lock, with status, audit log, hooks, a
    /// capacity preflight, a log file, and retention after success. Fails with
    /// [`Error::Busy`] (recorded as skipped) if another operation runs.
    pub async fn create(&self, opts: &CreateOptions) -> Result<CreateReport> {
        crate::backup::create(&self.context(&Call::default()), opts).await
    }

    /// What a retention run would delete (`dry_run`) or deletes, under the lock.
    pub async fn prune(&self, dry_run: bool) -> Result<Vec<RetentionDecision>> {
        crate::retention::prune(&self.context(&Call::default()), dry_run).await
    }

    /// Verifies an image (audited).
    pub async fn verify(&self, image: impl Into<ImageRef>) -> Result<VerifyReport> {
        crate::verify::verify(&self.context(&Call::default()), &image.into()).await
    }

    /// Copies a stored image and its sidecar to `to`, or to every `[[copy]]`
    /// destination (then with each one's retention), under the lock: streamed
    /// from the storage, read back and checked. One record per destination;
    /// a destination that fails is a record, not an error.
    pub async fn copy(&self, image: &str, to: Option<&CopyConfig>) -> Result<Vec<CopyRecord>> {
        crate::copy::copy(&self.context(&Call::default()), image, to).await
    }

    /// [`Engine::copy`] to destinations of the embedder's own.
    pub async fn copy_to(
        &self,
        image: &str,
        destinations: &[CopyDestination],
    ) -> Result<Vec<CopyRecord>> {
        crate::copy::copy_to(&self.context(&Call::default()), image, destinations).await
    }

    /// Writes an image's decrypted payload to `out` (audited).
    pub async fn decrypt(&self, image: impl Into<ImageRef>, out: &Path) -> Result<u64> {
        crate::transfer::decrypt(&self.context(&Call::default()), &image.into(), out).await
    }

    /// Seals a payload file into an image (audited), after reading it as
    /// restore would: a payload restore would refuse is not sealed.
    pub async fn encrypt(&self, input: &Path, out: &Path) -> Result<u64> {
        crate::transfer::encrypt(&self.context(&Call::default()), input, out, false).await
    }

    /// Seals an edited payload into an image (audited as `encrypt`),
    /// recording the payload's current content in its manifest: the image
    /// then vouches for the edit. Everything else restore checks is checked.
    pub async fn encrypt_rehash(&self, input: &Path, out: &Path) -> Result<u64> {
        crate::transfer::encrypt(&self.context(&Call::default()), input, out, true).await
    }

    /// Downloads an image to a local file (atomically), for carrying it to a
    /// replacement machine. Audited.
    pub async fn fetch(&self, image: impl Into<ImageRef>, out: &Path) -> Result<u64> {
        crate::transfer::fetch(&self.context(&Call::default()), &image.into(), out).await
    }

    /// One level of the storage (or, for an image name, its details).
    pub async fn browse(&self, path: &str) -> Result<Browse> {
        crate::browse::browse(&self.context(&Call::default()), path).await
    }

    /// Presigned GET links for images (all images when `images` is empty).
    /// Backends that cannot presign fail with a clear "unsupported" error.
    /// Audited (the URLs themselves are never logged).
    pub async fn links(&self, images: &[String], expires: Duration) -> Result<Vec<DownloadLink>> {
        crate::browse::links(&self.context(&Call::default()), images, expires, None).await
    }

    /// Download links as [`Engine::links`] gives them, with `signer`'s for
    /// a storage that cannot presign. Audited.
    pub async fn links_signed(
        &self,
        images: &[String],
        expires: Duration,
        signer: &dyn LinkSigner,
    ) -> Result<Vec<DownloadLink>> {
        crate::browse::links(
            &self.context(&Call::default()),
            images,
            expires,
            Some(signer),
        )
        .await
    }

    /// Restores an image under the operation lock (audited, in the status).
    pub async fn restore(
        &self,
        image: impl Into<ImageRef>,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        crate::restore::run(&self.context(&Call::default()), &image.into(), opts).await
    }

    /// Runs a restore drill: restores an image (the newest successful one
    /// of this node unless `opts` names one) into scratch space through the
    /// real restore path, checks the restored files, removes them and
    /// records the result (status, audit log, `on_failure` hook). A drill
    /// that fails is a report with outcome `failed`, not an error; errors
    /// are for a drill that could not start ([`Error::Busy`] when another
    /// operation runs, recorded as skipped).
    pub async fn drill(&self, opts: &DrillOptions) -> Result<DrillReport> {
        crate::drill::run(&self.context(&Call::default()), opts).await
    }

    /// What restoring `image` with `opts` would replace, add, remove and
    /// keep, writing nothing but the audit record (`restore.dry-run`).
    pub async fn restore_plan(
        &self,
        image: impl Into<ImageRef>,
        opts: &RestoreOptions,
    ) -> Result<RestorePlan> {
        crate::restore::dry_run(&self.context(&Call::default()), &image.into(), opts).await
    }

    /// Replaces the keyslot in the headers of images (and their sidecars)
    /// with the keyring's keyslot of the same master key under the current
    /// secret — the current key's, or an earlier key's kept since a rotation —
    /// in place, where the storage can rewrite objects (local and NFS); says
    /// which it could not. An image keeps its master key: only who can
    /// unwrap it from the header changes.
    pub async fn rewrap(&self, images: &[ImageRef]) -> Result<Vec<(String, RewrapResult)>> {
        crate::keys::rewrap::rewrap(&self.context(&Call::default()), images).await
    }

    /// Runs scheduled backups until `shutdown` turns true. A stop request
    /// between runs ends at once; during a run, the running backup finishes
    /// first (it is never left half-published). Runs missed while no daemon
    /// was running are reported (warning, audit log), not replayed.
    pub async fn run_daemon(&self, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        crate::daemon::run(&self.context(&Call::default()), shutdown, None).await
    }

    /// [`Engine::run_daemon`] whose scheduled runs are `job` when the
    /// schedule says `cluster = true` (a cluster backup), else this node's
    /// backup.
    pub async fn run_daemon_with(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
        job: &dyn ScheduledRun,
    ) -> Result<()> {
        crate::daemon::run(&self.context(&Call::default()), shutdown, Some((job, self))).await
    }

    /// Audits an operation a frontend carried out itself (key check/rotate).
    pub fn audit_public<T>(
        &self,
        operation: Operation,
        target: &str,
        result: &Result<T>,
        started: std::time::Instant,
    ) {
        crate::runs::audit_public(
            &self.context(&Call::default()),
            operation,
            target,
            result,
            started,
        )
    }

    /// Runs an operation carried out outside the engine (a cluster backup:
    /// `Operation::ClusterCreate`) on `target` under the engine's run guard:
    /// it runs alone (else [`crate::Error::Busy`], the skip recorded), the
    /// status shows it while it runs, and the [`RunRecord`] `fut` ends with
    /// (outcome, object, size, reason) goes into the status and the audit log.
    pub async fn guarded<T, F>(&self, op: Operation, target: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<(T, RunRecord)>>,
    {
        self.context(&Call::default())
            .guarded(op, target, fut)
            .await
    }

    /// Appends a record a frontend made itself (a request to the HTTP
    /// service, a change of its users) to the audit log, with fsync.
    pub fn append_audit(&self, record: &AuditRecord) -> Result<()> {
        self.context(&Call::default()).audit_log().append(record)
    }

    /// The log lines kept for a backup.
    pub fn backup_log(&self, image: &str) -> Result<String> {
        crate::runs::backup_log(&self.context(&Call::default()), image)
    }

    /// The status as an operator sees it.
    pub fn status(&self) -> Result<StatusView> {
        crate::runs::status(&self.context(&Call::default()))
    }

    /// Audit records since `since`.
    pub fn audit_records(&self, since: Option<DateTime<Utc>>) -> Result<Vec<AuditRecord>> {
        crate::runs::audit_records(&self.context(&Call::default()), since)
    }

    /// Sets the domain master secret of a new appliance (audited as
    /// `key.init`); `passphrase` is asked only if the appliance has none yet.
    pub fn init_keys(&self, passphrase: impl FnOnce() -> Result<Passphrase>) -> Result<KeyId> {
        crate::keys::ops::init(&self.context(&Call::default()), passphrase)
    }

    /// Checks a secret against the keyring (audited as `key.check`).
    pub fn check_key(&self, current: impl FnOnce() -> Result<Passphrase>) -> Result<KeyId> {
        crate::keys::ops::check(&self.context(&Call::default()), current)
    }

    /// Replaces the domain master secret, keeping the previous master key in
    /// the keyring (audited as `key.rotate`, refused attempts included).
    pub fn rotate_key(
        &self,
        current: impl FnOnce() -> Result<Passphrase>,
        new: impl FnOnce() -> Result<Passphrase>,
    ) -> Result<Rotation> {
        crate::keys::ops::rotate(&self.context(&Call::default()), current, new)
    }

    /// Lists the images in the storage (newest last) with their sidecars.
    pub async fn list(&self) -> Result<Vec<ImageSummary>> {
        crate::images::list(&self.context(&Call::default())).await
    }

    /// Details of an image: from its sidecar when it has one, else by reading it.
    pub async fn show(&self, image: impl Into<ImageRef>) -> Result<ImageDetails> {
        crate::images::show(&self.context(&Call::default()), &image.into()).await
    }

    /// The cluster bundles in the storage (names with the prefix, ending in
    /// `.tar`), oldest first, each with its manifest or why it has none.
    pub async fn bundles(&self) -> Result<Vec<BundleSummary>> {
        crate::cluster::list(&self.context(&Call::default())).await
    }

    /// The manifest of a cluster bundle (stored, or a local file).
    pub async fn bundle_manifest(&self, bundle: impl Into<ImageRef>) -> Result<ClusterManifest> {
        crate::cluster::manifest(&self.context(&Call::default()), &bundle.into()).await
    }

    /// Writes the image of `node` out of a cluster bundle to `out`
    /// (atomically, mode 0600) with a ranged read, checked against the
    /// bundle's manifest (size and SHA-256). Audited.
    pub async fn extract_node(
        &self,
        bundle: impl Into<ImageRef>,
        node: &str,
        out: &Path,
    ) -> Result<ExtractReport> {
        crate::cluster::extract(&self.context(&Call::default()), &bundle.into(), node, out).await
    }

    /// The engine for one call: its operations run with the call's actor,
    /// progress sink and trigger (the engine's defaults where it sets none).
    /// Callers may hold many at once; runs that need the operation lock
    /// still go one at a time.
    pub fn with_call(&self, call: Call) -> EngineCall<'_> {
        EngineCall { engine: self, call }
    }

    /// The view of the engine an operation of `call` runs with.
    pub(crate) fn context(&self, call: &Call) -> Context<'_> {
        Context::new(
            Shared {
                config: &self.config,
                storage: &self.storage,
                file_group: self.file_group,
                components: &self.components,
                keys: &self.keys,
                actor: &self.actor,
                progress: &self.progress,
            },
            call,
        )
    }

    /// The actor of a call that names none (the OS user by default).
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The configured storage, if any.
    pub fn storage(&self) -> Option<&Arc<dyn Storage>> {
        self.storage.as_ref()
    }

    /// Names of the registered components, in order.
    pub fn component_names(&self) -> Vec<String> {
        self.components
            .iter()
            .map(|c| c.component.name().to_string())
            .collect()
    }
}

/// An [`Engine`] serving one [`Call`] (see [`Engine::with_call`]).
#[derive(Debug)]
pub struct EngineCall<'e> {
    engine: &'e Engine,
    call: Call,
}

impl EngineCall<'_> {
    fn context(&self) -> Context<'_> {
        self.engine.context(&self.call)
    }

    /// [`Engine::guarded`] with this call's actor and trigger.
    pub async fn guarded<T, F>(&self, op: Operation, target: &str, fut: F) -> Result<T>
    where
        F: std::future::Future<Output = Result<(T, RunRecord)>>,
    {
        self.context().guarded(op, target, fut).await
    }

    /// [`Error::Busy`] (recorded as skipped) if another operation runs.
    pub async fn create(&self, opts: &CreateOptions) -> Result<CreateReport> {
        crate::backup::create(&self.context(), opts).await
    }

    /// What a retention run would delete (`dry_run`) or deletes, under the lock.
    pub async fn prune(&self, dry_run: bool) -> Result<Vec<RetentionDecision>> {
        crate::retention::prune(&self.context(), dry_run).await
    }

    /// Verifies an image (audited).
    pub async fn verify(&self, image: impl Into<ImageRef>) -> Result<VerifyReport> {
        crate::verify::verify(&self.context(), &image.into()).await
    }

    /// Writes an image's decrypted payload to `out` (audited).
    pub async fn decrypt(&self, image: impl Into<ImageRef>, out: &Path) -> Result<u64> {
        crate::transfer::decrypt(&self.context(), &image.into(), out).await
    }

    /// restore would: a payload restore would refuse is not sealed.
    pub async fn encrypt(&self, input: &Path, out: &Path) -> Result<u64> {
        crate::transfer::encrypt(&self.context(), input, out, false).await
    }

    /// then vouches for the edit. Everything else restore checks is checked.
    pub async fn encrypt_rehash(&self, input: &Path, out: &Path) -> Result<u64> {
        crate::transfer::encrypt(&self.context(), input, out, true).await
    }

    /// replacement machine. Audited.
    pub async fn fetch(&self, image: impl Into<ImageRef>, out: &Path) -> Result<u64> {
        crate::transfer::fetch(&self.context(), &image.into(), out).await
    }

    /// One level of the storage (or, for an image name, its details).
    pub async fn browse(&self, path: &str) -> Result<Browse> {
        crate::browse::browse(&self.context(), path).await
    }

    /// Audited (the URLs themselves are never logged).
    pub async fn links(&self, images: &[String], expires: Duration) -> Result<Vec<DownloadLink>> {
        crate::browse::links(&self.context(), images, expires, None).await
    }

    /// Download links, with `signer`'s for a storage that cannot presign. Audited.
    pub async fn links_signed(
        &self,
        images: &[String],
        expires: Duration,
        signer: &dyn LinkSigner,
    ) -> Result<Vec<DownloadLink>> {
        crate::browse::links(&self.context(), images, expires, Some(signer)).await
    }

    /// Restores an image under the operation lock (audited, in the status).
    pub async fn restore(
        &self,
        image: impl Into<ImageRef>,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport> {
        crate::restore::run(&self.context(), &image.into(), opts).await
    }

    /// keep, writing nothing but the audit record (`restore.dry-run`).
    pub async fn restore_plan(
        &self,
        image: impl Into<ImageRef>,
        opts: &RestoreOptions,
    ) -> Result<RestorePlan> {
        crate::restore::dry_run(&self.context(), &image.into(), opts).await
    }

    /// [`Engine::drill`] with this call's actor, progress and trigger.
    pub async fn drill(&self, opts: &DrillOptions) -> Result<DrillReport> {
        crate::drill::run(&self.context(), opts).await
    }

    /// unwrap it from the header changes.
    pub async fn rewrap(&self, images: &[ImageRef]) -> Result<Vec<(String, RewrapResult)>> {
        crate::keys::rewrap::rewrap(&self.context(), images).await
    }

    /// was running are reported (warning, audit log), not replayed.
    pub async fn run_daemon(&self, shutdown: tokio::sync::watch::Receiver<bool>) -> Result<()> {
        crate::daemon::run(&self.context(), shutdown, None).await
    }

    /// Audits an operation a frontend carried out itself (key check/rotate).
    pub fn audit_public<T>(
        &self,
        operation: Operation,
        target: &str,
        result: &Result<T>,
        started: std::time::Instant,
    ) {
        crate::runs::audit_public(&self.context(), operation, target, result, started)
    }

    /// `key.init`); `passphrase` is asked only if the appliance has none yet.
    pub fn init_keys(&self, passphrase: impl FnOnce() -> Result<Passphrase>) -> Result<KeyId> {
        crate::keys::ops::init(&self.context(), passphrase)
    }

    /// Checks a secret against the keyring (audited as `key.check`).
    pub fn check_key(&self, current: impl FnOnce() -> Result<Passphrase>) -> Result<KeyId> {
        crate::keys::ops::check(&self.context(), current)
    }

    /// the keyring (audited as `key.rotate`, refused attempts included).
    pub fn rotate_key(
        &self,
        current: impl FnOnce() -> Result<Passphrase>,
        new: impl FnOnce() -> Result<Passphrase>,
    ) -> Result<Rotation> {
        crate::keys::ops::rotate(&self.context(), current, new)
    }

    /// Lists the images in the storage (newest last) with their sidecars.
    pub async fn list(&self) -> Result<Vec<ImageSummary>> {
        crate::images::list(&self.context()).await
    }

    /// Details of an image: from its sidecar when it has one, else by reading it.
    pub async fn show(&self, image: impl Into<ImageRef>) -> Result<ImageDetails> {
        crate::images::show(&self.context(), &image.into()).await
    }
}
