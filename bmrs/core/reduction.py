"""Bayesian model reduction for the noise variables: ΔF for BMRS_N and BMRS_U (paper Eq. 5–15;
derived in notebook 01, sections 2–4).

For a reduced prior p̃, BMR gives the change in log evidence without refitting (paper
Eq. 5–6):

    ΔF = log ∫ q(θ) p̃(θ)/p(θ) dθ,     prune a structure iff ΔF ≥ 0.

Both functions compute in float64 and return the continuous ΔF per unit (float64, no autograd graph:
ΔF is a decision statistic), so that the same numbers serve the keep/prune decision (ΔF ≥ 0 prunes)
and rankings (post-training pruning).

The per-unit arithmetic runs in the compiled float64 kernels of :mod:`bmrs.core.kernels` (one fused loop
over units, on all CPU cores); inputs on a GPU are copied to the host for it and the result is
returned on their device.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from bmrs.core import kernels

from bmrs.core import special
from bmrs.core.distributions import DEFAULT_A, DEFAULT_B, TensorLike, prepare


#: The largest σ for which ΔF is evaluated. The float64 normalisers lose digits as σ grows (absolute error about
#: 1e-17·σ against a 80-digit mpmath evaluation: 2e-7 at σ = 1e10, 2e-5 at 1e12, 1e-2 at 1e15; inf/NaN from 1e17 on).
#: The noise layers clamp σ to e^5 ≈ 148 (bmrs.core.distributions.sigma_from_log_sigma), far below.
SIGMA_MAX = 1e10


def _run_kernel(kernel, mu64: Tensor, sigma64: Tensor, *args: float) -> Tensor:
    """Evaluate a per-unit kernel of bmrs.core.kernels on flat float64 host arrays.

    Raises ValueError for σ > :data:`SIGMA_MAX` and for a result that is NaN or +inf (possible only for inputs
    far outside any trained posterior, e.g. |μ| ~ 1e300); −inf is a valid ΔF_U (no posterior mass in the reduced
    support)."""
    shape, device = mu64.shape, mu64.device
    mu_np = np.ascontiguousarray(mu64.detach().reshape(-1).cpu().numpy())
    sigma_np = np.ascontiguousarray(sigma64.detach().reshape(-1).cpu().numpy())
    if sigma_np.size and float(sigma_np.max()) > SIGMA_MAX:
        raise ValueError(f"sigma must be at most {SIGMA_MAX:g} for ΔF to be accurate in float64; found sigma = "
                         f"{float(sigma_np.max()):g} (the noise layers clamp sigma to e^5)")
    out = np.empty_like(mu_np)
    kernel(mu_np, sigma_np, *args, out)
    bad = np.isnan(out) | (out == np.inf)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"ΔF cannot be evaluated in float64 at mu = {mu_np[i]:g}, sigma = {sigma_np[i]:g} (it came out "
                         f"{out[i]}); such a posterior lies far outside the bounds [a, b] = [{args[0]}, {args[1]}]")
    return torch.from_numpy(out).reshape(shape).to(device)


def delta_f_bmrs_n(
    mu: TensorLike,
    sigma: TensorLike,
    *,
    a: float = DEFAULT_A,
    b: float = DEFAULT_B,
    prior_mu: float | None = None,
    prior_sigma: float = 1e-6,
    include_2pi: bool = True,
) -> Tensor:
    """ΔF for the reduced prior p̃ = LogN_[a,b](μ̃_p, σ̃_p²), a near-Dirac at log θ = μ̃_p.

    Paper Eq. 8 (Appendix A.1), in the cancellation-free form derived in notebook 01, section 3
    (σ_q = sigma, μ_q = mu):

        ΔF_N = log(b − a) + log Z̃_q − log Z_q − log Z̃_p
               − ½ log(2π (σ_q² + σ̃_p²)) − ½ (μ_q − μ̃_p)² / (σ_q² + σ̃_p²)

    with the reduced posterior N(μ̃_q, σ̃_q²), σ̃_q² = σ_q² σ̃_p² / (σ_q² + σ̃_p²) and
    μ̃_q = (μ_q σ̃_p² + μ̃_p σ_q²) / (σ_q² + σ̃_p²) (Gaussian product identity); every Z is a
    normaliser on [a, b]. This uses μ_q²/σ_q² + μ̃_p²/σ̃_p² − μ̃_q²/σ̃_q² = (μ_q − μ̃_p)²/(σ_q² + σ̃_p²)
    instead of subtracting the ~10¹⁴-sized terms of Eq. 8.

    prior_mu=None means μ̃_p = a (the paper's setting), prior_sigma is σ̃_p (paper: 1e-6).
    include_2pi=False reproduces the authors' released code, which drops the 2π and therefore
    returns ΔF + ½ log 2π (≈ +0.919): a more aggressive pruning rule (the released code's
    ``deltaF`` in modules/layers.py; notebook 01, section 3.4).
    """
    mu64, sigma64, _, a, b = prepare(mu, sigma, a, b)
    mu_p = a if prior_mu is None else float(prior_mu)
    s_p = float(prior_sigma)
    if not (math.isfinite(mu_p) and math.isfinite(s_p) and s_p > 0):
        raise ValueError(
            f"prior_mu must be finite and prior_sigma positive and finite; got prior_mu={prior_mu}, prior_sigma={prior_sigma}"
        )
    _, s_prior = special.log_normal_interval_scaled(
        torch.tensor([(a - mu_p) / s_p], dtype=torch.float64),
        torch.tensor([(b - mu_p) / s_p], dtype=torch.float64),
        torch.tensor([(b - a) / s_p], dtype=torch.float64),
    )
    prior_side = -1 if mu_p < a else (1 if mu_p > b else 0)
    # −log Z̃_p = m_p²/2 − s̃_p; the m_p²/2 part is cancelled algebraically inside the kernel.
    const = math.log(b - a) - float(s_prior) - special.HALF_LOG_2PI + (0.0 if include_2pi else special.HALF_LOG_2PI)
    return _run_kernel(kernels.delta_f_n, mu64, sigma64, a, b, mu_p, s_p, const, prior_side)


def bmrs_u_threshold(p1: float, p2: float = 23, *, a: float = DEFAULT_A, b: float = DEFAULT_B) -> float:
    """The prior mass log(b'/a')/log(b/a) of [2^−p2, 2^−p1]: BMRS_U prunes when q's mass there is at
    least this (paper Eq. 11, 15); e.g. 0.5199 for p1 = 8 and 0.6585 for p1 = 4 with p2 = 23."""
    lo, hi = _reduced_support(p1, p2, a, b)
    return (hi - lo) / (b - a)


def _reduced_support(p1: float, p2: float, a: float, b: float) -> tuple[float, float]:
    p1, p2 = float(p1), float(p2)
    if not (math.isfinite(p1) and math.isfinite(p2)):
        raise ValueError(f"p1 and p2 must be finite bit counts; got p1={p1}, p2={p2}")
    if not p1 < p2:
        raise ValueError(
            f"BMRS_U needs p1 < p2 (reduced support [2^-p2, 2^-p1], e.g. p1=8, p2=23); got p1={p1}, p2={p2}"
        )
    lo, hi = -p2 * math.log(2.0), -p1 * math.log(2.0)
    if lo < a or hi > b:
        raise ValueError(
            f"the reduced support [log 2^-{p2:g}, log 2^-{p1:g}] = [{lo:.4f}, {hi:.4f}] must lie inside "
            f"[a, b] = [{a}, {b}]; choose 0 <= p1 < p2 <= {-a / math.log(2.0):.2f}"
        )
    return lo, hi


def delta_f_bmrs_u(
    mu: TensorLike,
    sigma: TensorLike,
    *,
    a: float = DEFAULT_A,
    b: float = DEFAULT_B,
    p1: float = 8,
    p2: float = 23,
) -> Tensor:
    """ΔF for the reduced prior p̃ = LogU on [2^−p2, 2^−p1] ⊂ [e^a, e^b] (paper Eq. 10, Appendix A.2):

        ΔF_U = log(b − a) − log(b' − a') + log q(a' ≤ log θ ≤ b'),   a' = −p2 ln 2, b' = −p1 ln 2,

    with q(a' ≤ x ≤ b') = [Φ((b' − μ)/σ) − Φ((a' − μ)/σ)] / Z computed in log space. ΔF_U ≥ 0 is
    exactly the rule q-mass ≥ (b' − a')/(b − a) (see :func:`bmrs_u_threshold`). The value is exact;
    the released code clamps μ to [a, b] first, which :class:`bmrs.prune.criteria.BMRSU` reproduces.
    """
    mu64, sigma64, _, a, b = prepare(mu, sigma, a, b)
    lo, hi = _reduced_support(p1, p2, a, b)
    const = math.log(b - a) - math.log(hi - lo)
    return _run_kernel(kernels.delta_f_u, mu64, sigma64, a, b, lo, hi, const)
