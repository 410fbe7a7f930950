//! Payload codecs.
//!
//! Writing: **gzip** compressed in independent 1 MiB blocks on all cores, each
//! block one member of a standard multi-member gzip stream (RFC 1952 §2.2:
//! `gzip -d`, GNU tar, zlib's `inflate`, Python and Go all read it as one
//! file); **zstd** likewise in independent 2 MiB blocks, each one standard
//! zstd frame (RFC 8878 §3.1: `zstd -d` and GNU tar read the concatenation
//! as one file); or **none**.
//! Reading: the codec is recognised by the payload's magic bytes, so restore
//! needs no configuration; the frames of either codec are decompressed on
//! several threads at once (the `parallel` module).
//!
//! Independent gzip members cost about 0.5% of size against one serial
//! stream (each block starts with an empty 32 KiB window) and buy a linear
//! speed-up with cores. Each block is deflated whole by libdeflate, which
//! at a given level takes about a quarter less CPU than zlib's streaming
//! deflate and compresses the appliance data a little smaller. Blocks that
//! would not shrink — random data, already-compressed files — are detected
//! from a small byte-histogram sample and stored instead of deflated:
//! deflating 1 MiB of random data costs as much as deflating 1 MiB of text
//! (about 70 ms at level 6 on the reference machine), the sample costs
//! about 0.05 ms.
use std::collections::VecDeque;
use std::io::{self, BufReader, Read, Write};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::sync::Mutex;

use super::gunzip::{GZIP_BLOCK, GZIP_HEADER, MEMBER_HEADER_LEN, MEMBER_LEN_AT};
use super::parallel::ParallelDecoder;
use super::pool::read_full;
use super::pool::{next_job, Pool};
use super::unzstd::ZSTD_BLOCK;
pub(crate) use super::unzstd::ZSTD_MAGIC;
pub use crate::model::default_threads;
use crate::model::Compression;

/// Most threads a restore inflates gzip members on.
const MAX_DECODE_THREADS: usize = 4;
/// First bytes of a gzip member.
pub(crate) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Largest run of a deflate stored block.
const STORED_MAX: usize = 65_535;

/// Compresses a payload with one of the codecs; finish it explicitly with
/// [`Encoder::finish`] (a dropped encoder has not written its end).
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    Blocks(Box<ParallelBlocks<W>>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    /// An encoder with an explicit number of compression threads (at least 1).
    pub fn with_threads(
        inner: W,
        compression: Compression,
        level: u32,
        threads: usize,
    ) -> io::Result<Encoder<W>> {
        let threads = threads.max(1);
        let inner = match compression {
            Compression::Gzip => {
                if level > 9 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("gzip level {level} is out of range (0–9)"),
                    ));
                }
                Inner::Blocks(Box::new(ParallelBlocks::new(
                    inner,
                    GZIP_BLOCK,
                    threads,
                    Pool::start("backup-gzip", threads, move |jobs| {
                        // One compressor and output buffer per worker, kept
                        // from block to block rather than allocated per member.
                        block_worker(
                            jobs,
                            || Deflater::new(level),
                            |deflate, input, out| gzip_member(deflate, level, input, out),
                        )
                    })?,
                )))
            }
            Compression::Zstd => {
                let level = i32::try_from(level).unwrap_or(i32::MAX);
                Inner::Blocks(Box::new(ParallelBlocks::new(
                    inner,
                    ZSTD_BLOCK,
                    threads,
                    Pool::start("backup-zstd", threads, move |jobs| {
                        block_worker(jobs, || zstd_compressor(level), zstd_frame)
                    })?,
                )))
            }
            Compression::None => Inner::Plain(inner),
        };
        Ok(Encoder { inner })
    }

    /// Whether the payload is made of frames (gzip members, zstd frames)
    /// that [`Encoder::cut`] can end and [`Encoder::splice`] can add to.
    pub(crate) fn is_framed(&self) -> bool {
        matches!(self.inner, Inner::Blocks(_))
    }

    /// Uncompressed bytes written so far.
    pub(crate) fn raw_written(&self) -> u64 {
        match &self.inner {
            Inner::Blocks(b) => b.raw,
            Inner::Plain(_) => 0,
        }
    }

    /// Ends the current frame and tags the frames written from here on with
    /// `tag` (or with none): [`FrameTap::frame`] sees each tagged frame once
    /// compressed, in order, then [`FrameTap::end`] once the tag is changed.
    pub(crate) fn set_tag(&mut self, tag: Option<u64>) -> io::Result<()> {
        match &mut self.inner {
            Inner::Blocks(b) => b.set_tag(tag),
            Inner::Plain(_) => Ok(()),
        }
    }

    /// Sees the tagged frames (see [`Encoder::set_tag`]).
    pub(crate) fn set_tap(&mut self, tap: Box<dyn FrameTap>) {
        if let Inner::Blocks(b) = &mut self.inner {
            b.tap = Some(tap);
        }
    }

    /// Ends the current frame and adds `frames`, whole frames compressed
    /// before (`raw` uncompressed bytes), after it in the payload.
    pub(crate) fn splice(&mut self, frames: Vec<u8>, raw: u64) -> io::Result<()> {
        match &mut self.inner {
            Inner::Blocks(b) => b.splice(frames, raw),
            Inner::Plain(w) => w.write_all(&frames),
        }
    }

    /// Writes everything still buffered and the codec's end; returns the
    /// inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::Blocks(b) => b.finish(),
            Inner::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::Blocks(b) => b.write(buf),
            Inner::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            Inner::Blocks(b) => b.flush(),
            Inner::Plain(w) => w.flush(),
        }
    }
}

