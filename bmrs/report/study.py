"""The paper's studies as functions of a profile: launch (or reuse) runs, collect small summary tables.

Notebooks call these with the settings of their profile section (configs/<profile>.yaml). Every run goes
through :mod:`bmrs.run.experiments`, so finished runs are reused across notebooks and reruns. Each study
returns a pandas DataFrame and writes it as CSV under ``results/summary/<profile>/``; the figure and
table code reads only those CSVs. The quick profile's CSVs are committed under ``results/reference/``
so that figures and tables can be regenerated without training (``source="reference"``).

Summaries (one row each):

* ``continuous``    — a continuous-pruning run (Tables 1, 2, the 2π comparison, Figure 4):
                      dataset, network, method, seed, p1, test_acc, param_compression_pct (the paper's metric),
                      actual_param_compression_pct (physically shrunk), structure_compression_pct, ...
* ``posttrain``     — a point of a post-training sweep (Figure 2): dataset, network, seed, criterion,
                      level, test_acc, param_compression_pct, actual_param_compression_pct, ...
* ``ranks``         — a rank correlation (Figures 3, 6, 7): dataset, network, seed, row, col, spearman
* ``units``         — per-unit posterior statistics of a trained network (Figure 1): layer, unit,
                      expected_theta, delta_f, kept
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
import torch

from bmrs.core import distributions as dist
from bmrs.core.reduction import delta_f_bmrs_n
from bmrs.nn.measure import actual_param_compression, plain_parameters
from bmrs.nn.noise import noise_layers
from bmrs.run import experiments as ex
from bmrs.run.profile import CONFIGS_DIR, load_profile
from bmrs.run import grid
from bmrs.util.atomic import atomic_path
from bmrs.nn.paper_metric import PAPER_METRIC_VERSION, paper_compression

SUMMARY_DIR = Path(os.environ.get("BMRS_SUMMARY_DIR", "results/summary"))
REFERENCE_DIR = Path(os.environ.get("BMRS_REFERENCE_DIR", "results/reference"))
#: where a study notebook's numbers come from: "run" (run or reuse every run it needs), "finished" (only the
#: runs and sweeps already finished, training nothing: a partial summary while a grid still runs) or
#: "reference" (the committed summaries)
SOURCES = ("run", "finished", "reference")


def computes(source: str) -> bool:
    """Whether a notebook with this ``source`` builds its summaries from run directories ("run", "finished")."""
    _check_source(source)
    return source != "reference"


def finished_only(source: str) -> bool:
    """Whether only finished runs and sweeps are read (source "finished"); nothing is trained then."""
    _check_source(source)
    return source == "finished"


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")


def configure(*, source: str, summary_dir: Path | str, reference_dir: Path | str, torch_threads: int = 0) -> None:
    """What every study notebook does first, from its parameters: check ``source`` ("run": run or reuse the
    runs and write summaries under ``summary_dir``; "finished": the same from the finished runs only, training
    nothing; "reference": read ``reference_dir``, train nothing), point
    this module's summary roots at those directories, and, when ``torch_threads`` > 0, set the thread count
    of torch and of the numba ΔF kernels to it (0 keeps the defaults; 1 avoids oversubscribing a busy CPU)."""
    global SUMMARY_DIR, REFERENCE_DIR
    _check_source(source)
    if not isinstance(torch_threads, int) or torch_threads < 0:
        raise ValueError(f"torch_threads must be an integer >= 0 (0: leave the defaults); got {torch_threads!r}")
    SUMMARY_DIR, REFERENCE_DIR = Path(summary_dir), Path(reference_dir)
    if torch_threads > 0:
        import numba  # deferred: only a thread-count change needs it

        numba.set_num_threads(min(torch_threads, numba.config.NUMBA_NUM_THREADS))
        torch.set_num_threads(torch_threads)


def summary_path(name: str, profile: str, source: str = "run", directory: Path | str | None = None) -> Path:
    """Where a summary CSV lives: <directory or results/summary>/<profile>/<name>.csv for source "run" (and
    "finished"), <directory or results/reference>/<name>.csv for source "reference"."""
    _check_source(source)
    if source == "reference":
        return Path(directory or REFERENCE_DIR) / f"{name}.csv"
    return Path(directory or SUMMARY_DIR) / profile / f"{name}.csv"


def save_summary(df: pd.DataFrame, name: str, profile: str, directory: Path | str | None = None) -> Path:
    """Write a summary atomically (temp file + rename)."""
    path = summary_path(name, profile, directory=directory)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # a summary with no rows yet (a partial one of source "finished")
        return pd.DataFrame()


def load_summary(name: str, profile: str, source: str = "run", directory: Path | str | None = None) -> pd.DataFrame:
    """Read a summary; a missing file raises FileNotFoundError saying how to produce it."""
    path = summary_path(name, profile, source, directory)
    if not path.exists():
        hint = ("commit the quick profile's summaries with `python -m bmrs.report.study publish`" if source == "reference"
                else f"run the notebook that produces it (./run_all.sh --profile {profile})")
        raise FileNotFoundError(f"{path} does not exist; {hint}")
    return _read_csv(path)


def _run_config(setting: dict[str, Any], method: str, seed: int, profile: str) -> ex.RunConfig:
    return grid.run_config(setting, method, seed, profile)


def _compressions(cfg: ex.RunConfig, final: dict[str, Any], results_dir) -> tuple[Any, Any]:
    """(paper-metric, actual) parameter compression of a run. Taken from its metrics when they are there and
    the paper metric was stored under the current rule; otherwise recomputed from the saved model (runs
    stored before a rule change stay usable without retraining). Neither applies to 'none'; EigenDamage
    stores both as its rebuilt network's actual compression."""
    paper, actual = final.get("param_compression_pct"), final.get("actual_param_compression_pct")
    if cfg.method in ("none", "eigendamage"):
        return paper, actual
    current = final.get("paper_metric_version") == PAPER_METRIC_VERSION
    if current and actual is not None:
        return paper, actual

    model = ex.load_model(cfg, results_dir)
    if not any(True for _ in noise_layers(model)):
        return paper, actual
    if not current:
        paper = paper_compression(model).parameter_pct
    if actual is None:
        actual = actual_param_compression(model, plain_parameters(model))
    return paper, actual


