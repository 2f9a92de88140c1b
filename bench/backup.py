#!/usr/bin/env python3
"""Backup and restore throughput benchmark: Coffer (FULL, INCREMENTAL, restore) side by side with rclone and restic.

Run by hand from anywhere (Python 3.11, standard library only):

    python3 bench/backup.py                    # 3 nodes x (2 x 256 MiB + 3000 small files), fs and s3
    python3 bench/backup.py --scale 0.25       # a quick run (2 x 64 MiB + 750 small files per node)
    python3 bench/backup.py --target fs        # fs | s3 | both
    python3 bench/backup.py --dataset small    # large (default) | small (1 node, 100000 x 1-4 KiB) | million

What it does:
  1. builds the release binaries (cargo) and installs weed, rclone, grpcurl and restic into
     .tools/bin (scripts/install-tools);
  2. generates a deterministic data set per node under <work>/data/node-N (seeded by node, so no
     content is shared between nodes); it is reused by later runs with the same parameters;
  3. per target: starts weed mini (s3), one coffer-agent per node and a coffer-server on loopback
     ports, registers the cluster and a location, then measures
        rclone      `rclone copy --transfers 8` of every node's data, one rclone per node, run in
                    parallel (as an agent per node would), into a fresh folder on the same disk
                    (fs) or a fresh prefix of the same SeaweedFS bucket (s3);
        restic      `restic backup` of every node's data, one restic per node in parallel, each
                    into a fresh repository of its own next to rclone's copy (init untimed, cache
                    cleared first; fs: a `sync` after it, inside its wall time);
        full        a FULL backup, StartBackup -> run SUCCEEDED;
        incremental an INCREMENTAL backup after 1% of the files (by count) of each node changed;
        unchanged   an INCREMENTAL backup again, nothing changed since the last one;
        stat-floor  `find -printf '%i %s %T@'` over every node's data (the metadata any
                    incremental must read of every file), from the same cold or warm start;
        cli-watch   `cofferctl backup start --incremental --watch`, in table mode and in JSON
                    mode (nothing changed, cache warm): how long after the run's finishTime the
                    command returns;
        restic-incremental
                    `restic backup` again of the same changed data, into the same repositories;
        restore     the data folders emptied, the FULL backup restored onto the same nodes,
                    StartRestore -> run SUCCEEDED, then the restored trees checked against the
                    data set (untimed); they are the data set from then on;
        rclone-down `rclone copy --transfers 8` of rclone's upload back into fresh folders on the
                    data set's disk, one rclone per node in parallel, then the same check;
        restic-restore
                    `restic restore latest` of every repository into fresh folders on the data
                    set's disk, in parallel, then a `sync` (inside its wall time), then the
                    restored trees checked against what restic's last backup saw;
     agents are restarted (same state dir, same port) before each Coffer measurement, so the
     VmHWM read from /proc after the run is the peak of that run alone; the server runs through
     every phase, so its VmHWM after a phase is its peak so far;
  4. prints a table, the targets (PASS/MISS) and a diagnosis (per-node phase timeline, where each
     agent's time went from its `snapshot walked`, `upload timings` and `restored files placed`
     lines, CPU and I/O per process), and writes everything to <work>/results.json.

Logs of every process are kept in <work>/logs/. Nothing in the repository is modified outside
<work> (default bench/out/, git-ignored).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import itertools
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ROOT / ".tools" / "bin"
RELEASE = ROOT / "target" / "release"
MiB = 1 << 20
KiB = 1 << 10
GEN_VERSION = 3  # bump when the generator changes: regenerates cached data sets
ACCESS_KEY = "coffer-bench-key"
SECRET_KEY = "coffer-bench-secret"
BUCKET = "coffer-bench"
CLUSTER = "bench"
RCLONE_REMOTE = "benchs3"
RESTIC_PASSWORD = "coffer-bench-restic"  # restic always encrypts; the key is not what is measured
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL_STATES = {"RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELED"}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mib(n: float) -> float:
    return n / MiB


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------

LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
LETTER_WEIGHTS = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2,
                  2.0, 2.0, 1.9, 1.5, 1.0, 0.8, 0.15, 0.15, 0.1, 0.07]
POOL_BYTES = 8 * MiB


def text_pool(seed: int, node: int) -> bytes:
    """8 MiB of text-like bytes, deterministic per (seed, node): lines of words from a node-own
    Zipf-weighted vocabulary, with numbers and ids mixed in (log/CSV-like)."""
    r = random.Random(f"{seed}/node{node}/text")
    vocab = ["".join(r.choices(LETTERS, LETTER_WEIGHTS, k=r.randint(2, 11))) for _ in range(8000)]
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    words = r.choices(vocab, cum_weights=cum, k=POOL_BYTES // 6 + 1024)
    lines = []
    i = 0
    n = 0
    while n < POOL_BYTES:
        k = r.randint(6, 16)
        line = f"{1700000000 + i * 7},{r.randrange(100000)}," + " ".join(words[i % len(words):i % len(words) + k])
        lines.append(line)
        n += len(line) + 1
        i += k
    return ("\n".join(lines).encode())[:POOL_BYTES]


# --dataset presets: values for the shape knobs a flag does not set. large is the mix the bench
# was built around (big SSTables plus small ones); small and million are the many-small-files
# sets the issues ask for (1 node, so the figures are one agent's and one restic's).
DATASETS = {
    "large": {"nodes": 3, "big_files": 2, "big_mib": 256, "small_files": 3000,
              "small_min_kib": 16, "small_max_kib": 64},
    "small": {"nodes": 1, "big_files": 0, "big_mib": 256, "small_files": 100_000,
              "small_min_kib": 1, "small_max_kib": 4},
    "million": {"nodes": 1, "big_files": 0, "big_mib": 256, "small_files": 1_000_000,
                "small_min_kib": 1, "small_max_kib": 4},
}


def apply_dataset(a: argparse.Namespace) -> None:
    """Fills the shape knobs left unset on the command line from the --dataset preset."""
    for key, value in DATASETS[a.dataset].items():
        if getattr(a, key) is None:
            setattr(a, key, value)


class Params:
    """Shape of the data set (everything the generator depends on)."""

    def __init__(self, a: argparse.Namespace):
        self.seed = a.seed
        self.nodes = a.nodes
        self.big_mib = max(1, round(a.big_mib * a.scale))
        self.big_files = a.big_files
        self.small_files = max(10, round(a.small_files * a.scale))
        self.small_min = a.small_min_kib * KiB
        self.small_max = a.small_max_kib * KiB
        self.change_percent = a.change_percent
        self.append_big = a.append_big

    def shape(self) -> dict:
        return {"gen_version": GEN_VERSION, "seed": self.seed, "nodes": self.nodes,
                "big_files": self.big_files, "big_mib": self.big_mib,
                "small_files": self.small_files, "small_min": self.small_min,
                "small_max": self.small_max}

    @property
    def files_per_node(self) -> int:
        return self.big_files + self.small_files


def compression_setting(text: str) -> dict:
    """A cofferctl-style compression (none, zstd, zstd:LEVEL) as the API's Compression message."""
    if text == "none":
        return {"codec": "COMPRESSION_CODEC_NONE"}
    codec, _, level = text.partition(":")
    if codec != "zstd" or (level and not level.lstrip("-").isdigit()):
        raise SystemExit(f"--compression {text!r}: use none, zstd or zstd:LEVEL")
    return {"codec": "COMPRESSION_CODEC_ZSTD", "level": int(level or 1)}


def small_path(root: Path, i: int) -> Path:
    return root / "tables" / f"t{i // 100:03d}" / f"nb-{i:05d}-big-Data.db"


def small_content(seed: int, node: int, i: int, version: int, pool: bytes, lo: int, hi: int) -> bytes:
    r = random.Random(f"{seed}/node{node}/small{i}/v{version}")
    size = r.randrange(lo, hi + 1)
    if r.random() < 0.5:  # compressible
        off = r.randrange(0, len(pool) - size)
        return pool[off:off + size]
    return r.randbytes(size)


def big_path(root: Path, b: int) -> Path:
    return root / "big" / f"big-{b:02d}-{'text' if b % 2 == 0 else 'random'}-Data.db"


def write_replace(path: Path, data: bytes) -> None:
    """Write a new file and rename it over the old one (a new inode, as databases do)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


GEN_PART_FILES = 100_000  # at most this many small files per generator job


def gen_jobs(shape: dict, dirs: list[Path], workers: int) -> list[tuple]:
    """The generator's jobs: per node, its small files in ranges of whole folders (100 files
    each), the first range with the node's big files. A node with few files is one job (each job
    builds the node's 8 MiB text pool, 0.5 s); one with very many (the million preset is a single
    node) is split so that every core writes files and no job holds more than GEN_PART_FILES."""
    jobs = []
    n = shape["small_files"]
    for node, root in enumerate(dirs):
        parts = 1 if n < 20_000 else max(-(-workers // len(dirs)), -(-n // GEN_PART_FILES))
        step = max(100, -(-n // parts // 100) * 100)
        ranges = [(lo, min(lo + step, n)) for lo in range(0, n, step)] or [(0, 0)]
        jobs += [(shape, node, str(root), lo, hi, k == 0) for k, (lo, hi) in enumerate(ranges)]
    return jobs


def gen_node(job: tuple) -> tuple[int, int]:
    """Writes one generator job (see gen_jobs) into an existing node folder; returns the files
    and bytes it wrote. The content of a file depends only on (seed, node, file), not on how the
    node was split into jobs."""
    shape, node, root, lo, hi, with_big = job
    root = Path(root)
    seed = shape["seed"]
    pool = text_pool(seed, node)
    pv = memoryview(pool)
    files = total = 0
    chunks = shape["big_mib"]
    for b in range(shape["big_files"] if with_big else 0):
        if b % 2 == 0:  # text-like: 1 MiB slices of the pool at random offsets
            r = random.Random(f"{seed}/node{node}/big-text{b}")
            with open(big_path(root, b), "wb") as f:
                for _ in range(chunks):
                    off = r.randrange(0, len(pool) - MiB)
                    f.write(pv[off:off + MiB])
        else:  # random
            r = random.Random(f"{seed}/node{node}/big-random{b}")
            with open(big_path(root, b), "wb") as f:
                for _ in range(chunks):
                    f.write(r.randbytes(MiB))
        files += 1
        total += chunks * MiB
    for i in range(lo, hi):
        p = small_path(root, i)
        if i % 100 == 0:  # ranges start at a folder's first file
            p.parent.mkdir(parents=True, exist_ok=True)
        data = small_content(seed, node, i, 0, pool, shape["small_min"], shape["small_max"])
        with open(p, "wb") as f:
            f.write(data)
        files += 1
        total += len(data)
    return files, total


def dataset_size(root: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root and ".coffer-snapshots" in dirnames:
            dirnames.remove(".coffer-snapshots")
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


AGENT_FOLDERS = (".coffer-snapshots", ".coffer-restore")  # the agent's own folders in a data path


def file_digest(path: str) -> tuple[int, str]:
    """Size and BLAKE2b-128 of a file (the benchmark's own check, independent of Coffer's BLAKE3)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        return size, hashlib.file_digest(f, lambda: hashlib.blake2b(digest_size=16)).hexdigest()


def list_files(root: str) -> list[str]:
    """Relative path of every file under root (the agent's snapshot folder left out; a leftover
    restore staging folder is listed, so it shows up as extra files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == root and ".coffer-snapshots" in dirnames:
            dirnames.remove(".coffer-snapshots")
        out += [os.path.relpath(os.path.join(dirpath, name), root) for name in filenames]
    return out


def hash_files(job: tuple[str, list[str]]) -> list[list]:
    root, rels = job
    return [list(file_digest(os.path.join(root, rel))) for rel in rels]


HASH_BATCH = 2000  # files per hashing job


def stat_tree(root: Path) -> dict:
    """relative path -> [mode, mtime_ns] of every file under root (agent folders left out)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in AGENT_FOLDERS]
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = [st.st_mode, st.st_mtime_ns]
    return out


def hash_trees(roots: list[Path]) -> list[dict]:
    """Per root: relative path -> [size, hash] of every file under it. The files are hashed in
    batches over every core, not a tree per core: the small and million presets are one node."""
    listings = [list_files(str(r)) for r in roots]
    jobs = [(str(r), rels[i:i + HASH_BATCH]) for r, rels in zip(roots, listings)
            for i in range(0, len(rels), HASH_BATCH)]
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    with ProcessPoolExecutor(max_workers=workers) as ex:
        digests = iter(ex.map(hash_files, jobs))
        out = []
        for rels in listings:
            tree: dict = {}
            for i in range(0, len(rels), HASH_BATCH):
                tree.update(zip(rels[i:i + HASH_BATCH], next(digests)))
            out.append(tree)
    return out


def compare_trees(expected: list[dict], roots: list[Path]) -> dict:
    """Hashes the trees under roots and compares them with the expected [size, hash] per path:
    the same set of files, each with the same size and content."""
    t0 = time.monotonic()
    got = hash_trees(roots)
    res: dict = {"files": 0, "bytes": 0, "missing": 0, "extra": 0, "size_mismatch": 0,
                 "content_mismatch": 0, "examples": []}
    for root, exp, have in zip(roots, expected, got):
        for rel, (size, digest) in have.items():
            res["files"] += 1
            res["bytes"] += size
            e = exp.get(rel)
            kind = ("extra" if e is None else "size_mismatch" if e[0] != size
                    else "content_mismatch" if e[1] != digest else None)
            if kind:
                res[kind] += 1
                if len(res["examples"]) < 5:
                    res["examples"].append(f"{kind}: {root / rel}")
        for rel in exp.keys() - have.keys():
            res["missing"] += 1
            if len(res["examples"]) < 5:
                res["examples"].append(f"missing: {root / rel}")
    res["ok"] = not any(res[k] for k in ("missing", "extra", "size_mismatch", "content_mismatch"))
    res["hash_s"] = round(time.monotonic() - t0, 2)
    return res


