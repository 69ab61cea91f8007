"""The comparison protocol for the post-hoc baselines (EigenDamage: Wang et al., ICML 2019; C-OBD, its
diagonal-Fisher baseline; Dirichlet pruning: Adamczewski & Park, 2021), set beside BMRS as the released
BMRS code's compression_vs_accuracy_separate.py sets its criteria side by side.

Every post-hoc method starts from the same trained network as the BMRS runs of the same setting and
seed — the "base" run: noise layers, no masking, the full training schedule — and gets the
same post-pruning budget as BMRS's fine-tuning phase (10 epochs, best validation epoch evaluated on
test). What differs is how the network is pruned:

* ``l2`` (the paper's L2 baseline): the globally smallest incoming-weight norms, to the
  structure fraction that BMRS_N reached (the released train.py's --compression_percentage_file);
* ``c_obd``, ``dirichlet``: unit scores fitted on the base network (diagonal Fisher; Dirichlet
  switches), units masked through the noise layers to the *parameter* compression BMRS_N reached on its
  own (counted on the physically shrunk network), then fine-tuned like BMRS (CE + KL, masks frozen);
* ``eigendamage``: the noise layers are folded into the weights as E[θ]·mask
  (bmrs.prune.eigendamage.fold_noise), eigen-units are pruned by one global threshold with the per-layer cap, the layers are rebuilt as rotate → core → rotate, and
  the network is fine-tuned with cross-entropy only (it has no noise layers); its parameter count
  includes the rotation matrices (as the EigenDamage authors count them) and is matched to BMRS_N's.

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

from bmrs.nn.measure import actual_param_compression, compare_latency, count_macs, count_parameters, plain_parameters
from bmrs.nn.shrink import dense_network, shrink
from bmrs.prune import registry
from bmrs.prune.criteria import Criterion, prune_to_fraction
from bmrs.prune.eigendamage import EigenDamage, fold_noise
from bmrs.run.train import PruningPlan, TrainConfig, Trainer, make_optimizer, sweep_levels
from bmrs.util.atomic import atomic_path

#: The BMRS_N variant whose compression the baselines are matched to: the released code's, which produced
#: the paper's tables (ΔF_N without 2π).
REFERENCE_METHOD = "bmrs_n_code"


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


def fine_tune(model: nn.Module, bundle, tcfg: TrainConfig, *, seed: int, device: torch.device,
              checkpoint: Path | None = None, plan: PruningPlan | None = None, ce_only: bool = False,
              log=print) -> dict[str, Any]:
    """The fine-tuning phase of the Trainer alone (``tcfg.finetune_epochs`` epochs, best validation epoch
    evaluated on test), after ``plan``'s final pruning if it has one; ``ce_only`` drops the KL term (EigenDamage's
    rebuilt network has no noise layers). Returns the Trainer's history and final metrics."""
    cfg = dataclasses.replace(tcfg, epochs=0, **({"kl_weight": 0.0} if ce_only else {}))
    trainer = Trainer(model, bundle, cfg, plan or PruningPlan(criterion=None), seed=seed, device=device,
                      checkpoint=checkpoint, log=log)
    result = trainer.fit()
    return {"history": result.history, "final": result.final}


