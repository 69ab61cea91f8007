"""bmrs.report.curves on synthetic data: knees, stopping points, averaging over seeds, figures, rank matrices."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import LineCollection, PathCollection  # noqa: E402

from bmrs.report import curves as C  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# --------------------------------------------------------------------------------------------------
# Synthetic post-training summaries
# --------------------------------------------------------------------------------------------------

def _curve(knee: float, top: float = 95.0, floor: float = 10.0, xs=None) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy flat at `top` up to `knee` % compression, then linear down to `floor` at 100 %."""
    xs = np.linspace(0, 100, 21) if xs is None else np.asarray(xs, float)
    ys = np.where(xs <= knee, top, top - (top - floor) * (xs - knee) / (100 - knee))
    return xs, ys


def synthetic_posttrain(seeds=(1, 2, 3), dataset="mnist", network="mlp") -> pd.DataFrame:
    """SNR/L2 curves over the whole range and BMRS curves that stop by themselves, per seed; the
    criterion column holds display names as the sweep records do."""
    rows = []
    rng = np.random.default_rng(0)
    stops = {"BMRS_N (code, no 2pi)": 70.0, "BMRS_U-8": 75.0, "BMRS_U-4": 85.0}
    for seed in seeds:
        for name, knee in (("SNR", 70.0), ("L2", 40.0)):
            xs, ys = _curve(knee)
            for i, (x, y) in enumerate(zip(xs, ys)):
                rows.append({"dataset": dataset, "network": network, "seed": seed, "criterion": name, "level": float(i),
                             "test_acc": y + rng.normal(0, 0.5), "param_compression_pct": x,
                             "actual_param_compression_pct": min(100.0, x * 1.01)})
        for name, stop in stops.items():
            end = stop + 2.0 * seed  # each seed stops a little further
            xs = np.linspace(0, end, 6)
            _, ys = _curve(70.0, xs=xs)
            for i, (x, y) in enumerate(zip(xs, ys)):
                rows.append({"dataset": dataset, "network": network, "seed": seed, "criterion": name, "level": float(i),
                             "test_acc": y - seed + rng.normal(0, 0.5), "param_compression_pct": x,
                             "actual_param_compression_pct": x})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,key", [("BMRS_N (code, no 2pi)", "bmrs_n_code"), ("BMRS_N", "bmrs_n"),
                                      ("BMRS_U-8", "bmrs_u8"), ("BMRS_U-4", "bmrs_u4"), ("E[theta]", "etheta"),
                                      ("C-OBD", "c_obd"), ("Dirichlet (code-faithful)", "dirichlet"),
                                      ("EigenDamage", "eigendamage"), ("snr", "snr"), ("bmrs_u4", "bmrs_u4"),
                                      ("something else", "something else")])
def test_criterion_key(name, key):
    assert C.criterion_key(name) == key


def test_normalize_curves_maps_names_and_sorts():
    df = C.normalize_curves(synthetic_posttrain().sample(frac=1.0, random_state=1))
    assert set(df["criterion"]) == {"snr", "l2", "bmrs_n_code", "bmrs_u8", "bmrs_u4"}
    for _, g in df.groupby(["criterion", "seed"]):
        assert g["level"].is_monotonic_increasing
    with pytest.raises(ValueError, match="test_acc"):
        C.normalize_curves(pd.DataFrame({"criterion": ["l2"], "level": [0.0]}))


# --------------------------------------------------------------------------------------------------
# Knees
# --------------------------------------------------------------------------------------------------

def test_knee_of_a_corner_is_the_corner():
    xs, ys = _curve(70.0)
    k = C.find_knee(xs, ys)
    assert k.defined and k.x == pytest.approx(70.0) and k.y == pytest.approx(95.0)
    assert k.resolution == pytest.approx(5.0) and 0 < k.distance <= 1 / np.sqrt(2)
    # the order and repeated points do not matter
    perm = np.random.default_rng(3).permutation(len(xs))
    k2 = C.find_knee(np.r_[xs[perm], 70.0], np.r_[ys[perm], 95.0])
    assert k2.x == pytest.approx(70.0)


