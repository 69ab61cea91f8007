"""The paper's networks with noise layers where the authors' code puts them (the released code's
modules/classifiers.py: make_mlp, lenet5, insert_pruning_resnet, insert_pruning_vit).

* :func:`mlp` — Flatten, Linear(in, h) → Tanh → noise, then n_layers × [Linear(h, h) → Tanh → noise], then
  Linear(h, classes). "n_layers" counts the hidden blocks after the first, as in the paper's code.
* :func:`lenet5` — widths scaled by the input channels c: Conv(c, 6c, 5) → ReLU → noise → MaxPool2,
  Conv(6c, 16c, 5) → ReLU → noise → MaxPool2, Flatten, Linear(400c, 120c) → ReLU → noise,
  Linear(120c, 84c) → ReLU → noise, Linear(84c, classes). Input 32×32.
* :func:`resnet` — torchvision ResNet-18/50 with a noise layer after every BatchNorm2d (downsample
  branches included), before the ReLU.
* :func:`vit` — torchvision ViT-B/16 (or a smaller configuration) with noise on each encoder block's
  output features: after the self-attention output projection and after the MLP's second linear
  layer, before the residual additions (the HF ViT placement of the released code, insert_pruning_vit).

The noise placement follows the released code, not Eq. 1 of the paper (which multiplies the
pre-activation). With
``noise=False`` the same architecture is built without noise layers (the "None" baseline).
Classifier heads are sized to the dataset's classes by default; ``keep_imagenet_head=True`` keeps the
1000-way head of the pretrained torchvision models as the authors did (insert_pruning_resnet/_vit; a documented
deviation of ours otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bmrs.nn.noise import MultiplicativeNoise


@dataclass(frozen=True)
class InputSpec:
    """The image input a model expects: (channels, height, width)."""

    channels: int
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def example(self, batch: int = 2) -> torch.Tensor:
        return torch.zeros((batch, *self.shape))


def _noise(units: int, enabled: bool, dim: int = 1) -> nn.Module:
    return MultiplicativeNoise(units, dim=dim) if enabled else nn.Identity()


class Classifier(nn.Sequential):
    """nn.Sequential that knows its input (for graph tracing, compaction and benchmarks)."""

    def __init__(self, *layers: nn.Module, input_spec: InputSpec) -> None:
        super().__init__(*layers)
        self.input_spec = input_spec

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return self.input_spec.example(batch)


def mlp(input_shape: tuple[int, int, int] = (1, 32, 32), num_classes: int = 10, *, hidden: int = 100,
        n_layers: int = 1, noise: bool = True) -> Classifier:
    """The paper's MLP (make_mlp of the released code) on images of shape (C, H, W), flattened by its first layer:
    Flatten → n_layers + 1 hidden blocks of `hidden` Tanh units → Linear(hidden, num_classes)."""
    c, h, w = (int(v) for v in input_shape)
    if hidden < 1 or n_layers < 0 or min(c, h, w) < 1 or num_classes < 2:
        raise ValueError(
            f"mlp needs hidden >= 1, n_layers >= 0, a positive input shape and num_classes >= 2; got hidden={hidden}, "
            f"n_layers={n_layers}, input_shape={input_shape}, num_classes={num_classes}"
        )
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(c * h * w, hidden), nn.Tanh(), _noise(hidden, noise)]
    for _ in range(n_layers):
        layers += [nn.Linear(hidden, hidden), nn.Tanh(), _noise(hidden, noise)]
    layers.append(nn.Linear(hidden, num_classes))
    return Classifier(*layers, input_spec=InputSpec(c, h, w))


def lenet5(in_channels: int = 1, num_classes: int = 10, *, noise: bool = True, image_size: int = 32) -> Classifier:
    """The paper's LeNet5 (lenet5 of the released code): every width multiplied by the number of input channels."""
    c = int(in_channels)
    if c < 1 or num_classes < 2:
        raise ValueError(f"lenet5 needs in_channels >= 1 and num_classes >= 2; got {in_channels}, {num_classes}")
    if image_size != 32:
        raise ValueError(f"lenet5 expects 32x32 inputs (the paper resizes MNIST to 32); got image_size={image_size}")
    return Classifier(
        nn.Conv2d(c, 6 * c, 5), nn.ReLU(), _noise(6 * c, noise), nn.MaxPool2d(2),
        nn.Conv2d(6 * c, 16 * c, 5), nn.ReLU(), _noise(16 * c, noise), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400 * c, 120 * c), nn.ReLU(), _noise(120 * c, noise),
        nn.Linear(120 * c, 84 * c), nn.ReLU(), _noise(84 * c, noise),
        nn.Linear(84 * c, num_classes),
        input_spec=InputSpec(c, 32, 32),
    )


