//! The gzip members this engine writes, as frames for parallel
//! decompression ([`super::parallel`]).
//!
//! Every member the encoder writes carries its own total length in an `Ab`
//! extra subfield (see [`super::codec`]), so the reader can cut the stream
//! into members without inflating it. Each member's CRC-32 and length are
//! checked. Streams whose first member has no such field (a payload
//! re-packed with `gzip` or `pigz`) are read serially by
//! [`super::codec::decoder`] instead.
use std::io::{self, Read};

use super::parallel::{corrupt, truncated, Frames};
use super::pool::read_full;

/// Input bytes per gzip member: large enough that the member framing (28
/// bytes) and the cold window at each start cost little, small enough that
/// `threads + 2` blocks in flight stay a few MiB.
pub(crate) const GZIP_BLOCK: usize = 1 << 20;
/// gzip member header: magic, CM = deflate, FLG = FEXTRA, no mtime (the tar
/// entries carry the times), XFL filled in per level, OS = Unix; then one
/// extra subfield (RFC 1952 §2.3.1.1), `Ab` with four bytes: the member's
/// total length, little-endian, filled in once it is known. Readers that do
/// not know the subfield skip it (gzip, GNU tar, zlib); ours uses it to hand
/// whole members to parallel decompression threads.
pub(crate) const GZIP_HEADER: [u8; MEMBER_HEADER_LEN] = [
    0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 3, 8, 0, b'A', b'b', 4, 0, 0, 0, 0, 0,
];
/// Length of [`GZIP_HEADER`].
pub(crate) const MEMBER_HEADER_LEN: usize = 20;
/// Where the member length sits in [`GZIP_HEADER`].
pub(crate) const MEMBER_LEN_AT: usize = 16;

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

/// Length-tagged gzip members.
pub(crate) struct Gzip;

impl Frames for Gzip {
    type State = flate2::Decompress;
    const CODEC: &'static str = "gzip";
    const UNIT: &'static str = "member";

    fn read_frame(source: &mut dyn Read, index: u64, member: &mut Vec<u8>) -> io::Result<bool> {
        let mut head = [0u8; MEMBER_HEADER_LEN];
        let got = read_full(source, &mut head)?;
        if got == 0 {
            return Ok(false);
        }
        if got < head.len() {
            return Err(truncated::<Gzip>(index, "the header of "));
        }
        let len = member_len(&head)
            .ok_or_else(|| corrupt::<Gzip>(index, "its header has no length field"))?;
        if !(MEMBER_HEADER_LEN + 8..=MAX_MEMBER).contains(&len) {
            return Err(corrupt::<Gzip>(
                index,
                format!("a member length of {len} bytes"),
            ));
        }
        member.clear();
        member.extend_from_slice(&head);
        member.resize(len, 0);
        let got = read_full(source, &mut member[MEMBER_HEADER_LEN..])?;
        if got < len - MEMBER_HEADER_LEN {
            return Err(truncated::<Gzip>(index, ""));
        }
        Ok(true)
    }

    fn state() -> io::Result<flate2::Decompress> {
        Ok(flate2::Decompress::new(false))
    }

    fn decode(
        inflate: &mut flate2::Decompress,
        member: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        inflate_member(inflate, member, out)
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
    use crate::image::codec::{decoder, Encoder};
    use crate::image::parallel::testing::{mixed, read_all};
    use crate::image::parallel::ParallelDecoder;
    use crate::model::Compression;
    use std::io::Write;

    type ParallelGunzip<R> = ParallelDecoder<R, Gzip>;

    fn data(n: usize) -> Vec<u8> {
        mixed(n, 300_000, b"policy accept tcp 443 from admin\n")
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = Encoder::with_threads(Vec::new(), Compression::Gzip, 6, 2).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
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
