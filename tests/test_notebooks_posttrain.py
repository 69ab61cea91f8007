"""Notebooks 04 (post-training, Figures 2/3/6/7) and 07 (baselines) under the smoke profile.

Both notebooks run once through ``bmrs.notebook_runner`` with every output redirected into a temporary
directory (runs, summaries, figures, tables, executed notebooks), so the repository's results/ and
figures/ stay untouched; 07 reuses the base network 04 trained. Then both run again with
``source="reference"`` against a temporary reference directory filled from those summaries and an empty
runs directory: the figures and tables must come from the reference results alone, training nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

from bmrs import notebook_runner as runner

NOTEBOOKS = ("04_post_training", "07_baselines")
FIGURES = ("fig2_posttrain_digits_mlp", "ranks_digits_mlp", "posttrain_baselines")
TABLES = ("posttrain_stops_digits_mlp", "posttrain_claims", "baselines")
SUMMARIES = ("posttrain", "ranks", "baselines", "posttrain_baselines")


def _run(root: Path, tag: str, capsys, **params: str) -> Path:
    """Run both notebooks (smoke profile) with outputs under root/<tag>; returns that directory."""
    out = root / tag
    args = ["--profile", "smoke", "--only", *NOTEBOOKS, "--quiet", "--force", "--results-dir", str(out / "results"),
            "--param", f"figures_dir={out / 'figures'}", "--param", f"tables_dir={out / 'tables'}"]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    status = runner.main(args)
    captured = capsys.readouterr()
    assert status == 0, captured.err
    for stem in NOTEBOOKS:
        nb = nbformat.read(out / "results" / "executed" / "smoke" / f"{stem}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
        assert errors == [], stem
    return out


def _assert_outputs(out: Path) -> None:
    for stem in FIGURES:
        for ext in ("png", "pdf"):
            path = out / "figures" / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path
    for stem in TABLES:
        for ext in ("md", "tex"):
            path = out / "tables" / f"{stem}.{ext}"
            assert path.is_file() and path.stat().st_size > 0, path


def _text(out: Path, stem: str) -> str:
    nb = nbformat.read(out / "results" / "executed" / "smoke" / f"{stem}.ipynb", as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_posttrain_and_baselines_notebooks_smoke_then_reference(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BMRS_QUIET", "1")
    runs, summary = tmp_path / "runs", tmp_path / "summary"
    out = _run(tmp_path, "run", capsys, runs_dir=str(runs), summary_dir=str(summary))
    _assert_outputs(out)
    for name in SUMMARIES:
        path = summary / "smoke" / f"{name}.csv"
        assert path.is_file() and path.stat().st_size > 0, path
    text04, text07 = _text(out, "04_post_training"), _text(out, "07_baselines")
    # the claims are printed with a verdict; the baselines' text names the comparison
    assert "stops near the knee" in text04 and "BMRS_N ranks like SNR" in text04
    assert any(v in text04 for v in ("[confirmed]", "[not confirmed]"))
    assert "continuous pruning at BMRS_N's actual compression" in text07
    table = (out / "tables" / "baselines.md").read_text()
    for method in ("BMRS_N", "BMRS_U-8", "BMRS_U-4", "L2", "C-OBD", "Dirichlet", "EigenDamage"):
        assert f"| {method} " in table, method

    # from the reference results alone: a fresh reference directory, no runs directory
    reference = tmp_path / "reference"
    reference.mkdir()
    for name in SUMMARIES:
        shutil.copy(summary / "smoke" / f"{name}.csv", reference / f"{name}.csv")
    empty_runs, empty_summary = tmp_path / "no_runs", tmp_path / "no_summary"
    ref = _run(tmp_path, "reference", capsys, source="reference", reference_dir=str(reference),
               runs_dir=str(empty_runs), summary_dir=str(empty_summary))
    _assert_outputs(ref)
    assert not empty_runs.exists() and not empty_summary.exists()  # nothing trained, nothing written
    ref_table = (ref / "tables" / "baselines.md").read_text()
    assert "numbers from reference" in ref_table
    assert ref_table.split("\n", 1)[1] == table.split("\n", 1)[1]  # the same numbers below the caption
