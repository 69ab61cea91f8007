"""The paper's tables with our numbers beside the paper's, from summary CSVs (bmrs.report.study) and bmrs.report.paper.

Every function here reads a *summary* DataFrame (one row per run, as written by
:func:`bmrs.report.study.continuous` / :func:`bmrs.report.study.p1_sweep` / :func:`bmrs.report.study.unit_statistics`) and
the paper's reported numbers (:mod:`bmrs.report.paper`); nothing trains.

* :func:`comparison_table` — Table 1 / Table 2 laid out as in the paper (networks × methods as rows,
  datasets as column groups). For each (network, dataset, method) it shows our mean ± std over seeds
  (population std, ddof = 0, as the paper; "(n=1)" when a single seed), the paper's mean ± std, for
  parameter compression (the paper's metric) and test accuracy, plus our *actual* parameter
  compression (of the physically shrunk network) as an extra column. The paper's "BMRS_N" row is our
  ``bmrs_n_code`` (the released code's ΔF_N without 2π, which produced the paper's numbers);
  our ``bmrs_n`` (paper Eq. 8, with 2π) is an extra row, marked as such. "—" marks a cell the paper does
  not report, "not run" a cell we did not run, "n/a" a quantity that does not apply (e.g. the actual
  compression of the unpruned network without noise layers).
* :func:`variants_table` — the two ΔF_N variants side by side per setting.
* :func:`claims_check` — the paper's qualitative claims about Tables 1/2 checked on our numbers.
* :func:`unit_prune_counts` — how many units each criterion would prune on one trained network (Fig. 1).
* :func:`p1_table` / :func:`p1_claims` — the BMRS_U p1 sweep (Figure 4) as a table and its claims.
* :func:`write_table` — Markdown (tabulate, github) and LaTeX (booktabs rules via pandas' Styler),
  each written atomically and headed by a caption that states the profile, seeds and epochs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import torch
from scipy.stats import spearmanr
from tabulate import tabulate

from bmrs.core import distributions as dist
from bmrs.core.reduction import bmrs_u_threshold, delta_f_bmrs_u
from bmrs.report import paper
from bmrs.run import data
from bmrs.run.config import preset
from bmrs.util.atomic import write_text
from bmrs.report.labels import dataset_label, method_label as _method_label, network_label

#: The rows of Tables 1 and 2 in the paper's order, as our method keys. The paper's "BMRS_N" is the
#: released code's variant (no 2π): our "bmrs_n_code".
PAPER_METHODS: tuple[str, ...] = ("none", "l2", "etheta", "snr", "bmrs_n_code", "bmrs_u8", "bmrs_u4")
#: Rows we add below the paper's: ΔF_N of the paper's Eq. 8 (with 2π).
EXTRA_METHODS: tuple[str, ...] = ("bmrs_n",)
ROW_METHODS: tuple[str, ...] = PAPER_METHODS + EXTRA_METHODS
EXTRA_MARK = " [extra row]"

#: Which networks belong to which table, in the paper's order (ours first, then small stand-ins).
TABLE_NETWORKS: dict[str, tuple[str, ...]] = {
    "table1": ("mlp", "lenet5"),
    "table2": ("resnet50", "vit_b16", "resnet18", "vit_tiny"),
}
#: The paper's datasets per table, in its column order.
TABLE_DATASETS: dict[str, tuple[str, ...]] = {"table1": ("mnist", "fashion_mnist", "cifar10"),
                                              "table2": ("cifar10", "tiny_imagenet")}
TABLE_TITLES = {"table1": "Table 1: continuous pruning, MLP and LeNet5",
                "table2": "Table 2: continuous pruning, pretrained ResNet-50 and ViT"}

#: our summary column -> the paper's metric name
METRICS = {"param_compression_pct": "param_compression_pct", "test_acc": "test_accuracy_pct"}
#: the quantities shown per dataset, in order: (column label, summary column or None, paper metric or None)
QUANTITIES: tuple[tuple[str, str | None, str | None], ...] = (
    ("Comp. % ours", "param_compression_pct", None),
    ("Comp. % paper", None, "param_compression_pct"),
    ("Acc. % ours", "test_acc", None),
    ("Acc. % paper", None, "test_accuracy_pct"),
    ("Actual comp. % ours", "actual_param_compression_pct", None),
)

NOT_REPORTED = "—"
NOT_RUN = "not run"
NOT_APPLICABLE = "n/a"


# --------------------------------------------------------------------------------------------------
# Cells
# --------------------------------------------------------------------------------------------------

def method_label(method: str) -> str:
    """The row label of a method: the paper's label for its rows, marked for our extra rows."""
    label = _method_label(method)
    return label + EXTRA_MARK if method in EXTRA_METHODS else label


