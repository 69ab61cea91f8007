# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 — Bayesian model reduction for multiplicative-noise pruning: derivation and numerical checks
#
# This notebook derives every formula BMRS uses (Wright, Igel & Selvan, *BMRS: Bayesian Model Reduction
# for Structured Pruning*, NeurIPS 2024) and checks each one numerically against the library `bmrs`:
#
# 1. the model: multiplicative noise, log-uniform prior, truncated log-normal posterior;
# 2. Bayesian model reduction (BMR) in general: $\Delta F$, the reduced posterior, the pruning rule;
# 3. $\Delta F$ for BMRS$_N$ (reduced prior: a near-Dirac at the lower bound), its stable form, the
#    $2\pi$ discrepancy of the released code and the $\tilde\sigma_p \to 0$ limit;
# 4. $\Delta F$ for BMRS$_U$ (reduced prior: a narrower log-uniform) and its threshold table;
# 5. the KL term, $\mathbb{E}[\theta]$ and the SNR;
# 6. the decision boundaries of all variants over $(\mu, \log\sigma)$, and the priors panel of Figure 1.
#
# Every check compares the library against an *independent* computation (scipy `quad`, Monte Carlo
# with the library's sampler, or `mpmath` at 50+ digits), prints the largest error it found and fails the
# notebook when that exceeds its tolerance. All closed forms come from `bmrs.core.distributions` and
# `bmrs.core.reduction`; the notebook adds only the independent reference computations and the pictures.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper (printed on every figure)
figures_dir: str = "figures"  # where the figures are written (relative to the repository root)
seed: int = 0  # seeds numpy and torch
n_quad: int = 12  # random parameter points checked against scipy quad (per check)
n_mc_points: int = 3  # parameter points checked by Monte Carlo (per check)
n_mc: int = 20_000  # Monte Carlo samples per point
n_ks: int = 20_000  # samples for the sampler's Kolmogorov-Smirnov check
n_mpmath: int = 4  # points of the 50-digit mpmath reference for Eq. 8 at sigma_p 1e-6
grid_mu: int = 61  # resolution of the decision-boundary figure in mu
grid_log_sigma: int = 61  # resolution of the decision-boundary figure in log sigma
mc_max_se: float = 5.0  # a Monte Carlo check fails beyond this many standard errors

# %%
import math
import time

import matplotlib.pyplot as plt
import mpmath as mp
import numpy as np
import torch
from IPython.display import Markdown, display
from matplotlib.colors import TwoSlopeNorm
from matplotlib.lines import Line2D
from scipy import integrate
from scipy.special import log_ndtr, ndtr
from tqdm import tqdm

import bmrs.core.distributions as D
import bmrs.core.reduction as R
import bmrs.core.special
from bmrs.report.plots import plot_priors, save_figure

t_start = time.perf_counter()
rng = np.random.default_rng(seed)
torch.manual_seed(seed)
gen = torch.Generator().manual_seed(seed)
A, B = D.DEFAULT_A, D.DEFAULT_B  # log-space truncation bounds: log a = -20, log b = 0
LOG_W = math.log(B - A)  # log(B - A) = log log(b/a)
print(f"profile={profile}  n_quad={n_quad}  n_mc_points={n_mc_points}  n_mc={n_mc}  grid={grid_mu}x{grid_log_sigma}")

CHECKS: list[dict] = []


def check(name: str, largest_error: float, tolerance: float, unit: str = "") -> None:
    """Record and print one numerical check; fail the notebook if the largest error exceeds the tolerance."""
    ok = bool(np.isfinite(largest_error) and largest_error <= tolerance)
    CHECKS.append({"check": name, "largest error": largest_error, "tolerance": tolerance, "unit": unit, "ok": ok})
    print(f"[{'ok' if ok else 'FAIL'}] {name}: largest error {largest_error:.3e}{unit} (tolerance {tolerance:.1e}{unit})")
    assert ok, f"check failed: {name}: largest error {largest_error} > {tolerance}"


def progress(iterable, total: int, desc: str):
    """A text progress bar for the long loops of the larger profiles (silent below 100 iterations)."""
    return tqdm(iterable, total=total, desc=desc, disable=total < 100, mininterval=5.0, leave=False)


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64))


# Independent reference helpers (scipy only, no bmrs): log of the truncated-normal normaliser and density.
def ref_log_z(mu, sigma, lo=A, hi=B):
    """log[Phi((hi-mu)/sigma) - Phi((lo-mu)/sigma)], on the side of 0 where the tails are small."""
    al, be = (lo - mu) / sigma, (hi - mu) / sigma
    if al > 0:  # reflect: Phi(be) - Phi(al) = Phi(-al) - Phi(-be)
        al, be = -be, -al
    if be <= 0:
        return log_ndtr(be) + np.log1p(-np.exp(log_ndtr(al) - log_ndtr(be)))
    return np.log(ndtr(be) - ndtr(al))


def ref_log_q(x, mu, sigma, lo=A, hi=B):
    """log density over x of N(mu, sigma^2) truncated to [lo, hi]."""
    return -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi) - ref_log_z(mu, sigma, lo, hi)


def quad(f, lo, hi, points=()):
    pts = sorted({float(p) for p in points if lo < p < hi})
    val, _ = integrate.quad(f, lo, hi, points=pts or None, epsabs=0.0, epsrel=1e-12, limit=500)
    return val


def sample_x(mu, sigma, n, eps=1e-12):
    """n draws of x = log theta from the library's reparameterised sampler (eps: quantile clamp)."""
    theta = D.sample_theta(t64(mu), t64(sigma), sample_shape=(n,), generator=gen, eps=eps)
    return np.log(theta.numpy())


def jackknife(values, stat, groups: int = 20):
    """Estimate stat(values) and its standard error by the delete-a-group jackknife (for ratios like the SNR)."""
    values = np.asarray(values, dtype=np.float64)
    parts = np.array_split(values, groups)
    loo = np.array([stat(np.concatenate(parts[:k] + parts[k + 1:])) for k in range(groups)])
    return float(stat(values)), float(math.sqrt((groups - 1) / groups * np.sum((loo - loo.mean()) ** 2)))


