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
# # 00 — BMRS, derived, tested, reproduced: the companion's front page
#
# A reference companion to *"BMRS: Bayesian Model Reduction for Structured Pruning"* (Dustin Wright,
# Christian Igel, Raghavendra Selvan; NeurIPS 2024, arXiv:2406.01345). It consists of
#
# * **`bmrs/`**, a small tested PyTorch library: the multiplicative-noise layer and its KL term, E[θ] and the SNR,
#   Bayesian model reduction (ΔF for BMRS$_N$ and BMRS$_U$), every pruning criterion of the paper, the paper's
#   networks, data pipelines and training protocol, physical compaction of pruned networks, and the
#   EigenDamage, C-OBD and Dirichlet-pruning baselines;
# * **the notebooks below**, which derive and check every formula, train and prune the paper's networks, and
#   regenerate every figure and table of the paper with the paper's numbers printed beside ours;
# * **four profiles** (`configs/smoke.yaml`, `quick.yaml`, `fmnist.yaml`, `paper.yaml`) that set how much each notebook runs.
#
# This notebook trains nothing: it lists what is where, maps the paper to the notebooks, collects the
# documented deviations from the paper and from the released code, and prints the profiles.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | fmnist | paper: the profile whose settings and outputs are described
figures_dir: str = "figures"  # where this profile's figures go (relative to the repository root)
source: str = "run"  # unused here (this notebook reads only the repository); kept for a uniform interface
tables_dir: str = "results/tables"  # where the index tables are written (Markdown + LaTeX)
configs_dir: str = "configs"  # the profile files
results_dir: str = "results"  # results root: runs/, summary/<profile>/, executed/<profile>/
reference_dir: str = "results/reference"  # the committed quick-profile summaries
seed: int = 0  # unused here (set for every notebook by the profiles' common section)

# %%
import json
import time
from pathlib import Path

import pandas as pd
import yaml
from IPython.display import Markdown, display

from bmrs.report import deviations, tables
from bmrs.notebook_runner import REPO_ROOT, available_profiles, discover_notebooks, load_profile  # noqa: F401

t_start = time.perf_counter()
ROOT = REPO_ROOT
NOTEBOOKS = {p.stem: p for p in discover_notebooks(ROOT / "notebooks")}


