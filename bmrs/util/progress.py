"""Progress bars for long work: quiet under tests, live in a terminal or a notebook, and sparse in a log.

* ``BMRS_QUIET=1`` (set by ``./run_tests.sh``) turns every bar off;
* in a terminal or a Jupyter kernel the bar redraws as usual (``tqdm.auto``);
* otherwise (output redirected to a log file, a Slurm job) it writes at most one line a minute, so the
  log shows progress without flooding.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")

LOG_INTERVAL_S = 60.0


def quiet() -> bool:
    """Progress bars are off under BMRS_QUIET=1 (set by the test runner)."""
    return os.environ.get("BMRS_QUIET", "") not in ("", "0")


def _interactive() -> bool:
    if "ipykernel" in sys.modules:
        return True
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterable[T]:
    """``iterable`` wrapped in a progress bar as the module docstring says (kwargs go to tqdm)."""
    if quiet():
        return iterable
    if _interactive():
        from tqdm.auto import tqdm  # deferred: tqdm.auto probes for a notebook front end on import

        return tqdm(iterable, dynamic_ncols=True, **kwargs)
    from tqdm import tqdm

    kwargs.pop("leave", None)
    return tqdm(iterable, mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, leave=True, **kwargs)
