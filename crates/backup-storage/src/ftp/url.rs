//! `ftp://` and `ftps://` URLs: parsing, and the form shown in messages.

use super::core::PASSWORD_VAR;
use crate::url::{parse_with_authority, percent_decode_utf8, url_host, url_user, written_userinfo};

/// What an `ftp://` or `ftps://` URL says.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct FtpUrl {
    pub(super) tls: bool,
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) user: String,
    pub(super) dir: String,
}

pub(super) fn parse_url(url: &str) -> std::result::Result<FtpUrl, String> {
    const FORM: &str = "write ftp://USER@HOST[:PORT]/PATH (or ftps:// for explicit TLS)";
    let parsed = parse_with_authority(url, FORM)?;
    let tls = match parsed.scheme() {
        "ftp" => false,
        "ftps" => true,
        _ => return Err(format!("not an FTP URL; {FORM}")),
    };
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(
            "an FTP URL takes no query or fragment; percent-encode '?' and '#' in the path"
                .to_owned(),
        );
    }
    if written_userinfo(url).is_some_and(|userinfo| userinfo.contains(':')) {
        return Err(format!(
            "the URL contains a password, which would end up in logs and configuration dumps; \
             remove it and put it in ~/.netrc (machine HOST login USER password …) or {PASSWORD_VAR}"
        ));
    }
    let user = url_user(&parsed)?;
    if user.is_empty() {
        return Err(format!(
            "the URL names no FTP user; {FORM} (the password comes from ~/.netrc or {PASSWORD_VAR})"
        ));
    }
    let host = url_host(&parsed).ok_or_else(|| format!("the URL names no host; {FORM}"))?;
    // ftp:// is a scheme the URL standard knows, so the parser drops its
    // default port 21; ftps:// (explicit TLS) uses it too.
    let port = parsed.port().unwrap_or(21);
    let path = parsed.path();
    let dir = percent_decode_utf8(path.strip_prefix('/').unwrap_or(path), "path")?;
    if [&user, &dir].iter().any(|s| s.contains(['\r', '\n', '\0'])) {
        return Err("the user and path may not contain line breaks or NUL".to_owned());
    }
    Ok(FtpUrl {
        tls,
        host,
        port,
        user,
        dir: normalize_dir(&dir),
    })
}

/// A directory without trailing '/' (but "/" stays the root).
pub(super) fn normalize_dir(dir: &str) -> String {
    let trimmed = dir.trim_end_matches('/');
    if trimmed.is_empty() && dir.starts_with('/') {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ftp::FtpStorage;
    use crate::Error;

    #[test]
    fn urls() {
        let url = parse_url("ftp://backup@nas.example:2121/backups/gw").unwrap();
        assert_eq!(
            url,
            FtpUrl {
                tls: false,
                host: "nas.example".into(),
                port: 2121,
                user: "backup".into(),
                dir: "backups/gw".into(),
            }
        );
        let url = parse_url("FTPS://backup@nas.example").unwrap();
        assert!(url.tls);
        assert_eq!(
            (url.port, url.dir.as_str()),
            (21, ""),
            "explicit TLS: port 21"
        );
        let url = parse_url("ftp://backup@nas/").unwrap();
        assert_eq!(url.dir, "");
        let url = parse_url("ftp://b%40corp@[::1]:21/%2Fsrv/my%20backups/").unwrap();
        assert_eq!(url.user, "b@corp");
        assert_eq!(url.host, "::1");
        assert_eq!(url.dir, "/srv/my backups", "%2F makes the path absolute");
        let url = parse_url("ftp://backup@[::1]/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 21));

        for (bad, why) in [
            ("ftp://backup:s3cret@nas/x", "password"),
            ("ftp://backup:@nas/x", "password"),
            ("ftp://nas/x", "no FTP user"),
            ("ftp://@nas/x", "no FTP user"),
            ("ftp://backup@/x", "no host"),
            ("ftp://backup@nas:0/x", "port"),
            ("ftp://backup@nas:99999/x", "port"),
            ("ftp://backup@nas:ftp/x", "port"),
            ("ftp://backup@nas/x?y", "query"),
            ("ftp://backup@nas/a%0Ab", "line breaks"),
            ("ftp://backup@nas/a%zz", "two hex digits"),
            ("ftp://backup@[::1/x", "']'"),
            ("sftp://backup@nas/x", "not an FTP URL"),
            ("ftp://backup@nas/srv/../etc", "'..' segment"),
        ] {
            let err = parse_url(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_repeating_it() {
        let err = FtpStorage::from_url("ftp://backup:s3cret@nas:21/x").unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(!format!("{err:?}").contains("s3cret"));
        assert!(
            msg.contains("~/.netrc") && msg.contains(PASSWORD_VAR),
            "{msg}"
        );
    }
}
