#!/usr/bin/env python3
"""Location lifecycle benchmark: validate and purge on a location holding very many objects.

Run by hand from anywhere (Python 3.11, standard library only):

    python3 bench/lifecycle.py                      # 1,000,000 files of 64 bytes (1.1 M objects)
    python3 bench/lifecycle.py --files 20000        # a quick smoke run
    python3 bench/lifecycle.py --files 200000 --file-size 256

What it does:
  1. builds the release binaries (cargo build --release -p coffer-server -p coffer-agent
     -p coffer-client) unless --no-build;
  2. generates a deterministic data set under <work>/data: --files files of --file-size bytes,
     each with its own content (so each is one object of the location), in folders of
     --files-per-folder; it is reused by later runs with the same parameters;
  3. starts one coffer-agent and a coffer-server on loopback ports, registers the cluster and an
     fs location with cofferctl, then (setup, timed but not the subject)
        full         a FULL backup (`cofferctl backup start --watch`);
        incremental  an INCREMENTAL backup after --change-percent of the files (default 10%) got
                     new content (a new file renamed over the old one);
        delete       `cofferctl backup delete` of the FULL backup: the old content of the changed
                     files is then referred to by no backup (~10% of the objects);
     and measures, each with `cofferctl -o json ... --watch`:
        validate     `location validate` (one listing of the objects against every manifest);
        purge-dry    `location purge --dry-run`;
        purge        `location purge` (deletes the unreferenced objects);
        validate-2   `location validate` again (nothing orphaned should be left);
        deep         `location validate --deep --sample <--deep-sample>` (default 1%): the agent
                     downloads and BLAKE3-verifies that share of the objects;
     before each measured step the page cache is dropped when running as root (--no-drop-caches
     keeps it), the agent restarted (same state dir and port: --no-restart-agent keeps it, and
     with it what the backups left in its RSS), and the peak RSS of the server and of the agent is reset (/proc/<pid>/clear_refs,
     5: VmHWM := VmRSS), so the VmHWM read after the step is that step's peak alone; VmRSS is also
     polled every --sample-interval seconds;
  4. prints a table (wall time, server and agent peak RSS, the result's counts), checks the counts
     against what the scenario implies (PASS/MISS), and writes everything to <work>/results.json.

Logs of every process are kept in <work>/logs/. Nothing in the repository is modified outside
<work> (default bench/out/lifecycle/, git-ignored).
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"
CTL = RELEASE / "cofferctl"
MiB = 1 << 20
KiB = 1 << 10
GEN_VERSION = 1  # bump when the generator changes: regenerates cached data sets
CLUSTER = "bench"
LOCATION = "bench-fs"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FINAL_STATES = {"RUN_STATE_SUCCEEDED", "RUN_STATE_FAILED", "RUN_STATE_CANCELED"}
STEPS = ("validate", "purge-dry", "purge", "validate-2", "deep")


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mib(n: float) -> float:
    return n / MiB


# --------------------------------------------------------------------------------------------
# Data set
# --------------------------------------------------------------------------------------------

def file_path(root: Path, i: int, per_folder: int) -> Path:
    return root / f"d{i // per_folder:05d}" / f"f{i:08d}.dat"


def file_content(seed: int, i: int, version: int, size: int) -> bytes:
    """`size` bytes of its own per (seed, file, version): BLAKE2b output, repeated."""
    h = hashlib.blake2b(f"{seed}/file{i}/v{version}".encode(), digest_size=min(64, size)).digest()
    return (h * (size // len(h) + 1))[:size]


def write_replace(path: Path, data: bytes) -> None:
    """Write a new file and rename it over the old one (a new inode, as databases do)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def gen_folders(job: tuple) -> int:
    """Writes the files of folders [lo, hi) (version 0); returns how many."""
    root, seed, files, size, per_folder, lo, hi = job
    root = Path(root)
    n = 0
    for d in range(lo, hi):
        first = d * per_folder
        last = min(files, first + per_folder)
        if first >= last:
            break
        folder = root / f"d{d:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(first, last):
            fd = os.open(folder / f"f{i:08d}.dat", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, file_content(seed, i, 0, size))
            finally:
                os.close(fd)
            n += 1
    return n


