"""The segmentation task as the engine sees it (no torch here: configs and `--help` read it for free)."""

from __future__ import annotations

from typing import Any

from semiseg.segmentation.benchmarks import PREVMATCH_DEFAULTS, SEGMENTATION_DATASETS, SegmentationDatasetInfo
from semiseg.task import DatasetSpec, Task

# `data.*` keys the segmentation datasets read beyond the common ones.
KEYS = frozenset({"root", "split", "unlabeled_root", "unlabeled_list", "val_list", "ignore_mask_values"})


def _build(cfg: Any, request: Any) -> Any:
    from semiseg.segmentation.datasets import build_segmentation

    return build_segmentation(cfg, request)


def _scores(cm: Any) -> dict:
    from semiseg.metrics import segmentation_scores

    return segmentation_scores(cm)


def _dataset(name: str, info: SegmentationDatasetInfo) -> DatasetSpec:
    facts = {"nclass": info.nclass, "nsample": info.supervised_nsample}
    defaults: dict[str, Any] = {"data": {k: v for k, v in facts.items() if v}}
    if name in PREVMATCH_DEFAULTS:
        defaults["method"] = {"prevmatch": dict(PREVMATCH_DEFAULTS[name])}
    return DatasetSpec(_build, KEYS, defaults, info.layout)


TASK = Task(
    name="segmentation",
    title="segmentation",
    command="semiseg",
    fusion="identity",
    primary_metric="miou",
    scores=_scores,
    datasets={name: _dataset(name, info) for name, info in SEGMENTATION_DATASETS.items()},
    defaults={"data": {"dataset": "pascal"}, "method": {"grayscale_p": 0.2}},
)
