//! Awkward trees: for each, what `create` says, what `verify` says and what
//! `restore` does agree — an image that verifies restores, and a restored
//! tree equals its source (less what the backup said it skipped).
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use backup_core::{Config, CreateOptions, Engine, KdfParams, Outcome, Passphrase, RestoreOptions};
use proptest::prelude::*;

const SECRET: &str = "awkward trees secret";

/// One appliance: a state directory, a local store, and a `files` component
/// `tree` over `roots` plus an `anchor` component that always succeeds (so a
/// failing `tree` makes the backup partial rather than failed).
struct Appliance {
    dir: PathBuf,
    engine: Engine,
    anchor: PathBuf,
}

impl Appliance {
    fn new(dir: &Path, roots: &[PathBuf]) -> Result<Appliance> {
        let state = dir.join("state");
        let store = dir.join("store");
        let anchor = dir.join("anchor");
        std::fs::create_dir_all(&store)?;
        std::fs::create_dir_all(&anchor)?;
        std::fs::write(anchor.join("a.conf"), "anchor\n")?;
        let quoted: Vec<String> = roots
            .iter()
            .map(|r| format!("{:?}", r.display().to_string()))
            .collect();
        let text = format!(
            "[appliance]\nproduct = \"awkward\"\nversion = \"1\"\nnode = \"n1\"\nstate_dir = {state:?}\n\n\
             [storage]\nurl = \"file://{store}\"\n\n\
             [[component]]\nname = \"tree\"\nkind = \"files\"\npaths = [{paths}]\n\n\
             [[component]]\nname = \"anchor\"\nkind = \"files\"\npaths = [{anchor:?}]\n",
            state = state.display().to_string(),
            store = store.display(),
            paths = quoted.join(", "),
            anchor = anchor.display().to_string(),
        );
        let config = Config::parse(&text, Path::new("awkward.toml"))?;
        backup_core::init_keys(&state, &Passphrase::new(SECRET.into())?, KdfParams::MINIMUM)?;
        Ok(Appliance {
            dir: dir.to_path_buf(),
            engine: Engine::builder(config).build()?,
            anchor,
        })
    }
}

/// What one round of create → verify → restore found.
#[derive(Debug)]
struct Round {
    /// `Ok(outcome of the tree component)`, or why create failed.
    tree: std::result::Result<Outcome, String>,
    warnings: Vec<String>,
    error: Option<String>,
    target: PathBuf,
    image: String,
}

/// Backs up, verifies and restores under a fresh target, and checks that the
/// three agree: whatever create published verifies and restores; a component
/// that failed is skipped by restore, one that succeeded is restored.
async fn round(a: &Appliance, tag: &str) -> Result<Round> {
    let report = a
        .engine
        .create(&CreateOptions::default())
        .await
        .context("create")?;
    let tree = report
        .manifest
        .components
        .iter()
        .find(|c| c.name == "tree")
        .context("tree in the manifest")?;
    a.engine.verify(&report.image).await.with_context(|| {
        format!(
            "{tag}: create said {:?}, but verify refused the image",
            report.outcome
        )
    })?;
    let target = a.dir.join(format!("restored-{tag}"));
    let mut opts = RestoreOptions::default();
    opts.target = Some(target.clone());
    let restored = a
        .engine
        .restore(&report.image, &opts)
        .await
        .with_context(|| format!("{tag}: the image verified, but restore refused it"))?;
    match tree.outcome {
        Outcome::Success => ensure!(
            restored.restored.iter().any(|c| c == "tree"),
            "{tag}: tree succeeded but was not restored: {restored:?}"
        ),
        _ => ensure!(
            restored.skipped_failed.iter().any(|c| c == "tree"),
            "{tag}: tree failed but restore did not skip it: {restored:?}"
        ),
    }
    Ok(Round {
        tree: Ok(tree.outcome),
        warnings: tree.warnings.clone(),
        error: tree.error.clone(),
        target,
        image: report.image.clone(),
    })
}

