"""Structured-pruning baselines that join the BMRS comparisons (EigenDamage, C-OBD, Dirichlet pruning).

* :mod:`bmrs.baselines.eigendamage` — EigenDamage (K-FAC eigenbasis, rank pruning, rebuilt layers) and
  C-OBD (diagonal-Fisher scores on the BMRS units, a :class:`bmrs.criteria.Criterion`);
* :mod:`bmrs.baselines.dirichlet` — Dirichlet pruning (switches on the BMRS units, a Criterion);
* :mod:`bmrs.baselines.protocol` — how they (and the paper's L2 baseline) are run against BMRS:
  same trained network and seed, same fine-tuning budget, matched compression.
"""

from __future__ import annotations

from types import ModuleType

METHODS: tuple[str, ...] = ("c_obd", "dirichlet", "eigendamage")
#: Methods that prune a trained base network once and then fine-tune (the protocol of baselines_spec C).
POST_HOC: tuple[str, ...] = ("l2",) + METHODS


def module_for(method: str) -> ModuleType | None:
    """The module running `method` after training (bmrs.baselines.protocol), or None for methods that
    prune while training (the BMRS family, E[θ], SNR) or do not prune (none, base)."""
    if method in POST_HOC:
        from bmrs.baselines import protocol

        return protocol
    return None
