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
# * **three profiles** (`configs/smoke.yaml`, `quick.yaml`, `paper.yaml`) that set how much each notebook runs.
#
# This notebook trains nothing: it lists what is where, maps the paper to the notebooks, collects the
# documented deviations from the paper and from the released code, and prints the profiles.

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | paper: the profile whose settings and outputs are described
figures_dir: str = "figures"  # where this profile's figures go (relative to the repository root)
source: str = "run"  # unused here (this notebook reads only the repository); kept for a uniform interface
tables_dir: str = "results/tables"  # where the index tables are written (Markdown + LaTeX)
configs_dir: str = "configs"  # the profile files
results_dir: str = "results"  # results root: runs/, summary/<profile>/, executed/<profile>/
reference_dir: str = "results/reference"  # the committed quick-profile summaries
seed: int = 0  # unused here (set for every notebook by the profiles' common section)

# %%
import ast
import re
import time
from pathlib import Path

import pandas as pd
import yaml
from IPython.display import Markdown, display

from bmrs.report import tables
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
# Figure 5 is Figure 2 with an extra "Grad" baseline; the paper never defines it beyond the name (spec 2.12
# item 6, spec 8) and the released code does not contain it, so it is **not reproduced**: notebook 04 draws
# Figure 2 without it.

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
# Each deviation is stated in the module (or file) named in the last column; the notebook checks that the
# statement is still there (column "found"), so this list cannot silently drift from the code. The baselines'
# deviations from *their* authors' code are read out of the docstrings of `bmrs/prune/dirichlet.py` and `bmrs/prune/eigendamage.py`, and any
# bullet of the README's deviations section not covered here is appended.

# %%
DEVIATIONS = [
    ("ΔF_N: the library's default is the paper's Eq. 8 (with 2π); the released code omits the 2π "
     "(ΔF_code = ΔF_Eq.8 + ½ log 2π ≈ +0.919). The paper's BMRS_N numbers come from the code, so tables show "
     "`bmrs_n_code` in the paper's row and `bmrs_n` beside it.", "released code",
     [("bmrs/core/reduction.py", "include_2pi"), ("README.md", "2π")]),
    ("Noise placement follows the released code (after Tanh/ReLU in the MLP and LeNet5, after every BatchNorm "
     "in ResNet), not the pre-activation of the paper's Eq. 1.", "paper", [("bmrs/nn/models.py", "not Eq. 1")]),
    ("ViT: noise on the attention output projection and the MLP output of every block (the released code's "
     "placement, 24 × 768 units), not on 'the output of each transformer block' as the paper says.", "paper",
     [("bmrs/nn/models.py", "2.12.3")]),
    ("ViT weights: torchvision's ViT-B/16 ImageNet weights instead of the HF checkpoint "
     "google/vit-base-patch16-224 the authors used.", "paper and released code",
     [("bmrs/nn/models.py", "google/vit-base-patch16-224")]),
    ("Classifier heads are sized to the dataset's classes; the authors kept the 1000-way ImageNet heads "
     "(`keep_imagenet_head=True` / `--keep-imagenet-head` restores it).", "released code",
     [("bmrs/nn/models.py", "keep_imagenet_head"), ("README.md", "1000-way")]),
    ("E[θ] baseline: absent from the released code; implemented as 'prune iff E[θ] ≤ 0.1'.", "released code",
     [("bmrs/prune/criteria.py", "absent from the released code")]),
    ("Datasets the paper did not use (`mnist_5k`, `digits`) take the MNIST hyperparameters.", "paper",
     [("bmrs/run/data.py", "mnist_5k and digits"), ("README.md", "mnist_5k")]),
    ("`mnist_5k` and `digits` have no official test set: a fixed permutation (seed 0, 20 %) splits off a test "
     "set that is the same for every seed; the rest is split train/val by the run's seed.", "paper",
     [("bmrs/run/data.py", "fixed permutation")]),
    ("Quick profile: the noise parameters (μ, log σ) get a 10× learning rate (`noise_lr_scale: 10`) so their "
     "posteriors move as far in a tenth of the steps; the paper profile uses 1.", "paper",
     [("bmrs/run/train.py", "noise_lr_scale"), ("configs/quick.yaml", "noise_lr_scale: 10")]),
    ("Quick and smoke profiles: one seed, shortened schedules and training subsets (`limit_train`); the "
     "paper: 10 seeds (3 for Table 2), 50 + 10 epochs (100 + 10 for Table 2).", "paper",
     [("configs/quick.yaml", "shortened")]),
    ("ResNet/ViT can run at a reduced input resolution (`image_size`) for CPU runs; the paper: 224 px.", "paper",
     [("bmrs/run/data.py", "replaces the 224-pixel input")]),
    ("Compression is reported twice: by the paper's rule (spec 4.6, as the released code counts: a pruned unit's "
     "outgoing weights count only where the shapes line up, so LeNet5's flattened conv2 → fc1 columns and ResNet's "
     "residual consumers are left out; on the paper-preset F-MNIST LeNet5 BMRS_N run 88.4 % against the paper's "
     "88.02 ± 1.00 %) and as the actual compression of the physically shrunk network (95.9 % for that run).",
     "paper", [("bmrs/nn/paper_metric.py", "the shapes line up"), ("bmrs/nn/shrink.py", "physically remove"),
               ("README.md", "shapes line up")]),
    ("Table 2 seeds are not stated in the paper; the paper profile uses [1000, 1001, 666] (its Figure 4 script's).",
     "paper", [("configs/paper.yaml", "not stated in the paper")]),
    ("Tables 3/4: the paper does not say whether 'Train' includes the backward pass; both readings are timed "
     "(train step and train forward), as ratios, since absolute ms depend on the machine.", "paper",
     [("bmrs/report/cost.py", "spec 8")]),
    ("Figure 5's 'Grad' baseline is not reproduced (undefined in the paper, absent from the code).", "paper",
     [("notebooks/00_index.py", "Grad")]),
]