def format_mean_std(mean: float | None, std: float | None, n: int | None = None, *, decimals: int = 2) -> str:
    """'88.17 ± 0.20'; '88.17 (n=1)' for a single run; 'n/a' for a missing value."""
    if mean is None or not math.isfinite(float(mean)):
        return NOT_APPLICABLE
    if n == 1:
        return f"{mean:.{decimals}f} (n=1)"
    if std is None or not math.isfinite(float(std)):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def paper_cell(table: str, network: str, dataset: str, method: str, metric: str) -> str:
    """The paper's 'mean ± std' for one cell, or '—' if the paper does not report it."""
    if method not in PAPER_METHODS:
        return NOT_REPORTED
    value = paper.table_value(table, network, dataset, method, metric)
    if value is None:
        return NOT_REPORTED
    return format_mean_std(*value)


def paper_mean(table: str, network: str, dataset: str, method: str, metric: str) -> float | None:
    """The paper's mean for one cell (None if not reported)."""
    if method not in PAPER_METHODS:
        return None
    value = paper.table_value(table, network, dataset, method, metric)
    return None if value is None else value[0]


# --------------------------------------------------------------------------------------------------
# Aggregation over seeds
# --------------------------------------------------------------------------------------------------

_KEYS = ["network", "dataset", "method"]
_VALUES = ["test_acc", "param_compression_pct", "actual_param_compression_pct", "structure_compression_pct"]


