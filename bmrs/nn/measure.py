"""Measuring a network: parameters, MACs, latency (side by side), accuracy, and what shrinking buys.

* :func:`count_parameters`, :func:`count_macs` — one convention for every network of the project (the
  shrunk ones, EigenDamage's rebuilt ones with their rotations, the dense references, users' own networks);
* :func:`compare_latency` — several models timed in interleaved rounds, so machine noise hits all alike;
* :func:`evaluate` — top-1 accuracy and cross-entropy on a split;
* :func:`plain_parameters`, :func:`actual_param_compression` — the dense deployable network (noise layers
  folded away) and the compression of the physically shrunk one against it;
* :func:`report` — all of the above for a masked model and its shrunk copy.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from bmrs.nn.noise import noise_layers
from bmrs.nn.paper_metric import paper_compression
from bmrs.nn.shrink import dense_network, noise_param_count, shrink
from bmrs.util.batches import iterate_batches



def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameter entries (shared parameters once), plus the tensors a module declares as counted
    although it stores them as buffers: a module may define ``counted_buffers() -> Iterable[Tensor]`` (the hook
    EigenDamage's bottleneck uses for frozen rotations, which count as parameters). trainable_only counts only
    parameters with requires_grad (no counted buffers)."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
    if not trainable_only:
        seen: set[int] = set()
        for m in model.modules():
            hook = getattr(m, "counted_buffers", None)
            if callable(hook):
                for t in hook():
                    if id(t) not in seen:
                        seen.add(id(t))
                        n += t.numel()
    return n


def count_macs(model: nn.Module, example_input: Tensor) -> int:
    """Multiply-accumulates of one eval-mode forward on example_input: FlopCounterMode's total / 2 (it counts
    2 FLOPs per multiply-add of matmul, convolution and attention). Elementwise ops are not counted.

    Runs with autograd enabled so that nn.MultiheadAttention takes its composite path, whose matmuls the
    counter sees (its fused inference fast path is invisible to it)."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            model(example_input)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops()) // 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_latency(models: dict[str, nn.Module], example_input: Tensor, *, threads: int = 1, repeats: int = 50,
                    warmup: int = 5) -> dict[str, dict[str, Any]]:
    """Latency of several models on the same input, measured side by side: after `warmup` calls each, the
    models are timed in interleaved rounds (one forward of each per round) so that machine noise hits all
    alike. Eval mode, torch.inference_mode, torch.set_num_threads(threads) (restored afterwards).

    Returns per model: median_s, iqr_s, q1_s, q3_s, min_s, threads, repeats, warmup, batch, device."""
    if threads < 1 or repeats < 1 or warmup < 0:
        raise ValueError(f"need threads >= 1, repeats >= 1, warmup >= 0; got {threads}, {repeats}, {warmup}")
    previous = torch.get_num_threads()
    modes = {name: m.training for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    device = example_input.device
    try:
        torch.set_num_threads(threads)
        for m in models.values():
            m.eval()
        with torch.inference_mode():
            for m in models.values():
                for _ in range(warmup):
                    m(example_input)
            for _ in range(repeats):
                for name, m in models.items():
                    _sync(device)
                    t0 = time.perf_counter()
                    m(example_input)
                    _sync(device)
                    times[name].append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
        for name, m in models.items():
            m.train(modes[name])
    out = {}
    for name, t in times.items():
        q = statistics.quantiles(t, n=4, method="inclusive") if len(t) > 1 else [t[0]] * 3
        out[name] = {"median_s": statistics.median(t), "q1_s": q[0], "q3_s": q[2], "iqr_s": q[2] - q[0],
                     "min_s": min(t), "threads": threads, "repeats": repeats, "warmup": warmup,
                     "batch": int(example_input.shape[0]), "device": str(device)}
    return out


def measure_latency(model: nn.Module, example_input: Tensor, *, threads: int = 1, repeats: int = 50,
                    warmup: int = 5) -> dict[str, Any]:
    """Median and inter-quartile range (seconds) of one eval-mode forward under torch.inference_mode with
    torch.set_num_threads(threads) (restored afterwards); the thread count is part of the result."""
    return compare_latency({"model": model}, example_input, threads=threads, repeats=repeats, warmup=warmup)["model"]


def _input_shape(model: nn.Module, example_input: Tensor | None) -> tuple[int, ...]:
    if example_input is not None:
        return tuple(example_input.shape[1:])
    spec = getattr(model, "input_spec", None)
    if spec is None:
        raise ValueError(f"{type(model).__name__} has no input_spec; pass example_input=<a batch the model accepts>")
    return tuple(spec.shape)


def max_output_difference(a: nn.Module, b: nn.Module, x: Tensor) -> float:
    """max |a(x) − b(x)| in eval mode."""
    modes = (a.training, b.training)
    a.eval()
    b.eval()
    try:
        with torch.inference_mode():
            return float((a(x) - b(x)).abs().max())
    finally:
        a.train(modes[0])
        b.train(modes[1])


def report(masked_model: nn.Module, example_input: Tensor | None = None, *, shrunk: nn.Module | None = None,
           threads: int = 1, repeats: int = 50, warmup: int = 5, seed: int = 0) -> dict[str, Any]:
    """What compaction buys for a masked model, measured side by side.

    * paper: bmrs.nn.paper_metric.paper_compression (the paper's estimate);
    * params: dense with noise (all parameters of the masked model), dense without noise (minus μ and
      log σ), shrunk; and the actual compression relative to both;
    * macs: dense (the masked model; noise multiplications are elementwise, not counted) and shrunk at batch 1;
    * latency: dense (masked model, eval) and shrunk at batch 1 and 32 (see compare_latency), speed-ups,
      and the fraction of the MAC reduction realised as time reduction, (1 − t_s/t_d) / (1 − M_s/M_d);
    * max_abs_output_diff between dense and shrunk on a random batch of 8.
    """
    shrunk = shrink(masked_model) if shrunk is None else shrunk
    param = next(masked_model.parameters())
    shape = _input_shape(masked_model, example_input)
    gen = torch.Generator().manual_seed(seed)

    def batch(n: int) -> Tensor:
        return torch.randn((n, *shape), generator=gen).to(device=param.device, dtype=param.dtype)

    dense_params = count_parameters(masked_model)
    shrunk_params = count_parameters(shrunk)
    no_noise = dense_params - noise_param_count(masked_model)
    macs = {"dense": count_macs(masked_model, batch(1)), "shrunk": count_macs(shrunk, batch(1))}
    macs["ratio"] = macs["dense"] / max(macs["shrunk"], 1)
    latency: dict[str, Any] = {}
    for n in (1, 32):
        lat = compare_latency({"dense": masked_model, "shrunk": shrunk}, batch(n), threads=threads, repeats=repeats,
                              warmup=warmup)
        speedup = lat["dense"]["median_s"] / lat["shrunk"]["median_s"]
        mac_cut = 1.0 - macs["shrunk"] / max(macs["dense"], 1)
        time_cut = 1.0 - lat["shrunk"]["median_s"] / lat["dense"]["median_s"]
        lat["speedup"] = speedup
        lat["realised_fraction_of_mac_reduction"] = time_cut / mac_cut if mac_cut > 0 else float("nan")
        latency[f"batch{n}"] = lat
    return {
        "paper": paper_compression(masked_model, batch(2)).as_dict(),
        "params": {"dense_with_noise": dense_params, "dense_without_noise": no_noise, "shrunk": shrunk_params,
                   "actual_compression_pct": 100.0 * (1 - shrunk_params / max(dense_params, 1)),
                   "actual_compression_vs_no_noise_pct": 100.0 * (1 - shrunk_params / max(no_noise, 1))},
        "macs": macs,
        "macs_convention": "FlopCounterMode FLOPs / 2 (matmul, conv, attention); elementwise ops not counted",
        "latency": latency,
        "threads": threads,
        "max_abs_output_diff": max_output_difference(masked_model, shrunk, batch(8)),
        "dtype": str(param.dtype).replace("torch.", ""),
        "device": str(param.device),
        "torch": torch.__version__,
    }


@torch.no_grad()
def evaluate(model: nn.Module, split, *, device: torch.device, batch_size: int = 1024) -> dict[str, float]:
    """Top-1 accuracy (%) and mean cross-entropy of model (eval mode: θ = E[θ]·mask) on a split."""
    was = model.training
    model.eval()
    correct = total = 0
    loss = 0.0
    for x, y in iterate_batches(split, batch_size, shuffle=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        total += y.numel()
    model.train(was)
    return {"acc": 100.0 * correct / max(total, 1), "loss": loss / max(total, 1)}


def plain_parameters(model: nn.Module) -> int:
    """Parameters of the network without its noise layers (the dense deployable network)."""
    return count_parameters(dense_network(model))


def actual_param_compression(model: nn.Module, dense_params: int) -> float:
    """100 · (1 − parameters of the physically shrunk network / dense parameters)."""
    small = shrink(model) if any(True for _ in noise_layers(model)) else model
    return 100.0 * (1.0 - count_parameters(small) / dense_params)
