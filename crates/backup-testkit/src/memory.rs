//! [`MemoryStorage`]: objects in a map behind a mutex.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backup_storage::{
    resolve_range, Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode,
    PutOptions, Result, Storage, Upload,
};
use bytes::Bytes;

/// Objects by name. A BTreeMap keeps them sorted, as listings must be.
type Objects = Arc<Mutex<BTreeMap<String, (Bytes, SystemTime)>>>;

/// A [`Storage`] that keeps its objects in memory: atomic publish and
/// conditional create (both happen under one lock), no capacity, no presigned
/// URLs. Clones share the objects, so a test can hand one to the engine and
/// look into the other.
#[derive(Debug, Default, Clone)]
pub struct MemoryStorage {
    objects: Objects,
}

impl MemoryStorage {
    /// The names of the stored objects, sorted.
    pub fn names(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// The content of object `name`, if it exists.
    pub fn object(&self, name: &str) -> Option<Bytes> {
        self.lock().get(name).map(|(data, _)| data.clone())
    }

    /// Stores `data` as `name` directly (replacing any object of that name):
    /// how a test plants a crafted or damaged image.
    pub fn insert(&self, name: &str, data: impl Into<Bytes>) {
        self.lock()
            .insert(name.to_owned(), (data.into(), SystemTime::now()));
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, (Bytes, SystemTime)>> {
        // A test that panicked while holding the lock left a consistent map:
        // every change is one insert or remove.
        self.objects.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Display for MemoryStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("memory://")
    }
}

fn meta(name: &str, data: &Bytes, modified: SystemTime) -> ObjectMeta {
    ObjectMeta {
        name: name.to_owned(),
        size: data.len() as u64,
        modified: Some(modified),
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound {
        what: format!("object {name} in memory://"),
        source: None,
    }
}

fn already_exists(name: &str) -> Error {
    Error::AlreadyExists {
        what: format!("object {name} in memory://"),
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        caps.atomic_publish = true;
        caps.conditional_create = true;
        caps
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        if opts.mode == PutMode::Create && self.lock().contains_key(name) {
            return Err(already_exists(name));
        }
        Ok(Box::new(MemoryUpload {
            storage: self.clone(),
            name: name.to_owned(),
            mode: opts.mode,
            data: Vec::new(),
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let (data, modified) = self
            .lock()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let range = resolve_range(range, data.len() as u64, name, &"memory://")?;
        let part = data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: meta(name, &data, modified),
            range,
            reader: Box::new(std::io::Cursor::new(part)),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let objects = self.lock();
        let (data, modified) = objects.get(name).ok_or_else(|| not_found(name))?;
        Ok(meta(name, data, *modified))
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let objects = self.lock();
        let mut result = ListResult::default();
        let mut prefixes = BTreeSet::new();
        let matching = objects
            .range(prefix.to_owned()..)
            .take_while(|(name, _)| name.starts_with(prefix));
        for (name, (data, modified)) in matching {
            // With the delimiter, everything below the next '/' folds into
            // one "directory".
            match name[prefix.len()..].find('/') {
                Some(slash) if delimited => {
                    prefixes.insert(name[..prefix.len() + slash + 1].to_owned());
                }
                _ => result.objects.push(meta(name, data, *modified)),
            }
        }
        result.prefixes = prefixes.into_iter().collect();
        Ok(result)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.lock().remove(name);
        Ok(())
    }

    async fn capacity(&self) -> Result<Capacity> {
        // Unknown; `capabilities().capacity` is false accordingly.
        Ok(Capacity::default())
    }

    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what: "presigned URLs: memory:// storage is not reachable from outside".to_owned(),
        })
    }
}

/// Collects the writes; the object appears only on `complete`, so an
/// abandoned upload (aborted or dropped) leaves nothing behind.
struct MemoryUpload {
    storage: MemoryStorage,
    name: String,
    mode: PutMode,
    data: Vec<u8>,
}

#[async_trait]
impl Upload for MemoryUpload {
    async fn write(&mut self, chunk: Bytes) -> Result<()> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn complete(self: Box<Self>) -> Result<ObjectMeta> {
        let mut objects = self.storage.lock();
        // Checked again here: another upload may have created the name since
        // this one started.
        if self.mode == PutMode::Create && objects.contains_key(&self.name) {
            return Err(already_exists(&self.name));
        }
        let (data, modified) = (Bytes::from(self.data), SystemTime::now());
        let meta = meta(&self.name, &data, modified);
        objects.insert(self.name, (data, modified));
        Ok(meta)
    }

    async fn abort(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use backup_storage::{conformance, PutMode, Storage, StorageExt};

    use super::MemoryStorage;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        let store = MemoryStorage::default();
        let probe = store.clone();
        // Spawned: the suite's future must be Send, as the engine's are.
        let suite = tokio::spawn(async move {
            conformance::run_all(&store, "run-1/")
                .await
                .map_err(|e| e.to_string())
        });
        suite.await.unwrap().unwrap();
        assert_eq!(probe.names(), Vec::<String>::new(), "the suite cleans up");
    }

    #[tokio::test]
    async fn clones_share_objects_and_planted_objects_read_back() {
        let store = MemoryStorage::default();
        let other = store.clone();
        store
            .put_bytes("a/1.bkp", "one".into(), PutMode::Create)
            .await
            .unwrap();
        other.insert("a/2.bkp", "two");
        assert_eq!(store.names(), ["a/1.bkp", "a/2.bkp"]);
        assert_eq!(other.object("a/1.bkp").unwrap(), "one");
        assert_eq!(store.head("a/2.bkp").await.unwrap().size, 3);
        let err = other
            .put_bytes("a/2.bkp", "again".into(), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, backup_storage::Error::AlreadyExists { .. }));
    }
}
