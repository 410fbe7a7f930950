//! The engine: plans and runs backups, verifies and restores images.
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use backup_crypto::{EncryptWriter, Header, ImageReader, Keyslot, MasterKey, HEADER_LEN};
use backup_storage::{LocalStorage, PutMode, PutOptions, Storage, StorageExt};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::component::{CommandComponent, Component, FilesComponent, SqliteComponent};
use crate::config::{ComponentKind, Config};
use crate::image::pipe;
use crate::image::reader::{self, Visitor, WalkResult};
use crate::image::writer::{ChannelWriter, Encoder, CHANNEL_DEPTH};
use crate::image::{
    parse_image_name, sidecar_name, BackupInfo, Manifest, Outcome, ParsedName, Selection, Sidecar,
    IMAGE_EXT, MANIFEST_JSON,
};
use crate::keys::{KeyFile, KeySource, Keys, NoPassphrase, PassphraseProvider};
use crate::ops::retention::Coverage;
use crate::progress::{Event, NoProgress, Progress};
use crate::{Error, Result};

/// Largest sidecar manifest read.
const MAX_SIDECAR: u64 = 16 << 20;

/// How a registered component takes part in backups.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ComponentOptions {
    /// Part of a standard backup.
    pub default: bool,
    /// Components that must be in the same backup.
    pub requires: Vec<String>,
    /// Holds audit records (a standard backup includes it only with `include_audits`).
    pub audit: bool,
}

impl Default for ComponentOptions {
    fn default() -> Self {
        ComponentOptions {
            default: true,
            requires: Vec::new(),
            audit: false,
        }
    }
}

pub(crate) struct Registered {
    pub(crate) component: Arc<dyn Component>,
    pub(crate) options: ComponentOptions,
}

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

/// What `create` should do.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct CreateOptions {
    /// A custom backup of these components (empty: a standard backup).
    pub components: Vec<String>,
    /// Include audit components.
    pub include_audits: bool,
    /// Fail at the first failing component and publish nothing.
    pub halt: bool,
    /// Write the image to this file instead of the configured storage
    /// (`-`: standard output, or `output_stream` if set).
    pub output: Option<PathBuf>,
    /// With `output` = `-`: the stream the image goes to instead of this
    /// process's standard output. A frontend that must keep everything but
    /// the image off standard output passes a duplicate of it here and then
    /// points standard output elsewhere.
    pub output_stream: Option<Arc<std::fs::File>>,
    /// Started by the schedule (recorded in status and audit log).
    pub scheduled: bool,
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
}

/// An image in the storage.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    /// Object name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Time/node/role from the name.
    #[serde(skip)]
    pub parsed: Option<ParsedName>,
    /// Its sidecar manifest, if readable.
    pub sidecar: Option<Sidecar>,
    /// Why the sidecar could not be read.
    pub sidecar_error: Option<String>,
    /// Which components it set out to hold (from the sidecar).
    pub selection: Option<ImageSelection>,
    /// How much of a standard backup it holds, as retention judges it.
    pub coverage: Coverage,
    /// The size the image was written with, from its sidecar.
    pub expected_size: Option<u64>,
    /// The stored size differs from `expected_size`: the image is truncated
    /// (or grew) and will not verify or restore.
    pub size_mismatch: bool,
}

/// Which components an image set out to hold, as `list` and `show` name it:
/// `standard`, `standard+audits`, or `custom: NAME, …`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSelection {
    /// A standard backup: every applicable default component.
    Standard {
        /// With the audit components (`--include-audits`).
        audits: bool,
    },
    /// A custom backup of these components.
    Custom {
        /// The components it set out to take, in archive order.
        components: Vec<String>,
    },
}

impl std::fmt::Display for ImageSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageSelection::Standard { audits: false } => f.write_str("standard"),
            ImageSelection::Standard { audits: true } => f.write_str("standard+audits"),
            ImageSelection::Custom { components } => {
                write!(f, "custom: {}", components.join(", "))
            }
        }
    }
}

/// Details of one image.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDetails {
    /// Name or path.
    pub image: String,
    /// Size in bytes, if known.
    pub size: Option<u64>,
    /// `backup.json`.
    pub info: BackupInfo,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `sidecar` (read from the sidecar manifest) or `image` (read from the image itself).
    pub source: &'static str,
    /// Which components it set out to hold.
    pub selection: ImageSelection,
}