def aggregate(summary: pd.DataFrame, keys: Sequence[str] = _KEYS) -> pd.DataFrame:
    """Mean, population std (ddof 0) and count over seeds of every value column, per `keys`.

    Columns: keys..., n, seeds (sorted tuple), and <value>_mean, <value>_std, <value>_n for each of
    test_acc, param_compression_pct, actual_param_compression_pct, structure_compression_pct (those present).
    A value that is missing for some seeds is averaged over the seeds that have it (its own _n).
    """
    missing = [k for k in keys if k not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks the column(s) {missing}; expected a bmrs.report.study continuous/p1_sweep summary")
    values = [v for v in _VALUES if v in summary.columns]
    rows = []
    for key, group in summary.groupby(list(keys), sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(keys, key))
        row["n"] = int(len(group))
        row["seeds"] = tuple(sorted(int(s) for s in group["seed"].dropna().unique())) if "seed" in group else ()
        for v in values:
            x = pd.to_numeric(group[v], errors="coerce").dropna().to_numpy(dtype=float)
            row[f"{v}_n"] = int(x.size)
            row[f"{v}_mean"] = float(x.mean()) if x.size else float("nan")
            row[f"{v}_std"] = float(x.std(ddof=0)) if x.size else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _lookup(agg: pd.DataFrame, **key: Any) -> pd.Series | None:
    if agg.empty:
        return None
    mask = np.ones(len(agg), dtype=bool)
    for k, v in key.items():
        mask &= (agg[k] == v).to_numpy()
    hit = agg[mask]
    return None if hit.empty else hit.iloc[0]


def _ours_cell(row: pd.Series | None, value: str) -> str:
    if row is None:
        return NOT_RUN
    n = int(row.get(f"{value}_n", 0) or 0)
    if n == 0:
        return NOT_APPLICABLE
    return format_mean_std(row[f"{value}_mean"], row[f"{value}_std"], n)


def _seeds_of(summary: pd.DataFrame) -> list[int]:
    return sorted(int(s) for s in summary["seed"].dropna().unique()) if "seed" in summary and len(summary) else []


def _epochs_of(summary: pd.DataFrame) -> str:
    """'mlp/digits: 12' per setting: the most epochs (training + fine-tuning) a run of that setting ran, from the
    summary's ``epochs_run`` column (bmrs.report.study writes it), else its planned ``train_epochs`` +
    ``finetune_epochs``."""
    if summary.empty:
        return "none run"
    if "epochs_run" in summary:
        epochs = pd.to_numeric(summary["epochs_run"], errors="coerce")
    elif {"train_epochs", "finetune_epochs"} <= set(summary.columns):
        epochs = (pd.to_numeric(summary["train_epochs"], errors="coerce")
                  + pd.to_numeric(summary["finetune_epochs"], errors="coerce"))
    else:
        return "not recorded"
    parts = []
    for (net, ds), e in epochs.groupby([summary["network"], summary["dataset"]], sort=False):
        e = e.dropna()
        parts.append(f"{net}/{ds}: {int(e.max()) if len(e) else '?'}")
    return "; ".join(parts) + " (epochs run, training + fine-tuning, as recorded)"


def epochs_text(settings: Iterable[Mapping[str, Any]]) -> str:
    """'mlp/fashion_mnist: 5 + 2 fine-tune' per setting (from RunConfig fields; preset values when absent)."""

    parts = []
    for s in settings:
        p = preset(s["network"], s["dataset"])
        e = s.get("epochs") if s.get("epochs") is not None else p["epochs"]
        f = s.get("finetune_epochs") if s.get("finetune_epochs") is not None else p["finetune_epochs"]
        extra = f", limit_train {s['limit_train']}" if s.get("limit_train") else ""
        parts.append(f"{s['network']}/{s['dataset']}: {e} + {f} fine-tune{extra}")
    return "; ".join(parts) if parts else "none run"


# --------------------------------------------------------------------------------------------------
# Tables 1 and 2
# --------------------------------------------------------------------------------------------------

def _table_of(network: str) -> str | None:
    return next((t for t, nets in TABLE_NETWORKS.items() if network in nets), None)


def comparison_table(summary: pd.DataFrame | None, table: str = "table1", *, networks: Sequence[str] | None = None,
                     datasets: Sequence[str] | None = None, methods: Sequence[str] = ROW_METHODS) -> pd.DataFrame:
    """Table 1 or 2 with ours beside the paper's (see the module docstring).

    Rows: MultiIndex (Network, Method) in the paper's order; columns: MultiIndex (Dataset, Quantity)
    with the quantities of :data:`QUANTITIES`. ``networks`` defaults to the paper's networks of the
    table plus any other network of the table's family in the summary; ``datasets`` to the paper's
    datasets of the table plus any other dataset we ran on those networks.
    """
    if table not in TABLE_NETWORKS:
        raise ValueError(f"table must be one of {', '.join(TABLE_NETWORKS)}; got {table!r}")
    summary = summary if summary is not None else pd.DataFrame(columns=[*_KEYS, "seed"])
    ours = summary[summary["network"].isin(TABLE_NETWORKS[table])] if len(summary) else summary
    if networks is None:
        paper_nets = TABLE_NETWORKS[table][:2]
        networks = list(paper_nets) + [n for n in TABLE_NETWORKS[table][2:] if n in set(ours["network"])]
    if datasets is None:
        datasets = list(TABLE_DATASETS[table]) + [d for d in dict.fromkeys(ours["dataset"])
                                                  if d not in TABLE_DATASETS[table]]
    agg = aggregate(ours) if len(ours) else pd.DataFrame(columns=_KEYS)
    index, rows = [], []
    for net in networks:
        for method in methods:
            index.append((network_label(net), method_label(method)))
            cells = []
            for ds in datasets:
                r = _lookup(agg, network=net, dataset=ds, method=method)
                for _, ours_col, paper_metric in QUANTITIES:
                    if ours_col is not None:
                        cells.append(_ours_cell(r, ours_col))
                    else:
                        cells.append(paper_cell(table, net, ds, method, paper_metric))
            rows.append(cells)
    columns = pd.MultiIndex.from_tuples([(dataset_label(ds), q) for ds in datasets for q, _, _ in QUANTITIES],
                                        names=["Dataset", ""])
    df = pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=["Network", "Method"]), columns=columns)
    df.attrs.update(title=TABLE_TITLES[table] + " — ours beside the paper", seeds=_seeds_of(ours),
                    epochs=_epochs_of(ours), notes=_TABLE_NOTES)
    return df


