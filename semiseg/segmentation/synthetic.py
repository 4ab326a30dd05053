"""Synthetic data with real structure, for tests, the toy benchmark and demos (no download needed).

Images are noisy backgrounds with striped shapes; a shape's class is defined by its outline and texture, never by
its colour, so a model must learn appearance (not position or colour) and more data genuinely helps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def shapes_sample(
    size: tuple[int, int], nclass: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One H x W x 3 uint8 image and its H x W uint8 mask: 1-4 shapes of classes 1..nclass-1 on background 0.

    A class is its shape (disc or box) and its stripe texture (period and orientation); colours are drawn at
    random per object, as in real scenes where a class does not have one colour. So colour jitter, the core of
    the strong views, is a nuisance the model should ignore, not a cue it loses.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    image = rng.uniform(60, 190, 3) + rng.normal(0, 14, (h, w, 3))
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, nclass))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.14, 0.3) * min(h, w)
        if cls % 2:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            region = (np.abs(yy - cy) <= r * 0.8) & (np.abs(xx - cx) <= r)
        period = 3 + 2 * ((cls - 1) // 2)
        direction = (xx, yy, xx + yy)[cls % 3]
        stripes = (direction // period) % 2
        colour = rng.uniform(30, 225, 3)
        contrast = rng.uniform(35, 70) * rng.choice([-1.0, 1.0])
        image[region] = colour + stripes[region, None] * contrast
        mask[region] = cls
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return image, mask


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
