"""Our numbers beside the paper's, with a verdict per cell and per claim, seed by seed.

* :func:`cell_verdicts` — every cell of a Table 1 column we ran: our mean ± std over seeds beside the paper's
  mean ± std, and whether ours lies within the paper's mean ± 2 std (accuracy) and within ±5 points
  (parameter compression, the paper's metric; the physically shrunk network's compression beside it).
* :func:`claim_verdicts` — the paper's headline claims (its discussion of Table 1 and Figures 2, 3 and
  6) that one setting can test, each with the number of seeds that agree:
  SNR's collapse, L2's collapse at BMRS_N's structure fraction, E[θ]'s spread over seeds, BMRS_U-4 compressing
  most among the BMRS variants, BMRS stopping near the knee of the post-training curve, BMRS_N ranking like
  SNR (Spearman 0.67-0.95), BMRS_U ranking poorly, and the 2π erratum of Eq. 8 (the released code's ΔF_N
  without 2π prunes; Eq. 8 prunes less).

A claim's expected answer for a setting is the paper's own: what its numbers show for that setting (e.g. SNR
collapses on the F-MNIST MLP, 10.00 % in Table 1), or the claim's general form where the paper has no number.
"Collapsed" is :func:`bmrs.report.tables.collapse_threshold` (halfway between chance and the unpruned network).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bmrs.report import curves, paper, tables
from bmrs.report.labels import method_label, setting_label

ACC_SIGMAS = 2.0  # accuracy agrees when |ours - paper| <= 2 paper std
COMP_POINTS = 5.0  # compression agrees when |ours - paper| <= 5 percentage points
CELL_METHODS = tables.PAPER_METHODS + tables.EXTRA_METHODS


def _pm(values: pd.Series) -> tuple[float, float, int]:
    x = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    return (float(x.mean()), float(x.std(ddof=0)), int(x.size)) if x.size else (math.nan, math.nan, 0)


def _fmt(mean: float, std: float, n: int | None = None, missing: str = tables.NOT_RUN) -> str:
    if not math.isfinite(mean):
        return missing
    return tables.format_mean_std(mean, std, n)


def cell_verdicts(summary: pd.DataFrame, table: str = "table1") -> pd.DataFrame:
    """One row per (network, dataset, method) of ``summary`` (a ``continuous`` summary): ours beside the
    paper's, with ``acc_ok`` (within the paper's mean ± 2 std) and ``comp_ok`` (within ±5 points). Settings come
    in the order they first appear in ``summary``, methods within one in Table 1's row order
    (:data:`CELL_METHODS`, others after), whatever order the summary's rows are in."""
    rows = []
    settings = {s: i for i, s in enumerate(curves.settings_of(summary))}  # (dataset, network) pairs
    methods = {m: i for i, m in enumerate(CELL_METHODS)}
    groups = sorted(summary.groupby(["network", "dataset", "method"], sort=False),
                    key=lambda item: (settings[item[0][1], item[0][0]], methods.get(item[0][2], len(methods))))
    for (net, ds, method), g in groups:
        acc, acc_sd, n = _pm(g["test_acc"])
        comp, comp_sd, _ = _pm(g["param_compression_pct"])
        act, act_sd, _ = _pm(g.get("actual_param_compression_pct", pd.Series(dtype=float)))
        p_acc = paper.table_value(table, net, ds, method, "test_accuracy_pct")
        p_comp = paper.table_value(table, net, ds, method, "param_compression_pct")
        acc_ok = None if p_acc is None or not math.isfinite(acc) else bool(
            abs(acc - p_acc[0]) <= ACC_SIGMAS * (p_acc[1] if math.isfinite(p_acc[1]) else 0.0) + 1e-9)
        comp_ok = (None if p_comp is None or not math.isfinite(comp) or method == "none"  # nothing to compress
                   else bool(abs(comp - p_comp[0]) <= COMP_POINTS))
        rows.append({"setting": setting_label(ds, net), "network": net, "dataset": ds, "method": method,
                     "label": method_label(method), "seeds": n,
                     "acc_mean": acc, "acc_std": acc_sd, "paper_acc_mean": p_acc[0] if p_acc else math.nan,
                     "paper_acc_std": p_acc[1] if p_acc else math.nan, "acc_ok": acc_ok,
                     "comp_mean": comp, "comp_std": comp_sd, "paper_comp_mean": p_comp[0] if p_comp else math.nan,
                     "paper_comp_std": p_comp[1] if p_comp else math.nan, "comp_ok": comp_ok,
                     "actual_comp_mean": act, "actual_comp_std": act_sd})
    return pd.DataFrame(rows)


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "NO")


