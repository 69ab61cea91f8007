"""Notebooks 00 (front page) and 06 (Tables 3/4 runtimes, compaction) under the smoke profile.

Everything goes to temporary directories (executed notebooks via --results-dir; runs, summaries, tables,
figures and the reference directory via notebook parameters), so the repository's results/ and figures/
stay untouched. 06 runs twice: measuring, then with source="reference" from a reference directory filled
with the summaries of the first run.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from bmrs import notebook_runner as runner


def _run(tmp: Path, stem: str, results: Path, **params) -> tuple[int, str]:
    args = ["--profile", "smoke", "--only", stem, "--quiet", "--force", "--results-dir", str(results)]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return runner.main(args), str(results / "executed" / "smoke" / f"{stem}.ipynb")


def _text(executed: str) -> str:
    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert errors == [], errors
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []) if c.cell_type == "code" else []:
            parts.append(o.get("text", ""))
            parts.extend(str(v) for k, v in o.get("data", {}).items() if k in ("text/markdown", "text/plain"))
    return "\n".join(parts)


def _nonempty(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0, path


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_index_notebook_smoke(tmp_path, capsys):
    tables = tmp_path / "tables"
    status, executed = _run(tmp_path, "00_index", tmp_path / "results", tables_dir=tables,
                            figures_dir=tmp_path / "figures")
    assert status == 0, capsys.readouterr().err
    for stem in ("index_paper_map", "index_deviations", "index_profile_costs", "index_profiles", "index_outputs"):
        for ext in ("md", "tex"):
            _nonempty(tables / f"{stem}.{ext}")
    text = _text(executed)
    paper_map = (tables / "index_paper_map.md").read_text()
    for item in [f"Figure {i}" for i in range(1, 8)] + [f"Table {i}" for i in range(1, 5)]:
        assert item in paper_map, item
    assert "not reproduced" in paper_map and "MISSING" not in paper_map
    deviations = (tables / "index_deviations.md").read_text()  # stated where it says: tests/test_deviations.py
    for module in ("bmrs/nn/models.py", "bmrs/run/train.py", "bmrs/run/data.py",
                   "bmrs/prune/dirichlet.py", "bmrs/prune/eigendamage.py", "README.md"):
        assert module in deviations, module
    profiles = (tables / "index_profiles.md").read_text()
    assert "06_cost" in profiles and "table4_image_size" in profiles
    assert "GPU-hours" in text


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # executes notebooks: minutes on a 2-core machine
def test_cost_notebook_smoke_then_reference(tmp_path, capsys):
    dirs = {name: tmp_path / name for name in ("runs", "summary", "tables", "figures")}
    status, executed = _run(tmp_path, "06_cost", tmp_path / "results", runs_dir=dirs["runs"],
                            summary_dir=dirs["summary"], tables_dir=dirs["tables"], figures_dir=dirs["figures"],
                            reference_dir=tmp_path / "no_reference")
    assert status == 0, capsys.readouterr().err
    for name in ("cost_steps", "cost_compaction"):
        _nonempty(dirs["summary"] / "smoke" / f"{name}.csv")
    for stem in ("table3_runtimes", "table4_runtimes", "cost_compaction"):
        for ext in ("md", "tex"):
            _nonempty(dirs["tables"] / f"{stem}.{ext}")
    for stem in ("cost_noise_overhead", "cost_compaction"):
        for ext in ("png", "pdf"):
            _nonempty(dirs["figures"] / f"{stem}.{ext}")
    steps = pd.read_csv(dirs["summary"] / "smoke" / "cost_steps.csv")
    assert set(steps["variant"]) == {"none", "noise"} and (steps["train_step_ratio"] > 0).all()
    assert set(steps["table"]) == {"table3", "table4"}
    compaction = pd.read_csv(dirs["summary"] / "smoke" / "cost_compaction.csv")
    assert len(compaction) >= 1 and (compaction["params_shrunk"] > 0).all()
    text = _text(executed)
    assert "NOT measured here" not in text and "summary written to" in text
    assert not (tmp_path / "no_reference").exists()

    # once more from a reference directory filled with those summaries: nothing is measured or trained
    reference = tmp_path / "reference"
    reference.mkdir()
    for path in (dirs["summary"] / "smoke").glob("*.csv"):
        shutil.copy(path, reference / path.name)
    again = {name: tmp_path / f"{name}_ref" for name in ("runs", "summary", "tables", "figures")}
    status, executed = _run(tmp_path, "06_cost", tmp_path / "results_ref", source="reference", reference_dir=reference,
                            runs_dir=again["runs"], summary_dir=again["summary"], tables_dir=again["tables"],
                            figures_dir=again["figures"])
    assert status == 0, capsys.readouterr().err
    text = _text(executed)
    assert f"NOT measured here: read {reference / 'cost_steps.csv'}" in text
    assert f"NOT measured here: read {reference / 'cost_compaction.csv'}" in text
    for stem in ("cost_noise_overhead", "cost_compaction"):
        _nonempty(again["figures"] / f"{stem}.png")
    _nonempty(again["tables"] / "table3_runtimes.md")
    assert "numbers from" in (again["tables"] / "cost_compaction.md").read_text()
    assert not again["runs"].exists() and not again["summary"].exists()  # nothing trained or written