def continuous(settings: Iterable[dict[str, Any]], methods: Iterable[str], seeds: Iterable[int], *, profile: str,
               results_dir: Path | str | None = None, log=print, finished_only: bool = False) -> pd.DataFrame:
    """Run every (setting, method, seed) and collect one row per run (Tables 1, 2). With ``finished_only``
    nothing is trained: only the runs that have finished are collected (a summary of a grid in progress)."""
    rows = []
    for setting in settings:
        for seed in seeds:
            for method in methods:
                cfg = _run_config(setting, method, seed, profile)
                path = ex.run_dir(cfg, results_dir) / "metrics.json"
                if finished_only and not path.exists():
                    continue
                log(f"[continuous] {cfg.network} / {cfg.dataset} / {method} / seed {seed}")
                m = ex.read_json(path) if finished_only else ex.run(cfg, results_dir=results_dir, log=lambda _: None)
                rows.append(_row(cfg, m, results_dir))
    return pd.DataFrame(rows, columns=CONTINUOUS_COLUMNS)


#: the columns of a ``continuous`` summary row (:func:`_row`): also those of a summary with no run finished yet
CONTINUOUS_COLUMNS = ("dataset", "network", "method", "seed", "profile", "train_epochs", "finetune_epochs", "settings",
                      "test_acc", "val_acc", "param_compression_pct", "actual_param_compression_pct",
                      "structure_compression_pct", "epochs_run", "wall_seconds", "run_id")


