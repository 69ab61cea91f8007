"""The grid: every run a profile's notebooks need, as data, in dependency order.

``expand(profile)`` reads ``configs/<profile>.yaml`` and returns the tasks notebooks 02-07 would compute:

* ``run``   — one training run (a :class:`bmrs.run.experiments.RunConfig`);
* ``sweep`` — one criterion's post-training sweep of one base network (Figure 2), stored under the base run.

Tasks come in waves: wave 0 trains every network that starts from scratch (the continuous-pruning runs of
Tables 1/2, Figures 1/4, and the base networks of the post-training studies); wave 1 holds what starts from
a wave-0 result (the post-hoc baselines L2, C-OBD, Dirichlet and EigenDamage prune a base network to the
compression BMRS_N reached; the sweeps prune a base network at every level). The notebooks obtain the same
runs through :mod:`bmrs.report.study`, which calls the same :func:`bmrs.run.experiments.run`, so after the grid has run
they train nothing; a run is never trained twice (its lock and its ``metrics.json``).
"""

from __future__ import annotations

import difflib
import fcntl
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from bmrs.prune.registry import POST_HOC
from bmrs.run import experiments as ex
from bmrs.run.profile import CONFIGS_DIR, UsageError, load_profile
from bmrs.run.store import RESULTS_DIR
from bmrs.util import atomic

SWEEP_FINETUNE_EPOCHS = 1


def p1_method(p1: float) -> str:
    """The method key of BMRS_U with precision p1 (Figure 4): bmrs_u8 / bmrs_u4 for the paper's two."""
    return {8: "bmrs_u8", 4: "bmrs_u4"}.get(p1, f"bmrs_u{p1:g}")


def split_setting(setting: dict[str, Any]) -> tuple[dict[str, Any], tuple[float, ...] | None]:
    """A setting's RunConfig fields, and its own post-training levels (key ``levels``) if it has them."""
    fields = {k: v for k, v in setting.items() if k != "levels"}
    levels = setting.get("levels")
    return fields, (tuple(float(x) for x in levels) if levels is not None else None)


def run_config(setting: dict[str, Any], method: str, seed: int, profile: str) -> ex.RunConfig:
    """The RunConfig of a profile setting (a dict of RunConfig fields), a method and a seed."""
    if not isinstance(setting, dict) or not {"dataset", "network"} <= set(setting):
        raise ValueError(f"a setting is a mapping with at least dataset and network; got {setting!r}")
    fields, _ = split_setting(setting)
    allowed = {f for f in ex.RunConfig.__dataclass_fields__} - {"method", "seed", "profile"}
    unknown = sorted(set(fields) - allowed)
    if unknown:
        hints = [f"{k!r} -> {m[0]!r}" for k in unknown if (m := difflib.get_close_matches(k, allowed, n=1))]
        raise ValueError(f"unknown run settings {unknown}" + (f" (did you mean {', '.join(hints)}?)" if hints else "")
                         + f"; allowed: levels, {', '.join(sorted(allowed))}")
    return ex.RunConfig(method=method, seed=int(seed), profile=profile, **fields)


@dataclass(frozen=True)
class Task:
    """One unit of grid work: a training run, or one criterion's post-training sweep of a base run."""

    kind: str  # "run" | "sweep"
    config: ex.RunConfig
    criterion: str | None = None
    levels: tuple[float, ...] = ()
    finetune_epochs: int = SWEEP_FINETUNE_EPOCHS
    wave: int = 0
    needs: tuple[str, ...] = field(default=(), compare=False)

    @property
    def lock_key(self) -> str:
        """The name of the lock :mod:`bmrs.run.experiments` takes for this task."""
        return self.key.replace("/", "-")

    @property
    def key(self) -> str:
        if self.kind == "run":
            return self.config.run_id
        path = ex._sweep_path(ex.base_config(self.config), self.criterion, self.levels, self.finetune_epochs, "")
        return f"{self.config.run_id}/{path.stem}"

    def describe(self) -> str:
        c = self.config
        what = c.method if self.kind == "run" else f"sweep {self.criterion} ({len(self.levels)} levels)"
        return f"{c.network}/{c.dataset} seed {c.seed}: {what}"

    def done(self, results_dir: Path | str) -> bool:
        if self.kind == "run":
            return (ex.run_dir(self.config, results_dir) / "metrics.json").exists()
        base = ex.base_config(self.config)
        return ex._sweep_path(base, self.criterion, self.levels, self.finetune_epochs, results_dir).exists()

    def execute(self, results_dir: Path | str, log=print) -> None:
        if self.kind == "run":
            ex.run(self.config, results_dir=results_dir, log=log)
        else:
            ex.run_posttrain(self.config, (self.criterion,), self.levels,
                             finetune_epochs_per_level=self.finetune_epochs, results_dir=results_dir, log=log)


