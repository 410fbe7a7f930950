//! The images in the storage: listing them with their sidecar manifests,
//! showing one, and locating, opening and walking an image for the
//! operations that read one.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use backup_crypto::{Header, ImageReader, HEADER_LEN};
use backup_storage::StorageExt;

use serde::Serialize;

use crate::context::Context;
use crate::image::reader::NullVisitor;
use crate::image::reader::{self, Visitor, WalkResult};
use crate::image::{
    parse_image_name, sidecar_name, BackupInfo, Outcome, Selection, Sidecar, IMAGE_EXT,
};
use crate::image::{Manifest, ParsedName};
use crate::ops::retention::Coverage;
use crate::plan::CreateOptions;
use crate::progress::Event;
use crate::util::join_error;
use crate::{Error, Result};

/// Largest sidecar manifest read.
const MAX_SIDECAR: u64 = 16 << 20;

/// Reads an image's sidecar manifest and checks it against the image
/// itself: the same key id in both headers (checked before anything is
/// decrypted, so a foreign sidecar never asks for a passphrase), and the
/// image's name inside. The image's size is returned with it; whether a
/// size that differs from the recorded one disqualifies the sidecar is
/// the caller's call. Fails only where reading the image would fail too
/// (storage errors, a passphrase that is needed and not given).
async fn read_sidecar(engine: &Context<'_>, name: &str) -> Result<SidecarRead> {
    let Some(storage) = &engine.storage else {
        return Ok(SidecarRead::Missing);
    };
    let sealed = match storage.get_bytes(&sidecar_name(name), MAX_SIDECAR).await {
        Ok(b) => b,
        Err(backup_storage::Error::NotFound { .. }) => return Ok(SidecarRead::Missing),
        Err(e) => return Err(e.into()),
    };
    let (image_size, image_header) = image_header(engine, name).await?;
    let keys = engine.keys.clone();
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
async fn image_header(engine: &Context<'_>, name: &str) -> Result<(u64, Option<Header>)> {
    let storage = engine
        .storage
        .as_ref()
        .expect("stored images need a storage");
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
/// What an image's sidecar manifest tells before the image is read, read
/// once per operation.
#[derive(Default)]
pub(crate) struct Index {
    /// The sidecar used as what it is, an index: `None` when the image has
    /// none, and also when it does not open or does not match the image (key
    /// id, name, size), after a warning saying so, so that the caller reads
    /// the image itself instead.
    pub(crate) sidecar: Option<Sidecar>,
    /// The size the image was written with, from a sidecar that opens under
    /// our key and names this image (even one whose size differs: it vouches
    /// for the size written, so a different stored size is the image's doing).
    written_size: Option<u64>,
}

/// Reads the index of `image` (nothing for an image file).
pub(crate) async fn index(engine: &Context<'_>, image: &ImageRef) -> Result<Index> {
    let ImageRef::Stored(name) = image else {
        return Ok(Index::default());
    };
    let why = match read_sidecar(engine, name).await? {
        SidecarRead::Missing => return Ok(Index::default()),
        SidecarRead::Found(s, size) if s.image_size == size => {
            return Ok(Index {
                written_size: Some(s.image_size),
                sidecar: Some(*s),
            })
        }
        SidecarRead::Found(s, size) => {
            warn_unused_sidecar(
                engine,
                name,
                &format!(
                    "records {} bytes for the image, which has {size}",
                    s.image_size
                ),
            );
            return Ok(Index {
                sidecar: None,
                written_size: Some(s.image_size),
            });
        }
        SidecarRead::Unusable(why) => why,
    };
    warn_unused_sidecar(engine, name, &why);
    Ok(Index::default())
}

fn warn_unused_sidecar(engine: &Context<'_>, name: &str, why: &str) {
    engine.progress.event(&Event::Warning {
        component: None,
        message: format!(
            "the sidecar manifest {} {why}; reading the image itself instead",
            sidecar_name(name)
        ),
    });
}

/// An image's sidecar manifest used as an index (see [`Index::sidecar`]).
pub(crate) async fn sidecar(engine: &Context<'_>, name: &str) -> Result<Option<Sidecar>> {
    Ok(index(engine, &ImageRef::Stored(name.to_string()))
        .await?
        .sidecar)
}
/// The component names a standard backup takes now (`None` when no
/// standard backup could run: then no image counts as full).
fn standard_set(engine: &Context<'_>) -> Option<BTreeSet<String>> {
    let plan = crate::plan::plan(engine, &CreateOptions::default()).ok()?;
    Some(plan.component_names().map(str::to_string).collect())
}
/// Which components an image set out to hold.
pub(crate) fn selection_of(engine: &Context<'_>, info: &BackupInfo) -> ImageSelection {
    match info.selection {
        Selection::Standard => ImageSelection::Standard {
            audits: info.components.iter().any(|c| is_audit(engine, &c.name)),
        },
        Selection::Custom => ImageSelection::Custom {
            components: info.components.iter().map(|c| c.name.clone()).collect(),
        },
    }
}
/// Whether `name` holds audit records: as registered, or (for a component
/// this appliance no longer has) by the configuration's default rule.
fn is_audit(engine: &Context<'_>, name: &str) -> bool {
    match engine
        .components
        .iter()
        .find(|c| c.component.name() == name)
    {
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
pub(crate) async fn list(engine: &Context<'_>) -> Result<Vec<ImageSummary>> {
    let storage = engine
        .storage
        .as_ref()
        .ok_or_else(|| Error::NoStorage("there is nothing to list".into()))?;
    let listing = storage.list(&engine.config.storage.prefix, false).await?;
    let standard = standard_set(engine);
    let mut out = Vec::new();
    for obj in listing
        .objects
        .into_iter()
        .filter(|o| o.name.ends_with(IMAGE_EXT))
    {
        let (sidecar, sidecar_error, coverage) = match read_sidecar(engine, &obj.name).await {
            Ok(SidecarRead::Found(s, size)) => {
                // A size other than the recorded one: the image is cut
                // short (or the sidecar is another's); not a full image.
                let coverage = if s.image_size == size {
                    coverage_of(&s, standard.as_ref())
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
        let parsed = parse_image_name(&engine.config.storage.prefix, &obj.name);
        let selection = sidecar.as_ref().map(|s| selection_of(engine, &s.info));
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
/// Opens an image's encrypted bytes as a blocking `Read` (call from async
/// context; use the reader on a blocking thread).
pub(crate) async fn open_raw(
    engine: &Context<'_>,
    loc: &ImageRef,
) -> Result<(Box<dyn Read + Send>, Option<u64>)> {
    match loc {
        ImageRef::File(p) => {
            let f = std::fs::File::open(p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(format!(
                        "no image {}: it is neither a file{}",
                        p.display(),
                        if engine.storage.is_some() {
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
        ImageRef::Stored(name) => {
            let storage = crate::context::need_storage(engine, "read an image from")?;
            let got = storage.get_opts(name, None).await?;
            let size = Some(got.meta.size);
            Ok((
                Box::new(tokio_util::io::SyncIoBridge::new(got.reader)),
                size,
            ))
        }
        ImageRef::Node { bundle, node } => {
            let (entry, reader) = crate::cluster::open_node(engine, bundle, node).await?;
            Ok((reader, Some(entry.size)))
        }
    }
}
/// Reads a whole image on a blocking thread, checking everything.
pub(crate) async fn walk_image<V: Visitor + Send + 'static>(
    engine: &Context<'_>,
    loc: &ImageRef,
    index: &Index,
    mut visitor: V,
) -> Result<(WalkResult, u64, V)> {
    let (raw, size) = open_raw(engine, loc).await?;
    // A stored image whose size is not the one it was written with would
    // fail authentication somewhere; say what happened instead, before
    // downloading it.
    if let (Some(size), Some(expected)) = (size, index.written_size) {
        if size != expected {
            return Err(Error::ImageSize { size, expected });
        }
    }
    let keys = engine.keys.clone();
    let shown = loc.shown();
    let stop = engine.stop.clone();
    tokio::task::spawn_blocking(move || {
        let mut counted = CountingReader {
            inner: raw,
            count: 0,
            stop,
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
pub(crate) async fn show(engine: &Context<'_>, image: &ImageRef) -> Result<ImageDetails> {
    let loc = image;
    let index = index(engine, loc).await?;
    if let Some(s) = &index.sidecar {
        return Ok(ImageDetails {
            image: loc.shown(),
            size: Some(s.image_size),
            selection: selection_of(engine, &s.info),
            info: s.info.clone(),
            manifest: s.manifest.clone(),
            source: "sidecar",
        });
    }
    let (walked, size, _) = walk_image(engine, loc, &index, NullVisitor).await?;
    Ok(ImageDetails {
        image: loc.shown(),
        size: Some(size),
        selection: selection_of(engine, &walked.info),
        info: walked.info,
        manifest: walked.manifest,
        source: "image",
    })
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

struct CountingReader<R> {
    inner: R,
    count: u64,
    /// Set when the run must stop (see [`Context`]'s `stop`).
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(std::io::Error::other(
                "stopped: the run's time limit passed",
            ));
        }
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// Which image an operation reads: a name in the configured storage, or a
/// local file. The engine never guesses one from the other; a front-end
/// that takes free-form arguments decides (the CLI: an existing file, or
/// anything with a `/`, is a file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in the configured storage, by name.
    Stored(String),
    /// An image file on this machine.
    File(PathBuf),
    /// The image of one node in a cluster bundle (a stored bundle or a
    /// bundle file), read with a ranged read and checked against the
    /// bundle's manifest. A restore of one takes the bundle's restore lease.
    Node {
        /// The bundle.
        bundle: Box<ImageRef>,
        /// The node's name.
        node: String,
    },
}

impl ImageRef {
    /// The name or path, as status, audit log and reports show it.
    pub(crate) fn shown(&self) -> String {
        self.to_string()
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::File(p) => write!(f, "{}", p.display()),
            ImageRef::Stored(n) => f.write_str(n),
            ImageRef::Node { bundle, node } => write!(f, "{bundle} (node {node})"),
        }
    }
}

/// A name is a stored image, never a file.
impl From<&str> for ImageRef {
    fn from(name: &str) -> Self {
        ImageRef::Stored(name.to_string())
    }
}

/// A name is a stored image, never a file.
impl From<&String> for ImageRef {
    fn from(name: &String) -> Self {
        ImageRef::Stored(name.clone())
    }
}

/// A name is a stored image, never a file.
impl From<String> for ImageRef {
    fn from(name: String) -> Self {
        ImageRef::Stored(name)
    }
}

impl From<PathBuf> for ImageRef {
    fn from(path: PathBuf) -> Self {
        ImageRef::File(path)
    }
}

impl From<&Path> for ImageRef {
    fn from(path: &Path) -> Self {
        ImageRef::File(path.to_path_buf())
    }
}

impl From<&ImageRef> for ImageRef {
    fn from(image: &ImageRef) -> Self {
        image.clone()
    }
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