def count_files(root: Path, skip: tuple[str, ...] = ()) -> tuple[int, int]:
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            files += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return files, size


class Dataset:
    def __init__(self, work: Path, a: argparse.Namespace):
        self.a = a
        self.root = work / "data"
        self.node = self.root / "node-0"
        self.state_path = self.root / "dataset.json"

    def shape(self) -> dict:
        a = self.a
        return {"gen_version": GEN_VERSION, "seed": a.seed, "files": a.files, "file_size": a.file_size,
                "files_per_folder": a.files_per_folder}

    def _state(self) -> dict | None:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None

    def _save(self, clean: bool) -> None:
        self.state_path.write_text(json.dumps({"shape": self.shape(), "clean": clean}, indent=1))

    def ensure(self) -> float | None:
        """Generates the data set unless a clean one of the same shape is there; returns the
        generation time (None when reused)."""
        st = self._state()
        if st and st.get("shape") == self.shape() and st.get("clean") and self.node.is_dir():
            log(f"data set: reusing {self.node} ({self.a.files} files of {self.a.file_size} bytes)")
            return None
        if self.root.exists():
            log(f"data set: removing {self.root} (other parameters or not clean)")
            shutil.rmtree(self.root)
        self.node.mkdir(parents=True)
        a = self.a
        folders = (a.files + a.files_per_folder - 1) // a.files_per_folder
        log(f"data set: generating {a.files} files of {a.file_size} bytes in {folders} folders of "
            f"{a.files_per_folder}")
        t0 = time.monotonic()
        step = max(1, folders // 64)
        jobs = [(str(self.node), a.seed, a.files, a.file_size, a.files_per_folder, lo, min(folders, lo + step))
                for lo in range(0, folders, step)]
        with ProcessPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as ex:
            n = sum(ex.map(gen_folders, jobs))
        if n != a.files:
            raise BenchError(f"data set: wrote {n} files, expected {a.files}")
        os.sync()
        dt = time.monotonic() - t0
        log(f"data set: {n} files in {dt:.1f} s ({n / dt:.0f} files/s, synced)")
        self._save(clean=True)
        return dt

    def changed(self) -> list[int]:
        a = self.a
        count = max(1, round(a.files * a.change_percent / 100))
        return sorted(random.Random(f"{a.seed}/change").sample(range(a.files), count))

    def mutate(self) -> dict:
        """New content for --change-percent of the files (version 1)."""
        self._save(clean=False)
        a = self.a
        t0 = time.monotonic()
        idx = self.changed()
        for i in idx:
            write_replace(file_path(self.node, i, a.files_per_folder), file_content(a.seed, i, 1, a.file_size))
        os.sync()
        return {"changed_files": len(idx), "changed_percent": round(100 * len(idx) / a.files, 2),
                "seconds": round(time.monotonic() - t0, 2)}

    def undo_mutate(self) -> None:
        a = self.a
        for i in self.changed():
            write_replace(file_path(self.node, i, a.files_per_folder), file_content(a.seed, i, 0, a.file_size))
        os.sync()
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

    def start(self, name: str, argv: list[str], log_path: Path, env: dict, announce: str,
              timeout: float = 60) -> Proc:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        logf = open(log_path, "ab", buffering=0)
        logf.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf,
                                 env=env, start_new_session=True, cwd=ROOT)
        proc = Proc(name, popen, log_path)
        self.items.append(proc)
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
                os.kill(proc.pid, signal.SIGTERM)
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

