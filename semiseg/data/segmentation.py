"""Single-image segmentation datasets (Pascal VOC, Cityscapes, ADE20K, COCO, any image/mask folder).

One dataset class serves the three streams of semi-supervised training: `train_l` (labeled crops), `train_u`
(unlabeled crops, label all 255) and `val` (whole images). Files are checked before training starts, because a
wrong path or a mask in the wrong encoding otherwise shows up hours later as a crash or, worse, as a silently
bad model (raw ADE20K masks shift every class by one).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from semiseg.data.geometry import IGNORE_INDEX, GeometryConfig, random_geometry
from semiseg.data.splits import SplitFiles, SplitItem, read_split_file
from semiseg.errors import SemisegError

MODES = ("train_l", "train_u", "val")


@dataclass(frozen=True)
class SegmentationDatasetInfo:
    """Defaults of a benchmark: class count (None = the user must say), class names, official crop size."""

    nclass: int | None
    class_names: tuple[str, ...] | None
    crop_size: int


VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip

# ADE20K and COCO use generic names ("class_7"): their long name lists depend on the preprocessing that made
# the masks, and a wrong name in a per-class table is worse than a number.
SEGMENTATION_DATASETS: dict[str, SegmentationDatasetInfo] = {
    "pascal": SegmentationDatasetInfo(21, VOC_CLASSES, 518),
    "cityscapes": SegmentationDatasetInfo(19, CITYSCAPES_CLASSES, 798),
    "ade20k": SegmentationDatasetInfo(150, None, 518),
    "coco": SegmentationDatasetInfo(81, None, 518),
    "folder": SegmentationDatasetInfo(None, None, 518),
}


def dataset_info(dataset: str) -> SegmentationDatasetInfo:
    """The registry entry of `dataset`, with an error that lists the known names."""
    try:
        return SEGMENTATION_DATASETS[dataset]
    except KeyError:
        raise SemisegError(
            f"unknown segmentation dataset {dataset!r}; choose one of {', '.join(SEGMENTATION_DATASETS)}"
        ) from None


def class_names(dataset: str, nclass: int) -> list[str]:
    """Names for per-class tables: the benchmark's own when the count matches, else `class_0..class_{n-1}`."""
    names = SEGMENTATION_DATASETS.get(dataset, SEGMENTATION_DATASETS["folder"]).class_names
    if names is not None and len(names) == nclass:
        return list(names)
    return [f"class_{i}" for i in range(nclass)]


# ------------------------------------------------------------------------------------------------------
# Reading files


def load_rgb(path: Path) -> np.ndarray:
    """H x W x 3 uint8: grey, palette and RGBA images are converted so every sample has three channels."""
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def load_mask(path: Path) -> np.ndarray:
    """H x W uint8 class ids as stored: a palette PNG gives its indices (as VOC needs), not its colours."""
    with Image.open(path) as img:
        mask = np.asarray(img)
    if mask.ndim == 3:
        raise SemisegError(
            f"mask {path} has {mask.shape[2]} channels; masks must be single-channel class ids "
            "(greyscale or palette PNG), not colour images"
        )
    if mask.dtype != np.uint8:
        if mask.size and (mask.min() < 0 or mask.max() > 255):
            raise SemisegError(
                f"mask {path} has values outside 0..255; class ids must fit in uint8 (255 = ignore)"
            )
        mask = mask.astype(np.uint8)
    return mask


def _map_ignored(mask: np.ndarray, ignore_mask_values: Sequence[int]) -> np.ndarray:
    if not ignore_mask_values:
        return mask
    mask = mask.copy()
    mask[np.isin(mask, np.asarray(ignore_mask_values))] = IGNORE_INDEX
    return mask


# ------------------------------------------------------------------------------------------------------
# The dataset


