"""Compiled (numba) float64 per-unit kernels: the CPU fast path of the noise-variable math.

Per-unit quantities (ΔF, the KL term and its gradient, the sampler's constants) are evaluated for
every noise variable at every training step or pruning step. In eager PyTorch each of their dozens
of elementwise operations is a separate dispatch and pass over memory, which dominates for the few
hundred units of a small network and for the 10⁶ units of the ΔF benchmark alike; fused into one
loop per unit they run one to two orders of magnitude faster. The kernels called at every training
step (a few thousand units at most) run serially, since waking a thread pool costs more than they
do; the ΔF kernels, which may see 10⁶ units, spread over the cores with prange. The formulas are those documented in
:mod:`bmrs.core.distributions` and :mod:`bmrs.core.reduction`; the scalar helpers here are the twins of those
in :mod:`bmrs.core.special`. The torch implementations remain the reference (and the path for tensors on
accelerators); tests check that both agree and match 150-digit arithmetic.
"""

from __future__ import annotations

import math

import os

import numba
import numpy as np

# Numba's OpenMP threading layer shares the OpenMP runtime with torch: its first parallel launch would
# reset torch's thread count (torch.set_num_threads) to the number of cores. Numba's own work queue
# leaves torch alone. A user's explicit NUMBA_THREADING_LAYER wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_SQRT2 = math.sqrt(2.0)
_LOG2 = math.log(2.0)
_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_ERFC_SAFE = 25.0
_ERFC_ZERO = 27.0  # erfc(x) == 0.0 in float64 beyond ~26.55


@numba.njit(cache=True, inline="always")
def _erfcx_large(x: float) -> float:
    """erfcx(x) = e^{x²} erfc(x) for x ≥ 25 from its asymptotic series (error < 1e-20 there):
    erfcx(x) = 1/(x√π) · Σₙ (−1)ⁿ (2n−1)!! / (2x²)ⁿ."""
    inv = 1.0 / (2.0 * x * x)
    term = 1.0
    total = 1.0
    for n in range(1, 12):
        term *= -(2.0 * n - 1.0) * inv
        total += term
    return total * _INV_SQRT_PI / x


@numba.njit(cache=True)
def _erfcx(x: float) -> float:
    """erfcx(x) for x ≥ 0."""
    if x >= _ERFC_SAFE:
        return _erfcx_large(x)
    return math.exp(x * x) * math.erfc(x)


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG_SQRT_2_OVER_PI = 0.5 * math.log(2.0 / math.pi)
_CF_SWITCH = 10.0
_CF_TERMS = 60
_KL_DIRECT_MAX_DISTANCE = 10.0


@numba.njit(cache=True)
def _log_inv_mills(t: float) -> float:
    """log λ(t) = log φ(t) − log Q(t) (special.log_inv_mills)."""
    if t >= 0.0:
        return _LOG_SQRT_2_OVER_PI - math.log(_erfcx(t / _SQRT2))
    return -0.5 * t * t - _HALF_LOG_2PI - math.log1p(-0.5 * math.erfc(-t / _SQRT2))


@numba.njit(cache=True)
def _cf_tail(t: float, first: int) -> float:
    c = t
    for k in range(_CF_TERMS, first, -1):
        c = t + k / c
    return c


@numba.njit(cache=True)
def _mills_excess(t: float) -> float:
    """g(t) = λ(t) − t (special.mills_excess)."""
    if t >= _CF_SWITCH:
        return 1.0 / _cf_tail(t, 1)
    return math.exp(_log_inv_mills(t)) - t


@numba.njit(cache=True)
def _tail_variance(t: float) -> float:
    """V(t) = Var[Z | Z ≥ t] (special.tail_variance)."""
    if t >= _CF_SWITCH:
        c3 = _cf_tail(t, 3)
        c2 = t + 3.0 / c3
        c1 = t + 2.0 / c2
        return (t + 4.0 / c2 - 3.0 / c3) / (c2 * c1 * c1)
    g = math.exp(_log_inv_mills(t)) - t
    return 1.0 - (t + g) * g


@numba.njit(cache=True, inline="always")
def _log1mexp(x: float) -> float:
    if x > -_LOG2:
        return math.log(-math.expm1(x))
    return math.log1p(-math.exp(x))