/// Bytes read to recognise a payload: enough for a whole gzip member header
/// or zstd frame header.
const SNIFF_LEN: usize = if MEMBER_HEADER_LEN > super::unzstd::MAX_HEAD {
    MEMBER_HEADER_LEN
} else {
    super::unzstd::MAX_HEAD
};

/// Opens the codec of a decrypted payload by its magic bytes: gzip (one or
/// many members; decompressed on several cores when the members carry their
/// lengths, as this engine writes them), zstd (one or many frames; on
/// several cores when the first declares a small content size, as this
/// engine writes them), else a plain tar.
pub fn decoder<'a, R: Read + 'a>(mut payload: R) -> io::Result<Box<dyn Read + 'a>> {
    // Read the magic in full even if the source hands out bytes one at a
    // time, then put it back in front of the rest.
    let mut magic = [0u8; SNIFF_LEN];
    let have = read_full(&mut payload, &mut magic)?;
    let head = &magic[..have];
    let stream = BufReader::with_capacity(64 * 1024, io::Cursor::new(head.to_vec()).chain(payload));
    // Beyond a few threads extraction sets the pace of a restore, and every
    // thread adds two frames in flight (up to 4 MiB for gzip, 8 for zstd).
    let threads = default_threads().min(MAX_DECODE_THREADS);
    Ok(if super::gunzip::member_len(head).is_some() {
        Box::new(ParallelDecoder::<_, super::gunzip::Gzip>::new(
            stream, threads,
        )?)
    } else if head.starts_with(&GZIP_MAGIC) {
        Box::new(flate2::bufread::MultiGzDecoder::new(stream))
    } else if super::unzstd::bounded_first_frame(head) {
        Box::new(ParallelDecoder::<_, super::unzstd::Zstd>::new(
            stream, threads,
        )?)
    } else if head.starts_with(&ZSTD_MAGIC) {
        // Reads every frame; libzstd's default window limit (128 MiB) holds,
        // and images written here use 8 MiB windows at most (level 19).
        Box::new(zstd::stream::read::Decoder::with_buffer(stream)?)
    } else {
        Box::new(stream)
    })
}

/// Sees the frames of a tagged run as they reach the payload (see
/// [`Encoder::set_tag`]); it must not fail the payload, so it has no error.
pub(crate) trait FrameTap {
    /// One whole frame of run `tag`, compressed, of `raw` uncompressed bytes.
    fn frame(&mut self, tag: u64, frame: &[u8], raw: usize);
    /// Run `tag` has no more frames.
    fn end(&mut self, tag: u64);
}

/// A place in the payload, in order: a block being compressed, frames
/// ready to write, or the end of a tagged run.
enum Slot {
    Compressing(Receiver<io::Result<Done>>, Option<u64>),
    Ready(Vec<u8>),
    End(u64),
}

/// A finished (or failed) block, and the buffers to reuse.
struct Done {
    input: Vec<u8>,
    member: Vec<u8>,
}

struct Job {
    input: Vec<u8>,
    member: Vec<u8>,
    reply: SyncSender<io::Result<Done>>,
}