_TABLE_NOTES = ("mean ± population std over seeds ('(n=1)': one seed); 'Comp.' = parameter compression as in the "
                "paper, 'Actual comp.' = of the physically shrunk network; the paper's BMRS_N row is "
                "the released code's ΔF_N (no 2π, our bmrs_n_code); '[extra row]' = ΔF_N of the paper's Eq. 8 "
                "(with 2π), not a row of the paper; "
                f"'{NOT_REPORTED}' = not reported by the paper, '{NOT_RUN}' = not run by us, "
                f"'{NOT_APPLICABLE}' = does not apply")


def variants_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The two ΔF_N variants side by side per (network, dataset): compression and accuracy of the paper's
    Eq. 8 (``bmrs_n``, with 2π) and the released code (``bmrs_n_code``, no 2π), their difference, and
    the paper's BMRS_N numbers (which the code variant reproduces)."""
    cols = ["Network", "Dataset", "Seeds",
            "Comp. % code (no 2π)", "Comp. % Eq. 8", "Δ comp. (Eq. 8 − code)",
            "Acc. % code (no 2π)", "Acc. % Eq. 8", "Δ acc. (Eq. 8 − code)",
            "Actual comp. % code", "Actual comp. % Eq. 8", "Paper BMRS_N comp.", "Paper BMRS_N acc."]
    sub = summary[summary["method"].isin(["bmrs_n", "bmrs_n_code"])] if len(summary) else summary
    rows = []
    if len(sub):
        agg = aggregate(sub)
        for (net, ds), _ in sub.groupby(["network", "dataset"], sort=False):
            code = _lookup(agg, network=net, dataset=ds, method="bmrs_n_code")
            eq8 = _lookup(agg, network=net, dataset=ds, method="bmrs_n")
            table = _table_of(net) or "table1"

            def diff(value: str) -> str:
                if code is None or eq8 is None:
                    return NOT_RUN
                d = eq8[f"{value}_mean"] - code[f"{value}_mean"]
                return f"{d:+.2f}" if math.isfinite(d) else NOT_APPLICABLE

            seeds = sorted(set((code["seeds"] if code is not None else ()) + (eq8["seeds"] if eq8 is not None else ())))
            rows.append([network_label(net), dataset_label(ds), ", ".join(map(str, seeds)),
                         _ours_cell(code, "param_compression_pct"), _ours_cell(eq8, "param_compression_pct"),
                         diff("param_compression_pct"),
                         _ours_cell(code, "test_acc"), _ours_cell(eq8, "test_acc"), diff("test_acc"),
                         _ours_cell(code, "actual_param_compression_pct"),
                         _ours_cell(eq8, "actual_param_compression_pct"),
                         paper_cell(table, net, ds, "bmrs_n_code", "param_compression_pct"),
                         paper_cell(table, net, ds, "bmrs_n_code", "test_accuracy_pct")])
    df = pd.DataFrame(rows, columns=cols)
    df.attrs.update(title="BMRS_N: the paper's Eq. 8 (with 2π) vs the released code (no 2π), continuous pruning",
                    seeds=_seeds_of(sub), epochs=_epochs_of(sub),
                    notes="the code's ΔF_N is Eq. 8 + ½ log 2π ≈ +0.919, so it prunes at least as much; "
                          "the paper's BMRS_N numbers come from the code variant")
    return df


# --------------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------------

def chance_accuracy(dataset: str) -> float:
    """100 / number of classes of a dataset (percent)."""

    info = data.DATASETS.get(dataset)
    return 100.0 / (info.num_classes if info is not None else 10)


def collapse_threshold(dataset: str, unpruned_acc: float | None) -> float:
    """Accuracy (percent) at or below which a pruned network counts as collapsed: halfway between chance
    and the unpruned network of the same setting (chance + 10 points when that is unknown). With it the
    paper's own numbers give the collapses its text names (e.g. L2 on the F-MNIST MLP at 18.23 %, SNR on
    the F-MNIST LeNet5 at 17.01 %, E[θ] on the pretrained ResNet-50, but not L2 on ViT/CIFAR10 at 54.36 %)."""
    chance = chance_accuracy(dataset)
    if unpruned_acc is None or not math.isfinite(unpruned_acc) or unpruned_acc <= chance:
        return chance + 10.0
    return chance + 0.5 * (unpruned_acc - chance)


