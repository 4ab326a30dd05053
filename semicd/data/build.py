"""Config -> the change-detection datasets of one stage: LEVIR-CD / WHU-CD tiles, or windows of a GeoTIFF pair.

The task (`semicd.task`) points the engine's `semiseg.data.build.build` here; the stage decides what is read.
"""

from __future__ import annotations

from pathlib import Path

from semicd import recipe
from semicd.data.geotiff_pair import build_geotiff_pair_datasets
from semicd.data.tiles import build_change_tile_datasets
from semiseg.config import Config
from semiseg.data.build import DataBundle, DataRequest, require_root
from semiseg.data.geometry import geometry_from_config
from semiseg.data.lists import find_split_folder, resolve_list
from semiseg.errors import SemisegError
from semiseg.geo.vectors import VECTOR_SUFFIXES
from semiseg.models.specs import encoder_spec


def _classes(cfg: Config) -> list[str]:
    return list(cfg.data.classes or recipe.CHANGE_CLASSES)


def build_change_tiles(cfg: Config, request: DataRequest) -> DataBundle:
    """A/B/label tiles and their name lists (`levir_cd`, `whu_cd`, `change_tiles`)."""
    d = cfg.data
    root = require_root(cfg)
    split = (
        find_split_folder(str(d.split), d.dataset, root, missing_ok=not request.training) if d.split else None
    )
    if request.training and split is None:
        raise SemisegError(
            f"data.split is not set: make SemiCD splits with `semicd splits --root {root} --out {root / 'splits'}` "
            f"and pass --set data.split={root / 'splits' / '5%'}, or a folder holding labeled.txt/unlabeled.txt"
        )
    near = (split, split.parent if split else None, root)  # where list names are looked up, in this order
    unlabeled = resolve_list(d.unlabeled_list, *near) if d.unlabeled_list else None
    labeled, unlabeled, val = build_change_tile_datasets(
        root, split, unlabeled=unlabeled, eval_names=resolve_list(d.val_list or recipe.EVAL_LIST, *near),
        unlabeled_root=d.unlabeled_root, geometry=geometry_from_config(cfg), seed=cfg.train.seed,
        training=request.training, with_unlabeled=request.unlabeled, nsample=d.nsample,
    )  # fmt: skip
    return DataBundle(labeled, unlabeled, val, _classes(cfg))


def build_scene_pair(cfg: Config, request: DataRequest) -> DataBundle:
    """Windows of a before/after GeoTIFF pair with a label raster or change polygons (`geotiff_pair`)."""
    d = cfg.data
    if not (d.before and d.after and d.label):
        raise SemisegError("data.dataset=geotiff_pair needs data.before, data.after and data.label")
    is_vector = not isinstance(d.label, str) or Path(d.label).suffix.lower() in VECTOR_SUFFIXES
    labeled, unlabeled, val = build_geotiff_pair_datasets(
        d.before, d.after, label=None if is_vector else d.label, change_polygons=d.label if is_vector else None,
        window=d.window, areas=d.areas,
        fractions=None if d.areas else {"labeled": d.fractions[0], "val": d.fractions[1]},
        min_valid=d.min_valid, stretch=d.stretch, bands=tuple(d.bands or range(1, encoder_spec(cfg.model.encoder).bands + 1)), geometry=geometry_from_config(cfg),
        seed=cfg.train.seed, training=request.training, with_unlabeled=request.unlabeled, nsample=d.nsample,
    )  # fmt: skip
    if val is None:
        raise SemisegError(
            "the GeoTIFF pair gave no validation windows: give a val area or a larger val fraction"
        )
    return DataBundle(labeled, unlabeled, val, _classes(cfg))
