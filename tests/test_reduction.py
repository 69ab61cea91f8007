"""Tests of bmrs.core.reduction: ΔF for BMRS_N (paper Eq. 8, Appendix A.1) and BMRS_U (paper Eq. 10, Appendix A.2).

ΔF = log ∫ q(x) p̃(x)/p(x) dx is checked against scipy quadrature of that integral (conftest.
TruncNormQuad) and against the paper's Eq. 8 / Eq. 10 evaluated verbatim at 150 digits
(mp_reference), on the grid of conftest.py; plus three check values computed independently by quadrature (notebook 01, section 3.1), the 2π offset of the released
code, the Savage–Dickey limit, the p1 threshold table and the BMRS_U pruning rule.
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import optimize, stats
from scipy.special import ndtr

import mp_reference as R
from bmrs.core import reduction as Rd
from conftest import TruncNormQuad, assert_close_rel, grid_points, labels_of

RTOL = 1e-6
LN2 = math.log(2.0)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _grid_tensors():
    mu, log_sigma = grid_points()
    return mu, log_sigma, torch.tensor(mu, dtype=torch.float64), torch.exp(torch.tensor(log_sigma, dtype=torch.float64))


def _labels(**extra):
    mu, log_sigma = grid_points()
    return labels_of(mu=mu, log_sigma=log_sigma, **{k: [v] * mu.size for k, v in extra.items()})


# --------------------------------------------------------------------------------------------------
# BMRS_N: ΔF vs quadrature (moderate reduced-prior widths) and vs Eq. 8 at 150 digits
# --------------------------------------------------------------------------------------------------

# (a, b, prior_mu, prior_sigma)
N_CASES_MODERATE = [(-20.0, 0.0, -20.0, 0.5), (-20.0, 0.0, -19.0, 0.3), (-20.0, 0.0, -20.0, 0.1),
                    (-20.0, 0.0, -15.0, 0.2), (-12.0, 1.0, -12.0, 0.5), (-10.0, 0.0, -9.0, 0.3)]
N_CASES_DIRAC = [(-20.0, 0.0, -20.0, 1e-6), (-12.0, 1.0, -12.0, 1e-6), (-10.0, 0.0, -10.0, 1e-6)]


def _case_id(case):
    a, b, pm, ps = case
    return f"a{a:g}-b{b:g}-prior_mu{pm:g}-prior_sigma{ps:g}"


@functools.lru_cache(maxsize=None)
def _delta_f_n_lib(a, b, prior_mu, prior_sigma, include_2pi=True):
    _, _, mu, sigma = _grid_tensors()
    out = Rd.delta_f_bmrs_n(mu, sigma, a=a, b=b, prior_mu=prior_mu, prior_sigma=prior_sigma, include_2pi=include_2pi)
    assert out.dtype == torch.float64 and out.shape == mu.shape and not out.requires_grad
    return out.numpy()


@pytest.mark.parametrize("case", N_CASES_MODERATE + N_CASES_DIRAC[:1], ids=_case_id)
def test_delta_f_n_matches_quadrature(case):
    """Numerical log ∫ q p̃/p over the grid points where the integrand's log is moderate (|L*| < 1e7,
    so float64 can evaluate it directly); the rest is covered by the mpmath test below."""
    a, b, prior_mu, prior_sigma = case
    mu, log_sigma, _, _ = _grid_tensors()
    lib = _delta_f_n_lib(a, b, prior_mu, prior_sigma)
    log_z_prior = TruncNormQuad(prior_mu, prior_sigma, a, b).log_z()
    keep, ref = [], []
    for i, (m, l) in enumerate(zip(mu, log_sigma)):
        try:
            ref.append(TruncNormQuad(m, math.exp(l), a, b).delta_f_n(prior_mu, prior_sigma, log_z_prior))
        except ValueError:
            continue
        keep.append(i)
    assert len(keep) >= 80, f"only {len(keep)} grid points resolvable by quadrature"
    labels = _labels(a=a, b=b, prior_mu=prior_mu, prior_sigma=prior_sigma)
    assert_close_rel(lib[keep], ref, RTOL, labels=[labels[i] for i in keep], what="delta_f_bmrs_n vs quad")


@pytest.mark.parametrize("case", N_CASES_MODERATE + N_CASES_DIRAC, ids=_case_id)
def test_delta_f_n_matches_eq8_at_150_digits(case):
    """Paper Eq. 8 verbatim (naive form) at 150 digits vs the library's cancellation-free form, on the
    whole grid; with prior_sigma = 1e-6 this is the paper's setting (σ̃_p = 1e-6: released code modules/layers.py, pruning_eps)."""
    a, b, prior_mu, prior_sigma = case
    mu, log_sigma, _, _ = _grid_tensors()
    lib = _delta_f_n_lib(a, b, prior_mu, prior_sigma)
    ref = [R.delta_f_n(m, mp.exp(l), a, b, prior_mu=prior_mu, prior_sigma=prior_sigma) for m, l in zip(mu, log_sigma)]
    assert_close_rel(lib, ref, RTOL, floor=1e-300, labels=_labels(a=a, b=b, prior_mu=prior_mu, prior_sigma=prior_sigma),
                     what="delta_f_bmrs_n vs Eq. 8 (mpmath)")


