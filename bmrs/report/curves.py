"""Post-training pruning curves (Figure 2), rank-correlation matrices (Figures 3, 6, 7), knees and the
baselines table, as functions of the summaries of :mod:`bmrs.report.study`.

Everything here reads the summary DataFrames ``posttrain`` (one row per point of a post-training sweep:
dataset, network, seed, criterion, level, test_acc [%], param_compression_pct, actual_param_compression_pct,
...), ``ranks`` (dataset, network, seed, row, col, spearman) and ``continuous`` (one row per run); nothing
here trains. The notebooks ``04_post_training`` and ``07_baselines`` are thin wrappers around it.

Conventions and definitions
---------------------------

* **Criterion keys.** The ``criterion`` column is normalised to our method keys (``l2``, ``snr``,
  ``etheta``, ``bmrs_n``, ``bmrs_n_code``, ``bmrs_u8``, ``bmrs_u4``, ``c_obd``, ``dirichlet``,
  ``eigendamage``) by :func:`criterion_key`, which also accepts the display names the sweep records carry
  (``"BMRS_N (code, no 2pi)"``, ``"E[theta]"``, ...).
* **Accuracy** is stored in percent; the figures plot it as a fraction, as the paper's Figure 2 does.
* **Averaging over seeds** (:func:`average_curves`):

  - ``"index"`` — the paper's rule (``average_lists`` of its plotting script): the i-th records of all
    seeds are averaged, compression and accuracy alike, shorter curves padded with "missing" (each
    index averages the seeds that have that many records); shading is ±1 population std of accuracy.
    It mixes different compressions at one index when the seeds' curves have different lengths.
  - ``"interp"`` (the default of the figures here) — each seed's curve, sorted by compression, is
    linearly interpolated on the union of all seeds' compression values, **without extrapolation**;
    a grid point is kept where at least ceil(0.6 · seeds) of the seeds cover it (``min_coverage``), and
    the mean and population std are taken over the seeds that cover it. The mean curve is then the
    exact pointwise mean of the seeds' piecewise-linear curves, and a BMRS curve ends near the median
    seed's stopping point rather than at the longest seed's.

* **Stopping point** (:func:`stopping_points`). A BMRS sweep never prunes a unit with ΔF < 0, so its
  records stop changing once every unit with ΔF ≥ 0 is pruned; the stopping point of a seed is its
  record with the largest compression (ties: the highest level — the last record). The paper's marker
  (:func:`paper_stop_marker`) is the largest stopping compression over seeds, with that seed's accuracy.
* **Knee** (:func:`find_knee`): the point of maximum distance *above* the chord, i.e. the Kneedle knee
  (Satopää et al., 2011) without smoothing. The curve (compression x, accuracy y) is sorted by x and
  scaled to the unit square, x' = (x − x_min)/(x_max − x_min), y' = (y − y_min)/(y_max − y_min); the chord
  joins its first and last points; the knee is the point with the largest signed perpendicular distance
  to the chord on the side of higher accuracy. For the usual accuracy–compression curve (flat, then a
  drop) that is the last point before accuracy falls away: the Pareto-preferred trade-off the paper
  calls the knee. When no point lies above the chord (a straight or convex curve) the knee is undefined
  (``Knee.defined`` False). The distance is reported in unit-square coordinates (0 … 1/√2).
* **Near the knee** (:func:`stops_vs_knee`): a BMRS stopping point (its mean over seeds) is near the
  knee of the reference curve (SNR by default: the curve the paper's right panel shows, and the
  criterion BMRS_N ranks like) when |x_stop − x_knee| ≤ max(``tolerance``, resolution / 2), where
  ``tolerance`` defaults to 5 percentage points (the margin of the paper's right panel) and the
  resolution is the larger gap between the knee and its neighbouring points on the reference curve
  (a knee found on a curve sampled every g points is located only to within ± g/2).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tabulate import tabulate

import torch

from bmrs.nn.measure import compare_latency, count_macs, count_parameters
from bmrs.nn.shrink import dense_network, shrink
from bmrs.report import paper, tables
from bmrs.run.store import RESULTS_DIR, load_run, read_json
from bmrs.report.labels import DATASET_LABELS, METHOD_LABELS, setting_label  # noqa: F401
from bmrs.run.data import PAPER_DATASET

# --------------------------------------------------------------------------------------------------
# Names, orders, styles
# --------------------------------------------------------------------------------------------------

#: Every criterion of the post-training studies, in plotting order.
CRITERION_ORDER: tuple[str, ...] = ("l2", "snr", "etheta", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4",
                                    "c_obd", "dirichlet", "eigendamage")
#: The BMRS variants: their sweeps stop by themselves (ΔF < 0 for every remaining unit).
BMRS_CRITERIA: tuple[str, ...] = ("bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4")
#: Rows/columns of the paper's rank-correlation matrices (Figures 3, 6, 7).
RANK_ORDER: tuple[str, ...] = ("snr", "etheta", "l2", "bmrs_n", "bmrs_u8", "bmrs_u4")
#: Stopping-point markers of the paper's Figure 2: circle BMRS_N, square U-8, star U-4.
#: The paper's BMRS_N is the released code's variant (bmrs_n_code, no 2π); ΔF_N of Eq. 8 (bmrs_n), drawn
#: beside it, gets a hexagon.
STOP_MARKERS: dict[str, str] = {"bmrs_n_code": "o", "bmrs_n": "h", "bmrs_u8": "s", "bmrs_u4": "*"}
#: Fixed colours, so that a criterion has the same colour in every figure.
COLORS: dict[str, str] = {"l2": "#1f77b4", "snr": "#ff7f0e", "etheta": "#bcbd22", "bmrs_n": "#8c564b",
                          "bmrs_n_code": "#d62728", "bmrs_u8": "#2ca02c", "bmrs_u4": "#9467bd",
                          "c_obd": "#7f7f7f", "dirichlet": "#e377c2", "eigendamage": "#17becf"}
#: Plain-text labels (figure legends use :func:`label`).
#: Labels of the rank-correlation figures: the paper's names (its "BMRS_N" rank is bmrs.report.paper's bmrs_n).
RANK_LABELS: dict[str, str] = {"snr": "SNR", "etheta": "E[θ]", "l2": "L2", "bmrs_n": "BMRS_N", "bmrs_u8": "BMRS_U-8",
                               "bmrs_u4": "BMRS_U-4"}
#: Which paper figure shows the rank correlations of a dataset.
RANK_FIGURE: dict[str, int] = {"cifar10": 3, "fashion_mnist": 6, "mnist": 7}
#: The paper's subfigure letters of Figure 2.
FIG2_PANELS: dict[tuple[str, str], str] = {("cifar10", "lenet5"): "a", ("cifar10", "mlp"): "b",
                                           ("fashion_mnist", "lenet5"): "c", ("fashion_mnist", "mlp"): "d",
                                           ("mnist", "lenet5"): "e", ("mnist", "mlp"): "f"}
X_LABELS: dict[str, str] = {"param_compression_pct": "parameter compression % (the paper's metric)",
                            "actual_param_compression_pct": "actual parameter compression % (shrunk network)",
                            "structure_compression_pct": "structure compression % (units removed)"}

XMetric = Literal["param_compression_pct", "actual_param_compression_pct", "structure_compression_pct"]
Averaging = Literal["interp", "index"]

_DISPLAY_TO_KEY: dict[str, str] = {
    "l2": "l2", "snr": "snr", "e[theta]": "etheta", "e[θ]": "etheta", "etheta": "etheta",
    "bmrs_n": "bmrs_n", "bmrs_n (eq. 8)": "bmrs_n", "bmrs_n (code, no 2pi)": "bmrs_n_code",
    "bmrs_n_code": "bmrs_n_code", "c-obd": "c_obd", "c_obd": "c_obd", "dirichlet": "dirichlet",
    "eigendamage": "eigendamage",
}


def criterion_key(name: str) -> str:
    """Our key for a criterion name: accepts keys and the display names of the sweep records
    ("BMRS_N (code, no 2pi)" -> "bmrs_n_code", "BMRS_U-4" -> "bmrs_u4", "Dirichlet (...)" -> "dirichlet").
    Unknown names are returned unchanged."""
    text = str(name).strip()
    low = text.lower()
    if low in _DISPLAY_TO_KEY:
        return _DISPLAY_TO_KEY[low]
    m = re.fullmatch(r"bmrs_u-?(\d+(?:\.\d+)?)", low)
    if m:
        return f"bmrs_u{float(m.group(1)):g}"
    if low.startswith("dirichlet"):
        return "dirichlet"
    return text


def label(key: str) -> str:
    """Display label of a criterion key (the paper's names)."""
    return METHOD_LABELS.get(key, key)


#: the columns of a ``posttrain`` summary (bmrs.report.study.posttrain)
POSTTRAIN_COLUMNS = ("dataset", "network", "seed", "criterion", "level", "test_acc", "param_compression_pct",
                     "actual_param_compression_pct", "structure_compression_pct", "units_kept", "criterion_name")


def normalize_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """A copy of a ``posttrain`` summary with the criterion column as our keys, numeric value columns
    and rows sorted by (dataset, network, criterion, seed, level)."""
    if curves.empty and len(curves.columns) == 0:  # a partial summary before any sweep has finished
        curves = pd.DataFrame(columns=list(POSTTRAIN_COLUMNS))
    required = {"criterion", "level", "test_acc"}
    missing = required - set(curves.columns)
    if missing:
        raise ValueError(f"posttrain summary lacks the column(s) {sorted(missing)}; expected bmrs.report.study.posttrain output")
    df = curves.copy()
    df["criterion"] = df["criterion"].map(criterion_key)
    for col in ("level", "test_acc", "param_compression_pct", "actual_param_compression_pct",
                "structure_compression_pct"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    keys = [c for c in ("dataset", "network", "criterion", "seed", "level") if c in df]
    return df.sort_values(keys, kind="stable").reset_index(drop=True)


def settings_of(df: pd.DataFrame) -> list[tuple[str, str]]:
    """The (dataset, network) pairs of a summary, in order of first appearance."""
    return list(dict.fromkeys(zip(df["dataset"], df["network"])))


def _select(df: pd.DataFrame, dataset: str | None, network: str | None) -> pd.DataFrame:
    if df.empty and "dataset" not in df:  # no rows at all (e.g. a partial summary without this criterion)
        return df
    if dataset is not None:
        df = df[df["dataset"] == dataset]
    if network is not None:
        df = df[df["network"] == network]
    return df


def present_criteria(df: pd.DataFrame, criteria: Iterable[str] | None = None) -> list[str]:
    """The criteria of ``df`` (keys), in :data:`CRITERION_ORDER` (others after), restricted to
    ``criteria`` when given."""
    have = list(dict.fromkeys(df["criterion"]))
    wanted = list(criteria) if criteria is not None else have
    order = [c for c in CRITERION_ORDER if c in wanted] + [c for c in wanted if c not in CRITERION_ORDER]
    return [c for c in order if c in have]


# --------------------------------------------------------------------------------------------------
# Seed curves and their average
# --------------------------------------------------------------------------------------------------

def seed_curves(df: pd.DataFrame, criterion: str, *, x: str = "param_compression_pct",
                y: str = "test_acc") -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """{seed: (x values, y values)} of one criterion in record (level) order; rows without x are dropped."""
    sub = df[df["criterion"] == criterion]
    out: dict[Any, tuple[np.ndarray, np.ndarray]] = {}
    for seed, g in sub.groupby("seed", sort=True):
        g = g.sort_values("level", kind="stable") if "level" in g else g
        xs = g[x].to_numpy(dtype=np.float64)
        ys = g[y].to_numpy(dtype=np.float64)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.any():
            out[seed] = (xs[ok], ys[ok])
    return out


def average_index(curves: Sequence[tuple[np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """The paper's index-wise average: record i of every seed that has ≥ i + 1 records is averaged
    (x and y alike); returns x, x_std, y, y_std, n (population std, ddof 0)."""
    if not curves:
        return pd.DataFrame(columns=["x", "x_std", "y", "y_std", "n"])
    length = max(len(c[0]) for c in curves)
    xs = np.full((len(curves), length), np.nan)
    ys = np.full((len(curves), length), np.nan)
    for i, (cx, cy) in enumerate(curves):
        xs[i, : len(cx)] = cx
        ys[i, : len(cy)] = cy
    n = np.sum(np.isfinite(ys), axis=0)  # ≥ 1 at every index: the longest curve has them all
    return pd.DataFrame({"x": np.nanmean(xs, axis=0), "x_std": np.nanstd(xs, axis=0),
                         "y": np.nanmean(ys, axis=0), "y_std": np.nanstd(ys, axis=0), "n": n})


def _sorted_unique(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort by x and average y over repeated x."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inv = np.unique(x, return_inverse=True)
    uy = np.bincount(inv, weights=y) / np.bincount(inv)
    return ux, uy


def average_interp(curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray | None = None, *,
                   min_coverage: float = 0.6) -> pd.DataFrame:
    """Average on a common compression grid: each curve is sorted by x and linearly interpolated on
    ``grid`` (default: the union of all curves' x values) inside its own x range only; a grid point is
    kept where at least ceil(``min_coverage`` · number of curves) of them (and at least one) cover it —
    with the default 0.6, both of 2 seeds, 2 of 3, 6 of 10, so that the mean never rests on a minority. Returns x, x_std (0),
    y, y_std (population std over the covering curves), n."""
    if not curves:
        return pd.DataFrame(columns=["x", "x_std", "y", "y_std", "n"])
    prepared = [_sorted_unique(np.asarray(cx, float), np.asarray(cy, float)) for cx, cy in curves]
    if grid is None:
        grid = np.unique(np.concatenate([p[0] for p in prepared]))
    grid = np.asarray(grid, dtype=np.float64)
    values = np.full((len(prepared), grid.size), np.nan)
    for i, (cx, cy) in enumerate(prepared):
        inside = (grid >= cx[0]) & (grid <= cx[-1])
        values[i, inside] = np.interp(grid[inside], cx, cy)
    n = np.sum(np.isfinite(values), axis=0)
    keep = n >= max(1, math.ceil(min_coverage * len(prepared) - 1e-9))
    kept = values[:, keep]
    mean = np.array([np.mean(col[np.isfinite(col)]) for col in kept.T])
    std = np.array([np.std(col[np.isfinite(col)]) for col in kept.T])
    return pd.DataFrame({"x": grid[keep], "x_std": np.zeros(int(keep.sum())), "y": mean, "y_std": std,
                         "n": n[keep]})


def average_curves(curves: Sequence[tuple[np.ndarray, np.ndarray]], method: Averaging = "interp",
                   **kwargs: Any) -> pd.DataFrame:
    """:func:`average_interp` (``"interp"``) or the paper's :func:`average_index` (``"index"``)."""
    if method == "interp":
        return average_interp(curves, **kwargs)
    if method == "index":
        return average_index(curves)
    raise ValueError(f"averaging must be 'interp' or 'index'; got {method!r}")


def mean_curve(df: pd.DataFrame, criterion: str, *, x: str = "param_compression_pct", y: str = "test_acc",
               averaging: Averaging = "interp", **kwargs: Any) -> pd.DataFrame:
    """The mean curve of one criterion over seeds (x, x_std, y, y_std, n); y in the units of ``df``."""
    return average_curves(list(seed_curves(df, criterion, x=x, y=y).values()), averaging, **kwargs)


# --------------------------------------------------------------------------------------------------
# Stopping points
# --------------------------------------------------------------------------------------------------

def stopping_points(df: pd.DataFrame, *, x: str = "param_compression_pct",
                    criteria: Iterable[str] = BMRS_CRITERIA) -> pd.DataFrame:
    """Each seed's end point of each BMRS sweep: the record with the largest x (ties: highest level).

    Returns one row per (dataset, network, criterion, seed) with level, x, test_acc and every x column."""
    rows = []
    wanted = set(criteria)
    group_keys = [k for k in ("dataset", "network", "criterion", "seed") if k in df]
    for key, g in df[df["criterion"].isin(wanted)].groupby(group_keys, sort=False):
        g = g[np.isfinite(g[x].to_numpy(dtype=np.float64))]
        if g.empty:
            continue
        g = g.sort_values([x, "level"], kind="stable")
        rec = g.iloc[-1]
        row = dict(zip(group_keys, key if isinstance(key, tuple) else (key,)))
        row.update({"level": float(rec["level"]), "x": float(rec[x]), "test_acc": float(rec["test_acc"])})
        for col in X_LABELS:
            if col in g:
                row[col] = float(rec[col]) if pd.notna(rec[col]) else float("nan")
        rows.append(row)
    return pd.DataFrame(rows, columns=[*group_keys, "level", "x", "test_acc", *[c for c in X_LABELS if c in df]])


def paper_stop_marker(stops: pd.DataFrame, criterion: str) -> tuple[float, float] | None:
    """(x, test_acc) of the paper's marker: the largest stopping compression over seeds, with that
    seed's accuracy; None if the criterion has no stopping points."""
    sub = stops[stops["criterion"] == criterion]
    if sub.empty:
        return None
    best = sub.sort_values(["x", "test_acc"], kind="stable").iloc[-1]
    return float(best["x"]), float(best["test_acc"])


# --------------------------------------------------------------------------------------------------
# Knees
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Knee:
    """The knee of a curve (see the module docstring): its x, y, index into the sorted curve, its
    distance above the chord in unit-square coordinates, and the resolution (the larger x gap to its
    neighbours). ``defined`` is False when no point lies above the chord."""

    x: float
    y: float
    index: int
    distance: float
    resolution: float
    defined: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


UNDEFINED_KNEE = Knee(float("nan"), float("nan"), -1, float("nan"), float("nan"), False)


def chord_distances(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x sorted, y in that order, signed distance of each point to the chord in the unit square,
    positive on the side of higher y). Repeated x values are averaged; non-finite points dropped."""
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    ok = np.isfinite(xs) & np.isfinite(ys)
    xs, ys = _sorted_unique(xs[ok], ys[ok]) if ok.any() else (xs[ok], ys[ok])
    if xs.size < 3 or np.ptp(xs) == 0:
        return xs, ys, np.zeros_like(xs)
    xn = (xs - xs[0]) / (xs[-1] - xs[0])
    span = np.ptp(ys)
    yn = (ys - ys.min()) / span if span > 0 else np.zeros_like(ys)
    dx, dy = 1.0, yn[-1] - yn[0]  # chord from (0, yn[0]) to (1, yn[-1])
    dist = (dx * (yn - yn[0]) - dy * xn) / math.hypot(dx, dy)
    return xs, ys, dist


def find_knee(x: Sequence[float], y: Sequence[float], *, min_distance: float = 1e-9) -> Knee:
    """The knee of an accuracy–compression curve: the point of maximum distance above the chord
    between its first and last points, both axes scaled to [0, 1] (Kneedle without smoothing; see the
    module docstring). Needs ≥ 3 points with distinct x; returns :data:`UNDEFINED_KNEE` otherwise or
    when no point lies more than ``min_distance`` above the chord."""
    xs, ys, dist = chord_distances(x, y)
    if xs.size < 3 or not np.any(dist > min_distance):
        return UNDEFINED_KNEE
    i = int(np.argmax(dist))
    gaps = [xs[i] - xs[i - 1] if i > 0 else 0.0, xs[i + 1] - xs[i] if i + 1 < xs.size else 0.0]
    return Knee(float(xs[i]), float(ys[i]), i, float(dist[i]), float(max(gaps)), True)


def knees(df: pd.DataFrame, *, x: str = "param_compression_pct", averaging: Averaging = "interp",
          criteria: Iterable[str] | None = None) -> pd.DataFrame:
    """The knee of every criterion's mean curve per setting: dataset, network, criterion, knee_x,
    knee_acc (%), distance, resolution, defined, curve_x_max (a BMRS curve ends at its stopping point, so
    its own knee lies inside that range)."""
    rows = []
    for dataset, network in settings_of(df):
        sub = _select(df, dataset, network)
        for c in present_criteria(sub, criteria):
            curve = mean_curve(sub, c, x=x, averaging=averaging)
            k = find_knee(curve["x"], curve["y"])
            rows.append({"dataset": dataset, "network": network, "criterion": c, "knee_x": k.x, "knee_acc": k.y,
                         "distance": k.distance, "resolution": k.resolution, "defined": k.defined,
                         "curve_x_max": float(curve["x"].max()) if len(curve) else float("nan")})
    return pd.DataFrame(rows)


#: the columns of :func:`stops_vs_knee`
STOP_COLUMNS = ["dataset", "network", "criterion", "seeds", "stop_x", "stop_x_std", "stop_acc", "stop_acc_std",
                "marker_x", "marker_acc", "reference", "knee_x", "knee_acc", "knee_resolution", "dx",
                "ref_acc_at_stop", "allowed", "near"]


def stops_vs_knee(df: pd.DataFrame, *, x: str = "param_compression_pct", reference: str = "snr",
                  averaging: Averaging = "interp", tolerance: float = 5.0,
                  criteria: Iterable[str] = ("bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4")) -> pd.DataFrame:
    """Where each BMRS variant stops relative to the knee of the ``reference`` criterion's mean curve.

    One row per (dataset, network, criterion): the mean stopping point over seeds (stop_x, stop_acc),
    the paper's marker (max over seeds), the reference knee, dx = stop_x − knee_x, the reference curve's
    accuracy at stop_x (ref_acc_at_stop; the stop is above the trade-off curve when
    stop_acc > ref_acc_at_stop), the allowed distance max(tolerance, knee resolution / 2) and ``near``."""
    stops = stopping_points(df, x=x, criteria=criteria)
    rows = []
    for dataset, network in settings_of(df):
        sub = _select(df, dataset, network)
        ref_curve = mean_curve(sub, reference, x=x, averaging=averaging)
        knee = find_knee(ref_curve["x"], ref_curve["y"]) if len(ref_curve) else UNDEFINED_KNEE
        s = _select(stops, dataset, network)
        for c in [c for c in criteria if c in set(s["criterion"])]:
            sc = s[s["criterion"] == c]
            stop_x, stop_acc = float(sc["x"].mean()), float(sc["test_acc"].mean())
            marker = paper_stop_marker(sc, c)
            ref_at = (float(np.interp(stop_x, ref_curve["x"], ref_curve["y"]))
                      if len(ref_curve) and ref_curve["x"].min() <= stop_x <= ref_curve["x"].max() else float("nan"))
            allowed = max(tolerance, 0.5 * knee.resolution) if knee.defined else float("nan")
            dx = stop_x - knee.x
            rows.append({"dataset": dataset, "network": network, "criterion": c, "seeds": int(len(sc)),
                         "stop_x": stop_x, "stop_x_std": float(sc["x"].std(ddof=0)), "stop_acc": stop_acc,
                         "stop_acc_std": float(sc["test_acc"].std(ddof=0)),
                         "marker_x": marker[0] if marker else float("nan"),
                         "marker_acc": marker[1] if marker else float("nan"),
                         "reference": reference, "knee_x": knee.x, "knee_acc": knee.y, "knee_resolution": knee.resolution,
                         "dx": dx, "ref_acc_at_stop": ref_at, "allowed": allowed,
                         "near": bool(knee.defined and abs(dx) <= allowed)})
    return pd.DataFrame(rows, columns=STOP_COLUMNS)  # the columns also when no BMRS sweep is there yet


def accuracy_at(df: pd.DataFrame, criterion: str, at: float, *, x: str = "actual_param_compression_pct",
                averaging: Averaging = "interp") -> float:
    """The mean curve's accuracy (%) of ``criterion`` at compression ``at`` (NaN outside the curve)."""
    curve = mean_curve(df, criterion, x=x, averaging=averaging)
    if curve.empty or not (curve["x"].min() <= at <= curve["x"].max()):
        return float("nan")
    return float(np.interp(at, curve["x"], curve["y"]))


def _num(value: float, fmt: str, na: str = "n/a") -> str:
    return format(value, fmt) if value is not None and np.isfinite(value) else na


def stops_table(stops: pd.DataFrame, reference: str = "snr") -> pd.DataFrame:
    """Rows of :func:`stops_vs_knee` (usually one setting's) for display: per BMRS variant the mean ± std
    stopping point, the paper's marker, the ``reference`` knee, dx = stop − knee and the allowed dx (pp), the
    reference curve's accuracy at the stopping compression, and whether the stop is near the knee."""
    ref = label(reference)
    return pd.DataFrame({
        "variant": [label(c) for c in stops["criterion"]],
        "seeds": stops["seeds"].tolist(),
        "stop comp. %": [f"{a:.1f} ± {b:.1f}" for a, b in zip(stops["stop_x"], stops["stop_x_std"])],
        "stop acc. %": [f"{a:.2f} ± {b:.2f}" for a, b in zip(stops["stop_acc"], stops["stop_acc_std"])],
        "marker (max over seeds)": [f"{a:.1f} % @ {b:.2f}" for a, b in zip(stops["marker_x"], stops["marker_acc"])],
        f"{ref} knee": [f"{a:.1f} % @ {b:.2f}" if np.isfinite(a) else "undefined"
                        for a, b in zip(stops["knee_x"], stops["knee_acc"])],
        "dx (pp)": [_num(v, "+.1f") for v in stops["dx"]],
        "allowed dx (pp)": [_num(v, ".1f") for v in stops["allowed"]],
        f"{ref} acc. at stop": [_num(v, ".2f") for v in stops["ref_acc_at_stop"]],
        "near knee": ["yes" if v else "no" for v in stops["near"]],
    }, columns=["variant", "seeds", "stop comp. %", "stop acc. %", "marker (max over seeds)", f"{ref} knee",
                "dx (pp)", "allowed dx (pp)", f"{ref} acc. at stop", "near knee"])


def stops_text(stops: pd.DataFrame, reference: str = "snr") -> list[str]:
    """One sentence per row of :func:`stops_vs_knee`: where the variant stops and whether that is near the
    ``reference`` knee."""
    ref = label(reference)
    lines = []
    for r in stops.itertuples():
        knee = (f"the {ref} knee at {r.knee_x:.1f} % (acc. {r.knee_acc:.2f} %), dx {r.dx:+.1f} pp"
                if np.isfinite(r.knee_x) else f"the {ref} curve has no knee")
        lines.append(f"{label(r.criterion)}: stops at {r.stop_x:.1f} % (acc. {r.stop_acc:.2f} %, mean of {r.seeds} "
                     f"seed(s)); {knee} -> {'near' if r.near else 'not near'} the knee")
    return lines


def knees_table(knee_rows: pd.DataFrame, *, setting: bool = False, distance: bool = True) -> pd.DataFrame:
    """Rows of :func:`knees` for display: per criterion its knee (compression, accuracy; "undefined" for a
    flat or convex curve), optionally the distance above the chord, the knee's resolution and where the
    curve ends. ``setting=True`` adds a first column naming the setting."""
    d = knee_rows["defined"].tolist()
    cols: dict[str, list[str]] = {}
    if setting:
        cols["setting"] = [setting_label(a, b) for a, b in zip(knee_rows["dataset"], knee_rows["network"])]
    cols["criterion"] = [label(c) for c in knee_rows["criterion"]]
    cols["knee comp. %"] = [f"{v:.1f}" if ok else "undefined" for v, ok in zip(knee_rows["knee_x"], d)]
    cols["knee acc. %"] = [f"{v:.2f}" if ok else "—" for v, ok in zip(knee_rows["knee_acc"], d)]
    if distance:
        cols["distance above chord"] = [f"{v:.3f}" if ok else "—" for v, ok in zip(knee_rows["distance"], d)]
    cols["resolution (pp)"] = [f"{v:.1f}" if ok else "—" for v, ok in zip(knee_rows["resolution"], d)]
    cols["curve ends at %"] = [f"{v:.1f}" for v in knee_rows["curve_x_max"]]
    return pd.DataFrame(cols)


# --------------------------------------------------------------------------------------------------
# Figure 2
# --------------------------------------------------------------------------------------------------

def plot_tradeoff(ax: Axes, df: pd.DataFrame, *, x: str = "param_compression_pct", averaging: Averaging = "interp",
                  criteria: Iterable[str] | None = None, show_stops: bool = True, show_knees: bool = False,
                  bar: float = 0.05, legend: bool = True) -> Axes:
    """Figure 2, left: test accuracy (fraction) against compression, the mean over seeds of every
    criterion (one line each) with ±1 std shading, and for each BMRS variant the paper's stopping
    marker (largest stopping compression over seeds with that seed's accuracy; circle N, square U-8,
    star U-4) with a short black vertical bar of ± ``bar``. ``show_knees`` adds a black "x" at each
    curve's knee. Markers, bars and shading are collections, so ``ax.get_lines()`` holds exactly the
    mean curves."""
    order = present_criteria(df, criteria)
    stops = stopping_points(df, x=x, criteria=[c for c in order if c in BMRS_CRITERIA])
    for c in order:
        curve = mean_curve(df, c, x=x, averaging=averaging)
        if curve.empty:
            continue
        xs, ys, sd = curve["x"].to_numpy(), curve["y"].to_numpy() / 100.0, curve["y_std"].to_numpy() / 100.0
        color = COLORS.get(c)
        lw = 2.2 if c in BMRS_CRITERIA else 1.6
        (line,) = ax.plot(xs, ys, color=color, lw=lw, label=label(c))
        ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.2, lw=0)
        if show_knees:
            k = find_knee(curve["x"], curve["y"])
            if k.defined:
                ax.scatter([k.x], [k.y / 100.0], marker="x", color="k", s=30, zorder=12, linewidths=1.2)
        if show_stops and c in BMRS_CRITERIA:
            marker = paper_stop_marker(stops, c)
            if marker is not None:
                mx, my = marker[0], marker[1] / 100.0
                ax.vlines(mx, my - bar, my + bar, color="black", lw=2.0, zorder=10)
                ax.scatter([mx], [my], marker=STOP_MARKERS.get(c, "D"), s=110 if STOP_MARKERS.get(c) == "*" else 60,
                           color=line.get_color(), edgecolors="black", linewidths=1.2, zorder=11)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel("test accuracy")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    if legend and ax.get_lines():
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
    return ax


def _kde_levels(density: np.ndarray, levels: int = 5, thresh: float = 0.05) -> np.ndarray:
    """Iso-proportion density levels as seaborn's kdeplot(levels=n, thresh=0.05): the density values
    below which the given proportions of the probability mass lie."""
    values = np.sort(density.ravel())
    mass = np.cumsum(values)
    mass /= mass[-1]
    props = np.linspace(thresh, 1.0, levels)[:-1]
    out = np.interp(props, mass, values)
    return np.unique(np.append(out, values[-1] * 1.0001))


def plot_stop_density(ax: Axes, df: pd.DataFrame, *, x: str = "param_compression_pct", reference: str = "snr",
                      averaging: Averaging = "interp", criteria: Iterable[str] = ("bmrs_n", "bmrs_u8", "bmrs_u4"),
                      levels: int = 5, alpha: float = 0.3, margin: float = 5.0, legend: bool = True) -> Axes:
    """Figure 2, right: every seed's BMRS end point (compression, accuracy as a fraction) per variant,
    a filled 2-D Gaussian KDE per variant (``levels`` iso-proportion levels, alpha ``alpha``; skipped
    for fewer than 3 points or a degenerate cloud), and the ``reference`` (SNR) mean curve restricted
    to [min − margin, max + margin] of the BMRS compressions (the only line of the axes)."""
    from scipy.stats import gaussian_kde  # deferred: only the density panel needs it

    wanted = [c for c in criteria if c in set(df["criterion"])]
    stops = stopping_points(df, x=x, criteria=wanted)
    if stops.empty:
        ax.text(0.5, 0.5, "no BMRS stopping points", ha="center", va="center", transform=ax.transAxes)
        return ax
    lo, hi = float(stops["x"].min()) - margin, float(stops["x"].max()) + margin
    for c in wanted:
        sc = stops[stops["criterion"] == c]
        px, py = sc["x"].to_numpy(float), sc["test_acc"].to_numpy(float) / 100.0
        color = COLORS.get(c)
        if len(sc) >= 3 and np.ptp(px) > 0 and np.ptp(py) > 0:
            try:
                kde = gaussian_kde(np.vstack([px, py]))
            except (np.linalg.LinAlgError, ValueError):
                kde = None
            if kde is not None:
                gx = np.linspace(px.min() - 3 * px.std(), px.max() + 3 * px.std(), 80)
                gy = np.linspace(py.min() - 3 * py.std(), py.max() + 3 * py.std(), 80)
                GX, GY = np.meshgrid(gx, gy)
                Z = kde(np.vstack([GX.ravel(), GY.ravel()])).reshape(GX.shape)
                lv = _kde_levels(Z, levels)
                if lv.size >= 2:
                    ax.contourf(GX, GY, Z, levels=lv, colors=[color], alpha=alpha)
        ax.scatter(px, py, marker=STOP_MARKERS.get(c, "D"), s=70 if STOP_MARKERS.get(c) == "*" else 35, color=color,
                   edgecolors="black", linewidths=0.8, zorder=5, label=label(c))
    curve = mean_curve(df, reference, x=x, averaging=averaging) if reference in set(df["criterion"]) else pd.DataFrame()
    if not curve.empty:
        inside = (curve["x"] >= lo) & (curve["x"] <= hi)
        cx, cy = curve.loc[inside, "x"].to_numpy(), curve.loc[inside, "y"].to_numpy() / 100.0
        # the interpolated curve at the window's edges, so that the line spans the window
        edge = [v for v in (lo, hi) if curve["x"].min() <= v <= curve["x"].max()]
        if edge:
            ex = np.array(edge)
            cx = np.concatenate([cx, ex])
            cy = np.concatenate([cy, np.interp(ex, curve["x"], curve["y"]) / 100.0])
            order = np.argsort(cx)
            cx, cy = cx[order], cy[order]
        ax.plot(cx, cy, color=COLORS.get(reference), lw=2.5, alpha=0.8, label=f"{label(reference)} (mean)")
    ax.set_xlim(lo, hi)
    ax.set_xlabel(X_LABELS.get(x, x))
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="best", framealpha=0.9)
    return ax


def figure2(df: pd.DataFrame, dataset: str, network: str, *, x: str = "param_compression_pct",
            averaging: Averaging = "interp", criteria: Iterable[str] | None = None, show_knees: bool = True,
            figsize: tuple[float, float] = (11.0, 4.2)) -> Figure:
    """Figure 2 for one setting: left :func:`plot_tradeoff`, right :func:`plot_stop_density`."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    sub = _select(df, dataset, network)
    if sub.empty:
        raise ValueError(f"no post-training records for {network} on {dataset}")
    fig, (left, right) = plt.subplots(1, 2, figsize=figsize, constrained_layout=True,
                                      gridspec_kw=dict(width_ratios=[1.4, 1.0]))
    plot_tradeoff(left, sub, x=x, averaging=averaging, criteria=criteria, show_knees=show_knees)
    plot_stop_density(right, sub, x=x, averaging=averaging,
                      criteria=[c for c in ("bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4")
                                if criteria is None or c in set(criteria)])
    seeds = sorted(set(sub["seed"]))
    panel = FIG2_PANELS.get((dataset, network))
    head = f"Figure 2{f' ({panel})' if panel else ''}: {setting_label(dataset, network)}"
    fig.suptitle(f"{head} — post-training pruning, {len(seeds)} seed(s), mean ± 1 std "
                 f"({'interpolated on a common grid' if averaging == 'interp' else 'index-wise, as the paper'})"
                 + (", x = knee" if show_knees else ""), fontsize=9)
    left.set_title("accuracy vs compression; markers: BMRS stopping points (max over seeds)", fontsize=8)
    right.set_title("each seed's BMRS end point, 2-D KDE per variant, SNR mean curve", fontsize=8)
    return fig


def figure_grid(df: pd.DataFrame, *, x: str = "actual_param_compression_pct", averaging: Averaging = "interp",
                criteria: Iterable[str] | None = None, show_knees: bool = True, ncols: int = 2,
                panel_size: tuple[float, float] = (5.5, 4.0)) -> Figure:
    """One :func:`plot_tradeoff` panel per setting (the baselines' post-training figure), knees marked."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    settings = settings_of(df)
    ncols = max(1, min(ncols, len(settings)))
    nrows = math.ceil(len(settings) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows),
                             constrained_layout=True, squeeze=False)
    for ax, (dataset, network) in zip(axes.ravel(), settings):
        plot_tradeoff(ax, _select(df, dataset, network), x=x, averaging=averaging, criteria=criteria,
                      show_knees=show_knees)
        ax.set_title(setting_label(dataset, network), fontsize=9)
    for ax in axes.ravel()[len(settings):]:
        ax.set_visible(False)
    return fig


# --------------------------------------------------------------------------------------------------
# Figures 3, 6, 7: rank correlations
# --------------------------------------------------------------------------------------------------

def mean_rank_matrix(ranks: pd.DataFrame, dataset: str, network: str,
                     order: Sequence[str] = RANK_ORDER) -> pd.DataFrame:
    """Our Spearman matrix for a setting: the mean over seeds of each (row, col) correlation, in
    ``order`` (criteria we did not rank are left out)."""
    sub = _select(ranks, dataset, network).copy()
    if sub.empty:
        raise ValueError(f"no rank correlations for {network} on {dataset}")
    sub["row"] = sub["row"].map(criterion_key)
    sub["col"] = sub["col"].map(criterion_key)
    mat = sub.pivot_table(index="row", columns="col", values="spearman", aggfunc="mean")
    keys = [k for k in order if k in mat.index and k in mat.columns]
    return mat.loc[keys, keys]


def paper_rank_matrix(dataset: str, network: str) -> tuple[pd.DataFrame | None, str]:
    """The paper's matrix for the setting, or for the closest paper dataset (:data:`PAPER_DATASET`), and
    a caption saying which; (None, reason) when the paper has none."""

    target = PAPER_DATASET.get(dataset)
    if target is None:
        return None, f"the paper reports no rank correlations for {dataset}"
    try:
        mat = paper.rank_matrix(target, network)
    except KeyError:
        return None, f"the paper reports no rank correlations for {network} on {target}"
    fig = RANK_FIGURE.get(target)
    where = f"paper, Figure {fig}" if fig else "paper"
    if target != dataset:
        return mat, f"{where}: {setting_label(target, network)} (closest to {DATASET_LABELS.get(dataset, dataset)})"
    return mat, f"{where}: {setting_label(target, network)}"


def rank_difference(ours: pd.DataFrame, theirs: pd.DataFrame) -> dict[str, Any]:
    """How our matrix differs from the paper's over the off-diagonal pairs both have (upper triangle):
    mean and max |ours − paper| (and where), the Pearson correlation between the two sets of entries and
    the fraction of pairs with the same sign."""
    keys = [k for k in ours.index if k in theirs.index]
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1:]]
    if not pairs:
        return {"pairs": 0, "mean_abs_diff": float("nan"), "max_abs_diff": float("nan"), "max_at": "",
                "pearson": float("nan"), "same_sign": float("nan")}
    o = np.array([ours.loc[a, b] for a, b in pairs], dtype=float)
    p = np.array([theirs.loc[a, b] for a, b in pairs], dtype=float)
    d = np.abs(o - p)
    j = int(np.nanargmax(d))
    pear = float(np.corrcoef(o, p)[0, 1]) if len(pairs) > 2 and np.std(o) > 0 and np.std(p) > 0 else float("nan")
    return {"pairs": len(pairs), "mean_abs_diff": float(np.nanmean(d)), "max_abs_diff": float(d[j]),
            "max_at": f"{RANK_LABELS.get(pairs[j][0], pairs[j][0])}/{RANK_LABELS.get(pairs[j][1], pairs[j][1])}", "pearson": pear,
            "same_sign": float(np.mean(np.sign(o) == np.sign(p)))}


def plot_rank_matrix(ax: Axes, matrix: pd.DataFrame, *, title: str = "", cmap: str = "YlGnBu", vmin: float = -1.0,
                     vmax: float = 1.0, annot: bool = True, fmt: str = ".2g") -> Axes:
    """A Spearman matrix as an annotated heat map (YlGnBu as the paper), rows/columns labelled."""
    import seaborn as sns  # deferred: heavy, only for the heat maps

    labels_ = [RANK_LABELS.get(k, label(k)) for k in matrix.index]
    sns.heatmap(matrix.to_numpy(dtype=float), ax=ax, cmap=cmap, vmin=vmin, vmax=vmax, annot=annot, fmt=fmt,
                annot_kws={"fontsize": 7}, cbar=False, square=True, xticklabels=labels_, yticklabels=labels_)
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    ax.tick_params(axis="y", labelrotation=0, labelsize=7)
    ax.set_title(title, fontsize=8)
    return ax


def rank_figure(ours: pd.DataFrame, theirs: pd.DataFrame | None, *, dataset: str, network: str, seeds: int,
                paper_caption: str = "paper", figsize: tuple[float, float] = (13.0, 4.4)) -> Figure:
    """Figures 3/6/7 for one setting: our matrix (mean over ``seeds``), the paper's, and our − paper
    (RdBu, the difference summary of :func:`rank_difference` in the title)."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    fig, axes = plt.subplots(1, 3, figsize=figsize, constrained_layout=True)
    plot_rank_matrix(axes[0], ours, title=f"ours: {setting_label(dataset, network)}, mean over {seeds} seed(s)")
    if theirs is None:
        for ax in axes[1:]:
            ax.axis("off")
        axes[1].text(0.5, 0.5, paper_caption, ha="center", va="center", wrap=True, fontsize=8)
    else:
        theirs = theirs.loc[[k for k in theirs.index if k in ours.index], [k for k in theirs.columns if k in ours.index]]
        plot_rank_matrix(axes[1], theirs, title=paper_caption)
        keys = list(theirs.index)
        diff = ours.loc[keys, keys] - theirs
        s = rank_difference(ours, theirs)
        plot_rank_matrix(axes[2], diff, cmap="RdBu_r", vmin=-2.0, vmax=2.0, fmt=".2f",
                         title=f"ours − paper: mean |Δ| {s['mean_abs_diff']:.2f}, max |Δ| {s['max_abs_diff']:.2f} "
                               f"({s['max_at']}),\nsame sign {100 * s['same_sign']:.0f}% of {s['pairs']} pairs, "
                               f"Pearson(ours, paper) {s['pearson']:.2f}")
    fig_no = RANK_FIGURE.get(PAPER_DATASET.get(dataset, ""), None)
    fig.suptitle(f"Spearman rank correlation between the criteria's unit rankings"
                 f"{f' (paper Figure {fig_no})' if fig_no else ''}", fontsize=9)
    return fig


def rank_figure_stem(dataset: str, network: str) -> str:
    """File stem of a rank-correlation figure: fig3/fig6/fig7 for the paper's datasets."""
    fig_no = RANK_FIGURE.get(dataset)
    return f"fig{fig_no}_ranks_{dataset}_{network}" if fig_no else f"ranks_{dataset}_{network}"


#: BMRS_N ranks like SNR when ρ(BMRS_N, SNR) is at least the low end of the paper's range (Figures 3, 6, 7:
#: 0.67–0.95); BMRS_U ranks poorly when ρ(BMRS_U-p, SNR) is at most RANK_POOR_MAX (the paper's: −0.71 … 0.47).
#: The one rule of the rank claims: notebook 04's claims and the per-seed verdicts both use it.
RANK_LIKE_MIN = 0.67
RANK_POOR_MAX = 0.5


def rank_claims(matrix: pd.DataFrame, *, like_min: float = RANK_LIKE_MIN,
                poor_max: float = RANK_POOR_MAX) -> dict[str, Any]:
    """Claim 6 on one matrix: BMRS_N ranks like SNR (ρ(BMRS_N, SNR) ≥ ``like_min``, the low end of the paper's
    0.67–0.95) and BMRS_U ranks poorly (ρ(BMRS_U-p, SNR) ≤ ``poor_max`` for p = 8 and 4 and below
    ρ(BMRS_N, SNR); the paper's values are −0.71 … 0.47). A missing entry gives None."""

    def get(a: str, b: str) -> float | None:
        return float(matrix.loc[a, b]) if a in matrix.index and b in matrix.columns else None

    n, u8, u4 = get("bmrs_n", "snr"), get("bmrs_u8", "snr"), get("bmrs_u4", "snr")
    like = None if n is None else bool(n >= like_min - 1e-9)
    us = [u for u in (u8, u4) if u is not None]
    poor = None if not us or n is None else bool(all(u <= poor_max and u < n for u in us))
    return {"rho_n_snr": n, "rho_u8_snr": u8, "rho_u4_snr": u4, "bmrs_n_like_snr": like, "bmrs_u_ranks_poorly": poor}


#: The columns of :func:`rank_summary` (followed by diff_* columns from :func:`rank_difference`).
RANK_SUMMARY_COLUMNS = ("dataset", "network", "seeds", "rho_n_snr", "rho_u8_snr", "rho_u4_snr", "bmrs_n_like_snr",
                        "bmrs_u_ranks_poorly", "paper_rho_n_snr", "paper_rho_u8_snr", "paper_rho_u4_snr")


def rank_summary(ranks: pd.DataFrame, *, like_min: float = RANK_LIKE_MIN,
                 poor_max: float = RANK_POOR_MAX) -> pd.DataFrame:
    """Per setting of ``ranks``: the number of seeds, :func:`rank_claims` on our mean matrix, the paper's
    ρ(·, SNR) of the same pairs (None where the paper has no matrix) and :func:`rank_difference` between the
    two (columns ``diff_*``)."""
    rows = []
    for dataset, network in (settings_of(ranks) if not ranks.empty else []):
        ours = mean_rank_matrix(ranks, dataset, network)
        theirs, _ = paper_rank_matrix(dataset, network)
        mine = rank_claims(ours, like_min=like_min, poor_max=poor_max)
        paper_claims = rank_claims(theirs, like_min=like_min, poor_max=poor_max) if theirs is not None else {}
        diff = rank_difference(ours, theirs) if theirs is not None else {}
        rows.append({"dataset": dataset, "network": network, "seeds": int(_select(ranks, dataset, network)["seed"].nunique()),
                     **mine, **{f"paper_{k}": paper_claims.get(k) for k in ("rho_n_snr", "rho_u8_snr", "rho_u4_snr")},
                     **{f"diff_{k}": v for k, v in diff.items()}})
    return pd.DataFrame(rows, columns=list(dict.fromkeys([*RANK_SUMMARY_COLUMNS, *[k for r in rows for k in r]])))


def _rho(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.2f}"


def rank_summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`rank_summary` for display: ρ(BMRS_N/U-8/U-4, SNR) ours / paper and how far our matrix is from
    the paper's (mean and largest |ours − paper|, with the pair)."""
    n = len(summary)
    mean_diff = summary["diff_mean_abs_diff"] if "diff_mean_abs_diff" in summary else [None] * n
    max_diff = summary["diff_max_abs_diff"] if "diff_max_abs_diff" in summary else [None] * n
    max_at = summary["diff_max_at"] if "diff_max_at" in summary else [""] * n
    out = {"setting": [setting_label(d, w) for d, w in zip(summary["dataset"], summary["network"])]}
    for key, name in (("rho_n_snr", "BMRS_N"), ("rho_u8_snr", "U-8"), ("rho_u4_snr", "U-4")):
        out[f"ρ({name}, SNR) ours / paper"] = [f"{_rho(a)} / {_rho(b)}"
                                               for a, b in zip(summary[key], summary[f"paper_{key}"])]
    out["mean |ours − paper|"] = [_rho(v) for v in mean_diff]
    out["max |ours − paper| (pair)"] = [f"{_rho(v)} ({w})" for v, w in zip(max_diff, max_at)]
    return pd.DataFrame(out)


def verdict(value: bool | None) -> str:
    """'confirmed' / 'not confirmed' / 'not tested'."""
    return "not tested" if value is None else ("confirmed" if value else "not confirmed")


# --------------------------------------------------------------------------------------------------
# The baselines table (notebook 07)
# --------------------------------------------------------------------------------------------------

#: the columns deployment_metrics adds to a continuous summary
DEPLOYMENT_COLUMNS = ("parameters", "dense_parameters", "macs", "latency_ms", "dense_latency_ms", "dense_macs",
                      "mac_reduction_pct", "speedup")


def deployment_metrics(summary: pd.DataFrame, *, results_dir: str | os.PathLike[str] | None = None,
                       repeats: int = 20, threads: int = 1) -> pd.DataFrame:
    """Add parameters, MACs and latency of the deployable (physically shrunk) network to a
    ``continuous`` summary (one row per run, with run_id).

    * post-hoc methods (L2, C-OBD, Dirichlet, EigenDamage): from the run's metrics (``final``:
      parameters, macs, dense_parameters, latency_batch32 = side-by-side timing of the dense and the
      pruned network at batch 32);
    * methods that prune while training (the BMRS family, SNR, E[θ]): the run's network is shrunk
      (bmrs.nn.shrink.shrink) and measured here the same way (batch 32 of the input shape, ``threads``
      thread(s), ``repeats`` interleaved rounds, dense = the same network with all masks at one).

    Added columns: parameters, dense_parameters, macs, dense_macs, mac_reduction_pct, latency_ms,
    dense_latency_ms, speedup (dense / pruned median, measured side by side)."""
    root = Path(results_dir or RESULTS_DIR)
    dense_macs: dict[tuple[str, str], int] = {}
    rows = []
    for rec in summary.to_dict("records"):
        out = dict(rec)
        run = root / str(rec["run_id"])
        metrics = read_json(run / "metrics.json") if (run / "metrics.json").exists() else {}
        final = metrics.get("final", {})
        key = (rec["dataset"], rec["network"])
        if "latency_batch32" in final:
            lat = final["latency_batch32"]
            out.update(parameters=final.get("parameters"), dense_parameters=final.get("dense_parameters"),
                       macs=final.get("macs"), latency_ms=1e3 * lat["pruned"]["median_s"],
                       dense_latency_ms=1e3 * lat["dense"]["median_s"])
            if rec["method"] != "eigendamage" and key not in dense_macs:
                model = load_run(run).eval()
                dense_macs[key] = count_macs(dense_network(model), model.input_spec.example(1))
        else:
            model = load_run(run).eval()
            small = shrink(model)
            dense = dense_network(model)
            with torch.no_grad():
                lat = compare_latency({"dense": dense, "pruned": small}, model.input_spec.example(32),
                                      threads=threads, repeats=repeats)
            dense_macs.setdefault(key, count_macs(dense, model.input_spec.example(1)))
            out.update(parameters=count_parameters(small), dense_parameters=count_parameters(dense),
                       macs=count_macs(small, model.input_spec.example(1)),
                       latency_ms=1e3 * lat["pruned"]["median_s"], dense_latency_ms=1e3 * lat["dense"]["median_s"])
        rows.append(out)
    if not rows:  # no run finished yet (source "finished"): the same columns, no rows
        return summary.iloc[0:0].reindex(columns=[*summary.columns, *DEPLOYMENT_COLUMNS])
    df = pd.DataFrame(rows)
    df["dense_macs"] = [dense_macs.get((d, n), np.nan) for d, n in zip(df["dataset"], df["network"])]
    for col in ("parameters", "dense_parameters", "macs", "dense_macs", "latency_ms", "dense_latency_ms"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    df["mac_reduction_pct"] = 100.0 * (1.0 - df["macs"] / df["dense_macs"])
    df["speedup"] = df["dense_latency_ms"] / df["latency_ms"]
    # the paper's metric counts removed units; EigenDamage removes eigen-directions, not units
    df.loc[df["method"] == "eigendamage", "param_compression_pct"] = np.nan
    return df


def _fmt(values: pd.Series, decimals: int = 2, integer: bool = False) -> str:
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    if v.size == 0:
        return "n/a"
    if integer:
        return f"{v.mean():,.0f}" + (f" ± {v.std():,.0f}" if v.size > 1 else "")
    return f"{v.mean():.{decimals}f}" + (f" ± {v.std():.{decimals}f}" if v.size > 1 else "")


BASELINE_TABLE_METHODS: tuple[str, ...] = ("bmrs_n_code", "bmrs_u8", "bmrs_u4", "l2", "c_obd", "dirichlet",
                                           "eigendamage")


def baselines_table(df: pd.DataFrame, methods: Sequence[str] = BASELINE_TABLE_METHODS) -> pd.DataFrame:
    """The continuous-pruning comparison of notebook 07, one row per (setting, method): mean ± population
    std over seeds of test accuracy, the paper's parameter metric (n/a for EigenDamage), the actual
    parameter compression of the rebuilt network (rotations included), parameters, MACs, MAC
    reduction, latency at batch 32 and the speed-up over the dense network."""
    rows = []
    for dataset, network in settings_of(df):
        sub = _select(df, dataset, network)
        for m in [m for m in methods if m in set(sub["method"])]:
            g = sub[sub["method"] == m]
            rows.append({"setting": setting_label(dataset, network), "method": label(m), "seeds": len(g),
                         "acc. %": _fmt(g["test_acc"]), "param. comp. % (paper metric)": _fmt(g["param_compression_pct"]),
                         "actual param. comp. %": _fmt(g["actual_param_compression_pct"]),
                         "parameters": _fmt(g["parameters"], integer=True), "MACs": _fmt(g["macs"], integer=True),
                         "MAC cut %": _fmt(g["mac_reduction_pct"]), "latency b32 ms": _fmt(g["latency_ms"], 3),
                         "speed-up (x)": _fmt(g["speedup"])})
    columns = ["setting", "method", "seeds", "acc. %", "param. comp. % (paper metric)", "actual param. comp. %",
               "parameters", "MACs", "MAC cut %", "latency b32 ms", "speed-up (x)"]
    return pd.DataFrame(rows, columns=columns).set_index(["setting", "method"])


# --------------------------------------------------------------------------------------------------
# Tables on disk
# --------------------------------------------------------------------------------------------------

def write_table(df: pd.DataFrame, stem: str, *, profile: str, directory: str | os.PathLike[str] = "results/tables",
                title: str | None = None, seeds: Sequence[int] | None = None, epochs: str | None = None,
                source: str | None = None) -> list[Path]:
    """Write ``<directory>/<stem>.md`` and ``.tex`` (:func:`bmrs.report.tables.write_table`)."""
    return tables.write_table(df, stem, profile=profile, directory=directory, seeds=seeds, epochs=epochs, title=title,
                              source=source)


def markdown(df: pd.DataFrame, floatfmt: str = ".2f") -> str:
    """A DataFrame as a GitHub Markdown table (for display in the notebooks)."""
    flat = df.reset_index() if not isinstance(df.index, pd.RangeIndex) else df
    return tabulate(flat, headers="keys", tablefmt="github", showindex=False, floatfmt=floatfmt, disable_numparse=True)


__all__ = [
    "Averaging", "BMRS_CRITERIA", "CRITERION_ORDER", "Knee", "RANK_ORDER", "XMetric", "accuracy_at", "average_curves",
    "average_index", "average_interp", "baselines_table", "chord_distances", "criterion_key", "deployment_metrics",
    "figure2", "figure_grid", "find_knee", "knees", "knees_table", "label", "markdown", "mean_curve", "mean_rank_matrix",
    "normalize_curves", "paper_rank_matrix", "paper_stop_marker", "present_criteria", "plot_rank_matrix", "plot_stop_density",
    "plot_tradeoff", "RANK_LIKE_MIN", "RANK_POOR_MAX", "rank_claims", "rank_difference", "rank_figure",
    "rank_figure_stem", "rank_summary",
    "rank_summary_table", "seed_curves", "settings_of", "stopping_points", "stops_table", "stops_text", "stops_vs_knee",
    "verdict", "write_table",
]
