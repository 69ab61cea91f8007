"""bmrs.nn.shrink on networks the library has never seen: shrunk == masked, units removed as documented."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmrs.nn.attach import attach_noise
from bmrs.nn.measure import count_macs, count_parameters
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.nn.shrink import fold_noise, save_compact, shrink

torchvision = pytest.importorskip("torchvision")


def _randomise(model: nn.Module, seed: int, keep: float = 0.7) -> None:
    """Non-trivial BatchNorm statistics, posteriors spread over E[θ] in (0, 1), random masks."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
        for _, layer in noise_layers(model):
            n = layer.num_units
            layer.mu.copy_(torch.rand(n, generator=g) * 3 - 2.5)
            layer.log_sigma.copy_(torch.rand(n, generator=g) * 4 - 3)
            layer.mask.copy_((torch.rand(n, generator=g) < keep).float())


def _assert_same(masked: nn.Module, small: nn.Module, x: torch.Tensor) -> None:
    masked.eval()
    with torch.no_grad():
        want, got = masked(x), small(x)
    assert got.shape == want.shape
    assert want.abs().max() > 1e-4, "degenerate test: the masked output is ~0"
    assert (want - got).abs().max() <= 1e-5 * max(1.0, float(want.abs().max()))
    assert not any(isinstance(m, MultiplicativeNoise) for m in small.modules())


def _x(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _attached(name: str, placement: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "vgg11_bn":  # the real VGG-11-BN features; a narrow classifier keeps the test fast
        net = torchvision.models.vgg11_bn(weights=None, num_classes=10)
        net.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 32),
                                       nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))
    else:
        net = getattr(torchvision.models, name)(weights=None, num_classes=10)
    return attach_noise(net, _x(2, 3, 32, 32), placement=placement)


@pytest.mark.parametrize("name,placement", [("resnet18", "batchnorm"), ("vgg11_bn", "activation"),
                                            ("mobilenet_v2", "activation")])
def test_torchvision_networks_shrink_to_the_masked_outputs(name, placement):
    model = copy.deepcopy(_attached(name, placement))
    _randomise(model, seed=3)
    layers = dict(noise_layers(model))
    whole = list(layers)[2]
    layers[whole].mask.zero_()  # one whole layer pruned
    small = shrink(model)
    _assert_same(model, small, _x(3, 3, 32, 32))
    assert count_parameters(small) < count_parameters(model) - 2 * sum(l.num_units for l in layers.values())
    x1 = _x(1, 3, 32, 32)
    assert count_macs(small, x1) < count_macs(model, x1)
    assert type(small).__name__ == type(model).__name__ and small.training is False


def test_resnet_residual_channel_goes_only_when_every_member_prunes_it():
    model = copy.deepcopy(_attached("resnet18", "batchnorm"))
    _randomise(model, seed=5, keep=1.0)
    stream = next(g for g in model.noise_report.groups if g["residual"])  # layer1's stream: stem + two bn2
    members = [dict(noise_layers(model))[n] for n in stream["noise"]]
    assert len(members) == 3
    for layer in members:
        layer.mask[:10] = 0.0  # channels 0..9: every member prunes them
    members[1].mask[12] = 0.0  # channel 12: one member only
    small = shrink(model)
    _assert_same(model, small, _x(2, 3, 32, 32))
    assert small.conv1.out_channels == 64 - 10 and small.layer1[0].conv2.out_channels == 54
    assert small.layer1[0].conv1.in_channels == 54 and small.layer2[0].downsample[0].in_channels == 54
    assert small.layer1[0].bn2.num_features == 54  # channel 12 stays (zero in that member only)


def test_whole_residual_stream_pruned_keeps_one_zero_channel():
    model = copy.deepcopy(_attached("resnet18", "batchnorm"))
    _randomise(model, seed=6)
    stream = [g for g in model.noise_report.groups if g["residual"]][-1]  # layer4's stream
    for name in stream["noise"]:
        dict(noise_layers(model))[name].mask.zero_()
    small = shrink(model)
    assert small.fc.in_features == 1
    x = _x(2, 3, 32, 32)
    with torch.no_grad():
        out = small(x)
    assert torch.allclose(out, model.eval()(x), atol=1e-6) and torch.allclose(out, small.fc.bias.expand_as(out))


