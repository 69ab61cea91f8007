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
# comparison protocol of `baselines_spec.md` part C, implemented by `bmrs.run.posthoc`:
#
# * **Same trained network and seed.** Every post-hoc method starts from the "base" run of the setting and
#   seed: the network trained with noise layers and no masking for the full schedule (spec 4.5) — the
#   network the post-training sweeps of notebook 04 prune. EigenDamage needs a plain network: the noise
#   is folded into the weights as its test-time scale E[θ] (spec C.2, option (b)).
# * **Same compression.** In the continuous-pruning comparison (a), C-OBD, Dirichlet and EigenDamage are
#   pruned to the *actual* parameter compression BMRS_N (the released code's variant, `bmrs_n_code`) reached
#   on the same setting and seed, by bisection over their own pruning level; L2 keeps the paper's rule
#   (BMRS_N's structure fraction).
# * **Same fine-tuning budget.** After pruning, every method gets BMRS's fine-tuning phase (the
#   profile's `finetune_epochs`, best validation epoch evaluated on test); in the post-training sweeps (b),
#   one epoch per level, as BMRS. EigenDamage is fine-tuned with cross-entropy only (it has no noise layers).
# * **Parameters after physical rebuilding.** Compression is counted on the rebuilt network
#   (`bmrs.nn.shrink.shrink` for unit pruning; EigenDamage's rotate → core → rotate layers *with the rotation
#   matrices counted*, spec C.3). EigenDamage removes eigen-directions, not units, so the paper's
#   unit-based parameter metric (spec 4.6) does not apply to it ("n/a"); it is compared on parameters and
#   MACs, and the figure's x axis is the actual parameter compression for every method.
# * **Latency**: the pruned and the dense deployable networks timed side by side (batch 32, one thread,
#   20 interleaved rounds); for the post-hoc methods as recorded by their runs (`final["latency_batch32"]`),
#   for the BMRS runs measured here the same way. Absolute times depend on the machine; the speed-up is
#   the robust number.
#
# Deviations from the original methods (each with its spec item) are listed in the docstrings of
# `bmrs/prune/eigendamage.py`, `dirichlet.py` and `protocol.py`; the cell after the parameters prints
# them so that this notebook always states the current ones.
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
source: str = "run"  # run: run (or reuse) the studies; reference: read reference_dir/*.csv, train nothing
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
import inspect
import re
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from IPython.display import Markdown, display

import bmrs.prune.dirichlet
import bmrs.prune.eigendamage
import bmrs.run.posthoc
from bmrs.report import curves as C
from bmrs.report import study
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
    doc = inspect.getdoc(module) or ""
    match = re.search(r"^Deviations.*?(?=^\S[^\n]*\n    |\Z)", doc, flags=re.S | re.M)
    text = match.group(0).strip() if match else doc  # protocol.py: the whole docstring is the protocol
    display(Markdown(f"**`{module.__name__}`**\n\n```text\n{text}\n```"))

# %% [markdown]
# ## (a) Continuous-pruning comparison at BMRS_N's compression
#
# One run per (setting, method, seed) through `bmrs.report.study.continuous`: the BMRS variants prune while
# training (spec 4.4), the post-hoc methods prune the base network once to BMRS_N's compression and are
# fine-tuned with the same budget. Mean ± population std over seeds.

# %%
if source == "run":
    runs = study.continuous(settings, methods, seeds, profile=profile, results_dir=runs_dir)
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
if source == "run":
    raw, _ = study.posttrain(settings, seeds, criteria, levels, profile=profile, results_dir=runs_dir)
    print("wrote", study.save_summary(raw, "posttrain_baselines", profile))
else:
    raw = study.load_summary("posttrain_baselines", profile, source="reference")
    print(f"read {len(raw)} curve records from {reference_dir}")
curves = C.normalize_curves(raw)
fig = C.figure_grid(curves, x=x_metric, averaging=averaging)
fig.suptitle("Post-training pruning with the baselines: accuracy vs actual parameter compression\n"
             f"(rotations counted for EigenDamage); {curves['seed'].nunique()} seed(s), mean ± 1 std; × = knee", fontsize=9)
paths = save_figure(fig, "posttrain_baselines", profile=profile, directory=figures_dir)
print("saved", *paths)
plt.show()
plt.close(fig)

knee_table = C.knees(curves, x=x_metric, averaging=averaging)
stops = C.stopping_points(curves, x=x_metric)
display(Markdown(C.markdown(pd.DataFrame({
    "setting": [C.setting_label(d, n) for d, n in zip(knee_table["dataset"], knee_table["network"])],
    "criterion": [C.label(c) for c in knee_table["criterion"]],
    "knee comp. %": [f"{v:.1f}" if d else "undefined" for v, d in zip(knee_table["knee_x"], knee_table["defined"])],
    "knee acc. %": [f"{v:.2f}" if d else "—" for v, d in zip(knee_table["knee_acc"], knee_table["defined"])],
    "resolution (pp)": [f"{v:.1f}" if d else "—" for v, d in zip(knee_table["resolution"], knee_table["defined"])],
    "curve ends at %": [f"{v:.1f}" for v in knee_table["curve_x_max"]],
}))))