def _row(cfg: ex.RunConfig, metrics: dict[str, Any], results_dir) -> dict[str, Any]:
    f = metrics["final"]
    paper, actual = _compressions(cfg, f, results_dir)
    train = cfg.train_config()
    settings = {k: v for k, v in cfg.hashed_fields().items() if k not in ("dataset", "network", "method", "seed", "base")}
    row = {"dataset": cfg.dataset, "network": cfg.network, "method": cfg.method, "seed": cfg.seed,
           "profile": cfg.profile, "train_epochs": train.epochs, "finetune_epochs": train.finetune_epochs,
           "settings": repr(settings),
           "test_acc": f["test_acc"], "val_acc": f.get("val_acc"),
           "param_compression_pct": paper,
           "actual_param_compression_pct": actual,
           "structure_compression_pct": f.get("structure_compression_pct"),
           "epochs_run": len(metrics.get("history") or []),
           "wall_seconds": metrics.get("wall_seconds"), "run_id": metrics.get("run_id")}
    assert tuple(row) == CONTINUOUS_COLUMNS
    return row


def p1_sweep(setting: dict[str, Any], p1_values: Iterable[float], seeds: Iterable[int], *, profile: str,
             results_dir: Path | str | None = None, log=print, finished_only: bool = False) -> pd.DataFrame:
    """Continuous pruning with BMRS_U for each p1 (Figure 4). ``finished_only``: as for :func:`continuous`."""
    rows = []
    for p1 in p1_values:
        method = grid.p1_method(p1)
        df = continuous([setting], [method], seeds, profile=profile, results_dir=results_dir, log=log,
                        finished_only=finished_only)
        rows.append(df.assign(p1=p1))
    return pd.concat(rows, ignore_index=True)