def _prior_outside_cases():
    for prior_mu in (-21.0, -25.0, 1.0, 3.0):
        yield pytest.param(prior_mu, 0.3, id=f"prior_mu{prior_mu:g}-prior_sigma0.3")
        yield pytest.param(prior_mu, 1e-6, id=f"prior_mu{prior_mu:g}-prior_sigma1e-6")


@pytest.mark.parametrize("prior_mu,prior_sigma", list(_prior_outside_cases()))
def test_delta_f_n_prior_mode_outside_support_matches_eq8(prior_mu, prior_sigma):
    """A reduced prior whose (untruncated) mode lies outside [a, b] is still a valid truncated normal
    on [a, b] (prior_mu is only required to be finite); for small prior_sigma it concentrates at the
    nearest bound and ΔF_N tends to the Savage–Dickey value there (notebook 01, sections 3.4-3.5)."""
    mu, log_sigma, _, _ = _grid_tensors()
    lib = _delta_f_n_lib(-20.0, 0.0, prior_mu, prior_sigma)
    ref = [R.delta_f_n(m, mp.exp(l), -20.0, 0.0, prior_mu=prior_mu, prior_sigma=prior_sigma)
           for m, l in zip(mu, log_sigma)]
    assert_close_rel(lib, ref, RTOL, floor=1e-300, labels=_labels(prior_mu=prior_mu, prior_sigma=prior_sigma),
                     what="delta_f_bmrs_n (prior mode outside [a, b]) vs Eq. 8 (mpmath)")


def test_delta_f_n_default_prior_is_the_papers():
    """prior_mu=None means the lower bound a and prior_sigma defaults to 1e-6 (paper Eq. 8 with μ̃_p = log a; released code modules/layers.py)."""
    _, _, mu, sigma = _grid_tensors()
    default = Rd.delta_f_bmrs_n(mu, sigma, a=-12.0, b=1.0)
    explicit = Rd.delta_f_bmrs_n(mu, sigma, a=-12.0, b=1.0, prior_mu=-12.0, prior_sigma=1e-6)
    assert torch.equal(default, explicit)


@pytest.mark.parametrize(
    "mu,sigma,prior_mu,prior_sigma,numeric,code",
    [(-15.0, 3.0, -20.0, 0.5, -0.14240, 0.77654),
     (-18.0, 2.0, -20.0, 0.1, 1.09545, 2.01439),
     (-10.0, 5.0, -19.0, 0.3, -1.10192, -0.18298)],
)
def test_spec_check_table(mu, sigma, prior_mu, prior_sigma, numeric, code):
    """Three points computed independently by quadrature (notebook 01, section 3.1): numeric integration = paper Eq. 8 = library (include_2pi=True); the released
    code's variant (include_2pi=False) is the 'code' column (= paper + ½ log 2π ≈ +0.919)."""
    args = (torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64))
    paper = Rd.delta_f_bmrs_n(*args, prior_mu=prior_mu, prior_sigma=prior_sigma).item()
    code_variant = Rd.delta_f_bmrs_n(*args, prior_mu=prior_mu, prior_sigma=prior_sigma, include_2pi=False).item()
    quad_value = TruncNormQuad(mu, sigma).delta_f_n(prior_mu, prior_sigma)
    eq8 = float(R.delta_f_n(mu, sigma, prior_mu=prior_mu, prior_sigma=prior_sigma))
    assert round(quad_value, 5) == numeric
    assert round(paper, 5) == numeric
    assert round(eq8, 5) == numeric
    assert round(code_variant, 5) == code
    assert paper == pytest.approx(quad_value, rel=1e-9, abs=0)


