"""The paper's claims about post-training pruning and the noise layers' cost, and the baselines' findings,
checked on our summaries (the tables of notebooks 04, 06 and 07; notebook 03's claims are
:func:`bmrs.report.tables.claims_check`).

* :func:`posttrain_claims` — Figure 2: "BMRS stops near the knee of the trade-off curve in every setting,
  except BMRS_U-4, which does so in 4 of 6" (its caption: BMRS_N and BMRS_U-8 consistently), checked as
  near the reference (SNR) knee in every setting, and for U-4 in at least two thirds of them; Figures 3,
  6, 7: "BMRS_N ranks like SNR (Spearman 0.67–0.95)" and "BMRS_U ranks poorly" (:func:`curves.rank_claims`);
  and the visual claim about the density of the BMRS points, listed as not tested.
* :func:`noise_overhead_claims` — Appendix D (Tables 3, 4): the noise layers multiply the "Train" time by
  :data:`PAPER_TRAIN_SLOWDOWN` and leave inference almost unchanged; our ranges beside the paper's.
* :func:`baselines_findings` — notebook 07: which method is most accurate at BMRS_N's compression (the
  continuous comparison and the post-training curves) and where each curve's knee lies.

Verdicts are "confirmed", "not confirmed" or "not tested" (:func:`bmrs.report.curves.verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from bmrs.report import curves as C
from bmrs.report.cost import span
from bmrs.report.labels import network_label

#: Appendix D's "Train" slow-down of the noise layers per network (its Tables 3 and 4: noisy rows / None).
PAPER_TRAIN_SLOWDOWN: dict[str, tuple[float, float]] = {"mlp": (4.6, 8.3), "lenet5": (2.6, 5.1),
                                                         "resnet50": (4.6, 6.9), "vit_b16": (1.35, 1.39)}
#: The BMRS variants whose stopping points Figure 2 marks, in the order the claims are listed.
STOP_VARIANTS = ("bmrs_n_code", "bmrs_n", "bmrs_u8", "bmrs_u4")


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.2f}"


def posttrain_claims(stops: pd.DataFrame, ranks: pd.DataFrame, *, settings: int, reference: str = "snr",
                     like_min: float = C.RANK_LIKE_MIN, poor_max: float = C.RANK_POOR_MAX) -> pd.DataFrame:
    """The post-training claims on our numbers. ``stops``: :func:`bmrs.report.curves.stops_vs_knee`;
    ``ranks``: :func:`bmrs.report.curves.rank_summary` (thresholds ``like_min``, ``poor_max``); ``settings``:
    the number of settings the sweeps ran. Columns: claim, ours, verdict."""
    rows = []
    for c in [c for c in STOP_VARIANTS if c in set(stops["criterion"])]:
        s = stops[stops["criterion"] == c]
        near = int(s["near"].sum())
        tested = int(s["knee_x"].notna().sum())
        need = settings if c != "bmrs_u4" else int(np.ceil(2 * settings / 3))
        ok = None if tested == 0 else bool(near >= need)
        where = ", ".join(f"{C.setting_label(d, n)}: dx {dx:+.1f} pp" for d, n, dx in zip(s["dataset"], s["network"], s["dx"]))
        rows.append({"claim": f"{C.label(c)} stops near the knee of the {C.label(reference)} curve "
                              f"({'≥ 2/3 of' if c == 'bmrs_u4' else 'all'} settings)",
                     "ours": f"near in {near} of {settings} ({where})", "verdict": C.verdict(ok)})
    detail = ", ".join(f"{C.setting_label(d, n)}: ρ_N {_f(a)}, ρ_U8 {_f(b)}, ρ_U4 {_f(e)}"
                       for d, n, a, b, e in zip(ranks["dataset"], ranks["network"], ranks["rho_n_snr"],
                                                 ranks["rho_u8_snr"], ranks["rho_u4_snr"]))
    for key, text in (("bmrs_n_like_snr", f"BMRS_N ranks like SNR (ρ ≥ {like_min})"),
                      ("bmrs_u_ranks_poorly", f"BMRS_U ranks poorly (ρ(U, SNR) ≤ {poor_max} and below ρ(BMRS_N, SNR))")):
        values = [bool(v) for v in (ranks[key] if key in ranks else []) if v is not None and not pd.isna(v)]
        ok = None if not values else all(values)
        rows.append({"claim": text, "ours": f"holds in {sum(values)} of {len(values)} setting(s) ({detail})",
                     "verdict": C.verdict(ok)})
    rows.append({"claim": "BMRS point density near the optimum (except MLP MNIST)", "ours": "visual; see the right panels",
                 "verdict": "not tested"})
    return pd.DataFrame(rows, columns=["claim", "ours", "verdict"])


def noise_overhead_claims(cmp: pd.DataFrame,
                          slowdown: Mapping[str, tuple[float, float]] = PAPER_TRAIN_SLOWDOWN) -> pd.DataFrame:
    """Appendix D's takeaway beside ours, per network of ``cmp`` (:func:`bmrs.report.cost.steps_vs_paper`):
    the paper's Train and Inference ratio ranges (noise / None) and our ranges over the datasets measured,
    for the train step, the train forward and inference."""
    rows = []
    for net, g in cmp.groupby("network", sort=False):
        lo, hi = slowdown.get(net, (math.nan, math.nan))
        has_inf = "paper_inference_ratio_min" in g and g["paper_inference_ratio_min"].notna().any()
        rows.append({
            "network": network_label(net), "paper: Train ratio": span(lo, hi, unit="×"),
            "ours: train step": span(g["train_step_ratio"].min(), g["train_step_ratio"].max(), unit="×"),
            "ours: train forward": span(g["train_forward_ratio"].min(), g["train_forward_ratio"].max(), unit="×"),
            "paper: Inf. ratio": (span(g["paper_inference_ratio_min"].min(), g["paper_inference_ratio_max"].max(),
                                        unit="×") if has_inf else "—"),
            "ours: inference": span(g["inference_ratio"].min(), g["inference_ratio"].max(), unit="×")})
    return pd.DataFrame(rows, columns=["network", "paper: Train ratio", "ours: train step", "ours: train forward",
                                       "paper: Inf. ratio", "ours: inference"])


def best_of(acc: pd.Series, tie: float = 0.005) -> str:
    """'best X (a %)' for the most accurate method of ``acc`` (method key -> accuracy %), or 'tie between X,
    Y (a %)' when several are within ``tie`` points of the best."""
    top = float(acc.max())
    winners = [C.label(m) for m, a in acc.items() if a >= top - tie]
    return f"best {winners[0]} ({top:.2f} %)" if len(winners) == 1 else f"tie between {', '.join(winners)} ({top:.2f} %)"