def _collapsed(acc: float | None, dataset: str, unpruned_acc: float | None) -> bool | None:
    if acc is None or not math.isfinite(acc):
        return None
    return acc <= collapse_threshold(dataset, unpruned_acc)


def _yn(x: bool | None) -> str:
    return "n/a" if x is None else ("yes" if x else "no")


def claims_check(summary: pd.DataFrame) -> pd.DataFrame:
    """The paper's claims about continuous pruning (its discussion of Tables 1 and 2), checked per setting we ran.

    For every (network, dataset) in the summary and every claim, the paper's statement for that
    setting (from its numbers when the paper ran the setting, else the claim's general form) is compared
    with ours (means over seeds): "confirmed", "not confirmed", or "not testable" (a method missing, or
    the paper makes no statement for that setting). "Collapses" = accuracy at most halfway between chance
    and the unpruned network's (:func:`collapse_threshold`).
    Columns: claim, setting, paper, ours, verdict.
    """
    rows: list[dict[str, str]] = []
    if summary is None or not len(summary):
        return pd.DataFrame(rows, columns=["claim", "setting", "paper", "ours", "verdict"])
    agg = aggregate(summary)

    def mean(net: str, ds: str, method: str, value: str) -> float | None:
        r = _lookup(agg, network=net, dataset=ds, method=method)
        if r is None or not r.get(f"{value}_n"):
            return None
        return float(r[f"{value}_mean"])

    for (net, ds), _ in summary.groupby(["network", "dataset"], sort=False):
        table = _table_of(net) or "table1"
        setting = f"{network_label(net)} / {dataset_label(ds)}"

        def pm(method: str, metric: str) -> float | None:
            return paper_mean(table, net, ds, method, metric)

        def add(claim: str, paper_says: bool | None, ours: bool | None, paper_text: str, ours_text: str,
                general: bool | None = None, general_text: str | None = None) -> None:
            expected = paper_says if paper_says is not None else general
            if ours is None or expected is None:
                verdict = "not testable"
            else:
                verdict = "confirmed" if ours == expected else "not confirmed"
            if paper_says is None and general is not None:
                paper_text = general_text or f"{_yn(general)} (general claim; setting not in the paper)"
            rows.append({"claim": claim, "setting": setting, "paper": paper_text, "ours": ours_text,
                         "verdict": verdict})

        # 1-3: collapses to chance (SNR threshold 1, L2 at BMRS_N's structure fraction, E[θ] threshold 0.1)
        p_none, o_none = pm("none", "test_accuracy_pct"), mean(net, ds, "none", "test_acc")
        for method, claim, general in (
                ("snr", "SNR (threshold 1) collapses", None),
                ("l2", "L2 at BMRS_N's structure fraction collapses", True),
                ("etheta", "E[θ] (threshold 0.1) collapses", None)):
            p_acc = pm(method, "test_accuracy_pct")
            o_acc = mean(net, ds, method, "test_acc")
            p_col, o_col = _collapsed(p_acc, ds, p_none), _collapsed(o_acc, ds, o_none)
            o_text = (f"{_yn(o_col)} ({o_acc:.2f} % vs threshold {collapse_threshold(ds, o_none):.2f} %)"
                      if o_acc is not None else NOT_RUN)
            if o_acc is not None and mean(net, ds, method, "structure_compression_pct") == 0:
                o_col, o_text = None, f"pruned nothing ({o_acc:.2f} %)"  # a collapse needs pruning
            add(claim, p_col, o_col, f"{_yn(p_col)} ({p_acc:.2f} %)" if p_acc is not None else "—", o_text, general)

        # 4-5: BMRS_U-4 compresses more than BMRS_N / BMRS_U-8
        for other, claim in (("bmrs_n_code", "BMRS_U-4 compresses more than BMRS_N"),
                             ("bmrs_u8", "BMRS_U-4 compresses more than BMRS_U-8")):
            p4, po = pm("bmrs_u4", "param_compression_pct"), pm(other, "param_compression_pct")
            o4, oo = mean(net, ds, "bmrs_u4", "param_compression_pct"), mean(net, ds, other, "param_compression_pct")
            p_says = None if p4 is None or po is None else p4 > po
            o_says = None if o4 is None or oo is None else o4 > oo
            o_text = f"{_yn(o_says)} ({o4:.2f} vs {oo:.2f})" if o_says is not None else NOT_RUN
            if o_says is not None and o4 == 0 and oo == 0:
                o_says, o_text = None, "neither pruned anything"
            add(claim, p_says, o_says, f"{_yn(p_says)} ({p4:.2f} vs {po:.2f})" if p_says is not None else "—",
                o_text, general=True)

        # 6: the released code's ΔF_N (no 2π) prunes at least as much as Eq. 8 (not a paper claim)
        oc, oe = mean(net, ds, "bmrs_n_code", "param_compression_pct"), mean(net, ds, "bmrs_n", "param_compression_pct")
        o_says = None if oc is None or oe is None else oc >= oe - 1e-9
        add("BMRS_N code variant (no 2π) compresses at least as much as Eq. 8", None, o_says,
            "", f"{_yn(o_says)} ({oc:.2f} vs {oe:.2f})" if o_says is not None else NOT_RUN, general=True,
            general_text="yes (expected: ΔF_code = ΔF_Eq.8 + ½ log 2π; not a claim of the paper)")

    # the aggregate form of the SNR claim: "collapses in 3 of 6 settings"
    snr = [r for r in rows if r["claim"].startswith("SNR")]
    n_ours = sum(r["ours"].startswith("yes") for r in snr)
    n_run = sum(not r["ours"].startswith(NOT_RUN) for r in snr)
    testable = [r for r in snr if r["verdict"] != "not testable"]
    rows.append({"claim": "SNR (threshold 1) collapses in 3 of 6 Table 1 settings", "setting": "all we ran",
                 "paper": "3 of 6 (F-MNIST MLP, MNIST LeNet5, F-MNIST LeNet5)",
                 "ours": f"{n_ours} of {n_run} settings run",
                 "verdict": ("not testable" if not testable
                             else "confirmed" if all(r["verdict"] == "confirmed" for r in testable)
                             else "not confirmed")})
    df = pd.DataFrame(rows, columns=["claim", "setting", "paper", "ours", "verdict"])
    df.attrs.update(title="Claims of the paper about continuous pruning, checked on our runs",
                    seeds=_seeds_of(summary), epochs=_epochs_of(summary))
    return df


