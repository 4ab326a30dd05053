"""Config -> the change-detection datasets of one stage: LEVIR-CD / WHU-CD tiles, or windows of a GeoTIFF pair.

The task (`semicd.task`) points the engine's `semiseg.data.build.build` here; the stage decides what is read.
"""

from __future__ import annotations

from pathlib import Path

from semicd import recipe
from semicd.data.geotiff_pair import build_geotiff_pair_datasets
from semicd.data.tiles import build_change_tile_datasets
from semiseg.config import Config, model_spec
from semiseg.data.build import DataBundle, DataRequest, require_root
from semiseg.data.geometry import geometry_from_config
from semiseg.data.lists import find_split_folder, read_name_list, resolve_list
from semiseg.data.sample import repeat_to_length
from semiseg.errors import SemisegError
from semiseg.geo.vectors import VECTOR_SUFFIXES


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
        **tile_reading(cfg),
    )  # fmt: skip
    return DataBundle(labeled, unlabeled, val, _classes(cfg))


def tile_reading(cfg: Config) -> dict:
    """How tiles are read: as RGB images, unless the model takes other bands or a band selection or stretch is
    configured (then as GeoTIFFs of any band count and dtype)."""
    d = cfg.data
    if d.bands is None and d.stretch == "auto" and model_spec(cfg).bands == 3:
        return {}
    return {"bands": d.bands, "stretch": d.stretch}


def build_oscd(cfg: Config, request: DataRequest) -> DataBundle:
    """OSCD's Sentinel-2 cities (`oscd`): labeled/unlabeled city lists from the split, else every train city."""
    from semicd.data.oscd import OSCDDataset, read_cities

    d = cfg.data
    root = require_root(cfg)
    split = (
        find_split_folder(str(d.split), d.dataset, root, missing_ok=not request.training) if d.split else None
    )
    near = (split, split.parent if split else None, root)

    def cities(name: str) -> list[str]:
        """A list option as city names: a file, or `<name>.txt` in the split folder, its parent or the root."""
        return read_name_list(resolve_list(name, *near))

    reading = {"seed": cfg.train.seed, "stretch": d.stretch, "bands": d.bands}
    geometry = geometry_from_config(cfg)
    labeled = unlabeled = None
    if request.training:
        names = cities("labeled") if split else read_cities(root, "train")
        unlabeled_names = None
        if d.unlabeled_list:
            unlabeled_names = cities(d.unlabeled_list)
        elif split and (split / "unlabeled.txt").is_file():
            unlabeled_names = cities("unlabeled")
        if request.unlabeled and unlabeled_names:
            # One sample is one whole city: without repeating, an epoch of a few unlabeled cities would hold
            # fewer crops than one batch. Both streams draw `data.nsample` crops per epoch instead.
            unlabeled = OSCDDataset(
                root, repeat_to_length(unlabeled_names, d.nsample), "train_u", geometry, **reading
            )
        count = len(unlabeled) if unlabeled is not None else d.nsample
        labeled = OSCDDataset(root, names, "train_l", geometry, nsample=count, **reading)
    val_list = d.val_list or "test"
    val_names = read_cities(root, val_list) if val_list in ("train", "test") else cities(val_list)
    val = OSCDDataset(root, val_names, "val", **reading)
    return DataBundle(labeled, unlabeled, val, _classes(cfg))


def build_scene_pair(cfg: Config, request: DataRequest) -> DataBundle:
    """Windows of a before/after GeoTIFF pair with a label raster or change polygons (`geotiff_pair`)."""
    d = cfg.data
    if not (d.before and d.after and d.label):
        raise SemisegError("data.dataset=geotiff_pair needs data.before, data.after and data.label")
    is_vector = not isinstance(d.label, str) or Path(d.label).suffix.lower() in VECTOR_SUFFIXES
    bands = tuple(d.bands or range(1, model_spec(cfg).bands + 1))
    labeled, unlabeled, val = build_geotiff_pair_datasets(
        d.before, d.after, label=None if is_vector else d.label, change_polygons=d.label if is_vector else None,
        window=d.window, areas=d.areas,
        fractions=None if d.areas else {"labeled": d.fractions[0], "val": d.fractions[1]},
        min_valid=d.min_valid, stretch=d.stretch, bands=bands, geometry=geometry_from_config(cfg),
        seed=cfg.train.seed, training=request.training, with_unlabeled=request.unlabeled, nsample=d.nsample,
    )  # fmt: skip
    if val is None:
        raise SemisegError(
            "the GeoTIFF pair gave no validation windows: give a val area or a larger val fraction"
        )
    return DataBundle(labeled, unlabeled, val, _classes(cfg), input_bands=list(bands))
