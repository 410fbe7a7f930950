//! Memory bound: a 1 GiB incompressible file goes through `create` without
//! the image ever being held in memory. A regression guard on peak RSS (not on
//! time). (`verify` of such an image was measured by hand at the same order of
//! peak RSS; it is left out because decryption in the unoptimised test build
//! runs at a few MiB/s and would add ~10 minutes.)

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// Generous: the pipeline holds a few 256 KiB buffers and 16 KiB chunks.
const LIMIT_KIB: u64 = 200 * 1024;

/// Runs `cmd` and gives its exit code and peak resident set size in KiB:
/// through GNU time (`/usr/bin/time -v`) if present, else by polling VmHWM.
fn run_measured(mut cmd: Command) -> (Out, u64) {
    let gnu_time = Path::new("/usr/bin/time");
    if gnu_time.exists() {
        let mut timed = Command::new(gnu_time);
        timed.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => timed.env(k, v),
                None => timed.env_remove(k),
            };
        }
        if let Some(d) = cmd.get_current_dir() {
            timed.current_dir(d);
        }
        timed.stdin(Stdio::null());
        let out = run(&mut timed);
        let kib = out
            .stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no peak RSS in the output of /usr/bin/time -v\n{}",
                    out.dump()
                )
            });
        return (out, kib);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_path) {
            if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                peak = peak.max(v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let out = Out {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        what: "backup (polled VmHWM)".into(),
    };
    (out, peak)
}

#[test]
fn one_gib_of_incompressible_data_is_backed_up_in_bounded_memory() {
    let fx = Fixture::custom(|fx| {
        let data = fx.root.join("srv/data");
        std::fs::create_dir_all(&data).unwrap();
        write_random_file(&data.join("random-1GiB.bin"), 1 << 30, 0xC0FFEE);
        fx.spec.level = 1;
        fx.spec.components = vec![files_component("data", &[&data], "")];
    });
    let mut create = fx.cmd();
    create.args(["--json", "create"]);
    let (out, create_kib) = run_measured(create);
    out.expect(0);
    let report = out.json();
    assert_eq!(report["outcome"], "success", "{report:#}");
    let size = report["size"].as_u64().unwrap();
    println!(
        "create: peak RSS {} KiB ({:.1} MiB), image {size} bytes",
        create_kib,
        create_kib as f64 / 1024.0
    );
    assert!(
        size > 1 << 30,
        "an incompressible GiB should not shrink: {size}"
    );

    assert!(
        create_kib < LIMIT_KIB,
        "create peaked at {create_kib} KiB (limit {LIMIT_KIB} KiB)"
    );
}
