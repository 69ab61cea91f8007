"""A prepared check of the device paths, for a GPU partition's job or any machine with a GPU (under 5 minutes).

Parts, each recorded with every figure it measured in one summary JSON (default
benchmarks/gpu_check_result.json, or --out PATH):

1. ``sampler`` — the fused training-mode noise sampler (bmrs.nn.noise) on the device, forward and closed-form
   backward, against the plain-autograd reference bmrs.core.distributions.sample_theta fed the very same
   uniforms (float64, on the device), for the (N, F), (N, C, H, W) and (N, T, D) layouts in float32 and
   float64, including masked units and posteriors pinned far outside [a, b]; the per-unit sampler constants of
   the device path (torch ops) against the CPU kernel (numba); and the one-θ-per-element rule (mean of log θ
   per unit within 6 standard errors of μ).
2. ``cache`` — the E[θ] cache of the eval forward on the device (keyed on version counters there): reused
   between calls, mask changes applied without recomputation, recomputed after an optimiser step,
   load_state_dict and an in-place update; values against E[θ] computed on the CPU.
3. ``criteria`` — every fixed-rule criterion of the paper (E[θ], SNR, BMRS_N with and without 2π, BMRS_U-8/-4)
   and L2 scored on a LeNet5 living on the device against the same network on the CPU: scores, masks, and the
   masked network's eval outputs.
4. ``shrink`` — bmrs.nn.shrink.shrink of masked networks on the device (MLP, LeNet5, ResNet, ViT): the shrunk
   network stays on the device and its outputs equal the masked network's.
5. ``epoch`` — one Fashion-MNIST LeNet5 epoch with noise layers and BMRS_N pruning through
   bmrs.run.experiments.run (epochs=1, finetune_epochs=0), in a temporary results directory.
6. ``timings`` — the Table 3 and Table 4 step times with and without noise layers
   (bmrs.report.cost.table_step_times, as notebooks/06_cost.py calls it): milliseconds and ratios noise / None,
   to set beside the paper's Titan X figures (BMRS, arXiv:2406.01345, Appendix D, Tables 3 and 4).

Without a CUDA device (``--device auto``) it says so and runs the same parts on the CPU at smaller sizes
(Table 4 at a reduced resolution and batch); the summary then has ``"device": "cpu"``. ``--quick`` shrinks
everything further (the CPU test of this script, tests/test_gpu_check.py). The correctness checks run with
TF32 off; the timings with the defaults a training run has. Exit status: 0 when every check passed, 1 when
one failed (the summary is written either way, each failure named), 2 for invalid arguments.

Usage: python benchmarks/gpu_check.py [--device auto|cuda|cuda:N|cpu] [--quick] [--out PATH]
                                       [--dataset fashion_mnist] [--skip PART ...]
On Slurm: sbatch --partition=<gpu partition> --gres=gpu:1 --cpus-per-task=4 --time=00:10:00 \\
              --wrap '.venv/bin/python benchmarks/gpu_check.py --out results/gpu_check_$SLURM_JOB_ID.json'
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from bmrs.core import distributions as D
from bmrs.nn import models
from bmrs.nn import noise as N
from bmrs.nn.measure import count_parameters
from bmrs.nn.noise import noise_layers
from bmrs.nn.shrink import shrink
from bmrs.prune import registry
from bmrs.prune.criteria import L2, apply_criterion, prune_to_fraction
from bmrs.report import cost
from bmrs.run import data, experiments
from bmrs.run.config import RunConfig
from bmrs.run.train import pick_device
from bmrs.util.atomic import write_json

DEFAULT_OUT = Path(__file__).resolve().parent / "gpu_check_result.json"
PARTS = ("sampler", "cache", "criteria", "shrink", "epoch", "timings")
FIXED_RULE_CRITERIA = ("etheta", "snr", "bmrs_n", "bmrs_n_code", "bmrs_u8", "bmrs_u4")

# The unit grid of tests/test_noise.py: ordinary posteriors, masked units (mask 0) and four units far outside
# [a, b] = [-20, 0] (indices 3..6), whose θ is pinned to a bound and whose gradients are exactly zero.
UNIT_MU = [0.0, -10.0, -19.5, -25.0, 3.0, -1000.0, 1000.0, -5.0, -15.0, -20.0, -19.999, -0.5, -1.0, -21.0]
UNIT_LOG_SIGMA = [-5.0, -2.0, 0.0, -1.0, -3.0, 2.0, 1.0, 5.0, -20.0, 0.5, -10.0, 1.0, 3.0, 0.0]
UNIT_MASK = [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0]
FAR_OUTSIDE = [3, 4, 5, 6]
F_UNITS = len(UNIT_MU)


class Part:
    """Figures and failures of one part of the check."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = {}
        self.failures: list[str] = []

    def expect(self, ok: bool, message: str) -> bool:
        if not ok:
            self.failures.append(message)
        return bool(ok)

    def result(self, seconds: float) -> dict[str, Any]:
        return {"passed": not self.failures, "failures": self.failures, "seconds": seconds, **self.figures}