def _run_tasks(settings: Iterable[dict], methods: Iterable[str], seeds: Iterable[int], profile: str) -> list[Task]:
    tasks = []
    for setting in settings:
        for seed in seeds:
            for method in methods:
                cfg = run_config(setting, method, seed, profile)
                if method in POST_HOC:
                    base = ex.base_config(cfg)
                    ref = cfg.replace(method="bmrs_n_code")
                    tasks += [Task("run", base), Task("run", ref),
                              Task("run", cfg, wave=1, needs=(base.run_id, ref.run_id))]
                else:
                    tasks.append(Task("run", cfg))
    return tasks


def _sweep_tasks(settings: Iterable[dict], seeds: Iterable[int], criteria: Iterable[str],
                 levels: Iterable[float], profile: str) -> list[Task]:
    tasks = []
    for setting in settings:
        _, own = split_setting(setting)
        lv = own if own is not None else tuple(float(x) for x in levels)
        for seed in seeds:
            base = ex.base_config(run_config(setting, "base", seed, profile))
            tasks.append(Task("run", base))
            tasks += [Task("sweep", base, criterion=c, levels=lv, wave=1, needs=(base.run_id,)) for c in criteria]
    return tasks


def expand(profile: str, configs_dir: Path | str | None = None) -> list[Task]:
    """Every task of a profile's notebooks, each once, ordered by wave (then by first appearance)."""
    prof = load_profile(profile, Path(configs_dir or CONFIGS_DIR))
    tasks: list[Task] = []
    p = prof.parameters
    s02 = p("02_figure1_units")
    if "setting" in s02:
        tasks += _run_tasks([s02["setting"]], [s02.get("method", "bmrs_n_code")], [s02.get("run_seed", 1000)], profile)
    s03 = p("03_continuous_pruning")
    tasks += _run_tasks(s03.get("table1_settings", []), s03.get("methods", []), s03.get("seeds", []), profile)
    tasks += _run_tasks(s03.get("table2_settings", []), s03.get("methods", []),
                        s03.get("table2_seeds", s03.get("seeds", [])), profile)
    s05 = p("05_bmrs_u_precision")
    if "setting" in s05:
        tasks += _run_tasks([s05["setting"]], [p1_method(v) for v in s05.get("p1_values", [])],
                            s05.get("seeds", []), profile)
    s04 = p("04_post_training")
    tasks += _sweep_tasks(s04.get("settings", []), s04.get("seeds", []), s04.get("criteria", []),
                          s04.get("levels", []), profile)
    s07 = p("07_baselines")
    tasks += _run_tasks(s07.get("settings", []), s07.get("methods", []), s07.get("seeds", []), profile)
    tasks += _sweep_tasks(s07.get("settings", []), s07.get("seeds", []), s07.get("criteria", []),
                          s07.get("levels", []), profile)
    s06 = p("06_cost")
    tasks += _run_tasks(s06.get("settings", []), s06.get("methods", []), s06.get("seeds", []), profile)
    unique: dict[str, Task] = {}
    for t in tasks:
        unique.setdefault(t.key, t)
    return sorted(unique.values(), key=lambda t: t.wave)  # stable: first appearance within a wave


def _locked_elsewhere(task: Task, results_dir: Path | str) -> bool:
    """Whether another process holds the lock of a task right now (without waiting for it)."""
    path = Path(results_dir) / ".locks" / f"{task.lock_key}.lock"
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


def _failure_path(task: Task, results_dir: Path | str) -> Path:
    return Path(results_dir) / ".grid" / "failed" / f"{task.lock_key}.json"


