//! One set of async checks that every [`Storage`] backend must pass, real
//! servers included.
//!
//! Each check takes the storage and a `prefix`: a namespace ("directory")
//! unique to the run, so that suites can share a bucket. A check creates
//! objects only below its prefix and deletes them again when it passes; a
//! failing check stops there and leaves its objects for inspection. A failure
//! is an error whose message names what was expected and what happened.
//!
//! What legitimately differs between backends comes from
//! [`Storage::capabilities`] (atomic conditional create, capacity, presigning)
//! or from [`Config`], never from a copy of the suite.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), backup_storage::BoxError> {
//! use backup_storage::{conformance, LocalStorage};
//!
//! let dir = tempfile::tempdir()?;
//! let store = LocalStorage::new(dir.path())?;
//! conformance::run_all_with(&store, "conformance/", &conformance::Config::default().with_many(20)).await?;
//! # Ok(()) }
//! ```

use std::collections::BTreeSet;
use std::ops::Range;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use crate::error::chain;
use crate::{BoxError, Error, PutMode, PutOptions, Storage, StorageExt};

/// `return Err(format!(..))` unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+).into());
        }
    };
}

/// What a check returns: `Err` says which expectation failed.
pub type CheckResult = Result<(), BoxError>;

/// Knobs of [`run_all_with`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// How many objects [`list_many`] creates: more than 1,000, since S3
    /// returns listings in pages of 1,000. Default 1,001.
    pub many: usize,
    /// The size of the largest object [`round_trip`] streams. Default 16 MiB + 1.
    pub large: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            many: 1001,
            large: (16 << 20) + 1,
        }
    }
}

impl Config {
    /// Sets [`Config::many`].
    pub fn with_many(mut self, many: usize) -> Config {
        self.many = many;
        self
    }

    /// Sets [`Config::large`].
    pub fn with_large(mut self, large: u64) -> Config {
        self.large = large;
        self
    }
}

/// Runs every check with the default [`Config`], each in its own namespace
/// below `prefix`, which must be empty.
pub async fn run_all(storage: &dyn Storage, prefix: &str) -> CheckResult {
    run_all_with(storage, prefix, &Config::default()).await
}

/// Runs every check, each in its own namespace below `prefix`, which must be
/// empty and is empty again afterwards.
pub async fn run_all_with(storage: &dyn Storage, prefix: &str, config: &Config) -> CheckResult {
    let prefix = namespace(prefix);
    let leftovers = storage
        .list(&prefix, false)
        .await
        .context(|| format!("listing {prefix}"))?;
    ensure!(
        leftovers.objects.is_empty(),
        "the namespace {prefix:?} in {storage} already holds {} objects (first: {}); run the suite under a fresh prefix",
        leftovers.objects.len(),
        leftovers.objects[0].name
    );

    // One after the other, each in a namespace named after it: a failure
    // names its check, and what it leaves behind is in nobody's way.
    macro_rules! run {
        ($check:ident($($arg:expr),*)) => {
            $check(storage, &format!("{prefix}{}/", stringify!($check)) $(, $arg)*)
                .await
                .map_err(|e| format!("conformance check `{}` failed against {storage}: {e}", stringify!($check)))?
        };
    }
    run!(round_trip(config.large));
    run!(create_existing());
    run!(overwrite());
    run!(list_prefix_delimiter());
    run!(list_many(config.many));
    run!(ranged_get());
    run!(missing_objects());
    run!(delete_then_head());
    run!(presign());
    run!(interrupted_upload());
    capacity(storage)
        .await
        .map_err(|e| format!("conformance check `capacity` failed against {storage}: {e}"))?;

    let leftovers = storage
        .list(&prefix, false)
        .await
        .context(|| format!("listing {prefix}"))?;
    ensure!(
        leftovers.objects.is_empty() && leftovers.prefixes.is_empty(),
        "the checks left objects behind in {prefix:?}: {:?}",
        leftovers
            .objects
            .iter()
            .map(|o| &o.name)
            .collect::<Vec<_>>()
    );
    Ok(())
}

