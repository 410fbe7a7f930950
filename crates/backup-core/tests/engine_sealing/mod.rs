//! `encrypt` reads a payload as restore would before sealing it; `--rehash`
//! records an edit in the manifest; and an image sealed by other means is
//! refused by verify exactly when restore refuses it.
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use backup_core::{CreateOptions, Error, KeyFile, KeySource, Keyring, RestoreOptions};
use backup_core::{DigestScheme, EntryDigest, EntryKind, Manifest, Outcome};

use super::{demo, engine, under};

/// One tar entry of a payload, as read.
#[derive(Clone)]
pub(crate) struct Raw {
    header: tar::Header,
    pub(crate) path: Vec<u8>,
    link: Option<Vec<u8>>,
    pub(crate) data: Vec<u8>,
}

pub(crate) fn read_payload(path: &Path) -> Result<Vec<Raw>> {
    let gz = flate2::read::MultiGzDecoder::new(std::fs::File::open(path)?);
    let mut archive = tar::Archive::new(gz);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut data = Vec::new();
        let path = entry.path_bytes().into_owned();
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let header = entry.header().clone();
        entry.read_to_end(&mut data)?;
        out.push(Raw {
            header,
            path,
            link,
            data,
        });
    }
    Ok(out)
}

pub(crate) fn write_payload(entries: &[Raw], out: &Path) -> Result<()> {
    let gz = flate2::write::GzEncoder::new(std::fs::File::create(out)?, Default::default());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        let mut h = e.header.clone();
        let path = Path::new(std::ffi::OsStr::from_bytes(&e.path));
        match &e.link {
            Some(l) => b.append_link(&mut h, path, Path::new(std::ffi::OsStr::from_bytes(l)))?,
            None => {
                h.set_size(e.data.len() as u64);
                b.append_data(&mut h, path, &e.data[..])?
            }
        }
    }
    b.into_inner()?.finish()?;
    Ok(())
}

/// The manifest of `entries` with `component`'s record recomputed from them,
/// the way the engine digests a component (so the crafted payload's only
/// flaw is the one the test put in).
pub(crate) fn with_fresh_digest(entries: &mut [Raw], component: &str) -> Result<()> {
    with_fresh_digest_as(entries, component, DigestScheme::PerEntry)
}

/// [`with_fresh_digest`] as payload format `scheme` digests a component.
fn with_fresh_digest_as(entries: &mut [Raw], component: &str, scheme: DigestScheme) -> Result<()> {
    let prefix = format!("components/{component}/");
    let mut digest = EntryDigest::new(scheme);
    for e in entries.iter() {
        let Some(rel) = e.path.strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        let rel = rel.strip_suffix(b"/").unwrap_or(rel);
        let kind = match e.header.entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => EntryKind::Hardlink,
            _ => EntryKind::File,
        };
        let link = match (kind, &e.link) {
            (EntryKind::Hardlink, Some(l)) => l.strip_prefix(prefix.as_bytes()).unwrap_or(l),
            (_, Some(l)) => &l[..],
            _ => b"",
        };
        digest.entry(
            rel,
            kind,
            e.header.mode()?,
            e.header.mtime()?,
            link,
            e.data.len() as u64,
        );
        digest.content(&e.data);
    }
    let last = entries.last_mut().context("a manifest")?;
    ensure!(last.path == b"manifest.json");
    let mut manifest: Manifest = serde_json::from_slice(&last.data)?;
    let record = manifest
        .components
        .iter_mut()
        .find(|r| r.name == component)
        .context("the component's record")?;
    record.entries = digest.entries();
    record.bytes = digest.bytes();
    record.sha256 = digest.hex();
    last.data = serde_json::to_vec_pretty(&manifest)?;
    Ok(())
}

