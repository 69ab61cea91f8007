"""Dirichlet pruning (Adamczewski & Park, AISTATS 2021) as a criterion on the units BMRS prunes
(arXiv:2011.05985; the authors' code ``kamadforge/dirichlet_pruning``).

The method
    Every prunable layer l with D_l units gets a *switch vector* s_l on the simplex Δ^{D_l-1} that
    scales the unit outputs, h̃_{l,j} = s_{l,j} · h_{l,j}. With the pretrained weights W fixed, only the
    switch distribution is learned: the prior is p(s_l) = Dir(α₀·1) and the variational posterior is
    q(s_l) = Dir(φ_l) with φ_l = softplus(θ_l), θ_l ∈ R^{D_l} free. A unit's importance is
    its posterior mean E_q[s_{l,j}] = φ_{l,j}/φ_{l,0}, with φ_{l,0} = Σ_j φ_{l,j}.

Here
    The switches sit on the units of the noise layers (a forward hook after each
    :class:`~bmrs.nn.noise.MultiplicativeNoise`, i.e. after the nonlinearity in the MLP and LeNet5, after
    BatchNorm in the ResNets, on the block outputs in the ViT). They act on the BMRS-trained network
    with every weight and noise parameter frozen and the whole network in eval mode (noise = the fixed
    per-unit scale E[θ]·mask, BatchNorm running statistics), which is the network the BMRS runs evaluate
    (the post-hoc protocol of :mod:`bmrs.run.posthoc`).
    Sampled switches are rescaled by D_l, u_l = D_l · s_l, so the prior mean is the identity and the
    pretrained network is unchanged at initialisation.

The objective (the per-example ELBO), minimised per minibatch of B examples with K samples per switch:

    L(θ) = (1/K) Σ_k  CE_mean( f(x; u^(k)), y )  +  Σ_l KL( Dir(φ_l) ‖ Dir(α₀·1) ) / N_train,

    KL( Dir(φ) ‖ Dir(α₀·1) ) = log Γ(φ₀) − log Γ(D α₀) − Σ_j log Γ(φ_j) + D log Γ(α₀)
                               + Σ_j (φ_j − α₀)(ψ(φ_j) − ψ(φ₀))   (the closed form of the authors' code).

Scores
    ``layer_scores`` returns the size-normalised importance D_l · φ_j/φ₀ (1 = "as important as a uniform
    share"), so one global threshold across layers (``prune_to_fraction``,
    ``post_training_sweep``) makes sense. ``allocation="uniform"`` returns within-layer rank quantiles
    instead, which a global threshold turns into the same pruning fraction in every layer (an
    ablation).

Deviations from the authors' code (``kamadforge/dirichlet_pruning``)
    (its ``methods/lenet5_switch_integral.py`` and ``methods/main2vgg_switch_integral_work.py`` train the switches,
    ``Lenet/lenet_network_pruning.py`` drives the LeNet runs)
    1. Placement: switches after each noise layer, i.e. after the nonlinearity (after BN in the ResNets),
       never in front of a BatchNorm; the code puts them right after the conv, before pool/ReLU/BN
       (lenet5_switch_integral.py, main2vgg_switch_integral_work.py), where a train-mode BN cancels the switch.
    2. The whole network is in eval mode while the switches train (BN running statistics are neither
       used for normalisation nor updated, dropout is off, noise is E[θ]·mask); the code trains with BN
       in train mode, which cancels a per-channel scale and updates the running statistics.
    3. Weights are frozen with ``requires_grad_(False)`` and only the switch parameters are given to the
       optimiser, so no weight decay or momentum touches them; every flag and module mode is restored
       afterwards and the model is left bit-identical (the code zeroes gradients by hooks and
       decays the "frozen" weights with SGD + wd 5e-4 for VGG/WRN).
    4. Switch samples are rescaled by D_l (prior mean = identity); the code uses s directly and the
       network starts at ~1/D_l of its activations (11–14 % accuracy on the 99.27 % LeNet,
       by the comments of lenet5_switch_integral.py).
    5. Likelihood: the mean over the K samples of the per-sample cross-entropy, a proper Monte-Carlo
       estimate of the expected log-likelihood; the code averages the logits over samples before the
       cross-entropy. ``code_faithful=True`` restores the logit average.
    6. Samples and examples are paired correctly: the K samples are stacked sample-major along the
       batch axis, row k·B + b = (sample k, example b), and logits are read back as (K, B, classes);
       the code reshapes them as (B, K, classes) and so averages the logits of *different* examples
       and pairs them with one label (lenet5_switch_integral.py, main2vgg_switch_integral_work.py). Fixed in both
       variants.
    7. KL weight 1/N_train (the per-example ELBO); the code uses β(epoch)·KL/batch_size with
       β(e) = min(e, 1.6e6)/1.6e6, an effective weight of ~1e-8.
       ``code_faithful=True`` restores β(e)/batch_size (epochs counted from 1, the LeNet scripts).
    8. All layers' switches are trained jointly in one run; the code trains one layer per run
       (reloading the checkpoint each time, lenet_network_pruning.py). ``joint=False`` or
       ``code_faithful=True`` trains layer by layer; the choice is recorded in ``variant``.
    9. Optimiser: Adam, lr 1e-3, on the switch parameters only, for every network; the code uses Adam
       1e-3 for LeNet but SGD 0.1 (momentum 0.9, wd 5e-4) for VGG/WRN.
    10. Initialisation θ = softplus⁻¹(1) (φ = 1, the neutral choice); the code uses θ = −1 (LeNet) or
        0.05 (VGG). ``code_faithful=True`` uses −1 unless ``theta_init`` is given.
    11. α₀ = 0.5 (the VGG code default, sparsity-encouraging) is the main setting and α₀ = 2 (the LeNet
        code default) the ablation.
    12. K = 5 samples (the LeNet switch file's default; its driver passes 150, the VGG script 3) and 3
        epochs (the code's ``epochs_num``).
    13. Gamma draws are normalised in log space, s = softmax(log g), with φ clamped ≥ 1e-3. log g is the
        log of ``Gamma(φ, 1).rsample`` (implicit reparameterisation) where φ ≥ 0.25; below, where raw
        float32 draws underflow (torch clamps them at ~1e-38, for φ = 1e-3 nine times in ten), it is
        log G(φ+1) + log(U)/φ with G(φ+1) ~ Gamma(φ+1, 1) by ``rsample`` and U ~ U(0, 1), exactly
        Gamma(φ) (G(φ)·U^{1/φ} ~ Gamma(φ)). The code normalises raw Gamma samples, which underflow for
        small φ ("sum of gamma samps are zero!", lenet5_switch_integral.py). ``log_space_sampling=False`` normalises
        plain ``Gamma(φ, 1).rsample`` draws with an ε.
    14. Cross-layer allocation: a global threshold on D_l·E_q[s_j]; in the code the
        per-layer keep counts are a manual (grid-searched) input (``--arch`` of lenet_network_pruning.py). The paper's
        own rule is not stated. ``allocation="uniform"`` gives the uniform-per-layer-fraction ablation.
    15. Pruning uses the project's noise-layer masks (and compaction), with the same post-pruning
        budget as every other method (the BMRS protocol: 1 epoch of Adam fine-tuning per level); the code
        zeroes weights, biases and BN γ/β by hand and fine-tunes with early stopping (lenet_network_pruning.py).
    16. No selection on the test set: switches train on the training split only, diagnostics use the
        validation split (the code stops early and selects on the test set).
    17. The "integral" (sampling) variant, with the KL on φ; the LeNet script's default is the point
        estimate, whose KL is taken on φ/φ₀ (lenet5_switch_pointest.py).
    18. The base network is the BMRS-trained MLP/LeNet5 (ReLUs between the FC layers, noise folded in as
        E[θ]·mask), not the authors' LeNet 10-20-100-25 without FC nonlinearities
        (models/lenet5.py).

``code_faithful=True`` (a sanity check only) switches deviations 5, 7, 8 and 10 back to the
code. Not reproduced even then, because they would change the base network or make the switches
unidentifiable: BN in train mode, the code's switch placement, un-rescaled switches and the
sample/example mix-up (items 1, 2, 4, 6).
"""

