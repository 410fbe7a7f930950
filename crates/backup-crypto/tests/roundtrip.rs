//! Images written by `EncryptWriter` read back through both unlock paths.

use std::io::{Read, Write};

use crate::util::{
    domain, image, passphrase, pattern, read_with_key, read_with_passphrase, CREATED,
};
use backup_crypto::{
    ChunkedReader, ChunkedWriter, EncryptWriter, Error, Header, ImageReader, KdfParams, Keyslot,
    MasterKey, CHUNK_SIZE, HEADER_LEN, STREAM_PREFIX_LEN, TAG_LEN,
};

const SIZES: [usize; 14] = [
    0,
    1,
    15,
    16,
    17,
    CHUNK_SIZE - 1,
    CHUNK_SIZE,
    CHUNK_SIZE + 1,
    2 * CHUNK_SIZE - 1,
    2 * CHUNK_SIZE,
    2 * CHUNK_SIZE + 1,
    3 * CHUNK_SIZE + 4321,
    100_003,
    1 << 20,
];

/// Image length: header, stream prefix, the plaintext, and one tag per chunk
/// (the final chunk always exists and is always short).
fn expected_len(plain: usize) -> usize {
    HEADER_LEN + STREAM_PREFIX_LEN + plain + TAG_LEN * (plain / CHUNK_SIZE + 1)
}

#[test]
fn round_trip_with_the_master_key() {
    let d = domain();
    for size in SIZES {
        let plain = pattern(size);
        let img = image(&plain);
        assert_eq!(img.len(), expected_len(size), "size {size}");
        let out = read_with_key(&img, &d.mk);
        assert!(out.error.is_none(), "size {size}: {:?}", out.error);
        assert!(out.released == plain, "size {size}: plaintext differs");
    }
}

#[test]
fn round_trip_with_the_passphrase() {
    let d = domain();
    for size in [
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        2 * CHUNK_SIZE + 1,
    ] {
        let plain = pattern(size);
        let out = read_with_passphrase(&image(&plain), &d.pass);
        assert!(out.error.is_none(), "size {size}: {:?}", out.error);
        assert!(out.released == plain, "size {size}: plaintext differs");
    }
}

#[test]
fn reads_of_odd_sizes_return_the_same_bytes() {
    let d = domain();
    let plain = pattern(3 * CHUNK_SIZE + 999);
    let img = image(&plain);
    for step in [1usize, 13, CHUNK_SIZE - 1, CHUNK_SIZE + 7, 1 << 20] {
        let mut r = ImageReader::new(&img[..]).unwrap().unlock(&d.mk).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; step];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= step);
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got == plain, "reads of {step}");
        assert_eq!(r.read(&mut buf).unwrap(), 0, "end of stream is sticky");
        assert_eq!(r.header().created(), CREATED);
    }
}

#[test]
fn header_records_key_id_time_and_keyslot() {
    let d = domain();
    let img = image(b"x");
    let reader = ImageReader::new(&img[..]).unwrap();
    let h = reader.header();
    assert_eq!(h.key_id(), d.mk.key_id());
    assert_eq!(h.created(), CREATED);
    assert_eq!(h.keyslot(), &d.slot);
    assert_eq!(h.keyslot().kdf(), KdfParams::MINIMUM);
    assert_eq!(
        Header::parse(&img).unwrap(),
        *h,
        "parse accepts a whole image"
    );
    let w = EncryptWriter::new(Vec::new(), &d.mk, &d.slot, -5).unwrap();
    assert_eq!(w.header().created(), -5);
    assert_eq!(
        &w.finish().unwrap()[..HEADER_LEN],
        &Header::new(d.mk.key_id(), -5, d.slot.clone()).encode()
    );
}

/// Rotation rewrites only the keyslot: the payload stream is bound to the
/// first 36 header bytes, so it still opens under the new passphrase.
#[test]
fn a_rewrapped_keyslot_opens_the_same_payload() {
    let d = domain();
    let plain = pattern(CHUNK_SIZE + 5);
    let mut img = image(&plain);
    let new_pass = passphrase("another domain secret");
    let new_slot = Keyslot::seal(&d.mk, &new_pass, KdfParams::MINIMUM).unwrap();
    let header = Header::parse(&img).unwrap().with_keyslot(new_slot);
    img[..HEADER_LEN].copy_from_slice(&header.encode());

    let out = read_with_passphrase(&img, &new_pass);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.released == plain);
    assert!(matches!(
        read_with_passphrase(&img, &d.pass).error,
        Some(Error::WrongPassphrase)
    ));
}