@pytest.mark.parametrize("p", [2.0, 4.0, 8.0])
def test_knee_of_a_smooth_curve_matches_the_analytic_maximum(p):
    # y = 1 - x^p on [0, 1]: the chord is y = 1 - x; the distance above it is x - x^p, maximal at
    # x* = (1/p)^(1/(p-1)); scaling x to percent and y to percent changes nothing after normalisation.
    x = np.linspace(0.0, 1.0, 2001)
    k = C.find_knee(100 * x, 100 * (1 - x**p))
    assert k.x == pytest.approx(100 * (1 / p) ** (1 / (p - 1)), abs=0.1)


def test_knee_is_undefined_without_a_point_above_the_chord():
    x = np.linspace(0, 100, 11)
    assert not C.find_knee(x, 90 - 0.8 * x).defined  # straight
    assert not C.find_knee(x, 10 + 0.008 * (100 - x) ** 2).defined  # convex (falls fast, then flattens)
    assert not C.find_knee([0, 50], [90, 10]).defined  # too few points
    assert not C.find_knee([], []).defined


def test_knee_ignores_nan_points():
    xs, ys = _curve(60.0)
    ys = ys.copy()
    ys[3] = np.nan
    assert C.find_knee(xs, ys).x == pytest.approx(60.0)


# --------------------------------------------------------------------------------------------------
# Averaging over seeds
# --------------------------------------------------------------------------------------------------

def test_average_index_pads_as_the_paper():
    a = (np.array([0.0, 10.0, 20.0]), np.array([90.0, 80.0, 70.0]))
    b = (np.array([0.0, 12.0]), np.array([92.0, 78.0]))
    out = C.average_index([a, b])
    assert out["n"].tolist() == [2, 2, 1]
    assert out["x"].tolist() == pytest.approx([0.0, 11.0, 20.0])
    assert out["y"].tolist() == pytest.approx([91.0, 79.0, 70.0])
    assert out["y_std"].tolist() == pytest.approx([1.0, 1.0, 0.0])  # population std (ddof 0)
    assert C.average_curves([a, b], "index").equals(out)


def test_average_interp_is_the_pointwise_mean_without_extrapolation():
    a = (np.array([0.0, 50.0, 100.0]), np.array([90.0, 80.0, 10.0]))
    b = (np.array([100.0, 0.0, 40.0]), np.array([20.0, 94.0, 86.0]))  # unsorted input
    out = C.average_interp([a, b])
    assert out["x"].tolist() == [0.0, 40.0, 50.0, 100.0]
    fa = np.interp(out["x"], [0, 50, 100], [90, 80, 10])
    fb = np.interp(out["x"], [0, 40, 100], [94, 86, 20])
    assert out["y"].to_numpy() == pytest.approx((fa + fb) / 2)
    assert out["y_std"].to_numpy() == pytest.approx(np.abs(fa - fb) / 2)
    # a curve that stops early does not extend: with 2 curves both must cover a point (coverage 0.6)
    short = (np.array([0.0, 30.0]), np.array([90.0, 85.0]))
    out = C.average_interp([a, short])
    assert out["x"].max() == 30.0 and (out["n"] == 2).all()
    out = C.average_interp([a, short], min_coverage=0.5)
    assert out["x"].max() == 100.0 and out.loc[out["x"] == 100.0, "y"].item() == 10.0
    grid = C.average_interp([a], grid=np.array([25.0, 75.0]))
    assert grid["y"].tolist() == pytest.approx([85.0, 45.0])
    with pytest.raises(ValueError):
        C.average_curves([a], "median")


def test_mean_curve_over_seeds():
    df = C.normalize_curves(synthetic_posttrain())
    curve = C.mean_curve(df, "snr")
    assert curve["x"].min() == 0 and curve["x"].max() == 100 and (curve["n"] == 3).all()
    idx = C.mean_curve(df, "snr", averaging="index")
    assert len(idx) == 21


# --------------------------------------------------------------------------------------------------
# Stopping points and the knee comparison
# --------------------------------------------------------------------------------------------------

