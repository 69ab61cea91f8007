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
# # 07 — The seed baselines beside BMRS: EigenDamage, C-OBD and Dirichlet pruning
#
# The paper compares BMRS only with L2, E[θ] and SNR. This notebook adds the baselines the project's
# plan names — **EigenDamage** (Wang et al., 2019; pruning in the Kronecker-factored eigenbasis),
# **C-OBD** (its parameter-coordinate sibling: diagonal-Fisher saliency of the BMRS units) and
# **Dirichlet pruning** (Adamczewski & Park, 2021; Dirichlet switches on the units) — under the
# comparison protocol below, implemented by `bmrs.run.posthoc` (the post-training protocol of the released
# BMRS code, `compression_vs_accuracy_separate.py`, with every method on the same network and budget):
#
# * **Same trained network and seed.** Every post-hoc method starts from the "base" run of the setting and
#   seed: the network trained with noise layers and no masking for the full schedule — the
#   network the post-training sweeps of notebook 04 prune. EigenDamage needs a plain network: the noise
#   is folded into the weights as its test-time scale E[θ]·mask (`bmrs.prune.eigendamage.fold_noise`).
# * **Same compression.** In the continuous-pruning comparison (a), C-OBD, Dirichlet and EigenDamage are
#   pruned to the *actual* parameter compression BMRS_N (the released code's variant, `bmrs_n_code`) reached
#   on the same setting and seed, by bisection over their own pruning level; L2 keeps the paper's rule
#   (BMRS_N's structure fraction).
# * **Same fine-tuning budget.** After pruning, every method gets BMRS's fine-tuning phase (the
#   profile's `finetune_epochs`, best validation epoch evaluated on test); in the post-training sweeps (b),
#   one epoch per level, as BMRS. EigenDamage is fine-tuned with cross-entropy only (it has no noise layers).
# * **Parameters after physical rebuilding.** Compression is counted on the rebuilt network
#   (`bmrs.nn.shrink.shrink` for unit pruning; EigenDamage's rotate → core → rotate layers *with the rotation
#   matrices counted*, as the EigenDamage authors count them). EigenDamage removes eigen-directions, not
#   units, so the paper's unit-based parameter metric does not apply to it ("n/a"); it is compared on
#   parameters and MACs, and the figure's x axis is the actual parameter compression for every method.
# * **Latency**: the pruned and the dense deployable networks timed side by side (batch 32, one thread,
#   20 interleaved rounds); for the post-hoc methods as recorded by their runs (`final["latency_batch32"]`),
#   for the BMRS runs measured here the same way. Absolute times depend on the machine; the speed-up is
#   the robust number.
#
# Deviations from the original methods (EigenDamage: Wang et al., ICML 2019, code
# `alecwangcq/EigenDamage-Pytorch`; Dirichlet pruning: Adamczewski & Park, 2021, code
# `kamadforge/dirichlet_pruning`) are listed in the docstrings of `bmrs/prune/eigendamage.py`,
# `bmrs/prune/dirichlet.py` and `bmrs/run/posthoc.py`; the cell after the parameters prints them so that this notebook always states the current ones.
#
# With `source="reference"` nothing is trained: the committed summaries `results/reference/baselines.csv`
# and `posttrain_baselines.csv` are read instead.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper (printed on every figure)
figures_dir: str = "figures"  # where the figures are written (relative to the repository root)
tables_dir: str = "results/tables"  # where the tables (Markdown + LaTeX) are written
source: str = "run"  # run: run (or reuse) the studies; finished: finished runs only; reference: read reference_dir/*.csv
reference_dir: str = "results/reference"  # committed summaries, read when source is reference
summary_dir: str = "results/summary"  # summaries written when source is run: summary_dir/profile/name.csv
runs_dir: str = "results/runs"  # run directories (reused when complete)
seed: int = 0  # seeds numpy (plots only; the runs use `seeds`)
torch_threads: int = 0  # torch.set_num_threads for the runs (0: leave torch's default)
settings: list = [{"dataset": "digits", "network": "mlp", "epochs": 1, "finetune_epochs": 1, "limit_train": 300,
                   "limit_test": 200, "batch_size": 32}]  # RunConfig fields
seeds: list = [1000]  # training seeds
methods: list = ["bmrs_n_code", "bmrs_u8", "bmrs_u4", "l2", "c_obd", "dirichlet", "eigendamage"]  # table (a)
criteria: list = ["bmrs_n_code", "bmrs_u4", "c_obd", "dirichlet", "eigendamage"]  # post-training curves (b)
levels: list = [0, 50, 90]  # percent of units (eigen-units for EigenDamage) pruned per sweep point
x_metric: str = "actual_param_compression_pct"  # the figure's x axis (the only one valid for EigenDamage)
averaging: str = "interp"  # interp (common compression grid) or index (the paper's padded index-wise mean)
latency_repeats: int = 20  # interleaved timing rounds for the BMRS runs (the post-hoc runs time 20)

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

