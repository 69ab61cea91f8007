"""The grid (bmrs.run.grid, ``python -m bmrs grid``) without Slurm: the smoke profile's expansion, the
notebooks' runs among its tasks, --dry-run / --status, bad input, and local submitit workers on a tiny
profile (each task computed once, a failure reported with its log while the rest finish, a rerun that
computes only the failed task, Ctrl-C and resume). The Slurm executor is tested in test_slurm.py."""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bmrs.nn.paper_metric import PAPER_METRIC_VERSION
from bmrs.report import study
from bmrs.run import cli, grid
from bmrs.run import experiments as ex
from bmrs.run.config import base_config
from bmrs.run.profile import load_profile
from bmrs.run.store import run_dir
from conftest import TINY_NOTEBOOKS, write_profile

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"

TINY = "profile: tiny\nnotebooks:\n" + TINY_NOTEBOOKS


def grid_args(configs: Path, results: Path, profile: str = "tiny", *extra: str) -> list[str]:
    return ["grid", "--profile", profile, "--configs-dir", str(configs), "--results-dir", str(results), *extra]


# --------------------------------------------------------------------------------------------------
# The smoke profile as data
# --------------------------------------------------------------------------------------------------

def test_smoke_expansion_in_dependency_order_each_task_once():
    tasks = grid.expand("smoke")
    keys = [t.key for t in tasks]
    assert len(keys) == len(set(keys)), "a task appears twice"
    runs = [t for t in tasks if t.kind == "run"]
    assert len({t.config.run_id for t in runs}) == len(runs)
    assert [t.wave for t in tasks] == sorted(t.wave for t in tasks)
    position = {t.key: i for i, t in enumerate(tasks)}
    by_key = {t.key: t for t in tasks}
    for i, t in enumerate(tasks):
        for need in t.needs:  # every input is a run task of a lower wave, listed earlier
            assert need in by_key and by_key[need].kind == "run" and position[need] < i
            assert by_key[need].wave < t.wave
        if t.kind == "sweep":
            assert base_config(t.config).run_id in t.needs
        if t.kind == "run" and t.config.method in ("l2", "c_obd", "dirichlet", "eigendamage"):
            assert set(t.needs) == {base_config(t.config).run_id, t.config.replace(method="bmrs_n_code").run_id}
    assert {t.wave for t in tasks} == {0, 1} and all(t.wave == 0 for t in tasks if not t.needs)


def notebook_parameters(stem: str, profile: str, configs_dir: Path | None = None) -> dict:
    """A notebook's parameters as the runner passes them: its parameters cell, then the profile's section."""
    path = next(NOTEBOOKS.glob(f"{stem}.py"))
    text = path.read_text()
    cell = text.split('# %% tags=["parameters"]', 1)[1].split("\n# %%", 1)[0]
    values: dict = {}
    exec(compile(ast.parse(cell), str(path), "exec"), {}, values)  # noqa: S102 - the project's own notebook
    prof = load_profile(profile, configs_dir or ROOT / "configs")
    values.update(prof.parameters(stem))
    return values


