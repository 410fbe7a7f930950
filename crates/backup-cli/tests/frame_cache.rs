//! The frame cache: a backup of unchanged large files copies their
//! compressed frames from the state directory, and the image it makes is
//! still a standalone full image — verified and restored on a machine that
//! never had the cache. A damaged cache never makes a wrong image.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::util::*;

/// Large files (cached) next to the small ones `Ops` writes (not cached).
fn add_large_files(ops: &Ops) {
    let big = ops.etc.join("big");
    fs::create_dir_all(&big).unwrap();
    write_random_file(&big.join("firmware.bin"), 3 << 20, 11);
    let line =
        "{\"seq\":1,\"admin\":\"admin7\",\"action\":\"install-policy\",\"outcome\":\"success\"}\n";
    fs::write(big.join("audit.jsonl"), line.repeat(60_000)).unwrap();
    write_random_file(&big.join("extension.bin"), 200_000, 12);
    // Files modified in the last seconds are not cached: these were not.
    for name in ["firmware.bin", "audit.jsonl", "extension.bin"] {
        set_mtime(&big.join(name), 1_700_000_000);
    }
}

fn ops_with(image: &str) -> Ops {
    let ops = Ops::new(&format!("[image]\n{image}\n"));
    add_large_files(&ops);
    ops.init();
    ops
}

fn cache_dir(ops: &Ops) -> PathBuf {
    ops.state.join("frame-cache")
}

fn frame_files(ops: &Ops) -> Vec<PathBuf> {
    files_under(&cache_dir(ops).join("frames"))
}

/// The backup's log, where the cache says what it did.
fn log_of(ops: &Ops, image: &str) -> String {
    fs::read_to_string(ops.state.join("logs").join(format!("{image}.log"))).unwrap()
}

/// A configuration for the same store on a machine with an empty state
/// directory: no key file, no cache.
fn bare_machine(ops: &Ops) -> PathBuf {
    let bare_state = ops.dir().join("bare-state");
    let text = ops.config_text("").replace(
        &format!("{:?}", ops.state.display().to_string()),
        &format!("{:?}", bare_state.display().to_string()),
    );
    assert!(text.contains("bare-state"));
    let path = ops.dir().join("bare.toml");
    fs::write(&path, text).unwrap();
    path
}

/// Verifies and restores `image` on the bare machine and compares the tree
/// with the source as it is now.
fn restores_alone(ops: &Ops, image: &str, target: &str) {
    let bare = bare_machine(ops);
    ops.run_with(&bare, Some(SECRET), &["verify", image])
        .expect(0);
    let target = ops.dir().join(target);
    ops.run_with(
        &bare,
        Some(SECRET),
        &[
            "restore",
            image,
            "--target",
            target.to_str().unwrap(),
            "--yes",
        ],
    )
    .expect(0);
    assert_same_tree(&ops.etc, &under(&target, &ops.etc), &[]);
    assert!(!ops.dir().join("bare-state/frame-cache").exists());
}

#[test]
fn an_image_made_from_a_warm_cache_verifies_and_restores_on_a_machine_without_it() {
    for codec in ["zstd", "gzip"] {
        let ops = ops_with(&format!("compression = \"{codec}\""));
        let first = ops.create();
        assert!(log_of(&ops, &first).contains("frame cache: every file read"));
        assert_eq!(frame_files(&ops).len(), 3, "{codec}");
        next_second();
        let second = ops.create();
        let log = log_of(&ops, &second);
        assert!(
            log.contains("frame cache: 3 unchanged files"),
            "{codec}: {log}"
        );
        // The same data, the same size: the image is a full image.
        let size = |n: &str| fs::metadata(ops.store.join(n)).unwrap().len();
        assert!(size(&second).abs_diff(size(&first)) < 4096, "{codec}");
        restores_alone(&ops, &second, &format!("restored-{codec}"));
    }
}

