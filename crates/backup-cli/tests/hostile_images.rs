//! Images an attacker or a bad disk hands us: a wrong passphrase, flipped
//! and truncated bytes, and payloads crafted to write outside their place.
//! Every one must be refused with a clear message and nothing written.

use std::fs;
use std::path::{Path, PathBuf};

use backup_testkit::hostile::{self, dev, read_payload, write_payload, RawEntry};

use crate::util::*;

/// Header (202) + stream prefix (56); then encrypted chunks of 16 KiB + 16.
const HEADER_LEN: usize = 202;
const STREAM_START: usize = HEADER_LEN + 56;
const CHUNK: usize = 16 * 1024 + 16;

/// A live-tree snapshot taken with `cp -a` before a hostile restore.
struct Before {
    etc: PathBuf,
    db: PathBuf,
}

fn snapshot_live(fx: &Fixture, name: &str) -> Before {
    let dir = fx.dir.join(name);
    fs::create_dir(&dir).unwrap();
    copy_tree(&fx.etc, &dir.join("etc"));
    copy_tree(&fx.db, &dir.join("db"));
    Before {
        etc: dir.join("etc"),
        db: dir.join("db"),
    }
}

/// The live component roots equal the snapshot, and no staging/swap leftovers
/// sit beside them or in the state directory.
fn assert_live_untouched(fx: &Fixture, before: &Before, case: &str) {
    let diffs = backup_testkit::demo::tree_diff(&before.etc, &fx.etc, &[]).unwrap();
    assert!(
        diffs.is_empty(),
        "{case}: the live config tree changed:\n  {}",
        diffs.join("\n  ")
    );
    let diffs = backup_testkit::demo::tree_diff(&before.db, &fx.db, &[]).unwrap();
    assert!(
        diffs.is_empty(),
        "{case}: the live database changed:\n  {}",
        diffs.join("\n  ")
    );
    for dir in [
        fx.etc.parent().unwrap(),
        fx.db.parent().unwrap(),
        &fx.root,
        &fx.dir,
    ] {
        assert_eq!(
            leftovers(dir),
            Vec::<String>::new(),
            "{case}: leftovers in {}",
            dir.display()
        );
    }
    for sfx in ["-wal", "-shm", "-journal"] {
        let mut p = fx.db.clone().into_os_string();
        p.push(sfx);
        assert!(
            !Path::new(&p).exists(),
            "{case}: {} appeared",
            Path::new(&p).display()
        );
    }
    let scratch = all_paths(&fx.state.join("tmp"));
    assert!(
        scratch.is_empty(),
        "{case}: scratch left in the state directory: {scratch:?}"
    );
}

/// Case 4: A wrong passphrase on a machine without the key file: verify and
/// restore fail (exit 1) saying so, and nothing is written.
#[test]
fn wrong_passphrase_is_refused_and_writes_nothing() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    // A bare replacement machine: same storage, a state directory without keys.
    let bare_state = fx.dir.join("bare-state");
    let bare = fx.config_variant("bare.toml", |s| s.state_dir = bare_state.clone());
    let image_file = fx.image_path(&name);
    let wrong = "wrong passphrase, long enough";
    for image in [name.as_str(), image_file.to_str().unwrap()] {
        let out = run(fx
            .cmd_with(&bare)
            .env("BACKUP_SECRET", wrong)
            .args(["verify", image]));
        out.expect(1).mentions("wrong passphrase");
        let target = fx.dir.join(format!("t-wrong-{}", image.len()));
        let out = run(fx.cmd_with(&bare).env("BACKUP_SECRET", wrong).args([
            "restore",
            image,
            "--target",
            target.to_str().unwrap(),
        ]));
        out.expect(1).mentions("wrong passphrase");
        let written = all_paths(&target);
        assert!(
            written.is_empty(),
            "a refused restore wrote under the target: {written:?}"
        );
        // Live restore with the wrong passphrase: the live tree is untouched too.
        let before = snapshot_live(&fx, &format!("before-wrong-{}", image.len()));
        let out = run(fx
            .cmd_with(&bare)
            .env("BACKUP_SECRET", wrong)
            .args(["restore", image, "--yes"]));
        out.expect(1).mentions("wrong passphrase");
        assert_live_untouched(&fx, &before, "wrong passphrase, live restore");
    }
    // Too short to be the secret: a usage error that says why.
    let out = run(fx
        .cmd_with(&bare)
        .env("BACKUP_SECRET", "wrong")
        .args(["verify", &name]));
    out.expect(2).mentions("too short");
    // No secret and no terminal: a usage error, not a hang.
    let out = run(fx
        .cmd_with(&bare)
        .env_remove("BACKUP_SECRET")
        .args(["verify", &name]));
    out.expect(2).mentions("BACKUP_SECRET");
    // The right passphrase on the bare machine restores everything.
    let target = fx.fresh_dir("t-right");
    run(fx
        .cmd_with(&bare)
        .args(["restore", &name, "--target", target.to_str().unwrap()]))
    .expect(0);
    assert_same_tree(&fx.etc, &under(&target, &fx.etc), &[]);
    assert!(
        !bare_state.join("master.key").exists(),
        "a restore must not create a key file"
    );
}