class SegmentationDataset(Dataset):
    """Samples of `semiseg.data` (images=(3xHxW uint8,), label, ignore, name) from a list of split items.

    `train_l`: a labeled crop; the list is repeated up to `nsample` when that is longer (the official rule
    that makes one epoch one pass over the unlabeled set). `train_u`: an unlabeled crop, label all 255,
    `ignore` marks padding. `val`: the whole image and mask, no geometry. `ignore_mask_values`: raw mask
    values read as 255.

    Randomness: each sample draws its own numpy Generator from (seed, a draw from torch's RNG, index).
    DataLoader seeds torch's RNG in every worker, so a run is reproducible under `torch.manual_seed`, and
    crops still differ between epochs (also with num_workers=0, where `torch.initial_seed()` alone would
    repeat them).
    """

    def __init__(
        self,
        root: str | Path,
        items: Sequence[SplitItem],
        mode: str,
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
        ignore_mask_values: Sequence[int] = (),
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode != "val" and geometry is None:
            raise ValueError(f"mode {mode!r} needs a GeometryConfig (training samples are fixed-size crops)")
        self.root = Path(root)
        self.mode = mode
        self.geometry = geometry
        self.seed = seed
        self.ignore_mask_values = tuple(int(v) for v in ignore_mask_values)
        items = list(items)
        if mode == "train_l" and nsample is not None and items and nsample > len(items):
            items = (items * math.ceil(nsample / len(items)))[:nsample]
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int | None) -> None:
        """Key this epoch's random geometry on (seed, epoch, index) alone.

        The trainer calls this so that a run resumed mid-epoch draws exactly the crops the uninterrupted run
        would have, whichever worker loads a sample; without it a draw from torch's RNG is used instead.
        """
        self.epoch = epoch

    def _rng(self, index: int) -> np.random.Generator:
        if getattr(self, "epoch", None) is not None:
            return np.random.default_rng((self.seed, self.epoch, index))
        draw = int(torch.randint(0, 2**62, (1,)).item())
        return np.random.default_rng((self.seed, draw, index))

    def __getitem__(self, index: int) -> dict:
        item = self.items[index]
        image = load_rgb(self.root / item.image)
        label = None
        if self.mode != "train_u":
            if item.mask is None:
                raise SemisegError(
                    f"{item.image} has no mask but is in a labeled/val list; add '<image> <mask>'"
                )
            label = _map_ignored(load_mask(self.root / item.mask), self.ignore_mask_values)
            if label.shape != image.shape[:2]:
                raise SemisegError(
                    f"mask {item.mask} is {label.shape[1]}x{label.shape[0]} but image {item.image} is "
                    f"{image.shape[1]}x{image.shape[0]}; image and mask must have the same size"
                )
        if self.mode == "val":
            ignore = np.zeros(label.shape, dtype=np.uint8)
        else:
            images, label, ignore = random_geometry([image], label, self.geometry, self._rng(index))
            image = images[0]
        return {
            "images": (torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),),
            "label": torch.from_numpy(label.astype(np.int64)),
            "ignore": torch.from_numpy(np.ascontiguousarray(ignore)),
            "name": item.image,
        }


# ------------------------------------------------------------------------------------------------------
# Checks before training


def _looks_like_raw_ade20k(masks_values: list[np.ndarray]) -> bool:
    """Raw ADE20K: 0 = "other" in nearly every image, 1..150 classes, never 255 (converted: 0..149 + 255).

    150 present is conclusive; otherwise we require 0 in every checked mask and 255 in none, which converted
    masks practically never show (almost every ADE20K image has unlabeled pixels, which become 255).
    """
    if not masks_values:
        return False
    if any(150 in v for v in masks_values):
        return True
    return all(0 in v for v in masks_values) and not any(IGNORE_INDEX in v for v in masks_values)


def check_dataset(
    root: str | Path,
    items: Sequence[SplitItem],
    nclass: int,
    mode: str,
    max_masks_checked: int = 20,
    dataset: str | None = None,
    ignore_mask_values: Sequence[int] = (),
    list_name: str = "split list",
) -> None:
    """Fail fast on the data problems users hit most: wrong root, missing files, wrong mask encoding.

    Every listed file is checked for existence; mask values only on the first `max_masks_checked` masks so
    start-up stays fast on 100k-image lists.
    """
    root = Path(root)
    if not root.is_dir():
        raise SemisegError(f"data root {root} does not exist; check data.root (or data.unlabeled_root)")
    if not items:
        raise SemisegError(f"the {list_name} is empty; it needs at least one '<image> <mask>' line")
    labeled = mode != "train_u"
    if labeled:
        no_mask = [item.image for item in items if item.mask is None]
        if no_mask:
            raise SemisegError(
                f"{len(no_mask)} lines of the {list_name} have no mask (e.g. {no_mask[0]}); labeled and val "
                "lines need '<image> <mask>'"
            )
    missing = [
        rel
        for item in items
        for rel in ((item.image, item.mask) if labeled else (item.image,))
        if not os.path.isfile(root / rel)
    ]
    if missing:
        shown = ", ".join(missing[:3])
        raise SemisegError(
            f"{len(missing)} files of the {list_name} are missing under {root}, e.g. {shown}; "
            "check data.root or the split file"
        )
    if not labeled:
        return
    checked = [item for item in items if item.mask is not None][:max_masks_checked]
    values = [np.unique(_map_ignored(load_mask(root / item.mask), ignore_mask_values)) for item in checked]
    if (nclass == 150 or dataset == "ade20k") and _looks_like_raw_ade20k(values):
        raise SemisegError(
            f"masks under {root} look like raw ADE20K annotations (0 = other, 1..150); convert them with "
            "semiseg.data.segmentation.convert_ade20k_masks(src, dst) (subtracts 1, 0 -> 255)"
        )
    for item, vals in zip(checked, values):
        bad = vals[(vals >= nclass) & (vals != IGNORE_INDEX)]
        if bad.size:
            raise SemisegError(
                f"mask {root / item.mask} has values {bad.tolist()[:10]} outside 0..{nclass - 1} "
                "(255 = ignore); check data.nclass or convert the masks to class ids"
            )


