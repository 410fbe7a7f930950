//! A stream past 2 GiB, generated on the fly and checked on the fly: the
//! counter and length paths past 2^31 bytes, in bounded memory. Run alone in
//! a process of its own so that the peak-memory check measures only this
//! stream.
use std::io::{self, Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;

use crate::util::{alone, domain, CREATED};
use backup_crypto::{EncryptWriter, Error, ImageReader};

const TOTAL: u64 = (2 << 30) + 1;
const BLOCK: usize = 1 << 20;

/// The plaintext block at `index`: a fixed pattern stamped with its index, so
/// a dropped, repeated or misplaced block would not compare equal.
fn block(pattern: &[u8], index: u64, len: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&pattern[..len]);
    let stamp = index.to_le_bytes();
    let n = stamp.len().min(len);
    out[..n].copy_from_slice(&stamp[..n]);
}

/// The write end of an in-memory pipe with a bounded queue of buffers.
struct PipeWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl Write for PipeWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= BLOCK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(2 * BLOCK));
            self.tx
                .send(full)
                .map_err(|_| io::Error::from(io::ErrorKind::BrokenPipe))?;
        }
        Ok(())
    }
}

struct PipeReader {
    rx: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(next) => (self.buf, self.pos) = (next, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn pattern() -> Vec<u8> {
    crate::util::pattern(BLOCK)
}

#[test]
fn two_gib_plus_one_byte_streams_through_in_bounded_memory() {
    alone(
        "large_stream::two_gib_plus_one_byte_streams_through_in_bounded_memory",
        stream_two_gib_plus_one_byte,
    );
}

fn stream_two_gib_plus_one_byte() {
    let (tx, rx) = sync_channel(4);
    let writer = thread::spawn(move || -> Result<u64, Error> {
        let d = domain();
        let pattern = pattern();
        let pipe = PipeWriter {
            tx,
            buf: Vec::with_capacity(2 * BLOCK),
        };
        let mut w = EncryptWriter::new(pipe, &d.mk, &d.slot, CREATED)?;
        let mut written = 0u64;
        let mut buf = Vec::with_capacity(BLOCK);
        for index in 0.. {
            let len = (TOTAL - written).min(BLOCK as u64) as usize;
            if len == 0 {
                break;
            }
            block(&pattern, index, len, &mut buf);
            w.write_all(&buf)?;
            written += len as u64;
        }
        let mut pipe = w.finish()?;
        pipe.flush()?;
        Ok(written)
    });

    let pipe = PipeReader {
        rx,
        buf: Vec::new(),
        pos: 0,
    };
    let mut r = ImageReader::new(pipe)
        .unwrap()
        .unlock(&domain().mk)
        .unwrap();
    let pattern = pattern();
    let mut expected = Vec::with_capacity(BLOCK);
    let mut got = vec![0u8; BLOCK];
    let mut read = 0u64;
    for index in 0.. {
        // Odd-sized reads, so that blocks and chunks never line up.
        let len = (TOTAL - read).min(BLOCK as u64) as usize;
        let mut filled = 0;
        while filled < len {
            let n = r.read(&mut got[filled..len.min(filled + 40_009)]).unwrap();
            assert!(n > 0, "stream ended early at {}", read + filled as u64);
            filled += n;
        }
        if len == 0 {
            break;
        }
        block(&pattern, index, len, &mut expected);
        assert!(got[..len] == expected[..], "block {index} differs");
        read += len as u64;
    }
    assert_eq!(r.read(&mut got).unwrap(), 0, "nothing after the last byte");
    assert_eq!(read, TOTAL);
    assert_eq!(writer.join().unwrap().unwrap(), TOTAL);

    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak_kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/self/status");
        assert!(
            peak_kib < 64 * 1024,
            "peak RSS {peak_kib} KiB for a 2 GiB stream"
        );
    }
}