def notebook_requests(profile: str, monkeypatch, configs_dir: Path | None = None) -> tuple[set[str], set[str]]:
    """The run ids and sweep keys the study notebooks 02-07 ask bmrs.report.study for, recorded without
    training (the runner is replaced by a recorder that returns placeholder metrics)."""
    runs: set[str] = set()
    sweeps: set[str] = set()

    def fake_run(cfg, **_):
        runs.add(cfg.run_id)
        return {"final": {"test_acc": 0.0, "param_compression_pct": 0.0, "actual_param_compression_pct": 0.0,
                          "structure_compression_pct": 0.0, "paper_metric_version": PAPER_METRIC_VERSION},
                "history": [], "run_id": cfg.run_id}

    def fake_posttrain(base, criteria, levels, *, finetune_epochs_per_level, **_):
        for c in criteria:
            sweeps.add(grid.Task("sweep", base_config(base), criterion=c, levels=tuple(float(x) for x in levels),
                                 finetune_epochs=finetune_epochs_per_level).key)
        return {"curves": {c: [] for c in criteria}, "ranks": {}}

    class Recorded(Exception):
        pass

    def fake_load_model(*_, **__):
        raise Recorded

    monkeypatch.setattr(ex, "run", fake_run)
    monkeypatch.setattr(ex, "run_posttrain", fake_posttrain)
    monkeypatch.setattr(ex, "load_model", fake_load_model)
    p = lambda stem: notebook_parameters(stem, profile, configs_dir)  # noqa: E731
    with pytest.raises(Recorded):  # 02 loads the run's network after asking for it
        q = p("02_figure1_units")
        study.unit_statistics(q["setting"], q["method"], q["run_seed"], profile=profile)
    q = p("03_continuous_pruning")
    study.continuous(q["table1_settings"], q["methods"], q["seeds"], profile=profile, log=lambda _: None)
    study.continuous(q["table2_settings"], q["methods"], q["table2_seeds"], profile=profile, log=lambda _: None)
    q = p("04_post_training")
    study.posttrain(q["settings"], q["seeds"], q["criteria"], q["levels"], profile=profile, log=lambda _: None)
    q = p("05_bmrs_u_precision")
    study.p1_sweep(q["setting"], q["p1_values"], q["seeds"], profile=profile, log=lambda _: None)
    q = p("06_cost")
    study.continuous(q["settings"], q["methods"], q["seeds"], profile=profile, log=lambda _: None)
    q = p("07_baselines")
    study.continuous(q["settings"], q["methods"], q["seeds"], profile=profile, log=lambda _: None)
    study.posttrain(q["settings"], q["seeds"], q["criteria"], q["levels"], profile=profile, log=lambda _: None)
    return runs, sweeps


def test_every_run_and_sweep_the_smoke_notebooks_ask_for_is_a_grid_task(monkeypatch):
    keys = {t.key for t in grid.expand("smoke")}
    runs, sweeps = notebook_requests("smoke", monkeypatch)
    assert runs and sweeps
    assert runs <= keys, f"runs the notebooks train that the grid lacks: {sorted(runs - keys)}"
    assert sweeps <= keys, f"sweeps the notebooks compute that the grid lacks: {sorted(sweeps - keys)}"


# --------------------------------------------------------------------------------------------------
# --dry-run, --status, bad input (no training)
# --------------------------------------------------------------------------------------------------

def test_dry_run_lists_tasks_and_status_shows_a_failure_with_its_log(tmp_path, capsys):
    configs = write_profile(tmp_path / "configs", "tiny", TINY)
    results = tmp_path / "runs"
    assert cli.main(grid_args(configs, results, "tiny", "--dry-run")) == 0
    out = capsys.readouterr().out
    tasks = grid.expand("tiny", configs)
    assert len(tasks) == 6 and [t.wave for t in tasks].count(1) == 2
    for t in tasks:
        assert re.search(rf"^missing\s+wave {t.wave}\s+{re.escape(t.describe())}\s+\[{t.key}\]$", out, re.M), out
    assert "would compute 6 task(s)" in out and "done 0 running 0 failed 0 missing 6 (of 6 tasks)" in out
    assert not results.exists() or not any(p.name != ".grid" for p in results.iterdir()), "a dry run wrote results"

    failed = next(t for t in tasks if t.config.method == "etheta")
    log = tmp_path / "worker.log"
    grid._record_failure(failed, results, "RuntimeError: boom", log=str(log))
    assert cli.main(grid_args(configs, results, "tiny", "--status")) == 0
    out = capsys.readouterr().out
    assert "done 0 running 0 failed 1 missing 5 (of 6 tasks)" in out
    assert f"failed: {failed.describe()} [{failed.key}]" in out
    assert f"log: {log}" in out and "error: RuntimeError: boom" in out


