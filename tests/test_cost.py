"""bmrs.report.cost: step times with and without noise layers, the paper's ratios, compaction of finished runs.

Small networks and few steps: the tests check the promised columns, that times and ratios are positive and
finite, that the thread count is restored, and that compaction agrees with bmrs.nn.shrink — not the speeds.
"""

from __future__ import annotations

import json
import math
import shutil

import pandas as pd
import pytest
import torch

from bmrs.report import cost
from bmrs.run import experiments as ex
from bmrs.nn.models import mlp
from bmrs.nn.noise import noise_layers

SMOKE = dict(dataset="digits", network="mlp", epochs=1, finetune_epochs=1, limit_train=200, limit_test=100,
             batch_size=32)
PHASE_COLUMNS = [f"{p}_{s}" for p in cost.PHASES
                 for s in ("ms", "q1_ms", "q3_ms", "iqr_ms", "ratio", "ratio_q1", "ratio_q3")]


def tiny_mlp(noise: bool) -> torch.nn.Module:
    return mlp((1, 8, 8), 10, hidden=16, n_layers=1, noise=noise)


@pytest.fixture
def threads_guard():
    before = torch.get_num_threads()
    torch.set_num_threads(2 if before != 2 else 1)
    yield torch.get_num_threads()
    torch.set_num_threads(before)


# ------------------------------------------------------------------------------------------------
# step_times
# ------------------------------------------------------------------------------------------------

def test_step_times_columns_ratios_and_threads(threads_guard):
    df = cost.step_times(tiny_mlp, (1, 8, 8), batch=4, threads=1, rounds=3, steps=2, warmup=1, device="cpu")
    assert torch.get_num_threads() == threads_guard  # restored
    assert list(df["variant"]) == ["none", "noise"]
    for col in [*PHASE_COLUMNS, "params", "noise_units", "batch", "threads", "rounds", "steps", "device",
                "input_shape", "label", "methods"]:
        assert col in df.columns, col
    for col in PHASE_COLUMNS:
        assert (df[col] >= 0).all() and df[col].map(math.isfinite).all(), col
    for phase in cost.PHASES:
        assert (df[f"{phase}_ms"] > 0).all()
        assert (df[f"{phase}_ratio"] > 0).all()
        assert df[f"{phase}_ratio_q1"].le(df[f"{phase}_ratio_q3"]).all()
        none = df[df["variant"] == "none"].iloc[0]
        assert none[f"{phase}_ratio"] == 1.0
    noise = df[df["variant"] == "noise"].iloc[0]
    assert noise["noise_units"] == 32 and df.iloc[0]["noise_units"] == 0
    assert noise["params"] - df.iloc[0]["params"] == 2 * 32  # μ and log σ per unit
    assert set(df["threads"]) == {1} and set(df["input_shape"]) == {"1x8x8"} and set(df["device"]) == {"cpu"}
    assert "SNR" in noise["methods"] and "BMRS_U" in noise["methods"]


def test_step_times_restores_threads_on_error(threads_guard):
    def broken(noise: bool):
        if noise:
            raise RuntimeError("cannot build")
        return tiny_mlp(False)

    with pytest.raises(RuntimeError, match="cannot build"):
        cost.step_times(broken, (1, 8, 8), batch=2, threads=1, rounds=1, steps=1, device="cpu")
    assert torch.get_num_threads() == threads_guard


def test_step_times_rejects_bad_arguments():
    with pytest.raises(ValueError, match="without noise layers"):
        cost.step_times(lambda noise: tiny_mlp(False), (1, 8, 8), batch=2, rounds=1, steps=1, warmup=0, device="cpu")
    with pytest.raises(ValueError, match="rounds"):
        cost.step_times(tiny_mlp, (1, 8, 8), rounds=0)