from __future__ import annotations

import math
import time
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.prune.criteria import Criterion
from bmrs.nn.graph import UnitGroup
from bmrs.nn.measure import evaluate
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.util.batches import iterate_batches
from bmrs.util.progress import progress

__all__ = ["BOOST_BELOW", "SOFTPLUS_INV_ONE", "CODE_BETA_DENOMINATOR", "Dirichlet", "DirichletSwitch", "code_beta",
           "dirichlet_kl", "log_gamma_rsample", "mc_cross_entropy"]

#: θ with softplus(θ) = 1: the neutral initialisation (deviation 10).
SOFTPLUS_INV_ONE = math.log(math.e - 1.0)
#: The LeNet scripts' KL annealing denominator, β(e) = min(e, 8000·200)/(8000·200) (lenet5_switch_integral.py).
CODE_BETA_DENOMINATOR = 8000 * 200


def code_beta(epoch: int) -> float:
    """The code's KL weight factor β(e) for epoch e counted from 1 (the authors' LeNet
    scripts, methods/lenet5_switch_integral.py)."""
    return min(float(epoch), CODE_BETA_DENOMINATOR) / CODE_BETA_DENOMINATOR


def dirichlet_kl(phi: Tensor, alpha0: float | Tensor) -> Tensor:
    """KL( Dir(φ) ‖ Dir(α₀·1) ) over the last axis of phi (the closed form of the
    module docstring), differentiable.

    Evaluated in float64 with lgamma/digamma (exact for φ down to the 1e-3 clamp and far beyond) and
    returned in phi's dtype. alpha0 is a positive scalar, or a tensor broadcastable to phi.shape[:-1]
    (one α₀ per distribution).
    """
    if phi.dim() < 1 or phi.shape[-1] < 1:
        raise ValueError(f"dirichlet_kl needs concentrations along the last axis; got shape {tuple(phi.shape)}")
    if not isinstance(alpha0, Tensor) and not float(alpha0) > 0:
        raise ValueError(f"alpha0 must be > 0; got {alpha0}")
    p = phi.double()
    a = torch.as_tensor(alpha0, dtype=torch.float64, device=p.device)  # () or broadcastable to phi.shape[:-1]
    a_unit = a.unsqueeze(-1) if a.dim() else a
    d = p.shape[-1]
    p0 = p.sum(-1)
    kl = (torch.lgamma(p0) - torch.lgamma(d * a) - torch.lgamma(p).sum(-1) + d * torch.lgamma(a)
          + ((p - a_unit) * (torch.digamma(p) - torch.digamma(p0).unsqueeze(-1))).sum(-1))
    return kl.to(phi.dtype) if phi.is_floating_point() else kl


