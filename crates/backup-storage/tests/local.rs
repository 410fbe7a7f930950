//! Behaviour of the local-directory backend that the conformance suite cannot
//! see: what lies on disk, names, URLs.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use backup_storage::{
    open_url, Error, LocalStorage, OpenOptions, PutMode, PutOptions, Storage, StorageExt,
};
use bytes::Bytes;

/// Every entry below `dir`, hidden ones included, as sorted relative paths.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(
                path.strip_prefix(base)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
            if path.is_dir() && !path.is_symlink() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn is_temp(path: &str) -> bool {
    path.rsplit('/').next().is_some_and(|f| {
        f.starts_with(".gw.bkp.partial-") && f.len() == ".gw.bkp.partial-".len() + 16
    })
}

#[tokio::test]
async fn an_upload_lives_in_a_hidden_temporary_file_until_complete() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;

    let mut up = store
        .put_opts("site/gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    up.write(Bytes::from_static(b"partial image")).await?;
    let on_disk = tree(dir.path());
    assert_eq!(on_disk.len(), 2, "{on_disk:?}");
    assert_eq!(on_disk[0], "site");
    assert!(is_temp(&on_disk[1]), "{on_disk:?}");
    assert_eq!(fs::read(dir.path().join(&on_disk[1]))?, b"partial image");
    // Invisible through the trait.
    assert!(matches!(
        store.head("site/gw.bkp").await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(store.list("", false).await?, Default::default());
    assert_eq!(
        store.list("", true).await?,
        Default::default(),
        "a directory with only a temp file is no prefix"
    );
    assert_eq!(store.list("site/", false).await?, Default::default());

    let meta = up.complete().await?;
    assert_eq!((meta.name.as_str(), meta.size), ("site/gw.bkp", 13));
    assert!(meta.modified.is_some());
    assert_eq!(tree(dir.path()), ["site", "site/gw.bkp"]);
    Ok(())
}

#[tokio::test]
async fn dropped_and_aborted_uploads_leave_no_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;

    let mut up = store.put_opts("gw.bkp", PutOptions::default()).await?;
    up.write(Bytes::from(vec![1; 100_000])).await?;
    assert!(is_temp(&tree(dir.path())[0]));
    drop(up);
    assert_eq!(tree(dir.path()), Vec::<String>::new());

    let mut up = store.put_opts("gw.bkp", PutOptions::default()).await?;
    up.write(Bytes::from(vec![1; 100_000])).await?;
    up.abort().await?;
    assert_eq!(tree(dir.path()), Vec::<String>::new());
    Ok(())
}

#[tokio::test]
async fn a_lost_create_race_leaves_only_the_winner() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    let mut first = store
        .put_opts("gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    let mut second = store
        .put_opts("gw.bkp", PutOptions::mode(PutMode::Create))
        .await?;
    first.write(Bytes::from_static(b"first")).await?;
    second.write(Bytes::from_static(b"second")).await?;
    first.complete().await?;
    let err = second.complete().await.expect_err("the name was taken");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(tree(dir.path()), ["gw.bkp"]);
    assert_eq!(fs::read(dir.path().join("gw.bkp"))?, b"first");

    // Create refuses up front too when the name exists at the start.
    let err = store
        .put_opts("gw.bkp", PutOptions::mode(PutMode::Create))
        .await
        .map(drop)
        .expect_err("exists");
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err:?}");
    assert_eq!(tree(dir.path()), ["gw.bkp"]);
    Ok(())
}

