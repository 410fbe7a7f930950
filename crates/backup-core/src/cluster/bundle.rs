//! Reading bundles: the manifest from the first member, one node's image by
//! a ranged read of `offset..offset + size` checked against the manifest's
//! size and SHA-256, and the bundles in the storage.
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{BundleNode, ClusterManifest, BUNDLE_EXT, CLUSTER_MANIFEST};
use crate::context::Context;
use crate::guard::Operation;
use crate::images::ImageRef;
use crate::util::join_error;
use crate::{Error, Result};

/// Largest `cluster-manifest.json` read: a manifest of thousands of nodes
/// stays far below it, and a damaged header cannot make a reader allocate
/// more.
const MAX_MANIFEST: u64 = 1 << 20;

/// One tar block.
const BLOCK: u64 = 512;

/// A bundle in the storage, with its manifest where it could be read.
#[derive(Debug, Clone, Serialize)]
pub struct BundleSummary {
    /// Object name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its `cluster-manifest.json`.
    pub manifest: Option<ClusterManifest>,
    /// Why the manifest could not be read.
    pub error: Option<String>,
}

/// What `cluster extract` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractReport {
    /// The bundle, as given.
    pub bundle: String,
    /// The node.
    pub node: String,
    /// The image's own name (its member name).
    pub image: String,
    /// The file written.
    pub output: PathBuf,
    /// Bytes written.
    pub size: u64,
    /// Their SHA-256 (hex), as the manifest records it.
    pub sha256: String,
}

/// Reads `range` of a bundle (a stored object or a local file) as a
/// blocking `Read` (call from async context; use the reader on a blocking
/// thread).
async fn open_range(
    engine: &Context<'_>,
    bundle: &ImageRef,
    range: Range<u64>,
) -> Result<Box<dyn Read + Send>> {
    match bundle {
        ImageRef::File(p) => {
            let mut f = std::fs::File::open(p).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Error::NotFound(format!(
                        "no bundle {}: it is neither a file{}",
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
            f.seek(SeekFrom::Start(range.start))
                .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
            Ok(Box::new(f.take(range.end - range.start)))
        }
        ImageRef::Stored(name) => {
            let storage = crate::context::need_storage(engine, "read a bundle from")?;
            let got = storage.get_opts(name, Some(range)).await?;
            Ok(Box::new(tokio_util::io::SyncIoBridge::new(got.reader)))
        }
        ImageRef::Node { .. } => Err(Error::Input(format!(
            "{bundle} is a node's image, not a bundle"
        ))),
    }
}

/// Reads a small range whole (at most `range`'s length).
async fn read_small(engine: &Context<'_>, bundle: &ImageRef, range: Range<u64>) -> Result<Vec<u8>> {
    let len = range.end - range.start;
    let mut reader = open_range(engine, bundle, range).await?;
    let shown = bundle.shown();
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        (&mut reader)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(format!("reading {shown}"), e))?;
        Ok(buf)
    })
    .await
    .map_err(join_error)?
}

/// The manifest of a bundle: its first member, `cluster-manifest.json`.
pub(crate) async fn manifest(engine: &Context<'_>, bundle: &ImageRef) -> Result<ClusterManifest> {
    let not_a_bundle = |why: String| {
        Error::InvalidImage(format!(
            "{bundle} is not a cluster bundle: {why}; give a bundle `backup cluster list` shows"
        ))
    };
    let head = read_small(engine, bundle, 0..BLOCK).await?;
    if head.len() < BLOCK as usize {
        return Err(not_a_bundle(format!("it has only {} bytes", head.len())));
    }
    let header = tar::Header::from_byte_slice(&head);
    let checksum_ok = header
        .cksum()
        .is_ok_and(|sum| sum == header_checksum(&head));
    if !checksum_ok {
        return Err(not_a_bundle("it does not start with a tar header".into()));
    }
    let name = header
        .path_bytes()
        .into_owned()
        .into_iter()
        .map(char::from)
        .collect::<String>();
    if name != CLUSTER_MANIFEST {
        return Err(not_a_bundle(format!(
            "its first member is {name:?}, not {CLUSTER_MANIFEST}"
        )));
    }
    let size = header
        .entry_size()
        .map_err(|e| not_a_bundle(format!("its first header is damaged ({e})")))?;
    if size > MAX_MANIFEST {
        return Err(not_a_bundle(format!(
            "its {CLUSTER_MANIFEST} has {size} bytes, more than a manifest ever has"
        )));
    }
    let body = read_small(engine, bundle, BLOCK..BLOCK + size).await?;
    if (body.len() as u64) < size {
        return Err(not_a_bundle(format!("its {CLUSTER_MANIFEST} is cut short")));
    }
    serde_json::from_slice(&body)
        .map_err(|e| not_a_bundle(format!("its {CLUSTER_MANIFEST} does not parse ({e})")))
}

