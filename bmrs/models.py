"""The paper's networks with noise layers where the authors' code puts them (spec 4.2).

* :func:`mlp` — Flatten, Linear(in, h) → Tanh → noise, then n_layers × [Linear(h, h) → Tanh → noise], then
  Linear(h, classes). "n_layers" counts the hidden blocks after the first, as in the paper's code.
* :func:`lenet5` — widths scaled by the input channels c: Conv(c, 6c, 5) → ReLU → noise → MaxPool2,
  Conv(6c, 16c, 5) → ReLU → noise → MaxPool2, Flatten, Linear(400c, 120c) → ReLU → noise,
  Linear(120c, 84c) → ReLU → noise, Linear(84c, classes). Input 32×32.
* :func:`resnet` — torchvision ResNet-18/50 with a noise layer after every BatchNorm2d (downsample
  branches included), before the ReLU.
* :func:`vit` — torchvision ViT-B/16 (or a smaller configuration) with noise on each encoder block's
  output features: after the self-attention output projection and after the MLP's second linear
  layer, before the residual additions (the HF ViT placement of the released code, spec 2.12.3).

The noise placement follows the released code, not Eq. 1 of the paper (spec 2.12.2). With
``noise=False`` the same architecture is built without noise layers (the "None" baseline).
Classifier heads are sized to the dataset's classes by default; ``keep_imagenet_head=True`` keeps the
1000-way head of the pretrained torchvision models as the authors did (spec 2.12.10; a documented
deviation of ours otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bmrs.noise import MultiplicativeNoise


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
    """The paper's MLP (spec 4.2) on images of shape (C, H, W), flattened by its first layer:
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
    """The paper's LeNet5 (spec 4.2): every width multiplied by the number of input channels."""
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
