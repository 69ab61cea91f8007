"""Table 2's setup against the authors' code: which pretrained weights are loaded and how the inputs are
normalised for them. Nothing is downloaded: the tests inspect the torchvision weight enums and the
transform objects, and replace the torchvision builders by ones that record the weights they are given."""

from __future__ import annotations

import functools

import pytest
import torch
from torchvision import models as tvm
from torchvision.transforms import v2

from bmrs.nn import models
from bmrs.run import data


def test_resnet_weights_are_the_torch_hub_v0_10_pretrained_checkpoint() -> None:
    # torch.hub.load('pytorch/vision:v0.10.0', 'resnet50', pretrained=True) downloads resnet50-0676ba61.pth
    # (resnet18-f37072fd.pth); torchvision's DEFAULT for ResNet-50 is IMAGENET1K_V2, another checkpoint.
    w50 = models.pretrained_weights("resnet50")
    assert w50 is tvm.ResNet50_Weights.IMAGENET1K_V1
    assert w50.url.endswith("/resnet50-0676ba61.pth")
    assert w50 is not tvm.ResNet50_Weights.IMAGENET1K_V2
    w18 = models.pretrained_weights("resnet18")
    assert w18 is tvm.ResNet18_Weights.IMAGENET1K_V1 and w18.url.endswith("/resnet18-f37072fd.pth")


def test_vit_weights_are_torchvision_imagenet1k_v1_at_224px() -> None:
    w = models.pretrained_weights("vit_b_16")
    assert w is tvm.ViT_B_16_Weights.IMAGENET1K_V1
    assert list(w.transforms().crop_size) == [224]


def test_unknown_architecture_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet18, resnet50, vit_b_16"):
        models.pretrained_weights("resnet101")


def _recording(monkeypatch: pytest.MonkeyPatch, name: str) -> list:
    """Replace torchvision.models.<name> by a builder that records its `weights` and builds untrained."""
    original = getattr(tvm, name)
    seen: list = []

    @functools.wraps(original)
    def builder(*, weights=None, **kwargs):
        seen.append(weights)
        return original(weights=None, **kwargs)

    monkeypatch.setattr(tvm, name, builder)
    return seen


@pytest.mark.parametrize("depth, name", [(18, "resnet18"), (50, "resnet50")])
def test_resnet_pretrained_asks_torchvision_for_v1(monkeypatch: pytest.MonkeyPatch, depth: int, name: str) -> None:
    seen = _recording(monkeypatch, name)
    models.resnet(depth, pretrained=True, noise=False)
    models.resnet(depth, pretrained=False, noise=False)
    assert seen == [models.pretrained_weights(name), None]


def test_vit_pretrained_asks_torchvision_for_v1(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _recording(monkeypatch, "vit_b_16")
    net = models.vit(pretrained=True, noise=False)
    assert seen == [tvm.ViT_B_16_Weights.IMAGENET1K_V1]
    assert net.net.heads.head.out_features == 10


def _normalize_step(network: str, train: bool) -> v2.Normalize:
    steps = [t for t in data.image_transform(network, train=train).transforms if isinstance(t, v2.Normalize)]
    assert len(steps) == 1
    return steps[0]


@pytest.mark.parametrize("network", ["resnet", "vit", "mlp", "lenet5"])
@pytest.mark.parametrize("train", [True, False])
def test_each_family_is_normalised_with_its_constants(network: str, train: bool) -> None:
    step = _normalize_step(network, train)
    mean, std = data.NORMALIZATION[network]
    assert tuple(step.mean) == mean and tuple(step.std) == std
    expected = (data.HALF_MEAN, data.HALF_STD) if network in ("mlp", "lenet5") else (data.IMAGENET_MEAN,
                                                                                      data.IMAGENET_STD)
    assert (mean, std) == expected


@pytest.mark.parametrize("network, arch", [("resnet", "resnet50"), ("resnet", "resnet18"), ("vit", "vit_b_16")])
@pytest.mark.parametrize("train", [True, False])
def test_normalisation_is_the_one_the_weights_expect(network: str, arch: str, train: bool) -> None:
    expected = models.pretrained_weights(arch).transforms()  # the weights' own preprocessing (no download)
    step = _normalize_step(network, train)
    assert list(step.mean) == pytest.approx(list(expected.mean))
    assert list(step.std) == pytest.approx(list(expected.std))


def test_vit_is_no_longer_fed_the_hugging_face_half_normalisation() -> None:
    # A mid-grey pixel (uint8 128) must map to ImageNet's standardised value, not to ~0 as under 0.5/0.5.
    x = torch.full((3, 224, 224), 128, dtype=torch.uint8)
    out = data.image_transform("vit", train=False)(x)
    want = (128 / 255 - torch.tensor(data.IMAGENET_MEAN)) / torch.tensor(data.IMAGENET_STD)
    assert torch.allclose(out[:, 0, 0], want, atol=1e-5)
    assert data.VIT_MEAN == data.IMAGENET_MEAN and data.VIT_STD == data.IMAGENET_STD
