"""benchmarks/gpu_check.py on the CPU (its main() in this process): the reduced run (--quick) writes a complete summary whose figures are all
finite and whose checks pass; a failing part is named in the summary and the exit status; bad arguments exit 2."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from bmrs.run import data

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PARTS = ("sampler", "cache", "criteria", "shrink", "epoch", "timings")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _numbers(obj, path="summary"):
    """(path, value) of every int/float leaf."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


@pytest.mark.slow
def test_quick_cpu_run_writes_a_complete_finite_summary(tmp_path: Path, capsys, monkeypatch) -> None:
    # Fashion-MNIST where it is installed (Debian's dataset-fashion-mnist, or files under BMRS_DATA_DIR);
    # otherwise the LeNet5 epoch runs on scikit-learn's digits, which ship with the package.
    dataset = "fashion_mnist" if data.available("fashion_mnist") else "digits"
    out = tmp_path / "summary.json"
    # in this process, as `python benchmarks/gpu_check.py ...` runs it (its __main__ block is sys.exit(main())),
    # without a fresh interpreter's imports
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("BMRS_QUIET", "1")
    monkeypatch.chdir(ROOT)
    rc = _load_script().main(["--quick", "--device", "cpu", "--dataset", dataset, "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "--device cpu: ran the CPU parts only" in printed.out
    summary = json.loads(out.read_text())

    assert summary["device"] == "cpu" and summary["torch"] == torch.__version__ and summary["device_name"]
    assert summary["mode"] == "quick" and summary["passed"] is True and summary["failures"] == []
    assert set(summary["parts"]) == set(PARTS)
    for name in PARTS:
        part = summary["parts"][name]
        assert part["passed"] is True and part["failures"] == [] and part["seconds"] > 0, (name, part)
    leaves = list(_numbers(summary))
    assert len(leaves) > 100
    bad = [(p, v) for p, v in leaves if not math.isfinite(v)]
    assert not bad, bad

    p = summary["parts"]
    assert set(p["sampler"]["cases"]) == {f"{l}_{d}" for l in ("NF", "NCHW", "NTD") for d in ("float32", "float64")}
    for case in p["sampler"]["cases"].values():
        assert 0 <= case["max_dlog_theta_over_tolerance"] <= 1
        assert 0 <= case["max_grad_mu_rel_error"] <= case["grad_rel_tolerance"]
    assert p["sampler"]["sampler_constants_max_abs_diff_device_vs_cpu"] <= 1e-12
    assert p["cache"]["computations_after"] == {"two_eval_calls": 1, "train_call_then_eval": 1, "optimizer_step": 2,
                                                "load_state_dict": 3, "in_place_update": 4}
    assert {"etheta", "snr", "bmrs_n", "bmrs_u4", "l2"} <= set(p["criteria"]["criteria"])
    for row in p["criteria"]["criteria"].values():
        assert row["mask_agreement"] == 1.0 and 0 < row["units_pruned"] < row["units_total"]
    for net in ("mlp", "lenet5", "vit_small_32px", "resnet18_32px"):
        fig = p["shrink"]["networks"][net]
        assert fig["params_shrunk"] < fig["params_masked"] and fig["max_abs_output_diff"] <= 1e-4 * fig["max_abs_output"]
    epoch = p["epoch"]
    assert epoch["dataset"] == dataset and epoch["device_of_run"] == "cpu"
    assert 50 < epoch["test_acc"] <= 100 and epoch["epoch_seconds"] > 0
    rows = p["timings"]["rows"]
    assert {(r["table"], r["network"], r["variant"]) for r in rows} == {
        (t, n, v) for t, n in (("table3", "mlp"), ("table3", "lenet5"), ("table4", "resnet18"), ("table4", "vit_tiny"))
        for v in ("none", "noise")}
    for r in rows:
        for phase in ("train_step", "train_forward", "inference"):
            assert r[f"{phase}_ms"] > 0 and r[f"{phase}_ratio"] > 0
    assert set(p["timings"]["train_step_ratio_noise_over_none"]) == {
        "table3/mlp/fashion_mnist", "table3/lenet5/fashion_mnist", "table4/resnet18/cifar10", "table4/vit_tiny/cifar10"}


def test_a_failing_part_is_named_and_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    gpu_check = _load_script()
    monkeypatch.setattr(gpu_check.data, "available", lambda name, **kw: False)
    out = tmp_path / "s.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out),
                         "--skip", "sampler", "cache", "criteria", "shrink", "timings"])
    assert rc == 1
    summary = json.loads(out.read_text())
    assert summary["passed"] is False and summary["parts"]["timings"] == {"skipped": True}
    assert summary["parts"]["epoch"]["passed"] is False
    (failure,) = summary["failures"]
    assert "fashion_mnist is not available" in failure and "--dataset digits" in failure
    assert "FAILED epoch: dataset fashion_mnist" in capsys.readouterr().err


def test_a_crashing_part_is_recorded_and_the_rest_still_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_check = _load_script()

    def boom(device, quick):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check, "check_cache", boom)
    out = tmp_path / "s.json"
    rc = gpu_check.main(["--device", "cpu", "--quick", "--out", str(out), "--skip", "criteria", "shrink", "epoch",
                         "timings"])
    summary = json.loads(out.read_text())
    assert rc == 1 and summary["parts"]["sampler"]["passed"] is True
    assert summary["failures"] == ["cache: RuntimeError: CUDA error: an illegal memory access was encountered"]
    assert summary["parts"]["cache"]["traceback"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_requested_without_a_gpu_is_one_line_exit_2(tmp_path: Path, capsys) -> None:
    rc = _load_script().main(["--device", "cuda", "--out", str(tmp_path / "s.json")])
    assert rc == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no CUDA device is available" in lines[0] and "--device cpu or auto" in lines[0]
    assert not (tmp_path / "s.json").exists()


def test_unknown_part_is_an_argument_error(tmp_path: Path) -> None:
    gpu_check = _load_script()
    with pytest.raises(SystemExit) as caught:
        gpu_check.parse_args(["--skip", "warp"])
    assert caught.value.code == 2