/// Objects of 0 B, 1 B and `large` bytes (16 MiB + 1 in [`run_all`]) come
/// back byte for byte: uploaded with [`PutMode::Create`] in odd-sized writes,
/// read back streaming; `complete`, `head` and `get` agree on the size.
pub async fn round_trip(storage: &dyn Storage, prefix: &str, large: u64) -> CheckResult {
    let prefix = namespace(prefix);
    for size in [0, 1, large] {
        let name = format!("{prefix}object-{size}.bin");
        let meta = upload_pattern(storage, &name, size, size).await?;
        ensure!(
            meta.name == name && meta.size == size,
            "complete() of {name} returned {meta:?}, expected {size} bytes"
        );
        let head = storage
            .head(&name)
            .await
            .context(|| format!("head {name}"))?;
        ensure!(
            head.size == size,
            "head {name}: {} bytes, expected {size}",
            head.size
        );
        let got = storage
            .get_opts(&name, None)
            .await
            .context(|| format!("get {name}"))?;
        ensure!(
            got.range == (0..size),
            "get {name}: range {:?}, expected 0..{size}",
            got.range
        );
        ensure!(
            got.meta.size == size,
            "get {name}: meta says {} bytes, expected {size}",
            got.meta.size
        );
        expect_pattern(got.reader, size, 0..size, &name).await?;
        storage
            .delete(&name)
            .await
            .context(|| format!("delete {name}"))?;
    }
    Ok(())
}

/// [`PutMode::Create`] on an existing name fails with
/// [`Error::AlreadyExists`] and leaves the original intact. Where the backend
/// claims `conditional_create`, of two Create uploads racing for a fresh name
/// exactly the first to complete wins.
pub async fn create_existing(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}image.bkp");
    put(storage, &name, "original", PutMode::Create).await?;

    // The backend may refuse at the start or at completion.
    let outcome = match storage
        .put_opts(&name, PutOptions::mode(PutMode::Create))
        .await
    {
        Err(e) => Err(e),
        Ok(mut up) => match up.write(Bytes::from_static(b"impostor")).await {
            Ok(()) => up.complete().await.map(drop),
            Err(e) => Err(e),
        },
    };
    ensure!(
        matches!(outcome, Err(Error::AlreadyExists { .. })),
        "Create on the existing {name}: expected AlreadyExists, got {}",
        describe(&outcome)
    );
    expect_content(storage, &name, b"original").await?;
    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;

    if storage.capabilities().conditional_create {
        let name = format!("{prefix}raced.bkp");
        let mut first = storage
            .put_opts(&name, PutOptions::mode(PutMode::Create))
            .await
            .context(|| format!("put {name}"))?;
        let mut second = storage
            .put_opts(&name, PutOptions::mode(PutMode::Create))
            .await
            .context(|| format!("put {name}"))?;
        first
            .write(Bytes::from_static(b"first"))
            .await
            .context(|| format!("write {name}"))?;
        second
            .write(Bytes::from_static(b"second"))
            .await
            .context(|| format!("write {name}"))?;
        first
            .complete()
            .await
            .context(|| format!("complete the first Create of {name}"))?;
        let outcome = second.complete().await.map(drop);
        ensure!(
            matches!(outcome, Err(Error::AlreadyExists { .. })),
            "the second of two racing Create uploads of {name} (conditional_create claimed): \
             expected AlreadyExists, got {}",
            describe(&outcome)
        );
        expect_content(storage, &name, b"first").await?;
        storage
            .delete(&name)
            .await
            .context(|| format!("delete {name}"))?;
    }
    Ok(())
}

/// [`PutMode::Overwrite`] creates a missing object and replaces an existing
/// one, longer or shorter.
pub async fn overwrite(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}image.bkp");
    for content in ["first version", "second, longer version", "third"] {
        put(storage, &name, content, PutMode::Overwrite).await?;
        expect_content(storage, &name, content.as_bytes()).await?;
    }
    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;
    Ok(())
}

