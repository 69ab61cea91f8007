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
# # 04 — Post-training pruning: accuracy vs compression (Figure 2) and rank correlations (Figures 3, 6, 7)
#
# **Protocol** (the paper's Figure 2, as the released `compression_vs_accuracy_separate.py` runs it). Per
# setting and seed, one network is trained with noise layers and no masking (the "base" run, shared with
# the post-hoc baselines of notebook 07 and the Table 1 runs of the same setting). Every criterion is then applied to that same network: for each level λ (percent of units),
# the weights are reloaded, the globally least important λ % of units are masked with one threshold
# (BMRS never prunes a unit with ΔF < 0, so its sweep stops by itself), the network is fine-tuned for one
# epoch (CE + KL, unshuffled, Adam state carried over) and its test accuracy and compression are
# recorded whenever the compression changed. All of it is `bmrs.report.study.posttrain`; the figures and tables
# are `bmrs.report.curves`, the claim checks `bmrs.report.claims`.
#
# **What this notebook shows**
#
# 1. Figure 2 per setting — left: test accuracy against parameter compression (the paper's metric,
#    by default) for every criterion, the mean over seeds with ±1 std; the BMRS stopping points
#    (largest stopping compression over seeds with that seed's accuracy; circle BMRS_N, square U-8, star
#    U-4, hexagon for ΔF_N of Eq. 8) with a short black bar; a black × at each curve's knee. Right: each
#    seed's BMRS end point, a 2-D KDE per variant and the SNR mean curve around them.
# 2. Per setting: the BMRS stopping points, the knee of every curve and how far each stopping point is
#    from the knee of the SNR curve, and the claim "BMRS stops near the knee" (Figure 2) checked.
# 3. Figures 3/6/7: our Spearman matrix (mean over seeds) beside the paper's, their difference, and the
#    claims "BMRS_N ranks like SNR; BMRS_U ranks poorly" (Figure 3) checked.
#
# **Definitions** (details in the docstring of `bmrs.report.curves`).
# *Averaging*: `averaging="interp"` (default) interpolates each seed's curve on the union of the seeds'
# compression values without extrapolation and averages the seeds covering a point (at least 60 % of
# them); `"index"` is the paper's index-wise average of padded curves. *Knee*: the point of maximum
# distance above the chord between the curve's first and last points, both axes scaled to [0, 1]
# (Kneedle without smoothing). *Near the knee*: the mean stopping point over seeds lies within
# max(`knee_tolerance`, resolution / 2) percentage points of the SNR curve's knee, where the resolution
# is the larger gap from the knee to its neighbouring curve points (the knee is located to ± half of it).
#
# **Deviations.** The quick profile uses 10 levels instead of 100, one seed and a few epochs (see
# `configs/quick.yaml`); with one seed there is no spread, and the KDE needs at least three seeds. The
# paper's BMRS_N is the released code's ΔF_N without 2π (`bmrs_n_code`; notebook 01, section 3.4); Eq. 8 (`bmrs_n`) is drawn
# beside it. The rank correlations are computed by the library over the six criteria of the paper's
# matrices (its BMRS_N row uses ΔF_N of Eq. 8; the 2π shifts ΔF_N by the constant ½ log 2π ≈ 0.92, so both
# variants rank the units identically and differ only in where they stop).
# For datasets the paper did not use (digits in the smoke profile) the paper's MNIST matrix is shown.
#
# With `source="reference"` nothing is trained: the committed summaries `results/reference/posttrain.csv`
# and `ranks.csv` are read instead.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper (printed on every figure)
figures_dir: str = "figures"  # where the figures are written (relative to the repository root)
tables_dir: str = "results/tables"  # where the tables (Markdown + LaTeX) are written
source: str = "run"  # run: run (or reuse) the studies; finished: the finished sweeps only; reference: read reference_dir/*.csv
reference_dir: str = "results/reference"  # committed summaries, read when source is reference
summary_dir: str = "results/summary"  # summaries written when source is run: summary_dir/profile/name.csv
runs_dir: str = "results/runs"  # run directories (reused when complete)
seed: int = 0  # seeds numpy (plots only; the runs use `seeds`)
torch_threads: int = 0  # torch.set_num_threads for the runs (0: leave torch's default)
settings: list = [{"dataset": "digits", "network": "mlp", "epochs": 1, "finetune_epochs": 1, "limit_train": 300,
                   "limit_test": 200, "batch_size": 32}]  # RunConfig fields (finetune_epochs unused here)
