//! How an integrator adds a storage backend: implement [`Storage`] (and its
//! [`Upload`]), then prove it with the conformance suite that every built-in
//! backend passes too.
//!
//! The backend here keeps objects in memory. That keeps the example short; a
//! real backend streams each write to its destination instead of buffering the
//! whole image, as an upload here does.
//!
//! Run it with `cargo run -p backup-examples --example custom_storage`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use backup_storage::{
    conformance, resolve_range, Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta,
    PutMode, PutOptions, Result, Storage, Upload,
};
use bytes::Bytes;

/// Objects by name. A BTreeMap keeps them sorted, as listings must be.
type Objects = Arc<Mutex<BTreeMap<String, (Bytes, SystemTime)>>>;

#[derive(Debug, Default)]
struct MemoryStorage {
    objects: Objects,
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

#[async_trait]
impl Storage for MemoryStorage {
    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::NONE;
        // An object appears in one insert, and Create is checked under the
        // same lock: both are atomic.
        caps.atomic_publish = true;
        caps.conditional_create = true;
        caps
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        if opts.mode == PutMode::Create && self.objects.lock().unwrap().contains_key(name) {
            return Err(Error::AlreadyExists {
                what: format!("object {name} in memory://"),
            });
        }
        Ok(Box::new(MemoryUpload {
            objects: Arc::clone(&self.objects),
            name: name.to_owned(),
            mode: opts.mode,
            data: Vec::new(),
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        let (data, modified) = self
            .objects
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .ok_or_else(|| not_found(name))?;
        let size = data.len() as u64;
        let range = resolve_range(range, size, name, &"memory://")?;
        let part = data.slice(range.start as usize..range.end as usize);
        Ok(GetResult {
            meta: meta(name, &data, modified),
            range,
            reader: Box::new(std::io::Cursor::new(part)),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        let objects = self.objects.lock().unwrap();
        let (data, modified) = objects.get(name).ok_or_else(|| not_found(name))?;
        Ok(meta(name, data, *modified))
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let objects = self.objects.lock().unwrap();
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
        self.objects.lock().unwrap().remove(name);
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
    objects: Objects,
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
        let mut objects = self.objects.lock().unwrap();
        // Checked again here: another upload may have created the name since
        // this one started.
        if self.mode == PutMode::Create && objects.contains_key(&self.name) {
            return Err(Error::AlreadyExists {
                what: format!("object {} in memory://", self.name),
            });
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let storage = MemoryStorage::default();
    conformance::run_all(&storage, "conformance/")
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("{storage} passes the storage conformance suite");
    Ok(())
}