/// Listing by a plain string prefix, recursive and with the `/` delimiter,
/// over nested names; sorted; "directories" vanish with their last object.
pub async fn list_prefix_delimiter(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let p = namespace(prefix);
    // In byte order, as listings return them: "-" sorts before "/".
    let names = [
        "a.bkp",
        "ab.bkp",
        "b.bkp",
        "site-2.bkp",
        "site/c.bkp",
        "site/deeper/d.bkp",
        "zz/e.bkp",
    ];
    for (i, name) in names.iter().enumerate() {
        // Sizes differ so that the listing's sizes are checked too.
        put(
            storage,
            &format!("{p}{name}"),
            &"x".repeat(i),
            PutMode::Create,
        )
        .await?;
    }

    let listing = storage
        .list(&p, false)
        .await
        .context(|| format!("list {p}"))?;
    let sizes: Vec<(String, u64)> = listing
        .objects
        .iter()
        .map(|o| (o.name.clone(), o.size))
        .collect();
    let expected: Vec<(String, u64)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("{p}{n}"), i as u64))
        .collect();
    ensure!(
        sizes == expected,
        "list {p:?} (recursive): got {sizes:?}, expected {expected:?}"
    );
    ensure!(
        listing.prefixes.is_empty(),
        "list {p:?} (recursive): unexpected prefixes {:?}",
        listing.prefixes
    );

    // (prefix below p, delimited, expected objects, expected prefixes)
    let cases: &[(&str, bool, &[&str], &[&str])] = &[
        (
            "",
            true,
            &["a.bkp", "ab.bkp", "b.bkp", "site-2.bkp"],
            &["site/", "zz/"],
        ),
        ("a", false, &["a.bkp", "ab.bkp"], &[]),
        (
            "site",
            false,
            &["site-2.bkp", "site/c.bkp", "site/deeper/d.bkp"],
            &[],
        ),
        ("site", true, &["site-2.bkp"], &["site/"]),
        ("site/", true, &["site/c.bkp"], &["site/deeper/"]),
        ("site/d", true, &[], &["site/deeper/"]),
        ("site/deeper/", false, &["site/deeper/d.bkp"], &[]),
        ("nothing", false, &[], &[]),
        ("nothing/", true, &[], &[]),
    ];
    for &(sub, delimited, objects, prefixes) in cases {
        let prefix = format!("{p}{sub}");
        let listing = storage
            .list(&prefix, delimited)
            .await
            .context(|| format!("list {prefix}"))?;
        let got_objects: Vec<&str> = listing.objects.iter().map(|o| o.name.as_str()).collect();
        let want_objects: Vec<String> = objects.iter().map(|o| format!("{p}{o}")).collect();
        let want_prefixes: Vec<String> = prefixes.iter().map(|o| format!("{p}{o}")).collect();
        ensure!(
            got_objects == want_objects && listing.prefixes == want_prefixes,
            "list {prefix:?} (delimited: {delimited}): got objects {got_objects:?} and prefixes {:?}, \
             expected {want_objects:?} and {want_prefixes:?}",
            listing.prefixes
        );
    }

    for name in names {
        let name = format!("{p}{name}");
        storage
            .delete(&name)
            .await
            .context(|| format!("delete {name}"))?;
    }
    let listing = storage
        .list(&p, true)
        .await
        .context(|| format!("list {p}"))?;
    ensure!(
        listing.objects.is_empty() && listing.prefixes.is_empty(),
        "list {p:?} after deleting everything: got {listing:?}, expected nothing"
    );
    Ok(())
}

/// A listing returns all of `many` objects (S3 pages at 1,000: use more).
pub async fn list_many(storage: &dyn Storage, prefix: &str, many: usize) -> CheckResult {
    let p = namespace(prefix);
    let names: Vec<String> = (0..many).map(|i| format!("{p}object-{i:06}")).collect();
    // Concurrently: one at a time takes minutes against a real server. Owned
    // names keep the future Send (borrowed ones trip a compiler limitation).
    futures::stream::iter(names.clone())
        .map(|name| async move { put(storage, &name, "", PutMode::Create).await })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await?;

    for delimited in [false, true] {
        let listing = storage
            .list(&p, delimited)
            .await
            .context(|| format!("list {p}"))?;
        let got: Vec<&String> = listing.objects.iter().map(|o| &o.name).collect();
        if got != names.iter().collect::<Vec<_>>() {
            let got_set: BTreeSet<&String> = got.iter().copied().collect();
            let missing = names.iter().find(|n| !got_set.contains(n));
            return Err(format!(
                "list {p:?} (delimited: {delimited}): {} objects, expected {many} in order; first missing: {missing:?}",
                got.len()
            )
            .into());
        }
    }

    futures::stream::iter(names)
        .map(|name| async move {
            storage
                .delete(&name)
                .await
                .context(|| format!("delete {name}"))
        })
        .buffer_unordered(16)
        .try_collect::<()>()
        .await
}

