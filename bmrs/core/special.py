"""Numerically stable special functions of the standard normal distribution, in float64.

Everything in the project that touches a truncated normal goes through these helpers. Notation:
Φ is the standard normal CDF, φ its density, Q(t) = 1 − Φ(t) the upper tail.

The building blocks are

* the inverse Mills ratio λ(t) = φ(t) / Q(t), evaluated as √(2/π) / erfcx(t/√2) for t ≥ 0
  (erfcx(t) = exp(t²)·erfc(t) never underflows) and as φ(t)/Φ(−t) for t < 0;
* its excess g(t) = λ(t) − t, which for large t is the difference of two nearly equal numbers; there
  we use Laplace's continued fraction λ(t) = t + 1/(t + 2/(t + 3/(t + …))), so that
  g(t) = 1/(t + 2/(t + 3/(t + …))) is computed without cancellation;
* the variance of N(0, 1) truncated to [t, ∞), V(t) = 1 − λ(t)·g(t), which decays like 1/t² and is
  again taken from the continued fraction for large t;
* log(Φ(hi) − Φ(lo)), the log normaliser of a truncated normal, evaluated on the side of zero where
  the two tail probabilities are small so that no mass is lost to rounding.

All functions are elementwise on float64 tensors and differentiable (where-branches are fed safe
inputs so that unselected branches never produce NaN gradients).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
LOG_SQRT_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)
SQRT2 = math.sqrt(2.0)
LOG2 = math.log(2.0)

# Below this argument the direct forms of g and V lose at most ~t² ulps (≤ 1e-14 relative); above it
# the continued fractions converge to machine precision with _CF_TERMS terms.
_CF_SWITCH = 10.0
_CF_TERMS = 60
# erfc(x) underflows near x = 26.5; above this we switch to the scaled (erfcx) form.
_ERFC_SAFE = 25.0


class _LogNdtr(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.special.log_ndtr(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(_log_inv_mills_value(-x))


def log_ndtr(x: Tensor) -> Tensor:
    """log Φ(x), stable for all x, with the gradient φ(x)/Φ(x) = λ(−x) taken from the inverse Mills ratio
    (torch's own backward of log_ndtr overflows for x ≲ −1e8)."""
    return _LogNdtr.apply(x)


def log_normal_pdf(x: Tensor) -> Tensor:
    """log φ(x) = −x²/2 − ½ log 2π."""
    return -0.5 * x * x - HALF_LOG_2PI


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0 (Mächler 2012): expm1 near 0, log1p far from it."""
    near = x > -LOG2
    x_near = torch.where(near, x, torch.full_like(x, -1.0))
    x_far = torch.where(near, torch.full_like(x, -1.0), x)
    return torch.where(near, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def _log_inv_mills_value(t: Tensor) -> Tensor:
    """log λ(t) = log φ(t) − log Q(t), for any real t.

    t ≥ 0: log λ = ½ log(2/π) − log erfcx(t/√2)  (uses Q(t) = ½ erfcx(t/√2) e^{−t²/2}, the identity behind the
    released code's erfcx forms);
    t < 0: log λ = −t²/2 − ½ log 2π − log Φ(−t).
    """
    pos = t >= 0
    tp = torch.where(pos, t, torch.zeros_like(t))
    tn = torch.where(pos, torch.zeros_like(t), t)
    lp = LOG_SQRT_2_OVER_PI - torch.log(torch.special.erfcx(tp / SQRT2))
    ln = log_normal_pdf(tn) - torch.special.log_ndtr(-tn)
    return torch.where(pos, lp, ln)


def piecewise(cond: Tensor, when_true, when_false, *args: Tensor):
    """Evaluate when_true(*args) where cond holds and when_false(*args) elsewhere, each only on its
    own elements (so an unused branch costs nothing and cannot leak NaN into gradients).

    args are flattened alongside cond. The branches return a tensor or a list of tensors (one value
    per element each); the result has the same structure, in cond's shape, and is differentiable
    through both branches.
    """
    shape = cond.shape
    cond = cond.reshape(-1)
    flat = [x.reshape(-1) for x in args]

    def finish(res):
        return [r.reshape(shape) for r in res] if isinstance(res, (list, tuple)) else res.reshape(shape)

    if bool(cond.all()):
        return finish(when_true(*flat))
    if not bool(cond.any()):
        return finish(when_false(*flat))
    idx_t = cond.nonzero(as_tuple=True)
    idx_f = (~cond).nonzero(as_tuple=True)
    res_t = when_true(*(x[idx_t] for x in flat))
    res_f = when_false(*(x[idx_f] for x in flat))

    def merge(rt: Tensor, rf: Tensor) -> Tensor:
        return rt.new_empty(cond.shape).index_put(idx_t, rt).index_put(idx_f, rf)

    if isinstance(res_t, (list, tuple)):
        return finish([merge(rt, rf) for rt, rf in zip(res_t, res_f)])
    return finish(merge(res_t, res_f))


def _continued_fraction_tail(t: Tensor, first: int) -> Tensor:
    """c_first where c_k = t + (k+1)/c_{k+1}, truncated at depth _CF_TERMS (c_N = t)."""
    c = t.clone()
    for k in range(_CF_TERMS, first, -1):
        c = t + k / c
    return c


def _g_direct(t: Tensor) -> Tensor:
    return torch.exp(_log_inv_mills_value(t)) - t


def _g_cf(t: Tensor) -> Tensor:
    return 1.0 / _continued_fraction_tail(t, 1)


def _mills_excess_value(t: Tensor) -> Tensor:
    """g(t) = λ(t) − t  (> 0 for every real t).

    For t ≥ 10 it is 1/c₁ with c₁ = t + 2/(t + 3/(t + …)) (Laplace's continued fraction), which has
    no cancellation; below, λ(t) − t loses at most t² ulps.
    """
    return piecewise(t >= _CF_SWITCH, _g_cf, _g_direct, t)


def _v_direct(t: Tensor) -> Tensor:
    g = _g_direct(t)
    return 1.0 - (t + g) * g


def _v_cf(t: Tensor) -> Tensor:
    c3 = _continued_fraction_tail(t, 3)
    c2 = t + 3.0 / c3
    c1 = t + 2.0 / c2
    return (t + 4.0 / c2 - 3.0 / c3) / (c2 * c1 * c1)


def _tail_variance_value(t: Tensor) -> Tensor:
    """V(t) = Var[Z | Z ≥ t] = 1 − λ(t)·g(t) for Z ~ N(0, 1).

    For large t, with c_k the continued-fraction tails of mills_excess,
    V = (t + 4/c₂ − 3/c₃) / (c₂ c₁²), a sum of positive terms (≈ 1/t²).
    """
    return piecewise(t >= _CF_SWITCH, _v_cf, _v_direct, t)


def _dv_direct(t: Tensor) -> Tensor:
    # λ = exp(log λ), not g + t: for t < 0, g = λ − t ≈ |t| and g + t would cancel to 0 (t = −10: λ ≈ 8e−23).
    # For 0 ≤ t < 10 λ = g + t (a sum of positive numbers) and V − g² loses at most ~t² ulps.
    g = _g_direct(t)
    lam = torch.where(t < 0, torch.exp(_log_inv_mills_value(t)), g + t)
    return lam * ((1.0 - lam * g) - g * g)


def _dv_cf(t: Tensor) -> Tensor:
    c3 = _continued_fraction_tail(t, 3)
    c2 = t + 3.0 / c3
    c1 = t + 2.0 / c2
    c0 = t + 1.0 / c1
    return 2.0 * (c0 / c1) * (2.0 / c2 - 3.0 / c3) / (c1 * c2)


def _tail_variance_derivative(t: Tensor) -> Tensor:
    """V'(t) = λ(t) (V(t) − g(t)²).

    For t ≥ 10 the difference V − g² (two numbers ≈ 1/t² whose difference is ≈ −2/t⁴) is taken from the
    continued fraction instead: with c_k the tails of mills_excess (c₀ = λ, c₁ = 1/g, c_k = t + (k+1)/c_{k+1}),
    V = (2c₁ − c₂)/(c₂c₁²) and g² = 1/c₁², so V − g² = 2(c₁ − c₂)/(c₂c₁²) with c₁ − c₂ = 2/c₂ − 3/c₃ (≈ −1/t:
    two terms of fixed ratio ≈ 2/3, no cancellation), and

        V'(t) = 2 (c₀/c₁) (2/c₂ − 3/c₃) / (c₁c₂)   (≈ −2/t³).
    """
    return piecewise(t >= _CF_SWITCH, _dv_cf, _dv_direct, t)


# The three Mills-ratio functions get their derivatives from the identities
#   d/dt log λ(t) = g(t),   g'(t) = −V(t),   V'(t) = λ(t) (V(t) − g(t)²),
# which are evaluated stably; autograd through erfcx instead forms 2x·erfcx(x) − 2/√π, which cancels to
# 0 for large x (so a far-tail KL would get no gradient in μ).
class _LogInvMills(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        return _log_inv_mills_value(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return grad * _mills_excess_value(t)


class _MillsExcess(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        return _mills_excess_value(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return -grad * _tail_variance_value(t)


class _TailVariance(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        ctx.save_for_backward(t)
        return _tail_variance_value(t)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (t,) = ctx.saved_tensors
        return grad * _tail_variance_derivative(t)


def log_inv_mills(t: Tensor) -> Tensor:
    """log λ(t) = log φ(t) − log Q(t) for any real t; gradient g(t) = λ(t) − t."""
    return _LogInvMills.apply(t)


def mills_excess(t: Tensor) -> Tensor:
    """g(t) = λ(t) − t > 0 (continued fraction for t ≥ 10); gradient −V(t)."""
    return _MillsExcess.apply(t)


def tail_variance(t: Tensor) -> Tensor:
    """V(t) = Var[Z | Z ≥ t], Z ~ N(0, 1); gradient λ(t)(V(t) − g(t)²), from the continued fraction for
    t ≥ 10 (see _tail_variance_derivative)."""
    return _TailVariance.apply(t)


def log_normal_interval_scaled(lo: Tensor, hi: Tensor, width: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """log(Φ(hi) − Φ(lo)) for lo < hi, accurate in both tails, as a pair (m, s) with

        log(Φ(hi) − Φ(lo)) = −m²/2 + s,   m = distance from 0 to [lo, hi]  (0 if lo ≤ 0 ≤ hi).

    Splitting off −m²/2 lets callers cancel the huge parts of two far-tail normalisers exactly, by
    algebra, instead of subtracting two ~10²³-sized floats.

    The interval is reflected to the side of zero where its tail probabilities are small: with
    c = sign(lo + hi), x₁ = c·lo/√2, x₂ = c·hi/√2 and p = min(x₁, x₂), q = max(x₁, x₂),
    Φ(hi) − Φ(lo) = ½[erfc(p) − erfc(q)], so no mass is lost to rounding. When the interval contains 0
    (p < 0) it is 1 − ½[erfc(−p) + erfc(q)], evaluated with log1p so that tiny tail masses survive.
    Where erfc(p) would underflow (p > 25) the scaled form s = log(½ erfcx(p)) +
    log(1 − e^{p²−q²} erfcx(q)/erfcx(p)) is used, with p² − q² = −(q − p)(q + p) and
    q − p = width/√2 (pass width when hi − lo would round).
    """
    if width is None:
        width = hi - lo
    shape = torch.broadcast_shapes(lo.shape, hi.shape, width.shape)
    lo, hi = lo.expand(shape).reshape(-1), hi.expand(shape).reshape(-1)
    width = width.expand(shape).reshape(-1)
    c = torch.copysign(torch.tensor(1.0 / SQRT2, dtype=lo.dtype, device=lo.device), lo + hi)
    x1, x2 = lo * c, hi * c
    near, far = torch.minimum(x1, x2), torch.maximum(x1, x2)
    m = torch.clamp(near, min=0.0) * SQRT2
    s = piecewise(near > _ERFC_SAFE, _scaled_log_z_far_tail, _scaled_log_z_erfc, near, far, width / SQRT2)
    return m.reshape(shape), s.reshape(shape)


def _erfc_far(far: Tensor) -> Tensor:
    # erfc(q) underflows to 0 for q > 27; skipping those saves half the work for narrow intervals.
    return piecewise(far < 27.0, torch.erfc, torch.zeros_like, far)


def _scaled_log_z_erfc(p: Tensor, q: Tensor, gap: Tensor) -> Tensor:
    """s for p ≤ 25: log Z + m²/2 with Z from erfc (p < 0: the interval contains 0)."""
    return piecewise(
        p < 0,
        lambda p_, q_: torch.log1p(-0.5 * (torch.erfc(-p_) + _erfc_far(q_))),
        lambda p_, q_: torch.log(0.5 * (torch.erfc(p_) - _erfc_far(q_))) + p_ * p_,
        p,
        q,
    )


def _scaled_log_z_far_tail(p: Tensor, q: Tensor, gap: Tensor) -> Tensor:
    """s for p > 25 from erfcx: log(½ erfcx(p)) + log(1 − e^{−gap(p+q)} erfcx(q)/erfcx(p))."""
    log_erfcx_p = torch.log(torch.special.erfcx(p))
    log_ratio = -gap * (p + q) + torch.log(torch.special.erfcx(q)) - log_erfcx_p
    return -LOG2 + log_erfcx_p + log1mexp(log_ratio)


def log_normal_interval(lo: Tensor, hi: Tensor, width: Tensor | None = None) -> Tensor:
    """log(Φ(hi) − Φ(lo)) for lo < hi, accurate in both tails (see log_normal_interval_scaled)."""
    m, s = log_normal_interval_scaled(lo, hi, width)
    return -0.5 * m * m + s
