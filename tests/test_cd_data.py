"""Change-detection datasets: A/B/label tiles and windows of a GeoTIFF pair."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image
from rasterio.transform import from_origin

from semicd.data import (
    ChangeTileDataset,
    GeoTiffPairDataset,
    build_change_tile_datasets,
    build_geotiff_pair_datasets,
    check_tiles,
    read_name_list,
    window_grid,
)
from semiseg.data.geometry import GeometryConfig
from semiseg.errors import SemisegError

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def make_tiles(root: Path, names: list[str], size: int = 40, label_scale: int = 255, seed: int = 0) -> dict:
    """A/B/label tiles where B = A and the label is a function of A's pixels (A red >= 128)."""
    rng = np.random.default_rng(seed)
    for sub in ("A", "B", "label"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    arrays = {}
    for name in names:
        a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        label = (a[..., 0] >= 128).astype(np.uint8)
        Image.fromarray(a).save(root / "A" / f"{name}.png")
        Image.fromarray(a).save(root / "B" / f"{name}.png")
        Image.fromarray(label * np.uint8(label_scale)).save(root / "label" / f"{name}.png")
        arrays[name] = (a, label)
    return arrays


def test_geometry_is_shared_pixel_exactly_by_a_b_and_label(tmp_path):
    make_tiles(tmp_path, ["t0", "t1"], size=40)
    geometry = GeometryConfig(crop_size=28, ratio_range=(1.0, 1.0), hflip=0.5, vflip=0.5, rot90=True)
    ds = ChangeTileDataset(tmp_path, ["t0", "t1"], "train_l", geometry, nsample=6)
    assert len(ds) == 6 and ds.names == ["t0", "t1"] * 3
    crops = set()
    for i in range(len(ds)):
        s = ds[i]
        a, b = s["images"]
        assert a.dtype == torch.uint8 and a.shape == (3, 28, 28)
        assert torch.equal(a, b)
        assert torch.equal(s["label"], (a[0] >= 128).long())
        assert s["ignore"].sum() == 0
        crops.add(a.numpy().tobytes())
    assert len(crops) > 2  # the geometry really is random


def test_rescaled_crops_keep_before_after_identical_and_pad_with_ignore(tmp_path):
    make_tiles(tmp_path, ["small"], size=24)
    geometry = GeometryConfig(crop_size=28, ratio_range=(0.8, 1.2), hflip=0.5)
    s = ChangeTileDataset(tmp_path, ["small"], "train_l", geometry)[0]
    a, b = s["images"]
    assert torch.equal(a, b)
    padded = s["ignore"] == 255
    assert padded.any()  # 24 px * <=1.2 < 28: some padding always
    assert (s["label"][padded] == 255).all()
    assert set(s["label"][~padded].unique().tolist()) <= {0, 1}


def test_val_returns_whole_tiles_and_maps_0_255_and_0_1_labels_to_0_1(tmp_path):
    arrays = make_tiles(tmp_path / "a", ["x"], size=30, label_scale=255)
    arrays_01 = make_tiles(tmp_path / "b", ["x"], size=30, label_scale=1)
    for root, arr in ((tmp_path / "a", arrays), (tmp_path / "b", arrays_01)):
        s = ChangeTileDataset(root, ["x.png"], "val")[0]
        assert s["images"][0].shape == (3, 30, 30)
        assert torch.equal(s["label"], torch.from_numpy(arr["x"][1]).long())
        assert s["name"] == "x"


def test_bad_label_values_raise_naming_the_file_and_values(tmp_path):
    make_tiles(tmp_path, ["bad"], size=28)
    Image.fromarray(np.full((28, 28), 7, np.uint8)).save(tmp_path / "label" / "bad.png")
    with pytest.raises(SemisegError, match=r"bad\.png.*7"):
        ChangeTileDataset(tmp_path, ["bad"], "val")[0]


def test_names_with_and_without_extension_give_the_same_sample(tmp_path):
    make_tiles(tmp_path, ["t0"], size=28)
    with_ext, without = (
        ChangeTileDataset(tmp_path, ["t0.png"], "val")[0],
        ChangeTileDataset(tmp_path, ["t0"], "val")[0],
    )
    assert torch.equal(with_ext["images"][0], without["images"][0]) and with_ext["name"] == without["name"]


def test_unlabeled_mode_needs_no_label_files_and_returns_all_ignore_labels(tmp_path):
    make_tiles(tmp_path, ["u0"], size=32)
    (tmp_path / "label" / "u0.png").unlink()
    check_tiles(tmp_path, ["u0"], require_label=False)
    s = ChangeTileDataset(tmp_path, ["u0"], "train_u", GeometryConfig(crop_size=28, ratio_range=(0.8, 1.2)))[
        0
    ]
    assert (s["label"] == 255).all()


def test_check_tiles_names_missing_files_and_size_mismatches(tmp_path):
    make_tiles(tmp_path, [f"t{i}" for i in range(8)], size=28)
    for i in range(7):
        (tmp_path / "B" / f"t{i}.png").unlink()
    with pytest.raises(SemisegError, match=r"7 tile\(s\) missing in .*B: t0, t1, t2, t3, t4, \.\.\."):
        check_tiles(tmp_path, [f"t{i}" for i in range(8)])
    Image.fromarray(np.zeros((30, 28, 3), np.uint8)).save(tmp_path / "B" / "t0.png")
    with pytest.raises(SemisegError, match=r"t0 \(28x28 vs 28x30"):
        check_tiles(tmp_path, ["t0"])
    with pytest.raises(SemisegError, match="same size"):
        ChangeTileDataset(tmp_path, ["t0"], "val")[0]


def test_read_name_list_skips_blank_lines_and_keeps_extensions_optional(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.png\n\n  b  \n\n")
    assert read_name_list(path) == ["a.png", "b"]
    with pytest.raises(SemisegError, match="does not exist"):
        read_name_list(tmp_path / "nope.txt")


def test_per_sample_randomness_is_reproducible_and_varies_by_index_and_epoch(tmp_path):
    make_tiles(tmp_path, ["t0"], size=40)
    geometry = GeometryConfig(crop_size=28, ratio_range=(0.8, 1.2), hflip=0.5)
    ds = ChangeTileDataset(tmp_path, ["t0"], "train_l", geometry, nsample=4)
    torch.manual_seed(3)
    first = [ds[i]["images"][0] for i in range(4)]
    torch.manual_seed(3)
    assert all(torch.equal(x, ds[i]["images"][0]) for i, x in enumerate(first))
    assert not all(torch.equal(first[0], x) for x in first[1:])
    ds.set_epoch(1)
    assert not all(torch.equal(x, ds[i]["images"][0]) for i, x in enumerate(first))
    # An (epoch, index) key, as the trainer's sampler gives, is the index in that epoch whatever set_epoch says.
    assert all(torch.equal(x, ds[(0, i)]["images"][0]) for i, x in enumerate(first))
    assert all(torch.equal(ds[i]["images"][0], ds[(1, i)]["images"][0]) for i in range(4))


def test_build_from_split_folder_repeats_labeled_to_unlabeled_length(tmp_path):
    names = [f"t{i}" for i in range(7)]
    make_tiles(tmp_path, names, size=28)
    split = tmp_path / "splits" / "5%"
    split.mkdir(parents=True)
    (split / "labeled.txt").write_text("t0.png\nt1.png\n")
    (split / "unlabeled.txt").write_text("\n".join(f"{n}.png" for n in names[2:6]) + "\n")
    (tmp_path / "splits" / "test.txt").write_text("t6.png\n")
    labeled, unlabeled, evaluation = build_change_tile_datasets(tmp_path, split, crop_size=28)
    assert len(unlabeled) == 4 and len(labeled) == 4 and labeled.names == ["t0.png", "t1.png"] * 2
    assert evaluation.mode == "val" and evaluation.names == ["t6.png"]
    assert labeled[0]["images"][0].shape == (3, 28, 28)
    with pytest.raises(SemisegError, match="val.txt"):
        build_change_tile_datasets(tmp_path, split, eval_list="val")


@pytest.mark.skipif(not (SHARED_DATA / "levir_cd_samples").is_dir(), reason="shared LEVIR-CD samples absent")
def test_real_levir_tiles_read_through_change_tile_dataset():
    root = SHARED_DATA / "levir_cd_samples"
    names = read_name_list(root / "list" / "demo.txt")
    check_tiles(root, names)
    val = ChangeTileDataset(root, names, "val")
    s = val[0]
    assert s["images"][0].shape == (3, 256, 256) and s["images"][1].shape == (3, 256, 256)
    assert set(s["label"].unique().tolist()) <= {0, 1}
    no_change = ChangeTileDataset(root, ["train_386_0512_0768"], "val")[0]
    assert no_change["label"].sum() == 0
    changed = sum(int(val[i]["label"].sum()) for i in range(len(val)))
    assert changed > 0
    crop = ChangeTileDataset(root, names[:1], "train_l")[0]
    assert crop["images"][0].shape == (3, 252, 252)


# ---------------------------------------------------------------- GeoTIFF pairs
ORIGIN = (500000.0, 4500000.0)
PIXEL = 0.5


def write_raster(path: Path, array: np.ndarray, crs: str = "EPSG:32618", nodata=0, origin=ORIGIN) -> Path:
    array = array if array.ndim == 3 else array[None]
    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], PIXEL, PIXEL),
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def make_pair(tmp_path: Path, size: int = 64, after_crs: str = "EPSG:32618") -> tuple[Path, Path, np.ndarray]:
    """64x64 uint8 RGB pair; the left 32 columns of A are nodata."""
    rng = np.random.default_rng(1)
    a = rng.integers(1, 256, (3, size, size), dtype=np.uint8)
    a[:, :, :32] = 0
    b = rng.integers(1, 256, (3, size, size), dtype=np.uint8)
    return write_raster(tmp_path / "a.tif", a), write_raster(tmp_path / "b.tif", b, crs=after_crs), a


