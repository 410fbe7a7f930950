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
    refuse_dot_dot(rest)?;
    let url = url::Url::parse(&format!("file://{}", literal_bytes(rest)))
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

/// The URL standard reads a backslash as a slash (in `file:` and `ftp:`
/// URLs) and drops tabs and line breaks; in a URL given here they are the
/// bytes themselves, so they are escaped before parsing.
fn literal_bytes(text: &str) -> String {
    text.replace('\\', "%5C")
        .replace('\t', "%09")
        .replace('\n', "%0A")
        .replace('\r', "%0D")
}

/// Whether a path segment as written is `.` or `..` (a dot may be written
/// `%2e`): the URL parser resolves these away, so they are found before it.
fn dot_segment(segment: &str) -> Option<&'static str> {
    match segment.to_ascii_lowercase().replace("%2e", ".").as_str() {
        "." => Some("."),
        ".." => Some(".."),
        _ => None,
    }
}

/// The dot segments (`.`, `..`) in the path of `rest`, the part of a URL
/// after `scheme://`: the authority up to the first `/`, the path up to a
/// `?` or `#`.
fn dot_segments(rest: &str) -> impl Iterator<Item = &'static str> + '_ {
    let before_query = &rest[..rest.find(['?', '#']).unwrap_or(rest.len())];
    let path = before_query.find('/').map_or("", |i| &before_query[i..]);
    path.split('/').filter_map(dot_segment)
}

/// Refuses a `..` segment in the path of `rest` (after `scheme://`). The
/// URL parser would resolve `/a/../b` to `/b` textually, which is not what
/// the file system or server does with a symbolic link `a`, and a store's
/// location should read the same wherever it is shown.
fn refuse_dot_dot(rest: &str) -> std::result::Result<(), String> {
    if dot_segments(rest).any(|s| s == "..") {
        return Err(
            "the path has a '..' segment, which is not resolved here; name the directory itself"
                .to_owned(),
        );
    }
    Ok(())
}

/// Whether the path of a URL has a `.` segment (which the parser drops).
#[cfg(feature = "s3")]
pub(crate) fn has_dot_segment(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| dot_segments(rest).next().is_some())
}

/// The user information of a URL as written (before the last `@` of the
/// authority). The parser normalises it (`user:@host` loses its empty
/// password), so checks that refuse a password read this.
#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
pub(crate) fn written_userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    authority.rsplit_once('@').map(|(userinfo, _)| userinfo)
}

/// Reads `scheme://[user@]host[:port]/path[?query]` with the `url` crate
/// (`form` is the hint added to errors, "write …"). Backslashes, tabs and
/// line breaks stay those bytes, and a `..` path segment is refused rather
/// than resolved. Parts stay percent-encoded as the parser keeps them: read
/// them with [`url_user`], [`url_host`] and [`percent_decode_utf8`].
#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
pub(crate) fn parse_with_authority(
    text: &str,
    form: &str,
) -> std::result::Result<url::Url, String> {
    let Some((_, rest)) = text.split_once("://") else {
        return Err(format!("not a URL; {form}"));
    };
    refuse_dot_dot(rest)?;
    let url = url::Url::parse(&literal_bytes(text)).map_err(|e| match e {
        url::ParseError::EmptyHost => format!("the URL names no host; {form}"),
        url::ParseError::InvalidPort => PORT_RANGE.to_owned(),
        url::ParseError::InvalidIpv6Address => {
            "not an IPv6 address: write it in brackets, with the closing ']', e.g. [::1]".to_owned()
        }
        other => format!("not a valid URL ({other}); {form}"),
    })?;
    if url.port() == Some(0) {
        return Err(PORT_RANGE.to_owned());
    }
    Ok(url)
}

#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
const PORT_RANGE: &str = "the port must be a number from 1 to 65535";

/// The host of a parsed URL as a name or address (an IPv6 address without
/// its brackets); `None` when it names none.
#[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
pub(crate) fn url_host(url: &url::Url) -> Option<String> {
    match url.host()? {
        url::Host::Domain("") => None,
        url::Host::Domain(name) => Some(name.to_owned()),
        url::Host::Ipv4(addr) => Some(addr.to_string()),
        url::Host::Ipv6(addr) => Some(addr.to_string()),
    }
}

/// The percent-decoded user of a parsed URL (empty when it names none).
#[cfg(any(feature = "ftp", feature = "sftp"))]
pub(crate) fn url_user(url: &url::Url) -> std::result::Result<String, String> {
    percent_decode_utf8(url.username(), "user")
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

    /// `..` is not resolved textually (`/a/../b` is not `/b` when `a` is a
    /// symbolic link): it is refused, however it is spelled.
    #[test]
    fn dot_dot_segments_are_refused() {
        for bad in [
            "/srv/../etc",
            "/srv/..",
            "/..",
            "localhost/a/../b",
            "/srv/%2e%2e/etc",
            "/srv/.%2E/etc",
        ] {
            let err = file_url_path(bad).expect_err(bad);
            assert!(err.contains("'..' segment"), "{bad}: {err}");
        }
        assert_eq!(
            file_url_path("/srv/..dots/a..b/...").unwrap(),
            Path::new("/srv/..dots/a..b/..."),
            "only a whole segment '..' is one"
        );
        assert_eq!(file_url_path("/srv/./a").unwrap(), Path::new("/srv/a"));
    }

    #[cfg(any(feature = "s3", feature = "ftp", feature = "sftp"))]
    #[test]
    fn urls_with_an_authority() {
        let url = parse_with_authority("sftp://a%40b@[::1]:2222/~/x%20y", "write …").unwrap();
        assert_eq!(url_host(&url).as_deref(), Some("::1"));
        assert_eq!(url.port(), Some(2222));
        assert_eq!(url_user(&url).unwrap(), "a@b");
        assert_eq!(percent_decode_utf8(url.path(), "path").unwrap(), "/~/x y");
        let url = parse_with_authority("ftp://u@h/a\\b%5Cc\td", "write …").unwrap();
        assert_eq!(
            percent_decode_utf8(url.path(), "path").unwrap(),
            "/a\\b\\c\td",
            "a backslash or a tab is that byte, not a separator"
        );
        for (bad, why) in [
            ("sftp://u@h/a/../b", "'..' segment"),
            ("ftp://u@h/a/%2E%2e", "'..' segment"),
            ("s3://b/..?region=x", "'..' segment"),
            ("sftp://u@h:0/p", "1 to 65535"),
            ("sftp://u@h:70000/p", "1 to 65535"),
            ("sftp://u@[::1/p", "']'"),
            ("ftp://u@/p", "no host"),
            ("u@h/p", "not a URL; write …"),
        ] {
            let err = parse_with_authority(bad, "write …").expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
        assert_eq!(written_userinfo("ftp://u:@h/p"), Some("u:"));
        assert_eq!(written_userinfo("ftp://h/p@x"), None);
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
