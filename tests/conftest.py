"""Shared grids and independent references for the numerical-core tests.

Three independent references are used by test_distributions.py, test_reduction.py and test_noise.py:

* ``mp_reference`` (150-digit mpmath evaluation of the textbook formulas: the paper's Eq. 8 and 10, the
  truncated log-normal's KL, E[θ], E[θ²] and SNR);
* :class:`TruncNormQuad` below: scipy.integrate.quad of the defining integrals of the truncated normal
  in log space x = log θ, written in the standardised variable so that narrow or far-away posteriors
  are still resolved (see its docstring);
* Monte-Carlo (in the individual tests).

Nothing here imports the library's maths: the quadrature reference uses only numpy, math and scipy.
"""

from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.integrate import IntegrationWarning, quad

sys.path.insert(0, str(Path(__file__).resolve().parent))

# ------------------------------------------------------------------------------------------------
# Parameter grids: mu far below a = -20 to far above b = 0; log sigma over the released code's clamp
# range [-20, 5] (`modules/layers.py`: `logsigmin`, `logsigmax`)
# ------------------------------------------------------------------------------------------------

GRID_MU = (-1000.0, -100.0, -40.0, -25.0, -20.0, -19.9, -15.0, -10.0, -5.0, -1.0, 0.0, 0.1, 3.0, 25.0,
           100.0, 1000.0)
GRID_LOG_SIGMA = (-20.0, -10.0, -5.0, -2.0, 0.0, 1.0, 2.0, 3.0, 5.0)


