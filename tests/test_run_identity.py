"""A run id means one result (issues 9 and 10).

* Pinned ids: the run ids of representative configs, as literals computed with the code before the restructure
  into bmrs/{core,nn,prune,run,report} (commit 7969cc9, ``bmrs.experiments.RunConfig``), so the run
  directories users have on disk stay valid. They are also the ids in results/reference/*.csv.
* One canonical form per setting: spellings of one computation share one id.
* The hint printed for an unfinished run is a command the CLI accepts, and it reproduces the same run.
* A run's result does not depend on the caller's thread count (every run trains with RUN_THREADS threads).
* Two processes starting the same run: one trains it, the other waits for the lock and then finds it done.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from bmrs.run import cli, data, grid, store
from bmrs.run.config import RunConfig, base_config
from bmrs.run.experiments import RUN_THREADS, load_model, run
from bmrs.run.profile import CONFIGS_DIR, load_profile
from bmrs.run.train import TrainingInterrupted

REPO = Path(__file__).resolve().parents[1]
QUICK_MLP = dict(dataset="fashion_mnist", network="mlp", epochs=5, finetune_epochs=2, noise_lr_scale=10)
QUICK_LENET5 = dict(dataset="fashion_mnist", network="lenet5", limit_train=12000, epochs=4, finetune_epochs=2,
                    noise_lr_scale=10)
FMNIST_LENET5 = dict(dataset="fashion_mnist", network="lenet5", epochs=50, finetune_epochs=10)
SMOKE = dict(dataset="digits", epochs=1, finetune_epochs=1, limit_train=300, limit_test=200, profile="smoke")

# (config, run id at commit 7969cc9)
PINNED = {
    "quick F-MNIST MLP bmrs_n_code": (RunConfig(method="bmrs_n_code", seed=1000, profile="quick", **QUICK_MLP),
                                      "9318aacdaa88bb0c"),
    "quick F-MNIST LeNet5 bmrs_u4": (RunConfig(method="bmrs_u4", seed=1000, profile="quick", **QUICK_LENET5),
                                     "89fd3e4ae589a92a"),
    "quick F-MNIST LeNet5 none": (RunConfig(method="none", seed=1000, profile="quick", **QUICK_LENET5),
                                  "e3ee20dc2bfa0533"),
    "quick MLP base": (base_config(RunConfig(method="bmrs_n_code", seed=1000, profile="quick", **QUICK_MLP)),
                       "45b118b2ea7efa8e"),
    "quick MLP post-hoc l2": (RunConfig(method="l2", seed=1000, profile="quick", **QUICK_MLP), "534caf9aa33349c6"),
    "quick LeNet5 post-hoc l2": (RunConfig(method="l2", seed=1000, profile="quick", **QUICK_LENET5),
                                 "b7c457af013c3a6d"),
    "quick LeNet5 dirichlet": (RunConfig(method="dirichlet", seed=1000, profile="quick", **QUICK_LENET5),
                               "6bd57e7f2f9e74fc"),
    "fmnist LeNet5 bmrs_n_code seed 100": (RunConfig(method="bmrs_n_code", seed=100, profile="fmnist",
                                                     **FMNIST_LENET5), "00d73de4f82f24a5"),
    "fmnist MLP base": (base_config(RunConfig(dataset="fashion_mnist", network="mlp", method="none", seed=1000,
                                              profile="fmnist", epochs=50, finetune_epochs=10)), "47842d0feaeb2bb7"),
    "smoke digits MLP snr": (RunConfig(network="mlp", method="snr", seed=1000, batch_size=32, **SMOKE),
                             "df584cb651198ce2"),
    "paper CIFAR-10 LeNet5 bmrs_n": (RunConfig(dataset="cifar10", network="lenet5", method="bmrs_n"),
                                     "81edb67bb915dd6f"),
    "bmrs_u6": (RunConfig(dataset="mnist", network="mlp", method="bmrs_u6"), "59458db08494c2b3"),
    "every loss/selection option": (RunConfig(dataset="mnist", network="mlp", method="snr", seed=3, kl_reduction="sum",
                                              kl_weight=0.5, val_fraction=0.1, selection="last", lr=1e-3,
                                              batch_size=64), "d596f3e6436a61ee"),
}


@pytest.mark.parametrize("cfg, run_id", PINNED.values(), ids=PINNED.keys())
def test_run_ids_are_those_of_the_code_before_the_restructure(cfg, run_id):
    assert cfg.run_id == run_id


#: Runs whose inputs changed after the restructure (ResNet-50's pretrained weights DEFAULT = IMAGENET1K_V2 ->
#: IMAGENET1K_V1, the authors' torch.hub checkpoint; the ViT fed ImageNet mean/std instead of 0.5/0.5): the id
#: before the change, and the id now, which records the weights and the normalisation (RunConfig.input_identity)
CHANGED_INPUTS = {
    "ResNet-50 pretrained, 64 px": (RunConfig(dataset="cifar10", network="resnet50", method="bmrs_n", pretrained=True,
                                              keep_imagenet_head=True, image_size=64),
                                    "ae5429eeb5d154a8", "e6ae4ee17881f4ec"),
    "ViT tiny 32 px": (RunConfig(dataset="cifar10", network="vit_tiny", method="bmrs_u8", image_size=32),
                       "5e4fa3c0c618c776", "2dbcb18299bd12d1"),
}


@pytest.mark.parametrize("cfg, before, now", CHANGED_INPUTS.values(), ids=CHANGED_INPUTS.keys())
def test_a_run_whose_inputs_changed_has_a_new_id(cfg, before, now):
    assert cfg.run_id == now != before
    fields = cfg.hashed_fields()
    if cfg.pretrained:
        assert fields["weights"] == "ResNet50_Weights.IMAGENET1K_V1"
    if cfg.network.startswith("vit"):
        assert fields["normalization"] == "imagenet"


def test_only_pretrained_and_vit_runs_record_their_inputs():
    assert RunConfig(dataset="cifar10", network="resnet18", method="snr").input_identity() == {}
    assert RunConfig(dataset="fashion_mnist", network="lenet5", method="none").input_identity() == {}
    vit = RunConfig(dataset="cifar10", network="vit_b16", method="base", pretrained=True).input_identity()
    assert vit == {"weights": "ViT_B_16_Weights.IMAGENET1K_V1", "normalization": "imagenet"}


def test_the_quick_profile_expands_to_the_pinned_runs():
    profile = load_profile("quick", CONFIGS_DIR)
    mlp, lenet5 = profile.parameters("03_continuous_pruning")["table1_settings"]
    ids = {grid.run_config(mlp, "bmrs_n_code", 1000, "quick").run_id,
           grid.run_config(lenet5, "bmrs_u4", 1000, "quick").run_id,
           grid.run_config(lenet5, "l2", 1000, "quick").run_id}
    assert ids == {"b3e1b012f81eb7e8", "89fd3e4ae589a92a", "b7c457af013c3a6d"}, (
        "configs/quick.yaml's Table 1 settings no longer give the run ids of results/reference/")


# --------------------------------------------------------------------------------------------------
# One canonical form per setting
# --------------------------------------------------------------------------------------------------

SAME = {
    "image_size 224 = unset": (dict(dataset="cifar10", network="resnet18", method="snr", image_size=224),
                               dict(dataset="cifar10", network="resnet18", method="snr")),
    "bmrs_u8.0 = bmrs_u8": (dict(dataset="mnist", network="mlp", method="bmrs_u8.0"),
                            dict(dataset="mnist", network="mlp", method="bmrs_u8")),
    "bmrs_u08 = bmrs_u8": (dict(dataset="mnist", network="mlp", method="bmrs_u08"),
                           dict(dataset="mnist", network="mlp", method="bmrs_u8")),
    "noise_lr_scale 10.0 (CLI) = 10 (YAML)": (dict(dataset="mnist", network="mlp", method="snr", noise_lr_scale=10.0),
                                               dict(dataset="mnist", network="mlp", method="snr", noise_lr_scale=10)),
    "BMRS_N = bmrs_n": (dict(dataset="mnist", network="mlp", method="BMRS_N"),
                        dict(dataset="mnist", network="mlp", method="bmrs_n")),
    "limit_train above the data = unset": (dict(dataset="digits", network="mlp", method="snr", limit_train=10**6),
                                           dict(dataset="digits", network="mlp", method="snr")),
    "limit_train = the data = unset": (dict(dataset="digits", network="mlp", method="snr", limit_train=1437),
                                       dict(dataset="digits", network="mlp", method="snr")),
    "limit_test above the data = unset": (dict(dataset="fashion_mnist", network="mlp", method="snr", limit_test=10**5),
                                          dict(dataset="fashion_mnist", network="mlp", method="snr")),
}


@pytest.mark.parametrize("a, b", SAME.values(), ids=SAME.keys())
def test_one_computation_has_one_run_id(a, b):
    assert RunConfig(**a).run_id == RunConfig(**b).run_id


def test_settings_that_change_the_computation_change_the_id():
    base = RunConfig(dataset="digits", network="mlp", method="snr")
    assert base.replace(limit_train=1436).run_id != base.run_id
    assert base.replace(limit_test=359).run_id != base.run_id
    assert RunConfig("mnist", "mlp", "bmrs_u8.25").method == "bmrs_u8.25"  # every digit of p1 is kept
    assert RunConfig("mnist", "mlp", "bmrs_u8.25").run_id != RunConfig("mnist", "mlp", "bmrs_u8").run_id


@pytest.mark.parametrize("name", ["digits", "mnist_5k", "fashion_mnist"])
def test_the_dataset_sizes_behind_the_limit_rule_are_the_loaded_ones(name):
    try:
        bundle = data.load(name, network="mlp")
    except data.DataUnavailableError as exc:
        pytest.skip(f"{name} not available: {exc}")
    except ImportError as exc:
        pytest.skip(f"{name} needs a package that is not installed: {exc}")
    s = bundle.sizes
    assert (s["train"] + s["val"], s["test"]) == data.SIZES[name]


# --------------------------------------------------------------------------------------------------
# The hint for an unfinished run is accepted by the CLI and reproduces the run
# --------------------------------------------------------------------------------------------------

HINTED = {
    "base": base_config(RunConfig(method="bmrs_n_code", seed=1000, profile="quick", **QUICK_MLP)),
    "post-hoc": RunConfig(method="l2", seed=1000, profile="quick", **QUICK_LENET5),
    "sweep's base (fmnist)": base_config(RunConfig(method="none", seed=100, profile="fmnist", **FMNIST_LENET5)),
    "selection, kl_weight, val_fraction": RunConfig(dataset="mnist", network="mlp", method="snr", seed=3,
                                                    kl_reduction="sum", kl_weight=0.5, val_fraction=0.1,
                                                    selection="last", lr=1e-3, batch_size=64, limit_test=500),
    "bmrs_u<p1>": RunConfig(dataset="digits", network="lenet5", method="bmrs_u6.5", prune_every=3),
    "pretrained ViT": RunConfig(dataset="cifar10", network="vit_b16", method="base", pretrained=True,
                                keep_imagenet_head=True, image_size=64, finetune_epochs=0, prune_every=0),
}


@pytest.mark.parametrize("cfg", HINTED.values(), ids=HINTED.keys())
def test_the_train_command_hint_is_accepted_and_reproduces_the_run(cfg, tmp_path):
    results = tmp_path / "my runs"  # a space: the hint quotes it
    argv = shlex.split(store.train_command(cfg, results))
    assert argv[:4] == ["python", "-m", "bmrs", "train"]
    args = cli._parser().parse_args(argv[3:])
    again = cli.config_from_args(args)
    assert again == cfg and again.run_id == cfg.run_id
    assert Path(args.results_dir) == results


def test_an_unfinished_run_names_the_command_that_finishes_it(tmp_path, capsys):
    cfg = RunConfig(network="mlp", method="bmrs_n", selection="last", kl_weight=0.5, val_fraction=0.25,
                    **{**SMOKE, "epochs": 2})
    with pytest.raises(TrainingInterrupted):
        run(cfg, results_dir=tmp_path, stop_after_epoch=1, log=lambda _: None)
    with pytest.raises(FileNotFoundError, match="finish it with: ") as exc:
        store.load_run(tmp_path / cfg.run_id)
    argv = shlex.split(str(exc.value).split("finish it with: ", 1)[1])
    assert cli.main(argv[3:]) == 0
    assert f"finished: {tmp_path / cfg.run_id}" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [cfg.run_id]
    store.load_run(tmp_path / cfg.run_id)  # now finished


# --------------------------------------------------------------------------------------------------
# The thread rule and the lock
# --------------------------------------------------------------------------------------------------


def _strip_times(metrics: dict) -> dict:
    out = json.loads(json.dumps({"history": metrics["history"], "final": metrics["final"]}))
    for rec in out["history"]:
        rec.pop("seconds", None)
        rec.pop("time_split", None)
    out["final"].pop("train_seconds", None)
    return out


def test_a_runs_result_does_not_depend_on_the_callers_thread_count(tmp_path):
    """Without the rule the stored weights differ between 1 and 2 threads (measured on this setting)."""
    cfg = RunConfig(network="mlp", method="bmrs_n_code", **SMOKE)
    before = torch.get_num_threads()
    results = {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            metrics = run(cfg, results_dir=tmp_path / str(threads), log=lambda _: None)
            assert torch.get_num_threads() == threads  # the caller's setting is restored
            assert metrics["environment"]["threads"] == RUN_THREADS and metrics["run_id"] == cfg.run_id
            results[threads] = (_strip_times(metrics), load_model(cfg, tmp_path / str(threads)).state_dict())
    finally:
        torch.set_num_threads(before)
    assert results[1][0] == results[2][0]
    assert results[1][1].keys() == results[2][1].keys()
    assert all(torch.equal(results[1][1][k], results[2][1][k]) for k in results[1][1])  # bitwise


DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from bmrs.run import cli
    from bmrs.run.train import Trainer

    marker, start, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    fit = Trainer.fit

    def wait_for(path):
        deadline = time.monotonic() + 120
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def counted_fit(self):  # records every training; holds the lock until the test says go
        with open(marker, "a") as fh:
            fh.write("fit\\n")
        wait_for(go)
        return fit(self)

    Trainer.fit = counted_fit
    wait_for(start)  # imports done: start when the test says so
    sys.exit(cli.main(sys.argv[4:]))
""")


