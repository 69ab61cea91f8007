"""Where a result came from: the code's git commit and the numerical environment of the process.

Recorded with every run (``metrics.json``) and every post-training sweep, because a run's id names its
configuration, not the code that computed it: a later fix of the math core, or a machine whose CPU takes other
vectorised kernels (torch reports it as ``cpu_capability``), may move a run's accuracy by a few tenths of a point
at the same configuration. With these fields two results of one id can be told apart by what differed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout this package runs from (``<sha>``, ``<sha>+dirty`` when tracked files under
    ``bmrs/`` differ from it), or ``"unknown"`` outside a git checkout (an installed wheel)."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."], cwd=_PACKAGE_DIR,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """The process's numerical environment: library versions, the CPU's kernel set, the intra-op threads, and
    :func:`code_version`."""
    return {"torch": torch.__version__, "numpy": _version("numpy"), "numba": _version("numba"),
            "python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "code": code_version()}
