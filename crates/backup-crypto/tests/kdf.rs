//! Passphrases, Argon2id and the bounds a reader enforces on its parameters.
use backup_crypto::{Error, KdfParams, Passphrase, MIN_PASSPHRASE_CHARS};

/// RFC 9106 §5.3: checks that the Argon2 dependency computes Argon2id v1.3.
#[test]
fn argon2id_rfc9106_test_vector() {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(32, 3, 4, Some(32)).unwrap();
    let secret = [0x03u8; 8];
    let argon =
        Argon2::new_with_secret(&secret, Algorithm::Argon2id, Version::V0x13, params).unwrap();
    // The associated data goes in through the parameters builder.
    let params = argon2::ParamsBuilder::new()
        .m_cost(32)
        .t_cost(3)
        .p_cost(4)
        .output_len(32)
        .data(argon2::AssociatedData::new(&[0x04; 12]).unwrap())
        .build()
        .unwrap();
    let argon_ad =
        Argon2::new_with_secret(&secret, Algorithm::Argon2id, Version::V0x13, params).unwrap();
    let mut tag = [0u8; 32];
    argon_ad
        .hash_password_into(&[0x01; 32], &[0x02; 16], &mut tag)
        .unwrap();
    assert_eq!(
        hex::encode(tag),
        "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
    );
    // Without the associated data the tag differs: the vector really covers it.
    argon
        .hash_password_into(&[0x01; 32], &[0x02; 16], &mut tag)
        .unwrap();
    assert_ne!(
        hex::encode(tag),
        "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659"
    );
}

#[test]
fn derive_is_deterministic_and_depends_on_salt_and_passphrase() {
    let pass = Passphrase::new("correct horse battery".into()).unwrap();
    let other = Passphrase::new("correct horse battery!".into()).unwrap();
    let p = KdfParams::MINIMUM;
    let a = p.derive(&pass, &[1; 16]).unwrap();
    assert_eq!(*a, *p.derive(&pass, &[1; 16]).unwrap());
    assert_ne!(*a, *p.derive(&pass, &[2; 16]).unwrap());
    assert_ne!(*a, *p.derive(&other, &[1; 16]).unwrap());
    let more = KdfParams { iterations: 3, ..p };
    assert_ne!(*a, *more.derive(&pass, &[1; 16]).unwrap());
}

/// Our derive is plain Argon2id v1.3 with no secret or associated data.
#[test]
fn derive_matches_argon2id_directly() {
    use argon2::{Algorithm, Argon2, Params, Version};
    let pass = Passphrase::new("correct horse battery".into()).unwrap();
    let p = KdfParams::MINIMUM;
    let mut direct = [0u8; 32];
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(p.memory_kib, 2, 1, Some(32)).unwrap(),
    )
    .hash_password_into(b"correct horse battery", &[9; 16], &mut direct)
    .unwrap();
    assert_eq!(*p.derive(&pass, &[9; 16]).unwrap(), direct);
}

#[test]
fn passphrases_need_eight_characters() {
    assert_eq!(MIN_PASSPHRASE_CHARS, 8);
    for short in [
        "",
        "1234567",
        "ééééééé",
        "\u{1F511}\u{1F511}\u{1F511}\u{1F511}\u{1F511}\u{1F511}\u{1F511}",
    ] {
        assert!(
            matches!(
                Passphrase::new(short.into()),
                Err(Error::PassphraseTooShort { min: 8 })
            ),
            "{short:?} must be refused ({} bytes)",
            short.len()
        );
    }
    for ok in ["12345678", "éééééééé", "correct horse battery staple\n"] {
        let p = Passphrase::new(ok.into()).unwrap();
        assert_eq!(
            p.as_bytes(),
            ok.as_bytes(),
            "kept as given, newline included"
        );
    }
    let p = Passphrase::new("hunter2hunter2".into()).unwrap();
    assert_eq!(format!("{p:?}"), "Passphrase(<redacted>)");
}

#[test]
fn kdf_bounds() {
    let mib = 1024;
    let params = |m: u32, t: u32, p: u32| KdfParams {
        memory_kib: m,
        iterations: t,
        parallelism: p,
    };
    let accepted = [
        params(19 * mib, 2, 1),
        params(46 * mib, 1, 1),
        params(19 * mib, 16, 16),
        params(4 * 1024 * mib, 1, 1),
        params(4 * 1024 * mib, 16, 16),
        KdfParams::DEFAULT,
        KdfParams::SMALL,
        KdfParams::MINIMUM,
    ];
    for p in accepted {
        assert!(p.validate().is_ok(), "{p:?} must be accepted");
    }
    let refused = [
        params(19 * mib, 1, 1),
        params(19 * mib - 1, 2, 1),
        params(46 * mib - 1, 1, 1),
        params(46 * mib, 0, 1),
        params(19 * mib, 2, 0),
        params(19 * mib, 2, 17),
        params(19 * mib, 17, 1),
        params(4 * 1024 * mib + 1, 2, 1),
        params(u32::MAX, u32::MAX, u32::MAX),
        params(0, 0, 0),
    ];
    for p in refused {
        assert!(
            matches!(p.validate(), Err(Error::KdfParamsOutOfBounds(_))),
            "{p:?} must be refused"
        );
    }
    assert_eq!(KdfParams::default(), KdfParams::DEFAULT);
    assert_eq!(KdfParams::DEFAULT, params(256 * mib, 3, 4));
}