# --------------------------------------------------------------------------------------------------
# Figure 1: units each criterion would prune
# --------------------------------------------------------------------------------------------------

def unit_prune_counts(units: pd.DataFrame, *, a: float | None = None, b: float | None = None,
                      p1_values: Sequence[float] = (8, 4)) -> pd.DataFrame:
    """How many units of one trained network each criterion would prune under its fixed rule, computed
    from the per-unit posteriors of a ``units`` summary (mu, log_sigma, expected_theta, delta_f,
    delta_f_code, kept). L2 has no fixed rule (it is pruned to BMRS_N's structure fraction), so its
    count equals BMRS_N's (code) by construction. Columns: criterion, rule, pruned, of, percent."""


    a = dist.DEFAULT_A if a is None else a
    b = dist.DEFAULT_B if b is None else b
    mu = torch.tensor(units["mu"].to_numpy(dtype=float), dtype=torch.float64)
    sigma = dist.sigma_from_log_sigma(torch.tensor(units["log_sigma"].to_numpy(dtype=float), dtype=torch.float64))
    total = int(len(units))
    e = torch.tensor(units["expected_theta"].to_numpy(dtype=float))
    snr = dist.snr(mu, sigma, a=a, b=b) if total else torch.zeros(0)
    rows = [
        ("E[theta]", "E[θ] ≤ 0.1", int((e <= 0.1).sum())),
        ("SNR", "SNR ≤ 1", int((snr <= 1.0).sum())),
        ("BMRS_N", "ΔF_N ≥ 0, released code (no 2π)", int((units["delta_f_code"] >= 0).sum())),
        ("BMRS_N (Eq. 8)", "ΔF_N ≥ 0, Eq. 8 (with 2π)", int((units["delta_f"] >= 0).sum())),
    ]
    for p1 in p1_values:
        du = delta_f_bmrs_u(mu.clamp(a, b), sigma, a=a, b=b, p1=p1) if total else torch.zeros(0)
        rows.append((f"BMRS_U-{p1:g}", f"ΔF_U ≥ 0, p1 = {p1:g}, p2 = 23", int((du >= 0).sum())))
    rows.append(("L2", "pruned to BMRS_N's structure fraction", rows[2][2]))
    if "kept" in units:
        kept = units["kept"].astype(str).str.lower().isin(["true", "1", "1.0"])
        rows.append(("mask of the trained run", "units masked at the end of training", int((~kept).sum())))
    df = pd.DataFrame(rows, columns=["criterion", "rule", "pruned"])
    df["of"] = total
    df["percent"] = [f"{100.0 * p / total:.1f}" if total else "n/a" for p in df["pruned"]]
    df.attrs.update(title="Units each criterion would prune on the Figure 1 network", seeds=[], epochs="")
    return df


