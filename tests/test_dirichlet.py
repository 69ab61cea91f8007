"""Dirichlet pruning baseline (Adamczewski & Park, AISTATS 2021, arXiv:2011.05985; run as in notebook 07):
KL, switches, sample/label pairing, fit, pruning, determinism."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet as TorchDirichlet
from torch.distributions import kl_divergence

from bmrs.prune.dirichlet import (SOFTPLUS_INV_ONE, Dirichlet, DirichletSwitch, code_beta, dirichlet_kl,
                                      mc_cross_entropy)
from bmrs.prune.criteria import prune_to_fraction
from bmrs.nn.models import lenet5, mlp
from bmrs.nn.noise import noise_layers

try:  # the offline scikit-learn digits through the project's data API
    from bmrs.run import data as data_mod

    DIGITS = data_mod.load("digits", network="lenet5", seed=0)
except Exception:  # pragma: no cover - data module unavailable: small synthetic splits instead
    DIGITS = None


class _Bundle:
    def __init__(self, train, val):
        self.train, self.val = train, val


def _synthetic_bundle(n: int = 300, seed: int = 0):
    from bmrs.run.data import TensorSplit

    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 32, 32, generator=g) * 0.1
    x[torch.arange(n), 0, y * 3, :] += 1.0  # a learnable class-dependent stripe
    return _Bundle(TensorSplit(x, y), TensorSplit(x[:60], y[:60]))


@pytest.fixture(scope="module")
def bundle():
    return DIGITS if DIGITS is not None else _synthetic_bundle()


def _phi_cases():
    g = torch.Generator().manual_seed(0)
    cases = []
    for d in (2, 5, 37):
        for a0 in (0.1, 0.5, 2.0):
            log_phi = torch.empty(d, dtype=torch.float64).uniform_(math.log(1e-3), math.log(50.0), generator=g)
            cases.append((log_phi.exp(), a0))
    cases.append((torch.full((4,), 1e-3, dtype=torch.float64), 0.5))  # the clamp floor everywhere
    cases.append((torch.tensor([1e-3, 1e-3, 300.0], dtype=torch.float64), 2.0))
    return cases


# ------------------------------------------------------------------------------------------------
# KL(Dir(phi) || Dir(alpha0 1))
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phi,alpha0", _phi_cases())
def test_kl_matches_torch_kl_divergence(phi, alpha0):
    ref = kl_divergence(TorchDirichlet(phi), TorchDirichlet(torch.full_like(phi, alpha0)))
    got = dirichlet_kl(phi, alpha0)
    assert got.dtype == torch.float64 and got >= 0
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-10)
    # float32 input: computed in float64, returned in float32
    got32 = dirichlet_kl(phi.float(), alpha0)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("phi,alpha0", [
    ([0.05, 0.3, 1.0, 4.0, 0.7, 2.5, 0.1, 9.0, 0.5, 1.5], 0.5),   # D = 10 with small concentrations
    ([0.05, 0.3, 1.0, 4.0, 0.7, 2.5, 0.1, 9.0, 0.5, 1.5], 2.0),
    ([0.2, 3.0, 0.8], 0.1),
    ([6.0, 6.0, 0.4, 1.0, 2.0, 1.0], 1.0),
])
def test_kl_matches_a_monte_carlo_estimate(phi, alpha0):
    phi = torch.tensor(phi, dtype=torch.float64)
    q, p = TorchDirichlet(phi), TorchDirichlet(torch.full_like(phi, alpha0))
    torch.manual_seed(1)
    s = q.sample((400_000,))
    diff = q.log_prob(s) - p.log_prob(s)
    mc, se = diff.mean(), diff.std() / math.sqrt(diff.numel())
    closed = dirichlet_kl(phi, alpha0)
    assert abs(closed - mc) < 4.5 * se + 1e-3, (float(closed), float(mc), float(se))
    assert se < 0.02 * closed  # the estimate is tight relative to the value it checks


def test_kl_is_zero_at_the_prior_and_batches():
    for d, a0 in ((1, 0.5), (3, 0.5), (10, 2.0), (64, 0.1), (7, 1e-3)):
        assert abs(float(dirichlet_kl(torch.full((d,), a0, dtype=torch.float64), a0))) < 1e-10
    phi = torch.rand(4, 6, dtype=torch.float64) + 0.1
    batched = dirichlet_kl(phi, 0.5)
    assert batched.shape == (4,)
    torch.testing.assert_close(batched, torch.stack([dirichlet_kl(r, 0.5) for r in phi]))
    with pytest.raises(ValueError, match="alpha0 must be > 0"):
        dirichlet_kl(phi, 0.0)


def test_kl_gradient_reaches_theta():
    sw = DirichletSwitch(6)
    with torch.no_grad():
        sw.theta.copy_(torch.linspace(-2.0, 2.0, 6))
    dirichlet_kl(sw.concentration(), 0.5).backward()
    assert sw.theta.grad is not None and torch.isfinite(sw.theta.grad).all() and (sw.theta.grad != 0).all()
    # numerical derivative of the KL with respect to theta in float64
    theta = torch.linspace(-2.0, 2.0, 6, dtype=torch.float64, requires_grad=True)
    kl = lambda t: dirichlet_kl(F.softplus(t), 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(kl, (theta,))


# ------------------------------------------------------------------------------------------------
# The switch
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_space", [True, False])
def test_samples_lie_on_the_scaled_simplex_and_gradients_are_unbiased(log_space):
    torch.manual_seed(0)
    sw = DirichletSwitch(5, samples=200_000, log_space_sampling=log_space)
    with torch.no_grad():
        sw.theta.copy_(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]))  # phi from 0.05 (boosted) to 3
    u = sw.sample()
    assert u.shape == (200_000, 5) and (u >= 0).all()
    torch.testing.assert_close(u.detach().sum(1), torch.full((200_000,), 5.0), rtol=0, atol=1e-4)
    # marginals: s_j ~ Beta(phi_j, phi0 - phi_j), so E[u_j] = D m_j and Var[u_j] = D² m_j (1 - m_j)/(phi0 + 1)
    m = sw.mean().detach() / 5
    phi0 = sw.concentration().detach().sum()
    torch.testing.assert_close(u.detach().mean(0), 5 * m, rtol=0.02, atol=0.01)
    torch.testing.assert_close(u.detach().var(0), 25 * m * (1 - m) / (phi0 + 1), rtol=0.03, atol=0.01)
    # pathwise gradient of E[w.u] equals the gradient of w.E[u] (the reparameterisation is correct)
    w = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.7])
    (u @ w).mean().backward()
    mc_grad = sw.theta.grad.clone()
    sw.theta.grad = None
    (sw.mean() @ w).backward()
    torch.testing.assert_close(mc_grad, sw.theta.grad, rtol=0.05, atol=0.01)
    unscaled = DirichletSwitch(5, samples=3, rescale=False, log_space_sampling=log_space).sample()
    torch.testing.assert_close(unscaled.detach().sum(1), torch.ones(3))


def test_tiny_concentrations_stay_finite():
    torch.manual_seed(0)
    sw = DirichletSwitch(8, samples=1000, theta_init=-30.0)  # phi clamped to 1e-3 everywhere
    assert torch.equal(sw.concentration(), torch.full((8,), 1e-3))
    u = sw.sample()
    assert torch.isfinite(u).all()
    torch.testing.assert_close(u.detach().sum(1), torch.full((1000,), 8.0))
    with torch.no_grad():
        sw.theta[0] = 3.0  # one large, seven tiny concentrations
    u = sw.sample()
    u.pow(2).mean().backward()
    assert torch.isfinite(sw.theta.grad).all()


def test_eval_mode_is_the_posterior_mean_and_the_identity_at_init():
    x = torch.randn(4, 6, 3, 3)
    sw = DirichletSwitch(6).eval()
    torch.testing.assert_close(sw(x), x)  # phi uniform: D phi/phi0 = 1
    with torch.no_grad():
        sw.theta.copy_(torch.linspace(-1.0, 1.0, 6))
    phi = F.softplus(sw.theta.detach())
    torch.testing.assert_close(sw(x), x * (6 * phi / phi.sum()).view(1, 6, 1, 1))
    assert abs(F.softplus(torch.tensor(SOFTPLUS_INV_ONE)).item() - 1.0) < 1e-6


def test_each_example_keeps_its_label_across_the_samples():
    k, b, d = 3, 4, 5
    x = torch.arange(b * d, dtype=torch.float32).reshape(b, d) + 1.0  # distinct examples
    sw = DirichletSwitch(d, samples=k)
    with torch.no_grad():
        sw.theta.copy_(torch.linspace(-1.0, 2.0, d))
    torch.manual_seed(3)
    out = sw(x, batch_size=b)  # broadcast over the samples
    u = sw.last_sample
    assert out.shape == (k * b, d)
    for kk in range(k):
        for bb in range(b):
            torch.testing.assert_close(out[kk * b + bb], x[bb] * u[kk])  # row k·B + b = example b, sample k
    torch.manual_seed(3)
    stacked = sw(x.repeat(k, 1))  # input already stacked sample-major: same rows, same samples
    torch.testing.assert_close(stacked, out)
    # a second switch downstream sees K·B rows and keeps the pairing
    torch.manual_seed(4)
    again = DirichletSwitch(d, samples=k)(out, batch_size=b)
    assert again.shape == (k * b, d)

    # The loss pairs every sample of example b with y_b: (1/K) sum_k CE(logits_k, y).
    logits = torch.full((k, b, 10), -5.0)
    y = torch.tensor([2, 7, 1, 4])
    for bb in range(b):
        logits[:, bb, y[bb]] = 5.0 + torch.arange(k, dtype=torch.float32)  # every sample is right
    flat = logits.reshape(k * b, 10)
    manual = torch.stack([F.cross_entropy(logits[kk], y) for kk in range(k)]).mean()
    torch.testing.assert_close(mc_cross_entropy(flat, y, k), manual)
    torch.testing.assert_close(mc_cross_entropy(flat, y, k, average_logits=True), F.cross_entropy(logits.mean(0), y))
    assert float(manual) < 1e-3
    # the released code's reshape to (B, K, classes) averages different examples and pays for it
    mixed = F.cross_entropy(flat.reshape(b, k, 10).mean(1), y)
    assert float(mixed) > 1.0


def test_switch_on_the_token_axis_and_bad_shapes():
    k, b, t, d = 2, 3, 4, 6
    sw = DirichletSwitch(d, dim=-1, samples=k)
    x = torch.randn(b, t, d)
    out = sw(x, batch_size=b)
    u = sw.last_sample
    torch.testing.assert_close(out.reshape(k, b, t, d), x.unsqueeze(0) * u.view(k, 1, 1, d))
    with pytest.raises(ValueError, match="must have 6 entries"):
        sw(torch.randn(b, d, t))
    with pytest.raises(ValueError, match="not a multiple"):
        sw(torch.randn(3, t, d))


# ------------------------------------------------------------------------------------------------
# The criterion on real models
# ------------------------------------------------------------------------------------------------

def _briefly_trained_lenet(bundle, steps: int = 10) -> torch.nn.Module:
    """LeNet5 with noise layers after a few Adam steps on the weights. The noise layers run in eval mode
    (the fixed scale E[θ]·mask, here made non-trivial) so that the test does not wait for the sampler's
    compiled kernels; the network is otherwise the one BMRS trains."""
    torch.manual_seed(0)
    model = lenet5(1, 10)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in noise_layers(model):
            layer.mu.copy_(torch.rand(layer.num_units, generator=g) - 1.0)
            layer.log_sigma.fill_(-2.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = bundle.train.x, bundle.train.y
    model.eval()
    for i in range(steps):
        start = (i * 64) % (len(y) - 64)
        opt.zero_grad()
        F.cross_entropy(model(x[start:start + 64]), y[start:start + 64]).backward()
        opt.step()
    return model


def _snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [(n, p.requires_grad) for n, p in model.named_parameters()],
            [(n, type(m).__name__, m.training) for n, m in model.named_modules()])


def _assert_unchanged(model, snap):
    state, flags, modules = snap
    now = model.state_dict()
    assert list(now) == list(state)
    for key, value in state.items():
        assert now[key].dtype == value.dtype and torch.equal(now[key], value), key
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == flags
    assert [(n, type(m).__name__, m.training) for n, m in model.named_modules()] == modules
    for _, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_fit_leaves_the_model_identical_scores_every_unit_and_prunes(bundle):
    model = _briefly_trained_lenet(bundle)
    model.train()
    model[0].bias.requires_grad_(False)  # an unusual flag that must survive
    with torch.no_grad():
        dict(noise_layers(model))["2"].mask[1] = 0.0  # and an existing mask
    snap = _snapshot(model)
    rng = torch.get_rng_state()
    crit = Dirichlet(lr=1e-2, epochs=1, max_steps=6, batch_size=64)
    crit.fit(model, bundle, device=torch.device("cpu"), seed=0)
    _assert_unchanged(model, snap)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG stream is untouched

    scores = crit.scores(model)
    layers = dict(noise_layers(model))
    assert list(scores) == list(layers)
    for name, layer in layers.items():
        s = scores[name]
        assert s.shape == (layer.num_units,) and s.dtype == torch.float64
        assert torch.isfinite(s).all() and (s >= 0).all()
        torch.testing.assert_close(s.sum(), torch.tensor(float(layer.num_units), dtype=torch.float64))  # D·mean
        torch.testing.assert_close(crit.layer_scores(layer, None), s)
    v = crit.variant
    assert v["switches_moved"] and all(d > 0 for d in v["max_abs_delta_theta"].values())
    assert v["training"] == "joint" and v["alpha0"] == 0.5 and v["samples"] == 5
    assert v["runs"][0]["lazy_sample_broadcast"] and v["runs"][0]["steps"] == 6
    assert "val_acc_base" in v and "val_acc_mean_switches" in v
    assert crit.name == "Dirichlet" and crit.ascending

    result = prune_to_fraction(model, crit, 0.3)
    total = sum(l.num_units for l in layers.values())
    assert result.units_total == total and result.units_kept == total - round(0.3 * total)
    assert sum(int((l.mask == 0).sum()) for l in layers.values()) == round(0.3 * total)
    # the pruned units are the globally least important
    flat = torch.cat([scores[n] for n in layers])
    pruned = torch.cat([layers[n].mask == 0 for n in layers])
    assert flat[pruned].max() <= flat[~pruned].min()


def test_switches_learn_that_disconnected_units_do_not_matter(bundle):
    """The method works: units whose outgoing weights are zero lose posterior mass to the live units."""
    torch.manual_seed(0)
    model = mlp((1, 32, 32), 10, hidden=20, n_layers=1).eval()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = bundle.train.x, bundle.train.y
    for i in range(40):
        start = (i * 64) % (len(y) - 64)
        opt.zero_grad()
        F.cross_entropy(model(x[start:start + 64]), y[start:start + 64]).backward()
        opt.step()
    with torch.no_grad():
        model[-1].weight[:, :10] = 0.0  # units 0..9 of the last hidden layer feed nothing
    last = [n for n, _ in noise_layers(model)][-1]
    crit = Dirichlet(lr=1e-2, epochs=2, batch_size=64, max_steps=15, diagnostics=False)
    crit.fit(model, bundle, device="cpu", seed=0)
    imp = crit.importance_[last]
    assert imp[:10].max() < 1.0 < imp[10:].min()  # every dead unit below uniform, every live one above
    assert crit.scores(model)[last].argsort()[:10].sort().values.tolist() == list(range(10))


def test_fit_is_deterministic_given_the_seed(bundle):
    torch.manual_seed(0)
    model = mlp((1, 32, 32), 10, hidden=24, n_layers=1)
    kw = dict(lr=1e-2, epochs=2, max_steps=4, batch_size=50, diagnostics=False)
    a, b, c = Dirichlet(**kw), Dirichlet(**kw), Dirichlet(**kw)
    a.fit(model, bundle, device="cpu", seed=5)
    torch.manual_seed(123)  # the global RNG state of the caller does not matter
    b.fit(model, bundle, device="cpu", seed=5)
    c.fit(model, bundle, device="cpu", seed=6)
    for name in a.importance_:
        assert torch.equal(a.importance_[name], b.importance_[name])
        assert not torch.equal(a.importance_[name], c.importance_[name])


def test_code_faithful_variant_and_uniform_allocation(bundle):
    torch.manual_seed(0)
    model = mlp((1, 32, 32), 10, hidden=20, n_layers=2)
    snap = _snapshot(model)
    crit = Dirichlet(code_faithful=True, alpha0=2.0, epochs=1, max_steps=3, batch_size=40, lr=1e-2,
                     allocation="uniform", diagnostics=False)
    assert crit.theta_init == -1.0 and crit.joint is False
    crit.fit(model, bundle, device="cpu", seed=0)
    _assert_unchanged(model, snap)
    v = crit.variant
    assert v["training"] == "layer-by-layer" and len(v["runs"]) == 3
    assert [r["layers"] for r in v["runs"]] == [[n] for n, _ in noise_layers(model)]
    assert v["likelihood"].startswith("cross-entropy of the sample-averaged logits")
    assert v["kl_weight"].startswith("beta(epoch)/batch_size")
    assert crit.name == "Dirichlet (code, alpha0=2, uniform per layer)"
    assert code_beta(1) == 1 / 1.6e6 and code_beta(10**9) == 1.0
    prune_to_fraction(model, crit, 0.5)
    assert all(layer.kept == 10 for _, layer in noise_layers(model))  # the same fraction in every layer


class _ResidualNet(torch.nn.Module):
    """Not an nn.Sequential: conv → BN → noise → ReLU with a residual addition (a mini ResNet block)."""

    def __init__(self) -> None:
        super().__init__()
        from bmrs.nn.noise import MultiplicativeNoise

        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.noise = MultiplicativeNoise(8)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.noise(self.bn(self.conv(h))))
        return self.head(h.mean((2, 3)))


def test_non_sequential_models_replicate_the_input_and_stay_unchanged():
    from bmrs.run.data import TensorSplit

    g = torch.Generator().manual_seed(0)
    split = TensorSplit(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))
    residual = _ResidualNet()
    with torch.no_grad():
        residual.bn.running_mean.uniform_(-0.1, 0.1)
        residual.bn.running_var.uniform_(0.5, 2.0)
    models = [residual]
    try:
        from bmrs.nn.models import vit

        models.append(vit(10, image_size=32, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32))
    except ImportError:  # pragma: no cover - torchvision missing
        pass
    for model in models:
        model.train()  # BN in train mode before fit: fit must use (and keep) the running statistics
        snap = _snapshot(model)
        crit = Dirichlet(samples=2, epochs=1, max_steps=2, batch_size=4, lr=1e-2, diagnostics=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            crit.fit(model, split, device="cpu", seed=0)
        _assert_unchanged(model, snap)  # BN running_mean/var and num_batches_tracked included
        run = crit.variant["runs"][0]
        assert not run["lazy_sample_broadcast"] and run["steps"] == 2
        # the movement check (Dirichlet-sampled switches can stay at their initial values, as a third-party
        # reproduction of `kamadforge/dirichlet_pruning` reported) warns exactly when it fails
        warned = any("did not move" in str(w.message) for w in caught)
        assert warned == (not crit.variant["switches_moved"])
        scores = crit.scores(model)
        assert len(scores) == len(list(noise_layers(model))) and all((s >= 0).all() for s in scores.values())


def test_scores_before_fit_and_bad_settings_fail_clearly():
    crit = Dirichlet()
    model = mlp((1, 8, 8), hidden=5, n_layers=0)
    with pytest.raises(ValueError, match="call criterion.fit"):
        crit.scores(model)
    with pytest.raises(ValueError, match="call criterion.fit"):
        crit.layer_scores(next(noise_layers(model))[1], None)
    with pytest.raises(ValueError, match="alpha0 must be > 0.*allocation must be"):
        Dirichlet(alpha0=0.0, allocation="layerwise")
