"""GIS-grade rasters in and out: each awkward input a user brings, and what QGIS/GDAL read back from our outputs.

One test per problem a user hit: equivalent CRSs spelled apart, NaN without a nodata tag, a per-date stretch that
invents change, RGBA and single-band files, corrupt files read by workers, a full disk, SIGTERM, kill -9 leftovers,
a huge declared size; then the outputs: transparent "unchanged", class names, probabilities GDAL scales to 0-1,
polygons with ids and provenance, valid COGs.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin

from semiseg.errors import SemisegError
from semiseg.geo import open_pair, open_single
from semiseg.geo import predict_raster as geo_predict_raster

ORIGIN = from_origin(500000, 4500000, 2, 2)
UTM18_BY_HAND = (  # UTM zone 18N written out as WKT: WGS 84's ellipsoid under an unnamed datum, no EPSG code
    'PROJCS["UTM Zone 18, Northern Hemisphere",GEOGCS["unnamed",DATUM["unnamed",SPHEROID["WGS 84",6378137,'
    '298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-75],PARAMETER["scale_factor",0.9996],'
    'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1]]'
)
predict_raster = functools.partial(geo_predict_raster, patch_size=14, num_workers=0, window=28)


def write_raster(path, data, crs="EPSG:32618", nodata=None, **extra):
    data = np.asarray(data)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0])
    profile.update(dtype=data.dtype, crs=crs, transform=ORIGIN, nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


def toy_predictor(images):
    """P(change) = |A - B| of band 1 / 255, per pixel."""
    a, b = (x.float() for x in images)
    p = (a[:, :1] - b[:, :1]).abs() / 255.0
    return torch.cat([1 - p, p], dim=1)


def pair(tmp_path, h=60, w=50):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(1, 256, (3, h, w)).astype(np.uint8) for _ in range(2))
    return write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", b)


# --- 2. a correct pair refused -------------------------------------------------------------------------------


def test_a_crs_spelled_differently_is_the_same_grid_with_one_short_warning(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.zeros((3, 30, 30), np.uint8))
    b = write_raster(tmp_path / "b.tif", np.zeros((3, 30, 30), np.uint8), crs=UTM18_BY_HAND)
    with rasterio.open(a) as ra, rasterio.open(b) as rb:
        assert ra.crs != rb.crs  # GDAL itself calls them different: the case users hit
    with pytest.warns(
        UserWarning, match=r"EPSG:32618 vs 'UTM Zone 18, Northern Hemisphere'.*same ellipsoid"
    ) as caught:
        scene = open_pair(a, b)
    ours = [w for w in caught if "CRS" in str(w.message)]
    assert all(s.warp is None for s in scene.sources) and len(ours) == 1 and len(str(ours[0].message)) < 250


def test_same_ellipsoid_different_datums_are_different_grids():
    from rasterio.crs import CRS

    from semiseg.geo.crs import equivalent_crs

    assert not equivalent_crs(CRS.from_epsg(4230), CRS.from_epsg(4636))  # ED50 vs Petrels 1972
    assert not equivalent_crs(CRS.from_epsg(4269), CRS.from_epsg(6318))  # NAD83 vs NAD83(2011)
    assert equivalent_crs(CRS.from_epsg(4326), CRS.from_string("+proj=longlat +ellps=WGS84 +no_defs"))


def test_a_local_crs_that_cannot_be_reprojected_is_one_line(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.zeros((3, 30, 30), np.uint8))
    local = 'LOCAL_CS["site grid",LOCAL_DATUM["site",0],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
    b = write_raster(tmp_path / "b.tif", np.zeros((3, 30, 30), np.uint8), crs=local)
    with pytest.raises(SemisegError, match="cannot be reprojected") as err:
        open_pair(a, b, align="reproject")
    assert "\n" not in str(err.value)


def test_a_really_different_crs_is_refused_with_short_names_and_the_reproject_hint(tmp_path):
    a = write_raster(tmp_path / "a.tif", np.zeros((3, 30, 30), np.uint8))
    zone19 = UTM18_BY_HAND.replace('central_meridian",-75', 'central_meridian",-69').replace("18", "19")
    b = write_raster(tmp_path / "b.tif", np.zeros((3, 30, 30), np.uint8), crs=zone19)
    with pytest.raises(
        SemisegError, match=r"CRS \(EPSG:32618 vs 'UTM Zone 19, Northern Hemisphere'\).*--align reproject"
    ) as err:
        open_pair(a, b)
    assert len(str(err.value)) < 300 and "\n" not in str(err.value)


# --- 1. silent wrong results ---------------------------------------------------------------------------------


def test_nan_without_a_nodata_tag_is_nodata_in_the_output_and_counted(tmp_path):
    rng = np.random.default_rng(1)
    a = rng.random((3, 60, 50)).astype(np.float32)
    b = a.copy()
    a[:, 10:20, 5:15] = np.nan  # 100 px
    b[0, 40:42, :] = np.inf  # 100 px more, in another date and one band only
    pa, pb = write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", b)
    with pytest.warns(UserWarning):
        summary = predict_raster(open_pair(pa, pb), toy_predictor, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        classes = ds.read(1)
    assert (classes[10:20, 5:15] == 255).all() and (classes[40:42] == 255).all()
    assert (classes != 255).sum() == 60 * 50 - 200
    assert summary["nonfinite_input_pixels"] == 200 and summary["nodata_pixels"] == 200
    assert any("NaN or Inf" in n for n in summary["notes"])


def test_by_default_both_dates_share_one_stretch_so_it_cannot_invent_change(tmp_path):
    rng = np.random.default_rng(2)
    before = rng.integers(1000, 2000, (3, 40, 40)).astype(np.uint16)
    after = before + 1000  # every pixel brighter: a per-date stretch would make the dates identical
    pa, pb = write_raster(tmp_path / "a.tif", before), write_raster(tmp_path / "b.tif", after)
    with pytest.warns(UserWarning, match="shared stretch of the uint16 values"):
        shared = open_pair(pa, pb)
    assert shared.sources[0].stretch == shared.sources[1].stretch
    lo, hi = shared.sources[0].stretch[0]
    assert 1000 <= lo < 1100 and 2900 < hi <= 3000  # percentiles of both dates pooled
    with pytest.warns(UserWarning, match="per-date"):
        per_date = open_pair(pa, pb, stretch="per-date")
    assert per_date.sources[0].stretch != per_date.sources[1].stretch

    s_shared = predict_raster(shared, toy_predictor, tmp_path / "shared.tif")
    s_per_date = predict_raster(per_date, toy_predictor, tmp_path / "per_date.tif")
    # the brightness shift is visible as change with the shared stretch and hidden by the per-date one
    assert s_shared["changed_percent"] > 90 and s_per_date["changed_percent"] < 10
    with rasterio.open(tmp_path / "shared.tif") as ds:
        assert ds.tags()["stretch"].startswith("a shared stretch")


def test_sparse_valid_data_still_gets_its_own_percentiles(tmp_path):
    """A 2 x 2 px valid patch in a 3000 px nodata scene: the decimated read sees no valid pixel, a full read does."""
    data = np.zeros((1, 3000, 3000), np.uint16)
    data[0, 1500:1502, 1500:1502] = [[4000, 5000], [6000, 7000]]
    path = write_raster(tmp_path / "sparse.tif", data, nodata=0, tiled=True, compress="deflate")
    with pytest.warns(UserWarning, match="percentile"):
        scene = open_single(path)
    low, high = scene.sources[0].stretch[0]
    assert 4000 <= low < 4200 and 6800 < high <= 7000


def test_a_write_failure_that_is_not_about_space_keeps_its_reason(tmp_path):
    from rasterio.errors import RasterioError

    from semiseg.geo.writer import writing

    with pytest.raises(SemisegError) as err, writing(tmp_path / "c.tif", needed_bytes=10**14):
        raise RasterioError("TIFFWriteDirectory: bad photometric")
    assert "no space" not in str(err.value) and "bad photometric" in str(err.value)


def test_a_geojson_named_like_the_map_never_takes_the_maps_style(tmp_path):
    a, b = pair(tmp_path)
    summary = predict_raster(
        open_pair(a, b), toy_predictor, tmp_path / "change.tif", polygons_path=tmp_path / "change.geojson"
    )
    style = (tmp_path / "change.qml").read_text()
    assert "rasterrenderer" in style and "renderer-v2" not in style  # the map keeps its own style
    assert any("no QGIS style for change.geojson" in note for note in summary["notes"])


def test_fixed_and_none_stretches_map_values_as_told(tmp_path):
    data = np.array([[[0, 1500, 3000, 6000]]], dtype=np.uint16).repeat(3, axis=0)
    path = write_raster(tmp_path / "u16.tif", data)
    from semiseg.geo.pair import apply_stretch

    with pytest.warns(UserWarning, match="fixed stretch"):
        fixed = open_single(path, stretch="fixed:0,3000")
    with pytest.warns(UserWarning, match="clipping"):
        clipped = open_single(path, stretch="none")
    np.testing.assert_array_equal(apply_stretch(data, fixed.sources[0].stretch)[0, 0], [0, 128, 255, 255])
    np.testing.assert_array_equal(apply_stretch(data, clipped.sources[0].stretch)[0, 0], [0, 255, 255, 255])
    for bad in ("fixed:3000,0", "fixed:a,b", "sharde"):
        with pytest.raises(SemisegError, match="fixed:MIN,MAX"):
            open_single(path, stretch=bad)


def test_training_on_a_scene_uses_the_same_shared_stretch(tmp_path):
    from semicd.data.geotiff_pair import GeoTiffPairDataset

    rng = np.random.default_rng(3)
    before = rng.integers(1000, 2000, (3, 64, 64)).astype(np.uint16)
    pa, pb = write_raster(tmp_path / "a.tif", before), write_raster(tmp_path / "b.tif", before + 1000)
    label = write_raster(tmp_path / "l.tif", np.zeros((1, 64, 64), np.uint8))
    boxes = [(0, 0, 32, 32)]
    shared = GeoTiffPairDataset(pa, pb, boxes, "val", label=label)
    per_date = GeoTiffPairDataset(pa, pb, boxes, "val", label=label, stretch="per-date")
    with pytest.warns(UserWarning):
        assert shared.stretch == tuple(s.stretch for s in open_pair(pa, pb).sources)
    assert shared.stretch[0] == shared.stretch[1] and per_date.stretch[0] != per_date.stretch[1]


# --- 3. common files that failed -------------------------------------------------------------------------------


def test_an_alpha_band_is_skipped_by_default_and_masks_the_pixels(tmp_path):
    rng = np.random.default_rng(4)
    rgb = rng.integers(0, 256, (3, 40, 40)).astype(np.uint8)
    alpha = np.full((1, 40, 40), 255, np.uint8)
    alpha[0, :10] = 0
    path = write_raster(tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB")
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    scene = open_pair(path, path)
    assert scene.sources[0].bands == (1, 2, 3)
    predict_raster(scene, toy_predictor, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        classes = ds.read(1)
    assert (classes[:10] == 255).all() and (classes[10:] == 0).all()


# --- 4, 5, 6: one-line failures, signals, leftovers, scale, through the real command ------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    torch.manual_seed(0)
    return str(export_model(build_model("tiny", 2, fusion="absdiff"), tmp_path_factory.mktemp("ck") / "cd"))


def semicd(*args: str, limit_bytes: int | None = None, **popen) -> subprocess.CompletedProcess:
    def limit() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, resource.RLIM_INFINITY))

    return subprocess.run(
        [sys.executable, "-m", "semicd", *args], capture_output=True, text=True, timeout=180,
        preexec_fn=limit if limit_bytes else None, **popen,
    )  # fmt: skip


def last_line_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and lines and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, result.stderr
    return errors[0]


def corrupt_copy(path: Path, out: Path) -> Path:
    """A tiled deflate raster whose third band's tiles are zeroed past the first row: it opens, then fails mid-read."""
    with rasterio.open(path) as ds:
        offsets = [
            int(ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=3))
            for i in range(ds.width // 32)
            for j in range(1, ds.height // 32)
        ]
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset : offset + 40] = bytes(40)
    out.write_bytes(bytes(data))
    return out


