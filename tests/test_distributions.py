"""Tests of bmrs.core.distributions (and the special-function helpers beneath it).

Closed forms (the KL term of the paper's Eq. 2–3; E[θ], E[θ²] and the SNR of the truncated log-normal,
Neklyudov et al. 2017; notebook 01, section 5) are checked against two independent references on the
grid of conftest.py: scipy quadrature of the defining integrals (conftest.TruncNormQuad) and 150-digit
mpmath evaluation of the textbook formulas (mp_reference). The KL gradient (compiled kernel and torch
autograd path) is checked against mpmath numerical derivatives, the inverse-CDF sampler (released code
`modules/layers.py` with `modules/util.py`'s `Phi_inv`) against exact quantiles and Monte-Carlo, and
every public function for finiteness on a dense grid and for input validation.
"""

from __future__ import annotations

import functools
import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy import stats

import mp_reference as R
from bmrs.core import distributions as D
from bmrs.core import special as S
from conftest import TruncNormQuad, assert_close_rel, grid_points, labels_of, relative_errors

RTOL = 1e-6
# Bounds of the closed-form checks: the paper's (-20, 0) and a few others.
BOUNDS = [(-20.0, 0.0), (-12.0, 1.0), (-10.0, 0.0), (-5.0, -1.0)]

LIB = {
    "log_normalizer": D.log_normalizer,
    "kl_log_uniform": D.kl_log_uniform,
    "log_expected_theta": D.log_expected_theta,
    "expected_theta": D.expected_theta,
    "var_theta": D.var_theta,
    "snr": D.snr,
}
MP = {
    "log_normalizer": R.log_z_accurate,
    "kl_log_uniform": R.kl,
    "log_expected_theta": lambda m, s, a, b: mp.log(R.expected_theta(m, s, a, b)),
    "expected_theta": R.expected_theta,
    "var_theta": R.var_theta,
    "snr": R.snr,
}
QUAD = {
    "log_normalizer": TruncNormQuad.log_z,
    "kl_log_uniform": TruncNormQuad.kl,
    "log_expected_theta": TruncNormQuad.log_expected_theta,
    "expected_theta": TruncNormQuad.expected_theta,
    "var_theta": TruncNormQuad.var_theta,
    "snr": TruncNormQuad.snr,
}



def _cases():
    for a, b in BOUNDS:
        for name in LIB:
            yield pytest.param(name, a, b, id=f"{name}-a{a:g}-b{b:g}")


@functools.lru_cache(maxsize=None)
def _lib_table(name: str, a: float, b: float) -> np.ndarray:
    mu, log_sigma = grid_points()
    out = LIB[name](torch.tensor(mu, dtype=torch.float64), torch.tensor(np.exp(log_sigma)), a=a, b=b)
    assert out.dtype == torch.float64 and out.shape == (mu.size,)
    return out.numpy()


@functools.lru_cache(maxsize=None)
def _quad_objects(a: float, b: float) -> tuple:
    mu, log_sigma = grid_points()
    return tuple(TruncNormQuad(m, math.exp(l), a, b) for m, l in zip(mu, log_sigma))


def _labels(a, b):
    mu, log_sigma = grid_points()
    return labels_of(mu=mu, log_sigma=log_sigma, a=[a] * mu.size, b=[b] * mu.size)


# --------------------------------------------------------------------------------------------------
# 1. Closed forms vs quadrature and vs 150-digit mpmath
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,a,b", list(_cases()))
def test_closed_form_matches_quadrature(name, a, b):
    lib = _lib_table(name, a, b)
    ref = np.array([QUAD[name](q) for q in _quad_objects(a, b)])
    # quad computes Z as a full integral (relative accuracy ~1e-12), so a log normaliser that is
    # itself ~1e-20 (Z = 1 - 1e-20) is only resolved in absolute terms there; mpmath checks it in
    # relative terms below.
    floor = 1e-6 if name == "log_normalizer" else 0.0
    assert_close_rel(lib, ref, RTOL, floor=floor, labels=_labels(a, b), what=f"{name} vs quad")


@pytest.mark.parametrize("name,a,b", list(_cases()))
def test_closed_form_matches_mpmath(name, a, b):
    mu, log_sigma = grid_points()
    lib = _lib_table(name, a, b)
    ref = [MP[name](m, mp.exp(l), a, b) for m, l in zip(mu, log_sigma)]
    # floor: values below 1e-300 are not representable in float64 (e.g. log Z = -1e-1189 -> -0.0)
    assert_close_rel(lib, ref, RTOL, floor=1e-300, labels=_labels(a, b), what=f"{name} vs mpmath")


def test_reference_grid_covers_extreme_regimes():
    """The grid reaches the regimes the float64 rearrangements exist for: |log Z| ~ 1e23 and
    SNR ~ 1e20 (posterior far outside [a, b] with sigma = e^-20), E[θ] at both bounds."""
    lz = _lib_table("log_normalizer", -20.0, 0.0)
    snr = _lib_table("snr", -20.0, 0.0)
    e = _lib_table("expected_theta", -20.0, 0.0)
    assert lz.min() < -1e23 and snr.max() > 1e20
    assert math.isclose(e.min(), math.exp(-20.0), rel_tol=1e-6) and math.isclose(e.max(), 1.0, rel_tol=1e-6)