def mc_mean(values, batches: int = 20):
    """Mean and standard error (from batch means, valid also for heavy-ish tails)."""
    values = np.asarray(values, dtype=np.float64)
    m = values[: len(values) // batches * batches].reshape(batches, -1).mean(axis=1)
    return float(m.mean()), float(m.std(ddof=1) / np.sqrt(batches))

# %% [markdown]
# ## 1. The model
#
# Every structure $i$ (a neuron, or a convolution channel) gets a multiplicative noise variable
# $\theta_i > 0$: $h_i = \theta_i\,(w_i h_{i-1})$ (paper Eq. 1). The weights $W$ are point estimates; only
# $\theta$ is Bayesian. With $0 < a < b \le 1$, $A = \log a = -20$, $B = \log b = 0$ and $x = \log\theta$:
#
# * **prior**: log-uniform, $p(\theta) = \mathrm{LogU}_{[a,b]}(\theta) = \dfrac{1}{\theta \log(b/a)}$,
#   i.e. **uniform in $x$**: $p_x(x) = \dfrac{1}{B - A}$ on $[A, B]$;
# * **variational posterior**: truncated log-normal, $q(\theta) = \mathrm{LogN}_{[a,b]}(\theta\mid\mu,\sigma^2)$,
#   i.e. a **truncated normal in $x$**:
#   $$q_x(x) = \frac{\mathcal N(x\mid\mu,\sigma^2)}{Z}\ \text{on } [A,B],\qquad
#     Z = \Phi(\beta) - \Phi(\alpha),\quad \alpha = \frac{A-\mu}{\sigma},\ \beta = \frac{B-\mu}{\sigma}.$$
#
# The densities over $\theta$ and over $x$ differ by the Jacobian $|dx/d\theta| = 1/\theta$:
# $p(\theta) = p_x(\log\theta)/\theta$, $q(\theta) = q_x(\log\theta)/\theta$. **Ratios of densities do not
# depend on the variable**, $q(\theta)/p(\theta) = q_x(x)/p_x(x)$, and $d\theta\, q(\theta) = dx\, q_x(x)$, so
# every integral below can be done in $x$ — which is how the library computes everything.
#
# Samples come from the inverse CDF in $x$ (as in the released code's `modules/layers.py`): $\gamma = \Phi(\alpha) + y\,Z$ with $y\sim U(0,1)$,
# clamped to $[\epsilon, 1-\epsilon]$, $x = \mu + \sigma\Phi^{-1}(\gamma)$, $\theta = e^x$. The first check:
# samples of `bmrs.core.distributions.sample_theta` (training default $\epsilon = 10^{-5}$) follow the truncated
# normal (Kolmogorov–Smirnov distance $\sqrt{n}\,D_n$, which for a correct sampler exceeds 2.3 with probability
# $2e^{-2\cdot 2.3^2} \approx 5\cdot10^{-5}$; typical values are 0.5–1.2).

# %%
ks_points = [(0.0, math.exp(-5)), (-10.0, 3.0), (-19.0, 2.0), (2.0, 1.0), (-25.0, 4.0)]
ks_worst = 0.0
for mu, sigma in ks_points:
    x = np.sort(sample_x(mu, sigma, n_ks, eps=D.SAMPLING_EPS))
    log_z = ref_log_z(mu, sigma)
    # exact CDF of the truncated normal at the samples, computed on the side of 0 where it is accurate
    al = (A - mu) / sigma
    cdf = (ndtr((x - mu) / sigma) - ndtr(al)) / np.exp(log_z) if al <= 0 else \
        (ndtr(-al) - ndtr(-(x - mu) / sigma)) / np.exp(log_z)
    n = len(x)
    d = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    ks_worst = max(ks_worst, math.sqrt(n) * d)
    print(f"mu={mu:6.1f} sigma={sigma:7.4f}: sqrt(n) D_n = {math.sqrt(n) * d:.3f}")
check("sampler vs truncated-normal CDF (KS, sqrt(n) D_n)", ks_worst, 2.3)

# %% [markdown]
# ## 2. Bayesian model reduction
#
# Keep the likelihood and change only the prior, $p \to \tilde p$ (the *reduced* prior). Bayes' rule under
# both priors,
# $$p(\theta\mid D) = \frac{p(D\mid\theta)\,p(\theta)}{p(D)}, \qquad
#   \tilde p(\theta\mid D) = \frac{p(D\mid\theta)\,\tilde p(\theta)}{\tilde p(D)},$$
# gives, after dividing one by the other,
# $$\tilde p(\theta\mid D) = p(\theta\mid D)\,\frac{\tilde p(\theta)}{p(\theta)}\,\frac{p(D)}{\tilde p(D)}.$$
# The left side integrates to one, so $\tilde p(D)/p(D) = \int p(\theta\mid D)\,\tilde p(\theta)/p(\theta)\,d\theta$.
# Replacing the true posterior by the variational one (paper Eq. 5–6):
# $$\boxed{\ \Delta F \triangleq \log\tilde p(D) - \log p(D) \approx \log\int q(\theta)\,\frac{\tilde p(\theta)}{p(\theta)}\,d\theta
#   = \log\int_A^B q_x(x)\,\frac{\tilde p_x(x)}{p_x(x)}\,dx\ }$$
# and the **reduced posterior** $\tilde q(\theta) = q(\theta)\,\tilde p(\theta)/p(\theta)\,/\,e^{\Delta F}$ — no
# retraining is needed. If $\tilde p$ switches the structure off ($\theta \approx 0$), $\Delta F \ge 0$ says the
# reduced model explains the data at least as well (higher evidence): **prune iff $\Delta F \ge 0$** (paper
# Algorithm 1; the released code keeps a unit iff $\Delta F < 0$).
#
# With $p_x = 1/(B-A)$ the integrand is $(B-A)\,q_x(x)\,\tilde p_x(x)$. Check: for a Gaussian reduced prior
# (section 3) the normalised $q_x\tilde p_x/p_x\,/\,e^{\Delta F}$, with $\Delta F$ from the library, is exactly
# the truncated normal $\mathcal N(\tilde\mu_q, \tilde\sigma_q^2)$ derived below (largest error of the log density).

# %%
def reduced_moments(mu_q, s_q, mu_p, s_p):
    """Gaussian product: the reduced posterior's location and scale (section 3)."""
    s2 = 1.0 / (1.0 / s_q**2 + 1.0 / s_p**2)
    return s2 * (mu_q / s_q**2 + mu_p / s_p**2), math.sqrt(s2)


worst = 0.0
for mu_q, s_q, mu_p, s_p in [(-15, 3, -20, 0.5), (-18, 2, -20, 0.1), (-10, 5, -19, 0.3), (-2, 1, -17, 1.5)]:
    df = R.delta_f_bmrs_n(t64(mu_q), t64(s_q), prior_mu=mu_p, prior_sigma=s_p).item()
    mt, st = reduced_moments(mu_q, s_q, mu_p, s_p)
    xs = np.linspace(max(A, mt - 6 * st), min(B, mt + 6 * st), 201)
    log_reduced = ref_log_q(xs, mu_q, s_q) + ref_log_q(xs, mu_p, s_p) + LOG_W - df
    worst = max(worst, float(np.max(np.abs(log_reduced - ref_log_q(xs, mt, st)))))
check("reduced posterior q p~/p / exp(dF) == TruncN(mu~_q, sigma~_q^2)", worst, 1e-9)

# %% [markdown]
# ## 3. BMRS$_N$: a near-Dirac reduced prior at the lower bound
#
# **Reduced prior** (the one behind paper Eq. 8): $\tilde p(\theta) = \mathrm{LogN}_{[a,b]}(\theta\mid\tilde\mu_p,\tilde\sigma_p^2)$, i.e.
# $\tilde p_x = \mathcal N(x\mid\tilde\mu_p,\tilde\sigma_p^2)/\tilde Z_p$ on $[A,B]$, with $\tilde\mu_p = A = -20$ and
# $\tilde\sigma_p = 10^{-6}$ — "$\theta$ is (almost) exactly $a$", i.e. the structure is switched off. Then
# $$e^{\Delta F_N} = \frac{B-A}{Z_q\tilde Z_p}\int_A^B \mathcal N(x\mid\mu_q,\sigma_q^2)\,\mathcal N(x\mid\tilde\mu_p,\tilde\sigma_p^2)\,dx .$$
#
# **Gaussian product.** Completing the square in the exponent,
# $$\frac{(x-\mu_q)^2}{\sigma_q^2} + \frac{(x-\tilde\mu_p)^2}{\tilde\sigma_p^2}
#   = \frac{(x-\tilde\mu_q)^2}{\tilde\sigma_q^2} + \frac{\mu_q^2}{\sigma_q^2} + \frac{\tilde\mu_p^2}{\tilde\sigma_p^2} - \frac{\tilde\mu_q^2}{\tilde\sigma_q^2},
#   \qquad \frac{1}{\tilde\sigma_q^2} = \frac{1}{\sigma_q^2} + \frac{1}{\tilde\sigma_p^2},\quad
#   \tilde\mu_q = \tilde\sigma_q^2\Big(\frac{\mu_q}{\sigma_q^2} + \frac{\tilde\mu_p}{\tilde\sigma_p^2}\Big),$$
# and the prefactor $\frac{1}{2\pi\sigma_q\tilde\sigma_p} = \frac{1}{\sqrt{2\pi}\tilde\sigma_q}\cdot\sqrt{\frac{\tilde\sigma_q^2}{2\pi\sigma_q^2\tilde\sigma_p^2}}$.
# The remaining $x$-integral of $\mathcal N(x\mid\tilde\mu_q,\tilde\sigma_q^2)$ over $[A,B]$ is $\tilde Z_q$. Hence **paper Eq. 8**:
# $$\Delta F_N = \log\frac{\tilde Z_q\,(\log b - \log a)}{\tilde Z_p\,Z_q} + \frac12\log\frac{\tilde\sigma_q^2}{2\pi\,\tilde\sigma_p^2\,\sigma_q^2}
#   - \frac12\Big(\frac{\mu_q^2}{\sigma_q^2} + \frac{\tilde\mu_p^2}{\tilde\sigma_p^2} - \frac{\tilde\mu_q^2}{\tilde\sigma_q^2}\Big).$$
# The reduced posterior is the truncated normal $\mathcal N(\tilde\mu_q,\tilde\sigma_q^2)$ on $[A,B]$ (checked in section 2).
#
# **Two identities.** With $S = \sigma_q^2 + \tilde\sigma_p^2$: (i) $\tilde\sigma_q^2 = \sigma_q^2\tilde\sigma_p^2/S$, so
# $\tilde\sigma_q^2/(\sigma_q^2\tilde\sigma_p^2) = 1/S$. (ii) Over the common denominator $S\sigma_q^2\tilde\sigma_p^2$,
# $$(\mu_q^2\tilde\sigma_p^2 + \tilde\mu_p^2\sigma_q^2)\,S - (\mu_q\tilde\sigma_p^2 + \tilde\mu_p\sigma_q^2)^2
#   = \sigma_q^2\tilde\sigma_p^2(\mu_q - \tilde\mu_p)^2
#   \ \Rightarrow\ \frac{\mu_q^2}{\sigma_q^2} + \frac{\tilde\mu_p^2}{\tilde\sigma_p^2} - \frac{\tilde\mu_q^2}{\tilde\sigma_q^2} = \frac{(\mu_q-\tilde\mu_p)^2}{S}.$$
# Hence the **stable form** the library evaluates (`bmrs.core.reduction.delta_f_bmrs_n`):
# $$\boxed{\ \Delta F_N = \log(B-A) + \log\tilde Z_q - \log Z_q - \log\tilde Z_p - \tfrac12\log\big(2\pi(\sigma_q^2+\tilde\sigma_p^2)\big)
#   - \frac{(\mu_q-\tilde\mu_p)^2}{2(\sigma_q^2+\tilde\sigma_p^2)}\ }$$
#
# ### 3.1 Three reference values, and a random grid against `quad`
#
# The three reference points were integrated independently (scipy `quad`, moderate $\tilde\sigma_p$) when the
# library was written and are quoted here to 5 decimals, with Eq. 8 and the released code's variant beside them.
# The integral $\log\int_A^B (B-A)\,q_x\,\tilde p_x\,dx$ is computed by adaptive quadrature (scipy `quad`,
# relative tolerance $10^{-12}$; the integrand is scaled by its maximum at $\mathrm{clip}(\tilde\mu_q, A, B)$), with
# densities from scipy only. "paper" is the library with `include_2pi=True` (Eq. 8), "code" with
# `include_2pi=False` (the authors' release).

# %%
def quad_delta_f_n(mu_q, s_q, mu_p, s_p):
    """log int_A^B (B-A) q_x(x) p~_x(x) dx by quad (scaled by the integrand's maximum)."""
    mt, st = reduced_moments(mu_q, s_q, mu_p, s_p)
    peak = min(max(mt, A), B)
    log_f = lambda x: ref_log_q(x, mu_q, s_q) + ref_log_q(x, mu_p, s_p) + LOG_W
    c = log_f(peak)
    val = quad(lambda x: math.exp(log_f(x) - c), A, B, points=(peak, peak - 8 * st, peak + 8 * st))
    return c + math.log(val)


def lib_delta_f_n(mu_q, s_q, mu_p=None, s_p=1e-6, include_2pi=True):
    return R.delta_f_bmrs_n(t64(mu_q), t64(s_q), prior_mu=mu_p, prior_sigma=s_p, include_2pi=include_2pi).numpy()


reference_rows = [  # (mu_q, sigma_q, mu_p, sigma_p): numeric integral, paper Eq. 8, released code (no 2π)
    ((-15, 3, -20, 0.5), -0.14240, -0.14240, 0.77654),
    ((-18, 2, -20, 0.1), 1.09545, 1.09545, 2.01439),
    ((-10, 5, -19, 0.3), -1.10192, -1.10192, -0.18298),
]
lines = ["| (μ_q, σ_q, μ̃_p, σ̃_p) | quad | library, paper Eq. 8 | library, code | reference: numeric / paper / code |", "|---|---|---|---|---|"]
worst_quad = worst_ref = 0.0
for (mu_q, s_q, mu_p, s_p), s_num, s_paper, s_code in reference_rows:
    numeric = quad_delta_f_n(mu_q, s_q, mu_p, s_p)
    paper = float(lib_delta_f_n(mu_q, s_q, mu_p, s_p))
    code = float(lib_delta_f_n(mu_q, s_q, mu_p, s_p, include_2pi=False))
    worst_quad = max(worst_quad, abs(numeric - paper))
    worst_ref = max(worst_ref, abs(numeric - s_num), abs(paper - s_paper), abs(code - s_code))
    lines.append(f"| ({mu_q}, {s_q}, {mu_p}, {s_p}) | {numeric:.5f} | {paper:.5f} | {code:.5f} | {s_num:.5f} / {s_paper:.5f} / {s_code:.5f} |")
display(Markdown("\n".join(lines)))
check("dF_N: library (Eq. 8) vs quad at the three reference points", worst_quad, 1e-9)
check("dF_N: quad and library vs the 5-decimal reference values", worst_ref, 5.1e-6)

# %%
pts = np.column_stack([
    rng.uniform(-25, 3, n_quad),  # mu_q
    np.exp(rng.uniform(math.log(0.1), math.log(6.0), n_quad)),  # sigma_q
    rng.uniform(-20, -14, n_quad),  # mu~_p
    np.exp(rng.uniform(math.log(0.05), math.log(2.0), n_quad)),  # sigma~_p
])
worst = 0.0
for mu_q, s_q, mu_p, s_p in progress(pts, n_quad, "dF_N vs quad"):
    ref = quad_delta_f_n(mu_q, s_q, mu_p, s_p)
    lib = float(lib_delta_f_n(mu_q, s_q, mu_p, s_p))
    worst = max(worst, abs(ref - lib) / max(1.0, abs(ref)))
check(f"dF_N: library vs quad on {n_quad} random (mu, sigma, mu~_p, sigma~_p) (error / max(1, |dF|))", worst, 1e-9)

# %% [markdown]
# ### 3.2 Monte Carlo
#
# $e^{\Delta F_N} = \mathbb E_q[\tilde p(\theta)/p(\theta)] = \mathbb E_q\big[(B-A)\,\tilde p_x(\log\theta)\big]$, estimated with
# $\theta$ drawn by `bmrs.core.distributions.sample_theta` (quantile clamp $\epsilon = 10^{-12}$ here so that the draws
# follow $q$ exactly up to $10^{-12}$ of tail mass). Moderate $\tilde\sigma_p$ keeps the estimator's variance finite;
# the points are drawn so that $\Delta F_N > -4$ (otherwise the estimate is dominated by rare draws). The
# error is reported in standard errors.

# %%
worst_se = worst_rel = 0.0
done = 0
while done < n_mc_points:
    mu_p, s_p, s_q = rng.uniform(-20, -16), math.exp(rng.uniform(math.log(0.5), math.log(2.0))), rng.uniform(0.5, 4)
    mu_q = float(np.clip(mu_p + rng.normal() * math.hypot(s_q, s_p), -24, 0))
    exact = float(lib_delta_f_n(mu_q, s_q, mu_p, s_p))
    if exact < -4:
        continue
    x = sample_x(mu_q, s_q, n_mc)
    est, se = mc_mean(np.exp(ref_log_q(x, mu_p, s_p) + LOG_W))
    worst_se = max(worst_se, abs(est - math.exp(exact)) / se)
    worst_rel = max(worst_rel, abs(est / math.exp(exact) - 1))
    print(f"mu_q={mu_q:7.2f} s_q={s_q:5.2f} mu_p={mu_p:7.2f} s_p={s_p:5.2f}: exp dF exact {math.exp(exact):.5f}, MC {est:.5f} ± {se:.5f}")
    done += 1
print(f"largest relative error of exp(dF_N): {worst_rel:.2e}")
check("dF_N: library vs Monte Carlo E_q[p~/p]", worst_se, mc_max_se, " SE")

# %% [markdown]
# ### 3.3 Why the literal Eq. 8 fails in float64
#
# With $\tilde\sigma_p = 10^{-6}$ the three terms $\mu_q^2/\sigma_q^2$, $\tilde\mu_p^2/\tilde\sigma_p^2 = 4\cdot10^{14}$ and
# $\tilde\mu_q^2/\tilde\sigma_q^2$ are subtracted from each other. One unit in the last place of $4\cdot10^{14}$ is
# $0.0625$, so the $O(1)$ result carries an error of a few hundredths — exactly the size of the effect being
# measured. Below: the literal Eq. 8 in float64 (transcribed here only to show the failure), the library's
# stable form, and Eq. 8 evaluated with 50 significant digits (`mpmath`), where the cancellation is harmless.

# %%
def naive_eq8(mu_q, s_q, mu_p=A, s_p=1e-6):
    """Paper Eq. 8 transcribed literally in float64 (for illustration only)."""
    sq2, sp2 = s_q**2, s_p**2
    st2 = 1.0 / (1.0 / sq2 + 1.0 / sp2)
    mt = st2 * (mu_q / sq2 + mu_p / sp2)
    z = lambda m, s: ndtr((B - m) / s) - ndtr((A - m) / s)
    return (np.log(z(mt, np.sqrt(st2)) * (B - A) / (z(mu_p, s_p) * z(mu_q, s_q)))
            + 0.5 * np.log(st2 / (2 * np.pi * sp2 * sq2)) - 0.5 * (mu_q**2 / sq2 + mu_p**2 / sp2 - mt**2 / st2))


def mp_eq8(mu_q, s_q, mu_p=A, s_p=1e-6, dps=50):
    """Paper Eq. 8 with `dps` significant digits."""
    with mp.workdps(dps):
        mu_q, s_q, mu_p, s_p = (mp.mpf(v) for v in (mu_q, s_q, mu_p, s_p))
        sq2, sp2 = s_q**2, s_p**2
        st2 = 1 / (1 / sq2 + 1 / sp2)
        mt = st2 * (mu_q / sq2 + mu_p / sp2)
        z = lambda m, s: mp.ncdf((B - m) / s) - mp.ncdf((A - m) / s)
        val = (mp.log(z(mt, mp.sqrt(st2)) * (B - A) / (z(mu_p, s_p) * z(mu_q, s_q)))
               + mp.log(st2 / (2 * mp.pi * sp2 * sq2)) / 2 - (mu_q**2 / sq2 + mu_p**2 / sp2 - mt**2 / st2) / 2)
        return float(val)


mp_points = [(-10.0, 5.0)] + [(float(m), float(s)) for m, s in zip(rng.uniform(-22, -2, n_mpmath - 1), rng.uniform(0.5, 6, n_mpmath - 1))]
lines = ["| (μ_q, σ_q) | naive float64 Eq. 8 | library (stable) | mpmath, 50 digits |", "|---|---|---|---|"]
worst_lib = worst_naive = 0.0
for mu_q, s_q in mp_points:
    naive, lib, ref = naive_eq8(mu_q, s_q), float(lib_delta_f_n(mu_q, s_q)), mp_eq8(mu_q, s_q)
    worst_lib, worst_naive = max(worst_lib, abs(lib - ref)), max(worst_naive, abs(naive - ref))
    lines.append(f"| ({mu_q:.2f}, {s_q:.2f}) | {naive:.4f} | {lib:.4f} | {ref:.4f} |")
display(Markdown("\n".join(lines)))
print(f"largest error of the naive float64 Eq. 8: {worst_naive:.3e} (expected: about 0.03, e.g. -1.5173 vs -1.4861 at (-10, 5))")
check("dF_N at sigma~_p = 1e-6: library vs 50-digit Eq. 8", worst_lib, 1e-9)

# %% [markdown]
# ### 3.4 The $2\pi$ of the released code
#
# The authors' code computes the second term as $\frac12\log\big(\tilde\sigma_q^2/(\sigma_q^2\tilde\sigma_p^2)\big)$, without
# the $2\pi$. So $\Delta F_\text{code} = \Delta F_\text{paper} + \frac12\log 2\pi \approx \Delta F_\text{paper} + 0.919$: the code prunes
# whenever $\Delta F_\text{paper} \ge -0.919$, more aggressively than Eq. 8. The library offers both
# (`include_2pi=True` is the default, the correct Eq. 8; paper-table reproductions use `include_2pi=False`).

# %%
grid_m = np.linspace(-24, 2, 9)
grid_s = np.exp(np.linspace(-5, 2, 8))
M, S = np.meshgrid(grid_m, grid_s)
paper_v = lib_delta_f_n(M.ravel(), S.ravel())
code_v = lib_delta_f_n(M.ravel(), S.ravel(), include_2pi=False)
show = [(m, s) for m, s in [(-20, 1.0), (-18, 2.0), (-15, 3.0), (-12, 5.0), (-5, 1.0), (0, math.exp(-5))]]
lines = ["| (μ, σ) | ΔF paper (Eq. 8) | ΔF code | paper prunes | code prunes |", "|---|---|---|---|---|"]
for m, s in show:
    p_, c_ = float(lib_delta_f_n(m, s)), float(lib_delta_f_n(m, s, include_2pi=False))
    lines.append(f"| ({m}, {s:.4g}) | {p_:.3f} | {c_:.3f} | {'yes' if p_ >= 0 else 'no'} | {'yes' if c_ >= 0 else 'no'} |")
display(Markdown("\n".join(lines)))
shift_err = np.abs(code_v - paper_v - 0.5 * math.log(2 * math.pi)) / np.maximum(1.0, np.abs(paper_v))
check("dF_code - dF_paper == log(2 pi)/2 on a grid (error / max(1, |dF|))", float(np.max(shift_err)), 1e-14)

# %% [markdown]
# ### 3.5 The limit $\tilde\sigma_p \to 0$: a Savage–Dickey density ratio
#
# With $\tilde\mu_p = A$: $\tilde Z_p = \Phi\big((B-A)/\tilde\sigma_p\big) - \Phi(0) \to \frac12$; $\tilde\mu_q \to A$ and
# $(A-\tilde\mu_q)/\tilde\sigma_q = -\tilde\sigma_q(\mu_q - A)/\sigma_q^2 \to 0$, so $\tilde Z_q \to \frac12$; and $S \to \sigma_q^2$. Therefore
# $$\Delta F_N \;\to\; \log\Big[(B-A)\,\frac{\mathcal N(A\mid\mu_q,\sigma_q^2)}{Z_q}\Big] = \log\frac{q_x(A)}{p_x(A)},$$
# the log **Savage–Dickey ratio**: the posterior density of $x = \log\theta$ at the lower bound divided by the flat
# prior's density $1/(B-A) = 1/20$. BMRS$_N$ prunes a unit when its posterior puts more density at
# $\log\theta = -20$ than the prior does (with the code's variant: more than $1/\sqrt{2\pi}\approx 0.399$ times the prior's).
#
# How close is $\tilde\sigma_p = 10^{-6}$ to the limit? The leading correction is $\log(2\tilde Z_q) \approx \sqrt{2/\pi}\,\varepsilon$ with
# $\varepsilon = \tilde\sigma_p\,|\mu_q - A|/\sigma_q^2$: tiny for trained units, but for the very narrow posteriors of the
# initialisation ($\sigma_q = e^{-5}$, $\mu_q = 0$) $\varepsilon \approx 0.4$ — there $\Delta F_N \approx -5\cdot10^6$, so the decision is the
# same. Check: the library at $\tilde\sigma_p = 10^{-6}$ against $\log[(B-A)\,q_x(A)]$ from scipy wherever $\varepsilon \le 10^{-4}$,
# and the convergence as $\tilde\sigma_p$ shrinks.

# %%
sd_worst, n_in_limit = 0.0, 0
for m, s in zip(M.ravel(), S.ravel()):
    if 1e-6 * abs(m - A) / s**2 > 1e-4:  # sigma~_p = 1e-6 is not yet "in the limit" for this (mu, sigma)
        continue
    n_in_limit += 1
    sd = LOG_W + float(ref_log_q(A, m, s))
    sd_worst = max(sd_worst, abs(float(lib_delta_f_n(m, s)) - sd))
for s_p in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6]:
    print(f"sigma~_p = {s_p:.0e}: dF_N(-15, 3) = {float(lib_delta_f_n(-15.0, 3.0, s_p=s_p)):.8f}")