/// Ranged reads at the start, in the middle and at the end; an end past the
/// object is clamped; a start past the end is an error.
pub async fn ranged_get(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}ranged.bin");
    const SIZE: u64 = 100_003;
    const SEED: u64 = 1;
    upload_pattern(storage, &name, SIZE, SEED).await?;

    // (asked, returned)
    let cases = [
        (0..10, 0..10),
        (40_000..60_001, 40_000..60_001),
        (SIZE - 7..SIZE, SIZE - 7..SIZE),
        (SIZE - 3..SIZE + 1000, SIZE - 3..SIZE),
    ];
    for (asked, expected) in cases {
        let got = storage
            .get_opts(&name, Some(asked.clone()))
            .await
            .context(|| format!("get {name} bytes {asked:?}"))?;
        ensure!(
            got.range == expected,
            "get {name} bytes {asked:?}: range {:?}, expected {expected:?}",
            got.range
        );
        ensure!(
            got.meta.size == SIZE,
            "get {name} bytes {asked:?}: meta says {} bytes, expected {SIZE}",
            got.meta.size
        );
        expect_pattern(
            got.reader,
            SEED,
            expected,
            &format!("{name} bytes {asked:?}"),
        )
        .await?;
    }
    let past = SIZE + 10..SIZE + 20;
    let outcome = storage
        .get_opts(&name, Some(past.clone()))
        .await
        .map(|g| g.range);
    ensure!(
        outcome.is_err(),
        "get {name} bytes {past:?} of a {SIZE}-byte object: expected an error, got {outcome:?}"
    );

    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;
    Ok(())
}

/// `head` and `get` of a missing object are [`Error::NotFound`]; deleting it
/// succeeds.
pub async fn missing_objects(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}never-written.bkp");
    let head = storage.head(&name).await;
    ensure!(
        matches!(head, Err(Error::NotFound { .. })),
        "head of the missing {name}: expected NotFound, got {}",
        describe(&head)
    );
    let get = storage.get_opts(&name, None).await.map(|g| g.meta);
    ensure!(
        matches!(get, Err(Error::NotFound { .. })),
        "get of the missing {name}: expected NotFound, got {}",
        describe(&get)
    );
    storage
        .delete(&name)
        .await
        .context(|| format!("delete of the missing {name}"))?;
    Ok(())
}

/// After a delete, `head` says [`Error::NotFound`] and listings omit the object.
pub async fn delete_then_head(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}short-lived.bkp");
    put(storage, &name, "data", PutMode::Create).await?;
    ensure!(
        storage
            .exists(&name)
            .await
            .context(|| format!("head {name}"))?,
        "{name} does not exist after put"
    );
    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;
    let head = storage.head(&name).await;
    ensure!(
        matches!(head, Err(Error::NotFound { .. })),
        "head of the deleted {name}: expected NotFound, got {}",
        describe(&head)
    );
    let listing = storage
        .list(&prefix, false)
        .await
        .context(|| format!("list {prefix}"))?;
    ensure!(
        listing.objects.is_empty(),
        "list {prefix:?} after deleting {name}: got {:?}",
        listing.objects
    );
    Ok(())
}

