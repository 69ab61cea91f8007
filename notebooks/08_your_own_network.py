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
# # 08 — Pruning your own network: attach, train, prune, shrink
#
# The paper's networks come with their noise layers built in (bmrs.nn.models). Here the network is one the
# library has never seen — by default a user-style module with a residual block and a concatenation, or
# torchvision's MobileNetV2 or ResNet-18 (`network`) — on a real data set available offline (Fashion-MNIST by
# default). The whole path, each step one call into `bmrs`:
#
# 1. **attach** — `bmrs.attach_noise(net, example_batch)` traces the forward with torch.fx and puts a
#    multiplicative noise layer (paper Eq. 1) on the output units of every prunable Linear/Conv layer, after
#    its activation (or after its BatchNorm, `placement="batchnorm"`, as the paper does for ResNets); tensors
#    added by a residual connection form one structure group; the classifier head is left alone. Its report
#    says what was added where, and what was left without noise and why;
# 2. **train** in an ordinary loop with `bmrs.Pruner`: the loss is cross-entropy + KL (paper Eq. 4), the noise
#    parameters have their own optimiser group, and `pruner.step()` recomputes every mask at the end of each
#    epoch with the criterion's rule — continuous pruning, the paper's Algorithm 1 — followed by
#    `pruner.finetune()` (final pruning, frozen masks) and a few fine-tuning epochs;
# 3. **shrink** — `bmrs.shrink(model)` removes the pruned units physically (rows, columns, BatchNorm entries;
#    a channel of a residual stream only when every member prunes it) and folds E[θ]·mask into the weights:
#    its outputs equal the masked network's;
# 4. **measure** accuracy, parameters, MACs and CPU latency before (the same network trained without noise,
#    same budget) and after.
#
# Criteria: BMRS$_N$ as in the paper's tables (`bmrs_n_code`: the released code's ΔF$_N$, which produced them;
# notebook 01, section 3.4) and BMRS$_U$-4 (`bmrs_u4`). The noise parameters learn 10× faster than the weights
# (the Pruner's default): within these short budgets the posteriors would not separate otherwise (README,
# "Pruning your own network").

# %%
# Colab only (elsewhere nothing happens): install the companion, keep Colab's torch (scripts/colab_install.py).
import glob, runpy, sys  # noqa: E401
if "google.colab" in sys.modules:  # clone the repository into /content first: !git clone <its URL>
    runpy.run_path(next(iter(glob.glob("/content/*/scripts/colab_install.py") + glob.glob("../scripts/colab_install.py")), "scripts/colab_install.py"))

# %% tags=["parameters"]
profile: str = "smoke"  # smoke | quick | fmnist | paper (printed on every figure and table)
figures_dir: str = "figures"  # where the figure is written (relative to the repository root)
tables_dir: str = "results/tables"  # where the summary table is written
dataset: str = "digits"  # fashion_mnist | mnist_5k | digits (real data sets available offline; bmrs.run.data)
network: str = "custom"  # custom (a residual block and a concatenation) | mobilenet_v2 | resnet18 (torchvision)
width: int = 8  # channels of the first stage of the custom network (MobileNetV2: width_mult is width / 32)
placement: str = "activation"  # where attach_noise puts the noise: activation | batchnorm
criteria: list = ["bmrs_n_code", "bmrs_u4"]  # any name of bmrs.prune.registry with a fixed rule
epochs: int = 1  # training epochs (continuous pruning after each)
finetune_epochs: int = 1  # epochs with frozen masks after the final pruning
batch_size: int = 32
lr: float = 3e-3  # Adam learning rate of the weights
noise_lr_scale: float = 10.0  # learning rate of the noise parameters: lr · noise_lr_scale
limit_train: int = 200  # examples of train + validation (0: all)
limit_test: int = 100  # test examples (0: all)
latency_repeats: int = 5  # interleaved timing rounds (batch 1 and 32, one thread)
torch_threads: int = 1  # torch intra-op threads for training (0: torch's default)
device_name: str = "cpu"  # where to train: cpu | cuda | auto (measurements always run on the CPU)
seed: int = 0

# %%
import copy
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from torch import nn

import bmrs
from bmrs.report import plots, tables
from bmrs.run import data
from bmrs.run.train import pick_device
from bmrs.util.batches import iterate_batches

t_start = time.perf_counter()
if torch_threads:
    torch.set_num_threads(torch_threads)
bundle = data.load(dataset, network="lenet5", seed=1000 + seed, limit_train=limit_train or None,
                   limit_test=limit_test or None)
classes = int(bundle.train.y.max()) + 1
example = bundle.train.x[:2]
print(f"profile={profile}  {dataset}: {bundle.sizes}  input {tuple(example.shape[1:])}  network={network}")


# %% [markdown]
# ## The network: nothing BMRS-specific in it
#
# `custom` is written as a user would write it: its own `forward`, functional activations and dropout, a
# residual block, a flattened conv stage read by two Linear branches (ReLU and tanh) that are concatenated, and a
# head.