print(f"Savage-Dickey limit log[(B-A) q_x(A)] at (-15, 3):   {LOG_W + float(ref_log_q(A, -15.0, 3.0)):.8f}")
check(f"dF_N(sigma~_p = 1e-6) vs Savage-Dickey log[(B-A) q_x(A)] on {n_in_limit} grid points with eps <= 1e-4", sd_worst, 1e-4)

# %% [markdown]
# ## 4. BMRS$_U$: a narrower log-uniform reduced prior
#
# **Reduced prior** (paper Eq. 9, 14): $\tilde p(\theta) = \mathrm{LogU}_{[a',b']}(\theta)$ with $[a',b'] \subset [a,b]$; in $x$ it is
# uniform on $[A', B'] = [\log a', \log b']$, so $\tilde p_x/p_x = (B-A)/(B'-A')$ on $[A',B']$ and $0$ elsewhere. Then
# $$e^{\Delta F_U} = \frac{B-A}{B'-A'}\int_{A'}^{B'} q_x(x)\,dx
#   = \frac{\log(b/a)}{\log(b'/a')}\;q(a' \le \theta \le b'),\qquad
#   q(a'\le\theta\le b') = \frac{\Phi\big(\frac{B'-\mu}{\sigma}\big) - \Phi\big(\frac{A'-\mu}{\sigma}\big)}{Z},$$
# exact — no approximation beyond BMR itself (paper Eq. 10). **Prune iff** $q(a'\le\theta\le b') \ge \log(b'/a')/\log(b/a)$,
# the *prior's* mass of the interval (Eq. 11, 15): prune when the posterior concentrates on $[a', b']$ more
# than the prior does. Note $\Delta F_U \le \log\frac{B-A}{B'-A'}$ (all mass inside).
#
# **Floating-point motivation.** A binary mantissa with $p$ bits resolves $2^{-p}$; mantissae are roughly
# log-uniform (Hamming 1970). The reduced prior LogU$[2^{-p_2}, 2^{-p_1}]$ says "$\theta$ is below the precision
# $2^{-p_1}$ that matters but above single precision's $2^{-23}$": $p_2 = 23$, $A' = -23\ln 2 = -15.942$,
# $B' = -p_1\ln 2$; BMRS$_U$-$p_1$ uses $p_1 \in \{8, 4\}$. The threshold is $(23 - p_1)\ln 2/20$:

