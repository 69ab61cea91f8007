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

``python -m bmrs grid --profile NAME`` runs the tasks through submitit (:func:`main`):

* ``--executor local``: ``--workers N`` processes on this machine, each pulling tasks (:func:`work`);
* ``--executor slurm``: one Slurm job per task, one job array per wave, wave 1 after wave 0 (``afterany``);
  each job is a :class:`GridJob` (a submitit ``Checkpointable``), so a job that reaches its time limit or
  is preempted is requeued and resumes from the run's last completed epoch.

Rerunning computes only what is missing or failed. Bookkeeping lives under ``<results>/.grid/``:
``claims/`` (who computes a task now), ``failed/`` (a task's last error and its log files), ``jobs/``
(the Slurm job last submitted for a task) and ``logs/`` (the workers' and jobs' output).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import submitit

from bmrs.prune.registry import POST_HOC
from bmrs.run import experiments as ex
from bmrs.run.profile import CONFIGS_DIR, UsageError, load_profile
from bmrs.run.store import RESULTS_DIR
from bmrs.util import atomic, locks

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
        path = ex.sweep_path(ex.base_config(self.config), self.criterion, self.levels, self.finetune_epochs, "")
        return f"{self.config.run_id}/{path.stem}"

    def describe(self) -> str:
        c = self.config
        what = c.method if self.kind == "run" else f"sweep {self.criterion} ({len(self.levels)} levels)"
        return f"{c.network}/{c.dataset} seed {c.seed}: {what}"

    def done(self, results_dir: Path | str) -> bool:
        if self.kind == "run":
            return (ex.run_dir(self.config, results_dir) / "metrics.json").exists()
        base = ex.base_config(self.config)
        return ex.sweep_path(base, self.criterion, self.levels, self.finetune_epochs, results_dir).exists()

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


#: the keys ``--only`` selects on, and what each reads from a task
SELECT_KEYS = {
    "network": lambda t: t.config.network,
    "dataset": lambda t: t.config.dataset,
    "seed": lambda t: str(t.config.seed),
    "method": lambda t: t.config.method if t.kind == "run" else t.criterion,
    "kind": lambda t: t.kind,
}


def parse_only(items: Iterable[str] | None) -> dict[str, set[str]]:
    """``["network=mlp", "method=snr,l2"]`` -> {"network": {"mlp"}, "method": {"snr", "l2"}}; a bad item is a
    :class:`UsageError` naming the valid keys."""
    chosen: dict[str, set[str]] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        values = {v.strip() for v in value.split(",") if v.strip()}
        if not sep or key not in SELECT_KEYS or not values:
            raise UsageError(f"--only {item!r}: expected KEY=VALUE[,VALUE...] with KEY one of "
                             f"{', '.join(SELECT_KEYS)} (for example --only network=mlp --only seed=1000,100)")
        chosen.setdefault(key, set()).update(values)
    return chosen


def select(tasks: list[Task], only: dict[str, set[str]]) -> list[Task]:
    """The tasks matching every key of ``only`` (any of a key's values), plus the runs they need, in the
    original order. Selecting post-hoc or sweep tasks thus brings their base and reference runs along."""
    if not only:
        return list(tasks)
    by_key = {t.key: t for t in tasks}
    keep = {t.key for t in tasks if all(SELECT_KEYS[k](t) in v for k, v in only.items())}
    todo = list(keep)
    while todo:
        for need in by_key[todo.pop()].needs:
            if need in by_key and need not in keep:
                keep.add(need)
                todo.append(need)
    return [t for t in tasks if t.key in keep]


# --------------------------------------------------------------------------------------------------
# Who works on what: claims, run locks, failure records, Slurm job records (all under <results>/.grid/)
# --------------------------------------------------------------------------------------------------

GRID_DIR = ".grid"


def _grid_file(results_dir: Path | str, kind: str, task: Task, suffix: str) -> Path:
    return Path(results_dir) / GRID_DIR / kind / f"{task.lock_key}{suffix}"


def _locked_elsewhere(task: Task, results_dir: Path | str) -> bool:
    """Whether another process works on a task now: it holds the task's grid claim (a local worker or a
    Slurm job) or the run's own lock (any process that trains it, a notebook included)."""
    return (locks.held(_grid_file(results_dir, "claims", task, ".lock"))
            or locks.held(Path(results_dir) / ".locks" / f"{task.lock_key}.lock"))


@contextlib.contextmanager
def _claim(task: Task, results_dir: Path | str, *, wait: bool):
    """Hold the task's claim (an exclusive flock, released when the process ends however it ends). Yields
    True when held, False when another process holds it and ``wait`` is false. The claim is separate from
    the run's own lock (:func:`bmrs.run.experiments.run_lock`), which the same process takes inside it."""
    with locks.exclusive(_grid_file(results_dir, "claims", task, ".lock"), wait=wait) as held:
        yield held


def failure(task: Task, results_dir: Path | str) -> dict[str, Any] | None:
    """The recorded failure of a task ({"task", "error", "log", "stderr", "job_id", "when"}), or None."""
    try:
        return json.loads(_grid_file(results_dir, "failed", task, ".json").read_text())
    except (OSError, ValueError):
        return None


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def _record_failure(task: Task, results_dir: Path | str, error: str, *, log: str | None,
                    stderr: str | None = None, job_id: str | None = None) -> None:
    atomic.write_json(_grid_file(results_dir, "failed", task, ".json"),
                      {"task": task.describe(), "error": error, "log": log, "stderr": stderr, "job_id": job_id,
                       "when": time.time()})


def _clear_failure(task: Task, results_dir: Path | str) -> None:
    _grid_file(results_dir, "failed", task, ".json").unlink(missing_ok=True)


def job_record(task: Task, results_dir: Path | str) -> dict[str, Any] | None:
    """The Slurm job last submitted for a task ({"job_id", "log", "stderr", "submitted"}), or None."""
    try:
        return json.loads(_grid_file(results_dir, "jobs", task, ".json").read_text())
    except (OSError, ValueError):
        return None


def work(tasks: list[Task], results_dir: Path | str, *, since: float | None = None, log=print,
         log_file: str | None = None, poll_s: float = 0.5) -> dict[str, int]:
    """Pull tasks until none is left. Several workers may run this on the same task list and results
    directory at once (local processes, or jobs on a cluster's shared file system): a worker computes a
    task only while holding its claim, and only once the runs it needs are finished, so every task is
    computed by exactly one worker; a worker with nothing free to claim waits for the others.

    A task that raises is recorded as failed (its error and this worker's ``log_file``, see :func:`failure`),
    and so is a task whose input failed; the others go on. A failure recorded at or after ``since`` (the
    start of this grid command, by any of its workers) is not retried; an older one is, so rerunning the
    grid retries what failed before. Returns {"tasks", "computed", "failed"}."""
    since = time.time() if since is None else since
    by_run = {t.key: t for t in tasks if t.kind == "run"}
    failed: set[str] = set()
    computed = 0

    def failed_now(t: Task) -> bool:
        if t.key in failed:
            return True
        f = failure(t, results_dir)
        return f is not None and f.get("when", 0) >= since

    while True:
        pending = [t for t in tasks if not t.done(results_dir) and not failed_now(t)]
        if not pending:
            break
        progressed = False
        for task in pending:
            inputs = [by_run[n] for n in task.needs if n in by_run]
            broken = [i for i in inputs if failed_now(i)]
            if broken:
                message = f"not run: its input {broken[0].describe()} failed"
                _record_failure(task, results_dir, message, log=log_file)
                failed.add(task.key)
                log(f"[grid] FAILED {task.describe()}: {message}")
                progressed = True
                break
            if not all(i.done(results_dir) for i in inputs):
                continue  # its inputs are still being computed
            with _claim(task, results_dir, wait=False) as mine:
                if not mine:
                    continue  # another worker has it
                progressed = True
                if task.done(results_dir) or failed_now(task):
                    break  # finished (or failed) by another worker just before we claimed it
                log(f"[grid] start {task.describe()}")
                t0 = time.perf_counter()
                try:
                    task.execute(results_dir, log=log)
                except Exception as exc:  # noqa: BLE001 - recorded, reported by --status, retried on the next run
                    failed.add(task.key)
                    _record_failure(task, results_dir, _one_line(exc), log=log_file)
                    log(f"[grid] FAILED {task.describe()}: {_one_line(exc)}")
                else:
                    _clear_failure(task, results_dir)
                    computed += 1
                    log(f"[grid] done {task.describe()} in {time.perf_counter() - t0:.1f} s")
            break
        if not progressed:
            time.sleep(poll_s)
    return {"tasks": len(tasks), "computed": computed, "failed": len(failed)}


# --------------------------------------------------------------------------------------------------
# Slurm: one job per task, in job arrays, each task after exactly the jobs of its inputs
# --------------------------------------------------------------------------------------------------
#
# Why one array element per task (rather than a few elements that each pull tasks, as the local workers
# do): every run gets its own Slurm job, so its own time limit, log files, accounting (sacct) and requeue
# budget; a failure is isolated to one job whose log holds that task only; and Slurm's scheduler, not
# ours, spreads the work (--array-parallelism caps it). Wave 0 (everything that trains from scratch, and
# wave-1 tasks whose inputs are already finished) is one array. The remaining wave-1 tasks (post-hoc runs
# and sweeps, which start from wave-0 networks) are grouped by the inputs they wait for, one array per
# group, with ``--dependency=afterany:<the input jobs' array elements>``: so a post-hoc run starts as soon
# as its own base and reference runs end, not after the slowest run of the grid (a Table 2 ViT run takes
# days). afterany rather than afterok: afterok is never satisfied once an input fails, which would leave
# its dependants pending forever; instead a job whose inputs did not finish fails at once, saying so.

#: Slurm job states (squeue %T) of a job that has not ended
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
                 "SUSPENDED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "PREEMPTED"}
SUBMISSION_TOOLS = ("sbatch", "srun", "squeue", "sacct", "scontrol")


class SlurmUnavailable(RuntimeError):
    """--executor slurm on a machine without Slurm's client commands (exit 1)."""


class GridJob(submitit.helpers.Checkpointable):
    """One grid task as a Slurm job. When Slurm signals the job before its time limit or a preemption,
    submitit calls :meth:`checkpoint` and requeues the job with this same object; the task then resumes
    from the run's last completed epoch (the Trainer checkpoints after every epoch, see
    :mod:`bmrs.run.train`), so nothing is kept in the job's own state."""

    def __init__(self, task: Task, results_dir: str) -> None:
        self.task = task
        self.results_dir = results_dir

    def __call__(self) -> dict[str, Any]:
        os.environ.setdefault("BMRS_QUIET", "1")
        env = submitit.JobEnvironment()
        paths = env.paths
        where = {"log": str(paths.stdout), "stderr": str(paths.stderr), "job_id": env.job_id}
        task, rd = self.task, self.results_dir
        _timestamped(f"[grid] {task.describe()} (task {task.key}) in Slurm job {env.job_id}")
        missing = [n for n in task.needs if not (Path(rd) / n / "metrics.json").exists()]
        if missing:
            message = (f"not run: its input run(s) {', '.join(missing)} did not finish (failed or cancelled); "
                       f"python -m bmrs grid --status shows why, rerun the grid after fixing it")
            _record_failure(task, rd, message, **where)
            raise RuntimeError(message)
        with _claim(task, rd, wait=True):
            if not task.done(rd):
                t0 = time.perf_counter()
                try:
                    task.execute(rd, log=_timestamped)
                except Exception as exc:
                    _record_failure(task, rd, _one_line(exc), **where)
                    raise
                _timestamped(f"[grid] done in {time.perf_counter() - t0:.1f} s")
        _clear_failure(task, rd)
        _grid_file(rd, "jobs", task, ".json").unlink(missing_ok=True)
        return {"task": task.key}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        _timestamped(f"[grid] {self.task.describe()}: signalled by Slurm (time limit or preemption); requeueing, "
                     "it resumes from the run's last completed epoch")
        return super().checkpoint(*args, **kwargs)


def slurm_queue() -> dict[str, str] | None:
    """{job id: state} of this user's Slurm jobs that have not ended (one line per array element), or None
    where squeue is not available or does not answer."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return dict(line.split("|", 1) for line in out.stdout.split() if "|" in line)


def _active_job(task: Task, results_dir: Path | str, queue: dict[str, str] | None) -> str | None:
    """The id and state of a task's Slurm job if it is queued or running ("12_3 PENDING"), else None."""
    rec = job_record(task, results_dir)
    if rec is None or queue is None:
        return None
    state = queue.get(str(rec.get("job_id")))
    return f"{rec['job_id']} {state}" if state in ACTIVE_STATES else None


def _ended_unfinished(task: Task, results_dir: Path | str, queue: dict[str, str] | None) -> bool:
    """A task whose Slurm job has ended without finishing it (cancelled, killed, out of time or memory)."""
    rec = job_record(task, results_dir)
    return rec is not None and queue is not None and queue.get(str(rec.get("job_id"))) not in ACTIVE_STATES


def _last_line(path: str | None) -> str | None:
    try:
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    except (OSError, TypeError):
        return None
    return lines[-1] if lines else None


def _sacct_state(job_id: str) -> str | None:
    if shutil.which("sacct") is None:
        return None
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    states = [s.strip() for s in out.stdout.splitlines() if s.strip()]
    return states[-1] if out.returncode == 0 and states else None


def failure_details(task: Task, results_dir: Path | str) -> dict[str, Any]:
    """What --status shows of a failed task: {"error", "log", "stderr", "job_id"}. The task's own failure
    record, unless its Slurm job was submitted after that and ended without writing one (killed, cancelled,
    out of time or memory): then Slurm's final state of the job and the last line of its error log."""
    info = dict(failure(task, results_dir) or {})
    rec = job_record(task, results_dir)
    if rec is not None and rec.get("submitted", 0) > info.get("when", 0):
        state = _sacct_state(str(rec["job_id"])) or "ended"
        last = _last_line(rec.get("stderr"))
        info = {"error": f"Slurm job {rec['job_id']} {state} before the task finished"
                         + (f"; last line of its error log: {last}" if last else ""),
                "log": rec.get("log"), "stderr": rec.get("stderr"), "job_id": rec["job_id"]}
    return info


def status(tasks: list[Task], results_dir: Path | str, queue: dict[str, str] | None = None) -> dict[str, list[Task]]:
    """Tasks by state: done; running (a process holds its claim or run lock, or its Slurm job is queued or
    running, per ``queue`` from :func:`slurm_queue`); failed (a recorded failure, or a Slurm job that ended
    without finishing it); missing."""
    out: dict[str, list[Task]] = {"done": [], "running": [], "failed": [], "missing": []}
    for t in tasks:
        if t.done(results_dir):
            out["done"].append(t)
        elif _locked_elsewhere(t, results_dir) or _active_job(t, results_dir, queue):
            out["running"].append(t)
        elif failure(t, results_dir) is not None or _ended_unfinished(t, results_dir, queue):
            out["failed"].append(t)
        else:
            out["missing"].append(t)
    return out


def _summary_rows(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read the published summary {path} ({exc}); restore it (git checkout {path}) "
                         "or run without --skip-published") from exc


def _seed_of(value: str) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def published(tasks: list[Task], reference_dir: Path | str) -> set[str]:
    """The keys of the tasks whose results the committed summaries in ``reference_dir`` already hold: a run
    whose id a summary row names (``run_id``); a sweep with a curve of its network, dataset, seed and criterion
    whose levels are among the sweep's (a curve can end early: a criterion with its own threshold stops) and
    among no other sweep's of the grid; a base run when every task that needs it is published. What another machine or session computed and
    published is then not computed again (``--skip-published``)."""
    run_ids: set[str] = set()
    curves: dict[tuple, set[float]] = {}
    for path in sorted(Path(reference_dir).glob("*.csv")):
        rows = _summary_rows(path)
        for r in rows:
            if r.get("run_id"):
                run_ids.add(r["run_id"])
            if r.get("criterion") and r.get("level") not in (None, ""):
                key = (path.stem, r.get("dataset"), r.get("network"), _seed_of(r.get("seed")), r["criterion"])
                curves.setdefault(key, set()).add(round(float(r["level"]), 9))
    out = {t.key for t in tasks if t.kind == "run" and t.config.run_id in run_ids}
    sweeps = [(t, {round(float(x), 9) for x in t.levels}) for t in tasks if t.kind == "sweep"]
    for (_, dataset, network, seed, criterion), levels in curves.items():
        could = {t.key for t, own in sweeps if (t.config.dataset, t.config.network, t.config.seed, t.criterion)
                 == (dataset, network, seed, criterion) and levels <= own}
        if len(could) == 1:  # a curve that two sweeps could have written (say, one that stopped at level 0 of
            out |= could     # two level sets, or one of two base runs) is neither's: both are computed
    for t in tasks:
        dependents = [u for u in tasks if t.key in u.needs]
        if t.kind == "run" and t.config.method == "base" and dependents and all(u.key in out for u in dependents):
            out.add(t.key)
    return out


def without_published(tasks: list[Task], reference_dir: Path | str) -> tuple[list[Task], list[Task]]:
    """(tasks to compute, tasks skipped): the :func:`published` tasks are skipped, except a published run that
    a task still to compute needs (its model is not in the summaries: it is trained again)."""
    skip = published(tasks, reference_dir)
    while True:
        needed = {n for t in tasks if t.key not in skip for n in t.needs}
        if not needed & skip:
            break
        skip -= needed
    return [t for t in tasks if t.key not in skip], [t for t in tasks if t.key in skip]


# --------------------------------------------------------------------------------------------------
# The command: python -m bmrs grid
# --------------------------------------------------------------------------------------------------

SLURM_OPTIONS = ("partition", "time", "gpus_per_job", "cpus_per_job", "mem", "array_parallelism", "slurm_extra",
                 "signal_delay", "max_timeouts", "wait")
DEFAULT_TIME_MIN = 240


def add_arguments(parser) -> None:
    parser.add_argument("--profile", required=True, help="configs/<NAME>.yaml")
    parser.add_argument("--configs-dir", default=str(CONFIGS_DIR), help="where the profiles are (default: configs/)")
    parser.add_argument("--executor", default="local", choices=("local", "slurm"),
                        help="local: worker processes on this machine; slurm: one job per run on a Slurm cluster")
    parser.add_argument("--workers", type=int, default=None,
                        help="local: runs at a time (default 1; each run trains with one thread, so up to one per core)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR), help="the shared run cache")
    parser.add_argument("--log-dir", default=None, help="worker/job logs (default: <results-dir>/.grid/logs)")
    parser.add_argument("--only", action="append", metavar="KEY=VALUE",
                        help="only the tasks with this network, dataset, seed, method (a sweep's criterion) or kind "
                             "(run|sweep), and the runs they need; repeatable, values comma-separated: "
                             "--only network=mlp --only kind=sweep")
    parser.add_argument("--skip-published", action="store_true",
                        help="skip what the profile's committed summaries (its reference_dir, e.g. "
                             "results/reference/fmnist) already hold: how a grid too long for one machine or session "
                             "goes on elsewhere; publish with `python -m bmrs.report.study publish --merge`")
    parser.add_argument("--dry-run", action="store_true", help="list what would run (and what is done); submit nothing")
    parser.add_argument("--status", action="store_true",
                        help="done / running / failed / missing counts; each failed task with its log and error")
    s = parser.add_argument_group("slurm", "options of --executor slurm")
    s.add_argument("--partition", help="the partition to submit to (default: the cluster's default partition)")
    s.add_argument("--time", help=f"time limit of each job: minutes, HH:MM:SS or D-HH:MM:SS (default {DEFAULT_TIME_MIN} "
                                  "minutes); a job that reaches it is requeued and resumes from its last epoch")
    s.add_argument("--gpus-per-job", type=int, help="GPUs of each job (default 0)")
    s.add_argument("--cpus-per-job", type=int, help="CPUs of each job (default 1; a run trains with one thread)")
    s.add_argument("--mem", help="memory of each job, Slurm's syntax: 8G, 500M (default: the cluster's default)")
    s.add_argument("--array-parallelism", type=int, help="at most this many jobs of an array run at once (default 256)")
    s.add_argument("--slurm-extra", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable: --slurm-extra account=proj --slurm-extra qos=high")
    s.add_argument("--signal-delay", type=int,
                   help="seconds before the time limit at which Slurm signals a job to requeue itself (default 90)")
    s.add_argument("--max-timeouts", type=int,
                   help="how often one job may be requeued after reaching its time limit (default 20)")
    s.add_argument("--wait", action="store_true",
                   help="wait until every submitted job has ended, then print the status (exit 1 if a task failed)")


def _timestamped(message: str) -> None:
    print(time.strftime("%H:%M:%S"), message, flush=True)


def _local_worker(tasks: list[Task], results_dir: str, since: float) -> dict[str, int]:
    """One local worker (a submitit job): pull tasks until none is left, naming its log in failure records."""
    os.environ.setdefault("BMRS_QUIET", "1")
    log_file = str(submitit.JobEnvironment().paths.stdout)
    return work(tasks, results_dir, since=since, log=_timestamped, log_file=log_file)


def _print_status(tasks: list[Task], results_dir: Path | str, queue: dict[str, str] | None, *,
                  list_running: int = 20) -> dict[str, list[Task]]:
    st = status(tasks, results_dir, queue)
    print(" ".join(f"{k} {len(v)}" for k, v in st.items()) + f" (of {len(tasks)} tasks)")
    for t in st["running"][:list_running]:
        job = _active_job(t, results_dir, queue)
        print(f"  running: {t.describe()} [{t.key}]" + (f" (Slurm job {job})" if job else ""))
    if len(st["running"]) > list_running:
        print(f"  ... and {len(st['running']) - list_running} more running")
    for t in st["failed"]:
        info = failure_details(t, results_dir)
        print(f"  failed: {t.describe()} [{t.key}]")
        print(f"    log: {info.get('log')}")
        if info.get("stderr"):
            print(f"    stderr: {info['stderr']}")
        print(f"    error: {info.get('error')}")
    return st


def _minutes(value: str) -> int:
    """Slurm's time syntax -> whole minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise UsageError(f"--time {value!r} is not a Slurm time (minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:  # D-H[:M[:S]]
        total = days * 1440 + a * 60 + (b or 0) + (c or 0) / 60
    elif c is not None:  # H:M:S
        total = a * 60 + b + c / 60
    elif b is not None:  # M:S
        total = a + b / 60
    else:
        total = a
    minutes = int(-(-total // 1))  # round seconds up to a whole minute
    if minutes < 1:
        raise UsageError(f"--time must be at least one minute; got {value!r}")
    return minutes


def _slurm_parameters(args) -> dict[str, Any]:
    """submitit SlurmExecutor parameters from the command line (validated: UsageError)."""
    extra: dict[str, Any] = {}
    for item in args.slurm_extra or []:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
            raise UsageError(f"--slurm-extra {item!r}: expected KEY=VALUE with an sbatch option name, e.g. account=myproj")
        extra[key.replace("_", "-")] = value if sep else True
    if args.mem is not None:
        if not re.fullmatch(r"\d+(\.\d+)?[KMGT]?B?", args.mem.strip(), re.IGNORECASE):
            raise UsageError(f"--mem {args.mem!r}: use Slurm's syntax, e.g. 8G or 500M")
        extra["mem"] = args.mem.strip()
    for name in ("gpus_per_job", "cpus_per_job", "array_parallelism", "signal_delay", "max_timeouts"):
        value = getattr(args, name)
        low = 0 if name in ("gpus_per_job",) else 1
        if value is not None and value < low:
            raise UsageError(f"--{name.replace('_', '-')} must be >= {low}; got {value}")
    params: dict[str, Any] = {
        "job_name": f"bmrs-{args.profile}",
        "time": _minutes(args.time) if args.time is not None else DEFAULT_TIME_MIN,
        "cpus_per_task": args.cpus_per_job or 1,
        "array_parallelism": args.array_parallelism or 256,
        "signal_delay_s": args.signal_delay if args.signal_delay is not None else 90,
        "additional_parameters": extra,
    }
    if args.partition:
        params["partition"] = args.partition
    if args.gpus_per_job:
        params["gpus_per_node"] = args.gpus_per_job
    return params


def _check_slurm() -> None:
    missing = [tool for tool in SUBMISSION_TOOLS if shutil.which(tool) is None]
    if missing:
        raise SlurmUnavailable(f"--executor slurm needs Slurm's client commands ({', '.join(missing)} not found); "
                               "install slurm-client (Debian/Ubuntu: apt-get install slurm-client) and point "
                               "SLURM_CONF at your cluster, or use --executor local")


def _test_submission(executor) -> None:
    """``sbatch --test-only`` with the grid's job settings: Slurm validates partition, time, GPUs, memory and
    the extra options, and nothing is submitted; a refusal ends the command with Slurm's own message."""
    text = executor._make_submission_file_text("true", "test-only")
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as fh:
        fh.write(text)
    try:
        out = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(fh.name)
    if out.returncode != 0:
        lines = [ln.strip() for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
        lines = [ln for ln in lines if ln.startswith("sbatch: error: ")] or lines  # its own words, once
        message = "; ".join(ln.removeprefix("sbatch: error: ") for ln in lines) or f"sbatch exited with {out.returncode}"
        raise UsageError(f"Slurm refused the job settings: {message} (nothing was submitted)")


def _array_ids(job_ids: Iterable[str]) -> list[str]:
    return sorted({str(j).split("_")[0] for j in job_ids}, key=int)


def _slurm_executor(args, log_dir: Path):
    """A submitit SlurmExecutor with the command line's job settings, checked by Slurm (``--test-only``)."""
    params = _slurm_parameters(args)
    executor = submitit.SlurmExecutor(folder=log_dir, max_num_timeout=args.max_timeouts or 20)
    try:
        executor.update_parameters(**params)
    except ValueError as exc:
        raise UsageError(f"invalid Slurm settings: {' '.join(str(exc).split())}") from None
    _test_submission(executor)
    return executor


def _submit_slurm(args, tasks: list[Task], results_dir: Path, log_dir: Path) -> list[str]:
    """Submit every task that is neither done nor running, as one array per wave; returns the job ids
    this grid waits for (the new ones and those of earlier submissions still in the queue)."""
    executor = _slurm_executor(args, log_dir)
    queue = slurm_queue()
    st = status(tasks, results_dir, queue)
    todo = st["missing"] + st["failed"]
    active = [rec["job_id"] for t in st["running"] if _active_job(t, results_dir, queue)
              and (rec := job_record(t, results_dir))]
    if not todo:
        print(f"nothing to submit: done {len(st['done'])}, running {len(st['running'])} (of {len(tasks)} tasks)")
        return active
    order = {t.key: i for i, t in enumerate(tasks)}
    todo.sort(key=lambda t: order[t.key])
    by_key = {t.key: t for t in tasks}
    job_of = {t.key: str(job_record(t, results_dir)["job_id"]) for t in st["running"]
              if _active_job(t, results_dir, queue)}  # inputs still in the queue from an earlier submission
    todo_keys = {t.key for t in todo}
    groups: dict[tuple[str, ...], list[Task]] = {(): []}  # the inputs a task waits for -> its array
    for t in todo:
        waits = tuple(n for n in t.needs if n in todo_keys or n in job_of)
        groups.setdefault(waits, []).append(t)
    n_submitted, new_ids = 0, []
    for waits, group in groups.items():  # () first: every input a later group waits for is submitted by then
        if not group:
            continue
        deps = sorted({job_of[n] for n in waits})
        wave = max(t.wave for t in group)
        executor.update_parameters(job_name=f"bmrs-{args.profile}-w{wave}",
                                   dependency=f"afterany:{':'.join(deps)}" if deps else None)
        jobs = executor.submit_array([GridJob(t, str(results_dir)) for t in group])
        for t, job in zip(group, jobs):
            job_of[t.key] = str(job.job_id)
            atomic.write_json(_grid_file(results_dir, "jobs", t, ".json"),
                              {"job_id": job.job_id, "log": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                               "submitted": time.time(), "task": t.describe()})
        new_ids += [str(job.job_id) for job in jobs]
        n_submitted += len(jobs)
        what = ", ".join(sorted({by_key[n].describe() for n in waits}))
        after = f", after job(s) {' '.join(deps)} ({what}) end" if deps else ""
        print(f"wave {wave}: {len(jobs)} task(s) as Slurm job {_array_ids(j.job_id for j in jobs)[0]}{after}", flush=True)
    print(f"submitted {n_submitted} task(s); logs in {log_dir}; "
          f"follow with: python -m bmrs grid --profile {args.profile} --executor slurm --status", flush=True)
    return active + new_ids


def _wait_slurm(tasks: list[Task], results_dir: Path, job_ids: list[str], poll_s: float = 5.0) -> None:
    """Wait until none of job_ids is in the queue, printing the counts when they change."""
    last = None
    while True:
        queue = slurm_queue()
        if queue is not None and not any(queue.get(j) in ACTIVE_STATES for j in job_ids):
            return
        counts = {k: len(v) for k, v in status(tasks, results_dir, queue).items()}
        if counts != last:
            _timestamped(" ".join(f"{k} {v}" for k, v in counts.items()))
            last = counts
        time.sleep(poll_s)


def main(args) -> int:
    """``python -m bmrs grid``: see :func:`add_arguments`."""
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be >= 1; got {args.workers}")
    if args.executor == "local":
        given = [f"--{n.replace('_', '-')}" for n in SLURM_OPTIONS if getattr(args, n, None) not in (None, False)]
        if given:
            raise UsageError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --executor slurm; "
                             "add --executor slurm or drop them")
    elif args.workers is not None:
        raise UsageError("--workers applies to --executor local; Slurm runs one job per task "
                         "(limit how many run at once with --array-parallelism)")
    only = parse_only(args.only)
    tasks = select(expand(args.profile, args.configs_dir), only)
    if not tasks:
        raise UsageError(f"--only {' '.join(args.only)} selects no task of profile {args.profile!r}; "
                         "python -m bmrs grid --profile NAME --dry-run lists them")
    skipped: list[Task] = []
    if args.skip_published:
        reference = load_profile(args.profile, Path(args.configs_dir or CONFIGS_DIR)).reference_dir()
        tasks, skipped = without_published(tasks, reference)
        print(f"{len(skipped)} task(s) published in {reference}: skipped", flush=True)
        if not tasks:
            print("nothing left to compute")
            return 0
    results_dir = Path(args.results_dir)
    log_dir = Path(args.log_dir or results_dir / GRID_DIR / "logs")
    if args.executor == "slurm":
        _slurm_parameters(args)  # invalid settings end here (exit 2), also for --dry-run and --status
        _check_slurm()
    queue = slurm_queue() if args.executor == "slurm" or shutil.which("squeue") else None
    if args.dry_run or args.status:
        if args.dry_run:
            st = status(tasks, results_dir, queue)
            state = {t.key: k for k, ts in st.items() for t in ts} | {t.key: "published" for t in skipped}
            for t in sorted(tasks + skipped, key=lambda t: t.wave):
                print(f"{state[t.key]:<8} wave {t.wave}  {t.describe()}  [{t.key}]")
            todo = len(st["missing"]) + len(st["failed"])
            print(f"would {'submit' if args.executor == 'slurm' else 'compute'} {todo} task(s)")
        _print_status(tasks, results_dir, queue)
        return 0
    if args.executor == "slurm":
        try:
            job_ids = _submit_slurm(args, tasks, results_dir, log_dir / "slurm")
            if not args.wait:
                return 0
            _wait_slurm(tasks, results_dir, job_ids)
        except KeyboardInterrupt:
            print(f"interrupted: the Slurm jobs keep running; python -m bmrs grid --profile {args.profile} "
                  "--executor slurm --status shows them (scancel stops them)", file=sys.stderr)
            return 130
        st = _print_status(tasks, results_dir, slurm_queue())
        return 1 if st["failed"] or st["missing"] else 0

    workers = args.workers or 1
    started = time.time()
    executor = submitit.LocalExecutor(folder=log_dir / "local")
    executor.update_parameters(timeout_min=60 * 24 * 365)
    jobs = []
    with executor.batch():
        for _ in range(workers):
            jobs.append(executor.submit(_local_worker, tasks, str(results_dir), started))
    print(f"{workers} local worker(s) started; logs in {log_dir / 'local'}", flush=True)
    try:
        results = [job.result() for job in jobs]
    except KeyboardInterrupt:
        for job in jobs:
            job.cancel()
        print("interrupted: the workers stop; each run keeps its last completed epoch, rerun to resume",
              file=sys.stderr)
        return 130
    except submitit.core.utils.FailedJobError as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise RuntimeError(f"a local worker crashed: {lines[-1] if lines else exc}; logs in {log_dir / 'local'}") from None
    print(f"computed {sum(r['computed'] for r in results)} task(s) in {time.time() - started:.0f} s")
    st = _print_status(tasks, results_dir, queue)
    return 1 if st["failed"] or st["missing"] else 0
