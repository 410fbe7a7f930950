//! The awkward real-world tree with a file over 2 GiB (sparse, with non-zero
//! bytes scattered through it): create, restore under --target, and prove the
//! restore byte-identical with the same modes, mtimes and symlink targets.
//! Slow by nature (2 GiB through gzip, encryption and back).

use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::Instant;

use crate::util::*;

#[test]
fn tree_with_a_file_over_2_gib_round_trips_byte_identical() {
    let fx = Fixture::custom(|fx| {
        let tree = fx.root.join("srv/rich tree");
        build_rich_tree(&tree, true);
        // Fast gzip: the point is the size, not the ratio.
        fx.spec.level = 1;
        fx.spec.components = vec![files_component("tree", &[&tree], "")];
    });
    let tree = fx.root.join("srv/rich tree");
    let big = tree.join("big sparse.img");
    assert_eq!(std::fs::metadata(&big).unwrap().len(), BIG_LEN);

    let t = Instant::now();
    let (name, report) = fx.create(&[]);
    println!(
        "create: {:.1}s, image {} bytes",
        t.elapsed().as_secs_f64(),
        report["size"]
    );
    assert_eq!(report["outcome"], "success", "{report:#}");
    let comp = &report["manifest"]["components"][0];
    assert!(comp["bytes"].as_u64().unwrap() > BIG_LEN, "{comp}");
    assert!(
        comp.get("warnings").is_none(),
        "unexpected warnings: {comp}"
    );

    let target = fx.fresh_dir("restored");
    let t = Instant::now();
    fx.backup(&["restore", &name, "--target", target.to_str().unwrap()])
        .expect(0);
    println!("restore: {:.1}s", t.elapsed().as_secs_f64());
    let restored = under(&target, &tree);

    // Everything but the big file: content hashes, modes, mtimes, symlinks.
    assert_same_tree(&tree, &restored, &["big sparse.img"]);
    assert_hard_link_kept(&restored);

    // The big file: size, mode, mtime, scattered bytes, and a streamed hash.
    let rbig = restored.join("big sparse.img");
    let (a, b) = (
        std::fs::metadata(&big).unwrap(),
        std::fs::metadata(&rbig).unwrap(),
    );
    assert_eq!(b.len(), BIG_LEN, "size of the restored large file");
    assert_eq!(
        a.mode() & 0o7777,
        b.mode() & 0o7777,
        "mode of the large file"
    );
    assert_eq!(a.mtime(), b.mtime(), "mtime of the large file");
    let f = std::fs::File::open(&rbig).unwrap();
    for (i, off) in BIG_MARKS.iter().enumerate() {
        let mut byte = [0u8; 1];
        f.read_exact_at(&mut byte, *off).unwrap();
        assert_eq!(
            byte[0],
            0xA5 ^ i as u8,
            "byte at offset {off} of the restored large file"
        );
    }
    let t = Instant::now();
    let (ha, hb) = (sha256_file(&big), sha256_file(&rbig));
    println!(
        "hashing 2 x {BIG_LEN} bytes: {:.1}s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(ha, hb, "the restored large file differs from the original");

    // The image verifies too, and nothing was left behind.
    fx.backup(&["verify", &name]).expect(0);
    assert_eq!(leftovers(restored.parent().unwrap()), Vec::<String>::new());
    assert!(
        all_paths(&fx.state.join("tmp")).is_empty(),
        "scratch left in the state directory"
    );
}