def convert_ade20k_masks(src_dir: str | Path, dst_dir: str | Path) -> int:
    """Convert raw ADE20K masks (0 = other, 1..150) to training ids (0..149, 255 = ignore); returns the count.

    Refuses masks that already contain 255 (already converted: a second pass would shift classes again) and an
    in-place conversion for the same reason.
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise SemisegError(f"ADE20K mask folder {src} does not exist")
    if dst.resolve() == src.resolve():
        raise SemisegError(
            "convert_ade20k_masks writes to a new folder; give a dst_dir different from src_dir"
        )
    paths = sorted(src.glob("*.png"))
    if not paths:
        raise SemisegError(f"no .png masks in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    for path in paths:
        raw = load_mask(path)
        if raw.max() > 150:
            raise SemisegError(f"{path} has values above 150: not a raw ADE20K mask (already converted?)")
        converted = (raw.astype(np.int16) - 1).astype(np.uint8)  # 0 - 1 wraps to 255 = ignore
        tmp = dst / f".{path.name}.tmp-{os.getpid()}.png"
        Image.fromarray(converted, mode="L").save(tmp)
        os.replace(tmp, dst / path.name)
    return len(paths)


# ------------------------------------------------------------------------------------------------------
# Building the three datasets of a run


def build_segmentation_datasets(
    root: str | Path,
    dataset: str,
    split_files: SplitFiles,
    crop_size: int,
    nclass: int,
    unlabeled_root: str | Path | None = None,
    ratio_range: tuple[float, float] = (0.5, 2.0),
    base_size: int | None = None,
    hflip: float = 0.5,
    seed: int = 0,
    ignore_mask_values: Sequence[int] = (),
    check: bool = True,
    max_masks_checked: int = 20,
    labeled_nsample: int | None = None,
) -> tuple[SegmentationDataset, SegmentationDataset | None, SegmentationDataset]:
    """(labeled, unlabeled or None, val) datasets of one split, checked before any training starts.

    Geometry defaults are the official ones: rescale by U(0.5, 2.0) of the image's own size (`base_size`
    None), pad, crop `crop_size`, hflip 0.5. The labeled list is repeated to the unlabeled length. Unlabeled
    images may live under another root (`unlabeled_root`), e.g. COCO images as extra data for ADE20K.
    """
    dataset_info(dataset)
    geometry = GeometryConfig(
        crop_size=crop_size, ratio_range=tuple(ratio_range), base_size=base_size, hflip=hflip
    )
    labeled_items = read_split_file(split_files.labeled)
    val_items = read_split_file(split_files.val)
    unlabeled_items = read_split_file(split_files.unlabeled) if split_files.unlabeled is not None else []
    u_root = Path(unlabeled_root) if unlabeled_root is not None else Path(root)
    if check:
        common = dict(nclass=nclass, max_masks_checked=max_masks_checked, dataset=dataset,
                      ignore_mask_values=ignore_mask_values)  # fmt: skip
        check_dataset(root, labeled_items, mode="train_l", list_name=str(split_files.labeled), **common)
        check_dataset(root, val_items, mode="val", list_name=str(split_files.val), **common)
        if unlabeled_items:
            check_dataset(
                u_root, unlabeled_items, mode="train_u", list_name=str(split_files.unlabeled), **common
            )
    unlabeled = None
    if unlabeled_items:
        unlabeled = SegmentationDataset(u_root, unlabeled_items, "train_u", geometry, seed=seed)
    labeled = SegmentationDataset(
        root,
        labeled_items,
        "train_l",
        geometry,
        nsample=labeled_nsample or (len(unlabeled_items) if unlabeled_items else None),
        seed=seed,
        ignore_mask_values=ignore_mask_values,
    )
    val = SegmentationDataset(root, val_items, "val", seed=seed, ignore_mask_values=ignore_mask_values)
    return labeled, unlabeled, val
