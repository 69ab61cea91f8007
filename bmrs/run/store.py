"""Run directories: ``<results>/<run_id>/{config.json, metrics.json, model.pt, checkpoint.pt}``.

Reading and writing a run's files (atomically), rebuilding its network, and the ``python -m bmrs train``
command that produces a run (printed wherever a run is missing or unfinished).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bmrs.nn import shrink as shrinking
from bmrs.nn.measure import report
from bmrs.run import data
from bmrs.run.config import RunConfig, build_model, family
from bmrs.util import atomic
from bmrs.util.atomic import write_json

RESULTS_DIR = Path("results/runs")


class ResultsCorruptError(RuntimeError):
    """A results file exists but cannot be read; it is never overwritten silently."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsCorruptError(
            f"{path} is not valid JSON ({exc}); inspect it, then delete the run directory {path.parent} "
            "(or pass --force) to recompute it"
        ) from exc


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write a run's JSON (sorted keys; tensors and paths serialised) atomically (bmrs.util.atomic)."""
    atomic.write_json(path, obj, sort_keys=True, default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def run_dir(cfg: RunConfig, results_dir: Path | str | None = None) -> Path:
    return Path(results_dir or RESULTS_DIR) / cfg.run_id


def load_metrics(cfg: RunConfig, results_dir: Path | str | None = None) -> dict[str, Any] | None:
    """The metrics of a completed run, or None if it has not completed."""
    path = run_dir(cfg, results_dir) / "metrics.json"
    return read_json(path) if path.exists() else None


def save_model(model: nn.Module, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load_model(cfg: RunConfig, results_dir: Path | str | None = None) -> nn.Module:
    """Rebuild the network of a completed run and load its selected weights and masks."""
    path = run_dir(cfg, results_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the configuration first (python -m bmrs train ...)")
    spec, classes = data.describe(cfg.dataset, network=family(cfg.network), image_size=cfg.image_size)
    model = build_model(cfg, spec, classes)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def config_from_dir(path: Path | str) -> RunConfig:
    """The RunConfig stored in a run directory (fields not stored take their defaults)."""
    data = read_json(Path(path) / "config.json")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    return RunConfig(**{k: v for k, v in data["run"].items() if k in known})



def train_command(cfg: Any, results_dir: Path) -> str:
    """The `python -m bmrs train` command that produces the run of cfg."""
    defaults = RunConfig(cfg.dataset, cfg.network, cfg.method)
    parts = ["python -m bmrs train", f"--dataset {cfg.dataset}", f"--network {cfg.network}", f"--method {cfg.method}"]
    for f in dataclasses.fields(cfg):
        if f.name in ("dataset", "network", "method", "device"):
            continue
        value = getattr(cfg, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {value}")
    parts.append(f"--results-dir {results_dir}")
    return " ".join(parts)


def load_run(run_dir: Path | str) -> nn.Module:
    """The masked network of a finished run directory (FileNotFoundError naming the fix if it is missing
    or unfinished)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json); produce one with "
                                "python -m bmrs train --dataset ... --network ... --method ... "
                                "(runs live in results/runs/<hash>/)")
    cfg = config_from_dir(run_dir)
    if not (run_dir / "metrics.json").exists() or not (run_dir / "model.pt").exists():
        raise FileNotFoundError(f"{run_dir} is an unfinished run (no metrics.json/model.pt); finish it with: "
                                f"{train_command(cfg, run_dir.parent)}")
    if run_dir.name == cfg.run_id:
        return load_model(cfg, run_dir.parent)
    # a renamed or copied run directory

    spec, classes = data.describe(cfg.dataset, network=family(cfg.network), image_size=cfg.image_size)
    model = build_model(cfg, spec, classes)
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True))
    return model


def compact_run(run_dir: Path | str, *, threads: int = 1, repeats: int = 50) -> dict[str, Any]:
    """Shrink a finished run's network and measure it: writes run_dir/compact/{state_dict.pt,
    architecture.json, report.json} (each atomically) and returns the report."""
    run_dir = Path(run_dir)
    model = load_run(run_dir).eval()
    shrunk = shrinking.shrink(model)
    result = report(model, shrunk=shrunk, threads=threads, repeats=repeats)
    result["run_dir"] = str(run_dir)
    result["architecture"] = {"family": shrunk.compact_architecture["family"]}
    out = run_dir / "compact"
    shrinking.save_compact(shrunk, out)
    write_json(out / "report.json", result)
    return result


def final_metrics(metrics: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """The ``final`` entry of a run's metrics; ResultsCorruptError naming the file if it has none."""
    final = metrics.get("final") if isinstance(metrics, dict) else None
    if not isinstance(final, dict):
        raise ResultsCorruptError(f"{path} has no final metrics; delete its run directory {Path(path).parent} "
                                  "(or pass --force) to recompute it")
    return final
