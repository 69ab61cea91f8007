"""``python -m bmrs grid --executor slurm`` against a real single-node Slurm (scripts/slurm_local.sh: munge,
MariaDB + slurmdbd for the accounting submitit needs, slurmctld, slurmd, all under a temporary directory).

One grid of a tiny profile plus one longer run, submitted with a one-minute time limit (a partition the
cluster lacks is refused first, nothing submitted): the waiting command is interrupted (Ctrl-C) and the jobs
keep running, as --status shows; one task is forced to fail (its run has a checkpoint that cannot be
resumed) and is reported with its Slurm log while the others go on; after the fix a resubmission gives only
that task a new job; the longer run reaches its time limit, is requeued by submitit's Checkpointable and
resumes from its last completed epoch (not from the start).

Needs root and Debian's packages (.ci/run installs them with apt); skipped, with the reason, otherwise."""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmrs.run import cli, grid
from bmrs.run import experiments as ex
from bmrs.run.config import RunConfig
from bmrs.run.store import run_dir
from conftest import TINY_NOTEBOOKS, write_profile

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "slurm_local.sh"
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
TOOLS = ("munged", "mungekey", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "srun",
         "squeue", "sacct", "sacctmgr", "scontrol")

#: the long run trains about this long in total, so a job with a one-minute limit (signalled 20-55 s
#: after it starts) cannot finish it in one go
LONG_RUN_S = 50.0
LONG_SETTING = {"dataset": "digits", "network": "mlp", "finetune_epochs": 0, "batch_size": 8}


def _unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a local Slurm needs Linux"
    if os.geteuid() != 0:
        return ("not root: scripts/slurm_local.sh starts munged, MariaDB and the Slurm daemons as root "
                "(CI runs this test as root through .ci/run)")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        if shutil.which("apt-get") is None:
            return f"Slurm is not installed ({', '.join(missing)} missing) and apt-get is not available to install it"
        return (f"Slurm's packages are not installed ({', '.join(missing)} missing): apt-get install -y "
                f"--no-install-recommends {PACKAGES} (.ci/run does this as root)")
    return None


def test_the_slurm_test_says_why_it_is_skipped(monkeypatch):
    """Never a silent skip: not root, or no packages and no apt, or no packages (with the install command)."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert "not root" in _unavailable()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert "apt-get is not available" in _unavailable()
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    assert f"apt-get install -y --no-install-recommends {PACKAGES}" in _unavailable()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """A running one-node Slurm; its daemons are stopped (by PID) whatever the tests do."""
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    t0 = time.perf_counter()
    try:
        start = subprocess.run([str(SCRIPT), "start", str(base)], capture_output=True, text=True, timeout=240)
        assert start.returncode == 0, f"scripts/slurm_local.sh start failed:\n{start.stderr}"
        match = re.fullmatch(r"export SLURM_CONF=(\S+)", start.stdout.strip())
        assert match, f"start printed {start.stdout!r}"
        yield {"base": base, "conf": match.group(1), "start_s": time.perf_counter() - t0}
    finally:
        stop = subprocess.run([str(SCRIPT), "stop", str(base)], capture_output=True, text=True, timeout=240)
        status = subprocess.run([str(SCRIPT), "status", str(base)], capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert "running (" not in status.stderr, f"a daemon survived the stop:\n{status.stderr}"


def _long_epochs(tmp_path: Path) -> int:
    """Epochs of the long run: LONG_RUN_S over one epoch's time, measured here on this machine."""
    cfg = RunConfig(method="none", seed=1000, profile="calibration", epochs=2, **LONG_SETTING)
    metrics = ex.run(cfg, results_dir=tmp_path / "calibration", log=lambda _: None)
    seconds = metrics["history"][-1]["seconds"]
    return max(10, min(400, math.ceil(LONG_RUN_S / seconds)))


