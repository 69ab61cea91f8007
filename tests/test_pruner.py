"""bmrs.prune.pruner.Pruner: BMRS in a user's own loop — loss, optimiser groups, continuous pruning, readiness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bmrs
import bmrs.nn.graph
from bmrs.nn.noise import MultiplicativeNoise, model_kl, noise_layers
from bmrs.prune.criteria import BMRSN, BMRSU, SNR
from bmrs.prune.pruner import Pruner, distance_to_boundary, param_groups, severed_layers
from bmrs.util.batches import iterate_batches


def _mlp(hidden: int = 32) -> nn.Sequential:
    """A user's MLP on the digits (the 32x32 images pooled back to scikit-learn's 8x8)."""
    return nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                         nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks: one intra-op thread is fastest and does not oversubscribe a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    from bmrs.run import data
    return data.load("digits", network="mlp")  # scikit-learn's digits at 32x32: 1,149 training images


def _train(model, pruner, split, epochs: int, lr: float = 3e-3, seed: int = 0) -> None:
    opt = pruner.optimizer(lr=lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        for x, y in iterate_batches(split, 48, shuffle=True, generator=g):  # 24 steps per epoch
            loss = pruner.loss(F.cross_entropy(model(x), y))
            opt.zero_grad()
            loss.backward()
            opt.step()
        pruner.step()


def test_the_defaults_prune_the_digits_example_within_its_budget(digits):
    # the budget: 60 epochs x 24 steps = 1,440 Adam steps at lr 3e-3
    torch.manual_seed(0)
    model = bmrs.attach_noise(_mlp(), digits.train.x[:2])
    pruner = bmrs.Pruner(model)
    _train(model, pruner, digits.train, epochs=60)
    last = pruner.history[-1]
    assert pruner.epoch == 60 and last.total == 64
    assert last.total - last.kept >= 16, f"only {last.total - last.kept} of 64 units pruned"
    assert pruner.readiness().ready
    final = pruner.finetune()
    assert final.phase == "final" and pruner.frozen
    small = pruner.shrink()
    acc = bmrs.evaluate(small, digits.test, device=torch.device("cpu"))["acc"]
    assert acc > 80.0
    assert bmrs.count_parameters(small) < 0.8 * bmrs.count_parameters(_mlp())


def test_readiness_says_when_training_has_not_gone_long_enough(digits):
    torch.manual_seed(0)
    model = bmrs.attach_noise(_mlp(16), digits.train.x[:2])
    pruner = Pruner(model, noise_lr_scale=1.0)
    _train(model, pruner, digits.train, epochs=2)
    ready = pruner.readiness()
    assert not ready.ready and ready.pruned == 0 and ready.near == 0
    assert "has not gone long enough" in str(ready) and "noise_lr_scale" in str(ready)
    assert ready.closest is not None and ready.closest > 1.0 and ready.noise_lr == pytest.approx(3e-3)
    assert ready.steps_to_boundary == pytest.approx(ready.closest / 3e-3)
    assert set(ready.per_layer) == {"bmrs_noise.2", "bmrs_noise.4"}
    # Eq. 8's BMRS_N does not prune these posteriors at any σ: the message says what would
    strict = Pruner(model, "bmrs_n", noise_lr_scale=1.0).readiness()
    assert not strict.ready and strict.closest is None and "no σ up to the clamp" in str(strict)


@pytest.mark.parametrize("criterion", [BMRSN(), BMRSN(include_2pi=False), BMRSU(p1=4), SNR()])
def test_distance_to_boundary_is_zero_for_pruned_units_and_points_at_the_boundary(criterion):
    layer = MultiplicativeNoise(4)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor([-0.5, -0.5, -14.0, -19.0]))
        layer.log_sigma.copy_(torch.tensor([-5.0, -1.0, 1.0, 3.0]))
    d = distance_to_boundary(criterion, layer)
    keep = criterion.keep(criterion.layer_scores(layer, None))
    assert torch.equal(d == 0, ~keep)
    for i in range(4):  # one grid step past the distance the criterion prunes, one step short it does not
        if 0 < d[i] < math.inf:
            probe = MultiplicativeNoise(2)
            with torch.no_grad():
                probe.mu.fill_(float(layer.mu[i]))
                probe.log_sigma.copy_(layer.log_sigma[i] + torch.tensor([float(d[i]) + 1e-6, float(d[i]) - 0.2]))
            assert criterion.keep(criterion.layer_scores(probe, None)).tolist() == [False, True]


def test_loss_and_parameter_groups():
    model = bmrs.attach_noise(_mlp(8), torch.zeros(2, 1, 32, 32))
    pruner = Pruner(model, kl_weight=0.5)
    task = torch.tensor(1.25)
    assert torch.allclose(pruner.loss(task), task + 0.5 * model_kl(model))
    groups = pruner.param_groups(1e-3, weight_decay=1e-4)
    noise = {id(p) for _, l in noise_layers(model) for p in (l.mu, l.log_sigma)}
    assert [len(g["params"]) for g in groups] == [6, 4]  # 3 Linear (weight, bias); 2 noise layers (μ, log σ)
    assert {id(p) for p in groups[1]["params"]} == noise and groups[1]["lr"] == pytest.approx(1e-2)
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["weight_decay"] == 1e-4
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    opt = pruner.optimizer(2e-3, noise_lr=5e-3)
    assert isinstance(opt, torch.optim.Adam) and [g["lr"] for g in opt.param_groups] == [2e-3, 5e-3]
    assert param_groups(model, 1e-3, noise_lr_scale=1.0)[1]["lr"] == pytest.approx(1e-3)


def test_step_schedule_fraction_criteria_and_frozen_masks():
    torch.manual_seed(0)
    model = bmrs.attach_noise(_mlp(8), torch.zeros(2, 1, 32, 32))
    layers = [l for _, l in noise_layers(model)]
    with torch.no_grad():
        layers[0].mu[:3] = -18.0  # three units deep in the prune region
        layers[0].log_sigma[:3] = 1.0
    every2 = Pruner(model, "bmrs_n_code", prune_every=2)
    assert every2.step().pruned is False and layers[0].kept == 8
    rec = every2.step()
    assert rec.pruned and rec.newly_pruned == 3 and layers[0].kept == 5
    every2.finetune()
    with torch.no_grad():
        layers[0].mu[:3] = 0.0
        layers[0].log_sigma[:3] = -5.0
    assert every2.step().phase == "finetune" and layers[0].kept == 5  # frozen: no revival
    with pytest.raises(ValueError, match="no fixed pruning rule; pass fraction"):
        Pruner(model, "l2")
    l2 = Pruner(model, "l2", fraction=0.25)
    l2.step()
    assert sum(l.num_units - l.kept for l in layers) == 4
    assert "ranks units" in str(l2.readiness())


def test_bad_arguments_give_one_clear_message():
    with pytest.raises(ValueError, match="has no noise layers; call bmrs.attach_noise"):
        Pruner(_mlp())
    model = bmrs.attach_noise(_mlp(8), torch.zeros(2, 1, 32, 32))
    with pytest.raises(ValueError, match="unknown criterion 'bmrs_x'"):
        Pruner(model, "bmrs_x")
    with pytest.raises(ValueError, match="noise_lr_scale > 0"):
        Pruner(model, noise_lr_scale=0)


class _SkipNet(nn.Module):
    """A user's skip network on the digits: stem, a residual block of two Linear added back onto the stream, head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(4)  # the 32x32 images back to scikit-learn's 8x8
        self.stem, self.fc1, self.fc2 = nn.Linear(64, width), nn.Linear(width, width), nn.Linear(width, width)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        x = F.relu(self.stem(self.pool(x).flatten(1)))
        x = x + F.relu(self.fc2(F.relu(self.fc1(x))))  # the residual branch
        return self.head(x)