/// The result of a full verification.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// Name or path.
    pub image: String,
    /// Encrypted bytes read.
    pub size: u64,
    /// `backup.json`.
    pub info: BackupInfo,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// Components whose entries were checked against the manifest.
    pub verified: Vec<String>,
}

/// Where an `IMAGE` argument points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ImageLoc {
    File(PathBuf),
    Stored(String),
}

impl ImageLoc {
    pub(crate) fn shown(&self) -> String {
        match self {
            ImageLoc::File(p) => p.display().to_string(),
            ImageLoc::Stored(n) => n.clone(),
        }
    }
}

/// The backup engine of one appliance.
pub struct Engine {
    pub(crate) config: Config,
    pub(crate) storage: Option<Arc<dyn Storage>>,
    /// The group image files are given (`[storage] group`), as an id.
    pub(crate) file_group: Option<u32>,
    pub(crate) components: Vec<Registered>,
    pub(crate) actor: String,
    pub(crate) keys: Arc<Keys>,
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
        crate::backup::create(self, opts).await
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

    /// Whether a registered component holds audit records.
    pub(crate) fn is_audit_component(&self, name: &str) -> bool {
        self.components
            .iter()
            .any(|c| c.component.name() == name && c.options.audit)
    }

    pub(crate) fn component(&self, name: &str) -> Option<&Arc<dyn Component>> {
        self.components
            .iter()
            .find(|c| c.component.name() == name)
            .map(|c| &c.component)
    }

    /// Reads an image's sidecar manifest and checks it against the image
    /// itself: the same key id in both headers (checked before anything is
    /// decrypted, so a foreign sidecar never asks for a passphrase), and the
    /// image's name inside. The image's size is returned with it; whether a
    /// size that differs from the recorded one disqualifies the sidecar is
    /// the caller's call. Fails only where reading the image would fail too
    /// (storage errors, a passphrase that is needed and not given).
    async fn read_sidecar(&self, name: &str) -> Result<SidecarRead> {
        let Some(storage) = &self.storage else {
            return Ok(SidecarRead::Missing);
        };
        let sealed = match storage.get_bytes(&sidecar_name(name), MAX_SIDECAR).await {
            Ok(b) => b,
            Err(backup_storage::Error::NotFound { .. }) => return Ok(SidecarRead::Missing),
            Err(e) => return Err(e.into()),
        };
        let (image_size, image_header) = self.image_header(name).await?;
        let keys = self.keys.clone();
        let what = format!("the manifest of {name}");
        let opened = tokio::task::spawn_blocking(move || -> Result<SidecarRead> {
            let reader = match ImageReader::new(&sealed[..]) {
                Ok(r) => r,
                Err(e) => return Ok(SidecarRead::Unusable(sidecar_damage(&Error::Crypto(e)))),
            };
            if let Some(image) = image_header {
                let (ours, theirs) = (reader.header().key_id(), image.key_id());
                if ours != theirs {
                    return Ok(SidecarRead::Unusable(format!(
                        "was sealed under another master key (key id {ours}) than the image \
                         (key id {theirs}): it belongs to another image"
                    )));
                }
            }
            let mut plain = Vec::new();
            let read = keys.unlock(reader, &what).and_then(|mut r| {
                r.read_to_end(&mut plain)
                    .map_err(|e| Error::from_pipeline_io("reading the sidecar manifest", e))
            });
            match read {
                Ok(_) => {}
                Err(e @ (Error::PassphraseRequired(_) | Error::Storage(_))) => return Err(e),
                Err(e @ Error::Crypto(backup_crypto::Error::WrongPassphrase)) => return Err(e),
                Err(e) => return Ok(SidecarRead::Unusable(sidecar_damage(&e))),
            }
            Ok(match serde_json::from_slice::<Sidecar>(&plain) {
                Ok(sidecar) => SidecarRead::Found(Box::new(sidecar), image_size),
                Err(e) => SidecarRead::Unusable(format!("does not hold a valid manifest ({e})")),
            })
        })
        .await
        .map_err(join_error)??;
        Ok(match opened {
            SidecarRead::Found(sidecar, _)
                if sidecar.image != name.rsplit('/').next().unwrap_or(name)
                    && sidecar.image != name =>
            {
                SidecarRead::Unusable(format!("describes another image ({})", sidecar.image))
            }
            other => other,
        })
    }

