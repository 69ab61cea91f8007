"""bmrs.report.claims: the post-training claims, the noise-overhead takeaway and the baselines' findings, on
hand-made summaries whose verdicts are known, and on the committed reference summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bmrs.report import claims, cost
from bmrs.report import curves as C

REFERENCE = Path(__file__).resolve().parents[1] / "results" / "reference"
SETTINGS = [("mnist", "mlp"), ("mnist", "lenet5"), ("cifar10", "mlp")]


def _stops(near: dict[str, list[bool]], undefined: tuple[str, ...] = ()) -> pd.DataFrame:
    rows = []
    for c, flags in near.items():
        for (d, n), ok in zip(SETTINGS, flags):
            rows.append({"dataset": d, "network": n, "criterion": c, "near": ok and c not in undefined,
                         "knee_x": np.nan if c in undefined else 70.0, "dx": 2.0 if ok else 20.0})
    return pd.DataFrame(rows)


def test_posttrain_claims_count_the_settings_near_the_knee():
    stops = _stops({"bmrs_n_code": [True, True, True], "bmrs_n": [True, True, True], "bmrs_u8": [True, False, True],
                    "bmrs_u4": [True, False, True]}, undefined=("bmrs_n",))
    ranks = pd.DataFrame({"dataset": [d for d, _ in SETTINGS], "network": [n for _, n in SETTINGS],
                          "rho_n_snr": [0.9, 0.8, None], "rho_u8_snr": [0.1, 0.7, None], "rho_u4_snr": [0.0, 0.2, None],
                          "bmrs_n_like_snr": [True, True, None], "bmrs_u_ranks_poorly": [True, False, None]})
    t = claims.posttrain_claims(stops, ranks, settings=3).set_index("claim")["verdict"]
    assert t["BMRS_N stops near the knee of the SNR curve (all settings)"] == "confirmed"  # 3 of 3
    assert t["BMRS_N (Eq. 8) stops near the knee of the SNR curve (all settings)"] == "not tested"  # no knee
    assert t["BMRS_U-8 stops near the knee of the SNR curve (all settings)"] == "not confirmed"  # 2 of 3
    assert t["BMRS_U-4 stops near the knee of the SNR curve (≥ 2/3 of settings)"] == "confirmed"  # 2 of 3 suffice
    assert t["BMRS_N ranks like SNR (ρ ≥ 0.67)"] == "confirmed"  # the setting without a matrix is not counted
    assert t["BMRS_U ranks poorly (ρ(U, SNR) ≤ 0.5 and below ρ(BMRS_N, SNR))"] == "not confirmed"
    assert t["BMRS point density near the optimum (except MLP MNIST)"] == "not tested"
    ours = claims.posttrain_claims(stops, ranks, settings=3).set_index("claim")["ours"]
    assert ours["BMRS_U-8 stops near the knee of the SNR curve (all settings)"].startswith("near in 2 of 3 (MNIST MLP: dx +2.0 pp")
    assert "MNIST LeNet5: ρ_N 0.80, ρ_U8 0.70, ρ_U4 0.20" in ours["BMRS_N ranks like SNR (ρ ≥ 0.67)"]
    none = claims.posttrain_claims(stops.iloc[:0], ranks.iloc[:0], settings=0)
    assert none["verdict"].tolist() == ["not tested"] * 3


def test_noise_overhead_claims_put_our_ranges_beside_appendix_d():
    steps = pd.read_csv(REFERENCE / "cost_steps.csv")
    cmp = cost.steps_vs_paper(steps)
    t = claims.noise_overhead_claims(cmp).set_index("network")
    assert t.loc["MLP", "paper: Train ratio"] == "4.60–8.30×" and t.loc["ViT-B/16", "paper: Train ratio"] == "1.35–1.39×"
    mlp = cmp[cmp["network"] == "mlp"]
    lo, hi = mlp["train_step_ratio"].min(), mlp["train_step_ratio"].max()
    assert t.loc["MLP", "ours: train step"] == f"{lo:.2f}–{hi:.2f}×"
    one = claims.noise_overhead_claims(cmp[cmp["dataset"] == "mnist"].head(1).assign(network="other"))
    assert one.iloc[0]["network"] == "other" and one.iloc[0]["paper: Train ratio"] == "—"
    assert "–" not in one.iloc[0]["ours: train step"]  # one dataset: one value, not a range


def test_best_of_names_the_winner_or_the_tie():
    assert claims.best_of(pd.Series({"c_obd": 80.0, "bmrs_n_code": 79.0})) == "best C-OBD (80.00 %)"
    assert claims.best_of(pd.Series({"c_obd": 80.0, "bmrs_n_code": 79.998})) == "tie between C-OBD, BMRS_N (80.00 %)"


def test_baselines_findings_on_the_committed_reference():
    runs = pd.read_csv(REFERENCE / "baselines.csv")
    curves = C.normalize_curves(pd.read_csv(REFERENCE / "posttrain_baselines.csv"))
    lines = claims.baselines_findings(runs, curves)
    lenet = runs[(runs["network"] == "lenet5")].groupby("method")["test_acc"].mean()
    matched = lenet.drop(index=["bmrs_u8", "bmrs_u4"])
    head = [line for line in lines if line.startswith("**F-MNIST LeNet5** — continuous pruning")]
    assert len(head) == 1 and f"best {C.label(matched.idxmax())} ({matched.max():.2f} %)" in head[0]
    assert sum(line.startswith("  BMRS_U-") for line in lines) == 4  # U-8 and U-4 in both settings
    assert sum("post-training curves** — at BMRS_N's stopping compression" in line for line in lines) == 2
    assert sum(line.startswith("  Knees: furthest right") for line in lines) == 2
    without = claims.baselines_findings(runs[runs["method"] != "bmrs_n_code"], curves.iloc[:0])
    assert without == ["**F-MNIST MLP** — BMRS_N was not run; no matched comparison.",
                       "**F-MNIST LeNet5** — BMRS_N was not run; no matched comparison."]


def test_baselines_findings_report_curves_without_a_knee():
    xs = np.linspace(0, 100, 6)
    flat = pd.DataFrame({"dataset": "mnist", "network": "mlp", "seed": 1, "criterion": "c_obd", "level": range(6),
                         "test_acc": 90.0 - 0.8 * xs, "param_compression_pct": xs, "actual_param_compression_pct": xs})
    lines = claims.baselines_findings(pd.DataFrame(columns=["dataset", "network"]), C.normalize_curves(flat))
    assert lines == ["**MNIST MLP, post-training curves** — no curve has a defined knee (flat or convex curves)."]


def test_baselines_findings_without_curves_report_the_runs_only():
    runs = pd.read_csv(REFERENCE / "baselines.csv")
    curves = C.normalize_curves(pd.read_csv(REFERENCE / "posttrain_baselines.csv"))
    full = claims.baselines_findings(runs, curves)
    partial = claims.baselines_findings(runs, None)  # source "finished" before any sweep finished
    assert partial and partial == [line for line in full if "post-training curves" not in line
                                   and not line.startswith("  Knees")][:len(partial)]
    assert not any("post-training curves" in line for line in partial)
