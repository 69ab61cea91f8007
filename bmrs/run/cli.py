"""Command line: ``python -m bmrs <command>``.

  train     train, prune and evaluate one (dataset, network, method, seed) run (cached by config hash)
  grid      every run of a profile's notebooks, on local workers or a Slurm cluster (resumable)
  compact   physically shrink a finished run's network and report parameters, MACs and latency
  download  fetch one or more datasets through torchvision (the only command that uses the network)
  show      print the final metrics of a run directory

Errors a user can cause print one line starting with "error:" that says how to fix it, and exit
non-zero: 2 for invalid arguments (nothing is written), 1 for a failing environment (missing data, a
corrupt or unreadable file, a full disk).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from bmrs.run import data, grid, store
from bmrs.run.config import NETWORKS, RunConfig, canonical_method, dataset_names
from bmrs.run.data import DataUnavailableError
from bmrs.run.experiments import run_computed
from bmrs.run.profile import UsageError
from bmrs.run.store import ResultsCorruptError, compact_run

EXIT_USAGE = 2
EXIT_FAILED = 1


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of the usage block."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"error: {message} (see {self.prog} --help)\n")


def _method(value: str) -> str:
    try:
        return canonical_method(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _base_type(annotation: Any) -> type:
    """int for ``int | None``, etc. (RunConfig's annotations are strings under postponed evaluation)."""
    hint = annotation
    if isinstance(hint, str):
        hint = eval(hint, {"__builtins__": {}}, {"int": int, "float": float, "str": str, "bool": bool, "None": None})
    if isinstance(hint, types.UnionType):
        args = [a for a in hint.__args__ if a is not type(None)]
        return args[0]
    return hint


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, with the field's help text (the single source of run settings)."""
    choices = {"dataset": dataset_names(), "network": NETWORKS}
    for f in dataclasses.fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        kind = _base_type(f.type)
        if f.name == "method":
            parser.add_argument(flag, required=True, type=_method, help=help_text)
        elif kind is bool:
            parser.add_argument(flag, action="store_true", help=help_text)
        elif f.default is dataclasses.MISSING:
            parser.add_argument(flag, required=True, choices=choices.get(f.name), help=help_text)
        else:
            default = None if f.default is None else f.default
            shown = "" if default is None else f" (default: {default})"
            parser.add_argument(flag, type=kind, default=default, choices=f.metadata.get("choices"),
                                help=help_text + shown)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RunConfig)})


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m bmrs", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train, prune and evaluate one run")
    add_run_flags(t)
    t.add_argument("--results-dir", default=str(store.RESULTS_DIR), help="where run directories live")
    t.add_argument("--force", action="store_true",
                   help="recompute from scratch even if the run has finished (replaces its files, discards its checkpoint)")

    g = sub.add_parser("grid", help="every run of a profile's notebooks, local workers or Slurm",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    grid.add_arguments(g)

    c = sub.add_parser("compact", help="physically shrink a finished run and measure it")
    c.add_argument("run_dir", type=Path)
    c.add_argument("--threads", type=int, default=1, help="CPU threads for the latency measurement")
    c.add_argument("--repeats", type=int, default=50)

    d = sub.add_parser("download", help="download datasets through torchvision")
    d.add_argument("names", nargs="+", choices=dataset_names(), metavar="NAME",
                   help=f"one or more of: {', '.join(dataset_names())}")
    d.add_argument("--root", type=Path)

    s = sub.add_parser("show", help="print the final metrics of a run directory")
    s.add_argument("run_dir", type=Path)
    return parser


def _train(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    try:
        cfg.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = store.run_dir(cfg, args.results_dir)
    metrics, computed = run_computed(cfg, results_dir=args.results_dir, force=args.force)
    final = store.final_metrics(metrics, out / "metrics.json")
    print(f"{'finished' if computed else 'cached'}: {out}")
    print(f"test accuracy {final['test_acc']:.2f}%  parameter compression {final['param_compression_pct']:.2f}%  "
          f"structure compression {final['structure_compression_pct']:.2f}%")
    return 0


def _show(args: argparse.Namespace) -> int:
    path = args.run_dir / "metrics.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; the run has not finished (python -m bmrs train ...)")
    print(json.dumps(store.final_metrics(store.read_json(path), path), indent=2))
    return 0


def _compact(args: argparse.Namespace) -> int:
    if args.threads < 1 or args.repeats < 1:
        raise UsageError(f"--threads and --repeats must be >= 1; got {args.threads} and {args.repeats}")
    print(json.dumps(compact_run(args.run_dir, threads=args.threads, repeats=args.repeats), indent=2))
    return 0


def _download(args: argparse.Namespace) -> int:
    for name in dict.fromkeys(args.names):
        path = data.download(name, root=args.root)
        print(f"downloaded {name} to {path}")
    return 0


def _blocking_file(path: Path) -> Path | None:
    """The first existing ancestor of ``path`` (itself included) that is not a directory."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _describe_os_error(exc: OSError) -> str:
    """Our words for a failing file system call: which file, what happened, what to do."""
    where = exc.filename or ""
    at = f" {where}" if where else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
        return f"{what}{f' writing {where}' if where else ''}; free some space and rerun (finished work is kept)"
    if exc.errno == errno.EROFS:
        return f"{where or 'the target'} is on a read-only file system; choose a results directory you can write (--results-dir)"
    if isinstance(exc, PermissionError):
        return (f"no permission to access{at}; choose a results directory you can write (--results-dir) or fix the "
                "permissions")
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        blocker = _blocking_file(Path(where)) if where else None
        shown = blocker or where
        return f"{shown} is a file where a directory is needed; choose another --results-dir or move the file"
    if isinstance(exc, IsADirectoryError):
        return f"{where} is a directory where a file is expected; delete it so the run can be recomputed"
    return f"{exc.strerror or exc}{f': {where}' if where else ''}"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"train": _train, "grid": grid.main, "show": _show, "compact": _compact, "download": _download}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last completed epoch", file=sys.stderr)
        return 130
    except OSError as exc:
        if isinstance(exc, FileNotFoundError) and exc.filename is None:
            print(f"error: {exc}", file=sys.stderr)  # our own message, naming the fix
        else:
            print(f"error: {_describe_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (DataUnavailableError, ResultsCorruptError, ValueError, RuntimeError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_FAILED
