//! The C2SP Cobblestone-256 vectors (Wycheproof format) through every way of
//! reading a `ChunkedReader`, and back through `ChunkedWriter`.
use std::io::{self, Read, Write};

use backup_crypto::{ChunkedReader, ChunkedWriter, Error, CHUNK_SIZE};
use sha2::{Digest, Sha512};

#[derive(serde::Deserialize)]
struct Vectors {
    algorithm: String,
    #[serde(rename = "numberOfTests")]
    number_of_tests: usize,
    #[serde(rename = "testGroups")]
    groups: Vec<Group>,
}

#[derive(serde::Deserialize)]
struct Group {
    tests: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    #[serde(rename = "tcId")]
    id: u32,
    comment: String,
    key: String,
    ctx: String,
    ct: String,
    #[serde(rename = "msgLength")]
    msg_length: Option<usize>,
    #[serde(rename = "msgSha512")]
    msg_sha512: Option<String>,
    result: String,
    flags: Vec<String>,
}

struct Vector {
    id: u32,
    comment: String,
    key: Vec<u8>,
    ctx: Vec<u8>,
    ct: Vec<u8>,
    msg_length: Option<usize>,
    msg_sha512: Option<String>,
    valid: bool,
    flags: Vec<String>,
}

impl Vector {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Whether `plain` is the message (or prefix) the vector describes.
    fn matches_described_message(&self, plain: &[u8]) -> bool {
        let (Some(len), Some(sha)) = (self.msg_length, &self.msg_sha512) else {
            return false;
        };
        // The hash may be abbreviated in the file: compare as a prefix.
        plain.len() == len
            && !sha.is_empty()
            && hex::encode(Sha512::digest(plain)).starts_with(sha.as_str())
    }
}

fn load() -> Vec<Vector> {
    let file: Vectors =
        serde_json::from_str(include_str!("data/cobblestone256.json")).expect("vector file parses");
    assert_eq!(file.algorithm, "Cobblestone-256");
    let cases: Vec<Case> = file.groups.into_iter().flat_map(|g| g.tests).collect();
    assert_eq!(cases.len(), file.number_of_tests);
    assert_eq!(cases.len(), 35);
    cases
        .into_iter()
        .map(|c| {
            let mut ct = Vec::new();
            flate2::read::ZlibDecoder::new(&hex::decode(&c.ct).unwrap()[..])
                .read_to_end(&mut ct)
                .unwrap();
            assert!(
                c.result == "valid" || c.result == "invalid",
                "tcId {}: result {}",
                c.id,
                c.result
            );
            Vector {
                id: c.id,
                comment: c.comment,
                key: hex::decode(&c.key).unwrap(),
                ctx: hex::decode(&c.ctx).unwrap(),
                ct,
                msg_length: c.msg_length,
                msg_sha512: c.msg_sha512,
                valid: c.result == "valid",
                flags: c.flags,
            }
        })
        .collect()
}

/// An inner reader that hands out a few bytes at a time and interrupts
/// itself, so that the chunk reader's gathering and resuming get exercised.
struct Trickle<'a> {
    data: &'a [u8],
    delivered: usize,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.calls += 1;
        match self.calls % 5 {
            0 => return Err(io::ErrorKind::Interrupted.into()),
            // Past the prefix only: the constructor has nothing to resume and
            // reports it; the chunk reader must pass it on and resume later.
            3 if self.delivered >= 56 => return Err(io::ErrorKind::WouldBlock.into()),
            _ => {}
        }
        let n = buf.len().min(self.data.len()).min(1 + self.calls % 997);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        self.delivered += n;
        Ok(n)
    }
}

#[derive(Clone, Copy, Debug)]
enum Mode {
    ReadToEnd,
    Reads(usize),
    Trickle,
}

/// Reads the whole stream the way `mode` says; returns the plaintext
/// released and the error that ended it, if any.
fn read_all<R: Read>(reader: &mut R, mode: Mode) -> (Vec<u8>, Option<io::Error>) {
    let mut out = Vec::new();
    let step = match mode {
        Mode::ReadToEnd => {
            return match reader.read_to_end(&mut out) {
                Ok(_) => (out, None),
                Err(e) => (out, Some(e)),
            }
        }
        Mode::Reads(n) => n,
        Mode::Trickle => 4093,
    };
    let mut buf = vec![0u8; step];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) => {}
            Err(e) => return (out, Some(e)),
        }
    }
}

fn kind(e: &Error) -> &'static str {
    match e {
        Error::Truncated => "Truncated",
        Error::DecryptionFailed => "DecryptionFailed",
        Error::InvalidKeyLength(_) => "InvalidKeyLength",
        _ => "other",
    }
}

/// The errors a vector's flags allow.
fn allowed_errors(v: &Vector) -> &'static [&'static str] {
    if v.has("InvalidKeySize") {
        &["InvalidKeyLength"]
    } else if v.has("Truncation") && v.has("HeaderFailure") {
        &["Truncated"]
    } else if v.has("Truncation") || v.has("TrailingData") {
        // A cut inside a chunk, or garbage after the final one, looks the
        // same as a final chunk that fails to authenticate.
        &["Truncated", "DecryptionFailed"]
    } else {
        &["DecryptionFailed"]
    }
}

