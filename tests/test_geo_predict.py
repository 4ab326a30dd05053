"""Tiled prediction end to end with a toy pointwise model: exact, streamed, georeferenced, all-or-nothing."""

import functools
import threading
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from semiseg.errors import SemisegError
from semiseg.geo import blend as blend_module
from semiseg.geo import open_pair, open_single
from semiseg.geo import predict_raster as geo_predict_raster
from semiseg.geo.predict import decide

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "geotiff"
ORIGIN = from_origin(500000, 4000000, 2, 2)


def write_raster(path, data, crs="EPSG:32631", transform=ORIGIN, nodata=None):
    data = np.asarray(data)
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0])
    profile.update(dtype=data.dtype, crs=crs, transform=transform, nodata=nodata)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
    return str(path)


# The toy predictors below are plain functions, not models: they tell the geo layer no patch size, so say it here.
predict_raster = functools.partial(geo_predict_raster, patch_size=14)


def change_prob(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """The toy model: change probability = |A - B| of band 1, per pixel (so tiling must not change it)."""
    return np.abs(before[0].astype(np.float32) - after[0].astype(np.float32)) / 255.0


def toy_predictor(images):
    a, b = (x.float() for x in images)
    p = (a[:, :1] - b[:, :1]).abs() / 255.0
    return torch.cat([1 - p, p], dim=1)


def random_pair(tmp_path, h=150, w=97, nodata=None):
    rng = np.random.default_rng(0)
    a = rng.integers(1, 256, (3, h, w)).astype(np.uint8)
    b = rng.integers(1, 256, (3, h, w)).astype(np.uint8)
    return (
        a,
        b,
        write_raster(tmp_path / "a.tif", a, nodata=nodata),
        write_raster(tmp_path / "b.tif", b, nodata=nodata),
    )


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(1), ds


def test_tiled_prediction_equals_untiled_on_odd_sized_raster(tmp_path):
    a, b, pa, pb = random_pair(tmp_path)
    out, probs = tmp_path / "change.tif", tmp_path / "probs.tif"
    summary = predict_raster(
        open_pair(pa, pb), toy_predictor, out, window=56, num_workers=0, probs_path=probs, threshold=0.5
    )
    p = change_prob(a, b)
    classes, _ = read(out)
    np.testing.assert_array_equal(classes, (p >= 0.5).astype(np.uint8))
    np.testing.assert_array_equal(read(probs)[0], np.rint(p * 254).astype(np.uint8))
    assert summary["valid_pixels"] == 150 * 97 and summary["windows"] == 8
    assert summary["changed_pixels"] == int((p >= 0.5).sum())
    assert summary["changed_area_m2"] == pytest.approx(summary["changed_pixels"] * 4.0)
    assert summary["pixels_per_class"] == {0: int((p < 0.5).sum()), 1: int((p >= 0.5).sum())}


def test_tall_raster_streams_in_strips_with_workers(tmp_path, monkeypatch):
    a, b, pa, pb = random_pair(tmp_path, h=200, w=45)
    bands = []
    original = blend_module.StripBlender.flush

    def spy(self, until_row):
        bands.append((self.acc.shape[1], until_row))
        return original(self, until_row)

    monkeypatch.setattr(blend_module.StripBlender, "flush", spy)
    out = tmp_path / "change.tif"
    predict_raster(
        open_pair(pa, pb), toy_predictor, out, window=28, batch_size=3, num_workers=2, progress=False
    )
    assert len(bands) == 10 and {rows for rows, _ in bands} == {28}  # 10 strips, never more than 28 rows held
    expected = np.argmax(np.stack([1 - change_prob(a, b), change_prob(a, b)]), 0)
    np.testing.assert_array_equal(read(out)[0], expected)


def test_outputs_keep_grid_nodata_tags_tiling_and_overviews(tmp_path):
    a, b, pa, pb = random_pair(tmp_path, h=120, w=130, nodata=0)
    a[:, :10] = 0  # a collar in the first date only
    write_raster(pa, a, nodata=0)
    out = tmp_path / "change.tif"
    predict_raster(
        open_pair(pa, pb), toy_predictor, out, window=56, num_workers=0, tags={"checkpoint": "ab12"}
    )
    with rasterio.open(out) as ds:
        assert ds.crs.to_epsg() == 32631 and ds.transform == ORIGIN and ds.nodata == 255
        assert ds.profile["tiled"] and ds.profile["compress"] == "deflate" and ds.overviews(1)
        assert ds.tags()["checkpoint"] == "ab12" and ds.tags()["window"] == "56"
        assert ds.colormap(1)[1][:3] == (255, 0, 0)
        classes = ds.read(1)
    assert (classes[:10] == 255).all() and (classes[10:] != 255).all()
    # the QGIS style and GDAL's attribute table come with the map; no temporary is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "change.qml", "change.tif",
                                                          "change.tif.aux.xml"]  # fmt: skip


