"""Turn a validated config into the (labeled, unlabeled, val) datasets of a run, for either task.

One entry point for the trainer so it never opens files itself; change-detection datasets live in
`semicd.data` and are imported lazily, keeping `semiseg` free of the GIS stack until it is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from torch.utils.data import Dataset

from semiseg.config import Config
from semiseg.errors import SemisegError

DATASETS_DIR = Path(__file__).resolve().parents[2] / "datasets"
SEGMENTATION = ("pascal", "cityscapes", "ade20k", "coco", "folder")
CHANGE_DETECTION = ("levir_cd", "whu_cd", "change_tiles", "geotiff_pair")


@dataclass
class DataBundle:
    labeled: Dataset
    unlabeled: Dataset | None
    val: Dataset
    classes: list[str]


def build_datasets(cfg: Config, need_train: bool = True) -> DataBundle:
    d = cfg.data
    if cfg.task == "segmentation":
        if d.dataset not in SEGMENTATION:
            raise SemisegError(
                f"data.dataset {d.dataset!r} is not a segmentation dataset ({', '.join(SEGMENTATION)})"
            )
        return _segmentation(cfg)
    if d.dataset not in CHANGE_DETECTION:
        raise SemisegError(
            f"data.dataset {d.dataset!r} is not a change-detection dataset ({', '.join(CHANGE_DETECTION)})"
        )
    from semicd.data.build import build_change_datasets

    return build_change_datasets(cfg)


def _require_root(cfg: Config) -> Path:
    if not cfg.data.root:
        raise SemisegError("data.root is not set: pass --set data.root=/path/to/dataset")
    root = Path(cfg.data.root).expanduser()
    if not root.is_dir():
        raise SemisegError(f"data.root does not exist: {root}")
    return root


def _segmentation(cfg: Config) -> DataBundle:
    from semiseg.data.segmentation import build_segmentation_datasets, class_names
    from semiseg.data.splits import resolve_split

    d = cfg.data
    root = _require_root(cfg)
    if not d.split:
        raise SemisegError(
            "data.split is not set: a split name (e.g. 92) or a folder with labeled.txt / val.txt"
        )
    files = resolve_split(d.dataset, str(d.split), DATASETS_DIR)
    if d.unlabeled_list:
        files = replace(files, unlabeled=Path(d.unlabeled_list))
    if d.val_list:
        files = replace(files, val=Path(d.val_list))
    if cfg.method.name == "supervised":
        files = replace(files, unlabeled=None)
    labeled, unlabeled, val = build_segmentation_datasets(
        root,
        d.dataset,
        files,
        crop_size=d.crop_size,
        nclass=d.nclass,
        unlabeled_root=d.unlabeled_root,
        ratio_range=tuple(d.ratio_range),
        base_size=d.base_size,
        hflip=d.hflip,
        seed=cfg.train.seed,
        labeled_nsample=d.nsample if cfg.method.name == "supervised" else None,
    )
    if cfg.method.name != "supervised" and unlabeled is None:
        raise SemisegError(
            f"method {cfg.method.name} needs unlabeled images, but the split has no unlabeled.txt"
        )
    classes = d.classes or class_names(d.dataset, d.nclass)
    return DataBundle(labeled, unlabeled, val, list(classes))
