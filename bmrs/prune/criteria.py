"""Pruning criteria: one object per method of the paper (its Tables 1, 2 and
Figure 2), each scoring every unit.

A criterion gives, for every noise layer of a model, a float64 score per unit and a keep rule:

=============  ====================================  ======================================  =========
criterion      score                                 continuous-pruning rule (Tables 1, 2)   ranking
=============  ====================================  ======================================  =========
L2             ‖incoming weights‖₂ of the unit        prune a given global fraction (BMRS_N's) ascending
ExpectedTheta  E_q[θ]                                 prune iff E[θ] ≤ 0.1                    ascending
SNR            E[θ]/√Var θ                            prune iff SNR ≤ 1                       ascending
BMRSN          ΔF_N (Eq. 8)                           prune iff ΔF_N ≥ 0                      descending
BMRSU          ΔF_U with p1, p2 = 23 (Eq. 10)         prune iff ΔF_U ≥ 0                      descending
=============  ====================================  ======================================  =========

`importance` turns every score into "larger = keep first" (−ΔF for the BMRS criteria), which is
what post-training pruning ranks by; `stops` marks units a criterion refuses to prune whatever the
budget (BMRS never prunes a unit with ΔF < 0, as in the released
compression_vs_accuracy_separate.py).

All statistics are computed in float64 from the posterior parameters, with σ = exp(clamp(log σ,
−20, 5)) as in the noise layer (the released code's clamp). The weights feeding each unit (for L2) are found by
tracing the model (bmrs.nn.graph), so callers never name layers.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bmrs.core import distributions as dist
from bmrs.nn.graph import UnitGroup, trace_unit_groups
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.core.reduction import bmrs_u_threshold, delta_f_bmrs_n, delta_f_bmrs_u


def _posterior(layer: MultiplicativeNoise) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return layer.mu.detach().double().cpu(), layer.sigma.detach().double().cpu()


class Criterion(ABC):
    """Scores units and decides which to keep. Subclasses define `layer_scores` and `keep`."""

    name: str = "criterion"
    #: True when a smaller score means "prune first" (L2, E[θ], SNR); False for ΔF.
    ascending: bool = True

    @abstractmethod
    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        """float64 score per unit of one noise layer (on the CPU)."""

    def keep(self, scores: Tensor) -> Tensor:
        """Boolean keep-mask from scores under the criterion's fixed rule."""
        raise NotImplementedError(f"{self.name} has no fixed threshold; prune it to a target fraction instead")

    def importance(self, scores: Tensor) -> Tensor:
        """Larger = more important (kept longer) — for global rankings."""
        return scores if self.ascending else -scores

    def stops(self, scores: Tensor) -> Tensor:
        """Units the criterion never prunes, whatever the budget (none by default)."""
        return torch.zeros_like(scores, dtype=torch.bool)

    @property
    def needs_graph(self) -> bool:
        return False

    def fit(self, model: nn.Module, data, *, device: torch.device, seed: int) -> None:
        """Data-dependent criteria (C-OBD's Fisher, Dirichlet switches) gather what they need here,
        once per trained model, before `scores` is called; the BMRS-family criteria need nothing."""

    def scores(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, Tensor]:
        """{noise layer name: score per unit} for every noise layer of model."""
        groups = {g.name: g for g in trace_unit_groups(model, example_input)} if self.needs_graph else {}
        out = {name: self.layer_scores(layer, groups.get(name)) for name, layer in noise_layers(model)}
        if not out:
            raise ValueError(f"{type(model).__name__} has no MultiplicativeNoise layers; nothing to score")
        return out

    def __repr__(self) -> str:
        return self.name


class L2(Criterion):
    """‖W[k, ...]‖₂ of the weights producing unit k (the preceding Linear/Conv, bias excluded)."""

    name = "L2"
    ascending = True

    @property
    def needs_graph(self) -> bool:
        return True

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        if group is None or group.producer_weight is None:
            raise ValueError(
                "L2 needs the Linear/Conv weights that produce each noise layer's units, and none was found "
                f"for a layer with {layer.num_units} units; make sure a Linear/Conv (possibly followed by "
                "activations, batch norm or pooling) feeds it"
            )
        w = group.producer_weight.detach()
        return w.reshape(w.shape[0], -1).double().norm(dim=1).cpu()


