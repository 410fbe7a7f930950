//! Shared inputs of the benchmarks; the benchmarks themselves are the
//! `[[bench]]` targets (`cargo bench -p backup-benches`), and the end-to-end
//! comparison with peer tools is `benches/compare.py`.
#![warn(missing_docs)]

use std::io;
use std::path::Path;

/// A deterministic generator (xorshift64): the same seed gives the same
/// bytes on every machine.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut s = self.0;
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        self.0 = s;
        s
    }
}

const WORDS: &[&str] = &[
    "accept",
    "deny",
    "tcp",
    "udp",
    "10.0.3.17",
    "192.168.1.1",
    "policy",
    "rule",
    "session",
    "established",
    "closed",
    "admin",
    "login",
    "gateway",
    "\"ok\"",
    "443",
    "install",
    "object",
    "interface",
    "eth1",
    "vpn",
    "tunnel",
    "ike",
    "sha256",
    "audit",
    "cluster",
    "member",
];

/// `size` bytes shaped like an appliance image: about 40% JSON-lines audit
/// records, 20% configuration text, 20% database-like records with binary
/// keys, 20% incompressible binaries — in 256 KiB runs that alternate, as
/// files do in a tar.
pub fn appliance_payload(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = XorShift(seed | 1);
    let mut out = Vec::with_capacity(size + 4096);
    let mut line = 0u64;
    while out.len() < size {
        let kind = rng.next() % 10;
        let end = (out.len() + (256 << 10)).min(size);
        while out.len() < end {
            line += 1;
            match kind {
                0..=3 => {
                    out.extend_from_slice(
                        format!(
                            "{{\"seq\":{line},\"time\":{},\"admin\":\"admin{}\",\"action\":\"",
                            1_730_000_000 + line * 3,
                            rng.next() % 200
                        )
                        .as_bytes(),
                    );
                    for _ in 0..6 {
                        out.extend_from_slice(
                            WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                        );
                        out.push(b' ');
                    }
                    out.extend_from_slice(b"\",\"outcome\":\"success\"}\n");
                }
                4 | 5 => {
                    out.extend_from_slice(format!("rule {} ", line % 500).as_bytes());
                    for _ in 0..8 {
                        out.extend_from_slice(
                            WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                        );
                        out.push(b' ');
                    }
                    out.push(b'\n');
                }
                6 | 7 => {
                    out.extend_from_slice(&line.to_le_bytes());
                    out.extend_from_slice(&rng.next().to_le_bytes());
                    out.extend_from_slice(
                        format!(
                            "host-{} 10.{}.{}.0/24 ",
                            line,
                            rng.next() % 256,
                            rng.next() % 256
                        )
                        .as_bytes(),
                    );
                    out.extend_from_slice(
                        WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                    );
                }
                _ => {
                    for _ in 0..64 {
                        out.extend_from_slice(&rng.next().to_le_bytes());
                    }
                }
            }
        }
    }
    out.truncate(size);
    out
}

/// Writes `files` files of `size` bytes each (cut from
/// [`appliance_payload`]) under `root`, 100 per directory; returns the bytes
/// written.
pub fn write_tree(root: &Path, files: usize, size: usize, seed: u64) -> io::Result<u64> {
    let payload = appliance_payload(size * files.min(64), seed);
    let mut total = 0u64;
    for i in 0..files {
        let dir = root.join(format!("d{:03}", i / 100));
        std::fs::create_dir_all(&dir)?;
        let at = (i % files.min(64)) * size;
        std::fs::write(dir.join(format!("f{i:05}")), &payload[at..at + size])?;
        total += size as u64;
    }
    Ok(total)
}
