"""Single-image segmentation datasets (Pascal VOC, Cityscapes, ADE20K, COCO, any image/mask folder).

One dataset class serves the three streams of semi-supervised training: `train_l` (labeled crops), `train_u`
(unlabeled crops, label all 255) and `val` (whole images). Files are checked before training starts, because a
wrong path or a mask in the wrong encoding otherwise shows up hours later as a crash or, worse, as a silently
bad model (raw ADE20K masks shift every class by one).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.config import Config
from semiseg.data.build import DataBundle, DataRequest, require_root
from semiseg.data.geometry import IGNORE_INDEX, GeometryConfig, geometry_from_config
from semiseg.data.lists import SplitItem, find_list, find_split_folder, read_split_file, resolve_list
from semiseg.data.sample import CropDataset, Raw
from semiseg.errors import SemisegError
from semiseg.io import atomic_path, read_rgb
from semiseg.segmentation.benchmarks import class_names, dataset_info
from semiseg.segmentation.layouts import SplitFiles

# ------------------------------------------------------------------------------------------------------
# Reading files


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


class SegmentationDataset(CropDataset):
    """Samples (images=(3xHxW uint8,), label, ignore, name) from a list of split items (`semiseg.data.sample`).

    `train_l`: a labeled crop, the list repeated up to `nsample`; `train_u`: an unlabeled crop, label all 255;
    `val`: the whole image and mask. `ignore_mask_values`: raw mask values read as 255.
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
        super().__init__(items, mode, geometry, nsample, seed)
        self.root = Path(root)
        self.ignore_mask_values = tuple(int(v) for v in ignore_mask_values)

    def name(self, index: int) -> str:
        return self.items[index].image

    def read(self, index: int) -> Raw:
        item = self.items[index]
        image = read_rgb(self.root / item.image)
        if self.mode == "train_u":
            return [image], None, None
        if item.mask is None:
            raise SemisegError(f"{item.image} has no mask but is in a labeled/val list; add '<image> <mask>'")
        label = _map_ignored(load_mask(self.root / item.mask), self.ignore_mask_values)
        if label.shape != image.shape[:2]:
            raise SemisegError(
                f"mask {item.mask} is {label.shape[1]}x{label.shape[0]} but image {item.image} is "
                f"{image.shape[1]}x{image.shape[0]}; image and mask must have the same size"
            )
        return [image], label, None


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
            "semiseg.segmentation.datasets.convert_ade20k_masks(src, dst) (subtracts 1, 0 -> 255)"
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
        with atomic_path(dst / path.name) as tmp:
            Image.fromarray(converted, mode="L").save(tmp)
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
    geometry: GeometryConfig | None = None,
    seed: int = 0,
    ignore_mask_values: Sequence[int] = (),
    check: bool = True,
    max_masks_checked: int = 20,
    nsample: int | None = None,
) -> tuple[SegmentationDataset | None, SegmentationDataset | None, SegmentationDataset]:
    """(labeled, unlabeled, val) datasets of the lists `split_files` names (a list that is None gives None),
    checked on disk before any training starts.

    `geometry` defaults to the official one at `crop_size` (rescale by U(0.5, 2.0) of the image's own size, pad,
    crop, hflip 0.5). The labeled list is repeated to the unlabeled length, or to `nsample` without unlabeled
    images. Unlabeled images may live under another root (`unlabeled_root`), e.g. COCO images as extra data for
    ADE20K.
    """
    dataset_info(dataset)
    geometry = geometry or GeometryConfig(crop_size=crop_size)
    u_root = Path(unlabeled_root) if unlabeled_root is not None else Path(root)
    lists = {
        "train_l": (root, split_files.labeled),
        "val": (root, split_files.val),
        "train_u": (u_root, split_files.unlabeled),
    }
    items = {mode: read_split_file(path) if path is not None else None for mode, (_, path) in lists.items()}
    if check:
        for mode, (folder, path) in lists.items():
            if items[mode] is not None:
                check_dataset(
                    folder,
                    items[mode],
                    nclass,
                    mode,
                    max_masks_checked,
                    dataset,
                    ignore_mask_values,
                    str(path),
                )
    common = dict(seed=seed, ignore_mask_values=ignore_mask_values)
    unlabeled = labeled = None
    if items["train_u"]:
        unlabeled = SegmentationDataset(u_root, items["train_u"], "train_u", geometry, **common)
    if items["train_l"] is not None:
        count = len(unlabeled) if unlabeled is not None else None
        labeled = SegmentationDataset(
            root, items["train_l"], "train_l", geometry, nsample=nsample or count, **common
        )
    val = SegmentationDataset(root, items["val"], "val", **common)
    return labeled, unlabeled, val


def split_lists(cfg: Config, root: Path, request: DataRequest) -> SplitFiles:
    """The list files a stage needs. Training needs `labeled.txt` (and `unlabeled.txt` when the method uses
    unlabeled images) from the split folder; evaluation needs only the evaluation list: `data.val_list` (a path
    or a list name) or the split's `val.txt`, here or one folder up (the official layout)."""
    d = cfg.data
    folder = (
        find_split_folder(str(d.split), d.dataset, root, missing_ok=not request.training) if d.split else None
    )
    near = (folder, folder.parent if folder else None, root)
    if request.training and folder is None:
        raise SemisegError(
            "data.split is not set: a split name (e.g. 92) or a folder with labeled.txt / val.txt"
        )
    if d.val_list:
        val = resolve_list(d.val_list, *near)
    elif folder is not None and (found := find_list("val.txt", folder, folder.parent)):
        val = found
    else:
        where = (
            f"in split folder {folder} nor in its parent"
            if folder
            else "(data.split and data.val_list are unset)"
        )
        raise SemisegError(f"no evaluation list: no val.txt {where}; set data.val_list or add val.txt")
    if not request.training:
        return SplitFiles(None, None, val)
    labeled = folder / "labeled.txt"
    if not labeled.is_file():
        raise SemisegError(
            f"split folder {folder} has no labeled.txt; a split folder holds labeled.txt, unlabeled.txt "
            "(optional) and val.txt (here or in the parent folder)"
        )
    unlabeled = None
    if request.unlabeled:
        unlabeled = (
            resolve_list(d.unlabeled_list, *near) if d.unlabeled_list else find_list("unlabeled.txt", folder)
        )
    return SplitFiles(labeled, unlabeled, val)


def build_segmentation(cfg: Config, request: DataRequest) -> DataBundle:
    """The segmentation datasets a stage needs (`semiseg.data.build.build` calls this through the task)."""
    d = cfg.data
    root = require_root(cfg)
    labeled, unlabeled, val = build_segmentation_datasets(
        root, d.dataset, split_lists(cfg, root, request), crop_size=d.crop_size, nclass=d.nclass,
        unlabeled_root=d.unlabeled_root, geometry=geometry_from_config(cfg), seed=cfg.train.seed,
        ignore_mask_values=d.ignore_mask_values, nsample=None if request.unlabeled else d.nsample,
    )  # fmt: skip
    return DataBundle(labeled, unlabeled, val, list(d.classes or class_names(d.dataset, d.nclass)))
