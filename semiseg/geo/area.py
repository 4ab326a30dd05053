"""Ground area of a raster pixel, without the vector stack (pyproj/geopandas load only where polygons are made).

Projected CRS: the transform's pixel area times the square of the CRS's linear unit in metres. Geographic CRS:
the exact area of the pixel's latitude/longitude rectangle on the WGS84 ellipsoid, taken at the scene centre
(it varies with latitude). For a rectangle between latitudes φ1 and φ2 spanning Δλ radians of longitude:

    A = Δλ · b² / 2 · [f(φ2) − f(φ1)],   f(φ) = sin φ / (1 − e² sin² φ) + artanh(e sin φ) / e

(the authalic integral; b the semi-minor axis, e the eccentricity).
"""

from __future__ import annotations

import math
import warnings

from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError

WGS84_A = 6378137.0
WGS84_F = 1 / 298.257223563
_E2 = WGS84_F * (2 - WGS84_F)
_E = math.sqrt(_E2)
_B2 = (WGS84_A * (1 - WGS84_F)) ** 2


def _authalic(phi: float) -> float:
    s = math.sin(phi)
    return s / (1 - _E2 * s * s) + math.atanh(_E * s) / _E


def lat_lon_rectangle_area_m2(lat1: float, lat2: float, dlon: float) -> float:
    """Area in m² of the ellipsoid between latitudes `lat1`, `lat2` over `dlon` degrees of longitude."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    return abs(math.radians(dlon) * _B2 / 2 * (_authalic(p2) - _authalic(p1)))


def pixel_area_m2(crs, transform: Affine, height: int, width: int) -> float:
    """Ground area of one pixel in m² (at the scene centre for a geographic CRS, where it varies).

    Without a CRS, or with one that does not state its unit, the area is in the transform's units squared (nothing
    better is known).
    """
    area = abs(transform.a * transform.e - transform.b * transform.d)
    if crs is None:
        return area
    crs = CRS.from_user_input(crs)
    if crs.is_geographic:
        lon0, lat0 = transform @ (width / 2, height / 2)
        lon1, lat1 = transform @ (width / 2 + 1, height / 2 + 1)
        return lat_lon_rectangle_area_m2(lat0, lat1, abs(lon1 - lon0))
    try:
        _, metres_per_unit = crs.linear_units_factor
    except CRSError:  # local/engineering CRSs may not say their unit
        warnings.warn(
            f"the CRS does not state its linear unit: areas are in its own units squared ({crs})",
            stacklevel=2,
        )
        return area
    return area * metres_per_unit**2
