"""Runs as data: a config dataclass, a directory per config hash, skip-if-done, atomic results.

``run(RunConfig(...))`` trains, prunes and evaluates one (dataset, network, method, seed) setting and
writes ``results/runs/<config-hash>/``:

* ``config.json``  — the full configuration (and the derived training settings);
* ``metrics.json`` — per-epoch history and final numbers (written last, atomically: its presence
  means the run is complete, and a rerun returns it without training);
* ``model.pt``     — the selected state_dict (with the noise layers' masks);
* ``checkpoint.pt`` — while running only: the per-epoch checkpoint an interrupted run resumes from.

Methods that prune a trained network once (the paper's L2 baseline, C-OBD, Dirichlet pruning,
EigenDamage) start from the "base" run of the same setting and seed — noise layers, no masking — and
are matched to the compression BMRS_N reached there (bmrs.run.posthoc); ``run`` obtains both by
running (or reusing) those runs first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from bmrs.nn.paper_metric import PAPER_METRIC_VERSION
from bmrs.prune import registry
from bmrs.run import data, posthoc
from bmrs.run.config import RunConfig, base_config, build_model, criterion_for, family
from bmrs.run.store import (RESULTS_DIR, ResultsCorruptError, check_model_file, config_from_dir,  # noqa: F401 (re-exported)
                            final_metrics, load_model, read_json, run_dir, save_model, write_json_atomic)
from bmrs.run.train import PruningPlan, Trainer, pick_device, post_training_sweep
from bmrs.util import locks, provenance


# A run's numbers must not depend on how many threads the process happens to have: torch's CPU kernels
# reduce in a different order with 1 and 2 intra-op threads (86.0 % vs 87.0 % test accuracy on the digits
# smoke setting, other units kept). So every run trains with exactly RUN_THREADS intra-op thread(s), and
# parallelism comes from running runs side by side (``python -m bmrs grid --workers N``).
RUN_THREADS = 1


@contextlib.contextmanager
def run_threads(n: int = RUN_THREADS):
    """Set torch's intra-op thread count to n for the duration of a run, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def run_lock(key: str, results_dir: Path | str | None = None, log=print):
    """An exclusive lock on a run or sweep (``<results_dir>/.locks/<key>.lock``), so two processes that start
    the same work never both compute it: the second waits, saying which process holds it, then finds it done."""
    path = Path(results_dir or RESULTS_DIR) / ".locks" / f"{key}.lock"
    with locks.exclusive(path, on_wait=lambda holder: log(f"{key} is being computed by {holder}; waiting for it")):
        yield


def run(cfg: RunConfig, *, results_dir: Path | str | None = None, force: bool = False,
        stop_after_epoch: int | None = None, log=print) -> dict[str, Any]:
    """Train, prune and evaluate cfg; return its metrics. A completed run is returned without work.

    The run holds its lock (:func:`run_lock`) and trains with :data:`RUN_THREADS` intra-op thread(s)."""
    return run_computed(cfg, results_dir=results_dir, force=force, stop_after_epoch=stop_after_epoch, log=log)[0]


def run_computed(cfg: RunConfig, *, results_dir: Path | str | None = None, force: bool = False,
                 stop_after_epoch: int | None = None, log=print) -> tuple[dict[str, Any], bool]:
    """:func:`run`, and whether this call computed the run (False: it was finished already, or by the process
    whose lock this call waited for)."""
    cfg.validate()
    out = run_dir(cfg, results_dir)
    metrics_path = out / "metrics.json"
    if metrics_path.exists() and not force:
        return _finished(out), False
    with run_lock(cfg.run_id, results_dir, log), run_threads():
        if metrics_path.exists() and not force:  # finished by the process we waited for
            return _finished(out), False
        return _run_locked(cfg, out, results_dir=results_dir, stop_after_epoch=stop_after_epoch, force=force,
                           log=log), True


def _finished(out: Path) -> dict[str, Any]:
    """The metrics of the finished run in ``out``, after checking that its files are whole (a final entry in
    metrics.json, a readable model.pt); ResultsCorruptError naming the file and the fix otherwise."""
    metrics = read_json(out / "metrics.json")
    final_metrics(metrics, out / "metrics.json")
    check_model_file(out / "model.pt")
    return metrics


