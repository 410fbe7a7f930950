//! The zstd frames this engine writes, as frames for parallel decompression
//! ([`super::parallel`]).
//!
//! The encoder writes one standard zstd frame (RFC 8878) per 2 MiB block,
//! each with its content size and XXH64 checksum. A frame's compressed
//! length is not in its header, but its blocks' headers give each block's
//! size, so the reader walks them (three bytes per block of up to 128 KiB)
//! to cut the stream into frames without decompressing it. Streams whose
//! first frame does not declare a content size small enough to buffer (a
//! payload re-packed by the `zstd` tool from a pipe, or from a large file)
//! are read serially by [`super::codec::decoder`] instead.
use std::io::{self, Read};

use super::parallel::{corrupt, truncated, Frames};
use super::pool::read_full;

/// First bytes of a zstd frame.
pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Input bytes per zstd frame. Independent frames let restore decompress on
/// every core (zstd's own multithreaded mode writes one frame that only one
/// thread can read); at 2 MiB — the window of levels 1–5 — they cost less
/// than 1% of size against one stream (+0.1% on the 1 GiB appliance
/// benchmark), and `threads + 2` blocks in flight keep a whole backup near
/// 40 MiB on two threads.
pub(crate) const ZSTD_BLOCK: usize = 2 << 20;

/// Largest decompressed frame accepted (the encoder writes 2 MiB blocks).
const MAX_OUTPUT: u64 = 2 * ZSTD_BLOCK as u64;
/// Largest compressed frame accepted: a frame of incompressible content is
/// its content plus three bytes per 128 KiB block and the framing.
const MAX_FRAME: usize = 2 * ZSTD_BLOCK + 64 * 1024;
/// Magic, frame header descriptor.
const FIXED_HEAD: usize = 5;
/// Longest frame header: magic, descriptor, window, dictionary ID (4), content size (8).
pub(crate) const MAX_HEAD: usize = FIXED_HEAD + 1 + 4 + 8;

/// What a frame header says.
#[derive(Debug, PartialEq)]
struct FrameHeader {
    /// Header length in bytes, magic included.
    len: usize,
    /// Declared content size, if any.
    content_size: Option<u64>,
    /// Whether a 4-byte checksum follows the last block.
    checksum: bool,
}

/// Parses the header at the start of `bytes`; `Ok(None)` when `bytes` is
/// too short to hold all of it.
fn frame_header(bytes: &[u8]) -> Result<Option<FrameHeader>, String> {
    if bytes.len() < FIXED_HEAD {
        return Ok(None);
    }
    if bytes[..4] != ZSTD_MAGIC {
        return Err("no zstd frame starts here".into());
    }
    let descriptor = bytes[4];
    if descriptor & 0x08 != 0 {
        return Err("a reserved bit of its header is set".into());
    }
    let single_segment = descriptor & 0x20 != 0;
    let dictionary = [0, 1, 2, 4][usize::from(descriptor & 3)];
    let size_len = match descriptor >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let len = FIXED_HEAD + usize::from(!single_segment) + dictionary + size_len;
    let Some(header) = bytes.get(..len) else {
        return Ok(None);
    };
    let mut size = [0u8; 8];
    size[..size_len].copy_from_slice(&header[len - size_len..]);
    let content_size = match size_len {
        0 => None,
        // The two-byte form is offset by 256 (RFC 8878 §3.1.1.1.4).
        2 => Some(u64::from_le_bytes(size) + 256),
        _ => Some(u64::from_le_bytes(size)),
    };
    Ok(Some(FrameHeader {
        len,
        content_size,
        checksum: descriptor & 0x04 != 0,
    }))
}

/// True when the stream starting with `head` can be read in parallel: its
/// first frame declares a content size no larger than a frame may have.
pub(crate) fn bounded_first_frame(head: &[u8]) -> bool {
    matches!(
        frame_header(head),
        Ok(Some(FrameHeader { content_size: Some(n), .. })) if n <= MAX_OUTPUT
    )
}

/// zstd frames with declared content sizes.
pub(crate) struct Zstd;

impl Frames for Zstd {
    type State = zstd::bulk::Decompressor<'static>;
    const CODEC: &'static str = "zstd";
    const UNIT: &'static str = "frame";