#: Below this concentration Gamma draws are taken in log space through the boost (deviation 13).
BOOST_BELOW = 0.25


def log_gamma_rsample(concentration: Tensor, samples: int, *, boost_below: float = BOOST_BELOW) -> Tensor:
    """log of `samples` reparameterised Gamma(φ, 1) draws per entry of φ, shape (samples, *φ.shape).

    Where φ ≥ boost_below: log of ``Gamma(φ, 1).rsample`` (implicit reparameterisation; a float32 draw
    underflows with probability < 1e-9 there). Where φ < boost_below, in log space through the boost
    G(φ) = G(φ + 1)·U^{1/φ}: log G(φ) = log G(φ + 1) + log(U)/φ with G(φ + 1) from
    ``Gamma(φ + 1, 1).rsample`` and U ~ U(0, 1), which cannot underflow (torch clamps raw draws at the
    smallest normal number, ~1e-38 in float32, which φ = 1e-3 hits nine times in ten). Both branches
    are exact samplers with unbiased pathwise gradients. Uses torch's global RNG on φ's device.
    """
    phi = concentration
    small = phi < boost_below
    one = torch.ones_like(phi)
    tiny = torch.finfo(phi.dtype).tiny
    plain = torch.distributions.Gamma(torch.where(small, one, phi), one).rsample((samples,))
    boosted = torch.distributions.Gamma(torch.where(small, phi, one) + 1.0, one).rsample((samples,))
    u = torch.rand((samples, *phi.shape), dtype=phi.dtype, device=phi.device).clamp_min_(tiny)
    log_boosted = boosted.clamp_min(tiny).log() + u.log() / torch.where(small, phi, one)
    return torch.where(small, log_boosted, plain.clamp_min(tiny).log())