def _naive_eq8(mu, sigma, a=-20.0, b=0.0, prior_mu=-20.0, prior_sigma=1e-6):
    """Paper Eq. 8 evaluated literally in float64 (what the released code does)."""
    s2 = 1.0 / (1.0 / sigma**2 + 1.0 / prior_sigma**2)
    mt = s2 * (mu / sigma**2 + prior_mu / prior_sigma**2)
    st = math.sqrt(s2)

    def z(m, s):
        return ndtr((b - m) / s) - ndtr((a - m) / s)

    return (math.log(z(mt, st) * (b - a) / (z(prior_mu, prior_sigma) * z(mu, sigma)))
            + 0.5 * math.log(s2 / (2 * math.pi * prior_sigma**2 * sigma**2))
            - 0.5 * (mu**2 / sigma**2 + prior_mu**2 / prior_sigma**2 - mt**2 / s2))


def test_naive_float64_eq8_is_off_but_library_is_not():
    """Notebook 01, section 3.3: with prior_sigma = 1e-6 the naive float64 Eq. 8 carries a cancellation error of ~0.03
    at (mu, sigma) = (-10, 5): naive -1.5173, exact -1.4861."""
    exact = float(R.delta_f_n(-10, 5))
    naive = _naive_eq8(-10.0, 5.0)
    lib = Rd.delta_f_bmrs_n(torch.tensor([-10.0], dtype=torch.float64), torch.tensor([5.0], dtype=torch.float64)).item()
    assert round(exact, 4) == -1.4861 and round(naive, 4) == -1.5173
    assert 0.02 < abs(naive - exact) < 0.05
    assert abs(lib - exact) < 1e-12
    # and across moderate parameters the naive form is visibly off while the library is exact
    pts = [(-15.0, 3.0), (-5.0, 1.0), (-19.0, 2.0), (-2.0, 0.7)]
    naive_err = [abs(_naive_eq8(m, s) - float(R.delta_f_n(m, s))) for m, s in pts]
    lib_vals = Rd.delta_f_bmrs_n(torch.tensor([p[0] for p in pts], dtype=torch.float64),
                                 torch.tensor([p[1] for p in pts], dtype=torch.float64)).numpy()
    lib_err = [abs(v - float(R.delta_f_n(m, s))) for v, (m, s) in zip(lib_vals, pts)]
    assert max(naive_err) > 1e-3 and max(lib_err) < 1e-12


# --------------------------------------------------------------------------------------------------
# 4. The 2π offset and the Savage–Dickey limit
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prior_mu,prior_sigma", [(None, 1e-6), (-19.0, 0.3), (-20.0, 0.5)])
def test_code_variant_adds_half_log_2pi_everywhere(dense_grid, prior_mu, prior_sigma):
    """ΔF_code − ΔF_paper = ½ log 2π (notebook 01, sections 3.4-3.5) on the dense grid, to 1e-12 plus the float64
    resolution of the values themselves (|ΔF| reaches 1e23 there, where one ulp is ~1e7)."""
    mu, log_sigma = dense_grid
    mu_t, sigma_t = torch.tensor(mu, dtype=torch.float64), torch.exp(torch.tensor(log_sigma, dtype=torch.float64))
    kw = dict(prior_mu=prior_mu, prior_sigma=prior_sigma)
    paper = Rd.delta_f_bmrs_n(mu_t, sigma_t, include_2pi=True, **kw).numpy()
    code = Rd.delta_f_bmrs_n(mu_t, sigma_t, include_2pi=False, **kw).numpy()
    tol = 1e-12 + 4 * np.spacing(np.maximum(np.abs(paper), np.abs(code)))
    off = np.abs((code - paper) - HALF_LOG_2PI)
    bad = np.flatnonzero(off > tol)
    assert bad.size == 0, [(mu[i], log_sigma[i], paper[i], code[i]) for i in bad[:5]]
    assert np.sum(np.abs(paper) < 1e3) > 300  # the exact-to-1e-12 regime is well represented


