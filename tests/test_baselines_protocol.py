"""The comparison protocol of the post-hoc baselines: same base network, matched compression, same budget."""

from __future__ import annotations

import pytest
import torch

from bmrs.run import posthoc as protocol
from bmrs.nn.measure import actual_param_compression, count_parameters, plain_parameters
from bmrs.nn.shrink import fold_noise
from bmrs.prune.eigendamage import EigenDamage
from bmrs.prune.criteria import L2, prune_to_fraction
from bmrs.prune.registry import make_criterion
from bmrs.run.data import load
from bmrs.run.experiments import RunConfig, base_config, load_model, run, run_dir
from bmrs.nn.models import lenet5, mlp
from bmrs.nn.noise import noise_layers

SMOKE = dict(dataset="digits", epochs=2, finetune_epochs=1, limit_train=400, limit_test=150, profile="smoke")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("posthoc")


@pytest.mark.parametrize("method", ["c_obd", "dirichlet", "eigendamage"])
def test_baselines_run_through_the_cli_pipeline_from_the_shared_base(results, method):
    cfg = RunConfig(network="mlp", method=method, **SMOKE)
    metrics = run(cfg, results_dir=results, log=lambda _: None)
    final = metrics["final"]
    assert run_dir(base_config(cfg), results).joinpath("metrics.json").exists()  # one base network, shared
    assert final["reference"] == "bmrs_n_code"
    assert final["test_acc"] > 15.0 and final["dense_parameters"] > 0
    assert abs(final["actual_param_compression_pct"] - final["target_actual_param_compression_pct"]) < 5.0
    assert final["latency_batch32"]["dense"]["median_s"] > 0 and final["latency_batch32"]["pruned"]["threads"] == 1
    assert len(metrics["history"]) == 1  # the fine-tuning budget of the BMRS runs


def test_the_base_run_never_prunes_and_post_hoc_methods_reuse_it(results):
    base = base_config(RunConfig(network="mlp", method="l2", **SMOKE))
    run(base, results_dir=results, log=lambda _: None)
    model = load_model(base, results)
    assert all(layer.mask.all() for _, layer in noise_layers(model))


def test_actual_compression_counts_the_shrunk_network():
    model = mlp((1, 8, 8), hidden=20, n_layers=1)
    dense = plain_parameters(model)
    assert dense == (64 * 20 + 20) + (20 * 20 + 20) + (20 * 10 + 10)
    dict(noise_layers(model))["3"].mask[:10] = 0  # 10 of the first 20 units: 10*65 + 10*20 parameters go
    assert actual_param_compression(model, dense) == pytest.approx(100 * (10 * 65 + 10 * 20) / dense)


def test_bisection_finds_the_level_matching_a_target_compression():
    model = lenet5(1)
    dense = plain_parameters(model)
    level = protocol._bisect(lambda f: actual_param_compression(protocol._masked(model, L2(), f), dense),
                             60.0)
    prune_to_fraction(model, L2(), level)
    assert actual_param_compression(model, dense) == pytest.approx(60.0, abs=2.0)


def test_eigendamage_matches_a_parameter_budget_counting_rotations():
    bundle = load("digits", network="lenet5", limit_train=300, limit_test=100)
    plain = fold_noise(lenet5(1))
    method = EigenDamage(batch_size=64)
    method.fit(plain, bundle, device=torch.device("cpu"), seed=0)
    base = count_parameters(plain)
    ratio = protocol._bisect(lambda r: 100 * (1 - count_parameters(method.prune(plain, r)) / base), 40.0, hi=0.99)
    pruned = method.prune(plain, ratio)
    assert 100 * (1 - count_parameters(pruned) / base) == pytest.approx(40.0, abs=5.0)
    x = bundle.test.x[:4]
    assert pruned(x).shape == (4, 10)


def test_data_dependent_criteria_are_selectable_by_name():
    assert make_criterion("c_obd").name == "C-OBD"
    assert make_criterion("dirichlet").name.startswith("Dirichlet")
