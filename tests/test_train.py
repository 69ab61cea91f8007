"""The training/pruning protocol and runs-as-data: real smoke runs, determinism, resume, caching, errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from bmrs.run import cli
from bmrs.prune.criteria import SNR, BMRSN, apply_criterion
from bmrs.run.data import DataUnavailableError, TensorSplit, load
from bmrs.run.config import METHODS, RunConfig
from bmrs.run.experiments import ResultsCorruptError, load_model, run, run_dir
from bmrs.nn.models import lenet5, mlp, resnet, vit
from bmrs.nn.noise import model_kl, noise_layers
from bmrs.run.train import PruningPlan, TrainConfig, Trainer, TrainingInterrupted, post_training_sweep

SMOKE = dict(dataset="digits", epochs=2, finetune_epochs=1, limit_train=400, limit_test=150, profile="smoke")


def _strip_times(metrics: dict) -> dict:
    out = json.loads(json.dumps({"history": metrics["history"], "final": metrics["final"]}))
    for rec in out["history"]:
        rec.pop("seconds")
        rec.pop("time_split", None)  # wall-clock split of the epoch (train, prune, eval, metric, checkpoint)
    out["final"].pop("train_seconds")
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("network", ["mlp", "lenet5"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end_on_real_data(results, network, method):
    cfg = RunConfig(network=network, method=method, **SMOKE)
    metrics = run(cfg, results_dir=results, log=lambda _: None)
    out = run_dir(cfg, results)
    assert {p.name for p in out.iterdir()} >= {"config.json", "metrics.json", "model.pt"}
    assert not (out / "checkpoint.pt").exists()
    final = metrics["final"]
    assert 0.0 <= final["test_acc"] <= 100.0 and final["test_acc"] > 15.0  # better than chance on digits
    post_hoc = method == "l2"  # prunes the shared base network once, then fine-tunes (bmrs.run.posthoc)
    assert len(metrics["history"]) == (1 if post_hoc else 3) and metrics["history"][-1]["phase"] == "finetune"
    assert metrics["config"]["method"] == method and metrics["status"] == "complete"
    assert metrics["data_source"]
    if method == "none":  # the run's own network, as stored, has no noise layers and nothing is pruned
        assert not any(True for _ in noise_layers(load_model(cfg, results)))
        assert final["param_compression_pct"] == 0.0
    if method == "l2":
        ref = run(cfg.replace(method="bmrs_n_code"), results_dir=results, log=lambda _: None)
        assert final["target_structure_compression_pct"] == pytest.approx(ref["final"]["structure_compression_pct"])
        assert final["structure_compression_pct"] == pytest.approx(ref["final"]["structure_compression_pct"], abs=0.5)


def test_two_processes_compute_the_same_run_bit_for_bit(tmp_path):
    """Across processes (another hash seed, a fresh RNG, numba's compiled cache) a run repeats exactly."""
    args = ["--dataset", "digits", "--network", "mlp", "--method", "bmrs_n_code", "--epochs", "2",
            "--finetune-epochs", "1", "--limit-train", "400", "--limit-test", "150", "--profile", "smoke"]
    out = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, "-m", "bmrs", "train", *args, "--results-dir", str(tmp_path / hash_seed)],
                       env=env, check=True, capture_output=True)
        (metrics,) = (tmp_path / hash_seed).glob("*/metrics.json")
        out.append(_strip_times(json.loads(metrics.read_text())))
    assert out[0] == out[1]


def test_same_seed_gives_identical_metrics_and_another_seed_does_not(tmp_path):
    cfg = RunConfig(network="lenet5", method="bmrs_u4", **SMOKE)
    a = run(cfg, results_dir=tmp_path / "a", log=lambda _: None)
    b = run(cfg, results_dir=tmp_path / "b", log=lambda _: None)
    c = run(cfg.replace(seed=7), results_dir=tmp_path / "c", log=lambda _: None)
    assert _strip_times(a) == _strip_times(b)
    assert _strip_times(a) != _strip_times(c)


@pytest.mark.parametrize("stop_after", [1, 2])  # inside training, and at the train/fine-tune boundary
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path, stop_after):
    cfg = RunConfig(network="mlp", method="snr", **SMOKE)
    whole = run(cfg, results_dir=tmp_path / "whole", log=lambda _: None)
    with pytest.raises(TrainingInterrupted):
        run(cfg, results_dir=tmp_path / "split", stop_after_epoch=stop_after, log=lambda _: None)
    out = run_dir(cfg, tmp_path / "split")
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()
    resumed = run(cfg, results_dir=tmp_path / "split", log=lambda _: None)
    assert _strip_times(resumed) == _strip_times(whole)


