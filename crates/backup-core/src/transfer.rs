//! Moving images in and out: fetching a stored image to a file, decrypting an
//! image's payload, sealing a payload into an image.
use std::io::Write;
use std::path::Path;

use backup_crypto::ImageReader;
use chrono::{DateTime, Utc};

use crate::context::Context;
use crate::destination::{local_destination, write_sealed};
use crate::guard::Operation;
use crate::image::reader;
use crate::image::reader::NullVisitor;
use crate::image::writer::Encoder;
use crate::image::{BackupInfo, Manifest, Outcome, MANIFEST_JSON};
use crate::images::ImageRef;
use crate::util::join_error;
use crate::{Error, Result};

/// Downloads an image to a local file (atomically), for carrying it to a
/// replacement machine. Audited.
pub(crate) async fn fetch(engine: &Context<'_>, image: &ImageRef, out: &Path) -> Result<u64> {
    let fetch = async {
        let loc = image;
        let name = match &loc {
            ImageRef::Stored(name) => name,
            ImageRef::File(_) => {
                return Err(Error::Input(format!(
                    "{image} is a local file already; copy it with cp"
                )))
            }
            ImageRef::Node { .. } => {
                return Err(Error::Input(format!(
                    "{image} is inside a cluster bundle: write it out with `backup cluster extract`"
                )))
            }
        };
        let storage = crate::context::need_storage(engine, "fetch from")?;
        let got = storage.get_opts(name, None).await?;
        let out = out.to_path_buf();
        let mut reader = tokio_util::io::SyncIoBridge::new(got.reader);
        tokio::task::spawn_blocking(move || {
            crate::util::write_stream_atomic(&out, 0o600, |w| {
                std::io::copy(&mut reader, w)
                    .map_err(|e| Error::io(format!("downloading to {}", out.display()), e))
            })
        })
        .await
        .map_err(crate::util::join_error)?
    };
    engine
        .audited(Operation::Fetch, &image.shown(), |n| *n, fetch)
        .await
}

/// Writes an image's decrypted payload to `out` (audited).
pub(crate) async fn decrypt(engine: &Context<'_>, image: &ImageRef, out: &Path) -> Result<u64> {
    engine
        .audited(
            Operation::Decrypt,
            &image.shown(),
            |n| *n,
            decrypt_image(engine, image, out),
        )
        .await
}

/// Seals a payload file into an image (audited as `encrypt`), after reading
/// it as restore would: a payload restore would refuse is not sealed. With
/// `rehash`, the payload's current content is recorded in its manifest: the
/// image then vouches for the edit.
pub(crate) async fn encrypt(
    engine: &Context<'_>,
    input: &Path,
    out: &Path,
    rehash: bool,
) -> Result<u64> {
    let target = out.display().to_string();
    engine
        .audited(
            Operation::Encrypt,
            &target,
            |n| *n,
            encrypt_file(engine, input, out, rehash),
        )
        .await
}

/// Writes the decrypted payload (a standard `.tar.gz`) to `out`. The file
/// holds the appliance's secrets in clear. Nothing is left under `out` if
/// the image fails authentication.
async fn decrypt_image(engine: &Context<'_>, image: &ImageRef, out: &Path) -> Result<u64> {
    let loc = image;
    let (raw, _) = crate::images::open_raw(engine, loc).await?;
    let keys = engine.keys.clone();
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
async fn encrypt_file(engine: &Context<'_>, input: &Path, out: &Path, rehash: bool) -> Result<u64> {
    let (mk, slot) = engine.keys.for_writing()?;
    let path = input.to_path_buf();
    let rewrite = tokio::task::spawn_blocking(move || check_payload(&path, rehash))
        .await
        .map_err(join_error)??;
    let mut file = std::fs::File::open(input)
        .map_err(|e| Error::io(format!("opening {}", input.display()), e))?;
    let (storage, name) = local_destination(out, engine.file_group)?;
    let created = Utc::now().timestamp();
    let what = input.display().to_string();
    let image = &engine.config.image;
    let (level, threads) = (image.effective_level(), image.effective_threads());
    let configured = image.compression;
    let ((), size) = write_sealed(
        storage,
        name,
        None,
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
    let mut file = std::io::BufReader::new(file);
    let head = std::io::BufRead::fill_buf(&mut file)
        .map_err(|e| Error::io(format!("reading {shown}"), e))?;
    if !could_be_payload(head) {
        return Err(Error::Input(format!(
            "{shown} was not sealed: it is not a backup payload (neither gzip, zstd nor tar); seal what `backup decrypt` writes, re-packed with tar if you edited it"
        )));
    }
    let walked = reader::walk_entries(file, &mut NullVisitor).map_err(|e| refused(e, ""))?;
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

/// Whether `head`, the start of a file, could begin a payload: gzip or zstd
/// magic, or a tar header (the `ustar` magic, or a v7 header whose checksum
/// holds). Junk read as a tar would be refused with the tar reader's complaint
/// about the junk's bytes, which tells the operator nothing.
fn could_be_payload(head: &[u8]) -> bool {
    if head.starts_with(&crate::image::codec::GZIP_MAGIC)
        || head.starts_with(&crate::image::codec::ZSTD_MAGIC)
    {
        return true;
    }
    let Some(header) = head.get(..512) else {
        return false;
    };
    if &header[257..262] == b"ustar" {
        return true;
    }
    let recorded = std::str::from_utf8(&header[148..156])
        .ok()
        .map(|f| f.trim_matches(|c: char| c == '\0' || c == ' '))
        .and_then(|f| u32::from_str_radix(f, 8).ok());
    let sum: u32 = header
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    recorded == Some(sum)
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