/// The checksum a tar header should carry (its checksum field as spaces).
fn header_checksum(block: &[u8]) -> u32 {
    block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum()
}

/// The manifest's entry for `node`, which must have an image in the bundle.
pub(crate) fn node_entry<'m>(
    manifest: &'m ClusterManifest,
    bundle: &ImageRef,
    node: &str,
) -> Result<&'m BundleNode> {
    let Some(entry) = manifest.nodes.iter().find(|n| n.name == node) else {
        let names: Vec<&str> = manifest.nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(Error::NotFound(format!(
            "bundle {bundle} has no node {node:?}; its nodes are {}",
            names.join(", ")
        )));
    };
    if entry.image.is_none() || entry.offset.is_none() || entry.sha256.is_none() {
        return Err(Error::NotFound(format!(
            "node {node} failed in the cluster backup that made {bundle}{}, so the bundle holds no \
             image of it: use an earlier bundle (`backup cluster list`)",
            entry
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    Ok(entry)
}

/// Opens the image of `node` in `bundle` with a ranged read: a reader of
/// exactly the image's bytes that fails at its end (before the caller
/// sees end of file) if their size or SHA-256 is not the manifest's.
pub(crate) async fn open_node(
    engine: &Context<'_>,
    bundle: &ImageRef,
    node: &str,
) -> Result<(BundleNode, Box<dyn Read + Send>)> {
    let manifest = manifest(engine, bundle).await?;
    let entry = node_entry(&manifest, bundle, node)?.clone();
    let offset = entry.offset.unwrap_or_default();
    let end = offset.checked_add(entry.size).ok_or_else(|| {
        Error::InvalidImage(format!(
            "the manifest of {bundle} places node {node}'s image beyond any file"
        ))
    })?;
    let reader = open_range(engine, bundle, offset..end).await?;
    let checked = CheckedMember {
        inner: reader,
        hasher: Sha256::new(),
        read: 0,
        size: entry.size,
        sha256: entry.sha256.clone().unwrap_or_default(),
        what: format!(
            "the image of node {node} ({}) in bundle {bundle}",
            entry.image.as_deref().unwrap_or("?")
        ),
    };
    Ok((entry, Box::new(checked)))
}

/// The bytes of a member, checked against the manifest when they end.
struct CheckedMember {
    inner: Box<dyn Read + Send>,
    hasher: Sha256,
    read: u64,
    size: u64,
    sha256: String,
    what: String,
}

impl CheckedMember {
    fn mismatch(&self, why: String) -> std::io::Error {
        std::io::Error::other(Error::InvalidImage(format!(
            "{} {why}: the bundle is damaged — use another bundle, or the node's own copy of \
             the image",
            self.what
        )))
    }
}

impl Read for CheckedMember {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
            return Ok(n);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.read != self.size {
            return Err(self.mismatch(format!(
                "has {} bytes where the manifest records {}",
                self.read, self.size
            )));
        }
        let got = hex::encode(self.hasher.clone().finalize());
        if !got.eq_ignore_ascii_case(&self.sha256) {
            return Err(self.mismatch(format!(
                "has SHA-256 {got}, the manifest records {}",
                self.sha256
            )));
        }
        Ok(0)
    }
}

/// Writes the image of `node` in `bundle` to `out` (atomically, mode
/// 0600), checked against the manifest; nothing is left at `out` if the
/// check fails. Audited.
pub(crate) async fn extract(
    engine: &Context<'_>,
    bundle: &ImageRef,
    node: &str,
    out: &Path,
) -> Result<ExtractReport> {
    let target = format!("{bundle} (node {node}) to {}", out.display());
    let work = async {
        let (entry, mut reader) = open_node(engine, bundle, node).await?;
        let path = out.to_path_buf();
        let size = tokio::task::spawn_blocking(move || {
            crate::util::write_stream_atomic(&path, 0o600, |w| {
                std::io::copy(&mut reader, w)
                    .map_err(|e| Error::from_pipeline_io(&format!("writing {}", path.display()), e))
            })
        })
        .await
        .map_err(join_error)??;
        Ok(ExtractReport {
            bundle: bundle.shown(),
            node: node.to_string(),
            image: entry.image.unwrap_or_default(),
            output: out.to_path_buf(),
            size,
            sha256: entry.sha256.unwrap_or_default(),
        })
    };
    engine
        .audited(Operation::ClusterExtract, &target, |r| r.size, work)
        .await
}

/// The bundles in the storage (names with the configured prefix ending in
/// `.tar`), oldest first, each with its manifest or why it has none.
pub(crate) async fn list(engine: &Context<'_>) -> Result<Vec<BundleSummary>> {
    let storage = crate::context::need_storage(engine, "list")?;
    let listing = storage.list(&engine.config.storage.prefix, false).await?;
    let mut out = Vec::new();
    for obj in listing.objects.into_iter().filter(|o| {
        o.name.ends_with(BUNDLE_EXT) && !o.name.rsplit('/').next().unwrap_or("").starts_with('.')
    }) {
        let (manifest, error) = match manifest(engine, &ImageRef::Stored(obj.name.clone())).await {
            Ok(m) => (Some(m), None),
            Err(e) => (None, Some(e.to_string())),
        };
        out.push(BundleSummary {
            name: obj.name,
            size: obj.size,
            manifest,
            error,
        });
    }
    out.sort_by(|a, b| {
        let created = |s: &BundleSummary| s.manifest.as_ref().map(|m| m.created);
        created(a).cmp(&created(b)).then(a.name.cmp(&b.name))
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Role;

    fn engine(dir: &Path) -> crate::Engine {
        let text = format!(
            "[appliance]\nproduct = \"p\"\nversion = \"1\"\nnode = \"n\"\nstate_dir = {:?}\n",
            dir.join("state").display().to_string()
        );
        let config = crate::Config::parse(&text, Path::new("test.toml")).unwrap();
        crate::Engine::builder(config).build().unwrap()
    }

    /// A tar of `members` (name, bytes), GNU headers.
    fn tar_of(path: &Path, members: &[(&str, &[u8])]) {
        let mut tar = tar::Builder::new(std::fs::File::create(path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o600);
            tar.append_data(&mut h, name, *data).unwrap();
        }
        tar.into_inner().unwrap();
    }

    fn manifest_with(image: &[u8], offset: u64, size: u64) -> Vec<u8> {
        serde_json::to_vec(&ClusterManifest {
            cluster: "edge".into(),
            created: chrono::Utc::now(),
            outcome: "success".into(),
            nodes: vec![BundleNode {
                name: "data-1".into(),
                role: Role::Data,
                outcome: "success".into(),
                error: None,
                image: Some("x_data-1_data.bkp".into()),
                size,
                sha256: Some(hex::encode(Sha256::digest(image))),
                offset: Some(offset),
                order: 2,
            }],
        })
        .unwrap()
    }

    #[tokio::test]
    async fn a_tar_without_the_manifest_first_is_not_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let path = dir.path().join("b.tar");
        tar_of(&path, &[("other.json", b"{}"), (CLUSTER_MANIFEST, b"{}")]);
        let err = e.bundle_manifest(path.clone()).await.unwrap_err();
        assert!(
            matches!(err, Error::InvalidImage(_)) && err.to_string().contains("\"other.json\""),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_oversized_manifest_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let path = dir.path().join("b.tar");
        // Only the header: it claims a manifest larger than any there is.
        let mut h = tar::Header::new_gnu();
        h.set_path(CLUSTER_MANIFEST).unwrap();
        h.set_size(MAX_MANIFEST + 1);
        h.set_mode(0o600);
        h.set_cksum();
        std::fs::write(&path, h.as_bytes()).unwrap();
        let err = e.bundle_manifest(path).await.unwrap_err();
        assert!(
            err.to_string().contains("more than a manifest ever has"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_member_cut_short_or_changed_fails_its_check_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = engine(dir.path());
        let image = vec![7u8; 3000];
        // The manifest's own length decides where the image lands.
        let mut offset = 0;
        let mut json = Vec::new();
        for _ in 0..3 {
            json = manifest_with(&image, offset, image.len() as u64);
            offset = BLOCK + (json.len() as u64).div_ceil(BLOCK) * BLOCK + BLOCK;
        }
        let good = dir.path().join("good.tar");
        tar_of(
            &good,
            &[(CLUSTER_MANIFEST, &json), ("x_data-1_data.bkp", &image)],
        );
        let out = dir.path().join("out.bkp");
        let report = e.extract_node(good.clone(), "data-1", &out).await.unwrap();
        assert_eq!(
            (report.size, std::fs::read(&out).unwrap()),
            (3000, image.clone())
        );

        // Cut inside the image: fewer bytes than the manifest records.
        let cut = dir.path().join("cut.tar");
        let bytes = std::fs::read(&good).unwrap();
        std::fs::write(&cut, &bytes[..(offset + 1000) as usize]).unwrap();
        let out2 = dir.path().join("out2.bkp");
        let err = e.extract_node(cut, "data-1", &out2).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("has 1000 bytes where the manifest records 3000"),
            "{err}"
        );
        // One byte changed.
        let changed = dir.path().join("changed.tar");
        let mut bytes = bytes;
        bytes[(offset + 10) as usize] ^= 1;
        std::fs::write(&changed, &bytes).unwrap();
        let err = e.extract_node(changed, "data-1", &out2).await.unwrap_err();
        assert!(err.to_string().contains("has SHA-256"), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("out2"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
