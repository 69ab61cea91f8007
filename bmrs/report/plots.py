"""Figures of the project: saving with a profile stamp and deterministic bytes, and plot helpers.

Every figure of the project is written through :func:`save_figure`, which prints the profile that
made it ("profile: quick") in a corner and writes PNG + PDF with fixed dpi and without time stamps or
version strings in the metadata, so that re-running a profile reproduces the files byte for byte.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch

from bmrs.util.atomic import atomic_path
from bmrs.core.distributions import DEFAULT_A, DEFAULT_B, log_normalizer

#: Raster resolution of every PNG the project writes.
FIGURE_DPI = 200
#: gid of the profile stamp text, so that saving a figure twice replaces rather than duplicates it.
PROFILE_STAMP_GID = "bmrs-profile-stamp"
PNG_METADATA: dict[str, str | None] = {"Software": None}
PDF_METADATA: dict[str, str | None] = {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None}



def stamp_profile(fig: Figure, profile: str) -> None:
    """Write "profile: <name>" in small grey text at the lower right, just below everything already drawn
    (so it never covers an axis label; the tight bounding box of :func:`save_figure` takes it in).
    Idempotent: an earlier stamp is replaced."""
    for text in list(fig.texts):
        if text.get_gid() == PROFILE_STAMP_GID:
            text.remove()
    bbox = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    fig.text(bbox.x1 / width, bbox.y0 / height - 0.004, f"profile: {profile}", ha="right", va="top", fontsize=6,
             color="0.45", gid=PROFILE_STAMP_GID)


def save_figure(fig: Figure, stem: str, *, profile: str, directory: str | os.PathLike[str] = "figures") -> list[Path]:
    """Save ``fig`` as ``<directory>/<stem>.png`` and ``<directory>/<stem>.pdf``; return both paths.

    * The profile that produced the figure is stamped on it (:func:`stamp_profile`).
    * The bytes are deterministic: PNG without the "Software" entry, PDF without creation/modification
      dates, producer and creator, fixed dpi (:data:`FIGURE_DPI`), tight bounding box.
    * The directory is created if needed; each file is written to a temporary file in the same
      directory and moved into place with ``os.replace``, so a reader never sees a half-written figure.
    """
    if not isinstance(profile, str) or not profile.strip():
        raise ValueError(f"profile must be the non-empty name of the profile that made the figure; got {profile!r}")
    if not stem or Path(stem).name != stem or Path(stem).suffix in {".png", ".pdf"}:
        raise ValueError(f"stem must be a bare file name without directory or extension (e.g. 'fig1_priors'); got {stem!r}")
    out_dir = Path(directory)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_profile(fig, profile)
    written: list[Path] = []
    for fmt, metadata in (("png", PNG_METADATA), ("pdf", PDF_METADATA)):
        target = out_dir / f"{stem}.{fmt}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=fmt, dpi=FIGURE_DPI, metadata=metadata, bbox_inches="tight", pad_inches=0.05)
        written.append(target)
    return written


# --------------------------------------------------------------------------------------------------
# Figure 1, middle panel: the priors
# --------------------------------------------------------------------------------------------------

def truncated_normal_log_density(x: np.ndarray, mu: float, sigma: float, a: float, b: float) -> np.ndarray:
    """log of the N(mu, sigma²) density truncated to [a, b], evaluated at x (−inf outside [a, b]).

    The normaliser comes from :func:`bmrs.core.distributions.log_normalizer` (stable in the far tails).
    """
    log_z = float(log_normalizer(float(mu), float(sigma), a=a, b=b))
    x = np.asarray(x, dtype=np.float64)
    out = -0.5 * ((x - mu) / sigma) ** 2 - math.log(sigma) - 0.5 * math.log(2.0 * math.pi) - log_z
    return np.where((x >= a) & (x <= b), out, -np.inf)


def _tex_number(value: float) -> str:
    """1e-06 -> 10^{-6}, 0.5 -> 0.5 (for legend labels in math mode)."""
    mantissa, exponent = f"{value:.0e}".split("e")
    if float(value) == float(f"{value:.0e}") and abs(int(exponent)) >= 3:
        return (f"{mantissa} \\cdot " if mantissa != "1" else "") + f"10^{{{int(exponent)}}}"
    return f"{value:g}"


def _log_ticks(ax: Axes, a: float, b: float) -> None:
    step = max(1, int(round((b - a) / 4)))
    ks = np.arange(math.ceil(a), math.floor(b) + 1)
    ks = ks[(ks - math.floor(b)) % step == 0]
    ax.set_xticks(np.exp(ks.astype(float)))
    ax.set_xticklabels([f"$e^{{{int(k)}}}$" if k != 0 else "$1$" for k in ks])
    ax.minorticks_off()


def plot_priors(
    ax: Axes,
    a: float = DEFAULT_A,
    b: float = DEFAULT_B,
    reduced_mu: float = -20.0,
    reduced_sigma: float = 10.0,
    *,
    variable: Literal["theta", "log_theta"] = "theta",
    show_bmrs: bool = False,
    p1_values: Sequence[float] = (8, 4),
    p2: float = 23,
    bmrs_n_sigma: float = 1e-6,
    ylim: tuple[float, float] | None = None,
    n_points: int = 2001,
    legend: bool = True,
) -> Axes:
    """Draw the original and reduced priors of one noise variable θ on a log-scaled θ axis.

    This is the middle panel of the paper's Figure 1: the original prior
    LogU_[e^a, e^b] (solid) and an *illustrative* reduced prior, the truncated log-normal
    LogN_[e^a, e^b](θ | reduced_mu, reduced_sigma²) with μ = −20, σ = 10 (dashed, filled). The x axis
    is θ on a log scale from e^a to e^b.

    **Which density is drawn.** Let x = log θ. A density over x, p_x(x), and the density of the same
    distribution over θ are related by the Jacobian |dx/dθ| = 1/θ:

        p_θ(θ) = p_x(log θ) / θ.

    * LogU is *flat in x*: p_x(x) = 1/(b − a) (= 0.05 for [−20, 0]), but p_θ(θ) = 1/(θ (b − a)),
      which grows like 1/θ and reaches e^20/20 ≈ 2.4·10⁷ at θ = e^−20.
    * The truncated log-normal is a truncated *normal* in x, p_x(x) = N(x | μ, σ²)/Z, and
      p_θ(θ) = N(log θ | μ, σ²)/(Z θ).

    ``variable="theta"`` (default, the paper's panel) plots p_θ(θ) against θ, with the y axis cut at
    0–5 and no y ticks as in the paper: both curves rise steeply towards small θ and leave the plot
    near θ ≈ 0.01, which is the picture of the paper (p_x = 0.05 would be invisible on a 0–5 axis).
    Note that on a log-scaled θ axis the area under p_θ is *not* probability.

    ``variable="log_theta"`` plots p_x(log θ) against the same log-scaled θ axis. Because the axis is
    linear in x, areas under these curves *are* probabilities, so this variant compares the priors
    faithfully: LogU is a flat line at 1/(b − a), the reduced log-normal a half-bell at the lower bound.

    ``show_bmrs=True`` overlays the two reduced priors BMRS actually uses (the one behind Eq. 8, and that of Eq. 9):

    * BMRS_N: p̃ = LogN(μ̃_p = a, σ̃_p = ``bmrs_n_sigma`` = 1e−6), a near-Dirac at log θ = a. Its
      density (≈ 8·10⁵ over x, ≈ 8·10⁵·e^20 over θ) cannot be drawn to scale; it is shown as a vertical
      spike with an arrow head at θ = e^a (mass ≈ 1 at the lower bound). The x range is widened slightly
      to the left so that the spike is not hidden by the axis.
    * BMRS_U-p1: p̃ = LogU on [2^−p2, 2^−p1] for each p1 in ``p1_values`` (p2 = 23), i.e. flat at
      1/((p2 − p1) ln 2) over x, or 1/(θ (p2 − p1) ln 2) over θ (on the θ scale these mostly exceed
      the paper's y limit of 5 and are clipped; the ``log_theta`` variant shows them in full).

    ylim defaults to (0, 5) for "theta" and, for "log_theta", leaves room above the tallest curve
    for the legend. The
    function draws into ``ax`` and returns it; it does not save anything.
    """
    if variable not in ("theta", "log_theta"):
        raise ValueError(f"variable must be 'theta' (density over θ, the paper's panel) or 'log_theta'; got {variable!r}")
    if not a < b:
        raise ValueError(f"need a < b (log-space bounds); got a={a}, b={b}")
    over_theta = variable == "theta"
    x = np.linspace(a, b, int(n_points))
    theta = np.exp(x)
    jac = -x if over_theta else np.zeros_like(x)  # log|dx/dθ| = −log θ for the density over θ

    def to_plot(log_px: np.ndarray) -> np.ndarray:
        return np.exp(log_px + jac)

    curves: list[np.ndarray] = []
    prior = to_plot(np.full_like(x, -math.log(b - a)))
    curves.append(prior)
    ax.plot(theta, prior, color="C0", lw=1.8, ls="-",
            label=rf"original prior LogU$[e^{{{a:g}}}, e^{{{b:g}}}]$")
    reduced = to_plot(truncated_normal_log_density(x, reduced_mu, reduced_sigma, a, b))
    curves.append(reduced)
    ax.plot(theta, reduced, color="C1", lw=1.8, ls="--",
            label=rf"reduced prior LogN($\mu={reduced_mu:g}, \sigma={reduced_sigma:g}$)")
    ax.fill_between(theta, 0.0, reduced, color="C1", alpha=0.25, lw=0)

    left = a
    if show_bmrs:
        left = a - 0.03 * (b - a)
        spike_x = math.exp(a)
        ax.vlines(spike_x, 0.0, 0.96, transform=ax.get_xaxis_transform(), color="C3", lw=2.0,
                  label=rf"BMRS$_N$: LogN($\tilde\mu_p={a:g}, \tilde\sigma_p={_tex_number(bmrs_n_sigma)}$) (near-Dirac)")
        ax.plot([spike_x], [0.96], marker="^", ms=7, color="C3", transform=ax.get_xaxis_transform(), clip_on=False)
        for k, p1 in enumerate(p1_values):
            lo, hi = -float(p2) * math.log(2.0), -float(p1) * math.log(2.0)
            inside = (x >= lo) & (x <= hi)
            xs = np.concatenate([[lo], x[inside], [hi]])
            log_px = np.full_like(xs, -math.log(hi - lo))
            ys = np.exp(log_px + (-xs if over_theta else 0.0))
            curves.append(ys)
            color = f"C{4 + k}"
            ax.plot(np.exp(np.concatenate([[lo], xs, [hi]])), np.concatenate([[0.0], ys, [0.0]]),
                    color=color, lw=1.5, ls=(0, (1, 1)) if k % 2 else "-.",
                    label=rf"BMRS$_U$-{p1:g}: LogU$[2^{{-{p2:g}}}, 2^{{-{p1:g}}}]$")

    ax.set_xscale("log")
    ax.set_xlim(math.exp(left), math.exp(b))
    _log_ticks(ax, a, b)
    ax.set_xlabel(r"$\theta$ (log scale)")
    if over_theta:
        ax.set_ylim(*(ylim or (0.0, 5.0)))
        ax.set_yticks([])
        ax.set_ylabel(r"density over $\theta$")
    else:
        top = max(float(np.max(c[np.isfinite(c)])) for c in curves)
        ax.set_ylim(*(ylim or (0.0, (1.9 if show_bmrs else 1.4) * top)))
        ax.set_ylabel(r"density over $\log\theta$")
    if legend:
        ax.legend(fontsize=7, loc="upper right", frameon=True, framealpha=0.9, edgecolor="none")
    return ax


# --------------------------------------------------------------------------------------------------
# Figure 1: E[θ] of the units before and after pruning, around the priors panel
# --------------------------------------------------------------------------------------------------

def plot_expected_theta_hist(ax: Axes, values: Sequence[float] | np.ndarray, *, bins: int = 20, color: str = "C0",
                             kde: bool = True, label: str | None = None) -> Axes:
    """Histogram of E[θ] values with ``bins`` equal bins on [0, 1] (counts of units) and a Gaussian KDE
    scaled to the same counts (as seaborn's ``histplot(kde=True)``; the paper's Figure 1 panels). The
    KDE is skipped when it is undefined (fewer than two distinct values)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    ax.hist(x, bins=edges, color=color, alpha=0.5, edgecolor="white", linewidth=0.6, label=label)
    if kde and x.size >= 2 and np.ptp(x) > 0:
        from scipy.stats import gaussian_kde  # deferred: only the density panel needs it

        try:
            density = gaussian_kde(x)
        except np.linalg.LinAlgError:
            density = None
        if density is not None:
            grid = np.linspace(0.0, 1.0, 401)
            ax.plot(grid, density(grid) * x.size / int(bins), color=color, lw=1.6)
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(r"$\mathbb{E}[\theta]$")
    ax.set_ylabel("units")
    return ax


def plot_figure1(expected_theta: Sequence[float] | np.ndarray, kept: Sequence[bool] | np.ndarray, *, bins: int = 20,
                 method_label: str = r"BMRS$_N$", figsize: tuple[float, float] = (11.0, 3.2)) -> Figure:
    """The paper's Figure 1 from one trained network's units: left, E[θ] of every noise variable
    (histogram, ``bins`` bins on [0, 1], with KDE); middle, the original and an illustrative reduced prior
    (:func:`plot_priors`); right, E[θ] of the units that the method kept (mask = 1). Arrows between the
    panels read "Calculate ΔF" and "Prune ΔF ≥ 0". Both histograms share the y axis."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    e = np.asarray(expected_theta, dtype=np.float64)
    keep = np.asarray(kept, dtype=bool)
    if e.shape != keep.shape:
        raise ValueError(f"expected_theta and kept must have the same length; got {e.shape} and {keep.shape}")
    fig, axes = plt.subplots(1, 3, figsize=figsize, gridspec_kw=dict(wspace=0.6))
    plot_expected_theta_hist(axes[0], e, bins=bins, color="C0")
    axes[0].set_title(f"before pruning: all {e.size} units", fontsize=9)
    plot_priors(axes[1], legend=False)
    axes[1].legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
    axes[1].set_ylabel("")
    axes[1].set_title("prior and reduced prior", fontsize=9)
    plot_expected_theta_hist(axes[2], e[keep], bins=bins, color="C2")
    axes[2].yaxis.tick_right()  # keep the gap between the panels free for the arrow
    axes[2].yaxis.set_label_position("right")
    axes[2].set_title(f"after pruning: {int(keep.sum())} of {e.size} kept by {method_label}", fontsize=9)
    top = max(axes[0].get_ylim()[1], axes[2].get_ylim()[1], 1.0)
    for ax in (axes[0], axes[2]):
        ax.set_ylim(0.0, top)
    arrows = ((axes[0], axes[1], r"Calculate $\Delta F$"), (axes[1], axes[2], r"Prune $\Delta F \geq 0$"))
    for left, right, text in arrows:
        l, r = left.get_position(), right.get_position()
        y = l.y0 + 0.8 * l.height
        fig.add_artist(_arrow((l.x1 + 0.008, y), (r.x0 - 0.008, y), fig))
        fig.text(0.5 * (l.x1 + r.x0), y + 0.035, text, ha="center", va="bottom", fontsize=9)
    return fig


def _arrow(start: tuple[float, float], end: tuple[float, float], fig: Figure):
    """An arrow between two points given in figure coordinates."""
    return FancyArrowPatch(start, end, transform=fig.transFigure, arrowstyle="-|>", mutation_scale=12, lw=1.4,
                           color="0.2")


# --------------------------------------------------------------------------------------------------
# Figure 4: BMRS_U accuracy and compression against p1
# --------------------------------------------------------------------------------------------------

def plot_p1_sweep(ax: Axes, summary, *, acc_color: str = "C0", comp_color: str = "C3") -> tuple[Axes, Axes]:
    """The paper's Figure 4 for one setting: test accuracy (left axis) and parameter compression (right
    axis, a twin axis) of BMRS_U against p1, mean ± population std over seeds as error bars.

    ``summary`` is a p1_sweep summary (columns p1, test_acc, param_compression_pct, seed) of a single
    (network, dataset). Returns (accuracy axis, compression axis)."""
    df = pd.DataFrame(summary)
    if df.empty:
        raise ValueError("the p1 sweep summary is empty; run the sweep first")
    if {"network", "dataset"} <= set(df.columns) and len(df.groupby(["network", "dataset"])) > 1:
        raise ValueError("plot_p1_sweep draws one setting; select one (network, dataset) first")
    g = df.groupby("p1").agg(acc=("test_acc", "mean"), acc_sd=("test_acc", lambda s: float(np.std(s, ddof=0))),
                             comp=("param_compression_pct", "mean"),
                             comp_sd=("param_compression_pct", lambda s: float(np.std(s, ddof=0))),
                             n=("test_acc", "size")).sort_index()
    p1 = g.index.to_numpy(dtype=float)
    h1 = ax.errorbar(p1, g["acc"], yerr=g["acc_sd"], color=acc_color, marker="o", ms=4, capsize=3, lw=1.5,
                     label="test accuracy (left)")
    ax2 = ax.twinx()
    h2 = ax2.errorbar(p1, g["comp"], yerr=g["comp_sd"], color=comp_color, marker="s", ms=4, capsize=3, lw=1.5,
                      ls="--", label="parameter compression (right)")
    ax.set_xticks(p1)
    ax.set_xticklabels([f"{v:g}" for v in p1])
    ax.set_xlabel(r"$p_1$ (reduced prior LogU$[2^{-23}, 2^{-p_1}]$)")
    ax.set_ylabel("test accuracy (%)", color=acc_color)
    ax2.set_ylabel("parameter compression (%)", color=comp_color)
    ax.tick_params(axis="y", colors=acc_color)
    ax2.tick_params(axis="y", colors=comp_color)
    n = sorted(set(int(v) for v in g["n"]))
    ax2.legend(handles=[h1, h2], fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.01), ncol=2, frameon=False,
               title=f"BMRS$_U$, mean ± std over {'/'.join(map(str, n))} seed(s)", title_fontsize=7)
    return ax, ax2