    /// The size of an image and its encryption header (`None` when the
    /// header does not parse: reading the image reports that, truthfully).
    async fn image_header(&self, name: &str) -> Result<(u64, Option<Header>)> {
        let storage = self.storage.as_ref().expect("stored images need a storage");
        let got = storage.get_opts(name, Some(0..HEADER_LEN as u64)).await?;
        let size = got.meta.size;
        let mut bytes = Vec::with_capacity(HEADER_LEN);
        let mut reader = got.reader;
        tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
            .await
            .map_err(|e| {
                Error::Storage(backup_storage::Error::from_io(
                    format!("reading the header of {name}"),
                    e,
                ))
            })?;
        Ok((size, Header::parse(&bytes).ok()))
    }

    /// An image's sidecar manifest used as what it is, an index: `None` when
    /// the image has none, and also when the sidecar does not open or does
    /// not match the image (key id, name, size), after a warning saying so,
    /// so that the caller reads the image itself instead.
    pub(crate) async fn sidecar(&self, name: &str) -> Result<Option<Sidecar>> {
        let why = match self.read_sidecar(name).await? {
            SidecarRead::Missing => return Ok(None),
            SidecarRead::Found(s, size) if s.image_size == size => return Ok(Some(*s)),
            SidecarRead::Found(s, size) => format!(
                "records {} bytes for the image, which has {size}",
                s.image_size
            ),
            SidecarRead::Unusable(why) => why,
        };
        self.progress.event(&Event::Warning {
            component: None,
            message: format!(
                "the sidecar manifest {} {why}; reading the image itself instead",
                sidecar_name(name)
            ),
        });
        Ok(None)
    }

    /// The component names a standard backup takes now (`None` when no
    /// standard backup could run: then no image counts as full).
    fn standard_set(&self) -> Option<BTreeSet<String>> {
        let plan = crate::backup::plan(self, &CreateOptions::default()).ok()?;
        Some(plan.component_names().map(str::to_string).collect())
    }

    /// Which components an image set out to hold.
    pub(crate) fn selection_of(&self, info: &BackupInfo) -> ImageSelection {
        match info.selection {
            Selection::Standard => ImageSelection::Standard {
                audits: info.components.iter().any(|c| self.is_audit(&c.name)),
            },
            Selection::Custom => ImageSelection::Custom {
                components: info.components.iter().map(|c| c.name.clone()).collect(),
            },
        }
    }

    /// Whether `name` holds audit records: as registered, or (for a component
    /// this appliance no longer has) by the configuration's default rule.
    fn is_audit(&self, name: &str) -> bool {
        match self.components.iter().find(|c| c.component.name() == name) {
            Some(c) => c.options.audit,
            None => name == "audits",
        }
    }

    /// How much of a standard backup an image holds.
    fn coverage_of(sidecar: &Sidecar, standard: Option<&BTreeSet<String>>) -> Coverage {
        let captured = |name: &String| {
            sidecar
                .manifest
                .components
                .iter()
                .any(|r| &r.name == name && r.outcome == Outcome::Success)
        };
        if standard.is_some_and(|set| set.iter().all(captured)) {
            Coverage::Full
        } else if sidecar.info.selection == Selection::Standard
            && sidecar.manifest.outcome == Outcome::Success
        {
            Coverage::EarlierStandard
        } else {
            Coverage::Partial
        }
    }

