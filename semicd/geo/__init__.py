"""GeoTIFF tile-and-predict: pair checks, window grid, blending, streaming writers and polygons.

`predict_raster(open_pair(before, after), predictor, "change.tif")` is the whole pipeline; the CLI adds model
loading and argument parsing on top.
"""

from semicd.geo.blend import StripBlender, blend_weights
from semicd.geo.pair import (
    RasterSource,
    Scene,
    open_pair,
    open_scene,
    open_single,
    percentile_stretch_params,
)
from semicd.geo.predict import Predictor, predict_raster
from semicd.geo.vectorize import vectorize_classes
from semicd.geo.windows import Tile, TileGrid, make_grid
from semicd.geo.writer import StreamingGeoTiff, class_colormap

__all__ = [
    "Predictor",
    "RasterSource",
    "Scene",
    "StreamingGeoTiff",
    "StripBlender",
    "Tile",
    "TileGrid",
    "blend_weights",
    "class_colormap",
    "make_grid",
    "open_pair",
    "open_scene",
    "open_single",
    "percentile_stretch_params",
    "predict_raster",
    "vectorize_classes",
]
