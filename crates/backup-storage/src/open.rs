use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
}

/// What this build can open, for error messages.
const SUPPORTED: &str =
    "this build supports file:///absolute/path, nfs://server/export (with [storage] mount), s3://bucket/prefix, ftp://user@host/path and ftps://";

/// Opens the backend a URL names (`file://`, `nfs://`, `s3://`, `ftp://`,
/// `ftps://`), wrapped in the shared retry layer ([`crate::RetryStorage`]).
/// An unknown scheme or a malformed URL is [`crate::Error::InvalidUrl`].
pub fn open_url(url: &str, opts: &OpenOptions) -> Result<Arc<dyn Storage>> {
    let backend = open_backend(url, opts)?;
    Ok(Arc::new(crate::RetryStorage::new(
        backend,
        crate::RetryPolicy::default(),
    )))
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
        // Reached only for backends compiled out of this build.
        #[allow(unreachable_patterns)]
        "nfs" | "s3" | "ftp" | "ftps" => Err(invalid(format!(
            "{scheme}:// storage is not available in this build; {SUPPORTED}"
        ))),
        _ => Err(invalid(format!("unknown scheme {scheme:?}; {SUPPORTED}"))),
    }
}

/// The path of a `file://` URL after the `file://`: empty or `localhost`
/// authority, absolute, percent-decoded.
fn file_url_path(rest: &str) -> std::result::Result<PathBuf, String> {
    let path = match rest.find('/') {
        Some(0) => rest,
        Some(i) if rest[..i].eq_ignore_ascii_case("localhost") => &rest[i..],
        Some(i) => {
            return Err(format!(
            "file:// names a local directory, not one on host {:?}; write file:///absolute/path",
            &rest[..i]
        ))
        }
        None => return Err("the path must be absolute: file:///absolute/path".to_owned()),
    };
    if path.contains(['?', '#']) {
        return Err(
            "a file:// URL takes no query or fragment; percent-encode '?' and '#' in the path"
                .to_owned(),
        );
    }
    let bytes = percent_decode(path, "path")?;
    if bytes.contains(&0) {
        return Err("the path contains a NUL byte".to_owned());
    }
    Ok(PathBuf::from(OsString::from_vec(bytes)))
}

/// Percent-decodes a URL part (`what` names it in errors). Shared by the
/// backends that take URLs.
pub(crate) fn percent_decode(s: &str, what: &str) -> std::result::Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b != b'%' {
            out.push(b);
            continue;
        }
        let hex = [bytes.next(), bytes.next()];
        let decoded = match hex {
            [Some(h), Some(l)] => std::str::from_utf8(&[h, l])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
            _ => None,
        };
        out.push(decoded.ok_or_else(|| {
            format!("a '%' in the {what} must be followed by two hex digits (write %25 for '%')")
        })?);
    }
    Ok(out)
}

/// [`percent_decode`] for parts that must be UTF-8.
pub(crate) fn percent_decode_utf8(s: &str, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(percent_decode(s, what)?)
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// `file://` URL of an absolute path, percent-encoding whatever is not an
/// unreserved URL character, so that [`open_url`] reads it back unchanged.
pub(crate) fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

/// The URL with any password replaced, for messages and logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority
        .rsplit_once('@')
        .and_then(|(userinfo, host)| Some((userinfo.split_once(':')?.0, host)))
    {
        Some((user, host)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_round_trips() {
        let path = Path::new("/srv/my backups/100%/ü");
        let url = file_url(path);
        assert_eq!(url, "file:///srv/my%20backups/100%25/%C3%BC");
        assert_eq!(file_url_path(&url["file://".len()..]).unwrap(), path);
    }

    #[test]
    fn file_urls() {
        assert_eq!(file_url_path("/a/b").unwrap(), Path::new("/a/b"));
        assert_eq!(file_url_path("localhost/a").unwrap(), Path::new("/a"));
        assert!(file_url_path("host/a")
            .unwrap_err()
            .contains("host \"host\""));
        assert!(file_url_path("relative").is_err());
        assert!(file_url_path("/a%2").is_err());
        assert!(file_url_path("/a%zz").is_err());
        assert!(file_url_path("/a%00b").is_err());
        assert!(file_url_path("/a?b").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("ftp://backup:s3cret@host:21/dir"),
            "ftp://backup:***@host:21/dir"
        );
        assert_eq!(redact("ftp://backup@host/dir"), "ftp://backup@host/dir");
        assert_eq!(redact("s3://bucket/p"), "s3://bucket/p");
    }
}
