"""Run directories: ``<results>/<run_id>/{config.json, metrics.json, model.pt, checkpoint.pt}``.

Reading and writing a run's files (atomically), rebuilding its network, and the ``python -m bmrs train``
command that produces a run (printed wherever a run is missing or unfinished).
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shlex
import zipfile
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


def _recompute_hint(run: Path) -> str:
    return f"delete the run directory {run} (or rerun its python -m bmrs train command with --force) to recompute it"


def read_json(path: Path, fix: str | None = None) -> dict[str, Any]:
    """A results JSON file; ResultsCorruptError naming the file and ``fix`` (default: recompute the run directory
    holding it) if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ResultsCorruptError(f"{path} is not valid JSON ({exc}); inspect it, then "
                                  f"{fix or _recompute_hint(path.parent)}") from exc


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


def save_model(model: nn.Module, path: Path) -> None:
    with atomic.atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def _is_torch_archive(path: Path) -> bool:
    """Whether ``path`` is a complete torch.save archive: a zip file with a data.pkl record (reads the archive's
    directory, not the tensors; an empty, truncated or overwritten file fails)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(name == "data.pkl" or name.endswith("/data.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def check_model_file(path: Path) -> None:
    """Raise ResultsCorruptError (naming the file and the fix) unless ``path`` is a complete torch.save archive;
    cheap, so that a cached run whose model.pt is damaged is reported instead of returned as a success."""
    path = Path(path)
    if not path.is_file():
        raise ResultsCorruptError(f"{path} is missing although the run's metrics.json exists; {_recompute_hint(path.parent)}")
    if not _is_torch_archive(path):
        raise ResultsCorruptError(f"{path} is not a readable model file (empty, truncated or overwritten); "
                                  f"{_recompute_hint(path.parent)}")


def load_state(path: Path) -> dict[str, Any]:
    """The state_dict saved in ``path`` (on the CPU); ResultsCorruptError naming the file if it cannot be read."""
    path = Path(path)
    if path.is_file():
        check_model_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile, AttributeError) as exc:
        lines = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {lines[0][:120]}" if lines else type(exc).__name__
        raise ResultsCorruptError(f"{path} is not a readable model file ({reason}); {_recompute_hint(path.parent)}"
                                  ) from exc


def _load_weights(model: nn.Module, path: Path) -> nn.Module:
    state = load_state(path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResultsCorruptError(f"{path} does not hold the network of its run's config.json ({first}); "
                                  f"{_recompute_hint(path.parent)}") from exc
    return model


def load_model(cfg: RunConfig, results_dir: Path | str | None = None) -> nn.Module:
    """Rebuild the network of a completed run and load its selected weights and masks."""
    path = run_dir(cfg, results_dir) / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the configuration first (python -m bmrs train ...)")
    spec, classes = data.describe(cfg.dataset, network=family(cfg.network), image_size=cfg.image_size)
    return _load_weights(build_model(cfg, spec, classes), path)


def config_from_dir(path: Path | str) -> RunConfig:
    """The RunConfig stored in a run directory (fields not stored take their defaults); ResultsCorruptError
    naming config.json if it does not hold one."""
    file = Path(path) / "config.json"
    stored = read_json(file)
    settings = stored.get("run") if isinstance(stored, dict) else None
    known = {f.name for f in dataclasses.fields(RunConfig)}
    problem = None
    if not isinstance(settings, dict):
        problem = "has no run settings (the key 'run')"
    elif missing := [k for k in ("dataset", "network", "method") if k not in settings]:
        problem = f"lacks the run settings {', '.join(missing)}"
    if problem is None:
        try:
            cfg = RunConfig(**{k: v for k, v in settings.items() if k in known})
            cfg.validate()
            return cfg
        except (TypeError, ValueError) as exc:
            problem = f"holds settings no run can have ({exc})"
    raise ResultsCorruptError(f"{file} {problem}; it was not written by python -m bmrs train: {_recompute_hint(file.parent)}")


def train_command(cfg: RunConfig, results_dir: Path | str) -> str:
    """The `python -m bmrs train` command that produces the run of cfg: one flag per setting that differs from
    its default (the CLI's flags are RunConfig's fields), quoted for a POSIX shell."""
    defaults = RunConfig(cfg.dataset, cfg.network, cfg.method)
    parts = ["python -m bmrs train", f"--dataset {shlex.quote(cfg.dataset)}", f"--network {shlex.quote(cfg.network)}",
             f"--method {shlex.quote(cfg.method)}"]
    for f in dataclasses.fields(cfg):
        if f.name in ("dataset", "network", "method", "device"):
            continue
        value = getattr(cfg, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        parts.append(flag if value is True else f"{flag} {shlex.quote(repr(value) if isinstance(value, float) else str(value))}")
    parts.append(f"--results-dir {shlex.quote(str(results_dir))}")
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
    return _load_weights(build_model(cfg, spec, classes), run_dir / "model.pt")


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
        raise ResultsCorruptError(f"{path} has no final metrics; {_recompute_hint(Path(path).parent)}")
    return final