def _run_locked(cfg: RunConfig, out: Path, *, results_dir, stop_after_epoch, force: bool = False,
                log) -> dict[str, Any]:
    metrics_path = out / "metrics.json"
    config_path = out / "config.json"
    if force:  # recompute from scratch: whatever the directory holds (even unreadable files) is replaced
        (out / "checkpoint.pt").unlink(missing_ok=True)
    elif config_path.exists():
        existing = read_json(config_path)
        if not isinstance(existing, dict) or existing.get("run") != cfg.hashed_fields():
            raise ResultsCorruptError(f"{config_path} belongs to a different configuration; delete {out} (or pass "
                                      "--force) to recompute it")

    environment = provenance.environment()  # of the code and machine that start (or resume) the run
    device = pick_device(cfg.device)
    tcfg = cfg.train_config()
    write_json_atomic(config_path, {"run": cfg.hashed_fields(), "train": dataclasses.asdict(tcfg),
                                    "run_id": cfg.run_id})
    bundle = data.load(cfg.dataset, network=family(cfg.network), seed=cfg.seed, val_fraction=cfg.val_fraction,
                       limit_train=cfg.limit_train, limit_test=cfg.limit_test, image_size=cfg.image_size,
                       val_split=cfg.val_split)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, bundle.input_spec, bundle.num_classes)
    t0 = time.perf_counter()
    if cfg.method in registry.POST_HOC:  # prune the base network once, matched to BMRS_N's run (posthoc)
        base = base_config(cfg)
        run(base, results_dir=results_dir, log=log)
        model.load_state_dict(load_model(base, results_dir).state_dict())
        ref_cfg = cfg.replace(method=posthoc.REFERENCE_METHOD)
        reference = run(ref_cfg, results_dir=results_dir, log=log)
        metrics = posthoc.run(cfg, model, bundle, tcfg, reference=reference, reference_model=load_model(ref_cfg, results_dir),
                              device=device, out=out, log=log)
    else:
        plan = PruningPlan(criterion=criterion_for(cfg.method))
        trainer = Trainer(model, bundle, tcfg, plan, seed=cfg.seed, device=device, checkpoint=out / "checkpoint.pt",
                          stop_after_epoch=stop_after_epoch, log=log)
        result = trainer.fit()
        save_model(model, out / "model.pt")
        metrics = {"history": result.history, "final": result.final}
    metrics.update({"config": cfg.hashed_fields(), "run_id": cfg.run_id, "data_source": bundle.source,
                    "wall_seconds": time.perf_counter() - t0, "environment": environment,
                    "device": str(device), "status": "complete"})
    write_json_atomic(metrics_path, metrics)
    (out / "checkpoint.pt").unlink(missing_ok=True)
    return metrics


# --------------------------------------------------------------------------------------------------
# Post-training pruning (Figure 2): one base network per seed, every criterion, a sweep of levels
# --------------------------------------------------------------------------------------------------

POSTTRAIN_CRITERIA = ("l2", "snr", "etheta", "bmrs_n", "bmrs_u8", "bmrs_u4")
PAPER_LEVELS = tuple(float(x) for x in torch.linspace(0, 100, 100).tolist())


def sweep_path(base: RunConfig, criterion: str, levels: tuple[float, ...], finetune_epochs: int,
               results_dir: Path | str | None) -> Path:
    """Where one criterion's post-training sweep of ``base`` at these levels is stored."""
    key = hashlib.sha256(json.dumps({"levels": list(levels), "finetune_epochs": finetune_epochs}).encode()).hexdigest()[:12]
    return run_dir(base, results_dir) / "sweeps" / f"{criterion}-{key}.json"


