"""How much do local grid workers buy? A part of a profile computed from an empty cache with 1 worker and with
N workers, side by side in one run, and the ratio of their wall times.

Each run trains with one intra-op thread (bmrs.run.experiments.RUN_THREADS), so on a machine with N free cores
N workers should approach N times the throughput of one; what stops them is the tasks' dependencies (a post-hoc
run waits for its base and reference runs, a sweep for its base), the last task left alone at the end, and
memory bandwidth. The two grids are computed into two fresh temporary result directories, one after the other,
by ``python -m bmrs grid`` itself; both compute the same tasks (the script checks that the run directories agree).
Measure on a quiet machine: other work on the cores changes both times, and not in proportion.

Usage:
    python benchmarks/grid_workers.py              # quick profile: six independent LeNet5 runs, 1 vs 2 workers
    python benchmarks/grid_workers.py --profile quick --only network=mlp --workers 2
    python benchmarks/grid_workers.py --profile quick --only network=lenet5 --only kind=run --keep /tmp/bench

Prints: the tasks, each grid's wall time, tasks per minute, and the speed-up t(1) / t(N) with its
efficiency t(1) / (N · t(N)).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def grid(profile: str, only: list[str], workers: int, results: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bmrs", "grid", "--profile", profile, "--results-dir", str(results),
           *[a for o in only for a in ("--only", o)], *extra]
    if "--dry-run" not in extra:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "BMRS_QUIET": "1", "PYTHONHASHSEED": "0"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick")
    ap.add_argument("--only", action="append", default=None,
                    help="the part of the profile to compute (grid --only; default: six independent LeNet5 runs, "
                         "network=lenet5 kind=run method=none,etheta,snr,bmrs_n,bmrs_u8,bmrs_u4)")
    ap.add_argument("--workers", type=int, default=2, help="N, compared against 1 (default 2)")
    ap.add_argument("--keep", help="compute into this directory (two subdirectories) and keep it")
    args = ap.parse_args(argv)
    if args.workers < 2:
        ap.error("--workers must be at least 2 (it is compared against one worker)")
    only = args.only or ["network=lenet5", "kind=run", "method=none,etheta,snr,bmrs_n,bmrs_u8,bmrs_u4"]
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bmrs-grid-bench-"))
    listing = grid(args.profile, only, 1, base / "listing", "--dry-run")
    if listing.returncode != 0:
        print(listing.stderr.strip(), file=sys.stderr)
        return listing.returncode
    tasks = [ln for ln in listing.stdout.splitlines() if ln.startswith("missing")]
    print(f"{len(tasks)} task(s) of profile {args.profile!r} ({' '.join('--only ' + o for o in only)}), "
          f"{os.cpu_count()} CPU(s); results under {base}")
    times: dict[int, float] = {}
    for n in (1, args.workers):
        results = base / f"workers{n}"
        if results.exists() and any(results.iterdir()):
            print(f"error: {results} is not empty; the benchmark needs an empty cache (remove it or choose "
                  "another --keep)", file=sys.stderr)
            return 1
        t0 = time.perf_counter()
        done = grid(args.profile, only, n, results)
        times[n] = time.perf_counter() - t0
        if done.returncode != 0:
            print(f"error: the grid with {n} worker(s) failed:\n{done.stdout}{done.stderr}", file=sys.stderr)
            return 1
        print(f"  {n} worker(s): {times[n]:7.1f} s   {len(tasks) / times[n] * 60:6.2f} tasks/min")
    runs = [{p.name for p in (base / f"workers{n}").iterdir() if not p.name.startswith(".")}
            for n in (1, args.workers)]
    if runs[0] != runs[1]:
        print("error: the two grids computed different runs", file=sys.stderr)
        return 1
    speedup = times[1] / times[args.workers]
    print(f"speed-up t(1)/t({args.workers}) = {speedup:.2f}, efficiency {speedup / args.workers:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
