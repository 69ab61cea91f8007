"""Provenance recorded with runs: the code's commit and the numerical environment."""

from __future__ import annotations

import subprocess

import pytest

from bmrs.run.config import RunConfig
from bmrs.run.experiments import run
from bmrs.util import provenance


@pytest.fixture
def fresh_cache():
    provenance.code_version.cache_clear()
    yield
    provenance.code_version.cache_clear()


def test_code_version_is_the_checkouts_commit(fresh_cache):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=provenance._PACKAGE_DIR, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not running from a git checkout")
    assert provenance.code_version().split("+")[0] == head.stdout.strip()


def test_outside_a_git_checkout_the_code_version_is_unknown(fresh_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(provenance, "_PACKAGE_DIR", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # git must not find a repository above
    assert provenance.code_version() == "unknown"


def test_a_run_records_its_code_and_cpu_kernels(tmp_path):
    cfg = RunConfig(network="mlp", method="etheta", dataset="digits", epochs=1, finetune_epochs=0, limit_train=200,
                    limit_test=50, profile="smoke")
    env = run(cfg, results_dir=tmp_path, log=lambda _: None)["environment"]
    assert env["code"] == provenance.code_version() and env["code"]
    assert env["cpu_capability"] and env["numba"] and env["threads"] == 1