fn under(target: &Path, abs: &Path) -> PathBuf {
    target.join(abs.strip_prefix("/").unwrap())
}

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir {
        mode: u32,
        mtime: i64,
        owner: (u32, u32),
    },
    File {
        mode: u32,
        mtime: i64,
        owner: (u32, u32),
        content: Vec<u8>,
    },
    Link {
        target: PathBuf,
    },
}

/// A tree as restore should reproduce it: the root followed if it is a
/// symlink, FIFOs and sockets left out (a backup skips them with a warning),
/// and the sets of paths that share an inode.
/// Paths and what they are, and the sets of paths that share an inode.
type Tree = (BTreeMap<PathBuf, Node>, BTreeSet<BTreeSet<PathBuf>>);

fn tree(root: &Path) -> Result<Tree> {
    let mut nodes = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), BTreeSet<PathBuf>> = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry?;
        let rel = entry.path().strip_prefix(root)?.to_path_buf();
        let md = if entry.depth() == 0 {
            std::fs::metadata(entry.path())?
        } else {
            entry.path().symlink_metadata()?
        };
        let owner = (md.uid(), md.gid());
        let ft = md.file_type();
        let node = if ft.is_symlink() {
            Node::Link {
                target: std::fs::read_link(entry.path())?,
            }
        } else if ft.is_dir() {
            Node::Dir {
                mode: md.mode() & 0o7777,
                // The root's own mtime is its staging directory's, not the source's.
                mtime: if entry.depth() == 0 { 0 } else { md.mtime() },
                owner,
            }
        } else if ft.is_file() {
            if md.nlink() > 1 {
                inodes
                    .entry((md.dev(), md.ino()))
                    .or_default()
                    .insert(rel.clone());
            }
            Node::File {
                mode: md.mode() & 0o7777,
                mtime: md.mtime(),
                owner,
                content: std::fs::read(entry.path())?,
            }
        } else {
            continue;
        };
        nodes.insert(rel, node);
    }
    let links = inodes.into_values().filter(|s| s.len() > 1).collect();
    Ok((nodes, links))
}

fn assert_same_tree(source: &Path, restored: &Path) -> Result<()> {
    let (a, la) = tree(source)?;
    let (b, lb) = tree(restored)?;
    for (path, node) in &a {
        match b.get(path) {
            None => bail!("{}: missing from the restored tree", path.display()),
            Some(other) if other != node => {
                bail!("{}: {node:?} restored as {other:?}", path.display())
            }
            _ => {}
        }
    }
    if let Some(extra) = b.keys().find(|p| !a.contains_key(*p)) {
        bail!("{}: restored, but not in the source", extra.display());
    }
    ensure!(
        la == lb,
        "hard links differ: source {la:?}, restored {lb:?}"
    );
    Ok(())
}