def _profile(configs: Path, epochs: int) -> None:
    long = ", ".join(f"{k}: {v}" for k, v in {**LONG_SETTING, "epochs": epochs}.items())
    write_profile(configs, "slurmgrid", f"""profile: slurmgrid
notebooks:
  02_figure1_units:
    setting: {{{long}}}
    method: none
    run_seed: 1000
""" + TINY_NOTEBOOKS)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_slurm_grid_failure_interrupt_resubmission_and_requeue(slurm, tmp_path, capsys, monkeypatch):
    t0 = time.perf_counter()
    configs, results = tmp_path / "configs", tmp_path / "runs"
    epochs = _long_epochs(tmp_path)
    _profile(configs, epochs)
    tasks = grid.expand("slurmgrid", configs)
    assert len(tasks) == 7
    long = next(t for t in tasks if t.config.epochs == epochs)
    broken = next(t for t in tasks if t.config.method == "etheta")
    checkpoint = run_dir(broken.config, results) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")  # this run fails at once; the fix: delete the file

    env = {"SLURM_CONF": slurm["conf"], "BMRS_QUIET": "1", "PYTHONUNBUFFERED": "1"}
    grid_argv = ["grid", "--profile", "slurmgrid", "--configs-dir", str(configs), "--results-dir", str(results),
                 "--executor", "slurm"]
    submit = [*grid_argv, "--time", "1", "--signal-delay", "5", "--wait"]
    # Every command but the interrupted one runs in this process (the same code, without a fresh interpreter's
    # imports); the jobs it submits inherit this environment, as from a shell.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT)

    def run(argv):
        capsys.readouterr()
        code = cli.main(argv)
        out = capsys.readouterr()
        return code, out.out, out.err

    # 1. A partition the cluster lacks: Slurm's error, once, and nothing submitted.
    code, _, err = run([*grid_argv, "--partition", "nosuch"])
    assert code == 2 and err.count("invalid partition") == 1, err
    assert len(err.strip().splitlines()) == 1 and not (results / ".grid" / "jobs").exists()

    # 2. Submit and wait; Ctrl-C the waiting command: the jobs keep running.
    # SIGINT at its default even where the tests run in a shell's background (which ignores SIGINT in its jobs)
    proc = subprocess.Popen([sys.executable, "-m", "bmrs", *submit], cwd=ROOT, env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("submitted "):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    head = "".join(lines)
    assert proc.returncode == 130 and "keep running" in err, head + out + err
    assert "submitted 7 task(s)" in head and head.count("after job(s)") == 2, head  # wave 1 after its inputs
    _, st, _ = run([*grid_argv, "--status"])
    m = re.search(r"done (\d+) running (\d+) failed (\d+) missing (\d+)", st)
    assert m and int(m.group(2)) >= 1 and int(m.group(4)) == 0 and "(Slurm job " in st, st

    # 3. The forced failure is reported with its Slurm log while the other jobs go on.
    # (its job records the failure, then leaves the queue: until then --status counts the task as running)
    deadline = time.time() + 300
    while broken not in grid.status(tasks, results, grid.slurm_queue())["failed"]:
        assert time.time() < deadline, "the broken task's job never reported its failure"
        time.sleep(0.5)
    _, st, _ = run([*grid_argv, "--status"])
    info = grid.failure(broken, results)
    assert "cannot be resumed" in info["error"] and info["job_id"]
    assert f"failed: {broken.describe()} [{broken.key}]" in st, st
    assert f"log: {info['log']}" in st and f"error: {info['error']}" in st
    assert Path(info["log"]).is_file() and "cannot be resumed" in Path(info["stderr"]).read_text()
    _, dry, _ = run([*grid_argv, "--dry-run"])
    assert "would submit 1 task(s)" in dry, dry  # only the failed one: the rest are done or queued

    # 4. Fixed and resubmitted: only the failed task gets a new job; the command waits for every job.
    checkpoint.unlink()
    code, out, err = run(submit)
    assert code == 0, out + err
    assert "submitted 1 task(s)" in out and "done 7 running 0 failed 0 missing 0" in out, out
    assert grid.failure(broken, results) is None
    logs = sorted((results / ".grid" / "logs" / "slurm").glob("*_log.out"))
    jobs_of = {t.key: [p for p in logs if f"(task {t.key})" in p.read_text()] for t in tasks}
    assert {k: len(v) for k, v in jobs_of.items()} == {t.key: 2 if t is broken else 1 for t in tasks}, jobs_of

    # 5. The long run hit its time limit, was requeued and resumed from its last completed epoch.
    (log,) = jobs_of[long.key]
    text = log.read_text() + log.with_suffix(".err").read_text()
    assert "Requeued job" in text, text
    resumed = [int(k) for k in re.findall(r"resumed from \S+ after epoch (\d+)", text)]
    assert resumed and max(resumed) >= 1, text
    assert log.read_text().count("epoch 1:") == 1, "a requeued job restarted the run instead of resuming it"
    history = ex.read_json(run_dir(long.config, results) / "metrics.json")["history"]
    assert [r["epoch"] for r in history] == list(range(1, epochs + 1))
    print(f"\nSlurm start {slurm['start_s']:.1f} s; grid test {time.perf_counter() - t0:.1f} s "
          f"(long run: {epochs} epochs, {len(resumed)} requeue(s))")