def test_a_corrupt_file_read_by_workers_is_one_line(tmp_path, checkpoint):
    rng = np.random.default_rng(5)
    good = write_raster(
        tmp_path / "good.tif", rng.integers(0, 256, (3, 128, 128)).astype(np.uint8),
        tiled=True, blockxsize=32, blockysize=32, compress="deflate", interleave="band",
    )  # fmt: skip
    bad = corrupt_copy(Path(good), tmp_path / "bad.tif")
    result = semicd("predict", "--before", str(bad), "--after", good, "--checkpoint", checkpoint,
                    "--out", str(tmp_path / "c.tif"), "--window", "28", "--workers", "2")  # fmt: skip
    line = last_line_error(result)
    assert "bad.tif" in line and "damaged" in line and "DataLoader" not in result.stderr
    assert not (tmp_path / "c.tif").exists()


@pytest.mark.parametrize(
    "option, value, words",
    [("--bands", "a,b", "band numbers"), ("--batch-size", "0", "at least 1"), ("--workers", "-1", "at least 0"),
     ("--device", "tpu", "unknown device"), ("--stretch", "fixed:9,1", "fixed:MIN,MAX")],
)  # fmt: skip
def test_bad_option_values_are_one_line_and_exit_2(tmp_path, option, value, words):
    result = semicd("predict", "--before", "a.tif", "--after", "b.tif", "--checkpoint", "c.pt", "--out", "o.tif",
                    option, value)  # fmt: skip
    line = last_line_error(result)
    assert option in line and words in line and "usage:" not in result.stderr