    /// Lists the images in the storage (newest last) with their sidecars.
    pub async fn list(&self) -> Result<Vec<ImageSummary>> {
        let storage = self
            .storage
            .as_ref()
            .ok_or_else(|| Error::NoStorage("there is nothing to list".into()))?;
        let listing = storage.list(&self.config.storage.prefix, false).await?;
        let standard = self.standard_set();
        let mut out = Vec::new();
        for obj in listing
            .objects
            .into_iter()
            .filter(|o| o.name.ends_with(IMAGE_EXT))
        {
            let (sidecar, sidecar_error, coverage) = match self.read_sidecar(&obj.name).await {
                Ok(SidecarRead::Found(s, size)) => {
                    // A size other than the recorded one: the image is cut
                    // short (or the sidecar is another's); not a full image.
                    let coverage = if s.image_size == size {
                        Self::coverage_of(&s, standard.as_ref())
                    } else {
                        Coverage::Unknown
                    };
                    (Some(*s), None, coverage)
                }
                Ok(SidecarRead::Missing) => (None, None, Coverage::Unknown),
                Ok(SidecarRead::Unusable(why)) => (
                    None,
                    Some(format!("its sidecar manifest {why}")),
                    Coverage::Unknown,
                ),
                Err(e) => (None, Some(e.to_string()), Coverage::Unknown),
            };
            let parsed = parse_image_name(&self.config.storage.prefix, &obj.name);
            let selection = sidecar.as_ref().map(|s| self.selection_of(&s.info));
            let expected_size = sidecar.as_ref().map(|s| s.image_size);
            out.push(ImageSummary {
                name: obj.name,
                size: obj.size,
                parsed,
                sidecar,
                sidecar_error,
                selection,
                coverage,
                expected_size,
                size_mismatch: expected_size.is_some_and(|e| e != obj.size),
            });
        }
        Ok(out)
    }

    /// Resolves an `IMAGE` argument: an existing file path (or anything with a
    /// `/`) is a file; otherwise a name in the configured storage.
    pub(crate) fn locate(&self, image: &str) -> ImageLoc {
        let path = Path::new(image);
        if path.is_file() || image.contains('/') || self.storage.is_none() {
            ImageLoc::File(path.to_path_buf())
        } else {
            ImageLoc::Stored(image.to_string())
        }
    }