import bmrs.prune.dirichlet
import bmrs.prune.eigendamage
import bmrs.run.posthoc
from bmrs.report import claims, deviations, study
from bmrs.report import curves as C
from bmrs.report.plots import save_figure

t_start = time.perf_counter()
np.random.seed(seed)
study.configure(source=source, summary_dir=summary_dir, reference_dir=reference_dir, torch_threads=torch_threads)
print(f"profile={profile} source={source} settings={len(settings)} seeds={seeds} methods={methods} "
      f"criteria={criteria} levels={len(levels)}")

# %% [markdown]
# ### The deviations, as the code states them

# %%
for module in (bmrs.run.posthoc, bmrs.prune.eigendamage, bmrs.prune.dirichlet):
    display(Markdown(f"**`{module.__name__}`**\n\n```text\n{deviations.deviation_section(module)}\n```"))

# %% [markdown]
# ## (a) Continuous-pruning comparison at BMRS_N's compression
#
# One run per (setting, method, seed) through `bmrs.report.study.continuous`: the BMRS variants prune while
# training (Algorithm 1), the post-hoc methods prune the base network once to BMRS_N's compression and are
# fine-tuned with the same budget. Mean ± population std over seeds.

# %%
if study.computes(source):
    runs = study.continuous(settings, methods, seeds, profile=profile, results_dir=runs_dir, finished_only=study.finished_only(source))
    table_rows = C.deployment_metrics(runs, results_dir=runs_dir, repeats=latency_repeats)
    print("wrote", study.save_summary(table_rows, "baselines", profile))
else:
    table_rows = study.load_summary("baselines", profile, source="reference")
    print(f"read {len(table_rows)} runs from {reference_dir}")
table = C.baselines_table(table_rows, methods=[m for m in C.BASELINE_TABLE_METHODS if m in set(table_rows["method"])])
display(Markdown(C.markdown(table)))
paths = C.write_table(table, "baselines", profile=profile, directory=tables_dir, seeds=sorted(set(table_rows["seed"])),
                      source=source, title="Baselines beside BMRS: continuous pruning, post-hoc methods matched to "
                                           "BMRS_N's actual parameter compression")
print("wrote", *paths)

# %% [markdown]
# ## (b) Post-training sweeps: accuracy against actual parameter compression
#
# The post-training protocol of notebook 04 (one epoch of fine-tuning per level) with the baselines'
# curves added: C-OBD and Dirichlet mask the lowest-scoring λ % of the BMRS units; EigenDamage removes the
# lowest-scoring λ % of eigen-units (per-layer cap 0.95) and rebuilds the layers. Every curve is drawn
# against the actual parameter compression of the rebuilt network; × marks each curve's knee, the
# markers with black bars the BMRS stopping points.

# %%
if study.computes(source):
    raw, _ = study.posttrain(settings, seeds, criteria, levels, profile=profile, results_dir=runs_dir, finished_only=study.finished_only(source))
    print("wrote", study.save_summary(raw, "posttrain_baselines", profile))
else:
    raw = study.load_summary("posttrain_baselines", profile, source="reference")
    print(f"read {len(raw)} curve records from {reference_dir}")
curves = C.normalize_curves(raw) if not raw.empty else None
if curves is None:  # source "finished" before any of these sweeps has finished
    print("no post-training sweep of these settings has finished yet: no figure, no knees")
else:
    fig = C.figure_grid(curves, x=x_metric, averaging=averaging)
    fig.suptitle("Post-training pruning with the baselines: accuracy vs actual parameter compression\n"
                 f"(rotations counted for EigenDamage); {curves['seed'].nunique()} seed(s), mean ± 1 std; × = knee",
                 fontsize=9)
    paths = save_figure(fig, "posttrain_baselines", profile=profile, directory=figures_dir)
    print("saved", *paths)
    plt.show()
    plt.close(fig)
    knee_table = C.knees(curves, x=x_metric, averaging=averaging)
    display(Markdown(C.markdown(C.knees_table(knee_table, setting=True, distance=False))))

# %% [markdown]
# ## (c) Which method wins where
#
# Computed from the numbers above: (1) in the continuous comparison, the test accuracy of every method at
# BMRS_N's own compression (the post-hoc methods are matched to it; the BMRS_U variants reach their own
# compression); (2) on the post-training curves, every method's accuracy at the BMRS_N stopping point's
# compression (mean over seeds) and (3) where each curve's knee lies.

# %%
lines = claims.baselines_findings(table_rows, curves, x=x_metric, averaging=averaging)
display(Markdown("\n\n".join(lines)))
print("\n".join(line.replace("**", "") for line in lines))
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile}, source {source})")
