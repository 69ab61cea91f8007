"""Notebook execution: the derivation notebook under the smoke profile, and the notebook runner itself.

Tests that start a Jupyter kernel are marked ``notebook``. Everything runs in temporary directories
(results via --results-dir, figures via the notebook parameter figures_dir, throwaway notebooks via
--notebooks-dir/--configs-dir), so the repository's results/ and figures/ stay untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import jupytext  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402

from bmrs import notebook_runner as runner  # noqa: E402
from bmrs.report.plots import PROFILE_STAMP_GID, plot_priors, save_figure  # noqa: E402

REPO = runner.REPO_ROOT


def _error_outputs(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


# --------------------------------------------------------------------------------------------------
# The derivation notebook, smoke profile
# --------------------------------------------------------------------------------------------------

@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_derivation_notebook_smoke(tmp_path, capsys):
    results, figures = tmp_path / "results", tmp_path / "figures"
    status = runner.main([
        "--profile", "smoke", "--only", "01_bmr_derivation", "--quiet",
        "--results-dir", str(results), "--param", f"figures_dir={figures}",
    ])
    out = capsys.readouterr()
    assert status == 0, out.err
    for stem in ("bmrs_decision_boundaries", "fig1_priors", "fig1_priors_bmrs"):
        for ext in ("png", "pdf"):
            path = figures / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    executed = results / "executed" / "smoke" / "01_bmr_derivation.ipynb"
    nb = nbformat.read(executed, as_version=4)
    assert _error_outputs(nb) == []
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "[FAIL]" not in text and "checks passed" in text
    stamp = json.loads((executed.parent / "01_bmr_derivation.stamp.json").read_text())
    assert stamp["parameters"]["profile"] == "smoke" and stamp["parameters"]["figures_dir"] == str(figures)


# --------------------------------------------------------------------------------------------------
# The runner, on throwaway notebooks
# --------------------------------------------------------------------------------------------------

RECORDING_NOTEBOOK = '''\
# ---
# jupyter:
#   jupytext:
#     formats: py:percent
# ---

# %% [markdown]
# A throwaway notebook that records its parameters.

# %% tags=["parameters"]
profile: str = "none"
log: str = ""
value: int = 0
name: str = "default"
figures_dir: str = ""

# %%
import json, os
with open(log, "a") as f:
    f.write(json.dumps({"nb": NAME, "profile": profile, "value": value, "name": name,
                        "mpl": os.environ.get("MPLBACKEND"), "cwd": os.getcwd()}) + "\\n")
if figures_dir:
    os.makedirs(figures_dir, exist_ok=True)
    with open(os.path.join(figures_dir, NAME + ".txt"), "w") as f:
        f.write("profile: " + profile)
'''

FAILING_NOTEBOOK = '''\
# %% [markdown]
# A throwaway notebook whose fourth cell raises.

# %% tags=["parameters"]
profile: str = "none"

# %%
x = 1

# %%
raise ValueError("boom from the throwaway notebook")

# %%
y = 2
'''


def make_project(tmp_path: Path, notebooks: dict[str, str], config: dict | None = None) -> list[str]:
    """Write notebooks and configs/smoke.yaml under tmp_path; return the runner arguments for them."""
    nb_dir, cfg_dir = tmp_path / "notebooks", tmp_path / "configs"
    nb_dir.mkdir()
    cfg_dir.mkdir()
    for stem, text in notebooks.items():
        (nb_dir / f"{stem}.py").write_text(text.replace("NAME", repr(stem)))
    if config is None:
        config = {"profile": "smoke", "common": {"log": str(tmp_path / "log.jsonl"), "value": 1},
                  "notebooks": {stem: {} for stem in notebooks}}
    import yaml

    (cfg_dir / "smoke.yaml").write_text(yaml.safe_dump(config))
    return ["--profile", "smoke", "--quiet", "--notebooks-dir", str(nb_dir), "--configs-dir", str(cfg_dir),
            "--results-dir", str(tmp_path / "results")]


def read_log(tmp_path: Path) -> list[dict]:
    path = tmp_path / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_unknown_profile_lists_profiles(tmp_path, capsys):
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK})
    (tmp_path / "configs" / "quick.yaml").write_text("profile: quick\n")
    status = runner.main([*args, "--profile", "nonesuch"])
    err = capsys.readouterr().err
    assert status == 2
    assert "nonesuch" in err and "quick" in err and "smoke" in err


def test_unknown_profile_in_repository_configs(capsys):
    assert runner.main(["--profile", "nonesuch", "--list"]) == 2
    err = capsys.readouterr().err
    assert all(name in err for name in ("smoke", "quick", "paper"))


def test_malformed_yaml_names_the_file(tmp_path, capsys):
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK})
    bad = tmp_path / "configs" / "smoke.yaml"
    bad.write_text("profile: smoke\ncommon: {seed: [1, 2\n")
    assert runner.main(args) == 2
    assert str(bad) in capsys.readouterr().err
    bad.write_text("profile: smoke\ncommon: [1, 2]\n")
    assert runner.main(args) == 2
    assert str(bad) in capsys.readouterr().err
    bad.write_text("profile: quick\n")
    assert runner.main(args) == 2
    assert "profile: quick" in capsys.readouterr().err


def test_only_unknown_or_ambiguous_exits_2_with_valid_names(tmp_path, capsys):
    args = make_project(tmp_path, {s: RECORDING_NOTEBOOK for s in ("01_alpha", "02_beta", "02_bravo")})
    assert runner.main([*args, "--only", "07"]) == 2
    err = capsys.readouterr().err
    assert "unknown notebook '07'" in err and all(s in err for s in ("01_alpha", "02_beta", "02_bravo"))
    assert runner.main([*args, "--only", "02"]) == 2
    err = capsys.readouterr().err
    assert "ambiguous" in err and "02_beta" in err and "02_bravo" in err
    assert read_log(tmp_path) == []  # nothing ran


def test_bad_parameters_exit_2_naming_the_file(tmp_path, capsys):
    config = {"profile": "smoke", "common": {"log": "x"}, "notebooks": {"01_alpha": {"value": "three"}}}
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK}, config)
    assert runner.main(args) == 2
    err = capsys.readouterr().err
    assert "smoke.yaml" in err and "value" in err and "int" in err
    config["notebooks"]["01_alpha"] = {"valeu": 3}
    import yaml

    (tmp_path / "configs" / "smoke.yaml").write_text(yaml.safe_dump(config))
    assert runner.main(args) == 2
    err = capsys.readouterr().err
    assert "notebooks.01_alpha.valeu is not a parameter" in err and "value" in err
    config["notebooks"]["01_alpha"] = {}
    (tmp_path / "configs" / "smoke.yaml").write_text(yaml.safe_dump(config))
    assert runner.main([*args, "--list"]) == 0
    capsys.readouterr()
    assert runner.main([*args, "--param", "value=1.5", "--list"]) == 2
    assert "--param" in capsys.readouterr().err
    assert read_log(tmp_path) == []


def test_select_notebooks_prefix_and_order(tmp_path):
    paths = [tmp_path / f"{s}.py" for s in ("01_alpha", "02_beta", "03_gamma")]
    assert [p.stem for p in runner.select_notebooks(paths, ["03", "01_alpha"])] == ["01_alpha", "03_gamma"]
    assert [p.stem for p in runner.select_notebooks(paths, ["02_b", "02_beta.py"])] == ["02_beta"]
    assert runner.select_notebooks(paths, None) == paths


def test_list_runs_nothing(tmp_path, capsys):
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK, "02_beta": RECORDING_NOTEBOOK})
    assert runner.main([*args, "--list"]) == 0
    out = capsys.readouterr().out
    assert "01_alpha" in out and "02_beta" in out and "not run" in out
    assert read_log(tmp_path) == []


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_parameters_merge_and_up_to_date_stamp(tmp_path, capsys):
    config = {
        "profile": "smoke",
        "common": {"log": str(tmp_path / "log.jsonl"), "value": 1, "name": "common"},
        "notebooks": {"01_alpha": {"value": 2}, "02_beta": {}},
    }
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK, "02_beta": RECORDING_NOTEBOOK}, config)

    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert "[1/2] 01_alpha (profile smoke) ..." in out and "[2/2] 02_beta (profile smoke) ..." in out
    log = read_log(tmp_path)
    assert [(r["nb"], r["value"], r["name"], r["profile"]) for r in log] == [
        ("01_alpha", 2, "common", "smoke"), ("02_beta", 1, "common", "smoke")]
    assert all(r["mpl"] == "Agg" for r in log)
    assert Path(log[0]["cwd"]).resolve() == REPO.resolve()
    executed = tmp_path / "results" / "executed" / "smoke"
    assert (executed / "01_alpha.ipynb").is_file() and (executed / "01_alpha.stamp.json").is_file()

    # second run: both up to date, nothing executes
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == 2
    assert len(read_log(tmp_path)) == 2

    # --force re-executes; a changed parameter or source re-executes only that notebook
    assert runner.main([*args, "--only", "01", "--force"]) == 0
    assert len(read_log(tmp_path)) == 3
    src = tmp_path / "notebooks" / "02_beta.py"
    src.write_text(src.read_text() + "\n# %%\nz = 3\n")
    capsys.readouterr()
    assert runner.main(args) == 0
    out = capsys.readouterr().out
    assert "01_alpha (profile smoke) up to date" in out and "02_beta (profile smoke) done" in out
    assert [r["nb"] for r in read_log(tmp_path)[3:]] == ["02_beta"]
    assert runner.main([*args, "--param", "name=override"]) == 0
    log = read_log(tmp_path)
    assert len(log) == 6 and {r["name"] for r in log[4:]} == {"override"}


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_overwritten_figure_makes_the_notebook_stale(tmp_path, capsys):
    figures = tmp_path / "figs"
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK})
    args += ["--param", f"figures_dir={figures}"]
    assert runner.main(args) == 0
    stamp = json.loads((tmp_path / "results" / "executed" / "smoke" / "01_alpha.stamp.json").read_text())
    assert list(stamp["outputs"]) == [str(figures / "01_alpha.txt")]
    assert runner.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    (figures / "01_alpha.txt").write_text("profile: another")  # e.g. another profile wrote the same figure
    assert runner.main(args) == 0
    assert "01_alpha (profile smoke) done" in capsys.readouterr().out
    assert (figures / "01_alpha.txt").read_text() == "profile: smoke"
    assert len(read_log(tmp_path)) == 2


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_failing_notebook_is_named_with_cell_and_kept(tmp_path, capsys):
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK, "02_fail": FAILING_NOTEBOOK,
                                   "03_after": RECORDING_NOTEBOOK})
    status = runner.main(args)
    captured = capsys.readouterr()
    assert status == 1
    err = captured.err
    assert "02_fail" in err and "cell 4" in err and "ValueError: boom from the throwaway notebook" in err
    assert "02_fail.py:11" in err  # the failing cell's line in the source
    executed = tmp_path / "results" / "executed" / "smoke"
    partial = executed / "02_fail.ipynb"
    assert partial.is_file() and _error_outputs(nbformat.read(partial, as_version=4))
    assert not (executed / "02_fail.stamp.json").exists()
    assert [r["nb"] for r in read_log(tmp_path)] == ["01_alpha"]  # stopped: 03_after did not run


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_results_dir_from_environment(tmp_path, monkeypatch):
    args = make_project(tmp_path, {"01_alpha": RECORDING_NOTEBOOK})
    i = args.index("--results-dir")
    del args[i:i + 2]
    monkeypatch.setenv("BMRS_RESULTS_DIR", str(tmp_path / "elsewhere"))
    assert runner.main(args) == 0
    assert (tmp_path / "elsewhere" / "executed" / "smoke" / "01_alpha.ipynb").is_file()


# --------------------------------------------------------------------------------------------------
# bmrs.report.plots: saving and the priors panel
# --------------------------------------------------------------------------------------------------

def test_save_figure_is_deterministic_and_stamped(tmp_path):
    def draw():
        fig, axes = plt.subplots(1, 2, figsize=(6, 2.5))
        plot_priors(axes[0])
        plot_priors(axes[1], variable="log_theta", show_bmrs=True)
        return fig

    fig = draw()
    first = save_figure(fig, "priors", profile="smoke", directory=tmp_path / "a")
    save_figure(fig, "priors", profile="smoke", directory=tmp_path / "a")  # saving twice keeps one stamp
    stamps = [t for t in fig.texts if t.get_gid() == PROFILE_STAMP_GID]
    assert len(stamps) == 1 and stamps[0].get_text() == "profile: smoke"
    renderer = fig.canvas.get_renderer()
    stamp_box = stamps[0].get_window_extent(renderer)
    for ax in fig.axes:  # below every axis with its labels: it never covers an x label
        assert stamp_box.y1 <= ax.get_tightbbox(renderer).y0 + 1e-6
    plt.close(fig)
    fig = draw()
    second = save_figure(fig, "priors", profile="smoke", directory=tmp_path / "b")
    plt.close(fig)
    assert [p.name for p in first] == ["priors.png", "priors.pdf"]
    for p, q in zip(first, second):
        assert p.read_bytes() == q.read_bytes()
    assert not list((tmp_path / "a").glob("*.tmp"))
    with pytest.raises(ValueError):
        save_figure(plt.figure(), "x.png", profile="smoke", directory=tmp_path)
    with pytest.raises(ValueError):
        save_figure(plt.figure(), "x", profile="", directory=tmp_path)
    plt.close("all")


def test_plot_priors_densities():
    import numpy as np

    fig, ax = plt.subplots()
    plot_priors(ax, variable="log_theta")
    prior, reduced = ax.get_lines()[:2]
    x = np.log(prior.get_xdata())
    # over log θ: LogU is flat at 1/(b − a) and the reduced prior integrates to 1
    assert np.allclose(prior.get_ydata(), 1 / 20)
    assert abs(np.trapezoid(reduced.get_ydata(), x) - 1) < 1e-4
    ax.clear()
    plot_priors(ax)  # over θ: the same densities divided by θ (Jacobian), y cut at 0–5 as in the paper
    prior_theta = ax.get_lines()[0]
    assert np.allclose(prior_theta.get_ydata(), 1 / (20 * prior_theta.get_xdata()))
    assert ax.get_ylim() == (0.0, 5.0) and len(ax.get_yticks()) == 0
    plt.close(fig)


def test_every_notebook_starts_with_the_guarded_colab_cell_and_its_script_works(tmp_path, monkeypatch):
    """The first code cell of each notebook runs scripts/colab_install.py on Colab only; the script (with bmrs
    already importable, so nothing is pip-installed) makes the repository root the working directory."""
    import runpy

    root = Path(__file__).resolve().parents[1]
    script = root / "scripts" / "colab_install.py"
    for source in sorted((root / "notebooks").glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(source)
        first = next(c.source for c in nb.cells if c.cell_type == "code")
        assert 'if "google.colab" in sys.modules:' in first and "scripts/colab_install.py" in first, source
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(str(script))
    assert Path.cwd() == root and str(root) in sys.path


def test_study_configure_checks_source_and_threads_and_sets_the_summary_roots(tmp_path, monkeypatch):
    from bmrs.report import study

    monkeypatch.setattr(study, "SUMMARY_DIR", study.SUMMARY_DIR)
    monkeypatch.setattr(study, "REFERENCE_DIR", study.REFERENCE_DIR)
    with pytest.raises(ValueError, match="source must be one of 'run', 'finished', 'reference'; got 'ref'"):
        study.configure(source="ref", summary_dir=tmp_path, reference_dir=tmp_path)
    with pytest.raises(ValueError, match="torch_threads must be an integer >= 0"):
        study.configure(source="run", summary_dir=tmp_path, reference_dir=tmp_path, torch_threads=-1)
    study.configure(source="reference", summary_dir=tmp_path / "s", reference_dir=tmp_path / "r")
    assert study.SUMMARY_DIR == tmp_path / "s" and study.REFERENCE_DIR == tmp_path / "r"
    assert study.summary_path("continuous", "quick", source="reference") == tmp_path / "r" / "continuous.csv"


def test_an_empty_partial_summary_reads_as_an_empty_frame(tmp_path):
    """source "finished" before any row exists writes a summary without columns; reading it back is no error."""
    import pandas as pd

    from bmrs.report import study

    path = study.save_summary(pd.DataFrame(), "posttrain_baselines", "p", directory=tmp_path)
    assert path.read_text().strip() == ""
    assert study.load_summary("posttrain_baselines", "p", directory=tmp_path).empty


def test_study_notebooks_with_source_finished_before_anything_finished(tmp_path):
    """A grid just started (or a fresh machine): notebooks 03, 04, 05 and 07 with source "finished" run through
    with summaries that have their columns and no rows, train nothing and draw no curve."""
    import pandas as pd

    from conftest import NotebookPass, _dirs, run_notebooks

    nb = NotebookPass("smoke", (), {**_dirs(tmp_path), "reference": tmp_path / "no_reference"})
    run_notebooks(nb, ["03_continuous_pruning", "04_post_training", "05_bmrs_u_precision", "07_baselines"],
                  source="finished", reference_dir=nb.dirs["reference"], torch_threads=1)
    nb.check()
    assert not nb.dirs["runs"].exists() or not any(nb.dirs["runs"].iterdir()), "source finished trained something"
    summaries = nb.dirs["summary"] / "smoke"
    for name in ("continuous", "p1_sweep", "baselines"):
        frame = pd.read_csv(summaries / f"{name}.csv")
        assert frame.empty and {"dataset", "network", "method", "seed", "test_acc"} <= set(frame.columns), name