/// Where the backend claims `capacity`, the numbers are there and
/// consistent; elsewhere `capacity()` may know nothing, or be unsupported.
pub async fn capacity(storage: &dyn Storage) -> CheckResult {
    let outcome = storage.capacity().await;
    if !storage.capabilities().capacity {
        return match outcome {
            Ok(_) | Err(Error::Unsupported { .. }) => Ok(()),
            Err(e) => Err(format!(
                "capacity() without the capability: expected a result or Unsupported, got {e}"
            )
            .into()),
        };
    }
    let cap = outcome.context(|| "capacity()".to_owned())?;
    let (Some(total), Some(free)) = (cap.total, cap.free) else {
        return Err(format!("capacity() claims the capability but returned {cap:?}").into());
    };
    ensure!(
        total > 0 && total >= free,
        "capacity(): total {total}, free {free}"
    );
    if let Some(used) = cap.used {
        ensure!(
            used <= total,
            "capacity(): used {used} exceeds total {total}"
        );
    }
    Ok(())
}

/// Where the backend claims `presign`, a presigned URL comes back; elsewhere
/// [`Error::Unsupported`].
pub async fn presign(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}shared.bkp");
    let validity = std::time::Duration::from_secs(3600);
    if !storage.capabilities().presign {
        let outcome = storage.presign_get(&name, validity).await;
        ensure!(
            matches!(outcome, Err(Error::Unsupported { .. })),
            "presign_get without the capability: expected Unsupported, got {}",
            describe(&outcome)
        );
        return Ok(());
    }
    put(storage, &name, "data", PutMode::Create).await?;
    let url = storage
        .presign_get(&name, validity)
        .await
        .context(|| format!("presign {name}"))?;
    ensure!(
        url.contains("://"),
        "presign_get {name}: {url:?} is not a URL"
    );
    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;
    Ok(())
}

/// An upload dropped half-way, or aborted, leaves nothing visible (no
/// object, no listing entry, no "directory"), and the name can be uploaded
/// afterwards with [`PutMode::Create`].
pub async fn interrupted_upload(storage: &dyn Storage, prefix: &str) -> CheckResult {
    let prefix = namespace(prefix);
    let name = format!("{prefix}nested/interrupted.bkp");
    for how in ["dropped", "aborted"] {
        let mut up = storage
            .put_opts(
                &name,
                PutOptions::mode(PutMode::Create).with_size_hint(Some(1 << 20)),
            )
            .await
            .context(|| format!("put {name}"))?;
        let mut pattern = Pattern::new(7);
        for len in [100_003, 1, 65_537] {
            up.write(pattern.chunk(len))
                .await
                .context(|| format!("write {name}"))?;
        }
        if how == "aborted" {
            up.abort()
                .await
                .context(|| format!("abort the upload of {name}"))?;
        } else {
            drop(up);
        }
        let head = storage.head(&name).await;
        ensure!(
            matches!(head, Err(Error::NotFound { .. })),
            "head {name} after an upload was {how}: expected NotFound, got {}",
            describe(&head)
        );
        for delimited in [false, true] {
            let listing = storage
                .list(&prefix, delimited)
                .await
                .context(|| format!("list {prefix}"))?;
            ensure!(
                listing.objects.is_empty() && listing.prefixes.is_empty(),
                "list {prefix:?} (delimited: {delimited}) after an upload was {how}: expected nothing, got {listing:?}"
            );
        }
    }
    put(storage, &name, "complete", PutMode::Create).await?;
    expect_content(storage, &name, b"complete").await?;
    storage
        .delete(&name)
        .await
        .context(|| format!("delete {name}"))?;
    Ok(())
}

// ---------------------------------------------------------------------------

/// Storage errors as check failures, with what was being done and the causes.
trait Context<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, BoxError>;
}

impl<T> Context<T> for crate::Result<T> {
    fn context(self, doing: impl FnOnce() -> String) -> Result<T, BoxError> {
        self.map_err(|e| format!("{}: {}", doing(), chain(&e)).into())
    }
}

fn describe<T: std::fmt::Debug>(outcome: &crate::Result<T>) -> String {
    match outcome {
        Ok(v) => format!("success ({v:?})"),
        Err(e) => format!("error {e:?}"),
    }
}

/// `prefix` as a "directory": with a trailing `/` unless empty.
fn namespace(prefix: &str) -> String {
    if prefix.is_empty() || prefix.ends_with('/') {
        prefix.to_owned()
    } else {
        format!("{prefix}/")
    }
}