def test_stopping_points_are_each_seeds_last_record_and_the_marker_the_max():
    df = C.normalize_curves(synthetic_posttrain())
    stops = C.stopping_points(df)
    assert set(stops["criterion"]) == {"bmrs_n_code", "bmrs_u8", "bmrs_u4"}
    assert len(stops) == 9
    u4 = stops[stops["criterion"] == "bmrs_u4"].set_index("seed")
    assert u4["x"].to_dict() == pytest.approx({1: 87.0, 2: 89.0, 3: 91.0})
    assert u4.loc[3, "level"] == 5.0
    marker = C.paper_stop_marker(stops, "bmrs_u4")
    acc3 = float(df[(df["criterion"] == "bmrs_u4") & (df["seed"] == 3)]["test_acc"].iloc[-1])
    assert marker == (pytest.approx(91.0), pytest.approx(acc3))
    assert C.paper_stop_marker(stops, "snr") is None
    # ties in compression: the last record (highest level) is the stopping point
    tie = pd.DataFrame({"dataset": "d", "network": "n", "seed": 1, "criterion": "bmrs_n",
                        "level": [0.0, 1.0, 2.0], "test_acc": [90.0, 80.0, 70.0],
                        "param_compression_pct": [0.0, 50.0, 50.0]})
    s = C.stopping_points(tie)
    assert s["level"].item() == 2.0 and s["test_acc"].item() == 70.0


def test_stops_vs_knee():
    df = C.normalize_curves(synthetic_posttrain())
    res = C.stops_vs_knee(df, tolerance=5.0).set_index("criterion")
    assert res["knee_x"].unique().tolist() == pytest.approx([70.0])  # the SNR knee
    assert res.loc["bmrs_n_code", "stop_x"] == pytest.approx(74.0)
    assert res.loc["bmrs_n_code", "dx"] == pytest.approx(4.0)
    # allowed distance: max(tolerance 5, resolution 5 / 2) = 5 percentage points
    assert res["allowed"].unique().tolist() == pytest.approx([5.0])
    assert bool(res.loc["bmrs_n_code", "near"])  # dx 4
    assert res.loc["bmrs_u8", "dx"] == pytest.approx(9.0) and not bool(res.loc["bmrs_u8", "near"])
    assert not bool(res.loc["bmrs_u4", "near"])  # dx 19
    assert bool(C.stops_vs_knee(df, tolerance=10.0).set_index("criterion").loc["bmrs_u8", "near"])
    assert res.loc["bmrs_u4", "marker_x"] == pytest.approx(91.0)
    strict = C.stops_vs_knee(df, tolerance=1.0).set_index("criterion")
    assert strict["allowed"].unique().tolist() == pytest.approx([2.5])  # resolution 5 pp -> ± 2.5
    assert not strict["near"].any()


def test_knees_table():
    df = C.normalize_curves(synthetic_posttrain())
    k = C.knees(df).set_index("criterion")
    assert k.loc["snr", "knee_x"] == pytest.approx(70.0)
    assert k.loc["l2", "knee_x"] == pytest.approx(40.0)
    assert k.loc["bmrs_u4", "curve_x_max"] <= 91.0


def test_accuracy_at():
    df = C.normalize_curves(synthetic_posttrain())
    assert C.accuracy_at(df, "snr", 50.0, x="param_compression_pct") == pytest.approx(95.0, abs=1.0)
    assert np.isnan(C.accuracy_at(df, "bmrs_n_code", 99.0, x="param_compression_pct"))


def test_stops_table_and_text_show_the_stopping_points_against_the_knee():
    res = C.stops_vs_knee(C.normalize_curves(synthetic_posttrain()), tolerance=5.0)
    t = C.stops_table(res).set_index("variant")
    assert list(t.columns) == ["seeds", "stop comp. %", "stop acc. %", "marker (max over seeds)", "SNR knee", "dx (pp)",
                               "allowed dx (pp)", "SNR acc. at stop", "near knee"]
    assert t.loc["BMRS_N", "stop comp. %"].startswith("74.0 ± ") and t.loc["BMRS_N", "dx (pp)"] == "+4.0"
    assert t.loc["BMRS_N", "near knee"] == "yes" and t.loc["BMRS_U-8", "near knee"] == "no"
    assert t.loc["BMRS_U-4", "marker (max over seeds)"].startswith("91.0 % @ ")
    assert t.loc["BMRS_N", "SNR knee"].startswith("70.0 % @ ")
    lines = C.stops_text(res)
    assert len(lines) == 3 and lines[0].startswith("BMRS_N: stops at 74.0 %") and lines[0].endswith("-> near the knee")
    assert lines[1].endswith("-> not near the knee")
    flat = res.assign(knee_x=np.nan, dx=np.nan, allowed=np.nan, near=False)
    assert C.stops_table(flat)["SNR knee"].tolist() == ["undefined"] * 3
    assert C.stops_table(flat)["dx (pp)"].tolist() == ["n/a"] * 3
    assert "the SNR curve has no knee" in C.stops_text(flat)[0]


