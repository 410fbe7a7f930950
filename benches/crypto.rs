//! Throughput of the payload encryption (Cobblestone-256) in both directions.
//!
//! `cargo bench -p backup-benches --bench crypto` (add `-- --quick` for a
//! rough figure in a few seconds).
use std::hint::black_box;
use std::io::{Read, Write};

use backup_crypto::{ChunkedReader, ChunkedWriter, MasterKey};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZE: usize = 64 << 20;
const CONTEXT: &[u8] = b"bench context";

fn plaintext() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_right(11) as u8)
        .collect()
}

fn encrypt(key: &MasterKey, plain: &[u8], out: Vec<u8>) -> Vec<u8> {
    let mut w = ChunkedWriter::new(out, key.as_bytes(), CONTEXT).expect("32-byte key");
    w.write_all(plain).expect("writing to a Vec");
    w.finish().expect("writing to a Vec")
}

fn bench_payload(c: &mut Criterion) {
    let key = MasterKey::generate().expect("system RNG");
    let plain = plaintext();
    let sealed = encrypt(&key, &plain, Vec::new());

    let mut group = c.benchmark_group("cobblestone256");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));

    let mut out = Vec::with_capacity(sealed.len());
    group.bench_function(BenchmarkId::new("encrypt", "64MiB"), |b| {
        b.iter(|| {
            out.clear();
            out = encrypt(&key, black_box(&plain), std::mem::take(&mut out));
        })
    });

    let mut decrypted = Vec::with_capacity(SIZE);
    group.bench_function(BenchmarkId::new("decrypt", "64MiB"), |b| {
        b.iter(|| {
            decrypted.clear();
            let mut r = ChunkedReader::new(black_box(&sealed[..]), key.as_bytes(), CONTEXT)
                .expect("valid stream");
            r.read_to_end(&mut decrypted).expect("valid stream");
            assert_eq!(decrypted.len(), SIZE);
        })
    });
    group.finish();
}

criterion_group!(benches, bench_payload);
criterion_main!(benches);