def compare_stats(expected: list[dict], roots: list[Path]) -> dict:
    """Modes and modification times of the files under roots against expected (as at backup)."""
    res = {"mode_mismatch": 0, "mtime_mismatch": 0, "examples": []}
    for root, exp in zip(roots, expected):
        for rel, (mode, mtime_ns) in stat_tree(root).items():
            e = exp.get(rel)
            if e is None:
                continue
            for i, key, a, b in ((0, "mode_mismatch", e[0], mode), (1, "mtime_mismatch", e[1], mtime_ns)):
                if a != b:
                    res[key] += 1
                    if len(res["examples"]) < 3:
                        res["examples"].append(f"{key}: {root / rel}: {a if i else oct(a)} at backup, "
                                               f"{b if i else oct(b)} restored")
    return res


class Trash:
    """Where the bench puts what it clears while it measures, emptied when it exits.

    ext4 without a journal (this kind of machine's root filesystem) refuses to reuse an inode
    deleted less than 60 s ago (360 s while its inode table block is dirty: RECENTCY_MIN plus
    RECENTCY_DIRTY in fs/ext4/ialloc.c): each file created
    then scans past every recently freed inode of its block group, so creating thousands of files
    right after deleting thousands costs seconds of CPU (quadratic; seen: 9000 files of 40 KiB in
    0.5 s to 2 s of system time depending on how much was deleted before, and a full backup or
    an rclone copy 40% slower). A measured phase that followed a deletion (the restore after
    emptying the data folders, a backup after the last run's cleanup) paid for it and the phase
    before it did not. So nothing is deleted while a run measures: what it clears is renamed into
    <work>/trash, emptied when the run ends; and every measured phase starts at least SETTLE_S
    after the last real deletion (360 s, as writing new inodes next to the freed ones dirties
    their inode table blocks again; 305 s was not enough: a full backup 318 s after a clean-up
    still spent 17% of its CPU scanning freed inodes), which only makes a run started within six
    minutes of the previous one wait."""

    SETTLE_S = 370.0

    def __init__(self, work: Path):
        self.root = work / "trash"
        # When files were last deleted, kept across runs: a run started right after another
        # must wait for that one's clean-up too.
        self.stamp = work / "trash.emptied"
        try:
            self.last_delete = float(self.stamp.read_text())
        except (OSError, ValueError):
            self.last_delete = 0.0
        self._n = 0

    def _deleted(self) -> None:
        os.sync()
        self.last_delete = time.time()
        try:
            self.stamp.write_text(f"{self.last_delete}\n")
        except OSError:
            pass

    def discard(self, path: Path) -> None:
        if not os.path.lexists(path):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self._n += 1
        try:
            os.rename(path, self.root / f"{os.getpid()}-{self._n}-{Path(path).name}")
        except OSError:  # another filesystem (--fs-dest): delete, and let the next phase wait
            shutil.rmtree(path, ignore_errors=True)
            self._deleted()

    def empty(self) -> None:
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
            self._deleted()

    def settle(self) -> None:
        wait = self.SETTLE_S - (time.time() - self.last_delete)
        if wait > 0:
            log(f"waiting {wait:.0f} s: files were deleted less than {self.SETTLE_S:.0f} s ago "
                f"(see Trash in bench/backup.py)")
            time.sleep(wait)


class Dataset:
    def __init__(self, work: Path, params: Params, trash: Trash):
        self.params = params
        self.trash = trash
        self.root = work / "data"
        self.state_path = self.root / "dataset.json"
        self.hashes_path = self.root / "hashes.json"
        self.hashes: list[dict] = []  # per node: relative path -> [size, BLAKE2b-128]
        self.node_dirs = [self.root / f"node-{n}" for n in range(params.nodes)]
        # per node: relative path -> [size, BLAKE2b-128] of the files mutate() changed, as they
        # are until undo_mutate(): what a restore of a backup taken in between must give back
        self.changed: list[dict] = [{} for _ in self.node_dirs]
        self.files = 0
        self.bytes = 0
        self._pools: dict[int, bytes] = {}

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _save(self, clean: bool) -> None:
        self.state_path.write_text(json.dumps({"shape": self.params.shape(), "clean": clean,
                                               "files": self.files, "bytes": self.bytes}, indent=1))

    def ensure(self, regen: bool) -> None:
        st = self._state()
        if (not regen and st and st.get("shape") == self.params.shape() and st.get("clean")
                and all(d.is_dir() for d in self.node_dirs)):
            self.files, self.bytes = st["files"], st["bytes"]
            log(f"data set: reusing {self.root} ({self.files} files, {mib(self.bytes):.0f} MiB)")
            self._load_hashes()
            return
        self.trash.discard(self.root)
        self.root.mkdir(parents=True)
        shape = self.params.shape()
        log(f"data set: generating {self.params.nodes} nodes x ({shape['big_files']} x {shape['big_mib']} MiB + "
            f"{shape['small_files']} x {shape['small_min'] // KiB}-{shape['small_max'] // KiB} KiB)")
        t0 = time.monotonic()
        for d in self.node_dirs:
            (d / "big").mkdir(parents=True)
        jobs = gen_jobs(shape, self.node_dirs, os.cpu_count() or 1)
        workers = max(1, min(len(jobs), os.cpu_count() or 1))
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(gen_node, jobs))
        self.files = sum(r[0] for r in results)
        self.bytes = sum(r[1] for r in results)
        os.sync()
        dt = time.monotonic() - t0
        log(f"data set: {self.files} files, {mib(self.bytes):.0f} MiB in {dt:.1f} s "
            f"({mib(self.bytes) / dt:.0f} MiB/s, synced)")
        self._save(clean=True)
        self._load_hashes()

    def _load_hashes(self) -> None:
        """The size and content hash of every generated file, to check restores against; computed
        once per data set and kept in hashes.json."""
        try:
            st = json.loads(self.hashes_path.read_text())
            if st.get("shape") == self.params.shape() and len(st.get("nodes", [])) == len(self.node_dirs):
                self.hashes = st["nodes"]
                return
        except (OSError, ValueError):
            pass
        t0 = time.monotonic()
        self.hashes = hash_trees(self.node_dirs)
        n = sum(len(h) for h in self.hashes)
        size = sum(v[0] for h in self.hashes for v in h.values())
        if (n, size) != (self.files, self.bytes):
            raise BenchError(f"data set holds {n} files / {size} bytes, dataset.json says "
                             f"{self.files} / {self.bytes}: use --regen")
        self.hashes_path.write_text(json.dumps({"shape": self.params.shape(), "nodes": self.hashes}))
        log(f"data set: hashed {n} files in {time.monotonic() - t0:.1f} s (BLAKE2b, to check restores against)")

    def wipe(self) -> None:
        """Empties every node folder (the folders themselves stay): a restore's empty target. The
        data set is marked not clean until verify_restored() finds it whole again."""
        self._save(clean=False)
        for d in self.node_dirs:
            d.mkdir(parents=True, exist_ok=True)
            for entry in os.scandir(d):
                self.trash.discard(Path(entry.path))
        os.sync()

    def verify_restored(self) -> dict:
        """Compares the node folders with the generated data set (file set, sizes, content); marks
        the data set clean again when they match."""
        res = compare_trees(self.hashes, self.node_dirs)
        if res["ok"]:
            self._save(clean=True)
        return res

    def pool(self, node: int) -> bytes:
        if node not in self._pools:
            self._pools[node] = text_pool(self.params.seed, node)
        return self._pools[node]

    def change_plan(self, node: int) -> dict:
        p = self.params
        count = max(1, round(p.files_per_node * p.change_percent / 100))
        r = random.Random(f"{p.seed}/node{node}/change")
        n_small = count - 1 if p.append_big and p.big_files else count
        return {"small": sorted(r.sample(range(p.small_files), max(0, n_small))),
                "append_big": p.append_big and p.big_files > 0}

    def mutate(self) -> dict:
        """Change 1% of each node's files (by count): rewrite small files with new content
        (new file renamed over the old one) and, with --append-big, append 1 MiB to the big text
        file. Returns what changed."""
        self._save(clean=False)
        p = self.params
        changed_files = changed_file_bytes = written = 0
        self.changed = [{} for _ in self.node_dirs]
        for n, root in enumerate(self.node_dirs):
            plan = self.change_plan(n)
            for i in plan["small"]:
                data = small_content(p.seed, n, i, 1, self.pool(n), p.small_min, p.small_max)
                path = small_path(root, i)
                write_replace(path, data)
                self.changed[n][str(path.relative_to(root))] = [
                    len(data), hashlib.blake2b(data, digest_size=16).hexdigest()]
                changed_files += 1
                changed_file_bytes += len(data)
                written += len(data)
            if plan["append_big"]:
                big = big_path(root, 0)
                r = random.Random(f"{p.seed}/node{n}/append")
                off = r.randrange(0, len(self.pool(n)) - MiB)
                with open(big, "ab") as f:
                    f.write(self.pool(n)[off:off + MiB])
                self.changed[n][str(big.relative_to(root))] = list(file_digest(str(big)))
                changed_files += 1
                changed_file_bytes += big.stat().st_size
                written += MiB
        os.sync()
        files, size = 0, 0
        for d in self.node_dirs:
            f, s = dataset_size(d)
            files += f
            size += s
        return {"changed_files": changed_files, "files": files,
                "changed_percent": 100 * changed_files / files,
                "bytes_written": written, "changed_file_bytes": changed_file_bytes,
                "dataset_bytes_after": size}

    def hashes_now(self) -> list[dict]:
        """[size, hash] per file of the data set as it is: the generated one, with mutate()'s
        changes while they last."""
        if not any(self.changed):
            return self.hashes
        return [{**h, **c} for h, c in zip(self.hashes, self.changed)]

    def undo_mutate(self) -> None:
        """Undo mutate(): the data set is the generated one again (reusable by the next target
        and the next run)."""
        p = self.params
        self.changed = [{} for _ in self.node_dirs]
        for n, root in enumerate(self.node_dirs):
            plan = self.change_plan(n)
            for i in plan["small"]:
                write_replace(small_path(root, i),
                              small_content(p.seed, n, i, 0, self.pool(n), p.small_min, p.small_max))
            if plan["append_big"]:
                os.truncate(big_path(root, 0), p.big_mib * MiB)
        os.sync()
        files = size = 0
        for d in self.node_dirs:
            f, s = dataset_size(d)
            files += f
            size += s
        if (files, size) != (self.files, self.bytes):
            raise BenchError(f"data set undo_mutate: {files} files / {size} bytes, expected "
                             f"{self.files} / {self.bytes}")
        self._save(clean=True)


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen, log_path: Path):
        self.name = name
        self.popen = popen
        self.pid = popen.pid
        self.log_path = log_path
        self.address: str | None = None

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


class Procs:
    """Every child process this benchmark starts, stopped in stop()/stop_all()."""

    def __init__(self):
        self.items: list[Proc] = []
        self.lock = threading.Lock()

    def start(self, name: str, argv: list[str], log_path: Path, env: dict | None = None,
              announce: str | None = None, timeout: float = 60) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab", buffering=0)
        logf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                 stdout=subprocess.PIPE if announce else logf,
                                 stderr=logf, env=env, start_new_session=True, cwd=ROOT)
        proc = Proc(name, popen, log_path)
        with self.lock:
            self.items.append(proc)
        if not announce:
            logf.close()
            return proc
        lines: queue.Queue = queue.Queue()
        pattern = re.compile(announce)

        def drain():  # keeps reading stdout for the life of the process
            for raw in popen.stdout:
                logf.write(raw)
                m = pattern.search(raw.decode(errors="replace"))
                if m:
                    lines.put(m.group(1))
            logf.close()
            lines.put(None)

        threading.Thread(target=drain, daemon=True, name=f"drain-{name}").start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = lines.get(timeout=0.2)
            except queue.Empty:
                got = ""
            if got:
                proc.address = got
                return proc
            if got is None or not proc.alive() or time.monotonic() > deadline:
                self.stop(proc)
                raise BenchError(f"{name} did not announce its address "
                                 f"(exit {popen.returncode}); log {log_path}:\n{proc.log_tail()}")

    def stop(self, proc: Proc, timeout: float = 15) -> None:
        if proc.alive():
            try:
                # Under strace or heaptrack (--strace-agent, --heaptrack-agent): stop the traced
                # program, the tracer then writes its summary and exits by itself.
                targets = [proc.pid]
                if Path(proc.popen.args[0]).name in ("strace", "heaptrack"):
                    kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
                    targets = [int(k) for k in kids] or targets
                for pid in targets:
                    os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.popen.wait(5)
        with self.lock:
            if proc in self.items:
                self.items.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.items)):
            try:
                self.stop(proc)
            except Exception as e:  # keep stopping the others
                print(f"warning: stopping {proc.name} (pid {proc.pid}): {e}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# /proc sampling
# --------------------------------------------------------------------------------------------

def proc_stat(pid: int) -> dict | None:
    """utime, stime (ticks), minflt, majflt and starttime of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        comm = text[text.index("(") + 1:text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        return {"comm": comm, "utime": int(fields[11]), "stime": int(fields[12]),
                "minflt": int(fields[7]), "majflt": int(fields[9]), "start": int(fields[19])}
    except (OSError, IndexError, ValueError):
        return None


def proc_cpu_ticks(pid: int) -> int | None:
    st = proc_stat(pid)
    return st["utime"] + st["stime"] if st else None


def all_procs() -> dict:
    """(pid, starttime) -> stat of every process on the machine (kernel threads included)."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                out[(int(entry), st["start"])] = st
    return out


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_io(pid: int) -> dict:
    out = {}
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                k, v = line.split(":")
                out[k] = int(v)
    except (OSError, ValueError):
        pass
    return out


def system_cpu() -> list[int]:
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:]]


