//! Certificate fingerprints: the SHA-256 of a DER certificate, written as
//! `sha256:` and 64 lower-case hex digits (what
//! `openssl x509 -outform DER | sha256sum` prints), so that an operator can
//! compare what `backup serve` printed with what a client sees, and a
//! configuration can pin a certificate.
//!
//! ```
//! use backup_http::fingerprint;
//!
//! let printed = fingerprint::of_der(b"a DER certificate");
//! assert!(printed.starts_with("sha256:"));
//! // The form `openssl x509 -fingerprint -sha256` prints is accepted too.
//! let openssl = printed[7..]
//!     .as_bytes()
//!     .chunks(2)
//!     .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
//!     .collect::<Vec<_>>()
//!     .join(":");
//! assert_eq!(
//!     fingerprint::parse(&format!("sha256 Fingerprint={openssl}")),
//!     fingerprint::parse(&printed)
//! );
//! ```
use sha2::{Digest, Sha256};

/// The fingerprint of a DER certificate: `sha256:` + 64 lower-case hex digits.
pub fn of_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The SHA-256 a fingerprint names. Accepts `sha256:<64 hex digits>` (either
/// case) and the colon-separated form `openssl x509 -fingerprint -sha256`
/// prints (`AB:CD:…`, 32 pairs), with or without its `sha256 Fingerprint=`
/// prefix. Surrounding white space is ignored.
pub fn parse(s: &str) -> Result<[u8; 32], String> {
    let text = s.trim();
    let bad = |why: &str| {
        format!(
            "{text:?} is not a SHA-256 certificate fingerprint ({why}): write sha256: followed by \
             64 hex digits, as `openssl x509 -in cert.pem -outform DER | sha256sum` prints them, \
             or paste the line `openssl x509 -in cert.pem -noout -fingerprint -sha256` prints"
        )
    };
    let hex_digits = if let Some(rest) = strip_prefix_ignore_case(text, "sha256:") {
        if rest.contains(':') {
            return Err(bad("after sha256: come 64 hex digits without colons"));
        }
        rest.to_string()
    } else {
        let pairs = strip_prefix_ignore_case(text, "sha256 fingerprint=").unwrap_or(text);
        let parts: Vec<&str> = pairs.split(':').collect();
        if parts.len() != 32 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad("expected 32 colon-separated pairs of hex digits"));
        }
        parts.concat()
    };
    if hex_digits.len() != 64 {
        return Err(bad(&format!(
            "{} hex digits instead of 64",
            hex_digits.chars().count()
        )));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(&hex_digits, &mut out).map_err(|_| bad("not hex digits"))?;
    Ok(out)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of the three bytes "abc" (FIPS 180-2, appendix B.1).
    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn abc_bytes() -> [u8; 32] {
        let mut b = [0u8; 32];
        hex::decode_to_slice(ABC, &mut b).unwrap();
        b
    }

    fn openssl_form(lower_hex: &str) -> String {
        lower_hex
            .as_bytes()
            .chunks(2)
            .map(|p| std::str::from_utf8(p).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":")
    }

    #[test]
    fn of_der_is_sha256_prefixed_lower_case_hex() {
        assert_eq!(of_der(b"abc"), format!("sha256:{ABC}"));
    }

    #[test]
    fn parse_accepts_the_printed_form_in_either_case() {
        assert_eq!(parse(&of_der(b"abc")), Ok(abc_bytes()));
        assert_eq!(
            parse(&format!("SHA256:{}", ABC.to_uppercase())),
            Ok(abc_bytes())
        );
        assert_eq!(parse(&format!("  sha256:{ABC}\n")), Ok(abc_bytes()));
    }

    #[test]
    fn parse_accepts_what_openssl_fingerprint_prints() {
        let pairs = openssl_form(ABC);
        assert_eq!(parse(&pairs), Ok(abc_bytes()));
        // OpenSSL 3 writes the digest name in lower case, 1.1 in upper case.
        assert_eq!(
            parse(&format!("sha256 Fingerprint={pairs}\n")),
            Ok(abc_bytes())
        );
        assert_eq!(
            parse(&format!("SHA256 Fingerprint={pairs}")),
            Ok(abc_bytes())
        );
    }

    #[test]
    fn parse_refuses_anything_else_with_a_message_saying_what_to_write() {
        let short = &ABC[..62];
        let pairs = openssl_form(ABC);
        for bad in [
            String::new(),
            ABC.to_string(),
            format!("sha256:{short}"),
            format!("sha256:{ABC}00"),
            format!("sha256:{}", ABC.replace('b', "g")),
            format!("sha1:{ABC}"),
            format!("sha256:{pairs}"),
            pairs[3..].to_string(),
            pairs.replace(':', "-"),
            format!("sha256:{}é", &ABC[..62]),
        ] {
            let e = parse(&bad).expect_err(&bad);
            assert!(e.contains("sha256: followed by 64 hex digits"), "{e}");
        }
    }
}
