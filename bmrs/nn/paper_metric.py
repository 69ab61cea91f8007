"""The paper's compression metrics, computed on a masked model as the released code's
``get_true_parameter_compression_percent`` (modules/layers.py) counts them.

* Structure compression: the fraction of prunable units whose mask is 0.
* Parameter compression: removed parameters / all trainable parameters (weights, biases, batch-norm
  parameters, μ and log σ). A pruned unit removes its μ and log σ (2 parameters), its incoming row
  (or filter) in the producing Linear/Conv, and its outgoing column in every Linear/Conv that
  consumes it directly **when the shapes line up** (the consumer's input dimension is the number of
  units, as the released code checks). A conv channel flattened into a Linear owns a block of columns
  (25 per channel in LeNet5's conv2 -> fc1); the shapes do not line up there, so, as in the paper's
  numbers, those columns are not counted. Biases of pruned units are not counted (as in the paper).
  Entries removed by two units (a row of one and a column of another) are counted once.

So this is the paper's estimate, not the truth: it undercounts LeNet5 (on the paper-preset F-MNIST
BMRS_N run, 88.4 % here against 95.9 % for the physically shrunk network; the paper reports
88.02 ± 1.00 %) and ignores residual consumers. bmrs.nn.shrink counts the parameters of the
physically shrunk network exactly ("actual" compression everywhere in the tables).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmrs.nn.graph import trace_unit_groups

PAPER_METRIC_VERSION = 2
"""Version of :func:`paper_compression`'s rule, stored with every result that holds its value; results
stored under another version are recomputed when read (version 1 also counted a flattened conv channel's
block of columns in the next Linear)."""


@dataclass
class Compression:
    units_total: int
    units_pruned: int
    params_total: int
    params_removed: int

    @property
    def structure_pct(self) -> float:
        return 100.0 * self.units_pruned / max(self.units_total, 1)

    @property
    def parameter_pct(self) -> float:
        return 100.0 * self.params_removed / max(self.params_total, 1)

    def as_dict(self) -> dict[str, float]:
        return {"units_total": self.units_total, "units_pruned": self.units_pruned,
                "params_total": self.params_total, "params_removed": self.params_removed,
                "structure_compression_pct": self.structure_pct, "param_compression_pct": self.parameter_pct}


def paper_compression(model: nn.Module, example_input: Tensor | None = None) -> Compression:
    """Structure and parameter compression of model's current masks, by the rule of the module docstring."""
    total = sum(p.numel() for p in model.parameters() if p.requires_grad)
    groups = trace_unit_groups(model, example_input)
    removed_entries: dict[int, Tensor] = {}
    units_total = units_pruned = removed = 0

    def entry_mask(weight: nn.Parameter) -> Tensor:
        if id(weight) not in removed_entries:
            removed_entries[id(weight)] = torch.zeros(weight.shape, dtype=torch.bool)
        return removed_entries[id(weight)]

    for g in groups:
        pruned = (g.layer.mask.detach().cpu() == 0)
        units_total += pruned.numel()
        n_pruned = int(pruned.sum())
        units_pruned += n_pruned
        removed += 2 * n_pruned
        if n_pruned == 0:
            continue
        if g.producer_weight is not None:
            entry_mask(g.producer_weight)[pruned] = True
        for _, weight, block in g.consumers:
            if block == 1:  # the consumer's columns are the units themselves: the shapes line up
                entry_mask(weight)[:, pruned] = True
    removed += sum(int(m.sum()) for m in removed_entries.values())
    return Compression(units_total, units_pruned, total, removed)