    fn read_frame(source: &mut dyn Read, index: u64, frame: &mut Vec<u8>) -> io::Result<bool> {
        frame.clear();
        frame.resize(FIXED_HEAD, 0);
        let got = read_full(source, frame)?;
        if got == 0 {
            return Ok(false);
        }
        if got < FIXED_HEAD {
            return Err(truncated::<Zstd>(index, "the header of "));
        }
        let bad = |what: String| corrupt::<Zstd>(index, what);
        let header = loop {
            if let Some(h) = frame_header(frame).map_err(bad)? {
                break h;
            }
            // The descriptor says how long the header is; read one byte
            // at a time up to it (at most 13 more).
            let at = frame.len();
            frame.push(0);
            if read_full(source, &mut frame[at..])? == 0 {
                return Err(truncated::<Zstd>(index, "the header of "));
            }
        };
        match header.content_size {
            Some(n) if n <= MAX_OUTPUT => {}
            Some(n) => return Err(bad(format!("it declares {n} bytes of content"))),
            None => return Err(bad("its header declares no content size".into())),
        }
        loop {
            let at = frame.len();
            frame.resize(at + 3, 0);
            if read_full(source, &mut frame[at..])? < 3 {
                return Err(truncated::<Zstd>(index, ""));
            }
            let block = u32::from_le_bytes([frame[at], frame[at + 1], frame[at + 2], 0]);
            let last = block & 1 == 1;
            let size = (block >> 3) as usize;
            let stored = match (block >> 1) & 3 {
                // Raw and compressed blocks store their size; RLE one byte.
                0 | 2 => size,
                1 => 1,
                _ => return Err(bad("a block of the reserved type".into())),
            };
            read_more(source, frame, stored, index)?;
            if last {
                break;
            }
        }
        if header.checksum {
            read_more(source, frame, 4, index)?;
        }
        Ok(true)
    }

    fn state() -> io::Result<zstd::bulk::Decompressor<'static>> {
        zstd::bulk::Decompressor::new()
    }

    fn decode(
        unzstd: &mut zstd::bulk::Decompressor<'static>,
        frame: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        let size = match frame_header(frame) {
            Ok(Some(FrameHeader {
                content_size: Some(n),
                ..
            })) => n as usize,
            _ => return Err("its header changed while in flight".into()),
        };
        out.clear();
        out.reserve(size);
        // libzstd checks the content size and the checksum.
        let n = unzstd
            .decompress_to_buffer(frame, out)
            .map_err(|e| format!("zstd data: {e}"))?;
        if n != size {
            return Err(format!("{n} bytes of content where its header says {size}"));
        }
        Ok(())
    }
}

