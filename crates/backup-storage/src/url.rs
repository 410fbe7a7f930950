//! URL helpers shared by [`crate::open_url`] and the backends that take URLs:
//! percent-decoding and -encoding, `file://` paths, and the form of a URL
//! that is safe to show. It uses nothing else of this crate, so `open` and
//! every backend can import it without importing each other.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Percent-decodes a URL part (`what` names it in errors). Unlike the
/// lenient decoder underneath, a `%` not followed by two hex digits is an
/// error: it is a typo, and read literally it would name another path.
pub(crate) fn percent_decode(s: &str, what: &str) -> std::result::Result<Vec<u8>, String> {
    check_escapes(s, what)?;
    Ok(percent_encoding::percent_decode_str(s).collect())
}

/// Refuses a `%` that does not start an escape of two hex digits.
fn check_escapes(s: &str, what: &str) -> std::result::Result<(), String> {
    let bytes = s.as_bytes();
    for (i, _) in s.match_indices('%') {
        let escape = bytes.get(i + 1..i + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err(format!(
                "a '%' in the {what} must be followed by two hex digits (write %25 for '%')"
            ));
        }
    }
    Ok(())
}

/// [`percent_decode`] for parts that must be UTF-8.
#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
pub(crate) fn percent_decode_utf8(s: &str, what: &str) -> std::result::Result<String, String> {
    String::from_utf8(percent_decode(s, what)?)
        .map_err(|_| format!("the {what} is not UTF-8 once percent-decoded"))
}

/// Every byte but the unreserved URL characters (RFC 3986: letters, digits,
/// `-._~`) is escaped.
const RESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// [`RESERVED`] but `/`, for paths.
const PATH: &AsciiSet = &RESERVED.remove(b'/');

/// Percent-encodes all but unreserved URL characters (and `/` where
/// `keep_slash`), so that [`percent_decode`] gives the bytes back.
pub(crate) fn percent_encode(bytes: &[u8], keep_slash: bool) -> String {
    let set = if keep_slash { PATH } else { RESERVED };
    percent_encoding::percent_encode(bytes, set).to_string()
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
    if !rest.contains('/') {
        return Err("the path must be absolute: file:///absolute/path".to_owned());
    }
    check_escapes(rest, "path")?;
    // The URL standard reads a backslash as a slash and drops tabs and line
    // breaks; in a path given here they are the bytes themselves.
    let rest = rest
        .replace('\\', "%5C")
        .replace('\t', "%09")
        .replace('\n', "%0A")
        .replace('\r', "%0D");
    let url = url::Url::parse(&format!("file://{rest}"))
        .map_err(|e| format!("not a file:// URL ({e}); write file:///absolute/path"))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(
            "a file:// URL takes no query or fragment; percent-encode '?' and '#' in the path"
                .to_owned(),
        );
    }
    // The parser drops a `localhost` authority, as RFC 8089 reads it.
    if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
        return Err(format!(
            "file:// names a local directory, not one on host {host:?}; write file:///absolute/path"
        ));
    }
    let path = url
        .to_file_path()
        .map_err(|()| "the path must be absolute: file:///absolute/path".to_owned())?;
    if path.as_os_str().as_bytes().contains(&0) {
        return Err("the path contains a NUL byte".to_owned());
    }
    Ok(path)
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

    /// What the URL parser must not do to a store's path: lose or
    /// reinterpret a byte of an awkward name (a backslash, a dot segment
    /// inside a name, bytes that are not UTF-8, an encoded slash).
    #[test]
    fn awkward_paths_round_trip_through_the_url_parser() {
        use std::os::unix::ffi::OsStrExt;
        for raw in [
            &b"/srv/back\\slash/..dots/\xff\xfe/\xc3\xbc/100%/a b#c?d"[..],
            b"/srv/x%2Fy",
            b"/",
        ] {
            let path = Path::new(std::ffi::OsStr::from_bytes(raw));
            let url = file_url(path);
            assert_eq!(
                file_url_path(&url["file://".len()..]).unwrap(),
                path,
                "{url}"
            );
        }
        assert_eq!(
            file_url_path("/srv/a\\b\tc").unwrap(),
            Path::new("/srv/a\\b\tc"),
            "a backslash or a tab written as such is that byte"
        );
        assert_eq!(
            file_url_path("/srv/x%2Fy").unwrap(),
            Path::new("/srv/x/y"),
            "an encoded slash is a slash"
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
