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
# # 02 — Figure 1: the noise variables of a trained network, before and after BMRS pruning
#
# The paper's Figure 1 is a schematic drawn from a real network: a CIFAR-10 MLP
# (5 hidden layers × 150 units, seed 1000), most likely a BMRS$_N$ continuous-pruning run (the notebook of
# the release loads `cifar10_mlp_1000.pth`). Its three panels are
#
# * **left** — the histogram (20 bins on $[0, 1]$, with a KDE) of $\mathbb{E}[\theta]$ for *every* noise
#   variable of the trained network;
# * **middle** — the original prior $\mathrm{LogU}_{[e^{-20}, 1]}$ and an illustrative reduced prior
#   (a truncated log-normal with $\mu = -20$, $\sigma = 10$), the priors panel of notebook 01;
# * **right** — the same histogram for the units BMRS$_N$ keeps (mask = 1),
#
# joined by the arrows "Calculate $\Delta F$" and "Prune $\Delta F \ge 0$". The paper gives no numbers for
# this figure, so there is nothing to compare numerically; what the figure should show is that the units
# BMRS removes are those whose $\mathbb{E}[\theta]$ sits near 0 (the noise switched them off), and that the kept
# units have $\mathbb{E}[\theta]$ spread towards 1.
#
# Here the network is the run named by the parameters `setting`, `method` and `run_seed` (from the
# profile, `configs/<profile>.yaml`). By default that is a BMRS$_N$ run with the **released code's**
# $\Delta F_N$ (method `bmrs_n_code`, no $2\pi$; notebook 01, section 3.4) — the variant that produced the paper's numbers.
# The quick profile uses the Fashion-MNIST MLP run of notebook 03's Table 1 (so the run is shared), the
# paper profile the CIFAR-10 MLP of the paper, and the smoke profile a tiny `digits` MLP. The per-unit
# statistics come from `bmrs.report.study.unit_statistics`; this notebook only draws and counts.
#
# With `source="reference"` nothing is trained: the per-unit table is read from
# `results/reference/units.csv` (the committed quick-profile results).

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper (printed on every figure and table)
figures_dir: str = "figures"  # where the figures are written (relative to the repository root)
source: str = "run"  # "run": run (or reuse) the training run; "finished": only if finished; "reference": read units.csv
tables_dir: str = "results/tables"  # where the Markdown/LaTeX tables are written
runs_dir: str = "results/runs"  # run directories (bmrs.run.experiments)
summary_dir: str = "results/summary"  # summaries are written to <summary_dir>/<profile>/units.csv
reference_dir: str = "results/reference"  # where source reference reads units.csv
torch_threads: int = 0  # torch intra-op threads (0: torch's default; 1 avoids oversubscribing busy CPUs)
seed: int = 0  # seeds numpy (the runs use run_seed)
setting: dict = {"dataset": "digits", "network": "mlp", "epochs": 1, "finetune_epochs": 1, "limit_train": 300,
                 "limit_test": 200, "batch_size": 32}  # RunConfig fields of the run behind the figure
method: str = "bmrs_n_code"  # the pruning method of that run (BMRS_N of the released code, as in the paper)
run_seed: int = 1000  # the run's seed (the paper's Figure 1 network: seed 1000)
bins: int = 20  # histogram bins on [0, 1] (the paper: 20)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from bmrs.report import study

from bmrs.report import tables
from bmrs.report.labels import method_label
from bmrs.report.plots import plot_figure1, save_figure

t_start = time.perf_counter()
np.random.seed(seed)
study.configure(source=source, summary_dir=summary_dir, reference_dir=reference_dir, torch_threads=torch_threads)
print(f"profile={profile}  source={source}  setting={setting}  method={method}  run_seed={run_seed}")

# %% [markdown]
# ## The per-unit statistics
#
# For every noise variable (unit) of the trained network: its posterior $(\mu, \log\sigma)$ in log-space,
# $\mathbb{E}[\theta]$, $\Delta F_N$ of the paper's Eq. 8 (`delta_f`) and of the released code (`delta_f_code`,
# $= \Delta F_N + \tfrac12\log 2\pi$), and whether the run's mask kept it at the end of training.