def disk_sectors() -> tuple[int, int]:
    """Sectors read and written over whole disks (not partitions) from /proc/diskstats."""
    rd = wr = 0
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                p = line.split()
                name = p[2]
                if re.fullmatch(r"(sd[a-z]+|vd[a-z]+|xvd[a-z]+|nvme\d+n\d+)", name):
                    rd += int(p[5])
                    wr += int(p[9])
    except OSError:
        pass
    return rd, wr


class Sampler:
    """Watches the tracked processes during a phase: a CPU% timeline (every `interval`), peak
    RSS, and deltas of CPU time and /proc/<pid>/io between begin() and end()."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.tracked: dict[str, int] = {}
        self.lock = threading.Lock()
        self.active = False
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="sampler")
        self.thread.start()

    def track(self, name: str, pid: int) -> None:
        with self.lock:
            self.tracked[name] = pid

    def untrack(self, name: str) -> None:
        with self.lock:
            self.tracked.pop(name, None)

    def begin(self) -> None:
        with self.lock:
            tracked = dict(self.tracked)
            self.t0 = time.monotonic()
            self.base_cpu = {n: proc_cpu_ticks(p) for n, p in tracked.items()}
            self.base_stat = {n: proc_stat(p) for n, p in tracked.items()}
            self.base_all = all_procs()
            self.base_io = {n: proc_io(p) for n, p in tracked.items()}
            self.base_sys = system_cpu()
            self.base_disk = disk_sectors()
            self.timeline: list[dict] = []
            self.peak_rss: dict[str, int] = {}
            self.last_cpu = dict(self.base_cpu)
            self.last_t = self.t0
            self.last_sys = self.base_sys
            self.active = True

    def _sample(self) -> None:
        with self.lock:
            if not self.active:
                return
            now = time.monotonic()
            dt = now - self.last_t
            if dt <= 0:
                return
            sysnow = system_cpu()
            d = [a - b for a, b in zip(sysnow, self.last_sys)]
            tot = sum(d) or 1
            point = {"t": round(now - self.t0, 2),
                     "machine_busy_pct": round(100 * (tot - d[3] - d[4]) / tot * (os.cpu_count() or 1), 0),
                     "iowait_pct": round(100 * d[4] / tot * (os.cpu_count() or 1), 0)}
            for name, pid in self.tracked.items():
                ticks = proc_cpu_ticks(pid)
                rss = proc_status_kib(pid, "VmRSS")
                if rss is not None:
                    self.peak_rss[name] = max(self.peak_rss.get(name, 0), rss)
                prev = self.last_cpu.get(name)
                if ticks is not None and prev is not None:
                    point[name] = round(100 * (ticks - prev) / CLK_TCK / dt, 0)
                if ticks is not None:
                    self.last_cpu[name] = ticks
            self.timeline.append(point)
            self.last_t = now
            self.last_sys = sysnow

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self._sample()
            except Exception:
                pass

    def end(self) -> dict:
        self._sample()
        with self.lock:
            self.active = False
            wall = time.monotonic() - self.t0
            procs = {}
            for name, pid in self.tracked.items():
                ticks = proc_cpu_ticks(pid)
                base = self.base_cpu.get(name)
                io_now = proc_io(pid)
                io_base = self.base_io.get(name, {})
                entry = {"pid": pid}
                if ticks is not None and base is not None:
                    cpu_s = (ticks - base) / CLK_TCK
                    entry["cpu_s"] = round(cpu_s, 2)
                    entry["cpu_pct"] = round(100 * cpu_s / wall, 1) if wall > 0 else 0
                st, st0 = proc_stat(pid), self.base_stat.get(name)
                if st and st0:
                    entry["user_s"] = round((st["utime"] - st0["utime"]) / CLK_TCK, 2)
                    entry["sys_s"] = round((st["stime"] - st0["stime"]) / CLK_TCK, 2)
                    entry["minflt"] = st["minflt"] - st0["minflt"]
                for k in ("rchar", "wchar", "read_bytes", "write_bytes"):
                    if k in io_now and k in io_base:
                        entry[k + "_mib"] = round(mib(io_now[k] - io_base[k]), 1)
                if name in self.peak_rss:
                    entry["peak_rss_sampled_mib"] = round(self.peak_rss[name] / 1024, 1)
                procs[name] = entry
            sysnow = system_cpu()
            d = [a - b for a, b in zip(sysnow, self.base_sys)]
            tot = sum(d) or 1
            ncpu = os.cpu_count() or 1
            machine = {"user_pct": round(100 * (d[0] + d[1]) / tot, 1),
                       "system_pct": round(100 * (d[2] + d[5] + d[6]) / tot, 1),
                       "iowait_pct": round(100 * d[4] / tot, 1),
                       "idle_pct": round(100 * d[3] / tot, 1),
                       # time the hypervisor ran something else on our virtual CPUs
                       "steal_pct": round(100 * d[7] / tot, 1) if len(d) > 7 else 0.0,
                       "cores": ncpu,
                       "busy_core_s": round((tot - d[3] - d[4]) / CLK_TCK, 2)}
            # top CPU consumers of the whole machine over the phase (processes alive at the end)
            now_all = all_procs()
            top = []
            for key, st in now_all.items():
                st0 = self.base_all.get(key, {"utime": 0, "stime": 0})
                ticks = st["utime"] + st["stime"] - st0["utime"] - st0["stime"]
                if ticks > 0:
                    top.append((ticks, f"{st['comm']}[{key[0]}]"))
            top.sort(reverse=True)
            machine["top_cpu"] = [{"proc": n, "cpu_s": round(t / CLK_TCK, 2)} for t, n in top[:8]]
            disk = disk_sectors()
            machine["disk_read_mib"] = round((disk[0] - self.base_disk[0]) * 512 / MiB, 1)
            machine["disk_written_mib"] = round((disk[1] - self.base_disk[1]) * 512 / MiB, 1)
            return {"wall_s": round(wall, 3), "processes": procs, "machine": machine,
                    "timeline": self.timeline}

    def close(self) -> None:
        self.stop_event.set()


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def parse_ts(text: str | None) -> float | None:
    """RFC 3339 UTC timestamp (as grpcurl and the logs print them) -> seconds since the epoch."""
    if not text:
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not m:
        return None
    base = float(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")))
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)


ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)\s+(\w+)\s+(.*)$")


BACKUP_MARKS = {"snapshot created": "snapshot_created", "upload finished": "upload_finished",
                "snapshot removed": "snapshot_removed"}
RESTORE_MARKS = {"restored files placed": "files_placed", "restore finished": "restore_finished",
                 "restore failed": "restore_failed"}


# The agent's lines that say where a run's time went, and the prefix their `*_ms` fields get.
TIMING_LINES = {"snapshot walked": "snapshot", "upload timings": "upload",
                "restored files placed": "restore"}
TIMING_FIELD = re.compile(r"\b(\w+)_ms=(\d+)")


def agent_log_summary(path: Path, tag: str, created: float | None, marks: dict = BACKUP_MARKS,
                      end: str = "snapshot removed") -> dict:
    """From an agent's log: when (seconds after the run was created) the agent logged its
    milestones for the run (the run id is the snapshot tag of a backup and a field of the restore
    span), where its time went (the `*_ms` fields of its timing lines), and the WARN/ERROR lines
    it logged from the run's first line to its `end` line, with the most frequent one."""
    out: dict = {"warn_lines": 0, "error_lines": 0}
    inside = False
    kinds: dict[str, int] = {}
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return out
    for raw in lines:
        m = LOG_LINE.match(ANSI.sub("", raw))
        if not m:
            continue
        ts, level, msg = parse_ts(m.group(1)), m.group(2), m.group(3)
        if tag in msg:
            inside = True
            for needle, key in marks.items():
                if needle in msg and created is not None and ts is not None:
                    out[key] = round(ts - created, 3)
            for needle, prefix in TIMING_LINES.items():
                if needle in msg:
                    for field, ms in TIMING_FIELD.findall(msg):
                        out.setdefault("timings_ms", {})[f"{prefix} {field}"] = int(ms)
        if inside and level in ("WARN", "ERROR"):
            out["warn_lines" if level == "WARN" else "error_lines"] += 1
            kind = re.sub(r"[0-9a-f]{16,}|/[^ :]+", "…", msg)[:140]
            kinds[kind] = kinds.get(kind, 0) + 1
        if tag in msg and end in msg:
            inside = False
    if kinds:
        kind, n = max(kinds.items(), key=lambda kv: kv[1])
        out["most_frequent_warning"] = f"{n} x {kind}"
    return out


