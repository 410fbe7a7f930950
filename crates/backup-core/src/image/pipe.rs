//! Bounded byte pipes between the threads of the backup and restore
//! pipelines, so that each stage (tar, compression, encryption, upload; or
//! download and decryption, decompression, extraction) runs on its own core
//! and the slowest one sets the pace.
//!
//! A pipe carries whole buffers, recycled back to the writer, so that the
//! steady state allocates nothing; its depth bounds the memory in flight.
//! The end of a stream is an explicit marker: a writer that is dropped
//! without [`PipeWriter::finish`] (its thread failed) makes the reader fail
//! instead of seeing a clean, truncated end.
use std::io::{self, Read, Write};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};

/// Bytes per buffer handed across a pipe.
pub(crate) const PIPE_CHUNK: usize = 256 * 1024;
/// Buffers in flight in one pipe (so at most `PIPE_DEPTH + 2` buffers exist).
pub(crate) const PIPE_DEPTH: usize = 4;

/// What travels down a pipe: data, the end marker (an empty buffer), or the
/// writer's error, passed on unchanged so the reader's caller can still tell
/// a tampered image from a truncated one.
type Message = io::Result<Vec<u8>>;

/// Creates a pipe holding at most `depth` buffers.
pub(crate) fn pipe(depth: usize) -> (PipeWriter, PipeReader) {
    let (tx, rx) = mpsc::sync_channel(depth);
    let (free_tx, free_rx) = mpsc::channel();
    (
        PipeWriter {
            tx,
            free: free_rx,
            buf: Vec::new(),
        },
        PipeReader {
            rx,
            free: free_tx,
            buf: Vec::new(),
            pos: 0,
            state: ReadState::Open,
        },
    )
}

fn reader_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the next stage of the pipeline stopped",
    )
}

/// The sending end: a `Write` that hands full buffers to the reader and
/// blocks while the pipe is full (back-pressure).
pub(crate) struct PipeWriter {
    tx: SyncSender<Message>,
    free: Receiver<Vec<u8>>,
    buf: Vec<u8>,
}

impl PipeWriter {
    /// A buffer to fill: one the reader gave back, else a new one. Its
    /// length is whatever it had (callers clear it or fill it).
    fn spare_buffer(&self) -> Vec<u8> {
        self.free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(PIPE_CHUNK))
    }

    fn send(&self, full: Vec<u8>) -> io::Result<()> {
        self.tx.send(Ok(full)).map_err(|_| reader_gone())
    }

    fn send_buffered(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut next = self.spare_buffer();
        next.clear();
        let full = std::mem::replace(&mut self.buf, next);
        self.send(full)
    }

    /// Reads `source` to its end straight into the pipe's buffers (no
    /// intermediate copy). A read error is passed down the pipe, after the
    /// data read before it, and also returned.
    pub(crate) fn pump_from<R: Read + ?Sized>(&mut self, source: &mut R) -> io::Result<u64> {
        let mut total = 0u64;
        let mut buf = std::mem::take(&mut self.buf);
        let mut filled = buf.len();
        loop {
            // Reading needs initialised bytes. Buffers come back from the
            // reader at full length, so after the first round this is free.
            if buf.len() < PIPE_CHUNK {
                buf.resize(PIPE_CHUNK, 0);
            }
            let got = loop {
                match source.read(&mut buf[filled..]) {
                    Ok(n) => break Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => break Err(e),
                }
            };
            match got {
                Ok(0) => {
                    buf.truncate(filled);
                    self.buf = buf;
                    return Ok(total);
                }
                Ok(n) => {
                    filled += n;
                    total += n as u64;
                    if filled == PIPE_CHUNK {
                        let next = self.spare_buffer();
                        self.send(std::mem::replace(&mut buf, next))?;
                        filled = 0;
                    }
                }
                Err(e) => {
                    buf.truncate(filled);
                    self.buf = buf;
                    self.send_buffered()?;
                    // The reader gets the original error (it may carry a
                    // typed cause); the caller gets a copy of its kind and text.
                    let copy = io::Error::new(e.kind(), e.to_string());
                    let _ = self.tx.send(Err(e));
                    return Err(copy);
                }
            }
        }
    }

    /// Sends what is buffered and the end marker.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        self.send_buffered()?;
        self.tx.send(Ok(Vec::new())).map_err(|_| reader_gone())
    }
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.capacity() == 0 {
            self.buf = self.spare_buffer();
            self.buf.clear();
        }
        let n = data.len().min(PIPE_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PIPE_CHUNK {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_buffered()
    }
}

#[derive(Debug, PartialEq, Eq)]
enum ReadState {
    Open,
    Ended,
    Failed,
}

/// The receiving end.
pub(crate) struct PipeReader {
    rx: Receiver<Message>,
    free: Sender<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
    state: ReadState,
}