def test_nodata_override_marks_collar_invalid(tmp_path):
    a, b, pa, pb = random_pair(tmp_path, h=60, w=60)
    b[:, :, :7] = 9
    write_raster(pb, b)
    out = tmp_path / "change.tif"
    summary = predict_raster(open_pair(pa, pb, nodata=9), toy_predictor, out, window=28, num_workers=0)
    classes = read(out)[0]
    assert (classes[:, :7] == 255).all() and summary["valid_pixels"] == int((classes != 255).sum())


def test_all_nodata_input_gives_all_nodata_output_and_warning(tmp_path):
    data = np.zeros((1, 70, 40), np.uint8)
    path = write_raster(tmp_path / "empty.tif", data, nodata=0)
    out = tmp_path / "seg.tif"

    def never(images):
        raise AssertionError("no window has a valid pixel, so the model must not run")

    with pytest.warns(UserWarning, match="no valid pixel"):
        summary = predict_raster(open_single(path), never, out, window=28, num_workers=0)
    assert (read(out)[0] == 255).all() and summary["valid_pixels"] == 0


def test_shared_all_nodata_file_gives_all_nodata_output(tmp_path):
    path = DATA / "all-nodata.tif"
    if not path.exists():
        pytest.skip("shared sample GeoTIFFs are absent")
    out = tmp_path / "seg.tif"
    with pytest.warns(UserWarning, match="no valid pixel"):
        predict_raster(
            open_single(path), lambda x: None, out, window=56, overlap=0.0, num_workers=0, progress=False
        )
    classes, _ = read(out)
    assert classes.shape == (2475, 71) and (classes == 255).all()