# %%
hand_thresholds = {16: 0.2426, 12: 0.3812, 11: 0.4159, 8: 0.5199, 6: 0.5892, 4: 0.6585, 2: 0.7278, 1: 0.7625}
lib_thresholds = {p1: R.bmrs_u_threshold(p1) for p1 in hand_thresholds}
display(Markdown("\n".join([
    "| p1 | " + " | ".join(str(p) for p in hand_thresholds) + " |",
    "|---|" + "---|" * len(hand_thresholds),
    "| library `bmrs_u_threshold` | " + " | ".join(f"{lib_thresholds[p]:.4f}" for p in hand_thresholds) + " |",
    "| $(23 - p_1)\\ln 2/20$ by hand | " + " | ".join(f"{v:.4f}" for v in hand_thresholds.values()) + " |",
])))
check("BMRS_U thresholds vs the 4-decimal hand table", max(abs(lib_thresholds[p] - v) for p, v in hand_thresholds.items()), 5.1e-5)

# %% [markdown]
# Checks of $\Delta F_U$ (`bmrs.core.reduction.delta_f_bmrs_u`, exact, without the released code's clamp of $\mu$ to
# $[A, B]$): against `quad` of the general BMR integral $\log\int_A^B q_x\,\tilde p_x/p_x\,dx$ (breakpoints at $A', B'$);
# against Monte Carlo ($(B-A)/(B'-A')$ times the fraction of draws in $[A', B']$); and the equivalence of the two
# forms of the rule ($\Delta F_U \ge 0 \iff$ mass $\ge$ threshold) on the figure's grid.

