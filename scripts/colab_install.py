"""Set up a Google Colab runtime for the companion's notebooks (run by each notebook's first cell, on Colab only).

Colab already has torch, torchvision, numpy, scipy, pandas, matplotlib and scikit-learn; this installs the
companion itself (editable, without dependencies, so Colab's torch is never replaced) and the few small
packages Colab lacks, makes ``import bmrs`` work in the running kernel at once (an editable install is only
seen by a new interpreter), and changes to the repository root, where the notebooks' relative paths
(``figures/``, ``results/``) point.

It expects the repository to be cloned in the runtime, e.g. ``!git clone <its URL>`` into ``/content``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SMALL_DEPENDENCIES = ["numba", "mlxtend", "papermill", "jupytext", "seaborn", "tabulate", "pyyaml"]

repo = Path(__file__).resolve().parents[1]
if not (repo / "pyproject.toml").is_file() or not (repo / "bmrs").is_dir():
    raise RuntimeError(f"{repo} is not the companion's repository; clone it first (!git clone <its URL>)")
if importlib.util.find_spec("bmrs") is None:
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(repo)])
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *SMALL_DEPENDENCIES])
if str(repo) not in sys.path:
    sys.path.insert(0, str(repo))
os.chdir(repo)
print(f"companion ready: {repo} (working directory)")
