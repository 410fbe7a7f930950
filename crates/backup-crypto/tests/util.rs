//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::io::{Read, Write};
use std::process::Command;
use std::sync::OnceLock;

use backup_crypto::{EncryptWriter, Error, KdfParams, Keyslot, MasterKey, Passphrase, HEADER_LEN};
use sha2::{Digest, Sha256};

pub const PASSPHRASE: &str = "correct horse battery staple";
pub const CREATED: i64 = 1_700_000_000;

/// One domain: master key, passphrase and keyslot (Argon2 at the floor, run
/// once per test process).
pub struct Domain {
    pub mk: MasterKey,
    pub pass: Passphrase,
    pub slot: Keyslot,
}

pub fn domain() -> &'static Domain {
    static DOMAIN: OnceLock<Domain> = OnceLock::new();
    DOMAIN.get_or_init(|| {
        let mk = MasterKey::generate().unwrap();
        let pass = passphrase(PASSPHRASE);
        let slot = Keyslot::seal(&mk, &pass, KdfParams::MINIMUM).unwrap();
        Domain { mk, pass, slot }
    })
}

pub fn passphrase(s: &str) -> Passphrase {
    Passphrase::new(s.to_string()).unwrap()
}

/// Deterministic, position-dependent bytes that are not all alike.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(13) as u8)
        .collect()
}

/// Encrypts `plain` as an image, in write calls of rotating odd sizes.
pub fn image(plain: &[u8]) -> Vec<u8> {
    let d = domain();
    let mut w = EncryptWriter::new(Vec::new(), &d.mk, &d.slot, CREATED).unwrap();
    let sizes = [1usize, 7, 4097, 16_385, 3];
    let mut rest = plain;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let n = (*size).min(rest.len());
        w.write_all(&rest[..n]).unwrap();
        rest = &rest[n..];
    }
    w.finish().unwrap()
}

/// Recomputes the header checksum after a deliberate edit.
pub fn reseal_header(image: &mut [u8]) {
    let sum = Sha256::digest(&image[..HEADER_LEN - 32]);
    image[HEADER_LEN - 32..HEADER_LEN].copy_from_slice(&sum);
}

/// How an attempt to read an image ended: the plaintext released before the
/// error, and the error (`None` if it read to the end).
pub struct Outcome {
    pub released: Vec<u8>,
    pub error: Option<Error>,
}

/// Opens with the master key and reads to the end. Errors before the
/// reader exists release nothing by construction.
pub fn read_with_key(image: &[u8], mk: &MasterKey) -> Outcome {
    let opened = backup_crypto::ImageReader::new(image).and_then(|r| r.unlock(mk));
    drain(opened)
}

/// Opens with the passphrase (runs Argon2) and reads to the end.
pub fn read_with_passphrase(image: &[u8], pass: &Passphrase) -> Outcome {
    let opened =
        backup_crypto::ImageReader::new(image).and_then(|r| r.unlock_with_passphrase(pass));
    drain(opened)
}

fn drain<R: Read>(opened: Result<R, Error>) -> Outcome {
    let mut reader = match opened {
        Ok(r) => r,
        Err(error) => {
            return Outcome {
                released: Vec::new(),
                error: Some(error),
            }
        }
    };
    let mut released = Vec::new();
    match reader.read_to_end(&mut released) {
        Ok(_) => Outcome {
            released,
            error: None,
        },
        Err(e) => {
            let error = Error::from_io(e);
            // A failed reader keeps failing, with the same error.
            let again = Error::from_io(
                reader
                    .read(&mut [0u8; 8])
                    .expect_err("failure must be sticky"),
            );
            assert_eq!(
                std::mem::discriminant(&again),
                std::mem::discriminant(&error)
            );
            Outcome {
                released,
                error: Some(error),
            }
        }
    }
}

/// Runs `body` as the test named `test` (its full libtest name) in a process of
/// its own, this test binary started again with only that test selected: for a
/// test that measures its process (peak RSS), which the other tests of the
/// binary would distort. Fails unless the child ran exactly that one test and
/// it passed.
pub fn alone(test: &str, body: impl FnOnce()) {
    const VAR: &str = "BACKUP_CRYPTO_TEST_ALONE";
    if std::env::var_os(VAR).is_some_and(|v| v == test) {
        body();
        return;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(&exe)
        .args([test, "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, test)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} {test}: {e}", exe.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{test} in a process of its own: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
}
