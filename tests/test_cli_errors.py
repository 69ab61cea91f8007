"""Every mistake a user can make, and every broken file the CLI can meet, ends in one line (issue 10).

Invalid settings: exit 2, one stderr line starting with "error:", nothing written under the results directory
(not even ``.locks``: validation comes before the run's lock). A failing environment (a results directory that
cannot be one, a corrupt or unreadable file, a full disk): exit 1, one line that names the file and the fix, and
no new file. Everything runs ``bmrs.run.cli.main`` in-process on the digits data set (a run takes about a second).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch

from bmrs.run import cli, store
from bmrs.run.config import RunConfig
from bmrs.run.experiments import run
from bmrs.util import atomic

SETTING = dict(dataset="digits", network="mlp", method="snr", epochs=1, finetune_epochs=1, limit_train=300,
               limit_test=200)
TRAIN = ["train", "--dataset", "digits", "--network", "mlp", "--method", "snr", "--epochs", "1",
         "--finetune-epochs", "1", "--limit-train", "300", "--limit-test", "200"]


def _cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """(exit code, stderr lines, stdout) of one in-process CLI call; argparse's usage errors exit through SystemExit."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


def _tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (hidden ones included) with the content of files."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _one_error_line(lines: list[str]) -> str:
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    return lines[0]


# --------------------------------------------------------------------------------------------------
# 1. Invalid settings: exit 2, one line, nothing written
# --------------------------------------------------------------------------------------------------

VIT = ["train", "--dataset", "digits", "--network", "vit_b16", "--method", "snr"]
INVALID = {
    "epochs -1": (TRAIN + ["--epochs", "-1"], "epochs"),
    "finetune-epochs -2": (TRAIN + ["--finetune-epochs", "-2"], "finetune_epochs"),
    "lr 0": (TRAIN + ["--lr", "0"], "lr"),
    "lr -0.001": (TRAIN + ["--lr", "-0.001"], "lr"),
    "lr nan": (TRAIN + ["--lr", "nan"], "lr"),
    "lr inf": (TRAIN + ["--lr", "inf"], "lr"),
    "batch-size 0": (TRAIN + ["--batch-size", "0"], "batch_size"),
    "batch-size -4": (TRAIN + ["--batch-size", "-4"], "batch_size"),
    "prune-every -1": (TRAIN + ["--prune-every", "-1"], "prune_every"),
    "noise-lr-scale 0": (TRAIN + ["--noise-lr-scale", "0"], "noise_lr_scale"),
    "kl-weight nan": (TRAIN + ["--kl-weight", "nan"], "kl_weight"),
    "val-fraction 1": (TRAIN + ["--val-fraction", "1"], "val_fraction"),
    "limit-train 0": (TRAIN + ["--limit-train", "0"], "limit_train"),
    "limit-train -5": (TRAIN + ["--limit-train", "-5"], "limit_train"),
    "limit-train 1": (TRAIN + ["--limit-train", "1"], "limit_train"),
    "limit-train 2 (empty validation split)": (TRAIN + ["--limit-train", "2"], "--limit-train 3 or more"),
    "limit-test 0": (TRAIN + ["--limit-test", "0"], "limit_test"),
    "seed -1": (TRAIN + ["--seed", "-1"], "seed"),
    "seed 2**70": (TRAIN + ["--seed", str(2**70)], "seed"),
    "bmrs_u-3": (TRAIN + ["--method", "bmrs_u-3"], "(0, p2 = 23)"),
    "bmrs_u30": (TRAIN + ["--method", "bmrs_u30"], "(0, p2 = 23)"),
    "bmrs_unan": (TRAIN + ["--method", "bmrs_unan"], "(0, p2 = 23)"),
    "bmrs_uinf": (TRAIN + ["--method", "bmrs_uinf"], "(0, p2 = 23)"),
    "bmrs_u8_0": (TRAIN + ["--method", "bmrs_u8_0"], "must be a number"),
    "unknown method": (TRAIN + ["--method", "nope"], "unknown method"),
    "unknown dataset": (["train", "--dataset", "nope", "--network", "mlp", "--method", "snr"], "digits"),
    "image-size -8": (VIT + ["--image-size", "-8"], "image_size"),
    "image-size 0": (VIT + ["--image-size", "0"], "image_size"),
    "vit patch does not divide": (VIT + ["--image-size", "40"], "divisible by its patch size 16"),
    "image-size for the mlp": (TRAIN + ["--image-size", "32"], "resnet and vit networks only"),
    "imagenet head for the mlp": (TRAIN + ["--keep-imagenet-head"], "resnet and vit networks only"),
    "pretrained mlp": (TRAIN + ["--pretrained"], "ImageNet weights exist for"),
    "pretrained vit_tiny": (["train", "--dataset", "digits", "--network", "vit_tiny", "--method", "snr",
                             "--pretrained"], "ImageNet weights exist for"),
    "compact --threads 0": (["compact", "somewhere", "--threads", "0"], "--threads"),
    "download an unknown data set": (["download", "mnist", "nope"], "invalid choice: 'nope'"),
    "unknown command": (["nope"], "(see python -m bmrs --help)"),
}


