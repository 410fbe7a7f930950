//! The conformance suite against the S3 backend, on a real S3 server
//! (s3s-fs, in-process on 127.0.0.1).

use crate::util::s3::S3Server;
use backup_storage::{conformance, Storage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_storage_passes_the_conformance_suite() -> anyhow::Result<()> {
    let server = S3Server::start()?;
    let store = server.storage("appliances/site-1")?;
    assert!(
        !store.capabilities().conditional_create,
        "see s3/mod.rs: create-only is best effort for multipart uploads"
    );
    // Spawned: the suite's future must be Send, as the engine's are.
    let suite = tokio::spawn(async move {
        conformance::run_all(&store, "run-1/")
            .await
            .map_err(|e| e.to_string())
    });
    suite.await?.map_err(anyhow::Error::msg)?;
    // Every multipart upload the suite started was completed or aborted.
    assert_eq!(server.pending_uploads()?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_at_the_root_of_a_bucket_too() -> anyhow::Result<()> {
    // No prefix: names are keys as they are. Smaller sizes: the prefix
    // mapping is what differs, and the full run covers sizes and paging.
    let server = S3Server::start()?;
    let store = server.storage("")?;
    let config = conformance::Config::default()
        .with_many(30)
        .with_large((5 << 20) + 1);
    let suite = tokio::spawn(async move {
        conformance::run_all_with(&store, "run-2/", &config)
            .await
            .map_err(|e| e.to_string())
    });
    suite.await?.map_err(anyhow::Error::msg)?;
    Ok(())
}