def test_knees_table_formats_defined_and_undefined_knees():
    k = C.knees(C.normalize_curves(synthetic_posttrain()))
    t = C.knees_table(k).set_index("criterion")
    assert t.loc["SNR", "knee comp. %"] == "70.0" and t.loc["L2", "knee comp. %"] == "40.0"
    assert "distance above chord" in t.columns and "setting" not in t.columns
    short = C.knees_table(k.assign(defined=False), setting=True, distance=False)
    assert list(short.columns) == ["setting", "criterion", "knee comp. %", "knee acc. %", "resolution (pp)",
                                   "curve ends at %"]
    assert set(short["knee comp. %"]) == {"undefined"} and set(short["setting"]) == {"MNIST MLP"}


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------

def test_plot_tradeoff_draws_one_line_per_criterion():
    df = C.normalize_curves(synthetic_posttrain())
    fig, ax = plt.subplots()
    C.plot_tradeoff(ax, df, show_knees=True)
    assert len(ax.get_lines()) == 5
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["L2", "SNR", "BMRS_N", "BMRS_U-8", "BMRS_U-4"]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 3  # one black bar per BMRS variant
    # the bar sits at the largest stopping compression of each variant
    xs = sorted(float(seg[0][0]) for b in bars for seg in b.get_segments())
    assert xs == pytest.approx([74.0 + 2, 75.0 + 6, 85.0 + 6])
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(scatters) == 3 + 5  # stop markers + knee markers
    ax.clear()
    C.plot_tradeoff(ax, df, criteria=["snr", "bmrs_u4"], show_stops=False)
    assert len(ax.get_lines()) == 2 and not any(isinstance(c, LineCollection) for c in ax.collections)
    # accuracy is drawn as a fraction
    assert max(max(line.get_ydata()) for line in ax.get_lines()) < 1.0


def test_plot_stop_density_and_figure2():
    df = C.normalize_curves(synthetic_posttrain())
    fig = C.figure2(df, "mnist", "mlp")
    left, right = fig.axes
    assert len(left.get_lines()) == 5
    assert len(right.get_lines()) == 1  # the SNR mean curve only
    x = right.get_lines()[0].get_xdata()
    stops = C.stopping_points(df)
    assert min(x) >= stops["x"].min() - 5 - 1e-9 and max(x) <= stops["x"].max() + 5 + 1e-9
    assert right.get_xlim() == pytest.approx((stops["x"].min() - 5, stops["x"].max() + 5))
    points = [c for c in right.collections if isinstance(c, PathCollection)]
    assert len(points) == 3 and all(len(p.get_offsets()) == 3 for p in points)  # every seed's end point
    assert len(right.collections) > 3  # KDE contour sets (3 seeds each)
    assert "Figure 2 (f)" in fig._suptitle.get_text()
    with pytest.raises(ValueError):
        C.figure2(df, "cifar10", "mlp")


def test_plot_stop_density_without_kde_for_few_seeds():
    df = C.normalize_curves(synthetic_posttrain(seeds=(1, 2)))
    fig, ax = plt.subplots()
    C.plot_stop_density(ax, df)
    assert len(ax.get_lines()) == 1
    assert all(isinstance(c, PathCollection) for c in ax.collections)  # no KDE with 2 seeds
    ax.clear()
    C.plot_stop_density(ax, df[df["criterion"] == "snr"])
    assert "no BMRS stopping points" in ax.texts[0].get_text()


def test_figure_grid_one_panel_per_setting():
    df = pd.concat([C.normalize_curves(synthetic_posttrain(dataset=d)) for d in ("mnist", "cifar10", "digits")])
    fig = C.figure_grid(df, x="param_compression_pct")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 3 and all(len(ax.get_lines()) == 5 for ax in visible)


# --------------------------------------------------------------------------------------------------
# Rank correlations
# --------------------------------------------------------------------------------------------------