def test_spec_closed_forms_are_the_textbook_ones():
    """Spot values from the textbook formulas in plain float64 (moderate parameters), written out
    independently of mp_reference: E[θ], E[θ²] via Φ (Neklyudov et al. 2017) and KL (paper Eq. 2–3). The plain Φ
    differences themselves carry ~1e-10 relative rounding error, hence the tolerance."""
    from scipy.special import ndtr

    for mu, sigma in [(-5.0, 1.0), (-19.5, 0.5), (-1.0, 2.0), (-12.0, 2.0)]:
        a, b = -20.0, 0.0
        al, be = (a - mu) / sigma, (b - mu) / sigma
        z = ndtr(be) - ndtr(al)
        phi = stats.norm.pdf
        e1 = math.exp(mu + sigma**2 / 2) * (ndtr(sigma - al) - ndtr(sigma - be)) / z
        e2 = math.exp(2 * mu + 2 * sigma**2) * (ndtr(2 * sigma - al) - ndtr(2 * sigma - be)) / z
        kl = (math.log(b - a) - math.log(sigma) - math.log(z) - 0.5 * math.log(2 * math.pi * math.e)
              - (al * phi(al) - be * phi(be)) / (2 * z))
        t = torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
        assert D.expected_theta(*t).item() == pytest.approx(e1, rel=1e-8, abs=0)
        assert D.var_theta(*t).item() == pytest.approx(e2 - e1**2, rel=1e-7, abs=0)
        assert D.snr(*t).item() == pytest.approx(e1 / math.sqrt(e2 - e1**2), rel=1e-7, abs=0)
        assert D.kl_log_uniform(*t).item() == pytest.approx(kl, rel=1e-8, abs=0)
        assert D.log_normalizer(*t).item() == pytest.approx(math.log(z), rel=1e-8, abs=0)


def test_kl_relative_accuracy_when_posterior_is_much_wider_than_support():
    """KL -> 0 as sigma grows relative to b - a (q tends to the log-uniform prior). Written as
    log(b-a) - log sigma - ½log 2π - log Z - ½E[z²], O(1) terms would cancel to ~1e-12 (the absolute
    error ~1e-14 of log Z then dominates: 1.42819e-12, rel. err 2.2e-3); the library switches to the
    tilted-uniform form for (b - a)/sigma < 0.125 (distributions._kl_narrow_value)."""
    a, b, mu, sigma = -3.0, -2.0, -2.5, math.exp(5.0)
    lib = D.kl_log_uniform(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), a=a, b=b)
    ref = R.kl(mu, mp.exp(5), a, b)  # 1.43135565e-12
    assert lib.item() == pytest.approx(float(ref), rel=RTOL, abs=0)


# --------------------------------------------------------------------------------------------------
# 5. Finiteness on a dense grid, float64 and float32
# --------------------------------------------------------------------------------------------------