@pytest.mark.parametrize("extra, code, words", [
    (["--executor", "pbs"], 2, "invalid choice: 'pbs'"),
    (["--workers", "0"], 2, "--workers must be >= 1"),
    (["--partition", "gpu"], 2, "--partition applies to --executor slurm"),
    (["--executor", "slurm", "--workers", "2"], 2, "--workers applies to --executor local"),
    (["--executor", "slurm", "--time", "soon"], 2, "is not a Slurm time"),
    (["--executor", "slurm", "--mem", "lots"], 2, "--mem 'lots'"),
    (["--executor", "slurm", "--slurm-extra", "=1"], 2, "expected KEY=VALUE"),
])
def test_bad_grid_arguments_end_in_one_line(tmp_path, capsys, extra, code, words):
    configs = write_profile(tmp_path / "configs", "tiny", TINY)
    assert exit_code(grid_args(configs, tmp_path / "runs", "tiny", *extra)) == code
    err = capsys.readouterr().err
    assert words in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "runs").exists()


def exit_code(argv: list[str]) -> int:
    """cli.main's exit status, also where argparse exits (SystemExit) before main returns."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


def test_unknown_profile_names_the_available_ones(tmp_path, capsys):
    configs = write_profile(tmp_path / "configs", "tiny", TINY)
    assert cli.main(grid_args(configs, tmp_path / "runs", "tiy")) == 2
    err = capsys.readouterr().err
    assert "unknown profile 'tiy'" in err and "tiny" in err and len(err.strip().splitlines()) == 1


def test_slurm_executor_without_sbatch_says_what_to_install(tmp_path, capsys, monkeypatch):
    configs = write_profile(tmp_path / "configs", "tiny", TINY)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert cli.main(grid_args(configs, tmp_path / "runs", "tiny", "--executor", "slurm")) == 1
    err = capsys.readouterr().err
    assert "sbatch" in err and "install slurm-client" in err and "--executor local" in err
    assert len(err.strip().splitlines()) == 1


def test_time_limits_in_slurm_syntax():
    assert [grid._minutes(v) for v in ("90", "1:30", "2:00:00", "1-0", "1-02:30", "0:0:30")] == \
        [90, 2, 120, 1440, 1590, 1]


# --------------------------------------------------------------------------------------------------
# Local workers on a tiny profile
# --------------------------------------------------------------------------------------------------

def _worker_logs(results: Path) -> str:
    return "".join(p.read_text() for p in sorted((results / ".grid" / "logs" / "local").glob("*_log.out")))


def _outputs(tasks, results: Path) -> dict[str, float]:
    """The file that marks each task done, and its modification time."""
    out = {}
    for t in tasks:
        if t.kind == "run":
            path = run_dir(t.config, results) / "metrics.json"
        else:
            path = ex.sweep_path(base_config(t.config), t.criterion, t.levels, t.finetune_epochs, results)
        out[t.key] = path.stat().st_mtime_ns if path.exists() else None
    return out


@pytest.mark.slow
def test_local_grid_two_workers_failure_reported_and_rerun_computes_only_it(tmp_path, capsys, monkeypatch):
    configs = write_profile(tmp_path / "configs", "tiny", TINY)
    results = tmp_path / "runs"
    tasks = grid.expand("tiny", configs)
    broken = next(t for t in tasks if t.config.method == "etheta")
    checkpoint = run_dir(broken.config, results) / "checkpoint.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")  # this run cannot resume: it fails, the others go on

    assert cli.main(grid_args(configs, results, "tiny", "--workers", "2")) == 1
    out = capsys.readouterr().out
    assert "2 local worker(s) started" in out and "computed 5 task(s)" in out
    assert "done 5 running 0 failed 1 missing 0 (of 6 tasks)" in out
    logs = _worker_logs(results)
    for t in tasks:  # each task started by exactly one of the two workers
        assert logs.count(f"[grid] start {t.describe()}\n") == 1, t.describe()
    assert len(list((results / ".grid" / "logs" / "local").glob("*_log.out"))) == 2
    info = grid.failure(broken, results)
    assert info is not None and "cannot be resumed" in info["error"]
    assert Path(info["log"]).is_file() and "cannot be resumed" in Path(info["log"]).read_text()
    assert f"log: {info['log']}" in out and f"error: {info['error']}" in out

    before = _outputs(tasks, results)
    assert all(v is not None for k, v in before.items() if k != broken.key) and before[broken.key] is None

    # While a run is missing, source "finished" summarises the finished ones and trains nothing.
    def no_training_now(*_, **__):
        raise AssertionError("finished_only trained something")

    with monkeypatch.context() as m:
        m.setattr(ex, "_run_locked", no_training_now)
        m.setattr(ex, "_sweep", no_training_now)
        q = notebook_parameters("03_continuous_pruning", "tiny", configs)
        partial = study.continuous(q["table1_settings"], q["methods"], q["seeds"], profile="tiny", results_dir=results,
                                   log=lambda _: None, finished_only=study.finished_only("finished"))
        assert sorted(partial["method"]) == ["l2", "none"]
        q = notebook_parameters("04_post_training", "tiny", configs)
        curves, _ = study.posttrain(q["settings"], q["seeds"], q["criteria"], q["levels"], profile="tiny",
                                    results_dir=results, log=lambda _: None, finished_only=True)
        assert set(curves["criterion"]) == {"l2"}
    checkpoint.unlink()  # the fix the error names
    assert cli.main(grid_args(configs, results, "tiny", "--workers", "2")) == 0
    out = capsys.readouterr().out
    assert "computed 1 task(s)" in out and "done 6 running 0 failed 0 missing 0" in out
    after = _outputs(tasks, results)
    assert {k: v for k, v in after.items() if k != broken.key} == {k: v for k, v in before.items() if k != broken.key}
    assert grid.failure(broken, results) is None

    # After the grid, the notebooks' study calls train nothing.
    def no_training(*_, **__):
        raise AssertionError("trained after the grid")

    monkeypatch.setattr(ex, "_run_locked", no_training)
    monkeypatch.setattr(ex, "_sweep", no_training)
    q = notebook_parameters("03_continuous_pruning", "tiny", configs)
    df = study.continuous(q["table1_settings"], q["methods"], q["seeds"], profile="tiny", results_dir=results,
                          log=lambda _: None)
    assert len(df) == 3
    q = notebook_parameters("04_post_training", "tiny", configs)
    curves, _ = study.posttrain(q["settings"], q["seeds"], q["criteria"], q["levels"], profile="tiny",
                                results_dir=results, log=lambda _: None)
    assert len(curves) > 0


@pytest.mark.slow
def test_ctrl_c_stops_local_workers_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    configs = write_profile(tmp_path / "configs", "one", """profile: one
notebooks:
  02_figure1_units:
    setting: {dataset: digits, network: mlp, epochs: 8, finetune_epochs: 0, batch_size: 8}
    method: none
    run_seed: 1000