_SD_MUS = [-25.0, -19.9, -15.0, -10.0, -5.0, -1.0, 0.0, 0.1, 3.0]
_SD_SIGMAS = [0.5, 1.0, 2.0, 3.0, math.exp(2.0), math.exp(5.0)]


def test_savage_dickey_limit():
    """σ̃_p → 0 with μ̃_p = a: ΔF_N → log[(b − a) N(a | μ, σ²) / Z_q] (notebook 01, sections 3.4-3.5), the log ratio of the
    posterior's log-space density at a to the prior's 1/(b − a). At prior_sigma = 1e-9 the library is
    within 1e-6 of the limit and the distance shrinks ~linearly (1000x from 1e-6 to 1e-9)."""
    m, s = np.meshgrid(_SD_MUS, _SD_SIGMAS, indexing="ij")
    m, s = m.ravel(), s.ravel()
    a, b = -20.0, 0.0
    limit = np.array([float(mp.log((b - a) * mp.npdf(a, mu, sg) / (mp.ncdf((b - mu) / sg) - mp.ncdf((a - mu) / sg))))
                      for mu, sg in zip(m, s)])
    # the same limit from scipy, as a cross-check of the reference
    z_scipy = ndtr((b - m) / s) - ndtr((a - m) / s)
    ok = z_scipy > 1e-200
    assert ok.sum() >= 45
    np.testing.assert_allclose(limit[ok], math.log(b - a) + stats.norm.logpdf(a, m[ok], s[ok]) - np.log(z_scipy[ok]),
                               rtol=1e-10, atol=1e-12)
    mu_t, sigma_t = torch.tensor(m, dtype=torch.float64), torch.tensor(s, dtype=torch.float64)
    near = Rd.delta_f_bmrs_n(mu_t, sigma_t, prior_sigma=1e-9).numpy()
    far = Rd.delta_f_bmrs_n(mu_t, sigma_t, prior_sigma=1e-6).numpy()
    err_near, err_far = np.abs(near - limit), np.abs(far - limit)
    assert err_near.max() <= 1e-6, (err_near.max(), m[err_near.argmax()], s[err_near.argmax()])
    resolved = err_far > 1e-9
    assert resolved.sum() >= 10
    assert np.all(err_near[resolved] <= err_far[resolved] / 300.0)
    # pruning rule in the limit: ΔF_N >= 0 iff the posterior's log-density at a is >= 1/(b - a)
    assert np.array_equal(near >= 0, limit >= 0)


# --------------------------------------------------------------------------------------------------
# BMRS_U: ΔF vs quadrature and Eq. 10, thresholds and the pruning rule
# --------------------------------------------------------------------------------------------------

# (a, b, p1, p2)
U_CASES = [(-20.0, 0.0, 8, 23), (-20.0, 0.0, 4, 23), (-20.0, 0.0, 16, 23), (-12.0, 1.0, 2, 14), (-10.0, 0.0, 1, 12)]


@functools.lru_cache(maxsize=None)
def _delta_f_u_lib(a, b, p1, p2):
    _, _, mu, sigma = _grid_tensors()
    out = Rd.delta_f_bmrs_u(mu, sigma, a=a, b=b, p1=p1, p2=p2)
    assert out.dtype == torch.float64 and out.shape == mu.shape and not out.requires_grad
    return out.numpy()


@pytest.mark.parametrize("a,b,p1,p2", U_CASES)
def test_delta_f_u_matches_quadrature(a, b, p1, p2):
    mu, log_sigma, _, _ = _grid_tensors()
    lo, hi = -p2 * LN2, -p1 * LN2
    ref = [TruncNormQuad(m, math.exp(l), a, b).delta_f_u(lo, hi) for m, l in zip(mu, log_sigma)]
    assert_close_rel(_delta_f_u_lib(a, b, p1, p2), ref, RTOL, labels=_labels(a=a, b=b, p1=p1),
                     what="delta_f_bmrs_u vs quad")


