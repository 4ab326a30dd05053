"""GeoTIFF tile-and-predict for every task: scene checks, window grid, blending, streaming writers, polygons.

`predict_raster(open_scene([before, after]), predictor, "change.tif")` is the whole pipeline; `semiseg.predict`
adds model loading on top. Polygons (and with them geopandas, shapely and pyproj) are loaded only when asked for:
import `semiseg.geo.vectorize` for them.

The names below load their module on first use (PEP 562), so a light user of one submodule (the viewer reads
rasters with `semiseg.geo.pair`) does not import torch, which `predict` and `blend` need.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "StripBlender": "blend",
    "blend_weights": "blend",
    "RasterSource": "pair",
    "Scene": "pair",
    "open_pair": "pair",
    "open_scene": "pair",
    "open_single": "pair",
    "percentile_stretch_params": "pair",
    "Predictor": "predict",
    "predict_raster": "predict",
    "Tile": "windows",
    "TileGrid": "windows",
    "make_grid": "windows",
    "StreamingGeoTiff": "writer",
    "class_colormap": "writer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
