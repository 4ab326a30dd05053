"""Multispectral change-detection data: OSCD's 13-band Sentinel-2 layout (a tiny fake of the release) and tile
folders of N-band GeoTIFFs, each measured with `band-stats` and trained from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from fakes import make_oscd
from rasterio.transform import from_origin

from semicd.cli import main as semicd_main
from semicd.data.oscd import OSCDDataset
from semiseg.config import load_config
from semiseg.data.build import build
from semiseg.errors import SemisegError

REPO = Path(__file__).resolve().parents[1]
TOY = ["data.crop_size=32", "data.batch_size=2", "data.workers=0", "data.nsample=4", "model.encoder=tiny_dinov3",
       "model.weights=null", "train.epochs=1", "train.max_iters=2", "train.global_batch=null", "train.amp=none"]  # fmt: skip


def _sets(*pairs: str) -> list[str]:
    return [a for p in pairs for a in ("--set", p)]


def test_oscd_bands_at_20_and_60_m_are_resampled_onto_the_10_m_grid_in_sentinel_order(tmp_path):
    root = make_oscd(tmp_path, size=40)
    images, label, valid = OSCDDataset(root, ["paris"], "val").read(0)
    assert [im.shape for im in images] == [(40, 40, 13)] * 2 and label.shape == (40, 40) and valid is None
    changed = label.astype(bool)
    # the fake adds +2000 to every band of date 2 inside the mask, whatever its resolution
    for band in range(13):
        assert images[1][..., band][changed].mean() > images[0][..., band][changed].mean() + 50
    with pytest.raises(SemisegError, match="lacks band file"):
        (root / "Onera Satellite Change Detection dataset - Images/pisa/imgs_2_rect/B8A.tif").unlink()
        OSCDDataset(root, ["pisa"], "val")


def test_oscd_measures_its_13_bands_then_trains_from_the_written_config(tmp_path, capsys):
    root = make_oscd(tmp_path / "oscd")
    stats_config = tmp_path / "oscd_stats.yaml"
    args = _sets(f"data.root={root}", *TOY)
    assert semicd_main(["band-stats", "--config", str(REPO / "configs/oscd.yaml"), *args, "--out", str(stats_config)]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    assert len(stats["mean"]) == 13 and all(0 < s < 0.5 for s in stats["std"])
    assert stats["samples"] == 3  # each train city once, though the labeled list repeats them to data.nsample
    written = yaml.safe_load(stats_config.read_text())
    assert Path(written["base"]).name == "oscd.yaml" and written["data"]["mean"] == stats["mean"]

    run = tmp_path / "run"
    assert semicd_main(["train", "--config", str(stats_config), "--out", str(run), *args]) == 0
    log = (run / "log.txt").read_text()
    assert "input: 13 band(s)" in log and "eval epoch 1" in log


def test_oscd_semi_supervised_splits_name_cities(tmp_path):
    root = make_oscd(tmp_path / "oscd")
    split = tmp_path / "split"
    split.mkdir()
    (split / "labeled.txt").write_text("paris\n")
    (split / "unlabeled.txt").write_text("rennes\npisa\n")
    mean = "[" + ",".join(["0.5"] * 13) + "]"
    cfg = load_config(
        REPO / "configs/oscd.yaml",
        [f"data.root={root}", f"data.split={split}", "method.name=unimatch_v2", f"data.mean={mean}",
         f"data.std={mean}", *TOY],
    )  # fmt: skip
    bundle = build(cfg, "fit")
    # one sample is one city: both streams are repeated to data.nsample (4), or an epoch would be < one batch
    assert (
        bundle.unlabeled.items == ["rennes", "pisa", "rennes", "pisa"]
        and bundle.labeled.items == ["paris"] * 4
    )
    assert bundle.val.items == ["milano"]
    sample = bundle.unlabeled[0]
    assert [tuple(im.shape) for im in sample["images"]] == [(13, 32, 32)] * 2


def _tile(path: Path, data: np.ndarray) -> None:
    profile = dict(driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype,
                   crs="EPSG:32618", transform=from_origin(5e5, 4e6, 1, 1), photometric="MINISBLACK")  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)


def test_a_folder_of_four_band_geotiff_tiles_trains_with_bands_and_a_fixed_stretch(tmp_path, capsys):
    root = tmp_path / "tiles"
    rng = np.random.default_rng(0)
    names = [f"t{i}" for i in range(4)]
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True)
    for name in names:
        a = rng.integers(1000, 2000, (4, 48, 48)).astype(np.uint16)
        b = a.copy()
        b[3, 10:30, 10:30] += 3000  # change seen in NIR
        _tile(root / "A" / f"{name}.tif", a)
        _tile(root / "B" / f"{name}.tif", b)
        label = np.zeros((1, 48, 48), np.uint8)
        label[0, 10:30, 10:30] = 255
        _tile(root / "label" / f"{name}.tif", label)
    split = root / "splits" / "half"
    split.mkdir(parents=True)
    (split / "labeled.txt").write_text("t0\nt1\n")
    (split / "unlabeled.txt").write_text("t2\nt3\n")
    (root / "test.txt").write_text("t2\nt3\n")

    files = [str(p) for p in sorted((root / "A").glob("*.tif")) + sorted((root / "B").glob("*.tif"))]
    stats_config = tmp_path / "tiles_4band.yaml"
    base = tmp_path / "tiles.yaml"
    base.write_text(yaml.safe_dump({"base": str(REPO / "configs/levir_cd.yaml"),
                                    "data": {"dataset": "change_tiles", "root": str(root), "split": "half"}}))  # fmt: skip
    assert semicd_main(["band-stats", *files, "--bands", "1,2,3,4", "--config", str(base), "--out", str(stats_config)]) == 0  # fmt: skip
    stats = json.loads(capsys.readouterr().out)
    assert stats["stretch"].startswith("fixed:") and stats["stretch"].count(";") == 3

    cfg = load_config(stats_config, TOY)
    sample = build(cfg, "fit").labeled[0]
    assert [tuple(im.shape) for im in sample["images"]] == [(4, 32, 32)] * 2
    run = tmp_path / "run"
    assert semicd_main(["train", "--config", str(stats_config), "--out", str(run), *_sets(*TOY)]) == 0
    assert "input: 4 band(s) (raster bands [1, 2, 3, 4])" in (run / "log.txt").read_text()


def test_a_city_is_read_and_stretched_once_then_served_from_the_cache(tmp_path, monkeypatch):
    import semicd.data.oscd as oscd

    root = make_oscd(tmp_path)
    calls = []
    real = oscd.stack_bands
    monkeypatch.setattr(oscd, "stack_bands", lambda *a: calls.append(1) or real(*a))
    dataset = OSCDDataset(root, ["paris", "paris"], "val")
    first, second = dataset.read(0), dataset.read(1)
    assert len(calls) == 2  # two dates, once
    assert all(np.array_equal(a, b) for a, b in zip(first[0], second[0]))
    first[0][0][:] = 0  # callers may crop in place: the cache keeps its own copy
    assert dataset.read(0)[0][0].any()


def test_a_16_bit_tile_is_refused_with_a_hint_not_clipped(tmp_path):
    from PIL import Image

    from semiseg.io import read_rgb

    path = tmp_path / "t.png"
    Image.fromarray(np.full((8, 8), 3000, np.uint16)).save(path)
    with pytest.raises(SemisegError, match="16-bit or float.*data.bands"):
        read_rgb(path)
