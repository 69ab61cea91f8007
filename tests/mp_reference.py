"""Independent reference values for the closed forms, in 150-digit arithmetic (mpmath).

These evaluate the *textbook* formulas directly (the paper's Eq. 8 and 10; the truncated log-normal's
KL, E[θ], E[θ²] and SNR, Neklyudov et al. 2017), i.e. the forms with catastrophic cancellation in
float64; at 150 significant digits the cancellation is harmless for the parameter grid of the tests,
so they are an independent check of the library's rearranged, float64 forms. The moderate part
of the grid is also checked against scipy numerical integration in test_distributions.py.
"""

from __future__ import annotations

import mpmath as mp

mp.mp.dps = 150


def _phi(t):
    return mp.npdf(t)


def _cdf(t):
    return mp.ncdf(t)


def _z(mu, sigma, a, b):
    mu, sigma = mp.mpf(mu), mp.mpf(sigma)
    al, be = (a - mu) / sigma, (b - mu) / sigma
    # Φ(β) − Φ(α) via the tail on the far side of 0 (keeps digits for α > 0)
    if al > 0:
        z = _cdf(-al) - _cdf(-be)
    else:
        z = _cdf(be) - _cdf(al)
    return al, be, z


def log_z(mu, sigma, a=-20, b=0):
    return mp.log(_z(mu, sigma, a, b)[2])


def kl(mu, sigma, a=-20, b=0):
    al, be, z = _z(mu, sigma, a, b)
    sigma = mp.mpf(sigma)
    return (mp.log(b - a) - mp.log(sigma) - mp.log(z) - mp.mpf(1) / 2 * mp.log(2 * mp.pi * mp.e)
            - (al * _phi(al) - be * _phi(be)) / (2 * z))


def _d(k, mu, sigma, a, b):
    al, be, _ = _z(mu, sigma, a, b)
    s = k * mp.mpf(sigma)
    lo, hi = al - s, be - s  # Φ(kσ−α) − Φ(kσ−β) = Φ(β−kσ) − Φ(α−kσ)
    if lo > 0:
        return _cdf(-lo) - _cdf(-hi)
    return _cdf(hi) - _cdf(lo)


def expected_theta(mu, sigma, a=-20, b=0):
    _, _, z = _z(mu, sigma, a, b)
    mu, sigma = mp.mpf(mu), mp.mpf(sigma)
    return mp.exp(mu + sigma**2 / 2) * _d(1, mu, sigma, a, b) / z


def second_moment(mu, sigma, a=-20, b=0):
    _, _, z = _z(mu, sigma, a, b)
    mu, sigma = mp.mpf(mu), mp.mpf(sigma)
    return mp.exp(2 * mu + 2 * sigma**2) * _d(2, mu, sigma, a, b) / z


def var_theta(mu, sigma, a=-20, b=0):
    return second_moment(mu, sigma, a, b) - expected_theta(mu, sigma, a, b) ** 2


def snr(mu, sigma, a=-20, b=0):
    return expected_theta(mu, sigma, a, b) / mp.sqrt(var_theta(mu, sigma, a, b))


def delta_f_n(mu, sigma, a=-20, b=0, prior_mu=None, prior_sigma=1e-6, include_2pi=True):
    """Eq. 8 of the paper, verbatim (the naive form), evaluated at 150 digits."""
    mu_q, s_q = mp.mpf(mu), mp.mpf(sigma)
    mu_p = mp.mpf(a if prior_mu is None else prior_mu)
    s_p = mp.mpf(prior_sigma)
    s_qt2 = 1 / (1 / s_q**2 + 1 / s_p**2)
    mu_qt = s_qt2 * (mu_q / s_q**2 + mu_p / s_p**2)
    z_q = _z(mu_q, s_q, a, b)[2]
    z_pt = _z(mu_p, s_p, a, b)[2]
    z_qt = _z(mu_qt, mp.sqrt(s_qt2), a, b)[2]
    two_pi = 2 * mp.pi if include_2pi else 1
    return (mp.log(z_qt * (b - a) / (z_pt * z_q))
            + mp.mpf(1) / 2 * mp.log(s_qt2 / (two_pi * s_p**2 * s_q**2))
            - mp.mpf(1) / 2 * (mu_q**2 / s_q**2 + mu_p**2 / s_p**2 - mu_qt**2 / s_qt2))


def delta_f_u(mu, sigma, a=-20, b=0, p1=8, p2=23):
    """Eq. 10: log[(log(b/a)/log(b'/a')) · q(a' ≤ θ ≤ b')]."""
    lo, hi = -p2 * mp.log(2), -p1 * mp.log(2)
    mu, sigma = mp.mpf(mu), mp.mpf(sigma)
    _, _, z = _z(mu, sigma, a, b)
    l, h = (lo - mu) / sigma, (hi - mu) / sigma
    mass = (_cdf(-l) - _cdf(-h)) if l > 0 else (_cdf(h) - _cdf(l))
    return mp.log(mp.mpf(b - a) / (hi - lo)) + mp.log(mass) - mp.log(z)


def log_z_accurate(mu, sigma, a=-20, b=0):
    """log Z like log_z, but exact also when Z is within 10^-150 of 1 (interval containing the mode
    with both tails tiny): there log Z = log1p(-Φ(α) - Φ(-β)), which 150 digits resolve, whereas
    log(Φ(β) - Φ(α)) rounds 1 - 1e-160 to 1."""
    al, be, z = _z(mu, sigma, a, b)
    if al < 0 < be:
        return mp.log1p(-_cdf(al) - _cdf(-be))
    return mp.log(z)