# %%
class UserNet(nn.Module):
    def __init__(self, width: int, classes: int) -> None:
        super().__init__()
        w = width
        self.stem = nn.Conv2d(1, w, 5, padding=2)
        self.conv1, self.bn1 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w)
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.left = nn.Linear(2 * w * 4 * 4, 4 * w)
        self.right = nn.Linear(2 * w * 4 * 4, 2 * w)
        self.head = nn.Linear(6 * w, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem(x)), 2)  # 32x32 -> 16x16
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        x = F.max_pool2d(F.relu(x + y), 2)  # the residual addition; 8x8
        x = F.max_pool2d(F.relu(self.conv3(x)), 2).flatten(1)  # 4x4, flattened
        x = torch.cat([F.relu(self.left(x)), torch.tanh(self.right(x))], dim=1)  # two branches side by side
        return self.head(F.dropout(x, 0.1, self.training))


def make_network() -> nn.Module:
    import torchvision  # only for the torchvision choices

    if network == "custom":
        return UserNet(width, classes)
    if network == "mobilenet_v2":
        net = torchvision.models.mobilenet_v2(weights=None, num_classes=classes, width_mult=width / 32)
        first = net.features[0][0]
        net.features[0][0] = nn.Conv2d(1, first.out_channels, 3, 2, 1, bias=False)  # one input channel
        return net
    if network == "resnet18":
        net = torchvision.models.resnet18(weights=None, num_classes=classes)
        net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        return net
    raise ValueError(f"network must be custom, mobilenet_v2 or resnet18; got {network!r}")


torch.manual_seed(seed)
init = make_network()  # one initialisation for every variant below
attached = bmrs.attach_noise(init, example, placement=placement)
print(attached.noise_report)

# %% [markdown]
# ## Training: your loop, three calls of the Pruner
#
# The same loop trains the dense reference (no noise, cross-entropy only) and each criterion's network; only
# the model and the three `pruner` calls differ.

# %%
device = pick_device(device_name)


def train(model: nn.Module, pruner: "bmrs.Pruner | None") -> dict:
    model.to(device)
    opt = pruner.optimizer(lr=lr) if pruner else torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for epoch in range(epochs + finetune_epochs):
        if pruner and epoch == epochs:
            pruner.finetune()  # final pruning; the masks stay as they are from here on
        model.train()
        for x, y in iterate_batches(bundle.train, batch_size, shuffle=True, generator=gen):
            x, y = x.to(device), y.to(device)
            ce = F.cross_entropy(model(x), y)
            loss = pruner.loss(ce) if pruner else ce
            opt.zero_grad()
            loss.backward()
            opt.step()
        if pruner:
            rec = pruner.step()
            print(f"  epoch {epoch + 1}: {rec.kept}/{rec.total} units kept")
    if pruner and not finetune_epochs:
        pruner.finetune()
    model.cpu()
    return {"train_s": time.perf_counter() - t0}


runs = {}
dense = copy.deepcopy(init)
runs["dense"] = {"model": dense, **train(dense, None)}
print("dense reference trained")
for name in criteria:
    torch.manual_seed(seed)
    model = copy.deepcopy(attached)
    pruner = bmrs.Pruner(model, name, noise_lr_scale=noise_lr_scale)
    print(f"{name}:")
    info = train(model, pruner)
    print("  ", pruner.readiness())
    small = bmrs.shrink(model, example)
    runs[name] = {"model": small, "masked": model, "pruner": pruner, **info}

# %% [markdown]
# ## Before and after
#
# Accuracy on the test split; parameters (`bmrs.count_parameters`) and multiply-accumulates of one image
# (`bmrs.count_macs`, FlopCounterMode / 2); CPU latency of one eval-mode forward at batch 1 and 32, one thread,
# all networks timed side by side in interleaved rounds (`bmrs.compare_latency`). "max |Δ|" is the largest
# difference between the shrunk network's and the masked network's outputs on the test images: shrinking
# changes no prediction.

# %%
one = bundle.test.x[:1]
rows = []
lat1 = bmrs.compare_latency({k: r["model"] for k, r in runs.items()}, one, threads=1, repeats=latency_repeats)
lat32 = bmrs.compare_latency({k: r["model"] for k, r in runs.items()}, bundle.test.x[:32], threads=1,
                             repeats=latency_repeats)
for key, r in runs.items():
    m = r["model"]
    row = {"network": "dense (no noise)" if key == "dense" else f"{key}, shrunk",
           "test_acc": bmrs.evaluate(m, bundle.test, device=torch.device("cpu"))["acc"],
           "params": bmrs.count_parameters(m), "macs": bmrs.count_macs(m, one),
           "latency_b1_ms": 1e3 * lat1[key]["median_s"], "latency_b32_ms": 1e3 * lat32[key]["median_s"],
           "train_s": r["train_s"]}
    if key != "dense":
        masked = r["masked"].eval()
        with torch.no_grad():
            row["max_abs_diff"] = float((masked(bundle.test.x) - m(bundle.test.x)).abs().max())
        last = r["pruner"].history[-1]
        row["units_kept"] = f"{last.kept}/{last.total}"
    rows.append(row)