def cell_table(verdicts: pd.DataFrame) -> pd.DataFrame:
    """:func:`cell_verdicts` formatted for display: one row per setting and method."""
    out = []
    for r in verdicts.to_dict("records"):
        out.append({"setting": r["setting"], "method": r["label"], "seeds": r["seeds"],
                    "Acc. % ours": _fmt(r["acc_mean"], r["acc_std"]),
                    "Acc. % paper": _fmt(r["paper_acc_mean"], r["paper_acc_std"], missing=tables.NOT_REPORTED),
                    "acc. within ±2σ": _yes_no(r["acc_ok"]),
                    "Comp. % ours": _fmt(r["comp_mean"], r["comp_std"]),
                    "Comp. % paper": _fmt(r["paper_comp_mean"], r["paper_comp_std"], missing=tables.NOT_REPORTED),
                    "comp. within ±5": _yes_no(r["comp_ok"]),
                    "actual comp. % (shrunk)": _fmt(r["actual_comp_mean"], r["actual_comp_std"])})
    return pd.DataFrame(out).set_index(["setting", "method"]) if out else pd.DataFrame(out)


# --------------------------------------------------------------------------------------------------
# Claims, seed by seed
# --------------------------------------------------------------------------------------------------

def _per_seed(summary: pd.DataFrame, net: str, ds: str, method: str, column: str) -> dict[int, float]:
    g = summary[(summary["network"] == net) & (summary["dataset"] == ds) & (summary["method"] == method)]
    return {int(s): float(v) for s, v in zip(g["seed"], pd.to_numeric(g[column], errors="coerce")) if pd.notna(v)}