class _PosteriorThreshold(Criterion):
    """A posterior statistic with a fixed threshold: prune iff statistic(μ, σ) ≤ threshold."""

    threshold: float
    ascending = True

    @staticmethod
    def statistic(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
        raise NotImplementedError

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        mu, sigma = _posterior(layer)
        return self.statistic(mu, sigma, layer.a, layer.b)

    def keep(self, scores: Tensor) -> Tensor:
        return scores > self.threshold


@dataclass(repr=False)
class ExpectedTheta(_PosteriorThreshold):
    """Prune iff E_q[θ] ≤ threshold (0.1 in the paper; absent from the released code)."""

    threshold: float = 0.1
    name = "E[theta]"

    @staticmethod
    def statistic(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
        return dist.expected_theta(mu, sigma, a=a, b=b)


@dataclass(repr=False)
class SNR(_PosteriorThreshold):
    """Prune iff SNR(θ) ≤ threshold (1 in Neklyudov et al. and the paper)."""

    threshold: float = 1.0
    name = "SNR"

    @staticmethod
    def statistic(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
        return dist.snr(mu, sigma, a=a, b=b)


@dataclass(repr=False)
class BMRSN(Criterion):
    """Prune iff ΔF_N ≥ 0 (paper Eq. 8). include_2pi=False is the released code's variant."""

    include_2pi: bool = True
    prior_sigma: float = 1e-6
    name = "BMRS_N"
    ascending = False

    def __post_init__(self) -> None:
        if not self.include_2pi:
            self.name = "BMRS_N (code, no 2pi)"

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        mu, sigma = _posterior(layer)
        return delta_f_bmrs_n(mu, sigma, a=layer.a, b=layer.b, prior_sigma=self.prior_sigma,
                              include_2pi=self.include_2pi)

    def keep(self, scores: Tensor) -> Tensor:
        return scores < 0

    def stops(self, scores: Tensor) -> Tensor:
        return scores < 0


@dataclass(repr=False)
class BMRSU(Criterion):
    """Prune iff ΔF_U ≥ 0 for the reduced prior LogU[2^-p2, 2^-p1] (paper Eq. 10, 15).

    clamp_mu=True clamps μ to [a, b] before evaluating, as the released code does
    (LogUniformCDFBMRPruningLayer in modules/layers.py).
    """

    p1: float = 8
    p2: float = 23
    clamp_mu: bool = True
    ascending = False

    def __post_init__(self) -> None:
        bmrs_u_threshold(self.p1, self.p2)  # validates p1 < p2 and the support
        self.name = f"BMRS_U-{self.p1:g}"

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        mu, sigma = _posterior(layer)
        if self.clamp_mu:
            mu = mu.clamp(layer.a, layer.b)
        return delta_f_bmrs_u(mu, sigma, a=layer.a, b=layer.b, p1=self.p1, p2=self.p2)

    def keep(self, scores: Tensor) -> Tensor:
        return scores < 0

    def stops(self, scores: Tensor) -> Tensor:
        return scores < 0


# --------------------------------------------------------------------------------------------------
# Applying criteria to models
# --------------------------------------------------------------------------------------------------

@dataclass
class PruningResult:
    """What a pruning step did: kept units per noise layer and the structure compression."""

    kept: dict[str, int]
    total: dict[str, int]

    @property
    def units_kept(self) -> int:
        return sum(self.kept.values())

    @property
    def units_total(self) -> int:
        return sum(self.total.values())

    @property
    def structure_compression(self) -> float:
        """Fraction of prunable units removed (the paper's 'structure (neuron) compression')."""
        return 1.0 - self.units_kept / max(self.units_total, 1)


def set_masks(model: nn.Module, keep: dict[str, Tensor]) -> PruningResult:
    """Write boolean keep-masks into the noise layers' mask buffers."""
    kept, total = {}, {}
    layers = dict(noise_layers(model))
    for name, mask in keep.items():
        layer = layers[name]
        layer.mask.copy_(mask.to(layer.mask.device, layer.mask.dtype))
        kept[name], total[name] = int(mask.sum()), mask.numel()
    return PruningResult(kept, total)


def current_result(model: nn.Module) -> PruningResult:
    """The PruningResult of the masks currently set in model."""
    layers = dict(noise_layers(model))
    return PruningResult({n: l.kept for n, l in layers.items()}, {n: l.num_units for n, l in layers.items()})


def apply_criterion(model: nn.Module, criterion: Criterion, *, example_input: Tensor | None = None) -> PruningResult:
    """Recompute every noise layer's mask from scratch with the criterion's fixed rule (Algorithm 1)."""
    scores = criterion.scores(model, example_input)
    return set_masks(model, {name: criterion.keep(s) for name, s in scores.items()})


def global_keep_masks(scores: dict[str, Tensor], criterion: Criterion, fraction: float) -> dict[str, Tensor]:
    """Prune the globally least important `fraction` of units (one threshold across layers, as the
    released code's set_masks).

    Units the criterion `stops` (BMRS: ΔF < 0) are never pruned, so BMRS curves end at their own
    stopping point. Ties are broken by order, so exactly round(fraction·N) units go
    (fewer if the criterion stops earlier).
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1]; got {fraction}")
    names = list(scores)
    flat = torch.cat([criterion.importance(scores[n]) for n in names])
    protected = torch.cat([criterion.stops(scores[n]) for n in names])
    n_prune = int(round(fraction * flat.numel()))
    order = torch.argsort(flat, stable=True)
    order = order[~protected[order]][:n_prune]
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order] = False
    return dict(zip(names, torch.split(keep, [scores[n].numel() for n in names])))


def prune_to_fraction(model: nn.Module, criterion: Criterion, fraction: float, *,
                      example_input: Tensor | None = None) -> PruningResult:
    """Mask the globally least important `fraction` of units of model by criterion."""
    scores = criterion.scores(model, example_input)
    return set_masks(model, global_keep_masks(scores, criterion, fraction))


def threshold_table(p1_values=(16, 12, 11, 8, 6, 4, 2, 1), p2: float = 23) -> dict[float, float]:
    """BMRS_U pruning thresholds on the posterior mass of [2^-p2, 2^-p1] (paper Eq. 15; notebook 01, section 4)."""
    return {p1: bmrs_u_threshold(p1, p2) for p1 in p1_values}

