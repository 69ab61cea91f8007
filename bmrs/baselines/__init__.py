"""Structured-pruning baselines that join the BMRS comparisons (EigenDamage, C-OBD, Dirichlet pruning).

Each baseline module exposes ``run(cfg, model, bundle, train_cfg, *, device, out, results_dir, log) -> metrics``
so that :func:`bmrs.experiments.run` can dispatch to it by method name.
"""

from __future__ import annotations

from types import ModuleType

METHODS: tuple[str, ...] = ()


def module_for(method: str) -> ModuleType | None:
    """The baseline module implementing `method`, or None for the BMRS-family methods."""
    return None