def posttrain(settings: Iterable[dict[str, Any]], seeds: Iterable[int], criteria: Iterable[str],
              levels: Iterable[float], *, profile: str, results_dir: Path | str | None = None,
              log=print, finished_only: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Post-training studies (Figure 2; Figures 3, 6, 7): sweep records and rank correlations. With
    ``finished_only``, only the sweeps already computed (a partial summary while the grid still runs); the
    rank correlations are then among those criteria only."""
    curves, ranks = [], []
    criteria = tuple(criteria)
    for setting in settings:
        _, own_levels = grid.split_setting(setting)
        lv = own_levels if own_levels is not None else tuple(float(x) for x in levels)
        for seed in seeds:
            base = _run_config(setting, "base", seed, profile)
            chosen = criteria
            if finished_only:
                chosen = tuple(c for c in criteria if ex.sweep_path(ex.base_config(base), c, lv,
                                                                     grid.SWEEP_FINETUNE_EPOCHS, results_dir).exists())
                if not chosen:
                    continue
            log(f"[post-training] {base.network} / {base.dataset} / seed {seed}: {len(lv)} levels x "
                f"{len(chosen)} criteria")
            result = ex.run_posttrain(base, chosen, lv, finetune_epochs_per_level=grid.SWEEP_FINETUNE_EPOCHS,
                                      results_dir=results_dir, log=log)
            for name, records in result["curves"].items():
                for r in records:
                    curves.append({"dataset": base.dataset, "network": base.network, "seed": seed, **r,
                                   "criterion_name": r["criterion"], "criterion": name})
            for row, cols in result["ranks"].items():
                for col, value in cols.items():
                    ranks.append({"dataset": base.dataset, "network": base.network, "seed": seed, "row": row,
                                  "col": col, "spearman": value})
    return pd.DataFrame(curves), pd.DataFrame(ranks)


def unit_statistics(setting: dict[str, Any], method: str, seed: int, *, profile: str,
                    results_dir: Path | str | None = None, finished_only: bool = False) -> pd.DataFrame:
    """Per-unit E[θ], ΔF_N (both variants) and mask of a finished run's network (Figure 1). With
    ``finished_only`` an unfinished run is an error instead of being trained."""

    cfg = _run_config(setting, method, seed, profile)
    if finished_only and not (ex.run_dir(cfg, results_dir) / "metrics.json").exists():
        raise FileNotFoundError(f"run {cfg.run_id} ({cfg.network}/{cfg.dataset} {cfg.method} seed {seed}) has not "
                                f"finished; compute it (python -m bmrs grid --profile {profile}) or use source='run'")
    ex.run(cfg, results_dir=results_dir)
    model = ex.load_model(cfg, results_dir)
    rows = []
    for name, layer in noise_layers(model):
        mu, sigma = layer.mu.detach().double(), layer.sigma.detach().double()
        e = dist.expected_theta(mu, sigma, a=layer.a, b=layer.b)
        df = delta_f_bmrs_n(mu, sigma, a=layer.a, b=layer.b)
        dfc = delta_f_bmrs_n(mu, sigma, a=layer.a, b=layer.b, include_2pi=False)
        for i in range(layer.num_units):
            rows.append({"dataset": cfg.dataset, "network": cfg.network, "method": cfg.method, "seed": seed,
                         "layer": name, "unit": i, "mu": float(mu[i]), "log_sigma": float(layer.log_sigma[i].detach()),
                         "expected_theta": float(e[i]), "delta_f": float(df[i]), "delta_f_code": float(dfc[i]),
                         "kept": bool(layer.mask[i] > 0)})
    return pd.DataFrame(rows)


def reference_dir_of(profile: str) -> Path:
    """Where a profile's committed summaries live (:meth:`bmrs.run.profile.Profile.reference_dir`; default
    results/reference)."""
    return load_profile(profile, CONFIGS_DIR).reference_dir(REFERENCE_DIR)


#: the columns that name what a summary row is a result of (its run, sweep or rank pair); a merge replaces the
#: reference's rows that share these values with the new rows (a whole curve, a whole unit table)
IDENTITY_COLUMNS = ("dataset", "network", "method", "criterion", "seed", "settings", "p1", "row", "col")


def _records(text: str) -> tuple[list[str], str, list[tuple[list[str], str]]]:
    """A CSV text's header fields, the header's text, and its records: each as its fields (the strings as
    written) and its exact text, newline-terminated ("\n"; a byte-order mark and "\r\n" endings are read as
    the pandas writer's plain text). Blank lines are no records (a summary with no rows is written as one empty
    line). ValueError naming the line for what is no summary: an unclosed quote (e.g. a hand-resolved merge
    conflict) or a record whose number of fields is not the header's."""
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").splitlines(keepends=True)
    reader = csv.reader(lines, strict=True)
    header, header_text, records, start = [], "", [], 0
    try:
        for fields in reader:
            chunk = "".join(lines[start:reader.line_num])
            start = reader.line_num
            if not fields:
                continue
            chunk = chunk if chunk.endswith("\n") else chunk + "\n"
            if not header:
                header, header_text = fields, chunk
                continue
            if len(fields) != len(header):
                raise ValueError(f"line {reader.line_num}: {len(fields)} fields where the header has {len(header)}")
            records.append((fields, chunk))
    except csv.Error as err:
        raise ValueError(f"the record from line {start + 1} on: {err} (a quote that is never closed?)") from err
    return header, header_text, records


def _identity(header: list[str], fields: list[str], columns: list[str]) -> tuple:
    """One hashable identity of a record. Numbers are compared as numbers (a seed written 1000.0 in a column
    with gaps is the seed 1000); an empty cell or NaN is its own value."""
    def norm(v: str):
        if v == "":
            return ("nan",)
        try:
            f = float(v)
        except ValueError:
            return v
        return ("nan",) if f != f else f
    where = {c: i for i, c in enumerate(header)}
    return tuple(norm(fields[where[c]]) if c in where else ("nan",) for c in columns)