def test_polygon_crossing_window_seams_is_one_feature(tmp_path):
    a = np.full((3, 100, 100), 10, np.uint8)
    b = a.copy()
    b[:, 40:61, 10:91] = 214  # |A - B| = 204 -> p = 0.8, one 21 x 81 px block spanning several windows
    pa, pb = write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", b)
    polygons = tmp_path / "change.gpkg"
    summary = predict_raster(
        open_pair(pa, pb),
        toy_predictor,
        tmp_path / "change.tif",
        window=28,
        num_workers=0,
        polygons_path=polygons,
    )
    gdf = gpd.read_file(polygons, layer="change")
    assert len(gdf) == 1 and summary["num_polygons"] == 1
    assert gdf["class"][0] == 1
    assert gdf["area_m2"][0] == pytest.approx(21 * 81 * 4.0)
    assert gdf["mean_prob"][0] == pytest.approx(round(0.8 * 254) / 254)
    assert gdf.crs.to_epsg() == 32631
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif", "change.gpkg", "change.qml",
                                                          "change.tif", "change.tif.aux.xml"]  # fmt: skip


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_interrupted_run_leaves_nothing_at_output_paths(tmp_path, error):
    _, _, pa, pb = random_pair(tmp_path)
    calls = []

    def failing(images):
        calls.append(1)
        if len(calls) == 3:
            raise error("stop")
        return toy_predictor(images)

    with pytest.raises(error):
        predict_raster(
            open_pair(pa, pb),
            failing,
            tmp_path / "change.tif",
            window=28,
            batch_size=2,
            num_workers=0,
            probs_path=tmp_path / "probs.tif",
            polygons_path=tmp_path / "change.geojson",
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def smoothing_predictor(images):
    """A toy model whose output depends on neighbours, so window edges differ and the blending matters."""
    a, b = (torch.nn.functional.avg_pool2d(x.float()[:, :1], 5, stride=1, padding=2) for x in images)
    p = (a - b).abs() / 255.0
    return torch.cat([1 - p, p], dim=1)


def writer_threads():
    return [t for t in threading.enumerate() if t.name == "semiseg-strip-writer"]


def test_writer_thread_writes_the_same_bytes_as_the_calling_thread(tmp_path, monkeypatch):
    import threading

    from semiseg.geo.writer import StreamingGeoTiff

    original, writers = StreamingGeoTiff.write_rows, []

    def write_rows(self, row, data):
        writers.append(threading.current_thread().name)
        return original(self, row, data)

    monkeypatch.setattr(StreamingGeoTiff, "write_rows", write_rows)
    _, _, pa, pb = random_pair(tmp_path, h=230, w=90)
    files, written_by = {}, {}
    for name, threaded, workers in (("sync", False, 0), ("thread", True, 2)):
        (tmp_path / name).mkdir()
        writers.clear()
        predict_raster(
            open_pair(pa, pb), smoothing_predictor, tmp_path / name / "change.tif", window=28, batch_size=3,
            num_workers=workers, probs_path=tmp_path / name / "probs.tif", progress=False, writer_thread=threaded,
        )  # fmt: skip
        files[name] = {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}
        written_by[name] = set(writers)
    assert sorted(files["sync"]) == ["change.qml", "change.tif", "change.tif.aux.xml", "probs.tif"]
    assert files["thread"] == files["sync"]
    assert written_by == {"sync": {threading.main_thread().name}, "thread": {"semiseg-strip-writer"}}
    assert not writer_threads()


def test_an_interrupt_while_finishing_still_waits_for_the_writer_before_the_caller_closes_files():
    """Ctrl-C during `finish()` (and again during `close()`) must not let the caller close the rasters while the
    writer thread is still writing a strip: `close()` returns only once the thread has ended."""
    import signal
    import threading
    import time

    from semiseg.geo.predict import StripPipeline
    from semiseg.geo.windows import make_grid

    grid = make_grid(56, 28, 28, 0.0, 14)
    writing, written = threading.Event(), []

    def slow_sink(row, probs, valid):
        writing.set()
        time.sleep(0.6)
        written.append(row)

    pipeline = StripPipeline(grid, slow_sink)
    probs = (torch.full((len(grid.tiles), 2, 28, 28), 0.5), None)
    pipeline.put(grid.tiles, probs, list(range(len(grid.tiles))), np.ones((len(grid.tiles), 28, 28), bool))

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(KeyboardInterrupt):
            pipeline.finish()
        assert writing.is_set() and not written  # interrupted while the thread writes
        signal.setitimer(signal.ITIMER_REAL, 0.1)  # and once more while close() waits
        with pytest.raises(KeyboardInterrupt):
            pipeline.close()
        assert written  # close() returned only after the strip being written was done
        assert not writer_threads()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("failing_call", [1, 4])
def test_a_write_failing_in_the_writer_thread_stops_the_run_with_its_error(
    tmp_path, monkeypatch, failing_call
):
    from semiseg.geo.writer import StreamingGeoTiff

    _, _, pa, pb = random_pair(tmp_path, h=300, w=40)
    original, calls, predicted = StreamingGeoTiff.write_rows, [], []

    def write_rows(self, row, data):
        calls.append(row)
        if len(calls) == failing_call:
            raise SemisegError("writing change.tif failed (the disk went away)")
        return original(self, row, data)

    def counting(images):
        predicted.append(len(images[0]))
        return toy_predictor(images)

    monkeypatch.setattr(StreamingGeoTiff, "write_rows", write_rows)
    with pytest.raises(SemisegError, match="^writing change.tif failed \\(the disk went away\\)$"):
        predict_raster(open_pair(pa, pb), counting, tmp_path / "change.tif", window=28, batch_size=1, num_workers=0,
                       probs_path=tmp_path / "probs.tif", progress=False)  # fmt: skip
    # the run stopped soon after, the thread is gone, and no output or temporary is left
    # Two windows a strip, two writes (classes, probs) a strip: the failing write flushes strip s when window 2s + 1
    # arrives; the main thread can then be at most the queue's two batches and one in hand ahead of it.
    strip = (failing_call + 1) // 2
    assert len(predicted) <= 2 * strip + 1 + 3
    assert not writer_threads()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]
    assert not writer_threads()