@pytest.mark.parametrize("a,b,p1,p2", U_CASES)
def test_delta_f_u_matches_eq10_at_150_digits(a, b, p1, p2):
    mu, log_sigma, _, _ = _grid_tensors()
    ref = [R.delta_f_u(m, mp.exp(l), a, b, p1, p2) for m, l in zip(mu, log_sigma)]
    assert_close_rel(_delta_f_u_lib(a, b, p1, p2), ref, RTOL, floor=1e-300, labels=_labels(a=a, b=b, p1=p1),
                     what="delta_f_bmrs_u vs Eq. 10 (mpmath)")


SPEC_THRESHOLDS = {16: 0.2426, 12: 0.3812, 11: 0.4159, 8: 0.5199, 6: 0.5892, 4: 0.6585, 2: 0.7278, 1: 0.7625}


@pytest.mark.parametrize("p1,expected", sorted(SPEC_THRESHOLDS.items()))
def test_bmrs_u_threshold_table(p1, expected):
    thr = Rd.bmrs_u_threshold(p1)
    assert round(thr, 4) == expected
    assert thr == pytest.approx((23 - p1) * LN2 / 20.0, rel=1e-14, abs=0)


def test_bmrs_u_threshold_other_bounds():
    assert Rd.bmrs_u_threshold(2, 14, a=-12.0, b=1.0) == pytest.approx(12 * LN2 / 13.0, rel=1e-14, abs=0)
    assert Rd.bmrs_u_threshold(0, 28.8, a=-20.0, b=0.0) == pytest.approx(28.8 * LN2 / 20.0, rel=1e-14, abs=0)


def _truncnorm_mass(mu, sigma, lo, hi, a=-20.0, b=0.0):
    """Posterior mass of [lo, hi] from scipy.stats.truncnorm (independent of the library)."""
    dist = stats.truncnorm((a - mu) / sigma, (b - mu) / sigma, loc=mu, scale=sigma)
    return dist.cdf(hi) - dist.cdf(lo)


@pytest.mark.parametrize("p1", sorted(SPEC_THRESHOLDS))
def test_delta_f_u_nonnegative_iff_mass_reaches_threshold(p1):
    """Paper Eq. 11/15 (notebook 01, section 4): ΔF_U >= 0 exactly when q(2^-23 <= θ <= 2^-p1) >= log(b'/a')/log(b/a), with the mass
    from scipy.stats.truncnorm, on random moderate parameters and at the decision boundary itself."""
    rng = np.random.default_rng(p1)
    mu = rng.uniform(-26.0, 6.0, 400)
    sigma = np.exp(rng.uniform(-3.0, 3.0, 400))
    lo, hi = -23 * LN2, -p1 * LN2
    thr = Rd.bmrs_u_threshold(p1)
    mass = _truncnorm_mass(mu, sigma, lo, hi)
    df = Rd.delta_f_bmrs_u(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), p1=p1).numpy()
    decided = np.abs(mass - thr) > 1e-9
    assert np.array_equal((df >= 0)[decided], (mass >= thr)[decided])
    assert 20 <= int((df >= 0).sum()) <= 380  # both outcomes occur
    # exp ΔF_U = mass / threshold (Eq. 10) where the mass is not negligible
    ok = mass > 1e-8
    np.testing.assert_allclose(df[ok], np.log(mass[ok] / thr), rtol=0, atol=1e-8)

    # boundary: solve mass(mu) = threshold for a few sigmas; ΔF_U is ~0 there and changes sign with it
    roots = []
    for sg in (0.5, 1.0, 2.0, 4.0):
        grid_mu = np.linspace(-30.0, 8.0, 400)
        g = _truncnorm_mass(grid_mu, sg, lo, hi) - thr
        for j in np.flatnonzero(np.sign(g[:-1]) != np.sign(g[1:])):
            roots.append((optimize.brentq(lambda m: _truncnorm_mass(m, sg, lo, hi) - thr, grid_mu[j], grid_mu[j + 1],
                                          xtol=1e-14), sg))
    if p1 <= 11:  # for p1 >= 12 the threshold is low enough that some sigma straddle it; not needed
        assert len(roots) >= 4
    for root, sg in roots:
        vals = Rd.delta_f_bmrs_u(torch.tensor([root - 1e-4, root, root + 1e-4], dtype=torch.float64),
                                 torch.tensor(sg, dtype=torch.float64), p1=p1).numpy()
        masses = _truncnorm_mass(np.array([root - 1e-4, root + 1e-4]), sg, lo, hi)
        assert abs(vals[1]) < 1e-9
        assert np.array_equal(vals[[0, 2]] >= 0, masses >= thr)
        assert vals[0] * vals[2] < 0