@pytest.mark.slow  # two fresh interpreters importing torch: ~5 s on a quiet machine
def test_a_second_process_waits_for_the_lock_and_finds_the_run_done(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    marker, go = tmp_path / "fits.txt", tmp_path / "go"
    results = tmp_path / "runs"
    argv = ["train", "--dataset", "digits", "--network", "mlp", "--method", "snr", "--epochs", "1",
            "--finetune-epochs", "1", "--limit-train", "300", "--limit-test", "200", "--results-dir", str(results)]
    env = {**os.environ, "BMRS_QUIET": "1", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, str(driver), str(marker), str(tmp_path / f"start{i}"), str(go), *argv],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in (1, 2)]  # both import in parallel
    first, second = procs
    try:
        (tmp_path / "start1").touch()
        deadline = time.monotonic() + 120
        while not marker.exists():  # the first process holds the lock and is about to train
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()[0]
            time.sleep(0.05)
        (tmp_path / "start2").touch()
        seen = []
        for line in second.stdout:  # the second process reports that it waits for the first
            seen.append(line)
            if "waiting for it" in line:
                break
        assert seen and f"is being computed by pid {first.pid}" in seen[-1], seen
        go.touch()
        out_first = first.communicate(timeout=120)[0]
        out_second = "".join(seen) + second.communicate(timeout=120)[0]
    finally:
        for name in ("start1", "start2", "go"):
            (tmp_path / name).touch()
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    assert first.returncode == 0 and second.returncode == 0, (out_first, out_second)
    assert marker.read_text() == "fit\n"  # trained once
    accuracy = [line for line in out_first.splitlines() if line.startswith("test accuracy")]
    assert accuracy and accuracy[0] in out_second.splitlines()
    assert f"finished: {results}" in out_first and f"cached: {results}" in out_second


def test_the_released_codes_split_is_a_new_run_and_the_default_keeps_every_id():
    cfg = RunConfig(method="bmrs_n_code", seed=1000, profile="fmnist", dataset="fashion_mnist", network="mlp",
                    epochs=50, finetune_epochs=10)
    assert cfg.replace(val_split="default_rng").run_id == cfg.run_id
    other = cfg.replace(val_split="randomstate")
    assert other.run_id != cfg.run_id and other.hashed_fields()["val_split"] == "randomstate"