#[test]
fn keyslot_round_trips_through_its_encoding() {
    let d = domain();
    let bytes = d.slot.to_bytes();
    let slot = Keyslot::from_bytes(&bytes).unwrap();
    assert_eq!(slot, d.slot);
    assert_eq!(slot.open(&d.pass).unwrap().as_bytes(), d.mk.as_bytes());
    assert!(matches!(
        Keyslot::from_bytes(&bytes[..bytes.len() - 1]),
        Err(Error::Truncated)
    ));
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(matches!(
        Keyslot::from_bytes(&longer),
        Err(Error::UnsupportedFormat(_))
    ));
}

#[test]
fn keyslots_use_fresh_salt() {
    let d = domain();
    let again = Keyslot::seal(&d.mk, &d.pass, KdfParams::MINIMUM).unwrap();
    assert_ne!(again.to_bytes(), d.slot.to_bytes());
    assert_eq!(again.open(&d.pass).unwrap().as_bytes(), d.mk.as_bytes());
}

#[test]
fn chunked_streams_use_fresh_salt_and_bind_the_context() {
    let key = [7u8; 32];
    let seal = |ctx: &[u8]| {
        let mut w = ChunkedWriter::new(Vec::new(), &key, ctx).unwrap();
        w.write_all(b"same message").unwrap();
        w.flush().unwrap();
        w.finish().unwrap()
    };
    let (a, b) = (seal(b"ctx"), seal(b"ctx"));
    assert_ne!(a, b, "two streams under one key must not share a salt");
    let mut plain = Vec::new();
    ChunkedReader::new(&a[..], &key, b"ctx")
        .unwrap()
        .read_to_end(&mut plain)
        .unwrap();
    assert_eq!(plain, b"same message");
    assert!(matches!(
        ChunkedReader::new(&a[..], &key, b"ctx2"),
        Err(Error::DecryptionFailed)
    ));
    let inner = ChunkedReader::new(&b[..], &key, b"ctx")
        .unwrap()
        .into_inner();
    assert_eq!(
        inner.len(),
        b.len() - STREAM_PREFIX_LEN,
        "the constructor reads only the prefix"
    );
}

#[test]
fn keys_of_the_wrong_length_are_refused() {
    for len in [0, 16, 31, 33, 64] {
        let key = vec![1u8; len];
        assert!(
            matches!(ChunkedWriter::new(Vec::new(), &key, b""), Err(Error::InvalidKeyLength(l)) if l == len)
        );
        assert!(
            matches!(ChunkedReader::new(&[0u8; 100][..], &key, b""), Err(Error::InvalidKeyLength(l)) if l == len)
        );
        assert!(matches!(MasterKey::from_bytes(&key), Err(Error::InvalidKeyLength(l)) if l == len));
    }
}

#[test]
fn master_keys_are_random_and_their_ids_are_fingerprints() {
    use sha2::{Digest, Sha256};
    let a = MasterKey::generate().unwrap();
    let b = MasterKey::generate().unwrap();
    assert_ne!(a.as_bytes(), b.as_bytes());
    assert_ne!(a.key_id(), b.key_id());
    let again = MasterKey::from_bytes(a.as_bytes()).unwrap();
    assert_eq!(again.key_id(), a.key_id());
    let digest = Sha256::new()
        .chain_update(b"backup-crypto key id v1")
        .chain_update(a.as_bytes())
        .finalize();
    assert_eq!(a.key_id().0, digest[..8]);
    let shown = format!("{a:?}");
    assert_eq!(shown, format!("MasterKey({})", hex::encode(a.key_id().0)));
}

#[test]
fn writer_errors_are_not_swallowed() {
    struct Failing(usize);
    impl Write for Failing {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk full"));
            }
            let n = buf.len().min(self.0);
            self.0 -= n;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let d = domain();
    // Room for the header and stream prefix, and half a chunk.
    let mut w = EncryptWriter::new(
        Failing(HEADER_LEN + STREAM_PREFIX_LEN + 8000),
        &d.mk,
        &d.slot,
        0,
    )
    .unwrap();
    let err = w.write_all(&pattern(3 * CHUNK_SIZE)).unwrap_err();
    assert_eq!(err.to_string(), "disk full");
    assert!(
        w.write_all(b"more").is_err(),
        "a writer with a hole in its output must stay failed"
    );
    assert!(w.flush().is_err());
    assert!(w.finish().is_err());
    // Too little room even for the header.
    assert!(matches!(
        EncryptWriter::new(Failing(10), &d.mk, &d.slot, 0),
        Err(Error::Io(_))
    ));
}
