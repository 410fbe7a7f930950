//! Parallel decompression of the gzip payloads this engine writes.
//!
//! Every member the encoder writes carries its own total length in an `Ab`
//! extra subfield (see [`super::codec`]), so the reader can cut the stream
//! into members without inflating it and hand each one to a pool of threads;
//! the members come back in order. Each member's CRC-32 and length are
//! checked. Streams whose first member has no such field (a payload
//! re-packed with `gzip` or `pigz`) are read serially by
//! [`super::codec::decoder`] instead.
use std::collections::VecDeque;
use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use super::codec::{
    next_job, read_full, Pool, GZIP_BLOCK, GZIP_HEADER, MEMBER_HEADER_LEN, MEMBER_LEN_AT,
};

/// Largest member accepted: a stored 1 MiB block and its framing, with room.
const MAX_MEMBER: usize = 2 * GZIP_BLOCK;
/// Largest decompressed member accepted (the encoder writes 1 MiB blocks).
const MAX_OUTPUT: usize = 2 * GZIP_BLOCK;

/// The total length of the member whose header is `head`, if it carries the
/// length field: the encoder's header, where only the mtime, XFL and OS
/// (bytes 4..10) may differ, and the length itself.
pub(crate) fn member_len(head: &[u8]) -> Option<usize> {
    let fixed = |r: std::ops::Range<usize>| head.get(r.clone()) == GZIP_HEADER.get(r);
    if !fixed(0..4) || !fixed(10..MEMBER_LEN_AT) {
        return None;
    }
    let len = head.get(MEMBER_LEN_AT..MEMBER_LEN_AT + 4)?;
    Some(u32::from_le_bytes(len.try_into().expect("four bytes")) as usize)
}

/// A member and its content, inflated (the buffers go back for reuse).
type Inflated = io::Result<(Vec<u8>, Vec<u8>)>;

struct Job {
    member: Vec<u8>,
    out: Vec<u8>,
    index: u64,
    reply: SyncSender<Inflated>,
}

/// Reads a stream of length-tagged gzip members, inflating up to
/// `2 × threads` members at once on `threads` threads.
pub(crate) struct ParallelGunzip<R: Read> {
    source: R,
    pool: Pool<Job>,
    pending: VecDeque<Receiver<Inflated>>,
    /// The source's end or error, once reached; reported after the members
    /// read before it.
    source_end: Option<io::Result<()>>,
    out: Vec<u8>,
    pos: usize,
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    members: u64,
    max_in_flight: usize,
}

impl<R: Read> ParallelGunzip<R> {
    pub(crate) fn new(source: R, threads: usize) -> io::Result<ParallelGunzip<R>> {
        let threads = threads.max(1);
        Ok(ParallelGunzip {
            source,
            pool: Pool::start("backup-gunzip", threads, gunzip_worker)?,
            pending: VecDeque::new(),
            source_end: None,
            out: Vec::new(),
            pos: 0,
            spare: Vec::new(),
            members: 0,
            max_in_flight: 2 * threads,
        })
    }

    /// Reads the next member from the source and queues it; `Ok(false)` at
    /// the end of the stream.
    fn queue_next(&mut self) -> io::Result<bool> {
        let mut head = [0u8; MEMBER_HEADER_LEN];
        let got = read_full(&mut self.source, &mut head)?;
        if got == 0 {
            return Ok(false);
        }
        let index = self.members;
        let corrupt = |what: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the gzip payload is corrupt at member {index}: {what}"),
            )
        };
        if got < head.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the gzip payload ends inside the header of member {index}"),
            ));
        }
        let len =
            member_len(&head).ok_or_else(|| corrupt("its header has no length field".into()))?;
        if !(MEMBER_HEADER_LEN + 8..=MAX_MEMBER).contains(&len) {
            return Err(corrupt(format!("a member length of {len} bytes")));
        }
        let (mut member, out) = self.spare.pop().unwrap_or_default();
        member.clear();
        member.extend_from_slice(&head);
        member.resize(len, 0);
        let got = read_full(&mut self.source, &mut member[MEMBER_HEADER_LEN..])?;
        if got < len - MEMBER_HEADER_LEN {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("the gzip payload ends inside member {index}"),
            ));
        }
        let (reply, done) = mpsc::sync_channel(1);
        self.pool.send(Job {
            member,
            out,
            index,
            reply,
        })?;
        self.pending.push_back(done);
        self.members += 1;
        Ok(true)
    }

    /// Keeps the pool busy: reads members until enough are in flight or the
    /// source ends (its end or error is kept for after the queued members).
    fn fill(&mut self) {
        while self.source_end.is_none() && self.pending.len() < self.max_in_flight {
            match self.queue_next() {
                Ok(true) => {}
                Ok(false) => self.source_end = Some(Ok(())),
                Err(e) => self.source_end = Some(Err(e)),
            }
        }
    }
}

impl<R: Read> Read for ParallelGunzip<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.out.len() {
                let n = buf.len().min(self.out.len() - self.pos);
                buf[..n].copy_from_slice(&self.out[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if buf.is_empty() {
                return Ok(0);
            }
            self.fill();
            let Some(front) = self.pending.pop_front() else {
                return match self.source_end.take() {
                    Some(Err(e)) => Err(e),
                    _ if self.members == 0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the gzip payload is empty",
                    )),
                    _ => {
                        self.source_end = Some(Ok(()));
                        Ok(0)
                    }
                };
            };
            let (member, out) = front.recv().map_err(|_| {
                io::Error::other("a gzip decompression thread stopped unexpectedly")
            })??;
            let previous = std::mem::replace(&mut self.out, out);
            self.spare.push((member, previous));
            self.pos = 0;
        }
    }
}