def baselines_findings(runs: pd.DataFrame, curves: pd.DataFrame | None, *, x: str = "actual_param_compression_pct",
                       averaging: C.Averaging = "interp", reference: str = "bmrs_n_code") -> list[str]:
    """Which method wins where, in sentences (Markdown bold setting names): per setting of ``runs`` (the
    continuous comparison, one row per run with test_acc and actual_param_compression_pct) the methods
    ranked by accuracy at ``reference``'s compression (the BMRS_U variants reach their own), and per setting
    of ``curves`` (normalised post-training curves) every method's accuracy at ``reference``'s mean stopping
    compression and where the knees lie (a BMRS curve ends at its stopping point, so the furthest-right and
    most accurate knees are taken among the other criteria when they have one)."""
    lines: list[str] = []
    own = ("bmrs_u8", "bmrs_u4")  # they reach their own compression
    for dataset, network in C.settings_of(runs):
        t = runs[(runs["dataset"] == dataset) & (runs["network"] == network)]
        means = t.groupby("method")[["test_acc", "actual_param_compression_pct"]].mean()
        head = f"**{C.setting_label(dataset, network)}**"
        if reference not in means.index:
            lines.append(f"{head} — {C.label(reference)} was not run; no matched comparison.")
            continue
        target = means.loc[reference, "actual_param_compression_pct"]
        order = means.drop(index=[m for m in own if m in means.index]).sort_values("test_acc", ascending=False)
        ranking = ", ".join(f"{C.label(m)} {r.test_acc:.2f} % (at {r.actual_param_compression_pct:.1f} %)"
                            for m, r in order.iterrows())
        lines.append(f"{head} — continuous pruning at {C.label(reference)}'s actual compression {target:.1f} %: "
                     f"{best_of(order['test_acc'])}; ranking: {ranking}.")
        for u in [u for u in own if u in means.index]:
            r = means.loc[u]
            lines.append(f"  {C.label(u)} reaches {r.actual_param_compression_pct:.1f} % at {r.test_acc:.2f} % "
                         f"({r.test_acc - means.loc[reference, 'test_acc']:+.2f} pp accuracy vs {C.label(reference)}, "
                         f"{r.actual_param_compression_pct - target:+.1f} pp compression).")
    if curves is None or curves.empty:  # no post-training sweep yet (a partial result): the runs' part only
        return lines
    stops = C.stopping_points(curves, x=x)
    knee_rows = C.knees(curves, x=x, averaging=averaging)
    for dataset, network in C.settings_of(curves):
        sub = curves[(curves["dataset"] == dataset) & (curves["network"] == network)]
        head = f"**{C.setting_label(dataset, network)}, post-training curves**"
        st = stops[(stops["dataset"] == dataset) & (stops["network"] == network) & (stops["criterion"] == reference)]
        if not st.empty:
            at = float(st["x"].mean())
            accs = {c: C.accuracy_at(sub, c, at, x=x, averaging=averaging) for c in C.present_criteria(sub)}
            reach = {c: a for c, a in accs.items() if np.isfinite(a)}
            if reach:
                missed = [C.label(c) for c in accs if c not in reach]
                lines.append(f"{head} — at {C.label(reference)}'s stopping compression {at:.1f} %: "
                             f"{best_of(pd.Series(reach))}; " + ", ".join(f"{C.label(c)} {a:.2f} %" for c, a in reach.items())
                             + (f"; not reached by {', '.join(missed)}" if missed else "") + ".")
        k = knee_rows[(knee_rows["dataset"] == dataset) & (knee_rows["network"] == network)] if len(knee_rows) else knee_rows
        k = k[k["defined"]] if len(k) else k
        if len(k):
            full = k[~k["criterion"].isin(C.BMRS_CRITERIA)]
            pool = full if not full.empty else k
            right, high = pool.loc[pool["knee_x"].idxmax()], pool.loc[pool["knee_acc"].idxmax()]
            lines.append(f"  Knees: furthest right {C.label(right['criterion'])} ({right['knee_x']:.1f} % at "
                         f"{right['knee_acc']:.2f} %), most accurate {C.label(high['criterion'])} ({high['knee_x']:.1f} % "
                         f"at {high['knee_acc']:.2f} %); "
                         + ", ".join(f"{C.label(r.criterion)} {r.knee_x:.1f} %" for r in k.itertuples()) + ".")
        else:
            lines.append(f"{head} — no curve has a defined knee (flat or convex curves).")
    return lines