def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def proc_cpu_ticks(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def reset_hwm(pid: int) -> bool:
    """VmHWM := VmRSS (Linux >= 4.0, owner or root)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5\n")
        return True
    except OSError:
        return False


class RssWatch:
    """Peak RSS and CPU time of the watched processes over one step: VmHWM reset at begin() and
    read at end(), and VmRSS polled every `interval` in between (the fallback when the reset is
    refused)."""

    def __init__(self, interval: float):
        self.interval = interval
        self.tracked: dict[str, int] = {}
        self.lock = threading.Lock()
        self.active = False
        self.stop_event = threading.Event()
        threading.Thread(target=self._loop, daemon=True, name="rss").start()

    def track(self, name: str, pid: int) -> None:
        with self.lock:
            self.tracked[name] = pid

    def begin(self) -> None:
        with self.lock:
            self.reset_ok = {n: reset_hwm(p) for n, p in self.tracked.items()}
            self.rss_before = {n: proc_status_kib(p, "VmRSS") for n, p in self.tracked.items()}
            self.peak = {n: v or 0 for n, v in self.rss_before.items()}
            self.cpu0 = {n: proc_cpu_ticks(p) for n, p in self.tracked.items()}
            self.t0 = time.monotonic()
            self.active = True

    def _loop(self) -> None:
        while not self.stop_event.wait(self.interval):
            with self.lock:
                if not self.active:
                    continue
                for n, p in self.tracked.items():
                    rss = proc_status_kib(p, "VmRSS")
                    if rss is not None:
                        self.peak[n] = max(self.peak.get(n, 0), rss)

    def end(self) -> dict:
        with self.lock:
            self.active = False
            wall = time.monotonic() - self.t0
            out = {}
            for n, p in self.tracked.items():
                rss = proc_status_kib(p, "VmRSS")
                hwm = proc_status_kib(p, "VmHWM")
                sampled = max(self.peak.get(n, 0), rss or 0)
                # VmHWM is this step's peak only when the reset worked; else the process's lifetime peak.
                peak = max(sampled, hwm or 0) if self.reset_ok.get(n) else sampled
                cpu1, cpu0 = proc_cpu_ticks(p), self.cpu0.get(n)
                cpu = (cpu1 - cpu0) / CLK_TCK if cpu1 is not None and cpu0 is not None else None
                out[n] = {"pid": p, "rss_before_mib": round((self.rss_before.get(n) or 0) / 1024, 1),
                          "rss_after_mib": round((rss or 0) / 1024, 1),
                          "peak_rss_mib": round(peak / 1024, 1),
                          "peak_sampled_mib": round(sampled / 1024, 1),
                          "vmhwm_mib": round((hwm or 0) / 1024, 1), "hwm_reset": self.reset_ok.get(n),
                          "cpu_s": round(cpu, 2) if cpu is not None else None,
                          "cpu_pct": round(100 * cpu / wall, 1) if cpu is not None and wall > 0 else None}
            return out

    def close(self) -> None:
        self.stop_event.set()


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------

def parse_ts(text: str | None) -> float | None:
    """RFC 3339 UTC timestamp (proto3 JSON) -> seconds since the epoch."""
    if not text:
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not m:
        return None
    base = float(calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")))
    return base + (float("0." + m.group(2)) if m.group(2) else 0.0)


def u64(d: dict | None, key: str) -> int:
    """A proto3 JSON uint64 (a string, absent when 0)."""
    return int((d or {}).get(key, 0) or 0)


def drop_caches() -> bool:
    os.sync()
    if os.geteuid() != 0:
        return False
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work).resolve()
        self.logs = self.work / "logs"
        self.run_dir = self.work / "run"
        self.data = Dataset(self.work, args)
        self.procs = Procs()
        self.rss = RssWatch(args.sample_interval)
        self.server: Proc | None = None
        self.agent: Proc | None = None
        self.results: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args),
                              "setup": {}, "steps": {}}

    # ---- setup ---------------------------------------------------------------------------

    def build(self) -> None:
        if self.args.no_build:
            log("build: skipped (--no-build)")
        else:
            log("build: cargo build --release -p coffer-server -p coffer-agent -p coffer-client")
            subprocess.run(["cargo", "build", "--release", "-p", "coffer-server", "-p", "coffer-agent",
                            "-p", "coffer-client"], cwd=ROOT, check=True)
        for b in ("coffer-server", "coffer-agent", "cofferctl"):
            if not (RELEASE / b).is_file():
                raise BenchError(f"{RELEASE / b} missing (build failed?)")
        for sub in ("validate", "purge"):
            if subprocess.run([str(CTL), "location", sub, "--help"], capture_output=True).returncode != 0:
                raise BenchError(f"{CTL} has no `location {sub}` (an old build? drop --no-build)")
        git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=ROOT).stdout.strip()
        self.results["versions"] = {
            "git": git + (" (dirty tree)" if dirty else ""),
            "coffer-server": subprocess.run([str(RELEASE / "coffer-server"), "--version"], capture_output=True,
                                            text=True).stdout.strip()}

    def check_space(self) -> None:
        a = self.args
        block = 4096
        # data set + objects of two backups (one file per object, a block each at least) + margin
        per_file = max(block, (a.file_size + block - 1) // block * block)
        need = int(a.files * per_file * (2 + a.change_percent / 100) * 1.2)
        self.work.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.work).free
        if free < need:
            raise BenchError(f"{mib(free):.0f} MiB free under {self.work}, the run needs about {mib(need):.0f} MiB")
        st = os.statvfs(self.work)
        if st.f_files and st.f_favail < 2.5 * a.files:
            raise BenchError(f"{st.f_favail} inodes free under {self.work}, the run needs about {int(2.5 * a.files)}")

    def env(self) -> dict:
        env = dict(os.environ)
        env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
        env.setdefault("RUST_LOG", "info")
        env["NO_COLOR"] = "1"
        return env

    def ctl(self, *argv: str, check: bool = True, timeout: float = 300) -> dict:
        """One cofferctl -o json call; its JSON answer."""
        cmd = [str(CTL), "--server", self.server_addr, "-o", "json", *argv]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=self.env())
        if check and p.returncode != 0:
            raise BenchError(f"{' '.join(cmd[1:])} exited {p.returncode}:\n{(p.stderr or p.stdout).strip()}")
        return json.loads(p.stdout) if p.stdout.strip() else {}

    def ctl_watch(self, name: str, *argv: str) -> tuple[dict, float, int]:
        """A cofferctl -o json ... --watch call: reads the WatchRunResponse lines as they come
        (only the last run is kept); returns the final run, the client's wall time and the exit
        code."""
        cmd = [str(CTL), "--server", self.server_addr, "-o", "json", *argv, "--watch"]
        err_path = self.logs / f"cofferctl-{name}.stderr"
        with open(err_path, "wb") as err:
            t0 = time.monotonic()
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                 env=self.env(), start_new_session=True)
            decoder = json.JSONDecoder()
            buf = ""
            run: dict = {}
            messages = 0
            deadline = time.monotonic() + self.args.run_timeout
            try:
                while True:
                    chunk = os.read(p.stdout.fileno(), 1 << 16)
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
                        messages += 1
                        if isinstance(msg, dict) and msg.get("run"):
                            run = msg["run"]
                    if time.monotonic() > deadline:
                        raise BenchError(f"{name}: not finished after {self.args.run_timeout} s")
                rc = p.wait()
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            wall = time.monotonic() - t0
        if run.get("state") not in FINAL_STATES:
            raise BenchError(f"{' '.join(cmd[1:])} exited {rc} without a final run ({messages} messages); "
                             f"stderr {err_path}:\n{err_path.read_text(errors='replace')[-1500:]}")
        return run, wall, rc

    def start(self) -> None:
        for d in (self.run_dir, self.logs):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(parents=True)
        self.agent_port = free_ports(1)[0]
        self.start_agent()
        self.server = self.procs.start("server", [str(RELEASE / "coffer-server"), "--listen", "127.0.0.1:0",
                                                  "--catalog", str(self.run_dir / "catalog.db"),
                                                  # loopback only: the bench measures storage work
                                                  "--auth", "none"],
                                       self.logs / "server.log", self.env(),
                                       r"coffer-server listening on (http://\S+)")
        self.server_addr = self.server.address.removeprefix("http://")
        self.agent_addr = self.agent.address.removeprefix("http://")
        self.rss.track("server", self.server.pid)
        self.location_path = self.run_dir / "location"
        self.location_path.mkdir()
        self.ctl("cluster", "register", CLUSTER, "--node", self.agent_addr)
        loc = ["location", "create", LOCATION, "--fs", str(self.location_path)]
        if self.args.compression:
            loc += ["--compression", self.args.compression]
        self.ctl(*loc)
        log(f"server {self.server_addr} (pid {self.server.pid}), agent {self.agent_addr} (pid {self.agent.pid}), "
            f"cluster '{CLUSTER}', location '{LOCATION}' at {self.location_path}")

    def start_agent(self) -> None:
        self.agent = self.procs.start("agent", [str(RELEASE / "coffer-agent"), "--listen",
                                                f"127.0.0.1:{self.agent_port}", "--data-path", str(self.data.node),
                                                "--state-dir", str(self.run_dir / "agent"),
                                                "--storage-root", str(self.run_dir / "location")],
                                      self.logs / "agent.log", self.env(),
                                      r"coffer-agent listening on (http://\S+)")
        self.rss.track("agent", self.agent.pid)

    def restart_agent(self) -> None:
        """A fresh agent (same state dir and port), so that its RSS holds nothing of the steps
        before (an allocator keeps what a backup used); untimed: waits until the server sees it
        serving again (`cluster check` exits 0)."""
        self.procs.stop(self.agent)
        self.start_agent()
        deadline = time.monotonic() + 30
        while True:
            p = subprocess.run([str(CTL), "--server", self.server_addr, "-o", "json", "cluster", "check", CLUSTER],
                               capture_output=True, text=True, env=self.env())
            if p.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"agent not serving after its restart: {(p.stderr or p.stdout).strip()[-500:]}")
            time.sleep(0.2)

    def stored_objects(self) -> tuple[int, int]:
        """Object files (and their bytes) under the location's objects folders (untimed)."""
        files = size = 0
        clusters = self.location_path / "clusters"
        if clusters.is_dir():
            for c in os.scandir(clusters):
                objects = Path(c.path) / "objects"
                if objects.is_dir():
                    f, s = count_files(objects)
                    files += f
                    size += s
        return files, size

    # ---- phases --------------------------------------------------------------------------

    def measured(self, name: str, argv: list[str], drop: bool = True) -> dict:
        """A cofferctl ... --watch call with the page cache dropped before (unless `drop` is
        false or --no-drop-caches) and the peak RSS of server and agent reset: wall times, peaks,
        the final run."""
        if not self.args.no_restart_agent:
            self.restart_agent()
        dropped = drop_caches() if drop and not self.args.no_drop_caches else False
        time.sleep(0.3)
        self.rss.begin()
        run, wall, rc = self.ctl_watch(name, *argv)
        procs = self.rss.end()
        created, finished = parse_ts(run.get("createTime")), parse_ts(run.get("finishTime"))
        res = {"step": name, "argv": argv, "exit_code": rc, "state": run.get("state"), "run_id": run.get("id"),
               "wall_s": round(wall, 3),
               "run_s": round(finished - created, 3) if created and finished else None,
               "caches_dropped": dropped, "processes": procs,
               "server_peak_rss_mib": procs["server"]["peak_rss_mib"],
               "agent_peak_rss_mib": procs["agent"]["peak_rss_mib"]}
        if run.get("state") != "RUN_STATE_SUCCEEDED":
            res["error"] = run.get("errorMessage", "")
            res["node_errors"] = [n.get("lastError") for n in run.get("nodes", []) if n.get("lastError")]
        return res | {"_run": run}

    def backup(self, kind: str) -> dict:
        argv = ["backup", "start", CLUSTER, "--location", LOCATION] + (["--incremental"] if kind == "incremental" else [])
        log(f"{kind}: cofferctl {' '.join(argv)} --watch")
        res = self.measured(kind, argv, drop=False)  # setup: the data set as the page cache has it
        run = res.pop("_run")
        if res["state"] != "RUN_STATE_SUCCEEDED":
            raise BenchError(f"{kind} backup ended {res['state']}: {res.get('error')} {res.get('node_errors')}")
        res["backup_id"] = run.get("backupId")
        b = self.ctl("backup", "show", res["backup_id"], check=False).get("backup", {})
        tot = b.get("totals", {})
        res.update({"backup_kind": b.get("kind"), "file_count": u64(tot, "fileCount"),
                    "uploaded_objects": u64(tot, "uploadedObjects"), "uploaded_bytes": u64(tot, "uploadedBytes")})
        log(f"{kind}: {res['wall_s']:.2f} s (run {res['run_s']} s), {res['file_count']} files, "
            f"{res['uploaded_objects']} objects uploaded; peak RSS server {res['server_peak_rss_mib']} MiB, "
            f"agent {res['agent_peak_rss_mib']} MiB")
        return res

    def step(self, name: str) -> dict:
        if name.startswith("validate"):
            argv = ["location", "validate", LOCATION, "--cluster", CLUSTER]
        elif name == "deep":
            argv = ["location", "validate", LOCATION, "--cluster", CLUSTER, "--deep",
                    "--sample", str(self.args.deep_sample)]
        else:
            argv = ["location", "purge", LOCATION, "--cluster", CLUSTER] + (["--dry-run"] if name == "purge-dry" else [])
        log(f"{name}: cofferctl {' '.join(argv)} --watch")
        res = self.measured(name, argv)
        run = res.pop("_run")
        if name.startswith("validate") or name == "deep":
            v = run.get("validation") or {}
            backups = v.get("backups", [])
            res["counts"] = {"listed": u64(v, "objectsListed"), "referenced": u64(v, "objectsReferenced"),
                             "missing": u64(v, "objectsMissing"), "orphaned": u64(v, "objectsOrphaned"),
                             "orphaned_bytes": u64(v, "orphanedBytes"), "backups": len(backups),
                             "restorable": sum(1 for b in backups if b.get("restorable")),
                             "files_checked": sum(u64(b, "filesChecked") for b in backups),
                             "damaged": u64(v, "objectsDamaged"), "to_verify": u64(v, "objectsToVerify"),
                             "verified": u64(v, "objectsVerified"), "bytes_verified": u64(v, "bytesVerified")}
        else:
            pr = run.get("purgeResult") or {}
            res["counts"] = {"listed": u64(pr, "objectsListed"), "unreferenced": u64(pr, "objectsUnreferenced"),
                             "unreferenced_bytes": u64(pr, "bytesUnreferenced"),
                             "reclaimed": u64(pr, "objectsReclaimed"), "deleted": u64(pr, "objectsDeleted"),
                             "bytes_freed": u64(pr, "bytesFreed"), "waits": u64(pr, "waits")}
        log(f"{name}: exit {res['exit_code']}, {res['state']}, {res['wall_s']:.2f} s (run {res['run_s']} s); "
            f"peak RSS server {res['server_peak_rss_mib']} MiB, agent {res['agent_peak_rss_mib']} MiB; "
            f"{res['counts']}")
        return res

    def run(self) -> int:
        a = self.args
        self.build()
        self.check_space()
        gen = self.data.ensure()
        self.results["dataset"] = self.data.shape() | {"generate_s": round(gen, 1) if gen else None}
        self.start()
        setup = self.results["setup"]
        setup["full"] = self.backup("full")
        change = self.data.mutate()
        setup["change"] = change
        log(f"changed {change['changed_files']} of {a.files} files ({change['changed_percent']}%) in {change['seconds']} s")
        try:
            setup["incremental"] = self.backup("incremental")
        finally:
            self.data.undo_mutate()  # the agent's journal is of this run only: the data set is reusable
        self.ctl("backup", "delete", setup["full"]["backup_id"])
        log(f"deleted the full backup {setup['full']['backup_id']}")
        t0 = time.monotonic()
        setup["stored_objects_before"] = self.stored_objects()[0]
        log(f"the location holds {setup['stored_objects_before']} object files "
            f"(counted in {time.monotonic() - t0:.1f} s, untimed)")
        for name in STEPS:
            try:
                self.results["steps"][name] = self.step(name)
            except (BenchError, subprocess.TimeoutExpired) as e:
                log(f"{name}: ERROR: {e}")
                self.results["steps"][name] = {"step": name, "error": str(e)}
        setup["stored_objects_after"] = self.stored_objects()[0]
        return self.report()

    # ---- report --------------------------------------------------------------------------

    def report(self) -> int:
        a = self.args
        lines: list[str] = []
        p = lambda s="": lines.append(s)  # noqa: E731
        setup, steps = self.results["setup"], self.results["steps"]
        changed = setup["change"]["changed_files"]
        p()
        p(f"Coffer location lifecycle benchmark  (git {self.results['versions']['git']}, {os.cpu_count()} cores)")
        p(f"data set: {a.files} files of {a.file_size} bytes, each its own content, folders of {a.files_per_folder}; "
          f"{changed} files ({setup['change']['changed_percent']}%) changed before the incremental; "
          f"location fs, compression {a.compression or 'default'}")
        cache = ("page cache dropped before each step" if any(r.get("caches_dropped") for r in steps.values())
                 else "page cache NOT dropped (not root, or --no-drop-caches)")
        p(f"{cache}; peak RSS = VmHWM after the step, reset before it (clear_refs), and VmRSS polled every "
          f"{a.sample_interval} s; agent {'kept running' if a.no_restart_agent else 'restarted before each run'}, "
          f"server kept running")
        p()
        p("setup (not the subject):")
        for k in ("full", "incremental"):
            r = setup.get(k)
            if r:
                p(f"  {k:<12} {r['wall_s']:>9.2f} s (run {r['run_s']} s)  {r['file_count']} files, "
                  f"{r['uploaded_objects']} objects uploaded, {mib(r['uploaded_bytes']):.1f} MiB; "
                  f"peak RSS server {r['server_peak_rss_mib']} MiB, agent {r['agent_peak_rss_mib']} MiB")
        p(f"  object files in the location after deleting the full backup: {setup.get('stored_objects_before')}; "
          f"after the steps: {setup.get('stored_objects_after')}")
        p()
        hdr = (f"{'step':<11}{'exit':>5}{'wall s':>9}{'run s':>9}{'srv MiB':>9}{'agt MiB':>9}{'srv cpu':>9}"
               f"{'agt cpu':>9}  counts")
        p(hdr)
        p("-" * (len(hdr) + 60))
        for name in STEPS:
            r = steps.get(name, {})
            if "exit_code" not in r:
                p(f"{name:<11}  ERROR: {r.get('error', 'not run')[:200]}")
                continue
            c = r["counts"]
            if name == "deep":
                counts = (f"verified {c['verified']} of {c['to_verify']} chosen ({mib(c['bytes_verified']):.2f} MiB), "
                          f"damaged {c['damaged']}, {c['restorable']}/{c['backups']} backups restorable")
            elif name.startswith("validate"):
                counts = (f"listed {c['listed']}, referenced {c['referenced']}, missing {c['missing']}, "
                          f"orphaned {c['orphaned']} ({mib(c['orphaned_bytes']):.2f} MiB), "
                          f"{c['restorable']}/{c['backups']} backups restorable, {c['files_checked']} files checked")
            else:
                counts = (f"listed {c['listed']}, unreferenced {c['unreferenced']} "
                          f"({mib(c['unreferenced_bytes']):.2f} MiB), deleted {c['deleted']}, freed "
                          f"{mib(c['bytes_freed']):.2f} MiB, reclaimed {c['reclaimed']}, waits {c['waits']}")
            if r["state"] != "RUN_STATE_SUCCEEDED":
                counts = f"{r['state']}: {r.get('error', '')[:80]} " + counts
            sp, ap = r["processes"]["server"], r["processes"]["agent"]
            p(f"{name:<11}{r['exit_code']:>5}{r['wall_s']:>9.2f}{(r['run_s'] or 0):>9.2f}"
              f"{r['server_peak_rss_mib']:>9.1f}{r['agent_peak_rss_mib']:>9.1f}{(sp['cpu_s'] or 0):>9.2f}"
              f"{(ap['cpu_s'] or 0):>9.2f}  {counts}")
        p()
        p("wall s = cofferctl start -> exit (client); run s = the run's createTime -> finishTime (server clock).")
        p("srv/agt MiB = peak RSS of coffer-server / coffer-agent during the step; cpu = user+sys seconds.")
        p("RSS before -> after each step (MiB): " + "; ".join(
            f"{n} srv {r['processes']['server']['rss_before_mib']}->{r['processes']['server']['rss_after_mib']} "
            f"agt {r['processes']['agent']['rss_before_mib']}->{r['processes']['agent']['rss_after_mib']}"
            for n, r in steps.items() if "processes" in r))
        # What the scenario implies: the full backup stored `files` objects, the incremental
        # `changed` more; deleting the full leaves the old content of the changed files unreferenced.
        total = a.files + changed
        checks = []

        def check(what: str, got, want) -> None:
            checks.append((what, got, want, got == want))

        v1, pd, pu, v2, dv = (steps.get(n, {}).get("counts") for n in STEPS)
        if v1:
            check("validate: objects listed = files + changed", v1["listed"], total)
            check("validate: orphaned = changed", v1["orphaned"], changed)
            check("validate: every backup restorable (1 left)", (v1["restorable"], v1["backups"]), (1, 1))
        if pd:
            check("purge --dry-run: unreferenced = changed", pd["unreferenced"], changed)
            check("purge --dry-run: deleted nothing", pd["deleted"], 0)
        if pu:
            check("purge: deleted = changed", pu["deleted"], changed)
        if v2:
            check("validate-2: objects listed = files", v2["listed"], a.files)
            check("validate-2: orphaned = 0", v2["orphaned"], 0)
            check("validate-2: every backup restorable", (v2["restorable"], v2["backups"]), (1, 1))
        if dv:
            want_verified = max(1, -(-a.files * a.deep_sample // 100))
            check(f"deep: verified = {a.deep_sample}% of files", dv["verified"], want_verified)
            check("deep: damaged = 0", dv["damaged"], 0)
        check("object files on disk after = files", setup.get("stored_objects_after"), a.files)
        for name in STEPS:
            r = steps.get(name, {})
            want = 0
            if "exit_code" in r:
                check(f"{name}: cofferctl exit code", r["exit_code"], want)
        p()
        p("checks:")
        for what, got, want, ok in checks:
            p(f"  {what:<46} {str(got):>16} (want {want})   {'PASS' if ok else 'MISS'}")
        self.results["checks"] = [{"check": w, "got": g, "want": t, "pass": ok} for w, g, t, ok in checks]
        text = "\n".join(lines)
        print(text, flush=True)
        self.results["report"] = text
        out_path = self.work / "results.json"
        out_path.write_text(json.dumps(self.results, indent=1, default=str))
        print(f"\nresults: {out_path}\nlogs:    {self.logs}")
        return 0 if all(c[3] for c in checks) else 1

    def close(self) -> None:
        self.procs.stop_all()
        self.rss.close()
        if not self.args.keep and self.run_dir.exists():
            log(f"removing {self.run_dir} (catalog, agent state, location; --keep keeps it)")
            shutil.rmtree(self.run_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=1_000_000, help="files in the data set (default 1000000)")
    ap.add_argument("--file-size", type=int, default=64, help="bytes per file (default 64, at least 16)")
    ap.add_argument("--files-per-folder", type=int, default=1000, help="files per folder (default 1000)")
    ap.add_argument("--change-percent", type=float, default=10.0,
                    help="files given new content before the incremental (default 10)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--deep-sample", type=int, default=1, metavar="PERCENT",
                    help="share of the objects the deep validation verifies (default 1)")
    ap.add_argument("--compression", metavar="CODEC",
                    help="the location's compression: none, zstd or zstd:LEVEL (default: the server's)")
    ap.add_argument("--work", default=str(ROOT / "bench" / "out" / "lifecycle"),
                    help="working folder (data set, processes' state, location, logs, results.json)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries in target/release as they are")
    ap.add_argument("--no-drop-caches", action="store_true",
                    help="keep the page cache before each measured step (default: dropped when root)")
    ap.add_argument("--no-restart-agent", action="store_true",
                    help="keep the agent running across steps (default: restarted before each backup and "
                         "step, so its peak RSS is that step's alone; the server is never restarted)")
    ap.add_argument("--keep", action="store_true", help="keep <work>/run (catalog, agent state, location)")
    ap.add_argument("--run-timeout", type=float, default=3600)
    ap.add_argument("--sample-interval", type=float, default=0.1, help="VmRSS polling interval (default 0.1 s)")
    args = ap.parse_args()
    if args.files < 1 or args.file_size < 16 or args.files_per_folder < 1 or not 0 < args.change_percent <= 100:
        ap.error("--files >= 1, --file-size >= 16, --files-per-folder >= 1, 0 < --change-percent <= 100")

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
