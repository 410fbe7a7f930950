#!/usr/bin/env python3
"""End-to-end comparison of the backup engine against the tools an operator
would otherwise use, in one run, alternating A/B/A/B.

  python3 benches/compare.py --generate 1GiB            # a deterministic appliance dataset
  python3 benches/compare.py --dir /some/tree            # any directory
  python3 benches/compare.py --copy /usr/share           # a copy of a real tree (kept in the work dir)

Each round runs every tool once, in an order that is reversed every other
round, so a noisy or drifting machine hits every tool alike; the report gives
medians over the rounds and ratios taken within this one run. Before every
timed command the page cache is warm (one untimed read of the dataset at the
start) and dirty pages are flushed (`sync`, untimed), so no tool pays for the
previous one's writes.

Every restore goes into a fresh, empty ext4 file system (a loop-mounted
image made and mounted untimed; needs root, mkfs.ext4 and a loop device):
how fast a file system creates 20,000 files depends on what was deleted from
it before (ext4's inode allocator), and a tool should not win by the order it
ran in. Without root the restores go into new directories of the work
directory, with a pause between rounds (`--settle`); `--restore-fs dir`
forces that. After every restore, `sync -f` on the restored tree is timed as
well: the engine makes a restore durable before it reports success, the
pipelines and restic do not, and "restore + sync" compares like with like.

Backups: `backup create` with the gzip and zstd codecs; `tar | gzip -6`;
`tar | pigz -p2 -6 | age`; `tar | zstd -T2 -3 | age`; restic's first backup
into a fresh repository. Restores: `backup restore --target`; the matching
`age -d | pigz -dc | tar -x` etc.; `restic restore`. On a generated dataset
the engine captures the SQLite database with a `sqlite` component (an
appliance's configuration would), the others read it as a file.

The nightly run: right after its first backup, the engine, restic and rustic
back up again — once with the data unchanged, once with 1% of the files
changed (chosen by `--seed`, 64 bytes overwritten each) and the database
updated (1% of a table's rows, 50 rows added); the changes are undone,
untimed, before the next tool. The engine writes a standalone full image
each time (its first backup of a round with `--no-cache` when it has a frame
cache), restic and rustic an incremental snapshot on top of the first one.
`--no-incremental` skips these.

Measured with GNU time: wall seconds, CPU seconds (user + system of the whole
pipeline), peak RSS (for a pipeline, the sum of its processes' peaks: they
run at once) and the output size. Writes a markdown table, an SVG chart and
the raw samples (JSON) under benches/results/.

Missing tools (pigz, zstd, age, restic, GNU time) are installed with apt-get
when running as root; otherwise the script says what to install.
Only the Python standard library is used.
"""
import argparse
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benches" / "results"
SECRET = "bench-secret-not-for-production"
GNU_TIME = "/usr/bin/time"
TOOLS = {  # command -> Debian package
    "pigz": "pigz",
    "zstd": "zstd",
    "age": "age",
    "age-keygen": "age",
    "restic": "restic",
    GNU_TIME: "time",
    "tar": "tar",
    "gzip": "gzip",
}


def log(msg):
    print(f"[compare] {msg}", file=sys.stderr, flush=True)


def parse_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def human(n):
    for unit in ["B", "KiB", "MiB", "GiB", "TiB"]:
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# --------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------