# --------------------------------------------------------------------------------------------------
# 5. Finiteness, dtypes, shapes
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_delta_f_finite_on_dense_grid(dense_grid, dtype):
    mu, log_sigma = dense_grid
    mu_t, sigma_t = torch.tensor(mu, dtype=dtype), torch.exp(torch.tensor(log_sigma, dtype=dtype))
    outs = {
        "N": Rd.delta_f_bmrs_n(mu_t, sigma_t),
        "N code": Rd.delta_f_bmrs_n(mu_t, sigma_t, include_2pi=False),
        "N 0.5": Rd.delta_f_bmrs_n(mu_t, sigma_t, prior_sigma=0.5),
        "N 1e-9": Rd.delta_f_bmrs_n(mu_t, sigma_t, prior_sigma=1e-9),
        "U8": Rd.delta_f_bmrs_u(mu_t, sigma_t),
        "U4": Rd.delta_f_bmrs_u(mu_t, sigma_t, p1=4),
        "U16": Rd.delta_f_bmrs_u(mu_t, sigma_t, p1=16),
    }
    for name, v in outs.items():
        assert v.dtype == torch.float64, name  # ΔF is always float64
        bad = ~torch.isfinite(v)
        assert not bool(bad.any()), (name, mu[bad.numpy()][:3], log_sigma[bad.numpy()][:3])


def test_delta_f_float32_input_equals_float64_of_same_values_and_keeps_shape():
    mu = torch.tensor([[-19.0, -3.0, 2.0], [-40.0, -10.0, 0.0]], dtype=torch.float32)
    sigma = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float32)
    for fn in (Rd.delta_f_bmrs_n, Rd.delta_f_bmrs_u):
        v32, v64 = fn(mu, sigma), fn(mu.double(), sigma.double())
        assert v32.shape == (2, 3) and torch.equal(v32, v64)


def test_delta_f_ignores_autograd_and_works_on_parameters():
    mu = torch.nn.Parameter(torch.tensor([-5.0, -19.0]))
    sigma = torch.exp(torch.nn.Parameter(torch.tensor([0.0, -1.0])))
    for fn in (Rd.delta_f_bmrs_n, Rd.delta_f_bmrs_u):
        v = fn(mu, sigma)
        assert not v.requires_grad and torch.isfinite(v).all()


# --------------------------------------------------------------------------------------------------
# 9. Input validation
# --------------------------------------------------------------------------------------------------

DF_FUNCS = {"delta_f_bmrs_n": Rd.delta_f_bmrs_n, "delta_f_bmrs_u": Rd.delta_f_bmrs_u}


@pytest.mark.parametrize("name", list(DF_FUNCS))
def test_delta_f_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match=r"mu has shape \(3,\) and sigma has shape \(4,\).*broadcastable"):
        DF_FUNCS[name](torch.zeros(3), torch.ones(4))


@pytest.mark.parametrize("name", list(DF_FUNCS))
@pytest.mark.parametrize("a,b,pattern", [(0.0, 0.0, r"a < b"), (1.0, -20.0, r"a < b"),
                                         (math.nan, 0.0, r"must be finite"), (-math.inf, 0.0, r"must be finite"),
                                         (-20.0, math.inf, r"must be finite")])
def test_delta_f_bad_bounds_raise(name, a, b, pattern):
    with pytest.raises(ValueError, match=pattern + r".*got a="):
        DF_FUNCS[name](torch.zeros(2), torch.ones(2), a=a, b=b)


