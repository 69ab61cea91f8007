"""Notebooks 00 (front page) and 06 (Tables 3/4 runtimes, compaction) under the smoke profile.

Everything goes to temporary directories (executed notebooks via --results-dir; runs, summaries, tables,
figures and the reference directory via notebook parameters), so the repository's results/ and figures/
stay untouched. 06 measures in the session's smoke pass (tests/conftest.py: ``smoke_notebooks``, Table 4 on
a ResNet-50 and a ViT-Tiny at 32 px) and reads the committed results/reference/ in ``quick_reference``,
measuring and training nothing.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bmrs import notebook_runner as runner
from conftest import REFERENCE, notebook_outputs


def _run(tmp: Path, stem: str, results: Path, **params) -> tuple[int, str]:
    args = ["--profile", "smoke", "--only", stem, "--quiet", "--force", "--results-dir", str(results)]
    for key, value in params.items():
        args += ["--param", f"{key}={value}"]
    return runner.main(args), str(results / "executed" / "smoke" / f"{stem}.ipynb")


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
    text = notebook_outputs(executed)
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
@pytest.mark.timeout(1200)  # the session's smoke pass: minutes on a 2-core machine
def test_cost_notebook_smoke(smoke_notebooks):
    smoke_notebooks.check()
    dirs = smoke_notebooks.dirs
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
    assert set(steps.loc[steps["table"] == "table4", "network"]) == {"resnet50", "vit_tiny"}
    compaction = pd.read_csv(dirs["summary"] / "smoke" / "cost_compaction.csv")
    assert len(compaction) >= 1 and (compaction["params_shrunk"] > 0).all()
    text = notebook_outputs(smoke_notebooks.executed("06_cost"))
    assert "NOT measured here" not in text and "summary written to" in text
    assert not dirs["reference"].exists()


@pytest.mark.notebook
@pytest.mark.timeout(1200)  # the session's quick reference pass: minutes on a 2-core machine
def test_cost_notebook_from_the_committed_reference_measures_nothing(quick_reference):
    quick_reference.check()
    dirs = quick_reference.dirs
    text = notebook_outputs(quick_reference.executed("06_cost"))
    assert f"NOT measured here: read {REFERENCE / 'cost_steps.csv'}" in text
    assert f"NOT measured here: read {REFERENCE / 'cost_compaction.csv'}" in text
    for stem in ("cost_noise_overhead", "cost_compaction"):
        _nonempty(dirs["figures"] / f"{stem}.png")
    _nonempty(dirs["tables"] / "table3_runtimes.md")
    assert "numbers from" in (dirs["tables"] / "cost_compaction.md").read_text()
    assert not dirs["runs"].exists() and not dirs["summary"].exists()  # nothing trained or written
