//! Key operations on images: rewrapping headers after a rotation.
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use backup_crypto::{Header, HEADER_LEN};
use serde::Serialize;

use crate::context::Context;
use crate::guard::Operation;
use crate::image::sidecar_name;
use crate::images::ImageRef;
use crate::keys::Keyring;
use crate::{Error, Result};

/// What happened to one image in `rewrap`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum RewrapResult {
    /// The header (and sidecar) now carry the current keyslot.
    Rewrapped,
    /// It already did.
    AlreadyCurrent,
    /// It could not be changed, and why.
    NotRewrapped {
        /// Why.
        reason: String,
    },
}

/// Replaces the keyslot in the headers of images (and their sidecars)
/// with the keyring's keyslot of the same master key under the current
/// secret — the current key's, or an earlier key's kept since a rotation —
/// in place, where the storage can rewrite objects (local and NFS); says
/// which it could not. An image keeps its master key: only who can
/// unwrap it from the header changes.
pub(crate) async fn rewrap(
    engine: &Context<'_>,
    images: &[ImageRef],
) -> Result<Vec<(String, RewrapResult)>> {
    let state = &engine.config.appliance.state_dir;
    let ring = Keyring::load(state)?.ok_or_else(|| Error::NotInitialized(state.clone()))?;
    let mut out = Vec::new();
    for image in images {
        let started = Instant::now();
        let loc = image;
        let mut result = rewrap_one(engine, loc, &ring).await;
        if let (
            Ok(RewrapResult::Rewrapped | RewrapResult::AlreadyCurrent),
            ImageRef::Stored(name),
        ) = (&result, &loc)
        {
            let sidecar = ImageRef::Stored(sidecar_name(name));
            if let Err(e) = rewrap_one(engine, &sidecar, &ring).await {
                if !matches!(e, Error::Storage(backup_storage::Error::NotFound { .. })) {
                    result = Err(e);
                }
            }
        }
        let result = result.unwrap_or_else(|e| RewrapResult::NotRewrapped {
            reason: e.to_string(),
        });
        let (outcome, error) = match &result {
            RewrapResult::NotRewrapped { reason } => ("failed", Some(reason.clone())),
            _ => ("done", None),
        };
        engine.audit(
            Operation::KeyRewrap.audit_name(),
            &image.shown(),
            outcome,
            0,
            started,
            error,
        );
        out.push((image.shown(), result));
    }
    Ok(out)
}

async fn rewrap_one(engine: &Context<'_>, loc: &ImageRef, ring: &Keyring) -> Result<RewrapResult> {
    let header_bytes: Vec<u8> = match loc {
        ImageRef::File(p) => {
            let mut buf = vec![0u8; HEADER_LEN];
            let mut f = std::fs::File::open(p)
                .map_err(|e| Error::io(format!("opening {}", p.display()), e))?;
            f.read_exact(&mut buf)
                .map_err(|e| Error::from_pipeline_io("reading the header", e))?;
            buf
        }
        ImageRef::Stored(name) => {
            let storage = engine.storage().expect("stored images need a storage");
            if !storage.capabilities().rewrite_in_place {
                return Ok(RewrapResult::NotRewrapped {
                    reason: format!("{storage} cannot rewrite objects in place; the image still opens with the previous passphrase"),
                });
            }
            let mut got = storage.get_opts(name, Some(0..HEADER_LEN as u64)).await?;
            let mut buf = Vec::with_capacity(HEADER_LEN);
            tokio::io::AsyncReadExt::read_to_end(&mut got.reader, &mut buf)
                .await
                .map_err(|e| Error::io(format!("reading the header of {name}"), e))?;
            buf
        }
        ImageRef::Node { .. } => {
            return Ok(RewrapResult::NotRewrapped {
                reason: "an image inside a cluster bundle is not rewritten; `backup cluster extract` it and rewrap the file".into(),
            });
        }
    };
    let header = Header::parse(&header_bytes)?;
    let Some(slot) = ring.keyslot_of(&header.key_id().to_string())? else {
        return Ok(RewrapResult::NotRewrapped {
            reason: format!(
                "made under master key {}, which this appliance's keyring does not hold (its current key is {}{})",
                header.key_id(),
                ring.key_id,
                if ring.earlier.is_empty() {
                    String::new()
                } else {
                    let ids: Vec<&str> = ring.earlier.iter().map(|e| e.key_id.as_str()).collect();
                    format!(", earlier ones {}", ids.join(", "))
                }
            ),
        });
    };
    if *header.keyslot() == slot {
        return Ok(RewrapResult::AlreadyCurrent);
    }
    let encoded = header.with_keyslot(slot).encode();
    match loc {
        ImageRef::File(p) => write_header(p, &encoded)?,
        // Refused before the header was read.
        ImageRef::Node { .. } => {
            return Ok(RewrapResult::NotRewrapped {
                reason: "an image inside a cluster bundle is not rewritten".into(),
            })
        }
        ImageRef::Stored(name) => {
            let storage = engine.storage().expect("stored images need a storage");
            storage
                .write_at(name, 0, bytes::Bytes::copy_from_slice(&encoded))
                .await?;
        }
    }
    Ok(RewrapResult::Rewrapped)
}

fn write_header(path: &Path, encoded: &[u8]) -> Result<()> {
    let io = |e| Error::io(format!("rewriting the header of {}", path.display()), e);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io)?;
    f.seek(SeekFrom::Start(0)).map_err(io)?;
    f.write_all(encoded).map_err(io)?;
    f.sync_all().map_err(io)
}