def test_download_fetches_each_data_set_it_is_given_once(monkeypatch, capsys, tmp_path):
    got = []
    monkeypatch.setattr(cli.data, "download", lambda name, root=None: got.append((name, root)) or tmp_path / name)
    code, err, out = _cli(["download", "mnist", "cifar10", "mnist", "--root", str(tmp_path)], capsys)
    assert code == 0 and err == [] and got == [("mnist", tmp_path), ("cifar10", tmp_path)]
    assert out.splitlines() == [f"downloaded mnist to {tmp_path / 'mnist'}", f"downloaded cifar10 to {tmp_path / 'cifar10'}"]


@pytest.mark.parametrize("argv, says", INVALID.values(), ids=INVALID.keys())
def test_invalid_settings_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, argv, says):
    results = tmp_path / "runs"
    results.mkdir()
    extra = ["--results-dir", str(results)] if argv[0] == "train" else []
    code, err, _ = _cli(argv + extra, capsys)
    assert code == 2
    assert says in _one_error_line(err)
    assert _tree(results) == {}  # no run directory, no .locks


# --------------------------------------------------------------------------------------------------
# 2. A failing environment: exit 1, one line naming the file and the fix, no new file
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """One finished run directory (copied by each test before it breaks something)."""
    results = tmp_path_factory.mktemp("finished")
    run(RunConfig(**SETTING), results_dir=results, log=lambda _: None)
    return results