def test_network_builder_matches_the_runs():
    # sizes of the released code's networks (`modules/classifiers.py`; paper Appendix C): trainable parameters
    # including μ and log σ
    for network, dataset, params in (("mlp", "mnist", 175_810), ("mlp", "fashion_mnist", 178_510),
                                     ("mlp", "cifar10", 577_510), ("lenet5", "mnist", 62_158),
                                     ("lenet5", "cifar10", 550_234)):
        build, shape, optimizer = cost.network_builder(network, dataset)
        model = build(True)
        assert sum(p.numel() for p in model.parameters()) == params, (network, dataset)
        assert shape == ((3, 32, 32) if dataset == "cifar10" else (1, 32, 32)) and optimizer == "adam"
        assert not any(True for _ in noise_layers(build(False)))
    build, shape, optimizer = cost.network_builder("vit_b16", "tiny_imagenet", image_size=32)
    assert shape == (3, 32, 32) and optimizer == "adamw"
    with pytest.raises(ValueError, match="image_size"):
        cost.network_builder("lenet5", "mnist", image_size=64)
    with pytest.raises(ValueError, match="unknown network"):
        cost.network_builder("vgg", "mnist")


def test_table_step_times_and_paper_comparison():
    entries = [{"table": "table3", "network": "lenet5", "dataset": "mnist", "batch": 4},
               {"table": "table4", "network": "resnet18", "dataset": "cifar10", "image_size": 32, "batch": 2}]
    steps = cost.table_step_times(entries, threads=1, rounds=1, steps=1, warmup=0, device="cpu", log=None)
    assert len(steps) == 4 and list(steps["table"]) == ["table3"] * 2 + ["table4"] * 2
    assert list(steps["batch"]) == [4, 4, 2, 2]
    cmp = cost.steps_vs_paper(steps)
    assert len(cmp) == 2
    lenet = cmp[cmp["network"] == "lenet5"].iloc[0]
    assert lenet["paper_train_ratio_min"] == pytest.approx(11.18 / 2.31)
    assert lenet["paper_train_ratio_max"] == pytest.approx(11.45 / 2.31)
    assert lenet["train_step_ratio"] > 0 and lenet["inference_ratio"] > 0
    assert math.isnan(cmp[cmp["network"] == "resnet18"].iloc[0].get("paper_train_ratio_min", float("nan")))
    with pytest.raises(ValueError, match="network and dataset"):
        cost.table_step_times([{"network": "mlp"}], log=None)


def test_paper_ratios():
    t3, t4 = cost.paper_ratios("table3"), cost.paper_ratios("table4")
    assert len(t3) == 6 and len(t4) == 4
    mlp_mnist = t3[(t3["network"] == "mlp") & (t3["dataset"] == "mnist")].iloc[0]
    assert mlp_mnist["paper_train_ratio_min"] == pytest.approx(19.76 / 2.41)
    assert mlp_mnist["paper_inference_none_ms"] == pytest.approx(0.73)
    assert set(t4["network"]) == {"resnet50", "vit_b16"}
    vit = t4[(t4["network"] == "vit_b16") & (t4["dataset"] == "cifar10")].iloc[0]
    assert 1.3 < vit["paper_train_ratio_min"] <= vit["paper_train_ratio_max"] < 1.4  # the paper's ≈ 1.35–1.39×


