"""Change-detection tiles on disk: the A/B/label layout of LEVIR-CD, WHU-CD and SemiCD.

Layout (one root, the same file name in three folders):

    root/A/<name>.png      before image (RGB)
    root/B/<name>.png      after image (RGB, same size as A)
    root/label/<name>.png  change mask, 0/255 (or 0/1), converted to 0/1

Which tiles belong to which set is decided by name lists, one file name per line (SemiCD / UniMatch V2
remote-sensing `splits/`): `<split>/labeled.txt`, `<split>/unlabeled.txt`, and `val.txt` / `test.txt` next to
them or one folder up. Names may carry an extension or not (`train_1_1` and `train_1_1.png` are the same
tile), so the BIT_CD lists without extensions and the SemiCD lists with them both work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from semiseg.data.geometry import GeometryConfig, random_geometry
from semiseg.errors import SemisegError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
MODES = ("train_l", "train_u", "val")
FOLDERS = ("A", "B", "label")

# The official UniMatch V2 remote-sensing recipe: both sides scaled by U(0.8, 1.2), 252 crop, hflip 0.5.
CD_GEOMETRY = GeometryConfig(crop_size=252, ratio_range=(0.8, 1.2), base_size=None, hflip=0.5)


def cd_geometry(crop_size: int = 252, vflip: float = 0.0, rot90: bool = False) -> GeometryConfig:
    """The official change-detection geometry at another crop size, with our optional extra flips."""
    return GeometryConfig(
        crop_size=crop_size, ratio_range=(0.8, 1.2), base_size=None, hflip=0.5, vflip=vflip, rot90=rot90
    )


def tile_stem(name: str) -> str:
    """`train_1_1.png` -> `train_1_1`; names without an image extension are returned unchanged."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in IMAGE_EXTENSIONS else name


def resolve_tile(folder: Path, name: str) -> Path | None:
    """The file for `name` in `folder`: the name as given if it has an extension, else `.png` then others."""
    if Path(name).suffix.lower() in IMAGE_EXTENSIONS:
        path = folder / name
        return path if path.is_file() else None
    for ext in IMAGE_EXTENSIONS:
        path = folder / f"{name}{ext}"
        if path.is_file():
            return path
    return None


def read_name_list(path: str | Path) -> list[str]:
    """One file name per line (extension optional); blank lines and surrounding whitespace are skipped."""
    path = Path(path)
    if not path.is_file():
        raise SemisegError(f"name list {path} does not exist: give a text file with one tile name per line")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise SemisegError(f"name list {path} is empty: it needs one tile name per line")
    return names