def _copy(finished: Path, tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "runs"
    shutil.copytree(finished, results)
    return results, results / RunConfig(**SETTING).run_id


def _without_results(run_dir: Path) -> None:
    (run_dir / "metrics.json").unlink()
    (run_dir / "model.pt").unlink()


Break = Callable[[Path], None]
CASES: dict[str, tuple[Break, str, str, tuple[str, ...]]] = {
    # name: (break the run directory, command, the file the message names, words of the fix)
    "metrics.json a directory (train)": (
        lambda r: ((r / "metrics.json").unlink(), (r / "metrics.json").mkdir()), "train", "metrics.json", ("delete",)),
    "metrics.json a directory (show)": (
        lambda r: ((r / "metrics.json").unlink(), (r / "metrics.json").mkdir()), "show", "metrics.json", ("delete",)),
    "metrics.json without final (show)": (
        lambda r: (r / "metrics.json").write_text(json.dumps({"history": []})), "show", "metrics.json",
        ("delete", "--force")),
    "metrics.json without final (train)": (
        lambda r: (r / "metrics.json").write_text(json.dumps({"history": []})), "train", "metrics.json",
        ("delete", "--force")),
    "metrics.json not JSON (show)": (
        lambda r: (r / "metrics.json").write_text('{"final": '), "show", "metrics.json", ("delete", "--force")),
    "metrics.json not JSON (train)": (
        lambda r: (r / "metrics.json").write_text('{"final": '), "train", "metrics.json", ("delete", "--force")),
    "metrics.json binary (show)": (
        lambda r: (r / "metrics.json").write_bytes(b"\xff\xfe\x00garbage"), "show", "metrics.json", ("delete",)),
    "config.json without run (compact)": (
        lambda r: (r / "config.json").write_text("{}"), "compact", "config.json", ("delete", "--force")),
    "config.json run without network (compact)": (
        lambda r: (r / "config.json").write_text('{"run": {"dataset": "digits"}}'), "compact", "config.json",
        ("delete",)),
    "config.json not JSON (train)": (
        lambda r: (_without_results(r), (r / "config.json").write_text("{bad"))[-1], "train", "config.json",
        ("delete", "--force")),
    "config.json of another run (train)": (
        lambda r: (_without_results(r), (r / "config.json").write_text('{"run": {"dataset": "mnist"}}'))[-1],
        "train", "config.json", ("delete", "--force")),
    "model.pt garbage (compact)": (
        lambda r: (r / "model.pt").write_bytes(b"garbage, not a torch file"), "compact", "model.pt", ("delete",)),
    "model.pt empty (compact)": (lambda r: (r / "model.pt").write_bytes(b""), "compact", "model.pt", ("delete",)),
    "model.pt garbage (train: no cached success)": (
        lambda r: (r / "model.pt").write_bytes(os.urandom(2048)), "train", "model.pt", ("delete", "--force")),
    "model.pt empty (train: no cached success)": (
        lambda r: (r / "model.pt").write_bytes(b""), "train", "model.pt", ("delete", "--force")),
    "model.pt missing (train: no cached success)": (
        lambda r: (r / "model.pt").unlink(), "train", "model.pt", ("delete", "--force")),
    "checkpoint.pt random bytes (train)": (
        lambda r: (_without_results(r), (r / "checkpoint.pt").write_bytes(os.urandom(4096)))[-1], "train",
        "checkpoint.pt", ("delete", "--force")),
    "checkpoint.pt empty (train)": (
        lambda r: (_without_results(r), (r / "checkpoint.pt").write_bytes(b""))[-1], "train", "checkpoint.pt",
        ("delete", "--force")),
}


def _command(kind: str, results: Path, run_dir: Path) -> list[str]:
    if kind == "train":
        return TRAIN + ["--results-dir", str(results)]
    if kind == "compact":
        return ["compact", str(run_dir), "--repeats", "1"]
    return [kind, str(run_dir)]


@pytest.mark.parametrize("damage, kind, names, fix", CASES.values(), ids=CASES.keys())
def test_a_broken_run_directory_exits_1_naming_the_file_and_the_fix(finished, tmp_path, capsys, damage, kind, names,
                                                                    fix):
    results, run_dir = _copy(finished, tmp_path)
    damage(run_dir)
    before = _tree(results)
    code, err, out = _cli(_command(kind, results, run_dir), capsys)
    line = _one_error_line(err)
    assert code == 1
    assert str(run_dir / names) in line
    assert all(word in line for word in fix), line
    assert "cached" not in out and "finished" not in out
    assert _tree(results) == before  # nothing new, nothing overwritten


@pytest.mark.parametrize("below", [False, True], ids=["is a file", "lies below a file"])
def test_a_results_dir_that_cannot_be_a_directory(tmp_path, capsys, below):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    target = blocker / "runs" if below else blocker
    code, err, _ = _cli(TRAIN + ["--results-dir", str(target)], capsys)
    line = _one_error_line(err)
    assert code == 1 and f"{blocker} is a file where a directory is needed" in line and "--results-dir" in line
    assert _tree(tmp_path) == {"file": b"not a directory"}


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: permission bits do not stop root from writing "
                                               "(the read-only case is covered by the message test below)")
