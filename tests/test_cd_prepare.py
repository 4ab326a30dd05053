"""Benchmark preparation (LEVIR-CD, WHU-CD tiling) and SemiCD split generation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from semicd.data import (
    ChangeTileDataset,
    prepare_levir,
    prepare_whu,
    read_name_list,
    semicd_splits,
    write_semicd_splits,
)
from semiseg.errors import SemisegError

TILE = 16  # 64 px "originals" cut into 16 px tiles: the same 4 x 4 structure as 1024 -> 256, much faster


def block_image(offset: int, size: int = 64) -> np.ndarray:
    """RGB image whose 16 px block (r, c) has value offset + 4 * r + c everywhere: its row-major index."""
    blocks = (np.arange(16, dtype=np.uint8).reshape(4, 4) + offset).repeat(TILE, 0).repeat(TILE, 1)
    return np.stack([blocks] * 3, axis=2)[:size, :size]


def make_levir(src: Path, counts: dict[str, int], label_scale: int = 255) -> None:
    for split, n in counts.items():
        for sub in ("A", "B", "label"):
            (src / split / sub).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            a = block_image(20 * i)
            label = np.zeros((64, 64), np.uint8)
            label[:TILE, TILE : 2 * TILE] = label_scale  # change only in tile k = 2
            Image.fromarray(a).save(src / split / "A" / f"{split}_{i}.png")
            Image.fromarray(255 - a).save(src / split / "B" / f"{split}_{i}.png")
            Image.fromarray(label).save(src / split / "label" / f"{split}_{i}.png")


def test_prepare_levir_cuts_16_tiles_per_image_row_major_with_lists(tmp_path):
    make_levir(tmp_path / "src", {"train": 2, "val": 1, "test": 1}, label_scale=1)
    summary = prepare_levir(tmp_path / "src", tmp_path / "dst", tile=TILE)
    assert summary == {"train": 32, "val": 16, "test": 16, "written": 64, "skipped": 0}
    dst = tmp_path / "dst"
    train = read_name_list(dst / "train.txt")
    assert (
        len(train) == 32 and train[:2] == ["train_1_1.png", "train_1_2.png"] and train[-1] == "train_2_16.png"
    )
    for k in (1, 4, 5, 16):  # k - 1 is the row-major block index
        tile = np.asarray(Image.open(dst / "A" / f"train_2_{k}.png"))
        assert tile.shape == (TILE, TILE, 3) and (tile == 40 + k - 1).all()
    assert (np.asarray(Image.open(dst / "B" / "train_2_5.png")) == 255 - 44).all()
    assert (np.asarray(Image.open(dst / "label" / "train_1_2.png")) == 255).all()  # 0/1 input written 0/255
    assert not np.asarray(Image.open(dst / "label" / "train_1_3.png")).any()
    sample = ChangeTileDataset(dst, read_name_list(dst / "test.txt"), "val")[1]
    assert sample["name"] == "test_1_2" and (sample["label"] == 1).all()
    again = prepare_levir(tmp_path / "src", dst, tile=TILE)
    assert again["written"] == 0 and again["skipped"] == 64
    assert not list(dst.rglob(".*tmp*"))  # atomic writes leave no temporaries


def test_prepare_levir_refuses_missing_inputs_and_size_mismatches(tmp_path):
    with pytest.raises(SemisegError, match="does not exist"):
        prepare_levir(tmp_path / "nope", tmp_path / "dst")
    make_levir(tmp_path / "src", {"train": 1}, label_scale=255)
    with pytest.raises(SemisegError, match=r"val.*missing"):
        prepare_levir(tmp_path / "src", tmp_path / "dst", tile=TILE)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "src" / "train" / "B" / "train_1.png")
    with pytest.raises(SemisegError, match="differ in size"):
        prepare_levir(tmp_path / "src", tmp_path / "dst", tile=TILE, splits=("train",))
    (tmp_path / "src" / "train" / "B" / "train_1.png").unlink()
    with pytest.raises(SemisegError, match=r"B.*train_1\.png is missing"):
        prepare_levir(tmp_path / "src", tmp_path / "dst", tile=TILE, splits=("train",))


def write_tif(path: Path, array: np.ndarray) -> Path:
    array = array if array.ndim == 3 else array[None]
    profile = dict(
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs="EPSG:32618",
        transform=from_origin(500000, 4500000, 0.3, 0.3),
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(array)
    return path


def test_prepare_whu_tiles_row_major_drops_edges_and_splits_80_10_10(tmp_path):
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (3, 50, 70), dtype=np.uint8)  # 3 full tile rows, 4 full tile columns
    label = (rng.random((50, 70)) > 0.5).astype(np.uint8)  # 0/1 input
    paths = [
        write_tif(tmp_path / "before.tif", before),
        write_tif(tmp_path / "after.tif", before[::-1].copy()),
        write_tif(tmp_path / "label.tif", label),
    ]
    summary = prepare_whu(*paths, tmp_path / "dst", tile=TILE)
    assert summary == {"written": 12, "skipped": 0, "lists": "seeded", "train": 9, "val": 1, "test": 2}
    dst = tmp_path / "dst"
    names = sorted(p.name for p in (dst / "A").iterdir())
    assert names == [f"whucd_{i:05d}.png" for i in range(1, 13)]
    lists = [read_name_list(dst / f"{s}.txt") for s in ("train", "val", "test")]
    assert sorted(sum(lists, [])) == names
    tile6 = np.asarray(Image.open(dst / "A" / "whucd_00006.png"))  # row 1, column 1
    assert np.array_equal(tile6, before[:, 16:32, 16:32].transpose(1, 2, 0))
    tile6_label = np.asarray(Image.open(dst / "label" / "whucd_00006.png"))
    assert np.array_equal(tile6_label, label[16:32, 16:32] * 255)
    bad = write_tif(tmp_path / "short.tif", label[:40])
    with pytest.raises(SemisegError, match="differ in size"):
        prepare_whu(paths[0], paths[1], bad, tmp_path / "dst2", tile=TILE)
    with pytest.raises(SemisegError, match="does not exist"):
        prepare_whu(paths[0], tmp_path / "missing.tif", paths[2], tmp_path / "dst2", tile=TILE)


def test_semicd_splits_give_official_levir_and_whu_counts_nested():
    names = [f"train_{i}_{k}.png" for i in range(1, 446) for k in range(1, 17)]
    assert len(names) == 7120
    splits = semicd_splits(names)
    assert {p: len(labeled) for p, (labeled, _) in splits.items()} == {5: 356, 10: 712, 20: 1424, 40: 2848}
    for labeled, unlabeled in splits.values():
        assert sorted(labeled + unlabeled) == sorted(names)
    assert set(splits[5][0]) < set(splits[10][0]) < set(splits[20][0]) < set(splits[40][0])
    assert semicd_splits(list(reversed(names)))[5] == splits[5]  # input order does not matter
    assert semicd_splits(names, seed=11)[5][0] != splits[5][0]
    whu = semicd_splits([f"whucd_{i:05d}.png" for i in range(5947)])
    assert [len(whu[p][0]) for p in (5, 10, 20, 40)] == [297, 594, 1189, 2378]


def test_write_semicd_splits_reads_train_list_and_writes_percent_folders(tmp_path):
    names = [f"t{i}.png" for i in range(40)]
    (tmp_path / "train.txt").write_text("\n".join(names) + "\n")
    counts = write_semicd_splits(tmp_path, tmp_path / "splits")
    assert counts == {5: 2, 10: 4, 20: 8, 40: 16}
    labeled = read_name_list(tmp_path / "splits" / "10%" / "labeled.txt")
    unlabeled = read_name_list(tmp_path / "splits" / "10%" / "unlabeled.txt")
    assert labeled == semicd_splits(names)[10][0] and len(unlabeled) == 36
    with pytest.raises(SemisegError, match="no train list"):
        write_semicd_splits(tmp_path / "empty", tmp_path / "out")


def test_splits_refuse_a_percentage_that_labels_nothing_and_take_a_list(tmp_path, capsys):
    from semicd.cli import main as semicd_main

    names = [f"t{i:02d}.png" for i in range(48)]
    with pytest.raises(
        SemisegError, match=r"1% of 48 tiles labels none: use a larger percentage \(at least 2.08%\)"
    ):
        semicd_splits(names, percents=(1, 5))
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "train.txt").write_text(
        "\n".join(names) + "\n"
    )  # a layout without train.txt in its root
    code = semicd_main(["splits", "--root", str(tmp_path), "--list", str(tmp_path / "list" / "train.txt"),
                        "--out", str(tmp_path / "splits"), "--percents", "5,10"])  # fmt: skip
    assert code == 0 and json.loads(capsys.readouterr().out) == {"5%": 2, "10%": 4}
    with pytest.raises(SemisegError, match="points outside the data root"):
        (tmp_path / "bad.txt").write_text("../escape.png\n")
        read_name_list(tmp_path / "bad.txt")


def test_prepare_whu_falls_back_to_seeded_lists_without_the_datasets_folder(tmp_path, monkeypatch):
    """An installed package has no datasets/: a cropped scene still gets our seeded lists, not an error."""
    from semicd.data import prepare
    from semicd.data.official import official_sets

    monkeypatch.setattr(prepare, "official_sets", lambda name: official_sets(name, tmp_path / "no-datasets"))
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (3, 48, 64), dtype=np.uint8)
    paths = [write_tif(tmp_path / f"{n}.tif", x) for n, x in
             (("before", before), ("after", before[::-1].copy()), ("label", (before[0] > 128).astype(np.uint8)))]  # fmt: skip
    summary = prepare_whu(*paths, tmp_path / "dst", tile=TILE)
    assert summary["lists"] == "seeded" and summary["written"] == 12
    assert sorted(
        sum((read_name_list(tmp_path / "dst" / f"{s}.txt") for s in ("train", "val", "test")), [])
    ) == [f"whucd_{i:05d}.png" for i in range(1, 13)]