def label_to_binary(array: np.ndarray, source: str) -> np.ndarray:
    """A change mask in 0/255 or 0/1 as uint8 0/1; anything else is a user error naming `source`.

    RGB masks whose three channels are equal (some tools save them that way) are accepted as their first
    channel.
    """
    if array.ndim == 3:
        if array.shape[2] >= 3 and not (
            np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2])
        ):
            raise SemisegError(
                f"change label {source} is a colour image: save it as one band with 0/255 values"
            )
        array = array[..., 0]
    if array.dtype == bool:
        return array.astype(np.uint8)
    values = np.unique(array)
    if np.isin(values, (0, 255)).all():
        return (array == 255).astype(np.uint8)
    if np.isin(values, (0, 1)).all():
        return array.astype(np.uint8)
    shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
    raise SemisegError(
        f"change label {source} has values {{{shown}}}: expected 0/255 (or 0/1) for no-change/change"
    )


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_label(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        array = np.asarray(im.convert("L") if im.mode in ("I", "I;16", "F") else im)
    return label_to_binary(array, str(path))


def _missing_message(folder: Path, missing: list[str]) -> str:
    shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return f"{len(missing)} tile(s) missing in {folder}: {shown}"


def check_tiles(
    root: str | Path, names: Sequence[str], require_label: bool = True, check_sizes: bool = True
) -> None:
    """Fail early, with the first few names, when tiles are missing or A and B differ in size.

    Done once before training so that a typo in a list does not surface as a worker crash hours later.
    `check_sizes` opens only the PNG headers (cheap), not the pixels.
    """
    root = Path(root)
    if not names:
        raise SemisegError(f"no tile names given for {root}: check the split list")
    folders = FOLDERS if require_label else FOLDERS[:2]
    problems = []
    for sub in folders:
        folder = root / sub
        if not folder.is_dir():
            problems.append(f"folder {folder} does not exist")
            continue
        missing = [n for n in names if resolve_tile(folder, n) is None]
        if missing:
            problems.append(_missing_message(folder, missing))
    if problems:
        raise SemisegError(
            "; ".join(problems) + f" (expected {root}/{{A,B,label}}/<name>.png for every listed name)"
        )
    if not check_sizes:
        return
    mismatched = []
    for n in names:
        sizes = []
        for sub in folders:
            with Image.open(resolve_tile(root / sub, n)) as im:
                sizes.append(im.size)
        if len(set(sizes)) > 1:
            mismatched.append(f"{n} ({' vs '.join(f'{w}x{h}' for w, h in sizes)})")
    if mismatched:
        shown = ", ".join(mismatched[:5]) + (", ..." if len(mismatched) > 5 else "")
        raise SemisegError(
            f"{len(mismatched)} tile(s) in {root} whose A/B{'/label' if require_label else ''} sizes differ: "
            f"{shown}; the before/after images (and label) of a tile must be co-registered and equally sized"
        )


def repeat_to_length(names: list[str], nsample: int | None) -> list[str]:
    """The official rule for the labeled list: repeat it whole until it reaches `nsample`, then cut.

    Lists already at least `nsample` long are left as they are (the official code would truncate them).
    """
    if nsample is None or nsample <= len(names) or not names:
        return list(names)
    return (names * math.ceil(nsample / len(names)))[:nsample]


class ChangeTileDataset(Dataset):
    """Before/after tiles with a change mask, returning the shared sample dict of `semiseg.data`.

    Modes: `train_l` (random geometry, label 0/1), `train_u` (random geometry, label all 255, label files not
    needed), `val` (whole tiles, no geometry). Random geometry is shared pixel-exactly by A, B and the label.

    Each sample draws its randomness from a numpy Generator seeded with (seed, mode,
    index, epoch): independent of which DataLoader worker loads a sample (so a resumed run is exact),
    different every epoch: the trainer calls `set_epoch` before each epoch.
    """

    def __init__(
        self,
        root: str | Path,
        names: Sequence[str],
        mode: str,
        geometry: GeometryConfig | None = None,
        nsample: int | None = None,
        seed: int = 0,
    ) -> None:
        if mode not in MODES:
            raise SemisegError(f"unknown change-tile dataset mode {mode!r}: use one of {', '.join(MODES)}")
        self.root = Path(root)
        self.mode = mode
        self.geometry = geometry if geometry is not None else CD_GEOMETRY
        self.names = repeat_to_length(list(names), nsample if mode == "train_l" else None)
        if not self.names:
            raise SemisegError(f"no tile names given for {self.root} ({mode}): check the split list")
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the random geometry between epochs when no DataLoader workers re-seed torch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.names)

    def _path(self, sub: str, name: str) -> Path:
        path = resolve_tile(self.root / sub, name)
        if path is None:
            raise SemisegError(f"tile {name!r} is missing in {self.root / sub}: run check_tiles on the list")
        return path

    def rng(self, index: int) -> np.random.Generator:
        """The Generator of one sample draw (see the class docstring)."""
        mode = MODES.index(self.mode)  # labeled and unlabeled sample i must not share their crops
        return np.random.default_rng([self.seed, mode, index, self.epoch])

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        path_a, path_b = self._path("A", name), self._path("B", name)
        image_a, image_b = _read_rgb(path_a), _read_rgb(path_b)
        if image_a.shape != image_b.shape:
            raise SemisegError(
                f"{path_a} is {image_a.shape[1]}x{image_a.shape[0]} but {path_b} is "
                f"{image_b.shape[1]}x{image_b.shape[0]}: before and after tiles must have the same size"
            )
        label = None
        if self.mode != "train_u":
            path_l = self._path("label", name)
            label = _read_label(path_l)
            if label.shape != image_a.shape[:2]:
                raise SemisegError(
                    f"{path_l} does not have the size of {path_a}: labels must match the tiles"
                )
        if self.mode == "val":
            images = [image_a, image_b]
            ignore = np.zeros(label.shape, dtype=np.uint8)
        else:
            images, label, ignore = random_geometry([image_a, image_b], label, self.geometry, self.rng(index))
        return {
            "images": tuple(torch.from_numpy(np.ascontiguousarray(im.transpose(2, 0, 1))) for im in images),
            "label": torch.from_numpy(label.astype(np.int64)),
            "ignore": torch.from_numpy(ignore),
            "name": tile_stem(name),
        }


