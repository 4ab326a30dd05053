"""Closing the loop on a user's scene: where to label next, confident change to review, and reading reviews back."""

from __future__ import annotations

import json
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin

from semiseg.geo.suggest import (
    pick_spread,
    score_windows,
    touching,
    uncertainty,
    window_polygons,
)
from semiseg.geo.writer import PROB_SCALE

ORIGIN = from_origin(430000, 5400000, 0.5, 0.5)
CRS = "EPSG:32631"


def write_raster(path, data, nodata=None):
    data = np.asarray(data)
    profile = dict(
        driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0], dtype=data.dtype
    )
    with rasterio.open(path, "w", crs=CRS, transform=ORIGIN, nodata=nodata, **profile) as ds:
        ds.write(data)
    return str(path)


def box(transform, col, row, size):
    x0, y0 = transform.c + col * transform.a, transform.f + row * transform.e
    return shapely.box(x0, y0 + size * transform.e, x0 + size * transform.a, y0)


def chance_ratio(picked: int, inside: int, candidates: int, region: int) -> float:
    """How many times more suggestions fall in a region than a uniform random pick would put there."""
    return inside / (picked * region / candidates)


def test_entropy_is_one_at_half_and_zero_when_sure():
    stored = np.array([0, 127, 254], dtype=np.uint8)
    np.testing.assert_allclose(uncertainty(stored, 2), [0.0, 1.0, 0.0], atol=1e-4)
    np.testing.assert_allclose(uncertainty(np.array([254, 85]), 3), [0.0, (1 - 85 / 254) * 1.5])


def test_suggestions_fall_where_the_model_is_unsure_far_more_than_chance(tmp_path):
    """A scene whose east quarter holds a kind of change the model never saw (p near 0.5 there, confident
    elsewhere, with a few unsure pixels everywhere): the suggestions land in that quarter."""
    rng = np.random.default_rng(0)
    size, window = 448, 32
    p = np.where(rng.random((size, size)) < 0.5, 0.02, 0.98)  # confident change / no change
    p[rng.random((size, size)) < 0.05] = 0.5  # scattered unsure pixels, everywhere
    unseen = np.zeros((size, size), bool)
    unseen[:, 336:] = True
    unsure = unseen & (rng.random((size, size)) < 0.6)
    p[unsure] = rng.uniform(0.3, 0.7, int(unsure.sum()))
    probs = write_raster(tmp_path / "probs.tif", np.rint(p * PROB_SCALE).astype(np.uint8)[None])
    scores = score_windows(probs, window, num_classes=2)
    picked = pick_spread(scores, n=12, min_distance=2 * window)
    inside = sum(w.col >= 336 for w in picked)
    region = sum(w.col >= 336 for w in scores)
    ratio = chance_ratio(len(picked), inside, len(scores), region)
    print(f"suggestions in the unseen region: {inside}/{len(picked)}, {ratio:.1f}x chance")
    assert len(picked) == 12 and ratio >= 3.0  # chance puts a quarter there; all 12 land there (4x)
    for a in picked:  # spread out: no two centres closer than the minimum distance, hence never overlapping
        assert all(max(abs(a.col - b.col), abs(a.row - b.row)) >= 2 * window for b in picked if b is not a)


def test_windows_touching_a_labelled_area_are_never_suggested(tmp_path):
    p = np.full((1, 128, 128), 127, np.uint8)  # equally unsure everywhere
    probs = write_raster(tmp_path / "probs.tif", p)
    scores = score_windows(probs, 32, num_classes=2)
    labelled = [box(ORIGIN, 10, 10, 40)]  # touches the four windows at the top-left
    excluded = touching(scores, ORIGIN, labelled)
    assert sum(excluded) == 4
    picked = pick_spread(scores, n=16, min_distance=32, excluded=excluded)
    polygons = window_polygons(picked, ORIGIN)
    assert len(picked) == 12 and not any(poly.intersects(labelled[0]) for poly in polygons)
    assert all(poly.is_valid for poly in polygons)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model

    torch.manual_seed(0)
    model = build_model("tiny", 2, fusion="absdiff")
    return str(
        export_model(model, tmp_path_factory.mktemp("ck") / "cd", {"classes": ["unchanged", "changed"]})
    )


