"""EigenDamage and C-OBD baselines (Wang, Grosse, Fidler & Zhang, ICML 2019, arXiv:1905.05934; authors' code
`alecwangcq/EigenDamage-Pytorch`): the KFE rotation and score identities, the K-FAC statistics, the bottleneck
rebuild, plus the library glue."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bmrs.prune.eigendamage import (
    COBD, EigenBasis, EigenBottleneck, EigenDamage, KFactors, bottleneck_size, collect_kfac, eigen_basis,
    layer_matrix, prunable_layers, recalibrate_bn, rotate_and_score, select,
)
from bmrs.nn.measure import count_macs, count_parameters
from bmrs.nn.shrink import fold_noise
from bmrs.prune.criteria import prune_to_fraction
from bmrs.run.data import TensorSplit
from bmrs.nn.models import lenet5, mlp
from bmrs.nn.noise import MultiplicativeNoise, noise_layers
from bmrs.nn.measure import evaluate
from bmrs.run.train import TrainConfig, make_optimizer, train_epoch

CPU = torch.device("cpu")


def _spd(n: int, gen: torch.Generator, rank: int | None = None) -> torch.Tensor:
    x = torch.randn(n, rank or n + 3, generator=gen, dtype=torch.float64)
    return x @ x.T / x.shape[1]


def _random_basis(d_in: int, d_out: int, patch: int, seed: int = 0) -> EigenBasis:
    g = torch.Generator().manual_seed(seed)
    return eigen_basis(KFactors(_spd(d_in, g), _spd(d_out, g), 1, patch))


def _randomise_noise(model: nn.Module, seed: int = 0, prune: float = 0.3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in noise_layers(model):
            layer.mu.copy_(torch.rand(layer.num_units, generator=g) * 3 - 2.5)
            layer.log_sigma.copy_(torch.rand(layer.num_units, generator=g) * 2 - 3)
            layer.mask.copy_((torch.rand(layer.num_units, generator=g) > prune).float())


# --------------------------------------------------------------------------------------------------
# Rotation, diagonal Fisher in the KFE, quadratic-model loss = ½ score (`pruner/kfac_eigen_pruner.py`)
# --------------------------------------------------------------------------------------------------

def test_rotation_roundtrip_and_fisher_is_diagonal_in_the_eigenbasis():
    g = torch.Generator().manual_seed(1)
    A, S = _spd(5, g), _spd(4, g)
    basis = eigen_basis(KFactors(A, S, 1))
    w = torch.randn(4, 1, 5, generator=g, dtype=torch.float64)
    w_star = rotate_and_score(w, basis).w_star
    torch.testing.assert_close(basis.q_s @ w_star[:, 0] @ basis.q_a.T, w[:, 0])
    q = torch.kron(basis.q_a, basis.q_s)  # column-stacking vec: F = A ⊗ S
    rotated = q.T @ torch.kron(A, S) @ q
    torch.testing.assert_close(rotated, torch.diag(torch.kron(basis.lam_a, basis.lam_s)), atol=1e-12, rtol=0)


@pytest.mark.parametrize("patch", [1, 4])
def test_zeroing_a_row_or_column_costs_half_its_score_under_the_quadratic_model(patch):
    g = torch.Generator().manual_seed(2)
    d_in, d_out = 6, 5
    A, S = _spd(d_in, g), _spd(d_out, g)
    basis = eigen_basis(KFactors(A, S, 1, patch))
    w = torch.randn(d_out, patch, d_in, generator=g, dtype=torch.float64)
    sc = rotate_and_score(w, basis)

    def loss_increase(w_star_new):  # ½ Σ_p vec(D_p)ᵀ (A ⊗ S) vec(D_p), F = (I_P ⊗ A) ⊗ S
        d = torch.einsum("os,spa,ia->opi", basis.q_s, w_star_new, basis.q_a) - w
        return 0.5 * sum(torch.trace(d[:, p].T @ S @ d[:, p] @ A) for p in range(patch))

    for j in range(d_in):
        z = sc.w_star.clone()
        z[:, :, j] = 0
        torch.testing.assert_close(loss_increase(z), 0.5 * sc.cols[j])
    for i in range(d_out):
        z = sc.w_star.clone()
        z[i] = 0
        torch.testing.assert_close(loss_increase(z), 0.5 * sc.rows[i])


# --------------------------------------------------------------------------------------------------
# K-FAC statistics: the normalisation of `pruner/kfac_eigen_pruner.py` / `utils/kfac_utils.py` against
# brute force (forward hooks + tensor hooks)
# --------------------------------------------------------------------------------------------------

def test_collect_kfac_matches_brute_force_factors():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    lin = nn.Linear(48, 5)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), lin).double()
    x = torch.randn(6, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (6,))
    factors = collect_kfac(model, [(x[:4], y[:4]), (x[4:], y[4:])], {"conv": conv, "lin": lin}, device=CPU,
                           generator=None, labels="true")
    assert set(factors) == {"conv", "lin"} and factors["conv"].examples == 6

    # brute force: per-example output gradients of the summed loss
    outs = {}

    def keep(name):
        def hook(m, i, o):
            o.retain_grad()
            outs[name], outs[name + "_in"] = o, i[0]
        return hook

    model[1].inplace = False  # retain_grad needs the conv output itself
    h1, h2 = conv.register_forward_hook(keep("conv")), lin.register_forward_hook(keep("lin"))
    F.cross_entropy(model(x), y, reduction="sum").backward()
    h1.remove(), h2.remove()
    outs["a"] = outs["lin_in"].detach()
    ds_conv, ds_lin, a_lin = outs["conv"].grad, outs["lin"].grad, outs["a"].detach()
    n = x.shape[0]
    P, T = 9, 16
    xp = F.pad(x, (1, 1, 1, 1))
    A = torch.zeros(3, 3, dtype=torch.float64)
    for i in range(n):
        for oh in range(4):
            for ow in range(4):
                for ki in range(3):
                    for kj in range(3):
                        v = torch.cat([xp[i, :, 2 * oh + ki, 2 * ow + kj], torch.tensor([1.0 / P], dtype=torch.float64)])
                        A += torch.outer(v, v)
    A /= n * P
    g = ds_conv.permute(0, 2, 3, 1).reshape(-1, 3)
    torch.testing.assert_close(factors["conv"].A, A)
    torch.testing.assert_close(factors["conv"].S, g.T @ g / (n * T))
    a_bar = torch.cat([a_lin, torch.ones(n, 1, dtype=torch.float64)], 1)
    torch.testing.assert_close(factors["lin"].A, a_bar.T @ a_bar / n)
    torch.testing.assert_close(factors["lin"].S, ds_lin.T @ ds_lin / n)


def test_true_fisher_labels_are_sampled_and_reproducible():
    model = mlp((1, 4, 4), 3, hidden=6, n_layers=1, noise=False)
    x = torch.randn(32, 1, 4, 4)
    layers = prunable_layers(model)
    run = lambda s: collect_kfac(model, [(x, torch.zeros(32, dtype=torch.long))], layers, device=CPU,  # noqa: E731
                                 generator=torch.Generator().manual_seed(s))
    a, b, c = run(0), run(0), run(1)
    torch.testing.assert_close(a["1"].S, b["1"].S)
    assert not torch.allclose(a["1"].S, c["1"].S)  # labels drawn from softmax, not the (all-zero) true labels
    torch.testing.assert_close(a["1"].A, c["1"].A)  # inputs do not depend on the labels


# --------------------------------------------------------------------------------------------------
# The rebuilt layer (rotate → core → rotate) with nothing pruned is the original layer
# --------------------------------------------------------------------------------------------------

LAYERS = {
    "linear+bias": lambda: nn.Linear(7, 5),
    "linear": lambda: nn.Linear(7, 5, bias=False),
    "conv+bias stride2 pad1": lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1),
    "conv+bias rect stride pad dilation": lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 2), dilation=2),
    "conv no bias pad": lambda: nn.Conv2d(3, 4, 3, padding=1, bias=False),
    "conv+bias same reflect": lambda: nn.Conv2d(3, 4, 3, padding="same", padding_mode="reflect"),
}


@pytest.mark.parametrize("kind", list(LAYERS))
def test_bottleneck_with_nothing_pruned_equals_the_layer(kind):
    torch.manual_seed(4)
    layer = LAYERS[kind]()
    x = torch.randn(2, 7) if isinstance(layer, nn.Linear) else torch.randn(2, 3, 9, 10)
    w = layer_matrix(layer)
    d_out, patch, d_in = w.shape
    basis = _random_basis(d_in, d_out, patch)
    sc = rotate_and_score(w, basis)
    keep_out, keep_in = torch.arange(d_out), torch.arange(d_in)
    neck = EigenBottleneck.from_layer(layer, basis, sc.w_star, keep_out, keep_in)
    with torch.no_grad():
        torch.testing.assert_close(neck(x), layer(x), atol=2e-5, rtol=1e-5)
    assert isinstance(neck.q_in, nn.Parameter) and isinstance(neck.q_out, nn.Parameter)
    # a second rotation merged into the first (iterative rounds) keeps the function and two rotations
    core_w = layer_matrix(neck.core)
    basis2 = _random_basis(core_w.shape[2], core_w.shape[0], patch, seed=5)
    merged = neck.merged(basis2, rotate_and_score(core_w, basis2).w_star, keep_out, keep_in)
    assert not any(isinstance(m, EigenBottleneck) for m in merged.core.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(x), layer(x), atol=2e-5, rtol=1e-5)
    assert count_parameters(merged) == merged.num_params == bottleneck_size(d_in, d_in, d_out, d_out, patch)


# --------------------------------------------------------------------------------------------------
# Pruning a zero-score direction changes nothing; selection; the size check
# --------------------------------------------------------------------------------------------------

def test_pruning_zero_score_directions_leaves_the_network_output_unchanged():
    torch.manual_seed(6)
    model = mlp((1, 1, 6), 3, hidden=5, n_layers=1, noise=False).double()
    with torch.no_grad():
        model[4].weight[:, 2] = 0.0  # hidden unit 2 of layer 1 feeds nothing: a zero-gradient output direction
    x = torch.randn(64, 1, 1, 6, dtype=torch.float64)
    x[..., 0] = 0.0  # input feature 0 never varies: a zero-variance input direction
    ed = EigenDamage(batch_size=16).fit(model, TensorSplit(x, torch.zeros(64, dtype=torch.long)), device=CPU, seed=0)
    sc = ed.scores["1"]
    zero_cols, zero_rows = (sc.cols == 0).nonzero().squeeze(1), (sc.rows == 0).nonzero().squeeze(1)
    assert zero_cols.numel() >= 1 and zero_rows.numel() >= 1
    keep_in = (sc.cols > 0).nonzero().squeeze(1)
    keep_out = (sc.rows > 0).nonzero().squeeze(1)
    pruned = nn.Sequential(*model)
    pruned[1] = EigenBottleneck.from_layer(model[1], ed.bases["1"], sc.w_star, keep_out, keep_in)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), atol=1e-10, rtol=0)
        assert not torch.allclose(pruned[1](x.flatten(1)), model[1](x.flatten(1)))  # the layer itself did change


def test_global_threshold_per_layer_cap_and_keep_one():
    t = torch.tensor
    scores = {
        "a": (t([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]), t([50.0, 60.0])),
        "b": (t([0.1, 0.2, 30.0, 40.0]), t([0.3, 0.4, 0.5, 70.0])),
        "c": (t([0.01, 0.02]), t([0.03, 0.05])),
    }
    keep = select(scores, 0.5, cap=0.95)  # 22 values: τ = sorted[11] = 3, keep > 3
    assert keep["a"][0].tolist() == [3, 4, 5, 6, 7] and keep["a"][1].tolist() == [0, 1]
    assert keep["b"][0].tolist() == [2, 3] and keep["b"][1].tolist() == [3]
    assert keep["c"][0].tolist() == [1] and keep["c"][1].tolist() == [1]  # all below τ: keep the best one
    keep = select(scores, 0.8, cap=0.5)  # τ = sorted[17] = 30: rows of "a" fall back to their own median
    assert keep["a"][0].tolist() == [5, 6, 7]  # > sorted(a rows)[int(8 · 0.5)] = 5
    assert keep["a"][1].tolist() == [0, 1] and keep["b"][0].tolist() == [3]
    keep = select(scores, 0.8, cap=0.95)  # cap quantile sorted[7] = 8: nothing above it, keep the best
    assert keep["a"][0].tolist() == [7]
    keep = select(scores, 0.0, cap=0.95)  # τ = the minimum: only it goes
    assert sum(r.numel() + c.numel() for r, c in keep.values()) == 21
    keep = select({"z": (torch.zeros(3), torch.zeros(2))}, 0.5, cap=0.95)  # all tied at 0: one unit each
    assert keep["z"][0].numel() == 1 and keep["z"][1].numel() == 1


def test_size_check_keeps_small_layers_dense():
    # LeNet5 conv1 (1 → 6, 5x5, bias): 156 parameters; a bottleneck on 2 input directions is larger
    assert bottleneck_size(2, 2, 6, 6, 25) > 156 and bottleneck_size(2, 1, 3, 6, 25) <= 156
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 40), nn.Tanh(), nn.Linear(40, 3))
    x = torch.randn(128, 3)
    ed = EigenDamage().fit(model, TensorSplit(x, torch.zeros(128, dtype=torch.long)), device=CPU, seed=0)
    pruned = ed.prune(model, 0.3, cap=0.95)
    s = ed.last_summary
    for name, rec in s.items():
        assert rec["rebuilt"] == (bottleneck_size(rec["cols"], rec["cols_kept"], rec["rows_kept"], rec["rows"], 1)
                                  <= rec["params_before"])
        assert isinstance(pruned.get_submodule(name), EigenBottleneck if rec["rebuilt"] else nn.Linear)
    assert not s["0"]["rebuilt"]  # 4x(3+1): any bottleneck with r_in = 4 is larger
    assert count_parameters(pruned) <= count_parameters(model)


# --------------------------------------------------------------------------------------------------
# fold_noise: the base network with the noise folded in as E[θ]·mask (bmrs.run.posthoc docstring; notebook 07)
# --------------------------------------------------------------------------------------------------

def _small_resnet():
    from bmrs.nn.models import resnet
    return resnet(18, 10, image_size=32)


def _small_vit():
    from bmrs.nn.models import vit
    return vit(10, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.mark.parametrize("build", [
    lambda: mlp((1, 32, 32), 10, hidden=30, n_layers=3),
    lambda: lenet5(1),
    lambda: lenet5(3),
    _small_resnet,
    _small_vit,
], ids=["mlp", "lenet5", "lenet5-rgb", "resnet18", "vit"])
def test_fold_noise_gives_identical_eval_outputs(build):
    torch.manual_seed(7)
    model = build()
    _randomise_noise(model)
    model.eval()
    folded = fold_noise(model)
    assert not any(isinstance(m, MultiplicativeNoise) for m in folded.modules())
    assert any(True for _ in noise_layers(model))  # the original is untouched
    x = model.example_input(4).normal_()
    with torch.no_grad():
        ref, out = model(x), folded(x)
    torch.testing.assert_close(out, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-5)


# --------------------------------------------------------------------------------------------------
# LeNet5: parameter counts with rotations, MACs, digits smoke run, iterative rounds, C-OBD
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from bmrs.run import data
    try:
        return data.load("digits", network="lenet5", seed=1, limit_train=300, limit_test=150,
                         root=tmp_path_factory.mktemp("data"), cache=False)
    except Exception as exc:  # scikit-learn missing: fall back to a synthetic split
        pytest.skip(f"digits unavailable: {exc}")


@pytest.fixture(scope="module")
def trained_lenet(digits):
    torch.manual_seed(0)
    model = lenet5(1, noise=False)
    cfg = TrainConfig(lr=3e-3, batch_size=32, kl_weight=0.0)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        train_epoch(model, digits.train, opt, cfg=cfg, device=CPU, generator=gen)
    return model


@pytest.fixture(scope="module")
def fitted(trained_lenet, digits):
    return EigenDamage(batch_size=64).fit(trained_lenet, digits, device=CPU, seed=0)


def test_lenet_parameter_counts_include_rotations_and_fall_with_the_ratio(trained_lenet, fitted):
    dense = count_parameters(trained_lenet)
    assert set(fitted.scores) == {"0", "4", "9", "12"}  # every Linear/Conv except the classifier (15)
    counts = []
    for ratio in (0.1, 0.5, 0.9):
        pruned = fitted.prune(trained_lenet, ratio)
        necks = [m for m in pruned.modules() if isinstance(m, EigenBottleneck)]
        removed = sum(r["params_before"] - r["params_after"] for r in fitted.last_summary.values())
        assert count_parameters(pruned) == dense - removed
        assert sum(p.numel() for p in pruned.parameters()) == count_parameters(pruned)
        assert all(pruned.get_submodule(n.removesuffix(".core") if n.endswith(".core") else n) is not None
                   for n in fitted.last_summary)
        for m in necks:  # rotations are parameters and are counted
            assert {n for n, _ in m.named_parameters()} == {"q_in", "q_out", "core.weight"}
        counts.append(count_parameters(pruned))
    assert counts[0] >= counts[1] >= counts[2] and counts[2] < 0.5 * dense
    frozen = EigenDamage(trainable_rotations=False)
    frozen.bases = fitted.bases
    assert count_parameters(frozen.prune(trained_lenet, 0.9)) == counts[2]  # frozen rotations still counted
    x = trained_lenet.example_input(1)
    assert count_macs(fitted.prune(trained_lenet, 0.9), x) < count_macs(trained_lenet, x)
    assert fitted.prune(trained_lenet, 0.9)(x).shape == (1, 10)


def test_smoke_fit_prune_finetune_on_digits(trained_lenet, fitted, digits):
    cfg = TrainConfig(lr=1e-3, batch_size=32, kl_weight=0.0)
    for ratio in (0.5, 0.9):  # at 0.5 the size check may keep every LeNet5 layer dense; 0.9 rebuilds
        pruned = fitted.prune(trained_lenet, ratio)
        opt = make_optimizer(pruned, cfg)
        stats = train_epoch(pruned, digits.train, opt, cfg=cfg, device=CPU, generator=torch.Generator().manual_seed(0))
        acc = evaluate(pruned, digits.test, device=CPU)["acc"]
        assert math.isfinite(stats["ce"]) and math.isfinite(acc) and 0.0 <= acc <= 100.0
    in_optimizer = {id(q) for g in opt.param_groups for q in g["params"]}
    rotations = [p for n, p in pruned.named_parameters() if n.endswith(("q_in", "q_out"))]
    # rotations are fine-tuned (the authors' configs: `fix_rotation: false`)
    assert rotations and all(id(p) in in_optimizer for p in rotations)
    assert recalibrate_bn(pruned, digits, device=CPU) is pruned  # no BatchNorm: a no-op


def test_iterative_rounds_merge_bases(trained_lenet, digits):
    cfg = TrainConfig(lr=1e-3, batch_size=32, kl_weight=0.0)
    few = TensorSplit(digits.train.x[:64], digits.train.y[:64])

    def finetune(model, k):
        train_epoch(model, few, make_optimizer(model, cfg), cfg=cfg, device=CPU,
                    generator=torch.Generator().manual_seed(k))

    # the paper's 0.5 / cap 0.5 cannot shrink LeNet5's layers below the size check; 0.8 / 0.95 can
    ed = EigenDamage(batch_size=64, n_batches=2)
    final, history = ed.iterative(trained_lenet, digits, rounds=2, ratio=0.8, cap=0.95, finetune=finetune,
                                  device=CPU, seed=0,
                                  evaluate=lambda m, k: {"test_acc": evaluate(m, digits.test, device=CPU)["acc"]})
    assert [h["round"] for h in history] == [1, 2]
    assert history[1]["params"] < history[0]["params"] < count_parameters(trained_lenet)
    assert all(math.isfinite(h["test_acc"]) for h in history)
    necks = [m for m in final.modules() if isinstance(m, EigenBottleneck)]
    assert necks and all(not any(isinstance(c, EigenBottleneck) for c in m.core.modules()) for m in necks)
    assert any(n.endswith(".core") for n in ed.last_summary)  # round 2 re-fitted the cores


def test_bn_recalibration_updates_running_statistics():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    split = TensorSplit(torch.randn(40, 1, 8, 8) * 3 + 2, torch.zeros(40, dtype=torch.long))
    model.eval()
    recalibrate_bn(model, split, device=CPU, batch_size=40, reset=True)
    with torch.no_grad():
        h = model[0](split.x)
    torch.testing.assert_close(model[1].running_mean, h.mean((0, 2, 3)), atol=1e-5, rtol=1e-5)
    assert not model.training and model[1].momentum == 0.1


def test_cobd_fisher_matches_per_example_gradients():
    torch.manual_seed(8)
    model = lenet5(1)
    _randomise_noise(model, prune=0.0)
    x, y = torch.randn(12, 1, 32, 32), torch.randint(0, 10, (12,))
    crit = COBD(batch_size=5, labels="true")
    crit.fit(model, TensorSplit(x, y), device=CPU, seed=0)
    names = ["0", "4", "9", "12"]
    mods = [model.get_submodule(n) for n in names]
    params = [p for m in mods for p in (m.weight, m.bias)]
    sq = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    model.eval()
    for i in range(12):
        grads = torch.autograd.grad(F.cross_entropy(model(x[i:i + 1]), y[i:i + 1]), params)
        for s, gr in zip(sq, grads):
            s += gr.double().square() / 12
    for k, n in enumerate(names):
        fw, fb = crit.fisher[f"{n}.weight"]
        torch.testing.assert_close(fw, sq[2 * k], rtol=1e-4, atol=1e-10)
        torch.testing.assert_close(fb, sq[2 * k + 1], rtol=1e-4, atol=1e-10)
    scores = crit.scores(model)
    w, b = model[9].weight.detach().double(), model[9].bias.detach().double()
    torch.testing.assert_close(scores["11"], (w.square() * sq[4]).sum(1) + b.square() * sq[5], rtol=1e-4, atol=0)


def test_cobd_scores_units_and_prunes_a_global_fraction(digits):
    torch.manual_seed(9)
    model = lenet5(1)
    _randomise_noise(model, prune=0.0)
    crit = COBD(max_batches=3)
    assert crit.name == "C-OBD" and crit.ascending
    crit.fit(model, digits, device=CPU, seed=0)
    scores = crit.scores(model)
    assert {n: s.numel() for n, s in scores.items()} == {n: l.num_units for n, l in noise_layers(model)}
    assert all(bool((s >= 0).all()) and s.dtype == torch.float64 for s in scores.values())
    result = prune_to_fraction(model, crit, 0.3)
    assert result.units_total == 226 and result.units_total - result.units_kept == round(0.3 * 226)
    flat = torch.cat([scores[n] for n in scores])
    masks = torch.cat([l.mask for _, l in noise_layers(model)]).bool()
    assert flat[~masks].max() <= flat[masks].min()  # the lowest-scoring units were masked
