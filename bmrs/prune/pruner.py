"""BMRS in your own training loop: the loss term, the optimiser groups and continuous pruning in one object.

In the spirit of Torch-Pruning's ``pruner.step()``; the protocol is the paper's continuous pruning
(arXiv:2406.01345, Algorithm 1): train on cross-entropy + KL, recompute every mask from scratch with
the criterion's rule at the end of each epoch (a pruned unit may come back), prune once more and freeze the
masks for fine-tuning, then remove the pruned units physically::

    model = bmrs.attach_noise(net, example_batch)
    pruner = bmrs.Pruner(model, "bmrs_n_code")         # or "bmrs_u4", "snr", "etheta", ... (bmrs.prune.registry)
    opt = pruner.optimizer(lr=3e-3)                     # Adam; the noise parameters in their own group
    for epoch in range(epochs):
        for x, y in loader:
            loss = pruner.loss(F.cross_entropy(model(x), y))   # + kl_weight · KL (paper Eq. 4, per-layer means)
            opt.zero_grad(); loss.backward(); opt.step()
        pruner.step()                                   # masks from the criterion's rule
        print(pruner.readiness())                       # has training gone long enough?
    pruner.finetune()                                   # final pruning; masks frozen; keep training a few epochs
    small = bmrs.shrink(model)                          # physically smaller, same eval outputs

What governs how fast the posteriors separate. Under Adam a parameter whose gradient keeps its sign moves by
about its learning rate per step, whatever the gradient's size. The KL (paper Eq. 4) pulls every unit's posterior
towards the log-uniform prior, and it does so mostly through σ: from the initial log σ = −5, log σ rises by about
the noise learning rate per step while the noise is too small for the data term to resist, and μ hardly moves
(on scikit-learn's digits, 1,440 steps at 3·10⁻³ left every unit at μ ≈ −0.6, log σ ≈ −1). A unit the data need
stops widening where the noise starts to hurt; one they do not keeps widening until its posterior is close to
the prior (log σ ≈ 3) — and there BMRS prunes it: ΔF ≥ 0 for BMRS_U-4 and for the released code's ΔF_N
(``bmrs_n_code``, the rule behind the paper's BMRS_N numbers), while Eq. 8's ΔF_N (``bmrs_n``) stays just below 0
for such a posterior (by about the ½ log 2π the code drops) and prunes only once μ has fallen too, which takes far
longer. So a unit becomes prunable after roughly (3 − (−5)) / lr_noise ≈ 8 / lr_noise steps: ~2,700 at
lr_noise = 3·10⁻³, ~270 at 3·10⁻². Hence the defaults: ``noise_lr_scale=10`` (the noise group learns ten times
faster than the weights) and the criterion ``bmrs_n_code``. A faster noise learning rate is not neutral: it also
changes where the posteriors settle (on the Fashion-MNIST MLP it keeps SNR from collapsing as it does at the
paper's rate) and can cost accuracy; ``noise_lr_scale=1`` follows the paper when the budget allows.

The connectivity guard (``keep_connected=True``; the paper's protocol, bmrs.run, does not use it). The criterion
prunes unit by unit, so one step can empty a whole layer. Often that is right: on scikit-learn's digits a user's skip
network (stem Linear 64→16, a residual block of two Linear 16→16 with ReLU added back onto the stream, head; 48
units) lost its whole residual branch in every run at the defaults (15 seeds: 7-9 stem units kept, 93.3-96.1 % test
accuracy, dense 95.3 %): the skip connection carries the stream around it. But when a layer that every path crosses
— the stem — is emptied, the output no longer depends on the input and the network predicts one class. That
happened when the posteriors reached the prior before the weights had learned: at noise_lr_scale=50 every unit
crossed within three epochs (48/48 pruned, 8.3 %), and in a stem two units wide at the defaults. The guard refuses
exactly that: after the criterion's masks, the emptied layers that cut every path from the input to the output in
the traced graph are left whole for that step, so their units keep learning from the data (same network at
noise_lr_scale=50: 2-3 stem units kept, 69-83 %, against ~95 % at the default: it keeps the network from
going constant, it does not win back a lost race); ``step()``'s record reports it (``guard_kept``, ``guard_layers``).
At the defaults it never fired on the digits skip network, MLP or BN-CNN, whose results it leaves unchanged. A
guarded step means the noise learning rate is too fast for these weights: lower ``noise_lr_scale``.

How to tell that training has not gone long enough: :meth:`Pruner.readiness` measures, for every unit, how far
its log σ still has to rise (at its current μ) before the criterion prunes it, and reports the closest unit, the
steps that takes at least at the noise learning rate, and the pace observed over the last epochs. "No unit is
pruned and none is within ``near`` of the boundary" means the posteriors have not separated yet: train longer or
raise ``noise_lr_scale``.
"""

