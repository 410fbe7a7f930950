//! The conformance suite against the local-directory backend.

use backup_storage::{conformance, LocalStorage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_passes_the_conformance_suite() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = LocalStorage::new(dir.path())?;
    // Spawned, which also proves the suite's future is Send (real-server
    // tests run it on a multi-threaded runtime).
    let suite = tokio::spawn(async move {
        conformance::run_all(&store, "run-1/")
            .await
            .map_err(|e| e.to_string())
    });
    suite.await?.map_err(anyhow::Error::msg)?;

    // Everything was cleaned up, down to the directories.
    let left: Vec<_> = std::fs::read_dir(dir.path())?.collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "left behind: {left:?}");
    Ok(())
}

#[tokio::test]
async fn the_suite_refuses_a_namespace_in_use() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("taken"))?;
    std::fs::write(dir.path().join("taken/image.bkp"), b"someone's backup")?;
    let store = LocalStorage::new(dir.path())?;
    let err = conformance::run_all(&store, "taken")
        .await
        .expect_err("a namespace in use");
    assert!(err.to_string().contains("fresh prefix"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join("taken/image.bkp"))?,
        b"someone's backup"
    );
    Ok(())
}
