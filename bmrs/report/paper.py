"""The paper's reported numbers, as data (bmrs/report/paper_data/*.csv; see its README).

Method and dataset names follow the project's (method keys of bmrs.run.experiments, dataset keys of
bmrs.run.data), so that our summaries and the paper's numbers join on (network, dataset, method).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import pandas as pd

#: paper method label -> our method key. The paper's BMRS_N numbers come from the released code, whose
#: ΔF omits the 2π of Eq. 8 (``deltaF`` in its modules/layers.py), so they correspond to our "bmrs_n_code".
METHOD_KEYS = {"None": "none", "L2": "l2", "E[theta]": "etheta", "SNR": "snr", "BMRS_N": "bmrs_n_code",
               "BMRS_U": "bmrs_u", "BMRS_U-8": "bmrs_u8", "BMRS_U-4": "bmrs_u4"}
#: paper rank-correlation labels -> our criterion keys (Figures 3, 6, 7)
RANK_KEYS = {"SNR": "snr", "E[theta]": "etheta", "L2": "l2", "BMRS_N": "bmrs_n", "BMRS_U-8": "bmrs_u8",
             "BMRS_U-4": "bmrs_u4"}
NETWORK_KEYS = {"mlp": "mlp", "lenet5": "lenet5", "resnet50": "resnet50", "vit": "vit_b16",
                "resnet50_pretrained": "resnet50", "vit_b16_pretrained": "vit_b16"}


def _read(name: str) -> pd.DataFrame:
    with resources.files("bmrs.report.paper_data").joinpath(name).open("r") as fh:
        df = pd.read_csv(fh, keep_default_na=False)  # the method "None" is a name, not a missing value
    for col in ("mean", "std", "n_runs", "spearman"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


@lru_cache(maxsize=None)
def _results() -> pd.DataFrame:
    df = _read("paper_results.csv")
    df["method_key"] = df["method"].map(METHOD_KEYS)
    df["network_key"] = df["network"].map(lambda n: NETWORK_KEYS.get(n, n))
    return df


def results(table: str | None = None, metric: str | None = None) -> pd.DataFrame:
    """Rows of Tables 1–4: table, network, dataset, method, metric, mean, std, n_runs (+ our keys)."""
    df = _results()
    if table is not None:
        df = df[df["table"] == table]
    if metric is not None:
        df = df[df["metric"] == metric]
    return df.reset_index(drop=True).copy()


def table_value(table: str, network: str, dataset: str, method_key: str, metric: str) -> tuple[float, float] | None:
    """(mean, std) the paper reports for one cell, or None if it reports none."""
    df = _results()
    hit = df[(df["table"] == table) & (df["network_key"] == network) & (df["dataset"] == dataset)
             & (df["method_key"] == method_key) & (df["metric"] == metric)]
    if hit.empty:
        return None
    row = hit.iloc[0]
    return float(row["mean"]), float(row["std"]) if pd.notna(row["std"]) else float("nan")


@lru_cache(maxsize=None)
def _ranks() -> pd.DataFrame:
    df = _read("rank_correlations.csv")
    df["row_key"] = df["row"].map(RANK_KEYS)
    df["col_key"] = df["col"].map(RANK_KEYS)
    return df


def rank_matrix(dataset: str, network: str) -> pd.DataFrame:
    """The paper's Spearman matrix for (dataset, network) (Figures 3, 6, 7), indexed by our criterion keys."""
    df = _ranks()
    sub = df[(df["dataset"] == dataset) & (df["network"] == network)]
    if sub.empty:
        raise KeyError(f"the paper reports no rank correlations for {network} on {dataset}")
    order = list(RANK_KEYS.values())
    return sub.pivot(index="row_key", columns="col_key", values="spearman").loc[order, order]