def test_a_finished_run_is_returned_without_training(tmp_path, monkeypatch):
    cfg = RunConfig(network="mlp", method="etheta", **SMOKE)
    first = run(cfg, results_dir=tmp_path, log=lambda _: None)

    def boom(self):
        raise AssertionError("a finished run must not be retrained")

    monkeypatch.setattr(Trainer, "fit", boom)
    assert run(cfg, results_dir=tmp_path, log=lambda _: None) == first


def test_a_corrupt_results_file_is_reported_never_overwritten(tmp_path):
    cfg = RunConfig(network="mlp", method="etheta", **SMOKE)
    run(cfg, results_dir=tmp_path, log=lambda _: None)
    path = run_dir(cfg, tmp_path) / "metrics.json"
    path.write_text('{"final": ')
    with pytest.raises(ResultsCorruptError, match=str(path)):
        run(cfg, results_dir=tmp_path, log=lambda _: None)
    assert path.read_text() == '{"final": '


def test_cli_rejects_unknown_names_with_the_valid_ones(capsys):
    for args, valid in ((["--dataset", "nope", "--network", "mlp", "--method", "snr"], "digits"),
                        (["--dataset", "digits", "--network", "nope", "--method", "snr"], "lenet5"),
                        (["--dataset", "digits", "--network", "mlp", "--method", "nope"], "bmrs_u4")):
        with pytest.raises(SystemExit) as exc:
            cli.main(["train", *args])
        assert exc.value.code == 2
        assert valid in capsys.readouterr().err


