"""bmrs.nn.attach.attach_noise: noise where its docstring says, a report of what was left out and why, clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmrs.nn.attach import attach_noise
from bmrs.nn.noise import MultiplicativeNoise, model_kl, noise_layers

torchvision = pytest.importorskip("torchvision")


def _sites(model) -> dict[str, str]:
    """producer -> the call site its noise follows."""
    return {a.producer: a.site for a in model.noise_report.added}


def _skipped(model) -> dict[str, str]:
    return {s.producer: s.reason for s in model.noise_report.skipped}


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Dropout(0.2), nn.Linear(12, 8), nn.Tanh(),
                         nn.Linear(8, 3))


def test_sequential_mlp_gets_noise_after_each_activation_but_not_on_the_head():
    net = _mlp()
    model = attach_noise(net, torch.zeros(2, 1, 4, 4))
    assert _sites(model) == {"1": "ReLU '2'", "4": "Tanh '5'"}
    assert [(n, l.num_units, l.dim) for n, l in noise_layers(model)] == [("bmrs_noise.1", 12, 1), ("bmrs_noise.4", 8, 1)]
    assert "network's output" in _skipped(model)["6"]
    # the caller's model is untouched; the original parameters keep their names
    assert not list(noise_layers(net))
    assert set(net.state_dict()) <= set(model.state_dict())
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), net.eval()(x), atol=0.05)  # E[θ] ≈ 0.995 at initialisation
    # it trains: the noise parameters get gradients from the loss and the KL
    model.train()
    (F.cross_entropy(model(x), torch.tensor([0, 1, 2, 0, 1])) + model_kl(model)).backward()
    assert all(l.mu.grad is not None and l.log_sigma.grad is not None for _, l in noise_layers(model))


def _cnn() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 4 * 4, 5), nn.ReLU(), nn.Linear(5, 2))


@pytest.mark.parametrize("placement,expected", [
    ("activation", {"0": "ReLU '2'", "4": "ReLU '6'", "8": "ReLU '9'"}),
    ("batchnorm", {"0": "BatchNorm2d '1'", "4": "BatchNorm2d '5'", "8": "ReLU '9'"}),  # no BN after 8: its ReLU
])
def test_cnn_placement_after_activation_or_batchnorm(placement, expected):
    model = attach_noise(_cnn(), torch.zeros(2, 1, 8, 8), placement=placement)
    assert _sites(model) == expected
    notes = {a.producer: a.note for a in model.noise_report.added}
    assert notes["8"] == ("" if placement == "activation" else "no BatchNorm before the next layer")


def test_resnet18_residual_streams_are_one_group_and_the_head_is_left_out():
    model = attach_noise(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(2, 3, 32, 32))
    rep = model.noise_report
    assert len(rep.added) == 20 and rep.units == 4800
    residual = [g for g in rep.groups if g["residual"]]
    assert [len(g["producers"]) for g in residual] == [3, 3, 3, 3]  # stem/downsample + two blocks' conv2
    assert set(residual[0]["producers"]) == {"conv1", "layer1.0.conv2", "layer1.1.conv2"}
    sites = _sites(model)
    assert sites["layer1.0.conv1"] == "ReLU 'layer1.0.relu'"  # the block's shared ReLU module, first call
    assert sites["layer1.0.conv2"] == "BatchNorm2d 'layer1.0.bn2'"  # its ReLU comes after the residual add
    assert {a.producer: a.note for a in rep.added}["layer1.0.conv2"] == "no activation before a residual addition"
    assert list(_skipped(model)) == ["fc"]
    copied = copy.deepcopy(model)  # containers keep their class, the report survives
    assert isinstance(copied.layer1, nn.Sequential) and copied.noise_report.units == 4800
    assert copied.example_input(4).shape == (4, 3, 32, 32)


def test_mobilenet_v2_noise_sits_after_the_depthwise_stage_and_vgg_after_each_relu():
    mobile = attach_noise(torchvision.models.mobilenet_v2(weights=None, num_classes=10), torch.zeros(2, 3, 32, 32))
    sites = _sites(mobile)
    # expand 1x1 -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 is one group; a unit must be zero at the project conv
    assert sites["features.2.conv.0.0"] == "ReLU6 'features.2.conv.1.2'"
    assert sites["features.2.conv.2"] == "BatchNorm2d 'features.2.conv.3'"  # the linear bottleneck: no activation
    assert "features.2.conv.1.0" not in sites  # the depthwise conv carries the group, it is no producer
    assert sum(g["residual"] for g in mobile.noise_report.groups) == 5
    net = torchvision.models.vgg11_bn(weights=None, num_classes=10)
    net.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 32),
                                   nn.ReLU(True), nn.Dropout(), nn.Linear(32, 10))  # VGG's head, narrow: fast
    vgg = attach_noise(net, torch.zeros(1, 3, 32, 32))
    assert _sites(vgg)["features.0"] == "ReLU 'features.2'" and _sites(vgg)["classifier.3"] == "ReLU 'classifier.4'"
    assert list(_skipped(vgg)) == ["classifier.6"]


def test_exclude_by_name_and_class_and_a_residual_member_excludes_its_group():
    model = attach_noise(_cnn(), torch.zeros(2, 1, 8, 8), exclude=["8"])
    assert set(_sites(model)) == {"0", "4"} and _skipped(model)["8"] == "excluded"
    model = attach_noise(_cnn(), torch.zeros(2, 1, 8, 8), exclude=[nn.Conv2d])
    assert set(_sites(model)) == {"8"}
    res = attach_noise(torchvision.models.resnet18(weights=None, num_classes=10), torch.zeros(1, 3, 32, 32),
                       exclude=["layer1.0.conv2"])
    skipped = _skipped(res)
    assert skipped["layer1.0.conv2"] == "excluded" and "excluded layer1.0.conv2" in skipped["conv1"]
    assert "layer1.0.conv1" in _sites(res)
    with pytest.raises(ValueError, match="'nope', which is not a module.*Linear/Conv layers are 0, 4, 8, 10"):
        attach_noise(_cnn(), torch.zeros(2, 1, 8, 8), exclude=["nope"])


class _Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(6, 3), nn.Linear(7, 2)

    def forward(self, x):
        return self.c(torch.cat([F.relu(self.a(x)), F.gelu(self.b(x))], 1))


class _Permute(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 4), nn.Linear(4, 4), nn.Linear(2, 2)

    def forward(self, x):
        h = F.relu(self.b(F.relu(self.a(x))))
        return self.c(h.view(-1, 2, 2).permute(0, 2, 1)).flatten(1)


def test_custom_forward_concatenation_and_an_unsupported_op_in_the_report():
    cat = attach_noise(_Concat(), torch.zeros(2, 6))
    assert _sites(cat) == {"a": "relu() in the model's forward", "b": "gelu() in the model's forward"}
    perm = attach_noise(_Permute(), torch.zeros(2, 6))
    assert set(_sites(perm)) == {"a"}
    assert "Tensor.view() in the model's forward" in _skipped(perm)["b"]


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(F.dropout(F.relu(self.a(x)), 0.5, self.training))


def test_functional_dropout_follows_train_and_eval_after_tracing():
    # tracing evaluates self.training once; attach_noise turns the call into an nn.Dropout module
    model = attach_noise(_FunctionalDropout(), torch.zeros(2, 4))
    assert any("functional dropout became a module" in n for n in model.noise_report.notes)
    x = torch.randn(64, 4)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    torch.manual_seed(0)
    assert not torch.equal(model(x), model(x))


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


def test_bad_input_gives_one_clear_message():
    with pytest.raises(ValueError, match="no Linear/Conv layer"):
        attach_noise(nn.Sequential(nn.ReLU()), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="no prunable layer.*network's output"):
        attach_noise(nn.Sequential(nn.Linear(4, 2)), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"example input of shape \(2, 5\).*Linear '1'.*pass example_input"):
        attach_noise(_mlp(), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="torch.fx.*leaves="):
        attach_noise(_Branchy(), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="placement must be one of activation, batchnorm"):
        attach_noise(_mlp(), torch.zeros(2, 1, 4, 4), placement="relu")
    with pytest.raises(ValueError, match="already has noise layers"):
        attach_noise(nn.Sequential(nn.Linear(4, 4), MultiplicativeNoise(4), nn.Linear(4, 2)), torch.zeros(2, 4))