@numba.njit(cache=True)
def log_interval_scaled(lo: float, hi: float, width: float) -> tuple[float, float]:
    """(m, s) with log(Φ(hi) − Φ(lo)) = −m²/2 + s; same algorithm as special.log_normal_interval_scaled."""
    c = 1.0 / _SQRT2 if lo + hi > 0.0 else -1.0 / _SQRT2
    x1 = lo * c
    x2 = hi * c
    p = min(x1, x2)
    q = max(x1, x2)
    if p > _ERFC_SAFE:
        gap = width / _SQRT2
        log_ratio = -gap * (p + q) + math.log(_erfcx_large(q)) - math.log(_erfcx_large(p))
        return p * _SQRT2, -_LOG2 + math.log(_erfcx_large(p)) + _log1mexp(log_ratio)
    e_far = math.erfc(q) if q < _ERFC_ZERO else 0.0
    if p < 0.0:
        return 0.0, math.log1p(-0.5 * (math.erfc(-p) + e_far))
    m = p * _SQRT2
    return m, math.log(0.5 * (math.erfc(p) - e_far)) + 0.5 * m * m


@numba.njit(cache=True, inline="always")
def _side(lo: float, hi: float) -> int:
    """-1 if the standardised interval [lo, hi] lies above 0 (mean below a), +1 if below 0, else 0."""
    if lo >= 0.0:
        return -1
    if hi <= 0.0:
        return 1
    return 0


@numba.njit(cache=True, parallel=True)
def delta_f_n(mu: np.ndarray, sigma: np.ndarray, a: float, b: float, mu_p: float, s_p: float,
              const: float, prior_side: int, out: np.ndarray) -> None:
    """ΔF_N per unit (see bmrs.core.reduction.delta_f_bmrs_n for the derivation).

    const holds log(b − a) − ½ log 2π − s̃_p, where log Z̃_p = −m_p²/2 + s̃_p; the −m_p²/2 part (≈ −10¹³
    for a prior mode outside [a, b]) is cancelled here by algebra. With c the bound nearest the prior
    mode, e = c − μ̃_p and d = c − μ_q:
      * q and r on the same side of [a, b] (nearest bound c_qr): m_q²/2 − m_r²/2 − (μ_q − μ̃_p)²/(2T)
        = −(c_qr − μ̃_p)²/(2σ̃_p²), combined with m_p²/2 in factored form;
      * r on the prior's side: m_p²/2 − m_r²/2 − (μ_q − μ̃_p)²/(2T) = −d²/(2σ_q²), so the m² part is
        m_q²/2 − d²/(2σ_q²) (factored if q is on the other side);
      * otherwise (m_r moderate): m_p²/2 − (μ_q − μ̃_p)²/(2T) = [e²σ_q² + 2 e d σ̃_p² − d²σ̃_p²]/(2σ̃_p² T).
    """
    s_p2 = s_p * s_p
    edge_lo = -0.5 * (a - mu_p) ** 2 / s_p2
    edge_hi = -0.5 * (b - mu_p) ** 2 / s_p2
    c = a if prior_side < 0 else b
    c_other = b if prior_side < 0 else a
    e = c - mu_p
    for i in numba.prange(mu.shape[0]):
        m = mu[i]
        s = sigma[i]
        s2 = s * s
        total = s2 + s_p2
        sigma_red = s * (s_p / math.sqrt(total))
        lo_q = (a - m) / s
        hi_q = (b - m) / s
        m_q, sc_q = log_interval_scaled(lo_q, hi_q, (b - a) / s)
        scale = total * sigma_red
        lo_r = ((a - m) * s_p2 + (a - mu_p) * s2) / scale
        hi_r = ((b - m) * s_p2 + (b - mu_p) * s2) / scale
        m_r, sc_r = log_interval_scaled(lo_r, hi_r, (b - a) / sigma_red)
        side_q = _side(lo_q, hi_q)
        side_r = _side(lo_r, hi_r)
        if side_q != 0 and side_q == side_r:
            # q and r share their nearest bound c_qr: m_q²/2 − m_r²/2 − (μ_q − μ̃_p)²/(2T) = −(c_qr − μ̃_p)²/(2σ̃_p²),
            # and with a prior mode outside [a, b] the +m_p²/2 = (c − μ̃_p)²/(2σ̃_p²) is combined in factored form.
            c_qr = a if side_q < 0 else b
            if prior_side == 0:
                poly = edge_lo if side_q < 0 else edge_hi
            elif side_q == prior_side:
                poly = 0.0
            else:
                poly = 0.5 * (c - c_qr) * (c + c_qr - 2.0 * mu_p) / s_p2
        elif prior_side != 0 and side_r == prior_side:
            d = c - m
            if side_q == 0:
                poly = -0.5 * d * d / s2
            else:
                poly = 0.5 * (c_other - c) * (c_other + c - 2.0 * m) / s2
        elif prior_side == 0:
            poly = 0.5 * (m_q * m_q - m_r * m_r) - 0.5 * (m - mu_p) ** 2 / total
        else:
            d = c - m
            poly = 0.5 * (m_q * m_q - m_r * m_r) + (e * e * s2 + 2.0 * e * d * s_p2 - d * d * s_p2) / (2.0 * s_p2 * total)
        out[i] = const + poly + sc_r - sc_q - 0.5 * math.log(total)