async fn put(storage: &dyn Storage, name: &str, content: &str, mode: PutMode) -> CheckResult {
    storage
        .put_bytes(name, Bytes::copy_from_slice(content.as_bytes()), mode)
        .await
        .context(|| format!("put {name} ({mode:?})"))?;
    Ok(())
}

async fn expect_content(storage: &dyn Storage, name: &str, expected: &[u8]) -> CheckResult {
    let got = storage
        .get_bytes(name, 1 << 20)
        .await
        .context(|| format!("get {name}"))?;
    ensure!(
        got == expected,
        "get {name}: {:?}, expected {:?}",
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(expected)
    );
    Ok(())
}

/// Uploads `size` bytes of [`Pattern`] `seed` in writes of odd, varying sizes,
/// never holding more than one write in memory.
async fn upload_pattern(
    storage: &dyn Storage,
    name: &str,
    size: u64,
    seed: u64,
) -> Result<crate::ObjectMeta, BoxError> {
    let opts = PutOptions::mode(PutMode::Create).with_size_hint(Some(size));
    let mut up = storage
        .put_opts(name, opts)
        .await
        .context(|| format!("put {name}"))?;
    let mut pattern = Pattern::new(seed);
    let mut left = size;
    for len in WRITE_SIZES.iter().cycle() {
        if left == 0 {
            break;
        }
        let len = left.min(*len);
        if let Err(e) = up.write(pattern.chunk(len as usize)).await {
            let _ = up.abort().await;
            return Err(format!("write {name}: {}", chain(&e)).into());
        }
        left -= len;
    }
    up.complete().await.context(|| format!("complete {name}"))
}

/// Odd sizes, so that writes straddle every buffer and part boundary.
const WRITE_SIZES: [u64; 5] = [1, 7, 4093, 65_537, 1_048_583];

/// Reads `reader` to its end and compares it with bytes `range` of
/// [`Pattern`] `seed`, naming the first differing byte.
async fn expect_pattern(
    mut reader: crate::ByteReader,
    seed: u64,
    range: Range<u64>,
    what: &str,
) -> CheckResult {
    let len = range.end - range.start;
    let mut expected = Pattern::new(seed);
    expected.skip(range.start);
    let mut buf = vec![0u8; 256 * 1024];
    let mut pos = 0u64;
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading {what} at byte {pos}: {e}"))?;
        if n == 0 {
            break;
        }
        let want = expected.chunk(n);
        if buf[..n] != want[..] {
            let i = buf[..n]
                .iter()
                .zip(&want[..])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(format!(
                "{what}: byte {} differs from what was written",
                range.start + pos + i as u64
            )
            .into());
        }
        pos += n as u64;
        ensure!(pos <= len, "{what}: more than the expected {len} bytes");
    }
    ensure!(pos == len, "{what}: {pos} bytes, expected {len}");
    Ok(())
}

/// Deterministic pseudo-random bytes (splitmix64), so that large objects can
/// be written and checked without keeping them.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            state: seed,
            word: [0; 8],
            used: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).to_le_bytes()
    }

    fn next_byte(&mut self) -> u8 {
        if self.used == 8 {
            self.word = self.next_word();
            self.used = 0;
        }
        self.used += 1;
        self.word[self.used - 1]
    }

    fn chunk(&mut self, len: usize) -> Bytes {
        let mut out = vec![0u8; len];
        // Byte by byte only up to a word boundary of the stream and after the
        // last whole word: 16 MiB objects are generated several times.
        let head = len.min((8 - self.used) % 8);
        let (first, rest) = out.split_at_mut(head);
        first.iter_mut().for_each(|b| *b = self.next_byte());
        let mut words = rest.chunks_exact_mut(8);
        for word in &mut words {
            word.copy_from_slice(&self.next_word());
        }
        words
            .into_remainder()
            .iter_mut()
            .for_each(|b| *b = self.next_byte());
        out.into()
    }

    fn skip(&mut self, n: u64) {
        for _ in 0..n {
            self.next_byte();
        }
    }
}
