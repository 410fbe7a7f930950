//! Damaged, crafted and mismatched images: each is refused with the error an
//! operator can act on, and no plaintext of a failing chunk is released.

use backup_crypto::{
    Error, Header, ImageReader, KdfParams, Keyslot, MasterKey, CHUNK_SIZE, HEADER_LEN,
    STREAM_PREFIX_LEN, TAG_LEN,
};
use sha2::{Digest, Sha256};

use crate::util::{
    domain, image, passphrase, pattern, read_with_key, read_with_passphrase, reseal_header, Outcome,
};

const SEALED_CHUNK: usize = CHUNK_SIZE + TAG_LEN;
/// Where the keyslot sits in the header.
const KEYSLOT_AT: usize = 36;

/// Offset of chunk `k` in an image.
fn chunk_at(k: usize) -> usize {
    HEADER_LEN + STREAM_PREFIX_LEN + k * SEALED_CHUNK
}

/// Two full chunks and a short final one.
fn three_chunks() -> (Vec<u8>, Vec<u8>) {
    let plain = pattern(2 * CHUNK_SIZE + 1000);
    let img = image(&plain);
    assert_eq!(img.len(), chunk_at(2) + 1000 + TAG_LEN);
    (plain, img)
}

/// Four chunks: three full, one short.
fn four_chunks() -> (Vec<u8>, Vec<u8>) {
    let plain = pattern(3 * CHUNK_SIZE + 500);
    let img = image(&plain);
    (plain, img)
}

#[track_caller]
fn assert_refused(
    out: &Outcome,
    expected: fn(&Error) -> bool,
    plain: &[u8],
    released_chunks: usize,
    what: &str,
) {
    match &out.error {
        Some(e) if expected(e) => {}
        other => panic!("{what}: unexpected outcome {other:?}"),
    }
    assert_eq!(
        out.released.len(),
        released_chunks * CHUNK_SIZE,
        "{what}: released bytes"
    );
    assert!(
        out.released == plain[..out.released.len()],
        "{what}: released bytes are not the plaintext prefix"
    );
}

fn truncated(e: &Error) -> bool {
    matches!(e, Error::Truncated)
}
fn tampered(e: &Error) -> bool {
    matches!(e, Error::DecryptionFailed)
}
fn corrupted(e: &Error) -> bool {
    matches!(e, Error::HeaderCorrupted)
}
fn unsupported(e: &Error) -> bool {
    matches!(e, Error::UnsupportedFormat(_))
}
fn wrong_passphrase(e: &Error) -> bool {
    matches!(e, Error::WrongPassphrase)
}

fn unsupported_message(img: &[u8]) -> String {
    match ImageReader::new(img) {
        Err(Error::UnsupportedFormat(m)) => m,
        Err(e) => panic!("expected UnsupportedFormat, got {e:?}"),
        Ok(_) => panic!("expected UnsupportedFormat, got a header"),
    }
}

#[test]
fn wrong_passphrase_is_refused_before_any_output() {
    let (plain, img) = three_chunks();
    let out = read_with_passphrase(&img, &passphrase("not the domain secret"));
    assert_refused(&out, wrong_passphrase, &plain, 0, "wrong passphrase");
    assert!(matches!(
        domain()
            .slot
            .open(&passphrase("Correct horse battery staple")),
        Err(Error::WrongPassphrase)
    ));
}

#[test]
fn another_domains_master_key_is_a_key_mismatch() {
    let (plain, img) = three_chunks();
    let other = MasterKey::generate().unwrap();
    let out = read_with_key(&img, &other);
    match &out.error {
        Some(Error::KeyMismatch { image, ours }) => {
            assert_eq!(*image, domain().mk.key_id().to_string());
            assert_eq!(*ours, other.key_id().to_string());
        }
        e => panic!("{e:?}"),
    }
    assert_refused(
        &out,
        |e| matches!(e, Error::KeyMismatch { .. }),
        &plain,
        0,
        "other key",
    );
}

#[test]
fn a_damaged_header_is_corrupted_not_a_wrong_passphrase() {
    let (plain, mut img) = three_chunks();
    img[100] ^= 0x10;
    assert_refused(
        &read_with_key(&img, &domain().mk),
        corrupted,
        &plain,
        0,
        "byte 100",
    );
    assert_refused(
        &read_with_passphrase(&img, &domain().pass),
        corrupted,
        &plain,
        0,
        "byte 100, passphrase",
    );
}

#[test]
fn every_bit_of_the_header_is_covered() {
    let (_, img) = three_chunks();
    for byte in 0..HEADER_LEN {
        for bit in 0..8 {
            let mut bad = img[..HEADER_LEN].to_vec();
            bad[byte] ^= 1 << bit;
            let err = ImageReader::new(&bad[..])
                .err()
                .unwrap_or_else(|| panic!("byte {byte} bit {bit} accepted"));
            if byte < 8 {
                assert!(unsupported(&err), "magic byte {byte} bit {bit}: {err:?}");
            } else {
                assert!(corrupted(&err), "byte {byte} bit {bit}: {err:?}");
            }
        }
    }
}