# %%
worst_q = worst_se = 0.0
for p1 in (8, 4):
    lo, hi = -23 * math.log(2), -p1 * math.log(2)
    ratio = (B - A) / (hi - lo)
    points = zip(rng.uniform(-25, 5, n_quad), np.exp(rng.uniform(math.log(0.1), math.log(8), n_quad)))
    for mu, s in progress(points, n_quad, f"dF_U-{p1} vs quad"):
        # log int_A^B q_x p~_x/p_x dx, the integrand scaled by its maximum (at clip(mu, A', B'))
        peak = min(max(mu, lo), hi)
        c = float(ref_log_q(peak, mu, s)) + math.log(ratio)
        integrand = lambda x: math.exp(ref_log_q(x, mu, s) + math.log(ratio) - c) if lo <= x <= hi else 0.0
        ref = c + math.log(quad(integrand, A, B, points=(lo, hi, peak)))
        lib = R.delta_f_bmrs_u(t64(mu), t64(s), p1=p1).item()
        worst_q = max(worst_q, abs(ref - lib) / max(1.0, abs(ref)))
    done = 0
    while done < n_mc_points:
        mu, s = rng.uniform(-22, 0), rng.uniform(0.5, 8)
        exact = R.delta_f_bmrs_u(t64(mu), t64(s), p1=p1).item()
        if exact < math.log(0.01 * ratio):  # need >= 1 % of the mass inside for a useful estimate
            continue
        x = sample_x(mu, s, n_mc)
        est = ratio * float(np.mean((x >= lo) & (x <= hi)))
        mass = math.exp(exact) / ratio  # q-mass of [A', B'] according to the library
        se = ratio * math.sqrt(max(mass * (1 - mass), 1e-12) / n_mc)  # binomial standard error under the library's value
        worst_se = max(worst_se, abs(est - math.exp(exact)) / se)
        done += 1
