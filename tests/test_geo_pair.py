"""Pair checks before compute: grids must match (or be reprojected), files must be readable rasters."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from semiseg.errors import SemisegError
from semiseg.geo.pair import (
    close_source,
    open_pair,
    open_single,
    open_source,
    percentile_stretch_params,
    read_window,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
ORIGIN = from_origin(500000, 4000000, 10, 10)


def write_raster(path, data, crs="EPSG:32631", transform=ORIGIN, nodata=None):
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0])
    profile.update(dtype=data.dtype, crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return path


def ramp_image(h=40, w=50, bands=3):
    return (np.arange(bands * h * w).reshape(bands, h, w) % 251).astype(np.uint8)


def test_matching_pair_opens_on_first_grid(tmp_path):
    a = write_raster(tmp_path / "a.tif", ramp_image())
    b = write_raster(tmp_path / "b.tif", ramp_image())
    scene = open_pair(a, b)
    assert (scene.height, scene.width, scene.num_bands) == (40, 50, 3)
    assert scene.transform == ORIGIN and scene.crs.to_epsg() == 32631
    assert all(s.warp is None and s.stretch is None for s in scene.sources)


def test_crs_mismatch_names_crs_and_suggests_reproject(tmp_path):
    a = write_raster(tmp_path / "a.tif", ramp_image())
    b = write_raster(tmp_path / "b.tif", ramp_image(), crs="EPSG:32632")
    with pytest.raises(SemisegError, match=r"CRS.*--align reproject"):
        open_pair(a, b)


def test_transform_shift_beyond_tolerance_is_refused_but_tiny_one_accepted(tmp_path):
    a = write_raster(tmp_path / "a.tif", ramp_image())
    b = write_raster(tmp_path / "b.tif", ramp_image(), transform=from_origin(500000 + 0.5, 4000000, 10, 10))
    with pytest.raises(SemisegError, match="transform"):
        open_pair(a, b)
    c = write_raster(tmp_path / "c.tif", ramp_image(), transform=from_origin(500000 + 1e-4, 4000000, 10, 10))
    assert open_pair(a, c).sources[1].warp is None


def test_shape_mismatch_is_refused(tmp_path):
    a = write_raster(tmp_path / "a.tif", ramp_image())
    b = write_raster(tmp_path / "b.tif", ramp_image(h=41))
    with pytest.raises(SemisegError, match="shape"):
        open_pair(a, b)


def test_reproject_reads_after_image_on_before_grid_and_cuts_to_overlap(tmp_path):
    image = ramp_image(h=40, w=50)
    a = write_raster(tmp_path / "a.tif", image)
    # The same ground shifted by exactly 5 px east: B's column 0 is A's column 5, B runs 5 px past A's edge.
    b = write_raster(tmp_path / "b.tif", image[:, :, 5:], transform=from_origin(500050, 4000000, 10, 10))
    with pytest.warns(UserWarning, match="partly overlap"):
        scene = open_pair(a, b, align="reproject")
    assert (scene.height, scene.width) == (40, 45)
    assert scene.transform == from_origin(500050, 4000000, 10, 10)
    assert scene.sources[0].col_off == 5 and scene.sources[1].warp is not None
    handles = [open_source(s) for s in scene.sources]
    try:
        (img_a, ok_a, _), (img_b, ok_b, _) = (
            read_window(h, s, 0, 0, 56, 56) for h, s in zip(handles, scene.sources)
        )
    finally:
        for h in handles:
            close_source(h)
    np.testing.assert_array_equal(img_a[:, :40, :45], img_b[:, :40, :45])
    assert ok_a[:40, :45].all() and ok_b[:40, :45].all()
    assert not ok_a[40:].any() and not ok_b[:, 45:].any()  # window padding is invalid


def test_band_count_mismatch_is_refused_and_bands_select(tmp_path):
    a = write_raster(tmp_path / "a.tif", ramp_image(bands=5))
    b = write_raster(tmp_path / "b.tif", ramp_image(bands=3))
    with pytest.raises(SemisegError, match="--bands"):
        open_pair(a, b, align="reproject")
    assert open_pair(a, b, bands=[1, 2, 3]).sources[0].bands == (1, 2, 3)
    with pytest.raises(SemisegError, match="--bands"):
        open_pair(a, b, bands=[4])


def test_missing_folder_text_and_corrupt_inputs_are_refused(tmp_path):
    with pytest.raises(SemisegError, match="does not exist"):
        open_single(tmp_path / "missing.tif")
    with pytest.raises(SemisegError, match="folder"):
        open_single(tmp_path)
    text = tmp_path / "notes.tif"
    text.write_text("not a raster\n")
    with pytest.raises(SemisegError, match="not a readable raster"):
        open_single(text)
    good = write_raster(
        tmp_path / "good.tif", np.random.default_rng(0).integers(0, 255, (3, 200, 200), np.uint8)
    )
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(Path(good).read_bytes()[:2000])
    with pytest.raises(SemisegError, match=str(corrupt.name)):
        open_single(corrupt)


def test_uint16_is_stretched_to_0_255_per_band(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, (2, 60, 60)).astype(np.uint16)
    data[1] += 10000
    path = write_raster(tmp_path / "u16.tif", data)
    with pytest.warns(UserWarning, match="percentile stretch of the uint16 values"):
        scene = open_single(path)
    (lo0, hi0), (lo1, hi1) = scene.sources[0].stretch
    assert 1000 <= lo0 < 1100 and 2900 < hi0 <= 3000 and 11000 <= lo1 < 11100
    with rasterio.open(path) as ds:
        assert percentile_stretch_params(ds, [1, 2]) == scene.sources[0].stretch
        image, ok, _ = read_window(ds, scene.sources[0], 0, 0, 56, 56)
    assert image.dtype == np.uint8 and ok.all()
    assert image.min() == 0 and image.max() == 255 and 100 < image.mean() < 155


def test_real_pair_with_different_crs_errors_then_reprojects():
    before, after = DATA / "RGB.byte.tif", DATA / "rgb1_fake_nir_epsg3857.tif"
    if not (before.exists() and after.exists()):
        pytest.skip("shared sample GeoTIFFs are absent")
    with pytest.raises(SemisegError, match=r"CRS \(EPSG:32618 vs EPSG:3857\)"):
        open_pair(before, after, bands=[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scene = open_pair(before, after, align="reproject", bands=[1])
    assert scene.crs.to_epsg() == 32618 and 0 < scene.height <= 718 and 0 < scene.width <= 791
    vrt = open_source(scene.sources[1])
    try:
        assert vrt.crs.to_epsg() == 32618 and (vrt.height, vrt.width) == (scene.height, scene.width)
        image, ok, _ = read_window(vrt, scene.sources[1], 0, 0, scene.height, scene.width)
    finally:
        close_source(vrt)
    assert ok.mean() > 0.3 and image[0][ok].mean() > 0