# --------------------------------------------------------------------------------------------------
# torchvision networks (insert_pruning_resnet/_vit of the released code): ResNet with noise after every BatchNorm2d, ViT with noise on the
# block outputs. Pretrained weights are loaded only when asked for.
# --------------------------------------------------------------------------------------------------

class NoisyBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d followed by per-channel multiplicative noise (the ResNet placement of the released code).

    Subclassing keeps the batch-norm's state_dict keys, so pretrained weights load unchanged; the noise
    parameters live under `<bn>.noise.*`.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats)
        self.noise = MultiplicativeNoise(num_features, dim=1)

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d) -> "NoisyBatchNorm2d":
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.load_state_dict(bn.state_dict(), strict=False)
        return new.to(bn.weight.device if bn.weight is not None else "cpu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.noise(super().forward(x))


def _replace_batchnorms(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, NoisyBatchNorm2d):
            setattr(module, name, NoisyBatchNorm2d.from_batchnorm(child))
        else:
            _replace_batchnorms(child)


#: The torchvision weights that ``pretrained=True`` loads, per builder. Named explicitly, never "DEFAULT"
#: (which is IMAGENET1K_V2 for ResNet-50 in current torchvision and may move again):
#: * ResNet-18/50: IMAGENET1K_V1, the checkpoint the authors' ``torch.hub.load('pytorch/vision:v0.10.0',
#:   'resnet50', pretrained=True)`` loads (the same file, ``resnet50-0676ba61.pth`` /
#:   ``resnet18-f37072fd.pth``), with ImageNet mean/std normalisation (bmrs.run.data.IMAGENET_MEAN/STD).
#: * ViT-B/16: IMAGENET1K_V1 (ImageNet-1k, 224 px, ImageNet mean/std). The authors used the Hugging Face
#:   checkpoint ``google/vit-base-patch16-224`` (ImageNet-21k pre-training, ImageNet-1k fine-tuning, mean =
#:   std = 0.5); torchvision has no copy of it, so this is a documented deviation (README, "Documented
#:   deviations"), and the data are normalised the way these weights expect.
PRETRAINED_WEIGHTS: dict[str, tuple[str, str]] = {
    "resnet18": ("ResNet18_Weights", "IMAGENET1K_V1"),
    "resnet50": ("ResNet50_Weights", "IMAGENET1K_V1"),
    "vit_b_16": ("ViT_B_16_Weights", "IMAGENET1K_V1"),
}


#: the torchvision builder (a key of PRETRAINED_WEIGHTS) behind each of the library's pretrained network names
TORCHVISION_ARCH = {"resnet18": "resnet18", "resnet50": "resnet50", "vit_b16": "vit_b_16"}


def pretrained_weights(arch: str):
    """The torchvision ``WeightsEnum`` member that ``pretrained=True`` loads for ``arch`` (a key of
    :data:`PRETRAINED_WEIGHTS`). Building the enum member downloads nothing."""
    # deferred on purpose: torchvision is needed for these networks only
    from torchvision import models as tvm

    if arch not in PRETRAINED_WEIGHTS:
        raise ValueError(f"no pretrained weights for {arch!r}; known: {', '.join(PRETRAINED_WEIGHTS)}")
    enum_name, member = PRETRAINED_WEIGHTS[arch]
    return getattr(getattr(tvm, enum_name), member)


def _torchvision_weights(builder, pretrained: bool):
    if not pretrained:
        return None
    return pretrained_weights(builder.__name__)


def _call_torchvision(builder, pretrained: bool, what: str, **kwargs) -> nn.Module:
    try:
        return builder(weights=_torchvision_weights(builder, pretrained), **kwargs)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        if not pretrained:
            raise
        raise RuntimeError(
            f"could not load the pretrained {what} weights through torchvision ({exc}). They are fetched once from "
            "download.pytorch.org into ~/.cache/torch/hub/checkpoints; run with network access once, or copy the "
            "checkpoint file there, or train without --pretrained"
        ) from exc


class TorchvisionClassifier(nn.Module):
    """A torchvision backbone with its input spec (for tracing, compaction and benchmarks)."""

    def __init__(self, net: nn.Module, input_spec: InputSpec, family: str) -> None:
        super().__init__()
        self.net = net
        self.input_spec = input_spec
        self.family = family

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return self.input_spec.example(batch)


def resnet(depth: int = 50, num_classes: int = 10, *, noise: bool = True, pretrained: bool = False,
           keep_imagenet_head: bool = False, image_size: int = 224) -> TorchvisionClassifier:
    """torchvision ResNet-18/50 with a noise layer after every BatchNorm2d, downsample branches included
    (53 noise layers for ResNet-50). The 1000-way head is replaced by a num_classes head unless
    keep_imagenet_head (the authors' choice: train.py of the released code keeps the 1000-way head).
    pretrained=True loads IMAGENET1K_V1 (:data:`PRETRAINED_WEIGHTS`), the weights of the authors'
    ``torch.hub`` v0.10.0 ``pretrained=True``."""
    from torchvision import models as tvm

    builders = {18: tvm.resnet18, 50: tvm.resnet50}
    if depth not in builders:
        raise ValueError(f"resnet depth must be one of {sorted(builders)}; got {depth}")
    net = _call_torchvision(builders[depth], pretrained, f"ResNet-{depth}")
    if not keep_imagenet_head:
        net.fc = nn.Linear(net.fc.in_features, num_classes)
    if noise:
        _replace_batchnorms(net)
    return TorchvisionClassifier(net, InputSpec(3, image_size, image_size), f"resnet{depth}")


class NoisyAttention(nn.Module):
    """nn.MultiheadAttention whose output features get multiplicative noise (before the residual add)."""

    def __init__(self, attention: nn.MultiheadAttention) -> None:
        super().__init__()
        self.attention = attention
        self.noise = MultiplicativeNoise(attention.embed_dim, dim=-1)

    def forward(self, query, key, value, **kwargs):
        out, weights = self.attention(query, key, value, **kwargs)
        return self.noise(out), weights


def vit(num_classes: int = 10, *, noise: bool = True, pretrained: bool = False, keep_imagenet_head: bool = False,
        image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
        hidden_dim: int = 768, mlp_dim: int = 3072) -> TorchvisionClassifier:
    """torchvision ViT (ViT-B/16 by default) with noise on every encoder block's output features: after the
    attention output projection and after the MLP's second linear layer, before the residual additions
    (2 × num_layers noise layers of hidden_dim units; the released code's placement, insert_pruning_vit).

    pretrained=True loads torchvision's ViT-B/16 IMAGENET1K_V1 weights (:data:`PRETRAINED_WEIGHTS`; they
    expect ImageNet mean/std, which bmrs.run.data feeds the ViT) and requires the B/16 configuration. The
    authors used the Hugging Face checkpoint google/vit-base-patch16-224 with its own 0.5/0.5 normalisation
    (train.py of the released code): a documented deviation (README, "Documented deviations").
    """
    from torchvision import models as tvm

    config = dict(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                  hidden_dim=hidden_dim, mlp_dim=mlp_dim)
    b16 = dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)
    if pretrained:
        if config != b16:
            raise ValueError(f"pretrained weights exist only for ViT-B/16 {b16}; got {config}")
        net = _call_torchvision(tvm.vit_b_16, True, "ViT-B/16")
    else:
        net = tvm.VisionTransformer(num_classes=1000 if keep_imagenet_head else num_classes, **config)
    if not keep_imagenet_head and net.heads.head.out_features != num_classes:
        net.heads.head = nn.Linear(net.heads.head.in_features, num_classes)
    if noise:
        for block in net.encoder.layers:
            block.self_attention = NoisyAttention(block.self_attention)
            block.mlp.append(MultiplicativeNoise(hidden_dim, dim=-1))
    return TorchvisionClassifier(net, InputSpec(3, image_size, image_size), "vit")
