"""Areas in m² whatever the CRS, and colours that keep classes apart."""

import geopandas as gpd
import pytest
import rasterio
from shapely.geometry import box

from semiseg.errors import SemisegError
from semiseg.geo.area import pixel_area_m2
from semiseg.geo.predict import polygon_driver
from semiseg.geo.vectorize import areas_m2
from semiseg.geo.writer import class_colormap


def test_areas_in_m2_for_projected_geographic_and_feet_crs():
    metres = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 20)], crs="EPSG:32631")
    assert areas_m2(metres)[0] == pytest.approx(200.0)
    feet = gpd.GeoDataFrame(geometry=[box(0, 0, 10, 10)], crs="EPSG:2263")  # NY Long Island, US feet
    assert areas_m2(feet)[0] == pytest.approx(100 * 0.3048006**2, rel=1e-5)
    degrees = gpd.GeoDataFrame(geometry=[box(3.0, 0.0, 3.001, 0.001)], crs="EPSG:4326")
    assert areas_m2(degrees)[0] == pytest.approx(111_320 * 110_574 * 1e-6, rel=0.01)


def test_pixel_area_for_geographic_grid_uses_the_ellipsoid():
    transform = rasterio.transform.from_origin(3.0, 0.5, 0.001, 0.001)
    assert pixel_area_m2("EPSG:4326", transform, 1000, 1000) == pytest.approx(
        111_320 * 110_574 * 1e-6, rel=0.01
    )
    assert pixel_area_m2(None, transform, 10, 10) == pytest.approx(1e-6)


def test_polygon_driver_by_extension():
    assert polygon_driver("a/b.GPKG") == "GPKG" and polygon_driver("c.geojson") == "GeoJSON"
    with pytest.raises(SemisegError, match="gpkg"):
        polygon_driver("c.shp")


def test_multiclass_palette_is_distinct_and_nodata_transparent():
    cmap = class_colormap(21)
    assert len({cmap[c] for c in range(21)}) == 21
    assert cmap[255][3] == 0 and class_colormap(2)[1] == (255, 0, 0, 255)


def test_pixel_area_of_a_crs_without_a_stated_unit_is_in_its_own_units():
    local = rasterio.crs.CRS.from_wkt(
        'LOCAL_CS["site grid",UNIT["unknown",1],AXIS["x",EAST],AXIS["y",NORTH]]'
    )
    with pytest.warns(UserWarning, match="does not state its linear unit"):
        assert pixel_area_m2(local, rasterio.transform.from_origin(0, 0, 2, 2), 10, 10) == 4.0
