"""Close the loop on a user's own scene: where to label next (`suggest`), and confident predictions to review
(`pseudolabels`).

Both run the model over the scene through the streaming tile-and-predict path (`semiseg.predict.predict_scene`)
into a hidden temporary folder beside the output, read what they need from it strip by strip, write one
GeoPackage atomically, and delete the folder, so memory stays flat in the scene's height and a stopped run
leaves nothing. The loop, with the commands, is in README ("Label where it matters").
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from semiseg.errors import SemisegError
from semiseg.geo.suggest import default_min_distance, pick_spread, score_windows, touching, window_polygons
from semiseg.geo.vectors import UNREVIEWED, read_many, shares_ground
from semiseg.io import remove_stale_temporaries, temp_path_for


def check_review_output(path: str | os.PathLike) -> Path:
    """The GeoPackage a suggestion or review goes to, refused up front (before a model loads) when it cannot be."""
    from semiseg.geo.writer import check_output_path

    path = check_output_path(path, "output")
    if path.suffix.lower() != ".gpkg":
        raise SemisegError(f"--out {path}: write a GeoPackage (.gpkg), which QGIS edits in place")
    return path


def _predict_to(folder: Path, model: Any, rasters: Sequence[str | os.PathLike], **options: Any) -> dict:
    from semiseg.predict import predict_scene

    return predict_scene(model, rasters, folder / "classes.tif", probs_path=folder / "probs.tif", **options)


def _labelled_areas(areas: Sequence[str | os.PathLike] | None, rasters: Sequence[str | os.PathLike]) -> list:
    """The labelled areas' polygons in the first raster's CRS, read before any compute (a bad file fails fast)."""
    if not areas:
        return []
    from semiseg.geo.pair import open_raster

    with open_raster(rasters[0]) as ds:
        crs = ds.crs
    plain, accepted = read_many([str(a) for a in areas], crs, "labelled area file")
    return plain + accepted


class _ScratchFolder:
    """A hidden folder beside `out` for the intermediate rasters, removed on the way out whatever happens."""

    def __init__(self, out: Path) -> None:
        remove_stale_temporaries(out)
        self.path = temp_path_for(out, "")

    def __enter__(self) -> Path:
        self.path.mkdir()
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def suggest_windows(
    model: Any,
    rasters: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    n: int = 20,
    areas: Sequence[str | os.PathLike] | None = None,
    min_distance: int | None = None,
    window: int,
    cell: int | None = None,
    **options: Any,
) -> dict:
    """Write the `n` windows most worth labelling as polygons (`rank`, `score`, `valid_fraction`) to `out`.

    `window` is the prediction window; `cell` the side of the suggested windows (default: the same, which in the
    commands is the model's training crop; a training config's `data.window` makes the suggestions line up with
    its windows). Windows touching `areas` (already labelled) are never suggested; `min_distance` (px, centre to
    centre) spreads them (default: two cells). See `semiseg.geo.suggest` for the score.
    """
    out = check_review_output(out)
    if n < 1:
        raise SemisegError(f"--n {n}: ask for at least one window")
    labelled = _labelled_areas(areas, rasters)
    cell = cell or window
    with _ScratchFolder(out) as scratch:
        summary = _predict_to(scratch, model, rasters, window=window, **options)
        with rasterio.open(scratch / "probs.tif") as ds:
            transform, crs = ds.transform, ds.crs
        scores = score_windows(scratch / "probs.tif", cell, summary["num_classes"])
    excluded = touching(scores, transform, labelled)
    if len(scores) == sum(excluded):
        raise SemisegError(
            f"no window of the scene is left to suggest: of its {len(scores)} mostly valid {cell} px windows, "
            f"{sum(excluded)} are in the labelled areas"
        )
    gap = default_min_distance(cell) if min_distance is None else min_distance
    picked = pick_spread(scores, n, gap, excluded)
    notes = []
    if len(picked) < n:
        notes.append(
            f"only {len(picked)} of the {n} windows asked for fit {gap} px apart outside the labelled areas; "
            "lower --min-distance for more"
        )
        warnings.warn(notes[-1], stacklevel=2)
    _write_layer(
        out,
        {"rank": np.arange(1, len(picked) + 1), "score": [round(w.score, 4) for w in picked],
         "valid_fraction": [round(w.valid, 4) for w in picked]},
        window_polygons(picked, transform),
        crs,
    )  # fmt: skip
    return {
        "out": str(out),
        "suggested": len(picked),
        "candidates": len(scores),
        "excluded_as_labelled": int(sum(excluded)),
        "window": window,
        "cell": cell,
        "min_distance": gap,
        "score": "mean binary entropy of P(change)"
        if summary["num_classes"] <= 2
        else "mean (1 - max p) K/(K-1)",
        "scores": [w.score for w in picked],
        "notes": notes,
    }


def pseudolabel_polygons(
    model: Any,
    rasters: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    min_prob: float = 0.9,
    areas: Sequence[str | os.PathLike] | None = None,
    **options: Any,
) -> dict:
    """Write the model's confident change (P(change) >= `min_prob`) outside `areas` as polygons to review.

    Each polygon has `id`, `class_name`, `area_m2`, `mean_prob`, the inputs and the model (as `predict
    --polygons` writes them) and `status` = `unreviewed`: set it to `accepted` (or `rejected`) in QGIS, then give
    the file to training as a label file and a labelled area (README, "Label where it matters").
    """
    out = check_review_output(out)
    if not 0.5 <= min_prob < 1.0:
        raise SemisegError(f"--min-prob {min_prob} must be at least 0.5 and below 1")
    if model.nclass != 2:
        raise SemisegError(
            f"pseudolabels is for change (2-class) models; this one has {model.nclass} classes"
        )
    import geopandas as gpd
    import shapely

    labelled = _labelled_areas(areas, rasters)
    with _ScratchFolder(out) as scratch:
        polygons = scratch / "polygons.gpkg"
        summary = _predict_to(scratch, model, rasters, threshold=min_prob, polygons_path=polygons, **options)
        frame = gpd.read_file(polygons, layer="polygons")
    if labelled and len(frame):  # a polygon reaching into a labelled area is left out (labels exist there)
        frame = frame[~shares_ground(frame.geometry.values, shapely.union_all(labelled))]
    frame = frame.reset_index(drop=True)
    frame["id"] = np.arange(1, len(frame) + 1)
    frame["status"] = UNREVIEWED
    _write_layer(out, frame.drop(columns="geometry"), list(frame.geometry), frame.crs)
    return {
        "out": str(out),
        "polygons": len(frame),
        "min_prob": min_prob,
        "changed_area_m2": float(frame["area_m2"].sum()) if len(frame) else 0.0,
        "dropped_in_labelled_areas": summary["num_polygons"] - len(frame),
    }


def _write_layer(out: Path, columns: Any, geometries: list, crs) -> None:
    """One GeoPackage layer named after the file, written under a temporary name and renamed into place."""
    import geopandas as gpd

    from semiseg.io import atomic_path

    frame = gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(geometries, crs=crs))
    with atomic_path(out) as tmp:
        frame.to_file(tmp, driver="GPKG", layer=out.stem)
