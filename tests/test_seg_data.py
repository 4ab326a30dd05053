"""Segmentation layouts, split files and the segmentation dataset, on tiny fake trees (40x30 images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from semiseg.config import load_config
from semiseg.data.build import DataRequest
from semiseg.data.geometry import GeometryConfig
from semiseg.data.lists import SplitItem, find_split_folder, read_split_file, write_split_file
from semiseg.errors import SemisegError
from semiseg.segmentation.benchmarks import SEGMENTATION_DATASETS, class_names
from semiseg.segmentation.datasets import (
    SegmentationDataset,
    build_segmentation_datasets,
    check_dataset,
    convert_ade20k_masks,
    split_lists,
)
from semiseg.segmentation.layouts import (
    SplitFiles,
    labeled_count,
    list_training_images,
    list_val_images,
    make_splits,
    parse_labeled_amount,
)

W, H = 40, 30


def _image(path: Path, grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    array = rng.integers(1, 256, (H, W) if grey else (H, W, 3), dtype=np.uint8)  # never 0: padding is 0
    Image.fromarray(array).save(path)


def _mask(path: Path, values: tuple[int, ...] = (0, 1, 255), palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((H, W), dtype=np.uint8)
    for k, v in enumerate(values):
        array[:, k * W // len(values) :] = v
    img = Image.fromarray(array, mode="L")
    if palette:
        img = Image.fromarray(array, mode="P")
        img.putpalette([c for i in range(256) for c in (i * 7 % 256, i * 3 % 256, 255 - i)])
    img.save(path)


def _make_layout(root: Path, layout: str, n_train: int = 4, n_val: int = 2) -> None:
    """A fake tree in the standard layout (see datasets/README.md)."""
    if layout == "pascal":
        ids = [f"2007_{i:06d}" for i in range(n_train + n_val)]
        for i in ids:
            _image(root / "JPEGImages" / f"{i}.jpg")
            _mask(root / "SegmentationClass" / f"{i}.png", palette=True)
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        (sets / "train.txt").write_text("\n".join(ids[:n_train]) + "\n")
        (sets / "val.txt").write_text("\n".join(ids[n_train:]) + "\n")
    elif layout == "cityscapes":
        for subset, n in (("train", n_train), ("val", n_val)):
            for k in range(n):
                city = "aachen" if k % 2 else "bochum"
                stem = f"{city}_{k:06d}_000019"
                _image(root / "leftImg8bit" / subset / city / f"{stem}_leftImg8bit.png")
                _mask(root / "gtFine" / subset / city / f"{stem}_gtFine_labelTrainIds.png")
    elif layout == "ade20k":
        for subset, n in (("training", n_train), ("validation", n_val)):
            for k in range(n):
                _image(root / "images" / subset / f"ADE_{subset}_{k:08d}.jpg")
                _mask(root / "annotations" / subset / f"ADE_{subset}_{k:08d}.png", (0, 149, 255))
    elif layout == "coco":
        for subset, n in (("train2017", n_train), ("val2017", n_val)):
            for k in range(n):
                _image(root / subset / f"{k:012d}.jpg")
                _mask(root / "masks" / subset / f"{k:012d}.png", (0, 80))
    elif layout == "folder":
        for subset, n in (("train", n_train), ("val", n_val)):
            for k in range(n):
                _image(root / "images" / subset / f"tile_{k}.png")
                _mask(root / "masks" / subset / f"tile_{k}.png")


LAYOUTS = ["pascal", "cityscapes", "ade20k", "coco", "folder"]


# ------------------------------------------------------------------------------------------------------------
# Enumeration


@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_lists_train_and_val_pairs_that_exist(tmp_path: Path, layout: str) -> None:
    _make_layout(tmp_path, layout, n_train=4, n_val=2)
    train, val = list_training_images(layout, tmp_path), list_val_images(layout, tmp_path)
    assert len(train) == 4 and len(val) == 2
    assert not {i.image for i in train} & {i.image for i in val}
    for item in train + val:
        assert (tmp_path / item.image).is_file() and (tmp_path / item.mask).is_file()
        assert Path(item.image).stem.split("_leftImg8bit")[0] in item.mask
    assert train == sorted(train, key=lambda i: i.image)


def test_cityscapes_pairs_images_with_label_train_ids(tmp_path: Path) -> None:
    _make_layout(tmp_path, "cityscapes", n_train=2, n_val=1)
    item = list_val_images("cityscapes", tmp_path)[0]
    assert item.image == "leftImg8bit/val/bochum/bochum_000000_000019_leftImg8bit.png"
    assert item.mask == "gtFine/val/bochum/bochum_000000_000019_gtFine_labelTrainIds.png"


def test_pascal_without_train_list_uses_all_masks_not_in_val(tmp_path: Path) -> None:
    _make_layout(tmp_path, "pascal", n_train=3, n_val=2)
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").unlink()
    train = list_training_images("pascal", tmp_path)
    val_ids = {Path(i.image).stem for i in list_val_images("pascal", tmp_path)}
    assert len(train) == 3 and not {Path(i.image).stem for i in train} & val_ids
    assert train[0] == SplitItem("JPEGImages/2007_000000.jpg", "SegmentationClass/2007_000000.png")


def test_flat_folder_layout_keeps_maskless_images_unlabeled_and_has_no_val(tmp_path: Path) -> None:
    for k in range(3):
        _image(tmp_path / "images" / f"a{k}.jpg")
    _mask(tmp_path / "masks" / "a0.png")
    train = list_training_images("folder", tmp_path)
    assert [i.mask for i in train] == ["masks/a0.png", None, None]
    with pytest.raises(SemisegError, match="flat images/"):
        list_val_images("folder", tmp_path)


def test_unknown_layout_and_missing_root_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(SemisegError, match="choose one of"):
        list_training_images("voc2012", tmp_path)
    with pytest.raises(SemisegError, match="does not exist"):
        list_training_images("ade20k", tmp_path / "nope")
    with pytest.raises(SemisegError, match="images/training"):
        list_training_images("ade20k", tmp_path)


# ------------------------------------------------------------------------------------------------------------
# Split files


def test_read_split_file_handles_one_token_none_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "u.txt"
    path.write_text("a.jpg m/a.png\n\nb.jpg None\nc.jpg\n")
    assert read_split_file(path) == [SplitItem("a.jpg", "m/a.png"), SplitItem("b.jpg"), SplitItem("c.jpg")]
    path.write_text("my image.jpg m/a.png\n")
    with pytest.raises(SemisegError, match=r"u.txt:1"):
        read_split_file(path)
    with pytest.raises(SemisegError, match="does not exist"):
        read_split_file(tmp_path / "missing.txt")


def test_write_then_read_split_file_round_trips(tmp_path: Path) -> None:
    items = [SplitItem("a.jpg", "a.png"), SplitItem("b.jpg", None)]
    write_split_file(tmp_path / "s" / "x.txt", items)
    assert read_split_file(tmp_path / "s" / "x.txt") == items
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.txt"]  # no temp file left behind


def _items(n: int) -> list[SplitItem]:
    return [SplitItem(f"img/{k:03d}.jpg", f"mask/{k:03d}.png") for k in range(n)]


def test_make_splits_is_nested_across_budgets_and_deterministic(tmp_path: Path) -> None:
    items, val = _items(40), _items(3)
    small = make_splits(items, 0.125, 10, tmp_path / "s", val)
    big = make_splits(items, 20, 10, tmp_path / "b", val)
    small_l, big_l = read_split_file(small.labeled), read_split_file(big.labeled)
    assert len(small_l) == 5 and len(big_l) == 20
    assert small_l == big_l[:5]
    assert sorted(big_l + read_split_file(big.unlabeled), key=lambda i: i.image) == items
    assert read_split_file(big.val) == val
    again = make_splits(items, 20, 10, tmp_path / "again", val)
    assert read_split_file(again.labeled) == big_l
    other = make_splits(items, 20, 11, tmp_path / "other", val)
    assert read_split_file(other.labeled) != big_l


def test_make_splits_never_labels_maskless_images(tmp_path: Path) -> None:
    items = _items(4) + [SplitItem("extra/x.jpg", None)]
    files = make_splits(items, 1.0, 0, tmp_path, _items(1))
    assert len(read_split_file(files.labeled)) == 4
    assert read_split_file(files.unlabeled) == [SplitItem("extra/x.jpg", None)]


def test_label_budgets_parse_and_round_down() -> None:
    assert parse_labeled_amount("92") == 92 and parse_labeled_amount("1/16") == 0.0625
    assert parse_labeled_amount("5%") == 0.05
    assert labeled_count(0.1, 7120) == 712 and labeled_count(1 / 16, 2975) == 185
    with pytest.raises(SemisegError):
        labeled_count(100, 50)
    with pytest.raises(SemisegError):
        parse_labeled_amount("a lot")


def _split_cfg(root: Path, split: Path | str, *extra: str):
    return load_config(None, [f"data.root={root}", f"data.split={split}", "data.crop_size=28", *extra])


def test_the_official_split_folder_works_with_val_in_its_parent(tmp_path: Path) -> None:
    official = tmp_path / "splits" / "pascal"
    (official / "92").mkdir(parents=True)
    for name in ("92/labeled.txt", "92/unlabeled.txt", "val.txt"):
        (official / name).write_text("JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n")
    cfg = _split_cfg(tmp_path, official / "92")
    files = split_lists(cfg, tmp_path, DataRequest("fit", unlabeled=True))
    assert files == SplitFiles(
        official / "92" / "labeled.txt", official / "92" / "unlabeled.txt", official / "val.txt"
    )
    assert split_lists(cfg, tmp_path, DataRequest("eval", unlabeled=False)) == SplitFiles(
        None, None, official / "val.txt"
    )
    assert read_split_file(files.val)[0].mask == "SegmentationClass/2007_000032.png"


def test_split_names_are_looked_up_and_the_error_lists_existing_splits(tmp_path: Path) -> None:
    folder = tmp_path / "pascal" / "1_16"
    folder.mkdir(parents=True)
    (folder / "labeled.txt").write_text("a.jpg a.png\n")
    assert find_split_folder("1_16", "pascal", datasets_dir=tmp_path) == folder
    with pytest.raises(SemisegError, match="available splits: 1_16"):
        find_split_folder("1_8", "pascal", datasets_dir=tmp_path)
    with pytest.raises(SemisegError, match="does not exist"):
        find_split_folder(str(tmp_path / "no" / "such"), "pascal", datasets_dir=tmp_path)
    assert find_split_folder("1_8", "pascal", datasets_dir=tmp_path, missing_ok=True) is None


def test_evaluation_needs_only_an_evaluation_list(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "holdout.txt").write_text("a.jpg a.png\n")
    request = DataRequest("eval", unlabeled=False)
    named = _split_cfg(tmp_path, "never_made", "data.val_list=holdout")  # a name, found in the root's folders
    with pytest.raises(SemisegError, match=r"list 'holdout' not found: no such file, and no holdout.txt in"):
        split_lists(named, tmp_path, request)
    by_path = _split_cfg(tmp_path, "never_made", f"data.val_list={tmp_path / 'lists' / 'holdout.txt'}")
    assert split_lists(by_path, tmp_path, request).val == tmp_path / "lists" / "holdout.txt"
    with pytest.raises(SemisegError, match="no evaluation list"):
        split_lists(_split_cfg(tmp_path, "never_made"), tmp_path, request)


# ------------------------------------------------------------------------------------------------------------
# Dataset samples


def test_train_l_sample_has_contract_shapes_and_marks_padding(tmp_path: Path) -> None:
    _make_layout(tmp_path, "pascal", n_train=1, n_val=1)
    items = list_training_images("pascal", tmp_path)
    geometry = GeometryConfig(crop_size=56, ratio_range=(1.0, 1.0), hflip=0.0)
    sample = SegmentationDataset(tmp_path, items, "train_l", geometry)[0]
    (image,) = sample["images"]
    assert image.dtype == torch.uint8 and image.shape == (3, 56, 56)
    assert sample["label"].dtype == torch.int64 and sample["label"].shape == (56, 56)
    assert sample["ignore"].dtype == torch.uint8 and sample["ignore"].shape == (56, 56)
    padded = sample["ignore"] == 255
    assert padded.sum() == 56 * 56 - H * W  # a 40x30 image at scale 1 inside a 56 crop
    assert (sample["label"][padded] == 255).all() and (image[:, padded] == 0).all()
    assert image[:, ~padded].float().mean() > 50  # real pixels there (JPEG may round a few to 0)
    # palette mask read as indices 0/1/255, not as colours
    assert set(sample["label"][~padded].unique().tolist()) == {0, 1, 255}
    assert sample["name"] == items[0].image


def test_train_u_label_is_all_ignore_and_val_is_whole_image(tmp_path: Path) -> None:
    _image(tmp_path / "grey.png", grey=True)
    _mask(tmp_path / "grey_mask.png", (3, 4))
    items = [SplitItem("grey.png", "grey_mask.png")]
    geometry = GeometryConfig(crop_size=28)
    u = SegmentationDataset(tmp_path, items, "train_u", geometry)[0]
    assert u["images"][0].shape == (3, 28, 28) and (u["label"] == 255).all()
    v = SegmentationDataset(tmp_path, items, "val", ignore_mask_values=(4,))[0]
    assert v["images"][0].shape == (3, H, W) and (v["ignore"] == 0).all()
    assert set(v["label"].unique().tolist()) == {3, 255}  # 4 read as ignore


def test_train_l_repeats_list_to_nsample(tmp_path: Path) -> None:
    items = _items(3)
    geometry = GeometryConfig(crop_size=28)
    ds = SegmentationDataset(tmp_path, items, "train_l", geometry, nsample=7)
    assert len(ds) == 7 and ds.items == items + items + items[:1]
    assert len(SegmentationDataset(tmp_path, items, "train_l", geometry, nsample=2)) == 3


def test_crops_are_keyed_on_epoch_index_and_stream(tmp_path: Path) -> None:
    _make_layout(tmp_path, "coco", n_train=1, n_val=1)
    items = list_training_images("coco", tmp_path)
    ds = SegmentationDataset(tmp_path, items, "train_l", GeometryConfig(28))
    first = ds[0]["images"][0]
    torch.manual_seed(123)  # the global RNG plays no part: any worker draws the same crop
    assert torch.equal(ds[0]["images"][0], first)
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["images"][0], first)  # a new epoch, a new crop
    ds.set_epoch(0)
    assert torch.equal(ds[0]["images"][0], first)
    unlabeled = SegmentationDataset(tmp_path, items, "train_u", GeometryConfig(28))
    assert not torch.equal(unlabeled[0]["images"][0], first)  # labeled and unlabeled sample 0 differ


def test_image_mask_size_mismatch_is_named(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "m.png")
    ds = SegmentationDataset(tmp_path, [SplitItem("a.png", "m.png")], "val")
    with pytest.raises(SemisegError, match="m.png is 10x10"):
        ds[0]


# ------------------------------------------------------------------------------------------------------------
# Checks before training


def test_check_dataset_reports_missing_root_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(SemisegError, match="data root .* does not exist"):
        check_dataset(tmp_path / "nope", _items(2), 21, "train_l")
    _image(tmp_path / "img" / "000.jpg")
    _mask(tmp_path / "mask" / "000.png")
    with pytest.raises(SemisegError, match=r"4 files .* missing .* img/001.jpg, mask/001.png, img/002.jpg"):
        check_dataset(tmp_path, _items(3), 21, "train_l")
    # unlabeled lines only need their image
    check_dataset(tmp_path, [SplitItem("img/000.jpg", "mask/zzz.png")], 21, "train_u")


def test_check_dataset_reports_out_of_range_mask_values(tmp_path: Path) -> None:
    _make_layout(tmp_path, "cityscapes", n_train=2, n_val=1)
    items = list_training_images("cityscapes", tmp_path)
    check_dataset(tmp_path, items, 19, "train_l")
    _mask(tmp_path / items[1].mask, (0, 19, 200))
    with pytest.raises(SemisegError, match=r"gtFine_labelTrainIds.png has values \[19, 200\]"):
        check_dataset(tmp_path, items, 19, "train_l")
    check_dataset(tmp_path, items, 19, "train_l", max_masks_checked=1)  # bounded: only the first is read


def test_raw_ade20k_masks_are_detected_and_convert_fixes_them(tmp_path: Path) -> None:
    _make_layout(tmp_path, "ade20k", n_train=2, n_val=1)
    items = list_training_images("ade20k", tmp_path)
    check_dataset(tmp_path, items, 150, "train_l", dataset="ade20k")  # converted masks pass
    raw_dir = tmp_path / "raw"
    for k, item in enumerate(items):
        _mask(raw_dir / Path(item.mask).name, (0, 1, 150) if k == 0 else (0, 5))
    raw_items = [SplitItem(i.image, f"raw/{Path(i.mask).name}") for i in items]
    with pytest.raises(SemisegError, match="raw ADE20K"):
        check_dataset(tmp_path, raw_items, 150, "train_l", dataset="ade20k")
    _mask(raw_dir / Path(items[0].mask).name, (0, 1, 7))  # no 150, but 0 everywhere and no 255: still raw
    with pytest.raises(SemisegError, match="raw ADE20K"):
        check_dataset(tmp_path, raw_items, 150, "train_l", dataset="ade20k")
    _mask(raw_dir / Path(items[0].mask).name, (0, 1, 150))
    assert convert_ade20k_masks(raw_dir, tmp_path / "fixed") == 2
    fixed = np.asarray(Image.open(tmp_path / "fixed" / Path(items[0].mask).name))
    assert set(np.unique(fixed).tolist()) == {0, 149, 255}
    fixed_items = [SplitItem(i.image, f"fixed/{Path(i.mask).name}") for i in items]
    check_dataset(tmp_path, fixed_items, 150, "train_l", dataset="ade20k")
    with pytest.raises(SemisegError, match="already converted"):
        convert_ade20k_masks(tmp_path / "fixed", tmp_path / "twice")


# ------------------------------------------------------------------------------------------------------------
# Building a run's datasets


def test_build_datasets_repeats_labeled_to_unlabeled_and_uses_unlabeled_root(tmp_path: Path) -> None:
    root, extra = tmp_path / "voc", tmp_path / "extra"
    _make_layout(root, "pascal", n_train=2, n_val=1)
    for k in range(5):
        _image(extra / f"u{k}.jpg")
    split = tmp_path / "split"
    write_split_file(split / "labeled.txt", list_training_images("pascal", root))
    write_split_file(split / "unlabeled.txt", [SplitItem(f"u{k}.jpg") for k in range(5)])
    write_split_file(split / "val.txt", list_val_images("pascal", root))
    files = SplitFiles(split / "labeled.txt", split / "unlabeled.txt", split / "val.txt")
    labeled, unlabeled, val = build_segmentation_datasets(root, "pascal", files, 28, 21, unlabeled_root=extra)
    assert len(unlabeled) == 5 and len(labeled) == 5 and len(val) == 1
    batch = next(iter(torch.utils.data.DataLoader(unlabeled, batch_size=2)))
    assert batch["images"][0].shape == (2, 3, 28, 28) and (batch["label"] == 255).all()
    with pytest.raises(SemisegError, match="missing"):
        build_segmentation_datasets(root, "pascal", files, 28, 21)  # unlabeled images are not under root


def test_registry_has_benchmark_class_counts_and_names() -> None:
    assert {k: v.nclass for k, v in SEGMENTATION_DATASETS.items()} == {
        "pascal": 21, "cityscapes": 19, "ade20k": 150, "coco": 81, "folder": None,
    }  # fmt: skip
    assert class_names("pascal", 21)[15] == "person" and class_names("cityscapes", 19)[-1] == "bicycle"
    assert class_names("ade20k", 150)[149] == "class_149"


@pytest.mark.parametrize("line", ["/etc/passwd m.png", "img/../../secret.jpg m.png", "a.jpg ../masks/a.png"])
def test_split_entries_must_stay_inside_the_data_root(tmp_path: Path, line: str) -> None:
    (tmp_path / "list.txt").write_text(f"ok.jpg ok.png\n{line}\n")
    with pytest.raises(SemisegError, match=r"list.txt:2: .* points outside the data root"):
        read_split_file(tmp_path / "list.txt")
