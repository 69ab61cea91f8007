"""bmrs.prune.pruner.Pruner: BMRS in a user's own loop — loss, optimiser groups, continuous pruning, readiness."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bmrs
from bmrs.nn.noise import MultiplicativeNoise, model_kl, noise_layers
from bmrs.prune.criteria import BMRSN, BMRSU, SNR
from bmrs.prune.pruner import Pruner, distance_to_boundary, param_groups
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
