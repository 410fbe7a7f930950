//! URL helpers shared by [`crate::open_url`] and the backends that take URLs:
//! percent-decoding and -encoding, `file://` paths, and the form of a URL
//! that is safe to show. It uses nothing else of this crate, so `open` and
//! every backend can import it without importing each other.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Percent-decodes a URL part (`what` names it in errors).
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
#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
pub(crate) fn percent_decode_utf8(s: &str, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(percent_decode(s, what)?)
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// Percent-encodes all but unreserved URL characters (and `/` where
/// `keep_slash`), so that [`percent_decode`] gives the bytes back.
pub(crate) fn percent_encode(bytes: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `file://` URL of an absolute path, percent-encoding whatever is not an
/// unreserved URL character, so that [`crate::open_url`] reads it back unchanged.
pub(crate) fn file_url(path: &Path) -> String {
    format!(
        "file://{}",
        percent_encode(path.as_os_str().as_bytes(), true)
    )
}

/// The path of a `file://` URL after the `file://`: empty or `localhost`
/// authority, absolute, percent-decoded.
pub(crate) fn file_url_path(rest: &str) -> std::result::Result<PathBuf, String> {
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

/// The URL with any password in its authority replaced, for messages and
/// logs.
pub(crate) fn redact(url: &str) -> String {
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
    fn percent_encoding_keeps_unreserved_characters() {
        assert_eq!(percent_encode(b"a-b_c.d~e", false), "a-b_c.d~e");
        assert_eq!(percent_encode(b"a b/c@d", false), "a%20b%2Fc%40d");
        assert_eq!(percent_encode(b"a b/c@d", true), "a%20b/c%40d");
        let bytes = b"100%/\xff\x00";
        assert_eq!(
            percent_decode(&percent_encode(bytes, true), "path").unwrap(),
            bytes
        );
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