from __future__ import annotations

import collections
import math
import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, fx, nn

from bmrs.core import distributions as dist
from bmrs.nn.graph import symbolic_trace
from bmrs.nn.models import NoisyBatchNorm2d
from bmrs.nn.noise import KLReduction, MultiplicativeNoise, model_kl, noise_layers, noise_parameters  # noqa: F401 (re-exported)
from bmrs.nn.shrink import shrink
from bmrs.prune.criteria import (BMRSN, BMRSU, SNR, Criterion, ExpectedTheta, apply_criterion,
                                 current_result, prune_to_fraction)
from bmrs.prune.registry import make_criterion

#: Criteria whose score is a function of (μ, σ) only: readiness can measure the distance to their boundary.
POSTERIOR_CRITERIA = (BMRSN, BMRSU, SNR, ExpectedTheta)
_GRID = 161  # μ points between a and the current μ when looking for the boundary (spacing ≤ 0.125 for a = −20)


def param_groups(model: nn.Module, lr: float, *, noise_lr: float | None = None, noise_lr_scale: float = 10.0,
                 weight_decay: float = 0.0) -> list[dict[str, Any]]:
    """Optimiser parameter groups: the weights at `lr` (with `weight_decay`), the noise parameters at `noise_lr`
    (default lr · noise_lr_scale) without weight decay (a decay would pull μ and log σ to 0, not to the prior)."""
    if not lr > 0 or not noise_lr_scale > 0 or (noise_lr is not None and not noise_lr > 0):
        raise ValueError(f"learning rates must be > 0; got lr={lr}, noise_lr={noise_lr}, noise_lr_scale={noise_lr_scale}")
    weights, noise = noise_parameters(model)
    groups = [{"params": weights, "lr": lr, "weight_decay": weight_decay},
              {"params": noise, "lr": noise_lr if noise_lr is not None else lr * noise_lr_scale, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


@dataclass
class StepRecord:
    """What one :meth:`Pruner.step` did (units counted over all noise layers)."""

    epoch: int
    phase: str  # "train" | "final" | "finetune"
    pruned: bool  # the masks were recomputed at this step
    kept: int
    total: int
    newly_pruned: int
    revived: int
    closest: float | None = None  # how much the closest unpruned unit's log σ must still rise (posterior criteria)
    guard_kept: int = 0  # units the connectivity guard kept although the criterion pruned them (keep_connected)
    guard_layers: tuple[str, ...] = ()  # the noise layers it left whole at this step

    @property
    def structure_compression(self) -> float:
        return 1.0 - self.kept / max(self.total, 1)


@dataclass
class Readiness:
    """Has training gone long enough for the criterion to prune? (see the module docstring)"""

    criterion: str
    ready: bool
    units: int
    pruned: int
    near: int
    near_threshold: float
    closest: float | None  # how much log σ of the closest unpruned unit must still rise (None: no σ would do)
    rate: float | None  # how much closer the closest unit came per epoch, over the last steps
    epochs_to_boundary: float | None  # at that pace
    steps_to_boundary: float | None  # at least closest / noise_lr optimiser steps (Adam moves ≈ lr per step)
    noise_lr: float | None
    message: str
    per_layer: dict[str, dict[str, Any]] = field(default_factory=dict)
    guard_kept: int = 0  # units the connectivity guard kept at its most recent step (0: it never acted)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return self.message


def distance_to_boundary(criterion: Criterion, layer: MultiplicativeNoise, along: str = "log_sigma") -> Tensor:
    """Per unit (float64): how far the posterior must still move before `criterion` prunes the unit — 0 for a unit
    it prunes now, inf where no point of the path would.

    along="log_sigma": how much log σ must rise at the unit's current μ (up to the clamp log σ = 5). This is the
    way units go: the KL drives log σ up at about the noise learning rate per step while μ barely moves, and a
    unit the data do not need keeps widening until its posterior is close to the prior, where BMRS prunes it.
    along="mu": how much μ must fall at the current σ (down to a). Evaluated on a grid of 161 points."""
    if not isinstance(criterion, POSTERIOR_CRITERIA):
        raise ValueError(f"{criterion.name} does not score units by their posterior alone; no boundary to measure")
    if along not in ("log_sigma", "mu"):
        raise ValueError(f"along must be 'log_sigma' or 'mu'; got {along!r}")
    n = layer.num_units
    mu = layer.mu.detach().double().cpu().clamp(layer.a, layer.b)
    log_sigma = layer.log_sigma.detach().double().cpu().clamp(max=dist.LOG_SIGMA_MAX)
    steps = torch.linspace(0.0, 1.0, _GRID, dtype=torch.float64)[None, :]
    if along == "log_sigma":  # column 0 = the current posterior
        grid = log_sigma[:, None] + (dist.LOG_SIGMA_MAX - log_sigma[:, None]) * steps
        mus, log_sigmas, start = mu.repeat_interleave(_GRID), grid.reshape(-1), log_sigma
    else:
        grid = mu[:, None] + (layer.a - mu[:, None]) * steps
        mus, log_sigmas, start = grid.reshape(-1), log_sigma.repeat_interleave(_GRID), mu
    probe = MultiplicativeNoise(n * _GRID, a=layer.a, b=layer.b).double()
    with torch.no_grad():
        probe.mu.copy_(mus)
        probe.log_sigma.copy_(log_sigmas)
    prunes = ~criterion.keep(criterion.layer_scores(probe, None)).reshape(n, _GRID)
    first = torch.where(prunes, torch.arange(_GRID).expand(n, -1), torch.full((n, _GRID), _GRID)).min(1).values
    out = torch.full((n,), math.inf, dtype=torch.float64)
    found = first < _GRID
    out[found] = (grid[torch.arange(n), first.clamp(max=_GRID - 1)] - start).abs()[found]
    return out


#: Calls whose result is a size, not data: no data path runs through them (``x.view(x.size(0), -1)``).
_SHAPE_METHODS = frozenset({"size", "dim", "numel", "__len__"})
_SHAPE_ATTRIBUTES = frozenset({"shape", "ndim", "dtype", "device"})


def _shape_only(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _SHAPE_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return len(node.args) > 1 and node.args[1] in _SHAPE_ATTRIBUTES
        if node.target is len:
            return True
        if node.target is operator.getitem:  # an entry of a size is still a size
            return bool(node.args) and isinstance(node.args[0], fx.Node) and _shape_only(node.args[0])
    return False


def _noise_sites(graph: fx.Graph, model: nn.Module) -> dict[fx.Node, str]:
    """{call site: name of its noise layer} for the sites whose output is exactly zero when that layer's mask is all
    zero: a MultiplicativeNoise, or a NoisyBatchNorm2d (BatchNorm, then its noise)."""
    modules = dict(model.named_modules())
    sites = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        module = modules.get(node.target)
        if isinstance(module, MultiplicativeNoise):
            sites[node] = node.target
        elif isinstance(module, NoisyBatchNorm2d):
            sites[node] = f"{node.target}.noise"
    return sites


def severed_layers(graph: fx.Graph, model: nn.Module, empty: set[str]) -> list[str]:
    """Emptied noise layers (`empty`: names of layers whose mask is all zero) that cut every data path from the input
    to the output — the fewest on any one path — or [] when a path of unpruned units is left.

    A noise layer whose mask is all zero outputs exactly zero whatever its input, so everything computed only from it
    is a constant. 0-1 breadth-first search over the traced graph, from the inputs along the users of each node
    (not through calls that only read a size): entering the call site of an emptied layer costs 1, every other step
    0; the emptied layers on the cheapest path to the output are returned (any unit in each restores a path).
    A graph in which no path reaches the output at all gives [] as well (nothing a mask could change)."""
    sites = {node: name for node, name in _noise_sites(graph, model).items() if name in empty}
    dist_: dict[fx.Node, int] = {}
    parent: dict[fx.Node, fx.Node] = {}
    queue: collections.deque[fx.Node] = collections.deque()
    for node in graph.nodes:
        if node.op == "placeholder":
            dist_[node] = 0
            queue.append(node)
    while queue:
        node = queue.popleft()
        for user in node.users:
            if _shape_only(user):
                continue
            cost = dist_[node] + (1 if user in sites else 0)
            if user not in dist_ or cost < dist_[user]:
                dist_[user], parent[user] = cost, node
                (queue.appendleft if cost == dist_[node] else queue.append)(user)
    out = next((n for n in graph.nodes if n.op == "output"), None)
    if out is None or dist_.get(out, 0) == 0:
        return []
    path, node = [], out
    while node in parent:
        if node in sites and sites[node] not in path:
            path.append(sites[node])
        node = parent[node]
    return path[::-1]


class Pruner:
    """Continuous BMRS pruning for a user's own training loop (see the module docstring for the recipe).

    Args:
        model: a network with noise layers (bmrs.attach_noise, or MultiplicativeNoise placed by hand).
        criterion: a name of bmrs.prune.registry (default "bmrs_n_code": the paper's BMRS_N as its tables ran it;
            "bmrs_n" (Eq. 8), "bmrs_u4", "bmrs_u8", "snr", "etheta",
            "l2", "c_obd", "dirichlet", any "bmrs_u<p1>") or a Criterion. Criteria without a fixed rule (L2, C-OBD,
            Dirichlet) prune the globally least important `fraction` of units instead; C-OBD and Dirichlet
            need :meth:`fit` first.
        kl_weight, kl_reduction: the loss is task_loss + kl_weight · model_kl(model, kl_reduction) (paper Eq. 4:
            "mean" = mean over each layer's units, then over layers; not divided by the dataset size).
        noise_lr_scale: the noise parameters' learning rate is lr · noise_lr_scale (default 10; see the module
            docstring for why and what it costs).
        prune_every: recompute the masks every `prune_every` calls of :meth:`step` (the paper: every epoch).
        fraction: for criteria without a fixed rule, the fraction of units to prune at each step.
        example_input: a batch for criteria that trace the model (L2, C-OBD); default model.example_input().
        near: readiness counts a unit as near the boundary when its log σ is within `near` of it.
        keep_connected: the connectivity guard (default on). A pruning step may empty whole layers — BMRS often
            removes a residual branch entirely, which the skip connection makes harmless — but not every path from
            the input to the output: where the criterion's masks would (all units of a layer that every path
            crosses, such as the stem in front of a residual block), the emptied layers on the cheapest path
            through the traced graph (:func:`severed_layers`) are left whole at that step: all their units stay, so
            they keep learning from the data, and the criterion decides again at the next step. Without it such a
            step leaves a constant network that predicts one class. ``step()``'s record says how many units the
            guard kept and where (``guard_kept``, ``guard_layers``), and readiness() repeats it. A guarded step
            means the posteriors reached the prior before the weights had learned what those units do (a noise
            learning rate too fast for the weights, a layer too narrow): lower ``noise_lr_scale``. A model torch.fx
            cannot trace falls back to leaving every layer the step empties whole. keep_connected=False applies
            the criterion's masks as they are, as the paper's protocol does (bmrs.run does not use the Pruner: the
            paper's MLP collapse of SNR at threshold 1 is such an emptied layer, and is kept).
    """

    def __init__(self, model: nn.Module, criterion: str | Criterion = "bmrs_n_code", *, kl_weight: float = 1.0,
                 kl_reduction: KLReduction = "mean", noise_lr_scale: float = 10.0, prune_every: int = 1,
                 fraction: float | None = None, example_input: Tensor | None = None, near: float = 1.0,
                 keep_connected: bool = True) -> None:
        if not any(True for _ in noise_layers(model)):
            raise ValueError(f"{type(model).__name__} has no noise layers; call bmrs.attach_noise(model, example_input) "
                             "first")
        self.criterion = make_criterion(criterion) if isinstance(criterion, str) else criterion
        if not isinstance(self.criterion, Criterion):
            raise ValueError(f"criterion must be a name of bmrs.prune.registry or a Criterion; got {criterion!r}")
        if kl_reduction not in ("mean", "sum"):
            raise ValueError(f"kl_reduction must be 'mean' or 'sum'; got {kl_reduction!r}")
        if not kl_weight >= 0 or not noise_lr_scale > 0 or int(prune_every) < 1 or not near >= 0:
            raise ValueError(f"need kl_weight >= 0, noise_lr_scale > 0, prune_every >= 1, near >= 0; got {kl_weight}, "
                             f"{noise_lr_scale}, {prune_every}, {near}")
        self.fixed_rule = _has_fixed_rule(self.criterion)
        if not self.fixed_rule and fraction is None:
            raise ValueError(f"{self.criterion.name} has no fixed pruning rule; pass fraction=<the share of units to "
                             "prune at each step>")
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must lie in [0, 1]; got {fraction}")
        self.model = model
        self.kl_weight, self.kl_reduction = float(kl_weight), kl_reduction
        self.noise_lr_scale = float(noise_lr_scale)
        self.prune_every = int(prune_every)
        self.fraction = fraction
        self.example_input = example_input
        self.near = float(near)
        self.keep_connected = bool(keep_connected)
        self._graph: fx.Graph | None = None
        self._untraceable = False
        self.noise_lr: float | None = None
        self.epoch = 0
        self.frozen = False
        self.history: list[StepRecord] = []

    # ---- the loss and the optimiser ----------------------------------------------------------------
    def kl(self) -> Tensor:
        """model_kl(model, kl_reduction): the KL term of the paper's loss (differentiable)."""
        return model_kl(self.model, self.kl_reduction)

    def loss(self, task_loss: Tensor) -> Tensor:
        """task_loss + kl_weight · KL."""
        if not self.kl_weight:
            return task_loss
        return task_loss + self.kl_weight * self.kl().to(task_loss.device)

    def param_groups(self, lr: float, *, weight_decay: float = 0.0, noise_lr: float | None = None) -> list[dict]:
        """Parameter groups for any torch optimiser: weights at lr, noise at noise_lr (default lr · noise_lr_scale)."""
        groups = param_groups(self.model, lr, noise_lr=noise_lr, noise_lr_scale=self.noise_lr_scale,
                              weight_decay=weight_decay)
        self.noise_lr = noise_lr if noise_lr is not None else lr * self.noise_lr_scale
        return groups

    def optimizer(self, lr: float = 1e-3, *, optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
                  weight_decay: float = 0.0, noise_lr: float | None = None, **kwargs: Any) -> torch.optim.Optimizer:
        """optimizer(param_groups(lr), lr=lr, **kwargs): Adam by default, as in the paper."""
        return optimizer(self.param_groups(lr, weight_decay=weight_decay, noise_lr=noise_lr), lr=lr, **kwargs)

    def fit(self, data, *, device: torch.device | str = "cpu", seed: int = 0) -> "Pruner":
        """Let a data-dependent criterion (C-OBD's Fisher, Dirichlet's switches) gather what it needs."""
        self.criterion.fit(self.model, data, device=torch.device(device), seed=seed)
        return self

    # ---- pruning ---------------------------------------------------------------------------------
    def _masks(self) -> dict[str, Tensor]:
        return {name: layer.mask.detach().clone() for name, layer in noise_layers(self.model)}

    def _prune(self) -> list[str]:
        """Set the criterion's masks, then the connectivity guard; returns the layers the guard left whole."""
        with torch.no_grad():
            if self.fixed_rule and self.fraction is None:
                apply_criterion(self.model, self.criterion, example_input=self.example_input)
            else:
                prune_to_fraction(self.model, self.criterion, self.fraction, example_input=self.example_input)
            return self._guard() if self.keep_connected else []

    def _traced(self) -> fx.Graph | None:
        """The model's graph (traced once, on first need); None for a model torch.fx cannot trace."""
        if self._graph is None and not self._untraceable:
            if isinstance(self.model, fx.GraphModule):
                self._graph = self.model.graph
            else:
                try:
                    self._graph = symbolic_trace(self.model, what="Pruner")
                except ValueError:
                    self._untraceable = True
        return self._graph

    def _guard(self) -> list[str]:
        """The connectivity guard (keep_connected): the emptied layers that cut every path from the input to the
        output are left whole at this step; returns their names."""
        layers = dict(noise_layers(self.model))
        empty = {name for name, layer in layers.items() if not bool((layer.mask != 0).any())}
        if not empty:
            return []
        graph = self._traced()
        cut = severed_layers(graph, self.model, empty) if graph is not None else sorted(empty)
        for name in cut:
            layers[name].mask.fill_(1.0)
        return cut

    def _record(self, phase: str, prune: bool) -> StepRecord:
        before = self._masks()
        guarded = self._prune() if prune else []
        after = self._masks()
        newly = sum(int(((before[n] != 0) & (after[n] == 0)).sum()) for n in after)
        revived = sum(int(((before[n] == 0) & (after[n] != 0)).sum()) for n in after)
        res = current_result(self.model)
        closest = self._closest() if isinstance(self.criterion, POSTERIOR_CRITERIA) else None
        held = sum(res.total[n] for n in guarded)  # the criterion had pruned every unit of these layers
        rec = StepRecord(self.epoch, phase, prune, res.units_kept, res.units_total, newly, revived, closest, held,
                         tuple(guarded))
        self.history.append(rec)
        return rec

    def _closest(self) -> float:
        out = math.inf
        for _, layer in noise_layers(self.model):
            d = distance_to_boundary(self.criterion, layer)
            live = layer.mask.detach().cpu() != 0
            if bool(live.any()):
                out = min(out, float(d[live].min()))
        return out

    def step(self) -> StepRecord:
        """Call at the end of every training epoch: recompute the masks every `prune_every` epochs (from scratch,
        so a unit may come back); after :meth:`finetune` the masks stay frozen."""
        self.epoch += 1
        if self.frozen:
            return self._record("finetune", False)
        return self._record("train", self.epoch % self.prune_every == 0)

    def finetune(self) -> StepRecord:
        """End of training: prune once more and freeze the masks; keep training (CE + KL, as the paper does) for
        the fine-tuning epochs, calling step() after each as before."""
        rec = self._record("final", not self.frozen)
        self.frozen = True
        return rec

    def shrink(self, example_input: Tensor | None = None) -> nn.Module:
        """bmrs.shrink(model): the physically smaller network with the same eval outputs."""
        return shrink(self.model, example_input if example_input is not None else self.example_input)

    # ---- readiness ---------------------------------------------------------------------------------
    def readiness(self) -> Readiness:
        """How close the posteriors are to the criterion's boundary (see the module docstring)."""
        res = current_result(self.model)
        pruned = res.units_total - res.units_kept
        name = self.criterion.name
        guard, guard_note = self._guard_note()
        if not isinstance(self.criterion, POSTERIOR_CRITERIA):
            return Readiness(name, True, res.units_total, pruned, 0, self.near, None, None, None, None, self.noise_lr,
                             f"{name} ranks units and prunes a fraction ({self.fraction}); it has no boundary to "
                             f"approach: {pruned}/{res.units_total} units pruned{guard_note}", guard_kept=guard)
        per_layer: dict[str, dict[str, Any]] = {}
        near = 0
        closest = closest_mu = math.inf
        for lname, layer in noise_layers(self.model):
            d = distance_to_boundary(self.criterion, layer)
            live = layer.mask.detach().cpu() != 0
            dl = d[live]
            n_near = int((dl <= self.near).sum())
            near += n_near
            c = float(dl.min()) if dl.numel() else math.inf
            closest = min(closest, c)
            if dl.numel() and math.isinf(c):
                closest_mu = min(closest_mu, float(distance_to_boundary(self.criterion, layer, "mu")[live].min()))
            per_layer[lname] = {"units": layer.num_units, "pruned": int((~live).sum()), "near": n_near, "closest": c,
                                "mu_median": float(layer.mu.detach().median()),
                                "log_sigma_median": float(layer.log_sigma.detach().median())}
        ready = pruned > 0 or near > 0
        rate, eta = self._rate(closest)
        steps = closest / self.noise_lr if self.noise_lr and math.isfinite(closest) else None
        at = f" (≥ {steps:,.0f} optimiser steps at noise lr {self.noise_lr:g})" if steps is not None else ""
        if rate is None:
            pace = ""
        elif eta is not None:
            pace = f"; at the pace of the last epochs ({rate:.3g} per epoch) about {eta:,.0f} more epochs"
        else:
            pace = "; it has not come closer over the last epochs"
        if pruned:
            msg = (f"{name}: {pruned}/{res.units_total} units pruned; {near} more within {self.near:g} of the boundary "
                   f"in log σ")
        elif near:
            msg = (f"{name}: no unit pruned yet, but {near} within {self.near:g} of the boundary in log σ (closest "
                   f"{closest:.2f}{pace}): pruning is about to start")
        elif math.isinf(closest):
            mu_part = f"μ would have to fall by {closest_mu:.2f} at its σ" if math.isfinite(closest_mu) else \
                "neither a wider σ nor a lower μ alone would do"
            msg = (f"not ready: no unit is pruned or near the {name} boundary, and no σ up to the clamp prunes any unit "
                   f"at its current μ ({mu_part}). Training has not gone long enough for the posteriors to separate: "
                   f"train longer, raise noise_lr_scale (now {self.noise_lr_scale:g}), or use a criterion that prunes "
                   "posteriors close to the prior (bmrs_n_code, bmrs_u4)")
        else:
            msg = (f"not ready: no unit is pruned or near the {name} boundary; the closest unit needs log σ to rise by "
                   f"{closest:.2f} more{at}{pace}. Training has not gone long enough for the posteriors to separate: "
                   f"train longer or raise noise_lr_scale (now {self.noise_lr_scale:g})")
        return Readiness(name, ready, res.units_total, pruned, near, self.near, closest if math.isfinite(closest) else None,
                         rate, eta, steps, self.noise_lr, msg + guard_note, per_layer, guard)

    def _guard_note(self) -> tuple[int, str]:
        """(units the connectivity guard kept at its most recent step, a sentence about it; (0, "") if it never acted)."""
        last = next((r for r in reversed(self.history) if r.guard_kept), None)
        if last is None:
            return 0, ""
        return last.guard_kept, (
            f". At epoch {last.epoch} the connectivity guard kept {last.guard_kept} unit(s) the criterion had pruned "
            f"({', '.join(last.guard_layers)}), without which no path from the input to the output would have been "
            f"left: the posteriors reached the prior before the weights had learned; lower noise_lr_scale (now "
            f"{self.noise_lr_scale:g})")

    def _rate(self, closest: float, window: int = 5) -> tuple[float | None, float | None]:
        """(decrease of the closest unit's distance per epoch over the last `window` steps, epochs left at
        that pace) from the step history; (None, None) with fewer than two steps."""
        past = [r for r in self.history if r.closest is not None and math.isfinite(r.closest)][-window - 1:]
        if len(past) < 2 or not math.isfinite(closest) or past[-1].epoch == past[0].epoch:
            return None, None
        rate = (past[0].closest - past[-1].closest) / (past[-1].epoch - past[0].epoch)
        return rate, (closest / rate if rate > 1e-3 else None)


def _has_fixed_rule(criterion: Criterion) -> bool:
    try:
        criterion.keep(torch.zeros(1, dtype=torch.float64))
    except NotImplementedError:
        return False
    return True