def test_bad_outputs_are_refused_before_any_compute(tmp_path):
    _, _, pa, pb = random_pair(tmp_path, h=30, w=30)
    scene = open_pair(pa, pb)

    def never(images):
        raise AssertionError("must not run")

    with pytest.raises(SemisegError, match="does not exist"):
        predict_raster(scene, never, tmp_path / "missing" / "change.tif", window=28, num_workers=0)
    with pytest.raises(SemisegError, match="gpkg"):
        predict_raster(scene, never, tmp_path / "c.tif", window=28, polygons_path=tmp_path / "c.shp")
    with pytest.raises(SemisegError, match="input"):
        predict_raster(scene, never, pa, window=28)
    with pytest.raises(SemisegError, match="multiple of 14"):
        predict_raster(scene, never, tmp_path / "c.tif", window=30)
    with pytest.raises(SemisegError, match="multiple of 16"):  # the patch is the model's, not a constant
        geo_predict_raster(scene, never, tmp_path / "c.tif", window=56, patch_size=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tif", "b.tif"]


def test_tta_with_flip_equivariant_model_changes_nothing(tmp_path):
    a, b, pa, pb = random_pair(tmp_path, h=50, w=61)
    out = tmp_path / "change.tif"
    predict_raster(open_pair(pa, pb), toy_predictor, out, window=28, num_workers=0, tta=True, threshold=0.5)
    np.testing.assert_array_equal(read(out)[0], (change_prob(a, b) >= 0.5).astype(np.uint8))


def test_multiclass_uses_argmax_and_refuses_threshold():
    probs = np.array([[[0.2]], [[0.5]], [[0.3]]], dtype=np.float32)
    classes, score = decide(probs, None)
    assert classes[0, 0] == 1 and score[0, 0] == pytest.approx(0.5)
    with pytest.raises(SemisegError, match="threshold"):
        decide(probs, 0.4)


def test_real_pair_with_different_crs_predicts_after_reprojection(tmp_path):
    before, after = DATA / "RGB.byte.tif", DATA / "rgb1_fake_nir_epsg3857.tif"
    if not (before.exists() and after.exists()):
        pytest.skip("shared sample GeoTIFFs are absent")
    with pytest.raises(SemisegError, match="--align reproject"):
        open_pair(before, after, bands=[1])
    out = tmp_path / "change.tif"
    # the user is told the output covers only the intersection
    with pytest.warns(UserWarning, match="only partly overlap"):
        pair = open_pair(before, after, align="reproject", bands=[1])
    summary = predict_raster(
        pair,
        toy_predictor,
        out,
        window=112,
        overlap=0.0,
        num_workers=0,
        progress=False,
    )
    with rasterio.open(out) as ds, rasterio.open(before) as src:
        assert ds.crs == src.crs and ds.res == pytest.approx(src.res)
        classes = ds.read(1)
    assert summary["valid_pixels"] > 0.3 * classes.size and set(np.unique(classes)) <= {0, 1, 255}
