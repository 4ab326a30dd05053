"""Synthetic data with real structure, for tests, the toy benchmark and demos (no download needed).

Images are textured backgrounds with textured shapes; the class of a shape is defined by its texture and colour
statistics, so a model must look at appearance (not just position) and more data genuinely helps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def shapes_sample(
    size: tuple[int, int], nclass: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One H x W x 3 uint8 image and its H x W uint8 mask: 1-4 shapes of classes 1..nclass-1 on background 0."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = rng.normal(110, 18, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    palette = _class_palette(nclass)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, nclass))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.12, 0.3) * min(h, w)
        if cls % 2:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            region = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r)
        period = 3 + 2 * cls
        stripes = ((xx + yy * (cls % 3)) // period) % 2
        colour = palette[cls] + rng.normal(0, 12, 3)
        image[region] = colour + stripes[region, None] * 30
        mask[region] = cls
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, mask


def _class_palette(nclass: int) -> np.ndarray:
    rng = np.random.default_rng(1234)
    return rng.uniform(40, 220, (max(nclass, 2), 3))


def write_folder_dataset(
    root: Path, n_train: int, n_val: int, nclass: int, size: tuple[int, int], seed: int = 0
) -> Path:
    """A dataset in the `folder` layout: images/{train,val}/*.png, masks/{train,val}/*.png."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = shapes_sample(size, nclass, rng)
            Image.fromarray(image).save(root / "images" / split / f"{split}_{i:05d}.png")
            Image.fromarray(mask).save(root / "masks" / split / f"{split}_{i:05d}.png")
    return root
