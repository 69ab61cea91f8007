"""bmrs.nn.shrink: shrunk networks equal the masked ones, are smaller by the expected amount, and round-trip."""

from __future__ import annotations

import copy
import functools
import json

import pytest
import torch
from torch import nn

from bmrs.nn import measure
from bmrs.nn import shrink as compact
from bmrs.run import store

from bmrs.run import experiments
from bmrs.nn.models import Classifier, InputSpec, TorchvisionClassifier, lenet5, mlp, resnet, vit
from bmrs.nn.noise import noise_layers

TOL = 1e-5


def _randomise_noise(model: nn.Module, g: torch.Generator, keep: float = 0.6) -> None:
    """Random posteriors (E[θ] spread over (0, 1)) and random masks keeping about `keep` of the units."""
    with torch.no_grad():
        for _, layer in noise_layers(model):
            n = layer.num_units
            layer.mu.copy_(torch.rand(n, generator=g) * 3 - 2.5)
            layer.log_sigma.copy_(torch.rand(n, generator=g) * 4 - 3)
            mask = (torch.rand(n, generator=g) < keep).float()
            mask[torch.randint(n, (1,), generator=g)] = 1.0
            layer.mask.copy_(mask)


def _randomise_batchnorm(model: nn.Module, g: torch.Generator) -> None:
    """Non-trivial BN affine parameters and running statistics (the defaults make BN an identity)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _inputs(model: nn.Module, n: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn((n, *model.input_spec.shape), generator=torch.Generator().manual_seed(seed))


def _assert_equal_outputs(masked: nn.Module, shrunk: nn.Module, tol: float = TOL) -> None:
    x = _inputs(masked)
    masked.eval()
    with torch.no_grad():
        expected, got = masked(x), shrunk(x)
    assert got.shape == expected.shape
    assert expected.abs().max() > 1e-3, "degenerate test: the masked model's output is ~0"
    diff = (expected - got).abs().max().item()
    assert diff <= tol, f"max |masked - shrunk| = {diff:.3g}"
    assert diff <= 1e-4 * expected.abs().max().item(), f"max |masked - shrunk| = {diff:.3g} relative to the output"


def _kept(layer) -> int:
    return int(layer.mask.sum())


def _roundtrip(shrunk: nn.Module, tmp_path) -> None:
    compact.save_compact(shrunk, tmp_path / "c")
    state = torch.load(tmp_path / "c" / "state_dict.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    arch = json.loads((tmp_path / "c" / "architecture.json").read_text())
    assert arch["format_version"] == compact.FORMAT_VERSION
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.startswith(".")], "temporary files left behind"
    loaded = compact.load_compact(tmp_path / "c")
    assert type(loaded) is type(shrunk)
    assert measure.count_parameters(loaded) == measure.count_parameters(shrunk)
    x = _inputs(shrunk, seed=5)
    with torch.no_grad():
        assert torch.equal(loaded(x), shrunk(x))


# ------------------------------------------------------------------------------------------------
# MLP and LeNet5: exact parameter counts
# ------------------------------------------------------------------------------------------------

def _mlp_params(inputs: int, kept: list[int], classes: int) -> int:
    widths = [inputs, *kept, classes]
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _lenet_params(c: int, kept: list[int], classes: int = 10) -> int:
    k1, k2, k3, k4 = kept
    return (k1 * c * 25 + k1) + (k2 * k1 * 25 + k2) + (k3 * k2 * 25 + k3) + (k4 * k3 + k4) + (10 * k4 + classes)


def test_mlp_shrinks_exactly_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    model = mlp((1, 8, 8), 10, hidden=20, n_layers=2)
    _randomise_noise(model, g)
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    kept = [_kept(layer) for _, layer in noise_layers(model)]
    assert min(kept) < 20
    assert measure.count_parameters(shrunk) == _mlp_params(64, kept, 10)
    removed = measure.count_parameters(model) - measure.count_parameters(shrunk)
    assert removed == _mlp_params(64, [20] * 3, 10) - _mlp_params(64, kept, 10) + 2 * 60
    assert not list(noise_layers(shrunk))
    assert shrunk.compact_architecture["units"][0]["kept"] == \
        torch.nonzero(model[3].mask).flatten().tolist()
    _roundtrip(shrunk, tmp_path)


@pytest.mark.parametrize("channels", [1, 3])
def test_lenet5_shrinks_exactly_and_round_trips(channels, tmp_path):
    g = torch.Generator().manual_seed(channels)
    model = lenet5(channels)
    _randomise_noise(model, g, keep=0.5)
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    kept = [_kept(layer) for _, layer in noise_layers(model)]
    full = [6 * channels, 16 * channels, 120 * channels, 84 * channels]
    assert all(k < f for k, f in zip(kept, full))
    assert measure.count_parameters(shrunk) == _lenet_params(channels, kept)
    assert measure.count_parameters(model) - measure.count_parameters(shrunk) == \
        _lenet_params(channels, full) - _lenet_params(channels, kept) + 2 * sum(full)
    assert [m.out_channels for m in shrunk if isinstance(m, nn.Conv2d)] == kept[:2]
    fc1 = next(m for m in shrunk if isinstance(m, nn.Linear))
    assert fc1.in_features == kept[1] * 25  # flattened conv channels own 5x5 column blocks
    _roundtrip(shrunk, tmp_path)


def test_float64_model_matches_to_rounding():
    g = torch.Generator().manual_seed(3)
    model = lenet5(1).double()
    _randomise_noise(model, g)
    shrunk = compact.shrink(model)
    assert next(shrunk.parameters()).dtype == torch.float64
    x = _inputs(model).double()
    with torch.no_grad():
        assert (model.eval()(x) - shrunk(x)).abs().max() < 1e-12


def test_unpruned_model_keeps_every_unit():
    model = lenet5(1).eval()
    shrunk = compact.shrink(model)
    assert measure.count_parameters(shrunk) == measure.count_parameters(model) - 2 * 226
    _assert_equal_outputs(model, shrunk)


def test_whole_mlp_layer_pruned_folds_into_a_constant(tmp_path):
    g = torch.Generator().manual_seed(4)
    model = mlp((1, 8, 8), 10, hidden=20, n_layers=2)
    _randomise_noise(model, g)
    layers = [layer for _, layer in noise_layers(model)]
    layers[1].mask.zero_()
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    assert isinstance(shrunk[0], compact.ConstantFeatures)
    k2 = _kept(layers[2])
    # Constant(k2 = the third Linear's kept biases) -> Tanh -> Linear(k2, 10)
    assert measure.count_parameters(shrunk) == k2 + k2 * 10 + 10
    x = _inputs(model)
    with torch.no_grad():
        out = shrunk(x)
    assert (out - out[:1]).abs().max() <= 1e-6, "the output must be input-independent"
    _roundtrip(shrunk, tmp_path)


def test_whole_lenet5_conv_layer_pruned_folds_into_a_constant_map(tmp_path):
    g = torch.Generator().manual_seed(5)
    model = lenet5(1)
    _randomise_noise(model, g, keep=0.5)
    layers = [layer for _, layer in noise_layers(model)]
    layers[0].mask.zero_()
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    k2, k3, k4 = (_kept(layer) for layer in layers[1:])
    assert measure.count_parameters(shrunk) == k2 + (k3 * k2 * 25 + k3) + (k4 * k3 + k4) + (10 * k4 + 10)
    assert shrunk[0].spatial == (10, 10)
    _roundtrip(shrunk, tmp_path)


def test_head_layer_pruned_to_nothing_gives_the_head_bias():
    model = mlp((1, 4, 4), 5, hidden=6, n_layers=0)
    list(noise_layers(model))[0][1].mask.zero_()
    with torch.no_grad():
        model[-1].bias.copy_(torch.arange(5.0) - 2)
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    assert measure.count_parameters(shrunk) == 5
    with torch.no_grad():
        assert torch.equal(shrunk(_inputs(model))[0], model[-1].bias)


# ------------------------------------------------------------------------------------------------
# ResNet
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _resnet_base(depth: int) -> TorchvisionClassifier:
    return resnet(depth, 10, image_size=32)


def _resnet(depth: int) -> TorchvisionClassifier:
    """A fresh ResNet at 32x32 (copied from a cached instance: building ResNet-50 costs seconds)."""
    return copy.deepcopy(_resnet_base(depth))


def _groups_by_member(model: TorchvisionClassifier) -> dict[str, compact.ChannelGroup]:
    return {m: g for g in compact.resnet_groups(model.net) for m in g.members}


def _bn(model: TorchvisionClassifier, name: str):
    return model.net.get_submodule(name)


@pytest.mark.parametrize("depth", [18, 50])
def test_resnet_matches_masked_and_removes_residual_channels_pruned_by_every_member(depth, tmp_path):
    g = torch.Generator().manual_seed(depth)
    model = _resnet(depth)
    _randomise_batchnorm(model, g)
    _randomise_noise(model, g, keep=0.85)  # a few units pruned in every layer
    groups = compact.resnet_groups(model.net)
    residual = [grp for grp in groups if grp.kind == "residual"]
    assert len(residual) == 4 and sum(len(grp.members) for grp in groups) == (20 if depth == 18 else 53)
    stage1 = residual[0]
    assert ("bn1" in stage1.members) == (depth == 18)  # the stem joins layer1's stream only in ResNet-18
    # whole residual channels: channels 0..9 of layer1's stream and 0..4 of layer4's stream pruned by every member
    for grp, chans in ((stage1, range(10)), (residual[3], range(5))):
        for name in grp.members:
            _bn(model, name).noise.mask[list(chans)] = 0.0
    # a channel pruned by one member only stays, with that member's contribution zeroed
    _bn(model, stage1.members[1]).noise.mask[12] = 0.0
    for name in stage1.members:
        if name != stage1.members[1]:
            _bn(model, name).noise.mask[12] = 1.0
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    for grp in groups:
        keep = torch.stack([_bn(model, m).noise.mask != 0 for m in grp.members]).any(0)
        for name, conv in zip(grp.members, grp.producers):
            assert _bn(shrunk, name).num_features == int(keep.sum()), name
            assert shrunk.net.get_submodule(conv).out_channels == int(keep.sum()), conv
        for cons in grp.consumers:
            mod = shrunk.net.get_submodule(cons)
            assert (mod.in_features if isinstance(mod, nn.Linear) else mod.in_channels) == int(keep.sum()), cons
    kept_stage1 = int(torch.stack([_bn(model, m).noise.mask != 0 for m in stage1.members]).any(0).sum())
    assert kept_stage1 <= (64 if depth == 18 else 256) - 10
    assert not list(noise_layers(shrunk))
    assert measure.count_parameters(shrunk) < measure.count_parameters(model) - 2 * sum(
        layer.num_units for _, layer in noise_layers(model))
    if depth == 18:
        _roundtrip(shrunk, tmp_path)


def test_resnet_fully_pruned_internal_layer_and_stream_keep_a_zero_placeholder(tmp_path):
    g = torch.Generator().manual_seed(7)
    model = _resnet(18)
    _randomise_batchnorm(model, g)
    _randomise_noise(model, g, keep=0.8)
    _bn(model, "layer2.1.bn1").noise.mask.zero_()  # a block-internal layer
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    assert shrunk.net.layer2[1].conv1.out_channels == 1 and shrunk.net.layer2[1].conv2.in_channels == 1
    assert float(shrunk.net.layer2[1].bn1.weight.detach().abs().max()) == 0.0
    spec = {tuple(grp["members"]): grp for grp in shrunk.compact_architecture["groups"]}
    assert spec[("layer2.1.bn1",)]["placeholder"] is True
    _roundtrip(shrunk, tmp_path)
    # every member of layer4's stream prunes everything: the output no longer depends on the input
    for name in _groups_by_member(model)["layer4.1.bn2"].members:
        _bn(model, name).noise.mask.zero_()
    shrunk = compact.shrink(model)
    assert shrunk.net.fc.in_features == 1
    x = _inputs(model)
    with torch.no_grad():
        expected, got = model.eval()(x), shrunk(x)
    assert (expected - got).abs().max() <= TOL
    assert torch.allclose(got, model.net.fc.bias.expand_as(got))


# ------------------------------------------------------------------------------------------------
# ViT
# ------------------------------------------------------------------------------------------------

def _small_vit(g: torch.Generator) -> TorchvisionClassifier:
    model = vit(10, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 1 and p is not model.net.class_token:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    _randomise_noise(model, g, keep=0.6)
    return model


def test_vit_matches_masked_and_drops_pruned_rows(tmp_path):
    g = torch.Generator().manual_seed(11)
    model = _small_vit(g)
    blocks = list(model.net.encoder.layers)
    blocks[0].self_attention.noise.mask.zero_()  # whole attention branch of block 0 pruned
    blocks[1].mlp[5].mask.zero_()  # whole MLP branch of block 1 pruned
    shrunk = compact.shrink(model)
    _assert_equal_outputs(model, shrunk)
    e, h = 32, 64
    expected_removed = 2 * e * 4  # μ and log σ of four noise layers
    for block in blocks:
        ka, km = _kept(block.self_attention.noise), _kept(block.mlp[5])
        expected_removed += (e - ka) * (e + 1) + (e - km) * (h + 1)
        if ka == 0:
            expected_removed += 2 * e + 3 * e * e + 3 * e  # ln_1 and the in-projection are dead too
        if km == 0:
            expected_removed += 2 * e + e * h + h  # ln_2 and the first MLP layer
    assert measure.count_parameters(model) - measure.count_parameters(shrunk) == expected_removed
    new_blocks = list(shrunk.net.encoder.layers)
    assert new_blocks[0].self_attention is None and new_blocks[1].mlp is None
    assert new_blocks[1].self_attention.out_proj.out_features == _kept(blocks[1].self_attention.noise)
    _roundtrip(shrunk, tmp_path)


# ------------------------------------------------------------------------------------------------
# Errors, measurement, runs
# ------------------------------------------------------------------------------------------------

def test_unsupported_architectures_raise_a_clear_error():
    with pytest.raises(ValueError, match="supported: .*mlp.*lenet5.*resnet.*vit"):
        compact.shrink(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="supported: .*resnet"):
        compact.shrink(TorchvisionClassifier(nn.Sequential(nn.Linear(3, 3)), InputSpec(1, 1, 3), "other"))
    bad = Classifier(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2), input_spec=InputSpec(1, 2, 2))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        compact.shrink(bad)


def test_macs_latency_and_report():
    model = lenet5(1)
    x = model.example_input(1)
    # conv1 6·25·28² + conv2 16·6·25·10² + fc 400·120 + 120·84 + 84·10
    assert measure.count_macs(model, x) == 117600 + 240000 + 48000 + 10080 + 840
    torch.set_num_threads(2)  # not the threads= of the measurement, so that restoring it is seen
    lat = measure.measure_latency(model, x, threads=1, repeats=5, warmup=1)
    assert torch.get_num_threads() == 2
    assert lat["threads"] == 1 and lat["median_s"] > 0 and lat["iqr_s"] >= 0 and lat["batch"] == 1
    _randomise_noise(model, torch.Generator().manual_seed(2), keep=0.3)
    rep = measure.report(model, repeats=3, warmup=1)
    assert rep["params"]["dense_with_noise"] == 62158 and rep["params"]["dense_without_noise"] == 61706
    # the shrunk LeNet5 by hand from the kept units k1..k4 of conv1, conv2, fc1, fc2 (5x5 kernels, 5x5 maps into fc1)
    k1, k2, k3, k4 = (int(layer.mask.sum()) for _, layer in noise_layers(model))
    assert rep["params"]["shrunk"] == (25 * k1 + k1) + (25 * k1 * k2 + k2) + (25 * k2 * k3 + k3) + (k3 * k4 + k4) + (10 * k4 + 10)
    assert rep["macs"]["shrunk"] == 25 * k1 * 28 ** 2 + 25 * k1 * k2 * 10 ** 2 + 25 * k2 * k3 + k3 * k4 + 10 * k4
    assert rep["macs"]["shrunk"] < rep["macs"]["dense"]
    assert rep["max_abs_output_diff"] <= TOL
    assert set(rep["latency"]) == {"batch1", "batch32"} and rep["latency"]["batch32"]["dense"]["batch"] == 32
    assert 0 < rep["paper"]["param_compression_pct"] < 100
    json.dumps(rep)


def test_compact_run_errors_name_the_path_and_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m bmrs train"):
        store.compact_run(tmp_path / "missing")
    cfg = experiments.RunConfig("mnist", "lenet5", "bmrs_n", epochs=3)
    run = tmp_path / cfg.run_id
    experiments.write_json_atomic(run / "config.json", {"run": cfg.hashed_fields()})
    with pytest.raises(FileNotFoundError, match=f"{run}.*unfinished.*--network lenet5.*--epochs 3"):
        store.compact_run(run)


def test_compact_run_writes_model_and_report(tmp_path, monkeypatch):
    cfg = experiments.RunConfig("mnist", "lenet5", "bmrs_n")
    run = tmp_path / cfg.run_id
    model = lenet5(1)
    _randomise_noise(model, torch.Generator().manual_seed(9), keep=0.4)
    experiments.write_json_atomic(run / "config.json", {"run": cfg.hashed_fields()})
    experiments.write_json_atomic(run / "metrics.json", {"status": "complete"})
    torch.save(model.state_dict(), run / "model.pt")

    def fake_load_model(c, results_dir=None):  # experiments.load_model needs bmrs.run.data.describe
        assert c == cfg and (results_dir / c.run_id) == run
        fresh = lenet5(1)
        fresh.load_state_dict(torch.load(run / "model.pt", weights_only=True))
        return fresh

    monkeypatch.setattr(experiments, "load_model", fake_load_model)
    rep = store.compact_run(run, threads=1, repeats=2)
    assert {p.name for p in (run / "compact").iterdir()} == {"state_dict.pt", "architecture.json", "report.json"}
    assert json.loads((run / "compact" / "report.json").read_text())["params"] == rep["params"]
    loaded = compact.load_compact(run / "compact")
    assert measure.count_parameters(loaded) == rep["params"]["shrunk"]
    _assert_equal_outputs(model, loaded)