def ensure_tools():
    missing = sorted({pkg for cmd, pkg in TOOLS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing tools; install them first: sudo apt-get install {' '.join(missing)}")
    log(f"installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    still = sorted(cmd for cmd in TOOLS if shutil.which(cmd) is None)
    if still:
        sys.exit(f"still missing after apt-get: {' '.join(still)}")


def mount_fresh_ext4(image, mnt, size, mkfs_args=()):
    """Makes an ext4 file system of `size` bytes in the sparse file `image`
    and loop-mounts it on `mnt`; tool errors are captured for the caller."""
    with open(image, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", *mkfs_args, str(image)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def choose_restore_fs(wanted, work):
    """`loop` when a fresh ext4 can be made and mounted here, else `dir`
    (or an exit, when `loop` was asked for and cannot be had)."""
    if wanted == "dir":
        return "dir"
    problem = None
    if os.geteuid() != 0:
        problem = "not running as root"
    elif shutil.which("mkfs.ext4") is None:
        problem = "mkfs.ext4 is missing (apt-get install e2fsprogs)"
    else:
        image, mnt = work / "probe-fs.img", work / "probe-fs"
        try:
            mount_fresh_ext4(image, mnt, 64 << 20)
            subprocess.run(["umount", str(mnt)], check=True)
        except (OSError, subprocess.CalledProcessError) as e:
            detail = e.stderr.decode(errors="replace").strip() if getattr(e, "stderr", None) else str(e)
            problem = f"cannot mount a loop file system here ({detail})"
        finally:
            image.unlink(missing_ok=True)
            if mnt.exists() and not os.path.ismount(mnt):
                mnt.rmdir()
    if problem is None:
        return "loop"
    if wanted == "loop":
        sys.exit(f"--restore-fs loop: {problem}")
    log(f"restoring into directories, not fresh file systems: {problem}")
    return "dir"


def build_engine(skip_build, given=None):
    if given is not None:
        binary = given.resolve()
        if not binary.exists():
            sys.exit(f"{binary} is missing")
        return binary
    binary = REPO / "target" / "release" / "backup"
    if not skip_build:
        log("building the engine: cargo build --release -p backup-cli")
        subprocess.run(["cargo", "build", "--release", "-p", "backup-cli"], cwd=REPO, check=True)
    if not binary.exists():
        sys.exit(f"{binary} is missing: run cargo build --release -p backup-cli")
    return binary


def engine_config(engine, work, label, codec, level, dataset, env, database=None):
    """Writes the engine's config `work/<label>.toml` backing up `dataset` to a
    file (no storage) with `codec` at `level`, and sets its secret (once).
    With `database` (a SQLite file inside `dataset`), that file is captured
    as an appliance's would be: by a `sqlite` component (a consistent
    snapshot of the live database), not as a plain file."""
    db_component = ""
    paths = f'"{dataset}"'
    if database is not None:
        # The files component takes everything beside the database (each
        # directory on the way to it contributes its other children), not
        # the tree holding it: an appliance's configuration names them apart.
        beside = []
        at = dataset
        for part in database.relative_to(dataset).parts:
            beside += [c for c in at.iterdir() if c.name != part]
            at = at / part
        paths = ", ".join(f'"{p}"' for p in sorted(beside))
        db_component = f"""
[[component]]
name = "db"
kind = "sqlite"
path = "{database}"
"""
    state = work / f"state-{label}"
    cfg = work / f"{label}.toml"
    cfg.write_text(f"""[appliance]
product = "bench-gateway"
version = "1.0"
node = "bench"
state_dir = "{state}"

[storage]
url = "none"

[image]
compression = "{codec}"
level = {level}

[encryption]
kdf_memory_mib = 64
kdf_iterations = 3
kdf_parallelism = 4

[[component]]
name = "data"
kind = "files"
paths = [{paths}]
{db_component}""")
    if not (state / "master.key").exists():
        state.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(engine), "--config", str(cfg), "init"], check=True,
                       env=env, stdout=subprocess.DEVNULL)
    return cfg


def version_of(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        line = (out.stdout or out.stderr).strip().splitlines()[0]
        return line.strip()
    except Exception:  # noqa: BLE001 - a version string is only informative
        return "?"


# --------------------------------------------------------------------------
# The appliance dataset
# --------------------------------------------------------------------------

# Shares of the requested size, after the 1 GB example: a config tree,
# a 320 MB SQLite database, 419 MB of JSON-lines audit logs, 210 MB of
# incompressible binaries (installed extensions, firmware blobs).
SHARES = {"config": 0.05, "db": 0.30, "audit": 0.42, "binaries": 0.23}

CONF_WORDS = ("enable disable allow deny log drop accept reject inbound outbound any "
              "tcp udp icmp https ssh snmp ntp dns syslog radius ldap vpn ipsec ike "
              "tunnel interface vlan bridge route static policy rule object group "
              "zone trust untrust dmz mgmt cluster sync member priority timeout").split()


def gen_config(root, budget, rng):
    """Many small text files: an /etc-like tree of the appliance."""
    written = 0
    n = 0
    while written < budget:
        sub = root / f"{rng.choice(['policies', 'objects', 'interfaces', 'routing', 'vpn', 'users', 'certs', 'services'])}" \
                    / f"set-{n // 200:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        kind = rng.random()
        if kind < 0.1:
            # PEM-like certificate: base64 of random bytes (compresses ~25%).
            body = rng.randbytes(rng.randint(900, 3000))
            import base64
            b64 = base64.encodebytes(body).decode()
            text = f"-----BEGIN CERTIFICATE-----\n{b64}-----END CERTIFICATE-----\n"
            name = f"cert-{n:06d}.pem"
        elif kind < 0.3:
            obj = {"name": f"obj-{n}", "type": rng.choice(["host", "network", "range", "fqdn"]),
                   "address": f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                   "tags": rng.sample(CONF_WORDS, 3), "comment": " ".join(rng.choices(CONF_WORDS, k=8))}
            text = json.dumps(obj, indent=2) + "\n"
            name = f"object-{n:06d}.json"
        else:
            lines = [f"# generated policy {n}"]
            for i in range(rng.randint(5, 80)):
                lines.append(f"rule {i} {rng.choice(CONF_WORDS)} from {rng.choice(CONF_WORDS)} "
                             f"to 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.0/24 "
                             f"port {rng.choice([22, 53, 80, 123, 443, 8443, 161])} "
                             f"{' '.join(rng.choices(CONF_WORDS, k=4))}")
            text = "\n".join(lines) + "\n"
            name = f"policy-{n:06d}.conf"
        data = text.encode()
        (sub / name).write_bytes(data)
        written += len(data)
        n += 1
    (root / "links").mkdir(exist_ok=True)
    for i in range(20):
        link = root / "links" / f"active-{i}"
        if not link.is_symlink():
            link.symlink_to(f"../policies")
    return n


def gen_db(path, budget, rng):
    """A SQLite database with the tables of a management server."""
    if path.exists():
        path.unlink()
    db = sqlite3.connect(path)
    db.executescript("""
        PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA page_size = 4096;
        CREATE TABLE admins (id INTEGER PRIMARY KEY, login TEXT UNIQUE, full_name TEXT,
            email TEXT, role TEXT, password_hash TEXT, created TEXT, last_login TEXT);
        CREATE TABLE network_objects (id INTEGER PRIMARY KEY, name TEXT, kind TEXT,
            address TEXT, mask INTEGER, comment TEXT, color TEXT, modified TEXT);
        CREATE TABLE rules (id INTEGER PRIMARY KEY, policy TEXT, position INTEGER,
            source INTEGER, destination INTEGER, service TEXT, action TEXT, track TEXT,
            enabled INTEGER, comment TEXT, hits INTEGER, modified TEXT);
        CREATE TABLE sessions (id INTEGER PRIMARY KEY, admin INTEGER, client_ip TEXT,
            started TEXT, ended TEXT, changes INTEGER, token BLOB);
        CREATE TABLE revisions (id INTEGER PRIMARY KEY, admin INTEGER, created TEXT,
            description TEXT, diff TEXT);
        CREATE INDEX rules_policy ON rules(policy, position);
        CREATE INDEX objects_name ON network_objects(name);
        CREATE INDEX sessions_admin ON sessions(admin, started);
    """)
    admins = [(i, f"admin{i}", f"Admin Number {i}", f"admin{i}@example.net",
               rng.choice(["superuser", "read-only", "auditor", "operator"]),
               "$argon2id$v=19$m=65536,t=3,p=4$" + rng.randbytes(16).hex() + "$" + rng.randbytes(32).hex(),
               f"2024-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}T10:00:00Z", None) for i in range(1, 201)]
    db.executemany("INSERT INTO admins VALUES (?,?,?,?,?,?,?,?)", admins)
    batch = 0
    while True:
        base = batch * 5000
        objs = [(base + i, f"host-{base + i}", rng.choice(["host", "network", "range"]),
                 f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                 rng.choice([32, 24, 16]), " ".join(rng.choices(CONF_WORDS, k=6)),
                 rng.choice(["red", "blue", "green", "black"]), f"2025-0{rng.randint(1, 9)}-0{rng.randint(1, 9)}")
                for i in range(5000)]
        db.executemany("INSERT INTO network_objects VALUES (?,?,?,?,?,?,?,?)", objs)
        rules = [(base + i, f"policy-{rng.randint(1, 40)}", i, rng.randint(1, base + 5000),
                  rng.randint(1, base + 5000), rng.choice(["https", "ssh", "dns", "any", "smtp"]),
                  rng.choice(["accept", "drop", "reject"]), rng.choice(["log", "none", "alert"]),
                  1, " ".join(rng.choices(CONF_WORDS, k=10)), rng.randint(0, 10**9),
                  f"2025-1{rng.randint(0, 2)}-1{rng.randint(0, 9)}") for i in range(5000)]
        db.executemany("INSERT INTO rules VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rules)
        sessions = [(base + i, rng.randint(1, 200), f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                     f"2025-11-{rng.randint(10, 28)}T{rng.randint(10, 23)}:00:00Z", None,
                     rng.randint(0, 50), rng.randbytes(32)) for i in range(2000)]
        db.executemany("INSERT INTO sessions VALUES (?,?,?,?,?,?,?)", sessions)
        revs = [(base + i, rng.randint(1, 200), "2025-11-20T12:00:00Z", f"revision {base + i}",
                 "\n".join(f"+ rule {rng.randint(1, 999)} {' '.join(rng.choices(CONF_WORDS, k=6))}"
                           for _ in range(rng.randint(2, 12)))) for i in range(500)]
        db.executemany("INSERT INTO revisions VALUES (?,?,?,?,?)", revs)
        db.commit()
        batch += 1
        if batch % 4 == 0 and path.stat().st_size >= budget:
            break
    db.close()


AUDIT_ACTIONS = ["login", "logout", "install-policy", "modify-object", "delete-rule", "add-rule",
                 "publish", "backup", "view-logs", "failed-login", "change-password"]


def gen_audit(root, budget, rng):
    """JSON-lines audit logs, rotated every ~64 MiB, one per day."""
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    day = 0
    seq = 0
    t0 = 1_730_000_000
    while written < budget:
        target = min(64 << 20, budget - written)
        path = root / f"audit-2025-{(day // 28) + 1:02d}-{(day % 28) + 1:02d}.jsonl"
        n = 0
        with open(path, "w") as f:
            lines = []
            while n < target:
                seq += 1
                rec = {"seq": seq, "time": t0 + seq * 3, "admin": f"admin{rng.randint(1, 200)}",
                       "client": f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
                       "action": rng.choice(AUDIT_ACTIONS),
                       "object": f"{rng.choice(['rule', 'host', 'network', 'policy'])}-{rng.randint(1, 99999)}",
                       "outcome": rng.choice(["success"] * 9 + ["failure"]),
                       "session": rng.randbytes(8).hex(),
                       "details": " ".join(rng.choices(CONF_WORDS, k=rng.randint(3, 12)))}
                line = json.dumps(rec, separators=(",", ":")) + "\n"
                lines.append(line)
                n += len(line)
                if len(lines) >= 2000:
                    f.write("".join(lines))
                    lines.clear()
            f.write("".join(lines))
        written += n
        day += 1


def gen_binaries(root, budget, rng):
    """Incompressible files: extension packages and firmware images."""
    root.mkdir(parents=True, exist_ok=True)
    written = 0
    i = 0
    while written < budget:
        size = min(budget - written, rng.choice([256 << 10, 1 << 20, 4 << 20, 16 << 20, 48 << 20]))
        (root / f"extension-{i:03d}.bin").write_bytes(rng.randbytes(size))
        written += size
        i += 1


def generate(dest, size, seed):
    marker = dest / ".generated"
    want = f"appliance-dataset v1 size={size} seed={seed}"
    if marker.exists() and marker.read_text() == want:
        log(f"reusing the dataset in {dest}")
        return
    if dest.exists():
        shutil.rmtree(dest)
    log(f"generating a {human(size)} appliance dataset in {dest} (seed {seed})")
    rng = random.Random(seed)
    data = dest / "appliance"
    (data / "etc" / "gateway").mkdir(parents=True)
    files = gen_config(data / "etc" / "gateway", int(size * SHARES["config"]), rng)
    (data / "var" / "lib" / "gateway").mkdir(parents=True)
    gen_db(data / "var" / "lib" / "gateway" / "internal.sqlite", int(size * SHARES["db"]), rng)
    gen_audit(data / "var" / "log" / "gateway" / "audit", int(size * SHARES["audit"]), rng)
    gen_binaries(data / "opt" / "gateway" / "extensions", int(size * SHARES["binaries"]), rng)
    marker.write_text(want)
    log(f"generated ({files} config files)")


def tree_stats(root):
    files = 0
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if not os.path.islink(p):
                total += st.st_size
            files += 1
    return files, total


# --------------------------------------------------------------------------
# Running and measuring
# --------------------------------------------------------------------------


class Runner:
    def __init__(self, work, dataset, engine, restore_fs, data_bytes, files, database=None, seed=0):
        self.work = work
        self.dataset = dataset  # the directory that is backed up
        self.database = database  # a SQLite database inside it, or None
        self.seed = seed
        self.pristine = work / "pristine"
        self.engine = engine
        self.out = work / "out"
        self.restored = work / "restored"
        self.tmp = work / "timing"
        self.restore_count = 0
        self.restore_fs = restore_fs  # "loop" or "dir"
        # A fresh file system per restore: room for the data, a block per
        # small file, and two inodes per file.
        self.fs_bytes = int(data_bytes * 1.3) + files * 8192 + (512 << 20)
        self.fs_inodes = 2 * files + 10_000
        self.fs_image = work / "restore-fs.img"
        self.fs_mount = work / "restore-fs"
        for d in (self.out, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ, BACKUP_SECRET=SECRET, RESTIC_PASSWORD=SECRET, RUSTIC_PASSWORD=SECRET,
                        RESTIC_CACHE_DIR=str(work / "restic-cache"))
        self.age_key = work / "age.key"
        if not self.age_key.exists():
            subprocess.run(["age-keygen", "-o", str(self.age_key)], check=True,
                           stderr=subprocess.DEVNULL)
        self.recipient = [l.split(": ", 1)[1] for l in self.age_key.read_text().splitlines()
                          if l.startswith("# public key: ")][0]
        self.configs = {}
        for codec, level in (("gzip", 6), ("zstd", 3)):
            self.configs[codec] = self.engine_config(codec, level)

    def engine_config(self, codec, level):
        return engine_config(self.engine, self.work, f"backup-{codec}", codec, level,
                             self.dataset, self.env, self.database)

    def change_one_percent(self):
        """The nightly workload's change: 1% of the files (chosen by the seed,
        the same ones every time) get 64 bytes overwritten at a seeded
        offset, and the database 1% of its rules updated and 50 revisions
        added. The originals are kept (untimed) for `undo_change`."""
        rng = random.Random(self.seed + 1)
        paths = sorted(p for p in self.dataset.rglob("*")
                       if p.is_file() and not p.is_symlink() and p != self.database)
        chosen = rng.sample(paths, max(1, len(paths) // 100))
        if self.pristine.exists():
            shutil.rmtree(self.pristine)
        self.pristine.mkdir(parents=True)
        self.changed = []
        for i, p in enumerate(chosen + ([self.database] if self.database else [])):
            keep = self.pristine / f"{i:06d}"
            shutil.copy2(p, keep)
            self.changed.append((p, keep))
        for p in chosen:
            size = p.stat().st_size
            with open(p, "r+b") as f:
                f.seek(rng.randrange(max(1, size - 64)))
                f.write(rng.randbytes(min(64, size)))
        if self.database:
            db = sqlite3.connect(self.database)
            db.execute("UPDATE rules SET hits = hits + 1, modified = '2025-12-01' WHERE id % 100 = 7")
            db.executemany("INSERT INTO revisions (admin, created, description, diff) VALUES (?,?,?,?)",
                           [(rng.randint(1, 200), "2025-12-01T02:00:00Z", f"nightly change {i}",
                             rng.randbytes(400).hex()) for i in range(50)])
            db.commit()
            db.close()
        subprocess.run(["sync"], check=True)

    def undo_change(self):
        for p, keep in self.changed:
            shutil.copy2(keep, p)
        shutil.rmtree(self.pristine)
        subprocess.run(["sync"], check=True)

    def timed(self, stages, shell_tail=""):
        """Runs a pipeline of argv lists under GNU time (each stage timed on
        its own for its peak RSS; the whole for wall and CPU)."""
        parts = []
        rss_files = []
        for i, argv in enumerate(stages):
            f = self.tmp / f"stage{i}"
            if f.exists():
                f.unlink()
            rss_files.append(f)
            parts.append(" ".join([GNU_TIME, "-f", "%M", "-o", str(f)] + [shq(a) for a in argv]))
        script = "set -o pipefail; " + " | ".join(parts) + shell_tail
        whole = self.tmp / "whole"
        subprocess.run(["sync"], check=True)
        proc = subprocess.run([GNU_TIME, "-f", "%e %U %S", "-o", str(whole), "bash", "-c", script],
                              env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"failed ({proc.returncode}): {script}\n{proc.stderr[-2000:]}")
        wall, user, sys_ = (float(x) for x in whole.read_text().split()[-3:])
        rss = sum(int(f.read_text().split()[-1]) for f in rss_files)
        return {"wall": wall, "cpu": user + sys_, "rss_kib": rss}

    def tar_stages(self):
        return [["tar", "-cf", "-", "-C", str(self.dataset.parent), self.dataset.name]]

    def untar(self, target):
        return ["tar", "-xf", "-", "-C", str(target)]

    def fresh_target(self):
        """An empty directory to restore into: the root of a new file system,
        or a new directory (trees are then deleted only between rounds, see
        `settle`, never right before a timed restore)."""
        self.restore_count += 1
        if self.restore_fs == "loop":
            self.drop_fs()
            # Inode tables and journal written now, not lazily in the
            # background while a tool is timed.
            mount_fresh_ext4(self.fs_image, self.fs_mount, self.fs_bytes,
                             ["-N", str(self.fs_inodes), "-E", "lazy_itable_init=0,lazy_journal_init=0"])
            target = self.fs_mount / "restored"
        else:
            target = self.restored / f"{self.restore_count:03d}"
        target.mkdir(parents=True)
        return target

    def drop_fs(self):
        if os.path.ismount(self.fs_mount):
            subprocess.run(["umount", str(self.fs_mount)], check=True)
        if self.fs_image.exists():
            self.fs_image.unlink()

    def timed_restore(self, stages_for, expect_files):
        """Times a restore into a fresh target, then (separately) the
        `sync -f` that makes it durable; checks what was restored."""
        target = self.fresh_target()
        s = self.timed(stages_for(target))
        started = time.monotonic()
        subprocess.run(["sync", "-f", str(target)], check=True)
        s["sync"] = time.monotonic() - started
        self.check_restored(target, expect_files)
        if self.restore_fs == "loop":
            self.drop_fs()
        return s

    def settle(self, seconds):
        """Deletes this round's restored trees, then waits until ext4 no
        longer treats their inodes as recently deleted. Without a journal,
        ext4's inode allocator skips inodes freed in the last 60 s (300 s
        while their table block is dirty) and reads each candidate's inode
        block to find out: a restore right after `rm -rf` of a large tree
        spent most of its time there (10+ s of system time for 20,000
        files), and which tool paid depended on the order, not the tool."""
        if self.restored.exists():
            shutil.rmtree(self.restored)
        subprocess.run(["sync"], check=True)
        if seconds > 0:
            log(f"settling {seconds} s after deleting the restored trees")
            time.sleep(seconds)

    def check_restored(self, root, expect_files):
        files, _ = tree_stats(root)
        if files < expect_files:
            raise RuntimeError(f"restore produced {files} files, expected {expect_files}")

    # Each tool: (name, backup(), restore()) where backup returns (sample, output size).
    def tools(self, expect_files):
        out = self.out

        # With a frame cache (`--no-cache` in `backup create --help`), the
        # first backup of each round reads everything, as a first backup
        # does; the second backups then use what it cached.
        help_text = subprocess.run([str(self.engine), "create", "--help"], capture_output=True,
                                   text=True).stdout
        first_flags = ["--no-cache"] if "--no-cache" in help_text else []

        def ours(codec):
            image = out / f"engine-{codec}.bkp"
            again_image = out / f"engine-{codec}-again.bkp"

            def backup():
                if image.exists():
                    image.unlink()
                s = self.timed([[str(self.engine), "--config", str(self.configs[codec]), "create",
                                 "--output", str(image)] + first_flags])
                return s, image.stat().st_size

            def again():
                if again_image.exists():
                    again_image.unlink()
                s = self.timed([[str(self.engine), "--config", str(self.configs[codec]), "create",
                                 "--output", str(again_image)]])
                again_image.unlink()
                return s

            def restore():
                return self.timed_restore(lambda target: [[
                    str(self.engine), "--config", str(self.configs[codec]), "restore",
                    str(image), "--target", str(target)]], expect_files)
            return backup, restore, again

        def piped(name, compress, decompress, encrypt):
            path = out / name

            def backup():
                stages = self.tar_stages() + [compress]
                if encrypt:
                    stages.append(["age", "-e", "-r", self.recipient])
                s = self.timed(stages, f" > {shq(str(path))}")
                return s, path.stat().st_size

            def restore():
                first = ["age", "-d", "-i", str(self.age_key), str(path)] if encrypt else None
                return self.timed_restore(
                    lambda target: ([first] if first else [])
                    + [decompress + ([] if first else [str(path)])] + [self.untar(target)],
                    expect_files)
            return backup, restore, None

        def restic():
            repo = out / "restic-repo"
            cache = self.work / "restic-cache"

            def backup():
                for d in (repo, cache):
                    if d.exists():
                        shutil.rmtree(d)
                subprocess.run(["restic", "-r", str(repo), "init"], check=True, env=self.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                s = self.timed([["restic", "-r", str(repo), "backup", "--quiet", str(self.dataset)]])
                return s, du(repo)

            def restore():
                return self.timed_restore(lambda target: [[
                    "restic", "-r", str(repo), "restore", "latest", "--quiet",
                    "--target", str(target)]], expect_files)

            def again():
                # Incremental: the first backup's snapshot is the parent.
                return self.timed([["restic", "-r", str(repo), "backup", "--quiet", str(self.dataset)]])
            return backup, restore, again

        def rustic():
            repo = out / "rustic-repo"
            cache = self.work / "rustic-cache"
            base_cmd = ["rustic", "-r", str(repo), "--cache-dir", str(cache), "--no-progress"]

            def backup():
                for d in (repo, cache):
                    if d.exists():
                        shutil.rmtree(d)
                base = base_cmd
                subprocess.run(base + ["init"], check=True, env=self.env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                s = self.timed([base + ["backup", str(self.dataset)]])
                return s, du(repo)

            def restore():
                return self.timed_restore(lambda target: [[
                    "rustic", "-r", str(repo), "--cache-dir", str(cache), "--no-progress",
                    "restore", "latest", str(target)]], expect_files)

            def again():
                return self.timed([base_cmd + ["backup", str(self.dataset)]])
            return backup, restore, again

        peers = []
        if shutil.which("rustic"):
            peers.append(("rustic", *rustic()))
        else:
            log("rustic is not installed (not packaged by Debian): skipped; "
                "`cargo install rustic-rs --locked` or --install-rustic adds it")
        return [
            ("engine gzip-6", *ours("gzip")),
            ("engine zstd-3", *ours("zstd")),
            ("tar | gzip -6", *piped("plain.tar.gz", ["gzip", "-6"], ["gzip", "-dc"], False)),
            ("tar | pigz -p2 -6 | age", *piped("pigz.tar.gz.age", ["pigz", "-p2", "-6"], ["pigz", "-dc"], True)),
            ("tar | zstd -T2 -3 | age", *piped("zstd.tar.zst.age", ["zstd", "-q", "-T2", "-3"],
                                              ["zstd", "-dcq"], True)),
            ("restic", *restic()),
        ] + peers


def shq(s):
    return "'" + s.replace("'", "'\\''") + "'"


def du(path):
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for n in filenames:
            total += os.lstat(os.path.join(dirpath, n)).st_size
    return total


# --------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def summarise(samples, data_bytes):
    rows = {}
    for name, runs in samples.items():
        row = {}
        for phase in ("backup", "restore", "again", "changed"):
            ph = [r[phase] for r in runs if phase in r]
            if not ph:
                continue
            wall = median([p["wall"] for p in ph])
            row[phase] = {
                "wall": wall,
                # Restores: wall time plus the `sync -f` that makes them durable.
                "durable": median([p["wall"] + p.get("sync", 0.0) for p in ph]),
                "sync": median([p.get("sync", 0.0) for p in ph]),
                "mbps": data_bytes / 1e6 / wall if wall else float("nan"),
                "cpu": median([p["cpu"] for p in ph]),
                "rss_mib": median([p["rss_kib"] for p in ph]) / 1024,
                "walls": [p["wall"] for p in ph],
            }
        row["size"] = median([r["size"] for r in runs if "size" in r])
        rows[name] = row
    return rows


OURS = ("engine gzip-6", "engine zstd-3")


def markdown(title, meta, rows, chart_name):
    out = [f"# {title}", ""]
    for k, v in meta.items():
        out.append(f"- **{k}**: {v}")
    out += ["", f"![wall time]({chart_name})", ""]
    out += ["## Backup", "",
            "| tool | wall s (median) | MB/s | CPU s | peak RSS MiB | output | runs (wall s) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        p = row.get("backup")
        if p:
            out.append(f"| {cell(name)} | {p['wall']:.2f} | {p['mbps']:.0f} | {p['cpu']:.2f} | "
                       f"{p['rss_mib']:.1f} | {human(row['size'])} | "
                       f"{', '.join(f'{w:.2f}' for w in p['walls'])} |")
    out += ["", "## Restore", "",
            "| tool | wall s (median) | MB/s | CPU s | peak RSS MiB | then `sync -f` s | restore + sync s "
            "| runs (wall s) |",
            "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, row in rows.items():
        p = row.get("restore")
        if p:
            out.append(f"| {cell(name)} | {p['wall']:.2f} | {p['mbps']:.0f} | {p['cpu']:.2f} | "
                       f"{p['rss_mib']:.1f} | {p['sync']:.2f} | {p['durable']:.2f} | "
                       f"{', '.join(f'{w:.2f}' for w in p['walls'])} |")
    if any(row.get("again") for row in rows.values()):
        out += ["", "## Second backup (the nightly run)", "",
                "Right after the first backup of the same tool: once with the data unchanged, once with 1% "
                "of the files changed (64 bytes each) and the database updated. The engine writes a "
                "standalone full image every time; restic and rustic add an incremental snapshot to the "
                "repository of the first backup.", "",
                "| tool | unchanged wall s (median) | CPU s | peak RSS MiB | 1% changed wall s (median) "
                "| CPU s | peak RSS MiB | runs (wall s: unchanged; changed) |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
        for name, row in rows.items():
            a, c = row.get("again"), row.get("changed")
            if a and c:
                out.append(f"| {cell(name)} | {a['wall']:.2f} | {a['cpu']:.2f} | {a['rss_mib']:.1f} | "
                           f"{c['wall']:.2f} | {c['cpu']:.2f} | {c['rss_mib']:.1f} | "
                           f"{', '.join(f'{w:.2f}' for w in a['walls'])}; "
                           f"{', '.join(f'{w:.2f}' for w in c['walls'])} |")
    measures = (("backup", "wall", "backup"), ("restore", "wall", "restore"),
                ("restore", "durable", "restore + sync"), ("again", "wall", "2nd backup unchanged"),
                ("changed", "wall", "2nd backup 1% changed"))
    out += ["", "## Ratios (peer time ÷ engine time; > 1 means the engine is faster)", "",
            "| peer | " + " | ".join(f"{o} {label}" for o in OURS for _, _, label in measures) + " |",
            "|---|" + "---:|" * (len(measures) * len(OURS))]
    for name, row in rows.items():
        if name in OURS:
            continue
        cells = []
        for o in OURS:
            for phase, key, _ in measures:
                ours = rows.get(o, {}).get(phase)
                peer = row.get(phase)
                cells.append(f"{peer[key] / ours[key]:.2f}×" if ours and peer else "–")
        out.append(f"| {cell(name)} | " + " | ".join(cells) + " |")
    out += [""] + targets(rows)
    out += ["", "Peak RSS of a pipeline is the sum of its processes' peaks (they run at once). "
            "The engine's restore includes making the restored tree durable (one `syncfs` before "
            "the swap) and its backup an fsync of the image; the pipelines, restic and rustic do "
            "neither, hence the \"restore + sync\" column: each restore followed by `sync -f` on the "
            "restored tree, timed separately. The engine's restore is durable as it returns, so its "
            "\"restore\" and \"restore + sync\" differ only by a `sync -f` with nothing left to write.",
            ""]
    return "\n".join(out)


def targets(rows):
    """The issue's targets, recomputed from this run."""
    def ratio(ours, peer, phase, key="wall"):
        o, p = rows.get(ours, {}).get(phase), rows.get(peer, {}).get(phase)
        return p[key] / o[key] if o and p else None

    checks = []
    checks.append(("zstd backup ≥ 1.2× `tar | zstd -T2 -3 | age`",
                   ratio("engine zstd-3", "tar | zstd -T2 -3 | age", "backup"), 1.2))
    checks.append(("zstd backup ≥ 3× restic's first backup", ratio("engine zstd-3", "restic", "backup"), 3.0))
    checks.append(("gzip backup ≥ 2× `tar | pigz -p2 -6 | age`",
                   ratio("engine gzip-6", "tar | pigz -p2 -6 | age", "backup"), 2.0))
    for o in OURS:
        checks.append((f"{o} restore ≥ 1.3× restic restore", ratio(o, "restic", "restore"), 1.3))
        checks.append((f"{o} restore ≥ 1× `age -d | pigz -dc | tar -x`",
                       ratio(o, "tar | pigz -p2 -6 | age", "restore"), 1.0))
    checks.append(("zstd restore ≥ 1× rustic restore", ratio("engine zstd-3", "rustic", "restore"), 1.0))
    # The same restore targets with every tool's restore made durable.
    for o in OURS:
        checks.append((f"{o} restore + sync ≥ 1.3× restic's", ratio(o, "restic", "restore", "durable"), 1.3))
        checks.append((f"{o} restore + sync ≥ 1× `age -d | pigz -dc | tar -x` + sync",
                       ratio(o, "tar | pigz -p2 -6 | age", "restore", "durable"), 1.0))
    checks.append(("zstd restore + sync ≥ 1× rustic's",
                   ratio("engine zstd-3", "rustic", "restore", "durable"), 1.0))
    # The nightly run: no slower than restic's incremental backup when nothing
    # changed, at most 1.5× its time with 1% changed.
    for o in OURS:
        checks.append((f"{o} 2nd backup, unchanged, ≥ 1× restic's incremental",
                       ratio(o, "restic", "again"), 1.0))
        checks.append((f"{o} 2nd backup, 1% changed, ≥ 0.67× restic's (at most 1.5× its time)",
                       ratio(o, "restic", "changed"), 1 / 1.5))
    lines = ["## Targets of the issue, recomputed from this run", "",
             "| target | measured | verdict |", "|---|---:|---|"]
    for what, value, need in checks:
        if value is None:
            lines.append(f"| {cell(what)} | – | not run |")
        else:
            lines.append(f"| {cell(what)} | {value:.2f}× | {'met' if value >= need else 'MISSED'} |")
    for o in OURS:
        for phase, label in (("backup", "backup"), ("restore", "restore"),
                             ("again", "2nd backup unchanged"), ("changed", "2nd backup 1% changed")):
            p = rows.get(o, {}).get(phase)
            if p:
                ok = p["rss_mib"] <= 64
                lines.append(f"| {o} {label} peak RSS ≤ 64 MiB | {p['rss_mib']:.1f} MiB | "
                             f"{'met' if ok else 'MISSED'} |")
    rustic = rows.get("rustic", {}).get("restore")
    ours = rows.get("engine zstd-3", {}).get("restore")
    if rustic and ours:
        ok = ours["rss_mib"] * 10 <= rustic["rss_mib"]
        lines.append(f"| zstd restore memory ≤ 1/10 of rustic's | {ours['rss_mib']:.1f} vs "
                     f"{rustic['rss_mib']:.1f} MiB | {'met' if ok else 'MISSED'} |")
    return lines


def cell(text):
    """A markdown table cell: a literal | would end it."""
    return text.replace("|", "\\|")


def svg_chart(title, rows):
    """Grouped horizontal bars: backup and restore wall time per tool."""
    names = list(rows)
    bar_h, gap, left, width = 14, 10, 190, 460
    top = 40
    height = top + len(names) * (2 * bar_h + gap) + 40
    vmax = max((rows[n][p]["wall"] for n in names for p in ("backup", "restore") if p in rows[n]),
               default=1)
    scale = width / (vmax * 1.1)
    colors = {"backup": "#3b6ea8", "restore": "#e08a2c"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 80}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">{esc(title)} — wall time, '
           f'median (s, lower is better)</text>']
    y = top
    for n in names:
        weight = ' font-weight="bold"' if n in OURS else ""
        out.append(f'<text x="{left - 8}" y="{y + bar_h + 4}" text-anchor="end"{weight}>{esc(n)}</text>')
        for phase in ("backup", "restore"):
            p = rows[n].get(phase)
            if p:
                w = max(1, p["wall"] * scale)
                out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h - 2}" '
                           f'fill="{colors[phase]}"/>')
                out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h - 3}">{p["wall"]:.2f}</text>')
            y += bar_h
        y += gap
    ly = height - 18
    for i, phase in enumerate(("backup", "restore")):
        x = left + i * 110
        out.append(f'<rect x="{x}" y="{ly - 10}" width="12" height="12" fill="{colors[phase]}"/>')
        out.append(f'<text x="{x + 16}" y="{ly}">{phase}</text>')
    out.append("</svg>")
    return "\n".join(out)


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --------------------------------------------------------------------------


def run_rounds(rounds, tools, samples, runner, settle, incremental=True):
    for r in range(rounds):
        if r > 0:
            runner.settle(settle)
        order = tools if r % 2 == 0 else list(reversed(tools))
        for tname, backup, restore, again in order:
            b, size = backup()
            rs = restore()
            sample = {"backup": b, "restore": rs, "size": size}
            note = ""
            if again is not None and incremental:
                sample["again"] = again()
                runner.change_one_percent()
                try:
                    sample["changed"] = again()
                finally:
                    runner.undo_change()
                note = (f", second backup {sample['again']['wall']:.2f}s unchanged, "
                        f"{sample['changed']['wall']:.2f}s with 1% changed")
            samples[tname].append(sample)
            log(f"round {r + 1}/{rounds} {tname}: backup {b['wall']:.2f}s "
                f"({b['rss_kib'] / 1024:.0f} MiB), restore {rs['wall']:.2f}s + sync {rs['sync']:.2f}s "
                f"({rs['rss_kib'] / 1024:.0f} MiB), {human(size)}{note}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--generate", metavar="SIZE", help="generate an appliance dataset of SIZE (e.g. 1GiB)")
    src.add_argument("--dir", type=Path, help="back up this directory as it is")
    src.add_argument("--copy", type=Path, help="copy this tree into the work dir first (e.g. /usr/share)")
    ap.add_argument("--seed", type=int, default=20251122,
                    help="seed of the generated dataset and of the files the 1%% change picks (default %(default)s)")
    ap.add_argument("--no-incremental", action="store_true",
                    help="skip the second backups (unchanged, then 1%% changed) of the engine, restic and rustic")
    ap.add_argument("--rounds", type=int, default=3, help="A/B rounds (default %(default)s)")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/var/tmp")) / "backup-compare",
                    help="scratch directory (default %(default)s); needs ~3× the dataset free")
    ap.add_argument("--name", help="results name (default: from the dataset)")
    ap.add_argument("--only", help="comma-separated tool names to run (default all)")
    ap.add_argument("--no-build", action="store_true", help="use target/release/backup as it is")
    ap.add_argument("--engine", type=Path, help="use this `backup` binary (no build; e.g. a debug build for a smoke run)")
    ap.add_argument("--restore-fs", choices=("auto", "loop", "dir"), default="auto",
                    help="restore into a fresh loop-mounted ext4 per restore (loop; needs root), into new "
                         "directories of the work dir (dir), or loop when possible (auto, the default)")
    ap.add_argument("--settle", type=int, default=65,
                    help="with --restore-fs dir: seconds to wait after deleting restored trees, between "
                         "rounds (default %(default)s)")
    ap.add_argument("--install-rustic", action="store_true",
                    help="cargo install rustic-rs if it is missing (a long build)")
    args = ap.parse_args()

    ensure_tools()
    if args.install_rustic and shutil.which("rustic") is None:
        log("installing rustic: cargo install rustic-rs --locked")
        subprocess.run(["cargo", "install", "rustic-rs", "--locked"], check=True)
    engine = build_engine(args.no_build, args.engine)
    args.work.mkdir(parents=True, exist_ok=True)
    work = args.work.resolve()

    if args.generate:
        size = parse_size(args.generate)
        root = work / f"dataset-{args.generate.lower()}-{args.seed}"
        generate(root, size, args.seed)
        dataset = root / "appliance"
        database = dataset / "var" / "lib" / "gateway" / "internal.sqlite"
        name = args.name or f"appliance-{args.generate.lower()}"
        what = f"generated appliance dataset ({args.generate}, seed {args.seed}: config tree, SQLite, JSON-lines audit logs, random binaries)"
    elif args.copy:
        src_dir = args.copy.resolve()
        dataset = work / f"copy-{src_dir.name}" / src_dir.name
        marker = dataset.parent / ".copied"
        if not marker.exists():
            if dataset.parent.exists():
                shutil.rmtree(dataset.parent)
            dataset.parent.mkdir(parents=True)
            log(f"copying {src_dir} to {dataset}")
            subprocess.run(["cp", "-a", str(src_dir), str(dataset)], check=True)
            marker.write_text(str(src_dir))
        name = args.name or f"copy-of-{str(src_dir).strip('/').replace('/', '-')}"
        what = f"a copy of {src_dir}"
    else:
        dataset = args.dir.resolve()
        name = args.name or f"dir-{dataset.name}"
        what = f"the directory {dataset}"

    if not args.generate:
        database = None
    files, data_bytes = tree_stats(dataset)
    log(f"dataset {dataset}: {files} files, {human(data_bytes)}")
    log("warming the page cache")
    subprocess.run(["tar", "-cf", "/dev/null", "-C", str(dataset.parent), dataset.name], check=True)

    restore_fs = choose_restore_fs(args.restore_fs, work)
    settle = args.settle if restore_fs == "dir" else 0
    runner = Runner(work / f"run-{name}", dataset, engine, restore_fs, data_bytes, files, database, args.seed)
    tools = runner.tools(expect_files=files)
    if args.only:
        keep = {t.strip() for t in args.only.split(",")}
        tools = [t for t in tools if t[0] in keep]
    samples = {t[0]: [] for t in tools}
    started = time.time()
    runner.settle(settle)
    try:
        run_rounds(args.rounds, tools, samples, runner, settle, not args.no_incremental)
    finally:
        runner.drop_fs()
    runner.settle(0)
    rows = summarise(samples, data_bytes)
    meta = {
        "dataset": f"{what}: {files} files, {human(data_bytes)} ({data_bytes / 1e6:.0f} MB)",
        "machine": f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}",
        "restore target": ("a fresh ext4 file system per restore (loop-mounted image, made untimed)"
                           if restore_fs == "loop" else
                           f"a new directory in {work} per restore ({settle} s pause between rounds)"),
        "rounds": f"{args.rounds}, alternating (order reversed every other round); {time.time() - started:.0f} s in all",
        "versions": "; ".join([version_of([str(engine), "--version"]), version_of(["gzip", "--version"]),
                               version_of(["pigz", "--version"]), version_of(["zstd", "--version"]),
                               "age " + version_of(["age", "--version"]), version_of(["restic", "version"])]
                              + ([version_of(["rustic", "--version"])] if shutil.which("rustic") else [])),
        "command": "python3 benches/compare.py " + " ".join(sys.argv[1:]),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    chart = f"{name}.svg"
    (RESULTS / chart).write_text(svg_chart(name, rows))
    (RESULTS / f"{name}.md").write_text(markdown(f"Comparison: {name}", meta, rows, chart))
    (RESULTS / f"{name}.json").write_text(json.dumps({"meta": meta, "samples": samples,
                                                      "data_bytes": data_bytes, "files": files}, indent=1))
    print((RESULTS / f"{name}.md").read_text())
    log(f"wrote {RESULTS / (name + '.md')}, {RESULTS / chart}")


if __name__ == "__main__":
    main()