def synthetic_ranks(seeds=(1, 2)) -> pd.DataFrame:
    from bmrs.report import paper

    base = paper.rank_matrix("cifar10", "lenet5")
    rows = []
    for s in seeds:
        for r in base.index:
            for c in base.columns:
                rows.append({"dataset": "cifar10", "network": "lenet5", "seed": s, "row": r, "col": c,
                             "spearman": float(base.loc[r, c]) + (0.02 if s == 1 else -0.02) * (r != c)})
    return pd.DataFrame(rows)


def test_mean_rank_matrix_and_difference():
    ranks = synthetic_ranks()
    ours = C.mean_rank_matrix(ranks, "cifar10", "lenet5")
    assert list(ours.index) == list(C.RANK_ORDER) == list(ours.columns)
    theirs, caption = C.paper_rank_matrix("cifar10", "lenet5")
    assert "Figure 3" in caption
    assert np.allclose(ours.to_numpy(), theirs.to_numpy())  # ±0.02 averages out
    d = C.rank_difference(ours, theirs)
    assert d["pairs"] == 15 and d["mean_abs_diff"] == pytest.approx(0.0, abs=1e-12) and d["same_sign"] == 1.0
    shifted = ours.copy()
    shifted.loc["bmrs_u4", "snr"] = shifted.loc["snr", "bmrs_u4"] = -0.5
    d = C.rank_difference(shifted, theirs)
    assert d["max_abs_diff"] == pytest.approx(0.77) and d["max_at"] == "SNR/BMRS_U-4"
    # datasets the paper did not use are compared with the closest one
    theirs, caption = C.paper_rank_matrix("digits", "mlp")
    assert theirs is not None and "closest to digits" in caption and "Figure 7" in caption
    assert C.paper_rank_matrix("tiny_imagenet", "mlp")[0] is None
    with pytest.raises(ValueError):
        C.mean_rank_matrix(ranks, "mnist", "mlp")


def test_rank_claims_on_the_papers_matrices():
    from bmrs.report import paper

    c = C.rank_claims(paper.rank_matrix("cifar10", "lenet5"))
    assert c["rho_n_snr"] == pytest.approx(0.95) and c["bmrs_n_like_snr"] and c["bmrs_u_ranks_poorly"]
    c = C.rank_claims(paper.rank_matrix("fashion_mnist", "lenet5"))
    assert c["bmrs_n_like_snr"] and c["bmrs_u_ranks_poorly"]
    flat = pd.DataFrame(0.9, index=list(C.RANK_ORDER), columns=list(C.RANK_ORDER))
    c = C.rank_claims(flat)
    assert c["bmrs_n_like_snr"] and not c["bmrs_u_ranks_poorly"]
    assert C.rank_claims(flat.drop(index="bmrs_n"))["bmrs_n_like_snr"] is None
    below = flat.copy()
    below.loc["bmrs_n", "snr"] = 0.63  # under the paper's lowest 0.67: not "like SNR", in every table that says so
    assert C.RANK_LIKE_MIN == 0.67 and C.rank_claims(below)["bmrs_n_like_snr"] is False
    at = flat.copy()
    at.loc["bmrs_n", "snr"] = 0.67
    assert C.rank_claims(at)["bmrs_n_like_snr"] is True
    assert [C.verdict(v) for v in (True, False, None)] == ["confirmed", "not confirmed", "not tested"]


def test_rank_summary_puts_ours_beside_the_papers():
    summary = C.rank_summary(synthetic_ranks())  # ± 0.02 around the paper's CIFAR10 LeNet5 matrix: mean = paper
    assert len(summary) == 1 and list(summary.columns[: len(C.RANK_SUMMARY_COLUMNS)]) == list(C.RANK_SUMMARY_COLUMNS)
    r = summary.iloc[0]
    assert r["seeds"] == 2 and r["rho_n_snr"] == pytest.approx(0.95) and r["paper_rho_n_snr"] == pytest.approx(0.95)
    assert r["rho_u4_snr"] == pytest.approx(0.27) and r["diff_mean_abs_diff"] == pytest.approx(0.0, abs=1e-12)
    assert bool(r["bmrs_n_like_snr"]) and bool(r["bmrs_u_ranks_poorly"])
    t = C.rank_summary_table(summary)
    assert t["ρ(BMRS_N, SNR) ours / paper"].tolist() == ["0.95 / 0.95"]
    assert t["ρ(U-8, SNR) ours / paper"].tolist() == ["0.47 / 0.47"] and t["mean |ours − paper|"].tolist() == ["0.00"]
    digits = synthetic_ranks().assign(dataset="digits")  # the paper has no digits: the closest is MNIST's matrix
    assert C.rank_summary(digits)["paper_rho_n_snr"].notna().all()
    empty = C.rank_summary(synthetic_ranks().iloc[:0])
    assert empty.empty and list(empty.columns) == list(C.RANK_SUMMARY_COLUMNS)