@numba.njit(cache=True, parallel=True)
def delta_f_u(mu: np.ndarray, sigma: np.ndarray, a: float, b: float, lo: float, hi: float,
              const: float, out: np.ndarray) -> None:
    """ΔF_U per unit (see bmrs.core.reduction.delta_f_bmrs_u for the derivation)."""
    for i in numba.prange(mu.shape[0]):
        m = mu[i]
        s = sigma[i]
        lo_1 = (lo - m) / s
        hi_1 = (hi - m) / s
        lo_0 = (a - m) / s
        hi_0 = (b - m) / s
        m_1, s_1 = log_interval_scaled(lo_1, hi_1, (hi - lo) / s)
        m_0, s_0 = log_interval_scaled(lo_0, hi_0, (b - a) / s)
        if lo_1 >= 0.0 and lo_0 >= 0.0:
            poly = 0.5 * (a - lo) * (a + lo - 2.0 * m) / (s * s)
        elif hi_1 <= 0.0 and hi_0 <= 0.0:
            poly = 0.5 * (b - hi) * (b + hi - 2.0 * m) / (s * s)
        else:
            poly = 0.5 * (m_0 * m_0 - m_1 * m_1)
        out[i] = const + poly + s_1 - s_0


@numba.njit(cache=True)
def _entropy_part(alpha: float, beta: float, width: float) -> tuple[float, float, float]:
    """N = log Z + ½E[z²] for z ~ N(0,1) truncated to [α, β], and its partials ∂N/∂α, ∂N/∂β.

    ∂N/∂α = ½ (φ(α)/Z) (E[z²] − 2 − α²),   ∂N/∂β = ½ (φ(β)/Z) (2 + β² − E[z²]).
    Direct forms when [α, β] is within 30 of 0; otherwise the interval is reflected to [u, v] on the
    positive side and N = s + u e + e²/2 + V/2 (distributions.truncated_standard_normal), with
    1 − u e = 2/(c₁c₂) from the continued fraction when ρ underflows, so nothing cancels.
    """
    if alpha <= _KL_DIRECT_MAX_DISTANCE and beta >= -_KL_DIRECT_MAX_DISTANCE:
        m, s = log_interval_scaled(alpha, beta, width)
        log_z = s - 0.5 * m * m
        r_lo = math.exp(-0.5 * alpha * alpha - _HALF_LOG_2PI - log_z)
        r_hi = math.exp(-0.5 * beta * beta - _HALF_LOG_2PI - log_z)
        ez2 = 1.0 + alpha * r_lo - beta * r_hi
        return (log_z + 0.5 * ez2, 0.5 * r_lo * (ez2 - 2.0 - alpha * alpha),
                0.5 * r_hi * (2.0 + beta * beta - ez2))
    low = beta <= 0.0
    u = -beta if low else alpha
    v = -alpha if low else beta
    log_lam_u = _log_inv_mills(u)
    log_lam_v = _log_inv_mills(v)
    log_rho = min(-0.5 * width * (u + v) + log_lam_u - log_lam_v, -1e-300)
    rho = math.exp(log_rho)
    one_minus_rho = -math.expm1(log_rho)
    g_u = _mills_excess(u)
    g_v = _mills_excess(v)
    s = -_HALF_LOG_2PI - log_lam_u + _log1mexp(log_rho)
    e = (g_u - rho * (width + g_v)) / one_minus_rho
    bracket = -width * width + u * g_v + v * g_u + width * (g_u - g_v) + 2.0 * g_u * g_v - 2.0
    var = (_tail_variance(u) + rho * bracket + rho * rho * _tail_variance(v)) / (one_minus_rho * one_minus_rho)
    value = s + u * e + 0.5 * e * e + 0.5 * var
    if rho == 0.0:
        c2 = _cf_tail(u, 2)
        one_minus_ue = 2.0 / ((u + 2.0 / c2) * c2)
    else:
        one_minus_ue = 1.0 - u * e
    lam_u = math.exp(log_lam_u)
    d_near = 0.5 * lam_u / one_minus_rho * (-2.0 * one_minus_ue + e * e + var)
    d_far = 0.0
    if rho > 0.0:
        ez2 = (u + e) * (u + e) + var
        d_far = 0.5 * math.exp(log_lam_v) * rho / one_minus_rho * (2.0 + v * v - ez2)
    if low:
        return value, -d_far, -d_near
    return value, d_near, d_far