def test_a_results_dir_without_write_permission(tmp_path, capsys):
    results = tmp_path / "runs"
    results.mkdir()
    results.chmod(0o555)
    try:
        code, err, _ = _cli(TRAIN + ["--results-dir", str(results)], capsys)
    finally:
        results.chmod(0o755)
    line = _one_error_line(err)
    assert code == 1 and "no permission" in line and str(results) in line and "--results-dir" in line
    assert _tree(results) == {}


@pytest.mark.parametrize("exc, says", [
    (PermissionError(errno.EACCES, "Permission denied", "/r/.locks"), "no permission to access /r/.locks"),
    (OSError(errno.EROFS, "Read-only file system", "/r/.locks"), "/r/.locks is on a read-only file system"),
    (OSError(errno.ENOSPC, "No space left on device", "/r/x/model.pt"), "the disk is full writing /r/x/model.pt"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/r/x/model.pt"), "the disk quota is exceeded writing /r/x/model.pt"),
], ids=["permission", "read-only", "full", "quota"])
def test_file_system_failures_are_said_in_our_words(exc, says):
    assert cli._describe_os_error(exc).startswith(says)


def test_a_full_disk_is_said_with_the_file_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos ..."; the
    CLI says which file and what to do. Simulated: torch.save writes a little, then fails as on a full disk
    (checked by hand on a 64 KiB tmpfs: the same message)."""
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):  # the disk fills up at the first checkpoint
        if ".checkpoint.pt." not in str(f):
            return real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(b"PK\x03\x04 partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 17664 vs 17558")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(torch, "save", full_disk_save)
    monkeypatch.setattr(atomic.os, "statvfs", lambda path: Full())
    results = tmp_path / "runs"
    code, err, _ = _cli(TRAIN + ["--results-dir", str(results)], capsys)
    line = _one_error_line(err)
    run_dir = results / RunConfig(**SETTING).run_id
    assert code == 1
    assert f"the disk is full writing {run_dir / 'checkpoint.pt'}" in line and "free some space" in line
    assert "inline_container" not in line
    left = {p.name for p in run_dir.iterdir()}
    assert left == {"config.json"}  # written before training; no checkpoint, no temporary file


def test_force_recomputes_a_run_whose_config_json_is_corrupt(finished, tmp_path, capsys):
    """The fix the message names works: --force replaces an unreadable config.json and an unusable checkpoint."""
    results, run_dir = _copy(finished, tmp_path)
    expected = json.loads((run_dir / "metrics.json").read_text())["final"]["test_acc"]
    _without_results(run_dir)
    (run_dir / "config.json").write_text("{bad")
    (run_dir / "checkpoint.pt").write_bytes(os.urandom(512))
    code, err, out = _cli(TRAIN + ["--results-dir", str(results)], capsys)
    assert code == 1 and "--force" in _one_error_line(err)
    code, err, out = _cli(TRAIN + ["--results-dir", str(results), "--force"], capsys)
    assert code == 0 and not err and "finished" in out
    assert json.loads((run_dir / "config.json").read_text())["run_id"] == run_dir.name
    assert json.loads((run_dir / "metrics.json").read_text())["final"]["test_acc"] == expected
    assert not (run_dir / "checkpoint.pt").exists()
    store.check_model_file(run_dir / "model.pt")


# --------------------------------------------------------------------------------------------------
# Profiles: random bytes and duplicate keys are refused (exit 2, as every malformed profile)
# --------------------------------------------------------------------------------------------------

PROFILES = {
    "random bytes": (bytes(range(128, 256)) * 8, "not a UTF-8 text file"),
    "duplicate key": (b"profile: p\ncommon:\n  seed: 0\n  seed: 1\nnotebooks: {}\n", "found the key 'seed' twice"),
    "duplicate notebook": (b"profile: p\nnotebooks:\n  02_figure1_units: {}\n  02_figure1_units: {method: snr}\n",
                           "found the key '02_figure1_units' twice"),
}


@pytest.mark.parametrize("content, says", PROFILES.values(), ids=PROFILES.keys())
def test_a_broken_profile_is_refused_in_one_line(tmp_path, capsys, content, says):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "p.yaml").write_bytes(content)
    results = tmp_path / "runs"
    code, err, _ = _cli(["grid", "--profile", "p", "--configs-dir", str(configs), "--results-dir", str(results),
                         "--dry-run"], capsys)
    line = _one_error_line(err)
    assert code == 2 and str(configs / "p.yaml") in line and says in line
    assert not results.exists()


def test_merge_keys_may_still_override_what_they_merge():
    from bmrs.run.profile import load_yaml

    assert load_yaml("a: &x {c: 1, d: 2}\nb:\n  <<: *x\n  c: 3\n") == {"a": {"c": 1, "d": 2}, "b": {"c": 3, "d": 2}}


# --------------------------------------------------------------------------------------------------
# The API refuses what it cannot mean (issue 10, item 6)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("units, error", [(2.5, TypeError), ("4", TypeError), (True, TypeError), (0, ValueError),
                                          (-3, ValueError)])
def test_a_noise_layer_needs_a_positive_integer_unit_count(units, error):
    from bmrs.nn.noise import MultiplicativeNoise

    with pytest.raises(error, match="num_units"):
        MultiplicativeNoise(units)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_a_noise_layer_refuses_integer_input_instead_of_returning_zeros(training):
    from bmrs.nn.noise import MultiplicativeNoise

    layer = MultiplicativeNoise(3).train(training)
    with pytest.raises(TypeError, match=r"floating-point input.*torch.int64.*x.float\(\)"):
        layer(torch.ones(2, 3, dtype=torch.long))
    assert layer(torch.ones(2, 3)).dtype == torch.float32


@pytest.mark.parametrize("args, kwargs, error, says", [
    ((None,), {}, TypeError, "named by a string"),
    (("l2",), {"bogus": 1}, TypeError, "'l2' does not take 'bogus'"),
    (("snr",), {"bogus": 1}, TypeError, "'snr' does not take 'bogus'"),
    (("bmrs_u-3",), {}, ValueError, "reduced support"),  # once read as p1 = 3 (the sign was stripped)
    (("bmrs_unan",), {}, ValueError, "unknown criterion"),
    (("nope",), {}, ValueError, "unknown criterion"),
])
def test_make_criterion_refuses_what_it_cannot_mean(args, kwargs, error, says):
    from bmrs.prune.registry import make_criterion

    with pytest.raises(error, match=says):
        make_criterion(*args, **kwargs)


def test_make_criterion_passes_its_keywords_on():
    from bmrs.prune.registry import make_criterion

    assert make_criterion("snr", threshold=0.5).threshold == 0.5
    assert make_criterion("BMRS_U6.5").p1 == 6.5


@pytest.mark.parametrize("mu, sigma, says", [
    (0.0, 1e20, "sigma must be at most"),
    (-5.0, 1e11, "sigma must be at most"),
    (1e300, 1e-20, "cannot be evaluated in float64"),
    (0.0, float("inf"), "sigma must be positive and finite"),
    (float("nan"), 1.0, "mu must be finite"),
])
@pytest.mark.parametrize("which", ["n", "u"])
def test_delta_f_raises_instead_of_returning_inf_or_nan(which, mu, sigma, says):
    from bmrs.core import reduction

    f = reduction.delta_f_bmrs_n if which == "n" else reduction.delta_f_bmrs_u
    with pytest.raises(ValueError, match=says):
        f(torch.tensor([mu], dtype=torch.float64), torch.tensor([sigma], dtype=torch.float64))


def test_delta_f_u_is_minus_inf_where_no_posterior_mass_reaches_the_reduced_support():
    """−inf is ΔF_U's exact value there (log of a zero mass): kept, not an error."""
    from bmrs.core import reduction

    value = reduction.delta_f_bmrs_u(torch.tensor([0.0], dtype=torch.float64), torch.tensor([1e-300], dtype=torch.float64))
    assert value.item() == float("-inf")
