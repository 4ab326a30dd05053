"""Segmentation splits: the standard benchmark layouts on disk, and the split folders of a run.

A split is a folder with `labeled.txt`, `unlabeled.txt` (optional: absent means supervised only) and
`val.txt` (or `val.txt` one level up, as in the official UniMatch V2 layout `splits/pascal/92/` +
`splits/pascal/val.txt`); the line format is in `semiseg.data.lists`.

We also enumerate the train/val images of each standard layout and draw new splits from them. The labeled
subset is a prefix of one seeded shuffle, so for a fixed seed the 1/16 split is contained in the 1/8 split
and so on: results across label budgets then differ only by the extra labels, not by which images were picked.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from semiseg.data.lists import SplitItem, write_split_file
from semiseg.errors import SemisegError
from semiseg.io import IMAGE_EXTENSIONS

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class SplitFiles:
    """The three list files of one split; `labeled` / `unlabeled` are None when absent."""

    labeled: Path | None
    unlabeled: Path | None
    val: Path


# ------------------------------------------------------------------------------------------------------
# Enumerating the standard layouts


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SemisegError(f"expected {what} at {path}; see datasets/README.md for the layout")
    return path


def _find_mask(mask_dir: Path, stem: str) -> Path | None:
    for ext in MASK_EXTENSIONS:
        candidate = mask_dir / f"{stem}{ext}"
        if candidate.is_file():
            return candidate
    return None


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _pascal(root: Path, subset: str) -> list[SplitItem]:
    """Pascal VOC: the ids of `ImageSets/Segmentation/{train_aug,train}.txt` or `val.txt`.

    Without a train list, every `SegmentationClass/*.png` whose id is not in `val.txt` is a training image
    (the SBD-augmented masks of UniMatch's prepared download live in `SegmentationClass/` too).
    """
    sets = root / "ImageSets" / "Segmentation"
    if subset == "train":
        names = [sets / "train_aug.txt", sets / "train.txt"]
    else:
        names = [sets / "val.txt"]
    id_file = next((p for p in names if p.is_file()), None)
    if id_file is not None:
        ids = _read_ids(id_file)
    elif subset == "train":
        mask_dir = _require_dir(root / "SegmentationClass", "Pascal masks (SegmentationClass/)")
        val_ids = set(_read_ids(sets / "val.txt")) if (sets / "val.txt").is_file() else set()
        ids = sorted(p.stem for p in mask_dir.glob("*.png") if p.stem not in val_ids)
    else:
        raise SemisegError(f"Pascal val list {sets / 'val.txt'} is missing; add it (one image id per line)")
    return [SplitItem(f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png") for i in ids]


def _cityscapes(root: Path, subset: str) -> list[SplitItem]:
    image_dir = _require_dir(root / "leftImg8bit" / subset, f"Cityscapes images (leftImg8bit/{subset}/)")
    items = []
    for path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
        rel = path.relative_to(root).as_posix()
        mask = "gtFine" + rel[len("leftImg8bit") :].replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png")
        items.append(SplitItem(rel, mask))
    return items


def _paired(root: Path, image_sub: str, mask_sub: str, pattern: str, what: str) -> list[SplitItem]:
    """Images in `image_sub` with masks of the same stem and a .png extension in `mask_sub`."""
    image_dir = _require_dir(root / image_sub, what)
    return [
        SplitItem(p.relative_to(root).as_posix(), f"{mask_sub}/{p.stem}.png")
        for p in sorted(image_dir.glob(pattern))
    ]


def _folder(root: Path, subset: str) -> list[SplitItem]:
    """Generic layout: `images/<name>.<ext>` + `masks/<name>.png` (or .tif, .bmp); no mask = unlabeled.

    With `images/train/` + `images/val/` (and `masks/train/`, `masks/val/`) the subsets are those subfolders;
    with a flat `images/` everything is training data and the val set must come from a split file.
    """
    images = _require_dir(root / "images", "images (images/)")
    split_dirs = (images / "train").is_dir()
    if split_dirs:
        image_dir = _require_dir(images / subset, f"images/{subset}/")
        mask_dir = root / "masks" / subset
    elif subset == "train":
        image_dir, mask_dir = images, root / "masks"
    else:
        raise SemisegError(
            f"{root} has a flat images/ folder, so there is no val set to list; use images/train/ + "
            "images/val/ (and masks/train/, masks/val/), or write val.txt yourself"
        )
    items = []
    for path in sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS):
        mask = _find_mask(mask_dir, path.stem)
        items.append(
            SplitItem(path.relative_to(root).as_posix(), mask.relative_to(root).as_posix() if mask else None)
        )
    if subset == "val":
        unlabeled = [i.image for i in items if i.mask is None]
        if unlabeled:
            raise SemisegError(f"{len(unlabeled)} val images have no mask in {mask_dir}, e.g. {unlabeled[0]}")
    return items


def _ade20k(root: Path, subset: str) -> list[SplitItem]:
    sub = "training" if subset == "train" else "validation"
    return _paired(root, f"images/{sub}", f"annotations/{sub}", "*.jpg", f"ADE20K images (images/{sub}/)")


def _coco(root: Path, subset: str) -> list[SplitItem]:
    sub = f"{subset}2017"
    return _paired(root, sub, f"masks/{sub}", "*.jpg", f"COCO images ({sub}/)")


# layout name -> lister(root, "train" | "val")
LAYOUTS = {"pascal": _pascal, "cityscapes": _cityscapes, "ade20k": _ade20k, "coco": _coco, "folder": _folder}


def _list_images(dataset: str, root: str | Path, subset: str) -> list[SplitItem]:
    root = Path(root)
    if not root.is_dir():
        raise SemisegError(f"data root {root} does not exist; check --root / data.root")
    if dataset not in LAYOUTS:
        raise SemisegError(f"unknown dataset layout {dataset!r}; choose one of {', '.join(LAYOUTS)}")
    items = LAYOUTS[dataset](root, subset)
    if not items:
        raise SemisegError(
            f"found no {subset} images for layout {dataset!r} under {root}; see datasets/README.md"
        )
    return items


def list_training_images(dataset: str, root: str | Path) -> list[SplitItem]:
    """All training images (with masks where they exist) of a standard layout, in sorted, stable order."""
    return _list_images(dataset, root, "train")


def list_val_images(dataset: str, root: str | Path) -> list[SplitItem]:
    """All validation images with masks of a standard layout, in sorted, stable order."""
    return _list_images(dataset, root, "val")


# ------------------------------------------------------------------------------------------------------
# Drawing splits


def parse_labeled_amount(text: str) -> int | float:
    """Parse a label budget as users write it: `92` (images), `1/16`, `0.0625` or `6.25%` (fractions)."""
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        if "/" in text:
            return float(Fraction(text))
        if text.isdigit():
            return int(text)
        return float(text)
    except (ValueError, ZeroDivisionError):
        raise SemisegError(
            f"cannot read label budget {text!r}; write a count (92) or a fraction (1/16, 0.25, 5%)"
        ) from None


def labeled_count(labeled: int | float, total: int) -> int:
    """How many of `total` candidates a budget selects: an int is a count, a float in (0, 1] is ⌊p·N⌋."""
    if isinstance(labeled, bool) or not isinstance(labeled, int | float):
        raise SemisegError(f"label budget must be a count or a fraction, got {labeled!r}")
    if isinstance(labeled, float):
        if not 0.0 < labeled <= 1.0:
            raise SemisegError(f"labeled fraction must be in (0, 1], got {labeled}")
        n = math.floor(labeled * total + 1e-9)  # 1e-9: 0.1 * 7120 must give 712, not 711
    else:
        n = labeled
    if not 1 <= n <= total:
        raise SemisegError(f"label budget {labeled} selects {n} of {total} labeled images; pick 1..{total}")
    return n


def make_splits(
    items: Sequence[SplitItem],
    labeled: int | float,
    seed: int,
    out_dir: str | Path,
    val_items: Sequence[SplitItem],
) -> SplitFiles:
    """Write `labeled.txt`, `unlabeled.txt` and `val.txt` into `out_dir`.

    The candidates (items with a mask, in the given order) are shuffled with `random.Random(seed)`; the first
    n (an int budget) or ⌊p·N⌋ (a fraction) are labeled and every other item is unlabeled. The same seed and
    list therefore give nested labeled sets across budgets (the SemiCD rule uses seed 10).
    """
    candidates = [item for item in items if item.mask is not None]
    if not candidates:
        raise SemisegError("no training image has a mask, so none can be labeled; check the masks folder")
    if not val_items:
        raise SemisegError("the val list is empty; a split needs validation images with masks")
    missing_val_masks = [item.image for item in val_items if item.mask is None]
    if missing_val_masks:
        raise SemisegError(f"{len(missing_val_masks)} val images have no mask, e.g. {missing_val_masks[0]}")
    n = labeled_count(labeled, len(candidates))
    order = list(candidates)
    random.Random(seed).shuffle(order)
    labeled_items = order[:n]
    unlabeled_items = order[n:] + [item for item in items if item.mask is None]
    out_dir = Path(out_dir)
    files = SplitFiles(out_dir / "labeled.txt", out_dir / "unlabeled.txt", out_dir / "val.txt")
    write_split_file(files.labeled, labeled_items)
    write_split_file(files.unlabeled, unlabeled_items)
    write_split_file(files.val, val_items)
    return files