@contextlib.contextmanager
def exact_math():
    """TF32 off for the comparisons (restored afterwards): convolutions default to TF32 on Ampere and later."""
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _unit_view(shape: tuple[int, ...], dim: int) -> list[int]:
    v = [1] * len(shape)
    v[dim] = -1
    return v


def _grid_layer(device: torch.device, dtype: torch.dtype, dim: int) -> N.MultiplicativeNoise:
    layer = N.MultiplicativeNoise(F_UNITS, dim=dim)
    with torch.no_grad():
        layer.mu.copy_(torch.tensor(UNIT_MU))
        layer.log_sigma.copy_(torch.tensor(UNIT_LOG_SIGMA))
        layer.mask.copy_(torch.tensor(UNIT_MASK, dtype=torch.float32))
    return layer.to(device=device, dtype=dtype)


def _theta_tolerance(theta: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bound on |Δ log θ| of the fused sampler against the float64 reference (tests/test_noise.py): 1e-10 in
    float64; in float32 the rounding of 2γ − 1 (spacing u = 2^-24) moves the quantile z by u/φ(z), plus the
    rounding of μ + σz: |Δx| <= 8 (u (|μ| + σ|z| + 1) + σ u / φ(z))."""
    if dtype == torch.float64:
        return torch.full_like(theta, 1e-10)
    u = 2.0**-24
    z = (torch.log(theta) - mu) / sigma
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return 8.0 * (u * (mu.abs() + sigma * z.abs() + 1.0) + sigma * u / phi)


# ------------------------------------------------------------------------------------------------
# 1. the noise sampler and its backward on the device
# ------------------------------------------------------------------------------------------------

def check_sampler(device: torch.device, quick: bool) -> Part:
    part = Part()
    n = 400 if quick else 4000
    layouts = {"NF": ((n, F_UNITS), 1), "NCHW": ((8, F_UNITS, 5, 6), 1), "NTD": ((6, 7, F_UNITS), -1)}
    cases: dict[str, Any] = {}
    for dtype in (torch.float32, torch.float64):
        for lname, (shape, dim) in layouts.items():
            key = f"{lname}_{str(dtype).removeprefix('torch.')}"
            layer = _grid_layer(device, dtype, dim).train()
            layer.generator = _generator(device, 5)
            twin = _generator(device, 5)
            twin.set_state(layer.generator.get_state())
            data_gen = _generator(device, 6)
            x = torch.randn(shape, dtype=dtype, device=device, generator=data_gen).requires_grad_()
            w = torch.randn(shape, dtype=dtype, device=device, generator=data_gen)
            out = layer(x)
            (out * w).sum().backward()

            y = N.draw_uniform(x.shape, dtype, device, twin)  # the very same uniforms
            v = _unit_view(shape, dim)
            mu_e = layer.mu.detach().double().view(v).expand(shape).clone().requires_grad_()
            ls_e = layer.log_sigma.detach().double().view(v).expand(shape).clone().requires_grad_()
            x64 = x.detach().double().requires_grad_()
            theta = D.sample_theta(mu_e, D.sigma_from_log_sigma(ls_e), uniform=y.double())
            mask = layer.mask.double().view(v).expand(shape)
            out_ref = x64 * theta * mask
            (out_ref * w.double()).sum().backward()
            sum_dims = tuple(i for i in range(len(shape)) if i != dim % len(shape))

            tol = _theta_tolerance(theta.detach(), mu_e.detach(), D.sigma_from_log_sigma(ls_e.detach()), dtype)
            live = (mask > 0) & (x.detach().abs() > 1e-3)
            fused = out.detach().double() / x.detach().double()
            dlog = (torch.log(fused[live]) - torch.log(theta.detach()[live])).abs()
            theta_ratio = float((dlog / tol[live]).max())
            gx_ref = x64.grad
            gx_ratio = float(((x.grad.double() - gx_ref).abs() / (tol * gx_ref.abs() * 1.01 + 1e-300)).max())
            rtol = 1e-10 if dtype == torch.float64 else 1e-3
            grad_err = {}
            for name, got, ref_grad in (("mu", layer.mu.grad, mu_e.grad), ("log_sigma", layer.log_sigma.grad, ls_e.grad)):
                want, scale = ref_grad.sum(sum_dims), ref_grad.abs().sum(sum_dims)
                grad_err[name] = float(((got.double() - want).abs() / scale.clamp_min(1e-300)).max())
            masked = torch.tensor(UNIT_MASK, device=device) == 0
            live_units = [j for j in range(F_UNITS) if UNIT_MASK[j] and j not in FAR_OUTSIDE]
            cases[key] = {"max_dlog_theta_over_tolerance": theta_ratio, "max_grad_x_error_over_tolerance": gx_ratio,
                          "max_grad_mu_rel_error": grad_err["mu"], "max_grad_log_sigma_rel_error": grad_err["log_sigma"],
                          "grad_rel_tolerance": rtol}
            part.expect(out.device.type == device.type and out.dtype == dtype, f"sampler {key}: output on "
                        f"{out.device}/{out.dtype}, expected {device.type}/{dtype}")
            part.expect(theta_ratio <= 1.0, f"sampler {key}: |Δlog θ| exceeds its tolerance ({theta_ratio:.3g}×)")
            part.expect(gx_ratio <= 1.0, f"sampler {key}: grad x off ({gx_ratio:.3g}× tolerance)")
            for name, err in grad_err.items():
                part.expect(err <= rtol, f"sampler {key}: grad {name} rel. error {err:.3g} > {rtol:g}")
            part.expect(bool((out.detach()[mask == 0] == 0).all()), f"sampler {key}: masked units not exactly 0")
            part.expect(bool((layer.mu.grad[masked] == 0).all()) and bool((layer.log_sigma.grad[masked] == 0).all()),
                        f"sampler {key}: masked units get a gradient")
            part.expect(bool((layer.mu.grad[FAR_OUTSIDE] == 0).all()), f"sampler {key}: pinned units get a gradient")
            part.expect(bool((layer.mu.grad[live_units] != 0).all()), f"sampler {key}: a live unit has zero gradient")
    part.figures["cases"] = cases

    # per-unit sampler constants: device path (torch ops) against the CPU kernel (numba)
    g = torch.Generator().manual_seed(0)
    mu = torch.rand(5000, generator=g, dtype=torch.float64) * 60 - 40
    sigma = (torch.rand(5000, generator=g, dtype=torch.float64) * 25 - 20).exp()
    eps = D.SAMPLING_EPS
    on_cpu = N.sampler_constants(mu, sigma, D.DEFAULT_A, D.DEFAULT_B, eps)
    on_device = N.sampler_constants(mu.to(device), sigma.to(device), D.DEFAULT_A, D.DEFAULT_B, eps).cpu()
    const_diff = float((on_cpu - on_device).abs().max())
    part.figures["sampler_constants_max_abs_diff_device_vs_cpu"] = const_diff
    part.expect(bool(torch.isfinite(on_device).all()), "sampler constants: non-finite values on the device")
    part.expect(const_diff <= 1e-12, f"sampler constants: device vs CPU kernel differ by {const_diff:.3g}")

    # one θ per element, distributed as the unit's posterior: mean log θ within 6 standard errors of μ
    layer = N.MultiplicativeNoise(F_UNITS).to(device).train()
    with torch.no_grad():
        layer.mu.copy_(torch.linspace(-18.0, -1.0, F_UNITS))
        layer.log_sigma.fill_(-1.0)
    layer.generator = _generator(device, 0)
    per_unit = 2000  # as in tests/test_noise.py: float32 draws of 10^4+ per unit start to collide
    theta = layer(torch.ones(per_unit, F_UNITS, device=device)).detach()
    distinct = min(int(theta[:, j].unique().numel()) for j in range(F_UNITS)) / per_unit
    se = math.exp(-1.0) / math.sqrt(per_unit)
    z_max = float(((torch.log(theta).mean(0) - layer.mu.detach()).abs() / se).max())
    part.figures.update({"per_element_distinct_fraction_min": distinct, "mean_log_theta_max_z": z_max,
                         "samples_per_unit": per_unit})
    part.expect(distinct >= 0.99, f"sampler: only {distinct:.3f} of the draws of a unit are distinct")
    part.expect(z_max <= 6.0, f"sampler: mean log θ is {z_max:.2f} standard errors from μ")
    return part


# ------------------------------------------------------------------------------------------------
# 2. the E[θ] cache on the device
# ------------------------------------------------------------------------------------------------

def _cpu_expected_theta(layer: N.MultiplicativeNoise, log_expected_theta) -> torch.Tensor:
    mu, sigma = layer.mu.detach().double().cpu(), layer.sigma.detach().double().cpu()
    return log_expected_theta(mu, sigma, layer.a, layer.b).exp()


def check_cache(device: torch.device, quick: bool) -> Part:
    part = Part()
    calls: list[int] = []
    real = D._log_expected_theta

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    D._log_expected_theta = counting  # what tests/test_noise.py's spy does, restored below
    try:
        layer = _grid_layer(device, torch.float32, 1).eval()
        x = torch.ones(2, F_UNITS, device=device)
        rel: list[float] = []

        def agrees(out: torch.Tensor) -> bool:
            want = (_cpu_expected_theta(layer, real) * layer.mask.double().cpu()).float()
            got = out[0].detach().cpu()
            err = float(((got - want).abs() / want.abs().clamp_min(1e-30)).max())
            rel.append(err)
            return err <= 1e-6

        o1, o2 = layer(x), layer(x)
        after_two_calls = len(calls)
        part.expect(len(calls) == 1 and torch.equal(o1, o2), f"cache: {len(calls)} E[θ] computations for two calls")
        part.expect(agrees(o1), "cache: E[θ] on the device differs from the CPU value")
        with torch.no_grad():
            layer.mask[0] = 0.0
        o3 = layer(x)
        part.expect(bool(o3[0, 0] == 0) and torch.equal(o3[:, 1:], o1[:, 1:]) and len(calls) == 1,
                    "cache: a mask change was not applied at once, or recomputed E[θ]")
        layer.train()
        layer(x)
        layer.eval()
        layer(x)
        after_train_call = len(calls)
        part.expect(after_train_call == 1, "cache: a training-mode call without a parameter change invalidated E[θ]")

        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer.train()
        (layer(torch.randn(8, F_UNITS, device=device)).square().sum() + layer.kl().sum()).backward()
        opt.step()
        layer.eval()
        out = layer(x)
        after_step = len(calls)
        part.expect(after_step == 2 and agrees(out), "cache: not recomputed (or wrong) after an optimiser step")

        other = N.MultiplicativeNoise(F_UNITS)
        with torch.no_grad():
            other.mu.copy_(torch.linspace(-15.0, -2.0, F_UNITS))
            other.log_sigma.fill_(0.5)
        layer.load_state_dict(other.state_dict())
        out = layer(x)
        after_load = len(calls)
        part.expect(after_load == 3 and agrees(out), "cache: not recomputed (or wrong) after load_state_dict")

        with torch.no_grad():
            layer.mu.add_(-2.0)
            layer.log_sigma.fill_(1.0)
        out = layer(x)
        after_inplace = len(calls)
        part.expect(after_inplace == 4 and agrees(out), "cache: not recomputed (or wrong) after an in-place update")
        part.figures.update({"computations_after": {"two_eval_calls": after_two_calls,
                                                    "train_call_then_eval": after_train_call,
                                                    "optimizer_step": after_step, "load_state_dict": after_load,
                                                    "in_place_update": after_inplace},
                             "max_rel_diff_vs_cpu": max(rel)})
    finally:
        D._log_expected_theta = real
    return part


# ------------------------------------------------------------------------------------------------
# 3. the criteria on device tensors
# ------------------------------------------------------------------------------------------------

def _randomise_noise(model: nn.Module, g: torch.Generator, mu_range=(-18.0, 2.0), ls_range=(-4.0, 1.0),
                     keep: float | None = None) -> None:
    with torch.no_grad():
        for _, layer in noise_layers(model):
            n = layer.num_units
            layer.mu.copy_(torch.rand(n, generator=g) * (mu_range[1] - mu_range[0]) + mu_range[0])
            layer.log_sigma.copy_(torch.rand(n, generator=g) * (ls_range[1] - ls_range[0]) + ls_range[0])
            if keep is not None:
                mask = (torch.rand(n, generator=g) < keep).float()
                mask[torch.randint(n, (1,), generator=g)] = 1.0
                layer.mask.copy_(mask)


def _masks(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: layer.mask.detach().cpu().clone() for name, layer in noise_layers(model)}


def check_criteria(device: torch.device, quick: bool) -> Part:
    part = Part()
    torch.manual_seed(0)
    cpu_model = models.lenet5(1)
    _randomise_noise(cpu_model, torch.Generator().manual_seed(1))
    dev_model = copy.deepcopy(cpu_model).to(device)
    x = torch.randn(16, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    figures: dict[str, Any] = {}
    names = FIXED_RULE_CRITERIA if not quick else ("etheta", "snr", "bmrs_n", "bmrs_u4")
    with exact_math():
        for name in (*names, "l2"):
            crit = registry.make_criterion(name)
            s_cpu, s_dev = crit.scores(cpu_model), crit.scores(dev_model)
            diff = max(float((s_cpu[k] - s_dev[k].cpu()).abs().max() / s_cpu[k].abs().max().clamp_min(1e-300))
                       for k in s_cpu)
            dtypes_ok = all(v.dtype == torch.float64 for v in s_dev.values())
            if isinstance(crit, L2):  # no fixed rule: half of the units, globally
                r_cpu = prune_to_fraction(cpu_model, crit, 0.5)
                r_dev = prune_to_fraction(dev_model, crit, 0.5)
            else:
                r_cpu, r_dev = apply_criterion(cpu_model, crit), apply_criterion(dev_model, crit)
            m_cpu, m_dev = _masks(cpu_model), _masks(dev_model)
            same = sum(int((m_cpu[k] == m_dev[k]).sum()) for k in m_cpu) / sum(m.numel() for m in m_cpu.values())
            on_device = all(layer.mask.device.type == device.type for _, layer in noise_layers(dev_model))
            with torch.no_grad():
                out_cpu = cpu_model.eval()(x)
                out_dev = dev_model.eval()(x.to(device)).cpu()
            out_diff = float((out_cpu - out_dev).abs().max() / out_cpu.abs().max().clamp_min(1e-30))
            pruned = r_dev.units_total - r_dev.units_kept
            figures[name] = {"max_rel_score_diff": diff, "mask_agreement": same, "units_pruned": pruned,
                             "units_total": r_dev.units_total, "max_rel_output_diff": out_diff}
            tol = 1e-5 if isinstance(crit, L2) else 1e-12  # L2 norms are float32 sums on the device
            part.expect(dtypes_ok, f"criteria {name}: scores are not float64")
            part.expect(diff <= tol, f"criteria {name}: device scores differ from the CPU's by {diff:.3g}")
            part.expect(same == 1.0 and r_cpu.units_kept == r_dev.units_kept,
                        f"criteria {name}: masks differ between device and CPU ({same:.4f} agree)")
            part.expect(on_device, f"criteria {name}: masks left the device")
            # a mask left on the wrong units changes outputs by O(1); 1e-4 leaves room for cuDNN's algorithms
            part.expect(out_diff <= 1e-4, f"criteria {name}: masked outputs differ by {out_diff:.3g} (relative)")
            part.expect(0 < pruned < r_dev.units_total,
                        f"criteria {name}: degenerate check, {pruned} of {r_dev.units_total} units pruned")
    part.figures["criteria"] = figures
    return part


# ------------------------------------------------------------------------------------------------
# 4. shrinking on the device
# ------------------------------------------------------------------------------------------------

def _randomise_batchnorm(model: nn.Module, g: torch.Generator) -> None:
    """Non-trivial BN statistics (the defaults make BN an identity) and a random head where torchvision's
    initialisation is zero (the ViT's, which would make every output 0)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and not bool(m.weight.any()):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)


def _shrink_networks(device: torch.device, quick: bool) -> dict[str, Callable[[], nn.Module]]:
    nets: dict[str, Callable[[], nn.Module]] = {
        "mlp": lambda: models.mlp((1, 32, 32), 10, hidden=64, n_layers=2),
        "lenet5": lambda: models.lenet5(3),
        "vit_small_32px": lambda: models.vit(10, image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                             hidden_dim=32, mlp_dim=64),
        "resnet18_32px": lambda: models.resnet(18, 10, image_size=32),
    }
    if not quick:
        size = 224 if device.type == "cuda" else 64
        nets[f"resnet50_{size}px"] = lambda: models.resnet(50, 10, image_size=size)
        nets["vit_b16_224px"] = lambda: models.vit(10)
    return nets


def check_shrink(device: torch.device, quick: bool) -> Part:
    part = Part()
    figures: dict[str, Any] = {}
    with exact_math():
        for i, (name, build) in enumerate(_shrink_networks(device, quick).items()):
            g = torch.Generator().manual_seed(100 + i)
            torch.manual_seed(100 + i)
            model = build()
            _randomise_batchnorm(model, g)
            _randomise_noise(model, g, mu_range=(-2.5, 0.5), ls_range=(-3.0, 1.0), keep=0.6)
            model = model.to(device).eval()
            shrunk = shrink(model)
            x = torch.randn((4, *model.input_spec.shape), generator=g).to(device)
            with torch.no_grad():
                want, got = model(x), shrunk(x)
            scale = float(want.abs().max())
            diff = float((want - got).abs().max())
            devices = {p.device.type for p in shrunk.parameters()} | {b.device.type for b in shrunk.buffers()}
            figures[name] = {"max_abs_output_diff": diff, "max_abs_output": scale,
                             "params_masked": count_parameters(model), "params_shrunk": count_parameters(shrunk)}
            part.expect(devices == {device.type}, f"shrink {name}: the shrunk network lives on {sorted(devices)}")
            part.expect(scale > 1e-3, f"shrink {name}: degenerate check, the masked output is ~0")
            part.expect(diff <= 1e-4 * max(scale, 1.0), f"shrink {name}: max |masked - shrunk| = {diff:.3g}")
            part.expect(count_parameters(shrunk) < count_parameters(model), f"shrink {name}: nothing was removed")
            del model, shrunk
    part.figures["networks"] = figures
    return part


# ------------------------------------------------------------------------------------------------
# 5. one Fashion-MNIST LeNet5 epoch
# ------------------------------------------------------------------------------------------------

def check_epoch(device: torch.device, quick: bool, dataset: str) -> Part:
    part = Part()
    if not data.available(dataset):
        part.expect(False, f"epoch: dataset {dataset} is not available here; put its files under $BMRS_DATA_DIR "
                           f"(see data/README.md) or run with --dataset digits, or --skip epoch")
        return part
    limit = 3000 if quick else None
    cfg = RunConfig(dataset=dataset, network="lenet5", method="bmrs_n", epochs=1, finetune_epochs=0,
                    profile="quick", device=str(device), limit_train=limit, limit_test=1000 if limit else None)
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bmrs_gpu_check_") as tmp:
        t0 = time.perf_counter()
        metrics = experiments.run(cfg, results_dir=tmp, log=lines.append)
        wall = time.perf_counter() - t0
    hist = metrics["history"][0]
    final = metrics["final"]
    part.figures.update({
        "dataset": dataset, "limit_train": limit, "device_of_run": metrics["device"], "wall_seconds": wall,
        "epoch_seconds": hist["seconds"], "train_seconds": hist["time_split"]["train"],
        "eval_seconds": hist["time_split"]["eval"], "loss": hist["loss"], "kl": hist["kl"],
        "val_acc": hist["val_acc"], "test_acc": final["test_acc"],
        "structure_compression_pct": final["structure_compression_pct"],
        "param_compression_pct": final["param_compression_pct"],
    })
    part.expect(metrics["device"].startswith(device.type), f"epoch: ran on {metrics['device']}, not {device}")
    part.expect(all(math.isfinite(float(v)) for v in (hist["loss"], final["test_acc"])), "epoch: non-finite result")
    part.expect(final["test_acc"] > 50.0, f"epoch: test accuracy {final['test_acc']:.1f}% after one epoch")
    return part


# ------------------------------------------------------------------------------------------------
# 6. the Table 3/4 step timings
# ------------------------------------------------------------------------------------------------

def timing_entries(device: torch.device, quick: bool) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The entries of notebooks/06_cost.py's Part 1 and the rounds/steps/warm-up, sized for the machine."""
    if quick:
        t3 = [("mlp", "fashion_mnist"), ("lenet5", "fashion_mnist")]
        t4 = [("resnet18", "cifar10"), ("vit_tiny", "cifar10")]
        return ([{"table": "table3", "network": n, "dataset": d, "batch": 32} for n, d in t3]
                + [{"table": "table4", "network": n, "dataset": d, "batch": 4, "image_size": 32} for n, d in t4],
                dict(rounds=2, steps=2, warmup=1))
    t3 = [(n, d) for n in ("mlp", "lenet5") for d in ("mnist", "fashion_mnist", "cifar10")]
    t4 = [(n, d) for n in ("resnet50", "vit_b16") for d in ("cifar10", "tiny_imagenet")]
    if device.type == "cuda":  # the paper's protocol: 224 px, batch 32
        return ([{"table": "table3", "network": n, "dataset": d, "batch": 32} for n, d in t3]
                + [{"table": "table4", "network": n, "dataset": d, "batch": 32, "rounds": 5, "steps": 5}
                   for n, d in t4], dict(rounds=11, steps=20, warmup=3))
    return ([{"table": "table3", "network": n, "dataset": d, "batch": 32} for n, d in t3]
            + [{"table": "table4", "network": n, "dataset": d, "batch": 4, "image_size": 32, "rounds": 3,
                "steps": 1} for n, d in t4], dict(rounds=5, steps=5, warmup=1))


TIMING_COLUMNS = ("table", "network", "dataset", "image_size", "variant", "batch", "rounds", "steps", "params",
                  "noise_units", "seconds") + tuple(
    f"{phase}_{what}" for phase in cost.PHASES for what in ("ms", "q1_ms", "q3_ms", "ratio", "ratio_q1", "ratio_q3"))


def check_timings(device: torch.device, quick: bool) -> Part:
    part = Part()
    entries, sizes = timing_entries(device, quick)
    threads = 1 if device.type == "cpu" else torch.get_num_threads()
    frame = cost.table_step_times(entries, threads=threads, device=str(device), log=None, **sizes)
    rows = []
    for rec in frame.to_dict("records"):
        row = {k: _plain(rec.get(k)) for k in TIMING_COLUMNS if k in rec}
        row["image_size"] = (row.get("image_size") or 224) if row["table"] == "table4" else None
        rows.append(row)
        for phase in cost.PHASES:
            ms = row.get(f"{phase}_ms")
            part.expect(isinstance(ms, float) and math.isfinite(ms) and ms > 0,
                        f"timings {row['network']}/{row['dataset']} {row['variant']}: {phase} time {ms!r}")
    part.figures.update({"threads": threads, **sizes, "rows": rows})
    noise = [r for r in rows if r["variant"] == "noise"]
    part.figures["train_step_ratio_noise_over_none"] = {f"{r['table']}/{r['network']}/{r['dataset']}":
                                                        r["train_step_ratio"] for r in noise}
    return part


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

def _plain(v: Any) -> Any:
    """JSON-able Python scalars (numpy/pandas values converted; NaN -> None)."""
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if v is None or isinstance(v, (int, str, bool)):
        return v
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return str(v)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device) -> dict[str, Any]:
    env = {"device": device.type, "device_name": _cpu_name(),
           "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "cuda_available": torch.cuda.is_available(), "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({"device_name": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                    "cudnn": torch.backends.cudnn.version(), "gpu_memory_gib": props.total_memory / 2**30,
                    "capability": f"{props.major}.{props.minor}", "gpu_count": torch.cuda.device_count(),
                    "default_tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                     "cudnn": torch.backends.cudnn.allow_tf32}})
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda, cuda:N or cpu")
    p.add_argument("--quick", action="store_true", help="smallest sizes (the CPU test of this script)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"summary JSON (default {DEFAULT_OUT})")
    p.add_argument("--dataset", default="fashion_mnist", choices=tuple(data.DATASETS),
                   help="data set of the LeNet5 epoch (default fashion_mnist)")
    p.add_argument("--skip", nargs="*", default=[], choices=PARTS, metavar="PART",
                   help=f"parts to leave out: {', '.join(PARTS)}")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = pick_device(args.device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device {args.device!r} is not supported here; use auto, cuda, cuda:N or cpu")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"there is no {device}: {torch.cuda.device_count()} CUDA device(s); use cuda:0")
    except (ValueError, RuntimeError) as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    t_start = time.perf_counter()
    env = environment(device)
    note = None
    if device.type == "cpu":
        note = ("--device cpu" if args.device == "cpu" else "no CUDA device") + \
            ": ran the CPU parts only, at reduced sizes; run it on a GPU machine for the device figures"
        print(f"gpu_check: {note}", flush=True)
    else:
        print(f"gpu_check: {env['device_name']} (torch {env['torch']}, CUDA {env['cuda']})", flush=True)
    summary: dict[str, Any] = {**env, "mode": "quick" if args.quick else "full", "note": note, "parts": {}}
    runners: dict[str, Callable[[], Part]] = {
        "sampler": lambda: check_sampler(device, args.quick),
        "cache": lambda: check_cache(device, args.quick),
        "criteria": lambda: check_criteria(device, args.quick),
        "shrink": lambda: check_shrink(device, args.quick),
        "epoch": lambda: check_epoch(device, args.quick, args.dataset),
        "timings": lambda: check_timings(device, args.quick),
    }
    failures: list[str] = []
    for name, runner in runners.items():
        if name in args.skip:
            summary["parts"][name] = {"skipped": True}
            continue
        t0 = time.perf_counter()
        try:
            part = runner()
        except Exception as exc:  # noqa: BLE001 - a crash is a failed part, recorded; the rest still runs
            part = Part()
            part.failures.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
            part.figures["traceback"] = traceback.format_exc().splitlines()[-6:]
        summary["parts"][name] = part.result(time.perf_counter() - t0)
        failures += part.failures
        status = "ok" if not part.failures else f"FAILED ({len(part.failures)})"
        print(f"gpu_check: {name:9s} {status} in {time.perf_counter() - t0:.1f} s", flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    summary["total_seconds"] = time.perf_counter() - t_start
    if device.type == "cuda":
        summary["max_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    summary["passed"] = not failures
    summary["failures"] = failures
    try:
        write_json(args.out, summary)
    except OSError as exc:
        print(f"gpu_check: cannot write {args.out} ({exc}); pass --out to a writable path", file=sys.stderr)
        return 1
    for f in failures:
        print(f"gpu_check: FAILED {f}", file=sys.stderr)
    print(f"gpu_check: {'all checks passed' if not failures else f'{len(failures)} check(s) failed'} in "
          f"{summary['total_seconds']:.0f} s; summary in {args.out}", flush=True)
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
