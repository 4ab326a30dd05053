"""A deterministic, resumable, distributed sampler.

The order of epoch e depends only on (seed, e); each rank takes every world_size-th index; `start` skips batches
already done, so a run resumed mid-epoch sees exactly the samples the uninterrupted run would have — without
loading the skipped ones.

`EpochSampler` yields `(epoch, index)` keys, not bare indices: the epoch travels with every index to the
dataset (`semiseg.data.sample.CropDataset.__getitem__`), so DataLoader workers that live across epochs
(`persistent_workers`) draw each epoch's crops without anyone reaching into their copy of the dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """The shuffled, rank-sharded order of one epoch at a time, as `(epoch, index)` keys (see the module doc)."""

    def __init__(
        self,
        length: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ) -> None:
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.epoch = 0
        self.start = 0
        per_rank = length // world_size if drop_last else -(-length // world_size)
        self.per_rank = per_rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select epoch `epoch`'s order and skip its first `start` samples of this rank."""
        self.epoch = epoch
        self.start = start

    def indices(self) -> list[int]:
        """This rank's indices of the current epoch, in order, the first `start` (skipped by `__iter__`) included."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=g).tolist()
        else:
            order = list(range(self.length))
        total = self.per_rank * self.world_size
        if len(order) < total:  # pad by wrapping so every rank gets the same count
            order += order[: total - len(order)]
        return order[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self.indices()[self.start :]])

    def __len__(self) -> int:
        return self.per_rank - self.start


class ShardSampler(Sampler[int]):
    """Evaluation sharding: rank r takes indices r, r + world, ...; no padding, so no sample is counted twice."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