#[test]
fn not_an_image_at_all() {
    let mut junk = pattern(4096);
    junk[..8].copy_from_slice(b"\x1f\x8b\x08\x00\x00\x00\x00\x00");
    assert!(unsupported_message(&junk).contains("not a backup image"));
}

#[test]
fn a_future_version_with_a_valid_checksum_says_to_upgrade() {
    let (_, img) = three_chunks();
    let mut future = img.clone();
    future[8..10].copy_from_slice(&2u16.to_be_bytes());
    reseal_header(&mut future);
    let m = unsupported_message(&future);
    assert!(m.contains("version 2") && m.contains("newer"), "{m}");

    // A future header that is longer than ours and carries its checksum at
    // its own end: the reader fetches the rest to check it.
    let mut longer = img[..HEADER_LEN - 32].to_vec();
    longer[8..10].copy_from_slice(&7u16.to_be_bytes());
    longer.extend_from_slice(&[0xAB; 100]);
    let len = longer.len() + 32;
    longer[12..16].copy_from_slice(&(len as u32).to_be_bytes());
    let sum = Sha256::digest(&longer);
    longer.extend_from_slice(&sum);
    longer.extend_from_slice(&[0u8; 64]);
    let m = unsupported_message(&longer);
    assert!(m.contains("version 7") && m.contains("newer"), "{m}");

    // The same with the file cut inside the longer header.
    assert!(matches!(
        ImageReader::new(&longer[..HEADER_LEN + 10]),
        Err(Error::Truncated)
    ));
}

#[test]
fn unknown_suite_kdf_flags_and_length_are_unsupported() {
    let (_, img) = three_chunks();
    let craft = |at: usize, bytes: &[u8]| {
        let mut bad = img.clone();
        bad[at..at + bytes.len()].copy_from_slice(bytes);
        reseal_header(&mut bad);
        unsupported_message(&bad)
    };
    let m = craft(10, &2u16.to_be_bytes());
    assert!(m.contains("suite 2"), "{m}");
    let m = craft(16, &1u32.to_be_bytes());
    assert!(m.contains("flags"), "{m}");
    let m = craft(16, &0x8000_0000u32.to_be_bytes());
    assert!(m.contains("flags"), "{m}");
    let m = craft(KEYSLOT_AT, &2u16.to_be_bytes());
    assert!(m.contains("key derivation function id 2"), "{m}");
    let m = craft(12, &(HEADER_LEN as u32 + 4).to_be_bytes());
    assert!(m.contains("header length"), "{m}");
}

/// Bytes of a keyslot with the given Argon2 parameters.
fn keyslot_with(m: u32, t: u32, p: u32) -> Vec<u8> {
    let mut slot = domain().slot.to_bytes().to_vec();
    slot[2..6].copy_from_slice(&m.to_be_bytes());
    slot[6..10].copy_from_slice(&t.to_be_bytes());
    slot[10..14].copy_from_slice(&p.to_be_bytes());
    slot
}

#[test]
fn crafted_kdf_parameters_are_refused_before_argon2_runs() {
    let (_, img) = three_chunks();
    let cases = [
        (1024, 2, 1, "below the floor"),
        (19 * 1024, 1, 1, "below the floor"),
        (u32::MAX, 3, 4, "above the cap"),
        (4 * 1024 * 1024 + 1, 1, 1, "above the cap"),
        (64 * 1024, 1000, 1, "iterations"),
        (64 * 1024, 3, 0, "parallelism"),
        (64 * 1024, 3, 255, "parallelism"),
    ];
    for (m, t, p, why) in cases {
        let slot = keyslot_with(m, t, p);
        let mut bad = img.clone();
        bad[KEYSLOT_AT..KEYSLOT_AT + slot.len()].copy_from_slice(&slot);
        reseal_header(&mut bad);
        // The message is the bounds check's own wording, which runs before
        // any Argon2 setup (no timing: the machines are shared).
        match ImageReader::new(&bad[..]) {
            Err(Error::KdfParamsOutOfBounds(msg)) => {
                assert!(msg.contains(why), "m={m} t={t} p={p}: {msg}")
            }
            Err(e) => panic!("m={m} t={t} p={p}: {e:?}"),
            Ok(_) => panic!("m={m} t={t} p={p}: accepted"),
        }
        assert!(matches!(
            Keyslot::from_bytes(&slot),
            Err(Error::KdfParamsOutOfBounds(msg)) if msg.contains(why)
        ));
    }
}

