"""The committed quick-profile results: ``results/reference/*.csv`` and ``figures/``.

The figure and table notebooks (02-07) run with the quick profile and ``source="reference"`` from the
repository's committed ``results/reference/`` alone (what Binder, Colab and a reader without a GPU do):
an empty runs directory stays empty, every promised figure and table is written (into a temporary
directory, so the repository is untouched), the tables carry the committed numbers, and every
regenerated figure has the size of the committed one in ``figures/`` (so the committed gallery is
the quick profile's).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bmrs import notebook_runner as runner  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "results" / "reference"
NOTEBOOKS = ("02_figure1_units", "03_continuous_pruning", "04_post_training", "05_bmrs_u_precision", "06_cost",
             "07_baselines")
SUMMARIES = ("units", "continuous", "posttrain", "ranks", "p1_sweep", "cost_steps", "cost_compaction",
             "baselines", "posttrain_baselines")
FIGURES = ("fig1_units", "fig2_posttrain_fashion_mnist_mlp", "fig2_posttrain_fashion_mnist_lenet5",
           "fig6_ranks_fashion_mnist_mlp", "fig6_ranks_fashion_mnist_lenet5", "fig4_p1_sweep", "cost_noise_overhead",
           "cost_compaction", "posttrain_baselines")
TABLES = ("table1_continuous", "table2_continuous", "bmrs_n_variants", "continuous_claims", "posttrain_claims",
          "fig4_p1_sweep", "table3_runtimes", "table4_runtimes", "cost_compaction", "baselines", "fig1_unit_counts")


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
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_figure_and_table_notebooks_regenerate_from_the_committed_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BMRS_QUIET", "1")
    runs, figures, tables = tmp_path / "runs", tmp_path / "figures", tmp_path / "tables"
    runs.mkdir()
    args = ["--profile", "quick", "--only", *NOTEBOOKS, "--quiet", "--force", "--results-dir", str(tmp_path / "results")]
    for key, value in {"source": "reference", "reference_dir": str(REFERENCE), "runs_dir": str(runs),
                       "summary_dir": str(tmp_path / "summary"), "figures_dir": str(figures),
                       "tables_dir": str(tables)}.items():
        args += ["--param", f"{key}={value}"]
    status = runner.main(args)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    for stem in NOTEBOOKS:
        nb = nbformat.read(tmp_path / "results" / "executed" / "quick" / f"{stem}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors == [], stem
    assert list(runs.iterdir()) == [], "a reference rerun must train nothing"

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

    # the tables show the committed numbers beside the paper's
    table1 = (tables / "table1_continuous.md").read_text()
    assert "F-MNIST Acc. % paper" in table1 and "77.90 ± 2.44" in table1  # the paper's LeNet5 BMRS_N
    for acc in pd.read_csv(REFERENCE / "continuous.csv")["test_acc"]:
        assert f"{acc:.2f} (n=1)" in table1, acc
    baselines = (tables / "baselines.md").read_text()
    for acc in pd.read_csv(REFERENCE / "baselines.csv")["test_acc"]:
        assert f"| {acc:.2f} " in baselines, acc


FMNIST = ROOT / "results" / "reference" / "fmnist"


@pytest.mark.notebook
@pytest.mark.timeout(900)
def test_fmnist_reference_regenerates_its_tables_without_training(tmp_path, capsys, monkeypatch):
    """The paper-protocol Fashion-MNIST results (profile fmnist) are committed as summaries; notebooks 02 and 03
    regenerate Figure 1, Table 1 and the verdicts from them alone."""
    if not (FMNIST / "continuous.csv").is_file():
        pytest.skip("no committed fmnist reference yet (python -m bmrs.report.study publish --profile fmnist)")
    monkeypatch.setenv("BMRS_QUIET", "1")
    runs, tables = tmp_path / "runs", tmp_path / "tables"
    runs.mkdir()
    args = ["--profile", "fmnist", "--only", "02_figure1_units", "--only", "03_continuous_pruning", "--quiet", "--force",
            "--results-dir", str(tmp_path / "results")]
    for key, value in {"source": "reference", "reference_dir": str(FMNIST), "runs_dir": str(runs),
                       "summary_dir": str(tmp_path / "summary"), "figures_dir": str(tmp_path / "figures"),
                       "tables_dir": str(tables)}.items():
        args += ["--param", f"{key}={value}"]
    assert runner.main(args) == 0, capsys.readouterr().err
    assert list(runs.iterdir()) == [], "a reference rerun must train nothing"
    summary = pd.read_csv(FMNIST / "continuous.csv")
    assert set(summary["profile"]) == {"fmnist"} and set(summary["train_epochs"]) == {50}
    verdicts = (tables / "table1_verdicts.md").read_text()
    mlp = summary[(summary["network"] == "mlp") & (summary["method"] == "bmrs_n_code")]["test_acc"]
    assert f"{mlp.mean():.2f} ± {mlp.std(ddof=0):.2f}" in verdicts  # our MLP BMRS_N over the committed seeds ...
    assert "84.99 ± 0.35" in verdicts  # ... beside the paper's
