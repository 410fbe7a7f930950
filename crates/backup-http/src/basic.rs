//! HTTP Basic credentials (RFC 7617) from an `Authorization` header.
use base64::Engine as _;
use zeroize::Zeroizing;

/// The login and password of an `Authorization: Basic …` header value, or
/// `None` when it is not Basic or not well formed.
///
/// The scheme is matched case-insensitively; the credentials are standard
/// base64 (padding optional). They are read as UTF-8 (RFC 7617's
/// `charset="UTF-8"`), and as Latin-1 when they are not valid UTF-8, which
/// is what older clients send. The login ends at the first `:`, so a
/// password may hold colons and a login may not.
pub fn parse_basic(value: &[u8]) -> Option<(String, Zeroizing<String>)> {
    let value = value.trim_ascii();
    let (scheme, rest) = value.split_at(value.iter().position(|b| *b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let token = rest.trim_ascii();
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD_PAD_INDIFFERENT
            .decode(token)
            .ok()?,
    );
    let text = match std::str::from_utf8(&decoded) {
        Ok(s) => Zeroizing::new(s.to_owned()),
        Err(_) => Zeroizing::new(decoded.iter().map(|b| char::from(*b)).collect()),
    };
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), Zeroizing::new(password.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    fn header(raw: &[u8]) -> Vec<u8> {
        format!("Basic {}", STANDARD.encode(raw)).into_bytes()
    }

    fn parsed(value: &[u8]) -> Option<(String, String)> {
        parse_basic(value).map(|(u, p)| (u, p.to_string()))
    }

    #[test]
    fn a_login_and_password_are_split_at_the_first_colon() {
        assert_eq!(
            parsed(&header(b"alice:s3cret")),
            Some(("alice".into(), "s3cret".into()))
        );
        // RFC 7617's own example.
        assert_eq!(
            parsed(b"Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Some(("Aladdin".into(), "open sesame".into()))
        );
        assert_eq!(
            parsed(&header(b"alice!cron:a:b:c")),
            Some(("alice!cron".into(), "a:b:c".into()))
        );
        assert_eq!(
            parsed(&header(b"alice:")),
            Some(("alice".into(), "".into()))
        );
        assert_eq!(parsed(&header(b":pw")), Some(("".into(), "pw".into())));
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_padding_and_spaces_are_tolerated() {
        let token = STANDARD.encode(b"bob:pw1");
        for value in [
            format!("basic {token}"),
            format!("BASIC {token}"),
            format!("Basic   {token}  "),
            format!("Basic {}", token.trim_end_matches('=')),
        ] {
            assert_eq!(
                parsed(value.as_bytes()),
                Some(("bob".into(), "pw1".into())),
                "{value}"
            );
        }
    }

    #[test]
    fn utf8_is_read_as_utf8_and_anything_else_as_latin1() {
        assert_eq!(
            parsed(&header("jürgen:pässwörd€".as_bytes())),
            Some(("jürgen".into(), "pässwörd€".into()))
        );
        // "jürgen:pä" in Latin-1: 0xFC and 0xE4 are not UTF-8 on their own.
        assert_eq!(
            parsed(&header(b"j\xfcrgen:p\xe4")),
            Some(("jürgen".into(), "pä".into()))
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for value in [
            &b""[..],
            b"Basic",
            b"Basic ",
            b"Bearer YWxpY2U6cHc=",
            b"Basicx YWxpY2U6cHc=",
            b"Basic not*base64!",
            b"Basic YWxpY2U6cHc=YWxp",
        ] {
            assert_eq!(parsed(value), None, "{}", String::from_utf8_lossy(value));
        }
        // Well-formed base64 without a colon in it.
        assert_eq!(parsed(&header(b"alice")), None);
    }
}