# Narrow support (b − a ≪ σ): the tilted-uniform form of the KL (distributions._kl_narrow_value). Used where
# w = (b − a)/σ < KL_NARROW_WIDTH and |A| ≤ KL_NARROW_TILT. The default bounds (b − a = 20, σ ≤ e⁵) never
# reach it (w ≥ 0.135).
KL_NARROW_WIDTH = 0.125
KL_NARROW_TILT = 1.0
_nodes, _weights = np.polynomial.legendre.leggauss(12)
#: the 6 positive Gauss–Legendre nodes on [−1, 1] and their weights halved (the uniform average)
NARROW_X = np.ascontiguousarray(_nodes[_nodes > 0])
NARROW_W = np.ascontiguousarray(0.5 * _weights[_nodes > 0])
_SERIES_TERMS = 30
#: p(F) = (F − 1)e^F + 1 = F² Σⱼ P_COEF[j] Fʲ, P_COEF[j] = (j + 1)/(j + 2)!
P_COEF = np.array([(j + 1) / math.factorial(j + 2) for j in range(_SERIES_TERMS - 1)])
#: r(y) = (1 + y) log(1 + y) − y = y² Σⱼ R_COEF[j] yʲ, R_COEF[j] = (−1)ʲ/((j + 2)(j + 1))
R_COEF = np.array([(-1) ** j / ((j + 2) * (j + 1)) for j in range(_SERIES_TERMS - 1)])


@numba.njit(cache=True, inline="always")
def _horner(coef: np.ndarray, x: float) -> float:
    acc = 0.0
    for j in range(coef.shape[0] - 1, -1, -1):
        acc = acc * x + coef[j]
    return acc


@numba.njit(cache=True)
def kl_narrow(tilt: float, curv: float) -> tuple[float, float, float]:
    """KL of q(x) ∝ exp(−A x − B x²) on [−1, 1] against U[−1, 1] (A = tilt, B = curv), with ∂/∂A and ∂/∂B.

    distributions._kl_narrow_value documents the formula: with F = −A x − B(x² − 1/3), M − 1 = E_u[e^F − 1]
    and P = E_u[(F − 1)e^F + 1], KL = (P − r(M − 1))/M; ∂KL/∂A = A Var_q x + B Cov_q(x, x²),
    ∂KL/∂B = A Cov_q(x, x²) + B Var_q x². E_u by 12-point Gauss–Legendre, the nodes ±x taken in pairs
    (so that A = 0 gives ∂KL/∂A = 0 exactly).
    """
    m1 = 0.0
    p = 0.0
    s0 = 0.0
    s1 = 0.0
    s2 = 0.0
    s3 = 0.0
    s4 = 0.0
    for j in range(NARROW_X.shape[0]):
        x = NARROW_X[j]
        wt = NARROW_W[j]
        even = -curv * (x * x - 1.0 / 3.0)
        odd = tilt * x
        f_plus = even - odd
        f_minus = even + odd
        m1 += wt * (math.expm1(f_plus) + math.expm1(f_minus))
        p += wt * (f_plus * f_plus * _horner(P_COEF, f_plus) + f_minus * f_minus * _horner(P_COEF, f_minus))
        q_even = wt * math.exp(even) * 2.0 * math.cosh(odd)  # wt (e^{F(x)} + e^{F(−x)})
        q_odd = -wt * math.exp(even) * 2.0 * math.sinh(odd)  # wt (e^{F(x)} − e^{F(−x)})
        x2 = x * x
        s0 += q_even
        s1 += x * q_odd
        s2 += x2 * q_even
        s3 += x2 * x * q_odd
        s4 += x2 * x2 * q_even
    value = (p - m1 * m1 * _horner(R_COEF, m1)) / (1.0 + m1)
    e1 = s1 / s0
    e2 = s2 / s0
    var1 = e2 - e1 * e1
    cov12 = s3 / s0 - e1 * e2
    var2 = s4 / s0 - e2 * e2
    return value, tilt * var1 + curv * cov12, tilt * cov12 + curv * var2


