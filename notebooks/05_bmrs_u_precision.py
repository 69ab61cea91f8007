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
# # 05 — Figure 4: BMRS$_U$ accuracy and compression against the allowable precision $p_1$
#
# BMRS$_U$ (paper Eq. 9–15; notebook 01, section 4) compares the original prior $\mathrm{LogU}_{[e^{-20}, 1]}$ with a reduced log-uniform prior
# on $[2^{-p_2}, 2^{-p_1}]$, $p_2 = 23$ (the single-precision mantissa): a unit is pruned when its posterior puts
# at least the prior's share of mass into that interval,
#
# $$q_\phi\big(2^{-23} \le \theta \le 2^{-p_1}\big) \;\ge\; \frac{(23 - p_1)\ln 2}{20}.$$
#
# Smaller $p_1$ widens the interval towards 1 (units may keep fewer bits of "signal" and still be pruned), so
# the rule gets more aggressive as $p_1$ falls. The paper's Figure 4 shows continuous-pruning runs of BMRS$_U$
# on CIFAR-10 LeNet5 for a grid of $p_1$ (10 seeds, ± std), with test accuracy on the left axis and parameter
# compression on the right. It gives no numbers; its claims are that **compression rises sharply once $p_1$
# drops below about 11 and keeps rising until $p_1 = 1$**, and that **accuracy rises as compression
# increases**. Its exact $p_1$ grid is unknown (the released script `generate_plots_bmrsu.py` uses {16, 12, 8, 6, 4, 2} with 3
# seeds and 95 % CIs; the text mentions 11 and 1).
#
# Each point here is a full continuous-pruning run (notebook 03's protocol) with BMRS$_U$-$p_1$; $p_1 = 8$ and
# $p_1 = 4$ are the runs of Table 1's BMRS$_U$-8/-4 rows and are reused when the settings agree. The setting,
# grid and seeds come from the profile: *smoke* — a tiny `digits` MLP; *quick* — the Fashion-MNIST MLP of
# notebook 03 with one seed; *paper* — CIFAR-10 LeNet5, $p_1 \in \{16, 12, 11, 8, 6, 4, 2, 1\}$, 10 seeds. With
# `source="reference"` nothing is trained and the figure is redrawn from `results/reference/p1_sweep.csv`.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper (printed on every figure and table)
figures_dir: str = "figures"  # where the figures are written (relative to the repository root)
source: str = "run"  # "run": run (or reuse) the runs; "finished": the finished ones only; "reference": read p1_sweep.csv
tables_dir: str = "results/tables"  # where the Markdown/LaTeX tables are written
runs_dir: str = "results/runs"  # run directories (bmrs.run.experiments)
summary_dir: str = "results/summary"  # the summary goes to <summary_dir>/<profile>/p1_sweep.csv
reference_dir: str = "results/reference"  # where source reference reads p1_sweep.csv
torch_threads: int = 0  # torch intra-op threads (0: torch's default; 1 avoids oversubscribing busy CPUs)
seed: int = 0  # seeds numpy (the runs use `seeds`)
setting: dict = {"dataset": "digits", "network": "mlp", "epochs": 1, "finetune_epochs": 1, "limit_train": 300,
                 "limit_test": 200, "batch_size": 32}  # RunConfig fields of the swept setting
p1_values: list = [8, 4]  # the p1 grid (p2 is 23)
seeds: list = [1000]  # seeds per p1

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from bmrs.report import study

from bmrs.report import tables
from bmrs.report.plots import plot_p1_sweep, save_figure
from bmrs.core.reduction import bmrs_u_threshold

t_start = time.perf_counter()
np.random.seed(seed)
study.configure(source=source, summary_dir=summary_dir, reference_dir=reference_dir, torch_threads=torch_threads)
print(f"profile={profile}  source={source}  setting={setting}  p1={p1_values}  seeds={seeds}")
display(Markdown("| $p_1$ | pruning threshold on the posterior mass of $[2^{-23}, 2^{-p_1}]$ |\n|---|---|\n" + "\n".join(
    f"| {p:g} | {bmrs_u_threshold(p):.4f} |" for p in sorted(p1_values, reverse=True))))

# %% [markdown]
# ## Runs

# %%
if study.computes(source):
    sweep = study.p1_sweep(setting, p1_values, seeds, profile=profile, results_dir=runs_dir, finished_only=study.finished_only(source))
    print("summary written to", study.save_summary(sweep, "p1_sweep", profile))
    epochs = tables.epochs_text([setting])
    origin = None
else:
    sweep = study.load_summary("p1_sweep", profile, source="reference")
    origin = str(study.summary_path("p1_sweep", profile, source="reference"))
    print("read", origin)
    epochs = None  # from the summary (epochs run, as recorded)
display(sweep[["network", "dataset", "p1", "method", "seed", "test_acc", "param_compression_pct",
               "actual_param_compression_pct"]].round(2))

# %% [markdown]
# ## Figure 4
#
# Mean ± population std over seeds (a single seed has no error bar). The paper's axes: $p_1$ from 2 to 16,
# accuracy 66–69 % (CIFAR-10 LeNet5), compression 0–60 %.

# %%
for (net, ds), part in sweep.groupby(["network", "dataset"], sort=False):
    fig, ax = plt.subplots(figsize=(5.6, 3.6), constrained_layout=True)
    plot_p1_sweep(ax, part)
    ax.set_title(f"{tables.network_label(net)} on {tables.dataset_label(ds)}", fontsize=9, pad=30)
    stem = "fig4_p1_sweep" if sweep.groupby(["network", "dataset"]).ngroups == 1 else f"fig4_p1_sweep_{net}_{ds}"
    print("saved", *save_figure(fig, stem, profile=profile, directory=figures_dir))
    plt.show()

# %% [markdown]
# ## Our numbers beside the paper's
#
# The paper reports no numbers for Figure 4, so the "paper" column can only say so; its two claims are
# checked on our sweep below (Spearman rank correlation over the $p_1$ grid, means over seeds).

# %%
p1_tab = tables.p1_table(sweep)
display(Markdown(tables.to_markdown(p1_tab)))
print("saved", *tables.write_table(p1_tab, "fig4_p1_sweep", profile=profile, directory=tables_dir, epochs=epochs,
                                   source=origin))
claims = tables.p1_claims(sweep)
display(Markdown(tables.to_markdown(claims)))
for _, c in claims.iterrows():
    print(f"[{c['verdict']}] {c['claim']} ({c['setting']}): {c['ours']}")
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile}, source {source})")