/// Compression on all cores: the writer's thread fills blocks and hands them
/// to a pool of workers; each worker turns a block into a complete gzip
/// member or zstd frame; these are written to `inner` in block order, on the
/// writer's thread. At most `threads + 2` blocks are in flight: every worker
/// has one and the next is queued while the oldest is written, and memory
/// stays near `2 × (threads + 2)` blocks (inputs and outputs, reused).
struct ParallelBlocks<W: Write> {
    inner: W,
    block: Vec<u8>,
    block_size: usize,
    pool: Pool<Job>,
    pending: VecDeque<Slot>,
    spare_inputs: Vec<Vec<u8>>,
    spare_members: Vec<Vec<u8>>,
    max_in_flight: usize,
    members: u64,
    /// Uncompressed bytes written (spliced frames included).
    raw: u64,
    /// The tag of the blocks being written, if any.
    tag: Option<u64>,
    tap: Option<Box<dyn FrameTap>>,
}

impl<W: Write> ParallelBlocks<W> {
    fn new(inner: W, block_size: usize, threads: usize, pool: Pool<Job>) -> ParallelBlocks<W> {
        ParallelBlocks {
            inner,
            block: Vec::with_capacity(block_size),
            block_size,
            pool,
            pending: VecDeque::new(),
            spare_inputs: Vec::new(),
            spare_members: Vec::new(),
            max_in_flight: threads + 2,
            members: 0,
            raw: 0,
            tag: None,
            tap: None,
        }
    }

    fn cut(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            self.submit()?;
        }
        Ok(())
    }

    fn set_tag(&mut self, tag: Option<u64>) -> io::Result<()> {
        self.cut()?;
        if let Some(old) = self.tag.take() {
            self.pending.push_back(Slot::End(old));
        }
        self.tag = tag;
        Ok(())
    }

    fn splice(&mut self, frames: Vec<u8>, raw: u64) -> io::Result<()> {
        self.cut()?;
        self.raw += raw;
        self.members += 1;
        self.pending.push_back(Slot::Ready(frames));
        // Spliced frames wait behind blocks still being compressed: keep
        // the queue (and the memory it holds) bounded.
        while self.pending.len() > self.max_in_flight {
            self.write_oldest()?;
        }
        self.write_ready()
    }

    /// Writes the slots at the front that are done, in order.
    fn write_ready(&mut self) -> io::Result<()> {
        loop {
            match self.pending.front() {
                Some(Slot::Compressing(rx, _)) => match rx.try_recv() {
                    Ok(done) => {
                        let Some(Slot::Compressing(_, tag)) = self.pending.pop_front() else {
                            unreachable!("the front slot was just seen")
                        };
                        self.emit(done, tag)?;
                    }
                    Err(TryRecvError::Empty) => return Ok(()),
                    Err(TryRecvError::Disconnected) => return Err(self.pool.died()),
                },
                Some(_) => self.write_oldest()?,
                None => return Ok(()),
            }
        }
    }

    /// Blocks being compressed.
    fn compressing(&self) -> usize {
        self.pending
            .iter()
            .filter(|s| matches!(s, Slot::Compressing(..)))
            .count()
    }

    /// Hands the current block to the pool (waiting for the oldest block
    /// first if too many are in flight), then writes whatever members are
    /// ready, in order.
    fn submit(&mut self) -> io::Result<()> {
        while self.compressing() >= self.max_in_flight {
            self.write_oldest()?;
        }
        let next = self
            .spare_inputs
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.block_size));
        let input = std::mem::replace(&mut self.block, next);
        let member = self.spare_members.pop().unwrap_or_default();
        let (reply, done) = mpsc::sync_channel(1);
        self.pool.send(Job {
            input,
            member,
            reply,
        })?;
        self.pending.push_back(Slot::Compressing(done, self.tag));
        self.members += 1;
        self.write_ready()
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        match self.pending.pop_front() {
            None => Ok(()),
            Some(Slot::Compressing(rx, tag)) => {
                let done = rx.recv().map_err(|_| self.pool.died())?;
                self.emit(done, tag)
            }
            Some(Slot::Ready(frames)) => self.inner.write_all(&frames),
            Some(Slot::End(tag)) => {
                if let Some(tap) = &mut self.tap {
                    tap.end(tag);
                }
                Ok(())
            }
        }
    }

    fn emit(&mut self, done: io::Result<Done>, tag: Option<u64>) -> io::Result<()> {
        let mut done = done?;
        self.inner.write_all(&done.member)?;
        if let (Some(tag), Some(tap)) = (tag, &mut self.tap) {
            tap.frame(tag, &done.member, done.input.len());
        }
        done.input.clear();
        self.spare_inputs.push(done.input);
        self.spare_members.push(done.member);
        Ok(())
    }

    fn drain(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<W> {
        // An empty payload still gets one (empty) member or frame: a
        // zero-byte file is not a valid gzip or zstd stream.
        if !self.block.is_empty() || self.members == 0 {
            self.submit()?;
        }
        self.set_tag(None)?;
        self.drain()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelBlocks<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.block_size - self.block.len());
        self.block.extend_from_slice(&data[..n]);
        self.raw += n as u64;
        if self.block.len() == self.block_size {
            self.submit()?;
        }
        Ok(n)
    }

    /// Ends the current block early and writes every block so far.
    fn flush(&mut self) -> io::Result<()> {
        if !self.block.is_empty() {
            self.submit()?;
        }
        self.drain()?;
        self.inner.flush()
    }
}

