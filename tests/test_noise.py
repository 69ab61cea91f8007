"""Tests of bmrs.nn.noise: the multiplicative noise layer (paper Eq. 1 and 7; released code modules/layers.py, LogUniform*PruningLayer) and the model KL term.

The fused training-mode sampler (noise._SampleNoise, closed-form backward) is compared with the
plain-autograd reference bmrs.core.distributions.sample_theta fed the very same uniforms, in values and in
gradients w.r.t. x, mu and log_sigma, including masked units and posteriors far outside [a, b].
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from bmrs.core import distributions as D
from bmrs.nn import noise as N

UNIT_MU = [0.0, -10.0, -19.5, -25.0, 3.0, -1000.0, 1000.0, -5.0, -15.0, -20.0, -19.999, -0.5, -1.0, -21.0]
UNIT_LOG_SIGMA = [-5.0, -2.0, 0.0, -1.0, -3.0, 2.0, 1.0, 5.0, -20.0, 0.5, -10.0, 1.0, 3.0, 0.0]
UNIT_MASK = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0]
F = len(UNIT_MU)
# units -25 (sigma e^-1), 3 (e^-3), -1000, 1000 lie far outside [a, b]: θ is pinned to a bound
FAR_OUTSIDE = [3, 4, 5, 6]

LAYOUTS = [((2000, F), 1), ((8, F, 5, 6), 1), ((6, 7, F), -1)]


def _layer(dtype=torch.float32, dim=1, mask=True, **kw):
    layer = N.MultiplicativeNoise(F, dim=dim, **kw).to(dtype)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor(UNIT_MU))
        layer.log_sigma.copy_(torch.tensor(UNIT_LOG_SIGMA))
        if mask:
            layer.mask.copy_(torch.tensor(UNIT_MASK, dtype=layer.mask.dtype))
    return layer


def _view(shape, dim):
    v = [1] * len(shape)
    v[dim] = -1
    return v


def _with_twin_generator(layer, seed):
    """Set layer.generator and return a generator cloned to the same state."""
    gen = torch.Generator().manual_seed(seed)
    twin = torch.Generator()
    twin.set_state(gen.get_state())
    layer.generator = gen
    return twin


# --------------------------------------------------------------------------------------------------
# Training mode: one θ per element, the unit axis
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", LAYOUTS, ids=["NF-dim1", "NCHW-dim1", "NTD-dim-1"])
def test_training_draws_a_theta_per_element_along_the_unit_axis(shape, dim):
    layer = N.MultiplicativeNoise(F, dim=dim)
    with torch.no_grad():  # well separated units with moderate spread
        layer.mu.copy_(torch.linspace(-18.0, -1.0, F))
        layer.log_sigma.fill_(-1.0)
    layer.train()
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.ones(shape)
    out = layer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    theta = out.movedim(dim, -1).reshape(-1, F)  # (elements per unit, units)
    assert bool(((theta >= math.exp(-20.0)) & (theta <= 1.0)).all())
    # every element of a unit gets its own draw
    per_unit = theta.shape[0]
    assert all(theta[:, j].unique().numel() >= 0.99 * per_unit for j in range(F))
    # the draws of unit j follow unit j's posterior: mean of log θ close to mu_j (sigma = e^-1, no truncation)
    mean_log = torch.log(theta).mean(0)
    se = math.exp(-1.0) / math.sqrt(per_unit)
    assert torch.allclose(mean_log, layer.mu.detach(), atol=6 * se)


# --------------------------------------------------------------------------------------------------
# The fused sampler equals sample_theta given the same uniforms: values and gradients
# --------------------------------------------------------------------------------------------------

def _fused_and_reference(shape, dim, dtype, seed=5):
    layer = _layer(dtype, dim)
    layer.train()
    twin = _with_twin_generator(layer, seed)
    data = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(shape, dtype=dtype, generator=data).requires_grad_()
    w = torch.randn(shape, dtype=dtype, generator=data)
    out = layer(x)
    (out * w).sum().backward()

    # reference: plain autograd through sample_theta, float64, same uniforms, per-element parameters
    y = N.draw_uniform(x.shape, dtype, x.device, twin)
    v = _view(shape, dim)
    mu_e = layer.mu.detach().double().view(v).expand(shape).clone().requires_grad_()
    ls_e = layer.log_sigma.detach().double().view(v).expand(shape).clone().requires_grad_()
    x64 = x.detach().double().requires_grad_()
    theta = D.sample_theta(mu_e, D.sigma_from_log_sigma(ls_e), uniform=y.double())
    out_ref = x64 * theta * layer.mask.double().view(v)
    (out_ref * w.double()).sum().backward()
    sum_dims = tuple(i for i in range(len(shape)) if i != dim % len(shape))
    ref = dict(out=out_ref.detach(), theta=theta.detach(), grad_x=x64.grad, y=y.double(),
               grad_mu=mu_e.grad.sum(sum_dims), grad_ls=ls_e.grad.sum(sum_dims),
               scale_mu=mu_e.grad.abs().sum(sum_dims), scale_ls=ls_e.grad.abs().sum(sum_dims),
               mu=mu_e.detach(), sigma=D.sigma_from_log_sigma(ls_e.detach()))
    return layer, x, out, ref


def _theta_tolerance(ref, dtype):
    """Bound on |Δ log θ| for the fused sampler vs the float64 reference. float64: ~1e-10. float32:
    rounding of 2γ − 1 (spacing u) moves the quantile z by u/φ(z), plus rounding of μ + σz:
    |Δx| <= 8 (u (|μ| + σ|z| + 1) + σ u / φ(z)), u = 2^-24."""
    if dtype == torch.float64:
        return torch.full_like(ref["theta"], 1e-10)
    u = 2.0**-24
    x = torch.log(ref["theta"])
    z = (x - ref["mu"]) / ref["sigma"]
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return 8.0 * (u * (ref["mu"].abs() + ref["sigma"] * z.abs() + 1.0) + ref["sigma"] * u / phi)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape,dim", LAYOUTS, ids=["NF-dim1", "NCHW-dim1", "NTD-dim-1"])
def test_fused_sampler_equals_sample_theta_values_and_gradients(shape, dim, dtype):
    layer, x, out, ref = _fused_and_reference(shape, dim, dtype)
    v = _view(shape, dim)
    mask = layer.mask.double().view(v).expand(shape)
    assert out.dtype == dtype and out.shape == shape
    # values: out = x θ mask; compare θ = out / x in log space where unmasked
    tol = _theta_tolerance(ref, dtype)
    live = (mask > 0) & (x.detach().abs() > 1e-3)
    theta_fused = (out.detach().double() / x.detach().double())
    dlog = (torch.log(theta_fused[live]) - torch.log(ref["theta"][live])).abs()
    assert bool((dlog <= tol[live]).all()), f"max |Δlog θ| = {dlog.max():.3g}"
    assert bool((out.detach()[mask == 0] == 0).all())  # masked units output exactly 0
    # grad w.r.t. x is θ·mask·w: same relative accuracy as θ
    gx_ref = ref["grad_x"]
    assert bool(((x.grad.double() - gx_ref).abs() <= tol * gx_ref.abs() * 1.01 + 1e-300).all())
    # grads w.r.t. mu, log_sigma: relative to the sum of |per-element contributions| of each unit
    rtol = 1e-10 if dtype == torch.float64 else 1e-3
    for got, want, scale in ((layer.mu.grad, ref["grad_mu"], ref["scale_mu"]),
                             (layer.log_sigma.grad, ref["grad_ls"], ref["scale_ls"])):
        err = (got.double() - want).abs()
        assert bool((err <= rtol * scale).all()), (err / scale.clamp_min(1e-300)).tolist()
    # masked units and units pinned far outside [a, b] get exactly zero gradient, the others do not
    masked = torch.tensor(UNIT_MASK) == 0
    assert bool((layer.mu.grad[masked] == 0).all()) and bool((layer.log_sigma.grad[masked] == 0).all())
    assert bool((layer.mu.grad[FAR_OUTSIDE] == 0).all())
    live_units = [j for j in range(F) if UNIT_MASK[j] and j not in FAR_OUTSIDE]
    assert bool((layer.mu.grad[live_units] != 0).all())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_layer_finite_on_dense_parameter_grid(dense_grid, dtype):
    """One unit per (mu, log_sigma) of the 41 x 26 grid: training forward/backward, KL and eval are finite."""
    mu, log_sigma = dense_grid
    layer = N.MultiplicativeNoise(mu.size).to(dtype)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor(mu))
        layer.log_sigma.copy_(torch.tensor(log_sigma))
    layer.generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, mu.size, dtype=dtype, requires_grad=True)
    out = layer(x)
    (out.sum() + N.model_kl(layer)).backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(layer.mu.grad).all() and torch.isfinite(layer.log_sigma.grad).all()
    assert torch.isfinite(layer.kl()).all()
    layer.eval()
    ev = layer(x.detach())
    assert torch.isfinite(ev).all() and ev.dtype == dtype


def test_far_outside_units_are_pinned_to_the_nearest_bound():
    layer = _layer(torch.float64, mask=False)
    layer.train()
    layer.generator = torch.Generator().manual_seed(0)
    theta = layer(torch.ones(500, F, dtype=torch.float64))
    bounds = {3: math.exp(-20.0), 4: 1.0, 5: math.exp(-20.0), 6: 1.0}
    for j, value in bounds.items():
        assert torch.allclose(theta[:, j], torch.full((500,), value, dtype=torch.float64), rtol=1e-15, atol=0)


def test_gradients_reach_mu_and_log_sigma_through_training_forward():
    torch.manual_seed(0)
    layer = N.MultiplicativeNoise(6)  # paper init: mu = 0, log_sigma = -5
    x = torch.randn(32, 6, requires_grad=True)
    loss = (layer(x) ** 2).sum() + layer.kl().mean()
    loss.backward()
    for p in (layer.mu, layer.log_sigma, x):
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).all()


def test_same_seed_gives_identical_outputs():
    layer = _layer()
    layer.train()
    x = torch.randn(16, F)
    torch.manual_seed(123)
    o1 = layer(x)
    torch.manual_seed(123)
    o2 = layer(x)
    o3 = layer(x)
    assert torch.equal(o1, o2) and not torch.equal(o2, o3)
    layer.generator = torch.Generator().manual_seed(9)
    o4 = layer(x)
    layer.generator = torch.Generator().manual_seed(9)
    assert torch.equal(o4, layer(x))


def test_draw_uniform_follows_the_torch_generator():
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    u1 = N.draw_uniform(torch.Size([1000, 3]), torch.float64, torch.device("cpu"), g1)
    u2 = N.draw_uniform(torch.Size([1000, 3]), torch.float64, torch.device("cpu"), g2)
    assert torch.equal(u1, u2) and u1.dtype == torch.float64 and u1.shape == (1000, 3)
    assert bool(((u1 >= 0) & (u1 < 1)).all()) and abs(u1.mean().item() - 0.5) < 0.02
    assert not torch.equal(u1, N.draw_uniform(torch.Size([1000, 3]), torch.float64, torch.device("cpu"), g1))
    assert N.draw_uniform(torch.Size([5]), torch.float32, torch.device("cpu"), g1).dtype == torch.float32


# --------------------------------------------------------------------------------------------------
# Eval mode: x E[θ] mask, cached
# --------------------------------------------------------------------------------------------------

def _expected(layer):
    return D.expected_theta(layer.mu.detach().double(), D.sigma_from_log_sigma(layer.log_sigma.detach().double()))


@pytest.mark.parametrize("shape,dim", LAYOUTS, ids=["NF-dim1", "NCHW-dim1", "NTD-dim-1"])
def test_eval_multiplies_by_expected_theta_times_mask(shape, dim):
    layer = _layer(torch.float64, dim)
    layer.eval()
    x = torch.randn(shape, dtype=torch.float64)
    scale = (_expected(layer) * layer.mask.double()).view(_view(shape, dim))
    torch.testing.assert_close(layer(x), x * scale, rtol=1e-14, atol=0)
    assert torch.equal(layer(x), layer(x))  # deterministic


def test_initial_layer_is_near_identity():
    """As in the released code (modules/layers.py): mu = 0, log_sigma = -5 at init, so E[θ] ≈ 0.995."""
    layer = N.MultiplicativeNoise(3)
    assert torch.equal(layer.mu, torch.zeros(3)) and torch.equal(layer.log_sigma, torch.full((3,), -5.0))
    assert torch.equal(layer.mask, torch.ones(3))
    assert layer.expected_theta().tolist() == pytest.approx([0.99465] * 3, abs=1e-5)


@pytest.fixture
def spy(monkeypatch):
    calls = []
    real = D._log_expected_theta

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(D, "_log_expected_theta", counting)
    return calls


def test_eval_cache_is_reused_and_mask_changes_apply_immediately(spy):
    layer = _layer()
    layer.eval()
    x = torch.ones(2, F)
    o1 = layer(x)
    o2 = layer(x)
    assert len(spy) == 1 and torch.equal(o1, o2)
    with torch.no_grad():
        layer.mask[0] = 0.0
    o3 = layer(x)
    assert o3[0, 0] == 0 and torch.equal(o3[:, 1:], o1[:, 1:])
    assert len(spy) == 1  # the mask is not part of the cached E[θ]
    layer.train()
    layer(x)
    layer.eval()
    layer(x)
    assert len(spy) == 1  # a train-mode call without a parameter change does not invalidate E[θ]


def test_eval_cache_recomputed_after_optimizer_step(spy):
    layer = _layer()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.eval()
    x = torch.ones(2, F)
    before = layer(x)
    layer.train()
    torch.manual_seed(0)
    (layer(torch.randn(8, F)).square().sum() + layer.kl().sum()).backward()
    opt.step()
    layer.eval()
    after = layer(x)
    assert len(spy) == 2 and not torch.equal(before, after)
    torch.testing.assert_close(after[0], (_expected(layer) * layer.mask.double()).float(), rtol=1e-6, atol=0)


def test_eval_cache_recomputed_after_load_state_dict(spy):
    layer = _layer()
    layer.eval()
    x = torch.ones(2, F)
    layer(x)
    other = N.MultiplicativeNoise(F)
    with torch.no_grad():
        other.mu.copy_(torch.linspace(-15.0, -2.0, F))
        other.log_sigma.fill_(0.5)
    layer.load_state_dict(other.state_dict())
    out = layer(x)
    assert len(spy) == 2
    torch.testing.assert_close(out[0], _expected(other).float() * other.mask, rtol=1e-6, atol=0)


def test_eval_cache_recomputed_after_in_place_update_under_no_grad():
    layer = _layer()
    layer.eval()
    x = torch.ones(1, F)
    layer(x)
    with torch.no_grad():
        layer.mu.add_(-2.0)
        layer.log_sigma.fill_(1.0)
    torch.testing.assert_close(layer(x)[0], (_expected(layer) * layer.mask.double()).float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("how", ["vector_to_parameters", "data_copy", "data_assign"])
def test_eval_cache_recomputed_after_writes_through_data(how):
    layer = N.MultiplicativeNoise(3)
    layer.eval()
    x = torch.ones(1, 3)
    layer(x)  # caches E[θ] ≈ 0.995 for mu = 0, log_sigma = -5
    new_mu, new_ls = torch.tensor([-5.0, -6.0, -7.0]), torch.tensor([0.0, 0.5, 1.0])
    if how == "vector_to_parameters":
        torch.nn.utils.vector_to_parameters(torch.cat([new_mu, new_ls]), layer.parameters())
    elif how == "data_copy":
        layer.mu.data.copy_(new_mu)
        layer.log_sigma.data.copy_(new_ls)
    else:
        layer.mu.data = new_mu.clone()
        layer.log_sigma.data = new_ls.clone()
    assert torch.equal(layer.mu.detach(), new_mu)
    torch.testing.assert_close(layer(x)[0], _expected(layer).float(), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------------------------------
# State dict, KL, model_kl
# --------------------------------------------------------------------------------------------------

def test_state_dict_round_trip():
    layer = _layer()
    sd = layer.state_dict()
    assert set(sd) == {"mu", "log_sigma", "mask"}
    fresh = N.MultiplicativeNoise(F)
    fresh.load_state_dict(sd)
    for k in sd:
        assert torch.equal(fresh.state_dict()[k], sd[k])
    x = torch.randn(4, F)
    layer.eval(), fresh.eval()
    assert torch.equal(layer(x), fresh(x))
    layer.train(), fresh.train()
    layer.generator, fresh.generator = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(layer(x), fresh(x))


def test_layer_kl_matches_kl_log_uniform_with_clamped_sigma():
    layer = _layer(torch.float64, a=-18.0, b=0.5)
    with torch.no_grad():
        layer.log_sigma[0] = 9.0  # clamped to 5
        layer.log_sigma[1] = -30.0  # clamped to -20
    kl = layer.kl()
    assert kl.dtype == torch.float64 and kl.shape == (F,)
    sigma = torch.exp(torch.clamp(layer.log_sigma.detach(), -20.0, 5.0))
    torch.testing.assert_close(kl.detach(), D.kl_log_uniform(layer.mu.detach(), sigma, a=-18.0, b=0.5), rtol=1e-14, atol=0)
    kl.sum().backward()
    assert layer.log_sigma.grad[0] == 0 and layer.log_sigma.grad[1] == 0  # outside the clamp
    assert torch.isfinite(layer.mu.grad).all()


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 5)
        self.n1 = N.MultiplicativeNoise(5)
        self.block = nn.Sequential(nn.Conv2d(1, 3, 1), N.MultiplicativeNoise(3, a=-12.0, b=1.0))
        self.n3 = N.MultiplicativeNoise(7, dim=-1)
        with torch.no_grad():
            for i, layer in enumerate((self.n1, self.block[1], self.n3)):
                layer.mu.copy_(torch.linspace(-15.0 + i, 1.0 - i, layer.num_units))
                layer.log_sigma.copy_(torch.linspace(-3.0, 2.0 + i, layer.num_units))


def test_model_kl_mean_and_sum():
    net = _Net()
    layers = [net.n1, net.block[1], net.n3]
    per_layer = [D.kl_log_uniform(l.mu.detach(), l.sigma.detach(), a=l.a, b=l.b) for l in layers]
    mean = N.model_kl(net, "mean")
    assert mean.item() == pytest.approx(float(np.mean([k.mean().item() for k in per_layer])), rel=1e-6, abs=0)
    assert N.model_kl(net).item() == mean.item()  # "mean" is the default (released code train.py: --kl_averaging mean)
    total = N.model_kl(net, "sum")
    assert total.item() == pytest.approx(float(sum(k.sum().item() for k in per_layer)), rel=1e-6, abs=0)
    # the mean is over layers of per-layer means, not over all units
    all_units = torch.cat(per_layer).mean().item()
    assert abs(mean.item() - all_units) > 1e-3
    # differentiable: gradients reach every mu and log_sigma
    total.backward()
    for l in layers:
        assert torch.isfinite(l.mu.grad).all() and (l.log_sigma.grad != 0).all()


def test_model_kl_without_noise_layers_is_zero():
    out = N.model_kl(nn.Sequential(nn.Linear(3, 3), nn.ReLU()))
    assert out.shape == () and out.item() == 0.0
    assert N.model_kl(nn.Linear(2, 2), "sum").item() == 0.0


@pytest.mark.parametrize("reduction", ["avg", "Mean", "none", "batchmean", None])
def test_model_kl_unknown_reduction_raises(reduction):
    with pytest.raises(ValueError, match=r"unknown KL reduction.*allowed: 'mean'.*'sum'"):
        N.model_kl(_Net(), reduction)


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,dim", [((4, 6), 1), ((2, 6, 3, 3), 1), ((2, 3, 6), -1), ((5, 4), -1), ((5,), 1)])
def test_wrong_unit_axis_raises_naming_expected_size(shape, dim):
    layer = N.MultiplicativeNoise(5, dim=dim)
    for mode in (layer.train, layer.eval):
        mode()
        with pytest.raises(ValueError, match=rf"MultiplicativeNoise\(5, dim={dim}\) got an input of shape "
                                             rf"{re_tuple(shape)}; axis {dim} must have 5 entries"):
            layer(torch.ones(shape))


def re_tuple(shape):
    return "\\(" + ", ".join(str(s) for s in shape) + ("," if len(shape) == 1 else "") + "\\)"


@pytest.mark.parametrize("kw,pattern", [
    (dict(num_units=0), r"num_units must be a positive integer; got 0"),
    (dict(num_units=-3), r"num_units must be a positive integer; got -3"),
    (dict(num_units=3, eps=0.0), r"eps must lie in \(0, 0\.5\); got 0\.0"),
    (dict(num_units=3, eps=0.5), r"eps must lie in \(0, 0\.5\); got 0\.5"),
    (dict(num_units=3, eps=math.nan), r"eps must lie in \(0, 0\.5\); got nan"),
    (dict(num_units=3, a=0.0, b=0.0), r"a < b.*got a=0\.0, b=0\.0"),
    (dict(num_units=3, a=1.0, b=-1.0), r"a < b.*got a=1\.0, b=-1\.0"),
    (dict(num_units=3, a=math.nan), r"must be finite.*got a=nan"),
    (dict(num_units=3, b=math.inf), r"must be finite.*b=inf"),
])
def test_constructor_validation(kw, pattern):
    n = kw.pop("num_units")
    with pytest.raises(ValueError, match=pattern):
        N.MultiplicativeNoise(n, **kw)