def mc_cross_entropy(logits: Tensor, y: Tensor, samples: int, *, average_logits: bool = False) -> Tensor:
    """Monte-Carlo cross-entropy of K = `samples` stacked forward passes.

    logits has K·B rows laid out sample-major (row k·B + b = sample k of example b, as produced by
    :class:`DirichletSwitch`); y has the B labels. Returns (1/K) Σ_k CE_mean(logits_k, y)
    (deviation 5), or with ``average_logits`` the code's CE of the sample-averaged logits (with the
    example/sample pairing fixed: deviation 6).
    """
    b = y.shape[0]
    if logits.dim() != 2 or logits.shape[0] != samples * b:
        raise ValueError(f"expected logits of shape ({samples}·{b}, classes) for {samples} samples of {b} "
                         f"examples; got {tuple(logits.shape)}")
    per_sample = logits.reshape(samples, b, logits.shape[1])
    if average_logits:
        return F.cross_entropy(per_sample.mean(0), y)
    return F.cross_entropy(logits, y.repeat(samples))


class DirichletSwitch(nn.Module):
    """A Dirichlet switch vector on `num_units` units: h ↦ h · u with u = D·s, s ~ Dir(softplus(θ)).

    Args:
        num_units: D, the number of units (features, channels).
        dim: the axis of the activation that indexes the units, as for MultiplicativeNoise: 1 for
            (N, F) and (N, C, H, W), -1 for (N, T, D).
        samples: K, the Monte-Carlo samples drawn per forward pass in training mode.
        theta_init: initial θ (default softplus⁻¹(1), so φ = 1).
        rescale: multiply s by D so that the prior mean is the identity (deviation 4).
        min_concentration: lower clamp of φ (deviation 13).
        log_space_sampling: normalise log Gamma draws with a softmax, boosted where φ < 0.25 (default,
            see :func:`log_gamma_rsample`), or plain ``Gamma(φ, 1).rsample`` draws with an ε (the code's way).

    Training mode draws K samples u^(1..K) and returns K·B rows stacked sample-major: row k·B + b is
    example b scaled by sample k, so example b keeps its label in every sample (deviation 6). The input
    may have B rows (it is then broadcast over the samples) or already K·B rows (a switch further down
    the network); pass ``batch_size=B`` to disambiguate, otherwise K·B rows are assumed. Eval mode
    multiplies by the posterior mean D·φ/φ₀ (or φ/φ₀ without rescaling) and keeps the batch size.
    The last switch vector used is kept in ``last_sample`` ((K, D) or (D,)) for inspection.
    """

    def __init__(self, num_units: int, *, dim: int = 1, samples: int = 5, theta_init: float = SOFTPLUS_INV_ONE,
                 rescale: bool = True, min_concentration: float = 1e-3, log_space_sampling: bool = True,
                 normaliser_eps: float = 1e-30, device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if int(num_units) < 1:
            raise ValueError(f"num_units must be a positive integer; got {num_units}")
        if int(samples) < 1:
            raise ValueError(f"samples must be >= 1; got {samples}")
        if not min_concentration > 0:
            raise ValueError(f"min_concentration must be > 0; got {min_concentration}")
        self.num_units = int(num_units)
        self.dim = int(dim)
        self.samples = int(samples)
        self.rescale = bool(rescale)
        self.min_concentration = float(min_concentration)
        self.log_space_sampling = bool(log_space_sampling)
        self.normaliser_eps = float(normaliser_eps)
        self.theta = nn.Parameter(torch.full((self.num_units,), float(theta_init), device=device, dtype=dtype))
        self.last_sample: Tensor | None = None

    def extra_repr(self) -> str:
        return f"{self.num_units}, dim={self.dim}, samples={self.samples}, rescale={self.rescale}"

    @property
    def scale(self) -> float:
        return float(self.num_units) if self.rescale else 1.0

    def concentration(self) -> Tensor:
        """φ = max(softplus(θ), min_concentration), differentiable."""
        return F.softplus(self.theta).clamp_min(self.min_concentration)

    def mean(self) -> Tensor:
        """The posterior-mean switch D·φ/φ₀ (φ/φ₀ without rescaling), differentiable."""
        phi = self.concentration()
        return self.scale * phi / phi.sum()

    def sample(self, samples: int | None = None) -> Tensor:
        """(K, D) reparameterised switch samples on the simplex scaled by D (or on the simplex)."""
        k = self.samples if samples is None else int(samples)
        phi = self.concentration()
        if self.log_space_sampling:
            s = torch.softmax(log_gamma_rsample(phi, k), dim=-1)
        else:
            g = torch.distributions.Gamma(phi, torch.ones_like(phi)).rsample((k,))
            s = g / (g.sum(-1, keepdim=True) + self.normaliser_eps)
        return self.scale * s

    def _unit_axis(self, x: Tensor) -> int:
        if x.dim() < 2 or not -x.dim() <= self.dim < x.dim() or x.shape[self.dim] != self.num_units \
                or self.dim % x.dim() == 0:
            raise ValueError(
                f"{type(self).__name__}({self.num_units}, dim={self.dim}) got an input of shape {tuple(x.shape)}; "
                f"axis {self.dim} (not the batch axis 0) must have {self.num_units} entries"
            )
        return self.dim % x.dim()

    def forward(self, x: Tensor, batch_size: int | None = None) -> Tensor:
        axis = self._unit_axis(x)
        if not self.training:
            u = self.mean()
            self.last_sample = u.detach()
            shape = [1] * x.dim()
            shape[axis] = self.num_units
            return x * u.to(x.dtype).reshape(shape)
        k, n = self.samples, x.shape[0]
        if batch_size is None:
            if n % k:
                raise ValueError(f"{type(self).__name__} with {k} samples got {n} rows, not a multiple of {k}; pass "
                                 "batch_size=B for an input that is not yet stacked over samples")
            batch_size = n // k
        if n == k * batch_size:
            xs = x.reshape(k, batch_size, *x.shape[1:])
        elif n == batch_size:
            xs = x.unsqueeze(0)
        else:
            raise ValueError(f"{type(self).__name__}: input has {n} rows, expected the batch size {batch_size} "
                             f"or {k}·{batch_size} (stacked samples)")
        u = self.sample(k)
        self.last_sample = u.detach()
        shape = [k] + [1] * x.dim()
        shape[axis + 1] = self.num_units
        out = xs * u.to(x.dtype).reshape(shape)
        return out.reshape(k * batch_size, *x.shape[1:])


# --------------------------------------------------------------------------------------------------
# The criterion
# --------------------------------------------------------------------------------------------------

class _Batch:
    """The size B of the minibatch currently going through the model (read by the hooks)."""

    size: int | None = None


@contextmanager
def _forked_rng(device: torch.device, seed: int) -> Iterator[None]:
    """Seed torch's RNGs for the switch sampling without disturbing the caller's RNG state."""
    devices: list[int] = []
    if device.type == "cuda" and torch.cuda.is_available():
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        for index in devices:  # only the forked device: other GPUs' RNG streams stay untouched
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Whole model in eval mode with requires_grad False; flags and modes restored exactly on exit."""
    grads = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        for p, _ in grads:
            p.requires_grad_(False)
        model.eval()
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _split_of(data: Any, which: str) -> Any:
    if hasattr(data, "train"):
        return getattr(data, which, None)
    return data if which == "train" else None


@dataclass(repr=False, eq=False)
class Dirichlet(Criterion):
    """Dirichlet pruning: importance D_l·E_q[s_j] of switches trained on the frozen network (the module docstring).

    Call ``fit(model, data, device=..., seed=...)`` once per trained model (``post_training_sweep``
    does), then use it like any other criterion (``scores``, ``prune_to_fraction``). ``data`` is a
    :class:`bmrs.run.data.DataBundle` (its ``train`` split trains the switches, ``val`` gives diagnostics)
    or a bare split. After ``fit``: ``importance_`` and ``concentration_`` ({noise layer name: float64
    tensor}) and ``variant`` (a JSON-ready record of every setting and check).

    Args:
        alpha0: prior concentration α₀ (0.5 main, 2.0 ablation; deviation 11).
        samples: K Monte-Carlo samples per step.
        epochs: passes over the training split (per layer when layer by layer).
        lr: Adam learning rate (switch parameters only).
        batch_size: minibatch size (the code's 100).
        theta_init: initial θ; None = softplus⁻¹(1) (φ = 1), or −1 (the LeNet code's) when code_faithful.
        rescale: switches are D_l·s (prior mean = identity).
        joint: train all layers' switches together (None = True unless code_faithful).
        code_faithful: the code's settings that keep the switches identifiable: layer-by-layer training, KL weight β(e)/batch,
            logits averaged over samples, θ₀ = −1 (a sanity check, not the baseline).
        allocation: "global" (score D_l·φ_j/φ₀, one threshold across layers) or "uniform" (within-layer
            rank quantiles: every layer loses the same fraction).
        log_space_sampling, min_concentration: the sampler (module docstring, deviation 13).
        max_steps: at most this many minibatches per epoch (None = full epochs; for smoke runs).
        diagnostics: record validation accuracy of the base network and with switches at their mean.
    """

    alpha0: float = 0.5
    samples: int = 5
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 100
    theta_init: float | None = None
    rescale: bool = True
    joint: bool | None = None
    code_faithful: bool = False
    allocation: str = "global"
    log_space_sampling: bool = True
    min_concentration: float = 1e-3
    max_steps: int | None = None
    diagnostics: bool = True
    importance_: dict[str, Tensor] = field(default_factory=dict, init=False)
    concentration_: dict[str, Tensor] = field(default_factory=dict, init=False)
    variant: dict[str, Any] = field(default_factory=dict, init=False)
    name = "Dirichlet"
    ascending = True

    def __post_init__(self) -> None:
        problems = []
        if not self.alpha0 > 0:
            problems.append(f"alpha0 must be > 0 (got {self.alpha0})")
        if int(self.samples) < 1:
            problems.append(f"samples must be >= 1 (got {self.samples})")
        if int(self.epochs) < 1:
            problems.append(f"epochs must be >= 1 (got {self.epochs})")
        if not self.lr > 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if int(self.batch_size) < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.allocation not in ("global", "uniform"):
            problems.append(f"allocation must be 'global' or 'uniform' (got {self.allocation!r})")
        if not self.min_concentration > 0:
            problems.append(f"min_concentration must be > 0 (got {self.min_concentration})")
        if self.max_steps is not None and int(self.max_steps) < 1:
            problems.append(f"max_steps must be >= 1 or None (got {self.max_steps})")
        if problems:
            raise ValueError("invalid Dirichlet pruning settings: " + "; ".join(problems))
        if self.joint is None:
            self.joint = not self.code_faithful
        if self.theta_init is None:
            self.theta_init = -1.0 if self.code_faithful else SOFTPLUS_INV_ONE
        tags = []
        if self.code_faithful:
            tags.append("code")
        if self.alpha0 != 0.5:
            tags.append(f"alpha0={self.alpha0:g}")
        if self.allocation != "global":
            tags.append(f"{self.allocation} per layer")
        if self.joint == self.code_faithful:  # a non-default training schedule for the variant
            tags.append("joint" if self.joint else "layer-by-layer")
        self.name = "Dirichlet" + (f" ({', '.join(tags)})" if tags else "")
        self._layers: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    # ---- scores ------------------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        return bool(self.importance_)

    def _score(self, name: str) -> Tensor:
        imp = self.importance_[name]
        if self.allocation == "uniform":
            ranks = torch.empty_like(imp)
            ranks[torch.argsort(imp, stable=True)] = torch.arange(1, imp.numel() + 1, dtype=imp.dtype)
            return ranks / imp.numel()
        return imp.clone()

    def _not_fitted(self) -> ValueError:
        return ValueError("Dirichlet scores come from trained switches: call "
                          "criterion.fit(model, data, device=..., seed=...) on this model first")

    def layer_scores(self, layer: MultiplicativeNoise, group: UnitGroup | None) -> Tensor:
        """D_l·φ_j/φ₀ per unit of a fitted layer (float64, CPU); rank quantiles for allocation='uniform'."""
        name = self._layers.get(layer)
        if name is None or name not in self.importance_:
            raise self._not_fitted()
        return self._score(name)

    def scores(self, model: nn.Module, example_input: Tensor | None = None) -> dict[str, Tensor]:
        """Scores by noise-layer name, so a copy or reload of the fitted model can be pruned too."""
        if not self.fitted:
            raise self._not_fitted()
        out = {}
        for name, layer in noise_layers(model):
            imp = self.importance_.get(name)
            if imp is None or imp.numel() != layer.num_units:
                raise ValueError(f"noise layer {name!r} ({layer.num_units} units) was not part of the model this "
                                 "Dirichlet criterion was fitted on; call fit on this model")
            out[name] = self._score(name)
        if not out:
            raise ValueError(f"{type(model).__name__} has no MultiplicativeNoise layers; nothing to score")
        return out

    # ---- fitting -----------------------------------------------------------------------------
    def fit(self, model: nn.Module, data, *, device: torch.device | str, seed: int) -> None:
        """Train the switches on the frozen, eval-mode model and store each unit's importance.

        The switches are attached by forward hooks on the noise layers and removed afterwards; the
        model's modules, parameters, buffers, requires_grad flags and train/eval modes are left exactly
        as they were, and so is torch's global RNG state.
        """

        device = torch.device(device)
        train, val = _split_of(data, "train"), _split_of(data, "val")
        if train is None or len(train) == 0:
            raise ValueError("Dirichlet.fit needs a non-empty training split (a DataBundle or a split)")
        layers = dict(noise_layers(model))
        if not layers:
            raise ValueError(f"{type(model).__name__} has no MultiplicativeNoise layers; nothing to put switches on")
        t0 = time.perf_counter()
        n_train = len(train)
        switches = {
            name: DirichletSwitch(layer.num_units, dim=layer.dim, samples=self.samples, theta_init=self.theta_init,
                                  rescale=self.rescale, min_concentration=self.min_concentration,
                                  log_space_sampling=self.log_space_sampling, device=layer.mu.device)
            for name, layer in layers.items()
        }
        theta0 = {n: s.theta.detach().clone() for n, s in switches.items()}
        runs = [list(layers)] if self.joint else [[n] for n in layers]
        run_stats: list[dict[str, Any]] = []
        record: dict[str, Any] = {}
        with _frozen(model), _forked_rng(device, seed):
            generator = torch.Generator().manual_seed(seed)
            if self.diagnostics and val is not None and len(val):
                record["val_acc_base"] = evaluate(model, val, device=device)["acc"]
            for active in runs:
                run_stats.append(self._train(model, layers, switches, active, train, n_train, device, generator))
            if self.diagnostics and val is not None and len(val):
                with self._attached(model, layers, switches, list(layers), _Batch()):
                    for s in switches.values():
                        s.eval()
                    record["val_acc_mean_switches"] = evaluate(model, val, device=device)["acc"]
        self.concentration_ = {n: s.concentration().detach().double().cpu() for n, s in switches.items()}
        self.importance_ = {n: phi.numel() * phi / phi.sum() for n, phi in self.concentration_.items()}
        self._layers = weakref.WeakKeyDictionary({layer: name for name, layer in layers.items()})
        delta = {n: float((switches[n].theta.detach() - theta0[n]).abs().max()) for n in layers}
        spread = {n: float(imp.max() - imp.min()) for n, imp in self.importance_.items()}
        moved = all(delta[n] > 1e-6 and spread[n] > 0 for n in layers)
        if not moved:
            stuck = [n for n in layers if not (delta[n] > 1e-6 and spread[n] > 0)]
            warnings.warn(f"Dirichlet switches of layers {stuck} did not move from their initial values (as "
                          "third-party reproductions of the method report); their ranking is arbitrary. Train longer (epochs) or with a larger lr",
                          RuntimeWarning, stacklevel=2)
        self.variant = self._describe(seed=seed, n_train=n_train, device=device) | record | {
            "runs": run_stats,
            "switches_moved": moved,
            "max_abs_delta_theta": delta,
            "importance_spread": spread,
            "fit_seconds": time.perf_counter() - t0,
        }

    def _describe(self, *, seed: int, n_train: int, device: torch.device) -> dict[str, Any]:
        return {
            "method": "Dirichlet pruning (Adamczewski & Park 2021)",
            "objective": "code-faithful (a sanity check)" if self.code_faithful else "ELBO, faithful in spirit",
            "alpha0": float(self.alpha0),
            "samples": int(self.samples),
            "epochs": int(self.epochs),
            "max_steps_per_epoch": self.max_steps,
            "optimizer": f"Adam(lr={self.lr:g}) on the switch parameters only",
            "batch_size": int(self.batch_size),
            "training": "joint" if self.joint else "layer-by-layer",
            "likelihood": ("cross-entropy of the sample-averaged logits" if self.code_faithful
                           else "mean over the K samples of the per-sample cross-entropy"),
            "kl_weight": (f"beta(epoch)/batch_size, beta(e) = min(e, {CODE_BETA_DENOMINATOR})/{CODE_BETA_DENOMINATOR}"
                          if self.code_faithful else "1/N_train"),
            "sample_example_pairing": "sample-major (K, B) stacking; the code's sample/example mix-up fixed",
            "rescale": "D_l * s (prior mean = identity)" if self.rescale else "s (no rescaling)",
            "theta_init": float(self.theta_init),
            "phi_init": float(F.softplus(torch.tensor(float(self.theta_init), dtype=torch.float64))),
            "sampler": (f"log Gamma(phi, 1).rsample (log G(phi+1) + log(U)/phi where phi < {BOOST_BELOW:g}), softmax"
                        if self.log_space_sampling
                        else "Gamma(phi, 1).rsample normalised with an epsilon"),
            "min_concentration": float(self.min_concentration),
            "placement": "after every MultiplicativeNoise layer (after the nonlinearity; after BN in ResNets)",
            "bn_mode": "eval (running statistics, frozen)",
            "base_network": "BMRS-trained network, noise as the fixed per-unit scale E[theta]*mask",
            "importance": "D_l * phi_j / phi_0 (size-normalised posterior mean)",
            "allocation": ("global threshold on D_l * E_q[s_j]" if self.allocation == "global"
                           else "uniform per-layer fraction (within-layer rank quantiles)"),
            "seed": int(seed),
            "n_train": int(n_train),
            "device": str(device),
        }

    @contextmanager
    def _attached(self, model: nn.Module, layers: dict[str, MultiplicativeNoise],
                  switches: dict[str, DirichletSwitch], active: list[str], batch: _Batch) -> Iterator[None]:
        handles = []

        def hook_for(switch: DirichletSwitch):
            def hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
                return switch(output, batch_size=batch.size)
            return hook

        try:
            for name in active:
                handles.append(layers[name].register_forward_hook(hook_for(switches[name])))
            yield
        finally:
            for h in handles:
                h.remove()

    def _train(self, model: nn.Module, layers: dict[str, MultiplicativeNoise], switches: dict[str, DirichletSwitch],
               active: list[str], split, n_train: int, device: torch.device,
               generator: torch.Generator) -> dict[str, Any]:

        k = int(self.samples)
        # In an nn.Sequential whose children include the noise layers, data flows through one chain,
        # so the first switch can broadcast the batch over the K samples and the layers before it run
        # once; elsewhere (residual additions) the input itself is replicated K times.
        children = {id(m) for m in model.children()} if isinstance(model, nn.Sequential) else set()
        lazy = all(id(layers[n]) in children for n in active)
        for name in active:
            switches[name].train()
        params = [switches[n].theta for n in active]
        optimizer = torch.optim.Adam(params, lr=self.lr)
        batch = _Batch()
        steps = 0
        sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
        last_epoch: dict[str, float] = {}
        with self._attached(model, layers, switches, active, batch):
            for epoch in range(1, int(self.epochs) + 1):
                batches = iterate_batches(split, int(self.batch_size), shuffle=True, generator=generator)
                label = "all layers" if len(active) > 1 else active[0]
                batches = progress(batches, desc=f"Dirichlet switches ({label}) epoch {epoch}/{self.epochs}",
                                   leave=False, unit="batch")
                epoch_sums = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
                epoch_steps = 0
                for step, (x, y) in enumerate(batches):
                    if self.max_steps is not None and step >= self.max_steps:
                        break
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    b = y.shape[0]
                    batch.size = b
                    xin = x if lazy else x.repeat(k, *([1] * (x.dim() - 1)))
                    logits = model(xin)
                    ce = mc_cross_entropy(logits, y, k, average_logits=self.code_faithful)
                    kl = torch.stack([dirichlet_kl(switches[n].concentration(), self.alpha0) for n in active]).sum()
                    weight = code_beta(epoch) / b if self.code_faithful else 1.0 / n_train
                    loss = ce + weight * kl.to(ce.dtype)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"the Dirichlet switch loss became {float(loss)}; lower lr "
                                                 f"(now {self.lr:g}) or raise min_concentration")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    for key, value in (("loss", loss), ("ce", ce), ("kl", kl)):
                        epoch_sums[key] += float(value.detach())
                    epoch_steps += 1
                steps += epoch_steps
                for key in sums:
                    sums[key] += epoch_sums[key]
                last_epoch = {f"last_epoch_{key}": v / max(epoch_steps, 1) for key, v in epoch_sums.items()}
        for name in active:
            switches[name].eval()
        return {"layers": list(active), "steps": steps, "lazy_sample_broadcast": lazy,
                **{f"mean_{key}": v / max(steps, 1) for key, v in sums.items()}, **last_epoch}