def _find_list(split_dir: Path | None, root: Path, filename: str) -> Path | None:
    candidates = [split_dir, split_dir.parent] if split_dir is not None else []
    for folder in [*candidates, root]:
        if folder is not None and (folder / filename).is_file():
            return folder / filename
    return None


def _names(given: Sequence[str] | str | Path | None, fallback: Path | None) -> list[str] | None:
    if isinstance(given, (str, Path)):
        return read_name_list(given)
    if given is not None:
        return list(given)
    return read_name_list(fallback) if fallback is not None else None


def build_change_tile_datasets(
    root: str | Path,
    split_dir: str | Path | None = None,
    *,
    labeled: Sequence[str] | str | Path | None = None,
    unlabeled: Sequence[str] | str | Path | None = None,
    eval_names: Sequence[str] | str | Path | None = None,
    eval_list: str = "test",
    unlabeled_root: str | Path | None = None,
    crop_size: int = 252,
    geometry: GeometryConfig | None = None,
    seed: int = 0,
    check: bool = True,
) -> tuple[ChangeTileDataset, ChangeTileDataset | None, ChangeTileDataset]:
    """The (labeled, unlabeled, eval) datasets of one semi-supervised change-detection run.

    Lists come from `split_dir` (`labeled.txt`, `unlabeled.txt`; `<eval_list>.txt` searched in `split_dir`,
    its parent, then `root`) unless given directly as name lists or list-file paths. The official
    remote-sensing code evaluates on `test.txt`; pass `eval_list="val"` to select models on a validation list
    instead. The labeled list is repeated to the unlabeled length (official rule) so one epoch is one pass
    over the unlabeled set. Without an unlabeled list (supervised runs) the unlabeled dataset is None and
    nothing is repeated. `unlabeled_root` lets unlabeled tiles live in another folder (large-scale setting).
    """
    root = Path(root)
    split = Path(split_dir) if split_dir is not None else None
    if split is not None and not split.is_dir():
        raise SemisegError(
            f"split folder {split} does not exist: expected <split>/labeled.txt, unlabeled.txt"
        )

    def in_split(filename: str) -> Path | None:
        return split / filename if split is not None and (split / filename).is_file() else None

    labeled_names = _names(labeled, in_split("labeled.txt"))
    if labeled_names is None:
        raise SemisegError("no labeled list: give split_dir containing labeled.txt or a labeled name list")
    unlabeled_names = _names(unlabeled, in_split("unlabeled.txt"))
    eval_path = _find_list(split, root, f"{eval_list}.txt")
    eval_list_names = _names(eval_names, eval_path)
    if eval_list_names is None:
        raise SemisegError(
            f"no {eval_list}.txt found in {split}, its parent, or {root}: give the evaluation list explicitly"
        )
    u_root = Path(unlabeled_root) if unlabeled_root is not None else root
    if check:
        check_tiles(root, labeled_names)
        check_tiles(root, eval_list_names)
        if unlabeled_names is not None:
            check_tiles(u_root, unlabeled_names, require_label=False)
    geometry = geometry if geometry is not None else cd_geometry(crop_size)
    unlabeled_ds = None
    if unlabeled_names is not None:
        unlabeled_ds = ChangeTileDataset(u_root, unlabeled_names, "train_u", geometry, seed=seed)
    nsample = len(unlabeled_names) if unlabeled_names is not None else None
    labeled_ds = ChangeTileDataset(root, labeled_names, "train_l", geometry, nsample=nsample, seed=seed)
    eval_ds = ChangeTileDataset(root, eval_list_names, "val", seed=seed)
    return labeled_ds, unlabeled_ds, eval_ds
