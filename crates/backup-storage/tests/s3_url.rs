//! `s3://` URLs through `open_url` and `S3Storage::from_url`, with credentials
//! from the process environment and AWS profile files.
//!
//! One test in a process of its own ([`alone`]): it changes environment
//! variables, which would race with any other test in the same process.

use std::time::Duration;

use anyhow::{ensure, Result};
use backup_storage::{open_url, Error, OpenOptions, PutMode, S3Storage, Storage, StorageExt};
use bytes::Bytes;

use crate::util::alone;
use crate::util::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};

const AWS_VARS: [&str; 9] = [
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_CONFIG_FILE",
    "HOME",
];

#[test]
fn urls_take_credentials_from_the_environment_and_never_from_the_url() -> Result<()> {
    alone(
        "s3_url::urls_take_credentials_from_the_environment_and_never_from_the_url",
        credentials_from_the_environment_and_never_from_the_url,
    )
}

fn credentials_from_the_environment_and_never_from_the_url() -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let server = S3Server::start()?;
    let home = tempfile::tempdir()?;
    for var in AWS_VARS {
        std::env::remove_var(var);
    }
    std::env::set_var("HOME", home.path());
    let url = format!("s3://{BUCKET}/site-1?endpoint={}", server.endpoint());

    // Nothing anywhere: refused up front, saying where we looked.
    let err = S3Storage::from_url(&url).expect_err("no credentials");
    ensure!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");
    let msg = err.to_string();
    ensure!(
        msg.contains("no S3 credentials found")
            && msg.contains("AWS_ACCESS_KEY_ID")
            && msg.contains(".aws/credentials"),
        "{msg}"
    );

    // Credentials in the URL: refused, and not repeated in the error.
    let with_secret = format!(
        "s3://{ACCESS_KEY}:{SECRET_KEY}@{BUCKET}/site-1?endpoint={}",
        server.endpoint()
    );
    let err = open_url(&with_secret, &OpenOptions::default())
        .map(drop)
        .expect_err("credentials in the URL");
    ensure!(matches!(err, Error::InvalidUrl { .. }), "{err:?}");
    ensure!(!format!("{err} {err:?}").contains(SECRET_KEY), "{err:?}");
    ensure!(
        err.to_string().contains("do not belong in the URL"),
        "{err}"
    );

    // A profile in ~/.aws/credentials (the default file under HOME).
    std::fs::create_dir(home.path().join(".aws"))?;
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id = AKIDOTHER\naws_secret_access_key = other\n\n[nas]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
    )?;
    std::fs::write(
        home.path().join(".aws/config"),
        "[profile nas]\nregion = eu-test-1\n",
    )?;
    std::env::set_var("AWS_PROFILE", "nas");
    let store = open_url(&url, &OpenOptions::default())?;
    assert_eq!(
        store.to_string(),
        url,
        "the region from the profile is not part of the URL"
    );
    runtime.block_on(store.put_bytes(
        "gw.bkp",
        Bytes::from_static(b"via profile"),
        PutMode::Create,
    ))?;
    // ?profile= picks another profile: the default one, whose key the server does not know.
    let other = open_url(&format!("{url}&profile=default"), &OpenOptions::default())?;
    let err = runtime
        .block_on(other.list("", false))
        .expect_err("unknown key");
    ensure!(matches!(err, Error::Unauthenticated { .. }), "{err:?}");

    // The environment variables take precedence over the profile.
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "wrong");
    let store = open_url(&url, &OpenOptions::default())?;
    let err = runtime
        .block_on(store.list("", false))
        .expect_err("wrong secret");
    ensure!(
        err.to_string()
            .contains("rejected the credentials (SignatureDoesNotMatch)"),
        "{err}"
    );
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
    std::env::set_var("AWS_REGION", "eu-test-2");
    let store = S3Storage::from_url(&format!("{url}&region=eu-explicit"))?;
    assert_eq!(store.to_string(), format!("{url}&region=eu-explicit"));
    assert_eq!((store.bucket(), store.prefix()), (BUCKET, "site-1"));
    let listing = runtime.block_on(store.list("", false))?;
    assert_eq!(listing.objects[0].name, "gw.bkp");
    let presigned = runtime.block_on(store.presign_get("gw.bkp", Duration::from_secs(60)))?;
    assert!(
        presigned.contains("X-Amz-Credential=AKIDBACKUPTESTS%2F"),
        "{presigned}"
    );
    assert!(!presigned.contains(SECRET_KEY));

    // Only one of the two variables: a precise message.
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let err = S3Storage::from_url(&url).expect_err("half the credentials");
    ensure!(
        err.to_string()
            .contains("only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
        "{err}"
    );

    // Plain HTTP only where the endpoint says so; other URL mistakes.
    for (bad, reason) in [
        ("s3://", "no bucket"),
        ("s3://b/a//c", "invalid prefix"),
        ("s3://b/p?endpoint=s3.example.net", "must be an https://"),
        (
            "s3://b/p?endpoint=https://h&acl=public",
            "unknown query parameter \"acl\"",
        ),
    ] {
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);
        match open_url(bad, &OpenOptions::default()) {
            Err(Error::InvalidUrl { reason: got, .. }) => {
                ensure!(got.contains(reason), "{bad}: {got}")
            }
            other => anyhow::bail!(
                "{bad}: expected InvalidUrl, got {:?}",
                other.map(|s| s.to_string())
            ),
        }
    }
    let err = S3Storage::builder()
        .bucket(BUCKET)
        .endpoint(server.endpoint())
        .credentials(ACCESS_KEY, SECRET_KEY)
        .allow_http(false)
        .build()
        .expect_err("http refused");
    ensure!(err.to_string().contains("use https://"), "{err}");
    Ok(())
}
