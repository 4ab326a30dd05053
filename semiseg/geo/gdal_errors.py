"""The exceptions a GDAL call made through rasterio can raise.

Most rasterio calls wrap GDAL's failures in `RasterioError` (or `OSError` in older releases), but some (e.g.
`rasterio.shutil.copy`, `transform_bounds`) raise GDAL's own `CPLE_*` types, which derive from neither. Code that
turns a GDAL failure into a one-line message catches `GDAL_ERRORS`.
"""

from __future__ import annotations

from rasterio.errors import RasterioError

try:
    from rasterio._err import CPLE_BaseError
except ImportError:  # pragma: no cover - a rasterio that moved it
    CPLE_BaseError = RasterioError

GDAL_ERRORS: tuple[type[BaseException], ...] = (RasterioError, CPLE_BaseError, OSError)
