//! `s3://bucket/prefix?endpoint=…&region=…&profile=…` URLs and the names and
//! prefixes they carry.

use crate::url::{has_dot_segment, parse_with_authority, percent_decode_utf8, written_userinfo};
use crate::{Error, Result};

/// The parts of an `s3://` URL.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParsedUrl {
    pub(super) bucket: String,
    pub(super) prefix: String,
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) profile: Option<String>,
}

pub(super) fn parse_url(url: &str) -> Result<ParsedUrl> {
    const FORM: &str = "write s3://bucket/prefix";
    let invalid = |reason: &str| Error::InvalidUrl {
        url: redact_url(url),
        reason: reason.to_owned(),
    };
    let scheme_is_s3 = url
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("s3"));
    if !scheme_is_s3 {
        return Err(invalid("not an s3:// URL; write s3://bucket/prefix"));
    }
    if written_userinfo(url).is_some() {
        return Err(invalid(
            "credentials do not belong in the URL (it ends up in logs and status files); \
             set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials",
        ));
    }
    if has_dot_segment(url) {
        return Err(invalid(
            "invalid prefix: no empty, '.' or '..' segments (they are not resolved here)",
        ));
    }
    let parsed = parse_with_authority(url, FORM).map_err(|r| invalid(&r))?;
    if parsed.fragment().is_some() {
        return Err(invalid("an s3:// URL takes no fragment"));
    }
    if parsed.port().is_some() {
        return Err(invalid(
            "a bucket name has no port; name the server with endpoint=https://host:port",
        ));
    }
    // The bucket is the URL's host, kept as written (percent-encoded) by the
    // parser since s3:// is not a scheme the URL standard knows.
    let bucket = parsed.host_str().unwrap_or("");
    let path = parsed.path();
    let mut out = ParsedUrl {
        bucket: percent_decode_utf8(bucket, "URL").map_err(|r| invalid(&r))?,
        prefix: percent_decode_utf8(path.strip_prefix('/').unwrap_or(path), "URL")
            .map_err(|r| invalid(&r))?,
        endpoint: None,
        region: None,
        profile: None,
    };
    if let Some(query) = parsed.query() {
        // Strict escapes and UTF-8 for the whole query; then a '+' is itself
        // (as everywhere else in the URL), not the space of HTML forms.
        percent_decode_utf8(query, "URL").map_err(|r| invalid(&r))?;
        let query = query.replace('+', "%2B");
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if value.is_empty() {
                return Err(invalid(&format!(
                    "the query parameter {key:?} has no value"
                )));
            }
            let slot = match key.as_ref() {
                "endpoint" => &mut out.endpoint,
                "region" => &mut out.region,
                "profile" => &mut out.profile,
                _ => {
                    return Err(invalid(&format!(
                "unknown query parameter {key:?}; an s3:// URL takes endpoint, region and profile"
            )))
                }
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(invalid(&format!(
                    "the query parameter {key:?} is given twice"
                )));
            }
        }
    }
    if let Some(endpoint) = &out.endpoint {
        check_endpoint(endpoint).map_err(|r| invalid(&r))?;
    }
    Ok(out)
}

/// The URL with anything that looks like credentials replaced, for messages.
fn redact_url(url: &str) -> String {
    // Credentials can hide in the authority and in the endpoint parameter.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        rest = &rest[i + 3..];
        let end = rest.find(['/', '?', '&']).unwrap_or(rest.len());
        match rest[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&rest[at..end]);
            }
            None => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Bucket names as S3-compatible servers accept them (AWS is stricter).
pub(super) fn check_bucket(bucket: &str) -> std::result::Result<(), String> {
    let valid = bucket.len() <= 255
        && bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid bucket name {bucket:?}: letters, digits, '-', '.' and '_' only"
        ))
    }
}