/// Case 5: Flipped bytes and truncations anywhere: verify fails with a clear
/// message and a live restore fails leaving the live tree exactly as it was.
#[test]
fn flipped_and_truncated_images_are_refused_and_the_live_tree_is_untouched() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let img = fx.image_path(&name);
    let original = fs::read(&img).unwrap();
    let len = original.len();
    assert!(
        len > STREAM_START + 4 * CHUNK,
        "the fixture image is too small ({len} bytes) for the chunk cases"
    );
    let before = snapshot_live(&fx, "before");
    let last_boundary = STREAM_START + (len - STREAM_START) / CHUNK * CHUNK;
    assert!(last_boundary < len);

    let flips: Vec<(String, usize)> = vec![
        ("magic".into(), 1),
        ("format version".into(), 9),
        ("key id".into(), 22),
        ("creation time".into(), 30),
        ("keyslot salt".into(), 55),
        ("keyslot wrapped key".into(), 120),
        ("header checksum".into(), 190),
        (
            "first byte after the header (stream salt)".into(),
            HEADER_LEN,
        ),
        ("stream commitment".into(), HEADER_LEN + 40),
        ("first chunk".into(), STREAM_START + 5),
        ("tag of the first chunk".into(), STREAM_START + CHUNK - 3),
        ("middle".into(), len / 2),
        ("last 20 bytes".into(), len - 20),
        ("last byte".into(), len - 1),
    ];
    let cuts: Vec<(String, usize)> = vec![
        ("empty file".into(), 0),
        ("inside the header".into(), 100),
        ("exactly the header".into(), HEADER_LEN),
        ("inside the stream prefix".into(), HEADER_LEN + 30),
        ("exactly after the stream prefix".into(), STREAM_START),
        ("first chunk boundary".into(), STREAM_START + CHUNK),
        ("second chunk boundary".into(), STREAM_START + 2 * CHUNK),
        ("inside a chunk".into(), STREAM_START + 2 * CHUNK + 5000),
        (
            "last chunk boundary (final chunk dropped)".into(),
            last_boundary,
        ),
        ("inside the final chunk's tag".into(), len - 10),
        ("one byte short".into(), len - 1),
    ];
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, pos) in flips {
        let mut b = original.clone();
        b[pos] ^= 0x01;
        cases.push((format!("bit flip at {pos} ({what})"), b));
    }
    for (what, at) in cuts {
        cases.push((
            format!("truncated to {at} bytes ({what})"),
            original[..at].to_vec(),
        ));
    }
    let mut extended = original.clone();
    extended.extend_from_slice(b"trailing garbage");
    cases.push(("16 bytes appended".into(), extended));

    let clear = [
        "corrupted",
        "truncated",
        "authentication",
        "modified",
        "invalid",
        "not a backup image",
    ];
    for (case, bytes) in &cases {
        fs::write(&img, bytes).unwrap();
        let out = fx.backup(&["verify", &name]);
        assert_eq!(out.code, 1, "verify, {case}: wanted exit 1\n{}", out.dump());
        out.mentions_any(&clear);
        let out = fx.backup(&["restore", &name, "--yes"]);
        assert_eq!(
            out.code,
            1,
            "live restore, {case}: wanted exit 1\n{}",
            out.dump()
        );
        out.mentions_any(&clear);
        assert_live_untouched(&fx, &before, case);
        // The same image by file path (no sidecar pre-check).
        let out = fx.backup(&["restore", img.to_str().unwrap(), "--yes"]);
        assert_eq!(
            out.code,
            1,
            "live restore by path, {case}: wanted exit 1\n{}",
            out.dump()
        );
        assert_live_untouched(&fx, &before, case);
    }
    // The intact image still verifies and restores: the cases above were
    // refused because of the damage, not for another reason.
    fs::write(&img, &original).unwrap();
    fx.backup(&["verify", &name]).expect(0);
    let rows = backup_testkit::demo::sqlite_rows(&fx.db).unwrap();
    fx.backup(&["restore", &name, "--yes"]).expect(0);
    // The database comes back as its snapshot: the same rows.
    assert_same_tree(&before.etc, &fx.etc, &[]);
    assert_eq!(backup_testkit::demo::sqlite_rows(&fx.db).unwrap(), rows);
    for dir in [fx.etc.parent().unwrap(), fx.db.parent().unwrap()] {
        assert_eq!(
            leftovers(dir),
            Vec::<String>::new(),
            "leftovers in {} after a good restore",
            dir.display()
        );
    }
}