def scene_and_previous_output(tmp_path: Path, size: int) -> tuple[str, str, Path]:
    """A random before/after pair and an output folder already holding a result from an earlier run."""
    rng = np.random.default_rng(size)
    a, b = (
        write_raster(tmp_path / f"{n}.tif", rng.integers(0, 256, (3, size, size)).astype(np.uint8))
        for n in "ab"
    )
    out = tmp_path / "out" / "c.tif"
    out.parent.mkdir()
    out.write_bytes(b"the previous result")
    return a, b, out


def test_a_full_disk_is_one_line_and_leaves_the_previous_output(tmp_path, checkpoint):
    a, b, out = scene_and_previous_output(tmp_path, 160)
    result = semicd("predict", "--before", a, "--after", b, "--checkpoint", checkpoint, "--out", str(out),
                    "--window", "28", "--workers", "0", "--probs", str(out.with_name("p.tif")),
                    limit_bytes=4_000)  # fmt: skip
    line = last_line_error(result)
    assert "file-size limit" in line and "MB needed" in line
    assert out.read_bytes() == b"the previous result" and sorted(os.listdir(out.parent)) == ["c.tif"]


@pytest.mark.parametrize("target", ["main process", "process group"])
def test_sigterm_mid_run_removes_temporaries_and_keeps_the_previous_output(tmp_path, checkpoint, target):
    """`timeout` signals the main process; Slurm's scancel, systemd and `kill -TERM -PGID` the whole group,
    DataLoader workers included."""
    a, b, out = scene_and_previous_output(tmp_path, 700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "semicd", "predict", "--before", a, "--after", b, "--checkpoint", checkpoint,
         "--out", str(out), "--window", "28", "--workers", "2", "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    deadline = time.time() + 120
    while len(os.listdir(out.parent)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)  # until the run has temporaries on disk
    assert proc.poll() is None, "the run ended before it could be stopped; make the scene larger"
    time.sleep(0.5)  # the workers are reading windows
    if target == "main process":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert (
        proc.returncode == 128 + signal.SIGTERM
        and "stopped by SIGTERM" in stderr
        and "Traceback" not in stderr
    )
    assert out.read_bytes() == b"the previous result" and sorted(os.listdir(out.parent)) == ["c.tif"]


def test_leftovers_of_a_killed_run_are_removed_by_the_next_one(tmp_path):
    a, b = pair(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    stale = tmp_path / f".c.tif.{dead.pid}-0123abcd.tmp.tif"
    stale.write_bytes(b"half a raster")
    kept = [
        tmp_path / f".c.tif.{os.getppid()}-0123abcd.tmp.tif",  # a running process's: not ours to delete
        tmp_path / f".d.tif.{dead.pid}-0123abcd.tmp.tif",  # another output's
        tmp_path
        / f".c.tif.{os.getpid()}-0123abcd.tmp.tif",  # this process's own (another call may be writing)
    ]
    for path in kept:
        path.write_bytes(b"someone else's")
    predict_raster(open_pair(a, b), toy_predictor, tmp_path / "c.tif")
    assert not stale.exists() and all(path.exists() for path in kept)


def test_a_huge_scene_asks_for_yes_with_an_estimate(tmp_path, checkpoint):
    huge = tmp_path / "huge.tif"
    profile = dict(driver="GTiff", width=200_000, height=200_000, count=3, dtype="uint8", crs="EPSG:32618",
                   transform=ORIGIN, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   sparse_ok=True, BIGTIFF="YES")  # fmt: skip
    with rasterio.open(huge, "w", **profile) as ds:
        ds.write(np.full((3, 512, 512), 100, np.uint8), window=rasterio.windows.Window(0, 0, 512, 512))
    result = semicd("predict", "--before", str(huge), "--after", str(huge), "--checkpoint", checkpoint,
                    "--out", str(tmp_path / "c.tif"), "--window", "56")  # fmt: skip
    line = last_line_error(result)
    assert "40,000 MP" in line and " h on cpu" in line and "GB" in line and "--yes" in line
    assert not (tmp_path / "c.tif").exists()


# --- 7. outputs QGIS and GDAL show right ------------------------------------------------------------------------


def test_outputs_read_back_transparent_named_scaled_and_valid_cogs(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    rng = np.random.default_rng(8)
    a = rng.integers(0, 256, (3, 90, 80)).astype(np.uint8)
    b = a.copy()
    b[:, 20:50, 10:60] = 255 - b[:, 20:50, 10:60]
    pa = write_raster(tmp_path / "a.tif", a)
    pb = write_raster(tmp_path / "b.tif", b)
    with rasterio.open(pa, "r+") as ds:
        ds.update_tags(TIFFTAG_DATETIME="2019:05:01 10:00:00")
    out, probs, polygons = tmp_path / "change.tif", tmp_path / "probs.tif", tmp_path / "change.gpkg"
    summary = predict_raster(
        open_pair(pa, pb), toy_predictor, out, probs_path=probs, polygons_path=polygons,
        class_names=["unchanged", "changed"], tags={"checkpoint": "best.pt", "checkpoint_sha256": "ab12"},
    )  # fmt: skip
    for path in (out, probs):
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors

    # "unchanged" is transparent in the QGIS style that sits beside the map, "changed" red, both named
    style = ET.parse(tmp_path / "change.qml").getroot()
    entries = {e.get("value"): e.attrib for e in style.iter("paletteEntry")}
    assert entries["0"]["alpha"] == "0" and entries["0"]["label"] == "unchanged"
    assert (
        entries["1"]["color"] == "#ff0000"
        and entries["1"]["alpha"] == "255"
        and entries["1"]["label"] == "changed"
    )
    # GDAL's sidecar: category names and a raster attribute table; the band itself is described and tagged
    pam = ET.parse(tmp_path / "change.tif.aux.xml").getroot()
    assert [c.text for c in pam.iter("Category")] == ["unchanged", "changed"]
    rows = [[f.text for f in row.iter("F")] for row in pam.iter("Row")]
    assert rows[1][:2] == ["1", "changed"] and rows[0][-1] == "0"
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("change class",) and ds.tags(1) == {"0": "unchanged", "1": "changed"}
        assert ds.tags()["classes"] == "unchanged,changed"

    # probabilities: GDAL's scale turns the stored 0-254 into 0-1
    with rasterio.open(probs) as ds:
        stored = ds.read(1, masked=True)
        scaled = stored.astype(np.float64) * ds.scales[0] + ds.offsets[0]
    assert (
        ds.scales[0] == pytest.approx(1 / 254)
        and scaled.min() >= 0
        and scaled.max() <= 1
        and scaled.max() > 0.9
    )

    # polygons: a stable id, class names, provenance, and a default QGIS style in the GeoPackage
    gdf = gpd.read_file(polygons, layer="change")
    assert list(gdf["id"]) == list(range(1, len(gdf) + 1)) and set(gdf["class_name"]) == {"changed"}
    assert (gdf["before"] == "a.tif").all() and (gdf["after"] == "b.tif").all()
    assert (gdf["before_date"] == "2019:05:01 10:00:00").all() and gdf["after_date"].isna().all()
    assert (gdf["model"] == "best.pt").all() and (gdf["model_sha256"] == "ab12").all()
    with sqlite3.connect(polygons) as db:
        styles = db.execute("SELECT f_table_name, useAsDefault, styleQML FROM layer_styles").fetchall()
    assert len(styles) == 1 and styles[0][:2] == ("change", 1) and "changed" in styles[0][2]
    assert summary["area_m2_per_class"]["changed"] == pytest.approx(summary["changed_area_m2"])


def test_simplify_reduces_vertices_and_a_one_pixel_raster_makes_polygons_quietly(tmp_path, capfd):
    yy, xx = np.mgrid[:80, :80]
    disc = ((yy - 40) ** 2 + (xx - 40) ** 2 < 30**2).astype(np.uint8) * 200
    a = np.zeros((3, 80, 80), np.uint8)
    pa, pb = write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", np.stack([disc] * 3))
    counts = {}
    for tolerance in (0.0, 4.0):
        path = tmp_path / f"p{tolerance}.geojson"
        predict_raster(open_pair(pa, pb), toy_predictor, tmp_path / f"c{tolerance}.tif", polygons_path=path,
                       simplify=tolerance)  # fmt: skip
        geometry = gpd.read_file(path).geometry[0]
        counts[tolerance] = len(geometry.exterior.coords)
        assert (tmp_path / f"p{tolerance}.qml").exists()  # GeoJSON's style sits beside it
    assert counts[4.0] < counts[0.0] / 3

    one = [
        write_raster(tmp_path / f"{n}1.tif", np.full((3, 1, 1), v, np.uint8))
        for n, v in (("a", 0), ("b", 250))
    ]
    capfd.readouterr()
    summary = predict_raster(
        open_pair(*one), toy_predictor, tmp_path / "one.tif", polygons_path=tmp_path / "one.gpkg"
    )
    assert summary["num_polygons"] == 1
    assert "ERROR" not in capfd.readouterr().err  # GDAL used to print libtiff's TIFFSetField complaint here


def test_a_segmentation_summary_speaks_of_classes_not_change(tmp_path):
    image = write_raster(
        tmp_path / "image.tif", np.random.default_rng(9).integers(0, 256, (3, 40, 40), np.uint8)
    )

    def three_classes(images):
        x = images[0].float()[:, :1] / 255
        return torch.cat([x, 1 - x, torch.full_like(x, 0.1)], dim=1).softmax(1)

    summary = predict_raster(open_single(image), three_classes, tmp_path / "classes.tif",
                             class_names=["water", "land", "cloud"])  # fmt: skip
    assert not any(key.startswith("changed") for key in summary)
    assert set(summary["area_m2_per_class"]) <= {"water", "land", "cloud"}
    assert sum(summary["percent_per_class"].values()) == pytest.approx(100)
    with rasterio.open(tmp_path / "classes.tif") as ds:
        assert ds.descriptions == ("class",)