fn file(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    std::fs::write(path, content)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn fifo(path: &Path) -> Result<()> {
    let ok = std::process::Command::new("mkfifo").arg(path).status()?;
    ensure!(ok.success(), "mkfifo {}", path.display());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_root_symlink_is_followed_and_restores_in_place_and_under_a_target() -> Result<()> {
    let d = tempfile::tempdir()?;
    let data = d.path().join("data/etc");
    std::fs::create_dir_all(data.join("sub"))?;
    file(&data.join("a.conf"), b"a = 1\n", 0o640)?;
    file(&data.join("sub/b.conf"), b"b = 2\n", 0o600)?;
    symlink("../a.conf", data.join("sub/link"))?;
    let x = d.path().join("x");
    std::fs::create_dir(&x)?;
    let rootlink = x.join("rootlink");
    symlink(&data, &rootlink)?;
    // A root that is a symlink to a file, too.
    let filelink = x.join("filelink");
    file(&d.path().join("data/single.conf"), b"single\n", 0o644)?;
    symlink("../data/single.conf", &filelink)?;
    let a = Appliance::new(&d.path().join("app"), &[rootlink.clone(), filelink.clone()])?;

    let r = round(&a, "rootlink").await?;
    assert_eq!(r.tree, Ok(Outcome::Success), "{r:?}");
    // Under --target the root is the directory (and the file) it named.
    let restored = under(&r.target, &rootlink);
    assert!(
        restored.symlink_metadata()?.is_dir(),
        "{}",
        restored.display()
    );
    assert_same_tree(&data, &restored)?;
    let restored_file = under(&r.target, &filelink);
    assert!(restored_file.symlink_metadata()?.is_file());
    assert_eq!(std::fs::read(&restored_file)?, b"single\n");

    // In place: the link stays a link, the tree it names is put back.
    std::fs::write(data.join("a.conf"), "damaged\n")?;
    std::fs::remove_dir_all(data.join("sub"))?;
    std::fs::write(data.join("junk"), "junk\n")?;
    std::fs::write(d.path().join("data/single.conf"), "damaged\n")?;
    a.engine
        .restore(&r.image, &RestoreOptions::default())
        .await?;
    assert!(rootlink.symlink_metadata()?.file_type().is_symlink());
    assert_eq!(std::fs::read_link(&rootlink)?, data);
    assert!(filelink.symlink_metadata()?.file_type().is_symlink());
    assert_eq!(
        std::fs::read(d.path().join("data/single.conf"))?,
        b"single\n"
    );
    assert_same_tree(&restored, &data)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn awkward_trees_create_verify_and_restore_agree() -> Result<()> {
    let d = tempfile::tempdir()?;
    let src = d.path().join("src tree");
    let a = Appliance::new(&d.path().join("app"), std::slice::from_ref(&src))?;
    type Build = fn(&Path) -> Result<()>;
    // (case, builder, the tree component succeeds?, a warning that must be recorded)
    let cases: Vec<(&str, Build, bool, Option<&str>)> = vec![
        ("empty root directory", (|_| Ok(())) as Build, true, None),
        (
            "empty directories",
            (|s: &Path| {
                std::fs::create_dir_all(s.join("a/b/c"))?;
                std::fs::create_dir(s.join("e"))?;
                std::fs::set_permissions(s.join("e"), std::fs::Permissions::from_mode(0o700))?;
                Ok(())
            }) as Build,
            true,
            None,
        ),
        (
            "symlinks to files, directories, nowhere, absolute paths, loops",
            (|s: &Path| {
                std::fs::create_dir(s.join("dir"))?;
                file(&s.join("dir/f"), b"f\n", 0o644)?;
                symlink("dir/f", s.join("to-file"))?;
                symlink("dir", s.join("to-dir"))?;
                symlink("nowhere/at/all", s.join("dangling"))?;
                symlink("/etc/passwd", s.join("absolute"))?;
                symlink("loop-b", s.join("loop-a"))?;
                symlink("loop-a", s.join("loop-b"))?;
                symlink("self", s.join("self"))?;
                symlink("../../..", s.join("dir/up"))?;
                Ok(())
            }) as Build,
            true,
            None,
        ),
        (
            "hard links across directories",
            (|s: &Path| {
                std::fs::create_dir_all(s.join("one/deep"))?;
                std::fs::create_dir(s.join("two"))?;
                file(&s.join("one/deep/orig"), b"linked content\n", 0o640)?;
                std::fs::hard_link(s.join("one/deep/orig"), s.join("two/link"))?;
                std::fs::hard_link(s.join("one/deep/orig"), s.join("top-link"))?;
                Ok(())
            }) as Build,
            true,
            None,
        ),
        (
            "names with spaces, newlines, non-UTF-8 bytes and long names",
            (|s: &Path| {
                file(&s.join("with space"), b"1", 0o644)?;
                file(&s.join("new\nline"), b"2", 0o644)?;
                let raw = OsStr::from_bytes(b"bad-\xff\xfe-utf8");
                std::fs::create_dir(s.join(raw))?;
                file(&s.join(raw).join("inner \x01 ctl"), b"3", 0o644)?;
                let long = "l".repeat(200);
                std::fs::create_dir(s.join(&long))?;
                file(&s.join(&long).join("m".repeat(180)), b"4", 0o644)?;
                symlink("t".repeat(150), s.join("long-link"))?;
                file(&s.join("ünïcødé ✓"), b"5", 0o644)?;
                Ok(())
            }) as Build,
            true,
            None,
        ),
        (
            "FIFOs and sockets are skipped with a warning",
            (|s: &Path| {
                file(&s.join("kept"), b"kept\n", 0o644)?;
                fifo(&s.join("a-fifo"))?;
                let sock = std::os::unix::net::UnixListener::bind(s.join("a-socket"))?;
                // The socket file outlives the listener.
                drop(sock);
                Ok(())
            }) as Build,
            true,
            Some("socket, FIFO or device"),
        ),
        (
            "mode 000 files and odd modes (read as root: kept as they are)",
            (|s: &Path| {
                file(&s.join("locked"), b"nobody may read this\n", 0o000)?;
                file(&s.join("setuid"), b"x", 0o4755)?;
                std::fs::create_dir(s.join("sticky"))?;
                std::fs::set_permissions(
                    s.join("sticky"),
                    std::fs::Permissions::from_mode(0o1777),
                )?;
                std::fs::create_dir(s.join("closed"))?;
                file(&s.join("closed/inside"), b"in", 0o600)?;
                std::fs::set_permissions(s.join("closed"), std::fs::Permissions::from_mode(0o000))?;
                Ok(())
            }) as Build,
            // Tests run as root: root reads mode 000. The unprivileged case
            // is `unreadable_files_fail_their_component_as_a_normal_user`.
            is_root(),
            None,
        ),
    ];
    for (i, (case, build, succeeds, warning)) in cases.into_iter().enumerate() {
        if src.exists() {
            std::fs::remove_dir_all(&src)?;
        }
        std::fs::create_dir(&src)?;
        build(&src).with_context(|| format!("building {case}"))?;
        let r = round(&a, &format!("case-{i}"))
            .await
            .with_context(|| case.to_string())?;
        let want = if succeeds {
            Outcome::Success
        } else {
            Outcome::Failed
        };
        assert_eq!(r.tree, Ok(want), "{case}: {r:?}");
        if let Some(w) = warning {
            assert!(
                r.warnings.iter().any(|m| m.contains(w)),
                "{case}: no warning {w:?}: {r:?}"
            );
        }
        if succeeds {
            assert_same_tree(&src, &under(&r.target, &src)).with_context(|| case.to_string())?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_root_symlinks_fail_their_component_and_the_rest_restores() -> Result<()> {
    let d = tempfile::tempdir()?;
    let x = d.path().join("x");
    std::fs::create_dir(&x)?;
    let dangling = x.join("dangling");
    symlink("/nonexistent/awkward", &dangling)?;
    let looped = x.join("loop");
    symlink(&looped, &looped)?;
    for (tag, root) in [("dangling", dangling), ("loop", looped)] {
        let a = Appliance::new(
            &d.path().join(format!("app-{tag}")),
            std::slice::from_ref(&root),
        )?;
        let r = round(&a, tag).await?;
        assert_eq!(r.tree, Ok(Outcome::Failed), "{tag}: {r:?}");
        let error = r.error.unwrap_or_default();
        assert!(error.contains("symlink"), "{tag}: {error}");
        assert_same_tree(&a.anchor, &under(&r.target, &a.anchor))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn overlapping_roots_fail_their_component_instead_of_making_an_image_that_cannot_restore(
) -> Result<()> {
    let d = tempfile::tempdir()?;
    let outer = d.path().join("outer");
    std::fs::create_dir_all(outer.join("inner"))?;
    file(&outer.join("inner/f"), b"f", 0o644)?;
    let a = Appliance::new(&d.path().join("app"), &[outer.clone(), outer.join("inner")])?;
    let r = round(&a, "overlap").await?;
    assert_eq!(r.tree, Ok(Outcome::Failed), "{r:?}");
    let error = r.error.unwrap_or_default();
    assert!(error.contains("cannot be restored"), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_grows_while_read_is_stored_as_it_was_when_read() -> Result<()> {
    let d = tempfile::tempdir()?;
    let src = d.path().join("src");
    std::fs::create_dir(&src)?;
    let growing = src.join("growing.log");
    std::fs::write(&growing, vec![b'x'; 4 << 20])?;
    let a = Appliance::new(&d.path().join("app"), std::slice::from_ref(&src))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, growing) = (stop.clone(), growing.clone());
        std::thread::spawn(move || -> std::io::Result<u64> {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&growing)?;
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more\n")?;
                n += 1;
            }
            Ok(n)
        })
    };
    let r = round(&a, "growing").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer thread")?;
    let r = r?;
    assert_eq!(r.tree, Ok(Outcome::Success), "{r:?}");
    // Whatever it held when read: a prefix of what it holds now, at least
    // the size it had before the backup.
    let now = std::fs::read(&growing)?;
    let restored = std::fs::read(under(&r.target, &growing))?;
    assert!(
        restored.len() >= 4 << 20,
        "{} bytes restored",
        restored.len()
    );
    assert!(
        now.starts_with(&restored),
        "the restored file is not what the source held"
    );
    Ok(())
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Set by the root test for the copy of this binary it runs as `nobody`.
const NONROOT_DIR: &str = "AWKWARD_TREES_NONROOT_DIR";

/// Mode 000 as an unprivileged user: the file cannot be read, the component
/// fails and says why, the image still verifies and the rest restores. The
/// test binary runs itself again as `nobody` (`setpriv`) for this; without
/// `setpriv` or root it fails rather than pass untested.
#[tokio::test(flavor = "multi_thread")]
async fn unreadable_files_fail_their_component_as_a_normal_user() -> Result<()> {
    if let Some(dir) = std::env::var_os(NONROOT_DIR) {
        return unreadable_as_this_user(Path::new(&dir)).await;
    }
    ensure!(is_root(), "this test starts as root and drops to nobody");
    let d = tempfile::tempdir()?;
    let dir = d.path().join("nobody");
    std::fs::create_dir(&dir)?;
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534))?;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755))?;
    // A copy nobody can run, wherever the build directory lies.
    let exe = d.path().join("engine-tests");
    std::fs::copy(std::env::current_exe()?, &exe)?;
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&exe)
        .args([
            "--exact",
            &this_test("unreadable_files_fail_their_component_as_a_normal_user"),
            "--nocapture",
        ])
        .env(NONROOT_DIR, &dir)
        .output()
        .context("running setpriv")?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(out.status.success(), "the unprivileged run failed:\n{text}");
    ensure!(
        text.contains("1 passed"),
        "the unprivileged run ran no test:\n{text}"
    );
    Ok(())
}

async fn unreadable_as_this_user(dir: &Path) -> Result<()> {
    ensure!(!is_root(), "expected to run unprivileged");
    let src = dir.join("src");
    std::fs::create_dir(&src)?;
    file(&src.join("readable"), b"fine\n", 0o644)?;
    file(&src.join("locked"), b"secret\n", 0o000)?;
    let a = Appliance::new(&dir.join("app"), std::slice::from_ref(&src))?;
    let r = round(&a, "nonroot").await?;
    assert_eq!(r.tree, Ok(Outcome::Failed), "{r:?}");
    let error = r.error.clone().unwrap_or_default();
    assert!(
        error.contains("locked") && error.contains("ermission denied"),
        "{error}"
    );
    assert_same_tree(&a.anchor, &under(&r.target, &a.anchor))?;
    Ok(())
}

/// One generated node: a kind and a name picked from awkward spellings.
#[derive(Debug, Clone)]
enum Gen {
    Dir(usize),
    File(usize, Vec<u8>, u32),
    Symlink(usize, usize),
    HardLink(usize, usize),
}

const NAMES: &[&[u8]] = &[
    b"a",
    b"b c",
    b"new\nline",
    b"\xff\xfe",
    b"tab\tx",
    b".hidden",
    b"-dash",
    b"\xc3\xa9t\xc3\xa9",
    b"ends-with-space ",
    b"quote\"'",
    b"back\\slash",
    b"star*?",
    b"x",
];
const TARGETS: &[&str] = &["a", "../a", "/etc", "nowhere", "b c/x", "..", "."];

fn gen_node() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (0..NAMES.len()).prop_map(Gen::Dir),
        (
            0..NAMES.len(),
            prop::collection::vec(any::<u8>(), 0..3000),
            prop::sample::select(vec![0o644u32, 0o600, 0o755, 0o400, 0o000])
        )
            .prop_map(|(n, c, m)| Gen::File(n, c, m)),
        (0..NAMES.len(), 0..TARGETS.len()).prop_map(|(n, t)| Gen::Symlink(n, t)),
        (0..NAMES.len(), 0..64usize).prop_map(|(n, t)| Gen::HardLink(n, t)),
    ]
}

