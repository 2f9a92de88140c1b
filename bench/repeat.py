#!/usr/bin/env python3
"""Runs bench/backup.py several times and judges the targets on the medians.

On a small VM one run's figures move by a third from run to run (rclone's more than Coffer's: see
bench/README.md), so a single PASS or MISS near a target says little. This runs the same
benchmark N times back to back (the trash of each run is kept for the next, so no run pays for
the previous one's deletions; the last run empties it), keeps each run's results.json, and
prints, per target and phase, the median and the range of the wall time and of the ratios to
rclone and restic, then the targets checked on the medians.

    python3 bench/repeat.py -n 5 -- --target fs
    python3 bench/repeat.py -n 3 -- --target s3 --compression none

Arguments after `--` go to every backup.py run. Exit code: 0 when every target passes on the
medians, 1 when one misses, 2 when a run failed.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("full", "incremental", "rclone", "restic", "restic-incremental", "restore", "rclone-down",
          "restic-restore")
# Each Coffer phase and the rclone phase it is compared with (a target for full and restore).
BASELINE = {"full": "rclone", "restore": "rclone-down"}
# Each Coffer phase and the restic phase it is compared with (a target for full and restore).
RESTIC_BASELINE = {"full": "restic", "incremental": "restic-incremental", "restore": "restic-restore"}
RESTIC_TARGETS = ("full", "restore")


def succeeded(phase: dict) -> bool:
    """A phase that succeeded (rclone and restic phases carry a state only when they failed)."""
    return phase.get("state", "RUN_STATE_SUCCEEDED") == "RUN_STATE_SUCCEEDED"


def ratios(phases: list[dict], phase: str, base: str | None) -> list[float]:
    return [p[phase]["mib_per_s"] / p[base]["mib_per_s"] for p in phases
            if phase in p and base in p and succeeded(p[phase]) and succeeded(p[base]) and p[base].get("mib_per_s")]


def spread(values: list[float], fmt: str) -> str:
    return (f"{format(statistics.median(values), fmt)} "
            f"({format(min(values), fmt)}-{format(max(values), fmt)})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", "--runs", type=int, default=5, help="how many runs (default 5)")
    ap.add_argument("bench_args", nargs=argparse.REMAINDER,
                    help="-- then the arguments of every backup.py run")
    args = ap.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    work = Path(next((bench_args[i + 1] for i, a in enumerate(bench_args[:-1]) if a == "--work"),
                     ROOT / "bench" / "out"))
    kept = work / "repeat"
    shutil.rmtree(kept, ignore_errors=True)
    kept.mkdir(parents=True)

    runs = []
    for index in range(args.runs):
        last = index == args.runs - 1
        argv = [sys.executable, str(ROOT / "bench" / "backup.py"), *bench_args]
        if index > 0 and "--no-build" not in argv:
            argv.append("--no-build")  # the first run built the binaries
        if not last and "--keep-trash" not in argv:
            argv.append("--keep-trash")
        print(f"== run {index + 1} of {args.runs}: {' '.join(argv[1:])}", flush=True)
        code = subprocess.run(argv, cwd=ROOT, env=os.environ).returncode
        if code == 2:
            print(f"run {index + 1} failed (exit 2): see its output above", file=sys.stderr)
            return 2
        shutil.copy(work / "results.json", kept / f"run-{index + 1}.json")
        runs.append(json.loads((work / "results.json").read_text()))

    print()
    print(f"{args.runs} runs (results in {kept}); median (min-max)")
    header = f"{'target':<7}{'phase':<20}{'wall s':>22}{'vs rclone':>24}{'vs restic':>24}"
    print(header)
    print("-" * len(header))
    verdicts = []
    for target in runs[0]["targets"]:
        phases = [run["targets"].get(target, {}).get("phases", {}) for run in runs]
        for phase in PHASES:
            # a failed restic phase has no wall time (0): left out
            walls = [p[phase]["wall_s"] for p in phases
                     if phase in p and (succeeded(p[phase]) or not phase.startswith("restic"))]
            if not walls:
                continue
            vs_rclone = ratios(phases, phase, BASELINE.get(phase))
            vs_restic = ratios(phases, phase, RESTIC_BASELINE.get(phase))
            print(f"{target:<7}{phase:<20}{spread(walls, '.2f'):>22}"
                  f"{spread(vs_rclone, '.2f') if vs_rclone else '-':>24}"
                  f"{spread(vs_restic, '.2f') if vs_restic else '-':>24}")
            if phase in BASELINE and vs_rclone:
                median = statistics.median(vs_rclone)
                verdicts.append((target, f"{phase} throughput >= 1.5x {BASELINE[phase]}",
                                 f"{median:.2f}x", median >= 1.5))
            if phase in RESTIC_TARGETS and vs_restic:
                median = statistics.median(vs_restic)
                verdicts.append((target, f"{phase} throughput >= 1.5x {RESTIC_BASELINE[phase]}",
                                 f"{median:.2f}x", median >= 1.5))
        shares = [p["incremental"]["wall_s"] / p["full"]["wall_s"] * 100
                  for p in phases if "incremental" in p and "full" in p]
        if shares:
            median = statistics.median(shares)
            verdicts.append((target, "incremental wall time <= 5% of full's",
                             f"{median:.1f}%", median <= 5.0))
        peaks = [p[phase].get("peak_agent_rss_mib", 0) for p in phases for phase in PHASES
                 if phase in p]
        if peaks:
            verdicts.append((target, "agent peak memory < 150 MiB (max of all runs)",
                             f"{max(peaks):.1f} MiB", max(peaks) < 150))
    print()
    print("targets, on the medians:")
    for target, check, value, ok in verdicts:
        print(f"  [{target}] {check:<52}{value:>10}   {'PASS' if ok else 'MISS'}")
    return 0 if all(ok for *_, ok in verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