#[test]
fn corrupted_or_truncated_cache_files_never_make_a_wrong_image() {
    let ops = ops_with("compression = \"zstd\"");
    ops.create();
    let files = frame_files(&ops);
    assert_eq!(files.len(), 3);
    // One flipped byte, one truncated file, one cut to nothing.
    let mut data = fs::read(&files[0]).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&files[0], &data).unwrap();
    let data = fs::read(&files[1]).unwrap();
    fs::write(&files[1], &data[..data.len() - 7]).unwrap();
    fs::write(&files[2], b"").unwrap();
    next_second();
    let image = ops.create();
    assert!(
        log_of(&ops, &image).contains("3 damaged cache entries ignored"),
        "{}",
        log_of(&ops, &image)
    );
    restores_alone(&ops, &image, "restored");
    // A garbled index: everything is read.
    fs::write(cache_dir(&ops).join("index"), b"not an index").unwrap();
    next_second();
    let image = ops.create();
    assert!(log_of(&ops, &image).contains("every file read"));
    fs::remove_dir_all(ops.dir().join("restored")).unwrap();
    restores_alone(&ops, &image, "restored");
}

/// Rewrites `path` with different bytes of the same size and puts its
/// mtime back.
fn change_keeping_mtime(path: &Path) {
    let mut data = fs::read(path).unwrap();
    data[100..110].copy_from_slice(b"CHANGED!!!");
    let secs = 1_700_000_000;
    set_mtime(path, secs);
    let before = fs::metadata(path).unwrap();
    fs::write(path, &data).unwrap();
    set_mtime(path, secs);
    let after = fs::metadata(path).unwrap();
    assert_eq!(
        (after.len(), after.modified().unwrap()),
        (before.len(), before.modified().unwrap())
    );
}

#[test]
fn a_file_changed_without_its_mtime_is_caught_by_full_read_every_1_and_no_cache() {
    let ops = ops_with("compression = \"zstd\"\nfull_read_every = 1");
    let audit = ops.etc.join("big/audit.jsonl");
    set_mtime(&audit, 1_700_000_000);
    ops.create();
    change_keeping_mtime(&audit);
    next_second();
    let image = ops.create();
    assert!(log_of(&ops, &image).contains("every file read"));
    restores_alone(&ops, &image, "restored-1");

    // With the default (7), --no-cache reads everything too.
    fs::write(&ops.config, ops.config_text("")).unwrap();
    next_second();
    ops.create();
    change_keeping_mtime(&audit);
    next_second();
    let image = ops.create_expect(&["--no-cache"], 0);
    assert!(log_of(&ops, &image).contains("every file read"));
    restores_alone(&ops, &image, "restored-2");
}

#[test]
fn the_cache_stays_within_frame_cache_mib_and_0_removes_it() {
    let ops = ops_with("compression = \"gzip\"\nframe_cache_mib = 1");
    // Incompressible: 3 MiB + 200 kB of frames cannot all fit in 1 MiB.
    ops.create();
    next_second();
    ops.create();
    let total: u64 = frame_files(&ops)
        .iter()
        .map(|f| fs::metadata(f).unwrap().len())
        .sum();
    assert!(total <= 1 << 20, "{total}");
    assert!(!frame_files(&ops).is_empty());
    // Private to its owner.
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache_dir(&ops)), 0o700);
    assert_eq!(mode(&cache_dir(&ops).join("frames")), 0o700);
    assert_eq!(mode(&cache_dir(&ops).join("index")), 0o600);
    for f in frame_files(&ops) {
        assert_eq!(mode(&f), 0o600);
    }
    // Turned off: removed, and no new one.
    fs::write(
        &ops.config,
        ops.config_text("[image]\ncompression = \"gzip\"\nframe_cache_mib = 0\n"),
    )
    .unwrap();
    next_second();
    let image = ops.create();
    assert!(!cache_dir(&ops).exists());
    restores_alone(&ops, &image, "restored");
}

#[test]
fn full_read_every_0_is_refused_with_the_reason() {
    let ops = Ops::new("[image]\nfull_read_every = 0\n");
    let out = ops.run(&["create"]);
    out.expect_failure().mentions("full_read_every");
}
