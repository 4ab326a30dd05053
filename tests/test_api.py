"""The Python API: semicd.predict / semiseg.segment on arrays (and DataArrays) give what the command writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import yaml
from fakes import change_pair, tiny_checkpoint, write_geotiff

import semicd
import semiseg
from semicd.cli import main as semicd_main
from semiseg.errors import SemisegError


def test_python_api_gives_the_classes_the_command_writes_for_the_same_pair(tmp_path, capsys):
    before, after = change_pair(
        np.random.default_rng(3), size=(61, 75)
    )  # several windows of 28 px, ragged edges
    write_geotiff(tmp_path / "a.tif", before)
    write_geotiff(tmp_path / "b.tif", after)
    checkpoint = tiny_checkpoint(tmp_path / "cd", seed=4)
    model = semicd.load_model(checkpoint)
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        result = semicd.predict(model, a.read(), b.read(), window=28)
    assert result.probs.shape == (2, 61, 75) and np.allclose(result.probs.sum(0), 1, atol=1e-5)
    # A random tiny model's argmax is nearly uniform: a threshold at the median change probability gives both classes.
    threshold = float(np.median(result.probs[1]))
    thresholded = semicd.predict(model, before, after, window=28, threshold=threshold)
    for args, expected in (([], result), (["--threshold", repr(threshold)], thresholded)):
        assert semicd_main(["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"),
                            "--checkpoint", str(checkpoint), "--out", str(tmp_path / "change.tif"),
                            "--probs", str(tmp_path / "probs.tif"), "--window", "28", "--workers", "0", *args]) == 0  # fmt: skip
        with rasterio.open(tmp_path / "change.tif") as ds:
            written = ds.read(1)
        with rasterio.open(tmp_path / "probs.tif") as ds:
            written_probs = ds.read(1)
        assert expected.classes.dtype == np.uint8 and np.array_equal(expected.classes, written)
        assert np.array_equal(np.rint(expected.probs[1] * 254).astype(np.uint8), written_probs)
    assert (
        0.3 < (thresholded.classes == 1).mean() < 0.7
    )  # both classes present: the comparison is not trivial


def test_precision_is_chosen_recorded_and_amp_is_its_alias(tmp_path, capsys):
    before, after = change_pair(np.random.default_rng(3), size=(40, 50))
    write_geotiff(tmp_path / "a.tif", before)
    write_geotiff(tmp_path / "b.tif", after)
    checkpoint = tiny_checkpoint(tmp_path / "cd", seed=4)
    model = semicd.load_model(checkpoint)
    fp32 = semicd.predict(model, before, after, window=28, device="cpu")
    bf16 = semicd.predict(model, before, after, window=28, device="cpu", precision="bf16")
    assert np.abs(bf16.probs - fp32.probs).max() < 0.05  # autocast rounds, it does not change the model
    assert np.array_equal(
        semicd.predict(model, before, after, window=28, device="cpu", amp="bf16").probs, bf16.probs
    )
    with pytest.raises(SemisegError, match="disagree"):
        semicd.predict(model, before, after, window=28, device="cpu", precision="fp32", amp="bf16")
    with pytest.raises(SemisegError, match="^--precision fp16 needs a CUDA device"):
        semicd.predict(model, before, after, window=28, device="cpu", precision="fp16")

    common = ["predict", "--before", str(tmp_path / "a.tif"), "--after", str(tmp_path / "b.tif"), "--checkpoint",
              str(checkpoint), "--window", "28", "--workers", "0", "--device", "cpu"]  # fmt: skip
    for flags, expected in ((["--precision", "bf16"], "bf16"), (["--amp", "none"], "fp32"), ([], "fp32")):
        out = tmp_path / f"{expected}{len(flags)}.tif"
        assert semicd_main([*common, "--out", str(out), *flags]) == 0
        assert json.loads(capsys.readouterr().out)["precision"] == expected
        record = yaml.safe_load(out.with_suffix(".predict.yaml").read_text())
        assert record["arguments"]["precision"] == expected and "amp" not in record["arguments"]
    for flags in (["--precision", "fp16"], ["--amp", "fp16"]):
        assert semicd_main([*common, "--out", str(tmp_path / "fp16.tif"), *flags]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "fp16 needs a CUDA device" in err
    assert not (tmp_path / "fp16.tif").exists()


def test_segment_blends_windows_over_a_large_array_and_leaves_invalid_pixels_out(tmp_path):
    model = semiseg.load_model(tiny_checkpoint(tmp_path / "seg", task="segmentation"))
    image = np.random.default_rng(0).integers(0, 255, (4, 90, 70), dtype=np.uint8)  # a 4th band is dropped
    valid = np.ones((90, 70), bool)
    valid[:10] = False
    result = semiseg.segment(model, image, window=28, overlap=0.5, valid=valid)
    assert result.classes.shape == (90, 70) and (result.classes[:10] == 255).all()
    assert set(np.unique(result.classes[10:])) <= {0, 1, 2} and np.isnan(result.probs[:, :10]).all()
    assert np.array_equal(result.probs[:, 10:].argmax(0), result.classes[10:])
    whole = semiseg.segment(model, image[:3], window=28, overlap=0.5)  # the same bands, all valid
    # Windows start every 14 rows: rows from 28 on are seen only by windows that hold no invalid pixel.
    assert np.array_equal(whole.probs[:, 28:], result.probs[:, 28:]) and (whole.classes[:10] != 255).all()


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ((np.zeros((3, 30, 30), np.float32), np.zeros((3, 30, 30), np.uint8)), "float32: give uint8"),
        ((np.zeros((3, 30, 30), np.uint8), np.zeros((3, 30, 31), np.uint8)), "differ in size"),
        ((np.zeros((3, 30, 30), np.uint8),), "takes 2 image"),
        ((np.zeros((2, 30, 30), np.uint8), np.zeros((2, 30, 30), np.uint8)), "has 2 band"),
    ],
)
def test_bad_arrays_are_refused_with_a_reason(tmp_path, images, message):
    model = semicd.load_model(tiny_checkpoint(tmp_path / "cd"))
    with pytest.raises(SemisegError, match=message):
        semiseg.api.predict(model, *images, window=28)


def test_dataarrays_come_back_with_their_coordinates_and_crs(tmp_path):
    xr = pytest.importorskip("xarray")
    model = semicd.load_model(tiny_checkpoint(tmp_path / "cd"))
    before, after = change_pair(np.random.default_rng(1))
    y, x = 4000000 - 0.5 * np.arange(40), 500000 + 0.5 * np.arange(52)
    crs = xr.DataArray(
        0, attrs={"crs_wkt": "EPSG:32618 as WKT would be here"}
    )  # what rioxarray's spatial_ref holds
    coords = {"band": [1, 2, 3], "y": y, "x": x, "spatial_ref": crs}
    a = xr.DataArray(before, dims=("band", "y", "x"), coords=coords)
    b = xr.DataArray(after, dims=("band", "y", "x"), coords=coords)
    result = semicd.predict(model, a, b, window=28)
    plain = semicd.predict(model, before, after, window=28)
    assert np.array_equal(result.classes.values, plain.classes)
    assert np.array_equal(result.classes["x"].values, x) and np.array_equal(result.probs["y"].values, y)
    assert result.classes["spatial_ref"].attrs == crs.attrs and list(result.probs["class"].values) == [
        "unchanged",
        "changed",
    ]


def test_probs_false_keeps_only_the_classes(tmp_path):
    model = semicd.load_model(tiny_checkpoint(tmp_path / "cd"))
    before, after = change_pair(np.random.default_rng(2))
    full = semicd.predict(model, before, after, window=28)
    light = semicd.predict(model, before, after, window=28, probs=False)
    assert light.probs is None and full.probs is not None and np.array_equal(light.classes, full.classes)
    xr = pytest.importorskip("xarray")
    a, b = (xr.DataArray(x, dims=("band", "y", "x")) for x in (before, after))
    wrapped = semicd.predict(model, a, b, window=28, probs=False)
    assert wrapped.probs is None and np.array_equal(wrapped.classes.values, full.classes)