def failure(task: Task, results_dir: Path | str) -> dict[str, Any] | None:
    """The recorded failure of a task ({"error", "log", "when"}), or None."""
    path = _failure_path(task, results_dir)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def work(tasks: list[Task], results_dir: Path | str, *, log=print, log_file: str | None = None,
         keep_going: bool = True) -> dict[str, int]:
    """Pull tasks until none is left: skip finished ones, prefer tasks nobody else holds and whose inputs
    are finished, and wait on a held one only when nothing else is left. Several workers may run this on
    the same task list and results directory at once (locally or on a cluster's shared file system):
    every task is computed by exactly one of them. A task that raises is recorded as failed (its error and
    log file, see :func:`failure`) and skipped; the others go on. Returns {"tasks", "computed", "failed"}."""
    computed, failed = 0, []
    pending = list(tasks)
    while True:
        pending = [t for t in pending if not t.done(results_dir) and t not in failed]
        if not pending:
            break
        done_ids = {t.config.run_id for t in tasks if t.kind == "run" and t.done(results_dir)}
        ready = [t for t in pending if all(n in done_ids for n in t.needs) and not _locked_elsewhere(t, results_dir)]
        task = ready[0] if ready else pending[0]  # nothing free: wait on the first (its lock) or compute its inputs
        log(f"[grid] {task.describe()}")
        try:
            task.execute(results_dir, log=log)
        except Exception as exc:  # noqa: BLE001 - recorded, reported by --status, retried on the next submission
            if not keep_going:
                raise
            failed.append(task)
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            atomic.write_json(_failure_path(task, results_dir), {"task": task.describe(), "error": message,
                                                                 "log": log_file, "when": time.time()})
            log(f"[grid] FAILED {task.describe()}: {message}")
            continue
        _failure_path(task, results_dir).unlink(missing_ok=True)
        computed += 1
    return {"tasks": len(tasks), "computed": computed, "failed": len(failed)}


def status(tasks: list[Task], results_dir: Path | str) -> dict[str, list[Task]]:
    """Tasks by state: done, running (its lock is held), failed (a recorded failure), missing."""
    out: dict[str, list[Task]] = {"done": [], "running": [], "failed": [], "missing": []}
    for t in tasks:
        if t.done(results_dir):
            out["done"].append(t)
        elif _locked_elsewhere(t, results_dir):
            out["running"].append(t)
        elif failure(t, results_dir) is not None:
            out["failed"].append(t)
        else:
            out["missing"].append(t)
    return out


# --------------------------------------------------------------------------------------------------
# The command: python -m bmrs grid
# --------------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--profile", required=True, help="configs/<NAME>.yaml")
    parser.add_argument("--executor", default="local", choices=("local", "slurm"),
                        help="local: worker processes on this machine; slurm: jobs on a Slurm cluster")
    parser.add_argument("--workers", type=int, default=1, help="local: runs at a time (each uses one thread)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="the shared run cache")
    parser.add_argument("--log-dir", default=None, help="worker/job logs (default: <results-dir>/.grid/logs)")
    parser.add_argument("--dry-run", action="store_true", help="list what would run (and what is done)")
    parser.add_argument("--status", action="store_true", help="done / running / failed / missing counts")


def _worker(profile: str, results_dir: str, log_file: str | None) -> dict[str, int]:
    """One local worker or Slurm job: pull the profile's tasks until none is left."""
    os.environ.setdefault("BMRS_QUIET", "1")
    return work(expand(profile), results_dir, log=_timestamped, log_file=log_file)


def _timestamped(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _print_status(tasks: list[Task], results_dir: Path | str) -> None:
    st = status(tasks, results_dir)
    print(" ".join(f"{k} {len(v)}" for k, v in st.items()) + f" (of {len(tasks)} tasks)")
    for t in st["failed"]:
        info = failure(t, results_dir) or {}
        print(f"  failed: {t.describe()}\n    log: {info.get('log')}\n    error: {info.get('error')}")


def main(args) -> int:
    """``python -m bmrs grid``: see :func:`add_arguments`."""
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1; got {args.workers}")
    tasks = expand(args.profile)
    results_dir = Path(args.results_dir)
    if args.dry_run or args.status:
        if args.dry_run:
            for t in tasks:
                print(f"{'done   ' if t.done(results_dir) else 'pending'} wave {t.wave}  {t.describe()}")
        _print_status(tasks, results_dir)
        return 0
    import submitit  # deferred: only the grid command needs it

    log_dir = Path(args.log_dir or results_dir / ".grid" / "logs")
    if args.executor == "slurm":
        raise UsageError("--executor slurm is not available yet; use --executor local")
    executor = submitit.LocalExecutor(folder=log_dir)
    executor.update_parameters(timeout_min=60 * 24 * 7)
    jobs = []
    with executor.batch():
        for _ in range(args.workers):
            jobs.append(executor.submit(_worker, args.profile, str(results_dir), None))
    print(f"{args.workers} local worker(s) started; logs in {log_dir}")
    try:
        results = [job.result() for job in jobs]
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        print("interrupted; the workers stop (each run keeps its last completed epoch); rerun to resume",
              file=sys.stderr)
        return 130
    print(f"computed {sum(r['computed'] for r in results)} task(s)")
    _print_status(tasks, results_dir)
    return 1 if any(r["failed"] for r in results) else 0
