"""In-memory splits and the one batch iterator every loop uses (training, evaluation, the baselines' statistics)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset


@dataclass
class TensorSplit:
    """A preprocessed split held in memory: ``x`` float32 of shape (N, C, H, W), ``y`` int64 of shape (N,)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"TensorSplit: x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        if self.y.dtype != torch.int64:
            raise ValueError(f"TensorSplit: y must be int64, got {self.y.dtype}")

    def __len__(self) -> int:
        return int(self.y.shape[0])


Split = TensorSplit | Dataset


def iterate_batches(split: Split, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches covering the split once (one epoch).

    A :class:`TensorSplit` is sliced directly (the order is ``torch.randperm(n, generator=generator)``
    when ``shuffle``); a ``Dataset`` goes through a ``DataLoader`` with ``num_workers=0`` and the same
    generator. Either way the order is a function of the generator's state.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if isinstance(split, TensorSplit):
        yield from _tensor_batches(split, batch_size, shuffle, generator, drop_last)
        return
    loader = DataLoader(split, batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0,
                        drop_last=drop_last)
    for x, y in loader:
        yield x, y.to(torch.int64)


def _tensor_batches(split: TensorSplit, batch_size: int, shuffle: bool, generator: torch.Generator | None,
                    drop_last: bool) -> Iterator[tuple[Tensor, Tensor]]:
    n = len(split)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        end = min(start + batch_size, n)
        if order is None:
            yield split.x[start:end], split.y[start:end]
        else:
            idx = order[start:end]
            yield split.x[idx], split.y[idx]
