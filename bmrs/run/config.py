"""Run settings as data: the networks, methods and the paper's hyperparameter presets, and ``RunConfig``.

A :class:`RunConfig` is one (dataset, network, method, seed) run with every setting that changes its
numbers; its ``run_id`` (a hash of the settings that differ from their defaults) names the run directory.
The CLI's ``train`` flags are generated from its fields (:func:`bmrs.run.cli`), so every setting a run can
have is a flag, with the help text in each field's metadata.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from bmrs.nn import models
from bmrs.prune import registry
from bmrs.prune.criteria import Criterion
from bmrs.run import data
from bmrs.run.train import TrainConfig

#: input resolution of ResNet/ViT when image_size is unset
DEFAULT_IMAGE_SIZE = 224
NETWORKS = ("mlp", "lenet5", "resnet18", "resnet50", "vit_b16", "vit_tiny")
#: the networks whose torchvision ImageNet weights ``pretrained`` loads (bmrs.nn.models.PRETRAINED_WEIGHTS)
PRETRAINED_NETWORKS = ("resnet18", "resnet50", "vit_b16")
METHODS = ("none", "l2", "etheta", "snr", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4")


def dataset_names() -> tuple[str, ...]:
    return tuple(data.DATASETS)


def family(network: str) -> str:
    """The architecture family of a network key: mlp, lenet5, resnet or vit."""
    return {"mlp": "mlp", "lenet5": "lenet5", "resnet18": "resnet", "resnet50": "resnet",
            "vit_b16": "vit", "vit_tiny": "vit"}[network]


# The paper's hyperparameters (Appendix C). Datasets the paper did not use take the preset of the paper dataset
# they stand in for (bmrs.run.data.data.PAPER_DATASET; the README's deviations).
PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    ("mlp", "mnist"): dict(lr=8.5e-4, batch_size=128, hidden=100, n_layers=7),
    ("mlp", "fashion_mnist"): dict(lr=1.5e-3, batch_size=128, hidden=150, n_layers=1),
    ("mlp", "cifar10"): dict(lr=6.8e-4, batch_size=32, hidden=150, n_layers=5),
    ("lenet5", "mnist"): dict(lr=1.4e-3, batch_size=128),
    ("lenet5", "fashion_mnist"): dict(lr=1.4e-3, batch_size=32),
    ("lenet5", "cifar10"): dict(lr=0.001026894323862342, batch_size=64),
}
_LARGE = {"resnet": dict(lr=6.8e-4, batch_size=32, epochs=100, optimizer="adam"),
          "vit": dict(lr=6.8e-4, batch_size=32, epochs=100, optimizer="adamw", warmup_steps=200)}


def preset(network: str, dataset: str) -> dict[str, Any]:
    """The paper's hyperparameters for (network, dataset) (paper Appendix C): optimiser, lr, batch, epochs,
    and the MLP's width/depth."""
    fam = family(network)
    base: dict[str, Any] = dict(epochs=50, finetune_epochs=10, optimizer="adam")
    if fam in _LARGE:
        base.update(_LARGE[fam])
    else:
        key = (network, data.PAPER_DATASET.get(dataset, "mnist"))
        base.update(PRESETS.get(key, PRESETS[(network, "mnist")]))
    return base


def _opt(default: Any, help: str, **meta: Any) -> Any:
    """A RunConfig field with the help text of its ``python -m bmrs train`` flag."""
    return field(default=default, metadata={"help": help, **meta})


#: p2 of BMRS_U: the reduced prior's support is [2^-p2, 2^-p1], 23 = float32's mantissa bits (paper Eq. 13).
BMRS_U_P2 = 23
_BMRS_U = re.compile(r"bmrs_u(.*)")
# p1 as written after "bmrs_u": a decimal number (sign and exponent allowed, so that "-3" or "1e3" are refused
# for their value, not their spelling), or nan/inf. Python's float() also accepts "8_0" (= 80) and spaces.
_P1 = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|[-+]?(nan|inf|infinity)")
MAX_SEED = 2**63 - 1


def _p1_text(p1: float) -> str:
    """p1 written once: an integer without decimals (8.0 -> "8"), otherwise the shortest exact repr (8.25)."""
    return str(int(p1)) if p1.is_integer() else repr(p1)


