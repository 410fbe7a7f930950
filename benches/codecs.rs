//! Throughput of the payload codecs, both directions: parallel gzip (all
//! cores, and one thread for the serial figure), zstd (independent frames on
//! all cores) and none, over a payload shaped like an appliance image
//! (text-like logs and configuration, a database-like region, and
//! incompressible binaries). Decompression runs as restore runs it: frames
//! on several threads; "zstd-3 one frame" is the same content as the `zstd`
//! tool writes it, which only one thread can decompress.
//!
//! `cargo bench -p backup-benches --bench codecs` (add `-- --quick` for a
//! rough figure in a few seconds).
use std::hint::black_box;
use std::io::{Read, Write};

use backup_benches::appliance_payload;
use backup_core::bench::{decoder, default_threads, Encoder};
use backup_core::Compression;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const SIZE: usize = 32 << 20;

fn encode(data: &[u8], codec: Compression, level: u32, threads: usize) -> Vec<u8> {
    let mut e = Encoder::with_threads(Vec::with_capacity(data.len()), codec, level, threads)
        .expect("valid codec settings");
    // 64 KiB writes, about what the tar builder hands over.
    for piece in data.chunks(64 << 10) {
        e.write_all(piece).expect("writing to a Vec");
    }
    e.finish().expect("writing to a Vec")
}

/// Decompresses as restore does, into `out`.
fn decode(packed: &[u8], out: &mut Vec<u8>) {
    out.clear();
    decoder(packed)
        .expect("valid payload")
        .read_to_end(out)
        .expect("valid payload");
    assert_eq!(out.len(), SIZE);
}

fn bench_codecs(c: &mut Criterion) {
    let data = appliance_payload(SIZE, 7);
    let cores = default_threads();
    let cases = [
        ("gzip-6 parallel", Compression::Gzip, 6, cores),
        ("gzip-6 serial", Compression::Gzip, 6, 1),
        ("gzip-1 parallel", Compression::Gzip, 1, cores),
        ("zstd-3", Compression::Zstd, 3, cores),
        ("none", Compression::None, 0, 1),
    ];
    let mut group = c.benchmark_group("codec");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(SIZE as u64));
    for (name, codec, level, threads) in cases {
        let packed = encode(&data, codec, level, threads);
        println!(
            "{name}: {} → {} bytes ({:.1}%)",
            data.len(),
            packed.len(),
            100.0 * packed.len() as f64 / data.len() as f64
        );
        group.bench_function(BenchmarkId::new("compress", name), |b| {
            b.iter(|| encode(black_box(&data), codec, level, threads))
        });
        if threads > 1 && codec == Compression::Gzip && level == 6 {
            // Decompression does not depend on how many threads compressed.
            continue;
        }
        let mut out = Vec::with_capacity(SIZE);
        group.bench_function(BenchmarkId::new("decompress", name), |b| {
            b.iter(|| decode(black_box(&packed), &mut out))
        });
    }
    let one_frame = zstd::encode_all(&data[..], 3).expect("zstd in memory");
    let mut out = Vec::with_capacity(SIZE);
    group.bench_function(BenchmarkId::new("decompress", "zstd-3 one frame"), |b| {
        b.iter(|| decode(black_box(&one_frame), &mut out))
    });
    group.finish();
}

criterion_group!(benches, bench_codecs);
criterion_main!(benches);