check("dF_U (p1 = 8, 4): library vs quad (error / max(1, |dF|))", worst_q, 1e-9)
check("dF_U (p1 = 8, 4): library vs Monte Carlo", worst_se, mc_max_se, " SE")

# %% [markdown]
# ## 5. The KL term, $\mathbb E[\theta]$ and the SNR
#
# **KL** (the KL term of paper Eq. 2–3). $\mathrm{KL}[q\,\|\,p] = \mathbb E_q[\log q_x - \log p_x] = \log(B-A) - H[q_x]$. With $z = (x-\mu)/\sigma$,
# $\log q_x = -\frac12\log(2\pi\sigma^2) - \log Z - z^2/2$, and integrating by parts
# ($\int_\alpha^\beta z^2\varphi\,dz = [-z\varphi]_\alpha^\beta + \int_\alpha^\beta\varphi\,dz$) gives $\mathbb E[z^2] = 1 + (\alpha\varphi(\alpha) - \beta\varphi(\beta))/Z$. So
# $$\mathrm{KL}[q\,\|\,p] = \log(B-A) - \log\sigma - \log Z - \tfrac12\log(2\pi e) - \frac{\alpha\varphi(\alpha) - \beta\varphi(\beta)}{2Z}.$$
#
# **Moments** (E[θ] and the SNR of Neklyudov et al. 2017). $e^{kx}\,\mathcal N(x\mid\mu,\sigma^2) = e^{k\mu + k^2\sigma^2/2}\,\mathcal N(x\mid\mu + k\sigma^2,\sigma^2)$ (complete the
# square), and the shifted normal's mass on $[A,B]$ is $\Phi(\beta - k\sigma) - \Phi(\alpha - k\sigma) = \Phi(k\sigma-\alpha) - \Phi(k\sigma-\beta)$:
# $$\mathbb E[\theta] = e^{\mu+\sigma^2/2}\,\frac{\Phi(\sigma-\alpha) - \Phi(\sigma-\beta)}{Z},\qquad
#   \mathbb E[\theta^2] = e^{2\mu+2\sigma^2}\,\frac{\Phi(2\sigma-\alpha) - \Phi(2\sigma-\beta)}{Z},\qquad
#   \mathrm{SNR} = \frac{\mathbb E[\theta]}{\sqrt{\mathbb E[\theta^2] - \mathbb E[\theta]^2}}.$$
#
# Checks: `kl_log_uniform`, `expected_theta`, `var_theta` and `snr` against `quad` of the defining integrals
# ($\int q_x\log(q_x/p_x)$, $\int e^{x}q_x$, $\int (e^{x} - \mathbb E\theta)^2 q_x$) and against Monte Carlo. The Monte Carlo SNR is only
# trustworthy for moderate $\sigma$: the sample variance of $\theta = e^x$ has a variance growing like $e^{4\sigma^2}$, so
# for $\sigma \gtrsim 2$ it is underestimated at any practical sample size and the sample SNR is biased upwards.

