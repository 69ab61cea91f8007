"""The comparison protocol for the post-hoc baselines (baselines_spec.md part C).

Every post-hoc method starts from the same trained network as the BMRS runs of the same setting and
seed — the "base" run: noise layers, no masking, the full training schedule (spec 4.5) — and gets the
same post-pruning budget as BMRS's fine-tuning phase (10 epochs, best validation epoch evaluated on
test). What differs is how the network is pruned:

* ``l2`` (the paper's L2 baseline, spec 3): the globally smallest incoming-weight norms, to the
  structure fraction that BMRS_N reached (spec 3);
* ``c_obd``, ``dirichlet``: unit scores fitted on the base network (diagonal Fisher; Dirichlet
  switches), units masked through the noise layers to the *parameter* compression BMRS_N reached on its
  own (counted on the physically shrunk network), then fine-tuned like BMRS (CE + KL, masks frozen);
* ``eigendamage``: the noise layers are folded into the weights (spec C.2 (b)), eigen-units are pruned
  by one global threshold with the per-layer cap, the layers are rebuilt as rotate → core → rotate, and
  the network is fine-tuned with cross-entropy only (it has no noise layers); its parameter count
  includes the rotation matrices (spec C.3) and is matched to BMRS_N's.

Matching a parameter compression is done by bisection over the method's own pruning level.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from bmrs.atomic import atomic_path
from bmrs.criteria import Criterion, prune_to_fraction
from bmrs.train import PruningPlan, TrainConfig, Trainer, evaluate, make_optimizer, train_epoch


def reference_method() -> str:
    """The BMRS_N variant whose compression the baselines are matched to: the released code's (it
    produced the paper's tables, spec 2.7)."""
    return "bmrs_n_code"


def plain_parameters(model: nn.Module) -> int:
    """Parameters of the network without its noise layers (the dense deployable network)."""
    from bmrs.compact import shrink

    return sum(p.numel() for p in shrink(_unmasked(model)).parameters())


def actual_param_compression(model: nn.Module, dense_params: int) -> float:
    """100 · (1 − parameters of the physically shrunk network / dense parameters)."""
    from bmrs.baselines.eigendamage import count_parameters
    from bmrs.compact import shrink
    from bmrs.noise import noise_layers

    small = shrink(model) if any(True for _ in noise_layers(model)) else model
    return 100.0 * (1.0 - count_parameters(small) / dense_params)


def _bisect(level_to_compression: Callable[[float], float], target: float, *, lo: float = 0.0, hi: float = 1.0,
            steps: int = 14) -> float:
    """The pruning level in [lo, hi] whose compression is closest to target (monotone in the level)."""
    best, best_gap = lo, math.inf
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        comp = level_to_compression(mid)
        gap = abs(comp - target)
        if gap < best_gap:
            best, best_gap = mid, gap
        if comp < target:
            lo = mid
        else:
            hi = mid
    return best