/// Case 6: Crafted payloads re-sealed under the appliance's own key (so they
/// authenticate): path traversal, absolute paths, writes through symlinks,
/// hard links leaving the component, device nodes. Each is rejected and
/// nothing is created, neither outside nor under the target, nor live.
#[test]
fn crafted_payloads_with_unsafe_entries_are_rejected() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let payload = fx.dir.join("payload.tar.gz");
    fx.backup(&["decrypt", &name, "-o", payload.to_str().unwrap()])
        .expect(0);
    let entries = read_payload(&payload);
    assert_eq!(
        entries.first().map(|e| e.path.as_slice()),
        Some(&b"backup.json"[..])
    );
    assert_eq!(
        entries.last().map(|e| e.path.as_slice()),
        Some(&b"manifest.json"[..])
    );

    // Sanity: a payload re-packed by this test without changes restores.
    let repacked = fx.dir.join("repacked.tar.gz");
    write_payload(&entries, &repacked);
    let sealed = fx.dir.join("repacked.bkp");
    fx.backup(&[
        "encrypt",
        repacked.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .expect(0);
    let t = fx.fresh_dir("t-repacked");
    fx.backup(&[
        "restore",
        sealed.to_str().unwrap(),
        "--target",
        t.to_str().unwrap(),
    ])
    .expect(0);
    assert_same_tree(&fx.etc, &under(&t, &fx.etc), &[]);

    let layout = hostile::Layout {
        dir: fx.dir.clone(),
        config_root: fx.etc.clone(),
        database: fx.db.clone(),
    };
    layout.prepare_outside();
    let outside = layout.outside();
    let outside_before = all_paths(&outside);

    for (i, case) in hostile::unsafe_entry_cases(&layout).into_iter().enumerate() {
        let (case, crafted, must_not_exist) =
            (case.name, case.splice(&entries), case.must_not_exist);
        let tgz = fx.dir.join(format!("crafted-{i}.tar.gz"));
        write_payload(&crafted, &tgz);
        let image = fx.dir.join(format!("crafted-{i}.bkp"));
        // `encrypt` reads a payload as restore would and seals none of these.
        fx.backup(&[
            "encrypt",
            tgz.to_str().unwrap(),
            "-o",
            image.to_str().unwrap(),
        ])
        .expect(2)
        .mentions("not sealed");
        assert!(!image.exists(), "{case}: encrypt left {}", image.display());
        seal_unchecked(&fx, &tgz, &image);

        // Under a target holding one file of its own.
        let target = fx.dir.join(format!("t-crafted-{i}"));
        fs::create_dir(&target).unwrap();
        fs::write(target.join("already-here.txt"), "mine\n").unwrap();
        let out = fx.backup(&[
            "restore",
            image.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
            "--yes",
        ]);
        assert_eq!(
            out.code,
            1,
            "{case}: restore --target should fail with exit 1\n{}",
            out.dump()
        );
        out.mentions_any(&["unsafe", "rejected", "never restored"]);
        for p in &must_not_exist {
            assert!(
                fs::symlink_metadata(p).is_err(),
                "{case}: {} was created",
                p.display()
            );
        }
        assert_eq!(
            all_paths(&outside),
            outside_before,
            "{case}: the outside directory changed"
        );
        {
            use std::os::unix::fs::MetadataExt;
            assert_eq!(
                fs::metadata(outside.join("secret.txt")).unwrap().nlink(),
                1,
                "{case}: the outside file got a link"
            );
        }
        // No file, symlink, device or FIFO under the target. (Empty parent
        // directories are covered by `refused_restore_leaves_nothing_under_the_target`.)
        let extra: Vec<PathBuf> = non_dirs(&target)
            .into_iter()
            .filter(|p| p != Path::new("already-here.txt"))
            .collect();
        assert!(
            extra.is_empty(),
            "{case}: the refused restore left things under the target: {extra:#?}"
        );
        let staging: Vec<PathBuf> = all_paths(&target)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains(".staging-"))
            })
            .collect();
        assert!(
            staging.is_empty(),
            "{case}: staging directories left under the target: {staging:#?}"
        );

        // And onto the live paths.
        let before = snapshot_live(&fx, &format!("before-crafted-{i}"));
        let out = fx.backup(&["restore", image.to_str().unwrap(), "--yes"]);
        assert_eq!(
            out.code,
            1,
            "{case}: live restore should fail with exit 1\n{}",
            out.dump()
        );
        out.mentions_any(&["unsafe", "rejected", "never restored"]);
        for p in &must_not_exist {
            assert!(
                fs::symlink_metadata(p).is_err(),
                "{case}: {} was created by the live restore",
                p.display()
            );
        }
        assert_eq!(
            all_paths(&outside),
            outside_before,
            "{case}: the outside directory changed (live)"
        );
        assert_live_untouched(&fx, &before, case);
        // verify refuses it too.
        let out = fx.backup(&["verify", image.to_str().unwrap()]);
        assert_eq!(
            out.code,
            1,
            "{case}: verify should fail with exit 1\n{}",
            out.dump()
        );
    }
}