def test_window_grid_clamps_last_window_inside_the_raster():
    assert window_grid(70, 50, 32) == [(0, 0, 32, 32), (18, 0, 32, 32), (0, 32, 32, 32), (18, 32, 32, 32)] + [
        (0, 38, 32, 32),
        (18, 38, 32, 32),
    ]
    assert window_grid(20, 20, 32) == [(0, 0, 20, 20)]


def test_geotiff_windows_are_georeferenced_and_nodata_windows_skipped(tmp_path):
    before, after, a = make_pair(tmp_path)
    label = write_raster(tmp_path / "label.tif", (a[0] >= 128).astype(np.uint8) * 255, nodata=None)
    labeled, unlabeled, val = build_geotiff_pair_datasets(
        before, after, label=label, window=32, fractions={"labeled": 0.5, "val": 0.5}, crop_size=28
    )
    assert unlabeled is None
    boxes = sorted(labeled.boxes + val.boxes)
    assert boxes == [(32, 0, 32, 32), (32, 32, 32, 32)]  # the nodata left half is skipped
    i = len(val) - 1
    col, row = val.boxes[i][:2]
    t = val.window_transform(i)
    assert t.c == pytest.approx(ORIGIN[0] + col * PIXEL) and t.f == pytest.approx(ORIGIN[1] - row * PIXEL)
    assert t.a == PIXEL and t.e == -PIXEL
    s = val[i]
    window = a[:, row : row + 32, col : col + 32]
    assert torch.equal(s["images"][0], torch.from_numpy(window))
    assert torch.equal(s["label"], torch.from_numpy((window[0] >= 128).astype(np.int64)))
    crop = labeled[0]
    assert crop["images"][0].shape == (3, 28, 28) and set(crop["label"].unique().tolist()) <= {0, 1, 255}
    assert pickle.loads(pickle.dumps(labeled))[0]["images"][0].shape == (3, 28, 28)  # handles not pickled


