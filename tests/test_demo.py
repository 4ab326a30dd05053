"""The synthetic change scene and the end-to-end `semicd demo` (scene -> train -> predict -> score) at toy size."""

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from PIL import Image

from semicd.demo import run_demo, score_change_map
from semicd.demo.scene import CRS, make_layout, write_scene
from semiseg.errors import SemisegError


def read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.crs, ds.transform


def test_synthetic_scene_is_deterministic_and_truth_marks_new_buildings(tmp_path):
    size = 280  # not a multiple of the 256 px block: edge blocks are partial
    first = write_scene(tmp_path / "a", size=size, seed=3)
    second = write_scene(tmp_path / "b", size=size, seed=3)
    other = write_scene(tmp_path / "c", size=size, seed=4)
    for name in ("before", "after", "truth"):
        a, crs, _ = read(getattr(first, name))
        b, _, _ = read(getattr(second, name))
        np.testing.assert_array_equal(a, b)
        assert crs.to_string() == CRS
    assert not np.array_equal(read(first.after)[0], read(other.after)[0])

    truth = read(first.truth)[0][0]
    assert set(np.unique(truth)) <= {0, 255}
    layout = make_layout(size, seed=3)
    new = [b for b in layout.buildings if b.new]
    old = [b for b in layout.buildings if not b.new]
    assert new and old
    for b in new:
        assert truth[int(b.cy), int(b.cx)] == 255, "a new building's footprint must be marked as change"
    for b in old:
        assert truth[int(b.cy), int(b.cx)] == 0, "a building present at both dates is not change"
    assert 0 < first.changed_fraction < 0.2


def test_synthetic_scene_defeats_pixel_differencing(tmp_path):
    """Global radiometric shift, seasonal tint and crop changes must make |after - before| a poor detector."""
    scene = write_scene(tmp_path, size=384, seed=0)
    before = read(scene.before)[0].astype(np.float32)
    after = read(scene.after)[0].astype(np.float32)
    truth = read(scene.truth)[0][0] > 0
    diff = np.abs(after - before).mean(0)
    assert diff[~truth].mean() > 5, "unchanged pixels must differ between the dates too"
    best = 0.0
    for threshold in np.percentile(diff, [50, 80, 90, 95, 98, 99]):
        pred = diff > threshold
        best = max(best, (pred & truth).sum() / (pred | truth).sum())
    assert best < 0.3


def test_scene_too_small_is_a_user_error(tmp_path):
    with pytest.raises(SemisegError, match="too small"):
        write_scene(tmp_path, size=16)


def test_scores_of_a_perfect_and_an_empty_map(tmp_path):
    scene = write_scene(tmp_path, size=256, seed=1)
    truth, crs, transform = read(scene.truth)
    profile = dict(
        driver="GTiff", width=256, height=256, count=1, dtype="uint8", crs=crs, transform=transform
    )
    perfect, empty = tmp_path / "perfect.tif", tmp_path / "empty.tif"
    with rasterio.open(perfect, "w", **profile) as ds:
        ds.write((truth > 0).astype(np.uint8))
    with rasterio.open(empty, "w", **profile) as ds:
        ds.write(np.zeros_like(truth))
    scores = score_change_map(perfect, scene.truth)
    assert scores["model"]["iou"] == pytest.approx(100.0)
    assert scores["all_unchanged"]["iou"] == 0.0
    assert score_change_map(empty, scene.truth)["model"] == scores["all_unchanged"]


def test_demo_runs_end_to_end_at_toy_size_with_a_second_round(tmp_path):
    out = tmp_path / "demo"
    result = run_demo(out, size=384, iters=4, seed=0, rounds=2)

    for key in ("before", "after", "truth", "checkpoint", "change", "polygons", "preview", "view"):
        assert Path(result["paths"][key]).exists(), key
    view = Path(result["paths"]["view"])
    assert view == out / "view" / "index.html" and (out / "view" / "before" / "0" / "0" / "0.webp").exists()
    assert "truth.tif" in view.read_text(encoding="utf-8")  # the truth is drawn as outlines
    change, crs, transform = read(result["paths"]["change"])
    _, scene_crs, scene_transform = read(result["paths"]["before"])
    assert change.shape == (1, 384, 384)
    assert crs == scene_crs and transform == scene_transform
    assert set(np.unique(change)) <= {0, 1, 255}
    polygons = gpd.read_file(result["paths"]["polygons"], layer="change")
    assert polygons.crs == scene_crs
    assert Image.open(result["paths"]["preview"]).size[0] > 300

    for group in ("metrics", "all_unchanged"):
        for name in ("iou", "f1", "precision", "recall", "oa"):
            assert 0.0 <= result[group][name] <= 100.0  # percent, as every score in the toolkit
    assert result["all_unchanged"]["iou"] == 0.0
    assert result["training"]["iterations"] >= 1
    assert set(result["seconds"]) >= {
        "scene",
        "train",
        "predict",
        "view",
        "suggest",
        "train_2_suggested",
        "train_2_random",
    }

    # round 2: as many suggested (and random) windows as round 1 labeled, outside the labeled and val areas
    second = result["round_2"]
    taken = [gpd.read_file(out / "areas" / f"{name}.gpkg").union_all() for name in ("labeled", "val")]
    for name in ("suggested", "random"):
        windows = gpd.read_file(out / "areas" / f"{name}.gpkg")
        assert len(windows) == second["added_windows"] >= 1
        assert all(
            w.intersection(area).area == 0 for w in windows.geometry for area in taken
        )  # edges may meet
        assert (out / f"run2_{name}" / "best.pt").exists() and (out / f"change_2_{name}.tif").exists()
        assert 0.0 <= second[f"iou_{name}"] <= 100.0

    with pytest.raises(SemisegError, match="already holds"):
        run_demo(out, size=384, iters=4)
