//! The integration tests of backup-core, run against the library (the CLI's
//! tests run the binary): one test binary, one module per subject.
//!
//! - `engine`: backup, verify and restore of the demo appliance end to end,
//!   awkward trees (`engine_awkward/`), sealing and truncation
//!   (`engine_sealing/`);
//! - `library`: hostile images, refusals and partial outcomes on the shared
//!   testkit's fixtures (`library/`);
//! - `runs`: status, scratch space and the daemon;
//! - `drill`: restore drills.
//!
//! The tests share this process but not its state: none sets environment
//! variables, the current directory or the umask, and each works in its own
//! temporary directory.

mod drill;
mod engine;
mod library;
mod runs;

/// With `autotests = false` a test file that no module names is never
/// compiled nor run: every `*.rs` file beside this one must be a module of
/// it, and every directory with a `mod.rs` the module of one (`#[path]`).
#[test]
fn every_test_file_is_a_module_of_this_binary() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let mut sources = Vec::new();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("the tests directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            if path.join("mod.rs").exists() {
                files.push((path.file_name().unwrap().to_owned(), true));
            }
        } else if path.extension() == Some("rs".as_ref()) {
            sources.push(std::fs::read_to_string(&path).expect("a test file"));
            files.push((path.file_stem().unwrap().to_owned(), false));
        }
    }
    let declared: std::collections::BTreeSet<String> = sources
        .iter()
        .flat_map(|text| text.lines())
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("mod ")
                .and_then(|m| m.strip_suffix(';'))
                .map(str::to_owned)
                .or_else(|| {
                    l.strip_prefix("#[path = \"")?
                        .strip_suffix("/mod.rs\"]")
                        .map(str::to_owned)
                })
        })
        .collect();
    let missing: Vec<_> = files
        .iter()
        .filter_map(|(name, _)| name.to_str())
        .filter(|name| *name != "tests" && !declared.contains(*name))
        .collect();
    assert!(
        missing.is_empty(),
        "{} has test files that no module names: {missing:?} (add `mod NAME;` to tests.rs)",
        dir.display()
    );
}
