//! Download links the service signs itself, for storages that cannot
//! presign: `GET /dl/{name}?exp=…&sig=…`, an HMAC-SHA-256 of the image's
//! name and expiry under a link key kept in the state directory.
//! [`rotate_link_key`] (`backup key rotate-links`) revokes every link issued.
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The link key's file, under the state directory.
pub const LINK_KEY_FILE: &str = "http/link.key";

/// The longest a link may live.
pub const MAX_LINK_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// The default lifetime of a link.
pub const DEFAULT_LINK_LIFETIME: Duration = Duration::from_secs(6 * 3600);

/// The link key of a state directory, read at each use (so a rotation by
/// another process takes effect at once) and made on first use.
#[derive(Debug, Clone)]
pub(crate) struct LinkKey {
    path: PathBuf,
}

impl LinkKey {
    pub(crate) fn in_state_dir(state_dir: &Path) -> LinkKey {
        LinkKey {
            path: state_dir.join(LINK_KEY_FILE),
        }
    }

    fn key(&self, create: bool) -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => hex::decode(text.trim())
                .map(zeroize::Zeroizing::new)
                .map_err(|e| {
                    std::io::Error::other(format!("{} is damaged: {e}", self.path.display()))
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                write_new_key(&self.path)?;
                self.key(false)
            }
            Err(e) => Err(e),
        }
    }

    fn mac(key: &[u8], name: &str, exp: i64) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(b"backup-link-v1\n");
        mac.update(name.as_bytes());
        mac.update(b"\n");
        mac.update(exp.to_string().as_bytes());
        mac
    }

    /// The signature of a link to `name` valid until `exp` (Unix seconds).
    #[cfg(test)]
    pub(crate) fn sign(&self, name: &str, exp: i64) -> std::io::Result<String> {
        Ok(Self::signature(&self.key(true)?, name, exp))
    }

    /// The signature of a link to `name` until `exp` under `key`.
    fn signature(key: &[u8], name: &str, exp: i64) -> String {
        hex::encode(Self::mac(key, name, exp).finalize().into_bytes())
    }

    /// Whether `sig` is the signature of a link to `name` until `exp`
    /// (constant-time comparison; expiry is the caller's check).
    pub(crate) fn verify(&self, name: &str, exp: i64, sig: &str) -> bool {
        let Ok(key) = self.key(false) else {
            return false;
        };
        let Ok(given) = hex::decode(sig) else {
            return false;
        };
        let expected = Self::mac(&key, name, exp).finalize().into_bytes();
        expected.as_slice().ct_eq(&given).into()
    }
}

/// The service's own download links (`GET /dl/{name}?exp=…&sig=…`), for
/// a storage that cannot presign: give it to
/// [`backup_core::Engine::links_signed`]. The key is read once, at the
/// first link: a signer serves one request or command.
pub struct SignedLinks {
    key: LinkKey,
    base_url: String,
    loaded: std::sync::Mutex<Option<zeroize::Zeroizing<Vec<u8>>>>,
}

impl std::fmt::Debug for SignedLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedLinks")
            .field("key", &self.key)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl SignedLinks {
    /// Links signed under `state_dir`'s link key, served at `base_url`
    /// (`https://gw.example:8443`, plus the prefix the router is mounted
    /// under, if any).
    pub fn new(state_dir: &Path, base_url: &str) -> SignedLinks {
        SignedLinks {
            key: LinkKey::in_state_dir(state_dir),
            base_url: base_url.trim_end_matches('/').to_string(),
            loaded: std::sync::Mutex::new(None),
        }
    }
}

impl backup_core::LinkSigner for SignedLinks {
    fn url(&self, image: &str, expires: DateTime<Utc>) -> backup_core::Result<String> {
        let exp = expires.timestamp();
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.is_none() {
            *loaded = Some(self.key.key(true).map_err(|e| backup_core::Error::Io {
                what: format!("reading the link key {}", self.key.path.display()),
                source: e,
            })?);
        }
        let key = loaded.as_deref().expect("loaded above");
        let sig = LinkKey::signature(key, image, exp);
        Ok(format!(
            "{}/dl/{}?exp={exp}&sig={sig}",
            self.base_url,
            encode_path(image)
        ))
    }
}

/// A path percent-encoded, `/` kept (each segment as RFC 3986 unreserved
/// characters or `%XX`).
pub(crate) fn encode_path(name: &str) -> String {
    name.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Download links as CSV: `image,node,role,created,size,url,expiry`.
pub fn links_csv(links: &[backup_core::DownloadLink]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut text = String::from("image,node,role,created,size,url,expiry\n");
    for l in links {
        let created = l.created.map(|c| c.to_rfc3339()).unwrap_or_default();
        let row = [
            l.image.as_str(),
            &l.node,
            &l.role,
            &created,
            &l.size.to_string(),
            &l.url,
            &l.expires.to_rfc3339(),
        ];
        text.push_str(&row.iter().map(|f| field(f)).collect::<Vec<_>>().join(","));
        text.push('\n');
    }
    text
}

/// Replaces the link key of `state_dir`: every link the service issued
/// stops working.
pub fn rotate_link_key(state_dir: &Path) -> std::io::Result<()> {
    write_new_key(&state_dir.join(LINK_KEY_FILE))
}

fn write_new_key(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().expect("the key file is in a directory");
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(&mut key[..]).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(hex::encode(&key[..]).as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A link lifetime: a positive number with a unit `s`, `m`, `h` or `d`,
/// at most 7 days.
pub fn parse_lifetime(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || {
        format!("{text:?} is not a lifetime: a positive number with s, m, h or d (6h, 90m, 7d), at most 7 days")
    };
    let unit_at = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(unit_at);
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .ok_or_else(bad)?;
    if secs == 0 || secs > MAX_LINK_LIFETIME.as_secs() {
        return Err(bad());
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_take_a_unit_and_stop_at_a_week() {
        assert_eq!(parse_lifetime("6h"), Ok(Duration::from_secs(6 * 3600)));
        assert_eq!(parse_lifetime("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_lifetime("7d"), Ok(MAX_LINK_LIFETIME));
        for bad in ["", "h", "0h", "8d", "-1h", "6", "6w", "1.5h", "169h"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_signature_holds_for_its_name_and_expiry_only_and_dies_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let key = LinkKey::in_state_dir(dir.path());
        let sig = key.sign("gw.bkp", 1_900_000_000).unwrap();
        assert!(key.verify("gw.bkp", 1_900_000_000, &sig));
        assert!(!key.verify("gw2.bkp", 1_900_000_000, &sig));
        assert!(!key.verify("gw.bkp", 1_900_000_001, &sig));
        assert!(!key.verify("gw.bkp", 1_900_000_000, &sig[1..]));
        assert!(!key.verify("gw.bkp", 1_900_000_000, "zz"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(LINK_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        rotate_link_key(dir.path()).unwrap();
        assert!(
            !key.verify("gw.bkp", 1_900_000_000, &sig),
            "rotation revokes"
        );
    }
}