    /// Opens an image's encrypted bytes as a blocking `Read` (call from async
    /// context; use the reader on a blocking thread).
    pub(crate) async fn open_raw(
        &self,
        loc: &ImageLoc,
    ) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
        match loc {
            ImageLoc::File(p) => {
                let f = std::fs::File::open(p).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::NotFound(format!(
                            "no image {}: it is neither a file{}",
                            p.display(),
                            if self.storage.is_some() {
                                " nor a name in the storage"
                            } else {
                                ""
                            }
                        ))
                    } else {
                        Error::io(format!("opening {}", p.display()), e)
                    }
                })?;
                let size = f.metadata().ok().map(|m| m.len());
                Ok((Box::new(f), size))
            }
            ImageLoc::Stored(name) => {
                let storage = self.storage.as_ref().expect("stored images need a storage");
                let got = storage.get_opts(name, None).await?;
                let size = Some(got.meta.size);
                Ok((
                    Box::new(tokio_util::io::SyncIoBridge::new(got.reader)),
                    size,
                ))
            }
        }
    }

    /// Reads a whole image on a blocking thread, checking everything.
    pub(crate) async fn walk_image<V: Visitor + Send + 'static>(
        &self,
        loc: &ImageLoc,
        mut visitor: V,
    ) -> Result<(WalkResult, u64, V)> {
        let (raw, size) = self.open_raw(loc).await?;
        // A stored image whose size is not the one it was written with would
        // fail authentication somewhere; say what happened instead, before
        // downloading it.
        // The sidecar is authenticated and names this image, so a size that
        // differs from the one it records is the image's doing; a sidecar
        // that does not open or names another image proves nothing.
        if let (ImageLoc::Stored(name), Some(size)) = (loc, size) {
            if let Ok(SidecarRead::Found(s, _)) = self.read_sidecar(name).await {
                if s.image_size != size {
                    return Err(Error::ImageSize {
                        size,
                        expected: s.image_size,
                    });
                }
            }
        }
        let keys = self.keys.clone();
        let shown = loc.shown();
        tokio::task::spawn_blocking(move || {
            let mut counted = CountingReader {
                inner: raw,
                count: 0,
            };
            let result = (|| {
                let reader = ImageReader::new(&mut counted)?;
                let payload = keys.unlock(reader, &shown)?;
                reader::walk(payload, &mut visitor)
            })();
            result.map(|w| (w, counted.count, visitor))
        })
        .await
        .map_err(join_error)?
    }

    /// Details of an image: from its sidecar when it has one, else by reading it.
    pub async fn show(&self, image: &str) -> Result<ImageDetails> {
        let loc = self.locate(image);
        if let ImageLoc::Stored(name) = &loc {
            if let Some(s) = self.sidecar(name).await? {
                return Ok(ImageDetails {
                    image: name.clone(),
                    size: Some(s.image_size),
                    selection: self.selection_of(&s.info),
                    info: s.info,
                    manifest: s.manifest,
                    source: "sidecar",
                });
            }
        }
        let (walked, size, _) = self.walk_image(&loc, NullVisitor).await?;
        Ok(ImageDetails {
            image: loc.shown(),
            size: Some(size),
            selection: self.selection_of(&walked.info),
            info: walked.info,
            manifest: walked.manifest,
            source: "image",
        })
    }

    /// Decrypts and decompresses a whole image and checks every component
    /// against the manifest (and the sidecar, if any), writing nothing.
    pub(crate) async fn verify_image(&self, image: &str) -> Result<VerifyReport> {
        let loc = self.locate(image);
        self.progress.event(&Event::Step {
            message: format!("verifying {}", loc.shown()),
        });
        let (walked, size, _) = self.walk_image(&loc, NullVisitor).await?;
        if let ImageLoc::Stored(name) = &loc {
            if let Some(s) = self.sidecar(name).await? {
                // The image is what restores; a wrong index is worth a
                // warning, not a failed verification.
                if s.manifest != walked.manifest || s.info != walked.info {
                    self.progress.event(&Event::Warning {
                        component: None,
                        message: format!(
                            "the sidecar manifest {} does not match the image's own manifest; \
                             the image verified, list and show may describe it wrongly",
                            sidecar_name(name)
                        ),
                    });
                }
            }
        }
        let verified = walked
            .manifest
            .components
            .iter()
            .filter(|r| r.outcome == Outcome::Success)
            .map(|r| r.name.clone())
            .collect();
        Ok(VerifyReport {
            image: loc.shown(),
            size,
            info: walked.info,
            manifest: walked.manifest,
            verified,
        })
    }

    /// Writes the decrypted payload (a standard `.tar.gz`) to `out`. The file
    /// holds the appliance's secrets in clear. Nothing is left under `out` if
    /// the image fails authentication.
    pub(crate) async fn decrypt_image(&self, image: &str, out: &Path) -> Result<u64> {
        let loc = self.locate(image);
        let (raw, _) = self.open_raw(&loc).await?;
        let keys = self.keys.clone();
        let shown = loc.shown();
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let reader = ImageReader::new(raw)?;
            let mut payload = keys.unlock(reader, &shown)?;
            crate::util::write_stream_atomic(&out, 0o600, |w| {
                std::io::copy(&mut payload, w)
                    .map_err(|e| Error::from_pipeline_io("decrypting the image", e))
            })
        })
        .await
        .map_err(join_error)?
    }

    /// Seals a payload file (a `.tar.gz` as written by [`Engine::decrypt`])
    /// into an image at `out`, under this appliance's master key.
    ///
    /// The payload is first read as restore would read it, and refused if
    /// restore would refuse it. With `rehash`, the manifest is recomputed
    /// from the payload's entries instead of checked against them — for a
    /// payload edited on purpose; the image then vouches for the edit.
    pub(crate) async fn encrypt_file(&self, input: &Path, out: &Path, rehash: bool) -> Result<u64> {
        let (mk, slot) = self.keys.for_writing()?;
        let path = input.to_path_buf();
        let rewrite = tokio::task::spawn_blocking(move || check_payload(&path, rehash))
            .await
            .map_err(join_error)??;
        let mut file = std::fs::File::open(input)
            .map_err(|e| Error::io(format!("opening {}", input.display()), e))?;
        let (storage, name) = local_destination(out, self.file_group)?;
        let created = Utc::now().timestamp();
        let what = input.display().to_string();
        let image = &self.config.image;
        let (level, threads) = (image.effective_level(), image.effective_threads());
        let configured = image.compression;
        let ((), size) = write_sealed(
            storage,
            name,
            mk,
            slot,
            DateTime::from_timestamp(created, 0).unwrap_or_default(),
            move |w| match rewrite {
                None => std::io::copy(&mut file, w)
                    .map(|_| ())
                    .map_err(|e| Error::io(format!("reading {what}"), e)),
                Some((info, manifest)) => {
                    let level = if info.compression == configured {
                        level
                    } else {
                        info.compression.default_level()
                    };
                    let encoder = Encoder::with_threads(w, info.compression, level, threads)
                        .map_err(|e| Error::from_pipeline_io("writing the image", e))?;
                    rewrite_payload(&mut file, encoder, &manifest, &what)
                }
            },
        )
        .await?;
        Ok(size)
    }
}