def test_the_suggest_command_writes_spread_windows_outside_the_labelled_area(tmp_path, checkpoint):
    rng = np.random.default_rng(1)
    a = write_raster(tmp_path / "a.tif", rng.integers(0, 256, (3, 224, 224)).astype(np.uint8))
    b = write_raster(tmp_path / "b.tif", rng.integers(0, 256, (3, 224, 224)).astype(np.uint8))
    labelled = tmp_path / "labeled.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 0, 0, 56)], crs=CRS).to_file(labelled)
    out = tmp_path / "next.gpkg"
    result = subprocess.run(
        [sys.executable, "-m", "semicd", "suggest", "--before", a, "--after", b, "--checkpoint", checkpoint,
         "--window", "28", "--workers", "0", "--n", "6", "--areas", str(labelled), "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    frame = gpd.read_file(out)
    assert len(frame) == summary["suggested"] == 6 and list(frame["rank"]) == list(range(1, 7))
    assert frame.total_bounds[2] <= 430000 + 224 * 0.5 and frame.total_bounds[1] >= 5400000 - 224 * 0.5
    assert frame.crs.to_epsg() == 32631 and frame.geometry.is_valid.all()
    assert list(frame["score"]) == sorted(frame["score"], reverse=True)
    labelled_area = gpd.read_file(labelled).geometry[0]
    assert (frame.geometry.intersection(labelled_area).area == 0).all()  # edges may meet, no ground shared
    geoms = list(frame.geometry)
    assert all(
        not g.overlaps(h) and g.intersection(h).area == 0 for i, g in enumerate(geoms) for h in geoms[i + 1 :]
    )
    assert (tmp_path / "next.suggest.yaml").exists()
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )  # scratch folder removed


def toy_change_model(monkeypatch):
    """Make `predict_scene` run a pointwise toy model (P(change) = |A - B| / 255 of band 1) instead of a network."""
    import semiseg.predict as predict_module

    def toy(images):
        a, b = (x.float() for x in images)
        p = (a[:, :1] - b[:, :1]).abs() / 255.0
        return torch.cat([1 - p, p], dim=1)

    toy.patch_size = 14
    monkeypatch.setattr(predict_module, "make_predictor", lambda model, device, amp="none": toy)


def test_pseudolabels_are_confident_change_outside_labelled_areas_and_unreviewed(tmp_path, monkeypatch):
    from semiseg.active import pseudolabel_polygons
    from semiseg.models.segmentor import build_model

    toy_change_model(monkeypatch)
    a = np.full((3, 112, 112), 20, np.uint8)
    b = a.copy()
    b[:, 10:30, 10:30] = 250  # confident (p = 0.9) change inside the labelled area
    b[:, 60:80, 60:90] = 250  # confident change outside it
    b[:, 90:100, 10:40] = 140  # unsure change (p = 0.47)
    pa, pb = write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", b)
    labelled = tmp_path / "labeled.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 0, 0, 40)], crs=CRS).to_file(labelled)
    model = build_model("tiny", 2, fusion="absdiff")
    model.meta = {"classes": ["unchanged", "changed"], "source_sha256": "x"}
    summary = pseudolabel_polygons(
        model, [pa, pb], tmp_path / "review.gpkg", min_prob=0.8, areas=[labelled], device=torch.device("cpu"),
        window=28, num_workers=0, tags={"checkpoint": "toy"},
    )  # fmt: skip
    frame = gpd.read_file(tmp_path / "review.gpkg")
    assert len(frame) == summary["polygons"] == 1 and summary["dropped_in_labelled_areas"] == 1
    row = frame.iloc[0]
    assert row["status"] == "unreviewed" and row["mean_prob"] >= 0.8 and row["id"] == 1
    assert row["area_m2"] == pytest.approx(20 * 30 * 0.25)


def test_an_edited_review_feeds_training_labels_and_grows_the_labelled_area(tmp_path):
    """A review with four polygons, half accepted by a script: accepted polygons become change labels and add the
    windows they touch to the labelled area; unreviewed and rejected ones do neither."""
    from semicd.data.geotiff_pair import build_geotiff_pair_datasets

    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (3, 128, 128)).astype(np.uint8)
    pa, pb = write_raster(tmp_path / "a.tif", image), write_raster(tmp_path / "b.tif", image)
    window = 32
    labelled = tmp_path / "labeled.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 0, 0, 32)], crs=CRS).to_file(labelled)  # window (0, 0)
    val = tmp_path / "val.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 96, 96, 32)], crs=CRS).to_file(val)  # window (96, 96)
    own_labels = tmp_path / "labels.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 4, 4, 8)], crs=CRS).to_file(own_labels)
    # four pseudo-label polygons in four other windows (one straddles two windows)
    review = gpd.GeoDataFrame(
        {"status": ["unreviewed"] * 4},
        geometry=[
            box(ORIGIN, 40, 8, 10),
            box(ORIGIN, 60, 40, 10),
            box(ORIGIN, 8, 72, 10),
            box(ORIGIN, 70, 100, 6),
        ],
        crs=CRS,
    )
    review.loc[[1, 2], "status"] = "accepted"  # the reviewer's script accepts half
    review.loc[3, "status"] = "rejected"
    review.to_file(tmp_path / "review.gpkg")

    def labelled_windows(label_files, labelled_files):
        labeled, _, _ = build_geotiff_pair_datasets(
            pa, pb, change_polygons=label_files, window=window,
            areas={"labeled": labelled_files, "val": str(val)},
        )  # fmt: skip
        return labeled

    before = labelled_windows(str(own_labels), str(labelled))
    after = labelled_windows(
        [str(own_labels), str(tmp_path / "review.gpkg")], [str(labelled), str(tmp_path / "review.gpkg")]
    )
    # accepted polygon 1 (cols 60-70, rows 40-50) straddles windows (32, 32) and (64, 32); polygon 2 sits in (0, 64)
    assert sorted(set(before.boxes)) == [(0, 0, 32, 32)]
    assert sorted(set(after.boxes)) == [(0, 0, 32, 32), (0, 64, 32, 32), (32, 32, 32, 32), (64, 32, 32, 32)]
    assert len(after.geometries) == 3  # the user's own polygon and the two accepted ones, not the others
    masks = {b: after._rasterised_label(i) for i, b in enumerate(after.boxes)}
    assert masks[(0, 64, 32, 32)].sum() == 100 and masks[(0, 0, 32, 32)].sum() == 64
    assert masks[(32, 32, 32, 32)].sum() + masks[(64, 32, 32, 32)].sum() == 100


