"""Execute the project's notebooks for one profile: ``python -m bmrs.notebook_runner``.

The notebooks are jupytext py:percent sources ``notebooks/NN_*.py``; they run in name order. For
each one the runner

1. reads the profile ``configs/<profile>.yaml``, which has the structure ::

       profile: quick            # must equal the file name
       common: {...}             # parameters passed to every notebook
       notebooks:
         01_bmr_derivation: {...}  # parameters of one notebook (override common)

   and passes ``common`` merged with the notebook's own section, plus ``profile=<name>`` (and any
   ``--param KEY=VALUE`` given on the command line, which win);
2. converts the source with jupytext to ``<results>/executed/<profile>/<stem>.input.ipynb``;
3. executes it with papermill (kernel ``python3``, working directory = repository root,
   ``MPLBACKEND=Agg``, cell output streamed to the terminal) into
   ``<results>/executed/<profile>/<stem>.ipynb``;
4. on success writes the stamp ``<stem>.stamp.json`` beside it, holding a hash of the notebook
   source, its parameters and the sources of the ``bmrs`` package, plus the hashes of the figures it
   wrote (files of its ``figures_dir``, default ``figures/``, modified during the run). A later run
   skips the notebook while the stamp matches and those figures are unchanged ("up to date"), so a
   run of another profile that overwrote them makes it run again; ``--force`` re-executes.

On a failure the runner prints one message naming the notebook, the failing cell and the error,
keeps the partial executed notebook for inspection, stops, and returns 1. Usage errors (unknown
profile, malformed YAML, unknown or ambiguous ``--only`` name) return 2.

The directories can be redirected (for tests, or to keep several result trees):
``--notebooks-dir`` / ``BMRS_NOTEBOOKS_DIR``, ``--configs-dir`` / ``BMRS_CONFIGS_DIR`` and
``--results-dir`` / ``BMRS_RESULTS_DIR`` (relative paths are taken from the current directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from bmrs.util import atomic
from bmrs.run.profile import (Profile, UsageError, available_profiles, describe_yaml_error, load_profile,  # noqa: F401 (re-exported)
                              load_yaml)

#: The repository root: the directory that holds the ``bmrs`` package (editable install).
REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_PROFILE = "quick"
KERNEL_NAME = "python3"
STAMP_VERSION = 1
NOTEBOOK_PATTERN = re.compile(r"^\d\d_[A-Za-z0-9_]+$")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Paths:
    """Where notebooks, profiles and results live."""

    root: Path
    notebooks: Path
    configs: Path
    results: Path

    def executed_dir(self, profile: str) -> Path:
        return self.results / "executed" / profile


# --------------------------------------------------------------------------------------------------
# Discovery and configuration
# --------------------------------------------------------------------------------------------------

def discover_notebooks(notebooks_dir: Path) -> list[Path]:
    """The notebook sources ``NN_*.py`` of a directory, in name order."""
    if not notebooks_dir.is_dir():
        return []
    return sorted(p for p in notebooks_dir.glob("*.py") if NOTEBOOK_PATTERN.match(p.stem))


def select_notebooks(notebooks: list[Path], only: Sequence[str] | None) -> list[Path]:
    """The notebooks named by ``--only`` (full stem or unique prefix), kept in name order."""
    if not only:
        return list(notebooks)
    stems = [p.stem for p in notebooks]
    chosen: set[str] = set()
    for raw in only:
        name = Path(raw).stem if raw.endswith((".py", ".ipynb")) else raw
        if name in stems:
            chosen.add(name)
            continue
        matches = [s for s in stems if s.startswith(name)]
        if len(matches) == 1:
            chosen.add(matches[0])
        elif not matches:
            raise UsageError(f"unknown notebook {raw!r}; valid names: {', '.join(stems) or '(none)'}")
        else:
            raise UsageError(f"ambiguous notebook {raw!r} matches {', '.join(matches)}; valid names: {', '.join(stems)}")
    return [p for p in notebooks if p.stem in chosen]


def parse_param(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from ``--param``; VALUE is parsed as YAML (so 3, 1e-3, true, [1, 2] are typed)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise UsageError(f"--param expects KEY=VALUE with KEY a parameter name; got {text!r}")
    try:
        return key, load_yaml(value) if value.strip() else ""
    except yaml.YAMLError as exc:
        raise UsageError(f"--param {key}: cannot parse value {value!r} ({describe_yaml_error(exc)})") from exc


_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "list": (list,), "dict": (dict,),
}


def declared_parameters(source: Path) -> dict[str, str]:
    """The parameters cell of a notebook source: name -> annotated/inferred type name ('' if unknown)."""
    import jupytext
    from papermill.translators import PythonTranslator

    nb = jupytext.read(source, fmt="py:percent")
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            return {p.name: (p.inferred_type_name or "").strip() for p in PythonTranslator.inspect(cell)}
    return {}


def check_parameters(source: Path, params: dict[str, Any], declared: dict[str, str], profile: Profile,
                     overrides: dict[str, Any]) -> list[str]:
    """Validate a notebook's parameters against its parameters cell.

    A key of the notebook's own profile section that the notebook does not declare, or a value of the
    wrong type (e.g. a string for an ``int``), is a UsageError naming the profile file. Undeclared keys
    from ``common`` or ``--param`` only give warnings (returned), since they apply to every notebook.
    """
    stem = source.stem
    warnings: list[str] = []
    if not declared:
        return [f"{stem} has no parameters cell (# %% tags=[\"parameters\"]); its parameters are injected at the top"]
    own = profile.notebooks.get(stem, {})
    for key, value in params.items():
        if key not in declared:
            if key in own and key not in overrides:
                raise UsageError(
                    f"{profile.path}: notebooks.{stem}.{key} is not a parameter of {source}; "
                    f"its parameters are: {', '.join(sorted(declared))}")
            if key != "profile":
                warnings.append(f"{stem} does not declare parameter {key!r} (it is passed anyway)")
            continue
        allowed = _TYPES.get(declared[key].removeprefix("builtins.").split("[")[0])
        if allowed is None or value is None:
            continue
        if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
            origin = "--param" if key in overrides else str(profile.path)
            raise UsageError(
                f"{origin}: parameter {key} of {stem} must be {declared[key]} (as declared in {source}); "
                f"got {value!r} of type {type(value).__name__}")
    return warnings


# --------------------------------------------------------------------------------------------------
# Up-to-date stamps
# --------------------------------------------------------------------------------------------------

def package_sources_hash(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 over the relative paths and contents of every ``*.py`` file of the bmrs package."""
    h = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(package_dir).as_posix().encode())
        h.update(b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def compute_stamp(source: Path, parameters: dict[str, Any], package_hash: str) -> dict[str, Any]:
    """The content of a stamp: what an executed notebook depends on."""
    params_json = json.dumps(parameters, sort_keys=True, default=str)
    parts = {
        "version": STAMP_VERSION,
        "notebook": source.name,
        "source_sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "parameters_sha256": hashlib.sha256(params_json.encode()).hexdigest(),
        "bmrs_sha256": package_hash,
        "python": platform.python_version(),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return {**parts, "key": key, "parameters": json.loads(params_json)}


def stamp_path(executed: Path) -> Path:
    return executed.with_name(executed.stem + ".stamp.json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figures_directory(parameters: dict[str, Any], root: Path) -> Path:
    """Where a notebook writes its figures: its ``figures_dir`` parameter (relative to root), default figures/."""
    return (root / str(parameters.get("figures_dir") or "figures")).resolve()


def collect_outputs(directory: Path, since_ns: int) -> dict[str, str]:
    """Files of ``directory`` (not recursive) modified at or after ``since_ns``: absolute path -> sha256."""
    if not directory.is_dir():
        return {}
    return {str(p): _sha256(p) for p in sorted(directory.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.stat().st_mtime_ns >= since_ns}


def is_up_to_date(executed: Path, stamp: dict[str, Any]) -> bool:
    """True when the executed notebook exists, its stamp has the same key, and the figures the run
    wrote are still there unchanged (another profile writing the same figures makes it stale)."""
    path = stamp_path(executed)
    if not (executed.is_file() and path.is_file()):
        return False
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not (isinstance(old, dict) and old.get("key") == stamp["key"]):
        return False
    for name, digest in (old.get("outputs") or {}).items():
        output = Path(name)
        if not output.is_file() or _sha256(output) != digest:
            return False
    return True


# --------------------------------------------------------------------------------------------------
# Execution
# --------------------------------------------------------------------------------------------------

class _PlainFormatter(logging.Formatter):
    """Cell output as it is (papermill logs stdout at INFO and stderr at WARNING)."""

    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage().rstrip("\n")


_NOISE = re.compile(r"^(Ending Cell \d+-*|<[\w.]+ object>)$")


def _drop_noise(record: logging.LogRecord) -> bool:
    """Hide papermill's "Ending Cell" markers and reprs of rich outputs ("<...Markdown object>")."""
    return not _NOISE.match(record.getMessage().strip())


def convert_notebook(source: Path, target: Path) -> None:
    """jupytext py:percent -> .ipynb (with the python3 kernelspec), written atomically."""
    import jupytext

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3", "language": "python"}
    nb.metadata.setdefault("language_info", {"name": "python"})
    atomic.write_text(target, jupytext.writes(nb, fmt="ipynb"))


def _cell_location(source: Path, cell_source: str) -> str:
    """'notebooks/x.py:123' for the first line of a failing cell, if it can be found verbatim."""
    first = next((line for line in cell_source.splitlines() if line.strip()), "")
    if not first:
        return ""
    try:
        lines = source.read_text().splitlines()
    except OSError:
        return ""
    for number, line in enumerate(lines, start=1):
        if line == first:
            return f"{source}:{number}"
    return ""


def describe_failure(stem: str, source: Path, executed: Path, exc: BaseException) -> str:
    """One message naming the notebook, the failing cell (its number among the cells of the source,
    its execution count and its line in the source) and the error."""
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, PapermillExecutionError):
        # exc.cell_index counts the cells of the executed notebook, which has papermill's
        # injected-parameters cell (and, once written, its error-marker cells) on top of the source's.
        number = exc.cell_index + 1
        try:
            import nbformat

            cells = [c for c in nbformat.read(executed, as_version=4).cells
                     if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
            if any("injected-parameters" in c.metadata.get("tags", []) for c in cells[: exc.cell_index]):
                number -= 1
        except Exception:  # the partial notebook may be unreadable; the message still names the cell
            pass
        cell_text = exc.source or ""
        location = _cell_location(source, cell_text)
        first = next((line.strip() for line in cell_text.splitlines() if line.strip()), "")
        parts = [
            f"error: notebook {stem} failed in cell {number} (In [{exc.exec_count}]): {exc.ename}: {exc.evalue}",
        ]
        if first:
            parts.append(f"  the cell starts: {first[:100]}" + (f"   ({location})" if location else ""))
        parts.append(f"  partial executed notebook kept for inspection (traceback inside): {executed}")
        return "\n".join(parts)
    return (
        f"error: notebook {stem} failed: {type(exc).__name__}: {exc}\n"
        f"  partial executed notebook (if any) kept for inspection: {executed}"
    )


def execute(
    source: Path,
    executed: Path,
    parameters: dict[str, Any],
    *,
    cwd: Path,
    log_output: bool = True,
) -> None:
    """Convert and execute one notebook with papermill (raises what papermill raises)."""
    import papermill as pm

    input_nb = executed.with_name(executed.stem + ".input.ipynb")
    convert_notebook(source, input_nb)
    pm.execute_notebook(
        str(input_nb),
        str(executed),
        parameters=parameters,
        kernel_name=KERNEL_NAME,
        language="python",
        cwd=str(cwd),
        log_output=log_output,
        progress_bar=False,
        request_save_on_cell_execute=True,
    )


def _format_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def _resolve(value: str | None, env: str, default: Path) -> Path:
    raw = value if value is not None else os.environ.get(env)
    return Path(raw).resolve() if raw else default


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bmrs.notebook_runner",
        description="Execute the notebooks/NN_*.py notebooks of a profile with papermill (skipping up-to-date ones).",
    )
    parser.add_argument("--profile", default=DEFAULT_PROFILE,
                        help="profile name, i.e. configs/<NAME>.yaml (default: %(default)s)")
    parser.add_argument("--only", nargs="+", action="extend", metavar="NOTEBOOK",
                        help="run only these notebooks (full stem or unique prefix such as 01; repeatable)")
    parser.add_argument("--force", action="store_true", help="re-execute even when the stamp says up to date")
    parser.add_argument("--list", action="store_true", help="list the notebooks and their status, run nothing")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a notebook parameter for this run (VALUE parsed as YAML; repeatable)")
    parser.add_argument("--quiet", action="store_true", help="do not stream cell output to the terminal")
    parser.add_argument("--notebooks-dir", help="notebook sources (default: notebooks/, env BMRS_NOTEBOOKS_DIR)")
    parser.add_argument("--configs-dir", help="profile files (default: configs/, env BMRS_CONFIGS_DIR)")
    parser.add_argument("--results-dir",
                        help="results root; executed notebooks go to <root>/executed/<profile>/ "
                             "(default: results/, env BMRS_RESULTS_DIR)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0 ok, 1 notebook failed, 2 usage error)."""
    args = build_parser().parse_args(argv)
    paths = Paths(
        root=REPO_ROOT,
        notebooks=_resolve(args.notebooks_dir, "BMRS_NOTEBOOKS_DIR", REPO_ROOT / "notebooks"),
        configs=_resolve(args.configs_dir, "BMRS_CONFIGS_DIR", REPO_ROOT / "configs"),
        results=_resolve(args.results_dir, "BMRS_RESULTS_DIR", REPO_ROOT / "results"),
    )
    try:
        profile = load_profile(args.profile, paths.configs)
        notebooks = discover_notebooks(paths.notebooks)
        if not notebooks:
            raise UsageError(f"no notebooks (NN_*.py) found in {paths.notebooks}")
        selected = select_notebooks(notebooks, args.only)
        overrides = dict(parse_param(p) for p in args.param)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    stems = {p.stem for p in notebooks}
    for section in profile.notebooks:
        if section not in stems:
            print(f"warning: {profile.path} has a section for {section!r}, but there is no "
                  f"{paths.notebooks}/{section}.py", file=sys.stderr)

    out_dir = paths.executed_dir(profile.name)
    package_hash = package_sources_hash()
    plan = []
    try:
        for p in selected:
            params = profile.parameters(p.stem, overrides)
            for warning in check_parameters(p, params, declared_parameters(p), profile, overrides):
                print(f"warning: {warning}", file=sys.stderr)
            plan.append((p, compute_stamp(p, params, package_hash)))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    if args.list:
        for i, (source, stamp) in enumerate(plan, start=1):
            executed = out_dir / f"{source.stem}.ipynb"
            status = "up to date" if is_up_to_date(executed, stamp) else (
                "stale" if executed.exists() else "not run")
            print(f"[{i}/{len(plan)}] {source.stem:<32} {status}")
        return EXIT_OK

    old_backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"  # inherited by the kernel
    logger = logging.getLogger("papermill")
    handler: logging.Handler | None = None
    old_level, old_propagate = logger.level, logger.propagate
    if not args.quiet:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(_PlainFormatter())
        handler.addFilter(_drop_noise)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False

    total_start = time.perf_counter()
    try:
        for i, (source, stamp) in enumerate(plan, start=1):
            executed = out_dir / f"{source.stem}.ipynb"
            header = f"[{i}/{len(plan)}] {source.stem} (profile {profile.name})"
            if not args.force and is_up_to_date(executed, stamp):
                print(f"{header} up to date", flush=True)
                continue
            print(f"{header} ...", flush=True)
            stamp_path(executed).unlink(missing_ok=True)
            start = time.perf_counter()
            start_ns = time.time_ns() - 100_000_000  # slack: file-system time stamps lag the clock slightly
            try:
                execute(source, executed, stamp["parameters"], cwd=paths.root, log_output=not args.quiet)
            except KeyboardInterrupt:
                print(f"\ninterrupted while running {source.stem}; partial notebook: {executed}", file=sys.stderr)
                return EXIT_INTERRUPTED
            except Exception as exc:  # report any failure (cell error, dead kernel, bad source) the same way
                elapsed = _format_seconds(time.perf_counter() - start)
                print(f"{header} FAILED after {elapsed}", flush=True)
                print(describe_failure(source.stem, source, executed, exc), file=sys.stderr, flush=True)
                return EXIT_FAILED
            elapsed = time.perf_counter() - start
            outputs = collect_outputs(figures_directory(stamp["parameters"], paths.root), start_ns)
            record = {**stamp, "seconds": round(elapsed, 2), "outputs": outputs}
            atomic.write_text(stamp_path(executed), json.dumps(record, indent=2) + "\n")
            print(f"{header} done in {_format_seconds(elapsed)} -> {executed}", flush=True)
    finally:
        if old_backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = old_backend
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate
    print(f"all {len(plan)} notebook(s) of profile {profile.name} ok in {_format_seconds(time.perf_counter() - total_start)}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