def test_cli_trains_and_reports(tmp_path, capsys):
    code = cli.main(["train", "--dataset", "digits", "--network", "mlp", "--method", "bmrs_n", "--epochs", "1",
                     "--finetune-epochs", "1", "--limit-train", "300", "--limit-test", "100",
                     "--results-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "test accuracy" in out and "parameter compression" in out
    code = cli.main(["show", str(next(tmp_path.iterdir()))])
    assert code == 0 and "test_acc" in capsys.readouterr().out
    assert cli.main(["show", str(tmp_path / "missing")]) == 1
    assert "has not finished" in capsys.readouterr().err


def _tiny_bundle(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 32, 32, generator=g)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    split = TensorSplit(x, y)

    class Bundle:
        train = val = test = split
        num_classes = 2

    return Bundle()


def test_continuous_pruning_removes_collapsed_units_and_freezes_masks_for_fine_tuning():
    model = lenet5(1, num_classes=2)
    target = dict(noise_layers(model))["11"]
    with torch.no_grad():
        target.mu[:30] = -30.0  # posterior mass at log theta = a: BMRS_N prunes these
        target.log_sigma[:30] = 0.0
    cfg = TrainConfig(epochs=2, finetune_epochs=2, lr=1e-4, batch_size=32)
    trainer = Trainer(model, _tiny_bundle(), cfg, PruningPlan(criterion=BMRSN()), seed=0, device=torch.device("cpu"))
    result = trainer.fit()
    assert not target.mask[:30].any() and target.mask[30:].all()
    masks = [r["structure_compression_pct"] for r in result.history]
    assert masks[0] == pytest.approx(100 * 30 / 226) and len(set(masks)) == 1
    assert result.final["param_compression_pct"] > masks[0]


def test_post_training_sweep_records_rising_compression_and_bmrs_stops_at_its_own_point():
    model = mlp((1, 32, 32), num_classes=2, hidden=20, n_layers=1)
    with torch.no_grad():
        for _, layer in noise_layers(model):
            layer.mu[:8] = -30.0
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(lr=1e-3, batch_size=32)
    recs = post_training_sweep(model, state, _tiny_bundle(), BMRSN(), [0, 10, 20, 30, 40, 60, 90], cfg, seed=0,
                               device=torch.device("cpu"))
    comps = [r["structure_compression_pct"] for r in recs]
    assert comps == sorted(comps) and comps[-1] == pytest.approx(100 * 16 / 40)  # only the dF >= 0 units go
    recs = post_training_sweep(model, state, _tiny_bundle(), SNR(), [0, 50, 90], cfg, seed=0,
                               device=torch.device("cpu"))
    assert [r["units_kept"] for r in recs] == [40, 20, 4]
    torch.testing.assert_close(model.state_dict()["1.weight"], state["1.weight"])  # weights restored


@pytest.mark.parametrize("builder, size, n_noise", [
    (lambda: resnet(18, 10, image_size=32), 32, 20),  # one per BatchNorm2d, downsample branches included
    (lambda: vit(10, image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64), 32, 4),
], ids=["resnet18", "vit_small"])
def test_large_networks_train_and_prune_on_small_random_inputs(builder, size, n_noise):
    model = builder()
    layers = list(noise_layers(model))
    assert len(layers) == n_noise
    x, y = torch.randn(4, 3, size, size), torch.randint(0, 10, (4,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    loss = F.cross_entropy(model(x), y) + model_kl(model)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(l.mu.grad is not None and l.log_sigma.grad.abs().sum() > 0 for _, l in layers)
    opt.step()
    with torch.no_grad():
        layers[0][1].mu[:3] = -30.0
    result = apply_criterion(model, BMRSN())
    assert result.kept[layers[0][0]] == layers[0][1].num_units - 3
    model.eval()
    assert model(x).shape == (4, 10)


def test_real_fashion_mnist_smoke_run_when_the_system_copy_is_present(tmp_path):
    try:
        load("fashion_mnist", limit_train=200, limit_test=100)
    except DataUnavailableError as exc:  # offline machines without the files skip; any other error fails
        pytest.skip(f"Fashion-MNIST not available: {exc}")
    cfg = RunConfig(dataset="fashion_mnist", network="lenet5", method="bmrs_n", epochs=1, finetune_epochs=1,
                    limit_train=600, limit_test=200, profile="smoke")
    metrics = run(cfg, results_dir=tmp_path, log=lambda _: None)
    assert metrics["final"]["test_acc"] > 20.0
    assert "fashion" in metrics["data_source"].lower()


def test_a_run_stored_under_an_older_compression_rule_is_recomputed_when_summarised(tmp_path, monkeypatch):
    """study rows take the paper metric from the stored run when it was computed with the current rule, and
    recompute it from the saved model (never retraining) when it was not."""
    from bmrs.report import study
    from bmrs.run.experiments import load_model
    from bmrs.nn.paper_metric import PAPER_METRIC_VERSION, paper_compression

    setting = {"dataset": "digits", "network": "lenet5", "epochs": 2, "finetune_epochs": 1, "limit_train": 400,
               "limit_test": 150}
    fresh = study.continuous([setting], ["bmrs_n_code"], [1000], profile="smoke", results_dir=tmp_path, log=lambda _: None)
    cfg = RunConfig(network="lenet5", method="bmrs_n_code", **SMOKE)
    path = run_dir(cfg, tmp_path) / "metrics.json"
    metrics = json.loads(path.read_text())
    assert metrics["final"]["paper_metric_version"] == PAPER_METRIC_VERSION
    expected = paper_compression(load_model(cfg, tmp_path)).parameter_pct
    assert fresh["param_compression_pct"].item() == pytest.approx(expected)
    # the same run as an older version stored it: a different number and no version
    metrics["final"]["param_compression_pct"] = 99.9
    del metrics["final"]["paper_metric_version"]
    path.write_text(json.dumps(metrics))
    monkeypatch.setattr(Trainer, "fit", lambda self: (_ for _ in ()).throw(AssertionError("no retraining")))
    again = study.continuous([setting], ["bmrs_n_code"], [1000], profile="smoke", results_dir=tmp_path, log=lambda _: None)
    assert again["param_compression_pct"].item() == pytest.approx(expected)


def test_the_base_network_keeps_its_last_epoch_and_post_hoc_runs_are_defined_by_it(tmp_path):
    """As in the released code's compression_vs_accuracy_separate.py (paper Figure 2): post-training criteria prune the network trained for the full schedule, so the base run
    keeps the last epoch's weights (no best-validation selection), and a post-hoc run's identity includes
    its base run."""
    from bmrs.run.experiments import base_config, load_model

    cfg = RunConfig(network="mlp", method="l2", **SMOKE)
    base = base_config(cfg)
    assert base.selection == "last" and cfg.hashed_fields()["base"] == base.run_id
    assert "base" not in RunConfig(network="mlp", method="bmrs_n_code", **SMOKE).hashed_fields()
    assert cfg.replace(seed=7).hashed_fields()["base"] != base.run_id
    metrics = run(base.replace(epochs=3), results_dir=tmp_path, log=lambda _: None)
    history = metrics["history"]
    assert len(history) == 3 and not any(r.get("best") for r in history)
    model = load_model(base.replace(epochs=3), tmp_path)
    bundle = load("digits", network="mlp", seed=base.seed, limit_train=400, limit_test=150)
    from bmrs.nn.measure import evaluate

    assert evaluate(model, bundle.val, device=torch.device("cpu"))["acc"] == pytest.approx(history[-1]["val_acc"])
    with pytest.raises(ValueError, match="selection must be 'best_val' or 'last'"):
        TrainConfig(selection="best").validate()
