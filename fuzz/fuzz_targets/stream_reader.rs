//! The stream readers on arbitrary and on mutated valid input: never panic,
//! never release plaintext that was not written, keep failing once failed.
#![no_main]

use std::io::{self, Read, Write};
use std::sync::OnceLock;

use backup_crypto::{
    ChunkedReader, ChunkedWriter, EncryptWriter, Error, ImageReader, Keyslot, MasterKey,
    CHUNK_SIZE, KEYSLOT_LEN, STREAM_PREFIX_LEN,
};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [0x42; 32];
const CONTEXT: &[u8] = b"fuzz context";

fn master_key() -> &'static MasterKey {
    static MK: OnceLock<MasterKey> = OnceLock::new();
    MK.get_or_init(|| MasterKey::from_bytes(&KEY).unwrap())
}

/// A keyslot that parses (floor parameters); never opened here, since Argon2
/// per input would make the fuzzer crawl.
fn keyslot() -> &'static Keyslot {
    static SLOT: OnceLock<Keyslot> = OnceLock::new();
    SLOT.get_or_init(|| {
        let mut bytes = [0x17u8; KEYSLOT_LEN];
        bytes[..14].copy_from_slice(&[0, 1, 0, 0, 0x4c, 0, 0, 0, 0, 2, 0, 0, 0, 1]);
        Keyslot::from_bytes(&bytes).unwrap()
    })
}

/// A valid stream prefix (salt ‖ commitment) for `KEY` and `CONTEXT`.
fn valid_prefix() -> &'static [u8] {
    static PREFIX: OnceLock<Vec<u8>> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let w = ChunkedWriter::with_salt(Vec::new(), &KEY, CONTEXT, [9; 24]).unwrap();
        w.finish().unwrap()[..STREAM_PREFIX_LEN].to_vec()
    })
}

/// Reads to the end with read sizes taken from `sizes`; returns the
/// plaintext released and whether it ended in an error. Checks that a
/// failed reader keeps failing with the same error.
fn drain(reader: &mut impl Read, sizes: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 2 * CHUNK_SIZE];
    for i in 0.. {
        let step = sizes
            .get(i % sizes.len().max(1))
            .map_or(4096, |&b| 1 + usize::from(b) * 97);
        match reader.read(&mut buf[..step]) {
            Ok(0) => return (out, false),
            Ok(n) => {
                assert!(n <= step);
                out.extend_from_slice(&buf[..n]);
            }
            Err(e) => {
                let first = Error::from_io(e);
                assert!(
                    matches!(first, Error::Truncated | Error::DecryptionFailed),
                    "{first:?}"
                );
                let again = Error::from_io(reader.read(&mut buf[..1]).unwrap_err());
                assert_eq!(
                    std::mem::discriminant(&first),
                    std::mem::discriminant(&again)
                );
                return (out, true);
            }
        }
    }
    unreachable!()
}

fn seal(plain: &[u8]) -> Vec<u8> {
    let mut w = ChunkedWriter::with_salt(Vec::new(), &KEY, CONTEXT, [9; 24]).unwrap();
    w.write_all(plain).unwrap();
    w.finish().unwrap()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        // Arbitrary bytes as a whole stream.
        0 => {
            if let Ok(mut r) = ChunkedReader::new(rest, &KEY, CONTEXT) {
                let (plain, _) = drain(&mut r, rest);
                assert!(plain.len() <= rest.len());
            }
        }
        // A valid prefix, then arbitrary chunk bytes: the chunk framing.
        1 => {
            let mut stream = valid_prefix().to_vec();
            stream.extend_from_slice(rest);
            let mut r = ChunkedReader::new(&stream[..], &KEY, CONTEXT).expect("valid prefix");
            let (plain, failed) = drain(&mut r, rest);
            // Random tags do not authenticate: nothing may come out.
            assert!(plain.is_empty() || !failed);
        }
        // A valid stream with a mutation: cut, bit flip or appended bytes.
        2 => {
            if rest.len() < 6 {
                return;
            }
            let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % (3 * CHUNK_SIZE + 100);
            let at = usize::from(u16::from_le_bytes([rest[2], rest[3]]));
            let how = rest[4];
            let plain: Vec<u8> = (0..len).map(|i| (i as u8) ^ rest[5]).collect();
            let mut stream = seal(&plain);
            let original = stream.clone();
            match how % 3 {
                0 => stream.truncate(at % (stream.len() + 1)),
                1 => {
                    let i = (at * 7) % stream.len();
                    stream[i] ^= 1 << (how % 8);
                }
                _ => stream.extend_from_slice(&rest[6..]),
            }
            let mutated = stream != original;
            match ChunkedReader::new(&stream[..], &KEY, CONTEXT) {
                Ok(mut r) => {
                    let (out, failed) = drain(&mut r, &rest[5..]);
                    assert_eq!(
                        failed, mutated,
                        "a changed stream must fail, an unchanged one must not"
                    );
                    assert!(
                        plain.starts_with(&out),
                        "released bytes that were never written"
                    );
                    if failed {
                        assert_eq!(out.len() % CHUNK_SIZE, 0, "a partial chunk was released");
                    }
                }
                Err(e) => {
                    assert!(mutated, "{e:?} on an unchanged stream");
                    assert!(
                        matches!(e, Error::Truncated | Error::DecryptionFailed),
                        "{e:?}"
                    );
                }
            }
        }
        // The image API: arbitrary bytes, and a valid header before them.
        _ => {
            if let Ok(reader) = ImageReader::new(rest) {
                if let Ok(mut r) = reader.unlock(master_key()) {
                    let _ = drain(&mut r, rest);
                }
            }
            let mut image = Vec::new();
            let w = EncryptWriter::new(&mut image, master_key(), keyslot(), 1_700_000_000).unwrap();
            w.finish().unwrap();
            image.truncate(backup_crypto::HEADER_LEN + STREAM_PREFIX_LEN);
            image.extend_from_slice(rest);
            let reader = ImageReader::new(io::Cursor::new(image)).expect("valid header");
            // The stream salt is random, so the commitment was made for it;
            // the chunks that follow are the fuzzer's.
            let mut r = reader.unlock(master_key()).expect("valid stream prefix");
            let (plain, failed) = drain(&mut r, rest);
            assert!(plain.is_empty() || !failed);
        }
    }
});
