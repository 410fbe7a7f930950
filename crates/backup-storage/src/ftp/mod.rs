//! `ftp://user@host:port/path` and `ftps://` (explicit TLS: `AUTH TLS`, then
//! `PROT P` for the data connections).
//!
//! Passive mode, binary transfers. An upload streams (`STOR`) into a hidden
//! temporary name next to its final name, `.<name>.partial-<hex>`, and is
//! published by `RNFR`/`RNTO`, so a final name never holds a partial image.
//! FTP has no rename that refuses to replace, so [`PutMode::Create`] is checked
//! right before the rename, not atomically (`conditional_create` is off).
//!
//! The path of the URL is the directory below the FTP login directory, as in
//! RFC 1738 (`ftp://u@nas/backups` is `backups` in the user's home); a path
//! starting with `%2F` is absolute (`ftp://u@nas/%2Fsrv/backups`). The password
//! never comes from the URL: `BACKUP_FTP_PASSWORD`, or else the `~/.netrc`
//! entry for the host and user.
//!
//! Layout: this file opens the storage and implements [`Storage`] on it;
//! `core` holds what everything shares (settings, idle connections, limits),
//! `builder` the settings, `url` and `netrc` where they come from, `tls` the
//! FTPS trust roots, `pool` the logged-in connections, `commands` what runs
//! on one of them, `list` the MLSD/LIST parsers, `error` the reply codes'
//! meaning, and `upload` and `download` the transfers. Imports point from
//! here down to `core`, never back.

mod builder;
mod commands;
mod core;
mod download;
mod error;
mod list;
mod netrc;
mod pool;
mod tls;
mod upload;
mod url;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub use self::builder::FtpStorageBuilder;
use self::commands::{join, split_name, walk};
pub use self::core::FtpStorage;
use self::download::Download;
use self::error::{reply_code, Op};
use self::list::Kind;
use self::pool::ftp;
use self::upload::FtpUpload;

use crate::names::{is_valid_name, split_list_prefix, temp_name};
use crate::{
    resolve_range, Capabilities, Capacity, Error, GetResult, ListResult, ObjectMeta, PutMode,
    PutOptions, Result, Storage, Upload,
};

impl FtpStorage {
    /// Opens `ftp://user@host[:port]/path` or `ftps://…` (explicit TLS,
    /// verified against the system's trust store). The password comes from
    /// `BACKUP_FTP_PASSWORD`, or else from the `~/.netrc` entry of the host and
    /// user; a URL that carries a password is refused.
    ///
    /// Nothing is contacted yet: a wrong password or a missing directory shows
    /// on the first operation.
    pub fn from_url(url: &str) -> Result<FtpStorage> {
        FtpStorageBuilder::from_url(url)?.build()
    }

    /// A builder, for settings a URL does not carry (tests, a private CA).
    pub fn builder() -> FtpStorageBuilder {
        FtpStorageBuilder::default()
    }
}

pub(crate) fn open(url: &str) -> Result<Arc<dyn Storage>> {
    Ok(Arc::new(FtpStorage::from_url(url)?))
}

impl FtpStorage {
    fn check_name(&self, name: &str) -> Result<()> {
        if is_valid_name(name) {
            Ok(())
        } else {
            Err(Error::Other {
                what: format!(
                    "invalid object name {name:?}: names are relative and '/'-separated, without empty, \
                     '.' or '..' segments, backslashes, line breaks or NUL bytes"
                ),
                source: None,
            })
        }
    }

    fn not_found(&self, name: &str) -> Error {
        Error::NotFound {
            what: format!("object {name} in {self}"),
            source: None,
        }
    }
}