def run(cfg, model: nn.Module, bundle, tcfg: TrainConfig, *, reference: dict[str, Any], reference_model: nn.Module,
        device: torch.device, out: Path, log=print) -> dict[str, Any]:
    """A post-hoc baseline run (see the module docstring). ``model`` holds the base network's weights;
    ``reference``/``reference_model`` are the metrics and network of the BMRS_N run of the same setting and
    seed. Returns the metrics dict of :func:`bmrs.run.experiments.run`."""
    model.to(device)
    dense = plain_parameters(model)
    target = actual_param_compression(reference_model, dense)
    log(f"{cfg.method}: matching {REFERENCE_METHOD}'s parameter compression {target:.2f}% "
        f"(its test accuracy {reference['final']['test_acc']:.2f}%)")
    example = bundle.input_spec.example(1)
    if cfg.method == "eigendamage":
        plain = fold_noise(model).to(device)
        method = EigenDamage()
        method.fit(plain, bundle, device=device, seed=cfg.seed)
        base_params = count_parameters(plain)
        ratio = _bisect(lambda r: 100.0 * (1 - count_parameters(method.prune(plain, r)) / base_params), target,
                        hi=0.99)
        pruned = method.prune(plain, ratio)
        achieved = 100.0 * (1 - count_parameters(pruned) / base_params)
        tuned = fine_tune(pruned, bundle, tcfg, seed=cfg.seed, device=device, checkpoint=out / "checkpoint.pt",
                          ce_only=True, log=log)
        final = {"level": ratio, "level_kind": "eigen-unit ratio", "layers": method.last_summary,
                 "parameters": count_parameters(pruned), "macs": count_macs(pruned.cpu(), example),
                 "variant": method.variant()}
        net, dense_net, deploy = pruned, plain, pruned
    else:
        criterion = registry.make_criterion(cfg.method)
        criterion.fit(model, bundle, device=device, seed=cfg.seed)
        if cfg.method == "l2":  # the paper's rule: BMRS_N's structure fraction (Tables 1-2)
            fraction = reference["final"]["structure_compression_pct"] / 100.0
        else:
            probe = copy.deepcopy(model)
            fraction = _bisect(lambda f: actual_param_compression(_masked(probe, criterion, f), dense), target)
        plan = PruningPlan(criterion=criterion, during_training=False, final_fraction=fraction)
        tuned = fine_tune(model, bundle, tcfg, seed=cfg.seed, device=device, checkpoint=out / "checkpoint.pt",
                          plan=plan, log=log)
        achieved = actual_param_compression(model, dense)
        final = {**tuned["final"], "level": fraction, "level_kind": "unit fraction"}
        if cfg.method == "l2":
            final["target_structure_compression_pct"] = 100.0 * fraction
        small = shrink(model)
        final["macs"] = count_macs(small.cpu(), example)
        final["parameters"] = count_parameters(small)
        if hasattr(criterion, "variant"):
            final["variant"] = criterion.variant
        net, dense_net, deploy = model, dense_network(model), small
    final["latency_batch32"] = compare_latency({"dense": dense_net.cpu(), "pruned": deploy.cpu()},
                                              bundle.input_spec.example(32), threads=1, repeats=20)
    final.update({"test_acc": tuned["final"]["test_acc"], "val_acc": tuned["final"]["val_acc"],
                  "actual_param_compression_pct": achieved, "target_actual_param_compression_pct": target,
                  "dense_parameters": dense, "reference": REFERENCE_METHOD})
    final.setdefault("param_compression_pct", achieved)
    final.setdefault("structure_compression_pct", None)
    with atomic_path(out / "model.pt") as tmp:
        torch.save(net.cpu().state_dict(), tmp)
    return {"history": tuned["history"], "final": final}


def _masked(model: nn.Module, criterion: Criterion, fraction: float) -> nn.Module:
    prune_to_fraction(model, criterion, fraction)
    return model


def eigendamage_sweep(model: nn.Module, trained_state: dict, bundle, levels, tcfg: TrainConfig, *, seed: int,
                      device: torch.device, finetune_epochs: int = 1) -> list[dict[str, Any]]:
    """EigenDamage's post-training curve: from the base network with its noise folded in, prune the globally
    least important `level`% of eigen-units (per-layer cap 0.95), fine-tune `finetune_epochs` epochs with
    cross-entropy (unshuffled, as the BMRS sweeps; a fresh optimiser per level, since each level is a new
    network), record test accuracy and the parameter compression of the rebuilt network, rotations included."""
    model.load_state_dict(trained_state)
    plain = fold_noise(model).to(device)
    method = EigenDamage()
    method.fit(plain, bundle, device=device, seed=seed)
    dense = count_parameters(plain)
    cfg = dataclasses.replace(tcfg, kl_weight=0.0)
    example = bundle.input_spec.example(1)

    def prune(level: float):
        pruned = method.prune(plain, level / 100.0).to(device)
        return pruned, count_parameters(pruned)

    def measure(pruned: nn.Module) -> dict[str, Any]:
        params = count_parameters(pruned)
        comp = 100.0 * (1.0 - params / dense)
        return {"structure_compression_pct": None, "param_compression_pct": comp,
                "actual_param_compression_pct": comp, "parameters": params,
                "macs": count_macs(pruned.cpu(), example), "units_kept": None}

    records = sweep_levels(levels, prune, measure, bundle, cfg, name="EigenDamage", seed=seed, device=device,
                           finetune_epochs=finetune_epochs, optimizer_for=lambda net: make_optimizer(net, cfg))
    model.load_state_dict(trained_state)
    return records