@numba.njit(cache=True)
def kl_with_grad(mu: np.ndarray, sigma: np.ndarray, a: float, b: float,
                 kl: np.ndarray, d_mu: np.ndarray, d_sigma: np.ndarray) -> None:
    """KL[q ‖ p] per unit with ∂KL/∂μ and ∂KL/∂σ (distributions.kl_log_uniform).

    KL = log(b − a) − ½ log 2π − log σ − N(α, β);  ∂KL/∂μ = (∂N/∂α + ∂N/∂β)/σ,
    ∂KL/∂σ = (−1 + α ∂N/∂α + β ∂N/∂β)/σ, since ∂α/∂μ = ∂β/∂μ = −1/σ, ∂α/∂σ = −α/σ, ∂β/∂σ = −β/σ.
    Narrow supports ((b − a)/σ < KL_NARROW_WIDTH, |A| ≤ KL_NARROW_TILT) use kl_narrow instead.
    """
    const = math.log(b - a) - _HALF_LOG_2PI
    mid = 0.5 * (a + b)
    for i in range(mu.shape[0]):
        s = sigma[i]
        half_width = 0.5 * ((b - a) / s)
        tilt = (mid - mu[i]) / s * half_width
        if 2.0 * half_width < KL_NARROW_WIDTH and abs(tilt) <= KL_NARROW_TILT:
            # A = ((a + b)/2 − μ)(b − a)/(2σ²), B = (b − a)²/(8σ²): ∂A/∂μ = −h/σ, ∂A/∂σ = −2A/σ, ∂B/∂σ = −2B/σ
            curv = 0.5 * half_width * half_width
            kl[i], dk_a, dk_b = kl_narrow(tilt, curv)
            d_mu[i] = -dk_a * half_width / s
            d_sigma[i] = -2.0 * (tilt * dk_a + curv * dk_b) / s
            continue
        alpha = (a - mu[i]) / s
        beta = (b - mu[i]) / s
        n, dn_a, dn_b = _entropy_part(alpha, beta, (b - a) / s)
        kl[i] = const - math.log(s) - n
        d_mu[i] = (dn_a + dn_b) / s
        d_sigma[i] = (-1.0 + alpha * dn_a + beta * dn_b) / s


@numba.njit(cache=True)
def _ndtr(x: float) -> float:
    return 0.5 * math.erfc(-x / _SQRT2)


@numba.njit(cache=True)
def sampler_constants(mu: np.ndarray, sigma: np.ndarray, a: float, b: float, eps: float, out: np.ndarray) -> None:
    """Per-unit constants of the fused noise sampler (noise._SampleNoise), rows of out:

    0: 2·lower − 1, 1: 2·mass  (so 2γ − 1 = row0 + y·row1; distributions.inverse_cdf_constants),
    2: sign·√2 (z = row2 · erfinv(2γ − 1)),
    3, 4: P₀, P₁ with P₀ + y P₁ = √(2π)[(1 − y')φ(α) + y'φ(β)],
    5, 6: Q₀, Q₁ with Q₀ + y Q₁ = √(2π)[(1 − y')αφ(α) + y'βφ(β)], y' = y (sign +1) or 1 − y (sign −1),
    7: 1 if x = μ + σz can leave [a, b], else 0. Since γ is clamped to [eps, 1 − eps] only when its raw
       value lies outside, the clamped z still lies in [α, β] unless the whole interval sits beyond the
       eps quantile (mass-side CDF values both < eps or both > 1 − eps); then x is clamped to a bound
       and θ does not depend on (μ, σ) at all.
    """
    for i in range(mu.shape[0]):
        alpha = (a - mu[i]) / sigma[i]
        beta = (b - mu[i]) / sigma[i]
        if alpha > 0.0:
            lower = _ndtr(-beta)
            mass = _ndtr(-alpha) - lower
            sign, slope, offset = -1.0, -1.0, 1.0
        else:
            lower = _ndtr(alpha)
            mass = _ndtr(beta) - lower
            sign, slope, offset = 1.0, 1.0, 0.0
        phi_lo = math.exp(-0.5 * alpha * alpha)
        phi_hi = math.exp(-0.5 * beta * beta)
        a_phi_lo = alpha * phi_lo if phi_lo > 0.0 else 0.0
        b_phi_hi = beta * phi_hi if phi_hi > 0.0 else 0.0
        d_phi = phi_hi - phi_lo
        d_aphi = b_phi_hi - a_phi_lo
        out[0, i] = 2.0 * lower - 1.0
        out[1, i] = 2.0 * mass
        out[2, i] = sign * _SQRT2
        out[3, i] = phi_lo + offset * d_phi
        out[4, i] = slope * d_phi
        out[5, i] = a_phi_lo + offset * d_aphi
        out[6, i] = slope * d_aphi
        out[7, i] = 1.0 if (lower + mass < eps or lower > 1.0 - eps) else 0.0
