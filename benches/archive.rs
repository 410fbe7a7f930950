//! Tar building and extraction through the engine, with compression off so
//! that the figures are the archive stages themselves: `create` (walk the
//! tree, read every file, build the tar, encrypt, write the image) and
//! `restore --target` (decrypt, parse the tar, check every entry, create
//! every file, verify against the manifest, make the tree durable).
//! Subtract the `cobblestone256` figures of the crypto bench for the
//! encryption's share.
//!
//! `cargo bench -p backup-benches --bench archive` (add `-- --quick` for a
//! rough figure).
use std::path::{Path, PathBuf};

use backup_benches::write_tree;
use backup_core::{Config, CreateOptions, Engine, KdfParams, Passphrase, RestoreOptions};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn config(state: &Path, data: &Path) -> Config {
    let text = format!(
        "[appliance]\nproduct = \"bench\"\nversion = \"1\"\nnode = \"bench\"\nstate_dir = \"{}\"\n\n\
         [image]\ncompression = \"none\"\n\n\
         [[component]]\nname = \"data\"\nkind = \"files\"\npaths = [\"{}\"]\n",
        state.display(),
        data.display()
    );
    Config::parse(&text, Path::new("bench.toml")).expect("valid bench config")
}

fn bench_archive(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Two shapes: many small files (file creation dominates), and a few
    // large ones (bytes dominate).
    let shapes = [("small-files", 4000, 4 << 10), ("large-files", 8, 8 << 20)];
    let mut group = c.benchmark_group("archive");
    group.sample_size(10);
    for (shape, files, size) in shapes {
        let data = dir.path().join(shape);
        let bytes = write_tree(&data, files, size, 3).expect("writing the bench tree");
        let state = dir.path().join(format!("state-{shape}"));
        backup_core::init_keys(
            &state,
            &Passphrase::new("bench secret".into()).expect("passphrase"),
            KdfParams::MINIMUM,
        )
        .expect("keys");
        let engine = Engine::builder(config(&state, &data))
            .build()
            .expect("engine");
        let image: PathBuf = dir.path().join(format!("{shape}.bkp"));
        group.throughput(Throughput::Bytes(bytes));
        group.bench_function(BenchmarkId::new("tar-create", shape), |b| {
            b.iter(|| {
                let _ = std::fs::remove_file(&image);
                let mut opts = CreateOptions::default();
                opts.destination = backup_core::Destination::File(image.clone());
                rt.block_on(engine.create(&opts)).expect("backup");
            })
        });
        let target = dir.path().join(format!("restored-{shape}"));
        group.bench_function(BenchmarkId::new("extract", shape), |b| {
            b.iter(|| {
                let _ = std::fs::remove_dir_all(&target);
                let mut opts = RestoreOptions::default();
                opts.target = Some(target.clone());
                rt.block_on(engine.restore(image.as_path(), &opts))
                    .expect("restore");
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench_archive);
criterion_main!(benches);