#[async_trait]
impl Storage for FtpStorage {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_publish: true,
            // Checked right before RNTO, which replaces: not atomic.
            conditional_create: false,
            presign: false,
            capacity: false,
            rewrite_in_place: false,
        }
    }

    async fn put_opts(&self, name: &str, opts: PutOptions) -> Result<Box<dyn Upload>> {
        self.check_name(name)?;
        let (dir, base) = split_name(name);
        let temp = join(dir, &temp_name(base)?);
        let mut session = self.inner.session().await?;
        if opts.mode == PutMode::Create && session.stat(name).await?.is_some() {
            return Err(Error::AlreadyExists {
                what: format!("object {name} in {self}"),
            });
        }
        // A concurrent delete may remove the directory we just made (it prunes
        // empty ones); making it again is enough.
        let mut attempts = 3;
        let transfer = loop {
            attempts -= 1;
            let mkd_failure = session.make_dirs(dir).await?;
            let abs = self.inner.abs(&temp);
            match ftp!(&mut session, |c| c.put_with_stream(abs.as_str())) {
                Ok(transfer) => break transfer,
                Err(e)
                    if matches!(reply_code(&e), Some(550 | 553))
                        && attempts > 0
                        && !dir.is_empty() =>
                {
                    continue
                }
                // The directory is missing: MKD's refusal says why.
                Err(e) if matches!(reply_code(&e), Some(550 | 553)) && mkd_failure.is_some() => {
                    return Err(mkd_failure.expect("checked"));
                }
                Err(e) => {
                    let what = format!("uploading {name} to {self}");
                    return Err(self.inner.error(Op::Write, what, e));
                }
            }
        };
        Ok(Box::new(FtpUpload {
            inner: Arc::clone(&self.inner),
            session: Some(session),
            transfer: Some(transfer),
            name: name.to_owned(),
            temp,
            mode: opts.mode,
            written: 0,
            broken: false,
            done: false,
        }))
    }

    async fn get_opts(&self, name: &str, range: Option<Range<u64>>) -> Result<GetResult> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        let entry = match session.stat(name).await? {
            Some(entry) if entry.kind == Kind::File => entry,
            _ => return Err(self.not_found(name)),
        };
        let size = entry.size;
        let range = resolve_range(range, size, name, self)?;
        let meta = ObjectMeta {
            name: name.to_owned(),
            size,
            modified: entry.modified,
        };
        let len = range.end - range.start;
        if len == 0 {
            return Ok(GetResult {
                meta,
                range,
                reader: Box::new(tokio::io::empty()),
            });
        }
        if range.start > 0 {
            let offset = usize::try_from(range.start).expect("64-bit offsets");
            ftp!(&mut session, |c| c.resume_transfer(offset)).map_err(|e| {
                self.inner
                    .error(Op::Read, format!("reading {name} from {self}"), e)
            })?;
        }
        let abs = self.inner.abs(name);
        let transfer = match ftp!(&mut session, |c| c.retr_as_stream(abs.as_str())) {
            Ok(transfer) => transfer,
            Err(e) => {
                return Err(self
                    .inner
                    .error(Op::Read, format!("reading {name} from {self}"), e))
            }
        };
        // Until the download ends, the connection is the reader's.
        session.reusable = false;
        let download = Download {
            session: Some(session),
            transfer: Some(transfer),
            remaining: len,
            to_end: range.end == size,
            what: format!("reading {name} from {self}"),
        };
        Ok(GetResult {
            meta,
            range,
            reader: Box::new(tokio_util::io::StreamReader::new(download.into_stream())),
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectMeta> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        match session.stat(name).await? {
            Some(entry) if entry.kind == Kind::File => Ok(ObjectMeta {
                name: name.to_owned(),
                size: entry.size,
                modified: entry.modified,
            }),
            _ => Err(self.not_found(name)),
        }
    }

    async fn list(&self, prefix: &str, delimited: bool) -> Result<ListResult> {
        let Some((dir, file_prefix)) = split_list_prefix(prefix) else {
            return Ok(ListResult::default());
        };
        if file_prefix.contains(['\r', '\n', '\0']) {
            return Ok(ListResult::default());
        }
        let mut session = self.inner.session().await?;
        let mut out = ListResult::default();
        walk(&mut session, dir, file_prefix, delimited, &mut out).await?;
        out.objects.sort_by(|a, b| a.name.cmp(&b.name));
        out.prefixes.sort();
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.check_name(name)?;
        let mut session = self.inner.session().await?;
        if session.remove(name).await? {
            session.prune(split_name(name).0).await;
        }
        Ok(())
    }

    async fn capacity(&self) -> Result<Capacity> {
        // FTP has no standard way to ask for free space.
        Ok(Capacity::default())
    }

    async fn presign_get(&self, _name: &str, _expires: Duration) -> Result<String> {
        Err(Error::Unsupported {
            what:
                "presigned URLs: ftp:// storage cannot presign; use `backup fetch` or an S3 backend"
                    .to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::is_temp_name;

    #[test]
    fn names() {
        assert!(is_valid_name("site/gw-1.bkp"));
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "./a",
            "a/../b",
            "a\nb",
            "a\rb",
            ".x.partial-0",
        ] {
            assert!(!is_valid_name(bad), "{bad:?}");
        }
        let temp = temp_name("gw.bkp").unwrap();
        assert!(
            is_temp_name(&temp) && temp.starts_with(".gw.bkp.partial-"),
            "{temp}"
        );
        assert_eq!(split_name("a/b/c"), ("a/b", "c"));
        assert_eq!(split_name("c"), ("", "c"));
    }
}
