"""The posterior and prior of one multiplicative noise variable θ, in log space
(paper Eq. 7; derived in notebook 01, sections 1 and 5).

x = log θ. The variational posterior is x ~ N(μ, σ²) truncated to [a, b] (a, b are already log-space
bounds; defaults a = −20, b = 0); the prior is x ~ U[a, b], i.e. θ log-uniform. With
α = (a − μ)/σ, β = (b − μ)/σ and Z = Φ(β) − Φ(α):

* KL[q ‖ p] = log(b − a) − log σ − log Z − ½ log(2πe) − (αφ(α) − βφ(β))/(2Z)   (the KL term of Eq. 2–3)
* E[θ]      = exp(μ + σ²/2) · [Φ(σ − α) − Φ(σ − β)] / Z
* E[θ²]     = exp(2μ + 2σ²) · [Φ(2σ − α) − Φ(2σ − β)] / Z
* SNR       = E[θ] / √Var θ   (E[θ] and the SNR as in the released code's modules/util.py)

How they are evaluated (all in float64, whatever the input dtype):

* Every log-normaliser is written as log Z = −m²/2 + S, where m is the distance from 0 to the
  standardised interval and S is O(log m). In the far tails, where log Z ≈ −10²³ for μ = 1000 and
  σ = e⁻²⁰, the huge −m²/2 parts of numerator and denominator are cancelled *algebraically*: e.g. for
  β ≤ 0 the exponent of E[θ] is exactly b + S₁ − S₀ (since μ + σβ = b), not a difference of two
  10²³-sized floats.
* The KL uses E[z²] = Var z + (E z)² with Var z and the excess of E z over the nearest bound taken
  from the stable Mills-ratio helpers of :mod:`bmrs.core.special`, so log Z and the αφ(α)/Z terms never
  cancel numerically.
* When the support is narrow compared with σ ((b − a)/σ < 0.125) the KL is ≈ 0 and the O(1) terms above
  would cancel; there it is taken from the tilted-uniform form of :func:`_kl_narrow_value`.
* log E[θ] for a posterior piled against a bound c ∈ {a, b} is c + D with D small; D is then taken from
  the exact integral of the tilted means (:func:`_log_expected_theta`), so that it keeps its relative
  accuracy when c = 0 and its gradient does not cancel.
* Var θ is E[θ]²·(e^δ − 1) with δ = K(2σ) − 2K(σ) + K(0), K the cumulant generating function of
  the standardised truncated normal z. When δ is small this second difference is itself a
  cancellation, so it is taken from its exact integral form
  δ = ∫₀^{2σ} (σ − |s − σ|) · Var[z | tilted by e^{sz}] ds, where the tilted variable is a standard
  normal truncated to [α − s, β − s]; the integrand is smooth and Gauss–Legendre integration of it
  is accurate to ~1e-14.
* Where the support is narrow compared with σ, log E[θ] and Var θ/E[θ]² come from the posterior of x written
  as a tilted uniform on [a, b] (:func:`_tilted_uniform`: anchored at the bound nearer 0, the variance as a
  centred second moment), and the moments of a narrow standardised interval from the same form
  (:func:`_narrow`): the forms above would cancel terms of size σ² or 1/width² there. The default bounds
  never reach these branches ((b − a)/σ ≥ 20/e⁵ = 0.135), so training is unchanged by them.

The functions validate their input: mu and sigma must broadcast, sigma must be positive and finite,
and a < b must be finite. They return tensors in the promoted floating dtype of mu and sigma.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from bmrs.core import kernels

from bmrs.core import special

DEFAULT_A = -20.0
DEFAULT_B = 0.0
LOG_SIGMA_MIN = -20.0
LOG_SIGMA_MAX = 5.0
SAMPLING_EPS = 1e-5

_SMALL_DELTA = 1e-2
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(16)
# log E[θ] within this of the bound the posterior is piled against: integral form (see _log_expected_theta)
_PILED_SHIFT = 1e-2
_PILED_NODES, _PILED_WEIGHTS = np.polynomial.legendre.leggauss(4)
_LOG_TINY = -746.0  # exp of anything below is 0.0 in float64
# N(0, 1) truncated to an interval narrow against its distance from 0 (width < kernels.KL_NARROW_WIDTH and
# tilt |lo + hi|·width/4 ≤ _NARROW_TILT): tilted-uniform form by 32-point Gauss–Legendre (see _narrow)
_NARROW_TILT = 20.0
_NARROW_NODES, _NARROW_WEIGHTS = np.polynomial.legendre.leggauss(32)

TensorLike = Tensor | float | int


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------

def check_bounds(a: float, b: float) -> tuple[float, float]:
    """Validate the log-space truncation bounds a < b (both finite)."""
    try:
        a_f, b_f = float(a), float(b)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"a and b must be numbers (log-space bounds); got a={a!r}, b={b!r}") from exc
    if not (math.isfinite(a_f) and math.isfinite(b_f)):
        raise ValueError(f"a and b must be finite log-space bounds; got a={a_f}, b={b_f}")
    if not a_f < b_f:
        raise ValueError(
            f"the truncation bounds must satisfy a < b (log space, e.g. a=-20, b=0); got a={a_f}, b={b_f}"
        )
    return a_f, b_f


def _as_tensor(x: TensorLike, name: str) -> Tensor:
    """Tensors keep their floating dtype (integers become the default dtype); Python numbers and NumPy
    arrays become float64 so that no precision is lost before the float64 computation."""
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return x
    try:
        return torch.as_tensor(np.asarray(x, dtype=np.float64))
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or a number; got {type(x).__name__}") from exc


def prepare(mu: TensorLike, sigma: TensorLike, a: float, b: float) -> tuple[Tensor, Tensor, torch.dtype, float, float]:
    """Validate (mu, sigma, a, b) and return float64 copies broadcast to a common shape.

    Returns (mu64, sigma64, result_dtype, a, b). Raises ValueError with the reason and the allowed
    values for shape mismatches, non-positive or non-finite sigma, non-finite mu and a >= b.
    """
    a, b = check_bounds(a, b)
    mu_t, sigma_t = _as_tensor(mu, "mu"), _as_tensor(sigma, "sigma")
    try:
        shape = torch.broadcast_shapes(mu_t.shape, sigma_t.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"mu has shape {tuple(mu_t.shape)} and sigma has shape {tuple(sigma_t.shape)}; "
            "they must be broadcastable to a common shape (e.g. equal shapes, or one of them a scalar)"
        ) from exc
    if mu_t.device != sigma_t.device:
        raise ValueError(f"mu is on {mu_t.device} and sigma on {sigma_t.device}; put both on one device")
    with torch.no_grad():
        if sigma_t.numel() and not bool(torch.all(torch.isfinite(sigma_t) & (sigma_t > 0))):
            bad = sigma_t[~(torch.isfinite(sigma_t) & (sigma_t > 0))].flatten()[0].item()
            raise ValueError(
                f"sigma must be positive and finite (it is a scale; pass sigma = exp(log_sigma)); "
                f"found sigma = {bad}"
            )
        if mu_t.numel() and not bool(torch.all(torch.isfinite(mu_t))):
            raise ValueError("mu must be finite; found NaN or inf")
    dtype = torch.promote_types(mu_t.dtype, sigma_t.dtype)
    mu64 = mu_t.to(torch.float64).expand(shape)
    sigma64 = sigma_t.to(torch.float64).expand(shape)
    return mu64, sigma64, dtype, a, b


def sigma_from_log_sigma(log_sigma: Tensor) -> Tensor:
    """σ = exp(clamp(log σ, −20, 5)), the clamp of the released code (modules/layers.py)."""
    return torch.exp(torch.clamp(log_sigma, LOG_SIGMA_MIN, LOG_SIGMA_MAX))


# --------------------------------------------------------------------------------------------------
# Truncated standard normal on [lo, hi]: log-normaliser and first two moments, in scaled form
# --------------------------------------------------------------------------------------------------

@dataclass
class TruncatedStandardNormal:
    """Moments of z ~ N(0, 1) truncated to [lo, hi], in a cancellation-free representation.

    m:    distance from 0 to the interval (0 if it contains 0);
    s:    log Z = −m²/2 + s;
    e:    |E z| − m ≥ 0, how far the mean lies beyond the nearest bound (or |E z| if 0 ∈ [lo, hi]);
    var:  Var z.
    """

    m: Tensor
    s: Tensor
    e: Tensor
    var: Tensor

    @property
    def log_z(self) -> Tensor:
        return -0.5 * self.m * self.m + self.s


def truncated_standard_normal(lo: Tensor, hi: Tensor, width: Tensor) -> TruncatedStandardNormal:
    """Moments of N(0, 1) truncated to [lo, hi] with hi − lo = width > 0 (passed exactly).

    Interval on one side of 0 (reflected so that it is [u, v] with 0 ≤ u < v): with λ, g, V the
    inverse Mills ratio, its excess and the tail variance of :mod:`bmrs.core.special` and
    ρ = Q(v)/Q(u) = exp(−w(u+v)/2 + log λ(u) − log λ(v)):

        s   = −½ log 2π − log λ(u) + log(1 − ρ)
        e   = [g(u) − ρ (w + g(v))] / (1 − ρ)
        var = [V(u) + ρ (−w² + u g(v) + v g(u) + w (g(u) − g(v)) + 2 g(u) g(v) − 2) + ρ² V(v)] / (1 − ρ)²

    Interval containing 0: direct formulas, which are well conditioned there (Z ≥ 0.05 for the
    widths that occur, w ≥ (b − a)/e⁵).
    """
    shape = torch.broadcast_shapes(lo.shape, hi.shape, width.shape)
    lo, hi, width = (t.expand(shape).reshape(-1) for t in (lo, hi, width))
    parts = special.piecewise(_is_narrow(lo, hi, width), _narrow, _not_narrow, lo, hi, width)
    return TruncatedStandardNormal(*(p.reshape(shape) for p in parts))


def _is_narrow(lo: Tensor, hi: Tensor, width: Tensor) -> Tensor:
    """Where the interval is narrow against σ (width < kernels.KL_NARROW_WIDTH; the default bounds never
    are, b − a = 20 and σ ≤ e⁵) and its tilt A = |lo + hi|·width/4 is at most _NARROW_TILT: where the
    closed forms of _one_sided and _contains_zero cancel (their relative error grows like 1/width², and
    beyond A ≈ 20 they are exact to rounding again)."""
    with torch.no_grad():
        return (width < kernels.KL_NARROW_WIDTH) & ((0.25 * (lo + hi) * width).abs() <= _NARROW_TILT)


def _not_narrow(lo: Tensor, hi: Tensor, width: Tensor) -> list[Tensor]:
    return special.piecewise((hi <= 0) | (lo >= 0), _one_sided, _contains_zero, lo, hi, width)


def _narrow(lo: Tensor, hi: Tensor, width: Tensor) -> list[Tensor]:
    """[m, s, e, var] for a narrow interval, as a tilted uniform distribution.

    With c = (lo + hi)/2, h = width/2 and z = c + h·sgn(c)·x, x ∈ [−1, 1] has the density
    ∝ exp(F(x)), F(x) = −A(1 + x) − B x², A = |c| h, B = h²/2 (x = −1 is the end nearest 0). With the
    uniform averages M = E_u[e^F], E = E_u[(1 + x) e^F]/M and V = E_u[(x − (E − 1))² e^F]/M:

        one-sided (|c| ≥ h):  m = |c| − h (taken from lo, hi as given),  s = log(2h) − ½ log 2π + h²/2 + log M,  e = h E
        contains 0:           m = 0,        s = log(2h) − ½ log 2π − c²/2 + A + log M, e = | |c| − h + h E |
        var = h² V

    (log Z = log(2h) − ½ log 2π − c²/2 + A + log M exactly; s = log Z + m²/2). Nothing cancels: 0 < E < 2,
    V is a centred second moment. The averages by 32-point Gauss–Legendre: |F| ≤ 2A + B ≤ 40, error below
    4e-15 relative for s, e and var, checked against 50-digit mpmath in the tests.
    """
    h = 0.5 * width
    c_abs = (0.5 * (lo + hi)).abs()
    tilt = c_abs * h
    x = torch.as_tensor(_NARROW_NODES, dtype=lo.dtype, device=lo.device).unsqueeze(1)
    wt = torch.as_tensor(0.5 * _NARROW_WEIGHTS, dtype=lo.dtype, device=lo.device).unsqueeze(1)
    ef = wt * torch.exp(-tilt * (1.0 + x) - 0.5 * h * h * x * x)  # (32, n)
    m0 = ef.sum(0)
    excess = ((1.0 + x) * ef).sum(0) / m0
    centred = x - (excess - 1.0)
    var = h * h * (centred * centred * ef).sum(0) / m0
    one_sided = (hi <= 0) | (lo >= 0)
    log_w = torch.log(width) - special.HALF_LOG_2PI + torch.log(m0)
    s = torch.where(one_sided, log_w + 0.5 * h * h, log_w - 0.5 * c_abs * c_abs + tilt)
    e = torch.where(one_sided, h * excess, (c_abs - h + h * excess).abs())
    m = torch.where(one_sided, torch.minimum(lo.abs(), hi.abs()), torch.zeros_like(c_abs))  # exact, as in _one_sided
    return [m, s, e, var]


def _one_sided(lo: Tensor, hi: Tensor, width: Tensor) -> list[Tensor]:
    """[m, s, e, var] for intervals on one side of 0, reflected to [u, v], 0 ≤ u < v."""
    low = hi <= 0
    u = torch.where(low, -hi, lo)
    v = torch.where(low, -lo, hi)
    log_lam_u = special.log_inv_mills(u)
    log_lam_v = special.log_inv_mills(v)
    log_rho = torch.clamp(-0.5 * width * (u + v) + log_lam_u - log_lam_v, max=-1e-300)  # ρ < 1
    rho = torch.exp(log_rho)
    one_minus_rho = -torch.expm1(log_rho)
    g_u = special.mills_excess(u)
    g_v = special.mills_excess(v)
    s = -special.HALF_LOG_2PI - log_lam_u + special.log1mexp(log_rho)
    e = (g_u - rho * (width + g_v)) / one_minus_rho
    bracket = -width * width + u * g_v + v * g_u + width * (g_u - g_v) + 2.0 * g_u * g_v - 2.0
    var = (special.tail_variance(u) + rho * bracket + rho * rho * special.tail_variance(v)) / (
        one_minus_rho * one_minus_rho
    )
    return [u, s, e, var]


def _contains_zero(lo: Tensor, hi: Tensor, width: Tensor) -> list[Tensor]:
    """[m, s, e, var] for intervals with lo < 0 < hi (well conditioned: direct formulas)."""
    log_z = special.log_normal_interval(lo, hi, width)
    p_lo = torch.exp(special.log_normal_pdf(lo) - log_z)
    p_hi = torch.exp(special.log_normal_pdf(hi) - log_z)
    mean = p_lo - p_hi
    var = 1.0 + lo * p_lo - hi * p_hi - mean * mean
    return [torch.zeros_like(lo), log_z, mean.abs(), var]


def _standardise(mu: Tensor, sigma: Tensor, a: float, b: float) -> tuple[Tensor, Tensor, Tensor]:
    return (a - mu) / sigma, (b - mu) / sigma, (b - a) / sigma


# --------------------------------------------------------------------------------------------------
# Public closed forms
# --------------------------------------------------------------------------------------------------

def log_normalizer(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """log Z = log[Φ(β) − Φ(α)], the log normaliser of the truncated posterior."""
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    alpha, beta, width = _standardise(mu64, sigma64, a, b)
    return special.log_normal_interval(alpha, beta, width).to(dtype)


def kl_log_uniform(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """KL[q ‖ p] between the truncated log-normal posterior and the log-uniform prior (the KL term of Eq. 2–3;
    notebook 01, section 5).

    KL = log(b − a) − log σ − ½ log 2π − log Z − ½ E[z²], z = (x − μ)/σ, which equals the closed
    form above because E[z²] = 1 + (αφ(α) − βφ(β))/Z. When [α, β] lies more than 30 standard deviations
    from 0, log Z and ½E[z²] are both ≈ m²/2 and cancel; there, with log Z = −m²/2 + s and
    |E z| = m + e, KL = log(b − a) − log σ − ½ log 2π − s − m e − e²/2 − ½ Var z (no cancellation).
    """
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    return kl_per_unit(mu64, sigma64, a, b).to(dtype)


class _KLKernel(torch.autograd.Function):
    """KL and its closed-form gradient from the compiled CPU kernel (bmrs.core.kernels.kl_with_grad)."""

    @staticmethod
    def forward(ctx, mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
        shape = mu.shape
        mu_np = np.ascontiguousarray(mu.detach().reshape(-1).numpy())
        sigma_np = np.ascontiguousarray(sigma.detach().reshape(-1).numpy())
        kl, d_mu, d_sigma = np.empty_like(mu_np), np.empty_like(mu_np), np.empty_like(mu_np)
        kernels.kl_with_grad(mu_np, sigma_np, a, b, kl, d_mu, d_sigma)
        ctx.save_for_backward(torch.from_numpy(d_mu).reshape(shape), torch.from_numpy(d_sigma).reshape(shape))
        return torch.from_numpy(kl).reshape(shape)

    @staticmethod
    def backward(ctx, grad: Tensor):
        d_mu, d_sigma = ctx.saved_tensors
        return grad * d_mu, grad * d_sigma, None, None


def kl_per_unit(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """KL per unit for validated float64 tensors of equal shape (no input checks; used in training).

    CPU tensors go through the compiled kernel with its closed-form gradient (one call for all
    units); other devices through the torch implementation :func:`_kl`. Both are tested to agree. Where the
    support is narrow against σ but tilted beyond the kernel's narrow series (|A| > kernels.KL_NARROW_TILT),
    the kernel's closed-form gradient cancels (dKL/dμ 701 instead of 1.4e-16 at μ = 2.1e15, σ = 1e6,
    [a, b] = [−1e-3, 0]): those units take the torch path, whose autograd gradient does not (never the case
    for the default bounds, where (b − a)/σ ≥ 0.135).
    """
    if mu.device.type != "cpu":
        return _kl(mu, sigma, a, b)
    with torch.no_grad():  # narrow support beyond the series' tilt: the kernel's closed-form gradient cancels there
        width = (b - a) / sigma
        steep = (width < kernels.KL_NARROW_WIDTH) & (
            ((0.5 * (a + b) - mu) / sigma * (0.5 * width)).abs() > kernels.KL_NARROW_TILT)
    if not bool(steep.any()):
        return _KLKernel.apply(mu, sigma, a, b)
    return special.piecewise(steep, lambda m, s: _kl(m, s, a, b), lambda m, s: _KLKernel.apply(m, s, a, b), mu, sigma)


# Below this distance from 0 to [α, β] the textbook KL has no harmful cancellation (its terms are at
# most ~m² ≈ 10³, so float64 keeps ~13 digits); beyond it the scaled form is used.
_KL_DIRECT_MAX_DISTANCE = 10.0


def _kl(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """KL per unit (float64). Direct form for the common regime, scaled form in the far tails, and the
    tilted-uniform form :func:`_kl_narrow_value` where the support is narrow compared with σ."""
    with torch.no_grad():
        width = (b - a) / sigma
        tilt = (0.5 * (a + b) - mu) / sigma * (0.5 * width)
        narrow = (width < kernels.KL_NARROW_WIDTH) & (tilt.abs() <= kernels.KL_NARROW_TILT)
    if not bool(narrow.any()):
        return _kl_wide(mu, sigma, a, b)
    return special.piecewise(
        narrow, lambda m, s: _kl_narrow_value(m, s, a, b), lambda m, s: _kl_wide(m, s, a, b), mu, sigma
    )


def _kl_narrow_value(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """KL for a support that is narrow compared with σ, without the cancellation of the O(1) terms.

    The KL is invariant under the affine map x ↦ (x − (a + b)/2)/h, h = (b − a)/2, which takes q to
    q(x) ∝ exp(−A x − B x²) on [−1, 1] and the prior to U[−1, 1], with A = ((a + b)/2 − μ) h/σ² and
    B = h²/(2σ²). With F = −A x − B(x² − 1/3) (so that E_u F = 0), M = E_u[e^F] and
    P = E_u[(F − 1)e^F + 1] ≥ 0,

        KL = E_q[F] − log M = (P − r(M − 1)) / M,   r(y) = (1 + y) log(1 + y) − y,

    since E_u[F e^F] = P + M − 1. For small F, P ≈ E_u[F²]/2 and r(M − 1) = O(F⁴), so nothing cancels
    (KL ≈ A²/6 + 2B²/45 → 0 as (b − a)/σ → 0). p(F) = (F − 1)e^F + 1 and r(y) are summed as their
    Taylor series (30 terms; |F| ≤ 1.01 and 0 ≤ y ≤ 0.18 where this is used, truncation < 1e-24
    relative) and E_u by 12-point Gauss–Legendre (error < 1e-20 relative for |A| ≤ 1: the integrands
    are entire). Used where (b − a)/σ < 0.125 and |A| ≤ 1 (kernels.KL_NARROW_WIDTH, KL_NARROW_TILT); the
    compiled kernel evaluates the same formula (kernels.kl_narrow), with its closed-form gradient.
    """
    half_width = 0.5 * ((b - a) / sigma)
    tilt = (0.5 * (a + b) - mu) / sigma * half_width
    curv = 0.5 * half_width * half_width
    x = torch.as_tensor(kernels.NARROW_X, dtype=mu.dtype, device=mu.device).unsqueeze(1)
    wt = torch.as_tensor(kernels.NARROW_W, dtype=mu.dtype, device=mu.device).unsqueeze(1)
    even = -curv * (x * x - 1.0 / 3.0)
    odd = tilt * x
    f_pairs = torch.stack([even - odd, even + odd])  # F(x), F(−x): (2, 6, n)
    m1 = (wt * torch.expm1(f_pairs)).sum((0, 1))
    p = (wt * f_pairs * f_pairs * _horner(kernels.P_COEF, f_pairs)).sum((0, 1))
    return (p - m1 * m1 * _horner(kernels.R_COEF, m1)) / (1.0 + m1)


def _horner(coef: np.ndarray, x: Tensor) -> Tensor:
    acc = torch.full_like(x, float(coef[-1]))
    for c in coef[-2::-1]:
        acc = acc * x + float(c)
    return acc


def _kl_wide(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    alpha, beta, width = _standardise(mu, sigma, a, b)
    near = (alpha <= _KL_DIRECT_MAX_DISTANCE) & (beta >= -_KL_DIRECT_MAX_DISTANCE)
    return math.log(b - a) - torch.log(sigma) - special.HALF_LOG_2PI - special.piecewise(
        near, _neg_entropy_direct, _neg_entropy_scaled, alpha, beta, width
    )


def _neg_entropy_direct(alpha: Tensor, beta: Tensor, width: Tensor) -> Tensor:
    """log Z + ½ E[z²] with E[z²] = 1 + (αφ(α) − βφ(β))/Z: the module docstring's
    closed form (few ops, for training)."""
    log_z = special.log_normal_interval(alpha, beta, width)
    r_lo = torch.exp(special.log_normal_pdf(alpha) - log_z)
    r_hi = torch.exp(special.log_normal_pdf(beta) - log_z)
    return log_z + 0.5 * (1.0 + alpha * r_lo - beta * r_hi)


def _neg_entropy_scaled(alpha: Tensor, beta: Tensor, width: Tensor) -> Tensor:
    """The same quantity as s − m²/2 + ½(m + e)² + ½ Var z, written as s + m e + e²/2 + ½ Var z."""
    tn = truncated_standard_normal(alpha, beta, width)
    return tn.s + tn.m * tn.e + 0.5 * tn.e * tn.e + 0.5 * tn.var


def _narrow_support(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """Where the support [a, b] is narrow against σ ((b − a)/σ < kernels.KL_NARROW_WIDTH; the default bounds
    never are, b − a = 20 and σ ≤ e⁵) with a moderate tilt |A| ≤ 10 and half-width h = (b − a)/2 ≤ 5 (see
    :func:`_tilted_uniform`): there the moments of θ come from the tilted-uniform form."""
    with torch.no_grad():
        half = 0.5 * (b - a)
        tilt = (0.5 * (a + b) - mu) * half / (sigma * sigma)
        return ((b - a) / sigma < kernels.KL_NARROW_WIDTH) & (tilt.abs() <= 10.0) & (half <= 5.0)


def _tilted_uniform(mu: Tensor, sigma: Tensor, a: float, b: float) -> tuple[Tensor, Tensor, float, Tensor]:
    """The posterior of x as a tilted uniform, on 32 Gauss–Legendre nodes: x = m + h t, m = (a + b)/2,
    h = (b − a)/2, t ∈ [−1, 1] with density ∝ e^F, F = −A t − B t², A = (m − μ) h/σ², B = h²/(2σ²).

    Returns (weights w_i e^{F(t_i)} normalised to sum 1, shape (32, n); x − c at the nodes; the bound c
    nearer 0; D = log E[θ] − c = log1p(Σ_i w_i e^{F_i} expm1(x_i − c))). Anchoring at c keeps log E[θ] = c + D
    accurate in relative terms when c = 0; x − c = −h(1 − t) (c = b) or h(1 + t) (c = a) is exact. Every
    integrand used is entire with a slope of at most 2h + |A| ≤ 20 over t (see :func:`_narrow_support`), where
    32-point Gauss–Legendre is exact to rounding (checked against 50-digit mpmath in the tests)."""
    half, mid = 0.5 * (b - a), 0.5 * (a + b)
    t = torch.as_tensor(_NARROW_NODES, dtype=mu.dtype, device=mu.device).unsqueeze(1)
    wt = torch.as_tensor(0.5 * _NARROW_WEIGHTS, dtype=mu.dtype, device=mu.device).unsqueeze(1)
    var = sigma * sigma
    ef = wt * torch.exp(-((mid - mu) * half / var) * t - (0.5 * half * half / var) * t * t)
    ef = ef / ef.sum(0)
    anchor, offset = (b, -half * (1.0 - t)) if abs(b) <= abs(a) else (a, half * (1.0 + t))
    return ef, offset, anchor, torch.log1p((torch.expm1(offset) * ef).sum(0))


def _log_expected_theta(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """log E[θ] (float64): c + D of :func:`_tilted_uniform` where the support is narrow against σ
    (:func:`_narrow_support`; no σ²-sized cancellation), else :func:`_log_expected_theta_wide`."""
    narrow = _narrow_support(mu, sigma, a, b)
    if not bool(narrow.any()):
        return _log_expected_theta_wide(mu, sigma, a, b)
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    return special.piecewise(narrow, lambda m, s: _log_expected_theta_narrow(m, s, a, b),
                             lambda m, s: _log_expected_theta_wide(m, s, a, b), mu, sigma)


def _log_expected_theta_narrow(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    _, _, anchor, shift = _tilted_uniform(mu, sigma, a, b)
    return anchor + shift


def _log_expected_theta_wide(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """log E[θ] = μ + σ²/2 + log Z(α − σ, β − σ) − log Z(α, β).

    With log Z = −m²/2 + s the polynomial part is P = μ + σ²/2 + (m₀² − m₁²)/2, which is exactly b
    when β ≤ 0 and exactly a when α ≥ σ (the regimes where m₀, m₁ are huge); elsewhere m₀, m₁ ≤ σ.

    In those two regimes log E[θ] = c + D with c the bound the posterior is piled against and
    D = s₁ − s₀, a difference of two O(log m) numbers. When D is small (|D| ≤ σ e₀ < 10⁻², e₀ the mean
    distance of z from the bound) it is taken instead from the exact integral of the tilted means,

        D = ∓∫₀^σ e(α − s, β − s) ds   (− at b, + at a),

    where e(lo, hi) ≥ 0 is the distance of the mean of N(0, 1) truncated to [lo, hi] from its bound nearest 0
    (K′(s) = s + E[z | tilted by e^{sz}] for the CGF K of z, and tilting by e^{sz} shifts the interval by −s).
    The integrand is positive and analytic, with its nearest singularity ≳ 80σ away from [0, σ] (e ≈ 1/(u + s)
    for a bound at distance u ≫ 1, where σ e₀ < 10⁻² means u > 100σ; for u ≲ 1, σ < 0.0125 and the poles of
    the Mills ratio are ≳ 1 away), so the error of 4-point Gauss–Legendre is ≲ 80⁻⁸ ≈ 6e-16 relative and in
    practice below rounding; D is as accurate as e itself (≲ 1e-13 relative; checked against 150-digit
    mpmath in the tests). This keeps log E[θ] = b + D accurate in relative terms when b = 0, and its autograd
    gradient (through the stable Mills-ratio derivatives) free of the cancellation of the ~1/σ-sized
    derivatives of s₁ and s₀.
    """
    alpha, beta, width = _standardise(mu, sigma, a, b)
    tn0 = truncated_standard_normal(alpha, beta, width)
    tn1 = truncated_standard_normal(alpha - sigma, beta - sigma, width)
    poly = mu + 0.5 * sigma * sigma + 0.5 * (tn0.m * tn0.m - tn1.m * tn1.m)
    poly = torch.where(beta <= 0, torch.full_like(poly, b), torch.where(alpha >= sigma, torch.full_like(poly, a), poly))
    out = poly + tn1.s - tn0.s
    with torch.no_grad():
        piled = ((beta <= 0) | (alpha >= sigma)) & (sigma * tn0.e < _PILED_SHIFT)
    if not bool(piled.any()):
        return out
    return special.piecewise(piled, lambda al, be, wd, sg, po, _: po + _bound_shift(al, be, wd, sg),
                             lambda al, be, wd, sg, po, o: o, alpha, beta, width, sigma, poly, out)


def _bound_shift(alpha: Tensor, beta: Tensor, width: Tensor, sigma: Tensor) -> Tensor:
    """D = log E[θ] − c = ∓∫₀^σ e(α − s, β − s) ds by Gauss–Legendre (see _log_expected_theta);
    for 1-D tensors with β ≤ 0 (c = b, sign −) or α ≥ σ (c = a, sign +)."""
    nodes = torch.as_tensor(_PILED_NODES, dtype=sigma.dtype, device=sigma.device).unsqueeze(1)
    weights = torch.as_tensor(_PILED_WEIGHTS, dtype=sigma.dtype, device=sigma.device).unsqueeze(1)
    shift = 0.5 * (nodes + 1.0) * sigma  # (nodes, n) abscissae in (0, σ)
    e = _one_sided_mean_excess(alpha - shift, beta - shift, width.expand_as(shift))
    integral = 0.5 * sigma * (weights * e).sum(0)
    return torch.where(beta <= 0, -integral, integral)


def _one_sided_mean_excess(lo: Tensor, hi: Tensor, width: Tensor) -> Tensor:
    """e of truncated_standard_normal for intervals on one side of 0 (hi ≤ 0 or lo ≥ 0) alone:
    e = [g(u) − ρ (w + g(v))] / (1 − ρ) on the reflected interval [u, v] (see _one_sided), or :func:`_narrow`'s
    e where the interval is narrow."""
    return special.piecewise(_is_narrow(lo, hi, width), lambda *t: _narrow(*t)[2], _wide_one_sided_mean_excess,
                             lo, hi, width)


def _wide_one_sided_mean_excess(lo: Tensor, hi: Tensor, width: Tensor) -> Tensor:
    low = hi <= 0
    u = torch.where(low, -hi, lo)
    v = torch.where(low, -lo, hi)
    log_rho = torch.clamp(-0.5 * width * (u + v) + special.log_inv_mills(u) - special.log_inv_mills(v), max=-1e-300)
    # ρ = Q(v)/Q(u) underflows (e = g(u)) for most far bounds: skip g(v) there
    return special.piecewise(log_rho < _LOG_TINY, lambda u_, v_, w_, l_: special.mills_excess(u_),
                             _excess_from_rho, u, v, width, log_rho)


def _excess_from_rho(u: Tensor, v: Tensor, width: Tensor, log_rho: Tensor) -> Tensor:
    rho = torch.exp(log_rho)
    return (special.mills_excess(u) - rho * (width + special.mills_excess(v))) / -torch.expm1(log_rho)


def log_expected_theta(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """log E_q[θ], stable in both tails (see :func:`_log_expected_theta`)."""
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    return _log_expected_theta(mu64, sigma64, a, b).to(dtype)


def expected_theta(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """E_q[θ] = exp(μ + σ²/2) [Φ(σ − α) − Φ(σ − β)] / Z; always in [e^a, e^b]."""
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    return torch.exp(_log_expected_theta(mu64, sigma64, a, b)).to(dtype)


def _log_cv2(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """log(Var θ / E[θ]²) (float64): :func:`_log_cv2_narrow` where the support is narrow against σ
    (:func:`_narrow_support`), else :func:`_log_cv2_wide`."""
    narrow = _narrow_support(mu, sigma, a, b)
    if not bool(narrow.any()):
        return _log_cv2_wide(mu, sigma, a, b)
    mu, sigma = torch.broadcast_tensors(mu, sigma)
    return special.piecewise(narrow, lambda m, s: _log_cv2_narrow(m, s, a, b),
                             lambda m, s: _log_cv2_wide(m, s, a, b), mu, sigma)


def _log_cv2_narrow(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """Var θ / E[θ]² = E_q[expm1(x − log E[θ])²] on the tilted-uniform nodes (:func:`_tilted_uniform`):
    a centred second moment (E_q[e^{x − log E θ}] = 1), so nothing cancels, where the wide form's second
    difference would cancel terms of size σ²."""
    ef, offset, _, shift = _tilted_uniform(mu, sigma, a, b)
    dev = torch.expm1(offset - shift)
    return torch.log((dev * dev * ef).sum(0))


def _log_cv2_wide(mu: Tensor, sigma: Tensor, a: float, b: float) -> Tensor:
    """log(Var θ / E[θ]²) = log(e^δ − 1), δ = K(2σ) − 2K(σ) + K(0).

    K(s) = s²/2 + log Z(α − s, β − s) − log Z(α, β) is the CGF of z. Direct second difference when
    δ ≥ 1e-2; otherwise δ = ∫₀^{2σ} (σ − |s − σ|) Var[N(0,1) | [α − s, β − s]] ds by 16-point
    Gauss–Legendre on each half (the integrand is analytic in s).
    """
    shape = mu.shape
    mu, sigma = mu.reshape(-1), sigma.reshape(-1)
    alpha, beta, width = _standardise(mu, sigma, a, b)
    tn = [truncated_standard_normal(alpha - k * sigma, beta - k * sigma, width) for k in range(3)]
    poly = sigma * sigma - 0.5 * (tn[2].m ** 2 - 2.0 * tn[1].m ** 2 + tn[0].m ** 2)
    poly = torch.where((beta <= 0) | (alpha >= 2.0 * sigma), torch.zeros_like(poly), poly)
    delta = poly + tn[2].s - 2.0 * tn[1].s + tn[0].s
    with torch.no_grad():
        small = delta < _SMALL_DELTA
    delta = special.piecewise(small, lambda al, be, wd, sg, _: _second_difference_by_quadrature(al, be, wd, sg),
                              lambda al, be, wd, sg, dl: dl, alpha, beta, width, sigma, delta)
    big = delta > 30.0
    d_small = torch.where(big, torch.ones_like(delta), delta)
    d_big = torch.where(big, delta, torch.full_like(delta, 31.0))
    out = torch.where(big, d_big + torch.log1p(-torch.exp(-d_big)), torch.log(torch.expm1(d_small)))
    return out.reshape(shape)


def _second_difference_by_quadrature(alpha: Tensor, beta: Tensor, width: Tensor, sigma: Tensor) -> Tensor:
    """δ = ∫₀^{2σ} (σ − |s − σ|) Var[N(0,1) | [α − s, β − s]] ds, 16-point Gauss–Legendre on each half."""
    quad = torch.zeros_like(sigma)
    nodes = torch.as_tensor(_GL_NODES, dtype=torch.float64, device=sigma.device)
    weights = torch.as_tensor(_GL_WEIGHTS, dtype=torch.float64, device=sigma.device)
    for left in (True, False):
        for t, w in zip(nodes, weights):
            frac = 0.5 * (t + 1.0)  # position inside the half, in (0, 1)
            shift = sigma * (frac if left else 1.0 + frac)
            kernel = sigma * (frac if left else 1.0 - frac)
            var = truncated_standard_normal(alpha - shift, beta - shift, width).var
            quad = quad + 0.5 * w * sigma * kernel * var
    return quad


def var_theta(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """Var_q[θ] = E[θ²] − E[θ]², evaluated as E[θ]²·(e^δ − 1) without cancellation."""
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    log_var = 2.0 * _log_expected_theta(mu64, sigma64, a, b) + _log_cv2(mu64, sigma64, a, b)
    return torch.exp(log_var).to(dtype)


def snr(mu: TensorLike, sigma: TensorLike, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> Tensor:
    """SNR(θ) = E[θ]/√Var θ = (e^δ − 1)^{−1/2}; depends on μ only through α, β."""
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    return torch.exp(-0.5 * _log_cv2(mu64, sigma64, a, b)).to(dtype)


# --------------------------------------------------------------------------------------------------
# Sampling: the released code's inverse-CDF sampler (modules/layers.py; notebook 01, section 1)
# --------------------------------------------------------------------------------------------------

@dataclass
class InverseCdfConstants:
    """Per-unit constants of the inverse-CDF sampler, in the orientation that keeps precision.

    A draw is z = sign · Φ⁻¹(clamp(lower + y·mass, eps, 1 − eps)), x = clamp(μ + σ z, a, b).
    sign = +1: lower = Φ(α), mass = Φ(β) − Φ(α) (the released code's form).
    sign = −1 (used when α > 0, where Φ(α) rounds to 1): lower = Q(β), mass = Q(α) − Q(β) — the
    same distribution with the tail probabilities kept in full precision.
    phi_lo/phi_hi are φ(α), φ(β) for the reparameterisation gradient.
    """

    alpha: Tensor
    beta: Tensor
    sign: Tensor
    lower: Tensor
    mass: Tensor


def inverse_cdf_constants(mu: Tensor, sigma: Tensor, a: float, b: float) -> InverseCdfConstants:
    """Compute the sampler's per-unit constants (differentiable in mu and sigma)."""
    alpha, beta, _ = _standardise(mu, sigma, a, b)
    flip = alpha > 0
    sign = torch.where(flip, -torch.ones_like(alpha), torch.ones_like(alpha))
    lo_cdf = torch.special.ndtr(torch.where(flip, -beta, alpha))
    hi_cdf = torch.special.ndtr(torch.where(flip, -alpha, beta))
    return InverseCdfConstants(alpha=alpha, beta=beta, sign=sign, lower=lo_cdf, mass=hi_cdf - lo_cdf)


def sample_theta(
    mu: TensorLike,
    sigma: TensorLike,
    *,
    a: float = DEFAULT_A,
    b: float = DEFAULT_B,
    sample_shape: Sequence[int] = (),
    generator: torch.Generator | None = None,
    eps: float = SAMPLING_EPS,
    uniform: Tensor | None = None,
) -> Tensor:
    """Reparameterised draw of θ = exp(x), x ~ N(μ, σ²) truncated to [a, b] (notebook 01, section 1).

    y ~ U(0, 1); γ = clamp(Φ(α) + y (Φ(β) − Φ(α)), eps, 1 − eps); x = clamp(μ + σ Φ⁻¹(γ), a, b).
    Differentiable in mu and sigma (the pathwise gradient of the inverse CDF). Upper-tail intervals
    (α > 0) use the reflected, equally distributed form described in :class:`InverseCdfConstants`.
    The result has shape sample_shape + broadcast(mu, sigma).shape; pass `uniform` (broadcastable
    with that shape) to supply y yourself.
    """
    mu64, sigma64, dtype, a, b = prepare(mu, sigma, a, b)
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must lie in (0, 0.5); got {eps}")
    shape = torch.Size(tuple(sample_shape)) + mu64.shape
    if uniform is None:
        uniform = torch.rand(shape, generator=generator, dtype=torch.float64, device=mu64.device)
    else:
        try:
            torch.broadcast_shapes(uniform.shape, shape)
        except RuntimeError as exc:
            raise ValueError(
                f"uniform has shape {tuple(uniform.shape)}, which does not broadcast with {tuple(shape)}"
            ) from exc
    c = inverse_cdf_constants(mu64, sigma64, a, b)
    gamma = torch.clamp(c.lower + uniform.to(torch.float64) * c.mass, eps, 1.0 - eps)
    z = c.sign * torch.special.ndtri(gamma)
    x = torch.clamp(mu64 + sigma64 * z, a, b)
    return torch.exp(x).to(dtype)
