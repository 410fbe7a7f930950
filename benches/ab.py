#!/usr/bin/env python3
"""Two builds of the engine, alternating A/B/A/B, on one dataset: does a change
make backup or restore slower?

  python3 benches/ab.py --a /tmp/backup-before --b target/release/backup
  python3 benches/ab.py --a OLD --b NEW --generate 1GiB --rounds 7

Each round runs both builds (the order reversed every other round) for a
backup (`create -o FILE`) and a restore into a fresh loop-mounted ext4 file
system (as benches/compare.py does, so that neither build pays for what the
other deleted), for the gzip and zstd codecs, and prints medians and the B/A
ratio of each. Needs root (loop mounts) and mkfs.ext4; the dataset is
compare.py's deterministic appliance dataset, made once in the work
directory. Only the Python standard library is used.
"""
import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("compare", HERE / "compare.py")
compare = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare)

SECRET = "benchmark secret, not a real one"


def timed(argv):
    subprocess.run(["sync"], check=True)
    start = time.monotonic()
    proc = subprocess.run(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
    took = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-2000:]}")
    return took


ENV = dict(os.environ, BACKUP_SECRET=SECRET)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="the baseline `backup` binary")
    p.add_argument("--b", required=True, help="the `backup` binary to compare with it")
    p.add_argument("--generate", default="256MiB", help="dataset size (default 256MiB)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--work", default="/var/tmp/backup-ab", help="scratch directory")
    args = p.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: each restore goes into a fresh loop-mounted ext4")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = work / f"dataset-{args.generate}-{args.seed}"
    if not dataset.exists():
        compare.generate(dataset, compare.parse_size(args.generate), args.seed)
    builds = {"A": str(Path(args.a).resolve()), "B": str(Path(args.b).resolve())}
    samples = {}
    mnt, fs_image = work / "mnt", work / "fs.img"
    for codec in ("zstd", "gzip"):
        level = {"gzip": 6, "zstd": 3}[codec]
        configs = {k: compare.engine_config(b, work, f"{k}-{codec}", codec, level, dataset, ENV)
                   for k, b in builds.items()}
        for r in range(args.rounds):
            order = ["A", "B"] if r % 2 == 0 else ["B", "A"]
            for k in order:
                image = work / f"{k}-{codec}.bkp"
                image.unlink(missing_ok=True)
                samples.setdefault((codec, "backup", k), []).append(
                    timed([builds[k], "--config", str(configs[k]), "create", "-o", str(image)]))
            for k in order:
                compare.mount_fresh_ext4(fs_image, mnt, 4 * compare.parse_size(args.generate),
                                         ("-E", "lazy_itable_init=0,lazy_journal_init=0"))
                try:
                    samples.setdefault((codec, "restore", k), []).append(
                        timed([builds[k], "--config", str(configs[k]), "restore",
                               str(work / f"{k}-{codec}.bkp"), "--target", str(mnt / "r")]))
                finally:
                    subprocess.run(["umount", str(mnt)], check=True)
                    fs_image.unlink()
    files, size = compare.tree_stats(dataset)
    print(f"A = {builds['A']}\nB = {builds['B']}\n"
          f"dataset {compare.human(size)} in {files} files, {args.rounds} rounds, "
          "medians (every sample in brackets)\n")
    print("| codec | operation | A | B | B/A |\n|---|---|---:|---:|---:|")
    for codec in ("zstd", "gzip"):
        for op in ("backup", "restore"):
            a, b = samples[(codec, op, "A")], samples[(codec, op, "B")]
            ma, mb = statistics.median(a), statistics.median(b)
            print(f"| {codec} | {op} | {ma:.2f} s {[round(x, 2) for x in a]} "
                  f"| {mb:.2f} s {[round(x, 2) for x in b]} | {mb / ma:.2f}× |")
    shutil.rmtree(mnt, ignore_errors=True)


if __name__ == "__main__":
    main()