def title_of(path: Path) -> str:
    """The first '# # ' heading of a py:percent notebook."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# # "):
            return line[4:].strip()
    return "(no title)"


def show(df: pd.DataFrame, stem: str, title: str, notes: str | None = None) -> None:
    df.attrs.update(title=title, notes=notes)
    display(Markdown(f"**{title}**\n\n" + tables.to_markdown(df)))
    print("saved", *tables.write_table(df, stem, profile=profile, directory=tables_dir, seeds=[]))


print(f"profile={profile}; {len(NOTEBOOKS)} notebooks in {ROOT / 'notebooks'}")

# %% [markdown]
# ## The notebooks

# %%
nb = pd.DataFrame([{"notebook": stem, "title": title_of(p)} for stem, p in NOTEBOOKS.items()])
display(Markdown(tables.to_markdown(nb)))

# %% [markdown]
# ## Every figure and table of the paper, and where it is reproduced
#
# Figure 5 (Appendix E) is Figure 2 with an extra "Grad" baseline; the paper never defines it beyond "two
# thresholds" on the magnitude and the gradient norm of a structure, and the released code does not contain
# it, so it is **not reproduced**: notebook 04 draws Figure 2 without it.

# %%
PAPER_MAP = [
    ("Figure 1", "schematic: E[θ] histograms before/after BMRS_N, the priors", "02_figure1_units",
     "priors panel derived in 01"),
    ("Figure 2", "post-training pruning: accuracy vs compression, BMRS stopping points", "04_post_training", ""),
    ("Figure 3", "Spearman rank correlations between criteria (CIFAR10)", "04_post_training", ""),
    ("Figure 4", "BMRS_U accuracy and compression vs p1 (CIFAR10 LeNet5)", "05_bmrs_u_precision", ""),
    ("Figure 5", "Figure 2 with a 'Grad' baseline", None, "not reproduced: the 'Grad' baseline is under-specified"),
    ("Figure 6", "rank correlations, Fashion-MNIST", "04_post_training", ""),
    ("Figure 7", "rank correlations, MNIST", "04_post_training", ""),
    ("Table 1", "continuous pruning, MLP and LeNet5", "03_continuous_pruning",
     "with the 2π variants of ΔF_N side by side"),
    ("Table 2", "continuous pruning, pretrained ResNet-50 and ViT", "03_continuous_pruning", "GPU: paper profile"),
    ("Table 3", "runtimes with/without noise, MLP and LeNet5", "06_cost", "as ratios beside the paper's"),
    ("Table 4", "runtimes with/without noise, ResNet-50 and ViT", "06_cost",
     "reduced resolution on CPU; 224 px / batch 32 in the paper profile"),
    ("—", "derivation and numerical checks of every formula", "01_bmr_derivation", "not a paper item"),
    ("—", "parameters, MACs and latency of the physically shrunk networks", "06_cost", "never measured in the paper"),
    ("—", "EigenDamage, C-OBD and Dirichlet pruning beside BMRS", "07_baselines", "not in the paper"),
    ("—", "BMRS on a network of your own: attach, train, prune, shrink, measure", "08_your_own_network", "not in the paper"),
]
rows = []
for item, what, stem, note in PAPER_MAP:
    present = stem is None or stem in NOTEBOOKS
    rows.append({"paper": item, "what": what, "notebook": stem or "—",
                 "status": "not reproduced" if stem is None else ("present" if present else "MISSING"), "note": note})
paper_map = pd.DataFrame(rows)
show(paper_map, "index_paper_map", "Every figure and table of the paper and the notebook that reproduces it")
missing = paper_map[paper_map["status"] == "MISSING"]
if not missing.empty:
    print("warning: notebooks not found:", ", ".join(missing["notebook"]))

# %% [markdown]
# ## Documented deviations from the paper and from the released code
#
# Each deviation is stated in the module (or file) named in the last column; `tests/test_deviations.py`
# checks that every statement is still there, so this list cannot silently drift from the code. The
# baselines' deviations from *their* authors' code are read out of the docstrings of `bmrs/prune/dirichlet.py`
# and `bmrs/prune/eigendamage.py`, and any bullet of the README's deviations section not covered here is
# appended (`bmrs.report.deviations`).

# %%
deviation_list = deviations.deviation_table(ROOT)
show(deviation_list, "index_deviations", "Documented deviations from the paper and from the released code",
     notes="'from' = what we deviate from; the baselines' items are their authors' code")
print(f"{len(deviation_list)} deviations")

# %% [markdown]
# ## How to run it
#
# ```bash
# ./run_all.sh                         # the quick profile (the default): real data, CPU
# ./run_all.sh --profile smoke         # seconds per notebook; what the tests use
# ./run_all.sh --profile paper         # the paper's full protocol; needs a GPU
# ./run_all.sh --only 03 06            # only some notebooks (full stem or unique prefix)
# ./run_all.sh --only 06 --force       # re-execute a notebook that is up to date
# ./run_all.sh --list                  # what would run, and what is up to date
# ./run_tests.sh                       # the test suite
# ```
#
# `run_all.sh` creates `.venv` on first use and runs `python -m bmrs.notebook_runner`, which executes the
# notebooks in order with papermill, passing each the parameters of its section of `configs/<profile>.yaml`.
# A notebook whose source, parameters and `bmrs` sources are unchanged since its last successful run is
# skipped; a finished training run (`results/runs/<hash>/`) is never recomputed, so notebooks that share
# runs (02, 03, 05, 06 reuse Table 1's runs; 04 and 07 share the base networks) train them once.
# Most notebooks also accept `source="reference"` (e.g. `--param source=reference`), which rebuilds their
# figures and tables from the committed quick-profile summaries in `results/reference/` without training.

# %% [markdown]
# ### What each profile costs
#
# The last column is read from the stamps of the notebooks executed on this machine, where there are any.

# %%
def measured_seconds(prof: str) -> str:
    stamps = sorted((ROOT / results_dir / "executed" / prof).glob("*.stamp.json")) if (ROOT / results_dir).exists() else []
    if not stamps:
        return "not run here yet"
    secs = {p.name.split(".")[0]: float(json.loads(p.read_text()).get("seconds", 0.0)) for p in stamps}
    total = sum(secs.values())
    return f"{len(secs)} notebook(s), {total / 60:.1f} min in total ({', '.join(f'{k[:2]}: {v:.0f} s' for k, v in secs.items())})"


costs = pd.DataFrame([
    {"profile": "smoke", "what runs": "tiny digits MLP runs (1 epoch), reduced timings, few checks",
     "expected cost": "seconds per notebook; ≈ 1–3 min for all on 2 CPU cores"},
    {"profile": "quick", "what runs": ("real Fashion-MNIST MLP and LeNet5, one seed (1000); the MLP 20 + 2 epochs at "
                                       "the paper's noise learning rate (SNR and L2 collapse, as in the paper), "
                                       "LeNet5 4 + 2 epochs on 12,000 images at noise_lr_scale 10 (its SNR and L2 "
                                       "cannot collapse: see the README); Tables 3/4 timed, Table 4 at reduced "
                                       "resolution; Table 2 not run"),
     "expected cost": ("under an hour on 2 CPU cores: the grid 41 min with 2 workers plus 7 min of notebooks, "
                       "measured while other work shared the cores")},
    {"profile": "paper", "what runs": ("the full protocol: Table 1 6 settings × 8 methods × 10 seeds, 50 + 10 epochs; "
                                       "Table 2 4 settings × 8 methods × 3 seeds, 100 + 10 epochs at 224 px; "
                                       "Figure 2 sweeps of 100 levels with a fine-tuning epoch each; Figure 4 p1 grid"),
     "expected cost": ("GPU. One ViT-B/16 TinyImagenet run took ≈ 44 h on a Titan X (the paper's compute report); "
                       "order 10³ GPU-hours in total (estimate below)")},
])
costs["measured here"] = [measured_seconds(p) for p in costs["profile"]]
show(costs, "index_profile_costs", "What each profile runs and costs")

# %% [markdown]
# **The paper profile, order of magnitude.** An estimate from the paper's reported run times, not a measurement:
# ≈ 7 min for LeNet5 on MNIST without noise layers (60 epochs) up to ≈ 44 h for ViT on TinyImagenet with noise (110 epochs),
# on a Titan X; the noise layers make training 1.4–8× slower (Tables 3, 4).

# %%
estimate = pd.DataFrame([
    ("Table 1", "6 settings × 8 methods × 10 seeds (+ base runs for L2)", 540, 0.1, 0.5),
    ("Table 2", "4 settings × 8 methods × 3 seeds (+ base runs), 110 epochs", 108, 10.0, 44.0),
    ("Figure 2/3/6/7", "6 settings × 10 seeds: base run + 6 criteria × 100 levels × 1 epoch", 60, 1.0, 4.0),
    ("Figure 4", "8 p1 values × 10 seeds, CIFAR10 LeNet5", 80, 0.2, 0.5),
], columns=["item", "runs", "count", "h per run (low)", "h per run (high)"])
estimate["GPU-hours"] = [f"{c * lo:,.0f}–{c * hi:,.0f}" for c, lo, hi in
                         zip(estimate["count"], estimate["h per run (low)"], estimate["h per run (high)"])]
lo = float((estimate["count"] * estimate["h per run (low)"]).sum())
hi = float((estimate["count"] * estimate["h per run (high)"]).sum())
display(Markdown(tables.to_markdown(estimate.astype(str))))
print(f"total ≈ {lo:,.0f}–{hi:,.0f} GPU-hours on a Titan X-class GPU, i.e. about {lo / 24 / 30:.1f}–{hi / 24 / 30:.1f} "
      "months of one GPU; Table 2 dominates. (For scale: the authors report 3,774 kWh for the whole project, "
      "prototyping included.)")

# %% [markdown]
# ## The profiles' settings
#
# Every notebook section of every profile (`common` first). A notebook receives only the keys listed; all other
# parameters keep the defaults of its parameters cell. Long values are shortened.

# %%
def short(value, width: int = 70) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("...").strip()
    return text if len(text) <= width else text[: width - 1] + "…"


profiles = {name: load_profile(name, ROOT / configs_dir) for name in available_profiles(ROOT / configs_dir)}
stems = ["common"] + sorted({s for p in profiles.values() for s in p.notebooks})
rows = []
for stem in stems:
    keys = sorted({k for p in profiles.values() for k in (p.common if stem == "common" else p.notebooks.get(stem, {}))})
    for key in keys:
        row = {"notebook": stem, "parameter": key}
        for name, p in profiles.items():
            section = p.common if stem == "common" else p.notebooks.get(stem, {})
            row[name] = short(section[key]) if key in section else "(default)"
        rows.append(row)
settings = pd.DataFrame(rows)
show(settings, "index_profiles", "Parameters of every notebook in every profile (configs/*.yaml)")
print(f"this run describes profile {profile!r}: {profiles[profile].path if profile in profiles else '(no such file)'}")

# %% [markdown]
# ## Where results go

# %%
def count(path: Path, pattern: str = "*") -> str:
    if not path.exists():
        return "absent"
    n = sum(1 for p in path.glob(pattern) if not p.name.startswith("."))
    return f"{n} item(s)"


R = ROOT / results_dir
places = pd.DataFrame([
    ("results/runs/<hash>/", "one directory per training run: config.json, metrics.json (written last: "
     "the run is complete), model.pt, compact/ (the shrunk network, after notebook 06)", count(R / "runs")),
    (f"results/summary/{profile}/", "the small summary CSVs the notebooks write (one row per run / point)",
     count(R / "summary" / profile, "*.csv")),
    (tables_dir + "/", "Markdown + LaTeX tables, each captioned with profile, seeds and epochs",
     count(ROOT / tables_dir)),
    (figures_dir + "/", "figures, PNG + PDF, stamped with the profile (smoke: results/figures/smoke)",
     count(ROOT / figures_dir)),
    (reference_dir + "/", "the committed quick-profile summaries, read with source='reference'",
     count(ROOT / reference_dir, "*.csv")),
    (f"results/executed/{profile}/", "executed notebooks and their up-to-date stamps",
     count(R / "executed" / profile, "*.ipynb")),
], columns=["path", "what", f"now (profile {profile})"])
show(places, "index_outputs", "Where results go")
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile})")