/// Builds a tree from generated nodes: each goes into a directory made
/// earlier (picked by its index), skipping names already taken.
fn build_generated(root: &Path, nodes: &[Gen]) -> Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let parent = dirs[i % dirs.len()].clone();
        let name = |n: usize| parent.join(OsStr::from_bytes(NAMES[n]));
        let path = match node {
            Gen::Dir(n) | Gen::File(n, ..) | Gen::Symlink(n, _) | Gen::HardLink(n, _) => name(*n),
        };
        if path.symlink_metadata().is_ok() {
            continue;
        }
        match node {
            Gen::Dir(_) => {
                std::fs::create_dir(&path)?;
                dirs.push(path);
            }
            Gen::File(_, content, mode) => {
                file(&path, content, *mode)?;
                files.push(path);
            }
            Gen::Symlink(_, t) => symlink(TARGETS[*t], &path)?,
            Gen::HardLink(_, t) => {
                if files.is_empty() {
                    continue;
                }
                std::fs::hard_link(&files[t % files.len()], &path)?;
            }
        }
    }
    Ok(())
}

#[test]
fn generated_trees_create_verify_and_restore_agree() -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let d = tempfile::tempdir()?;
    let src = d.path().join("gen");
    let a = Appliance::new(&d.path().join("app"), std::slice::from_ref(&src))?;
    let round_no = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    runner
        .run(&prop::collection::vec(gen_node(), 0..40), |nodes| {
            let n = round_no.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let outcome = (|| -> Result<()> {
                if src.exists() {
                    std::fs::remove_dir_all(&src)?;
                }
                std::fs::create_dir(&src)?;
                build_generated(&src, &nodes)?;
                let r = rt.block_on(round(&a, &format!("gen-{n}")))?;
                // Every generated tree is restorable as root (no FIFOs, no
                // unreadable directories): create must say success.
                ensure!(r.tree == Ok(Outcome::Success), "{r:?}");
                assert_same_tree(&src, &under(&r.target, &src))
            })();
            outcome.map_err(|e| TestCaseError::fail(format!("{e:#}")))
        })
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// The name the test harness knows a test of this module by: its path
/// without the binary's own name (`engine::awkward::NAME`).
fn this_test(name: &str) -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::{name}")
}