impl PipeReader {
    /// The next buffer of data, `None` at the end marker. Give it back with
    /// [`PipeReader::recycle`] once it is used.
    pub(crate) fn recv_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.state {
            ReadState::Ended => return Ok(None),
            ReadState::Failed => return Err(writer_failed()),
            ReadState::Open => {}
        }
        match self.rx.recv() {
            Ok(Ok(b)) if b.is_empty() => {
                self.state = ReadState::Ended;
                Ok(None)
            }
            Ok(Ok(b)) => Ok(Some(b)),
            Ok(Err(e)) => {
                self.state = ReadState::Failed;
                Err(e)
            }
            Err(_) => {
                self.state = ReadState::Failed;
                Err(writer_failed())
            }
        }
    }

    /// Hands a buffer back to the writer for reuse.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        let _ = self.free.send(buf);
    }
}

fn writer_failed() -> io::Error {
    io::Error::other("the previous stage of the pipeline stopped before the end of the stream")
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.recv_chunk()? {
                Some(next) => {
                    let used = std::mem::replace(&mut self.buf, next);
                    self.pos = 0;
                    if used.capacity() > 0 {
                        self.recycle(used);
                    }
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Runs `source` on a thread of `scope`, handing its bytes over a bounded
/// pipe: the returned reader yields them on the caller's thread. `source` is
/// built on the new thread, so it need not be `Send` itself.
pub(crate) fn read_ahead<'scope, 'env, F, R>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    name: &str,
    source: F,
) -> io::Result<PipeReader>
where
    F: FnOnce() -> io::Result<R> + Send + 'scope,
    R: Read,
{
    let (mut writer, reader) = pipe(PIPE_DEPTH);
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn_scoped(scope, move || {
            let mut source = match source() {
                Ok(s) => s,
                Err(e) => {
                    let _ = writer.tx.send(Err(e));
                    return;
                }
            };
            if writer.pump_from(&mut source).is_ok() {
                let _ = writer.finish();
            }
        })?;
    Ok(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn bytes_arrive_in_order_through_a_thread() {
        for n in [
            0,
            1,
            PIPE_CHUNK - 1,
            PIPE_CHUNK,
            PIPE_CHUNK + 1,
            5 * PIPE_CHUNK + 7,
        ] {
            let data = pattern(n);
            let got = std::thread::scope(|s| {
                let mut r = read_ahead(s, "test", || Ok(&data[..])).unwrap();
                let mut got = Vec::new();
                r.read_to_end(&mut got).unwrap();
                got
            });
            assert_eq!(got, data, "{n} bytes");
        }
    }

    #[test]
    fn writes_and_end_marker() {
        let (mut w, mut r) = pipe(2);
        let data = pattern(3 * PIPE_CHUNK + 5);
        let t = std::thread::spawn({
            let data = data.clone();
            move || {
                for piece in data.chunks(1000) {
                    w.write_all(piece).unwrap();
                }
                w.finish().unwrap();
            }
        });
        let mut got = Vec::new();
        while let Some(c) = r.recv_chunk().unwrap() {
            got.extend_from_slice(&c);
            r.recycle(c);
        }
        t.join().unwrap();
        assert_eq!(got, data);
        assert!(r.recv_chunk().unwrap().is_none());
    }

    #[test]
    fn a_writer_dropped_without_finish_is_an_error_not_an_end() {
        let (mut w, mut r) = pipe(2);
        w.write_all(b"partial").unwrap();
        w.flush().unwrap();
        drop(w);
        let mut got = Vec::new();
        let err = r.read_to_end(&mut got).unwrap_err();
        assert_eq!(got, b"partial");
        assert_ne!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(r.read(&mut [0; 4]).is_err(), "the failure is sticky");
    }

    #[test]
    fn a_source_error_reaches_the_reader_unchanged() {
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "tampered"));
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(7);
                self.0 -= n;
                Ok(n)
            }
        }
        let (got, err) = std::thread::scope(|s| {
            let mut r = read_ahead(s, "test", || Ok(Failing(PIPE_CHUNK + 3))).unwrap();
            let mut got = Vec::new();
            let err = r.read_to_end(&mut got).unwrap_err();
            (got.len(), err)
        });
        assert_eq!(got, PIPE_CHUNK + 3, "data before the error is delivered");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(err.to_string(), "tampered");
    }

    #[test]
    fn a_reader_that_gives_up_unblocks_the_writer() {
        std::thread::scope(|s| {
            let endless = io::repeat(1);
            let mut r = read_ahead(s, "test", move || Ok(endless)).unwrap();
            let mut first = [0u8; 10];
            r.read_exact(&mut first).unwrap();
            drop(r);
            // The scope only ends if the pumping thread noticed.
        });
    }
}
