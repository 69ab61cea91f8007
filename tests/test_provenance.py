"""Provenance recorded with runs: the code's commit and the numerical environment."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from bmrs.run.config import RunConfig
from bmrs.run.experiments import run
from bmrs.util import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(cwd, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def package_in(tmp_path, monkeypatch):
    """Point provenance at a fake package folder ``<root>/bmrs`` (a fresh lookup each time)."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git must not find a repository above tmp_path

    def place(root):
        pkg = root / "bmrs"
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text("x = 1\n")
        monkeypatch.setattr(provenance, "_PACKAGE_DIR", pkg)
        provenance.code_version.cache_clear()
        return pkg
    yield place
    provenance.code_version.cache_clear()


def test_code_version_is_the_commit_and_dirty_only_for_edits_inside_the_package(tmp_path, package_in):
    repo = tmp_path / "repo"
    pkg = package_in(repo)
    (repo / "README").write_text("a\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "one")
    sha = _git(repo, "rev-parse", "HEAD")
    assert provenance.code_version() == sha
    (repo / "README").write_text("b\n")  # outside bmrs/: still clean
    (pkg / "new_module.py").write_text("")  # untracked: not counted
    provenance.code_version.cache_clear()
    assert provenance.code_version() == sha
    (pkg / "__init__.py").write_text("x = 2\n")
    provenance.code_version.cache_clear()
    assert provenance.code_version() == sha + "+dirty"


def test_a_package_installed_inside_another_repository_or_none_is_unknown(tmp_path, package_in):
    project = tmp_path / "project"
    package_in(project / ".venv" / "lib" / "site-packages")  # a wheel in a virtualenv inside someone's repository
    _git(project, "init", "-q")
    (project / "f").write_text("")
    _git(project, "add", "f")
    _git(project, "commit", "-qm", "theirs")
    assert provenance.code_version() == "unknown"
    package_in(tmp_path / "plain")  # no repository at all
    assert provenance.code_version() == "unknown"


def test_a_run_records_its_code_and_cpu(tmp_path):
    cfg = RunConfig(network="mlp", method="etheta", dataset="digits", epochs=1, finetune_epochs=0, limit_train=200,
                    limit_test=50, profile="smoke")
    env = run(cfg, results_dir=tmp_path, log=lambda _: None)["environment"]
    assert env["code"] == provenance.code_version() and env["code"]
    assert env["cpu"] and env["cpu_capability"] and env["numba"] and env["threads"] == 1
