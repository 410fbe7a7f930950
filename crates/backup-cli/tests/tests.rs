//! The integration tests of the `backup` binary: one test binary, one module
//! per subject, helpers in `util` (and shared fixtures in backup-testkit).
//!
//! The tests share this process but never its state: each runs the binary in
//! child processes, with its own temporary directory and an explicit
//! environment (no `set_var`, `set_current_dir` or umask changes here), and
//! the memory bound measures the peak RSS of its child, not of this process.

mod util;

mod cluster;
mod cluster_restore;
mod copies;
mod drill;
mod frame_cache;
mod hostile_images;
mod http_browser;
mod http_service;
mod http_util;
mod large_tree;
mod live_sqlite;
mod memory_bound;
mod ops_concurrency;
mod ops_daemon;
mod ops_keys;
mod ops_runs;
mod output_contract;
mod own_places;
mod restore_report;
mod serve;
mod sftp_storage;
mod users;
mod webdriver;
mod workflows;

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