def grid_points(mus=GRID_MU, log_sigmas=GRID_LOG_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (mu, log_sigma) of the Cartesian grid, float64."""
    m, l = np.meshgrid(np.asarray(mus, dtype=np.float64), np.asarray(log_sigmas, dtype=np.float64), indexing="ij")
    return m.ravel(), l.ravel()


@pytest.fixture(scope="session")
def grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mu, log_sigma, sigma) over the 16 x 9 grid above (a = -20, b = 0)."""
    mu, log_sigma = grid_points()
    return mu, log_sigma, np.exp(log_sigma)


@pytest.fixture(scope="session")
def dense_grid() -> tuple[np.ndarray, np.ndarray]:
    """41 x 26 grid: mu in [-1000, 1000], log sigma in [-20, 5] (flattened)."""
    return grid_points(np.linspace(-1000.0, 1000.0, 41), np.linspace(-20.0, 5.0, 26))


# ------------------------------------------------------------------------------------------------
# Comparison helper with informative failure messages
# ------------------------------------------------------------------------------------------------

def relative_errors(lib, ref, floor: float = 0.0) -> np.ndarray:
    """|lib - ref| / max(|ref|, floor) elementwise; ref may hold mpmath numbers (compared exactly)."""
    import mpmath as mp

    lib = np.asarray(lib, dtype=np.float64).ravel()
    out = np.empty(lib.shape[0])
    for i, (v, r) in enumerate(zip(lib, np.asarray(ref, dtype=object).ravel())):
        if not math.isfinite(v):
            out[i] = math.inf
            continue
        r = mp.mpf(r)
        den = max(abs(r), mp.mpf(floor))
        out[i] = 0.0 if den == 0 and v == 0 else float(abs(mp.mpf(float(v)) - r) / den) if den != 0 else math.inf
    return out


def assert_close_rel(lib, ref, rtol: float, *, floor: float = 0.0, labels=None, what: str = "value") -> None:
    """Assert |lib - ref| <= rtol * max(|ref|, floor) everywhere, listing the worst offenders."""
    err = relative_errors(lib, ref, floor)
    bad = np.flatnonzero(~(err <= rtol))
    if bad.size:
        lib_flat = np.asarray(lib, dtype=np.float64).ravel()
        ref_flat = np.asarray(ref, dtype=object).ravel()
        order = bad[np.argsort(-np.nan_to_num(err[bad], nan=np.inf, posinf=np.inf))][:12]
        lines = [
            f"  {labels[i] if labels is not None else i}: lib={lib_flat[i]!r} ref={float(ref_flat[i])!r} rel.err={err[i]:.3g}"
            for i in order
        ]
        raise AssertionError(
            f"{what}: {bad.size} of {err.size} points exceed rel. tolerance {rtol:g} (floor {floor:g}):\n" + "\n".join(lines)
        )


def labels_of(**columns) -> list[str]:
    keys = list(columns)
    n = len(next(iter(columns.values())))
    return [", ".join(f"{k}={float(columns[k][i]):g}" for k in keys) for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Numerical-integration reference (scipy.integrate.quad)
# ------------------------------------------------------------------------------------------------

_EPSREL = 1e-12
_WINDOW = 100.0  # integrate where the log integrand is within 100 of its maximum (tail < e^-100)


def _window(slope0: float, curv: float, width: float) -> tuple[float, float, float]:
    """For the concave log integrand L(d) = slope0*d - curv*d^2/2 on [0, width]: the maximiser d*,
    the point beyond d* where L drops by _WINDOW (clipped to width) and a local length scale."""
    d_star = min(max(slope0 / curv, 0.0), width)
    l_star = slope0 * d_star - 0.5 * curv * d_star * d_star
    # solve curv/2 d^2 - slope0 d + (l_star - W) = 0 for the larger root, without cancellation
    disc = slope0 * slope0 - 2.0 * curv * (l_star - _WINDOW)
    root = (slope0 + math.sqrt(disc)) / curv if slope0 >= 0 else 2.0 * (_WINDOW - l_star) / (math.sqrt(disc) - slope0)
    cut = min(width, root)
    slope_at = slope0 - curv * d_star
    scale = min(1.0 / math.sqrt(curv), 1.0 / abs(slope_at)) if slope_at != 0 else 1.0 / math.sqrt(curv)
    return d_star, cut, scale


def _quad_window(f, slope0: float, curv: float, width: float) -> float:
    """∫_0^width f(d) dd where f ~ exp(slope0 d - curv d^2/2) up to slowly varying factors."""
    if width <= 0:
        return 0.0
    d_star, cut, scale = _window(slope0, curv, width)
    pts = {d_star + sgn * scale * k for sgn in (-1, 1) for k in (0.0, 0.1, 0.3, 1, 3, 10, 30, 100)}
    pts = sorted(p for p in pts if 0.0 < p < cut)
    with warnings.catch_warnings():
        # asking for 1e-12 often triggers "roundoff error" notes at the ~1e-15 level; the values are
        # validated against 150-digit mpmath in the tests (agreement ~1e-12 or better)
        warnings.simplefilter("ignore", IntegrationWarning)
        val, _ = quad(f, 0.0, cut, points=pts or None, epsabs=0.0, epsrel=_EPSREL, limit=400)
    return val


def _logsumexp(xs) -> float:
    xs = [x for x in xs if x != -math.inf]
    if not xs:
        return -math.inf
    top = max(xs)
    return top + math.log(sum(math.exp(x - top) for x in xs))


class TruncNormQuad:
    """Integrals over q(x) = N(x | mu, sigma^2) truncated to [a, b] (x = log θ), by scipy quad.

    With x0 the point of [a, b] nearest to mu and m = |x0 - mu| / sigma, write x = x0 + s sigma d
    (d >= 0, s = +1 above x0, -1 below; when a < mu < b there are two such pieces). Then
    exp(-(x - mu)^2 / (2 sigma^2)) = exp(-m^2/2) w(d) with w(d) = exp(-m d - d^2/2), and every
    quantity is a ratio of integrals of w times a moderate function, so nothing underflows even for
    mu = 1000, sigma = e^-20 (m ~ 5e11: w decays on the scale 1/m, which the integration window and
    breakpoints resolve). All results come from quad of these integrals, not from closed forms:

        log Z    = -m^2/2 - log sqrt(2 pi) + log I,     I = sum over pieces of ∫ w
        KL       = log(b - a) - log sigma - log I - m E[d] - E[d^2]/2      (= -H[q] + log(b - a))
        E[θ]     = e^{x0} E[exp(s sigma d)]
        Var θ    = e^{2 x0} Var[expm1(s sigma d)]
    """

    def __init__(self, mu: float, sigma: float, a: float = -20.0, b: float = 0.0) -> None:
        self.mu, self.sigma, self.a, self.b = float(mu), float(sigma), float(a), float(b)
        if mu <= a:
            self.x0, self.pieces = a, [(1.0, (b - a) / sigma)]
        elif mu >= b:
            self.x0, self.pieces = b, [(-1.0, (b - a) / sigma)]
        else:
            self.x0, self.pieces = mu, [(1.0, (b - mu) / sigma), (-1.0, (mu - a) / sigma)]
        self.m = abs(self.x0 - mu) / sigma
        self._cache: dict[str, float] = {}

    # --- building blocks ------------------------------------------------------------------------
    def _sum(self, make_f, growth) -> float:
        """Σ_pieces ∫_0^W w(d) f_s(d) dd, f_s = make_f(s); growth(s) is f's exponential rate."""
        m = self.m
        total = 0.0
        for s, width in self.pieces:
            f = make_f(s)
            total += _quad_window(lambda d, f=f: math.exp(-m * d - 0.5 * d * d) * f(d), growth(s) - m, 1.0, width)
        return total

    def _moment(self, key, make_f, growth=lambda s: 0.0) -> float:
        if key not in self._cache:
            self._cache[key] = self._sum(make_f, growth) / self.mass_integral()
        return self._cache[key]

    def mass_integral(self) -> float:
        if "I" not in self._cache:
            self._cache["I"] = self._sum(lambda s: (lambda d: 1.0), lambda s: 0.0)
        return self._cache["I"]

    def _log_integral_between(self, lo: float, hi: float, extra_log=None) -> float:
        """log ∫_{lo <= x <= hi} w(d) dd over all pieces (lo, hi in x-space, inside [a, b])."""
        m, sigma = self.m, self.sigma
        logs = []
        for s, width in self.pieces:
            d_a, d_b = sorted((s * (lo - self.x0) / sigma, s * (hi - self.x0) / sigma))
            d1, d2 = max(d_a, 0.0), min(d_b, width)
            if d2 <= d1:
                continue
            # shift to d1 so that w(d1) = exp(-m d1 - d1^2/2) is taken out analytically
            m1 = m + d1
            val = _quad_window(lambda e: math.exp(-m1 * e - 0.5 * e * e), -m1, 1.0, d2 - d1)
            logs.append(-m * d1 - 0.5 * d1 * d1 + math.log(val))
        return _logsumexp(logs)

    # --- public quantities ------------------------------------------------------------------------
    def log_z(self) -> float:
        return -0.5 * self.m * self.m - 0.5 * math.log(2.0 * math.pi) + math.log(self.mass_integral())

    def kl(self) -> float:
        e_d = self._moment("d", lambda s: (lambda d: d))
        e_d2 = self._moment("d2", lambda s: (lambda d: d * d))
        return (math.log(self.b - self.a) - math.log(self.sigma) - math.log(self.mass_integral())
                - self.m * e_d - 0.5 * e_d2)

    def _e_rel(self) -> float:
        sg = self.sigma
        return self._moment("e", lambda s: (lambda d: math.exp(s * sg * d)), lambda s: sg if s > 0 else 0.0)

    def _e_expm1(self) -> float:
        sg = self.sigma
        return self._moment("em1", lambda s: (lambda d: math.expm1(s * sg * d)), lambda s: sg if s > 0 else 0.0)

    def _var_rel(self) -> float:
        sg, c = self.sigma, self._e_expm1()
        return self._moment("v", lambda s: (lambda d: (math.expm1(s * sg * d) - c) ** 2),
                            lambda s: 2.0 * sg if s > 0 else 0.0)

    def expected_theta(self) -> float:
        return math.exp(self.x0) * self._e_rel()

    def log_expected_theta(self) -> float:
        # log1p of E[expm1(.)] keeps relative accuracy when E[θ] = e^{x0}(1 - 1e-12)
        return self.x0 + math.log1p(self._e_expm1())

    def var_theta(self) -> float:
        return math.exp(2.0 * self.x0) * self._var_rel()

    def snr(self) -> float:
        return self._e_rel() / math.sqrt(self._var_rel())

    def mass(self, lo: float, hi: float) -> float:
        """q(lo <= x <= hi) as a log: log of the posterior mass of [lo, hi] ⊂ [a, b]."""
        return self._log_integral_between(lo, hi) - math.log(self.mass_integral())

    def delta_f_u(self, lo: float, hi: float) -> float:
        """log ∫ q p̃/p dx for p̃ = U[lo, hi] in log space: log((b-a)/(hi-lo)) + log q([lo, hi])."""
        return math.log(self.b - self.a) - math.log(hi - lo) + self.mass(lo, hi)

    def delta_f_n(self, prior_mu: float, prior_sigma: float, log_z_prior: float | None = None) -> float:
        """log ∫_a^b q(x) p̃(x) / p(x) dx with p̃ = N(prior_mu, prior_sigma^2) truncated to [a, b] and
        p = U[a, b]: log(b - a) + log ∫ q p̃ dx, the integral done numerically in d (pieces as above).

        The log integrand -m d - d^2/2 - (x(d) - prior_mu)^2 / (2 prior_sigma^2) is evaluated directly
        in float64 and its maximum subtracted; use only where that maximum is moderate (|L*| < 1e7).
        """
        sp = float(prior_sigma)
        if log_z_prior is None:
            log_z_prior = TruncNormQuad(prior_mu, sp, self.a, self.b).log_z()
        m, sigma, x0 = self.m, self.sigma, self.x0
        curv = 1.0 + (sigma / sp) ** 2
        logs = []
        for s, width in self.pieces:
            slope0 = -m - s * sigma * (x0 - prior_mu) / sp**2

            def log_f(d, s=s):
                x = x0 + s * sigma * d
                return -m * d - 0.5 * d * d - 0.5 * ((x - prior_mu) / sp) ** 2

            d_star, _, _ = _window(slope0, curv, width)
            l_star = log_f(d_star)
            if abs(l_star) > 1e7:
                raise ValueError("delta_f_n quadrature needs a moderate log integrand")
            val = _quad_window(lambda d: math.exp(log_f(d) - l_star), slope0, curv, width)
            logs.append(l_star + math.log(val) if val > 0 else -math.inf)
        log_int = _logsumexp(logs) - math.log(self.mass_integral())  # ∫ q(x) exp(-(x-μp)²/2σp²) dx
        return math.log(self.b - self.a) + log_int - math.log(sp) - 0.5 * math.log(2.0 * math.pi) - log_z_prior


@pytest.fixture(scope="session")
def quad_ref():
    return TruncNormQuad