def found(path: str, needle: str) -> bool:
    p = ROOT / path
    return p.is_file() and needle in p.read_text(encoding="utf-8")


rows = []
for text, versus, sources in DEVIATIONS:
    ok = [found(p, k) for p, k in sources]
    rows.append({"deviation": text, "from": versus, "stated in": ", ".join(p for p, _ in sources),
                 "found": "yes" if all(ok) else "NOT FOUND: " + ", ".join(p for (p, _), o in zip(sources, ok) if not o)})

# README bullets not covered above
readme = (ROOT / "README.md").read_text(encoding="utf-8")
section = re.search(r"^## Documented deviations.*?$(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
readme_keys = [k for _, _, srcs in DEVIATIONS for p, k in srcs if p == "README.md"]
for bullet in re.split(r"^\* ", section.group(1), flags=re.M)[1:] if section else []:
    bullet = " ".join(bullet.split())
    if not any(k in bullet for k in readme_keys):
        rows.append({"deviation": bullet, "from": "paper / released code", "stated in": "README.md", "found": "yes"})


def docstring_items(path: str, heading: str) -> list[str]:
    """The items (numbered '1.' or bulleted '*') of the docstring section that starts with `heading`,
    each cut to its first sentence."""
    doc = ast.get_docstring(ast.parse((ROOT / path).read_text(encoding="utf-8"))) or ""
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith(heading)), None)
    if start is None:
        return []
    items: list[str] = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith(" "):
            break  # the next unindented heading ends the section
        m = re.match(r"^\s+(?:\d+\.|\*)\s+(.*)", line)
        if m:
            items.append(m.group(1))
        elif items and line.strip():
            items[-1] += " " + line.strip()
    # first sentence: up to a full stop followed by a capital letter (not the one of "i.e." or "e.g.")
    return [re.split(r"(?<!i\.e)(?<!e\.g)\.\s+(?=[A-Z])", it, maxsplit=1)[0].rstrip(".") + "." for it in items]


for path, heading, who in (("bmrs/prune/dirichlet.py", "Deviations from the authors' code", "Dirichlet pruning's code"),
                           ("bmrs/prune/eigendamage.py", "Deviations from the authors' code", "EigenDamage's code")):
    items = docstring_items(path, heading)
    for i, it in enumerate(items, start=1):
        rows.append({"deviation": it, "from": who, "stated in": f"{path} (item {i})", "found": "yes"})
    if not items:
        rows.append({"deviation": f"(no '{heading}' section found)", "from": who, "stated in": path,
                     "found": "NOT FOUND"})
deviations = pd.DataFrame(rows)
deviations.insert(0, "#", range(1, len(deviations) + 1))
show(deviations, "index_deviations", "Documented deviations from the paper and from the released code",
     notes="'from' = what we deviate from; the baselines' items are their authors' code")
print(f"{len(deviations)} deviations; {int((deviations['found'] != 'yes').sum())} not found where the list says")

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
    import json

    secs = {p.name.split(".")[0]: float(json.loads(p.read_text()).get("seconds", 0.0)) for p in stamps}
    total = sum(secs.values())
    return f"{len(secs)} notebook(s), {total / 60:.1f} min in total ({', '.join(f'{k[:2]}: {v:.0f} s' for k, v in secs.items())})"


costs = pd.DataFrame([
    {"profile": "smoke", "what runs": "tiny digits MLP runs (1 epoch), reduced timings, few checks",
     "expected cost": "seconds per notebook; ≈ 1–3 min for all on 2 CPU cores"},
    {"profile": "quick", "what runs": ("real Fashion-MNIST MLP and LeNet5, one seed (1000), 5 + 2 / 4 + 2 epochs, "
                                       "noise_lr_scale 10; Tables 3/4 timed, Table 4 at reduced resolution; "
                                       "Table 2 not run"),
     "expected cost": "about 15 minutes of notebooks on 2 CPU cores (a clean clone: 16.5 min including creating .venv)"},
    {"profile": "paper", "what runs": ("the full protocol: Table 1 6 settings × 8 methods × 10 seeds, 50 + 10 epochs; "
                                       "Table 2 4 settings × 8 methods × 3 seeds, 100 + 10 epochs at 224 px; "
                                       "Figure 2 sweeps of 100 levels with a fine-tuning epoch each; Figure 4 p1 grid"),
     "expected cost": ("GPU. One ViT-B/16 TinyImagenet run took ≈ 44 h on a Titan X (spec 4.7); "
                       "order 10³ GPU-hours in total (estimate below)")},
])
costs["measured here"] = [measured_seconds(p) for p in costs["profile"]]
show(costs, "index_profile_costs", "What each profile runs and costs")

# %% [markdown]
# **The paper profile, order of magnitude.** An estimate from the spec, not a measurement. Spec 4.7: ≈ 7 min for
# LeNet5 on MNIST without noise layers (60 epochs) up to ≈ 44 h for ViT on TinyImagenet with noise (110 epochs),
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
