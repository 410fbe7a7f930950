//! The payload path after decryption, on arbitrary bytes: codec detection,
//! gzip member and zstd frame cutting, the parallel decoders, the tar walk,
//! the archive-safety rules, the manifest check, and extraction with
//! restore's own stager. It must never panic or hang, and never write
//! beside its scratch directory.
#![no_main]

use std::path::{Path, PathBuf};

use libfuzzer_sys::fuzz_target;

/// tmpfs where there is one: extraction ends in a `syncfs`, which is free there.
fn base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("payload-walk-")
        .tempdir_in(base())
        .expect("a scratch directory");
    let scratch = dir.path().join("scratch");
    let _ = backup_core::fuzzing::walk_payload(data, &scratch);
    let around: Vec<_> = std::fs::read_dir(dir.path())
        .expect("listing the scratch's parent")
        .map(|e| e.expect("an entry").file_name())
        .collect();
    assert_eq!(
        around,
        ["scratch"],
        "something was written beside the scratch directory"
    );
});