def canonical_method(method: str) -> str:
    """One name per method: lower case; ``bmrs_u<p1>`` with p1 written once (bmrs_u8.0 -> bmrs_u8, bmrs_u08 ->
    bmrs_u8; a non-integer p1 keeps every digit: bmrs_u8.25).

    Raises ValueError for an unknown name, and for a BMRS_U precision outside (0, p2 = 23) (paper Eq. 13)."""
    if not isinstance(method, str):
        raise ValueError(f"method must be a string such as 'bmrs_n_code'; got {method!r}")
    key = method.strip().lower()
    if key in valid_methods():
        return key
    m = _BMRS_U.fullmatch(key)
    if m:
        if not _P1.fullmatch(m.group(1)):
            raise ValueError(f"unknown method {method!r}: BMRS_U's precision p1 must be a number, as in bmrs_u6")
        p1 = float(m.group(1))
        if not (math.isfinite(p1) and 0 < p1 < BMRS_U_P2):
            raise ValueError(f"method {method!r}: BMRS_U's precision p1 must lie in (0, p2 = {BMRS_U_P2}); got {p1:g}")
        return f"bmrs_u{_p1_text(p1)}"
    raise ValueError(f"unknown method {method!r}; valid: {', '.join(valid_methods())} (or bmrs_u<p1>, e.g. bmrs_u6)")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def limit_split_sizes(limit_train: int, val_fraction: float) -> tuple[int, int]:
    """(training, validation) examples that ``limit_train`` keeps, by the rule of :func:`bmrs.run.data.load`
    (validation = round(limit_train · val_fraction), half up; training = the rest)."""
    n_val = math.floor(limit_train * val_fraction + 0.5)
    return limit_train - n_val, n_val


def _smallest_limit_train(val_fraction: float) -> int:
    """The smallest limit_train whose training and validation splits both hold an example."""
    n = max(2, math.ceil(0.5 / val_fraction) - 1)
    while min(limit_split_sizes(n, val_fraction)) < 1:
        n += 1
    return n


