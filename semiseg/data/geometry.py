"""Random geometry shared by every image of a sample and its label.

Geometry runs in DataLoader workers on numpy arrays (cheap, CPU-bound, parallel); photometric augmentation runs
later on the training device. Every image of a sample and the label get exactly the same rescale, pad, crop and
flip, which is what keeps a before/after pair and its change mask pixel-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from semiseg.config import Config

IGNORE_INDEX = 255


@dataclass(frozen=True)
class GeometryConfig:
    """How to draw the random geometry of a training crop.

    `base_size` set: the long side is rescaled to U(ratio_range) x base_size (UniMatch V2 segmentation).
    `base_size` None: both sides are scaled by a ratio drawn from U(ratio_range) (UniMatch V2 change detection).
    """

    crop_size: int
    ratio_range: tuple[float, float] = (0.5, 2.0)
    base_size: int | None = None
    hflip: float = 0.5
    vflip: float = 0.0
    rot90: bool = False


def geometry_from_config(cfg: Config) -> GeometryConfig:
    """The training geometry a config asks for (the same keys for every task and dataset)."""
    d = cfg.data
    return GeometryConfig(
        crop_size=d.crop_size, ratio_range=tuple(d.ratio_range), base_size=d.base_size, hflip=d.hflip,
        vflip=d.vflip, rot90=d.rot90,
    )  # fmt: skip


def _resize(array: np.ndarray, size_hw: tuple[int, int], nearest: bool) -> np.ndarray:
    h, w = size_hw
    if array.shape[:2] == (h, w):
        return array
    resample = Image.NEAREST if nearest else Image.BILINEAR
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        # PIL cannot hold arbitrary band counts: resize band by band.
        return np.stack([_resize(array[..., b], size_hw, nearest) for b in range(array.shape[2])], axis=2)
    out = np.asarray(Image.fromarray(array).resize((w, h), resample))
    return out.reshape((h, w) + array.shape[2:])


def _pad_to(array: np.ndarray, size: int, value: int) -> np.ndarray:
    h, w = array.shape[:2]
    ph, pw = max(size - h, 0), max(size - w, 0)
    if ph == 0 and pw == 0:
        return array
    pad = [(0, ph), (0, pw)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=value)


def random_geometry(
    images: list[np.ndarray],
    label: np.ndarray | None,
    cfg: GeometryConfig,
    rng: np.random.Generator,
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Rescale, pad, crop and flip all `images` (H x W x C uint8) and `label` (H x W) identically.

    Returns (images, label, ignore): crops of `cfg.crop_size`; label 255 where unknown (unlabeled samples get an
    all-255 label); ignore 255 where the crop fell into padding, else 0. Images are padded with 0.
    """
    h, w = images[0].shape[:2]
    for im in images[1:]:
        if im.shape[:2] != (h, w):
            raise ValueError(f"images of one sample differ in size: {im.shape[:2]} vs {(h, w)}")
    if label is None:
        label = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    ratio = rng.uniform(*cfg.ratio_range)
    if cfg.base_size is not None:
        long_side = int(cfg.base_size * ratio)
        scale = long_side / max(h, w)
    else:
        scale = ratio
    nh, nw = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    images = [_resize(im, (nh, nw), nearest=False) for im in images]
    label = _resize(label, (nh, nw), nearest=True)
    ignore = np.zeros((nh, nw), dtype=np.uint8)

    size = cfg.crop_size
    images = [_pad_to(im, size, 0) for im in images]
    label = _pad_to(label, size, IGNORE_INDEX)
    ignore = _pad_to(ignore, size, IGNORE_INDEX)

    ph, pw = label.shape
    y = int(rng.integers(0, ph - size + 1))
    x = int(rng.integers(0, pw - size + 1))
    images = [im[y : y + size, x : x + size] for im in images]
    label = label[y : y + size, x : x + size]
    ignore = ignore[y : y + size, x : x + size]

    if rng.random() < cfg.hflip:
        images, label, ignore = [im[:, ::-1] for im in images], label[:, ::-1], ignore[:, ::-1]
    if rng.random() < cfg.vflip:
        images, label, ignore = [im[::-1] for im in images], label[::-1], ignore[::-1]
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        if k:
            images = [np.rot90(im, k, axes=(0, 1)) for im in images]
            label, ignore = np.rot90(label, k), np.rot90(ignore, k)
    images = [np.ascontiguousarray(im) for im in images]
    return images, np.ascontiguousarray(label), np.ascontiguousarray(ignore)