def merge_summary_csv(reference: str, new: str) -> str:
    """Merge two summaries given as CSV text: the reference's rows, where the rows of one identity
    (:data:`IDENTITY_COLUMNS` present in either table) that also occurs in ``new`` are replaced, in place, by
    ``new``'s rows of that identity; ``new``'s other rows follow at the end. Results computed on another machine or
    in another session are kept, a result computed again replaces its older copy as a whole (every level of a
    post-training curve, every unit of a unit table) where the older copy stood, so the file keeps its order.

    Rows are kept as text: where both tables have the same columns, every kept row is written back byte for
    byte (no number is re-formatted, so a merge shows in ``git diff`` as exactly the rows it adds or replaces);
    otherwise the columns are the union of both tables' (the reference's first) and each cell keeps the
    string it was written as."""
    ref_header, ref_header_text, ref_rows = _records(reference)
    new_header, new_header_text, new_rows = _records(new)
    if not new_rows:
        return reference if ref_header else new
    if not ref_rows:
        return new
    columns = [c for c in IDENTITY_COLUMNS if c in ref_header or c in new_header]  # a column one side lacks: empty
    if not columns:
        raise ValueError(f"no identity column ({', '.join(IDENTITY_COLUMNS)}) in either table, so no row can be "
                         f"matched; is this a summary of bmrs.report.study?")
    incoming: dict[tuple, list] = {}
    for fields, text in new_rows:
        incoming.setdefault(_identity(new_header, fields, columns), []).append((new_header, fields, text))
    merged, placed = [], set()
    for fields, text in ref_rows:
        key = _identity(ref_header, fields, columns)
        if key not in incoming:
            merged.append((ref_header, fields, text))
        elif key not in placed:  # the first row of a recomputed identity: its new rows go here
            merged.extend(incoming[key])
            placed.add(key)
    merged.extend(row for key, rows in incoming.items() if key not in placed for row in rows)
    if ref_header == new_header:
        return ref_header_text + "".join(text for _, _, text in merged)
    union = ref_header + [c for c in new_header if c not in ref_header]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(union)
    for header, fields, _ in merged:
        where = {c: i for i, c in enumerate(header)}
        writer.writerow([fields[where[c]] if c in where else "" for c in union])
    return out.getvalue()


def publish_reference(profile: str = "quick", names: Iterable[str] | None = None,
                      to: Path | str | None = None, merge: bool = False) -> list[Path]:
    """Copy a profile's summaries (``results/summary/<profile>/*.csv``) to its reference directory
    (:func:`reference_dir_of`, or ``to``): what the repository commits. With ``merge``, each summary is merged
    into the committed one (:func:`merge_summary_csv`) instead of replacing it: how a profile too long for one
    machine or session accumulates (publish what finished here; results published before are kept)."""
    src = SUMMARY_DIR / profile
    if not src.exists():
        raise FileNotFoundError(f"{src} does not exist; run ./run_all.sh --profile {profile} first")
    target_dir = Path(to) if to is not None else reference_dir_of(profile)
    chosen = [p for p in sorted(src.glob("*.csv")) if names is None or p.stem in set(names)]
    contents = {}
    for path in chosen:  # everything is read and merged before anything is written
        target = target_dir / path.name
        if merge and target.exists():
            try:
                merged = merge_summary_csv(target.read_text(encoding="utf-8"), path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise ValueError(f"cannot merge {path} into {target}: {err}; fix or `git checkout` {target}, "
                                 f"then publish again (nothing was written)") from err
            contents[target] = (merged or "\n").encode()
        else:
            contents[target] = path.read_bytes()
    target_dir.mkdir(parents=True, exist_ok=True)
    for target, data in contents.items():
        with atomic_path(target) as tmp:
            tmp.write_bytes(data)
    return list(contents)


def _main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bmrs.report.study")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("publish", help="copy results/summary/<profile>/*.csv to the profile's reference directory")
    p.add_argument("--profile", default="quick")
    p.add_argument("--only", nargs="*", help="summary names to publish (default: all)")
    p.add_argument("--merge", action="store_true",
                   help="merge into the committed summaries (keep rows of runs not computed here) instead of "
                        "replacing them")
    args = parser.parse_args()
    try:
        paths = publish_reference(args.profile, args.only, merge=args.merge)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