def test_semiseg_suggest_scores_a_class_map_by_its_winning_probability(tmp_path, capsys):
    from semiseg.models.checkpoints import export_model
    from semiseg.models.segmentor import build_model
    from semiseg.segmentation.cli import main as semiseg_main

    torch.manual_seed(0)
    checkpoint = export_model(
        build_model("tiny", 3), tmp_path / "seg", {"classes": ["water", "land", "cloud"]}
    )
    image = write_raster(
        tmp_path / "scene.tif", np.random.default_rng(3).integers(0, 256, (3, 112, 112), np.uint8)
    )
    out = tmp_path / "next.gpkg"
    assert semiseg_main(["suggest", "--image", image, "--checkpoint", str(checkpoint), "--window", "28",
                         "--workers", "0", "--n", "3", "--min-distance", "28", "--out", str(out)]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    frame = gpd.read_file(out)
    assert len(frame) == 3 and summary["score"].startswith("mean (1 - max p)")
    assert all(0.0 <= s <= 1.0 for s in frame["score"])


def test_a_reviewed_polygon_ending_on_a_window_edge_labels_only_its_own_window(tmp_path):
    from semicd.data.geotiff_pair import assign_windows, window_grid

    review = tmp_path / "review.gpkg"
    gpd.GeoDataFrame({"status": ["accepted"]}, geometry=[box(ORIGIN, 40, 8, 24)], crs=CRS).to_file(
        review
    )  # 40..64
    boxes = window_grid(96, 96, 32)
    assigned = assign_windows(boxes, ORIGIN, CRS, areas={"labeled": [str(review)]})
    assert [boxes[i] for i in assigned["labeled"]] == [(32, 0, 32, 32)]  # not (64, 0), which it only meets


def test_suggest_refuses_bad_outputs_and_areas_before_any_compute(tmp_path, monkeypatch):
    import semiseg.predict as predict_module
    from semiseg.active import suggest_windows
    from semiseg.errors import SemisegError

    def never(*args, **kwargs):
        raise AssertionError("no prediction before the inputs are checked")

    monkeypatch.setattr(predict_module, "predict_scene", never)
    a = write_raster(tmp_path / "a.tif", np.zeros((3, 64, 64), np.uint8))
    with pytest.raises(SemisegError, match="does not exist"):
        suggest_windows(None, [a, a], tmp_path / "missing" / "next.gpkg", window=28)
    with pytest.raises(SemisegError, match=r"\.gpkg"):
        suggest_windows(None, [a, a], tmp_path / "next.shp", window=28)
    with pytest.raises(SemisegError, match="labelled area file .*nope.gpkg does not exist"):
        suggest_windows(None, [a, a], tmp_path / "next.gpkg", window=28, areas=[tmp_path / "nope.gpkg"])


def test_suggest_says_when_nothing_or_too_little_is_left(tmp_path, monkeypatch):
    from semiseg.active import suggest_windows
    from semiseg.errors import SemisegError
    from semiseg.models.segmentor import build_model

    toy_change_model(monkeypatch)
    rng = np.random.default_rng(4)
    a = write_raster(tmp_path / "a.tif", rng.integers(0, 256, (3, 112, 112)).astype(np.uint8))
    b = write_raster(tmp_path / "b.tif", rng.integers(0, 256, (3, 112, 112)).astype(np.uint8))
    model = build_model("tiny", 2, fusion="absdiff")
    model.meta = {"classes": ["unchanged", "changed"], "source_sha256": "x"}
    common = dict(window=28, device=torch.device("cpu"), num_workers=0)
    everything = tmp_path / "all.gpkg"
    gpd.GeoDataFrame(geometry=[box(ORIGIN, 0, 0, 112)], crs=CRS).to_file(everything)
    with pytest.raises(SemisegError, match="no window of the scene is left"):
        suggest_windows(model, [a, b], tmp_path / "next.gpkg", n=3, areas=[everything], **common)
    with pytest.warns(UserWarning, match="only 4 of the 10 windows"):  # 4 x 4 cells, two cells apart: 4 fit
        summary = suggest_windows(model, [a, b], tmp_path / "next.gpkg", n=10, **common)
    assert summary["suggested"] == len(gpd.read_file(tmp_path / "next.gpkg")) == 4