@dataclass(frozen=True)
class RunConfig:
    """One run. Fields after `seed` override the preset; None keeps the preset's value.

    `device` does not enter the hash (it does not change what is computed, up to floating-point differences
    between devices). Every field is a flag of ``python -m bmrs train`` with the help text given here.
    Construction puts the method into its one canonical form (:func:`canonical_method`), an ``image_size``
    equal to the network's default into None, and a ``limit_train``/``limit_test`` at or above the data's size
    (:data:`bmrs.run.data.SIZES`) into None; the hash writes an integral float as an integer (10.0 as 10). So one
    computation has one run id. :meth:`validate` refuses what no run can have.
    """

    dataset: str = field(metadata={"help": "dataset (python -m bmrs download NAME fetches one that needs a network)"})
    network: str = field(metadata={"help": "network"})
    method: str = field(metadata={"help": "pruning method: none, l2, etheta, snr, bmrs_n, bmrs_n_code, bmrs_u8, "
                                          "bmrs_u4, bmrs_u<p1>, c_obd, dirichlet, eigendamage, base"})
    seed: int = _opt(1000, "training seed (0 <= seed < 2^63)")
    profile: str = _opt("paper", "profile label recorded with the run (smoke, quick, fmnist, paper)")
    epochs: int | None = _opt(None, "training epochs (default: the paper's preset, 50; 100 for ResNet/ViT)")
    finetune_epochs: int | None = _opt(None, "fine-tuning epochs after the final pruning (default: 10)")
    lr: float | None = _opt(None, "learning rate (default: the paper's preset)")
    batch_size: int | None = _opt(None, "batch size (default: the paper's preset)")
    prune_every: int = _opt(1, "pruning period P in epochs (0: never during training)")
    kl_reduction: str = _opt("mean", "how the KL term enters the loss", choices=("mean", "sum"))
    kl_weight: float = _opt(1.0, "weight of the KL term (1: the paper)")
    noise_lr_scale: float = _opt(1.0, "learning-rate multiplier for the noise parameters (1: the paper; not neutral)")
    limit_train: int | None = _opt(None, "use only this many training(+validation) examples")
    limit_test: int | None = _opt(None, "use only this many test examples")
    pretrained: bool = _opt(False, "start from torchvision's ImageNet weights (ResNet/ViT)")
    keep_imagenet_head: bool = _opt(False, "keep the 1000-way ImageNet head (the authors' choice)")
    image_size: int | None = _opt(None, "input resolution for ResNet/ViT (default 224)")
    val_fraction: float = _opt(0.2, "fraction of the training data held out for validation")
    val_split: str = _opt("default_rng", "how the train/validation permutation is drawn: default_rng (ours) or "
                                         "randomstate (the released code's sklearn split after np.random.seed)",
                          choices=data.VAL_SPLITS)
    selection: str = _opt("best_val", "which weights a run keeps: the best validation epoch of fine-tuning, or the "
                                      "last epoch (the post-training base networks)", choices=("best_val", "last"))
    device: str = field(default="auto", compare=False,
                        metadata={"help": "auto (cuda if available), cpu or cuda; not part of the run id"})

    def __post_init__(self) -> None:
        if isinstance(self.method, str):
            try:
                object.__setattr__(self, "method", canonical_method(self.method))
            except ValueError:
                pass  # validate() reports it
        if (self.image_size is not None and self.network in NETWORKS and family(self.network) in ("resnet", "vit")
                and _is_int(self.image_size) and self.image_size == DEFAULT_IMAGE_SIZE):
            object.__setattr__(self, "image_size", None)
        # A limit at or above the data's size keeps all of it (bmrs.run.data.load): the same run as no limit.
        sizes = data.SIZES.get(self.dataset) if isinstance(self.dataset, str) else None
        if sizes is not None:
            for name, size in zip(("limit_train", "limit_test"), sizes):
                value = getattr(self, name)
                if _is_int(value) and value >= size:
                    object.__setattr__(self, name, None)

    def validate(self) -> None:
        """Raise ValueError (one line naming the fix) for settings no run can have; nothing has been written."""
        ds = dataset_names()
        if self.dataset not in ds:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {', '.join(ds)}")
        if self.network not in NETWORKS:
            raise ValueError(f"unknown network {self.network!r}; valid: {', '.join(NETWORKS)}")
        canonical_method(self.method)

        def integer(name: str, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
                bound = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise ValueError(f"{name} must be an integer {bound}; got {v!r} (--{name.replace('_', '-')})")

        def positive(name: str, *, optional: bool = False, zero: bool = False) -> None:
            v = getattr(self, name)
            if v is None and optional:
                return
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                  and (v >= 0 if zero else v > 0))
            if not ok:
                what = "a finite number >= 0" if zero else "a finite number > 0"
                raise ValueError(f"{name} must be {what}; got {v!r} (--{name.replace('_', '-')})")

        integer("seed", 0, MAX_SEED)
        integer("epochs", 0, optional=True)
        integer("finetune_epochs", 0, optional=True)
        positive("lr", optional=True)
        integer("batch_size", 1, optional=True)
        integer("prune_every", 0)
        positive("kl_weight", zero=True)
        positive("noise_lr_scale")
        integer("limit_test", 1, optional=True)
        integer("image_size", 1, optional=True)
        if not (isinstance(self.val_fraction, float | int) and not isinstance(self.val_fraction, bool)
                and 0 < self.val_fraction < 1):
            raise ValueError(f"val_fraction must lie in (0, 1); got {self.val_fraction!r} (--val-fraction)")
        integer("limit_train", 2, optional=True)
        if self.limit_train is not None and min(limit_split_sizes(self.limit_train, self.val_fraction)) < 1:
            raise ValueError(f"limit_train = {self.limit_train} leaves an empty training or validation split at "
                             f"val_fraction {self.val_fraction}; use --limit-train "
                             f"{_smallest_limit_train(self.val_fraction)} or more")
        if self.val_split == "randomstate" and not 0 <= self.seed < 2**32:
            raise ValueError(f"--val-split randomstate needs a seed in [0, 2^32) (NumPy's RandomState); got {self.seed}")
        if self.val_split == "randomstate" and self.dataset == "tiny_imagenet":
            raise ValueError("--val-split randomstate: TinyImageNet's split is stratified (default_rng); drop it")
        for name in ("kl_reduction", "selection", "val_split"):
            choices = RunConfig.__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        for name in ("pretrained", "keep_imagenet_head"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false; got {getattr(self, name)!r}")
        large = family(self.network) in ("resnet", "vit")
        if self.image_size is not None and not large:
            raise ValueError(f"--image-size applies to the resnet and vit networks only; {self.network} takes the "
                             "dataset's 32-pixel inputs (drop --image-size)")
        if self.keep_imagenet_head and not large:
            raise ValueError(f"--keep-imagenet-head applies to the resnet and vit networks only; drop it for {self.network}")
        if self.pretrained and self.network not in PRETRAINED_NETWORKS:
            raise ValueError(f"--pretrained: ImageNet weights exist for {', '.join(PRETRAINED_NETWORKS)} only; drop it "
                             f"for {self.network}")
        if self.network in ("vit_b16", "vit_tiny"):
            size = self.image_size or DEFAULT_IMAGE_SIZE
            patch = 16 if self.network == "vit_b16" else max(4, size // 8)
            if size % patch:
                raise ValueError(f"{self.network} needs an image size divisible by its patch size {patch}; got "
                                 f"--image-size {size} (for example {max(patch, size - size % patch)})")

    def hashed_fields(self) -> dict[str, Any]:
        """The fields that define the run. Fields at their default value are left out, so adding a new
        option with a default keeps the identity of every existing run."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        p = preset(self.network, self.dataset) if self.network in NETWORKS else {}

        def redundant(k: str, v: Any) -> bool:  # a default, or an override equal to the preset's value
            return v == defaults[k] or (k in ("epochs", "finetune_epochs", "lr", "batch_size") and p.get(k) == v)

        # A number is hashed in one form: 10.0 (a float flag of the CLI) as 10 (a profile's YAML), as the runs of
        # the profiles were stored.
        fields = {k: (int(v) if isinstance(v, float) and v.is_integer() else v)
                  for k, v in dataclasses.asdict(self).items()
                  if k != "device" and (k in ("dataset", "network", "method", "seed") or not redundant(k, v))}
        if self.method in registry.POST_HOC:  # a post-hoc run is defined by the base network it prunes
            fields["base"] = base_config(self).run_id
        fields.update(self.input_identity())
        return fields

    def input_identity(self) -> dict[str, str]:
        """What a run starts from that is not a flag, named where it once differed: the pretrained weights
        (``"weights"``: torchvision's enum member, e.g. ``ResNet50_Weights.IMAGENET1K_V1``; before it was
        named, ResNet-50 loaded ``DEFAULT``, IMAGENET1K_V2) and the ViT's input normalisation
        (``"normalization"``; it was Hugging Face's 0.5/0.5 before the ViT was fed its weights' ImageNet
        statistics). Runs from before either change therefore have another id and are not reused. Networks
        whose inputs never changed (the MLP, LeNet5, ResNets from scratch) get no such field, so their ids
        stay."""
        out: dict[str, str] = {}
        if self.pretrained:
            weights = models.pretrained_weights(models.TORCHVISION_ARCH[self.network])
            out["weights"] = f"{type(weights).__name__}.{weights.name}"
        if self.network.startswith("vit"):
            mean, std = data.NORMALIZATION["vit"]
            out["normalization"] = "imagenet" if (mean, std) == (data.IMAGENET_MEAN, data.IMAGENET_STD) \
                else f"mean={list(mean)},std={list(std)}"
        return out

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.hashed_fields(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def train_config(self) -> TrainConfig:
        p = preset(self.network, self.dataset)
        return TrainConfig(
            epochs=self.epochs if self.epochs is not None else p["epochs"],
            finetune_epochs=self.finetune_epochs if self.finetune_epochs is not None else p["finetune_epochs"],
            lr=self.lr if self.lr is not None else p["lr"],
            batch_size=self.batch_size if self.batch_size is not None else p["batch_size"],
            optimizer=p.get("optimizer", "adam"),
            warmup_steps=p.get("warmup_steps", 0),
            kl_reduction=self.kl_reduction,
            kl_weight=self.kl_weight,
            prune_every=self.prune_every,
            noise_lr_scale=self.noise_lr_scale,
            selection=self.selection,
        )

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


def valid_methods() -> tuple[str, ...]:
    """Every method name a run accepts: the paper's seven (plus the released code's BMRS_N), the
    baselines, and "base" (noise layers, no pruning: the network post-hoc methods start from)."""
    return METHODS + tuple(registry.BASELINES) + ("base",)


def base_config(cfg: "RunConfig") -> "RunConfig":
    """The base run of cfg's setting and seed: trained with noise layers and no masking for the full
    schedule (the post-training protocol of Figure 2), keeping the last epoch's weights (no best-validation selection: with the KL term
    the best validation epoch is an early one, whose posteriors have not yet separated used from unused
    units). Post-hoc methods and post-training studies start from these weights."""
    return cfg.replace(method="base", finetune_epochs=0, prune_every=0, selection="last")


def build_model(cfg: RunConfig, input_spec: models.InputSpec, num_classes: int) -> nn.Module:
    """The network of cfg with noise layers (none for method 'none')."""
    noise = cfg.method != "none"
    p = preset(cfg.network, cfg.dataset)
    if cfg.network == "mlp":
        return models.mlp(input_spec.shape, num_classes, hidden=p["hidden"], n_layers=p["n_layers"], noise=noise)
    if cfg.network == "lenet5":
        return models.lenet5(input_spec.channels, num_classes, noise=noise)
    size = cfg.image_size or input_spec.height
    if cfg.network in ("resnet18", "resnet50"):
        return models.resnet(int(cfg.network[6:]), num_classes, noise=noise, pretrained=cfg.pretrained,
                             keep_imagenet_head=cfg.keep_imagenet_head, image_size=size)
    if cfg.network == "vit_b16":
        return models.vit(num_classes, noise=noise, pretrained=cfg.pretrained,
                          keep_imagenet_head=cfg.keep_imagenet_head, image_size=size)
    return models.vit(num_classes, noise=noise, keep_imagenet_head=cfg.keep_imagenet_head, image_size=size,
                      patch_size=max(4, size // 8), num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


def criterion_for(method: str) -> Criterion | None:
    """The criterion a method prunes with (None for 'none' and 'base', which never prune)."""
    if method in ("none", "base", "eigendamage"):
        return None
    return registry.make_criterion(method)


