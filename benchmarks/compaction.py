"""What does physically removing pruned units buy? Dense (masked) vs shrunk, measured side by side in one run.

For a finished run directory, or with --random for LeNet5 whose noise layers get random posteriors and a
random mask pruning --prune of the units of every layer (85% by default), this prints:

* parameters: dense with noise, dense without noise, shrunk (and the paper's compression estimate);
* MACs at batch 1 (FlopCounterMode FLOPs / 2; elementwise ops not counted) and their ratio dense/shrunk;
* latency at batch 1 and 32 (median [IQR] over --repeats interleaved rounds, --threads CPU threads,
  eval mode, torch.inference_mode) for the dense masked model and the shrunk one, the speed-up, and
  the fraction of the MAC reduction that the speed-up realises, (1 − t_shrunk/t_dense) / (1 − M_shrunk/M_dense)
  (target ≥ 70% at batch 32); also speed-up / MACs ratio, the stricter "efficiency" figure;
* max |dense − shrunk| on a random batch.

Usage: python benchmarks/compaction.py RUN_DIR [--threads 1] [--repeats 100]
       python benchmarks/compaction.py --random [--prune 0.85] [--channels 1] [--threads 1] [--repeats 100]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from bmrs.nn import measure
from bmrs.nn import shrink as compact
from bmrs.run.store import load_run
from bmrs.nn.models import lenet5
from bmrs.nn.noise import noise_layers

TARGET = 0.70


def random_lenet5(channels: int, prune: float, seed: int) -> nn.Module:
    """LeNet5 with random posteriors (E[θ] in about (0.2, 1)) and `prune` of every layer's units masked."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = lenet5(channels)
    with torch.no_grad():
        for _, layer in noise_layers(model):
            n = layer.num_units
            layer.mu.copy_(torch.rand(n, generator=g) * 1.5 - 1.5)
            layer.log_sigma.copy_(torch.rand(n, generator=g) * 3 - 4)
            keep = max(1, round((1.0 - prune) * n))
            mask = torch.zeros(n)
            mask[torch.randperm(n, generator=g)[:keep]] = 1.0
            layer.mask.copy_(mask)
    return model.eval()


def _ms(stats: dict) -> str:
    return f"{1e3 * stats['median_s']:8.3f} [{1e3 * stats['iqr_s']:.3f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, help="a finished run directory (results/runs/<hash>)")
    parser.add_argument("--random", action="store_true", help="LeNet5 with a random mask instead of a run")
    parser.add_argument("--prune", type=float, default=0.85, help="fraction of units pruned per layer (--random)")
    parser.add_argument("--channels", type=int, default=1, help="LeNet5 input channels (--random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args(argv)
    if args.random == (args.run_dir is not None):
        parser.error("give either RUN_DIR or --random")
    if not 0.0 <= args.prune < 1.0:
        parser.error("--prune must lie in [0, 1)")

    if args.random:
        model = random_lenet5(args.channels, args.prune, args.seed)
        what = f"LeNet5 ({args.channels} channel{'s' * (args.channels > 1)}), random mask pruning {args.prune:.0%} of units"
    else:
        try:
            model = load_run(args.run_dir).eval()
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        what = f"run {args.run_dir}"
    kept = ", ".join(f"{layer.kept}/{layer.num_units}" for _, layer in noise_layers(model))
    shrunk = compact.shrink(model)
    rep = measure.report(model, shrunk=shrunk, threads=args.threads, repeats=args.repeats, warmup=args.warmup)

    p, m = rep["params"], rep["macs"]
    print(what)
    print(f"kept units per noise layer: {kept}")
    print(f"torch {rep['torch']}, device {rep['device']}, dtype {rep['dtype']}, threads {args.threads}, "
          f"{args.repeats} interleaved repeats after {args.warmup} warm-up calls; times are median [IQR] in ms")
    print(f"parameters: dense with noise {p['dense_with_noise']:,} | dense without noise {p['dense_without_noise']:,} | "
          f"shrunk {p['shrunk']:,}  (actual compression {p['actual_compression_pct']:.2f}%, paper metric "
          f"{rep['paper']['param_compression_pct']:.2f}%)")
    print(f"MACs at batch 1: dense {m['dense']:,} | shrunk {m['shrunk']:,} | ratio {m['ratio']:.2f}x "
          f"(reduction {100 * (1 - m['shrunk'] / m['dense']):.2f}%)")
    print()
    print(f"{'batch':>5}  {'dense ms [IQR]':>20}  {'shrunk ms [IQR]':>20}  {'speed-up':>8}  {'MACs ratio':>10}  "
          f"{'realised':>8}  {'speed-up/MACs':>13}")
    for n in (1, 32):
        lat = rep["latency"][f"batch{n}"]
        print(f"{n:>5}  {_ms(lat['dense']):>20}  {_ms(lat['shrunk']):>20}  {lat['speedup']:>7.2f}x  "
              f"{m['ratio']:>9.2f}x  {100 * lat['realised_fraction_of_mac_reduction']:>7.1f}%  "
              f"{100 * lat['speedup'] / m['ratio']:>12.1f}%")
    realised = rep["latency"]["batch32"]["realised_fraction_of_mac_reduction"]
    print()
    print(f"realised fraction of the MAC reduction at batch 32: {100 * realised:.1f}% "
          f"(target >= {100 * TARGET:.0f}%: {'met' if realised >= TARGET else 'NOT met'})")
    print(f"max |dense - shrunk| on a random batch of 8: {rep['max_abs_output_diff']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
