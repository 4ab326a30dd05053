"""Turn a finished class raster into polygons with areas and mean probabilities.

Memory: this reads the whole class raster (1 byte/px), the probability raster (1 byte/px) and a polygon-id
raster (4 bytes/px) at once, i.e. about 6 bytes per pixel (6 GB for a 1 gigapixel scene); the tiled prediction
itself stays O(window x width). Vectorising the whole mask in one piece is what keeps an object that crosses
window seams a single polygon. Sieving runs first so single stray pixels do not become thousands of polygons.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes, sieve

from semiseg.geo.writer import NODATA, PROB_SCALE


def areas_m2(gdf: gpd.GeoDataFrame) -> np.ndarray:
    """Polygon areas in m²: in a projected CRS its unit, in a geographic CRS via the local UTM zone.

    Without a CRS the areas are in the transform's units squared (nothing better is known).
    """
    if len(gdf) == 0:
        return np.zeros(0)
    if gdf.crs is None:
        return gdf.geometry.area.to_numpy()
    if gdf.crs.is_geographic:
        return gdf.to_crs(gdf.estimate_utm_crs()).geometry.area.to_numpy()
    factor = gdf.crs.axis_info[0].unit_conversion_factor
    return gdf.geometry.area.to_numpy() * factor**2


def vectorize_classes(
    class_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    driver: str,
    probs_path: str | os.PathLike | None = None,
    background: int | None = 0,
    sieve_pixels: int = 4,
    min_area_m2: float = 0.0,
    simplify: float = 0.0,
    layer: str | None = None,
    class_names: Sequence[str] | None = None,
    attributes: Mapping[str, object] | None = None,
) -> int:
    """Write one polygon per connected (4-neighbour) region of each non-background class; return the count.

    Attributes: `id` (1..N, in raster order, stable for one output), `class`, `class_name`, `area_m2` (see
    `areas_m2`), `mean_prob` (the mean of the probability raster, 0..1, over the polygon's pixels; NaN without
    one), then `attributes` (the same on every row: input names and dates, the model). Regions smaller than
    `sieve_pixels` are merged into their neighbours first; polygons under `min_area_m2` are dropped; `simplify`
    > 0 simplifies outlines to that tolerance in CRS units (topology kept; areas are of the simplified shapes).
    """
    with rasterio.open(class_path) as ds:
        classes = ds.read(1)
        transform, crs = ds.transform, ds.crs
    valid = classes != NODATA
    if 1 < sieve_pixels < classes.size:  # GDAL refuses a sieve as large as the raster
        classes = sieve(classes, size=sieve_pixels, mask=valid, connectivity=4)
    keep = valid if background is None else valid & (classes != background)
    records = [
        (shapely.make_valid(shapely.geometry.shape(geom)), int(value))
        for geom, value in shapes(classes, mask=keep, connectivity=4, transform=transform)
    ]
    geoms = [g for g, _ in records]
    values = np.array([v for _, v in records], dtype=np.int32)
    names = list(class_names or [])
    gdf = gpd.GeoDataFrame(
        {"class": values, "class_name": [names[v] if v < len(names) else str(v) for v in values]},
        geometry=gpd.GeoSeries(geoms, crs=crs),
    )
    gdf["mean_prob"] = _mean_probs(gdf, probs_path, classes.shape, transform)  # on the exact pixel outlines
    if simplify > 0 and len(gdf):
        gdf["geometry"] = shapely.make_valid(gdf.geometry.simplify(simplify, preserve_topology=True).values)
    gdf["area_m2"] = areas_m2(gdf)
    gdf = gdf[gdf["area_m2"] >= min_area_m2].reset_index(drop=True)
    gdf.insert(0, "id", np.arange(1, len(gdf) + 1, dtype=np.int64))
    for key, value in (attributes or {}).items():
        gdf[key] = value
    gdf = gdf[["id", "class", "class_name", "area_m2", "mean_prob", *(attributes or {}), "geometry"]]
    kwargs = (
        {"layer": layer} if layer else {}
    )  # GeoJSON too: its "name" is the layer (else the temporary file's)
    gdf.to_file(out_path, driver=driver, **kwargs)
    return len(gdf)


def _mean_probs(gdf: gpd.GeoDataFrame, probs_path, shape, transform: Affine) -> np.ndarray:
    """Mean probability per polygon, from one rasterised id image and two bincounts (no per-polygon loop)."""
    if probs_path is None or len(gdf) == 0:
        return np.full(len(gdf), np.nan)
    with rasterio.open(probs_path) as ds:
        probs = ds.read(1)
    ids = rasterize(
        ((geom, i + 1) for i, geom in enumerate(gdf.geometry)),
        out_shape=shape,
        transform=transform,
        fill=0,
        dtype="int32",
    )
    ok = (ids > 0) & (probs != NODATA)
    n = len(gdf) + 1
    total = np.bincount(ids[ok], weights=probs[ok].astype(np.float64), minlength=n)
    count = np.bincount(ids[ok], minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = total / count / PROB_SCALE
    return mean[1:]
