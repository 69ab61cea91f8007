"""Notebooks 04 (post-training, Figures 2/3/6/7) and 07 (baselines) under the smoke profile.

Both notebooks run in the session's smoke pass (tests/conftest.py: ``smoke_notebooks``) with every output in a
temporary directory (runs, summaries, figures, tables, executed notebooks), so the repository's results/ and
figures/ stay untouched; 07 reuses the base network 04 trained. Then 07 runs again with ``source="reference"``
(``smoke_reference``) from a temporary reference directory filled from those summaries and no runs directory:
its table must come from the reference results alone, training nothing, with the numbers of the run. 04's
reference branch runs from the committed results/reference/ (``quick_reference``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import notebook_outputs

FIGURES = ("fig2_posttrain_digits_mlp", "ranks_digits_mlp", "posttrain_baselines")
TABLES = ("posttrain_stops_digits_mlp", "posttrain_claims", "baselines")
SUMMARIES = ("posttrain", "ranks", "baselines", "posttrain_baselines")


def _assert_outputs(out: dict[str, Path], figures=FIGURES, tables=TABLES) -> None:
    for stem in figures:
        for ext in ("png", "pdf"):
            path = out["figures"] / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    for stem in tables:
        for ext in ("md", "tex"):
            path = out["tables"] / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's smoke pass: minutes on a 2-core machine
def test_posttrain_and_baselines_notebooks_smoke(smoke_notebooks):
    smoke_notebooks.check()
    out = smoke_notebooks.dirs
    _assert_outputs(out)
    for name in SUMMARIES:
        path = out["summary"] / "smoke" / f"{name}.csv"
        assert path.is_file() and path.stat().st_size > 0, path
    text04 = notebook_outputs(smoke_notebooks.executed("04_post_training"))
    text07 = notebook_outputs(smoke_notebooks.executed("07_baselines"))
    # the claims are printed with a verdict; the baselines' text names the comparison
    assert "stops near the knee" in text04 and "BMRS_N ranks like SNR" in text04
    assert any(v in text04 for v in ("[confirmed]", "[not confirmed]"))
    assert "continuous pruning at BMRS_N's actual compression" in text07
    table = (out["tables"] / "baselines.md").read_text()
    for method in ("BMRS_N", "BMRS_U-8", "BMRS_U-4", "L2", "C-OBD", "Dirichlet", "EigenDamage"):
        assert f"| {method} " in table, method


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's smoke passes: minutes on a 2-core machine
def test_baselines_notebook_from_the_reference_trains_nothing_and_shows_the_same_numbers(smoke_reference,
                                                                                       smoke_notebooks):
    smoke_reference.check()
    ref = smoke_reference.dirs
    _assert_outputs(ref, figures=("posttrain_baselines",), tables=("baselines",))
    assert not ref["runs"].exists() and not ref["summary"].exists()  # nothing trained, nothing written
    ref_table = (ref["tables"] / "baselines.md").read_text()
    assert "numbers from reference" in ref_table
    table = (smoke_notebooks.dirs["tables"] / "baselines.md").read_text()
    assert ref_table.split("\n", 1)[1] == table.split("\n", 1)[1]  # the same numbers below the caption


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's quick reference pass: minutes on a 2-core machine
def test_posttrain_notebook_from_the_committed_reference(quick_reference):
    quick_reference.check()
    dirs = quick_reference.dirs
    stems = {"figures": [f"{f}_fashion_mnist_{n}" for f in ("fig2_posttrain", "fig6_ranks") for n in ("mlp", "lenet5")],
             "tables": [f"posttrain_stops_fashion_mnist_{n}" for n in ("mlp", "lenet5")] + ["posttrain_claims"]}
    _assert_outputs(dirs, figures=stems["figures"], tables=stems["tables"])
    for stem in stems["tables"]:
        assert "numbers from reference" in (dirs["tables"] / f"{stem}.md").read_text().splitlines()[0], stem
    assert not dirs["runs"].exists() and not dirs["summary"].exists()  # nothing trained, nothing written
    assert "stops near the knee" in notebook_outputs(quick_reference.executed("04_post_training"))
