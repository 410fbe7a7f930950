//! The configured storage, opened when an operation first needs it.
//!
//! Opening a backend can touch the storage (a `file://` directory must exist,
//! an `nfs://` export must be mounted). Commands that never use the storage —
//! `status`, `audit`, `schedule`, `key check`, the daemon between runs — must
//! keep working while it is unreachable, so the engine opens it at first use
//! and, after a failure, again at the next use (a remounted export is picked
//! up by the next scheduled run).
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use backup_storage::{
    Capabilities, Capacity, GetResult, ListResult, ObjectMeta, OpenOptions, PutOptions, Result,
    Storage, Upload,
};
use bytes::Bytes;

/// A storage URL, opened at first use.
pub(crate) struct LazyStorage {
    url: String,
    opts: OpenOptions,
    opened: Mutex<Option<Arc<dyn Storage>>>,
}

impl LazyStorage {
    pub(crate) fn new(url: &str, opts: OpenOptions) -> LazyStorage {
        LazyStorage {
            url: url.to_string(),
            opts,
            opened: Mutex::new(None),
        }
    }

    /// The backend, opening it if this is the first use (or the last open failed).
    fn backend(&self) -> Result<Arc<dyn Storage>> {
        let mut opened = self.opened.lock().expect("storage");
        if let Some(s) = opened.as_ref() {
            return Ok(s.clone());
        }
        let s = backup_storage::open_url(&self.url, &self.opts)?;
        *opened = Some(s.clone());
        Ok(s)
    }
}

/// The URL without user information or query, for messages before the
/// backend (which describes itself) is open.
pub(crate) fn shown_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{scheme}://{host}{path}")
}

impl fmt::Display for LazyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.opened.lock().expect("storage").as_ref() {
            Some(s) => fmt::Display::fmt(s, f),
            None => f.write_str(&shown_url(&self.url)),
        }
    }
}

impl fmt::Debug for LazyStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LazyStorage")
            .field("url", &shown_url(&self.url))
            .field("opened", &self.opened.lock().expect("storage").is_some())
            .finish()
    }
}

#[async_trait]
impl Storage for LazyStorage {
    fn capabilities(&self) -> Capabilities {
        match self.backend() {
            Ok(s) => s.capabilities(),
            // Unreachable: claim everything, so that the caller's next call
            // fails with the reason instead of a misleading "unsupported".
            Err(_) => {
                let mut all = Capabilities::default();
                all.atomic_publish = true;
                all.conditional_create = true;
                all.presign = true;
                all.capacity = true;
                all.rewrite_in_place = true;
                all
            }
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        self.backend()?.put_opts(name, opts).await
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        self.backend()?.get_opts(name, range).await
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.backend()?.head(name).await
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        self.backend()?.list(prefix, delimited).await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.backend()?.delete(name).await
    }

    async fn capacity(&self) -> Result<Capacity> {
        self.backend()?.capacity().await
    }

    async fn presign_get(&self, name: &str, expires: Duration) -> Result<String> {
        self.backend()?.presign_get(name, expires).await
    }

    async fn write_at(&self, name: &str, offset: u64, data: Bytes) -> Result<()> {
        self.backend()?.write_at(name, offset, data).await
    }

    async fn remove_stale_uploads(&self, older_than: Duration) -> Result<Vec<String>> {
        self.backend()?.remove_stale_uploads(older_than).await
    }

    async fn inspect_dir(&self, prefix: &str) -> Result<backup_storage::DirInfo> {
        self.backend()?.inspect_dir(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_show_the_url_without_credentials() {
        assert_eq!(
            shown_url("ftp://backup:hunter2@nas:2121/images?x=1"),
            "ftp://nas:2121/images"
        );
        assert_eq!(shown_url("file:///var/backups"), "file:///var/backups");
    }
}
