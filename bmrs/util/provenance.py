"""Where a result came from: the code's git commit and the numerical environment of the process.

Recorded with every run (``metrics.json``) and every post-training sweep, because a run's id names its
configuration, not the code or the CPU that computed it. A run is bit for bit the same in any process on one
machine and code, but a CPU that takes other vectorised kernels (torch reports it as ``cpu_capability``) rounds
differently: the F-MNIST MLP's BMRS_N run (seed 1000, 50 + 10 epochs) gave 84.87 to 84.97 % test accuracy, at 91.99
to 92.00 % compression, under five kernel selections on one machine. With these fields two results of one id can
be told apart by what differed.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

_PACKAGE_DIR = Path(__file__).resolve().parents[1]

#: environment variables that choose which CPU kernels torch runs (ATen's vectorised kernels, MKL's BLAS code path
#: and instruction set, oneDNN's convolutions); each choice rounds differently, so a run records those that were set
KERNEL_VARIABLES = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
                    "DNNL_MAX_CPU_ISA")


def _git(*args: str) -> str:
    # --no-optional-locks: never take .git/index.lock (runs beside a user's own git commands)
    return subprocess.run(["git", "--no-optional-locks", *args], cwd=_PACKAGE_DIR, capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout this package runs from (``<sha>``, ``<sha>+dirty`` when tracked files under
    ``bmrs/`` differ from it), or ``"unknown"`` when the package is not the ``bmrs/`` folder of a git checkout's
    top level (an installed wheel, also one inside some other repository). Read once per process, when it first
    asks (:func:`environment` at the start of its first run), so a commit made while it runs is not recorded."""
    try:
        top = _git("rev-parse", "--show-toplevel")
        if not top or Path(top).resolve() != _PACKAGE_DIR.parent:
            return "unknown"
        sha = _git("rev-parse", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{sha}+dirty" if dirty else sha or "unknown"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; else :func:`platform.processor`): an Intel and an AMD CPU
    with the same ``cpu_capability`` may still take other MKL code paths."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict[str, Any]:
    """The process's numerical environment: library versions, the CPU (model and torch's kernel set, with the
    :data:`KERNEL_VARIABLES` that were set), the intra-op threads, and :func:`code_version`."""
    return {"torch": torch.__version__, "numpy": _version("numpy"), "numba": _version("numba"),
            "python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_variables": {k: os.environ[k] for k in KERNEL_VARIABLES if k in os.environ},
            "threads": torch.get_num_threads(), "code": code_version()}
