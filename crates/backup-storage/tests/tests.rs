//! The integration tests of backup-storage: one binary, one module per
//! subject, helpers (and the real FTP and S3 servers) in `util`.

mod util;

mod conformance;
#[cfg(feature = "ftp")]
mod ftp_conformance;
#[cfg(feature = "ftp")]
mod ftp_faults;
mod local;
mod retry;
#[cfg(feature = "s3")]
mod s3_behaviour;
#[cfg(feature = "s3")]
mod s3_conformance;
#[cfg(feature = "s3")]
mod s3_url;
#[cfg(feature = "sftp")]
mod sftp;
mod tmpfs;

/// With `autotests = false` a test file that no `mod` line here names is never
/// compiled nor run: every `*.rs` file and every directory with a `mod.rs`
/// beside this one must be a module of it.
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let declared: std::collections::BTreeSet<&str> = include_str!("tests.rs")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("mod ")?.strip_suffix(';'))
        .collect();
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the tests directory") {
        let path = entry.expect("a directory entry").path();
        let module = if path.is_dir() {
            path.join("mod.rs").exists().then(|| path.file_name())
        } else {
            (path.extension() == Some("rs".as_ref())).then(|| path.file_stem())
        };
        if let Some(name) = module.flatten().and_then(|n| n.to_str()) {
            if name != "tests" && !declared.contains(name) {
                missing.push(name.to_owned());
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} has test files that tests.rs does not name: {missing:?} (add `mod NAME;`)",
        dir.display()
    );
}