/// Seals a payload with the appliance's key straight through the crypto
/// layer, checking nothing: how a hostile or damaged image reaches us.
pub(crate) fn seal_unchecked(state_dir: &Path, payload: &Path, out: &Path) -> Result<()> {
    let mk = KeyFile::in_state_dir(state_dir)
        .master_key()?
        .context("a master key")?;
    let slot = Keyring::load(state_dir)?.context("a keyring")?.keyslot()?;
    let mut w = backup_crypto::EncryptWriter::new(std::fs::File::create(out)?, &mk, &slot, 0)?;
    w.write_all(&std::fs::read(payload)?)?;
    w.finish()?.sync_all()?;
    Ok(())
}

fn entry(kind: tar::EntryType, path: String, link: Option<&str>, data: &[u8]) -> Raw {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_size(0);
    header.set_uid(0);
    header.set_gid(0);
    Raw {
        header,
        path: path.into_bytes(),
        link: link.map(|l| l.as_bytes().to_vec()),
        data: data.to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypt_refuses_what_restore_would_refuse_and_rehash_vouches_for_an_edit() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let plain = d.path().join("payload.tar.gz");
    e.decrypt(&report.image, &plain).await?;

    // Junk is not sealed, and nothing is left at the output path.
    let junk = d.path().join("junk.tar.gz");
    std::fs::write(&junk, b"this is not a payload at all\n".repeat(100))?;
    let out = d.path().join("junk.bkp");
    let err = e.encrypt(&junk, &out).await.unwrap_err();
    assert!(err.to_string().contains("not sealed"), "{err}");
    assert!(!out.exists());

    // An edited payload: refused, with the way out named.
    let mut entries = read_payload(&plain)?;
    let conf_rel = under(Path::new(""), &demo.config_dir().join("gateway.conf"));
    let conf_path = format!("components/config/{}", conf_rel.display()).into_bytes();
    let conf = entries
        .iter_mut()
        .find(|x| x.path == conf_path)
        .context("gateway.conf in the payload")?;
    conf.data = b"hostname = edited\n".to_vec();
    let edited = d.path().join("edited.tar.gz");
    write_payload(&entries, &edited)?;
    let out = d.path().join("edited.bkp");
    let err = e.encrypt(&edited, &out).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("does not match its manifest") && msg.contains("--rehash"),
        "{msg}"
    );
    assert!(matches!(err, Error::Input(_)), "{err:?}");
    assert!(!out.exists());

    // --rehash seals it; it verifies and restores with the edit.
    e.encrypt_rehash(&edited, &out).await?;
    let image = out.as_path();
    let verified = e.verify(image).await?;
    assert_eq!(verified.manifest.outcome, Outcome::Success);
    let target = d.path().join("t");
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    e.restore(image, &opts).await?;
    assert_eq!(
        std::fs::read(under(&target, &demo.config_dir().join("gateway.conf")))?,
        b"hostname = edited\n"
    );

    // --rehash does not launder an unsafe payload.
    let etc_rel = under(Path::new(""), &demo.config_dir());
    let mut evil = read_payload(&plain)?;
    let manifest = evil.pop().context("manifest")?;
    evil.push(entry(
        tar::EntryType::Symlink,
        format!("components/config/{}/link", etc_rel.display()),
        Some("/tmp"),
        b"",
    ));
    evil.push(entry(
        tar::EntryType::Regular,
        format!("components/config/{}/link/pwned", etc_rel.display()),
        None,
        b"pwned\n",
    ));
    evil.push(manifest);
    let evil_path = d.path().join("evil.tar.gz");
    write_payload(&evil, &evil_path)?;
    let out = d.path().join("evil.bkp");
    let err = e.encrypt_rehash(&evil_path, &out).await.unwrap_err();
    assert!(err.to_string().contains("through the symlink"), "{err}");
    assert!(!out.exists());
    Ok(())
}