seeds: list = [1000, 1001]  # training seeds (one base network per setting and seed)
criteria: list = ["l2", "snr", "etheta", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4"]
levels: list = [0, 50, 90]  # percent of units to prune (the paper: 100 values in linspace(0, 100))
x_metric: str = "param_compression_pct"  # or actual_param_compression_pct (physically shrunk network)
averaging: str = "interp"  # interp (common compression grid) or index (the paper's padded index-wise mean)
knee_reference: str = "snr"  # the trade-off curve whose knee the BMRS stopping points are compared with
knee_tolerance: float = 5.0  # percentage points: a stopping point this close to the knee is "near" it
rank_like_min: float = 0.67  # BMRS_N ranks like SNR when rho(BMRS_N, SNR) is at least this (the low end of the paper's 0.67-0.95)
rank_poor_max: float = 0.5  # BMRS_U ranks poorly when rho(BMRS_U-p, SNR) is at most this (paper: -0.71 to 0.47)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from bmrs.report import claims
from bmrs.report import curves as C
from bmrs.report import study, verdicts
from bmrs.report.plots import save_figure

t_start = time.perf_counter()
np.random.seed(seed)
study.configure(source=source, summary_dir=summary_dir, reference_dir=reference_dir, torch_threads=torch_threads)
if x_metric not in C.X_LABELS:
    raise ValueError(f"x_metric must be one of {', '.join(C.X_LABELS)}; got {x_metric!r}")
print(f"profile={profile} source={source} settings={len(settings)} seeds={seeds} levels={len(levels)} "
      f"criteria={criteria} x={x_metric} averaging={averaging}")

# %% [markdown]
# ## Run (or read) the post-training studies

# %%
if study.computes(source):
    raw_curves, ranks = study.posttrain(settings, seeds, criteria, levels, profile=profile, results_dir=runs_dir,
                                        finished_only=study.finished_only(source))
    for name, frame in (("posttrain", raw_curves), ("ranks", ranks)):
        print("wrote", study.save_summary(frame, name, profile))
else:
    raw_curves = study.load_summary("posttrain", profile, source="reference")
    ranks = study.load_summary("ranks", profile, source="reference")
    print(f"read {len(raw_curves)} curve records and {len(ranks)} rank correlations from {reference_dir}")
curves = C.normalize_curves(raw_curves)
SETTINGS = C.settings_of(curves)
overview = (curves.groupby(["dataset", "network", "criterion"], sort=False)
            .agg(seeds=("seed", "nunique"), points=("level", "size"), max_compression=(x_metric, "max"))
            .reset_index())
display(Markdown(C.markdown(overview)))

# %% [markdown]
# ## Figure 2: accuracy against compression, BMRS stopping points, per-seed end points
#
# Left: mean ± 1 std over seeds; the marker with the black bar is the largest stopping compression over
# seeds with that seed's accuracy (the paper's marker); × marks each curve's knee (a BMRS curve ends at its
# stopping point, so its own knee lies inside its range). Right: every seed's BMRS end point with a 2-D
# KDE per variant (at least three seeds) and the SNR mean curve over [min − 5, max + 5] of the end points.

# %%
for dataset, network in SETTINGS:
    fig = C.figure2(curves, dataset, network, x=x_metric, averaging=averaging)
    suffix = "" if x_metric == "param_compression_pct" else "_actual"
    paths = save_figure(fig, f"fig2_posttrain_{dataset}_{network}{suffix}", profile=profile, directory=figures_dir)
    print("saved", *paths)
    plt.show()
    plt.close(fig)

# %% [markdown]
# ## Stopping points and knees
#
# For every BMRS variant: the mean ± std stopping point over seeds, the paper's marker (max over seeds),
# and its distance to the knee of the SNR mean curve (`dx` = stop − knee, in percentage points of the
# x metric); `SNR acc. at stop` is the SNR curve's accuracy at the stopping compression — a stopping
# point above it lies above the trade-off curve. Then the knee of every criterion's mean curve.

# %%
stops = C.stops_vs_knee(curves, x=x_metric, reference=knee_reference, averaging=averaging,
                        tolerance=knee_tolerance)
knee_table = C.knees(curves, x=x_metric, averaging=averaging)
for dataset, network in SETTINGS:
    s = stops[(stops["dataset"] == dataset) & (stops["network"] == network)]
    k = knee_table[(knee_table["dataset"] == dataset) & (knee_table["network"] == network)]
    stop_table = C.stops_table(s, knee_reference)
    print(f"\n{C.setting_label(dataset, network)}: BMRS stopping points ({C.X_LABELS[x_metric]})")
    print("\n".join("  " + line for line in C.stops_text(s, knee_reference)))
    display(Markdown(C.markdown(stop_table)))
    display(Markdown(C.markdown(C.knees_table(k))))
    C.write_table(stop_table.set_index("variant"), f"posttrain_stops_{dataset}_{network}", profile=profile,
                  directory=tables_dir, seeds=sorted(set(curves["seed"])), source=source,
                  title=f"BMRS stopping points vs the {C.label(knee_reference)} knee, {C.setting_label(dataset, network)}")

# %% [markdown]
# ## Figures 3, 6, 7: rank correlations, ours beside the paper's
#
# Spearman correlation of the criteria's global unit rankings on the trained network (Pearson correlation
# of the rank vectors, ties averaged), per seed, then averaged over seeds; rows and columns SNR, E[θ], L2,
# BMRS_N, BMRS_U-8, BMRS_U-4. Right: our matrix minus the paper's, with the mean and largest absolute
# difference over the 15 pairs, the share of pairs with the same sign and the correlation between the
# two sets of entries.

# %%
for dataset, network in (C.settings_of(ranks) if not ranks.empty else []):
    ours = C.mean_rank_matrix(ranks, dataset, network)
    theirs, caption = C.paper_rank_matrix(dataset, network)
    n_seeds = int(ranks[(ranks["dataset"] == dataset) & (ranks["network"] == network)]["seed"].nunique())
    fig = C.rank_figure(ours, theirs, dataset=dataset, network=network, seeds=n_seeds, paper_caption=caption)
    paths = save_figure(fig, C.rank_figure_stem(dataset, network), profile=profile, directory=figures_dir)
    print("saved", *paths)
    plt.show()
    plt.close(fig)
rank_summary = C.rank_summary(ranks, like_min=rank_like_min, poor_max=rank_poor_max)
display(Markdown(C.markdown(C.rank_summary_table(rank_summary))))

# %% [markdown]
# ## The claims, on our numbers
#
# * Figure 2: "BMRS stops near the knee of the trade-off curve in every setting, except BMRS_U-4,
#   which does so in 4 of 6" (the caption: BMRS_N and BMRS_U-8 consistently). Checked per variant: near
#   the SNR knee (definition above) in every setting; for U-4, in at least two thirds of the settings.
# * Figures 3, 6, 7: "BMRS_N ranks neurons much like SNR (Spearman 0.67–0.95) … BMRS_U ranks poorly". Checked per
#   setting with the thresholds `rank_like_min` and `rank_poor_max`.
# * The paper also says the BMRS point density lies near the optimum except for MLP on MNIST; that is a
#   visual statement about the right panels and is not tested here.

# %%
claims_df = claims.posttrain_claims(stops, rank_summary, settings=len(SETTINGS), reference=knee_reference,
                                    like_min=rank_like_min, poor_max=rank_poor_max)
display(Markdown(C.markdown(claims_df)))
for row in claims_df.itertuples():
    print(f"[{row.verdict}] {row.claim}: {row.ours}")
C.write_table(claims_df.set_index("claim"), "posttrain_claims", profile=profile, directory=tables_dir,
              seeds=sorted(set(curves["seed"])), source=source,
              title="Post-training claims (Figures 2, 3, 6, 7) on our numbers")

# %% [markdown]
# ## The same claims, seed by seed
#
# Each seed's own curves: does that seed's BMRS stopping point lie near the knee of that seed's SNR curve, and do
# that seed's rank correlations show BMRS_N ranking like SNR and BMRS_U ranking poorly? "mixed" means some seeds
# agree and some do not.

# %%
by_seed = verdicts.posttrain_claim_verdicts(curves, ranks, x=x_metric)
display(Markdown(C.markdown(by_seed)))
C.write_table(by_seed.set_index(["claim", "setting"]), "posttrain_claims_by_seed", profile=profile,
              directory=tables_dir, seeds=sorted(set(curves["seed"])), source=source,
              title="Post-training claims, seed by seed")
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile}, source {source})")
