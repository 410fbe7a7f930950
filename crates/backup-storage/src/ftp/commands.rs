//! Commands on one control connection (stat, list, mkdir, delete), and the
//! directory walk behind [`crate::Storage::list`].

use std::sync::Arc;
use std::time::SystemTime;

use super::error::{reply_code, Op};
use super::list::{parse_list_line, parse_mlsx, unix_time, Entry, Kind, ListLine};
use super::pool::{ftp, Session};
use crate::names::is_valid_segment;
use crate::{Error, ListResult, ObjectMeta, Result};

/// `("a/b", "c")` for `"a/b/c"`, `("", "c")` for `"c"`.
pub(super) fn split_name(name: &str) -> (&str, &str) {
    match name.rfind('/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => ("", name),
    }
}

pub(super) fn join(dir: &str, file: &str) -> String {
    if dir.is_empty() {
        file.to_owned()
    } else {
        format!("{dir}/{file}")
    }
}

impl Session {
    pub(super) fn what(&self, doing: &str, name: &str) -> String {
        format!("{doing} {name} in {}", self.inner.url())
    }

    /// The entry of a file or directory, `None` if there is none.
    pub(super) async fn stat(&mut self, path: &str) -> Result<Option<Entry>> {
        let inner = Arc::clone(&self.inner);
        let what = || format!("reading the metadata of {path} in {}", inner.url());
        let abs = inner.abs(path);
        let abs = abs.as_str();
        if inner.use_mlst() {
            return match ftp!(self, |c| c.mlst(Some(abs))) {
                Ok(line) => match parse_mlsx(&line) {
                    Some(entry) => Ok(Some(entry)),
                    None => Err(Error::Other {
                        what: format!(
                            "reading the metadata of {path} in {}: cannot parse the MLST reply {line:?}",
                            inner.url()
                        ),
                        source: None,
                    }),
                },
                Err(e) if reply_code(&e) == Some(550) => Ok(None),
                Err(e) => Err(inner.error(Op::Read, what(), e)),
            };
        }
        let size = match ftp!(self, |c| c.size(abs)) {
            Ok(size) => size as u64,
            // 550 for a missing name and for a directory alike.
            Err(e) if reply_code(&e) == Some(550) => return Ok(None),
            Err(e) => return Err(inner.error(Op::Read, what(), e)),
        };
        let modified = match ftp!(self, |c| c.mdtm(abs)) {
            Ok(t) => unix_time(t.and_utc().timestamp()),
            Err(e) if reply_code(&e).is_some() => None,
            Err(e) => return Err(inner.error(Op::Read, what(), e)),
        };
        Ok(Some(Entry {
            name: path.to_owned(),
            kind: Kind::File,
            size,
            modified,
        }))
    }

    /// The entries of a directory below the storage directory ("" for
    /// itself), `None` if it does not exist.
    async fn read_dir(&mut self, dir: &str) -> Result<Option<Vec<Entry>>> {
        let inner = Arc::clone(&self.inner);
        let shown = if dir.is_empty() { "." } else { dir };
        let what = || format!("listing {shown} in {}", inner.url());
        let mlsd = inner.use_mlst();
        let arg = inner.abs_dir(dir);
        let lines = if mlsd {
            ftp!(self, |c| c.mlsd(arg.as_deref()))
        } else {
            // "./" keeps a relative name starting with '-' from reading as
            // ls options; the trailing '/' makes LIST of a file fail instead
            // of listing the file itself.
            let arg = arg.map(|d| match (d.starts_with('/'), d.ends_with('/')) {
                (_, true) => d,
                (true, false) => format!("{d}/"),
                (false, false) => format!("./{d}/"),
            });
            ftp!(self, |c| c.list(arg.as_deref()))
        };
        let lines = match lines {
            Ok(lines) => lines,
            // No such directory; 501 is MLSD's answer for a file.
            Err(e) if reply_code(&e) == Some(550) => return Ok(None),
            Err(e) if reply_code(&e) == Some(501) && !dir.is_empty() => return Ok(None),
            Err(e) => return Err(inner.error(Op::List, what(), e)),
        };
        let now = SystemTime::now();
        let mut entries = Vec::with_capacity(lines.len());
        for line in lines {
            let entry = if mlsd {
                parse_mlsx(&line).ok_or(())
            } else {
                match parse_list_line(&line, now) {
                    ListLine::Entry(e) => Ok(e),
                    ListLine::Ignored => continue,
                    ListLine::Unparsable => Err(()),
                }
            };
            // An object we cannot see could be pruned by nobody or uploaded
            // twice: refuse rather than list part of the directory.
            let entry = entry.map_err(|()| Error::Other {
                what: format!(
                    "{}: cannot parse the server's listing line {line:?}",
                    what()
                ),
                source: None,
            })?;
            if entry.name != "." && entry.name != ".." {
                entries.push(entry);
            }
        }
        Ok(Some(entries))
    }