/// A compression worker: takes blocks from the queue and turns each into
/// `out` with `encode`, using a state made once per thread by `make`.
fn block_worker<S>(
    jobs: &Mutex<Receiver<Job>>,
    make: impl FnOnce() -> io::Result<S>,
    encode: impl Fn(&mut S, &[u8], &mut Vec<u8>) -> io::Result<()>,
) {
    let mut state = make();
    while let Some(Job {
        input,
        mut member,
        reply,
    }) = next_job(jobs)
    {
        let result = match &mut state {
            Ok(state) => encode(state, &input, &mut member).map(|()| Done { input, member }),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        // The writer may have gone (an error elsewhere): nothing to tell.
        let _ = reply.send(result);
    }
}

/// A zstd compression state at `level`: every frame declares its content
/// size (the reader needs it to decompress frames in parallel) and carries
/// an XXH64 checksum (cheap, and lets `zstd -t` vouch for a payload alone).
fn zstd_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut z = zstd::bulk::Compressor::new(level)?;
    z.set_parameter(CParameter::ChecksumFlag(true))?;
    z.set_parameter(CParameter::ContentSizeFlag(true))?;
    Ok(z)
}

/// Writes `input` as one complete zstd frame into `out`.
fn zstd_frame(
    z: &mut zstd::bulk::Compressor<'static>,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(input.len()));
    z.compress_to_buffer(input, out)?;
    Ok(())
}

/// A worker's deflate state: libdeflate's compressor at the codec's level
/// and a buffer it compresses a whole block into.
struct Deflater {
    compressor: libdeflater::Compressor,
    scratch: Vec<u8>,
}

impl Deflater {
    fn new(level: u32) -> io::Result<Deflater> {
        let level = libdeflater::CompressionLvl::new(level as i32).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gzip level {level}: {e:?}"),
            )
        })?;
        Ok(Deflater {
            compressor: libdeflater::Compressor::new(level),
            scratch: Vec::new(),
        })
    }
}

/// Writes `input` as one complete gzip member into `out`: deflated, or
/// stored when it would not shrink.
fn gzip_member(
    deflate: &mut Deflater,
    level: u32,
    input: &[u8],
    out: &mut Vec<u8>,
) -> io::Result<()> {
    out.clear();
    out.extend_from_slice(&GZIP_HEADER);
    out[8] = match level {
        9 => 2,
        1 => 4,
        _ => 0,
    };
    let stored_len = stored_size(input.len());
    let deflated = level > 0 && !looks_incompressible(input) && {
        deflate_into(deflate, input, out)?;
        // Rarely, the sample misjudges: never emit more than storing would.
        out.len() - GZIP_HEADER.len() < stored_len
    };
    if !deflated {
        out.truncate(GZIP_HEADER.len());
        store_into(input, out);
    }
    let mut crc = flate2::Crc::new();
    crc.update(input);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    // ISIZE is the length modulo 2^32 (blocks are 1 MiB anyway).
    out.extend_from_slice(&(input.len() as u32).to_le_bytes());
    let total = u32::try_from(out.len()).expect("a member of a 1 MiB block fits in u32");
    out[MEMBER_LEN_AT..MEMBER_LEN_AT + 4].copy_from_slice(&total.to_le_bytes());
    Ok(())
}

