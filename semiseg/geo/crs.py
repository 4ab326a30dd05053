"""When two rasters are on the same coordinate reference system, and how to name a CRS in one short line.

GDAL compares CRSs by their full definition, names and datum identity included, so the same UTM grid written by
two programs ("WGS 84 / UTM zone 18N" with its EPSG code, or a hand-written "+proj=tmerc ... +ellps=WGS84" that
reads back as an unknown datum on the WGS 84 ellipsoid) compares unequal, and a correct pair would be refused.
What decides whether pixels line up is the geometry: the datum, the ellipsoid, the prime meridian, the projection
method and its parameters, and the axis unit. `equivalent_crs` compares exactly those (names aside; two datums
with different authority codes differ, an unnamed datum on the same ellipsoid matches), so such a pair is accepted
with a warning, while a real difference (another zone, ellipsoid or datum) still is not.
pyproj (installed with rasterio's vector companions) is imported only when two CRSs differ in spelling.
"""

from __future__ import annotations

import math
import re

from rasterio.crs import CRS

NAME_LENGTH = 60  # longest CRS name put on a message line
_REL_TOL = 1e-9  # parameters written in decimal by different programs agree to about this


def short_crs(crs: CRS | None) -> str:
    """`EPSG:32618` when the CRS is exactly that code, else its name cut to ~60 characters ("none" without one).

    rasterio's `to_epsg()` (and, with older GDAL, its `==`) also accept loose matches: an unknown datum on the WGS 84
    ellipsoid can come back as an unrelated code. PROJ's identification at full confidence does not.
    """
    if crs is None:
        return "none"
    import pyproj

    try:
        parsed = pyproj.CRS.from_wkt(crs.to_wkt())
        code, name = parsed.to_epsg(min_confidence=100), parsed.name
    except pyproj.exceptions.CRSError:
        match = re.match(r'\s*[A-Z_]+\[\s*"([^"]*)"', crs.to_wkt())
        code, name = None, match.group(1) if match else crs.to_string()
    if code is not None:
        return f"EPSG:{code}"
    return repr(name if len(name) <= NAME_LENGTH else name[: NAME_LENGTH - 3] + "...")


def equivalent_crs(a: CRS | None, b: CRS | None) -> bool:
    """Whether `a` and `b` put the same coordinates at the same place: equal, or the same geometry spelled apart."""
    if a is None or b is None:
        return a is None and b is None
    if a == b:
        return True
    import pyproj

    try:
        pa, pb = pyproj.CRS.from_wkt(a.to_wkt()), pyproj.CRS.from_wkt(b.to_wkt())
    except pyproj.exceptions.CRSError:
        return False
    pa, pb = _horizontal(pa), _horizontal(pb)
    if _datum_codes_differ(
        pa, pb
    ):  # e.g. ED50 and Petrels 1972: one ellipsoid, datums hundreds of metres apart
        return False
    return _geometry(pa) is not None and _geometry(pa) == _geometry(pb)


def _horizontal(crs):
    """The horizontal part of a compound CRS (pixels are placed by it alone), else the CRS."""
    return crs.sub_crs_list[0] if crs.is_compound and crs.sub_crs_list else crs


def _datum_codes_differ(a, b) -> bool:
    """Both datums carry an authority code and the codes differ (an unnamed datum on an ellipsoid has none)."""
    codes = []
    for crs in (a, b):
        datum = crs.datum
        ids = datum.to_json_dict().get("id") if datum is not None else None
        codes.append((ids.get("authority"), ids.get("code")) if isinstance(ids, dict) else None)
    return None not in codes and codes[0] != codes[1]


def _geometry(crs) -> tuple | None:
    """What fixes where a coordinate lies, rounded so decimal spellings of one value compare equal."""
    if crs.is_compound or crs.ellipsoid is None or crs.prime_meridian is None:
        return None
    ellipsoid = (_round(crs.ellipsoid.semi_major_metre), _round(crs.ellipsoid.inverse_flattening))
    units = tuple(_round(axis.unit_conversion_factor) for axis in crs.axis_info[:2])
    prime = _round(crs.prime_meridian.longitude * crs.prime_meridian.unit_conversion_factor)
    if crs.is_geographic:
        return ("geographic", ellipsoid, prime, units)
    op = crs.coordinate_operation
    if not crs.is_projected or op is None:
        return None
    params = tuple(
        sorted((p.code or p.name, _round(p.value * (p.unit_conversion_factor or 1.0))) for p in op.params)
    )
    return ("projected", ellipsoid, prime, units, op.method_code or op.method_name, params)


def _round(value: float) -> float:
    """A value rounded to ~9 significant digits (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, 8 - int(math.floor(math.log10(abs(value)))))
