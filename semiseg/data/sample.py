"""The sample every dataset returns, and `CropDataset`, the base that produces it.

    sample = {
        "images": tuple of uint8 tensors, each C x H x W (one image, or (before, after)),
        "label":  int64 tensor H x W, class ids, 255 = ignore (all 255 for unlabeled samples),
        "ignore": uint8 tensor H x W, 255 where the crop was padded or the input is nodata, else 0,
        "name":   str, an identifier for logs and predictions,
    }

Training samples are fixed-size crops; evaluation samples are whole images (batch size 1 for mixed sizes).

A dataset implements only `read(index)` (the raw images, the label, and where the input is valid) and
`name(index)`. Modes, repeating the labeled list, random geometry shared by every image and the label, and the
randomness are handled here once. Randomness: sample `i` of epoch `e` draws from a numpy Generator keyed on
(seed, mode, i, e): the same whichever DataLoader worker loads it (so a resumed run draws exactly the crops of
an uninterrupted one), different every epoch, and different between the labeled and the unlabeled stream (sample
i of each must not share its crop). The trainer asks for `dataset[(e, i)]` (its sampler yields such keys), so
the epoch reaches DataLoader workers that persist across epochs; `dataset[i]` uses the epoch of `set_epoch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from semiseg.data.geometry import IGNORE_INDEX, GeometryConfig, random_geometry
from semiseg.errors import SemisegError

MODES = ("train_l", "train_u", "val")

# What `read` returns: images (H x W x C uint8, one per date), the label (H x W uint8 or None) and where every
# date is valid (H x W bool, or None when all of it is).
Raw = tuple[list[np.ndarray], "np.ndarray | None", "np.ndarray | None"]


def repeat_to_length(items: list[Any], nsample: int | None) -> list[Any]:
    """The official rule for the labeled list: repeat it whole until it reaches `nsample`, then cut.

    Lists already at least `nsample` long are left as they are.
    """
    if nsample is None or nsample <= len(items) or not items:
        return list(items)
    return (items * math.ceil(nsample / len(items)))[:nsample]


class CropDataset(Dataset):
    """Base of every dataset: `train_l` (labeled crops), `train_u` (unlabeled crops, label all 255) and `val`
    (whole images). Subclasses implement `read(index) -> (images, label, valid)` and `name(index)`."""

    def __init__(
        self,
        items: Sequence[Any],
        mode: str,
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise SemisegError(f"unknown dataset mode {mode!r}: use one of {', '.join(MODES)}")
        if mode != "val" and geometry is None:
            raise ValueError(f"mode {mode!r} needs a GeometryConfig (training samples are fixed-size crops)")
        self.mode = mode
        self.geometry = geometry
        self.seed = seed
        self.epoch = 0
        self.items = repeat_to_length(list(items), nsample if mode == "train_l" else None)

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of plain `dataset[i]` (keys `(epoch, i)` carry their own; see the module docstring)."""
        self.epoch = epoch

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """Sample `index`'s random geometry in `epoch` (default: the one of `set_epoch`)."""
        epoch = self.epoch if epoch is None else epoch
        return np.random.default_rng([self.seed, MODES.index(self.mode), index, epoch])

    def read(self, index: int) -> Raw:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        """Sample `key`: an index (in the epoch of `set_epoch`) or an `(epoch, index)` key, as the trainer asks."""
        epoch, index = key if isinstance(key, tuple) else (self.epoch, key)
        images, label, valid = self.read(index)
        if self.mode == "val":
            if label is None:
                raise SemisegError(f"{self.name(index)} has no label but is in the evaluation list")
            ignore = np.zeros(label.shape, dtype=np.uint8)
        else:
            # The validity mask rides along as one more "image", so it gets exactly the images' geometry.
            extra = [] if valid is None else [valid.astype(np.uint8) * 255]
            crops, label, ignore = random_geometry(
                images + extra, label, self.geometry, self.rng(index, epoch)
            )
            images = crops[: len(images)]
            valid = None if valid is None else crops[-1] >= 128
        if valid is not None:
            label = np.where(valid, label, IGNORE_INDEX)
            ignore = np.where(valid, ignore, IGNORE_INDEX).astype(np.uint8)
        return {
            "images": tuple(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in images),
            "label": torch.from_numpy(label.astype(np.int64)),
            "ignore": torch.from_numpy(np.ascontiguousarray(ignore)),
            "name": self.name(index),
        }