def run_cmd(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def dir_bytes(path: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


def rclone_env(s3_port: int | None) -> dict:
    env = dict(os.environ)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if s3_port:
        p = f"RCLONE_CONFIG_{RCLONE_REMOTE.upper()}_"
        env.update({p + "TYPE": "s3", p + "PROVIDER": "SeaweedFS", p + "ACCESS_KEY_ID": ACCESS_KEY,
                    p + "SECRET_ACCESS_KEY": SECRET_KEY, p + "ENDPOINT": f"http://127.0.0.1:{s3_port}",
                    p + "REGION": "us-east-1", p + "FORCE_PATH_STYLE": "true"})
    return env


# The table's rows in order (Coffer, then what it is compared with), the restores among them, and
# the restic row each Coffer row is compared with.
ROW_ORDER = ("full", "incremental", "unchanged", "rclone", "restic", "restic-incremental", "restore",
             "rclone-down", "restic-restore")
RESTORE_PHASES = {"restore", "rclone-down", "restic-restore"}
RESTIC_BASE = {"full": "restic", "incremental": "restic-incremental", "restore": "restic-restore"}


def phase_ok(r: dict) -> bool:
    """A Coffer run that succeeded, or an rclone/restic phase that did not fail (they carry a
    state only when they failed)."""
    return r.get("state", "RUN_STATE_SUCCEEDED") == "RUN_STATE_SUCCEEDED"


def ratio_of(r: dict, base: dict | None) -> float | None:
    """r's throughput over base's, when both succeeded."""
    if not (base and phase_ok(r) and phase_ok(base) and base.get("mib_per_s")):
        return None
    return r["mib_per_s"] / base["mib_per_s"]


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work).resolve()
        self.logs = self.work / "logs"
        self.params = Params(args)
        self.trash = Trash(self.work)
        self.data = Dataset(self.work, self.params, self.trash)
        self.procs = Procs()
        self.sampler = Sampler(args.sample_interval)
        self.weed: Proc | None = None
        self.s3_port: int | None = None
        self.results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "targets": {}}
        self.rows: list[dict] = []

    # ---- setup ---------------------------------------------------------------------------

    def build(self) -> None:
        if self.args.no_build:
            log("build: skipped (--no-build)")
        else:
            log("build: cargo build --release -p coffer-server -p coffer-agent -p coffer-client")
            run_cmd(["cargo", "build", "--release", "-p", "coffer-server", "-p", "coffer-agent",
                     "-p", "coffer-client"], cwd=ROOT)
        for b in ("coffer-server", "coffer-agent"):
            if not (RELEASE / b).is_file():
                raise BenchError(f"{RELEASE / b} missing (build failed?)")
        tools = ["grpcurl", "seaweedfs", "rclone"] + ([] if self.args.no_restic else ["restic"])
        log(f"tools: scripts/install-tools {' '.join(tools)}")
        run_cmd([str(ROOT / "scripts" / "install-tools"), *tools])
        self.results["versions"] = {
            "rclone": subprocess.run([str(TOOLS / "rclone"), "version"], capture_output=True,
                                     text=True).stdout.splitlines()[0],
            "restic": None if self.args.no_restic else subprocess.run(
                [str(TOOLS / "restic"), "version"], capture_output=True, text=True).stdout.strip(),
            "weed": subprocess.run([str(TOOLS / "weed"), "version"], capture_output=True,
                                   text=True).stdout.strip(),
            "coffer-agent": subprocess.run([str(RELEASE / "coffer-agent"), "--version"],
                                           capture_output=True, text=True).stdout.strip(),
            "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True, cwd=ROOT).stdout.strip()
                   + (" (dirty tree)" if subprocess.run(["git", "status", "--porcelain"],
                                                        capture_output=True, text=True, cwd=ROOT).stdout.strip() else ""),
        }

    def check_space(self) -> None:
        shape = self.params
        # a small file takes whole 4 KiB blocks: 1-4 KiB files take 4 KiB each on disk
        small = -(-(shape.small_min + shape.small_max) // 2 // 4096) * 4096
        need = shape.nodes * (shape.big_files * shape.big_mib * MiB + shape.small_files * small)
        free = shutil.disk_usage(self.work).free
        # data set + rclone copy + coffer location + rclone's download (+ margin), the data set
        # may already exist; a restore stages a node's files next to nothing (the folder is empty)
        # (everything cleared during the run stays in the trash until the end); restic adds its
        # repositories and its restored copy
        factor = 5.5 if not self.args.no_restore else 3.5
        if not self.args.no_restic:
            factor += 1.0 if self.args.no_restore else 2.0
        if free < factor * need and self.trash.root.exists():
            log(f"{mib(free):.0f} MiB free: emptying {self.trash.root} (earlier runs' leftovers)")
            self.trash.empty()
            free = shutil.disk_usage(self.work).free
        if free < factor * need:
            raise BenchError(f"{mib(free):.0f} MiB free under {self.work}, the run needs about "
                             f"{mib(factor * need):.0f} MiB (use --scale or --work elsewhere)")

    def start_weed(self) -> None:
        d = self.work / "run" / "weed"
        self.trash.discard(d)
        (d / "data").mkdir(parents=True)
        creds = d / "s3.json"
        creds.write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = free_ports(10)
        argv = [str(TOOLS / "weed"), "mini", f"-dir={d / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
                "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={creds}", f"-bucket={BUCKET}",
                f"-s3.port={ports[0]}", f"-s3.port.grpc={ports[1]}", f"-master.port={ports[2]}",
                f"-master.port.grpc={ports[3]}", f"-volume.port={ports[4]}",
                f"-volume.port.grpc={ports[5]}", f"-filer.port={ports[6]}",
                f"-filer.port.grpc={ports[7]}", f"-admin.port={ports[8]}",
                f"-admin.port.grpc={ports[9]}", f"-filer.localSocket={d / 'filer.sock'}",
                f"-s3.localSocket={d / 's3.sock'}"]
        log(f"seaweedfs: weed mini, S3 on 127.0.0.1:{ports[0]}")
        self.weed = self.procs.start("weed", argv, self.logs / "weed.log")
        self.s3_port = ports[0]
        self.sampler.track("weed", self.weed.pid)
        env = rclone_env(self.s3_port)
        deadline = time.monotonic() + 90
        last = ""
        while time.monotonic() < deadline:
            if not self.weed.alive():
                raise BenchError(f"weed mini exited; log {self.weed.log_path}:\n{self.weed.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.s3_port), timeout=1).close()
                p = subprocess.run([str(TOOLS / "rclone"), "lsf", f"{RCLONE_REMOTE}:{BUCKET}",
                                    "--retries", "1", "--low-level-retries", "1",
                                    "--contimeout", "2s", "--timeout", "5s"],
                                   capture_output=True, text=True, env=env, timeout=20)
                if p.returncode == 0:
                    log("seaweedfs: bucket answers")
                    return
                last = p.stderr.strip()[-300:]
            except (OSError, subprocess.TimeoutExpired) as e:
                last = str(e)
            time.sleep(0.5)
        raise BenchError(f"SeaweedFS S3 not ready after 90 s: {last}\n{self.weed.log_tail()}")

    # ---- Coffer processes and API ---------------------------------------------------------

    def agent_env(self) -> dict:
        env = dict(os.environ)
        env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        return env

    def start_agent(self, t: dict, n: int) -> Proc:
        port = t["agent_ports"][n]
        # The agent opens only the storage its configuration names: the fs location's folder,
        # and the bench's S3 secrets towards SeaweedFS's bucket.
        config = t["dir"] / f"agent-{n}.toml"
        s3_endpoint = f"http://127.0.0.1:{getattr(self, 's3_port', 0)}"
        text = (f'storage-roots = ["{self.fs_dest(t)}"]\n\n'
                '[[credentials]]\n'
                'secrets = ["env:AWS_ACCESS_KEY_ID", "env:AWS_SECRET_ACCESS_KEY"]\n'
                f'endpoints = ["{s3_endpoint}"]\n'
                f'buckets = ["{BUCKET}"]\n')
        if self.args.encrypt:
            # One key for every node (objects are shared), bound to both targets' storage.
            key = t["dir"] / "bench.key"
            if not key.exists():
                key.write_text(os.urandom(32).hex() + "\n")
                key.chmod(0o600)
            text += (f'\n[[keys]]\nname = "bench"\nfile = "{key}"\nroots = ["{self.fs_dest(t)}"]\n'
                     f'endpoints = ["{s3_endpoint}"]\nbuckets = ["{BUCKET}"]\n')
        config.write_text(text)
        argv = [str(RELEASE / "coffer-agent"), "--config", str(config), "--listen", f"127.0.0.1:{port}",
                "--data-path", str(self.data.node_dirs[n]), "--state-dir", str(t["dir"] / f"agent-{n}")]
        if self.args.strace_agent and n == 0:
            t["strace_count"] = t.get("strace_count", 0) + 1
            out = self.logs / t["name"] / f"agent-0.strace-{t['strace_count']}"
            argv = ["strace", "-c", "-f", "-o", str(out)] + argv
        elif self.args.heaptrack_agent and n == 0:
            t["heaptrack_count"] = t.get("heaptrack_count", 0) + 1
            out = self.logs / t["name"] / f"agent-0.heaptrack-{t['heaptrack_count']}"
            argv = ["heaptrack", "-o", str(out)] + argv
        proc = self.procs.start(f"agent-{n}", argv, self.logs / t["name"] / f"agent-{n}.log",
                                env=self.agent_env(), announce=r"coffer-agent listening on (http://\S+)")
        self.sampler.track(f"agent-{n}", proc.pid)
        return proc

    def restart_agents(self, t: dict) -> None:
        for proc in t["agents"]:
            self.procs.stop(proc)
        t["agents"] = [self.start_agent(t, n) for n in range(self.params.nodes)]
        # Untimed: let the server reconnect to every agent before the measured run (a connection
        # in reconnect back-off would otherwise add up to a second to the run).
        deadline = time.monotonic() + 30
        while True:
            nodes = self.rpc(t, "coffer.v1.ClusterService/CheckCluster", {"cluster": CLUSTER}).get("nodes", [])
            if nodes and all(n.get("health") == "NODE_HEALTH_SERVING" for n in nodes):
                return
            if time.monotonic() > deadline:
                raise BenchError(f"agents not serving after restart: {nodes}")
            time.sleep(0.2)

    def rpc(self, t: dict, method: str, body: dict, timeout: float = 120) -> dict:
        argv = [str(TOOLS / "grpcurl"), "-plaintext", "-max-time", str(int(timeout)), "-d",
                json.dumps(body), t["server_addr"], method]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 15)
        if p.returncode != 0:
            raise BenchError(f"{method} {json.dumps(body)} failed:\n{(p.stderr or p.stdout).strip()}")
        return json.loads(p.stdout) if p.stdout.strip() else {}

    def fs_dest(self, t: dict) -> Path:
        """Where the fs location and the rclone fs copy go: the target's folder (same disk as the
        data set) unless --fs-dest says otherwise."""
        if self.args.fs_dest:
            d = Path(self.args.fs_dest).resolve() / "coffer-bench-fs"
            d.mkdir(parents=True, exist_ok=True)
            return d
        return t["dir"]

    def setup_target(self, name: str) -> dict:
        d = self.work / "run" / name
        self.trash.discard(d)
        d.mkdir(parents=True)
        log_dir = self.logs / name
        self.trash.discard(log_dir)
        t = {"name": name, "dir": d, "agent_ports": free_ports(self.params.nodes)}
        t["agents"] = [self.start_agent(t, n) for n in range(self.params.nodes)]
        server = self.procs.start("server", [str(RELEASE / "coffer-server"), "--listen", "127.0.0.1:0",
                                             "--catalog", str(d / "catalog.db"),
                                             # loopback only: the bench measures transfers, not tokens
                                             "--auth", "none"],
                                  log_dir / "server.log", env=self.agent_env(),
                                  announce=r"coffer-server listening on (http://\S+)")
        t["server"] = server
        t["server_addr"] = server.address.removeprefix("http://")
        self.sampler.track("server", server.pid)
        cluster = self.rpc(t, "coffer.v1.ClusterService/RegisterCluster", {
            "name": CLUSTER,
            "nodes": [{"address": f"127.0.0.1:{p}", "datacenter": "dc1", "rack": f"r{i}"}
                      for i, p in enumerate(t["agent_ports"])]}).get("cluster", {})
        by_port = {str(port): f"agent-{i}" for i, port in enumerate(t["agent_ports"])}
        t["node_names"] = {n.get("id"): by_port.get(n.get("address", "").rsplit(":", 1)[-1], n.get("id"))
                           for n in cluster.get("nodes", [])}
        if name == "fs":
            t["location_path"] = self.fs_dest(t) / "coffer-location"
            t["location_path"].mkdir(parents=True)
            loc = {"name": "bench-fs", "fs": {"path": str(t["location_path"])}}
        else:
            loc = {"name": "bench-s3", "s3": {
                "bucket": BUCKET, "prefix": "coffer", "endpoint": f"http://127.0.0.1:{self.s3_port}",
                "forcePathStyle": True, "region": "us-east-1",
                "accessKeyId": {"env": "AWS_ACCESS_KEY_ID"},
                "secretAccessKey": {"env": "AWS_SECRET_ACCESS_KEY"}}}
        t["location"] = loc["name"]
        if self.args.compression:
            loc["compression"] = compression_setting(self.args.compression)
        if self.args.encrypt:
            loc["encryptionKey"] = "bench"
        self.rpc(t, "coffer.v1.LocationService/CreateLocation", loc)
        log(f"[{name}] server {t['server_addr']}, {self.params.nodes} agents on ports "
            f"{t['agent_ports']}, cluster '{CLUSTER}', location '{t['location']}'")
        return t

    def teardown_target(self, t: dict) -> None:
        for proc in t.get("agents", []):
            self.procs.stop(proc)
        if t.get("server"):
            self.procs.stop(t["server"])
        for n in range(self.params.nodes):
            self.sampler.untrack(f"agent-{n}")
        self.sampler.untrack("server")

    def stored_bytes(self, t: dict) -> int | None:
        """Bytes the location holds (objects + manifests)."""
        if t["name"] == "fs":
            return dir_bytes(t["location_path"])[1]
        p = subprocess.run([str(TOOLS / "rclone"), "size", "--json", f"{RCLONE_REMOTE}:{BUCKET}/coffer"],
                           capture_output=True, text=True, env=rclone_env(self.s3_port), timeout=300)
        if p.returncode != 0:
            return None
        return json.loads(p.stdout).get("bytes")

    def start_watcher(self, t: dict) -> subprocess.Popen:
        """A WatchRun client started BEFORE the run (it reads the request from stdin once
        `watch` has the run id): grpcurl's start-up (a Go runtime, the connection, the
        reflection calls: ~50-90 ms of CPU) then happens before the measured run instead of
        competing with the agents for the two cores during it, which cost a short incremental
        a tenth of its wall time."""
        argv = [str(TOOLS / "grpcurl"), "-plaintext", "-d", "@", t["server_addr"],
                "coffer.v1.RunService/WatchRun"]
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
        time.sleep(0.5)  # connected and resolved the method while the request is awaited
        return p

    def watch(self, t: dict, run_id: str, t0: float,
              p: subprocess.Popen | None = None) -> tuple[dict, float, list]:
        """Follows the run with WatchRun to its final state (polling GetRun if the stream ends
        early); returns the final run, the monotonic time it was seen, and the phase timeline.
        `p`: a watcher from `start_watcher`, else one is started now."""
        timeline: list = []
        last_phase: dict[str, str] = {}

        def note(run: dict) -> None:
            el = round(time.monotonic() - t0, 2)
            for node in run.get("nodes", []):
                nid = node.get("nodeId", "?")
                ph = node.get("phase", "NODE_PHASE_UNSPECIFIED").removeprefix("NODE_PHASE_")
                if last_phase.get(nid) != ph:
                    last_phase[nid] = ph
                    prog = node.get("progress", {})
                    timeline.append({"t": el, "node": nid, "phase": ph,
                                     "bytes_done": int(prog.get("bytesDone", 0)),
                                     "bytes_total": int(prog.get("bytesTotal", 0))})

        deadline = time.monotonic() + self.args.run_timeout
        if p is None:
            p = self.start_watcher(t)
        p.stdin.write(json.dumps({"runId": run_id, "minUpdateInterval": "0.1s"}).encode())
        p.stdin.close()
        decoder = json.JSONDecoder()
        buf = ""
        final = None
        try:
            while True:
                chunk = os.read(p.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk.decode(errors="replace")
                while True:
                    s = buf.lstrip()
                    if not s:
                        buf = ""
                        break
                    try:
                        msg, end = decoder.raw_decode(s)
                    except ValueError:
                        buf = s
                        break
                    buf = s[end:]
                    run = msg.get("run", {})
                    note(run)
                    if run.get("state") in FINAL_STATES:
                        final = (run, time.monotonic())
                if final:
                    break
                if time.monotonic() > deadline:
                    raise BenchError(f"run {run_id} not finished after {self.args.run_timeout} s")
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
        if final:
            return final[0], final[1], timeline
        err = p.stderr.read().decode(errors="replace").strip()
        log(f"WatchRun ended without a final state ({err[-200:]}); polling GetRun every 0.5 s")
        while time.monotonic() < deadline:
            run = self.rpc(t, "coffer.v1.RunService/GetRun", {"runId": run_id}).get("run", {})
            note(run)
            if run.get("state") in FINAL_STATES:
                return run, time.monotonic(), timeline
            time.sleep(0.5)
        raise BenchError(f"run {run_id} not finished after {self.args.run_timeout} s")

    def prepare_phase(self, source: list[Path] | None = None) -> None:
        """Same start for every measured phase: nothing dirty waiting for writeback, and what the
        phase reads (the data set for a backup, `source` for a restore or a download: the
        location, rclone's copy, SeaweedFS's data folder) either entirely in the page cache (read
        once here) or, with --drop-caches, not at all; and no mass deletion in the last minute
        (see Trash)."""
        self.trash.settle()
        os.sync()
        if self.args.drop_caches:
            try:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
            except OSError as e:
                raise BenchError(f"--drop-caches: {e} (needs root)")
        else:
            buf = bytearray(MiB)
            for d in (source if source is not None else self.data.node_dirs):
                for dirpath, dirnames, filenames in os.walk(d):
                    if ".coffer-snapshots" in dirnames:
                        dirnames.remove(".coffer-snapshots")
                    for name in filenames:
                        path = os.path.join(dirpath, name)
                        try:
                            if not stat.S_ISREG(os.lstat(path).st_mode):  # weed's sockets
                                continue
                            with open(path, "rb", buffering=0) as f:
                                while f.readinto(buf):
                                    pass
                        except FileNotFoundError:  # a server's temporary file, gone since
                            pass
        time.sleep(0.5)

    def coffer_backup(self, t: dict, kind: str, phase: str | None = None) -> dict:
        phase = phase or kind.lower()
        log(f"[{t['name']}] {phase}: restarting agents (fresh VmHWM), then StartBackup")
        self.restart_agents(t)
        stored_before = self.stored_bytes(t)
        files, logical = 0, 0
        for d in self.data.node_dirs:
            f, s = dataset_size(d)
            files += f
            logical += s
        self.prepare_phase()
        if kind == "FULL":  # modes and mtimes as backed up, for the restore to be checked against
            t["full_stats"] = [stat_tree(d) for d in self.data.node_dirs]
        watcher = self.start_watcher(t)
        self.sampler.begin()
        t0 = time.monotonic()
        resp = self.rpc(t, "coffer.v1.BackupService/StartBackup", {
            "cluster": CLUSTER, "backup": {"location": t["location"], "kind": f"BACKUP_KIND_{kind}"}})
        run_id = resp["runId"]
        run, t1, timeline = self.watch(t, run_id, t0, watcher)
        client_wall = t1 - t0
        usage = self.sampler.end()
        # The run's own clock: createTime (StartBackup recorded it) -> finishTime (SUCCEEDED).
        # The client's figure also holds StartBackup's grpcurl start-up (~0.1 s).
        created, finished = parse_ts(run.get("createTime")), parse_ts(run.get("finishTime"))
        wall = finished - created if created and finished else client_wall
        hwm = {p.name: proc_status_kib(p.pid, "VmHWM") for p in t["agents"]}
        res = {"target": t["name"], "phase": phase, "run_id": run_id, "state": run.get("state"),
               "wall_s": round(wall, 3), "client_wall_s": round(client_wall, 3), "files": files, "logical_bytes": logical,
               "mib_per_s": round(mib(logical) / wall, 1),
               "agent_vmhwm_mib": {k: round(v / 1024, 1) for k, v in hwm.items() if v},
               "peak_agent_rss_mib": round(max(v for v in hwm.values() if v) / 1024, 1) if any(hwm.values()) else None,
               "server_times": {k: run.get(k) for k in ("createTime", "startTime", "finishTime")},
               "phase_timeline": timeline, "usage": usage,
               "agent_log": {p.name: agent_log_summary(p.log_path, run_id, created) for p in t["agents"]},
               "run_totals": run.get("totals", {})}
        if run.get("state") != "RUN_STATE_SUCCEEDED":
            res["error"] = run.get("errorMessage", "")
            res["node_errors"] = {n.get("nodeId"): n.get("lastError") for n in run.get("nodes", []) if n.get("lastError")}
            log(f"[{t['name']}] {phase}: run {run_id} ended {run.get('state')}: {res['error']} {res['node_errors']}")
            return res
        backup = self.rpc(t, "coffer.v1.BackupService/GetBackup", {"backupId": run["backupId"]})["backup"]
        totals = backup.get("totals", {})
        res.update({"backup_id": run["backupId"], "backup_kind": backup.get("kind"),
                    "parent_backup_id": backup.get("parentBackupId", ""),
                    "backup_file_count": int(totals.get("fileCount", 0)),
                    "backup_total_bytes": int(totals.get("totalBytes", 0)),
                    "uploaded_bytes": int(totals.get("uploadedBytes", 0)),
                    "uploaded_objects": int(totals.get("uploadedObjects", 0))})
        stored_after = self.stored_bytes(t)
        if stored_before is not None and stored_after is not None:
            res["stored_growth_bytes"] = stored_after - stored_before
        if backup.get("kind") != f"BACKUP_KIND_{kind}":
            res["warning"] = f"asked for {kind}, got {backup.get('kind')}"
            log(f"[{t['name']}] warning: {res['warning']}")
        if res["backup_file_count"] != files or res["backup_total_bytes"] != logical:
            res.setdefault("warning", "")
            res["warning"] += (f" backup holds {res['backup_file_count']} files / {res['backup_total_bytes']} "
                               f"bytes, data set has {files} / {logical}")
            log(f"[{t['name']}] warning: {res['warning']}")
        log(f"[{t['name']}] {phase}: {wall:.2f} s (client saw {client_wall:.2f} s), {res['mib_per_s']:.1f} MiB/s, uploaded "
            f"{mib(res['uploaded_bytes']):.1f} MiB, peak agent VmHWM {res['peak_agent_rss_mib']} MiB")
        return res

    def cli_watch(self, t: dict) -> dict:
        """How long after a run's end `cofferctl backup start --incremental --watch` returns, in
        table mode and in JSON mode (an unchanged incremental each, page cache warm: only the
        gap between the run's finishTime and the process's exit is the subject)."""
        res: dict = {"modes": {}}
        for mode in ("table", "json"):
            argv = [str(RELEASE / "cofferctl"), "backup", "start", CLUSTER, "--location", t["location"],
                    "--incremental", "--watch", "-o", mode, "--server", t["server_addr"]]
            started = time.time()
            p = subprocess.run(argv, capture_output=True, text=True, timeout=self.args.run_timeout)
            returned = time.time()
            if p.returncode != 0:
                res["modes"][mode] = {"error": f"exit {p.returncode}: {p.stderr.strip()[-300:]}"}
                log(f"[{t['name']}] cli-watch {mode}: {res['modes'][mode]['error']}")
                continue
            runs = self.rpc(t, "coffer.v1.RunService/ListRuns", {"pageSize": 1}).get("runs", [])
            run = runs[0] if runs else {}
            created, finished = parse_ts(run.get("createTime")), parse_ts(run.get("finishTime"))
            if not created or not finished or created < started - 1:
                res["modes"][mode] = {"error": "the run it started was not found"}
                continue
            res["modes"][mode] = {"run_s": round(finished - created, 3),
                                  "client_s": round(returned - started, 3),
                                  "after_end_ms": round(1000 * (returned - finished), 1)}
            log(f"[{t['name']}] cli-watch {mode}: the run took {finished - created:.3f} s, cofferctl "
                f"returned {1000 * (returned - finished):.0f} ms after its end")
        return res

    def stat_floor(self) -> dict:
        """Times `find -printf` reading every file's inode, size and mtime (what an incremental
        must learn of every file) after the same preparation as a measured phase."""
        self.prepare_phase()
        t0 = time.monotonic()
        for d in self.data.node_dirs:
            subprocess.run(["find", str(d), "-path", "*/.coffer-snapshots", "-prune", "-o", "-type", "f",
                            "-printf", "%i %s %T@\n"], check=True, stdout=subprocess.DEVNULL)
        wall = time.monotonic() - t0
        log(f"stat floor: find read every file's metadata in {wall:.2f} s")
        return {"wall_s": round(wall, 3), "files": self.data.files}

    def coffer_restore(self, t: dict, backup_id: str) -> dict:
        """Restores the FULL backup onto the same cluster after emptying every node's data folder,
        times it like a backup (createTime -> finishTime) and checks the restored trees against
        the generated data set. A failed or wrong restore regenerates the data set, so that what
        follows (the next target, the next run) starts from the real one."""
        name = t["name"]
        log(f"[{name}] restore: restarting agents (fresh VmHWM), emptying the data folders, then "
            f"StartRestore of backup {backup_id}")
        res: dict = {"target": name, "phase": "restore", "backup_id": backup_id, "files": self.data.files,
                     "logical_bytes": self.data.bytes, "wall_s": 0.0, "mib_per_s": 0.0}
        good = False
        try:
            self.restart_agents(t)
            self.data.wipe()
            # What the restore reads: the fs location, or SeaweedFS's data folder (Coffer's objects
            # and rclone's copy, as for rclone's download).
            self.prepare_phase([t["location_path"]] if name == "fs" else [self.work / "run" / "weed" / "data"])
            watcher = self.start_watcher(t)
            self.sampler.begin()
            t0 = time.monotonic()
            resp = self.rpc(t, "coffer.v1.RestoreService/StartRestore", {
                "cluster": CLUSTER, "restore": {"backupId": backup_id, "overwrite": False}})
            run_id = resp["runId"]
            run, t1, timeline = self.watch(t, run_id, t0, watcher)
            client_wall = t1 - t0
            usage = self.sampler.end()
            created, finished = parse_ts(run.get("createTime")), parse_ts(run.get("finishTime"))
            wall = finished - created if created and finished else client_wall
            hwm = {p.name: proc_status_kib(p.pid, "VmHWM") for p in t["agents"]}
            nodes: dict = {}
            for e in timeline:  # phase -> first seen (s after StartRestore was called), per agent
                nodes.setdefault(t["node_names"].get(e["node"], e["node"]), {}).setdefault(e["phase"], e["t"])
            res.update({
                "run_id": run_id, "state": run.get("state"), "wall_s": round(wall, 3),
                "client_wall_s": round(client_wall, 3), "mib_per_s": round(mib(self.data.bytes) / wall, 1),
                "agent_vmhwm_mib": {k: round(v / 1024, 1) for k, v in hwm.items() if v},
                "peak_agent_rss_mib": round(max(v for v in hwm.values() if v) / 1024, 1) if any(hwm.values()) else None,
                "server_times": {k: run.get(k) for k in ("createTime", "startTime", "finishTime")},
                "phase_timeline": timeline, "node_phases": nodes, "usage": usage,
                "agent_log": {p.name: agent_log_summary(p.log_path, run_id, created, RESTORE_MARKS,
                                                        "restore finished") for p in t["agents"]},
                "run_totals": run.get("totals", {})})
            if run.get("state") != "RUN_STATE_SUCCEEDED":
                res["error"] = run.get("errorMessage", "")
                res["node_errors"] = {t["node_names"].get(n.get("nodeId"), n.get("nodeId")): n.get("lastError")
                                      for n in run.get("nodes", []) if n.get("lastError")}
                log(f"[{name}] restore: run {run_id} ended {run.get('state')}: {res['error']} {res['node_errors']}")
            else:
                v = self.data.verify_restored()
                res["verification"] = v
                res["dest_bytes"] = v["bytes"]
                if t.get("full_stats"):
                    res["metadata"] = compare_stats(t["full_stats"], self.data.node_dirs)
                good = v["ok"]
                log(f"[{name}] restore: {wall:.2f} s (client saw {client_wall:.2f} s), {res['mib_per_s']:.1f} MiB/s, "
                    f"peak agent VmHWM {res['peak_agent_rss_mib']} MiB; check of the restored trees "
                    f"({v['hash_s']:.1f} s): {'all ' + str(v['files']) + ' files match' if good else v}")
        except (BenchError, OSError) as e:
            res.setdefault("state", "BENCH_ERROR")
            res["error"] = str(e)
            log(f"[{name}] restore: {e}")
        finally:
            self.sampler.active = False
            if not good:
                res["left_behind"] = {}
                for n, d in enumerate(self.data.node_dirs):
                    staging = d / ".coffer-restore"
                    files, size = dataset_size(d)
                    sf, ss = dir_bytes(staging) if staging.exists() else (0, 0)
                    res["left_behind"][f"agent-{n}"] = {"files": files - sf, "bytes": size - ss,
                                                        "staging_files": sf, "staging_bytes": ss}
                log(f"[{name}] restore: left in the data folders: {res['left_behind']}; "
                    f"regenerating the data set for what follows")
                self.data.ensure(regen=True)
        return res

    def rclone_dirs(self, t: dict) -> list[str]:
        """Where rclone's upload goes and its download comes from: a folder per node next to the
        fs location, or a prefix per node of the SeaweedFS bucket."""
        if t["name"] == "fs":
            return [str(self.fs_dest(t) / "rclone-dest" / f"node-{n}") for n in range(self.params.nodes)]
        return [f"{RCLONE_REMOTE}:{BUCKET}/rclone/node-{n}" for n in range(self.params.nodes)]

    def remove_rclone_copy(self, t: dict) -> None:
        if self.args.keep:
            return
        if t["name"] == "fs":
            self.trash.discard(self.fs_dest(t) / "rclone-dest")
        elif self.weed:
            subprocess.run([str(TOOLS / "rclone"), "purge", f"{RCLONE_REMOTE}:{BUCKET}/rclone"],
                           capture_output=True, env=rclone_env(self.s3_port), timeout=600)

    def run_parallel(self, t: dict, phase: str, tool: str, argvs: list[list[str]], env: dict,
                     outputs: list[Path] | None = None) -> dict:
        """One process per argv (rclone's or restic's, one per node), all in parallel; wall time
        from the first start to the last exit, CPU and peak RSS from wait4, then the time a sync
        takes. `outputs`: a file per process for its stdout and stderr."""
        name = t["name"]
        files = [open(o, "wb") for o in outputs] if outputs else []
        self.sampler.begin()
        t0 = time.monotonic()
        procs = []
        for n, argv in enumerate(argvs):
            out = files[n] if files else None
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                 stderr=subprocess.STDOUT if out else None, start_new_session=True)
            procs.append(p)
            self.sampler.track(f"{tool}-{n}", p.pid)
        rss = []
        cpu = 0.0
        failed = []
        rusage = {}
        for n, p in enumerate(procs):
            _, status, ru = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            rss.append(ru.ru_maxrss)  # KiB
            cpu += ru.ru_utime + ru.ru_stime
            rusage[f"{tool}-{n}"] = ru
            if p.returncode != 0:
                failed.append(n)
        wall = time.monotonic() - t0
        usage = self.sampler.end()
        for f in files:
            f.close()
        # rclone and restic's restore leave their local writes to the kernel's writeback; Coffer
        # fsyncs what it writes (every object of the fs location, every restored file). The time
        # to sync them now: shown on rclone's rows, part of restic's wall time where it writes.
        ts = time.monotonic()
        os.sync()
        sync_s = time.monotonic() - ts
        for name_n, ru in rusage.items():  # exited: their totals come from wait4's rusage
            c = ru.ru_utime + ru.ru_stime
            usage["processes"][name_n] = {
                "cpu_s": round(c, 2), "cpu_pct": round(100 * c / wall, 1),
                "user_s": round(ru.ru_utime, 2), "sys_s": round(ru.ru_stime, 2),
                "minflt": ru.ru_minflt, "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}
        for n in range(len(procs)):
            self.sampler.untrack(f"{tool}-{n}")
        if failed:
            raise BenchError(f"{tool} ({phase}) failed for nodes {failed}; logs in {self.logs / name}")
        return {"target": name, "phase": phase, "wall_s": round(wall, 3), "files": self.data.files,
                "logical_bytes": self.data.bytes, "mib_per_s": round(mib(self.data.bytes) / wall, 1),
                "processes": len(procs), f"{tool}_peak_rss_mib": round(max(rss) / 1024, 1),
                f"{tool}_cpu_s": round(cpu, 2), "sync_after_s": round(sync_s, 2), "usage": usage}

    def rclone_parallel(self, t: dict, phase: str, pairs: list[tuple[str, str]]) -> dict:
        """One `rclone copy` per (source, destination), all in parallel (see run_parallel)."""
        name = t["name"]
        transfers = self.args.rclone_transfers
        argvs = [[str(TOOLS / "rclone"), "copy", src, dest,
                  "--transfers", str(transfers), "--exclude", "/.coffer-snapshots/**",
                  "--log-file", str(self.logs / name / f"{phase}-{n}.log"), "--log-level", "NOTICE",
                  "--stats", "30s"] for n, (src, dest) in enumerate(pairs)]
        res = self.run_parallel(t, phase, "rclone", argvs, rclone_env(self.s3_port))
        res["transfers"] = transfers
        return res

    def rclone_copy(self, t: dict) -> dict:
        """rclone's upload. Its copy stays until rclone_download() has read it back."""
        name = t["name"]
        dests = self.rclone_dirs(t)
        log(f"[{name}] rclone: {self.params.nodes} x `rclone copy --transfers {self.args.rclone_transfers}` in parallel")
        self.prepare_phase()
        res = self.rclone_parallel(t, "rclone", [(str(d), dest) for d, dest in zip(self.data.node_dirs, dests)])
        copied_files = copied = 0
        for dest in dests:
            p = subprocess.run([str(TOOLS / "rclone"), "size", "--json", dest], capture_output=True,
                               text=True, env=rclone_env(self.s3_port), timeout=300)
            if p.returncode == 0:
                s = json.loads(p.stdout)
                copied_files += s.get("count", 0)
                copied += s.get("bytes", 0)
        if copied != self.data.bytes or copied_files != self.data.files:
            log(f"[{name}] warning: rclone destinations hold {copied_files} files / {copied} bytes, "
                f"data set {self.data.files} / {self.data.bytes}")
        res["uploaded_bytes"] = copied
        log(f"[{name}] rclone: {res['wall_s']:.2f} s, {res['mib_per_s']:.1f} MiB/s, peak RSS "
            f"{res['rclone_peak_rss_mib']} MiB per process")
        return res

    def rclone_download(self, t: dict) -> dict:
        """rclone copying its own upload back, into fresh folders on the data set's disk, then a
        check of what it wrote against the data set (untimed)."""
        name = t["name"]
        sources = self.rclone_dirs(t)
        down = t["dir"] / "rclone-down"
        self.trash.discard(down)
        dests = [down / f"node-{n}" for n in range(self.params.nodes)]
        log(f"[{name}] rclone-down: {self.params.nodes} x `rclone copy --transfers "
            f"{self.args.rclone_transfers}` back from the {name} target, in parallel")
        self.prepare_phase([self.fs_dest(t) / "rclone-dest"] if name == "fs" else [self.work / "run" / "weed" / "data"])
        res = self.rclone_parallel(t, "rclone-down", [(src, str(d)) for src, d in zip(sources, dests)])
        v = compare_trees(self.data.hashes, dests)
        res["verification"] = v
        res["dest_bytes"] = v["bytes"]
        log(f"[{name}] rclone-down: {res['wall_s']:.2f} s, {res['mib_per_s']:.1f} MiB/s (sync after it "
            f"{res['sync_after_s']:.2f} s), peak RSS {res['rclone_peak_rss_mib']} MiB per process; "
            f"check of what it wrote: {'all ' + str(v['files']) + ' files match' if v['ok'] else v}")
        if not self.args.keep:
            self.trash.discard(down)
        return res

    # ---- restic --------------------------------------------------------------------------

    def restic_env(self, t: dict) -> dict:
        """restic at its defaults: nothing inherited from the caller's RESTIC_* settings; a fixed
        password; its cache in the target's folder (cleared before the full backup); SeaweedFS's
        keys for the s3 target."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env["RESTIC_PASSWORD"] = RESTIC_PASSWORD
        env["RESTIC_CACHE_DIR"] = str(t["dir"] / "restic-cache")
        env["AWS_ACCESS_KEY_ID"] = ACCESS_KEY
        env["AWS_SECRET_ACCESS_KEY"] = SECRET_KEY
        return env

    def restic_repos(self, t: dict) -> list[str]:
        """A repository per node: a folder next to the fs location and rclone's copy, or a prefix
        of the same SeaweedFS bucket."""
        if t["name"] == "fs":
            return [str(self.fs_dest(t) / "restic-repo" / f"node-{n}") for n in range(self.params.nodes)]
        return [f"s3:http://127.0.0.1:{self.s3_port}/{BUCKET}/restic-node-{n}" for n in range(self.params.nodes)]

    def restic_stored(self, t: dict) -> int | None:
        """Bytes the restic repositories hold."""
        if t["name"] == "fs":
            return dir_bytes(self.fs_dest(t) / "restic-repo")[1]
        total = 0
        for n in range(self.params.nodes):
            p = subprocess.run([str(TOOLS / "rclone"), "size", "--json", f"{RCLONE_REMOTE}:{BUCKET}/restic-node-{n}"],
                               capture_output=True, text=True, env=rclone_env(self.s3_port), timeout=300)
            if p.returncode != 0:
                return None
            total += json.loads(p.stdout).get("bytes", 0)
        return total

    def restic_init(self, t: dict) -> None:
        """Fresh repositories (untimed), and an empty cache: the full backup starts cold."""
        self.trash.discard(t["dir"] / "restic-cache")
        if t["name"] == "fs":
            self.trash.discard(self.fs_dest(t) / "restic-repo")
        env = self.restic_env(t)
        for n, repo in enumerate(self.restic_repos(t)):
            p = subprocess.run([str(TOOLS / "restic"), "-r", repo, "init"], capture_output=True,
                               text=True, env=env, timeout=300)
            (self.logs / t["name"] / f"restic-init-{n}.log").write_text(p.stdout + p.stderr)
            if p.returncode != 0:
                raise BenchError(f"restic init {repo} failed:\n{(p.stderr or p.stdout).strip()[-500:]}")
        p = subprocess.run([str(TOOLS / "restic"), "-r", self.restic_repos(t)[0], "cat", "config"],
                           capture_output=True, text=True, env=env, timeout=300)
        t["restic_repo_version"] = json.loads(p.stdout).get("version") if p.returncode == 0 else None

    @staticmethod
    def restic_summary(path: Path) -> dict:
        """The summary message `restic backup --json` ends its output with."""
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return {}
        for line in reversed(lines):
            if line.startswith("{"):
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("message_type") == "summary":
                    return msg
        return {}

    def restic_timed(self, t: dict, phase: str, argvs: list[list[str]], with_sync: bool) -> dict:
        """restic's processes in parallel (see run_parallel); `with_sync`: the sync after them is
        part of the wall time, where restic leaves what it wrote to the kernel (restored files;
        the cache next to the fs target's repositories)."""
        (self.logs / t["name"]).mkdir(parents=True, exist_ok=True)
        outputs = [self.logs / t["name"] / f"{phase}-{n}.log" for n in range(len(argvs))]
        res = self.run_parallel(t, phase, "restic", argvs, self.restic_env(t), outputs)
        res["process_wall_s"] = res["wall_s"]
        res["sync_in_wall"] = with_sync
        if with_sync:
            res["wall_s"] = round(res["wall_s"] + res["sync_after_s"], 3)
        res["outputs"] = [str(o) for o in outputs]
        return res

    def restic_backup(self, t: dict, phase: str) -> dict:
        """`restic backup` of every node's data folder into its own repository, in parallel:
        phase "restic" initialises fresh repositories first (a full backup, cold cache), phase
        "restic-incremental" backs up into the same ones again (restic finds the parent snapshot
        itself: same host, same path). Failures are recorded, not raised: Coffer's phases go on."""
        name = t["name"]
        log(f"[{name}] {phase}: {self.params.nodes} x `restic backup` in parallel")
        res: dict = {"target": name, "phase": phase, "wall_s": 0.0, "mib_per_s": 0.0,
                     "files": self.data.files, "logical_bytes": self.data.bytes}
        try:
            if phase == "restic":
                self.restic_init(t)
            stored_before = self.restic_stored(t)
            files = logical = 0
            for d in self.data.node_dirs:
                f, sz = dataset_size(d)
                files += f
                logical += sz
            # What this backup holds, for restic-restore to be checked against.
            expected = self.data.hashes_now()
            stats = [stat_tree(d) for d in self.data.node_dirs]
            argvs = [[str(TOOLS / "restic"), "-r", repo, "backup", "--json", str(d),
                      "--exclude", str(d / AGENT_FOLDERS[0]), "--exclude", str(d / AGENT_FOLDERS[1])]
                     for repo, d in zip(self.restic_repos(t), self.data.node_dirs)]
            self.prepare_phase()
            res = self.restic_timed(t, phase, argvs, with_sync=name == "fs")
            res.update({"files": files, "logical_bytes": logical,
                        "mib_per_s": round(mib(logical) / res["wall_s"], 1),
                        "repo_version": t.get("restic_repo_version")})
            summaries = [self.restic_summary(Path(o)) for o in res["outputs"]]
            res["restic_summary"] = {f"node-{n}": sm for n, sm in enumerate(summaries)}
            for k in ("files_new", "files_changed", "files_unmodified", "data_added",
                      "total_files_processed", "total_bytes_processed"):
                res[k] = sum(sm.get(k, 0) for sm in summaries)
            # Given a parent snapshot, restic counts every file it had seen as changed or
            # unmodified, none as new; without one it reads every file again: say so.
            res["parent_used"] = all(sm.get("files_changed", 0) + sm.get("files_unmodified", 0) > 0
                                     for sm in summaries)
            stored_after = self.restic_stored(t)
            if stored_after is not None:
                res["stored_bytes"] = stored_after
                res["uploaded_bytes"] = stored_after - (stored_before or 0)
            if (res["total_files_processed"], res["total_bytes_processed"]) != (files, logical):
                res["warning"] = (f"restic saw {res['total_files_processed']} files / "
                                  f"{res['total_bytes_processed']} bytes, data set has {files} / {logical}")
                log(f"[{name}] {phase}: warning: {res['warning']}")
            t["restic_expected"], t["restic_stats"] = expected, stats
            log(f"[{name}] {phase}: {res['wall_s']:.2f} s ({'incl. ' if res['sync_in_wall'] else 'then '}"
                f"sync {res['sync_after_s']:.2f} s), {res['mib_per_s']:.1f} MiB/s, "
                f"{res['files_new']} new + {res['files_changed']} changed files, repositories grew "
                f"{mib(res.get('uploaded_bytes', 0)):.1f} MiB, peak RSS {res['restic_peak_rss_mib']} MiB per process")
        except (BenchError, OSError, subprocess.SubprocessError, ValueError) as e:
            self.sampler.active = False
            res.update({"state": "FAILED", "error": str(e)})
            log(f"[{name}] {phase}: {e}")
        return res

    def restic_restore(self, t: dict) -> dict:
        """`restic restore latest` of every repository into fresh folders on the data set's disk,
        in parallel, plus the sync restic leaves to the kernel, then a check of the restored trees
        (untimed) against what restic's last backup saw: the data set with the incremental's
        changes when restic-incremental ran (the Coffer restore before it wrote the FULL backup's
        state into the data folders, but restic's copy is compared with what restic backed up)."""
        name = t["name"]
        down = t["dir"] / "restic-restore"
        self.trash.discard(down)
        dests = [down / f"node-{n}" for n in range(self.params.nodes)]
        expected = t["restic_expected"]
        files = sum(len(h) for h in expected)
        logical = sum(v[0] for h in expected for v in h.values())
        res: dict = {"target": name, "phase": "restic-restore", "wall_s": 0.0, "mib_per_s": 0.0,
                     "files": files, "logical_bytes": logical}
        log(f"[{name}] restic-restore: {self.params.nodes} x `restic restore latest` in parallel")
        try:
            self.prepare_phase([self.fs_dest(t) / "restic-repo"] if name == "fs"
                               else [self.work / "run" / "weed" / "data"])
            argvs = [[str(TOOLS / "restic"), "-r", repo, "restore", "latest", "--target", str(dest)]
                     for repo, dest in zip(self.restic_repos(t), dests)]
            res = self.restic_timed(t, "restic-restore", argvs, with_sync=True)
            res.update({"files": files, "logical_bytes": logical,
                        "mib_per_s": round(mib(logical) / res["wall_s"], 1)})
            # restic restores a snapshot's absolute paths under the target.
            roots = [dest / d.relative_to(d.anchor) for dest, d in zip(dests, self.data.node_dirs)]
            v = compare_trees(expected, roots)
            res["verification"] = v
            res["dest_bytes"] = v["bytes"]
            res["metadata"] = compare_stats(t["restic_stats"], roots)
            log(f"[{name}] restic-restore: {res['wall_s']:.2f} s (incl. sync {res['sync_after_s']:.2f} s), "
                f"{res['mib_per_s']:.1f} MiB/s, peak RSS {res['restic_peak_rss_mib']} MiB per process; "
                f"check of what it wrote: {'all ' + str(v['files']) + ' files match' if v['ok'] else v}")
        except (BenchError, OSError, subprocess.SubprocessError) as e:
            self.sampler.active = False
            res.update({"state": "FAILED", "error": str(e)})
            log(f"[{name}] restic-restore: {e}")
        if not self.args.keep:
            self.trash.discard(down)
        return res

    def remove_restic_repos(self, t: dict) -> None:
        if self.args.keep or self.args.no_restic:
            return
        if t["name"] == "fs":
            self.trash.discard(self.fs_dest(t) / "restic-repo")
        elif self.weed:
            for n in range(self.params.nodes):
                subprocess.run([str(TOOLS / "rclone"), "purge", f"{RCLONE_REMOTE}:{BUCKET}/restic-node-{n}"],
                               capture_output=True, env=rclone_env(self.s3_port), timeout=600)

    def run_target(self, name: str) -> None:
        if name == "s3" and not self.weed:
            self.start_weed()
        t = self.setup_target(name)
        out: dict = {"phases": {}}
        self.results["targets"][name] = out
        restic = not self.args.no_restic

        def record(key: str, res: dict) -> dict:
            # The server runs from the first phase to the last: its VmHWM after a phase is the
            # peak of everything so far.
            kib = proc_status_kib(t["server"].pid, "VmHWM")
            res["server_peak_so_far_mib"] = round(kib / 1024, 1) if kib else None
            out["phases"][key] = res
            return res

        try:
            record("rclone", self.rclone_copy(t))
            full = record("full", self.coffer_backup(t, "FULL"))
            full_ok = full.get("state") == "RUN_STATE_SUCCEEDED"
            # restic's full right after Coffer's and its incremental right before Coffer's: both
            # tools see the same data (the generated set, then the same 1% changed), and no Coffer
            # backup runs between restic's two. Coffer's snapshot hard-links every file, which
            # changes every file's ctime, and restic (by default) reads a file again whose ctime
            # changed: after a Coffer backup, restic's incremental would read the whole data set.
            restic_ok = restic and "state" not in record("restic", self.restic_backup(t, "restic"))
            if full_ok or self.args.incremental_after_failure:
                change = self.data.mutate()
                out["change"] = change
                log(f"[{name}] changed {change['changed_files']} of {change['files']} files "
                    f"({change['changed_percent']:.2f}%), {mib(change['bytes_written']):.1f} MiB written, "
                    f"changed files total {mib(change['changed_file_bytes']):.1f} MiB")
                try:
                    if restic_ok:
                        record("restic-incremental", self.restic_backup(t, "restic-incremental"))
                    record("incremental", self.coffer_backup(t, "INCREMENTAL"))
                    # Nothing changed since: what an incremental costs that finds nothing to do.
                    record("unchanged", self.coffer_backup(t, "INCREMENTAL", "unchanged"))
                    # The floor of any incremental that looks at every file: one stat of each,
                    # from the same cold (or warm) start.
                    record("stat-floor", self.stat_floor())
                    record("cli-watch", self.cli_watch(t))
                finally:
                    self.data.undo_mutate()
            else:
                log(f"[{name}] full backup failed: skipping the incremental")
            if self.args.no_restore:
                return
            # The restore (of the FULL backup) comes after the incremental, not right after the
            # full: restored files are new inodes, and the agent's journal knows files by (path,
            # inode, size, mtime), so an incremental after a restore would hash everything again.
            # The restored trees are the data set from then on (the next target, the next run).
            if full_ok:
                record("restore", self.coffer_restore(t, full["backup_id"]))
            else:
                log(f"[{name}] full backup failed: skipping the restore")
            record("rclone-down", self.rclone_download(t))
            if restic_ok:
                record("restic-restore", self.restic_restore(t))
            elif restic:
                log(f"[{name}] restic's backup failed: skipping restic-restore")
        finally:
            self.remove_rclone_copy(t)
            self.remove_restic_repos(t)
            self.teardown_target(t)
            if not self.args.keep and name == "fs" and "location_path" in t:
                self.trash.discard(t["location_path"])
                if self.args.fs_dest:
                    try:
                        t["location_path"].parent.rmdir()
                    except OSError:
                        pass

    # ---- report --------------------------------------------------------------------------

    @staticmethod
    def foreign_cpu(r: dict) -> tuple[float, float] | None:
        """CPU seconds the machine spent outside the processes this benchmark watches during the
        phase (other users' builds and tests on a shared machine), and that as % of its capacity."""
        u = r.get("usage", {})
        m = u.get("machine")
        if not m or "busy_core_s" not in m:
            return None
        ours = sum(e.get("cpu_s", 0) for e in u.get("processes", {}).values())
        other = max(0.0, m["busy_core_s"] - ours)
        window = u.get("wall_s") or r["wall_s"]  # the sampler's window, not the run's own clock
        return other, 100 * other / (m["cores"] * window) if window else 0.0

    def restic_repo_version(self) -> int | None:
        for out in self.results["targets"].values():
            v = out["phases"].get("restic", {}).get("repo_version")
            if v:
                return v
        return None

    def report(self) -> int:
        lines = []
        p = lambda s="": lines.append(s)  # noqa: E731
        a = self.args
        p()
        p(f"Coffer backup and restore benchmark  (git {self.results.get('versions', {}).get('git', '?')}, "
          f"{os.cpu_count()} cores, {self.results.get('versions', {}).get('rclone', 'rclone ?')})")
        p(f"data set ({a.dataset}): {self.params.nodes} nodes, {self.data.files} files, {mib(self.data.bytes):.0f} MiB "
          f"(per node: {self.params.big_files} x {self.params.big_mib} MiB [text-like/random] + {self.params.small_files} x "
          f"{self.params.small_min // KiB}-{self.params.small_max // KiB} KiB [half text-like, half random]); "
          f"{'page cache dropped' if a.drop_caches else 'data set read into the page cache'} before each phase")
        p(f"rclone: one `rclone copy --transfers {a.rclone_transfers}` per node, {self.params.nodes} in "
          f"parallel, up (rclone) and back down into fresh folders (rclone-down); other flags at their "
          f"defaults: after each file a size check and an MD5 check where both sides have one, no fsync")
        p(f"Coffer: location compression {a.compression or 'zstd:1 (the default)'}"
          f"{', encrypted (AES-256-GCM, keyed names)' if a.encrypt else ''}, default agent "
          "concurrency, all nodes in parallel; restore = the FULL backup onto the same "
          "nodes, data folders emptied first (BLAKE3 of every file checked, files fsynced, then moved into place)")
        if not a.no_restic:
            p(f"restic: {self.results.get('versions', {}).get('restic') or 'restic ?'}: one `restic backup` "
              f"per node, {self.params.nodes} in parallel, each into a repository of its own (format "
              f"v{self.restic_repo_version() or '?'}, compression auto; cache cleared before the full); "
              f"restic-restore = `restic restore latest` into fresh folders; other flags at their defaults")
        p()
        hdr = (f"{'target':<7}{'phase':<20}{'wall s':>9}{'MiB/s':>9}{'files/s':>10}{'stored MiB':>12}"
               f"{'peak RSS MiB':>14}{'srv peak MiB':>14}{'vs rclone':>11}{'vs restic':>11}  note")
        p(hdr)
        p("-" * len(hdr))
        checks = []
        for name, out in self.results["targets"].items():
            ph = out["phases"]
            rc, rd = ph.get("rclone"), ph.get("rclone-down")
            for key in ROW_ORDER:
                r = ph.get(key)
                if not r:
                    continue
                ok = phase_ok(r)
                # Backups against rclone's upload, restores against rclone-down; Coffer's rows also
                # against restic's row of the same kind.
                vs_rc = ratio_of(r, rd if key in RESTORE_PHASES else rc)
                vs_rs = ratio_of(r, ph.get(RESTIC_BASE[key])) if key in RESTIC_BASE else None
                ratio = f"{vs_rc:.2f}x" if vs_rc is not None else "-"
                vs_restic = f"{vs_rs:.2f}x" if vs_rs is not None else "-"
                r["vs_rclone"] = round(vs_rc, 3) if vs_rc is not None else None
                r["vs_restic"] = round(vs_rs, 3) if vs_rs is not None else None
                r["files_per_s"] = round(r["files"] / r["wall_s"], 1) if ok and r.get("wall_s") else None
                rss = (r.get("rclone_peak_rss_mib") if key.startswith("rclone") else
                       r.get("restic_peak_rss_mib") if key.startswith("restic") else r.get("peak_agent_rss_mib"))
                note = ""
                v = r.get("verification")
                if key.startswith("rclone"):
                    note = f"{r['processes']} x rclone copy --transfers {r['transfers']}"
                    if r.get("sync_after_s") is not None and (key == "rclone-down" or name == "fs"):
                        note += f"; sync after it: {r['sync_after_s']:.2f} s"
                elif not ok:
                    note = f"{r.get('state')}: {r.get('error', '')[:60]}"
                elif key.startswith("restic"):
                    what = "restore latest" if key == "restic-restore" else "backup"
                    note = f"{r['processes']} x restic {what}"
                    if key == "restic-incremental":
                        note += (f", {r['files_new'] + r['files_changed']} files new/changed"
                                 f"{'' if r.get('parent_used') else ', NO PARENT SNAPSHOT USED'}")
                        c = out.get("change")
                        if c and r["files_new"] + r["files_changed"] > 2 * c["changed_files"]:
                            note += " (re-read: ctimes changed?)"
                    note += (f"; incl. sync {r['sync_after_s']:.2f} s" if r.get("sync_in_wall") else "")
                elif key == "full" and rc and rc.get("sync_after_s") is not None and name == "fs":
                    # Coffer's time includes making the backup durable; rclone leaves its writes
                    # to the kernel, so its copy is durable only after the sync shown on its row.
                    durable = mib(rc["logical_bytes"]) / (rc["wall_s"] + rc["sync_after_s"])
                    note = f"vs rclone + its sync (durable, as Coffer): {r['mib_per_s'] / durable:.2f}x"
                elif key == "unchanged":
                    note = "nothing changed since the incremental"
                    floor = ph.get("stat-floor")
                    if floor:
                        note += f"; find stats every file in {floor['wall_s']:.2f} s"
                elif key == "incremental" and out.get("change"):
                    c = out["change"]
                    note = (f"{c['changed_files']} files changed ({c['changed_percent']:.1f}%), "
                            f"{mib(c['bytes_written']):.1f} MiB")
                if v:
                    note = (note + "; " if note else "") + (
                        f"{v['files']} files = data set" if v["ok"] else
                        "DIFFERS from data set: " + ", ".join(f"{v[k]} {k.replace('_', ' ')}" for k in
                                                             ("missing", "extra", "size_mismatch", "content_mismatch") if v[k]))
                md = r.get("metadata")
                if md and (md["mode_mismatch"] or md["mtime_mismatch"]):
                    note += f"; {md['mode_mismatch']} modes, {md['mtime_mismatch']} mtimes differ from the backup's"
                fc = self.foreign_cpu(r)
                if fc and fc[1] > 10 and fc[0] > 0.5:
                    note = (note + "; " if note else "") + f"NOISY: {fc[1]:.0f}% of the machine busy elsewhere"
                up = r.get("uploaded_bytes", r.get("dest_bytes"))
                srv = r.get("server_peak_so_far_mib")
                p(f"{name:<7}{key:<20}{r['wall_s']:>9.2f}{r['mib_per_s'] if ok else 0:>9.1f}"
                  f"{r['files_per_s'] or 0:>10.0f}{(mib(up) if up is not None else 0):>12.1f}{(rss or 0):>14.1f}"
                  f"{(srv or 0):>14.1f}{ratio:>11}{vs_restic:>11}  {note}")
            full, inc, rs = ph.get("full"), ph.get("incremental"), ph.get("restore")
            rt, rr = ph.get("restic"), ph.get("restic-restore")
            full_ok = bool(full and full.get("state") == "RUN_STATE_SUCCEEDED")
            inc_ok = bool(inc and inc.get("state") == "RUN_STATE_SUCCEEDED")
            rs_ok = bool(rs and rs.get("state") == "RUN_STATE_SUCCEEDED")
            bases = [("rclone", rc, rd)] + ([] if a.no_restic else [("restic", rt, rr)])
            for tool, up_base, _ in bases:
                what = f"full backup throughput >= 1.5x {tool}"
                if full_ok and up_base and phase_ok(up_base):
                    ratio = full["mib_per_s"] / up_base["mib_per_s"]
                    checks.append((name, what, f"{ratio:.2f}x", ratio >= 1.5))
                else:
                    checks.append((name, what, "full backup failed" if not full_ok else f"no {tool} figure", False))
            if full_ok and inc_ok:
                pct = 100 * inc["wall_s"] / full["wall_s"]
                checks.append((name, "incremental wall time <= 5% of full's", f"{pct:.1f}%", pct <= 5))
            else:
                checks.append((name, "incremental wall time <= 5% of full's", "no successful incremental", False))
            idle = ph.get("unchanged")
            what = "unchanged incremental <= 0.5 s per 100k files"
            # Judged where there are files enough for the per-file cost to show: on a few
            # thousand, the run's fixed costs (RPCs, snapshot folders, manifest) are all of it.
            if idle and idle.get("files", 0) < 100_000:
                pass
            elif idle and phase_ok(idle) and idle.get("files"):
                per = idle["wall_s"] * 100_000 / idle["files"]
                checks.append((name, what, f"{per:.2f} s per 100k", per <= 0.5))
            elif idle:
                checks.append((name, what, "failed", False))
            cli = ph.get("cli-watch")
            for mode in ("table", "json") if cli else ():
                m = cli["modes"].get(mode, {})
                what = f"cofferctl --watch ({mode}) returns <= 100 ms after the run"
                if "after_end_ms" in m:
                    checks.append((name, what, f"{m['after_end_ms']:.0f} ms", m["after_end_ms"] <= 100))
                else:
                    checks.append((name, what, m.get("error", "not measured"), False))
            if not a.no_restore:
                for tool, _, down in bases:
                    what = f"restore throughput >= 1.5x {tool}"
                    if rs_ok and not rs.get("verification", {}).get("ok"):
                        checks.append((name, what, "restored data differs", False))
                    elif rs_ok and down and phase_ok(down):
                        ratio = rs["mib_per_s"] / down["mib_per_s"]
                        checks.append((name, what, f"{ratio:.2f}x", ratio >= 1.5))
                    elif rs_ok:
                        checks.append((name, what, "no rclone download" if tool == "rclone" else "no restic-restore", False))
                    else:
                        checks.append((name, what, "restore failed" if rs else "no restore", False))
            peaks = [(r["peak_agent_rss_mib"], k) for k, r in (("full", full), ("incremental", inc), ("restore", rs))
                     if r and r.get("peak_agent_rss_mib")]
            if peaks:
                top, which = max(peaks)
                checks.append((name, "agent peak memory < 150 MiB", f"{top:.1f} MiB ({which})", top < 150))
            srv = [r["server_peak_so_far_mib"] for r in ph.values() if r.get("server_peak_so_far_mib")]
            out["server_peak_mib"] = max(srv) if srv else None
        p()
        p("wall s: Coffer = the run's createTime -> finishTime (StartBackup/StartRestore recorded -> SUCCEEDED, "
          "server clock; the client's figure, with the start-up of the StartBackup call, is in results.json; the WatchRun client is started before the run); rclone = process "
          "start -> last exit" + ("." if a.no_restic else
          "; restic = process start -> last exit, plus the `sync` after it where restic leaves its "
          "writes to the kernel (every restore; the fs backups' cache: the fs repository's own "
          "files restic fsyncs itself)."))
        p("MiB/s = logical bytes of the data set / wall s (also for the incremental); files/s likewise with "
          "its file count. stored = what the phase left at its destination: BackupStats.uploaded_bytes "
          "(stored, compressed) for a backup, the bytes at the rclone destination, what the restic "
          "repositories grew by, the bytes of the restored files.")
        p("vs rclone: backups against rclone's upload, restores against rclone-down. " + (
          "" if a.no_restic else "vs restic (Coffer rows): full against restic, incremental against "
          "restic-incremental, restore against restic-restore. ") +
          "Restored trees and the downloads are checked against the data set afterwards (untimed): same "
          "files, sizes and BLAKE2b; for the restore also modes and mtimes as at the FULL backup" + (
          "." if a.no_restic else "; restic-restore against the data set as restic's last backup saw "
          "it (with the incremental's changes, which Coffer's restore of the FULL backup does not "
          "hold), modes and mtimes too."))
        p("peak RSS = max over agents of VmHWM read right after the run; agents are restarted before "
          "each Coffer run, so it is that run's peak alone. rclone and restic rows: max ru_maxrss of their "
          "processes. srv peak = coffer-server's VmHWM after the phase: it runs through every phase, so "
          "this is its peak so far.")
        p()
        p("targets:")
        for name, what, val, ok in checks:
            p(f"  [{name}] {what:<42} {val:>26}   {'PASS' if ok else 'MISS'}")
        self.results["checks"] = [{"target": n, "check": w, "value": v, "pass": ok} for n, w, v, ok in checks]
        p()
        p("diagnosis, per phase: agent milestones from its log (s after the run was created); for a restore "
          "also each node's phases as WatchRun reported them (s after StartRestore was called);")
        p("CPU s (user+sys) and % of one core; minflt = minor page faults;")
        p("rchar/wchar = bytes through read()/write() syscalls; machine = both cores; top = biggest CPU "
          "users of the whole machine, kernel threads included")
        for name, out in self.results["targets"].items():
            if out.get("error"):
                p(f"  [{name}] ERROR: {out['error']}")
            for key in ROW_ORDER:
                r = out["phases"].get(key)
                if not r:
                    continue
                extra = f" (client saw {r['client_wall_s']:.2f} s)" if "client_wall_s" in r else ""
                if r.get("sync_in_wall"):
                    extra += f" = processes {r['process_wall_s']:.2f} s + sync {r['sync_after_s']:.2f} s"
                st = r.get("server_times") or {}
                c, s0, f = (parse_ts(st.get(k)) for k in ("createTime", "startTime", "finishTime"))
                if c and s0 and f:
                    extra += f"; queued {s0 - c:.2f} s, then running {f - s0:.2f} s"
                p(f"  [{name}] {key}: wall {r['wall_s']:.2f} s{extra}")
                for aname, al in sorted(r.get("agent_log", {}).items()):
                    ms = "  ".join(f"{k.replace('_', ' ')} {al[k]:.2f}" for k in
                                   (*BACKUP_MARKS.values(), *RESTORE_MARKS.values()) if k in al)
                    w = f"  WARN lines {al['warn_lines']}" if al.get("warn_lines") else ""
                    ph = r.get("node_phases", {}).get(aname)
                    if ph:
                        ms += "   phases: " + "  ".join(f"{k.lower()} {v:.2f}" for k, v in ph.items())
                    p(f"      {aname:<9} {ms}{w}")
                    if al.get("timings_ms"):
                        p(f"      {'':<9} where the time went (ms; stat/link/journal summed over the walkers): "
                          + "  ".join(f"{k} {v}" for k, v in al["timings_ms"].items()))
                if r.get("run_totals"):
                    tot = r["run_totals"]
                    p(f"      run totals: files {tot.get('filesDone', 0)}/{tot.get('filesTotal', 0)}  bytes "
                      f"{mib(int(tot.get('bytesDone', 0))):.1f}/{mib(int(tot.get('bytesTotal', 0))):.1f} MiB  "
                      f"skipped {tot.get('filesSkipped', 0)} files")
                for k in ("verification", "metadata"):
                    for ex in r.get(k, {}).get("examples", []):
                        p(f"      {k}: {ex}")
                if r.get("left_behind"):
                    p(f"      left in the data folders: {r['left_behind']}")
                warns = {al.get("most_frequent_warning") for al in r.get("agent_log", {}).values()} - {None}
                for wline in sorted(warns)[:2]:
                    p(f"      most frequent agent warning: {wline}")
                u = r.get("usage", {})
                for pname, e in sorted(u.get("processes", {}).items()):
                    if not e.get("cpu_s") and not e.get("rchar_mib"):
                        continue
                    split = f" = {e['user_s']:.2f} user + {e['sys_s']:.2f} sys" if "user_s" in e else ""
                    io = (f"  rchar {e.get('rchar_mib', 0):.0f} MiB  wchar {e.get('wchar_mib', 0):.0f} MiB"
                          if "rchar_mib" in e else "")
                    flt = f"  minflt {e['minflt']}" if "minflt" in e else ""
                    p(f"      {pname:<9} cpu {e['cpu_s']:>6.2f} s ({e['cpu_pct']:>5.1f}%){split}{io}{flt}")
                m = u.get("machine")
                if m:
                    p(f"      machine: user {m['user_pct']}%  system {m['system_pct']}%  iowait {m['iowait_pct']}%  "
                      f"idle {m['idle_pct']}%  steal {m.get('steal_pct', 0.0)}%  "
                      f"disk read {m['disk_read_mib']} MiB  written {m['disk_written_mib']} MiB")
                    fc = self.foreign_cpu(r)
                    if fc:
                        p(f"      cpu outside the watched processes: {fc[0]:.2f} s ({fc[1]:.0f}% of the machine)")
                    if m.get("top_cpu"):
                        p("      top: " + ", ".join(f"{x['proc']} {x['cpu_s']:.2f}s" for x in m["top_cpu"][:6]))
                if r.get("error"):
                    p(f"      error: {r['error']}")
                    for nid, e in r.get("node_errors", {}).items():
                        p(f"      node {nid}: {e}")
        text = "\n".join(lines)
        print(text, flush=True)
        self.results["report"] = text
        out_path = self.work / "results.json"
        out_path.write_text(json.dumps(self.results, indent=1, default=str))
        print(f"\nresults: {out_path}\nlogs:    {self.logs}")
        return 0 if all(c[3] for c in checks) else 1

    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.build()
        self.check_space()
        self.data.ensure(self.args.regen)
        self.results["dataset"] = {"root": str(self.data.root), "files": self.data.files,
                                   "bytes": self.data.bytes, **self.params.shape()}
        self.results["args"] = vars(self.args)
        targets = ["fs", "s3"] if self.args.target == "both" else [self.args.target]
        for name in targets:
            try:
                self.run_target(name)
            except BenchError as e:
                log(f"[{name}] ERROR: {e}")
                self.results["targets"].setdefault(name, {"phases": {}})["error"] = str(e)
        return self.report()

    def close(self) -> None:
        self.procs.stop_all()
        self.sampler.close()
        if self.weed and not self.args.keep:  # the S3 copies (Coffer's and rclone's)
            self.trash.discard(self.work / "run" / "weed")
        if self.args.keep_trash:
            log(f"left {self.trash.root} for a later run to empty (--keep-trash)")
        else:
            self.trash.empty()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See bench/README.md.")
    ap.add_argument("--target", choices=["fs", "s3", "both"], default="both")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the big file size and the small file count (default 1.0)")
    ap.add_argument("--dataset", choices=list(DATASETS), default="large",
                    help="preset for the knobs below (a flag given still wins): large = 3 nodes x "
                         "(2 x 256 MiB + 3000 x 16-64 KiB), the default; small = 1 node x 100000 x "
                         "1-4 KiB; million = 1 node x 1000000 x 1-4 KiB")
    ap.add_argument("--nodes", type=int, help="nodes (default: from --dataset, large: 3)")
    ap.add_argument("--big-files", type=int,
                    help="big files per node, alternately text-like and random (large: 2)")
    ap.add_argument("--big-mib", type=int, help="size of each big file (large: 256)")
    ap.add_argument("--small-files", type=int, help="small files per node (large: 3000)")
    ap.add_argument("--small-min-kib", type=int, help="smallest small file (large: 16, small/million: 1)")
    ap.add_argument("--small-max-kib", type=int, help="largest small file (large: 64, small/million: 4)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--change-percent", type=float, default=1.0,
                    help="files changed (by count, per node) before the incremental (default 1)")
    ap.add_argument("--append-big", action="store_true",
                    help="make one of the changed files per node a 1 MiB append to a big file "
                         "(default: only small files are rewritten, as an SSTable database does)")
    ap.add_argument("--compression", metavar="CODEC",
                    help="the locations' compression: none, zstd or zstd:LEVEL (default: the "
                         "server's default, zstd:1); rclone never compresses")
    ap.add_argument("--encrypt", action="store_true",
                    help="encrypt the locations: a [[keys]] entry on every agent, the locations "
                         "naming it (rclone stays unencrypted)")
    ap.add_argument("--rclone-transfers", type=int, default=8)
    ap.add_argument("--no-restore", action="store_true",
                    help="skip the restore and rclone's and restic's downloads (backups only)")
    ap.add_argument("--no-restic", action="store_true",
                    help="skip restic's phases (restic, restic-incremental, restic-restore)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out"),
                    help="working folder (data set, processes' state, logs, results.json)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries in target/release as they are")
    ap.add_argument("--regen", action="store_true", help="regenerate the data set even if cached")
    ap.add_argument("--fs-dest", metavar="DIR",
                    help="put the fs target's Coffer location and rclone copy under DIR instead of "
                         "the work folder (e.g. /dev/shm to take the destination disk out)")
    ap.add_argument("--heaptrack-agent", action="store_true",
                    help="diagnostic: run agent 0 under heaptrack (its allocations in "
                         "logs/<target>/agent-0.heaptrack-<n>.zst, read with heaptrack_print); its "
                         "memory figure is then heaptrack's and its timings are distorted")
    ap.add_argument("--strace-agent", action="store_true",
                    help="diagnostic: run agent 0 under `strace -c -f` (syscall counts in "
                         "logs/<target>/agent-0.strace-<phase>); distorts that agent's timings")
    ap.add_argument("--keep", action="store_true", help="keep the rclone copies and the fs location")
    ap.add_argument("--keep-trash", action="store_true",
                    help="leave what this run cleared in <work>/trash (a later run empties it, or "
                         "this one when the disk runs short), so the next run need not wait for "
                         "freed inodes to settle (see Trash)")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before each measured phase (root only)")
    ap.add_argument("--run-timeout", type=float, default=3600)
    ap.add_argument("--sample-interval", type=float, default=0.5)
    ap.add_argument("--incremental-after-failure", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    apply_dataset(args)

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        return bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    except (BenchError, subprocess.CalledProcessError) as e:
        print(f"\nbench: error: {e}", file=sys.stderr)
        return 2
    finally:
        bench.close()


if __name__ == "__main__":
    sys.exit(main())