# --------------------------------------------------------------------------------------------------
# Figure 4: the p1 sweep
# --------------------------------------------------------------------------------------------------

def p1_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Our BMRS_U accuracy and compression per p1 (mean ± std over seeds) with the pruning threshold on
    the posterior mass; the paper gives no numbers for Figure 4."""

    rows = []
    if len(summary):
        agg = aggregate(summary, keys=["network", "dataset", "p1"]).sort_values(["network", "dataset", "p1"],
                                                                               ascending=[True, True, False])
        for _, r in agg.iterrows():
            rows.append([network_label(r["network"]), dataset_label(r["dataset"]), f"{r['p1']:g}",
                         f"{bmrs_u_threshold(float(r['p1'])):.4f}", int(r["n"]),
                         _ours_cell(r, "test_acc"), _ours_cell(r, "param_compression_pct"),
                         _ours_cell(r, "actual_param_compression_pct"),
                         "— (no numbers in the paper)"])
    df = pd.DataFrame(rows, columns=["Network", "Dataset", "p1", "threshold on q-mass", "seeds", "Acc. % ours",
                                     "Comp. % ours", "Actual comp. % ours", "paper"])
    df.attrs.update(title="Figure 4: BMRS_U accuracy and parameter compression against p1 (continuous pruning)",
                    seeds=_seeds_of(summary), epochs=_epochs_of(summary))
    return df


def p1_claims(summary: pd.DataFrame) -> pd.DataFrame:
    """Figure 4's claims on our sweep (per setting): compression rises as p1 falls (Spearman ρ(p1, comp.)
    < 0), and accuracy rises with compression (ρ(comp., acc.) > 0). Columns: claim, setting, paper, ours, verdict."""

    rows = []
    for (net, ds), g in summary.groupby(["network", "dataset"], sort=False) if len(summary) else []:
        m = g.groupby("p1")[["param_compression_pct", "test_acc"]].mean().reset_index()
        setting = f"{network_label(net)} / {dataset_label(ds)}"
        for claim, x, y, sign, paper_text in (
                ("compression rises as p1 decreases", "p1", "param_compression_pct", -1,
                 "yes: sharply below p1 ≈ 11, until p1 = 1"),
                ("accuracy rises as compression increases", "param_compression_pct", "test_acc", +1, "yes")):
            if len(m) < 3 or m[x].nunique() < 2 or m[y].nunique() < 2:
                rows.append({"claim": claim, "setting": setting, "paper": paper_text,
                             "ours": f"too few distinct points ({len(m)} p1 values)", "verdict": "not testable"})
                continue
            rho = float(spearmanr(m[x], m[y]).statistic)
            ok = rho * sign > 0
            rows.append({"claim": claim, "setting": setting, "paper": paper_text,
                         "ours": f"Spearman ρ({x}, {y}) = {rho:+.2f}",
                         "verdict": "confirmed" if ok else "not confirmed"})
    df = pd.DataFrame(rows, columns=["claim", "setting", "paper", "ours", "verdict"])
    df.attrs.update(title="Figure 4: the paper's claims checked on our p1 sweep", seeds=_seeds_of(summary),
                    epochs=_epochs_of(summary))
    return df


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def _flat_columns(df: pd.DataFrame) -> list[str]:
    if isinstance(df.columns, pd.MultiIndex):
        return [" ".join(str(p) for p in col if str(p)) for col in df.columns]
    return [str(c) for c in df.columns]


def to_markdown(df: pd.DataFrame) -> str:
    """GitHub-flavoured Markdown via tabulate (MultiIndex rows and columns are flattened)."""

    flat = df.copy()
    flat.columns = _flat_columns(df)
    show_index = not isinstance(df.index, pd.RangeIndex)
    if show_index:
        flat = flat.reset_index()
        if isinstance(df.index, pd.MultiIndex):  # blank a repeated outer level (e.g. the network block)
            outer = flat.columns[0]
            flat[outer] = flat[outer].where(flat[outer] != flat[outer].shift(), "")
    return tabulate(flat, headers="keys", tablefmt="github", showindex=False, disable_numparse=True)


_LATEX_UNICODE = {"±": r"$\pm$", "—": "---", "θ": r"$\theta$", "π": r"$\pi$", "Δ": r"$\Delta$", "≤": r"$\leq$",
                  "≥": r"$\geq$", "ρ": r"$\rho$", "≈": r"$\approx$", "−": "-", "½": r"$\frac{1}{2}$"}


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _escape_latex(text: str) -> str:
    """Escape LaTeX's special characters in plain text (as Styler.format(escape="latex") does for cells)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _latex_text(text: str) -> str:
    for k, v in _LATEX_UNICODE.items():
        text = text.replace(k, v)
    return text