def fine_tune_and_select(model: nn.Module, bundle, tcfg: TrainConfig, *, epochs: int, seed: int,
                         device: torch.device, ce_only: bool = False, log=print) -> dict[str, Any]:
    """`epochs` epochs of training; the state with the best validation accuracy is evaluated on test."""
    cfg = dataclasses.replace(tcfg, kl_weight=0.0) if ce_only else tcfg
    model.to(device)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state = [], -math.inf, None
    for e in range(epochs):
        stats = train_epoch(model, bundle.train, optimizer, cfg=cfg, device=device, generator=generator,
                            desc=f"finetune {e + 1}/{epochs}")
        val = evaluate(model, bundle.val, device=device, batch_size=cfg.eval_batch_size)
        history.append({"epoch": e + 1, "phase": "finetune", **stats, "val_acc": val["acc"]})
        if val["acc"] > best:
            best, best_state = val["acc"], {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        log(f"finetune epoch {e + 1}: val {val['acc']:.2f}%")
    if best_state is not None:
        model.load_state_dict(best_state)
    test = evaluate(model, bundle.test, device=device, batch_size=cfg.eval_batch_size)
    return {"history": history, "test_acc": test["acc"], "val_acc": best if best_state is not None else None}


def run(cfg, model: nn.Module, bundle, tcfg: TrainConfig, *, device: torch.device, out: Path,
        results_dir, log=print) -> dict[str, Any]:
    """A post-hoc baseline run (see the module docstring); returns the metrics dict of experiments.run."""
    from bmrs import experiments as ex
    from bmrs.compact import count_macs

    base_cfg = ex.base_config(cfg)
    ex.run(base_cfg, results_dir=results_dir, log=log)
    model.load_state_dict(torch.load(ex.run_dir(base_cfg, results_dir) / "model.pt", map_location="cpu",
                                     weights_only=True))
    model.to(device)
    ref = ex.run(cfg.replace(method=reference_method()), results_dir=results_dir, log=log)
    dense = plain_parameters(model)
    ref_model = ex.load_model(cfg.replace(method=reference_method()), results_dir)
    target = actual_param_compression(ref_model, dense)
    log(f"{cfg.method}: matching {reference_method()}'s parameter compression {target:.2f}% "
        f"(its test accuracy {ref['final']['test_acc']:.2f}%)")
    example = bundle.input_spec.example(1)
    if cfg.method == "eigendamage":
        from bmrs.baselines.eigendamage import EigenDamage, count_parameters, fold_noise

        plain = fold_noise(model).to(device)
        method = EigenDamage()
        method.fit(plain, bundle, device=device, seed=cfg.seed)
        base_params = count_parameters(plain)
        ratio = _bisect(lambda r: 100.0 * (1 - count_parameters(method.prune(plain, r)) / base_params), target,
                        hi=0.99)
        pruned = method.prune(plain, ratio)
        achieved = 100.0 * (1 - count_parameters(pruned) / base_params)
        tuned = fine_tune_and_select(pruned, bundle, tcfg, epochs=tcfg.finetune_epochs, seed=cfg.seed,
                                     device=device, ce_only=True, log=log)
        final = {"level": ratio, "level_kind": "eigen-unit ratio", "layers": method.last_summary,
                 "parameters": count_parameters(pruned), "macs": count_macs(pruned.cpu(), example),
                 "variant": method.variant()}
        net = pruned
    else:
        criterion = _criterion(cfg.method)
        criterion.fit(model, bundle, device=device, seed=cfg.seed)
        if cfg.method == "l2":  # the paper's rule: BMRS_N's structure fraction (spec 3)
            fraction = ref["final"]["structure_compression_pct"] / 100.0
        else:
            probe = copy.deepcopy(model)
            fraction = _bisect(lambda f: actual_param_compression(_masked(probe, criterion, f), dense), target)
        plan = PruningPlan(criterion=criterion, during_training=False, final_fraction=fraction)
        ft = dataclasses.replace(tcfg, epochs=0)
        trainer = Trainer(model, bundle, ft, plan, seed=cfg.seed, device=device, checkpoint=out / "checkpoint.pt",
                          log=log)
        result = trainer.fit()
        achieved = actual_param_compression(model, dense)
        tuned = {"history": result.history, "test_acc": result.final["test_acc"], "val_acc": result.final["val_acc"]}
        final = {**result.final, "level": fraction, "level_kind": "unit fraction"}
        if cfg.method == "l2":
            final["target_structure_compression_pct"] = 100.0 * fraction
        from bmrs.compact import shrink

        final["macs"] = count_macs(shrink(model).cpu(), example)
        final["parameters"] = sum(p.numel() for p in shrink(model).parameters())
        if hasattr(criterion, "variant"):
            final["variant"] = criterion.variant
        net = model
    from bmrs.compact import compare_latency, shrink

    dense_net = shrink(_unmasked(model)) if cfg.method != "eigendamage" else plain
    deploy = shrink(model) if cfg.method != "eigendamage" else net
    final["latency_batch32"] = compare_latency({"dense": dense_net.cpu(), "pruned": deploy.cpu()},
                                              bundle.input_spec.example(32), threads=1, repeats=20)
    final.update({"test_acc": tuned["test_acc"], "val_acc": tuned["val_acc"], "actual_param_compression_pct": achieved,
                  "target_actual_param_compression_pct": target, "dense_parameters": dense,
                  "reference": reference_method()})
    final.setdefault("param_compression_pct", achieved)
    final.setdefault("structure_compression_pct", None)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(net.state_dict() if cfg.method != "eigendamage" else net.cpu().state_dict(), tmp)
    return {"history": tuned["history"], "final": final}


def _unmasked(model: nn.Module) -> nn.Module:
    from bmrs.noise import noise_layers

    probe = copy.deepcopy(model)
    for _, layer in noise_layers(probe):
        layer.mask.fill_(1.0)
    return probe


def _masked(model: nn.Module, criterion: Criterion, fraction: float) -> nn.Module:
    prune_to_fraction(model, criterion, fraction)
    return model


def _criterion(method: str) -> Criterion:
    from bmrs.criteria import make_criterion

    return make_criterion(method)


def eigendamage_sweep(model: nn.Module, trained_state: dict, bundle, levels, tcfg: TrainConfig, *, seed: int,
                      device: torch.device, finetune_epochs: int = 1) -> list[dict[str, Any]]:
    """EigenDamage's post-training curve (spec C.2): from the base network with its noise folded in, prune
    the globally least important `level`% of eigen-units (per-layer cap 0.95), fine-tune
    `finetune_epochs` epochs with cross-entropy (unshuffled, as the BMRS sweeps), record test accuracy
    and the parameter compression of the rebuilt network, rotations included (spec C.3)."""
    from bmrs.baselines.eigendamage import EigenDamage, count_parameters, fold_noise
    from bmrs.compact import count_macs

    model.load_state_dict(trained_state)
    plain = fold_noise(model).to(device)
    method = EigenDamage()
    method.fit(plain, bundle, device=device, seed=seed)
    dense = count_parameters(plain)
    cfg = dataclasses.replace(tcfg, kl_weight=0.0)
    generator = torch.Generator().manual_seed(seed)
    example = bundle.input_spec.example(1)
    records, last = [], None
    for level in levels:
        pruned = method.prune(plain, float(level) / 100.0).to(device)
        params = count_parameters(pruned)
        if params == last:
            continue
        last = params
        optimizer = make_optimizer(pruned, cfg)
        for _ in range(finetune_epochs):
            train_epoch(pruned, bundle.train, optimizer, cfg=cfg, device=device, generator=generator, shuffle=False,
                        desc=f"EigenDamage {level:.1f}%")
        test = evaluate(pruned, bundle.test, device=device, batch_size=cfg.eval_batch_size)
        comp = 100.0 * (1.0 - params / dense)
        records.append({"criterion": "EigenDamage", "level": float(level), "test_acc": test["acc"],
                        "structure_compression_pct": None, "param_compression_pct": comp,
                        "actual_param_compression_pct": comp, "parameters": params,
                        "macs": count_macs(pruned.cpu(), example), "units_kept": None})
    model.load_state_dict(trained_state)
    return records