/// Appends `n` bytes of `source` to `frame`, within the frame size limit.
fn read_more(source: &mut dyn Read, frame: &mut Vec<u8>, n: usize, index: u64) -> io::Result<()> {
    let at = frame.len();
    if at + n > MAX_FRAME {
        return Err(corrupt::<Zstd>(
            index,
            format!("it runs past {MAX_FRAME} bytes"),
        ));
    }
    frame.resize(at + n, 0);
    if read_full(source, &mut frame[at..])? < n {
        return Err(truncated::<Zstd>(index, ""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::codec::{decoder, Encoder};
    use crate::image::parallel::testing::{mixed, read_all};
    use crate::image::parallel::ParallelDecoder;
    use crate::model::Compression;
    use std::io::Write;

    type ParallelUnzstd<R> = ParallelDecoder<R, Zstd>;

    fn data(n: usize) -> Vec<u8> {
        mixed(
            n,
            700_000,
            b"{\"event\":\"login\",\"admin\":\"ops\",\"ok\":true}\n",
        )
    }

    fn zst(data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_threads(Vec::new(), Compression::Zstd, 3, 2).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Cuts a stream into frames with the reader's walker; returns each
    /// frame's length and declared content size.
    fn frames(mut stream: &[u8]) -> Vec<(usize, u64)> {
        let mut found = Vec::new();
        let mut frame = Vec::new();
        while Zstd::read_frame(&mut stream, found.len() as u64, &mut frame).unwrap() {
            let header = frame_header(&frame).unwrap().unwrap();
            found.push((frame.len(), header.content_size.unwrap()));
        }
        found
    }

    #[test]
    fn every_frame_declares_its_size_and_reads_back_in_parallel() {
        for n in [0, 1, 300, ZSTD_BLOCK, 5 * ZSTD_BLOCK + 77] {
            let plain = data(n);
            let packed = zst(&plain);
            let walked = frames(&packed);
            assert_eq!(
                walked.iter().map(|f| f.0).sum::<usize>(),
                packed.len(),
                "{n} bytes: the walk covers the stream"
            );
            let sizes: Vec<u64> = walked.iter().map(|f| f.1).collect();
            let expected: Vec<u64> = if n == 0 {
                vec![0]
            } else {
                plain.chunks(ZSTD_BLOCK).map(|c| c.len() as u64).collect()
            };
            assert_eq!(sizes, expected, "{n} bytes");
            for threads in [1, 2, 4] {
                let got = read_all(ParallelUnzstd::new(&packed[..], threads).unwrap()).unwrap();
                assert_eq!(got, plain, "{n} bytes, {threads} threads");
            }
            assert!(bounded_first_frame(&packed));
            assert_eq!(read_all(decoder(&packed[..]).unwrap()).unwrap(), plain);
            // libzstd's own reader agrees, frame by frame.
            assert_eq!(zstd::decode_all(&packed[..]).unwrap(), plain);
        }
    }

    #[test]
    fn header_forms_are_parsed() {
        // Two-byte content size (offset by 256), window byte, checksum.
        let h = frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x44, 0x58, 0x10, 0x00]).unwrap();
        assert_eq!(
            h,
            Some(FrameHeader {
                len: 8,
                content_size: Some(0x10 + 256),
                checksum: true
            })
        );
        // Single segment, one-byte size, no checksum; too short for all of it.
        assert_eq!(
            frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x07]).unwrap(),
            Some(FrameHeader {
                len: 6,
                content_size: Some(7),
                checksum: false
            })
        );
        assert_eq!(frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x20]).unwrap(), None);
        // No content size; a reserved bit; not a frame.
        assert_eq!(
            frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x04, 0x58])
                .unwrap()
                .unwrap()
                .content_size,
            None
        );
        assert!(frame_header(&[0x28, 0xb5, 0x2f, 0xfd, 0x0c, 0x58]).is_err());
        assert!(frame_header(b"ustar").is_err());
    }

    #[test]
    fn streams_without_bounded_frames_are_read_serially() {
        let plain = data(3 * ZSTD_BLOCK);
        // libzstd's streaming encoder: one frame, no declared size.
        let streamed = zstd::encode_all(&plain[..], 3).unwrap();
        assert!(!bounded_first_frame(&streamed));
        assert_eq!(read_all(decoder(&streamed[..]).unwrap()).unwrap(), plain);
        // One frame declaring 6 MiB: too large to buffer, also serial.
        let whole = zstd::bulk::compress(&plain, 3).unwrap();
        assert!(!bounded_first_frame(&whole));
        assert_eq!(read_all(decoder(&whole[..]).unwrap()).unwrap(), plain);
        // Ours followed by a frame without a size: the reader says where.
        let mixed = [zst(b"first"), streamed].concat();
        let err = read_all(decoder(&mixed[..]).unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("frame 1"), "{err}");
    }

    #[test]
    fn damage_is_reported_with_its_frame() {
        let plain = data(4 * ZSTD_BLOCK);
        let packed = zst(&plain);
        let walked = frames(&packed);
        let second = walked[0].0;
        let end_of_second = second + walked[1].0;
        // A flipped byte inside frame 1's blocks, in its checksum, in its
        // declared content size.
        for at in [second + 5000, end_of_second - 2, second + 6] {
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
            assert!(err.to_string().contains("frame 1"), "{at}: {err}");
        }
        // Truncation inside a block, a block header, a frame header, the checksum.
        for cut in [
            second + 100,
            second + 3,
            end_of_second - 1,
            packed.len() - 1,
        ] {
            let err = read_all(decoder(&packed[..cut]).unwrap()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{cut}: {err}");
        }
    }

    #[test]
    fn size_stays_within_one_percent_of_a_single_stream() {
        // Audit-log-like lines with varying fields (about 4:1 with zstd -3,
        // like the appliance dataset's logs; the cold start of each frame
        // costs more on text that repeats exactly).
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut plain = Vec::new();
        while plain.len() < 12 * ZSTD_BLOCK {
            let (r, t) = (next(), next());
            plain.extend_from_slice(
                format!(
                    "{{\"ts\":{},\"admin\":\"op{}\",\"src\":\"10.{}.{}.{}\",\"action\":\"{}\",\"rule\":{}}}\n",
                    1_700_000_000 + t % 100_000_000,
                    r % 40,
                    (r >> 8) % 256,
                    (r >> 16) % 256,
                    (r >> 24) % 256,
                    ["accept", "drop", "login", "install-policy"][(r >> 32) as usize % 4],
                    (r >> 40) % 5000
                )
                .as_bytes(),
            );
        }
        let ours = zst(&plain).len() as f64;
        let single = zstd::encode_all(&plain[..], 3).unwrap().len() as f64;
        assert!(ours <= single * 1.01, "ours {ours} vs one stream {single}");
    }
}