def to_latex(df: pd.DataFrame, caption: str) -> str:
    """A LaTeX table with booktabs rules (\\toprule/\\midrule/\\bottomrule) via pandas' Styler
    (jinja2); special characters escaped, ±, —, θ, π, Δ as math."""
    styler = df.style.format(escape="latex").format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    if isinstance(df.index, pd.RangeIndex):
        styler = styler.hide(axis="index")
    body = styler.to_latex(hrules=True, multicol_align="c", multirow_align="t", clines=None, position="htbp",
                           caption=_escape_latex(caption), environment="table", position_float="centering")
    return _latex_text(body)


def caption_for(df: pd.DataFrame, *, profile: str, seeds: Sequence[int] | None = None, epochs: str | None = None,
                title: str | None = None, source: str | None = None) -> str:
    """'<title>. Profile: quick; seeds: 1000; epochs: ...[; numbers from ...]. <notes>' (values from df.attrs
    unless given)."""
    title = title or df.attrs.get("title") or "Table"
    seeds = list(seeds) if seeds is not None else list(df.attrs.get("seeds") or [])
    epochs = epochs if epochs is not None else df.attrs.get("epochs")
    parts = [f"Profile: {profile}",
             f"seeds: {', '.join(map(str, seeds))} (n={len(seeds)})" if seeds else "seeds: none (ours not run)"]
    if epochs:
        parts.append(f"epochs: {epochs}")
    if source:
        parts.append(f"numbers from {source}")
    caption = f"{title}. " + "; ".join(parts) + "."
    notes = df.attrs.get("notes")
    return caption + (f" Notes: {notes}." if notes else "")


def write_table(df: pd.DataFrame, stem: str, *, profile: str, directory: str | os.PathLike[str] = "results/tables",
                seeds: Sequence[int] | None = None, epochs: str | None = None, title: str | None = None,
                source: str | None = None) -> list[Path]:
    """Write ``<directory>/<stem>.md`` (tabulate, github) and ``<directory>/<stem>.tex`` (booktabs-style,
    pandas Styler), each atomically and each headed by a caption naming the profile, the seeds and the
    epochs that made it (taken from ``df.attrs`` unless given). Returns both paths."""
    if not isinstance(profile, str) or not profile.strip():
        raise ValueError(f"profile must be the non-empty name of the profile that made the table; got {profile!r}")
    if not stem or Path(stem).name != stem or Path(stem).suffix in {".md", ".tex"}:
        raise ValueError(f"stem must be a bare file name without directory or extension (e.g. 'table1'); got {stem!r}")
    caption = caption_for(df, profile=profile, seeds=seeds, epochs=epochs, title=title, source=source)
    out = Path(directory)
    md = out / f"{stem}.md"
    tex = out / f"{stem}.tex"
    write_text(md, f"**{caption}**\n\n{to_markdown(df)}\n")
    write_text(tex, f"% {_latex_text(caption)}\n% requires \\usepackage{{booktabs}}\n{to_latex(df, caption)}")
    return [md, tex]
