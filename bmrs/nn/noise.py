"""The multiplicative noise layer of BMRS (paper Eq. 1, 7; Neklyudov et al. 2017): h ↦ h · θ · mask, one θ per structure.

Each structure (neuron, conv channel, transformer feature) has a noise variable θ with variational
posterior log θ ~ N(μ, σ²) truncated to [a, b] and log-uniform prior on [e^a, e^b].

* Training mode draws an independent θ for **every element** of the activation (per example, per
  spatial position or token), exactly as the released code does (modules/layers.py), by its reparameterised
  inverse-CDF sampler (bmrs.core.distributions.sample_theta; notebook 01, section 1).
* Eval mode multiplies by the deterministic E_q[θ] · mask, cached until μ, σ or the mask
  change.

The training forward is a fused autograd function: the per-unit constants of the sampler are
computed once per call in float64, the per-element work is a handful of in-place float ops, and the
backward pass evaluates the pathwise derivatives in closed form instead of storing the autograd
graph of the inverse CDF. For z = Φ⁻¹(γ), γ = Φ(α) + y (Φ(β) − Φ(α)), x = μ + σ z:

    ∂x/∂μ = 1 − [(1 − y) φ(α) + y φ(β)] / φ(z),      ∂x/∂σ = z − [(1 − y) α φ(α) + y β φ(β)] / φ(z),

with the terms in brackets dropped where γ was clamped to [eps, 1 − eps] and both derivatives zero
where x was clamped to [a, b]. The distribution of θ and the one-θ-per-element rule are unchanged;
tests compare values and gradients with the plain autograd version in bmrs.core.distributions.

Uniform draws come from torch.rand on accelerators and, on the CPU, from NumPy's PCG64 seeded by one
draw from the torch generator (twice as fast as torch's CPU Mersenne twister for these sizes). Every
draw therefore still derives from torch's RNG state, so torch.manual_seed and a checkpointed
torch.get_rng_state() make training runs reproducible and resumable.
"""

from __future__ import annotations

import copy
import math
import numbers
from typing import Iterator, Literal

import numpy as np
import torch
from torch import Tensor, nn

from bmrs.core import distributions as dist
from bmrs.core import kernels

_SQRT2 = math.sqrt(2.0)


def draw_uniform(shape: torch.Size, dtype: torch.dtype, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """U(0, 1) samples of the given shape; on the CPU from PCG64 seeded by the torch generator."""
    if device.type != "cpu":
        return torch.rand(shape, dtype=dtype, device=device, generator=generator)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=generator).item())
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    return torch.from_numpy(np.random.default_rng(seed).random(tuple(shape), dtype=np_dtype))


def _unit_view(t: Tensor, ndim: int, dim: int) -> Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return t.reshape(shape)


def sampler_constants(mu: Tensor, sigma: Tensor, a: float, b: float, eps: float) -> Tensor:
    """The 8 per-unit rows used by the fused sampler (see bmrs.core.kernels.sampler_constants), float64.

    Computed by the compiled kernel for CPU tensors and by torch ops on accelerators.
    """
    mu64, sigma64 = mu.detach().double().reshape(-1), sigma.detach().double().reshape(-1)
    if mu64.device.type == "cpu":
        out = np.empty((8, mu64.numel()))
        kernels.sampler_constants(mu64.numpy(), sigma64.numpy(), float(a), float(b), float(eps), out)
        return torch.from_numpy(out)
    c = dist.inverse_cdf_constants(mu64, sigma64, a, b)
    flip = c.sign < 0
    phi_lo = torch.exp(-0.5 * c.alpha * c.alpha)  # √(2π)·φ(α); the √(2π) cancels in ratios to φ(z)
    phi_hi = torch.exp(-0.5 * c.beta * c.beta)
    a_phi_lo = torch.where(phi_lo > 0, c.alpha * phi_lo, torch.zeros_like(phi_lo))
    b_phi_hi = torch.where(phi_hi > 0, c.beta * phi_hi, torch.zeros_like(phi_hi))
    d_phi, d_aphi = phi_hi - phi_lo, b_phi_hi - a_phi_lo
    slope = torch.where(flip, -1.0, 1.0)
    offset = torch.where(flip, 1.0, 0.0)
    pinned = ((c.lower + c.mass < eps) | (c.lower > 1.0 - eps)).double()
    return torch.stack([2.0 * c.lower - 1.0, 2.0 * c.mass, c.sign * _SQRT2, phi_lo + offset * d_phi, slope * d_phi,
                        a_phi_lo + offset * d_aphi, slope * d_aphi, pinned])