def test_nodata_pixels_inside_a_kept_window_are_ignored(tmp_path):
    before, after, _ = make_pair(tmp_path)
    label = write_raster(tmp_path / "label.tif", np.zeros((64, 64), np.uint8), nodata=None)
    ds = GeoTiffPairDataset(before, after, [(16, 0, 32, 32)], "val", label=label)
    s = ds[0]
    assert (s["label"][:, :16] == 255).all() and (s["ignore"][:, :16] == 255).all()
    assert (s["label"][:, 16:] == 0).all() and (s["ignore"][:, 16:] == 0).all()


def test_crs_mismatch_is_refused_with_a_reproject_hint(tmp_path):
    before, after, _ = make_pair(tmp_path, after_crs="EPSG:32617")
    with pytest.raises(SemisegError, match=r"CRS.*reproject B onto A"):
        build_geotiff_pair_datasets(before, after, label=before, window=32)


def test_vector_labels_in_another_crs_are_reprojected_and_rasterised_in_place(tmp_path):
    import geopandas
    from shapely.geometry import box

    before, after, _ = make_pair(tmp_path)
    # Change square over pixel rows 40..50 and columns 40..50 of the scene.
    x0, y0 = ORIGIN[0] + 40 * PIXEL, ORIGIN[1] - 50 * PIXEL
    square = geopandas.GeoDataFrame(
        geometry=[box(x0, y0, x0 + 10 * PIXEL, y0 + 10 * PIXEL)], crs="EPSG:32618"
    )
    path = tmp_path / "change.geojson"
    square.to_crs("EPSG:4326").to_file(path, driver="GeoJSON")
    with pytest.warns(UserWarning, match="reprojecting"):
        ds = GeoTiffPairDataset(before, after, [(32, 32, 32, 32)], "val", change_polygons=path)
    label = ds[0]["label"].numpy()
    assert label[9:17, 9:17].all()  # window-relative rows/cols 8..18, away from the edges
    outside = np.ones_like(label, bool)
    outside[7:19, 7:19] = False
    assert label[outside].sum() == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pickle.loads(pickle.dumps(ds))[0]


