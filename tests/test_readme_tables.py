"""The README's result tables are filled from the tables the notebooks write (bmrs.report.readme)."""

from __future__ import annotations

import sys

import pytest

from bmrs.report import readme

README = """# Results

<!-- table: fmnist/table1_verdicts -->
| old | table |
<!-- end table -->

text between

<!-- table: table1_continuous -->
| quick | old |
<!-- end table -->
"""


def _tables(tmp_path):
    (tmp_path / "fmnist").mkdir(parents=True)
    (tmp_path / "fmnist" / "table1_verdicts.md").write_text(
        "**Table 1 cells. Profile: fmnist; numbers from /some/machine/path.**\n\n| a | b |\n|---|---|\n| 1 | 2 |\n")
    (tmp_path / "table1_continuous.md").write_text("**Quick. Profile: quick.**\n\n| q |\n|---|\n| 3 |\n")
    return tmp_path


def test_render_fills_each_block_without_the_caption(tmp_path):
    tables = _tables(tmp_path)
    out = readme.render(README, tables)
    assert "| a | b |\n|---|---|\n| 1 | 2 |\n<!-- end table -->" in out and "| q |\n|---|\n| 3 |\n" in out
    assert "Profile:" not in out and "/some/machine/path" not in out  # captions say where numbers were read
    assert "text between" in out and readme.stale(out, tables) == []
    assert readme.render(out, tables) == out  # filling twice changes nothing


def test_stale_names_the_blocks_that_differ_and_prefix_selects(tmp_path):
    tables = _tables(tmp_path)
    assert readme.stale(README, tables) == ["fmnist/table1_verdicts", "table1_continuous"]
    assert readme.stale(README, tables, prefix="fmnist/") == ["fmnist/table1_verdicts"]
    only = readme.render(README, tables, prefix="fmnist/")
    assert "| quick | old |" in only and "| 1 | 2 |" in only


def test_a_missing_table_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="notebook_runner --profile fmnist"):
        readme.render(README, tmp_path)


def test_cli_check_and_fill(tmp_path, monkeypatch, capsys):
    tables = _tables(tmp_path / "tables")
    path = tmp_path / "README.md"
    path.write_text(README)
    argv = ["python -m bmrs.report.readme", "--readme", str(path), "--tables-dir", str(tables)]
    monkeypatch.setattr(sys, "argv", argv + ["--check"])
    assert readme._main() == 1 and path.read_text() == README
    assert "stale: fmnist/table1_verdicts" in capsys.readouterr().out
    monkeypatch.setattr(sys, "argv", argv)
    assert readme._main() == 0 and "| 1 | 2 |" in path.read_text()
    monkeypatch.setattr(sys, "argv", argv + ["--check"])
    assert readme._main() == 0
    monkeypatch.setattr(sys, "argv", argv[:3] + ["--tables-dir", str(tmp_path / "none")])
    before = path.read_text()
    assert readme._main() == 2 and path.read_text() == before  # nothing half-written
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_a_mistyped_end_marker_touches_nothing(tmp_path, monkeypatch, capsys):
    tables = _tables(tmp_path / "tables")
    broken = README.replace("<!-- end table -->", "<!-- end  table -->", 1)  # the first block's end, mistyped
    with pytest.raises(ValueError, match="give every"):
        readme.render(broken, tables)
    path = tmp_path / "README.md"
    path.write_text(broken)
    monkeypatch.setattr(sys, "argv", ["python -m bmrs.report.readme", "--readme", str(path), "--tables-dir", str(tables)])
    assert readme._main() == 2 and path.read_text() == broken  # "text between" and the second block are kept
    assert "give every '<!-- table: NAME -->' line its own '<!-- end table -->' line" in capsys.readouterr().err


def test_the_default_tables_dir_does_not_depend_on_the_working_directory():
    assert readme.TABLES_DIR == readme.README.parent / "results" / "tables" and readme.TABLES_DIR.is_absolute()
