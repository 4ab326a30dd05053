"""Config -> (labeled, unlabeled, eval) change-detection datasets: LEVIR-CD / WHU-CD tiles or a GeoTIFF pair."""

from __future__ import annotations

from pathlib import Path

from semicd.data.geotiff_pair import build_geotiff_pair_datasets
from semicd.data.tiles import build_change_tile_datasets, cd_geometry
from semiseg.config import Config
from semiseg.data.build import DATASETS_DIR, DataBundle, _require_root
from semiseg.errors import SemisegError

CHANGE_CLASSES = ["unchanged", "changed"]
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")


def resolve_change_split(cfg: Config, root: Path) -> Path | None:
    """`data.split` as a folder, a name under datasets/<dataset>/, or a name under <root>/splits/."""
    split = cfg.data.split
    if split is None:
        return None
    candidates = [Path(split).expanduser(), DATASETS_DIR / cfg.data.dataset / split, root / "splits" / split]
    for path in candidates:
        if path.is_dir():
            return path
    raise SemisegError(
        f"split {split!r} not found (looked in {', '.join(str(c) for c in candidates)}); make SemiCD splits with "
        f"`semicd splits --root {root} --out {root / 'splits'}` or pass a folder holding labeled.txt/unlabeled.txt"
    )


def build_change_datasets(cfg: Config) -> DataBundle:
    d = cfg.data
    classes = list(d.classes or CHANGE_CLASSES)
    geometry = cd_geometry(d.crop_size, vflip=d.vflip, rot90=d.rot90)
    geometry = type(geometry)(**{**geometry.__dict__, "ratio_range": tuple(d.ratio_range), "hflip": d.hflip})
    if d.dataset == "geotiff_pair":
        if not (d.before and d.after and d.label):
            raise SemisegError("data.dataset=geotiff_pair needs data.before, data.after and data.label")
        is_vector = Path(d.label).suffix.lower() in VECTOR_SUFFIXES
        labeled, unlabeled, val = build_geotiff_pair_datasets(
            d.before,
            d.after,
            label=None if is_vector else d.label,
            change_polygons=d.label if is_vector else None,
            window=d.window,
            areas=d.areas,
            fractions=None if d.areas else {"labeled": d.fractions[0], "val": d.fractions[1]},
            min_valid=d.min_valid,
            bands=tuple(d.bands or (1, 2, 3)),
            crop_size=d.crop_size,
            geometry=geometry,
            seed=cfg.train.seed,
        )
        if val is None:
            raise SemisegError(
                "the GeoTIFF pair gave no validation windows: give a val area or a larger val fraction"
            )
    else:
        root = _require_root(cfg)
        split = resolve_change_split(cfg, root)
        eval_list = d.val_list or "test"
        eval_arg = {"eval_list": eval_list}
        if Path(eval_list).suffix == ".txt":
            eval_arg = {"eval_names": eval_list}
        labeled, unlabeled, val = build_change_tile_datasets(
            root,
            split,
            unlabeled=d.unlabeled_list,
            unlabeled_root=d.unlabeled_root,
            crop_size=d.crop_size,
            geometry=geometry,
            seed=cfg.train.seed,
            **eval_arg,
        )
    if cfg.method.name == "supervised":
        unlabeled = None
    elif unlabeled is None:
        raise SemisegError(
            f"method {cfg.method.name} needs unlabeled data, but none was found for this split"
        )
    return DataBundle(labeled, unlabeled, val, classes)
