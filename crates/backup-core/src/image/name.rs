//! Image names: `{prefix}{YYYYMMDDTHHMMSSZ}_{node}_{role}.bkp`.
use chrono::{DateTime, NaiveDateTime, Utc};

use crate::model::Role;

/// File extension of images.
pub(crate) const IMAGE_EXT: &str = ".bkp";
/// Suffix of the sidecar manifest object.
pub(crate) const SIDECAR_SUFFIX: &str = ".manifest";

/// The name of an image taken at `created` by `node` in `role`.
pub(crate) fn image_name(prefix: &str, created: DateTime<Utc>, node: &str, role: Role) -> String {
    format!(
        "{prefix}{}_{node}_{}{IMAGE_EXT}",
        created.format("%Y%m%dT%H%M%SZ"),
        role.as_str()
    )
}

/// The sidecar object of an image.
pub(crate) fn sidecar_name(image: &str) -> String {
    format!("{image}{SIDECAR_SUFFIX}")
}

/// The parts of an image name, if it is one of ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedName {
    /// Creation time.
    pub created: DateTime<Utc>,
    /// Node id.
    pub node: String,
    /// Role.
    pub role: String,
}

/// Parses the base name of an image (`prefix` must match).
pub(crate) fn parse_image_name(prefix: &str, name: &str) -> Option<ParsedName> {
    let base = name.rsplit('/').next()?;
    let rest = base.strip_prefix(prefix)?.strip_suffix(IMAGE_EXT)?;
    let (stamp, rest) = rest.split_once('_')?;
    let (node, role) = rest.rsplit_once('_')?;
    let created = NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()?
        .and_utc();
    Some(ParsedName {
        created,
        node: node.to_string(),
        role: role.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let t = Utc.with_ymd_and_hms(2026, 11, 22, 3, 4, 5).unwrap();
        let n = image_name("gw-", t, "gw_1", Role::Primary);
        assert_eq!(n, "gw-20261122T030405Z_gw_1_primary.bkp");
        let p = parse_image_name("gw-", &n).unwrap();
        assert_eq!(
            (p.created, p.node.as_str(), p.role.as_str()),
            (t, "gw_1", "primary")
        );
        let later = image_name(
            "gw-",
            t + chrono::Duration::seconds(1),
            "gw_1",
            Role::Primary,
        );
        assert!(later > n);
        assert!(parse_image_name("other-", &n).is_none());
        assert!(parse_image_name("gw-", "gw-garbage.bkp").is_none());
    }
}