/// What reading a sidecar manifest found.
enum SidecarRead {
    /// The image has none.
    Missing,
    /// It opened and names the image; with the image's actual size.
    Found(Box<Sidecar>, u64),
    /// It cannot serve as the image's index (a clause saying why).
    Unusable(String),
}

/// Why a sidecar did not open, said of the sidecar (the crypto errors speak
/// of "the image", which here is fine).
fn sidecar_damage(e: &Error) -> String {
    use backup_crypto::Error as C;
    match e {
        Error::Crypto(C::Truncated) => "is damaged: it is cut short".into(),
        Error::Crypto(C::DecryptionFailed) => {
            "is damaged: it fails authentication (modified or corrupted)".into()
        }
        Error::Crypto(C::HeaderCorrupted) => "is damaged: its header is corrupted".into(),
        Error::Crypto(C::UnsupportedFormat(why)) => format!("is not a sidecar manifest ({why})"),
        Error::Crypto(C::KeyMismatch { image, ours }) => {
            format!("was sealed under another master key (key id {image}, ours {ours})")
        }
        other => format!("does not open ({other})"),
    }
}

/// Reads a payload file as restore would. Without `rehash`, anything restore
/// would refuse is refused; with it, everything but the comparison with the
/// manifest is checked, and the manifest with the digests the payload's
/// entries have now is returned.
fn check_payload(path: &Path, rehash: bool) -> Result<Option<(BackupInfo, Manifest)>> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| Error::io(format!("opening {shown}"), e))?;
    let refused = |e: Error, hint: &str| {
        Error::Input(format!(
            "{shown} was not sealed, because restore would refuse it: {e}{hint}"
        ))
    };
    let walked = reader::walk_entries(std::io::BufReader::new(file), &mut NullVisitor)
        .map_err(|e| refused(e, ""))?;
    if !rehash {
        walked.checked().map_err(|e| {
            refused(
                e,
                "; if the payload was edited on purpose, pass --rehash to record its new content in its manifest",
            )
        })?;
        return Ok(None);
    }
    let mut manifest = walked.manifest.clone().ok_or_else(|| {
        refused(
            Error::InvalidImage("it has no manifest.json to recompute".into()),
            "",
        )
    })?;
    for record in &mut manifest.components {
        if record.outcome != Outcome::Success {
            continue;
        }
        let digest = walked
            .digests
            .get(&record.name)
            .cloned()
            .unwrap_or_default();
        record.entries = digest.entries();
        record.bytes = digest.bytes();
        record.sha256 = digest.hex();
    }
    reader::check_manifest(&walked.info, &manifest, &walked.digests).map_err(|e| refused(e, ""))?;
    Ok(Some((walked.info, manifest)))
}

/// Copies a payload's tar entries into `out` with `manifest` in place of its
/// `manifest.json`, keeping every field the digests cover.
fn rewrite_payload<W: Write>(
    input: &mut std::fs::File,
    out: Encoder<W>,
    manifest: &Manifest,
    what: &str,
) -> Result<()> {
    let read_err = |e| Error::io(format!("reading {what}"), e);
    let write_err = |e| Error::from_pipeline_io("writing the image", e);
    let decoded = reader::decoder(std::io::BufReader::new(input)).map_err(read_err)?;
    let mut archive = tar::Archive::new(decoded);
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let path = entry.path().map_err(read_err)?.into_owned();
        // The walk read these fields of every component entry already; the
        // JSON entries the engine writes leave owner fields empty.
        let old = entry.header();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(old.entry_type());
        h.set_mode(old.mode().unwrap_or(0o600));
        h.set_mtime(old.mtime().unwrap_or(0));
        h.set_uid(old.uid().unwrap_or(0));
        h.set_gid(old.gid().unwrap_or(0));
        if path == Path::new(MANIFEST_JSON) {
            let data = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
            h.set_size(data.len() as u64);
            builder
                .append_data(&mut h, &path, &data[..])
                .map_err(write_err)?;
        } else if let Some(link) = entry.link_name().map_err(read_err)? {
            let link = link.into_owned();
            h.set_size(0);
            builder
                .append_link(&mut h, &path, &link)
                .map_err(write_err)?;
        } else {
            h.set_size(entry.size());
            builder
                .append_data(&mut h, &path, &mut entry)
                .map_err(write_err)?;
        }
    }
    builder
        .into_inner()
        .and_then(|e| e.finish())
        .map_err(write_err)?;
    Ok(())
}