/// Argon2 over 4 GiB would take seconds and the memory: the refusal must
/// come from the bounds check (its wording, "above the cap"), before Argon2.
#[test]
fn oversized_parameters_never_reach_argon2() {
    let pass = &domain().pass;
    for params in [
        KdfParams {
            memory_kib: 4 * 1024 * 1024 + 1,
            iterations: 1,
            parallelism: 1,
        },
        KdfParams {
            memory_kib: u32::MAX,
            iterations: 16,
            parallelism: 16,
        },
        KdfParams {
            memory_kib: 19 * 1024,
            iterations: u32::MAX,
            parallelism: 1,
        },
    ] {
        let refused = |r: Result<_, Error>| matches!(r, Err(Error::KdfParamsOutOfBounds(msg)) if msg.contains("above the cap"));
        assert!(
            refused(params.derive(pass, &[0; 16]).map(drop)),
            "{params:?}"
        );
        assert!(
            refused(Keyslot::seal(&domain().mk, pass, params).map(drop)),
            "{params:?}"
        );
    }
}

#[test]
fn cuts_inside_the_header_are_truncated() {
    let (_, img) = three_chunks();
    for cut in 0..HEADER_LEN {
        assert!(
            matches!(ImageReader::new(&img[..cut]), Err(Error::Truncated)),
            "cut at {cut}"
        );
    }
}

/// A cut at a chunk boundary is `Truncated`: the last chunk left is full-size
/// and so cannot be final. A cut inside a chunk leaves a final chunk that
/// does not authenticate (`DecryptionFailed`), or one shorter than a tag
/// (`Truncated`). Only chunks known to be followed by more data are released.
#[test]
fn truncation_at_every_chunk_boundary_and_inside_chunks() {
    let (plain, img) = three_chunks();
    let mut cuts: Vec<usize> = (HEADER_LEN..img.len()).step_by(97).collect();
    for k in 0..3 {
        for delta in [-17isize, -16, -15, -1, 0, 1, 15, 16, 17, 100] {
            cuts.push((chunk_at(k) as isize + delta) as usize);
        }
    }
    cuts.extend([
        HEADER_LEN,
        HEADER_LEN + 1,
        HEADER_LEN + 55,
        img.len() - 1,
        img.len() - TAG_LEN,
    ]);
    cuts.retain(|&c| (HEADER_LEN..img.len()).contains(&c));
    for cut in cuts {
        let out = read_with_key(&img[..cut], &domain().mk);
        let what = format!("cut at {cut}");
        if cut < chunk_at(0) {
            assert_refused(&out, truncated, &plain, 0, &what);
            continue;
        }
        let whole = (cut - chunk_at(0)) / SEALED_CHUNK;
        let partial = (cut - chunk_at(0)) % SEALED_CHUNK;
        if partial == 0 {
            assert_refused(&out, truncated, &plain, whole.saturating_sub(1), &what);
        } else if partial < TAG_LEN {
            assert_refused(&out, truncated, &plain, whole, &what);
        } else {
            assert_refused(&out, tampered, &plain, whole, &what);
        }
    }
}

#[test]
fn trailing_bytes_are_refused() {
    let (plain, img) = three_chunks();
    for extra in [1usize, 15, 16, 100, SEALED_CHUNK, SEALED_CHUNK + 1] {
        let mut long = img.clone();
        long.extend(std::iter::repeat_n(0xA5, extra));
        let out = read_with_key(&long, &domain().mk);
        // The final chunk swallows the extra bytes, or turns into a full one.
        assert_refused(
            &out,
            tampered,
            &plain,
            2,
            &format!("{extra} trailing bytes"),
        );
    }
    // A whole validly sealed final chunk after the real final chunk.
    let small = pattern(10);
    let img = image(&small);
    let mut long = img.clone();
    long.extend_from_slice(&img[chunk_at(0)..]);
    assert_refused(
        &read_with_key(&long, &domain().mk),
        tampered,
        &small,
        0,
        "duplicated final chunk",
    );
}

fn chunks_of(img: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let head = img[..chunk_at(0)].to_vec();
    let chunks = img[chunk_at(0)..]
        .chunks(SEALED_CHUNK)
        .map(<[u8]>::to_vec)
        .collect();
    (head, chunks)
}