/// Raw deflate of a whole block (one final deflate stream), appended to
/// `out`.
fn deflate_into(deflate: &mut Deflater, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let bound = deflate.compressor.deflate_compress_bound(input.len());
    if deflate.scratch.len() < bound {
        // Zeroed once: the buffer keeps its length from block to block.
        deflate.scratch.resize(bound, 0);
    }
    let n = deflate
        .compressor
        .deflate_compress(input, &mut deflate.scratch)
        .map_err(|e| io::Error::other(format!("deflate: {e:?}")))?;
    out.extend_from_slice(&deflate.scratch[..n]);
    Ok(())
}

/// Size of `n` bytes as deflate stored blocks (5 bytes of header per block).
fn stored_size(n: usize) -> usize {
    n + 5 * n.div_ceil(STORED_MAX).max(1)
}

/// Appends `input` as deflate stored blocks (RFC 1951 §3.2.4). The stream
/// starts byte-aligned after the gzip header, so each block header is one
/// byte (BFINAL, BTYPE = 00, padding) followed by LEN and NLEN.
fn store_into(input: &[u8], out: &mut Vec<u8>) {
    out.reserve(stored_size(input.len()));
    let mut chunks = input.chunks(STORED_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        return;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

/// Samples taken from a block to judge it.
const SAMPLES: usize = 8;
/// Bytes per sample.
const SAMPLE_LEN: usize = 8 * 1024;
/// Order-0 entropy (bits per byte) above which a sample counts as random.
/// Uniformly random 8 KiB samples measure about 7.98 (a finite sample falls
/// short of 8); deflate or zstd output and encrypted data about 7.97–7.98;
/// text, logs, SQLite pages and executables 4–6.5.
const RANDOM_BITS: f64 = 7.9;

/// True when every sample of `block` looks random, i.e. deflate would gain
/// nothing. A block with any compressible sample is deflated in full (and
/// stored afterwards if that did not pay), so mixed blocks keep their gain.
fn looks_incompressible(block: &[u8]) -> bool {
    if block.len() < SAMPLES * SAMPLE_LEN {
        // Small blocks (the last of a stream) are cheap to just try.
        return false;
    }
    let stride = (block.len() - SAMPLE_LEN) / (SAMPLES - 1);
    (0..SAMPLES).all(|i| {
        let at = i * stride;
        entropy_bits(&block[at..at + SAMPLE_LEN]) >= RANDOM_BITS
    })
}

fn entropy_bits(sample: &[u8]) -> f64 {
    let mut counts = [0u32; 256];
    for &b in sample {
        counts[usize::from(b)] += 1;
    }
    let n = sample.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::{Command, Stdio};

    /// Log-like lines: compressible, but not trivially.
    fn text(n: usize, seed: u64) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "accept",
            "deny",
            "tcp",
            "udp",
            "10.0.3.17",
            "192.168.1.1",
            "policy",
            "rule",
            "session",
            "established",
            "closed",
            "admin",
            "login",
            "gateway",
            "\"ok\"",
            "443",
        ];
        let mut out = Vec::with_capacity(n + 64);
        let mut s = seed | 1;
        let mut line = 0u64;
        while out.len() < n {
            line += 1;
            out.extend_from_slice(format!("{{\"seq\":{line},\"msg\":\"").as_bytes());
            for _ in 0..8 {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                out.extend_from_slice(WORDS[(s % WORDS.len() as u64) as usize].as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(format!("\",\"id\":{}}}\n", s % 100_000).as_bytes());
        }
        out.truncate(n);
        out
    }

    fn random(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn encode(data: &[u8], codec: Compression, level: u32, threads: usize) -> Vec<u8> {
        let mut e = Encoder::with_threads(Vec::new(), codec, level, threads).unwrap();
        // Odd-sized writes, as the tar builder does.
        for piece in data.chunks(7919) {
            e.write_all(piece).unwrap();
        }
        e.finish().unwrap()
    }

    fn decode(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(payload).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    /// The members of a gzip stream, each checked by flate2's single-member
    /// decoder; returns their uncompressed sizes.
    fn members(mut stream: &[u8]) -> Vec<usize> {
        let mut sizes = Vec::new();
        while !stream.is_empty() {
            let mut d = flate2::bufread::GzDecoder::new(stream);
            let mut out = Vec::new();
            d.read_to_end(&mut out).unwrap();
            stream = d.into_inner();
            sizes.push(out.len());
        }
        sizes
    }

    fn tool(name: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
        let mut child = Command::new(name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {name} (install it: apt-get install {name}): {e}")
            });
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        let feeder = std::thread::spawn(move || stdin.write_all(&input));
        let out = child.wait_with_output().unwrap();
        feeder.join().unwrap().unwrap();
        assert!(out.status.success(), "{name} {args:?} failed");
        out.stdout
    }

    const SIZES: &[usize] = &[
        0,
        1,
        GZIP_BLOCK - 1,
        GZIP_BLOCK,
        GZIP_BLOCK + 1,
        3 * GZIP_BLOCK + 4321,
    ];

    #[test]
    fn gzip_round_trips_at_block_boundaries_with_one_member_per_block() {
        for &n in SIZES {
            let data = text(n, n as u64);
            for threads in [1, 3] {
                let gz = encode(&data, Compression::Gzip, 6, threads);
                assert_eq!(decode(&gz), data, "{n} bytes, {threads} threads");
                let mut d = flate2::read::MultiGzDecoder::new(&gz[..]);
                let mut via_flate2 = Vec::new();
                d.read_to_end(&mut via_flate2).unwrap();
                assert_eq!(via_flate2, data);
                let expected: Vec<usize> = if n == 0 {
                    vec![0]
                } else {
                    data.chunks(GZIP_BLOCK).map(<[u8]>::len).collect()
                };
                assert_eq!(members(&gz), expected, "{n} bytes");
            }
        }
    }

    #[test]
    fn gzip_every_level_round_trips() {
        let data = [text(GZIP_BLOCK + 10, 1), random(100_000, 2)].concat();
        let sizes: Vec<usize> = (0..=9)
            .map(|level| {
                let gz = encode(&data, Compression::Gzip, level, 2);
                assert_eq!(decode(&gz), data, "level {level}");
                gz.len()
            })
            .collect();
        assert!(sizes[0] > data.len(), "level 0 stores");
        assert!(sizes[1] < sizes[0] && sizes[9] < sizes[1], "{sizes:?}");
        assert!(Encoder::with_threads(Vec::new(), Compression::Gzip, 10, 1).is_err());
    }

    #[test]
    fn gzip_output_is_read_by_gzip_and_gnu_tar() {
        let data = [text(2 * GZIP_BLOCK + 99, 7), random(GZIP_BLOCK, 8)].concat();
        let gz = encode(&data, Compression::Gzip, 6, 2);
        assert_eq!(tool("gzip", &["-dc"], &gz), data);
        assert_eq!(
            tool("gzip", &["-dc"], &encode(b"", Compression::Gzip, 6, 2)),
            b""
        );
        assert_eq!(
            tool("gzip", &["-dc"], &encode(b"x", Compression::Gzip, 6, 2)),
            b"x"
        );
        tar_extracts(Compression::Gzip, &["-xzf", "-"]);
    }

    #[test]
    fn zstd_output_is_read_by_zstd_and_gnu_tar() {
        for &n in SIZES {
            let data = text(n, 3);
            for threads in [1, 2] {
                let z = encode(&data, Compression::Zstd, 3, threads);
                assert!(z.starts_with(&ZSTD_MAGIC));
                assert_eq!(decode(&z), data, "{n} bytes");
                assert_eq!(tool("zstd", &["-dcq"], &z), data, "{n} bytes");
            }
        }
        let z = encode(&text(5 * GZIP_BLOCK, 4), Compression::Zstd, 19, 2);
        assert_eq!(decode(&z), text(5 * GZIP_BLOCK, 4));
        tar_extracts(Compression::Zstd, &["--zstd", "-xf", "-"]);
    }

    /// A tar written through the encoder extracts with GNU tar.
    fn tar_extracts(codec: Compression, args: &[&str]) {
        let dir = tempfile::tempdir().unwrap();
        let big = random(GZIP_BLOCK + 5, 11);
        let log = text(3 * GZIP_BLOCK, 12);
        let mut b = tar::Builder::new(Encoder::with_threads(Vec::new(), codec, 6, 2).unwrap());
        for (name, data) in [
            ("a/big.bin", &big[..]),
            ("a/audit.log", &log[..]),
            ("empty", b""),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        let payload = b.into_inner().unwrap().finish().unwrap();
        let mut child = Command::new("tar")
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::piped())
            .spawn()
            .expect("GNU tar");
        child.stdin.take().unwrap().write_all(&payload).unwrap();
        assert!(child.wait().unwrap().success(), "tar {args:?}");
        let read = |p: &str| std::fs::read(dir.path().join(Path::new(p))).unwrap();
        assert_eq!(read("a/big.bin"), big);
        assert_eq!(read("a/audit.log"), log);
        assert_eq!(read("empty"), b"");
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let data = random(3 * GZIP_BLOCK, 5);
        let gz = encode(&data, Compression::Gzip, 6, 2);
        assert_eq!(decode(&gz), data);
        // Stored: 5 bytes per 64 KiB run plus 28 per member, nothing more.
        let overhead = gz.len() - data.len();
        assert_eq!(overhead, 3 * (28 + 5 * GZIP_BLOCK.div_ceil(STORED_MAX)));
        // The first deflate block header after the gzip header: not final, stored.
        assert_eq!(gz[MEMBER_HEADER_LEN], 0);
        assert_eq!(tool("gzip", &["-dc"], &gz), data);
    }

    #[test]
    fn a_block_with_any_compressible_part_is_deflated() {
        let data = [random(GZIP_BLOCK / 2, 6), text(GZIP_BLOCK / 2, 6)].concat();
        assert!(!looks_incompressible(&data));
        let gz = encode(&data, Compression::Gzip, 6, 1);
        assert!(
            gz.len() < data.len() * 3 / 4,
            "{} of {}",
            gz.len(),
            data.len()
        );
        assert_eq!(decode(&gz), data);
        // Compressed data looks random; text does not.
        let deflated = encode(&text(8 * GZIP_BLOCK, 9), Compression::Gzip, 9, 2);
        assert!(deflated.len() > SAMPLES * SAMPLE_LEN);
        assert!(looks_incompressible(&deflated));
        assert!(!looks_incompressible(&text(GZIP_BLOCK, 10)));
    }

    /// Independent members cost little against one stream of the same
    /// compressor at the same level (each member starts with an empty
    /// window).
    #[test]
    fn gzip_size_stays_within_two_percent_of_a_single_stream() {
        let data = text(8 * GZIP_BLOCK, 13);
        let ours = encode(&data, Compression::Gzip, 6, 2).len();
        let mut one = libdeflater::Compressor::new(libdeflater::CompressionLvl::new(6).unwrap());
        let mut serial = vec![0; one.gzip_compress_bound(data.len())];
        let serial = one.gzip_compress(&data, &mut serial).unwrap();
        assert!(
            (ours as f64) <= serial as f64 * 1.02,
            "parallel {ours} vs serial {serial}"
        );
    }

    #[test]
    fn none_passes_bytes_through_and_plain_tar_is_detected() {
        let data = text(1000, 14);
        let plain = encode(&data, Compression::None, 0, 1);
        assert_eq!(plain, data);
        assert_eq!(decode(&plain), data);
        assert_eq!(decode(b""), b"");
        assert_eq!(decode(b"\x1f"), b"\x1f");
    }

    #[test]
    fn detection_survives_one_byte_reads() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((&b, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                if buf.is_empty() {
                    return Ok(0);
                }
                buf[0] = b;
                self.0 = rest;
                Ok(1)
            }
        }
        let data = text(50_000, 15);
        for codec in [Compression::Gzip, Compression::Zstd, Compression::None] {
            let payload = encode(&data, codec, 3, 2);
            let mut out = Vec::new();
            decoder(Trickle(&payload))
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data, "{codec:?}");
        }
    }

    #[test]
    fn a_failing_destination_fails_the_encoder_without_hanging() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = text(6 * GZIP_BLOCK, 16);
        for codec in [Compression::Gzip, Compression::Zstd] {
            let mut e = Encoder::with_threads(Full(100_000), codec, 3, 2).unwrap();
            let err = e
                .write_all(&data)
                .and_then(|()| e.finish().map(|_| ()))
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::StorageFull, "{codec:?}");
        }
    }

    #[test]
    fn flush_ends_a_member_early() {
        let mut e = Encoder::with_threads(Vec::new(), Compression::Gzip, 6, 2).unwrap();
        e.write_all(b"first").unwrap();
        e.flush().unwrap();
        e.write_all(b"second").unwrap();
        let gz = e.finish().unwrap();
        assert_eq!(members(&gz), vec![5, 6]);
        assert_eq!(decode(&gz), b"firstsecond");
    }
}