""")
    results = tmp_path / "runs"
    (task,) = grid.expand("one", configs)
    cmd = [sys.executable, "-m", "bmrs", *grid_args(configs, results, "one", "--workers", "1")]
    env = {**os.environ, "BMRS_QUIET": "1"}
    # its own process group, as a terminal's Ctrl-C sees it; SIGINT at its default even where this test was started
    # in the background of a shell (which starts background jobs with SIGINT ignored, and children inherit that)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while not (results.exists() and "epoch 2:" in _worker_logs(results)):
            assert time.time() < deadline and proc.poll() is None, "the worker never reached epoch 2"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the grid command and its workers
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted" in err and "rerun to resume" in err, (out, err)
    deadline = time.time() + 30
    while grid._locked_elsewhere(task, results):  # the worker is gone: nothing holds the task
        assert time.time() < deadline, "a worker kept running after Ctrl-C"
        time.sleep(0.2)
    assert not task.done(results) and (run_dir(task.config, results) / "checkpoint.pt").exists()

    # the rerun in this process (the same command; only the interrupted one needs a process group of its own)
    monkeypatch.setenv("BMRS_QUIET", "1")
    monkeypatch.chdir(ROOT)
    assert cli.main(grid_args(configs, results, "one", "--workers", "1")) == 0, capsys.readouterr()
    logs = _worker_logs(results)
    resumed = re.findall(r"resumed from \S+ after epoch (\d+)", logs)
    assert resumed and int(resumed[0]) >= 2, logs
    metrics = ex.read_json(run_dir(task.config, results) / "metrics.json")
    assert [r["epoch"] for r in metrics["history"]] == list(range(1, 9))
    assert logs.count("epoch 1:") == 1, "the rerun restarted the run instead of resuming it"


# --------------------------------------------------------------------------------------------------
# --only: a part of a profile, with the runs it needs
# --------------------------------------------------------------------------------------------------

def test_only_selects_tasks_and_brings_their_inputs_along():
    tasks = grid.expand("smoke")
    sweeps = grid.select(tasks, grid.parse_only(["kind=sweep"]))
    picked = [t for t in sweeps if t.kind == "sweep"]
    assert picked and len(picked) == sum(t.kind == "sweep" for t in tasks)
    assert {t.key for t in sweeps if t.kind == "run"} == {n for t in picked for n in t.needs}  # only their bases
    l2 = grid.select(tasks, grid.parse_only(["method=l2", "kind=run"]))
    posthoc = [t for t in l2 if t.config.method == "l2"]
    assert posthoc and all(n in {t.key for t in l2} for t in posthoc for n in t.needs)  # base and reference runs
    assert {t.config.method for t in l2} == {"l2", "base", "bmrs_n_code"}
    both = grid.select(tasks, grid.parse_only(["method=snr,none", "seed=1000"]))
    assert {t.config.method for t in both if t.kind == "run"} <= {"snr", "none", "base"}
    assert [t.key for t in both] == [t.key for t in tasks if t.key in {b.key for b in both}]  # order kept


@pytest.mark.parametrize("item", ["network", "net=mlp", "network=", "seed=,"])
def test_only_refuses_what_it_cannot_read(item):
    with pytest.raises(grid.UsageError, match="KEY=VALUE.*network, dataset, seed, method, kind"):
        grid.parse_only([item])


def test_only_that_selects_nothing_exits_2_and_writes_nothing(tmp_path, capsys):
    results = tmp_path / "runs"
    assert cli.main(["grid", "--profile", "smoke", "--results-dir", str(results), "--only", "network=vgg",
                     "--dry-run"]) == 2
    assert "selects no task" in capsys.readouterr().err
    assert not results.exists()


# --------------------------------------------------------------------------------------------------
# --skip-published: what the committed summaries hold is not computed again
# --------------------------------------------------------------------------------------------------

def _published_profile(tmp_path: Path) -> tuple[Path, Path, list[grid.Task]]:
    ref = tmp_path / "ref"
    text = TINY.replace("  03_continuous_pruning:\n", f"  03_continuous_pruning:\n    reference_dir: {ref}\n")
    configs = write_profile(tmp_path / "configs", "tiny", text)
    ref.mkdir()
    return configs, ref, grid.expand("tiny", configs)


def _publish_rows(ref: Path, tasks: list[grid.Task], methods: set[str], curve_levels=None) -> None:
    runs = [t for t in tasks if t.kind == "run" and t.config.method in methods]
    lines = ["dataset,network,method,seed,test_acc,run_id"]
    lines += [f"{t.config.dataset},{t.config.network},{t.config.method},{t.config.seed}.0,50.0,{t.config.run_id}"
              for t in runs]
    (ref / "continuous.csv").write_text("\n".join(lines) + "\n")
    if curve_levels is not None:
        sweep = next(t for t in tasks if t.kind == "sweep")
        c = sweep.config
        rows = [f"{c.dataset},{c.network},{c.seed},{sweep.criterion},{lv},50.0" for lv in curve_levels]
        (ref / "posttrain.csv").write_text("dataset,network,seed,criterion,level,test_acc\n" + "\n".join(rows) + "\n")


def test_skip_published_keeps_what_a_remaining_task_needs(tmp_path, capsys):
    configs, ref, tasks = _published_profile(tmp_path)
    by_method = {t.config.method: t for t in tasks if t.kind == "run"}
    sweep = next(t for t in tasks if t.kind == "sweep")
    _publish_rows(ref, tasks, {"none", "etheta", "bmrs_n_code"})
    todo, skipped = grid.without_published(tasks, ref)
    # l2 is not published, so the bmrs_n_code run it starts from is trained again, and the base run too
    assert {t.key for t in skipped} == {by_method["none"].key, by_method["etheta"].key}
    assert {t.key for t in todo} == {by_method["base"].key, by_method["bmrs_n_code"].key, by_method["l2"].key,
                                     sweep.key}
    results = tmp_path / "runs"
    assert cli.main(grid_args(configs, results, "tiny", "--dry-run", "--skip-published")) == 0
    out = capsys.readouterr().out
    assert f"2 task(s) published in {ref}: skipped" in out
    for t in skipped:
        assert re.search(rf"^published\s+wave {t.wave}\s+{re.escape(t.describe())}\s+\[{t.key}\]$", out, re.M), out
    assert "would compute 4 task(s)" in out and "(of 4 tasks)" in out
    assert cli.main(grid_args(configs, results, "tiny", "--dry-run")) == 0  # without the flag: everything
    assert "would compute 6 task(s)" in capsys.readouterr().out


def test_skip_published_everything_published_computes_nothing(tmp_path, capsys):
    configs, ref, tasks = _published_profile(tmp_path)
    _publish_rows(ref, tasks, {"none", "etheta", "bmrs_n_code", "l2"}, curve_levels=[0.0, 50.0])
    todo, skipped = grid.without_published(tasks, ref)
    assert todo == [] and len(skipped) == 6  # the base run is skipped: everything that needs it is published
    results = tmp_path / "runs"
    assert cli.main(grid_args(configs, results, "tiny", "--skip-published")) == 0
    assert "nothing left to compute" in capsys.readouterr().out
    assert not results.exists(), "a grid with nothing to compute wrote results"


@pytest.mark.parametrize("levels, is_published", [([0.0], True), ([0.0, 50.0], True), ([0.0, 25.0], False)])
def test_a_sweep_is_published_when_its_curve_has_only_the_sweeps_levels(tmp_path, levels, is_published):
    _, ref, tasks = _published_profile(tmp_path)
    _publish_rows(ref, tasks, set(), curve_levels=levels)  # a curve may stop early, never at another level
    sweep = next(t for t in tasks if t.kind == "sweep")
    assert (sweep.key in grid.published(tasks, ref)) is is_published


def test_skip_published_with_an_unreadable_summary_is_one_line(tmp_path, capsys):
    configs, ref, _ = _published_profile(tmp_path)
    (ref / "continuous.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert cli.main(grid_args(configs, tmp_path / "runs", "tiny", "--dry-run", "--skip-published")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot read the published summary" in err[0] and "git checkout" in err[0]


def test_a_curve_two_sweeps_could_have_written_publishes_neither(tmp_path):
    _, ref, tasks = _published_profile(tmp_path)
    sweep = next(t for t in tasks if t.kind == "sweep")
    longer = dataclasses.replace(sweep, levels=tuple(sweep.levels) + (75.0,))  # the same criterion, more levels
    assert longer.key != sweep.key
    _publish_rows(ref, tasks, set(), curve_levels=[0.0])  # stopped at level 0: either sweep could have written it
    assert not {sweep.key, longer.key} & grid.published(tasks + [longer], ref)
    _publish_rows(ref, tasks, set(), curve_levels=[0.0, 75.0])  # only the longer one has level 75
    assert grid.published(tasks + [longer], ref) & {sweep.key, longer.key} == {longer.key}