class _SampleNoise(torch.autograd.Function):
    """out = x · θ · mask with θ drawn per element; closed-form backward (see module docstring).

    The per-unit sums of the backward pass are assembled from four reductions,
    S₁ = Σ gx, S₂ = Σ gx z, S₃ = Σ gx r, S₄ = Σ gx r y with gx = ∂L/∂ log θ and r = free/φ(z):
    ∂L/∂μ = S₁ − P₀S₃ − P₁S₄ and ∂L/∂σ = S₂ − Q₀S₃ − Q₁S₄ (P, Q from sampler_constants).
    """

    @staticmethod
    def forward(ctx, x: Tensor, mu: Tensor, sigma: Tensor, mask: Tensor, a: float, b: float,
                eps: float, dim: int, generator: torch.Generator | None) -> Tensor:
        work = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        nd, dm = x.dim(), dim % x.dim()
        with torch.no_grad():
            consts = sampler_constants(mu, sigma, a, b, eps)
            movable = (1.0 - consts[7]).to(device=x.device, dtype=work)
            rows = consts.to(device=x.device, dtype=work)
            lower2, mass2, zscale = (_unit_view(row, nd, dm) for row in rows[:3])
            y = draw_uniform(x.shape, work, x.device, generator)
            g2 = (y * mass2).add_(lower2)  # 2γ − 1
            gamma_free = g2.abs() < 1.0 - 2.0 * eps
            z = g2.clamp_(2.0 * eps - 1.0, 1.0 - 2.0 * eps).erfinv_().mul_(zscale)
            theta = (z * _unit_view(sigma.detach().to(work), nd, dm)).add_(_unit_view(mu.detach().to(work), nd, dm))
            theta = theta.clamp_(a, b).exp_()
            if not bool(mask.all()):
                theta.mul_(_unit_view(mask.to(work), nd, dm))
            out = x * theta.to(x.dtype)
        ctx.save_for_backward(x, theta, z, y, gamma_free)
        ctx.unit_rows = (rows[3:7], movable)
        ctx.view = (nd, dm)
        ctx.dtypes = (mu.dtype, sigma.dtype)
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, theta, z, y, gamma_free = ctx.saved_tensors
        (p0, p1, q0, q1), movable = ctx.unit_rows
        nd, dm = ctx.view
        dims = tuple(i for i in range(nd) if i != dm)
        grad_x = grad_mu = grad_sigma = None
        g = grad_out.to(theta.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = (g * theta).to(x.dtype)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            gx = g.mul(x.to(g.dtype)).mul_(theta)  # ∂L/∂ log θ per element (0 where masked)
            r = z.square().mul_(0.5).exp_().mul_(gamma_free).mul_(gx)  # gx / φ(z), up to √(2π)
            s3 = r.sum(dims)
            s4 = r.mul_(y).sum(dims)
            if ctx.needs_input_grad[1]:
                grad_mu = ((gx.sum(dims) - p0 * s3 - p1 * s4) * movable).to(ctx.dtypes[0])
            if ctx.needs_input_grad[2]:
                grad_sigma = (((gx.mul_(z)).sum(dims) - q0 * s3 - q1 * s4) * movable).to(ctx.dtypes[1])
        return grad_x, grad_mu, grad_sigma, None, None, None, None, None, None


class MultiplicativeNoise(nn.Module):
    """Per-structure multiplicative noise with a truncated log-normal posterior (paper Eq. 7).

    Args:
        num_units: number of structures (features, channels).
        dim: the axis of the activation that indexes structures: 1 for (N, F) and (N, C, H, W),
            -1 for transformer features (N, T, D).
        a, b: log-space truncation bounds (default −20, 0).
        mu_init, log_sigma_init: initial posterior parameters (0 and −5 as in the paper, so that
            E[θ] ≈ 0.995 and the layer starts as a near-identity).
        eps: clamp of the sampler's uniform quantile (1e-5 in the released code).

    Parameters mu and log_sigma are trained with the network; the buffer mask (1 keep, 0 prune)
    is set by the pruning criteria. σ = exp(clamp(log σ, −20, 5)) (the released code's clamp).
    """

    def __init__(self, num_units: int, *, dim: int = 1, a: float = dist.DEFAULT_A, b: float = dist.DEFAULT_B,
                 mu_init: float = 0.0, log_sigma_init: float = -5.0, eps: float = dist.SAMPLING_EPS) -> None:
        super().__init__()
        for arg, value in (("num_units", num_units), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"MultiplicativeNoise: {arg} must be an integer; got {value!r} ({type(value).__name__})")
        if num_units < 1:
            raise ValueError(f"num_units must be a positive integer; got {num_units}")
        self.a, self.b = dist.check_bounds(a, b)
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5); got {eps}")
        self.num_units = int(num_units)
        self.dim = int(dim)
        self.eps = float(eps)
        self.mu = nn.Parameter(torch.full((self.num_units,), float(mu_init)))
        self.log_sigma = nn.Parameter(torch.full((self.num_units,), float(log_sigma_init)))
        self.register_buffer("mask", torch.ones(self.num_units))
        self.generator: torch.Generator | None = None
        self._cache_key: tuple | None = None
        self._cache: Tensor | None = None

    def extra_repr(self) -> str:
        return f"{self.num_units}, dim={self.dim}, a={self.a}, b={self.b}"

    @property
    def sigma(self) -> Tensor:
        return dist.sigma_from_log_sigma(self.log_sigma)

    @property
    def kept(self) -> int:
        return int(self.mask.sum().item())

    def _check_input(self, x: Tensor) -> int:
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} needs a floating-point input (an integer one would be multiplied by "
                            f"θ and truncated); got {x.dtype}: convert it first, e.g. x.float()")
        if x.dim() < 1 or not -x.dim() <= self.dim < x.dim() or x.shape[self.dim] != self.num_units:
            raise ValueError(
                f"{type(self).__name__}({self.num_units}, dim={self.dim}) got an input of shape {tuple(x.shape)}; "
                f"axis {self.dim} must have {self.num_units} entries (set dim to the axis that indexes the units)"
            )
        return self.dim % x.dim()

    def expected_theta(self) -> Tensor:
        """E_q[θ] per unit (float64), cached until mu or log_sigma change.

        On the CPU the cache is keyed on copies of the parameter values (a few thousand numbers at most),
        so every kind of update — optimiser steps, load_state_dict, in-place edits, writes through
        ``.data`` — invalidates it. On accelerators it is keyed on version counters and storage pointers
        (no synchronisation), which miss only in-place writes through ``.data``.
        """
        mu, log_sigma = self.mu.detach(), self.log_sigma.detach()
        if mu.device.type == "cpu":
            key = self._cache_key
            stale = key is None or not isinstance(key[0], Tensor) or not (
                torch.equal(key[0], mu) and torch.equal(key[1], log_sigma))
            new_key = (mu.clone(), log_sigma.clone())
        else:
            # On accelerators a value comparison would synchronise every forward; version counters and
            # storage pointers catch everything except in-place writes through `.data`.
            new_key = (self.mu._version, self.log_sigma._version, mu.data_ptr(), log_sigma.data_ptr(), mu.device)
            stale = self._cache_key != new_key
        if stale or self._cache is None:
            with torch.no_grad():
                self._cache = dist._log_expected_theta(mu.double(), self.sigma.detach().double(), self.a, self.b).exp()
            self._cache_key = new_key
        return self._cache

    def forward(self, x: Tensor) -> Tensor:
        dim = self._check_input(x)
        if self.training:
            return _SampleNoise.apply(x, self.mu, self.sigma, self.mask, self.a, self.b, self.eps, dim, self.generator)
        scale = (self.expected_theta() * self.mask.double()).to(x.dtype)
        return x * _unit_view(scale, x.dim(), dim)

    def kl(self) -> Tensor:
        """KL[q(θ_i) ‖ p(θ_i)] per unit (the KL term of Eq. 2–3), in the dtype of mu, differentiable."""
        return dist.kl_per_unit(self.mu.double(), self.sigma.double(), self.a, self.b).to(self.mu.dtype)