def test_uint16_scene_is_stretched_to_full_uint8_range(tmp_path):
    rng = np.random.default_rng(2)
    a = rng.integers(1000, 3000, (3, 32, 32), dtype=np.uint16)
    before = write_raster(tmp_path / "a.tif", a, nodata=None)
    after = write_raster(tmp_path / "b.tif", a, nodata=None)
    s = GeoTiffPairDataset(
        before, after, [(0, 0, 32, 32)], "train_u", geometry=GeometryConfig(28, (1.0, 1.0))
    )[0]
    image = s["images"][0]
    assert image.dtype == torch.uint8 and image.min() == 0 and image.max() == 255


def test_area_polygons_assign_windows_by_their_centre(tmp_path):
    import geopandas
    from shapely.geometry import box

    before, after, a = make_pair(tmp_path)
    a[:] = 7  # no nodata: all four 32 px windows kept
    before = write_raster(tmp_path / "full.tif", a, nodata=None)
    after = write_raster(tmp_path / "full_b.tif", a, nodata=None)
    label = write_raster(tmp_path / "label.tif", np.zeros((64, 64), np.uint8), nodata=None)
    # Covers the centre (pixel 48, 16) of the top-right window only.
    x, y = ORIGIN[0] + 40 * PIXEL, ORIGIN[1] - 8 * PIXEL
    area = tmp_path / "val_area.gpkg"
    geopandas.GeoDataFrame(geometry=[box(x, y - 16 * PIXEL, x + 16 * PIXEL, y)], crs="EPSG:32618").to_file(
        area
    )
    labeled_area = tmp_path / "labeled_area.gpkg"
    geopandas.GeoDataFrame(
        geometry=[box(ORIGIN[0], ORIGIN[1] - 64 * PIXEL, ORIGIN[0] + 30 * PIXEL, ORIGIN[1] - 34 * PIXEL)],
        crs="EPSG:32618",
    ).to_file(labeled_area)  # bottom-left window
    labeled, unlabeled, val = build_geotiff_pair_datasets(
        before, after, label=label, window=32, areas={"val": area, "labeled": labeled_area}, crop_size=28
    )
    assert val.boxes == [(32, 0, 32, 32)]
    assert sorted(set(labeled.boxes)) == [(0, 32, 32, 32)] and len(labeled) == len(unlabeled) == 2
    assert sorted(unlabeled.boxes) == [(0, 0, 32, 32), (32, 32, 32, 32)]
