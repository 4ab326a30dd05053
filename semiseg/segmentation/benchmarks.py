"""The segmentation benchmarks: class counts and names, and their layout in a line (plain data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

from semiseg.errors import SemisegError


@dataclass(frozen=True)
class SegmentationDatasetInfo:
    """What a benchmark fixes: its class count (None = the user must say), class names, where it lives, and the
    labeled crops per epoch the official supervised baseline draws (`data.nsample`)."""

    nclass: int | None
    class_names: tuple[str, ...] | None
    layout: str
    supervised_nsample: int | None = None


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
    "pascal": SegmentationDatasetInfo(
        21, VOC_CLASSES, "Pascal VOC 2012 (+SBD): JPEGImages/, SegmentationClass/", 3000
    ),
    "cityscapes": SegmentationDatasetInfo(
        19, CITYSCAPES_CLASSES, "Cityscapes: leftImg8bit/, gtFine/ (labelTrainIds)", 3000
    ),
    "ade20k": SegmentationDatasetInfo(150, None, "ADE20K: images/, annotations/ (0..149, 255 ignore)", 6000),
    "coco": SegmentationDatasetInfo(
        81, None, "COCO: train2017/, val2017/, masks/ (0 = background, counted)", 30000
    ),
    "folder": SegmentationDatasetInfo(None, None, "your own images/ + masks/ (set data.nclass)"),
}


def dataset_info(dataset: str) -> SegmentationDatasetInfo:
    """The registry entry of `dataset`, with an error that lists the known names."""
    try:
        return SEGMENTATION_DATASETS[dataset]
    except KeyError:
        raise SemisegError(
            f"unknown segmentation dataset {dataset!r}; choose one of {', '.join(SEGMENTATION_DATASETS)}"
        ) from None


# PrevMatch's settings per benchmark in its official configs (the rest are the schema's defaults): a smaller store
# and five base-only epochs on the large datasets, and the averaged-confidence weighting on Cityscapes.
PREVMATCH_DEFAULTS: dict[str, dict[str, object]] = {
    "cityscapes": {"conf_mode": "pixelavg", "conf_thresh": 0.0},
    "ade20k": {"max_snapshots": 5, "warmup_epochs": 5},
    "coco": {"max_snapshots": 5, "warmup_epochs": 5},
}


def class_names(dataset: str, nclass: int) -> list[str]:
    """Names for per-class tables: the benchmark's own when the count matches, else `class_0..class_{n-1}`."""
    names = SEGMENTATION_DATASETS.get(dataset, SEGMENTATION_DATASETS["folder"]).class_names
    if names is not None and len(names) == nclass:
        return list(names)
    return [f"class_{i}" for i in range(nclass)]
