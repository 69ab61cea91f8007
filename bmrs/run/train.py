"""The paper's training and pruning protocol (Algorithm 1, Eq. 2–3, Appendix C; the released
code's train.py), in one readable loop.

Continuous pruning (Tables 1, 2; Algorithm 1):

    for epoch j = 1 .. e_T:                      # phase "train"
        one pass of minibatch training on  CE(mean over batch) + kl_weight · KL_model   (Eq. 2–3)
        if P > 0 and j mod P == 0: masks ← criterion(μ, σ)  (recomputed from scratch)
    final pruning (the L2 baseline's only pruning: the structure fraction BMRS_N reached)
    for epoch = 1 .. e_F:                         # phase "finetune": masks frozen
        one pass of training; keep the state with the best validation accuracy
    evaluate that state on the test set

A pruned unit keeps receiving KL gradients (the KL covers every unit), so with P > 0 it may be revived
at the next pruning step, as in the released code. "None" trains the plain network (no noise layers)
with the same schedule and model selection.

Every epoch ends with an atomic checkpoint (model, optimiser, scheduler, every RNG state, history,
best state) so an interrupted run resumes from its last completed epoch and finishes with exactly the
metrics an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bmrs.nn.measure import actual_param_compression, evaluate, plain_parameters
from bmrs.util.atomic import atomic_path
from bmrs.util.batches import iterate_batches
from bmrs.util.progress import progress
from bmrs.prune.criteria import Criterion, PruningResult, apply_criterion, current_result, prune_to_fraction
from bmrs.nn.paper_metric import PAPER_METRIC_VERSION, paper_compression
from bmrs.nn.noise import model_kl, noise_layers, noise_parameters


@dataclass
class TrainConfig:
    """Optimisation settings of one run (paper Appendix C); see bmrs.run.experiments.PRESETS for the paper's."""

    epochs: int = 50
    finetune_epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"  # "adam" | "adamw"
    weight_decay: float = 0.0
    warmup_steps: int = 0  # > 0: linear warm-up then linear decay (the ViT schedule), rebuilt for fine-tuning
    kl_reduction: str = "mean"  # the released code's --kl_averaging mean
    kl_weight: float = 1.0
    prune_every: int = 1  # P; 0 = no pruning during training (post-training base models)
    noise_lr_scale: float = 1.0  # learning-rate multiplier for the noise parameters (mu, log sigma)
    # "best_val": the best-validation epoch of fine-tuning (of training when finetune_epochs is 0), Algorithm 1;
    # "last": the last epoch's weights (the post-training base networks: Figure 2's protocol prunes the network
    # trained for the full schedule, as the released code's L2 prunes the model its training loop ends with)
    selection: str = "best_val"
    eval_batch_size: int = 1024

    def validate(self) -> None:
        problems = []
        if self.epochs < 0 or self.finetune_epochs < 0:
            problems.append("epochs and finetune_epochs must be >= 0")
        if not self.lr > 0:
            problems.append("lr must be > 0")
        if self.batch_size < 1:
            problems.append("batch_size must be >= 1")
        if self.optimizer not in ("adam", "adamw"):
            problems.append(f"optimizer must be 'adam' or 'adamw', not {self.optimizer!r}")
        if self.kl_reduction not in ("mean", "sum"):
            problems.append(f"kl_reduction must be 'mean' or 'sum', not {self.kl_reduction!r}")
        if self.prune_every < 0:
            problems.append("prune_every must be >= 0")
        if self.selection not in ("best_val", "last"):
            problems.append(f"selection must be 'best_val' or 'last', not {self.selection!r}")
        if not self.noise_lr_scale > 0:
            problems.append("noise_lr_scale must be > 0")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))


