"""The documented deviations from the paper (arXiv:2406.01345) and from the released code, as one table.

Each deviation of :data:`DEVIATIONS` names the files that state it and a phrase each of them contains
(``tests/test_deviations.py`` checks that every phrase is still there, so this list cannot drift from the
code silently). :func:`deviation_table` adds the bullets of the README's "Documented deviations" section
that the list does not cover, and the numbered items of the "Deviations from the authors' code" sections
of the baselines' docstrings (:data:`BASELINE_MODULES`). :func:`deviation_section` returns such a section
of a module's docstring (notebook 07 prints them).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from types import ModuleType

import pandas as pd

#: (deviation, what it deviates from, [(file relative to the repository root, a phrase the file states)])
DEVIATIONS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("ΔF_N: the library's default is the paper's Eq. 8 (with 2π); the released code omits the 2π "
     "(ΔF_code = ΔF_Eq.8 + ½ log 2π ≈ +0.919). The paper's BMRS_N numbers come from the code, so tables show "
     "`bmrs_n_code` in the paper's row and `bmrs_n` beside it.", "released code",
     [("bmrs/core/reduction.py", "include_2pi"), ("README.md", "2π")]),
    ("Noise placement follows the released code (after Tanh/ReLU in the MLP and LeNet5, after every BatchNorm "
     "in ResNet), not the pre-activation of the paper's Eq. 1.", "paper", [("bmrs/nn/models.py", "not Eq. 1")]),
    ("ViT: noise on the attention output projection and the MLP output of every block (the released code's "
     "placement, 24 × 768 units), not on 'the output of each transformer block' as the paper says.", "paper",
     [("bmrs/nn/models.py", "HF ViT placement of the released code")]),
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
    ("Quick profile, LeNet5 only: the noise parameters (μ, log σ) get a 10× learning rate (`noise_lr_scale: 10`) "
     "so their posteriors move as far in a tenth of the steps; not neutral: it stops SNR and L2 from collapsing "
     "(the quick MLP therefore trains 20 + 2 epochs at the paper's rate). The paper and fmnist profiles use 1.", "paper",
     [("bmrs/run/train.py", "noise_lr_scale"), ("configs/quick.yaml", "noise_lr_scale: 10")]),
    ("Quick and smoke profiles: one seed, shortened schedules and training subsets (`limit_train`); the "
     "paper: 10 seeds (3 for Table 2), 50 + 10 epochs (100 + 10 for Table 2).", "paper",
     [("configs/quick.yaml", "shortened")]),
    ("ResNet/ViT can run at a reduced input resolution (`image_size`) for CPU runs; the paper: 224 px.", "paper",
     [("bmrs/run/data.py", "replaces the 224-pixel input")]),
    ("Compression is reported twice: by the paper's rule (as the released code's "
     "`get_true_parameter_compression_percent` counts: a pruned unit's outgoing weights count only where the "
     "shapes line up, so LeNet5's flattened conv2 → fc1 columns and ResNet's residual consumers are left out; on "
     "the paper-preset F-MNIST LeNet5 BMRS_N run 88.4 % against the paper's 88.02 ± 1.00 %) and as the actual "
     "compression of the physically shrunk network (95.9 % for that run).",
     "paper", [("bmrs/nn/paper_metric.py", "the shapes line up"), ("bmrs/nn/shrink.py", "physically remove"),
               ("README.md", "shapes line up")]),
    ("Table 2 seeds are not stated in the paper; the paper profile uses [1000, 1001, 666] (its Figure 4 script's).",
     "paper", [("configs/paper.yaml", "not stated in the paper")]),
    ("Tables 3/4: the paper does not say whether 'Train' includes the backward pass; both readings are timed "
     "(train step and train forward), as ratios, since absolute ms depend on the machine.", "paper",
     [("bmrs/report/cost.py", "includes the backward pass")]),
    ("Figure 5's 'Grad' baseline is not reproduced (undefined in the paper, absent from the code).", "paper",
     [("notebooks/00_index.py", "Grad")]),
]

#: The heading of the baselines' docstring sections that list their deviations from their authors' code.
BASELINE_HEADING = "Deviations from the authors' code"
#: (module file, whose code it deviates from)
BASELINE_MODULES: tuple[tuple[str, str], ...] = (("bmrs/prune/dirichlet.py", "Dirichlet pruning's code"),
                                                 ("bmrs/prune/eigendamage.py", "EigenDamage's code"))
#: The README section that lists the deviations in prose.
README_HEADING = "## Documented deviations"


def first_sentence(text: str) -> str:
    """Text up to its first full stop followed by a capital letter (not the one of "i.e." or "e.g.")."""
    return re.split(r"(?<!i\.e)(?<!e\.g)\.\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".") + "."


def docstring_items(source: str, heading: str = BASELINE_HEADING) -> list[str]:
    """The items (numbered '1.' or bulleted '*') of the module docstring section of ``source`` (Python
    source text) that starts with ``heading``, each cut to its first sentence; [] without that section."""
    doc = ast.get_docstring(ast.parse(source)) or ""
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
    return [first_sentence(it) for it in items]


def readme_bullets(readme: str, heading: str = README_HEADING) -> list[str]:
    """The bullets ('* ...', joined to one line each) of the README section that starts with ``heading``."""
    section = re.search(rf"^{re.escape(heading)}.*?$(.*?)(?=^## |\Z)", readme, flags=re.S | re.M)
    if not section:
        return []
    return [" ".join(b.split()) for b in re.split(r"^\* ", section.group(1), flags=re.M)[1:]]


def deviation_table(root: Path | str) -> pd.DataFrame:
    """Every documented deviation: :data:`DEVIATIONS`, the README bullets they do not cover, and the items of
    the baselines' deviation sections. Columns: #, deviation, from, stated in."""
    root = Path(root)
    rows = [{"deviation": text, "from": versus, "stated in": ", ".join(p for p, _ in sources)}
            for text, versus, sources in DEVIATIONS]
    readme_keys = [k for _, _, sources in DEVIATIONS for p, k in sources if p == "README.md"]
    for bullet in readme_bullets((root / "README.md").read_text(encoding="utf-8")):
        if not any(k in bullet for k in readme_keys):
            rows.append({"deviation": bullet, "from": "paper / released code", "stated in": "README.md"})
    for path, who in BASELINE_MODULES:
        for i, item in enumerate(docstring_items((root / path).read_text(encoding="utf-8")), start=1):
            rows.append({"deviation": item, "from": who, "stated in": f"{path} (item {i})"})
    df = pd.DataFrame(rows, columns=["deviation", "from", "stated in"])
    df.insert(0, "#", range(1, len(df) + 1))
    return df


def deviation_section(module: ModuleType) -> str:
    """The "Deviations ..." section of a module's docstring (up to the next unindented heading that is
    followed by an indented block), or the whole docstring when it has no such section."""
    doc = inspect.getdoc(module) or ""
    match = re.search(r"^Deviations.*?(?=^\S[^\n]*\n    |\Z)", doc, flags=re.S | re.M)
    return match.group(0).strip() if match else doc