# ------------------------------------------------------------------------------------------------
# compaction_table
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished digits MLP run, and a copy of it with about 60 % of every layer's units masked."""
    root = tmp_path_factory.mktemp("runs")
    cfg = ex.RunConfig(method="bmrs_n_code", seed=1000, profile="smoke", **SMOKE)
    ex.run(cfg, results_dir=root, log=lambda _: None)
    run = ex.run_dir(cfg, root)
    pruned = root / "pruned" / "copy"
    shutil.copytree(run, pruned)
    state = torch.load(pruned / "model.pt", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key in state:
        if key.endswith("mask"):
            state[key] = (torch.rand(state[key].shape, generator=gen) > 0.6).float()
            state[key][0] = 1.0
    torch.save(state, pruned / "model.pt")
    return root, cfg, run, pruned


def test_compaction_table(finished_run, threads_guard):
    root, cfg, run, pruned = finished_run
    setting = dict(SMOKE)
    df = cost.compaction_table([(setting, "bmrs_n_code", 1000), pruned], threads=1, repeats=3, profile="smoke",
                               results_dir=root, log=None)
    assert torch.get_num_threads() == threads_guard
    assert len(df) == 2 and list(df["run_id"]) == [run.name, "copy"]
    expected = ["dataset", "network", "method", "seed", "test_acc", "paper_param_compression_pct",
                "params_dense_with_noise", "params_dense_without_noise", "params_plain", "params_shrunk",
                "actual_param_compression_pct", "macs_dense", "macs_shrunk", "macs_ratio", "mac_reduction_pct",
                "max_abs_output_diff", "threads", "repeats", "device"]
    for b in (1, 32):
        expected += [f"latency_b{b}_dense_ms", f"latency_b{b}_shrunk_ms", f"latency_b{b}_plain_ms",
                     f"speedup_b{b}", f"speedup_vs_plain_b{b}", f"realised_fraction_b{b}",
                     f"realised_fraction_vs_plain_b{b}"]
    for col in expected:
        assert col in df.columns, col
    for b in (1, 32):
        assert (df[f"speedup_b{b}"] > 0).all() and (df[f"speedup_vs_plain_b{b}"] > 0).all()
        assert (df[f"latency_b{b}_shrunk_ms"] > 0).all() and (df[f"latency_b{b}_plain_ms"] > 0).all()
    assert (df["params_dense_without_noise"] == df["params_plain"]).all()
    assert (df["params_dense_with_noise"] - df["params_dense_without_noise"] == 2 * 800).all()  # 8 layers × 100
    assert (df["max_abs_output_diff"] < 1e-4).all()
    p = df.iloc[1]  # the masked copy
    assert p["units_pruned"] > 0 and p["params_shrunk"] < p["params_plain"] and p["macs_shrunk"] < p["macs_dense"]
    assert 0 < p["mac_reduction_pct"] < 100 and math.isfinite(p["realised_fraction_b32"])
    assert p["paper_param_compression_pct"] > 0
    # what bmrs.nn.shrink wrote next to the run
    report = json.loads((pruned / "compact" / "report.json").read_text())
    assert report["params"]["shrunk"] == p["params_shrunk"] and report["macs"]["shrunk"] == p["macs_shrunk"]


def test_resolve_run_dir_and_errors(finished_run, tmp_path):
    root, cfg, run, _ = finished_run
    assert cost.resolve_run_dir((dict(SMOKE), "bmrs_n_code", 1000), profile="smoke", results_dir=root) == run
    assert cost.resolve_run_dir(str(run)) == run
    with pytest.raises(ValueError, match="profile"):
        cost.resolve_run_dir((dict(SMOKE), "bmrs_n_code", 1000))
    with pytest.raises(ValueError, match=r"unknown run settings \['epoch'\] \(did you mean 'epoch' -> 'epochs'"):
        cost.resolve_run_dir(({**SMOKE, "epoch": 3}, "snr", 1), profile="smoke")
    with pytest.raises(FileNotFoundError, match="python -m bmrs train"):
        cost.compaction_table([(dict(SMOKE), "snr", 7)], profile="smoke", results_dir=root, repeats=1, log=None)
    plain = tmp_path / "none_run"
    shutil.copytree(run, plain)
    config = json.loads((plain / "config.json").read_text())
    config["run"]["method"] = "none"
    (plain / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="nothing|no noise-layer masks"):
        cost.compaction_table([plain], repeats=1, log=None)


def test_compaction_summary_round_trip(finished_run, tmp_path, monkeypatch):
    """The summary a notebook saves reads back with the same columns (bmrs.report.study CSVs)."""
    from bmrs.report import study

    root, _, _, pruned = finished_run
    monkeypatch.setattr(study, "SUMMARY_DIR", tmp_path / "summary")
    df = cost.compaction_table([pruned], repeats=1, log=None)
    study.save_summary(df, "cost_compaction", "smoke")
    back = study.load_summary("cost_compaction", "smoke")
    pd.testing.assert_index_equal(back.columns, df.columns)
    assert back.loc[0, "params_shrunk"] == df.loc[0, "params_shrunk"]
