//! Header and keyslot parsing on arbitrary bytes: never panics, and whatever
//! parses encodes back to the same bytes.
#![no_main]

use backup_crypto::{Header, Keyslot, HEADER_LEN, KEYSLOT_LEN, MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::parse(data) {
        assert_eq!(header.encode()[..], data[..HEADER_LEN]);
    }

    // Random bytes almost never carry the magic and a valid checksum; give
    // them both so that the checks behind the checksum get explored too.
    if data.len() >= HEADER_LEN {
        let mut fixed = data[..HEADER_LEN].to_vec();
        fixed[..8].copy_from_slice(&MAGIC);
        let sum = Sha256::digest(&fixed[..HEADER_LEN - 32]);
        fixed[HEADER_LEN - 32..].copy_from_slice(&sum);
        if let Ok(header) = Header::parse(&fixed) {
            assert_eq!(header.encode()[..], fixed[..]);
            assert_eq!(header.stream_context()[..], fixed[..36]);
        }
    }

    if let Ok(slot) = Keyslot::from_bytes(data) {
        assert_eq!(slot.to_bytes()[..], data[..]);
    }
    if data.len() >= KEYSLOT_LEN {
        if let Ok(slot) = Keyslot::from_bytes(&data[..KEYSLOT_LEN]) {
            assert_eq!(slot.to_bytes()[..], data[..KEYSLOT_LEN]);
            assert!(slot.kdf().validate().is_ok());
        }
    }
});