fn gunzip_worker(jobs: &Mutex<Receiver<Job>>) {
    let mut inflate = flate2::Decompress::new(false);
    while let Some(Job {
        member,
        mut out,
        index,
        reply,
    }) = next_job(jobs)
    {
        let result = inflate_member(&mut inflate, &member, &mut out)
            .map_err(|what| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the gzip payload is corrupt at member {index}: {what}"),
                )
            })
            .map(|()| (member, out));
        // The reader may have gone (an error elsewhere): nothing to tell.
        let _ = reply.send(result);
    }
}

/// Inflates one whole member (header already checked by the reader) into
/// `out`, checking its CRC-32 and length.
fn inflate_member(
    inflate: &mut flate2::Decompress,
    member: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let body_end = member.len() - 8;
    let crc = u32::from_le_bytes(member[body_end..body_end + 4].try_into().expect("4"));
    let isize = u32::from_le_bytes(member[body_end + 4..].try_into().expect("4")) as usize;
    if isize > MAX_OUTPUT {
        return Err(format!("it claims {isize} bytes of content"));
    }
    let body = &member[MEMBER_HEADER_LEN..body_end];
    out.clear();
    // One byte more than expected, to notice a member that runs longer.
    out.reserve(isize + 1);
    inflate.reset(false);
    loop {
        let consumed = inflate.total_in() as usize;
        let before = out.len();
        let status = inflate
            .decompress_vec(&body[consumed..], out, flate2::FlushDecompress::Finish)
            .map_err(|e| format!("deflate data: {e}"))?;
        match status {
            flate2::Status::StreamEnd => break,
            _ if out.len() > isize => return Err("more content than its length says".into()),
            _ if out.len() == before && inflate.total_in() as usize == consumed => {
                return Err("the deflate data ends early".into())
            }
            _ => {}
        }
    }
    if inflate.total_in() as usize != body.len() {
        return Err("bytes after the end of its deflate data".into());
    }
    if out.len() != isize {
        return Err(format!(
            "{} bytes of content where its length says {isize}",
            out.len()
        ));
    }
    let mut check = flate2::Crc::new();
    check.update(out);
    if check.sum() != crc {
        return Err("CRC-32 mismatch".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Compression;
    use crate::image::codec::{decoder, Encoder};
    use std::io::Write;

    fn data(n: usize) -> Vec<u8> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                if (i / 300_000) % 3 == 2 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                } else {
                    b"policy accept tcp 443 from admin\n"[i % 33]
                }
            })
            .collect()
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_threads(Vec::new(), Compression::Gzip, 6, 2).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn read_all(r: impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut r = r;
        r.read_to_end(&mut out).map(|_| out)
    }

    #[test]
    fn every_member_carries_its_length_and_reads_back_in_parallel() {
        for n in [0, 1, GZIP_BLOCK, 5 * GZIP_BLOCK + 77] {
            let plain = data(n);
            let packed = gz(&plain);
            // Walk the members by their length fields alone.
            let mut at = 0;
            while at < packed.len() {
                let len = member_len(&packed[at..]).expect("length field");
                at += len;
            }
            assert_eq!(at, packed.len(), "{n} bytes");
            for threads in [1, 2, 4] {
                let got = read_all(ParallelGunzip::new(&packed[..], threads).unwrap()).unwrap();
                assert_eq!(got, plain, "{n} bytes, {threads} threads");
            }
            assert_eq!(read_all(decoder(&packed[..]).unwrap()).unwrap(), plain);
        }
    }

    #[test]
    fn streams_without_the_field_are_read_serially() {
        let plain = data(3 * GZIP_BLOCK);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(&plain).unwrap();
        let classic = e.finish().unwrap();
        assert!(member_len(&classic).is_none());
        assert_eq!(read_all(decoder(&classic[..]).unwrap()).unwrap(), plain);
        // Ours followed by a classic member: the reader says what is wrong.
        let mixed = [gz(b"first"), classic].concat();
        let err = read_all(decoder(&mixed[..]).unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("member 1"), "{err}");
    }

    #[test]
    fn damage_is_reported_with_its_member() {
        let plain = data(4 * GZIP_BLOCK);
        let packed = gz(&plain);
        let second = member_len(&packed).unwrap();
        // A flipped byte inside the deflate data of member 1, in its CRC, in
        // its length field.
        for (at, what) in [
            (second + 200, "member 1"),
            (
                second + member_len(&packed[second..]).unwrap() - 6,
                "member 1",
            ),
            (second + 17, "member 1"),
        ] {
            let mut bad = packed.clone();
            bad[at] ^= 0x40;
            let err = read_all(decoder(&bad[..]).unwrap()).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                ),
                "{at}: {err}"
            );
            assert!(err.to_string().contains(what), "{at}: {err}");
        }
        // Truncation inside a member and inside a header.
        for cut in [second + 100, second + 5, packed.len() - 1] {
            let err = read_all(decoder(&packed[..cut]).unwrap()).unwrap_err();
            assert!(
                matches!(
                    err.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ),
                "{cut}: {err}"
            );
        }
    }

    #[test]
    fn a_source_error_arrives_after_the_members_before_it() {
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::new(io::ErrorKind::PermissionDenied, "tampered"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let plain = data(3 * GZIP_BLOCK);
        let packed = gz(&plain);
        let mut r = ParallelGunzip::new(Failing(&packed), 2).unwrap();
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(got, plain, "every member before the error was delivered");
    }
}
