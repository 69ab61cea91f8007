"""bmrs.util.atomic: a target is replaced whole or not at all, with no temporary file left behind."""

from __future__ import annotations

import os
import stat

import pytest

from bmrs.util import atomic


def test_write_text_creates_parents_and_gives_the_umask_mode(tmp_path):
    path = atomic.write_text(tmp_path / "a" / "b" / "x.txt", "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    assert stat.S_IMODE(os.stat(path).st_mode) == atomic.default_file_mode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    atomic.write_json(path, {"old": 1})
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text('{"new": ')  # half-written
            raise RuntimeError("disk full")
    assert path.read_text() == '{\n  "old": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_write_json_serialises_before_touching_the_disk(tmp_path):
    path = tmp_path / "r.json"
    with pytest.raises(TypeError):
        atomic.write_json(path, {"x": object()})
    assert list(tmp_path.iterdir()) == []
    atomic.write_json(path, {"b": 1, "a": 2}, sort_keys=True)
    assert path.read_text() == '{\n  "a": 2,\n  "b": 1\n}'