PUBLIC_UNARY = {
    "log_normalizer": D.log_normalizer,
    "kl_log_uniform": D.kl_log_uniform,
    "log_expected_theta": D.log_expected_theta,
    "expected_theta": D.expected_theta,
    "var_theta": D.var_theta,
    "snr": D.snr,
    "sample_theta": lambda m, s: D.sample_theta(m, s, sample_shape=(2,), generator=torch.Generator().manual_seed(0)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_public_functions_finite_with_finite_gradients(dense_grid, dtype):
    mu_np, log_sigma_np = dense_grid
    failures = []
    for name, fn in PUBLIC_UNARY.items():
        mu = torch.tensor(mu_np, dtype=dtype, requires_grad=True)
        log_sigma = torch.tensor(log_sigma_np, dtype=dtype, requires_grad=True)
        out = fn(mu, torch.exp(log_sigma))
        if out.dtype != dtype:
            failures.append(f"{name}: returns {out.dtype} for {dtype} input")
        bad = ~torch.isfinite(out)
        if name == "sample_theta":
            bad = bad.any(0)
        out.sum().backward()
        for label, g in (("value", None), ("d/dmu", mu.grad), ("d/dlog_sigma", log_sigma.grad)):
            mask = bad if g is None else ~torch.isfinite(g)
            if bool(mask.any()):
                i = int(mask.nonzero()[0, 0])
                failures.append(f"{name} {label}: {int(mask.sum())} non-finite, e.g. mu={mu_np[i]:g}, log_sigma={log_sigma_np[i]:g}")
    assert not failures, "\n".join(failures)


def test_kl_gradient_finite_and_nonzero_where_it_should_be(dense_grid):
    """KL autograd w.r.t. (mu, log sigma) is finite on the dense grid for both the compiled CPU path
    and the torch path, and d KL / d log sigma (= -1 + O(truncation)) never vanishes."""
    mu_np, log_sigma_np = dense_grid
    for path in (D.kl_per_unit, D._kl):
        mu = torch.tensor(mu_np, dtype=torch.float64, requires_grad=True)
        log_sigma = torch.tensor(log_sigma_np, dtype=torch.float64, requires_grad=True)
        path(mu, torch.exp(log_sigma), -20.0, 0.0).sum().backward()
        assert torch.isfinite(mu.grad).all() and torch.isfinite(log_sigma.grad).all()
        assert (log_sigma.grad != 0).all()


def test_special_helpers_finite_on_standardised_grid_bounds(dense_grid):
    mu, log_sigma = (torch.tensor(v, dtype=torch.float64) for v in dense_grid)
    sigma = torch.exp(log_sigma)
    alpha, beta = (-20.0 - mu) / sigma, (0.0 - mu) / sigma
    t = torch.cat([alpha, beta]).requires_grad_()
    assert torch.isfinite(S.log_ndtr(t)).all()  # its gradient: test_log_ndtr_gradient_in_far_left_tail
    for fn in (S.log_normal_pdf, S.log_inv_mills, S.mills_excess, S.tail_variance):
        t.grad = None
        v = fn(t)
        v.sum().backward()
        assert torch.isfinite(v).all() and torch.isfinite(t.grad).all(), fn.__name__
    lz = S.log_normal_interval(alpha, beta, 20.0 / sigma)
    assert torch.isfinite(lz).all() and (lz <= 0).all()
    x = -torch.logspace(-300, 3, 200, dtype=torch.float64)
    assert torch.isfinite(S.log1mexp(x)).all()


def test_log_ndtr_gradient_in_far_left_tail():
    """d/dt log Φ(t) = φ(t)/Φ(t) = λ(-t) ~ -t for t -> -inf. The values of S.log_ndtr are fine; the
    library's own code only differentiates it for t >= 0, but the public helper advertises "stable
    for all x"."""
    ts = [-1e3, -1e5, -1e8, -1e10, -1e12]
    t = torch.tensor(ts, dtype=torch.float64, requires_grad=True)
    S.log_ndtr(t).sum().backward()
    with mp.workdps(60):
        refs = [_mp_lambda(-mp.mpf(x)) for x in ts]
    assert_close_rel(t.grad.numpy(), refs, RTOL, labels=[f"t={x:g}" for x in ts], what="d log_ndtr/dt")


# --------------------------------------------------------------------------------------------------
# Special helpers against mpmath (the building blocks of everything above)
# --------------------------------------------------------------------------------------------------

_T = [-40.0, -10.0, -1.0, 0.0, 0.5, 3.0, 9.99, 10.0, 10.01, 25.0, 30.0, 100.0, 1e4, 1e8, 1e12]


def _mp_lambda(x):
    return mp.npdf(x) / mp.ncdf(-x)


_HELPERS = {
    "log_inv_mills": (S.log_inv_mills, lambda x: mp.log(_mp_lambda(x))),
    "mills_excess": (S.mills_excess, lambda x: _mp_lambda(x) - x),
    "tail_variance": (S.tail_variance, lambda x: 1 - _mp_lambda(x) * (_mp_lambda(x) - x)),
}


@pytest.mark.parametrize("name", list(_HELPERS))
def test_special_helper_values_match_mpmath(name):
    fn, ref = _HELPERS[name]
    lib = fn(torch.tensor(_T, dtype=torch.float64))
    with mp.workdps(100):
        refs = [ref(mp.mpf(x)) for x in _T]
    assert_close_rel(lib.numpy(), refs, 1e-10, floor=1e-300, labels=[f"t={x:g}" for x in _T], what=name)


@pytest.mark.parametrize("name", list(_HELPERS))
def test_special_helper_gradients_match_mpmath(name):
    """Includes V'(t) = λ(V − g²) at t = 1e8, 1e12 (two ≈ 1/t² terms cancelling to ≈ −2/t⁴: taken from the
    continued fraction) and at t = −10 (λ ≈ 8e-23 must not be formed as g + t)."""
    fn, ref = _HELPERS[name]
    t = torch.tensor(_T, dtype=torch.float64, requires_grad=True)
    fn(t).sum().backward()
    with mp.workdps(120):
        refs = [mp.diff(ref, mp.mpf(x)) for x in _T]
    assert_close_rel(t.grad.numpy(), refs, RTOL, floor=1e-250, labels=[f"t={x:g}" for x in _T], what=f"d {name}/dt")


# --------------------------------------------------------------------------------------------------
# 6. KL gradient: compiled kernel vs torch autograd vs mpmath numerical derivatives
# --------------------------------------------------------------------------------------------------

def _kl_grads(path, mu_np, sigma_np, a, b):
    mu = torch.tensor(mu_np, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor(sigma_np, dtype=torch.float64, requires_grad=True)
    kl = path(mu, sigma, a, b)
    kl.sum().backward()
    return kl.detach().numpy(), mu.grad.numpy(), sigma.grad.numpy()


def mp_derivative(f, x, dps: int = 150):
    """mp.diff of f at x with `dps` significant digits (mp.diff works at about twice that)."""
    with mp.workdps(dps):
        return mp.diff(f, mp.mpf(x))


def assert_matches_mp_derivative(lib, make_f, xs, labels, what, rtol=RTOL, floor=1e-250):
    """Compare lib[i] with mp.diff(make_f(i), xs[i]) at 150 digits. Where they disagree the
    reference is recomputed at 320 digits: a 150-digit derivative has noise ~1e-160 relative to the
    function, so it cannot resolve a derivative that is exactly 0 (mu at the centre of [a, b]) or
    ~1e-240; the 320-digit value is then the reference (and the floor 1e-250 applies as usual)."""
    refs = [mp_derivative(make_f(i), xs[i]) for i in range(len(xs))]
    err = relative_errors(lib, refs, floor)
    for i in np.flatnonzero(~(err <= rtol)):
        refs[i] = mp_derivative(make_f(i), xs[i], dps=320)
    assert_close_rel(lib, refs, rtol, floor=floor, labels=labels, what=what)


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("a,b", [(-20.0, 0.0), (-12.0, 1.0)])
def test_kl_gradient_matches_mpmath(path, a, b):
    probe = D.kl_per_unit(torch.zeros(1, dtype=torch.float64, requires_grad=True), torch.ones(1, dtype=torch.float64), a, b)
    assert probe.grad_fn.name().endswith("_KLKernelBackward")  # the CPU path really is the compiled kernel
    fn = D.kl_per_unit if path == "kernel" else D._kl
    mu, log_sigma = grid_points()
    sigma = [mp.exp(l) for l in log_sigma]
    _, g_mu, g_sigma = _kl_grads(fn, mu, np.exp(log_sigma), a, b)
    labels = _labels(a, b)
    assert_matches_mp_derivative(g_mu, lambda i: (lambda x: R.kl(x, sigma[i], a, b)), mu, labels, f"dKL/dmu ({path})")
    assert_matches_mp_derivative(g_sigma, lambda i: (lambda x: R.kl(mu[i], x, a, b)), sigma, labels,
                                 f"dKL/dsigma ({path})")


def test_kl_kernel_and_torch_paths_agree_on_dense_grid(dense_grid):
    mu, log_sigma = dense_grid
    sigma = np.exp(log_sigma)
    k_val, k_mu, k_sigma = _kl_grads(D.kl_per_unit, mu, sigma, -20.0, 0.0)
    t_val, t_mu, t_sigma = _kl_grads(D._kl, mu, sigma, -20.0, 0.0)
    labels = labels_of(mu=mu, log_sigma=log_sigma)
    assert_close_rel(k_val, t_val, RTOL, labels=labels, what="KL kernel vs torch")
    assert_close_rel(k_mu, t_mu, RTOL, floor=1e-250, labels=labels, what="dKL/dmu kernel vs torch")
    assert_close_rel(k_sigma, t_sigma, RTOL, floor=1e-250, labels=labels, what="dKL/dsigma kernel vs torch")


def test_kl_public_api_gradient_float32_and_log_sigma_chain_rule():
    """kl_log_uniform with float32 parameters: float32 result, gradient w.r.t. log sigma equals
    sigma * dKL/dsigma of the float64 kernel."""
    mu = torch.tensor([-10.0, -19.9, 0.1, 3.0], requires_grad=True)
    log_sigma = torch.tensor([-5.0, 0.0, 1.0, -2.0], requires_grad=True)
    kl = D.kl_log_uniform(mu, torch.exp(log_sigma))
    assert kl.dtype == torch.float32
    kl.sum().backward()
    m64, s64 = mu.detach().double(), torch.exp(log_sigma.detach().double())
    _, g_mu, g_sigma = _kl_grads(D.kl_per_unit, m64.numpy(), s64.numpy(), -20.0, 0.0)
    np.testing.assert_allclose(mu.grad.numpy(), g_mu, rtol=1e-5)
    np.testing.assert_allclose(log_sigma.grad.numpy(), g_sigma * s64.numpy(), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# Gradients of E[θ], SNR and Var θ (autograd through the stable forms) vs mpmath. Not used in training (the
# KL has its own closed-form gradient), but E[θ]'s gradient is the reference of the pathwise check
# below and all three functions are differentiable public API.
# --------------------------------------------------------------------------------------------------

_MOMENTS = {"expected_theta": (D.expected_theta, R.expected_theta), "snr": (D.snr, R.snr),
            "var_theta": (D.var_theta, R.var_theta)}
_MOMENT_POINTS = {
    # posterior inside or near [a, b], or wide: autograd is accurate
    "bulk": [(-25.0, 1.0), (-19.9, 0.0), (-10.0, 2.0), (-1.0, 1.0), (0.0, -2.0), (3.0, 0.5), (-15.0, -5.0),
             (-40.0, 5.0)],
    # posterior outside [a, b] with sigma <= e^-10: the scaled forms' ~1/sigma-sized derivatives would cancel
    # (dE/dmu at mu=0.1, log_sigma=-20: 0.0 vs exact 4.25e-16; dSNR/dmu at mu=-1000, log_sigma=-20: +4.4e24 vs
    # exact -2.35e17); E[θ] uses the integral form there, the SNR the continued-fraction derivative of V
    "far-tail": [(-1000.0, -20.0), (-100.0, -10.0), (1000.0, -10.0), (25.0, -10.0), (0.1, -20.0)],
}


def _moment_cases():
    for name in _MOMENTS:
        for region in _MOMENT_POINTS:
            yield pytest.param(name, region, id=f"{name}-{region}")


@pytest.mark.parametrize("name,region", list(_moment_cases()))
def test_moment_gradients_match_mpmath(name, region):
    fn, ref = _MOMENTS[name]
    pts = _MOMENT_POINTS[region]
    mu = torch.tensor([p[0] for p in pts], dtype=torch.float64, requires_grad=True)
    log_sigma = torch.tensor([p[1] for p in pts], dtype=torch.float64, requires_grad=True)
    fn(mu, torch.exp(log_sigma)).sum().backward()
    labels = [f"mu={m:g}, log_sigma={l:g}" for m, l in pts]
    assert_matches_mp_derivative(mu.grad.numpy(), lambda i: (lambda x: ref(x, mp.exp(pts[i][1]))),
                                 [p[0] for p in pts], labels, f"d {name}/d mu")
    assert_matches_mp_derivative(log_sigma.grad.numpy(), lambda i: (lambda x: ref(pts[i][0], mp.exp(x))),
                                 [p[1] for p in pts], labels, f"d {name}/d log sigma")


# --------------------------------------------------------------------------------------------------
# 7. Sampling (inverse CDF as in the released code's `modules/layers.py`, eps = 1e-5)
# --------------------------------------------------------------------------------------------------

# (mu, sigma): bulk, near-boundary cases at b = 0 and at a = -20, a wide posterior, a narrow one, and one
# with alpha > 0 (mode below a: the sampler's reflected orientation).
MC_CASES = [(-5.0, 1.0), (0.0, 1.0), (0.0, 0.3), (-19.5, 0.5), (-19.5, 2.0), (-10.0, math.exp(5.0)),
            (-7.0, math.exp(-5.0)), (-21.0, 1.0)]
N_MC = 200_000


@pytest.mark.parametrize("mu,sigma", MC_CASES)
def test_sample_theta_monte_carlo_moments_and_support(mu, sigma):
    gen = torch.Generator().manual_seed(1234)
    theta = D.sample_theta(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64),
                           sample_shape=(N_MC,), generator=gen)
    assert theta.shape == (N_MC,) and theta.dtype == torch.float64
    assert bool(((theta >= math.exp(-20.0)) & (theta <= 1.0)).all())
    mean = theta.mean().item()
    centred = theta - mean
    var = centred.square().mean().item() * N_MC / (N_MC - 1)
    m4 = centred.pow(4).mean().item()
    params = torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)
    e_ref = D.expected_theta(*params).item()
    v_ref = D.var_theta(*params).item()
    se_mean = math.sqrt(var / N_MC)
    se_var = math.sqrt(max(m4 - var**2, 0.0) / N_MC)
    assert abs(mean - e_ref) <= 5 * se_mean, (mean, e_ref, se_mean)
    assert abs(var - v_ref) <= 5 * se_var, (var, v_ref, se_var)


@pytest.mark.parametrize("mu,sigma", [(0.0, 1.0), (-19.5, 0.5), (-10.0, 3.0), (-21.0, 1.0), (-5.0, math.exp(-5)),
                                      (-15.0, 2.0), (-30.0, 4.0)])
def test_sample_theta_is_the_truncated_normal_quantile(mu, sigma):
    """With y on a symmetric grid of (0.01, 0.99) (so the eps clamp is inactive), the sorted log
    samples are the truncated-normal quantiles at the same levels (scipy.stats.truncnorm.ppf). For
    alpha > 0 the library maps y to the 1 - y quantile, which the symmetric grid absorbs."""
    n = 999
    y = torch.linspace(0.01, 0.99, n, dtype=torch.float64)
    x = torch.log(D.sample_theta(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64),
                                 uniform=y)).sort().values.numpy()
    al, be = (-20.0 - mu) / sigma, (0.0 - mu) / sigma
    ref = stats.truncnorm.ppf(y.numpy(), al, be, loc=mu, scale=sigma)
    np.testing.assert_allclose(x, ref, rtol=0, atol=1e-8 * max(1.0, sigma))


def test_sample_theta_shapes_dtype_and_reproducibility():
    mu = torch.tensor([[-1.0], [-5.0], [-19.0]], dtype=torch.float32)  # (3, 1)
    sigma = torch.tensor([0.5, 1.0], dtype=torch.float32)  # (2,) -> broadcast (3, 2)
    t1 = D.sample_theta(mu, sigma, sample_shape=(4, 5), generator=torch.Generator().manual_seed(7))
    t2 = D.sample_theta(mu, sigma, sample_shape=(4, 5), generator=torch.Generator().manual_seed(7))
    t3 = D.sample_theta(mu, sigma, sample_shape=(4, 5), generator=torch.Generator().manual_seed(8))
    assert t1.shape == (4, 5, 3, 2) and t1.dtype == torch.float32
    assert torch.equal(t1, t2) and not torch.equal(t1, t3)
    # different elements get different draws
    assert t1[:, :, 0, 0].unique().numel() == 20


@pytest.mark.parametrize("a,b", [(-20.0, 0.0), (-12.0, 1.0), (-5.0, -1.0)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_sample_theta_support_on_whole_grid(a, b, dtype):
    mu, log_sigma = grid_points()
    theta = D.sample_theta(torch.tensor(mu, dtype=dtype), torch.exp(torch.tensor(log_sigma, dtype=dtype)),
                           a=a, b=b, sample_shape=(64,), generator=torch.Generator().manual_seed(3))
    lo, hi = torch.tensor(math.exp(a), dtype=dtype), torch.tensor(math.exp(b), dtype=dtype)
    assert theta.dtype == dtype and bool(((theta >= lo) & (theta <= hi)).all())


def test_sample_theta_gradients_reach_mu_and_sigma():
    mu = torch.tensor([-5.0, -19.5, 0.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    D.sample_theta(mu, sigma, sample_shape=(1000,), generator=torch.Generator().manual_seed(0)).sum().backward()
    assert torch.isfinite(mu.grad).all() and (mu.grad > 0).all()  # θ increases with mu
    assert torch.isfinite(sigma.grad).all() and (sigma.grad != 0).all()


@pytest.mark.parametrize("mu,sigma", [(-5.0, 1.0), (0.0, 1.0), (-19.5, 0.5), (-10.0, 3.0), (-21.0, 1.0)])
def test_pathwise_gradient_matches_gradient_of_expected_theta(mu, sigma):
    """The mean of the per-sample reparameterisation gradients dθ/dmu and dθ/dsigma estimates
    d E[θ]/dmu and d E[θ]/dsigma; compare with autograd of expected_theta within 5 standard errors."""
    n = 100_000
    mu_v = torch.full((n,), mu, dtype=torch.float64, requires_grad=True)
    sigma_v = torch.full((n,), sigma, dtype=torch.float64, requires_grad=True)
    D.sample_theta(mu_v, sigma_v, generator=torch.Generator().manual_seed(99)).sum().backward()
    mu_s = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
    sigma_s = torch.tensor(sigma, dtype=torch.float64, requires_grad=True)
    D.expected_theta(mu_s, sigma_s).backward()
    for per_sample, exact in ((mu_v.grad, mu_s.grad.item()), (sigma_v.grad, sigma_s.grad.item())):
        est, se = per_sample.mean().item(), per_sample.std().item() / math.sqrt(n)
        assert abs(est - exact) <= 5 * se + 1e-12, (est, exact, se)


def test_sampler_pins_posteriors_beyond_the_eps_quantile_to_the_nearest_bound():
    """As in the released code's sampler: gamma is clamped to [eps, 1 - eps] and x to [a, b]. A
    posterior whose whole mass in [a, b] lies beyond the eps quantile (e.g. mu = -25, sigma = 1;
    mu = 5, sigma = 1) therefore yields theta = e^a resp. e^b exactly, with zero gradient."""
    mu = torch.tensor([-25.0, 5.0], dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    theta = D.sample_theta(mu, sigma, sample_shape=(100,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(theta[:, 0], torch.full((100,), math.exp(-20.0), dtype=torch.float64))
    assert torch.equal(theta[:, 1], torch.ones(100, dtype=torch.float64))
    theta.sum().backward()
    assert torch.equal(mu.grad, torch.zeros(2, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# 9. Input validation
# --------------------------------------------------------------------------------------------------

ALL_DIST_FUNCS = dict(PUBLIC_UNARY, sample_theta=D.sample_theta)


@pytest.mark.parametrize("name", list(ALL_DIST_FUNCS))
def test_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match=r"mu has shape \(3,\) and sigma has shape \(4,\).*broadcastable"):
        ALL_DIST_FUNCS[name](torch.zeros(3), torch.ones(4))


@pytest.mark.parametrize("name", list(ALL_DIST_FUNCS))
@pytest.mark.parametrize("a,b", [(0.0, 0.0), (1.0, -1.0), (-5.0, -20.0)])
def test_bounds_not_ordered_raise(name, a, b):
    with pytest.raises(ValueError, match=r"a < b.*got a=.*b="):
        ALL_DIST_FUNCS[name](torch.zeros(2), torch.ones(2), a=a, b=b)


@pytest.mark.parametrize("name", list(ALL_DIST_FUNCS))
@pytest.mark.parametrize("a,b", [(math.nan, 0.0), (-math.inf, 0.0), (-20.0, math.inf), (-20.0, math.nan)])
def test_non_finite_bounds_raise(name, a, b):
    with pytest.raises(ValueError, match=r"must be finite.*got a="):
        ALL_DIST_FUNCS[name](torch.zeros(2), torch.ones(2), a=a, b=b)


@pytest.mark.parametrize("name", list(ALL_DIST_FUNCS))
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_bad_sigma_raises(name, bad):
    sigma = torch.tensor([1.0, bad, 2.0])
    with pytest.raises(ValueError, match=rf"sigma must be positive and finite.*found sigma = {bad}"):
        ALL_DIST_FUNCS[name](torch.zeros(3), sigma)


@pytest.mark.parametrize("name", list(ALL_DIST_FUNCS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_mu_raises(name, bad):
    with pytest.raises(ValueError, match=r"mu must be finite"):
        ALL_DIST_FUNCS[name](torch.tensor([0.0, bad]), torch.ones(2))


@pytest.mark.parametrize("eps", [0.0, 0.5, -1e-5, 0.7, math.nan])
def test_sample_theta_bad_eps_raises(eps):
    with pytest.raises(ValueError, match=r"eps must lie in \(0, 0\.5\); got"):
        D.sample_theta(torch.zeros(2), torch.ones(2), eps=eps)


def test_sample_theta_bad_uniform_shape_raises():
    with pytest.raises(ValueError, match=r"uniform has shape \(3,\).*does not broadcast with \(2,\)"):
        D.sample_theta(torch.zeros(2), torch.ones(2), uniform=torch.rand(3))


# --------------------------------------------------------------------------------------------------
# Regimes with their own branches: narrow support (KL) and E[θ] piled against a bound at 0
# --------------------------------------------------------------------------------------------------

# (a, b, mu, sigma) in the narrow-support branch: (b - a)/sigma from 0.001 to 0.124 (the switch is at 0.125),
# the tilt A = ((a+b)/2 - mu)(b - a)/(2 sigma^2) from 2e-6 to ±0.999 (the branch's limit is 1)
_NARROW = [(-3.0, -2.0, -2.4, math.exp(5.0)), (-3.0, -2.0, 60.0, math.exp(5.0)), (-3.0, -2.0, 44000.0, math.exp(5.0)),
           (-1e-3, 0.0, 1.0, 1.0), (-20.0, -19.9, -19.0, 0.81), (-13.0, 0.0, -900.0, 105.0), (-13.0, 0.0, 700.0, 105.0),
           (-5.0, -1.0, 3000.0, math.exp(5.0)), (-5.0, -1.0, -500.0, 33.0)]


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_kl_and_gradient_match_mpmath_for_narrow_supports(path):
    fn = D.kl_per_unit if path == "kernel" else D._kl
    labels = [f"a={a:g}, b={b:g}, mu={m:g}, sigma={s:g}" for a, b, m, s in _NARROW]
    vals, g_mu, g_sigma = [], [], []
    for a, b, m, s in _NARROW:
        v, gm, gs = _kl_grads(fn, np.array([m]), np.array([s]), a, b)
        vals.append(v[0]), g_mu.append(gm[0]), g_sigma.append(gs[0])
    assert_close_rel(vals, [R.kl(m, s, a, b) for a, b, m, s in _NARROW], 1e-13, labels=labels, what=f"KL ({path})")
    assert_matches_mp_derivative(np.array(g_mu), lambda i: (lambda x: R.kl(x, *_NARROW[i][3:], *_NARROW[i][:2])),
                                 [p[2] for p in _NARROW], labels, f"dKL/dmu ({path})", rtol=1e-12)
    assert_matches_mp_derivative(np.array(g_sigma), lambda i: (lambda x: R.kl(_NARROW[i][2], x, *_NARROW[i][:2])),
                                 [p[3] for p in _NARROW], labels, f"dKL/dsigma ({path})", rtol=1e-12)


@pytest.mark.parametrize("a,b,mu,sigma", [(-20.0, 0.0, 1e-3, 1e-3), (-20.0, 0.0, 0.05, 0.01),
                                          (-1e-2, 0.0, 0.1, 0.03), (0.0, 20.0, -1e-5, 1e-6),
                                          (0.0, 0.015, -0.3, 0.03), (0.0, 5.0, -50.0, math.exp(-10.0))])
def test_log_expected_theta_relative_accuracy_at_a_bound_at_zero(a, b, mu, sigma):
    """log E[θ] = c + D with c = 0 the bound the posterior is piled against and |D| small: D must be
    accurate in relative terms (at both bounds; the grid has only b = 0)."""
    lib = D.log_expected_theta(torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64),
                               a=a, b=b)
    ref = mp.log(R.expected_theta(mu, sigma, a, b))
    assert_close_rel(lib.numpy(), [ref], 1e-12, labels=[f"mu={mu:g}, sigma={sigma:g}"], what="log E[θ]")


@pytest.mark.parametrize("mu,log_sigma", [(1000.0, -20.0), (-1000.0, -20.0), (0.1, -20.0), (1000.0, -10.0)])
def test_zero_dim_inputs_take_every_branch(mu, log_sigma):
    """One unit as 0-d tensors (as notebook 01 and a user's scalar call pass them), at points in the piled-against-a-
    bound branch of log E[θ]: value and gradient equal those of the same unit as a 1-element tensor."""
    for fn in (D.kl_log_uniform, D.log_expected_theta, D.expected_theta, D.var_theta, D.snr):
        m0 = torch.tensor(mu, dtype=torch.float64, requires_grad=True)
        m1 = torch.tensor([mu], dtype=torch.float64, requires_grad=True)
        s = math.exp(log_sigma)
        v0, v1 = fn(m0, torch.tensor(s, dtype=torch.float64)), fn(m1, torch.tensor([s], dtype=torch.float64))
        assert v0.dim() == 0 and v1.shape == (1,)
        v0.backward(), v1.sum().backward()
        assert v0.item() == v1.item() and m0.grad.item() == m1.grad.item(), fn.__name__


# --------------------------------------------------------------------------------------------------
# Narrow supports for E[θ], Var θ, SNR: the support [a, b] narrow against σ (tilted-uniform forms)
# --------------------------------------------------------------------------------------------------

# (a, b, mu, log sigma): (b - a)/sigma from 4e-13 to 0.11; tilts from 0 to ±10 (the branch's limits); and the
# points where the wide forms were wrong before (Var θ 2e-3 relative, SNR NaN at log σ = 10, a = -1e-3, b = 0)
_NARROW_MOMENTS = [(a, b, m, ls) for a, b in [(-1e-3, 0.0), (-1e-6, 0.0), (-2.0, -1.999), (-0.5, 0.0), (-10.0, -2.0)]
                   for m, ls in [(0.0, 3.0), (-5e-4, 10.0), (-50.0, 5.0), (-50.0, 15.0), (3e3, 10.0), (-1e5, 15.0),
                                 (2e6, 15.0)]
                   if (b - a) / math.exp(ls) < 0.125]


@pytest.mark.parametrize("name", ["log_expected_theta", "var_theta", "snr"])
def test_moments_match_mpmath_for_narrow_supports(name):
    labels = [f"a={a:g}, b={b:g}, mu={m:g}, log sigma={ls:g}" for a, b, m, ls in _NARROW_MOMENTS]
    lib, ref = [], []
    for a, b, m, ls in _NARROW_MOMENTS:
        s = math.exp(ls)
        lib.append(float(getattr(D, name)(torch.tensor([m], dtype=torch.float64), torch.tensor([s], dtype=torch.float64),
                                          a=a, b=b)[0]))
        ref.append(mp.log(R.expected_theta(m, s, a, b)) if name == "log_expected_theta" else getattr(R, name)(m, s, a, b))
    assert_close_rel(lib, ref, 1e-12, labels=labels, what=f"{name} (narrow support)")


def test_moment_gradients_match_mpmath_for_narrow_supports():
    cases = [(-1e-3, 0.0, -5e-4, 10.0), (-2.0, -1.999, -50.0, 5.0), (-10.0, -2.0, -35.0, 5.0), (-0.5, 0.0, 3e3, 10.0)]
    labels = [f"a={a:g}, b={b:g}, mu={m:g}, log sigma={ls:g}" for a, b, m, ls in cases]
    for name, ref_fn in [("log_expected_theta", lambda m, s, a, b: mp.log(R.expected_theta(m, s, a, b))),
                         ("snr", lambda m, s, a, b: mp.log(R.snr(m, s, a, b)))]:
        g_mu, g_sigma = [], []
        for a, b, m, ls in cases:
            mu = torch.tensor([m], dtype=torch.float64, requires_grad=True)
            sigma = torch.tensor([math.exp(ls)], dtype=torch.float64, requires_grad=True)
            out = getattr(D, name)(mu, sigma, a=a, b=b)
            out = out if name == "log_expected_theta" else torch.log(out)
            gm, gs = torch.autograd.grad(out.sum(), [mu, sigma])
            g_mu.append(float(gm[0])), g_sigma.append(float(gs[0]))
        assert_matches_mp_derivative(np.array(g_mu), lambda i: (lambda x: ref_fn(x, math.exp(cases[i][3]), *cases[i][:2])),
                                     [c[2] for c in cases], labels, f"d {name}/dmu (narrow)", rtol=1e-9)
        assert_matches_mp_derivative(np.array(g_sigma), lambda i: (lambda x: ref_fn(cases[i][2], x, *cases[i][:2])),
                                     [math.exp(c[3]) for c in cases], labels, f"d {name}/dsigma (narrow)", rtol=1e-9)


def _tilted_reference(c, w):
    """[s, e, var] of N(0, 1) truncated to [c - w/2, c + w/2], at 50 digits, as a tilted uniform on [-1, 1]."""
    with mp.workdps(50):
        c, h = mp.mpf(c), mp.mpf(w) / 2
        f = lambda x: mp.exp(-c * h * x - h * h * x * x / 2 - abs(c) * h)  # noqa: E731
        pts = list(mp.linspace(-1, 1, 9))
        m0 = mp.quad(f, pts) / 2
        mean = mp.quad(lambda x: x * f(x), pts) / 2 / m0
        var = mp.quad(lambda x: (x - mean) ** 2 * f(x), pts) / 2 / m0
        log_z = mp.log(2 * h) - mp.log(2 * mp.pi) / 2 - c * c / 2 + abs(c) * h + mp.log(m0)
        m = abs(c) - h if abs(c) >= h else mp.mpf(0)
        return [float(log_z + m * m / 2), float(abs(c + h * mean) - m), float(h * h * var)]


@pytest.mark.parametrize("width", [1e-12, 1e-8, 1e-4, 0.01, 0.124, 0.2])
def test_truncated_standard_normal_on_narrow_intervals_matches_mpmath(width):
    """s, e and Var z for intervals of every tilt A = |c|·width/2 (the narrow branch up to A = 20, the closed forms
    beyond it and for width ≥ 0.125), one-sided and containing 0."""
    centres = [0.0, 0.3 * width / 2, -0.9 * width / 2] + [A / (width / 2) for A in (1e-3, 0.5, 3.0, 20.0, 21.0, 100.0)]
    centres += [-c for c in centres[3:]]
    labels = [f"c={c:g}" for c in centres]
    lo = torch.tensor([c - width / 2 for c in centres], dtype=torch.float64)
    hi = torch.tensor([c + width / 2 for c in centres], dtype=torch.float64)
    tn = D.truncated_standard_normal(lo, hi, torch.full_like(lo, width))
    refs = [_tilted_reference(float(0.5 * (l + h)), width) for l, h in zip(lo.tolist(), hi.tolist())]
    tol = 1e-14 if width < 0.125 else 1e-12  # the closed forms at width 0.2: Var z within 4e-13 (it cancels as 1/w²)
    assert_close_rel(tn.s.numpy(), [r[0] for r in refs], tol, floor=1.0, labels=labels, what="s")
    assert_close_rel(tn.e.numpy() / (width / 2), [r[1] / (width / 2) for r in refs], tol, floor=1.0, labels=labels,
                     what="e (in units of the half-width)")
    assert_close_rel(tn.var.numpy(), [r[2] for r in refs], 2 * tol, labels=labels, what="Var z")


def test_default_bounds_never_take_the_narrow_branches():
    """Training (a = -20, b = 0, log σ ≤ 5) is unchanged by the narrow-support forms: they never apply there."""
    mu = torch.linspace(-100.0, 100.0, 2001, dtype=torch.float64)
    sigma = torch.full_like(mu, math.exp(D.LOG_SIGMA_MAX))
    assert not D._narrow_support(mu, sigma, D.DEFAULT_A, D.DEFAULT_B).any()
    width = (D.DEFAULT_B - D.DEFAULT_A) / sigma
    alpha = (D.DEFAULT_A - mu) / sigma
    assert not D._is_narrow(alpha, alpha + width, width).any()


def test_kl_on_cpu_for_narrow_supports_tilted_beyond_the_series():
    """(b - a)/σ tiny but |A| > 1 (outside the kernel's narrow series): the CPU path's gradient matches mpmath
    (the kernel's closed-form gradient cancelled there: dKL/dμ 701 instead of 1.4e-16 at the first point)."""
    cases = [(2.1e15, 1e6), (5e15, 1e6), (-3e15, 1e6), (2e9, 1e3)]
    a, b = -1e-3, 0.0
    labels = [f"mu={m:g}, sigma={s:g}" for m, s in cases]
    vals, g_mu, g_sigma = [], [], []
    for m, s in cases:
        mu = torch.tensor([m], dtype=torch.float64, requires_grad=True)
        sigma = torch.tensor([s], dtype=torch.float64, requires_grad=True)
        v = D.kl_per_unit(mu, sigma, a, b)
        gm, gs = torch.autograd.grad(v.sum(), [mu, sigma])
        vals.append(float(v[0].detach())), g_mu.append(float(gm[0])), g_sigma.append(float(gs[0]))
    assert_close_rel(vals, [R.kl(m, s, a, b) for m, s in cases], 1e-12, labels=labels, what="KL")
    assert_matches_mp_derivative(np.array(g_mu), lambda i: (lambda x: R.kl(x, cases[i][1], a, b)),
                                 [c[0] for c in cases], labels, "dKL/dmu", rtol=1e-9)
    assert_matches_mp_derivative(np.array(g_sigma), lambda i: (lambda x: R.kl(cases[i][0], x, a, b)),
                                 [c[1] for c in cases], labels, "dKL/dsigma", rtol=1e-9)