def _percentages(values: dict[int, float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values.values()) + " %" if values else tables.NOT_RUN


def _claim(rows: list, claim: str, setting: str, expected: bool | None, per_seed: dict[int, bool | None],
           paper_text: str, detail: str = "") -> None:
    votes = {s: v for s, v in per_seed.items() if v is not None}
    agree = sum(v == expected for v in votes.values()) if expected is not None else 0
    if expected is None or not votes:
        verdict = "not testable"
    elif agree == len(votes):
        verdict = "confirmed"
    elif agree == 0:
        verdict = "not confirmed"
    else:
        verdict = "mixed"
    rows.append({"claim": claim, "setting": setting, "paper": paper_text,
                 "seeds agreeing": f"{agree} of {len(votes)}" if expected is not None and votes else "—",
                 "ours": detail, "verdict": verdict})


def claim_verdicts(summary: pd.DataFrame, posttrain: pd.DataFrame | None = None, ranks: pd.DataFrame | None = None,
                   *, table: str = "table1", x: str = "param_compression_pct") -> pd.DataFrame:
    """The headline claims this summary (and, when given, the post-training curves and rank correlations of the
    same settings) can test, with the number of seeds that agree. Columns: claim, setting, paper, seeds
    agreeing, ours, verdict ("confirmed" = every seed agrees, "mixed", "not confirmed", "not testable")."""
    rows: list[dict[str, Any]] = []
    for (net, ds), _ in summary.groupby(["network", "dataset"], sort=False):
        setting = setting_label(ds, net)

        def p(method: str, metric: str) -> tuple[float, float] | None:
            return paper.table_value(table, net, ds, method, metric)

        none_seed = _per_seed(summary, net, ds, "none", "test_acc")
        p_none = p("none", "test_accuracy_pct")

        def collapsed(acc: float, seed: int) -> bool:
            return acc <= tables.collapse_threshold(ds, none_seed.get(seed, float("nan")))

        # collapses: SNR (threshold 1), L2 at BMRS_N's structure fraction
        for method, claim in (("snr", "SNR (threshold 1) collapses"),
                              ("l2", "L2 at BMRS_N's structure fraction collapses")):
            pa = p(method, "test_accuracy_pct")
            expected = (pa[0] <= tables.collapse_threshold(ds, p_none[0] if p_none else None)) if pa else (
                True if method == "l2" else None)
            accs = _per_seed(summary, net, ds, method, "test_acc")
            _claim(rows, claim, setting, expected, {s: collapsed(a, s) for s, a in accs.items()},
                   f"{'yes' if expected else 'no'} ({pa[0]:.2f} ± {pa[1]:.2f} %)" if pa else "yes (general claim)",
                   _percentages(accs))

        # E[θ]'s spread: on LeNet5 the paper's E[θ] collapses in some seeds only (std 33-41 points), not on the MLP
        pa = p("etheta", "test_accuracy_pct")
        accs = _per_seed(summary, net, ds, "etheta", "test_acc")
        per = {s: collapsed(a, s) for s, a in accs.items()}
        ours_text = _percentages(accs)
        if pa and pa[1] > 10.0:
            n_col = sum(per.values())
            rows.append({"claim": "E[θ] (threshold 0.1) collapses in some seeds only (its large spread)",
                         "setting": setting, "paper": f"{pa[0]:.2f} ± {pa[1]:.2f} %",
                         "seeds agreeing": f"{n_col} of {len(per)} collapsed" if per else "—", "ours": ours_text,
                         "verdict": ("not testable" if len(per) < 2 else
                                     "confirmed" if 0 < n_col < len(per) else "not confirmed")})
        elif pa:
            _claim(rows, "E[θ] (threshold 0.1) does not collapse", setting, False, per,
                   f"no ({pa[0]:.2f} ± {pa[1]:.2f} %)", ours_text)

        # BMRS_U-4 compresses most among the BMRS variants
        comps = {m: _per_seed(summary, net, ds, m, "param_compression_pct") for m in ("bmrs_u4", "bmrs_n_code", "bmrs_u8")}
        pc = {m: p(m, "param_compression_pct") for m in comps}
        expected = None if any(v is None for v in pc.values()) else pc["bmrs_u4"][0] >= max(pc["bmrs_n_code"][0], pc["bmrs_u8"][0])
        seeds = set(comps["bmrs_u4"]) & set(comps["bmrs_n_code"]) & set(comps["bmrs_u8"])
        _claim(rows, "BMRS_U-4 compresses most among the BMRS variants", setting, expected,
               {s: comps["bmrs_u4"][s] >= max(comps["bmrs_n_code"][s], comps["bmrs_u8"][s]) for s in seeds},
               (f"{'yes' if expected else 'no'} (U-4 {pc['bmrs_u4'][0]:.2f}, N {pc['bmrs_n_code'][0]:.2f}, "
                f"U-8 {pc['bmrs_u8'][0]:.2f})") if expected is not None else "—",
               "; ".join(f"seed {s}: U-4 {comps['bmrs_u4'][s]:.2f}, N {comps['bmrs_n_code'][s]:.2f}, "
                         f"U-8 {comps['bmrs_u8'][s]:.2f}" for s in sorted(seeds)))

        # the 2π erratum of Eq. 8: the code's ΔF_N (no 2π) prunes; Eq. 8 (with 2π) prunes less
        code = _per_seed(summary, net, ds, "bmrs_n_code", "param_compression_pct")
        eq8 = _per_seed(summary, net, ds, "bmrs_n", "param_compression_pct")
        seeds = set(code) & set(eq8)
        _claim(rows, "Eq. 8 as printed (with 2π) prunes less than the released code's ΔF_N (the paper's numbers)",
               setting, True, {s: eq8[s] < code[s] for s in seeds},
               "the paper's numbers come from the code variant (its Eq. 8 has an extra ½ log 2π)",
               "; ".join(f"seed {s}: Eq. 8 {eq8[s]:.2f} vs code {code[s]:.2f}" for s in sorted(seeds)))

        rows += _posttrain_claims(posttrain, ranks, net, ds, x=x)
    return pd.DataFrame(rows, columns=["claim", "setting", "paper", "seeds agreeing", "ours", "verdict"])


def _posttrain_claims(posttrain: pd.DataFrame | None, ranks: pd.DataFrame | None, net: str, ds: str, *,
                      x: str) -> list[dict[str, Any]]:
    """The knee and rank claims of one setting, seed by seed."""
    rows: list[dict[str, Any]] = []
    setting = setting_label(ds, net)
    if posttrain is not None and len(posttrain):
        sub = posttrain[(posttrain["network"] == net) & (posttrain["dataset"] == ds)]
        for crit in ("bmrs_n_code", "bmrs_u8", "bmrs_u4"):
            per: dict[int, bool | None] = {}
            dxs = []
            for seed, g in sub.groupby("seed"):
                k = curves.stops_vs_knee(g, x=x, criteria=(crit,))
                if len(k):
                    per[int(seed)] = bool(k["near"].iloc[0])
                    dxs.append(f"{float(k['dx'].iloc[0]):+.1f}")
            _claim(rows, f"{method_label(crit)} stops near the knee of the SNR post-training curve", setting,
                   True, per, "yes (every setting; U-4 in 4 of 6)",
                   ("stop − knee: " + ", ".join(dxs) + " points") if dxs else "")
    if ranks is not None and len(ranks):
        sub = ranks[(ranks["network"] == net) & (ranks["dataset"] == ds)]
        like: dict[int, bool | None] = {}
        poor: dict[int, bool | None] = {}
        vals_n, vals_u = [], []
        for seed, g in sub.groupby("seed"):
            m = g.pivot_table(index="row", columns="col", values="spearman")
            c = curves.rank_claims(m)
            if c["rho_n_snr"] is not None:
                like[int(seed)] = c["bmrs_n_like_snr"]
                vals_n.append(f"{c['rho_n_snr']:.2f}")
            poor[int(seed)] = c["bmrs_u_ranks_poorly"]
            vals_u.append("/".join(f"{v:.2f}" for v in (c["rho_u8_snr"], c["rho_u4_snr"]) if v is not None))
        _claim(rows, f"BMRS_N ranks units like SNR (Spearman ≥ {curves.RANK_LIKE_MIN}; the paper: 0.67-0.95)",
               setting, True, like,
               "yes (Figures 3, 6, 7: 0.67-0.95)", "ρ(BMRS_N, SNR): " + ", ".join(vals_n))
        _claim(rows, f"BMRS_U ranks units poorly (ρ with SNR ≤ {curves.RANK_POOR_MAX} and below BMRS_N's)", setting,
               True, poor,
               "yes (−0.71 … 0.47)", "ρ(U-8/U-4, SNR): " + ", ".join(vals_u))
    return rows


def posttrain_claim_verdicts(posttrain: pd.DataFrame, ranks: pd.DataFrame | None = None, *,
                             x: str = "param_compression_pct") -> pd.DataFrame:
    """The post-training claims (BMRS stops near the knee; BMRS_N ranks like SNR; BMRS_U ranks poorly) of every
    setting in ``posttrain`` (a ``posttrain`` summary with the criterion keys of :func:`curves.normalize_curves`),
    seed by seed. Columns as :func:`claim_verdicts`."""
    rows: list[dict[str, Any]] = []
    for (net, ds), _ in posttrain.groupby(["network", "dataset"], sort=False):
        rows += _posttrain_claims(posttrain, ranks, net, ds, x=x)
    return pd.DataFrame(rows, columns=["claim", "setting", "paper", "seeds agreeing", "ours", "verdict"])


def verdict_counts(df: pd.DataFrame, column: str = "verdict") -> dict[str, int]:
    """How many rows have each verdict."""
    return {k: int(v) for k, v in df[column].value_counts().items()} if len(df) else {}


def agreement(cells: pd.DataFrame) -> dict[str, Any]:
    """Counts of the cells whose accuracy / compression agree with the paper's."""
    def count(col: str) -> tuple[int, int]:
        v = [x for x in cells[col] if x is not None and not (isinstance(x, float) and np.isnan(x))]
        return int(sum(bool(x) for x in v)), len(v)
    (a, an), (c, cn) = count("acc_ok"), count("comp_ok")
    return {"acc_agree": a, "acc_cells": an, "comp_agree": c, "comp_cells": cn}


def agreement_text(cells: pd.DataFrame) -> str:
    """The counts of :func:`agreement` as a sentence: 'a of n accuracy cells and c of m compression cells agree
    with the paper (accuracy within its mean ± 2 std, compression within ±5 points).'"""
    n = agreement(cells)
    return (f"{n['acc_agree']} of {n['acc_cells']} accuracy cells and {n['comp_agree']} of {n['comp_cells']} "
            f"compression cells agree with the paper (accuracy within its mean ± 2 std, compression within "
            f"±5 points).")


def methods_of(summary: pd.DataFrame) -> Iterable[str]:
    return [m for m in CELL_METHODS if m in set(summary["method"])]
