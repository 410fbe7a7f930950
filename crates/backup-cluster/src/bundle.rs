//! The bundle's tar framing: headers, padding, and the byte offset of each
//! member's data, computed before a byte is written so that the manifest
//! (the first member) can name them.
use backup_core::cluster::ClusterManifest;

/// Tar block size.
pub(crate) const BLOCK: u64 = 512;

/// Names longer than this get a GNU long-name record first.
const NAME_FIELD: usize = 100;

/// Bytes of padding after `size` bytes of member data.
pub(crate) fn padding(size: u64) -> u64 {
    (BLOCK - size % BLOCK) % BLOCK
}

/// The header block(s) of a regular member `name` of `size` bytes: a GNU
/// long-name record first when the name exceeds the 100-byte field.
pub(crate) fn header(name: &str, size: u64, mtime: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 * BLOCK as usize);
    if name.len() > NAME_FIELD {
        let mut long = tar::Header::new_gnu();
        long.as_gnu_mut().expect("a GNU header").name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(tar::EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_mtime(0);
        long.set_cksum();
        out.extend_from_slice(long.as_bytes());
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len() + padding(name.len() as u64 + 1) as usize, 0);
    }
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_gnu_mut().expect("a GNU header").name;
    let cut = name.len().min(NAME_FIELD);
    field[..cut].copy_from_slice(&name.as_bytes()[..cut]);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o640);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out
}

/// Length of [`header`]'s output for `name`.
fn header_len(name: &str) -> u64 {
    if name.len() > NAME_FIELD {
        2 * BLOCK + name.len() as u64 + 1 + padding(name.len() as u64 + 1)
    } else {
        BLOCK
    }
}

/// Sets the offset of every node that has an image (in manifest order,
/// which is the members' order) and returns the manifest's JSON. The
/// offsets depend on the manifest's length and the length on the offsets,
/// so this repeats until the manifest's block count no longer changes.
pub(crate) fn layout(manifest: &mut ClusterManifest) -> Vec<u8> {
    let mut blocks = 1;
    loop {
        let mut at = header_len(backup_core::cluster::CLUSTER_MANIFEST) + blocks * BLOCK;
        for node in manifest.nodes.iter_mut() {
            match &node.image {
                Some(image) => {
                    at += header_len(image);
                    node.offset = Some(at);
                    at += node.size + padding(node.size);
                }
                None => node.offset = None,
            }
        }
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        let needed = (json.len() as u64).div_ceil(BLOCK).max(1);
        if needed == blocks {
            return json;
        }
        blocks = needed;
    }
}

/// Total length of the bundle whose manifest is `json`.
pub(crate) fn total_len(manifest: &ClusterManifest, json: &[u8]) -> u64 {
    let mut at = header_len(backup_core::cluster::CLUSTER_MANIFEST)
        + json.len() as u64
        + padding(json.len() as u64);
    for node in &manifest.nodes {
        if let Some(image) = &node.image {
            at += header_len(image) + node.size + padding(node.size);
        }
    }
    at + 2 * BLOCK
}

#[cfg(test)]
mod tests {
    use super::*;
    use backup_core::cluster::BundleNode;
    use backup_core::Role;
    use std::io::Read;

    fn node(name: &str, image: Option<String>, size: u64) -> BundleNode {
        BundleNode {
            name: name.into(),
            role: Role::Data,
            outcome: "success".into(),
            error: None,
            image,
            size,
            sha256: None,
            offset: None,
            order: 2,
        }
    }

    /// Writes a bundle as the coordinator does, from in-memory images.
    fn write(manifest: &mut ClusterManifest, images: &[Vec<u8>]) -> Vec<u8> {
        let json = layout(manifest);
        let mut out = header(backup_core::cluster::CLUSTER_MANIFEST, json.len() as u64, 0);
        out.extend_from_slice(&json);
        out.resize(out.len() + padding(json.len() as u64) as usize, 0);
        let mut images = images.iter();
        for n in &manifest.nodes {
            if let Some(name) = &n.image {
                let data = images.next().unwrap();
                out.extend(header(name, data.len() as u64, 0));
                out.extend_from_slice(data);
                out.resize(out.len() + padding(data.len() as u64) as usize, 0);
            }
        }
        out.resize(out.len() + 2 * BLOCK as usize, 0);
        assert_eq!(out.len() as u64, total_len(manifest, &json));
        out
    }

    #[test]
    fn offsets_point_at_each_members_data_for_every_edge_size_and_a_long_name() {
        let long = format!("{}_data-9_data.bkp", "p".repeat(120));
        for sizes in [[0u64, 1, 511], [512, 513, 1024], [100_000, 7, 0]] {
            let images: Vec<Vec<u8>> = sizes
                .iter()
                .enumerate()
                .map(|(i, s)| (0..*s).map(|b| (b as u8).wrapping_add(i as u8)).collect())
                .collect();
            let mut manifest = ClusterManifest {
                cluster: "edge".into(),
                created: chrono::Utc::now(),
                outcome: "partial".into(),
                nodes: vec![
                    node("ctl", Some("ctl_control.bkp".into()), sizes[0]),
                    node("gone", None, 0),
                    node("d1", Some(long.clone()), sizes[1]),
                    node("d2", Some("d2_data.bkp".into()), sizes[2]),
                ],
            };
            let bundle = write(&mut manifest, &images);
            // Offsets as the manifest in the bundle states them.
            let mut archive = tar::Archive::new(&bundle[..]);
            let mut entries = archive.entries().unwrap();
            let mut first = entries.next().unwrap().unwrap();
            assert_eq!(
                first.path().unwrap().to_str().unwrap(),
                backup_core::cluster::CLUSTER_MANIFEST
            );
            let mut text = String::new();
            first.read_to_string(&mut text).unwrap();
            let stored: ClusterManifest = serde_json::from_str(&text).unwrap();
            assert_eq!(stored, manifest);
            let mut members = 0;
            for (entry, (n, data)) in entries.zip(
                stored
                    .nodes
                    .iter()
                    .filter(|n| n.image.is_some())
                    .zip(&images),
            ) {
                let entry = entry.unwrap();
                assert_eq!(entry.path().unwrap().to_str(), n.image.as_deref());
                assert_eq!(entry.raw_file_position(), n.offset.unwrap());
                let at = n.offset.unwrap() as usize;
                assert_eq!(&bundle[at..at + data.len()], &data[..]);
                members += 1;
            }
            assert_eq!(members, 3);
        }
    }
}
