"""The documented deviations (bmrs.report.deviations): every deviation is still stated where the list says,
the README and the baselines' docstrings have their deviation sections, and the parsers read what they should."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from bmrs.report import deviations as dv

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [(path, phrase) for _, _, sources in dv.DEVIATIONS for path, phrase in sources]


@pytest.mark.parametrize("path, phrase", SOURCES, ids=[f"{p}:{k}" for p, k in SOURCES])
def test_every_deviation_is_still_stated_where_the_list_says(path, phrase):
    file = ROOT / path
    assert file.is_file(), f"{path} (named by a deviation) does not exist"
    assert phrase in file.read_text(encoding="utf-8"), f"{path} no longer states {phrase!r}: update the file or " \
                                                       "bmrs/report/deviations.py"


@pytest.mark.parametrize("path, who", dv.BASELINE_MODULES)
def test_the_baselines_list_their_deviations_from_their_authors_code(path, who):
    items = dv.docstring_items((ROOT / path).read_text(encoding="utf-8"))
    assert len(items) >= 3, f"{path}: no '{dv.BASELINE_HEADING}' section with numbered items"
    assert all(it.endswith(".") and len(it) > 20 for it in items)


def test_the_readme_has_a_deviations_section_and_the_table_collects_everything():
    bullets = dv.readme_bullets((ROOT / "README.md").read_text(encoding="utf-8"))
    assert bullets, f"README.md has no '{dv.README_HEADING}' section with bullets"
    table = dv.deviation_table(ROOT)
    assert list(table.columns) == ["#", "deviation", "from", "stated in"]
    assert table["#"].tolist() == list(range(1, len(table) + 1))
    assert table["deviation"].tolist()[: len(dv.DEVIATIONS)] == [text for text, _, _ in dv.DEVIATIONS]
    for path, _ in dv.BASELINE_MODULES:
        assert table["stated in"].str.startswith(path).any(), path


def test_docstring_items_and_readme_bullets_parse_their_sections():
    source = '''"""Title.

Deviations from the authors' code:
    1. The first item. It has a second sentence.
    2. A second item, e.g. with an abbreviation. And more
       text on the next line.
    * A bullet, i.e. a third item.

Other heading
    1. Not a deviation.
"""
'''
    assert dv.docstring_items(source) == ["The first item.", "A second item, e.g. with an abbreviation.",
                                          "A bullet, i.e. a third item."]
    assert dv.docstring_items('"""No such section."""') == []
    readme = "# T\n\n## Documented deviations\n\n* one\n  continued\n* two\n\n## Next\n\n* not this\n"
    assert dv.readme_bullets(readme) == ["one continued", "two"]
    assert dv.readme_bullets("# no section\n* a\n") == []


def test_deviation_section_cuts_the_docstring_at_the_next_heading():
    module = types.ModuleType("m", "Intro.\n\nDeviations from X:\n    1. one\n    2. two\n\nNext heading\n    body\n")
    assert dv.deviation_section(module) == "Deviations from X:\n    1. one\n    2. two"
    assert dv.deviation_section(types.ModuleType("n", "Only a protocol.")) == "Only a protocol."
