"""What the noise layers cost and what pruning buys, measured side by side (paper Appendix D, Tables 3, 4).

Two measurements, each timed in interleaved rounds so that machine noise (other jobs, frequency
scaling, thermal drift) hits every variant alike; only ratios between things measured in the same
rounds are meaningful, never absolute times across runs or machines.

:func:`step_times` — the paper's "Train" and "Inference" columns for one network, with and without
noise layers (the "None" baseline is the same architecture built with ``noise=False``):

* ``train_step``    — one optimisation step as :func:`bmrs.run.train.train_epoch` takes it: training-mode
  forward (one θ sampled per activation element), cross-entropy + KL (``bmrs.nn.noise.model_kl``, mean
  reduction; 0 without noise layers), backward, optimiser step (``bmrs.run.train.make_optimizer``: Adam, or
  AdamW for the ViT, with the noise parameters in their own group);
* ``train_forward`` — the training-mode forward and loss only. The paper does not say whether its
  "Train" column (Appendix D, Tables 3 and 4) includes the backward pass; both readings are measured;
* ``inference``     — one eval-mode forward under ``torch.inference_mode`` (noise = the cached
  E[θ]·mask), timed by :func:`bmrs.nn.shrink.compare_latency`.

E[θ], SNR, BMRS_N and BMRS_U differ only in the rule that sets the masks once per epoch; during a
step they run the identical :class:`bmrs.nn.noise.MultiplicativeNoise` layer, so one "noise" variant
stands for all four of the paper's noisy rows (the pruning decision itself is not part of a step).
Each round runs ``steps`` calls of every variant and phase (the order of the variants alternates
between rounds); a variant's per-round time is the mean over the steps (the median for inference),
the reported time is the median over rounds with its inter-quartile range, and a ratio is the median
over rounds of the per-round ratio noise / None (paired within a round) with its IQR.

:func:`compaction_table` — for finished runs, what physically removing the pruned units buys, by
:func:`bmrs.run.store.compact_run` (which also writes ``<run>/compact/``): parameters (the paper's
metric, dense with noise, dense without noise, shrunk), MACs of the dense and the shrunk network
(``FlopCounterMode`` FLOPs / 2; elementwise ops not counted), latency of the dense masked network and
of the shrunk one at batch 1 and 32 (interleaved), the speed-up and the fraction of the MAC reduction
it realises, (1 − t_shrunk/t_dense) / (1 − M_shrunk/M_dense); and, in a second interleaved comparison,
the same against the *plain* dense network (E[θ] folded in, nothing removed: the "None" architecture),
which separates what removing units buys from what dropping the eval-time noise multiplications buys.
Latency is measured on the CPU (``bmrs.run.store.load_run`` maps the run to the CPU) with a stated thread count.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from torch import Tensor, nn

from bmrs.nn.measure import compare_latency, count_parameters
from bmrs.nn.noise import model_kl, noise_layers
from bmrs.nn.shrink import dense_network, load_compact
from bmrs.report import paper
from bmrs.report.labels import dataset_label, method_label, network_label
from bmrs.run import config as runconfig
from bmrs.run import data, grid
from bmrs.run import store
from bmrs.run.store import compact_run, load_run, train_command
from bmrs.run.train import TrainConfig, make_optimizer, pick_device

#: the paper's methods that train with the (identical) noise layer; one measured "noise" variant stands for all
NOISY_METHODS = ("E[θ]", "SNR", "BMRS_N", "BMRS_U")
VARIANT_LABELS = {"none": "None (no noise layers)", "noise": "noise layers (E[θ], SNR, BMRS_N, BMRS_U alike)"}
PHASES = ("train_step", "train_forward", "inference")

NetworkBuilder = Callable[[bool], nn.Module]


# ------------------------------------------------------------------------------------------------
# The networks of Tables 3 and 4
# ------------------------------------------------------------------------------------------------

def network_builder(network: str, dataset: str, *, image_size: int | None = None) -> tuple[NetworkBuilder, tuple[int, int, int], str]:
    """(builder, input shape, optimiser) of the paper's network for (network, dataset).

    ``builder(noise)`` returns the network with or without noise layers, exactly as a run of
    :mod:`bmrs.run.experiments` builds it (MLP width/depth from the preset of the dataset; ResNet/ViT with
    random weights — the timing does not depend on them — and a head sized to the dataset's classes).
    ``image_size`` replaces the 224-pixel input of ResNet/ViT (e.g. for CPU measurements). No data is read.
    """

    if network not in runconfig.NETWORKS:
        raise ValueError(f"unknown network {network!r}; valid: {', '.join(runconfig.NETWORKS)}")
    family = runconfig.family(network)
    if image_size is not None and family not in ("resnet", "vit"):
        raise ValueError(f"image_size applies to ResNet/ViT only; {network} takes the dataset's 32x32 images")
    spec, classes = data.describe(dataset, network=family, image_size=image_size)
    optimizer = runconfig.preset(network, dataset).get("optimizer", "adam")

    def build(noise: bool) -> nn.Module:
        cfg = runconfig.RunConfig(dataset=dataset, network=network, method="snr" if noise else "none", image_size=image_size)
        return runconfig.build_model(cfg, spec, classes)

    return build, spec.shape, optimizer


# ------------------------------------------------------------------------------------------------
# Step times
# ------------------------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, statistics.median(values), q3


class _Variant:
    """One network and its optimiser, with the training-step and training-forward timers."""

    def __init__(self, model: nn.Module, optimizer: str, lr: float) -> None:

        self.model = model
        self.optimizer = make_optimizer(model, TrainConfig(lr=lr, optimizer=optimizer))
        self.noise_units = sum(layer.num_units for _, layer in noise_layers(model))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        ce = F.cross_entropy(self.model(x), y)
        return ce + model_kl(self.model, "mean").to(ce.device)  # what bmrs.run.train.train_epoch minimises

    def train_step(self, x: Tensor, y: Tensor, steps: int, device: torch.device) -> float:
        self.model.train()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            loss = self.loss(x, y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        _sync(device)
        return (time.perf_counter() - t0) / steps

    def train_forward(self, x: Tensor, y: Tensor, steps: int, device: torch.device) -> float:
        self.model.train()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.loss(x, y)
        _sync(device)
        return (time.perf_counter() - t0) / steps


def step_times(network_builder: NetworkBuilder, input_shape: Sequence[int], *, batch: int = 32, threads: int = 1,
               rounds: int = 10, steps: int = 5, warmup: int = 2, device: str | torch.device = "auto",
               optimizer: str = "adam", lr: float = 1e-3, seed: int = 0) -> pd.DataFrame:
    """Training-step, training-forward and inference times of one network with and without noise layers.

    ``network_builder(noise: bool)`` builds the network (see :func:`network_builder`); both variants get
    the same random batch of ``batch`` inputs of ``input_shape`` and random labels. After ``warmup``
    untimed calls of everything, ``rounds`` interleaved rounds each time ``steps`` calls per variant and
    phase (module docstring). ``torch.set_num_threads(threads)`` during the measurement (restored
    afterwards); ``device="auto"`` is CUDA when available.

    Returns one row per variant ("none", "noise") with, for each phase in :data:`PHASES`,
    ``<phase>_ms`` (median over rounds), ``<phase>_q1_ms``, ``<phase>_q3_ms``, ``<phase>_iqr_ms`` and
    ``<phase>_ratio`` (median over rounds of the per-round ratio to "none"; 1 for "none") with
    ``<phase>_ratio_q1``/``_q3``; plus params, noise_units, batch, threads, rounds, steps, device, input_shape.
    """

    if batch < 1 or threads < 1 or rounds < 1 or steps < 1 or warmup < 0:
        raise ValueError(f"need batch, threads, rounds, steps >= 1 and warmup >= 0; got batch={batch}, "
                         f"threads={threads}, rounds={rounds}, steps={steps}, warmup={warmup}")
    dev = pick_device(device) if isinstance(device, str) else torch.device(device)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(seed)
        variants: dict[str, _Variant] = {}
        for name, noise in (("none", False), ("noise", True)):
            torch.manual_seed(seed)
            variants[name] = _Variant(network_builder(noise).to(dev), optimizer, lr)
        if variants["noise"].noise_units == 0:
            raise ValueError("network_builder(True) built a network without noise layers; nothing to compare")
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((batch, *input_shape), generator=gen).to(dev)
        with torch.no_grad():
            classes = int(variants["none"].model.eval()(x[:1]).shape[-1])
        y = torch.randint(0, classes, (batch,), generator=gen).to(dev)

        for v in variants.values():  # warm-up: allocator, kernels, lazily built caches
            if warmup:
                v.train_step(x, y, warmup, dev)
                v.train_forward(x, y, warmup, dev)
        if warmup:
            compare_latency({k: v.model for k, v in variants.items()}, x, threads=threads, repeats=1,
                                    warmup=warmup)
        times: dict[str, dict[str, list[float]]] = {p: {k: [] for k in variants} for p in PHASES}
        for r in range(rounds):
            order = list(variants) if r % 2 == 0 else list(reversed(variants))
            for name in order:
                times["train_step"][name].append(variants[name].train_step(x, y, steps, dev))
            for name in order:
                times["train_forward"][name].append(variants[name].train_forward(x, y, steps, dev))
            # one untimed call first: the training steps changed μ and σ, so the eval forward recomputes its
            # cached E[θ]·mask once (a deployed network computes it once, not per call)
            lat = compare_latency({k: variants[k].model for k in order}, x, threads=threads, repeats=steps,
                                          warmup=1)
            for name in order:
                times["inference"][name].append(lat[name]["median_s"])
    finally:
        torch.set_num_threads(previous)

    rows = []
    for name, v in variants.items():
        row: dict[str, Any] = {"variant": name, "label": VARIANT_LABELS[name],
                               "methods": "None" if name == "none" else ", ".join(NOISY_METHODS)}
        for phase in PHASES:
            q1, med, q3 = _quartiles(times[phase][name])
            ratios = [a / b for a, b in zip(times[phase][name], times[phase]["none"])]
            r1, rm, r3 = _quartiles(ratios)
            row.update({f"{phase}_ms": 1e3 * med, f"{phase}_q1_ms": 1e3 * q1, f"{phase}_q3_ms": 1e3 * q3,
                        f"{phase}_iqr_ms": 1e3 * (q3 - q1), f"{phase}_ratio": rm, f"{phase}_ratio_q1": r1,
                        f"{phase}_ratio_q3": r3})
        row.update({"params": count_parameters(v.model), "noise_units": v.noise_units, "batch": batch,
                    "threads": threads, "rounds": rounds, "steps": steps, "warmup": warmup, "device": str(dev),
                    "optimizer": optimizer, "input_shape": "x".join(str(int(s)) for s in input_shape),
                    "torch": torch.__version__})
        rows.append(row)
    return pd.DataFrame(rows)


def table_step_times(entries: Iterable[dict[str, Any]], *, batch: int = 32, threads: int = 1, rounds: int = 10,
                     steps: int = 5, warmup: int = 2, device: str = "auto", log: Callable[[str], None] | None = print
                     ) -> pd.DataFrame:
    """:func:`step_times` for every entry {table, network, dataset[, image_size][, batch][, rounds][, steps]}
    (an entry's batch, rounds and steps override the arguments); the rows carry table, network, dataset and
    image_size (None = the paper's)."""
    frames = []
    for e in entries:
        unknown = set(e) - {"table", "network", "dataset", "image_size", "batch", "rounds", "steps"}
        if unknown or not {"network", "dataset"} <= set(e):
            raise ValueError("a step-time entry needs network and dataset (optional: table, image_size, batch, rounds, "
                             f"steps); got {e}")
        build, shape, optimizer = network_builder(e["network"], e["dataset"], image_size=e.get("image_size"))
        n, r, k = int(e.get("batch") or batch), int(e.get("rounds") or rounds), int(e.get("steps") or steps)
        if log:
            log(f"[cost] {e.get('table', '')} {e['network']} / {e['dataset']}: input {tuple(shape)}, batch {n}, "
                f"{r} rounds x {k} steps, {threads} thread(s)")
        t0 = time.perf_counter()
        df = step_times(build, shape, batch=n, threads=threads, rounds=r, steps=k, warmup=warmup,
                        device=device, optimizer=optimizer)
        df.insert(0, "image_size", e.get("image_size"))
        df.insert(0, "dataset", e["dataset"])
        df.insert(0, "network", e["network"])
        df.insert(0, "table", e.get("table", ""))
        df["seconds"] = time.perf_counter() - t0
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------
# The paper's Titan-X numbers as ratios
# ------------------------------------------------------------------------------------------------

def _paper_network(name: str) -> str:
    """Table 4's 'resnet50_pretrained' / 'vit_b16_pretrained' → our network keys."""
    if name.startswith("resnet50"):
        return "resnet50"
    if name.startswith("vit"):
        return "vit_b16"
    return name


def paper_ratios(table: str) -> pd.DataFrame:
    """Per (network, dataset) of Table 3 or 4: the paper's None ms, its noisy methods' ms (min, max), and the
    ratios noisy / None (min, max over E[θ], SNR, BMRS_N, BMRS_U) for the Train and Inference columns."""

    df = paper.results(table)
    rows = []
    for (network, dataset), g in df.groupby(["network", "dataset"], sort=False):
        row: dict[str, Any] = {"table": table, "network": _paper_network(network), "dataset": dataset}
        for metric, phase in (("train_ms_per_batch32", "train"), ("inference_ms_per_batch32", "inference")):
            m = g[g["metric"] == metric]
            none = float(m.loc[m["method"] == "None", "mean"].iloc[0])
            noisy = m.loc[m["method"] != "None", "mean"].astype(float)
            row.update({f"paper_{phase}_none_ms": none, f"paper_{phase}_noise_ms_min": noisy.min(),
                        f"paper_{phase}_noise_ms_max": noisy.max(), f"paper_{phase}_ratio_min": noisy.min() / none,
                        f"paper_{phase}_ratio_max": noisy.max() / none})
        rows.append(row)
    return pd.DataFrame(rows)


def steps_vs_paper(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per measured (table, network, dataset): our ms and ratios beside the paper's Titan-X ones."""
    paper = pd.concat([paper_ratios("table3"), paper_ratios("table4")], ignore_index=True)
    rows = []
    for (table, network, dataset), g in steps.groupby(["table", "network", "dataset"], sort=False):
        none, noise = g[g["variant"] == "none"].iloc[0], g[g["variant"] == "noise"].iloc[0]
        row: dict[str, Any] = {"table": table, "network": network, "dataset": dataset,
                               "image_size": none.get("image_size"), "batch": int(none["batch"]),
                               "device": none["device"], "threads": int(none["threads"])}
        for phase in PHASES:
            row.update({f"{phase}_none_ms": none[f"{phase}_ms"], f"{phase}_noise_ms": noise[f"{phase}_ms"],
                        f"{phase}_ratio": noise[f"{phase}_ratio"], f"{phase}_ratio_q1": noise[f"{phase}_ratio_q1"],
                        f"{phase}_ratio_q3": noise[f"{phase}_ratio_q3"]})
        p = paper[(paper["network"] == network) & (paper["dataset"] == dataset)]
        if not p.empty:
            row.update({k: v for k, v in p.iloc[0].items() if k.startswith("paper_")})
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Compaction of finished runs
# ------------------------------------------------------------------------------------------------



def _run_config(run: Any, profile: str | None):
    """The RunConfig of a (setting, method, seed) triple, built as bmrs.report.study.continuous builds it."""

    try:
        setting, method, seed = run
    except (TypeError, ValueError):
        raise ValueError(f"a run is a run directory or a (setting, method, seed) triple; got {run!r}") from None
    if profile is None:
        raise ValueError("(setting, method, seed) runs need the profile they were run with (profile=...)")
    return grid.run_config(setting, method, seed, profile)


def resolve_run_dir(run: Any, *, profile: str | None = None, results_dir: Path | str | None = None) -> Path:
    """A run directory, or the directory of (setting, method, seed) under results_dir for profile (the run id
    that bmrs.report.study.continuous gives the same triple)."""

    if isinstance(run, (str, os.PathLike)):
        return Path(run)
    return store.run_dir(_run_config(run, profile), results_dir)


def _ms(stats: dict[str, Any]) -> float:
    return 1e3 * float(stats["median_s"])


def compaction_row(run_dir: Path | str, *, threads: int = 1, repeats: int = 50, warmup: int = 5,
                   seed: int = 0) -> dict[str, Any]:
    """One row of :func:`compaction_table` for a finished run directory.

    :func:`bmrs.run.store.compact_run` shrinks the run's network, writes ``<run>/compact/`` and measures
    parameters, MACs and the latency of the dense masked network (noise layers in eval mode) against the
    shrunk one. A second interleaved comparison times the shrunk network against the *plain* dense
    network — the same network with nothing pruned and E[θ] folded into the weights, i.e. the
    architecture of the "None" baseline — which isolates what removing units buys from what dropping
    the noise layers' eval-time multiplications buys.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        load_run(run_dir)  # raises FileNotFoundError naming the command that finishes the run
    cfg = store.config_from_dir(run_dir)
    if cfg.method in ("none", "eigendamage"):
        raise ValueError(f"{run_dir} is a {cfg.method!r} run: it has no noise-layer masks to shrink")
    rep = compact_run(run_dir, threads=threads, repeats=repeats)
    model = load_run(run_dir).eval()
    shrunk = load_compact(run_dir / "compact")
    plain = dense_network(model)
    metrics = store.read_json(run_dir / "metrics.json")
    final = metrics.get("final", {})
    p, m = rep["params"], rep["macs"]
    mac_cut = 1.0 - m["shrunk"] / max(m["dense"], 1)
    row: dict[str, Any] = {
        "run_id": run_dir.name, "dataset": cfg.dataset, "network": cfg.network, "method": cfg.method,
        "seed": cfg.seed, "test_acc": final.get("test_acc"),
        "units_total": rep["paper"]["units_total"], "units_pruned": rep["paper"]["units_pruned"],
        "structure_compression_pct": rep["paper"]["structure_compression_pct"],
        "paper_param_compression_pct": rep["paper"]["param_compression_pct"],
        "params_dense_with_noise": p["dense_with_noise"], "params_dense_without_noise": p["dense_without_noise"],
        "params_plain": count_parameters(plain), "params_shrunk": p["shrunk"],
        "actual_param_compression_pct": p["actual_compression_pct"],
        "actual_param_compression_vs_no_noise_pct": p["actual_compression_vs_no_noise_pct"],
        "macs_dense": m["dense"], "macs_shrunk": m["shrunk"], "macs_ratio": m["ratio"],
        "mac_reduction_pct": 100.0 * mac_cut,
    }
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(model.input_spec.shape)
    for n in (1, 32):
        lat = rep["latency"][f"batch{n}"]
        vs_plain = compare_latency({"plain": plain, "shrunk": shrunk}, torch.randn((n, *shape), generator=gen),
                                           threads=threads, repeats=repeats, warmup=warmup)
        t_plain, t_shrunk = vs_plain["plain"]["median_s"], vs_plain["shrunk"]["median_s"]
        row.update({
            f"latency_b{n}_dense_ms": _ms(lat["dense"]), f"latency_b{n}_dense_iqr_ms": 1e3 * lat["dense"]["iqr_s"],
            f"latency_b{n}_shrunk_ms": _ms(lat["shrunk"]), f"latency_b{n}_shrunk_iqr_ms": 1e3 * lat["shrunk"]["iqr_s"],
            f"speedup_b{n}": lat["speedup"], f"realised_fraction_b{n}": lat["realised_fraction_of_mac_reduction"],
            f"latency_b{n}_plain_ms": 1e3 * t_plain, f"latency_b{n}_plain_iqr_ms": 1e3 * vs_plain["plain"]["iqr_s"],
            f"latency_b{n}_shrunk_vs_plain_ms": 1e3 * t_shrunk,
            f"latency_b{n}_shrunk_vs_plain_iqr_ms": 1e3 * vs_plain["shrunk"]["iqr_s"],
            f"speedup_vs_plain_b{n}": t_plain / t_shrunk,
            f"realised_fraction_vs_plain_b{n}": (1.0 - t_shrunk / t_plain) / mac_cut if mac_cut > 0 else float("nan"),
        })
    row.update({"max_abs_output_diff": rep["max_abs_output_diff"], "threads": threads, "repeats": repeats,
                "device": rep["device"], "dtype": rep["dtype"], "torch": rep["torch"]})
    return row


def compaction_table(runs: Iterable[Any], *, threads: int = 1, repeats: int = 50, profile: str | None = None,
                     results_dir: Path | str | None = None, log: Callable[[str], None] | None = print) -> pd.DataFrame:
    """Shrink and measure finished runs: one row per run (see the module docstring for the columns).

    ``runs``: run directories, or (setting, method, seed) triples as given to :func:`bmrs.report.study.continuous`
    (then ``profile`` and ``results_dir`` locate them). A run that is missing or unfinished raises
    FileNotFoundError naming the command that produces it; a "none" run (no noise layers) a ValueError.
    """
    if threads < 1 or repeats < 1:
        raise ValueError(f"need threads >= 1 and repeats >= 1; got {threads}, {repeats}")
    previous = torch.get_num_threads()
    rows = []
    try:
        for run in runs:
            path = resolve_run_dir(run, profile=profile, results_dir=results_dir)
            if not isinstance(run, (str, os.PathLike)) and not (path / "metrics.json").exists():

                cfg = _run_config(run, profile)
                raise FileNotFoundError(
                    f"{path}: the run {cfg.network}/{cfg.dataset}/{cfg.method}/seed {cfg.seed} (profile {profile}) has "
                    "not finished; run it first with bmrs.report.study.continuous (as notebook 03 does) or: "
                    + train_command(cfg, Path(results_dir or store.RESULTS_DIR)))
            if log:
                log(f"[compaction] {path}")
            rows.append(compaction_row(path, threads=threads, repeats=repeats))
    finally:
        torch.set_num_threads(previous)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------
# Display: the tables and figures of notebook 06
# ------------------------------------------------------------------------------------------------

def _fmt(x: Any, fmt: str = ".2f", na: str = "—") -> str:
    return na if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, fmt)


def span(lo: float, hi: float, fmt: str = ".2f", unit: str = "") -> str:
    """'lo–hi' with a unit, or a single value when both agree at the printed precision; '—' when either end
    is undefined."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    a, b = format(lo, fmt), format(hi, fmt)
    return f"{a}{unit}" if a == b else f"{a}–{b}{unit}"


def table4_resolution(steps: pd.DataFrame) -> str:
    """The input resolution and batch of the Table 4 timings in ``steps`` (:func:`table_step_times`), in words."""
    t4 = steps[steps["table"] == "table4"]
    if t4.empty or (t4["image_size"].isna().all() and (t4["batch"] == 32).all()):
        return "224 px, batch 32 (the paper's)"
    sizes = ", ".join(str(int(s)) + " px" for s in t4["image_size"].dropna().unique()) or "224 px"
    return (f"{sizes}, batch {', '.join(str(int(b)) for b in t4['batch'].unique())} "
            "(reduced; the paper: 224 px, batch 32)")


def measured_on(steps: pd.DataFrame) -> str:
    """Where and how ``steps`` were measured: device, threads, torch, rounds × calls per table, Table 4's input."""
    env = steps.iloc[0]
    rounds = "; ".join(
        t + ": " + ", ".join(sorted({f"{int(r)} rounds x {int(k)} calls" for r, k in zip(g["rounds"], g["steps"])}))
        for t, g in steps.groupby("table"))
    return (f"measured on {env['device']} with {int(env['threads'])} thread(s), torch {env['torch']}; {rounds}; "
            f"Table 4 at {table4_resolution(steps)}")


def _paper_range(row: pd.Series, phase: str) -> str:
    lo, hi = row.get(f"paper_{phase}_ratio_min"), row.get(f"paper_{phase}_ratio_max")
    return "—" if lo is None or not math.isfinite(lo) else f"{lo:.2f}–{hi:.2f}×"


def _paper_ms(row: pd.Series, phase: str) -> str:
    none = row.get(f"paper_{phase}_none_ms")
    if none is None or not math.isfinite(none):
        return "—"
    return f"{none:.2f} → {row[f'paper_{phase}_noise_ms_min']:.2f}–{row[f'paper_{phase}_noise_ms_max']:.2f}"


def _ours_ratio(row: pd.Series, phase: str) -> str:
    return f"{row[f'{phase}_ratio']:.2f}× [{row[f'{phase}_ratio_q1']:.2f}, {row[f'{phase}_ratio_q3']:.2f}]"


def step_table(cmp: pd.DataFrame, table: str, steps: pd.DataFrame) -> pd.DataFrame:
    """Table 3 or 4 (``table``) for display: per (network, dataset) of ``cmp`` (:func:`steps_vs_paper` of
    ``steps``) the step times without → with noise and their ratio, ours beside the paper's Titan-X ones.
    Title and notes in ``attrs``; empty when ``table`` was not measured."""
    env = steps.iloc[0]
    rows = []
    for _, r in cmp[cmp["table"] == table].iterrows():
        size = "224" if pd.isna(r["image_size"]) else str(int(r["image_size"]))
        rows.append({
            "network": network_label(r["network"]), "dataset": dataset_label(r["dataset"]),
            "input": ("32 px" if table == "table3" else f"{size} px") + f", batch {int(r['batch'])}",
            "train step ms (ours)": f"{r['train_step_none_ms']:.2f} → {r['train_step_noise_ms']:.2f}",
            "train step ratio (ours)": _ours_ratio(r, "train_step"),
            "train fwd ratio (ours)": _ours_ratio(r, "train_forward"),
            "Train ms (paper)": _paper_ms(r, "train"), "Train ratio (paper)": _paper_range(r, "train"),
            "inference ms (ours)": f"{r['inference_none_ms']:.2f} → {r['inference_noise_ms']:.2f}",
            "inference ratio (ours)": _ours_ratio(r, "inference"),
            "Inf. ms (paper)": _paper_ms(r, "inference"), "Inf. ratio (paper)": _paper_range(r, "inference")})
    df = pd.DataFrame(rows)
    where = f"{env['device']}, {int(env['threads'])} thread(s)"
    df.attrs.update(
        title=(f"Table {table[-1]}: step times without → with noise layers and their ratio; ours on {where}, "
               "the paper's on a Titan X"),
        notes=("one 'noise' measurement stands for E[θ], SNR, BMRS_N and BMRS_U (identical noise layer); "
               "ours: median over interleaved rounds, ratio = median of per-round ratios [IQR]; "
               "train step = forward + backward + optimiser step, train fwd = training-mode forward + loss only"
               + (f"; Table 4 at {table4_resolution(steps)}" if table == "table4" else "")))
    return df


def noise_overhead_figure(cmp: pd.DataFrame, steps: pd.DataFrame) -> Figure:
    """Our noise / None ratios per (network, dataset) of Tables 3 and 4 (bars with IQR: train step, train
    forward, inference) beside the paper's Titan-X ranges (vertical bars with a diamond), log₂ y axis."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    env = steps.iloc[0]
    groups = [(t, cmp[cmp["table"] == t]) for t in ("table3", "table4") if (cmp["table"] == t).any()]
    fig, axes = plt.subplots(1, len(groups), figsize=(4.8 + 1.1 * len(cmp), 4.0), squeeze=False,
                             gridspec_kw={"width_ratios": [max(len(g), 1) for _, g in groups]}, constrained_layout=True)
    phases = [("train_step", "train step (ours)", "C0"), ("train_forward", "train forward (ours)", "C9"),
              ("inference", "inference (ours)", "C2")]
    for ax, (table, g) in zip(axes[0], groups):
        x = np.arange(len(g))
        w = 0.22
        for k, (phase, name, color) in enumerate(phases):
            med = g[f"{phase}_ratio"].to_numpy()
            err = np.vstack([med - g[f"{phase}_ratio_q1"].to_numpy(), g[f"{phase}_ratio_q3"].to_numpy() - med])
            ax.bar(x + (k - 1) * w, med, w, yerr=err, color=color, label=name, capsize=2, error_kw={"lw": 0.8})
        for i, (_, r) in enumerate(g.iterrows()):
            for phase, dx, color, name in (("train", -w, "k", "Train (paper, Titan X)"),
                                           ("inference", w, "0.45", "Inference (paper, Titan X)")):
                lo, hi = r.get(f"paper_{phase}_ratio_min"), r.get(f"paper_{phase}_ratio_max")
                if lo is not None and np.isfinite(lo):
                    ax.plot([i + dx] * 2, [lo, hi], color=color, lw=2.5, solid_capstyle="butt")
                    ax.plot([i + dx], [(lo + hi) / 2], marker="D", color=color, ms=5, label=name if i == 0 else None)
        ax.axhline(1.0, color="0.3", lw=0.8, ls=":")
        ax.set_yscale("log", base=2)
        ax.set_xticks(x, [f"{network_label(n)}\n{dataset_label(d)}" for n, d in zip(g["network"], g["dataset"])],
                      fontsize=8)
        b = ", ".join(str(int(v)) for v in g["batch"].unique())
        if table == "table3":
            sub = f"32 px, batch {b}"
        else:
            px = ", ".join("224" if pd.isna(v) else str(int(v)) for v in g["image_size"].unique())
            sub = f"{px} px, batch {b}" + ("" if px == "224" and b == "32" else "; paper: 224 px, 32")
        ax.set_title(f"Table {table[-1]} ({sub})", fontsize=9)
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:g}×"))
    axes[0][0].set_ylabel("time with noise / time without")
    axes[0][0].legend(fontsize=7, loc="upper right", framealpha=0.9)
    fig.suptitle(f"What the noise layers cost: ours ({env['device']}, {int(env['threads'])} thread(s)) vs the paper's "
                 "Titan-X ratios", fontsize=10)
    return fig


#: The columns of :func:`compaction_table` that :func:`compaction_means` averages over seeds.
COMPACTION_MEANS = ("test_acc", "paper_param_compression_pct", "params_dense_with_noise", "params_dense_without_noise",
                    "params_shrunk", "actual_param_compression_pct", "macs_dense", "macs_shrunk", "mac_reduction_pct",
                    "latency_b1_dense_ms", "latency_b1_plain_ms", "latency_b1_shrunk_ms", "speedup_b1",
                    "speedup_vs_plain_b1", "realised_fraction_vs_plain_b1", "latency_b32_dense_ms",
                    "latency_b32_plain_ms", "latency_b32_shrunk_ms", "speedup_b32", "speedup_vs_plain_b32",
                    "realised_fraction_b32", "realised_fraction_vs_plain_b32")


def compaction_means(compaction: pd.DataFrame) -> pd.DataFrame:
    """:func:`compaction_table` averaged over seeds per (network, dataset, method), with the number of seeds."""
    keys = ["network", "dataset", "method"]
    agg = compaction.groupby(keys, sort=False)[list(COMPACTION_MEANS)].mean().reset_index()
    agg.insert(3, "seeds", compaction.groupby(keys, sort=False)["seed"].nunique().to_numpy())
    return agg


def compaction_display(compaction: pd.DataFrame) -> pd.DataFrame:
    """What pruning buys, for display: per (network, dataset, method) of ``compaction`` (means over seeds)
    accuracy, the paper's metric, parameters dense (noise / plain) and shrunk, MACs, latency at batch 1 and
    32 (masked / plain / shrunk), speed-ups and the realised fraction of the MAC reduction. Title and notes
    in ``attrs``."""
    c0 = compaction.iloc[0]
    rows = []
    for _, r in compaction_means(compaction).iterrows():
        rows.append({
            "network": network_label(r["network"]), "dataset": dataset_label(r["dataset"]),
            "method": method_label(r["method"]), "seeds": int(r["seeds"]), "acc. %": _fmt(r["test_acc"]),
            "paper metric %": _fmt(r["paper_param_compression_pct"]),
            "params dense (noise / plain)": f"{r['params_dense_with_noise']:,.0f} / {r['params_dense_without_noise']:,.0f}",
            "params shrunk": f"{r['params_shrunk']:,.0f}", "actual %": _fmt(r["actual_param_compression_pct"]),
            "MACs dense → shrunk": f"{r['macs_dense']:,.0f} → {r['macs_shrunk']:,.0f}",
            "MACs −%": _fmt(r["mac_reduction_pct"]),
            "b1 ms masked / plain / shrunk": f"{r['latency_b1_dense_ms']:.3f} / {r['latency_b1_plain_ms']:.3f} / "
                                             f"{r['latency_b1_shrunk_ms']:.3f}",
            "b1 speed-up vs plain": _fmt(r["speedup_vs_plain_b1"], ".2f") + "×",
            "b32 ms masked / plain / shrunk": f"{r['latency_b32_dense_ms']:.3f} / {r['latency_b32_plain_ms']:.3f} / "
                                              f"{r['latency_b32_shrunk_ms']:.3f}",
            "b32 speed-up vs masked / plain": f"{_fmt(r['speedup_b32'])}× / {_fmt(r['speedup_vs_plain_b32'])}×",
            "b32 realised vs masked / plain": f"{_fmt(100 * r['realised_fraction_b32'], '.0f')} / "
                                              f"{_fmt(100 * r['realised_fraction_vs_plain_b32'], '.0f')} %"})
    df = pd.DataFrame(rows)
    df.attrs.update(
        title="What pruning buys: the Table 1 networks physically shrunk, against the dense ones (not in the paper)",
        notes=(f"CPU latency, {int(c0['threads'])} thread(s), median of {int(c0['repeats'])} interleaved repeats; "
               "masked = trained network with noise layers in eval mode; plain = nothing pruned, E[θ] folded in "
               "(the None architecture); MACs = FlopCounterMode FLOPs / 2 at batch 1; "
               "realised = (1 − t_s/t_d)/(1 − M_s/M_d); means over seeds"))
    return df


def compaction_figure(compaction: pd.DataFrame) -> Figure:
    """Left: parameters, MACs and latency (batch 1, 32) of the shrunk networks as % of the dense plain ones;
    right: latency reduction against MAC reduction (the diagonal: time falls with MACs). Means over seeds."""
    import matplotlib.pyplot as plt  # deferred: pyplot (and its backend) only when a figure is drawn

    agg = compaction_means(compaction)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 3.0 + 0.75 * len(agg)), 4.2), constrained_layout=True,
                                   gridspec_kw={"width_ratios": [max(len(agg), 2), 2.2]})
    names = [f"{network_label(n)} {dataset_label(d)}\n{method_label(m)}"
             for n, d, m in zip(agg["network"], agg["dataset"], agg["method"])]
    kept = {
        "parameters": 100 * agg["params_shrunk"] / agg["params_dense_without_noise"],
        "MACs": 100 * agg["macs_shrunk"] / agg["macs_dense"].clip(lower=1),
        "latency, batch 1": 100 * agg["latency_b1_shrunk_ms"] / agg["latency_b1_plain_ms"],
        "latency, batch 32": 100 * agg["latency_b32_shrunk_ms"] / agg["latency_b32_plain_ms"],
    }
    x = np.arange(len(agg))
    w = 0.8 / len(kept)
    for k, (name, vals) in enumerate(kept.items()):
        ax1.bar(x + (k - 1.5) * w, vals, w, label=name, color=f"C{[0, 1, 2, 4][k]}")
    ax1.axhline(100, color="0.3", lw=0.8, ls=":")
    ax1.set_xticks(x, names, fontsize=7, rotation=0)
    ax1.set_ylabel("shrunk, % of the dense plain network")
    ax1.set_title("What is left after removing the pruned units", fontsize=9)
    ax1.legend(fontsize=7, ncols=2)
    ax2.plot([0, 100], [0, 100], color="0.5", lw=0.8, ls="--", label="time falls with MACs (100 % realised)")
    markers = {"mlp": "o", "lenet5": "s"}
    for j, (n, g) in enumerate(agg.groupby("network", sort=False)):
        color = ["C0", "C3", "C5", "C7"][j % 4]
        for b, face in ((1, "none"), (32, color)):
            cut = 100 * (1 - g[f"latency_b{b}_shrunk_ms"] / g[f"latency_b{b}_plain_ms"])
            ax2.scatter(g["mac_reduction_pct"], cut, marker=markers.get(n, "^"), s=32, facecolors=face, edgecolors=color,
                        label=f"{network_label(n)}, batch {b}" + (" (open)" if b == 1 else ""))
    ax2.set_xlabel("MAC reduction %")
    ax2.set_ylabel("latency reduction % (vs dense plain)")
    ax2.set_title("Speed-up realised from the MAC reduction", fontsize=9)
    ax2.legend(fontsize=6.5, loc="upper left")
    fig.suptitle(f"What pruning buys (CPU, {int(compaction.iloc[0]['threads'])} thread(s))", fontsize=10)
    return fig


def compaction_lines(compaction: pd.DataFrame) -> list[str]:
    """What pruning buys, in Markdown bullets per (network, dataset): parameters and MACs kept, the speed-up
    over the plain and the masked dense network, and the realised fraction of the MAC reduction."""
    lines = []
    for (n, d), g in compaction_means(compaction).groupby(["network", "dataset"], sort=False):
        kept = 100 - g["actual_param_compression_pct"]
        lines.append(
            f"* **{network_label(n)} / {dataset_label(d)}** ({len(g)} method(s)): the shrunk networks keep "
            f"{span(kept.min(), kept.max(), '.1f', ' %')} of the parameters the paper counts (dense, with the noise "
            f"parameters; the paper's metric says "
            f"{span(g['paper_param_compression_pct'].min(), g['paper_param_compression_pct'].max(), '.1f', ' %')} "
            f"removed) and {span(100 - g['mac_reduction_pct'].max(), 100 - g['mac_reduction_pct'].min(), '.1f', ' %')} "
            f"of the MACs; against the plain dense network they run "
            f"{span(g['speedup_vs_plain_b1'].min(), g['speedup_vs_plain_b1'].max(), unit='×')} faster at batch 1 and "
            f"{span(g['speedup_vs_plain_b32'].min(), g['speedup_vs_plain_b32'].max(), unit='×')} at batch 32 "
            f"(realised: {span(100 * g['realised_fraction_vs_plain_b32'].min(), 100 * g['realised_fraction_vs_plain_b32'].max(), '.0f', ' %')} "
            f"of the MAC reduction); against the masked network as trained (noise layers still in place) "
            f"{span(g['speedup_b32'].min(), g['speedup_b32'].max(), unit='×')} at batch 32.")
    if not bool((compaction["units_pruned"] > 0).any()):
        lines.append("* No run of this profile pruned a unit, so there is nothing to shrink: every 'realised' "
                     "fraction is undefined (—) and the only speed-up is that of dropping the noise layers.")
    return lines
