"""Display names: the one table of labels for methods, networks and datasets.

Records and summaries store keys (``bmrs_n_code``, ``lenet5``, ``fashion_mnist``); tables, figures and
notebooks turn them into labels here, at display time. The method labels are the paper's names: its
"BMRS_N" is the released code's ΔF_N without 2π (our ``bmrs_n_code``); ΔF_N of the paper's Eq. 8 is
"BMRS_N (Eq. 8)".
"""

from __future__ import annotations

import re

METHOD_LABELS: dict[str, str] = {
    "none": "None", "l2": "L2", "etheta": "E[θ]", "snr": "SNR", "bmrs_n": "BMRS_N (Eq. 8)", "bmrs_n_code": "BMRS_N",
    "bmrs_u8": "BMRS_U-8", "bmrs_u4": "BMRS_U-4", "base": "noise, unpruned", "c_obd": "C-OBD",
    "dirichlet": "Dirichlet", "eigendamage": "EigenDamage",
}
NETWORK_LABELS: dict[str, str] = {"mlp": "MLP", "lenet5": "LeNet5", "resnet18": "ResNet-18", "resnet50": "ResNet-50",
                                  "vit_b16": "ViT-B/16", "vit_tiny": "tiny ViT"}
DATASET_LABELS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "F-MNIST", "cifar10": "CIFAR10",
                                  "tiny_imagenet": "TinyImagenet", "mnist_5k": "MNIST-5k", "digits": "digits"}


def method_label(method: str) -> str:
    """The paper's name of a method key; ``bmrs_u<p1>`` reads BMRS_U-<p1>; unknown keys are returned as given."""
    if method in METHOD_LABELS:
        return METHOD_LABELS[method]
    m = re.fullmatch(r"bmrs_u(\d+(?:\.\d+)?)", str(method))
    return f"BMRS_U-{float(m.group(1)):g}" if m else str(method)


def network_label(network: str) -> str:
    return NETWORK_LABELS.get(network, network)


def dataset_label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def setting_label(dataset: str, network: str) -> str:
    """'F-MNIST LeNet5'."""
    return f"{dataset_label(dataset)} {network_label(network)}"