/// Images whose manifests match their entries, each with one flaw restore
/// refuses: verify refuses every one of them with restore's own words.
#[tokio::test(flavor = "multi_thread")]
async fn verify_refuses_exactly_what_restore_refuses() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let plain = d.path().join("payload.tar.gz");
    e.decrypt(&report.image, &plain).await?;
    let original = read_payload(&plain)?;
    let etc_rel = under(Path::new(""), &demo.config_dir());
    let comp = format!("components/config/{}", etc_rel.display());
    let root_entry = original
        .iter()
        .position(|x| x.path.strip_suffix(b"/").unwrap_or(&x.path) == comp.as_bytes())
        .context("the root's entry")?;
    use tar::EntryType as T;

    type Craft = Box<dyn Fn(&mut Vec<Raw>)>;
    let comp2 = comp.clone();
    let comp3 = comp.clone();
    let comp4 = comp.clone();
    let cases: Vec<(&str, Craft)> = vec![
        (
            // What a backup of a root that is a symlink used to write.
            "the root recorded as a symlink, its tree under it",
            Box::new(move |es: &mut Vec<Raw>| {
                let root = &mut es[root_entry];
                root.header.set_entry_type(T::Symlink);
                root.link = Some(b"/data/etc".to_vec());
                root.path = root.path.strip_suffix(b"/").unwrap_or(&root.path).to_vec();
            }),
        ),
        (
            "a file through a symlink of the archive",
            Box::new(move |es: &mut Vec<Raw>| {
                let m = es.pop().unwrap();
                es.push(entry(T::Symlink, format!("{comp2}/l"), Some("/tmp"), b""));
                es.push(entry(T::Regular, format!("{comp2}/l/x"), None, b"x"));
                es.push(m);
            }),
        ),
        (
            "a hard link to a later file",
            Box::new(move |es: &mut Vec<Raw>| {
                let m = es.pop().unwrap();
                es.push(entry(
                    T::Link,
                    format!("{comp3}/h"),
                    Some(&format!("{comp3}/later")),
                    b"",
                ));
                es.push(entry(T::Regular, format!("{comp3}/later"), None, b"x"));
                es.push(m);
            }),
        ),
        (
            "the same path twice",
            Box::new(move |es: &mut Vec<Raw>| {
                let m = es.pop().unwrap();
                es.push(entry(T::Regular, format!("{comp4}/twice"), None, b"1"));
                es.push(entry(T::Regular, format!("{comp4}/twice"), None, b"2"));
                es.push(m);
            }),
        ),
    ];
    for (i, (case, craft)) in cases.iter().enumerate() {
        let mut entries = original.clone();
        craft(&mut entries);
        with_fresh_digest(&mut entries, "config")?;
        let payload = d.path().join(format!("crafted-{i}.tar.gz"));
        write_payload(&entries, &payload)?;
        let image: PathBuf = d.path().join(format!("crafted-{i}.bkp"));
        seal_unchecked(&demo.config.appliance.state_dir, &payload, &image)?;
        let image = image.as_path();

        let verified = e.verify(image).await;
        let target = d.path().join(format!("t-{i}"));
        let mut opts = RestoreOptions::default();
        opts.target = Some(target.clone());
        let restored = e.restore(image, &opts).await;
        let (Err(v), Err(r)) = (&verified, &restored) else {
            panic!("{case}: verify {verified:?}, restore {restored:?}: they must both refuse");
        };
        assert!(matches!(v, Error::UnsafeArchive { .. }), "{case}: {v:?}");
        assert_eq!(v.to_string(), r.to_string(), "{case}");
    }
    Ok(())
}