def _kept(model) -> dict[str, int]:
    return {name.split(".")[-1]: layer.kept for name, layer in noise_layers(model)}


def _output_spread(model, x) -> float:
    """Largest difference between the eval outputs of different images: 0 for a constant network."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    return float((out - out[:1]).abs().max())


def test_the_guard_never_lets_pruning_cut_every_path_of_a_skip_network(digits):
    # the noise learning rate 50 x lr: the posteriors reach the prior before the weights learn, and within three
    # epochs the criterion prunes every unit, the stem's too — without the guard the network is constant
    runs = {}
    for guard in (False, True):
        torch.manual_seed(0)
        model = bmrs.attach_noise(_SkipNet(), digits.train.x[:2])
        pruner = Pruner(model, noise_lr_scale=50.0, keep_connected=guard)
        _train(model, pruner, digits.train, epochs=6)
        runs[guard] = model, pruner
    model, pruner = runs[False]
    assert _kept(model) == {"stem": 0, "fc1": 0, "fc2": 0}
    assert _output_spread(model, digits.test.x) == 0.0  # one prediction for every image
    assert all(r.guard_kept == 0 for r in pruner.history)
    model, pruner = runs[True]
    guarded = [r for r in pruner.history if r.guard_kept]
    assert guarded and all(r.guard_layers == ("bmrs_noise.stem",) and r.guard_kept == 16 for r in guarded)
    assert all(r.kept >= 1 for r in pruner.history)  # the stem is never empty at the end of a step
    assert _kept(model)["stem"] >= 1 and _output_spread(model, digits.test.x) > 1e-3
    ready = pruner.readiness()
    assert f"At epoch {guarded[-1].epoch} the connectivity guard kept 16 unit(s)" in str(ready) and ready.guard_kept == 16


def test_at_the_defaults_a_skip_network_loses_its_residual_branch_and_the_guard_stays_out(digits):
    torch.manual_seed(0)
    model = bmrs.attach_noise(_SkipNet(), digits.train.x[:2])
    pruner = Pruner(model)
    _train(model, pruner, digits.train, epochs=20)  # the first units reach the boundary after ~12 epochs
    kept = _kept(model)
    assert kept["fc1"] == kept["fc2"] == 0 and kept["stem"] >= 4  # a whole branch may go: the skip carries the stream
    assert all(r.guard_kept == 0 for r in pruner.history)
    assert bmrs.evaluate(model, digits.test, device=torch.device("cpu"))["acc"] > 85.0


def _prune_all(model, keep: dict[str, int] | None = None) -> None:
    """Posteriors deep in the prune region for every unit, except `keep[layer]` units (first ones) per layer."""
    with torch.no_grad():
        for name, layer in noise_layers(model):
            layer.mu.fill_(-18.0)
            layer.log_sigma.fill_(1.0)
            n = (keep or {}).get(name.split(".")[-1], 0)
            layer.mu[:n] = 0.0
            layer.log_sigma[:n] = -5.0


def test_severed_layers_finds_the_cut_and_ignores_size_only_paths():
    model = bmrs.attach_noise(_SkipNet(8), torch.zeros(2, 1, 32, 32))
    for keep, cut in [({"stem": 2}, []), ({"fc1": 1, "fc2": 1}, ["bmrs_noise.stem"]), ({}, ["bmrs_noise.stem"]),
                      ({"stem": 1, "fc1": 3}, [])]:
        _prune_all(model, keep)
        rec = Pruner(model).step()
        assert rec.guard_layers == tuple(cut) and rec.guard_kept == 8 * len(cut)
        assert _kept(model)["stem"] == (8 if cut else keep["stem"])
        assert _kept(model)["fc2"] == keep.get("fc2", 0)  # the residual branch is not the guard's business
    _prune_all(model)
    rec = Pruner(model, keep_connected=False).step()  # the criterion's masks as they are (the paper's protocol)
    assert rec.kept == 0 and rec.guard_kept == 0

    class Chain(nn.Module):  # the only other path from the input to the output reads its size
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.noise, self.fc2 = nn.Linear(4, 6), MultiplicativeNoise(6), nn.Linear(6, 2)

        def forward(self, x):
            return self.fc2(self.noise(torch.relu(self.fc1(x))).view(x.size(0), -1))

    chain = Chain()
    graph = bmrs.nn.graph.symbolic_trace(chain)
    assert severed_layers(graph, chain, {"noise"}) == ["noise"] and severed_layers(graph, chain, set()) == []


def test_an_untraceable_model_leaves_every_layer_the_step_empties_whole():
    class Branchy(nn.Module):  # data-dependent control flow: torch.fx cannot trace it
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.n1, self.fc2, self.n2 = nn.Linear(4, 5), MultiplicativeNoise(5), nn.Linear(5, 3), MultiplicativeNoise(3)
            self.head = nn.Linear(3, 2)

        def forward(self, x):
            h = self.n1(torch.relu(self.fc1(x)))
            if h.sum() > 0:
                h = h * 2
            return self.head(self.n2(torch.relu(self.fc2(h))))

    model = Branchy()
    _prune_all(model, {"n2": 1})
    rec = Pruner(model, example_input=torch.zeros(2, 4)).step()
    assert rec.guard_layers == ("n1",) and rec.guard_kept == 5 and model.n1.kept == 5 and model.n2.kept == 1
