"""Atomic file writes: a reader (or a rerun after a crash) sees the old file or the complete new one,
never half of one.

Every result the project writes (run configs and metrics, checkpoints, models, summaries, tables,
figures, executed-notebook stamps, the data cache) goes through :func:`atomic_path`: the content is
written to a uniquely named temporary file in the target's directory (same file system, so the final
``os.replace`` is atomic; unique, so concurrent writers never share a temporary file), given the mode a
plain ``open()`` would have given it, and moved into place only when writing succeeded. On any error the
temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["atomic_path", "default_file_mode", "write_text", "write_json"]


def default_file_mode() -> int:
    """0o666 minus the process umask: the mode open() gives a new file (mkstemp would leave 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; write to it inside the ``with`` block. On normal exit it
    replaces ``path`` (parent directories are created); on an exception it is deleted and ``path`` is
    untouched."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    """Serialise ``obj`` first (so an unserialisable object leaves no trace), then write it atomically."""
    text = json.dumps(obj, **{"indent": 2, **dumps_kwargs})
    return write_text(path, text)