/// A visitor that only lets the walk check things.
pub(crate) struct NullVisitor;

impl Visitor for NullVisitor {
    fn info(&mut self, _info: &BackupInfo) -> Result<()> {
        Ok(())
    }
    fn entry(&mut self, _c: &str, _e: &reader::EntryView<'_>, _d: &mut dyn Read) -> Result<()> {
        Ok(())
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    Error::io(
        "a worker thread failed",
        std::io::Error::other(e.to_string()),
    )
}

/// A local file as a storage destination (temp name, fsync, rename; mode
/// 0600, or 0640 with the configured group).
pub(crate) fn local_destination(
    path: &Path,
    group: Option<u32>,
) -> Result<(Arc<dyn Storage>, String)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Input(format!("{} is not a usable file name", path.display())))?
        .to_string();
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((
        Arc::new(LocalStorage::new(&parent)?.with_group(group)),
        name,
    ))
}

/// Streams an encrypted image into `storage` under `name` (never overwriting).
///
/// Three stages run at once, joined by bounded queues, so the slowest sets
/// the pace and memory stays fixed: `produce` writes the payload on a
/// blocking thread (tar, and the codec, which fans out to its own compression
/// threads); a second blocking thread encrypts; the async upload sends.
/// On any failure the upload is aborted, so nothing appears under `name`.
pub(crate) async fn write_sealed<T, F>(
    storage: Arc<dyn Storage>,
    name: String,
    mk: MasterKey,
    slot: Keyslot,
    created: DateTime<Utc>,
    produce: F,
) -> Result<(T, u64)>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn Write) -> Result<T> + Send + 'static,
{
    let mut upload = storage
        .put_opts(&name, PutOptions::mode(PutMode::Create))
        .await?;
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let (plain_tx, mut plain_rx) = pipe::pipe(pipe::PIPE_DEPTH);
    // `Ok(None)`: the payload ended without its end marker, i.e. the
    // producer failed (its own error says why); the image is then *not*
    // finished, so no valid-looking truncated image can be sealed.
    let encryptor = tokio::task::spawn_blocking(move || -> Result<Option<u64>> {
        let io_err = |e| Error::from_pipeline_io("encrypting the image", e);
        let mut sealed =
            EncryptWriter::new(ChannelWriter::new(tx), &mk, &slot, created.timestamp())?;
        loop {
            match plain_rx.recv_chunk() {
                Ok(Some(chunk)) => {
                    sealed.write_all(&chunk).map_err(io_err)?;
                    plain_rx.recycle(chunk);
                }
                Ok(None) => break,
                Err(_) => return Ok(None),
            }
        }
        let size = sealed.finish()?.finish().map_err(io_err)?;
        Ok(Some(size))
    });
    let producer = tokio::task::spawn_blocking(move || -> Result<T> {
        let mut plain = plain_tx;
        let value = produce(&mut plain)?;
        plain
            .finish()
            .map_err(|e| Error::from_pipeline_io("writing the image", e))?;
        Ok(value)
    });
    let mut upload_error = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = upload.write(chunk).await {
            upload_error = Some(e);
            break;
        }
    }
    drop(rx);
    let produced = producer.await.map_err(join_error).and_then(|r| r);
    let sealed = encryptor.await.map_err(join_error).and_then(|r| r);
    // The first cause wins: the storage, then the encryption stage (whose
    // failure makes the producer's writes fail), then the producer.
    let outcome = match (upload_error, sealed, produced) {
        (Some(e), _, _) => Err(e.into()),
        (None, Err(e), _) => Err(e),
        (None, Ok(_), Err(e)) => Err(e),
        (None, Ok(None), Ok(_)) => Err(Error::from_pipeline_io(
            "writing the image",
            std::io::Error::other("the payload stream stopped before its end"),
        )),
        (None, Ok(Some(size)), Ok(value)) => Ok((value, size)),
    };
    match outcome {
        Ok(done) => {
            upload.complete().await?;
            Ok(done)
        }
        Err(e) => {
            let _ = upload.abort().await;
            Err(e)
        }
    }
}
