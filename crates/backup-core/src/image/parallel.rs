//! Parallel decompression of payloads made of independent frames: the gzip
//! members and zstd frames this engine writes (see [`super::codec`]).
//!
//! The reader's thread cuts the stream into whole frames without
//! decompressing them — a gzip member carries its own length, a zstd frame
//! is walked by its block headers — and hands each to a pool of threads;
//! the decompressed frames come back in order. Each format checks its own
//! integrity (CRC-32 and length for gzip, the content size and XXH64
//! checksum for zstd).
use std::collections::VecDeque;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Mutex;

use super::pool::{next_job, Pool};

/// A payload format whose frames decompress independently.
pub(crate) trait Frames: 'static {
    /// Per-thread decompression state.
    type State;
    /// The codec, for messages: "gzip".
    const CODEC: &'static str;
    /// What one frame is called, for messages: "member".
    const UNIT: &'static str;

    /// Reads the next whole frame from `source` into `frame` (cleared
    /// first); `Ok(false)` when the source ends before a new frame starts.
    /// Errors name the frame by `index`.
    fn read_frame(source: &mut dyn Read, index: u64, frame: &mut Vec<u8>) -> io::Result<bool>;

    /// A decompression state for one thread.
    fn state() -> io::Result<Self::State>;

    /// Decompresses one frame into `out` (cleared first), checking it; the
    /// error says what is wrong with the frame.
    fn decode(state: &mut Self::State, frame: &[u8], out: &mut Vec<u8>) -> Result<(), String>;
}

/// A frame and its content, decompressed (the buffers go back for reuse).
type Decoded = io::Result<(Vec<u8>, Vec<u8>)>;

struct Job {
    frame: Vec<u8>,
    out: Vec<u8>,
    index: u64,
    reply: SyncSender<Decoded>,
}

/// Reads a stream of independent frames, decompressing up to
/// `2 × threads` frames at once on `threads` threads.
pub(crate) struct ParallelDecoder<R: Read, F: Frames> {
    source: R,
    pool: Pool<Job>,
    pending: VecDeque<Receiver<Decoded>>,
    /// The source's end or error, once reached; reported after the frames
    /// read before it.
    source_end: Option<io::Result<()>>,
    out: Vec<u8>,
    pos: usize,
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    frames: u64,
    max_in_flight: usize,
    format: PhantomData<F>,
}

impl<R: Read, F: Frames> ParallelDecoder<R, F> {
    pub(crate) fn new(source: R, threads: usize) -> io::Result<ParallelDecoder<R, F>> {
        let threads = threads.max(1);
        let name = format!("backup-un{}", F::CODEC);
        Ok(ParallelDecoder {
            source,
            pool: Pool::start(&name, threads, worker::<F>)?,
            pending: VecDeque::new(),
            source_end: None,
            out: Vec::new(),
            pos: 0,
            spare: Vec::new(),
            frames: 0,
            max_in_flight: 2 * threads,
            format: PhantomData,
        })
    }

    /// Reads the next frame from the source and queues it; `Ok(false)` at
    /// the end of the stream.
    fn queue_next(&mut self) -> io::Result<bool> {
        let index = self.frames;
        let (mut frame, out) = self.spare.pop().unwrap_or_default();
        if !F::read_frame(&mut self.source, index, &mut frame)? {
            return Ok(false);
        }
        let (reply, done) = mpsc::sync_channel(1);
        self.pool.send(Job {
            frame,
            out,
            index,
            reply,
        })?;
        self.pending.push_back(done);
        self.frames += 1;
        Ok(true)
    }

    /// Keeps the pool busy: reads frames until enough are in flight or the
    /// source ends (its end or error is kept for after the queued frames).
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

impl<R: Read, F: Frames> Read for ParallelDecoder<R, F> {
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
                    _ if self.frames == 0 => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the {} payload is empty", F::CODEC),
                    )),
                    _ => {
                        self.source_end = Some(Ok(()));
                        Ok(0)
                    }
                };
            };
            let (frame, out) = front.recv().map_err(|_| self.pool.died())??;
            let previous = std::mem::replace(&mut self.out, out);
            self.spare.push((frame, previous));
            self.pos = 0;
        }
    }
}

/// The error for frame `index` of an `F` payload.
pub(crate) fn corrupt<F: Frames>(index: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the {} payload is corrupt at {} {index}: {what}",
            F::CODEC,
            F::UNIT
        ),
    )
}

/// The error for a stream that ends inside frame `index`.
pub(crate) fn truncated<F: Frames>(index: u64, part: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "the {} payload ends inside {part}{} {index}",
            F::CODEC,
            F::UNIT
        ),
    )
}

fn worker<F: Frames>(jobs: &Mutex<Receiver<Job>>) {
    let mut state = F::state();
    while let Some(Job {
        frame,
        mut out,
        index,
        reply,
    }) = next_job(jobs)
    {
        let result = match &mut state {
            Ok(state) => F::decode(state, &frame, &mut out)
                .map_err(|what| corrupt::<F>(index, what))
                .map(|()| (frame, out)),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        };
        // The reader may have gone (an error elsewhere): nothing to tell.
        let _ = reply.send(result);
    }
}

/// Test data and helpers shared by the formats' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::io::{self, Read};

    /// `n` bytes of runs of `run` bytes: a text line repeated, every third
    /// run random (so some frames are incompressible).
    pub(crate) fn mixed(n: usize, run: usize, line: &[u8]) -> Vec<u8> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        (0..n)
            .map(|i| {
                if (i / run) % 3 == 2 {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                } else {
                    line[i % line.len()]
                }
            })
            .collect()
    }

    pub(crate) fn read_all(mut r: impl Read) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        r.read_to_end(&mut out).map(|_| out)
    }
}
