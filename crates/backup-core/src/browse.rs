//! Looking at the storage: browsing its levels and images, and presigned
//! download links.
use std::time::Duration;

use backup_storage::ListResult;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::context::Context;
use crate::guard::Operation;
use crate::image::{parse_image_name, Sidecar, IMAGE_EXT, SIDECAR_SUFFIX};
use crate::images::ImageDetails;
use crate::images::ImageRef;
use crate::{Error, Result};

/// Access to a storage location, found without writing anything.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Access {
    /// The location exists (`None`: the backend cannot tell, as on object
    /// stores, where a prefix exists only while objects lie under it).
    pub exists: Option<bool>,
    /// Listing worked (false for a location that does not exist).
    pub read: bool,
    /// Objects may be created here, as the backend judges from permissions
    /// (`None`: it cannot tell without writing, which browsing never does).
    pub write: Option<bool>,
}

/// One directory level of the storage, as `backup browse` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BrowseView {
    /// The storage location.
    pub location: String,
    /// The level shown (`""` is the top).
    pub path: String,
    /// The level above (`..`), if any.
    pub parent: Option<String>,
    /// Sub-directories.
    pub dirs: Vec<String>,
    /// Images at this level, with their sidecar details where readable.
    pub images: Vec<BrowseImage>,
    /// Other objects (sidecars excluded).
    pub others: Vec<String>,
    /// Existence and permissions.
    pub access: Access,
    /// Total bytes, where the backend knows it.
    pub total: Option<u64>,
    /// Used bytes, where known.
    pub used: Option<u64>,
    /// Bytes available, where known.
    pub free: Option<u64>,
}

/// An image in a browse listing.
#[derive(Debug, Clone, Serialize)]
pub struct BrowseImage {
    /// Object name.
    pub name: String,
    /// Size.
    pub size: u64,
    /// Details from the sidecar.
    pub sidecar: Option<Sidecar>,
}

/// A time-limited download link.
#[derive(Debug, Clone, Serialize)]
pub struct DownloadLink {
    /// Image name.
    pub image: String,
    /// Node.
    pub node: String,
    /// Role.
    pub role: String,
    /// Creation time.
    pub created: Option<DateTime<Utc>>,
    /// Size.
    pub size: u64,
    /// The presigned URL (a bearer credential until it expires).
    pub url: String,
    /// When it stops working.
    pub expires: DateTime<Utc>,
}

/// Makes the download links of a storage that cannot presign: the HTTP
/// service signs its own (see backup-http).
pub trait LinkSigner: Send + Sync {
    /// A URL that serves `image` until `expires`, without credentials.
    fn url(&self, image: &str, expires: DateTime<Utc>) -> Result<String>;
}

/// What `browse` found at a path.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Browse {
    /// A directory level.
    Level(BrowseView),
    /// A backup's details.
    Backup(ImageDetails),
}

