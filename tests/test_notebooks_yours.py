"""Notebook 08 (pruning your own network) under the smoke profile, everything written to temporary directories."""

from __future__ import annotations

import pytest

from bmrs import notebook_runner as runner
from conftest import notebook_outputs as _outputs


@pytest.mark.notebook
def test_your_own_network_notebook_smoke(tmp_path, capsys):
    tables, figures = tmp_path / "tables", tmp_path / "figures"
    args = ["--profile", "smoke", "--only", "08_your_own_network", "--quiet", "--force", "--results-dir",
            str(tmp_path / "results"), "--param", f"tables_dir={tables}", "--param", f"figures_dir={figures}"]
    assert runner.main(args) == 0, capsys.readouterr().err
    text = _outputs(tmp_path / "results" / "executed" / "smoke" / "08_your_own_network.ipynb")
    assert "attach_noise(UserNet" in text and "residual groups" in text and "head: no noise" in text
    for name in ("bmrs_n_code, shrunk", "bmrs_u4, shrunk", "dense (no noise)"):
        assert name in (tables / "your_own_network.md").read_text()
    assert "largest |shrunk - masked|" in text
    for ext in ("png", "pdf"):
        assert (figures / f"your_own_network.{ext}").stat().st_size > 0
