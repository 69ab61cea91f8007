"""The committed quick-profile results: ``results/reference/*.csv`` and ``figures/``.

The figure and table notebooks (02-07) run with the quick profile and ``source="reference"`` from the
repository's committed ``results/reference/`` alone (what Binder, Colab and a reader without a GPU do; once
per session: ``quick_reference`` in tests/conftest.py, whose outputs the notebooks' own test files also check):
no runs or summary directory is created, every promised figure and table is written (into a temporary
directory, so the repository is untouched) with a caption naming where its numbers come from, the tables
carry the committed numbers, and every
regenerated figure has the size of the committed one in ``figures/`` (so the committed gallery is
the quick profile's).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bmrs import notebook_runner as runner  # noqa: E402
from bmrs.report import readme  # noqa: E402
from conftest import REFERENCE, STUDY_NOTEBOOKS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = STUDY_NOTEBOOKS
SUMMARIES = ("units", "continuous", "posttrain", "ranks", "p1_sweep", "cost_steps", "cost_compaction",
             "baselines", "posttrain_baselines")
FIGURES = ("fig1_units", "fig2_posttrain_fashion_mnist_mlp", "fig2_posttrain_fashion_mnist_lenet5",
           "fig6_ranks_fashion_mnist_mlp", "fig6_ranks_fashion_mnist_lenet5", "fig4_p1_sweep", "cost_noise_overhead",
           "cost_compaction", "posttrain_baselines")
TABLES = ("table1_continuous", "table2_continuous", "bmrs_n_variants", "continuous_claims", "posttrain_claims",
          "posttrain_stops_fashion_mnist_mlp", "posttrain_stops_fashion_mnist_lenet5", "fig4_p1_sweep",
          "table3_runtimes", "table4_runtimes", "cost_compaction", "baselines", "fig1_unit_counts")


def test_reference_summaries_are_committed_and_from_the_quick_profile():
    for name in SUMMARIES:
        path = REFERENCE / f"{name}.csv"
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing: python -m bmrs.report.study publish --profile quick"
    continuous = pd.read_csv(REFERENCE / "continuous.csv")
    assert set(continuous["profile"]) == {"quick"}
    assert {"mlp", "lenet5"} <= set(continuous["network"]) and set(continuous["dataset"]) == {"fashion_mnist"}
    # all seven methods of Table 1 (+ Eq. 8's BMRS_N) are in the committed results
    assert {"none", "l2", "etheta", "snr", "bmrs_n_code", "bmrs_u8", "bmrs_u4", "bmrs_n"} <= set(continuous["method"])
    baselines = pd.read_csv(REFERENCE / "baselines.csv")
    assert {"c_obd", "dirichlet", "eigendamage"} <= set(baselines["method"])


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's quick reference pass (tests/conftest.py): minutes on a 2-core machine
def test_figure_and_table_notebooks_regenerate_from_the_committed_reference(quick_reference):
    assert quick_reference.stems == NOTEBOOKS and quick_reference.dirs["reference"] == REFERENCE
    quick_reference.check()  # every notebook ran, no cell raised
    dirs = quick_reference.dirs
    figures, tables = dirs["figures"], dirs["tables"]
    assert not dirs["runs"].exists(), "a reference rerun must train nothing"
    assert not dirs["summary"].exists(), "a reference rerun must write no summary"

    for stem in FIGURES:
        for ext in ("png", "pdf"):
            path = figures / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
        committed = ROOT / "figures" / f"{stem}.png"
        assert committed.is_file(), f"{committed} is not committed: run ./run_all.sh (quick) and commit figures/"
        new, old = mpimg.imread(figures / f"{stem}.png"), mpimg.imread(committed)
        assert abs(new.shape[0] - old.shape[0]) <= 4 and abs(new.shape[1] - old.shape[1]) <= 4, stem
    for stem in TABLES:
        for ext in ("md", "tex"):
            path = tables / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
        first = (tables / f"{stem}.md").read_text().splitlines()[0]
        assert "Profile: quick" in first and "numbers from" in first, (stem, first)  # says where they come from

    # the tables show the committed numbers beside the paper's
    table1 = (tables / "table1_continuous.md").read_text()
    assert "F-MNIST Acc. % paper" in table1 and "77.90 ± 2.44" in table1  # the paper's LeNet5 BMRS_N
    for acc in pd.read_csv(REFERENCE / "continuous.csv")["test_acc"]:
        assert f"{acc:.2f} (n=1)" in table1, acc
    baselines = (tables / "baselines.md").read_text()
    for acc in pd.read_csv(REFERENCE / "baselines.csv")["test_acc"]:
        assert f"| {acc:.2f} " in baselines, acc


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's smoke pass (tests/conftest.py): minutes on a 2-core machine
def test_the_summaries_this_code_writes_have_the_columns_of_the_committed_ones(smoke_notebooks):
    """The notebooks' source="reference" branch is run on the committed summaries (above) and, for 03 and 07, on
    fresh ones (``smoke_reference``); this holds it to every summary the code writes now: each fresh smoke summary
    has exactly the columns of its committed counterpart (else the committed reference is stale, or the branch
    reads a column the code no longer writes)."""
    smoke_notebooks.check()
    fresh = smoke_notebooks.dirs["summary"] / "smoke"
    assert sorted(p.stem for p in fresh.glob("*.csv")) == sorted(SUMMARIES)
    for name in SUMMARIES:
        ours, committed = pd.read_csv(fresh / f"{name}.csv"), pd.read_csv(REFERENCE / f"{name}.csv")
        assert set(ours.columns) == set(committed.columns), (
            f"{name}.csv: written now {sorted(set(ours.columns) - set(committed.columns))}, committed only "
            f"{sorted(set(committed.columns) - set(ours.columns))}; republish: python -m bmrs.report.study publish "
            "--profile quick")


FMNIST = ROOT / "results" / "reference" / "fmnist"


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_fmnist_reference_regenerates_its_tables_without_training(tmp_path, capsys, monkeypatch):
    """The paper-protocol Fashion-MNIST results (profile fmnist) are committed as summaries; notebooks 02-05 and 07
    regenerate Figures 1, 2, 4 and 6, Table 1, the verdicts, the post-training claims and the baselines from them
    alone, and every figure committed under figures/fmnist/ comes back with its committed size."""
    if not (FMNIST / "continuous.csv").is_file():
        pytest.skip("no committed fmnist reference yet (python -m bmrs.report.study publish --profile fmnist)")
    monkeypatch.setenv("BMRS_QUIET", "1")
    runs, tables, figures = tmp_path / "runs", tmp_path / "tables" / "fmnist", tmp_path / "figures"
    runs.mkdir()
    stems = ("02_figure1_units", "03_continuous_pruning", "04_post_training", "05_bmrs_u_precision", "07_baselines")
    args = ["--profile", "fmnist", "--only", *stems, "--quiet", "--force", "--results-dir", str(tmp_path / "results")]
    for key, value in {"source": "reference", "reference_dir": str(FMNIST), "runs_dir": str(runs),
                       "summary_dir": str(tmp_path / "summary"), "figures_dir": str(figures),
                       "tables_dir": str(tables)}.items():
        args += ["--param", f"{key}={value}"]
    assert runner.main(args) == 0, capsys.readouterr().err
    assert list(runs.iterdir()) == [], "a reference rerun must train nothing"
    assert not (tmp_path / "summary").exists(), "a reference rerun must write no summary"
    summary = pd.read_csv(FMNIST / "continuous.csv")
    assert set(summary["profile"]) == {"fmnist"} and set(summary["train_epochs"]) == {50}
    verdicts = (tables / "table1_verdicts.md").read_text()
    mlp = summary[(summary["network"] == "mlp") & (summary["method"] == "bmrs_n_code")]["test_acc"]
    assert f"{mlp.mean():.2f} ± {mlp.std(ddof=0):.2f}" in verdicts  # our MLP BMRS_N over the committed seeds ...
    assert "84.99 ± 0.35" in verdicts  # ... beside the paper's
    assert "Profile: fmnist" in verdicts.splitlines()[0] and "epochs: none run" not in verdicts

    committed = sorted(p.name for p in (ROOT / "figures" / "fmnist").glob("*.png"))
    assert committed, "figures/fmnist/ holds the published figures"
    for name in committed:  # the committed gallery is what these summaries regenerate
        fresh = figures / name
        assert fresh.is_file(), f"{name} is committed but not regenerated from the reference"
        assert mpimg.imread(fresh).shape == mpimg.imread(ROOT / "figures" / "fmnist" / name).shape, name
    # the README's headline tables are these tables (python -m bmrs.report.readme fills them)
    names = readme.block_names((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {"fmnist/table1_verdicts", "fmnist/table1_claims_by_seed"} <= set(names), "the README lost an fmnist table"
    assert readme.stale((ROOT / "README.md").read_text(encoding="utf-8"), tmp_path / "tables", prefix="fmnist/") == [], \
        "README tables differ from the committed summaries: python -m bmrs.report.readme --only fmnist/ (after " \
        "the notebooks ran with --param source=reference)"
    ranks = pd.read_csv(FMNIST / "ranks.csv")
    if len(ranks):  # the rank correlations of Figure 6 reach the post-training claims
        assert (tables / "posttrain_claims.md").is_file()
