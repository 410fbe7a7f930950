use std::path::PathBuf;
use std::sync::Arc;

use crate::url::{file_url_path, redact};
use crate::{Error, LocalStorage, Result, Storage};

/// Settings that accompany a storage URL.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct OpenOptions {
    /// For `nfs://`: where the export is mounted locally.
    pub mount: Option<PathBuf>,
    /// For `file://` and `nfs://`: the group (id) new objects belong to,
    /// then group-readable (0640); `None` keeps them owner-only (0600).
    pub group: Option<u32>,
    /// For `sftp://`: the private key to log in with (default
    /// `~/.ssh/id_ed25519`, then `~/.ssh/id_rsa`).
    pub ssh_key: Option<PathBuf>,
    /// For `sftp://`: the SHA-256 fingerprint (`SHA256:…`) of the server's
    /// host key, trusted instead of `~/.ssh/known_hosts`.
    pub host_key_sha256: Option<String>,
}

/// What this build can open, for error messages.
const SUPPORTED: &str =
    "this build supports file:///absolute/path, nfs://server/export (with [storage] mount), s3://bucket/prefix, ftp://user@host/path, ftps:// and sftp://user@host/absolute/path";

/// Opens the backend a URL names (`file://`, `nfs://`, `s3://`, `ftp://`,
/// `ftps://`, `sftp://`), wrapped in the shared retry layer ([`crate::RetryStorage`]).
/// An unknown scheme or a malformed URL is [`crate::Error::InvalidUrl`].
pub fn open_url(url: &str, opts: &OpenOptions) -> Result<Arc<dyn Storage>> {
    let backend = open_backend(url, opts)?;
    Ok(Arc::new(crate::RetryStorage::new(
        backend,
        crate::RetryPolicy::default(),
    )))
}

/// The local directory a storage URL keeps its objects in, if it names one:
/// the path of a `file://` URL, the mount point of an `nfs://` URL (with
/// `opts.mount`). `None` for remote stores and URLs that do not parse.
/// Nothing is opened or checked.
pub fn local_dir(url: &str, opts: &OpenOptions) -> Option<PathBuf> {
    let (scheme, rest) = url.split_once("://")?;
    match scheme.to_ascii_lowercase().as_str() {
        "file" => file_url_path(rest).ok(),
        "nfs" => opts.mount.clone(),
        _ => None,
    }
}

/// The backend itself, without the retry layer.
fn open_backend(url: &str, opts: &OpenOptions) -> Result<Arc<dyn Storage>> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redact(url),
        reason,
    };
    let Some((scheme, rest)) = url.split_once("://") else {
        let reason = if url.starts_with('/') {
            format!("not a URL; write file://{url}")
        } else {
            format!("not a URL; {SUPPORTED}")
        };
        return Err(invalid(reason));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            if opts.mount.is_some() {
                tracing::debug!(url, "ignoring the mount option: it is for nfs:// URLs");
            }
            let path = file_url_path(rest).map_err(invalid)?;
            Ok(Arc::new(LocalStorage::new(path)?.with_group(opts.group)))
        }
        "nfs" => {
            let mount = opts.mount.as_deref().ok_or_else(|| {
                invalid("nfs:// needs the local mount point of the export: set [storage] mount = \"/mnt/backups\"".into())
            })?;
            Ok(Arc::new(
                crate::NfsStorage::open(url, mount)?.with_group(opts.group),
            ))
        }
        #[cfg(feature = "s3")]
        "s3" => crate::s3::open(url),
        #[cfg(feature = "ftp")]
        "ftp" | "ftps" => crate::ftp::open(url),
        #[cfg(feature = "sftp")]
        "sftp" => crate::sftp::open(url, opts),
        // Reached only for backends compiled out of this build.
        #[allow(unreachable_patterns)]
        "nfs" | "s3" | "ftp" | "ftps" | "sftp" => Err(invalid(format!(
            "{scheme}:// storage is not available in this build; {SUPPORTED}"
        ))),
        _ => Err(invalid(format!("unknown scheme {scheme:?}; {SUPPORTED}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_dir_is_the_file_path_or_the_nfs_mount() {
        let none = OpenOptions::default();
        assert_eq!(
            local_dir("file:///var/back%20ups", &none),
            Some(PathBuf::from("/var/back ups"))
        );
        assert_eq!(local_dir("nfs://nas/export", &none), None);
        let mounted = OpenOptions {
            mount: Some(PathBuf::from("/mnt/backups")),
            ..Default::default()
        };
        assert_eq!(
            local_dir("nfs://nas/export/sub", &mounted),
            Some(PathBuf::from("/mnt/backups"))
        );
        for remote in ["s3://bucket/p", "ftp://u@h/p", "none", "file://host/x"] {
            assert_eq!(local_dir(remote, &mounted), None, "{remote}");
        }
    }
}
