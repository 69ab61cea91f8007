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

import errno
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
    except BaseException as exc:
        translated = _write_failure(exc, target)  # before the unlink: a full disk must still look full
        tmp.unlink(missing_ok=True)
        if translated is not None:
            raise translated from exc
        raise


#: torch.save reports a failed write (a full disk, a quota) as a RuntimeError of its C++ stream writer, e.g.
#: "[enforce fail at inline_container.cc:672] . unexpected pos 17664 vs 17558", without errno or file name.
_TORCH_WRITE_FAILURE = ("PytorchStreamWriter", "inline_container", "unexpected pos")
_NEARLY_FULL_BYTES = 1 << 20


def _write_failure(exc: BaseException, target: Path) -> OSError | None:
    """An OSError naming ``target`` for a failed write whose error does not say which file it was (Python's own
    write errors carry no file name) or what happened (torch's stream writer); None to re-raise ``exc`` as is."""
    if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
        return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(target))
    if isinstance(exc, RuntimeError) and any(s in str(exc) for s in _TORCH_WRITE_FAILURE):
        try:
            st = os.statvfs(target.parent)
            full = st.f_bavail * st.f_frsize < _NEARLY_FULL_BYTES
        except OSError:
            full = False
        if full:
            return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target))
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return OSError(errno.EIO, f"writing failed ({first}); check the free space and quota", str(target))
    return None


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike[str], obj: Any, **dumps_kwargs: Any) -> Path:
    """Serialise ``obj`` first (so an unserialisable object leaves no trace), then write it atomically."""
    text = json.dumps(obj, **{"indent": 2, **dumps_kwargs})
    return write_text(path, text)
