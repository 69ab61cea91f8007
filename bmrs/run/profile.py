"""Profiles: ``configs/<name>.yaml`` parsed and validated (what the grid and the notebook runner read).

A profile has three top-level keys: ``profile`` (must equal the file name), ``common`` (parameters passed to
every notebook) and ``notebooks`` (one section per notebook stem, overriding ``common``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS_DIR = REPO_ROOT / "configs"


class UsageError(Exception):
    """A mistake in the command line or the profile file: reported with exit status 2."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml's SafeLoader, except that a mapping holding one key twice is an error (SafeLoader keeps the last
    value silently). Keys brought in by a merge (``<<: *anchor``) may still be overridden."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: SafeLoader's own error follows
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark,
                        f"found the key {key!r} twice (first at line {first.start_mark.line + 1}); keep one",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def describe_yaml_error(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where it is and what is wrong (yaml's own text spans several lines)."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (:class:`UniqueKeyLoader`); raises yaml.YAMLError."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 — a SafeLoader subclass


@dataclass(frozen=True)
class Profile:
    """A parsed ``configs/<name>.yaml``."""

    name: str
    path: Path
    common: dict[str, Any]
    notebooks: dict[str, dict[str, Any]]

    def parameters(self, stem: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The parameters of one notebook: common, then its own section, then profile, then overrides."""
        params: dict[str, Any] = dict(self.common)
        params.update(self.notebooks.get(stem, {}))
        params["profile"] = self.name
        params.update(overrides or {})
        return params

    def reference_dir(self, default: Path | str = "results/reference") -> Path:
        """Where the profile's committed summaries live: the ``reference_dir`` its study notebooks are given
        (results/reference/fmnist for the fmnist profile), else ``default``."""
        for stem in ("03_continuous_pruning", "04_post_training", "02_figure1_units"):
            if "reference_dir" in self.parameters(stem):
                return Path(self.parameters(stem)["reference_dir"])
        return Path(default)


def available_profiles(configs_dir: Path) -> list[str]:
    """The profile names, i.e. the stems of ``configs/*.yaml``."""
    return sorted(p.stem for p in configs_dir.glob("*.yaml")) if configs_dir.is_dir() else []


def load_profile(name: str, configs_dir: Path) -> Profile:
    """Read and validate ``<configs_dir>/<name>.yaml``; UsageError names the file and the problem."""
    path = configs_dir / f"{name}.yaml"
    if not path.is_file():
        names = available_profiles(configs_dir)
        listing = ", ".join(names) if names else f"none: no *.yaml in {configs_dir}"
        raise UsageError(f"unknown profile {name!r}; available profiles (from {configs_dir}/*.yaml): {listing}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"malformed profile {path}: it is not a UTF-8 text file ({exc.reason} at byte {exc.start}); "
                         f"restore it (git checkout {path.name} in {configs_dir}) or write it as YAML text") from exc
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"malformed YAML in {path}: {describe_yaml_error(exc)}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"malformed profile {path}: the top level must be a mapping with keys profile, common, notebooks")
    unknown = set(data) - {"profile", "common", "notebooks"}
    if unknown:
        raise UsageError(
            f"malformed profile {path}: unknown top-level key(s) {sorted(unknown)}; allowed: profile, common, notebooks"
        )
    declared = data.get("profile", name)
    if declared != name:
        raise UsageError(f"malformed profile {path}: it says 'profile: {declared}' but the file is named {name}.yaml")
    common = data.get("common") or {}
    if not isinstance(common, dict):
        raise UsageError(f"malformed profile {path}: 'common' must be a mapping of parameter names to values")
    notebooks = data.get("notebooks") or {}
    if not isinstance(notebooks, dict):
        raise UsageError(f"malformed profile {path}: 'notebooks' must map notebook names to parameter mappings")
    sections: dict[str, dict[str, Any]] = {}
    for stem, section in notebooks.items():
        section = section or {}
        if not isinstance(section, dict):
            raise UsageError(f"malformed profile {path}: notebooks.{stem} must be a mapping of parameter names to values")
        sections[str(stem)] = dict(section)
    for key in ["profile", *common, *(k for s in sections.values() for k in s)]:
        if not isinstance(key, str) or not key.isidentifier():
            raise UsageError(f"malformed profile {path}: parameter name {key!r} is not a Python identifier")
    if "profile" in common or any("profile" in s for s in sections.values()):
        raise UsageError(f"malformed profile {path}: 'profile' is set by the file name; remove it from common/notebooks")
    return Profile(name=name, path=path, common=dict(common), notebooks=sections)


