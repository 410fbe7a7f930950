//! HTTP Basic credentials (RFC 7617). Provisional: replaced by the users work.
use base64::Engine as _;
use zeroize::Zeroizing;

/// The user and password of an `Authorization: Basic …` value.
pub fn parse_basic(value: &[u8]) -> Option<(String, Zeroizing<String>)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?,
    );
    let text: String = match std::str::from_utf8(&decoded) {
        Ok(s) => s.to_string(),
        Err(_) => decoded.iter().map(|&b| b as char).collect(),
    };
    let text = Zeroizing::new(text);
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), Zeroizing::new(pass.to_string())))
}