# %%
if study.computes(source):
    units = study.unit_statistics(setting, method, run_seed, profile=profile, results_dir=runs_dir,
                                  finished_only=study.finished_only(source))
    units = units.assign(dataset=setting["dataset"], network=setting["network"], method=method, seed=run_seed)
    print("summary written to", study.save_summary(units, "units", profile))
else:
    units = study.load_summary("units", profile, source="reference")
    print("read", study.summary_path("units", profile, source="reference"))
net, ds = units["network"].iloc[0], units["dataset"].iloc[0]
run_method, run_seed_used = units["method"].iloc[0], int(units["seed"].iloc[0])
kept = units["kept"].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy()
print(f"network {net} on {ds}, method {run_method} ({method_label(run_method)}), seed {run_seed_used}: "
      f"{len(units)} units in {units['layer'].nunique()} noise layers, {int(kept.sum())} kept by the run's mask")
display(units.groupby("layer", sort=False).agg(units=("unit", "size"), kept=("kept", "sum"),
                                                mean_E_theta=("expected_theta", "mean")))

# %% [markdown]
# ## Figure 1
#
# Left: $\mathbb{E}[\theta]$ of all units; right: of the units the run kept. The histograms share their $y$ axis,
# so the bars that disappear between the two panels are the pruned units.

# %%
label = r"BMRS$_N$" if run_method == "bmrs_n_code" else method_label(run_method)
fig = plot_figure1(units["expected_theta"].to_numpy(), kept, bins=bins, method_label=label)
fig.suptitle(f"Figure 1 — {tables.network_label(net)} on {tables.dataset_label(ds)}, "
             f"{run_method} run, seed {run_seed_used}", fontsize=10, y=1.04)
paths = save_figure(fig, "fig1_units", profile=profile, directory=figures_dir)
print("saved", *paths)
plt.show()

# %% [markdown]
# ## How many units each criterion would prune on this network
#
# Every criterion of the paper applied to the *same* trained posteriors with its fixed rule (the paper's Tables 1 and 2):
# E[θ] ≤ 0.1, SNR ≤ 1, ΔF ≥ 0 for both BMRS$_N$ variants and for BMRS$_U$-8/-4. L2 has no threshold of its own
# (the paper prunes it to BMRS$_N$'s structure fraction), so its count is BMRS$_N$'s by construction. The
# last row is what the run's own mask removed during training. The paper reports no such counts; the
# expectation (notebook 01, section 3.4) is that the code's ΔF$_N$ prunes at least as many units as Eq. 8.

# %%
counts = tables.unit_prune_counts(units)
display(Markdown(tables.to_markdown(counts)))
paths = tables.write_table(counts, "fig1_unit_counts", profile=profile, directory=tables_dir, seeds=[run_seed_used],
                           epochs=tables.epochs_text([setting]) if study.computes(source) else "as recorded in the reference run",
                           title=f"Units each criterion would prune: {net} on {ds}, {run_method} run",
                           source=str(study.summary_path("units", profile, "reference")) if source == "reference" else None)
print("saved", *paths)
code_n = int(counts.loc[counts["criterion"] == "BMRS_N", "pruned"].iloc[0])
eq8_n = int(counts.loc[counts["criterion"] == "BMRS_N (Eq. 8)", "pruned"].iloc[0])
print(f"the code's ΔF_N prunes {code_n} units, Eq. 8 prunes {eq8_n}: "
      f"{'as expected (code ≥ Eq. 8)' if code_n >= eq8_n else 'UNEXPECTED (code < Eq. 8)'}")
assert code_n >= eq8_n, "ΔF_code = ΔF_Eq8 + 0.919 must prune at least as many units"

# %% [markdown]
# ## Paper vs ours
#
# The paper's Figure 1 has no numbers. It is drawn from a CIFAR-10 MLP with 900 units;
# the table below says which network this profile used instead.

# %%
display(Markdown("\n".join([
    "| | paper | ours |",
    "|---|---|---|",
    f"| network | MLP, 5 × 150 hidden (900 units), CIFAR-10, seed 1000 | {net} on {ds}, {len(units)} units, seed {run_seed_used} |",
    f"| method | BMRS_N (released code, inferred) | {run_method} |",
    f"| units kept | not reported | {int(kept.sum())} of {len(units)} |",
    "| numbers | none (schematic) | counts above |",
])))
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile}, source {source})")
