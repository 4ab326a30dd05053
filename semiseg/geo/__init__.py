"""GeoTIFF tile-and-predict for every task: scene checks, window grid, blending, streaming writers, polygons.

`predict_raster(open_scene([before, after]), predictor, "change.tif")` is the whole pipeline; `semiseg.predict`
adds model loading on top. Polygons (and with them geopandas, shapely and pyproj) are loaded only when asked for:
import `semiseg.geo.vectorize` for them.
"""

from semiseg.geo.blend import StripBlender, blend_weights
from semiseg.geo.pair import (
    RasterSource,
    Scene,
    open_pair,
    open_scene,
    open_single,
    percentile_stretch_params,
)
from semiseg.geo.predict import Predictor, predict_raster
from semiseg.geo.windows import Tile, TileGrid, make_grid
from semiseg.geo.writer import StreamingGeoTiff, class_colormap

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
]
