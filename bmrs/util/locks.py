"""Exclusive file locks (``flock``) that say who holds them: the one mechanism behind a run's lock
(:func:`bmrs.run.experiments.run_lock`) and the grid's task claims (:mod:`bmrs.run.grid`).

A lock is released when its holder ends, however it ends (the kernel drops a dead process's flocks), so a
crashed worker never leaves a task locked. While held, the file names its holder ("pid N on HOST")."""

from __future__ import annotations

import contextlib
import fcntl
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path


def held(path: Path | str) -> bool:
    """Whether some process holds the lock on ``path`` right now (without waiting; a missing file: no)."""
    path = Path(path)
    if not path.exists():
        return False
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
    return False


@contextlib.contextmanager
def exclusive(path: Path | str, *, wait: bool = True,
              on_wait: Callable[[str], None] | None = None) -> Iterator[bool]:
    """Hold the exclusive lock on ``path`` (created with its directory). Yields True once held. When another
    process holds it: with ``wait``, call ``on_wait(holder)`` (holder: "pid N on HOST") and wait for it;
    without, yield False at once and hold nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                fh.seek(0)
                on_wait(fh.read().strip() or "another process")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} on {platform.node()}")
            fh.flush()
            yield True
        finally:
            fh.seek(0)
            fh.truncate()
            fh.flush()
            fcntl.flock(fh, fcntl.LOCK_UN)