def pick_device(name: str = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (or AdamW without decay on biases/norms, the ViT setting) over every trainable parameter.

    The noise parameters (μ, log σ) form their own group with learning rate lr · noise_lr_scale. Under
    Adam each parameter moves by about lr per step whatever its gradient's size, so the number of steps
    the KL needs to pull a unit's posterior to the prior is ~ distance / lr: the paper's schedules give
    it 10⁴–10⁵ steps. The quick profile raises noise_lr_scale to reach the same posteriors in a tenth of
    the steps (a documented deviation); the paper profile uses 1.
    """
    weights, noise = noise_parameters(model)
    noise_group = {"params": noise, "weight_decay": 0.0, "lr": cfg.lr * cfg.noise_lr_scale}
    if cfg.optimizer == "adamw":
        groups = [{"params": [p for p in weights if p.dim() > 1], "weight_decay": cfg.weight_decay},
                  {"params": [p for p in weights if p.dim() <= 1], "weight_decay": 0.0}]
        return torch.optim.AdamW([g for g in groups + [noise_group] if g["params"]], lr=cfg.lr)
    groups = [{"params": weights}, noise_group]
    return torch.optim.Adam([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """Linear warm-up over cfg.warmup_steps then linear decay to 0 (or None when warmup_steps == 0)."""
    if cfg.warmup_steps <= 0:
        return None
    warm = cfg.warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_epoch(model: nn.Module, split, optimizer, *, cfg: TrainConfig, device: torch.device,
                generator: torch.Generator, scheduler=None, shuffle: bool = True, desc: str = "") -> dict[str, float]:
    """One pass over split minimising CE + kl_weight · KL (Eq. 2–3). Returns mean loss terms."""
    model.train()
    totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0}
    n_batches = 0
    batches = progress(iterate_batches(split, cfg.batch_size, shuffle=shuffle, generator=generator), desc=desc,
                       total=math.ceil(len(split) / cfg.batch_size), leave=False, unit="batch")
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        ce = F.cross_entropy(model(x), y)
        kl = model_kl(model, cfg.kl_reduction).to(ce.device) if cfg.kl_weight else torch.zeros((), device=ce.device)
        loss = ce + cfg.kl_weight * kl
        if not torch.isfinite(loss.detach()):
            raise FloatingPointError(
                f"the training loss became {loss.item()} ({desc}); lower the learning rate (--lr) or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        totals["loss"] += loss.item()
        totals["ce"] += ce.item()
        totals["kl"] += kl.item()
        n_batches += 1
    return {k: v / max(n_batches, 1) for k, v in totals.items()}


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class TrainingInterrupted(RuntimeError):
    """Raised when a run stops early on request (stop_after_epoch); the checkpoint lets it resume."""


@dataclass
class PruningPlan:
    """How a run prunes: a criterion with a fixed rule, applied every P epochs and at the end, or
    (L2) a single final pruning to a target structure fraction."""

    criterion: Criterion | None = None
    during_training: bool = True
    final_fraction: float | None = None

    @property
    def active(self) -> bool:
        return self.criterion is not None


@dataclass
class TrainResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    best_state: dict[str, Tensor] | None = None


class Trainer:
    """Runs the protocol of the module docstring on one model, with per-epoch checkpoints."""

    def __init__(self, model: nn.Module, data, cfg: TrainConfig, plan: PruningPlan, *, seed: int,
                 device: torch.device, checkpoint: Path | None = None,
                 stop_after_epoch: int | None = None, log: Callable[[str], None] | None = None) -> None:
        cfg.validate()
        self.model = model.to(device)
        self.data = data
        self.cfg = cfg
        self.plan = plan
        self.seed = seed
        self.device = device
        self.checkpoint = checkpoint
        self.stop_after_epoch = stop_after_epoch
        self.log = log or (lambda msg: None)
        self.generator = torch.Generator().manual_seed(seed)
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = None
        self.result = TrainResult()
        self.best_val = -math.inf
        self.epoch = 0  # completed epochs (training + fine-tuning)
        self.example = None

    # ---- phases -----------------------------------------------------------------------------
    @property
    def total_epochs(self) -> int:
        return self.cfg.epochs + self.cfg.finetune_epochs

    def _steps_per_epoch(self) -> int:
        n = len(self.data.train)
        return max(1, math.ceil(n / self.cfg.batch_size))

    def _phase_scheduler(self, epochs: int):
        return make_scheduler(self.optimizer, self.cfg, epochs * self._steps_per_epoch())

    def _prune(self) -> PruningResult:
        crit = self.plan.criterion
        if self.plan.final_fraction is not None:
            return prune_to_fraction(self.model, crit, self.plan.final_fraction)
        return apply_criterion(self.model, crit)

    def _compression(self) -> dict[str, float]:
        if not any(True for _ in noise_layers(self.model)):
            return {"structure_compression_pct": 0.0, "param_compression_pct": 0.0}
        comp = paper_compression(self.model)
        return {"structure_compression_pct": comp.structure_pct, "param_compression_pct": comp.parameter_pct}

    # ---- checkpointing ---------------------------------------------------------------------
    def _save(self) -> None:
        if self.checkpoint is None:
            return
        _atomic_save({
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "rng": rng_state(self.generator),
            "history": self.result.history,
            "best_val": self.best_val,
            "best_state": self.result.best_state,
        }, self.checkpoint)

    def _load(self) -> bool:
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        try:
            state = torch.load(self.checkpoint, map_location=self.device, weights_only=False)
            self.model.load_state_dict(state["model"])
            if state["epoch"] > self.cfg.epochs:  # resumed inside fine-tuning: optimiser/scheduler of that phase
                self.scheduler = self._phase_scheduler(self.cfg.finetune_epochs)
            elif state["epoch"] > 0:
                self.scheduler = self._phase_scheduler(self.cfg.epochs)
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"] is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"], self.generator)
        except Exception as exc:  # noqa: BLE001 — random bytes unpickle into any error (UnpicklingError, ...)
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(
                f"the checkpoint {self.checkpoint} cannot be resumed ({first}); delete it (or pass --force) to start "
                "the run afresh"
            ) from exc
        self.epoch = state["epoch"]
        self.result.history = state["history"]
        self.best_val = state["best_val"]
        self.result.best_state = state["best_state"]
        self.log(f"resumed from {self.checkpoint} after epoch {self.epoch}")
        return True

    # ---- main loop -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        resumed = self._load()
        if not resumed:
            torch.manual_seed(self.seed)
            np.random.seed(self.seed % 2**32)
            self.scheduler = self._phase_scheduler(self.cfg.epochs) if self.cfg.epochs else None
        epochs_bar = progress(range(self.epoch, self.total_epochs), total=self.total_epochs, initial=self.epoch,
                              desc="epochs", unit="ep")
        for e in epochs_bar:
            if e == self.cfg.epochs:
                self._start_finetuning()
            finetune = e >= self.cfg.epochs
            t0 = time.perf_counter()
            stats = train_epoch(self.model, self.data.train, self.optimizer, cfg=self.cfg, device=self.device,
                                generator=self.generator, scheduler=self.scheduler,
                                desc=f"{'finetune' if finetune else 'train'} {e + 1}/{self.total_epochs}")
            t_train = time.perf_counter()
            pruned = None
            if (not finetune and self.plan.active and self.plan.during_training and self.cfg.prune_every
                    and (e + 1) % self.cfg.prune_every == 0):
                pruned = self._prune()
            t_prune = time.perf_counter()
            val = evaluate(self.model, self.data.val, device=self.device, batch_size=self.cfg.eval_batch_size)
            t_eval = time.perf_counter()
            record = {"epoch": e + 1, "phase": "finetune" if finetune else "train", **stats,
                      "val_acc": val["acc"], "val_loss": val["loss"], "seconds": time.perf_counter() - t0,
                      "time_split": {"train": t_train - t0, "prune": t_prune - t_train, "eval": t_eval - t_prune},
                      **self._compression()}
            if pruned is not None:
                record["units_kept"] = pruned.units_kept
            if self.cfg.selection == "best_val" and (finetune or self.cfg.finetune_epochs == 0):
                if val["acc"] > self.best_val:
                    self.best_val = val["acc"]
                    self.result.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                    record["best"] = True
            self.result.history.append(record)
            self.epoch = e + 1
            t_save = time.perf_counter()
            record["time_split"]["metric"] = t_save - t_eval
            self._save()
            record["time_split"]["checkpoint"] = time.perf_counter() - t_save  # known only after the save
            self.log(f"epoch {e + 1}: loss {stats['loss']:.4f} val {val['acc']:.2f}% "
                     f"units {record['structure_compression_pct']:.1f}% pruned")
            if self.stop_after_epoch is not None and self.epoch >= self.stop_after_epoch and self.epoch < self.total_epochs:
                raise TrainingInterrupted(f"stopped after epoch {self.epoch} as requested")
        if self.cfg.epochs and not self.cfg.finetune_epochs:
            self._start_finetuning(final_only=True)
        return self._finish()

    def _start_finetuning(self, final_only: bool = False) -> None:
        """End of training: the final pruning, then freeze the masks and reset model selection."""
        if self.plan.active:
            self._prune()
        if final_only:
            return
        self.best_val = -math.inf
        self.result.best_state = None
        self.scheduler = self._phase_scheduler(self.cfg.finetune_epochs)

    def _finish(self) -> TrainResult:
        if self.result.best_state is not None:
            self.model.load_state_dict(self.result.best_state)
        test = evaluate(self.model, self.data.test, device=self.device, batch_size=self.cfg.eval_batch_size)
        val = evaluate(self.model, self.data.val, device=self.device, batch_size=self.cfg.eval_batch_size)
        res = current_result(self.model) if any(True for _ in noise_layers(self.model)) else None
        self.result.final = {
            "test_acc": test["acc"], "test_loss": test["loss"], "val_acc": val["acc"],
            **self._compression(),
            "paper_metric_version": PAPER_METRIC_VERSION,
            "units_kept": res.kept if res else {},
            "units_total": res.total if res else {},
            "epochs_completed": self.epoch,
            "train_seconds": float(sum(r["seconds"] for r in self.result.history)),
        }
        return self.result


# --------------------------------------------------------------------------------------------------
# Post-training pruning (Figure 2): one trained network, every criterion, a sweep of pruning levels
# --------------------------------------------------------------------------------------------------

def sweep_levels(levels, prune: Callable[[float], tuple[nn.Module, Any]], measure: Callable[[nn.Module], dict],
                 data, cfg: TrainConfig, *, name: str, seed: int, device: torch.device, finetune_epochs: int,
                 optimizer_for: Callable[[nn.Module], torch.optim.Optimizer]) -> list[dict[str, Any]]:
    """The post-training sweep loop (the paper's Figure 2), shared by every criterion and EigenDamage: for each
    level λ, ``prune(λ)`` returns the pruned network and a key of its structure; a level whose key equals the
    previous level's is skipped (a record is kept whenever the compression changes); otherwise the network is
    fine-tuned `finetune_epochs` epochs without shuffling (one generator seeded once for the whole sweep) with
    ``optimizer_for(net)``, evaluated on test, and recorded with ``measure(net)``."""
    generator = torch.Generator().manual_seed(seed)
    records: list[dict[str, Any]] = []
    last = None
    for level in levels:
        net, key = prune(float(level))
        if key == last:
            continue
        last = key
        optimizer = optimizer_for(net)
        for _ in range(finetune_epochs):
            train_epoch(net, data.train, optimizer, cfg=cfg, device=device, generator=generator, shuffle=False,
                        desc=f"{name} λ={level:.1f}")
        test = evaluate(net, data.test, device=device, batch_size=cfg.eval_batch_size)
        records.append({"criterion": name, "level": float(level), "test_acc": test["acc"], **measure(net)})
    return records


def post_training_sweep(model: nn.Module, trained_state: dict[str, Tensor], data, criterion: Criterion,
                        levels: list[float], cfg: TrainConfig, *, seed: int, device: torch.device,
                        finetune_epochs: int = 1, carry_optimizer_state: bool = True) -> list[dict[str, Any]]:
    """For each pruning level λ (percent of units): reload the trained weights, prune the globally least
    important λ% by criterion (BMRS never prunes a unit with ΔF < 0), fine-tune `finetune_epochs`
    epochs without shuffling, and record test accuracy and compression. As in the released code the
    Adam state carries over from one λ to the next (carry_optimizer_state=True). A record is kept
    whenever the compression changes (as for the paper's Figure 2).
    """
    model.load_state_dict(trained_state)
    dense = plain_parameters(model)
    criterion.fit(model, data, device=device, seed=seed)
    model.load_state_dict(trained_state)
    optimizer = make_optimizer(model, cfg)
    kept: dict[str, Any] = {}

    def prune(level: float):
        model.load_state_dict(trained_state)
        kept["units"] = prune_to_fraction(model, criterion, level / 100.0).units_kept
        return model, kept["units"]

    def measure(net: nn.Module) -> dict[str, Any]:
        comp = paper_compression(net)
        return {"structure_compression_pct": comp.structure_pct, "param_compression_pct": comp.parameter_pct,
                "actual_param_compression_pct": actual_param_compression(net, dense), "units_kept": kept["units"]}

    records = sweep_levels(levels, prune, measure, data, cfg, name=criterion.name, seed=seed, device=device,
                           finetune_epochs=finetune_epochs,
                           optimizer_for=lambda net: optimizer if carry_optimizer_state else make_optimizer(net, cfg))
    model.load_state_dict(trained_state)
    return records