/// `a/b/` → `a/b`, refusing empty, `.` and `..` segments.
pub(super) fn normalize_prefix(prefix: &str) -> std::result::Result<String, String> {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed
        .split('/')
        .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains(['\\', '\0']))
    {
        Ok(trimmed.to_owned())
    } else {
        Err(format!(
            "invalid prefix {prefix:?}: no empty, '.' or '..' segments"
        ))
    }
}

/// An endpoint is `http(s)://host[:port][/path]`, without credentials or query.
pub(super) fn check_endpoint(endpoint: &str) -> std::result::Result<String, String> {
    let scheme_ok = ["https://", "http://"].iter().any(|scheme| {
        endpoint
            .get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    if !scheme_ok {
        return Err(
            "the endpoint must be an https:// (or http://) URL, e.g. endpoint=https://s3.example.net"
                .to_owned(),
        );
    }
    if written_userinfo(endpoint).is_some() {
        return Err(
            "credentials do not belong in the endpoint URL; set AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY, or a profile in ~/.aws/credentials"
                .to_owned(),
        );
    }
    let without_query = "the endpoint must be http(s)://host[:port], without query";
    let parsed = url::Url::parse(endpoint).map_err(|_| without_query.to_owned())?;
    if parsed.host_str().is_none_or(str::is_empty)
        || parsed.query().is_some()
        || parsed.fragment().is_some()
    {
        return Err(without_query.to_owned());
    }
    Ok(endpoint.trim_end_matches('/').to_owned())
}

/// Whether an object name is relative, `/`-separated, without empty, `.` or
/// `..` segments, backslashes or NUL bytes (as for every backend).
pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains(['\0', '\\'])
        && name
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_refuse_credentials() {
        let p =
            parse_url("s3://backups/site-1/gw?endpoint=http%3A%2F%2F127.0.0.1%3A9000&region=eu-1")
                .unwrap();
        assert_eq!(
            p,
            ParsedUrl {
                bucket: "backups".into(),
                prefix: "site-1/gw".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: Some("eu-1".into()),
                profile: None,
            }
        );
        let p = parse_url("s3://b?endpoint=https://s3.example.net/&profile=nas").unwrap();
        assert_eq!((p.prefix.as_str(), p.profile.as_deref()), ("", Some("nas")));

        for (url, reason) in [
            ("s3://AKID:s3cret@bucket/p", "do not belong in the URL"),
            (
                "s3://bucket/p?endpoint=https://AKID:s3cret@host",
                "do not belong in the endpoint",
            ),
            ("s3://bucket/p?endpoint=ftp://host", "must be an https://"),
            (
                "s3://bucket/p?secret=x",
                "unknown query parameter \"secret\"",
            ),
            ("s3://bucket/p?region=a&region=b", "given twice"),
            ("s3://bucket/p?region=", "has no value"),
            ("file:///x", "not an s3:// URL"),
            ("s3://bucket/a/../b", "'..'"),
            ("s3://bucket/a/./b", "'.'"),
            ("s3://bucket:9000/p", "endpoint=https://host:port"),
        ] {
            match parse_url(url) {
                Err(Error::InvalidUrl {
                    url: shown,
                    reason: got,
                }) => {
                    assert!(got.contains(reason), "{url}: {got}");
                    assert!(
                        !shown.contains("s3cret") && !got.contains("s3cret"),
                        "{shown} {got}"
                    );
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        assert_eq!(
            redact_url("s3://k:s@b/p?endpoint=https://k:s@h:1/x&region=r"),
            "s3://***@b/p?endpoint=https://***@h:1/x&region=r"
        );
    }

    #[test]
    fn prefixes_and_names() {
        assert_eq!(normalize_prefix("/a/b/").unwrap(), "a/b");
        assert_eq!(normalize_prefix("").unwrap(), "");
        assert!(normalize_prefix("a//b").is_err());
        assert!(normalize_prefix("a/../b").is_err());
        for bad in ["", "/a", "a/", "a//b", ".", "a/../b", "a\\b", "a\0b"] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        assert!(is_valid_name("site/gw-1.bkp"));
    }
}