def test_sequential_mlp_with_hand_placed_noise_shrinks_exactly():
    # the first trial network: nn.Sequential with MultiplicativeNoise after the activations
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Tanh(), MultiplicativeNoise(32),
                          nn.Linear(32, 24), nn.ReLU(), MultiplicativeNoise(24), nn.Dropout(0.1), nn.Linear(24, 10))
    _randomise(model, seed=1)
    k1, k2 = (int(l.mask.sum()) for _, l in noise_layers(model))
    small = shrink(model, _x(2, 1, 8, 8))
    _assert_same(model, small, _x(4, 1, 8, 8))
    assert type(small) is nn.Sequential and isinstance(small[3], nn.Identity)
    assert (small[1].out_features, small[4].in_features, small[4].out_features, small[8].in_features) == (k1, k1, k2, k2)
    assert count_parameters(small) == (64 * k1 + k1) + (k1 * k2 + k2) + (k2 * 10 + 10)


def test_sequential_cnn_with_batchnorm_and_a_whole_layer_pruned():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                        nn.Flatten(), nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, 10))
    model = attach_noise(net, _x(2, 1, 16, 16))
    _randomise(model, seed=2)
    first = dict(noise_layers(model))["bmrs_noise.0"]
    first.mask.zero_()
    small = shrink(model)
    _assert_same(model, small, _x(3, 1, 16, 16))
    kept = [int(l.mask.sum()) for _, l in noise_layers(model)]
    assert small.get_submodule("0").out_channels == 1  # a zero placeholder channel: torch needs one
    assert small.get_submodule("4").out_channels == kept[1] and small.get_submodule("9").in_features == 4 * kept[1]


class _SkipCat(nn.Module):
    """A user-style module: stem, a residual block, two branches concatenated, a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 6, 1)
        self.right = nn.Conv2d(8, 5, 3, padding=1)
        self.head = nn.Linear(11, 4)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        x = F.relu(x + y)
        z = torch.cat([F.relu(self.left(x)), torch.tanh(self.right(x))], dim=1)
        return self.head(z.mean((2, 3)))


def test_custom_module_with_skip_and_concatenation():
    torch.manual_seed(0)
    model = attach_noise(_SkipCat(), _x(2, 3, 8, 8))
    _randomise(model, seed=4, keep=0.6)
    small = shrink(model)
    _assert_same(model, small, _x(3, 3, 8, 8))
    layers = dict(noise_layers(model))
    k_left, k_right = int(layers["bmrs_noise.left"].mask.sum()), int(layers["bmrs_noise.right"].mask.sum())
    assert small.head.in_features == k_left + k_right  # the concatenation's two groups, side by side
    assert small.left.out_channels == k_left and small.right.out_channels == k_right


def test_fold_noise_keeps_the_architecture_of_any_traced_network():
    torch.manual_seed(0)
    model = attach_noise(_SkipCat(), _x(2, 3, 8, 8))
    _randomise(model, seed=7)
    folded = fold_noise(model)
    x = _x(3, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded.eval()(x), model.eval()(x), atol=1e-6)
    assert count_parameters(folded) == count_parameters(model) - 2 * sum(l.num_units for _, l in noise_layers(model))


class _Permuted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.noise, self.fc2 = nn.Linear(4, 6), MultiplicativeNoise(6), nn.Linear(2, 2)

    def forward(self, x):
        h = self.noise(torch.relu(self.fc1(x)))
        return self.fc2(h.view(x.shape[0], 2, 3).permute(0, 2, 1)).flatten(1)


class _Gated(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.noise, self.fc2, self.skip = nn.Linear(4, 6), MultiplicativeNoise(6), nn.Linear(6, 2), nn.Linear(4, 6)

    def forward(self, x):
        return self.fc2(self.noise(torch.tanh(self.fc1(x))) + self.skip(x))


def test_operations_shrink_cannot_handle_name_the_module_and_the_op():
    with pytest.raises(ValueError, match=r"noise layer 'noise'.*Tensor\.view\(\)|noise.*permute"):
        shrink(_Permuted(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"'noise' cannot be folded.*add\(\)"):
        shrink(_Gated(), torch.zeros(2, 4))
    shared = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), MultiplicativeNoise(4))
    twice = nn.Sequential(shared, shared, nn.Linear(4, 2))
    with pytest.raises(ValueError, match="noise layer '0.2' is called 2 times"):
        shrink(twice, torch.zeros(2, 4))
    one_noise = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), MultiplicativeNoise(4))
    lin = nn.Linear(4, 4)
    shared_linear = nn.Sequential(lin, one_noise, lin, nn.Linear(4, 2))
    one_noise[2].mask[0] = 0.0
    with pytest.raises(ValueError, match="module '0' is called 2 times"):
        shrink(shared_linear, torch.zeros(2, 4))


def test_generic_shrink_refuses_save_compact_with_the_fix(tmp_path):
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), MultiplicativeNoise(5), nn.Linear(5, 2))
    small = shrink(model, torch.zeros(2, 4))
    with pytest.raises(ValueError, match="torch.save"):
        save_compact(small, tmp_path / "c")