/// One level of the storage (or, for an image name, its details).
pub(crate) async fn browse(engine: &Context<'_>, path: &str) -> Result<Browse> {
    let storage = crate::context::need_storage(engine, "browse")?.clone();
    let path = path.trim_start_matches('/');
    if path.ends_with(IMAGE_EXT) {
        return crate::images::show(engine, &ImageRef::Stored(path.to_string()))
            .await
            .map(Browse::Backup);
    }
    let prefix = if path.is_empty() || path.ends_with('/') {
        path.to_string()
    } else {
        format!("{path}/")
    };
    // Browsing only looks: no probe object is written, so nothing is
    // created, and no directory emptied by deleting a probe disappears.
    let listing: std::result::Result<ListResult, _> = storage.list(&prefix, true).await;
    let listed = listing.is_ok();
    let mut listing = match listing {
        Ok(l) => l,
        Err(backup_storage::Error::NotFound { .. }) => ListResult::default(),
        Err(e) => return Err(e.into()),
    };
    let dir = storage.inspect_dir(&prefix).await?;
    let holds_objects = !listing.objects.is_empty() || !listing.prefixes.is_empty();
    let exists = if holds_objects {
        Some(true)
    } else {
        dir.exists
    };
    for sub in dir.subdirs {
        if !listing.prefixes.contains(&sub) {
            listing.prefixes.push(sub);
        }
    }
    listing.prefixes.sort();
    let access = Access {
        exists,
        read: listed && exists != Some(false),
        write: dir.writable,
    };
    let capacity = storage.capacity().await.unwrap_or_default();
    let mut images = Vec::new();
    let mut others = Vec::new();
    for obj in listing.objects {
        if obj.name.ends_with(IMAGE_EXT) {
            let sidecar = crate::images::sidecar(engine, &obj.name)
                .await
                .ok()
                .flatten();
            images.push(BrowseImage {
                name: obj.name,
                size: obj.size,
                sidecar,
            });
        } else if !obj.name.ends_with(SIDECAR_SUFFIX) {
            others.push(obj.name);
        }
    }
    let parent = (!prefix.is_empty()).then(|| {
        let trimmed = prefix.trim_end_matches('/');
        trimmed
            .rsplit_once('/')
            .map(|(p, _)| format!("{p}/"))
            .unwrap_or_default()
    });
    Ok(Browse::Level(BrowseView {
        location: storage.to_string(),
        path: prefix,
        parent,
        dirs: listing.prefixes,
        images,
        others,
        access,
        total: capacity.total,
        used: capacity.used,
        free: capacity.free,
    }))
}

/// Presigned GET links for images (all images when `images` is empty).
/// Backends that cannot presign fail with a clear "unsupported" error.
/// Audited (the URLs themselves are never logged).
pub(crate) async fn links(
    engine: &Context<'_>,
    images: &[String],
    expires: Duration,
    signer: Option<&dyn LinkSigner>,
) -> Result<Vec<DownloadLink>> {
    let links = async {
        let storage = crate::context::need_storage(engine, "link to")?.clone();
        let presign = storage.capabilities().presign;
        if !presign && signer.is_none() {
            return Err(Error::Storage(backup_storage::Error::Unsupported {
                what: format!("download links: {storage} cannot presign URLs; set [http] public_url to issue the HTTP service's own links, or use `backup fetch IMAGE -o FILE`"),
            }));
        }
        let until = Utc::now() + chrono::Duration::from_std(expires).unwrap_or_default();
        let names: Vec<String> = if images.is_empty() {
            crate::images::list(engine)
                .await?
                .into_iter()
                .map(|i| i.name)
                .collect()
        } else {
            images.to_vec()
        };
        let mut out = Vec::new();
        for name in names {
            let meta = storage.head(&name).await?;
            let sidecar = crate::images::sidecar(engine, &name).await.ok().flatten();
            let parsed = parse_image_name(&engine.config.storage.prefix, &name);
            let url = match signer {
                Some(signer) if !presign => signer.url(&name, until)?,
                _ => storage.presign_get(&name, expires).await?,
            };
            out.push(DownloadLink {
                node: sidecar
                    .as_ref()
                    .map(|s| s.info.node.clone())
                    .or(parsed.as_ref().map(|p| p.node.clone()))
                    .unwrap_or_default(),
                role: sidecar
                    .as_ref()
                    .map(|s| s.info.role.to_string())
                    .or(parsed.as_ref().map(|p| p.role.clone()))
                    .unwrap_or_default(),
                created: sidecar
                    .as_ref()
                    .map(|s| s.info.created)
                    .or(parsed.map(|p| p.created)),
                size: meta.size,
                image: name,
                url,
                expires: until,
            });
        }
        Ok(out)
    };
    let target = if images.is_empty() {
        "all images".to_string()
    } else {
        images.join(", ")
    };
    engine
        .audited(Operation::Links, &target, |l| l.len() as u64, links)
        .await
}