def noise_layers(model: nn.Module) -> Iterator[tuple[str, MultiplicativeNoise]]:
    """(name, layer) for every MultiplicativeNoise in model, in registration order."""
    for name, module in model.named_modules():
        if isinstance(module, MultiplicativeNoise):
            yield name, module


def noise_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(the other trainable parameters, the noise layers' μ and log σ) of model, each in model.parameters()
    order: the split of every optimiser's parameter groups (the noise group gets its own learning rate)."""
    noise_ids = {id(p) for _, layer in noise_layers(model) for p in (layer.mu, layer.log_sigma)}
    params = [p for p in model.parameters() if p.requires_grad]
    return [p for p in params if id(p) not in noise_ids], [p for p in params if id(p) in noise_ids]


def unmasked(model: nn.Module) -> nn.Module:
    """A copy of model with every noise layer's mask set to one (the same network before pruning)."""
    probe = copy.deepcopy(model)
    for _, layer in noise_layers(probe):
        layer.mask.fill_(1.0)
    return probe


KLReduction = Literal["mean", "sum"]


def model_kl(model: nn.Module, reduction: KLReduction = "mean") -> Tensor:
    """The KL term of the training loss (Eq. 2–3, as the released train.py weights it).

    "mean" (the paper's setting): mean KL over the units of each noise layer, then the mean of those
    per-layer means over layers. "sum": the sum over all noise variables. Neither is divided by the
    dataset size (the released code's ``--kl_averaging``). A model without noise layers contributes 0.
    All layers' units are evaluated in one batched float64 call.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown KL reduction {reduction!r}; allowed: 'mean' (per-layer mean, then mean over layers) or 'sum'")
    layers = [layer for _, layer in noise_layers(model)]
    if not layers:
        return torch.zeros(())
    groups: dict[tuple[float, float], list[MultiplicativeNoise]] = {}
    for layer in layers:
        groups.setdefault((layer.a, layer.b), []).append(layer)
    per_layer: list[Tensor] = []
    for (a, b), group in groups.items():
        mu = torch.cat([l.mu for l in group]).double()
        sigma = torch.cat([l.sigma for l in group]).double()
        kl = dist.kl_per_unit(mu, sigma, a, b)
        for chunk in torch.split(kl, [l.num_units for l in group]):
            per_layer.append(chunk.mean() if reduction == "mean" else chunk.sum())
    stacked = torch.stack(per_layer)
    out = stacked.mean() if reduction == "mean" else stacked.sum()
    return out.to(layers[0].mu.dtype)