#[test]
fn reordered_duplicated_and_dropped_chunks_are_refused() {
    let (plain, img) = four_chunks();
    let (head, chunks) = chunks_of(&img);
    assert_eq!(chunks.len(), 4);
    let cases: [(&str, Vec<usize>, usize); 6] = [
        ("chunks 0 and 1 swapped", vec![1, 0, 2, 3], 0),
        ("chunks 1 and 2 swapped", vec![0, 2, 1, 3], 1),
        (
            "chunk 0 duplicated in place of chunk 1",
            vec![0, 0, 2, 3],
            1,
        ),
        ("chunk 1 dropped", vec![0, 2, 3], 1),
        ("chunk 0 dropped", vec![1, 2, 3], 0),
        ("chunk 2 repeated", vec![0, 1, 2, 2, 3], 3),
    ];
    for (what, order, released) in cases {
        let mut bad = head.clone();
        for i in order {
            bad.extend_from_slice(&chunks[i]);
        }
        assert_refused(
            &read_with_key(&bad, &domain().mk),
            tampered,
            &plain,
            released,
            what,
        );
    }
    let mut bad = head.clone();
    bad.extend(chunks[..3].iter().flatten());
    assert_refused(
        &read_with_key(&bad, &domain().mk),
        truncated,
        &plain,
        2,
        "final chunk dropped",
    );
}

#[test]
fn a_chunk_from_another_image_is_refused() {
    let (plain, img) = three_chunks();
    let other = image(&plain);
    let mut bad = img.clone();
    bad[chunk_at(1)..chunk_at(2)].copy_from_slice(&other[chunk_at(1)..chunk_at(2)]);
    assert_refused(
        &read_with_key(&bad, &domain().mk),
        tampered,
        &plain,
        1,
        "chunk 1 of another image",
    );
}

#[test]
fn flipped_ciphertext_bits_are_refused() {
    let (plain, img) = three_chunks();
    let positions = [
        (HEADER_LEN, 0),                   // stream salt
        (HEADER_LEN + 30, 0),              // commitment
        (chunk_at(0), 0),                  // first chunk body
        (chunk_at(0) + CHUNK_SIZE + 3, 0), // first chunk tag
        (chunk_at(1) + 5000, 1),           // second chunk
        (img.len() - 1, 2),                // final tag
    ];
    for (at, released) in positions {
        let mut bad = img.clone();
        bad[at] ^= 0x01;
        assert_refused(
            &read_with_key(&bad, &domain().mk),
            tampered,
            &plain,
            released,
            &format!("byte {at}"),
        );
    }
}

/// The keyslot is not bound into the payload (so it can be rewrapped), but a
/// damaged one never unwraps: the passphrase path says `WrongPassphrase`,
/// while the key path still opens the image.
#[test]
fn a_tampered_keyslot_with_a_fixed_checksum_does_not_unwrap() {
    let (plain, img) = three_chunks();
    let d = domain();
    let slot_positions = [
        5,   // m: 19456 → 19457 KiB: another Argon2 output
        9,   // t: 2 → 3
        13,  // p: 1 → 3 lanes
        14,  // salt, first byte
        29,  // salt, last byte
        30,  // wrapped: stream salt
        60,  // wrapped: commitment
        90,  // wrapped: the sealed master key
        133, // wrapped: last tag byte
    ];
    for pos in slot_positions {
        let mut bad = img.clone();
        bad[KEYSLOT_AT + pos] ^= if pos == 13 { 0x02 } else { 0x01 };
        reseal_header(&mut bad);
        let header = Header::parse(&bad).unwrap();
        assert!(
            header.keyslot().kdf().validate().is_ok(),
            "keyslot byte {pos}: the parameters still pass"
        );
        let out = read_with_passphrase(&bad, &d.pass);
        assert_refused(
            &out,
            wrong_passphrase,
            &plain,
            0,
            &format!("keyslot byte {pos}"),
        );
        let out = read_with_key(&bad, &d.mk);
        assert!(
            out.error.is_none() && out.released == plain,
            "keyslot byte {pos}: key path"
        );
    }
}

/// The creation time sits in the stream context: a header edited with a
/// recomputed checksum fails the commitment check before any chunk.
#[test]
fn an_edited_creation_time_fails_the_commitment() {
    let (plain, img) = three_chunks();
    let mut bad = img.clone();
    bad[35] ^= 0x01;
    reseal_header(&mut bad);
    assert_eq!(
        Header::parse(&bad).unwrap().created(),
        crate::util::CREATED ^ 1
    );
    assert_refused(
        &read_with_key(&bad, &domain().mk),
        tampered,
        &plain,
        0,
        "created, key path",
    );
    assert_refused(
        &read_with_passphrase(&bad, &domain().pass),
        tampered,
        &plain,
        0,
        "created, passphrase path",
    );
}

#[test]
fn an_edited_key_id_is_a_key_mismatch_on_both_paths() {
    let (plain, img) = three_chunks();
    let mut bad = img.clone();
    bad[20] ^= 0x80;
    reseal_header(&mut bad);
    let mismatch = |e: &Error| matches!(e, Error::KeyMismatch { .. });
    assert_refused(
        &read_with_key(&bad, &domain().mk),
        mismatch,
        &plain,
        0,
        "key id, key path",
    );
    assert_refused(
        &read_with_passphrase(&bad, &domain().pass),
        mismatch,
        &plain,
        0,
        "key id, passphrase path",
    );
}
