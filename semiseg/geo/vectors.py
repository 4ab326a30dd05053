"""Reading the user's polygons (labels, labelled areas, reviewed pseudo-labels) onto a raster's CRS.

Reviewed files: a layer with a `status` field is a review (`semicd pseudolabels` writes one with every polygon
`unreviewed`); only its `accepted` polygons are read, so unreviewed and rejected pseudo-labels never become labels.
Files without the field are read whole; a polygon drawn new in a review (its status left empty) is not accepted:
new change goes into a label file. The vector stack (geopandas, pyogrio) loads only when a file is read.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from rasterio.crs import CRS

from semiseg.errors import SemisegError
from semiseg.geo.crs import equivalent_crs, short_crs

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")
STATUS_FIELD = "status"
ACCEPTED = "accepted"
UNREVIEWED = "unreviewed"


def window_box(transform, col: int, row: int, width: int, height: int):
    """A pixel window (offsets and size on the raster grid) as a shapely polygon in the raster's CRS, from all
    four corners (exact for rotated grids too)."""
    import shapely

    corners = [(col, row), (col + width, row), (col + width, row + height), (col, row + height)]
    t = transform  # written out: affine deprecates `*` for `@`, which older releases lack
    return shapely.Polygon([(t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f) for c, r in corners])


def shares_ground(geometries, area) -> np.ndarray:
    """For each geometry, whether it has area in common with `area`; meeting it along an edge (the window next to
    a labelled one) does not count. One rule for every "touches a labelled area" question in the toolkit."""
    import shapely

    return shapely.intersects(geometries, area) & ~shapely.touches(geometries, area)


def feature_layer(path: str | Path) -> str | None:
    """The layer to read: the first one that is not a QGIS style table (our own GeoPackages carry one)."""
    import pyogrio

    try:
        names = [str(name) for name, _ in pyogrio.list_layers(path)]
    except Exception:  # unreadable: read_file reports it
        return None
    names = [n for n in names if n != "layer_styles"]
    return names[0] if names else None


def read_polygons(path: str | Path, raster_crs, what: str) -> tuple[list, bool]:
    """The non-empty geometries of a vector file in `raster_crs` (reprojected with a warning when needed), and
    whether the file is a review (has a `status` field: then only its accepted polygons are returned)."""
    import geopandas  # heavy import, only needed for vector inputs

    path = Path(path)
    if not path.exists():
        raise SemisegError(f"{what} {path} does not exist: check the path")
    try:
        frame = geopandas.read_file(path, layer=feature_layer(path))
    except Exception as err:  # pyogrio/fiona raise many types for unreadable files
        raise SemisegError(f"{what} {path} is not a readable vector file ({err})") from err
    reviewed = STATUS_FIELD in frame.columns
    if reviewed:
        frame = frame[frame[STATUS_FIELD].astype(str).str.strip().str.lower() == ACCEPTED]
    if frame.crs is None:
        warnings.warn(
            f"{what} {path} has no CRS: assuming the raster's ({short_crs(raster_crs)})", stacklevel=2
        )
    elif raster_crs is not None and not equivalent_crs(CRS.from_wkt(frame.crs.to_wkt()), raster_crs):
        vector_crs = short_crs(CRS.from_wkt(frame.crs.to_wkt()))
        warnings.warn(
            f"{what} {path} is in {vector_crs}: reprojecting it to the raster's {short_crs(raster_crs)}",
            stacklevel=2,
        )
        frame = frame.to_crs(raster_crs)
    return [g for g in frame.geometry if g is not None and not g.is_empty], reviewed


def read_vector(path: str | Path, raster_crs, what: str) -> list:
    """`read_polygons` without the review flag."""
    return read_polygons(path, raster_crs, what)[0]


def read_many(paths: str | Path | list, raster_crs, what: str) -> tuple[list, list]:
    """The polygons of one file or a list of files: (from plain files, accepted ones from reviews)."""
    plain, accepted = [], []
    for path in [paths] if isinstance(paths, (str, Path)) else list(paths):
        geometries, reviewed = read_polygons(path, raster_crs, what)
        (accepted if reviewed else plain).extend(geometries)
    return plain, accepted