@pytest.mark.parametrize("name", list(DF_FUNCS))
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_delta_f_bad_sigma_raises(name, bad):
    with pytest.raises(ValueError, match=rf"sigma must be positive and finite.*found sigma = {bad}"):
        DF_FUNCS[name](torch.zeros(2), torch.tensor([1.0, bad]))


@pytest.mark.parametrize("name", list(DF_FUNCS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_delta_f_non_finite_mu_raises(name, bad):
    with pytest.raises(ValueError, match=r"mu must be finite"):
        DF_FUNCS[name](torch.tensor([bad, 0.0]), torch.ones(2))


@pytest.mark.parametrize("kw", [dict(prior_sigma=0.0), dict(prior_sigma=-1e-6), dict(prior_sigma=math.nan),
                                dict(prior_sigma=math.inf), dict(prior_mu=math.nan), dict(prior_mu=-math.inf)])
def test_delta_f_n_bad_prior_raises(kw):
    with pytest.raises(ValueError, match=r"prior_mu must be finite and prior_sigma positive and finite; got"):
        Rd.delta_f_bmrs_n(torch.zeros(2), torch.ones(2), **kw)


P_ORDER = [(8, 8), (10, 8), (23, 23), (24, 23)]
P_OUTSIDE = [(8, 30), (-1, 23), (-3, 5)]  # 2^-30 < e^-20; 2^1 > e^0


def _u_callers():
    return {"delta_f_bmrs_u": lambda p1, p2: Rd.delta_f_bmrs_u(torch.zeros(2), torch.ones(2), p1=p1, p2=p2),
            "bmrs_u_threshold": lambda p1, p2: Rd.bmrs_u_threshold(p1, p2)}


@pytest.mark.parametrize("caller", list(_u_callers()))
@pytest.mark.parametrize("p1,p2", P_ORDER)
def test_p1_not_below_p2_raises(caller, p1, p2):
    with pytest.raises(ValueError, match=rf"p1 < p2.*e\.g\. p1=8, p2=23.*got p1={float(p1)}, p2={float(p2)}"):
        _u_callers()[caller](p1, p2)


@pytest.mark.parametrize("caller", list(_u_callers()))
@pytest.mark.parametrize("p1,p2", P_OUTSIDE)
def test_reduced_support_outside_bounds_raises(caller, p1, p2):
    with pytest.raises(ValueError, match=r"reduced support .* must lie inside \[a, b\] = \[-20.0, 0.0\]; "
                                         r"choose 0 <= p1 < p2 <= 28\.85"):
        _u_callers()[caller](p1, p2)


@pytest.mark.parametrize("caller", list(_u_callers()))
@pytest.mark.parametrize("p1,p2", [(math.nan, 23), (8, math.inf), (-math.inf, 23)])
def test_non_finite_p_raises(caller, p1, p2):
    with pytest.raises(ValueError, match=r"p1 and p2 must be finite bit counts; got"):
        _u_callers()[caller](p1, p2)


def test_reduced_support_respects_custom_bounds():
    # p2 = 14 is inside a = -12 (2^-14 = e^-9.70) but p2 = 18 (e^-12.48) is not
    Rd.delta_f_bmrs_u(torch.zeros(1), torch.ones(1), a=-12.0, b=1.0, p1=2, p2=14)
    with pytest.raises(ValueError, match=r"must lie inside \[a, b\] = \[-12.0, 1.0\]"):
        Rd.delta_f_bmrs_u(torch.zeros(1), torch.ones(1), a=-12.0, b=1.0, p1=2, p2=18)


def test_the_parallel_delta_f_kernels_leave_torchs_thread_count_alone():
    """Numba's OpenMP layer would reset torch.set_num_threads on its first parallel launch."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); x = torch.randn(300, 300); x @ x\n"
            "from bmrs.core.reduction import delta_f_bmrs_n, delta_f_bmrs_u\n"
            "delta_f_bmrs_n(torch.zeros(5), torch.ones(5)); delta_f_bmrs_u(torch.zeros(5), torch.ones(5))\n"
            "print(torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"