# %%
def quad_moments(mu, s):
    c = min(max(mu, A), B)
    pts = (c, c - 5 * s, c + 5 * s)
    q = lambda x: math.exp(ref_log_q(x, mu, s))
    kl = quad(lambda x: q(x) * (ref_log_q(x, mu, s) + LOG_W), A, B, pts)
    e1 = quad(lambda x: math.exp(x) * q(x), A, B, pts)
    var = quad(lambda x: (math.exp(x) - e1) ** 2 * q(x), A, B, pts)  # central form: no E2 - E1^2 cancellation
    return kl, e1, var


mus, sigmas = rng.uniform(-23, 3, n_quad), np.exp(rng.uniform(math.log(0.05), math.log(5), n_quad))
lib = {name: fn(t64(mus), t64(sigmas)).numpy() for name, fn in
       [("kl", D.kl_log_uniform), ("e", D.expected_theta), ("var", D.var_theta), ("snr", D.snr)]}
err = {"kl": 0.0, "e": 0.0, "var": 0.0, "snr": 0.0}
for i, (mu, s) in enumerate(progress(zip(mus, sigmas), n_quad, "KL, E, Var, SNR vs quad")):
    kl, e1, var = quad_moments(mu, s)
    err["kl"] = max(err["kl"], abs(kl - lib["kl"][i]))
    err["e"] = max(err["e"], abs(e1 / lib["e"][i] - 1))
    err["var"] = max(err["var"], abs(var / lib["var"][i] - 1))
    err["snr"] = max(err["snr"], abs(e1 / math.sqrt(var) / lib["snr"][i] - 1))
check("KL: library vs quad (absolute)", err["kl"], 1e-9)
check("E[theta]: library vs quad (relative)", err["e"], 1e-9)
check("Var[theta]: library vs quad (relative)", err["var"], 1e-9)
check("SNR: library vs quad (relative)", err["snr"], 1e-9)

# %%
worst = {"kl": 0.0, "e": 0.0, "snr": 0.0}
for mu, s in zip(rng.uniform(-22, 0, n_mc_points), rng.uniform(0.3, 4, n_mc_points)):
    x = sample_x(mu, s, n_mc)
    kl_est, kl_se = mc_mean(ref_log_q(x, mu, s) + LOG_W)
    e_est, e_se = mc_mean(np.exp(x))
    worst["kl"] = max(worst["kl"], abs(kl_est - D.kl_log_uniform(t64(mu), t64(s)).item()) / kl_se)
    worst["e"] = max(worst["e"], abs(e_est - D.expected_theta(t64(mu), t64(s)).item()) / e_se)
# The sample SNR needs the sample variance of theta, whose own variance grows like exp(4 sigma^2): for
# sigma >~ 2 it is underestimated at any practical n (SNR biased upwards), so the SNR is checked by MC
# only for sigma <= 1.2; the quad check above covers the rest.
for mu, s in zip(rng.uniform(-22, 0, n_mc_points), rng.uniform(0.2, 1.2, n_mc_points)):
    snr_est, snr_se = jackknife(np.exp(sample_x(mu, s, n_mc)), lambda v: v.mean() / v.std())
    worst["snr"] = max(worst["snr"], abs(snr_est - D.snr(t64(mu), t64(s)).item()) / snr_se)
check("KL: library vs Monte Carlo", worst["kl"], mc_max_se, " SE")
check("E[theta]: library vs Monte Carlo", worst["e"], mc_max_se, " SE")
check("SNR: library vs Monte Carlo, sigma <= 1.2 (jackknife standard error)", worst["snr"], mc_max_se, " SE")

# %% [markdown]
# ### 5.1 Far tails
#
# The textbook forms above divide tiny normalisers by each other: for $\mu = 1000$, $\sigma = e^{-20}$ both $Z$ and
# $\Phi(\sigma-\alpha)-\Phi(\sigma-\beta)$ are about $e^{-10^{23}}$ and underflow to $0/0$. The library writes every
# log-normaliser as $-m^2/2 + s$ and cancels the huge $m^2/2$ parts *algebraically*; see the module docstrings
# (printed below) of `bmrs.core.distributions` and `bmrs.core.special`. Check: the library against the textbook forms
# in 80-digit `mpmath` at extreme points, including the training initialisation $(\mu, \log\sigma) = (0, -5)$.

# %%
print(D.__doc__[D.__doc__.index("How they are evaluated"):].split("The functions validate")[0])
print(bmrs.core.special.__doc__.split("The building blocks are")[1].split("All functions")[0])


def mp_reference(mu, s, dps=80):
    """Textbook KL and E[theta] (section 5 above) with `dps` digits; Phi differences taken on the small-tail side."""
    with mp.workdps(dps):
        mu, s = mp.mpf(mu), mp.mpf(s)
        al, be = (A - mu) / s, (B - mu) / s
        mass = lambda lo, hi: mp.ncdf(-lo) - mp.ncdf(-hi) if lo > 0 else mp.ncdf(hi) - mp.ncdf(lo)
        z = mass(al, be)
        kl = mp.log(B - A) - mp.log(s) - mp.log(z) - mp.log(2 * mp.pi * mp.e) / 2 - (al * mp.npdf(al) - be * mp.npdf(be)) / (2 * z)
        log_e = mu + s**2 / 2 + mp.log(mass(al - s, be - s)) - mp.log(z)
        return float(kl), float(log_e)


extreme = [(1000.0, math.exp(-20)), (-1000.0, math.exp(-20)), (-10.0, math.exp(-20)), (0.0, math.exp(-5)),
           (50.0, 1.0), (-60.0, 2.0), (-20.0, math.exp(5))]
lines = ["| (μ, σ) | naive E[θ] (float64) | library E[θ] | library KL | mpmath KL |", "|---|---|---|---|---|"]
worst_kl = worst_le = 0.0
with np.errstate(all="ignore"):
    for mu, s in extreme:
        al, be = (A - mu) / s, (B - mu) / s
        naive = math.exp(mu + s * s / 2) * (ndtr(s - al) - ndtr(s - be)) / (ndtr(be) - ndtr(al)) if mu + s * s / 2 < 700 else float("nan")
        kl_ref, log_e_ref = mp_reference(mu, s)
        kl_lib, log_e_lib = D.kl_log_uniform(t64(mu), t64(s)).item(), D.log_expected_theta(t64(mu), t64(s)).item()
        worst_kl = max(worst_kl, abs(kl_lib - kl_ref) / max(1.0, abs(kl_ref)))
        worst_le = max(worst_le, abs(log_e_lib - log_e_ref))
        lines.append(f"| ({mu:g}, {s:.3g}) | {naive:.4g} | {math.exp(log_e_lib):.6g} | {kl_lib:.6g} | {kl_ref:.6g} |")
display(Markdown("\n".join(lines)))
check("far tails: KL vs 80-digit mpmath (error / max(1, |KL|))", worst_kl, 1e-10)
check("far tails: log E[theta] vs 80-digit mpmath", worst_le, 1e-10)