/// Seals a payload under the fixture's key straight through the crypto
/// layer, checking nothing (`backup encrypt` refuses unsafe payloads): how a
/// hostile image reaches an appliance.
fn seal_unchecked(fx: &Fixture, payload: &Path, out: &Path) {
    hostile::seal_unchecked(&fx.state, payload, out);
}

/// A restore under --target that is refused after the image started to be
/// read (an unsafe entry, a damaged chunk) leaves the target as it was: not
/// even empty parent directories of the component roots.
#[test]
fn refused_restore_leaves_nothing_under_the_target() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    // A crafted image with a device entry.
    let payload = fx.dir.join("payload.tar.gz");
    fx.backup(&["decrypt", &name, "-o", payload.to_str().unwrap()])
        .expect(0);
    let entries = read_payload(&payload);
    let etc_rel = fx.etc.strip_prefix("/").unwrap().display().to_string();
    let mut crafted: Vec<RawEntry> = entries[..entries.len() - 1].to_vec();
    crafted.push(dev(
        tar::EntryType::Char,
        &format!("components/config/{etc_rel}/null-dev"),
        1,
        3,
    ));
    crafted.push(entries.last().unwrap().clone());
    let tgz = fx.dir.join("crafted.tar.gz");
    write_payload(&crafted, &tgz);
    let crafted_image = fx.dir.join("crafted.bkp");
    seal_unchecked(&fx, &tgz, &crafted_image);
    // A copy of the real image that lost its final chunk.
    let original = fs::read(fx.image_path(&name)).unwrap();
    let cut = STREAM_START + (original.len() - STREAM_START) / CHUNK * CHUNK;
    let truncated_image = fx.dir.join("truncated.bkp");
    fs::write(&truncated_image, &original[..cut]).unwrap();

    let mut problems = Vec::new();
    for (case, image) in [
        ("unsafe entry", &crafted_image),
        ("truncated image", &truncated_image),
    ] {
        let target = fx.dir.join(format!("t-{}", case.replace(' ', "-")));
        fs::create_dir(&target).unwrap();
        fs::write(target.join("already-here.txt"), "mine\n").unwrap();
        let out = fx.backup(&[
            "restore",
            image.to_str().unwrap(),
            "--target",
            target.to_str().unwrap(),
            "--yes",
        ]);
        assert_eq!(out.code, 1, "{case}\n{}", out.dump());
        let extra: Vec<PathBuf> = all_paths(&target)
            .into_iter()
            .filter(|p| p != Path::new("already-here.txt"))
            .collect();
        if !extra.is_empty() {
            problems.push(format!(
                "{case}: left under {}: {extra:?}",
                target.display()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "refused restores changed the target:\n  {}",
        problems.join("\n  ")
    );
}

/// A stored image cut inside a chunk (an interrupted copy): `list` marks it,
/// and verify and restore say it is truncated, with both sizes, rather than
/// tampered with.
#[test]
fn a_truncated_stored_image_is_marked_by_list_and_reported_as_truncated() {
    let fx = Fixture::new();
    let (name, _) = fx.create(&[]);
    let img = fx.image_path(&name);
    let original = fs::read(&img).unwrap();
    let cut = original.len() - 5000;
    fs::write(&img, &original[..cut]).unwrap();
    let sizes = format!("{cut} of {} bytes", original.len());

    let before = snapshot_live(&fx, "before-truncated");
    let out = fx.backup(&["list"]);
    out.expect(0);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with(&name))
        .unwrap_or_else(|| panic!("{name} not listed\n{}", out.dump()))
        .to_string();
    assert!(line.contains(&format!("TRUNCATED: {sizes}")), "{line}");
    for args in [
        vec!["verify", name.as_str()],
        vec!["restore", "--yes", name.as_str()],
    ] {
        fx.backup(&args)
            .expect(1)
            .mentions(&format!("truncated: {sizes}"));
    }
    assert_live_untouched(&fx, &before, "truncated image");
    fs::write(&img, &original).unwrap();
    let out = fx.backup(&["list"]);
    out.expect(0);
    assert!(!out.stdout.contains("TRUNCATED"), "{}", out.dump());
}