def test_rank_figure_panels():
    ranks = synthetic_ranks()
    ours = C.mean_rank_matrix(ranks, "cifar10", "lenet5")
    theirs, caption = C.paper_rank_matrix("cifar10", "lenet5")
    fig = C.rank_figure(ours, theirs, dataset="cifar10", network="lenet5", seeds=2, paper_caption=caption)
    assert len(fig.axes) == 3
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["SNR", "E[θ]", "L2", "BMRS_N", "BMRS_U-8",
                                                                     "BMRS_U-4"]
    assert len(fig.axes[0].texts) == 36  # annotated
    assert "mean |Δ|" in fig.axes[2].get_title()
    fig = C.rank_figure(ours, None, dataset="cifar10", network="lenet5", seeds=2, paper_caption="none")
    assert not fig.axes[1].axison
    assert C.rank_figure_stem("cifar10", "lenet5") == "fig3_ranks_cifar10_lenet5"
    assert C.rank_figure_stem("digits", "mlp") == "ranks_digits_mlp"


# --------------------------------------------------------------------------------------------------
# The baselines table and writing tables
# --------------------------------------------------------------------------------------------------

def test_baselines_table_formats_mean_std_and_na():
    rows = []
    for seed, acc in ((1, 90.0), (2, 92.0)):
        for method in ("bmrs_n_code", "eigendamage"):
            rows.append({"dataset": "mnist", "network": "lenet5", "method": method, "seed": seed, "test_acc": acc,
                         "param_compression_pct": np.nan if method == "eigendamage" else 80.0,
                         "actual_param_compression_pct": 81.0, "parameters": 1000, "macs": 5000,
                         "mac_reduction_pct": 50.0, "latency_ms": 0.5, "speedup": 2.0})
    t = C.baselines_table(pd.DataFrame(rows))
    assert list(t.index) == [("MNIST LeNet5", "BMRS_N"), ("MNIST LeNet5", "EigenDamage")]
    assert t.loc[("MNIST LeNet5", "BMRS_N"), "acc. %"] == "91.00 ± 1.00"
    assert t.loc[("MNIST LeNet5", "EigenDamage"), "param. comp. % (paper metric)"] == "n/a"
    assert t.loc[("MNIST LeNet5", "BMRS_N"), "parameters"] == "1,000 ± 0"


def test_write_table_writes_markdown_and_latex_with_the_caption(tmp_path):
    df = pd.DataFrame({"method": ["BMRS_N", "C-OBD"], "acc. %": ["91.00 ± 1.00", "90.00"]}).set_index("method")
    paths = C.write_table(df, "t", profile="smoke", directory=tmp_path, seeds=[1, 2], title="A table")
    assert [p.suffix for p in paths] == [".md", ".tex"] and all(p.stat().st_size > 0 for p in paths)
    md = paths[0].read_text()
    assert "Profile: smoke" in md and "seeds: 1, 2" in md and "C-OBD" in md
    assert "\\begin{table}" in paths[1].read_text() or "\\begin{tabular}" in paths[1].read_text()
    with pytest.raises(ValueError):
        C.write_table(df, "t", profile="", directory=tmp_path)


def test_stops_vs_knee_of_a_partial_summary_without_bmrs_sweeps_has_its_columns():
    """source "finished" while only the L2/SNR sweeps are done: no stopping point yet, but a frame that the
    notebook can filter by setting."""
    df = C.normalize_curves(synthetic_posttrain())
    res = C.stops_vs_knee(df[df["criterion"].isin(["snr", "l2"])])
    assert res.empty and list(res.columns) == C.STOP_COLUMNS
    assert res[(res["dataset"] == "x") & (res["network"] == "y")].empty
    assert list(C.stops_vs_knee(df).columns) == C.STOP_COLUMNS