/// A stored image cut short is reported as truncated, with both sizes, by
/// verify and restore (not as tampering), and `list` marks it.
#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_image_says_truncated_with_both_sizes() -> Result<()> {
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let stored = demo.store().join(&report.image);
    let full = std::fs::read(&stored)?;
    // Inside a chunk: the crypto layer alone can only call that tampering.
    let cut = full.len() - 5000;
    std::fs::write(&stored, &full[..cut])?;
    let want = format!("truncated: {cut} of {} bytes", full.len());

    let err = e.verify(&report.image).await.unwrap_err();
    assert!(err.to_string().contains(&want), "{err}");
    assert!(matches!(err, Error::ImageSize { .. }), "{err:?}");
    let mut opts = RestoreOptions::default();
    opts.target = Some(d.path().join("t"));
    let err = e.restore(&report.image, &opts).await.unwrap_err();
    assert!(err.to_string().contains(&want), "{err}");

    let listed = e.list().await?;
    let summary = listed
        .iter()
        .find(|s| s.name == report.image)
        .context("listed")?;
    assert!(summary.size_mismatch);
    assert_eq!(summary.expected_size, Some(full.len() as u64));
    assert_eq!(summary.size, cut as u64);

    // Longer than written: said as such, not as truncation.
    let mut longer = full.clone();
    longer.extend_from_slice(b"appended");
    std::fs::write(&stored, &longer)?;
    let err = e.verify(&report.image).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&format!(
            "{} bytes, but {} were written",
            longer.len(),
            full.len()
        )),
        "{msg}"
    );
    // The intact image is fine and not marked.
    std::fs::write(&stored, &full)?;
    e.verify(&report.image).await?;
    assert!(!e.list().await?.iter().any(|s| s.size_mismatch));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_image_of_payload_format_1_still_verifies_and_restores() -> Result<()> {
    // Images written before payload format 2 hash content bytes into the
    // component's digest, not each entry's content hash: they stay readable.
    let (d, demo) = demo()?;
    let e = engine(&demo.config)?;
    let report = e.create(&CreateOptions::default()).await?;
    let plain = d.path().join("payload.tar.gz");
    e.decrypt(&report.image, &plain).await?;
    let mut entries = read_payload(&plain)?;
    let first = entries.first_mut().context("backup.json")?;
    ensure!(first.path == b"backup.json");
    let mut info: serde_json::Value = serde_json::from_slice(&first.data)?;
    assert_eq!(info["format"], 2);
    info["format"] = 1.into();
    first.data = serde_json::to_vec_pretty(&info)?;
    let manifest: Manifest =
        serde_json::from_slice(&entries.last().context("manifest.json")?.data)?;
    let seal = |entries: &[Raw], name: &str| -> Result<PathBuf> {
        let payload = d.path().join(format!("{name}.tar.gz"));
        write_payload(entries, &payload)?;
        let image = d.path().join(format!("{name}.bkp"));
        seal_unchecked(&demo.config.appliance.state_dir, &payload, &image)?;
        Ok(image)
    };

    // Format 1 with format 2's digests: refused, a digest of one format
    // never passes for the other.
    let mixed = seal(&entries, "mixed")?;
    let err = e.verify(mixed.as_path()).await.unwrap_err();
    assert!(
        err.to_string().contains("does not match its manifest"),
        "{err}"
    );

    // A format this engine does not know: refused, saying what to do.
    let mut future = entries.clone();
    future[0].data = serde_json::to_vec_pretty(&{
        let mut v = info.clone();
        v["format"] = 3.into();
        v
    })?;
    let err = e
        .verify(seal(&future, "format-3")?.as_path())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("payload format 3 is not supported")
            && msg.contains("use a newer backup tool"),
        "{msg}"
    );

    // Format 1 with its own digests: verified and restored.
    for record in &manifest.components {
        if record.outcome == Outcome::Success {
            with_fresh_digest_as(&mut entries, &record.name, DigestScheme::Stream)?;
        }
    }
    let old = seal(&entries, "format-1")?;
    let verified = e.verify(old.as_path()).await?;
    assert_eq!(verified.manifest.outcome, Outcome::Success);
    assert_eq!(verified.info.format, 1);
    let target = d.path().join("t");
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    e.restore(old.as_path(), &opts).await?;
    let conf = demo.config_dir().join("gateway.conf");
    assert_eq!(std::fs::read(under(&target, &conf))?, std::fs::read(&conf)?);
    Ok(())
}