#[tokio::test]
async fn invalid_names_are_refused_everywhere() -> Result<()> {
    let outer = tempfile::tempdir()?;
    let root = outer.path().join("root");
    fs::create_dir(&root)?;
    let store = LocalStorage::new(&root)?;
    let bad = [
        "../x",
        "/abs",
        "a//b",
        "",
        ".",
        "a/./b",
        "a/../b",
        "a/",
        "a\\b",
        "a\0b",
        ".gw.bkp.partial-0123456789abcdef",
    ];
    for name in bad {
        let outcomes = [
            store.put_opts(name, PutOptions::default()).await.map(drop),
            store.get_opts(name, None).await.map(drop),
            store.head(name).await.map(drop),
            store.delete(name).await,
        ];
        for outcome in outcomes {
            let err = outcome.expect_err(name);
            assert!(matches!(err, Error::Other { .. }), "{name:?}: {err:?}");
            assert!(
                err.to_string().starts_with("invalid object name"),
                "{name:?}: {err}"
            );
        }
    }
    assert_eq!(tree(outer.path()), ["root"], "nothing was created anywhere");
    // A prefix no valid name can have lists nothing, and walks nothing outside.
    fs::write(outer.path().join("outside.bkp"), b"x")?;
    for prefix in ["../", "/", "a//", "./"] {
        assert_eq!(
            store.list(prefix, false).await?,
            Default::default(),
            "{prefix:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn nested_names_create_and_delete_prunes_directories() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    store
        .put_bytes("a/b/c.bkp", Bytes::from_static(b"x"), PutMode::Create)
        .await?;
    store
        .put_bytes("a/d.bkp", Bytes::from_static(b"y"), PutMode::Create)
        .await?;
    assert_eq!(tree(dir.path()), ["a", "a/b", "a/b/c.bkp", "a/d.bkp"]);
    store.delete("a/b/c.bkp").await?;
    assert_eq!(tree(dir.path()), ["a", "a/d.bkp"]);
    store.delete("a/d.bkp").await?;
    assert_eq!(
        tree(dir.path()),
        Vec::<String>::new(),
        "the root itself stays"
    );
    assert!(dir.path().is_dir());
    store.delete("a/d.bkp").await?;
    Ok(())
}

#[tokio::test]
async fn listing_does_not_follow_symlinked_directories() -> Result<()> {
    let outer = tempfile::tempdir()?;
    let root = outer.path().join("root");
    let elsewhere = outer.path().join("elsewhere");
    fs::create_dir_all(&root)?;
    fs::create_dir_all(&elsewhere)?;
    fs::write(elsewhere.join("secret.bkp"), b"not ours")?;
    fs::write(root.join("real.bkp"), b"ours")?;
    std::os::unix::fs::symlink(&elsewhere, root.join("link"))?;
    std::os::unix::fs::symlink(root.join("real.bkp"), root.join("alias.bkp"))?;
    std::os::unix::fs::symlink(root.join("gone"), root.join("dangling.bkp"))?;
    std::os::unix::fs::symlink(&root, root.join("loop"))?;

    let store = LocalStorage::new(&root)?;
    for delimited in [false, true] {
        let listing = store.list("", delimited).await?;
        let names: Vec<_> = listing.objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["alias.bkp", "real.bkp"], "delimited: {delimited}");
        assert_eq!(listing.prefixes, Vec::<String>::new());
    }
    Ok(())
}

#[tokio::test]
async fn reads_by_range_and_by_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    store
        .put_bytes("gw.bkp", Bytes::from_static(b"0123456789"), PutMode::Create)
        .await?;

    let got = store.get_opts("gw.bkp", Some(10..10)).await?;
    assert_eq!(got.range, 10..10, "an empty range at the end");
    // Past the end, and start after end (built at run time: clippy rejects a
    // reversed range literal).
    let (five, four) = (5, 4);
    for range in [11..12, five..four] {
        let err = store
            .get_opts("gw.bkp", Some(range.clone()))
            .await
            .expect_err("bad range");
        assert!(
            err.to_string().contains("the object has 10 bytes"),
            "{range:?}: {err}"
        );
    }

    assert_eq!(&store.get_bytes("gw.bkp", 10).await?[..], b"0123456789");
    let err = store
        .get_bytes("gw.bkp", 9)
        .await
        .expect_err("over the limit");
    assert!(
        err.to_string()
            .contains("has 10 bytes, more than the 9 expected"),
        "{err}"
    );
    assert!(store.exists("gw.bkp").await?);
    assert!(!store.exists("other.bkp").await?);
    // A directory is not an object.
    fs::create_dir(dir.path().join("dir"))?;
    assert!(!store.exists("dir").await?);
    assert!(matches!(
        store.get_opts("dir", None).await,
        Err(Error::NotFound { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn presigning_is_unsupported_and_says_what_to_use() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    assert!(!store.capabilities().presign);
    let err = store
        .presign_get("gw.bkp", Duration::from_secs(60))
        .await
        .expect_err("cannot presign");
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("use `backup fetch` or an S3 backend"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_missing_root_says_how_to_create_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let missing = dir.path().join("backups");
    let err = LocalStorage::new(&missing).expect_err("missing");
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&format!("create it (mkdir -p {})", missing.display())),
        "{err}"
    );

    fs::write(&missing, b"a file")?;
    let err = LocalStorage::new(&missing).expect_err("a file");
    assert!(err.to_string().contains("is not a directory"), "{err}");
    Ok(())
}

#[test]
fn open_url_opens_file_urls_and_explains_the_rest() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("my backups");
    fs::create_dir(&root)?;
    let root = root.canonicalize()?;

    let store = open_url(
        &format!("file://{}", root.display()).replace(' ', "%20"),
        &OpenOptions::default(),
    )?;
    let url = store.to_string();
    assert_eq!(
        url,
        format!("file://{}", root.display()).replace(' ', "%20")
    );
    // Display gives back a URL that opens the same place.
    assert_eq!(open_url(&url, &OpenOptions::default())?.to_string(), url);
    assert!(store.capabilities().atomic_publish);

    let invalid = |url: &str| match open_url(url, &OpenOptions::default()) {
        Err(Error::InvalidUrl { url, reason }) => (url, reason),
        other => panic!("{url}: expected InvalidUrl, got {other:?}"),
    };
    assert!(invalid("relative/dir")
        .1
        .contains("this build supports file:///absolute/path"));
    assert!(invalid("/srv/backups")
        .1
        .contains("write file:///srv/backups"));
    assert!(invalid("file://relative").1.contains("must be absolute"));
    assert!(invalid("file://nas/srv")
        .1
        .contains("not one on host \"nas\""));
    assert!(invalid("nfs://nas/exports/backups")
        .1
        .contains("needs the local mount point"));
    assert!(invalid("gopher://x/y")
        .1
        .contains("unknown scheme \"gopher\""));
    let (url, reason) = invalid("ftp://backup:hunter2@nas/images");
    assert!(
        !url.contains("hunter2") && !reason.contains("hunter2"),
        "{url} {reason}"
    );

    let err = open_url(
        &format!("file://{}/missing", root.display()),
        &OpenOptions::default(),
    )
    .map(drop)
    .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    assert!(err.to_string().contains("mkdir -p"), "{err}");
    Ok(())
}

#[tokio::test]
async fn inspecting_a_directory_finds_empty_ones_and_writes_nothing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    store
        .put_bytes("site/gw.bkp", Bytes::from_static(b"x"), PutMode::Create)
        .await?;
    fs::create_dir_all(dir.path().join("site/empty/deeper"))?;
    fs::write(dir.path().join("plain"), "x")?;
    let before = tree(dir.path());

    let top = store.inspect_dir("").await?;
    assert_eq!(top.exists, Some(true));
    assert_eq!(top.writable, Some(true));
    assert_eq!(top.subdirs, ["site/"]);
    let site = store.inspect_dir("site/").await?;
    assert_eq!(site.subdirs, ["site/empty/"], "empty directories count");
    assert_eq!(
        store.list("site/", true).await?.prefixes,
        Vec::<String>::new(),
        "a listing shows only directories that hold objects"
    );
    for missing in ["nowhere/", "site/nowhere/", "plain/"] {
        let info = store.inspect_dir(missing).await?;
        assert_eq!(info.exists, Some(false), "{missing}");
        assert_eq!(info.writable, None, "{missing}");
    }
    assert!(store.inspect_dir("../").await.is_err());
    assert_eq!(tree(dir.path()), before, "inspecting changed the directory");
    Ok(())
}