summary = pd.DataFrame(rows)
base = summary.iloc[0]
for col in ("params", "macs", "latency_b1_ms", "latency_b32_ms"):
    summary[f"{col}_vs_dense"] = summary[col] / base[col]
summary.attrs["epochs"] = f"{epochs} + {finetune_epochs}"
display(summary.round(4))
view = summary[["network", "test_acc", "units_kept", "params", "params_vs_dense", "macs", "macs_vs_dense",
                "latency_b1_ms", "latency_b32_ms", "max_abs_diff"]].copy()
for col in ("test_acc", "params_vs_dense", "macs_vs_dense", "latency_b1_ms", "latency_b32_ms"):
    view[col] = view[col].map(lambda v: f"{v:.3g}")
view["max_abs_diff"] = view["max_abs_diff"].map(lambda v: "" if pd.isna(v) else f"{v:.1e}")
view["units_kept"] = view["units_kept"].fillna("all")
display(Markdown(tables.to_markdown(view)))
print("saved", *tables.write_table(view, "your_own_network", profile=profile, directory=tables_dir,
                                   epochs=f"{epochs} + {finetune_epochs}", seeds=[seed],
                                   title=f"{network} on {dataset}: dense vs pruned and shrunk"))
worst = max(r for r in summary.get("max_abs_diff", pd.Series([0.0])).fillna(0.0))
print(f"largest |shrunk - masked| over the test set: {worst:.2e}")
assert worst < 1e-3, "the shrunk network must compute what the masked one does"

# %% [markdown]
# ## Where the units went
#
# Left: the share of each noise layer's units that each criterion kept, in the order the layers appear in the
# forward (members of one residual group are marked with the same letter). Right: the shrunk networks against
# the dense one — parameters, MACs and latency as fractions, with the test accuracy above each group.

# %%
names = [a.name for a in attached.noise_report.added]
letters = {g["group"]: chr(ord("A") + i) for i, g in enumerate(g for g in attached.noise_report.groups if g["residual"])}
labels = [f"{a.producer}" + (f" ({letters[a.group]})" if a.group in letters else "") for a in attached.noise_report.added]
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
for name in criteria:
    layers = dict(bmrs.noise_layers(runs[name]["masked"]))
    ax1.plot(range(len(names)), [layers[n].kept / layers[n].num_units for n in names], marker="o", label=name)
ax1.set_xticks(range(len(names)), labels, rotation=60, ha="right", fontsize=7)
ax1.set_ylabel("units kept (fraction)")
ax1.set_ylim(-0.03, 1.03)
ax1.legend()
ax1.set_title(f"{network} on {dataset}: units kept per layer")
metrics = ["params_vs_dense", "macs_vs_dense", "latency_b1_ms_vs_dense", "latency_b32_ms_vs_dense"]
xs = np.arange(len(metrics))
shrunk_rows = summary.iloc[1:]
for i, (_, row) in enumerate(shrunk_rows.iterrows()):
    ax2.bar(xs + (i - (len(shrunk_rows) - 1) / 2) * 0.35, [row[m] for m in metrics], width=0.35,
            label=f"{row['network']} (acc {row['test_acc']:.1f}%)")
ax2.axhline(1.0, color="k", lw=0.8, ls="--")
ax2.set_xticks(xs, ["params", "MACs", "latency b1", "latency b32"])
ax2.set_ylabel("shrunk / dense")
ax2.set_title(f"dense: acc {base['test_acc']:.1f}%, {int(base['params']):,} parameters")
ax2.set_ylim(0, 1.3)
ax2.legend(fontsize=8, loc="upper center")
fig.tight_layout()
print("saved", *plots.save_figure(fig, "your_own_network", profile=profile, directory=figures_dir))
plt.show()

# %% [markdown]
# ## Reading the result
#
# * A pruned unit is gone from the shrunk network: its producer's row or filter, its BatchNorm entry and its
#   columns in every consumer. Latency falls less than MACs at batch 1 (fixed per-call costs dominate small
#   networks on a CPU), closer to them at batch 32.
# * If a criterion pruned nothing, the Pruner's readiness line above says why: no unit near the boundary means
#   the posteriors have not separated within the budget — train longer or raise `noise_lr_scale` (README,
#   "Pruning your own network"). The smoke profile trains for seconds and is not expected to prune much.
# * BMRS$_U$-4 prunes a posterior as soon as its mass below 2⁻⁴ is large enough (paper Eq. 11-15); BMRS$_N$ (the
#   code's ΔF$_N$) is the tables' rule. Both stop by themselves: no pruning level is chosen (Algorithm 1).

# %%
print(f"done in {time.perf_counter() - t_start:.1f} s (profile {profile})")
