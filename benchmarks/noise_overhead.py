"""How much do the noise layers cost? Ratios measured side by side in one run (CPU by default).

1. Training-step time of LeNet5 (1×32×32 input, batch 32, Adam, cross-entropy + KL) with noise layers
   divided by the same network without them. Three variants are timed in interleaved rounds so that
   machine noise hits all of them alike:
     plain   — no noise layers (the "None" baseline);
     fused   — bmrs.nn.noise.MultiplicativeNoise (fused sampler with closed-form backward);
     direct  — the same distribution written directly: torch.rand + autograd through
               bmrs.core.distributions.sample_theta (what a straightforward port of the paper does).
   The paper's GPU figure for this ratio is 2.6–5.1× (Table 3).
2. Time of ΔF_N and ΔF_U for 10⁶ units (float64), median of repeats.

Usage: python benchmarks/noise_overhead.py [--rounds 15] [--steps 20] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from bmrs.core import distributions as dist
from bmrs.nn.models import lenet5
from bmrs.nn.noise import MultiplicativeNoise, model_kl
from bmrs.core.reduction import delta_f_bmrs_n, delta_f_bmrs_u


class DirectNoise(MultiplicativeNoise):
    """Reference implementation: per-element θ from torch.rand through autograd (no fusion)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        shape = [1] * x.dim()
        shape[self.dim] = -1
        y = torch.rand(x.shape, dtype=torch.float64, device=x.device)
        theta = dist.sample_theta(self.mu.view(shape), self.sigma.view(shape), a=self.a, b=self.b, uniform=y)
        return x * theta.to(x.dtype) * self.mask.view(shape)


def _with_direct_noise(model: nn.Module) -> nn.Module:
    for name, child in model.named_children():
        if isinstance(child, MultiplicativeNoise):
            setattr(model, name, DirectNoise(child.num_units, dim=child.dim))
    return model


def _step_timer(model: nn.Module, device: torch.device, batch: int):
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)

    def run(steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y) + model_kl(model)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--units", type=int, default=1_000_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    runners = {
        "plain": _step_timer(lenet5(1, noise=False), device, args.batch),
        "fused": _step_timer(lenet5(1, noise=True), device, args.batch),
        "direct": _step_timer(_with_direct_noise(lenet5(1, noise=True)), device, args.batch),
    }
    for run in runners.values():
        run(5)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            times[name].append(run(args.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"LeNet5 training step, batch {args.batch}, device {device}, {torch.get_num_threads()} threads, "
          f"median of {args.rounds} rounds x {args.steps} steps")
    for name in runners:
        print(f"  {name:7s} {med[name] * 1e3:8.2f} ms/step   ratio to plain {med[name] / med['plain']:.2f}x")
    print(f"  noise overhead (fused / plain): {med['fused'] / med['plain']:.2f}x  (target <= 1.5x; paper GPU 2.6-5.1x)")

    gen = torch.Generator().manual_seed(1)
    n = args.units
    mu = torch.rand(n, dtype=torch.float64, generator=gen) * 20.0 - 20.0
    sigma = torch.exp(torch.rand(n, dtype=torch.float64, generator=gen) * 8.0 - 8.0)
    for name, fn in (("delta_f_bmrs_n", delta_f_bmrs_n), ("delta_f_bmrs_u", delta_f_bmrs_u)):
        fn(mu, sigma)  # warm-up (JIT compile on first use)
        reps = []
        for _ in range(7):
            t0 = time.perf_counter()
            fn(mu, sigma)
            reps.append(time.perf_counter() - t0)
        print(f"{name} for {n:,} units (mu ~ U[-20, 0], log sigma ~ U[-8, 0]): median {statistics.median(reps):.4f} s "
              f"(target < 0.1 s)")


if __name__ == "__main__":
    main()
