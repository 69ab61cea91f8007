"""Notebooks 02 (Figure 1), 03 (Tables 1/2) and 05 (Figure 4) under the smoke profile, and their plots.

The notebooks run in the session's notebook passes (tests/conftest.py), everything in temporary directories
(executed notebooks via --results-dir; runs, summaries, tables and figures via the notebooks' parameters
runs_dir, summary_dir, tables_dir, figures_dir), so the repository's results/ and figures/ stay untouched:
``smoke_notebooks`` trains the tiny smoke runs (source "run"); ``smoke_reference`` runs 03 again with
source "reference" from a temporary directory holding those summaries, with no runs directory, and must
give the same Table 1 without training; ``quick_reference`` regenerates 02 and 05 (with every other study
notebook) from the committed results/reference/ alone.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bmrs.report.plots import plot_figure1, plot_p1_sweep, save_figure  # noqa: E402
from conftest import REFERENCE  # noqa: E402

NOTEBOOKS = ("02_figure1_units", "03_continuous_pruning", "05_bmrs_u_precision")
FIGURES = ("fig1_units", "fig4_p1_sweep")
TABLES = ("fig1_unit_counts", "table1_continuous", "table2_continuous", "bmrs_n_variants", "continuous_claims",
          "fig4_p1_sweep")
TABLES_03 = ("table1_continuous", "table2_continuous", "bmrs_n_variants", "continuous_claims")
SUMMARIES = ("units", "continuous", "p1_sweep")


def _outputs(nb) -> str:
    return "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def _check_outputs(dirs: dict[str, Path], figures=FIGURES, tables=TABLES) -> None:
    for stem in figures:
        for ext in ("png", "pdf"):
            path = dirs["figures"] / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    for stem in tables:
        for ext in ("md", "tex"):
            path = dirs["tables"] / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
        first = (dirs["tables"] / f"{stem}.md").read_text().splitlines()[0]
        assert "Profile: smoke" in first and "epochs: " in first, first
        assert ("seeds: 1000 (n=1)" if stem != "table2_continuous" else "seeds: none (ours not run)") in first, first
    table1 = (dirs["tables"] / "table1_continuous.md").read_text()
    for column in ("MNIST Comp. % paper", "F-MNIST Acc. % paper", "CIFAR10 Comp. % ours", "digits Acc. % ours",
                   "Actual comp. % ours"):
        assert column in table1
    assert "93.20 ± 0.66" in table1 and "not run" in table1 and "(n=1)" in table1  # paper's BMRS_N, ours
    table2 = (dirs["tables"] / "table2_continuous.md").read_text()
    assert "TinyImagenet Acc. % paper" in table2 and "89.62 ± 0.41" in table2 and "not run" in table2
    assert "\\toprule" in (dirs["tables"] / "table1_continuous.tex").read_text()


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's smoke pass: minutes on a 2-core machine
def test_smoke_notebooks_run(smoke_notebooks):
    smoke_notebooks.check()
    smoke_run = smoke_notebooks.dirs
    _check_outputs(smoke_run)
    for name in SUMMARIES:
        assert (smoke_run["summary"] / "smoke" / f"{name}.csv").is_file()
    summary = pd.read_csv(smoke_run["summary"] / "smoke" / "continuous.csv")
    assert set(summary["method"]) == {"none", "l2", "etheta", "snr", "bmrs_n_code", "bmrs_u8", "bmrs_u4", "bmrs_n"}
    assert any(smoke_run["runs"].iterdir())  # the runs went to the temporary runs directory
    executed = smoke_run["results"] / "executed" / "smoke"
    text = _outputs(nbformat.read(executed / "03_continuous_pruning.ipynb", as_version=4))
    assert "Claims" in text or "claim" in text
    assert "verdict" in text and "not run in this profile" in text
    assert "as expected (code ≥ Eq. 8)" in _outputs(nbformat.read(executed / "02_figure1_units.ipynb", as_version=4))


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's smoke passes: minutes on a 2-core machine
def test_reference_source_regenerates_without_training(smoke_reference, smoke_notebooks):
    smoke_reference.check()
    reference_run = smoke_reference.dirs
    _check_outputs(reference_run, figures=(), tables=TABLES_03)
    assert not reference_run["runs"].exists()  # nothing trained
    assert not reference_run["summary"].exists()  # and no summary written
    # the tables rebuilt from the reference summaries say so, and carry the same numbers
    first = (reference_run["tables"] / "table1_continuous.md").read_text().splitlines()
    assert "numbers from" in first[0] and "reference_in" in first[0]
    ours = (smoke_notebooks.dirs["tables"] / "table1_continuous.md").read_text().splitlines()[1:]
    assert first[1:] == ours


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's quick reference pass: minutes on a 2-core machine
def test_figure1_and_p1_notebooks_regenerate_from_the_committed_reference(quick_reference):
    """Notebooks 02 and 05 from results/reference/ alone: their figures and tables, captioned with the profile,
    the seeds and the summary they were read from (nothing trained, nothing written: test_reference_results)."""
    quick_reference.check()
    dirs = quick_reference.dirs
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            assert (dirs["figures"] / f"{stem}.{ext}").stat().st_size > 0, stem
    for stem, summary in (("fig1_unit_counts", "units"), ("fig4_p1_sweep", "p1_sweep")):
        first = (dirs["tables"] / f"{stem}.md").read_text().splitlines()[0]
        seeds = sorted(set(pd.read_csv(REFERENCE / f"{summary}.csv")["seed"]))
        assert "Profile: quick" in first and "epochs: " in first, first
        assert f"seeds: {', '.join(map(str, seeds))} (n={len(seeds)})" in first, first
        assert f"numbers from {REFERENCE / summary}.csv" in first, first
        assert (dirs["tables"] / f"{stem}.tex").stat().st_size > 0, stem


# --------------------------------------------------------------------------------------------------
# The plots of these notebooks (fast, no notebook)
# --------------------------------------------------------------------------------------------------

def test_plot_figure1(tmp_path):
    rng = np.random.default_rng(0)
    e = np.concatenate([rng.beta(0.5, 8, 300), rng.beta(6, 2, 200)])
    fig = plot_figure1(e, e > 0.2, bins=20)
    left, middle, right = fig.axes[:3]
    assert sum(p.get_height() for p in left.patches) == 500 and len(left.patches) == 20
    assert sum(p.get_height() for p in right.patches) == int((e > 0.2).sum())
    assert left.get_xlim() == (0.0, 1.0) and left.get_ylim() == right.get_ylim()
    texts = " ".join(t.get_text() for t in fig.texts)
    assert "Calculate" in texts and "Prune" in texts
    assert middle.get_xscale() == "log"
    paths = save_figure(fig, "fig1", profile="smoke", directory=tmp_path)
    assert all(p.stat().st_size > 0 for p in paths)
    plt.close(fig)
    fig = plot_figure1(np.full(4, 0.97), np.zeros(4, dtype=bool))  # degenerate: no KDE, nothing kept
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_figure1(e, e[:3] > 0)


def test_plot_p1_sweep():
    df = pd.DataFrame([dict(network="lenet5", dataset="cifar10", p1=p, seed=s, test_acc=66 + 0.1 * p + s,
                            param_compression_pct=60 - 3 * p + s) for p in (16, 8, 4, 2) for s in (0, 1)])
    fig, ax = plt.subplots()
    acc_ax, comp_ax = plot_p1_sweep(ax, df)
    assert [t.get_text() for t in acc_ax.get_xticklabels()] == ["2", "4", "8", "16"]
    (acc_line,) = [c for c in acc_ax.containers]
    assert np.allclose(acc_line.lines[0].get_ydata(), [66.7, 66.9, 67.3, 68.1])
    assert "compression" in comp_ax.get_ylabel() and "accuracy" in acc_ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(ValueError):
        plot_p1_sweep(plt.subplots()[1], pd.concat([df, df.assign(dataset="mnist")]))
    plt.close("all")


def test_p1_sweep_accepts_any_p1():
    from bmrs.run import experiments as ex

    ex.RunConfig(dataset="digits", network="mlp", method="bmrs_u12").validate()