def run_posttrain(base: RunConfig, criteria: tuple[str, ...] = POSTTRAIN_CRITERIA,
                  levels: tuple[float, ...] = PAPER_LEVELS, *, finetune_epochs_per_level: int = 1,
                  results_dir: Path | str | None = None, log=print) -> dict[str, Any]:
    """A post-training study on the base network of `base` (Figure 2's protocol): for every criterion, prune the
    trained network to each level (percent of units, one global threshold; BMRS stops where ΔF < 0),
    fine-tune `finetune_epochs_per_level` epochs and record test accuracy and compression.

    Each criterion's sweep is stored under the base run's directory (``sweeps/<criterion>-<key>.json``,
    key = levels and fine-tuning epochs) as soon as it finishes, so every study that prunes the same
    base network with the same levels shares it, and an interrupted study resumes at the next criterion.
    Returns {"curves": {criterion: [records]}, "ranks": {row: {col: spearman}}, "base": base metrics}.
    """
    base = base_config(base)
    levels = tuple(float(x) for x in levels)
    base_metrics = run(base, results_dir=results_dir, log=log)
    bundle = data.load(base.dataset, network=family(base.network), seed=base.seed, val_fraction=base.val_fraction,
                       limit_train=base.limit_train, limit_test=base.limit_test, image_size=base.image_size,
                       val_split=base.val_split)
    model = load_model(base, results_dir)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tcfg = base.train_config()
    device = pick_device(base.device)
    curves: dict[str, list[dict[str, Any]]] = {}
    for name in criteria:
        path = sweep_path(base, name, levels, finetune_epochs_per_level, results_dir)
        if path.exists():
            records = _stored_sweep(path)
            if records is not None:
                curves[name] = records
                continue
            log(f"post-training sweep {name}: stored with an older compression rule, recomputing")
        with run_lock(f"{base.run_id}-{path.stem}", results_dir, log), run_threads():
            if path.exists() and (records := _stored_sweep(path)) is not None:  # computed by the process we waited for
                curves[name] = records
                continue
            curves[name] = _sweep(name, model, state, bundle, levels, tcfg, base=base, device=device,
                                  finetune_epochs_per_level=finetune_epochs_per_level, path=path)
        log(f"post-training sweep {name}: {len(curves[name])} points")
    model.load_state_dict(state)
    # Rankings need only scores, so they are computed for the paper's six criteria whatever was swept
    # (BMRS_N's two ΔF variants differ by a constant and rank identically); under the run's thread rule, as the
    # sweeps are.
    with run_threads():
        ranks = rank_correlations(model, list(POSTTRAIN_CRITERIA))
    return {"curves": curves, "ranks": ranks, "base": base_metrics, "run_id": base.run_id}


def _stored_sweep(path: Path) -> list[dict[str, Any]] | None:
    """The records of a stored sweep, None if it was stored under an older compression rule (recompute it);
    ResultsCorruptError naming the file if it is not a sweep file."""
    fix = f"delete {path} to recompute that sweep"
    stored = read_json(path, fix=fix)
    if not isinstance(stored, dict) or not isinstance(stored.get("records"), list):
        raise ResultsCorruptError(f"{path} holds no sweep records; {fix}")
    return stored["records"] if stored.get("paper_metric_version") == PAPER_METRIC_VERSION else None


def _sweep(name, model, state, bundle, levels, tcfg, *, base, device, finetune_epochs_per_level, path):
    environment = provenance.environment()
    model.load_state_dict(state)
    if name == "eigendamage":
        records = posthoc.eigendamage_sweep(model, state, bundle, list(levels), tcfg, seed=base.seed, device=device,
                                    finetune_epochs=finetune_epochs_per_level)
    else:
        records = post_training_sweep(model, state, bundle, registry.make_criterion(name), list(levels), tcfg,
                                      seed=base.seed, device=device, finetune_epochs=finetune_epochs_per_level)
    write_json_atomic(path, {"criterion": name, "levels": list(levels),
                             "finetune_epochs": finetune_epochs_per_level,
                             "paper_metric_version": PAPER_METRIC_VERSION, "environment": environment,
                             "records": records})
    return records


def rank_correlations(model: nn.Module, names: list[str]) -> dict[str, dict[str, float]]:
    """Spearman correlation between the criteria's global unit rankings (Figures 3, 6, 7): the Pearson
    correlation of the rank vectors (ties averaged)."""
    ranks = {}
    for name in names:
        c = registry.make_criterion(name)
        scores = c.scores(model)
        imp = torch.cat([c.importance(s) for s in scores.values()]).numpy()
        ranks[name] = rankdata(imp)
    return {a: {b: float(np.corrcoef(ranks[a], ranks[b])[0, 1]) for b in names} for a in names}
