"""The display side of bmrs.report.cost (notebook 06's tables, sentences and figures), on the committed
reference summaries and small hand-made ones."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bmrs.report import cost  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def steps() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "cost_steps.csv")


@pytest.fixture(scope="module")
def compaction() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "cost_compaction.csv")


def test_resolution_and_measurement_text(steps):
    sizes = ", ".join(f"{int(s)} px" for s in steps.loc[steps["table"] == "table4", "image_size"].dropna().unique())
    assert cost.table4_resolution(steps).startswith(sizes + ", batch ") and "reduced" in cost.table4_resolution(steps)
    full = steps.assign(image_size=np.nan, batch=32)
    assert cost.table4_resolution(full) == "224 px, batch 32 (the paper's)"
    assert cost.table4_resolution(steps[steps["table"] == "table3"]) == "224 px, batch 32 (the paper's)"
    text = cost.measured_on(steps)
    assert text.startswith(f"measured on {steps.iloc[0]['device']} with {int(steps.iloc[0]['threads'])} thread(s)")
    assert "table3: " in text and "table4: " in text and text.endswith(cost.table4_resolution(steps))


def test_step_table_shows_ours_beside_the_papers(steps):
    cmp = cost.steps_vs_paper(steps)
    t3 = cost.step_table(cmp, "table3", steps)
    assert len(t3) == int((cmp["table"] == "table3").sum()) and t3.attrs["title"].startswith("Table 3: ")
    row = t3[(t3["network"] == "MLP") & (t3["dataset"] == "MNIST")].iloc[0]
    assert row["Train ms (paper)"] == "2.41 → 19.76–20.02"  # Table 3, MLP MNIST: None 2.41, noisy 19.76 … 20.02
    assert row["Train ratio (paper)"] == f"{19.76 / 2.41:.2f}–{20.02 / 2.41:.2f}×"
    r = cmp[(cmp["table"] == "table3") & (cmp["network"] == "mlp") & (cmp["dataset"] == "mnist")].iloc[0]
    assert row["train step ratio (ours)"] == (f"{r['train_step_ratio']:.2f}× [{r['train_step_ratio_q1']:.2f}, "
                                             f"{r['train_step_ratio_q3']:.2f}]")
    assert "Table 4 at" in cost.step_table(cmp, "table4", steps).attrs["notes"]
    assert cost.step_table(cmp[cmp["table"] == "table3"], "table4", steps).empty


def test_noise_overhead_figure_has_one_panel_per_table(steps):
    cmp = cost.steps_vs_paper(steps)
    fig = cost.noise_overhead_figure(cmp, steps)
    assert [ax.get_title().split(" (")[0] for ax in fig.axes] == ["Table 3", "Table 4"]
    assert len(fig.axes[0].get_xticklabels()) == int((cmp["table"] == "table3").sum())
    only3 = cost.noise_overhead_figure(cmp[cmp["table"] == "table3"], steps)
    assert len(only3.axes) == 1


def test_compaction_display_lines_and_figure(compaction):
    means = cost.compaction_means(compaction)
    assert len(means) == compaction.groupby(["network", "dataset", "method"]).ngroups and (means["seeds"] == 1).all()
    t = cost.compaction_display(compaction)
    first = compaction.iloc[0]
    row = t.iloc[0]
    assert row["params shrunk"] == f"{first['params_shrunk']:,.0f}" and row["acc. %"] == f"{first['test_acc']:.2f}"
    assert t.attrs["title"].startswith("What pruning buys") and f"{int(first['threads'])} thread(s)" in t.attrs["notes"]
    lines = cost.compaction_lines(compaction)
    assert len(lines) == compaction.groupby(["network", "dataset"]).ngroups
    assert all(line.startswith("* **") for line in lines)
    nothing = compaction.assign(units_pruned=0)
    assert cost.compaction_lines(nothing)[-1].startswith("* No run of this profile pruned a unit")
    fig = cost.compaction_figure(compaction)
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel() == "MAC reduction %"
    assert len(fig.axes[0].get_xticklabels()) == len(means)


@pytest.mark.parametrize("lo, hi, fmt, unit, text", [(1.0, 1.004, ".2f", "×", "1.00×"), (1.0, 2.0, ".1f", " %", "1.0–2.0 %"),
                                                     (float("nan"), 1.0, ".2f", "×", "—"), (None, 1.0, ".2f", "", "—")])
def test_span(lo, hi, fmt, unit, text):
    assert cost.span(lo, hi, fmt, unit) == text