# %% [markdown]
# ## (c) Which method wins where
#
# Computed from the numbers above: (1) in the continuous comparison, the test accuracy of every method at
# BMRS_N's own compression (the post-hoc methods are matched to it; the BMRS_U variants reach their own
# compression); (2) on the post-training curves, every method's accuracy at the BMRS_N stopping point's
# compression (mean over seeds) and (3) where each curve's knee lies.

# %%
def best_of(acc: pd.Series, tie: float = 0.005) -> str:
    """'best X (a %)', or 'tie between X, Y (a %)' when several are within `tie` points of the best."""
    top = float(acc.max())
    winners = [C.label(m) for m, a in acc.items() if a >= top - tie]
    return (f"best {winners[0]} ({top:.2f} %)" if len(winners) == 1
            else f"tie between {', '.join(winners)} ({top:.2f} %)")


lines = []
reference = "bmrs_n_code"
for dataset, network in C.settings_of(table_rows):
    t = table_rows[(table_rows["dataset"] == dataset) & (table_rows["network"] == network)]
    means = t.groupby("method")[["test_acc", "actual_param_compression_pct"]].mean()
    head = f"**{C.setting_label(dataset, network)}**"
    if reference in means.index:
        target = means.loc[reference, "actual_param_compression_pct"]
        matched = means.drop(index=[m for m in ("bmrs_u8", "bmrs_u4") if m in means.index])
        order = matched.sort_values("test_acc", ascending=False)
        ranking = ", ".join(f"{C.label(m)} {r.test_acc:.2f} % (at {r.actual_param_compression_pct:.1f} %)"
                            for m, r in order.iterrows())
        lines.append(f"{head} — continuous pruning at BMRS_N's actual compression {target:.1f} %: "
                     f"{best_of(order['test_acc'])}; ranking: {ranking}.")
        for u in ("bmrs_u8", "bmrs_u4"):
            if u in means.index:
                r = means.loc[u]
                lines.append(f"  {C.label(u)} reaches {r.actual_param_compression_pct:.1f} % at {r.test_acc:.2f} % "
                             f"({r.test_acc - means.loc[reference, 'test_acc']:+.2f} pp accuracy vs BMRS_N, "
                             f"{r.actual_param_compression_pct - target:+.1f} pp compression).")
    else:
        lines.append(f"{head} — BMRS_N was not run; no matched comparison.")
for dataset, network in C.settings_of(curves):
    sub = curves[(curves["dataset"] == dataset) & (curves["network"] == network)]
    head = f"**{C.setting_label(dataset, network)}, post-training curves**"
    st = stops[(stops["dataset"] == dataset) & (stops["network"] == network) & (stops["criterion"] == reference)]
    if not st.empty:
        at = float(st["x"].mean())
        accs = {c: C.accuracy_at(sub, c, at, x=x_metric, averaging=averaging) for c in C.present_criteria(sub)}
        reach = {c: a for c, a in accs.items() if np.isfinite(a)}
        if reach:
            lines.append(f"{head} — at BMRS_N's stopping compression {at:.1f} %: {best_of(pd.Series(reach))}; "
                         + ", ".join(f"{C.label(c)} {a:.2f} %" for c, a in reach.items())
                         + (f"; not reached by {', '.join(C.label(c) for c in accs if c not in reach)}"
                            if len(reach) < len(accs) else "") + ".")
    k = knee_table[(knee_table["dataset"] == dataset) & (knee_table["network"] == network) & knee_table["defined"]]
    if not k.empty:
        full = k[~k["criterion"].isin(C.BMRS_CRITERIA)]  # BMRS curves end at their stopping points
        pool = full if not full.empty else k
        right = pool.loc[pool["knee_x"].idxmax()]
        high = pool.loc[pool["knee_acc"].idxmax()]
        lines.append(f"  Knees: furthest right {C.label(right['criterion'])} ({right['knee_x']:.1f} % at "
                     f"{right['knee_acc']:.2f} %), most accurate {C.label(high['criterion'])} ({high['knee_x']:.1f} % "
                     f"at {high['knee_acc']:.2f} %); " + ", ".join(
                         f"{C.label(r.criterion)} {r.knee_x:.1f} %" for r in k.itertuples()) + ".")
    else:
        lines.append(f"{head} — no curve has a defined knee (flat or convex curves).")
display(Markdown("\n\n".join(lines)))
print("\n".join(re.sub(r"\*\*", "", line) for line in lines))
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile}, source {source})")
