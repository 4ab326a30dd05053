"""Tiny fake datasets in each benchmark's real folder layout, made from synthetic shapes (see semiseg.segmentation.synthetic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.segmentation.synthetic import shapes_sample

# layout -> (image path, mask path) for split s ("train"/"val") and stem n
LAYOUTS = {
    "pascal": lambda s, n: (f"JPEGImages/{n}.jpg", f"SegmentationClass/{n}.png"),
    "cityscapes": lambda s, n: (
        f"leftImg8bit/{s}/aachen/{n}_leftImg8bit.png",
        f"gtFine/{s}/aachen/{n}_gtFine_labelTrainIds.png",
    ),
    "ade20k": lambda s, n: (
        f"images/{'training' if s == 'train' else 'validation'}/{n}.jpg",
        f"annotations/{'training' if s == 'train' else 'validation'}/{n}.png",
    ),
    "coco": lambda s, n: (f"{s}2017/{n}.jpg", f"masks/{s}2017/{n}.png"),
    "folder": lambda s, n: (f"images/{s}/{n}.png", f"masks/{s}/{n}.png"),
}


def make_segmentation_benchmark(
    root: Path, layout: str, nclass: int = 3, n_labeled: int = 4, n_unlabeled: int = 8, n_val: int = 3,
    size: tuple[int, int] = (36, 44), seed: int = 0,
) -> Path:  # fmt: skip
    """Write images/masks in `layout` under root/data and split lists under root/split; return the split folder."""
    rng = np.random.default_rng(seed)
    data, split = root / "data", root / "split"
    split.mkdir(parents=True, exist_ok=True)
    lines: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "val": []}
    counts = {"labeled": n_labeled, "unlabeled": n_unlabeled, "val": n_val}
    for part, n in counts.items():
        for i in range(n):
            s = "val" if part == "val" else "train"
            img_rel, mask_rel = LAYOUTS[layout](s, f"{part}_{i:03d}")
            image, mask = shapes_sample(size, nclass, rng)
            mask[0, :] = 255  # real masks carry ignore pixels (VOC borders, ADE20K "other")
            for rel, arr in ((img_rel, image), (mask_rel, mask)):
                (data / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr).save(data / rel, quality=95) if rel.endswith(
                    ".jpg"
                ) else Image.fromarray(arr).save(data / rel)
            lines[part].append(f"{img_rel} {mask_rel}")
    for part, rows in lines.items():
        (split / f"{part}.txt").write_text("\n".join(rows) + "\n")
    return split


def make_change_tiles(root: Path, n_labeled: int = 4, n_unlabeled: int = 8, n_test: int = 3, size: int = 48,
                      seed: int = 0) -> Path:  # fmt: skip
    """A LEVIR-style tree (A/, B/, label/ 0/255) with split lists; change = a bright block added in B."""
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {"labeled": [], "unlabeled": [], "test": []}
    for part, n in (("labeled", n_labeled), ("unlabeled", n_unlabeled), ("test", n_test)):
        for i in range(n):
            name = f"{part}_{i:03d}.png"
            a = rng.normal(100, 20, (size, size, 3)).clip(0, 255).astype(np.uint8)
            b = np.clip(a.astype(int) + rng.normal(0, 5, a.shape), 0, 255).astype(np.uint8)
            label = np.zeros((size, size), np.uint8)
            if i % 3:  # every third tile has no change at all
                y, x, h, w = (int(v) for v in rng.integers(0, size // 2, 4))
                b[y : y + h + 4, x : x + w + 4] = (220, 60, 60)
                label[y : y + h + 4, x : x + w + 4] = 255
            Image.fromarray(a).save(root / "A" / name)
            Image.fromarray(b).save(root / "B" / name)
            Image.fromarray(label).save(root / "label" / name)
            names[part].append(name)
    split = root / "splits" / "20%"
    split.mkdir(parents=True, exist_ok=True)
    (split / "labeled.txt").write_text("\n".join(names["labeled"]) + "\n")
    (split / "unlabeled.txt").write_text("\n".join(names["unlabeled"]) + "\n")
    (root / "test.txt").write_text("\n".join(names["test"]) + "\n")
    (root / "val.txt").write_text("\n".join(names["test"][:2]) + "\n")
    return split


def make_oscd(root: Path, train=("paris", "rennes", "pisa"), test=("milano",), size: int = 40) -> Path:
    """A tiny OSCD release: 13 uint16 band files per date at 10/20/60 m sizes (size, size/2, ~size/6), change
    masks 0/255, the release's comma-separated train.txt / test.txt. Returns `root`."""
    import rasterio
    from rasterio.transform import from_origin

    from semicd.data.oscd import BANDS, IMAGES, LABELS

    coarse = {"B01": 6, "B09": 6, "B10": 6, "B05": 2, "B06": 2, "B07": 2, "B8A": 2, "B11": 2, "B12": 2}
    images = root / IMAGES
    images.mkdir(parents=True, exist_ok=True)
    (images / "train.txt").write_text(",".join(train))
    (images / "test.txt").write_text(",".join(test))
    rng = np.random.default_rng(0)
    for split, cities in (("train", train), ("test", test)):
        for city in cities:
            mask = np.zeros((size, size), np.uint8)
            mask[size // 4 : size // 2, size // 3 : size // 2 + 5] = 255
            for date in (1, 2):
                folder = images / city / f"imgs_{date}_rect"
                folder.mkdir(parents=True, exist_ok=True)
                for band in BANDS:
                    side = -(-size // coarse.get(band, 1))
                    data = rng.integers(500, 1500, (side, side)).astype(np.uint16)
                    if date == 2:
                        grid = mask[:: coarse.get(band, 1), :: coarse.get(band, 1)]
                        data[grid[:side, :side] > 0] += 2000
                    with rasterio.open(folder / f"{band}.tif", "w", driver="GTiff", width=side, height=side,
                                       count=1, dtype="uint16", crs="EPSG:32631",
                                       transform=from_origin(4e5, 5e6, 10 * coarse.get(band, 1), 10 * coarse.get(band, 1))) as ds:  # fmt: skip
                        ds.write(data, 1)
            cm = root / LABELS[split] / city / "cm"
            cm.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(cm / "cm.png")
    return root


def load_shipped_config(path: Path):
    """A shipped config as the tests see it. A multispectral one (bands, no statistics) must first refuse to load,
    pointing to band-stats (its statistics are measured on the user's copy); it then loads with placeholders."""
    import pytest
    import yaml

    from semiseg.config import load_config
    from semiseg.errors import SemisegError

    raw = yaml.safe_load(Path(path).read_text())
    data = raw.get("data") or {}
    if not (data.get("bands") and "mean" not in data):
        return load_config(path)
    with pytest.raises(SemisegError, match="band-stats"):
        load_config(path)
    n = len(data["bands"])
    return load_config(path, [f"data.mean={[0.5] * n}", f"data.std={[0.25] * n}"])


def write_geotiff(
    path: Path, array: np.ndarray, x0: float = 500000, y0: float = 4000000, res: float = 0.5, **extra
) -> Path:
    """A uint8 GeoTIFF (bands x rows x cols) in UTM 18N with `res` m pixels, its top-left corner at (x0, y0);
    `extra` goes to the profile (e.g. photometric="MINISBLACK" for four plain bands, not RGBA)."""
    import rasterio
    from rasterio.transform import from_origin

    profile = dict(driver="GTiff", width=array.shape[2], height=array.shape[1], count=array.shape[0], dtype="uint8",
                   crs="EPSG:32618", transform=from_origin(x0, y0, res, res), **extra)  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array)
    return path


def tiny_checkpoint(path: Path, task: str = "change_detection", seed: int = 0) -> Path:
    """An exported `tiny` model (random weights, seeded) of the task: 2 classes for change detection, 3 else."""
    import torch

    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    torch.manual_seed(seed)
    cd = task == "change_detection"
    model = build_model("tiny", 2 if cd else 3, "absdiff" if cd else "identity")
    return export_model(
        model, path, {"task": task, "classes": ["unchanged", "changed"] if cd else ["a", "b", "c"]}
    )


def change_pair(rng: np.random.Generator, size: tuple[int, int] = (40, 52)) -> tuple[np.ndarray, np.ndarray]:
    """A random RGB before image and its after image with a bright block added (the change)."""
    before = rng.integers(0, 255, (3, *size), dtype=np.uint8)
    after = before.copy()
    after[:, 5:20, 10:30] = 250
    return before, after


def fill_hub_cache(cache: Path, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
    """Put `files` into a Hugging Face cache folder the way `hf_hub_download` leaves them (refs/<revision> ->
    snapshots/<commit>/<path>), so that the hub client finds them offline. Returns the fake commit hash."""
    import hashlib

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repr(sorted(files)).encode()).hexdigest()
    (repo / "refs" / revision).parent.mkdir(parents=True, exist_ok=True)  # refs/pr/N: folders below refs/
    (repo / "refs" / revision).write_text(commit)
    for name, data in files.items():
        path = repo / "snapshots" / commit / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return commit