    /// Creates the directories of `dir` ("a/b" makes "a" and "a/b"). Failures
    /// are only remembered: MKD of an existing directory fails too, and the
    /// STOR that follows tells whether the directory is there.
    pub(super) async fn make_dirs(&mut self, dir: &str) -> Result<Option<Error>> {
        let mut failed = None;
        if dir.is_empty() {
            return Ok(None);
        }
        let mut end = 0;
        loop {
            end = dir[end..].find('/').map_or(dir.len(), |i| end + i);
            let sub = &dir[..end];
            let abs = self.inner.abs(sub);
            match ftp!(self, |c| c.mkdir(abs.as_str())) {
                Ok(()) => {}
                Err(e) if reply_code(&e).is_some() => {
                    failed = Some(self.inner.error(
                        Op::Write,
                        self.what("creating the directory", sub),
                        e,
                    ));
                }
                Err(e) => {
                    return Err(self.inner.error(
                        Op::Write,
                        self.what("creating the directory", sub),
                        e,
                    ))
                }
            }
            if end == dir.len() {
                return Ok(failed);
            }
            end += 1;
        }
    }

    /// DELE that succeeds when the file is gone already.
    pub(super) async fn remove(&mut self, path: &str) -> Result<bool> {
        let abs = self.inner.abs(path);
        match ftp!(self, |c| c.rm(abs.as_str())) {
            Ok(()) => Ok(true),
            Err(e) if reply_code(&e) == Some(550) => match self.stat(path).await? {
                None => Ok(false),
                Some(_) => Err(self.inner.error(Op::Write, self.what("deleting", path), e)),
            },
            Err(e) => Err(self.inner.error(Op::Write, self.what("deleting", path), e)),
        }
    }

    /// Removes the directories `dir` and up that are left empty, as a local
    /// directory or an object store shows no "directory" without objects.
    pub(super) async fn prune(&mut self, dir: &str) {
        let mut dir = dir;
        while !dir.is_empty() {
            // Fails as soon as a directory still holds something.
            let abs = self.inner.abs(dir);
            if ftp!(self, |c| c.rmdir(abs.as_str())).is_err() {
                return;
            }
            dir = split_name(dir).0;
        }
    }
}

/// Adds the entries of `dir` below `file_prefix` to `out` (recursively unless
/// `delimited`), like [`crate::LocalStorage`]'s listing.
pub(super) async fn walk(
    session: &mut Session,
    dir: &str,
    file_prefix: &str,
    delimited: bool,
    out: &mut ListResult,
) -> Result<()> {
    // (directory "" or "a/b/", prefix of the file names wanted there)
    let mut pending = vec![(dir.to_owned(), file_prefix.to_owned())];
    while let Some((dir, file_prefix)) = pending.pop() {
        let Some(entries) = session.read_dir(dir.trim_end_matches('/')).await? else {
            continue; // the prefix names no directory, or it was deleted meanwhile
        };
        for entry in entries {
            if !entry.name.starts_with(file_prefix.as_str())
                || !is_valid_segment(&entry.name)
                || entry.name.contains(['/', '\\'])
            {
                continue;
            }
            let name = format!("{dir}{}", entry.name);
            match entry.kind {
                Kind::Dir if !delimited => pending.push((format!("{name}/"), String::new())),
                Kind::Dir => {
                    if holds_object(session, &name).await? {
                        out.prefixes.push(format!("{name}/"));
                    }
                }
                Kind::File => out.objects.push(ObjectMeta {
                    name,
                    size: entry.size,
                    modified: entry.modified,
                }),
                Kind::Other => {}
            }
        }
    }
    Ok(())
}

/// Whether a directory holds an object anywhere below it (not just the
/// temporary files of unfinished uploads); stops at the first.
async fn holds_object(session: &mut Session, dir: &str) -> Result<bool> {
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Some(entries) = session.read_dir(&dir).await? else {
            continue;
        };
        for entry in entries {
            if !is_valid_segment(&entry.name) || entry.name.contains(['/', '\\']) {
                continue;
            }
            match entry.kind {
                Kind::File => return Ok(true),
                Kind::Dir => pending.push(format!("{dir}/{}", entry.name)),
                Kind::Other => {}
            }
        }
    }
    Ok(false)
}
