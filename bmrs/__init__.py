"""BMRS: Bayesian Model Reduction for Structured Pruning (Wright, Igel & Selvan, NeurIPS 2024, arXiv:2406.01345).

The public API, for pruning your own network (README, "Pruning your own network")::

    import bmrs
    model = bmrs.attach_noise(net, example_batch)     # noise layers on every prunable Linear/Conv (torch.fx)
    pruner = bmrs.Pruner(model, "bmrs_n")             # loss term, optimiser groups, continuous pruning
    ...                                               # your loop: pruner.loss(ce), pruner.step() each epoch
    small = bmrs.shrink(model)                        # pruned units physically removed, same eval outputs

The names resolve lazily (PEP 562): ``import bmrs`` stays light (the notebook runner and the command line
import parts of the package without loading torch), and ``bmrs.attach_noise`` imports its module on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    # attaching, tracing, shrinking, measuring (bmrs.nn)
    "attach_noise": "bmrs.nn.attach", "AttachReport": "bmrs.nn.attach", "NoiseAttached": "bmrs.nn.attach",
    "MultiplicativeNoise": "bmrs.nn.noise", "model_kl": "bmrs.nn.noise", "noise_layers": "bmrs.nn.noise",
    "unmasked": "bmrs.nn.noise",
    "trace_structure": "bmrs.nn.graph", "trace_unit_groups": "bmrs.nn.graph",
    "shrink": "bmrs.nn.shrink", "fold_noise": "bmrs.nn.shrink", "dense_network": "bmrs.nn.shrink",
    "save_compact": "bmrs.nn.shrink", "load_compact": "bmrs.nn.shrink",
    "count_parameters": "bmrs.nn.measure", "count_macs": "bmrs.nn.measure", "compare_latency": "bmrs.nn.measure",
    "measure_latency": "bmrs.nn.measure", "evaluate": "bmrs.nn.measure",
    "paper_compression": "bmrs.nn.paper_metric",
    # criteria and the pruner (bmrs.prune)
    "Pruner": "bmrs.prune.pruner", "Readiness": "bmrs.prune.pruner", "param_groups": "bmrs.prune.pruner",
    "make_criterion": "bmrs.prune.registry", "CRITERIA": "bmrs.prune.registry",
    "Criterion": "bmrs.prune.criteria", "BMRSN": "bmrs.prune.criteria", "BMRSU": "bmrs.prune.criteria",
    "SNR": "bmrs.prune.criteria", "ExpectedTheta": "bmrs.prune.criteria", "L2": "bmrs.prune.criteria",
    "apply_criterion": "bmrs.prune.criteria", "prune_to_fraction": "bmrs.prune.criteria",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bmrs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