fn check_vector(v: &Vector, mode: Mode) {
    let what = format!("tcId {} ({}) in mode {mode:?}", v.id, v.comment);
    let inner: Box<dyn Read + '_> = match mode {
        Mode::Trickle => Box::new(Trickle {
            data: &v.ct,
            delivered: 0,
            calls: 0,
        }),
        _ => Box::new(&v.ct[..]),
    };
    let opened = ChunkedReader::new(inner, &v.key, &v.ctx);
    if v.has("HeaderFailure") {
        let e = opened
            .err()
            .unwrap_or_else(|| panic!("{what}: must fail in the constructor"));
        assert!(allowed_errors(v).contains(&kind(&e)), "{what}: got {e:?}");
        return;
    }
    let mut reader = opened.unwrap_or_else(|e| panic!("{what}: constructor failed: {e:?}"));
    let (plain, err) = read_all(&mut reader, mode);
    if v.valid {
        assert!(err.is_none(), "{what}: {err:?}");
        assert_eq!(Some(plain.len()), v.msg_length, "{what}");
        assert!(
            v.matches_described_message(&plain),
            "{what}: SHA-512 differs"
        );
        assert_eq!(
            reader.read(&mut [0u8; 16]).unwrap(),
            0,
            "{what}: EOF is sticky"
        );
        return;
    }
    let err =
        Error::from_io(err.unwrap_or_else(|| panic!("{what}: invalid vector read to the end")));
    assert!(
        allowed_errors(v).contains(&kind(&err)),
        "{what}: got {err:?}"
    );
    if v.has("PartialPlaintext") {
        // Only whole authenticated chunks of the described prefix, if any.
        let described = v
            .msg_length
            .expect("PartialPlaintext vectors give the prefix length");
        assert!(
            plain.len() <= described && plain.len() % CHUNK_SIZE == 0,
            "{what}: {} bytes",
            plain.len()
        );
        if plain.len() == described {
            assert!(
                v.matches_described_message(&plain),
                "{what}: released prefix differs"
            );
        }
    } else {
        assert!(plain.is_empty(), "{what}: released {} bytes", plain.len());
    }
    for _ in 0..2 {
        let again = reader
            .read(&mut [0u8; 64])
            .expect_err("a failed reader keeps failing");
        assert_eq!(
            kind(&Error::from_io(again)),
            kind(&err),
            "{what}: a different error the second time"
        );
    }
}

fn check_all(mode: Mode) {
    let vectors = load();
    for v in &vectors {
        check_vector(v, mode);
    }
}

#[test]
fn vectors_read_to_end() {
    check_all(Mode::ReadToEnd);
}

#[test]
fn vectors_read_one_byte_at_a_time() {
    check_all(Mode::Reads(1));
}

#[test]
fn vectors_read_in_odd_sizes() {
    check_all(Mode::Reads(1000));
    check_all(Mode::Reads(CHUNK_SIZE + 1));
}

#[test]
fn vectors_through_a_trickling_interrupting_inner_reader() {
    check_all(Mode::Trickle);
}

#[test]
fn vector_file_covers_every_flag() {
    let vectors = load();
    for flag in [
        "ChunkReordering",
        "CounterRollover",
        "HeaderFailure",
        "InvalidKeySize",
        "ModifiedCiphertext",
        "PartialPlaintext",
        "TrailingData",
        "Truncation",
        "WrongContext",
        "WrongKey",
    ] {
        assert!(
            vectors.iter().any(|v| v.has(flag)),
            "no vector flagged {flag}"
        );
    }
    assert_eq!(vectors.iter().filter(|v| v.valid).count(), 10);
}

/// Encrypting each valid vector's plaintext again with its salt must give its
/// ciphertext byte for byte, whatever the sizes of the write calls.
#[test]
fn valid_vectors_reencrypt_identically() {
    for v in load().iter().filter(|v| v.valid) {
        let mut plain = Vec::new();
        ChunkedReader::new(&v.ct[..], &v.key, &v.ctx)
            .unwrap()
            .read_to_end(&mut plain)
            .unwrap();
        let salt: [u8; 24] = v.ct[..24].try_into().unwrap();
        for piece in [1usize, 777, CHUNK_SIZE, CHUNK_SIZE + 3, usize::MAX] {
            let mut w = ChunkedWriter::with_salt(Vec::new(), &v.key, &v.ctx, salt).unwrap();
            for part in plain.chunks(piece.min(plain.len().max(1))) {
                w.write_all(part).unwrap();
            }
            let ct = w.finish().unwrap();
            assert!(
                ct == v.ct,
                "tcId {} ({}): writes of {piece}: ciphertext differs",
                v.id,
                v.comment
            );
        }
    }
}