# %% [markdown]
# ## 6. Decision boundaries
#
# $\Delta F_N$ (left) and $\Delta F_U$ with $p_1 = 8$ (right) over the variational parameters $(\mu, \log\sigma)$, with the
# pruning boundaries $\Delta F = 0$ of all four rules: BMRS$_N$ as in Eq. 8 and as in the released code, BMRS$_U$-8 and
# BMRS$_U$-4. A unit is pruned on the side where $\Delta F \ge 0$ (red). The cross marks the initialisation
# $(\mu, \log\sigma) = (0, -5)$. BMRS$_N$'s region hugs the lower bound $\mu \approx -20$ and widens with $\sigma$ (more
# posterior density at $A$); BMRS$_U$ prunes whenever enough mass lies in $[2^{-23}, 2^{-p_1}]$, including posteriors
# that are *narrow* around $\theta \approx 2^{-12}$, which BMRS$_N$ keeps — the two criteria rank units differently
# (paper Figures 3, 6, 7).

# %%
mu_axis = np.linspace(-28, 4, grid_mu)
ls_axis = np.linspace(-5.5, 2.5, grid_log_sigma)
MU, LS = np.meshgrid(mu_axis, ls_axis)
mu_t, sig_t = t64(MU.ravel()), t64(np.exp(LS.ravel()))
fields = {
    "BMRS$_N$ (Eq. 8)": R.delta_f_bmrs_n(mu_t, sig_t).numpy().reshape(MU.shape),
    "BMRS$_N$ (released code)": R.delta_f_bmrs_n(mu_t, sig_t, include_2pi=False).numpy().reshape(MU.shape),
    "BMRS$_U$-8": R.delta_f_bmrs_u(mu_t, sig_t, p1=8).numpy().reshape(MU.shape),
    "BMRS$_U$-4": R.delta_f_bmrs_u(mu_t, sig_t, p1=4).numpy().reshape(MU.shape),
}
# the two forms of the BMRS_U rule agree on the whole grid: dF_U >= 0 from the library versus the q-mass of
# [A', B'] (scipy) >= the threshold; points within 1e-9 of the boundary are not counted (rounding ties)
disagree = 0
for p1 in (8, 4):
    lo, hi = -23 * math.log(2), -p1 * math.log(2)
    log_mass = np.vectorize(lambda m, s: ref_log_z(m, s, lo, hi) - ref_log_z(m, s))(MU, np.exp(LS))
    margin = log_mass - math.log(R.bmrs_u_threshold(p1))
    field = fields[f"BMRS$_U$-{p1}"]
    clear = np.abs(margin) > 1e-9
    disagree += int(np.sum((field[clear] >= 0) != (margin[clear] >= 0)))
check("BMRS_U rule: (dF_U >= 0) == (q-mass >= threshold) on the figure grid (disagreements)", float(disagree), 0.0)

styles = {"BMRS$_N$ (Eq. 8)": ("k", "-"), "BMRS$_N$ (released code)": ("k", "--"),
          "BMRS$_U$-8": ("C2", "-"), "BMRS$_U$-4": ("C2", ":")}
fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True, constrained_layout=True)
norm = TwoSlopeNorm(vmin=-10, vcenter=0, vmax=2)
for ax, key in zip(axes, ["BMRS$_N$ (Eq. 8)", "BMRS$_U$-8"]):
    im = ax.pcolormesh(MU, LS, np.clip(fields[key], -10, 2), cmap="RdBu_r", norm=norm, shading="auto", rasterized=True)
    for name, (color, ls) in styles.items():
        ax.contour(MU, LS, fields[name], levels=[0.0], colors=color, linestyles=ls, linewidths=1.6)
    ax.axvline(A, color="0.4", lw=0.8, ls="-.")
    ax.plot([0], [-5], marker="x", color="k", ms=8)
    ax.set_title(rf"$\Delta F$ of {key} (color), all pruning boundaries $\Delta F = 0$ (lines)", fontsize=9)
    ax.set_xlabel(r"$\mu$ (posterior location of $\log\theta$)")
axes[0].set_ylabel(r"$\log\sigma$")
fig.colorbar(im, ax=axes, label=r"$\Delta F$ (clipped to $[-10, 2]$; $\geq 0$: prune)", shrink=0.9)
handles = [Line2D([], [], color=c, ls=ls, lw=1.6, label=n) for n, (c, ls) in styles.items()]
handles.append(Line2D([], [], color="k", marker="x", ls="none", label=r"init $(0, -5)$"))
axes[1].legend(handles=handles, fontsize=7, loc="upper right", framealpha=0.9)
paths = save_figure(fig, "bmrs_decision_boundaries", profile=profile, directory=figures_dir)
print("saved", *paths)
plt.show()

# %% [markdown]
# ## 7. Figure 1, middle panel: the priors
#
# Left: the paper's panel — the original log-uniform prior and an illustrative reduced prior (truncated
# log-normal, $\mu = -20$, $\sigma = 10$), as **densities over $\theta$** on a log-scaled $\theta$ axis, $y$ cut at 0–5 (no
# $y$ ticks, as in the paper). Because $p(\theta) = p_x(\log\theta)/\theta$, both rise steeply as $\theta \to e^{-20}$ even
# though LogU is flat in $\log\theta$. Right (saved separately): the same priors and the two reduced priors BMRS
# actually uses, as **densities over $\log\theta$** — on a log-scaled axis these are the curves whose areas are
# probabilities. BMRS$_N$'s near-Dirac at $\log\theta = -20$ is drawn as a spike; BMRS$_U$-8 and -4 are flat on
# $[2^{-23}, 2^{-p_1}]$ at heights $1/((23-p_1)\ln 2)$.

# %%
fig, ax = plt.subplots(figsize=(4.2, 3.0), constrained_layout=True)
plot_priors(ax)
paths = save_figure(fig, "fig1_priors", profile=profile, directory=figures_dir)
print("saved", *paths)
plt.show()

fig, ax = plt.subplots(figsize=(6.0, 3.4), constrained_layout=True)
plot_priors(ax, variable="log_theta", show_bmrs=True)
paths = save_figure(fig, "fig1_priors_bmrs", profile=profile, directory=figures_dir)
print("saved", *paths)
plt.show()

# %% [markdown]
# ## Summary of the checks

# %%
lines = ["| check | largest error | tolerance | ok |", "|---|---|---|---|"]
for c in CHECKS:
    lines.append(f"| {c['check'].replace('|', chr(92) + '|')} | {c['largest error']:.3e}{c['unit']} | {c['tolerance']:.1e}{c['unit']} | {'✓' if c['ok'] else '✗'} |")
display(Markdown("\n".join(lines)))
assert all(c["ok"] for c in CHECKS)
print(f"{len(CHECKS)} checks passed in {time.perf_counter() - t_start:.1f} s (profile {profile})")
