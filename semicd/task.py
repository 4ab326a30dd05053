"""The change-detection task as the engine sees it (no torch here: configs and `--help` read it for free).

Its defaults are the official UniMatch V2 remote-sensing recipe (`semicd.recipe`), so a change-detection config
only says what differs from it.
"""

from __future__ import annotations

from typing import Any

from semicd import recipe
from semiseg.task import DatasetSpec, Task

# `data.*` keys each kind of change-detection data reads beyond the common ones.
TILE_KEYS = frozenset({"root", "split", "unlabeled_root", "unlabeled_list", "val_list", "bands", "stretch"})
OSCD_KEYS = frozenset({"root", "split", "unlabeled_list", "val_list", "bands", "stretch"})
SCENE_KEYS = frozenset(
    {"before", "after", "label", "window", "bands", "min_valid", "areas", "fractions", "stretch"}
)


def _tiles(cfg: Any, request: Any) -> Any:
    from semicd.data.build import build_change_tiles

    return build_change_tiles(cfg, request)


def _scene(cfg: Any, request: Any) -> Any:
    from semicd.data.build import build_scene_pair

    return build_scene_pair(cfg, request)


def _oscd(cfg: Any, request: Any) -> Any:
    from semicd.data.build import build_oscd

    return build_oscd(cfg, request)


def _scores(cm: Any) -> dict:
    from semiseg.metrics import change_scores

    return change_scores(cm)


def _tile_dataset(summary: str, nsample: int | None = recipe.SUPERVISED_NSAMPLE) -> DatasetSpec:
    data: dict[str, Any] = {"val_list": recipe.EVAL_LIST}
    if nsample:
        data["nsample"] = nsample
    return DatasetSpec(_tiles, TILE_KEYS, {"data": data}, summary)


TASK = Task(
    name="change_detection",
    title="change detection",
    command="semicd",
    fusion="absdiff",
    primary_metric="iou",
    scores=_scores,
    nclass=len(recipe.CHANGE_CLASSES),
    classes=recipe.CHANGE_CLASSES,
    datasets={
        "levir_cd": _tile_dataset("LEVIR-CD cut into 256 px tiles (`semicd prepare levir`): A/, B/, label/"),
        "whu_cd": _tile_dataset("WHU-CD cut into 256 px tiles (`semicd prepare whu`): A/, B/, label/"),
        "change_tiles": _tile_dataset(
            "any A/, B/, label/ tile folder with name lists (PNG, or GeoTIFF tiles of any band count with "
            "`data.bands`)",
            nsample=None,
        ),
        "oscd": DatasetSpec(
            _oscd,
            OSCD_KEYS,
            {"data": {"val_list": "test", "nsample": recipe.SUPERVISED_NSAMPLE}},
            "OSCD Sentinel-2 cities, 13 bands resampled to 10 m (the release's folders; `datasets/README.md`)",
        ),
        "geotiff_pair": DatasetSpec(
            _scene,
            SCENE_KEYS,
            {},
            "windows of your own before/after GeoTIFF pair with a label raster or polygons",
        ),
    },
    defaults={
        "data": {
            "dataset": "levir_cd",
            "nclass": len(recipe.CHANGE_CLASSES),
            "crop_size": recipe.CROP_SIZE,
            "batch_size": recipe.BATCH_SIZE,
            "ratio_range": list(recipe.RATIO_RANGE),
        },
        "method": {"teacher": recipe.TEACHER, "grayscale_p": recipe.GRAYSCALE_P},
    },
)
